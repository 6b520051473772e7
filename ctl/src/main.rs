//! `voicectl`: one subcommand per control-API verb. Parse, make one call (or
//! follow one stream), print for people or, with `--json`, for scripts.

// `voicectl stats --json` builds one large `json!` literal per call.
#![recursion_limit = "256"]

mod complete;
mod follow;
mod manual;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::ArgValueCompleter;
use tokio_stream::StreamExt;
use tonic::Code;
use voicelink_proto::{Client, ConnectError, DaemonAddress, v1};

use follow::Feed;
use output::Printer;

/// Control the voicelink daemon (voiced): list peers, place and answer calls,
/// follow events and call statistics.
#[derive(Debug, Parser)]
#[command(name = "voicectl", version)]
struct Cli {
    /// The daemon's control socket [default: $XDG_RUNTIME_DIR/voicelink/voiced.sock]
    #[arg(long, global = true, env = voicelink_proto::SOCKET_ENV, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Use the daemon's TCP listener (api.tcp_listen) instead of the socket; needs --token
    #[arg(long, global = true, env = "VOICELINK_TCP", value_name = "HOST:PORT")]
    tcp: Option<String>,
    /// The API token for --tcp (the daemon's data_dir/api-token)
    #[arg(long, global = true, env = "VOICELINK_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON: one object per line for streams
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The daemon's version, device ID, name, listeners and audio
    Status,
    /// Peers seen on the LAN
    Peers {
        /// Include peers that are offline
        #[arg(long, short)]
        all: bool,
    },
    /// Call a peer by name, device ID, host:port or DEVICEID@host:port
    Dial {
        /// Who to call
        #[arg(add = ArgValueCompleter::new(complete::peer_names))]
        target: String,
        /// Audio input for this call (default, device:NAME, file:PATH.wav, tone:HZ, silence, echo)
        #[arg(long, value_name = "SPEC")]
        input: Option<String>,
        /// Audio output for this call (default, device:NAME, file:PATH.wav, null)
        #[arg(long, value_name = "SPEC")]
        output: Option<String>,
        /// Return as soon as the call exists instead of waiting for the answer
        #[arg(long)]
        no_wait: bool,
    },
    /// Add a peer to an answered call, making it a group call (up to 6 people):
    /// the peer rings, and once it answers it joins everyone in the call
    Add {
        /// Who to add: a name or device ID
        #[arg(add = ArgValueCompleter::new(complete::peer_names))]
        target: String,
        /// The call
        #[arg(long, add = ArgValueCompleter::new(complete::call_ids))]
        call: Option<String>,
    },
    /// Answer an incoming call (the only one, if no ID is given); a waiting
    /// call puts the call in progress on hold
    Answer {
        /// The call
        #[arg(add = ArgValueCompleter::new(complete::call_ids))]
        call: Option<String>,
        /// A waiting call: join it to the call in progress (a group call)
        /// instead of holding that
        #[arg(long)]
        merge: bool,
        /// Audio input for this call
        #[arg(long, value_name = "SPEC")]
        input: Option<String>,
        /// Audio output for this call
        #[arg(long, value_name = "SPEC")]
        output: Option<String>,
    },
    /// Decline an incoming call
    Decline {
        /// The call
        #[arg(add = ArgValueCompleter::new(complete::call_ids))]
        call: Option<String>,
        /// Told to the caller
        #[arg(long)]
        reason: Option<String>,
    },
    /// End a call (or cancel one that is still ringing)
    Hangup {
        /// The call
        #[arg(add = ArgValueCompleter::new(complete::call_ids))]
        call: Option<String>,
    },
    /// Stop sending audio on a call
    Mute {
        /// The call
        #[arg(add = ArgValueCompleter::new(complete::call_ids))]
        call: Option<String>,
    },
    /// Send audio again
    Unmute {
        /// The call
        #[arg(add = ArgValueCompleter::new(complete::call_ids))]
        call: Option<String>,
    },
    /// Turn a call's speaker off (the peer is not heard here; a recording keeps
    /// it) or on again
    Speaker {
        /// off or on
        state: Switch,
        /// The call
        #[arg(add = ArgValueCompleter::new(complete::call_ids))]
        call: Option<String>,
    },
    /// Turn a call's echo cancellation, noise suppression or gain control off or
    /// on (a microphone's only; the config's audio.* keys set the default)
    #[command(group(clap::ArgGroup::new("stage").required(true).multiple(true).args(["echo", "noise", "gain"])))]
    Processing {
        /// Echo cancellation: off or on
        #[arg(long)]
        echo: Option<Switch>,
        /// Noise suppression: off or on
        #[arg(long)]
        noise: Option<Switch>,
        /// Automatic gain control: off or on
        #[arg(long)]
        gain: Option<Switch>,
        /// The call
        #[arg(add = ArgValueCompleter::new(complete::call_ids))]
        call: Option<String>,
    },
    /// Show or set how loud calls play, in per cent (0-200; the config key
    /// audio.output_volume, applied at once)
    Volume {
        /// The new volume
        #[arg(value_parser = clap::value_parser!(u32).range(0..=200))]
        percent: Option<u32>,
    },
    /// Put a call on hold (no audio either way)
    Hold {
        /// The call
        #[arg(add = ArgValueCompleter::new(complete::call_ids))]
        call: Option<String>,
    },
    /// Resume a held call
    Resume {
        /// The call
        #[arg(add = ArgValueCompleter::new(complete::call_ids))]
        call: Option<String>,
    },
    /// Record a call (both directions, one stereo WAV) or stop; the peer is told
    #[command(subcommand)]
    Record(RecordCommand),
    /// Calls in progress
    Calls,
    /// Calls made and received, newest first
    History {
        /// Only missed calls (and mark them seen)
        #[arg(long)]
        missed: bool,
        /// Only calls with this device (device ID, alias or name)
        #[arg(long, value_name = "NAME", add = ArgValueCompleter::new(complete::peer_names))]
        peer: Option<String>,
        /// Only calls since then: a duration ago (2d, 3h) or an RFC 3339 time
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// At most this many (1-1000)
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// The devices this one knows, and what you decided about them
    Contacts {
        /// What to do (default: list)
        #[command(subcommand)]
        command: Option<ContactsCommand>,
    },
    /// Show the call's safety number: read it to each other; the same digits on
    /// both sides mean nobody is in between. --confirm marks the peer verified
    Verify {
        /// The call
        #[arg(add = ArgValueCompleter::new(complete::call_ids))]
        call: Option<String>,
        /// The numbers matched: mark the peer verified
        #[arg(long, conflicts_with = "reject")]
        confirm: bool,
        /// Take a verification back
        #[arg(long)]
        reject: bool,
    },
    /// Follow the event feed: the current state first, then every change (when
    /// voiced restarts: a line on stderr, then its new state and changes)
    Events,
    /// Call statistics: one sample of each call, or with --follow a line per call
    /// every interval and a summary when a call ends (--json: one object per sample)
    Stats {
        /// One call (default: all)
        #[arg(add = ArgValueCompleter::new(complete::call_ids))]
        call: Option<String>,
        /// Keep printing samples until the call ends (all calls: until Ctrl-C)
        #[arg(long, short)]
        follow: bool,
        /// Milliseconds between samples with --follow (100 to 10000)
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=10_000))]
        interval: u64,
    },
    /// Audio devices the daemon can use
    Devices,
    /// The live level of an audio input outside any call, to check that the
    /// microphone works (until Ctrl-C, or --count readings)
    Level {
        /// The input, e.g. device:NAME (default: the daemon's default input)
        #[arg(long)]
        input: Option<String>,
        /// Stop after this many readings
        #[arg(long)]
        count: Option<u64>,
        /// Milliseconds between readings (100 to 10000)
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(100..=10_000))]
        interval: u64,
    },
    /// Read and change the daemon's config (the file is edited, comments kept, and
    /// the change applied at once where it can be)
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print the script that gives a shell completions (bash, zsh, fish, elvish, powershell)
    ///
    /// The shell asks voicectl at each Tab, so peer names and call IDs come from the
    /// running daemon. Packages install it; by hand, e.g. in ~/.bashrc:
    /// `source <(voicectl completions bash)`.
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write every page into a folder
    #[command(hide = true)]
    Man {
        /// Write voicectl.1 and a page per subcommand here
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ContactsCommand {
    /// Every known device (the default)
    List,
    /// Give a device your own name for it ("" removes it)
    Alias {
        /// Device ID, alias, a name it used, or an online peer's name
        #[arg(add = ArgValueCompleter::new(complete::peer_names))]
        device: String,
        /// The alias
        alias: String,
    },
    /// Trust a device: it may ring under "trusted only", and is auto-answered if so set
    Trust {
        /// Device ID, alias, a name it used, or an online peer's name
        #[arg(add = ArgValueCompleter::new(complete::peer_names))]
        device: String,
    },
    /// Block a device: its calls never ring (it is told it is blocked)
    Block {
        /// Device ID, alias, a name it used, or an online peer's name
        #[arg(add = ArgValueCompleter::new(complete::peer_names))]
        device: String,
    },
    /// Take a trust or a block back
    Unblock {
        /// Device ID, alias, a name it used, or an online peer's name
        #[arg(add = ArgValueCompleter::new(complete::peer_names))]
        device: String,
    },
    /// Forget a device (its calls stay in the history)
    Forget {
        /// Device ID, alias, a name it used, or an online peer's name
        #[arg(add = ArgValueCompleter::new(complete::peer_names))]
        device: String,
    },
}

#[derive(Debug, Subcommand)]
enum RecordCommand {
    /// Start recording: left what we send, right what we hear, 48 kHz 16-bit WAV.
    /// The peer is shown that it is recorded and must confirm before anything is
    /// written
    Start {
        /// The call
        #[arg(add = ArgValueCompleter::new(complete::call_ids))]
        call: Option<String>,
        /// A new file (never replaced) [default: a new file in the daemon's
        /// data_dir/recordings/]
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
    },
    /// Stop recording
    Stop {
        /// The call
        #[arg(add = ArgValueCompleter::new(complete::call_ids))]
        call: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// The value in force of one key, or of every key, and when a change applies
    Get {
        /// e.g. calls.ring_timeout_secs (default: every key)
        key: Option<String>,
        /// Also what each key does and its default
        #[arg(long, short)]
        verbose: bool,
    },
    /// Set a key in the config file and apply it (`voicectl config get -v` lists the keys)
    Set {
        /// e.g. calls.ring_timeout_secs
        key: String,
        /// e.g. 45, true, kitchen, "stun:a.example, stun:b.example"
        value: String,
    },
    /// Remove a key from the config file: back to its default
    Unset {
        /// e.g. calls.ring_timeout_secs
        key: String,
    },
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    /// Off.
    Off,
    /// On.
    On,
}

/// The config key of the output volume.
const OUTPUT_VOLUME: &str = "audio.output_volume";

/// Exit codes, so scripts can tell failures apart.
mod exit {
    /// The daemon refused or failed the request.
    pub const REQUEST_FAILED: u8 = 1;
    /// The daemon cannot be reached.
    pub const UNREACHABLE: u8 = 3;
    /// Interrupted (Ctrl-C), as shells report SIGINT: 128 + 2.
    pub const INTERRUPTED: u8 = 130;
}

/// How a command that waits can end besides success.
enum Failure {
    /// The daemon refused or the connection failed.
    Status(tonic::Status),
    /// The user pressed Ctrl-C; what was undone is already said.
    Interrupted,
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Failure::Status(status)
    }
}

fn main() -> ExitCode {
    complete::serve_shell(Cli::command);
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("voicectl: cannot start: {error}");
            return ExitCode::from(exit::REQUEST_FAILED);
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    // These describe voicectl itself: no daemon needed.
    match &cli.command {
        Command::Completions { shell } => {
            return match complete::registration(*shell, &mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("voicectl: cannot write the completions: {error}");
                    ExitCode::from(exit::REQUEST_FAILED)
                }
            };
        }
        Command::Man { dir } => {
            let written = match dir {
                Some(dir) => manual::write_pages(Cli::command(), dir),
                None => manual::main_page(Cli::command())
                    .and_then(|page| std::io::Write::write_all(&mut std::io::stdout(), &page)),
            };
            return match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("voicectl: cannot write the manual pages: {error}");
                    ExitCode::from(exit::REQUEST_FAILED)
                }
            };
        }
        _ => {}
    }
    let address = match (cli.tcp, cli.token) {
        (Some(address), Some(token)) => DaemonAddress::Tcp { address, token },
        // A command-line error (exit 2). Checked here rather than with clap's
        // `requires`, which misses a global --token given after the subcommand.
        (Some(_), None) => Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--tcp needs the API token: pass --token or set VOICELINK_TOKEN (it is in the daemon's data_dir/api-token)",
            )
            .exit(),
        (None, _) => DaemonAddress::Unix(cli.socket.unwrap_or_else(voicelink_proto::default_socket_path)),
    };
    let client = match voicelink_proto::connect(address.clone()).await {
        Ok(client) => client,
        Err(error) => {
            eprintln!("voicectl: {error}");
            match error {
                ConnectError::NotRunning { .. } => {
                    eprintln!(
                        "Start it with `voiced` (or `systemctl --user start voiced`), or point --socket at a running one."
                    )
                }
                ConnectError::PermissionDenied { .. } => {
                    eprintln!("Use the daemon of your own user, or choose its socket with --socket.")
                }
                _ => {}
            }
            return ExitCode::from(exit::UNREACHABLE);
        }
    };
    let printer = Printer { json: cli.json };
    let outcome = match cli.command {
        Command::Events => follow::follow(&address, client, Feed::Events, &printer).await.map_err(Failure::from),
        Command::Stats { call, follow: true, interval } => {
            let feed = Feed::Stats { call, interval: Duration::from_millis(interval) };
            follow::follow(&address, client, feed, &printer).await.map_err(Failure::from)
        }
        command => execute(client, command, &printer).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Interrupted) => ExitCode::from(exit::INTERRUPTED),
        Err(Failure::Status(status)) => {
            report(&status);
            ExitCode::from(if status.code() == Code::Unavailable { exit::UNREACHABLE } else { exit::REQUEST_FAILED })
        }
    }
}

fn report(status: &tonic::Status) {
    match status.code() {
        // The daemon's message already says what cannot be done and why.
        Code::Unimplemented | Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition => {
            eprintln!("voicectl: {}", status.message())
        }
        Code::Unavailable => eprintln!("voicectl: lost the connection to voiced: {}", status.message()),
        code => eprintln!("voicectl: {}: {}", code.description(), status.message()),
    }
}

/// `--since`: a duration ago (`2d`, `90m`) or an RFC 3339 time.
fn parse_since(text: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(ago) = humantime::parse_duration(text) {
        return std::time::SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("--since {text} reaches before the epoch"));
    }
    humantime::parse_rfc3339_weak(text)
        .map_err(|_| format!("--since {text:?} is neither a duration (2d, 3h) nor a time (2026-11-30 08:00:00)"))
}

/// Dials, then follows the event feed until the call is answered (success) or
/// ends (declined, busy, no answer, failed: an error naming the reason). Ctrl-C
/// while it rings cancels the call, so the peer stops ringing at once.
async fn dial_and_wait(mut client: Client, request: v1::DialRequest, printer: &Printer) -> Result<(), Failure> {
    // Taken over before the call exists, so no Ctrl-C can leave it ringing.
    let mut interrupted = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| tonic::Status::internal(format!("cannot watch for Ctrl-C: {e}")))?;
    // Subscribe first so the answer cannot slip past between the two calls.
    let mut events = client.watch_events(v1::WatchEventsRequest {}).await?.into_inner();
    let call = client.dial(request).await?.into_inner().call.unwrap_or_default();
    if !printer.json {
        println!("calling {} … (Ctrl-C cancels)", call.peer_display_name);
    }
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = interrupted.recv() => {
                client.hangup(v1::HangupRequest { call_id: call.call_id.clone() }).await?;
                eprintln!("voicectl: interrupted: the call to {} was cancelled", call.peer_display_name);
                return Err(Failure::Interrupted);
            }
        };
        let Some(event) = event else { break };
        let Some(v1::event::Kind::CallStateChanged(change)) = event?.kind else { continue };
        let Some(now) = change.call.filter(|c| c.call_id == call.call_id) else { continue };
        match v1::CallState::try_from(now.state) {
            Ok(v1::CallState::Active) => {
                printer.call(Some(&now));
                return Ok(());
            }
            Ok(v1::CallState::Ended) => {
                printer.call(Some(&now));
                let reason = v1::EndReason::try_from(now.end_reason)
                    .map(|r| r.as_str_name().trim_start_matches("END_REASON_").to_lowercase().replace('_', " "))
                    .unwrap_or_default();
                let detail = if now.end_detail.is_empty() { String::new() } else { format!(": {}", now.end_detail) };
                return Err(
                    tonic::Status::failed_precondition(format!("the call was not answered: {reason}{detail}")).into()
                );
            }
            _ => {}
        }
    }
    Err(tonic::Status::unavailable("the event feed ended before the call was answered").into())
}

async fn execute(mut client: Client, command: Command, printer: &Printer) -> Result<(), Failure> {
    match command {
        Command::Status => printer.status(&client.get_status(v1::GetStatusRequest {}).await?.into_inner()),
        Command::Peers { all } => {
            printer.peers(&client.list_peers(v1::ListPeersRequest { include_offline: all }).await?.into_inner().peers)
        }
        Command::Dial { target, input, output, no_wait } => {
            let request = v1::DialRequest {
                target,
                audio_input: input.unwrap_or_default(),
                audio_output: output.unwrap_or_default(),
            };
            if no_wait {
                printer.call(client.dial(request).await?.into_inner().call.as_ref());
            } else {
                return dial_and_wait(client, request, printer).await;
            }
        }
        Command::Add { target, call } => {
            let request = v1::AddParticipantRequest { call_id: call.unwrap_or_default(), target };
            printer.call(client.add_participant(request).await?.into_inner().call.as_ref());
        }
        Command::Answer { call, merge, input, output } => {
            let request = v1::AnswerRequest {
                call_id: call.unwrap_or_default(),
                audio_input: input.unwrap_or_default(),
                audio_output: output.unwrap_or_default(),
                merge,
            };
            printer.call(client.answer(request).await?.into_inner().call.as_ref());
        }
        Command::Decline { call, reason } => {
            client
                .decline(v1::DeclineRequest { call_id: call.unwrap_or_default(), reason: reason.unwrap_or_default() })
                .await?;
            printer.done("declined");
        }
        Command::Hangup { call } => {
            client.hangup(v1::HangupRequest { call_id: call.unwrap_or_default() }).await?;
            printer.done("hung up");
        }
        Command::Mute { call } => printer.call(
            client
                .set_mute(v1::SetMuteRequest { call_id: call.unwrap_or_default(), muted: true })
                .await?
                .into_inner()
                .call
                .as_ref(),
        ),
        Command::Speaker { state, call } => printer.call(
            client
                .set_speaker_mute(v1::SetSpeakerMuteRequest {
                    call_id: call.unwrap_or_default(),
                    muted: state == Switch::Off,
                })
                .await?
                .into_inner()
                .call
                .as_ref(),
        ),
        Command::Processing { echo, noise, gain, call } => {
            let on = |switch: Option<Switch>| switch.map(|s| s == Switch::On);
            let request = v1::SetAudioProcessingRequest {
                call_id: call.unwrap_or_default(),
                echo_cancellation: on(echo),
                noise_suppression: on(noise),
                gain_control: on(gain),
            };
            printer.call(client.set_audio_processing(request).await?.into_inner().call.as_ref())
        }
        Command::Volume { percent: None } => {
            let request = v1::GetConfigRequest { key: OUTPUT_VOLUME.into() };
            let response = client.get_config(request).await?.into_inner();
            printer.config(&response.entries, &response.path, false);
        }
        Command::Volume { percent: Some(percent) } => {
            let request = v1::SetConfigRequest { key: OUTPUT_VOLUME.into(), value: percent.to_string(), unset: false };
            let response = client.set_config(request).await?.into_inner();
            printer.config_set(response.entry.as_ref(), &response.path);
        }
        Command::Unmute { call } => printer.call(
            client
                .set_mute(v1::SetMuteRequest { call_id: call.unwrap_or_default(), muted: false })
                .await?
                .into_inner()
                .call
                .as_ref(),
        ),
        Command::Hold { call } => printer.call(
            client
                .set_hold(v1::SetHoldRequest { call_id: call.unwrap_or_default(), on_hold: true })
                .await?
                .into_inner()
                .call
                .as_ref(),
        ),
        Command::Resume { call } => printer.call(
            client
                .set_hold(v1::SetHoldRequest { call_id: call.unwrap_or_default(), on_hold: false })
                .await?
                .into_inner()
                .call
                .as_ref(),
        ),
        Command::Record(RecordCommand::Start { call, file }) => {
            // The daemon runs elsewhere: a relative path means ours.
            let file = match file {
                Some(file) if file.is_relative() => std::env::current_dir()
                    .map(|dir| dir.join(&file))
                    .map_err(|e| tonic::Status::invalid_argument(format!("cannot resolve {}: {e}", file.display())))?,
                Some(file) => file,
                None => PathBuf::new(),
            };
            let request = v1::SetRecordingRequest {
                call_id: call.unwrap_or_default(),
                recording: true,
                file: file.display().to_string(),
            };
            let call = client.set_recording(request).await?.into_inner().call;
            match call.as_ref() {
                Some(call) if !printer.json => println!("recording into {}", call.recording_file),
                _ => printer.call(call.as_ref()),
            }
        }
        Command::Record(RecordCommand::Stop { call }) => {
            let request =
                v1::SetRecordingRequest { call_id: call.unwrap_or_default(), recording: false, file: String::new() };
            printer.call(client.set_recording(request).await?.into_inner().call.as_ref());
        }
        Command::History { missed, peer, since, limit } => {
            let since = match since.as_deref().map(parse_since).transpose() {
                Ok(since) => since.map(prost_types::Timestamp::from),
                Err(message) => return Err(tonic::Status::invalid_argument(message).into()),
            };
            let request = v1::ListHistoryRequest {
                missed_only: missed,
                peer: peer.unwrap_or_default(),
                since,
                limit,
                page_token: String::new(),
            };
            let filtered = !request.peer.is_empty() || request.since.is_some();
            let page = client.list_history(request).await?.into_inner();
            printer.history(&page);
            // What was shown is seen: the missed calls up to the newest listed
            // (not when a filter may have hidden some).
            if missed && !filtered && !page.newest_token.is_empty() {
                client.mark_missed_seen(v1::MarkMissedSeenRequest { up_to: page.newest_token }).await?;
            }
        }
        Command::Contacts { command } => {
            use v1::set_contact_request::Change;
            let (device, change) = match command.unwrap_or(ContactsCommand::List) {
                ContactsCommand::List => {
                    let contacts = client.list_contacts(v1::ListContactsRequest {}).await?.into_inner().contacts;
                    printer.contacts(&contacts);
                    return Ok(());
                }
                ContactsCommand::Alias { device, alias } => (device, Change::Alias(alias)),
                ContactsCommand::Trust { device } => (device, Change::Standing("trusted".into())),
                ContactsCommand::Block { device } => (device, Change::Standing("blocked".into())),
                ContactsCommand::Unblock { device } => (device, Change::Standing("known".into())),
                ContactsCommand::Forget { device } => (device, Change::Forget(true)),
            };
            let request = v1::SetContactRequest { device, change: Some(change) };
            let contact = client.set_contact(request).await?.into_inner().contact;
            match contact {
                Some(contact) => printer.contacts(std::slice::from_ref(&contact)),
                None => printer.done("forgotten"),
            }
        }
        Command::Verify { call, confirm, reject } => {
            let verified = (confirm || reject).then_some(confirm);
            let request = v1::VerifyPeerRequest { call_id: call.unwrap_or_default(), verified };
            printer.verification(&client.verify_peer(request).await?.into_inner());
        }
        Command::Calls => printer.calls(&client.list_calls(v1::ListCallsRequest {}).await?.into_inner().calls),
        Command::Events | Command::Stats { follow: true, .. } => unreachable!("followed across restarts"),
        Command::Stats { call, follow: false, .. } => {
            // One round is wanted: the first sample of each call comes at once,
            // and the longest interval keeps the next round away.
            let interval = prost_types::Duration::try_from(Duration::from_secs(10)).ok();
            let mut stream = client
                .watch_stats(v1::WatchStatsRequest { call_id: call.unwrap_or_default(), interval })
                .await?
                .into_inner();
            let mut printed = std::collections::HashSet::new();
            // The round arrives back to back; a pause means it is over.
            while let Ok(Some(sample)) = tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
                let sample = sample?;
                // A group call's entry has its group ID alone.
                if !printed.insert((sample.call_id.clone(), sample.group_id.clone())) {
                    break;
                }
                printer.stats(&sample);
            }
            if printed.is_empty() && !printer.json {
                println!("no calls");
            }
        }
        Command::Completions { .. } | Command::Man { .. } => unreachable!("handled before connecting"),
        Command::Config(ConfigCommand::Get { key, verbose }) => {
            let response = client.get_config(v1::GetConfigRequest { key: key.unwrap_or_default() }).await?.into_inner();
            printer.config(&response.entries, &response.path, verbose);
        }
        Command::Config(ConfigCommand::Set { key, value }) => {
            let response = client.set_config(v1::SetConfigRequest { key, value, unset: false }).await?.into_inner();
            printer.config_set(response.entry.as_ref(), &response.path);
        }
        Command::Config(ConfigCommand::Unset { key }) => {
            let request = v1::SetConfigRequest { key, value: String::new(), unset: true };
            let response = client.set_config(request).await?.into_inner();
            printer.config_set(response.entry.as_ref(), &response.path);
        }
        Command::Level { input, count, interval } => {
            let mut interrupted = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .map_err(|e| tonic::Status::internal(format!("cannot watch for Ctrl-C: {e}")))?;
            let request = v1::WatchInputLevelRequest {
                input: input.unwrap_or_default(),
                interval: prost_types::Duration::try_from(Duration::from_millis(interval)).ok(),
            };
            let mut levels = client.watch_input_level(request).await?.into_inner();
            let mut read = 0;
            while count.is_none_or(|count| read < count) {
                let level = tokio::select! {
                    level = levels.next() => level,
                    _ = interrupted.recv() => return Err(Failure::Interrupted),
                };
                let Some(level) = level else {
                    return Err(tonic::Status::unavailable("the daemon stopped").into());
                };
                printer.input_level(&level?);
                read += 1;
            }
        }
        Command::Devices => {
            printer.devices(&client.list_audio_devices(v1::ListAudioDevicesRequest {}).await?.into_inner())
        }
    }
    Ok(())
}
