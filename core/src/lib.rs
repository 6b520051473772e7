//! voicelink's pure core: every protocol and policy decision of the daemon, with
//! no I/O. Nothing here reads a clock, opens a socket or spawns a task: inputs go
//! in with the time (`now`), outputs and the next deadline come out, so all of it
//! is tested without a network and on a virtual clock (`tests/simulator.rs` drives
//! several switchboards and their calls against each other through a lossy link).
//!
//! Its dependencies keep it so: no tokio, webrtc, mdns-sd, cpal or tonic.
//!
//! The modules, from the bottom up:
//! - [`device_id`] and [`vocab`]: the words everything else uses (device and call
//!   IDs, call states, end reasons, failure causes, peer records).
//! - [`wire`]: the signaling messages and their codec.
//! - [`call_machine`]: one call's protocol (ringing, answer, media, hold, end).
//! - [`switchboard`]: the policy every call passes through (busy, glare, rate
//!   limits, the only call, auto-answer, dial targets).
//! - [`advert`] and [`peer_table`]: mDNS adverts and the peers they describe.
//! - [`admission`]: which new signaling connections may spend a handshake slot.
//! - [`sdp`]: the few things read from and fixed in SDP text.
//! - [`jitter_buffer`], [`mixer`], [`resample`], [`clock_drift`], [`audio_math`], [`audio_spec`]: the audio chain's math;
//!   [`encoder_policy`]: how much loss the encoder protects against; [`voice_processing`]:
//!   echo cancellation, noise suppression and gain control on the capture path.
//! - [`device_follow`]: which sound device an open endpoint moves to as devices come and go.
//! - [`stats`]: the per-call meter and the E-model.
//! - [`config`] and [`reload`]: the configuration file and what a reload changes.

pub mod admission;
pub mod advert;
pub mod audio_math;
pub mod audio_spec;
pub mod call_machine;
pub mod call_record;
pub mod clock_drift;
pub mod config;
pub mod config_keys;
pub mod contacts;
pub mod device_follow;
pub mod device_id;
pub mod dial_target;
pub mod encoder_policy;
pub mod history;
pub mod jitter_buffer;
pub mod liveness;
pub mod mixer;
pub mod peer_events;
pub mod peer_table;
pub mod reload;
pub mod resample;
pub mod ring_tones;
pub mod safety_number;
pub mod sdp;
pub mod stats;
pub mod switchboard;
pub mod vocab;
pub mod voice_processing;
pub mod wire;
