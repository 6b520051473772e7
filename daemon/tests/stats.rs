//! The live stats feed end to end: real calls between daemons in their own
//! network namespaces, read through the gRPC stream, `voicectl stats` and the
//! event feed. These check that the numbers are true and that subscribers get
//! them, not how fast anything is. Needs root (CI runs as root).

#[path = "support/impaired.rs"]
mod impaired;
#[path = "support/stats_stream.rs"]
mod stats_stream;
mod support;

use std::path::Path;
use std::time::Duration;

use impaired::impaired_pair;
use stats_stream::{channel, next, sample_where, watch};
use support::{DEADLINE, Daemon, Lan, call_is, example_python, two_daemons_in, two_daemons_with};
use voicelink_bench::impairment::Impairment;
use voicelink_bench::relay::{Direction, LinkConfig};
use voicelink_proto::v1::{self, WatchStatsRequest};

const TONE_IN_NULL_OUT: &str = "[audio]\ninput = \"tone:440\"\noutput = \"null\"\n";

fn auto_answer(audio: &str) -> String {
    format!("{audio}[calls]\nauto_answer = true\n")
}

/// Alice dials bob (who answers by himself); returns the call ID once active.
async fn call_up(a: &Daemon) -> String {
    let mut a_events = a.follow_events().await;
    let dialed = a.ctl_json(&["dial", "bob", "--no-wait"]).await;
    let call_id = dialed["call_id"].as_str().unwrap().to_owned();
    a_events.wait_for("the call is active", |e| call_is(e, &call_id, "active")).await;
    call_id
}

fn lan_ip(address: &str) -> bool {
    address.starts_with("10.") || address.starts_with("fd") || address.starts_with('[')
}

#[tokio::test]
async fn on_a_clean_link_stats_read_no_loss_a_short_round_trip_and_end_with_a_summary() {
    require_netns!();
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_daemons_with(&lan, dir.path(), TONE_IN_NULL_OUT, &auto_answer(TONE_IN_NULL_OUT)).await;
    let call_id = call_up(&a).await;
    let mut a_events = a.follow_events().await;
    let mut stream = watch(channel(&a, None).await, &call_id, Duration::from_millis(100)).await;
    // Three seconds of audio and an RTCP round trip.
    let sample = sample_where(&mut stream, "3 s of audio and an RTCP round trip", |s| {
        s.packets_received >= 150 && s.round_trip_time_source == "rtcp"
    })
    .await;
    assert_eq!(sample.call_id, call_id);
    assert_eq!(sample.peer_device_id, b.device_id);
    assert_eq!(sample.peer_display_name, "bob");
    assert_eq!(sample.state, v1::CallState::Active as i32);
    let codec = sample.codec.clone().unwrap();
    assert_eq!((codec.name.as_str(), codec.clock_rate, codec.channels, codec.fec), ("opus", 48_000, 1, true));
    assert_eq!(codec.frame_size, Some(prost_types::Duration { seconds: 0, nanos: 20_000_000 }));
    assert!(sample.packets_sent >= 150 && sample.bytes_sent > sample.packets_sent, "{sample:#?}");
    assert_eq!((sample.packets_lost, sample.fraction_lost), (0, 0.0), "{sample:#?}");
    assert_eq!((sample.remote_packets_lost, sample.remote_fraction_lost), (0, 0.0), "{sample:#?}");
    // A link with no delay: well under a fifth of a second even on a busy machine.
    assert!(sample.round_trip_time_ms > 0.0 && sample.round_trip_time_ms < 200.0, "{sample:#?}");
    assert!(sample.jitter_ms < 20.0, "{sample:#?}");
    // A 440 Hz tone at the generator's level comes in and goes out well above silence.
    assert!(sample.audio_level_in_dbfs > -30.0 && sample.audio_level_out_dbfs > -30.0, "{sample:#?}");
    assert!(sample.jitter_buffer_target_delay_ms > 0.0, "{sample:#?}");
    let pair = sample.candidate_pair.clone().unwrap_or_else(|| panic!("a selected candidate pair: {sample:#?}"));
    assert_eq!(pair.local_type, "host", "{pair:#?}");
    // The peer's host candidate, or the same address learned from its first
    // check before the candidate itself arrived over signaling (peer-reflexive).
    assert!(["host", "prflx"].contains(&pair.remote_type.as_str()), "{pair:#?}");
    assert!(lan_ip(&pair.local_address) && lan_ip(&pair.remote_address), "{pair:#?}");
    assert!(sample.mos > 4.0, "{sample:#?}");
    // A packet that came too late to play is lost to the listener, and on a
    // machine busy with the rest of the suite one may: then "good" is right
    // (here and in the muted phase below, at bob).
    let on_time = |s: &v1::CallStats| -> &'static [&'static str] {
        if s.late_packets == 0 { &["excellent"] } else { &["excellent", "good"] }
    };
    assert!(on_time(&sample).contains(&sample.quality.as_str()), "{sample:#?}");
    assert!(sample.summary.is_none());

    // The one-shot CLI agrees on the call and prints every field as JSON.
    let once = a.ctl_json(&["stats", &call_id]).await;
    assert_eq!(once["call_id"], call_id.as_str());
    assert_eq!(once["codec"]["name"], "opus");
    assert_eq!(once["candidate_pair"]["local_type"], "host");

    // A mute sends silence, not nothing: bob hears silence and counts no loss.
    let mut at_bob = watch(channel(&b, None).await, &call_id, Duration::from_millis(100)).await;
    let before = next(&mut at_bob).await.unwrap().packets_received;
    a.ctl_json(&["mute"]).await;
    let muted = sample_where(&mut at_bob, "2 s of alice muted", |s| {
        s.packets_received >= before + 100 && s.audio_level_in_dbfs < -90.0
    })
    .await;
    assert_eq!((muted.packets_lost, muted.fraction_lost), (0, 0.0), "{muted:#?}");
    assert!(on_time(&muted).contains(&muted.quality.as_str()), "{muted:#?}");

    a.ctl_json(&["hangup"]).await;
    let last = sample_where(&mut stream, "the summary", |s| s.summary.is_some()).await;
    assert_eq!(last.state, v1::CallState::Ended as i32);
    let summary = last.summary.unwrap();
    assert_eq!(summary.end_reason, v1::EndReason::HungUpLocal as i32);
    assert!(summary.duration.is_some_and(|d| d.seconds >= 2), "{summary:#?}");
    assert!(summary.packets_sent >= sample.packets_sent && summary.packets_lost == 0, "{summary:#?}");
    assert!(summary.worst_minute_mos > 4.0, "{summary:#?}");
    assert!(next(&mut stream).await.is_none(), "a one-call stream ends after the summary");

    // The event feed's call-ended event carries the same numbers.
    let ended = a_events.wait_for("the call ended", |e| call_is(e, &call_id, "ended")).await;
    let stats = &ended["call_state_changed"]["stats"];
    assert_eq!(stats["summary"]["end_reason"], "hung_up_local", "{ended:#}");
    assert_eq!(stats["summary"]["packets_sent"], summary.packets_sent);
    // A recently ended call still answers with its last sample.
    let after = a.ctl_json(&["stats", &call_id]).await;
    assert_eq!(after["summary"]["end_reason"], "hung_up_local");
}

#[tokio::test]
async fn subscribers_get_samples_at_once_all_of_them_and_a_slow_one_holds_up_nobody() {
    require_netns!();
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let (a, _b) = two_daemons_with(&lan, dir.path(), TONE_IN_NULL_OUT, &auto_answer(TONE_IN_NULL_OUT)).await;

    // Bad requests are refused with the reason.
    let mut client = v1::voicelink_client::VoicelinkClient::new(channel(&a, None).await);
    let too_fast = Some(prost_types::Duration { seconds: 0, nanos: 50_000_000 });
    let refused = client.watch_stats(WatchStatsRequest { call_id: String::new(), interval: too_fast }).await;
    let status = refused.expect_err("a 50 ms interval is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("between 100 ms and 10 s"), "{status:?}");
    let unknown = client.watch_stats(WatchStatsRequest { call_id: "c0ffee".into(), interval: None }).await;
    assert_eq!(unknown.err().map(|s| s.code()), Some(tonic::Code::NotFound));

    let call_id = call_up(&a).await;
    // A slow subscriber: its flow-control window fills after a few samples and
    // it reads nothing until the end.
    let mut slow = watch(channel(&a, Some(2048)).await, "", Duration::from_millis(100)).await;
    // Mid-call, with a 10 s interval: the first sample comes at once, well
    // before the interval would have passed.
    let mut patient = watch(channel(&a, None).await, &call_id, Duration::from_secs(10)).await;
    let first = tokio::time::timeout(Duration::from_secs(5), next(&mut patient)).await;
    assert!(first.is_ok_and(|s| s.is_some_and(|s| s.call_id == call_id)), "no sample at once");

    // Ten subscribers at once all get samples every interval while the slow one
    // sits on its buffer; the call keeps going (packets keep arriving).
    let mut streams = Vec::new();
    for _ in 0..10 {
        streams.push(watch(channel(&a, None).await, &call_id, Duration::from_millis(100)).await);
    }
    // Long enough for the slow subscriber's buffer in the daemon to fill.
    const SAMPLES: usize = 80;
    let received = futures::future::join_all(streams.iter_mut().map(|stream| async move {
        let mut samples = Vec::new();
        for _ in 0..SAMPLES {
            samples.push(next(stream).await.expect("a sample"));
        }
        samples
    }))
    .await;
    for samples in &received {
        assert!(samples.iter().all(|s| s.call_id == call_id && s.summary.is_none()));
        let durations: Vec<_> = samples.iter().map(|s| s.duration.unwrap_or_default().seconds).collect();
        assert!(durations.windows(2).all(|w| w[0] <= w[1]), "{durations:?}");
        let packets = (samples[0].packets_received, samples[SAMPLES - 1].packets_received);
        assert!(packets.1 > packets.0, "the call went on: {packets:?}");
    }

    a.ctl_json(&["hangup"]).await;
    // Every subscriber gets the summary, then its stream ends.
    for stream in &mut streams {
        let last = sample_where(stream, "the summary", |s| s.summary.is_some()).await;
        assert_eq!(last.call_id, call_id);
        assert!(next(stream).await.is_none());
    }
    // The slow one skipped samples rather than queueing without bound, but it
    // still gets the end: the summary.
    // (It follows every call, so its stream goes on after this one ended.)
    let mut slow_samples = Vec::new();
    while let Some(sample) = next(&mut slow).await {
        let ended = sample.summary.is_some();
        slow_samples.push(sample);
        if ended {
            break;
        }
    }
    assert!(slow_samples.len() < SAMPLES, "{} samples were queued for a client that read none", slow_samples.len());
    let last = slow_samples.last().expect("samples");
    assert!(last.call_id == call_id && last.summary.is_some(), "{last:#?}");
}

#[tokio::test]
async fn with_ten_percent_loss_one_way_both_ends_count_five_to_fifteen_percent_lost_and_most_of_it_resent() {
    require_netns!();
    let pair = impaired_pair(|link| LinkConfig { a_to_b: Impairment::random_loss(0.10), seed: 10, ..link });
    let dir = tempfile::tempdir().unwrap();
    let (a, b) =
        two_daemons_in([pair.a.name(), pair.b.name()], dir.path(), TONE_IN_NULL_OUT, &auto_answer(TONE_IN_NULL_OUT))
            .await;
    let call_id = call_up(&a).await;
    // 10 s of audio at bob, who receives through the loss: what went missing,
    // and how much of it came when he asked again (RFC 4585 NACK).
    let mut at_bob = watch(channel(&b, None).await, &call_id, Duration::from_millis(500)).await;
    let heard = sample_where(&mut at_bob, "10 s of audio at bob", |s| s.packets_received >= 500).await;
    let missing = heard.packets_lost + heard.packets_repaired as i64;
    let before_repair = missing as f64 / (heard.packets_received as i64 + heard.packets_lost) as f64;
    assert!((0.05..=0.15).contains(&before_repair), "bob missed {before_repair:.3}: {heard:#?}");
    assert!(heard.packets_lost < heard.packets_repaired as i64, "retransmission repairs most: {heard:#?}");
    // Alice resent what bob asked for; what she hears is clean.
    let mut at_alice = watch(channel(&a, None).await, &call_id, Duration::from_millis(500)).await;
    let told = sample_where(&mut at_alice, "bob's requests over 10 s of audio", |s| {
        s.packets_resent > 0 && s.duration.is_some_and(|d| d.seconds >= 11)
    })
    .await;
    let resent = told.packets_resent as f64 / told.packets_sent as f64;
    assert!((0.05..=0.15).contains(&resent), "alice resent {resent:.3}: {told:#?}");
    assert!(told.remote_fraction_lost < 0.05, "bob reports what stayed lost: {told:#?}");
    assert_eq!((told.packets_lost, told.fraction_lost, told.packets_repaired), (0, 0.0, 0), "{told:#?}");
    a.ctl_json(&["hangup"]).await;
}

#[tokio::test]
async fn a_queue_building_on_the_path_brings_the_senders_bitrate_down_and_a_clear_path_back_to_the_ceiling() {
    require_netns!();
    let pair = impaired_pair(|link| link);
    let dir = tempfile::tempdir().unwrap();
    let (a, _b) =
        two_daemons_in([pair.a.name(), pair.b.name()], dir.path(), TONE_IN_NULL_OUT, &auto_answer(TONE_IN_NULL_OUT))
            .await;
    let call_id = call_up(&a).await;
    let bitrate = |s: &v1::CallStats| s.codec.as_ref().map_or(0, |codec| codec.target_bitrate_bps);
    let mut at_alice = watch(channel(&a, None).await, &call_id, Duration::from_millis(500)).await;
    // A few clear reports first: the round trip's base is the LAN's, and a
    // clear link carries the configured bitrate.
    sample_where(&mut at_alice, "the configured bitrate over a clear round trip", |s| {
        s.round_trip_time_ms > 0.0 && s.duration.is_some_and(|d| d.seconds >= 3) && bitrate(s) == 48_000
    })
    .await;
    // 200 ms more one way, as a queue filling up would add.
    pair.link.set_impairment(Direction::AToB, Impairment::delay(Duration::from_millis(200)));
    let queued = sample_where(&mut at_alice, "the bitrate coming down", |s| bitrate(s) < 48_000).await;
    assert!(bitrate(&queued) >= 16_000, "never below calls.min_bitrate_kbps: {queued:#?}");
    assert!(queued.round_trip_time_ms >= 150.0, "it came down for the round trip: {queued:#?}");
    pair.link.set_impairment(Direction::AToB, Impairment::CLEAN);
    let back = sample_where(&mut at_alice, "the bitrate back at the ceiling", |s| bitrate(s) == 48_000).await;
    assert!(back.round_trip_time_ms < 150.0, "{back:#?}");
    a.ctl_json(&["hangup"]).await;
}

#[tokio::test]
async fn with_100_ms_added_one_way_the_round_trip_reads_90_to_260_ms() {
    require_netns!();
    let pair = impaired_pair(|link| LinkConfig { a_to_b: Impairment::delay(Duration::from_millis(100)), ..link });
    let dir = tempfile::tempdir().unwrap();
    let (a, b) =
        two_daemons_in([pair.a.name(), pair.b.name()], dir.path(), TONE_IN_NULL_OUT, &auto_answer(TONE_IN_NULL_OUT))
            .await;
    let call_id = call_up(&a).await;
    for (who, daemon) in [("alice", &a), ("bob", &b)] {
        let mut stream = watch(channel(daemon, None).await, &call_id, Duration::from_millis(200)).await;
        let sample = sample_where(&mut stream, "an RTCP round trip", |s| s.round_trip_time_source == "rtcp").await;
        let rtt = sample.round_trip_time_ms;
        assert!((90.0..=260.0).contains(&rtt), "{who} reads {rtt:.1} ms: {sample:#?}");
        assert_eq!(sample.packets_lost, 0, "{sample:#?}");
    }
    a.ctl_json(&["hangup"]).await;
}

#[tokio::test]
async fn the_python_example_streams_every_calls_stats_as_csv() {
    require_netns!();
    let Some(python) = example_python() else { return };
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let (a, _b) = two_daemons_with(&lan, dir.path(), TONE_IN_NULL_OUT, &auto_answer(TONE_IN_NULL_OUT)).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/stats_csv.py");
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .arg("--socket")
        .arg(&a.socket)
        .args(["--interval-ms", "200"])
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let mut next_row = async || -> Vec<String> {
        let line = tokio::time::timeout(DEADLINE, lines.next_line()).await.expect("a CSV line").unwrap();
        line.expect("the script ended").split(',').map(str::to_owned).collect()
    };
    // The header comes once the stubs are built.
    let header = next_row().await;
    assert_eq!(header[..4], ["event", "call_id", "peer", "state"]);
    let column = |name: &str| header.iter().position(|c| c == name).unwrap();

    let call_id = call_up(&a).await;
    let mut samples = 0;
    loop {
        let row = next_row().await;
        assert_eq!(row.len(), header.len(), "{row:?}");
        assert_eq!(row[column("call_id")], call_id);
        if row[column("state")] == "active" && row[column("rtt_source")] == "rtcp" {
            samples += 1;
            assert_eq!(row[column("peer")], "bob");
            assert!(row[column("mos")].parse::<f64>().unwrap() > 4.0, "{row:?}");
        }
        if samples == 3 {
            break;
        }
    }
    a.ctl_json(&["hangup"]).await;
    let summary = loop {
        let row = next_row().await;
        if row[column("event")] == "summary" {
            break row;
        }
    };
    assert_eq!(summary[column("call_id")], call_id);
    assert_eq!(summary[column("end_reason")], "hung_up_local");
    assert!(summary[column("talk_s")].parse::<f64>().unwrap() > 0.0, "{summary:?}");
}

/// Runs `examples/call_api.py` (a stock grpcio-reflection client: no .proto, no
/// authority option) against `daemon`, returning its stdout lines once it exits.
async fn call_api(python: &Path, daemon: &Daemon, args: &[&str]) -> Vec<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/call_api.py");
    let run = tokio::process::Command::new(python).arg(script).args(args).arg("--socket").arg(&daemon.socket).output();
    let out = tokio::time::timeout(DEADLINE, run).await.expect("call_api.py finishes").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "call_api.py {args:?}: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.lines().map(|line| serde_json::from_str(line).unwrap_or(serde_json::Value::String(line.into()))).collect()
}

#[tokio::test]
async fn a_stock_reflection_client_lists_calls_and_follows_events_over_the_unix_socket() {
    require_netns!();
    let Some(python) = example_python() else { return };
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_daemons_with(&lan, dir.path(), TONE_IN_NULL_OUT, &auto_answer(TONE_IN_NULL_OUT)).await;

    let services = call_api(&python, &a, &["list"]).await;
    for service in ["voicelink.v1.Voicelink", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"] {
        assert!(services.contains(&service.into()), "{service} missing from {services:?}");
    }
    let status = call_api(&python, &a, &["GetStatus"]).await;
    assert_eq!(status[0]["displayName"], "alice");
    assert_eq!(status[0]["deviceId"], a.device_id.as_str());

    // The event stream during a call: the snapshot first (then the stream is
    // open), then the call as it rings and goes active.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/call_api.py");
    let mut child = tokio::process::Command::new(&python)
        .arg(script)
        .args(["WatchEvents", "--socket"])
        .arg(&a.socket)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let mut next_event = async || -> serde_json::Value {
        let line = tokio::time::timeout(DEADLINE, lines.next_line()).await.expect("an event").unwrap();
        serde_json::from_str(&line.expect("the event stream ended")).unwrap()
    };
    assert!(next_event().await.get("snapshot").is_some());
    a.wait_until_it_sees(&b.device_id).await;
    let call_id = call_up(&a).await;
    let mut states = Vec::new();
    let active = loop {
        let event = next_event().await;
        let Some(call) = event.pointer("/callStateChanged/call") else { continue };
        assert_eq!(call["callId"], call_id.as_str(), "{event}");
        states.push(call["state"].as_str().unwrap_or_default().to_owned());
        if call["state"] == "CALL_STATE_ACTIVE" {
            break call.clone();
        }
    };
    assert_eq!(states.first().map(String::as_str), Some("CALL_STATE_OUTGOING"), "{states:?}");
    assert_eq!(active["peerDisplayName"], "bob");

    let calls = call_api(&python, &a, &["ListCalls"]).await;
    assert_eq!(calls[0]["calls"][0]["callId"], call_id.as_str());
    a.ctl_json(&["hangup"]).await;
}
