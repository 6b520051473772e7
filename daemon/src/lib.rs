//! `voiced`, the voicelink daemon, as a library: the tasks and edges around the
//! pure core (`voicelink_core`), and [`run`], the whole daemon.
//!
//! The layers, each importing only those below it:
//! 1. `voicelink_core`: the call machine, the switchboard, the wire format, the
//!    jitter buffer, adverts and the peer table, stats, config (pure, no I/O).
//! 2. [`clock`], [`identity`], [`events`], [`stats`], [`logging`]: tokio's clock,
//!    the device key on disk, the event hub, the stats board, the log filter.
//! 3. [`audio`] (endpoints and sound cards), then [`media`] (the WebRTC peer
//!    connection and the audio pumps), [`signaling`] (TLS, WebSocket, the
//!    listener), [`discovery`] (the mDNS task) and [`name_claims`] (impostors).
//! 4. [`call`]: the registry task that drives the switchboard, and a task per call.
//! 5. [`api`] (the gRPC server) and `daemon` ([`run`]), on top.

pub mod api;
pub mod audio;
pub mod call;
pub mod clock;
mod daemon;
pub mod discovery;
pub mod events;
pub mod identity;
pub mod logging;
pub mod manual;
pub mod media;
pub mod name_claims;
pub mod service_manager;
pub mod settings;
pub mod signaling;
pub mod stats;
pub mod store;

pub use daemon::{DaemonError, run};
pub use settings::Reload;
