//! Audio endpoints that need no sound card: tone, silence, WAV file in and out,
//! null, and echo. All exchange 48 kHz mono 16-bit frames; the call's media task
//! paces them (one frame per frame period), so a file plays and records in real
//! time.

use std::f64::consts::TAU;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

pub use voicelink_core::audio_math::{SAMPLE_RATE, tone_share};
use voicelink_core::resample::Resampler;

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
    /// For a source its device paces (a microphone): the 48 kHz samples ready
    /// now; the sender takes a frame whenever one is there. `None` (files,
    /// tones, silence): the sender's own clock paces it, a frame per frame period.
    fn ready_samples(&mut self) -> Option<usize> {
        None
    }
}

/// Something that consumes incoming audio.
pub trait Sink: Send {
    /// Takes the next frame (silence when nothing was heard).
    fn write(&mut self, frame: &[i16]) -> Result<(), EndpointError>;
    /// Completes the output (a WAV file's header); called once at the end.
    fn finish(&mut self) -> Result<(), EndpointError>;
    /// Whether a frame written now would be heard soon. Not while a sound
    /// card's stream stalls with its backlog full (starting one takes a second
    /// or two through some sound servers): it then drops what it is given, so
    /// that the stall does not become latency.
    fn ready(&self) -> bool {
        true
    }
    /// What this output plays, as it plays it: the echo canceller's reference.
    /// A sound card's only (taken once); nothing else is heard in the room.
    fn echo_reference(&mut self) -> Option<Box<dyn EchoReference>> {
        None
    }
}

/// What a speaker played, in 48 kHz mono samples, in order.
pub trait EchoReference: Send {
    /// Everything played since the last call, handed to `take` (in pieces).
    fn drain(&mut self, take: &mut dyn FnMut(&[i16]));
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
        let mut resampled = Vec::with_capacity(mono.len());
        Resampler::new(spec.sample_rate, SAMPLE_RATE).push(&mono, &mut resampled);
        let samples = resampled.into_iter().map(|s| (s.clamp(-1.0, 1.0) * 32767.0) as i16).collect();
        Ok(WavSource { samples, position: 0, looping })
    }
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
/// The player writes what it heard into an [`EchoFeed`]; this source reads it
/// back. The two run in different tasks and share a lock-free ring.
pub struct EchoSource {
    ring: rtrb::Consumer<i16>,
}

/// The player's end of an echo: what was just heard.
pub struct EchoFeed {
    ring: rtrb::Producer<i16>,
}

/// Audio held at most (one second): a frame that does not fit is dropped.
const ECHO_MAX: usize = SAMPLE_RATE as usize;

/// A connected echo: the feed the player writes and the source the sender reads.
pub fn echo() -> (EchoFeed, EchoSource) {
    let (producer, consumer) = rtrb::RingBuffer::new(ECHO_MAX);
    (EchoFeed { ring: producer }, EchoSource { ring: consumer })
}

impl EchoFeed {
    /// Audio just received from the peer.
    pub fn push(&mut self, frame: &[i16]) {
        if let Ok(mut chunk) = self.ring.write_chunk(frame.len()) {
            let (first, second) = chunk.as_mut_slices();
            let (head, tail) = frame.split_at(first.len());
            first.copy_from_slice(head);
            second.copy_from_slice(tail);
            chunk.commit_all();
        }
    }
}

impl Source for EchoSource {
    fn fill(&mut self, frame: &mut [i16]) {
        let available = self.ring.slots().min(frame.len());
        let (heard, rest) = frame.split_at_mut(available);
        if let Ok(chunk) = self.ring.read_chunk(available) {
            let (first, second) = chunk.as_slices();
            heard[..first.len()].copy_from_slice(first);
            heard[first.len()..].copy_from_slice(second);
            chunk.commit_all();
        }
        rest.fill(0);
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

/// Records to a 48 kHz 16-bit WAV file: mono (a `file:` output), or stereo with
/// interleaved frames (a call recording). The header is brought up to date every
/// second, so the file is valid even if the daemon is killed.
pub struct WavSink {
    path: PathBuf,
    writer: Option<hound::WavWriter<BufWriter<File>>>,
    channels: u16,
    since_flush: usize,
}

impl WavSink {
    /// Creates (or replaces) a mono file.
    pub fn create(path: &Path) -> Result<Self, EndpointError> {
        let file =
            File::create(path).map_err(|e| EndpointError::WriteWav { path: path.to_owned(), reason: e.to_string() })?;
        Self::with_file(path, file, 1)
    }

    /// Creates a stereo file; one that exists is never replaced.
    pub fn create_stereo(path: &Path) -> Result<Self, EndpointError> {
        let file = File::options().write(true).create_new(true).open(path).map_err(|e| {
            let reason = match e.kind() {
                std::io::ErrorKind::AlreadyExists => "it exists; a recording never replaces a file".to_owned(),
                _ => e.to_string(),
            };
            EndpointError::WriteWav { path: path.to_owned(), reason }
        })?;
        Self::with_file(path, file, 2)
    }

    fn with_file(path: &Path, file: File, channels: u16) -> Result<Self, EndpointError> {
        let spec = hound::WavSpec {
            channels,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::new(BufWriter::new(file), spec)
            .map_err(|e| EndpointError::WriteWav { path: path.to_owned(), reason: e.to_string() })?;
        Ok(WavSink { path: path.to_owned(), writer: Some(writer), channels, since_flush: 0 })
    }

    /// The error for a file that would pass WAV's 4 GiB limit.
    pub fn too_long(&self) -> EndpointError {
        self.error("a WAV file cannot hold more than 4 GiB (about 6 hours of a stereo recording)")
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
        if self.since_flush >= SAMPLE_RATE as usize * usize::from(self.channels) {
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
        let (mut feed, mut echo) = echo();
        feed.push(&[1, 2, 3]);
        let mut out = [9i16; 5];
        echo.fill(&mut out);
        assert_eq!(out, [1, 2, 3, 0, 0]);
        // Across the ring's end, and at most a second held.
        let second = vec![7i16; ECHO_MAX];
        feed.push(&second);
        feed.push(&[5; 10]);
        let mut out = vec![0i16; ECHO_MAX];
        echo.fill(&mut out);
        assert!(out.iter().all(|&s| s == 7), "a frame that does not fit is dropped");
    }
}
