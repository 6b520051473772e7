//! Daemon-to-daemon signaling: the listener mDNS advertises, the transport
//! (WebSocket over mutual TLS). The wire format is pure and lives in
//! `voicelink_core::wire`; docs/PROTOCOL.md specifies it.

pub mod tls;
pub mod transport;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use std::sync::Arc;
use tokio::net::TcpListener;

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use transport::{Connection, Endpoint};
use voicelink_core::config::FrameMs;
use voicelink_core::wire::{Body, CallId, Decoded, Message};

/// A call request that arrived on a new, authenticated signaling connection.
pub struct IncomingRequest {
    /// The authenticated connection.
    pub connection: Connection,
    /// The caller's call ID.
    pub call_id: CallId,
    /// The caller's display name.
    pub caller_name: String,
    /// The caller's frame length, which the call adopts.
    pub frame: Option<Duration>,
}

/// The bound signaling listener.
pub struct SignalingListener {
    listener: TcpListener,
}

impl SignalingListener {
    /// Binds `port` (0: any free port) on every address, IPv6 and IPv4 where the
    /// host has IPv6, else IPv4 only.
    pub async fn bind(port: u16) -> io::Result<Self> {
        let listener = match TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))).await {
            Ok(listener) => listener,
            Err(error) if error.kind() != io::ErrorKind::AddrInUse => {
                debug!(%error, "no IPv6 listener; using IPv4 only");
                TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).await?
            }
            Err(error) => return Err(error),
        };
        Ok(SignalingListener { listener })
    }

    /// Where it is bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts until `shutdown`: each connection is authenticated (mutual TLS)
    /// and its first message must be a call request, which goes to the registry.
    pub async fn run<T>(self, endpoint: Endpoint, requests: mpsc::Sender<T>, shutdown: CancellationToken)
    where
        T: From<IncomingRequest> + Send + 'static,
    {
        // Connections still handshaking hold a permit: a flood of them cannot use
        // up the daemon's file descriptors.
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                permit = handshakes.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, from)) => {
                        let (endpoint, requests) = (endpoint.clone(), requests.clone());
                        tokio::spawn(async move {
                            first_message(endpoint, tcp, from, requests).await;
                            drop(permit);
                        });
                    }
                    Err(error) => {
                        // Out of file descriptors, typically: back off instead of spinning.
                        debug!(%error, "signaling accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
            }
        }
    }
}

/// Connections allowed to be handshaking at once.
const MAX_HANDSHAKES: usize = 32;
/// Pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a new connection may take to say what it wants.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);

async fn first_message<T: From<IncomingRequest>>(
    endpoint: Endpoint,
    tcp: tokio::net::TcpStream,
    from: SocketAddr,
    requests: mpsc::Sender<T>,
) {
    let _ = tcp.set_nodelay(true);
    let mut connection = match endpoint.accept(tcp, from).await {
        Ok(connection) => connection,
        Err(error) => {
            // Also what a caller that found us to be the wrong device causes: it
            // aborts the handshake. Worth a line, not an alarm.
            info!(%from, %error, "a signaling connection did not complete");
            return;
        }
    };
    let first = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, connection.recv()).await;
    match first {
        Ok(Ok(Some(Decoded::Message(Message {
            call_id, body: Body::CallRequest { caller_name, frame_ms }, ..
        })))) => {
            let frame = frame_ms.and_then(FrameMs::of).map(FrameMs::duration);
            let request = IncomingRequest { connection, call_id, caller_name, frame };
            let _ = requests.send(T::from(request)).await;
        }
        Ok(Ok(Some(Decoded::Message(message)))) => {
            connection.refuse(message.call_id, "the first message must be a call_request").await;
        }
        Ok(Err(error)) => {
            debug!(%from, peer = %connection.peer.short(), %error, "refused a malformed first message");
            if let Ok(call_id) = CallId::try_from("unknown".to_owned()) {
                connection.refuse(call_id, &error.to_string()).await;
            }
        }
        _ => connection.close().await,
    }
}
