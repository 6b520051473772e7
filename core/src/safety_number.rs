//! The safety number: twelve digits two people read to each other during a call
//! to check that nobody sits between their devices. Both sides derive it from the
//! two device IDs their TLS connection proved (their own and the peer's), so it is
//! the same on both sides of an honest connection.
//!
//! A man in the middle holds a connection to each side with keys of its own, so
//! each side computes the number from a different pair; to make both show the same
//! digits it would have to find a key whose pair collides, a search over 2^40
//! numbers, each costing [`ROUNDS`] hashes (about 2^54 SHA-256 in all). The
//! derivation is in docs/PROTOCOL.md, so any peer can show the same number.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::device_id::DeviceId;

/// Hash rounds per derivation: a few milliseconds once, a wall against a search.
pub const ROUNDS: u32 = 1 << 14;

/// Twelve decimal digits (about 40 bits), shown in four groups of three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SafetyNumber(u64);

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
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        SafetyNumber(u64::from_be_bytes(first) % 1_000_000_000_000)
    }
}

impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = format!("{:012}", self.0);
        write!(f, "{} {} {} {}", &digits[0..3], &digits[3..6], &digits[6..9], &digits[9..12])
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
    fn it_reads_as_four_groups_of_three_digits() {
        let text = SafetyNumber::of(&id(1), &id(2)).to_string();
        assert_eq!(text.len(), 15, "{text}");
        assert!(text.split(' ').all(|group| group.len() == 3 && group.chars().all(|c| c.is_ascii_digit())));
        assert_eq!(SafetyNumber(42).to_string(), "000 000 000 042");
        // The test vector in docs/PROTOCOL.md (checked there with a few lines of Python).
        assert_eq!(text, "892 349 878 822");
    }
}
