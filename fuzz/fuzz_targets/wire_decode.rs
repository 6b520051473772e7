//! Anything off the network: `decode` never panics, and what it accepts encodes
//! back to a message that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voicelink_core::wire::{Decoded, decode};

fuzz_target!(|data: &[u8]| {
    if let Ok(Decoded::Message(message)) = decode(data) {
        let again = decode(message.encode().as_bytes());
        assert_eq!(again, Ok(Decoded::Message(message)));
    }
});
