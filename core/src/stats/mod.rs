//! Live call statistics: what each call measures (`meter`), how good it sounds
//! (`emodel`), and where the samples wait for API subscribers (`board`).
//!
//! The task that owns a call samples it every [`SAMPLE_PERIOD`] and puts the
//! sample on the board; subscribers read the board at their own pace, so a slow
//! one holds up nobody. When a call ends its last sample carries a summary.

pub mod emodel;
pub mod meter;

use std::time::Duration;

use crate::vocab::{CallId, DeviceId, EndReason, State};

pub use emodel::Quality;
pub use meter::CallMeter;

/// How often a call is sampled: the shortest interval a subscriber may ask for.
pub const SAMPLE_PERIOD: Duration = Duration::from_millis(100);

/// The codec as negotiated.
#[derive(Debug, Clone, PartialEq)]
pub struct CodecInfo {
    /// "opus".
    pub name: &'static str,
    /// RTP clock rate.
    pub clock_rate: u32,
    /// Audio channels encoded.
    pub channels: u32,
    /// Encoder target bitrate.
    pub target_bitrate_bps: u32,
    /// Audio per packet.
    pub frame: Duration,
    /// In-band forward error correction.
    pub fec: bool,
    /// Discontinuous transmission.
    pub dtx: bool,
}

impl CodecInfo {
    /// Our Opus: 48 kHz, mono, in-band FEC on.
    pub fn opus(target_bitrate_bps: u32, frame: Duration, dtx: bool) -> Self {
        CodecInfo { name: "opus", clock_rate: 48_000, channels: 1, target_bitrate_bps, frame, fec: true, dtx }
    }
}

/// The ICE candidate pair media flows over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CandidatePair {
    /// Our address and port.
    pub local_address: String,
    /// "host", "srflx", "prflx" or "relay".
    pub local_type: String,
    /// The peer's address and port.
    pub remote_address: String,
    /// The peer candidate's type.
    pub remote_type: String,
}

/// Where a round-trip time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundTripSource {
    /// RFC 3550, from our sender reports and the peer's receiver reports.
    Rtcp,
    /// STUN on the selected ICE candidate pair.
    Ice,
}

impl RoundTripSource {
    /// As shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RoundTripSource::Rtcp => "rtcp",
            RoundTripSource::Ice => "ice",
        }
    }
}

/// One sample of a call. Names follow the W3C WebRTC statistics where one exists.
#[derive(Debug, Clone, PartialEq)]
pub struct CallStats {
    /// The call.
    pub call_id: CallId,
    /// Its peer, when known.
    pub peer: Option<DeviceId>,
    /// The peer's name.
    pub peer_name: String,
    /// Where the call is.
    pub state: State,
    /// Time since it was answered (zero before).
    pub duration: Duration,
    /// The codec.
    pub codec: CodecInfo,
    /// RTP packets sent.
    pub packets_sent: u64,
    /// RTP payload bytes sent.
    pub bytes_sent: u64,
    /// RTP packets received.
    pub packets_received: u64,
    /// RTP payload bytes received.
    pub bytes_received: u64,
    /// Packets of the peer's stream lost on the way here (cumulative).
    pub packets_lost: i64,
    /// Share of them lost over the last [`meter::LOSS_WINDOW`].
    pub fraction_lost: f64,
    /// Packets of our stream lost on the way there, as the peer reports (RTCP).
    pub remote_packets_lost: i64,
    /// Share of them over the last [`meter::LOSS_WINDOW`], as the peer reports.
    pub remote_fraction_lost: f64,
    /// RFC 3550 interarrival jitter of the peer's stream.
    pub jitter: Duration,
    /// The latest round-trip time, and where it came from.
    pub round_trip: Option<(Duration, RoundTripSource)>,
    /// What the jitter buffer holds now.
    pub jitter_buffer_delay: Duration,
    /// What the jitter buffer aims to hold.
    pub jitter_buffer_target_delay: Duration,
    /// Samples played that were made up (packet-loss concealment).
    pub concealed_samples: u64,
    /// Runs of concealed samples.
    pub concealment_events: u64,
    /// Lost packets rebuilt from the next packet's forward error correction.
    pub packets_recovered_fec: u64,
    /// Packets of the peer's lost on the way here that arrived when asked for
    /// again (RFC 4585 NACK); [`Self::packets_lost`] counts those that did not.
    pub packets_repaired: u64,
    /// Packets of ours the peer asked for again, each counted once: what it
    /// lost before the retransmission.
    pub packets_resent: u64,
    /// Packets that came too late to be played.
    pub late_packets: u64,
    /// Packets thrown away (duplicates, off the frame grid, overflow).
    pub discarded_packets: u64,
    /// Level of what we hear, dBFS.
    pub audio_level_in_dbfs: f64,
    /// Level of what we send, dBFS.
    pub audio_level_out_dbfs: f64,
    /// The selected candidate pair.
    pub candidate_pair: Option<CandidatePair>,
    /// E-model estimate (1 to 4.5), once audio flows.
    pub mos: Option<f64>,
    /// The verdict, once audio flows.
    pub quality: Option<Quality>,
    /// On the last sample of an ended call.
    pub summary: Option<CallSummary>,
    /// The group call this is a leg of.
    pub group: Option<CallId>,
}

/// A group call as a whole, from the latest samples of its legs: counters
/// summed, and each measure of how it sounds the worst leg's (a call is as
/// good as what its worst link does to someone's voice).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupStats {
    /// The group call.
    pub group: CallId,
    /// People in it, this device included (legs answered, plus one).
    pub participants: usize,
    /// The totals, in the shape of a call's sample: `call_id` is the group's,
    /// no peer; durations, loss, jitter, round trip and delay are the
    /// largest, MOS and quality the lowest, levels the loudest.
    pub totals: CallStats,
}

impl GroupStats {
    /// The group calls among `samples`, each with its totals.
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a CallStats>) -> Vec<GroupStats> {
        let mut groups: Vec<GroupStats> = Vec::new();
        for leg in samples {
            let Some(group) = &leg.group else { continue };
            let answered = matches!(leg.state, State::Connecting | State::Active | State::OnHold | State::Reconnecting);
            match groups.iter_mut().find(|g| g.group == *group) {
                Some(totals) => totals.add(leg, answered),
                None => {
                    let totals = CallStats {
                        call_id: group.clone(),
                        peer: None,
                        peer_name: String::new(),
                        summary: None,
                        ..leg.clone()
                    };
                    groups.push(GroupStats { group: group.clone(), participants: 1 + usize::from(answered), totals });
                }
            }
        }
        groups
    }

    fn add(&mut self, leg: &CallStats, answered: bool) {
        self.participants += usize::from(answered);
        let t = &mut self.totals;
        // The call is as far along as its furthest leg.
        let rank = |state: State| {
            [State::Active, State::OnHold, State::Reconnecting, State::Connecting].iter().position(|s| *s == state)
        };
        if rank(leg.state).is_some_and(|r| rank(t.state).is_none_or(|ours| r < ours)) {
            t.state = leg.state;
        }
        t.duration = t.duration.max(leg.duration);
        t.packets_sent += leg.packets_sent;
        t.bytes_sent += leg.bytes_sent;
        t.packets_received += leg.packets_received;
        t.bytes_received += leg.bytes_received;
        t.packets_lost += leg.packets_lost;
        t.fraction_lost = t.fraction_lost.max(leg.fraction_lost);
        t.remote_packets_lost += leg.remote_packets_lost;
        t.remote_fraction_lost = t.remote_fraction_lost.max(leg.remote_fraction_lost);
        t.jitter = t.jitter.max(leg.jitter);
        t.round_trip =
            combine(t.round_trip, leg.round_trip, |ours, theirs| if theirs.0 > ours.0 { theirs } else { ours });
        t.jitter_buffer_delay = t.jitter_buffer_delay.max(leg.jitter_buffer_delay);
        t.jitter_buffer_target_delay = t.jitter_buffer_target_delay.max(leg.jitter_buffer_target_delay);
        t.concealed_samples += leg.concealed_samples;
        t.concealment_events += leg.concealment_events;
        t.packets_recovered_fec += leg.packets_recovered_fec;
        t.packets_repaired += leg.packets_repaired;
        t.packets_resent += leg.packets_resent;
        t.late_packets += leg.late_packets;
        t.discarded_packets += leg.discarded_packets;
        t.audio_level_in_dbfs = t.audio_level_in_dbfs.max(leg.audio_level_in_dbfs);
        t.audio_level_out_dbfs = t.audio_level_out_dbfs.max(leg.audio_level_out_dbfs);
        t.candidate_pair = None;
        t.mos = combine(t.mos, leg.mos, f64::min);
        t.quality = combine(t.quality, leg.quality, Ord::min);
    }
}

/// Both measured: `pick` one; else whichever was.
fn combine<T>(ours: Option<T>, theirs: Option<T>, pick: impl FnOnce(T, T) -> T) -> Option<T> {
    match (ours, theirs) {
        (Some(ours), Some(theirs)) => Some(pick(ours, theirs)),
        (ours, theirs) => ours.or(theirs),
    }
}

/// A finished call in numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct CallSummary {
    /// From creation to answered (zero if never answered).
    pub setup_time: Duration,
    /// From answered to ended.
    pub duration: Duration,
    /// RTP packets sent.
    pub packets_sent: u64,
    /// RTP packets received.
    pub packets_received: u64,
    /// Packets of the peer's stream lost.
    pub packets_lost: i64,
    /// The lowest MOS of any minute of the call (its average over the minute).
    pub worst_minute_mos: Option<f64>,
    /// Why it ended.
    pub end_reason: Option<EndReason>,
}

/// The lowest representable level: digital silence.
pub const SILENCE_DBFS: f64 = -127.0;

/// The RMS level of 16-bit samples in dBFS.
pub fn level_dbfs(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return SILENCE_DBFS;
    }
    let energy: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let rms = (energy / samples.len() as f64).sqrt() / 32_768.0;
    if rms <= 0.0 { SILENCE_DBFS } else { (20.0 * rms.log10()).max(SILENCE_DBFS) }
}

/// The level of a stream of samples over a stretch of time (the microphone
/// check): frames go in, a reading comes out and the next stretch starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct LevelMeter {
    energy: f64,
    samples: u64,
    peak: u16,
}

/// One reading of a [`LevelMeter`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelReading {
    /// RMS over the stretch, dBFS ([`SILENCE_DBFS`] for digital silence).
    pub level_dbfs: f64,
    /// The loudest sample, dBFS.
    pub peak_dbfs: f64,
}

impl LevelMeter {
    /// Adds a frame.
    pub fn add(&mut self, frame: &[i16]) {
        self.energy += frame.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>();
        self.samples += frame.len() as u64;
        self.peak = frame.iter().map(|s| s.unsigned_abs()).fold(self.peak, u16::max);
    }

    /// The reading since the last one; starts a new stretch.
    pub fn take(&mut self) -> LevelReading {
        let dbfs = |amplitude: f64| {
            if amplitude <= 0.0 { SILENCE_DBFS } else { (20.0 * (amplitude / 32_768.0).log10()).max(SILENCE_DBFS) }
        };
        let rms = if self.samples == 0 { 0.0 } else { (self.energy / self.samples as f64).sqrt() };
        let reading = LevelReading { level_dbfs: dbfs(rms), peak_dbfs: dbfs(f64::from(self.peak)) };
        *self = LevelMeter::default();
        reading
    }
}

/// One side's RTCP reception report on a stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reception {
    /// Share of packets lost since the previous report (0 to 1).
    pub fraction_lost: f64,
    /// Packets lost since the stream began (negative with duplicates).
    pub cumulative_lost: i64,
    /// Extended highest sequence number received.
    pub highest_sequence: u32,
    /// RFC 3550 interarrival jitter.
    pub jitter: Duration,
}

/// Everything the monitor has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RtcpView {
    /// RTP packets we sent.
    pub packets_sent: u64,
    /// RTP payload bytes we sent.
    pub bytes_sent: u64,
    /// RTP packets we received.
    pub packets_received: u64,
    /// RTP payload bytes we received.
    pub bytes_received: u64,
    /// Our latest report on the peer's stream: what we hear.
    pub local: Option<Reception>,
    /// RFC 3550 interarrival jitter of the peer's stream, computed here.
    pub jitter: Duration,
    /// The peer's latest report on our stream: what it hears of us.
    pub remote: Option<Reception>,
    /// The latest RFC 3550 round-trip time.
    pub round_trip: Option<Duration>,
    /// Packets of ours the peer asked for again (RFC 4585 NACK), each once:
    /// what it lost before retransmission repaired it.
    pub packets_requested: u64,
    /// Packets of the peer's we asked for again that then arrived.
    pub packets_repaired: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(id: &str, group: Option<&str>, state: State, mos: Option<f64>, sent: u64, rtt_ms: u64) -> CallStats {
        let call = |name: &str| CallId::try_from(name.to_owned()).unwrap();
        let record = crate::call_record::CallRecord {
            state,
            group: group.map(call),
            ..crate::call_record::CallRecord::new(
                call(id),
                None,
                id.into(),
                crate::vocab::Direction::Outgoing,
                (crate::audio_spec::InputSpec::Silence, crate::audio_spec::OutputSpec::Null),
                std::time::SystemTime::UNIX_EPOCH,
            )
        };
        let codec = CodecInfo::opus(32_000, Duration::from_millis(20), false);
        let mut stats = CallMeter::new(codec).sample(&record, None, std::time::SystemTime::UNIX_EPOCH);
        stats.mos = mos;
        stats.quality = mos.map(|m| if m > 4.0 { Quality::Excellent } else { Quality::Poor });
        stats.packets_sent = sent;
        stats.round_trip = Some((Duration::from_millis(rtt_ms), RoundTripSource::Rtcp));
        stats
    }

    #[test]
    fn a_group_call_sums_its_legs_counters_and_sounds_like_its_worst_leg() {
        let legs = [
            leg("ab", Some("ab"), State::Active, Some(4.3), 100, 5),
            leg("ac", Some("ab"), State::Active, Some(3.1), 50, 40),
            leg("ad", Some("ab"), State::Outgoing, None, 0, 0),
            leg("xy", None, State::Incoming, None, 7, 1),
            leg("g2", Some("g2"), State::OnHold, Some(4.4), 9, 2),
        ];
        let groups = GroupStats::of(&legs);
        assert_eq!(groups.len(), 2, "the two-party call has none: {groups:?}");
        let ab = &groups[0];
        assert_eq!((ab.group.as_str(), ab.participants), ("ab", 3), "us, b and c; d still rings");
        let t = &ab.totals;
        assert_eq!((t.state, t.packets_sent, t.peer), (State::Active, 150, None));
        assert_eq!((t.mos, t.quality), (Some(3.1), Some(Quality::Poor)), "the worst leg's");
        assert_eq!(t.round_trip, Some((Duration::from_millis(40), RoundTripSource::Rtcp)), "the longest");
        assert_eq!((groups[1].participants, groups[1].totals.state), (2, State::OnHold));
    }

    #[test]
    fn levels_are_rms_dbfs() {
        assert_eq!(level_dbfs(&[0; 480]), SILENCE_DBFS);
        assert_eq!(level_dbfs(&[]), SILENCE_DBFS);
        // A full-scale square wave is 0 dBFS; half scale is about -6.
        let full: Vec<i16> = (0..480).map(|i| if i % 2 == 0 { i16::MAX } else { -i16::MAX }).collect();
        assert!(level_dbfs(&full).abs() < 0.01);
        let half: Vec<i16> = full.iter().map(|s| s / 2).collect();
        assert!((level_dbfs(&half) + 6.02).abs() < 0.05);
    }

    #[test]
    fn a_level_meter_reads_rms_and_peak_over_its_stretch_then_starts_anew() {
        let mut meter = LevelMeter::default();
        assert_eq!(meter.take(), LevelReading { level_dbfs: SILENCE_DBFS, peak_dbfs: SILENCE_DBFS });
        // Half scale for one frame, silence for three: RMS -6 dB - 6 dB (a quarter
        // of the energy), peak -6 dB.
        let half: Vec<i16> = (0..480).map(|i| if i % 2 == 0 { 16_384 } else { -16_384 }).collect();
        meter.add(&half);
        for _ in 0..3 {
            meter.add(&[0; 480]);
        }
        let reading = meter.take();
        assert!((reading.level_dbfs + 12.04).abs() < 0.05, "{reading:?}");
        assert!((reading.peak_dbfs + 6.02).abs() < 0.05, "{reading:?}");
        meter.add(&[0; 480]);
        assert_eq!(meter.take().peak_dbfs, SILENCE_DBFS, "a new stretch");
        meter.add(&[i16::MIN]);
        assert!(meter.take().peak_dbfs.abs() < 0.01, "full scale, the most negative sample included");
    }
}
