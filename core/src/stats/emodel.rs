//! An estimate of call quality with the ITU-T G.107 E-model: a rating factor R
//! from delay and loss, turned into a mean opinion score and a verdict.
//!
//! What the model needs and we cannot measure takes G.107's default values:
//! noise, loudness and sidetone (so R starts at 93.2), and perfect echo control
//! (a headset, or a device with echo cancellation): the talker- and
//! listener-echo terms are zero. Opus has no entry in G.113, so its equipment
//! impairment `Ie` by bitrate and its packet-loss robustness `Bpl` are our own
//! choices: Opus with in-band FEC and PLC is taken to be about as robust as
//! G.711 with PLC (G.113 Appendix I gives it Bpl 25.1), and transparent for
//! this narrow-band model from 24 kb/s.

use std::time::Duration;

/// R with G.107's default values and nothing impaired.
const R_DEFAULT: f64 = 93.2;

/// Opus's packet-loss robustness factor (see the module documentation).
const OPUS_BPL: f64 = 25.1;

/// What the model rates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conditions {
    /// Mouth-to-ear delay, one way.
    pub one_way_delay: Duration,
    /// Share of packets lost on the network (0 to 1); what FEC and PLC repair
    /// is the codec's business (`Bpl`).
    pub loss: f64,
    /// The codec's target bitrate.
    pub bitrate_bps: u32,
}

/// A one-word verdict a tray can show, from the G.107 / G.109 user-satisfaction
/// bands of R.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Quality {
    /// R below 60: nearly all users dissatisfied.
    Bad,
    /// R 60 to 70: many users dissatisfied.
    Poor,
    /// R 70 to 80: some users dissatisfied.
    Fair,
    /// R 80 to 90: satisfied.
    Good,
    /// R 90 and above: very satisfied.
    Excellent,
}

impl Quality {
    /// The verdict for a rating factor.
    pub fn from_r(r: f64) -> Quality {
        match r {
            r if r >= 90.0 => Quality::Excellent,
            r if r >= 80.0 => Quality::Good,
            r if r >= 70.0 => Quality::Fair,
            r if r >= 60.0 => Quality::Poor,
            _ => Quality::Bad,
        }
    }

    /// The word shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Excellent => "excellent",
            Quality::Good => "good",
            Quality::Fair => "fair",
            Quality::Poor => "poor",
            Quality::Bad => "bad",
        }
    }
}

/// The rating factor R.
pub fn rating(conditions: &Conditions) -> f64 {
    R_DEFAULT - delay_impairment(conditions.one_way_delay) - loss_impairment(conditions)
}

/// The G.107 delay impairment `Idd` (zero up to 100 ms one way).
fn delay_impairment(one_way: Duration) -> f64 {
    let ta = one_way.as_secs_f64() * 1000.0;
    if ta <= 100.0 {
        return 0.0;
    }
    let x = (ta / 100.0).log2();
    25.0 * ((1.0 + x.powi(6)).powf(1.0 / 6.0) - 3.0 * (1.0 + (x / 3.0).powi(6)).powf(1.0 / 6.0) + 2.0)
}

/// The effective equipment impairment `Ie,eff` for random loss.
fn loss_impairment(conditions: &Conditions) -> f64 {
    let ie = match conditions.bitrate_bps {
        0..16_000 => 11.0,
        16_000..20_000 => 6.0,
        20_000..24_000 => 3.0,
        _ => 0.0,
    };
    let ppl = (conditions.loss.clamp(0.0, 1.0)) * 100.0;
    ie + (95.0 - ie) * ppl / (ppl + OPUS_BPL)
}

/// The mean opinion score for a rating factor (G.107 Annex B), 1.0 to 4.5.
pub fn mos(r: f64) -> f64 {
    if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        (1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7.0e-6).clamp(1.0, 4.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conditions(delay_ms: u64, loss: f64) -> Conditions {
        Conditions { one_way_delay: Duration::from_millis(delay_ms), loss, bitrate_bps: 32_000 }
    }

    #[test]
    fn a_clean_lan_call_is_excellent() {
        let r = rating(&conditions(20, 0.0));
        assert_eq!(r, R_DEFAULT);
        assert!((mos(r) - 4.41).abs() < 0.01, "{}", mos(r));
        assert_eq!(Quality::from_r(r), Quality::Excellent);
    }

    #[test]
    fn delay_costs_nothing_to_100_ms_then_more_and_more() {
        assert_eq!(delay_impairment(Duration::from_millis(100)), 0.0);
        let at = |ms| delay_impairment(Duration::from_millis(ms));
        assert!(at(150) > 0.0 && at(150) < at(300) && at(300) < at(600));
        // G.107's curve: about 3 at 200 ms and about 24 at 400 ms one way.
        assert!((at(200) - 3.0).abs() < 0.5, "{}", at(200));
        assert!((at(400) - 24.1).abs() < 0.5, "{}", at(400));
    }

    #[test]
    fn loss_lowers_the_verdict_step_by_step() {
        let verdict = |loss| Quality::from_r(rating(&conditions(20, loss)));
        assert_eq!(verdict(0.0), Quality::Excellent);
        assert_eq!(verdict(0.01), Quality::Good);
        assert_eq!(verdict(0.05), Quality::Fair);
        assert_eq!(verdict(0.15), Quality::Bad);
        assert!(rating(&conditions(20, 0.05)) > rating(&conditions(20, 0.10)));
    }

    #[test]
    fn low_bitrates_start_lower_and_mos_stays_in_range() {
        let low = Conditions { bitrate_bps: 12_000, ..conditions(20, 0.0) };
        assert!(rating(&low) < rating(&conditions(20, 0.0)));
        assert_eq!(mos(-20.0), 1.0);
        assert_eq!(mos(120.0), 4.5);
        assert!(mos(50.0) < mos(70.0) && mos(70.0) < mos(90.0));
    }
}
