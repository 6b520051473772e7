//! What a daemon says about itself in its mDNS TXT record, and how a record read
//! from the network is checked. Pure: no sockets, so every malformed record can be
//! tested.
//!
//! mDNS has no authentication, so an advert may carry a proof ([`AdvertProof`]):
//! the device's certificate (whose hash is its device ID), the time the advert
//! was made, and a signature by the device key over [`Advert::signed_payload`].
//! Checking the signature needs a crypto library, so it is done at the edge
//! (the discovery task); what a checked or unchecked advert may change is the
//! peer table's policy.

use data_encoding::BASE64URL_NOPAD;

pub use crate::vocab::PROTOCOL_VERSION;
use crate::vocab::{DeviceId, DisplayName};

/// Our DNS-SD service type.
pub const SERVICE_TYPE: &str = "_voicelink._udp.local.";

/// The keys of our TXT record.
const KEY_VERSION: &str = "v";
const KEY_ID: &str = "id";
const KEY_NAME: &str = "name";
const KEY_PORT: &str = "port";
/// Present (`bye=1`) in the last announcement a daemon makes before its goodbye, so
/// peers remove it at once instead of taking the goodbye for a lost peer.
const KEY_LEAVING: &str = "bye";
/// The proof: when the advert was made (Unix milliseconds), the certificate in
/// chunks `c0`, `c1`, … (base64url without padding), and the signature.
const KEY_TIME: &str = "t";
const KEY_CERT_PREFIX: &str = "c";
const KEY_SIGNATURE: &str = "sig";
/// Characters of the certificate per TXT string (each string is at most 255 bytes).
const CERT_CHUNK: usize = 200;
/// Chunks a certificate may take (a voicelink certificate needs 2 or 3).
const MAX_CERT_CHUNKS: usize = 8;

/// What proves an advert came from the device it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertProof {
    /// When the advert was made, in Unix milliseconds: a device's adverts only
    /// move forward, so an older one replayed is ignored.
    pub time_ms: u64,
    /// The device's certificate (DER); its hash must be the device ID.
    pub certificate: Vec<u8>,
    /// The device key's ECDSA P-256 SHA-256 signature (ASN.1 DER) over
    /// [`Advert::signed_payload`].
    pub signature: Vec<u8>,
}

/// A daemon's advertisement, as sent and as understood on receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// Signaling protocol version the peer speaks.
    pub protocol_version: u32,
    /// The peer's device ID (checked again against its certificate when dialing).
    pub device_id: DeviceId,
    /// The name its user gave it.
    pub display_name: String,
    /// TCP port of its signaling listener.
    pub signaling_port: u16,
    /// It is shutting down cleanly.
    pub leaving: bool,
    /// The signature, when the advert carries one.
    pub proof: Option<AdvertProof>,
}

/// Why a TXT record was not taken as a voicelink advertisement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxtError {
    /// No `v` key: not one of ours (some other program used our service type).
    #[error("no protocol version: not a voicelink advertisement")]
    Foreign,
    /// A key we need is missing.
    #[error("the TXT record has no `{0}`")]
    Missing(&'static str),
    /// A value is not UTF-8.
    #[error("the TXT value of `{0}` is not UTF-8")]
    NotUtf8(&'static str),
    /// A value does not parse.
    #[error("the TXT value of `{key}` is invalid: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

impl Advert {
    /// The TXT key-value pairs to publish.
    pub fn to_txt(&self) -> Vec<(String, String)> {
        let mut txt = vec![
            (KEY_VERSION.to_owned(), self.protocol_version.to_string()),
            (KEY_ID.to_owned(), self.device_id.to_string()),
            (KEY_NAME.to_owned(), self.display_name.clone()),
            (KEY_PORT.to_owned(), self.signaling_port.to_string()),
        ];
        if self.leaving {
            txt.push((KEY_LEAVING.to_owned(), "1".to_owned()));
        }
        if let Some(proof) = &self.proof {
            txt.push((KEY_TIME.to_owned(), proof.time_ms.to_string()));
            let certificate = BASE64URL_NOPAD.encode(&proof.certificate);
            for (n, chunk) in certificate.as_bytes().chunks(CERT_CHUNK).enumerate() {
                txt.push((format!("{KEY_CERT_PREFIX}{n}"), String::from_utf8_lossy(chunk).into_owned()));
            }
            txt.push((KEY_SIGNATURE.to_owned(), BASE64URL_NOPAD.encode(&proof.signature)));
        }
        txt
    }

    /// The bytes a device signs (and a peer checks) for this advert made at
    /// `time_ms`: every field a peer acts on, one per line, in this order.
    pub fn signed_payload(&self, time_ms: u64) -> Vec<u8> {
        format!(
            "voicelink-advert/1\nv={}\nid={}\nname={}\nport={}\nbye={}\nt={time_ms}\n",
            self.protocol_version,
            self.device_id,
            self.display_name,
            self.signaling_port,
            u8::from(self.leaving)
        )
        .into_bytes()
    }

    /// Reads an advertisement from TXT properties (key, value-if-any). Unknown keys
    /// are ignored so later versions can add some.
    pub fn from_txt<'a>(properties: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> Result<Advert, TxtError> {
        let mut version = None;
        let mut id = None;
        let mut name = None;
        let mut port = None;
        let mut leaving = false;
        let mut time = None;
        let mut signature = None;
        let mut chunks: [Option<&'a [u8]>; MAX_CERT_CHUNKS] = [None; MAX_CERT_CHUNKS];
        for (key, value) in properties {
            let key = key.to_ascii_lowercase();
            if let Some(n) = key.strip_prefix(KEY_CERT_PREFIX).and_then(|n| n.parse::<usize>().ok()) {
                if let Some(chunk) = chunks.get_mut(n).filter(|chunk| chunk.is_none()) {
                    *chunk = value;
                }
                continue;
            }
            // DNS-SD keys are case-insensitive; the first occurrence wins (RFC 6763 6.4).
            let slot = match key.as_str() {
                KEY_VERSION => &mut version,
                KEY_TIME => &mut time,
                KEY_SIGNATURE => &mut signature,
                KEY_ID => &mut id,
                KEY_NAME => &mut name,
                KEY_PORT => &mut port,
                KEY_LEAVING => {
                    leaving = true;
                    continue;
                }
                _ => continue,
            };
            // A key without `=` carries no value: as good as absent.
            if slot.is_none() {
                *slot = value;
            }
        }
        let text = |value: Option<&'a [u8]>, key: &'static str| -> Result<&'a str, TxtError> {
            std::str::from_utf8(value.ok_or(TxtError::Missing(key))?).map_err(|_| TxtError::NotUtf8(key))
        };
        let invalid = |key, reason: String| TxtError::Invalid { key, reason };

        let version = text(version, KEY_VERSION).map_err(|e| match e {
            TxtError::Missing(_) => TxtError::Foreign,
            other => other,
        })?;
        let protocol_version = match version.parse::<u32>() {
            Ok(v) if v >= 1 => v,
            _ => return Err(invalid(KEY_VERSION, format!("{version:?} is not a version number"))),
        };
        let device_id = text(id, KEY_ID)?.parse::<DeviceId>().map_err(|e| invalid(KEY_ID, e.to_string()))?;
        let display_name = DisplayName::from_network(text(name, KEY_NAME)?).map_err(|why| invalid(KEY_NAME, why))?;
        let port = text(port, KEY_PORT)?;
        let signaling_port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(invalid(KEY_PORT, format!("{port:?} is not a port number"))),
        };
        Ok(Advert {
            protocol_version,
            device_id,
            display_name: display_name.as_str().to_owned(),
            signaling_port,
            leaving,
            proof: proof(time, &chunks, signature),
        })
    }
}

/// The proof, if the record carries a whole one (a broken proof counts as none:
/// the advert is then unsigned).
fn proof(time: Option<&[u8]>, chunks: &[Option<&[u8]>], signature: Option<&[u8]>) -> Option<AdvertProof> {
    let time_ms = std::str::from_utf8(time?).ok()?.parse().ok()?;
    let mut certificate = Vec::new();
    for chunk in chunks.iter().map_while(|chunk| *chunk) {
        certificate.extend_from_slice(chunk);
    }
    let certificate = BASE64URL_NOPAD.decode(&certificate).ok().filter(|c| !c.is_empty())?;
    let signature = BASE64URL_NOPAD.decode(signature?).ok()?;
    Some(AdvertProof { time_ms, certificate, signature })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advert() -> Advert {
        Advert {
            protocol_version: PROTOCOL_VERSION,
            device_id: DeviceId::from_certificate_der(b"peer"),
            display_name: "alice".into(),
            signaling_port: 4711,
            leaving: false,
            proof: None,
        }
    }

    fn decode(pairs: &[(&str, Option<&str>)]) -> Result<Advert, TxtError> {
        Advert::from_txt(pairs.iter().map(|(k, v)| (*k, v.map(str::as_bytes))))
    }

    fn round_trip(advert: &Advert) -> Result<Advert, TxtError> {
        let txt = advert.to_txt();
        Advert::from_txt(txt.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes()))))
    }

    #[test]
    fn an_advert_round_trips() {
        assert_eq!(round_trip(&advert()), Ok(advert()));
        let leaving = Advert { leaving: true, ..advert() };
        assert_eq!(round_trip(&leaving), Ok(leaving));
    }

    #[test]
    fn a_proof_round_trips_in_txt_strings_that_fit() {
        let proof = AdvertProof { time_ms: 1_800_000_000_123, certificate: vec![7; 400], signature: vec![9; 72] };
        let signed = Advert { proof: Some(proof), ..advert() };
        assert!(signed.to_txt().iter().all(|(k, v)| k.len() + 1 + v.len() <= 255));
        assert_eq!(round_trip(&signed), Ok(signed.clone()));
        // A chunk missing: the advert stands, unsigned.
        let txt: Vec<(String, String)> = signed.to_txt().into_iter().filter(|(k, _)| k != "c1").collect();
        let parsed = Advert::from_txt(txt.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes())))).unwrap();
        assert_ne!(parsed.proof.map(|p| p.certificate), Some(vec![7; 400]));
        assert_eq!(
            String::from_utf8(advert().signed_payload(5)).unwrap(),
            format!("voicelink-advert/1\nv=2\nid={}\nname=alice\nport=4711\nbye=0\nt=5\n", advert().device_id)
        );
    }

    #[test]
    fn unknown_keys_and_newer_versions_are_accepted() {
        let id = advert().device_id.to_string();
        let parsed = decode(&[
            ("v", Some("7")),
            ("id", Some(&id)),
            ("name", Some("bob")),
            ("port", Some("9")),
            ("future", None),
        ])
        .unwrap();
        assert_eq!(parsed.protocol_version, 7);
        assert_eq!(parsed.display_name, "bob");
    }

    #[test]
    fn a_record_without_version_is_foreign() {
        assert_eq!(decode(&[("path", Some("/"))]), Err(TxtError::Foreign));
        assert_eq!(decode(&[]), Err(TxtError::Foreign));
    }

    #[test]
    fn malformed_records_are_refused_with_the_key_at_fault() {
        let id = advert().device_id.to_string();
        type Pairs<'a> = &'a [(&'a str, Option<&'a str>)];
        let cases: &[(Pairs, &str)] = &[
            (&[("v", Some("one")), ("id", Some(&id)), ("name", Some("a")), ("port", Some("1"))], "v"),
            (&[("v", Some("0")), ("id", Some(&id)), ("name", Some("a")), ("port", Some("1"))], "v"),
            (&[("v", Some("1")), ("id", Some("NOTANID")), ("name", Some("a")), ("port", Some("1"))], "id"),
            (&[("v", Some("1")), ("id", Some(&id)), ("name", Some(" ")), ("port", Some("1"))], "name"),
            (&[("v", Some("1")), ("id", Some(&id)), ("name", Some("\u{7}\u{202e}")), ("port", Some("1"))], "name"),
            (&[("v", Some("1")), ("id", Some(&id)), ("name", Some(&"x".repeat(64))), ("port", Some("1"))], "name"),
            (&[("v", Some("1")), ("id", Some(&id)), ("name", Some("a")), ("port", Some("0"))], "port"),
            (&[("v", Some("1")), ("id", Some(&id)), ("name", Some("a")), ("port", Some("65536"))], "port"),
        ];
        for (pairs, key) in cases {
            match decode(pairs) {
                Err(TxtError::Invalid { key: k, .. }) => assert_eq!(k, *key, "{pairs:?}"),
                other => panic!("{pairs:?} gave {other:?}"),
            }
        }
        let cleaned =
            decode(&[("v", Some("1")), ("id", Some(&id)), ("name", Some("bob\n\u{202e}")), ("port", Some("1"))]);
        assert_eq!(cleaned.map(|a| a.display_name), Ok("bob".to_owned()), "a name is cleaned, not refused");
        assert_eq!(decode(&[("v", Some("1")), ("name", Some("a")), ("port", Some("1"))]), Err(TxtError::Missing("id")));
        assert_eq!(decode(&[("v", Some("1")), ("id", None)]), Err(TxtError::Missing("id")));
        let not_utf8 = [("v", Some(&b"1"[..])), ("id", Some(&b"\xff\xfe"[..]))];
        assert_eq!(Advert::from_txt(not_utf8), Err(TxtError::NotUtf8("id")));
    }
}
