//! Media: what happens to audio between the network and the audio endpoints.
//!
//! - `peer_connection`: the WebRTC peer connection, the only file that imports
//!   webrtc's API; our own event, packet and error types at its boundary.
//! - `redundant_handshake`: the connection's sockets, which send each DTLS
//!   handshake datagram again 10-160 ms later (a lost one costs rtc-dtls a second).
//! - `rtcp_monitor`: an interceptor inside that connection that reads RTCP.
//! - `audio_pump`: the sender and player tasks, paced by the frame tick.
//! - `recording`: a call's recording (both directions, one stereo WAV), fed by
//!   the pumps.
//! - `session`: one call's media, tying the three together for the call task.
//!
//! The jitter buffer itself is pure and lives in `voicelink_core::jitter_buffer`.

pub mod audio_pump;
pub mod peer_connection;
pub mod recording;
pub mod redundant_handshake;
pub mod rtcp_monitor;
pub mod session;
