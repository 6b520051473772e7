//! The config in force, owned by one task. It re-reads the file on SIGHUP and
//! answers the API's `GetConfig` and `SetConfig`: a set edits the file (comments
//! and layout kept, checked as the daemon reads it) and applies it as a reload
//! does, so the file and the daemon never disagree for long.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use voicelink_core::config::{Config, ConfigSource, LogLevel, Overrides, default_config_path};
use voicelink_core::config_keys::{self, Applies, ConfigKey, EditError, KEYS};
use voicelink_core::reload::{LiveSettings, ReloadPlan};

use crate::events::{Change, EventHub};
use crate::service_manager;

/// How the daemon re-reads its config (on SIGHUP, from `main`).
pub struct Reload<R> {
    /// Where the config came from.
    pub source: ConfigSource,
    /// Yields once per reload request.
    pub requests: R,
    /// Applies a new log filter (a no-op when the filter was fixed by a flag or
    /// RUST_LOG, which outrank the file).
    pub set_log_level: Box<dyn Fn(&LogLevel) + Send>,
}

/// A request from the API.
pub enum SettingsCommand {
    /// One key, or every key when `None`.
    Get {
        /// The key.
        key: Option<String>,
        /// The answer.
        reply: oneshot::Sender<Result<ConfigView, SettingsError>>,
    },
    /// Sets `key` to `value` in the file (removes it when `None`) and applies it.
    Set {
        /// The key.
        key: String,
        /// As typed: `kitchen`, `45`, `true`, `stun:a, stun:b`.
        value: Option<String>,
        /// The answer: the key as it now is.
        reply: oneshot::Sender<Result<ConfigView, SettingsError>>,
    },
}

/// Keys and their values, as the API shows them.
#[derive(Debug)]
pub struct ConfigView {
    /// The file `set` writes to.
    pub path: Option<PathBuf>,
    /// The keys asked for.
    pub entries: Vec<ConfigEntry>,
}

/// One key and its value.
#[derive(Debug)]
pub struct ConfigEntry {
    /// The key's description.
    pub key: &'static ConfigKey,
    /// The value in force, as TOML; `None` when unset.
    pub value: Option<String>,
    /// A different value in the file that waits for a restart.
    pub pending: Option<String>,
    /// The command-line flag that outranks the file for this key, if given.
    pub overridden_by: Option<&'static str>,
}

/// Why a config request failed.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The key or the value.
    #[error(transparent)]
    Edit(#[from] EditError),
    /// The file could not be read or written.
    #[error("cannot {action} the config file {path}: {source}{hint}")]
    File {
        /// What we tried.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// There is nowhere to write (no home directory, no --config).
    #[error("there is no config file to edit: start voiced with --config FILE")]
    NoFile,
}

/// The config task: owns the config in force.
pub struct Settings<R> {
    config: Config,
    /// The config as last read from the file, to say once (not on every reload)
    /// that a key waits for a restart.
    last_read: Option<Config>,
    reload: Reload<R>,
    live: Arc<watch::Sender<LiveSettings>>,
    hub: EventHub,
}

impl<R> Settings<R>
where
    R: Stream<Item = ()> + Unpin,
{
    /// The task, starting from the config the daemon started with.
    pub fn new(config: Config, reload: Reload<R>, live: Arc<watch::Sender<LiveSettings>>, hub: EventHub) -> Self {
        Settings { config, last_read: None, reload, live, hub }
    }

    /// Serves reloads and requests until `stop`.
    pub async fn run(mut self, mut commands: mpsc::Receiver<SettingsCommand>, stop: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some(()) = self.reload.requests.next() => self.reload(),
                Some(command) = commands.recv() => self.command(command),
                else => break,
            }
        }
    }

    fn command(&mut self, command: SettingsCommand) {
        match command {
            SettingsCommand::Get { key, reply } => {
                let _ = reply.send(self.get(key.as_deref()));
            }
            SettingsCommand::Set { key, value, reply } => {
                let _ = reply.send(self.set(&key, value.as_deref()));
            }
        }
    }

    fn path(&self) -> Option<PathBuf> {
        self.reload.source.explicit_path.clone().or_else(default_config_path)
    }

    fn get(&self, key: Option<&str>) -> Result<ConfigView, SettingsError> {
        let keys: Vec<&'static ConfigKey> = match key {
            Some(key) => vec![config_keys::find(key)?],
            None => KEYS.iter().collect(),
        };
        // What the file says now, for keys that wait for a restart.
        let in_file = self.reload.source.load().ok().map(|(config, _)| config);
        let in_force = effective(&self.config);
        let entries = keys
            .into_iter()
            .map(|key| {
                let value = config_keys::value_of(&in_force, key);
                let pending = in_file
                    .as_ref()
                    .filter(|_| key.applies == Applies::Restart)
                    .map(|file| config_keys::value_of(&effective(file), key))
                    .filter(|in_file| *in_file != value)
                    .map(|in_file| in_file.unwrap_or_else(|| "(not set)".into()));
                ConfigEntry { key, value, pending, overridden_by: overriding_flag(&self.reload.source.overrides, key) }
            })
            .collect();
        Ok(ConfigView { path: self.path(), entries })
    }

    fn set(&mut self, key: &str, value: Option<&str>) -> Result<ConfigView, SettingsError> {
        let key = config_keys::find(key)?;
        let path = self.path().ok_or(SettingsError::NoFile)?;
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(file_error("read", &path, source)),
        };
        let edited = config_keys::edit(&text, key, value)?;
        write_atomically(&path, &edited)?;
        info!(key = key.key, file = %path.display(), "config key set");
        self.reload();
        self.get(Some(key.key))
    }

    /// Re-reads the config and applies what can change live. A config that does not
    /// read is refused and the current one stays. Calls in progress follow the
    /// output volume and the voice processing keys; other audio and call
    /// settings apply to calls that start afterwards.
    fn reload(&mut self) {
        let monotonic = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| i128::from(t.tv_sec()) * 1_000_000 + i128::from(t.tv_nsec()) / 1_000)
            .unwrap_or_default();
        service_manager::notify(&[sd_notify::NotifyState::Reloading, sd_notify::NotifyState::MonotonicUsec(monotonic)]);
        match self.reload.source.load() {
            Err(error) => error!(%error, "config reload refused; the current config stays in force"),
            Ok((new, _)) => {
                let plan = ReloadPlan::between(&self.config, &new);
                let newly_changed = self.last_read.as_ref().map(|last| ReloadPlan::between(last, &new).needs_restart);
                for key in &plan.needs_restart {
                    if newly_changed.as_ref().is_none_or(|changed| changed.contains(key)) {
                        warn!(key, "this setting changed in the config file; restart voiced to apply it");
                    }
                }
                self.last_read = Some(new);
                if let Some(level) = &plan.log_level {
                    (self.reload.set_log_level)(level);
                }
                let mut policy_changed = None;
                self.live.send_if_modified(|live| {
                    let new = LiveSettings::of(&plan.applied);
                    let changed = *live != new;
                    let policy = |s: &LiveSettings| (s.calls.who_may_ring, s.calls.auto_answer, s.calls.do_not_disturb);
                    if policy(live) != policy(&new) {
                        policy_changed = Some(policy(&new));
                    }
                    *live = new;
                    changed
                });
                if let Some((who_may_ring, auto_answer, do_not_disturb)) = policy_changed {
                    info!(%who_may_ring, %auto_answer, do_not_disturb, "who may ring");
                    self.hub.publish(Change::Policy { who_may_ring, auto_answer, do_not_disturb });
                }
                if let Some((input, output)) = plan.audio.clone() {
                    self.hub.publish(Change::AudioDefaults { input, output });
                }
                info!(changed = !plan.is_empty(), "config reloaded");
                self.config = plan.applied;
            }
        }
        service_manager::notify(&[sd_notify::NotifyState::Ready]);
    }
}

/// The config with the defaults that depend on the machine written out.
fn effective(config: &Config) -> Config {
    let mut effective = config.clone();
    effective.data_dir = Some(config.data_dir());
    effective.api.socket = Some(config.socket());
    effective
}

/// The flag given to voiced that outranks the file for `key`.
fn overriding_flag(overrides: &Overrides, key: &ConfigKey) -> Option<&'static str> {
    let given = match key.key {
        "name" => overrides.name.is_some(),
        "data_dir" => overrides.data_dir.is_some(),
        "api.socket" => overrides.socket.is_some(),
        "log_level" => overrides.log_level.is_some(),
        "audio.input" => overrides.audio_input.is_some(),
        "audio.output" => overrides.audio_output.is_some(),
        "calls.auto_answer" => overrides.auto_answer,
        _ => false,
    };
    key.flag.filter(|_| given)
}

fn file_error(action: &'static str, path: &Path, source: io::Error) -> SettingsError {
    let hint = match source.kind() {
        io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::PermissionDenied => {
            " (under the systemd unit only ~/.config/voicelink is writable; with --config elsewhere, \
             add a ReadWritePaths= drop-in for its folder)"
        }
        _ => "",
    };
    SettingsError::File { action, path: path.to_owned(), source, hint }
}

/// Replaces `path` with `text` so that a crash leaves the old file or the new one,
/// never half of one. A symbolic link stays one: the file it points to is
/// replaced (dotfile managers link the config in). The file keeps its mode; a new
/// one is 0600.
fn write_atomically(path: &Path, text: &str) -> Result<(), SettingsError> {
    let target = match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            fs::canonicalize(path).map_err(|e| file_error("follow the link", path, e))?
        }
        _ => path.to_owned(),
    };
    let dir = target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| file_error("create the folder of", &target, e))?;
    let mode = fs::metadata(&target).map(|m| m.permissions().mode() & 0o777).unwrap_or(0o600);
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let write = || -> io::Result<()> {
        let mut file = fs::File::options().write(true).create_new(true).mode(mode).open(&temporary)?;
        // Exactly the old mode, whatever the umask.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, &target)?;
        // The rename itself is durable once the folder is.
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&temporary);
        file_error("write", &target, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linked_config_stays_a_link_and_a_file_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let managed = dir.path().join("dotfiles/voiced.toml");
        fs::create_dir_all(managed.parent().unwrap()).unwrap();
        fs::write(&managed, "name = \"old\"\n").unwrap();
        fs::set_permissions(&managed, fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("voiced.toml");
        std::os::unix::fs::symlink(&managed, &link).unwrap();

        write_atomically(&link, "name = \"new\"\n").unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link stays");
        assert_eq!(fs::read_to_string(&managed).unwrap(), "name = \"new\"\n");
        assert_eq!(fs::metadata(&managed).unwrap().permissions().mode() & 0o777, 0o640);
        let leftovers: Vec<_> = fs::read_dir(managed.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left");

        let fresh = dir.path().join("new/voiced.toml");
        write_atomically(&fresh, "").unwrap();
        assert_eq!(fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
