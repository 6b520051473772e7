//! The media sockets send every DTLS handshake datagram six times.
//!
//! rtc-dtls 0.21.1 retransmits a lost flight only after a fixed second, and
//! loses its timer when a record that does not complete the next flight comes
//! in (docs/upstream/rtc-dtls-retransmit-timer.md), so one lost datagram of the
//! ~8 a handshake takes costs a second or the whole media session. At 15 %
//! loss each way most handshakes lose one. With copies spread over 160 ms a
//! datagram is lost only when all are, and a first flight that comes before
//! the other side's ICE is ready is not lost at all. A copy is byte for byte
//! the same record, same sequence number: a DTLS receiver discards it, as a
//! replay (RFC 6347 §4.1.2.6) or as a handshake message it has (§4.2.2);
//! rtc-dtls drops it as a replay before the handshake sees it, so it can
//! neither cancel a timer nor advance anything. Measured on the bench at 15 %
//! loss, 20 calls each: answer → active within 300 ms in 13-17 calls sent
//! once, 19 sent twice, 18-20 sent three times (10 and 20 ms apart: 2 of 20
//! auto-answered calls still waited a second, their ClientHello and copies
//! all there before the caller's ICE); with the five copies, 20 of 20, and
//! none of 20 auto-answered calls took more than 111 ms from the answer to media.
//!
//! webrtc-rs binds its sockets itself; its [`Runtime`] is the one seam where
//! they can be wrapped. [`RedundantHandshakes`] is tokio's runtime with each
//! UDP socket wrapped; everything else passes through.

use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime, TokioRuntime,
    Transmit,
};

/// DTLS record content types (RFC 6347 §4.1): ChangeCipherSpec and Handshake.
/// Alerts and application data are not repeated; SRTP and STUN start with
/// bytes outside DTLS's range (RFC 7983).
const CHANGE_CIPHER_SPEC: u8 = 20;
const HANDSHAKE: u8 = 22;
/// How long after the original its copies go: apart, so that a short burst of
/// loss (a Wi-Fi retry storm) does not take them all, and spread over 160 ms:
/// the first flight goes out as soon as the DTLS client's ICE has a path, and
/// the other side, whose ICE may find it tens of milliseconds later under
/// loss (64 ms seen at 15 %), drops what comes before. All well within
/// rtc-dtls's one-second retransmission.
const COPY_DELAYS: [Duration; 5] = [
    Duration::from_millis(10),
    Duration::from_millis(20),
    Duration::from_millis(40),
    Duration::from_millis(80),
    Duration::from_millis(160),
];

/// A datagram that carries part of a DTLS handshake (its first record's type;
/// a flight packs only handshake and ChangeCipherSpec records).
pub fn is_dtls_handshake(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(&(CHANGE_CIPHER_SPEC | HANDSHAKE)))
}

/// Tokio's webrtc runtime, its UDP sockets repeating DTLS handshakes.
#[derive(Debug)]
pub struct RedundantHandshakes {
    inner: TokioRuntime,
}

impl RedundantHandshakes {
    /// The runtime to build a peer connection with.
    pub fn runtime() -> Arc<dyn Runtime> {
        Arc::new(RedundantHandshakes { inner: TokioRuntime })
    }
}

impl Runtime for RedundantHandshakes {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        Ok(Arc::new(RedundantSocket { inner: self.inner.wrap_udp_socket(socket)? }))
    }

    fn wrap_tcp_listener(&self, listener: std::net::TcpListener) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.yield_now()
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }
}

/// A UDP socket that sends DTLS handshake datagrams with copies after them.
#[derive(Debug)]
struct RedundantSocket {
    inner: Arc<dyn AsyncUdpSocket>,
}

impl RedundantSocket {
    /// Sends the copies [`COPY_DELAYS`] after the original, on the tokio
    /// runtime the driver runs on (outside one, none: the original went).
    fn send_copies_later(&self, transmit: &Transmit<'_>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (socket, datagram, to) = (Arc::clone(&self.inner), transmit.contents.to_vec(), transmit.destination);
        let sent_at = tokio::time::Instant::now();
        runtime.spawn(async move {
            for delay in COPY_DELAYS {
                tokio::time::sleep_until(sent_at + delay).await;
                let _ = socket.send_to(&datagram, to).await;
            }
        });
    }
}

impl AsyncUdpSocket for RedundantSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        let sent = self.inner.poll_send(cx, transmit);
        // A GSO batch (several datagrams in one send, for runs of media) is
        // never copied: its copy would go out as one oversized datagram.
        if matches!(sent, Poll::Ready(Ok(_))) && transmit.segment_size.is_none() && is_dtls_handshake(transmit.contents)
        {
            self.send_copies_later(transmit);
        }
        sent
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn max_gso_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_gro_segments(&self) -> usize {
        self.inner.max_gro_segments()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_and_change_cipher_spec_records_are_handshake_datagrams() {
        assert!(is_dtls_handshake(&[22, 0xfe, 0xfd]));
        assert!(is_dtls_handshake(&[20, 0xfe, 0xfd]));
        assert!(!is_dtls_handshake(&[21, 0xfe, 0xfd]), "an alert");
        assert!(!is_dtls_handshake(&[23, 0xfe, 0xfd]), "application data");
        assert!(!is_dtls_handshake(&[0x80, 111]), "RTP/SRTP");
        assert!(!is_dtls_handshake(&[0x00, 0x01]), "a STUN binding request");
        assert!(!is_dtls_handshake(&[]));
    }

    #[tokio::test]
    async fn a_handshake_datagram_goes_out_with_its_copies_and_media_once() {
        let receiver = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind the receiver");
        let to = receiver.local_addr().expect("receiver address");
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind the sender");
        let sender = RedundantHandshakes::runtime().wrap_udp_socket(socket).expect("wrap the sender");

        sender.send_to(&[0x80, 111, 1], to).await.expect("send RTP");
        sender.send_to(&[22, 0xfe, 0xfd, 2], to).await.expect("send a handshake");
        sender.send_to(&[0x80, 111, 3], to).await.expect("send RTP again");

        // What was sent and the copies of the handshake (a copied RTP packet
        // would take the place of one). The copies come later, but a test
        // descheduled between two sends could see them sooner: order is not
        // compared.
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        for _ in 0..3 + COPY_DELAYS.len() {
            let received = tokio::time::timeout(Duration::from_secs(10), receiver.recv_from(&mut buf));
            let (n, _) = received.await.expect("a datagram missing").expect("receive");
            got.push(buf[..n].to_vec());
        }
        got.sort();
        let mut sent = vec![vec![22, 0xfe, 0xfd, 2]; 1 + COPY_DELAYS.len()];
        sent.extend([vec![0x80, 111, 1], vec![0x80, 111, 3]]);
        assert_eq!(got, sent);
    }
}
