//! How much loss the Opus encoder should expect, from what the peer reports it
//! hears of us (RTCP receiver reports, about once a second, or the share of our
//! packets it asked for again, if more: a report counts a retransmitted packet
//! as received, but a retransmission can miss its time where FEC does not). Opus spends part of
//! its bitrate on in-band FEC according to the expected loss, so assuming loss on
//! a clean link costs quality and assuming too little on a lossy one loses the
//! protection. Measured on the bench (PESQ-WB, mean of seeds 1-3, one call each;
//! single calls vary by ±0.3): a fixed 10 % gave 3.70 clean, 3.13 at 5 % loss, 2.69
//! under 5 % bursts and 2.37 at 15 %; this policy (capped at 25 %) gave 3.79, 3.16,
//! 2.46 and 2.23. Telling Opus the measured loss itself (5 %) was worse still under
//! loss (3.01 at 5 %, 2.48 bursty): its redundancy at low settings is weak. So: any
//! loss asks for at least 10 %, twice the measured loss above that up to 15 %
//! (more FEC takes bitrate from the speech itself); reports without loss halve it,
//! down to none, which is where the clean-link gain comes from.
//!
//! [`TargetBitrate`] moves the bitrate between the configured floor and ceiling:
//! down while the link shows congestion (loss that retransmission did not repair,
//! or a round trip grown well above the path's own), back up while it is clear.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The expected loss, in whole per cent, that the encoder is told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpectedLoss {
    percent: f64,
}

/// The most loss the encoder is told to expect: beyond it FEC cannot keep up and
/// only costs bitrate.
pub const MAX_EXPECTED_LOSS_PERCENT: i32 = 15;

/// What any loss at all asks for, in per cent.
const FLOOR_PERCENT: f64 = 10.0;

/// How much of the previous estimate survives each report that asks for less.
const DECAY: f64 = 0.5;

impl Default for ExpectedLoss {
    /// Before the first report: protected, as if the link were lossy; a clean
    /// link sheds it within about five reports.
    fn default() -> Self {
        ExpectedLoss { percent: FLOOR_PERCENT }
    }
}

impl ExpectedLoss {
    /// A receiver report said the peer lost `fraction` (0 to 1) of our packets
    /// since the previous one.
    pub fn report(&mut self, fraction: f64) {
        let reported = fraction.clamp(0.0, 1.0) * 100.0;
        let wanted = if reported > 0.0 { (2.0 * reported).max(FLOOR_PERCENT) } else { 0.0 };
        self.percent = wanted.max(self.percent * DECAY);
    }

    /// What to tell the encoder (`set_packet_loss_perc`), 0 to 15.
    pub fn percent(&self) -> i32 {
        (self.percent.round() as i32).clamp(0, MAX_EXPECTED_LOSS_PERCENT)
    }
}

/// Loss left after repair at which the bitrate comes down: what retransmission
/// could not repair is taken as congestion, as a browser's loss-based control does.
const CONGESTED_LOSS: f64 = 0.10;
/// Loss left after repair below which the bitrate may rise again.
const CLEAR_LOSS: f64 = 0.02;
/// Round trip above the path's base at which the bitrate comes down: a queue is
/// building somewhere on the path.
const CONGESTED_QUEUE: Duration = Duration::from_millis(100);
/// Round trip above the base below which the bitrate may rise again. Above the
/// 30 ± 10 ms jitter profile's swings, so jitter alone does not hold it.
const CLEAR_QUEUE: Duration = Duration::from_millis(50);
/// How long a round trip counts toward the base: long enough to span a spell of
/// congestion, short enough to follow a path that changed (an ICE restart).
const BASE_WINDOW: Duration = Duration::from_secs(30);
/// Round trips kept for the base (reports come about once a second).
const BASE_SAMPLES: usize = 64;
/// The cut on a queueing round trip.
const QUEUE_DECREASE: f64 = 0.85;
/// The rise per clear report: about 9 s from half the ceiling back to it.
const INCREASE: f64 = 1.08;
/// Reports further apart than this have an outage between them (reports come
/// about once a second): the loss of the first report after it is the outage's,
/// which the call's reconnecting handles, not congestion.
const REPORT_GAP: Duration = Duration::from_secs(3);

/// The encoder's target bitrate, from the peer's receiver reports (about once a
/// second): the ceiling (the configured `bitrate_kbps`) on a clear link, down to
/// the floor under congestion. A LAN call starts at the ceiling, so the bench's
/// clean link is never held back.
#[derive(Debug, Clone)]
pub struct TargetBitrate {
    floor: f64,
    ceiling: f64,
    current: f64,
    /// Recent round trips, oldest first, for the path's base (their minimum).
    round_trips: VecDeque<(Instant, Duration)>,
    /// When the last report came.
    last_report: Option<Instant>,
}

impl TargetBitrate {
    /// Starts at `ceiling_bps`; never goes below `floor_bps` (taken as the
    /// ceiling if above it).
    pub fn new(floor_bps: u32, ceiling_bps: u32) -> Self {
        let ceiling = f64::from(ceiling_bps);
        TargetBitrate {
            floor: f64::from(floor_bps).min(ceiling),
            ceiling,
            current: ceiling,
            round_trips: VecDeque::new(),
            last_report: None,
        }
    }

    /// A receiver report at `now`: `lost` is the fraction (0 to 1) of our packets
    /// the peer still lacked after repair, None if the peer does not repair
    /// (asks for no retransmissions): its loss is then what the radio lost as much
    /// as congestion, and cutting the bitrate would only take it from the FEC.
    /// `round_trip` is the RFC 3550 round trip this report gave, if any.
    pub fn report(&mut self, now: Instant, lost: Option<f64>, round_trip: Option<Duration>) {
        let after_outage = self.last_report.is_some_and(|last| now.saturating_duration_since(last) > REPORT_GAP);
        self.last_report = Some(now);
        let lost = match lost {
            Some(lost) if lost.is_finite() && !after_outage => lost.clamp(0.0, 1.0),
            _ => 0.0,
        };
        let queue = round_trip.map_or(Duration::ZERO, |rtt| rtt.saturating_sub(self.base_round_trip(now, rtt)));
        let factor = if lost >= CONGESTED_LOSS || queue >= CONGESTED_QUEUE {
            let for_loss = if lost >= CONGESTED_LOSS { 1.0 - 0.5 * lost } else { 1.0 };
            let for_queue = if queue >= CONGESTED_QUEUE { QUEUE_DECREASE } else { 1.0 };
            for_loss.min(for_queue)
        } else if lost >= CLEAR_LOSS || queue >= CLEAR_QUEUE {
            1.0
        } else {
            INCREASE
        };
        self.current = (self.current * factor).clamp(self.floor, self.ceiling);
    }

    /// What to tell the encoder, in bits per second (whole kb/s, so small
    /// changes do not reconfigure it every report).
    pub fn bps(&self) -> u32 {
        ((self.current / 1000.0).round() * 1000.0) as u32
    }

    /// The smallest round trip of the last [`BASE_WINDOW`], `latest` included.
    fn base_round_trip(&mut self, now: Instant, latest: Duration) -> Duration {
        while self.round_trips.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) > BASE_WINDOW)
            || self.round_trips.len() >= BASE_SAMPLES
        {
            self.round_trips.pop_front();
        }
        self.round_trips.push_back((now, latest));
        self.round_trips.iter().map(|(_, rtt)| *rtt).min().unwrap_or(latest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_loss_asks_for_at_least_the_floor_and_twice_the_loss_above_it() {
        let mut loss = ExpectedLoss::default();
        assert_eq!(loss.percent(), 10, "protected before anything is known");
        loss.report(0.01);
        assert_eq!(loss.percent(), 10);
        loss.report(0.08);
        assert_eq!(loss.percent(), MAX_EXPECTED_LOSS_PERCENT);
        loss.report(0.0);
        assert_eq!(loss.percent(), 8, "a clean report halves it");
    }

    #[test]
    fn a_clean_link_ends_up_with_no_fec_overhead_within_five_reports() {
        let mut loss = ExpectedLoss::default();
        for _ in 0..5 {
            loss.report(0.0);
        }
        assert_eq!(loss.percent(), 0);
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

    const SECOND: Duration = Duration::from_secs(1);

    /// Reports once a second from `start`, all with `lost` and `rtt`.
    fn reports(bitrate: &mut TargetBitrate, start: Instant, count: u32, lost: f64, rtt_ms: u64) -> Instant {
        for i in 0..count {
            bitrate.report(start + SECOND * i, Some(lost), Some(Duration::from_millis(rtt_ms)));
        }
        start + SECOND * count
    }

    #[test]
    fn a_clear_link_keeps_the_ceiling() {
        let mut bitrate = TargetBitrate::new(16_000, 48_000);
        assert_eq!(bitrate.bps(), 48_000, "a call starts at the ceiling");
        reports(&mut bitrate, Instant::now(), 60, 0.01, 2);
        assert_eq!(bitrate.bps(), 48_000);
    }

    #[test]
    fn loss_left_after_repair_brings_it_down_to_the_floor_and_a_clear_link_back_up() {
        let mut bitrate = TargetBitrate::new(16_000, 48_000);
        let now = reports(&mut bitrate, Instant::now(), 1, 0.2, 2);
        assert_eq!(bitrate.bps(), 43_000, "20 % left: down by a tenth");
        let now = reports(&mut bitrate, now, 30, 0.2, 2);
        assert_eq!(bitrate.bps(), 16_000, "never below the floor");
        let now = reports(&mut bitrate, now, 5, 0.05, 2);
        assert_eq!(bitrate.bps(), 16_000, "some loss holds it");
        reports(&mut bitrate, now, 1, 0.0, 2);
        assert_eq!(bitrate.bps(), 17_000, "a clear report raises it by 8 %");
        let mut back = bitrate.clone();
        reports(&mut back, now, 15, 0.0, 2);
        assert_eq!(back.bps(), 48_000, "back at the ceiling within 15 s, never above");
    }

    #[test]
    fn a_round_trip_grown_well_above_the_paths_own_brings_it_down_and_jitter_does_not() {
        let mut bitrate = TargetBitrate::new(16_000, 48_000);
        let start = Instant::now();
        // 60 ms with ±20 ms of jitter: the base is the smallest, 40 ms.
        for (i, rtt) in [40, 80, 60, 85, 45, 70].into_iter().enumerate() {
            bitrate.report(start + SECOND * i as u32, Some(0.0), Some(Duration::from_millis(rtt)));
        }
        assert_eq!(bitrate.bps(), 48_000, "jitter is not congestion");
        bitrate.report(start + SECOND * 6, Some(0.0), Some(Duration::from_millis(160)));
        assert_eq!(bitrate.bps(), 41_000, "120 ms of queue: down 15 %");
        bitrate.report(start + SECOND * 7, Some(0.0), Some(Duration::from_millis(110)));
        assert_eq!(bitrate.bps(), 41_000, "70 ms of queue holds it");
    }

    #[test]
    fn the_base_round_trip_follows_a_path_that_changed() {
        let mut bitrate = TargetBitrate::new(16_000, 48_000);
        let now = reports(&mut bitrate, Instant::now(), 5, 0.0, 2);
        // The path moved (say an ICE restart onto a slower route): 150 ms.
        let now = reports(&mut bitrate, now, 1, 0.0, 150);
        assert!(bitrate.bps() < 48_000, "at first it looks like a queue");
        reports(&mut bitrate, now + BASE_WINDOW, 15, 0.0, 150);
        assert_eq!(bitrate.bps(), 48_000, "once the old base is forgotten the new path is clear");
    }

    #[test]
    fn bad_reports_and_bounds_are_tamed() {
        let mut bitrate = TargetBitrate::new(64_000, 32_000);
        assert_eq!(bitrate.bps(), 32_000, "a floor above the ceiling is the ceiling");
        bitrate.report(Instant::now(), Some(1.0), None);
        assert_eq!(bitrate.bps(), 32_000);
        let mut bitrate = TargetBitrate::new(16_000, 48_000);
        bitrate.report(Instant::now(), Some(f64::NAN), None);
        bitrate.report(Instant::now(), Some(-3.0), None);
        assert_eq!(bitrate.bps(), 48_000);
    }

    #[test]
    fn the_loss_of_an_outage_or_of_a_peer_that_does_not_repair_is_not_congestion() {
        let mut bitrate = TargetBitrate::new(16_000, 48_000);
        let now = reports(&mut bitrate, Instant::now(), 3, 0.0, 2);
        // 10 s without reports, then one that counts the outage's packets lost.
        bitrate.report(now + Duration::from_secs(10), Some(0.9), Some(Duration::from_millis(2)));
        assert_eq!(bitrate.bps(), 48_000, "the outage is not congestion");
        bitrate.report(now + Duration::from_secs(11), Some(0.9), Some(Duration::from_millis(2)));
        assert_eq!(bitrate.bps(), 26_000, "loss that goes on is");
        let mut without_repair = TargetBitrate::new(16_000, 48_000);
        let start = Instant::now();
        for i in 0..10 {
            without_repair.report(start + SECOND * i, None, Some(Duration::from_millis(2)));
        }
        assert_eq!(without_repair.bps(), 48_000);
    }
}
