//! From the daemon's own types to the API's messages.

use std::time::{Duration, SystemTime};

use voicelink_proto::v1;

use voicelink_core::call_record::CallRecord;
use voicelink_core::contacts::{Contact, Contacts, Standing};
use voicelink_core::device_follow::DeviceInfo;
use voicelink_core::history::{HistoryEntry, Outcome};
use voicelink_core::peer_table::{GoneReason, PeerChange};
use voicelink_core::stats::{CallStats, GroupStats};
use voicelink_core::vocab::{Direction, EndReason, PeerRecord, State};
use voicelink_core::voice_processing::ProcessingChange;

use crate::events::{self, Change, Published, Resync};

pub(super) fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    time.into()
}

pub(super) fn duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(duration).unwrap_or(prost_types::Duration { seconds: i64::MAX, nanos: 0 })
}

/// A peer, with what this device knows about it.
pub(super) fn peer(record: &PeerRecord, contacts: &Contacts) -> v1::Peer {
    let contact = contacts.get(&record.device_id);
    let standing = contact.map(|c| c.standing);
    v1::Peer {
        device_id: record.device_id.to_string(),
        display_name: record.display_name.clone(),
        addresses: record.addresses.iter().map(ToString::to_string).collect(),
        signaling_port: u32::from(record.signaling_port),
        protocol_version: record.protocol_version,
        last_seen: Some(timestamp(record.last_seen)),
        online: record.online,
        known: contact.is_some(),
        trusted: standing == Some(Standing::Trusted),
        blocked: standing == Some(Standing::Blocked),
        verified: contact.is_some_and(|c| c.verified),
        alias: contact.and_then(|c| c.alias.clone()).unwrap_or_default(),
        name_conflict: contacts
            .name_claimed_by_other(&record.device_id, &record.display_name)
            .map(Contact::label)
            .unwrap_or_default(),
        advert_signed: record.signed,
    }
}

/// A call, with the warning its peer's name calls for: a name that belongs to
/// another device we know.
pub(super) fn flagged_call(record: &CallRecord, contacts: &Contacts) -> v1::Call {
    let mut flagged = call(record);
    if let Some(peer) = record.peer {
        flagged.peer_name_conflict =
            contacts.name_claimed_by_other(&peer, &record.peer_name).map(Contact::label).unwrap_or_default();
    }
    flagged
}

/// A known device.
pub(super) fn contact(contact: &Contact) -> v1::Contact {
    v1::Contact {
        device_id: contact.device_id.to_string(),
        names: contact.names.clone(),
        alias: contact.alias.clone().unwrap_or_default(),
        standing: contact.standing.as_str().to_owned(),
        verified: contact.verified,
        first_seen: Some(timestamp(contact.first_seen)),
        last_seen: Some(timestamp(contact.last_seen)),
    }
}

/// A call in the history.
pub(super) fn history_entry(entry: &HistoryEntry) -> v1::HistoryEntry {
    let outcome = match entry.outcome {
        None => v1::CallOutcome::InProgress,
        Some(Outcome::Answered) => v1::CallOutcome::Answered,
        Some(Outcome::Missed) => v1::CallOutcome::Missed,
        Some(Outcome::Declined) => v1::CallOutcome::Declined,
        Some(Outcome::Busy) => v1::CallOutcome::Busy,
        Some(Outcome::NotAnswered) => v1::CallOutcome::NotAnswered,
        Some(Outcome::Blocked) => v1::CallOutcome::Blocked,
        Some(Outcome::DoNotDisturb) => v1::CallOutcome::DoNotDisturb,
        Some(Outcome::NotAllowed) => v1::CallOutcome::NotAllowed,
        Some(Outcome::Failed) => v1::CallOutcome::Failed,
        Some(Outcome::Interrupted) => v1::CallOutcome::Interrupted,
    };
    v1::HistoryEntry {
        call_id: entry.call_id.to_string(),
        peer_device_id: entry.peer.map(|p| p.to_string()).unwrap_or_default(),
        peer_display_name: entry.peer_name.clone(),
        direction: match entry.direction {
            Direction::Outgoing => v1::CallDirection::Outgoing,
            Direction::Incoming => v1::CallDirection::Incoming,
        }
        .into(),
        started_at: Some(timestamp(entry.started_at)),
        setup_time: entry.setup.map(duration),
        talk_time: Some(duration(entry.talk)),
        outcome: outcome.into(),
        detail: entry.detail.clone(),
        mos: entry.mos,
        loss: entry.loss,
        round_trip_ms: entry.round_trip.map(|d| d.as_secs_f64() * 1000.0),
    }
}

pub(super) fn snapshot(state: &events::State, why: Resync, contacts: &Contacts) -> v1::Event {
    v1::Event {
        time: Some(timestamp(SystemTime::now())),
        sequence: state.sequence,
        kind: Some(v1::event::Kind::Snapshot(v1::Snapshot {
            peers: state.peers.values().map(|p| peer(p, contacts)).collect(),
            calls: state.calls.values().map(|c| flagged_call(c, contacts)).collect(),
            reason: match why {
                Resync::Subscribed => "subscribed",
                Resync::Lagged => "lagged",
            }
            .into(),
        })),
    }
}

pub(super) fn event(published: &Published, contacts: &Contacts) -> v1::Event {
    use v1::event::Kind;
    let kind = match &published.change {
        Change::Peer(PeerChange::Appeared(record)) => {
            Kind::PeerAppeared(v1::PeerAppeared { peer: Some(peer(record, contacts)) })
        }
        Change::Peer(PeerChange::Changed(record)) => {
            Kind::PeerChanged(v1::PeerChanged { peer: Some(peer(record, contacts)) })
        }
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
            Kind::IncomingCall(v1::IncomingCall { call: Some(flagged_call(record, contacts)) })
        }
        Change::CallStarted(record) => Kind::CallStateChanged(v1::CallStateChanged {
            call: Some(flagged_call(record, contacts)),
            previous_state: v1::CallState::Unspecified.into(),
            stats: None,
        }),
        Change::CallState { call: record, previous, stats } => Kind::CallStateChanged(v1::CallStateChanged {
            call: Some(flagged_call(record, contacts)),
            previous_state: state(*previous).into(),
            stats: stats.as_deref().map(call_stats),
        }),
        Change::CallMuted(record) => {
            Kind::MuteChanged(v1::MuteChanged { call_id: record.id.to_string(), muted: record.muted })
        }
        Change::CallSpeakerMuted(record) => Kind::SpeakerMuteChanged(v1::SpeakerMuteChanged {
            call_id: record.id.to_string(),
            muted: record.speaker_muted,
        }),
        Change::CallJoinedGroup(record) => {
            Kind::CallJoinedGroup(v1::CallJoinedGroup { call: Some(flagged_call(record, contacts)) })
        }
        Change::CallProcessing(record) => Kind::AudioProcessingChanged(v1::AudioProcessingChanged {
            call_id: record.id.to_string(),
            processing: Some(processing(record.processing)),
        }),
        Change::CallHeld(record) => Kind::HoldChanged(v1::HoldChanged {
            call_id: record.id.to_string(),
            on_hold: record.on_hold,
            held_here: record.held_here,
            held_by_peer: record.held_by_peer,
        }),
        Change::CallRecording { call: record, error } => Kind::RecordingChanged(v1::RecordingChanged {
            call_id: record.id.to_string(),
            recording: record.recording.is_some(),
            recording_file: record.recording.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            recorded_by_peer: record.recorded_by_peer,
            error: error.clone().unwrap_or_default(),
        }),
        Change::Policy { who_may_ring, auto_answer, do_not_disturb } => Kind::PolicyChanged(v1::PolicyChanged {
            who_may_ring: who_may_ring.to_string(),
            auto_answer: auto_answer.to_string(),
            do_not_disturb: *do_not_disturb,
        }),
        Change::NameConflict { peer: record, known } => Kind::NameConflict(v1::NameConflict {
            peer: Some(peer(record, contacts)),
            known_device_id: known.to_string(),
        }),
        Change::Problem(message) => Kind::Error(v1::DaemonError { call_id: String::new(), message: message.clone() }),
        Change::HistoryAdded(entry) => Kind::HistoryAdded(v1::HistoryAdded { entry: Some(history_entry(entry)) }),
        Change::AudioDefaults { input, output } => Kind::AudioDeviceChanged(v1::AudioDeviceChanged {
            audio_input: input.to_string(),
            audio_output: output.to_string(),
        }),
        Change::AudioDevices(list) => Kind::AudioDevicesChanged(v1::AudioDevicesChanged {
            inputs: list.inputs.iter().map(audio_device).collect(),
            outputs: list.outputs.iter().map(audio_device).collect(),
        }),
        Change::CallDeviceMoved { call_id, moved } => Kind::CallAudioDeviceMoved(v1::CallAudioDeviceMoved {
            call_id: call_id.to_string(),
            direction: moved.direction.word().into(),
            device: moved.device.as_ref().map(|name| format!("device:{name}")).unwrap_or_default(),
            reason: moved.reason.to_string(),
        }),
    };
    v1::Event { time: Some(timestamp(published.time)), sequence: published.sequence, kind: Some(kind) }
}

/// A sound device as the API lists it.
pub fn audio_device(device: &DeviceInfo) -> v1::AudioDevice {
    v1::AudioDevice {
        id: format!("device:{}", device.name),
        description: device.description.clone(),
        is_default: device.is_default,
        sample_rates: device.sample_rates.clone(),
    }
}

fn state(state: State) -> v1::CallState {
    match state {
        State::Outgoing => v1::CallState::Outgoing,
        State::Incoming => v1::CallState::Incoming,
        State::Connecting => v1::CallState::Connecting,
        State::Active => v1::CallState::Active,
        State::OnHold => v1::CallState::OnHold,
        State::Reconnecting => v1::CallState::Reconnecting,
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
        Some(EndReason::Blocked) => (v1::EndReason::Blocked, String::new()),
        Some(EndReason::DoNotDisturb) => (v1::EndReason::DoNotDisturb, String::new()),
        Some(EndReason::NotAllowed) => (v1::EndReason::NotAllowed, String::new()),
    }
}

/// A group call's totals: a `CallStats` with no call ID, its group ID, and
/// how many people are in it.
pub(super) fn group_stats(group: &GroupStats) -> v1::CallStats {
    v1::CallStats {
        call_id: String::new(),
        group_id: group.group.to_string(),
        participants: u32::try_from(group.participants).unwrap_or(u32::MAX),
        ..call_stats(&group.totals)
    }
}

pub(super) fn call_stats(stats: &CallStats) -> v1::CallStats {
    let millis = |duration: Duration| duration.as_secs_f64() * 1000.0;
    let codec = &stats.codec;
    v1::CallStats {
        call_id: stats.call_id.to_string(),
        peer_device_id: stats.peer.map(|p| p.to_string()).unwrap_or_default(),
        peer_display_name: stats.peer_name.clone(),
        state: state(stats.state).into(),
        duration: Some(duration(stats.duration)),
        codec: Some(v1::CodecInfo {
            name: codec.name.to_owned(),
            clock_rate: codec.clock_rate,
            channels: codec.channels,
            target_bitrate_bps: codec.target_bitrate_bps,
            frame_size: Some(duration(codec.frame)),
            fec: codec.fec,
            dtx: codec.dtx,
        }),
        packets_sent: stats.packets_sent,
        bytes_sent: stats.bytes_sent,
        packets_received: stats.packets_received,
        bytes_received: stats.bytes_received,
        packets_lost: stats.packets_lost,
        fraction_lost: stats.fraction_lost,
        remote_packets_lost: stats.remote_packets_lost,
        remote_fraction_lost: stats.remote_fraction_lost,
        jitter_ms: millis(stats.jitter),
        round_trip_time_ms: stats.round_trip.map_or(0.0, |(rtt, _)| millis(rtt)),
        round_trip_time_source: stats.round_trip.map(|(_, source)| source.as_str().to_owned()).unwrap_or_default(),
        jitter_buffer_delay_ms: millis(stats.jitter_buffer_delay),
        jitter_buffer_target_delay_ms: millis(stats.jitter_buffer_target_delay),
        concealed_samples: stats.concealed_samples,
        concealment_events: stats.concealment_events,
        packets_recovered_fec: stats.packets_recovered_fec,
        packets_repaired: stats.packets_repaired,
        packets_resent: stats.packets_resent,
        late_packets: stats.late_packets,
        discarded_packets: stats.discarded_packets,
        audio_level_in_dbfs: stats.audio_level_in_dbfs,
        audio_level_out_dbfs: stats.audio_level_out_dbfs,
        candidate_pair: stats.candidate_pair.as_ref().map(|pair| v1::CandidatePair {
            local_address: pair.local_address.clone(),
            local_type: pair.local_type.clone(),
            remote_address: pair.remote_address.clone(),
            remote_type: pair.remote_type.clone(),
        }),
        mos: stats.mos.unwrap_or(0.0),
        quality: stats.quality.map(|q| q.as_str().to_owned()).unwrap_or_default(),
        group_id: stats.group.as_ref().map(ToString::to_string).unwrap_or_default(),
        participants: 0,
        summary: stats.summary.as_ref().map(|summary| v1::CallSummary {
            setup_time: Some(duration(summary.setup_time)),
            duration: Some(duration(summary.duration)),
            packets_sent: summary.packets_sent,
            packets_received: summary.packets_received,
            packets_lost: summary.packets_lost,
            worst_minute_mos: summary.worst_minute_mos.unwrap_or(0.0),
            end_reason: end_reason(summary.end_reason.as_ref()).0.into(),
        }),
    }
}

fn processing(change: ProcessingChange) -> v1::AudioProcessing {
    let ProcessingChange { echo_cancellation, noise_suppression, gain_control } = change;
    v1::AudioProcessing { echo_cancellation, noise_suppression, gain_control }
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
        speaker_muted: record.speaker_muted,
        processing: Some(processing(record.processing)),
        on_hold: record.on_hold,
        held_here: record.held_here,
        held_by_peer: record.held_by_peer,
        recording: record.recording.is_some(),
        recording_file: record.recording.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        recorded_by_peer: record.recorded_by_peer,
        // Filled in by `flagged_call`, which knows the contacts.
        peer_name_conflict: String::new(),
        end_reason: reason.into(),
        end_detail: detail,
        audio_input: record.input.to_string(),
        audio_output: record.output.to_string(),
        group_id: record.group.as_ref().map(ToString::to_string).unwrap_or_default(),
        waiting: record.waiting,
    }
}

/// A config key as the API shows it.
pub fn config_entry(entry: &crate::settings::ConfigEntry) -> v1::ConfigEntry {
    use voicelink_core::config_keys::Applies;
    let applies = match entry.key.applies {
        Applies::Live => v1::ConfigApplies::Live,
        Applies::NewCalls => v1::ConfigApplies::NewCalls,
        Applies::Restart => v1::ConfigApplies::Restart,
    };
    v1::ConfigEntry {
        key: entry.key.key.to_owned(),
        value: entry.value.clone().unwrap_or_default(),
        pending: entry.pending.clone().unwrap_or_default(),
        applies: applies.into(),
        description: entry.key.doc.to_owned(),
        default_value: entry.key.default.to_owned(),
        overridden_by: entry.overridden_by.unwrap_or_default().to_owned(),
    }
}
