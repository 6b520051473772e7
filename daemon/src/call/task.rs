//! The task that owns one call: its state machine (`voicelink_core::call_machine`),
//! its signaling connection and its media session. A thin driver: it feeds the
//! machine what happens, with the time from tokio's clock, and carries out what
//! the machine asks for. Everything else talks to it through `CallHandle`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use voicelink_core::audio_spec::{InputSpec, OutputSpec};
use voicelink_core::call_machine::{
    CallMachine, CallSetup, Command, InvalidCommand, MediaCommand, MediaInput, Output, Signaling, Timeouts,
};
use voicelink_core::call_record::CallRecord;
use voicelink_core::device_follow::DeviceMoved;
use voicelink_core::history::HistoryEntry;
use voicelink_core::reload::{LiveSettings, Ringing};
use voicelink_core::ring_tones::Ring;
use voicelink_core::stats::{CallMeter, CallStats, SAMPLE_PERIOD};
use voicelink_core::vocab::{CallId, DeviceId, Direction, FailCause, State};
use voicelink_core::voice_processing::ProcessingChange;
use voicelink_core::wire::{Body, Decoded, GroupPart, Message};

use super::registry::Inbox;
use crate::audio::bridge::{Bridge, BridgeLease};
use crate::audio::device_watch::Devices;
use crate::audio::endpoints::{Silence, Source, WavSink};
use crate::audio::ringer::Ringer;
use crate::audio::{Input, open_input, open_output};
use crate::clock;
use crate::events::{Change, EventHub};
use crate::identity::Identity;
use crate::media::audio_pump::{CaptureProcessing, Gates, ProcessedSource};
use crate::media::peer_connection::{ConnectionEvent, NetworkSettings};
use crate::media::recording::RecordingTap;
use crate::media::session::{CodecSettings, MediaSession};
use crate::signaling::transport::{Connection, Endpoint, SignalingError};
use crate::stats::StatsBoard;
use crate::store::Store;

/// How often an idle signaling connection is pinged.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// How soon a WebSocket ping follows each message we send. A lost segment that
/// is alone in flight waits for TCP's tail-loss probe, which Linux sets at twice
/// the round trip plus the peer's delayed-ACK allowance (200 ms); with a second
/// segment behind it the peer's SACK, or a probe at twice the round trip, gets
/// it sent again within a few round trips. On a lossy link that is an answer
/// arriving in milliseconds rather than a third of a second later.
const LOSS_PROBE: Duration = Duration::from_millis(10);

/// A command for a call's task.
pub struct CallCommand {
    /// What the user (or the switchboard) asks.
    pub command: Command,
    /// For `Answer`: audio endpoints that replace the defaults.
    pub audio: Option<(InputSpec, OutputSpec)>,
    /// For `SetRecording(true)`: the file (absolute); `None` for a new one in the
    /// recordings folder.
    pub recording_file: Option<PathBuf>,
    /// The outcome, and the call afterwards.
    pub reply: oneshot::Sender<Result<CallRecord, InvalidCommand>>,
}

/// How the registry reaches a call.
#[derive(Clone)]
pub struct CallHandle {
    /// The call.
    pub id: CallId,
    /// Commands to its task.
    pub commands: mpsc::Sender<CallCommand>,
}

/// What every call needs from the daemon.
#[derive(Clone)]
pub struct CallContext {
    /// This device.
    pub identity: Arc<Identity>,
    /// TLS for signaling.
    pub endpoint: Endpoint,
    /// Where calls are published.
    pub hub: EventHub,
    /// Where calls' statistics are published.
    pub stats: StatsBoard,
    /// This device's display name (for call requests).
    pub own_name: String,
    /// Ring and connect timeouts.
    pub timeouts: Timeouts,
    /// Opus and ICE settings.
    pub codec: CodecSettings,
    /// Loop `file:` inputs.
    pub loop_files: bool,
    /// Where recordings go when the user names no file.
    pub recordings_dir: PathBuf,
    /// Known devices and call history.
    pub store: Store,
    /// The registry's inbox: told of state changes, glare and the task's end.
    pub inbox: mpsc::Sender<Inbox>,
    /// The daemon is stopping: hang up.
    pub shutdown: CancellationToken,
    /// The config in force: a call's player follows its output volume.
    pub settings: watch::Receiver<LiveSettings>,
    /// How a new call rings.
    pub ringing: Ringing,
    /// The sound devices as they come and go.
    pub devices: Devices,
}

impl CallContext {
    /// Takes a new call's settings from the config in force.
    pub fn apply(&mut self, live: &LiveSettings) {
        let calls = &live.calls;
        let reconnect = Duration::from_secs(u64::from(calls.reconnect_timeout_secs.0));
        self.own_name = live.display_name.to_string();
        self.timeouts = Timeouts {
            ring: Duration::from_secs(u64::from(calls.ring_timeout_secs.0)),
            reconnect,
            ..Timeouts::default()
        };
        self.codec = CodecSettings {
            frame: calls.frame_ms.duration(),
            bitrate: calls.bitrate_kbps.0 * 1000,
            min_bitrate: calls.min_bitrate_kbps.0 * 1000,
            dtx: calls.dtx,
            network: NetworkSettings {
                stun_servers: calls.stun_servers.iter().map(ToString::to_string).collect(),
                allow_loopback: calls.allow_loopback,
                // ICE's own verdict comes after ours: the reconnect timeout decides.
                ice_failed_after: reconnect + Duration::from_secs(5),
            },
        };
        self.loop_files = live.loop_files;
        self.ringing = live.ringing.clone();
    }

    fn setup(&self, group: Option<GroupPart>) -> CallSetup {
        let frame_ms = u32::try_from(self.codec.frame.as_millis()).unwrap_or(20);
        CallSetup { own_name: self.own_name.clone(), frame_ms, timeouts: self.timeouts, group }
    }
}

/// Where to reach the callee.
pub struct Destination {
    /// Its addresses, in order of preference.
    pub addresses: Vec<SocketAddr>,
    /// Its device ID, when known (from mDNS or `ID@host:port`).
    pub expected: Option<DeviceId>,
    /// Its name, for display until it says otherwise.
    pub name: String,
}

struct Call {
    id: CallId,
    context: CallContext,
    machine: CallMachine,
    record: CallRecord,
    connection: Option<Connection>,
    media: Option<MediaSession>,
    meter: CallMeter,
    /// Held once the call has audio: the bridge's endpoints stay open while a
    /// media session is replaced, and the replacement gets them again.
    lease: Option<BridgeLease>,
    /// The last sample, with the summary, is on the board.
    stats_finished: bool,
    /// Where the pumps hand frames for our recording.
    recording: RecordingTap,
    /// A recording asked for and not yet confirmed by the peer.
    pending_recording: Option<PendingRecording>,
    /// Why our recording stopped on its own, for the event that says so.
    recording_error: Option<String>,
    /// When a ping is due behind the last message sent ([`LOSS_PROBE`]).
    loss_probe: Option<Instant>,
    /// The ringtone or ringing tone, while the call rings.
    ringer: Option<Ringer>,
    /// Where the audio endpoints tell of their device moves.
    device_moves: (mpsc::UnboundedSender<DeviceMoved>, mpsc::UnboundedReceiver<DeviceMoved>),
    /// The microphone and speaker, shared with the other legs of a group call.
    bridge: Bridge,
    /// The bridge's voice processing: a call that shares the bridge (a held
    /// call beside a waiting one it was answered for) may change it, and this
    /// call's record shows it too.
    processing: watch::Receiver<ProcessingChange>,
}

/// Which call a new leg joins, and through which endpoints.
pub struct LegOf {
    /// For a leg of a group call: what its call request says of the group.
    pub group: Option<GroupPart>,
    /// The endpoints it shares.
    pub bridge: Bridge,
}

/// A recording the peer has been told of: its file is open, nothing is written yet.
struct PendingRecording {
    file: WavSink,
    path: PathBuf,
    reply: oneshot::Sender<Result<CallRecord, InvalidCommand>>,
}

/// Starts an outgoing call with the ID the switchboard gave it; returns its
/// handle and first record at once, while the task connects.
pub fn dial(
    context: CallContext,
    id: CallId,
    destination: Destination,
    input: InputSpec,
    output: OutputSpec,
    leg: LegOf,
) -> (CallHandle, CallRecord) {
    let mut record = CallRecord::new(
        id.clone(),
        destination.expected,
        destination.name.clone(),
        Direction::Outgoing,
        (input, output),
        SystemTime::now(),
    );
    record.group = leg.group.as_ref().map(|group| group.id.clone());
    let machine = CallMachine::outgoing(clock::now(), context.setup(leg.group));
    let (handle, commands) = handle(&id);
    let call = Call::published(id, context, machine, record.clone(), None, leg.bridge);
    tokio::spawn(call.run_outgoing(destination, commands));
    (handle, record)
}

/// Starts an incoming call on a connection whose first message was a call request.
pub fn incoming(
    context: CallContext,
    connection: Connection,
    id: CallId,
    caller_name: String,
    (input, output): (InputSpec, OutputSpec),
    ring: Option<Ring>,
    leg: LegOf,
) -> CallHandle {
    let peer = Some(connection.peer);
    let machine = CallMachine::incoming(clock::now(), context.setup(None));
    let mut record =
        CallRecord::new(id.clone(), peer, caller_name, Direction::Incoming, (input, output), SystemTime::now());
    record.group = leg.group.map(|group| group.id);
    record.waiting = ring == Some(Ring::Waiting);
    let (handle, commands) = handle(&id);
    let call = Call::published(id, context, machine, record, Some(connection), leg.bridge);
    tokio::spawn(call.run_incoming(commands, ring));
    handle
}

fn handle(id: &CallId) -> (CallHandle, mpsc::Receiver<CallCommand>) {
    let (commands, receiver) = mpsc::channel(16);
    (CallHandle { id: id.clone(), commands }, receiver)
}

impl Call {
    /// A new call, published before its task runs: the registry counts it at once
    /// and a stats subscriber finds it.
    fn published(
        id: CallId,
        context: CallContext,
        machine: CallMachine,
        record: CallRecord,
        connection: Option<Connection>,
        bridge: Bridge,
    ) -> Call {
        let mut record = record;
        // A leg that joins a call with its own voice processing shows it.
        let mut processing = bridge.processing();
        record.processing = *processing.borrow_and_update();
        context.hub.publish(Change::CallStarted(record.clone()));
        // In the history from the start: a call the daemon never sees end (it was
        // killed) is still there, marked interrupted.
        context.store.call_started(HistoryEntry::of(&record, None));
        let mut meter = CallMeter::new(context.codec.info());
        context.stats.update(meter.sample(&record, None, SystemTime::now()));
        Call {
            id,
            context,
            machine,
            record,
            connection,
            media: None,
            meter,
            lease: None,
            stats_finished: false,
            recording: RecordingTap::default(),
            pending_recording: None,
            recording_error: None,
            loss_probe: None,
            ringer: None,
            device_moves: mpsc::unbounded_channel(),
            bridge,
            processing,
        }
    }

    async fn run_outgoing(mut self, destination: Destination, mut commands: mpsc::Receiver<CallCommand>) {
        // The endpoint is cloned so the connect future does not borrow the call.
        let endpoint = self.context.endpoint.clone();
        let first = self.machine.call_request().map(|request| Message::new(self.id.clone(), request));
        let connect = endpoint.connect(&destination.addresses, destination.expected, first.as_ref());
        tokio::pin!(connect);
        // The user may hang up while we are still connecting.
        let connected = loop {
            tokio::select! {
                result = &mut connect => break Some(result),
                Some(command) = commands.recv() => self.command(command).await,
                () = clock::sleep_until(self.machine.poll_timeout()) => self.machine.handle_timeout(clock::now()),
                () = self.context.shutdown.cancelled() => self.hang_up(),
            }
            self.flush().await;
            if self.machine.state() == State::Ended {
                break None;
            }
        };
        match connected {
            Some(Ok(connection)) => {
                self.record.peer = Some(connection.peer);
                self.connection = Some(connection);
                self.machine.handle_signaling(Signaling::Connected, clock::now());
            }
            Some(Err(error)) => {
                let cause = match &error {
                    SignalingError::IdentityMismatch { .. } => FailCause::IdentityMismatch(error.to_string()),
                    _ => FailCause::Unreachable(error.to_string()),
                };
                warn!(call_id = %self.id, %error, "cannot reach the peer");
                self.machine.handle_signaling(Signaling::Failed(cause), clock::now());
            }
            None => {}
        }
        self.run(commands).await;
    }

    /// An incoming call; it `ring`s here unless it is answered at once (or
    /// rings silently beside another).
    async fn run_incoming(mut self, commands: mpsc::Receiver<CallCommand>, ring: Option<Ring>) {
        let waiting = self.record.waiting;
        info!(call_id = %self.id, peer = %self.peer_short(), name = %self.record.peer_name, waiting, "incoming call");
        if let Some(ring) = ring {
            self.ringer = Ringer::start(ring, &self.context.ringing, &self.record.output, &self.context.devices);
        }
        // Media is negotiated while it rings; the endpoints open on answer.
        if let Err(cause) = self.start_media().await {
            self.machine.handle_media(MediaInput::Failed(cause), clock::now());
        }
        self.run(commands).await;
    }

    /// Creates the media session (once signaling is up, which is when the peer
    /// is known). A caller's endpoints open now: it hears the answer at once; a
    /// callee's open when it answers, or now if it already has (a replacement).
    async fn start_media(&mut self) -> Result<(), FailCause> {
        if self.media.is_some() {
            return Ok(());
        }
        let peer = self.record.peer.ok_or_else(|| FailCause::Protocol("the peer's identity is unknown".into()))?;
        let media = MediaSession::new(&self.context.identity, peer, self.context.codec.clone())
            .await
            .map_err(|e| FailCause::Protocol(e.to_string()))?;
        self.media = Some(media);
        if self.machine.direction() == Direction::Outgoing || self.lease.is_some() {
            self.attach_audio().await?;
        }
        Ok(())
    }

    /// Gives the call's media session its audio: through the bridge, whose
    /// endpoints this leg opens unless another leg of the call did.
    async fn attach_audio(&mut self) -> Result<(), FailCause> {
        if self.media.is_none() {
            return Ok(());
        }
        let opening = self.bridge.opening().await;
        if !self.bridge.is_open() {
            self.open_audio().await?;
        }
        drop(opening);
        let Some(media) = self.media.as_mut() else { return Ok(()) };
        let (source, sink) = self.bridge.leg();
        // An echo peer sends back what this leg hears, not the bridge's input.
        let input = match self.record.input {
            InputSpec::Echo => Input::Echo,
            _ => Input::Source(Box::new(source)),
        };
        media
            .attach_audio(input, Box::new(sink), self.recording.clone(), self.context.settings.clone())
            .map_err(|e| FailCause::Audio(e.to_string()))?;
        if self.lease.is_none() {
            self.lease = Some(self.bridge.lease());
        }
        Ok(())
    }

    /// Opens the call's audio endpoints into its bridge; a microphone gets its
    /// voice processing here, with the speaker as the echo reference.
    async fn open_audio(&mut self) -> Result<(), FailCause> {
        // Opening a sound card blocks (a sound server's handshake, ALSA's
        // probing): not on the runtime's threads.
        let (input, output) = (self.record.input.clone(), self.record.output.clone());
        let (loop_files, devices, moves) =
            (self.context.loop_files, self.context.devices.clone(), self.device_moves.0.clone());
        let opened = tokio::task::spawn_blocking(move || {
            let source = open_input(&input, loop_files, &devices, Some(moves.clone()))?;
            let sink = open_output(&output, &devices, Some(moves))?;
            Ok::<_, crate::audio::endpoints::EndpointError>((source, sink))
        })
        .await;
        let (input, mut sink) = match opened {
            Ok(result) => result.map_err(|e| FailCause::Audio(e.to_string()))?,
            Err(_) => return Err(FailCause::Audio("opening the audio endpoints failed (the opener panicked)".into())),
        };
        // The call may have let go of its media while the devices opened.
        if self.media.is_none() {
            return Ok(());
        }
        let source: Box<dyn Source> = match input {
            Input::Source(source) if self.record.input.is_sound_card() => {
                let choice = self.bridge.processing();
                let processing = CaptureProcessing::new(sink.echo_reference(), choice, self.context.settings.clone());
                Box::new(ProcessedSource { source, processing })
            }
            Input::Source(source) => source,
            Input::Echo => Box::new(Silence),
        };
        self.bridge.open(source, sink);
        Ok(())
    }

    /// A new file in the recordings folder: when, who, which call.
    fn default_recording_path(&self) -> PathBuf {
        let when = humantime::format_rfc3339_seconds(SystemTime::now()).to_string().replace(':', "-");
        let who: String = self
            .record
            .peer_name
            .chars()
            .map(|c| if c.is_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
            .take(40)
            .collect();
        let call: String = self.id.to_string().chars().take(8).collect();
        self.context.recordings_dir.join(format!("{when}-{who}-{call}.wav"))
    }

    /// Our recording started (the peer confirmed) or stopped.
    fn recording_changed(&mut self, started: bool, reason: Option<String>) {
        if started {
            let Some(PendingRecording { file, path, reply }) = self.pending_recording.take() else { return };
            self.recording.start(file, path.clone());
            info!(call_id = %self.id, file = %path.display(), "recording the call");
            self.record.recording = Some(path);
            let _ = reply.send(Ok(self.record.clone()));
        } else if let Some(PendingRecording { file, path, reply }) = self.pending_recording.take() {
            // Never started: the file holds nothing.
            drop(file);
            let _ = std::fs::remove_file(&path);
            let reason = reason.unwrap_or_else(|| "stopped before the peer confirmed it".into());
            let _ = reply.send(Err(InvalidCommand::because("record", reason)));
            return;
        } else {
            match self.recording.stop() {
                Some(Ok(length)) => info!(call_id = %self.id, seconds = length.as_secs(), "recording stopped"),
                Some(Err(error)) => {
                    warn!(call_id = %self.id, %error, "the recording could not be completed");
                    self.recording_error.get_or_insert(error.to_string());
                }
                None => {}
            }
            self.record.recording = None;
        }
        let error = self.recording_error.take();
        self.context.hub.publish(Change::CallRecording { call: self.record.clone(), error });
    }

    /// This call became a leg of the group call `group`.
    fn joined_group(&mut self, group: CallId) {
        self.record.group = Some(group);
        self.context.hub.publish(Change::CallJoinedGroup(self.record.clone()));
    }

    fn peer_short(&self) -> String {
        self.record.peer.map_or_else(|| "unknown".to_owned(), |p| p.short())
    }

    /// Hangs up because the daemon stops or the registry went away; a hang-up
    /// fits every state but the end, where it changes nothing.
    fn hang_up(&mut self) {
        if self.machine.handle_command(Command::Hangup, clock::now()).is_err() {
            debug!(call_id = %self.id, "hang-up refused: the call is over");
        }
    }

    /// The call's life after set-up: until the machine says it is over.
    async fn run(mut self, mut commands: mpsc::Receiver<CallCommand>) {
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sampling = tokio::time::interval(SAMPLE_PERIOD);
        sampling.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.flush().await;
            if self.machine.state() == State::Ended {
                break;
            }
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.command(command).await,
                    None => self.hang_up(),
                },
                message = recv(&mut self.connection) => self.signal(message).await,
                event = next_event(&mut self.media) => self.media_event(event),
                () = clock::sleep_until(self.machine.poll_timeout()) => self.machine.handle_timeout(clock::now()),
                Some(moved) = self.device_moves.1.recv() => {
                    self.context.hub.publish(Change::CallDeviceMoved { call_id: self.id.clone(), moved });
                }
                Ok(()) = self.processing.changed() => {
                    let shared = *self.processing.borrow_and_update();
                    if shared != self.record.processing {
                        self.record.processing = shared;
                        self.context.hub.publish(Change::CallProcessing(self.record.clone()));
                    }
                }
                () = clock::sleep_until(self.loss_probe) => {
                    self.loss_probe = None;
                    if let Some(connection) = self.connection.as_mut() {
                        // Its failure is the keepalive's to judge.
                        let _ = connection.ping().await;
                    }
                }
                _ = keepalive.tick() => {
                    if let Some(connection) = self.connection.as_mut() && connection.ping().await.is_err() {
                        self.machine.peer_lost(clock::now());
                    }
                }
                _ = sampling.tick() => {
                    if let Some(media) = self.media.as_mut() {
                        media.refresh_ice(clock::now()).await;
                    }
                    if let Some(error) = self.recording.take_failure() {
                        warn!(call_id = %self.id, %error, "the recording stopped; the call goes on");
                        self.recording_error = Some(error.to_string());
                        let _ = self.machine.handle_command(Command::SetRecording(false), clock::now());
                    }
                    let stats = self.sample();
                    self.context.stats.update(stats);
                }
                () = self.context.shutdown.cancelled() => self.hang_up(),
            }
        }
        // Both at once: the WebSocket close handshake needs the peer to read, and
        // the peer's task is closing its own media meanwhile; one after the other,
        // each side waited out the other's media close.
        let (media, lease) = (self.media.take(), self.lease.take());
        let media = async {
            if let Some(media) = media {
                media.close().await;
            }
            // The devices close with the media, not after the goodbye; the
            // last user of a sound card closes it, which may block: not on the
            // runtime's threads.
            if let Some(lease) = lease {
                let _ = tokio::task::spawn_blocking(move || drop(lease)).await;
            }
        };
        let connection = async {
            if let Some(connection) = self.connection.take() {
                connection.close().await;
            }
        };
        tokio::join!(media, connection);
        let _ = self.context.inbox.send(Inbox::Finished(self.id.clone())).await;
    }

    /// The call's statistics now.
    fn sample(&mut self) -> CallStats {
        let media = self.media.as_ref().map(MediaSession::sample);
        self.meter.sample(&self.record, media.as_ref(), SystemTime::now())
    }

    /// Puts the call's last sample, with the summary, on the board.
    fn finish_stats(&mut self) -> CallStats {
        let stats = self.sample();
        let last = self.meter.finish(&self.record, stats, SystemTime::now());
        self.context.stats.finish(last.clone());
        self.stats_finished = true;
        last
    }

    async fn command(&mut self, command: CallCommand) {
        let CallCommand { command, audio, recording_file, reply } = command;
        if matches!(command, Command::SetProcessing(_)) && !self.record.input.is_sound_card() {
            let reason = format!("its input is {}, and only a microphone's is processed", self.record.input);
            let _ = reply.send(Err(InvalidCommand::because("change the voice processing of", reason)));
            return;
        }
        if command == Command::SetRecording(true) {
            let busy = match (&self.pending_recording, &self.record.recording) {
                (Some(_), _) => Some("a recording is waiting for the peer's confirmation".to_owned()),
                (None, Some(path)) => Some(format!("it is already being recorded into {}", path.display())),
                (None, None) => None,
            };
            if let Some(reason) = busy {
                let _ = reply.send(Err(InvalidCommand::because("record", reason)));
                return;
            }
        }
        if command == Command::SetRecording(true) && matches!(self.machine.state(), State::Active | State::OnHold) {
            // The file first: one that cannot be written is refused before the
            // peer is told anything. The answer waits for the peer's confirmation.
            let path = recording_file.unwrap_or_else(|| self.default_recording_path());
            let file = std::fs::create_dir_all(path.parent().unwrap_or(&path))
                .map_err(|e| crate::audio::endpoints::EndpointError::WriteWav {
                    path: path.clone(),
                    reason: e.to_string(),
                })
                .and_then(|()| WavSink::create_stereo(&path));
            match file {
                Ok(file) => {
                    if let Err(refused) = self.machine.handle_command(command, clock::now()) {
                        drop(file);
                        let _ = std::fs::remove_file(&path);
                        let _ = reply.send(Err(refused));
                    } else {
                        self.pending_recording = Some(PendingRecording { file, path, reply });
                    }
                }
                Err(error) => {
                    let _ = reply.send(Err(InvalidCommand::because("record", error.to_string())));
                }
            }
            self.flush().await;
            return;
        }
        // We added a participant to this call: it is a leg of a group call now.
        if let Command::ShareParticipants { group, .. } = &command
            && self.record.group.is_none()
        {
            self.joined_group(group.clone());
        }
        let answering = command == Command::Answer;
        if answering && let Some((input, output)) = audio {
            self.record.input = input;
            self.record.output = output;
        }
        if answering && self.machine.state() == State::Incoming {
            // The ringtone's stream closes first: a device may take one stream
            // at a time (ALSA's hw:).
            if let Some(ringer) = self.ringer.take() {
                ringer.stop().await;
            }
            // Open the audio endpoints before accepting, so a bad one fails the
            // call instead of answering into silence.
            if let Err(cause) = self.attach_audio().await {
                let _ = reply.send(Err(InvalidCommand::because("answer", cause.to_string())));
                self.machine.handle_media(MediaInput::Failed(cause), clock::now());
                return;
            }
        }
        let outcome = self.machine.handle_command(command, clock::now());
        self.flush().await;
        let _ = reply.send(outcome.map(|()| self.record.clone()));
    }

    async fn signal(&mut self, message: Result<Option<Decoded>, SignalingError>) {
        let now = clock::now();
        match message {
            Ok(Some(Decoded::Message(message))) if message.call_id == self.id => {
                self.machine.handle_remote(message.body, now);
            }
            Ok(Some(Decoded::Message(message))) => {
                debug!(call_id = %self.id, other = %message.call_id, "ignoring a message for another call");
            }
            Ok(Some(Decoded::UnknownType { kind })) => {
                debug!(call_id = %self.id, kind, "ignoring a signaling message of an unknown type");
            }
            Ok(None) => {
                self.connection = None;
                self.machine.handle_signaling(Signaling::Closed, now);
            }
            Err(error) => {
                warn!(call_id = %self.id, %error, "signaling failed");
                if let Some(connection) = self.connection.take() {
                    connection.refuse(self.id.clone(), &error.to_string()).await;
                }
                self.machine.handle_signaling(Signaling::Failed(FailCause::Protocol(error.to_string())), now);
            }
        }
    }

    fn media_event(&mut self, event: Option<ConnectionEvent>) {
        let event = match event {
            Some(ConnectionEvent::LocalCandidate { candidate, sdp_mid, sdp_mline_index }) => {
                MediaInput::LocalCandidate { candidate, sdp_mid, sdp_mline_index }
            }
            Some(ConnectionEvent::IceConnected) => MediaInput::IceConnected,
            Some(ConnectionEvent::Disconnected) => {
                info!(call_id = %self.id, "the media path went silent: reconnecting");
                MediaInput::Disconnected
            }
            Some(ConnectionEvent::Connected) => {
                debug!(call_id = %self.id, attempt = self.machine.media_attempt(), "media connected");
                MediaInput::Connected
            }
            Some(ConnectionEvent::Failed(cause)) => MediaInput::Failed(cause),
            None => MediaInput::Failed(FailCause::Protocol("the media session stopped".into())),
        };
        self.machine.handle_media(event, clock::now());
    }

    /// Work for the media layer; what it answers goes back to the machine.
    async fn media_command(&mut self, command: MediaCommand) {
        if let MediaCommand::Replace = command {
            info!(call_id = %self.id, attempt = self.machine.media_attempt(), "media did not connect: starting a fresh media session");
            if let Some(media) = self.media.take() {
                media.close().await;
            }
        }
        if matches!(command, MediaCommand::Replace | MediaCommand::CreateOffer)
            && let Err(cause) = self.start_media().await
        {
            self.machine.handle_media(MediaInput::Failed(cause), clock::now());
            return;
        }
        let Some(media) = self.media.as_mut() else { return };
        let connection = media.connection();
        let result = match command {
            MediaCommand::Replace => Ok(None),
            MediaCommand::CreateOffer => connection.create_offer().await.map(Some),
            MediaCommand::AcceptOffer(sdp) => connection.accept_offer(sdp).await.map(Some),
            MediaCommand::AcceptAnswer(sdp) => connection.accept_answer(sdp).await.map(|()| None),
            MediaCommand::AddCandidate(candidate) => {
                connection.add_remote_candidate(candidate).await;
                Ok(None)
            }
        };
        let event = match result {
            Ok(Some(sdp)) => MediaInput::LocalDescription(sdp),
            Ok(None) => return,
            Err(error) => MediaInput::Failed(error.cause()),
        };
        self.machine.handle_media(event, clock::now());
    }

    async fn send(&mut self, body: Body) {
        let Some(connection) = self.connection.as_mut() else { return };
        // A failed send is not the end by itself: the peer may have closed after
        // saying why (busy, decline), and reading the connection will tell.
        if let Err(error) = connection.send(&Message::new(self.id.clone(), body)).await {
            debug!(call_id = %self.id, %error, "cannot send to the peer");
        }
        self.loss_probe = Some(clock::now() + LOSS_PROBE);
    }

    /// Carries out what the machine asked for, publishing every change.
    async fn flush(&mut self) {
        while let Some(output) = self.machine.poll_output() {
            match output {
                Output::Send(body) => self.send(body).await,
                Output::Media(command) => self.media_command(command).await,
                Output::StateChanged { from, to } => self.state_changed(from, to).await,
                Output::RemoteRinging => {
                    debug!(call_id = %self.id, "the peer is ringing");
                    // Not while inviting someone into a group call: the
                    // conversation goes on, and the tone would drown it.
                    if self.record.state == State::Outgoing && self.ringer.is_none() && self.record.group.is_none() {
                        self.ringer = Ringer::start(
                            Ring::Ringback,
                            &self.context.ringing,
                            &self.record.output,
                            &self.context.devices,
                        );
                    }
                }
                Output::PeerNamed(name) => self.record.peer_name = name,
                Output::Participants { group, participants } => {
                    if self.record.group.is_none() {
                        info!(call_id = %self.id, %group, "the peer made this a group call");
                        self.joined_group(group.clone());
                    }
                    if let Some(peer) = self.record.peer {
                        let told = Inbox::Participants { call: self.id.clone(), peer, group, participants };
                        let _ = self.context.inbox.send(told).await;
                    }
                }
                Output::Yield => {
                    // The registry decides, and ends this call if it agrees.
                    if let Some(peer) = self.record.peer {
                        let _ = self.context.inbox.send(Inbox::Yielded { peer, call: self.id.clone() }).await;
                    }
                }
                Output::MuteChanged(muted) => {
                    self.record.muted = muted;
                    self.context.hub.publish(Change::CallMuted(self.record.clone()));
                }
                Output::SpeakerMuteChanged(muted) => {
                    self.record.speaker_muted = muted;
                    self.context.hub.publish(Change::CallSpeakerMuted(self.record.clone()));
                }
                Output::ProcessingChanged(change) => {
                    // On the bridge's choice: a call sharing it may have
                    // changed it since this one last looked.
                    let shared = *self.processing.borrow_and_update();
                    self.record.processing = shared.then(change);
                    self.bridge.set_processing(self.record.processing);
                    self.context.hub.publish(Change::CallProcessing(self.record.clone()));
                }
                Output::HoldChanged(on_hold) => {
                    self.record.on_hold = on_hold;
                    self.record.held_here = self.machine.held_here();
                    self.record.held_by_peer = self.machine.held_by_peer();
                    self.context.hub.publish(Change::CallHeld(self.record.clone()));
                }
                Output::RecordingStarted => self.recording_changed(true, None),
                Output::RecordingStopped(reason) => self.recording_changed(false, reason),
                Output::PeerRecording(on) => {
                    info!(call_id = %self.id, peer = %self.peer_short(), recording = on, "the peer's recording");
                    self.record.recorded_by_peer = on;
                    self.context.hub.publish(Change::CallRecording { call: self.record.clone(), error: None });
                }
                Output::Audio { send, play, speaker } => {
                    if let Some(media) = self.media.as_ref() {
                        media.set_gates(Gates { send, play, speaker });
                    }
                }
            }
        }
    }

    async fn state_changed(&mut self, from: State, to: State) {
        // Ringing stops the moment the call is answered, declined or cancelled
        // (and its output is closed before the call's own opens).
        if let Some(ringer) = self.ringer.take() {
            ringer.stop().await;
        }
        self.record.state = to;
        self.record.waiting &= to == State::Incoming;
        self.record.end_reason = self.machine.end_reason().cloned();
        if to == State::Active && self.record.answered_at.is_none() {
            let now = SystemTime::now();
            self.record.answered_at = Some(now);
            // A completed call: the device is known from now on.
            if let Some(peer) = self.record.peer {
                // Clean already: names are cleaned where they arrive (wire, advert).
                self.context.store.met(peer, self.record.peer_name.clone(), now);
            }
        }
        info!(call_id = %self.id, peer = %self.peer_short(), ?from, ?to, reason = ?self.record.end_reason, "call state");
        let stats = if to == State::Ended {
            // The last sample, with the summary, goes on the event too.
            Some(Arc::new(self.finish_stats()))
        } else {
            let stats = self.sample();
            self.context.stats.update(stats);
            None
        };
        if to == State::Ended {
            self.context.store.call_ended(HistoryEntry::of(&self.record, stats.as_deref()));
        }
        self.context.hub.publish(Change::CallState { call: self.record.clone(), previous: from, stats });
        let changed = Inbox::StateChanged { call: self.id.clone(), state: to, peer: self.record.peer };
        let _ = self.context.inbox.send(changed).await;
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // A task that stops without ending its call (a panic) must not leave a
        // sample on the board forever, nor one-call stats streams waiting.
        if !self.stats_finished {
            self.finish_stats();
        }
        // Likewise a recording: its file is completed, or removed if it never began.
        let _ = self.recording.stop();
        if let Some(PendingRecording { file, path, .. }) = self.pending_recording.take() {
            drop(file);
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn recv(connection: &mut Option<Connection>) -> Result<Option<Decoded>, SignalingError> {
    match connection {
        Some(connection) => connection.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_event(media: &mut Option<MediaSession>) -> Option<ConnectionEvent> {
    match media {
        Some(media) => media.next_event().await,
        None => std::future::pending().await,
    }
}
