//! The table of peers seen on the LAN. Pure: mDNS observations and the time go in,
//! changes to announce come out, so merging and expiry are tested without a network.
//!
//! What an advert may change depends on whether it is signed (the discovery task
//! checks the signature and says so): once a device's advert was signed, only a
//! signed advert at least as new changes its name, port or addresses, takes its
//! mDNS instance, or says it is leaving; an unsigned or older one is ignored (a
//! neighbour cannot forge or replay one). A device leaves the table by its `bye`
//! advert, or by staying offline past the retention time. mDNS forgetting an instance (records with TTL 0, which anyone
//! can forge, or a failed liveness check) only takes the peer offline; the
//! discovery task then asks the LAN again, and a device still there answers.
//! Old, unsigned peers work as before, marked as such ([`PeerRecord::signed`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use crate::advert::Advert;
use crate::vocab::DeviceId;
pub use crate::vocab::PeerRecord;

/// Why a peer left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneReason {
    /// It said goodbye.
    Goodbye,
    /// It stayed offline longer than the retention time.
    Expired,
}

/// A change to announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// A peer not in the table before.
    Appeared(PeerRecord),
    /// Something other than `last_seen` changed (name, addresses, port, online).
    Changed(PeerRecord),
    /// The peer left the table.
    Gone {
        /// Who.
        device_id: DeviceId,
        /// Its last name, for messages.
        display_name: String,
        /// Why.
        reason: GoneReason,
    },
}

/// Why an instance stopped advertising a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    /// The device said it leaves (`bye`).
    Goodbye,
    /// mDNS forgot the instance, or it now advertises another device.
    Lost,
}

#[derive(Debug)]
struct Entry {
    record: PeerRecord,
    /// The time of the newest signed advert, once one was seen.
    signed_at: Option<u64>,
    /// mDNS instance full name → the addresses it resolved to.
    instances: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Set while offline.
    offline_since: Option<Instant>,
}

impl Entry {
    fn refresh_addresses(&mut self) {
        self.record.addresses = self.instances.values().flatten().copied().collect();
    }
}

/// The most peers the table holds: a LAN flooded with fake adverts costs at
/// most this much memory, events and liveness checks. When full, the peer
/// offline longest makes room; with none offline, a newcomer is turned away.
pub const MAX_PEERS: usize = 256;
/// The most addresses a signed device keeps per instance (see `resolved`).
const MAX_ADDRESSES_PER_INSTANCE: usize = 8;
/// The most mDNS instances one device may be advertised under.
pub const MAX_INSTANCES_PER_PEER: usize = 4;

/// Peers by device ID, with the mDNS instances that advertise them.
#[derive(Debug)]
pub struct PeerTable {
    own_id: DeviceId,
    offline_retention: Duration,
    max_peers: usize,
    peers: BTreeMap<DeviceId, Entry>,
    /// mDNS instance full name → device, to handle removals (which carry no TXT).
    instances: BTreeMap<String, DeviceId>,
    /// Adverts ignored because the table was full, in all.
    turned_away: u64,
    /// Adverts ignored as forged or replayed, in all.
    disbelieved: u64,
    /// Signed devices no longer in the table → the time of their newest signed
    /// advert, so a replay or forgery does not bring them back.
    departed: BTreeMap<DeviceId, u64>,
}

/// Departed signed devices remembered.
const MAX_DEPARTED: usize = 256;

/// The instance label of an mDNS full name (`MFZWI3D._voicelink._udp.local.`).
fn instance_of(fullname: &str) -> &str {
    fullname.split('.').next().unwrap_or_default()
}

impl PeerTable {
    /// An empty table that ignores `own_id` and forgets peers offline longer than
    /// `offline_retention`.
    pub fn new(own_id: DeviceId, offline_retention: Duration) -> Self {
        Self::with_capacity(own_id, offline_retention, MAX_PEERS)
    }

    /// As [`PeerTable::new`], holding at most `max_peers` peers.
    pub fn with_capacity(own_id: DeviceId, offline_retention: Duration, max_peers: usize) -> Self {
        PeerTable {
            own_id,
            offline_retention,
            max_peers,
            peers: BTreeMap::new(),
            instances: BTreeMap::new(),
            turned_away: 0,
            disbelieved: 0,
            departed: BTreeMap::new(),
        }
    }

    /// How many adverts were ignored because the table was full, in all (the
    /// discovery task logs when this grows).
    pub fn turned_away(&self) -> u64 {
        self.turned_away
    }

    /// How many adverts were ignored as forged or replayed (unsigned or older
    /// than what a signed device last said), in all.
    pub fn disbelieved(&self) -> u64 {
        self.disbelieved
    }

    /// Whether an advert for `device` under `instance` fits: a new peer needs a
    /// place (the peer offline longest gives up its own, announced in
    /// `changes`), a new instance of a known peer needs to be under the limit.
    fn fits(&mut self, device: DeviceId, instance: &str, changes: &mut Vec<PeerChange>) -> bool {
        if let Some(entry) = self.peers.get(&device) {
            return entry.instances.contains_key(instance) || entry.instances.len() < MAX_INSTANCES_PER_PEER;
        }
        if self.peers.len() < self.max_peers {
            return true;
        }
        let longest_offline = self.peers.iter().filter_map(|(id, e)| e.offline_since.map(|at| (at, *id))).min();
        let Some((_, leaving)) = longest_offline else { return false };
        if let Some(entry) = self.remove(&leaving) {
            self.instances.retain(|_, id| *id != leaving);
            changes.push(PeerChange::Gone {
                device_id: leaving,
                display_name: entry.record.display_name,
                reason: GoneReason::Expired,
            });
        }
        true
    }

    /// Whether an advert for `device` under `instance`, signed (and checked)
    /// at `signed_at` or not at all, may change the table.
    fn believed(&self, device: DeviceId, instance: &str, signed_at: Option<u64>) -> bool {
        // A signed device's instance is never taken by another device, and a
        // signed advert counts only under its device's own instance name (the
        // name is not signed: a replay under other names would plant addresses).
        let holder = self.instances.get(instance).filter(|holder| **holder != device);
        if holder.is_some_and(|holder| self.peers.get(holder).is_some_and(|e| e.signed_at.is_some())) {
            return false;
        }
        if signed_at.is_some() && !instance_of(instance).eq_ignore_ascii_case(&device.short()) {
            return false;
        }
        // Once signed, never an unsigned advert for it, nor an older one; once
        // it has left, only a newer one (its own return) brings it back.
        let newest = match (self.peers.get(&device), self.departed.get(&device)) {
            (Some(entry), _) => entry.signed_at,
            (None, Some(left_at)) => Some(left_at.saturating_add(1)),
            (None, None) => None,
        };
        match (signed_at, newest) {
            (None, Some(_)) => false,
            (Some(at), Some(newest)) => at >= newest,
            _ => true,
        }
    }

    /// Removes a peer, remembering how new its last signed advert was.
    fn remove(&mut self, device: &DeviceId) -> Option<Entry> {
        let entry = self.peers.remove(device)?;
        if let Some(at) = entry.signed_at {
            if self.departed.len() >= MAX_DEPARTED
                && let Some(oldest) = self.departed.iter().min_by_key(|(_, at)| **at).map(|(id, _)| *id)
            {
                self.departed.remove(&oldest);
            }
            self.departed.insert(*device, at);
        }
        Some(entry)
    }

    /// An instance resolved (or re-resolved) to `advert` at `addresses`;
    /// `signed_at` is the time of its proof when the signature checked out.
    pub fn resolved(
        &mut self,
        instance: &str,
        advert: &Advert,
        signed_at: Option<u64>,
        addresses: impl IntoIterator<Item = IpAddr>,
        now: Instant,
        wall_now: SystemTime,
    ) -> Vec<PeerChange> {
        if advert.device_id == self.own_id || !self.believed(advert.device_id, instance, signed_at) {
            if advert.device_id != self.own_id {
                self.disbelieved += 1;
            }
            return Vec::new();
        }
        if advert.leaving {
            // From the instance it holds, or, while it is offline (holding
            // none: mDNS forgot them), from wherever it says goodbye now.
            let holds = self.instances.get(instance) == Some(&advert.device_id);
            let offline = self.peers.get(&advert.device_id).is_some_and(|e| e.instances.is_empty());
            if !holds && !offline {
                return Vec::new();
            }
            if let Some(entry) = self.peers.get_mut(&advert.device_id) {
                entry.signed_at = entry.signed_at.max(signed_at);
            }
            if holds {
                self.instances.remove(instance);
            }
            return self.detach(instance, advert.device_id, Removal::Goodbye, now).into_iter().collect();
        }
        let mut changes = Vec::new();
        if !self.fits(advert.device_id, instance, &mut changes) {
            self.turned_away += 1;
            return changes;
        }
        // The instance may have moved to another device ID (a reinstall): detach it.
        if let Some(previous) = self.instances.insert(instance.to_owned(), advert.device_id)
            && previous != advert.device_id
        {
            changes.extend(self.detach(instance, previous, Removal::Lost, now));
        }
        let addresses: BTreeSet<IpAddr> = addresses.into_iter().collect();
        let change = match self.peers.get_mut(&advert.device_id) {
            None => {
                let record = PeerRecord {
                    device_id: advert.device_id,
                    display_name: advert.display_name.clone(),
                    addresses: addresses.clone(),
                    signaling_port: advert.signaling_port,
                    protocol_version: advert.protocol_version,
                    last_seen: wall_now,
                    online: true,
                    known: false,
                    signed: signed_at.is_some(),
                };
                let entry = Entry {
                    record: record.clone(),
                    signed_at,
                    instances: BTreeMap::from([(instance.to_owned(), addresses)]),
                    offline_since: None,
                };
                self.peers.insert(advert.device_id, entry);
                Some(PeerChange::Appeared(record))
            }
            Some(entry) => {
                let before = entry.record.clone();
                // mDNS addresses are not signed: a neighbour can answer for a
                // signed device's host name. So a signed device keeps the
                // addresses it had beside the new ones (a dial tries them all).
                let kept = entry.instances.get(instance).filter(|_| signed_at.is_some());
                let addresses = match kept {
                    Some(kept) => {
                        let room = MAX_ADDRESSES_PER_INSTANCE.saturating_sub(kept.len());
                        kept.iter().copied().chain(addresses.difference(kept).copied().take(room)).collect()
                    }
                    None => addresses,
                };
                entry.instances.insert(instance.to_owned(), addresses);
                entry.refresh_addresses();
                let record = &mut entry.record;
                record.display_name.clone_from(&advert.display_name);
                record.signaling_port = advert.signaling_port;
                record.protocol_version = advert.protocol_version;
                record.online = true;
                record.last_seen = wall_now;
                record.signed = signed_at.is_some();
                entry.signed_at = signed_at.max(entry.signed_at);
                entry.offline_since = None;
                let changed = PeerRecord { last_seen: before.last_seen, ..record.clone() } != before;
                changed.then(|| PeerChange::Changed(record.clone()))
            }
        };
        changes.extend(change);
        changes
    }

    /// mDNS stopped listing an instance: an mDNS goodbye, or no answer to a
    /// liveness check. Either takes the peer offline (when it was its last
    /// instance), never out of the table: a goodbye carries no signature.
    pub fn instance_removed(&mut self, instance: &str, now: Instant) -> Option<PeerChange> {
        let device_id = self.instances.remove(instance)?;
        self.detach(instance, device_id, Removal::Lost, now)
    }

    fn detach(&mut self, instance: &str, device_id: DeviceId, removal: Removal, now: Instant) -> Option<PeerChange> {
        let entry = self.peers.get_mut(&device_id)?;
        entry.instances.remove(instance);
        if !entry.instances.is_empty() {
            // Still reachable through another instance.
            let before = entry.record.addresses.clone();
            entry.refresh_addresses();
            return (entry.record.addresses != before).then(|| PeerChange::Changed(entry.record.clone()));
        }
        match removal {
            Removal::Goodbye => {
                let entry = self.remove(&device_id)?;
                Some(PeerChange::Gone {
                    device_id,
                    display_name: entry.record.display_name,
                    reason: GoneReason::Goodbye,
                })
            }
            Removal::Lost if entry.record.online => {
                entry.record.online = false;
                entry.offline_since = Some(now);
                Some(PeerChange::Changed(entry.record.clone()))
            }
            Removal::Lost => None,
        }
    }

    /// Forgets peers that have been offline longer than the retention time.
    pub fn expire(&mut self, now: Instant) -> Vec<PeerChange> {
        let retention = self.offline_retention;
        let expired: Vec<DeviceId> = self
            .peers
            .iter()
            .filter(|(_, e)| e.offline_since.is_some_and(|since| now.saturating_duration_since(since) >= retention))
            .map(|(id, _)| *id)
            .collect();
        expired
            .into_iter()
            .filter_map(|id| self.remove(&id))
            .map(|entry| PeerChange::Gone {
                device_id: entry.record.device_id,
                display_name: entry.record.display_name,
                reason: GoneReason::Expired,
            })
            .collect()
    }

    /// When `expire` next has work to do.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.peers.values().filter_map(|e| e.offline_since).min().map(|since| since + self.offline_retention)
    }

    /// The mDNS instances of online peers: the ones whose liveness to check.
    pub fn online_instances(&self) -> impl Iterator<Item = &str> {
        self.peers.values().filter(|e| e.record.online).flat_map(|e| e.instances.keys().map(String::as_str))
    }

    /// Every peer.
    pub fn peers(&self) -> impl Iterator<Item = &PeerRecord> {
        self.peers.values().map(|e| &e.record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::PROTOCOL_VERSION;

    const RETENTION: Duration = Duration::from_secs(600);

    fn id(seed: &str) -> DeviceId {
        DeviceId::from_certificate_der(seed.as_bytes())
    }

    fn advert(seed: &str, name: &str) -> Advert {
        Advert {
            protocol_version: PROTOCOL_VERSION,
            device_id: id(seed),
            display_name: name.into(),
            signaling_port: 4000,
            leaving: false,
            proof: None,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    struct Clock(Instant);
    impl Clock {
        fn now(&self) -> Instant {
            self.0
        }
        fn advance(&mut self, by: Duration) {
            self.0 += by;
        }
    }

    fn table() -> (PeerTable, Clock) {
        (PeerTable::new(id("me"), RETENTION), Clock(Instant::now()))
    }

    #[test]
    fn once_signed_only_a_newer_signed_advert_changes_a_peer_or_says_it_left() {
        let (mut t, clock) = table();
        let wall = SystemTime::now();
        let now = clock.now();
        let bob = advert("b", "bob");
        let home = format!("{}._voicelink._udp.local.", id("b").short());
        let home = home.as_str();
        assert!(
            matches!(&t.resolved(home, &bob, Some(10), [ip("10.0.0.2")], now, wall)[..], [PeerChange::Appeared(p)] if p.signed)
        );

        // Forged: another port, unsigned; a replayed older signed advert; a bye.
        let forged = Advert { signaling_port: 6666, ..bob.clone() };
        assert_eq!(t.resolved(home, &forged, None, [ip("10.0.0.66")], now, wall), vec![]);
        assert_eq!(t.resolved(home, &forged, Some(9), [ip("10.0.0.66")], now, wall), vec![]);
        let bye = Advert { leaving: true, ..bob.clone() };
        assert_eq!(t.resolved(home, &bye, None, [], now, wall), vec![]);
        assert_eq!(t.resolved(home, &bye, Some(9), [], now, wall), vec![]);
        // Another device taking bob's instance, unsigned or signed by its own key.
        assert_eq!(t.resolved(home, &advert("x", "bob"), None, [ip("10.0.0.66")], now, wall), vec![]);
        assert_eq!(t.resolved(home, &advert("x", "bob"), Some(99), [ip("10.0.0.66")], now, wall), vec![]);
        // Bob's current advert replayed under another instance name.
        assert_eq!(
            t.resolved("elsewhere._voicelink._udp.local.", &bob, Some(10), [ip("10.0.0.66")], now, wall),
            vec![]
        );
        assert_eq!(t.disbelieved(), 7);
        let peer = t.peers().find(|p| p.device_id == id("b")).cloned().unwrap();
        assert_eq!((peer.signaling_port, peer.addresses.len(), peer.online), (4000, 1, true), "nothing forged stuck");

        // Bob's own signed advert, resolved at planted addresses (mDNS addresses
        // are not signed): his own address stays beside them, up to the limit.
        let planted: Vec<IpAddr> = (60..70).map(|n| ip(&format!("10.0.0.{n}"))).collect();
        t.resolved(home, &bob, Some(10), planted, now, wall);
        let peer = t.peers().find(|p| p.device_id == id("b")).cloned().unwrap();
        assert!(peer.addresses.contains(&ip("10.0.0.2")) && peer.addresses.len() == MAX_ADDRESSES_PER_INSTANCE);

        // Bob himself: moved, then leaving, each newer and signed.
        let moved = Advert { signaling_port: 5000, ..bob.clone() };
        let changed = t.resolved(home, &moved, Some(11), [ip("10.0.0.2")], now, wall);
        assert!(matches!(&changed[..], [PeerChange::Changed(p)] if p.signaling_port == 5000));
        let gone = t.resolved(home, &Advert { leaving: true, ..moved.clone() }, Some(12), [], now, wall);
        assert!(matches!(&gone[..], [PeerChange::Gone { reason: GoneReason::Goodbye, .. }]), "{gone:?}");
        // Gone, and not brought back by a replay or a forgery.
        assert_eq!(t.resolved(home, &moved, Some(11), [ip("10.0.0.66")], now, wall), vec![]);
        assert_eq!(t.resolved(home, &moved, None, [ip("10.0.0.66")], now, wall), vec![]);
        assert!(matches!(
            &t.resolved(home, &moved, Some(13), [ip("10.0.0.2")], now, wall)[..],
            [PeerChange::Appeared(_)]
        ));
    }

    #[test]
    fn a_flood_of_adverts_is_capped_and_the_longest_offline_makes_room() {
        let mut clock = Clock(Instant::now());
        let mut t = PeerTable::with_capacity(id("me"), RETENTION, 3);
        let wall = SystemTime::now();
        for n in 0..3 {
            let seed = format!("p{n}");
            assert_eq!(t.resolved(&seed, &advert(&seed, "x"), None, [], clock.now(), wall).len(), 1);
        }
        // Full of online peers: a fourth is turned away, and counted.
        assert_eq!(t.resolved("p3", &advert("p3", "x"), None, [], clock.now(), wall), vec![]);
        assert_eq!((t.peers().count(), t.turned_away()), (3, 1));

        // Two go offline; the one offline longest gives up its place.
        t.instance_removed("p1", clock.now());
        clock.advance(Duration::from_secs(1));
        t.instance_removed("p2", clock.now());
        let changes = t.resolved("p3", &advert("p3", "x"), None, [], clock.now(), wall);
        assert!(
            matches!(&changes[..], [PeerChange::Gone { device_id, reason: GoneReason::Expired, .. }, PeerChange::Appeared(_)] if *device_id == id("p1")),
            "{changes:?}"
        );

        // One device under many instance names: only the first few count.
        for n in 0..10 {
            t.resolved(&format!("p0-{n}"), &advert("p0", "x"), None, [ip(&format!("10.0.0.{n}"))], clock.now(), wall);
        }
        let p0 = t.peers().find(|p| p.device_id == id("p0")).map(|p| p.addresses.len());
        assert_eq!(p0, Some(MAX_INSTANCES_PER_PEER - 1), "p0 itself, then three more instances");
    }

    #[test]
    fn a_new_peer_appears_and_a_repeat_sighting_changes_nothing() {
        let (mut t, clock) = table();
        let wall = SystemTime::UNIX_EPOCH;
        let change = t.resolved("a._voicelink", &advert("a", "alice"), None, [ip("10.0.0.1")], clock.now(), wall);
        let [PeerChange::Appeared(record)] = &change[..] else { panic!("{change:?}") };
        assert_eq!(record.display_name, "alice");
        assert!(record.online && !record.known);

        let later = wall + Duration::from_secs(5);
        assert_eq!(
            t.resolved("a._voicelink", &advert("a", "alice"), None, [ip("10.0.0.1")], clock.now(), later),
            vec![]
        );
        assert_eq!(t.peers().next().unwrap().last_seen, later, "last_seen still moves");
    }

    #[test]
    fn the_daemon_never_lists_itself() {
        let (mut t, clock) = table();
        assert_eq!(t.resolved("me._voicelink", &advert("me", "me"), None, [], clock.now(), SystemTime::now()), vec![]);
        assert_eq!(t.peers().count(), 0);
    }

    #[test]
    fn a_rename_or_new_port_is_a_change() {
        let (mut t, clock) = table();
        t.resolved("a", &advert("a", "alice"), None, [], clock.now(), SystemTime::now());
        let renamed = t.resolved("a", &advert("a", "alice-laptop"), None, [], clock.now(), SystemTime::now());
        assert!(matches!(&renamed[..], [PeerChange::Changed(r)] if r.display_name == "alice-laptop"));
        let moved = Advert { signaling_port: 5000, ..advert("a", "alice-laptop") };
        let changed = t.resolved("a", &moved, None, [], clock.now(), SystemTime::now());
        assert!(matches!(&changed[..], [PeerChange::Changed(r)] if r.signaling_port == 5000));
    }

    #[test]
    fn one_device_on_two_interfaces_or_instances_is_one_peer() {
        let (mut t, clock) = table();
        t.resolved("a", &advert("a", "alice"), None, [ip("10.0.0.1"), ip("fd00::1")], clock.now(), SystemTime::now());
        let second =
            t.resolved("a-2", &advert("a", "alice"), None, [ip("192.168.1.5")], clock.now(), SystemTime::now());
        let [PeerChange::Changed(record)] = &second[..] else { panic!("{second:?}") };
        assert_eq!(record.addresses, BTreeSet::from([ip("10.0.0.1"), ip("fd00::1"), ip("192.168.1.5")]));
        assert_eq!(t.peers().count(), 1);

        // Losing one instance only drops its addresses; the peer stays online.
        let change = t.instance_removed("a-2", clock.now());
        let Some(PeerChange::Changed(record)) = change else { panic!("{change:?}") };
        assert!(record.online);
        assert_eq!(record.addresses, BTreeSet::from([ip("10.0.0.1"), ip("fd00::1")]));
    }

    #[test]
    fn an_mdns_goodbye_only_takes_a_peer_offline_as_anyone_can_forge_one() {
        let (mut t, clock) = table();
        t.resolved("a", &advert("a", "alice"), None, [], clock.now(), SystemTime::now());
        let change = t.instance_removed("a", clock.now());
        assert!(matches!(change, Some(PeerChange::Changed(ref r)) if !r.online), "{change:?}");
        assert_eq!(t.instance_removed("a", clock.now()), None, "a second goodbye is ignored");
        // Alice answers the requery: online again.
        let back = t.resolved("a", &advert("a", "alice"), None, [], clock.now(), SystemTime::now());
        assert!(matches!(&back[..], [PeerChange::Changed(r)] if r.online), "{back:?}");
    }

    #[test]
    fn a_leaving_announcement_is_a_goodbye() {
        let (mut t, clock) = table();
        t.resolved("a", &advert("a", "alice"), None, [], clock.now(), SystemTime::now());
        let leaving = Advert { leaving: true, ..advert("a", "alice") };
        let change = t.resolved("a", &leaving, None, [], clock.now(), SystemTime::now());
        assert!(matches!(&change[..], [PeerChange::Gone { reason: GoneReason::Goodbye, .. }]), "{change:?}");
        assert_eq!(t.instance_removed("a", clock.now()), None, "the mDNS goodbye that follows is a no-op");

        // Bob was offline (a liveness check missed) when he said he leaves.
        t.resolved("b", &advert("b", "bob"), None, [], clock.now(), SystemTime::now());
        t.instance_removed("b", clock.now());
        let leaving = Advert { leaving: true, ..advert("b", "bob") };
        let change = t.resolved("b", &leaving, None, [], clock.now(), SystemTime::now());
        assert!(matches!(&change[..], [PeerChange::Gone { reason: GoneReason::Goodbye, .. }]), "{change:?}");
        // And online, a bye under another device's instance changes nothing.
        t.resolved("c", &advert("c", "carol"), None, [], clock.now(), SystemTime::now());
        t.resolved("d", &advert("d", "dave"), None, [], clock.now(), SystemTime::now());
        assert_eq!(
            t.resolved(
                "d",
                &Advert { leaving: true, ..advert("c", "carol") },
                None,
                [],
                clock.now(),
                SystemTime::now()
            ),
            vec![]
        );
        assert_eq!(t.peers().filter(|p| p.online).count(), 2);
    }

    #[test]
    fn a_lost_peer_goes_offline_then_expires_unless_it_returns() {
        let (mut t, mut clock) = table();
        t.resolved("a", &advert("a", "alice"), None, [], clock.now(), SystemTime::now());
        t.resolved("b", &advert("b", "bob"), None, [], clock.now(), SystemTime::now());
        assert_eq!(t.next_expiry(), None);

        let change = t.instance_removed("a", clock.now());
        assert!(matches!(change, Some(PeerChange::Changed(ref r)) if !r.online), "{change:?}");
        assert_eq!(t.online_instances().collect::<Vec<_>>(), ["b"], "offline peers are not verified");
        assert_eq!(t.next_expiry(), Some(clock.now() + RETENTION));

        let change = t.instance_removed("b", clock.now());
        assert!(matches!(change, Some(PeerChange::Changed(_))));
        clock.advance(Duration::from_secs(1));
        // b comes back before expiry.
        let back = t.resolved("b", &advert("b", "bob"), None, [], clock.now(), SystemTime::now());
        assert!(matches!(&back[..], [PeerChange::Changed(r)] if r.online), "{back:?}");

        clock.advance(RETENTION - Duration::from_secs(2));
        assert_eq!(t.expire(clock.now()), vec![], "not yet");
        clock.advance(Duration::from_secs(1));
        let expired = t.expire(clock.now());
        assert_eq!(
            expired,
            vec![PeerChange::Gone { device_id: id("a"), display_name: "alice".into(), reason: GoneReason::Expired }]
        );
        assert_eq!(t.peers().map(|p| p.display_name.as_str()).collect::<Vec<_>>(), ["bob"]);
        assert_eq!(t.next_expiry(), None);
    }

    #[test]
    fn an_instance_that_changes_device_moves_its_addresses() {
        let (mut t, clock) = table();
        t.resolved("host", &advert("old", "box"), None, [ip("10.0.0.9")], clock.now(), SystemTime::now());
        let change = t.resolved("host", &advert("new", "box"), None, [ip("10.0.0.9")], clock.now(), SystemTime::now());
        let [PeerChange::Changed(old), PeerChange::Appeared(new)] = &change[..] else { panic!("{change:?}") };
        assert!(old.device_id == id("old") && !old.online);
        assert!(new.device_id == id("new") && new.online);
    }

    #[test]
    fn removal_of_an_unknown_instance_is_ignored() {
        let (mut t, clock) = table();
        assert_eq!(t.instance_removed("nobody", clock.now()), None);
    }
}
