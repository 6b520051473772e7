//! The task that owns all calls: a thin driver of the switchboard
//! (`voicelink_core::switchboard`). It turns API commands and call requests into
//! the switchboard's inputs and carries out its decisions. It never waits on the
//! network or on a call: DNS lookups, sends to peers and replies from calls run
//! in tasks of their own and come back through the inbox, so one slow peer
//! stalls nobody.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};
use voicelink_core::admission::Source;
use voicelink_core::audio_spec::{InputSpec, OutputSpec};
use voicelink_core::call_machine::Command;
use voicelink_core::call_record::CallRecord;
use voicelink_core::dial_target::{self, Target};
use voicelink_core::history::HistoryEntry;
use voicelink_core::reload::LiveSettings;
use voicelink_core::ring_tones::Ring;
use voicelink_core::switchboard::{
    ANSWERED_ANOTHER_CALL, CallError, Dial, Incoming, Policy, Refusal, Switchboard, WaitingAnswer, WhoMayRing,
};
use voicelink_core::vocab::{CallId, DeviceId, EndReason, PROTOCOL_VERSION, State};
use voicelink_core::wire::{Body, EndCode, GroupPart, Message, Participant};

use super::task::{self, CallCommand, CallContext, CallHandle, Destination, LegOf};
use crate::audio::bridge::Bridge;
use crate::clock;
use crate::logging::Throttle;
use crate::signaling::IncomingRequest;

type Reply = oneshot::Sender<Result<CallRecord, CallError>>;

/// A request from the API.
pub enum RegistryCommand {
    /// Place a call.
    Dial {
        /// Name, device ID, `host:port` or `ID@host:port`.
        target: String,
        /// Overrides of the default audio endpoints.
        input: Option<InputSpec>,
        /// Overrides of the default audio endpoints.
        output: Option<OutputSpec>,
        /// The new call.
        reply: Reply,
    },
    /// A command for one call (or the only one).
    Call {
        /// Which call; `None` for the only one.
        call: Option<CallId>,
        /// What to do.
        input: Command,
        /// For answer: audio overrides.
        audio: (Option<InputSpec>, Option<OutputSpec>),
        /// For starting a recording: the file (else one in the recordings folder).
        recording_file: Option<PathBuf>,
        /// The call afterwards.
        reply: Reply,
    },
    /// Answer a ringing call.
    Answer {
        /// Which call; `None` for the only one ringing.
        call: Option<CallId>,
        /// A waiting call: merge it into the call in progress instead of
        /// holding that.
        merge: bool,
        /// Audio overrides.
        audio: (Option<InputSpec>, Option<OutputSpec>),
        /// The call afterwards.
        reply: Reply,
    },
    /// Add a peer to a call (which becomes a group call).
    Add {
        /// Which call; `None` for the only one.
        call: Option<CallId>,
        /// Name or device ID.
        target: String,
        /// The invitation.
        reply: Reply,
    },
}

/// What reaches the registry from the network side, from call tasks and from
/// its own helper tasks, on one channel so their order is kept (glare depends on
/// it).
pub enum Inbox {
    /// A call request on a new connection.
    Incoming(Box<IncomingRequest>),
    /// A dial target's lookup finished.
    Resolved {
        /// The target as typed, for logs.
        target: String,
        /// The addresses, or why there are none.
        addresses: Result<Vec<SocketAddr>, String>,
        /// The device to expect there.
        expected: Option<DeviceId>,
        /// Audio overrides of the dial.
        audio: (Option<InputSpec>, Option<OutputSpec>),
        /// The dial's reply.
        reply: Reply,
    },
    /// The peer told a call of ours to yield to its simultaneous call (glare).
    Yielded {
        /// The peer.
        peer: DeviceId,
        /// Our call.
        call: CallId,
    },
    /// A call reached a new state.
    StateChanged {
        /// The call.
        call: CallId,
        /// Its state.
        state: State,
        /// Its peer, once known.
        peer: Option<DeviceId>,
    },
    /// The peer of a call named the other participants of its group call.
    Participants {
        /// The call it said it on.
        call: CallId,
        /// Who said it.
        peer: DeviceId,
        /// The group call.
        group: CallId,
        /// Who.
        participants: Vec<Participant>,
    },
    /// A call's task ended.
    Finished(CallId),
}

impl From<IncomingRequest> for Inbox {
    fn from(request: IncomingRequest) -> Self {
        Inbox::Incoming(Box::new(request))
    }
}

/// The registry's state; `run` owns it.
pub struct Registry {
    context: CallContext,
    settings: watch::Receiver<LiveSettings>,
    switchboard: Switchboard,
    calls: HashMap<CallId, CallHandle>,
    /// Each call's audio endpoints, shared by the legs of a group call.
    bridges: HashMap<CallId, Bridge>,
    /// For each group call: the participants we were told of (names and
    /// addresses to join them by).
    told: HashMap<CallId, HashMap<DeviceId, Participant>>,
    /// Calls the user muted: a leg that joins their group call starts muted.
    muted: HashSet<CallId>,
    /// Calls the user put on hold: a leg that joins their group call is held
    /// once it is answered.
    held: HashSet<CallId>,
    /// Waiting calls being answered, and the calls to hold once each is
    /// (not before: an answer that fails leaves the call in progress as it was).
    hold_when_answered: HashMap<CallId, Vec<CallId>>,
    /// Call requests refused by the rate limits, logged at most every 10 s.
    refusals: Throttle,
}

impl Registry {
    /// A registry that starts calls with `context`.
    pub fn new(context: CallContext, settings: watch::Receiver<LiveSettings>) -> Self {
        let switchboard = Switchboard::new(context.identity.device_id, policy(&settings.borrow()));
        Registry {
            context,
            settings,
            switchboard,
            calls: HashMap::new(),
            bridges: HashMap::new(),
            told: HashMap::new(),
            muted: HashSet::new(),
            held: HashSet::new(),
            hold_when_answered: HashMap::new(),
            refusals: Throttle::new(Duration::from_secs(10)),
        }
    }

    /// Serves until the command channel closes and every call has ended.
    pub async fn run(mut self, mut commands: mpsc::Receiver<RegistryCommand>, mut inbox: mpsc::Receiver<Inbox>) {
        let shutdown = self.context.shutdown.clone();
        loop {
            tokio::select! {
                // What calls said comes first: a reply the user saw was sent
                // after its state change, so a command that follows sees it.
                biased;
                Some(message) = inbox.recv() => self.inbox(message, shutdown.is_cancelled()),
                Some(command) = commands.recv(), if !shutdown.is_cancelled() => self.command(command),
                () = shutdown.cancelled(), if self.calls.is_empty() => break,
                else => break,
            }
            if shutdown.is_cancelled() && self.calls.is_empty() {
                break;
            }
        }
    }

    fn inbox(&mut self, message: Inbox, stopping: bool) {
        match message {
            Inbox::Incoming(request) if !stopping => self.incoming(*request),
            Inbox::Incoming(request) => drop(tokio::spawn(request.connection.close())),
            Inbox::Resolved { reply, .. } if stopping => {
                let _ = reply.send(Err(CallError::Stopped));
            }
            Inbox::Resolved { target, addresses, expected, audio, reply } => match addresses {
                Ok(addresses) => {
                    let destination = Destination { addresses, expected, name: target.clone() };
                    self.place(&target, destination, audio, reply);
                }
                Err(why) => {
                    let _ = reply.send(Err(CallError::BadTarget(target, why)));
                }
            },
            Inbox::Yielded { peer, call } => {
                if let Some(ours) = self.switchboard.yielded(peer, &call, clock::now()) {
                    self.tell(&ours, Command::Yield);
                }
            }
            Inbox::StateChanged { call, state, peer } => {
                let beside = self.switchboard.state_changed(&call, state, peer);
                self.decline_beside(&call, beside);
                if let Some((group, due)) = self.switchboard.joins_due(&call) {
                    self.join_participants(&call, &group, due);
                }
                if state == State::Active {
                    if let Some(group) = self.switchboard.group_of(&call).cloned() {
                        self.share_participants(&group);
                        if self.switchboard.group_legs(&group).iter().any(|leg| self.held.contains(leg)) {
                            self.held.insert(call.clone());
                        }
                    }
                    // Held while it was still connecting (the call refused it
                    // then), or a leg of a held call: held now. A hold it
                    // already has changes nothing.
                    if self.held.contains(&call) {
                        self.tell(&call, Command::SetHold(true));
                    }
                    // A waiting call answered by holding the others: now that
                    // it is answered, they are held.
                    if let Some(others) = self.hold_when_answered.remove(&call) {
                        self.hold(others);
                    }
                }
            }
            Inbox::Participants { call, peer, group, participants } => {
                let named = participants.iter().map(|p| (p.device_id, p.invited));
                let due = self.switchboard.introduce(&call, &group, named);
                if self.switchboard.group_of(&call) == Some(&group) {
                    self.remember(&group, participants.into_iter().filter(|p| p.device_id != peer));
                }
                self.join_participants(&call, &group, due);
            }
            Inbox::Finished(id) => {
                self.calls.remove(&id);
                self.bridges.remove(&id);
                self.muted.remove(&id);
                self.held.remove(&id);
                self.hold_when_answered.remove(&id);
                let group = self.switchboard.group_of(&id).cloned();
                self.switchboard.finished(&id);
                self.switchboard.expire(clock::now());
                if let Some(group) = group
                    && self.switchboard.participants(&group).is_empty()
                {
                    self.told.remove(&group);
                }
            }
        }
    }

    fn context(&self) -> CallContext {
        let mut context = self.context.clone();
        context.apply(&self.settings.borrow());
        context
    }

    fn command(&mut self, command: RegistryCommand) {
        match command {
            RegistryCommand::Dial { target, input, output, reply } => self.dial(target, (input, output), reply),
            RegistryCommand::Add { call, target, reply } => {
                let outcome = self.add(call, &target);
                let _ = reply.send(outcome);
            }
            RegistryCommand::Answer { call, merge, audio, reply } => {
                let answered = self.switchboard.pick_ringing(call.as_ref()).and_then(|id| self.answer(&id, merge));
                match answered {
                    Ok(handle) => {
                        let audio = self.with_defaults(audio);
                        ask(handle, CallCommandParts { command: Command::Answer, audio, recording_file: None }, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            RegistryCommand::Call { call, input, audio, recording_file, reply } => {
                let named = call.is_some();
                let picked = match input {
                    Command::Decline(_) => self.switchboard.pick_ringing(call.as_ref()),
                    _ => self.switchboard.pick(call.as_ref()),
                };
                match picked.and_then(|id| self.handle(&id)) {
                    Ok(handle) => {
                        self.whole_call(&handle.id, &input, named);
                        let audio = self.with_defaults(audio);
                        ask(handle, CallCommandParts { command: input, audio, recording_file }, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
        }
    }

    fn handle(&self, id: &CallId) -> Result<CallHandle, CallError> {
        self.calls.get(id).cloned().ok_or_else(|| CallError::NoSuchCall(id.to_string()))
    }

    /// Carries a command about me to every participant of `call`'s group
    /// call (the speaker of one named participant is that participant's
    /// alone), and a resume to the held call's calls beside it, which are
    /// held: one conversation is heard at a time.
    fn whole_call(&mut self, call: &CallId, input: &Command, named: bool) {
        let whole_call = match input {
            Command::Hangup
            | Command::Decline(_)
            | Command::SetMute(_)
            | Command::SetHold(_)
            | Command::SetProcessing(_) => true,
            Command::SetSpeakerMute(_) => !named,
            _ => false,
        };
        if !whole_call {
            return;
        }
        for other in self.switchboard.legs_with(call) {
            match input {
                Command::SetMute(true) => self.muted.insert(other.clone()),
                Command::SetMute(false) => self.muted.remove(&other),
                Command::SetHold(true) => self.held.insert(other.clone()),
                Command::SetHold(false) => self.held.remove(&other),
                _ => false,
            };
            if other != *call {
                self.tell(&other, input.clone());
            }
        }
        if *input == Command::SetHold(false) {
            self.hold(self.switchboard.answered_beside(call));
        }
    }

    /// Puts calls on hold (the user's hold: a leg that joins them is held too).
    fn hold(&mut self, calls: Vec<CallId>) {
        for call in calls {
            if self.held.insert(call.clone()) {
                info!(call_id = %call, "holding a call to talk in another");
                self.tell(&call, Command::SetHold(true));
            }
        }
    }

    /// The user answers `call`: what rings beside it is declined, and if it
    /// was waiting beside a call in progress, that call is held or (`merge`)
    /// the two become one group call. Returns the call to tell to answer.
    fn answer(&mut self, call: &CallId, merge: bool) -> Result<CallHandle, CallError> {
        let handle = self.handle(call)?;
        if merge {
            let beside =
                self.switchboard.answered_beside(call).into_iter().flat_map(|c| self.switchboard.legs_with(&c));
            let peers: Vec<DeviceId> =
                std::iter::once(call.clone()).chain(beside).filter_map(|leg| self.switchboard.peer_of(&leg)).collect();
            self.check_versions(&peers)?;
        }
        match self.switchboard.answer_waiting(call, merge)? {
            Some(WaitingAnswer::Hold(others)) => {
                self.hold_when_answered.insert(call.clone(), others);
            }
            Some(WaitingAnswer::Merge { group, legs }) => {
                info!(call_id = %call, %group, "merging a waiting call into the call in progress");
                for leg in legs {
                    if self.held.remove(&leg) {
                        self.tell(&leg, Command::SetHold(false));
                    }
                }
                // Muted in the call it joins: muted on it too.
                self.mute_if_the_call_is(call);
            }
            None => {}
        }
        let beside = self.switchboard.answering(call);
        self.decline_beside(call, beside);
        // Two participants invited us at once: one answer takes both.
        for other in self.switchboard.same_invitation(call) {
            self.switchboard.answering(&other);
            self.tell(&other, Command::Answer);
        }
        Ok(handle)
    }

    /// Group calls are protocol 2: each of these peers must speak it.
    fn check_versions(&self, peers: &[DeviceId]) -> Result<(), CallError> {
        let state = self.context.hub.state();
        match peers.iter().find_map(|peer| state.peers.get(peer).filter(|p| p.protocol_version < PROTOCOL_VERSION)) {
            Some(old) => Err(CallError::TooOld(old.display_name.clone(), old.protocol_version)),
            None => Ok(()),
        }
    }

    /// Audio endpoints: the overrides, completed with the live defaults.
    fn audio(&self, (input, output): (Option<InputSpec>, Option<OutputSpec>)) -> (InputSpec, OutputSpec) {
        let live = self.settings.borrow();
        (input.unwrap_or_else(|| live.audio_input.clone()), output.unwrap_or_else(|| live.audio_output.clone()))
    }

    /// Audio overrides completed with the live defaults; `None` when there are none.
    fn with_defaults(&self, audio: (Option<InputSpec>, Option<OutputSpec>)) -> Option<(InputSpec, OutputSpec)> {
        (audio.0.is_some() || audio.1.is_some()).then(|| self.audio(audio))
    }

    fn dial(&mut self, target: String, audio: (Option<InputSpec>, Option<OutputSpec>), reply: Reply) {
        let resolved = {
            let state = self.context.hub.state();
            let contacts = self.context.store.contacts();
            let contacts = contacts.borrow();
            dial_target::resolve(&target, state.peers.values(), &contacts)
        };
        match resolved {
            Ok(Target::Peer { addresses, device, name }) => {
                let destination = Destination { addresses, expected: Some(device), name };
                self.place(&target, destination, audio, reply);
            }
            // The lookup runs in its own task; its result comes back to the inbox.
            Ok(Target::Lookup { address, expected }) => {
                let inbox = self.context.inbox.clone();
                tokio::spawn(async move {
                    let addresses = lookup(&address).await;
                    let resolved = Inbox::Resolved { target: address, addresses, expected, audio, reply };
                    let _ = inbox.send(resolved).await;
                });
            }
            Err(error) => {
                let _ = reply.send(Err(error));
            }
        }
    }

    /// Places a call to a resolved destination, or answers the peer's if it is
    /// ringing us already (the answer's outcome is then the dial's).
    fn place(
        &mut self,
        target: &str,
        destination: Destination,
        audio: (Option<InputSpec>, Option<OutputSpec>),
        reply: Reply,
    ) {
        let outcome = match self.switchboard.dial(destination.expected, CallId::random()) {
            Err(error) => Err(error),
            Ok(Dial::AnswerTheirs(theirs)) => match self.answer(&theirs, false) {
                Ok(handle) => {
                    info!(call_id = %theirs, target, "dialing a peer that is calling us: answering its call");
                    let command = CallCommandParts {
                        command: Command::Answer,
                        audio: self.with_defaults(audio),
                        recording_file: None,
                    };
                    ask(handle, command, reply);
                    return;
                }
                Err(error) => Err(error),
            },
            Ok(Dial::Place(id)) => {
                let (input, output) = self.audio(audio);
                let leg = LegOf { group: None, bridge: Bridge::new() };
                info!(call_id = %id, target, "dialing");
                Ok(self.start_leg(id, destination, (input, output), leg))
            }
        };
        let _ = reply.send(outcome);
    }

    fn incoming(&mut self, request: IncomingRequest) {
        let IncomingRequest { connection, from, call_id, caller_name, frame, group } = request;
        let peer = connection.peer;
        self.switchboard.set_policy(policy(&self.settings.borrow()));
        let standing = self.context.store.contacts().borrow().standing(&peer);
        let source = Source::of(from.ip());
        match self.switchboard.incoming(call_id.clone(), peer, source, standing, group.as_ref(), clock::now()) {
            Incoming::Refuse(refusal) => {
                let reason = match refusal {
                    Refusal::Blocked => EndReason::Blocked,
                    Refusal::DoNotDisturb => EndReason::DoNotDisturb,
                    Refusal::NotAllowed => EndReason::NotAllowed,
                    Refusal::GroupFull | Refusal::NotInvited => EndReason::Declined(refusal.message()),
                    Refusal::CallIdInUse | Refusal::TooManyRequests { .. } => {
                        if let Some(refused) = self.refusals.note(clock::now()) {
                            warn!(peer = %peer.short(), %from, refused, reason = refusal.message(), "refusing call requests");
                        }
                        let message = refusal.message();
                        tokio::spawn(async move { connection.refuse(call_id, &message).await });
                        return;
                    }
                };
                // The user's own policy: nothing to warn about. It rings nowhere and
                // reaches no media; the history keeps it.
                info!(peer = %peer.short(), reason = refusal.message(), "a call request was refused by policy");
                let entry =
                    HistoryEntry::refused(call_id.clone(), peer, caller_name, reason, std::time::SystemTime::now());
                self.context.store.call_ended(entry);
                let decline = Body::Decline { reason: refusal.message(), code: refusal.decline_code() };
                tokio::spawn(say_and_close(connection, Message::new(call_id, decline)));
            }
            Incoming::Glare => {
                info!(call_id = %call_id, "glare: both sides dialed; keeping our call");
                tokio::spawn(say_and_close(connection, Message::new(call_id, Body::End { reason: EndCode::Glare })));
            }
            Incoming::Busy => {
                info!(peer = %peer.short(), "busy: refusing a second call");
                tokio::spawn(say_and_close(connection, Message::new(call_id, Body::Busy)));
            }
            Incoming::Ring { answer, hang_up, waiting } => {
                if let Some(ours) = hang_up {
                    info!(call_id = %call_id, "glare: both sides dialed; taking theirs");
                    self.tell(&ours, Command::Hangup);
                    self.calls.remove(&ours);
                }
                let (input, output) = self.audio((None, None));
                let mut context = self.context();
                if let Some(frame) = frame {
                    context.codec.frame = frame;
                }
                // One ringtone at a time: a call that rings beside another (or
                // a second invitation to the same group call) rings silently.
                let ring = if waiting {
                    Some(Ring::Waiting)
                } else {
                    let rings = !answer
                        && !self.switchboard.rings_beside(&call_id)
                        && self.switchboard.same_invitation(&call_id).is_empty();
                    rings.then_some(Ring::Incoming)
                };
                if let Some(group) = &group {
                    info!(call_id = %call_id, group = %group.id, join = group.join, "a group call request");
                    self.remember(&group.id, group.participants.iter().cloned());
                }
                // A waiting call shares the devices of the call in progress:
                // it is held or merged when answered, never heard beside it.
                let bridge = match self.switchboard.answered_beside(&call_id).first() {
                    Some(in_progress) if waiting => self.bridge_for(in_progress),
                    _ => self.bridge_for(&call_id),
                };
                self.bridges.insert(call_id.clone(), bridge.clone());
                let leg = LegOf { group, bridge };
                let audio = (input, output);
                let handle = task::incoming(context, connection, call_id.clone(), caller_name, audio, ring, leg);
                self.calls.insert(call_id.clone(), handle);
                self.mute_if_the_call_is(&call_id);
                if answer {
                    self.tell(&call_id, Command::Answer);
                    let beside = self.switchboard.answering(&call_id);
                    self.decline_beside(&call_id, beside);
                }
            }
        }
    }

    /// Starts an outgoing leg and counts it.
    fn start_leg(
        &mut self,
        id: CallId,
        destination: Destination,
        audio: (InputSpec, OutputSpec),
        leg: LegOf,
    ) -> CallRecord {
        self.bridges.insert(id.clone(), leg.bridge.clone());
        let (handle, record) = task::dial(self.context(), id, destination, audio.0, audio.1, leg);
        self.calls.insert(handle.id.clone(), handle);
        self.mute_if_the_call_is(&record.id);
        record
    }

    /// A new leg of a group call in which the user is muted starts muted.
    fn mute_if_the_call_is(&mut self, leg: &CallId) {
        if self.switchboard.legs_with(leg).iter().any(|other| self.muted.contains(other)) {
            self.muted.insert(leg.clone());
            self.tell(leg, Command::SetMute(true));
        }
    }

    /// The endpoints a new leg uses: those of its group call's other legs, or
    /// its own.
    fn bridge_for(&self, call: &CallId) -> Bridge {
        self.switchboard.legs_with(call).iter().find_map(|leg| self.bridges.get(leg).cloned()).unwrap_or_default()
    }

    /// Notes what we were told of a group call's participants.
    fn remember(&mut self, group: &CallId, participants: impl IntoIterator<Item = Participant>) {
        let own_id = self.context.identity.device_id;
        let told = self.told.entry(group.clone()).or_default();
        for participant in participants.into_iter().filter(|p| p.device_id != own_id) {
            told.insert(participant.device_id, participant);
        }
    }

    /// The user adds `target` to a call: the peer is invited, and everyone in
    /// the call is told it may join them.
    fn add(&mut self, call: Option<CallId>, target: &str) -> Result<CallRecord, CallError> {
        let call = self.switchboard.pick(call.as_ref())?;
        let resolved = {
            let state = self.context.hub.state();
            let contacts = self.context.store.contacts();
            let contacts = contacts.borrow();
            dial_target::resolve(target, state.peers.values(), &contacts)
        };
        let (addresses, device, name) = match resolved? {
            Target::Peer { addresses, device, name } => (addresses, device, name),
            Target::Lookup { .. } => {
                let why = "a participant is added by a name or device ID that discovery sees".to_owned();
                return Err(CallError::BadTarget(target.to_owned(), why));
            }
        };
        // Everyone in the call is told of the newcomer in a version-2 message.
        let in_the_call =
            self.switchboard.legs_with(&call).into_iter().filter_map(|leg| self.switchboard.peer_of(&leg));
        let peers: Vec<DeviceId> = std::iter::once(device).chain(in_the_call).collect();
        self.check_versions(&peers)?;
        let id = CallId::random();
        let group = self.switchboard.add(&call, device, id.clone())?;
        info!(call_id = %id, %group, peer = %device.short(), "adding a participant");
        // Everyone in the call first: the invitee's joins find them ready.
        self.share_participants(&group);
        let participants = self.participants_for(&group, device);
        let leg =
            LegOf { group: Some(GroupPart { id: group, join: false, participants }), bridge: self.bridge_for(&call) };
        let destination = Destination { addresses, expected: Some(device), name };
        Ok(self.start_leg(id, destination, self.audio((None, None)), leg))
    }

    /// Joins these participants of `group` (after our invitation `call` was
    /// answered, or when `call`'s peer introduced them); their switchboards
    /// expect us, and nothing rings.
    fn join_participants(&mut self, call: &CallId, group: &CallId, due: Vec<DeviceId>) {
        let bridge = self.bridge_for(call);
        for device in due {
            let told = self.told.get(group).and_then(|told| told.get(&device)).cloned();
            let seen = self.context.hub.state().peers.get(&device).cloned();
            let allow_loopback = self.settings.borrow().calls.allow_loopback;
            let addresses = match (&seen, &told) {
                (Some(peer), _) if peer.online => dial_target::addresses(peer),
                (_, Some(Participant { address: Some(address), .. }))
                    if dial_target::usable_hint(address, allow_loopback) =>
                {
                    vec![*address]
                }
                _ => Vec::new(),
            };
            let name =
                seen.map(|peer| peer.display_name).or_else(|| told.map(|t| t.name)).unwrap_or_else(|| device.short());
            if addresses.is_empty() {
                warn!(%group, peer = %device.short(), "cannot join a participant: mDNS does not see it, and no usable address was given for it");
                continue;
            }
            let id = CallId::random();
            if let Err(error) = self.switchboard.join(group, device, id.clone()) {
                info!(%group, peer = %device.short(), %error, "not joining a participant");
                continue;
            }
            info!(call_id = %id, %group, peer = %device.short(), "joining a participant");
            let part = GroupPart { id: group.clone(), join: true, participants: Vec::new() };
            let leg = LegOf { group: Some(part), bridge: bridge.clone() };
            let destination = Destination { addresses, expected: Some(device), name };
            self.start_leg(id, destination, self.audio((None, None)), leg);
        }
    }

    /// Tells each participant of `group` who else is in it (or invited).
    fn share_participants(&self, group: &CallId) {
        for leg in self.switchboard.group_legs(group) {
            let Some(peer) = self.switchboard.peer_of(&leg) else { continue };
            let participants = self.participants_for(group, peer);
            self.tell(&leg, Command::ShareParticipants { group: group.clone(), participants });
        }
    }

    /// The participants of `group` other than `peer`, as `peer` is told of them.
    fn participants_for(&self, group: &CallId, peer: DeviceId) -> Vec<Participant> {
        let state = self.context.hub.state();
        let told = self.told.get(group);
        self.switchboard
            .participants(group)
            .into_iter()
            .filter(|device| *device != peer)
            .map(|device| {
                let seen = state.peers.get(&device);
                let name = seen
                    .map(|p| p.display_name.clone())
                    .or_else(|| told.and_then(|t| t.get(&device)).map(|t| t.name.clone()))
                    .unwrap_or_default();
                let address = seen
                    .and_then(|p| dial_target::addresses(p).first().copied())
                    .or_else(|| told.and_then(|t| t.get(&device)).and_then(|t| t.address));
                let invited = self.switchboard.invited(group, device);
                Participant { device_id: device, name, address, invited }
            })
            .collect()
    }

    /// Declines the calls that rang beside `answered`.
    fn decline_beside(&self, answered: &CallId, beside: Vec<CallId>) {
        for other in beside {
            info!(call_id = %other, answered = %answered, "declining a call that rang alongside the one answered");
            self.tell(&other, Command::Decline(ANSWERED_ANOTHER_CALL.into()));
        }
    }

    /// Sends a call a command without waiting for it.
    fn tell(&self, call: &CallId, command: Command) {
        let Some(handle) = self.calls.get(call) else { return };
        let (reply, _) = oneshot::channel();
        let command = CallCommand { command, audio: None, recording_file: None, reply };
        // Queued now, so a call gets them in the order they were told (a mute
        // and an unmute in quick succession); a full queue waits in a task.
        if let Err(mpsc::error::TrySendError::Full(command)) = handle.commands.try_send(command) {
            let commands = handle.commands.clone();
            tokio::spawn(async move { commands.send(command).await });
        }
    }
}

/// The switchboard's policy from the live settings.
fn policy(live: &LiveSettings) -> Policy {
    let who_may_ring = if live.calls.do_not_disturb { WhoMayRing::Nobody } else { live.calls.who_may_ring };
    Policy {
        auto_answer: live.calls.auto_answer,
        who_may_ring,
        call_waiting: live.calls.call_waiting,
        ..Policy::default()
    }
}

/// A call command without its reply channel.
struct CallCommandParts {
    command: Command,
    audio: Option<(InputSpec, OutputSpec)>,
    recording_file: Option<PathBuf>,
}

/// Sends a call a command in a task of its own and passes its outcome on.
fn ask(handle: CallHandle, parts: CallCommandParts, reply: Reply) {
    tokio::spawn(async move {
        let (tx, rx) = oneshot::channel();
        let CallCommandParts { command, audio, recording_file } = parts;
        let sent = handle.commands.send(CallCommand { command, audio, recording_file, reply: tx }).await;
        let outcome = match (sent, rx.await) {
            (Ok(()), Ok(outcome)) => outcome.map_err(CallError::from),
            _ => Err(CallError::NoSuchCall(handle.id.to_string())),
        };
        let _ = reply.send(outcome);
    });
}

async fn say_and_close(mut connection: crate::signaling::transport::Connection, message: Message) {
    if let Err(error) = connection.send(&message).await {
        debug!(%error, "cannot tell the caller");
    }
    connection.close().await;
}

/// How long a dial's name lookup may take (a resolver that never answers
/// otherwise leaves the dial waiting for ever).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

async fn lookup(address: &str) -> Result<Vec<SocketAddr>, String> {
    let addresses: Vec<SocketAddr> = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(address))
        .await
        .map_err(|_| format!("cannot resolve {address}: no answer within {} s", LOOKUP_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot resolve {address}: {e}"))?
        .collect();
    if addresses.is_empty() { Err(format!("{address} resolves to no address")) } else { Ok(addresses) }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;
    use voicelink_core::call_machine::Timeouts;
    use voicelink_core::vocab::{EndReason, FailCause};

    use super::*;
    use crate::events::{Change, EventHub, Update};
    use crate::identity::Identity;
    use crate::media::session::CodecSettings;
    use crate::signaling::transport::Endpoint;
    use crate::stats::StatsBoard;

    /// A registry on tokio's paused clock, and its command channel.
    struct Running {
        commands: mpsc::Sender<RegistryCommand>,
        hub: EventHub,
        shutdown: CancellationToken,
        _settings: watch::Sender<LiveSettings>,
    }

    fn registry(dir: &std::path::Path) -> Running {
        let (identity, _) = Identity::load_or_create(dir).unwrap();
        let identity = Arc::new(identity);
        let (inbox, inbox_rx) = mpsc::channel(16);
        let hub = EventHub::new();
        let shutdown = CancellationToken::new();
        let (settings, _) = watch::channel(LiveSettings::of(&voicelink_core::config::Config::default()));
        let context = CallContext {
            endpoint: Endpoint::new(identity.clone()).unwrap(),
            identity,
            hub: hub.clone(),
            stats: StatsBoard::default(),
            own_name: "alice".into(),
            timeouts: Timeouts::default(),
            codec: CodecSettings::default(),
            loop_files: false,
            recordings_dir: std::env::temp_dir(),
            store: crate::store::Store::off("the registry tests keep no history"),
            inbox,
            shutdown: shutdown.clone(),
            settings: settings.subscribe(),
            ringing: settings.borrow().ringing.clone(),
            devices: crate::audio::device_watch::fixed(Default::default()),
        };
        let (commands, commands_rx) = mpsc::channel(16);
        tokio::spawn(Registry::new(context, settings.subscribe()).run(commands_rx, inbox_rx));
        Running { commands, hub, shutdown, _settings: settings }
    }

    async fn dial(commands: &mpsc::Sender<RegistryCommand>, target: &str) -> Result<CallRecord, CallError> {
        let (reply, answer) = oneshot::channel();
        let command = RegistryCommand::Dial { target: target.into(), input: None, output: None, reply };
        commands.send(command).await.unwrap();
        answer.await.unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_callee_that_never_finishes_the_handshake_fails_the_call_on_tokios_clock() {
        let dir = tempfile::tempdir().unwrap();
        let Running { commands, hub, shutdown, _settings } = registry(dir.path());
        // Accepted by the kernel, never answered: the TLS handshake hangs.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = silent.local_addr().unwrap().to_string();
        let mut feed = hub.subscribe();
        let started = tokio::time::Instant::now();
        let call = dial(&commands, &target).await.unwrap();
        assert_eq!(call.state, State::Outgoing);
        assert_eq!(dial(&commands, &target).await.unwrap_err(), CallError::Busy, "one call at a time");
        let ended = loop {
            match feed.next().await.unwrap() {
                Update::Change(published) => match &published.change {
                    Change::CallState { call, .. } if call.state == State::Ended => break call.clone(),
                    _ => {}
                },
                Update::State(..) => {}
            }
        };
        let reason = ended.end_reason.unwrap();
        assert!(
            matches!(&reason, EndReason::Failed(FailCause::Unreachable(why)) if why.contains("timed out")),
            "{reason:?}"
        );
        // The connect timeout, on the virtual clock: no wall-clock wait.
        assert!(started.elapsed() >= Duration::from_secs(10), "{:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(30), "before the ring timeout: {:?}", started.elapsed());
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_dial_target_nobody_has_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let running = registry(dir.path());
        assert_eq!(dial(&running.commands, "nobody").await.unwrap_err(), CallError::UnknownPeer("nobody".into()));
        let typo = dial(&running.commands, "ABC@127.0.0.1:4444").await.unwrap_err();
        assert!(matches!(&typo, CallError::BadTarget(_, why) if why.contains("56 characters")), "{typo}");
        running.shutdown.cancel();
    }
}
