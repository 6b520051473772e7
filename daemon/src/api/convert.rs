//! From the daemon's own types to the API's messages.

use std::time::{Duration, SystemTime};

use voicelink_proto::v1;

use crate::discovery::{GoneReason, PeerChange, PeerRecord};
use crate::events::{Change, Published, Resync, State};

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

pub(super) fn snapshot(state: &State, why: Resync) -> v1::Event {
    v1::Event {
        time: Some(timestamp(SystemTime::now())),
        sequence: state.sequence,
        kind: Some(v1::event::Kind::Snapshot(v1::Snapshot {
            peers: state.peers.values().map(peer).collect(),
            calls: Vec::new(),
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
        Change::AudioDefaults { input, output } => Kind::AudioDeviceChanged(v1::AudioDeviceChanged {
            audio_input: input.to_string(),
            audio_output: output.to_string(),
        }),
    };
    v1::Event { time: Some(timestamp(published.time)), sequence: published.sequence, kind: Some(kind) }
}
