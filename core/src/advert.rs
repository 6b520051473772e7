//! What a daemon says about itself in its mDNS TXT record, and how a record read
//! from the network is checked. Pure: no sockets, so every malformed record can be
//! tested.

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
        txt
    }

    /// Reads an advertisement from TXT properties (key, value-if-any). Unknown keys
    /// are ignored so later versions can add some.
    pub fn from_txt<'a>(properties: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> Result<Advert, TxtError> {
        let mut version = None;
        let mut id = None;
        let mut name = None;
        let mut port = None;
        let mut leaving = false;
        for (key, value) in properties {
            // DNS-SD keys are case-insensitive; the first occurrence wins (RFC 6763 6.4).
            let slot = match key.to_ascii_lowercase().as_str() {
                KEY_VERSION => &mut version,
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
        })
    }
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
