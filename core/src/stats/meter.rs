//! One call's meter: turns what the media layer measured into a [`CallStats`]
//! sample, and remembers what a summary needs (loss windows, the worst minute).
//! Pure: the call task feeds it, tests feed it by hand.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use super::emodel::{self, Conditions, Quality};
use super::{CallStats, CallSummary, CandidatePair, CodecInfo, Reception, RoundTripSource, RtcpView, SILENCE_DBFS};
use crate::call_record::CallRecord;
use crate::jitter_buffer::JitterStats;
use crate::vocab::State;

/// The span `fraction_lost` covers: long enough to be steady, short enough to
/// show a bad patch while it lasts.
pub const LOSS_WINDOW: Duration = Duration::from_secs(10);

/// How long no packet may arrive on an answered call before it counts as
/// silence from the network (the peer sends even while muted or holding).
const AUDIO_STALL: Duration = Duration::from_secs(1);

/// Opus's encoder look-ahead, part of the mouth-to-ear delay.
const OPUS_LOOKAHEAD: Duration = Duration::from_micros(6_500);

/// What the media layer measured at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MediaSample {
    /// Packet counts and RTCP reports.
    pub rtcp: RtcpView,
    /// The player's side.
    pub playout: PlayoutStats,
    /// Level of what we send, dBFS.
    pub level_out_dbfs: f64,
    /// The encoder's target bitrate now, bits per second (None: the
    /// configured one, as before the send pump runs).
    pub target_bitrate_bps: Option<u32>,
    /// The STUN round trip on the selected pair.
    pub ice_round_trip: Option<Duration>,
    /// The selected pair.
    pub candidate_pair: Option<CandidatePair>,
}

/// What the player publishes every frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlayoutStats {
    /// The jitter buffer's counters.
    pub jitter: JitterStats,
    /// What the jitter buffer holds.
    pub current_delay: Duration,
    /// What it aims to hold.
    pub target_delay: Duration,
    /// Level of what we hear, dBFS.
    pub level_dbfs: f64,
    /// Samples in one frame (to count concealed samples).
    pub samples_per_frame: u64,
}

impl Default for PlayoutStats {
    fn default() -> Self {
        PlayoutStats {
            jitter: JitterStats::default(),
            current_delay: Duration::ZERO,
            target_delay: Duration::ZERO,
            level_dbfs: SILENCE_DBFS,
            samples_per_frame: 0,
        }
    }
}

/// Loss over the last [`LOSS_WINDOW`], from successive cumulative reports.
#[derive(Debug, Default)]
struct LossWindow {
    /// When seen, cumulative lost, extended highest sequence.
    points: VecDeque<(SystemTime, i64, u32)>,
}

impl LossWindow {
    /// The fraction lost over the window, counting `unplayable` (cumulative)
    /// packets as lost too.
    fn fraction(&mut self, report: Option<Reception>, unplayable: u64, now: SystemTime) -> f64 {
        let Some(report) = report else { return 0.0 };
        let lost = report.cumulative_lost.saturating_add(i64::try_from(unplayable).unwrap_or(i64::MAX));
        // A sequence going backwards is a new stream: start the window again.
        if self.points.back().is_some_and(|&(_, _, highest)| report.highest_sequence < highest) {
            self.points.clear();
        }
        if self.points.back().is_none_or(|&(_, seen, highest)| (seen, highest) != (lost, report.highest_sequence)) {
            self.points.push_back((now, lost, report.highest_sequence));
        }
        // Keep one point at or before the window's start as the baseline.
        while self.points.len() > 2 && self.points[1].0 + LOSS_WINDOW <= now {
            self.points.pop_front();
        }
        let (Some(first), Some(last)) = (self.points.front(), self.points.back()) else {
            return report.fraction_lost;
        };
        let expected = i64::from(last.2.wrapping_sub(first.2));
        if self.points.len() < 2 || expected <= 0 {
            return report.fraction_lost;
        }
        ((last.1 - first.1) as f64 / expected as f64).clamp(0.0, 1.0)
    }
}

/// One call's meter.
#[derive(Debug)]
pub struct CallMeter {
    codec: CodecInfo,
    local: LossWindow,
    remote: LossWindow,
    /// What the listener lost: what never came and what came too late to play
    /// (a retransmission that missed its time counts as received in RTCP).
    heard: LossWindow,
    /// MOS sum and sample count per minute of talk time.
    minutes: Vec<(f64, u32)>,
    /// Packets received, and since when that count has not moved.
    arrivals: Option<(u64, SystemTime)>,
}

impl CallMeter {
    /// A meter for a call with this codec.
    pub fn new(codec: CodecInfo) -> Self {
        CallMeter {
            codec,
            local: LossWindow::default(),
            remote: LossWindow::default(),
            heard: LossWindow::default(),
            minutes: Vec::new(),
            arrivals: None,
        }
    }

    /// A sample of the call now; `media` once it has a media session.
    pub fn sample(&mut self, record: &CallRecord, media: Option<&MediaSample>, now: SystemTime) -> CallStats {
        let duration = talk_time(record, now);
        let mut stats = CallStats {
            call_id: record.id.clone(),
            peer: record.peer,
            peer_name: record.peer_name.clone(),
            state: record.state,
            duration,
            codec: self.codec.clone(),
            packets_sent: 0,
            bytes_sent: 0,
            packets_received: 0,
            bytes_received: 0,
            packets_lost: 0,
            fraction_lost: 0.0,
            remote_packets_lost: 0,
            remote_fraction_lost: 0.0,
            jitter: Duration::ZERO,
            round_trip: None,
            jitter_buffer_delay: Duration::ZERO,
            jitter_buffer_target_delay: Duration::ZERO,
            concealed_samples: 0,
            concealment_events: 0,
            packets_recovered_fec: 0,
            packets_repaired: 0,
            packets_resent: 0,
            late_packets: 0,
            discarded_packets: 0,
            audio_level_in_dbfs: SILENCE_DBFS,
            audio_level_out_dbfs: SILENCE_DBFS,
            candidate_pair: None,
            mos: None,
            quality: None,
            summary: None,
            group: record.group.clone(),
        };
        let Some(media) = media else { return stats };
        let (rtcp, playout) = (&media.rtcp, &media.playout);
        stats.packets_sent = rtcp.packets_sent;
        stats.bytes_sent = rtcp.bytes_sent;
        stats.packets_received = rtcp.packets_received;
        stats.bytes_received = rtcp.bytes_received;
        stats.packets_lost = rtcp.local.map_or(0, |r| r.cumulative_lost);
        stats.fraction_lost = self.local.fraction(rtcp.local, 0, now);
        stats.remote_packets_lost = rtcp.remote.map_or(0, |r| r.cumulative_lost);
        stats.remote_fraction_lost = self.remote.fraction(rtcp.remote, 0, now);
        let heard_loss = self.heard.fraction(rtcp.local, playout.jitter.late, now);
        stats.jitter = rtcp.jitter;
        stats.round_trip = match (rtcp.round_trip, media.ice_round_trip) {
            (Some(rtt), _) => Some((rtt, RoundTripSource::Rtcp)),
            (None, Some(rtt)) => Some((rtt, RoundTripSource::Ice)),
            (None, None) => None,
        };
        stats.jitter_buffer_delay = playout.current_delay;
        stats.jitter_buffer_target_delay = playout.target_delay;
        stats.concealed_samples = playout.jitter.concealed_samples;
        stats.concealment_events = playout.jitter.concealment_events;
        stats.packets_recovered_fec = playout.jitter.fec_recovered;
        stats.packets_repaired = rtcp.packets_repaired;
        stats.packets_resent = rtcp.packets_requested;
        stats.late_packets = playout.jitter.late;
        stats.discarded_packets = playout.jitter.discarded;
        stats.audio_level_in_dbfs = playout.level_dbfs;
        stats.audio_level_out_dbfs = media.level_out_dbfs;
        if let Some(bps) = media.target_bitrate_bps {
            stats.codec.target_bitrate_bps = bps;
        }
        stats.candidate_pair = media.candidate_pair.clone();
        let received = rtcp.packets_received;
        let unchanged_since = match self.arrivals {
            Some((count, since)) if count == received => since,
            _ => {
                self.arrivals = Some((received, now));
                now
            }
        };
        // Silence while it rang is not a stall: the clock starts at the answer.
        let unchanged_since = record.answered_at.map_or(unchanged_since, |answered| unchanged_since.max(answered));
        let stalled = now.duration_since(unchanged_since).unwrap_or_default() >= AUDIO_STALL;
        let answered = record.answered_at.is_some()
            && matches!(record.state, State::Active | State::OnHold | State::Reconnecting | State::Ended);
        // No verdict before audio flows; nothing arriving for a while is as bad as
        // losing everything (loss reports only move when packets do).
        if answered && (received > 0 || stalled) {
            let loss = if stalled { 1.0 } else { heard_loss };
            let one_way = stats.round_trip.map_or(Duration::ZERO, |(rtt, _)| rtt / 2)
                + playout.current_delay
                + self.codec.frame
                + OPUS_LOOKAHEAD;
            let conditions = Conditions { one_way_delay: one_way, loss, bitrate_bps: stats.codec.target_bitrate_bps };
            let r = emodel::rating(&conditions);
            let mos = emodel::mos(r);
            stats.mos = Some(mos);
            stats.quality = Some(Quality::from_r(r));
            // Held time is silence by choice, not bad quality.
            if record.state == State::Active {
                let minute = usize::try_from(duration.as_secs() / 60).unwrap_or(usize::MAX);
                if self.minutes.len() <= minute && minute < 24 * 60 {
                    self.minutes.resize(minute + 1, (0.0, 0));
                }
                if let Some((sum, count)) = self.minutes.get_mut(minute) {
                    *sum += mos;
                    *count += 1;
                }
            }
        }
        stats
    }

    /// The last sample of an ended call: `last` with its summary.
    pub fn finish(&self, record: &CallRecord, mut last: CallStats, now: SystemTime) -> CallStats {
        let setup_time = record
            .answered_at
            .and_then(|answered| answered.duration_since(record.started_at).ok())
            .unwrap_or(Duration::ZERO);
        last.summary = Some(CallSummary {
            setup_time,
            duration: talk_time(record, now),
            packets_sent: last.packets_sent,
            packets_received: last.packets_received,
            packets_lost: last.packets_lost,
            worst_minute_mos: self
                .minutes
                .iter()
                .filter(|(_, count)| *count > 0)
                .map(|(sum, count)| sum / f64::from(*count))
                .min_by(f64::total_cmp),
            end_reason: record.end_reason.clone(),
        });
        last
    }
}

fn talk_time(record: &CallRecord, now: SystemTime) -> Duration {
    record.answered_at.and_then(|answered| now.duration_since(answered).ok()).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio_spec::{InputSpec, OutputSpec};
    use crate::vocab::{CallId, Direction, EndReason};

    /// The default codec: Opus, 32 kb/s, 20 ms.
    fn codec() -> CodecInfo {
        CodecInfo::opus(32_000, Duration::from_millis(20), false)
    }

    /// A call to alice in `state`.
    fn record(state: State, started: SystemTime, answered: Option<SystemTime>) -> CallRecord {
        let audio = (InputSpec::Silence, OutputSpec::Null);
        let call = CallRecord::new(CallId::random(), None, "alice".into(), Direction::Outgoing, audio, started);
        CallRecord { state, answered_at: answered, ..call }
    }

    fn reception(lost: i64, highest: u32) -> Reception {
        Reception {
            fraction_lost: 0.0,
            cumulative_lost: lost,
            highest_sequence: highest,
            jitter: Duration::from_millis(3),
        }
    }

    fn media(local: Reception, rtt_ms: u64) -> MediaSample {
        MediaSample {
            rtcp: RtcpView {
                // Arrivals move on with the sequence, so the call is not stalled.
                packets_received: u64::from(local.highest_sequence),
                local: Some(local),
                remote: Some(local),
                round_trip: Some(Duration::from_millis(rtt_ms)),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_ringing_call_has_a_state_and_no_quality() {
        let now = SystemTime::now();
        let mut meter = CallMeter::new(codec());
        let stats = meter.sample(&record(State::Outgoing, now, None), None, now);
        assert_eq!(
            (stats.state, stats.duration, stats.mos, stats.quality),
            (State::Outgoing, Duration::ZERO, None, None)
        );
        assert_eq!(stats.peer_name, "alice");
    }

    #[test]
    fn a_long_ring_gives_no_verdict_until_audio_flows_or_stalls_after_the_answer() {
        let start = SystemTime::now();
        let mut meter = CallMeter::new(codec());
        let ringing = record(State::Outgoing, start, None);
        let nothing = MediaSample::default();
        meter.sample(&ringing, Some(&nothing), start);
        meter.sample(&ringing, Some(&nothing), start + Duration::from_secs(20));
        let answered = start + Duration::from_secs(25);
        let active = record(State::Active, start, Some(answered));
        let just_after = meter.sample(&active, Some(&nothing), answered + Duration::from_millis(100));
        assert_eq!((just_after.mos, just_after.quality), (None, None));
        // Nothing for a whole stall time after the answer: that is a verdict.
        let stalled = meter.sample(&active, Some(&nothing), answered + AUDIO_STALL);
        assert_eq!(stalled.quality, Some(Quality::Bad), "{stalled:?}");
    }

    #[test]
    fn loss_is_measured_over_the_window_from_cumulative_reports() {
        let start = SystemTime::now();
        let call = record(State::Active, start, Some(start));
        let mut meter = CallMeter::new(codec());
        // One report: its own fraction (of the last interval) is all there is.
        let first_report = Reception { fraction_lost: 0.5, ..reception(0, 1_000) };
        let first = meter.sample(&call, Some(&media(first_report, 2)), start);
        assert_eq!(first.fraction_lost, 0.5);
        // 10 of the next 100 lost.
        let second = meter.sample(&call, Some(&media(reception(10, 1_100), 2)), start + Duration::from_secs(2));
        assert!((second.fraction_lost - 0.10).abs() < 1e-9);
        assert!((second.remote_fraction_lost - 0.10).abs() < 1e-9);
        // A clean stretch longer than the window forgets the earlier loss.
        let mut at = start + Duration::from_secs(2);
        let mut highest = 1_100;
        for _ in 0..12 {
            at += Duration::from_secs(1);
            highest += 50;
            meter.sample(&call, Some(&media(reception(10, highest), 2)), at);
        }
        let later = meter.sample(&call, Some(&media(reception(10, highest + 50), 2)), at + Duration::from_secs(1));
        assert_eq!(later.fraction_lost, 0.0);
        assert_eq!(later.packets_lost, 10, "the count stays cumulative");
    }

    #[test]
    fn quality_follows_delay_and_loss_and_the_summary_keeps_the_worst_minute() {
        let start = SystemTime::now() - Duration::from_secs(180);
        let call = record(State::Active, start, Some(start));
        let mut meter = CallMeter::new(codec());
        // Minute 0 clean, minute 1 lossy, minute 2 clean again.
        let clean = meter.sample(&call, Some(&media(reception(0, 3_000), 10)), start + Duration::from_secs(30));
        assert_eq!(clean.quality, Some(Quality::Excellent));
        assert_eq!(clean.round_trip, Some((Duration::from_millis(10), RoundTripSource::Rtcp)));
        meter.sample(&call, Some(&media(reception(0, 5_500), 10)), start + Duration::from_secs(80));
        let lossy = meter.sample(&call, Some(&media(reception(200, 6_000), 10)), start + Duration::from_secs(90));
        assert!(lossy.quality < Some(Quality::Fair), "{:?}", lossy.quality);
        let late = meter.sample(&call, Some(&media(reception(200, 9_000), 10)), start + Duration::from_secs(150));
        let far = meter.sample(&call, Some(&media(reception(0, 3_000), 900)), start + Duration::from_secs(150));
        assert!(far.mos < late.mos, "a long round trip costs quality");

        let ended = CallRecord { state: State::Ended, end_reason: Some(EndReason::HungUpLocal), ..call };
        let last = meter.finish(&ended, late, start + Duration::from_secs(170));
        let summary = last.summary.unwrap();
        assert_eq!(summary.duration, Duration::from_secs(170));
        assert_eq!(summary.end_reason, Some(EndReason::HungUpLocal));
        let worst = summary.worst_minute_mos.unwrap();
        assert!(worst < clean.mos.unwrap() && worst >= lossy.mos.unwrap());
    }

    #[test]
    fn no_verdict_before_audio_flows_and_a_bad_one_when_it_stops() {
        let now = SystemTime::now();
        let call = record(State::Active, now, Some(now));
        let mut meter = CallMeter::new(codec());
        let mut silent = media(reception(0, 10), 2);
        silent.rtcp.packets_received = 0;
        assert_eq!(meter.sample(&call, Some(&silent), now).quality, None);
        let flowing = media(reception(0, 10), 2);
        assert_eq!(meter.sample(&call, Some(&flowing), now).quality, Some(Quality::Excellent));
        // The same count 2 s later: nothing arrived, whatever the loss reports say.
        let stalled = meter.sample(&call, Some(&flowing), now + Duration::from_secs(2));
        assert_eq!(stalled.quality, Some(Quality::Bad));
    }

    #[test]
    fn ice_round_trip_stands_in_until_rtcp_has_one() {
        let now = SystemTime::now();
        let call = record(State::Active, now, Some(now));
        let mut sample = media(reception(0, 10), 0);
        sample.rtcp.round_trip = None;
        sample.ice_round_trip = Some(Duration::from_millis(4));
        let stats = CallMeter::new(codec()).sample(&call, Some(&sample), now);
        assert_eq!(stats.round_trip, Some((Duration::from_millis(4), RoundTripSource::Ice)));
    }

    #[test]
    fn the_codec_shows_the_bitrate_the_encoder_moved_to_and_a_low_one_costs_quality() {
        let now = SystemTime::now();
        let call = record(State::Active, now, Some(now));
        let configured = CallMeter::new(codec()).sample(&call, Some(&media(reception(0, 10), 2)), now);
        assert_eq!(configured.codec.target_bitrate_bps, 32_000);
        let mut sample = media(reception(0, 10), 2);
        sample.target_bitrate_bps = Some(14_000);
        let lowered = CallMeter::new(codec()).sample(&call, Some(&sample), now);
        assert_eq!(lowered.codec.target_bitrate_bps, 14_000);
        assert!(lowered.mos < configured.mos, "{:?} vs {:?}", lowered.mos, configured.mos);
    }

    #[test]
    fn packets_too_late_to_play_cost_quality_though_rtcp_counts_them_received() {
        let start = SystemTime::now();
        let call = record(State::Active, start, Some(start));
        let later = start + Duration::from_secs(2);
        let (mut clean, mut resent_too_late) = (CallMeter::new(codec()), CallMeter::new(codec()));
        for meter in [&mut clean, &mut resent_too_late] {
            meter.sample(&call, Some(&media(reception(0, 1_000), 2)), start);
        }
        let on_time = clean.sample(&call, Some(&media(reception(0, 1_100), 2)), later);
        let mut late = media(reception(0, 1_100), 2);
        late.playout.jitter.late = 10;
        let late = resent_too_late.sample(&call, Some(&late), later);
        assert_eq!(late.fraction_lost, 0.0, "the network lost nothing");
        assert!(late.mos < on_time.mos, "{:?} vs {:?}", late.mos, on_time.mos);
    }
}
