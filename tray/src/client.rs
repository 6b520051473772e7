//! The tray's only connection to the daemon: a task that subscribes to the event
//! feed, forwards what arrives as [`Update`]s, runs the commands chosen in the
//! menu, and follows the stats feed of each live call for its quality verdict.
//!
//! The event feed drives everything: there is no polling. When the daemon is not
//! running, stops or restarts, the task reports it and tries again after a
//! [`Backoff`] delay that doubles up to a cap, so a missing daemon costs a
//! connection attempt every few seconds and never a busy loop.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::Code;
use voicelink_proto::v1::{self, CallState, event};
use voicelink_proto::{Client, ConnectError, DaemonAddress};

use crate::command::Command;
use crate::model::Update;

/// Delays between connection attempts: `initial`, doubling up to `max`; back to
/// `initial` once a connection has worked.
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

/// Why a session with the daemon ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Could not connect.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A call failed (the daemon went away mid-call, or refused the subscription).
    #[error("voiced: {}", .0.message())]
    Rpc(#[from] tonic::Status),
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
            other => other.to_string(),
        }
    }
}

/// How often the stats feed samples a call: the verdict is read by people.
const STATS_INTERVAL: Duration = Duration::from_secs(2);

/// Runs until the tray goes away (either channel closes): connect, follow the
/// feed, and reconnect with back-off whenever the daemon is gone.
pub async fn run(address: DaemonAddress, updates: mpsc::Sender<Update>, mut commands: mpsc::Receiver<Command>) {
    let mut backoff = Backoff::default();
    loop {
        let mut connected = false;
        let error = session(&address, &updates, &mut commands, &mut connected).await;
        if matches!(error, SessionError::TrayGone) {
            return;
        }
        if connected {
            backoff.reset();
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
    matches!(state, CallState::Active | CallState::OnHold)
}

/// One connection: returns why it ended. Sets `connected` once subscribed.
async fn session(
    address: &DaemonAddress,
    updates: &mpsc::Sender<Update>,
    commands: &mut mpsc::Receiver<Command>,
    connected: &mut bool,
) -> SessionError {
    let mut stats: HashMap<String, JoinHandle<()>> = HashMap::new();
    let result = follow(address, updates, commands, connected, &mut stats).await;
    for (_, task) in stats.drain() {
        task.abort();
    }
    match result {
        Ok(never) => match never {},
        Err(error) => error,
    }
}

async fn follow(
    address: &DaemonAddress,
    updates: &mpsc::Sender<Update>,
    commands: &mut mpsc::Receiver<Command>,
    connected: &mut bool,
    stats: &mut HashMap<String, JoinHandle<()>>,
) -> Result<std::convert::Infallible, SessionError> {
    let mut client = voicelink_proto::connect(address.clone()).await?;
    // Subscribe first, so nothing that happens while we read the status is missed.
    let mut events = client.watch_events(v1::WatchEventsRequest {}).await?.into_inner();
    let status = client.get_status(v1::GetStatusRequest {}).await?.into_inner();
    let devices = match client.list_audio_devices(v1::ListAudioDevicesRequest {}).await {
        Ok(response) => Some(response.into_inner()),
        Err(status) => {
            // The menu shows the device submenus disabled; calls still work.
            tracing::warn!(code = ?status.code(), message = status.message(), "cannot list audio devices");
            None
        }
    };
    tracing::info!(%address, version = %status.version, name = %status.display_name, "connected to voiced");
    updates.send(Update::Connected { status, devices }).await.map_err(|_| SessionError::TrayGone)?;
    *connected = true;

    loop {
        tokio::select! {
            message = events.message() => {
                let event = message?.ok_or(SessionError::FeedEnded)?;
                follow_stats(&client, &event, updates, stats);
                updates.send(Update::Event(Box::new(event))).await.map_err(|_| SessionError::TrayGone)?;
            }
            command = commands.recv() => {
                let command = command.ok_or(SessionError::TrayGone)?;
                // Each command runs on its own so a slow answer never holds up the feed.
                tokio::spawn(execute(client.clone(), command, updates.clone()));
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
            stats
                .entry(call.call_id.clone())
                .or_insert_with(|| tokio::spawn(watch_stats(client.clone(), call.call_id.clone(), updates.clone())));
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
                if updates.send(Update::Stats(Box::new(sample))).await.is_err() {
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

/// Runs one command against the daemon; a refusal becomes [`Update::CommandFailed`].
async fn execute(mut client: Client, command: Command, updates: mpsc::Sender<Update>) {
    let result = match &command {
        Command::Dial { device_id } => {
            client.dial(v1::DialRequest { target: device_id.clone(), ..Default::default() }).await.map(drop)
        }
        Command::Answer { call_id } => {
            client.answer(v1::AnswerRequest { call_id: call_id.clone(), ..Default::default() }).await.map(drop)
        }
        Command::Decline { call_id } => {
            client.decline(v1::DeclineRequest { call_id: call_id.clone(), reason: String::new() }).await.map(drop)
        }
        Command::Hangup { call_id } => client.hangup(v1::HangupRequest { call_id: call_id.clone() }).await.map(drop),
        Command::SetMute { call_id, muted } => {
            client.set_mute(v1::SetMuteRequest { call_id: call_id.clone(), muted: *muted }).await.map(drop)
        }
        Command::SetHold { call_id, on_hold } => {
            client.set_hold(v1::SetHoldRequest { call_id: call_id.clone(), on_hold: *on_hold }).await.map(drop)
        }
        Command::SetInput { spec } => client
            .set_audio_devices(v1::SetAudioDevicesRequest { audio_input: spec.clone(), audio_output: String::new() })
            .await
            .map(drop),
        Command::SetOutput { spec } => client
            .set_audio_devices(v1::SetAudioDevicesRequest { audio_input: String::new(), audio_output: spec.clone() })
            .await
            .map(drop),
        // The UI handles Quit itself; nothing to ask the daemon.
        Command::Quit => Ok(()),
    };
    match result {
        Ok(()) => tracing::info!(command = ?command, "done"),
        Err(status) => {
            tracing::warn!(command = ?command, code = ?status.code(), message = status.message(), "refused");
            let _ = updates.send(Update::CommandFailed { command, message: status.message().to_owned() }).await;
        }
    }
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
}
