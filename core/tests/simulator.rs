//! Several daemons' switchboards and calls driven against each other with no
//! sockets: one virtual clock that jumps to the next event or deadline, and a
//! seeded link that delays, reorders (across connections; one connection keeps
//! its order, like TCP) and breaks connections. The driver does what the
//! registry and call tasks do, and nothing more: every decision is the core's.
//! In the style of quinn-proto's `Pair` and str0m's `tests/common.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use voicelink_core::admission::Source;
use voicelink_core::call_machine::{
    CallMachine, CallSetup, Command, InvalidCommand, MediaCommand, MediaInput, Output, Signaling, Timeouts,
};
use voicelink_core::contacts::{Contact, Contacts, Standing};
use voicelink_core::switchboard::{
    ANSWERED_ANOTHER_CALL, AutoAnswer, CallError, Dial, Incoming, Policy, Switchboard, WaitingAnswer, WhoMayRing,
};
use voicelink_core::vocab::{CallId, DeviceId, EndReason, FailCause, State};
use voicelink_core::wire::{Body, EndCode, GroupPart, Participant};

const RING: Duration = Duration::from_secs(30);
const CONNECT: Duration = Duration::from_secs(15);
/// How long ICE and DTLS take once a side has the other's description.
const MEDIA_SETUP: Duration = Duration::from_millis(30);
/// Steps after which a drive is a livelock.
const MAX_STEPS: usize = 10_000;

type Node = usize;
type Conn = usize;

/// The link between any two nodes.
#[derive(Debug, Clone)]
struct Link {
    /// One-way delay.
    delay: Duration,
    /// Extra delay drawn uniformly from 0 to this, per message.
    jitter: Duration,
    /// Chance that a message breaks its connection (TCP gave up).
    break_chance: f64,
}

impl Default for Link {
    fn default() -> Self {
        Link { delay: Duration::from_millis(10), jitter: Duration::ZERO, break_chance: 0.0 }
    }
}

#[derive(Debug)]
enum Event {
    /// TCP + TLS are up: the caller's call may ring the callee.
    Connected { node: Node, call: CallId },
    /// A message arrives on a connection.
    Deliver { to: Node, conn: Conn, body: Body },
    /// The connection closed (or broke) at the other end.
    Closed { to: Node, conn: Conn },
    /// This side's media session `attempt` found a path (ICE) and, unless the
    /// handshake stalls, is up (DTLS).
    MediaUp { node: Node, call: CallId, attempt: u32 },
}

/// One end of a signaling connection.
#[derive(Debug, Clone)]
struct End {
    node: Node,
    /// The call at this end; `None` until the callee's switchboard took it.
    call: Option<CallId>,
}

#[derive(Debug)]
struct Connection {
    ends: [End; 2],
    call_id: CallId,
    /// When the last message in each direction arrives (keeps TCP's order).
    last_arrival: [Instant; 2],
    open: bool,
}

struct Daemon {
    id: DeviceId,
    board: Switchboard,
    calls: BTreeMap<CallId, (CallMachine, Conn)>,
    /// Every state change, for the tests' assertions.
    log: Vec<(Instant, CallId, State)>,
    /// Whether audio was ever allowed to flow before the call was answered.
    audio_before_answer: bool,
    /// Calls that ended here, with their reasons.
    ended: BTreeMap<CallId, EndReason>,
    /// Each call's current media session's audio gates (send, play).
    gates: BTreeMap<CallId, (bool, bool)>,
    /// Recording events: "started" / "stopped" (ours), "shown" / "unshown" (the peer's).
    recordings: Vec<(Instant, CallId, &'static str)>,
    /// The devices this one knows, and what its user decided about them.
    contacts: Contacts,
}

struct Sim {
    now: Instant,
    start: Instant,
    daemons: Vec<Daemon>,
    connections: Vec<Connection>,
    queue: BTreeMap<(Instant, u64), Event>,
    sequence: u64,
    link: Link,
    rng: ChaCha8Rng,
    /// Drop the first message of this kind, and break its connection.
    lose_next: Option<fn(&Body) -> bool>,
    /// Call requests from this node take this much longer.
    slow_requests: Option<(Node, Duration)>,
    /// Media sessions whose DTLS handshake stalls, by the side that sees it.
    stalled_sessions: BTreeMap<Node, u32>,
    next_call: u64,
}

fn setup(name: &str) -> CallSetup {
    CallSetup {
        own_name: name.into(),
        frame_ms: 20,
        timeouts: Timeouts { ring: RING, connect: CONNECT, ..Timeouts::default() },
        group: None,
    }
}

fn participant(device_id: DeviceId, invited: bool) -> Participant {
    Participant { device_id, name: String::new(), address: None, invited }
}

impl Sim {
    /// Daemons with these device ID bytes (the lower byte wins glare).
    fn new(ids: &[u8], link: Link, seed: u64) -> Self {
        let start = Instant::now();
        let daemons = ids
            .iter()
            .map(|&byte| {
                let id = DeviceId::from_hash([byte; 32]);
                Daemon {
                    id,
                    board: Switchboard::new(id, Policy::default()),
                    calls: BTreeMap::new(),
                    log: Vec::new(),
                    audio_before_answer: false,
                    ended: BTreeMap::new(),
                    gates: BTreeMap::new(),
                    recordings: Vec::new(),
                    contacts: Contacts::default(),
                }
            })
            .collect();
        Sim {
            now: start,
            start,
            daemons,
            connections: Vec::new(),
            queue: BTreeMap::new(),
            sequence: 0,
            link,
            rng: ChaCha8Rng::seed_from_u64(seed),
            lose_next: None,
            slow_requests: None,
            stalled_sessions: BTreeMap::new(),
            next_call: 0,
        }
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.sequence += 1;
        self.queue.insert((at, self.sequence), event);
    }

    fn one_way(&mut self) -> Duration {
        let jitter = self.link.jitter.as_secs_f64();
        self.link.delay + Duration::from_secs_f64(if jitter > 0.0 { self.rng.random_range(0.0..jitter) } else { 0.0 })
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    // --- what the user does -------------------------------------------------

    /// `from` dials `to`: the switchboard decides, the call task connects.
    fn dial(&mut self, from: Node, to: Node) -> Result<CallId, CallError> {
        self.next_call += 1;
        let id = CallId::try_from(format!("n{from}-c{}", self.next_call)).unwrap();
        let peer = self.daemons[to].id;
        match self.daemons[from].board.dial(Some(peer), id)? {
            Dial::AnswerTheirs(theirs) => {
                self.command(from, &theirs, Command::Answer).map_err(CallError::from)?;
                Ok(theirs)
            }
            Dial::Place(id) => {
                self.place(from, to, id.clone(), None);
                Ok(id)
            }
        }
    }

    /// `from` adds `to` to its call `call`, as the registry does: everyone in
    /// the call is told first, then the invitation goes out.
    fn add(&mut self, from: Node, call: &CallId, to: Node) -> Result<CallId, CallError> {
        self.next_call += 1;
        let id = CallId::try_from(format!("n{from}-c{}", self.next_call)).unwrap();
        let peer = self.daemons[to].id;
        let group = self.daemons[from].board.add(call, peer, id.clone())?;
        self.share_participants(from, &group);
        let participants = self.participants_for(from, &group, peer);
        self.place(from, to, id.clone(), Some(GroupPart { id: group, join: false, participants }));
        Ok(id)
    }

    /// Starts an outgoing leg the switchboard already counts.
    fn place(&mut self, from: Node, to: Node, id: CallId, group: Option<GroupPart>) {
        let conn = self.connections.len();
        self.connections.push(Connection {
            ends: [End { node: from, call: Some(id.clone()) }, End { node: to, call: None }],
            call_id: id.clone(),
            last_arrival: [self.now; 2],
            open: true,
        });
        let machine = CallMachine::outgoing(self.now, CallSetup { group, ..setup(&format!("node{from}")) });
        self.daemons[from].calls.insert(id.clone(), (machine, conn));
        // TCP and TLS take a round trip and a half.
        let at = self.now + self.link.delay * 3;
        self.schedule(at, Event::Connected { node: from, call: id });
    }

    /// The participants of `node`'s group call other than `peer`.
    fn participants_for(&self, node: Node, group: &CallId, peer: DeviceId) -> Vec<Participant> {
        let board = &self.daemons[node].board;
        let others = board.participants(group).into_iter().filter(|p| *p != peer);
        others.map(|p| participant(p, board.invited(group, p))).collect()
    }

    /// Tells each of `node`'s legs of `group` who else is in it.
    fn share_participants(&mut self, node: Node, group: &CallId) {
        for leg in self.daemons[node].board.group_legs(group) {
            let Some(peer) = self.daemons[node].board.peer_of(&leg) else { continue };
            let participants = self.participants_for(node, group, peer);
            if self.daemons[node].calls.contains_key(&leg) {
                let share = Command::ShareParticipants { group: group.clone(), participants };
                self.command(node, &leg, share).expect("sharing fits every state");
            }
        }
    }

    /// Once `node`'s invitation `call` is answered: joins whom it named.
    fn join_participants(&mut self, node: Node, call: &CallId) {
        if let Some((group, due)) = self.daemons[node].board.joins_due(call) {
            self.join(node, &group, due);
        }
    }

    /// `node` joins these participants of `group`.
    fn join(&mut self, node: Node, group: &CallId, due: Vec<DeviceId>) {
        for device in due {
            let Some(to) = self.daemons.iter().position(|d| d.id == device) else { continue };
            self.next_call += 1;
            let id = CallId::try_from(format!("n{node}-c{}", self.next_call)).unwrap();
            if self.daemons[node].board.join(group, device, id.clone()).is_ok() {
                self.place(node, to, id, Some(GroupPart { id: group.clone(), join: true, participants: Vec::new() }));
            }
        }
    }

    /// The peers `node` is in active legs with.
    fn talking_with(&self, node: Node) -> BTreeSet<Node> {
        let daemon = &self.daemons[node];
        daemon
            .calls
            .iter()
            .filter(|(_, (m, _))| m.state() == State::Active)
            .filter_map(|(id, _)| daemon.board.peer_of(id))
            .filter_map(|peer| self.daemons.iter().position(|d| d.id == peer))
            .collect()
    }

    fn command(&mut self, node: Node, call: &CallId, command: Command) -> Result<(), InvalidCommand> {
        let now = self.now;
        let (machine, _) = self.daemons[node].calls.get_mut(call).expect("no such call");
        let result = machine.handle_command(command, now);
        self.flush(node, call);
        result
    }

    /// The only live call of `node`, as the API finds it.
    fn only_call(&self, node: Node) -> CallId {
        self.daemons[node].board.pick(None).expect("one live call")
    }

    fn state(&self, node: Node, call: &CallId) -> State {
        self.daemons[node].calls.get(call).map_or(State::Ended, |(m, _)| m.state())
    }

    fn end_reason(&self, node: Node, call: &CallId) -> Option<EndReason> {
        self.ended(node).get(call).cloned()
    }

    /// No recording started on one side unless the other side had shown it and
    /// not withdrawn it since.
    fn assert_no_one_recorded_unshown(&self, seed: u64) {
        for (node, daemon) in self.daemons.iter().enumerate() {
            for (at, call, what) in &daemon.recordings {
                if *what != "started" {
                    continue;
                }
                let shown = self.daemons.iter().enumerate().filter(|(other, _)| *other != node).any(|(_, peer)| {
                    peer.recordings
                        .iter()
                        .rev()
                        .find(|(t, c, w)| t <= at && c == call && w.ends_with("shown"))
                        .is_some_and(|(_, _, w)| *w == "shown")
                });
                assert!(shown, "seed {seed}: node {node} recorded call {call} before its peer showed it");
            }
        }
    }

    /// Every call this node ended, with its reason.
    fn ended(&self, node: Node) -> BTreeMap<CallId, EndReason> {
        self.daemons[node].ended.clone()
    }

    // --- the driver: registry and call tasks --------------------------------

    /// Carries out what a call's machine asked for.
    fn flush(&mut self, node: Node, call: &CallId) {
        loop {
            let now = self.now;
            let Some((machine, conn)) = self.daemons[node].calls.get_mut(call) else { return };
            let conn = *conn;
            let Some(output) = machine.poll_output() else { return };
            match output {
                Output::Send(body) => self.send(node, conn, body),
                Output::Media(MediaCommand::CreateOffer) => {
                    machine.handle_media(MediaInput::LocalDescription("offer".into()), now)
                }
                Output::Media(MediaCommand::AcceptOffer(_)) => {
                    machine.handle_media(MediaInput::LocalDescription("answer".into()), now);
                    let attempt = machine.media_attempt();
                    self.schedule(now + MEDIA_SETUP, Event::MediaUp { node, call: call.clone(), attempt });
                }
                Output::Media(MediaCommand::AcceptAnswer(_)) => {
                    let attempt = machine.media_attempt();
                    self.schedule(now + MEDIA_SETUP, Event::MediaUp { node, call: call.clone(), attempt });
                }
                Output::Media(MediaCommand::Replace) => {
                    // A fresh session: its gates start closed.
                    self.daemons[node].gates.insert(call.clone(), (false, false));
                }
                Output::Media(MediaCommand::AddCandidate(_)) => {}
                Output::Yield => {
                    let peer = self.peer_of(conn, node);
                    if let Some(ours) = self.daemons[node].board.yielded(peer, call, now) {
                        let (machine, _) = self.daemons[node].calls.get_mut(&ours).expect("a live call");
                        machine.handle_command(Command::Yield, now).expect("told to yield");
                    }
                }
                Output::StateChanged { to, .. } => {
                    let daemon = &mut self.daemons[node];
                    daemon.log.push((now, call.clone(), to));
                    let peer = Some(self.peer_of(conn, node));
                    for other in self.daemons[node].board.state_changed(call, to, peer) {
                        let _ = self.command(node, &other, Command::Decline(ANSWERED_ANOTHER_CALL.into()));
                    }
                    if to == State::Ended {
                        self.finish(node, call);
                        return;
                    }
                    self.join_participants(node, call);
                    if to == State::Active
                        && let Some(group) = self.daemons[node].board.group_of(call).cloned()
                    {
                        self.share_participants(node, &group);
                    }
                }
                Output::Participants { group, participants } => {
                    let devices = participants.iter().map(|p| (p.device_id, p.invited));
                    let due = self.daemons[node].board.introduce(call, &group, devices);
                    self.join(node, &group, due);
                }
                Output::Audio { send, play, .. } => {
                    let answered = machine.answered_at().is_some();
                    if (send || play) && !answered {
                        self.daemons[node].audio_before_answer = true;
                    }
                    self.daemons[node].gates.insert(call.clone(), (send, play));
                }
                Output::RecordingStarted => self.daemons[node].recordings.push((now, call.clone(), "started")),
                Output::RecordingStopped(_) => self.daemons[node].recordings.push((now, call.clone(), "stopped")),
                Output::PeerRecording(on) => {
                    let what = if on { "shown" } else { "unshown" };
                    self.daemons[node].recordings.push((now, call.clone(), what));
                }
                Output::RemoteRinging
                | Output::PeerNamed(_)
                | Output::MuteChanged(_)
                | Output::SpeakerMuteChanged(_)
                | Output::ProcessingChanged(_)
                | Output::HoldChanged(_) => {}
            }
        }
    }

    /// The call's task ends: what is queued is still sent, then the connection closes.
    fn finish(&mut self, node: Node, call: &CallId) {
        let Some((mut machine, conn)) = self.daemons[node].calls.remove(call) else { return };
        while let Some(output) = machine.poll_output() {
            if let Output::Send(body) = output {
                self.send(node, conn, body);
            }
        }
        let reason = machine.end_reason().cloned().expect("an ended call has a reason");
        self.daemons[node].ended.insert(call.clone(), reason);
        self.daemons[node].board.finished(call);
        self.close(node, conn);
    }

    fn side(&self, conn: Conn, node: Node) -> usize {
        if self.connections[conn].ends[0].node == node { 0 } else { 1 }
    }

    fn peer_of(&self, conn: Conn, node: Node) -> DeviceId {
        let other = 1 - self.side(conn, node);
        self.daemons[self.connections[conn].ends[other].node].id
    }

    fn send(&mut self, from: Node, conn: Conn, body: Body) {
        if !self.connections[conn].open {
            return;
        }
        let lost = self.lose_next.is_some_and(|matches| matches(&body))
            || (self.link.break_chance > 0.0 && self.rng.random_bool(self.link.break_chance));
        if lost {
            self.lose_next = None;
            self.close(from, conn);
            return;
        }
        let side = self.side(conn, from);
        let to = self.connections[conn].ends[1 - side].node;
        let slow = match (self.slow_requests, &body) {
            (Some((node, extra)), Body::CallRequest { .. }) if node == from => extra,
            _ => Duration::ZERO,
        };
        let at = (self.now + self.one_way() + slow).max(self.connections[conn].last_arrival[side]);
        self.connections[conn].last_arrival[side] = at;
        self.schedule(at, Event::Deliver { to, conn, body });
    }

    /// Closes a connection from `from`'s end: the other end hears it after what
    /// was already sent.
    fn close(&mut self, from: Node, conn: Conn) {
        if !std::mem::replace(&mut self.connections[conn].open, false) {
            return;
        }
        let side = self.side(conn, from);
        let to = self.connections[conn].ends[1 - side].node;
        let at = (self.now + self.one_way()).max(self.connections[conn].last_arrival[side]);
        self.schedule(at, Event::Closed { to, conn });
    }

    /// A call request reached the callee: its switchboard decides.
    fn call_request(&mut self, to: Node, conn: Conn, group: Option<GroupPart>) {
        let now = self.now;
        let call_id = self.connections[conn].call_id.clone();
        let peer = self.peer_of(conn, to);
        let standing = self.daemons[to].contacts.standing(&peer);
        let caller = self.connections[conn].ends[1 - self.side(conn, to)].node;
        let source = Source::of(std::net::IpAddr::from([10, 0, 0, caller as u8]));
        let decision = self.daemons[to].board.incoming(call_id.clone(), peer, source, standing, group.as_ref(), now);
        match decision {
            Incoming::Ring { answer, hang_up, .. } => {
                if let Some(ours) = hang_up {
                    self.command(to, &ours, Command::Hangup).expect("our ringing call hangs up");
                }
                self.connections[conn].ends[1].call = Some(call_id.clone());
                let machine = CallMachine::incoming(now, setup(&format!("node{to}")));
                self.daemons[to].calls.insert(call_id.clone(), (machine, conn));
                self.flush(to, &call_id);
                if answer {
                    self.command(to, &call_id, Command::Answer).expect("a ringing call answers");
                }
            }
            Incoming::Busy => {
                self.send(to, conn, Body::Busy);
                self.close(to, conn);
            }
            Incoming::Glare => {
                self.send(to, conn, Body::End { reason: EndCode::Glare });
                self.close(to, conn);
            }
            Incoming::Refuse(refusal) => {
                let body = match refusal.decline_code() {
                    Some(code) => Body::Decline { reason: refusal.message(), code: Some(code) },
                    None => Body::Error { message: refusal.message() },
                };
                self.send(to, conn, body);
                self.close(to, conn);
            }
        }
    }

    fn handle(&mut self, event: Event) {
        let now = self.now;
        match event {
            Event::Connected { node, call } => {
                if let Some((machine, _)) = self.daemons[node].calls.get_mut(&call) {
                    machine.handle_signaling(Signaling::Connected, now);
                    self.flush(node, &call);
                }
            }
            Event::Deliver { to, conn, body } => {
                let side = self.side(conn, to);
                match (&self.connections[conn].ends[side].call, &body) {
                    (None, Body::CallRequest { group, .. }) => {
                        let group = group.clone();
                        self.call_request(to, conn, group);
                    }
                    (None, _) => {}
                    (Some(call), _) => {
                        let call = call.clone();
                        if let Some((machine, _)) = self.daemons[to].calls.get_mut(&call) {
                            machine.handle_remote(body, now);
                            self.flush(to, &call);
                        }
                    }
                }
            }
            Event::Closed { to, conn } => {
                let side = self.side(conn, to);
                self.connections[conn].open = false;
                if let Some(call) = self.connections[conn].ends[side].call.clone()
                    && let Some((machine, _)) = self.daemons[to].calls.get_mut(&call)
                {
                    machine.handle_signaling(Signaling::Closed, now);
                    self.flush(to, &call);
                }
            }
            Event::MediaUp { node, call, attempt } => {
                let stalls = self.stalled_sessions.get(&node).is_some_and(|left| *left > 0);
                if let Some((machine, _)) = self.daemons[node].calls.get_mut(&call)
                    && machine.media_attempt() == attempt
                {
                    machine.handle_media(MediaInput::IceConnected, now);
                    if stalls {
                        self.stalled_sessions.entry(node).and_modify(|left| *left -= 1);
                    } else {
                        machine.handle_media(MediaInput::Connected, now);
                    }
                    self.flush(node, &call);
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let timers = self.daemons.iter().flat_map(|d| d.calls.values()).filter_map(|(m, _)| m.poll_timeout());
        timers.chain(self.queue.keys().next().map(|(at, _)| *at)).min()
    }

    /// Runs until nothing is left to happen before `until`; the clock ends there.
    fn run_until(&mut self, until: Instant) {
        for _ in 0..MAX_STEPS {
            let Some(next) = self.next_deadline().filter(|at| *at <= until) else {
                self.now = self.now.max(until);
                return;
            };
            self.now = self.now.max(next);
            if let Some(entry) = self.queue.first_entry().filter(|entry| entry.key().0 <= self.now) {
                let event = entry.remove();
                self.handle(event);
            }
            let now = self.now;
            let due: Vec<(Node, CallId)> = self
                .daemons
                .iter()
                .enumerate()
                .flat_map(|(n, d)| d.calls.iter().map(move |(id, (m, _))| (n, id.clone(), m.poll_timeout())))
                .filter(|(_, _, at)| at.is_some_and(|at| at <= now))
                .map(|(n, id, _)| (n, id))
                .collect();
            for (node, call) in due {
                if let Some((machine, _)) = self.daemons[node].calls.get_mut(&call) {
                    machine.handle_timeout(now);
                    self.flush(node, &call);
                }
            }
        }
        panic!("livelock: still busy after {MAX_STEPS} steps at {:?}", self.elapsed());
    }

    fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        self.run_until(until);
    }

    /// Runs until every call has ended and nothing is in flight.
    fn settle(&mut self) {
        self.run_for(RING + CONNECT + Duration::from_secs(5));
        for (n, daemon) in self.daemons.iter().enumerate() {
            assert!(daemon.calls.is_empty(), "node {n} still has calls: {:?}", daemon.calls.keys());
            assert!(!daemon.audio_before_answer, "node {n} let audio flow before an answer");
        }
        assert!(self.queue.is_empty(), "events left: {:?}", self.queue);
    }
}

impl Daemon {
    fn live(&self) -> Vec<(CallId, State)> {
        self.calls.iter().map(|(id, (m, _))| (id.clone(), m.state())).collect()
    }
}

const A: Node = 0;
const B: Node = 1;
const C: Node = 2;

/// A and B in an answered, connected call.
fn active_pair(link: Link) -> (Sim, CallId) {
    let mut sim = Sim::new(&[1, 2, 3], link, 1);
    let call = sim.dial(A, B).unwrap();
    sim.run_for(Duration::from_millis(200));
    assert_eq!(sim.state(B, &call), State::Incoming);
    sim.command(B, &call, Command::Answer).unwrap();
    sim.run_for(Duration::from_millis(200));
    assert_eq!((sim.state(A, &call), sim.state(B, &call)), (State::Active, State::Active));
    (sim, call)
}

#[test]
fn a_call_rings_is_answered_and_hung_up() {
    let (mut sim, call) = active_pair(Link::default());
    sim.command(A, &call, Command::Hangup).unwrap();
    sim.settle();
    assert_eq!(sim.end_reason(A, &call), Some(EndReason::HungUpLocal));
    assert_eq!(sim.end_reason(B, &call), Some(EndReason::HungUpRemote));
}

#[test]
fn media_is_negotiated_while_it_rings_so_the_answer_goes_straight_to_active() {
    let mut sim = Sim::new(&[1, 2], Link::default(), 1);
    let call = sim.dial(A, B).unwrap();
    sim.run_for(Duration::from_secs(1));
    sim.command(B, &call, Command::Answer).unwrap();
    sim.run_for(Duration::from_millis(11));
    let b_states: Vec<State> = sim.daemons[B].log.iter().map(|(_, _, s)| *s).collect();
    assert_eq!(b_states, [State::Active], "no connecting step: media was up before the answer");
    assert_eq!(sim.state(A, &call), State::Active, "the caller hears the accept one trip later");
}

/// Both dial at once; `head_start` delays the high side's dial, which changes
/// what arrives first at each side: the peer's request or its `end(glare)`.
fn glare(head_start: Duration, seed: u64) {
    let mut sim = Sim::new(&[1, 9], Link { jitter: Duration::from_millis(5), ..Link::default() }, seed);
    let low = sim.dial(A, B).unwrap();
    sim.run_for(head_start);
    let high = match sim.dial(B, A) {
        Ok(call) => call,
        // The low side's call already rang here: dialing answers it.
        Err(error) => panic!("dial refused: {error}"),
    };
    sim.run_for(Duration::from_secs(1));
    // One call survives, the low side's, answered at once on both sides.
    assert_eq!(sim.daemons[A].live(), [(low.clone(), State::Active)], "head start {head_start:?}");
    assert_eq!(sim.daemons[B].live(), [(low.clone(), State::Active)], "head start {head_start:?}");
    if high != low {
        assert_eq!(sim.end_reason(B, &high), Some(EndReason::Cancelled), "the high side's own call yielded");
    }
    sim.command(A, &low, Command::Hangup).unwrap();
    sim.settle();
}

#[test]
fn glare_in_both_arrival_orders_leaves_the_low_ids_call_answered() {
    // Simultaneous: the requests cross on the wire.
    for seed in 0..20 {
        glare(Duration::ZERO, seed);
    }
    // The low side's request arrives first, before the high side dials: dialing
    // then answers it.
    glare(Duration::from_millis(50), 1);
    // In between: the high side's request reaches A while A's reaches B.
    for ms in [1, 5, 12, 20, 25, 31] {
        glare(Duration::from_millis(ms), u64::from(ms as u8));
    }
}

#[test]
fn glare_where_the_high_side_hears_end_glare_before_the_low_sides_request() {
    // A's request to B is slow, so A's `end(glare)` for B's call reaches B
    // before A's own request does: B's call yields first, then A's rings and is
    // answered at once as its twin.
    let mut sim = Sim::new(&[1, 9], Link::default(), 3);
    sim.slow_requests = Some((A, Duration::from_millis(50)));
    let low = sim.dial(A, B).unwrap();
    let high = sim.dial(B, A).unwrap();
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.daemons[A].live(), [(low.clone(), State::Active)]);
    assert_eq!(sim.daemons[B].live(), [(low.clone(), State::Active)]);
    assert_eq!(sim.end_reason(B, &high), Some(EndReason::Cancelled));
    assert!(sim.ended(A).is_empty(), "the low side never saw the high side's call ring");
}

#[test]
fn an_end_crossing_an_accept_ends_both_sides() {
    let mut sim = Sim::new(&[1, 2], Link { delay: Duration::from_millis(50), ..Link::default() }, 1);
    let call = sim.dial(A, B).unwrap();
    sim.run_for(Duration::from_secs(1));
    // Both act in the same instant: the cancel and the accept cross.
    sim.command(A, &call, Command::Hangup).unwrap();
    sim.command(B, &call, Command::Answer).unwrap();
    sim.settle();
    assert_eq!(sim.end_reason(A, &call), Some(EndReason::Cancelled));
    assert_eq!(sim.end_reason(B, &call), Some(EndReason::Cancelled));
}

#[test]
fn a_decline_crossing_a_cancel_ends_both_sides_with_their_own_reasons() {
    let mut sim = Sim::new(&[1, 2], Link { delay: Duration::from_millis(50), ..Link::default() }, 1);
    let call = sim.dial(A, B).unwrap();
    sim.run_for(Duration::from_secs(1));
    sim.command(B, &call, Command::Decline("in a meeting".into())).unwrap();
    sim.command(A, &call, Command::Hangup).unwrap();
    sim.settle();
    assert_eq!(sim.end_reason(A, &call), Some(EndReason::Cancelled));
    assert_eq!(sim.end_reason(B, &call), Some(EndReason::Declined("in a meeting".into())));
}

#[test]
fn a_recording_starts_only_after_the_peer_has_shown_it() {
    let (mut sim, call) = active_pair(Link::default());
    let asked = sim.now;
    sim.command(A, &call, Command::SetRecording(true)).unwrap();
    sim.run_for(Duration::from_millis(500));
    let started = sim.daemons[A].recordings.iter().find(|r| r.2 == "started").map(|r| r.0).expect("started");
    let shown = sim.daemons[B].recordings.iter().find(|r| r.2 == "shown").map(|r| r.0).expect("shown");
    assert!(asked < shown && shown < started, "shown to B, then written by A");
    assert!(started - asked >= 2 * Link::default().delay, "a round trip to confirm");
    sim.command(A, &call, Command::Hangup).unwrap();
    sim.settle();
    assert_eq!(sim.daemons[A].recordings.last().map(|r| r.2), Some("stopped"), "the end stops it");
    sim.assert_no_one_recorded_unshown(0);
}

#[test]
fn a_blocked_caller_never_rings_and_is_told_why_and_do_not_disturb_refuses_everyone_else() {
    let mut sim = Sim::new(&[1, 2, 3], Link::default(), 1);
    let a_id = sim.daemons[A].id;
    sim.daemons[B].contacts = Contacts::new([Contact {
        device_id: a_id,
        names: vec!["node0".into()],
        alias: None,
        standing: Standing::Blocked,
        verified: false,
        first_seen: std::time::SystemTime::UNIX_EPOCH,
        last_seen: std::time::SystemTime::UNIX_EPOCH,
    }]);
    let call = sim.dial(A, B).unwrap();
    sim.settle();
    assert_eq!(sim.end_reason(A, &call), Some(EndReason::Blocked));
    assert!(sim.daemons[B].log.iter().all(|(_, c, _)| *c != call), "it never rang at B");
    assert_eq!(sim.daemons[B].board.live_calls(), 0);

    // Do-not-disturb: C (not blocked) is refused too, with its own reason; the
    // caller hears it at once, not after a ring timeout.
    sim.daemons[B].board.set_policy(Policy { who_may_ring: WhoMayRing::Nobody, ..Policy::default() });
    let start = sim.now;
    let call = sim.dial(C, B).unwrap();
    sim.settle();
    assert_eq!(sim.end_reason(C, &call), Some(EndReason::DoNotDisturb));
    let ended_at = sim.daemons[C].log.iter().find(|(_, c, s)| *c == call && *s == State::Ended).map(|e| e.0);
    assert!(ended_at.is_some_and(|at| at - start < Duration::from_secs(1)), "refused at once");
}

#[test]
fn hold_from_both_sides_needs_both_to_resume() {
    let (mut sim, call) = active_pair(Link::default());
    sim.command(A, &call, Command::SetHold(true)).unwrap();
    sim.command(B, &call, Command::SetHold(true)).unwrap();
    sim.run_for(Duration::from_millis(100));
    sim.command(A, &call, Command::SetHold(false)).unwrap();
    sim.run_for(Duration::from_millis(100));
    assert_eq!((sim.state(A, &call), sim.state(B, &call)), (State::OnHold, State::OnHold), "B still holds");
    assert!(sim.command(A, &call, Command::SetHold(false)).is_err(), "A cannot resume B's hold");
    sim.command(B, &call, Command::SetHold(false)).unwrap();
    sim.run_for(Duration::from_millis(100));
    assert_eq!((sim.state(A, &call), sim.state(B, &call)), (State::Active, State::Active));
    sim.command(B, &call, Command::Hangup).unwrap();
    sim.settle();
}

#[test]
fn a_ring_timeout_racing_an_answer_ends_both_sides_the_same_way() {
    // The answer leaves B just before B's ring timer would fire, but reaches A
    // after A's own ring timer fired: A ends "no answer" and says so.
    let link = Link { delay: Duration::from_millis(100), ..Link::default() };
    let mut sim = Sim::new(&[1, 2], link, 1);
    let call = sim.dial(A, B).unwrap();
    // A's ring timer started at the dial, B's when the request arrived (~400 ms later).
    sim.run_until(sim.start + RING - Duration::from_millis(50));
    sim.command(B, &call, Command::Answer).unwrap();
    sim.settle();
    assert_eq!(sim.end_reason(A, &call), Some(EndReason::NoAnswer));
    assert_eq!(sim.end_reason(B, &call), Some(EndReason::NoAnswer));
    // B was briefly active: it answered before it heard.
    assert!(sim.daemons[B].log.iter().any(|(_, _, s)| *s == State::Active));
}

#[test]
fn an_unanswered_call_ends_as_no_answer_on_both_sides() {
    let mut sim = Sim::new(&[1, 2], Link::default(), 1);
    let call = sim.dial(A, B).unwrap();
    sim.settle();
    assert_eq!(sim.end_reason(A, &call), Some(EndReason::NoAnswer));
    assert_eq!(sim.end_reason(B, &call), Some(EndReason::NoAnswer));
    let ended_at = sim.daemons[A].log.last().unwrap().0 - sim.start;
    assert_eq!(ended_at, RING, "on the virtual clock, exactly the ring timeout");
}

#[test]
fn stalled_handshakes_are_replaced_until_media_connects() {
    // The caller's first two sessions stall while the callee's connect, and the
    // callee answers meanwhile: every fresh session must carry the call's audio.
    let mut sim = Sim::new(&[1, 2], Link { delay: Duration::from_millis(20), ..Link::default() }, 1);
    sim.stalled_sessions.insert(A, 2);
    let call = sim.dial(A, B).unwrap();
    sim.run_for(Duration::from_secs(1));
    sim.command(B, &call, Command::Answer).unwrap();
    sim.run_for(Duration::from_secs(10));
    assert_eq!((sim.state(A, &call), sim.state(B, &call)), (State::Active, State::Active));
    let (machine, _) = &sim.daemons[A].calls[&call];
    assert_eq!(machine.media_attempt(), 3, "replaced twice");
    for node in [A, B] {
        assert_eq!(sim.daemons[node].gates.get(&call), Some(&(true, true)), "node {node}'s session carries audio");
    }
    sim.command(A, &call, Command::Hangup).unwrap();
    sim.settle();
}

#[test]
fn a_handshake_that_always_stalls_fails_the_call_with_its_cause_on_both_sides() {
    let mut sim = Sim::new(&[1, 2], Link::default(), 1);
    sim.stalled_sessions.insert(A, u32::MAX);
    let call = sim.dial(A, B).unwrap();
    sim.run_for(Duration::from_secs(1));
    sim.command(B, &call, Command::Answer).unwrap();
    sim.settle();
    assert_eq!(sim.end_reason(A, &call), Some(EndReason::Failed(FailCause::DtlsFailed)));
    assert!(matches!(sim.end_reason(B, &call), Some(EndReason::Failed(_))), "{:?}", sim.end_reason(B, &call));
}

#[test]
fn a_lost_end_still_ends_the_peer_as_lost() {
    let (mut sim, call) = active_pair(Link::default());
    sim.lose_next = Some(|body| matches!(body, Body::End { .. }));
    sim.command(A, &call, Command::Hangup).unwrap();
    sim.settle();
    assert_eq!(sim.end_reason(A, &call), Some(EndReason::HungUpLocal));
    assert_eq!(sim.end_reason(B, &call), Some(EndReason::PeerLost));
}

#[test]
fn two_callers_ring_at_once_and_answering_one_declines_the_other() {
    let mut sim = Sim::new(&[1, 2, 3], Link::default(), 1);
    let from_b = sim.dial(B, A).unwrap();
    let from_c = sim.dial(C, A).unwrap();
    sim.run_for(Duration::from_millis(200));
    assert_eq!((sim.state(A, &from_b), sim.state(A, &from_c)), (State::Incoming, State::Incoming));
    sim.command(A, &from_c, Command::Answer).unwrap();
    sim.run_for(Duration::from_millis(200));
    assert_eq!(sim.state(A, &from_c), State::Active);
    assert_eq!(sim.end_reason(B, &from_b), Some(EndReason::Declined(ANSWERED_ANOTHER_CALL.into())));
    assert_eq!(sim.daemons[A].live(), [(from_c.clone(), State::Active)]);
    sim.command(A, &from_c, Command::Hangup).unwrap();
    sim.settle();
}

#[test]
fn a_third_caller_hears_busy() {
    let (mut sim, call) = active_pair(Link::default());
    let third = sim.dial(C, A).unwrap();
    sim.run_for(Duration::from_millis(200));
    assert_eq!(sim.end_reason(C, &third), Some(EndReason::Busy));
    assert_eq!(sim.daemons[A].live(), [(call.clone(), State::Active)], "the call goes on");
    assert_eq!(sim.dial(A, C), Err(CallError::Busy), "and A cannot dial out");
    sim.command(B, &call, Command::Hangup).unwrap();
    sim.settle();
}

#[test]
fn random_races_always_end_cleanly() {
    // Seeded random runs: three daemons, random dials, answers, holds and hang-ups
    // at random moments over a jittery link that sometimes breaks a connection.
    // Whatever happens, every call ends on every side, no audio flows before an
    // answer, and a call that is active on one side is not over on the other for
    // longer than the link takes to tell it.
    let mut recordings_started = 0;
    for seed in 0..200 {
        let link = Link { delay: Duration::from_millis(5), jitter: Duration::from_millis(40), break_chance: 0.01 };
        let mut sim = Sim::new(&[1, 2, 3], link, seed);
        let mut actions = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        for _ in 0..30 {
            let node = actions.random_range(0..3);
            let other = (node + actions.random_range(1..3)) % 3;
            match actions.random_range(0..6) {
                0 | 1 => {
                    let _ = sim.dial(node, other);
                }
                2 => {
                    if let Ok(call) = sim.daemons[node].board.pick(None) {
                        let _ = sim.command(node, &call, Command::Answer);
                    }
                }
                3 => {
                    if let Ok(call) = sim.daemons[node].board.pick(None) {
                        let command = match actions.random_bool(0.5) {
                            true => Command::SetHold(actions.random_bool(0.5)),
                            false => Command::SetRecording(actions.random_bool(0.7)),
                        };
                        let _ = sim.command(node, &call, command);
                    }
                }
                _ => {
                    if let Ok(call) = sim.daemons[node].board.pick(None) {
                        let _ = sim.command(node, &call, Command::Hangup);
                    }
                }
            }
            sim.run_for(Duration::from_millis(actions.random_range(0..120)));
        }
        // Hang up whatever is left, then let everything settle.
        for node in [A, B, C] {
            let live: Vec<CallId> = sim.daemons[node].calls.keys().cloned().collect();
            for call in live {
                let _ = sim.command(node, &call, Command::Hangup);
            }
        }
        sim.settle();
        let ended: BTreeSet<CallId> = [A, B, C].iter().flat_map(|&n| sim.ended(n).into_keys()).collect();
        assert!(!ended.is_empty(), "seed {seed}: no call was ever placed");
        sim.assert_no_one_recorded_unshown(seed);
        recordings_started += sim.daemons.iter().flat_map(|d| &d.recordings).filter(|r| r.2 == "started").count();
    }
    assert!(recordings_started > 20, "the races record too: {recordings_started} recordings started");
}

#[test]
fn the_only_call_is_found_and_a_second_one_needs_a_name() {
    let (mut sim, call) = active_pair(Link::default());
    assert_eq!(sim.only_call(A), call);
    sim.command(A, &call, Command::Hangup).unwrap();
    sim.settle();
    assert_eq!(sim.daemons[A].board.pick(None), Err(CallError::NoCall));
}

// --- group calls --------------------------------------------------------------

const D: Node = 3;

/// Daemons with IDs 1..=n that answer every call (a person answering is the
/// same input, later), A and B in an answered call.
fn group_of(n: u8, link: Link, seed: u64) -> (Sim, CallId) {
    let ids: Vec<u8> = (1..=n).collect();
    let mut sim = Sim::new(&ids, link, seed);
    for daemon in &mut sim.daemons {
        daemon.board.set_policy(Policy { auto_answer: AutoAnswer::Everyone, ..Policy::default() });
    }
    let call = sim.dial(A, B).unwrap();
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.talking_with(A), BTreeSet::from([B]));
    (sim, call)
}

impl Sim {
    /// `node` hangs up: every leg, as the registry does.
    fn leave(&mut self, node: Node) {
        let legs: Vec<CallId> = self.daemons[node].calls.keys().cloned().collect();
        for leg in legs {
            let _ = self.command(node, &leg, Command::Hangup);
        }
    }

    /// Each of `nodes` hangs up at once, and everything settles.
    fn everyone_leaves(&mut self, nodes: &[Node]) {
        for &node in nodes {
            self.leave(node);
        }
        self.settle();
    }

    fn assert_mesh(&self, nodes: &[Node], seed: u64) {
        for &n in nodes {
            let others: BTreeSet<Node> = nodes.iter().copied().filter(|m| *m != n).collect();
            assert_eq!(self.talking_with(n), others, "seed {seed}: node {n}'s legs: {:?}", self.daemons[n].live());
            assert_eq!(
                self.daemons[n].calls.len(),
                others.len(),
                "seed {seed}: node {n}: {:?}",
                self.daemons[n].live()
            );
        }
    }
}

#[test]
fn an_added_peer_joins_everyone_and_whoever_leaves_the_rest_go_on() {
    let (mut sim, call) = group_of(4, Link::default(), 1);
    sim.add(A, &call, C).unwrap();
    sim.run_for(Duration::from_secs(1));
    sim.assert_mesh(&[A, B, C], 1);
    // The newcomer adds a fourth, who joins the two it did not dial.
    let c_leg = sim.only_call(C);
    sim.add(C, &c_leg, D).unwrap();
    sim.run_for(Duration::from_secs(1));
    sim.assert_mesh(&[A, B, C, D], 1);
    sim.leave(B);
    sim.run_for(Duration::from_secs(1));
    sim.assert_mesh(&[A, C, D], 1);
    assert!(sim.ended(A).values().any(|reason| *reason == EndReason::HungUpRemote));
    // Everyone else at once.
    sim.everyone_leaves(&[A, C, D]);
}

#[test]
fn two_participants_adding_the_same_peer_at_once_end_in_one_leg_each_whatever_the_order() {
    for seed in 0..40 {
        let link = Link { delay: Duration::from_millis(10), jitter: Duration::from_millis(30), break_chance: 0.0 };
        let (mut sim, call) = group_of(3, link, seed);
        let from_a = sim.add(A, &call, C);
        let from_b = sim.add(B, &call, C);
        assert!(from_a.is_ok() && from_b.is_ok(), "seed {seed}: neither knows of the other's yet");
        sim.run_for(Duration::from_secs(3));
        sim.assert_mesh(&[A, B, C], seed);
        sim.everyone_leaves(&[A, B, C]);
    }
}

#[test]
fn a_busy_or_declining_invitee_leaves_the_call_as_it_was() {
    let (mut sim, call) = group_of(4, Link::default(), 1);
    // C is in a call of its own with D.
    sim.dial(C, D).unwrap();
    sim.run_for(Duration::from_secs(1));
    let invitation = sim.add(A, &call, C).unwrap();
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.end_reason(A, &invitation), Some(EndReason::Busy));
    sim.assert_mesh(&[A, B], 1);
    sim.assert_mesh(&[C, D], 1);
    // Free now, and a person declines.
    sim.leave(C);
    sim.run_for(Duration::from_secs(1));
    sim.daemons[C].board.set_policy(Policy::default());
    let again = sim.add(A, &call, C).unwrap();
    sim.run_for(Duration::from_millis(200));
    let ringing = sim.only_call(C);
    sim.command(C, &ringing, Command::Decline("not now".into())).unwrap();
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.end_reason(A, &again), Some(EndReason::Declined("not now".into())));
    sim.assert_mesh(&[A, B], 1);
    sim.everyone_leaves(&[A, B]);
}

#[test]
fn random_group_races_end_in_a_consistent_mesh() {
    for seed in 0..60 {
        let link = Link { delay: Duration::from_millis(5), jitter: Duration::from_millis(40), break_chance: 0.0 };
        let (mut sim, _) = group_of(5, link, seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Adds from whoever is in the call, at random moments, some at once.
        for node in [C, D, 4] {
            let adder = if rng.random_bool(0.5) { A } else { B };
            let leg = sim.daemons[adder].board.pick(None).expect("in the call");
            let _ = sim.add(adder, &leg, node);
            sim.run_for(Duration::from_millis(rng.random_range(0..60)));
        }
        sim.run_for(Duration::from_secs(3));
        sim.assert_mesh(&[A, B, C, D, 4], seed);
        // Leaves at random moments, some at once.
        for node in [A, B, C, D, 4] {
            sim.leave(node);
            sim.run_for(Duration::from_millis(rng.random_range(0..30)));
        }
        sim.settle();
    }
}

impl Sim {
    /// `node` answers the waiting call `call`, as the registry does: holding
    /// the calls in progress, or merging it into them.
    fn answer_waiting(&mut self, node: Node, call: &CallId, merge: bool) -> Result<(), CallError> {
        match self.daemons[node].board.answer_waiting(call, merge)? {
            Some(WaitingAnswer::Hold(others)) => {
                for other in others {
                    self.command(node, &other, Command::SetHold(true))?;
                }
            }
            Some(WaitingAnswer::Merge { .. }) | None => {}
        }
        self.daemons[node].board.answering(call);
        Ok(self.command(node, call, Command::Answer)?)
    }
}

/// [`group_of`], A with call waiting; D rings A while A talks with B.
fn waiting_at_a(link: Link, seed: u64) -> (Sim, CallId, CallId) {
    let (mut sim, call) = group_of(4, link, seed);
    let policy = Policy { call_waiting: true, auto_answer: AutoAnswer::Everyone, ..Policy::default() };
    sim.daemons[A].board.set_policy(policy);
    let waiting = sim.dial(D, A).unwrap();
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.state(A, &waiting), State::Incoming, "seed {seed}: never answered by itself");
    assert_eq!(sim.state(D, &waiting), State::Outgoing, "seed {seed}: the caller hears it ring");
    (sim, call, waiting)
}

#[test]
fn a_waiting_call_answered_holds_the_call_in_progress_on_both_sides() {
    let (mut sim, call, waiting) = waiting_at_a(Link::default(), 1);
    sim.answer_waiting(A, &waiting, false).unwrap();
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.talking_with(A), BTreeSet::from([D]));
    assert_eq!((sim.state(A, &call), sim.state(B, &call)), (State::OnHold, State::OnHold));
    // A third caller is busy: two calls are live.
    let third = sim.dial(C, A).unwrap();
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.end_reason(C, &third), Some(EndReason::Busy));
    sim.everyone_leaves(&[A, B, D]);
}

#[test]
fn a_merged_waiting_call_closes_the_mesh_whatever_the_timing() {
    for seed in 0..30 {
        let link = Link { delay: Duration::from_millis(10), jitter: Duration::from_millis(30), break_chance: 0.0 };
        let (mut sim, call, waiting) = waiting_at_a(link, seed);
        // Sometimes the call in progress is a group call already.
        let mut people = vec![A, B, D];
        if seed % 2 == 1 {
            sim.add(A, &call, C).unwrap();
            sim.run_for(Duration::from_secs(1));
            people.push(C);
        }
        sim.answer_waiting(A, &waiting, true).unwrap();
        sim.run_for(Duration::from_secs(2));
        people.sort();
        sim.assert_mesh(&people, seed);
        sim.everyone_leaves(&people);
    }
}
