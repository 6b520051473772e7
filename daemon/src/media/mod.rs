//! Media: what happens to audio between the network and the audio endpoints.

pub mod jitter;
pub mod rtcp_monitor;
pub mod session;

pub use jitter::{JitterBuffer, JitterStats, Playout, Pushed};
