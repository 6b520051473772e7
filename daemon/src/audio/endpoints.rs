//! Audio endpoints that need no sound card: tone, silence, WAV file in and out,
//! null, and echo. All exchange 48 kHz mono 16-bit frames; the call's media task
//! paces them (one frame per frame period), so a file plays and records in real
//! time.

use std::collections::VecDeque;
use std::f64::consts::TAU;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// The media sample rate.
pub const SAMPLE_RATE: u32 = 48_000;

/// Why an endpoint could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The WAV file cannot be read.
    #[error("cannot read the WAV file {path}: {reason}")]
    ReadWav {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The WAV file cannot be written.
    #[error("cannot write the WAV file {path}: {reason}")]
    WriteWav {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A sound-card endpoint that this build cannot open.
    #[error("{0}")]
    Unavailable(String),
}

/// Something that produces outgoing audio.
pub trait Source: Send {
    /// Fills `frame` with the next samples.
    fn fill(&mut self, frame: &mut [i16]);
}

/// Something that consumes incoming audio.
pub trait Sink: Send {
    /// Takes the next frame (silence when nothing was heard).
    fn write(&mut self, frame: &[i16]) -> Result<(), EndpointError>;
    /// Completes the output (a WAV file's header); called once at the end.
    fn finish(&mut self) -> Result<(), EndpointError>;
}

/// A sine tone at -12 dBFS.
pub struct Tone {
    hz: f64,
    phase: f64,
}

impl Tone {
    /// A tone of `hz` hertz.
    pub fn new(hz: u32) -> Self {
        Tone { hz: f64::from(hz), phase: 0.0 }
    }
}

impl Source for Tone {
    fn fill(&mut self, frame: &mut [i16]) {
        let step = TAU * self.hz / f64::from(SAMPLE_RATE);
        for sample in frame {
            *sample = (self.phase.sin() * 8192.0) as i16;
            self.phase = (self.phase + step) % TAU;
        }
    }
}

/// Digital silence.
pub struct Silence;

impl Source for Silence {
    fn fill(&mut self, frame: &mut [i16]) {
        frame.fill(0);
    }
}

/// A WAV file, converted to 48 kHz mono, optionally looping; silence after its end.
pub struct WavSource {
    samples: Vec<i16>,
    position: usize,
    looping: bool,
}

impl WavSource {
    /// Reads the whole file (speech clips are small). Any channel count, 8-32
    /// bit integer or float, any rate (resampled linearly).
    pub fn open(path: &Path, looping: bool) -> Result<Self, EndpointError> {
        let error = |reason: String| EndpointError::ReadWav { path: path.to_owned(), reason };
        let mut reader = hound::WavReader::open(path).map_err(|e| error(e.to_string()))?;
        let spec = reader.spec();
        if spec.channels == 0 || spec.sample_rate == 0 {
            return Err(error("the header has no channels or no sample rate".into()));
        }
        let channels = usize::from(spec.channels);
        let interleaved: Vec<f32> = match spec.sample_format {
            hound::SampleFormat::Float => {
                reader.samples::<f32>().collect::<Result<_, _>>().map_err(|e| error(e.to_string()))?
            }
            hound::SampleFormat::Int => {
                let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
                reader
                    .samples::<i32>()
                    .map(|s| s.map(|s| s as f32 * scale))
                    .collect::<Result<_, _>>()
                    .map_err(|e| error(e.to_string()))?
            }
        };
        let mono: Vec<f32> =
            interleaved.chunks(channels).map(|frame| frame.iter().sum::<f32>() / channels as f32).collect();
        let samples = resample(&mono, spec.sample_rate, SAMPLE_RATE)
            .into_iter()
            .map(|s| (s.clamp(-1.0, 1.0) * 32767.0) as i16)
            .collect();
        Ok(WavSource { samples, position: 0, looping })
    }
}

/// Linear-interpolation resampling: adequate for speech test material.
fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || input.is_empty() {
        return input.to_vec();
    }
    let ratio = f64::from(from) / f64::from(to);
    let len = (input.len() as f64 / ratio) as usize;
    (0..len)
        .map(|i| {
            let at = i as f64 * ratio;
            let index = at as usize;
            let fraction = (at - index as f64) as f32;
            let a = input[index.min(input.len() - 1)];
            let b = input[(index + 1).min(input.len() - 1)];
            a + (b - a) * fraction
        })
        .collect()
}

impl Source for WavSource {
    fn fill(&mut self, frame: &mut [i16]) {
        for sample in frame {
            if self.position >= self.samples.len() && self.looping && !self.samples.is_empty() {
                self.position = 0;
            }
            *sample = self.samples.get(self.position).copied().unwrap_or(0);
            self.position += 1;
        }
    }
}

/// Plays back what the peer sent (the far end's own voice): an echo-test peer.
/// Fed by the receive path through `EchoSource::push`.
#[derive(Default)]
pub struct EchoSource {
    queue: VecDeque<i16>,
}

/// Frames of echo held at most (one second); older audio is dropped.
const ECHO_MAX: usize = SAMPLE_RATE as usize;

impl EchoSource {
    /// Audio just received from the peer.
    pub fn push(&mut self, frame: &[i16]) {
        self.queue.extend(frame);
        let excess = self.queue.len().saturating_sub(ECHO_MAX);
        self.queue.drain(..excess);
    }
}

impl Source for EchoSource {
    fn fill(&mut self, frame: &mut [i16]) {
        for sample in frame {
            *sample = self.queue.pop_front().unwrap_or(0);
        }
    }
}

/// Discards audio.
pub struct NullSink;

impl Sink for NullSink {
    fn write(&mut self, _: &[i16]) -> Result<(), EndpointError> {
        Ok(())
    }
    fn finish(&mut self) -> Result<(), EndpointError> {
        Ok(())
    }
}

/// Records to a 48 kHz mono 16-bit WAV file. The header is brought up to date
/// every second, so the file is valid even if the daemon is killed.
pub struct WavSink {
    path: PathBuf,
    writer: Option<hound::WavWriter<BufWriter<File>>>,
    since_flush: usize,
}

impl WavSink {
    /// Creates (or replaces) the file.
    pub fn create(path: &Path) -> Result<Self, EndpointError> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(path, spec)
            .map_err(|e| EndpointError::WriteWav { path: path.to_owned(), reason: e.to_string() })?;
        Ok(WavSink { path: path.to_owned(), writer: Some(writer), since_flush: 0 })
    }

    fn error(&self, e: impl std::fmt::Display) -> EndpointError {
        EndpointError::WriteWav { path: self.path.clone(), reason: e.to_string() }
    }
}

impl Sink for WavSink {
    fn write(&mut self, frame: &[i16]) -> Result<(), EndpointError> {
        let Some(writer) = self.writer.as_mut() else { return Ok(()) };
        let mut samples = writer.get_i16_writer(frame.len() as u32);
        for &sample in frame {
            samples.write_sample(sample);
        }
        samples.flush().map_err(|e| self.error(e))?;
        self.since_flush += frame.len();
        if self.since_flush >= SAMPLE_RATE as usize {
            self.since_flush = 0;
            if let Some(writer) = self.writer.as_mut() {
                writer
                    .flush()
                    .map_err(|e| EndpointError::WriteWav { path: self.path.clone(), reason: e.to_string() })?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), EndpointError> {
        match self.writer.take() {
            Some(writer) => writer.finalize().map_err(|e| self.error(e)),
            None => Ok(()),
        }
    }
}

impl Drop for WavSink {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Goertzel power of `hz` in `samples` relative to the total power: how much of
/// the signal is that tone (1.0 = all of it). Used by tests and the bench.
pub fn tone_share(samples: &[i16], hz: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let omega = TAU * hz / f64::from(SAMPLE_RATE);
    let coefficient = 2.0 * omega.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut total = 0.0;
    for &sample in samples {
        let x = f64::from(sample);
        total += x * x;
        let s0 = x + coefficient * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coefficient * s1 * s2;
    if total == 0.0 { 0.0 } else { 2.0 * power / (samples.len() as f64 * total) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tone_is_that_tone() {
        let mut tone = Tone::new(440);
        let mut samples = vec![0i16; 4800];
        tone.fill(&mut samples);
        assert!(tone_share(&samples, 440.0) > 0.9, "{}", tone_share(&samples, 440.0));
        assert!(tone_share(&samples, 880.0) < 0.01);
        assert_eq!(tone_share(&[0; 960], 440.0), 0.0, "silence has no tone");
    }

    #[test]
    fn a_recording_reads_back_as_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heard.wav");
        let mut sink = WavSink::create(&path).unwrap();
        let mut tone = Tone::new(880);
        let mut frame = [0i16; 960];
        for _ in 0..50 {
            tone.fill(&mut frame);
            sink.write(&frame).unwrap();
        }
        sink.finish().unwrap();
        let mut source = WavSource::open(&path, false).unwrap();
        let mut back = vec![0i16; 960 * 50];
        source.fill(&mut back);
        assert!(tone_share(&back, 880.0) > 0.9);
        let mut after = [1i16; 10];
        source.fill(&mut after);
        assert_eq!(after, [0; 10], "silence after the end");
    }

    #[test]
    fn other_rates_and_channels_are_converted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(&path, spec).unwrap();
        for i in 0..16_000 {
            let s = ((i as f64 * TAU * 440.0 / 16_000.0).sin() * 10_000.0) as i16;
            writer.write_sample(s).unwrap();
            writer.write_sample(s).unwrap();
        }
        writer.finalize().unwrap();
        let mut source = WavSource::open(&path, true).unwrap();
        let mut samples = vec![0i16; 48_000];
        source.fill(&mut samples);
        assert!(tone_share(&samples, 440.0) > 0.8, "{}", tone_share(&samples, 440.0));
        source.fill(&mut samples[..100]);
        assert_ne!(samples[..100], [0; 100], "looping starts again");
    }

    #[test]
    fn an_unreadable_wav_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not.wav");
        std::fs::write(&path, b"RIFF garbage").unwrap();
        let error = WavSource::open(&path, false).err().unwrap().to_string();
        assert!(error.contains("not.wav"), "{error}");
        let error = WavSource::open(&dir.path().join("missing.wav"), false).err().unwrap().to_string();
        assert!(error.contains("missing.wav"), "{error}");
    }

    #[test]
    fn echo_returns_what_it_was_given_and_silence_after() {
        let mut echo = EchoSource::default();
        echo.push(&[1, 2, 3]);
        let mut out = [9i16; 5];
        echo.fill(&mut out);
        assert_eq!(out, [1, 2, 3, 0, 0]);
    }
}
