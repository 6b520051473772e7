//! Asking the LAN again which voicelink devices are there: one mDNS PTR question,
//! multicast from port 5353 on every interface that is up, as any querier would
//! (RFC 6762 §5.2). The answers are multicast, so mdns-sd hears them like those
//! to its own queries and the browse reports the devices it had forgotten.
//!
//! mdns-sd can only be made to ask again by replacing the browse, which replays
//! its whole cache into a channel of 1,000 events and drops the subscription
//! when that overflows (a neighbour advertising 500 fake devices makes it so);
//! hence a question of our own.
//!
//! Each question goes out from a socket bound to the interface's own address
//! and port 5353 (a querier's port, or the answers would come back by unicast,
//! past mdns-sd), made for the one send and closed. A socket bound to the
//! wildcard address would share mdns-sd's port group, and Linux may hand it the
//! multicast meant for mdns-sd (seen: a whole flood of queries dropped in the
//! unread socket's buffer).
//!
//! A lost peer is also asked directly ([`probe`]): the same question, by unicast
//! to port 5353 of its last addresses, from our address on the same link. Its
//! responder answers by multicast, as it does any query from port 5353.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tracing::debug;

use voicelink_core::advert::SERVICE_TYPE;
use voicelink_core::liveness::ptr_query;

const MDNS_PORT: u16 = 5353;
const MDNS_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
const MDNS_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb);

/// Sends `question` from `source` (an address of the interface `index`), port
/// 5353, to `to`, or to the mDNS group. Its queries do not loop back: our own
/// responder would answer them, and having just multicast its records it would
/// then stay silent to a peer's query for a second (RFC 6762 §6).
fn ask(question: &[u8], source: IpAddr, index: u32, to: Option<IpAddr>) -> io::Result<usize> {
    let domain = if source.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    let (bound, group): (SocketAddr, SocketAddr) = match source {
        IpAddr::V4(ip) => {
            socket.set_multicast_ttl_v4(255)?;
            socket.set_multicast_loop_v4(false)?;
            socket.set_multicast_if_v4(&ip)?;
            ((ip, MDNS_PORT).into(), SocketAddrV4::new(MDNS_V4, MDNS_PORT).into())
        }
        IpAddr::V6(ip) => {
            socket.set_only_v6(true)?;
            socket.set_multicast_hops_v6(255)?;
            socket.set_multicast_loop_v6(false)?;
            socket.set_multicast_if_v6(index)?;
            let scope = if ip.is_unicast_link_local() { index } else { 0 };
            (SocketAddrV6::new(ip, MDNS_PORT, 0, scope).into(), SocketAddrV6::new(MDNS_V6, MDNS_PORT, 0, index).into())
        }
    };
    let destination = match to {
        None => group,
        Some(IpAddr::V4(ip)) => SocketAddrV4::new(ip, MDNS_PORT).into(),
        Some(IpAddr::V6(ip)) => {
            let scope = if ip.is_unicast_link_local() { index } else { 0 };
            SocketAddrV6::new(ip, MDNS_PORT, 0, scope).into()
        }
    };
    socket.bind(&bound.into())?;
    socket.send_to(question, &SockAddr::from(destination))
}

/// The interfaces mdns-sd uses, with their addresses: up, not loopback, not
/// point-to-point, and not Apple's peer-to-peer Wi-Fi (awdl, llw).
fn usable_interfaces() -> Vec<if_addrs::Interface> {
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces
            .into_iter()
            .filter(|i| {
                i.is_oper_up()
                    && !i.is_loopback()
                    && !i.is_p2p()
                    && !i.name.starts_with("awdl")
                    && !i.name.starts_with("llw")
            })
            .collect(),
        Err(error) => {
            debug!(%error, "cannot list the network interfaces to ask mDNS on");
            Vec::new()
        }
    }
}

/// Asks the question on every multicast-capable interface that is up (once per
/// interface and IP version); returns on how many it went out.
pub fn requery_lan() -> usize {
    let question = ptr_query(SERVICE_TYPE);
    let mut asked: Vec<(u32, bool)> = Vec::new();
    for interface in usable_interfaces() {
        let index = interface.index.unwrap_or(0);
        let ip = interface.ip();
        if asked.contains(&(index, ip.is_ipv4())) {
            continue;
        }
        match ask(&question, ip, index, None) {
            Ok(_) => asked.push((index, ip.is_ipv4())),
            Err(error) => debug!(%error, interface = %interface.name, %ip, "cannot requery the LAN from here"),
        }
    }
    asked.len()
}

/// Asks the question at each of `peers` (port 5353, by unicast) from our address
/// on the same link; an address on no link of ours is skipped (we never probe
/// past a router). Returns how many questions went out.
pub fn probe(peers: &[IpAddr]) -> usize {
    let question = ptr_query(SERVICE_TYPE);
    let interfaces = usable_interfaces();
    let mut sent = 0;
    for &peer in peers {
        for interface in interfaces.iter().filter(|i| on_link(&i.addr, peer)) {
            match ask(&question, interface.ip(), interface.index.unwrap_or(0), Some(peer)) {
                Ok(_) => sent += 1,
                Err(error) => debug!(%error, interface = %interface.name, %peer, "cannot probe a lost peer from here"),
            }
            if !is_link_local(peer) {
                // A routable address is on one link; a link-local one may be on any.
                break;
            }
        }
    }
    sent
}

/// Our links, as listed once for a batch of lost peers.
pub struct OurLinks(Vec<if_addrs::Interface>);

impl OurLinks {
    /// Lists the interfaces mdns-sd uses.
    pub fn list() -> OurLinks {
        OurLinks(usable_interfaces())
    }

    /// `addresses` with those on one of our links first (a peer's docker or VPN
    /// addresses are not worth probing, but when our own link is down none is
    /// on it, and the probes must still have somewhere to go once it is back).
    pub fn first(&self, addresses: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
        let mut addresses: Vec<IpAddr> = addresses.into_iter().collect();
        addresses.sort_by_key(|&a| !self.0.iter().any(|i| on_link(&i.addr, a)));
        addresses
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => ip.is_link_local(),
        IpAddr::V6(ip) => ip.is_unicast_link_local(),
    }
}

/// Whether `peer` is in the subnet of our interface address `ours`.
fn on_link(ours: &if_addrs::IfAddr, peer: IpAddr) -> bool {
    fn same_prefix(a: u128, b: u128, bits: u32, prefix: u8) -> bool {
        let host_bits = bits.saturating_sub(u32::from(prefix));
        host_bits >= bits || (a ^ b) >> host_bits == 0
    }
    match (ours, peer) {
        (if_addrs::IfAddr::V4(ours), IpAddr::V4(peer)) => {
            ours.prefixlen > 0 && same_prefix(u32::from(ours.ip).into(), u32::from(peer).into(), 32, ours.prefixlen)
        }
        (if_addrs::IfAddr::V6(ours), IpAddr::V6(peer)) => {
            ours.prefixlen > 0 && same_prefix(u128::from(ours.ip), u128::from(peer), 128, ours.prefixlen)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use if_addrs::{IfAddr, Ifv4Addr, Ifv6Addr};

    fn v4(ip: [u8; 4], prefixlen: u8) -> IfAddr {
        IfAddr::V4(Ifv4Addr { ip: ip.into(), netmask: Ipv4Addr::UNSPECIFIED, prefixlen, broadcast: None })
    }

    fn v6(ip: &str, prefixlen: u8) -> IfAddr {
        IfAddr::V6(Ifv6Addr { ip: ip.parse().unwrap(), netmask: Ipv6Addr::UNSPECIFIED, prefixlen, broadcast: None })
    }

    #[test]
    fn only_peers_on_one_of_our_links_are_probed() {
        let lan = v4([10, 77, 0, 1], 24);
        assert!(on_link(&lan, "10.77.0.200".parse().unwrap()));
        assert!(!on_link(&lan, "10.77.1.2".parse().unwrap()));
        assert!(!on_link(&lan, "8.8.8.8".parse().unwrap()));
        assert!(!on_link(&lan, "fd77::2".parse().unwrap()), "no IPv6 peer through an IPv4 address");
        assert!(on_link(&v4([192, 168, 1, 9], 32), "192.168.1.9".parse().unwrap()));
        assert!(!on_link(&v4([192, 168, 1, 9], 32), "192.168.1.8".parse().unwrap()));
        assert!(!on_link(&v4([192, 168, 1, 9], 0), "1.2.3.4".parse().unwrap()), "a default route is not a link");

        let ula = v6("fd77::1", 64);
        assert!(on_link(&ula, "fd77::abcd".parse().unwrap()));
        assert!(!on_link(&ula, "fd78::1".parse().unwrap()));
        assert!(on_link(&v6("fe80::1", 64), "fe80::99".parse().unwrap()));
    }
}
