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

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tracing::debug;

use voicelink_core::advert::SERVICE_TYPE;
use voicelink_core::liveness::ptr_query;

const MDNS_PORT: u16 = 5353;
const MDNS_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
const MDNS_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb);

/// Sends `question` to the mDNS group from `source` (an address of the
/// interface `index`), port 5353. Its queries do not loop back: our own
/// responder would answer them, and having just multicast its records it would
/// then stay silent to a peer's query for a second (RFC 6762 §6).
fn ask(question: &[u8], source: IpAddr, index: u32) -> io::Result<usize> {
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
    socket.bind(&bound.into())?;
    socket.send_to(question, &SockAddr::from(group))
}

/// Asks the question on every multicast-capable interface that is up (once per
/// interface and IP version); returns on how many it went out.
pub fn requery_lan() -> usize {
    let interfaces = match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces,
        Err(error) => {
            debug!(%error, "cannot list the network interfaces to requery on");
            return 0;
        }
    };
    let question = ptr_query(SERVICE_TYPE);
    let mut asked: Vec<(u32, bool)> = Vec::new();
    // The interfaces mdns-sd uses: up, not loopback, not point-to-point, and not
    // Apple's peer-to-peer Wi-Fi (awdl, llw).
    let usable = |i: &&if_addrs::Interface| {
        i.is_oper_up() && !i.is_loopback() && !i.is_p2p() && !i.name.starts_with("awdl") && !i.name.starts_with("llw")
    };
    for interface in interfaces.iter().filter(usable) {
        let index = interface.index.unwrap_or(0);
        let ip = interface.ip();
        if asked.contains(&(index, ip.is_ipv4())) {
            continue;
        }
        match ask(&question, ip, index) {
            Ok(_) => asked.push((index, ip.is_ipv4())),
            Err(error) => debug!(%error, interface = %interface.name, %ip, "cannot requery the LAN from here"),
        }
    }
    asked.len()
}
