//! The gate in front of the signaling listener: which new connections may
//! spend a handshake slot. Pure: the listener reports each connection that
//! arrives and each that finishes, with the time; the gate answers.
//!
//! The rules, so that stalled connections (a ClientHello at a byte a second)
//! cannot shut out a real caller:
//! - At most [`AdmissionPolicy::per_source`] handshakes at once from one source
//!   address (IPv4-mapped IPv6 counts as IPv4). Connections beyond it are
//!   closed at once. (Not per IPv6 /64: every host on a LAN shares its /64.)
//! - At most [`AdmissionPolicy::total`] in all. When every slot is taken, the
//!   newcomer still gets one: the oldest handshake of the source holding the
//!   most slots is dropped for it. A real caller's handshake takes a few
//!   milliseconds on a LAN, so what is dropped is nearly always a stalled one.
//! - Each handshake has a deadline (the listener enforces it).
//! - A connection whose TLS is done is parked until its WebSocket upgrade (a
//!   caller may hold it for a later call, docs/PROTOCOL.md §3) and no longer
//!   holds a handshake slot. Parked connections have limits of their own, per
//!   source and in all; one more than the source's limit displaces that
//!   source's oldest parked connection, one more than the total the oldest
//!   parked by the sources parking the most.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;

/// The gate's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionPolicy {
    /// Handshakes at once from one source.
    pub per_source: usize,
    /// Handshakes at once in all.
    pub total: usize,
    /// Parked connections at once from one source.
    pub parked_per_source: usize,
    /// Parked connections at once in all.
    pub parked_total: usize,
}

impl Default for AdmissionPolicy {
    fn default() -> Self {
        // A daemon parks one connection per device it called recently; 16 per
        // source leaves room for many daemons behind one address.
        AdmissionPolicy { per_source: 4, total: 64, parked_per_source: 16, parked_total: 128 }
    }
}

/// Where a connection comes from, as the limits count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source(IpAddr);

impl Source {
    /// The source of a connection from `address` (IPv4-mapped IPv6 counts as
    /// the IPv4 address).
    pub fn of(address: IpAddr) -> Source {
        match address {
            IpAddr::V6(v6) => Source(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)),
            v4 => Source(v4),
        }
    }
}

/// A connection's slot, held from admission until [`Admission::finished`]:
/// a handshake slot, then a parked one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(u64);

/// What to do with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Handshake with it; drop `evict`'s connection first if there is one.
    Yes {
        /// Its slot.
        ticket: Ticket,
        /// A handshake to drop to make room.
        evict: Option<Ticket>,
    },
    /// Close it: its source already holds [`AdmissionPolicy::per_source`] slots.
    SourceFull,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    source: Source,
    since: Instant,
}

/// The handshakes in progress.
#[derive(Debug, Default)]
pub struct Admission {
    policy: AdmissionPolicy,
    pending: BTreeMap<Ticket, Pending>,
    by_source: BTreeMap<Source, usize>,
    parked: BTreeMap<Ticket, Pending>,
    next: u64,
}

impl Admission {
    /// A gate with these limits (each at least 1).
    pub fn new(policy: AdmissionPolicy) -> Self {
        let policy = AdmissionPolicy {
            per_source: policy.per_source.max(1),
            total: policy.total.max(1),
            parked_per_source: policy.parked_per_source.max(1),
            parked_total: policy.parked_total.max(1),
        };
        Admission { policy, ..Admission::default() }
    }

    /// A connection from `address` arrived.
    pub fn arrive(&mut self, address: IpAddr, now: Instant) -> Admit {
        let source = Source::of(address);
        if self.by_source.get(&source).copied().unwrap_or(0) >= self.policy.per_source {
            return Admit::SourceFull;
        }
        let evict = (self.pending.len() >= self.policy.total).then(|| self.victim()).flatten();
        if let Some(victim) = evict {
            self.finished(victim);
        }
        let ticket = Ticket(self.next);
        self.next += 1;
        self.pending.insert(ticket, Pending { source, since: now });
        *self.by_source.entry(source).or_default() += 1;
        Admit::Yes { ticket, evict }
    }

    /// `ticket`'s TLS is done at `now`: its handshake slot is free and it is
    /// parked. Returns a parked connection to drop to make room, if any.
    pub fn park(&mut self, ticket: Ticket, now: Instant) -> Option<Ticket> {
        let source = self.pending.get(&ticket)?.source;
        self.release(ticket);
        self.parked.insert(ticket, Pending { source, since: now });
        let mut by_source: BTreeMap<Source, usize> = BTreeMap::new();
        for parked in self.parked.values() {
            *by_source.entry(parked.source).or_default() += 1;
        }
        let over_source = by_source.get(&source).copied().unwrap_or(0) > self.policy.parked_per_source;
        let most = by_source.values().copied().max().unwrap_or(0);
        let competes = |p: &Pending| {
            if over_source {
                p.source == source
            } else {
                self.parked.len() > self.policy.parked_total && by_source.get(&p.source) == Some(&most)
            }
        };
        let victim = self
            .parked
            .iter()
            .filter(|(_, p)| competes(p))
            .min_by_key(|(ticket, p)| (p.since, **ticket))
            .map(|(ticket, _)| *ticket);
        if let Some(victim) = victim {
            self.parked.remove(&victim);
        }
        victim
    }

    /// The connection is done with (upgraded, failed, timed out or evicted);
    /// its slot is free.
    pub fn finished(&mut self, ticket: Ticket) {
        if self.parked.remove(&ticket).is_none() {
            self.release(ticket);
        }
    }

    fn release(&mut self, ticket: Ticket) {
        let Some(pending) = self.pending.remove(&ticket) else { return };
        if let Some(count) = self.by_source.get_mut(&pending.source) {
            *count -= 1;
            if *count == 0 {
                self.by_source.remove(&pending.source);
            }
        }
    }

    /// Handshakes in progress.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Parked connections.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// The oldest handshake of the source holding the most slots.
    fn victim(&self) -> Option<Ticket> {
        let most = self.by_source.values().copied().max()?;
        self.pending
            .iter()
            .filter(|(_, p)| self.by_source.get(&p.source) == Some(&most))
            .min_by_key(|(ticket, p)| (p.since, **ticket))
            .map(|(ticket, _)| *ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn ticket(admit: Admit) -> Ticket {
        match admit {
            Admit::Yes { ticket, .. } => ticket,
            Admit::SourceFull => panic!("refused"),
        }
    }

    #[test]
    fn one_source_holds_at_most_its_share() {
        let mut gate = Admission::new(AdmissionPolicy { per_source: 2, total: 10, ..AdmissionPolicy::default() });
        let now = Instant::now();
        let first = ticket(gate.arrive(ip("10.0.0.9"), now));
        ticket(gate.arrive(ip("10.0.0.9"), now));
        assert_eq!(gate.arrive(ip("10.0.0.9"), now), Admit::SourceFull);
        assert!(matches!(gate.arrive(ip("10.0.0.2"), now), Admit::Yes { evict: None, .. }), "another host");
        gate.finished(first);
        assert!(matches!(gate.arrive(ip("10.0.0.9"), now), Admit::Yes { .. }), "a slot came free");
    }

    #[test]
    fn ipv6_hosts_on_one_lan_are_separate_sources_and_mapped_ipv4_is_ipv4() {
        assert_ne!(Source::of(ip("fe80::1")), Source::of(ip("fe80::2")), "one /64 is a whole LAN");
        assert_eq!(Source::of(ip("::ffff:10.0.0.9")), Source::of(ip("10.0.0.9")));
    }

    #[test]
    fn when_full_a_newcomer_displaces_the_oldest_handshake_of_the_busiest_source() {
        let mut gate = Admission::new(AdmissionPolicy { per_source: 3, total: 4, ..AdmissionPolicy::default() });
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let stalled: Vec<Ticket> = (0..3).map(|n| ticket(gate.arrive(ip("10.0.0.66"), at(n)))).collect();
        let other = ticket(gate.arrive(ip("10.0.0.7"), at(5)));
        assert_eq!(gate.pending(), 4);

        // A real caller arrives: the attacker's oldest makes room, not the other host.
        let caller = gate.arrive(ip("10.0.0.2"), at(10));
        assert!(matches!(caller, Admit::Yes { evict: Some(victim), .. } if victim == stalled[0]), "{caller:?}");
        assert_eq!(gate.pending(), 4);
        gate.finished(stalled[0]); // the listener reports the eviction: nothing changes
        assert_eq!(gate.pending(), 4);
        let next = gate.arrive(ip("10.0.0.3"), at(11));
        assert!(matches!(next, Admit::Yes { evict: Some(victim), .. } if victim == stalled[1]), "{next:?}");
        gate.finished(other);
        assert_eq!(gate.pending(), 3);
    }

    #[test]
    fn hundreds_of_stalled_connections_never_keep_a_caller_out() {
        let mut gate = Admission::new(AdmissionPolicy::default());
        let start = Instant::now();
        // Many attacking hosts, each at its limit.
        let mut refused = 0;
        for n in 0..200u32 {
            let attacker = IpAddr::from([10, 0, 1, (n % 50) as u8]);
            if gate.arrive(attacker, start + Duration::from_millis(u64::from(n))) == Admit::SourceFull {
                refused += 1;
            }
        }
        assert_eq!(refused, 0, "50 hosts × 4 slots: each arrival fits or displaces an older one");
        assert_eq!(gate.pending(), 64);
        let caller = gate.arrive(ip("10.0.0.2"), start + Duration::from_secs(1));
        assert!(matches!(caller, Admit::Yes { evict: Some(_), .. }), "{caller:?}");
    }

    #[test]
    fn a_parked_connection_frees_its_handshake_slot() {
        let policy = AdmissionPolicy { per_source: 1, total: 10, parked_per_source: 4, parked_total: 10 };
        let mut gate = Admission::new(policy);
        let now = Instant::now();
        let first = ticket(gate.arrive(ip("10.0.0.9"), now));
        assert_eq!(gate.arrive(ip("10.0.0.9"), now), Admit::SourceFull);
        assert_eq!(gate.park(first, now), None);
        assert_eq!((gate.pending(), gate.parked()), (0, 1));
        let second = ticket(gate.arrive(ip("10.0.0.9"), now));
        gate.finished(first);
        assert_eq!((gate.pending(), gate.parked()), (1, 0));
        gate.finished(second);
        assert_eq!(gate.pending(), 0);
        assert_eq!(gate.park(second, now), None, "a finished ticket is not parked");
        assert_eq!(gate.parked(), 0);
    }

    #[test]
    fn parking_beyond_a_limit_displaces_the_oldest_parked_it_competes_with() {
        let policy = AdmissionPolicy { per_source: 10, total: 10, parked_per_source: 2, parked_total: 3 };
        let mut gate = Admission::new(policy);
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut park = |address: &str, ms| {
            let parked = ticket(gate.arrive(ip(address), at(ms)));
            (parked, gate.park(parked, at(ms)))
        };
        let (a1, none) = park("10.0.0.1", 0);
        assert_eq!(none, None);
        let (b1, none) = park("10.0.0.2", 1);
        assert_eq!(none, None);
        let (a2, none) = park("10.0.0.1", 2);
        assert_eq!(none, None);
        // Source .1's third: its own oldest goes, not .2's.
        let (a3, evicted) = park("10.0.0.1", 3);
        assert_eq!(evicted, Some(a1));
        // A fourth in all from a new source: the oldest of all goes.
        // A fourth in all from a new source: the oldest of the source parking the most goes.
        let (c1, evicted) = park("10.0.0.3", 4);
        assert_eq!(evicted, Some(a2));
        let (_, evicted) = park("10.0.0.4", 5);
        assert_eq!(evicted, Some(b1), "one each: the oldest of all");
        assert_eq!(gate.parked(), 3);
        gate.finished(a3);
        gate.finished(c1);
        assert_eq!(gate.parked(), 1);
    }
}
