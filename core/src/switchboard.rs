//! The switchboard: the policy every call passes through before and while its
//! own machine runs. Pure: the registry task feeds it what happened (a dial, a
//! call request, a call's new state) with the time, and it answers with a
//! decision the registry carries out. It never waits for anything.
//!
//! The rules:
//! - One call at a time: a dial while a call is live is refused, a call request
//!   is answered "busy". Before one is answered, though, up to
//!   [`Policy::max_ringing`] callers from different addresses may ring at once
//!   (a caller who holds a call ringing keeps nobody else out); answering one
//!   declines the others.
//! - Dialing someone who is ringing us answers their call instead.
//! - Glare (both sides dial each other at once): both compute the same survivor
//!   from the two device IDs ([`resolve_glare`]); the loser's call yields and the
//!   winner's is answered at once, since both people asked for this conversation.
//! - A peer may make [`Policy::requests_per_peer`] call requests per
//!   [`Policy::request_window`], and one source address (every key it mints)
//!   [`Policy::requests_per_source`]; more are refused, with when to try again.
//!   A request that was answered does not count: the limit is against ringing
//!   nobody wants, not against a friend who calls back.
//! - Who may ring ([`WhoMayRing`]): everyone, known devices, trusted devices, or
//!   nobody (do-not-disturb). A blocked device never rings. A refused caller is
//!   told why ([`Refusal`]); a call of ours to that peer still settles glare.
//! - Auto-answer ([`AutoAnswer`]) answers every call that rings, or trusted
//!   devices' only.
//! - Group calls are a full mesh of ordinary calls ("legs") that share a group
//!   ID. Anyone in an answered call may add a peer ([`Switchboard::add`]); the
//!   invitation rings as usual, and once it is answered the invitee joins every
//!   participant it was told of ([`Switchboard::joins_due`]). A join rings
//!   nobody: it is answered at once if a participant introduced the joiner
//!   ([`Switchboard::introduce`]), and refused otherwise; identity is still
//!   each leg's own TLS. At most [`MAX_PARTICIPANTS`] people, this device
//!   included. Two participants inviting the same peer at once ring it once:
//!   answering one invitation answers the other.
//! - Call waiting ([`Policy::call_waiting`]): while a call is live, one more
//!   two-party call may ring, softly and never answered automatically.
//!   Answering it holds the calls already answered, or merges it into one of
//!   them ([`Switchboard::answer_waiting`]); resuming a held call holds the
//!   others ([`Switchboard::answered_beside`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use std::fmt;
use std::str::FromStr;

use crate::admission::Source;
use crate::call_machine::InvalidCommand;
use crate::contacts::{PeerStanding, Standing};
use crate::vocab::{CallId, DeviceId, Direction, State};
use crate::wire::{DeclineCode, GroupPart};

/// Most people in one group call, this device included.
pub const MAX_PARTICIPANTS: usize = 6;

/// Refused joins remembered at most (a stranger that keeps trying fills no memory).
const MAX_REFUSED_JOINS: usize = 64;

/// Why a call still ringing here is declined when the user answers another.
pub const ANSWERED_ANOTHER_CALL: &str = "answered another call";

/// Who may ring this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhoMayRing {
    /// Anyone on the LAN (blocked devices excepted).
    #[default]
    Everyone,
    /// Devices this one has had a call with, or the user named.
    Known,
    /// Devices the user trusted.
    Trusted,
    /// Nobody: do-not-disturb.
    Nobody,
}

/// Which calls are answered at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoAnswer {
    /// None: a person answers.
    #[default]
    Off,
    /// Trusted devices' calls.
    Trusted,
    /// Every call that rings (bots, intercoms, an echo peer).
    Everyone,
}

/// Both settings are written as words in the config and the API.
macro_rules! words {
    ($type:ident, $what:literal, $($variant:ident = $word:literal $(| $alias:literal)*),+) => {
        impl $type {
            /// The setting's word.
            pub fn as_str(self) -> &'static str {
                match self { $($type::$variant => $word),+ }
            }
        }
        impl FromStr for $type {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($word $(| $alias)* => Ok($type::$variant),)+
                    _ => Err(format!(concat!("{:?} is not ", $what, "; use {}"), s, [$($word),+].join(", "))),
                }
            }
        }
        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
words!(WhoMayRing, "who may ring", Everyone = "everyone", Known = "known", Trusted = "trusted", Nobody = "nobody");
words!(
    AutoAnswer,
    "an auto-answer setting",
    Off = "off" | "false",
    Trusted = "trusted",
    Everyone = "everyone" | "true"
);

/// The switchboard's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Which calls are answered at once.
    pub auto_answer: AutoAnswer,
    /// Who may ring.
    pub who_may_ring: WhoMayRing,
    /// How long after our call yielded to glare the peer's call still counts as
    /// its twin (and is answered at once).
    pub glare_window: Duration,
    /// Call requests one peer (device key) may make per window.
    pub requests_per_peer: usize,
    /// Call requests one source address may make per window, whatever keys it
    /// uses (fresh keys cost nothing).
    pub requests_per_source: usize,
    /// The rate limit's window.
    pub request_window: Duration,
    /// Calls that may ring here at once, each from its own address.
    pub max_ringing: usize,
    /// A call that comes in while another is live waits (rings softly)
    /// instead of being told "busy".
    pub call_waiting: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            auto_answer: AutoAnswer::Off,
            who_may_ring: WhoMayRing::Everyone,
            glare_window: Duration::from_secs(10),
            requests_per_peer: 20,
            requests_per_source: 30,
            request_window: Duration::from_secs(60),
            max_ringing: 4,
            call_waiting: false,
        }
    }
}

/// Why a call command or a dial failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No call has that ID.
    #[error("there is no call {0} (voicectl calls lists them)")]
    NoSuchCall(String),
    /// No call at all.
    #[error("there is no call")]
    NoCall,
    /// Several calls and none named.
    #[error("there are {0} calls: name one (voicectl calls lists them)")]
    WhichCall(usize),
    /// The dial target names no peer we know.
    #[error("no online peer is called {0:?} (voicectl peers lists who is); dial host:port for a peer mDNS cannot see")]
    UnknownPeer(String),
    /// The only online peer with that name is not the known device it belongs to.
    #[error(
        "the online peer called {0:?} is not the device you know by that name (voicectl peers marks it); dial it \
         by device ID if you mean it"
    )]
    NameTaken(String),
    /// Several peers have that name.
    #[error("{count} online peers are called {name:?}: dial one by device ID")]
    Ambiguous {
        /// The name.
        name: String,
        /// How many.
        count: usize,
    },
    /// The target does not parse or resolve.
    #[error("cannot dial {0:?}: {1}")]
    BadTarget(String, String),
    /// Already in a call.
    #[error("already in a call: hang up first, or add the peer to it (voicectl add)")]
    Busy,
    /// A merge needs a call to merge into, and a waiting call to merge.
    #[error("only a waiting call can be merged into the call in progress (answer it without --merge)")]
    NothingToMerge,
    /// A peer may be added to an answered call only.
    #[error("a peer can be added to an answered call only")]
    NotAnswered,
    /// The peer is in the call (or invited) already.
    #[error("{0} is in the call already")]
    AlreadyInCall(String),
    /// The group call is full.
    #[error("the call has {MAX_PARTICIPANTS} participants, the most a call can have")]
    GroupFull,
    /// The peer's voicelink predates group calls.
    #[error("{0} runs a voicelink too old for group calls (protocol {1}; 2 is needed)")]
    TooOld(String, u32),
    /// The call refused the command.
    #[error(transparent)]
    Invalid(#[from] InvalidCommand),
    /// The daemon is stopping.
    #[error("the daemon is stopping")]
    Stopped,
}

/// Both sides dialed each other at once: which call survives. Both sides compute
/// the same answer from the two device IDs: the call placed by the lower ID lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Glare {
    /// Keep our outgoing call; refuse theirs (it yields on their side).
    KeepOurs,
    /// End our outgoing call and answer theirs at once.
    TakeTheirs,
}

/// Resolves glare between our outgoing call and the peer's incoming one.
pub fn resolve_glare(own_id: &DeviceId, peer_id: &DeviceId) -> Glare {
    if own_id < peer_id { Glare::KeepOurs } else { Glare::TakeTheirs }
}

/// What to do with a dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dial {
    /// Place the new call (it is now counted as live).
    Place(CallId),
    /// The peer is ringing us: answer its call instead of placing one.
    AnswerTheirs(CallId),
}

/// What to do with a call request that arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Let it ring (it is now counted as live).
    Ring {
        /// Answer it at once (auto-answer, or the winning side of glare).
        answer: bool,
        /// Our own call to the same peer, to hang up first (glare, theirs wins).
        hang_up: Option<CallId>,
        /// It waits beside a live call: it rings softly.
        waiting: bool,
    },
    /// Tell the caller we are busy.
    Busy,
    /// Both sides dialed and ours wins: tell the caller to yield (`end` with `glare`).
    Glare,
    /// Refuse with an error message for the caller.
    Refuse(Refusal),
}

/// What answering a waiting call does to the calls in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitingAnswer {
    /// Put these on hold.
    Hold(Vec<CallId>),
    /// The waiting call joined `group`: its live legs (the waiting call's
    /// among them) are `legs`; any held are resumed.
    Merge {
        /// The group call, new or not.
        group: CallId,
        /// Its live legs.
        legs: Vec<CallId>,
    },
}

/// Why a call request was refused outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The caller reused the ID of a call we have.
    CallIdInUse,
    /// The caller (its key or its address) made too many requests lately.
    TooManyRequests {
        /// When the oldest of them leaves the window.
        retry_after: Duration,
    },
    /// The user blocked the caller.
    Blocked,
    /// Nobody may ring now.
    DoNotDisturb,
    /// Only known (or trusted) devices may ring, and the caller is not one.
    NotAllowed,
    /// A group call would have more than [`MAX_PARTICIPANTS`] people.
    GroupFull,
    /// A join to a group call we are not in, or that nobody in it introduced
    /// the caller to.
    NotInvited,
}

impl Refusal {
    /// The code a refusal is declined with; `None` for those answered with
    /// an `error` (the request itself was wrong or too many).
    pub fn decline_code(self) -> Option<DeclineCode> {
        match self {
            Refusal::Blocked => Some(DeclineCode::Blocked),
            Refusal::DoNotDisturb => Some(DeclineCode::DoNotDisturb),
            Refusal::NotAllowed => Some(DeclineCode::NotAllowed),
            Refusal::GroupFull => Some(DeclineCode::GroupFull),
            Refusal::NotInvited => Some(DeclineCode::NotInvited),
            Refusal::CallIdInUse | Refusal::TooManyRequests { .. } => None,
        }
    }

    /// The message the caller is sent.
    pub fn message(self) -> String {
        match self {
            Refusal::CallIdInUse => "that call ID is in use".into(),
            Refusal::TooManyRequests { retry_after } => {
                format!("too many call requests; try again in {} s", retry_after.as_millis().div_ceil(1000).max(1))
            }
            Refusal::Blocked => "this device does not take your calls".into(),
            Refusal::DoNotDisturb => "do not disturb".into(),
            Refusal::NotAllowed => "this device takes calls only from devices it knows".into(),
            Refusal::GroupFull => format!("the call would have more than {MAX_PARTICIPANTS} participants"),
            Refusal::NotInvited => "nobody in that call invited you".into(),
        }
    }
}

/// Whose call requests are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Requester {
    Peer(DeviceId),
    Source(Source),
}

#[derive(Debug, Clone)]
struct Leg {
    peer: Option<DeviceId>,
    /// Where an incoming call's request came from.
    source: Option<Source>,
    /// An incoming call the user (or auto-answer) answered, before its state
    /// says so: no other call may ring from then on.
    answering: bool,
    direction: Direction,
    state: State,
    /// The group call it is a leg of.
    group: Option<CallId>,
    /// An invitation to a group call, not yet answered and joined to the
    /// participants it named.
    invitation: bool,
    /// It was answered once (its peer was in the call).
    was_answered: bool,
    /// It rang while another call was live (call waiting).
    waiting: bool,
}

impl Leg {
    fn new(peer: Option<DeviceId>, direction: Direction, group: Option<CallId>) -> Leg {
        let state = match direction {
            Direction::Outgoing => State::Outgoing,
            Direction::Incoming => State::Incoming,
        };
        Leg {
            peer,
            source: None,
            answering: false,
            direction,
            state,
            group,
            invitation: false,
            was_answered: false,
            waiting: false,
        }
    }

    fn live(&self) -> bool {
        self.state != State::Ended
    }

    fn answered(&self) -> bool {
        matches!(self.state, State::Connecting | State::Active | State::OnHold | State::Reconnecting)
    }
}

/// The policy's state: the calls whose tasks are running, recent glare yields
/// and recent call requests.
#[derive(Debug)]
pub struct Switchboard {
    own_id: DeviceId,
    policy: Policy,
    calls: BTreeMap<CallId, Leg>,
    /// Peers whose calls ours yielded to, and when.
    yielded: HashMap<DeviceId, Instant>,
    /// Recent call requests by peer and by source address.
    requests: HashMap<Requester, VecDeque<Instant>>,
    /// For each group call: the devices its participants introduced, who may
    /// join it here without ringing.
    introduced: HashMap<CallId, BTreeSet<DeviceId>>,
    /// Joins to a group call we are in that we refused because nobody had
    /// introduced the joiner yet: we call it once someone does.
    refused_joins: BTreeSet<(CallId, DeviceId)>,
}

impl Switchboard {
    /// A switchboard for the device `own_id`.
    pub fn new(own_id: DeviceId, policy: Policy) -> Self {
        Switchboard {
            own_id,
            policy,
            calls: BTreeMap::new(),
            yielded: HashMap::new(),
            requests: HashMap::new(),
            introduced: HashMap::new(),
            refused_joins: BTreeSet::new(),
        }
    }

    /// Changes the settings (a reload); calls already live are not affected.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// The settings.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Calls not yet over.
    pub fn live_calls(&self) -> usize {
        self.calls.values().filter(|leg| leg.state != State::Ended).count()
    }

    /// The call a command is for: the named one, or the only live one.
    pub fn pick(&self, call: Option<&CallId>) -> Result<CallId, CallError> {
        if let Some(id) = call {
            return if self.calls.contains_key(id) {
                Ok(id.clone())
            } else {
                Err(CallError::NoSuchCall(id.to_string()))
            };
        }
        let live: Vec<(&CallId, &Leg)> = self.calls.iter().filter(|(_, leg)| leg.live()).collect();
        // The legs of one group call are one call to the user: an answered
        // one stands for it.
        if let Some((first, leg)) = live.first()
            && leg.group.is_some()
            && live.iter().all(|(_, other)| other.group == leg.group)
        {
            let answered = live.iter().find(|(_, leg)| leg.answered()).map_or(*first, |(id, _)| *id);
            return Ok(answered.clone());
        }
        let mut live = live.into_iter().map(|(id, _)| id);
        match (live.next(), live.count()) {
            (None, _) => Err(CallError::NoCall),
            (Some(only), 0) => Ok(only.clone()),
            (Some(_), others) => Err(CallError::WhichCall(others + 1)),
        }
    }

    /// The user dials `peer` (`None`: an address whose device is not known yet);
    /// `new_id` is the ID the call gets if one is placed.
    pub fn dial(&mut self, peer: Option<DeviceId>, new_id: CallId) -> Result<Dial, CallError> {
        let ringing_from_them = peer.and_then(|peer| {
            self.calls
                .iter()
                .find(|(_, leg)| leg.peer == Some(peer) && leg.state == State::Incoming)
                .map(|(id, _)| id.clone())
        });
        if let Some(theirs) = ringing_from_them {
            return Ok(Dial::AnswerTheirs(theirs));
        }
        if self.live_calls() > 0 {
            return Err(CallError::Busy);
        }
        self.calls.insert(new_id.clone(), Leg::new(peer, Direction::Outgoing, None));
        Ok(Dial::Place(new_id))
    }

    /// The group call `call` belongs to, if it is a leg of one.
    pub fn group_of(&self, call: &CallId) -> Option<&CallId> {
        self.calls.get(call)?.group.as_ref()
    }

    /// The live legs of `group`, with their peers.
    fn legs_of<'a>(&'a self, group: &'a CallId) -> impl Iterator<Item = (&'a CallId, &'a Leg)> + 'a {
        self.calls.iter().filter(move |(_, leg)| leg.live() && leg.group.as_ref() == Some(group))
    }

    /// The calls a command for `call` goes to: every live leg of its group
    /// call, or just `call`.
    pub fn legs_with(&self, call: &CallId) -> Vec<CallId> {
        match self.group_of(call) {
            Some(group) => self.legs_of(group).map(|(id, _)| id.clone()).collect(),
            None => vec![call.clone()],
        }
    }

    /// The live legs of the group call `group`.
    pub fn group_legs(&self, group: &CallId) -> Vec<CallId> {
        self.legs_of(group).map(|(id, _)| id.clone()).collect()
    }

    /// The peer of a call, once known.
    pub fn peer_of(&self, call: &CallId) -> Option<DeviceId> {
        self.calls.get(call)?.peer
    }

    /// The peers of the group's live legs: who we are in the call with, or
    /// are inviting or joining.
    pub fn participants(&self, group: &CallId) -> Vec<DeviceId> {
        self.legs_of(group)
            .filter(|(_, leg)| leg.answered() || leg.direction == Direction::Outgoing)
            .filter_map(|(_, leg)| leg.peer)
            .collect()
    }

    /// Whether `peer` is only invited to `group` (our invitation or join to
    /// it not answered yet): it is named as such, so that nobody calls it
    /// before it is in the call.
    pub fn invited(&self, group: &CallId, peer: DeviceId) -> bool {
        self.legs_of(group).any(|(_, leg)| leg.peer == Some(peer) && !leg.answered())
    }

    /// The user adds `peer` to the answered call `call` (which becomes a group
    /// call if it is not one yet); `new_id` is the invitation's ID. Returns the
    /// group call's ID.
    pub fn add(&mut self, call: &CallId, peer: DeviceId, new_id: CallId) -> Result<CallId, CallError> {
        let leg = self.calls.get(call).ok_or_else(|| CallError::NoSuchCall(call.to_string()))?;
        let answered = match &leg.group {
            Some(group) => self.legs_of(group).any(|(_, leg)| leg.answered()),
            None => leg.answered(),
        };
        if !answered {
            return Err(CallError::NotAnswered);
        }
        let (group, was_group) = match &leg.group {
            Some(group) => (group.clone(), true),
            None => (call.clone(), false),
        };
        self.set_group(call, Some(group.clone()));
        match self.new_leg(&group, peer, new_id) {
            Ok(()) => Ok(group),
            Err(error) => {
                if !was_group {
                    self.set_group(call, None);
                }
                Err(error)
            }
        }
    }

    fn set_group(&mut self, call: &CallId, group: Option<CallId>) {
        if let Some(leg) = self.calls.get_mut(call) {
            leg.group = group;
        }
    }

    /// A participant to join once our invitation is answered: `new_id` is the
    /// leg's ID.
    pub fn join(&mut self, group: &CallId, peer: DeviceId, new_id: CallId) -> Result<(), CallError> {
        self.new_leg(group, peer, new_id)
    }

    fn new_leg(&mut self, group: &CallId, peer: DeviceId, new_id: CallId) -> Result<(), CallError> {
        if peer == self.own_id || self.legs_of(group).any(|(_, leg)| leg.peer == Some(peer)) {
            return Err(CallError::AlreadyInCall(peer.short()));
        }
        if 1 + self.legs_of(group).count() >= MAX_PARTICIPANTS {
            return Err(CallError::GroupFull);
        }
        self.calls.insert(new_id, Leg::new(Some(peer), Direction::Outgoing, Some(group.clone())));
        Ok(())
    }

    /// The peer of our call `call` named who else is in (or invited to) the
    /// group call `group`: they may join here. The first time, this makes
    /// `call` a leg of that group (the peer added someone to our call).
    /// Ignored for a call we do not have, or one of another group.
    ///
    /// Returns those of them to join now. Two participants who were each
    /// invited before the other joined the call learn of each other only this
    /// way, and one of them must call: the lower device ID does, or the other
    /// if it already tried and was refused because this introduction had not
    /// reached us yet.
    ///
    /// `participants` are the device IDs, each with whether it is only invited
    /// (not called until it is in the call). Only an answered call's peer can
    /// introduce anyone.
    pub fn introduce(
        &mut self,
        call: &CallId,
        group: &CallId,
        participants: impl IntoIterator<Item = (DeviceId, bool)>,
    ) -> Vec<DeviceId> {
        let Some(leg) = self.calls.get_mut(call).filter(|leg| leg.answered()) else { return Vec::new() };
        match &leg.group {
            None => leg.group = Some(group.clone()),
            Some(ours) if ours == group => {}
            Some(_) => return Vec::new(),
        }
        let own_id = self.own_id;
        let participants: Vec<(DeviceId, bool)> = participants.into_iter().filter(|(p, _)| *p != own_id).collect();
        self.introduced.entry(group.clone()).or_default().extend(participants.iter().map(|(p, _)| *p));
        let named: BTreeSet<DeviceId> =
            participants.into_iter().filter(|(_, invited)| !invited).map(|(p, _)| p).collect();
        // Still ringing here: the answer's joins take them all.
        if !self.legs_of(group).any(|(_, leg)| leg.answered()) {
            return Vec::new();
        }
        let with: BTreeSet<DeviceId> = self.participants(group).into_iter().collect();
        named
            .into_iter()
            .filter(|device| !with.contains(device))
            .filter(|device| own_id < *device || self.refused_joins.remove(&(group.clone(), *device)))
            .collect()
    }

    /// Once an invitation to a group call is answered here: the group, and the
    /// participants it named that we have no leg with yet, to join. Empty
    /// before the answer and after the first time.
    pub fn joins_due(&mut self, call: &CallId) -> Option<(CallId, Vec<DeviceId>)> {
        let leg = self.calls.get_mut(call)?;
        if !leg.invitation || !leg.answered() {
            return None;
        }
        leg.invitation = false;
        let group = leg.group.clone()?;
        let inviter = leg.peer;
        let with: BTreeSet<DeviceId> = self.participants(&group).into_iter().collect();
        let named = self.introduced.get(&group).into_iter().flatten();
        let due = named.filter(|p| Some(**p) != inviter && !with.contains(p)).copied().collect();
        Some((group, due))
    }

    /// Other invitations to the same group call ringing here beside `call`:
    /// one answer answers them all.
    pub fn same_invitation(&self, call: &CallId) -> Vec<CallId> {
        let Some(group) = self.group_of(call) else { return Vec::new() };
        self.legs_of(group)
            .filter(|(id, leg)| *id != call && leg.invitation && leg.state == State::Incoming && !leg.answering)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// A call request from `peer` arrived from `source` on a new, authenticated
    /// connection.
    pub fn incoming(
        &mut self,
        call: CallId,
        peer: DeviceId,
        source: Source,
        standing: PeerStanding,
        group: Option<&GroupPart>,
        now: Instant,
    ) -> Incoming {
        if self.calls.contains_key(&call) {
            return Incoming::Refuse(Refusal::CallIdInUse);
        }
        // The rate limits first: a refused caller that keeps trying is refused
        // without another history row each time.
        let limits = [
            (Requester::Peer(peer), self.policy.requests_per_peer),
            (Requester::Source(source), self.policy.requests_per_source),
        ];
        for (requester, limit) in limits {
            if let Some(retry_after) = self.over_limit(requester, limit, now) {
                return Incoming::Refuse(Refusal::TooManyRequests { retry_after });
            }
        }
        for (requester, _) in limits {
            self.requests.entry(requester).or_default().push_back(now);
        }

        let blocked = standing == PeerStanding::Known(Standing::Blocked);
        let trusted = standing == PeerStanding::Known(Standing::Trusted);
        if let Some(group) = group {
            if blocked {
                return Incoming::Refuse(Refusal::Blocked);
            }
            // A join, or an invitation to a group call we are in already
            // (two participants invited us at once, and we answered the
            // other): a leg of the call, not a call that rings.
            if group.join || self.legs_of(&group.id).any(|(_, leg)| leg.answered()) {
                return self.join_request(call, peer, source, &group.id);
            }
            // The inviter, those it names, and us.
            if group.participants.len() + 2 > MAX_PARTICIPANTS {
                return Incoming::Refuse(Refusal::GroupFull);
            }
        }
        // Our own call to them, still ringing or just yielded to theirs: they may
        // answer it with theirs (glare), whoever may ring otherwise.
        let we_call_them = self
            .calls
            .values()
            .any(|leg| leg.peer == Some(peer) && leg.direction == Direction::Outgoing && leg.state == State::Outgoing)
            || self.yielded.get(&peer).is_some_and(|at| now.saturating_duration_since(*at) < self.policy.glare_window);
        let refusal = match (self.policy.who_may_ring, standing) {
            _ if blocked => Some(Refusal::Blocked),
            _ if we_call_them => None,
            (WhoMayRing::Nobody, _) => Some(Refusal::DoNotDisturb),
            (WhoMayRing::Known, PeerStanding::Unknown) => Some(Refusal::NotAllowed),
            (WhoMayRing::Trusted, _) if !trusted => Some(Refusal::NotAllowed),
            _ => None,
        };
        if let Some(refusal) = refusal {
            return Incoming::Refuse(refusal);
        }

        let mut answer = match self.policy.auto_answer {
            AutoAnswer::Off => false,
            AutoAnswer::Trusted => trusted,
            AutoAnswer::Everyone => true,
        };
        // Ours, set aside for theirs (glare) and hung up once theirs rings; put
        // back if theirs cannot ring after all.
        let mut replaced = None;
        let ours_ringing = self
            .calls
            .iter()
            .find(|(_, leg)| leg.peer == Some(peer) && leg.direction == Direction::Outgoing)
            .filter(|(_, leg)| leg.state == State::Outgoing)
            .map(|(id, _)| id.clone());
        let recently_yielded =
            self.yielded.remove(&peer).is_some_and(|at| now.saturating_duration_since(at) < self.policy.glare_window);
        match (resolve_glare(&self.own_id, &peer), ours_ringing) {
            (Glare::KeepOurs, Some(_)) => return Incoming::Glare,
            (Glare::TakeTheirs, Some(ours)) => {
                // Ours no longer counts: it is being hung up.
                replaced = self.calls.remove(&ours).map(|leg| (ours, leg));
                answer = true;
            }
            // Ours already yielded to this call (the peer told us first).
            (Glare::TakeTheirs, None) if recently_yielded => answer = true,
            _ => {}
        }
        // A second invitation to a group call that rings here rings along
        // with the first (answered with it); anything else must fit beside
        // what is live.
        let same_invitation = group
            .and_then(|group| self.legs_of(&group.id).find(|(_, leg)| leg.invitation).map(|(_, leg)| leg.answering));
        let named = group.is_some_and(|g| self.introduced.get(&g.id).is_some_and(|named| named.contains(&peer)));
        let mut waiting = false;
        let refused = match same_invitation {
            // Only from someone the first invitation named: a group ID alone
            // is no ticket into the call.
            Some(_) if !named => Some(Incoming::Refuse(Refusal::NotInvited)),
            Some(answering) => {
                answer |= answering;
                None
            }
            None if self.may_ring_too(source) => None,
            // Nobody barges into a call: a waiting call is answered by a person.
            None if group.is_none() && replaced.is_none() && self.may_wait() => {
                (waiting, answer) = (true, false);
                None
            }
            None => Some(Incoming::Busy),
        };
        if let Some(refused) = refused {
            // Theirs cannot ring here (we are adding them to a call in
            // progress, say): ours goes on, and is not hung up.
            if let Some((ours, leg)) = replaced {
                self.calls.insert(ours, leg);
            }
            return refused;
        }
        let mut leg = Leg::new(Some(peer), Direction::Incoming, group.map(|g| g.id.clone()));
        leg.source = Some(source);
        leg.answering = answer;
        leg.invitation = group.is_some();
        leg.waiting = waiting;
        if let Some(group) = group {
            let own_id = self.own_id;
            let named = group.participants.iter().map(|p| p.device_id).filter(|p| *p != own_id && *p != peer);
            self.introduced.entry(group.id.clone()).or_default().extend(named);
        }
        self.calls.insert(call, leg);
        Incoming::Ring { answer, hang_up: replaced.map(|(ours, _)| ours), waiting }
    }

    /// A participant of `group` joins: answered at once if a participant
    /// introduced it. Two joiners that dial each other at once settle it like
    /// glare.
    fn join_request(&mut self, call: CallId, peer: DeviceId, source: Source, group: &CallId) -> Incoming {
        let in_the_call = self.legs_of(group).any(|(_, leg)| leg.answered());
        let introduced = self.introduced.get(group).is_some_and(|devices| devices.contains(&peer));
        if !in_the_call || !introduced {
            // Its introduction may be on its way (participants tell everyone
            // at once): remembered, so that it is called back when it comes.
            if in_the_call && self.refused_joins.len() < MAX_REFUSED_JOINS {
                self.refused_joins.insert((group.clone(), peer));
            }
            return Incoming::Refuse(Refusal::NotInvited);
        }
        let mut hang_up = None;
        let ours = self
            .legs_of(group)
            .find(|(_, leg)| leg.peer == Some(peer))
            .map(|(id, leg)| (id.clone(), leg.direction == Direction::Outgoing && leg.state == State::Outgoing));
        match ours {
            Some((ours, true)) => match resolve_glare(&self.own_id, &peer) {
                Glare::KeepOurs => return Incoming::Glare,
                Glare::TakeTheirs => {
                    self.calls.remove(&ours);
                    hang_up = Some(ours);
                }
            },
            Some((_, false)) => return Incoming::Refuse(Refusal::CallIdInUse),
            None if 1 + self.legs_of(group).count() >= MAX_PARTICIPANTS => {
                return Incoming::Refuse(Refusal::GroupFull);
            }
            None => {}
        }
        let mut leg = Leg::new(Some(peer), Direction::Incoming, Some(group.clone()));
        leg.source = Some(source);
        leg.answering = true;
        self.calls.insert(call, leg);
        Incoming::Ring { answer: true, hang_up, waiting: false }
    }

    /// The user answers `call` (a command, or a dial to the peer ringing us):
    /// from now on nothing else rings. Returns the calls ringing beside it, to
    /// decline ([`ANSWERED_ANOTHER_CALL`]).
    pub fn answering(&mut self, call: &CallId) -> Vec<CallId> {
        let Some(leg) = self.calls.get_mut(call) else { return Vec::new() };
        if leg.direction != Direction::Incoming || leg.state != State::Incoming {
            return Vec::new();
        }
        leg.answering = true;
        self.ringing_beside(call)
    }

    /// Whether another incoming call rings here beside `call` (only the first
    /// of calls ringing together plays the ringtone).
    pub fn rings_beside(&self, call: &CallId) -> bool {
        !self.ringing_beside(call).is_empty()
    }

    /// Incoming calls still ringing here, other than `call`.
    fn ringing_beside(&self, call: &CallId) -> Vec<CallId> {
        self.calls
            .iter()
            .filter(|(id, leg)| {
                *id != call
                    && leg.direction == Direction::Incoming
                    && leg.state == State::Incoming
                    && !leg.answering
                    && (leg.group.is_none() || leg.group.as_ref() != self.group_of(call))
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether a call from `source` may ring now: nothing is live, or only calls
    /// ringing here, fewer than the limit, none from that address.
    fn may_ring_too(&self, source: Source) -> bool {
        let live: Vec<&Leg> = self.calls.values().filter(|leg| leg.state != State::Ended).collect();
        live.iter().all(|leg| leg.direction == Direction::Incoming && leg.state == State::Incoming && !leg.answering)
            && live.len() < self.policy.max_ringing.max(1)
            && live.iter().all(|leg| leg.source != Some(source))
    }

    /// Whether a call may wait beside those live: call waiting is on, one
    /// call (two-party or group) is answered, no other is held beside it, and
    /// nothing else rings here.
    fn may_wait(&self) -> bool {
        let live: Vec<&Leg> = self.calls.values().filter(|leg| leg.live()).collect();
        let answered: Vec<&Leg> = live.iter().copied().filter(|leg| leg.answered()).collect();
        let one_call = match answered.as_slice() {
            [] => false,
            [_] => true,
            [first, rest @ ..] => first.group.is_some() && rest.iter().all(|leg| leg.group == first.group),
        };
        self.policy.call_waiting
            && one_call
            && !live.iter().any(|leg| leg.direction == Direction::Incoming && leg.state == State::Incoming)
    }

    /// The user answers `call`: if it is waiting, `merge` joins it to the
    /// call in progress (one not on hold if there is one), and otherwise the
    /// calls answered beside it are held. `None` for a call that is not
    /// waiting (an ordinary answer); merging one is refused.
    pub fn answer_waiting(&mut self, call: &CallId, merge: bool) -> Result<Option<WaitingAnswer>, CallError> {
        let waiting = self.calls.get(call).filter(|leg| leg.waiting && leg.state == State::Incoming);
        let Some(peer) = waiting.map(|leg| leg.peer) else {
            return if merge { Err(CallError::NothingToMerge) } else { Ok(None) };
        };
        let beside = self.answered_beside(call);
        if !merge {
            return Ok(Some(WaitingAnswer::Hold(beside)));
        }
        let active = beside.iter().find(|id| self.calls.get(*id).is_some_and(|leg| leg.state == State::Active));
        let into = active.or(beside.first()).cloned().ok_or(CallError::NothingToMerge)?;
        let group = self.group_of(&into).cloned().unwrap_or_else(|| into.clone());
        if let Some(peer) = peer.filter(|peer| self.legs_with(&into).iter().any(|leg| self.peer_of(leg) == Some(*peer)))
        {
            return Err(CallError::AlreadyInCall(peer.short()));
        }
        if 2 + self.legs_with(&into).len() > MAX_PARTICIPANTS {
            return Err(CallError::GroupFull);
        }
        self.set_group(&into, Some(group.clone()));
        self.set_group(call, Some(group.clone()));
        let legs = self.group_legs(&group);
        Ok(Some(WaitingAnswer::Merge { group, legs }))
    }

    /// The answered calls live beside `call` (and its group call's legs):
    /// those to hold when it is answered or resumed, so that one
    /// conversation is heard at a time.
    pub fn answered_beside(&self, call: &CallId) -> Vec<CallId> {
        let ours = self.legs_with(call);
        self.calls
            .iter()
            .filter(|(id, leg)| leg.live() && leg.answered() && !ours.contains(id))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The call an answer or decline is for: the named one, or the only call
    /// ringing here (beside a call in progress, say).
    pub fn pick_ringing(&self, call: Option<&CallId>) -> Result<CallId, CallError> {
        let mut ringing = self
            .calls
            .iter()
            .filter(|(_, leg)| leg.direction == Direction::Incoming && leg.state == State::Incoming && !leg.answering);
        match (call, ringing.next(), ringing.next()) {
            (None, Some((only, _)), None) => Ok(only.clone()),
            _ => self.pick(call),
        }
    }

    /// When `requester` may try again, if it has used up its `limit`.
    fn over_limit(&mut self, requester: Requester, limit: usize, now: Instant) -> Option<Duration> {
        let window = self.policy.request_window;
        let recent = self.requests.get_mut(&requester)?;
        while recent.front().is_some_and(|at| now.saturating_duration_since(*at) >= window) {
            recent.pop_front();
        }
        let oldest = *recent.front()?;
        (recent.len() >= limit).then(|| window.saturating_sub(now.saturating_duration_since(oldest)))
    }

    /// The peer told our call `call` to yield to its own (glare). Returns the call
    /// to end, if it may yield: only our own call to that peer, still ringing
    /// (anything else would let a caller make us answer by ourselves).
    pub fn yielded(&mut self, peer: DeviceId, call: &CallId, now: Instant) -> Option<CallId> {
        let leg = self.calls.get(call)?;
        let ours = leg.direction == Direction::Outgoing && leg.state == State::Outgoing && leg.peer == Some(peer);
        if !ours {
            return None;
        }
        // Noted before the call ends: the peer's request that comes later finds it,
        // one that came earlier found our call still ringing.
        self.yielded.insert(peer, now);
        Some(call.clone())
    }

    /// A call reached a new state (and, once connected, its peer is known).
    /// Returns the calls to decline: those still ringing here when this one
    /// was answered, if [`Switchboard::answering`] did not already.
    pub fn state_changed(&mut self, call: &CallId, state: State, peer: Option<DeviceId>) -> Vec<CallId> {
        let Some(leg) = self.calls.get_mut(call) else { return Vec::new() };
        let answered_here = leg.direction == Direction::Incoming
            && leg.state == State::Incoming
            && matches!(state, State::Connecting | State::Active | State::OnHold);
        leg.state = state;
        leg.was_answered |= leg.answered();
        if leg.peer.is_none() {
            leg.peer = peer;
        }
        // An answered request no longer counts against its caller.
        if answered_here {
            let requesters = [leg.peer.map(Requester::Peer), leg.source.map(Requester::Source)];
            for requester in requesters.into_iter().flatten() {
                if let Some(recent) = self.requests.get_mut(&requester) {
                    recent.pop_back();
                }
            }
            // Those beside it were declined when it was answered, unless the
            // answer did not pass through `answering`.
            if !self.calls.get(call).is_some_and(|leg| leg.answering) {
                return self.ringing_beside(call);
            }
        }
        Vec::new()
    }

    /// A call's task finished.
    pub fn finished(&mut self, call: &CallId) {
        let leg = self.calls.remove(call);
        // Whoever leaves must be introduced again to return (a join that
        // failed leaves its introduction: the other side may call back).
        if let Some(Leg { group: Some(group), peer: Some(peer), was_answered: true, .. }) = &leg
            && let Some(named) = self.introduced.get_mut(group)
        {
            named.remove(peer);
        }
        let group = leg.and_then(|leg| leg.group);
        if let Some(group) = group
            && !self.calls.values().any(|leg| leg.group.as_ref() == Some(&group))
        {
            self.introduced.remove(&group);
            self.refused_joins.retain(|(refused, _)| *refused != group);
        }
    }

    /// Forgets glare and rate-limit records older than their windows, so a
    /// long-running daemon does not keep every peer it ever heard from.
    pub fn expire(&mut self, now: Instant) {
        let (glare, window) = (self.policy.glare_window, self.policy.request_window);
        self.yielded.retain(|_, at| now.saturating_duration_since(*at) < glare);
        self.requests.retain(|_, recent| recent.back().is_some_and(|at| now.saturating_duration_since(*at) < window));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(byte: u8) -> DeviceId {
        DeviceId::from_hash([byte; 32])
    }

    fn call(name: &str) -> CallId {
        CallId::try_from(name.to_owned()).unwrap()
    }

    /// The address of the device `id(byte)`.
    fn from(byte: u8) -> Source {
        Source::of(std::net::IpAddr::from([10, 0, 0, byte]))
    }

    const LOW: u8 = 1;
    const HIGH: u8 = 9;

    #[test]
    fn one_call_at_a_time() {
        let now = Instant::now();
        let mut board = Switchboard::new(id(LOW), Policy::default());
        assert_eq!(board.dial(Some(id(2)), call("a")), Ok(Dial::Place(call("a"))));
        assert_eq!(board.dial(Some(id(3)), call("b")), Err(CallError::Busy));
        assert_eq!(board.incoming(call("c"), id(3), from(3), PeerStanding::Unknown, None, now), Incoming::Busy);
        // Over but its task not yet finished: no longer counts.
        board.state_changed(&call("a"), State::Ended, None);
        assert_eq!(
            board.incoming(call("c"), id(3), from(3), PeerStanding::Unknown, None, now),
            Incoming::Ring { answer: false, hang_up: None, waiting: false }
        );
        assert_eq!(board.pick(None), Ok(call("c")));
    }

    #[test]
    fn a_ringing_caller_keeps_nobody_else_out_and_answering_one_declines_the_rest() {
        let now = Instant::now();
        let policy = Policy { max_ringing: 3, ..Policy::default() };
        let mut board = Switchboard::new(id(LOW), policy);
        let ring = |board: &mut Switchboard, name: &str, who: u8, source: u8| {
            board.incoming(call(name), id(who), from(source), PeerStanding::Unknown, None, now)
        };
        let rings = Incoming::Ring { answer: false, hang_up: None, waiting: false };
        assert_eq!(ring(&mut board, "hostile", 66, 66), rings);
        assert_eq!(ring(&mut board, "again", 67, 66), Incoming::Busy, "one ringing call per address");
        assert_eq!(ring(&mut board, "alice", 2, 2), rings, "another address rings too");
        assert_eq!(ring(&mut board, "carol", 3, 3), rings);
        assert_eq!(ring(&mut board, "dave", 4, 4), Incoming::Busy, "at most max_ringing at once");
        assert_eq!(board.pick(None), Err(CallError::WhichCall(3)));
        assert_eq!(board.dial(Some(id(5)), call("out")), Err(CallError::Busy));

        // Answered: the others are declined at once, and nothing else rings
        // while the answer is on its way.
        let mut declined = board.answering(&call("alice"));
        declined.sort();
        assert_eq!(declined, [call("carol"), call("hostile")]);
        assert_eq!(ring(&mut board, "erin", 5, 5), Incoming::Busy, "answering: busy");
        assert_eq!(board.state_changed(&call("alice"), State::Connecting, None), Vec::<CallId>::new());
        assert_eq!(ring(&mut board, "frank", 6, 6), Incoming::Busy, "in a call: busy as ever");
    }

    #[test]
    fn an_auto_answered_call_keeps_the_next_caller_out() {
        let now = Instant::now();
        let policy = Policy { auto_answer: AutoAnswer::Everyone, ..Policy::default() };
        let mut board = Switchboard::new(id(LOW), policy);
        let first = board.incoming(call("a"), id(2), from(2), PeerStanding::Unknown, None, now);
        assert_eq!(first, Incoming::Ring { answer: true, hang_up: None, waiting: false });
        assert_eq!(board.incoming(call("b"), id(3), from(3), PeerStanding::Unknown, None, now), Incoming::Busy);
    }

    #[test]
    fn dialing_someone_who_rings_us_answers_them() {
        let now = Instant::now();
        let mut board = Switchboard::new(id(LOW), Policy::default());
        board.incoming(call("theirs"), id(2), from(2), PeerStanding::Unknown, None, now);
        assert_eq!(board.dial(Some(id(2)), call("ours")), Ok(Dial::AnswerTheirs(call("theirs"))));
        assert_eq!(board.dial(Some(id(3)), call("ours")), Err(CallError::Busy));
    }

    #[test]
    fn glare_keeps_the_lower_ids_call_on_both_sides() {
        let now = Instant::now();
        // The low side keeps its own call and tells the other to yield.
        let mut low = Switchboard::new(id(LOW), Policy::default());
        low.dial(Some(id(HIGH)), call("from-low")).unwrap();
        assert_eq!(
            low.incoming(call("from-high"), id(HIGH), from(HIGH), PeerStanding::Unknown, None, now),
            Incoming::Glare
        );
        // The high side hangs its own up and answers the low side's at once.
        let mut high = Switchboard::new(id(HIGH), Policy::default());
        high.dial(Some(id(LOW)), call("from-high")).unwrap();
        assert_eq!(
            high.incoming(call("from-low"), id(LOW), from(LOW), PeerStanding::Unknown, None, now),
            Incoming::Ring { answer: true, hang_up: Some(call("from-high")), waiting: false }
        );
        assert_eq!(high.pick(None), Ok(call("from-low")));
    }

    #[test]
    fn glare_with_someone_we_are_adding_to_a_call_keeps_our_invitation_and_they_hear_busy() {
        let now = Instant::now();
        // HIGH talks with 2 and adds LOW, who dials HIGH at the same moment.
        let mut high = Switchboard::new(id(HIGH), Policy::default());
        high.incoming(call("ab"), id(2), from(2), PeerStanding::Unknown, None, now);
        high.answering(&call("ab"));
        high.state_changed(&call("ab"), State::Active, Some(id(2)));
        high.add(&call("ab"), id(LOW), call("invite")).unwrap();
        // LOW's call would win the glare, but it cannot ring beside the call.
        let theirs = high.incoming(call("theirs"), id(LOW), from(LOW), PeerStanding::Unknown, None, now);
        assert_eq!(theirs, Incoming::Busy);
        assert_eq!(high.group_of(&call("invite")), Some(&call("ab")), "our invitation still counts");
        assert!(high.invited(&call("ab"), id(LOW)));
    }

    #[test]
    fn a_call_that_yielded_first_lets_the_twin_be_answered_within_the_window() {
        let now = Instant::now();
        let mut high = Switchboard::new(id(HIGH), Policy::default());
        high.dial(Some(id(LOW)), call("from-high")).unwrap();
        assert_eq!(high.yielded(id(LOW), &call("from-high"), now), Some(call("from-high")));
        high.state_changed(&call("from-high"), State::Ended, None);
        assert_eq!(
            high.incoming(
                call("from-low"),
                id(LOW),
                from(LOW),
                PeerStanding::Unknown,
                None,
                now + Duration::from_secs(1)
            ),
            Incoming::Ring { answer: true, hang_up: None, waiting: false }
        );
        // After the window, a call from the same peer just rings.
        let mut late = Switchboard::new(id(HIGH), Policy::default());
        late.dial(Some(id(LOW)), call("x")).unwrap();
        late.yielded(id(LOW), &call("x"), now);
        late.finished(&call("x"));
        assert_eq!(
            late.incoming(call("y"), id(LOW), from(LOW), PeerStanding::Unknown, None, now + Duration::from_secs(10)),
            Incoming::Ring { answer: false, hang_up: None, waiting: false }
        );
    }

    #[test]
    fn only_our_own_ringing_call_to_that_peer_may_yield() {
        let now = Instant::now();
        let mut board = Switchboard::new(id(HIGH), Policy::default());
        board.incoming(call("theirs"), id(LOW), from(LOW), PeerStanding::Unknown, None, now);
        assert_eq!(board.yielded(id(LOW), &call("theirs"), now), None, "an incoming call cannot yield");
        let mut board = Switchboard::new(id(HIGH), Policy::default());
        board.dial(Some(id(LOW)), call("ours")).unwrap();
        assert_eq!(board.yielded(id(3), &call("ours"), now), None, "another peer cannot make it yield");
        board.state_changed(&call("ours"), State::Connecting, None);
        assert_eq!(board.yielded(id(LOW), &call("ours"), now), None, "an answered call cannot yield");
    }

    #[test]
    fn a_peer_is_rate_limited_over_a_sliding_window() {
        let start = Instant::now();
        let policy = Policy { requests_per_peer: 3, request_window: Duration::from_secs(60), ..Policy::default() };
        let mut board = Switchboard::new(id(LOW), policy);
        for (n, at) in [0u64, 10, 20].into_iter().enumerate() {
            let now = start + Duration::from_secs(at);
            assert!(matches!(
                board.incoming(call(&format!("c{n}")), id(2), from(2), PeerStanding::Unknown, None, now),
                Incoming::Ring { .. }
            ));
            board.finished(&call(&format!("c{n}")));
        }
        let now = start + Duration::from_secs(59);
        let refused = board.incoming(call("c3"), id(2), from(2), PeerStanding::Unknown, None, now);
        let retry_after = Duration::from_secs(1);
        assert_eq!(refused, Incoming::Refuse(Refusal::TooManyRequests { retry_after }), "the oldest leaves in 1 s");
        assert_eq!(Refusal::TooManyRequests { retry_after }.message(), "too many call requests; try again in 1 s");
        assert!(
            matches!(
                board.incoming(call("c4"), id(3), from(3), PeerStanding::Unknown, None, now),
                Incoming::Ring { .. }
            ),
            "other peers are not limited"
        );
        board.finished(&call("c4"));
        // The first request left the window.
        let now = start + Duration::from_secs(60);
        assert!(matches!(
            board.incoming(call("c5"), id(2), from(2), PeerStanding::Unknown, None, now),
            Incoming::Ring { .. }
        ));
    }

    #[test]
    fn answered_requests_do_not_count_against_the_caller() {
        let start = Instant::now();
        let policy = Policy { requests_per_peer: 2, ..Policy::default() };
        let mut board = Switchboard::new(id(LOW), policy);
        for n in 0..5 {
            let now = start + Duration::from_secs(n);
            let name = call(&format!("c{n}"));
            assert!(
                matches!(
                    board.incoming(name.clone(), id(2), from(2), PeerStanding::Unknown, None, now),
                    Incoming::Ring { .. }
                ),
                "call {n}"
            );
            board.state_changed(&name, State::Active, None);
            board.finished(&name);
        }
        // Unanswered ones do.
        for n in 5..7 {
            let name = call(&format!("c{n}"));
            assert!(matches!(
                board.incoming(name.clone(), id(2), from(2), PeerStanding::Unknown, None, start),
                Incoming::Ring { .. }
            ));
            board.state_changed(&name, State::Ended, None);
            board.finished(&name);
        }
        assert!(matches!(
            board.incoming(call("c7"), id(2), from(2), PeerStanding::Unknown, None, start),
            Incoming::Refuse(Refusal::TooManyRequests { .. })
        ));
    }

    #[test]
    fn fresh_keys_from_one_address_share_its_limit() {
        let start = Instant::now();
        let policy = Policy { requests_per_peer: 2, requests_per_source: 3, ..Policy::default() };
        let mut board = Switchboard::new(id(LOW), policy);
        let hostile = from(66);
        for n in 0..3u8 {
            let name = call(&format!("c{n}"));
            let decision = board.incoming(name.clone(), id(100 + n), hostile, PeerStanding::Unknown, None, start);
            assert!(matches!(decision, Incoming::Ring { .. }), "key {n}: {decision:?}");
            board.finished(&name);
        }
        let minted = board.incoming(call("c3"), id(200), hostile, PeerStanding::Unknown, None, start);
        assert!(matches!(minted, Incoming::Refuse(Refusal::TooManyRequests { .. })), "{minted:?}");
        let honest = board.incoming(call("c4"), id(3), from(3), PeerStanding::Unknown, None, start);
        assert!(matches!(honest, Incoming::Ring { .. }), "another address is not limited: {honest:?}");
    }

    #[test]
    fn a_reused_call_id_is_refused() {
        let now = Instant::now();
        let mut board = Switchboard::new(id(LOW), Policy::default());
        board.dial(Some(id(2)), call("same")).unwrap();
        assert_eq!(
            board.incoming(call("same"), id(2), from(2), PeerStanding::Unknown, None, now),
            Incoming::Refuse(Refusal::CallIdInUse)
        );
    }

    #[test]
    fn who_may_ring_refuses_with_its_reason_and_a_block_always_holds() {
        let now = Instant::now();
        let known = PeerStanding::Known(Standing::Known);
        let trusted = PeerStanding::Known(Standing::Trusted);
        let blocked = PeerStanding::Known(Standing::Blocked);
        let cases = [
            (WhoMayRing::Everyone, blocked, Some(Refusal::Blocked)),
            (WhoMayRing::Everyone, PeerStanding::Unknown, None),
            (WhoMayRing::Known, PeerStanding::Unknown, Some(Refusal::NotAllowed)),
            (WhoMayRing::Known, known, None),
            (WhoMayRing::Trusted, known, Some(Refusal::NotAllowed)),
            (WhoMayRing::Trusted, trusted, None),
            (WhoMayRing::Nobody, trusted, Some(Refusal::DoNotDisturb)),
            (WhoMayRing::Nobody, blocked, Some(Refusal::Blocked)),
        ];
        for (who_may_ring, standing, refusal) in cases {
            let mut board = Switchboard::new(id(LOW), Policy { who_may_ring, ..Policy::default() });
            let decision = board.incoming(call("c"), id(2), from(2), standing, None, now);
            match refusal {
                Some(refusal) => assert_eq!(decision, Incoming::Refuse(refusal), "{who_may_ring} {standing:?}"),
                None => assert!(matches!(decision, Incoming::Ring { .. }), "{who_may_ring} {standing:?}: {decision:?}"),
            }
            if refusal.is_some() {
                assert_eq!(board.live_calls(), 0, "a refused call is not counted");
            }
        }
    }

    #[test]
    fn do_not_disturb_still_settles_glare_with_someone_we_are_calling() {
        let now = Instant::now();
        let policy = Policy { who_may_ring: WhoMayRing::Nobody, ..Policy::default() };
        let mut high = Switchboard::new(id(HIGH), policy);
        let Ok(Dial::Place(ours)) = high.dial(Some(id(LOW)), call("ours")) else { panic!() };
        assert_eq!(
            high.incoming(call("theirs"), id(LOW), from(LOW), PeerStanding::Unknown, None, now),
            Incoming::Ring { answer: true, hang_up: Some(ours), waiting: false }
        );
    }

    #[test]
    fn do_not_disturb_still_answers_the_twin_of_a_call_that_just_yielded() {
        let now = Instant::now();
        let policy = Policy { who_may_ring: WhoMayRing::Nobody, ..Policy::default() };
        let mut low = Switchboard::new(id(LOW), policy);
        let Ok(Dial::Place(ours)) = low.dial(Some(id(HIGH)), call("ours")) else { panic!() };
        // The high side's glare `end` came first: ours yielded...
        assert_eq!(low.yielded(id(HIGH), &ours, now), Some(ours.clone()));
        low.finished(&ours);
        // ...and its call, the one both people asked for, is answered.
        let theirs = low.incoming(
            call("theirs"),
            id(HIGH),
            from(HIGH),
            PeerStanding::Unknown,
            None,
            now + Duration::from_millis(50),
        );
        assert!(matches!(theirs, Incoming::Ring { .. }), "{theirs:?}");
    }

    #[test]
    fn a_refused_caller_that_keeps_trying_hits_the_rate_limit() {
        let now = Instant::now();
        let mut board = Switchboard::new(id(LOW), Policy::default());
        let blocked = PeerStanding::Known(Standing::Blocked);
        for n in 0..Policy::default().requests_per_peer {
            let decision = board.incoming(call(&format!("c{n}")), id(2), from(2), blocked, None, now);
            assert_eq!(decision, Incoming::Refuse(Refusal::Blocked));
        }
        let flood = board.incoming(call("more"), id(2), from(2), blocked, None, now);
        assert!(matches!(flood, Incoming::Refuse(Refusal::TooManyRequests { .. })), "no history row for each attempt");
    }

    #[test]
    fn auto_answer_can_be_for_trusted_devices_only() {
        let now = Instant::now();
        let policy = Policy { auto_answer: AutoAnswer::Trusted, ..Policy::default() };
        let mut board = Switchboard::new(id(LOW), policy);
        let stranger = board.incoming(call("a"), id(2), from(2), PeerStanding::Unknown, None, now);
        assert_eq!(stranger, Incoming::Ring { answer: false, hang_up: None, waiting: false });
        board.finished(&call("a"));
        let friend = board.incoming(call("b"), id(3), from(3), PeerStanding::Known(Standing::Trusted), None, now);
        assert_eq!(friend, Incoming::Ring { answer: true, hang_up: None, waiting: false });
        assert_eq!("true".parse::<AutoAnswer>(), Ok(AutoAnswer::Everyone), "the old boolean still reads");
        assert!("sometimes".parse::<AutoAnswer>().unwrap_err().contains("off, trusted, everyone"));
    }

    #[test]
    fn auto_answer_answers_what_rings() {
        let now = Instant::now();
        let mut board = Switchboard::new(id(LOW), Policy { auto_answer: AutoAnswer::Everyone, ..Policy::default() });
        assert_eq!(
            board.incoming(call("a"), id(2), from(2), PeerStanding::Unknown, None, now),
            Incoming::Ring { answer: true, hang_up: None, waiting: false }
        );
    }

    #[test]
    fn picking_the_only_call() {
        let now = Instant::now();
        let mut board = Switchboard::new(id(LOW), Policy::default());
        assert_eq!(board.pick(None), Err(CallError::NoCall));
        assert_eq!(board.pick(Some(&call("x"))), Err(CallError::NoSuchCall("x".into())));
        board.incoming(call("a"), id(2), from(2), PeerStanding::Unknown, None, now);
        board.state_changed(&call("a"), State::Ended, None);
        board.incoming(call("b"), id(3), from(3), PeerStanding::Unknown, None, now);
        assert_eq!(board.pick(None), Ok(call("b")), "an ended call is not the only call");
        assert_eq!(board.pick(Some(&call("a"))), Ok(call("a")), "but it can still be named");
    }

    #[test]
    fn old_records_expire() {
        let now = Instant::now();
        let mut board = Switchboard::new(id(HIGH), Policy::default());
        board.dial(Some(id(LOW)), call("ours")).unwrap();
        board.yielded(id(LOW), &call("ours"), now);
        board.finished(&call("ours"));
        board.incoming(call("a"), id(3), from(3), PeerStanding::Unknown, None, now);
        board.finished(&call("a"));
        board.expire(now + Duration::from_secs(61));
        assert!(board.yielded.is_empty() && board.requests.is_empty());
    }

    fn group_part(group: &str, join: bool, named: &[u8]) -> GroupPart {
        let participants = named
            .iter()
            .map(|b| crate::wire::Participant {
                device_id: id(*b),
                name: format!("p{b}"),
                address: None,
                invited: false,
            })
            .collect();
        GroupPart { id: call(group), join, participants }
    }

    /// A board (device 1) in an answered call "ab" with device 2.
    fn in_a_call() -> Switchboard {
        let mut board = Switchboard::new(id(1), Policy::default());
        assert_eq!(board.dial(Some(id(2)), call("ab")), Ok(Dial::Place(call("ab"))));
        board.state_changed(&call("ab"), State::Active, Some(id(2)));
        board
    }

    /// [`in_a_call`] with call waiting on.
    fn waiting_board() -> Switchboard {
        let mut board = in_a_call();
        board.set_policy(Policy { call_waiting: true, auto_answer: AutoAnswer::Everyone, ..Policy::default() });
        board
    }

    fn waits(board: &mut Switchboard, name: &str, peer: u8) -> Incoming {
        board.incoming(call(name), id(peer), from(peer), PeerStanding::Unknown, None, Instant::now())
    }

    #[test]
    fn with_call_waiting_one_call_waits_beside_the_call_in_progress_and_nothing_answers_it_by_itself() {
        let mut board = in_a_call();
        assert_eq!(waits(&mut board, "busy", 3), Incoming::Busy, "call waiting is off by default");
        let mut board = waiting_board();
        let waiting = Incoming::Ring { answer: false, hang_up: None, waiting: true };
        assert_eq!(waits(&mut board, "ac", 3), waiting, "auto-answer never barges into a call");
        assert_eq!(waits(&mut board, "ad", 4), Incoming::Busy, "one waiting call at a time");
        // An answer or decline that names no call is for the one ringing.
        assert_eq!(board.pick_ringing(None), Ok(call("ac")));
        assert_eq!(board.pick(None), Err(CallError::WhichCall(2)));
        assert_eq!(board.dial(Some(id(5)), call("x")), Err(CallError::Busy), "a dial is not call waiting");
        // An invitation to someone's group call does not wait: busy.
        let mut board = waiting_board();
        let invitation = group_part("g", false, &[5]);
        let decision =
            board.incoming(call("g1"), id(4), from(4), PeerStanding::Unknown, Some(&invitation), Instant::now());
        assert_eq!(decision, Incoming::Busy);
        // Nothing answered yet (only ringing or dialing): no waiting either.
        let mut ringing = Switchboard::new(id(1), Policy { call_waiting: true, ..Policy::default() });
        ringing.dial(Some(id(2)), call("out")).unwrap();
        assert_eq!(waits(&mut ringing, "in", 3), Incoming::Busy);
    }

    #[test]
    fn answering_a_waiting_call_holds_the_call_in_progress_and_resuming_that_holds_the_other() {
        let mut board = waiting_board();
        waits(&mut board, "ac", 3);
        assert_eq!(board.answer_waiting(&call("ab"), false), Ok(None), "not a waiting call: an ordinary answer");
        assert_eq!(board.answer_waiting(&call("ab"), true), Err(CallError::NothingToMerge));
        assert_eq!(board.answer_waiting(&call("ac"), false), Ok(Some(WaitingAnswer::Hold(vec![call("ab")]))));
        assert_eq!(board.answering(&call("ac")), Vec::<CallId>::new());
        board.state_changed(&call("ab"), State::OnHold, None);
        board.state_changed(&call("ac"), State::Active, None);
        assert_eq!(board.answered_beside(&call("ab")), [call("ac")], "resuming ab holds ac");
        assert_eq!(board.answered_beside(&call("ac")), [call("ab")]);
        assert_eq!(board.group_of(&call("ac")), None, "two calls, not one");
        // Two calls are live now: a third is busy.
        assert_eq!(waits(&mut board, "ad", 4), Incoming::Busy);
    }

    #[test]
    fn a_merged_waiting_call_joins_the_call_in_progress_as_a_group_call_of_at_most_six() {
        let mut board = waiting_board();
        waits(&mut board, "ac", 3);
        let merged = board.answer_waiting(&call("ac"), true);
        assert_eq!(merged, Ok(Some(WaitingAnswer::Merge { group: call("ab"), legs: vec![call("ab"), call("ac")] })));
        assert_eq!(board.group_of(&call("ac")), Some(&call("ab")));
        board.answering(&call("ac"));
        board.state_changed(&call("ac"), State::Active, Some(id(3)));
        assert_eq!(board.participants(&call("ab")), [id(2), id(3)]);
        assert_eq!(board.answered_beside(&call("ab")), Vec::<CallId>::new(), "one call: nothing to hold");

        // Into a group of five (us and four): the sixth fits, a seventh not.
        let mut board = waiting_board();
        for (n, leg) in [(3, "ac"), (4, "ad"), (5, "ae")] {
            board.add(&call("ab"), id(n), call(leg)).unwrap();
            board.state_changed(&call(leg), State::Active, Some(id(n)));
        }
        waits(&mut board, "af", 6);
        assert!(matches!(board.answer_waiting(&call("af"), true), Ok(Some(WaitingAnswer::Merge { .. }))));
        board.state_changed(&call("af"), State::Active, Some(id(6)));
        waits(&mut board, "ag", 7);
        assert_eq!(board.answer_waiting(&call("ag"), true), Err(CallError::GroupFull));
        assert_eq!(board.group_of(&call("ag")), None, "a refused merge changes nothing");
        // It can still be answered by holding the group call.
        let Ok(Some(WaitingAnswer::Hold(held))) = board.answer_waiting(&call("ag"), false) else { panic!() };
        assert_eq!(held.len(), 5, "every leg of the group call");
    }

    #[test]
    fn a_participant_adds_peers_up_to_six_people_and_each_peer_once() {
        let mut board = in_a_call();
        assert_eq!(board.add(&call("ab"), id(2), call("x")), Err(CallError::AlreadyInCall(id(2).short())));
        assert_eq!(board.add(&call("ab"), id(3), call("ac")), Ok(call("ab")), "the call names the group");
        assert_eq!(board.group_of(&call("ab")), Some(&call("ab")));
        assert_eq!(board.add(&call("ab"), id(3), call("x")), Err(CallError::AlreadyInCall(id(3).short())));
        // A call not answered yet takes nobody in.
        let mut ringing = Switchboard::new(id(1), Policy::default());
        ringing.dial(Some(id(2)), call("r")).unwrap();
        assert_eq!(ringing.add(&call("r"), id(3), call("x")), Err(CallError::NotAnswered));
        for (n, leg) in [(4, "ad"), (5, "ae"), (6, "af")] {
            assert_eq!(board.add(&call("ab"), id(n), call(leg)), Ok(call("ab")));
        }
        assert_eq!(board.add(&call("ab"), id(7), call("ag")), Err(CallError::GroupFull), "six people: us and five");
        // One leg is one call to the user; the group's legs take its commands.
        assert_eq!(board.pick(None), Ok(call("ab")));
        assert_eq!(board.legs_with(&call("ab")).len(), 5);
        assert_eq!(board.dial(Some(id(7)), call("x")), Err(CallError::Busy), "a dial is not an add");
        // Someone leaves: there is room again.
        board.state_changed(&call("ae"), State::Ended, None);
        assert_eq!(board.add(&call("ab"), id(7), call("ag")), Ok(call("ab")));
    }

    #[test]
    fn a_join_is_answered_only_when_a_participant_introduced_the_joiner() {
        let now = Instant::now();
        let mut board = in_a_call();
        let join = group_part("ab", true, &[]);
        let joining = |board: &mut Switchboard, name: &str, who: u8| {
            board.incoming(call(name), id(who), from(who), PeerStanding::Unknown, Some(&join), now)
        };
        assert_eq!(joining(&mut board, "c1", 3), Incoming::Refuse(Refusal::NotInvited), "nobody named 3");
        // A stranger cannot introduce anyone; a participant can.
        assert!(board.introduce(&call("zz"), &call("ab"), [(id(3), false)]).is_empty());
        assert_eq!(joining(&mut board, "c2", 3), Incoming::Refuse(Refusal::NotInvited));
        // The peer of "ab" added someone: "ab" is now a leg of its group.
        // 3 is higher than us (1): it is ours to call, unless it calls first.
        assert_eq!(board.introduce(&call("ab"), &call("ab"), [(id(3), false), (id(1), false)]), [id(3)]);
        assert_eq!(joining(&mut board, "c3", 3), Incoming::Ring { answer: true, hang_up: None, waiting: false });
        assert_eq!(joining(&mut board, "c4", 3), Incoming::Refuse(Refusal::CallIdInUse), "one leg per peer");
        // A join to a call we are not in.
        let elsewhere = group_part("zz", true, &[]);
        let refused = board.incoming(call("c5"), id(4), from(4), PeerStanding::Unknown, Some(&elsewhere), now);
        assert_eq!(refused, Incoming::Refuse(Refusal::NotInvited));
        // A blocked device stays blocked, introduced or not.
        // One only invited is introduced, but not called.
        assert!(board.introduce(&call("ab"), &call("ab"), [(id(5), true)]).is_empty());
        let blocked = PeerStanding::Known(Standing::Blocked);
        assert_eq!(
            board.incoming(call("c6"), id(5), from(5), blocked, Some(&join), now),
            Incoming::Refuse(Refusal::Blocked)
        );
        // Strangers still find us busy.
        assert_eq!(board.incoming(call("c7"), id(6), from(6), PeerStanding::Unknown, None, now), Incoming::Busy);
    }

    #[test]
    fn an_answered_invitation_joins_the_participants_it_named_and_a_second_one_rings_along() {
        let now = Instant::now();
        let mut board = Switchboard::new(id(3), Policy::default());
        // 1 and 2 both invite us to their call at once.
        let from_1 = group_part("g", false, &[2]);
        let from_2 = group_part("g", false, &[1, 4]);
        let rings = Incoming::Ring { answer: false, hang_up: None, waiting: false };
        assert_eq!(board.incoming(call("i1"), id(1), from(1), PeerStanding::Unknown, Some(&from_1), now), rings);
        assert_eq!(board.incoming(call("i2"), id(2), from(2), PeerStanding::Unknown, Some(&from_2), now), rings);
        assert_eq!(board.joins_due(&call("i1")), None, "not answered yet");
        // Answering one answers the other and declines nothing.
        assert_eq!(board.answering(&call("i1")), Vec::<CallId>::new());
        assert_eq!(board.same_invitation(&call("i1")), [call("i2")]);
        board.state_changed(&call("i1"), State::Connecting, Some(id(1)));
        board.state_changed(&call("i2"), State::Connecting, Some(id(2)));
        // Joined: 4 only, since 1 and 2 have legs here; and only once.
        assert_eq!(board.joins_due(&call("i1")), Some((call("g"), vec![id(4)])));
        assert_eq!(board.joins_due(&call("i1")), None);
        assert_eq!(board.join(&call("g"), id(4), call("j4")), Ok(()));
        assert_eq!(board.join(&call("g"), id(4), call("j5")), Err(CallError::AlreadyInCall(id(4).short())));
        assert_eq!(board.participants(&call("g")), [id(1), id(2), id(4)]);
    }

    #[test]
    fn a_full_invitation_is_refused_and_joiners_that_dial_each_other_settle_it_like_glare() {
        let now = Instant::now();
        let mut board = Switchboard::new(id(LOW), Policy::default());
        let crowded = group_part("g", false, &[2, 3, 4, 5, 6]);
        assert_eq!(
            board.incoming(call("i"), id(9), from(9), PeerStanding::Unknown, Some(&crowded), now),
            Incoming::Refuse(Refusal::GroupFull),
            "the inviter, five named and us are seven"
        );
        let invitation = group_part("g", false, &[HIGH]);
        board.incoming(call("i"), id(2), from(2), PeerStanding::Unknown, Some(&invitation), now);
        board.answering(&call("i"));
        board.state_changed(&call("i"), State::Active, Some(id(2)));
        let (group, due) = board.joins_due(&call("i")).unwrap();
        assert_eq!(due, [id(HIGH)]);
        board.join(&group, id(HIGH), call("ours")).unwrap();
        // HIGH, invited too, dials us as we dial it: the lower ID's leg lives.
        let join = group_part("g", true, &[]);
        assert_eq!(
            board.incoming(call("theirs"), id(HIGH), from(HIGH), PeerStanding::Unknown, Some(&join), now),
            Incoming::Glare
        );
        // Everyone leaves: the group is forgotten.
        for leg in ["i", "ours"] {
            board.finished(&call(leg));
        }
        assert!(board.introduced.is_empty());
    }

    #[test]
    fn an_invitation_that_ends_leaves_the_call_as_it_was_and_the_peer_can_be_asked_again() {
        let mut board = in_a_call();
        assert_eq!(board.add(&call("ab"), id(3), call("ac")), Ok(call("ab")));
        // Busy, declined or unanswered: the invitation ends, the call goes on.
        board.state_changed(&call("ac"), State::Ended, None);
        board.finished(&call("ac"));
        assert_eq!(board.participants(&call("ab")), [id(2)]);
        assert_eq!(board.add(&call("ab"), id(3), call("ac2")), Ok(call("ab")));
        // Everyone leaves at once: nothing of the group is left.
        for leg in ["ab", "ac2"] {
            board.state_changed(&call(leg), State::Ended, None);
            board.finished(&call(leg));
        }
        assert_eq!(board.pick(None), Err(CallError::NoCall));
        assert!(board.introduced.is_empty());
        assert_eq!(board.dial(Some(id(4)), call("next")), Ok(Dial::Place(call("next"))));
    }

    #[test]
    fn glare_is_resolved_the_same_way_on_both_sides() {
        assert_eq!(resolve_glare(&id(LOW), &id(HIGH)), Glare::KeepOurs);
        assert_eq!(resolve_glare(&id(HIGH), &id(LOW)), Glare::TakeTheirs);
    }
}
