//! The group-call bench: N `voiced` on one bridged LAN (no impairment), each
//! with a tone of its own as its microphone and a WAV file as its speaker, in
//! one full-mesh call. For each size it measures, per daemon, CPU, peak memory
//! and bandwidth over the talking window, how long the mesh took to form, and
//! whether every recording holds exactly the other participants' tones in
//! every window (so "how many fit" is the largest size that stays intact).
//!
//! Then, in a call of the largest size, mouth-to-ear between two participants:
//! p0 speaks (the speech file), p1 echoes what it hears from p0 (an echo input
//! answers each leg with that leg's audio), the others are silent; the lag of
//! p0's speech in p0's recording, which p0's bridge mixes from all its legs, is
//! the round trip, half of it one way.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use voicelink_bench::analysis;
use voicelink_bench::relay::Namespace;
use voicelink_proto::v1::{AddParticipantRequest, CallState, DialRequest, ListCallsRequest};

use super::daemon::{DEADLINE, Daemon, DaemonSpec, proc_sample, shows_peer_online};
use super::run::{RunSettings, cpu_percent};
use super::speech::{self, CALL_RATE, Material};

/// Each participant's microphone, in order.
const TONES: [u32; 6] = [440, 550, 660, 770, 880, 990];
/// How long each call talks while it is measured.
const TALK: Duration = Duration::from_secs(10);
/// A window holds a tone when the tone is at least this share of its sound
/// (five equal tones are a fifth each), and not at all below the other bound.
const PRESENT: f64 = 0.08;
const ABSENT: f64 = 0.02;

/// The group-call bench's figures.
#[derive(Debug, Serialize, Clone, Default)]
pub struct GroupReport {
    /// One call of each size.
    pub calls: Vec<GroupResult>,
    /// Mouth-to-ear between two participants of a call of the largest size.
    pub latency: Option<GroupLatency>,
}

/// Mouth-to-ear between p0 and p1 in a group call.
#[derive(Debug, Serialize, Clone)]
pub struct GroupLatency {
    pub participants: usize,
    /// p0 → p1 → p0, measured in p0's recording.
    pub echo_round_trip_ms: f64,
    pub one_way_ms: f64,
    /// How well the echo matched the speech (1 is exact).
    pub correlation: f64,
}

/// One group call's figures.
#[derive(Debug, Serialize, Clone)]
pub struct GroupResult {
    pub participants: usize,
    /// From the first add to every daemon talking with all the others.
    pub mesh_seconds: f64,
    pub daemons: Vec<GroupDaemon>,
}

/// One participant's figures over the talking window.
#[derive(Debug, Serialize, Clone)]
pub struct GroupDaemon {
    pub name: String,
    pub cpu_percent: f64,
    pub peak_rss_mib: f64,
    pub sent_kbps: f64,
    pub received_kbps: f64,
    /// Windows (200 ms) of the talking window that held every other tone and
    /// not its own, of all of them.
    pub intact_windows: usize,
    pub windows: usize,
}

impl GroupResult {
    /// Every recording intact in at least 95 % of its windows.
    pub fn intact(&self) -> bool {
        self.daemons.iter().all(|d| d.windows > 0 && d.intact_windows * 100 >= d.windows * 95)
    }
}

/// Runs a group call of each size, then measures mouth-to-ear in the largest.
pub async fn run_all(settings: &RunSettings, material: &Material, sizes: &[usize]) -> Result<GroupReport> {
    let mut report = GroupReport::default();
    for &size in sizes {
        tracing::info!(participants = size, "group call");
        report.calls.push(run(settings, size).await.with_context(|| format!("a group call of {size}"))?);
    }
    if let Some(&size) = sizes.iter().max() {
        tracing::info!(participants = size, "mouth-to-ear in a group call");
        report.latency = latency(settings, material, size).await.with_context(|| format!("latency, {size} people"))?;
    }
    Ok(report)
}

async fn run(settings: &RunSettings, size: usize) -> Result<GroupResult> {
    let dir = settings.work.join(format!("group{size}"));
    let inputs = TONES.iter().take(size).map(|tone| format!("tone:{tone}")).collect();
    let Mesh { lan, mut daemons, seconds: mesh_seconds } = mesh(settings, &dir, inputs).await?;
    let before: Vec<_> = daemons.iter().map(|d| proc_sample(d.pid())).collect::<Result<_>>()?;
    let traffic_before: Vec<_> = lan.hosts.iter().map(|h| link_bytes(h.name())).collect::<Result<_>>()?;
    tokio::time::sleep(TALK).await;
    let after: Vec<_> = daemons.iter().map(|d| proc_sample(d.pid())).collect::<Result<_>>()?;
    let traffic_after: Vec<_> = lan.hosts.iter().map(|h| link_bytes(h.name())).collect::<Result<_>>()?;
    stop_together(&mut daemons).await?;

    let mut figures = Vec::new();
    for (n, daemon) in daemons.iter().enumerate() {
        let seconds = after[n].at.saturating_duration_since(before[n].at).as_secs_f64().max(f64::EPSILON);
        let kbps = |bytes: u64| bytes as f64 * 8.0 / 1000.0 / seconds;
        let (intact_windows, windows) = intact(&dir.join(format!("{}.wav", daemon.name)), n, size)?;
        figures.push(GroupDaemon {
            name: daemon.name.clone(),
            cpu_percent: cpu_percent(&before[n], &after[n]),
            peak_rss_mib: after[n].peak_rss_kib as f64 / 1024.0,
            sent_kbps: kbps(traffic_after[n].1.saturating_sub(traffic_before[n].1)),
            received_kbps: kbps(traffic_after[n].0.saturating_sub(traffic_before[n].0)),
            intact_windows,
            windows,
        });
    }
    Ok(GroupResult { participants: size, mesh_seconds, daemons: figures })
}

/// Mouth-to-ear between p0 and p1 in a call of `size`: p0 speaks, p1 echoes
/// p0's speech back on their leg, the others are silent.
async fn latency(settings: &RunSettings, material: &Material, size: usize) -> Result<Option<GroupLatency>> {
    let dir = settings.work.join(format!("group{size}-latency"));
    let mut inputs = vec![format!("file:{}", material.call_input.display()), "echo".to_owned()];
    inputs.resize(size.max(2), "silence".to_owned());
    let Mesh { lan: _lan, mut daemons, .. } = mesh(settings, &dir, inputs).await?;
    // The speech plays once (the file does not loop), then a second for its echo.
    let length = Duration::from_secs_f64(material.call_input_samples.len() as f64 / f64::from(CALL_RATE));
    tokio::time::sleep(length + Duration::from_secs(1)).await;
    stop_together(&mut daemons).await?;
    // p0's file input and its recording start together, when its first leg
    // (the one to p1) opens the bridge: the echo's lag, less where the speech
    // sits in the input, is the round trip.
    let heard = speech::read_wav(&dir.join("p0.wav"))?;
    let spoken = material.speech();
    let found = analysis::align(spoken, &heard, heard.len());
    Ok(found.filter(|f| f.correlation >= 0.2).map(|found| {
        let round_trip = (found.lag as f64 - material.speech_offset as f64) / f64::from(CALL_RATE) * 1000.0;
        GroupLatency {
            participants: size,
            echo_round_trip_ms: round_trip,
            one_way_ms: round_trip / 2.0,
            correlation: found.correlation,
        }
    }))
}

/// Stops every daemon at once, so each recording ends at the same moment.
async fn stop_together(daemons: &mut [Daemon]) -> Result<()> {
    for daemon in daemons.iter_mut() {
        daemon.terminate()?;
    }
    for daemon in daemons.iter_mut() {
        daemon.stop().await?;
    }
    Ok(())
}

/// A group call's daemons on their LAN, talking in a full mesh.
struct Mesh {
    lan: Lan,
    daemons: Vec<Daemon>,
    /// How long the mesh took to form.
    seconds: f64,
}

/// Starts a daemon per input (p0, p1, …; each records what it plays into
/// `dir/pN.wav`, auto-answers, plays files once) and forms the mesh.
async fn mesh(settings: &RunSettings, dir: &Path, inputs: Vec<String>) -> Result<Mesh> {
    let size = inputs.len();
    if !(2..=TONES.len()).contains(&size) {
        bail!("a group call has 2 to {} participants, not {size}", TONES.len());
    }
    let lan = Lan::new(size)?;
    let mut daemons = Vec::new();
    for (n, input) in inputs.iter().enumerate() {
        let name = format!("p{n}");
        let extra = format!(
            "audio.input = {input:?}\naudio.output = \"file:{}\"\naudio.loop_files = false\ncalls.auto_answer = true\n",
            dir.join(format!("{name}.wav")).display()
        );
        let own_dir = dir.join(&name);
        let spec = DaemonSpec::new(&name, lan.hosts[n].name(), &own_dir, extra);
        daemons.push(Daemon::start(&settings.voiced, &settings.daemon_log, spec).await?);
    }
    // Everyone sees everyone (joins find each other by mDNS).
    for daemon in &daemons {
        let mut events = daemon.events().await?;
        for peer in daemons.iter().filter(|p| p.device_id != daemon.device_id) {
            events.seen_or_wait_for("the peer online", DEADLINE, |e| shows_peer_online(e, &peer.device_id)).await?;
        }
    }
    let seconds = form(&daemons).await?;
    Ok(Mesh { lan, daemons, seconds })
}

/// p0 calls p1 and adds the others one by one; returns once every daemon
/// talks with all the others, with how long that took.
async fn form(daemons: &[Daemon]) -> Result<f64> {
    let size = daemons.len();
    let host = &daemons[0];
    let started = Instant::now();
    host.client.clone().dial(DialRequest { target: daemons[1].device_id.clone(), ..Default::default() }).await?;
    wait_for_active_legs(host, 1).await?;
    for (n, peer) in daemons.iter().enumerate().skip(2) {
        host.client
            .clone()
            .add_participant(AddParticipantRequest { call_id: String::new(), target: peer.device_id.clone() })
            .await?;
        wait_for_active_legs(host, n).await?;
    }
    for daemon in daemons {
        wait_for_active_legs(daemon, size - 1).await?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Waits until `daemon` talks with `count` peers.
async fn wait_for_active_legs(daemon: &Daemon, count: usize) -> Result<()> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let calls = daemon.client.clone().list_calls(ListCallsRequest {}).await?.into_inner().calls;
        if calls.iter().filter(|c| c.state() == CallState::Active).count() >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} never talked with {count} peers: {calls:#?}", daemon.name);
        }
        // The bench polls; the tests wait on events.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The talking window's 200 ms windows of a recording that hold exactly the
/// other participants' tones, and how many windows there are.
fn intact(path: &Path, own: usize, size: usize) -> Result<(usize, usize)> {
    let mut reader = hound::WavReader::open(path).with_context(|| format!("read {}", path.display()))?;
    let samples: Vec<i16> = reader.samples::<i16>().collect::<Result<_, _>>()?;
    // The last TALK of the file, less its first and last window (the stop).
    let talk = (TALK.as_secs_f64() * 48_000.0) as usize;
    let tail = &samples[samples.len().saturating_sub(talk)..];
    let windows: Vec<&[i16]> = tail.chunks_exact(9600).collect();
    let inner = windows.get(1..windows.len().saturating_sub(1)).unwrap_or_default();
    let good = inner
        .iter()
        .filter(|window| {
            (0..size).all(|n| {
                let share = voicelink_core::audio_math::tone_share(window, f64::from(TONES[n]));
                if n == own { share < ABSENT } else { share > PRESENT }
            })
        })
        .count();
    Ok((good, inner.len()))
}

/// Bytes received and sent on a namespace's `eth0`.
fn link_bytes(netns: &str) -> Result<(u64, u64)> {
    let output = Command::new("ip").args(["-n", netns, "-s", "-j", "link", "show", "dev", "eth0"]).output()?;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).context("ip -s -j link")?;
    let stats = &json[0]["stats64"];
    let bytes = |way: &str| stats[way]["bytes"].as_u64().context("no byte counter in ip -s -j link");
    Ok((bytes("rx")?, bytes("tx")?))
}

/// Hosts on one bridge: host n has `eth0` with 10.88.0.(n+1)/24.
struct Lan {
    hosts: Vec<Namespace>,
    // Dropped last: the hosts' veths go with their namespaces.
    _bridge: Namespace,
}

impl Lan {
    fn new(size: usize) -> Result<Lan> {
        let bridge = Namespace::create("vlg")?;
        ip(&["-n", bridge.name(), "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])?;
        ip(&["-n", bridge.name(), "link", "set", "br0", "up"])?;
        let mut hosts = Vec::new();
        for n in 0..size {
            let host = Namespace::create("vlg")?;
            let outer = format!("v{n}");
            ip(&[
                "link",
                "add",
                "eth0",
                "netns",
                host.name(),
                "type",
                "veth",
                "peer",
                "name",
                &outer,
                "netns",
                bridge.name(),
            ])?;
            ip(&["-n", bridge.name(), "link", "set", &outer, "master", "br0", "up"])?;
            ip(&["-n", host.name(), "addr", "add", &format!("10.88.0.{}/24", n + 1), "dev", "eth0"])?;
            ip(&["-n", host.name(), "link", "set", "eth0", "multicast", "on", "up"])?;
            ip(&["-n", host.name(), "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
            hosts.push(host);
        }
        Ok(Lan { hosts, _bridge: bridge })
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip").args(args).output()?;
    if !output.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}
