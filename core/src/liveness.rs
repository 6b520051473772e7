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
//!   (500 ms for long known-answer lists), so by the RFC the answer to the
//!   second can come 2.5 s after the first query; the timeout leaves a second
//!   more for a responder on a busy host (python-zeroconf's answer, held back a
//!   second because it had just multicast the record for the other daemon's
//!   query, missed 2.5 s once in CI, and the peer showed offline).
//! - **Requery**: a peer that mDNS forgets (no answer to a verification) may be
//!   behind a link that dropped without any interface noticing (a switch, an
//!   access point). The LAN is asked again ([`ptr_query`], sent by the task) at
//!   once, then 1 s, 2 s, 4 s… apart, doubling (up to an hour), as RFC 6762 §5.2
//!   asks of a continuing query; a new loss starts over, never sooner than
//!   [`REQUERY_SPACING`] after the last query, and the queries stop once every
//!   peer is online again or forgotten.
//! - **Probes**: the doubling leaves gaps of 16 s, 32 s… while a lost peer is
//!   most likely to return (a switch or access point that rebooted). So for its
//!   first [`PROBE_WINDOW`] offline, each lost peer is also asked directly: the
//!   same question sent by unicast to port 5353 of its last addresses every
//!   [`PROBE_INTERVAL`] (RFC 6762 §5.5). That is one small packet a second to
//!   one host, not to the group, so the multicast pacing does not bind it; a
//!   responder answers it like any query from port 5353, by multicast, and every
//!   cache on the LAN (ours included) learns the peer is back. At most
//!   [`MAX_PROBED`] peers are probed at once, the most recently lost: a LAN that
//!   loses 500 fake peers does not make us spray a victim's address.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::vocab::DeviceId;

/// How often a verification round starts.
pub const ROUND: Duration = Duration::from_secs(4);
/// Peers verified per round, in turn: however many adverts a LAN floods us with,
/// our own queries stay at a few a second.
pub const VERIFY_PER_ROUND: usize = 8;
/// How long a peer has to answer a verification (mdns-sd asks twice meanwhile).
/// A vanished peer shows offline at most [`ROUND`] plus this after it went.
pub const VERIFY_TIMEOUT: Duration = Duration::from_millis(3500);
/// The least time between two requeries of the LAN, and the first interval.
pub const REQUERY_SPACING: Duration = Duration::from_secs(1);
/// The longest interval between requeries (RFC 6762 §5.2).
pub const REQUERY_MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// How often a lost peer is probed directly.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long after its loss a peer is probed: outages of a switch, an access
/// point or a Wi-Fi roam are shorter.
pub const PROBE_WINDOW: Duration = Duration::from_secs(60);
/// The most peers probed at once.
pub const MAX_PROBED: usize = 8;
/// The most addresses probed per peer.
pub const MAX_PROBED_ADDRESSES: usize = 4;

/// A peer being probed.
#[derive(Debug)]
struct Lost {
    device_id: DeviceId,
    addresses: Vec<IpAddr>,
    since: Instant,
}

/// The liveness schedule of one discovery task.
#[derive(Debug, Default)]
pub struct Liveness {
    /// Where the next round starts among the online instances.
    next_to_verify: usize,
    /// When the LAN was last requeried.
    last_requery: Option<Instant>,
    /// When it is to be requeried next, while a peer is missing.
    next_requery: Option<Instant>,
    /// The interval after the next requery.
    interval: Duration,
    /// Lost peers still probed, the most recently lost last.
    probed: Vec<Lost>,
    /// When they are probed next.
    next_probe: Option<Instant>,
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

    /// A peer last seen at `addresses` (those on our links first: the task
    /// orders them) went offline (mDNS forgot it) at `now`: ask the LAN again, at once and
    /// then at a doubling interval, and probe the peer from a second on.
    pub fn peer_lost(&mut self, device_id: DeviceId, addresses: impl IntoIterator<Item = IpAddr>, now: Instant) {
        let earliest = self.last_requery.map_or(now, |last| (last + REQUERY_SPACING).max(now));
        self.next_requery = Some(self.next_requery.map_or(earliest, |next| next.min(earliest)));
        self.interval = REQUERY_SPACING;

        self.probed.retain(|lost| lost.device_id != device_id);
        let addresses: Vec<IpAddr> = addresses.into_iter().take(MAX_PROBED_ADDRESSES).collect();
        if addresses.is_empty() {
            return;
        }
        if self.probed.len() == MAX_PROBED {
            self.probed.remove(0);
        }
        self.probed.push(Lost { device_id, addresses, since: now });
        self.next_probe.get_or_insert(now + PROBE_INTERVAL);
    }

    /// A peer is online again, or gone for good: no more probes for it.
    pub fn peer_back(&mut self, device_id: &DeviceId) {
        self.probed.retain(|lost| &lost.device_id != device_id);
        if self.probed.is_empty() {
            self.next_probe = None;
        }
    }

    /// Every peer is online again: no more requeries or probes.
    pub fn all_online(&mut self) {
        self.next_requery = None;
        self.probed.clear();
        self.next_probe = None;
    }

    /// When the next requery or probe is due, while a peer is missing.
    pub fn ask_at(&self) -> Option<Instant> {
        match (self.next_requery, self.next_probe) {
            (Some(requery), Some(probe)) => Some(requery.min(probe)),
            (requery, probe) => requery.or(probe),
        }
    }

    /// Whether to requery now; if so, it counts as sent and the next is scheduled.
    pub fn requery_due(&mut self, now: Instant) -> bool {
        let due = self.next_requery.is_some_and(|next| now >= next);
        if due {
            self.last_requery = Some(now);
            self.next_requery = Some(now + self.interval);
            self.interval = (self.interval * 2).min(REQUERY_MAX_INTERVAL);
        }
        due
    }

    /// The addresses to probe now (none when no probe is due); the next probe
    /// is scheduled, and peers lost longer than [`PROBE_WINDOW`] ago are no
    /// longer probed.
    pub fn probes_due(&mut self, now: Instant) -> Vec<IpAddr> {
        if self.next_probe.is_none_or(|next| now < next) {
            return Vec::new();
        }
        self.probed.retain(|lost| now.saturating_duration_since(lost.since) < PROBE_WINDOW);
        self.next_probe = (!self.probed.is_empty()).then_some(now + PROBE_INTERVAL);
        // Peers that claim one address get one probe there.
        let mut addresses: Vec<IpAddr> = Vec::new();
        for &address in self.probed.iter().flat_map(|lost| &lost.addresses) {
            if !addresses.contains(&address) {
                addresses.push(address);
            }
        }
        addresses
    }
}

/// The mDNS question "which instances of `service` are there?" (a PTR query).
pub fn ptr_query(service: &str) -> Vec<u8> {
    mdns_query(service, 12)
}

/// An mDNS query for `name`'s records of type `qtype` (RFC 6762 §5 and §18: ID 0,
/// no flags, one question, unicast-response bit clear so that answers are
/// multicast and every cache on the LAN hears them).
pub fn mdns_query(name: &str, qtype: u16) -> Vec<u8> {
    let mut packet = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    packet.extend(dns_name(name));
    packet.extend(qtype.to_be_bytes());
    packet.extend(1u16.to_be_bytes()); // class IN
    packet
}

/// `name` in DNS wire form (labels, uncompressed; a trailing dot or none).
pub fn dns_name(name: &str) -> Vec<u8> {
    let mut wire = Vec::new();
    for label in name.split('.').filter(|label| !label.is_empty()) {
        wire.push(label.len() as u8);
        wire.extend(label.as_bytes());
    }
    wire.push(0);
    wire
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seed: &str) -> DeviceId {
        DeviceId::from_certificate_der(seed.as_bytes())
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

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
    fn a_loss_requeries_at_once_then_at_a_doubling_interval_until_all_are_back() {
        let start = Instant::now();
        let after = |secs: u64| start + Duration::from_secs(secs);
        let mut liveness = Liveness::new();
        assert_eq!(liveness.ask_at(), None, "nothing lost, nothing to ask");
        assert!(!liveness.requery_due(start));

        liveness.peer_lost(id("bob"), [], start);
        assert_eq!(liveness.ask_at(), Some(start));
        let mut sent = Vec::new();
        for secs in 0..20 {
            if liveness.requery_due(after(secs)) {
                sent.push(secs);
            }
        }
        assert_eq!(sent, [0, 1, 3, 7, 15]);

        // Another loss starts over, a second after the last query at the soonest.
        liveness.peer_lost(id("carol"), [], after(15));
        assert_eq!(liveness.ask_at(), Some(after(16)));
        assert!(liveness.requery_due(after(16)));
        assert_eq!(liveness.ask_at(), Some(after(17)));

        // Everyone is back: quiet.
        liveness.all_online();
        assert_eq!(liveness.ask_at(), None);
        assert!(!liveness.requery_due(after(100)));
    }

    #[test]
    fn the_requery_interval_stops_doubling_at_an_hour() {
        let start = Instant::now();
        let mut liveness = Liveness::new();
        liveness.peer_lost(id("bob"), [], start);
        let mut now = start;
        let mut last = start;
        let mut intervals = Vec::new();
        while intervals.len() < 15 {
            now = liveness.ask_at().unwrap();
            assert!(liveness.requery_due(now));
            intervals.push(now - last);
            last = now;
        }
        assert_eq!(intervals[1], REQUERY_SPACING);
        assert_eq!(*intervals.last().unwrap(), REQUERY_MAX_INTERVAL);
        assert!(now > start);
    }

    #[test]
    fn a_lost_peer_is_probed_every_second_for_a_minute_until_it_is_back() {
        let start = Instant::now();
        let mut liveness = Liveness::new();
        liveness.peer_lost(id("bob"), [ip(2), ip(3)], start);
        // The LAN is asked at once; bob's addresses a second later, and every
        // second after that.
        assert_eq!(liveness.ask_at(), Some(start));
        assert!(liveness.requery_due(start));
        assert!(liveness.probes_due(start).is_empty());
        assert_eq!(liveness.ask_at(), Some(start + PROBE_INTERVAL));
        let mut probed = 0;
        let mut now = start;
        while let Some(next) = liveness.ask_at() {
            now = next;
            liveness.requery_due(now);
            let addresses = liveness.probes_due(now);
            if !addresses.is_empty() {
                assert_eq!(addresses, [ip(2), ip(3)]);
                probed += 1;
            }
            if now > start + PROBE_WINDOW * 2 {
                break;
            }
        }
        // Probed through the window, then only the doubling requeries remain.
        assert_eq!(probed, PROBE_WINDOW.as_secs() - 1);
        assert!(liveness.ask_at().is_some_and(|next| next > start + PROBE_WINDOW * 2));
        assert!(liveness.probes_due(now + PROBE_INTERVAL).is_empty());

        // Carol is lost and comes back: her probes stop.
        liveness.peer_lost(id("carol"), [ip(4)], now);
        assert_eq!(liveness.probes_due(now + PROBE_INTERVAL), [ip(4)]);
        liveness.peer_back(&id("carol"));
        assert!(liveness.probes_due(now + PROBE_INTERVAL * 2).is_empty());
        liveness.all_online();
        assert_eq!(liveness.ask_at(), None);
    }

    #[test]
    fn only_the_most_recently_lost_peers_are_probed() {
        let start = Instant::now();
        let mut liveness = Liveness::new();
        for n in 0..MAX_PROBED + 2 {
            let many = (0..10).map(|last| IpAddr::from([10, 0, n as u8, last]));
            liveness.peer_lost(id(&n.to_string()), many, start);
        }
        // A peer lost again moves to the back of the line, once.
        liveness.peer_lost(id("5"), [ip(5)], start);
        liveness.peer_lost(id("nowhere"), [], start);
        let probed = liveness.probes_due(start + PROBE_INTERVAL);
        let mut unique = probed.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), probed.len(), "each address once");
        assert_eq!(probed.len(), (MAX_PROBED - 1) * MAX_PROBED_ADDRESSES + 1);
        assert!(!probed.contains(&IpAddr::from([10, 0, 0, 0])), "the first lost made room");
        assert!(!probed.contains(&IpAddr::from([10, 0, 1, 0])));
        assert_eq!(probed.last(), Some(&ip(5)));
    }

    #[test]
    fn the_ptr_query_is_one_question_for_the_service() {
        let packet = ptr_query("_voicelink._udp.local.");
        assert_eq!(packet[..12], [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&packet[12..23], b"\x0a_voicelink");
        assert_eq!(&packet[packet.len() - 11..], b"\x05local\x00\x00\x0c\x00\x01");
    }
}
