//! Warm connections: after dialing a device, the dialer keeps one spare
//! connection to it with TCP and TLS done and the WebSocket upgrade not yet
//! sent (a parked connection, docs/PROTOCOL.md §3). The next call request to
//! that device rides in an upgrade on it: the callee rings half a round trip
//! after the dial instead of two and a half.
//!
//! This is the bookkeeping, pure and generic over the stream: which devices
//! are kept warm, which parked connection may still be used, when a keeper
//! gives up. The keeper task that connects lives with the transport.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use voicelink_core::vocab::DeviceId;

/// How long after the last dial to a device a connection to it is kept warm.
pub const KEEP_WARM_FOR: Duration = Duration::from_secs(15 * 60);
/// How often the keeper replaces its parked connection, well inside what a
/// callee must allow ([`PARK_LIMIT`]).
pub const REFRESH_EVERY: Duration = Duration::from_secs(40);
/// The oldest parked connection a dial uses: a callee closes one after
/// [`PARK_LIMIT`], and the upgrade must get there before that.
pub const USE_WITHIN: Duration = Duration::from_secs(50);
/// How long a callee waits for the upgrade on an authenticated connection
/// (docs/PROTOCOL.md §3 requires at least this).
pub const PARK_LIMIT: Duration = Duration::from_secs(60);

/// The devices kept warm and their parked connections.
pub struct WarmConnections<S> {
    devices: Mutex<HashMap<DeviceId, Device<S>>>,
    /// How many connections were parked so far.
    parks: watch::Sender<u64>,
}

struct Device<S> {
    addresses: Vec<SocketAddr>,
    last_dial: Instant,
    parked: Option<(S, Instant)>,
    /// Wakes the keeper when its connection is taken.
    taken: Arc<Notify>,
}

/// What a keeper does next.
pub enum Keep {
    /// Connect to one of these addresses and park the result; then wait on
    /// `taken` or for [`REFRESH_EVERY`].
    Connect {
        /// Where the last dial found the device, the address it reached first.
        addresses: Vec<SocketAddr>,
        /// Notified when a dial takes the parked connection.
        taken: Arc<Notify>,
    },
    /// A young connection is parked: wait on `taken` or until `until`.
    Wait {
        /// When the parked connection is due for replacing.
        until: Instant,
        /// Notified when a dial takes the parked connection.
        taken: Arc<Notify>,
    },
    /// Stop: the device was not dialed for [`KEEP_WARM_FOR`].
    Stop,
}

impl<S> Default for WarmConnections<S> {
    fn default() -> Self {
        WarmConnections { devices: Mutex::new(HashMap::new()), parks: watch::Sender::new(0) }
    }
}

impl<S> WarmConnections<S> {
    fn devices(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Device<S>>> {
        // Nothing here can be left half-updated by a panic: use it as it is.
        self.devices.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A dial reached `device` at `addresses`: keep it warm from now. True
    /// when it was not kept warm yet, so the caller starts a keeper.
    pub fn dialed(&self, device: DeviceId, addresses: &[SocketAddr], now: Instant) -> bool {
        let mut devices = self.devices();
        if let Some(known) = devices.get_mut(&device) {
            known.addresses = addresses.to_vec();
            known.last_dial = now;
            if known.parked.is_none() {
                // Its last attempt may have failed: try again now the device answered.
                known.taken.notify_one();
            }
            return false;
        }
        let taken = Arc::new(Notify::new());
        devices.insert(device, Device { addresses: addresses.to_vec(), last_dial: now, parked: None, taken });
        true
    }

    /// The parked connection to `device` if there is one young enough to use;
    /// an older one is dropped. Either way the keeper is woken to park anew.
    pub fn take(&self, device: DeviceId, now: Instant) -> Option<S> {
        let mut devices = self.devices();
        let known = devices.get_mut(&device)?;
        let (stream, since) = known.parked.take()?;
        known.taken.notify_one();
        (now.saturating_duration_since(since) < USE_WITHIN).then_some(stream)
    }

    /// The keeper's next step for `device`; forgets a device not dialed for
    /// [`KEEP_WARM_FOR`] (dropping its parked connection).
    pub fn next_step(&self, device: DeviceId, now: Instant) -> Keep {
        let mut devices = self.devices();
        let Some(known) = devices.get(&device) else { return Keep::Stop };
        if now.saturating_duration_since(known.last_dial) >= KEEP_WARM_FOR {
            devices.remove(&device);
            return Keep::Stop;
        }
        let taken = known.taken.clone();
        match known.parked.as_ref().map(|(_, since)| *since + REFRESH_EVERY) {
            Some(until) if until > now => Keep::Wait { until, taken },
            _ => Keep::Connect { addresses: known.addresses.clone(), taken },
        }
    }

    /// Parks `stream` for `device`, replacing (and returning, to be closed)
    /// the one parked before. A device no longer kept warm gets it back.
    pub fn park(&self, device: DeviceId, stream: S, now: Instant) -> Option<S> {
        let mut devices = self.devices();
        let Some(known) = devices.get_mut(&device) else { return Some(stream) };
        let replaced = known.parked.replace((stream, now)).map(|(old, _)| old);
        self.parks.send_modify(|parks| *parks += 1);
        replaced
    }

    /// Counts the connections parked so far (a test waits on it).
    pub fn parks(&self) -> watch::Receiver<u64> {
        self.parks.subscribe()
    }

    /// Forgets every device (at shutdown): the parked connections are returned to be closed.
    pub fn clear(&self) -> Vec<S> {
        self.devices().drain().filter_map(|(_, known)| known.parked.map(|(stream, _)| stream)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(n: u8) -> DeviceId {
        DeviceId::from_hash([n; 32])
    }

    fn address() -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], 7000))
    }

    /// Connections kept for device 1, dialed at the returned instant.
    fn dialed_once() -> (WarmConnections<u32>, Instant) {
        let warm = WarmConnections::default();
        let t0 = Instant::now();
        warm.dialed(device(1), &[address()], t0);
        (warm, t0)
    }

    #[test]
    fn the_first_dial_to_a_device_starts_a_keeper_and_later_ones_do_not() {
        let warm = WarmConnections::<u32>::default();
        let t0 = Instant::now();
        assert!(warm.dialed(device(1), &[address()], t0));
        assert!(!warm.dialed(device(1), &[address()], t0 + Duration::from_secs(1)));
        assert!(warm.dialed(device(2), &[address()], t0));
    }

    #[test]
    fn a_parked_connection_is_used_once_and_wakes_the_keeper() {
        let (warm, t0) = dialed_once();
        let Keep::Connect { addresses, taken } = warm.next_step(device(1), t0) else { panic!("kept warm") };
        assert_eq!(addresses, [address()]);
        assert_eq!(warm.park(device(1), 7, t0), None);
        assert_eq!(warm.take(device(2), t0), None, "another device has none");
        assert_eq!(warm.take(device(1), t0 + Duration::from_secs(1)), Some(7));
        assert_eq!(warm.take(device(1), t0 + Duration::from_secs(1)), None, "used once");
        // The permit is stored: the keeper's wait ends at once.
        let woken = futures::FutureExt::now_or_never(taken.notified());
        assert!(woken.is_some(), "the keeper was woken");
    }

    #[test]
    fn a_keeper_waits_while_a_young_connection_is_parked() {
        let (warm, t0) = dialed_once();
        warm.park(device(1), 7, t0);
        let step = warm.next_step(device(1), t0 + Duration::from_secs(1));
        assert!(matches!(step, Keep::Wait { until, .. } if until == t0 + REFRESH_EVERY));
        assert!(matches!(warm.next_step(device(1), t0 + REFRESH_EVERY), Keep::Connect { .. }));
    }

    #[test]
    fn a_dial_wakes_a_keeper_that_has_nothing_parked() {
        let (warm, t0) = dialed_once();
        let Keep::Connect { taken, .. } = warm.next_step(device(1), t0) else { panic!("kept warm") };
        warm.dialed(device(1), &[address()], t0);
        assert!(futures::FutureExt::now_or_never(taken.notified()).is_some(), "woken: nothing parked");
        warm.park(device(1), 7, t0);
        warm.dialed(device(1), &[address()], t0);
        assert!(futures::FutureExt::now_or_never(taken.notified()).is_none(), "not woken: one is parked");
    }

    #[test]
    fn a_parked_connection_older_than_the_limit_is_not_used() {
        let (warm, t0) = dialed_once();
        warm.park(device(1), 7, t0);
        assert_eq!(warm.take(device(1), t0 + USE_WITHIN), None);
    }

    #[test]
    fn a_refresh_returns_the_connection_it_replaces() {
        let (warm, t0) = dialed_once();
        warm.park(device(1), 7, t0);
        assert_eq!(warm.park(device(1), 8, t0 + REFRESH_EVERY), Some(7));
        assert_eq!(warm.take(device(1), t0 + REFRESH_EVERY + USE_WITHIN / 2), Some(8));
    }

    #[test]
    fn a_device_not_dialed_for_a_while_is_forgotten() {
        let (warm, t0) = dialed_once();
        let later = t0 + KEEP_WARM_FOR;
        warm.dialed(device(1), &[address()], later);
        assert!(matches!(warm.next_step(device(1), later + KEEP_WARM_FOR / 2), Keep::Connect { .. }));
        assert!(matches!(warm.next_step(device(1), later + KEEP_WARM_FOR), Keep::Stop));
        assert_eq!(warm.park(device(1), 7, later + KEEP_WARM_FOR), Some(7), "not parked for a forgotten device");
        assert!(warm.dialed(device(1), &[address()], later + KEEP_WARM_FOR), "a new dial starts again");
    }

    #[test]
    fn clearing_returns_every_parked_connection() {
        let warm = WarmConnections::<u32>::default();
        let t0 = Instant::now();
        for n in 1..=3 {
            warm.dialed(device(n), &[address()], t0);
        }
        warm.park(device(1), 1, t0);
        warm.park(device(3), 3, t0);
        let mut closed = warm.clear();
        closed.sort_unstable();
        assert_eq!(closed, [1, 3]);
        assert!(matches!(warm.next_step(device(1), t0), Keep::Stop));
    }
}
