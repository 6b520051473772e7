//! `voicelink-bench`: runs one call per impairment profile between two `voiced` in
//! network namespaces joined by the bench's impaired link, measures setup time,
//! mouth-to-ear latency, loss, jitter and RTT (applied vs reported), CPU and
//! memory, and PESQ, and writes BENCHMARKS.md and a JSON file. Needs root (network
//! namespaces), espeak-ng, sox and the bench venv (`scripts/setup.sh --bench`);
//! `make bench` does all of it.

mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Parser;
use voicelink_bench::impairment::{self, Profile};

use harness::report::{Machine, Report};
use harness::run::{RunSettings, run_profile};

#[derive(Parser, Debug)]
#[command(version, about = "Measure voicelink calls over impaired links (needs root)")]
struct Args {
    /// The `voiced` binary to measure (a release build).
    #[arg(long, default_value = "target/release/voiced")]
    voiced: PathBuf,
    /// Where benchmarks.json goes.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Where the Markdown report goes.
    #[arg(long, default_value = "BENCHMARKS.md")]
    markdown: PathBuf,
    /// Profiles to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    profiles: Vec<String>,
    /// Seed of the impairment model.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds each call lasts after it is answered.
    #[arg(long, default_value_t = 18)]
    call_seconds: u64,
    /// Seconds of idle (discovered, no call) over which idle CPU is measured.
    #[arg(long, default_value_t = 5)]
    idle_seconds: u64,
    /// Milliseconds the callee rings before the bench answers (media is
    /// negotiated while it rings).
    #[arg(long, default_value_t = 1000)]
    ring_ms: u64,
    /// The daemons' `log_level`, for instance `info,rtc_dtls=debug` to see
    /// each DTLS flight (their logs are kept with `--keep`).
    #[arg(long, default_value = "info")]
    daemon_log: String,
    /// The Python with `pesq` and `numpy` (scripts/setup.sh --bench makes it).
    #[arg(long, default_value = "target/bench-venv/bin/python")]
    python: PathBuf,
    /// Short calls per profile, after its measured call, to count failed setups
    /// and time answer → active (0: none; outage and killed-peer profiles are skipped).
    #[arg(long, default_value_t = 0)]
    setup_calls: usize,
    /// Calls per profile whose sound is scored (the measured one included, the
    /// others on seeds after it), for a median; outage and killed-peer profiles
    /// score one.
    #[arg(long, default_value_t = 1)]
    quality_calls: u64,
    /// Calls per outage profile (the measured one included, the others on
    /// seeds after it), for the spread of audio back after the link returns.
    #[arg(long, default_value_t = 1)]
    outage_calls: u64,
    /// Keep the recordings and logs (in a folder named at the end).
    #[arg(long)]
    keep: bool,
    /// Leave out the echo bench (the capture processing on a simulated room).
    #[arg(long, conflicts_with = "echo_only")]
    skip_echo: bool,
    /// Run only the echo bench and print its table (no root, no daemon, nothing written).
    #[arg(long)]
    echo_only: bool,
    /// Group calls to measure, by their number of participants (2-6;
    /// comma-separated; the option without a value: none).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "3,4,5,6")]
    group_sizes: Vec<usize>,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if !args.echo_only {
        if let Some(reason) = voicelink_bench::relay::netns_unavailable() {
            bail!("the bench cannot run: {reason}");
        }
        if !args.voiced.exists() {
            bail!("{} does not exist: build it first (cargo build --release --workspace)", args.voiced.display());
        }
    }
    let profiles = select(&args.profiles)?;
    let work = tempfile::Builder::new().prefix("voicelink-bench-").tempdir()?;
    let material = harness::speech::prepare(work.path())?;
    let settings = RunSettings {
        voiced: std::fs::canonicalize(&args.voiced)?,
        python: args.python.clone(),
        pesq_script: Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pesq_score.py"),
        work: work.path().to_owned(),
        seed: args.seed,
        call: Duration::from_secs(args.call_seconds),
        idle: Duration::from_secs(args.idle_seconds),
        ring: Duration::from_millis(args.ring_ms),
        daemon_log: args.daemon_log.clone(),
    };

    let started_unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // First, while the machine is otherwise quiet: its CPU figure is a timing.
    let echo = if args.skip_echo {
        Vec::new()
    } else {
        tracing::info!("echo bench");
        harness::echo::run_all(&settings, &material)?
    };
    if args.echo_only {
        print!("{}", harness::report::echo_markdown(&echo));
        return Ok(());
    }
    tracing::info!("Opus alone");
    let codec = harness::codec_ceiling::run(&settings, &material)?;
    let mut results = Vec::new();
    for profile in &profiles {
        tracing::info!(profile = profile.name, "running");
        let calls = match (profile.outage, profile.kill_callee_after) {
            (_, Some(_)) => 1,
            (Some(_), None) => args.outage_calls,
            (None, None) => args.quality_calls,
        };
        let outcome = match run_profile(&settings, &material, profile).await {
            Ok(result) if calls > 1 => more_calls(&settings, &material, profile, calls, result).await,
            other => other,
        };
        let outcome = match outcome {
            Ok(mut result)
                if args.setup_calls > 0 && profile.outage.is_none() && profile.kill_callee_after.is_none() =>
            {
                tracing::info!(profile = profile.name, calls = args.setup_calls, "setup trials");
                harness::setup_trials::run(&settings, profile, args.setup_calls).await.map(|trials| {
                    result.setup_trials = Some(trials);
                    result
                })
            }
            other => other,
        };
        let result = match outcome {
            Ok(result) => result,
            Err(e) => {
                // Keep the logs and recordings of a run that broke.
                let kept = work.keep();
                return Err(e.context(format!("profile {} (files kept in {})", profile.name, kept.display())));
            }
        };
        tracing::info!(
            profile = profile.name,
            survived = result.outcome.survived,
            one_way_ms = ?result.latency.one_way_ms,
            pesq = ?result.pesq_wb,
            "done"
        );
        results.push(result);
    }

    tracing::info!("mouth-to-ear through sound devices");
    let devices = Some(harness::devices::run(&settings, &material).await);
    let group = harness::group::run_all(&settings, &material, &args.group_sizes).await?;
    let report = Report {
        machine: machine(),
        commit: command_output("git", &["describe", "--always", "--dirty"]).unwrap_or_else(|| "unknown".into()),
        started_unix,
        seed: args.seed,
        call_seconds: settings.call.as_secs_f64(),
        ring_seconds: settings.ring.as_secs_f64(),
        profiles: results,
        echo,
        group,
        codec,
        devices,
    };
    std::fs::create_dir_all(&args.out)?;
    let json = args.out.join("benchmarks.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)? + "\n")?;
    std::fs::write(&args.markdown, harness::report::markdown(&report))?;
    println!("wrote {} and {}", json.display(), args.markdown.display());
    if args.keep {
        println!("recordings and logs kept in {}", work.keep().display());
    }
    Ok(())
}

/// Runs `calls - 1` more calls over the profile, each on the next seed, and
/// lists each call's score and mouth-to-ear, or for an outage profile its
/// outcome, the measured call first.
async fn more_calls(
    settings: &RunSettings,
    material: &harness::speech::Material,
    profile: &Profile,
    calls: u64,
    mut result: harness::report::ProfileResult,
) -> Result<harness::report::ProfileResult> {
    let kind = if profile.outage.is_some() { "outage" } else { "quality" };
    tracing::info!(profile = profile.name, calls, kind, "more calls");
    log_call(profile, settings.seed, &result);
    let mut others = Vec::new();
    for n in 1..calls {
        let settings = again(settings, n, kind);
        let call = run_profile(&settings, material, profile).await?;
        log_call(profile, settings.seed, &call);
        others.push(call);
    }
    let all = || std::iter::once(&result).chain(&others);
    let outcomes = all().map(|call| call.outcome.clone()).collect();
    let scores = all().filter_map(|call| call.pesq_wb).collect();
    let one_way = all().filter_map(|call| call.latency.one_way_ms).collect();
    if profile.outage.is_some() {
        result.outage_calls = outcomes;
    } else {
        (result.pesq_wb_calls, result.one_way_ms_calls) = (scores, one_way);
    }
    Ok(result)
}

/// Logs one call's score, mouth-to-ear and what the callee's jitter buffer
/// did, so a profile's spread can be read call by call (the report keeps
/// each call's score and mouth-to-ear, not the rest).
fn log_call(profile: &Profile, seed: u64, call: &harness::report::ProfileResult) {
    let callee = call.reported.callee.as_ref();
    tracing::info!(
        profile = profile.name,
        seed,
        pesq = ?call.pesq_wb,
        one_way_ms = ?call.latency.one_way_ms,
        concealment_events = ?callee.map(|s| s.concealment_events),
        concealed_ms = ?callee.map(|s| s.concealed_samples / 48),
        fec_recovered = ?callee.map(|s| s.packets_recovered_fec),
        late = ?callee.map(|s| s.late_packets),
        repaired = ?callee.map(|s| s.packets_repaired),
        jitter_buffer_ms = ?callee.map(|s| s.jitter_buffer_delay_ms),
        "call"
    );
}

/// The settings of the `n`th call after a profile's measured one: the next
/// seed, its own folder, and a short idle (the measured call measured it).
fn again(settings: &RunSettings, n: u64, kind: &str) -> RunSettings {
    RunSettings {
        seed: settings.seed + n,
        work: settings.work.join(format!("{kind}-{n}")),
        idle: Duration::from_secs(1),
        ..settings.clone()
    }
}

fn select(names: &[String]) -> Result<Vec<Profile>> {
    if names.is_empty() {
        return Ok(impairment::profiles());
    }
    names
        .iter()
        .map(|name| {
            impairment::profile(name).with_context(|| {
                let known: Vec<_> = impairment::profiles().iter().map(|p| p.name).collect();
                format!("no profile {name:?}; known: {}", known.join(", "))
            })
        })
        .collect()
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or("unknown".into(), |s| s.trim().to_owned()),
        rustc: command_output("rustc", &["--version"]).unwrap_or_else(|| "unknown".into()),
    }
}
