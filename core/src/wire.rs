//! The signaling wire format: one JSON object per WebSocket text message, with the
//! protocol version, the call it belongs to, and a type. Pure: encode and decode
//! only, with a size cap, so everything the network can send is tested here and
//! fuzzed (`fuzz/`). docs/PROTOCOL.md is the specification.

use serde::{Deserialize, Serialize};

pub use crate::vocab::CallId;
use crate::vocab::{DeviceId, MAX_NAME_BYTES, PROTOCOL_VERSION, clean_text};

/// The oldest protocol version this side still speaks: everything of a
/// two-party call is version 1, and is sent as version 1 so that older peers
/// keep calling us. Only group-call messages need version 2.
pub const OLDEST_VERSION: u32 = 1;

/// Largest message accepted or sent (a full SDP offer is about 2-4 KiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Longest free-text field (names, reasons) in bytes.
pub const MAX_TEXT_BYTES: usize = 256;

/// Why a call ended, as one side tells the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndCode {
    /// A person hung up.
    HangUp,
    /// The caller gave up before an answer.
    Cancelled,
    /// Nobody answered in time.
    NoAnswer,
    /// Media could not be set up or was lost.
    Failed,
    /// Both sides dialed each other; this call yields to the other one.
    Glare,
    /// A code from a newer peer.
    #[serde(other)]
    Other,
}

/// Why a callee refused a call without ringing, beside the free-text reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeclineCode {
    /// The callee blocked this device.
    Blocked,
    /// The callee's do-not-disturb is on.
    DoNotDisturb,
    /// The callee takes calls from known or trusted devices only.
    NotAllowed,
    /// The group call would have more participants than the callee allows.
    GroupFull,
    /// A join to a group call the callee is not in, or that nobody in it
    /// introduced the caller to.
    NotInvited,
    /// A code from a newer peer: a plain decline.
    #[serde(other)]
    Other,
}

/// What a message says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Unknown fields are ignored: a newer peer may add some.
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    /// Caller → callee: please ring. The caller's identity comes from its TLS
    /// certificate; the name is only for display.
    CallRequest {
        /// The caller's display name.
        caller_name: String,
        /// The caller's Opus frame length in ms (10 or 20); the callee uses the
        /// same so both directions packetize alike.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        frame_ms: Option<u32>,
        /// For a group call (version 2): which, and whether this is an
        /// invitation or a participant joining.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<GroupPart>,
    },
    /// Callee → caller: it is ringing here.
    Ringing {
        /// The callee's display name (the caller may have dialed an address).
        #[serde(default)]
        callee_name: String,
    },
    /// Callee → caller: answered.
    Accept,
    /// Callee → caller: declined, with a reason to show.
    Decline {
        /// Why (may be empty).
        #[serde(default)]
        reason: String,
        /// Why, for a refusal without ringing; absent for a person's decline.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<DeclineCode>,
    },
    /// Callee → caller: already in a call.
    Busy,
    /// Caller → callee: the WebRTC offer.
    Offer {
        /// SDP.
        sdp: String,
    },
    /// Callee → caller: the WebRTC answer.
    Answer {
        /// SDP.
        sdp: String,
    },
    /// Either way: a trickled ICE candidate.
    IceCandidate {
        /// The `candidate:` attribute value.
        candidate: String,
        /// The media section it belongs to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_mid: Option<String>,
        /// The media section's index.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_mline_index: Option<u16>,
    },
    /// Either way: the call is over.
    End {
        /// Why.
        reason: EndCode,
    },
    /// Either way: this side put the call on hold (no audio either way) or resumed it.
    Hold {
        /// On hold now.
        on_hold: bool,
    },
    /// Either way: this side starts (or stops) recording the call. The receiver
    /// must show its user that they are being recorded, then confirm with
    /// `recording_seen`; a recorder writes nothing until it has the confirmation.
    Recording {
        /// Recording now.
        on: bool,
        /// Numbers the sender's requests, so a late confirmation of an earlier one
        /// is not taken for this one.
        #[serde(default)]
        seq: u32,
    },
    /// Either way: the answer to `recording`, once the user is shown it.
    RecordingSeen {
        /// The `on` it confirms.
        on: bool,
        /// The `seq` of the `recording` it answers.
        #[serde(default)]
        seq: u32,
    },
    /// Either way, in a group call (version 2): everyone the sender is in the
    /// call with or has invited, itself excluded. The receiver lets exactly
    /// these devices join the group without ringing.
    Participants {
        /// The group call.
        group: CallId,
        /// Who.
        participants: Vec<Participant>,
    },
    /// Either way: still here (sent when idle, so a dead link is noticed).
    Keepalive,
    /// Either way: the last message was not understood; the connection closes.
    Error {
        /// What was wrong.
        message: String,
    },
}

impl Body {
    /// The `type` field's value.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::CallRequest { .. } => "call_request",
            Body::Ringing { .. } => "ringing",
            Body::Accept => "accept",
            Body::Decline { .. } => "decline",
            Body::Busy => "busy",
            Body::Offer { .. } => "offer",
            Body::Answer { .. } => "answer",
            Body::IceCandidate { .. } => "ice_candidate",
            Body::End { .. } => "end",
            Body::Hold { .. } => "hold",
            Body::Recording { .. } => "recording",
            Body::RecordingSeen { .. } => "recording_seen",
            Body::Participants { .. } => "participants",
            Body::Keepalive => "keepalive",
            Body::Error { .. } => "error",
        }
    }

    /// The protocol version a message with this body is sent as: the oldest
    /// that has it, so a peer that predates group calls refuses only those.
    pub fn version(&self) -> u32 {
        match self {
            Body::CallRequest { group: Some(_), .. } | Body::Participants { .. } => PROTOCOL_VERSION,
            _ => OLDEST_VERSION,
        }
    }
}

/// A call request's group part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPart {
    /// The group call's ID (the same on every leg and every device).
    pub id: CallId,
    /// `false`: an invitation from a participant, which rings. `true`: the
    /// sender was invited by someone in the call and joins it; the receiver
    /// answers at once if one of its participants introduced the sender
    /// (`participants`), and refuses otherwise.
    #[serde(default)]
    pub join: bool,
    /// Everyone else the sender is in the call with, for an invitation: the
    /// invitee joins each of them.
    #[serde(default)]
    pub participants: Vec<Participant>,
}

/// A participant of a group call, as one participant names it to another.
/// Only an introduction: whoever connects proves its device ID over TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// Its device ID.
    pub device_id: DeviceId,
    /// Its display name, for showing until it says its own.
    #[serde(default)]
    pub name: String,
    /// Where its signaling listens as the sender reaches it (`IP:port`), for
    /// a peer that does not see it by mDNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::SocketAddr>,
    /// Only invited: its invitation (or join) is not answered yet, so nobody
    /// calls it; it calls everyone once it is in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invited: bool,
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// Protocol version.
    pub v: u32,
    /// The call.
    pub call_id: CallId,
    /// What it says.
    #[serde(flatten)]
    pub body: Body,
}

impl Message {
    /// A message, as the oldest protocol version that has its body.
    pub fn new(call_id: CallId, body: Body) -> Self {
        Message { v: body.version(), call_id, body }
    }

    /// The JSON text.
    pub fn encode(&self) -> String {
        // Serializing a struct of strings and integers to JSON cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What came off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A message we understand.
    Message(Message),
    /// A well-formed message of a type we do not know (from a newer peer): ignore it.
    UnknownType {
        /// Its `type`.
        kind: String,
    },
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Bigger than `MAX_MESSAGE_BYTES`.
    #[error("message of {0} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// `v`, `call_id` or `type` missing or of the wrong kind.
    #[error("missing or invalid `{0}`")]
    Envelope(&'static str),
    /// A major version we do not speak.
    #[error("protocol version {0} is not supported (this side speaks {OLDEST_VERSION} to {PROTOCOL_VERSION})")]
    Version(u64),
    /// A known type with bad fields.
    #[error("invalid `{kind}` message: {reason}")]
    Body {
        /// The type.
        kind: String,
        /// What is wrong.
        reason: String,
    },
    /// A text field over its limit ([`MAX_NAME_BYTES`] for names,
    /// [`MAX_TEXT_BYTES`] for the rest).
    #[error("`{field}` is longer than {max} bytes")]
    TextTooLong {
        /// The field.
        field: &'static str,
        /// Its limit.
        max: usize,
    },
}

const KNOWN_TYPES: [&str; 15] = [
    "call_request",
    "ringing",
    "accept",
    "decline",
    "busy",
    "offer",
    "answer",
    "ice_candidate",
    "end",
    "hold",
    "recording",
    "recording_seen",
    "participants",
    "keepalive",
    "error",
];

/// Decodes one message. Never panics, whatever the input.
pub fn decode(bytes: &[u8]) -> Result<Decoded, WireError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| WireError::NotJson(e.to_string()))?;
    let serde_json::Value::Object(mut object) = value else {
        return Err(WireError::NotJson("not an object".into()));
    };
    let version = object.remove("v").and_then(|v| v.as_u64()).ok_or(WireError::Envelope("v"))?;
    let version = u32::try_from(version)
        .ok()
        .filter(|v| (OLDEST_VERSION..=PROTOCOL_VERSION).contains(v))
        .ok_or(WireError::Version(version))?;
    let call_id = object
        .remove("call_id")
        .and_then(|id| id.as_str().map(str::to_owned))
        .and_then(|id| CallId::try_from(id).ok())
        .ok_or(WireError::Envelope("call_id"))?;
    let kind = object.get("type").and_then(|t| t.as_str()).ok_or(WireError::Envelope("type"))?.to_owned();
    if !KNOWN_TYPES.contains(&kind.as_str()) {
        return Ok(Decoded::UnknownType { kind: clean_text(&kind, 64) });
    }
    let mut body: Body = serde_json::from_value(serde_json::Value::Object(object))
        .map_err(|e| WireError::Body { kind: kind.clone(), reason: e.to_string() })?;
    clean_text_fields(&mut body)?;
    Ok(Decoded::Message(Message { v: version, call_id, body }))
}

/// Refuses text over its limit and cleans what is shown to people and written
/// to logs (no control or invisible characters: see [`clean_text`]).
fn clean_text_fields(body: &mut Body) -> Result<(), WireError> {
    let (field, text, max) = match body {
        Body::CallRequest { caller_name, group, .. } => {
            if let Some(group) = group {
                clean_participants(&mut group.participants)?;
            }
            ("caller_name", caller_name, MAX_NAME_BYTES)
        }
        Body::Participants { participants, .. } => return clean_participants(participants),
        Body::Ringing { callee_name } => ("callee_name", callee_name, MAX_NAME_BYTES),
        Body::Decline { reason, .. } => ("reason", reason, MAX_TEXT_BYTES),
        Body::Error { message } => ("message", message, MAX_TEXT_BYTES),
        _ => return Ok(()),
    };
    if text.len() > max {
        return Err(WireError::TextTooLong { field, max });
    }
    *text = clean_text(text, max);
    Ok(())
}

/// Most participants a message may name (a group call has at most
/// [`crate::switchboard::MAX_PARTICIPANTS`]; a few more are tolerated so the
/// receiver, not the parser, says the call is full).
pub const MAX_NAMED_PARTICIPANTS: usize = 16;

fn clean_participants(participants: &mut [Participant]) -> Result<(), WireError> {
    if participants.len() > MAX_NAMED_PARTICIPANTS {
        return Err(WireError::Body {
            kind: "participants".into(),
            reason: format!("names {} participants; at most {MAX_NAMED_PARTICIPANTS} are accepted", participants.len()),
        });
    }
    for participant in participants {
        if participant.name.len() > MAX_NAME_BYTES {
            return Err(WireError::TextTooLong { field: "name", max: MAX_NAME_BYTES });
        }
        participant.name = clean_text(&participant.name, MAX_NAME_BYTES);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> CallId {
        CallId::try_from("c1".to_owned()).unwrap()
    }

    fn participant(byte: u8) -> Participant {
        Participant {
            device_id: DeviceId::from_hash([byte; 32]),
            name: format!("p{byte}"),
            address: Some(std::net::SocketAddr::from(([10, 0, 0, byte], 7000))),
            invited: byte.is_multiple_of(2),
        }
    }

    fn every_body() -> Vec<Body> {
        vec![
            Body::CallRequest { caller_name: "alice".into(), frame_ms: Some(20), group: None },
            Body::CallRequest { caller_name: "alice".into(), frame_ms: None, group: None },
            Body::CallRequest {
                caller_name: "alice".into(),
                frame_ms: Some(20),
                group: Some(GroupPart { id: id(), join: true, participants: vec![participant(7)] }),
            },
            Body::Participants { group: id(), participants: vec![participant(8), participant(9)] },
            Body::Ringing { callee_name: "bob".into() },
            Body::Accept,
            Body::Decline { reason: "in a meeting".into(), code: None },
            Body::Decline { reason: "do not disturb".into(), code: Some(DeclineCode::DoNotDisturb) },
            Body::Busy,
            Body::Offer { sdp: "v=0\r\n".into() },
            Body::Answer { sdp: "v=0\r\n".into() },
            Body::IceCandidate {
                candidate: "candidate:1 1 udp 1 10.0.0.1 5000 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_mline_index: Some(0),
            },
            Body::IceCandidate { candidate: String::new(), sdp_mid: None, sdp_mline_index: None },
            Body::End { reason: EndCode::HangUp },
            Body::End { reason: EndCode::Glare },
            Body::Hold { on_hold: true },
            Body::Recording { on: true, seq: 1 },
            Body::RecordingSeen { on: false, seq: 2 },
            Body::Keepalive,
            Body::Error { message: "bad".into() },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for body in every_body() {
            let message = Message::new(id(), body);
            let text = message.encode();
            assert_eq!(decode(text.as_bytes()), Ok(Decoded::Message(message)), "{text}");
            assert!(KNOWN_TYPES.contains(&Body::kind(&decode_body(&text))));
        }
    }

    fn decode_body(text: &str) -> Body {
        match decode(text.as_bytes()) {
            Ok(Decoded::Message(m)) => m.body,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_format_is_the_documented_one() {
        let text = Message::new(id(), Body::Decline { reason: "no".into(), code: None }).encode();
        assert_eq!(text, r#"{"v":1,"call_id":"c1","type":"decline","reason":"no"}"#);
        let text =
            Message::new(id(), Body::Decline { reason: "dnd".into(), code: Some(DeclineCode::Blocked) }).encode();
        assert_eq!(text, r#"{"v":1,"call_id":"c1","type":"decline","reason":"dnd","code":"blocked"}"#);
        let body = decode_body(r#"{"v":1,"call_id":"c1","type":"decline","reason":"x","code":"asleep"}"#);
        assert_eq!(body, Body::Decline { reason: "x".into(), code: Some(DeclineCode::Other) }, "a newer code");
        let text = Message::new(id(), Body::End { reason: EndCode::NoAnswer }).encode();
        assert_eq!(text, r#"{"v":1,"call_id":"c1","type":"end","reason":"no_answer"}"#);
    }

    #[test]
    fn two_party_messages_stay_version_1_and_group_messages_are_version_2() {
        let plain = Message::new(id(), Body::CallRequest { caller_name: "a".into(), frame_ms: None, group: None });
        assert!(plain.encode().starts_with(r#"{"v":1,"#), "{}", plain.encode());
        let group = GroupPart { id: id(), join: false, participants: vec![participant(2)] };
        let invite =
            Message::new(id(), Body::CallRequest { caller_name: "a".into(), frame_ms: None, group: Some(group) });
        let text = invite.encode();
        assert!(text.starts_with(r#"{"v":2,"#), "{text}");
        assert!(text.contains(&format!(r#""device_id":"{}""#, DeviceId::from_hash([2; 32]))), "{text}");
        // Both versions are read.
        assert_eq!(decode_body(r#"{"v":2,"call_id":"c1","type":"busy"}"#), Body::Busy);
        let bad_id = r#"{"v":2,"call_id":"c1","type":"participants","group":"g","participants":[{"device_id":"XYZ"}]}"#;
        assert!(decode(bad_id.as_bytes()).unwrap_err().to_string().contains("invalid `participants`"));
        let many: Vec<String> =
            (0..17u8).map(|b| format!(r#"{{"device_id":"{}"}}"#, DeviceId::from_hash([b; 32]))).collect();
        let crowd = format!(
            r#"{{"v":2,"call_id":"c1","type":"participants","group":"g","participants":[{}]}}"#,
            many.join(",")
        );
        assert!(decode(crowd.as_bytes()).unwrap_err().to_string().contains("at most 16"));
    }

    #[test]
    fn unknown_types_and_end_codes_from_newer_peers_are_tolerated() {
        let unknown = decode(br#"{"v":1,"call_id":"c1","type":"video_offer","x":1}"#);
        assert_eq!(unknown, Ok(Decoded::UnknownType { kind: "video_offer".into() }));
        let body = decode_body(r#"{"v":1,"call_id":"c1","type":"end","reason":"teleported"}"#);
        assert_eq!(body, Body::End { reason: EndCode::Other });
        let body = decode_body(r#"{"v":1,"call_id":"c1","type":"busy","until":"5pm"}"#);
        assert_eq!(body, Body::Busy, "unknown fields are ignored");
    }

    #[test]
    fn malformed_input_is_refused_with_the_reason() {
        let cases: [(&[u8], &str); 10] = [
            (b"", "not a JSON object"),
            (b"[1,2]", "not a JSON object"),
            (b"{\"v\":1", "not a JSON object"),
            (br#"{"call_id":"c","type":"busy"}"#, "`v`"),
            (br#"{"v":3,"call_id":"c","type":"busy"}"#, "version 3"),
            (br#"{"v":1,"type":"busy"}"#, "`call_id`"),
            (br#"{"v":1,"call_id":"a b","type":"busy"}"#, "`call_id`"),
            (br#"{"v":1,"call_id":"c"}"#, "`type`"),
            (br#"{"v":1,"call_id":"c","type":"offer"}"#, "invalid `offer`"),
            (br#"{"v":1,"call_id":"c","type":"decline","reason":5}"#, "invalid `decline`"),
        ];
        for (input, expected) in cases {
            let error = decode(input).unwrap_err().to_string();
            assert!(error.contains(expected), "{:?}: {error}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn size_limits_hold() {
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(decode(&huge), Err(WireError::TooLarge(MAX_MESSAGE_BYTES + 1)));
        let long_name = format!(r#"{{"v":1,"call_id":"c","type":"call_request","caller_name":"{}"}}"#, "x".repeat(64));
        assert_eq!(decode(long_name.as_bytes()), Err(WireError::TextTooLong { field: "caller_name", max: 63 }));
        let long_reason = format!(r#"{{"v":1,"call_id":"c","type":"decline","reason":"{}"}}"#, "x".repeat(257));
        assert_eq!(decode(long_reason.as_bytes()), Err(WireError::TextTooLong { field: "reason", max: 256 }));
    }

    #[test]
    fn names_and_reasons_from_the_peer_are_cleaned() {
        let forged =
            r#"{"v":1,"call_id":"c","type":"call_request","caller_name":"eve\nINFO voiced: forged\u001b[2J\u202e"}"#;
        let Ok(Decoded::Message(Message { body: Body::CallRequest { caller_name, .. }, .. })) =
            decode(forged.as_bytes())
        else {
            panic!("not a call request")
        };
        assert_eq!(caller_name, "eveINFO voiced: forged[2J");
        let decline = r#"{"v":1,"call_id":"c","type":"decline","reason":"busy\r\nnow"}"#;
        let Ok(Decoded::Message(Message { body: Body::Decline { reason, .. }, .. })) = decode(decline.as_bytes())
        else {
            panic!("not a decline")
        };
        assert_eq!(reason, "busynow");
    }

    #[test]
    fn random_call_ids_are_valid_and_distinct() {
        let (a, b) = (CallId::random(), CallId::random());
        assert_ne!(a, b);
        assert_eq!(CallId::try_from(a.to_string()), Ok(a));
    }
}
