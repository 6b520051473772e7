//! How answers are printed: aligned text for people, JSON for scripts (one object
//! per line, so a stream pipes into `jq`). Enum values print as lower-case words.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use voicelink_proto::v1;

/// Prints in the chosen format.
pub struct Printer {
    /// JSON instead of text.
    pub json: bool,
}

fn time(ts: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    ts.and_then(|ts| SystemTime::try_from(*ts).ok())
}

fn rfc3339(ts: Option<&prost_types::Timestamp>) -> Value {
    time(ts).map_or(Value::Null, |t| humantime::format_rfc3339_millis(t).to_string().into())
}

fn ago(ts: Option<&prost_types::Timestamp>) -> String {
    match time(ts).and_then(|t| SystemTime::now().duration_since(t).ok()) {
        Some(elapsed) => format!("{} ago", humantime::format_duration(Duration::from_secs(elapsed.as_secs()))),
        None => "just now".into(),
    }
}

fn clock(ts: Option<&prost_types::Timestamp>) -> String {
    // HH:MM:SS in UTC, from the RFC 3339 form.
    time(ts).map(|t| humantime::format_rfc3339_seconds(t).to_string()[11..19].to_owned()).unwrap_or_default()
}

fn seconds(duration: Option<&prost_types::Duration>) -> f64 {
    duration.map_or(0.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
}

/// The last word of a protobuf enum name, lower case: `CALL_STATE_ACTIVE` → `active`.
fn word(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_lowercase()
}

/// How a call went, as a word: `CALL_OUTCOME_NOT_ANSWERED` → `not_answered`.
fn outcome_word(outcome: i32) -> String {
    v1::CallOutcome::try_from(outcome).map_or_else(|_| "unknown".into(), |o| word(o.as_str_name(), "CALL_OUTCOME_"))
}

/// What a call from a device that took a known device's name says.
fn impostor_warning(known: &str) -> String {
    format!("claims to be {known}, but is NOT the {known} you know")
}

fn state_word(state: i32) -> String {
    v1::CallState::try_from(state).map_or_else(|_| format!("state-{state}"), |s| word(s.as_str_name(), "CALL_STATE_"))
}

fn short(device_id: &str) -> &str {
    device_id.get(..7).unwrap_or(device_id)
}

fn peer_json(peer: &v1::Peer) -> Value {
    json!({
        "device_id": peer.device_id,
        "display_name": peer.display_name,
        "addresses": peer.addresses,
        "signaling_port": peer.signaling_port,
        "protocol_version": peer.protocol_version,
        "last_seen": rfc3339(peer.last_seen.as_ref()),
        "online": peer.online,
        "known": peer.known,
        "trusted": peer.trusted,
        "blocked": peer.blocked,
        "verified": peer.verified,
        "alias": peer.alias,
        "name_conflict": peer.name_conflict,
        "advert_signed": peer.advert_signed,
    })
}

/// Every field of a stats sample, named as in the proto.
fn stats_json(stats: &v1::CallStats) -> Value {
    let codec = stats.codec.clone().unwrap_or_default();
    let pair = stats.candidate_pair.clone().unwrap_or_default();
    json!({
        "call_id": stats.call_id,
        "group_id": stats.group_id,
        "participants": stats.participants,
        "peer_device_id": stats.peer_device_id,
        "peer_display_name": stats.peer_display_name,
        "state": state_word(stats.state),
        "duration_seconds": seconds(stats.duration.as_ref()),
        "codec": {
            "name": codec.name,
            "clock_rate": codec.clock_rate,
            "channels": codec.channels,
            "target_bitrate_bps": codec.target_bitrate_bps,
            "frame_size_ms": seconds(codec.frame_size.as_ref()) * 1000.0,
            "fec": codec.fec,
            "dtx": codec.dtx,
        },
        "packets_sent": stats.packets_sent,
        "bytes_sent": stats.bytes_sent,
        "packets_received": stats.packets_received,
        "bytes_received": stats.bytes_received,
        "packets_lost": stats.packets_lost,
        "fraction_lost": stats.fraction_lost,
        "remote_packets_lost": stats.remote_packets_lost,
        "remote_fraction_lost": stats.remote_fraction_lost,
        "jitter_ms": stats.jitter_ms,
        "round_trip_time_ms": stats.round_trip_time_ms,
        "round_trip_time_source": stats.round_trip_time_source,
        "jitter_buffer_delay_ms": stats.jitter_buffer_delay_ms,
        "jitter_buffer_target_delay_ms": stats.jitter_buffer_target_delay_ms,
        "concealed_samples": stats.concealed_samples,
        "concealment_events": stats.concealment_events,
        "packets_recovered_fec": stats.packets_recovered_fec,
        "packets_repaired": stats.packets_repaired,
        "packets_resent": stats.packets_resent,
        "late_packets": stats.late_packets,
        "discarded_packets": stats.discarded_packets,
        "audio_level_in_dbfs": stats.audio_level_in_dbfs,
        "audio_level_out_dbfs": stats.audio_level_out_dbfs,
        "candidate_pair": stats.candidate_pair.as_ref().map(|_| json!({
            "local_address": pair.local_address,
            "local_type": pair.local_type,
            "remote_address": pair.remote_address,
            "remote_type": pair.remote_type,
        })),
        "mos": stats.mos,
        "quality": stats.quality,
        "summary": stats.summary.as_ref().map(|summary| json!({
            "setup_time_ms": seconds(summary.setup_time.as_ref()) * 1000.0,
            "duration_seconds": seconds(summary.duration.as_ref()),
            "packets_sent": summary.packets_sent,
            "packets_received": summary.packets_received,
            "packets_lost": summary.packets_lost,
            "worst_minute_mos": summary.worst_minute_mos,
            "end_reason": v1::EndReason::try_from(summary.end_reason)
                .map_or_else(|_| "unknown".into(), |r| word(r.as_str_name(), "END_REASON_")),
        })),
    })
}

fn processing_json(p: &v1::AudioProcessing) -> Value {
    json!({
        "echo_cancellation": p.echo_cancellation,
        "noise_suppression": p.noise_suppression,
        "gain_control": p.gain_control,
    })
}

/// The stages a call has its own setting for, for people ("echo off, gain on");
/// empty when it follows the config.
fn processing_words(p: &v1::AudioProcessing) -> String {
    let set: Vec<String> = [(p.echo_cancellation, "echo"), (p.noise_suppression, "noise"), (p.gain_control, "gain")]
        .into_iter()
        .filter_map(|(on, name)| on.map(|on| format!("{name} {}", if on { "on" } else { "off" })))
        .collect();
    set.join(", ")
}

fn call_json(call: &v1::Call) -> Value {
    json!({
        "call_id": call.call_id,
        "peer_device_id": call.peer_device_id,
        "peer_display_name": call.peer_display_name,
        "direction": v1::CallDirection::try_from(call.direction).map_or_else(|_| "unknown".into(), |d| word(d.as_str_name(), "CALL_DIRECTION_")),
        "state": state_word(call.state),
        "started_at": rfc3339(call.started_at.as_ref()),
        "answered_at": rfc3339(call.answered_at.as_ref()),
        "muted": call.muted,
        "speaker_muted": call.speaker_muted,
        "processing": call.processing.as_ref().map(processing_json),
        "on_hold": call.on_hold,
        "held_here": call.held_here,
        "held_by_peer": call.held_by_peer,
        "recording": call.recording,
        "recording_file": call.recording_file,
        "recorded_by_peer": call.recorded_by_peer,
        "peer_name_conflict": call.peer_name_conflict,
        "end_reason": v1::EndReason::try_from(call.end_reason).map_or_else(|_| "unknown".into(), |r| word(r.as_str_name(), "END_REASON_")),
        "end_detail": call.end_detail,
        "audio_input": call.audio_input,
        "audio_output": call.audio_output,
        "group_id": call.group_id,
        "waiting": call.waiting,
    })
}

fn peer_line(peer: &v1::Peer) -> String {
    format!(
        "{} ({}) at {} port {}",
        peer.display_name,
        short(&peer.device_id),
        peer.addresses.join(", "),
        peer.signaling_port
    )
}

fn call_line(call: &v1::Call) -> String {
    let mut flags = Vec::new();
    if call.muted {
        flags.push("muted");
    }
    if call.speaker_muted {
        flags.push("speaker off");
    }
    let processing = call.processing.as_ref().map(processing_words).unwrap_or_default();
    if !processing.is_empty() {
        flags.push(&processing);
    }
    if call.waiting {
        flags.push("waiting: answer holds the call in progress, answer --merge joins it");
    }
    if call.on_hold {
        flags.push("on hold");
    }
    if call.recording {
        flags.push("recording");
    }
    if call.recorded_by_peer {
        flags.push("RECORDED BY THE PEER");
    }
    let group = format!("in group call {}", call.group_id);
    if !call.group_id.is_empty() {
        flags.push(&group);
    }
    let impostor = impostor_warning(&call.peer_name_conflict);
    if !call.peer_name_conflict.is_empty() {
        flags.push(&impostor);
    }
    format!(
        "{}  {} {}  {}{}",
        call.call_id,
        state_word(call.state),
        call.peer_display_name,
        short(&call.peer_device_id),
        if flags.is_empty() { String::new() } else { format!("  [{}]", flags.join(", ")) }
    )
}

impl Printer {
    fn print_json(&self, value: Value) {
        println!("{value}");
    }

    /// `voicectl status`
    pub fn status(&self, status: &v1::Status) {
        if self.json {
            return self.print_json(json!({
                "version": status.version,
                "device_id": status.device_id,
                "display_name": status.display_name,
                "uptime_seconds": seconds(status.uptime.as_ref()),
                "signaling_addresses": status.signaling_addresses,
                "signaling_port": status.signaling_port,
                "protocol_version": status.protocol_version,
                "audio_input": status.audio_input,
                "audio_output": status.audio_output,
                "discovery_enabled": status.discovery_enabled,
                "history_problem": status.history_problem,
                "history_database": status.history_database,
                "who_may_ring": status.who_may_ring,
                "do_not_disturb": status.do_not_disturb,
                "auto_answer": status.auto_answer,
            }));
        }
        let uptime = Duration::from_secs(seconds(status.uptime.as_ref()) as u64);
        println!("voiced {}  (protocol {})", status.version, status.protocol_version);
        println!("name       {}", status.display_name);
        println!("device ID  {}", status.device_id);
        println!("uptime     {}", humantime::format_duration(uptime));
        println!("signaling  {} (port {})", status.signaling_addresses.join(", "), status.signaling_port);
        println!("discovery  {}", if status.discovery_enabled { "mDNS on" } else { "off" });
        println!("audio      in: {}  out: {}", status.audio_input, status.audio_output);
        let dnd = if status.do_not_disturb { "  DO NOT DISTURB" } else { "" };
        println!("calls      who may ring: {}{dnd}  auto-answer: {}", status.who_may_ring, status.auto_answer);
        let database = if status.history_database.is_empty() { "no database" } else { &status.history_database };
        if status.history_problem.is_empty() {
            println!("history    kept in {database}");
        } else {
            println!("history    {database}: PROBLEM: {}", status.history_problem);
        }
    }

    /// `voicectl peers`
    pub fn peers(&self, peers: &[v1::Peer]) {
        if self.json {
            return self.print_json(Value::Array(peers.iter().map(peer_json).collect()));
        }
        if peers.is_empty() {
            println!("No peers seen yet. Peers on the same LAN appear within seconds; see README, Troubleshooting.");
            return;
        }
        let name_width = peers.iter().map(|p| p.display_name.chars().count()).max().unwrap_or(4).max(4);
        println!("{:name_width$}  DEVICE   STATUS   PORT   LAST SEEN          ADDRESSES", "NAME");
        let (mut impostors, mut unsigned) = (false, false);
        for peer in peers {
            let mut marks = Vec::new();
            if !peer.name_conflict.is_empty() {
                impostors = true;
                marks.push(format!("!! NOT the {} you know", peer.name_conflict));
            }
            if !peer.alias.is_empty() {
                marks.push(format!("\"{}\"", peer.alias));
            }
            for (flag, word) in [(peer.verified, "verified"), (peer.trusted, "trusted"), (peer.blocked, "blocked")] {
                if flag {
                    marks.push(word.to_owned());
                }
            }
            if peer.known && marks.is_empty() {
                marks.push("known".to_owned());
            }
            if !peer.advert_signed {
                unsigned = true;
                marks.push("unverified advert".to_owned());
            }
            println!(
                "{:name_width$}  {}  {:7}  {:5}  {:17}  {}{}",
                peer.display_name,
                short(&peer.device_id),
                if peer.online { "online" } else { "offline" },
                peer.signaling_port,
                ago(peer.last_seen.as_ref()),
                peer.addresses.join(", "),
                if marks.is_empty() { String::new() } else { format!("  [{}]", marks.join(", ")) }
            );
        }
        if impostors {
            println!(
                "!! marks a device that uses the name of another device you know, with a different key: it is \
                 not that device (a new install, or an impostor). Dialing the name reaches the one you know."
            );
        }
        if unsigned {
            println!(
                "\"unverified advert\": an older voicelink that does not sign its adverts; anyone on the LAN could \
                 forge its name, port or departure."
            );
        }
    }

    /// A call after a verb acted on it.
    pub fn call(&self, call: Option<&v1::Call>) {
        match call {
            Some(call) if self.json => self.print_json(call_json(call)),
            Some(call) => println!("{}", call_line(call)),
            None => self.done("ok"),
        }
    }

    /// `voicectl level`: one reading, with a bar from -60 to 0 dBFS.
    pub fn input_level(&self, level: &v1::InputLevel) {
        if self.json {
            return self.print_json(json!({
                "input": level.input,
                "level_dbfs": level.level_dbfs,
                "peak_dbfs": level.peak_dbfs,
            }));
        }
        const WIDTH: f64 = 30.0;
        let filled = (((level.level_dbfs + 60.0) / 60.0).clamp(0.0, 1.0) * WIDTH).round() as usize;
        let bar = format!("{}{}", "#".repeat(filled), ".".repeat(WIDTH as usize - filled));
        println!("{:>6.1} dBFS  peak {:>6.1}  {bar}", level.level_dbfs.max(-99.9), level.peak_dbfs.max(-99.9));
    }

    /// A verb that returns nothing.
    pub fn done(&self, what: &str) {
        if self.json {
            self.print_json(json!({ "result": what }));
        } else {
            println!("{what}");
        }
    }

    /// `voicectl calls`
    pub fn calls(&self, calls: &[v1::Call]) {
        if self.json {
            return self.print_json(Value::Array(calls.iter().map(call_json).collect()));
        }
        if calls.is_empty() {
            println!("No calls.");
        }
        for call in calls {
            println!("{}", call_line(call));
        }
    }

    /// One event of `voicectl events`.
    pub fn event(&self, event: &v1::Event) {
        use v1::event::Kind;
        let Some(kind) = &event.kind else { return };
        if self.json {
            let (name, body) = match kind {
                Kind::Snapshot(s) => (
                    "snapshot",
                    json!({
                        "peers": s.peers.iter().map(peer_json).collect::<Vec<_>>(),
                        "calls": s.calls.iter().map(call_json).collect::<Vec<_>>(),
                        "reason": s.reason,
                    }),
                ),
                Kind::PeerAppeared(e) => ("peer_appeared", json!({ "peer": e.peer.as_ref().map(peer_json) })),
                Kind::PeerChanged(e) => ("peer_changed", json!({ "peer": e.peer.as_ref().map(peer_json) })),
                Kind::PeerGone(e) => (
                    "peer_gone",
                    json!({
                        "device_id": e.device_id,
                        "display_name": e.display_name,
                        "reason": v1::PeerGoneReason::try_from(e.reason).map_or_else(|_| "unknown".into(), |r| word(r.as_str_name(), "PEER_GONE_REASON_")),
                    }),
                ),
                Kind::IncomingCall(e) => ("incoming_call", json!({ "call": e.call.as_ref().map(call_json) })),
                Kind::CallStateChanged(e) => (
                    "call_state_changed",
                    json!({
                        "call": e.call.as_ref().map(call_json),
                        "previous_state": state_word(e.previous_state),
                        "stats": e.stats.as_ref().map(stats_json),
                    }),
                ),
                Kind::MuteChanged(e) => ("mute_changed", json!({ "call_id": e.call_id, "muted": e.muted })),
                Kind::CallJoinedGroup(e) => ("call_joined_group", json!({ "call": e.call.as_ref().map(call_json) })),
                Kind::SpeakerMuteChanged(e) => {
                    ("speaker_mute_changed", json!({ "call_id": e.call_id, "muted": e.muted }))
                }
                Kind::AudioProcessingChanged(e) => (
                    "audio_processing_changed",
                    json!({ "call_id": e.call_id, "processing": e.processing.as_ref().map(processing_json) }),
                ),
                Kind::HoldChanged(e) => (
                    "hold_changed",
                    json!({ "call_id": e.call_id, "on_hold": e.on_hold, "held_here": e.held_here, "held_by_peer": e.held_by_peer }),
                ),
                Kind::RecordingChanged(e) => (
                    "recording_changed",
                    json!({
                        "call_id": e.call_id,
                        "recording": e.recording,
                        "recording_file": e.recording_file,
                        "recorded_by_peer": e.recorded_by_peer,
                        "error": e.error,
                    }),
                ),
                Kind::PolicyChanged(e) => (
                    "policy_changed",
                    json!({ "who_may_ring": e.who_may_ring, "auto_answer": e.auto_answer, "do_not_disturb": e.do_not_disturb }),
                ),
                Kind::HistoryAdded(e) => ("history_added", json!({ "entry": e.entry.as_ref().map(history_json) })),
                Kind::AudioDeviceChanged(e) => {
                    ("audio_device_changed", json!({ "audio_input": e.audio_input, "audio_output": e.audio_output }))
                }
                Kind::AudioDevicesChanged(e) => (
                    "audio_devices_changed",
                    json!({
                        "inputs": e.inputs.iter().map(device_json).collect::<Vec<_>>(),
                        "outputs": e.outputs.iter().map(device_json).collect::<Vec<_>>(),
                    }),
                ),
                Kind::CallAudioDeviceMoved(e) => (
                    "call_audio_device_moved",
                    json!({ "call_id": e.call_id, "direction": e.direction, "device": e.device, "reason": e.reason }),
                ),
                Kind::NameConflict(e) => (
                    "name_conflict",
                    json!({ "peer": e.peer.as_ref().map(peer_json), "known_device_id": e.known_device_id }),
                ),
                Kind::Error(e) => ("error", json!({ "call_id": e.call_id, "message": e.message })),
            };
            return self.print_json(json!({
                "type": name,
                "time": rfc3339(event.time.as_ref()),
                "sequence": event.sequence,
                name: body,
            }));
        }
        let at = clock(event.time.as_ref());
        match kind {
            Kind::Snapshot(s) => {
                let online = s.peers.iter().filter(|p| p.online).count();
                println!("{at} {} peers ({online} online), {} calls", s.peers.len(), s.calls.len());
                for peer in &s.peers {
                    println!("{at}   peer {}: {}", if peer.online { "online" } else { "offline" }, peer_line(peer));
                }
                for call in &s.calls {
                    println!("{at}   call {}", call_line(call));
                }
            }
            Kind::PeerAppeared(e) => {
                println!("{at} peer appeared: {}", e.peer.as_ref().map(peer_line).unwrap_or_default())
            }
            Kind::PeerChanged(e) => {
                if let Some(peer) = &e.peer {
                    println!("{at} peer {}: {}", if peer.online { "changed" } else { "offline" }, peer_line(peer))
                }
            }
            Kind::PeerGone(e) => println!("{at} peer gone: {} ({})", e.display_name, short(&e.device_id)),
            Kind::IncomingCall(e) => {
                if let Some(call) = &e.call {
                    let warning = if call.peer_name_conflict.is_empty() {
                        String::new()
                    } else {
                        format!(" !! {}", impostor_warning(&call.peer_name_conflict))
                    };
                    println!("{at} incoming call from {}: {}{warning}", call.peer_display_name, call.call_id)
                }
            }
            Kind::CallStateChanged(e) => {
                if let Some(call) = &e.call {
                    println!("{at} call {}", call_line(call))
                }
            }
            Kind::MuteChanged(e) => println!("{at} call {} {}", e.call_id, if e.muted { "muted" } else { "unmuted" }),
            Kind::CallJoinedGroup(e) => {
                if let Some(call) = &e.call {
                    println!("{at} call {}", call_line(call))
                }
            }
            Kind::SpeakerMuteChanged(e) => {
                println!("{at} call {} speaker {}", e.call_id, if e.muted { "off" } else { "on" })
            }
            Kind::HoldChanged(e) => {
                println!("{at} call {} {}", e.call_id, if e.on_hold { "on hold" } else { "resumed" })
            }
            Kind::AudioProcessingChanged(e) => {
                let what = e.processing.as_ref().map(processing_words).unwrap_or_default();
                let what = if what.is_empty() { "processing as configured".to_owned() } else { what };
                println!("{at} call {} processing: {what}", e.call_id)
            }
            Kind::RecordingChanged(e) => {
                let ours = match (e.recording, e.error.is_empty()) {
                    (true, _) => format!("recording into {}", e.recording_file),
                    (false, true) => "not recording".to_owned(),
                    (false, false) => format!("recording stopped: {}", e.error),
                };
                let theirs = if e.recorded_by_peer { "; the peer IS RECORDING this call" } else { "" };
                println!("{at} call {} {ours}{theirs}", e.call_id)
            }
            Kind::PolicyChanged(e) => {
                let dnd = if e.do_not_disturb { "  DO NOT DISTURB" } else { "" };
                println!("{at} who may ring: {}  auto-answer: {}{dnd}", e.who_may_ring, e.auto_answer)
            }
            Kind::HistoryAdded(e) => {
                if let Some(entry) = &e.entry {
                    let outcome = outcome_word(entry.outcome).replace('_', " ");
                    println!("{at} history: call {} with {} {outcome}", entry.call_id, entry.peer_display_name)
                }
            }
            Kind::AudioDeviceChanged(e) => println!("{at} audio in: {}  out: {}", e.audio_input, e.audio_output),
            Kind::AudioDevicesChanged(e) => {
                let default = |list: &[v1::AudioDevice]| {
                    list.iter().find(|d| d.is_default).map_or("none".to_owned(), |d| d.id.clone())
                };
                println!(
                    "{at} sound devices: {} inputs (default {}), {} outputs (default {})",
                    e.inputs.len(),
                    default(&e.inputs),
                    e.outputs.len(),
                    default(&e.outputs)
                )
            }
            Kind::CallAudioDeviceMoved(e) => {
                let device = if e.device.is_empty() { "no device" } else { e.device.as_str() };
                println!("{at} call {} {} now on {device}: {}", e.call_id, e.direction, e.reason)
            }
            Kind::NameConflict(e) => {
                if let Some(peer) = &e.peer {
                    println!(
                        "{at} !! peer {} {} (the one you know is {})",
                        peer_line(peer),
                        impostor_warning(&peer.name_conflict),
                        short(&e.known_device_id)
                    )
                }
            }
            Kind::Error(e) => println!("{at} error: {}", e.message),
        }
    }

    /// One sample of `voicectl stats`: a compact line, or every field as JSON.
    pub fn stats(&self, stats: &v1::CallStats) {
        if self.json {
            return self.print_json(stats_json(stats));
        }
        let peer =
            if stats.peer_display_name.is_empty() { short(&stats.peer_device_id) } else { &stats.peer_display_name };
        let duration = seconds(stats.duration.as_ref()) as u64;
        let clock = format!("{:02}:{:02}", duration / 60, duration % 60);
        if stats.call_id.is_empty() {
            // A group call's own entry: totals, and its worst leg's measures.
            let quality = if stats.quality.is_empty() { "-" } else { &stats.quality };
            println!(
                "group call {}  {} people  {} {clock}  sent {} kB  received {} kB  worst: rtt {:.0} ms  jitter {:.1} ms  loss {:.1}% / {:.1}%  mos {:.2} {quality}",
                stats.group_id,
                stats.participants,
                state_word(stats.state),
                stats.bytes_sent / 1000,
                stats.bytes_received / 1000,
                stats.round_trip_time_ms,
                stats.jitter_ms,
                stats.fraction_lost * 100.0,
                stats.remote_fraction_lost * 100.0,
                stats.mos,
            );
            return;
        }
        if let Some(summary) = &stats.summary {
            let reason = v1::EndReason::try_from(summary.end_reason)
                .map_or_else(|_| "unknown".into(), |r| word(r.as_str_name(), "END_REASON_"));
            println!(
                "{} {peer}  ended ({reason})  talked {clock}  setup {:.0} ms  sent {}  received {}  lost {}  worst minute mos {:.2}",
                stats.call_id,
                seconds(summary.setup_time.as_ref()) * 1000.0,
                summary.packets_sent,
                summary.packets_received,
                summary.packets_lost,
                summary.worst_minute_mos,
            );
            return;
        }
        let quality = if stats.quality.is_empty() { "-" } else { &stats.quality };
        println!(
            "{} {peer}  {} {clock}  rtt {:.0} ms ({})  jitter {:.1} ms  loss {:.1}% / {:.1}%  repaired {} / resent {}  {} kb/s  jb {:.0} ms  in {:.0} dBFS  out {:.0} dBFS  mos {:.2} {quality}",
            stats.call_id,
            state_word(stats.state),
            stats.round_trip_time_ms,
            if stats.round_trip_time_source.is_empty() { "-" } else { &stats.round_trip_time_source },
            stats.jitter_ms,
            stats.fraction_lost * 100.0,
            stats.remote_fraction_lost * 100.0,
            stats.packets_repaired,
            stats.packets_resent,
            stats
                .codec
                .as_ref()
                .map_or("-".into(), |codec| format!("{:.0}", f64::from(codec.target_bitrate_bps) / 1000.0)),
            stats.jitter_buffer_delay_ms,
            stats.audio_level_in_dbfs,
            stats.audio_level_out_dbfs,
            stats.mos,
        );
    }

    /// `voicectl devices`
    pub fn devices(&self, devices: &v1::ListAudioDevicesResponse) {
        if self.json {
            return self.print_json(json!({
                "inputs": devices.inputs.iter().map(device_json).collect::<Vec<_>>(),
                "outputs": devices.outputs.iter().map(device_json).collect::<Vec<_>>(),
                "virtual_endpoints": devices.virtual_endpoints,
            }));
        }
        for (title, list) in [("Inputs", &devices.inputs), ("Outputs", &devices.outputs)] {
            println!("{title}:");
            for device in list {
                println!("  {}{}  {}", if device.is_default { "* " } else { "  " }, device.id, device.description);
            }
        }
        println!("Also: {}", devices.virtual_endpoints.join(", "));
    }

    /// `voicectl config get`: `key = value`, and when a change to it applies.
    pub fn config(&self, entries: &[v1::ConfigEntry], path: &str, verbose: bool) {
        if self.json {
            for entry in entries {
                self.print_json(json!({
                    "key": entry.key,
                    "value": entry.value,
                    "pending": entry.pending,
                    "applies": applies_word(entry.applies),
                    "default": entry.default_value,
                    "overridden_by": entry.overridden_by,
                    "description": entry.description,
                    "file": path,
                }));
            }
            return;
        }
        let width = entries.iter().map(|e| e.key.len() + e.value.len().max(9) + 3).max().unwrap_or(0);
        for entry in entries {
            let value = if entry.value.is_empty() { "(not set)" } else { &entry.value };
            let mut notes = vec![format!("applies {}", applies_word(entry.applies))];
            if !entry.pending.is_empty() {
                notes.push(format!("the file says {}: restart voiced to apply it", entry.pending));
            }
            if !entry.overridden_by.is_empty() {
                notes.push(format!("voiced's {} outranks the file", entry.overridden_by));
            }
            println!("{:width$}  # {}", format!("{} = {value}", entry.key), notes.join("; "));
            if verbose {
                println!("    {} Default: {}.", entry.description, entry.default_value);
            }
        }
        if verbose && !path.is_empty() {
            println!("(config file: {path})");
        }
    }

    /// `voicectl config set`: what the key now is and when it takes effect.
    pub fn config_set(&self, entry: Option<&v1::ConfigEntry>, path: &str) {
        let Some(entry) = entry else { return };
        if self.json {
            return self.config(std::slice::from_ref(entry), path, false);
        }
        let restart = v1::ConfigApplies::Restart as i32;
        match () {
            () if !entry.overridden_by.is_empty() => println!(
                "written to {path}, but voiced was started with {}, which outranks the file: {} = {} stays",
                entry.overridden_by, entry.key, entry.value
            ),
            () if entry.applies == restart && !entry.pending.is_empty() => println!(
                "written to {path}: {} = {} takes effect after a restart (now {})",
                entry.key,
                entry.pending,
                if entry.value.is_empty() { "not set" } else { &entry.value }
            ),
            () => println!(
                "{} = {} (written to {path}; applies {})",
                entry.key,
                if entry.value.is_empty() { "(not set)" } else { &entry.value },
                applies_word(entry.applies)
            ),
        }
    }
    /// `voicectl history`
    pub fn history(&self, page: &v1::ListHistoryResponse) {
        if self.json {
            return self.print_json(Value::Array(page.entries.iter().map(history_json).collect()));
        }
        if page.entries.is_empty() {
            println!("No calls.");
        }
        for entry in &page.entries {
            let direction = if entry.direction == v1::CallDirection::Incoming as i32 { "from" } else { "to" };
            let outcome = outcome_word(entry.outcome).replace('_', " ");
            let talk = seconds(entry.talk_time.as_ref());
            let mut line = format!(
                "{}  {direction} {}  {outcome}",
                clock_and_date(entry.started_at.as_ref()),
                entry.peer_display_name
            );
            if talk > 0.0 {
                line.push_str(&format!("  {}", humantime::format_duration(Duration::from_secs(talk.round() as u64))));
            }
            if !entry.detail.is_empty() {
                line.push_str(&format!(" ({})", entry.detail));
            }
            if let Some(mos) = entry.mos {
                line.push_str(&format!("  MOS {mos:.1}"));
            }
            println!("{line}");
        }
        if page.unseen_missed > 0 {
            println!("{} missed call(s) not seen yet (voicectl history --missed)", page.unseen_missed);
        }
    }

    /// `voicectl contacts`
    pub fn contacts(&self, contacts: &[v1::Contact]) {
        if self.json {
            let contacts = contacts.iter().map(|contact| {
                json!({
                    "device_id": contact.device_id,
                    "names": contact.names,
                    "alias": contact.alias,
                    "standing": contact.standing,
                    "verified": contact.verified,
                    "first_seen": rfc3339(contact.first_seen.as_ref()),
                    "last_seen": rfc3339(contact.last_seen.as_ref()),
                })
            });
            return self.print_json(Value::Array(contacts.collect()));
        }
        if contacts.is_empty() {
            println!("No known devices yet: a device becomes known after a call.");
        }
        for contact in contacts {
            let label = if contact.alias.is_empty() {
                contact.names.first().cloned().unwrap_or_default()
            } else {
                format!("{} (alias)", contact.alias)
            };
            let mut flags = vec![contact.standing.clone()];
            if contact.verified {
                flags.push("verified".into());
            }
            println!(
                "{label}  {}  [{}]  names: {}  last seen {}",
                short(&contact.device_id),
                flags.join(", "),
                contact.names.join(", "),
                ago(contact.last_seen.as_ref())
            );
        }
    }

    /// `voicectl verify`
    pub fn verification(&self, verification: &v1::VerifyPeerResponse) {
        if self.json {
            return self.print_json(json!({
                "safety_number": verification.safety_number,
                "peer_device_id": verification.peer_device_id,
                "peer_display_name": verification.peer_display_name,
                "verified": verification.verified,
            }));
        }
        println!("Safety number with {}: {}", verification.peer_display_name, verification.safety_number);
        if verification.verified {
            println!("{} is verified.", verification.peer_display_name);
        } else {
            println!(
                "Read it to each other. If {} sees the same digits, run: voicectl verify --confirm",
                verification.peer_display_name
            );
        }
    }
}

fn applies_word(applies: i32) -> &'static str {
    match v1::ConfigApplies::try_from(applies) {
        Ok(v1::ConfigApplies::Live) => "at once",
        Ok(v1::ConfigApplies::NewCalls) => "to new calls",
        Ok(v1::ConfigApplies::Restart) => "after a restart",
        _ => "(unknown)",
    }
}

fn history_json(entry: &v1::HistoryEntry) -> Value {
    json!({
        "call_id": entry.call_id,
        "peer_device_id": entry.peer_device_id,
        "peer_display_name": entry.peer_display_name,
        "direction": v1::CallDirection::try_from(entry.direction).map_or_else(|_| "unknown".into(), |d| word(d.as_str_name(), "CALL_DIRECTION_")),
        "started_at": rfc3339(entry.started_at.as_ref()),
        "setup_time_ms": entry.setup_time.as_ref().map(|d| seconds(Some(d)) * 1000.0),
        "talk_seconds": seconds(entry.talk_time.as_ref()),
        "outcome": outcome_word(entry.outcome),
        "detail": entry.detail,
        "mos": entry.mos,
        "loss": entry.loss,
        "round_trip_ms": entry.round_trip_ms,
    })
}

/// "2026-11-30 08:12" in UTC.
fn clock_and_date(ts: Option<&prost_types::Timestamp>) -> String {
    time(ts).map(|t| humantime::format_rfc3339_seconds(t).to_string()[..16].replace('T', " ")).unwrap_or_default()
}

fn device_json(device: &v1::AudioDevice) -> Value {
    json!({ "id": device.id, "description": device.description, "is_default": device.is_default })
}
