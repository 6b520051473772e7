//! One call's media: a WebRTC peer connection (webrtc-rs) carrying Opus both ways,
//! with the device certificate as the DTLS certificate, and the tasks that pace
//! audio: a sender (endpoint → Opus → RTP every frame) and a player (RTP → jitter
//! buffer → Opus → endpoint every frame). The call task drives it: SDP and ICE
//! in and out, events up, audio gates down.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::media::Sample;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCCertificate,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceConnectionState, RTCIceServer, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder, crypto,
    register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

use super::jitter::{JitterBuffer, Playout};
use super::rtcp_monitor::{MONITOR_SLOT, RtcpMonitor, SharedView};
use crate::audio::endpoints::{EchoSource, Sink, Source};
use crate::call::FailCause;
use crate::identity::{DeviceId, Identity};
use crate::stats::meter::{MediaSample, PlayoutStats};
use crate::stats::{CandidatePair, CodecInfo, SILENCE_DBFS, level_dbfs};

/// How long the ICE part of a sample (candidate pair, STUN round trip) is reused:
/// it changes slowly and reading it walks the whole stats report.
const ICE_REFRESH: Duration = Duration::from_secs(1);

/// Opus payload type we offer.
const OPUS_PT: u8 = 111;

/// Codec and network settings for a call.
#[derive(Debug, Clone)]
pub struct CodecSettings {
    /// 10 or 20 ms.
    pub frame: Duration,
    /// Target bitrate in bits per second (12 000 to 128 000).
    pub bitrate: i32,
    /// Discontinuous transmission (send almost nothing during silence).
    pub dtx: bool,
    /// STUN server URLs, if any.
    pub stun_servers: Vec<String>,
    /// Offer loopback candidates too.
    pub allow_loopback: bool,
}

impl CodecSettings {
    /// The codec as the stats feed describes it.
    pub fn info(&self) -> CodecInfo {
        CodecInfo {
            name: "opus",
            clock_rate: 48_000,
            channels: 1,
            target_bitrate_bps: u32::try_from(self.bitrate).unwrap_or(0),
            frame: self.frame,
            fec: true,
            dtx: self.dtx,
        }
    }
}

impl Default for CodecSettings {
    fn default() -> Self {
        CodecSettings {
            frame: Duration::from_millis(20),
            bitrate: 32_000,
            dtx: false,
            stun_servers: Vec::new(),
            allow_loopback: false,
        }
    }
}

/// What the media layer tells the call.
#[derive(Debug, Clone)]
pub enum MediaEvent {
    /// A local ICE candidate to send to the peer.
    LocalCandidate(RTCIceCandidateInit),
    /// ICE and DTLS are up.
    Connected,
    /// Media broke for good.
    Failed(FailCause),
}

/// Why media could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The WebRTC stack refused something.
    #[error("WebRTC: {0}")]
    WebRtc(String),
    /// The peer's DTLS certificate is not its device certificate.
    #[error("the peer's media certificate does not belong to device {0}")]
    Fingerprint(DeviceId),
    /// The Opus codec refused its settings.
    #[error("Opus: {0}")]
    Codec(String),
}

fn webrtc_error(e: impl std::fmt::Display) -> MediaError {
    MediaError::WebRtc(e.to_string())
}

/// Where the audio of a call comes from and goes to.
pub enum Input {
    /// A source paced by the sender.
    Source(Box<dyn Source>),
    /// Send back what is heard.
    Echo,
}

struct Handler {
    events: mpsc::Sender<MediaEvent>,
    packets: mpsc::Sender<(rtc::rtp::Packet, Instant)>,
    ice_connected: AtomicBool,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(candidate) = event.candidate.to_json() {
            let _ = self.events.try_send(MediaEvent::LocalCandidate(candidate));
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        if matches!(state, RTCIceConnectionState::Connected | RTCIceConnectionState::Completed) {
            self.ice_connected.store(true, Ordering::Relaxed);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        debug!(%state, "media connection state");
        let event = match state {
            RTCPeerConnectionState::Connected => MediaEvent::Connected,
            RTCPeerConnectionState::Failed if self.ice_connected.load(Ordering::Relaxed) => {
                MediaEvent::Failed(FailCause::DtlsFailed)
            }
            RTCPeerConnectionState::Failed => MediaEvent::Failed(FailCause::IceFailed),
            _ => return,
        };
        let _ = self.events.try_send(event);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let packets = self.packets.clone();
        // The callback runs on the connection's driver: the loop gets its own task.
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                match event {
                    // A full queue drops the packet (the player is behind anyway).
                    TrackRemoteEvent::OnRtpPacket(packet) => {
                        let sent = packets.try_send((packet, Instant::now()));
                        if matches!(sent, Err(mpsc::error::TrySendError::Closed(_))) {
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

/// A call's media session.
pub struct MediaSession {
    pc: Arc<dyn PeerConnection>,
    events: mpsc::Receiver<MediaEvent>,
    early_candidates: Vec<RTCIceCandidateInit>,
    have_remote: bool,
    peer: DeviceId,
    gates: watch::Sender<Gates>,
    connected: watch::Sender<bool>,
    /// What the audio tasks need, until `attach_audio` starts them.
    audio: Option<PendingAudio>,
    /// The audio tasks, once started.
    audio_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Packet counts and RTCP, kept by the interceptor.
    rtcp: SharedView,
    /// Our audio's sender: the way to the ICE transport and its selected pair.
    sender: Arc<dyn RtpSender>,
    /// What the player publishes every frame.
    playout: watch::Sender<PlayoutStats>,
    /// The level of what the sender sends, every frame.
    level_out: watch::Sender<f64>,
    /// The last ICE reading, and when it was taken.
    ice: Option<(Instant, IceReading)>,
}

#[derive(Debug, Clone, Default)]
struct IceReading {
    round_trip: Option<Duration>,
    pair: Option<CandidatePair>,
}

struct PendingAudio {
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    packets: mpsc::Receiver<(rtc::rtp::Packet, Instant)>,
    settings: CodecSettings,
}

/// Whether audio may flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gates {
    /// Send captured audio.
    pub send: bool,
    /// Play received audio.
    pub play: bool,
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1;stereo=0".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn certificate(identity: &Identity) -> Result<RTCCertificate, MediaError> {
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

/// The `a=fingerprint:sha-256` value of an SDP as bytes.
pub fn sdp_fingerprint(sdp: &str) -> Option<Vec<u8>> {
    let value = sdp.lines().find_map(|line| line.trim().strip_prefix("a=fingerprint:sha-256 "))?;
    value.trim().split(':').map(|hex| u8::from_str_radix(hex, 16).ok()).collect()
}

impl MediaSession {
    /// Sets up the peer connection. `peer` is whose certificate the remote DTLS
    /// must use. Audio flows once `attach_audio` gave it endpoints, media is
    /// connected and the gates are open.
    pub async fn new(identity: &Identity, peer: DeviceId, settings: CodecSettings) -> Result<Self, MediaError> {
        let mut media_engine = MediaEngine::default();
        media_engine
            .register_codec(
                RTCRtpCodecParameters { rtp_codec: opus_codec(), payload_type: OPUS_PT },
                RtpCodecKind::Audio,
            )
            .map_err(webrtc_error)?;
        let rtcp = SharedView::default();
        let registry = register_default_interceptors(Registry::new(), &mut media_engine)
            .map_err(webrtc_error)?
            .with(rtc::interceptor::Slot::from(MONITOR_SLOT), RtcpMonitor::new(rtcp.clone(), 48_000));
        // A 20 ms ICE check interval: on a LAN the checks answer in well under a
        // millisecond, and the default 200 ms tick is most of the setup time.
        let setting_engine = SettingEngineBuilder::new()
            .with_ice_connection_attempts(Some(Duration::from_millis(20)), Some(70))
            .with_ice_timeouts(
                Some(Duration::from_secs(3)),
                Some(Duration::from_secs(10)),
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
        let (packets_tx, packets_rx) = mpsc::channel(512);
        let handler =
            Arc::new(Handler { events: events_tx, packets: packets_tx, ice_connected: AtomicBool::new(false) });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(config)
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_setting_engine(setting_engine)
            .with_handler(handler)
            .with_udp_addrs(udp_addrs)
            .build()
            .await
            .map_err(webrtc_error)?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);

        let ssrc: u32 = rand::random();
        let track = Arc::new(
            TrackLocalStaticSample::new(
                Instant::now(),
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

        let (gates, _) = watch::channel(Gates::default());
        let (connected, _) = watch::channel(false);
        let audio = Some(PendingAudio { track, ssrc, packets: packets_rx, settings: settings.clone() });
        Ok(MediaSession {
            pc,
            events,
            early_candidates: Vec::new(),
            have_remote: false,
            peer,
            gates,
            connected,
            audio,
            audio_tasks: Vec::new(),
            rtcp,
            sender,
            playout: watch::Sender::new(PlayoutStats::default()),
            level_out: watch::Sender::new(SILENCE_DBFS),
            ice: None,
        })
    }

    /// What the media layer measures now, for the stats feed. Does not wait:
    /// the ICE part is the last one read by [`Self::refresh_ice`].
    pub fn sample(&self) -> MediaSample {
        let ice = self.ice.as_ref().map(|(_, reading)| reading);
        MediaSample {
            rtcp: *self.rtcp.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
            playout: *self.playout.borrow(),
            level_out_dbfs: *self.level_out.borrow(),
            ice_round_trip: ice.and_then(|ice| ice.round_trip),
            candidate_pair: ice.and_then(|ice| ice.pair.clone()),
        }
    }

    /// Reads the ICE part of the stats again if it is older than [`ICE_REFRESH`].
    pub async fn refresh_ice(&mut self) {
        let now = Instant::now();
        if self.ice.as_ref().is_some_and(|(taken, _)| now.duration_since(*taken) < ICE_REFRESH) {
            return;
        }
        let reading = self.read_ice(now).await;
        self.ice = Some((now, reading));
    }

    /// The selected pair and its STUN round trip. The pair comes from the ICE
    /// transport, not the stats report: the report lists only signaled
    /// candidates, so a peer-reflexive one (learned from a check) is missing there.
    async fn read_ice(&self, now: Instant) -> IceReading {
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

    /// Starts the audio tasks with these endpoints (once; later calls are ignored).
    pub fn attach_audio(&mut self, input: Input, output: Box<dyn Sink>) -> Result<(), MediaError> {
        let Some(PendingAudio { track, ssrc, packets, settings }) = self.audio.take() else { return Ok(()) };
        let echo = Arc::new(Mutex::new(EchoSource::default()));
        let echoing = matches!(input, Input::Echo);
        let source: Box<dyn Source> = match input {
            Input::Source(source) => source,
            Input::Echo => Box::new(SharedEcho(echo.clone())),
        };
        let encoder = encoder(&settings)?;
        let decoder = opus::Decoder::new(48_000, opus::Channels::Mono).map_err(|e| MediaError::Codec(e.to_string()))?;
        let (gates, connected) = (self.gates.subscribe(), self.connected.subscribe());
        let sender = Sender { track, ssrc, encoder, level: self.level_out.clone() };
        let player = Player { decoder, stats: self.playout.clone(), echo: echoing.then_some(echo) };
        self.audio_tasks = vec![
            tokio::spawn(send_audio(sender, source, settings.frame, gates.clone(), connected.clone())),
            tokio::spawn(play_audio(packets, output, player, settings.frame, gates, connected)),
        ];
        Ok(())
    }

    /// Caller: the offer to send.
    pub async fn create_offer(&mut self) -> Result<String, MediaError> {
        let offer = self.pc.create_offer(None).await.map_err(webrtc_error)?;
        let sdp = offer.sdp.clone();
        self.pc.set_local_description(offer).await.map_err(webrtc_error)?;
        Ok(sdp)
    }

    /// Callee: takes the caller's offer, returns the answer to send.
    pub async fn accept_offer(&mut self, sdp: String) -> Result<String, MediaError> {
        self.set_remote(RTCSessionDescription::offer(sdp).map_err(webrtc_error)?).await?;
        let answer = self.pc.create_answer(None).await.map_err(webrtc_error)?;
        let sdp = answer.sdp.clone();
        self.pc.set_local_description(answer).await.map_err(webrtc_error)?;
        Ok(sdp)
    }

    /// Caller: takes the callee's answer.
    pub async fn accept_answer(&mut self, sdp: String) -> Result<(), MediaError> {
        self.set_remote(RTCSessionDescription::answer(sdp).map_err(webrtc_error)?).await
    }

    async fn set_remote(&mut self, description: RTCSessionDescription) -> Result<(), MediaError> {
        // The DTLS certificate must be the peer's device certificate, whose hash
        // is its device ID: the media keys are then bound to who we called.
        if sdp_fingerprint(&description.sdp).as_deref() != Some(&self.peer.as_bytes()[..]) {
            return Err(MediaError::Fingerprint(self.peer));
        }
        self.pc.set_remote_description(description).await.map_err(webrtc_error)?;
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

    /// The next media event. Cancel-safe.
    pub async fn next_event(&mut self) -> Option<MediaEvent> {
        let event = self.events.recv().await;
        if matches!(event, Some(MediaEvent::Connected)) {
            self.connected.send_replace(true);
        }
        event
    }

    /// Opens or closes the audio gates.
    pub fn set_gates(&self, gates: Gates) {
        self.gates.send_replace(gates);
    }

    /// Stops the audio tasks (a recording is complete when this returns) and
    /// closes the connection.
    pub async fn close(self) {
        let MediaSession { pc, gates, connected, audio_tasks, .. } = self;
        // Dropping the senders also wakes tasks still waiting for a connection.
        connected.send_replace(false);
        drop(connected);
        drop(gates);
        for task in audio_tasks {
            if tokio::time::timeout(Duration::from_secs(2), task).await.is_err() {
                warn!("an audio task did not stop in time");
            }
        }
        if let Err(error) = pc.close().await {
            warn!(%error, "closing the media connection failed");
        }
    }
}

/// Lets the sender read the echo queue the player fills.
struct SharedEcho(Arc<Mutex<EchoSource>>);

impl Source for SharedEcho {
    fn fill(&mut self, frame: &mut [i16]) {
        match self.0.lock() {
            Ok(mut echo) => echo.fill(frame),
            Err(_) => frame.fill(0),
        }
    }
}

fn encoder(settings: &CodecSettings) -> Result<opus::Encoder, MediaError> {
    let codec_error = |e: opus::Error| MediaError::Codec(e.to_string());
    let mut encoder = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).map_err(codec_error)?;
    encoder.set_bitrate(opus::Bitrate::Bits(settings.bitrate)).map_err(codec_error)?;
    encoder.set_inband_fec(true).map_err(codec_error)?;
    // FEC only helps when the encoder expects loss.
    encoder.set_packet_loss_perc(10).map_err(codec_error)?;
    encoder.set_dtx(settings.dtx).map_err(codec_error)?;
    Ok(encoder)
}

fn samples_per_frame(frame: Duration) -> usize {
    (48_000 * frame.as_micros() / 1_000_000) as usize
}

/// The sending half: where encoded frames go, and where their level is shown.
struct Sender {
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    encoder: opus::Encoder,
    level: watch::Sender<f64>,
}

/// Every frame: read the source, and if the send gate is open, encode and send.
async fn send_audio(
    sender: Sender,
    mut source: Box<dyn Source>,
    frame: Duration,
    gates: watch::Receiver<Gates>,
    mut connected: watch::Receiver<bool>,
) {
    if connected.wait_for(|c| *c).await.is_err() {
        return;
    }
    let Sender { track, ssrc, mut encoder, level } = sender;
    let mut pcm = vec![0i16; samples_per_frame(frame)];
    let mut packet = vec![0u8; 1500];
    let mut tick = tokio::time::interval(frame);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        tick.tick().await;
        if !*connected.borrow() || gates.has_changed().is_err() {
            return;
        }
        // The source advances in real time whether or not we send (a file keeps
        // playing while muted, like a live microphone).
        source.fill(&mut pcm);
        // A closed gate sends silence rather than nothing: Opus codes it in a few
        // bytes, and the stream stays continuous, so the peer's RTCP does not count
        // a mute as lost packets (skipping frames would skip sequence numbers too).
        if !gates.borrow().send {
            pcm.fill(0);
        }
        level.send_replace(level_dbfs(&pcm));
        let Ok(len) = encoder.encode(&pcm, &mut packet) else { continue };
        let mut sample = Sample::new(Instant::now());
        sample.data = Bytes::copy_from_slice(&packet[..len]);
        sample.duration = frame;
        if let Err(error) = track.sample_writer(ssrc, OPUS_PT).write_sample(&sample).await {
            debug!(%error, "cannot send an audio frame");
        }
    }
}

/// The playing half: the decoder, where its numbers are shown, and the echo
/// queue when the call echoes.
struct Player {
    decoder: opus::Decoder,
    stats: watch::Sender<PlayoutStats>,
    echo: Option<Arc<Mutex<EchoSource>>>,
}

/// Every frame: take what arrived, run the jitter buffer, decode, and hand the
/// frame to the output (silence while the play gate is closed).
async fn play_audio(
    mut packets: mpsc::Receiver<(rtc::rtp::Packet, Instant)>,
    mut output: Box<dyn Sink>,
    player: Player,
    frame: Duration,
    gates: watch::Receiver<Gates>,
    mut connected: watch::Receiver<bool>,
) {
    if connected.wait_for(|c| *c).await.is_err() {
        let _ = output.finish();
        return;
    }
    let Player { mut decoder, stats, echo } = player;
    let mut jitter = JitterBuffer::new(frame);
    let samples = samples_per_frame(frame);
    let mut pcm = vec![0i16; samples];
    let silence = vec![0i16; samples];
    let mut tick = tokio::time::interval(frame);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        tick.tick().await;
        if !*connected.borrow() || gates.has_changed().is_err() {
            break;
        }
        while let Ok((packet, arrival)) = packets.try_recv() {
            jitter.push(packet.header.sequence_number, packet.header.timestamp, packet.payload, arrival);
        }
        let decoded = match jitter.pop(Instant::now()) {
            Playout::Frame(payload) => decoder.decode(&payload, &mut pcm, false),
            Playout::Fec(next) => decoder.decode(&next, &mut pcm, true),
            Playout::Conceal => decoder.decode(&[], &mut pcm, false),
            Playout::Silence => Ok(0),
        };
        let heard = match decoded {
            Ok(n) if n == samples => &pcm[..],
            _ => &silence[..],
        };
        let heard = if gates.borrow().play { heard } else { &silence[..] };
        stats.send_replace(PlayoutStats {
            jitter: jitter.stats(),
            current_delay: jitter.current_delay(),
            target_delay: jitter.target_delay(),
            level_dbfs: level_dbfs(heard),
            samples_per_frame: samples as u64,
        });
        if let Some(echo) = &echo
            && let Ok(mut echo) = echo.lock()
        {
            echo.push(heard);
        }
        if let Err(error) = output.write(heard) {
            warn!(%error, "the audio output failed; the call goes on without it");
            output = Box::new(crate::audio::endpoints::NullSink);
        }
    }
    if let Err(error) = output.finish() {
        warn!(%error, "cannot complete the audio output");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdp_fingerprint_is_read() {
        let sdp = "v=0\r\na=fingerprint:sha-256 0A:FF:10\r\na=setup:actpass\r\n";
        assert_eq!(sdp_fingerprint(sdp), Some(vec![0x0a, 0xff, 0x10]));
        assert_eq!(sdp_fingerprint("v=0\r\n"), None);
        assert_eq!(sdp_fingerprint("a=fingerprint:sha-256 ZZ:00\r\n"), None);
    }
}
