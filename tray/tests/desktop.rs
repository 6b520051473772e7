//! The tray end to end on a virtual desktop: Xvfb, xfce4-panel (a
//! StatusNotifierItem host) and dunst (a notification daemon) on a private D-Bus
//! session bus, with two real `voiced` daemons in their own network namespaces.
//! The item's tooltip and menu are read and used over D-Bus, as the host does.
//! Needs root (for the namespaces) and the desktop programs
//! (scripts/setup.sh --test).
//!
//! Screenshots are kept in `target/tmp/voicelink-tray-e2e/` to look at; with
//! VOICELINK_SAVE_SCREENSHOTS=1 they are also copied to `docs/screenshots/`
//! (off by default so a test run does not change the tree).

// The daemon's own test support: namespaces, bridges, `voiced` with readiness.
#[path = "../../daemon/tests/support/mod.rs"]
mod lan;
mod support;

use std::path::PathBuf;

use lan::{Daemon, Lan};
use support::{Desktop, SNI_WATCHER, Watched};
use voicelink_proto::v1::{self, CallState, event};

/// The idle icon's fill and the ringing icon's fill (see `src/icons.rs`).
const IDLE_BLUE: [u8; 3] = [41, 107, 217];
const RINGING_ORANGE: [u8; 3] = [250, 115, 5];
/// Enough pixels of a colour to be the icon, not a stray pixel.
const ICON_PIXELS: usize = 60;

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("voicelink-tray-e2e");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Reads `events` until one matches; returns it.
async fn wait_event(
    events: &mut tonic::Streaming<v1::Event>,
    what: &str,
    matches: impl Fn(&event::Kind) -> bool,
) -> event::Kind {
    let wait = async {
        loop {
            let event = events.message().await.expect("event stream").expect("event stream ended");
            if let Some(kind) = event.kind
                && matches(&kind)
            {
                return kind;
            }
        }
    };
    tokio::time::timeout(support::DEADLINE, wait).await.unwrap_or_else(|_| panic!("never saw {what}"))
}

fn peer_online(kind: &event::Kind, name: &str) -> bool {
    let online = |p: &v1::Peer| p.display_name == name && p.online;
    match kind {
        event::Kind::Snapshot(s) => s.peers.iter().any(online),
        event::Kind::PeerAppeared(v1::PeerAppeared { peer: Some(p) })
        | event::Kind::PeerChanged(v1::PeerChanged { peer: Some(p) }) => online(p),
        _ => false,
    }
}

fn call_in_state(kind: &event::Kind, call_id: &str, state: CallState) -> bool {
    matches!(kind, event::Kind::CallStateChanged(v1::CallStateChanged { call: Some(c), .. })
        if c.call_id == call_id && c.state() == state)
}

/// How many notifications dunst shows; fails the test if dunstctl does.
async fn displayed_notifications(desktop: &Desktop) -> u32 {
    let out = desktop.command("dunstctl").args(["count", "displayed"]).output().await.expect("run dunstctl");
    assert!(out.status.success(), "dunstctl count displayed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().unwrap_or_else(|_| panic!("dunstctl count displayed said {text:?}"))
}

/// A `Notify` call as dbus-monitor prints it: its arguments' lines, up to the
/// last (the expiry, an int32).
async fn next_notify_call(monitor: &mut Watched) -> Vec<String> {
    // Lines read earlier are not part of it: the call and its arguments are
    // read from the stream, in order.
    monitor.seen.clear();
    monitor.wait_for_line("a Notify call", &["method call", "member=Notify"]).await;
    let mut lines = Vec::new();
    loop {
        let line = monitor.first_line("the Notify call's arguments").await;
        let top_level = line.starts_with("   ") && !line.starts_with("    ");
        lines.push(line.trim().to_owned());
        if top_level && line.trim().starts_with("int32 ") && lines.len() > 1 {
            return lines;
        }
    }
}

/// The string arguments of a dbus-monitor block, in order (`string "x"` → x).
fn strings(lines: &[String]) -> Vec<&str> {
    lines.iter().filter_map(|l| l.strip_prefix("string \"")?.strip_suffix('"')).collect()
}

/// Runs `dbus-send --print-reply` on the desktop's bus; its output lines.
async fn dbus_send(desktop: &Desktop, dest: &str, path: &str, method: &str, args: &[&str]) -> Vec<String> {
    let out = desktop
        .command("dbus-send")
        .args(["--session", "--print-reply", &format!("--dest={dest}"), path, method])
        .args(args)
        .output()
        .await
        .expect("run dbus-send");
    assert!(out.status.success(), "dbus-send {dest} {method}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8").lines().map(|l| l.trim().to_owned()).collect()
}

/// A D-Bus property, as dbus-send prints it.
async fn property(desktop: &Desktop, dest: &str, path: &str, interface: &str, name: &str) -> Vec<String> {
    let args = [format!("string:{interface}"), format!("string:{name}")];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    dbus_send(desktop, dest, path, "org.freedesktop.DBus.Properties.Get", &args).await
}

/// The StatusNotifierItems the host shows ("bus-name/object-path" each).
async fn registered_items(desktop: &Desktop) -> Vec<String> {
    let lines =
        property(desktop, SNI_WATCHER, "/StatusNotifierWatcher", SNI_WATCHER, "RegisteredStatusNotifierItems").await;
    strings(&lines).into_iter().map(str::to_owned).collect()
}

/// The tray's StatusNotifierItem, as registered with the host: its bus name
/// and object path.
struct Item {
    name: String,
    path: String,
}

impl Item {
    fn parse(registered: &str) -> Item {
        let slash = registered.find('/').expect("bus-name/object-path");
        Item { name: registered[..slash].to_owned(), path: registered[slash..].to_owned() }
    }

    /// The item's `ToolTip` (icon name, pixmaps, title, text): (title, text).
    async fn tooltip(&self, desktop: &Desktop) -> (String, String) {
        let lines = property(desktop, &self.name, &self.path, "org.kde.StatusNotifierItem", "ToolTip").await;
        // The strings of the struct in order: icon name, title, text (the
        // pixmaps' bytes are printed as hex, not as strings).
        match strings(&lines)[..] {
            [_icon_name, title, text] => (title.to_owned(), text.to_owned()),
            _ => panic!("a ToolTip of three strings: {lines:#?}"),
        }
    }

    /// Reads the tooltip's text until `says` holds; between readings, waits for
    /// the item to announce a new tooltip (NewToolTip, seen by `monitor`).
    async fn tooltip_saying(&self, desktop: &Desktop, monitor: &mut Watched, says: impl Fn(&str) -> bool) -> String {
        loop {
            let (title, text) = self.tooltip(desktop).await;
            assert_eq!(title, "voicelink", "the tooltip's title");
            if says(&text) {
                return text;
            }
            monitor.wait_for_line(&format!("a new tooltip after {text:?}"), &["member=NewToolTip"]).await;
        }
    }

    /// Whether a menu item's label starts with `prefix`.
    async fn menu_shows(&self, desktop: &Desktop, prefix: &str) -> bool {
        let (_, layout) = self.layout(desktop).await;
        layout.iter().any(|line| line.contains(&format!("string \"{prefix}")))
    }

    /// The dbusmenu ID of the menu item labelled `label`, from the item's menu
    /// as the host reads it (`GetLayout`).
    async fn menu_item(&self, desktop: &Desktop, label: &str) -> (String, i32) {
        let (menu_path, layout) = self.layout(desktop).await;
        // Each item is a struct that starts with its ID (int32), then its
        // properties: the label is the first string after the ID.
        let mut id = None;
        for line in &layout {
            if let Some(number) = line.strip_prefix("int32 ") {
                id = number.parse().ok();
            } else if line.ends_with(&format!("string \"{label}\"")) {
                return (menu_path, id.unwrap_or_else(|| panic!("an ID before {label:?}: {layout:#?}")));
            }
        }
        panic!("no menu item {label:?} in {layout:#?}");
    }

    /// The menu's object path and its layout's lines, as the host reads it.
    async fn layout(&self, desktop: &Desktop) -> (String, Vec<String>) {
        let menu = property(desktop, &self.name, &self.path, "org.kde.StatusNotifierItem", "Menu").await;
        let menu_path = menu
            .iter()
            .find_map(|l| l.strip_prefix("variant")?.trim().strip_prefix("object path \"")?.strip_suffix('"'))
            .unwrap_or_else(|| panic!("the Menu property: {menu:#?}"))
            .to_owned();
        let layout = dbus_send(
            desktop,
            &self.name,
            &menu_path,
            "com.canonical.dbusmenu.GetLayout",
            &["int32:0", "int32:-1", "array:string:label"],
        )
        .await;
        (menu_path, layout)
    }

    /// Clicks the menu item labelled `label`, as the host does when the person
    /// chooses it (dbusmenu `Event` "clicked").
    async fn click(&self, desktop: &Desktop, label: &str) {
        let (menu_path, id) = self.menu_item(desktop, label).await;
        let id = format!("int32:{id}");
        let args = [id.as_str(), "string:clicked", "variant:int32:0", "uint32:0"];
        dbus_send(desktop, &self.name, &menu_path, "com.canonical.dbusmenu.Event", &args).await;
    }
}

/// Copies a screenshot into `docs/screenshots/` when asked to.
fn save_screenshot(from: &std::path::Path, name: &str) {
    if std::env::var_os("VOICELINK_SAVE_SCREENSHOTS").is_some_and(|v| v == "1") {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(from, dir.join(name)).unwrap();
        eprintln!("saved {}", dir.join(name).display());
    }
}

/// Takes screenshots until the tray area shows `colour` (the icon is drawn some
/// time after the tray decides on it); keeps the last one at `path`. Polled:
/// nothing announces that the X server has painted the icon.
async fn screenshot_showing(desktop: &Desktop, path: &std::path::Path, colour: [u8; 3]) -> (u32, u32, Vec<u8>) {
    let start = std::time::Instant::now();
    loop {
        let shot = desktop.screenshot(path).await;
        if Desktop::count_in_tray(&shot, colour, 12) >= ICON_PIXELS {
            return shot;
        }
        assert!(start.elapsed() < support::DEADLINE, "the tray never showed {colour:?}; see {}", path.display());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn an_incoming_call_rings_in_the_tray_and_answering_the_notification_answers_it() {
    require_netns_and_desktop!();
    let artifacts = artifacts();
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let quiet = "[audio]\ninput = \"silence\"\noutput = \"null\"\n";
    let alice = Daemon::start(Some(&lan.host(0)), &dir.path().join("alice"), "alice", quiet).await;
    // Bob's "microphone" is a tone, for the microphone check to show.
    let tone = "[audio]\ninput = \"tone:440\"\noutput = \"null\"\n";
    let bob = Daemon::start(Some(&lan.host(1)), &dir.path().join("bob"), "bob", tone).await;
    let desktop = Desktop::start(&dir.path().join("desktop")).await;

    // What the tray asks the notification server, and when its item registers
    // with the host and changes its tooltip, as the bus sees it. It is a
    // monitor once it has given up its name (NameLost).
    let mut command = desktop.command("dbus-monitor");
    command.args([
        "--session",
        "type='method_call',interface='org.freedesktop.Notifications',member='Notify'",
        "type='signal',interface='org.kde.StatusNotifierWatcher',member='StatusNotifierItemRegistered'",
        "type='signal',interface='org.kde.StatusNotifierItem',member='NewToolTip'",
    ]);
    let mut monitor = Watched::spawn(command, artifacts.join("dbus-monitor.log"));
    monitor.wait_for_line("dbus-monitor to start monitoring", &["member=NameLost"]).await;

    // Bob's side of the API, subscribed before anything happens to him.
    let mut bob_api = bob.client().await;
    let mut bob_events = bob_api.watch_events(v1::WatchEventsRequest {}).await.unwrap().into_inner();
    let mut alice_api = alice.client().await;
    let mut alice_events = alice_api.watch_events(v1::WatchEventsRequest {}).await.unwrap().into_inner();

    // The tray, for bob.
    let mut command = desktop.command(env!("CARGO_BIN_EXE_voicelink-tray"));
    command.arg("--socket").arg(&bob.socket).env("RUST_LOG", "info");
    let mut tray = Watched::spawn(command, artifacts.join("tray.log"));
    tray.wait_for_line("the tray connecting", &["connected to voiced"]).await;
    tray.wait_for_line("the notification signals subscribed", &["listening for notification actions"]).await;
    // Its StatusNotifierItem is registered with the host, and is the only one.
    monitor.wait_for_line("the tray's item registered", &["member=StatusNotifierItemRegistered"]).await;
    let items = registered_items(&desktop).await;
    let pid = tray.child.id().expect("the tray runs");
    assert!(
        items.len() == 1 && items[0].starts_with(&format!("org.kde.StatusNotifierItem-{pid}-")),
        "the host shows the tray's item only: {items:?}"
    );
    let item = Item::parse(&items[0]);
    wait_event(&mut bob_events, "bob sees alice", |k| peer_online(k, "alice")).await;
    wait_event(&mut alice_events, "alice sees bob", |k| peer_online(k, "bob")).await;

    // Idle: the blue icon in the tray, nothing orange, no notification, and the
    // tooltip says so.
    tray.wait_for_line("the idle state", &["tray state", "icon=Idle"]).await;
    item.tooltip_saying(&desktop, &mut monitor, |t| t == "voicelink: idle · 1 peer online").await;
    let idle = screenshot_showing(&desktop, &artifacts.join("idle.png"), IDLE_BLUE).await;
    assert_eq!(Desktop::count_in_tray(&idle, RINGING_ORANGE, 12), 0, "no ringing icon while idle");
    assert_eq!(displayed_notifications(&desktop).await, 0);
    save_screenshot(&artifacts.join("idle.png"), "tray-idle.png");

    // The microphone check: bob's input as a level bar in the menu, until stopped.
    item.click(&desktop, "Check the microphone").await;
    // The tone's peak is -12 dBFS: seven or eight blocks of ten.
    tray.wait_for_line("the check's first reading", &["microphone check", "peak_dbfs=-12.0"]).await;
    let bar = format!("Microphone {}", "\u{25AE}".repeat(7));
    desktop.poll("the level bar in the menu", || item.menu_shows(&desktop, &bar)).await;
    item.click(&desktop, "Stop the microphone check").await;
    tray.wait_for_line("the check stopped", &["microphone check stopped"]).await;
    desktop.poll("the check offered again", || item.menu_shows(&desktop, "Check the microphone")).await;

    // Alice calls bob: the tray rings and a notification is raised.
    let dialed = alice_api.dial(v1::DialRequest { target: "bob".into(), ..Default::default() }).await.unwrap();
    let call_id = dialed.into_inner().call.expect("the call").call_id;
    wait_event(&mut bob_events, "bob rings", |k| matches!(k, event::Kind::IncomingCall(_))).await;
    tray.wait_for_line("the ringing state", &["tray state", "icon=Ringing", "alice is calling"]).await;
    assert_eq!(item.tooltip(&desktop).await.1, "alice is calling", "the tooltip once the tray rings");
    // Logged once Notify returned the notification's ID; the tray listened for
    // its actions from the start (above), before anything was sent.
    tray.wait_for_line("the notification", &["incoming-call notification shown", &call_id, "actions=true"]).await;
    // What was sent: the caller's name, Answer on a click, Answer and Decline buttons.
    let notify = next_notify_call(&mut monitor).await;
    // (app_name, replaces_id, app_icon, summary, body, actions, hints, expire_timeout)
    let (head, rest) = notify.split_at(notify.iter().position(|l| l == "array [").expect("the actions array"));
    assert_eq!(
        strings(head),
        ["voicelink", "call-start", "alice is calling", "Incoming voicelink call"],
        "{notify:#?}"
    );
    let actions = &rest[1..rest.iter().position(|l| l == "]").expect("the array's end")];
    // Pairs of (key, label).
    let actions: Vec<String> = strings(actions).chunks(2).map(|pair| pair.join("=")).collect();
    assert_eq!(actions, ["default=Answer", "answer=Answer", "decline=Decline"], "{notify:#?}");
    desktop.poll("dunst to display the notification", || async { displayed_notifications(&desktop).await == 1 }).await;
    let ringing = screenshot_showing(&desktop, &artifacts.join("ringing.png"), RINGING_ORANGE).await;
    assert_eq!(Desktop::count_in_tray(&ringing, IDLE_BLUE, 12), 0, "the idle icon is gone while ringing");
    save_screenshot(&artifacts.join("ringing.png"), "tray-ringing.png");
    let calls = bob_api.list_calls(v1::ListCallsRequest {}).await.unwrap().into_inner().calls;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].state(), CallState::Incoming, "not answered before the person acts");

    // Answer: the notification's default action (what clicking it does).
    let out = desktop.command("dunstctl").args(["action", "0"]).output().await.unwrap();
    assert!(out.status.success(), "dunstctl action: {}", String::from_utf8_lossy(&out.stderr));
    tray.wait_for_line("the Answer action", &["notification action", "choice=Answer"]).await;

    // Verified through the API: bob's call is answered and becomes active.
    wait_event(&mut bob_events, "bob's call active", |k| call_in_state(k, &call_id, CallState::Active)).await;
    wait_event(&mut alice_events, "alice's call active", |k| call_in_state(k, &call_id, CallState::Active)).await;
    let calls = bob_api.list_calls(v1::ListCallsRequest {}).await.unwrap().into_inner().calls;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].call_id, call_id);
    assert_eq!(calls[0].state(), CallState::Active);
    assert_eq!(calls[0].direction(), v1::CallDirection::Incoming);
    tray.wait_for_line("the in-call state", &["tray state", "icon=InCall"]).await;
    let in_call = item.tooltip_saying(&desktop, &mut monitor, |t| t.starts_with("In call with alice · ")).await;
    // "In call with alice · 00:01", with the quality verdict once the stats say.
    let clock = in_call.split(" · ").nth(1).expect("the duration");
    assert!(clock.len() == 5 && clock.as_bytes()[2] == b':', "a duration mm:ss in {in_call:?}");
    desktop.poll("the notification to go", || async { displayed_notifications(&desktop).await == 0 }).await;

    alice_api.hangup(v1::HangupRequest { call_id: call_id.clone() }).await.unwrap();
    tray.wait_for_line("idle again", &["tray state", "icon=Idle"]).await;

    // Alice calls again: this time Answer is chosen from the tray's menu, as the
    // host asks when the person clicks it.
    let dialed = alice_api.dial(v1::DialRequest { target: "bob".into(), ..Default::default() }).await.unwrap();
    let menu_call = dialed.into_inner().call.expect("the call").call_id;
    tray.wait_for_line("ringing again", &["tray state", "icon=Ringing", "alice is calling"]).await;
    let calls = bob_api.list_calls(v1::ListCallsRequest {}).await.unwrap().into_inner().calls;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].state(), CallState::Incoming, "not answered before the person acts");
    item.click(&desktop, "Answer alice").await;
    tray.wait_for_line("the menu's Answer", &["chosen", "Answer", &menu_call]).await;
    wait_event(&mut bob_events, "bob's call active", |k| call_in_state(k, &menu_call, CallState::Active)).await;
    let calls = bob_api.list_calls(v1::ListCallsRequest {}).await.unwrap().into_inner().calls;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].call_id, menu_call);
    assert_eq!(calls[0].state(), CallState::Active);
    tray.wait_for_line("in a call again", &["tray state", "icon=InCall"]).await;
    desktop.poll("its notification to go", || async { displayed_notifications(&desktop).await == 0 }).await;
    alice_api.hangup(v1::HangupRequest { call_id: menu_call.clone() }).await.unwrap();
    tray.wait_for_line("idle once more", &["tray state", "icon=Idle"]).await;

    // Alice calls a third time and the tray is told to quit (as at logout) while
    // it rings: it withdraws the notification it can no longer act on, and exits 0.
    let dialed = alice_api.dial(v1::DialRequest { target: "bob".into(), ..Default::default() }).await.unwrap();
    let third = dialed.into_inner().call.expect("the call").call_id;
    tray.wait_for_line("the third notification", &["incoming-call notification shown", &third]).await;
    desktop.poll("dunst to display it", || async { displayed_notifications(&desktop).await == 1 }).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(support::DEADLINE, tray.child.wait()).await.expect("the tray quits").unwrap();
    assert!(status.success(), "the tray quits cleanly: {status:?}");
    assert_eq!(displayed_notifications(&desktop).await, 0, "the ringing notification is withdrawn before quitting");
    eprintln!(
        "screenshots: {} {}; tray log: {}",
        artifacts.join("idle.png").display(),
        artifacts.join("ringing.png").display(),
        artifacts.join("tray.log").display(),
    );
}

/// The `retry_in_ms` of a "daemon unreachable" log line.
fn retry_in_ms(line: &str) -> u64 {
    let value = line.split("retry_in_ms=").nth(1).expect("retry_in_ms in the line");
    value.split_whitespace().next().unwrap().parse().expect("a number")
}

#[tokio::test]
async fn the_tray_says_when_the_daemon_is_gone_and_recovers_when_it_restarts() {
    require_netns_and_desktop!();
    let artifacts = artifacts();
    let lan = Lan::new(1, 1);
    let dir = tempfile::tempdir().unwrap();
    let daemon_dir = dir.path().join("bob");
    let quiet = "[audio]\ninput = \"silence\"\noutput = \"null\"\n";
    let desktop = Desktop::start(&dir.path().join("desktop")).await;

    // Started before the daemon: it keeps trying, with growing delays.
    let socket = daemon_dir.join("voiced.sock");
    let mut command = desktop.command(env!("CARGO_BIN_EXE_voicelink-tray"));
    command.arg("--socket").arg(&socket).env("RUST_LOG", "info");
    let mut tray = Watched::spawn(command, artifacts.join("tray-restart.log"));
    let mut delays = Vec::new();
    for _ in 0..3 {
        let line = tray.wait_for_line("a failed attempt", &["daemon unreachable", "voiced is not running"]).await;
        delays.push(retry_in_ms(&line));
    }
    assert_eq!(delays, [250, 500, 1000], "the back-off doubles");
    tray.wait_for_line("the daemon-down state", &["tray state", "link=Down", "icon=DaemonDown"]).await;

    // The daemon starts: the tray connects by itself.
    let mut bob = Daemon::start(Some(&lan.host(0)), &daemon_dir, "bob", quiet).await;
    tray.wait_for_line("the tray connecting", &["connected to voiced"]).await;
    tray.wait_for_line("the idle state", &["tray state", "link=Up", "icon=Idle"]).await;
    // A connection that lasts resets the back-off (one that fails at once does not).
    tray.wait_for_line("the connection steady", &["the connection is steady"]).await;

    // The daemon stops: the tray says so and retries from the shortest delay.
    // (Attempts logged before it connected are not about this.)
    tray.seen.clear();
    bob.stop_with(nix::sys::signal::Signal::SIGTERM).await;
    let line = tray.wait_for_line("the loss noticed", &["daemon unreachable"]).await;
    assert_eq!(retry_in_ms(&line), 250, "a steady connection resets the back-off: {line}");
    tray.wait_for_line("the daemon-down state again", &["tray state", "link=Down", "icon=DaemonDown"]).await;

    // And comes back: so does the tray.
    let _bob = Daemon::start(Some(&lan.host(0)), &daemon_dir, "bob", quiet).await;
    tray.wait_for_line("the tray reconnecting", &["connected to voiced"]).await;
    tray.wait_for_line("idle again", &["tray state", "link=Up", "icon=Idle"]).await;
    assert!(tray.child.try_wait().unwrap().is_none(), "the tray is still running");
}
