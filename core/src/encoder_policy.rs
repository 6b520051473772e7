//! How much loss the Opus encoder should expect, from what the peer reports it
//! hears of us (RTCP receiver reports, about once a second). Opus spends part of
//! its bitrate on in-band FEC in proportion to the expected loss, so assuming loss
//! on a clean link costs quality and assuming none on a lossy one loses the
//! protection. Rises at once, falls slowly (a Wi-Fi link's loss comes and goes).

/// The expected loss, in whole per cent, that the encoder is told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpectedLoss {
    percent: f64,
}

/// The most loss the encoder is told to expect: beyond it FEC cannot keep up and
/// only costs bitrate.
pub const MAX_EXPECTED_LOSS_PERCENT: i32 = 25;

/// How much of the previous estimate survives each report that shows less loss.
const DECAY: f64 = 0.7;

impl Default for ExpectedLoss {
    /// Before the first report: a little, so a lossy start is not unprotected.
    fn default() -> Self {
        ExpectedLoss { percent: 2.0 }
    }
}

impl ExpectedLoss {
    /// A receiver report said the peer lost `fraction` (0 to 1) of our packets
    /// since the previous one.
    pub fn report(&mut self, fraction: f64) {
        let reported = (fraction.clamp(0.0, 1.0)) * 100.0;
        self.percent = reported.max(self.percent * DECAY);
    }

    /// What to tell the encoder (`set_packet_loss_perc`), 0 to 25.
    pub fn percent(&self) -> i32 {
        (self.percent.round() as i32).clamp(0, MAX_EXPECTED_LOSS_PERCENT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_is_taken_at_once_and_forgotten_slowly() {
        let mut loss = ExpectedLoss::default();
        assert_eq!(loss.percent(), 2, "a little before anything is known");
        loss.report(0.10);
        assert_eq!(loss.percent(), 10);
        loss.report(0.0);
        assert_eq!(loss.percent(), 7);
        for _ in 0..20 {
            loss.report(0.0);
        }
        assert_eq!(loss.percent(), 0, "a clean link ends up with no FEC overhead");
    }

    #[test]
    fn the_estimate_is_capped_and_bad_input_is_clamped() {
        let mut loss = ExpectedLoss::default();
        loss.report(0.8);
        assert_eq!(loss.percent(), MAX_EXPECTED_LOSS_PERCENT);
        loss.report(f64::NAN);
        loss.report(-3.0);
        assert!((0..=MAX_EXPECTED_LOSS_PERCENT).contains(&loss.percent()));
    }
}
