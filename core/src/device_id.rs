//! The device ID: the SHA-256 of a device's certificate (the Syncthing model: a
//! peer proves its ID by holding the certificate's key). Pure: the text form with
//! its check characters, parsing, and the hash.

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;
use sha2::{Digest, Sha256};

/// The base32 alphabet; check characters are drawn from it too.
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// The 52 base32 characters of the hash are checked in four chunks of 13.
const CHUNK: usize = 13;
/// Characters in the canonical form without dashes: 52 data + 4 check.
const ID_CHARS: usize = 56;

/// A device ID: the SHA-256 of the device's certificate (DER).
///
/// Written as 56 base32 characters in eight dash-separated groups of seven; every
/// 13 data characters carry a Luhn mod 32 check character, so a mistyped ID is
/// caught before anyone is dialed.
// Serialized as its text form (signaling names participants by it).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde_with::SerializeDisplay, serde_with::DeserializeFromStr,
)]
pub struct DeviceId([u8; 32]);

impl DeviceId {
    /// The ID of the device holding this certificate.
    pub fn from_certificate_der(der: &[u8]) -> Self {
        DeviceId(Sha256::digest(der).into())
    }

    /// The ID whose hash is `hash` (tests and simulations name devices this way).
    pub fn from_hash(hash: [u8; 32]) -> Self {
        DeviceId(hash)
    }

    /// The first group of the ID, enough to tell devices apart in a list.
    pub fn short(&self) -> String {
        self.to_string()[..7].to_owned()
    }

    /// The raw hash.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

fn luhn32(chars: &[u8]) -> Result<u8, DeviceIdError> {
    let mut factor = 1;
    let mut sum = 0;
    for &c in chars {
        let codepoint = ALPHABET.iter().position(|&a| a == c).ok_or(DeviceIdError::BadCharacter(char::from(c)))?;
        let addend = factor * codepoint;
        factor = if factor == 2 { 1 } else { 2 };
        sum += addend / 32 + addend % 32;
    }
    Ok(ALPHABET[(32 - sum % 32) % 32])
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data = BASE32_NOPAD.encode(&self.0);
        let mut with_checks = String::with_capacity(ID_CHARS);
        for chunk in data.as_bytes().chunks(CHUNK) {
            with_checks.push_str(std::str::from_utf8(chunk).map_err(|_| fmt::Error)?);
            with_checks.push(char::from(luhn32(chunk).map_err(|_| fmt::Error)?));
        }
        for (i, group) in with_checks.as_bytes().chunks(7).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            f.write_str(std::str::from_utf8(group).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

/// Why a string is not a device ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    /// Wrong number of characters (dashes and spaces do not count).
    #[error("a device ID has 56 characters (not counting dashes), this one has {0}")]
    WrongLength(usize),
    /// A character outside A-Z and 2-7.
    #[error("a device ID uses only the letters A-Z and digits 2-7, not {0:?}")]
    BadCharacter(char),
    /// A check character does not match: the ID was mistyped.
    #[error("the device ID fails its check (group {0}): it was probably mistyped")]
    CheckFailed(usize),
}

impl FromStr for DeviceId {
    type Err = DeviceIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let canonical: Vec<u8> =
            s.bytes().filter(|b| !matches!(b, b'-' | b' ')).map(|b| b.to_ascii_uppercase()).collect();
        if canonical.len() != ID_CHARS {
            return Err(DeviceIdError::WrongLength(canonical.len()));
        }
        let mut data = Vec::with_capacity(ID_CHARS - 4);
        for (i, chunk) in canonical.chunks(CHUNK + 1).enumerate() {
            let (body, check) = chunk.split_at(CHUNK);
            if luhn32(body)? != check[0] {
                return Err(DeviceIdError::CheckFailed(i + 1));
            }
            data.extend_from_slice(body);
        }
        let bytes =
            BASE32_NOPAD.decode(&data).map_err(|e| DeviceIdError::BadCharacter(char::from(data[e.position])))?;
        let hash: [u8; 32] = bytes.try_into().map_err(|_| DeviceIdError::WrongLength(canonical.len()))?;
        Ok(DeviceId(hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_round_trips_through_its_text_form() {
        let id = DeviceId::from_certificate_der(b"some certificate");
        let text = id.to_string();
        assert_eq!(text.len(), 63, "{text}");
        assert_eq!(text.split('-').count(), 8);
        assert_eq!(text.parse::<DeviceId>(), Ok(id));
        // Lower case and no dashes are accepted too.
        assert_eq!(text.replace('-', "").to_lowercase().parse::<DeviceId>(), Ok(id));
        assert_eq!(id.short(), text[..7]);
    }

    #[test]
    fn a_mistyped_device_id_is_caught_by_its_check_characters() {
        let text = DeviceId::from_certificate_der(b"x").to_string();
        let mut bytes = text.into_bytes();
        // Change one data character in the third group.
        bytes[17] = if bytes[17] == b'A' { b'B' } else { b'A' };
        let typo = String::from_utf8(bytes).unwrap();
        assert!(matches!(typo.parse::<DeviceId>(), Err(DeviceIdError::CheckFailed(_))), "{typo}");
    }

    #[test]
    fn malformed_device_ids_are_refused_with_the_reason() {
        assert_eq!("ABC".parse::<DeviceId>(), Err(DeviceIdError::WrongLength(3)));
        let with_bad_char = format!("1{}", "A".repeat(55));
        assert_eq!(with_bad_char.parse::<DeviceId>(), Err(DeviceIdError::BadCharacter('1')));
    }
}
