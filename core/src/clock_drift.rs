//! Clock drift between a sound card and the rest of the daemon. A sound card's
//! clock and the system's are never exactly the same: 0.1 % apart, a ring
//! between them gains or loses 48 samples a second, and without correction a
//! call either runs dry (gaps) or grows latency until something is cut (a jump).
//! The side that writes the ring resamples by a factor slightly off 1, chosen by
//! a proportional-integral controller from how full the ring is. Pure: it sees
//! the fill at each write, nothing else.

/// Fill readings are smoothed over about a second (at one reading per 20 ms
/// frame): the fill jumps by a device period at every callback, which is jitter,
/// not drift.
const SMOOTHING: f64 = 0.02;
/// Correction per sample of smoothed error (0.2 % at 10 ms off target).
const PROPORTIONAL: f64 = 4e-6;
/// Correction added per reading per sample of error: the integral settles on
/// the drift itself, so the fill returns to its target.
const INTEGRAL: f64 = 1e-8;
/// At most 0.2 % faster or slower: twice the worst real pair of clocks
/// (0.01-0.1 % apart), and a thirtieth of a semitone. A ring that starts empty
/// or is cut is the cushion's business, not a reason to bend the pitch further.
const MAX_CORRECTION: f64 = 0.002;

/// Keeps a ring's fill at a target by the writer's rate.
#[derive(Debug, Clone)]
pub struct DriftCorrector {
    target: f64,
    smoothed: Option<f64>,
    integral: f64,
    factor: f64,
}

impl DriftCorrector {
    /// A corrector that holds the fill at `target` samples.
    pub fn new(target: usize) -> Self {
        DriftCorrector { target: target as f64, smoothed: None, integral: 0.0, factor: 1.0 }
    }

    /// The ring holds `fill` samples just before a write: the factor to apply
    /// to the number of samples written (above 1: write more, the reader is
    /// faster).
    pub fn observe(&mut self, fill: usize) -> f64 {
        let fill = fill as f64;
        let smoothed = match self.smoothed {
            Some(previous) => previous + SMOOTHING * (fill - previous),
            None => fill,
        };
        self.smoothed = Some(smoothed);
        let error = self.target - smoothed;
        self.integral = (self.integral + INTEGRAL * error).clamp(-MAX_CORRECTION, MAX_CORRECTION);
        self.factor = 1.0 + (PROPORTIONAL * error + self.integral).clamp(-MAX_CORRECTION, MAX_CORRECTION);
        self.factor
    }

    /// The last factor (1 before any reading).
    pub fn factor(&self) -> f64 {
        self.factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resample::Resampler;

    /// What ten minutes of a call does to a speaker ring whose device runs
    /// `drift` fast (negative: slow), on a virtual clock in 1 ms steps: the
    /// play pump writes 20 ms frames through the resampler, the device takes
    /// 10 ms periods by its own clock. Returns (underruns, fill range after the
    /// first minute, in samples).
    fn ten_minutes(drift: f64, corrected: bool) -> (u32, usize, usize) {
        let target = 2400;
        let mut resampler = Resampler::new(48_000, 48_000);
        let mut corrector = DriftCorrector::new(target);
        let mut fill = target;
        let (mut underruns, mut low, mut high) = (0, usize::MAX, 0);
        let mut device_owed = 0.0f64;
        let mut out = Vec::with_capacity(1024);
        let frame = vec![0.0f32; 960];
        for ms in 0..600_000u64 {
            if ms % 20 == 0 {
                if corrected {
                    resampler.set_factor(corrector.observe(fill));
                }
                out.clear();
                resampler.push(&frame, &mut out);
                fill += out.len();
            }
            // The device's periods fall on its own clock: 480 of its samples,
            // every 10 of its milliseconds.
            device_owed += 48.0 * (1.0 + drift);
            if device_owed >= 480.0 {
                device_owed -= 480.0;
                if fill < 480 {
                    underruns += 1;
                    fill = 0;
                } else {
                    fill -= 480;
                }
            }
            if ms >= 60_000 {
                low = low.min(fill);
                high = high.max(fill);
            }
        }
        (underruns, low, high)
    }

    #[test]
    fn a_device_clock_a_tenth_of_a_percent_off_neither_runs_dry_nor_adds_latency() {
        for drift in [0.001, -0.001] {
            let (underruns, low, high) = ten_minutes(drift, true);
            assert_eq!(underruns, 0, "drift {drift}");
            // Within a device period and a frame of the target (2400): latency
            // does not grow over the call.
            assert!(low >= 2400 - 960 && high <= 2400 + 1440, "drift {drift}: fill {low}..{high}");
        }
        // Uncorrected, the same clocks run the ring dry every ten seconds once
        // the cushion is gone (a gap each time), or add latency without end
        // (half a second in ten minutes, if nothing cut it).
        let (underruns, _, _) = ten_minutes(0.001, false);
        assert!(underruns >= 50, "{underruns}");
        let (_, _, high) = ten_minutes(-0.001, false);
        assert!(high > 48 * 500, "{high}");
    }

    #[test]
    fn the_factor_is_bounded_and_settles_on_the_drift() {
        let mut corrector = DriftCorrector::new(1000);
        for _ in 0..10_000 {
            corrector.observe(0);
        }
        assert!((corrector.factor() - 1.002).abs() < 1e-9, "{}", corrector.factor());
        for _ in 0..10_000 {
            corrector.observe(100_000);
        }
        assert!((corrector.factor() - 0.998).abs() < 1e-9, "{}", corrector.factor());
    }
}
