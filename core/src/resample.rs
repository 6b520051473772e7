//! Streaming linear-interpolation resampling between a device's rate and the
//! 48 kHz of the media path. Linear is enough for voice at the rates sound cards
//! use (44.1 / 48 / 96 kHz); it keeps no more state than one sample.

/// Converts a stream from one rate to another, chunk by chunk.
#[derive(Debug, Clone)]
pub struct Resampler {
    /// Input samples per output sample, for the nominal rates.
    nominal: f64,
    /// Input samples per output sample, now.
    step: f64,
    /// Position of the next output sample, in input samples, where 0 is `previous`.
    position: f64,
    /// The last input sample of the previous chunk.
    previous: f32,
}

impl Resampler {
    /// From `from` Hz to `to` Hz.
    pub fn new(from: u32, to: u32) -> Self {
        let step = f64::from(from) / f64::from(to);
        Resampler { nominal: step, step, position: 1.0, previous: 0.0 }
    }

    /// Produces `factor` times as many samples as the nominal rates say (a
    /// clock drift correction, within a fraction of a per cent of 1).
    pub fn set_factor(&mut self, factor: f64) {
        self.step = self.nominal / factor;
    }

    /// Converts `input` and appends the output samples it completes.
    pub fn push(&mut self, input: &[f32], output: &mut impl Extend<f32>) {
        if input.is_empty() {
            return;
        }
        // Index 0 is the previous chunk's last sample, 1.. are `input`. Runs on
        // every audio frame, so it writes straight into `output`.
        let previous = self.previous;
        let at = move |i: usize| if i == 0 { previous } else { input[i - 1] };
        let (end, step) = (input.len() as f64, self.step);
        let mut position = self.position;
        output.extend(std::iter::from_fn(|| {
            if position > end {
                return None;
            }
            let index = position as usize;
            let fraction = (position - index as f64) as f32;
            let a = at(index);
            let b = if index < input.len() { at(index + 1) } else { a };
            position += step;
            Some(a + (b - a) * fraction)
        }));
        self.position = position - end;
        self.previous = input[input.len() - 1];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio_math::tone_share;
    use std::f64::consts::TAU;

    fn tone(rate: u32, hz: f64, samples: usize) -> Vec<f32> {
        (0..samples).map(|i| ((i as f64 * TAU * hz / f64::from(rate)).sin() * 0.5) as f32).collect()
    }

    fn run(from: u32, to: u32, input: &[f32], chunk: usize) -> Vec<f32> {
        let mut resampler = Resampler::new(from, to);
        let mut output = Vec::new();
        for piece in input.chunks(chunk) {
            resampler.push(piece, &mut output);
        }
        output
    }

    #[test]
    fn a_second_stays_a_second_and_a_tone_stays_that_tone() {
        for (from, to) in [(44_100, 48_000), (48_000, 44_100), (96_000, 48_000), (16_000, 48_000), (48_000, 48_000)] {
            let output = run(from, to, &tone(from, 440.0, from as usize), 441);
            let expected = to as f64;
            assert!((output.len() as f64 - expected).abs() <= 2.0, "{from}->{to}: {} samples", output.len());
            let pcm: Vec<i16> = output.iter().map(|s| (s * 32767.0) as i16).collect();
            if to == 48_000 {
                assert!(tone_share(&pcm, 440.0) > 0.9, "{from}->{to}: {}", tone_share(&pcm, 440.0));
            }
        }
    }

    #[test]
    fn a_factor_makes_more_or_fewer_samples() {
        let mut resampler = Resampler::new(48_000, 48_000);
        resampler.set_factor(1.001);
        let mut output = Vec::new();
        resampler.push(&tone(48_000, 440.0, 480_000), &mut output);
        assert!((output.len() as i64 - 480_480).abs() <= 1, "{}", output.len());
    }

    #[test]
    fn chunking_does_not_change_the_result() {
        let input = tone(44_100, 1000.0, 4410);
        let whole = run(44_100, 48_000, &input, input.len());
        let pieces = run(44_100, 48_000, &input, 7);
        assert_eq!(whole.len(), pieces.len());
        assert!(whole.iter().zip(&pieces).all(|(a, b)| (a - b).abs() < 1e-6));
    }
}
