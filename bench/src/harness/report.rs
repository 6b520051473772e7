//! What a bench run found: the JSON for tools, and BENCHMARKS.md for people.

use std::fmt::Write as _;

use serde::Serialize;

/// The whole run.
#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    /// `git describe --always --dirty` of the tree the binaries were built from.
    pub commit: String,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix: u64,
    pub seed: u64,
    /// Planned call length after the call became active.
    pub call_seconds: f64,
    /// How long the callee rang before the bench answered.
    pub ring_seconds: f64,
    pub profiles: Vec<ProfileResult>,
    /// The echo bench, one entry per canceller measured.
    pub echo: Vec<super::echo::EchoResult>,
    /// Group calls, one per size.
    pub group: super::group::GroupReport,
    /// The speech through Opus alone, per bitrate.
    pub codec: Vec<super::codec_ceiling::CodecScore>,
    /// Mouth-to-ear through sound devices (none when not measured).
    pub devices: Option<super::devices::DeviceLatency>,
}

/// Where it ran.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub rustc: String,
}

/// One profile's call.
#[derive(Debug, Serialize, Default)]
pub struct ProfileResult {
    pub name: String,
    pub description: String,
    pub applied: Applied,
    pub setup: Setup,
    pub latency: Latency,
    pub loss: LossReport,
    pub reported: Reported,
    pub resources: Resources,
    /// PESQ wideband (P.862.2) MOS-LQO, one way (the callee's recording).
    pub pesq_wb: Option<f64>,
    /// This call's score and those of the quality calls after it
    /// (`--quality-calls`, each on its own seed), in the order they ran.
    pub pesq_wb_calls: Vec<f64>,
    /// Mouth-to-ear one way, the same calls.
    pub one_way_ms_calls: Vec<f64>,
    pub outcome: Outcome,
    /// For an outage profile with `--outage-calls` above 1: each call's
    /// outcome, this one first, the others on the seeds after it.
    pub outage_calls: Vec<Outcome>,
    /// Many short calls over the same impairment (`--setup-calls`).
    pub setup_trials: Option<SetupTrials>,
    /// Anything that could not be measured, and why.
    pub notes: Vec<String>,
}

/// Setup reliability over many short calls.
#[derive(Debug, Serialize, Default, Clone)]
pub struct SetupTrials {
    /// Calls placed.
    pub calls: usize,
    /// Calls that never became active.
    pub failed: usize,
    /// Why each failed call ended.
    pub failures: Vec<String>,
    /// Each call's dial → ringing.
    pub dial_to_ringing_ms: Vec<f64>,
    /// Each connected call's answer → active.
    pub answer_to_active_ms: Vec<f64>,
    /// Each auto-answered call's dial → active (as many calls again).
    pub auto_answer_dial_to_active_ms: Vec<f64>,
    /// Auto-answered calls that never became active.
    pub auto_answer_failed: usize,
}

impl SetupTrials {
    /// The `q` quantile (0 to 1) of `values`.
    fn quantile(values: &[f64], q: f64) -> Option<f64> {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let index = ((sorted.len() as f64 - 1.0) * q).round();
        sorted.get(index as usize).copied()
    }

    /// How many of `values` are at most `limit_ms`.
    fn within(values: &[f64], limit_ms: f64) -> usize {
        values.iter().filter(|&&ms| ms <= limit_ms).count()
    }
}

/// The impairment the relay applied.
#[derive(Debug, Serialize, Default)]
pub struct Applied {
    pub delay_ms_each_way: f64,
    pub jitter_ms_each_way: f64,
    pub loss_model: String,
    /// Long-run loss fraction of the model, each direction.
    pub loss_each_way: f64,
    /// Round-trip time the delays add (2 × delay).
    pub added_rtt_ms: f64,
    /// What an RFC 3550 jitter estimator should read for the applied jitter
    /// (uniform ±J: the mean |difference| of two draws, 2J/3), on top of the base.
    pub expected_rfc3550_jitter_ms: f64,
    pub outage_after_s: Option<f64>,
    pub outage_length_s: Option<f64>,
}

/// Call setup, as the API and the wire saw it. The callee rings for a while
/// (`ring_ms`) before the bench answers, as a person would.
#[derive(Debug, Serialize, Default)]
pub struct Setup {
    /// Dial RPC issued → IncomingCall on the callee's event feed.
    pub dial_to_ringing_ms: Option<f64>,
    /// Dial RPC issued → CallStateChanged ACTIVE on the caller's feed (includes the ring).
    pub dial_to_active_ms: Option<f64>,
    /// Answer RPC issued on the callee → ACTIVE on the caller's feed.
    pub answer_to_active_ms: Option<f64>,
    /// Answer → first RTP packet delivered to the callee by the relay.
    pub answer_to_first_packet_ms: Option<f64>,
    /// Answer → first audible sample in the callee's recording (the recording's
    /// origin is taken as its end minus its length: ± one frame).
    pub answer_to_first_audio_ms: Option<f64>,
}

/// Mouth-to-ear latency, from the caller's echo.
#[derive(Debug, Serialize, Default)]
pub struct Latency {
    /// Caller's input → the same audio back in the caller's recording, through the
    /// callee's echo: two network paths, two jitter buffers, two codec passes.
    pub echo_round_trip_ms: Option<f64>,
    /// Half of that.
    pub one_way_ms: Option<f64>,
    /// Normalized cross-correlation at the found lag (how sure the match is).
    pub correlation: Option<f64>,
}

/// RTP packets the relay saw in one direction.
#[derive(Debug, Serialize, Default, Clone, Copy)]
pub struct DirectionLoss {
    pub rtp_forwarded: u64,
    pub rtp_dropped: u64,
    /// dropped / (forwarded + dropped).
    pub fraction: Option<f64>,
}

impl DirectionLoss {
    pub fn new(forwarded: u64, dropped: u64) -> DirectionLoss {
        let total = forwarded + dropped;
        DirectionLoss {
            rtp_forwarded: forwarded,
            rtp_dropped: dropped,
            fraction: (total > 0).then(|| dropped as f64 / total as f64),
        }
    }
}

/// Loss as applied by the relay.
#[derive(Debug, Serialize, Default)]
pub struct LossReport {
    pub caller_to_callee: DirectionLoss,
    pub callee_to_caller: DirectionLoss,
}

/// What the daemons' stats streams said.
#[derive(Debug, Serialize, Default)]
pub struct Reported {
    /// Why there are no stats (e.g. WatchStats UNIMPLEMENTED), if there are none.
    pub unavailable: Option<String>,
    pub caller: Option<SideStats>,
    pub callee: Option<SideStats>,
}

/// One daemon's view of the call: its last sample while the call was up, and
/// medians over the call where a single sample would be noisy.
#[derive(Debug, Serialize, Default, Clone)]
pub struct SideStats {
    pub samples: usize,
    pub packets_sent: u64,
    pub packets_received: u64,
    /// Of the peer's stream, counted here.
    pub packets_lost: i64,
    /// packets_lost / (packets_received + packets_lost).
    pub loss_fraction: Option<f64>,
    /// Of our stream, as the peer reported in RTCP.
    pub remote_packets_lost: i64,
    pub remote_loss_fraction: Option<f64>,
    /// Of the peer's stream: lost, asked for again (NACK) and then received.
    pub packets_repaired: u64,
    /// (packets_lost + packets_repaired) / (packets_received + packets_lost):
    /// what the path lost before retransmission.
    pub loss_before_repair_fraction: Option<f64>,
    /// Of our stream: what the peer asked for again.
    pub packets_resent: u64,
    pub jitter_ms: f64,
    pub jitter_ms_median: Option<f64>,
    pub rtt_ms: f64,
    pub rtt_ms_median: Option<f64>,
    pub rtt_source: String,
    pub jitter_buffer_delay_ms: f64,
    pub concealment_events: u64,
    pub concealed_samples: u64,
    pub packets_recovered_fec: u64,
    pub late_packets: u64,
    pub mos: f64,
    pub quality: String,
}

/// CPU and memory of one daemon.
#[derive(Debug, Serialize, Default)]
pub struct ProcessUse {
    /// CPU time per wall time while idle (discovered, no call), percent of one core.
    pub cpu_idle_percent: Option<f64>,
    /// The same during the call.
    pub cpu_call_percent: Option<f64>,
    /// VmHWM before the call (start-up and idle), KiB.
    pub peak_rss_idle_kib: Option<u64>,
    /// VmHWM at the end of the call, KiB.
    pub peak_rss_call_kib: Option<u64>,
}

/// Both daemons.
#[derive(Debug, Serialize, Default)]
pub struct Resources {
    pub caller: ProcessUse,
    pub callee: ProcessUse,
}

/// How the call ended.
#[derive(Debug, Serialize, Default, Clone)]
pub struct Outcome {
    /// The call was still up when the bench hung up.
    pub survived: bool,
    /// The caller's end reason (HUNG_UP_LOCAL when the bench hung up).
    pub end_reason: String,
    /// When it ended, seconds after it became active.
    pub ended_after_s: Option<f64>,
    /// For an outage: RTP reached the callee again after the link came back.
    pub audio_after_outage: Option<bool>,
    /// For an outage: how long after the link came back the callee's first RTP arrived.
    pub audio_back_after_ms: Option<f64>,
    /// For a killed callee: how long after the kill the caller's call ended.
    pub ended_after_kill_ms: Option<f64>,
    /// For an outage: what the caller's peer list showed of the callee.
    pub peer_in_outage: Option<PeerInOutage>,
    /// For an outage the call survived: how the callee's call ended after the
    /// bench hung up at the caller.
    pub callee_after_hang_up: Option<CalleeEnd>,
}

/// The callee's end of a call the bench hung up at the caller.
#[derive(Debug, Serialize, Clone)]
pub struct CalleeEnd {
    /// How long after the hang-up the callee's call ended.
    pub after_ms: f64,
    /// Its end reason (HungUpRemote when the caller's `end` arrived).
    pub reason: String,
}

/// What the caller's peer list showed of the callee through an outage.
#[derive(Debug, Serialize, Clone, Copy)]
pub struct PeerInOutage {
    /// It was shown offline (a liveness check fell in the outage).
    pub went_offline: bool,
    /// How long after the link came back it was shown online again (before the
    /// call ended), if it went offline.
    pub back_online_after_ms: Option<f64>,
}

/// Each outage call's audio back and the callee's end, in the order they ran.
fn outage_spread(calls: &[Outcome]) -> String {
    let list = |f: &dyn Fn(&Outcome) -> String| calls.iter().map(f).collect::<Vec<_>>().join(" / ");
    let survived = calls.iter().filter(|o| o.survived).count();
    format!(
        "survived {survived} of {}; audio back {} after the link; the callee's call ended {} after the hang-up",
        calls.len(),
        list(&|o| ms(o.audio_back_after_ms)),
        list(&|o| o.callee_after_hang_up.as_ref().map_or("n/a".into(), CalleeEnd::to_string)),
    )
}

impl std::fmt::Display for CalleeEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", ms(Some(self.after_ms)), self.reason)
    }
}

fn ms(value: Option<f64>) -> String {
    match value {
        None => "n/a".into(),
        Some(v) if v.abs() < 10.0 => format!("{v:.1} ms"),
        Some(v) => format!("{v:.0} ms"),
    }
}

/// The sender's view of its stream's loss: resent on request, and what the
/// peer reports lost after that.
fn resent_and_reported(s: &SideStats) -> String {
    format!(
        "resent {}; peer reports {} lost ({})",
        s.packets_resent,
        s.remote_packets_lost,
        pct(s.remote_loss_fraction)
    )
}

/// The receiver's view: lost before repair, repaired, and what stayed lost.
fn repaired_and_counted(s: &SideStats) -> String {
    format!(
        "lost before repair {}, repaired {}, counted lost {} ({})",
        pct(s.loss_before_repair_fraction),
        s.packets_repaired,
        s.packets_lost,
        pct(s.loss_fraction)
    )
}

/// The measured call's figure, or with quality calls their median and range.
fn over_calls(measured: Option<f64>, calls: &[f64], show: impl Fn(f64) -> String) -> String {
    let mut sorted = calls.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.as_slice() {
        [] | [_] => measured.map_or("n/a".into(), show),
        [first, .., last] => {
            let middle = sorted.len() / 2;
            let median = if sorted.len().is_multiple_of(2) {
                (sorted[middle - 1] + sorted[middle]) / 2.0
            } else {
                sorted[middle]
            };
            format!("{} (median of {}; {} to {})", show(median), sorted.len(), show(*first), show(*last))
        }
    }
}

fn pct(value: Option<f64>) -> String {
    value.map_or("n/a".into(), |v| format!("{:.1} %", v * 100.0))
}

fn opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or("n/a".into(), |v| v.to_string())
}

/// The stats line for one side, or n/a.
fn side<T>(reported: &Reported, f: impl Fn(&SideStats) -> Option<T>, show: impl Fn(T) -> String) -> [String; 2] {
    [&reported.caller, &reported.callee].map(|s| s.as_ref().and_then(&f).map_or("n/a".into(), &show))
}

/// BENCHMARKS.md.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let m = &report.machine;
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Generated by `make bench` (`voicelink-bench`, in `bench/`): two `voiced` in their own network \
namespaces, joined by the bench's user-space impaired link (a TAP device in each namespace; \
seeded delay, jitter, loss and outages per direction), one measured call per profile (then, \
for the profiles without an outage, more scored calls for a median, and many short calls: see \
Setup reliability). The caller sends \
a marker tone and then speech synthesized by espeak-ng (Harvard sentences) from a file; the \
callee is answered through its API after ringing, records what it hears and echoes it back; the \
caller records the echo. \
Each run also writes `bench/results/benchmarks.json` for tools (not committed).\n"
    );
    let _ = writeln!(out, "- Machine: {} ({} cores), Linux {}", m.cpu, m.cores, m.kernel);
    let _ = writeln!(out, "- Toolchain: {}", m.rustc);
    let _ = writeln!(out, "- Commit: `{}`", report.commit);
    let _ = writeln!(
        out,
        "- Seed {}; the callee rings {:.1} s before the bench answers; calls last {:.0} s after that\n",
        report.seed, report.ring_seconds, report.call_seconds
    );

    let _ = writeln!(out, "## Summary\n");
    let _ = writeln!(
        out,
        "| profile | dial → ringing | answer → active | answer → first audio | mouth-to-ear (one way) | loss applied → before repair → left (caller → callee) | jitter reported (callee) | RTT reported (caller) | PESQ-WB | call survived |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for p in &report.profiles {
        let callee_loss = p.reported.callee.as_ref().and_then(|s| s.loss_fraction);
        let callee_loss_before = p.reported.callee.as_ref().and_then(|s| s.loss_before_repair_fraction);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} → {} → {} | {} | {} | {} | {} |",
            p.name,
            ms(p.setup.dial_to_ringing_ms),
            ms(p.setup.answer_to_active_ms),
            ms(p.setup.answer_to_first_audio_ms),
            over_calls(p.latency.one_way_ms, &p.one_way_ms_calls, |v| format!("{v:.0} ms")),
            pct(p.loss.caller_to_callee.fraction),
            pct(callee_loss_before),
            pct(callee_loss),
            p.reported
                .callee
                .as_ref()
                .map_or("n/a".into(), |s| format!("{:.1} ms", s.jitter_ms_median.unwrap_or(s.jitter_ms))),
            p.reported
                .caller
                .as_ref()
                .map_or("n/a".into(), |s| format!("{:.0} ms", s.rtt_ms_median.unwrap_or(s.rtt_ms))),
            over_calls(p.pesq_wb, &p.pesq_wb_calls, |v| format!("{v:.2}")),
            match p.outage_calls.len() {
                0 | 1 if p.outcome.survived => "yes".to_string(),
                0 | 1 => format!("no ({})", p.outcome.end_reason),
                n => format!("{} of {n}", p.outage_calls.iter().filter(|o| o.survived).count()),
            },
        );
    }
    let _ = writeln!(out);
    if let Some(devices) = &report.devices {
        out.push_str(&devices_markdown(devices, &report.profiles));
    }

    for p in &report.profiles {
        let _ = writeln!(out, "## {}\n\n{}\n", p.name, p.description);
        let a = &p.applied;
        let _ = writeln!(out, "| | applied | measured: caller | measured: callee |");
        let _ = writeln!(out, "|---|---|---|---|");
        let row = |out: &mut String, what: &str, applied: String, [caller, callee]: [String; 2]| {
            let _ = writeln!(out, "| {what} | {applied} | {caller} | {callee} |");
        };
        let both = |s: String| [s, String::new()];
        let callee_only = |s: String| [String::new(), s];
        row(&mut out, "dial → ringing", String::new(), callee_only(ms(p.setup.dial_to_ringing_ms)));
        row(&mut out, "answer → active", String::new(), both(ms(p.setup.answer_to_active_ms)));
        row(
            &mut out,
            "answer → first RTP packet in",
            String::new(),
            callee_only(ms(p.setup.answer_to_first_packet_ms)),
        );
        row(&mut out, "answer → first audio heard", String::new(), callee_only(ms(p.setup.answer_to_first_audio_ms)));
        row(&mut out, "dial → active (includes the ring)", String::new(), both(ms(p.setup.dial_to_active_ms)));
        row(
            &mut out,
            "mouth-to-ear, round trip through the echo",
            format!("+{:.0} ms", a.added_rtt_ms),
            both(format!(
                "{} (one way ≈ {}, correlation {})",
                ms(p.latency.echo_round_trip_ms),
                ms(p.latency.one_way_ms),
                p.latency.correlation.map_or("n/a".into(), |c| format!("{c:.2}"))
            )),
        );
        row(
            &mut out,
            "RTT (stats; median, source)",
            format!("+{:.0} ms", a.added_rtt_ms),
            side(
                &p.reported,
                |s| Some(s.clone()),
                |s| format!("{:.1} ms ({})", s.rtt_ms_median.unwrap_or(s.rtt_ms), s.rtt_source),
            ),
        );
        row(
            &mut out,
            "interarrival jitter (stats; median)",
            format!("±{:.0} ms uniform (RFC 3550 ≈ +{:.1} ms)", a.jitter_ms_each_way, a.expected_rfc3550_jitter_ms),
            side(&p.reported, |s| Some(s.jitter_ms_median.unwrap_or(s.jitter_ms)), |v| format!("{v:.1} ms")),
        );
        let c2c = p.loss.caller_to_callee;
        let c2r = p.loss.callee_to_caller;
        row(
            &mut out,
            "loss caller → callee",
            format!(
                "{} ({}): {} of {} RTP dropped ({})",
                a.loss_model,
                pct(Some(a.loss_each_way)),
                c2c.rtp_dropped,
                c2c.rtp_dropped + c2c.rtp_forwarded,
                pct(c2c.fraction)
            ),
            [
                p.reported.caller.as_ref().map_or("n/a".into(), resent_and_reported),
                p.reported.callee.as_ref().map_or("n/a".into(), repaired_and_counted),
            ],
        );
        row(
            &mut out,
            "loss callee → caller",
            format!(
                "{} of {} RTP dropped ({})",
                c2r.rtp_dropped,
                c2r.rtp_dropped + c2r.rtp_forwarded,
                pct(c2r.fraction)
            ),
            [
                p.reported.caller.as_ref().map_or("n/a".into(), repaired_and_counted),
                p.reported.callee.as_ref().map_or("n/a".into(), resent_and_reported),
            ],
        );
        row(
            &mut out,
            "concealment events / FEC recovered / late",
            String::new(),
            side(
                &p.reported,
                |s| Some(s.clone()),
                |s| format!("{} / {} / {}", s.concealment_events, s.packets_recovered_fec, s.late_packets),
            ),
        );
        row(
            &mut out,
            "jitter buffer delay",
            String::new(),
            side(&p.reported, |s| Some(s.jitter_buffer_delay_ms), |v| format!("{v:.0} ms")),
        );
        row(
            &mut out,
            "MOS (E-model, stats)",
            String::new(),
            side(&p.reported, |s| Some(s.clone()), |s| format!("{:.2} {}", s.mos, s.quality)),
        );
        row(
            &mut out,
            "PESQ-WB (one way, callee's recording)",
            String::new(),
            [String::new(), p.pesq_wb.map_or("n/a".into(), |v| format!("{v:.2}"))],
        );
        let usage = [&p.resources.caller, &p.resources.callee];
        row(
            &mut out,
            "CPU idle / in call (% of a core)",
            String::new(),
            usage.map(|u| {
                format!(
                    "{} / {}",
                    u.cpu_idle_percent.map_or("n/a".into(), |v| format!("{v:.2} %")),
                    u.cpu_call_percent.map_or("n/a".into(), |v| format!("{v:.2} %"))
                )
            }),
        );
        row(
            &mut out,
            "peak RSS idle / after call (VmHWM)",
            String::new(),
            usage.map(|u| format!("{} / {} MiB", mib(u.peak_rss_idle_kib), mib(u.peak_rss_call_kib))),
        );
        let outcome = &p.outcome;
        let mut ended = if outcome.survived {
            "survived (the bench hung up)".to_string()
        } else {
            format!("ended: {} after {} s", outcome.end_reason, opt(outcome.ended_after_s.map(|s| format!("{s:.1}"))))
        };
        if let Some(after) = outcome.audio_after_outage {
            let _ = write!(ended, "; audio after the outage: {}", if after { "yes" } else { "no" });
        }
        if let Some(back) = outcome.audio_back_after_ms {
            let _ = write!(ended, ", {} after the link came back", ms(Some(back)));
        }
        match outcome.peer_in_outage {
            Some(PeerInOutage { went_offline: false, .. }) => ended.push_str("; the peer never showed offline"),
            Some(PeerInOutage { back_online_after_ms: Some(back), .. }) => {
                let _ = write!(ended, "; the peer showed offline, online again {} after the link", ms(Some(back)));
            }
            Some(PeerInOutage { back_online_after_ms: None, .. }) => {
                ended.push_str("; the peer showed offline until the end")
            }
            None => {}
        }
        if let Some(end) = &outcome.callee_after_hang_up {
            let _ = write!(ended, "; the callee's call ended {end} after the hang-up");
        }
        if let Some(noticed) = outcome.ended_after_kill_ms {
            let _ = write!(ended, "; {} after the callee was killed", ms(Some(noticed)));
        }
        let outage = match (a.outage_after_s, a.outage_length_s) {
            (Some(at), Some(len)) => format!("link down {len:.0} s at +{at:.0} s"),
            _ => String::new(),
        };
        row(&mut out, "call", outage, both(ended));
        if p.outage_calls.len() > 1 {
            row(
                &mut out,
                &format!("all {} calls", p.outage_calls.len()),
                String::new(),
                both(outage_spread(&p.outage_calls)),
            );
        }
        if !p.notes.is_empty() {
            let _ = writeln!(out);
            for note in &p.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "## How to read this\n");
    let _ = writeln!(
        out,
        "- Delay and jitter are added to *each* direction, so a profile's RTT grows by twice its delay.\n\
- Loss \"applied\" is what the relay dropped among RTP packets (version 2, payload type 111), \
retransmissions included. A receiver asks again for what it misses (RFC 4585 NACK): \"lost before \
repair\" is what it found missing, \"repaired\" what then came, \"counted lost\" (and the sender's \
\"peer reports\", from RTCP) what stayed lost; \"resent\" is what the sender was asked for.\n\
- With quality calls (`--quality-calls`, 5 in `make bench`), the summary's mouth-to-ear and PESQ-WB \
are the median of that many calls over the profile, each on its own seed, with their range; the \
profile's own table is the first of them. Outage profiles run `--outage-calls` calls (3 in `make \
bench`) the same way; their \"all N calls\" row lists each.\n\
- Mouth-to-ear is measured on audio, not packets: the caller's input is cross-correlated with the echo \
in its recording; it includes both jitter buffers, both codec passes and the echo's frame alignment.\n\
- Answer → first audio uses the recording's own time line (its origin is inferred from its end and \
length, ± one 20 ms frame).\n\
- CPU is utime + stime from /proc (10 ms ticks): over the idle window 0.00 % means under 0.2 %.\n\
- Timing figures are from one run on a shared 2-core machine; treat them as indications, not limits."
    );
    if !report.codec.is_empty() {
        out.push('\n');
        out.push_str(&codec_markdown(&report.codec));
    }
    if !report.echo.is_empty() {
        out.push('\n');
        out.push_str(&echo_markdown(&report.echo));
    }
    if !report.group.calls.is_empty() {
        out.push('\n');
        out.push_str(&group_markdown(&report.group));
    }
    let trials: Vec<(&str, &SetupTrials)> =
        report.profiles.iter().filter_map(|p| p.setup_trials.as_ref().map(|t| (p.name.as_str(), t))).collect();
    if !trials.is_empty() {
        let _ = writeln!(out, "\n## Setup reliability\n");
        let _ = writeln!(
            out,
            "Short calls over the same impaired link, one after another (the callee rings {:.1} s, then \
the bench answers and hangs up once the call is active). A call fails when it ends before it \
becomes active. Then as many calls again with the callee answering by itself (`calls.auto_answer`): \
dial → active is the wait before audio flows (the first frame follows within one frame, 20 ms). \
The first dial of a profile opens a new connection; later ones find the warm connection the caller \
keeps to a device it dialed (docs/PROTOCOL.md §3), so dial → ringing is shown for both.\n",
            report.ring_seconds
        );
        let _ = writeln!(
            out,
            "| profile | calls | failed to connect | answer → active median | p95 | max | within 300 ms | dial → ringing: first | later, median | auto-answer: failed | dial → active median | max | within 150 ms | why they failed |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for (name, t) in trials {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} | {} of {} | {} | {} | {} | {} | {} | {} of {} | {} |",
                t.calls,
                t.failed,
                ms(SetupTrials::quantile(&t.answer_to_active_ms, 0.5)),
                ms(SetupTrials::quantile(&t.answer_to_active_ms, 0.95)),
                ms(SetupTrials::quantile(&t.answer_to_active_ms, 1.0)),
                SetupTrials::within(&t.answer_to_active_ms, 300.0),
                t.calls,
                ms(t.dial_to_ringing_ms.first().copied()),
                ms(SetupTrials::quantile(t.dial_to_ringing_ms.get(1..).unwrap_or_default(), 0.5)),
                t.auto_answer_failed,
                ms(SetupTrials::quantile(&t.auto_answer_dial_to_active_ms, 0.5)),
                ms(SetupTrials::quantile(&t.auto_answer_dial_to_active_ms, 1.0)),
                SetupTrials::within(&t.auto_answer_dial_to_active_ms, 150.0),
                t.calls,
                if t.failures.is_empty() { "-".to_owned() } else { t.failures.join("; ") },
            );
        }
        let median = |name: &str| {
            report.profiles.iter().find(|p| p.name == name).and_then(|p| p.setup_trials.as_ref()).and_then(|t| {
                let setup: Vec<f64> = t
                    .dial_to_ringing_ms
                    .iter()
                    .zip(&t.answer_to_active_ms)
                    .map(|(ring, active)| ring + active)
                    .collect();
                SetupTrials::quantile(&setup, 0.5)
            })
        };
        if let (Some(clean), Some(stalled)) = (median("clean"), median("stalled200")) {
            let _ = writeln!(
                out,
                "\nWith 200 stalled TLS handshakes held against the callee (stalled200), dial → ringing plus \
answer → active takes {stalled:.0} ms (median) against {clean:.0} ms on the clean link: {:.2}× (goal: at most 2×).",
                stalled / clean
            );
        }
    }
    out
}

/// Mouth-to-ear through sound devices, under the summary.
fn devices_markdown(devices: &super::devices::DeviceLatency, profiles: &[ProfileResult]) -> String {
    let mut out = String::from(
        "**Through sound devices** (a clean link; the caller's microphone and speaker are ALSA devices on \
two channels of a PulseAudio null sink, its voice processing off; the callee echoes; the bench plays the \
speech into the microphone's channel and finds each 2 s of it again in the speaker's, by level envelope): ",
    );
    let clean = profiles.iter().find(|p| p.name == "clean").and_then(|p| {
        if p.one_way_ms_calls.len() > 1 {
            SetupTrials::quantile(&p.one_way_ms_calls, 0.5)
        } else {
            p.latency.one_way_ms
        }
    });
    match (devices.round_trip_ms, clean) {
        (Some(round_trip), Some(one_way)) => {
            let _ = write!(
                out,
                "round trip {round_trip:.0} ms (median of {} windows; by window: {}). The file-to-file round trip is twice the clean one way ({one_way:.0} ms); \
the rest, {:.0} ms, is one capture and one playout, so mouth to ear one way through devices at both ends \
is about {:.0} ms.",
                devices.windows.len(),
                windows(devices),
                round_trip - 2.0 * one_way,
                round_trip - one_way
            );
            if let Some((caller, callee)) = devices.jitter_buffers_ms {
                let _ = write!(
                    out,
                    " At the end of the call the caller's jitter buffer held {caller:.0} ms and the callee's {callee:.0} ms."
                );
            }
            if !devices.notes.is_empty() {
                let _ = write!(out, " Notes: {}.", devices.notes.join("; "));
            }
        }
        (Some(round_trip), None) => {
            let _ = write!(
                out,
                "round trip {round_trip:.0} ms (by window: {}; no clean profile ran to split it).",
                windows(devices)
            );
        }
        (None, _) => {
            let _ = write!(out, "not measured: {}.", devices.notes.join("; "));
        }
    }
    if let Some(ten) = devices.round_trip_10ms_frames_ms {
        let _ = write!(
            out,
            " With 10 ms frames (`calls.frame_ms = 10` on the caller; the callee follows): round trip {ten:.0} ms"
        );
        if let Some(round_trip) = devices.round_trip_ms {
            let (by, way) = if ten <= round_trip { (round_trip - ten, "less") } else { (ten - round_trip, "more") };
            let _ = write!(out, ", {by:.0} ms {way}, about {:.0} ms {way} each way", by / 2.0);
        }
        out.push('.');
    }
    out.push_str("\n\n");
    out
}

/// Each window's start and round trip.
fn windows(devices: &super::devices::DeviceLatency) -> String {
    let each: Vec<String> = devices.windows.iter().map(|(at, ms, _)| format!("{ms:.0} ms at {at:.0} s")).collect();
    each.join(", ")
}

/// The codec-ceiling section.
pub fn codec_markdown(scores: &[super::codec_ceiling::CodecScore]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Opus alone
"
    );
    let _ = writeln!(
        out,
        "The same speech encoded and decoded with the daemon's encoder settings (VoIP, 20 ms, in-band FEC), no network and no jitter buffer, scored the same way: the ceiling a clean call can reach at each bitrate. The reference against itself scores 4.64. A call starts expecting 10 % loss and drops to none within about five clean receiver reports. `calls.bitrate_kbps` (48 by default) is what a clear link carries.\n"
    );
    let _ = writeln!(out, "| bitrate | PESQ-WB, expecting no loss | PESQ-WB, expecting 10 % | bytes per packet |");
    let _ = writeln!(out, "|---|---|---|---|");
    for clean in scores.iter().filter(|s| s.expected_loss_percent == 0) {
        let protected = scores.iter().find(|s| s.bitrate_kbps == clean.bitrate_kbps && s.expected_loss_percent > 0);
        let score = |s: Option<&super::codec_ceiling::CodecScore>| {
            s.and_then(|s| s.pesq_wb).map_or("n/a".into(), |v| format!("{v:.2}"))
        };
        let _ = writeln!(
            out,
            "| {} kb/s | {} | {} | {:.0} |",
            clean.bitrate_kbps,
            score(Some(clean)),
            score(protected),
            clean.mean_packet_bytes
        );
    }
    out
}

/// The group-call section.
pub fn group_markdown(group: &super::group::GroupReport) -> String {
    let results = &group.calls;
    let mut out = String::new();
    let _ = writeln!(out, "## Group calls\n");
    let _ = writeln!(
        out,
        "N `voiced` on one bridged LAN (no impairment), each sending a tone of its own (440, 550, … Hz) and \
recording what it plays; p0 calls p1 and adds the others one by one, each joining everyone (a full mesh: \
N·(N-1)/2 calls). Measured over 10 s of talking. A window (200 ms) is intact when every other \
participant's tone is at least 8 % of it and its own is under 2 %; a call is intact when each \
recording is, in at least 95 % of its windows. Bandwidth is everything on the daemon's interface \
(RTP, RTCP, STUN, signaling, mDNS).\n"
    );
    let _ = writeln!(
        out,
        "| participants | mesh formed in | CPU per daemon (mean / max) | peak memory per daemon (max) | sent per daemon (mean) | received per daemon (mean) | windows intact (worst recording) | intact |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for r in results {
        let n = r.daemons.len().max(1) as f64;
        let mean = |f: fn(&super::group::GroupDaemon) -> f64| r.daemons.iter().map(f).sum::<f64>() / n;
        let max = |f: fn(&super::group::GroupDaemon) -> f64| r.daemons.iter().map(f).fold(0.0, f64::max);
        let worst = r
            .daemons
            .iter()
            .min_by_key(|d| d.intact_windows * 1000 / d.windows.max(1))
            .map_or_else(String::new, |d| format!("{} of {} ({})", d.intact_windows, d.windows, d.name));
        let _ = writeln!(
            out,
            "| {} | {:.2} s | {:.1} % / {:.1} % | {:.0} MiB | {:.0} kb/s | {:.0} kb/s | {} | {} |",
            r.participants,
            r.mesh_seconds,
            mean(|d| d.cpu_percent),
            max(|d| d.cpu_percent),
            max(|d| d.peak_rss_mib),
            mean(|d| d.sent_kbps),
            mean(|d| d.received_kbps),
            worst,
            if r.intact() { "yes" } else { "no" }
        );
    }
    let fit = results.iter().filter(|r| r.intact()).map(|r| r.participants).max();
    let _ = writeln!(
        out,
        "\nLargest call with every recording intact: {}. CPU is of one core; the {} daemons share this machine's cores.",
        fit.map_or_else(|| "none".to_owned(), |n| format!("{n} participants")),
        results.last().map_or(0, |r| r.participants)
    );
    match &group.latency {
        Some(latency) => {
            let _ = writeln!(
                out,
                "\nMouth-to-ear between two participants of a {}-way call (p0 speaks, p1 echoes what it hears, the \
others are silent; measured in p0's recording, through files, not sound cards): {:.1} ms one way (echo round \
trip {:.1} ms, correlation {:.2}).",
                latency.participants, latency.one_way_ms, latency.echo_round_trip_ms, latency.correlation
            );
        }
        None if !results.is_empty() => {
            let _ = writeln!(out, "\nMouth-to-ear in a group call: the echo was not found in p0's recording.");
        }
        None => {}
    }
    out
}

/// The echo bench's section.
pub fn echo_markdown(results: &[super::echo::EchoResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Echo cancellation, noise suppression, gain control
"
    );
    let _ = writeln!(
        out,
        "The capture chain a microphone gets in a call, run on a simulated room (`bench/src/echo_room.rs`, \
no sound card): the far end's speech through a loudspeaker's soft clipping, a room (direct path and a \
diffuse tail, RT60 0.25 s) and 60 ms of delay, into the microphone about 4 dB below what was played. \
At 12 s the echo path changes (another room, RT60 0.35 s, 140 ms, drifting by 0.1 %). Double talk: \
the near end (another voice) speaks over the far end after 6 s of far end alone. Noise: a fan at \
-40 dBFS with nobody speaking. ERLE is over 100 ms windows in which the far end is heard; converged: \
five such windows in a row at 20 dB or better. Goals (issue #12): ERLE ≥ 30 dB, convergence ≤ 1 s, \
double-talk PESQ-WB within 0.3 of the near end alone, the whole chain ≤ 1 % of a core.\n"
    );
    let _ = writeln!(
        out,
        "| chain | ERLE | ERLE after the path change (drifting) | converged after | after the change | double talk PESQ-WB | near end alone | unprocessed | fan noise in → out | CPU per 10 ms |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    let db = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.1} dB"));
    let s = |v: Option<f64>| v.map_or("not within the scene".into(), |v| format!("{v:.1} s"));
    let score = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.2}"));
    for r in results {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} → {:.1} dBFS | {:.0} µs ({:.2} % of a core) |",
            r.canceller,
            db(r.erle_db),
            db(r.erle_after_change_db),
            s(r.convergence_s),
            s(r.reconvergence_s),
            score(r.double_talk_pesq),
            score(r.near_alone_pesq),
            score(r.unprocessed_pesq),
            r.noise_in_dbfs,
            r.noise_out_dbfs,
            r.cpu_us_per_chunk,
            r.cpu_us_per_chunk / 100.0,
        );
    }
    for note in results.iter().flat_map(|r| &r.notes) {
        let _ = writeln!(out, "\n- {note}");
    }
    out
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}
