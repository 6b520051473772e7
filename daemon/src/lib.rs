//! `voiced`, the voicelink daemon, as a library: the pure cores (peer table, TXT
//! records, configuration, identity, event hub) are public so tests reach them, and
//! [`run`] is the whole daemon.
//!
//! The shape follows DESIGN.md: protocol and policy are pure state machines
//! ([`discovery::PeerTable`], [`discovery::Advert`]); I/O lives at the edges
//! ([`discovery::Discovery`] owns mDNS, [`api`] serves gRPC); one task owns each
//! resource and publishes its changes through the [`events::EventHub`].

pub mod api;
pub mod audio;
pub mod call;
pub mod config;
mod daemon;
pub mod discovery;
pub mod events;
pub mod identity;
pub mod media;
pub mod reload;
pub mod signaling;
pub mod stats;

pub use daemon::{DaemonError, Reload, run};
