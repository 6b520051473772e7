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
use unicode_normalization::UnicodeNormalization as _;

pub use crate::device_id::DeviceId;

/// The signaling protocol version this build speaks (TXT key `v`).
pub const PROTOCOL_VERSION: u32 = 2;

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

impl DisplayName {
    /// A name a peer sent (an advert, a call request): at most
    /// [`MAX_NAME_BYTES`] as sent, then cleaned ([`clean_text`]); what is left
    /// must not be empty.
    pub fn from_network(raw: &str) -> Result<Self, String> {
        if raw.len() > MAX_NAME_BYTES {
            return Err(format!("the name is {} bytes long; at most {MAX_NAME_BYTES} are allowed", raw.len()));
        }
        let name = clean_text(raw, MAX_NAME_BYTES);
        if name.is_empty() {
            return Err("the name is empty once control and invisible characters are removed".into());
        }
        Ok(DisplayName(name))
    }
}

impl FromStr for DisplayName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name: String = s.trim().nfc().collect();
        if name.is_empty() {
            Err("the name must not be empty".into())
        } else if name.len() > MAX_NAME_BYTES {
            Err(format!("the name is {} bytes long; at most {MAX_NAME_BYTES} fit in an mDNS record", name.len()))
        } else if name.chars().any(|c| c.is_control() || is_invisible(c)) {
            Err("the name must not contain control characters or invisible ones (zero-width, bidi controls)".into())
        } else {
            Ok(DisplayName(name))
        }
    }
}

/// Format characters that show nothing but can change what text looks like:
/// zero-width spaces and joiners, bidi marks, embeddings, overrides and
/// isolates, word joiners and invisible operators, the BOM.
pub fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// At most the first 64 characters of `text` (with "…" when cut), for an
/// error message that shows what was given without echoing a megabyte back.
pub fn excerpt(text: &str) -> String {
    const SHOWN: usize = 64;
    match text.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Text from the network made safe to keep, compare, show and log: in Unicode
/// NFC (so a name typed two ways is one name), without control or invisible
/// characters (no forged log lines, terminal escapes or right-to-left tricks),
/// trimmed, and at most `max_bytes` long (cut at a character boundary).
pub fn clean_text(raw: &str, max_bytes: usize) -> String {
    let visible: String = raw.chars().filter(|c| !c.is_control() && !is_invisible(*c)).collect();
    let mut clean = String::new();
    for c in visible.nfc() {
        if clean.len() + c.len_utf8() > max_bytes {
            break;
        }
        clean.push(c);
    }
    let trimmed = clean.trim();
    if trimmed.len() == clean.len() { clean } else { trimmed.to_owned() }
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
    /// Its adverts are signed by its device key (checked): nobody else can
    /// change its name, port or addresses, or say it left. False for an old
    /// peer whose adverts anyone on the LAN could forge.
    pub signed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_network_loses_what_could_forge_or_disguise() {
        assert_eq!(clean_text("evil\nINFO forged line\u{1b}[31m\0", 63), "evilINFO forged line[31m");
        assert_eq!(clean_text("\u{202E}kcatta", 63), "kcatta", "no right-to-left override");
        assert_eq!(clean_text("Zoe\u{0301}", 63), "Zoé", "one Unicode form");
        assert_eq!(clean_text(&"é".repeat(40), 63).len(), 62, "cut at a character boundary");
        assert_eq!(clean_text("  bob \u{200B}", 63), "bob");
        assert_eq!(excerpt(&"x".repeat(1 << 20)).chars().count(), 65);
        assert_eq!(excerpt("bob"), "bob");
    }

    #[test]
    fn a_peers_name_is_limited_and_cleaned_a_configured_one_refused() {
        assert_eq!(DisplayName::from_network("bob\u{202E}").map(|n| n.to_string()), Ok("bob".to_owned()));
        assert!(DisplayName::from_network(&"x".repeat(64)).unwrap_err().contains("64 bytes"));
        assert!(DisplayName::from_network("\u{200B}\n").unwrap_err().contains("empty"));
        assert!("bob\u{202E}".parse::<DisplayName>().unwrap_err().contains("invisible"));
        assert_eq!("Zoe\u{0301}".parse::<DisplayName>().map(|n| n.to_string()), Ok("Zoé".to_owned()));
    }
}
