//! Group calls end to end: daemons in their own network namespaces, each with a
//! tone of its own as its microphone and a WAV file as its speaker, in a full
//! mesh of real calls (mDNS, mutual TLS, WebRTC, Opus). Needs root.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::{Daemon, EventFollower, Lan};
use voicelink_daemon::audio::endpoints::tone_share;

/// Lets audio flow for a while: the recordings need this much material.
async fn talk_for(duration: Duration) {
    tokio::time::sleep(duration).await;
}

fn config(tone: u32, heard: &Path) -> String {
    format!("[audio]\ninput = \"tone:{tone}\"\noutput = \"file:{}\"\n[calls]\nauto_answer = true\n", heard.display())
}

/// A daemon's legs as its events tell them: call ID → (peer device ID, state).
#[derive(Default)]
struct Legs(BTreeMap<String, (String, String)>);

impl Legs {
    fn note(&mut self, event: &Value) {
        let kind = event["type"].as_str().unwrap_or_default();
        let call = &event[kind]["call"];
        if let (Some(id), Some(state)) = (call["call_id"].as_str(), call["state"].as_str()) {
            let peer = call["peer_device_id"].as_str().unwrap_or_default().to_owned();
            self.0.insert(id.to_owned(), (peer, state.to_owned()));
        }
    }

    /// The peers of the active legs.
    fn active(&self) -> Vec<&str> {
        self.0.values().filter(|(_, state)| state == "active").map(|(peer, _)| peer.as_str()).collect()
    }
}

/// Reads `events` until the daemon is in active calls with exactly `peers`.
async fn until_talking_with(events: &mut EventFollower, legs: &mut Legs, peers: &[&Daemon], who: &str) {
    let mut want: Vec<&str> = peers.iter().map(|d| d.device_id.as_str()).collect();
    want.sort();
    let wait = async {
        loop {
            let mut now: Vec<&str> = legs.active();
            now.sort();
            if now == want {
                return;
            }
            let event = events.next().await;
            legs.note(&event);
        }
    };
    if tokio::time::timeout(support::DEADLINE, wait).await.is_err() {
        panic!("{who} never talked with exactly {want:?}; its legs: {:?}", legs.0);
    }
}

/// How much of each tone every 200 ms window of a recording holds (windows
/// with sound only).
fn tone_shares(path: &Path, tones: &[u32]) -> Vec<Vec<f64>> {
    support::samples_of(path)
        .chunks_exact(9600)
        .filter(|window| support::audible(window))
        .map(|window| tones.iter().map(|&hz| tone_share(window, f64::from(hz))).collect())
        .collect()
}

/// Windows in which exactly the tones `heard` (of `tones`) are each at least a
/// quarter of the sound, and the others absent.
fn windows_with(shares: &[Vec<f64>], tones: &[u32], heard: &[u32]) -> usize {
    shares
        .iter()
        .filter(|window| {
            tones.iter().zip(window.iter()).all(
                |(hz, share)| {
                    if heard.contains(hz) { *share > 0.25 } else { *share < 0.05 }
                },
            )
        })
        .count()
}

/// The four people, and each one's microphone: a tone of its own.
const NAMES: [&str; 4] = ["alice", "bob", "carol", "dave"];
const TONES: [u32; 4] = [440, 660, 880, 1100];

#[tokio::test]
async fn three_people_hear_each_other_people_leave_and_join_and_muting_is_for_everyone() {
    require_netns!();
    let lan = Lan::new(4, 1);
    let dir = tempfile::tempdir().unwrap();
    let heard: Vec<_> = NAMES.iter().map(|n| dir.path().join(format!("{n}.wav"))).collect();
    let mut daemons = Vec::new();
    for (h, (name, tone)) in NAMES.iter().zip(TONES).enumerate() {
        let daemon = Daemon::start(Some(&lan.host(h)), &dir.path().join(name), name, &config(tone, &heard[h])).await;
        daemons.push(daemon);
    }
    let [a, b, c, d] = &daemons[..] else { unreachable!() };
    // Each sees who it dials or joins by mDNS.
    for (daemon, peers) in [(a, vec![b, c]), (c, vec![b, d]), (d, vec![a])] {
        for peer in peers {
            daemon.wait_until_it_sees(&peer.device_id).await;
        }
    }
    let mut events = Vec::new();
    for daemon in [a, b, c, d] {
        events.push(daemon.follow_events().await);
    }
    let mut legs: Vec<Legs> = (0..4).map(|_| Legs::default()).collect();

    // Alice calls bob, then adds carol: carol rings (auto-answer), answers,
    // and joins bob herself.
    a.ctl_json(&["dial", "bob", "--no-wait"]).await;
    until_talking_with(&mut events[0], &mut legs[0], &[b], "alice").await;
    let added = a.ctl_json(&["add", "carol"]).await;
    assert_eq!(added["peer_device_id"], c.device_id.as_str());
    let group = added["group_id"].as_str().unwrap().to_owned();
    assert!(!group.is_empty(), "{added:#}");
    until_talking_with(&mut events[2], &mut legs[2], &[a, b], "carol").await;
    until_talking_with(&mut events[1], &mut legs[1], &[a, c], "bob").await;
    until_talking_with(&mut events[0], &mut legs[0], &[b, c], "alice").await;
    // One group on every side.
    for daemon in [a, b, c] {
        let calls = daemon.ctl_json(&["calls"]).await;
        let live: Vec<&Value> = calls.as_array().unwrap().iter().filter(|c| c["state"] == "active").collect();
        assert_eq!(live.len(), 2, "{}: {calls:#}", daemon.name);
        assert!(live.iter().all(|call| call["group_id"] == group.as_str()), "{}: {calls:#}", daemon.name);
    }
    talk_for(Duration::from_secs(3)).await;

    // Bob leaves; alice and carol go on.
    b.ctl_json(&["hangup"]).await;
    until_talking_with(&mut events[0], &mut legs[0], &[c], "alice").await;
    until_talking_with(&mut events[2], &mut legs[2], &[a], "carol").await;
    b.wait_until_no_calls().await;
    // Bob's next call writes his file anew: keep what he heard in this one.
    let bob_first = dir.path().join("bob-first.wav");
    std::fs::copy(&heard[1], &bob_first).unwrap();
    talk_for(Duration::from_secs(2)).await;

    // Carol adds dave, who joins alice.
    c.ctl_json(&["add", "dave"]).await;
    until_talking_with(&mut events[3], &mut legs[3], &[a, c], "dave").await;
    until_talking_with(&mut events[0], &mut legs[0], &[c, d], "alice").await;
    talk_for(Duration::from_secs(3)).await;

    // Carol mutes herself: for everyone.
    c.ctl_json(&["mute"]).await;
    for _ in 0..2 {
        events[2]
            .wait_for("carol's legs muted", |e| e["type"] == "mute_changed" && e["mute_changed"]["muted"] == true)
            .await;
    }
    talk_for(Duration::from_secs(3)).await;

    // Alice leaves; carol, still muted, adds bob back: his leg to her starts muted.
    a.ctl_json(&["hangup"]).await;
    until_talking_with(&mut events[3], &mut legs[3], &[c], "dave").await;
    a.wait_until_no_calls().await;
    c.ctl_json(&["add", "bob"]).await;
    until_talking_with(&mut events[1], &mut legs[1], &[c, d], "bob").await;
    talk_for(Duration::from_secs(3)).await;
    // Carol leaves, then bob: dave's last leg ends with his.
    c.ctl_json(&["hangup"]).await;
    until_talking_with(&mut events[3], &mut legs[3], &[b], "dave").await;
    b.ctl_json(&["hangup"]).await;
    until_talking_with(&mut events[3], &mut legs[3], &[], "dave").await;
    for daemon in [a, b, c, d] {
        daemon.wait_until_no_calls().await;
    }

    // Each recording holds the others' tones, mixed, and never its own: 3 s
    // of each phase (2 s alone with carol), at least 1.4 s of clean windows.
    // Once carol is muted nobody hears her 880 Hz, bob included, who joined
    // after she muted.
    let phases: [&[&[u32]]; 4] = [
        &[&[660, 880], &[880], &[880, 1100], &[1100]],
        &[&[1100]],
        &[&[440, 660], &[440], &[440, 1100], &[660, 1100]],
        &[&[440, 880], &[440], &[660]],
    ];
    let bob_before = tone_shares(&bob_first, &TONES);
    let in_the_three_way = windows_with(&bob_before, &TONES, &[440, 880]);
    assert!(in_the_three_way >= 7, "bob heard both only in {in_the_three_way} windows: {bob_before:.2?}");
    assert!(bob_before.iter().all(|window| window[1] <= 0.05), "bob heard himself: {bob_before:.2?}");
    for (n, name) in NAMES.iter().enumerate() {
        let shares = tone_shares(&heard[n], &TONES);
        let report = || format!("{name} heard (440, 660, 880, 1100 Hz): {shares:.2?}");
        for phase in phases[n] {
            let windows = windows_with(&shares, &TONES, phase);
            eprintln!("{name} heard exactly {phase:?} in {windows} of {} windows", shares.len());
            assert!(windows >= 7, "{name}: {windows} windows of exactly {phase:?}\n{}", report());
        }
        let heard_self = shares.iter().filter(|window| window[n] > 0.05).count();
        assert_eq!(heard_self, 0, "{name} heard its own tone\n{}", report());
    }
    // A healthy group call warns about nothing.
    for daemon in [a, b, c, d] {
        let warnings = daemon.warnings();
        assert!(warnings.is_empty(), "{}: {warnings:#?}", daemon.name);
    }
}

#[tokio::test]
async fn six_people_make_a_full_mesh_and_a_seventh_is_refused() {
    require_netns!();
    let lan = Lan::new(7, 1);
    let dir = tempfile::tempdir().unwrap();
    let quiet = "[audio]\ninput = \"silence\"\noutput = \"null\"\n[calls]\nauto_answer = true\n";
    let names = ["p0", "p1", "p2", "p3", "p4", "p5", "p6"];
    let mut daemons = Vec::new();
    for (h, name) in names.iter().enumerate() {
        daemons.push(Daemon::start(Some(&lan.host(h)), &dir.path().join(name), name, quiet).await);
    }
    // Everyone sees everyone the mesh needs; p0 sees all.
    for (n, daemon) in daemons.iter().enumerate() {
        for peer in daemons.iter().skip(n + 1) {
            daemon.wait_until_it_sees(&peer.device_id).await;
        }
    }
    let mut events = Vec::new();
    for daemon in &daemons {
        events.push(daemon.follow_events().await);
    }
    let mut legs: Vec<Legs> = (0..7).map(|_| Legs::default()).collect();
    let host = &daemons[0];
    host.ctl_json(&["dial", "p1", "--no-wait"]).await;
    until_talking_with(&mut events[0], &mut legs[0], &[&daemons[1]], "p0").await;
    for n in 2..6 {
        host.ctl_json(&["add", names[n]]).await;
        let others: Vec<&Daemon> = daemons[1..=n].iter().collect();
        until_talking_with(&mut events[0], &mut legs[0], &others, "p0").await;
    }
    // A full mesh: each of the six talks with the five others.
    for n in 1..6 {
        let others: Vec<&Daemon> = daemons[..6].iter().enumerate().filter(|(m, _)| *m != n).map(|(_, d)| d).collect();
        until_talking_with(&mut events[n], &mut legs[n], &others, names[n]).await;
    }
    // The seventh is refused, with the reason; it never rang.
    let refused = host.ctl(&["add", "p6"]).await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("6 participants, the most a call can have"), "{stderr}");
    // Adding someone already in the call is refused too.
    let again = host.ctl(&["add", "p3"]).await;
    assert!(String::from_utf8_lossy(&again.stderr).contains("in the call already"), "{again:?}");
    // The others go on without the one who left; then everyone leaves.
    host.ctl_json(&["hangup"]).await;
    for n in 1..6 {
        let others: Vec<&Daemon> =
            daemons[1..6].iter().enumerate().filter(|(m, _)| m + 1 != n).map(|(_, d)| d).collect();
        until_talking_with(&mut events[n], &mut legs[n], &others, names[n]).await;
    }
    for daemon in &daemons[1..6] {
        // Legs end as their peers leave: the last ones may find no call.
        let _ = daemon.ctl(&["hangup"]).await;
    }
    for n in 0..6 {
        until_talking_with(&mut events[n], &mut legs[n], &[], names[n]).await;
    }
    // An observation of p6's feed, not a wait for something.
    events[6].none_for(Duration::from_millis(500), "p6 rang", |e| e["type"] == "incoming_call").await;
}

/// Reads `events` until the call `id` is in `state`.
async fn until_call_is(events: &mut EventFollower, legs: &mut Legs, id: &str, state: &str, who: &str) {
    let wait = async {
        while legs.0.get(id).is_none_or(|(_, now)| now != state) {
            let event = events.next().await;
            legs.note(&event);
        }
    };
    if tokio::time::timeout(support::DEADLINE, wait).await.is_err() {
        panic!("{who}'s call {id} never was {state}; its legs: {:?}", legs.0);
    }
}

#[tokio::test]
async fn a_waiting_call_is_answered_by_holding_the_call_in_progress_or_merged_into_it() {
    require_netns!();
    let lan = Lan::new(3, 1);
    let dir = tempfile::tempdir().unwrap();
    let heard: Vec<_> = NAMES[..3].iter().map(|n| dir.path().join(format!("{n}.wav"))).collect();
    let mut daemons = Vec::new();
    for (h, (name, tone)) in NAMES.iter().zip(TONES).take(3).enumerate() {
        // Alice has call waiting; her auto-answer never answers a waiting call.
        let waiting = if h == 0 { "call_waiting = true\n" } else { "" };
        let config = config(tone, &heard[h]) + waiting;
        daemons.push(Daemon::start(Some(&lan.host(h)), &dir.path().join(name), name, &config).await);
    }
    let [a, b, c] = &daemons[..] else { unreachable!() };
    for peer in [b, c] {
        a.wait_until_it_sees(&peer.device_id).await;
    }
    c.wait_until_it_sees(&a.device_id).await;
    let mut events = Vec::new();
    for daemon in [a, b, c] {
        events.push(daemon.follow_events().await);
    }
    let mut legs: Vec<Legs> = (0..3).map(|_| Legs::default()).collect();

    // Alice talks with bob; carol calls alice: it waits, ringing at alice.
    let with_bob = a.ctl_json(&["dial", "bob", "--no-wait"]).await["call_id"].as_str().unwrap().to_owned();
    until_talking_with(&mut events[0], &mut legs[0], &[b], "alice").await;
    let from_carol = c.ctl_json(&["dial", "alice", "--no-wait"]).await["call_id"].as_str().unwrap().to_owned();
    until_call_is(&mut events[0], &mut legs[0], &from_carol, "incoming", "alice").await;
    let calls = a.ctl_json(&["calls"]).await;
    let waiting = calls.as_array().unwrap().iter().find(|call| call["call_id"] == from_carol.as_str()).unwrap();
    assert_eq!(waiting["waiting"], true, "{calls:#}");
    talk_for(Duration::from_secs(2)).await;

    // Answered: bob is held, alice talks with carol.
    a.ctl_json(&["answer"]).await;
    until_talking_with(&mut events[0], &mut legs[0], &[c], "alice").await;
    until_call_is(&mut events[0], &mut legs[0], &with_bob, "on_hold", "alice").await;
    until_call_is(&mut events[1], &mut legs[1], &with_bob, "on_hold", "bob").await;
    talk_for(Duration::from_secs(3)).await;

    // Back to bob: carol is held.
    a.ctl_json(&["resume", &with_bob]).await;
    until_talking_with(&mut events[0], &mut legs[0], &[b], "alice").await;
    until_call_is(&mut events[2], &mut legs[2], &from_carol, "on_hold", "carol").await;
    talk_for(Duration::from_secs(3)).await;

    // Carol is let go and calls again; this time she is merged: three people.
    a.ctl_json(&["hangup", &from_carol]).await;
    c.wait_until_no_calls().await;
    let carol_first = dir.path().join("carol-first.wav");
    std::fs::copy(&heard[2], &carol_first).unwrap();
    let again = c.ctl_json(&["dial", "alice", "--no-wait"]).await["call_id"].as_str().unwrap().to_owned();
    until_call_is(&mut events[0], &mut legs[0], &again, "incoming", "alice").await;
    let merged = a.ctl_json(&["answer", "--merge"]).await;
    assert_eq!(merged["call_id"], again.as_str(), "{merged:#}");
    until_talking_with(&mut events[0], &mut legs[0], &[b, c], "alice").await;
    until_talking_with(&mut events[1], &mut legs[1], &[a, c], "bob").await;
    until_talking_with(&mut events[2], &mut legs[2], &[a, b], "carol").await;
    let calls = a.ctl_json(&["calls"]).await;
    let live = calls.as_array().unwrap().iter().filter(|call| call["state"] == "active");
    assert!(live.clone().count() == 2, "{calls:#}");
    assert!(live.into_iter().all(|call| call["group_id"] == with_bob.as_str()), "one group call: {calls:#}");
    talk_for(Duration::from_secs(3)).await;
    // The stats: an entry per leg, and the call's own, with the legs' sums.
    let out = a.ctl(&["--json", "stats"]).await;
    let entries: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let in_group: Vec<&Value> = entries.iter().filter(|e| e["group_id"] == with_bob.as_str()).collect();
    let (whole, leg_entries): (Vec<&Value>, Vec<&Value>) = in_group.into_iter().partition(|e| e["call_id"] == "");
    assert_eq!((whole.len(), leg_entries.len()), (1, 2), "{entries:#?}");
    assert_eq!(whole[0]["participants"], 3, "{:#}", whole[0]);
    let sent: u64 = leg_entries.iter().map(|leg| leg["packets_sent"].as_u64().unwrap()).sum();
    let whole_sent = whole[0]["packets_sent"].as_u64().unwrap();
    // Sampled at about the same moment: within a second of packets.
    assert!(whole_sent.abs_diff(sent) <= 100, "{whole_sent} vs {sent} from the legs");
    a.ctl_json(&["hangup"]).await;
    // Bob and carol go on; when bob leaves, carol's last leg ends with his.
    until_talking_with(&mut events[1], &mut legs[1], &[c], "bob").await;
    until_talking_with(&mut events[2], &mut legs[2], &[b], "carol").await;
    b.ctl_json(&["hangup"]).await;
    for daemon in [a, b, c] {
        daemon.wait_until_no_calls().await;
    }

    // Who heard whom, phase by phase: alice heard only carol while bob was
    // held, and only bob while carol was.
    let tones = &TONES[..3];
    let expect: [(&Path, &[&[u32]]); 4] = [
        (&heard[0], &[&[660], &[880], &[660, 880]]),
        (&heard[1], &[&[440], &[440, 880]]),
        (&carol_first, &[&[440]]),
        (&heard[2], &[&[440, 660]]),
    ];
    for (path, phases) in expect {
        let shares = tone_shares(path, tones);
        for phase in phases {
            let windows = windows_with(&shares, tones, phase);
            eprintln!("{} heard exactly {phase:?} in {windows} of {} windows", path.display(), shares.len());
            assert!(windows >= 7, "{}: {windows} windows of exactly {phase:?}: {shares:.2?}", path.display());
        }
    }
    for daemon in [a, b, c] {
        let warnings = daemon.warnings();
        assert!(warnings.is_empty(), "{}: {warnings:#?}", daemon.name);
    }
}
