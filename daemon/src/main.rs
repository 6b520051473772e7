//! `voiced`: parse the command line, read the config, run the daemon.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::SignalStream;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt, reload};
use voicelink_core::audio_spec::{InputSpec, OutputSpec};
use voicelink_core::config::{ConfigSource, DisplayName, LogLevel, Overrides};
use voicelink_daemon::Reload;

/// The voicelink daemon: voice calls on the LAN, with no server
///
/// voiced finds peers on the LAN by mDNS, rings them over mutually authenticated
/// TLS, and carries calls as WebRTC audio (Opus, DTLS-SRTP) straight between
/// machines. voicectl, the tray and scripts drive it over a local gRPC socket.
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
    /// Answer every incoming call at once (bots, tests, an echo peer)
    #[arg(long)]
    auto_answer: bool,
    /// Print the effective configuration (file, flags and defaults) and exit
    #[arg(long)]
    print_config: bool,
    /// Print a manual page (roff) and exit: voiced(1), or voiced.toml(5)
    #[arg(long, hide = true, value_name = "PAGE", num_args = 0..=1, default_missing_value = "voiced")]
    print_man: Option<ManPage>,
}

/// The manual pages voiced prints.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ManPage {
    /// voiced(1)
    Voiced,
    /// voiced.toml(5)
    #[value(name = "voiced.toml")]
    VoicedToml,
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
    if let Some(page) = args.print_man {
        let page = match page {
            ManPage::Voiced => voicelink_daemon::manual::voiced_page(Args::command()),
            ManPage::VoicedToml => Ok(voicelink_daemon::manual::config_page()),
        };
        return page
            .and_then(|page| std::io::Write::write_all(&mut std::io::stdout(), &page))
            .context("cannot print the manual");
    }
    let log_flag = args.log_level.clone();
    let config_source = ConfigSource {
        explicit_path: args.config,
        overrides: Overrides {
            name: args.name,
            data_dir: args.data_dir,
            socket: args.socket,
            log_level: args.log_level,
            audio_input: args.audio_input,
            audio_output: args.audio_output,
            auto_answer: args.auto_answer,
        },
    };
    let (config, source) = config_source.load()?;
    if args.print_config {
        if let Some(source) = &source {
            println!("# read from {}", source.display());
        }
        print!("{}", config.to_effective_toml());
        return Ok(());
    }
    // The audio libraries' stderr noise goes to the log at debug; ours to stderr.
    let library_stderr = voicelink_daemon::logging::LibraryStderr::route();
    let stderr = match &library_stderr {
        Ok(routed) => routed.original(),
        Err(_) => {
            Arc::new(std::fs::File::from(std::io::stderr().as_fd().try_clone_to_owned().context("cannot use stderr")?))
        }
    };
    let set_log_level = init_logging(log_flag.as_ref().unwrap_or(&config.log_level), log_flag.is_some(), stderr);
    if let Err(error) = &library_stderr {
        tracing::debug!(%error, "cannot keep the audio libraries' messages off stderr");
    }
    if let Some(source) = &source {
        tracing::info!(config = %source.display(), "read the config file");
    }

    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(async {
        // Installed before the daemon reports ready, so an early SIGTERM is graceful too.
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        let reload = Reload { source: config_source, requests: SignalStream::new(hangup), set_log_level };
        let shutdown = async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        };
        voicelink_daemon::run(config, reload, shutdown).await.map_err(anyhow::Error::from)
    })
}

/// `--log-level` wins, then `RUST_LOG`, then the config file. Under systemd the
/// journal adds its own timestamps, so ours are left out. Returns how to change the
/// filter on reload; a filter fixed by the flag or RUST_LOG stays.
fn init_logging(level: &LogLevel, from_flag: bool, stderr: Arc<std::fs::File>) -> Box<dyn Fn(&LogLevel) + Send> {
    let from_env = std::env::var("RUST_LOG").ok().filter(|_| !from_flag);
    let fixed = from_flag || from_env.is_some();
    let filter = from_env
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(voicelink_daemon::logging::directives(level.as_str())));
    let (filter, handle) = reload::Layer::new(filter);
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = !journal && std::io::IsTerminal::is_terminal(&*stderr);
    let output =
        fmt::layer().fmt_fields(voicelink_daemon::logging::escaped_fields()).with_writer(stderr).with_ansi(ansi);
    let output = if journal { output.without_time().boxed() } else { output.boxed() };
    tracing_subscriber::registry()
        .with(filter)
        .with(voicelink_daemon::logging::RoutineLibraryErrors)
        .with(output)
        .init();
    Box::new(move |level: &LogLevel| {
        if fixed {
            tracing::info!(
                "the log filter is set by --log-level or RUST_LOG; the config file's log_level is not applied"
            );
        } else if let Err(error) = handle.reload(EnvFilter::new(voicelink_daemon::logging::directives(level.as_str())))
        {
            tracing::warn!(%error, "cannot change the log filter");
        }
    })
}
