//! Liveness end to end, with real mDNS: a peer whose mDNS stack paces its answers
//! as the RFC asks stays online, and a peer behind a link that drops is back as
//! soon as the link is. Needs root (CI runs as root with VOICELINK_REQUIRE_NETNS=1).

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Lan, about, example_python, shows_online, two_daemons_with};
use tokio::io::{AsyncBufReadExt, BufReader};
use voicelink_core::vocab::DeviceId;

fn online_is(device_id: &str, online: bool) -> impl Fn(&Value) -> bool + '_ {
    move |e| shows_online(e, device_id) == Some(online)
}

/// How the link between two daemons drops.
#[derive(Debug, Clone, Copy)]
enum Glitch {
    /// Bob's cable is pulled: his interface loses its carrier, and he knows.
    Cable,
    /// The switch stops forwarding: nobody's interface notices anything.
    Switch,
    /// As `Switch`, and once it forwards again no multicast question leaves
    /// either host until both are back: only the probes of each lost peer (by
    /// unicast) can find it, as they do when the outage outlasts the short
    /// intervals of the multicast requeries.
    SwitchAndNoMulticastQuestions,
}

#[tokio::test]
async fn a_peer_is_back_as_soon_as_its_cable_is_plugged_in_again() {
    back_after(Glitch::Cable).await;
}

#[tokio::test]
async fn peers_are_back_soon_after_a_silent_outage_of_the_switch() {
    back_after(Glitch::Switch).await;
}

#[tokio::test]
async fn lost_peers_are_asked_directly_until_they_answer() {
    back_after(Glitch::SwitchAndNoMulticastQuestions).await;
}

async fn back_after(glitch: Glitch) {
    require_netns!();
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_daemons_with(&lan, dir.path(), "", "").await;
    let mut a_events = a.follow_events().await;
    let mut b_events = b.follow_events().await;
    let set_link = |up: bool| match glitch {
        Glitch::Cable => lan.set_cable(1, 0, up),
        Glitch::Switch | Glitch::SwitchAndNoMulticastQuestions => lan.set_switch(0, up),
    };
    let questions_pass = |pass: bool| {
        if let Glitch::SwitchAndNoMulticastQuestions = glitch {
            (0..2).for_each(|h| lan.set_multicast_mdns_queries(h, pass));
        }
    };

    // The link is down until each side has noticed (a missed liveness check, or
    // for the cable, bob's interface losing its carrier).
    set_link(false);
    a_events.wait_for("bob offline at alice", online_is(&b.device_id, false)).await;
    b_events.wait_for("alice offline at bob", online_is(&a.device_id, false)).await;
    questions_pass(false);
    set_link(true);
    let restored = Instant::now();

    // A returning link is announced on and queried at once (RFC 6762 §8.3); a
    // silent outage is found by the queries that each loss starts. Without
    // either, mDNS would wait for its next refresh, minutes later.
    a_events.wait_for("bob online again at alice", online_is(&b.device_id, true)).await;
    let at_alice = restored.elapsed();
    b_events.wait_for("alice online again at bob", online_is(&a.device_id, true)).await;
    eprintln!("{glitch:?}: back at alice after {at_alice:?}, at bob after {:?}", restored.elapsed());
    // Liveness checks are multicast questions.
    questions_pass(true);

    // And bob can be called by name at once.
    a.ctl_json(&["dial", "bob", "--no-wait"]).await;
    b_events.wait_for("alice's call rings at bob", |e| e["type"] == "incoming_call").await;
}

#[tokio::test]
async fn a_peer_advertised_by_python_zeroconf_stays_online_for_five_minutes() {
    require_netns!();
    let Some(python) = example_python() else { return };
    let lan = Lan::new(3, 1);
    let dir = tempfile::tempdir().unwrap();
    // Two daemons, so their liveness checks of the peer interleave and one is
    // sometimes answered only because of the other's.
    let (a, b) = two_daemons_with(&lan, dir.path(), "", "").await;
    let mut a_events = a.follow_events().await;
    let mut b_events = b.follow_events().await;

    let device = DeviceId::from_certificate_der(b"a peer advertised by python-zeroconf");
    let id = device.to_string();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/zeroconf_peer.py");
    let mut peer = tokio::process::Command::new("ip")
        .args(["netns", "exec", &lan.host(2)])
        .arg(&python)
        .arg(script)
        .args([id.as_str(), &device.short(), "10.77.0.3", "4444"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut said = BufReader::new(peer.stdout.take().unwrap()).lines();
    assert_eq!(said.next_line().await.unwrap().as_deref(), Some("registered"));

    let appeared = |e: &Value| e["type"] == "peer_appeared" && about(e, &id);
    a_events.wait_for("the zeroconf peer at alice", appeared).await;
    b_events.wait_for("the zeroconf peer at bob", appeared).await;

    // Each daemon checks it every few seconds; it must never look offline.
    let five_minutes = Duration::from_secs(300);
    let offline = |e: &Value| online_is(&id, false)(e) || (e["type"] == "peer_gone" && about(e, &id));
    tokio::join!(
        a_events.none_for(five_minutes, "the zeroconf peer looked offline at alice", offline),
        b_events.none_for(five_minutes, "the zeroconf peer looked offline at bob", offline),
    );
    let peers = a.ctl_json(&["peers"]).await;
    let listed = peers.as_array().unwrap().iter().find(|p| p["device_id"] == id.as_str());
    assert_eq!(listed.map(|p| (p["online"].clone(), p["advert_signed"].clone())), Some((true.into(), false.into())));

    // It leaves as the protocol says (`bye=1`, then the mDNS goodbye): gone at once.
    drop(peer.stdin.take());
    let gone = a_events.wait_for("the zeroconf peer's goodbye", |e| e["type"] == "peer_gone" && about(e, &id)).await;
    assert_eq!(gone["peer_gone"]["reason"], "goodbye");
    assert!(peer.wait().await.unwrap().success());
}
