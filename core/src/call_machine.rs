//! The call state machine: the whole call protocol of one call. Pure: inputs go in
//! with the time, by who sent them — the user ([`CallMachine::handle_command`],
//! which may refuse), the peer ([`CallMachine::handle_remote`]), the signaling
//! connection ([`CallMachine::handle_signaling`]), the media layer
//! ([`CallMachine::handle_media`]) and the clock ([`CallMachine::handle_timeout`]);
//! only the user's can fail. Outputs (messages for the peer, work for the media
//! layer, events, audio gating) come out of [`CallMachine::poll_output`], and
//! [`CallMachine::poll_timeout`] says when to call `handle_timeout`. The task that
//! owns the call does the I/O.
//!
//! The protocol, as docs/PROTOCOL.md specifies it: the caller sends `call_request`
//! and then its SDP offer once the connection is up; the callee says `ringing`,
//! answers the offer with its SDP, and both trickle ICE candidates, so media is
//! negotiated while the phone rings. Audio is gated here: nothing is sent or
//! played before the call is answered, mute stops sending, hold (either side's)
//! stops both directions.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::vocab::CallId;
use crate::vocab::{Direction, DisplayName, EndReason, FailCause, State};
use crate::voice_processing::ProcessingChange;
use crate::wire::{Body, DeclineCode, EndCode, GroupPart, Participant};

/// Timeouts the machine enforces.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// How long a call rings before it ends as "no answer".
    pub ring: Duration,
    /// How long media may take to connect after the answer.
    pub connect: Duration,
    /// How long the encrypted session (DTLS) may take once ICE has found a path,
    /// before the caller replaces the media session with a fresh one. A healthy
    /// handshake on a LAN takes milliseconds; one that lost a flight retransmits
    /// after 1 s (so 1.2 s lets one retransmit finish); one that stalled (see
    /// docs/upstream/) never finishes. Measured at 15 % loss each way over 20
    /// calls: 2.5 s gave answer → active p95 2.55 s, 1.2 s gave 1.25 s.
    pub media_attempt: Duration,
    /// Media sessions a call tries before it fails.
    pub media_attempts: u32,
    /// How long an answered call waits in "reconnecting" for a silent link to
    /// come back before it ends as "peer lost".
    pub reconnect: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            ring: Duration::from_secs(30),
            connect: Duration::from_secs(15),
            media_attempt: Duration::from_millis(1200),
            media_attempts: 8,
            reconnect: Duration::from_secs(40),
        }
    }
}

/// What a call needs to know about this side.
#[derive(Debug, Clone)]
pub struct CallSetup {
    /// This device's display name (in `call_request` and `ringing`).
    pub own_name: String,
    /// The frame length the caller proposes, in ms.
    pub frame_ms: u32,
    /// Ring and connect timeouts.
    pub timeouts: Timeouts,
    /// A caller's leg of a group call: what its `call_request` says of it.
    pub group: Option<GroupPart>,
}

/// Work for the media layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaCommand {
    /// Close the media session and start a fresh one (same certificate, same
    /// audio endpoints); what follows negotiates it.
    Replace,
    /// Caller: create the offer (answered with [`MediaInput::LocalDescription`]).
    CreateOffer,
    /// Callee: take the caller's offer (answered with [`MediaInput::LocalDescription`]).
    AcceptOffer(String),
    /// Caller: take the callee's answer.
    AcceptAnswer(String),
    /// A candidate from the peer.
    AddCandidate(String),
}

/// What the machine wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send to the peer.
    Send(Body),
    /// Work for the media layer.
    Media(MediaCommand),
    /// The state changed.
    StateChanged {
        /// Before.
        from: State,
        /// Now.
        to: State,
    },
    /// The peer is ringing (outgoing calls).
    RemoteRinging,
    /// The peer said its name (we may have dialed an address).
    PeerNamed(String),
    /// The peer told this call to yield to its own (glare): the switchboard
    /// decides, and ends this call with [`Command::Yield`] if it agrees.
    Yield,
    /// Mute changed.
    MuteChanged(bool),
    /// Hold changed (either side).
    HoldChanged(bool),
    /// A participant of a group call named who else is in it.
    Participants {
        /// The group call.
        group: CallId,
        /// Who.
        participants: Vec<Participant>,
    },
    /// The peer confirmed it shows our recording: start writing.
    RecordingStarted,
    /// Stop writing our recording; with a reason when it never started.
    RecordingStopped(Option<String>),
    /// The peer started or stopped recording (show it before confirming).
    PeerRecording(bool),
    /// Speaker mute changed.
    SpeakerMuteChanged(bool),
    /// The user changed the call's voice processing (the caller knows what
    /// is in force, and applies it).
    ProcessingChanged(ProcessingChange),
    /// Whether audio may be sent and played now.
    Audio {
        /// Send captured audio to the peer.
        send: bool,
        /// Play what the peer sends.
        play: bool,
        /// What is played reaches the speaker (not muted there). A recording
        /// keeps what is played either way.
        speaker: bool,
    },
}

/// A command from the user (or the switchboard); refused if it does not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Answer.
    Answer,
    /// Decline, with a reason for the caller.
    Decline(String),
    /// Hang up (or cancel, or decline while ringing).
    Hangup,
    /// Mute or unmute.
    SetMute(bool),
    /// Mute or unmute the speaker: the peer is not heard here, and hears
    /// nothing of it.
    SetSpeakerMute(bool),
    /// Turn voice processing stages on or off for this call.
    SetProcessing(ProcessingChange),
    /// Hold or resume.
    SetHold(bool),
    /// Record the call, or stop. Recording starts once the peer confirms that its
    /// user is shown it ([`Output::RecordingStarted`]).
    SetRecording(bool),
    /// End a call that was told to yield to glare (the peer already knows).
    Yield,
    /// Tell the peer, a participant of the group call, who else is in it.
    ShareParticipants {
        /// The group call.
        group: CallId,
        /// Who, the peer excluded.
        participants: Vec<Participant>,
    },
}

/// What happened to the signaling connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signaling {
    /// Caller: the connection to the callee is up and authenticated.
    Connected,
    /// The peer closed the connection.
    Closed,
    /// The connection could not be made, or broke (keepalive unanswered, a
    /// malformed message).
    Failed(FailCause),
}

/// What the media layer reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaInput {
    /// Our SDP (the offer or the answer), to send.
    LocalDescription(String),
    /// ICE found a path to the peer (DTLS starts now).
    IceConnected,
    /// The path went silent (ICE disconnected); it may come back by itself.
    Disconnected,
    /// One of our ICE candidates, to trickle.
    LocalCandidate {
        /// The `candidate:` attribute value.
        candidate: String,
        /// Its media stream ID.
        sdp_mid: Option<String>,
        /// Its m-line index.
        sdp_mline_index: Option<u16>,
    },
    /// ICE and DTLS are up.
    Connected,
    /// Media could not be set up or broke for good.
    Failed(FailCause),
}

/// A user command that does not fit the call (its state, or something else).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidCommand(String);

impl InvalidCommand {
    /// A command the call's state does not allow.
    fn in_state(action: &'static str, state: State) -> Self {
        InvalidCommand(format!("cannot {action} a call that is {}", describe(state)))
    }

    /// A command that failed for another reason than the state.
    pub fn because(action: &'static str, reason: String) -> Self {
        InvalidCommand(format!("cannot {action} this call: {reason}"))
    }
}

fn describe(state: State) -> &'static str {
    match state {
        State::Outgoing => "ringing the peer",
        State::Incoming => "ringing here",
        State::Connecting => "connecting",
        State::Active => "active",
        State::OnHold => "on hold",
        State::Reconnecting => "reconnecting",
        State::Ended => "over",
    }
}

/// How long the peer has to confirm that its user is shown our recording. An
/// older peer never confirms (it ignores the message): nothing is recorded then.
pub const RECORDING_CONSENT: Duration = Duration::from_secs(3);

/// Our recording of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recording {
    Off,
    /// The peer was told (request `seq`); nothing is written until it confirms
    /// that request, by `deadline`.
    Asking {
        deadline: Instant,
        seq: u32,
    },
    On,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Ring,
    Connect,
    Reconnect,
}

/// Where the current media session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MediaProgress {
    /// Being negotiated, or ICE checking.
    Negotiating,
    /// ICE found a path; DTLS is running.
    IceConnected,
    /// ICE and DTLS are up.
    Ready,
}

/// One call's state.
#[derive(Debug)]
pub struct CallMachine {
    direction: Direction,
    state: State,
    setup: CallSetup,
    muted: bool,
    speaker_muted: bool,
    held_here: bool,
    held_there: bool,
    recording: Recording,
    /// The last `seq` of our `recording` messages.
    recording_seq: u32,
    recorded_by_peer: bool,
    media: MediaProgress,
    /// The current media session: 1 for the first.
    media_attempt: u32,
    /// When the caller gives the current media session up for a fresh one.
    media_deadline: Option<Instant>,
    /// Caller: an offer is out and its answer not yet applied.
    awaiting_answer: bool,
    /// Caller: when the current session's offer went out.
    offered_at: Option<Instant>,
    /// Callee: an offer was applied (a later one replaces the session).
    offered: bool,
    /// Told to yield to glare: the peer closing the connection now is expected.
    yielding: bool,
    audio: (bool, bool, bool),
    timer: Option<(Instant, Timer)>,
    end_reason: Option<EndReason>,
    answered_at: Option<Instant>,
    outputs: VecDeque<Output>,
}

impl CallMachine {
    /// A call this side is placing; it rings the peer once the connection is up.
    pub fn outgoing(now: Instant, setup: CallSetup) -> Self {
        Self::new(Direction::Outgoing, State::Outgoing, now, setup)
    }

    /// A call the peer placed; it rings here and the peer is told so.
    pub fn incoming(now: Instant, setup: CallSetup) -> Self {
        let mut machine = Self::new(Direction::Incoming, State::Incoming, now, setup);
        let callee_name = machine.setup.own_name.clone();
        machine.outputs.push_back(Output::Send(Body::Ringing { callee_name }));
        machine
    }

    fn new(direction: Direction, state: State, now: Instant, setup: CallSetup) -> Self {
        let ring = now + setup.timeouts.ring;
        CallMachine {
            direction,
            state,
            setup,
            muted: false,
            speaker_muted: false,
            held_here: false,
            held_there: false,
            recording: Recording::Off,
            recording_seq: 0,
            recorded_by_peer: false,
            media: MediaProgress::Negotiating,
            media_attempt: 1,
            media_deadline: None,
            awaiting_answer: false,
            offered_at: None,
            offered: false,
            yielding: false,
            audio: (false, false, true),
            timer: Some((ring, Timer::Ring)),
            end_reason: None,
            answered_at: None,
            outputs: VecDeque::new(),
        }
    }

    /// Where the call is.
    pub fn state(&self) -> State {
        self.state
    }

    /// Who placed it.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Why it ended, once it has.
    pub fn end_reason(&self) -> Option<&EndReason> {
        self.end_reason.as_ref()
    }

    /// Muted here.
    pub fn muted(&self) -> bool {
        self.muted
    }

    /// The speaker is muted here.
    pub fn speaker_muted(&self) -> bool {
        self.speaker_muted
    }

    /// Held by either side.
    pub fn on_hold(&self) -> bool {
        self.held_here || self.held_there
    }

    /// Held by us (only we can resume that).
    pub fn held_here(&self) -> bool {
        self.held_here
    }

    /// Held by the peer.
    pub fn held_by_peer(&self) -> bool {
        self.held_there
    }

    /// We record the call (the peer confirmed it knows).
    pub fn recording(&self) -> bool {
        self.recording == Recording::On
    }

    /// The peer records the call.
    pub fn recorded_by_peer(&self) -> bool {
        self.recorded_by_peer
    }

    /// When it was answered.
    pub fn answered_at(&self) -> Option<Instant> {
        self.answered_at
    }

    /// The media session in use: 1 for the first, more after replacements.
    pub fn media_attempt(&self) -> u32 {
        self.media_attempt
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let consent = match self.recording {
            Recording::Asking { deadline, .. } => Some(deadline),
            _ => None,
        };
        [self.timer.map(|(at, _)| at), self.media_deadline, consent].into_iter().flatten().min()
    }

    /// Time has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Recording::Asking { deadline, .. } = self.recording
            && now >= deadline
        {
            self.stop_recording(Some(
                "the peer did not confirm that it shows the recording (an older voicelink?); nothing was recorded"
                    .into(),
            ));
        }
        if self.media_deadline.is_some_and(|at| now >= at) {
            self.media_deadline = None;
            self.retry_media(FailCause::DtlsFailed);
        }
        let Some((at, timer)) = self.timer else { return };
        if now < at {
            return;
        }
        self.timer = None;
        match (timer, self.state) {
            (Timer::Ring, State::Outgoing) => self.end(EndReason::NoAnswer, Some(EndCode::NoAnswer)),
            (Timer::Ring, State::Incoming) => self.end(EndReason::NoAnswer, None),
            (Timer::Connect, State::Connecting) => {
                self.end(EndReason::Failed(FailCause::ConnectTimeout), Some(EndCode::Failed))
            }
            (Timer::Reconnect, State::Reconnecting) => self.end(EndReason::PeerLost, None),
            _ => {}
        }
    }

    /// A command from the user: refused (and nothing changes) if it does not fit
    /// the state. An ended call takes every command and ignores it.
    pub fn handle_command(&mut self, command: Command, now: Instant) -> Result<(), InvalidCommand> {
        let refuse = |action, state| Err(InvalidCommand::in_state(action, state));
        match (command, self.state) {
            (_, State::Ended) => {}
            (Command::Answer, State::Incoming) => {
                self.outputs.push_back(Output::Send(Body::Accept));
                self.answered(now);
            }
            (Command::Answer, state) => return refuse("answer", state),
            (Command::Decline(reason), State::Incoming) => {
                self.outputs.push_back(Output::Send(Body::Decline { reason: reason.clone(), code: None }));
                self.end(EndReason::Declined(reason), None);
            }
            (Command::Decline(_), state) => return refuse("decline", state),
            (Command::Hangup, State::Outgoing) => self.end(EndReason::Cancelled, Some(EndCode::Cancelled)),
            (Command::Hangup, State::Incoming) => {
                self.outputs.push_back(Output::Send(Body::Decline { reason: String::new(), code: None }));
                self.end(EndReason::Declined(String::new()), None);
            }
            (Command::Hangup, _) => self.end(EndReason::HungUpLocal, Some(EndCode::HangUp)),
            (Command::SetMute(muted), _) => {
                if muted != self.muted {
                    self.muted = muted;
                    self.outputs.push_back(Output::MuteChanged(muted));
                    self.update_audio();
                }
            }
            (Command::SetSpeakerMute(muted), _) => {
                if muted != self.speaker_muted {
                    self.speaker_muted = muted;
                    self.outputs.push_back(Output::SpeakerMuteChanged(muted));
                    self.update_audio();
                }
            }
            (Command::SetProcessing(change), _) => self.outputs.push_back(Output::ProcessingChanged(change)),
            (Command::SetHold(hold), State::Active | State::OnHold | State::Reconnecting) => {
                if !hold && !self.held_here && self.held_there {
                    return Err(InvalidCommand::because(
                        "resume",
                        "the peer put it on hold; only the peer can resume it".into(),
                    ));
                }
                if hold != self.held_here {
                    self.held_here = hold;
                    self.outputs.push_back(Output::Send(Body::Hold { on_hold: hold }));
                    self.hold_changed();
                }
            }
            (Command::SetHold(_), state) => return refuse("hold or resume", state),
            (Command::SetRecording(true), State::Active | State::OnHold) => {
                if self.recording == Recording::Off {
                    self.recording_seq += 1;
                    let seq = self.recording_seq;
                    self.recording = Recording::Asking { deadline: now + RECORDING_CONSENT, seq };
                    self.outputs.push_back(Output::Send(Body::Recording { on: true, seq }));
                }
            }
            (Command::SetRecording(true), state) => return refuse("record", state),
            (Command::SetRecording(false), _) => {
                if self.recording != Recording::Off {
                    self.stop_recording(None);
                }
            }
            (Command::Yield, State::Outgoing) if self.yielding => self.end(EndReason::Cancelled, None),
            (Command::Yield, state) => return refuse("yield", state),
            (Command::ShareParticipants { group, participants }, _) => {
                self.outputs.push_back(Output::Send(Body::Participants { group, participants }));
            }
        }
        Ok(())
    }

    /// A message from the peer about this call. Out of place messages are
    /// ignored: the peer may be a step behind (an `end` crossing our `accept`),
    /// never a reason to fail.
    pub fn handle_remote(&mut self, body: Body, now: Instant) {
        if self.state == State::Ended {
            return;
        }
        match (body, self.state, self.direction) {
            (Body::Ringing { callee_name }, State::Outgoing, _) => {
                if let Ok(name) = callee_name.parse::<DisplayName>() {
                    self.outputs.push_back(Output::PeerNamed(name.as_str().to_owned()));
                }
                self.outputs.push_back(Output::RemoteRinging);
            }
            (Body::Accept, State::Outgoing, _) => self.answered(now),
            (Body::Decline { reason, code }, State::Outgoing, _) => {
                let reason = match code {
                    Some(DeclineCode::Blocked) => EndReason::Blocked,
                    Some(DeclineCode::DoNotDisturb) => EndReason::DoNotDisturb,
                    Some(DeclineCode::NotAllowed) => EndReason::NotAllowed,
                    Some(DeclineCode::GroupFull | DeclineCode::NotInvited | DeclineCode::Other) | None => {
                        EndReason::Declined(reason)
                    }
                };
                self.end(reason, None)
            }
            (Body::Busy, State::Outgoing, _) => self.end(EndReason::Busy, None),
            (Body::Offer { sdp }, _, Direction::Incoming) => {
                // A later offer is the caller starting a fresh media session.
                if std::mem::replace(&mut self.offered, true) {
                    self.media_attempt += 1;
                    self.media = MediaProgress::Negotiating;
                    self.replace_media();
                }
                self.outputs.push_back(Output::Media(MediaCommand::AcceptOffer(sdp)))
            }
            // One answer per offer: a late one for a session we replaced is dropped.
            (Body::Answer { sdp }, _, Direction::Outgoing) if self.awaiting_answer => {
                self.awaiting_answer = false;
                self.outputs.push_back(Output::Media(MediaCommand::AcceptAnswer(sdp)))
            }
            (Body::IceCandidate { candidate, .. }, _, _) => {
                self.outputs.push_back(Output::Media(MediaCommand::AddCandidate(candidate)))
            }
            // Glare: the switchboard decides whether this call yields.
            (Body::End { reason: EndCode::Glare }, State::Outgoing, Direction::Outgoing) if !self.yielding => {
                self.yielding = true;
                self.outputs.push_back(Output::Yield);
            }
            (Body::End { reason: EndCode::Glare }, State::Outgoing, Direction::Outgoing) => {}
            (Body::End { reason }, _, _) => {
                let reason = match reason {
                    EndCode::Cancelled | EndCode::Glare => EndReason::Cancelled,
                    EndCode::NoAnswer => EndReason::NoAnswer,
                    EndCode::Failed => EndReason::Failed(FailCause::Protocol("the peer failed".into())),
                    EndCode::HangUp | EndCode::Other => EndReason::HungUpRemote,
                };
                self.end(reason, None);
            }
            (Body::Hold { on_hold }, State::Active | State::OnHold | State::Connecting | State::Reconnecting, _)
                if on_hold != self.held_there =>
            {
                self.held_there = on_hold;
                self.hold_changed();
            }
            (
                Body::Recording { on, seq },
                State::Active | State::OnHold | State::Connecting | State::Reconnecting,
                _,
            ) => {
                // Shown first (the task publishes it), confirmed after.
                if on != self.recorded_by_peer {
                    self.recorded_by_peer = on;
                    self.outputs.push_back(Output::PeerRecording(on));
                }
                self.outputs.push_back(Output::Send(Body::RecordingSeen { on, seq }));
            }
            (Body::RecordingSeen { on: true, seq }, _, _) if matches!(self.recording, Recording::Asking { seq: asked, .. } if asked == seq) =>
            {
                self.recording = Recording::On;
                self.outputs.push_back(Output::RecordingStarted);
            }
            (Body::Participants { group, participants }, _, _) => {
                self.outputs.push_back(Output::Participants { group, participants });
            }
            (Body::Error { message }, _, _) => self.end(EndReason::Failed(FailCause::Protocol(message)), None),
            _ => {}
        }
    }

    /// Ends our recording (or the request for one) and tells the peer.
    fn stop_recording(&mut self, reason: Option<String>) {
        self.recording = Recording::Off;
        self.outputs.push_back(Output::Send(Body::Recording { on: false, seq: self.recording_seq }));
        self.outputs.push_back(Output::RecordingStopped(reason));
    }

    /// The call request a call we place sends first, once connected (the
    /// transport may carry it in its own handshake); `None` for a call we take.
    pub fn call_request(&self) -> Option<Body> {
        (self.direction == Direction::Outgoing).then(|| Body::CallRequest {
            caller_name: self.setup.own_name.clone(),
            frame_ms: Some(self.setup.frame_ms),
            group: self.setup.group.clone(),
        })
    }

    /// What happened to the signaling connection.
    pub fn handle_signaling(&mut self, event: Signaling, _now: Instant) {
        if self.state == State::Ended {
            return;
        }
        match event {
            Signaling::Connected => {
                if let Some(request) = self.call_request() {
                    self.outputs.push_back(Output::Send(request));
                    self.awaiting_answer = true;
                    self.outputs.push_back(Output::Media(MediaCommand::CreateOffer));
                }
            }
            // Expected while yielding: the peer's call is the one that lives.
            Signaling::Closed if self.yielding => {}
            Signaling::Closed => self.end(EndReason::PeerLost, None),
            Signaling::Failed(cause) => self.end(EndReason::Failed(cause), Some(EndCode::Failed)),
        }
    }

    /// What the media layer reports.
    pub fn handle_media(&mut self, event: MediaInput, now: Instant) {
        if self.state == State::Ended {
            return;
        }
        match event {
            MediaInput::LocalDescription(sdp) => {
                let body = match self.direction {
                    Direction::Outgoing => {
                        self.offered_at = Some(now);
                        Body::Offer { sdp }
                    }
                    Direction::Incoming => Body::Answer { sdp },
                };
                self.outputs.push_back(Output::Send(body));
            }
            MediaInput::LocalCandidate { candidate, sdp_mid, sdp_mline_index } => {
                let sdp_mid = sdp_mid.filter(|mid| !mid.is_empty());
                self.outputs.push_back(Output::Send(Body::IceCandidate { candidate, sdp_mid, sdp_mline_index }));
            }
            MediaInput::IceConnected => {
                if self.media == MediaProgress::Negotiating {
                    self.media = MediaProgress::IceConnected;
                    // The caller watches the handshake; the callee follows its offers.
                    // From the offer to a path is about two round trips (the answer,
                    // then an ICE check), and DTLS needs about three more: a slow
                    // link gets that much longer before its session is given up.
                    if self.direction == Direction::Outgoing {
                        let two_trips = self.offered_at.map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
                        let deadline = self.setup.timeouts.media_attempt + two_trips * 2;
                        self.media_deadline = Some(now + deadline);
                    }
                }
            }
            MediaInput::Disconnected => {
                if self.media == MediaProgress::Ready && matches!(self.state, State::Active | State::OnHold) {
                    self.timer = Some((now + self.setup.timeouts.reconnect, Timer::Reconnect));
                    self.set_state(State::Reconnecting);
                }
            }
            MediaInput::Connected => {
                self.media = MediaProgress::Ready;
                self.media_deadline = None;
                if matches!(self.state, State::Connecting | State::Reconnecting) {
                    self.timer = None;
                    self.set_state(self.talking_state());
                }
            }
            // A session that never connected is replaced while attempts remain;
            // anything else (a wrong identity, a broken endpoint) ends the call.
            MediaInput::Failed(cause @ (FailCause::IceFailed | FailCause::DtlsFailed))
                if self.media != MediaProgress::Ready =>
            {
                self.retry_media(cause)
            }
            // A path that worked and then died: the peer is gone, not the handshake.
            MediaInput::Failed(FailCause::IceFailed | FailCause::DtlsFailed) => self.end(EndReason::PeerLost, None),
            MediaInput::Failed(cause) => self.end(EndReason::Failed(cause), Some(EndCode::Failed)),
        }
    }

    /// The current media session did not connect. The caller starts a fresh one
    /// while attempts remain, and fails the call with the cause after the last;
    /// the callee waits for the caller's next offer (the ring and connect timers
    /// still bound the wait).
    fn retry_media(&mut self, cause: FailCause) {
        if self.direction == Direction::Incoming {
            return;
        }
        if self.media_attempt >= self.setup.timeouts.media_attempts {
            self.end(EndReason::Failed(cause), Some(EndCode::Failed));
            return;
        }
        self.media_attempt += 1;
        self.media = MediaProgress::Negotiating;
        self.media_deadline = None;
        self.awaiting_answer = true;
        self.replace_media();
        self.outputs.push_back(Output::Media(MediaCommand::CreateOffer));
    }

    /// A fresh media session starts with the call's audio gates as they are (the
    /// other side may have answered already, its old session connected).
    fn replace_media(&mut self) {
        let (send, play, speaker) = self.audio;
        self.outputs.push_back(Output::Media(MediaCommand::Replace));
        self.outputs.push_back(Output::Audio { send, play, speaker });
    }

    /// The peer stopped answering (keepalives unanswered, media silent too long).
    pub fn peer_lost(&mut self, _now: Instant) {
        if self.state != State::Ended {
            self.end(EndReason::PeerLost, None);
        }
    }

    fn answered(&mut self, now: Instant) {
        self.answered_at = Some(now);
        if self.media == MediaProgress::Ready {
            self.timer = None;
            self.set_state(self.talking_state());
        } else {
            self.timer = Some((now + self.setup.timeouts.connect, Timer::Connect));
            self.set_state(State::Connecting);
        }
    }

    /// Active, or on hold if either side held while the call was being set up.
    fn talking_state(&self) -> State {
        if self.on_hold() { State::OnHold } else { State::Active }
    }

    fn hold_changed(&mut self) {
        self.outputs.push_back(Output::HoldChanged(self.on_hold()));
        // While reconnecting the call stays so; the hold applies when it is back.
        if matches!(self.state, State::Active | State::OnHold) {
            self.set_state(self.talking_state());
        } else {
            self.update_audio();
        }
    }

    fn end(&mut self, reason: EndReason, tell_peer: Option<EndCode>) {
        if let Some(code) = tell_peer {
            self.outputs.push_back(Output::Send(Body::End { reason: code }));
        }
        self.end_reason = Some(reason);
        self.timer = None;
        self.media_deadline = None;
        match std::mem::replace(&mut self.recording, Recording::Off) {
            Recording::Off => {}
            Recording::On => self.outputs.push_back(Output::RecordingStopped(None)),
            Recording::Asking { .. } => self.outputs.push_back(Output::RecordingStopped(Some(
                "the call ended before the peer confirmed the recording".into(),
            ))),
        }
        self.set_state(State::Ended);
    }

    fn set_state(&mut self, to: State) {
        if to != self.state {
            let from = std::mem::replace(&mut self.state, to);
            self.outputs.push_back(Output::StateChanged { from, to });
        }
        self.update_audio();
    }

    fn update_audio(&mut self) {
        // Audio keeps flowing while reconnecting, so it is heard again the moment
        // the link returns.
        let talking = self.state == State::Active || (self.state == State::Reconnecting && !self.on_hold());
        let audio = (talking && !self.muted, talking, !self.speaker_muted);
        if audio != self.audio {
            self.audio = audio;
            self.outputs.push_back(Output::Audio { send: audio.0, play: audio.1, speaker: audio.2 });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        ring: Duration::from_secs(30),
        connect: Duration::from_secs(15),
        media_attempt: Duration::from_millis(2500),
        media_attempts: 3,
        reconnect: Duration::from_secs(40),
    };

    fn setup() -> CallSetup {
        CallSetup { own_name: "me".into(), frame_ms: 20, timeouts: T, group: None }
    }

    /// Any input, for tables of cases.
    #[derive(Debug)]
    enum In {
        Cmd(Command),
        Remote(Body),
        Media(MediaInput),
        Lost,
    }

    fn feed(m: &mut CallMachine, input: In, now: Instant) {
        match input {
            In::Cmd(command) => m.handle_command(command, now).unwrap(),
            In::Remote(body) => m.handle_remote(body, now),
            In::Media(event) => m.handle_media(event, now),
            In::Lost => m.peer_lost(now),
        }
    }

    fn drain(m: &mut CallMachine) -> Vec<Output> {
        std::iter::from_fn(|| m.poll_output()).collect()
    }

    fn state_change(from: State, to: State) -> Output {
        Output::StateChanged { from, to }
    }

    fn audio(send: bool, play: bool) -> Output {
        Output::Audio { send, play, speaker: true }
    }

    /// A call answered with media already up (the usual case: ICE and DTLS finish
    /// while it rings).
    fn active_outgoing(now: Instant) -> CallMachine {
        let mut m = CallMachine::outgoing(now, setup());
        m.handle_media(MediaInput::Connected, now);
        m.handle_remote(Body::Accept, now);
        drain(&mut m);
        m
    }

    #[test]
    fn an_incoming_call_rings_and_tells_the_caller() {
        let now = Instant::now();
        let mut m = CallMachine::incoming(now, setup());
        assert_eq!(m.state(), State::Incoming);
        assert_eq!(drain(&mut m), [Output::Send(Body::Ringing { callee_name: "me".into() })]);
        assert_eq!(m.poll_timeout(), Some(now + T.ring));
    }

    #[test]
    fn answering_with_media_up_goes_straight_to_active_and_opens_audio() {
        let now = Instant::now();
        let mut m = CallMachine::incoming(now, setup());
        m.handle_media(MediaInput::Connected, now);
        drain(&mut m);
        assert_eq!(drain(&mut m), [], "no audio before the answer");
        m.handle_command(Command::Answer, now).unwrap();
        assert_eq!(
            drain(&mut m),
            [Output::Send(Body::Accept), state_change(State::Incoming, State::Active), audio(true, true)]
        );
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn answering_before_media_is_up_waits_in_connecting() {
        let now = Instant::now();
        let mut m = CallMachine::outgoing(now, setup());
        m.handle_remote(Body::Ringing { callee_name: String::new() }, now);
        m.handle_remote(Body::Accept, now);
        assert_eq!(drain(&mut m), [Output::RemoteRinging, state_change(State::Outgoing, State::Connecting)]);
        assert_eq!(m.poll_timeout(), Some(now + T.connect));
        m.handle_media(MediaInput::Connected, now);
        assert_eq!(drain(&mut m), [state_change(State::Connecting, State::Active), audio(true, true)]);
    }

    #[test]
    fn media_that_never_connects_fails_the_call() {
        let now = Instant::now();
        let mut m = CallMachine::outgoing(now, setup());
        m.handle_remote(Body::Accept, now);
        drain(&mut m);
        m.handle_timeout(now + T.connect - Duration::from_millis(1));
        assert_eq!(m.state(), State::Connecting);
        m.handle_timeout(now + T.connect);
        assert_eq!(m.end_reason(), Some(&EndReason::Failed(FailCause::ConnectTimeout)));
        assert_eq!(
            drain(&mut m),
            [Output::Send(Body::End { reason: EndCode::Failed }), state_change(State::Connecting, State::Ended)]
        );
    }

    #[test]
    fn an_unanswered_call_ends_as_no_answer_on_both_sides() {
        let now = Instant::now();
        let mut caller = CallMachine::outgoing(now, setup());
        caller.handle_timeout(now + T.ring);
        assert_eq!(caller.end_reason(), Some(&EndReason::NoAnswer));
        assert_eq!(
            drain(&mut caller),
            [Output::Send(Body::End { reason: EndCode::NoAnswer }), state_change(State::Outgoing, State::Ended)]
        );
        let mut callee = CallMachine::incoming(now, setup());
        callee.handle_remote(Body::End { reason: EndCode::NoAnswer }, now);
        assert_eq!(callee.end_reason(), Some(&EndReason::NoAnswer));
        let mut callee = CallMachine::incoming(now, setup());
        callee.handle_timeout(now + T.ring);
        assert_eq!(callee.end_reason(), Some(&EndReason::NoAnswer), "the callee's own ring timeout too");
    }

    #[test]
    fn every_end_reason_is_reached() {
        let now = Instant::now();
        let cases: Vec<(CallMachine, In, EndReason, Option<Body>)> = vec![
            (
                CallMachine::incoming(now, setup()),
                In::Cmd(Command::Decline("busy day".into())),
                EndReason::Declined("busy day".into()),
                Some(Body::Decline { reason: "busy day".into(), code: None }),
            ),
            (
                CallMachine::incoming(now, setup()),
                In::Cmd(Command::Hangup),
                EndReason::Declined(String::new()),
                Some(Body::Decline { reason: String::new(), code: None }),
            ),
            (
                CallMachine::outgoing(now, setup()),
                In::Cmd(Command::Hangup),
                EndReason::Cancelled,
                Some(Body::End { reason: EndCode::Cancelled }),
            ),
            (
                CallMachine::outgoing(now, setup()),
                In::Remote(Body::Decline { reason: "no".into(), code: None }),
                EndReason::Declined("no".into()),
                None,
            ),
            (CallMachine::outgoing(now, setup()), In::Remote(Body::Busy), EndReason::Busy, None),
            (
                CallMachine::incoming(now, setup()),
                In::Remote(Body::End { reason: EndCode::Cancelled }),
                EndReason::Cancelled,
                None,
            ),
            (
                active_outgoing(now),
                In::Cmd(Command::Hangup),
                EndReason::HungUpLocal,
                Some(Body::End { reason: EndCode::HangUp }),
            ),
            (active_outgoing(now), In::Remote(Body::End { reason: EndCode::HangUp }), EndReason::HungUpRemote, None),
            (active_outgoing(now), In::Lost, EndReason::PeerLost, None),
            (active_outgoing(now), In::Media(MediaInput::Failed(FailCause::IceFailed)), EndReason::PeerLost, None),
            (
                active_outgoing(now),
                In::Media(MediaInput::Failed(FailCause::Audio("unplugged".into()))),
                EndReason::Failed(FailCause::Audio("unplugged".into())),
                Some(Body::End { reason: EndCode::Failed }),
            ),
            (
                CallMachine::outgoing(now, setup()),
                In::Media(MediaInput::Failed(FailCause::Unreachable("refused".into()))),
                EndReason::Failed(FailCause::Unreachable("refused".into())),
                Some(Body::End { reason: EndCode::Failed }),
            ),
            (
                active_outgoing(now),
                In::Remote(Body::Error { message: "bad".into() }),
                EndReason::Failed(FailCause::Protocol("bad".into())),
                None,
            ),
        ];
        for (mut m, input, reason, sent) in cases {
            let described = format!("{input:?}");
            drain(&mut m);
            feed(&mut m, input, now);
            assert_eq!(m.state(), State::Ended, "{described}");
            assert_eq!(m.end_reason(), Some(&reason), "{described}");
            let outputs = drain(&mut m);
            let sends: Vec<&Body> =
                outputs.iter().filter_map(|o| if let Output::Send(b) = o { Some(b) } else { None }).collect();
            assert_eq!(sends.first().copied(), sent.as_ref(), "{described}: {outputs:?}");
            assert_eq!(m.poll_timeout(), None, "no timer after the end");
        }
    }

    #[test]
    fn an_ended_call_ignores_everything() {
        let now = Instant::now();
        let mut m = active_outgoing(now);
        m.handle_command(Command::Hangup, now).unwrap();
        drain(&mut m);
        for input in [
            In::Cmd(Command::Answer),
            In::Cmd(Command::Hangup),
            In::Cmd(Command::SetHold(true)),
            In::Remote(Body::Accept),
            In::Media(MediaInput::Connected),
        ] {
            feed(&mut m, input, now);
        }
        assert_eq!(drain(&mut m), []);
        assert_eq!(m.end_reason(), Some(&EndReason::HungUpLocal));
    }

    #[test]
    fn commands_that_do_not_fit_are_refused_with_the_state() {
        let now = Instant::now();
        let mut m = CallMachine::outgoing(now, setup());
        assert_eq!(
            m.handle_command(Command::Answer, now).unwrap_err().to_string(),
            "cannot answer a call that is ringing the peer"
        );
        assert!(m.handle_command(Command::Decline(String::new()), now).is_err());
        assert!(m.handle_command(Command::SetHold(true), now).is_err());
        assert_eq!(m.state(), State::Outgoing);
    }

    #[test]
    fn out_of_place_peer_messages_are_ignored() {
        let now = Instant::now();
        let mut m = active_outgoing(now);
        for body in [
            Body::Ringing { callee_name: String::new() },
            Body::Accept,
            Body::Busy,
            Body::Decline { reason: String::new(), code: None },
            Body::Keepalive,
        ] {
            m.handle_remote(body, now);
        }
        assert_eq!(m.state(), State::Active);
        assert_eq!(drain(&mut m), []);
    }

    #[test]
    fn mute_stops_sending_but_not_playing() {
        let now = Instant::now();
        let mut m = active_outgoing(now);
        m.handle_command(Command::SetMute(true), now).unwrap();
        assert_eq!(drain(&mut m), [Output::MuteChanged(true), audio(false, true)]);
        m.handle_command(Command::SetMute(true), now).unwrap();
        assert_eq!(drain(&mut m), [], "muting twice changes nothing");
        m.handle_command(Command::SetMute(false), now).unwrap();
        assert_eq!(drain(&mut m), [Output::MuteChanged(false), audio(true, true)]);
    }

    #[test]
    fn voice_processing_changes_are_passed_on_until_the_call_ends() {
        let now = Instant::now();
        let mut m = active_outgoing(now);
        let change = ProcessingChange { echo_cancellation: Some(false), ..Default::default() };
        m.handle_command(Command::SetProcessing(change), now).unwrap();
        assert_eq!(drain(&mut m), [Output::ProcessingChanged(change)]);
        m.handle_command(Command::Hangup, now).unwrap();
        drain(&mut m);
        m.handle_command(Command::SetProcessing(change), now).unwrap();
        assert_eq!(drain(&mut m), []);
    }

    #[test]
    fn the_speaker_mutes_apart_from_the_microphone_and_stays_muted_through_hold() {
        let now = Instant::now();
        let mut m = active_outgoing(now);
        m.handle_command(Command::SetSpeakerMute(true), now).unwrap();
        assert_eq!(
            drain(&mut m),
            [Output::SpeakerMuteChanged(true), Output::Audio { send: true, play: true, speaker: false }]
        );
        assert!(m.speaker_muted() && !m.muted());
        m.handle_command(Command::SetSpeakerMute(true), now).unwrap();
        assert!(drain(&mut m).is_empty(), "muting twice changes nothing");
        m.handle_command(Command::SetHold(true), now).unwrap();
        let held = drain(&mut m);
        assert!(held.contains(&Output::Audio { send: false, play: false, speaker: false }), "{held:?}");
        m.handle_command(Command::SetHold(false), now).unwrap();
        let resumed = drain(&mut m);
        assert!(resumed.contains(&Output::Audio { send: true, play: true, speaker: false }), "{resumed:?}");
        m.handle_command(Command::SetSpeakerMute(false), now).unwrap();
        assert_eq!(drain(&mut m), [Output::SpeakerMuteChanged(false), audio(true, true)]);
    }

    #[test]
    fn muting_while_ringing_keeps_the_call_muted_when_answered() {
        let now = Instant::now();
        let mut m = CallMachine::incoming(now, setup());
        m.handle_command(Command::SetMute(true), now).unwrap();
        m.handle_media(MediaInput::Connected, now);
        drain(&mut m);
        m.handle_command(Command::Answer, now).unwrap();
        assert_eq!(drain(&mut m).last(), Some(&audio(false, true)));
    }

    #[test]
    fn a_recording_starts_only_once_the_peer_confirms_it_shows_it() {
        let now = Instant::now();
        let mut recorder = active_outgoing(now);
        let mut recorded = CallMachine::incoming(now, setup());
        recorded.handle_media(MediaInput::Connected, now);
        recorded.handle_command(Command::Answer, now).unwrap();
        drain(&mut recorded);

        recorder.handle_command(Command::SetRecording(true), now).unwrap();
        assert_eq!(drain(&mut recorder), [Output::Send(Body::Recording { on: true, seq: 1 })], "nothing written yet");
        assert!(!recorder.recording());
        assert_eq!(recorder.poll_timeout(), Some(now + RECORDING_CONSENT));
        recorder.handle_command(Command::SetRecording(true), now).unwrap();
        assert_eq!(drain(&mut recorder), [], "asking twice asks once");

        // The recorded side shows it first, then confirms.
        recorded.handle_remote(Body::Recording { on: true, seq: 1 }, now);
        assert_eq!(
            drain(&mut recorded),
            [Output::PeerRecording(true), Output::Send(Body::RecordingSeen { on: true, seq: 1 })]
        );
        assert!(recorded.recorded_by_peer());
        recorder.handle_remote(Body::RecordingSeen { on: true, seq: 1 }, now);
        assert_eq!(drain(&mut recorder), [Output::RecordingStarted]);
        assert!(recorder.recording());
        assert_eq!(recorder.poll_timeout(), None);

        recorder.handle_command(Command::SetRecording(false), now).unwrap();
        assert_eq!(
            drain(&mut recorder),
            [Output::Send(Body::Recording { on: false, seq: 1 }), Output::RecordingStopped(None)]
        );
        recorded.handle_remote(Body::Recording { on: false, seq: 1 }, now);
        assert_eq!(
            drain(&mut recorded),
            [Output::PeerRecording(false), Output::Send(Body::RecordingSeen { on: false, seq: 1 })]
        );
    }

    #[test]
    fn a_peer_that_never_confirms_is_never_recorded() {
        let now = Instant::now();
        let mut m = active_outgoing(now);
        m.handle_command(Command::SetRecording(true), now).unwrap();
        drain(&mut m);
        m.handle_timeout(now + RECORDING_CONSENT - Duration::from_millis(1));
        assert_eq!(drain(&mut m), []);
        m.handle_timeout(now + RECORDING_CONSENT);
        let outputs = drain(&mut m);
        assert_eq!(
            outputs[0],
            Output::Send(Body::Recording { on: false, seq: 1 }),
            "the peer may show it late: untold"
        );
        assert!(matches!(&outputs[1], Output::RecordingStopped(Some(reason)) if reason.contains("did not confirm")));
        // A confirmation that comes after the deadline starts nothing, not even a
        // second request's recording: it answers the first.
        m.handle_remote(Body::RecordingSeen { on: true, seq: 1 }, now + RECORDING_CONSENT);
        assert_eq!(drain(&mut m), []);
        m.handle_command(Command::SetRecording(true), now + RECORDING_CONSENT).unwrap();
        assert_eq!(drain(&mut m), [Output::Send(Body::Recording { on: true, seq: 2 })]);
        m.handle_remote(Body::RecordingSeen { on: true, seq: 1 }, now + RECORDING_CONSENT);
        assert_eq!(drain(&mut m), [], "a late answer to the first request");
        assert!(!m.recording());
        m.handle_remote(Body::RecordingSeen { on: true, seq: 2 }, now + RECORDING_CONSENT);
        assert_eq!(drain(&mut m), [Output::RecordingStarted]);
    }

    #[test]
    fn recording_needs_an_answered_call_and_stops_when_it_ends() {
        let now = Instant::now();
        let mut ringing = CallMachine::outgoing(now, setup());
        let refused = ringing.handle_command(Command::SetRecording(true), now).unwrap_err();
        assert_eq!(refused.to_string(), "cannot record a call that is ringing the peer");

        let mut m = active_outgoing(now);
        m.handle_command(Command::SetRecording(true), now).unwrap();
        m.handle_remote(Body::RecordingSeen { on: true, seq: 1 }, now);
        drain(&mut m);
        m.handle_remote(Body::End { reason: EndCode::HangUp }, now);
        assert_eq!(
            drain(&mut m),
            [Output::RecordingStopped(None), state_change(State::Active, State::Ended), audio(false, false)]
        );
    }

    #[test]
    fn hold_from_either_side_stops_both_directions() {
        let now = Instant::now();
        let mut m = active_outgoing(now);
        m.handle_command(Command::SetHold(true), now).unwrap();
        assert_eq!(
            drain(&mut m),
            [
                Output::Send(Body::Hold { on_hold: true }),
                Output::HoldChanged(true),
                state_change(State::Active, State::OnHold),
                audio(false, false)
            ]
        );
        // The peer holds too, then we resume: still held by the peer.
        m.handle_remote(Body::Hold { on_hold: true }, now);
        m.handle_command(Command::SetHold(false), now).unwrap();
        assert_eq!(m.state(), State::OnHold);
        assert!(m.on_hold());
        drain(&mut m);
        m.handle_remote(Body::Hold { on_hold: false }, now);
        assert_eq!(
            drain(&mut m),
            [Output::HoldChanged(false), state_change(State::OnHold, State::Active), audio(true, true)]
        );
    }

    #[test]
    fn a_hold_that_arrives_while_connecting_is_kept_when_media_connects() {
        let now = Instant::now();
        let mut m = CallMachine::outgoing(now, setup());
        m.handle_remote(Body::Accept, now);
        m.handle_remote(Body::Hold { on_hold: true }, now);
        drain(&mut m);
        m.handle_media(MediaInput::Connected, now);
        assert_eq!(m.state(), State::OnHold);
        assert_eq!(drain(&mut m), [state_change(State::Connecting, State::OnHold)], "no audio while held");
    }

    #[test]
    fn the_caller_rings_once_connected_and_offers_media() {
        let now = Instant::now();
        let mut m = CallMachine::outgoing(now, setup());
        assert_eq!(drain(&mut m), [], "nothing before the connection is up");
        m.handle_signaling(Signaling::Connected, now);
        assert_eq!(
            drain(&mut m),
            [
                Output::Send(Body::CallRequest { caller_name: "me".into(), frame_ms: Some(20), group: None }),
                Output::Media(MediaCommand::CreateOffer)
            ]
        );
        m.handle_media(MediaInput::LocalDescription("v=0 offer".into()), now);
        assert_eq!(drain(&mut m), [Output::Send(Body::Offer { sdp: "v=0 offer".into() })]);
        m.handle_remote(Body::Ringing { callee_name: " bob ".into() }, now);
        assert_eq!(drain(&mut m), [Output::PeerNamed("bob".into()), Output::RemoteRinging]);
        m.handle_remote(Body::Answer { sdp: "v=0 answer".into() }, now);
        assert_eq!(drain(&mut m), [Output::Media(MediaCommand::AcceptAnswer("v=0 answer".into()))]);
        m.handle_remote(Body::Offer { sdp: "v=0 late".into() }, now);
        assert_eq!(drain(&mut m), [], "a caller takes no offer");
    }

    #[test]
    fn the_callee_answers_the_offer_and_trickles_candidates() {
        let now = Instant::now();
        let mut m = CallMachine::incoming(now, setup());
        drain(&mut m);
        m.handle_remote(Body::Offer { sdp: "o".into() }, now);
        m.handle_remote(Body::IceCandidate { candidate: "c1".into(), sdp_mid: None, sdp_mline_index: Some(0) }, now);
        assert_eq!(
            drain(&mut m),
            [
                Output::Media(MediaCommand::AcceptOffer("o".into())),
                Output::Media(MediaCommand::AddCandidate("c1".into()))
            ]
        );
        m.handle_media(MediaInput::LocalDescription("a".into()), now);
        m.handle_media(
            MediaInput::LocalCandidate {
                candidate: "c2".into(),
                sdp_mid: Some(String::new()),
                sdp_mline_index: Some(0),
            },
            now,
        );
        assert_eq!(
            drain(&mut m),
            [
                Output::Send(Body::Answer { sdp: "a".into() }),
                Output::Send(Body::IceCandidate { candidate: "c2".into(), sdp_mid: None, sdp_mline_index: Some(0) })
            ]
        );
    }

    #[test]
    fn a_name_the_peer_cannot_have_is_not_taken() {
        let now = Instant::now();
        let mut m = CallMachine::outgoing(now, setup());
        m.handle_remote(Body::Ringing { callee_name: "x".repeat(64) }, now);
        m.handle_remote(Body::Ringing { callee_name: "  ".into() }, now);
        assert_eq!(drain(&mut m), [Output::RemoteRinging, Output::RemoteRinging]);
    }

    #[test]
    fn glare_asks_the_switchboard_and_yields_only_when_told() {
        let now = Instant::now();
        let mut m = CallMachine::outgoing(now, setup());
        assert!(m.handle_command(Command::Yield, now).is_err(), "not told to yield");
        m.handle_remote(Body::End { reason: EndCode::Glare }, now);
        m.handle_remote(Body::End { reason: EndCode::Glare }, now);
        assert_eq!(drain(&mut m), [Output::Yield], "asked once");
        assert_eq!(m.state(), State::Outgoing, "still ringing until the switchboard decides");
        m.handle_signaling(Signaling::Closed, now);
        assert_eq!(m.state(), State::Outgoing, "the peer closing is expected while yielding");
        m.handle_command(Command::Yield, now).unwrap();
        assert_eq!(m.end_reason(), Some(&EndReason::Cancelled));
        assert_eq!(drain(&mut m), [state_change(State::Outgoing, State::Ended)], "nothing sent: the peer knows");
    }

    #[test]
    fn a_closed_or_broken_connection_ends_the_call() {
        let now = Instant::now();
        let mut m = active_outgoing(now);
        m.handle_signaling(Signaling::Closed, now);
        assert_eq!(m.end_reason(), Some(&EndReason::PeerLost));
        let mut m = CallMachine::outgoing(now, setup());
        m.handle_signaling(Signaling::Failed(FailCause::Unreachable("refused".into())), now);
        assert_eq!(m.end_reason(), Some(&EndReason::Failed(FailCause::Unreachable("refused".into()))));
    }

    #[test]
    fn only_the_side_that_held_can_resume() {
        let now = Instant::now();
        let mut m = active_outgoing(now);
        m.handle_remote(Body::Hold { on_hold: true }, now);
        drain(&mut m);
        let refused = m.handle_command(Command::SetHold(false), now).unwrap_err();
        assert!(refused.to_string().contains("only the peer can resume it"), "{refused}");
        assert_eq!(drain(&mut m), []);
        assert!(m.held_by_peer());
    }

    /// A caller whose offer was answered and whose ICE just connected.
    fn ice_connected_caller(now: Instant) -> CallMachine {
        let mut m = CallMachine::outgoing(now, setup());
        m.handle_signaling(Signaling::Connected, now);
        m.handle_media(MediaInput::LocalDescription("o1".into()), now);
        m.handle_remote(Body::Answer { sdp: "a1".into() }, now);
        m.handle_media(MediaInput::IceConnected, now);
        drain(&mut m);
        m
    }

    #[test]
    fn a_stalled_handshake_is_replaced_by_a_fresh_media_session() {
        let now = Instant::now();
        let mut m = ice_connected_caller(now);
        assert_eq!(m.poll_timeout(), Some(now + T.media_attempt), "the watchdog runs beside the ring timer");
        m.handle_timeout(now + T.media_attempt);
        assert_eq!(
            drain(&mut m),
            [Output::Media(MediaCommand::Replace), audio(false, false), Output::Media(MediaCommand::CreateOffer)]
        );
        assert_eq!(m.media_attempt(), 2);
        assert_eq!(m.state(), State::Outgoing, "the call rings on");
        // A late answer to the first offer would be for a session that is gone.
        m.handle_media(MediaInput::LocalDescription("o2".into()), now);
        m.handle_remote(Body::Answer { sdp: "a2".into() }, now);
        m.handle_remote(Body::Answer { sdp: "a1-again".into() }, now);
        assert_eq!(
            drain(&mut m),
            [Output::Send(Body::Offer { sdp: "o2".into() }), Output::Media(MediaCommand::AcceptAnswer("a2".into()))]
        );
        m.handle_media(MediaInput::IceConnected, now);
        m.handle_media(MediaInput::Connected, now);
        assert_eq!(m.poll_timeout(), Some(now + T.ring), "the watchdog is off once media is up");
    }

    #[test]
    fn after_the_last_attempt_the_call_fails_with_the_cause() {
        let now = Instant::now();
        let mut m = ice_connected_caller(now);
        let mut at = now;
        for attempt in 2..=T.media_attempts {
            at += T.media_attempt;
            m.handle_timeout(at);
            assert_eq!(m.media_attempt(), attempt);
            m.handle_media(MediaInput::LocalDescription("o".into()), at);
            m.handle_remote(Body::Answer { sdp: "a".into() }, at);
            m.handle_media(MediaInput::IceConnected, at);
        }
        drain(&mut m);
        m.handle_timeout(at + T.media_attempt);
        assert_eq!(m.end_reason(), Some(&EndReason::Failed(FailCause::DtlsFailed)));
        assert_eq!(
            drain(&mut m),
            [Output::Send(Body::End { reason: EndCode::Failed }), state_change(State::Outgoing, State::Ended)]
        );
    }

    #[test]
    fn an_ice_failure_before_media_is_up_is_retried_but_a_wrong_identity_is_not() {
        let now = Instant::now();
        let mut m = ice_connected_caller(now);
        m.handle_media(MediaInput::Failed(FailCause::IceFailed), now);
        assert_eq!(m.media_attempt(), 2);
        assert_eq!(m.state(), State::Outgoing);
        m.handle_media(MediaInput::Failed(FailCause::IdentityMismatch("not bob".into())), now);
        assert_eq!(m.end_reason(), Some(&EndReason::Failed(FailCause::IdentityMismatch("not bob".into()))));
        // Once media is up, a failure ends the call (reconnecting is another matter).
        let mut m = active_outgoing(now);
        m.handle_media(MediaInput::Failed(FailCause::DtlsFailed), now);
        assert_eq!(m.state(), State::Ended);
    }

    #[test]
    fn the_callee_replaces_its_session_when_a_new_offer_comes() {
        let now = Instant::now();
        let mut m = CallMachine::incoming(now, setup());
        m.handle_remote(Body::Offer { sdp: "o1".into() }, now);
        m.handle_media(MediaInput::IceConnected, now);
        m.handle_media(MediaInput::Failed(FailCause::IceFailed), now);
        assert_eq!(m.state(), State::Incoming, "the callee waits for the caller's next offer");
        drain(&mut m);
        m.handle_remote(Body::Offer { sdp: "o2".into() }, now);
        assert_eq!(
            drain(&mut m),
            [
                Output::Media(MediaCommand::Replace),
                audio(false, false),
                Output::Media(MediaCommand::AcceptOffer("o2".into()))
            ]
        );
        assert_eq!(m.media_attempt(), 2);
        assert_eq!(m.poll_timeout(), Some(now + T.ring), "no watchdog on the callee");
    }

    #[test]
    fn a_silent_link_reconnects_with_audio_still_flowing_and_comes_back() {
        let now = Instant::now();
        let mut m = active_outgoing(now);
        m.handle_media(MediaInput::Disconnected, now);
        assert_eq!(drain(&mut m), [state_change(State::Active, State::Reconnecting)], "audio keeps flowing");
        assert_eq!(m.poll_timeout(), Some(now + T.reconnect));
        // Holding while reconnecting: the hold is sent and applies when back.
        m.handle_command(Command::SetHold(true), now).unwrap();
        assert_eq!(
            drain(&mut m),
            [Output::Send(Body::Hold { on_hold: true }), Output::HoldChanged(true), audio(false, false)]
        );
        m.handle_media(MediaInput::Connected, now + Duration::from_secs(30));
        assert_eq!(drain(&mut m), [state_change(State::Reconnecting, State::OnHold)]);
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn a_link_that_stays_silent_ends_the_call_as_peer_lost() {
        let now = Instant::now();
        let mut m = active_outgoing(now);
        m.handle_media(MediaInput::Disconnected, now);
        drain(&mut m);
        m.handle_timeout(now + T.reconnect - Duration::from_millis(1));
        assert_eq!(m.state(), State::Reconnecting);
        m.handle_timeout(now + T.reconnect);
        assert_eq!(m.end_reason(), Some(&EndReason::PeerLost));
        assert_eq!(drain(&mut m), [state_change(State::Reconnecting, State::Ended), audio(false, false)]);
    }

    #[test]
    fn a_disconnect_before_the_call_is_answered_is_not_reconnecting() {
        let now = Instant::now();
        let mut m = CallMachine::incoming(now, setup());
        m.handle_media(MediaInput::Connected, now);
        m.handle_media(MediaInput::Disconnected, now);
        assert_eq!(m.state(), State::Incoming);
    }

    #[test]
    fn a_callee_already_talking_opens_the_new_sessions_audio_too() {
        // Its own first session connected and it answered, while the caller's
        // side of that session stalled: the caller's new offer must not leave
        // the new session silent.
        let now = Instant::now();
        let mut m = CallMachine::incoming(now, setup());
        m.handle_remote(Body::Offer { sdp: "o1".into() }, now);
        m.handle_media(MediaInput::Connected, now);
        m.handle_command(Command::Answer, now).unwrap();
        drain(&mut m);
        m.handle_remote(Body::Offer { sdp: "o2".into() }, now);
        assert_eq!(
            drain(&mut m),
            [
                Output::Media(MediaCommand::Replace),
                audio(true, true),
                Output::Media(MediaCommand::AcceptOffer("o2".into()))
            ]
        );
    }

    #[test]
    fn a_slow_link_gives_the_handshake_time_in_proportion() {
        // Offer out at 0, a path at 600 ms (a 300 ms round trip): DTLS gets the
        // base time plus two more of those.
        let start = Instant::now();
        let mut m = CallMachine::outgoing(start, setup());
        m.handle_signaling(Signaling::Connected, start);
        m.handle_media(MediaInput::LocalDescription("o1".into()), start);
        m.handle_remote(Body::Answer { sdp: "a1".into() }, start);
        let path = start + Duration::from_millis(600);
        m.handle_media(MediaInput::IceConnected, path);
        let deadline = path + T.media_attempt + Duration::from_millis(1200);
        assert_eq!(m.poll_timeout(), Some(deadline));
        drain(&mut m);
        m.handle_timeout(deadline - Duration::from_millis(1));
        assert_eq!(drain(&mut m), [], "not yet");
    }
}
