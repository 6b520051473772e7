//! The audio chain's shared numbers and measurements: the media sample rate and
//! how much of a signal is one tone (tests and the bench recognise tones by it).

use std::f64::consts::TAU;

/// The media sample rate: every endpoint exchanges 48 kHz mono 16-bit frames.
pub const SAMPLE_RATE: u32 = 48_000;

/// `from` at `percent` of its level into `to` (as long as the shorter of the
/// two), clipping at full scale.
pub fn scale_into(from: &[i16], percent: u32, to: &mut [i16]) {
    let gain = f64::from(percent) / 100.0;
    for (to, &from) in to.iter_mut().zip(from) {
        *to = (f64::from(from) * gain).clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16;
    }
}

/// Samples in one frame of `frame` at [`SAMPLE_RATE`].
pub fn samples_per_frame(frame: std::time::Duration) -> usize {
    (u128::from(SAMPLE_RATE) * frame.as_micros() / 1_000_000) as usize
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
    fn scaling_halves_doubles_and_clips() {
        let mut out = [0i16; 3];
        scale_into(&[1000, -1000, 30_000], 50, &mut out);
        assert_eq!(out, [500, -500, 15_000]);
        scale_into(&[1000, -30_000, 30_000], 200, &mut out);
        assert_eq!(out, [2000, i16::MIN, i16::MAX]);
    }
}
