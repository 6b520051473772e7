//! A simulated room for the echo bench, needing no sound card: what the speaker
//! plays goes through a loudspeaker's soft clipping, a room's impulse response
//! and a delay that may drift, into the microphone together with the near-end
//! talker and noise. Also the measures taken on the result. Pure and seeded.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Samples per second.
pub const RATE: usize = 48_000;

/// A room's impulse response from the speaker to the microphone, without the
/// bulk delay: a direct path, then a diffuse tail decaying by 60 dB in `rt60`
/// seconds, `length` seconds long. The echo comes back about 4 dB below what
/// was played, as on a laptop.
pub fn impulse_response(seed: u64, rt60: f64, length: f64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let taps = (length * RATE as f64) as usize;
    let mut response: Vec<f32> = (0..taps)
        .map(|i| {
            let t = i as f64 / RATE as f64;
            // The first reflections arrive a millisecond after the direct sound.
            if i < RATE / 1000 {
                return 0.0;
            }
            let decay = (-6.9 * t / rt60).exp();
            (0.03 * rng.random_range(-1.0..1.0) * decay) as f32
        })
        .collect();
    if let Some(direct) = response.first_mut() {
        *direct = 0.3;
    }
    response
}

/// A small loudspeaker's soft clipping: loud passages compress.
pub fn loudspeaker(played: &[f32]) -> Vec<f32> {
    played.iter().map(|s| s.tanh()).collect()
}

/// `signal` through the impulse response `response` (direct convolution).
pub fn convolve(signal: &[f32], response: &[f32]) -> Vec<f32> {
    (0..signal.len())
        .map(|n| {
            let taps = response.len().min(n + 1);
            let mut sum = 0.0f32;
            for (k, h) in response[..taps].iter().enumerate() {
                sum += h * signal[n - k];
            }
            sum
        })
        .collect()
}

/// `signal` delayed by `delay(n)` samples at output sample `n` (fractional,
/// linear interpolation): a drifting delay is a clock running at another rate.
pub fn delayed(signal: &[f32], delay: impl Fn(usize) -> f64) -> Vec<f32> {
    (0..signal.len())
        .map(|n| {
            let at = n as f64 - delay(n);
            if at < 0.0 {
                return 0.0;
            }
            let i = at.floor() as usize;
            let frac = (at - at.floor()) as f32;
            let a = signal.get(i).copied().unwrap_or(0.0);
            let b = signal.get(i + 1).copied().unwrap_or(0.0);
            a + (b - a) * frac
        })
        .collect()
}

/// A fan: low-passed noise and a 100 Hz hum, at about `level_db` dBFS.
pub fn fan_noise(seed: u64, len: usize, level_db: f64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut smooth = 0.0f64;
    let raw: Vec<f32> = (0..len)
        .map(|i| {
            smooth = 0.9 * smooth + 0.1 * rng.random_range(-1.0..1.0);
            let hum = 0.1 * (std::f64::consts::TAU * 100.0 * i as f64 / RATE as f64).sin();
            (3.0 * smooth + hum) as f32
        })
        .collect();
    let gain = 10f64.powf((level_db - level_db_of(&raw)) / 20.0) as f32;
    raw.iter().map(|s| s * gain).collect()
}

/// Mean power in dBFS (a full-scale square wave is 0).
pub fn level_db_of(samples: &[f32]) -> f64 {
    let power = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / samples.len().max(1) as f64;
    10.0 * power.max(1e-20).log10()
}

/// 100 ms windows.
pub const WINDOW: usize = RATE / 10;

/// The echo return loss enhancement of each 100 ms window of `[start, end)` in
/// which the far end is heard (above -50 dBFS): how much quieter the output is
/// than the microphone, in dB, with the window's start in seconds from `start`.
pub fn erle_windows(mic: &[f32], out: &[f32], far: &[f32], start: usize, end: usize) -> Vec<(f64, f64)> {
    (start..end.min(mic.len()).min(out.len()))
        .step_by(WINDOW)
        .filter(|&at| at + WINDOW <= end && level_db_of(&far[at..at + WINDOW]) > -50.0)
        .map(|at| {
            let erle = level_db_of(&mic[at..at + WINDOW]) - level_db_of(&out[at..at + WINDOW]);
            ((at - start) as f64 / RATE as f64, erle)
        })
        .collect()
}

/// When the canceller converged: the start of the first run of five
/// far-active windows in a row at `goal` dB or better.
pub fn convergence(windows: &[(f64, f64)], goal: f64) -> Option<f64> {
    windows.windows(5).find(|run| run.iter().all(|(_, erle)| *erle >= goal)).map(|run| run[0].0)
}

/// The mean of the windows' ERLE from `from` seconds on.
pub fn mean_erle(windows: &[(f64, f64)], from: f64) -> Option<f64> {
    let late: Vec<f64> = windows.iter().filter(|(t, _)| *t >= from).map(|(_, e)| *e).collect();
    (!late.is_empty()).then(|| late.iter().sum::<f64>() / late.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_delays_and_attenuates_what_was_played() {
        let mut click = vec![0.0f32; RATE / 2];
        click[100] = 1.0;
        let response = impulse_response(1, 0.25, 0.1);
        let echo = delayed(&convolve(&click, &response), |_| 2400.0);
        let loudest = echo.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap().0;
        assert_eq!(loudest, 2500, "the direct path arrives 50 ms later");
        assert!((echo[2500] - 0.3).abs() < 1e-6);
        // The tail decays by 60 dB per RT60: 21 dB over the 87.5 ms between
        // its first 10 ms and its last.
        let tail = &echo[2500 + 48..];
        let decay = level_db_of(&tail[..480]) - level_db_of(&tail[4200..4680]);
        assert!((decay - 21.0).abs() < 3.0, "{decay:.1} dB");
    }

    #[test]
    fn a_drifting_delay_slides_the_echo() {
        let ramp: Vec<f32> = (0..RATE).map(|i| i as f32).collect();
        let slid = delayed(&ramp, |n| 100.0 + n as f64 * 0.001);
        assert_eq!(slid[1000], 899.0);
        assert!((slid[40_000] - (40_000.0 - 140.0)).abs() < 1e-2);
    }

    #[test]
    fn erle_is_measured_where_the_far_end_speaks_and_convergence_needs_five_windows() {
        let far = [vec![0.0f32; WINDOW * 2], vec![0.1f32; WINDOW * 8]].concat();
        let mic: Vec<f32> = far.iter().map(|s| s * 0.5).collect();
        let out: Vec<f32> = mic.iter().enumerate().map(|(i, s)| if i < WINDOW * 4 { *s } else { s * 0.01 }).collect();
        let windows = erle_windows(&mic, &out, &far, 0, far.len());
        assert_eq!(windows.len(), 8, "silent windows are left out");
        assert!(windows[0].1.abs() < 1e-9 && (windows[2].1 - 40.0).abs() < 1e-6);
        assert_eq!(convergence(&windows, 30.0), Some(0.4));
        assert_eq!(convergence(&windows[..6], 30.0), None);
        assert!((mean_erle(&windows, 0.4).unwrap() - 40.0).abs() < 1e-6);
    }

    #[test]
    fn fan_noise_has_the_level_asked() {
        assert!((level_db_of(&fan_noise(3, RATE, -40.0)) - -40.0).abs() < 0.01);
    }
}
