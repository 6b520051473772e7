//! What the API shows about a call: a snapshot the owning task publishes after
//! every change.

use std::time::SystemTime;

use crate::audio_spec::{InputSpec, OutputSpec};
use crate::vocab::{CallId, DeviceId, Direction, EndReason, State};

/// A call as published.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRecord {
    /// Its ID.
    pub id: CallId,
    /// The other side; unknown until connected when dialed by bare `host:port`.
    pub peer: Option<DeviceId>,
    /// The other side's name.
    pub peer_name: String,
    /// Who dialed.
    pub direction: Direction,
    /// Where it is.
    pub state: State,
    /// When it was created.
    pub started_at: SystemTime,
    /// When it was answered.
    pub answered_at: Option<SystemTime>,
    /// Muted here.
    pub muted: bool,
    /// Held by either side.
    pub on_hold: bool,
    /// Held by us.
    pub held_here: bool,
    /// Held by the peer.
    pub held_by_peer: bool,
    /// Why it ended, once it has.
    pub end_reason: Option<EndReason>,
    /// Audio input in use.
    pub input: InputSpec,
    /// Audio output in use.
    pub output: OutputSpec,
}
