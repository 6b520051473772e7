//! Signaling connections: WebSocket over mutual TLS on TCP, one connection per
//! call. Messages are checked by `wire::decode` (size cap, version), limited in
//! rate, and kept alive with WebSocket pings so a dead peer is noticed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use voicelink_core::vocab::DeviceId;
use voicelink_core::wire::{self, Decoded, MAX_MESSAGE_BYTES, Message, WireError};

use super::tls;
use crate::identity::Identity;

/// How long dialing one address (TCP, TLS, WebSocket) may take. Under heavy loss a
/// SYN alone may be retransmitted at 1 s and 3 s: at 20 % loss each way, 1 dial in
/// 4 ran out of a 5 s budget in the end-to-end test.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dial waits on one address before also trying the next.
const NEXT_ADDRESS_AFTER: Duration = Duration::from_millis(250);
/// How long a dial whose every address is still connecting waits before it
/// also starts afresh on the first one: a lost SYN is sent again only after
/// 1, 3 and 7 s, so at 20 % loss each way about 1 dial in 30 took longer than
/// [`CONNECT_TIMEOUT`] (seen in the heavy-loss test), where a fresh attempt
/// sends its SYN at once.
const FRESH_ATTEMPT_AFTER: Duration = Duration::from_secs(2);
/// Fresh attempts a dial starts at most.
const FRESH_ATTEMPTS: usize = 3;
/// How long a polite close waits for the peer's close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages per second a peer may send on average, and in a burst.
const RATE_PER_SECOND: f64 = 50.0;
const RATE_BURST: f64 = 200.0;

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// Why a connection could not be made or was lost.
#[derive(Debug, thiserror::Error)]
pub enum SignalingError {
    /// TCP connect failed or timed out.
    #[error("cannot reach {address}: {reason}")]
    Unreachable {
        /// Where.
        address: String,
        /// Why.
        reason: String,
    },
    /// The peer is not the device we meant to call.
    #[error("{address} presented device {presented}, not {expected}: refusing it")]
    IdentityMismatch {
        /// Where.
        address: String,
        /// The ID we wanted.
        expected: DeviceId,
        /// The ID it has.
        presented: DeviceId,
    },
    /// TLS or WebSocket negotiation failed.
    #[error("secure handshake with {address} failed: {reason}")]
    Handshake {
        /// Where.
        address: String,
        /// Why.
        reason: String,
    },
    /// The peer broke the protocol.
    #[error("the peer sent an invalid message: {0}")]
    Invalid(#[from] WireError),
    /// The peer sent more than the rate limit allows.
    #[error("the peer sent messages faster than allowed")]
    RateLimited,
    /// The connection failed.
    #[error("the signaling connection failed: {0}")]
    Io(String),
}

/// TLS settings for both directions, made once from the identity.
#[derive(Clone)]
pub struct Endpoint {
    identity: Arc<Identity>,
    acceptor: TlsAcceptor,
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE_BYTES)).max_frame_size(Some(MAX_MESSAGE_BYTES))
}

impl Endpoint {
    /// Prepares TLS with this device's certificate.
    pub fn new(identity: Arc<Identity>) -> Result<Self, tls::TlsSetupError> {
        let acceptor = TlsAcceptor::from(tls::server_config(&identity)?);
        Ok(Endpoint { identity, acceptor })
    }

    /// Completes an incoming connection: TLS (the caller's certificate names it),
    /// then the WebSocket upgrade. The listener bounds how long it may take.
    pub async fn accept(&self, tcp: TcpStream, from: SocketAddr) -> Result<Connection, SignalingError> {
        let address = from.to_string();
        let handshake = async {
            let tls = self.acceptor.accept(tcp).await.map_err(|e| handshake_error(&address, e))?;
            let peer = tls::peer_device(tls.get_ref().1.peer_certificates()).ok_or_else(|| {
                SignalingError::Handshake { address: address.clone(), reason: "no client certificate".into() }
            })?;
            let ws = tokio_tungstenite::accept_async_with_config(TlsStream::Server(tls), Some(ws_config()))
                .await
                .map_err(|e| handshake_error(&address, e))?;
            Ok(Connection::new(ws, peer))
        };
        handshake.await
    }

    /// Connects to a peer at any of `addresses` and checks that it is
    /// `expected`. The addresses are tried in order but not one after another:
    /// each next one starts when the one before fails or after
    /// [`NEXT_ADDRESS_AFTER`] (as RFC 8305 does), and the first that proves to
    /// be `expected` wins. So an address that hangs, or one a neighbour planted
    /// by mDNS (which is not signed), costs a fraction of a second, not the call.
    /// Once every address is being tried, a dial still connecting after
    /// [`FRESH_ATTEMPT_AFTER`] also starts afresh on the first address.
    pub async fn connect(
        &self,
        addresses: &[SocketAddr],
        expected: Option<DeviceId>,
    ) -> Result<Connection, SignalingError> {
        let mut waiting = addresses.iter().copied();
        let mut attempts = futures::stream::FuturesUnordered::new();
        let mut failures = Vec::new();
        let mut fresh = 0;
        attempts.extend(waiting.next().map(|address| self.connect_one(address, expected)));
        while !attempts.is_empty() {
            let pause = if waiting.len() > 0 { NEXT_ADDRESS_AFTER } else { FRESH_ATTEMPT_AFTER };
            let start = tokio::select! {
                done = attempts.next() => match done {
                    Some(Ok(connection)) => return Ok(connection),
                    Some(Err(error)) => {
                        failures.push(error);
                        waiting.next()
                    }
                    None => None,
                },
                () = tokio::time::sleep(pause), if waiting.len() > 0 || fresh < FRESH_ATTEMPTS => {
                    waiting.next().or_else(|| {
                        fresh += 1;
                        addresses.first().copied()
                    })
                }
            };
            attempts.extend(start.map(|address| self.connect_one(address, expected)));
        }
        // Say the peer is another device if any address said so; else the last failure.
        let mismatch = failures.iter().position(|e| matches!(e, SignalingError::IdentityMismatch { .. }));
        Err(match mismatch {
            Some(at) => failures.swap_remove(at),
            None => failures
                .pop()
                .unwrap_or(SignalingError::Unreachable { address: "the peer".into(), reason: "no address".into() }),
        })
    }

    async fn connect_one(&self, address: SocketAddr, expected: Option<DeviceId>) -> Result<Connection, SignalingError> {
        let text = address.to_string();
        let attempt = async {
            let tcp = TcpStream::connect(address)
                .await
                .map_err(|e| SignalingError::Unreachable { address: text.clone(), reason: e.to_string() })?;
            let _ = tcp.set_nodelay(true);
            let (config, seen) = tls::client_config(&self.identity, expected)
                .map_err(|e| SignalingError::Handshake { address: text.clone(), reason: e.to_string() })?;
            let tls = match TlsConnector::from(config).connect(tls::server_name(), tcp).await {
                Ok(tls) => tls,
                Err(error) => {
                    let presented = seen.lock().ok().and_then(|s| *s);
                    return Err(match (expected, presented) {
                        (Some(expected), Some(presented)) if expected != presented => {
                            SignalingError::IdentityMismatch { address: text.clone(), expected, presented }
                        }
                        _ => handshake_error(&text, error),
                    });
                }
            };
            let peer = tls::peer_device(tls.get_ref().1.peer_certificates())
                .ok_or_else(|| SignalingError::Handshake { address: text.clone(), reason: "no certificate".into() })?;
            let url = format!("ws://{text}/voicelink");
            let (ws, _) = tokio_tungstenite::client_async_with_config(url, TlsStream::Client(tls), Some(ws_config()))
                .await
                .map_err(|e| handshake_error(&text, e))?;
            Ok(Connection::new(ws, peer))
        };
        tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(SignalingError::Unreachable { address: text.clone(), reason: "timed out".into() }))
    }
}

fn handshake_error(address: &str, error: impl std::fmt::Display) -> SignalingError {
    SignalingError::Handshake { address: address.to_owned(), reason: error.to_string() }
}

/// A token bucket: the peer's message budget.
#[derive(Debug)]
struct RateLimit {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    fn allow(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * RATE_PER_SECOND;
        self.tokens = (self.tokens + refill).min(RATE_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// An established, authenticated signaling connection.
pub struct Connection {
    ws: Ws,
    /// The peer's device ID, from its certificate.
    pub peer: DeviceId,
    rate: RateLimit,
}

impl Connection {
    fn new(ws: Ws, peer: DeviceId) -> Self {
        Connection { ws, peer, rate: RateLimit { tokens: RATE_BURST, at: crate::clock::now() } }
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &Message) -> Result<(), SignalingError> {
        self.ws.send(WsMessage::text(message.encode())).await.map_err(|e| SignalingError::Io(e.to_string()))
    }

    /// Sends a WebSocket ping (keepalive; the peer's pong counts as traffic).
    pub async fn ping(&mut self) -> Result<(), SignalingError> {
        self.ws.send(WsMessage::Ping(Default::default())).await.map_err(|e| SignalingError::Io(e.to_string()))
    }

    /// The next message; `Ok(None)` when the peer closed the connection. Control
    /// frames are answered and skipped; an unknown message type is returned as
    /// such for the caller to log and ignore. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Decoded>, SignalingError> {
        loop {
            let Some(frame) = self.ws.next().await else { return Ok(None) };
            let frame = match frame {
                Ok(frame) => frame,
                // The peer went away without a goodbye (killed, crashed): that is
                // the connection closing, not a protocol error.
                Err(error) if ended_abruptly(&error) => return Ok(None),
                Err(error) => return Err(SignalingError::Io(error.to_string())),
            };
            let bytes = match frame {
                WsMessage::Text(text) => text.as_bytes().to_vec(),
                WsMessage::Binary(bytes) => bytes.to_vec(),
                WsMessage::Close(_) => return Ok(None),
                WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => continue,
            };
            if !self.rate.allow(crate::clock::now()) {
                return Err(SignalingError::RateLimited);
            }
            return Ok(Some(wire::decode(&bytes)?));
        }
    }

    /// Tells the peer what was wrong, then closes.
    pub async fn refuse(mut self, call_id: wire::CallId, reason: &str) {
        let _ = self.send(&Message::new(call_id, wire::Body::Error { message: reason.to_owned() })).await;
        self.close().await;
    }

    /// Closes the connection politely: sends the WebSocket close and reads until
    /// the peer closes too. Closing the socket at once could make the peer's
    /// kernel answer its next write with a reset, which discards the last
    /// messages we sent (a "busy" would be lost).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let drain = async { while let Some(Ok(_)) = self.ws.next().await {} };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
    }
}

/// Whether a WebSocket error only says the connection ended without a closing
/// handshake: a reset, an EOF without TLS close_notify, or a closed socket.
fn ended_abruptly(error: &tokio_tungstenite::tungstenite::Error) -> bool {
    use std::io::ErrorKind;
    use tokio_tungstenite::tungstenite::Error;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match error {
        Error::ConnectionClosed | Error::AlreadyClosed => true,
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => true,
        Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::UnexpectedEof
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
        ),
        _ => false,
    }
}
