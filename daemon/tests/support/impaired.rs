//! Two network namespaces joined by the bench's user-space impaired link, for the
//! tests that need a bad network (this kernel has no netem). Only the daemon's
//! own tests include this (the tray's reuse of `support` does not need the bench).

use voicelink_bench::relay::{ImpairedLink, LinkConfig, Namespace};

/// Two namespaces joined by the bench's user-space relay (this kernel has no
/// netem), impaired as `config` says.
pub struct ImpairedPair {
    // Dropped in this order: the relay, then the namespaces. Not every test
    // binary that includes this file drives the link.
    #[allow(dead_code)]
    pub link: ImpairedLink,
    pub a: Namespace,
    pub b: Namespace,
}

pub fn impaired_pair(impair: impl FnOnce(LinkConfig) -> LinkConfig) -> ImpairedPair {
    let (a, b) = (Namespace::create("vls").unwrap(), Namespace::create("vls").unwrap());
    let link = ImpairedLink::start(impair(LinkConfig::new(a.name(), b.name()))).unwrap();
    ImpairedPair { link, a, b }
}
