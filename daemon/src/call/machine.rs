//! The call state machine. Pure: inputs (the user, the peer's signaling, the media
//! layer, the clock) go in with the time; outputs (messages for the peer, events,
//! audio gating) come out of `poll_output`, and `poll_timeout` says when to call
//! `handle_timeout`. The task that owns the call (call/task.rs) does the I/O.
//!
//! Audio is gated here: nothing is sent or played before the call is answered,
//! mute stops sending, hold (either side's) stops both directions.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::signaling::wire::{Body, EndCode};

/// Who placed the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// This side dialed.
    Outgoing,
    /// The peer dialed.
    Incoming,
}

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Ringing the peer.
    Outgoing,
    /// Ringing here.
    Incoming,
    /// Answered; media not yet connected.
    Connecting,
    /// Talking.
    Active,
    /// Held by either side: no audio either way.
    OnHold,
    /// Over; see `end_reason`.
    Ended,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailCause {
    /// The peer could not be reached.
    Unreachable(String),
    /// The peer's certificate is not the device we meant to call.
    IdentityMismatch(String),
    /// No network path was found (ICE).
    IceFailed,
    /// The encrypted media session could not be set up (DTLS).
    DtlsFailed,
    /// Media was still not connected when the connect timer ran out (the path
    /// or the DTLS handshake kept failing, for example under heavy loss).
    ConnectTimeout,
    /// An audio endpoint could not be opened.
    Audio(String),
    /// The peer broke the protocol or said it failed.
    Protocol(String),
}

impl fmt::Display for FailCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailCause::Unreachable(why) => write!(f, "unreachable: {why}"),
            FailCause::IdentityMismatch(why) => write!(f, "identity mismatch: {why}"),
            FailCause::IceFailed => f.write_str("ICE failed: no network path to the peer"),
            FailCause::DtlsFailed => f.write_str("DTLS failed: the encrypted media session could not be set up"),
            FailCause::ConnectTimeout => {
                f.write_str("media did not connect in time (no network path, or the handshake kept being lost)")
            }
            FailCause::Audio(why) => write!(f, "audio: {why}"),
            FailCause::Protocol(why) => write!(f, "protocol: {why}"),
        }
    }
}

/// Why a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Hung up here.
    HungUpLocal,
    /// Hung up by the peer.
    HungUpRemote,
    /// The callee declined (with its reason).
    Declined(String),
    /// The callee was in another call.
    Busy,
    /// Nobody answered before the ring timeout.
    NoAnswer,
    /// The caller gave up before an answer (or the call yielded to a glare twin).
    Cancelled,
    /// Something broke.
    Failed(FailCause),
    /// The peer stopped answering.
    PeerLost,
}

/// Timeouts the machine enforces.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// How long a call rings before it ends as "no answer".
    pub ring: Duration,
    /// How long media may take to connect after the answer.
    pub connect: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { ring: Duration::from_secs(30), connect: Duration::from_secs(15) }
    }
}

/// What the machine wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send to the peer.
    Send(Body),
    /// The state changed.
    StateChanged {
        /// Before.
        from: State,
        /// Now.
        to: State,
    },
    /// The peer is ringing (outgoing calls).
    RemoteRinging,
    /// Mute changed.
    MuteChanged(bool),
    /// Hold changed (either side).
    HoldChanged(bool),
    /// Whether audio may be sent and played now.
    Audio {
        /// Send captured audio to the peer.
        send: bool,
        /// Play what the peer sends.
        play: bool,
    },
}

/// Inputs from the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The user answers.
    Answer,
    /// The user declines, with a reason for the caller.
    Decline(String),
    /// The user hangs up (or cancels, or declines while ringing).
    Hangup,
    /// The user mutes or unmutes.
    SetMute(bool),
    /// The user holds or resumes.
    SetHold(bool),
    /// A message from the peer about this call.
    Remote(Body),
    /// ICE and DTLS are up.
    MediaConnected,
    /// Media could not be set up or broke for good.
    MediaFailed(FailCause),
    /// The peer stopped answering (signaling gone, media silent too long).
    PeerLost,
}

/// A user command that does not fit the call's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a call that is {state}")]
pub struct InvalidCommand {
    action: &'static str,
    state: String,
}

impl InvalidCommand {
    /// A command that failed for another reason than the state.
    pub fn because(action: &'static str, reason: String) -> Self {
        InvalidCommand { action, state: format!("not ready: {reason}") }
    }
}

fn describe(state: State) -> &'static str {
    match state {
        State::Outgoing => "ringing the peer",
        State::Incoming => "ringing here",
        State::Connecting => "connecting",
        State::Active => "active",
        State::OnHold => "on hold",
        State::Ended => "over",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Ring,
    Connect,
}

/// One call's state.
#[derive(Debug)]
pub struct CallMachine {
    direction: Direction,
    state: State,
    timeouts: Timeouts,
    muted: bool,
    held_here: bool,
    held_there: bool,
    media_ready: bool,
    audio: (bool, bool),
    timer: Option<(Instant, Timer)>,
    end_reason: Option<EndReason>,
    answered_at: Option<Instant>,
    outputs: VecDeque<Output>,
}

impl CallMachine {
    /// A call this side is placing; the caller sends the request and offer.
    pub fn outgoing(now: Instant, timeouts: Timeouts) -> Self {
        Self::new(Direction::Outgoing, State::Outgoing, now, timeouts)
    }

    /// A call the peer placed; it rings here and the peer is told so.
    pub fn incoming(now: Instant, timeouts: Timeouts) -> Self {
        let mut machine = Self::new(Direction::Incoming, State::Incoming, now, timeouts);
        machine.outputs.push_back(Output::Send(Body::Ringing { callee_name: String::new() }));
        machine
    }

    fn new(direction: Direction, state: State, now: Instant, timeouts: Timeouts) -> Self {
        CallMachine {
            direction,
            state,
            timeouts,
            muted: false,
            held_here: false,
            held_there: false,
            media_ready: false,
            audio: (false, false),
            timer: Some((now + timeouts.ring, Timer::Ring)),
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

    /// When it was answered.
    pub fn answered_at(&self) -> Option<Instant> {
        self.answered_at
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timer.map(|(at, _)| at)
    }

    /// Time has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some((at, timer)) = self.timer else { return };
        if now < at {
            return;
        }
        self.timer = None;
        match (timer, self.state) {
            (Timer::Ring, State::Outgoing) => self.end(EndReason::NoAnswer, Some(EndCode::NoAnswer)),
            (Timer::Ring, State::Incoming) => self.end(EndReason::NoAnswer, None),
            (Timer::Connect, State::Connecting) => {
                let cause = FailCause::ConnectTimeout;
                self.end(EndReason::Failed(cause), Some(EndCode::Failed))
            }
            _ => {}
        }
    }

    /// A user command: refused (and nothing changes) if it does not fit the state.
    pub fn handle(&mut self, input: Input, now: Instant) -> Result<(), InvalidCommand> {
        let refuse = |action, state| Err(InvalidCommand { action, state: describe(state).to_owned() });
        match (input, self.state) {
            (_, State::Ended) => {}
            (Input::Answer, State::Incoming) => {
                self.outputs.push_back(Output::Send(Body::Accept));
                self.answered(now);
            }
            (Input::Answer, state) => return refuse("answer", state),
            (Input::Decline(reason), State::Incoming) => {
                self.outputs.push_back(Output::Send(Body::Decline { reason: reason.clone() }));
                self.end(EndReason::Declined(reason), None);
            }
            (Input::Decline(_), state) => return refuse("decline", state),
            (Input::Hangup, State::Outgoing) => self.end(EndReason::Cancelled, Some(EndCode::Cancelled)),
            (Input::Hangup, State::Incoming) => {
                self.outputs.push_back(Output::Send(Body::Decline { reason: String::new() }));
                self.end(EndReason::Declined(String::new()), None);
            }
            (Input::Hangup, _) => self.end(EndReason::HungUpLocal, Some(EndCode::HangUp)),
            (Input::SetMute(muted), _) => {
                if muted != self.muted {
                    self.muted = muted;
                    self.outputs.push_back(Output::MuteChanged(muted));
                    self.update_audio();
                }
            }
            (Input::SetHold(hold), State::Active | State::OnHold) => {
                if hold != self.held_here {
                    self.held_here = hold;
                    self.outputs.push_back(Output::Send(Body::Hold { on_hold: hold }));
                    self.hold_changed();
                }
            }
            (Input::SetHold(_), state) => return refuse("hold or resume", state),
            (Input::Remote(body), _) => self.remote(body, now),
            (Input::MediaConnected, _) => {
                self.media_ready = true;
                if self.state == State::Connecting {
                    self.timer = None;
                    self.set_state(self.talking_state());
                }
            }
            (Input::MediaFailed(cause), _) => self.end(EndReason::Failed(cause), Some(EndCode::Failed)),
            (Input::PeerLost, _) => self.end(EndReason::PeerLost, None),
        }
        Ok(())
    }

    /// A message from the peer. Out of place messages are ignored: the peer may be
    /// a step behind (an `end` crossing our `accept`), never a reason to fail.
    fn remote(&mut self, body: Body, now: Instant) {
        match (body, self.state, self.direction) {
            (Body::Ringing { .. }, State::Outgoing, _) => self.outputs.push_back(Output::RemoteRinging),
            (Body::Accept, State::Outgoing, _) => self.answered(now),
            (Body::Decline { reason }, State::Outgoing, _) => self.end(EndReason::Declined(reason), None),
            (Body::Busy, State::Outgoing, _) => self.end(EndReason::Busy, None),
            (Body::End { reason }, _, direction) => {
                let reason = match (reason, direction) {
                    (EndCode::Cancelled | EndCode::Glare, _) => EndReason::Cancelled,
                    (EndCode::NoAnswer, _) => EndReason::NoAnswer,
                    (EndCode::Failed, _) => EndReason::Failed(FailCause::Protocol("the peer failed".into())),
                    (EndCode::HangUp | EndCode::Other, _) => EndReason::HungUpRemote,
                };
                self.end(reason, None);
            }
            (Body::Hold { on_hold }, State::Active | State::OnHold | State::Connecting, _)
                if on_hold != self.held_there =>
            {
                self.held_there = on_hold;
                self.hold_changed();
            }
            (Body::Error { message }, _, _) => {
                self.end(EndReason::Failed(FailCause::Protocol(message)), None);
            }
            _ => {}
        }
    }

    fn answered(&mut self, now: Instant) {
        self.answered_at = Some(now);
        if self.media_ready {
            self.timer = None;
            self.set_state(self.talking_state());
        } else {
            self.timer = Some((now + self.timeouts.connect, Timer::Connect));
            self.set_state(State::Connecting);
        }
    }

    /// Active, or on hold if either side held while the call was being set up.
    fn talking_state(&self) -> State {
        if self.on_hold() { State::OnHold } else { State::Active }
    }

    fn hold_changed(&mut self) {
        self.outputs.push_back(Output::HoldChanged(self.on_hold()));
        let next = if self.on_hold() { State::OnHold } else { State::Active };
        if matches!(self.state, State::Active | State::OnHold) {
            self.set_state(next);
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
        let talking = self.state == State::Active;
        let audio = (talking && !self.muted, talking);
        if audio != self.audio {
            self.audio = audio;
            self.outputs.push_back(Output::Audio { send: audio.0, play: audio.1 });
        }
    }
}

/// Both sides dialed each other at once: which call survives. Both sides compute
/// the same answer from the two device IDs: the call placed by the lower ID lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Glare {
    /// Keep our outgoing call; refuse theirs (it yields on their side).
    KeepOurs,
    /// End our outgoing call (`end` with `glare`) and answer theirs at once: both
    /// people asked for this conversation.
    TakeTheirs,
}

/// Resolves glare between our outgoing call and the peer's incoming one.
pub fn resolve_glare(own_id: &[u8; 32], peer_id: &[u8; 32]) -> Glare {
    if own_id < peer_id { Glare::KeepOurs } else { Glare::TakeTheirs }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts { ring: Duration::from_secs(30), connect: Duration::from_secs(15) };

    fn drain(m: &mut CallMachine) -> Vec<Output> {
        std::iter::from_fn(|| m.poll_output()).collect()
    }

    fn state_change(from: State, to: State) -> Output {
        Output::StateChanged { from, to }
    }

    fn audio(send: bool, play: bool) -> Output {
        Output::Audio { send, play }
    }

    /// A call answered with media already up (the usual case: ICE and DTLS finish
    /// while it rings).
    fn active_outgoing(now: Instant) -> CallMachine {
        let mut m = CallMachine::outgoing(now, T);
        m.handle(Input::MediaConnected, now).unwrap();
        m.handle(Input::Remote(Body::Accept), now).unwrap();
        drain(&mut m);
        m
    }

    #[test]
    fn an_incoming_call_rings_and_tells_the_caller() {
        let now = Instant::now();
        let mut m = CallMachine::incoming(now, T);
        assert_eq!(m.state(), State::Incoming);
        assert_eq!(drain(&mut m), [Output::Send(Body::Ringing { callee_name: String::new() })]);
        assert_eq!(m.poll_timeout(), Some(now + T.ring));
    }

    #[test]
    fn answering_with_media_up_goes_straight_to_active_and_opens_audio() {
        let now = Instant::now();
        let mut m = CallMachine::incoming(now, T);
        m.handle(Input::MediaConnected, now).unwrap();
        drain(&mut m);
        assert_eq!(drain(&mut m), [], "no audio before the answer");
        m.handle(Input::Answer, now).unwrap();
        assert_eq!(
            drain(&mut m),
            [Output::Send(Body::Accept), state_change(State::Incoming, State::Active), audio(true, true)]
        );
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn answering_before_media_is_up_waits_in_connecting() {
        let now = Instant::now();
        let mut m = CallMachine::outgoing(now, T);
        m.handle(Input::Remote(Body::Ringing { callee_name: String::new() }), now).unwrap();
        m.handle(Input::Remote(Body::Accept), now).unwrap();
        assert_eq!(drain(&mut m), [Output::RemoteRinging, state_change(State::Outgoing, State::Connecting)]);
        assert_eq!(m.poll_timeout(), Some(now + T.connect));
        m.handle(Input::MediaConnected, now).unwrap();
        assert_eq!(drain(&mut m), [state_change(State::Connecting, State::Active), audio(true, true)]);
    }

    #[test]
    fn media_that_never_connects_fails_the_call() {
        let now = Instant::now();
        let mut m = CallMachine::outgoing(now, T);
        m.handle(Input::Remote(Body::Accept), now).unwrap();
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
        let mut caller = CallMachine::outgoing(now, T);
        caller.handle_timeout(now + T.ring);
        assert_eq!(caller.end_reason(), Some(&EndReason::NoAnswer));
        assert_eq!(
            drain(&mut caller),
            [Output::Send(Body::End { reason: EndCode::NoAnswer }), state_change(State::Outgoing, State::Ended)]
        );
        let mut callee = CallMachine::incoming(now, T);
        callee.handle(Input::Remote(Body::End { reason: EndCode::NoAnswer }), now).unwrap();
        assert_eq!(callee.end_reason(), Some(&EndReason::NoAnswer));
        let mut callee = CallMachine::incoming(now, T);
        callee.handle_timeout(now + T.ring);
        assert_eq!(callee.end_reason(), Some(&EndReason::NoAnswer), "the callee's own ring timeout too");
    }

    #[test]
    fn every_end_reason_is_reached() {
        let now = Instant::now();
        let cases: Vec<(CallMachine, Input, EndReason, Option<Body>)> = vec![
            (
                CallMachine::incoming(now, T),
                Input::Decline("busy day".into()),
                EndReason::Declined("busy day".into()),
                Some(Body::Decline { reason: "busy day".into() }),
            ),
            (
                CallMachine::incoming(now, T),
                Input::Hangup,
                EndReason::Declined(String::new()),
                Some(Body::Decline { reason: String::new() }),
            ),
            (
                CallMachine::outgoing(now, T),
                Input::Hangup,
                EndReason::Cancelled,
                Some(Body::End { reason: EndCode::Cancelled }),
            ),
            (
                CallMachine::outgoing(now, T),
                Input::Remote(Body::Decline { reason: "no".into() }),
                EndReason::Declined("no".into()),
                None,
            ),
            (CallMachine::outgoing(now, T), Input::Remote(Body::Busy), EndReason::Busy, None),
            (
                CallMachine::incoming(now, T),
                Input::Remote(Body::End { reason: EndCode::Cancelled }),
                EndReason::Cancelled,
                None,
            ),
            (active_outgoing(now), Input::Hangup, EndReason::HungUpLocal, Some(Body::End { reason: EndCode::HangUp })),
            (active_outgoing(now), Input::Remote(Body::End { reason: EndCode::HangUp }), EndReason::HungUpRemote, None),
            (active_outgoing(now), Input::PeerLost, EndReason::PeerLost, None),
            (
                active_outgoing(now),
                Input::MediaFailed(FailCause::DtlsFailed),
                EndReason::Failed(FailCause::DtlsFailed),
                Some(Body::End { reason: EndCode::Failed }),
            ),
            (
                CallMachine::outgoing(now, T),
                Input::MediaFailed(FailCause::Unreachable("refused".into())),
                EndReason::Failed(FailCause::Unreachable("refused".into())),
                Some(Body::End { reason: EndCode::Failed }),
            ),
            (
                active_outgoing(now),
                Input::Remote(Body::Error { message: "bad".into() }),
                EndReason::Failed(FailCause::Protocol("bad".into())),
                None,
            ),
        ];
        for (mut m, input, reason, sent) in cases {
            let described = format!("{input:?}");
            drain(&mut m);
            m.handle(input, now).unwrap();
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
        m.handle(Input::Hangup, now).unwrap();
        drain(&mut m);
        for input in
            [Input::Answer, Input::Hangup, Input::SetHold(true), Input::Remote(Body::Accept), Input::MediaConnected]
        {
            m.handle(input, now).unwrap();
        }
        assert_eq!(drain(&mut m), []);
        assert_eq!(m.end_reason(), Some(&EndReason::HungUpLocal));
    }

    #[test]
    fn commands_that_do_not_fit_are_refused_with_the_state() {
        let now = Instant::now();
        let mut m = CallMachine::outgoing(now, T);
        assert_eq!(
            m.handle(Input::Answer, now).unwrap_err().to_string(),
            "cannot answer a call that is ringing the peer"
        );
        assert!(m.handle(Input::Decline(String::new()), now).is_err());
        assert!(m.handle(Input::SetHold(true), now).is_err());
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
            Body::Decline { reason: String::new() },
            Body::Keepalive,
        ] {
            m.handle(Input::Remote(body), now).unwrap();
        }
        assert_eq!(m.state(), State::Active);
        assert_eq!(drain(&mut m), []);
    }

    #[test]
    fn mute_stops_sending_but_not_playing() {
        let now = Instant::now();
        let mut m = active_outgoing(now);
        m.handle(Input::SetMute(true), now).unwrap();
        assert_eq!(drain(&mut m), [Output::MuteChanged(true), audio(false, true)]);
        m.handle(Input::SetMute(true), now).unwrap();
        assert_eq!(drain(&mut m), [], "muting twice changes nothing");
        m.handle(Input::SetMute(false), now).unwrap();
        assert_eq!(drain(&mut m), [Output::MuteChanged(false), audio(true, true)]);
    }

    #[test]
    fn muting_while_ringing_keeps_the_call_muted_when_answered() {
        let now = Instant::now();
        let mut m = CallMachine::incoming(now, T);
        m.handle(Input::SetMute(true), now).unwrap();
        m.handle(Input::MediaConnected, now).unwrap();
        drain(&mut m);
        m.handle(Input::Answer, now).unwrap();
        assert_eq!(drain(&mut m).last(), Some(&audio(false, true)));
    }

    #[test]
    fn hold_from_either_side_stops_both_directions() {
        let now = Instant::now();
        let mut m = active_outgoing(now);
        m.handle(Input::SetHold(true), now).unwrap();
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
        m.handle(Input::Remote(Body::Hold { on_hold: true }), now).unwrap();
        m.handle(Input::SetHold(false), now).unwrap();
        assert_eq!(m.state(), State::OnHold);
        assert!(m.on_hold());
        drain(&mut m);
        m.handle(Input::Remote(Body::Hold { on_hold: false }), now).unwrap();
        assert_eq!(
            drain(&mut m),
            [Output::HoldChanged(false), state_change(State::OnHold, State::Active), audio(true, true)]
        );
    }

    #[test]
    fn a_hold_that_arrives_while_connecting_is_kept_when_media_connects() {
        let now = Instant::now();
        let mut m = CallMachine::outgoing(now, T);
        m.handle(Input::Remote(Body::Accept), now).unwrap();
        m.handle(Input::Remote(Body::Hold { on_hold: true }), now).unwrap();
        drain(&mut m);
        m.handle(Input::MediaConnected, now).unwrap();
        assert_eq!(m.state(), State::OnHold);
        assert_eq!(drain(&mut m), [state_change(State::Connecting, State::OnHold)], "no audio while held");
    }

    #[test]
    fn glare_is_resolved_the_same_way_on_both_sides() {
        let (low, high) = ([1u8; 32], [2u8; 32]);
        assert_eq!(resolve_glare(&low, &high), Glare::KeepOurs);
        assert_eq!(resolve_glare(&high, &low), Glare::TakeTheirs);
    }
}
