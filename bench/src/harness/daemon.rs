//! A `voiced` running inside a namespace, as the bench drives it: started with
//! its own config and files, awaited by its sd_notify READY=1, reached over its
//! gRPC socket, measured through /proc, and stopped with SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use voicelink_bench::hostile::StalledClients;
use voicelink_proto::v1::{Event, GetStatusRequest, WatchEventsRequest, event};
use voicelink_proto::{Client, DaemonAddress};

/// A guard against hangs, not a performance expectation.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// What the daemon is configured with.
pub struct DaemonSpec<'a> {
    /// Display name.
    pub name: &'a str,
    /// Namespace to run in.
    pub netns: &'a str,
    /// Its files: config, data, socket, log.
    pub dir: &'a Path,
    /// Extra TOML (dotted keys), e.g. `calls.auto_answer = true`.
    pub extra_config: String,
    /// The sound server its sound devices are on (`PULSE_SERVER`), if any.
    pub sound_server: Option<String>,
}

impl<'a> DaemonSpec<'a> {
    /// A daemon with files only (no sound server).
    pub fn new(name: &'a str, netns: &'a str, dir: &'a Path, extra_config: String) -> Self {
        DaemonSpec { name, netns, dir, extra_config, sound_server: None }
    }

    /// The callee that sends back what it hears, and plays it to `output`.
    pub fn echo(netns: &'a str, dir: &'a Path, output: &str) -> Self {
        Self::new("callee", netns, dir, format!("audio.input = \"echo\"\naudio.output = {output:?}\n"))
    }
}

/// A running daemon.
pub struct Daemon {
    pub name: String,
    pub device_id: String,
    pub log: PathBuf,
    pub client: Client,
    child: Option<Child>,
    pid: i32,
    /// Kept open for the daemon's later notices (`STOPPING=1`): a socket that
    /// refuses them makes every stop log a warning.
    _notify: UnixDatagram,
    /// SIGTERM was sent.
    terminated: bool,
}

/// Starts `count` stalled TLS clients against `daemon` (in namespace `netns`),
/// four from each loopback address from 127.0.0.2 up, and waits until they are
/// all connected once; `None` when `count` is 0.
pub async fn stall(daemon: &Daemon, netns: &str, count: usize) -> Result<Option<StalledClients>> {
    if count == 0 {
        return Ok(None);
    }
    let status = daemon.client.clone().get_status(GetStatusRequest {}).await?.into_inner();
    let port = u16::try_from(status.signaling_port).context("the signaling port")?;
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let sources: Vec<IpAddr> = (0..count.div_ceil(4)).map(|n| IpAddr::from([127, 0, 0, 2 + n as u8])).collect();
    let netns = netns.to_owned();
    let clients = tokio::task::spawn_blocking(move || -> Result<StalledClients> {
        let clients = StalledClients::start(&netns, target, sources, 4)?;
        let counts = clients.wait_until(DEADLINE, |c| c.opened >= count as u64);
        tracing::info!(?counts, "stalled clients are in place");
        Ok(clients)
    })
    .await??;
    Ok(Some(clients))
}

impl Daemon {
    /// Starts `voiced` with `log_level` (its config key) and waits until it
    /// says READY=1 and answers on its socket.
    pub async fn start(voiced: &Path, log_level: &str, spec: DaemonSpec<'_>) -> Result<Daemon> {
        let dir = spec.dir;
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let socket = dir.join("voiced.sock");
        let config = dir.join("voiced.toml");
        let log = dir.join("voiced.log");
        std::fs::write(
            &config,
            format!(
                "name = {name:?}\ndata_dir = {data:?}\nlog_level = {log_level:?}\napi.socket = {socket:?}\n{extra}\n",
                name = spec.name,
                data = dir.join("data").display().to_string(),
                socket = socket.display().to_string(),
                extra = spec.extra_config,
            ),
        )?;
        let notify_path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        // A path socket, not an abstract one: it is reachable from inside the
        // daemon's network namespace (abstract sockets belong to a namespace).
        let notify = UnixDatagram::bind(&notify_path)?;
        let log_file = std::fs::File::create(&log)?;
        // `ip netns exec` execs voiced, so the child's pid is voiced's.
        let mut child = Command::new("ip")
            .args(["netns", "exec", spec.netns])
            .arg(voiced)
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .envs(spec.sound_server.iter().map(|server| ("PULSE_SERVER", server)))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", voiced.display()))?;
        let pid = child.id().ok_or_else(|| anyhow!("voiced exited at once"))? as i32;
        tokio::select! {
            ready = wait_notified(&notify, "READY=1") => ready?,
            status = child.wait() => bail!("voiced {} exited before it was ready ({status:?}); see {}", spec.name, log.display()),
            () = tokio::time::sleep(DEADLINE) => bail!("voiced {} never said READY=1; see {}", spec.name, log.display()),
        }
        let mut client = voicelink_proto::connect(DaemonAddress::Unix(socket)).await?;
        let device_id = client.get_status(GetStatusRequest {}).await?.into_inner().device_id;
        Ok(Daemon {
            name: spec.name.into(),
            device_id,
            log,
            client,
            child: Some(child),
            pid,
            _notify: notify,
            terminated: false,
        })
    }

    /// Its process ID (voiced itself).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Subscribes to its events; returns once subscribed (the first event, the
    /// snapshot, has arrived), so nothing after this call can be missed.
    pub async fn events(&self) -> Result<Events> {
        let mut stream = self.client.clone().watch_events(WatchEventsRequest {}).await?.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let first = tokio::time::timeout(DEADLINE, stream.message())
            .await
            .context("no snapshot")??
            .ok_or_else(|| anyhow!("the event stream ended at once"))?;
        let _ = tx.send((Instant::now(), first));
        tokio::spawn(async move {
            while let Ok(Some(event)) = stream.message().await {
                if tx.send((Instant::now(), event)).is_err() {
                    break;
                }
            }
        });
        Ok(Events { rx, seen: Vec::new(), daemon: self.name.clone() })
    }

    /// Sends SIGTERM without waiting (several daemons stop together this way).
    pub fn terminate(&mut self) -> Result<()> {
        if self.child.is_some() && !std::mem::replace(&mut self.terminated, true) {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), nix::sys::signal::Signal::SIGTERM)?;
        }
        Ok(())
    }

    /// SIGTERM, then waits for it to exit (recordings are complete after that).
    pub async fn stop(&mut self) -> Result<()> {
        self.terminate()?;
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let status = tokio::time::timeout(DEADLINE, child.wait()).await.context("voiced did not exit")??;
        if !status.success() {
            tracing::warn!(daemon = %self.name, ?status, "voiced exited with an error");
        }
        Ok(())
    }
}

async fn wait_notified(socket: &UnixDatagram, message: &str) -> Result<()> {
    let mut buf = [0u8; 512];
    loop {
        let n = socket.recv(&mut buf).await?;
        if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == message) {
            return Ok(());
        }
    }
}

/// A daemon's event feed, each event stamped with when the bench received it.
pub struct Events {
    rx: mpsc::UnboundedReceiver<(Instant, Event)>,
    /// Everything received so far.
    pub seen: Vec<(Instant, Event)>,
    daemon: String,
}

impl Events {
    /// An event already seen that matches, or the next one that does, within `limit`.
    pub async fn seen_or_wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        matches: impl Fn(&Event) -> bool,
    ) -> Result<(Instant, Event)> {
        if let Some(found) = self.seen.iter().find(|(_, e)| matches(e)) {
            return Ok(found.clone());
        }
        self.wait_for(what, limit, matches).await
    }

    /// Reads events until one matches; returns it with its arrival time.
    pub async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        matches: impl Fn(&Event) -> bool,
    ) -> Result<(Instant, Event)> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let next = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .map_err(|_| anyhow!("{}: no {what} within {limit:?}", self.daemon))?
                .ok_or_else(|| anyhow!("{}: the event stream ended before {what}", self.daemon))?;
            self.seen.push(next.clone());
            if matches(&next.1) {
                return Ok(next);
            }
        }
    }
}

/// The call in a call event (incoming or state change), if it is one.
pub fn event_call(event: &Event) -> Option<&voicelink_proto::v1::Call> {
    match event.kind.as_ref()? {
        event::Kind::IncomingCall(e) => e.call.as_ref(),
        event::Kind::CallStateChanged(e) => e.call.as_ref(),
        _ => None,
    }
}

/// Whether the event says the peer `device_id` is online (in a snapshot or as it
/// appears or changes).
pub fn shows_peer_online(event: &Event, device_id: &str) -> bool {
    let online = |p: &voicelink_proto::v1::Peer| p.device_id == device_id && p.online;
    match event.kind.as_ref() {
        Some(event::Kind::Snapshot(s)) => s.peers.iter().any(online),
        Some(event::Kind::PeerAppeared(e)) => e.peer.as_ref().is_some_and(online),
        Some(event::Kind::PeerChanged(e)) => e.peer.as_ref().is_some_and(online),
        _ => false,
    }
}

/// Whether the peer `device_id` is online, if the event says (it appears or changes).
pub fn peer_online(event: &Event, device_id: &str) -> Option<bool> {
    let peer = match event.kind.as_ref()? {
        event::Kind::PeerAppeared(e) => e.peer.as_ref()?,
        event::Kind::PeerChanged(e) => e.peer.as_ref()?,
        _ => return None,
    };
    (peer.device_id == device_id).then_some(peer.online)
}

/// CPU time and memory of a process, from /proc.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub at: Instant,
    /// utime + stime.
    pub cpu: Duration,
    /// Peak resident set size so far (VmHWM), KiB.
    pub peak_rss_kib: u64,
}

/// Reads /proc/PID/stat and /proc/PID/status.
pub fn proc_sample(pid: i32) -> Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat are utime and stime; `after` starts at field 3.
    let ticks = |i: usize| -> Result<u64> {
        fields.get(i - 3).and_then(|f| f.parse().ok()).ok_or_else(|| anyhow!("no field {i} in /proc/{pid}/stat"))
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as u64,
        _ => 100,
    };
    let cpu_ticks = ticks(14)? + ticks(15)?;
    let cpu = Duration::from_micros(cpu_ticks * 1_000_000 / per_second);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(ProcSample { at: Instant::now(), cpu, peak_rss_kib: kib("VmHWM:") })
}
