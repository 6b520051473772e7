//! End to end, with real mDNS multicast: daemons in their own network namespaces,
//! joined by bridges, find each other and notice when one leaves or dies.
//! Needs root (CI runs as root with VOICELINK_REQUIRE_NETNS=1).

mod support;

use nix::sys::signal::Signal;
use serde_json::Value;
use support::{Daemon, Lan, about};

fn peer_ids(list: &Value) -> Vec<&str> {
    list.as_array().unwrap().iter().map(|p| p["device_id"].as_str().unwrap()).collect()
}

async fn two_daemons(lan: &Lan, dir: &std::path::Path) -> (Daemon, Daemon) {
    support::two_daemons_with(lan, dir, "", "").await
}

#[tokio::test]
async fn daemons_on_two_links_find_each_other_once_with_all_their_addresses() {
    require_netns!();
    let lan = Lan::new(2, 2);
    let dir = tempfile::tempdir().unwrap();
    let a = Daemon::start(Some(&lan.host(0)), &dir.path().join("a"), "alice", "").await;
    let mut events = a.follow_events().await;
    let b = Daemon::start(Some(&lan.host(1)), &dir.path().join("b"), "bob", "").await;

    // Bob is on both links, over IPv4 and IPv6: one peer with every address.
    let wanted = ["10.77.0.2", "10.77.1.2", "fd77:0::2", "fd77:1::2"].map(|a| a.parse::<std::net::IpAddr>().unwrap());
    let has_all = |e: &Value| {
        let kind = e["type"].as_str().unwrap_or_default();
        let addresses: Vec<std::net::IpAddr> = e[kind]["peer"]["addresses"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str()?.parse().ok()).collect())
            .unwrap_or_default();
        about(e, &b.device_id) && wanted.iter().all(|w| addresses.contains(w))
    };
    events.wait_for("bob on both links over IPv4 and IPv6", has_all).await;

    let peers = a.ctl_json(&["peers"]).await;
    assert_eq!(peer_ids(&peers), [b.device_id.as_str()], "one peer, and never alice herself: {peers:#}");
    assert_eq!(peers[0]["display_name"], "bob");
    assert_eq!(peers[0]["online"], true);
    assert_eq!(peers[0]["protocol_version"], 2);
    let status_b = b.ctl_json(&["status"]).await;
    assert_eq!(peers[0]["signaling_port"], status_b["signaling_port"], "the advertised port is bob's listener");

    b.wait_until_it_sees(&a.device_id).await;
    let peers = b.ctl_json(&["peers"]).await;
    assert_eq!(peer_ids(&peers), [a.device_id.as_str()]);
    assert_eq!(peers[0]["display_name"], "alice");

    // A late subscriber starts from the current state.
    let late = a.follow_events().await;
    let snapshot = late.snapshot;
    assert_eq!(peer_ids(&snapshot["snapshot"]["peers"]), [b.device_id.as_str()]);
}

#[tokio::test]
async fn a_daemon_that_stops_is_removed_at_once() {
    require_netns!();
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let (a, mut b) = two_daemons(&lan, dir.path()).await;
    let mut events = a.follow_events().await;

    let status = b.stop_with(Signal::SIGTERM).await;
    assert!(status.success(), "SIGTERM is a clean exit: {status:?}\n{}", b.log_text());
    assert!(!b.socket.exists(), "the socket is removed on shutdown");
    let gone = events.wait_for("bob gone", |e| e["type"] == "peer_gone" && about(e, &b.device_id)).await;
    assert_eq!(gone["peer_gone"]["reason"], "goodbye");
    assert!(
        !events.seen.iter().any(|e| e["type"] == "peer_changed" && about(e, &b.device_id)),
        "not merely offline: {:#?}",
        events.seen
    );
    assert_eq!(peer_ids(&a.ctl_json(&["peers", "--all"]).await), Vec::<&str>::new());

    // Back with the same identity: the same device ID appears again.
    b.restart().await;
    events.wait_for("bob back", |e| e["type"] == "peer_appeared" && about(e, &b.device_id)).await;
}

#[tokio::test]
async fn a_daemon_that_is_killed_goes_offline_within_seconds() {
    require_netns!();
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let (a, mut b) = two_daemons(&lan, dir.path()).await;
    let mut events = a.follow_events().await;

    b.stop_with(Signal::SIGKILL).await;
    let offline = events
        .wait_for("bob offline", |e| {
            e["type"] == "peer_changed" && about(e, &b.device_id) && e["peer_changed"]["peer"]["online"] == false
        })
        .await;
    assert_eq!(offline["peer_changed"]["peer"]["display_name"], "bob");

    assert_eq!(peer_ids(&a.ctl_json(&["peers"]).await), Vec::<&str>::new(), "not listed as online");
    let all = a.ctl_json(&["peers", "--all"]).await;
    assert_eq!(peer_ids(&all), [b.device_id.as_str()], "still listed, as offline");
    assert_eq!(all[0]["online"], false);
}

/// Registers mDNS services from inside a namespace, as another program would.
fn advertise_in(netns: &str, services: Vec<mdns_sd::ServiceInfo>) -> mdns_sd::ServiceDaemon {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        // The network namespace is per thread, and mdns-sd's own thread, spawned
        // from this one, inherits it.
        let ns = std::fs::File::open(path).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mdns = mdns_sd::ServiceDaemon::new().unwrap();
        for service in services {
            mdns.register(service).unwrap();
        }
        mdns
    })
    .join()
    .unwrap()
}

#[tokio::test]
async fn foreign_and_malformed_advertisements_are_skipped() {
    require_netns!();
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let a = Daemon::start(Some(&lan.host(0)), &dir.path().join("a"), "alice", "").await;
    let mut events = a.follow_events().await;

    let service = |instance: &str, txt: &[(&str, &str)]| {
        mdns_sd::ServiceInfo::new("_voicelink._udp.local.", instance, "rogue.local.", "10.77.0.2", 9, txt).unwrap()
    };
    let _rogue = advertise_in(
        &lan.host(1),
        vec![
            service("printer", &[("path", "/queue")]),
            service("garbled", &[("v", "1"), ("id", "NOT-A-DEVICE-ID"), ("name", "evil"), ("port", "9")]),
            service("zero-port", &[("v", "1"), ("id", &a.device_id), ("name", "impostor"), ("port", "0")]),
        ],
    );
    // A real peer after them, as a marker that the LAN has been heard.
    let b = Daemon::start(Some(&lan.host(1)), &dir.path().join("b"), "bob", "").await;
    events.wait_for("bob appears", |e| e["type"] == "peer_appeared" && about(e, &b.device_id)).await;

    // The skipped records leave a debug line each; there is no event to await for a
    // record that was rightly ignored, so the log is re-read until they are there.
    let wanted = ["not a voicelink advertisement", "`id` is invalid", "`port` is invalid"];
    let log = tokio::time::timeout(support::DEADLINE, async {
        loop {
            let log = a.log_text();
            if wanted.iter().all(|w| log.contains(w)) {
                return log;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("skipped records not logged:\n{}", a.log_text()));
    assert!(log.contains("skipping an mDNS record"), "{log}");

    assert_eq!(peer_ids(&a.ctl_json(&["peers", "--all"]).await), [b.device_id.as_str()], "only the real peer");
    assert!(events.seen.iter().all(|e| e["type"] == "snapshot" || about(e, &b.device_id)), "{:#?}", events.seen);
}

#[tokio::test]
async fn sighup_applies_a_new_name_and_refuses_a_broken_config() {
    require_netns!();
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_daemons(&lan, dir.path()).await;
    let mut a_events = a.follow_events().await;
    let mut b_events = b.follow_events().await;
    let config_path = b.dir.join("voiced.toml");
    let original = std::fs::read_to_string(&config_path).unwrap();
    let reload = async |text: String| {
        std::fs::write(&config_path, text).unwrap();
        b.signal(Signal::SIGHUP);
        b.notified("RELOADING=1").await;
        b.notified("READY=1").await;
    };

    // A new name and audio default apply live, and peers see the new name.
    reload(original.replace("name = \"bob\"", "name = \"robert\"") + "[audio]\ninput = \"tone:440\"\n").await;
    a_events
        .wait_for("bob renamed", |e| {
            e["type"] == "peer_changed"
                && about(e, &b.device_id)
                && e["peer_changed"]["peer"]["display_name"] == "robert"
        })
        .await;
    let changed = b_events.wait_for("audio default changed", |e| e["type"] == "audio_device_changed").await;
    assert_eq!(changed["audio_device_changed"]["audio_input"], "tone:440");
    let status = b.ctl_json(&["status"]).await;
    assert_eq!(status["display_name"], "robert");
    assert_eq!(status["audio_input"], "tone:440");

    // A broken config is refused with its reason; the daemon keeps the old one.
    reload("name = \"x\"\n[signaling]\nport = \"nope\"\n".into()).await;
    let log = b.log_text();
    assert!(log.contains("config reload refused"), "{log}");
    assert!(log.contains("key `signaling.port` at line 3"), "{log}");
    assert_eq!(b.ctl_json(&["status"]).await["display_name"], "robert");

    // A key that needs a restart is named and left as it is.
    let port = status["signaling_port"].clone();
    reload(original.replace("name = \"bob\"", "name = \"robert\"") + "[signaling]\nport = 1\n").await;
    assert!(b.log_text().contains("restart voiced to apply it key=\"signaling.port\""), "{}", b.log_text());
    assert_eq!(b.ctl_json(&["status"]).await["signaling_port"], port);
    assert_eq!(a.ctl_json(&["peers"]).await[0]["display_name"], "robert", "still listed, under its new name");
}

/// What a shell's Tab offers after `words` (the fish protocol: one candidate per
/// line, a tab and its help).
fn completions(daemon: &Daemon, words: &[&str]) -> Vec<String> {
    let out = std::process::Command::new(support::voicectl_bin())
        .env("VOICECTL_COMPLETE", "fish")
        .env(voicelink_proto::SOCKET_ENV, &daemon.socket)
        .arg("--")
        .args(words)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.split('\t').next().unwrap_or_default().to_owned()).collect()
}

#[tokio::test]
async fn tab_completion_offers_the_peers_online_and_the_calls_in_progress() {
    require_netns!();
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let quiet = "[audio]\ninput = \"silence\"\noutput = \"null\"\n";
    let (a, b) = support::two_daemons_with(&lan, dir.path(), quiet, quiet).await;

    let subcommands = completions(&a, &["voicectl", ""]);
    assert!(subcommands.contains(&"dial".to_owned()), "{subcommands:?}");
    assert!(!subcommands.contains(&"man".to_owned()), "the hidden man subcommand is offered: {subcommands:?}");
    assert_eq!(completions(&a, &["voicectl", "dial", "b"]), ["bob"]);

    let call_id = a.ctl_json(&["dial", "bob", "--no-wait"]).await["call_id"].as_str().unwrap().to_owned();
    for verb in ["hangup", "mute", "stats"] {
        let offered = completions(&a, &["voicectl", verb, ""]);
        assert!(offered.contains(&call_id), "{verb}: {offered:?}");
    }
    let at_bob = completions(&b, &["voicectl", "answer", ""]);
    assert!(at_bob.contains(&call_id), "{at_bob:?}");
    a.ctl_json(&["hangup"]).await;
}
