//! Test support for the tray's end-to-end test, adapted from the daemon's
//! (`daemon/tests/support/mod.rs`): real `voiced` daemons in network namespaces
//! joined by a bridge, readiness from their sd_notify READY=1; and a virtual
//! desktop: Xvfb, an XEmbed tray host (trayer) and a notification daemon (dunst)
//! on a private D-Bus session bus. Nothing sleeps to synchronise: readiness comes
//! from what each program prints, and the few things that have no event (a
//! window appearing, a notification on screen) are polled with a deadline.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// A guard against hangs, not a performance expectation.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The workspace's binaries are built next to this test's folder
/// (`target/debug/deps/desktop-…` → `target/debug/voiced`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
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

/// Why the desktop test cannot run here, if it cannot: a missing program.
pub fn desktop_unavailable() -> Option<String> {
    let programs = ["Xvfb", "trayer", "dunst", "dunstctl", "dbus-daemon", "dbus-monitor", "import"];
    let missing: Vec<&str> = programs
        .into_iter()
        .filter(|p| {
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {p}")])
                .output()
                .map_or(true, |o| !o.status.success())
        })
        .collect();
    (!missing.is_empty()).then(|| {
        format!("needs {} (scripts/setup.sh --test installs xvfb trayer dunst dbus imagemagick)", missing.join(", "))
    })
}

/// Skips (returns from) the test with a reason when namespaces or the desktop
/// programs are unavailable, unless VOICELINK_REQUIRE_NETNS=1 or
/// VOICELINK_REQUIRE_DESKTOP=1 (as in CI), which makes that a failure.
#[macro_export]
macro_rules! require_netns_and_desktop {
    () => {
        for (reason, required_by) in [
            (support::netns_unavailable(), "VOICELINK_REQUIRE_NETNS"),
            (support::desktop_unavailable(), "VOICELINK_REQUIRE_DESKTOP"),
        ] {
            if let Some(reason) = reason {
                if std::env::var_os(required_by).is_some_and(|v| v == "1") {
                    panic!("desktop test cannot run and {required_by}=1: {reason}");
                }
                eprintln!("SKIPPED: {reason}");
                return;
            }
        }
    };
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

static NEXT_LAN: AtomicUsize = AtomicUsize::new(0);

/// Hosts (namespaces) on one bridge; host `h` has eth0 with 10.78.0.{h+1}/24.
pub struct Lan {
    prefix: String,
    hosts: usize,
}

impl Lan {
    pub fn new(hosts: usize) -> Lan {
        let prefix = format!("vt{}x{}", std::process::id(), NEXT_LAN.fetch_add(1, Ordering::Relaxed));
        let lan = Lan { prefix, hosts };
        let bridge_ns = lan.bridge_ns();
        ip(&["netns", "add", &bridge_ns]);
        ip(&["-n", &bridge_ns, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"]);
        ip(&["-n", &bridge_ns, "link", "set", "br0", "up"]);
        for h in 0..hosts {
            let host = lan.host(h);
            ip(&["netns", "add", &host]);
            ip(&["-n", &host, "link", "set", "lo", "up"]);
            let outer = format!("v{h}");
            ip(&["link", "add", "eth0", "netns", &host, "type", "veth", "peer", "name", &outer, "netns", &bridge_ns]);
            ip(&["-n", &bridge_ns, "link", "set", &outer, "master", "br0", "up"]);
            ip(&["-n", &host, "addr", "add", &format!("10.78.0.{}/24", h + 1), "dev", "eth0"]);
            ip(&["-n", &host, "link", "set", "eth0", "multicast", "on", "up"]);
            ip(&["-n", &host, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
        }
        lan
    }

    pub fn host(&self, h: usize) -> String {
        format!("{}h{h}", self.prefix)
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
    pub socket: PathBuf,
    pub log: PathBuf,
    _child: Child,
}

impl Daemon {
    /// Starts `voiced` named `name` in namespace `netns` with its files in `dir`
    /// and waits for READY=1.
    pub async fn start(netns: &str, dir: &Path, name: &str, extra_config: &str) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("voiced.sock");
        let config = dir.join("voiced.toml");
        std::fs::write(
            &config,
            format!(
                "name = \"{name}\"\ndata_dir = \"{}\"\nlog_level = \"info\"\napi.socket = \"{}\"\n{extra_config}\n",
                dir.join("data").display(),
                socket.display()
            ),
        )
        .unwrap();
        let log = dir.join(format!("voiced-{name}.log"));
        let notify_path = dir.join("notify.sock");
        // Left behind by an earlier start in the same folder.
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        let log_file = std::fs::File::create(&log).unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(workspace_bin("voiced"))
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn voiced");
        let ready = async {
            let mut buf = [0u8; 512];
            loop {
                let n = notify.recv(&mut buf).await.unwrap();
                if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") {
                    return;
                }
            }
        };
        tokio::select! {
            () = ready => {}
            status = child.wait() => panic!("voiced {name} exited before it was ready ({status:?}):\n{}", std::fs::read_to_string(&log).unwrap_or_default()),
            () = tokio::time::sleep(DEADLINE) => panic!("voiced {name} never said READY=1"),
        }
        Daemon { name: name.into(), socket, log, _child: child }
    }

    /// Stops the daemon (SIGTERM, as systemd would) and waits for it to exit.
    pub async fn stop(mut self) {
        let pid = self._child.id().expect("running") as i32;
        // `ip netns exec` execs voiced, so the pid is voiced's.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
        tokio::time::timeout(DEADLINE, self._child.wait()).await.expect("voiced did not exit").unwrap();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn client(&self) -> voicelink_proto::Client {
        voicelink_proto::connect(voicelink_proto::DaemonAddress::Unix(self.socket.clone())).await.expect("connect")
    }
}

/// A child process whose output lines arrive on a channel (and go to a log file).
pub struct Watched {
    pub child: Child,
    pub lines: mpsc::UnboundedReceiver<String>,
    pub log: PathBuf,
    pub seen: Vec<String>,
}

impl Watched {
    /// Spawns `command` with stdout and stderr piped into one line stream.
    pub fn spawn(mut command: Command, log: PathBuf) -> Watched {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        let file = std::sync::Arc::new(std::sync::Mutex::new(std::fs::File::create(&log).unwrap()));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for reader in [Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>, Box::new(err)] {
            let (tx, file) = (tx.clone(), file.clone());
            tokio::spawn(async move {
                let mut reader = BufReader::new(reader).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    use std::io::Write as _;
                    let _ = writeln!(file.lock().unwrap(), "{line}");
                    let _ = tx.send(line);
                }
            });
        }
        Watched { child, lines, log, seen: Vec::new() }
    }

    /// The first line that contains all of `parts` and has not been matched by
    /// an earlier wait (lines read while waiting for something else count).
    pub async fn wait_for_line(&mut self, what: &str, parts: &[&str]) -> String {
        let matches = |l: &str| parts.iter().all(|p| l.contains(p));
        if let Some(pos) = self.seen.iter().position(|l| matches(l)) {
            return self.seen.remove(pos);
        }
        let wait = async {
            loop {
                match self.lines.recv().await {
                    Some(line) if matches(&line) => return line,
                    Some(line) => self.seen.push(line),
                    None => panic!("output ended before {what}"),
                }
            }
        };
        match tokio::time::timeout(DEADLINE, wait).await {
            Ok(line) => line,
            Err(_) => panic!("never saw {what}; output so far:\n{}", self.seen.join("\n")),
        }
    }

    /// Reads one line and returns it.
    pub async fn first_line(&mut self, what: &str) -> String {
        let line = tokio::time::timeout(DEADLINE, self.lines.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: no output"))
            .unwrap_or_else(|| panic!("{what}: exited without output"));
        self.seen.push(line.clone());
        line
    }
}

/// A virtual desktop: Xvfb, a private session bus, trayer and dunst.
pub struct Desktop {
    pub dir: PathBuf,
    pub display: String,
    pub bus: String,
    pub runtime_dir: PathBuf,
    /// Started in order: Xvfb, the bus, trayer, dunst; stopped in reverse (see
    /// `Drop`), so no client outlives its server.
    _children: Vec<Watched>,
}

impl Drop for Desktop {
    fn drop(&mut self) {
        // A Vec drops front to back; its children are killed back to front.
        while let Some(child) = self._children.pop() {
            drop(child);
        }
    }
}

impl Desktop {
    pub async fn start(dir: &Path) -> Desktop {
        std::fs::create_dir_all(dir).unwrap();
        // Xvfb picks a free display and writes its number when it is ready.
        let mut command = Command::new("Xvfb");
        command.args(["-displayfd", "1", "-screen", "0", "800x300x24", "-nolisten", "tcp"]);
        let mut xvfb = Watched::spawn(command, dir.join("xvfb.log"));
        let number = loop {
            let line = xvfb.first_line("Xvfb").await;
            if let Ok(n) = line.trim().parse::<u32>() {
                break n;
            }
        };
        let display = format!(":{number}");

        // A private session bus: nothing of the machine's (if it has one) is touched.
        let mut command = Command::new("dbus-daemon");
        command.args(["--session", "--nofork", "--nopidfile", "--print-address=1"]);
        let mut bus_daemon = Watched::spawn(command, dir.join("dbus.log"));
        let bus = loop {
            let line = bus_daemon.first_line("dbus-daemon").await;
            if line.starts_with("unix:") {
                break line.trim().to_owned();
            }
        };

        let runtime_dir = dir.join("runtime");
        std::fs::create_dir_all(&runtime_dir).unwrap();
        // XDG_RUNTIME_DIR must be private to its user.
        std::fs::set_permissions(&runtime_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let mut desktop = Desktop { dir: dir.into(), display, bus, runtime_dir, _children: Vec::new() };

        // The tray host on the top right, the notifications below it.
        let mut trayer = desktop.command("trayer");
        trayer.args(["--edge", "top", "--align", "right", "--widthtype", "pixel", "--width", "96"]);
        trayer.args(["--heighttype", "pixel", "--height", "40", "--SetDockType", "false", "--expand", "false"]);
        let dunstrc = dir.join("dunstrc");
        std::fs::write(
            &dunstrc,
            "[global]\norigin = top-right\noffset = 10x60\nwidth = 360\nfont = Monospace 10\n\
             [urgency_critical]\nbackground = \"#803010\"\nforeground = \"#ffffff\"\ntimeout = 0\n",
        )
        .unwrap();
        let mut dunst = desktop.command("dunst");
        dunst.arg("-conf").arg(&dunstrc);
        desktop._children = vec![
            xvfb,
            bus_daemon,
            Watched::spawn(trayer, dir.join("trayer.log")),
            Watched::spawn(dunst, dir.join("dunst.log")),
        ];
        // dunst has no readiness signal: it is ready once it answers dunstctl.
        desktop
            .poll("dunst to answer on the bus", || async {
                desktop.command("dunstctl").arg("is-paused").output().await.is_ok_and(|o| o.status.success())
            })
            .await;
        desktop
    }

    /// A command that runs on this desktop and bus.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .env("DISPLAY", &self.display)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus)
            .env("XDG_RUNTIME_DIR", &self.runtime_dir)
            .env("HOME", &self.dir)
            .env_remove("WAYLAND_DISPLAY");
        command
    }

    /// Polls `condition` until it holds, for things that have no event.
    pub async fn poll<F, Fut>(&self, what: &str, mut condition: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while !condition().await {
            assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A screenshot of the whole screen as RGB pixels (width, height, rgb).
    pub async fn screenshot(&self, path: &Path) -> (u32, u32, Vec<u8>) {
        let out = self.command("import").args(["-window", "root"]).arg(path).output().await.unwrap();
        assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
        let mut decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        // ImageMagick writes a palette when few colours are on screen.
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        let (color_type, _) = reader.output_color_type();
        let channels = color_type.samples();
        assert!(channels >= 3, "a colour screenshot ({color_type:?})");
        let rgb = buf.chunks(channels).flat_map(|p| [p[0], p[1], p[2]]).collect();
        (info.width, info.height, rgb)
    }

    /// Counts pixels within `tolerance` of `colour` in the top-right corner
    /// (where trayer sits) of a screenshot.
    pub fn count_in_tray(shot: &(u32, u32, Vec<u8>), colour: [u8; 3], tolerance: u8) -> usize {
        let (width, _height, rgb) = shot;
        let mut count = 0;
        for y in 0..40u32 {
            for x in width - 96..*width {
                let i = ((y * width + x) * 3) as usize;
                if (0..3).all(|c| rgb[i + c].abs_diff(colour[c]) <= tolerance) {
                    count += 1;
                }
            }
        }
        count
    }
}
