//! From the daemon's own types to the API's messages.

use std::time::{Duration, SystemTime};

use voicelink_proto::v1;

use crate::call::{CallRecord, Direction, EndReason, State};
use crate::discovery::{GoneReason, PeerChange, PeerRecord};
use crate::events::{self, Change, Published, Resync};

pub(super) fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    time.into()
}

pub(super) fn duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(duration).unwrap_or(prost_types::Duration { seconds: i64::MAX, nanos: 0 })
}

pub(super) fn peer(record: &PeerRecord) -> v1::Peer {
    v1::Peer {
        device_id: record.device_id.to_string(),
        display_name: record.display_name.clone(),
        addresses: record.addresses.iter().map(ToString::to_string).collect(),
        signaling_port: u32::from(record.signaling_port),
        protocol_version: record.protocol_version,
        last_seen: Some(timestamp(record.last_seen)),
        online: record.online,
        known: record.known,
    }
}

pub(super) fn snapshot(state: &events::State, why: Resync) -> v1::Event {
    v1::Event {
        time: Some(timestamp(SystemTime::now())),
        sequence: state.sequence,
        kind: Some(v1::event::Kind::Snapshot(v1::Snapshot {
            peers: state.peers.values().map(peer).collect(),
            calls: state.calls.values().map(call).collect(),
            reason: match why {
                Resync::Subscribed => "subscribed",
                Resync::Lagged => "lagged",
            }
            .into(),
        })),
    }
}

pub(super) fn event(published: &Published) -> v1::Event {
    use v1::event::Kind;
    let kind = match &published.change {
        Change::Peer(PeerChange::Appeared(record)) => Kind::PeerAppeared(v1::PeerAppeared { peer: Some(peer(record)) }),
        Change::Peer(PeerChange::Changed(record)) => Kind::PeerChanged(v1::PeerChanged { peer: Some(peer(record)) }),
        Change::Peer(PeerChange::Gone { device_id, display_name, reason }) => Kind::PeerGone(v1::PeerGone {
            device_id: device_id.to_string(),
            display_name: display_name.clone(),
            reason: match reason {
                GoneReason::Goodbye => v1::PeerGoneReason::Goodbye,
                GoneReason::Expired => v1::PeerGoneReason::Expired,
            }
            .into(),
        }),
        Change::CallStarted(record) if record.direction == Direction::Incoming => {
            Kind::IncomingCall(v1::IncomingCall { call: Some(call(record)) })
        }
        Change::CallStarted(record) => Kind::CallStateChanged(v1::CallStateChanged {
            call: Some(call(record)),
            previous_state: v1::CallState::Unspecified.into(),
        }),
        Change::CallState { call: record, previous } => Kind::CallStateChanged(v1::CallStateChanged {
            call: Some(call(record)),
            previous_state: state(*previous).into(),
        }),
        Change::CallMuted(record) => {
            Kind::MuteChanged(v1::MuteChanged { call_id: record.id.to_string(), muted: record.muted })
        }
        Change::CallHeld(record) => {
            Kind::HoldChanged(v1::HoldChanged { call_id: record.id.to_string(), on_hold: record.on_hold })
        }
        Change::AudioDefaults { input, output } => Kind::AudioDeviceChanged(v1::AudioDeviceChanged {
            audio_input: input.to_string(),
            audio_output: output.to_string(),
        }),
    };
    v1::Event { time: Some(timestamp(published.time)), sequence: published.sequence, kind: Some(kind) }
}

fn state(state: State) -> v1::CallState {
    match state {
        State::Outgoing => v1::CallState::Outgoing,
        State::Incoming => v1::CallState::Incoming,
        State::Connecting => v1::CallState::Connecting,
        State::Active => v1::CallState::Active,
        State::OnHold => v1::CallState::OnHold,
        State::Ended => v1::CallState::Ended,
    }
}

fn end_reason(reason: Option<&EndReason>) -> (v1::EndReason, String) {
    match reason {
        None => (v1::EndReason::Unspecified, String::new()),
        Some(EndReason::HungUpLocal) => (v1::EndReason::HungUpLocal, String::new()),
        Some(EndReason::HungUpRemote) => (v1::EndReason::HungUpRemote, String::new()),
        Some(EndReason::Declined(why)) => (v1::EndReason::Declined, why.clone()),
        Some(EndReason::Busy) => (v1::EndReason::Busy, String::new()),
        Some(EndReason::NoAnswer) => (v1::EndReason::NoAnswer, String::new()),
        Some(EndReason::Cancelled) => (v1::EndReason::Cancelled, String::new()),
        Some(EndReason::Failed(cause)) => (v1::EndReason::Failed, cause.to_string()),
        Some(EndReason::PeerLost) => (v1::EndReason::PeerLost, String::new()),
    }
}

pub(super) fn call(record: &CallRecord) -> v1::Call {
    let (reason, detail) = end_reason(record.end_reason.as_ref());
    v1::Call {
        call_id: record.id.to_string(),
        peer_device_id: record.peer.map(|p| p.to_string()).unwrap_or_default(),
        peer_display_name: record.peer_name.clone(),
        direction: match record.direction {
            Direction::Outgoing => v1::CallDirection::Outgoing,
            Direction::Incoming => v1::CallDirection::Incoming,
        }
        .into(),
        state: state(record.state).into(),
        started_at: Some(timestamp(record.started_at)),
        answered_at: record.answered_at.map(timestamp),
        muted: record.muted,
        on_hold: record.on_hold,
        end_reason: reason.into(),
        end_detail: detail,
        audio_input: record.input.to_string(),
        audio_output: record.output.to_string(),
    }
}
