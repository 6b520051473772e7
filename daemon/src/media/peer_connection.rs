//! The WebRTC peer connection (webrtc-rs) of one call: the only file that imports
//! webrtc. Opus is offered on payload type 111 and sent on whichever payload type
//! the peer's description gives it (only packets of that type are played); the device certificate is the
//! DTLS certificate, and the peer's DTLS fingerprint must be its device ID. What
//! crosses this file's boundary is ours: [`ConnectionEvent`] (candidates, connected,
//! failed with a [`FailCause`]), [`ReceivedPacket`] and [`OutboundTrack`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{NackGeneratorBuilder, NackResponderBuilder, Slot};
use rtc::media::Sample;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
    TYPE_RTCP_FB_NACK,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};
use voicelink_core::sdp;
use voicelink_core::stats::CandidatePair;
use voicelink_core::vocab::{DeviceId, FailCause};
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCCertificate,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceConnectionState, RTCIceGatheringState, RTCIceServer,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
    configure_rtcp_reports, configure_simulcast_extension_headers, configure_twcc_receiver_only, crypto,
};
use webrtc::rtp_transceiver::RtpSender;

use super::redundant_handshake::RedundantHandshakes;
use super::rtcp_monitor::{MONITOR_SLOT, Retransmitted, RtcpMonitor, SharedView};
use crate::identity::Identity;

/// The payload type we offer Opus on.
pub const OFFERED_OPUS_PT: u8 = 111;

/// How long an offer or answer waits for host candidates to be gathered, so they
/// are in its SDP (a peer that does not trickle connects, and ICE has pairs to
/// check the moment the description is applied). Host gathering takes a few ms.
const GATHERING_WAIT: Duration = Duration::from_millis(250);

/// What the connection tells the call. Never dropped: the handler waits for room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// A local ICE candidate to send to the peer.
    LocalCandidate {
        /// The `candidate:` attribute value.
        candidate: String,
        /// Its media stream ID.
        sdp_mid: Option<String>,
        /// Its m-line index.
        sdp_mline_index: Option<u16>,
    },
    /// ICE found a path; the DTLS handshake starts.
    IceConnected,
    /// The path went silent (ICE disconnected); ICE keeps checking.
    Disconnected,
    /// ICE and DTLS are up.
    Connected,
    /// Media broke for good.
    Failed(FailCause),
}

/// Why the connection could not be set up or refused a description.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The WebRTC stack refused something.
    #[error("WebRTC: {0}")]
    WebRtc(String),
    /// The peer's DTLS certificate is not its device certificate.
    #[error("the peer's media certificate does not belong to device {0}")]
    Fingerprint(DeviceId),
    /// The peer's description has no Opus audio.
    #[error("the peer's media description offers no Opus audio at 48 kHz (voicelink speaks only Opus)")]
    NoOpus,
}

impl ConnectionError {
    /// How the call reports it.
    pub fn cause(&self) -> FailCause {
        match self {
            ConnectionError::Fingerprint(_) => FailCause::IdentityMismatch(self.to_string()),
            ConnectionError::WebRtc(_) | ConnectionError::NoOpus => FailCause::Protocol(self.to_string()),
        }
    }
}

fn webrtc_error(e: impl std::fmt::Display) -> ConnectionError {
    ConnectionError::WebRtc(e.to_string())
}

/// Network settings for a connection.
#[derive(Debug, Clone)]
pub struct NetworkSettings {
    /// STUN server URLs, if any.
    pub stun_servers: Vec<String>,
    /// Offer loopback candidates too.
    pub allow_loopback: bool,
    /// How long ICE keeps a silent path before it gives up (the call's reconnect
    /// timeout decides first; this only has to be longer).
    pub ice_failed_after: Duration,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings { stun_servers: Vec::new(), allow_loopback: false, ice_failed_after: Duration::from_secs(45) }
    }
}

/// An RTP packet of the peer's audio, as it arrived.
#[derive(Debug, Clone)]
pub struct ReceivedPacket {
    /// RTP sequence number.
    pub sequence: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// The Opus payload.
    pub payload: Bytes,
    /// When it arrived.
    pub arrival: Instant,
    /// It is a retransmission we asked for (late by design, not jitter).
    pub resent: bool,
}

/// Where our encoded audio goes.
pub struct OutboundTrack {
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    /// Opus's payload type in the peer's description.
    payload_type: Arc<AtomicU8>,
}

impl OutboundTrack {
    /// Sends one encoded frame of `duration` (it advances the RTP timestamp).
    pub async fn send(&self, payload: &[u8], duration: Duration, now: Instant) {
        let mut sample = Sample::new(now);
        sample.data = Bytes::copy_from_slice(payload);
        sample.duration = duration;
        let payload_type = self.payload_type.load(Ordering::Relaxed);
        if let Err(error) = self.track.sample_writer(self.ssrc, payload_type).write_sample(&sample).await {
            debug!(%error, "cannot send an audio frame");
        }
    }
}

/// The ICE part of a stats sample.
#[derive(Debug, Clone, Default)]
pub struct IceReading {
    /// The selected pair's STUN round trip.
    pub round_trip: Option<Duration>,
    /// The selected pair.
    pub pair: Option<CandidatePair>,
}

struct Handler {
    events: mpsc::Sender<ConnectionEvent>,
    packets: mpsc::Sender<ReceivedPacket>,
    ice_connected: AtomicBool,
    /// ICE said the path went silent and has not said it is back.
    disconnected: AtomicBool,
    /// Candidate gathering is complete.
    gathered: watch::Sender<bool>,
    /// Opus's payload type in the peer's description, and, when we made the
    /// offer, the one we offered: packets of any other type are not played. A
    /// peer sends on the type our description gave (RFC 3264), which most
    /// answerers copy from the offer.
    opus_pt: Arc<AtomicU8>,
    offered_pt: u8,
    offered: Arc<AtomicBool>,
    /// Which arriving packets are retransmissions (the RTCP monitor marks them).
    retransmitted: Retransmitted,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }

    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json()
            && !sdp::is_unusable_candidate(&init.candidate)
        {
            let candidate = ConnectionEvent::LocalCandidate {
                candidate: init.candidate,
                sdp_mid: init.sdp_mid,
                sdp_mline_index: init.sdp_mline_index,
            };
            // Waits for room rather than dropping: the call reads promptly.
            let _ = self.events.send(candidate).await;
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        let event = match state {
            RTCIceConnectionState::Connected | RTCIceConnectionState::Completed => {
                if !self.ice_connected.swap(true, Ordering::Relaxed) {
                    ConnectionEvent::IceConnected
                } else if self.disconnected.swap(false, Ordering::Relaxed) {
                    // Back after a silence: the DTLS session is still there.
                    ConnectionEvent::Connected
                } else {
                    return;
                }
            }
            RTCIceConnectionState::Disconnected if !self.disconnected.swap(true, Ordering::Relaxed) => {
                ConnectionEvent::Disconnected
            }
            _ => return,
        };
        let _ = self.events.send(event).await;
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        debug!(%state, "media connection state");
        let event = match state {
            RTCPeerConnectionState::Connected => ConnectionEvent::Connected,
            RTCPeerConnectionState::Failed if self.ice_connected.load(Ordering::Relaxed) => {
                ConnectionEvent::Failed(FailCause::DtlsFailed)
            }
            RTCPeerConnectionState::Failed => ConnectionEvent::Failed(FailCause::IceFailed),
            _ => return,
        };
        let _ = self.events.send(event).await;
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let packets = self.packets.clone();
        let opus_pt = Arc::clone(&self.opus_pt);
        let offered_pt = self.offered_pt;
        let offered = Arc::clone(&self.offered);
        let retransmitted = self.retransmitted.clone();
        // The callback runs on the connection's driver: the loop gets its own task.
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                match event {
                    // Comfort noise, DTMF and the like would only confuse the decoder.
                    TrackRemoteEvent::OnRtpPacket(packet)
                        if packet.header.payload_type != opus_pt.load(Ordering::Relaxed)
                            && !(offered.load(Ordering::Relaxed) && packet.header.payload_type == offered_pt) => {}
                    // A full queue drops the packet (the player is behind anyway).
                    TrackRemoteEvent::OnRtpPacket(packet) => {
                        let received = ReceivedPacket {
                            resent: retransmitted.take(packet.header.sequence_number),
                            sequence: packet.header.sequence_number,
                            timestamp: packet.header.timestamp,
                            payload: packet.payload,
                            arrival: crate::clock::now(),
                        };
                        if matches!(packets.try_send(received), Err(mpsc::error::TrySendError::Closed(_))) {
                            break;
                        }
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
    }
}

/// A call's peer connection.
pub struct Connection {
    pc: Arc<dyn PeerConnection>,
    events: mpsc::Receiver<ConnectionEvent>,
    gathered: watch::Receiver<bool>,
    early_candidates: Vec<RTCIceCandidateInit>,
    have_remote: bool,
    peer: DeviceId,
    /// Our audio's sender: the way to the ICE transport and its selected pair.
    sender: Arc<dyn RtpSender>,
    /// Opus's payload type: ours until the peer's description gives its own.
    opus_pt: Arc<AtomicU8>,
    /// We made the offer (so the peer may send on the type we offered).
    offered: Arc<AtomicBool>,
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1;stereo=0".to_owned(),
        rtcp_feedback: vec![RTCPFeedback { typ: TYPE_RTCP_FB_NACK.to_owned(), parameter: String::new() }],
    }
}

/// How often the receiver asks again for the packets it is missing (RFC 4585
/// NACK). A frame: on a LAN the retransmission is back within a millisecond of
/// the request, early enough for the jitter buffer to play it.
const NACK_INTERVAL: Duration = Duration::from_millis(20);
/// How many times one missing packet is asked for.
const NACKS_PER_PACKET: u16 = 3;
/// How far back (in packets) the receiver looks for gaps to ask about: 1.28 s
/// of 20 ms packets, and SRTP's replay window (64) takes nothing older. After
/// an outage the packets lost in it are not asked for: too late to play.
const NACK_LOG_PACKETS: u16 = 64;

/// The interceptors of webrtc's default set, with retransmission tuned for
/// audio on a LAN: the default asks every 100 ms, too late for a jitter buffer
/// of tens of milliseconds.
fn interceptors(media_engine: &mut MediaEngine) -> Result<Registry, ConnectionError> {
    let registry = Registry::new().with(Slot::NackResponder, NackResponderBuilder::new().build()).with(
        Slot::NackGenerator,
        NackGeneratorBuilder::new()
            .with_size(NACK_LOG_PACKETS)
            .with_interval(NACK_INTERVAL)
            .with_max_nacks_per_packet(NACKS_PER_PACKET)
            .build(),
    );
    configure_simulcast_extension_headers(media_engine).map_err(webrtc_error)?;
    let registry = configure_twcc_receiver_only(registry, media_engine).map_err(webrtc_error)?;
    Ok(configure_rtcp_reports(registry))
}

fn certificate(identity: &Identity) -> Result<RTCCertificate, ConnectionError> {
    let provider = crypto::default_provider().map_err(webrtc_error)?;
    let key = PrivatePkcs8KeyDer::from_pem_slice(identity.key_pem().as_bytes()).map_err(webrtc_error)?;
    RTCCertificate::from_pkcs8(
        provider.crypto(),
        crypto::SignatureScheme::EcdsaP256Sha256,
        vec![CertificateDer::from(identity.certificate_der.clone())],
        key.secret_pkcs8_der(),
        SystemTime::now() + Duration::from_secs(365 * 86_400),
    )
    .map_err(webrtc_error)
}

impl Connection {
    /// Sets up the peer connection. `peer` is whose certificate the remote DTLS
    /// must use; `rtcp` is where the RTCP monitor keeps its numbers. Returns the
    /// connection, the track our audio goes out on, and the peer's packets.
    pub async fn new(
        identity: &Identity,
        peer: DeviceId,
        settings: &NetworkSettings,
        rtcp: SharedView,
    ) -> Result<(Self, OutboundTrack, mpsc::Receiver<ReceivedPacket>), ConnectionError> {
        Self::offering_opus_on(OFFERED_OPUS_PT, identity, peer, settings, rtcp).await
    }

    /// As [`Self::new`], offering Opus on payload type `opus_pt` (as other
    /// WebRTC stacks do: Firefox uses 109, many use 96).
    pub async fn offering_opus_on(
        opus_pt: u8,
        identity: &Identity,
        peer: DeviceId,
        settings: &NetworkSettings,
        rtcp: SharedView,
    ) -> Result<(Self, OutboundTrack, mpsc::Receiver<ReceivedPacket>), ConnectionError> {
        let mut media_engine = MediaEngine::default();
        media_engine
            .register_codec(
                RTCRtpCodecParameters { rtp_codec: opus_codec(), payload_type: opus_pt },
                RtpCodecKind::Audio,
            )
            .map_err(webrtc_error)?;
        let retransmitted = Retransmitted::default();
        let monitor = RtcpMonitor::new(rtcp, 48_000, retransmitted.clone());
        let registry = interceptors(&mut media_engine)?.with(Slot::from(MONITOR_SLOT), monitor);
        // A 20 ms ICE check interval: on a LAN the checks answer in well under a
        // millisecond, and the default 200 ms tick is most of the setup time.
        let setting_engine = SettingEngineBuilder::new()
            .with_ice_connection_attempts(Some(Duration::from_millis(20)), Some(70))
            // Disconnected after 2 s of silence (the call shows "reconnecting"),
            // failed only long after: a path that comes back resumes by itself,
            // with no new offer, within a check interval of the link's return.
            .with_ice_timeouts(
                Some(Duration::from_secs(2)),
                Some(settings.ice_failed_after),
                Some(Duration::from_millis(500)),
            )
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .build();
        let mut config = RTCConfigurationBuilder::new().with_certificates(vec![certificate(identity)?]);
        if !settings.stun_servers.is_empty() {
            config = config.with_ice_servers(vec![RTCIceServer {
                urls: settings.stun_servers.clone(),
                username: String::new(),
                credential: String::new(),
            }]);
        }
        let config = config.build();
        // Wildcards expand to every interface except loopback and link-local.
        let mut udp_addrs = vec!["0.0.0.0:0".to_owned(), "[::]:0".to_owned()];
        if settings.allow_loopback {
            udp_addrs.extend(["127.0.0.1:0".to_owned(), "[::1]:0".to_owned()]);
        }
        let (events_tx, events) = mpsc::channel(256);
        let (packets_tx, packets) = mpsc::channel(512);
        let (gathered_tx, gathered) = watch::channel(false);
        let opus_pt = Arc::new(AtomicU8::new(opus_pt));
        let offered = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(Handler {
            events: events_tx,
            packets: packets_tx,
            ice_connected: AtomicBool::new(false),
            disconnected: AtomicBool::new(false),
            gathered: gathered_tx,
            opus_pt: Arc::clone(&opus_pt),
            offered_pt: opus_pt.load(Ordering::Relaxed),
            offered: Arc::clone(&offered),
            retransmitted,
        });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(config)
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_setting_engine(setting_engine)
            .with_handler(handler)
            .with_runtime(RedundantHandshakes::runtime())
            .with_udp_addrs(udp_addrs)
            .build()
            .await
            .map_err(webrtc_error)?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);

        let ssrc: u32 = rand::random();
        let track = Arc::new(
            TrackLocalStaticSample::new(
                crate::clock::now(),
                MediaStreamTrack::new(
                    "voicelink".to_owned(),
                    "voice".to_owned(),
                    "voice".to_owned(),
                    RtpCodecKind::Audio,
                    vec![RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                        codec: opus_codec(),
                        ..Default::default()
                    }],
                ),
            )
            .map_err(webrtc_error)?,
        );
        let sender = pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>).await.map_err(webrtc_error)?;
        let outbound = OutboundTrack { track, ssrc, payload_type: Arc::clone(&opus_pt) };
        let connection = Connection {
            pc,
            events,
            gathered,
            early_candidates: Vec::new(),
            have_remote: false,
            peer,
            sender,
            opus_pt,
            offered,
        };
        Ok((connection, outbound, packets))
    }

    /// The selected pair and its STUN round trip. The pair comes from the ICE
    /// transport, not the stats report: the report lists only signaled
    /// candidates, so a peer-reflexive one (learned from a check) is missing there.
    pub async fn read_ice(&self, now: Instant) -> IceReading {
        use webrtc::peer_connection::{RTCStatsReportEntry as Entry, StatsSelector};
        let report = self.pc.get_stats(now, StatsSelector::None).await;
        let selected = report.iter().find_map(|entry| match entry {
            Entry::Transport(transport) => Some(transport.selected_candidate_pair_id.as_str()),
            _ => None,
        });
        let round_trip = match selected.and_then(|id| report.get(id)) {
            // Zero until the first STUN response on the pair.
            Some(Entry::IceCandidatePair(pair)) if pair.current_round_trip_time > 0.0 => {
                Some(Duration::from_secs_f64(pair.current_round_trip_time))
            }
            _ => None,
        };
        let pair = match self.sender.transport().await {
            Ok(Some(dtls)) => dtls.ice_transport().get_selected_candidate_pair().await.ok().flatten(),
            _ => None,
        };
        let address = |candidate: &webrtc::peer_connection::RTCIceCandidate| match candidate.address.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, candidate.port).to_string(),
            Err(_) => format!("{}:{}", candidate.address, candidate.port),
        };
        IceReading {
            round_trip,
            pair: pair.map(|pair| CandidatePair {
                local_address: address(pair.local()),
                local_type: pair.local().typ.to_string(),
                remote_address: address(pair.remote()),
                remote_type: pair.remote().typ.to_string(),
            }),
        }
    }

    /// Caller: the offer to send.
    pub async fn create_offer(&mut self) -> Result<String, ConnectionError> {
        let offer = self.pc.create_offer(None).await.map_err(webrtc_error)?;
        self.offered.store(true, Ordering::Relaxed);
        self.set_local(offer).await
    }

    /// Callee: takes the caller's offer, returns the answer to send.
    pub async fn accept_offer(&mut self, sdp: String) -> Result<String, ConnectionError> {
        self.set_remote(RTCSessionDescription::offer(sdp).map_err(webrtc_error)?).await?;
        let answer = self.pc.create_answer(None).await.map_err(webrtc_error)?;
        self.set_local(answer).await
    }

    /// Applies our description and returns it as it goes out: with the host
    /// candidates gathered meanwhile (and the end-of-candidates marker once
    /// gathering is complete), without candidates nobody can use.
    async fn set_local(&mut self, description: RTCSessionDescription) -> Result<String, ConnectionError> {
        let plain = description.sdp.clone();
        self.pc.set_local_description(description).await.map_err(webrtc_error)?;
        let _ = tokio::time::timeout(GATHERING_WAIT, self.gathered.wait_for(|done| *done)).await;
        let sdp = self.pc.local_description().await.map_or(plain, |gathered| gathered.sdp);
        Ok(sdp::without_unusable_candidates(&sdp))
    }

    /// Caller: takes the callee's answer.
    pub async fn accept_answer(&mut self, sdp: String) -> Result<(), ConnectionError> {
        self.set_remote(RTCSessionDescription::answer(sdp).map_err(webrtc_error)?).await
    }

    async fn set_remote(&mut self, description: RTCSessionDescription) -> Result<(), ConnectionError> {
        // The DTLS certificate must be the peer's device certificate, whose hash
        // is its device ID: the media keys are then bound to who we called.
        if sdp::fingerprint(&description.sdp).as_deref() != Some(&self.peer.as_bytes()[..]) {
            return Err(ConnectionError::Fingerprint(self.peer));
        }
        // We send Opus on the payload type the peer gave it (RFC 3264 §6.1).
        let opus_pt = sdp::opus_payload_type(&description.sdp).ok_or(ConnectionError::NoOpus)?;
        let before = self.opus_pt.swap(opus_pt, Ordering::Relaxed);
        if let Err(error) = self.pc.set_remote_description(description).await {
            self.opus_pt.store(before, Ordering::Relaxed);
            return Err(webrtc_error(error));
        }
        self.have_remote = true;
        for candidate in std::mem::take(&mut self.early_candidates) {
            self.add_candidate(candidate).await;
        }
        Ok(())
    }

    /// A candidate from the peer; kept until the remote description is set.
    pub async fn add_remote_candidate(&mut self, candidate: String) {
        let candidate = RTCIceCandidateInit { candidate, ..Default::default() };
        if self.have_remote {
            self.add_candidate(candidate).await;
        } else {
            self.early_candidates.push(candidate);
        }
    }

    async fn add_candidate(&self, candidate: RTCIceCandidateInit) {
        if let Err(error) = self.pc.add_ice_candidate(candidate).await {
            debug!(%error, "ignoring an ICE candidate the stack refused");
        }
    }

    /// The next event. Cancel-safe.
    pub async fn next_event(&mut self) -> Option<ConnectionEvent> {
        self.events.recv().await
    }

    /// Closes the connection (always, or webrtc-rs leaks its tasks).
    pub async fn close(self) {
        if let Err(error) = self.pc.close().await {
            warn!(%error, "closing the media connection failed");
        }
    }
}
