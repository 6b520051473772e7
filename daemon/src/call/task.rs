//! The task that owns one call: its state machine, its signaling connection and
//! its media session. Everything else talks to it through `CallHandle`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::machine::{CallMachine, Direction, FailCause, Input, InvalidCommand, Output, State, Timeouts};
use super::record::CallRecord;
use super::registry::Inbox;
use crate::audio::{InputSpec, OutputSpec, open_input, open_output};
use crate::events::{Change, EventHub};
use crate::identity::{DeviceId, Identity};
use crate::media::session::{CodecSettings, Gates, MediaEvent, MediaSession};
use crate::signaling::transport::{Connection, Endpoint, SignalingError};
use crate::signaling::wire::{Body, CallId, Decoded, EndCode, Message};
use crate::stats::{CallMeter, CallStats, SAMPLE_PERIOD, StatsBoard};

/// How often an idle signaling connection is pinged.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// A command for a call's task.
pub struct CallCommand {
    /// What the user asks.
    pub input: Input,
    /// For `Answer`: audio endpoints that replace the defaults.
    pub audio: Option<(InputSpec, OutputSpec)>,
    /// The outcome, and the call afterwards.
    pub reply: oneshot::Sender<Result<CallRecord, InvalidCommand>>,
}

/// How the registry reaches a call.
#[derive(Clone)]
pub struct CallHandle {
    /// The call.
    pub id: CallId,
    /// Its peer, when known.
    pub peer: Option<DeviceId>,
    /// Who dialed.
    pub direction: Direction,
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
    /// The registry's inbox: told of glare yields and when a call's task ends.
    pub inbox: mpsc::Sender<Inbox>,
    /// The daemon is stopping: hang up.
    pub shutdown: CancellationToken,
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
    /// The last sample, with the summary, is on the board.
    stats_finished: bool,
    /// Told to yield to the peer's call (glare) and waiting for the registry to
    /// end this one: the peer closing the connection now is expected, not a loss.
    yielding: bool,
}

/// Starts an outgoing call; returns its handle and first record at once, while
/// the task connects.
pub fn dial(
    context: CallContext,
    destination: Destination,
    input: InputSpec,
    output: OutputSpec,
) -> (CallHandle, CallRecord) {
    let id = CallId::random();
    let peer = destination.expected;
    let machine = CallMachine::outgoing(Instant::now(), context.timeouts);
    let record = new_record(&id, peer, destination.name.clone(), Direction::Outgoing, input, output);
    let (handle, commands) = handle(&id, peer, Direction::Outgoing);
    let call = Call::published(id, context, machine, record.clone(), None);
    tokio::spawn(call.run_outgoing(destination, commands));
    (handle, record)
}

/// Starts an incoming call on a connection whose first message was a call request.
pub fn incoming(
    context: CallContext,
    connection: Connection,
    id: CallId,
    caller_name: String,
    input: InputSpec,
    output: OutputSpec,
) -> CallHandle {
    let peer = Some(connection.peer);
    let machine = CallMachine::incoming(Instant::now(), context.timeouts);
    let record = new_record(&id, peer, caller_name, Direction::Incoming, input, output);
    let (handle, commands) = handle(&id, peer, Direction::Incoming);
    let call = Call::published(id, context, machine, record, Some(connection));
    tokio::spawn(call.run_incoming(commands));
    handle
}

fn handle(id: &CallId, peer: Option<DeviceId>, direction: Direction) -> (CallHandle, mpsc::Receiver<CallCommand>) {
    let (commands, receiver) = mpsc::channel(16);
    (CallHandle { id: id.clone(), peer, direction, commands }, receiver)
}

fn new_record(
    id: &CallId,
    peer: Option<DeviceId>,
    name: String,
    direction: Direction,
    input: InputSpec,
    output: OutputSpec,
) -> CallRecord {
    CallRecord {
        id: id.clone(),
        peer,
        peer_name: name,
        direction,
        state: match direction {
            Direction::Outgoing => State::Outgoing,
            Direction::Incoming => State::Incoming,
        },
        started_at: SystemTime::now(),
        answered_at: None,
        muted: false,
        on_hold: false,
        held_here: false,
        held_by_peer: false,
        end_reason: None,
        input,
        output,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
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
    ) -> Call {
        context.hub.publish(Change::CallStarted(record.clone()));
        let mut meter = CallMeter::new(context.codec.info());
        context.stats.update(meter.sample(&record, None, SystemTime::now()));
        Call { id, context, machine, record, connection, media: None, meter, stats_finished: false, yielding: false }
    }

    async fn run_outgoing(mut self, destination: Destination, mut commands: mpsc::Receiver<CallCommand>) {
        // The endpoint is cloned so the connect future does not borrow the call.
        let endpoint = self.context.endpoint.clone();
        let connect = endpoint.connect(&destination.addresses, destination.expected);
        tokio::pin!(connect);
        // The user may hang up while we are still connecting.
        let connected = loop {
            tokio::select! {
                result = &mut connect => break Some(result),
                Some(command) = commands.recv() => {
                    self.command(command).await;
                    if self.machine.state() == State::Ended { break None; }
                }
                () = sleep_until(self.machine.poll_timeout()) => {
                    self.machine.handle_timeout(Instant::now());
                    if self.machine.state() == State::Ended { break None; }
                }
                () = self.context.shutdown.cancelled() => { let _ = self.machine.handle(Input::Hangup, Instant::now()); break None; }
            }
        };
        match connected {
            Some(Ok(connection)) => {
                self.record.peer = Some(connection.peer);
                self.connection = Some(connection);
                let frame_ms = u32::try_from(self.context.codec.frame.as_millis()).ok();
                let request = Body::CallRequest { caller_name: self.context.own_name.clone(), frame_ms };
                self.send(request).await;
                match self.start_media().await {
                    Ok(()) => {
                        if let Some(offer) = self.offer().await {
                            self.send(Body::Offer { sdp: offer }).await;
                        }
                    }
                    Err(cause) => self.fail(cause),
                }
            }
            Some(Err(error)) => {
                let cause = match &error {
                    SignalingError::IdentityMismatch { .. } => FailCause::IdentityMismatch(error.to_string()),
                    _ => FailCause::Unreachable(error.to_string()),
                };
                warn!(call_id = %self.id, %error, "cannot reach the peer");
                self.fail(cause);
            }
            None => {}
        }
        self.run(commands).await;
    }

    async fn run_incoming(mut self, commands: mpsc::Receiver<CallCommand>) {
        info!(call_id = %self.id, peer = %self.peer_short(), name = %self.record.peer_name, "incoming call");
        if let Err(cause) = self.start_media().await {
            self.fail(cause);
        }
        self.run(commands).await;
    }

    async fn start_media(&mut self) -> Result<(), FailCause> {
        // Media starts once signaling is up, which is when the peer is known.
        let peer = self.record.peer.ok_or_else(|| FailCause::Protocol("the peer's identity is unknown".into()))?;
        let mut media = MediaSession::new(&self.context.identity, peer, self.context.codec.clone())
            .await
            .map_err(|e| FailCause::Protocol(e.to_string()))?;
        if self.machine.direction() == Direction::Outgoing {
            attach(&mut media, &self.record.input, &self.record.output, self.context.loop_files)?;
        }
        self.media = Some(media);
        Ok(())
    }

    async fn offer(&mut self) -> Option<String> {
        let media = self.media.as_mut()?;
        match media.create_offer().await {
            Ok(sdp) => Some(sdp),
            Err(error) => {
                self.fail(FailCause::Protocol(error.to_string()));
                None
            }
        }
    }

    fn peer_short(&self) -> String {
        self.record.peer.map_or_else(|| "unknown".to_owned(), |p| p.short())
    }

    fn fail(&mut self, cause: FailCause) {
        let _ = self.machine.handle(Input::MediaFailed(cause), Instant::now());
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
                    None => { let _ = self.machine.handle(Input::Hangup, Instant::now()); }
                },
                message = recv(&mut self.connection) => self.signal(message).await,
                event = next_event(&mut self.media) => self.media_event(event).await,
                () = sleep_until(self.machine.poll_timeout()) => self.machine.handle_timeout(Instant::now()),
                _ = keepalive.tick() => {
                    if let Some(connection) = self.connection.as_mut() && connection.ping().await.is_err() {
                        let _ = self.machine.handle(Input::PeerLost, Instant::now());
                    }
                }
                _ = sampling.tick() => {
                    if let Some(media) = self.media.as_mut() {
                        media.refresh_ice().await;
                    }
                    let stats = self.sample();
                    self.context.stats.update(stats);
                }
                () = self.context.shutdown.cancelled() => { let _ = self.machine.handle(Input::Hangup, Instant::now()); }
            }
        }
        self.flush().await;
        if let Some(media) = self.media.take() {
            media.close().await;
        }
        if let Some(connection) = self.connection.take() {
            connection.close().await;
        }
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
        let CallCommand { input, audio, reply } = command;
        let answering = input == Input::Answer;
        if answering && let Some((input, output)) = audio {
            self.record.input = input;
            self.record.output = output;
        }
        if answering && self.machine.state() == State::Incoming {
            // Open the audio endpoints before accepting, so a bad one fails the
            // call instead of answering into silence.
            let (input_spec, output_spec) = (self.record.input.clone(), self.record.output.clone());
            if let Some(media) = self.media.as_mut()
                && let Err(cause) = attach(media, &input_spec, &output_spec, self.context.loop_files)
            {
                let _ = reply.send(Err(InvalidCommand::because("answer", cause.to_string())));
                self.fail(cause);
                return;
            }
        }
        let outcome = self.machine.handle(input, Instant::now());
        self.flush().await;
        let _ = reply.send(outcome.map(|()| self.record.clone()));
    }

    async fn signal(&mut self, message: Result<Option<Decoded>, SignalingError>) {
        let now = Instant::now();
        let message = match message {
            Ok(Some(Decoded::Message(message))) => message,
            Ok(Some(Decoded::UnknownType { kind })) => {
                debug!(call_id = %self.id, kind, "ignoring a signaling message of an unknown type");
                return;
            }
            Ok(None) => {
                self.connection = None;
                if !self.yielding {
                    let _ = self.machine.handle(Input::PeerLost, now);
                }
                return;
            }
            Err(error) => {
                warn!(call_id = %self.id, %error, "signaling failed");
                if let Some(connection) = self.connection.take() {
                    connection.refuse(self.id.clone(), &error.to_string()).await;
                }
                let _ = self.machine.handle(Input::MediaFailed(FailCause::Protocol(error.to_string())), now);
                return;
            }
        };
        if message.call_id != self.id {
            debug!(call_id = %self.id, other = %message.call_id, "ignoring a message for another call");
            return;
        }
        match message.body {
            Body::Offer { sdp } if self.machine.direction() == Direction::Incoming => {
                let Some(media) = self.media.as_mut() else { return };
                match media.accept_offer(sdp).await {
                    Ok(answer) => self.send(Body::Answer { sdp: answer }).await,
                    Err(error) => self.fail(media_failure(error)),
                }
            }
            Body::Answer { sdp } if self.machine.direction() == Direction::Outgoing => {
                let Some(media) = self.media.as_mut() else { return };
                if let Err(error) = media.accept_answer(sdp).await {
                    self.fail(media_failure(error));
                }
            }
            Body::IceCandidate { candidate, .. } => {
                if let Some(media) = self.media.as_mut() {
                    media.add_remote_candidate(candidate).await;
                }
            }
            Body::Ringing { callee_name } => {
                // Learn the callee's name (we may have dialed an address).
                if !callee_name.trim().is_empty() && callee_name.len() <= 63 {
                    self.record.peer_name = callee_name.trim().to_owned();
                }
                let _ = self.machine.handle(Input::Remote(Body::Ringing { callee_name: String::new() }), now);
            }
            Body::CallRequest { .. } | Body::Offer { .. } | Body::Answer { .. } | Body::Keepalive => {}
            // Yield through the registry, which ends this call once it has noted
            // the glare (see registry.rs); until then the call still rings.
            Body::End { reason: EndCode::Glare }
                if self.machine.direction() == Direction::Outgoing && self.machine.state() == State::Outgoing =>
            {
                if let Some(peer) = self.record.peer {
                    self.yielding = true;
                    let _ = self.context.inbox.send(Inbox::Yielded { peer, call: self.id.clone() }).await;
                }
            }
            body => {
                let _ = self.machine.handle(Input::Remote(body), now);
            }
        }
    }

    async fn media_event(&mut self, event: Option<MediaEvent>) {
        let now = Instant::now();
        match event {
            Some(MediaEvent::LocalCandidate(candidate)) => {
                let body = Body::IceCandidate {
                    candidate: candidate.candidate,
                    sdp_mid: candidate.sdp_mid.filter(|m| !m.is_empty()),
                    sdp_mline_index: candidate.sdp_mline_index,
                };
                self.send(body).await;
            }
            Some(MediaEvent::Connected) => {
                debug!(call_id = %self.id, "media connected");
                let _ = self.machine.handle(Input::MediaConnected, now);
            }
            Some(MediaEvent::Failed(cause)) => self.fail(cause),
            None => self.fail(FailCause::Protocol("the media session stopped".into())),
        }
    }

    async fn send(&mut self, body: Body) {
        let Some(connection) = self.connection.as_mut() else { return };
        // A failed send is not the end by itself: the peer may have closed after
        // saying why (busy, decline), and reading the connection will tell.
        if let Err(error) = connection.send(&Message::new(self.id.clone(), body)).await {
            debug!(call_id = %self.id, %error, "cannot send to the peer");
        }
    }

    /// Carries out what the machine asked for, publishing every change.
    async fn flush(&mut self) {
        while let Some(output) = self.machine.poll_output() {
            match output {
                Output::Send(Body::Ringing { .. }) => {
                    let callee_name = self.context.own_name.clone();
                    self.send(Body::Ringing { callee_name }).await;
                }
                Output::Send(body) => self.send(body).await,
                Output::StateChanged { from, to } => {
                    self.record.state = to;
                    self.record.end_reason = self.machine.end_reason().cloned();
                    if to == State::Active && self.record.answered_at.is_none() {
                        self.record.answered_at = Some(SystemTime::now());
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
                    self.context.hub.publish(Change::CallState { call: self.record.clone(), previous: from, stats });
                }
                Output::RemoteRinging => debug!(call_id = %self.id, "the peer is ringing"),
                Output::MuteChanged(muted) => {
                    self.record.muted = muted;
                    self.context.hub.publish(Change::CallMuted(self.record.clone()));
                }
                Output::HoldChanged(on_hold) => {
                    self.record.on_hold = on_hold;
                    self.record.held_here = self.machine.held_here();
                    self.record.held_by_peer = self.machine.held_by_peer();
                    self.context.hub.publish(Change::CallHeld(self.record.clone()));
                }
                Output::Audio { send, play } => {
                    if let Some(media) = self.media.as_ref() {
                        media.set_gates(Gates { send, play });
                    }
                }
            }
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // A task that stops without ending its call (a panic) must not leave a
        // sample on the board forever, nor one-call stats streams waiting.
        if !self.stats_finished {
            self.finish_stats();
        }
    }
}

fn attach(media: &mut MediaSession, input: &InputSpec, output: &OutputSpec, loop_files: bool) -> Result<(), FailCause> {
    let source = open_input(input, loop_files).map_err(|e| FailCause::Audio(e.to_string()))?;
    let sink = open_output(output).map_err(|e| FailCause::Audio(e.to_string()))?;
    media.attach_audio(source, sink).map_err(|e| FailCause::Audio(e.to_string()))
}

fn media_failure(error: crate::media::session::MediaError) -> FailCause {
    match error {
        crate::media::session::MediaError::Fingerprint(_) => FailCause::IdentityMismatch(error.to_string()),
        other => FailCause::Protocol(other.to_string()),
    }
}

async fn recv(connection: &mut Option<Connection>) -> Result<Option<Decoded>, SignalingError> {
    match connection {
        Some(connection) => connection.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_event(media: &mut Option<MediaSession>) -> Option<MediaEvent> {
    match media {
        Some(media) => media.next_event().await,
        None => std::future::pending().await,
    }
}
