//! A user-mode PulseAudio with a null sink, `vsink`, whose monitor is the
//! default source: real sound devices on a machine without a sound card. What a
//! daemon plays there, it captures again. The daemon's end-to-end tests and the
//! bench's mouth-to-ear through devices use it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The null sink's name; its monitor (`vsink.monitor`) is the default source.
pub const SINK: &str = "vsink";

/// A running sound server, stopped on drop.
pub struct SoundServer {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    child: Child,
}

impl Drop for SoundServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SoundServer {
    /// Starts PulseAudio, or says why it cannot.
    pub fn start() -> Result<SoundServer, String> {
        if Command::new("pulseaudio").arg("--version").output().is_err() {
            return Err("pulseaudio is not installed (scripts/setup.sh --test installs it)".into());
        }
        let dir = tempfile::tempdir().map_err(|e| format!("cannot make the sound server's folder: {e}"))?;
        let (home, run) = (dir.path().join("home"), dir.path().join("run"));
        for d in [&home, &run] {
            std::fs::create_dir_all(d)
                .and_then(|()| std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700)))
                .map_err(|e| format!("cannot make {}: {e}", d.display()))?;
        }
        let socket = dir.path().join("native");
        let child = Command::new("pulseaudio")
            .args(["--daemonize=no", "--exit-idle-time=-1", "-n", "-F", "/dev/null", "--disallow-exit"])
            .arg("--log-target=stderr")
            .arg(format!("--load=module-null-sink sink_name={SINK}"))
            .arg(format!("--load=module-native-protocol-unix auth-anonymous=1 socket={}", socket.display()))
            .env("HOME", &home)
            .env("XDG_RUNTIME_DIR", &run)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start pulseaudio: {e}"))?;
        let server = SoundServer { _dir: dir, socket, child };
        // pactl is the only readiness signal PulseAudio gives: ask until it answers.
        for _ in 0..100 {
            let ok = Command::new("pactl")
                .args(["-s", &server.address(), "set-default-source", &format!("{SINK}.monitor")])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("pulseaudio did not come up".into())
    }

    /// Its address, for `PULSE_SERVER` and `--server`.
    pub fn address(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// Runs `pactl` with `args` against this server.
    pub fn pactl(&self, args: &[&str]) -> Result<(), String> {
        let output = Command::new("pactl")
            .args(["-s", &self.address()])
            .args(args)
            .output()
            .map_err(|e| format!("cannot run pactl: {e}"))?;
        if !output.status.success() {
            return Err(format!("pactl {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()));
        }
        Ok(())
    }
}
