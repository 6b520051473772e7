//! The voicelink bench: an impaired link between network namespaces, and the
//! harness that measures calls across it.
//!
//! - [`impairment`]: the pure, seeded model of delay, jitter, loss and outages.
//! - [`relay`]: a TAP device in each of two namespaces and threads that forward
//!   Ethernet frames between them through the model; also the [`relay::Namespace`]
//!   helper. The daemon's end-to-end tests use it as well as the bench binary.
//! - [`hostile`]: stalled TLS clients, to measure a call beside them.
//! - [`echo_room`]: the echo bench's simulated room and its measures.
//! - [`sound_server`]: a user-mode PulseAudio with a null sink (real sound
//!   devices without a sound card), for the tests and mouth-to-ear through devices.
//! - [`analysis`]: pure signal analysis for the recordings (alignment by
//!   cross-correlation, onset of sound, levels).

pub mod analysis;
pub mod echo_room;
pub mod hostile;
pub mod impairment;
pub mod relay;
pub mod sound_server;
