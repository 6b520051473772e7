//! The capture chain's voice processing: echo cancellation, noise suppression and
//! automatic gain control, by `sonora` (a pure-Rust port of WebRTC's audio
//! processing module: AEC3, NS, AGC2). What the speaker plays is the far end, the
//! echo reference; what the microphone hears is the near end, cleaned in place.
//!
//! Both sides are 48 kHz mono 16-bit, in any whole number of 10 ms chunks (the
//! call's 10 or 20 ms frames). Pure computation, no clock: the caller hands the
//! far end over before the near-end frame it may have reached, and AEC3 finds the
//! delay between them (up to about 600 ms) itself.

use sonora::config::{
    AdaptiveDigital, EchoCanceller, GainController2, HighPassFilter, NoiseSuppression, NoiseSuppressionLevel,
};
use sonora::{AudioProcessing, Config, StreamConfig};

use crate::audio_math::SAMPLE_RATE;

/// Samples in the 10 ms chunk the processing works on.
pub const CHUNK_SAMPLES: usize = SAMPLE_RATE as usize / 100;

/// Which stages run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcessingChoice {
    /// Remove what the speaker plays from what the microphone hears.
    pub echo_cancellation: bool,
    /// Attenuate steady background noise (fans, hum).
    pub noise_suppression: bool,
    /// Bring a quiet or loud microphone to a steady speech level.
    pub gain_control: bool,
}

impl ProcessingChoice {
    /// Everything on.
    pub const ALL: ProcessingChoice =
        ProcessingChoice { echo_cancellation: true, noise_suppression: true, gain_control: true };

    /// Whether any stage runs.
    pub fn any(&self) -> bool {
        self.echo_cancellation || self.noise_suppression || self.gain_control
    }

    fn config(&self) -> Config {
        Config {
            // Removes DC and rumble below ~80 Hz, which AEC3 and NS expect gone.
            high_pass_filter: self.any().then(HighPassFilter::default),
            echo_canceller: self.echo_cancellation.then(EchoCanceller::default),
            noise_suppression: self
                .noise_suppression
                .then_some(NoiseSuppression { level: NoiseSuppressionLevel::Moderate, ..Default::default() }),
            gain_controller2: self
                .gain_control
                .then(|| GainController2 { adaptive_digital: Some(AdaptiveDigital::default()), ..Default::default() }),
            ..Default::default()
        }
    }
}

/// A change to some stages of a call's processing; the others keep their value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcessingChange {
    /// Turn echo cancellation on or off.
    pub echo_cancellation: Option<bool>,
    /// Turn noise suppression on or off.
    pub noise_suppression: Option<bool>,
    /// Turn gain control on or off.
    pub gain_control: Option<bool>,
}

impl ProcessingChange {
    /// This change, then `later` (whose stages win).
    pub fn then(self, later: ProcessingChange) -> ProcessingChange {
        ProcessingChange {
            echo_cancellation: later.echo_cancellation.or(self.echo_cancellation),
            noise_suppression: later.noise_suppression.or(self.noise_suppression),
            gain_control: later.gain_control.or(self.gain_control),
        }
    }

    /// Whether it names no stage.
    pub fn is_empty(&self) -> bool {
        *self == ProcessingChange::default()
    }

    /// `choice` with this change made.
    pub fn applied_to(self, choice: ProcessingChoice) -> ProcessingChoice {
        ProcessingChoice {
            echo_cancellation: self.echo_cancellation.unwrap_or(choice.echo_cancellation),
            noise_suppression: self.noise_suppression.unwrap_or(choice.noise_suppression),
            gain_control: self.gain_control.unwrap_or(choice.gain_control),
        }
    }
}

/// What the echo canceller reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProcessingStats {
    /// Echo return loss enhancement: how much quieter the echo is after the
    /// canceller than before, in dB.
    pub erle_db: Option<f64>,
    /// The delay found between what was played and its echo, in ms.
    pub echo_delay_ms: Option<i32>,
}

/// One call's capture processing.
pub struct VoiceProcessor {
    apm: AudioProcessing,
    choice: ProcessingChoice,
    /// Far-end samples short of a whole chunk, kept for the next call.
    far_pending: Vec<i16>,
    chunk_out: [i16; CHUNK_SAMPLES],
}

impl std::fmt::Debug for VoiceProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceProcessor").field("choice", &self.choice).finish_non_exhaustive()
    }
}

impl VoiceProcessor {
    /// A processor running the stages `choice` turns on.
    pub fn new(choice: ProcessingChoice) -> Self {
        let stream = StreamConfig::new(SAMPLE_RATE, 1);
        let apm =
            AudioProcessing::builder().config(choice.config()).capture_config(stream).render_config(stream).build();
        VoiceProcessor { apm, choice, far_pending: Vec::with_capacity(CHUNK_SAMPLES), chunk_out: [0; CHUNK_SAMPLES] }
    }

    /// The stages running.
    pub fn choice(&self) -> ProcessingChoice {
        self.choice
    }

    /// Turns stages on or off. sonora then starts every stage afresh: the echo
    /// canceller converges again (within about a second of far-end speech).
    pub fn set_choice(&mut self, choice: ProcessingChoice) {
        if choice != self.choice {
            self.choice = choice;
            self.apm.apply_config(choice.config());
        }
    }

    /// Takes what the speaker played (or is about to play): the echo reference.
    /// Any length; a partial chunk waits for the rest.
    pub fn far_end(&mut self, samples: &[i16]) {
        if !self.choice.echo_cancellation {
            return;
        }
        self.far_pending.extend_from_slice(samples);
        let whole = self.far_pending.len() / CHUNK_SAMPLES * CHUNK_SAMPLES;
        let pending = std::mem::take(&mut self.far_pending);
        for chunk in pending[..whole].chunks_exact(CHUNK_SAMPLES) {
            self.render(chunk);
        }
        self.far_pending = pending;
        self.far_pending.drain(..whole);
    }

    fn render(&mut self, chunk: &[i16]) {
        // The render side's output is not used (no render processing is on). It
        // fails only for a chunk of the wrong length, which `far_end` never makes.
        let _ = self.apm.process_render_i16(chunk, &mut self.chunk_out);
    }

    /// Cleans what the microphone heard, in place. Whole 10 ms chunks are
    /// processed; a remainder (never with 10 or 20 ms frames) passes unchanged.
    pub fn near_end(&mut self, frame: &mut [i16]) {
        if !self.choice.any() {
            return;
        }
        for chunk in frame.chunks_exact_mut(CHUNK_SAMPLES) {
            // Fails only for a chunk of the wrong length: it then passes unchanged.
            if self.apm.process_capture_i16(chunk, &mut self.chunk_out).is_ok() {
                chunk.copy_from_slice(&self.chunk_out);
            }
        }
    }

    /// The echo canceller's own figures (none while it is off).
    pub fn stats(&self) -> ProcessingStats {
        if !self.choice.echo_cancellation {
            return ProcessingStats::default();
        }
        let stats = self.apm.statistics();
        ProcessingStats { erle_db: stats.echo_return_loss_enhancement, echo_delay_ms: stats.delay_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn power(samples: &[i16]) -> f64 {
        samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / samples.len().max(1) as f64
    }

    fn db(ratio: f64) -> f64 {
        10.0 * ratio.max(1e-12).log10()
    }

    /// Speech-like far end: noise shaped into syllables.
    fn far_end(rng: &mut ChaCha8Rng, len: usize) -> Vec<i16> {
        let mut smooth = 0.0f64;
        (0..len)
            .map(|i| {
                let white: f64 = rng.random_range(-1.0..1.0);
                smooth = 0.7 * smooth + 0.3 * white;
                let envelope = (std::f64::consts::TAU * 3.0 * i as f64 / 48_000.0).sin().abs();
                (smooth * envelope * 12_000.0) as i16
            })
            .collect()
    }

    /// The microphone hears the far end 40 ms later through two reflections.
    fn room(far: &[i16]) -> Vec<i16> {
        let at = |i: usize, back: usize| i.checked_sub(back).map_or(0.0, |j| f64::from(far[j]));
        (0..far.len()).map(|i| (0.5 * at(i, 1920) + 0.2 * at(i, 2300)) as i16).collect()
    }

    fn run(choice: ProcessingChoice, far: &[i16], mic: &[i16], frame: usize) -> Vec<i16> {
        let mut processor = VoiceProcessor::new(choice);
        let mut out = mic.to_vec();
        for (far, near) in far.chunks(frame).zip(out.chunks_mut(frame)) {
            processor.far_end(far);
            processor.near_end(near);
        }
        out
    }

    #[test]
    fn the_echo_of_what_was_played_is_removed() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let far = far_end(&mut rng, 48_000 * 6);
        let mic = room(&far);
        let only_aec = ProcessingChoice { echo_cancellation: true, ..Default::default() };
        let out = run(only_aec, &far, &mic, 960);
        let late = 48_000 * 3..;
        let erle = db(power(&mic[late.clone()]) / power(&out[late]));
        assert!(erle > 20.0, "echo only {erle:.1} dB quieter");
        // Off, the microphone passes untouched.
        assert_eq!(run(ProcessingChoice::default(), &far, &mic, 960), mic);
    }

    #[test]
    fn far_end_in_odd_pieces_is_chunked_like_whole_frames() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let far = far_end(&mut rng, 48_000 * 2);
        let mic = room(&far);
        let choice = ProcessingChoice { echo_cancellation: true, ..Default::default() };
        let whole = run(choice, &far, &mic, 480);
        // The same far end, handed over in pieces of 7 ms and 13 ms.
        let mut processor = VoiceProcessor::new(choice);
        let mut out = mic.clone();
        let mut given = 0;
        for (index, near) in out.chunks_mut(480).enumerate() {
            let until = (index + 1) * 480;
            while given < until {
                let piece = if given % 2 == 0 { 336 } else { 624 };
                let end = (given + piece).min(until);
                processor.far_end(&far[given..end]);
                given = end;
            }
            processor.near_end(near);
        }
        assert_eq!(out, whole);
    }

    #[test]
    fn a_change_touches_only_the_stages_it_names() {
        let change = ProcessingChange { noise_suppression: Some(false), ..Default::default() };
        assert_eq!(
            change.applied_to(ProcessingChoice::ALL),
            ProcessingChoice { echo_cancellation: true, noise_suppression: false, gain_control: true }
        );
        assert_eq!(ProcessingChange::default().applied_to(ProcessingChoice::default()), ProcessingChoice::default());
        let echo_on = ProcessingChange { echo_cancellation: Some(true), ..Default::default() };
        let both = change.then(echo_on).then(ProcessingChange { noise_suppression: Some(true), ..Default::default() });
        assert_eq!(
            both,
            ProcessingChange { echo_cancellation: Some(true), noise_suppression: Some(true), gain_control: None }
        );
        assert!(ProcessingChange::default().is_empty() && !both.is_empty());
    }

    #[test]
    fn stages_can_be_changed_on_a_running_processor() {
        let mut processor = VoiceProcessor::new(ProcessingChoice::ALL);
        assert!(processor.choice().any());
        processor.set_choice(ProcessingChoice::default());
        let mut frame: Vec<i16> = (0..960).map(|i| ((i % 50) * 100) as i16).collect();
        let before = frame.clone();
        processor.near_end(&mut frame);
        assert_eq!(frame, before);
        assert_eq!(processor.stats(), ProcessingStats::default());
    }
}
