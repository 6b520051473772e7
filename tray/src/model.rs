//! What the tray knows about the daemon, and how each update from the event feed
//! changes it.
//!
//! [`TrayState::apply`] is pure: it takes one [`Update`] (an event, a stats
//! sample, the link going up or down) and returns the [`Notice`]s the desktop
//! should see because of it (a call is ringing, a call was missed). Everything the
//! icon and the menu show is computed from this state by [`crate::view`].

use std::collections::BTreeMap;
use std::time::Duration;

use voicelink_proto::v1::{self, CallState, EndReason, event};

use crate::command::Command;

/// Whether the tray can talk to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Starting up: the first connection attempt has not finished.
    Connecting,
    /// Subscribed to the event feed.
    Up,
    /// The daemon cannot be reached (not running, restarting); the next attempt
    /// comes after `retry_in`.
    Down {
        /// Why, in words (e.g. "voiced is not running").
        reason: String,
        /// The back-off before the next attempt.
        retry_in: Duration,
    },
}

/// Something the client task (the only one talking to the daemon) reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Connected: the daemon's status and its audio devices, if it could list them.
    Connected {
        /// From `GetStatus` (boxed: the largest message the tray keeps).
        status: Box<v1::Status>,
        /// From `ListAudioDevices`; `None` when the daemon could not list them.
        devices: Option<v1::ListAudioDevicesResponse>,
        /// Missed calls not yet seen (0 when the history is off).
        unseen_missed: u64,
    },
    /// One event of the feed (the first of every subscription is a Snapshot).
    /// Boxed, as events are large and most updates are not events.
    Event(Box<v1::Event>),
    /// One sample of the stats feed for a call.
    Stats(Box<v1::CallStats>),
    /// The connection is gone or could not be made.
    Disconnected {
        /// Why, in words.
        reason: String,
        /// When the next attempt is made.
        retry_in: Duration,
    },
    /// A reading of the microphone check; `None` when it stopped.
    InputLevel(Option<v1::InputLevel>),
    /// A menu or notification action was done by the daemon.
    CommandDone {
        /// What was asked.
        command: Command,
    },
    /// A menu or notification action was refused by the daemon.
    CommandFailed {
        /// What was asked.
        command: Command,
        /// What the daemon (or the transport) said.
        message: String,
    },
}

/// Something the desktop should be told about, beyond the icon and the menu.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A call started ringing here: raise a notification with Answer / Decline.
    Ringing {
        /// The call.
        call_id: String,
        /// Who is calling (display name, or device ID when it has none).
        caller: String,
    },
    /// A call that was ringing here stopped ringing without being missed
    /// (answered, declined, or the daemon went away): withdraw its notification.
    StoppedRinging {
        /// The call.
        call_id: String,
        /// Who was calling.
        caller: String,
        /// What happened, in words ("Answered", "Declined").
        outcome: String,
    },
    /// A call rang here and ended unanswered: leave a notification saying so.
    Missed {
        /// The call.
        call_id: String,
        /// Who called.
        caller: String,
    },
    /// A peer began to advertise the name of a device we know: warn.
    Impostor {
        /// The name it advertises.
        claimed: String,
        /// What we call the device it is not.
        known: String,
    },
}

/// Everything the tray shows is a function of this.
#[derive(Debug, Clone, PartialEq)]
pub struct TrayState {
    /// Whether the daemon is reachable.
    pub link: Link,
    /// The daemon's own name, once connected.
    pub display_name: String,
    /// Peers by device ID (online or not, as the daemon reports them).
    pub peers: BTreeMap<String, v1::Peer>,
    /// Calls that have not ended, by call ID.
    pub calls: BTreeMap<String, v1::Call>,
    /// The quality verdict of each call from the stats feed ("good", "poor"...).
    /// Absent while the feed has said nothing (or is not implemented).
    pub quality: BTreeMap<String, String>,
    /// Capture and playback devices; `None` when the daemon could not list them.
    pub devices: Option<v1::ListAudioDevicesResponse>,
    /// The daemon's audio input spec for new calls.
    pub audio_input: String,
    /// The daemon's audio output spec for new calls.
    pub audio_output: String,
    /// Do-not-disturb is on; `None` before the daemon said.
    pub do_not_disturb: Option<bool>,
    /// Missed calls not yet seen.
    pub unseen_missed: u64,
    /// The last thing that went wrong (a refused command, a daemon error), shown
    /// in the menu until the next command that works, the next change to a call
    /// or to the devices, or the next connection. (Peers coming and going do not
    /// clear it: they say nothing about what went wrong.)
    pub last_error: Option<String>,
    /// The microphone check's last reading, while it runs.
    pub input_level: Option<v1::InputLevel>,
}

impl Default for TrayState {
    fn default() -> Self {
        TrayState {
            link: Link::Connecting,
            display_name: String::new(),
            peers: BTreeMap::new(),
            calls: BTreeMap::new(),
            quality: BTreeMap::new(),
            devices: None,
            audio_input: String::new(),
            audio_output: String::new(),
            do_not_disturb: None,
            unseen_missed: 0,
            last_error: None,
            input_level: None,
        }
    }
}

/// The name to show for the other side of a call, with a warning when it claims
/// a name that belongs to another device the user knows.
pub fn caller_name(call: &v1::Call) -> String {
    let name = if !call.peer_display_name.is_empty() {
        call.peer_display_name.clone()
    } else if !call.peer_device_id.is_empty() {
        call.peer_device_id.clone()
    } else {
        "unknown caller".to_owned()
    };
    format!("{name}{}", not_the_one_you_know(&call.peer_name_conflict))
}

/// The warning for a device that advertises the name of another device the user
/// knows (`known`: that device's name); empty when there is no conflict.
pub fn not_the_one_you_know(known: &str) -> String {
    if known.is_empty() { String::new() } else { format!(" (NOT the {known} you know)") }
}

fn is_ringing_here(call: &v1::Call) -> bool {
    call.state() == CallState::Incoming
}

impl TrayState {
    /// Applies one update; returns what the desktop should be told because of it.
    pub fn apply(&mut self, update: Update) -> Vec<Notice> {
        match update {
            Update::Connected { status, devices, unseen_missed } => {
                self.unseen_missed = unseen_missed;
                self.link = Link::Up;
                self.display_name = status.display_name;
                self.audio_input = status.audio_input;
                self.audio_output = status.audio_output;
                self.do_not_disturb = Some(status.do_not_disturb);
                self.devices = devices;
                self.last_error = None;
                Vec::new()
            }
            Update::Disconnected { reason, retry_in } => {
                self.link = Link::Down { reason, retry_in };
                // The daemon's calls and peers are unknown now; a ringing call can
                // no longer be answered from here.
                let notices = self
                    .calls
                    .values()
                    .filter(|c| is_ringing_here(c))
                    .map(|c| Notice::StoppedRinging {
                        call_id: c.call_id.clone(),
                        caller: caller_name(c),
                        outcome: "voiced stopped".to_owned(),
                    })
                    .collect();
                self.calls.clear();
                self.peers.clear();
                self.quality.clear();
                self.devices = None;
                self.input_level = None;
                notices
            }
            Update::Stats(stats) => {
                // Samples can trail the end of a call (the one with the summary is
                // sent after it ended); only live calls get a verdict, and an empty
                // verdict (no audio yet) says nothing.
                let v1::CallStats { call_id, quality, summary, .. } = *stats;
                if summary.is_none() && self.calls.contains_key(&call_id) && !quality.is_empty() {
                    self.quality.insert(call_id, quality);
                }
                Vec::new()
            }
            Update::InputLevel(reading) => {
                self.input_level = reading;
                Vec::new()
            }
            Update::CommandDone { command } => {
                self.last_error = None;
                if command == Command::MarkMissedSeen {
                    self.unseen_missed = 0;
                }
                Vec::new()
            }
            Update::CommandFailed { command, message } => {
                self.last_error = Some(format!("{}: {message}", command.describe()));
                Vec::new()
            }
            Update::Event(event) => match event.kind {
                Some(kind) => self.apply_event(kind),
                // A newer daemon's event this build does not know: nothing to do.
                None => Vec::new(),
            },
        }
    }

    fn apply_event(&mut self, kind: event::Kind) -> Vec<Notice> {
        use event::Kind;
        match kind {
            Kind::Snapshot(snapshot) => {
                self.peers = snapshot.peers.into_iter().map(|p| (p.device_id.clone(), p)).collect();
                let new_calls: BTreeMap<String, v1::Call> = snapshot
                    .calls
                    .into_iter()
                    .filter(|c| c.state() != CallState::Ended)
                    .map(|c| (c.call_id.clone(), c))
                    .collect();
                let mut notices = Vec::new();
                // Calls that rang before and are gone or answered: their fate is not
                // in the snapshot, so withdraw the notification without calling
                // them missed.
                for old in self.calls.values().filter(|c| is_ringing_here(c)) {
                    if !new_calls.get(&old.call_id).is_some_and(is_ringing_here) {
                        notices.push(Notice::StoppedRinging {
                            call_id: old.call_id.clone(),
                            caller: caller_name(old),
                            outcome: "Call ended".to_owned(),
                        });
                    }
                }
                // Calls ringing that we did not know were ringing (the tray started
                // or reconnected while they rang).
                for new in new_calls.values().filter(|c| is_ringing_here(c)) {
                    if !self.calls.get(&new.call_id).is_some_and(is_ringing_here) {
                        notices.push(Notice::Ringing { call_id: new.call_id.clone(), caller: caller_name(new) });
                    }
                }
                self.quality.retain(|id, _| new_calls.contains_key(id));
                self.calls = new_calls;
                notices
            }
            Kind::PeerAppeared(v1::PeerAppeared { peer: Some(peer) })
            | Kind::PeerChanged(v1::PeerChanged { peer: Some(peer) }) => {
                self.peers.insert(peer.device_id.clone(), peer);
                Vec::new()
            }
            Kind::NameConflict(v1::NameConflict { peer: Some(peer), .. }) => {
                let notice = Notice::Impostor { claimed: peer.display_name.clone(), known: peer.name_conflict.clone() };
                // Only a peer still listed: the claim may come after it left.
                if let Some(listed) = self.peers.get_mut(&peer.device_id) {
                    *listed = peer;
                }
                vec![notice]
            }
            Kind::PeerGone(gone) => {
                self.peers.remove(&gone.device_id);
                Vec::new()
            }
            Kind::IncomingCall(v1::IncomingCall { call: Some(call) }) => {
                self.last_error = None;
                self.call_changed(call)
            }
            Kind::CallStateChanged(v1::CallStateChanged { call: Some(call), .. })
            | Kind::CallJoinedGroup(v1::CallJoinedGroup { call: Some(call) }) => {
                self.last_error = None;
                self.call_changed(call)
            }
            Kind::MuteChanged(change) => {
                self.last_error = None;
                if let Some(call) = self.calls.get_mut(&change.call_id) {
                    call.muted = change.muted;
                }
                Vec::new()
            }
            Kind::SpeakerMuteChanged(change) => {
                self.last_error = None;
                if let Some(call) = self.calls.get_mut(&change.call_id) {
                    call.speaker_muted = change.muted;
                }
                Vec::new()
            }
            Kind::AudioProcessingChanged(change) => {
                if let Some(call) = self.calls.get_mut(&change.call_id) {
                    call.processing = change.processing;
                }
                Vec::new()
            }
            Kind::HoldChanged(change) => {
                self.last_error = None;
                if let Some(call) = self.calls.get_mut(&change.call_id) {
                    call.on_hold = change.on_hold;
                    call.held_here = change.held_here;
                    call.held_by_peer = change.held_by_peer;
                }
                Vec::new()
            }
            Kind::RecordingChanged(change) => {
                if let Some(call) = self.calls.get_mut(&change.call_id) {
                    call.recording = change.recording;
                    call.recording_file = change.recording_file;
                    call.recorded_by_peer = change.recorded_by_peer;
                }
                // A recording that stopped on its own says why.
                if !change.error.is_empty() {
                    self.last_error = Some(format!("Recording stopped: {}", change.error));
                }
                Vec::new()
            }
            // The tray tells of missed calls as they end (call state events); here
            // it counts them until they are seen.
            Kind::HistoryAdded(added) => {
                let missed = v1::CallOutcome::Missed as i32;
                if added.entry.is_some_and(|entry| entry.outcome == missed) {
                    self.unseen_missed += 1;
                }
                Vec::new()
            }
            Kind::PolicyChanged(change) => {
                self.do_not_disturb = Some(change.do_not_disturb);
                Vec::new()
            }
            Kind::AudioDeviceChanged(change) => {
                self.last_error = None;
                self.audio_input = change.audio_input;
                self.audio_output = change.audio_output;
                Vec::new()
            }
            Kind::Error(error) => {
                self.last_error = Some(error.message);
                Vec::new()
            }
            // A device plugged in or unplugged: the menu offers what is there now
            // (the endpoints that need no device stay as listed).
            Kind::AudioDevicesChanged(change) => {
                self.last_error = None;
                let devices = self.devices.get_or_insert_with(Default::default);
                devices.inputs = change.inputs;
                devices.outputs = change.outputs;
                Vec::new()
            }
            // Where a call plays is for the CLI and the log; the menu shows the
            // configured endpoints.
            Kind::CallAudioDeviceMoved(_) => Vec::new(),
            // Events whose payload is missing carry nothing to apply.
            Kind::PeerAppeared(_)
            | Kind::PeerChanged(_)
            | Kind::NameConflict(_)
            | Kind::IncomingCall(_)
            | Kind::CallStateChanged(_)
            | Kind::CallJoinedGroup(_) => Vec::new(),
        }
    }

    fn call_changed(&mut self, call: v1::Call) -> Vec<Notice> {
        let was_ringing = self.calls.get(&call.call_id).is_some_and(is_ringing_here);
        let caller = caller_name(&call);
        let call_id = call.call_id.clone();
        let notice = match (was_ringing, call.state()) {
            (false, CallState::Incoming) => Some(Notice::Ringing { call_id: call_id.clone(), caller }),
            (true, CallState::Incoming) => None,
            (true, CallState::Ended) => Some(match call.end_reason() {
                EndReason::Declined => {
                    Notice::StoppedRinging { call_id: call_id.clone(), caller, outcome: "Declined".into() }
                }
                // Hung up here while ringing is a decline by another name.
                EndReason::HungUpLocal => {
                    Notice::StoppedRinging { call_id: call_id.clone(), caller, outcome: "Declined".into() }
                }
                // No answer, cancelled by the caller, the caller lost, failed.
                _ => Notice::Missed { call_id: call_id.clone(), caller },
            }),
            (true, _) => Some(Notice::StoppedRinging { call_id: call_id.clone(), caller, outcome: "Answered".into() }),
            (false, _) => None,
        };
        if call.state() == CallState::Ended {
            self.calls.remove(&call_id);
            self.quality.remove(&call_id);
        } else {
            self.calls.insert(call_id, call);
        }
        notice.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str, state: CallState) -> v1::Call {
        v1::Call {
            call_id: id.into(),
            peer_device_id: "DEV-ALICE".into(),
            peer_display_name: "alice".into(),
            state: state as i32,
            ..Default::default()
        }
    }

    fn ev(kind: event::Kind) -> Update {
        Update::Event(Box::new(v1::Event { kind: Some(kind), ..Default::default() }))
    }

    fn changed(call: v1::Call) -> Update {
        ev(event::Kind::CallStateChanged(v1::CallStateChanged { call: Some(call), ..Default::default() }))
    }

    fn ringing_state() -> TrayState {
        let mut state = TrayState::default();
        let notices = state
            .apply(ev(event::Kind::IncomingCall(v1::IncomingCall { call: Some(call("c1", CallState::Incoming)) })));
        assert_eq!(notices, vec![Notice::Ringing { call_id: "c1".into(), caller: "alice".into() }]);
        state
    }

    #[test]
    fn an_incoming_call_rings_once() {
        let mut state = ringing_state();
        // The same call reported again (e.g. as a state change) does not ring twice.
        assert_eq!(state.apply(changed(call("c1", CallState::Incoming))), vec![]);
        assert!(state.calls.contains_key("c1"));
    }

    #[test]
    fn answering_withdraws_the_ringing_notice() {
        let mut state = ringing_state();
        let notices = state.apply(changed(call("c1", CallState::Connecting)));
        assert_eq!(
            notices,
            vec![Notice::StoppedRinging { call_id: "c1".into(), caller: "alice".into(), outcome: "Answered".into() }]
        );
        assert_eq!(state.apply(changed(call("c1", CallState::Active))), vec![]);
    }

    #[test]
    fn a_call_that_ends_while_ringing_is_missed_unless_declined() {
        for (reason, missed) in [
            (EndReason::NoAnswer, true),
            (EndReason::Cancelled, true),
            (EndReason::PeerLost, true),
            (EndReason::Declined, false),
            (EndReason::HungUpLocal, false),
        ] {
            let mut state = ringing_state();
            let mut ended = call("c1", CallState::Ended);
            ended.end_reason = reason as i32;
            let notices = state.apply(changed(ended));
            assert_eq!(notices.len(), 1, "{reason:?}");
            assert_eq!(matches!(notices[0], Notice::Missed { .. }), missed, "{reason:?}: {notices:?}");
            assert!(state.calls.is_empty(), "ended calls are dropped");
        }
    }

    #[test]
    fn an_answered_call_that_ends_is_not_missed() {
        let mut state = ringing_state();
        state.apply(changed(call("c1", CallState::Active)));
        let mut ended = call("c1", CallState::Ended);
        ended.end_reason = EndReason::HungUpRemote as i32;
        assert_eq!(state.apply(changed(ended)), vec![]);
        assert!(state.calls.is_empty());
    }

    #[test]
    fn a_snapshot_replaces_everything_and_rings_for_calls_we_did_not_know() {
        let mut state = TrayState::default();
        state.quality.insert("old".into(), "good".into());
        let snapshot = v1::Snapshot {
            peers: vec![v1::Peer {
                device_id: "DEV-BOB".into(),
                display_name: "bob".into(),
                online: true,
                ..Default::default()
            }],
            calls: vec![call("c2", CallState::Incoming), call("gone", CallState::Ended)],
            reason: "subscribed".into(),
        };
        let notices = state.apply(ev(event::Kind::Snapshot(snapshot)));
        assert_eq!(notices, vec![Notice::Ringing { call_id: "c2".into(), caller: "alice".into() }]);
        assert_eq!(state.calls.keys().collect::<Vec<_>>(), ["c2"]);
        assert_eq!(state.peers.keys().collect::<Vec<_>>(), ["DEV-BOB"]);
        assert!(state.quality.is_empty(), "verdicts of calls not in the snapshot are dropped");
    }

    #[test]
    fn a_lagged_snapshot_without_the_ringing_call_withdraws_it() {
        let mut state = ringing_state();
        let notices =
            state.apply(ev(event::Kind::Snapshot(v1::Snapshot { reason: "lagged".into(), ..Default::default() })));
        assert!(matches!(&notices[..], [Notice::StoppedRinging { call_id, .. }] if call_id == "c1"), "{notices:?}");
    }

    #[test]
    fn losing_the_daemon_forgets_its_state_and_withdraws_ringing() {
        let mut state = ringing_state();
        state.apply(Update::Connected { status: Box::default(), devices: None, unseen_missed: 0 });
        let notices = state.apply(Update::Disconnected { reason: "gone".into(), retry_in: Duration::from_secs(1) });
        assert!(matches!(&notices[..], [Notice::StoppedRinging { .. }]), "{notices:?}");
        assert!(state.calls.is_empty() && state.peers.is_empty());
        assert_eq!(state.link, Link::Down { reason: "gone".into(), retry_in: Duration::from_secs(1) });
    }

    #[test]
    fn a_name_conflict_warns_once_and_flags_the_peer() {
        let mut state = TrayState::default();
        let impostor = v1::Peer {
            device_id: "DEV-EVE".into(),
            display_name: "alice".into(),
            name_conflict: "alice".into(),
            ..Default::default()
        };
        let listed = v1::Peer { name_conflict: String::new(), ..impostor.clone() };
        state.apply(ev(event::Kind::PeerAppeared(v1::PeerAppeared { peer: Some(listed) })));
        let notices = state.apply(ev(event::Kind::NameConflict(v1::NameConflict {
            peer: Some(impostor),
            known_device_id: "DEV-ALICE".into(),
        })));
        assert_eq!(notices, [Notice::Impostor { claimed: "alice".into(), known: "alice".into() }]);
        assert_eq!(state.peers["DEV-EVE"].name_conflict, "alice");
        // A claim that arrives after the peer left lists no ghost.
        state.apply(ev(event::Kind::PeerGone(v1::PeerGone { device_id: "DEV-EVE".into(), ..Default::default() })));
        let late = v1::Peer { device_id: "DEV-EVE".into(), name_conflict: "alice".into(), ..Default::default() };
        state.apply(ev(event::Kind::NameConflict(v1::NameConflict { peer: Some(late), ..Default::default() })));
        assert!(state.peers.is_empty());
    }

    #[test]
    fn peers_come_and_go() {
        let mut state = TrayState::default();
        let peer =
            v1::Peer { device_id: "DEV-BOB".into(), display_name: "bob".into(), online: true, ..Default::default() };
        state.apply(ev(event::Kind::PeerAppeared(v1::PeerAppeared { peer: Some(peer.clone()) })));
        assert_eq!(state.peers["DEV-BOB"].display_name, "bob");
        let renamed = v1::Peer { display_name: "robert".into(), ..peer };
        state.apply(ev(event::Kind::PeerChanged(v1::PeerChanged { peer: Some(renamed) })));
        assert_eq!(state.peers["DEV-BOB"].display_name, "robert");
        state.apply(ev(event::Kind::PeerGone(v1::PeerGone { device_id: "DEV-BOB".into(), ..Default::default() })));
        assert!(state.peers.is_empty());
    }

    #[test]
    fn mute_hold_and_stats_apply_to_known_calls_only() {
        let mut state = ringing_state();
        state.apply(changed(call("c1", CallState::Active)));
        state.apply(ev(event::Kind::MuteChanged(v1::MuteChanged { call_id: "c1".into(), muted: true })));
        state.apply(ev(event::Kind::HoldChanged(v1::HoldChanged {
            call_id: "c1".into(),
            on_hold: true,
            held_here: false,
            held_by_peer: true,
        })));
        let c1 = &state.calls["c1"];
        assert!(c1.muted && c1.on_hold && c1.held_by_peer && !c1.held_here, "{c1:?}");
        state.apply(Update::Stats(Box::new(v1::CallStats {
            call_id: "c1".into(),
            quality: "good".into(),
            ..Default::default()
        })));
        state.apply(Update::Stats(Box::new(v1::CallStats {
            call_id: "other".into(),
            quality: "bad".into(),
            ..Default::default()
        })));
        assert_eq!(state.quality.get("c1").map(String::as_str), Some("good"));
        assert!(!state.quality.contains_key("other"));
        // No audio yet says nothing; the last sample (with the summary) neither.
        for sample in [
            v1::CallStats { call_id: "c1".into(), quality: String::new(), ..Default::default() },
            v1::CallStats {
                call_id: "c1".into(),
                quality: "bad".into(),
                summary: Some(v1::CallSummary::default()),
                ..Default::default()
            },
        ] {
            state.apply(Update::Stats(Box::new(sample)));
            assert_eq!(state.quality.get("c1").map(String::as_str), Some("good"));
        }
    }

    fn failed() -> Update {
        Update::CommandFailed { command: Command::Answer { call_id: "c1".into() }, message: "no such call".into() }
    }

    #[test]
    fn a_refused_command_is_shown_until_something_works() {
        let clears = [
            Update::Connected { status: Box::default(), devices: None, unseen_missed: 0 },
            Update::CommandDone { command: Command::Dial { device_id: "DEV-BOB".into() } },
            changed(call("c2", CallState::Outgoing)),
            ev(event::Kind::MuteChanged(v1::MuteChanged { call_id: "c2".into(), muted: true })),
            ev(event::Kind::AudioDeviceChanged(v1::AudioDeviceChanged::default())),
        ];
        for update in clears {
            let mut state = TrayState::default();
            state.apply(failed());
            assert_eq!(state.last_error.as_deref(), Some("Answer: no such call"));
            state.apply(update.clone());
            assert_eq!(state.last_error, None, "cleared by {update:?}");
        }
    }

    #[test]
    fn peers_coming_and_going_do_not_hide_an_error() {
        let mut state = TrayState::default();
        state.apply(failed());
        let peer = v1::Peer { device_id: "DEV-BOB".into(), online: true, ..Default::default() };
        state.apply(ev(event::Kind::PeerAppeared(v1::PeerAppeared { peer: Some(peer) })));
        state.apply(ev(event::Kind::PeerGone(v1::PeerGone { device_id: "DEV-BOB".into(), ..Default::default() })));
        assert_eq!(state.last_error.as_deref(), Some("Answer: no such call"));
        state.apply(ev(event::Kind::Error(v1::DaemonError { call_id: String::new(), message: "disk full".into() })));
        assert_eq!(state.last_error.as_deref(), Some("disk full"), "a daemon error replaces it");
    }

    #[test]
    fn a_device_plugged_in_is_offered_at_once() {
        let device = |id: &str| v1::AudioDevice { id: id.into(), ..Default::default() };
        let mut state = TrayState::default();
        state.apply(Update::Connected {
            status: Box::default(),
            devices: Some(v1::ListAudioDevicesResponse {
                inputs: vec![device("device:mic")],
                outputs: vec![device("device:speakers")],
                virtual_endpoints: vec!["silence".into()],
            }),
            unseen_missed: 0,
        });
        state.apply(ev(event::Kind::AudioDevicesChanged(v1::AudioDevicesChanged {
            inputs: vec![device("device:mic"), device("device:headset.monitor")],
            outputs: vec![device("device:speakers"), device("device:headset")],
        })));
        let devices = state.devices.unwrap();
        let ids: Vec<&str> = devices.outputs.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["device:speakers", "device:headset"]);
        assert_eq!(devices.inputs.len(), 2);
        assert_eq!(devices.virtual_endpoints, ["silence"]);
    }
}
