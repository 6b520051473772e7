//! The shared vocabulary every part of voicelink speaks: call IDs, who placed a
//! call, where it is, why it ended or failed, and what is known about a peer.
//! A leaf: it imports nothing else from this crate but the device ID.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_with::{DeserializeFromStr, SerializeDisplay};

pub use crate::device_id::DeviceId;

/// The signaling protocol version this build speaks (TXT key `v`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest display name, in bytes (mDNS TXT `name`, `caller_name`, `callee_name`).
pub const MAX_NAME_BYTES: usize = 63;

/// The name peers see: 1 to 63 bytes of UTF-8 ([`MAX_NAME_BYTES`], one mDNS TXT
/// string), trimmed, no control characters. The one rule for every name: the
/// config's, an advert's and the one a callee says in `ringing`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, SerializeDisplay, DeserializeFromStr)]
pub struct DisplayName(String);

impl DisplayName {
    /// The name of a device that has no better one.
    pub fn fallback() -> Self {
        DisplayName("voicelink".into())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for DisplayName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim();
        if name.is_empty() {
            Err("the name must not be empty".into())
        } else if name.len() > MAX_NAME_BYTES {
            Err(format!("the name is {} bytes long; at most {MAX_NAME_BYTES} fit in an mDNS record", name.len()))
        } else if name.chars().any(char::is_control) {
            Err("the name must not contain control characters".into())
        } else {
            Ok(DisplayName(name.to_owned()))
        }
    }
}

impl fmt::Display for DisplayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A call's identifier: 1 to 64 characters of `A-Z a-z 0-9 - _`, chosen by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CallId(String);

impl CallId {
    /// A fresh random ID (128 bits, hex).
    pub fn random() -> Self {
        CallId(data_encoding::HEXLOWER.encode(&rand::random::<[u8; 16]>()))
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CallId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let valid =
            (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid { Ok(CallId(s)) } else { Err("a call ID is 1-64 characters of A-Z, a-z, 0-9, - and _".into()) }
    }
}

impl From<CallId> for String {
    fn from(id: CallId) -> String {
        id.0
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who placed the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// This side dialed.
    Outgoing,
    /// The peer dialed.
    Incoming,
}

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Ringing the peer.
    Outgoing,
    /// Ringing here.
    Incoming,
    /// Answered; media not yet connected.
    Connecting,
    /// Talking.
    Active,
    /// Held by either side: no audio either way.
    OnHold,
    /// Answered, but the link went silent: waiting for it to come back (audio
    /// resumes by itself when it does), or for the reconnect timeout.
    Reconnecting,
    /// Over; see `end_reason`.
    Ended,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailCause {
    /// The peer could not be reached.
    Unreachable(String),
    /// The peer's certificate is not the device we meant to call.
    IdentityMismatch(String),
    /// No network path was found (ICE).
    IceFailed,
    /// The encrypted media session could not be set up (DTLS).
    DtlsFailed,
    /// Media was still not connected when the connect timer ran out (the path
    /// or the DTLS handshake kept failing, for example under heavy loss).
    ConnectTimeout,
    /// An audio endpoint could not be opened.
    Audio(String),
    /// The peer broke the protocol or said it failed.
    Protocol(String),
}

impl fmt::Display for FailCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailCause::Unreachable(why) => write!(f, "unreachable: {why}"),
            FailCause::IdentityMismatch(why) => write!(f, "identity mismatch: {why}"),
            FailCause::IceFailed => f.write_str("ICE failed: no network path to the peer"),
            FailCause::DtlsFailed => f.write_str("DTLS failed: the encrypted media session could not be set up"),
            FailCause::ConnectTimeout => {
                f.write_str("media did not connect in time (no network path, or the handshake kept being lost)")
            }
            FailCause::Audio(why) => write!(f, "audio: {why}"),
            FailCause::Protocol(why) => write!(f, "protocol: {why}"),
        }
    }
}

/// Why a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Hung up here.
    HungUpLocal,
    /// Hung up by the peer.
    HungUpRemote,
    /// The callee declined (with its reason).
    Declined(String),
    /// The callee was in another call.
    Busy,
    /// Nobody answered before the ring timeout.
    NoAnswer,
    /// The caller gave up before an answer (or the call yielded to a glare twin).
    Cancelled,
    /// Something broke.
    Failed(FailCause),
    /// The peer stopped answering.
    PeerLost,
    /// The callee has blocked this device (or we blocked the caller).
    Blocked,
    /// The callee does not take calls now (do-not-disturb).
    DoNotDisturb,
    /// The callee takes calls from known or trusted devices only.
    NotAllowed,
}

/// What the API shows about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    /// Its device ID.
    pub device_id: DeviceId,
    /// The name it advertises.
    pub display_name: String,
    /// Every address it was seen at, over all its mDNS instances and interfaces.
    pub addresses: BTreeSet<IpAddr>,
    /// Its signaling port.
    pub signaling_port: u16,
    /// Its signaling protocol version.
    pub protocol_version: u32,
    /// When it was last seen (wall clock, for display).
    pub last_seen: SystemTime,
    /// Answering mDNS now.
    pub online: bool,
    /// This device has talked to it before.
    pub known: bool,
}
