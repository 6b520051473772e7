//! Test support: real daemons (the built `voiced` binary) in network namespaces
//! joined by bridges, driven with the built `voicectl`. Readiness is awaited from the
//! daemon's own sd_notify READY=1, events from `voicectl events --json`; nothing
//! sleeps to synchronise. The deadlines below only stop a broken test from hanging.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::UnixDatagram;
use tokio::process::{Child, ChildStdout, Command};

/// A guard against hangs, not a performance expectation.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The built `voiced`: cargo names it for the daemon's own tests; another
/// package's tests (the tray's include this module) find it in the target folder
/// next to their own executable (`target/debug/deps/x` → `target/debug/voiced`).
pub fn voiced_bin() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_voiced") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe.parent().and_then(Path::parent).expect("target folder").join("voiced");
    assert!(path.exists(), "{} is missing: build the whole workspace (cargo build --workspace) first", path.display());
    path
}

/// `voicectl` is built into the same folder when the workspace is built.
pub fn voicectl_bin() -> PathBuf {
    let path = voiced_bin().with_file_name("voicectl");
    assert!(path.exists(), "{} is missing: build the whole workspace (cargo build --workspace) first", path.display());
    path
}

/// Why a namespace test cannot run here, if it cannot.
pub fn netns_unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root to create network namespaces (ip netns add)".into());
    }
    match std::process::Command::new("ip").arg("netns").arg("list").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!("`ip netns list` failed: {}", String::from_utf8_lossy(&out.stderr).trim())),
        Err(e) => Some(format!("cannot run `ip` (install iproute2): {e}")),
    }
}

/// Skips (returns from) the test with a reason when namespaces are unavailable,
/// unless VOICELINK_REQUIRE_NETNS=1 (as in CI), which makes that a failure.
#[macro_export]
macro_rules! require_netns {
    () => {
        if let Some(reason) = support::netns_unavailable() {
            if std::env::var_os("VOICELINK_REQUIRE_NETNS").is_some_and(|v| v == "1") {
                panic!("namespace test cannot run and VOICELINK_REQUIRE_NETNS=1: {reason}");
            }
            eprintln!("SKIPPED: {reason}");
            return;
        }
    };
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

static NEXT_LAN: AtomicUsize = AtomicUsize::new(0);

/// Hosts (namespaces) joined by one or more bridged links. Host `h` has, on link
/// `l`, interface `eth{l}` with 10.77.{l}.{h+1}/24 and fd77:{l}::{h+1}/64.
pub struct Lan {
    prefix: String,
    hosts: usize,
}

impl Lan {
    pub fn new(hosts: usize, links: usize) -> Lan {
        let prefix = format!("vl{}x{}", std::process::id(), NEXT_LAN.fetch_add(1, Ordering::Relaxed));
        let lan = Lan { prefix, hosts };
        let bridge_ns = lan.bridge_ns();
        ip(&["netns", "add", &bridge_ns]);
        for h in 0..hosts {
            ip(&["netns", "add", &lan.host(h)]);
            ip(&["-n", &lan.host(h), "link", "set", "lo", "up"]);
        }
        for l in 0..links {
            let br = format!("br{l}");
            ip(&["-n", &bridge_ns, "link", "add", &br, "type", "bridge", "mcast_snooping", "0"]);
            ip(&["-n", &bridge_ns, "link", "set", &br, "up"]);
            for h in 0..hosts {
                let host = lan.host(h);
                let (inner, outer) = (format!("eth{l}"), format!("v{h}l{l}"));
                ip(&[
                    "link", "add", &inner, "netns", &host, "type", "veth", "peer", "name", &outer, "netns", &bridge_ns,
                ]);
                ip(&["-n", &bridge_ns, "link", "set", &outer, "master", &br, "up"]);
                ip(&["-n", &host, "addr", "add", &format!("10.77.{l}.{}/24", h + 1), "dev", &inner]);
                ip(&["-n", &host, "addr", "add", &format!("fd77:{l}::{}/64", h + 1), "dev", &inner, "nodad"]);
                ip(&["-n", &host, "link", "set", &inner, "multicast", "on", "up"]);
            }
        }
        for h in 0..hosts {
            ip(&["-n", &lan.host(h), "route", "add", "224.0.0.0/4", "dev", "eth0"]);
        }
        lan
    }

    pub fn host(&self, h: usize) -> String {
        format!("{}h{h}", self.prefix)
    }

    /// Pulls host `h`'s cable on link `l` (`plugged: false`): its interface stays
    /// up and configured, without carrier. `true` plugs it back.
    pub fn set_cable(&self, h: usize, l: usize, plugged: bool) {
        let state = if plugged { "up" } else { "down" };
        ip(&["-n", &self.bridge_ns(), "link", "set", &format!("v{h}l{l}"), state]);
    }

    /// Switches link `l` off (`on: false`): every host keeps its carrier, and
    /// nothing crosses the link. `true` switches it back on.
    pub fn set_switch(&self, l: usize, on: bool) {
        let state = if on { "up" } else { "down" };
        ip(&["-n", &self.bridge_ns(), "link", "set", &format!("br{l}"), state]);
    }

    /// Stops host `h` from multicasting mDNS questions (`pass: false`): its
    /// answers and unicast questions still go out. `true` lets them pass again.
    pub fn set_multicast_mdns_queries(&self, h: usize, pass: bool) {
        let host = self.host(h);
        let nft = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &host, "nft"])
                .args(args)
                .output()
                .expect("run nft (scripts/setup.sh --test installs nftables)");
            assert!(out.status.success(), "nft {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        };
        if pass {
            nft(&["delete", "table", "inet", "no_mdns_queries"]);
            return;
        }
        nft(&["add", "table", "inet", "no_mdns_queries"]);
        nft(&["add", "chain", "inet", "no_mdns_queries", "out", "{ type filter hook output priority 0; }"]);
        // The top bit of the DNS flags (8 bytes into the UDP header, then 2) is
        // clear in a question.
        for group in ["ip daddr 224.0.0.251", "ip6 daddr ff02::fb"] {
            let rule = format!("add rule inet no_mdns_queries out {group} udp dport 5353 @th,80,1 0 drop");
            nft(&rule.split(' ').collect::<Vec<_>>());
        }
    }

    fn bridge_ns(&self) -> String {
        format!("{}br", self.prefix)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in (0..self.hosts).map(|h| self.host(h)).chain([self.bridge_ns()]) {
            let _ = std::process::Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

/// A running `voiced`.
pub struct Daemon {
    pub name: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub device_id: String,
    netns: Option<String>,
    child: Option<Child>,
    /// Extra environment for the daemon.
    env: Vec<(String, String)>,
    /// Where the daemon's sd_notify messages arrive.
    notify: Option<UnixDatagram>,
}

impl Daemon {
    /// Starts `voiced` named `name` with its files in `dir` (inside namespace
    /// `netns`, if given) and waits for READY=1.
    pub async fn start(netns: Option<&str>, dir: &Path, name: &str, extra_config: &str) -> Daemon {
        Self::start_with_env(netns, dir, name, extra_config, &[]).await
    }

    /// As `start`, with extra environment variables.
    pub async fn start_with_env(
        netns: Option<&str>,
        dir: &Path,
        name: &str,
        extra_config: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("voiced.sock");
        let config = dir.join("voiced.toml");
        std::fs::write(
            &config,
            format!(
                "name = \"{name}\"\ndata_dir = \"{}\"\nlog_level = \"info,voicelink_daemon=debug\"\napi.socket = \"{}\"\n{extra_config}\n",
                dir.join("data").display(),
                socket.display()
            ),
        )
        .unwrap();
        let mut daemon = Daemon {
            name: name.into(),
            dir: dir.into(),
            socket,
            log: dir.join(format!("voiced-{name}.log")),
            device_id: String::new(),
            netns: netns.map(Into::into),
            child: None,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            notify: None,
        };
        daemon.launch(&config).await;
        daemon.device_id = daemon.ctl_json(&["status"]).await["device_id"].as_str().unwrap().to_owned();
        daemon
    }

    async fn launch(&mut self, config: &Path) {
        let notify_path = self.dir.join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(voiced_bin());
                c
            }
            None => Command::new(voiced_bin()),
        };
        command
            .arg("--config")
            .arg(config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn voiced");
        tokio::select! {
            () = wait_notified(&notify, "READY=1") => {}
            status = child.wait() => panic!("voiced {} exited before it was ready ({status:?}):\n{}", self.name, self.log_text()),
            () = tokio::time::sleep(DEADLINE) => panic!("voiced {} never said READY=1:\n{}", self.name, self.log_text()),
        }
        self.child = Some(child);
        self.notify = Some(notify);
    }

    /// Waits for the daemon to send this sd_notify message.
    pub async fn notified(&self, message: &str) {
        let notify = self.notify.as_ref().expect("started");
        tokio::time::timeout(DEADLINE, wait_notified(notify, message))
            .await
            .unwrap_or_else(|_| panic!("voiced never sent {message}"));
    }

    /// Starts it again with the same files (so the same identity).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        let config = self.dir.join("voiced.toml");
        self.launch(&config).await;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The WARN and ERROR lines of its log (a healthy call has none).
    #[allow(dead_code)] // used by some test files only
    pub fn warnings(&self) -> Vec<String> {
        self.log_text().lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).map(str::to_owned).collect()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().and_then(Child::id).expect("running") as i32
    }

    /// Sends `signal` (the daemon keeps running).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// Sends `signal` and waits for the process to exit.
    pub async fn stop_with(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // With `ip netns exec`, ip execs voiced, so the pid is voiced's.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id().unwrap() as i32), signal).unwrap();
        tokio::time::timeout(DEADLINE, child.wait()).await.expect("voiced did not exit").unwrap()
    }

    /// `voicectl --socket … ARGS`.
    pub async fn ctl(&self, args: &[&str]) -> Output {
        Command::new(voicectl_bin()).arg("--socket").arg(&self.socket).args(args).output().await.unwrap()
    }

    /// `voicectl --json ARGS`, parsed; panics with stderr if it fails.
    pub async fn ctl_json(&self, args: &[&str]) -> Value {
        let out = self.ctl(&[&["--json"], args].concat()).await;
        assert!(
            out.status.success(),
            "voicectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Returns once this daemon lists `device_id` as an online peer.
    pub async fn wait_until_it_sees(&self, device_id: &str) {
        let mut events = self.follow_events().await;
        events
            .seen_or_wait_for("the peer", |e| {
                let kind = e["type"].as_str().unwrap_or_default();
                let online = |p: &Value| p["device_id"] == device_id && p["online"] == true;
                e["snapshot"]["peers"].as_array().is_some_and(|peers| peers.iter().any(online))
                    || online(&e[kind]["peer"])
            })
            .await;
    }

    /// Returns once this daemon has no call left (its recordings are complete).
    pub async fn wait_until_no_calls(&self) {
        let mut events = self.follow_events().await;
        if events.snapshot["snapshot"]["calls"].as_array().is_some_and(|c| !c.is_empty()) {
            events
                .wait_for("the call to end", |e| {
                    let kind = e["type"].as_str().unwrap_or_default();
                    e[kind]["call"]["state"] == "ended"
                })
                .await;
        }
    }

    /// A gRPC client of this daemon.
    pub async fn client(&self) -> voicelink_proto::Client {
        voicelink_proto::connect(voicelink_proto::DaemonAddress::Unix(self.socket.clone())).await.expect("connect")
    }

    /// Follows `voicectl events --json`; returns once subscribed (the snapshot
    /// that every subscription starts with has arrived), so nothing that happens
    /// afterwards can be missed.
    pub async fn follow_events(&self) -> EventFollower {
        let mut child = std::process::Command::new(voicectl_bin());
        child.arg("--socket").arg(&self.socket).args(["--json", "events"]);
        let mut child = Command::from(child).stdout(Stdio::piped()).kill_on_drop(true).spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut follower = EventFollower { _child: child, lines, seen: Vec::new(), snapshot: Value::Null };
        follower.snapshot = follower.next().await;
        assert_eq!(follower.snapshot["type"], "snapshot", "a subscription starts with the state");
        follower
    }
}

async fn wait_notified(socket: &UnixDatagram, message: &str) {
    let mut buf = [0u8; 512];
    loop {
        let n = socket.recv(&mut buf).await.unwrap();
        if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == message) {
            return;
        }
    }
}

/// A `voicectl events --json` process.
pub struct EventFollower {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    pub seen: Vec<Value>,
    /// The state when the subscription started.
    pub snapshot: Value,
}

impl EventFollower {
    /// The next event.
    pub async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(DEADLINE, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no event arrived; seen so far: {:#?}", self.seen))
            .unwrap()
            .expect("voicectl events ended");
        let event: Value = serde_json::from_str(&line).unwrap();
        self.seen.push(event.clone());
        event
    }

    /// An event already seen that matches, or the next one that does.
    pub async fn seen_or_wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        match self.seen.iter().find(|e| matches(e)) {
            Some(event) => event.clone(),
            None => self.wait_for(what, matches).await,
        }
    }

    /// Reads every event for `window` (an observation, not a wait for
    /// something); panics at the first that matches.
    pub async fn none_for(&mut self, window: Duration, what: &str, matches: impl Fn(&Value) -> bool) {
        let end = tokio::time::Instant::now() + window;
        while let Ok(line) = tokio::time::timeout_at(end, self.lines.next_line()).await {
            let event: Value = serde_json::from_str(&line.unwrap().expect("voicectl events ended")).unwrap();
            assert!(!matches(&event), "{what}: {event:#}\nseen before: {:#?}", self.seen);
            self.seen.push(event);
        }
    }

    /// Reads events until one matches; returns it.
    pub async fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let wait = async {
            loop {
                let event = self.next().await;
                if matches(&event) {
                    return event;
                }
            }
        };
        match tokio::time::timeout(DEADLINE, wait).await {
            Ok(event) => event,
            Err(_) => panic!("never saw {what}; saw: {:#?}", self.seen),
        }
    }
}

/// The event is about the peer with this device ID.
pub fn about(event: &Value, device_id: &str) -> bool {
    let kind = event["type"].as_str().unwrap_or_default();
    let body = &event[kind];
    body["peer"]["device_id"] == device_id || body["device_id"] == device_id
}

/// Whether the event shows the peer `device_id` online (it appears or changes),
/// if it is about that peer at all.
pub fn shows_online(event: &Value, device_id: &str) -> Option<bool> {
    let kind = event["type"].as_str()?;
    let peer = &event[kind]["peer"];
    (matches!(kind, "peer_appeared" | "peer_changed") && peer["device_id"] == device_id)
        .then(|| peer["online"].as_bool())
        .flatten()
}

/// What a stretch of a recording holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Heard {
    /// Mostly this tone.
    Tone(u32),
    /// Nothing audible.
    Silence,
    /// Something else.
    Other,
}

/// A WAV file's 16-bit samples (channels interleaved).
pub fn samples_of(path: &Path) -> Vec<i16> {
    let mut reader = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    reader.samples::<i16>().map(Result::unwrap).collect()
}

/// Whether a window holds anything audible (RMS of 100 or more).
pub fn audible(window: &[i16]) -> bool {
    (window.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / window.len().max(1) as f64).sqrt() >= 100.0
}

/// Classifies a 48 kHz mono WAV file in 200 ms windows.
pub fn listen(path: &Path, tones: &[u32]) -> Vec<Heard> {
    classify(&samples_of(path), tones)
}

/// Classifies each channel of a 48 kHz stereo WAV file in 200 ms windows.
#[allow(dead_code)] // used by some test files only
pub fn listen_stereo(path: &Path, tones: &[u32]) -> (Vec<Heard>, Vec<Heard>) {
    let reader = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(reader.spec().channels, 2, "{} is not stereo", path.display());
    let samples = samples_of(path);
    let channel = |c: usize| samples.iter().skip(c).step_by(2).copied().collect::<Vec<_>>();
    (classify(&channel(0), tones), classify(&channel(1), tones))
}

/// Classifies 48 kHz mono samples in 200 ms windows.
pub fn classify(samples: &[i16], tones: &[u32]) -> Vec<Heard> {
    samples
        .chunks(9600)
        .filter(|w| w.len() == 9600)
        .map(|window| {
            if !audible(window) {
                return Heard::Silence;
            }
            tones
                .iter()
                .find(|&&hz| voicelink_daemon::audio::endpoints::tone_share(window, f64::from(hz)) > 0.5)
                .map_or(Heard::Other, |&hz| Heard::Tone(hz))
        })
        .collect()
}

/// Starts two daemons on a LAN (with extra config each) and waits until each has
/// seen the other.
pub async fn two_daemons_with(lan: &Lan, dir: &Path, a_config: &str, b_config: &str) -> (Daemon, Daemon) {
    two_daemons_in([&lan.host(0), &lan.host(1)], dir, a_config, b_config).await
}

/// As `two_daemons_with`, in these two namespaces.
pub async fn two_daemons_in(netns: [&str; 2], dir: &Path, a_config: &str, b_config: &str) -> (Daemon, Daemon) {
    let a = Daemon::start(Some(netns[0]), &dir.join("a"), "alice", a_config).await;
    let mut a_events = a.follow_events().await;
    let b = Daemon::start(Some(netns[1]), &dir.join("b"), "bob", b_config).await;
    let mut b_events = b.follow_events().await;
    a_events.wait_for("alice sees bob appear", |e| e["type"] == "peer_appeared" && about(e, &b.device_id)).await;
    b_events
        .seen_or_wait_for("bob sees alice", |e| {
            about(e, &a.device_id)
                || e["snapshot"]["peers"].as_array().is_some_and(|p| p.iter().any(|p| p["device_id"] == a.device_id))
        })
        .await;
    (a, b)
}

/// The event is a state change of this call to `state`.
pub fn call_is(event: &Value, call_id: &str, state: &str) -> bool {
    let kind = event["type"].as_str().unwrap_or_default();
    let call = &event[kind]["call"];
    call["call_id"] == call_id && call["state"] == state
}

/// The Python the test command sets up for the examples (scripts/setup.sh --test).
#[allow(dead_code)] // used by some test files only
pub fn example_python() -> Option<std::path::PathBuf> {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv/bin/python");
    if python.exists() {
        return Some(python);
    }
    let reason = format!("{} is missing: run scripts/setup.sh --test", python.display());
    if std::env::var_os("VOICELINK_REQUIRE_NETNS").is_some_and(|v| v == "1") {
        panic!("{reason}");
    }
    eprintln!("SKIPPED: {reason}");
    None
}
