//! How fast discovery may tell the daemon (and through it every API subscriber,
//! the tray and the log) about peers. Pure: changes and the time go in, the
//! changes to publish come out.
//!
//! The peer table bounds how many peers there are, not how often they change: a
//! neighbour can rename a few hundred fake peers many times a second. Changes
//! pass at once up to [`BURST`] (a LAN of peers appearing at start-up), then at
//! [`PER_SECOND`]. Beyond that, a peer's changes wait and merge into one that
//! says where it ended up, so what subscribers hold stays true, only later.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::peer_table::PeerChange;
use crate::vocab::DeviceId;

/// Changes that pass at once after a quiet spell.
pub const BURST: f64 = 300.0;
/// Changes a second, held to once the burst is spent.
pub const PER_SECOND: f64 = 20.0;

/// A whole token, give or take floating-point rounding.
const ONE_TOKEN: f64 = 1.0 - 1e-9;

/// Paces peer changes; merges those of a peer that wait.
#[derive(Debug)]
pub struct PeerEventPacer {
    tokens: f64,
    refilled: Instant,
    /// Waiting changes, one per peer, released oldest first.
    waiting: BTreeMap<DeviceId, PeerChange>,
    order: VecDeque<DeviceId>,
    held: u64,
}

fn device_of(change: &PeerChange) -> DeviceId {
    match change {
        PeerChange::Appeared(peer) | PeerChange::Changed(peer) => peer.device_id,
        PeerChange::Gone { device_id, .. } => *device_id,
    }
}

/// What subscribers must learn, having heard neither `earlier` nor `later`;
/// `None` when nothing (a peer that came and went unseen).
fn merged(earlier: PeerChange, later: PeerChange) -> Option<PeerChange> {
    match (earlier, later) {
        (PeerChange::Appeared(_), PeerChange::Changed(peer)) => Some(PeerChange::Appeared(peer)),
        (PeerChange::Appeared(_), PeerChange::Gone { .. }) => None,
        // Subscribers still hold the peer the unsent goodbye would have removed.
        (PeerChange::Gone { .. }, PeerChange::Appeared(peer)) => Some(PeerChange::Changed(peer)),
        (_, later) => Some(later),
    }
}

impl PeerEventPacer {
    /// A pacer with its whole burst available.
    pub fn new(now: Instant) -> Self {
        PeerEventPacer { tokens: BURST, refilled: now, waiting: BTreeMap::new(), order: VecDeque::new(), held: 0 }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * PER_SECOND).min(BURST);
        self.refilled = now;
    }

    /// A change from the table: what to publish now (it, or nothing if it waits).
    pub fn offer(&mut self, change: PeerChange, now: Instant) -> Option<PeerChange> {
        self.refill(now);
        let device = device_of(&change);
        if let Some(earlier) = self.waiting.remove(&device) {
            // Its earlier change still waits: this one waits with it.
            self.held += 1;
            if let Some(change) = merged(earlier, change) {
                self.waiting.insert(device, change);
            }
            return None;
        }
        // Nothing overtakes a change that waits.
        if self.waiting.is_empty() && self.tokens >= ONE_TOKEN {
            self.tokens -= 1.0;
            return Some(change);
        }
        self.held += 1;
        self.waiting.insert(device, change);
        self.order.push_back(device);
        None
    }

    /// The waiting changes whose turn has come.
    pub fn release(&mut self, now: Instant) -> Vec<PeerChange> {
        self.refill(now);
        let mut released = Vec::new();
        while self.tokens >= ONE_TOKEN {
            let Some(device) = self.order.pop_front() else { break };
            if let Some(change) = self.waiting.remove(&device) {
                self.tokens -= 1.0;
                released.push(change);
            }
        }
        released
    }

    /// When [`PeerEventPacer::release`] next has something to publish.
    pub fn next_release(&self) -> Option<Instant> {
        if self.waiting.is_empty() {
            return None;
        }
        // Rounded up to the millisecond, so the token is there when woken.
        let short = (1.0 - self.tokens).max(0.0);
        Some(self.refilled + Duration::from_millis((short / PER_SECOND * 1000.0).ceil() as u64))
    }

    /// Changes that had to wait, in all (for the log).
    pub fn held(&self) -> u64 {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer_table::{GoneReason, PeerRecord};

    fn peer(n: u32, name: &str) -> PeerRecord {
        PeerRecord {
            device_id: DeviceId::from_certificate_der(format!("peer {n}").as_bytes()),
            display_name: name.into(),
            addresses: Default::default(),
            signaling_port: 4000,
            protocol_version: 1,
            last_seen: std::time::SystemTime::UNIX_EPOCH,
            online: true,
            known: false,
            signed: false,
        }
    }

    fn gone(n: u32) -> PeerChange {
        PeerChange::Gone { device_id: peer(n, "").device_id, display_name: String::new(), reason: GoneReason::Goodbye }
    }

    #[test]
    fn a_lan_of_peers_appears_at_once_and_a_flood_of_changes_is_paced() {
        let start = Instant::now();
        let mut pacer = PeerEventPacer::new(start);
        for n in 0..BURST as u32 {
            assert!(pacer.offer(PeerChange::Appeared(peer(n, "p")), start).is_some(), "peer {n}");
        }
        assert_eq!(pacer.next_release(), None);

        // The burst is spent: the next change waits a twentieth of a second.
        assert_eq!(pacer.offer(PeerChange::Changed(peer(0, "renamed")), start), None);
        let turn = pacer.next_release().unwrap();
        assert_eq!(turn, start + Duration::from_secs_f64(1.0 / PER_SECOND));
        assert_eq!(pacer.release(turn - Duration::from_millis(1)), vec![]);
        assert_eq!(pacer.release(turn), vec![PeerChange::Changed(peer(0, "renamed"))]);
        assert_eq!(pacer.held(), 1);

        // A second of a flood: 20 changes pass in it, whatever was offered.
        let mut published = 0;
        for ms in 0..1000u64 {
            let now = turn + Duration::from_millis(ms);
            for n in 0..10u32 {
                published += usize::from(pacer.offer(PeerChange::Changed(peer(n, &format!("{ms}"))), now).is_some());
            }
            published += pacer.release(now).len();
        }
        assert!((19..=20).contains(&published), "{published}");
    }

    #[test]
    fn the_changes_of_a_peer_that_waits_merge_into_where_it_ended_up() {
        let start = Instant::now();
        let mut pacer = PeerEventPacer::new(start);
        for n in 0..BURST as u32 {
            pacer.offer(PeerChange::Appeared(peer(1000 + n, "filler")), start);
        }
        // Appeared then renamed: one appearance, with the new name.
        pacer.offer(PeerChange::Appeared(peer(1, "one")), start);
        pacer.offer(PeerChange::Changed(peer(1, "uno")), start);
        // Appeared then gone: nothing.
        pacer.offer(PeerChange::Appeared(peer(2, "two")), start);
        pacer.offer(gone(2), start);
        // Already known (appeared in the burst), gone, then back: a change.
        pacer.offer(gone(1000), start);
        pacer.offer(PeerChange::Appeared(peer(1000, "back")), start);
        // Renamed, then gone: gone.
        pacer.offer(PeerChange::Changed(peer(1001, "x")), start);
        pacer.offer(gone(1001), start);

        let later = start + Duration::from_secs(10);
        assert_eq!(
            pacer.release(later),
            vec![PeerChange::Appeared(peer(1, "uno")), PeerChange::Changed(peer(1000, "back")), gone(1001)]
        );
        assert_eq!(pacer.next_release(), None);
        assert_eq!(pacer.held(), 8);
    }
}
