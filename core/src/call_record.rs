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
    /// The speaker is muted here (the peer is not heard).
    pub speaker_muted: bool,
    /// The stages this call was given its own setting for (the others follow
    /// the config).
    pub processing: crate::voice_processing::ProcessingChange,
    /// Held by either side.
    pub on_hold: bool,
    /// Held by us.
    pub held_here: bool,
    /// Held by the peer.
    pub held_by_peer: bool,
    /// Where our recording goes, while we record (the peer confirmed it shows it).
    pub recording: Option<std::path::PathBuf>,
    /// The peer records the call.
    pub recorded_by_peer: bool,
    /// Why it ended, once it has.
    pub end_reason: Option<EndReason>,
    /// Audio input in use.
    pub input: InputSpec,
    /// Audio output in use.
    pub output: OutputSpec,
    /// The group call this is a leg of (one leg per other participant).
    pub group: Option<CallId>,
    /// It rings beside a call in progress (call waiting), until answered.
    pub waiting: bool,
}

impl CallRecord {
    /// A call just created: ringing (the peer or here), not muted, not held.
    pub fn new(
        id: CallId,
        peer: Option<DeviceId>,
        peer_name: String,
        direction: Direction,
        (input, output): (InputSpec, OutputSpec),
        started_at: SystemTime,
    ) -> Self {
        CallRecord {
            id,
            peer,
            peer_name,
            direction,
            state: match direction {
                Direction::Outgoing => State::Outgoing,
                Direction::Incoming => State::Incoming,
            },
            started_at,
            answered_at: None,
            muted: false,
            speaker_muted: false,
            processing: Default::default(),
            on_hold: false,
            held_here: false,
            held_by_peer: false,
            recording: None,
            recorded_by_peer: false,
            end_reason: None,
            input,
            output,
            group: None,
            waiting: false,
        }
    }
}
