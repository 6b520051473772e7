//! The voicelink control API.
//!
//! `voiced` serves the `voicelink.v1.Voicelink` gRPC service (see
//! `proto/voicelink/v1/voicelink.proto`) on a Unix domain socket that only its own
//! user can reach. This crate holds the generated Rust types and [`connect`], the
//! one helper every client (voicectl, the tray, tests) uses to reach the daemon.

use std::io;
use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::codegen::InterceptedService;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

/// Generated types and client/server for `voicelink.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("voicelink.v1");

    /// The encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("voicelink_v1_descriptor");
}

/// Whether a failed call or stream means the daemon went away (it stopped,
/// restarted or died) rather than that it refused: `UNAVAILABLE`, which the
/// daemon sends on its streams as it stops, or a failure of the connection
/// itself (a status made on this side from an I/O or HTTP/2 error carries that
/// error as its source; a status the daemon sent carries none).
pub fn daemon_went_away(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable || std::error::Error::source(status).is_some()
}

/// Environment variable that names the daemon's socket for clients.
pub const SOCKET_ENV: &str = "VOICELINK_SOCKET";

/// Metadata key a TCP client sends its token in, as `Bearer <token>`.
pub const AUTHORIZATION_HEADER: &str = "authorization";

/// Where the daemon listens by default (see `voicelink_core::config`).
pub use voicelink_core::config::default_socket_path;

/// How a client reaches the daemon.
#[derive(Debug, Clone)]
pub enum DaemonAddress {
    /// The local Unix domain socket (the normal case).
    Unix(PathBuf),
    /// The optional TCP listener; it requires the daemon's API token.
    Tcp {
        /// `host:port` of the listener.
        address: String,
        /// The token from the daemon's data directory (`api-token`).
        token: String,
    },
}

impl std::fmt::Display for DaemonAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaemonAddress::Unix(path) => write!(f, "{}", path.display()),
            DaemonAddress::Tcp { address, .. } => write!(f, "tcp://{address}"),
        }
    }
}

/// Why a client could not reach the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Nothing listens at the address: the daemon is not running.
    #[error("voiced is not running (nothing is listening on {address})")]
    NotRunning {
        /// Where we looked.
        address: DaemonAddress,
    },
    /// The socket exists but belongs to another user.
    #[error("permission denied on {address}: the daemon belongs to another user")]
    PermissionDenied {
        /// Where we looked.
        address: DaemonAddress,
    },
    /// The token is not valid as a header value.
    #[error("the API token contains characters that cannot be sent (expected printable ASCII)")]
    BadToken,
    /// Any other failure to connect.
    #[error("cannot connect to voiced at {address}: {source}")]
    Other {
        /// Where we looked.
        address: DaemonAddress,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Adds the bearer token to every request on a TCP connection.
#[derive(Clone)]
pub struct TokenInterceptor(Option<AsciiMetadataValue>);

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert(AUTHORIZATION_HEADER, token.clone());
        }
        Ok(request)
    }
}

/// A connected control-API client.
pub type Client = v1::voicelink_client::VoicelinkClient<InterceptedService<Channel, TokenInterceptor>>;

/// Connects to the daemon, telling "not running" and "not yours" apart from other
/// failures so callers can say what to do.
pub async fn connect(address: DaemonAddress) -> Result<Client, ConnectError> {
    let (channel, token) = channel(&address).await?;
    Ok(v1::voicelink_client::VoicelinkClient::with_interceptor(channel, TokenInterceptor(token)))
}

/// A raw channel to the daemon, for other services on the same server (health,
/// reflection), and the token header its requests must carry (TCP only).
pub async fn channel(address: &DaemonAddress) -> Result<(Channel, Option<AsciiMetadataValue>), ConnectError> {
    Ok(match address {
        DaemonAddress::Unix(path) => {
            // Probe once so the error names the cause rather than a transport error.
            if let Err(error) = tokio::net::UnixStream::connect(path).await {
                return Err(classify(address.clone(), error));
            }
            let path = path.clone();
            let connector = tower::service_fn(move |_| {
                let path = path.clone();
                async move { Ok::<_, io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            });
            // The URI is required by the API but unused: the connector decides.
            let channel = Endpoint::from_static("http://voiced.invalid")
                .connect_with_connector(connector)
                .await
                .map_err(|e| ConnectError::Other { address: address.clone(), source: Box::new(e) })?;
            (channel, None)
        }
        DaemonAddress::Tcp { address: host_port, token } => {
            let value = AsciiMetadataValue::try_from(format!("Bearer {token}")).map_err(|_| ConnectError::BadToken)?;
            let endpoint = Endpoint::from_shared(format!("http://{host_port}"))
                .map_err(|e| ConnectError::Other { address: address.clone(), source: Box::new(e) })?;
            let channel = endpoint.connect().await.map_err(|e| {
                match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<io::Error>()) {
                    Some(io) if io.kind() == io::ErrorKind::ConnectionRefused => {
                        ConnectError::NotRunning { address: address.clone() }
                    }
                    _ => ConnectError::Other { address: address.clone(), source: Box::new(e) },
                }
            })?;
            (channel, Some(value))
        }
    })
}

fn classify(address: DaemonAddress, error: io::Error) -> ConnectError {
    match error.kind() {
        // A missing socket, or one left behind by a daemon that died.
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ConnectError::NotRunning { address },
        io::ErrorKind::PermissionDenied => ConnectError::PermissionDenied { address },
        _ => ConnectError::Other { address, source: Box::new(error) },
    }
}
