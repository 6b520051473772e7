//! The codec's own ceiling: the bench's speech through Opus alone (no network,
//! no jitter buffer, no playout), with the daemon's encoder settings, scored like
//! a call. What a clean call scores below this is the chain's; what this scores
//! below 4.64 (the reference against itself) is the codec's at that bitrate.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use voicelink_core::audio_math::samples_per_frame;
use voicelink_daemon::media::session::{CodecSettings, encoder};

use super::run::{RunSettings, pesq};
use super::speech::{self, CALL_RATE, Material};

/// Bitrates scored, kb/s: the configurable range's useful part.
const BITRATES_KBPS: [u32; 6] = [16, 24, 32, 40, 48, 64];

/// One setting's score.
#[derive(Debug, Serialize)]
pub struct CodecScore {
    pub bitrate_kbps: u32,
    /// What the encoder was told to expect (its FEC share grows with it).
    pub expected_loss_percent: i32,
    pub pesq_wb: Option<f64>,
    /// Mean bytes per 20 ms packet.
    pub mean_packet_bytes: f64,
}

/// Scores every bitrate with no expected loss (a clean call after its first
/// reports) and with the 10 % a call starts with.
pub fn run(settings: &RunSettings, material: &Material) -> Result<Vec<CodecScore>> {
    let speech = material.speech();
    let dir = settings.work.join("codec-ceiling");
    std::fs::create_dir_all(&dir)?;
    let mut scores = Vec::new();
    for bitrate_kbps in BITRATES_KBPS {
        for expected_loss_percent in [0, 10] {
            let (decoded, mean_packet_bytes) = through_opus(speech, bitrate_kbps, expected_loss_percent)
                .with_context(|| format!("Opus at {bitrate_kbps} kb/s"))?;
            let name = format!("opus-{bitrate_kbps}k-{expected_loss_percent}");
            let pesq_wb = score(settings, material, &dir, &name, &decoded)
                .inspect_err(|e| tracing::warn!(bitrate_kbps, error = %e, "codec ceiling not scored"))
                .ok();
            scores.push(CodecScore { bitrate_kbps, expected_loss_percent, pesq_wb, mean_packet_bytes });
        }
    }
    Ok(scores)
}

/// Encodes and decodes `speech` frame by frame; the decoder's output is
/// delayed by the encoder's look-ahead, which the scorer aligns.
fn through_opus(speech: &[f32], bitrate_kbps: u32, expected_loss_percent: i32) -> Result<(Vec<f32>, f64)> {
    let codec = CodecSettings { bitrate: bitrate_kbps * 1000, ..CodecSettings::default() };
    let mut encoder = encoder(&codec)?;
    encoder.set_packet_loss_perc(expected_loss_percent)?;
    let mut decoder = opus::Decoder::new(CALL_RATE, opus::Channels::Mono)?;
    let frame = samples_per_frame(Duration::from_millis(20));
    let (mut pcm, mut out, mut packet) = (vec![0i16; frame], vec![0i16; frame], vec![0u8; 1500]);
    let (mut decoded, mut bytes, mut packets) = (Vec::with_capacity(speech.len()), 0usize, 0usize);
    // One frame of silence after the speech flushes the look-ahead.
    for chunk in speech.chunks(frame).chain(std::iter::once(&[][..])) {
        pcm.fill(0);
        for (to, &from) in pcm.iter_mut().zip(chunk) {
            *to = (from.clamp(-1.0, 1.0) * 32767.0) as i16;
        }
        let len = encoder.encode(&pcm, &mut packet)?;
        let samples = decoder.decode(&packet[..len], &mut out, false)?;
        decoded.extend(out[..samples].iter().map(|&s| f32::from(s) / 32768.0));
        bytes += len;
        packets += 1;
    }
    Ok((decoded, bytes as f64 / packets.max(1) as f64))
}

fn score(settings: &RunSettings, material: &Material, dir: &Path, name: &str, decoded: &[f32]) -> Result<f64> {
    let at_48k = dir.join(format!("{name}-48k.wav"));
    let at_16k = dir.join(format!("{name}-16k.wav"));
    speech::write_wav(&at_48k, CALL_RATE, decoded)?;
    speech::resample(&at_48k, &at_16k, 16_000)?;
    pesq(settings, &material.reference_16k, &at_16k)
}
