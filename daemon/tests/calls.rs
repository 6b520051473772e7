//! Calls end to end between daemons in their own network namespaces: real mDNS,
//! mutual-TLS signaling, WebRTC (ICE, DTLS-SRTP) and Opus, with tone and WAV
//! endpoints standing in for sound cards. Needs root (CI runs as root).

mod support;

use std::time::Duration;

use support::{Daemon, Heard, Lan, call_is, listen, two_daemons_with};

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
    let mut a_events = a.follow_events();
    let mut b_events = b.follow_events();

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
    let mut a_events = a.follow_events();
    let mut b_events = b.follow_events();
    let mut c_events = c.follow_events();
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
    let mut b_events = b.follow_events();
    let ended = b_events.wait_for("no answer", |e| call_is(e, &id, "ended")).await;
    assert_eq!(ended["call_state_changed"]["call"]["end_reason"], "no_answer");
    let ended = a_events.wait_for("missed at alice", |e| call_is(e, &id, "ended")).await;
    assert_eq!(ended["call_state_changed"]["call"]["end_reason"], "no_answer");
}
