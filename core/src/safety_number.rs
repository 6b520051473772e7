//! The safety number: twenty-four digits two people read to each other during a
//! call to check that nobody sits between their devices. Both sides derive it from
//! the two device IDs their TLS connection proved (their own and the peer's), so it
//! is the same on both sides of an honest connection.
//!
//! A man in the middle holds a connection to each side with a key of its own (M1
//! towards A, M2 towards B), so the sides compute the numbers of (A, M1) and
//! (M2, B). To make them equal it can vary both keys: a birthday search over 2^80
//! numbers, about 2^40 certificates per side, each costing a signature and
//! [`ROUNDS`] hashes (about 2^56 SHA-256 in all). The derivation is in
//! docs/PROTOCOL.md, so any peer can show the same number.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::device_id::DeviceId;

/// Hash rounds per derivation: a few milliseconds once, a wall against a search.
pub const ROUNDS: u32 = 1 << 16;

/// Twenty-four decimal digits (about 80 bits), shown in six groups of four.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SafetyNumber(u128);

impl SafetyNumber {
    /// The number for a connection between `a` and `b`, in either order.
    pub fn of(a: &DeviceId, b: &DeviceId) -> Self {
        let (low, high) = if a.as_bytes() <= b.as_bytes() { (a, b) } else { (b, a) };
        let mut digest: [u8; 32] = Sha256::new()
            .chain_update(b"voicelink safety number v1")
            .chain_update(low.as_bytes())
            .chain_update(high.as_bytes())
            .finalize()
            .into();
        for _ in 1..ROUNDS {
            digest = Sha256::new().chain_update(digest).chain_update(low.as_bytes()).finalize().into();
        }
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        SafetyNumber(u128::from_be_bytes(first) % 10u128.pow(24))
    }
}

impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = format!("{:024}", self.0);
        let groups: Vec<&str> = (0..6).map(|g| &digits[4 * g..4 * g + 4]).collect();
        f.write_str(&groups.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(byte: u8) -> DeviceId {
        DeviceId::from_hash([byte; 32])
    }

    #[test]
    fn both_sides_see_the_same_number_and_any_other_pair_another() {
        let (alice, bob, mallory) = (id(1), id(2), id(3));
        let honest = SafetyNumber::of(&alice, &bob);
        assert_eq!(honest, SafetyNumber::of(&bob, &alice));
        // Mallory between them: alice sees (alice, mallory), bob sees (mallory, bob).
        assert_ne!(honest, SafetyNumber::of(&alice, &mallory));
        assert_ne!(SafetyNumber::of(&alice, &mallory), SafetyNumber::of(&mallory, &bob));
    }

    #[test]
    fn it_reads_as_six_groups_of_four_digits() {
        let text = SafetyNumber::of(&id(1), &id(2)).to_string();
        assert_eq!(text.len(), 29, "{text}");
        assert!(text.split(' ').all(|group| group.len() == 4 && group.chars().all(|c| c.is_ascii_digit())));
        assert_eq!(SafetyNumber(42).to_string(), "0000 0000 0000 0000 0000 0042");
        // The test vector in docs/PROTOCOL.md (checked there with a few lines of Python).
        assert_eq!(text, "1767 7171 4321 0861 8319 2221");
    }
}
