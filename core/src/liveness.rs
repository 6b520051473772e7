//! When discovery asks mDNS again whether peers are still there. Pure: the task
//! says what it saw and the time; this says which peers to verify and when to
//! query the LAN anew.
//!
//! mDNS alone notices a peer that vanished without a goodbye only when its records
//! expire (about two minutes), and notices one that came back only at its next
//! announcement or our next query, which mdns-sd spaces out to an hour. So:
//!
//! - **Verification** (RFC 6762 §10.4): every [`ROUND`] a few online peers are
//!   asked to confirm their records. mdns-sd sends the query twice, a second
//!   apart, and an answer has [`VERIFY_TIMEOUT`] to come: responders answer a
//!   repeated question at most once a second and delay answers by up to 120 ms
//!   (500 ms for long known-answer lists), so one of the two is answered in time
//!   even when the record was multicast just before the first.
//! - **Requery**: a peer that mDNS forgets (no answer to a verification, or an
//!   mDNS goodbye, which anyone can forge) may be behind a link that glitched.
//!   The LAN is asked again at once (a PTR query, whose known-answer list keeps
//!   everyone still listed quiet), then at mdns-sd's doubling pace; a new loss
//!   starts that over, never sooner than [`REQUERY_SPACING`] after the last
//!   (RFC 6762 §5.2).

use std::time::{Duration, Instant};

/// How often a verification round starts.
pub const ROUND: Duration = Duration::from_secs(4);
/// Peers verified per round, in turn: however many adverts a LAN floods us with,
/// our own queries stay at a few a second.
pub const VERIFY_PER_ROUND: usize = 8;
/// How long a peer has to answer a verification (mdns-sd asks twice meanwhile).
pub const VERIFY_TIMEOUT: Duration = Duration::from_millis(2500);
/// The least time between two requeries of the LAN.
pub const REQUERY_SPACING: Duration = Duration::from_secs(1);

/// The liveness schedule of one discovery task.
#[derive(Debug, Default)]
pub struct Liveness {
    /// Where the next round starts among the online instances.
    next_to_verify: usize,
    /// When the LAN was last requeried.
    last_requery: Option<Instant>,
    /// Set while a requery is wanted and not yet sent.
    requery_wanted: bool,
}

impl Liveness {
    /// A schedule with nothing under verification.
    pub fn new() -> Self {
        Self::default()
    }

    /// A round starts: which of the `online` instances to verify now (at most
    /// [`VERIFY_PER_ROUND`], taking turns across rounds).
    pub fn round(&mut self, online: &[&str]) -> Vec<String> {
        if online.is_empty() {
            self.next_to_verify = 0;
            return Vec::new();
        }
        let count = online.len().min(VERIFY_PER_ROUND);
        let start = self.next_to_verify % online.len();
        self.next_to_verify = (start + count) % online.len();
        (0..count).map(|n| online[(start + n) % online.len()].to_owned()).collect()
    }

    /// A peer went offline (mDNS forgot it): ask the LAN again.
    pub fn peer_lost(&mut self) {
        self.requery_wanted = true;
    }

    /// When the wanted requery may go out (`now` at the earliest), if one is wanted.
    pub fn requery_at(&self, now: Instant) -> Option<Instant> {
        let earliest = self.last_requery.map_or(now, |last| (last + REQUERY_SPACING).max(now));
        self.requery_wanted.then_some(earliest)
    }

    /// Whether to requery now; if so, it counts as sent.
    pub fn requery_due(&mut self, now: Instant) -> bool {
        let due = self.requery_wanted && self.last_requery.is_none_or(|last| now >= last + REQUERY_SPACING);
        if due {
            self.requery_wanted = false;
            self.last_requery = Some(now);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("P{i}._voicelink._udp.local.")).collect()
    }

    #[test]
    fn rounds_take_turns_and_verify_a_few_at_a_time() {
        let mut liveness = Liveness::new();
        let all = names(VERIFY_PER_ROUND + 3);
        let online: Vec<&str> = all.iter().map(String::as_str).collect();
        let first = liveness.round(&online);
        assert_eq!(first, all[..VERIFY_PER_ROUND]);
        let second = liveness.round(&online);
        // The three left out, then the first ones again.
        assert_eq!(second[..3], all[VERIFY_PER_ROUND..]);
        assert_eq!(second[3..], all[..VERIFY_PER_ROUND - 3]);
        assert!(liveness.round(&[]).is_empty());
    }

    #[test]
    fn a_loss_requeries_at_once_and_losses_in_a_row_no_more_than_once_a_second() {
        let start = Instant::now();
        let mut liveness = Liveness::new();
        assert_eq!(liveness.requery_at(start), None, "nothing lost, nothing to ask");
        assert!(!liveness.requery_due(start));

        liveness.peer_lost();
        assert_eq!(liveness.requery_at(start), Some(start));
        assert!(liveness.requery_due(start));
        assert_eq!(liveness.requery_at(start), None, "sent");

        // Two more losses 100 ms later: one requery, a second after the first.
        let soon = start + Duration::from_millis(100);
        liveness.peer_lost();
        liveness.peer_lost();
        assert_eq!(liveness.requery_at(soon), Some(start + REQUERY_SPACING));
        assert!(!liveness.requery_due(soon));
        assert!(liveness.requery_due(start + REQUERY_SPACING));
        assert!(!liveness.requery_due(start + REQUERY_SPACING * 5), "nothing lost since");

        // Long after, a loss is asked about at once again.
        let later = start + Duration::from_secs(60);
        liveness.peer_lost();
        assert_eq!(liveness.requery_at(later), Some(later));
    }
}
