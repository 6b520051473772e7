//! Signaling connections: WebSocket over mutual TLS on TCP, one connection per
//! call. Messages are checked by `wire::decode` (size cap, version), limited in
//! rate, and kept alive with WebSocket pings so a dead peer is noticed. A dial
//! to a device also keeps a warm connection to it for the next call (`warm`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use data_encoding::BASE64URL_NOPAD;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tracing::debug;

#[cfg(target_os = "linux")]
use nix::libc;
#[cfg(target_os = "linux")]
use voicelink_core::config::MAX_RECONNECT_TIMEOUT_SECS;
use voicelink_core::vocab::DeviceId;
use voicelink_core::wire::{self, Decoded, MAX_MESSAGE_BYTES, Message, WireError};

use super::tls;
use super::warm::{Keep, REFRESH_EVERY, WarmConnections};
use crate::clock;
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
/// How long a TCP connect waits for the peer's SYN-ACK before a second connect
/// races it. The kernel sends a lost SYN again only after a second, and at 15 %
/// loss each way about one connect in four loses its SYN or SYN-ACK; on a LAN
/// the answer takes a millisecond, so 250 ms is long past a healthy one (on a
/// path whose round trip is longer, the spare SYN costs nothing but itself).
const SECOND_SYN_AFTER: Duration = Duration::from_millis(250);
/// How long the upgrade on a warm connection may take before the dial goes on
/// afresh: TLS is done, so one round trip is left; a callee that vanished
/// without a FIN or reset would otherwise hold the dial for [`CONNECT_TIMEOUT`].
const WARM_UPGRADE_TIMEOUT: Duration = Duration::from_secs(3);
/// Fresh attempts a dial starts at most.
const FRESH_ATTEMPTS: usize = 3;
/// How long a polite close waits for the peer's close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages per second a peer may send on average, and in a burst.
const RATE_PER_SECOND: f64 = 50.0;
const RATE_BURST: f64 = 200.0;
/// The HTTP header of the WebSocket upgrade that carries the caller's first
/// message (docs/PROTOCOL.md §3), saving the round trip of sending it after.
const CARRIED_HEADER: &str = "voicelink-first-message";
/// The most JSON a caller carries in the upgrade (a group's call request with
/// five names is under 2 KB); anything longer goes as a WebSocket message.
const MAX_CARRIED_BYTES: usize = 8192;

type Ws = WebSocketStream<TlsStream<TcpStream>>;
/// A caller's connection with TLS done, before the WebSocket upgrade.
type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;
/// A callee's connection with TLS done, before the WebSocket upgrade.
pub type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;

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
    warm: Arc<WarmConnections<ClientTls>>,
    /// Stops the keepers of warm connections.
    warm_stop: CancellationToken,
}

/// How one attempt reaches the peer.
enum Route {
    /// A new connection to this address.
    Fresh(SocketAddr),
    /// A parked connection, TLS done.
    Warm(Box<ClientTls>),
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE_BYTES)).max_frame_size(Some(MAX_MESSAGE_BYTES))
}

impl Endpoint {
    /// Prepares TLS with this device's certificate.
    pub fn new(identity: Arc<Identity>) -> Result<Self, tls::TlsSetupError> {
        let acceptor = TlsAcceptor::from(tls::server_config(&identity)?);
        Ok(Endpoint { identity, acceptor, warm: Arc::default(), warm_stop: CancellationToken::new() })
    }

    /// Completes an incoming connection: TLS (the caller's certificate names it),
    /// then the WebSocket upgrade. (The listener calls the two halves itself, to
    /// give each its own deadline.)
    #[cfg(test)]
    pub async fn accept(&self, tcp: TcpStream, from: SocketAddr) -> Result<Connection, SignalingError> {
        let address = from.to_string();
        upgrade(self.accept_tls(tcp, &address).await?, &address).await
    }

    /// The TLS half of [`Endpoint::accept`]; [`upgrade`] is the other.
    pub async fn accept_tls(&self, tcp: TcpStream, address: &str) -> Result<ServerTls, SignalingError> {
        tune_signaling_socket(&tcp);
        self.acceptor.accept(tcp).await.map_err(|e| handshake_error(address, e))
    }

    /// Closes the warm connections and stops keeping any (at shutdown).
    pub fn stop_keeping_warm(&self) {
        self.warm_stop.cancel();
        drop(self.warm.clear());
    }

    /// Connects to a peer at any of `addresses` and checks that it is
    /// `expected`. The addresses are tried in order but not one after another:
    /// each next one starts when the one before fails or after
    /// [`NEXT_ADDRESS_AFTER`] (as RFC 8305 does), and the first that proves to
    /// be `expected` wins. So an address that hangs, or one a neighbour planted
    /// by mDNS (which is not signed), costs a fraction of a second, not the call.
    /// Once every address is being tried, a dial still connecting after
    /// [`FRESH_ATTEMPT_AFTER`] also starts afresh on the first address.
    ///
    /// `first`, the call request, rides in the first attempt's WebSocket
    /// upgrade where it fits; a callee that confirms it has it is not sent it
    /// again. Once that upgrade is out, the callee may be ringing on that
    /// connection: no attempt starts after it, and one that connects meanwhile
    /// is kept in reserve, used only if the carrying attempt fails.
    ///
    /// With `expected` known, the carrying attempt is the parked connection to
    /// it where one is warm, and a successful dial keeps one warm for the next.
    pub async fn connect(
        &self,
        addresses: &[SocketAddr],
        expected: Option<DeviceId>,
        first: Option<&Message>,
    ) -> Result<Connection, SignalingError> {
        let warm = expected
            .and_then(|device| self.warm.take(device, clock::now()))
            // Not if the device has moved since.
            .filter(|tls| tls.get_ref().0.peer_addr().is_ok_and(|at| addresses.contains(&at)))
            .and_then(|mut tls| still_parked(&mut tls).then_some(tls));
        let connection = self.dial(addresses, expected, first, warm).await?;
        if let Some(device) = expected
            && !self.warm_stop.is_cancelled()
        {
            // The keeper tries first the address this dial reached.
            let mut order = addresses.to_vec();
            if let Some(at) = connection.remote().and_then(|won| order.iter().position(|a| *a == won)) {
                order[..=at].rotate_right(1);
            }
            if self.warm.dialed(device, &order, clock::now()) {
                tokio::spawn(self.clone().keep_warm(device));
            }
        }
        Ok(connection)
    }

    async fn dial(
        &self,
        addresses: &[SocketAddr],
        expected: Option<DeviceId>,
        first: Option<&Message>,
        warm: Option<ClientTls>,
    ) -> Result<Connection, SignalingError> {
        let carried = first.map(Message::encode).filter(|text| text.len() <= MAX_CARRIED_BYTES);
        let upgrading = AtomicBool::new(false);
        let start = |route, carrier: bool| {
            let carry = carried.as_deref().filter(|_| carrier).map(|text| (text, &upgrading));
            async move { (carrier, self.connect_one(route, expected, carry).await) }
        };
        let mut waiting = addresses.iter().copied();
        let mut attempts = futures::stream::FuturesUnordered::new();
        let mut failures = Vec::new();
        let mut fresh = 0;
        let mut reserve = None;
        // After the carrier fails, the next attempt carries in its stead.
        let mut carrier_next = false;
        let first_route = warm.map(|tls| Route::Warm(Box::new(tls))).or_else(|| waiting.next().map(Route::Fresh));
        attempts.extend(first_route.map(|route| start(route, true)));
        // Read at each decision, after the poll that brought it: polling the
        // attempts also runs the carrier, which may have sent its upgrade in
        // the same poll that completed another attempt. Cleared if it fails.
        let carried_out = || upgrading.load(Ordering::Relaxed);
        while !attempts.is_empty() {
            let pause = if waiting.len() > 0 { NEXT_ADDRESS_AFTER } else { FRESH_ATTEMPT_AFTER };
            let next = tokio::select! {
                done = attempts.next() => match done {
                    Some((true, Ok(connection))) => return Ok(connection),
                    Some((true, Err(error))) => {
                        upgrading.store(false, Ordering::Relaxed);
                        if let Some(connection) = reserve.take() {
                            return Ok(connection);
                        }
                        failures.push(error);
                        carrier_next = true;
                        waiting.next()
                    }
                    Some((false, Ok(connection))) if carried_out() => {
                        reserve.get_or_insert(connection);
                        None
                    }
                    Some((false, Ok(connection))) => return Ok(connection),
                    Some((false, Err(error))) => {
                        failures.push(error);
                        if carried_out() { None } else { waiting.next() }
                    }
                    None => None,
                },
                // A new attempt started as the carrier's upgrade goes out can
                // only end up in reserve: harmless.
                () = tokio::time::sleep(pause), if !carried_out() && (waiting.len() > 0 || fresh < FRESH_ATTEMPTS) => {
                    waiting.next().or_else(|| {
                        fresh += 1;
                        addresses.first().copied()
                    })
                }
            };
            attempts.extend(next.map(|address| start(Route::Fresh(address), std::mem::take(&mut carrier_next))));
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

    /// One attempt; `carry` is the first message to carry in the upgrade, and
    /// the flag set as the upgrade goes out.
    async fn connect_one(
        &self,
        route: Route,
        expected: Option<DeviceId>,
        carry: Option<(&str, &AtomicBool)>,
    ) -> Result<Connection, SignalingError> {
        let (text, limit) = match &route {
            Route::Fresh(address) => (address.to_string(), CONNECT_TIMEOUT),
            Route::Warm(tls) => (
                tls.get_ref().0.peer_addr().map_or_else(|_| "the peer".to_owned(), |a| a.to_string()),
                WARM_UPGRADE_TIMEOUT,
            ),
        };
        let attempt = async {
            let tls = match route {
                Route::Fresh(address) => self.secure(address, &text, expected).await?,
                Route::Warm(tls) => *tls,
            };
            let peer = tls::peer_device(tls.get_ref().1.peer_certificates())
                .ok_or_else(|| SignalingError::Handshake { address: text.clone(), reason: "no certificate".into() })?;
            let mut request =
                format!("ws://{text}/voicelink").into_client_request().map_err(|e| handshake_error(&text, e))?;
            let mut carried = None;
            if let Some((first, upgrading)) = carry
                && let Ok(value) = HeaderValue::from_str(&BASE64URL_NOPAD.encode(first.as_bytes()))
            {
                request.headers_mut().insert(CARRIED_HEADER, value);
                upgrading.store(true, Ordering::Relaxed);
                carried = Some(first);
            }
            let (ws, response) =
                tokio_tungstenite::client_async_with_config(request, TlsStream::Client(tls), Some(ws_config()))
                    .await
                    .map_err(|e| handshake_error(&text, e))?;
            let mut connection = Connection::new(ws, peer);
            if response.headers().get(CARRIED_HEADER).is_some_and(|value| value == "accepted") {
                connection.sent_first = carried.map(str::to_owned);
            }
            Ok(connection)
        };
        tokio::time::timeout(limit, attempt)
            .await
            .unwrap_or_else(|_| Err(SignalingError::Unreachable { address: text.clone(), reason: "timed out".into() }))
    }

    /// TCP and TLS to `address` (named `text` in errors), checking that the
    /// peer is `expected`.
    async fn secure(
        &self,
        address: SocketAddr,
        text: &str,
        expected: Option<DeviceId>,
    ) -> Result<ClientTls, SignalingError> {
        let tcp = connect_tcp(address)
            .await
            .map_err(|e| SignalingError::Unreachable { address: text.to_owned(), reason: e.to_string() })?;
        tune_signaling_socket(&tcp);
        let (config, seen) = tls::client_config(&self.identity, expected).map_err(|e| handshake_error(text, e))?;
        TlsConnector::from(config).connect(tls::server_name(), tcp).await.map_err(|error| {
            let presented = seen.lock().ok().and_then(|s| *s);
            match (expected, presented) {
                (Some(expected), Some(presented)) if expected != presented => {
                    SignalingError::IdentityMismatch { address: text.to_owned(), expected, presented }
                }
                _ => handshake_error(text, error),
            }
        })
    }

    /// Keeps a parked connection to `device` until it is not dialed for
    /// [`super::warm::KEEP_WARM_FOR`]: parks one, and parks another when a
    /// dial takes it or every [`REFRESH_EVERY`].
    async fn keep_warm(self, device: DeviceId) {
        loop {
            let (taken, until) = match self.warm.next_step(device, clock::now()) {
                Keep::Stop => break,
                Keep::Wait { until, taken } => (taken, until),
                Keep::Connect { addresses, taken } => {
                    tokio::select! {
                        () = self.warm_stop.cancelled() => break,
                        parked = self.secure_any(device, addresses) => {
                            if let Some(tls) = parked {
                                drop(self.warm.park(device, tls, clock::now()));
                            }
                        }
                    }
                    // Also after a failure: the next try waits as long, unless a dial wakes it.
                    (taken, clock::now() + REFRESH_EVERY)
                }
            };
            tokio::select! {
                () = self.warm_stop.cancelled() => break,
                () = taken.notified() => {}
                () = clock::sleep_until(Some(until)) => {}
            }
        }
    }

    /// TCP and TLS to `device` at the first of `addresses` that answers, one
    /// after another (a keeper is in no hurry).
    async fn secure_any(&self, device: DeviceId, addresses: Vec<SocketAddr>) -> Option<ClientTls> {
        for address in addresses {
            let text = address.to_string();
            match tokio::time::timeout(CONNECT_TIMEOUT, self.secure(address, &text, Some(device))).await {
                Ok(Ok(tls)) => return Some(tls),
                Ok(Err(error)) => debug!(peer = %device.short(), %error, "no warm connection"),
                Err(_) => debug!(peer = %device.short(), address = %text, "no warm connection: timed out"),
            }
        }
        None
    }
}

/// Whether a parked connection is still open: the callee has closed it (or
/// sent something, which it must not before the upgrade) if a read does not
/// wait. The read also takes in the TLS session tickets, which are no data.
fn still_parked(tls: &mut ClientTls) -> bool {
    let mut byte = [0u8; 1];
    tls.read(&mut byte).now_or_never().is_none()
}

/// A TCP connection to `address`: the first of two connects to complete, the
/// second started [`SECOND_SYN_AFTER`] after the first if that one has not
/// completed by then; the other is dropped (the peer, if it accepted it, sees
/// a connection close before TLS). The last error if both fail.
async fn connect_tcp(address: SocketAddr) -> std::io::Result<TcpStream> {
    let first = connect_once(address);
    tokio::pin!(first);
    tokio::select! {
        done = &mut first => return done,
        () = tokio::time::sleep(SECOND_SYN_AFTER) => {}
    }
    let second = connect_once(address);
    tokio::pin!(second);
    futures::future::select_ok([first, second]).await.map(|(stream, _)| stream)
}

/// One TCP connect, its retransmission floor set before the SYN.
async fn connect_once(address: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if address.is_ipv6() { TcpSocket::new_v6() } else { TcpSocket::new_v4() }?;
    floor_retransmissions(socket2::SockRef::from(&socket));
    socket.connect(address).await
}

/// The longest TCP waits between two retransmissions on a signaling
/// connection. Linux doubles the wait up to 120 s, so after an outage of 30 s
/// a message queued in it (a keepalive, the `end` of a call hung up just after)
/// waited up to 25 s more, the call's media long back: one retransmission a
/// second at most costs nothing and resumes signaling within a second of the
/// link.
#[cfg(target_os = "linux")]
const RETRANSMIT_AT_LEAST_EVERY: Duration = Duration::from_secs(1);

/// How long sent signaling may stay unacknowledged before TCP gives the
/// connection up. With retransmissions capped, Linux's count-based limit
/// (`tcp_retries2`) would come about 14 s into an outage; this leaves the
/// call's own reconnect timer to decide first: it starts when the media goes
/// silent (2 s into an outage), TCP's clock no earlier than the outage.
#[cfg(target_os = "linux")]
const UNACKNOWLEDGED_AT_MOST: Duration = Duration::from_secs(MAX_RECONNECT_TIMEOUT_SECS as u64 + 30);

/// The shortest TCP waits before resending a lost segment (beyond the
/// measured round trip and its variation). Linux's floor is 200 ms: a
/// signaling message lost once (an offer, an answer, a candidate) cost a fifth
/// of a second, and at 15 % loss most call setups lose one of their six or so
/// segments. The floor also bounds the receiver's delayed acknowledgement
/// (just below it), so two voiced do not take a late ack for a loss. It must
/// be set before the SYN: the first round-trip sample sets the variation to
/// the floor then, and it decays only by a quarter a round trip (set later,
/// the first messages' retransmissions still waited about 200 ms).
#[cfg(target_os = "linux")]
const RETRANSMIT_NO_SOONER_THAN: Duration = Duration::from_millis(20);

/// Linux's `TCP_RTO_MAX_MS` (since 6.15; the `libc` crate lacks it). The cap
/// suits a LAN: on a path whose round trip exceeds a second every
/// retransmission would come early.
#[cfg(target_os = "linux")]
const TCP_RTO_MAX_MS: libc::c_int = 44;
/// Linux's `TCP_RTO_MIN_US` (since 6.15; the `libc` crate lacks it).
#[cfg(target_os = "linux")]
const TCP_RTO_MIN_US: libc::c_int = 45;

/// Socket options for a signaling connection, either side: no Nagle delay,
/// and retransmissions that resume soon after an outage. A kernel that lacks
/// an option keeps its default backoff (logged at debug). The cap goes only
/// with the user timeout: alone, it would end connections 14 s into an outage.
fn tune_signaling_socket(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    #[cfg(target_os = "linux")]
    {
        let socket = socket2::SockRef::from(tcp);
        let capped = socket
            .set_tcp_user_timeout(Some(UNACKNOWLEDGED_AT_MOST))
            .and_then(|()| set_tcp_option(&socket, TCP_RTO_MAX_MS, RETRANSMIT_AT_LEAST_EVERY.as_millis()));
        if let Err(error) = capped {
            debug!(%error, "TCP retransmissions not capped (Linux 6.15 can): signaling may resume seconds after an outage");
        }
    }
}

/// Lowers TCP's retransmission floor on a socket not yet connected, or on a
/// listener (the connections it accepts inherit it). A kernel that lacks the
/// option keeps 200 ms (logged at debug).
pub(super) fn floor_retransmissions(socket: socket2::SockRef<'_>) {
    #[cfg(target_os = "linux")]
    if let Err(error) = set_tcp_option(&socket, TCP_RTO_MIN_US, RETRANSMIT_NO_SOONER_THAN.as_micros()) {
        debug!(%error, "TCP's retransmission floor left at 200 ms (Linux 6.15 can lower it): a lost message may cost a fifth of a second");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

/// Sets an integer TCP option the `libc` crate does not name.
#[cfg(target_os = "linux")]
fn set_tcp_option(socket: &socket2::SockRef<'_>, option: libc::c_int, value: u128) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid open socket, and a pointer to a c_int with its size, as
    // these options take.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            option,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// The callee's WebSocket upgrade, taking the caller's first message where the
/// upgrade carries it.
pub async fn upgrade(tls: ServerTls, address: &str) -> Result<Connection, SignalingError> {
    let peer = tls::peer_device(tls.get_ref().1.peer_certificates()).ok_or_else(|| SignalingError::Handshake {
        address: address.to_owned(),
        reason: "no client certificate".into(),
    })?;
    let mut carried = None;
    // The error type is the library's (an HTTP response), not ours.
    #[allow(clippy::result_large_err)]
    let take_carried = |request: &Request, mut response: Response| {
        // A header we cannot read is left alone: unconfirmed, the caller
        // sends its first message as a WebSocket message.
        carried = request
            .headers()
            .get(CARRIED_HEADER)
            // At most the encoding of MAX_CARRIED_BYTES: decoded, no more.
            .filter(|value| value.len() <= BASE64URL_NOPAD.encode_len(MAX_CARRIED_BYTES))
            .and_then(|value| BASE64URL_NOPAD.decode(value.as_bytes()).ok());
        if carried.is_some() {
            response.headers_mut().insert(CARRIED_HEADER, HeaderValue::from_static("accepted"));
        }
        Ok(response)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(TlsStream::Server(tls), take_carried, Some(ws_config()))
        .await
        .map_err(|e| handshake_error(address, e))?;
    let mut connection = Connection::new(ws, peer);
    connection.received_first = carried;
    Ok(connection)
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
    /// The caller's first message, carried in the upgrade and confirmed: not
    /// sent again.
    sent_first: Option<String>,
    /// The first message the caller carried in the upgrade, not yet read.
    received_first: Option<Vec<u8>>,
}

impl Connection {
    fn new(ws: Ws, peer: DeviceId) -> Self {
        Connection {
            ws,
            peer,
            rate: RateLimit { tokens: RATE_BURST, at: crate::clock::now() },
            sent_first: None,
            received_first: None,
        }
    }

    /// The peer's address.
    fn remote(&self) -> Option<SocketAddr> {
        self.ws.get_ref().get_ref().0.peer_addr().ok()
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &Message) -> Result<(), SignalingError> {
        let text = message.encode();
        if self.sent_first.as_ref().is_some_and(|first| *first == text) {
            self.sent_first = None;
            return Ok(());
        }
        self.ws.send(WsMessage::text(text)).await.map_err(|e| SignalingError::Io(e.to_string()))
    }

    /// Sends a WebSocket ping (keepalive; the peer's pong counts as traffic).
    pub async fn ping(&mut self) -> Result<(), SignalingError> {
        self.ws.send(WsMessage::Ping(Default::default())).await.map_err(|e| SignalingError::Io(e.to_string()))
    }

    /// The next message; `Ok(None)` when the peer closed the connection. Control
    /// frames are answered and skipped; an unknown message type is returned as
    /// such for the caller to log and ignore. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Decoded>, SignalingError> {
        if let Some(first) = self.received_first.take() {
            // Counted like any message (the budget is full at this point).
            self.rate.allow(crate::clock::now());
            return Ok(Some(wire::decode(&first)?));
        }
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

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;
    use voicelink_core::wire::{Body, CallId};

    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint::new(Arc::new(Identity::ephemeral().unwrap())).unwrap()
    }

    /// An endpoint and the device ID it presents.
    fn device_endpoint() -> (DeviceId, Endpoint) {
        let identity = Arc::new(Identity::ephemeral().unwrap());
        (identity.device_id, Endpoint::new(identity).unwrap())
    }

    fn request() -> Message {
        let body = Body::CallRequest { caller_name: "Zoë".into(), frame_ms: Some(20), group: None };
        Message::new(CallId::random(), body)
    }

    async fn next(connection: &mut Connection) -> Message {
        match connection.recv().await {
            Ok(Some(Decoded::Message(message))) => message,
            other => panic!("not a message: {other:?}"),
        }
    }

    /// An integer TCP option's value; `None` where the kernel has no such
    /// option (these: before Linux 6.15).
    #[cfg(target_os = "linux")]
    fn tcp_option(tcp: &TcpStream, option: libc::c_int) -> Option<libc::c_int> {
        use std::os::fd::AsRawFd;
        let (mut value, mut len): (libc::c_int, libc::socklen_t) = (0, std::mem::size_of::<libc::c_int>() as _);
        // SAFETY: a valid open socket, and a c_int with its size to fill.
        let rc = unsafe {
            libc::getsockopt(
                tcp.as_raw_fd(),
                libc::IPPROTO_TCP,
                option,
                std::ptr::from_mut(&mut value).cast(),
                &raw mut len,
            )
        };
        (rc == 0).then_some(value)
    }

    /// How long the kernel would wait now before resending a lost segment.
    #[cfg(target_os = "linux")]
    fn retransmission_timeout(tcp: &TcpStream) -> Duration {
        use std::os::fd::AsRawFd;
        // SAFETY: tcp_info is plain integers; all zeroes is a valid value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: a valid open socket, and a tcp_info with its size to fill.
        let rc = unsafe {
            libc::getsockopt(
                tcp.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                std::ptr::from_mut(&mut info).cast(),
                &raw mut len,
            )
        };
        assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
        Duration::from_micros(info.tcpi_rto.into())
    }

    /// A caller's and a callee's end of one loopback connection, `first`
    /// carried in the upgrade.
    async fn connected(first: &Message) -> (Connection, Connection) {
        // The daemon's own listener: the callee's end inherits its options.
        let listener = super::super::SignalingListener::bind(0).await.unwrap().listener;
        let address = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, listener.local_addr().unwrap().port()));
        let callee = tokio::spawn(async move {
            let (tcp, from) = listener.accept().await.unwrap();
            endpoint().accept(tcp, from).await.unwrap()
        });
        let caller = endpoint().connect(&[address], None, Some(first)).await.unwrap();
        (caller, callee.await.unwrap())
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn both_ends_of_a_connection_retransmit_soon_and_at_least_every_second() {
        let (caller, callee) = connected(&request()).await;
        for (side, connection) in [("caller", &caller), ("callee", &callee)] {
            let tcp = connection.ws.get_ref().get_ref().0;
            let gives_up = socket2::SockRef::from(tcp).tcp_user_timeout().unwrap();
            assert_eq!(gives_up, Some(UNACKNOWLEDGED_AT_MOST), "{side}");
            match tcp_option(tcp, TCP_RTO_MAX_MS) {
                Some(cap) => {
                    assert_eq!(Duration::from_millis(u64::try_from(cap).unwrap()), RETRANSMIT_AT_LEAST_EVERY, "{side}")
                }
                None => eprintln!("this kernel cannot cap TCP's retransmission wait: {side} not checked"),
            }
            match tcp_option(tcp, TCP_RTO_MIN_US) {
                Some(floor) => {
                    // The kernel keeps it in jiffies: 20 ms reads back as 20 or a tick above.
                    let floor = Duration::from_micros(u64::try_from(floor).unwrap());
                    assert!(
                        (RETRANSMIT_NO_SOONER_THAN..RETRANSMIT_NO_SOONER_THAN + Duration::from_millis(10))
                            .contains(&floor),
                        "{side}: {floor:?}"
                    );
                    // In effect since the SYN: set after it, the wait starts at
                    // 200 ms and comes down a quarter a round trip.
                    let wait = retransmission_timeout(tcp);
                    assert!(
                        wait < RETRANSMIT_NO_SOONER_THAN + Duration::from_millis(40),
                        "{side}: a lost segment waits {wait:?}"
                    );
                }
                None => eprintln!("this kernel cannot lower TCP's retransmission floor: {side} not checked"),
            }
        }
    }

    #[tokio::test]
    async fn a_tcp_connect_reaches_the_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listen");
        let address = listener.local_addr().expect("address");
        let stream = connect_tcp(address).await.expect("connected");
        let (accepted, from) = listener.accept().await.expect("accept");
        assert_eq!(from, stream.local_addr().expect("local address"));
        drop(accepted);
    }

    #[tokio::test]
    async fn a_refused_tcp_connect_fails_with_the_cause() {
        // A port just freed: nothing listens there.
        let address = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
        let error = connect_tcp(address).await.expect_err("nothing listens");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn the_call_request_rides_in_the_upgrade_and_is_not_sent_twice() {
        let first = request();
        let (mut caller, mut callee) = connected(&first).await;
        assert!(caller.sent_first.is_some(), "the callee confirmed it");
        caller.send(&first).await.unwrap();
        let then = Message::new(first.call_id.clone(), Body::Busy);
        caller.send(&then).await.unwrap();
        let (received, after) = (next(&mut callee).await, next(&mut callee).await);
        assert_eq!(received, first);
        assert_eq!(after, then, "the call request came once");
    }

    #[tokio::test]
    async fn an_attempt_that_connects_while_the_carrying_one_is_upgrading_waits_in_reserve() {
        let (first_listener, second_listener) =
            (TcpListener::bind("127.0.0.1:0").await.unwrap(), TcpListener::bind("127.0.0.1:0").await.unwrap());
        let addresses = [first_listener.local_addr().unwrap(), second_listener.local_addr().unwrap()];
        let (second_started, mut started) = tokio::sync::mpsc::channel::<()>(1);
        let (carrier_upgrading, mut upgrading) = tokio::sync::mpsc::channel::<()>(1);
        let (second_upgraded, mut upgraded) = tokio::sync::mpsc::channel::<()>(1);
        let (first_server, second_server) = (endpoint(), endpoint());
        // The first address answers TLS only once the second attempt has
        // started, and the upgrade only once the second has been upgraded.
        let first = tokio::spawn(async move {
            let (tcp, _) = first_listener.accept().await.unwrap();
            started.recv().await;
            // The caller finished TLS before we did, and then sent its upgrade.
            let tls = first_server.acceptor.accept(tcp).await.unwrap();
            carrier_upgrading.send(()).await.unwrap();
            upgraded.recv().await;
            let mut connection = upgrade(tls, "first").await.unwrap();
            next(&mut connection).await
        });
        let second = tokio::spawn(async move {
            let (tcp, _) = second_listener.accept().await.unwrap();
            second_started.send(()).await.unwrap();
            let tls = second_server.acceptor.accept(tcp).await.unwrap();
            upgrading.recv().await;
            let mut connection = upgrade(tls, "second").await.unwrap();
            second_upgraded.send(()).await.unwrap();
            connection.recv().await
        });
        let request = request();
        let mut caller = endpoint().connect(&addresses, None, Some(&request)).await.unwrap();
        assert!(caller.sent_first.is_some(), "the carrying attempt won");
        caller.send(&request).await.unwrap();
        assert_eq!(first.await.unwrap(), request);
        assert!(matches!(second.await.unwrap(), Ok(None)), "the reserve was closed unused");
    }

    /// A callee on a loopback port: each connection is handled by `serve`
    /// with its position in the order of arrival; returns where it listens.
    async fn callee<F, Fut>(serve: F) -> SocketAddr
    where
        F: Fn(usize, TcpStream, SocketAddr) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for n in 0.. {
                let Ok((tcp, from)) = listener.accept().await else { return };
                tokio::spawn(serve(n, tcp, from));
            }
        });
        address
    }

    #[tokio::test]
    async fn a_second_dial_to_a_device_carries_its_request_on_the_warm_connection() {
        let (device, server) = device_endpoint();
        let (heard, mut requests) = tokio::sync::mpsc::unbounded_channel();
        let (accepted, mut accepts) = tokio::sync::mpsc::unbounded_channel();
        let address = callee(move |n, tcp, from| {
            let (server, heard) = (server.clone(), heard.clone());
            accepted.send((n, from)).unwrap();
            async move {
                let mut connection = server.accept(tcp, from).await.unwrap();
                heard.send((from, next(&mut connection).await)).unwrap();
            }
        })
        .await;
        let caller = endpoint();
        let mut parks = caller.warm.parks();
        let first = request();
        caller.connect(&[address], Some(device), Some(&first)).await.unwrap();
        assert_eq!(requests.recv().await.unwrap().1, first);
        parks.wait_for(|parks| *parks >= 1).await.unwrap();
        // The keeper's connection is the second the callee accepted.
        accepts.recv().await.unwrap();
        let (second_connection, warm) = accepts.recv().await.unwrap();
        assert_eq!(second_connection, 1);

        let second = request();
        let connection = caller.connect(&[address], Some(device), Some(&second)).await.unwrap();
        assert!(connection.sent_first.is_some(), "carried in the upgrade");
        assert_eq!(requests.recv().await.unwrap(), (warm, second), "on the parked connection");
        caller.stop_keeping_warm();
    }

    #[tokio::test]
    async fn a_warm_connection_the_callee_closed_gives_way_to_a_fresh_one() {
        let (device, server) = device_endpoint();
        let (heard, mut requests) = tokio::sync::mpsc::unbounded_channel();
        let (closed, mut closes) = tokio::sync::mpsc::unbounded_channel();
        let address = callee(move |n, tcp, from| {
            let (server, heard, closed) = (server.clone(), heard.clone(), closed.clone());
            async move {
                if n == 1 {
                    // The keeper's: TLS, then closed as a callee under pressure would.
                    let tls = server.accept_tls(tcp, "caller").await.unwrap();
                    drop(tls);
                    closed.send(()).unwrap();
                    return;
                }
                let mut connection = server.accept(tcp, from).await.unwrap();
                heard.send((n, next(&mut connection).await)).unwrap();
            }
        })
        .await;
        let caller = endpoint();
        let mut parks = caller.warm.parks();
        caller.connect(&[address], Some(device), Some(&request())).await.unwrap();
        requests.recv().await.unwrap();
        parks.wait_for(|parks| *parks >= 1).await.unwrap();
        closes.recv().await.unwrap();

        let second = request();
        caller.connect(&[address], Some(device), Some(&second)).await.unwrap();
        let (on, heard) = requests.recv().await.unwrap();
        assert!(on >= 2, "on a fresh connection, not the closed one");
        assert_eq!(heard, second);
        caller.stop_keeping_warm();
    }

    #[tokio::test]
    async fn a_callee_that_does_not_confirm_gets_the_call_request_as_a_message() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = endpoint();
        let callee = tokio::spawn(async move {
            // A callee that knows nothing of the header.
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = server.acceptor.accept(tcp).await.unwrap();
            let ws = tokio_tungstenite::accept_async(TlsStream::Server(tls)).await.unwrap();
            let mut connection = Connection::new(ws, DeviceId::from_hash([0; 32]));
            next(&mut connection).await
        });
        let first = request();
        let mut caller = endpoint().connect(&[address], None, Some(&first)).await.unwrap();
        assert!(caller.sent_first.is_none());
        caller.send(&first).await.unwrap();
        assert_eq!(callee.await.unwrap(), first);
    }
}
