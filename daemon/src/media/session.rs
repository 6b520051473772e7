//! One call's media: the peer connection ([`super::peer_connection`]) and the two
//! audio pumps ([`super::audio_pump`]) that start once the call has endpoints.
//! The call task drives it: SDP and candidates in and out, events up, audio gates
//! down, and a stats sample whenever it asks.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::warn;
use voicelink_core::encoder_policy::{ExpectedLoss, TargetBitrate};
use voicelink_core::reload::LiveSettings;
use voicelink_core::stats::meter::{MediaSample, PlayoutStats};
use voicelink_core::stats::{CodecInfo, SILENCE_DBFS};
use voicelink_core::vocab::DeviceId;

use super::audio_pump::{Gates, PlayPump, PumpControl, SendPump};
use super::peer_connection::{
    Connection, ConnectionError, ConnectionEvent, IceReading, NetworkSettings, OutboundTrack, ReceivedPacket,
};
use super::recording::RecordingTap;
use super::rtcp_monitor::SharedView;
use crate::audio::Input;
use crate::audio::endpoints::{Sink, Source, echo};
use crate::identity::Identity;

/// How long the ICE part of a sample (candidate pair, STUN round trip) is reused:
/// it changes slowly and reading it walks the whole stats report.
const ICE_REFRESH: Duration = Duration::from_secs(1);

/// How long closing waits for an audio pump (a recording is complete after it).
const PUMP_STOP: Duration = Duration::from_secs(2);

/// Codec and network settings for a call.
#[derive(Debug, Clone)]
pub struct CodecSettings {
    /// 10 or 20 ms.
    pub frame: Duration,
    /// Target bitrate on a clear link, bits per second (12 000 to 128 000).
    pub bitrate: u32,
    /// The least it comes down to under congestion, bits per second.
    pub min_bitrate: u32,
    /// Discontinuous transmission (send almost nothing during silence).
    pub dtx: bool,
    /// STUN servers and loopback candidates.
    pub network: NetworkSettings,
}

impl CodecSettings {
    /// The codec as the stats feed describes it.
    pub fn info(&self) -> CodecInfo {
        CodecInfo::opus(self.bitrate, self.frame, self.dtx)
    }
}

impl Default for CodecSettings {
    fn default() -> Self {
        CodecSettings {
            frame: Duration::from_millis(20),
            bitrate: 48_000,
            min_bitrate: 16_000,
            dtx: false,
            network: NetworkSettings::default(),
        }
    }
}

/// Why media could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The peer connection refused something.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The Opus codec refused its settings.
    #[error("Opus: {0}")]
    Codec(String),
}

/// What the pumps need, until `attach_audio` starts them.
struct PendingAudio {
    track: OutboundTrack,
    packets: mpsc::Receiver<ReceivedPacket>,
}

/// A call's media session.
pub struct MediaSession {
    connection: Connection,
    settings: CodecSettings,
    gates: watch::Sender<Gates>,
    connected: watch::Sender<bool>,
    audio: Option<PendingAudio>,
    pumps: Vec<tokio::task::JoinHandle<()>>,
    /// Packet counts and RTCP, kept by the interceptor.
    rtcp: SharedView,
    /// What the player publishes every frame.
    playout: watch::Sender<PlayoutStats>,
    /// The level of what the sender sends, every frame.
    level_out: watch::Sender<f64>,
    /// The encoder's target bitrate now (bits per second).
    target_bitrate: watch::Sender<u32>,
    /// The last ICE reading, and when it was taken.
    ice: Option<(Instant, IceReading)>,
}

impl MediaSession {
    /// Sets up the peer connection. `peer` is whose certificate the remote DTLS
    /// must use. Audio flows once `attach_audio` gave it endpoints, media is
    /// connected and the gates are open.
    pub async fn new(identity: &Identity, peer: DeviceId, settings: CodecSettings) -> Result<Self, MediaError> {
        let rtcp = SharedView::default();
        let (connection, track, packets) = Connection::new(identity, peer, &settings.network, rtcp.clone()).await?;
        Ok(MediaSession {
            connection,
            target_bitrate: watch::Sender::new(settings.bitrate),
            settings,
            gates: watch::Sender::new(Gates::default()),
            connected: watch::Sender::new(false),
            audio: Some(PendingAudio { track, packets }),
            pumps: Vec::new(),
            rtcp,
            playout: watch::Sender::new(PlayoutStats::default()),
            level_out: watch::Sender::new(SILENCE_DBFS),
            ice: None,
        })
    }

    /// The peer connection: SDP and candidates go straight to it.
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.connection
    }

    /// What the media layer measures now, for the stats feed. Does not wait:
    /// the ICE part is the last one read by [`Self::refresh_ice`].
    pub fn sample(&self) -> MediaSample {
        let ice = self.ice.as_ref().map(|(_, reading)| reading);
        MediaSample {
            rtcp: *self.rtcp.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
            playout: *self.playout.borrow(),
            level_out_dbfs: *self.level_out.borrow(),
            target_bitrate_bps: Some(*self.target_bitrate.borrow()),
            ice_round_trip: ice.and_then(|ice| ice.round_trip),
            candidate_pair: ice.and_then(|ice| ice.pair.clone()),
        }
    }

    /// Reads the ICE part of the stats again if it is older than [`ICE_REFRESH`].
    pub async fn refresh_ice(&mut self, now: Instant) {
        if self.ice.as_ref().is_some_and(|(taken, _)| now.saturating_duration_since(*taken) < ICE_REFRESH) {
            return;
        }
        let reading = self.connection.read_ice(now).await;
        self.ice = Some((now, reading));
    }

    /// Starts the audio pumps with these endpoints (once; later calls are ignored);
    /// they hand what they send and play to `recording`; the player follows the
    /// output volume of `settings`.
    pub fn attach_audio(
        &mut self,
        input: Input,
        output: Box<dyn Sink>,
        recording: RecordingTap,
        settings: watch::Receiver<LiveSettings>,
    ) -> Result<(), MediaError> {
        let Some(PendingAudio { track, packets }) = self.audio.take() else { return Ok(()) };
        let (source, echo_feed): (Box<dyn Source>, _) = match input {
            Input::Source(source) => (source, None),
            Input::Echo => {
                let (feed, source) = echo();
                (Box::new(source), Some(feed))
            }
        };
        let codec_error = |e: opus::Error| MediaError::Codec(e.to_string());
        let encoder = encoder(&self.settings).map_err(codec_error)?;
        let decoder = opus::Decoder::new(48_000, opus::Channels::Mono).map_err(codec_error)?;
        let control = PumpControl { gates: self.gates.subscribe(), connected: self.connected.subscribe() };
        let frame = self.settings.frame;
        let sender = SendPump {
            encoder,
            track,
            level: self.level_out.clone(),
            frame,
            rtcp: self.rtcp.clone(),
            bitrate: TargetBitrate::new(self.settings.min_bitrate, self.settings.bitrate),
            target_bitrate: self.target_bitrate.clone(),
            recording: recording.clone(),
        };
        let player = PlayPump { decoder, stats: self.playout.clone(), echo: echo_feed, frame, recording, settings };
        self.pumps =
            vec![tokio::spawn(sender.run(source, control.clone())), tokio::spawn(player.run(packets, output, control))];
        Ok(())
    }

    /// The next event from the connection. Cancel-safe.
    pub async fn next_event(&mut self) -> Option<ConnectionEvent> {
        let event = self.connection.next_event().await;
        if matches!(event, Some(ConnectionEvent::Connected)) {
            self.connected.send_replace(true);
        }
        event
    }

    /// Opens or closes the audio gates.
    pub fn set_gates(&self, gates: Gates) {
        self.gates.send_replace(gates);
    }

    /// Stops the pumps (a recording is complete when this returns) and closes
    /// the connection.
    pub async fn close(self) {
        let MediaSession { connection, gates, connected, pumps, .. } = self;
        // Dropping the senders also wakes pumps still waiting for a connection.
        connected.send_replace(false);
        drop(connected);
        drop(gates);
        for pump in pumps {
            if tokio::time::timeout(PUMP_STOP, pump).await.is_err() {
                warn!("an audio pump did not stop in time");
            }
        }
        connection.close().await;
    }
}

/// A bitrate in bits per second as the encoder takes it.
pub fn opus_bitrate(bps: u32) -> opus::Bitrate {
    opus::Bitrate::Bits(i32::try_from(bps).unwrap_or(i32::MAX))
}

/// A call's Opus encoder: 48 kHz mono, VoIP, in-band FEC on and protecting
/// against the loss a call assumes before the first report.
pub fn encoder(settings: &CodecSettings) -> Result<opus::Encoder, opus::Error> {
    let mut encoder = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)?;
    encoder.set_bitrate(opus_bitrate(settings.bitrate))?;
    encoder.set_inband_fec(true)?;
    // FEC only helps when the encoder expects loss; the send pump adjusts this
    // from the peer's receiver reports (see `encoder_policy`).
    encoder.set_packet_loss_perc(ExpectedLoss::default().percent())?;
    encoder.set_dtx(settings.dtx)?;
    Ok(encoder)
}
