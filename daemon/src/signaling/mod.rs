//! Daemon-to-daemon signaling. This build binds the listener that mDNS
//! advertises, so the advertised port is really ours; speaking the signaling
//! protocol on it is the call engine's job.

pub mod tls;
pub mod transport;
pub mod wire;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

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

    /// Accepts until `shutdown`. Without a call engine there is nothing to say, so
    /// each connection is closed at once.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((_, peer)) => debug!(%peer, "closing a signaling connection: this build has no call engine"),
                    Err(error) => debug!(%error, "signaling accept failed"),
                },
            }
        }
    }
}
