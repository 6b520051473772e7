//! The echo bench: the daemon's capture processing (echo cancellation, noise
//! suppression, gain control) run on a simulated room (`echo_room`), no sound
//! card and no network. Three scenes, all 48 kHz in 10 ms chunks, the far end
//! handed over before the microphone's chunk of the same moment:
//!
//! - single talk: the far end speaks for 24 s; at 12 s the echo path changes
//!   (another room, 140 ms instead of 60 ms, drifting by 0.1 %): ERLE, and the
//!   time to converge at the start and after the change;
//! - double talk: after 6 s of far end alone, the near end speaks over it: the
//!   near end's PESQ-WB in the output, against the near end alone through the
//!   same chain;
//! - noise: 8 s of a fan at -40 dBFS and nobody speaking: what is left of it.
//!
//! The CPU figure is the whole chain's time per 10 ms chunk on this machine.
//! With the `compare-aec3` feature the same scenes also run through the `aec3`
//! crate, for docs/AUDIO_PROCESSING.md.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;
use voicelink_bench::echo_room::{
    RATE, convergence, convolve, delayed, erle_windows, fan_noise, impulse_response, level_db_of, loudspeaker,
    mean_erle,
};
use voicelink_core::voice_processing::{CHUNK_SAMPLES, ProcessingChoice, VoiceProcessor};

use super::run::{RunSettings, pesq};
use super::speech::{self, Material};

/// What one canceller did in the three scenes.
#[derive(Debug, Serialize, Clone)]
pub struct EchoResult {
    /// Which implementation, and which stages.
    pub canceller: String,
    /// Mean ERLE over the far end's windows from 4 s to the path change, dB.
    pub erle_db: Option<f64>,
    /// The same, from 4 s after the change (the drifting path) to the end.
    pub erle_after_change_db: Option<f64>,
    /// From the first far-end speech to five windows in a row at 20 dB or better.
    pub convergence_s: Option<f64>,
    /// The same after the echo path changed.
    pub reconvergence_s: Option<f64>,
    /// The near end's PESQ-WB in the output while both talk.
    pub double_talk_pesq: Option<f64>,
    /// The near end alone through the same chain (no far end): the goal's reference.
    pub near_alone_pesq: Option<f64>,
    /// The microphone itself while both talk (no processing).
    pub unprocessed_pesq: Option<f64>,
    /// The fan at the microphone and after the chain, dBFS.
    pub noise_in_dbfs: f64,
    pub noise_out_dbfs: f64,
    /// Microseconds per 10 ms chunk (far end and microphone together).
    pub cpu_us_per_chunk: f64,
    /// Problems that left a figure out.
    pub notes: Vec<String>,
}

/// An echo canceller under test: 10 ms chunks of -1.0..1.0 samples.
trait Canceller {
    fn far_end(&mut self, chunk: &[f32]);
    fn near_end(&mut self, chunk: &mut [f32]);
}

/// The daemon's own chain (core's `VoiceProcessor`), on 16-bit samples as in a call.
struct Daemon {
    processor: VoiceProcessor,
    pcm: Vec<i16>,
}

impl Daemon {
    fn new(choice: ProcessingChoice) -> Self {
        Daemon { processor: VoiceProcessor::new(choice), pcm: vec![0; CHUNK_SAMPLES] }
    }
}

fn to_i16(from: &[f32], to: &mut [i16]) {
    for (t, f) in to.iter_mut().zip(from) {
        *t = (f.clamp(-1.0, 1.0) * 32767.0) as i16;
    }
}

impl Canceller for Daemon {
    fn far_end(&mut self, chunk: &[f32]) {
        to_i16(chunk, &mut self.pcm);
        self.processor.far_end(&self.pcm);
    }

    fn near_end(&mut self, chunk: &mut [f32]) {
        to_i16(chunk, &mut self.pcm);
        self.processor.near_end(&mut self.pcm);
        for (c, p) in chunk.iter_mut().zip(&self.pcm) {
            *c = f32::from(*p) / 32768.0;
        }
    }
}

#[cfg(feature = "compare-aec3")]
struct Aec3(aec3::pipelines::linear::LinearPipeline);

#[cfg(feature = "compare-aec3")]
impl Aec3 {
    fn new() -> Self {
        let format = aec3::nodes::audio::AudioFormat::ten_ms(RATE as u32, 1);
        let pipeline = aec3::pipelines::linear::builder(format, format)
            .enable_noise_suppression(true)
            .enable_gain_controller2(true)
            .build()
            .expect("aec3's linear pipeline builds");
        Aec3(pipeline)
    }
}

#[cfg(feature = "compare-aec3")]
impl Canceller for Aec3 {
    fn far_end(&mut self, chunk: &[f32]) {
        let _ = self.0.handle_render_frame(chunk);
    }

    fn near_end(&mut self, chunk: &mut [f32]) {
        let input = chunk.to_vec();
        if !matches!(self.0.process_capture_frame(&input, chunk), Ok(true)) {
            chunk.fill(0.0);
        }
    }
}

/// Runs `far` (played) and `mic` through a canceller; returns the output and
/// the time taken.
fn run(canceller: &mut dyn Canceller, far: &[f32], mic: &[f32]) -> (Vec<f32>, f64) {
    let mut out = mic.to_vec();
    let silence = [0.0f32; CHUNK_SAMPLES];
    let started = Instant::now();
    for (index, chunk) in out.chunks_exact_mut(CHUNK_SAMPLES).enumerate() {
        let at = index * CHUNK_SAMPLES;
        canceller.far_end(far.get(at..at + CHUNK_SAMPLES).unwrap_or(&silence));
        canceller.near_end(chunk);
    }
    (out, started.elapsed().as_secs_f64())
}

fn repeat_to(samples: &[f32], len: usize) -> Vec<f32> {
    samples.iter().cycle().take(len).copied().collect()
}

/// The scenes' signals, made once for every canceller.
struct Scenes {
    far: Vec<f32>,
    mic: Vec<f32>,
    change_at: usize,
    dt_far: Vec<f32>,
    dt_mic: Vec<f32>,
    dt_near_alone: Vec<f32>,
    dt_near: Vec<f32>,
    dt_start: usize,
    fan: Vec<f32>,
}

fn scenes(far_speech: &[f32], near_speech: &[f32]) -> Scenes {
    // Speech played at about -24 dBFS; a quiet room (-70 dBFS) for single talk.
    let played: Vec<f32> = far_speech.iter().map(|s| s * 0.7).collect();
    let len = 24 * RATE;
    let change_at = 12 * RATE;
    let far = repeat_to(&played, len);
    let speaker = loudspeaker(&far);
    let room_a = convolve(&speaker, &impulse_response(1, 0.25, 0.12));
    let room_b = convolve(&speaker, &impulse_response(2, 0.35, 0.12));
    let echo_a = delayed(&room_a, |_| 0.060 * RATE as f64);
    // Path B: 140 ms, and the speaker's clock 0.1 % slower than the microphone's.
    let echo_b = delayed(&room_b, |n| 0.140 * RATE as f64 + n.saturating_sub(change_at) as f64 * 0.001);
    let floor = fan_noise(3, len, -70.0);
    let mic: Vec<f32> = (0..len).map(|n| if n < change_at { echo_a[n] } else { echo_b[n] } + floor[n]).collect();

    let dt_start = 6 * RATE;
    let dt_len = dt_start + near_speech.len();
    let dt_far = repeat_to(&played, dt_len);
    let dt_echo = delayed(&convolve(&loudspeaker(&dt_far), &impulse_response(1, 0.25, 0.12)), |_| 0.060 * RATE as f64);
    let mut dt_near = vec![0.0f32; dt_len];
    for (to, from) in dt_near[dt_start..].iter_mut().zip(near_speech) {
        *to = from * 0.5;
    }
    let dt_floor = fan_noise(4, dt_len, -70.0);
    let dt_mic: Vec<f32> = (0..dt_len).map(|n| dt_echo[n] + dt_near[n] + dt_floor[n]).collect();
    let dt_near_alone: Vec<f32> = (0..dt_len).map(|n| dt_near[n] + dt_floor[n]).collect();
    Scenes { far, mic, change_at, dt_far, dt_mic, dt_near_alone, dt_near, dt_start, fan: fan_noise(5, 8 * RATE, -40.0) }
}

fn measure(
    (name, label): (&str, &str),
    make: &dyn Fn() -> Box<dyn Canceller>,
    scenes: &Scenes,
    settings: &RunSettings,
    dir: &Path,
) -> EchoResult {
    let s = scenes;
    let (out, seconds) = run(make().as_mut(), &s.far, &s.mic);
    let chunks = (s.mic.len() / CHUNK_SAMPLES) as f64;
    let before = erle_windows(&s.mic, &out, &s.far, 0, s.change_at);
    let after = erle_windows(&s.mic, &out, &s.far, s.change_at, s.mic.len());

    let (dt_out, _) = run(make().as_mut(), &s.dt_far, &s.dt_mic);
    let (alone_out, _) = run(make().as_mut(), &vec![0.0; s.dt_far.len()], &s.dt_near_alone);
    let (fan_out, _) = run(make().as_mut(), &[], &s.fan);
    let late = 4 * RATE;

    let mut notes = Vec::new();
    let mut score = |what: &str, degraded: &[f32]| -> Option<f64> {
        let span = s.dt_start..degraded.len().min(s.dt_near.len());
        let result = (|| -> Result<f64> {
            let reference = write_16k(dir, &format!("{name}-{what}-reference"), &s.dt_near[span.clone()])?;
            let degraded = write_16k(dir, &format!("{name}-{what}"), &degraded[span.clone()])?;
            pesq(settings, &reference, &degraded)
        })();
        result.map_err(|e| notes.push(format!("no PESQ for {what}: {e:#}"))).ok()
    };
    let double_talk_pesq = score("double-talk", &dt_out);
    let near_alone_pesq = score("near-alone", &alone_out);
    let unprocessed_pesq = score("unprocessed", &s.dt_mic);
    EchoResult {
        canceller: label.into(),
        erle_db: mean_erle(&before, 4.0),
        erle_after_change_db: mean_erle(&after, 4.0),
        convergence_s: convergence(&before, 20.0),
        reconvergence_s: convergence(&after, 20.0),
        double_talk_pesq,
        near_alone_pesq,
        unprocessed_pesq,
        noise_in_dbfs: level_db_of(&s.fan[late..]),
        noise_out_dbfs: level_db_of(&fan_out[late..]),
        cpu_us_per_chunk: seconds / chunks * 1e6,
        notes,
    }
}

/// Writes 48 kHz samples as a 16 kHz WAV (sox resamples), for PESQ.
fn write_16k(dir: &Path, name: &str, samples: &[f32]) -> Result<std::path::PathBuf> {
    let at_48k = dir.join(format!("{name}-48k.wav"));
    let at_16k = dir.join(format!("{name}-16k.wav"));
    speech::write_wav(&at_48k, RATE as u32, samples)?;
    speech::resample(&at_48k, &at_16k, 16_000)?;
    Ok(at_16k)
}

/// Runs the echo bench: the daemon's chain, and `aec3` with `compare-aec3`.
pub fn run_all(settings: &RunSettings, material: &Material) -> Result<Vec<EchoResult>> {
    let dir = settings.work.join("echo");
    std::fs::create_dir_all(&dir)?;
    let far_speech = material.speech();
    let near_speech = speech::near_end(&dir).context("the near end's speech")?;
    let scenes = scenes(far_speech, &near_speech);
    Ok(vec![
        measure(
            ("voicelink", "voicelink: the whole chain (sonora 0.2: AEC3, NS, AGC2)"),
            &|| Box::new(Daemon::new(ProcessingChoice::ALL)),
            &scenes,
            settings,
            &dir,
        ),
        measure(
            ("voicelink-aec", "voicelink: echo canceller alone (AEC3)"),
            &|| Box::new(Daemon::new(ProcessingChoice { echo_cancellation: true, ..Default::default() })),
            &scenes,
            settings,
            &dir,
        ),
        #[cfg(feature = "compare-aec3")]
        measure(("aec3", "aec3 0.4 (AEC3, NS, AGC2)"), &|| Box::new(Aec3::new()), &scenes, settings, &dir),
    ])
}
