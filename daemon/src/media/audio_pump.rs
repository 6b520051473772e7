//! The two tasks that move a call's audio, one frame per frame period: the sender
//! (endpoint → Opus → RTP) and the player (RTP → jitter buffer → Opus →
//! endpoint). Each takes the time from its own tick, so both run on tokio's
//! clock (paused in tests) and never read the wall clock. An echo call hands
//! what the player heard to the sender through a lock-free ring.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::warn;
use voicelink_core::audio_math::{samples_per_frame, scale_into};
use voicelink_core::encoder_policy::{ExpectedLoss, TargetBitrate};
use voicelink_core::jitter_buffer::{JitterBuffer, MAX_PACKET_SAMPLES, Playout};
use voicelink_core::reload::LiveSettings;
use voicelink_core::stats::level_dbfs;
use voicelink_core::stats::meter::PlayoutStats;
use voicelink_core::voice_processing::{ProcessingChange, ProcessingChoice, ProcessingStats, VoiceProcessor};

use super::peer_connection::{OutboundTrack, ReceivedPacket};
use super::recording::RecordingTap;
use super::rtcp_monitor::SharedView;
use super::session::opus_bitrate;
use crate::audio::endpoints::{EchoFeed, EchoReference, NullSink, Sink, Source};

/// Whether audio may flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gates {
    /// Send captured audio.
    pub send: bool,
    /// Play received audio.
    pub play: bool,
    /// What is played reaches the output (the speaker is not muted); a
    /// recording takes it either way.
    pub speaker: bool,
}

impl Default for Gates {
    /// Closed until the call says otherwise; the speaker is not muted.
    fn default() -> Self {
        Gates { send: false, play: false, speaker: true }
    }
}

/// What both pumps watch: the gates, and whether media is connected. Dropping
/// the senders stops the pumps.
#[derive(Clone)]
pub struct PumpControl {
    /// The call's audio gates.
    pub gates: watch::Receiver<Gates>,
    /// Media is connected.
    pub connected: watch::Receiver<bool>,
}

impl PumpControl {
    /// Waits until media is connected; false if the call ended first.
    async fn started(&mut self) -> bool {
        self.connected.wait_for(|connected| *connected).await.is_ok()
    }

    /// The call went away (or media disconnected for good).
    fn stopped(&self) -> bool {
        !*self.connected.borrow() || self.gates.has_changed().is_err()
    }
}

fn frame_ticker(frame: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(frame);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    tick
}

/// How often the sender looks for a new receiver report from the peer.
const LOSS_CHECK: Duration = Duration::from_millis(500);
/// How often, per frame, the sender looks whether a microphone has a frame
/// ready: a frame waits at most a quarter of its length to be sent.
const POLLS_PER_FRAME: u32 = 4;

/// How long the sender waits for a late microphone before it sends silence in
/// its place (a stream that stalls, or starts slowly, or died).
const STALL_FRAMES: u32 = 3;

/// When the sender takes its next frame. A source paced by its device (a
/// microphone) is taken from whenever a frame's worth has arrived, so the sender
/// runs on the device's clock: the drift between the two clocks never becomes a
/// shortage (gaps) or a backlog (latency), and nothing is resampled under the
/// echo canceller. Any other source, or a device [`STALL_FRAMES`] late, is taken
/// from once per frame period of the sender's clock (catching up after a
/// stall): the stream to the peer never stops.
struct SendClock {
    frame: Duration,
    /// When the next frame is due by the sender's clock.
    next: Instant,
}

impl SendClock {
    fn new(frame: Duration, now: Instant) -> Self {
        SendClock { frame, next: now }
    }

    /// Whether a frame is to be taken now, given the samples the source has
    /// ready (`None`: it has no pace of its own).
    fn due(&mut self, now: Instant, ready: Option<usize>, frame_samples: usize) -> bool {
        match ready {
            Some(ready) if ready >= frame_samples => {
                self.next = now + self.frame;
                true
            }
            // A device a little late: wait for it.
            Some(_) if now < self.next + self.frame * STALL_FRAMES => false,
            _ if now >= self.next => {
                self.next += self.frame;
                true
            }
            _ => false,
        }
    }
}

/// The sender's voice processing (a microphone's only): echo cancellation, noise
/// suppression and gain control, with what the speaker played as the echo
/// reference and the config saying which stages run.
pub struct CaptureProcessing {
    processor: VoiceProcessor,
    /// None when the output is no sound card: nothing is played in the room.
    far_end: Option<Box<dyn EchoReference>>,
    /// The call's own choice, for the stages it names.
    call_choice: watch::Receiver<ProcessingChange>,
    settings: watch::Receiver<LiveSettings>,
}

impl CaptureProcessing {
    /// Processing that follows the call's choice, else `settings` (both live),
    /// with the output's `far_end`.
    pub fn new(
        far_end: Option<Box<dyn EchoReference>>,
        call_choice: watch::Receiver<ProcessingChange>,
        settings: watch::Receiver<LiveSettings>,
    ) -> Self {
        let choice = call_choice.borrow().applied_to(settings.borrow().processing);
        CaptureProcessing { processor: VoiceProcessor::new(choice), far_end, call_choice, settings }
    }

    fn choice(&self) -> ProcessingChoice {
        self.call_choice.borrow().applied_to(self.settings.borrow().processing)
    }

    /// Cleans one captured frame, after handing over what was played since the last.
    fn process(&mut self, pcm: &mut [i16]) {
        self.processor.set_choice(self.choice());
        let processor = &mut self.processor;
        if let Some(far_end) = self.far_end.as_mut() {
            far_end.drain(&mut |played| processor.far_end(played));
        }
        processor.near_end(pcm);
    }
}

/// A microphone with its voice processing: every frame read is cleaned, muted
/// or not, so the echo canceller stays converged. Processed once, before the
/// conference bridge hands the frames to each leg.
pub struct ProcessedSource {
    /// The microphone.
    pub source: Box<dyn Source>,
    /// Its processing.
    pub processing: CaptureProcessing,
}

impl Source for ProcessedSource {
    fn fill(&mut self, frame: &mut [i16]) {
        self.source.fill(frame);
        self.processing.process(frame);
    }

    fn ready_samples(&mut self) -> Option<usize> {
        self.source.ready_samples()
    }
}

impl Drop for ProcessedSource {
    fn drop(&mut self) {
        let ProcessingStats { erle_db, echo_delay_ms } = self.processing.processor.stats();
        let choice = self.processing.processor.choice();
        tracing::debug!(?erle_db, ?echo_delay_ms, ?choice, "voice processing at the end of the call");
    }
}

/// The sending half: the encoder, where frames go, and where their level is shown.
pub struct SendPump {
    /// Encodes each frame.
    pub encoder: opus::Encoder,
    /// Where encoded frames go.
    pub track: OutboundTrack,
    /// The level of what is sent, every frame.
    pub level: watch::Sender<f64>,
    /// The frame length.
    pub frame: Duration,
    /// What RTCP says, including the peer's reports on what it hears of us.
    pub rtcp: SharedView,
    /// The bitrate policy, fed those reports.
    pub bitrate: TargetBitrate,
    /// Where the encoder's target bitrate is shown.
    pub target_bitrate: watch::Sender<u32>,
    /// Where a recording takes what is sent.
    pub recording: RecordingTap,
}

impl SendPump {
    /// Every frame (see [`SendClock`]): read the source, and if the send gate is
    /// open, encode and send.
    pub async fn run(self, mut source: Box<dyn Source>, mut control: PumpControl) {
        if !control.started().await {
            return;
        }
        let SendPump { encoder, track, level, frame, rtcp, mut bitrate, target_bitrate, recording } = self;
        let mut coder = FrameCoder {
            encoder,
            level,
            recording,
            pcm: vec![0i16; samples_per_frame(frame)],
            packet: vec![0u8; 1500],
        };
        let mut poll = tokio::time::interval(frame / POLLS_PER_FRAME);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut loss = ExpectedLoss::default();
        let mut last_report = None;
        let mut last_round_trip = None;
        // Packets sent and asked for again at the last report.
        let mut counted_at_report = (0u64, 0u64);
        let mut next_loss_check = crate::clock::now();
        let mut clock = SendClock::new(frame, next_loss_check);
        loop {
            let now = poll.tick().await.into_std();
            if control.stopped() {
                break;
            }
            if now >= next_loss_check {
                next_loss_check = now + LOSS_CHECK;
                let view = *rtcp.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let report = view.remote;
                if report.is_some() && report != last_report {
                    last_report = report;
                    let before = loss.percent();
                    // The report counts what retransmission repaired as received;
                    // the requests say what the path lost, which FEC is for.
                    let (sent, requested) = (view.packets_sent, view.packets_requested);
                    let lost_before_repair = requested.saturating_sub(counted_at_report.1) as f64
                        / sent.saturating_sub(counted_at_report.0).max(1) as f64;
                    counted_at_report = (sent, requested);
                    loss.report(report.map_or(0.0, |r| r.fraction_lost).max(lost_before_repair));
                    if loss.percent() != before && coder.encoder.set_packet_loss_perc(loss.percent()).is_err() {
                        tracing::debug!(percent = loss.percent(), "the encoder refused an expected loss");
                    }
                    // A peer that never asked for a retransmission does not repair:
                    // its loss is not what is left after repair.
                    let repairs = view.packets_requested > 0;
                    let lost = report.map(|r| r.fraction_lost).filter(|_| repairs);
                    // The view keeps the last round trip; only a new one is news.
                    let round_trip = view.round_trip.filter(|rtt| last_round_trip != Some(*rtt));
                    last_round_trip = view.round_trip;
                    bitrate.report(now, lost, round_trip);
                    let bps = bitrate.bps();
                    if bps != *target_bitrate.borrow() {
                        match coder.encoder.set_bitrate(opus_bitrate(bps)) {
                            Ok(()) => {
                                tracing::debug!(bps, "target bitrate");
                                target_bitrate.send_replace(bps);
                            }
                            Err(error) => tracing::debug!(bps, %error, "the encoder refused a bitrate"),
                        }
                    }
                }
            }
            while clock.due(now, source.ready_samples(), coder.pcm.len()) {
                let send = control.gates.borrow().send;
                if let Some(payload) = coder.next(source.as_mut(), send) {
                    track.send(payload, frame, now).await;
                }
            }
        }
    }
}

/// One frame from source to Opus: the send gate, the level and the recording
/// on the way.
struct FrameCoder {
    encoder: opus::Encoder,
    level: watch::Sender<f64>,
    recording: RecordingTap,
    pcm: Vec<i16>,
    packet: Vec<u8>,
}

impl FrameCoder {
    /// Takes the source's next frame and encodes it (silence unless `send`).
    fn next(&mut self, source: &mut dyn Source, send: bool) -> Option<&[u8]> {
        // The source advances in real time whether or not we send (a file
        // keeps playing while muted, like a live microphone).
        source.fill(&mut self.pcm);
        // A closed gate sends silence rather than nothing: Opus codes it in a
        // few bytes, and the stream stays continuous, so the peer's RTCP does
        // not count a mute as lost packets.
        if !send {
            self.pcm.fill(0);
        }
        self.level.send_replace(level_dbfs(&self.pcm));
        self.recording.sent(&self.pcm);
        let len = self.encoder.encode(&self.pcm, &mut self.packet).ok()?;
        Some(&self.packet[..len])
    }
}

/// The playing half: the decoder, where its numbers are shown, and the echo
/// ring when the call echoes.
pub struct PlayPump {
    /// Decodes each frame.
    pub decoder: opus::Decoder,
    /// What the player publishes every frame.
    pub stats: watch::Sender<PlayoutStats>,
    /// Where an echo call's heard audio goes.
    pub echo: Option<EchoFeed>,
    /// The frame length.
    pub frame: Duration,
    /// Where a recording takes what is played.
    pub recording: RecordingTap,
    /// The config in force, for its output volume (read every frame).
    pub settings: watch::Receiver<LiveSettings>,
}

impl PlayPump {
    /// Every frame: take what arrived, run the jitter buffer, decode, and hand the
    /// frame to the output (silence while the play gate is closed). Packets may
    /// be longer or shorter than our frame: what they decode to queues up, and
    /// the buffer is asked again until a frame's worth is there.
    pub async fn run(
        self,
        mut packets: mpsc::Receiver<ReceivedPacket>,
        mut output: Box<dyn Sink>,
        mut control: PumpControl,
    ) {
        if !control.started().await {
            let _ = output.finish();
            return;
        }
        let PlayPump { mut decoder, stats, mut echo, frame, recording, settings } = self;
        let mut jitter = JitterBuffer::new(frame);
        let samples = samples_per_frame(frame);
        let mut pcm = vec![0i16; MAX_PACKET_SAMPLES as usize];
        let mut queued: VecDeque<i16> = VecDeque::with_capacity(pcm.len() + samples);
        let mut frame_pcm = vec![0i16; samples];
        let mut speaker_pcm = vec![0i16; samples];
        let silence = vec![0i16; samples];
        let mut tick = frame_ticker(frame);
        loop {
            let now = tick.tick().await.into_std();
            if control.stopped() {
                break;
            }
            while let Ok(packet) = packets.try_recv() {
                // Not a valid Opus packet: it plays as lost.
                if let Ok(length) = opus::packet::get_nb_samples(&packet.payload, 48_000) {
                    let length = u32::try_from(length).unwrap_or(u32::MAX);
                    let push = if packet.resent { JitterBuffer::push_retransmission } else { JitterBuffer::push };
                    push(&mut jitter, packet.sequence, packet.timestamp, length, packet.payload, packet.arrival);
                }
            }
            while queued.len() < samples {
                let playout = jitter.pop(now);
                let out = &mut pcm[..playout.samples() as usize];
                let decoded = match &playout {
                    Playout::Frame(payload, _) => decoder.decode(payload, out, false),
                    Playout::Fec(next, _) => decoder.decode(next, out, true),
                    Playout::Conceal(_) => decoder.decode(&[], out, false),
                    Playout::Silence(_) => Ok(0),
                };
                match decoded {
                    Ok(n) if n == out.len() => queued.extend(out.iter()),
                    _ => queued.extend(std::iter::repeat_n(0, out.len())),
                }
            }
            frame_pcm.iter_mut().zip(queued.drain(..samples)).for_each(|(to, from)| *to = from);
            let gates = *control.gates.borrow();
            let heard = if gates.play { &frame_pcm[..] } else { &silence[..] };
            stats.send_replace(PlayoutStats {
                jitter: jitter.stats(),
                current_delay: jitter.current_delay(),
                target_delay: jitter.target_delay(),
                level_dbfs: level_dbfs(heard),
                samples_per_frame: samples as u64,
            });
            if let Some(echo) = echo.as_mut() {
                echo.push(heard);
            }
            recording.heard(heard);
            // The speaker's mute and volume change only what the output gets.
            let volume = settings.borrow().output_volume;
            let to_speaker = match (gates.speaker, volume) {
                (false, _) | (_, 0) => &silence[..],
                (true, 100) => heard,
                (true, percent) => {
                    scale_into(heard, percent, &mut speaker_pcm);
                    &speaker_pcm[..]
                }
            };
            if let Err(error) = output.write(to_speaker) {
                warn!(%error, "the audio output failed; the call goes on without it");
                output = Box::new(NullSink);
            }
        }
        if let Err(error) = output.finish() {
            warn!(%error, "cannot complete the audio output");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_millis(20);
    const FRAME_SAMPLES: usize = 960;

    /// Ten minutes of a microphone whose clock runs `ppm` parts per million off
    /// ours, delivering 20 ms periods, polled as the sender polls: what the
    /// sender took (frames) and the most that ever waited for it (samples).
    fn ten_minutes_of_a_microphone(ppm: f64) -> (usize, usize, usize) {
        let start = Instant::now();
        let poll = FRAME / POLLS_PER_FRAME;
        let period = FRAME.as_secs_f64() / (1.0 + ppm / 1e6);
        let mut clock = SendClock::new(FRAME, start);
        let (mut taken, mut most_waiting) = (0usize, 0usize);
        let mut delivered = 0;
        for step in 0..(600.0 / poll.as_secs_f64()) as u32 {
            let elapsed = poll * step;
            delivered = (elapsed.as_secs_f64() / period) as usize * FRAME_SAMPLES;
            most_waiting = most_waiting.max(delivered - taken);
            while clock.due(start + elapsed, Some(delivered - taken), FRAME_SAMPLES) {
                assert!(delivered - taken >= FRAME_SAMPLES, "a frame is only taken whole");
                taken += FRAME_SAMPLES;
            }
        }
        (taken / FRAME_SAMPLES, delivered / FRAME_SAMPLES, most_waiting)
    }

    #[test]
    fn a_microphone_off_our_clock_by_a_thousandth_neither_runs_dry_nor_piles_up() {
        for ppm in [-1000.0, 0.0, 1000.0] {
            let (sent, delivered, most_waiting) = ten_minutes_of_a_microphone(ppm);
            // Every frame the device made went out, and none that it did not:
            // no gap filled with silence, nothing dropped.
            assert!(delivered - sent <= 1, "{ppm} ppm: {sent} frames sent of {delivered}");
            // Nothing waits longer than a period and a poll: latency does not grow.
            assert!(most_waiting < 2 * FRAME_SAMPLES, "{ppm} ppm: {most_waiting} samples waited");
        }
        // A sender on its own clock would have sent 30,000 frames whatever the
        // device did: 30 short of a fast one over ten minutes (or 30 frames of
        // silence more than a slow one made).
        let (sent, _, _) = ten_minutes_of_a_microphone(1000.0);
        assert!(sent >= 30_029, "{sent}");
    }

    #[test]
    fn a_source_without_a_pace_gets_a_frame_per_period_and_catches_up_after_a_stall() {
        let start = Instant::now();
        let mut clock = SendClock::new(FRAME, start);
        let frames_at = |clock: &mut SendClock, at: Duration| {
            std::iter::from_fn(|| clock.due(start + at, None, FRAME_SAMPLES).then_some(())).count()
        };
        assert_eq!(frames_at(&mut clock, Duration::ZERO), 1);
        assert_eq!(frames_at(&mut clock, Duration::from_millis(5)), 0);
        assert_eq!(frames_at(&mut clock, Duration::from_millis(20)), 1);
        // A stall of 100 ms: the five frames it missed go at once.
        assert_eq!(frames_at(&mut clock, Duration::from_millis(120)), 5);
        // A device that appears takes over; one that goes hands back a frame later.
        assert!(clock.due(start + Duration::from_millis(125), Some(FRAME_SAMPLES), FRAME_SAMPLES));
        assert_eq!(frames_at(&mut clock, Duration::from_millis(130)), 0);
        assert_eq!(frames_at(&mut clock, Duration::from_millis(145)), 1);
    }

    #[test]
    fn a_microphone_that_stalls_is_replaced_by_the_senders_clock_until_it_is_back() {
        let start = Instant::now();
        let mut clock = SendClock::new(FRAME, start);
        let poll = FRAME / POLLS_PER_FRAME;
        // The device delivers nothing for a second (a stream starting, or dead).
        let mut taken = 0;
        for step in 0..(1000 / poll.as_millis() as u32) {
            while clock.due(start + poll * step, Some(0), FRAME_SAMPLES) {
                taken += 1;
            }
        }
        // Fifty frames in a second, less the wait for a late device.
        assert!((44..=50).contains(&taken), "{taken} frames of silence in a second");
        // Back: frames go as it delivers them.
        assert!(clock.due(start + Duration::from_secs(1), Some(FRAME_SAMPLES), FRAME_SAMPLES));
        assert!(!clock.due(start + Duration::from_millis(1005), Some(0), FRAME_SAMPLES));
    }
}
