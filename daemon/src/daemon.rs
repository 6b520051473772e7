//! The daemon's life: open the control socket, load the identity, start the
//! tasks, tell systemd we are ready, and on shutdown decide, tell, wait.

use std::fs;
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::api::{self, ControlService, ControlSocket, DaemonInfo, TcpApi};
use crate::call::registry::Registry;
use crate::call::task::CallContext;
use crate::discovery::{Discovery, OwnAdvert};
use crate::events::{Change, EventHub};
use crate::identity::{Identity, IdentityError};
use crate::media::peer_connection::NetworkSettings;
use crate::media::session::CodecSettings;
use crate::signaling::SignalingListener;
use crate::signaling::transport::Endpoint;
use crate::stats::StatsBoard;
use voicelink_core::call_machine::Timeouts;
use voicelink_core::config::{Config, ConfigSource, LogLevel, TcpListen};
use voicelink_core::reload::{LiveSettings, ReloadPlan};

/// Name of the TCP API token file in the data directory.
const TOKEN_FILE: &str = "api-token";

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The control socket.
    #[error(transparent)]
    Socket(#[from] api::SocketError),
    /// The device identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A listener could not be bound.
    #[error("cannot listen for {what} on {address}: {source}")]
    Listen {
        /// "signaling", "the TCP control API".
        what: &'static str,
        /// Where.
        address: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The API token file.
    #[error("cannot {action} the API token {path}: {source}")]
    Token {
        /// What we tried.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The API server.
    #[error(transparent)]
    Serve(#[from] api::ServeError),
    /// TLS for signaling.
    #[error(transparent)]
    Tls(crate::signaling::tls::TlsSetupError),
}

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

/// Runs the daemon until `shutdown` completes, then stops cleanly: the mDNS
/// goodbye is sent, open API streams end, and the socket is removed.
pub async fn run<R>(
    config: Config,
    mut reload: Reload<R>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError>
where
    R: Stream<Item = ()> + Unpin,
{
    let started = Instant::now();
    // The socket first: a second daemon must refuse before it advertises anything.
    let socket_path = config.socket();
    let (socket, unix_listener) = ControlSocket::bind(&socket_path)?;

    let data_dir = config.data_dir();
    let (identity, created) = Identity::load_or_create(&data_dir)?;
    let identity = Arc::new(identity);
    let endpoint = Endpoint::new(identity.clone()).map_err(DaemonError::Tls)?;
    if created {
        info!(device_id = %identity.device_id, data_dir = %data_dir.display(), "created a new device identity");
    } else {
        info!(device_id = %identity.device_id, "loaded the device identity");
    }

    let port = config.signaling.port;
    let signaling = SignalingListener::bind(port).await.map_err(|source| DaemonError::Listen {
        what: "signaling",
        address: format!("port {port}"),
        source,
    })?;
    let signaling_address = signaling.local_addr().map_err(|source| DaemonError::Listen {
        what: "signaling",
        address: format!("port {port}"),
        source,
    })?;

    let tcp = match config.api.tcp_listen {
        None => None,
        Some(TcpListen(address)) => {
            if !address.ip().is_loopback() {
                warn!(%address, "the TCP control API listens beyond this machine; anyone with the token can use it");
            }
            let listener = tokio::net::TcpListener::bind(address).await.map_err(|source| DaemonError::Listen {
                what: "the TCP control API",
                address: address.to_string(),
                source,
            })?;
            Some(TcpApi { listener, token: load_or_create_token(&data_dir.join(TOKEN_FILE))? })
        }
    };

    let hub = EventHub::new();
    let stats = StatsBoard::default();
    let settings = Arc::new(watch::Sender::new(LiveSettings::of(&config)));
    let settings_rx = settings.subscribe();
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();

    let discovery = if config.discovery.enabled {
        let own = OwnAdvert {
            device_id: identity.device_id,
            display_name: config.name.to_string(),
            signaling_port: signaling_address.port(),
        };
        // Without mDNS the daemon is still useful (dial by address), so keep running.
        Discovery::start(own)
            .inspect_err(|error| warn!(%error, "LAN discovery is unavailable; peers must be dialed by address"))
            .ok()
    } else {
        info!("LAN discovery is off (discovery.enabled = false): peers must be dialed by address");
        None
    };
    let discovery_enabled = discovery.is_some();
    if let Some(discovery) = discovery {
        tasks.spawn(discovery.run(hub.clone(), settings_rx.clone(), stop.clone()));
    }
    let (registry_tx, registry_rx) = mpsc::channel(64);
    let (inbox_tx, inbox_rx) = mpsc::channel(64);
    let reconnect_timeout = Duration::from_secs(u64::from(config.calls.reconnect_timeout_secs.0));
    let context = CallContext {
        identity: identity.clone(),
        endpoint: endpoint.clone(),
        hub: hub.clone(),
        stats: stats.clone(),
        own_name: config.name.to_string(),
        timeouts: Timeouts {
            ring: Duration::from_secs(u64::from(config.calls.ring_timeout_secs.0)),
            reconnect: reconnect_timeout,
            ..Timeouts::default()
        },
        codec: CodecSettings {
            frame: config.calls.frame_ms.duration(),
            bitrate: config.calls.bitrate_kbps.0 as i32 * 1000,
            dtx: config.calls.dtx,
            network: NetworkSettings {
                stun_servers: config.calls.stun_servers.iter().map(ToString::to_string).collect(),
                allow_loopback: config.calls.allow_loopback,
                ice_failed_after: reconnect_timeout + Duration::from_secs(5),
            },
        },
        loop_files: config.audio.loop_files,
        inbox: inbox_tx.clone(),
        shutdown: stop.clone(),
    };
    let registry = Registry::new(context, settings_rx.clone());
    tasks.spawn(registry.run(registry_rx, inbox_rx));
    tasks.spawn(signaling.run(endpoint, inbox_tx, stop.clone()));

    log_audio_fallbacks(&config).await;
    let info = DaemonInfo { device_id: identity.device_id, started, signaling_address, discovery_enabled };
    let service = ControlService::new(info, registry_tx, settings.clone(), hub.clone(), stats, stop.clone());
    let server = api::serve(unix_listener, tcp, service, stop.clone());
    tokio::pin!(server);

    notify_systemd(&[sd_notify::NotifyState::Ready]);
    info!(name = %config.name, signaling = %signaling_address, socket = %socket_path.display(), "voiced is ready");

    tokio::pin!(shutdown);
    let mut config = config;
    let result = loop {
        tokio::select! {
            result = &mut server => break result,
            () = &mut shutdown => {
                info!("shutting down");
                notify_systemd(&[sd_notify::NotifyState::Stopping]);
                stop.cancel();
                break server.await;
            }
            Some(()) = reload.requests.next() => {
                config = reload_config(config, &reload, &settings, &hub);
            }
        }
    };
    // Decide, tell, wait: every task sees the cancellation and finishes its goodbye.
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    drop(socket);
    info!("stopped");
    result.map_err(DaemonError::from)
}

/// Re-reads the config and applies what can change live. A config that does not
/// read is refused and the current one stays. Calls in progress are not touched:
/// new audio defaults apply to calls that start afterwards.
fn reload_config<R>(
    current: Config,
    reload: &Reload<R>,
    settings: &watch::Sender<LiveSettings>,
    hub: &EventHub,
) -> Config {
    let monotonic = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| i128::from(t.tv_sec()) * 1_000_000 + i128::from(t.tv_nsec()) / 1_000)
        .unwrap_or_default();
    notify_systemd(&[sd_notify::NotifyState::Reloading, sd_notify::NotifyState::MonotonicUsec(monotonic)]);
    let applied = match reload.source.load() {
        Err(error) => {
            error!(%error, "config reload refused; the current config stays in force");
            current
        }
        Ok((new, _)) => {
            let plan = ReloadPlan::between(&current, &new);
            for key in &plan.needs_restart {
                warn!(key, "this setting changed in the config file; restart voiced to apply it");
            }
            if let Some(level) = &plan.log_level {
                (reload.set_log_level)(level);
            }
            settings.send_if_modified(|live| {
                let new = LiveSettings::of(&plan.applied);
                let changed = *live != new;
                *live = new;
                changed
            });
            if let Some((input, output)) = plan.audio.clone() {
                hub.publish(Change::AudioDefaults { input, output });
            }
            info!(changed = !plan.is_empty(), "config reloaded");
            plan.applied
        }
    };
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    applied
}

/// Says at start what calls will use where a sound card was asked for and there
/// is none.
async fn log_audio_fallbacks(config: &Config) {
    use voicelink_core::audio_spec::{InputSpec, OutputSpec};
    let wants_input = config.audio.input == InputSpec::Default;
    let wants_output = config.audio.output == OutputSpec::Default;
    if !wants_input && !wants_output {
        return;
    }
    let devices = tokio::task::spawn_blocking(crate::audio::device::list).await.unwrap_or_default();
    let has = |list: &[crate::audio::device::DeviceInfo]| list.iter().any(|d| d.is_default) || !list.is_empty();
    if wants_input && !has(&devices.inputs) {
        warn!("no capture device found: calls will send silence (set --audio-input tone:HZ, file:PATH.wav or echo)");
    }
    if wants_output && !has(&devices.outputs) {
        warn!("no playback device found: calls will discard what they hear (set --audio-output file:PATH.wav)");
    }
}

fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(error) = sd_notify::notify(state) {
        warn!(%error, "cannot notify systemd");
    }
}

/// Reads the TCP API token, creating a random one (mode 0600) on first use.
fn load_or_create_token(path: &Path) -> Result<String, DaemonError> {
    let error = |action| move |source| DaemonError::Token { action, path: path.to_owned(), source };
    match fs::read_to_string(path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_owned()),
        Ok(_) => {
            return Err(error("use")(io::Error::new(
                io::ErrorKind::InvalidData,
                "the file is empty; delete it to get a new token",
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(error("read")(e)),
    }
    let token = data_encoding::HEXLOWER.encode(&rand::random::<[u8; 32]>());
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(error("create the folder of"))?;
    }
    let mut file =
        fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(error("create"))?;
    file.write_all(format!("{token}\n").as_bytes()).map_err(error("write"))?;
    info!(path = %path.display(), "created a token for the TCP control API");
    Ok(token)
}
