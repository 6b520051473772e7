//! Signal analysis for the bench, without I/O: where one recording appears in
//! another (cross-correlation by FFT), where sound starts, and levels.

/// Where a reference appears in a signal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alignment {
    /// `signal[lag + i]` best matches `reference[i]`.
    pub lag: usize,
    /// Normalized correlation at that lag (1.0: identical up to gain).
    pub correlation: f64,
}

/// In-place iterative radix-2 FFT; `re.len()` must be a power of two. The inverse
/// is not scaled (divide by the length).
pub fn fft(re: &mut [f64], im: &mut [f64], inverse: bool) {
    let n = re.len();
    assert!(n.is_power_of_two() && im.len() == n, "fft needs two equal power-of-two lengths");
    // Bit-reversal permutation.
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            re.swap(i, j);
            im.swap(i, j);
        }
    }
    let sign = if inverse { 1.0 } else { -1.0 };
    let mut len = 2;
    while len <= n {
        let angle = sign * std::f64::consts::TAU / len as f64;
        let (w_re, w_im) = (angle.cos(), angle.sin());
        for start in (0..n).step_by(len) {
            let (mut cur_re, mut cur_im) = (1.0, 0.0);
            for k in 0..len / 2 {
                let (a, b) = (start + k, start + k + len / 2);
                let t_re = re[b] * cur_re - im[b] * cur_im;
                let t_im = re[b] * cur_im + im[b] * cur_re;
                re[b] = re[a] - t_re;
                im[b] = im[a] - t_im;
                re[a] += t_re;
                im[a] += t_im;
                let next_re = cur_re * w_re - cur_im * w_im;
                cur_im = cur_re * w_im + cur_im * w_re;
                cur_re = next_re;
            }
        }
        len <<= 1;
    }
}

/// Finds where `reference` occurs in `signal`, trying lags `0..=max_lag`: the lag
/// with the highest correlation normalized by the energy of both over their
/// overlap. None when either is empty or silent.
pub fn align(reference: &[f32], signal: &[f32], max_lag: usize) -> Option<Alignment> {
    if reference.is_empty() || signal.is_empty() {
        return None;
    }
    let n = (reference.len() + signal.len()).next_power_of_two();
    let (mut s_re, mut s_im) = (vec![0.0; n], vec![0.0; n]);
    let (mut r_re, mut r_im) = (vec![0.0; n], vec![0.0; n]);
    for (dst, &src) in s_re.iter_mut().zip(signal) {
        *dst = f64::from(src);
    }
    for (dst, &src) in r_re.iter_mut().zip(reference) {
        *dst = f64::from(src);
    }
    fft(&mut s_re, &mut s_im, false);
    fft(&mut r_re, &mut r_im, false);
    // S · conj(R): its inverse is Σ signal[lag + i] · reference[i] at index lag.
    for k in 0..n {
        let (a, b, c, d) = (s_re[k], s_im[k], r_re[k], -r_im[k]);
        s_re[k] = a * c - b * d;
        s_im[k] = a * d + b * c;
    }
    fft(&mut s_re, &mut s_im, true);

    let energy_ref: f64 = reference.iter().map(|&x| f64::from(x).powi(2)).sum();
    // Prefix sums of the signal's energy, for the energy under each lag's window.
    let mut prefix = Vec::with_capacity(signal.len() + 1);
    prefix.push(0.0);
    for &x in signal {
        prefix.push(prefix.last().copied().unwrap_or(0.0) + f64::from(x).powi(2));
    }
    let last_lag = max_lag.min(signal.len() - 1);
    (0..=last_lag)
        .filter_map(|lag| {
            let end = (lag + reference.len()).min(signal.len());
            let energy_sig = prefix[end] - prefix[lag];
            let denominator = (energy_ref * energy_sig).sqrt();
            (denominator > 0.0).then(|| Alignment { lag, correlation: s_re[lag] / n as f64 / denominator })
        })
        .max_by(|a, b| a.correlation.total_cmp(&b.correlation))
}

/// Level in dBFS (0 = full scale) of samples in -1.0..1.0; -inf for silence.
pub fn rms_dbfs(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return f64::NEG_INFINITY;
    }
    let mean_square = samples.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / samples.len() as f64;
    10.0 * mean_square.log10()
}

/// The index of the first `window`-long stretch louder than `threshold_dbfs`.
pub fn first_sound(samples: &[f32], window: usize, threshold_dbfs: f64) -> Option<usize> {
    let window = window.max(1);
    samples.chunks(window).position(|chunk| rms_dbfs(chunk) > threshold_dbfs).map(|i| i * window)
}

/// Samples as -1.0..1.0 from 16-bit integers.
pub fn from_i16(samples: &[i16]) -> Vec<f32> {
    samples.iter().map(|&s| f32::from(s) / 32768.0).collect()
}

/// The level envelope of `samples`: RMS over each `block` samples. Two
/// envelopes still match where waveforms no longer do (a playout resampled by a
/// clock-drift estimate drifts in phase, and its polarity means nothing).
pub fn envelope(samples: &[f32], block: usize) -> Vec<f32> {
    samples
        .chunks_exact(block.max(1))
        .map(|chunk| (chunk.iter().map(|&x| x * x).sum::<f32>() / chunk.len() as f32).sqrt())
        .collect()
}

/// Like [`align`], for envelopes: the lag `0..=max_lag` at which `signal`
/// best matches `reference`, by the Pearson correlation over the overlap (the
/// envelopes' own levels removed), among lags where at least half the reference
/// overlaps (a few points always correlate). None when none does or either is flat.
pub fn align_envelopes(reference: &[f32], signal: &[f32], max_lag: usize) -> Option<Alignment> {
    let pearson = |a: &[f32], b: &[f32]| {
        let n = a.len().min(b.len());
        if n < 2 || 2 * n < a.len() {
            return None;
        }
        let (a, b) = (&a[..n], &b[..n]);
        let mean = |x: &[f32]| x.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        let (ma, mb) = (mean(a), mean(b));
        let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
        for (&x, &y) in a.iter().zip(b) {
            let (x, y) = (f64::from(x) - ma, f64::from(y) - mb);
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
        (aa > 0.0 && bb > 0.0).then(|| ab / (aa * bb).sqrt())
    };
    (0..=max_lag.min(signal.len().saturating_sub(1)))
        .filter_map(|lag| pearson(reference, &signal[lag..]).map(|correlation| Alignment { lag, correlation }))
        .max_by(|a, b| a.correlation.total_cmp(&b.correlation))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic noise-like test signal (speech-like enough to correlate).
    fn noise(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn fft_round_trips_and_finds_a_tone() {
        let n = 64;
        let original: Vec<f64> = (0..n).map(|i| (std::f64::consts::TAU * 5.0 * i as f64 / n as f64).cos()).collect();
        let (mut re, mut im) = (original.clone(), vec![0.0; n]);
        fft(&mut re, &mut im, false);
        let peak = (0..n / 2).max_by(|&a, &b| re[a].hypot(im[a]).total_cmp(&re[b].hypot(im[b]))).unwrap();
        assert_eq!(peak, 5);
        fft(&mut re, &mut im, true);
        for (a, b) in re.iter().zip(&original) {
            assert!((a / n as f64 - b).abs() < 1e-9);
        }
    }

    #[test]
    fn align_finds_a_delayed_and_attenuated_copy() {
        let reference = noise(4800, 1);
        for delay in [0, 1, 137, 2400, 9000] {
            let mut signal = vec![0.0; delay];
            signal.extend(reference.iter().map(|x| x * 0.3));
            signal.extend(noise(3000, 2).iter().map(|x| x * 0.01));
            let found = align(&reference, &signal, 20_000).unwrap();
            assert_eq!(found.lag, delay);
            assert!(found.correlation > 0.99, "{found:?}");
        }
    }

    #[test]
    fn align_tolerates_noise_and_respects_the_lag_limit() {
        let reference = noise(9600, 3);
        let mut signal = noise(500, 4).iter().map(|x| x * 0.5).collect::<Vec<_>>();
        signal.extend(reference.iter().zip(noise(9600, 5)).map(|(a, b)| a + 0.5 * b));
        let found = align(&reference, &signal, 1000).unwrap();
        assert_eq!(found.lag, 500);
        assert!(found.correlation > 0.7 && found.correlation < 0.99, "{found:?}");
        assert!(align(&reference, &signal, 100).unwrap().lag <= 100);
        assert_eq!(align(&[], &signal, 10), None);
        assert_eq!(align(&reference, &vec![0.0; 100], 10), None, "silence matches nothing");
    }

    #[test]
    fn first_sound_skips_silence() {
        let mut samples = vec![0.0f32; 1000];
        samples.extend(noise(1000, 6));
        assert_eq!(first_sound(&samples, 100, -40.0), Some(1000));
        assert_eq!(first_sound(&[0.0; 500], 100, -40.0), None);
        assert!(rms_dbfs(&[0.5; 10]) > -7.0 && rms_dbfs(&[0.5; 10]) < -5.0);
        assert_eq!(rms_dbfs(&[]), f64::NEG_INFINITY);
        assert_eq!(from_i16(&[-32768, 0, 16384]), [-1.0, 0.0, 0.5]);
    }

    #[test]
    fn envelopes_align_where_the_waveform_is_inverted_and_drifts_in_phase() {
        // Bursts of a tone; the "echo" is the same bursts 120 blocks later,
        // inverted and at another frequency: no waveform match, the same envelope.
        let burst = |hz: f32, sign: f32| {
            (0..48_000).map(move |i| {
                let on = (i / 4_800) % 3 == 0 || (i / 2_400) % 7 == 2;
                if on { sign * (std::f32::consts::TAU * hz * i as f32 / 48_000.0).sin() } else { 0.0 }
            })
        };
        let reference: Vec<f32> = burst(440.0, 1.0).collect();
        let mut echo = vec![0.0; 120 * 48];
        echo.extend(burst(452.0, -1.0));
        let found = align_envelopes(&envelope(&reference, 48), &envelope(&echo, 48), 500).unwrap();
        assert_eq!(found.lag, 120);
        assert!(found.correlation > 0.99, "{found:?}");
        assert_eq!(align_envelopes(&envelope(&reference, 48), &[0.0; 200], 100).map(|a| a.lag), None, "flat");
    }
}
