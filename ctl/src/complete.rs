//! Shell completions that know the running daemon: peer names for `dial`, call IDs
//! for the verbs that take one. The shell asks `voicectl` itself at each Tab
//! (clap_complete's environment protocol, `VOICECTL_COMPLETE=<shell> voicectl -- …`),
//! so nothing is stale and hidden subcommands are never offered.

use std::ffi::OsStr;
use std::io;
use std::time::Duration;

use clap_complete::CompletionCandidate;
use clap_complete::env::{EnvCompleter, Shells};
use voicelink_proto::{DaemonAddress, v1};

/// The variable that switches voicectl into completion mode.
pub const VAR: &str = "VOICECTL_COMPLETE";

/// A shell that gives up on a slow completion is worse off than one that gets none.
const DAEMON_TIMEOUT: Duration = Duration::from_millis(800);

/// Answers the shell and exits, when the shell is asking; otherwise returns.
pub fn serve_shell(command: fn() -> clap::Command) {
    clap_complete::CompleteEnv::with_factory(command).var(VAR).completer("voicectl").complete();
}

/// The script that makes `shell` ask voicectl at each Tab.
pub fn registration(shell: clap_complete::Shell, out: &mut dyn io::Write) -> io::Result<()> {
    let name = match shell {
        clap_complete::Shell::Bash => "bash",
        clap_complete::Shell::Elvish => "elvish",
        clap_complete::Shell::Fish => "fish",
        clap_complete::Shell::PowerShell => "powershell",
        clap_complete::Shell::Zsh => "zsh",
        _ => return Err(io::Error::other(format!("no completions for {shell}"))),
    };
    let shells = Shells::builtins();
    let completer: &dyn EnvCompleter = shells.completer(name).ok_or_else(|| io::Error::other(name))?;
    completer.write_registration(VAR, "voicectl", "voicectl", "voicectl", out)
}

/// Online peers' names (with their device IDs as help).
pub fn peer_names(current: &OsStr) -> Vec<CompletionCandidate> {
    let peers = ask_daemon(async |mut client| {
        client.list_peers(v1::ListPeersRequest { include_offline: false }).await.map(|r| r.into_inner().peers)
    });
    let current = current.to_string_lossy();
    peers
        .unwrap_or_default()
        .into_iter()
        .filter(|peer| peer.display_name.starts_with(current.as_ref()))
        .map(|peer| CompletionCandidate::new(peer.display_name).help(Some(peer.device_id.into())))
        .collect()
}

/// Calls in progress (with the peer and the state as help).
pub fn call_ids(current: &OsStr) -> Vec<CompletionCandidate> {
    let calls =
        ask_daemon(async |mut client| client.list_calls(v1::ListCallsRequest {}).await.map(|r| r.into_inner().calls));
    let current = current.to_string_lossy();
    calls
        .unwrap_or_default()
        .into_iter()
        .filter(|call| call.call_id.starts_with(current.as_ref()))
        .map(|call| {
            let state = v1::CallState::try_from(call.state)
                .map(|s| s.as_str_name().trim_start_matches("CALL_STATE_").to_lowercase())
                .unwrap_or_default();
            let help = format!("{} ({state})", call.peer_display_name);
            CompletionCandidate::new(call.call_id).help(Some(help.into()))
        })
        .collect()
}

/// One request to the daemon on the socket the environment names (the shell's
/// command line is not parsed yet), or nothing if it does not answer in time.
fn ask_daemon<T>(request: impl AsyncFnOnce(voicelink_proto::Client) -> Result<T, tonic::Status>) -> Option<T> {
    let socket = std::env::var_os(voicelink_proto::SOCKET_ENV)
        .map(Into::into)
        .unwrap_or_else(voicelink_proto::default_socket_path);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    runtime.block_on(async {
        tokio::time::timeout(DAEMON_TIMEOUT, async {
            let client = voicelink_proto::connect(DaemonAddress::Unix(socket)).await.ok()?;
            request(client).await.ok()
        })
        .await
        .ok()
        .flatten()
    })
}
