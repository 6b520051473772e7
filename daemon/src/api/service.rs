//! The `voicelink.v1.Voicelink` service: turns RPCs into reads of the published
//! state (and, once calls exist, into commands to the tasks that own them). It
//! holds no state of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use voicelink_proto::v1;
use voicelink_proto::v1::voicelink_server::Voicelink;

use super::convert;
use crate::discovery::PROTOCOL_VERSION;
use crate::events::{EventHub, Update};
use crate::identity::DeviceId;
use crate::reload::LiveSettings;

/// Buffered events per subscriber before it counts as slow (and is resynchronised
/// by the hub rather than holding anything up).
const SUBSCRIBER_BUFFER: usize = 64;

/// Facts about this daemon that do not change while it runs.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    /// This device.
    pub device_id: DeviceId,
    /// When the daemon started.
    pub started: Instant,
    /// Where the signaling listener is bound.
    pub signaling_address: SocketAddr,
    /// Whether mDNS runs.
    pub discovery_enabled: bool,
}

/// The control service.
#[derive(Clone)]
pub struct ControlService {
    info: Arc<DaemonInfo>,
    settings: watch::Receiver<LiveSettings>,
    hub: EventHub,
    shutdown: CancellationToken,
}

impl ControlService {
    /// A service answering from `hub` and `settings`; its streams end when
    /// `shutdown` fires.
    pub fn new(
        info: DaemonInfo,
        settings: watch::Receiver<LiveSettings>,
        hub: EventHub,
        shutdown: CancellationToken,
    ) -> Self {
        ControlService { info: Arc::new(info), settings, hub, shutdown }
    }
}

fn not_in_this_build(what: &str) -> Status {
    Status::unimplemented(format!(
        "voiced {} cannot {what} yet: the call engine is not part of this build \
         (status, peers and the event feed work)",
        env!("CARGO_PKG_VERSION")
    ))
}

type Rpc<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Voicelink for ControlService {
    async fn get_status(&self, _: Request<v1::GetStatusRequest>) -> Rpc<v1::Status> {
        let info = &self.info;
        let settings = self.settings.borrow().clone();
        Ok(Response::new(v1::Status {
            version: env!("CARGO_PKG_VERSION").into(),
            device_id: info.device_id.to_string(),
            display_name: settings.display_name.to_string(),
            uptime: Some(convert::duration(info.started.elapsed())),
            signaling_addresses: vec![info.signaling_address.to_string()],
            signaling_port: u32::from(info.signaling_address.port()),
            protocol_version: PROTOCOL_VERSION,
            audio_input: settings.audio_input.to_string(),
            audio_output: settings.audio_output.to_string(),
            discovery_enabled: info.discovery_enabled,
        }))
    }

    async fn list_peers(&self, request: Request<v1::ListPeersRequest>) -> Rpc<v1::ListPeersResponse> {
        let include_offline = request.into_inner().include_offline;
        let state = self.hub.state();
        let peers = state.peers.values().filter(|p| p.online || include_offline).map(convert::peer).collect();
        Ok(Response::new(v1::ListPeersResponse { peers }))
    }

    async fn dial(&self, _: Request<v1::DialRequest>) -> Rpc<v1::DialResponse> {
        Err(not_in_this_build("place calls"))
    }

    async fn answer(&self, _: Request<v1::AnswerRequest>) -> Rpc<v1::AnswerResponse> {
        Err(not_in_this_build("answer calls"))
    }

    async fn decline(&self, _: Request<v1::DeclineRequest>) -> Rpc<v1::DeclineResponse> {
        Err(not_in_this_build("decline calls"))
    }

    async fn hangup(&self, _: Request<v1::HangupRequest>) -> Rpc<v1::HangupResponse> {
        Err(not_in_this_build("hang up calls"))
    }

    async fn set_mute(&self, _: Request<v1::SetMuteRequest>) -> Rpc<v1::SetMuteResponse> {
        Err(not_in_this_build("mute calls"))
    }

    async fn set_hold(&self, _: Request<v1::SetHoldRequest>) -> Rpc<v1::SetHoldResponse> {
        Err(not_in_this_build("hold calls"))
    }

    async fn list_calls(&self, _: Request<v1::ListCallsRequest>) -> Rpc<v1::ListCallsResponse> {
        // True, not a placeholder: no call can exist in this build.
        Ok(Response::new(v1::ListCallsResponse { calls: Vec::new() }))
    }

    type WatchEventsStream = ReceiverStream<Result<v1::Event, Status>>;

    async fn watch_events(&self, _: Request<v1::WatchEventsRequest>) -> Rpc<Self::WatchEventsStream> {
        let (sender, receiver) = mpsc::channel(SUBSCRIBER_BUFFER);
        let mut subscription = self.hub.subscribe();
        let shutdown = self.shutdown.clone();
        // One task per subscriber: it ends when the client goes away or the daemon
        // stops, so a graceful shutdown never waits on an open stream.
        tokio::spawn(async move {
            loop {
                let update = tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = sender.closed() => break,
                    update = subscription.next() => match update {
                        Some(update) => update,
                        None => break,
                    },
                };
                let event = match &update {
                    Update::State(state, why) => convert::snapshot(state, *why),
                    Update::Change(published) => convert::event(published),
                };
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    sent = sender.send(Ok(event)) => if sent.is_err() { break },
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    type WatchStatsStream = ReceiverStream<Result<v1::CallStats, Status>>;

    async fn watch_stats(&self, _: Request<v1::WatchStatsRequest>) -> Rpc<Self::WatchStatsStream> {
        Err(not_in_this_build("report call statistics"))
    }

    async fn list_audio_devices(&self, _: Request<v1::ListAudioDevicesRequest>) -> Rpc<v1::ListAudioDevicesResponse> {
        Err(not_in_this_build("list audio devices"))
    }

    async fn set_audio_devices(&self, _: Request<v1::SetAudioDevicesRequest>) -> Rpc<v1::SetAudioDevicesResponse> {
        Err(not_in_this_build("change audio devices"))
    }
}
