//! Calls end to end between daemons in their own network namespaces: real mDNS,
//! mutual-TLS signaling, WebRTC (ICE, DTLS-SRTP) and Opus, with tone and WAV
//! endpoints standing in for sound cards. Needs root (CI runs as root).

mod support;

use std::time::Duration;

use support::{Daemon, Heard, Lan, call_is, listen, listen_stereo, two_daemons_with};
use voicelink_bench::sound_server::SoundServer;

/// Lets audio flow for a while: the recordings need this much material. This is
/// the length of what is recorded, not a wait for something to happen.
async fn talk_for(duration: Duration) {
    tokio::time::sleep(duration).await;
}

fn audio(input: &str, output: &std::path::Path) -> String {
    format!("[audio]\ninput = \"{input}\"\noutput = \"file:{}\"\n", output.display())
}

/// Longest run of `heard` in `windows`.
fn longest_run(windows: &[Heard], heard: Heard) -> usize {
    windows.split(|w| *w != heard).map(<[Heard]>::len).max().unwrap_or(0)
}

#[tokio::test]
async fn a_call_carries_audio_both_ways_and_mute_silences_one_direction() {
    require_netns!();
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let (a_wav, b_wav) = (dir.path().join("alice-heard.wav"), dir.path().join("bob-heard.wav"));
    let (a, b) = two_daemons_with(&lan, dir.path(), &audio("tone:440", &a_wav), &audio("tone:880", &b_wav)).await;
    let mut a_events = a.follow_events().await;
    let mut b_events = b.follow_events().await;

    let dialed = a.ctl_json(&["dial", "bob", "--no-wait"]).await;
    let call_id = dialed["call_id"].as_str().unwrap().to_owned();
    let incoming = b_events.wait_for("bob rings", |e| e["type"] == "incoming_call").await;
    assert_eq!(incoming["incoming_call"]["call"]["peer_device_id"], a.device_id.as_str());
    assert_eq!(incoming["incoming_call"]["call"]["peer_display_name"], "alice");
    let b_call = incoming["incoming_call"]["call"]["call_id"].as_str().unwrap().to_owned();
    assert_eq!(b_call, call_id, "one call ID on both sides");

    b.ctl_json(&["answer"]).await;
    a_events.wait_for("alice active", |e| call_is(e, &call_id, "active")).await;
    b_events.wait_for("bob active", |e| call_is(e, &call_id, "active")).await;
    let calls = a.ctl_json(&["calls"]).await;
    assert_eq!(calls[0]["state"], "active");
    assert_eq!(calls[0]["direction"], "outgoing");

    talk_for(Duration::from_secs(3)).await;
    a.ctl_json(&["mute"]).await;
    a_events.wait_for("alice muted", |e| e["type"] == "mute_changed" && e["mute_changed"]["muted"] == true).await;
    talk_for(Duration::from_secs(2)).await;

    a.ctl_json(&["hangup"]).await;
    let ended = a_events.wait_for("alice ended", |e| call_is(e, &call_id, "ended")).await;
    assert_eq!(ended["call_state_changed"]["call"]["end_reason"], "hung_up_local");
    let ended = b_events.wait_for("bob ended", |e| call_is(e, &call_id, "ended")).await;
    assert_eq!(ended["call_state_changed"]["call"]["end_reason"], "hung_up_remote");
    assert_eq!(a.ctl_json(&["calls"]).await, serde_json::json!([]));
    // A healthy call warns about nothing (the libraries' routine warnings included).
    for daemon in [&a, &b] {
        let warnings = daemon.warnings();
        assert!(warnings.is_empty(), "{}: {warnings:#?}", daemon.name);
    }

    // The recordings are closed when the call ends.
    let heard_by_bob = listen(&b_wav, &[440, 880]);
    let heard_by_alice = listen(&a_wav, &[440, 880]);
    // Bob heard alice's 440 Hz, then silence once she muted; never his own tone.
    let first_silence_after_tone =
        heard_by_bob.iter().skip_while(|w| **w != Heard::Tone(440)).position(|w| *w == Heard::Silence);
    assert!(longest_run(&heard_by_bob, Heard::Tone(440)) >= 10, "bob heard: {heard_by_bob:?}");
    assert!(first_silence_after_tone.is_some(), "bob heard: {heard_by_bob:?}");
    let after_tone: Vec<Heard> = heard_by_bob.iter().copied().skip_while(|w| *w != Heard::Tone(440)).collect();
    assert!(longest_run(&after_tone, Heard::Silence) >= 7, "silence after mute: {heard_by_bob:?}");
    assert!(!heard_by_bob.contains(&Heard::Tone(880)), "{heard_by_bob:?}");
    // Alice heard bob's 880 Hz all along, muted or not.
    assert!(longest_run(&heard_by_alice, Heard::Tone(880)) >= 20, "alice heard: {heard_by_alice:?}");
    assert!(!heard_by_alice.contains(&Heard::Tone(440)), "{heard_by_alice:?}");
}

#[tokio::test]
async fn declined_busy_cancelled_and_unanswered_calls_end_with_their_reasons() {
    require_netns!();
    let lan = Lan::new(3, 1);
    let dir = tempfile::tempdir().unwrap();
    let quiet = "[audio]\ninput = \"silence\"\noutput = \"null\"\n";
    let (a, b) = two_daemons_with(&lan, dir.path(), quiet, &format!("{quiet}[calls]\nring_timeout_secs = 5\n")).await;
    let c = Daemon::start(Some(&lan.host(2)), &dir.path().join("c"), "carol", quiet).await;
    let mut a_events = a.follow_events().await;
    let mut b_events = b.follow_events().await;
    let mut c_events = c.follow_events().await;
    c_events.wait_for("carol sees bob", |e| support::about(e, &b.device_id)).await;

    // Declined, with a reason.
    let id = a.ctl_json(&["dial", "bob", "--no-wait"]).await["call_id"].as_str().unwrap().to_owned();
    b_events.wait_for("bob rings", |e| e["type"] == "incoming_call").await;
    b.ctl_json(&["decline", "--reason", "in a meeting"]).await;
    let ended = a_events.wait_for("declined", |e| call_is(e, &id, "ended")).await;
    assert_eq!(ended["call_state_changed"]["call"]["end_reason"], "declined", "{ended:#}\n{}", a.log_text());
    assert_eq!(ended["call_state_changed"]["call"]["end_detail"], "in a meeting");

    // Cancelled by the caller before an answer.
    let id = a.ctl_json(&["dial", "bob", "--no-wait"]).await["call_id"].as_str().unwrap().to_owned();
    b_events
        .wait_for("bob rings", |e| e["type"] == "incoming_call" && e["incoming_call"]["call"]["call_id"] == id.as_str())
        .await;
    a.ctl_json(&["hangup"]).await;
    let ended = b_events.wait_for("cancelled at bob", |e| call_is(e, &id, "ended")).await;
    assert_eq!(ended["call_state_changed"]["call"]["end_reason"], "cancelled");

    // Ctrl-C on a waiting `voicectl dial` cancels the call: bob stops ringing.
    let dial = tokio::process::Command::new(support::voicectl_bin())
        .args(["--socket"])
        .arg(&a.socket)
        .args(["dial", "bob"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ringing = b_events.wait_for("bob rings", |e| e["type"] == "incoming_call").await;
    let id = ringing["incoming_call"]["call"]["call_id"].as_str().unwrap().to_owned();
    let dial_pid = nix::unistd::Pid::from_raw(dial.id().unwrap() as i32);
    nix::sys::signal::kill(dial_pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let ended = b_events.wait_for("cancelled at bob by Ctrl-C", |e| call_is(e, &id, "ended")).await;
    assert_eq!(ended["call_state_changed"]["call"]["end_reason"], "cancelled");
    let out = tokio::time::timeout(support::DEADLINE, dial.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("cancelled"), "{stderr}");

    // Busy: bob is in a call with alice, carol calls him.
    let id = a.ctl_json(&["dial", "bob", "--no-wait"]).await["call_id"].as_str().unwrap().to_owned();
    b_events
        .wait_for("bob rings", |e| e["type"] == "incoming_call" && e["incoming_call"]["call"]["call_id"] == id.as_str())
        .await;
    b.ctl_json(&["answer"]).await;
    a_events.wait_for("active", |e| call_is(e, &id, "active")).await;
    let carol = c.ctl(&["--json", "dial", "bob"]).await;
    assert_eq!(carol.status.code(), Some(1), "dial waits and reports busy: {}", String::from_utf8_lossy(&carol.stderr));
    assert!(String::from_utf8_lossy(&carol.stderr).contains("busy"), "{}", String::from_utf8_lossy(&carol.stderr));
    a.ctl_json(&["hangup"]).await;
    a_events.wait_for("ended", |e| call_is(e, &id, "ended")).await;

    // Nobody answers: bob's ring timeout is 5 s.
    let id = b.ctl_json(&["dial", "alice", "--no-wait"]).await["call_id"].as_str().unwrap().to_owned();
    drop(b_events);
    let mut b_events = b.follow_events().await;
    let ended = b_events.wait_for("no answer", |e| call_is(e, &id, "ended")).await;
    assert_eq!(ended["call_state_changed"]["call"]["end_reason"], "no_answer");
    let ended = a_events.wait_for("missed at alice", |e| call_is(e, &id, "ended")).await;
    assert_eq!(ended["call_state_changed"]["call"]["end_reason"], "no_answer");
}

/// Whether a call event shows this state (any call).
fn any_call_is(event: &serde_json::Value, states: &[&str]) -> bool {
    let kind = event["type"].as_str().unwrap_or_default();
    let state = &event[kind]["call"]["state"];
    states.iter().any(|s| state == s)
}

#[tokio::test]
async fn glare_ends_in_exactly_one_call_on_both_sides() {
    require_netns!();
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let quiet = "[audio]\ninput = \"silence\"\noutput = \"null\"\n";
    let (a, b) = two_daemons_with(&lan, dir.path(), quiet, quiet).await;
    let mut a_events = a.follow_events().await;
    let mut b_events = b.follow_events().await;

    // Both dial at the same moment.
    let (from_a, from_b) = tokio::join!(a.ctl(&["dial", "bob", "--no-wait"]), b.ctl(&["dial", "alice", "--no-wait"]));
    assert!(from_a.status.success() || from_b.status.success(), "at least one dial went through");

    // Whichever request arrived first, both people asked for this conversation:
    // the surviving call is answered on its own, and it is the same on both sides.
    let settled = async {
        let a_active = a_events.seen_or_wait_for("alice active", |e| any_call_is(e, &["active"])).await;
        let b_active = b_events.seen_or_wait_for("bob active", |e| any_call_is(e, &["active"])).await;
        (a_active, b_active)
    };
    // On failure, the daemons' logs say which ordering happened.
    let Ok((a_active, b_active)) = tokio::time::timeout(Duration::from_secs(30), settled).await else {
        panic!("no active call on both sides\n--- alice\n{}\n--- bob\n{}", a.log_text(), b.log_text());
    };
    let id = a_active["call_state_changed"]["call"]["call_id"].clone();
    assert_eq!(b_active["call_state_changed"]["call"]["call_id"], id);
    for daemon in [&a, &b] {
        let calls = daemon.ctl_json(&["calls"]).await;
        let live: Vec<_> = calls.as_array().unwrap().iter().filter(|c| c["state"] != "ended").collect();
        assert_eq!(live.len(), 1, "{}: {calls:#}", daemon.name);
        assert_eq!(live[0]["call_id"], id);
        assert_eq!(live[0]["state"], "active");
    }
}

#[tokio::test]
async fn a_peer_that_mdns_cannot_see_is_dialed_by_address_and_its_identity_checked() {
    require_netns!();
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let hidden = "[discovery]\nenabled = false\n[signaling]\nport = 47123\n[audio]\ninput = \"silence\"\noutput = \"null\"\n[calls]\nauto_answer = true\n";
    let quiet = "[discovery]\nenabled = false\n[audio]\ninput = \"silence\"\noutput = \"null\"\n";
    let a = Daemon::start(Some(&lan.host(0)), &dir.path().join("a"), "alice", quiet).await;
    let b = Daemon::start(Some(&lan.host(1)), &dir.path().join("b"), "bob", hidden).await;
    assert_eq!(a.ctl_json(&["peers", "--all"]).await, serde_json::json!([]), "no discovery here");

    // A device ID that is not bob's: refused before any call reaches him.
    let impostor = a.device_id.clone();
    let out = a.ctl(&["--json", "dial", &format!("{impostor}@10.77.0.2:47123")]).await;
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("failed") && text.contains("identity mismatch"), "{text}");
    assert!(text.contains(&b.device_id), "names the device it found: {text}");
    assert_eq!(b.ctl_json(&["calls"]).await, serde_json::json!([]));

    // host:port, and ID@host:port with the right ID: bob answers (auto-answer).
    for target in ["10.77.0.2:47123".to_owned(), format!("{}@10.77.0.2:47123", b.device_id)] {
        let call = a.ctl_json(&["dial", &target]).await;
        assert_eq!(call["state"], "active", "{target}: {call:#}");
        assert_eq!(call["peer_device_id"], b.device_id.as_str(), "the identity comes from bob's certificate");
        assert_eq!(call["peer_display_name"], "bob");
        a.ctl_json(&["hangup"]).await;
    }
}

#[tokio::test]
async fn a_recording_is_a_valid_wav_when_the_daemon_is_stopped_mid_call() {
    require_netns!();
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("bob-heard.wav");
    let (a, mut b) = two_daemons_with(
        &lan,
        dir.path(),
        "[audio]\ninput = \"tone:440\"\noutput = \"null\"\n",
        &format!("{}[calls]\nauto_answer = true\n", audio("silence", &wav)),
    )
    .await;
    let call = a.ctl_json(&["dial", "bob"]).await;
    assert_eq!(call["state"], "active");
    talk_for(Duration::from_millis(2500)).await;
    let mut a_events = a.follow_events().await;
    let status = b.stop_with(nix::sys::signal::Signal::SIGTERM).await;
    assert!(status.success(), "{status:?}");
    // Bob's daemon hung up on its way out.
    let id = call["call_id"].as_str().unwrap().to_owned();
    let ended = a_events.seen_or_wait_for("ended", |e| call_is(e, &id, "ended")).await;
    assert_eq!(ended["call_state_changed"]["call"]["end_reason"], "hung_up_remote");

    let reader = hound::WavReader::open(&wav).expect("a valid WAV file");
    let seconds = reader.duration() as f64 / 48_000.0;
    // More than the last periodic header update (every second) would give: the
    // file was completed on the way out.
    assert!(seconds >= 2.2, "the header counts all that was recorded: {seconds} s");
    assert!(listen(&wav, &[440]).contains(&Heard::Tone(440)));
}

/// A sound server and its address, or `None` (and why, on stderr) where it
/// cannot run; where namespace tests are required, that is a failure.
fn pulse_or_skip() -> Option<(SoundServer, String)> {
    match SoundServer::start() {
        Ok(pulse) => {
            let server = pulse.address();
            Some((pulse, server))
        }
        Err(reason) if std::env::var_os("VOICELINK_REQUIRE_NETNS").is_some_and(|v| v == "1") => panic!("{reason}"),
        Err(reason) => {
            eprintln!("SKIPPED: {reason}");
            None
        }
    }
}

/// Four seconds of something like speech (48 kHz mono): syllables of shaped
/// noise, three a second, with pauses, which noise suppression keeps.
fn write_babble(path: &std::path::Path) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    let (mut state, mut smooth) = (0x2545_f491_u32, 0.0f64);
    for i in 0..48_000 * 4 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let white = f64::from(state) / f64::from(u32::MAX) * 2.0 - 1.0;
        smooth = 0.6 * smooth + 0.4 * white;
        let t = f64::from(i) / 48_000.0;
        // Every fourth syllable is a pause.
        let syllable = (t * 3.0) as u32;
        let envelope = if syllable % 4 == 3 { 0.0 } else { (std::f64::consts::PI * (t * 3.0).fract()).sin() };
        writer.write_sample((smooth * envelope * 16_000.0) as i16).unwrap();
    }
    writer.finalize().unwrap();
}

/// The level of each 200 ms window of a mono WAV, in dB (full scale is about 90).
fn window_db(path: &std::path::Path) -> Vec<f64> {
    window_levels(path, 0, 1).iter().map(|rms| 20.0 * rms.max(1.0).log10()).collect()
}

/// The level of windows together (their mean power), in dB.
fn mean_db(windows: &[f64]) -> f64 {
    10.0 * (windows.iter().map(|db| 10f64.powf(db / 10.0)).sum::<f64>() / windows.len() as f64).log10()
}

#[tokio::test]
async fn a_microphone_that_hears_the_speaker_sends_no_echo_back() {
    require_netns!();
    let Some((_pulse, server)) = pulse_or_skip() else { return };
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    // Alice uses the default devices (ALSA → PulseAudio null sink), whose
    // microphone is the speaker's monitor: a perfect echo path. She answers at once.
    let a = Daemon::start_with_env(
        Some(&lan.host(0)),
        &dir.path().join("a"),
        "alice",
        "[calls]\nauto_answer = true\n",
        &[("PULSE_SERVER", &server)],
    )
    .await;
    let devices = a.ctl_json(&["devices"]).await;
    let names: Vec<&str> = devices["inputs"].as_array().unwrap().iter().filter_map(|d| d["id"].as_str()).collect();
    assert!(!names.is_empty(), "cpal sees the sound server's devices: {devices:#}");
    assert!(!names.contains(&"device:null"), "ALSA's clockless null device is never offered: {names:?}");

    let babble = dir.path().join("babble.wav");
    write_babble(&babble);
    let b =
        Daemon::start(Some(&lan.host(1)), &dir.path().join("b"), "bob", &audio("silence", &dir.path().join("b.wav")))
            .await;
    let mut b_events = b.follow_events().await;
    b_events.wait_for("bob sees alice", |e| support::about(e, &a.device_id)).await;
    // Bob talks; what comes back to him is alice's echo. First with voice
    // processing on (the default for a sound card); then, in a second call, off
    // by config until alice turns it on again for that call alone.
    let input = format!("file:{}", babble.display());
    let mut a_events = a.follow_events().await;
    let mut heard = Vec::new();
    for phase in ["on", "off-then-on"] {
        if phase != "on" {
            for key in ["audio.echo_cancellation", "audio.noise_suppression", "audio.gain_control"] {
                let out = a.ctl(&["config", "set", key, "false"]).await;
                assert!(out.status.success(), "{out:?}");
            }
        }
        let wav = dir.path().join(format!("bob-hears-{phase}.wav"));
        let output = format!("file:{}", wav.display());
        let call = b.ctl_json(&["dial", "alice", "--input", &input, "--output", &output]).await;
        assert_eq!(call["state"], "active", "{call}");
        if phase == "on" {
            // Bob's input is a file: nothing to process.
            let refused = b.ctl(&["processing", "--echo", "off"]).await;
            let stderr = String::from_utf8_lossy(&refused.stderr);
            assert!(!refused.status.success() && stderr.contains("only a microphone's is processed"), "{stderr}");
        }
        talk_for(Duration::from_secs(5)).await;
        if phase != "on" {
            let on = ["processing", "--echo", "on", "--noise", "on", "--gain", "on"];
            let changed = a.ctl_json(&on).await;
            let all_on =
                serde_json::json!({"echo_cancellation": true, "noise_suppression": true, "gain_control": true});
            assert_eq!(changed["processing"], all_on, "{changed}");
            a_events.wait_for("alice is told", |e| e["type"] == "audio_processing_changed").await;
            talk_for(Duration::from_secs(5)).await;
        }
        b.ctl_json(&["hangup"]).await;
        let id = call["call_id"].as_str().unwrap().to_owned();
        b_events.seen_or_wait_for("ended", |e| call_is(e, &id, "ended")).await;
        heard.push(window_db(&wav));
    }
    // Off, bob's voice went to alice, out of her "speaker", into her
    // "microphone" and back: both directions through cpal (the sound server
    // takes a second or two to start the streams). On, it is removed: the last
    // two seconds of each part count.
    let (on, off_then_on) = (&heard[0], &heard[1]);
    eprintln!("bob hears, in dB per 200 ms: on {on:.0?}; off, then on {off_then_on:.0?}");
    let returned = mean_db(&off_then_on[15..24]);
    assert!(returned > 60.0, "with processing off bob hears himself: {off_then_on:.0?}\n{}", a.log_text());
    for (what, windows) in [
        ("on", &on[on.len() - 10..on.len() - 1]),
        ("on again", &off_then_on[off_then_on.len() - 10..off_then_on.len() - 1]),
    ] {
        let cancelled = mean_db(windows);
        assert!(
            returned - cancelled >= 25.0,
            "{what}, the echo is only {:.1} dB quieter: on {on:.0?}, off then on {off_then_on:.0?}\n{}",
            returned - cancelled,
            a.log_text()
        );
    }
}

#[tokio::test]
async fn an_echo_peer_sends_back_what_it_hears() {
    require_netns!();
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let a_wav = dir.path().join("alice-heard.wav");
    let (a, _b) = two_daemons_with(
        &lan,
        dir.path(),
        &audio("tone:440", &a_wav),
        "[audio]\ninput = \"echo\"\noutput = \"null\"\n[calls]\nauto_answer = true\n",
    )
    .await;
    let call = a.ctl_json(&["dial", "bob"]).await;
    assert_eq!(call["state"], "active");
    talk_for(Duration::from_secs(3)).await;
    a.ctl_json(&["hangup"]).await;
    let mut events = a.follow_events().await;
    if !events.snapshot["snapshot"]["calls"].as_array().unwrap().is_empty() {
        let id = call["call_id"].as_str().unwrap().to_owned();
        events.wait_for("ended", |e| call_is(e, &id, "ended")).await;
    }
    let heard = listen(&a_wav, &[440]);
    assert!(heard.iter().filter(|h| **h == Heard::Tone(440)).count() >= 8, "alice heard her own tone back: {heard:?}");
}

#[tokio::test]
async fn a_caller_with_10_ms_frames_and_a_callee_with_20_ms_frames_hear_each_other() {
    require_netns!();
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let (a_wav, b_wav) = (dir.path().join("alice-heard.wav"), dir.path().join("bob-heard.wav"));
    let (a, b) = two_daemons_with(
        &lan,
        dir.path(),
        &format!("{}[calls]\nframe_ms = 10\n", audio("tone:440", &a_wav)),
        &format!("{}[calls]\nauto_answer = true\n", audio("tone:880", &b_wav)),
    )
    .await;
    let call = a.ctl_json(&["dial", "bob"]).await;
    assert_eq!(call["state"], "active");
    talk_for(Duration::from_secs(3)).await;
    a.ctl_json(&["hangup"]).await;
    b.wait_until_no_calls().await;
    a.wait_until_no_calls().await;
    let (by_alice, by_bob) = (listen(&a_wav, &[440, 880]), listen(&b_wav, &[440, 880]));
    assert!(longest_run(&by_bob, Heard::Tone(440)) >= 8, "bob heard: {by_bob:?}");
    assert!(longest_run(&by_alice, Heard::Tone(880)) >= 8, "alice heard: {by_alice:?}");
}

#[tokio::test]
async fn dialing_someone_who_is_ringing_us_answers_their_call() {
    require_netns!();
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let quiet = "[audio]\ninput = \"silence\"\noutput = \"null\"\n";
    let (a, b) = two_daemons_with(&lan, dir.path(), quiet, quiet).await;
    let mut b_events = b.follow_events().await;
    let id = a.ctl_json(&["dial", "bob", "--no-wait"]).await["call_id"].as_str().unwrap().to_owned();
    b_events.wait_for("bob rings", |e| e["type"] == "incoming_call").await;
    let call = b.ctl_json(&["dial", "alice"]).await;
    assert_eq!(call["call_id"], id.as_str(), "the same call, answered");
    assert_eq!(call["state"], "active");
    assert_eq!(b.ctl_json(&["calls"]).await.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_recording_holds_both_sides_and_the_peer_is_shown_it() {
    require_netns!();
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let alice_audio = "[audio]\ninput = \"tone:440\"\noutput = \"null\"\n";
    let bob_audio = "[audio]\ninput = \"tone:880\"\noutput = \"null\"\n[calls]\nauto_answer = true\n";
    let (a, b) = two_daemons_with(&lan, dir.path(), alice_audio, bob_audio).await;
    let mut a_events = a.follow_events().await;
    let mut b_events = b.follow_events().await;
    let id = a.ctl_json(&["dial", "bob", "--no-wait"]).await["call_id"].as_str().unwrap().to_owned();
    a_events.wait_for("active", |e| call_is(e, &id, "active")).await;

    // A file that cannot be written: a clear error, nothing told, the call goes on.
    let out = a.ctl(&["record", "start", "--file", "/proc/voicelink.wav"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot write the WAV file /proc/voicelink.wav"), "{stderr}");
    assert_eq!(a.ctl_json(&["calls"]).await[0]["state"], "active");

    let file = dir.path().join("recorded.wav");
    let started = a.ctl_json(&["record", "start", "--file", file.to_str().unwrap()]).await;
    assert_eq!(started["recording"], true, "{started}");
    assert_eq!(started["recording_file"], file.to_str().unwrap());
    // Bob was shown it before alice wrote anything (she waited for his confirmation).
    let shown = b_events
        .wait_for("bob is shown", |e| {
            e["type"] == "recording_changed" && e["recording_changed"]["recorded_by_peer"] == true
        })
        .await;
    assert_eq!(shown["recording_changed"]["call_id"], id.as_str());
    assert_eq!(b.ctl_json(&["calls"]).await[0]["recorded_by_peer"], true);
    let bob_calls = b.ctl(&["calls"]).await;
    assert!(String::from_utf8_lossy(&bob_calls.stdout).contains("RECORDED BY THE PEER"));

    talk_for(Duration::from_secs(2)).await;
    let stopped = a.ctl_json(&["record", "stop"]).await;
    assert_eq!(stopped["recording"], false, "{stopped}");
    b_events
        .wait_for("bob is told it stopped", |e| {
            e["type"] == "recording_changed" && e["recording_changed"]["recorded_by_peer"] == false
        })
        .await;

    // Left what alice sent, right what she heard from bob.
    let (left, right) = listen_stereo(&file, &[440, 880]);
    assert!(left.len() >= 8, "{} windows of 200 ms", left.len());
    assert!(longest_run(&left, Heard::Tone(440)) >= left.len() - 2, "left: {left:?}");
    // What came over the network may hold a concealed window on a busy machine.
    let heard_bob = right.iter().filter(|w| **w == Heard::Tone(880)).count();
    assert!(heard_bob >= right.len() - 3, "right: {right:?}");
    // The file is not replaced by a second recording.
    let again = a.ctl(&["record", "start", "--file", file.to_str().unwrap()]).await;
    assert!(String::from_utf8_lossy(&again.stderr).contains("never replaces"), "{again:?}");
    a.ctl_json(&["hangup"]).await;
}

/// The RMS level of each 200 ms window of a 48 kHz WAV channel (`channels`
/// interleaved).
fn window_levels(path: &std::path::Path, channel: usize, channels: usize) -> Vec<f64> {
    let mut reader = hound::WavReader::open(path).unwrap();
    let samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).skip(channel).step_by(channels).collect();
    samples
        .chunks_exact(9600)
        .map(|w| (w.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / w.len() as f64).sqrt())
        .collect()
}

#[tokio::test]
async fn the_speaker_can_be_turned_off_and_down_without_touching_the_recording() {
    require_netns!();
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let (speaker, recorded) = (dir.path().join("bob-speaker.wav"), dir.path().join("bob-recorded.wav"));
    let bob_audio = format!("{}[calls]\nauto_answer = true\n", audio("silence", &speaker));
    let (a, b) = two_daemons_with(&lan, dir.path(), &audio("tone:440", &dir.path().join("a.wav")), &bob_audio).await;
    let mut a_events = a.follow_events().await;
    let mut b_events = b.follow_events().await;
    let id = a.ctl_json(&["dial", "bob", "--no-wait"]).await["call_id"].as_str().unwrap().to_owned();
    b_events.wait_for("active at bob", |e| call_is(e, &id, "active")).await;
    b.ctl_json(&["record", "start", "--file", recorded.to_str().unwrap()]).await;
    a_events
        .wait_for("alice is shown bob records", |e| {
            e["type"] == "recording_changed" && e["recording_changed"]["recorded_by_peer"] == true
        })
        .await;

    // Full volume, half volume, speaker off, speaker on again.
    talk_for(Duration::from_secs(2)).await;
    let set = b.ctl_json(&["volume", "50"]).await;
    assert_eq!(set["value"], "50", "{set}");
    talk_for(Duration::from_secs(2)).await;
    let off = b.ctl_json(&["speaker", "off"]).await;
    assert_eq!((off["speaker_muted"].as_bool(), off["muted"].as_bool()), (Some(true), Some(false)), "{off}");
    b_events
        .wait_for("speaker off", |e| e["type"] == "speaker_mute_changed" && e["speaker_mute_changed"]["muted"] == true)
        .await;
    let calls = b.ctl(&["calls"]).await;
    assert!(String::from_utf8_lossy(&calls.stdout).contains("speaker off"), "{calls:?}");
    talk_for(Duration::from_secs(2)).await;
    let on = b.ctl_json(&["speaker", "on"]).await;
    assert_eq!(on["speaker_muted"], false, "{on}");
    talk_for(Duration::from_secs(1)).await;
    a.ctl_json(&["hangup"]).await;
    b_events.wait_for("ended at bob", |e| call_is(e, &id, "ended")).await;

    // The speaker: the tone, then at half its level, then nothing, then the tone.
    let levels = window_levels(&speaker, 0, 1);
    let loud: Vec<f64> = levels.iter().copied().filter(|&l| l > 100.0).collect();
    let full = loud.iter().copied().fold(0.0, f64::max);
    let halves = loud.iter().filter(|&&l| (l / full - 0.5).abs() < 0.05).count();
    assert!(halves >= 7, "{halves} windows at half the level: {levels:.0?}");
    let heard = listen(&speaker, &[440]);
    let after_half = heard.iter().skip_while(|h| **h != Heard::Tone(440)).copied().collect::<Vec<_>>();
    assert!(longest_run(&after_half, Heard::Silence) >= 7, "the speaker off: {heard:?}");
    assert_eq!(heard.iter().rev().find(|h| **h != Heard::Silence), Some(&Heard::Tone(440)), "on again: {heard:?}");
    // The recording kept what bob heard all along, at its own level.
    let (_, right) = listen_stereo(&recorded, &[440]);
    assert!(longest_run(&right, Heard::Tone(440)) >= right.len() - 3, "recorded: {right:?}");
    let recorded_levels = window_levels(&recorded, 1, 2);
    let spread = recorded_levels.iter().copied().fold(0.0, f64::max)
        / recorded_levels[2..recorded_levels.len() - 2].iter().copied().fold(f64::MAX, f64::min);
    assert!(spread < 1.2, "the recording's level moved with the volume: {recorded_levels:.0?}");
}

/// What the sound server's null sink plays over the next `seconds` (48 kHz mono).
fn sink_plays(server: &str, seconds: f64) -> impl Future<Output = Vec<i16>> + Send + 'static {
    sink_plays_on(server, "vsink", seconds)
}

/// What the sound server's sink `sink` plays over the next `seconds`.
fn sink_plays_on(server: &str, sink: &str, seconds: f64) -> impl Future<Output = Vec<i16>> + Send + 'static {
    let (server, monitor) = (server.to_owned(), format!("--device={sink}.monitor"));
    async move {
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut parec = std::process::Command::new("parec")
                .args(["--server", &server, &monitor, "--format=s16le", "--rate=48000", "--channels=1"])
                .arg("--raw")
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("run parec (pulseaudio-utils)");
            let mut bytes = vec![0u8; (seconds * 48_000.0) as usize * 2];
            parec.stdout.take().unwrap().read_exact(&mut bytes).unwrap();
            let _ = parec.kill();
            let _ = parec.wait();
            bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect::<Vec<i16>>()
        })
        .await
        .unwrap()
    }
}

/// How much of the tone `hz` the clearest 50 ms of `samples` holds (among
/// windows with sound in them: a window may straddle two notes, or an edge).
fn best_share(samples: &[i16], hz: f64) -> f64 {
    samples
        .chunks_exact(2400)
        .filter(|w| peak(w) > 1000)
        .map(|w| voicelink_daemon::audio::endpoints::tone_share(w, hz))
        .fold(0.0, f64::max)
}

fn peak(samples: &[i16]) -> i32 {
    samples.iter().map(|&s| i32::from(s).abs()).max().unwrap_or(0)
}

#[tokio::test]
async fn ringing_is_heard_on_the_sound_card_and_stops_when_the_call_is_declined_or_answered() {
    require_netns!();
    let Some((_pulse, server)) = pulse_or_skip() else { return };
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    // Alice on the sound server's default devices; bob on no sound card at all.
    let a =
        Daemon::start_with_env(Some(&lan.host(0)), &dir.path().join("a"), "alice", "", &[("PULSE_SERVER", &server)])
            .await;
    let b = Daemon::start(
        Some(&lan.host(1)),
        &dir.path().join("b"),
        "bob",
        "[audio]\ninput = \"silence\"\noutput = \"null\"\n",
    )
    .await;
    let (mut a_events, mut b_events) = (a.follow_events().await, b.follow_events().await);
    a_events.seen_or_wait_for("alice sees bob", |e| support::about(e, &b.device_id)).await;
    b_events.seen_or_wait_for("bob sees alice", |e| support::about(e, &a.device_id)).await;
    let quiet = sink_plays(&server, 0.5).await;
    assert!(peak(&quiet) < 50, "the sink is quiet before any call: peak {}", peak(&quiet));

    // Alice calls bob: while he rings, she hears the ringing tone (425 Hz), which
    // starts with the call (1 s on, 4 s off): listened to from before the dial.
    let listening = tokio::spawn(sink_plays(&server, 2.5));
    let id = a.ctl_json(&["dial", "bob", "--no-wait"]).await["call_id"].as_str().unwrap().to_owned();
    b_events.wait_for("bob rings", |e| e["type"] == "incoming_call").await;
    let ringback = listening.await.unwrap();
    assert!(peak(&ringback) > 1000, "alice hears the ringing tone: peak {}", peak(&ringback));
    assert!(best_share(&ringback, 425.0) > 0.8, "425 Hz: {}", best_share(&ringback, 425.0));
    // Nothing of it goes to bob: alice's microphone (the sink's monitor) hears
    // the ringing tone, but once media is up (negotiated while he rings) what
    // she sends is silence until he answers.
    let mut sending = serde_json::Value::Null;
    for _ in 0..100 {
        sending = a.ctl_json(&["stats", &id]).await;
        if sending["packets_sent"].as_u64().is_some_and(|n| n > 0) {
            break;
        }
    }
    assert!(sending["packets_sent"].as_u64().is_some_and(|n| n > 0), "media is up while bob rings: {sending:#}");
    assert!(sending["audio_level_out_dbfs"].as_f64().is_some_and(|db| db <= -100.0), "silence is sent: {sending:#}");
    b.ctl_json(&["decline"]).await;
    a_events.wait_for("alice's call ends", |e| call_is(e, &id, "ended")).await;
    let after = sink_plays(&server, 1.0).await;
    assert!(peak(&after) < 50, "the ringing tone stopped with the call: peak {}", peak(&after));

    // Bob calls alice: her ringtone plays until she declines.
    let id = b.ctl_json(&["dial", "alice", "--no-wait"]).await["call_id"].as_str().unwrap().to_owned();
    a_events.wait_for("alice rings", |e| e["type"] == "incoming_call").await;
    let ringtone = sink_plays(&server, 2.5).await;
    assert!(peak(&ringtone) > 1000, "alice's ringtone: peak {}", peak(&ringtone));
    let (high, low) = (best_share(&ringtone, 1318.5), best_share(&ringtone, 1046.5));
    assert!(high > 0.8 && low > 0.8, "the chime's two notes: {high:.2}, {low:.2}");
    // The microphone check on a real device: alice's default input is the sink's
    // monitor, which carries her ringtone.
    let out = a.ctl(&["--json", "level", "--count", "25"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let loudest = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["peak_dbfs"].as_f64())
        .fold(f64::MIN, f64::max);
    assert!(loudest > -40.0, "the microphone check hears the ringtone: peak {loudest} dBFS");
    a.ctl_json(&["decline"]).await;
    a_events.wait_for("alice's call ends", |e| call_is(e, &id, "ended")).await;
    let after = sink_plays(&server, 1.0).await;
    assert!(peak(&after) < 50, "the ringtone stopped at the decline: peak {}", peak(&after));

    // Once more, answered: the ringtone stops, and the call (bob sends silence)
    // plays nothing.
    let id = b.ctl_json(&["dial", "alice", "--no-wait"]).await["call_id"].as_str().unwrap().to_owned();
    a_events.wait_for("alice rings again", |e| e["type"] == "incoming_call").await;
    assert!(peak(&sink_plays(&server, 0.8).await) > 1000, "ringing");
    a.ctl_json(&["answer"]).await;
    a_events.wait_for("alice's call is active", |e| call_is(e, &id, "active")).await;
    let answered = sink_plays(&server, 1.0).await;
    assert!(peak(&answered) < 50, "the ringtone stopped at the answer: peak {}", peak(&answered));
    a.ctl_json(&["hangup"]).await;
}

#[tokio::test]
async fn a_call_follows_its_sound_card_when_it_is_unplugged_and_plugged_in_again_and_when_the_default_changes() {
    require_netns!();
    let Some((_pulse, server)) = pulse_or_skip() else { return };
    let pactl = |args: &[&str]| {
        let out = std::process::Command::new("pactl").args(["-s", &server]).args(args).output().unwrap();
        assert!(out.status.success(), "pactl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let plug_headset = || pactl(&["load-module", "module-null-sink", "sink_name=headset"]);
    // A headset beside the speakers (vsink, the default); alice chose it, its
    // speaker and its "microphone" (the sink's monitor).
    let headset = plug_headset();
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let a = Daemon::start_with_env(
        Some(&lan.host(0)),
        &dir.path().join("a"),
        "alice",
        "[audio]\ninput = \"device:headset.monitor\"\noutput = \"device:headset\"\n[calls]\nauto_answer = true\n",
        &[("PULSE_SERVER", &server)],
    )
    .await;
    let outputs = a.ctl_json(&["devices"]).await["outputs"].clone();
    let ids: Vec<&str> = outputs.as_array().unwrap().iter().filter_map(|d| d["id"].as_str()).collect();
    assert!(ids.contains(&"device:headset") && ids.contains(&"device:vsink"), "the sound server's sinks: {outputs:#}");
    let b = Daemon::start(
        Some(&lan.host(1)),
        &dir.path().join("b"),
        "bob",
        "[audio]\ninput = \"tone:880\"\noutput = \"null\"\n",
    )
    .await;
    let mut a_events = a.follow_events().await;
    let mut b_events = b.follow_events().await;
    b_events.seen_or_wait_for("bob sees alice", |e| support::about(e, &a.device_id)).await;
    let call = b.ctl_json(&["dial", "alice"]).await;
    assert_eq!(call["state"], "active");
    let id = call["call_id"].as_str().unwrap().to_owned();
    // A stream that moved or started may take a moment on a busy machine:
    // the tone must be heard in one of a few seconds.
    let tone_plays = |server: &str, sink: &str| {
        let (server, sink) = (server.to_owned(), sink.to_owned());
        async move {
            for _ in 0..5 {
                let samples = sink_plays_on(&server, &sink, 1.0).await;
                if best_share(&samples, 880.0) > 0.8 && peak(&samples) > 1000 {
                    return true;
                }
            }
            false
        }
    };
    assert!(tone_plays(&server, "headset").await, "bob's tone plays on the headset");
    assert!(peak(&sink_plays(&server, 0.5).await) < 50, "and not on the speakers");

    // Unplugged: the call goes on on the speakers, and says so.
    let moved = |direction: &'static str, device: &'static str, reason: &'static str| {
        let id = id.clone();
        move |e: &serde_json::Value| {
            let m = &e["call_audio_device_moved"];
            e["type"] == "call_audio_device_moved"
                && m["call_id"] == id.as_str()
                && m["direction"] == direction
                && m["device"] == device
                && m["reason"].as_str().is_some_and(|r| r.contains(reason))
        }
    };
    pactl(&["unload-module", &headset]);
    let listed =
        a_events.wait_for("the device list without the headset", |e| e["type"] == "audio_devices_changed").await;
    let outputs = listed["audio_devices_changed"]["outputs"].as_array().unwrap().clone();
    assert!(outputs.iter().all(|d| d["id"] != "device:headset"), "{outputs:#?}");
    let unplugged = "headset was unplugged";
    a_events.seen_or_wait_for("the call moved to the speakers", moved("output", "device:vsink", unplugged)).await;
    let to_default_source = moved("input", "device:vsink.monitor", "headset.monitor was unplugged");
    a_events.seen_or_wait_for("and to the default microphone", to_default_source).await;
    assert!(tone_plays(&server, "vsink").await, "bob's tone on the speakers");
    assert_eq!(a.ctl_json(&["calls"]).await[0]["state"], "active");

    // Plugged in again: back on the headset, and the speakers are quiet.
    plug_headset();
    let back = "the chosen device is back";
    a_events.seen_or_wait_for("the call is back on the headset", moved("output", "device:headset", back)).await;
    a_events.seen_or_wait_for("and on its microphone", moved("input", "device:headset.monitor", back)).await;
    assert!(tone_plays(&server, "headset").await, "bob's tone on the headset again");
    let speakers = sink_plays(&server, 1.0).await;
    assert!(peak(&speakers[24_000..]) < 50, "the speakers are quiet again: peak {}", peak(&speakers[24_000..]));
    b.ctl_json(&["hangup"]).await;
    a_events.wait_for("the call ended", |e| call_is(e, &id, "ended")).await;

    // A call on the default follows the default.
    let out = a.ctl(&["config", "set", "audio.output", "default"]).await;
    assert!(out.status.success(), "{out:?}");
    let call = b.ctl_json(&["dial", "alice"]).await;
    let id = call["call_id"].as_str().unwrap().to_owned();
    assert!(tone_plays(&server, "vsink").await, "bob's tone on the default, the speakers");
    pactl(&["set-default-sink", "headset"]);
    let moved_to_default = |e: &serde_json::Value| {
        let m = &e["call_audio_device_moved"];
        m["call_id"] == id.as_str() && m["device"] == "device:headset" && m["reason"] == "the system default changed"
    };
    a_events.wait_for("the call followed the default", moved_to_default).await;
    assert!(tone_plays(&server, "headset").await, "bob's tone on the new default");
    b.ctl_json(&["hangup"]).await;
}
