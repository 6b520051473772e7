//! What a dial target names: a peer from discovery (by name or device ID), or an
//! address to look up (`host:port`, `ID@host:port`). Pure: the peers seen go in,
//! and a lookup is left for the caller to do, away from the registry's loop.

use std::net::{IpAddr, SocketAddr};

use crate::contacts::{Contacts, same_name};
use crate::switchboard::CallError;
use crate::vocab::{DeviceId, PeerRecord, excerpt};

/// The longest dial target: `ID@host:port` with a DNS name of the longest kind
/// (253 bytes) fits with room to spare.
pub const MAX_TARGET_BYTES: usize = 512;

/// A dial target, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A peer discovery knows: its addresses, in order of preference.
    Peer {
        /// Where to reach it.
        addresses: Vec<SocketAddr>,
        /// Who it is.
        device: DeviceId,
        /// Its name, for display.
        name: String,
    },
    /// An address to resolve (DNS), then dial.
    Lookup {
        /// `host:port`.
        address: String,
        /// The device to expect there, when the target named it.
        expected: Option<DeviceId>,
    },
}

/// Turns what the user typed into a target: `ID@host:port`, a device ID, a
/// peer's name (any case, online peers only; a known device's names and alias
/// dial that device, never a stranger advertising them), or `host:port`.
pub fn resolve<'a>(
    target: &str,
    peers: impl IntoIterator<Item = &'a PeerRecord>,
    contacts: &Contacts,
) -> Result<Target, CallError> {
    let target = target.trim();
    if target.len() > MAX_TARGET_BYTES {
        let why = format!("it is {} bytes long; at most {MAX_TARGET_BYTES}", target.len());
        return Err(CallError::BadTarget(excerpt(target), why));
    }
    let bad = |why: String| CallError::BadTarget(target.to_owned(), why);
    if let Some((id, address)) = target.split_once('@') {
        let expected = id.parse::<DeviceId>().map_err(|e| bad(e.to_string()))?;
        return Ok(Target::Lookup { address: address.to_owned(), expected: Some(expected) });
    }
    let peers: Vec<&PeerRecord> = peers.into_iter().collect();
    if let Ok(id) = target.parse::<DeviceId>() {
        let peer = peers.iter().find(|p| p.device_id == id).ok_or_else(|| CallError::UnknownPeer(target.to_owned()))?;
        return Ok(known(peer));
    }
    let online: Vec<&PeerRecord> = peers.iter().copied().filter(|p| p.online).collect();
    let meant = contacts.resolve(target, online.iter().map(|p| (&p.device_id, p.display_name.as_str())));
    let named: Vec<&PeerRecord> = online.iter().copied().filter(|p| meant.contains(&p.device_id)).collect();
    match named.as_slice() {
        [peer] => Ok(known(peer)),
        [] if target.contains(':') => Ok(Target::Lookup { address: target.to_owned(), expected: None }),
        [] if online.iter().any(|p| same_name(&p.display_name, target)) => Err(CallError::NameTaken(target.to_owned())),
        [] => Err(CallError::UnknownPeer(target.to_owned())),
        many => Err(CallError::Ambiguous { name: target.to_owned(), count: many.len() }),
    }
}

fn known(peer: &PeerRecord) -> Target {
    Target::Peer { addresses: addresses(peer), device: peer.device_id, name: peer.display_name.clone() }
}

/// Whether an address a peer gave for a third device (a group call's
/// participant) is worth dialing: a unicast address with a port, and loopback
/// only where the config allows it. Anything else a peer could name only to
/// make us dial where it likes.
pub fn usable_hint(address: &SocketAddr, allow_loopback: bool) -> bool {
    let ip = address.ip();
    address.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && (allow_loopback || !ip.is_loopback())
}

/// Addresses to try for a discovered peer: IPv4 first; IPv6 link-local is left
/// out (it needs an interface scope the records do not carry).
pub fn addresses(peer: &PeerRecord) -> Vec<SocketAddr> {
    let mut addresses: Vec<IpAddr> = peer
        .addresses
        .iter()
        .copied()
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .collect();
    addresses.sort_by_key(|ip| ip.is_ipv6());
    addresses.into_iter().map(|ip| SocketAddr::new(ip, peer.signaling_port)).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::SystemTime;

    use super::*;

    fn peer(byte: u8, name: &str, online: bool) -> PeerRecord {
        PeerRecord {
            device_id: DeviceId::from_hash([byte; 32]),
            display_name: name.into(),
            addresses: BTreeSet::from([
                "fe80::1".parse().unwrap(),
                "2001:db8::5".parse().unwrap(),
                "192.0.2.5".parse().unwrap(),
            ]),
            signaling_port: 4000,
            protocol_version: 1,
            last_seen: SystemTime::UNIX_EPOCH,
            online,
            known: false,
            signed: true,
        }
    }

    #[test]
    fn a_name_finds_the_online_peer_ipv4_first_without_link_local() {
        let peers = [peer(1, "Bob", true), peer(2, "carol", false)];
        assert_eq!(
            resolve(" bob ", &peers, &Contacts::default()),
            Ok(Target::Peer {
                addresses: vec!["192.0.2.5:4000".parse().unwrap(), "[2001:db8::5]:4000".parse().unwrap()],
                device: peers[0].device_id,
                name: "Bob".into(),
            })
        );
        assert_eq!(
            resolve("carol", &peers, &Contacts::default()),
            Err(CallError::UnknownPeer("carol".into())),
            "offline"
        );
    }

    #[test]
    fn a_device_id_finds_the_peer_even_offline() {
        let peers = [peer(2, "carol", false)];
        let id = peers[0].device_id.to_string();
        assert!(matches!(resolve(&id, &peers, &Contacts::default()), Ok(Target::Peer { name, .. }) if name == "carol"));
        assert_eq!(resolve(&id, [], &Contacts::default()), Err(CallError::UnknownPeer(id.clone())));
    }

    #[test]
    fn addresses_are_left_for_a_lookup() {
        let id = DeviceId::from_hash([3; 32]);
        assert_eq!(
            resolve(&format!("{id}@host.lan:4444"), [], &Contacts::default()),
            Ok(Target::Lookup { address: "host.lan:4444".into(), expected: Some(id) })
        );
        assert_eq!(
            resolve("10.1.2.3:4444", [], &Contacts::default()),
            Ok(Target::Lookup { address: "10.1.2.3:4444".into(), expected: None })
        );
        assert!(matches!(resolve("nonsense@host:1", [], &Contacts::default()), Err(CallError::BadTarget(..))));
    }

    #[test]
    fn a_huge_target_is_refused_without_being_echoed() {
        let huge = format!("{}:1", "h".repeat(1 << 20));
        let error = resolve(&huge, [], &Contacts::default()).unwrap_err().to_string();
        assert!(error.len() < 200 && error.contains("at most 512"), "{error}");
    }

    #[test]
    fn two_peers_with_one_name_are_ambiguous() {
        let peers = [peer(1, "bob", true), peer(2, "BOB", true)];
        assert_eq!(
            resolve("bob", &peers, &Contacts::default()),
            Err(CallError::Ambiguous { name: "bob".into(), count: 2 })
        );
    }

    #[test]
    fn a_participants_address_from_a_peer_is_dialed_only_if_it_could_be_one() {
        let hint = |text: &str, loopback| usable_hint(&text.parse().unwrap(), loopback);
        assert!(hint("10.0.0.3:4711", false));
        assert!(hint("[fd00::3]:4711", false));
        assert!(!hint("10.0.0.3:0", false), "no port");
        assert!(!hint("0.0.0.0:4711", false));
        assert!(!hint("224.0.0.251:5353", false));
        assert!(!hint("127.0.0.1:4711", false));
        assert!(hint("127.0.0.1:4711", true), "calls.allow_loopback");
    }
}
