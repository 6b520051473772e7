//! Any packet pattern (sequence numbers, timestamps, packet lengths, arrival
//! times, wraps, duplicates, garbage, retransmissions): the jitter buffer never panics, never
//! plays a packet twice, and every answer lasts at least a sample (the player
//! asks until it has a frame).
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use voicelink_core::jitter_buffer::{JitterBuffer, Playout};

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut buffer = JitterBuffer::new(Duration::from_millis(20));
    let mut now = start;
    let mut played = std::collections::HashSet::new();
    for chunk in data.chunks(8) {
        if chunk.len() < 8 {
            break;
        }
        let seq = u16::from_le_bytes([chunk[0], chunk[1]]);
        let ts = u32::from_le_bytes([chunk[2], chunk[3], chunk[4], chunk[5]]);
        now += Duration::from_millis(u64::from(chunk[6]));
        // The payload names the packet so a repeat play is visible.
        let payload = bytes::Bytes::copy_from_slice(&[chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5]]);
        // Every Opus length, and two that are not.
        let samples = [0, 120, 240, 480, 960, 1920, 5760, 9999][usize::from(chunk[7] / 4 % 8)];
        // A high bit of the arrival step marks a retransmission.
        if chunk[6] & 0x80 != 0 {
            buffer.push_retransmission(seq, ts, samples, payload, now);
        } else {
            buffer.push(seq, ts, samples, payload, now);
        }
        for _ in 0..(chunk[7] % 4) {
            now += Duration::from_millis(20);
            let playout = buffer.pop(now);
            assert!(playout.samples() > 0, "{playout:?} lasts no time");
            if let Playout::Frame(frame, _) = playout {
                assert!(played.insert(frame), "a packet was played twice");
            }
        }
    }
});
