//! The speech material: Harvard sentences synthesized by espeak-ng, resampled by
//! sox, and the caller's input file built around them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Sample rate of calls.
pub const CALL_RATE: u32 = 48_000;

/// Harvard sentences (IEEE 1969, list 1), the usual material for speech-quality tests.
const TEXT: &str = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. \
It is easy to tell the depth of a well. These days a chicken leg is a rare dish. Rice is often served in round bowls.";

/// A marker tone before the speech, long enough to still be playing when the
/// call is answered: the first audio heard is then this tone, whatever the
/// moment of the answer, and is found by its level.
const MARKER_SECONDS: f64 = 2.0;
const MARKER_HZ: f64 = 440.0;
/// The echo bench's near end: another voice, other sentences (list 2).
const NEAR_TEXT: &str = "The juice of lemons makes fine punch. The box was thrown beside the parked truck. \
The hogs were fed chopped corn and garbage. Four hours of steady work faced us. A large size in stockings is hard to sell.";

/// sox effects that trim espeak's leading and trailing silence.
const TRIM: [&str; 10] = ["silence", "1", "0.01", "0.1%", "reverse", "silence", "1", "0.01", "0.1%", "reverse"];

/// Quiet between the marker and the speech.
const GAP_SECONDS: f64 = 0.5;

/// The files and samples a bench run uses.
pub struct Material {
    /// What the caller sends (48 kHz mono): marker tone, gap, speech.
    pub call_input: PathBuf,
    /// The same samples, -1.0..1.0.
    pub call_input_samples: Vec<f32>,
    /// Where the speech starts in `call_input_samples`.
    pub speech_offset: usize,
    /// Number of speech samples at 48 kHz.
    pub speech_len: usize,
    /// The speech alone at 16 kHz: the PESQ reference.
    pub reference_16k: PathBuf,
}

fn run(command: &mut Command) -> Result<()> {
    let output = command.output().with_context(|| format!("cannot run {command:?} (scripts/setup.sh --bench)"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

impl Material {
    /// The speech alone at 48 kHz, without the marker and the gap.
    pub fn speech(&self) -> &[f32] {
        &self.call_input_samples[self.speech_offset..][..self.speech_len]
    }
}

/// Makes the material in `dir`.
pub fn prepare(dir: &Path) -> Result<Material> {
    let raw = dir.join("speech-raw.wav");
    let speech_48k = dir.join("speech-48k.wav");
    let reference_16k = dir.join("speech-16k.wav");
    run(Command::new("espeak-ng").args(["-v", "en-us", "-s", "150", "-w"]).arg(&raw).arg(TEXT))?;
    // Trim espeak's leading and trailing silence so the speech fills its span.
    run(Command::new("sox").arg(&raw).args(["-r", "48000", "-c", "1", "-b", "16"]).arg(&speech_48k).args(TRIM))?;
    run(Command::new("sox").arg(&raw).args(["-r", "16000", "-c", "1", "-b", "16"]).arg(&reference_16k).args(TRIM))?;

    let speech = read_wav(&speech_48k)?;
    if speech.is_empty() {
        bail!("espeak-ng produced no speech");
    }
    let marker = (MARKER_SECONDS * f64::from(CALL_RATE)) as usize;
    let gap = (GAP_SECONDS * f64::from(CALL_RATE)) as usize;
    let mut samples: Vec<f32> = (0..marker)
        .map(|i| 0.1 * (std::f64::consts::TAU * MARKER_HZ * i as f64 / f64::from(CALL_RATE)).sin() as f32)
        .collect();
    samples.extend(std::iter::repeat_n(0.0, gap));
    let speech_offset = samples.len();
    samples.extend(&speech);
    let call_input = dir.join("call-input.wav");
    write_wav(&call_input, CALL_RATE, &samples)?;
    Ok(Material { call_input, call_input_samples: samples, speech_offset, speech_len: speech.len(), reference_16k })
}

/// The echo bench's near-end talker at 48 kHz (made in `dir`).
pub fn near_end(dir: &Path) -> Result<Vec<f32>> {
    let raw = dir.join("near-raw.wav");
    let near = dir.join("near-48k.wav");
    run(Command::new("espeak-ng").args(["-v", "en-gb+f3", "-s", "140", "-w"]).arg(&raw).arg(NEAR_TEXT))?;
    run(Command::new("sox").arg(&raw).args(["-r", "48000", "-c", "1", "-b", "16"]).arg(&near).args(TRIM))?;
    read_wav(&near)
}

/// Reads a mono 16-bit WAV as -1.0..1.0 (other channel counts are mixed down).
pub fn read_wav(path: &Path) -> Result<Vec<f32>> {
    let mut reader = hound::WavReader::open(path).with_context(|| format!("read {}", path.display()))?;
    let channels = usize::from(reader.spec().channels.max(1));
    let samples: Vec<i16> = reader.samples::<i16>().collect::<Result<_, _>>()?;
    let mono: Vec<i16> = samples
        .chunks(channels)
        .map(|frame| (frame.iter().map(|&s| i32::from(s)).sum::<i32>() / channels as i32) as i16)
        .collect();
    Ok(voicelink_bench::analysis::from_i16(&mono))
}

/// Writes mono 16-bit samples (clipped to -1.0..1.0).
pub fn write_wav(path: &Path, rate: u32, samples: &[f32]) -> Result<()> {
    write_wav_channels(path, rate, 1, samples)
}

/// As [`write_wav`], with `channels` interleaved in `samples`.
pub fn write_wav_channels(path: &Path, rate: u32, channels: u16, samples: &[f32]) -> Result<()> {
    let spec =
        hound::WavSpec { channels, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut writer = hound::WavWriter::create(path, spec).with_context(|| format!("write {}", path.display()))?;
    for &s in samples {
        writer.write_sample((s.clamp(-1.0, 1.0) * 32767.0) as i16)?;
    }
    writer.finalize()?;
    Ok(())
}

/// Resamples a WAV file with sox (to mono 16-bit at `rate`).
pub fn resample(from: &Path, to: &Path, rate: u32) -> Result<()> {
    run(Command::new("sox").arg(from).args(["-r", &rate.to_string(), "-c", "1", "-b", "16"]).arg(to))
}
