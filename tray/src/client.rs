//! The tray's only connection to the daemon: a task that subscribes to the event
//! feed, forwards what arrives as [`Update`]s, runs the commands chosen in the
//! menu, and follows the stats feed of each live call for its quality verdict.
//!
//! The event feed drives everything: there is no polling. When the daemon is not
//! running, stops, restarts or stops answering, the task reports it and tries
//! again after a [`Backoff`] delay that doubles up to a cap, so a missing daemon
//! costs a connection attempt every few seconds and never a busy loop. A daemon
//! that hangs is noticed too: setting up a session has a deadline
//! ([`SETUP_TIMEOUT`]), and the connection sends HTTP/2 pings that a live daemon
//! answers within [`KEEPALIVE_TIMEOUT`] even while nothing else happens.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tonic::Code;
use tonic::codegen::InterceptedService;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use voicelink_proto::v1::{self, CallState, event};
use voicelink_proto::{ConnectError, DaemonAddress};

use crate::command::Command;
use crate::model::Update;

/// Delays between connection attempts: `initial`, doubling up to `max`; back to
/// `initial` once a connection has stayed up for a while ([`STEADY_AFTER`]).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A back-off from `initial` to `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max, next: initial }
    }

    /// The delay before the next attempt; each call doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// A connection worked: start from `initial` again next time.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

impl Default for Backoff {
    /// 250 ms to 8 s: a restarting daemon is back within a second or two, and a
    /// stopped one costs one attempt every 8 s.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(250), Duration::from_secs(8))
    }
}

/// How long connecting, subscribing to the feed and reading the status may take
/// before the daemon counts as not answering.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the connection pings the daemon (HTTP/2 PING), even when idle.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How long a ping may go unanswered before the connection counts as dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a session must last before the back-off starts again from its
/// shortest delay: a daemon that accepts and then fails at once (a crash loop)
/// must not be retried every 250 ms.
pub const STEADY_AFTER: Duration = Duration::from_secs(3);

/// The tray's client: the daemon's API over a channel with HTTP/2 keepalive.
pub type Client = v1::voicelink_client::VoicelinkClient<InterceptedService<Channel, Bearer>>;

/// Adds the bearer token to every request on a TCP connection (none on the
/// Unix socket).
#[derive(Debug, Clone)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert(voicelink_proto::AUTHORIZATION_HEADER, token.clone());
        }
        Ok(request)
    }
}

/// An endpoint whose connections ping the daemon. The URI is required but unused
/// on the Unix socket, where the connector decides.
fn endpoint(uri: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(uri.to_owned())?
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// Connects like [`voicelink_proto::connect`] (same errors, so "not running" is
/// told apart), but with HTTP/2 keepalive on the channel: the shared helper
/// builds its endpoint without it, and a tray must notice a daemon that hangs
/// while it waits, for hours, for the next event.
pub async fn connect(address: &DaemonAddress) -> Result<Client, ConnectError> {
    let other =
        |source: Box<dyn std::error::Error + Send + Sync>| ConnectError::Other { address: address.clone(), source };
    match address {
        DaemonAddress::Unix(path) => {
            // Probe once so the error names the cause rather than a transport error.
            if let Err(error) = tokio::net::UnixStream::connect(path).await {
                return Err(match error.kind() {
                    // A missing socket, or one left behind by a daemon that died.
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                        ConnectError::NotRunning { address: address.clone() }
                    }
                    io::ErrorKind::PermissionDenied => ConnectError::PermissionDenied { address: address.clone() },
                    _ => other(Box::new(error)),
                });
            }
            let path = path.clone();
            let connector = tower::service_fn(move |_| {
                let path = path.clone();
                async move { Ok::<_, io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            });
            let channel = endpoint("http://voiced.invalid")
                .map_err(|e| other(Box::new(e)))?
                .connect_with_connector(connector)
                .await
                .map_err(|e| other(Box::new(e)))?;
            Ok(v1::voicelink_client::VoicelinkClient::with_interceptor(channel, Bearer(None)))
        }
        DaemonAddress::Tcp { address: host_port, token } => {
            let value = AsciiMetadataValue::try_from(format!("Bearer {token}")).map_err(|_| ConnectError::BadToken)?;
            let channel =
                endpoint(&format!("http://{host_port}")).map_err(|e| other(Box::new(e)))?.connect().await.map_err(
                    |e| match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<io::Error>()) {
                        Some(io) if io.kind() == io::ErrorKind::ConnectionRefused => {
                            ConnectError::NotRunning { address: address.clone() }
                        }
                        _ => other(Box::new(e)),
                    },
                )?;
            Ok(v1::voicelink_client::VoicelinkClient::with_interceptor(channel, Bearer(Some(value))))
        }
    }
}

/// Why a session with the daemon ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Could not connect.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A call failed (the daemon went away mid-call, or refused the subscription).
    #[error("voiced: {}", .0.message())]
    Rpc(#[from] tonic::Status),
    /// Connecting, subscribing or reading the status took longer than this: the
    /// daemon is hung (stopped, or stuck).
    #[error("voiced did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
    /// The event feed ended: the daemon is shutting down.
    #[error("voiced stopped")]
    FeedEnded,
    /// The tray is quitting (its side of the channels is gone).
    #[error("the tray is quitting")]
    TrayGone,
}

impl SessionError {
    /// How the tray says it.
    pub fn reason(&self) -> String {
        match self {
            SessionError::Connect(ConnectError::NotRunning { .. }) => "voiced is not running".to_owned(),
            SessionError::Rpc(status) if status.code() == Code::Unavailable => "voiced is not running".to_owned(),
            SessionError::Timeout(_) => "voiced is not answering".to_owned(),
            // Broken under us: the daemon died, or stopped answering pings.
            SessionError::Rpc(status) if voicelink_proto::daemon_went_away(status) => {
                "lost the connection to voiced".to_owned()
            }
            other => other.to_string(),
        }
    }
}

/// How often the stats feed samples a call: the verdict is read by people.
const STATS_INTERVAL: Duration = Duration::from_secs(2);

/// How long the microphone check runs: long enough to say a few words.
const MICROPHONE_CHECK: Duration = Duration::from_secs(20);

/// Runs until the tray goes away (either channel closes): connect, follow the
/// feed, and reconnect with back-off whenever the daemon is gone.
pub async fn run(address: DaemonAddress, updates: mpsc::Sender<Update>, mut commands: mpsc::Receiver<Command>) {
    let mut backoff = Backoff::default();
    loop {
        let error = session(&address, &updates, &mut commands, &mut backoff).await;
        if matches!(error, SessionError::TrayGone) {
            return;
        }
        let retry_in = backoff.next_delay();
        let reason = error.reason();
        tracing::info!(%reason, retry_in_ms = retry_in.as_millis() as u64, "daemon unreachable; retrying");
        if updates.send(Update::Disconnected { reason: reason.clone(), retry_in }).await.is_err() {
            return;
        }
        // While waiting, a command chosen in a stale menu is refused at once
        // rather than queued for a daemon that may come back in another state.
        let wait = tokio::time::sleep(retry_in);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    let failed = Update::CommandFailed { command, message: reason.clone() };
                    if updates.send(failed).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Which calls want a stats subscription: the ones carrying audio.
fn wants_stats(state: CallState) -> bool {
    matches!(state, CallState::Active | CallState::OnHold | CallState::Reconnecting)
}

/// The tasks a session started; dropping it (when the session ends, however it
/// ends) stops them all, so nothing outlives the connection it was made on.
#[derive(Default)]
struct SessionTasks {
    /// Commands being run (each on its own, so a slow answer never holds up the feed).
    commands: JoinSet<()>,
    /// The stats feed of each live call.
    stats: HashMap<String, JoinHandle<()>>,
    /// The microphone check, while it runs.
    input_level: Option<JoinHandle<()>>,
}

impl Drop for SessionTasks {
    fn drop(&mut self) {
        // The JoinSet aborts its tasks when dropped; the handles must be told.
        for (_, task) in self.stats.drain() {
            task.abort();
        }
        if let Some(task) = self.input_level.take() {
            task.abort();
        }
    }
}

/// One connection: returns why it ended. Resets `backoff` once the session has
/// lasted [`STEADY_AFTER`].
async fn session(
    address: &DaemonAddress,
    updates: &mpsc::Sender<Update>,
    commands: &mut mpsc::Receiver<Command>,
    backoff: &mut Backoff,
) -> SessionError {
    let mut tasks = SessionTasks::default();
    match follow(address, updates, commands, backoff, &mut tasks).await {
        Ok(never) => match never {},
        Err(error) => error,
    }
}

async fn follow(
    address: &DaemonAddress,
    updates: &mpsc::Sender<Update>,
    commands: &mut mpsc::Receiver<Command>,
    backoff: &mut Backoff,
    tasks: &mut SessionTasks,
) -> Result<std::convert::Infallible, SessionError> {
    let setup = async {
        let mut client = connect(address).await?;
        // Subscribe first, so nothing that happens while we read the status is missed.
        let events = client.watch_events(v1::WatchEventsRequest {}).await?.into_inner();
        let status = client.get_status(v1::GetStatusRequest {}).await?.into_inner();
        let devices = match client.list_audio_devices(v1::ListAudioDevicesRequest {}).await {
            Ok(response) => Some(response.into_inner()),
            Err(status) => {
                // The menu shows the device submenus disabled; calls still work.
                tracing::warn!(code = ?status.code(), message = status.message(), "cannot list audio devices");
                None
            }
        };
        // The history may be off: then there is nothing to count.
        let missed = v1::ListHistoryRequest { missed_only: true, limit: 1, ..Default::default() };
        let unseen_missed = client.list_history(missed).await.map_or(0, |r| r.into_inner().unseen_missed);
        Ok::<_, SessionError>((client, events, status, devices, unseen_missed))
    };
    let (client, mut events, status, devices, unseen_missed) =
        tokio::time::timeout(SETUP_TIMEOUT, setup).await.map_err(|_| SessionError::Timeout(SETUP_TIMEOUT))??;
    tracing::info!(%address, version = %status.version, name = %status.display_name, "connected to voiced");
    updates
        .send(Update::Connected { status: Box::new(status), devices, unseen_missed })
        .await
        .map_err(|_| SessionError::TrayGone)?;

    let steady = tokio::time::sleep(STEADY_AFTER);
    tokio::pin!(steady);
    let mut steady_yet = false;
    loop {
        tokio::select! {
            message = events.message() => {
                let event = message?.ok_or(SessionError::FeedEnded)?;
                follow_stats(&client, &event, updates, &mut tasks.stats);
                // A call takes the microphone: the check ends.
                let call_started = matches!(event.kind, Some(event::Kind::IncomingCall(_)))
                    || matches!(&event.kind, Some(event::Kind::CallStateChanged(change))
                        if change.call.as_ref().is_some_and(|c| c.state() != CallState::Ended));
                if call_started && let Some(task) = tasks.input_level.take() {
                    task.abort();
                    tracing::info!("microphone check stopped");
                    updates.send(Update::InputLevel(None)).await.map_err(|_| SessionError::TrayGone)?;
                }
                updates.send(Update::Event(Box::new(event))).await.map_err(|_| SessionError::TrayGone)?;
            }
            command = commands.recv() => {
                match command.ok_or(SessionError::TrayGone)? {
                    Command::CheckMicrophone { on } => {
                        if let Some(task) = tasks.input_level.take() {
                            task.abort();
                        }
                        if on {
                            tasks.input_level = Some(tokio::spawn(check_microphone(client.clone(), updates.clone())));
                        } else {
                            tracing::info!("microphone check stopped");
                            updates.send(Update::InputLevel(None)).await.map_err(|_| SessionError::TrayGone)?;
                        }
                    }
                    command => {
                        tasks.commands.spawn(execute(client.clone(), command, updates.clone()));
                    }
                }
            }
            // Finished commands are collected so the set does not grow.
            Some(_) = tasks.commands.join_next(), if !tasks.commands.is_empty() => {}
            () = &mut steady, if !steady_yet => {
                steady_yet = true;
                backoff.reset();
                tracing::info!("the connection is steady; the back-off starts again from its shortest delay");
            }
        }
    }
}

/// Starts or stops stats subscriptions as calls go live and end.
fn follow_stats(
    client: &Client,
    event: &v1::Event,
    updates: &mpsc::Sender<Update>,
    stats: &mut HashMap<String, JoinHandle<()>>,
) {
    let changed: Vec<&v1::Call> = match &event.kind {
        Some(event::Kind::Snapshot(snapshot)) => {
            // A snapshot is the whole truth: drop subscriptions of calls not live in it.
            stats.retain(|id, task| {
                let live = snapshot.calls.iter().any(|c| &c.call_id == id && wants_stats(c.state()));
                if !live {
                    task.abort();
                }
                live
            });
            snapshot.calls.iter().collect()
        }
        Some(event::Kind::CallStateChanged(v1::CallStateChanged { call: Some(call), .. })) => vec![call],
        _ => Vec::new(),
    };
    for call in changed {
        if wants_stats(call.state()) {
            // A feed that ended (refused, or failed) is tried again on the call's
            // next change rather than left dead for the rest of the call.
            if stats.get(&call.call_id).is_none_or(JoinHandle::is_finished) {
                let task = tokio::spawn(watch_stats(client.clone(), call.call_id.clone(), updates.clone()));
                stats.insert(call.call_id.clone(), task);
            }
        } else if let Some(task) = stats.remove(&call.call_id) {
            task.abort();
        }
    }
}

/// Forwards one call's stats samples until the call or the feed ends. A daemon
/// without the stats feed (UNIMPLEMENTED) simply gives no verdict.
async fn watch_stats(mut client: Client, call_id: String, updates: mpsc::Sender<Update>) {
    let interval = prost_types::Duration::try_from(STATS_INTERVAL).ok();
    let request = v1::WatchStatsRequest { call_id: call_id.clone(), interval };
    let mut stream = match client.watch_stats(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            log_stats_refusal(&call_id, &status);
            return;
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(sample)) => {
                // The sample with the summary is the call's last.
                let last = sample.summary.is_some();
                if updates.send(Update::Stats(Box::new(sample))).await.is_err() || last {
                    return;
                }
            }
            Ok(None) => return,
            Err(status) => {
                log_stats_refusal(&call_id, &status);
                return;
            }
        }
    }
}

fn log_stats_refusal(call_id: &str, status: &tonic::Status) {
    if status.code() == Code::Unimplemented {
        tracing::info!(call_id, "this voiced has no stats feed; no quality verdict");
    } else {
        tracing::warn!(call_id, code = ?status.code(), message = status.message(), "stats feed failed");
    }
}

/// The microphone check: the daemon's default input's level, ten readings a
/// second, for [`MICROPHONE_CHECK`] (or until stopped).
async fn check_microphone(mut client: Client, updates: mpsc::Sender<Update>) {
    let command = Command::CheckMicrophone { on: true };
    let request = v1::WatchInputLevelRequest { input: String::new(), interval: None };
    let mut stream = match client.watch_input_level(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let _ = updates.send(Update::CommandFailed { command, message: status.message().to_owned() }).await;
            return;
        }
    };
    let until = tokio::time::Instant::now() + MICROPHONE_CHECK;
    let mut first = true;
    while let Ok(Ok(Some(reading))) = tokio::time::timeout_at(until, stream.message()).await {
        if std::mem::take(&mut first) {
            tracing::info!(input = %reading.input, peak_dbfs = reading.peak_dbfs, "microphone check: first reading");
        }
        if updates.send(Update::InputLevel(Some(reading))).await.is_err() {
            return;
        }
    }
    tracing::info!("microphone check stopped");
    let _ = updates.send(Update::InputLevel(None)).await;
}

/// Runs one command against the daemon and reports how it went
/// ([`Update::CommandDone`] or [`Update::CommandFailed`]).
async fn execute(mut client: Client, command: Command, updates: mpsc::Sender<Update>) {
    let result = match &command {
        Command::Dial { device_id } => {
            client.dial(v1::DialRequest { target: device_id.clone(), ..Default::default() }).await.map(drop)
        }
        Command::AddParticipant { call_id, device_id } => client
            .add_participant(v1::AddParticipantRequest { call_id: call_id.clone(), target: device_id.clone() })
            .await
            .map(drop),
        Command::Answer { call_id } => {
            client.answer(v1::AnswerRequest { call_id: call_id.clone(), ..Default::default() }).await.map(drop)
        }
        Command::AnswerAndMerge { call_id } => {
            let request = v1::AnswerRequest { call_id: call_id.clone(), merge: true, ..Default::default() };
            client.answer(request).await.map(drop)
        }
        Command::Decline { call_id } => {
            client.decline(v1::DeclineRequest { call_id: call_id.clone(), reason: String::new() }).await.map(drop)
        }
        Command::Hangup { call_id } => client.hangup(v1::HangupRequest { call_id: call_id.clone() }).await.map(drop),
        Command::SetMute { call_id, muted } => {
            client.set_mute(v1::SetMuteRequest { call_id: call_id.clone(), muted: *muted }).await.map(drop)
        }
        Command::SetSpeakerMute { call_id, muted } => client
            .set_speaker_mute(v1::SetSpeakerMuteRequest { call_id: call_id.clone(), muted: *muted })
            .await
            .map(drop),
        Command::SetHold { call_id, on_hold } => {
            client.set_hold(v1::SetHoldRequest { call_id: call_id.clone(), on_hold: *on_hold }).await.map(drop)
        }
        Command::SetRecording { call_id, recording } => client
            .set_recording(v1::SetRecordingRequest {
                call_id: call_id.clone(),
                recording: *recording,
                file: String::new(),
            })
            .await
            .map(drop),
        Command::MarkMissedSeen => {
            client.mark_missed_seen(v1::MarkMissedSeenRequest { up_to: String::new() }).await.map(drop)
        }
        Command::SetDoNotDisturb { on } => client
            .set_config(v1::SetConfigRequest {
                key: "calls.do_not_disturb".to_owned(),
                value: on.to_string(),
                unset: false,
            })
            .await
            .map(drop),
        Command::SetInput { spec } => client
            .set_audio_devices(v1::SetAudioDevicesRequest { audio_input: spec.clone(), audio_output: String::new() })
            .await
            .map(drop),
        Command::SetOutput { spec } => client
            .set_audio_devices(v1::SetAudioDevicesRequest { audio_input: String::new(), audio_output: spec.clone() })
            .await
            .map(drop),
        // The UI handles Quit itself, and the session the microphone check.
        Command::Quit | Command::CheckMicrophone { .. } => Ok(()),
    };
    let update = match result {
        Ok(()) => {
            tracing::info!(command = ?command, "done");
            Update::CommandDone { command }
        }
        Err(status) => {
            tracing::warn!(command = ?command, code = ?status.code(), message = status.message(), "refused");
            Update::CommandFailed { command, message: status.message().to_owned() }
        }
    };
    // The UI may be gone (quitting); then nobody needs to know.
    let _ = updates.send(update).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(2));
        let delays: Vec<u128> = (0..6).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(250));
    }

    #[test]
    fn a_broken_connection_is_told_apart_from_a_refusal() {
        let broken = tonic::Status::from_error(Box::new(io::Error::new(io::ErrorKind::BrokenPipe, "broken pipe")));
        assert_eq!(SessionError::Rpc(broken).reason(), "lost the connection to voiced");
        let refused = tonic::Status::permission_denied("not yours");
        assert_eq!(SessionError::Rpc(refused).reason(), "voiced: not yours");
        assert_eq!(SessionError::Timeout(SETUP_TIMEOUT).reason(), "voiced is not answering");
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_daemon_is_retried_with_growing_delays_and_commands_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let address = DaemonAddress::Unix(dir.path().join("nobody-here.sock"));
        let (updates_tx, mut updates) = mpsc::channel(8);
        let (commands, commands_rx) = mpsc::channel(8);
        let task = tokio::spawn(run(address, updates_tx, commands_rx));

        let mut delays = Vec::new();
        for _ in 0..4 {
            match updates.recv().await.expect("an update") {
                Update::Disconnected { reason, retry_in } => {
                    assert_eq!(reason, "voiced is not running");
                    delays.push(retry_in);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(delays, [250, 500, 1000, 2000].map(Duration::from_millis));

        commands.send(Command::Hangup { call_id: "c1".into() }).await.unwrap();
        let refused = loop {
            match updates.recv().await.expect("an update") {
                Update::CommandFailed { command, message } => break (command, message),
                Update::Disconnected { .. } => continue,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(refused, (Command::Hangup { call_id: "c1".into() }, "voiced is not running".to_owned()));

        // Dropping the tray's ends stops the task.
        drop(commands);
        drop(updates);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_daemon_that_accepts_but_never_answers_is_given_up_on_and_retried() {
        // A stopped (SIGSTOP) or stuck daemon: its socket accepts connections
        // and nothing ever answers on them.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hung.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let accepted = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let (updates_tx, mut updates) = mpsc::channel(8);
        let (_commands, commands_rx) = mpsc::channel(8);
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(run(DaemonAddress::Unix(path), updates_tx, commands_rx));

        let mut attempts = Vec::new();
        for _ in 0..3 {
            match updates.recv().await.expect("an update") {
                Update::Disconnected { reason, retry_in } => {
                    attempts.push((reason, retry_in, started.elapsed().as_secs()));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // Each attempt gives up after SETUP_TIMEOUT; the back-off never resets,
        // as no session was ever set up.
        let reason = "voiced is not answering".to_owned();
        assert_eq!(
            attempts,
            [
                (reason.clone(), Duration::from_millis(250), 5),
                (reason.clone(), Duration::from_millis(500), 10),
                (reason, Duration::from_secs(1), 15),
            ]
        );
        task.abort();
        accepted.abort();
    }
}
