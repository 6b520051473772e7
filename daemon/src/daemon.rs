//! The daemon's life: open the control socket, load the identity, start the
//! tasks, tell systemd we are ready, and on shutdown decide, tell, wait.

use std::fs;
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::api::{self, ControlService, ControlSocket, DaemonInfo, TcpApi};
use crate::config::{Config, TcpListen};
use crate::discovery::{Discovery, OwnAdvert};
use crate::events::EventHub;
use crate::identity::{Identity, IdentityError};
use crate::signaling::SignalingListener;

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
}

/// Runs the daemon until `shutdown` completes, then stops cleanly: the mDNS
/// goodbye is sent, open API streams end, and the socket is removed.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let started = Instant::now();
    // The socket first: a second daemon must refuse before it advertises anything.
    let socket_path = config.socket();
    let (socket, unix_listener) = ControlSocket::bind(&socket_path)?;

    let data_dir = config.data_dir();
    let (identity, created) = Identity::load_or_create(&data_dir)?;
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
        tasks.spawn(discovery.run(hub.clone(), stop.clone()));
    }
    tasks.spawn(signaling.run(stop.clone()));

    let info = DaemonInfo {
        device_id: identity.device_id,
        display_name: config.name.to_string(),
        started,
        signaling_address,
        audio_input: config.audio.input.clone(),
        audio_output: config.audio.output.clone(),
        discovery_enabled,
    };
    let service = ControlService::new(info, hub, stop.clone());
    let server = api::serve(unix_listener, tcp, service, stop.clone());
    tokio::pin!(server);

    notify_systemd(&[sd_notify::NotifyState::Ready]);
    info!(name = %config.name, signaling = %signaling_address, socket = %socket_path.display(), "voiced is ready");

    let result = tokio::select! {
        result = &mut server => result,
        () = shutdown => {
            info!("shutting down");
            notify_systemd(&[sd_notify::NotifyState::Stopping]);
            stop.cancel();
            server.await
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
