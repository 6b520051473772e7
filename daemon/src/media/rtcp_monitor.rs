//! What RTCP says about a call, read off the wire: an interceptor that watches
//! every RTP and RTCP packet go by and keeps the numbers the stats feed needs.
//!
//! webrtc-rs computes no RTCP round-trip time (its remote-inbound stats stay
//! empty), so this follows RFC 3550 §6.4.1 itself: each sender report we send is
//! remembered by its compact NTP time, and a receiver report that names it (LSR)
//! gives `RTT = arrival - sent - DLSR`. Measuring both ends on our own monotonic
//! clock keeps wall-clock steps out of it.
//!
//! Our interarrival jitter is computed here too (RFC 3550 §6.4.1 and A.8): the
//! receiver-report interceptor's own figure does not wrap RTP timestamps and
//! jumps for seconds when they roll over.
//!
//! Retransmissions (RFC 4585 generic NACK) are counted from the requests: the
//! packets of ours the peer asked for again (what it lost before repair), and
//! the packets of the peer's we asked for that then arrived (repaired).
//!
//! The interceptor sits next to the wire, so it sees every inbound packet before
//! any other interceptor consumes it and every outbound one after all of them
//! produced theirs. It only observes: packets pass through unchanged.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc::interceptor::{Attribute, AttributedPacket, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio;
use rtc::shared::error::Error;
pub use voicelink_core::stats::{Reception, RtcpView};

/// Where the monitor sits in the interceptor chain: closer to the wire than
/// every built-in interceptor (the nearest is congestion control at 1 000).
pub const MONITOR_SLOT: usize = 500;

/// How many of our sender reports are remembered for matching (one a second).
const REMEMBERED_REPORTS: usize = 16;

/// How many requested sequence numbers are remembered, each way: far more than
/// a second of packets, so a request repeated for the same packet counts once.
const REMEMBERED_REQUESTS: usize = 256;
/// How long a packet we asked for may take to come and still count as
/// repaired: far beyond any wait for it, and far short of the 16-bit sequence
/// number coming round again.
const ANSWER_WAIT: Duration = Duration::from_secs(1);

/// How many arrived retransmissions wait for the track reader to claim them.
const REMEMBERED_RETRANSMISSIONS: usize = 64;

/// Sequence numbers of retransmissions that arrived (packets we asked for
/// again), for the track reader to mark: a retransmission is late by design, so
/// it says nothing about the path's jitter. Shared by the monitor, which sees
/// the packet first, and the reader.
#[derive(Clone, Default)]
pub struct Retransmitted(Arc<Mutex<VecDeque<u16>>>);

impl Retransmitted {
    fn arrived(&self, seq: u16) {
        let mut arrived = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        remember(&mut arrived, seq, REMEMBERED_RETRANSMISSIONS, |s| *s == seq);
    }

    /// Whether the packet `seq` that just arrived is a retransmission.
    pub fn take(&self, seq: u16) -> bool {
        let mut arrived = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        arrived.iter().position(|s| *s == seq).and_then(|at| arrived.remove(at)).is_some()
    }
}

/// The numbers, shared between the interceptor (inside the WebRTC stack) and
/// the media session that samples them.
pub type SharedView = Arc<Mutex<RtcpView>>;

/// Watches packets; see the module documentation.
pub struct RtcpMonitor {
    view: SharedView,
    retransmitted: Retransmitted,
    clock_rate: u32,
    /// Our media SSRC: reports about other streams are not about us.
    local_ssrc: Option<u32>,
    /// The peer's media SSRC: our reports about other streams are not what we hear.
    remote_ssrc: Option<u32>,
    /// The previous RTP packet's arrival and timestamp, and the running jitter
    /// in timestamp units.
    jitter: Option<(Instant, u32, f64)>,
    /// Our recent sender reports: compact NTP time and when they left.
    sent_reports: VecDeque<(u32, Instant)>,
    /// Sequence numbers of ours the peer asked for again, lately.
    requested_of_us: VecDeque<u16>,
    /// Sequence numbers of the peer's we asked for and have not received, with
    /// when we first asked.
    requested_by_us: VecDeque<(u16, Instant)>,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl RtcpMonitor {
    /// A monitor for a stream at `clock_rate` Hz that publishes into `view`
    /// and marks the retransmissions that arrive in `retransmitted`.
    pub fn new(view: SharedView, clock_rate: u32, retransmitted: Retransmitted) -> Self {
        RtcpMonitor {
            view,
            retransmitted,
            clock_rate,
            local_ssrc: None,
            remote_ssrc: None,
            jitter: None,
            sent_reports: VecDeque::new(),
            requested_of_us: VecDeque::new(),
            requested_by_us: VecDeque::new(),
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
        }
    }

    fn update(&self, change: impl FnOnce(&mut RtcpView)) {
        // A poisoned lock only means a panic elsewhere; the numbers are still usable.
        let mut view = self.view.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut view);
    }

    fn reception(&self, report: &ReceptionReport) -> Reception {
        Reception {
            fraction_lost: f64::from(report.fraction_lost) / 256.0,
            cumulative_lost: signed_24(report.total_lost),
            highest_sequence: report.last_sequence_number,
            jitter: Duration::from_secs_f64(f64::from(report.jitter) / f64::from(self.clock_rate.max(1))),
        }
    }

    /// A packet we are sending.
    fn outbound(&mut self, packet: &AttributedPacket, now: Instant) {
        match &packet.packet {
            // What the peer asked for again is counted from its requests.
            Packet::Rtp(_) if packet.has(&Attribute::Retransmission) => {}
            Packet::Rtp(rtp) => self.update(|view| {
                view.packets_sent += 1;
                view.bytes_sent += rtp.payload.len() as u64;
            }),
            Packet::Rtcp(packets) => {
                for packet in packets {
                    if let Some(sender_report) = packet.as_any().downcast_ref::<SenderReport>() {
                        if self.sent_reports.len() == REMEMBERED_REPORTS {
                            self.sent_reports.pop_front();
                        }
                        self.sent_reports.push_back((compact_ntp(sender_report.ntp_time), now));
                    }
                    if let Some(nack) = nack_about(packet.as_ref(), self.remote_ssrc) {
                        self.forget_unanswered(now);
                        for seq in nack.nacks.iter().flat_map(|pair| pair.packet_list()) {
                            remember(&mut self.requested_by_us, (seq, now), REMEMBERED_REQUESTS, |(s, _)| *s == seq);
                        }
                        continue;
                    }
                    let Some(blocks) = reception_blocks(packet.as_ref()) else { continue };
                    let theirs = blocks.iter().find(|block| self.remote_ssrc.is_none_or(|ssrc| block.ssrc == ssrc));
                    if let Some(block) = theirs {
                        let reception = self.reception(block);
                        self.update(|view| view.local = Some(reception));
                    }
                }
            }
            _ => {}
        }
    }

    /// A packet we received.
    fn inbound(&mut self, packet: &Packet, now: Instant) {
        match packet {
            Packet::Rtp(rtp) => {
                let seq = rtp.header.sequence_number;
                self.forget_unanswered(now);
                let repaired = match self.requested_by_us.iter().position(|(asked, _)| *asked == seq) {
                    Some(at) => self.requested_by_us.remove(at).is_some(),
                    None => false,
                };
                // A retransmission is late by design: not the path's jitter.
                let jitter = if repaired {
                    self.retransmitted.arrived(seq);
                    None
                } else {
                    Some(self.interarrival_jitter(rtp.header.timestamp, now))
                };
                self.update(|view| {
                    view.packets_received += 1;
                    view.bytes_received += rtp.payload.len() as u64;
                    view.jitter = jitter.unwrap_or(view.jitter);
                    view.packets_repaired += u64::from(repaired);
                });
            }
            Packet::Rtcp(packets) => {
                for packet in packets {
                    if let Some(nack) = nack_about(packet.as_ref(), self.local_ssrc) {
                        let asked = nack.nacks.iter().flat_map(|pair| pair.packet_list());
                        let new = asked
                            .filter(|&seq| remember(&mut self.requested_of_us, seq, REMEMBERED_REQUESTS, |s| *s == seq))
                            .count() as u64;
                        self.update(|view| view.packets_requested += new);
                        continue;
                    }
                    let Some(blocks) = reception_blocks(packet.as_ref()) else { continue };
                    let ours = blocks.iter().find(|block| self.local_ssrc.is_none_or(|ssrc| block.ssrc == ssrc));
                    if let Some(block) = ours {
                        let reception = self.reception(block);
                        let round_trip = self.round_trip(block, now);
                        self.update(|view| {
                            view.remote = Some(reception);
                            if round_trip.is_some() {
                                view.round_trip = round_trip;
                            }
                        });
                    }
                }
            }
            _ => {}
        }
    }

    /// A request not answered within [`ANSWER_WAIT`] never will be (and its
    /// sequence number may come round again). Oldest first, so from the front.
    fn forget_unanswered(&mut self, now: Instant) {
        while self
            .requested_by_us
            .front()
            .is_some_and(|(_, asked)| now.saturating_duration_since(*asked) >= ANSWER_WAIT)
        {
            self.requested_by_us.pop_front();
        }
    }

    /// RFC 3550 §6.4.1 interarrival jitter after a packet with this timestamp
    /// arrived: the smoothed difference between how far apart packets arrived
    /// and how far apart they were sent, with wrap-safe timestamps.
    fn interarrival_jitter(&mut self, timestamp: u32, now: Instant) -> Duration {
        let rate = f64::from(self.clock_rate.max(1));
        let jitter = match self.jitter {
            None => 0.0,
            Some((arrived, sent, jitter)) => {
                let arrival_gap = now.saturating_duration_since(arrived).as_secs_f64() * rate;
                let send_gap = f64::from(timestamp.wrapping_sub(sent) as i32);
                jitter + ((arrival_gap - send_gap).abs() - jitter) / 16.0
            }
        };
        self.jitter = Some((now, timestamp, jitter));
        Duration::from_secs_f64(jitter / rate)
    }

    /// RFC 3550 §6.4.1, on our own clock: the report we sent that the block
    /// names (LSR), how long ago it left, less how long the peer held it (DLSR).
    fn round_trip(&self, block: &ReceptionReport, now: Instant) -> Option<Duration> {
        if block.last_sender_report == 0 {
            return None;
        }
        let (_, sent) = self.sent_reports.iter().rev().find(|(ntp, _)| *ntp == block.last_sender_report)?;
        let held = Duration::from_secs_f64(f64::from(block.delay) / 65_536.0);
        now.checked_duration_since(*sent)?.checked_sub(held)
    }
}

/// Appends `entry` to a list of at most `limit` entries (the oldest make way)
/// unless one `same` as it is there already (the same packet asked for again);
/// false if it was.
fn remember<T>(list: &mut VecDeque<T>, entry: T, limit: usize, same: impl Fn(&T) -> bool) -> bool {
    if list.iter().any(same) {
        return false;
    }
    if list.len() == limit {
        list.pop_front();
    }
    list.push_back(entry);
    true
}

/// The packet as a NACK about the stream `ssrc` (when known).
fn nack_about(packet: &dyn rtc::rtcp::Packet, ssrc: Option<u32>) -> Option<&TransportLayerNack> {
    let nack = packet.as_any().downcast_ref::<TransportLayerNack>()?;
    ssrc.is_none_or(|ssrc| nack.media_ssrc == ssrc).then_some(nack)
}

/// The reception report blocks of a sender or receiver report.
fn reception_blocks(packet: &dyn rtc::rtcp::Packet) -> Option<&[ReceptionReport]> {
    let any = packet.as_any();
    if let Some(sender_report) = any.downcast_ref::<SenderReport>() {
        Some(&sender_report.reports)
    } else {
        any.downcast_ref::<ReceiverReport>().map(|receiver_report| &receiver_report.reports[..])
    }
}

/// The middle 32 bits of a 64-bit NTP timestamp, as LSR carries them.
fn compact_ntp(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// The 24-bit two's-complement "cumulative number of packets lost".
fn signed_24(value: u32) -> i64 {
    let value = i64::from(value & 0x00ff_ffff);
    if value & 0x0080_0000 != 0 { value - 0x0100_0000 } else { value }
}

impl sansio::Protocol<TaggedPacket, TaggedPacket, ()> for RtcpMonitor {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.inbound(&msg.message.packet, msg.now);
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.outbound(&msg.message, msg.now);
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }

    fn handle_timeout(&mut self, _now: Instant) -> Result<(), Self::Error> {
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Self::Time> {
        None
    }
}

impl Interceptor for RtcpMonitor {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.local_ssrc = Some(info.ssrc);
    }
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        self.remote_ssrc = Some(info.ssrc);
        if info.clock_rate > 0 {
            self.clock_rate = info.clock_rate;
        }
    }
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::sansio::Protocol;
    use rtc::shared::{TransportContext, TransportMessage};

    fn tagged(packet: Packet, now: Instant) -> TaggedPacket {
        TransportMessage { now, transport: TransportContext::default(), message: AttributedPacket::new(packet) }
    }

    fn rtcp(packet: impl rtc::rtcp::Packet + 'static) -> Packet {
        Packet::Rtcp(vec![Box::new(packet)])
    }

    fn monitor() -> (RtcpMonitor, SharedView) {
        let view = SharedView::default();
        let mut monitor = RtcpMonitor::new(view.clone(), 48_000, Retransmitted::default());
        monitor.bind_local_stream(&StreamInfo { ssrc: 7, ..Default::default() });
        (monitor, view)
    }

    fn report_about(ssrc: u32, lsr: u32, dlsr: Duration) -> ReceiverReport {
        ReceiverReport {
            ssrc: 99,
            reports: vec![ReceptionReport {
                ssrc,
                fraction_lost: 64,
                total_lost: 12,
                last_sequence_number: 1_000,
                jitter: 480,
                last_sender_report: lsr,
                delay: (dlsr.as_secs_f64() * 65_536.0) as u32,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_is_arrival_minus_sent_minus_the_peers_hold() {
        let (mut monitor, view) = monitor();
        let start = Instant::now();
        let ntp: u64 = 0x1234_5678_9abc_def0;
        let sender_report = SenderReport { ssrc: 7, ntp_time: ntp, ..Default::default() };
        monitor.handle_write(tagged(rtcp(sender_report), start)).unwrap();
        // The peer held the report 40 ms; it comes back 190 ms after it left.
        let back = report_about(7, compact_ntp(ntp), Duration::from_millis(40));
        monitor.handle_read(tagged(rtcp(back), start + Duration::from_millis(190))).unwrap();
        let round_trip = view.lock().unwrap().round_trip.unwrap();
        assert!((round_trip.as_secs_f64() - 0.150).abs() < 0.001, "{round_trip:?}");
        let remote = view.lock().unwrap().remote.unwrap();
        assert_eq!(remote.fraction_lost, 0.25);
        assert_eq!(remote.cumulative_lost, 12);
        assert_eq!(remote.jitter, Duration::from_millis(10));
        // Both directions pass through unchanged.
        assert!(monitor.poll_write().is_some() && monitor.poll_read().is_some());
    }

    #[test]
    fn reports_about_unknown_sender_reports_or_other_streams_give_no_round_trip() {
        let (mut monitor, view) = monitor();
        let now = Instant::now();
        monitor.handle_read(tagged(rtcp(report_about(7, 0xdead_beef, Duration::ZERO)), now)).unwrap();
        assert_eq!(view.lock().unwrap().round_trip, None);
        assert!(view.lock().unwrap().remote.is_some());

        let (mut monitor, view) = self::monitor();
        monitor.handle_read(tagged(rtcp(report_about(8, 0, Duration::ZERO)), now)).unwrap();
        assert_eq!(view.lock().unwrap().remote, None, "a report on another stream is not about us");
    }

    #[test]
    fn a_hold_longer_than_the_elapsed_time_is_ignored() {
        let (mut monitor, view) = monitor();
        let start = Instant::now();
        let ntp = 0x0000_1111_2222_0000;
        monitor.handle_write(tagged(rtcp(SenderReport { ntp_time: ntp, ..Default::default() }), start)).unwrap();
        let back = report_about(7, compact_ntp(ntp), Duration::from_secs(5));
        monitor.handle_read(tagged(rtcp(back), start + Duration::from_millis(10))).unwrap();
        assert_eq!(view.lock().unwrap().round_trip, None);
    }

    #[test]
    fn our_own_reports_are_the_local_view_and_rtp_is_counted() {
        let (mut monitor, view) = monitor();
        let now = Instant::now();
        monitor.handle_write(tagged(rtcp(report_about(5, 0, Duration::ZERO)), now)).unwrap();
        let rtp = rtc::rtp::Packet { payload: bytes::Bytes::from_static(&[1, 2, 3]), ..Default::default() };
        monitor.handle_write(tagged(Packet::Rtp(rtp.clone()), now)).unwrap();
        monitor.handle_read(tagged(Packet::Rtp(rtp), now)).unwrap();
        let view = *view.lock().unwrap();
        assert_eq!(view.local.map(|l| l.cumulative_lost), Some(12));
        assert_eq!((view.packets_sent, view.bytes_sent, view.packets_received, view.bytes_received), (1, 3, 1, 3));
    }

    #[test]
    fn interarrival_jitter_follows_rfc_3550_across_a_timestamp_wrap() {
        let (mut monitor, _) = monitor();
        let start = Instant::now();
        // 20 ms packets (960 ticks) arriving exactly on time: no jitter, even
        // where the timestamp wraps.
        let mut ts = u32::MAX - 2_000;
        let mut jitter = Duration::ZERO;
        for i in 0..10 {
            jitter = monitor.interarrival_jitter(ts, start + Duration::from_millis(20 * i));
            ts = ts.wrapping_add(960);
        }
        assert!(jitter < Duration::from_micros(1), "{jitter:?}");
        // Arriving 10 ms, then 30 ms apart while sent 20 ms apart: |D| is 10 ms
        // each time, and J moves a sixteenth of the way towards it per packet.
        let mut at = start + Duration::from_millis(200);
        for i in 0..200 {
            at += if i % 2 == 0 { Duration::from_millis(10) } else { Duration::from_millis(30) };
            jitter = monitor.interarrival_jitter(ts, at);
            ts = ts.wrapping_add(960);
        }
        assert!((jitter.as_secs_f64() - 0.010).abs() < 0.0005, "{jitter:?}");
    }

    #[test]
    fn retransmission_requests_are_counted_once_per_packet_each_way() {
        let (mut monitor, view) = monitor();
        monitor.bind_remote_stream(&StreamInfo { ssrc: 9, clock_rate: 48_000, ..Default::default() });
        let now = Instant::now();
        let nack = |media_ssrc: u32, seqs: &[u16]| TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc,
            nacks: rtc::rtcp::transport_feedbacks::transport_layer_nack::nack_pairs_from_sequence_numbers(seqs),
        };
        // The peer asks for 10, 11 and 13 of ours, then 11 again; a request
        // about another stream is not about us.
        monitor.handle_read(tagged(rtcp(nack(7, &[10, 11, 13])), now)).unwrap();
        monitor.handle_read(tagged(rtcp(nack(7, &[11])), now)).unwrap();
        monitor.handle_read(tagged(rtcp(nack(8, &[20])), now)).unwrap();
        assert_eq!(view.lock().unwrap().packets_requested, 3);
        // We ask for 500 and 501 of theirs (twice); 500 arrives, twice.
        monitor.handle_write(tagged(rtcp(nack(9, &[500, 501])), now)).unwrap();
        monitor.handle_write(tagged(rtcp(nack(9, &[500, 501])), now)).unwrap();
        let packet = |seq: u16| {
            let mut rtp = rtc::rtp::Packet::default();
            rtp.header.sequence_number = seq;
            Packet::Rtp(rtp)
        };
        for seq in [499, 500, 500, 502] {
            monitor.handle_read(tagged(packet(seq), now)).unwrap();
        }
        assert_eq!(view.lock().unwrap().packets_repaired, 1);
        // What we resend is not counted again as sent.
        let resent = AttributedPacket::new(packet(10)).with(Attribute::Retransmission);
        monitor
            .handle_write(TransportMessage { now, transport: TransportContext::default(), message: resent })
            .unwrap();
        monitor.handle_write(tagged(packet(600), now)).unwrap();
        assert_eq!(view.lock().unwrap().packets_sent, 1);
        // A request not answered within a second is forgotten: the number may
        // come round again.
        monitor.handle_write(tagged(rtcp(nack(9, &[700])), now)).unwrap();
        let later = now + ANSWER_WAIT;
        monitor.handle_write(tagged(rtcp(nack(9, &[701])), later)).unwrap();
        monitor.handle_read(tagged(packet(700), later)).unwrap();
        assert_eq!(view.lock().unwrap().packets_repaired, 1);
        // The track reader learns which packet was the retransmission, once.
        assert!(!monitor.retransmitted.take(499));
        assert!(monitor.retransmitted.take(500));
        assert!(!monitor.retransmitted.take(500));
    }

    #[test]
    fn cumulative_loss_is_a_signed_24_bit_number() {
        assert_eq!(signed_24(5), 5);
        assert_eq!(signed_24(0x00ff_ffff), -1);
        assert_eq!(signed_24(0x0080_0000), -0x0080_0000);
    }
}
