//! Watches the sound devices: a task that keeps the current [`DeviceList`] in a
//! watch channel, for the API's event and for calls that follow their device.
//!
//! Where the sound server is PulseAudio (or PipeWire's pulse server), it says
//! when a sink, a source or the default changes: a subscription on its native
//! protocol wakes the task. Elsewhere the task looks again every few seconds; on
//! bare ALSA only when the kernel's list of cards changes, because listing opens
//! every device.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::device::{self, DeviceList};

/// After a change signal, how long more signals are gathered before listing:
/// plugging a card adds a sink, a source and a new default in one burst.
const SETTLE: Duration = Duration::from_millis(100);
/// How often a host that cannot signal changes is looked at again.
const POLL: Duration = Duration::from_secs(2);

/// The devices as last listed; the receiver sees every change.
pub type Devices = watch::Receiver<Arc<DeviceList>>;

/// A list that never changes (tests that open no device).
#[cfg(test)]
pub fn fixed(list: DeviceList) -> Devices {
    watch::Sender::new(Arc::new(list)).subscribe()
}

/// Lists the devices once, then keeps the list current until `stop`.
pub async fn start(stop: CancellationToken) -> (Devices, impl Future<Output = ()> + Send + 'static) {
    let first = tokio::task::spawn_blocking(device::list).await.unwrap_or_default();
    let (sender, receiver) = watch::channel(Arc::new(first));
    (receiver, run(sender, stop))
}

async fn run(sender: watch::Sender<Arc<DeviceList>>, stop: CancellationToken) {
    let (signal_tx, mut signals) = mpsc::unbounded_channel();
    let source = tokio::task::spawn_blocking(move || ChangeSource::open(signal_tx)).await.ok();
    // Without a change feed, or once it ends (the server went away), look now and then.
    let mut polling = source.as_ref().is_none_or(ChangeSource::needs_polling);
    if let Some(source) = &source {
        debug!(source = source.describe(), "watching the sound devices");
    }
    let mut fingerprint = tokio::task::spawn_blocking(host_fingerprint).await.ok().flatten();
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            signal = signals.recv(), if !polling => {
                if signal.is_none() {
                    debug!("the sound server's change feed ended; polling");
                    polling = true;
                    continue;
                }
                tokio::time::sleep(SETTLE).await;
                while signals.try_recv().is_ok() {}
            }
            _ = poll.tick(), if polling => {
                let now = tokio::task::spawn_blocking(host_fingerprint).await.ok().flatten();
                if now.is_some() && now == fingerprint {
                    continue;
                }
                fingerprint = now;
            }
        }
        let Ok(list) = tokio::task::spawn_blocking(device::list).await else { continue };
        sender.send_if_modified(|current| {
            let changed = **current != list;
            if changed {
                *current = Arc::new(list);
            }
            changed
        });
    }
    drop(source);
}

/// Something cheap that changes when the host's devices do, where listing them
/// is not cheap; `None` where listing is the only way to know.
fn host_fingerprint() -> Option<String> {
    if cfg!(target_os = "linux") && device::host_is_alsa() {
        std::fs::read_to_string("/proc/asound/cards").ok()
    } else {
        None
    }
}

/// Where change signals come from.
enum ChangeSource {
    /// PulseAudio's subscription: a thread reads it; shutting the socket down
    /// ends it.
    #[cfg(target_os = "linux")]
    Pulse {
        /// Held for its drop.
        _subscription: pulse::Subscription,
    },
    /// Nothing signals: poll.
    Poll,
}

impl ChangeSource {
    fn open(signals: mpsc::UnboundedSender<()>) -> ChangeSource {
        #[cfg(target_os = "linux")]
        if device::host_is_pulse() {
            match pulse::Subscription::start(signals) {
                Ok(subscription) => return ChangeSource::Pulse { _subscription: subscription },
                Err(error) => debug!(%error, "cannot subscribe to the sound server's changes; polling"),
            }
        }
        #[cfg(not(target_os = "linux"))]
        drop(signals);
        ChangeSource::Poll
    }

    fn needs_polling(&self) -> bool {
        matches!(self, ChangeSource::Poll)
    }

    fn describe(&self) -> &'static str {
        match self {
            #[cfg(target_os = "linux")]
            ChangeSource::Pulse { .. } => "the sound server's change feed",
            ChangeSource::Poll => "polling",
        }
    }
}

#[cfg(target_os = "linux")]
mod pulse {
    //! A client of PulseAudio's native protocol that only subscribes to sink,
    //! source and server (default device) changes.

    use std::io::BufReader;
    use std::os::unix::net::UnixStream;

    use pulseaudio::protocol::{self, Command, SubscriptionMask};
    use tokio::sync::mpsc;

    /// How long each step of the handshake may take.
    const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

    /// Why the subscription could not be made.
    #[derive(Debug, thiserror::Error)]
    pub enum SubscribeError {
        #[error("no PulseAudio socket in the environment")]
        NoServer,
        #[error("cannot connect to the sound server: {0}")]
        Connect(std::io::Error),
        #[error("the sound server refused: {0}")]
        Protocol(#[from] protocol::ProtocolError),
    }

    /// A running subscription; dropping it ends its thread.
    pub struct Subscription {
        socket: UnixStream,
    }

    impl Subscription {
        /// Connects, subscribes, and starts the thread that sends a signal per
        /// event on `signals`.
        pub fn start(signals: mpsc::UnboundedSender<()>) -> Result<Self, SubscribeError> {
            let path = pulseaudio::socket_path_from_env().ok_or(SubscribeError::NoServer)?;
            let socket = UnixStream::connect(path).map_err(SubscribeError::Connect)?;
            // A server that accepts and never answers must not hold up the daemon.
            socket.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(SubscribeError::Connect)?;
            socket.set_write_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(SubscribeError::Connect)?;
            let mut reader = BufReader::new(socket.try_clone().map_err(SubscribeError::Connect)?);
            let cookie =
                pulseaudio::cookie_path_from_env().and_then(|path| std::fs::read(path).ok()).unwrap_or_default();
            let auth = protocol::AuthParams {
                version: protocol::MAX_VERSION,
                supports_shm: false,
                supports_memfd: false,
                cookie,
            };
            protocol::write_command_message(reader.get_mut(), 0, &Command::Auth(auth), protocol::MAX_VERSION)?;
            let (_, reply) = protocol::read_reply_message::<protocol::AuthReply>(&mut reader, protocol::MAX_VERSION)?;
            let version = protocol::MAX_VERSION.min(reply.version);
            let mut props = protocol::Props::new();
            props.set(protocol::Prop::ApplicationName, c"voiced (device watch)");
            protocol::write_command_message(reader.get_mut(), 1, &Command::SetClientName(props), version)?;
            protocol::read_reply_message::<protocol::SetClientNameReply>(&mut reader, version)?;
            let mask = SubscriptionMask::SINK | SubscriptionMask::SOURCE | SubscriptionMask::SERVER;
            protocol::write_command_message(reader.get_mut(), 2, &Command::Subscribe(mask), version)?;
            protocol::read_ack_message(&mut reader)?;
            // Events come when they come.
            socket.set_read_timeout(None).map_err(SubscribeError::Connect)?;
            std::thread::Builder::new()
                .name("voicelink-devices".into())
                .spawn(move || {
                    // Ends when the socket is shut down (the subscription
                    // dropped), the server goes, or nobody listens.
                    while let Ok((_, command)) = protocol::read_command_message(&mut reader, version) {
                        if matches!(command, Command::SubscribeEvent(_)) && signals.send(()).is_err() {
                            break;
                        }
                    }
                })
                .map_err(SubscribeError::Connect)?;
            Ok(Subscription { socket })
        }
    }

    impl Drop for Subscription {
        fn drop(&mut self) {
            let _ = self.socket.shutdown(std::net::Shutdown::Both);
        }
    }
}
