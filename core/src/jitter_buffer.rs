//! The receive-side jitter buffer. Pure: packets go in with their arrival time
//! and duration, decisions come out in order (play this packet, recover it from
//! the next one's FEC, conceal it, or play silence), each for a stretch of
//! samples, driven by the playout clock's `now`.
//!
//! A peer may send packets of any length Opus allows (2.5 to 120 ms) whatever
//! it announced, and change it mid-call: the buffer follows the stream's RTP
//! timestamps, so a packet plays for as long as it lasts and a gap is
//! concealed in stretches of the stream's own packet length. The player asks
//! for decisions until it has samples for its frame.
//!
//! Adaptive: the target delay follows the measured interarrival jitter (RFC 3550
//! estimator), between a floor of one frame and one packet and a ceiling; when
//! the buffer holds more than the target plus two frames (or a packet, if that
//! is longer), a packet is dropped to cut the latency. A packet is late when its
//! time has been played, whatever its sequence number: a sender that paused
//! (DTX) resumes with numbers that concealment here has counted past. When the
//! buffer runs dry before the next packet is due (by the sender's pace since
//! the furthest one came), playout holds, concealing, rather than give that
//! packet up: a sender whose clock runs slower than ours is heard in full.
//!
//! Retransmissions (the peer resends what we asked for by NACK) arrive a
//! request and a round trip after the rest of the stream; the player says which
//! packets are retransmissions ([`JitterBuffer::push_retransmission`]). Each one
//! measures how much later than the stream it came (its transit beyond the last
//! ordinary packet's), and the target grows by what nine in ten of the recent
//! ones needed (at most [`MAX_RESEND_MARGIN`]; each forgotten after
//! [`RESEND_MEMORY`]). While the buffer is below its target, a missing packet
//! with later ones already here (so it has been asked for) is waited for,
//! concealed without moving on, for up to that margin: that adds the delay, and
//! the retransmission plays in full.
//!
//! Losses in a burst are learned apart. FEC recovers only the last packet of a
//! burst; the ones before it are asked for only once the burst has ended, so
//! their retransmissions come a burst's length later than an isolated one's and
//! would push the typical retransmission past the cap. A retransmission whose
//! successor had not arrived either is a burst's; those get their own margin
//! (at most [`MAX_BURST_RESEND_MARGIN`], from the first one seen), which the
//! target also covers and which a missing packet that FEC cannot recover is
//! waited for; while that margin stands, so is the first packet
//! missing after one that played even with nothing later here yet (a burst
//! under way; once per gap, and never so long that the buffer would trim a
//! packet after it, so a pause in the stream costs no more). On a long
//! round trip they come too late and the margin stays zero: waiting would only
//! add delay.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// RTP clock rate of Opus.
const CLOCK_RATE: u64 = 48_000;
/// The most delay the buffer will add, whatever the jitter.
const MAX_TARGET: Duration = Duration::from_millis(300);
/// After this much concealment in a row (100 ms, in samples) the peer is taken
/// to be silent (muted, DTX without a packet, or gone): play silence, stop
/// counting loss.
const MAX_CONCEALED_RUN: u64 = 4800;
/// Packets further ahead than this are garbage, not jitter.
const MAX_AHEAD_FRAMES: u64 = 500;
/// The shortest Opus frame (2.5 ms), the unit of concealment.
const MIN_OPUS_SAMPLES: u64 = 120;
/// The longest Opus packet (120 ms).
pub const MAX_PACKET_SAMPLES: u32 = 5760;
/// The most retransmissions may add to the target: on a LAN one comes back
/// within a request interval (20 ms) after a burst of losses; waiting longer
/// costs more in latency than it saves in sound.
pub const MAX_RESEND_MARGIN: Duration = Duration::from_millis(60);
/// The most retransmissions of burst losses may add to the target: the first
/// packet of a burst of five 20 ms packets is asked for 100 ms after it was
/// due, at the next request (up to 20 ms later), and on Wi-Fi-like bursts (5 %
/// loss in runs of about three) about one bad spell in four lasts that long.
/// The first one seen sets it: bursts come about once a second on such a
/// link, and each before the margin loses whole packets; on a path where they
/// come too late it stays zero. The cost is delay: at 15 % random loss, where
/// runs of two or three are common, about 10 ms more.
/// `tests/jitter_buffer_bursts.rs` measures it against the bench's bursty link.
pub const MAX_BURST_RESEND_MARGIN: Duration = Duration::from_millis(120);
/// How many sequence numbers back the buffer remembers which packets came.
const RECEIVED_WINDOW: u64 = 128;
/// How long a retransmission counts towards the margin.
pub const RESEND_MEMORY: Duration = Duration::from_secs(10);
/// How many recent retransmissions the margin is taken from.
const RESEND_SAMPLES: usize = 20;
/// A stream silent this long (the peer muted or held) starts afresh: its
/// sequence numbers may have moved further than a 16-bit counter can tell.
const RESYNC_GAP: Duration = Duration::from_secs(1);

/// The margin that covers nine in ten of the recent retransmissions (all of
/// them while there are fewer than ten), at most `cap`: the slowest, one that
/// was asked for twice, is left to FEC or concealment rather than delaying the
/// whole call. None when the typical one (the median) comes later than that:
/// the path's round trip is too long for waiting to pay.
fn margin_for(resent: &VecDeque<(Duration, Instant)>, cap: Duration) -> Duration {
    let mut needed: Vec<Duration> = resent.iter().map(|(needed, _)| *needed).collect();
    needed.sort_unstable();
    if needed.get(needed.len() / 2).is_none_or(|median| *median > cap) {
        return Duration::ZERO;
    }
    let covered = (needed.len() * 9).div_ceil(10);
    covered.checked_sub(1).and_then(|at| needed.get(at)).map_or(Duration::ZERO, |p90| (*p90).min(cap))
}

/// What to play next, and for how many samples (48 kHz).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// Decode this packet, `samples` long.
    Frame(Bytes, u32),
    /// A packet `samples` long was lost; decode its in-band FEC copy from this
    /// (the next) packet.
    Fec(Bytes, u32),
    /// Lost and cannot be recovered: ask the decoder to conceal (PLC) this many
    /// samples (a multiple of 2.5 ms).
    Conceal(u32),
    /// Nothing to play for this many samples (not started, or the peer sends
    /// nothing).
    Silence(u32),
}

impl Playout {
    /// How many samples it lasts.
    pub fn samples(&self) -> u32 {
        match *self {
            Playout::Frame(_, n) | Playout::Fec(_, n) | Playout::Conceal(n) | Playout::Silence(n) => n,
        }
    }
}

/// What happened to a pushed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Buffered.
    Accepted,
    /// Its frame was already played (or given up on): too late.
    Late,
    /// Already buffered.
    Duplicate,
    /// Implausibly far from the stream: dropped.
    Discarded,
}

/// Counters for the stats feed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets that arrived after their frame was played.
    pub late: u64,
    /// Packets dropped: duplicates, garbage, and frames cut to reduce latency.
    pub discarded: u64,
    /// Concealments by PLC (each one lost packet's length, or less).
    pub concealed_frames: u64,
    /// Samples concealed by PLC.
    pub concealed_samples: u64,
    /// Runs of concealed frames.
    pub concealment_events: u64,
    /// Frames recovered from FEC.
    pub fec_recovered: u64,
    /// Frames played from real packets.
    pub played: u64,
}

#[derive(Debug)]
struct Buffered {
    ts: u64,
    samples: u64,
    payload: Bytes,
}

/// Widens a wrapping RTP counter to a monotonic u64 (str0m's SeqNo idea).
#[derive(Debug, Default)]
struct Unwrapper {
    last: Option<u64>,
}

impl Unwrapper {
    fn unwrap(&mut self, value: u64, bits: u32) -> u64 {
        let modulus = 1u64 << bits;
        let Some(last) = self.last else {
            // Start high enough that an early reordered packet does not underflow.
            let extended = value + modulus;
            self.last = Some(extended);
            return extended;
        };
        let base = last & !(modulus - 1);
        let candidates = [base.wrapping_sub(modulus), base, base + modulus].map(|b| b.wrapping_add(value));
        let extended = candidates.into_iter().min_by_key(|c| c.abs_diff(last)).unwrap_or(value);
        if extended > last {
            self.last = Some(extended);
        }
        extended
    }
}

/// The jitter buffer of one incoming stream.
#[derive(Debug)]
pub struct JitterBuffer {
    frame: Duration,
    frame_ts: u64,
    min_target: Duration,
    packets: BTreeMap<u64, Buffered>,
    seq: Unwrapper,
    ts: Unwrapper,
    /// Extended timestamp of the next sample to play; set by the first packet.
    next_ts: Option<u64>,
    /// The length of the stream's packets (the last one pushed): how much a
    /// lost packet is taken to have held.
    packet_ts: u64,
    /// Sequence number of the last packet played (or assumed lost).
    last_seq: u64,
    /// Playout starts when this instant passes.
    start_at: Option<Instant>,
    started: bool,
    /// RFC 3550 interarrival jitter, in seconds.
    jitter: f64,
    /// How much later than the stream each recent retransmission of an isolated
    /// loss came, and when.
    resent: VecDeque<(Duration, Instant)>,
    /// What the target adds for them: see [`margin_for`].
    resend_margin: Duration,
    /// The same for the retransmissions of losses in a burst.
    resent_in_bursts: VecDeque<(Duration, Instant)>,
    burst_margin: Duration,
    /// The newest sequence number pushed, and which of the [`RECEIVED_WINDOW`]
    /// up to it came (bit n: newest - n): whether a resent packet's successor
    /// was lost too.
    newest_seq: Option<u64>,
    received: u128,
    /// Where the stream had reached (the end of the furthest packet that came
    /// on time) and when: how far behind it playout is, with nothing buffered.
    newest_end: Option<(u64, Instant)>,
    /// The timestamp a missing packet is being waited for at, and the samples
    /// concealed meanwhile.
    waiting_at: Option<u64>,
    waited: u64,
    last_transit: Option<f64>,
    epoch: Option<Instant>,
    last_arrival: Option<Instant>,
    /// Samples concealed in a row.
    concealed_run: u64,
    stats: JitterStats,
}

impl JitterBuffer {
    /// A buffer for frames of `frame` (10 or 20 ms) at 48 kHz.
    pub fn new(frame: Duration) -> Self {
        JitterBuffer {
            frame,
            frame_ts: (frame.as_micros() as u64 * CLOCK_RATE) / 1_000_000,
            min_target: frame,
            packets: BTreeMap::new(),
            seq: Unwrapper::default(),
            ts: Unwrapper::default(),
            next_ts: None,
            packet_ts: (frame.as_micros() as u64 * CLOCK_RATE) / 1_000_000,
            last_seq: 0,
            start_at: None,
            started: false,
            jitter: 0.0,
            resent: VecDeque::new(),
            resend_margin: Duration::ZERO,
            resent_in_bursts: VecDeque::new(),
            burst_margin: Duration::ZERO,
            newest_seq: None,
            received: 0,
            newest_end: None,
            waiting_at: None,
            waited: 0,
            last_transit: None,
            epoch: None,
            last_arrival: None,
            concealed_run: 0,
            stats: JitterStats::default(),
        }
    }

    /// The delay the buffer aims for now.
    pub fn target_delay(&self) -> Duration {
        // At least a frame, and a packet: the next one must be there when one
        // is lost, for its FEC. Three times the jitter covers nearly all of it
        // for the usual shapes; a retransmission needs its own margin.
        let floor = self.min_target.max(self.ts_duration(self.packet_ts));
        let wanted = floor + Duration::from_secs_f64(3.0 * self.jitter).max(self.resend_margin());
        wanted.clamp(floor, MAX_TARGET.max(floor))
    }

    /// The delay buffered now: from the next sample to play to the end of the
    /// newest packet held.
    pub fn current_delay(&self) -> Duration {
        match (self.next_ts, self.packets.values().map(|p| p.ts + p.samples).max()) {
            (Some(next), Some(end)) if end > next => self.ts_duration(end - next),
            _ => Duration::ZERO,
        }
    }

    /// How much the target grew for retransmissions (of isolated losses or of
    /// bursts, whichever needs more).
    pub fn resend_margin(&self) -> Duration {
        self.resend_margin.max(self.burst_margin)
    }

    /// Interarrival jitter (RFC 3550), as measured.
    pub fn jitter(&self) -> Duration {
        Duration::from_secs_f64(self.jitter)
    }

    /// Counters.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    fn ts_duration(&self, ts: u64) -> Duration {
        Duration::from_micros(ts * 1_000_000 / CLOCK_RATE)
    }

    /// A packet of `samples` (its decoded length at 48 kHz, 120 to
    /// [`MAX_PACKET_SAMPLES`]) arrived.
    pub fn push(&mut self, seq: u16, ts: u32, samples: u32, payload: Bytes, arrival: Instant) -> Pushed {
        self.accept(seq, ts, samples, payload, arrival, true)
    }

    /// As [`Self::push`], for a packet we asked for again: late by design, so
    /// it teaches the margin for retransmissions and is no measure of the
    /// path's jitter.
    pub fn push_retransmission(&mut self, seq: u16, ts: u32, samples: u32, payload: Bytes, arrival: Instant) -> Pushed {
        self.accept(seq, ts, samples, payload, arrival, false)
    }

    fn accept(&mut self, seq: u16, ts: u32, samples: u32, payload: Bytes, arrival: Instant, on_time: bool) -> Pushed {
        if self.last_arrival.replace(arrival).is_some_and(|last| arrival.saturating_duration_since(last) > RESYNC_GAP) {
            self.restart();
        }
        if !(MIN_OPUS_SAMPLES..=u64::from(MAX_PACKET_SAMPLES)).contains(&u64::from(samples)) {
            self.stats.discarded += 1;
            return Pushed::Discarded;
        }
        let seq = self.seq.unwrap(u64::from(seq), 16);
        let ts = self.ts.unwrap(u64::from(ts), 32);
        let next_ts = *self.next_ts.get_or_insert_with(|| {
            self.last_seq = seq - 1;
            self.start_at = Some(arrival + self.min_target);
            ts
        });
        let fresh = |(_, at): &(Duration, Instant)| arrival.saturating_duration_since(*at) <= RESEND_MEMORY;
        if self.resent.front().is_some_and(|r| !fresh(r)) {
            self.resent.retain(fresh);
            self.resend_margin = margin_for(&self.resent, MAX_RESEND_MARGIN);
        }
        if self.resent_in_bursts.front().is_some_and(|r| !fresh(r)) {
            self.resent_in_bursts.retain(fresh);
            self.burst_margin = margin_for(&self.resent_in_bursts, MAX_BURST_RESEND_MARGIN);
        }
        if on_time {
            self.update_jitter(ts, arrival);
        } else {
            self.learn_from_retransmission(seq, ts, arrival);
        }
        // Garbage (a timestamp far from the stream's) would move the window.
        if ts.abs_diff(next_ts) <= MAX_AHEAD_FRAMES * self.frame_ts {
            self.mark_received(seq);
        }
        // Late is by time alone: a sender that paused (DTX, a stall) resumes
        // with sequence numbers that concealment here has already counted past.
        if ts < next_ts {
            self.stats.late += 1;
            return Pushed::Late;
        }
        if ts > next_ts + MAX_AHEAD_FRAMES * self.frame_ts {
            self.stats.discarded += 1;
            return Pushed::Discarded;
        }
        if self.packets.contains_key(&seq) {
            self.stats.discarded += 1;
            return Pushed::Duplicate;
        }
        if on_time && self.newest_end.is_none_or(|(end, _)| ts + u64::from(samples) > end) {
            self.newest_end = Some((ts + u64::from(samples), arrival));
        }
        self.packet_ts = u64::from(samples);
        self.packets.insert(seq, Buffered { ts, samples: u64::from(samples), payload });
        Pushed::Accepted
    }

    /// Forgets the stream's position (not its counters or jitter estimate).
    fn restart(&mut self) {
        self.packets.clear();
        self.seq = Unwrapper::default();
        self.ts = Unwrapper::default();
        self.next_ts = None;
        self.start_at = None;
        self.started = false;
        self.last_transit = None;
        self.epoch = None;
        self.concealed_run = 0;
        self.waiting_at = None;
        self.newest_seq = None;
        self.received = 0;
        self.newest_end = None;
    }

    /// How far behind the stream playout at `next_ts` is `now`: where the
    /// stream has reached by the sender's pace since its furthest packet came.
    /// None before a packet came on time.
    fn behind_stream(&self, next_ts: u64, now: Instant) -> Option<Duration> {
        let (end, at) = self.newest_end?;
        let since = now.saturating_duration_since(at).as_micros() as u64 * CLOCK_RATE / 1_000_000;
        Some(self.ts_duration((end + since).saturating_sub(next_ts)))
    }

    fn mark_received(&mut self, seq: u64) {
        match self.newest_seq {
            Some(newest) if seq <= newest => {
                if newest - seq < RECEIVED_WINDOW {
                    self.received |= 1 << (newest - seq);
                }
            }
            newest => {
                let shift = newest.map_or(RECEIVED_WINDOW, |newest| seq - newest);
                self.received = if shift >= RECEIVED_WINDOW { 0 } else { self.received << shift };
                self.received |= 1;
                self.newest_seq = Some(seq);
            }
        }
    }

    fn was_received(&self, seq: u64) -> bool {
        self.newest_seq.is_some_and(|newest| {
            seq <= newest && newest - seq < RECEIVED_WINDOW && self.received >> (newest - seq) & 1 == 1
        })
    }

    /// A retransmission of the packet `seq` at `ts` arrived: how much later than
    /// the stream (the last ordinary packet's transit) it came is what the
    /// target would need to play it. If its successor has not come either, it
    /// was lost in a burst: retransmissions are sent in order, so the
    /// successor's would come after it.
    fn learn_from_retransmission(&mut self, seq: u64, ts: u64, arrival: Instant) {
        let (Some(epoch), Some(stream)) = (self.epoch, self.last_transit) else { return };
        let transit = arrival.saturating_duration_since(epoch).as_secs_f64() - ts as f64 / CLOCK_RATE as f64;
        let needed = Duration::from_secs_f64((transit - stream).clamp(0.0, 10.0));
        let in_burst = !self.was_received(seq + 1);
        let resent = if in_burst { &mut self.resent_in_bursts } else { &mut self.resent };
        if resent.len() == RESEND_SAMPLES {
            resent.pop_front();
        }
        resent.push_back((needed, arrival));
        if in_burst {
            self.burst_margin = margin_for(&self.resent_in_bursts, MAX_BURST_RESEND_MARGIN);
        } else {
            self.resend_margin = margin_for(&self.resent, MAX_RESEND_MARGIN);
        }
    }

    fn update_jitter(&mut self, ts: u64, arrival: Instant) {
        let epoch = *self.epoch.get_or_insert(arrival);
        let transit = arrival.saturating_duration_since(epoch).as_secs_f64() - ts as f64 / CLOCK_RATE as f64;
        if let Some(last) = self.last_transit.replace(transit) {
            self.jitter += ((transit - last).abs() - self.jitter) / 16.0;
        }
    }

    /// What to play next, at the frame due `now`. The player calls it until it
    /// has its frame's samples.
    pub fn pop(&mut self, now: Instant) -> Playout {
        let Some(next_ts) = self.next_ts else { return self.silence() };
        if !self.started {
            // Wait until the target delay has built up after the first packet.
            match self.start_at {
                Some(at) if now >= at.max(at + self.target_delay().saturating_sub(self.min_target)) => {
                    self.started = true
                }
                _ => return self.silence(),
            }
        }
        // Too much buffered: drop the oldest packets (or gaps) to bring the
        // latency down, keeping at least two frames or a packet beyond the target.
        let mut next_ts = next_ts;
        let slack = self.trim_slack();
        while self.current_delay() > self.target_delay() + slack {
            let dropped = match self.packets.first_key_value() {
                Some((&seq, packet)) if packet.ts == next_ts => {
                    let samples = packet.samples;
                    self.packets.remove(&seq);
                    self.last_seq = seq;
                    samples
                }
                Some((_, packet)) if packet.ts > next_ts => (packet.ts - next_ts).min(self.packet_ts),
                _ => self.packet_ts,
            };
            next_ts += dropped;
            self.next_ts = Some(next_ts);
            self.stats.discarded += 1;
        }

        // A packet whose time is already past (one that does not fall where the
        // stream left off) can never play: drop it rather than let it block.
        while let Some((&seq, packet)) = self.packets.first_key_value() {
            if packet.ts >= next_ts {
                break;
            }
            self.packets.remove(&seq);
            self.last_seq = self.last_seq.max(seq);
            self.stats.late += 1;
        }
        let Some((&seq, packet)) = self.packets.first_key_value() else {
            return self.missing(next_ts, None, now);
        };
        let (packet_ts, samples, payload) = (packet.ts, packet.samples, packet.payload.clone());
        if packet_ts == next_ts {
            self.packets.remove(&seq);
            self.last_seq = seq;
            self.next_ts = Some(next_ts + samples);
            self.concealed_run = 0;
            self.stats.played += 1;
            return Playout::Frame(payload, samples as u32);
        }
        if seq == self.last_seq + 1 {
            // The next packet in sequence is for a later time: the sender was silent
            // (DTX), nothing was lost.
            let gap = (packet_ts - next_ts).min(self.frame_ts);
            self.next_ts = Some(next_ts + gap);
            return Playout::Silence(gap as u32);
        }
        self.missing(next_ts, Some((packet_ts, payload)), now)
    }

    /// How far above the target the buffer may be before packets are dropped:
    /// two frames, or a packet if that is longer.
    fn trim_slack(&self) -> Duration {
        (2 * self.frame).max(self.ts_duration(self.packet_ts))
    }

    /// Silence for one frame, before the stream starts.
    fn silence(&self) -> Playout {
        Playout::Silence(self.frame_ts as u32)
    }

    /// Nothing to play at `next_ts`; `following` is the next packet held, if any.
    fn missing(&mut self, next_ts: u64, following: Option<(u64, Bytes)>, now: Instant) -> Playout {
        // One lost packet of the stream's length, or less if the next one starts
        // sooner, in whole Opus frames (the decoder conceals no less); a sliver
        // shorter than one is silence, so the next packet still plays.
        let gap = following.as_ref().map_or(self.packet_ts, |(ts, _)| ts - next_ts).min(self.packet_ts);
        let lost = gap / MIN_OPUS_SAMPLES * MIN_OPUS_SAMPLES;
        if lost == 0 {
            self.next_ts = Some(next_ts + gap);
            return Playout::Silence(gap as u32);
        }
        // Nothing here, and by the sender's pace the packet is not a packet
        // overdue: playout has caught up with the stream. Conceal without
        // moving on, so it plays when it comes (a lost one is then recovered
        // from the next one's FEC). Otherwise a sender whose clock is a little
        // slower than ours would, once the buffer ran dry, have every packet
        // arrive just after its time and be given up, for good. Once per gap:
        // holding puts playout further behind.
        if following.is_none()
            && self.behind_stream(next_ts, now).is_some_and(|behind| behind < self.ts_duration(lost + self.packet_ts))
        {
            // The same wait as for a retransmission, which may go on from here.
            self.wait_at(next_ts);
            return self.conceal(lost);
        }
        let recoverable = following.as_ref().is_some_and(|(ts, _)| *ts == next_ts + lost);
        // With nothing later here the packet has not been asked for yet; where
        // bursts were lost lately it may be the first of one: wait for it too,
        // but only the first missing after a packet played (or the one already
        // waited for), and only while playout is so little behind the stream
        // that the next packet would not be trimmed: a pause in the stream is
        // not waited for packet by packet, nor does a wait cost a packet.
        let asked = following.is_some()
            || (!self.burst_margin.is_zero()
                && (self.concealed_run == 0 || self.waiting_at == Some(next_ts))
                && self.behind_stream(next_ts, now).is_some_and(|behind| {
                    behind + self.ts_duration(lost + self.packet_ts) <= self.target_delay() + self.trim_slack()
                }));
        if asked && self.waits_for_retransmission(next_ts, lost, recoverable) {
            self.waited += lost;
            return self.conceal(lost);
        }
        self.next_ts = Some(next_ts + lost);
        self.last_seq += 1;
        if let Some((_, payload)) = following.filter(|_| recoverable) {
            self.stats.fec_recovered += 1;
            self.concealed_run = 0;
            return Playout::Fec(payload, lost as u32);
        }
        self.conceal(lost)
    }

    /// Whether to wait `lost` samples more for the missing packet at `next_ts`
    /// (concealing, without moving on): only while retransmissions have been
    /// seen, what is buffered beyond the gap is below the target, the wait
    /// stays within their margin (a burst's too, if the next packet's FEC
    /// cannot stand in: `recoverable` is false), and one more packet arriving
    /// would not make the buffer trim what it waited for.
    fn waits_for_retransmission(&mut self, next_ts: u64, lost: u64, recoverable: bool) -> bool {
        self.wait_at(next_ts);
        let margin = if recoverable { self.resend_margin } else { self.resend_margin() };
        let (buffered, target) = (self.current_delay(), self.target_delay());
        !margin.is_zero()
            && buffered.saturating_sub(self.ts_duration(lost)) < target
            && buffered + self.ts_duration(self.packet_ts) <= target + self.trim_slack()
            && self.ts_duration(self.waited + lost) <= margin
    }

    /// Waiting at `next_ts`: from nothing waited, if it was not already.
    fn wait_at(&mut self, next_ts: u64) {
        if self.waiting_at != Some(next_ts) {
            self.waiting_at = Some(next_ts);
            self.waited = 0;
        }
    }

    /// PLC for `lost` samples, or silence once the peer seems to have stopped.
    fn conceal(&mut self, lost: u64) -> Playout {
        if self.concealed_run >= MAX_CONCEALED_RUN {
            return Playout::Silence(lost as u32);
        }
        if self.concealed_run == 0 {
            self.stats.concealment_events += 1;
        }
        self.concealed_run += lost;
        self.stats.concealed_frames += 1;
        self.stats.concealed_samples += lost;
        Playout::Conceal(lost as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_millis(20);
    const TS: u32 = 960;

    fn payload(n: u16) -> Bytes {
        Bytes::from(n.to_be_bytes().to_vec())
    }

    /// Feeds packets (index, arrival offset in ms) and pops one frame every 20 ms
    /// from `start_ms` on; returns what was played per frame.
    fn run(arrivals: &[(u16, u64)], frames: usize) -> (Vec<Playout>, JitterBuffer) {
        run_with_retransmissions(arrivals, frames, &[])
    }

    /// As [`run`], with the packets of `resent` pushed as retransmissions.
    fn run_with_retransmissions(
        arrivals: &[(u16, u64)],
        frames: usize,
        resent: &[u16],
    ) -> (Vec<Playout>, JitterBuffer) {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(FRAME);
        let mut pending: Vec<(u16, u64)> = arrivals.to_vec();
        pending.sort_by_key(|(_, at)| *at);
        let mut played = Vec::new();
        let mut clock_ms = 0;
        let mut it = pending.into_iter().peekable();
        while played.len() < frames {
            while let Some(&(i, at)) = it.peek() {
                if at > clock_ms {
                    break;
                }
                let push = if resent.contains(&i) { JitterBuffer::push_retransmission } else { JitterBuffer::push };
                push(
                    &mut jb,
                    1000u16.wrapping_add(i),
                    5000u32.wrapping_add(u32::from(i) * TS),
                    TS,
                    payload(i),
                    t0 + Duration::from_millis(at),
                );
                it.next();
            }
            if clock_ms % 20 == 0 && clock_ms > 0 {
                played.push(jb.pop(t0 + Duration::from_millis(clock_ms)));
            }
            clock_ms += 1;
        }
        (played, jb)
    }

    fn frames_of(played: &[Playout]) -> Vec<String> {
        played
            .iter()
            .map(|p| match p {
                Playout::Frame(b, TS) => format!("F{}", u16::from_be_bytes([b[0], b[1]])),
                Playout::Fec(b, TS) => format!("R{}", u16::from_be_bytes([b[0], b[1]]) - 1),
                Playout::Conceal(TS) => "C".into(),
                Playout::Silence(TS) => "-".into(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_steady_stream_plays_in_order_with_one_frame_of_delay() {
        let arrivals: Vec<(u16, u64)> = (0..10).map(|i| (i, u64::from(i) * 20 + 1)).collect();
        let (played, jb) = run(&arrivals, 10);
        assert_eq!(frames_of(&played), ["-", "F0", "F1", "F2", "F3", "F4", "F5", "F6", "F7", "F8"]);
        assert_eq!(jb.stats().concealed_frames, 0);
        assert_eq!(jb.target_delay(), FRAME, "no jitter, no extra delay");
    }

    #[test]
    fn reordered_packets_are_put_back_in_order() {
        let arrivals = [(0, 1), (2, 41), (1, 45), (3, 61), (4, 81)];
        let (played, _) = run(&arrivals, 5);
        assert_eq!(frames_of(&played), ["-", "F0", "F1", "F2", "F3"]);
    }

    #[test]
    fn a_lost_packet_is_recovered_from_the_next_ones_fec() {
        let arrivals = [(0, 1), (1, 21), (3, 61), (4, 81), (5, 101)];
        let (played, jb) = run(&arrivals, 6);
        assert_eq!(frames_of(&played), ["-", "F0", "F1", "R2", "F3", "F4"]);
        assert_eq!(jb.stats().fec_recovered, 1);
        assert_eq!(jb.stats().concealed_frames, 0);
    }

    #[test]
    fn a_burst_loss_is_concealed_then_fec_for_the_last_one() {
        let arrivals = [(0, 1), (1, 21), (5, 101), (6, 121), (7, 141)];
        let (played, jb) = run(&arrivals, 8);
        assert_eq!(frames_of(&played), ["-", "F0", "F1", "C", "C", "R4", "F5", "F6"]);
        assert_eq!(jb.stats().concealed_frames, 2);
        assert_eq!(jb.stats().concealment_events, 1);
    }

    #[test]
    fn a_packet_after_its_frame_was_played_is_late() {
        let arrivals = [(0, 1), (1, 21), (3, 61), (4, 81), (2, 95), (5, 101)];
        let (played, jb) = run(&arrivals, 6);
        assert_eq!(frames_of(&played), ["-", "F0", "F1", "R2", "F3", "F4"]);
        assert_eq!(jb.stats().late, 1);
    }

    #[test]
    fn a_retransmission_teaches_the_buffer_to_wait_for_the_next_one() {
        // Every 20 ms; packets 5, 15 and 25 are lost and resent, arriving 45 ms
        // after the originals would have.
        let mut arrivals: Vec<(u16, u64)> =
            (0..40).filter(|i| ![5, 15, 25].contains(i)).map(|i| (i, u64::from(i) * 20 + 1)).collect();
        arrivals.extend([5, 15, 25].map(|i| (i, u64::from(i) * 20 + 46)));
        let (_, as_ordinary) = run(&arrivals, 40);
        assert!(as_ordinary.jitter() > Duration::from_millis(1), "{:?}", as_ordinary.jitter());
        let (played, jb) = run_with_retransmissions(&arrivals, 40, &[5, 15, 25]);
        // Known as retransmissions, they are no measure of the path's jitter.
        assert!(jb.jitter() < Duration::from_millis(1), "{:?}", jb.jitter());
        let frames = frames_of(&played);
        // The first comes too late: the next packet's FEC stands in for it.
        assert!(frames.contains(&"R5".to_owned()), "{frames:?}");
        // The second is waited for (a frame concealed, which adds the delay the
        // margin asks for) and plays in full; the third is in time without a wait.
        let after_first: Vec<&str> = frames.iter().skip_while(|f| *f != "R5").map(String::as_str).collect();
        assert!(after_first.windows(2).any(|w| w == ["C", "F15"]), "{frames:?}");
        assert!(after_first.windows(2).any(|w| w == ["F24", "F25"]), "{frames:?}");
        assert_eq!(jb.stats().late, 1, "only the first was late");
        // Each came 45 ms after the stream.
        assert_eq!(jb.resend_margin(), Duration::from_millis(45));
        assert_eq!(jb.target_delay(), FRAME + Duration::from_millis(45));
    }

    #[test]
    fn a_retransmission_with_packets_of_two_frames_is_waited_for_and_played_in_full() {
        // 20 ms packets to a 10 ms player; 5 and 15 are lost and resent 45 ms
        // after the stream.
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut jb = JitterBuffer::new(Duration::from_millis(10));
        let (mut queued, mut played) = (0, Vec::new());
        for at in 0..=600u64 {
            let (n, sent) = ((at / 20) as u16, at % 20 == 1);
            if sent && ![5, 15].contains(&n) {
                jb.push(n, u32::from(n) * 960, 960, payload(n), ms(at));
            }
            if at >= 46 && (at - 46) % 20 == 0 && [5, 15].contains(&(((at - 46) / 20) as u16)) {
                let n = ((at - 46) / 20) as u16;
                jb.push_retransmission(n, u32::from(n) * 960, 960, payload(n), ms(at));
            }
            if at % 10 == 0 && at > 0 {
                played.extend(play_frames(&mut jb, 480, &mut queued, ms(at)));
            }
        }
        assert!(played.contains(&Playout::Frame(payload(15), 960)), "{played:?}");
        assert_eq!(jb.stats().discarded, 0, "nothing was trimmed: {played:?}");
    }

    #[test]
    fn retransmissions_too_late_to_wait_for_give_no_margin_and_the_margin_is_forgotten() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(FRAME);
        let at = |i: u32| t0 + FRAME * i + Duration::from_millis(1);
        let push_and_pop = |jb: &mut JitterBuffer, i: u32| {
            let n = i as u16;
            jb.push(n, i * TS, TS, payload(n), at(i));
            jb.pop(at(i + 2));
        };
        // Packets 1, 11 and 13 are lost; 1 comes back 260 ms after the stream.
        push_and_pop(&mut jb, 0);
        (2..11).for_each(|i| push_and_pop(&mut jb, i));
        push_and_pop(&mut jb, 12);
        push_and_pop(&mut jb, 14);
        assert_eq!(jb.push_retransmission(1, TS, TS, payload(1), at(14)), Pushed::Late);
        assert_eq!(jb.resend_margin(), Duration::ZERO, "the typical one is too late to wait for");
        // 11 and 13 come 60 and 20 ms after the stream: the median is worth waiting for.
        jb.push_retransmission(11, 11 * TS, TS, payload(11), at(14));
        jb.push_retransmission(13, 13 * TS, TS, payload(13), at(14));
        assert_eq!(jb.resend_margin(), MAX_RESEND_MARGIN, "nine in ten, at most the cap");
        let quiet = RESEND_MEMORY.as_millis() as u32 / 20 + 2;
        (15..15 + quiet).for_each(|i| push_and_pop(&mut jb, i));
        assert_eq!(jb.resend_margin(), Duration::ZERO);
        assert_eq!(jb.target_delay(), FRAME);
    }

    /// 90 packets every 20 ms with bursts of three lost at 10, 30, 50 and 70;
    /// each burst is asked for when the next packet arrives, and all three come
    /// back `resent_after` ms after it. Plays them; what was played, per frame.
    fn run_with_bursts(resent_after: u64) -> (Vec<String>, JitterBuffer) {
        let bursts = [10u16, 30, 50, 70];
        let lost: Vec<u16> = bursts.iter().flat_map(|&b| b..b + 3).collect();
        let mut arrivals: Vec<(u16, u64)> =
            (0..90).filter(|i| !lost.contains(i)).map(|i| (i, u64::from(i) * 20 + 1)).collect();
        let resent = move |b: u16| (b..b + 3).map(move |i| (i, u64::from(b + 3) * 20 + 1 + resent_after));
        arrivals.extend(bursts.iter().flat_map(|&b| resent(b)));
        let (played, jb) = run_with_retransmissions(&arrivals, 90, &lost);
        (frames_of(&played), jb)
    }

    #[test]
    fn bursts_teach_their_own_margin_and_later_bursts_play_in_full() {
        // Retransmissions 5 ms after the burst: the first 65 ms after the
        // stream, the second 45, the last 25.
        let (frames, jb) = run_with_bursts(5);
        // The first burst: its first two too late without a margin (the last is
        // in time, as an isolated loss's retransmission is).
        let has = |run: &[&str]| frames.windows(run.len()).any(|w| w == run);
        assert!(has(&["F9", "C", "C", "F12"]), "{frames:?}");
        // The first burst teaches 65 and 45 ms (the last packet's 25 counts
        // apart); the second is waited for and plays in full, the later ones
        // play without a wait.
        assert!(has(&["F29", "C", "C", "F30", "F31", "F32"]), "{frames:?}");
        assert!(has(&["F49", "F50", "F51", "F52"]), "{frames:?}");
        assert!(has(&["F69", "F70", "F71", "F72"]), "{frames:?}");
        assert_eq!(jb.resend_margin(), Duration::from_millis(65));
        assert_eq!(jb.target_delay(), FRAME + Duration::from_millis(65));
        assert_eq!(jb.stats().discarded, 0, "nothing was trimmed: {frames:?}");
    }

    #[test]
    fn a_gap_in_the_stream_is_waited_for_once_not_packet_by_packet() {
        // Bursts at 10, 30 and 50 teach a margin (as above); then 500 ms of the
        // stream never comes (70 to 94), and it goes on from 95.
        let lost: Vec<u16> = [10u16, 30, 50].iter().flat_map(|&b| b..b + 3).collect();
        let mut arrivals: Vec<(u16, u64)> = (0..130)
            .filter(|i| !lost.contains(i) && !(70..95).contains(i))
            .map(|i| (i, u64::from(i) * 20 + 1))
            .collect();
        arrivals.extend(lost.iter().map(|&i| (i, u64::from(i - i % 10 + 3) * 20 + 6)));
        let (played, jb) = run_with_retransmissions(&arrivals, 130, &lost);
        let frames = frames_of(&played);
        assert_eq!(jb.resend_margin(), Duration::from_millis(65));
        // One wait at the gap's start (at most four frames), not one per missing
        // packet: the gap's 24 frames and the wait, then the stream plays on
        // from 94 (FEC) without a packet trimmed.
        let at = |frame: &str| frames.iter().position(|f| f == frame).unwrap_or(usize::MAX);
        assert!(at("R94") - at("F69") - 1 <= 24 + 4, "{frames:?}");
        assert!((95..125).all(|i| frames.contains(&format!("F{i}"))), "{frames:?}");
        assert_eq!(jb.stats().discarded, 0, "{frames:?}");
    }

    #[test]
    fn a_burst_retransmission_that_comes_too_late_teaches_nothing() {
        // On a long path the retransmissions come 120 ms after the burst
        // ends: waiting would not pay.
        let (_, jb) = run_with_bursts(120);
        assert_eq!(jb.resend_margin(), Duration::ZERO);
        assert_eq!(jb.target_delay(), FRAME);
    }

    #[test]
    fn the_margin_covers_nine_in_ten_retransmissions() {
        let t0 = Instant::now();
        let ms = |n: u64| Duration::from_millis(n);
        let late = |needed: &[u64]| needed.iter().map(|n| (ms(*n), t0)).collect::<VecDeque<_>>();
        let margin = |needed: &[u64]| margin_for(&late(needed), MAX_RESEND_MARGIN);
        assert_eq!(margin(&[]), Duration::ZERO);
        assert_eq!(margin(&[20, 60]), ms(60), "few: all of them");
        assert_eq!(margin(&[20, 50, 90]), MAX_RESEND_MARGIN, "the slowest, at most the cap");
        assert_eq!(margin(&[20, 90, 100]), Duration::ZERO, "mostly too late: not waited for");
        let mut mostly_quick = vec![20; 18];
        mostly_quick.extend([80, 60]);
        assert_eq!(margin(&mostly_quick), ms(20), "the two slowest of twenty are left out");
        mostly_quick[0] = 40;
        assert_eq!(margin(&mostly_quick), ms(40));
        // Bursts: a longer cap.
        let burst_margin = |needed: &[u64]| margin_for(&late(needed), MAX_BURST_RESEND_MARGIN);
        assert_eq!(burst_margin(&[90]), ms(90), "one is enough");
        assert_eq!(burst_margin(&[50, 90, 150]), MAX_BURST_RESEND_MARGIN, "at most the cap");
        assert_eq!(burst_margin(&[100, 130, 150]), Duration::ZERO, "mostly too late");
    }

    #[test]
    fn a_peer_that_stops_sending_fades_to_silence_without_counting_loss_forever() {
        let arrivals = [(0, 1), (1, 21)];
        let (played, jb) = run(&arrivals, 12);
        assert_eq!(frames_of(&played), ["-", "F0", "F1", "C", "C", "C", "C", "C", "-", "-", "-", "-"]);
        assert_eq!(jb.stats().concealed_frames, 5);
        assert_eq!(jb.stats().concealed_samples, MAX_CONCEALED_RUN, "100 ms");
    }

    #[test]
    fn jitter_raises_the_target_delay_and_calm_lowers_it() {
        // Packets arrive 0 or 40 ms late, alternately.
        let jittery: Vec<(u16, u64)> =
            (0..60).map(|i| (i, u64::from(i) * 20 + if i % 2 == 1 { 40 } else { 0 } + 1)).collect();
        let (_, jb) = run(&jittery, 60);
        assert!(jb.jitter() > Duration::from_millis(20), "{:?}", jb.jitter());
        assert!(jb.target_delay() >= Duration::from_millis(80), "{:?}", jb.target_delay());
        assert!(jb.target_delay() <= MAX_TARGET);
        let calm: Vec<(u16, u64)> = (0..200).map(|i| (i, u64::from(i) * 20 + 1)).collect();
        let (_, jb) = run(&calm, 200);
        assert_eq!(jb.target_delay(), FRAME);
    }

    #[test]
    fn a_sender_whose_clock_is_slower_than_ours_is_played_in_full() {
        // Every 20.2 ms by our clock: 1 % slow, so six seconds drift as far
        // (60 ms) as real clocks 50 ppm apart do in twenty minutes. The buffer
        // runs dry again and again, and each time waits for the packet rather
        // than give it up.
        let arrivals: Vec<(u16, u64)> = (0..300).map(|i| (i, u64::from(i) * 202 / 10 + 1)).collect();
        let (played, jb) = run(&arrivals, 305);
        let frames = frames_of(&played);
        let expected: Vec<String> = (0..300).map(|i| format!("F{i}")).collect();
        let heard: Vec<String> = frames.iter().filter(|f| f.starts_with('F')).cloned().collect();
        assert_eq!(heard, expected, "{frames:?}");
        assert_eq!(jb.stats().late, 0);
        // The waits are short concealments, about one per frame of drift.
        assert!(jb.stats().concealed_frames <= 4, "{frames:?}");
    }

    #[test]
    fn a_backlog_is_trimmed_to_bring_latency_down() {
        // 10 packets at once (a burst after a stall), then a steady stream.
        let mut arrivals: Vec<(u16, u64)> = (0..10).map(|i| (i, 1)).collect();
        arrivals.extend((10..30).map(|i| (i, u64::from(i) * 20 + 1)));
        let (_, jb) = run(&arrivals, 25);
        assert!(jb.stats().discarded > 0);
        assert!(jb.current_delay() <= jb.target_delay() + 2 * FRAME, "{:?}", jb.current_delay());
    }

    #[test]
    fn sequence_numbers_and_timestamps_wrap() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(FRAME);
        let mut played = Vec::new();
        for i in 0..6u16 {
            let seq = 65533u16.wrapping_add(i);
            let ts = (u32::MAX - 2 * TS).wrapping_add(u32::from(i) * TS);
            assert_eq!(jb.push(seq, ts, TS, payload(i), t0 + FRAME * u32::from(i)), Pushed::Accepted);
            played.push(jb.pop(t0 + FRAME * (u32::from(i) + 1)));
        }
        assert_eq!(frames_of(&played), ["F0", "F1", "F2", "F3", "F4", "F5"]);
    }

    #[test]
    fn a_stream_back_after_a_long_silence_starts_afresh() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(FRAME);
        assert_eq!(jb.push(100, 960, TS, payload(0), t0), Pushed::Accepted);
        assert_eq!(jb.pop(t0 + FRAME), Playout::Frame(payload(0), TS));
        // Minutes on hold: the sequence number moved by more than half its range.
        let back = t0 + Duration::from_secs(600);
        assert_eq!(jb.push(100u16.wrapping_sub(1000), 5_000_000, TS, payload(1), back), Pushed::Accepted);
        assert_eq!(jb.pop(back + FRAME), Playout::Frame(payload(1), TS));
    }

    /// A player of `frame` samples: asks until it has a frame, as the play pump
    /// does; returns what it was told, per frame.
    fn play_frames(jb: &mut JitterBuffer, frame: u32, queued: &mut u32, now: Instant) -> Vec<Playout> {
        let mut told = Vec::new();
        while *queued < frame {
            let playout = jb.pop(now);
            *queued += playout.samples();
            told.push(playout);
        }
        *queued -= frame;
        told
    }

    #[test]
    fn packets_longer_or_shorter_than_the_players_frame_all_play() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // 20 ms packets to a 10 ms player: one packet every other frame.
        let mut jb = JitterBuffer::new(Duration::from_millis(10));
        let mut queued = 0;
        let mut played = Vec::new();
        for i in 0..40u16 {
            let at = u64::from(i) * 10;
            if i % 2 == 0 {
                let n = i / 2;
                assert_eq!(jb.push(n, u32::from(n) * 960, 960, payload(n), ms(at)), Pushed::Accepted);
            }
            played.extend(play_frames(&mut jb, 480, &mut queued, ms(at + 10)));
        }
        let frames: Vec<_> = played.iter().filter(|p| matches!(p, Playout::Frame(_, 960))).collect();
        assert_eq!(frames.len(), 20, "{played:?}");
        assert_eq!(jb.stats().concealed_frames, 0);

        // 10 ms packets to a 20 ms player: two a frame.
        let mut jb = JitterBuffer::new(FRAME);
        let mut queued = 0;
        let mut played = Vec::new();
        for i in 0..40u16 {
            jb.push(i, u32::from(i) * 480, 480, payload(i), ms(u64::from(i) * 10));
            if i % 2 == 1 {
                played.extend(play_frames(&mut jb, 960, &mut queued, ms(u64::from(i) * 10 + 10)));
            }
        }
        let frames = played.iter().filter(|p| matches!(p, Playout::Frame(_, 480))).count();
        assert_eq!(frames, 40, "{played:?}");
        assert_eq!(jb.stats().concealed_frames, 0);
    }

    #[test]
    fn a_lost_long_packet_is_concealed_or_recovered_for_its_own_length() {
        // 40 ms packets to a 20 ms player, each arriving on time; packets 1, 3
        // and 4 are lost.
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(FRAME);
        let mut queued = 0;
        let mut told = Vec::new();
        for ms in 0..=300u64 {
            if ms % 40 == 1 && [0, 2, 5, 6].contains(&(ms / 40)) {
                let n = (ms / 40) as u16;
                jb.push(n, u32::from(n) * 1920, 1920, payload(n), t0 + Duration::from_millis(ms));
            }
            if ms % 20 == 0 && ms > 0 {
                told.extend(play_frames(&mut jb, 960, &mut queued, t0 + Duration::from_millis(ms)));
            }
        }
        // The buffer holds a whole packet, so the next one's FEC is there in time.
        assert_eq!(jb.target_delay(), Duration::from_millis(40));
        assert_eq!(
            told,
            [
                Playout::Silence(960),
                Playout::Silence(960),
                Playout::Frame(payload(0), 1920),
                Playout::Fec(payload(2), 1920),
                Playout::Frame(payload(2), 1920),
                Playout::Conceal(1920),
                Playout::Fec(payload(5), 1920),
                Playout::Frame(payload(5), 1920),
                Playout::Frame(payload(6), 1920),
            ]
        );
    }

    #[test]
    fn a_stream_that_pauses_and_resumes_plays_on() {
        // Three packets, then 300 ms with nothing (DTX, a stalled sender), then
        // the stream goes on where the sender's clock is.
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(FRAME);
        for n in 0..3u16 {
            jb.push(n, u32::from(n) * TS, TS, payload(n), t0 + FRAME * u32::from(n));
        }
        let mut told: Vec<Playout> = (1..=18).map(|n| jb.pop(t0 + FRAME * n)).collect();
        assert_eq!(jb.push(3, 18 * TS, TS, payload(3), t0 + FRAME * 18), Pushed::Accepted);
        told.extend((19..=22).map(|n| jb.pop(t0 + FRAME * n)));
        assert!(told.contains(&Playout::Frame(payload(3), TS)), "{told:?}");
        assert_eq!(told.iter().filter(|p| matches!(p, Playout::Frame(..))).count(), 4);
    }

    #[test]
    fn a_gap_shorter_than_an_opus_frame_is_silence_and_the_next_packet_plays() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(FRAME);
        jb.push(0, 0, 960, payload(0), t0);
        // The next packet starts 1000 samples later: 40 off the 2.5 ms grid.
        jb.push(2, 1000, 960, payload(2), t0);
        let later = t0 + FRAME * 10;
        assert_eq!(jb.pop(later), Playout::Frame(payload(0), 960));
        assert_eq!(jb.pop(later), Playout::Silence(40));
        assert_eq!(jb.pop(later), Playout::Frame(payload(2), 960));
    }

    #[test]
    fn a_packet_of_no_legal_opus_length_is_discarded() {
        let mut jb = JitterBuffer::new(FRAME);
        assert_eq!(jb.push(1, 0, 0, payload(0), Instant::now()), Pushed::Discarded);
        assert_eq!(jb.push(1, 0, MAX_PACKET_SAMPLES + 1, payload(0), Instant::now()), Pushed::Discarded);
        assert_eq!(jb.push(1, 0, MAX_PACKET_SAMPLES, payload(0), Instant::now()), Pushed::Accepted);
    }

    #[test]
    fn the_buffer_remembers_which_packets_came_and_garbage_does_not_disturb_it() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(FRAME);
        for i in [0u16, 1, 3, 130] {
            jb.push(100 + i, u32::from(i) * TS, TS, payload(i), t0);
        }
        // Unwrapped, the first sequence number is 65536 + 100.
        let seq = |i: u64| 65636 + i;
        assert!(jb.was_received(seq(130)) && jb.was_received(seq(3)));
        assert!(!jb.was_received(seq(4)) && !jb.was_received(seq(129)) && !jb.was_received(seq(131)));
        assert!(!jb.was_received(seq(1)), "beyond the window is not known");
        assert_eq!(jb.push(100 + 20_000, 10_000_000, TS, payload(9), t0), Pushed::Discarded);
        // A timestamp far behind is late, and garbage as well.
        assert_eq!(jb.push(100 + 20_000, 4_000_000_000, TS, payload(9), t0), Pushed::Late);
        assert!(jb.was_received(seq(130)) && jb.was_received(seq(3)), "garbage moved nothing");
    }

    #[test]
    fn duplicates_and_garbage_are_dropped() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(FRAME);
        assert_eq!(jb.push(1, 960, TS, payload(0), t0), Pushed::Accepted);
        assert_eq!(jb.push(2, 1920, TS, payload(1), t0), Pushed::Accepted);
        assert_eq!(jb.push(2, 1920, TS, payload(1), t0), Pushed::Duplicate);
        assert_eq!(jb.push(3, 960 + 10_000_000, TS, payload(2), t0), Pushed::Discarded);
        assert_eq!(jb.stats().discarded, 2);
    }
}
