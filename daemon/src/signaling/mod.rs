//! Daemon-to-daemon signaling: the listener mDNS advertises, the transport
//! (WebSocket over mutual TLS). The wire format is pure and lives in
//! `voicelink_core::wire`; docs/PROTOCOL.md specifies it.

pub mod tls;
pub mod transport;
pub mod warm;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::clock;
use crate::logging::Throttle;
use voicelink_core::admission::{Admission, AdmissionPolicy, Admit, Ticket};

use transport::{Connection, Endpoint};
use voicelink_core::config::FrameMs;
use voicelink_core::wire::{Body, CallId, Decoded, GroupPart, Message};
use warm::PARK_LIMIT;

/// A call request that arrived on a new, authenticated signaling connection.
pub struct IncomingRequest {
    /// The authenticated connection.
    pub connection: Connection,
    /// Where it came from.
    pub from: SocketAddr,
    /// The caller's call ID.
    pub call_id: CallId,
    /// The caller's display name.
    pub caller_name: String,
    /// The caller's frame length, which the call adopts.
    pub frame: Option<Duration>,
    /// An invitation to a group call, or a participant joining one.
    pub group: Option<GroupPart>,
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
        // Before it is advertised: what it accepts inherits the floor from the SYN on.
        transport::floor_retransmissions(socket2::SockRef::from(&listener));
        Ok(SignalingListener { listener })
    }

    /// Where it is bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts until `shutdown`: each connection is authenticated (mutual TLS)
    /// and its first message must be a call request, which goes to the registry.
    /// Handshake slots are handed out by the admission gate
    /// (`voicelink_core::admission`), so stalled connections cannot keep callers
    /// out, and each handshake has [`HANDSHAKE_DEADLINE`]. Once TLS is done a
    /// connection is parked (its own limits in the gate) until the upgrade,
    /// for at most [`PARK_LIMIT`].
    pub async fn run<T>(self, endpoint: Endpoint, requests: mpsc::Sender<T>, shutdown: CancellationToken)
    where
        T: From<IncomingRequest> + Send + 'static,
    {
        let mut gate = Admission::new(AdmissionPolicy::default());
        let mut handshakes: HashMap<Ticket, CancellationToken> = HashMap::new();
        let (progress, mut progress_rx) = mpsc::unbounded_channel::<Progress>();
        // Connections closed for want of a slot, told at most every 10 s.
        let mut pressure = Throttle::new(Duration::from_secs(10));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(news) = progress_rx.recv() => match news {
                    Progress::Parked(ticket) => {
                        let evicted = gate.park(ticket, clock::now());
                        if let Some(stop) = evicted.and_then(|victim| handshakes.remove(&victim)) {
                            stop.cancel();
                            under_pressure(&mut pressure, gate.pending() + gate.parked());
                        }
                    }
                    Progress::Finished(ticket) => {
                        gate.finished(ticket);
                        handshakes.remove(&ticket);
                    }
                },
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, from)) => match gate.arrive(from.ip(), clock::now()) {
                        Admit::SourceFull => {
                            drop(tcp);
                            under_pressure(&mut pressure, gate.pending());
                        }
                        Admit::Yes { ticket, evict } => {
                            if let Some(stop) = evict.and_then(|victim| handshakes.remove(&victim)) {
                                stop.cancel();
                                under_pressure(&mut pressure, gate.pending());
                            }
                            let stop = shutdown.child_token();
                            handshakes.insert(ticket, stop.clone());
                            let (endpoint, requests, progress) = (endpoint.clone(), requests.clone(), progress.clone());
                            tokio::spawn(async move {
                                let report = |stage: fn(Ticket) -> Progress| drop(progress.send(stage(ticket)));
                                tokio::select! {
                                    () = stop.cancelled() => {}
                                    () = first_message(endpoint, tcp, from, report, requests) => {}
                                }
                                // Also when it was reported upgraded: a second report changes nothing.
                                report(Progress::Finished);
                            });
                        }
                    },
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

fn under_pressure(pressure: &mut Throttle, pending: usize) {
    if let Some(closed) = pressure.note(clock::now()) {
        warn!(
            closed,
            pending,
            "too many signaling connections are handshaking or parked (stalled or hostile clients?); closing some"
        );
    }
}

/// What a connection's task tells the listener.
enum Progress {
    /// TLS is done: the connection is parked until its upgrade.
    Parked(Ticket),
    /// The connection is upgraded (no longer to be displaced; the deadline
    /// for its first message bounds it), or closed.
    Finished(Ticket),
}

/// Pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a new connection may take for TLS, and again from the WebSocket
/// upgrade to the call request (the upgrade itself may wait for
/// [`PARK_LIMIT`], parked): a few round trips, but at 20 % loss each way TCP's
/// retransmissions stretch them past 4 s (seen in the heavy-loss test). A
/// stalled client holding a slot that long costs little: once every slot is
/// taken, the gate displaces the oldest for a newcomer.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(8);

async fn first_message<T: From<IncomingRequest>>(
    endpoint: Endpoint,
    tcp: tokio::net::TcpStream,
    from: SocketAddr,
    report: impl Fn(fn(Ticket) -> Progress),
    requests: mpsc::Sender<T>,
) {
    let address = from.to_string();
    let accepted = async {
        let tls = tokio::time::timeout(HANDSHAKE_DEADLINE, endpoint.accept_tls(tcp, &address))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        // The caller may park the connection here and upgrade it for a later
        // call (docs/PROTOCOL.md §3); the gate counts it apart from handshakes.
        report(Progress::Parked);
        tokio::time::timeout(PARK_LIMIT, transport::upgrade(tls, &address))
            .await
            .map_err(|_| "no upgrade in time".to_owned())?
            .map_err(|e| e.to_string())
    };
    let mut connection = match accepted.await {
        Ok(connection) => {
            report(Progress::Finished);
            connection
        }
        Err(error) => {
            // Also what a caller that found us to be the wrong device causes (it
            // aborts the handshake), a stalled client and a caller dropping a
            // warm connection: a debug line, since a flood of them is summed
            // up by the listener's warning.
            debug!(%from, %error, "a signaling connection did not complete");
            return;
        }
    };
    let first = tokio::time::timeout(HANDSHAKE_DEADLINE, connection.recv()).await;
    match first {
        Ok(Ok(Some(Decoded::Message(Message {
            call_id,
            body: Body::CallRequest { caller_name, frame_ms, group },
            ..
        })))) => {
            let frame = frame_ms.and_then(FrameMs::of).map(FrameMs::duration);
            let request = IncomingRequest { connection, from, call_id, caller_name, frame, group };
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
