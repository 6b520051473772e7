//! Test support for the tray's end-to-end test: a virtual desktop: Xvfb, a
//! StatusNotifierItem host (xfce4-panel's Status Tray plugin, with its settings
//! daemon xfconfd) and a notification daemon (dunst) on a private D-Bus session
//! bus. The daemons and their namespaces come from the daemon's own test
//! support (`daemon/tests/support/mod.rs`, included as `lan`). Nothing sleeps
//! to synchronise: readiness comes from what each program prints or announces
//! on the bus, and the few things that have no event (an icon painted, a
//! notification on screen) are polled with a deadline.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

pub use crate::lan::DEADLINE;

/// Why the desktop test cannot run here, if it cannot: a missing program.
pub fn desktop_unavailable() -> Option<String> {
    let programs = ["Xvfb", "xfce4-panel", "dunst", "dunstctl", "dbus-daemon", "dbus-monitor", "dbus-send", "import"];
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
        format!(
            "needs {} (scripts/setup.sh --test installs xvfb xfce4-panel dunst dbus imagemagick)",
            missing.join(", ")
        )
    })
}

/// Skips (returns from) the test with a reason when namespaces or the desktop
/// programs are unavailable, unless VOICELINK_REQUIRE_NETNS=1 or
/// VOICELINK_REQUIRE_DESKTOP=1 (as in CI), which makes that a failure.
#[macro_export]
macro_rules! require_netns_and_desktop {
    () => {
        for (reason, required_by) in [
            (lan::netns_unavailable(), "VOICELINK_REQUIRE_NETNS"),
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

/// The panel: one small panel in the top-right corner, holding only the Status
/// Tray plugin (StatusNotifierItems, and XEmbed icons as well) with 32 px icons,
/// the size the tray draws them at. xfce4-panel reads it from xfconfd, which the
/// session bus starts on demand.
const PANEL_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<channel name="xfce4-panel" version="1.0">
  <property name="configver" type="int" value="2"/>
  <property name="panels" type="array">
    <value type="int" value="1"/>
    <property name="panel-1" type="empty">
      <property name="position" type="string" value="p=2;x=0;y=0"/>
      <property name="position-locked" type="bool" value="true"/>
      <property name="length" type="uint" value="1"/>
      <property name="length-adjust" type="bool" value="true"/>
      <property name="size" type="uint" value="40"/>
      <property name="plugin-ids" type="array">
        <value type="int" value="1"/>
      </property>
    </property>
  </property>
  <property name="plugins" type="empty">
    <property name="plugin-1" type="string" value="systray">
      <property name="square-icons" type="bool" value="true"/>
      <property name="icon-size" type="int" value="32"/>
    </property>
  </property>
</channel>
"#;

/// The StatusNotifierItem watcher's bus name (the tray host owns it).
pub const SNI_WATCHER: &str = "org.kde.StatusNotifierWatcher";

/// A virtual desktop: Xvfb, a private session bus, xfce4-panel and dunst.
pub struct Desktop {
    pub dir: PathBuf,
    pub display: String,
    pub bus: String,
    pub runtime_dir: PathBuf,
    pub config_dir: PathBuf,
    /// Started in order: Xvfb, the bus, the panel, dunst; stopped in reverse
    /// (see `Drop`), so no client outlives its server.
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

        let runtime_dir = dir.join("runtime");
        std::fs::create_dir_all(&runtime_dir).unwrap();
        // XDG_RUNTIME_DIR must be private to its user.
        std::fs::set_permissions(&runtime_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let config_dir = dir.join("config");
        let xfconf = config_dir.join("xfce4/xfconf/xfce-perchannel-xml");
        std::fs::create_dir_all(&xfconf).unwrap();
        std::fs::write(xfconf.join("xfce4-panel.xml"), PANEL_XML).unwrap();
        let mut desktop =
            Desktop { dir: dir.into(), display, bus: String::new(), runtime_dir, config_dir, _children: Vec::new() };

        // A private session bus: nothing of the machine's (if it has one) is
        // touched. The services it starts on demand (xfconfd) get this desktop's
        // environment, so xfconfd reads the panel's settings from `config_dir`.
        let mut command = desktop.command("dbus-daemon");
        command.env_remove("DBUS_SESSION_BUS_ADDRESS");
        command.args(["--session", "--nofork", "--nopidfile", "--print-address=1"]);
        let mut bus_daemon = Watched::spawn(command, dir.join("dbus.log"));
        desktop.bus = loop {
            let line = bus_daemon.first_line("dbus-daemon").await;
            if line.starts_with("unix:") {
                break line.trim().to_owned();
            }
        };
        desktop._children = vec![xvfb, bus_daemon];

        // The tray host on the top right. It is ready for items once it owns the
        // watcher's name: a monitor sees that happen.
        let rule =
            format!("type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{SNI_WATCHER}'");
        let mut command = desktop.command("dbus-monitor");
        command.args(["--session", &rule]);
        let mut owner = Watched::spawn(command, dir.join("dbus-monitor-watcher.log"));
        owner.wait_for_line("dbus-monitor to start monitoring", &["member=NameLost"]).await;
        // No window manager here: do not wait for one.
        let mut panel = desktop.command("xfce4-panel");
        panel.arg("--disable-wm-check");
        desktop._children.push(Watched::spawn(panel, dir.join("xfce4-panel.log")));
        owner.wait_for_line("the panel's StatusNotifierItem watcher", &["member=NameOwnerChanged"]).await;
        drop(owner);

        // The notifications below the panel.
        let dunstrc = dir.join("dunstrc");
        std::fs::write(
            &dunstrc,
            "[global]\norigin = top-right\noffset = 10x60\nwidth = 360\nfont = Monospace 10\n\
             [urgency_critical]\nbackground = \"#803010\"\nforeground = \"#ffffff\"\ntimeout = 0\n",
        )
        .unwrap();
        let mut dunst = desktop.command("dunst");
        dunst.arg("-conf").arg(&dunstrc);
        desktop._children.push(Watched::spawn(dunst, dir.join("dunst.log")));
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
            .env("XDG_CONFIG_HOME", &self.config_dir)
            // No accessibility bus for the panel to start and leave behind.
            .env("NO_AT_BRIDGE", "1")
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
    /// (where the panel sits) of a screenshot.
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
