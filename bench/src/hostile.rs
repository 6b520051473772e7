//! A hostile neighbour for the signaling listener: many TCP connections that
//! start a TLS handshake and then dribble a byte a second, holding whatever
//! slot they get for as long as the daemon lets them, and coming back when
//! closed. The bench measures a real call's setup beside them; the daemon's
//! hostile-LAN test checks that the call still connects.
//!
//! [`StalledClients::start`] runs them on a thread of their own inside a network
//! namespace (sockets are created there), each from one of the given source
//! addresses, so a test can look like many hosts.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::watch;

use crate::relay::{RelayError, enter_namespace};

/// The start of a TLS ClientHello (record header, handshake header), sent a
/// byte at a time: enough for the server to wait for the rest.
const CLIENT_HELLO_START: [u8; 9] = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
/// How often a stalled client sends its next byte.
const DRIBBLE: Duration = Duration::from_secs(1);
/// Pause before a closed client connects again.
const RECONNECT: Duration = Duration::from_millis(100);

/// What the stalled clients have seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StalledCounts {
    /// Connections open now.
    pub open: usize,
    /// Connections made in all.
    pub opened: u64,
    /// Connections the server closed (refused at once, or timed out).
    pub closed_by_server: u64,
}

/// Stalled TLS clients, running until dropped.
pub struct StalledClients {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    counts: Arc<(Mutex<StalledCounts>, Condvar)>,
}

impl StalledClients {
    /// Starts `per_source` stalled clients from each of `sources` (addresses of
    /// namespace `ns`) to `target`.
    pub fn start(ns: &str, target: SocketAddr, sources: Vec<IpAddr>, per_source: usize) -> Result<Self, RelayError> {
        let (stop, stopped) = watch::channel(false);
        let counts = Arc::new((Mutex::new(StalledCounts::default()), Condvar::new()));
        let shared = counts.clone();
        let ns = ns.to_owned();
        let (ready, entered) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("stalled-{ns}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                let entered_ok = enter_namespace(&ns)
                    .and_then(|()| runtime.map_err(|e| RelayError::Io { what: "start a runtime".into(), source: e }));
                let runtime = match entered_ok {
                    Ok(runtime) => {
                        let _ = ready.send(Ok(()));
                        runtime
                    }
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let clients = sources.iter().flat_map(|source| (0..per_source).map(move |_| *source));
                    let tasks: Vec<_> = clients
                        .map(|source| tokio::spawn(stall(source, target, shared.clone(), stopped.clone())))
                        .collect();
                    for task in tasks {
                        let _ = task.await;
                    }
                });
            })
            .map_err(RelayError::io("spawn a thread"))?;
        entered.recv().map_err(|_| RelayError::ThreadPanicked("stalled clients".into()))??;
        Ok(StalledClients { stop, thread: Some(thread), counts })
    }

    /// The counts now.
    pub fn counts(&self) -> StalledCounts {
        *self.counts.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until `until` holds for the counts (or `timeout` passes); returns them.
    pub fn wait_until(&self, timeout: Duration, until: impl Fn(&StalledCounts) -> bool) -> StalledCounts {
        let (lock, changed) = &*self.counts;
        let guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (guard, _) = changed
            .wait_timeout_while(guard, timeout, |counts| !until(counts))
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *guard
    }
}

impl Drop for StalledClients {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn update(counts: &(Mutex<StalledCounts>, Condvar), change: impl FnOnce(&mut StalledCounts)) {
    change(&mut counts.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    counts.1.notify_all();
}

/// One stalled client: connect, dribble, and connect again when closed.
async fn stall(
    source: IpAddr,
    target: SocketAddr,
    counts: Arc<(Mutex<StalledCounts>, Condvar)>,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let socket = if source.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
        let connected = match socket.and_then(|s| s.bind(SocketAddr::new(source, 0)).map(|()| s)) {
            Ok(socket) => tokio::time::timeout(Duration::from_secs(2), socket.connect(target)).await,
            Err(error) => {
                tracing::warn!(%source, %error, "a stalled client cannot use its source address");
                return;
            }
        };
        let Ok(Ok(mut stream)) = connected else {
            tokio::time::sleep(RECONNECT).await;
            continue;
        };
        update(&counts, |c| {
            c.open += 1;
            c.opened += 1;
        });
        let mut next = 0;
        let mut tick = tokio::time::interval(DRIBBLE);
        let mut buffer = [0u8; 256];
        let closed_by_server = loop {
            tokio::select! {
                _ = stop.changed() => break false,
                _ = tick.tick() => {
                    let byte = CLIENT_HELLO_START[next % CLIENT_HELLO_START.len()];
                    next += 1;
                    if stream.write_all(&[byte]).await.is_err() {
                        break true;
                    }
                }
                read = stream.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => break true,
                    Ok(_) => {}
                },
            }
        };
        update(&counts, |c| {
            c.open -= 1;
            c.closed_by_server += u64::from(closed_by_server);
        });
        if !closed_by_server {
            return;
        }
        tokio::time::sleep(RECONNECT).await;
    }
}
