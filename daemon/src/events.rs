//! The daemon's published state and its feed of changes.
//!
//! The task that owns a resource (the discovery task owns the peer table) publishes
//! each change here. The hub keeps the latest state, so an API client can read it
//! without asking the owner, and numbers every change, so a subscriber that joins
//! late gets the state and then exactly the changes after it: no gap, no repeat.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{broadcast, watch};

use voicelink_core::audio_spec::{InputSpec, OutputSpec};
use voicelink_core::call_record::CallRecord;
use voicelink_core::peer_table::PeerChange;
use voicelink_core::stats::CallStats;
use voicelink_core::vocab::{CallId, DeviceId, PeerRecord, State as CallState};

/// How many changes a subscriber may fall behind before it is resynchronised
/// with a fresh snapshot.
const FEED_CAPACITY: usize = 256;

/// Everything a subscriber needs to start from.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Sequence number of the last change included.
    pub sequence: u64,
    /// Peers by device ID.
    pub peers: BTreeMap<DeviceId, PeerRecord>,
    /// Calls in progress (ended calls leave once their end is published).
    pub calls: BTreeMap<CallId, CallRecord>,
}

/// A change as published: numbered and timed.
#[derive(Debug, Clone)]
pub struct Published {
    /// One more than the previous change's.
    pub sequence: u64,
    /// When it was published.
    pub time: SystemTime,
    /// What changed.
    pub change: Change,
}

/// Anything that can change.
#[derive(Debug, Clone)]
pub enum Change {
    /// The peer table changed.
    Peer(PeerChange),
    /// A call was created (an incoming call starts ringing here).
    CallStarted(CallRecord),
    /// A call changed state.
    CallState {
        /// The call now.
        call: CallRecord,
        /// Its state before.
        previous: CallState,
        /// When it ended: its last statistics, with the summary.
        stats: Option<Arc<CallStats>>,
    },
    /// A call was muted or unmuted here.
    CallMuted(CallRecord),
    /// A call's speaker was muted or unmuted.
    CallSpeakerMuted(CallRecord),
    /// A two-party call became a leg of a group call.
    CallJoinedGroup(CallRecord),
    /// A call's voice processing was changed.
    CallProcessing(CallRecord),
    /// A call was put on hold or resumed (by either side).
    CallHeld(CallRecord),
    /// Our recording of a call started or stopped, or the peer's did.
    CallRecording {
        /// The call now.
        call: CallRecord,
        /// Why our recording stopped on its own.
        error: Option<String>,
    },
    /// Something went wrong that the user should know of (the history database
    /// failed); the daemon goes on.
    Problem(String),
    /// Who may ring, or auto-answer, changed.
    Policy {
        /// Who may ring now.
        who_may_ring: voicelink_core::switchboard::WhoMayRing,
        /// Which calls are answered at once now.
        auto_answer: voicelink_core::switchboard::AutoAnswer,
        /// Do-not-disturb is on.
        do_not_disturb: bool,
    },
    /// A peer began to advertise the name of another device we know.
    NameConflict {
        /// The peer making the claim.
        peer: PeerRecord,
        /// The known device whose name it advertises.
        known: DeviceId,
    },
    /// A call was written to the history (it ended, or was refused).
    HistoryAdded(Box<voicelink_core::history::HistoryEntry>),
    /// A sound device came or went, or the system default changed.
    AudioDevices(Arc<voicelink_core::device_follow::DeviceList>),
    /// A call's sound device moved (and the call goes on).
    CallDeviceMoved {
        /// The call.
        call_id: voicelink_core::vocab::CallId,
        /// Where and why.
        moved: voicelink_core::device_follow::DeviceMoved,
    },
    /// The default audio endpoints for new calls changed.
    AudioDefaults {
        /// Input spec.
        input: InputSpec,
        /// Output spec.
        output: OutputSpec,
    },
}

impl State {
    fn apply(&mut self, change: &Change) {
        match change {
            Change::Peer(PeerChange::Appeared(record) | PeerChange::Changed(record)) => {
                self.peers.insert(record.device_id, record.clone());
            }
            Change::Peer(PeerChange::Gone { device_id, .. }) => {
                self.peers.remove(device_id);
            }
            Change::CallStarted(call)
            | Change::CallState { call, .. }
            | Change::CallMuted(call)
            | Change::CallSpeakerMuted(call)
            | Change::CallJoinedGroup(call)
            | Change::CallProcessing(call)
            | Change::CallHeld(call)
            | Change::CallRecording { call, .. } => {
                if call.state == CallState::Ended {
                    self.calls.remove(&call.id);
                } else {
                    self.calls.insert(call.id.clone(), call.clone());
                }
            }
            // Published on the settings channel, or kept by the store; the feed
            // only announces them.
            Change::AudioDefaults { .. }
            | Change::AudioDevices(_)
            | Change::CallDeviceMoved { .. }
            | Change::HistoryAdded(_)
            | Change::Problem(_)
            | Change::Policy { .. }
            | Change::NameConflict { .. } => {}
        }
    }
}

/// A cloneable handle to the published state and change feed.
#[derive(Clone)]
pub struct EventHub {
    state: Arc<watch::Sender<State>>,
    feed: broadcast::Sender<Arc<Published>>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

impl EventHub {
    /// An empty hub.
    pub fn new() -> Self {
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        EventHub { state: Arc::new(watch::Sender::new(State::default())), feed }
    }

    /// Applies a change to the state and sends it to subscribers.
    pub fn publish(&self, change: Change) {
        // Numbering, applying and sending under the state's write lock keeps the
        // sequence of the state and of the feed in step.
        self.state.send_modify(|state| {
            state.sequence += 1;
            state.apply(&change);
            let published = Arc::new(Published { sequence: state.sequence, time: SystemTime::now(), change });
            // No subscribers is fine: the change is in the state.
            let _ = self.feed.send(published);
        });
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Starts following: the current state, then every later change.
    pub fn subscribe(&self) -> Subscription {
        let changes = self.feed.subscribe();
        let state = self.state();
        Subscription {
            hub: self.clone(),
            changes,
            after: state.sequence,
            pending_state: Some((state, Resync::Subscribed)),
        }
    }
}

/// Why a subscriber receives a whole state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// It just subscribed.
    Subscribed,
    /// It fell behind and missed changes.
    Lagged,
}

/// What a subscriber receives next.
#[derive(Debug, Clone)]
pub enum Update {
    /// Replace what you knew with this.
    State(State, Resync),
    /// One change after the last state or change received.
    Change(Arc<Published>),
}

/// One subscriber's position in the feed.
pub struct Subscription {
    hub: EventHub,
    changes: broadcast::Receiver<Arc<Published>>,
    after: u64,
    pending_state: Option<(State, Resync)>,
}

impl Subscription {
    /// The next update; `None` once the hub is gone.
    pub async fn next(&mut self) -> Option<Update> {
        if let Some((state, why)) = self.pending_state.take() {
            return Some(Update::State(state, why));
        }
        loop {
            match self.changes.recv().await {
                // Already part of the state this subscriber started from.
                Ok(published) if published.sequence <= self.after => continue,
                Ok(published) => {
                    self.after = published.sequence;
                    return Some(Update::Change(published));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.changes = self.changes.resubscribe();
                    let state = self.hub.state();
                    self.after = state.sequence;
                    return Some(Update::State(state, Resync::Lagged));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use voicelink_core::peer_table::GoneReason;

    fn peer(seed: &str) -> PeerRecord {
        PeerRecord {
            device_id: DeviceId::from_certificate_der(seed.as_bytes()),
            display_name: seed.into(),
            addresses: BTreeSet::new(),
            signaling_port: 1,
            protocol_version: 1,
            last_seen: SystemTime::UNIX_EPOCH,
            online: true,
            known: false,
            signed: true,
        }
    }

    fn appeared(seed: &str) -> Change {
        Change::Peer(PeerChange::Appeared(peer(seed)))
    }

    #[tokio::test]
    async fn a_late_subscriber_gets_the_state_then_only_newer_changes() {
        let hub = EventHub::new();
        hub.publish(appeared("a"));
        hub.publish(appeared("b"));
        let mut sub = hub.subscribe();
        hub.publish(Change::Peer(PeerChange::Gone {
            device_id: peer("a").device_id,
            display_name: "a".into(),
            reason: GoneReason::Goodbye,
        }));

        let Some(Update::State(state, Resync::Subscribed)) = sub.next().await else { panic!("state first") };
        assert_eq!(state.sequence, 2);
        assert_eq!(state.peers.len(), 2);
        let Some(Update::Change(change)) = sub.next().await else { panic!("then the change") };
        assert_eq!(change.sequence, 3);
        assert!(matches!(change.change, Change::Peer(PeerChange::Gone { .. })));
        assert_eq!(hub.state().peers.len(), 1);
    }

    #[tokio::test]
    async fn a_change_published_between_subscribe_and_state_is_not_repeated() {
        let hub = EventHub::new();
        // Subscribe to the feed by hand, publish, then read the state, as a race would.
        let mut sub = hub.subscribe();
        sub.pending_state = None;
        hub.publish(appeared("a"));
        let state = hub.state();
        sub.after = state.sequence;
        hub.publish(appeared("b"));
        let Some(Update::Change(change)) = sub.next().await else { panic!() };
        assert_eq!(change.sequence, 2, "the change already in the state was skipped");
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_resynchronised() {
        let hub = EventHub::new();
        let mut sub = hub.subscribe();
        assert!(matches!(sub.next().await, Some(Update::State(_, Resync::Subscribed))));
        for i in 0..FEED_CAPACITY + 10 {
            hub.publish(appeared(&format!("p{i}")));
        }
        let Some(Update::State(state, Resync::Lagged)) = sub.next().await else { panic!("resync expected") };
        assert_eq!(state.peers.len(), FEED_CAPACITY + 10);
        hub.publish(appeared("last"));
        let Some(Update::Change(change)) = sub.next().await else { panic!() };
        assert_eq!(change.sequence, (FEED_CAPACITY + 11) as u64);
    }
}
