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
    let mut reader = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    samples
        .chunks_exact(9600)
        .filter(|window| {
            let power = window.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / window.len() as f64;
            power.sqrt() >= 100.0
        })
        .map(|window| tones.iter().map(|&hz| tone_share(window, f64::from(hz))).collect())
        .collect()
}

/// Windows in which exactly the tones `heard` (of `tones`) are each at least a
/// quarter of the sound, and the others absent.
fn windows_with(shares: &[Vec<f64>], tones: &[u32], heard: &[u32]) -> usize {
    shares
        .iter()
        .filter(|window| {
            tones.iter().zip(window.iter()).all(|(hz, share)| {
                if heard.contains(hz) { *share > 0.25 } else { *share < 0.05 }
            })
        })
        .count()
}

const TONES: [u32; 4] = [440, 660, 880, 1100];

#[tokio::test]
async fn three_people_hear_each_other_one_leaves_and_a_fourth_is_added() {
    require_netns!();
    let lan = Lan::new(4, 1);
    let dir = tempfile::tempdir().unwrap();
    let heard: Vec<_> = ["alice", "bob", "carol", "dave"].iter().map(|n| dir.path().join(format!("{n}.wav"))).collect();
    let mut daemons = Vec::new();
    for (h, (name, tone)) in ["alice", "bob", "carol", "dave"].iter().zip(TONES).enumerate() {
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
    talk_for(Duration::from_secs(2)).await;

    // Carol adds dave, who joins alice.
    c.ctl_json(&["add", "dave"]).await;
    until_talking_with(&mut events[3], &mut legs[3], &[a, c], "dave").await;
    until_talking_with(&mut events[0], &mut legs[0], &[c, d], "alice").await;
    talk_for(Duration::from_secs(3)).await;
    // Alice leaves, then carol: dave's last leg ends with hers.
    a.ctl_json(&["hangup"]).await;
    until_talking_with(&mut events[3], &mut legs[3], &[c], "dave").await;
    c.ctl_json(&["hangup"]).await;
    until_talking_with(&mut events[3], &mut legs[3], &[], "dave").await;
    for daemon in [a, c, d] {
        daemon.wait_until_no_calls().await;
    }

    // Each recording holds the others' tones, mixed, and never its own.
    let shares: Vec<_> = heard.iter().map(|path| tone_shares(path, &TONES)).collect();
    let [alice, bob, carol, dave] = &shares[..] else { unreachable!() };
    let report = |name: &str, shares: &[Vec<f64>]| format!("{name} heard (440, 660, 880, 1100 Hz): {shares:.2?}");
    // 3 s of each phase: at least 2 s of clean windows.
    let cases: [(&str, &[Vec<f64>], &[&[u32]]); 4] = [
        ("alice", alice, &[&[660, 880], &[880], &[880, 1100]]),
        ("bob", bob, &[&[440, 880]]),
        ("carol", carol, &[&[440, 660], &[440], &[440, 1100]]),
        ("dave", dave, &[&[440, 880]]),
    ];
    for (name, shares, phases) in cases {
        for phase in phases {
            let windows = windows_with(shares, &TONES, phase);
            eprintln!("{name} heard exactly {phase:?} in {windows} of {} windows", shares.len());
            assert!(windows >= 7, "{name}: {windows} windows of exactly {phase:?}\n{}", report(name, shares));
        }
        let own = TONES[["alice", "bob", "carol", "dave"].iter().position(|n| *n == name).unwrap()];
        let own_index = TONES.iter().position(|hz| *hz == own).unwrap();
        let heard_self = shares.iter().filter(|window| window[own_index] > 0.05).count();
        assert_eq!(heard_self, 0, "{name} heard its own tone\n{}", report(name, shares));
    }
    // A healthy group call warns about nothing.
    for daemon in [a, b, c, d] {
        let log = daemon.log_text();
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
        assert!(warnings.is_empty(), "{}: {warnings:#?}", daemon.name);
    }
}
