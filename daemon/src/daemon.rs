//! The daemon's life: open the control socket, load the identity, start the
//! tasks, tell systemd we are ready, and on shutdown decide, tell, wait.

use std::fs;
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::api::{self, Backends, ControlService, ControlSocket, DaemonInfo, TcpApi};
use crate::audio::device_watch::{self, Devices};
use crate::call::registry::Registry;
use crate::call::task::CallContext;
use crate::discovery::{Discovery, OwnAdvert};
use crate::events::{Change, EventHub};
use crate::identity::{Identity, IdentityError};
use crate::media::session::CodecSettings;
use crate::name_claims;
use crate::service_manager;
use crate::settings::{Reload, Settings};
use crate::signaling::SignalingListener;
use crate::signaling::transport::Endpoint;
use crate::stats::StatsBoard;
use crate::store::Store;
use voicelink_core::call_machine::Timeouts;
use voicelink_core::config::{Config, TcpListen};
use voicelink_core::reload::LiveSettings;

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

/// Runs the daemon until `shutdown` completes, then stops cleanly: the mDNS
/// goodbye is sent, open API streams end, and the socket is removed.
pub async fn run<R>(config: Config, reload: Reload<R>, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError>
where
    R: Stream<Item = ()> + Unpin + Send + 'static,
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
    // Opening checks the file (quick_check): not on the runtime's threads.
    let store = {
        let (data_dir, retention, hub) = (data_dir.clone(), config.history.retention(), hub.clone());
        tokio::task::spawn_blocking(move || Store::open(&data_dir, retention, hub))
            .await
            .unwrap_or_else(|_| Store::off("the history database could not be opened (its opener panicked)"))
    };
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
        Discovery::start(own, &identity)
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
    tasks.spawn(name_claims::run(hub.clone(), store.contacts(), stop.clone()));
    let (devices, watching) = device_watch::start(stop.clone()).await;
    tasks.spawn(watching);
    tasks.spawn(announce_devices(devices.clone(), hub.clone()));
    let (registry_tx, registry_rx) = mpsc::channel(64);
    let (inbox_tx, inbox_rx) = mpsc::channel(64);
    let mut context = CallContext {
        identity: identity.clone(),
        endpoint: endpoint.clone(),
        hub: hub.clone(),
        stats: stats.clone(),
        own_name: String::new(),
        timeouts: Timeouts::default(),
        codec: CodecSettings::default(),
        loop_files: false,
        recordings_dir: data_dir.join("recordings"),
        store: store.clone(),
        inbox: inbox_tx.clone(),
        shutdown: stop.clone(),
        settings: settings_rx.clone(),
        ringing: settings.borrow().ringing.clone(),
        devices: devices.clone(),
    };
    context.apply(&settings.borrow());
    let registry = Registry::new(context, settings_rx.clone());
    tasks.spawn(registry.run(registry_rx, inbox_rx));
    tasks.spawn(signaling.run(endpoint.clone(), inbox_tx, stop.clone()));

    log_audio_fallbacks(&config, &devices.borrow());
    let (settings_tx, settings_rx_commands) = mpsc::channel(8);
    let config_task = Settings::new(config.clone(), reload, settings.clone(), hub.clone());
    tasks.spawn(config_task.run(settings_rx_commands, stop.clone()));
    let info = DaemonInfo { device_id: identity.device_id, started, signaling_address, discovery_enabled };
    let service = ControlService::new(
        info,
        Backends {
            registry: registry_tx,
            config: settings_tx,
            store: store.clone(),
            settings: settings.clone(),
            hub: hub.clone(),
            stats,
            devices: devices.clone(),
        },
        stop.clone(),
    );
    let server = api::serve(unix_listener, tcp, service, stop.clone());
    tokio::pin!(server);

    service_manager::notify(&[sd_notify::NotifyState::Ready]);
    info!(name = %config.name, signaling = %signaling_address, socket = %socket_path.display(), "voiced is ready");

    let result = tokio::select! {
        result = &mut server => result,
        () = shutdown => {
            info!("shutting down");
            service_manager::notify(&[sd_notify::NotifyState::Stopping]);
            stop.cancel();
            server.await
        }
    };
    // Decide, tell, wait: every task sees the cancellation and finishes its goodbye.
    stop.cancel();
    endpoint.stop_keeping_warm();
    tasks.close();
    tasks.wait().await;
    // The last calls' history rows are in the file before the daemon exits.
    store.flush().await;
    drop(socket);
    info!("stopped");
    result.map_err(DaemonError::from)
}

/// Publishes every change of the sound devices (the first list is no change).
async fn announce_devices(mut devices: Devices, hub: EventHub) {
    while devices.changed().await.is_ok() {
        let list = devices.borrow_and_update().clone();
        info!(inputs = list.inputs.len(), outputs = list.outputs.len(), "the sound devices changed");
        hub.publish(Change::AudioDevices(list));
    }
}

/// Says at start what calls will use where a sound card was asked for and there
/// is none.
fn log_audio_fallbacks(config: &Config, devices: &crate::audio::device::DeviceList) {
    use voicelink_core::audio_spec::{InputSpec, OutputSpec};
    let wants_input = config.audio.input == InputSpec::Default;
    let wants_output = config.audio.output == OutputSpec::Default;
    if !wants_input && !wants_output {
        return;
    }
    let has = |list: &[crate::audio::device::DeviceInfo]| list.iter().any(|d| d.is_default) || !list.is_empty();
    if wants_input && !has(&devices.inputs) {
        warn!(
            "no capture device found: calls will send silence until one is plugged in (or set --audio-input tone:HZ, file:PATH.wav or echo)"
        );
    }
    if wants_output && !has(&devices.outputs) {
        warn!(
            "no playback device found: calls will discard what they hear until one is plugged in (or set --audio-output file:PATH.wav)"
        );
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
