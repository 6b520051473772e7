//! `voiced`: parse the command line, read the config, run the daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;
use voicelink_daemon::audio::{InputSpec, OutputSpec};
use voicelink_daemon::config::{Config, DisplayName, LogLevel, Overrides};

/// The voicelink daemon: finds peers on the LAN and carries voice calls between
/// them. Driven by `voicectl` and other clients over a local gRPC socket.
#[derive(Debug, Parser)]
#[command(name = "voiced", version)]
struct Args {
    /// Config file [default: $XDG_CONFIG_HOME/voicelink/voiced.toml]
    #[arg(long, env = "VOICED_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Control socket [default: $XDG_RUNTIME_DIR/voicelink/voiced.sock]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Where the identity and state live [default: $XDG_DATA_HOME/voicelink]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The name peers see [default: the host name]
    #[arg(long)]
    name: Option<DisplayName>,
    /// Log filter, e.g. `debug` or `voicelink_daemon=trace` [default: RUST_LOG, else info]
    #[arg(long, value_name = "FILTER")]
    log_level: Option<LogLevel>,
    /// Default audio input: default, device:NAME, file:PATH.wav, tone:HZ, silence, echo
    #[arg(long, value_name = "SPEC")]
    audio_input: Option<InputSpec>,
    /// Default audio output: default, device:NAME, file:PATH.wav, null
    #[arg(long, value_name = "SPEC")]
    audio_output: Option<OutputSpec>,
    /// Print the effective configuration (file, flags and defaults) and exit
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("voiced: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let (mut config, source) = Config::load(args.config.as_deref())?;
    let log_flag = args.log_level.clone();
    config.apply(Overrides {
        name: args.name,
        data_dir: args.data_dir,
        socket: args.socket,
        log_level: args.log_level,
        audio_input: args.audio_input,
        audio_output: args.audio_output,
    });
    if args.print_config {
        if let Some(source) = &source {
            println!("# read from {}", source.display());
        }
        print!("{}", config.to_effective_toml());
        return Ok(());
    }
    init_logging(log_flag.as_ref().unwrap_or(&config.log_level), log_flag.is_some());
    if let Some(source) = &source {
        tracing::info!(config = %source.display(), "read the config file");
    }

    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(async {
        // Installed before the daemon reports ready, so an early SIGTERM is graceful too.
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let shutdown = async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        };
        voicelink_daemon::run(config, shutdown).await.map_err(anyhow::Error::from)
    })
}

/// `--log-level` wins, then `RUST_LOG`, then the config file. Under systemd the
/// journal adds its own timestamps, so ours are left out.
fn init_logging(level: &LogLevel, from_flag: bool) {
    let from_env = std::env::var("RUST_LOG").ok().filter(|_| !from_flag);
    let filter = from_env
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(level.as_str()));
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!journal && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if journal { subscriber.without_time().init() } else { subscriber.init() }
}
