//! The `voicelink.v1.Voicelink` service: turns RPCs into reads of the published
//! state (and, once calls exist, into commands to the tasks that own them). It
//! holds no state of its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use voicelink_proto::v1;
use voicelink_proto::v1::voicelink_server::Voicelink;

use voicelink_core::audio_spec::{InputSpec, OutputSpec, SpecError};
use voicelink_core::call_machine::Command;
use voicelink_core::call_record::CallRecord;
use voicelink_core::contacts::Standing;
use voicelink_core::history::HistoryQuery;
use voicelink_core::reload::LiveSettings;
use voicelink_core::safety_number::SafetyNumber;
use voicelink_core::switchboard::CallError;
use voicelink_core::vocab::{CallId, DeviceId, PROTOCOL_VERSION, State, excerpt};
use voicelink_core::voice_processing::ProcessingChange;
use voicelink_core::wire::MAX_TEXT_BYTES;

use super::convert;
use crate::audio::device_watch::Devices;
use crate::audio::input_level::{self, LevelError};
use crate::call::registry::RegistryCommand;
use crate::events::{EventHub, Update};
use crate::settings::{ConfigView, SettingsCommand, SettingsError};
use crate::stats::{Sample, StatsBoard};
use crate::store::Store;

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
    registry: mpsc::Sender<RegistryCommand>,
    config: mpsc::Sender<SettingsCommand>,
    store: Store,
    settings: watch::Receiver<LiveSettings>,
    settings_tx: Arc<watch::Sender<LiveSettings>>,
    hub: EventHub,
    stats: StatsBoard,
    devices: Devices,
    shutdown: CancellationToken,
}

/// The tasks and shared state the service answers from.
pub struct Backends {
    /// The call registry.
    pub registry: mpsc::Sender<RegistryCommand>,
    /// The config task.
    pub config: mpsc::Sender<SettingsCommand>,
    /// Known devices and history.
    pub store: Store,
    /// The live settings (audio defaults are set here too).
    pub settings: Arc<watch::Sender<LiveSettings>>,
    /// Published state and changes.
    pub hub: EventHub,
    /// Calls' statistics.
    pub stats: StatsBoard,
    /// The sound devices, as last listed.
    pub devices: Devices,
}

impl ControlService {
    /// A service answering from `backends`; its streams end when `shutdown` fires.
    pub fn new(info: DaemonInfo, backends: Backends, shutdown: CancellationToken) -> Self {
        let Backends { registry, config, store, settings: settings_tx, hub, stats, devices } = backends;
        let settings = settings_tx.subscribe();
        ControlService {
            info: Arc::new(info),
            registry,
            config,
            store,
            settings,
            settings_tx,
            hub,
            stats,
            devices,
            shutdown,
        }
    }

    /// Sends a request to the config task and waits for its answer.
    async fn ask_config(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<ConfigView, SettingsError>>) -> SettingsCommand,
    ) -> Result<ConfigView, Status> {
        let (reply, answer) = oneshot::channel();
        self.config.send(make(reply)).await.map_err(|_| Status::unavailable("the daemon is stopping"))?;
        answer.await.map_err(|_| Status::unavailable("the daemon is stopping"))?.map_err(|error| match error {
            SettingsError::Edit(_) => Status::invalid_argument(error.to_string()),
            SettingsError::File { .. } | SettingsError::NoFile => Status::failed_precondition(error.to_string()),
        })
    }

    /// The device a user names: a device ID, the alias or a name of a known
    /// device, or the name of an online peer (never a stranger using a known
    /// device's name).
    fn device_named(&self, text: &str) -> Result<DeviceId, Status> {
        let text = text.trim();
        if let Ok(id) = text.parse::<DeviceId>() {
            return Ok(id);
        }
        let shown: String = text.chars().take(64).collect();
        let contacts = self.store.contacts();
        let contacts = contacts.borrow();
        let state = self.hub.state();
        let online = state.peers.values().filter(|p| p.online).map(|p| (&p.device_id, p.display_name.as_str()));
        let mut meant = contacts.resolve(text, online);
        if meant.is_empty() {
            // A known device that is offline: by its alias or a name it used.
            meant = contacts.iter().filter(|c| c.answers_to(text)).map(|c| c.device_id).collect();
        }
        match meant.as_slice() {
            [id] => Ok(*id),
            [] => Err(Status::not_found(format!(
                "no known device or online peer is called {shown:?} (voicectl contacts and voicectl peers list them)"
            ))),
            many => Err(Status::failed_precondition(format!(
                "{} devices are called {shown:?}: name one by device ID",
                many.len()
            ))),
        }
    }

    /// The user decides about a device before any call with it: remember the
    /// name it advertises now, so a stranger that takes the name later is
    /// flagged as it would be for a device known from a call.
    fn remember_advertised_name(&self, device: DeviceId) {
        let already_named = self.store.contacts().borrow().get(&device).is_some_and(|c| !c.names.is_empty());
        let advertised = self.hub.state().peers.get(&device).map(|peer| peer.display_name.clone());
        if let (false, Some(name)) = (already_named, advertised) {
            self.store.met(device, name, SystemTime::now());
        }
    }

    /// Sends a command to the call registry and waits for its answer.
    async fn ask(&self, make: impl FnOnce(Reply) -> RegistryCommand) -> Result<v1::Call, Status> {
        let (reply, answer) = oneshot::channel();
        self.registry.send(make(reply)).await.map_err(|_| Status::unavailable("the daemon is stopping"))?;
        let record = answer.await.map_err(|_| Status::unavailable("the daemon is stopping"))?.map_err(status)?;
        Ok(convert::call(&record))
    }

    async fn call_command(&self, call_id: String, input: Command, audio: (String, String)) -> Result<v1::Call, Status> {
        let call = optional_call_id(call_id)?;
        let audio = (spec::<InputSpec>(&audio.0)?, spec::<OutputSpec>(&audio.1)?);
        self.ask(|reply| RegistryCommand::Call { call, input, audio, recording_file: None, reply }).await
    }
}

type Reply = oneshot::Sender<Result<CallRecord, CallError>>;

/// The longest file path the API takes (PATH_MAX on Linux).
const MAX_PATH_BYTES: usize = 4096;

fn status(error: CallError) -> Status {
    let message = error.to_string();
    match error {
        CallError::NoSuchCall(_) | CallError::NoCall | CallError::UnknownPeer(_) => Status::not_found(message),
        CallError::WhichCall(_) | CallError::Ambiguous { .. } | CallError::BadTarget(..) => {
            Status::invalid_argument(message)
        }
        CallError::Busy
        | CallError::Invalid(_)
        | CallError::NameTaken(_)
        | CallError::NotAnswered
        | CallError::AlreadyInCall(_)
        | CallError::NothingToMerge
        | CallError::GroupFull
        | CallError::TooOld(..) => Status::failed_precondition(message),
        CallError::Stopped => Status::unavailable(message),
    }
}

/// Stats samples buffered per subscriber: few, so one that falls behind gets
/// recent samples when it catches up, not a backlog of old ones.
const STATS_BUFFER: usize = 4;

/// Bounds of a stats subscription's interval.
const STATS_INTERVALS: std::ops::RangeInclusive<Duration> = Duration::from_millis(100)..=Duration::from_secs(10);

fn stats_interval(requested: Option<prost_types::Duration>) -> Result<Duration, Status> {
    interval_or(requested, Duration::from_secs(1))
}

/// The interval a client asked for (100 ms to 10 s), or `default`.
fn interval_or(requested: Option<prost_types::Duration>, default: Duration) -> Result<Duration, Status> {
    let Some(requested) = requested else { return Ok(default) };
    Duration::try_from(requested).ok().filter(|interval| STATS_INTERVALS.contains(interval)).ok_or_else(|| {
        let millis = i128::from(requested.seconds) * 1000 + i128::from(requested.nanos) / 1_000_000;
        Status::invalid_argument(format!("an interval must be between 100 ms and 10 s (asked for {millis} ms)"))
    })
}

fn optional_call_id(call_id: String) -> Result<Option<CallId>, Status> {
    if call_id.is_empty() {
        return Ok(None);
    }
    CallId::try_from(call_id).map(Some).map_err(Status::invalid_argument)
}

/// The longest value `SetConfig` takes: an audio spec with a path.
const MAX_CONFIG_VALUE_BYTES: usize = voicelink_core::audio_spec::MAX_SPEC_BYTES + 64;

/// Tells a stream's client the daemon is stopping (so it knows the stream did
/// not just end), if its buffer has room.
fn stopping<T>(stream: &mpsc::Sender<Result<T, Status>>) {
    let _ = stream.try_send(Err(Status::unavailable("voiced is stopping")));
}

/// An optional endpoint spec from a request: empty means "the default".
fn spec<T: std::str::FromStr<Err = SpecError>>(text: &str) -> Result<Option<T>, Status> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|e: SpecError| Status::invalid_argument(e.to_string()))
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
            history_problem: self.store.problem().unwrap_or_default(),
            history_database: self.store.path().map(|p| p.display().to_string()).unwrap_or_default(),
            who_may_ring: settings.calls.who_may_ring.to_string(),
            auto_answer: settings.calls.auto_answer.to_string(),
            do_not_disturb: settings.calls.do_not_disturb,
        }))
    }

    async fn list_peers(&self, request: Request<v1::ListPeersRequest>) -> Rpc<v1::ListPeersResponse> {
        let include_offline = request.into_inner().include_offline;
        let state = self.hub.state();
        let contacts = self.store.contacts();
        let contacts = contacts.borrow();
        let peers =
            state.peers.values().filter(|p| p.online || include_offline).map(|p| convert::peer(p, &contacts)).collect();
        Ok(Response::new(v1::ListPeersResponse { peers }))
    }

    async fn dial(&self, request: Request<v1::DialRequest>) -> Rpc<v1::DialResponse> {
        let request = request.into_inner();
        if request.target.trim().is_empty() {
            return Err(Status::invalid_argument("say whom to call: a name, a device ID or host:port"));
        }
        let (input, output) = (spec::<InputSpec>(&request.audio_input)?, spec::<OutputSpec>(&request.audio_output)?);
        let call = self.ask(|reply| RegistryCommand::Dial { target: request.target, input, output, reply }).await?;
        Ok(Response::new(v1::DialResponse { call: Some(call) }))
    }

    async fn add_participant(&self, request: Request<v1::AddParticipantRequest>) -> Rpc<v1::AddParticipantResponse> {
        let request = request.into_inner();
        if request.target.trim().is_empty() {
            return Err(Status::invalid_argument("say whom to add: a name or a device ID"));
        }
        let call = optional_call_id(request.call_id)?;
        let call = self.ask(|reply| RegistryCommand::Add { call, target: request.target, reply }).await?;
        Ok(Response::new(v1::AddParticipantResponse { call: Some(call) }))
    }

    async fn answer(&self, request: Request<v1::AnswerRequest>) -> Rpc<v1::AnswerResponse> {
        let r = request.into_inner();
        let call = optional_call_id(r.call_id)?;
        let audio = (spec::<InputSpec>(&r.audio_input)?, spec::<OutputSpec>(&r.audio_output)?);
        let call = self.ask(|reply| RegistryCommand::Answer { call, merge: r.merge, audio, reply }).await?;
        Ok(Response::new(v1::AnswerResponse { call: Some(call) }))
    }

    async fn decline(&self, request: Request<v1::DeclineRequest>) -> Rpc<v1::DeclineResponse> {
        let r = request.into_inner();
        if r.reason.len() > MAX_TEXT_BYTES {
            return Err(Status::invalid_argument(format!("the reason is longer than {MAX_TEXT_BYTES} bytes")));
        }
        self.call_command(r.call_id, Command::Decline(r.reason), Default::default()).await?;
        Ok(Response::new(v1::DeclineResponse {}))
    }

    async fn hangup(&self, request: Request<v1::HangupRequest>) -> Rpc<v1::HangupResponse> {
        self.call_command(request.into_inner().call_id, Command::Hangup, Default::default()).await?;
        Ok(Response::new(v1::HangupResponse {}))
    }

    async fn set_mute(&self, request: Request<v1::SetMuteRequest>) -> Rpc<v1::SetMuteResponse> {
        let r = request.into_inner();
        let call = self.call_command(r.call_id, Command::SetMute(r.muted), Default::default()).await?;
        Ok(Response::new(v1::SetMuteResponse { call: Some(call) }))
    }

    async fn set_speaker_mute(&self, request: Request<v1::SetSpeakerMuteRequest>) -> Rpc<v1::SetSpeakerMuteResponse> {
        let r = request.into_inner();
        let call = self.call_command(r.call_id, Command::SetSpeakerMute(r.muted), Default::default()).await?;
        Ok(Response::new(v1::SetSpeakerMuteResponse { call: Some(call) }))
    }

    async fn set_audio_processing(
        &self,
        request: Request<v1::SetAudioProcessingRequest>,
    ) -> Rpc<v1::SetAudioProcessingResponse> {
        let r = request.into_inner();
        let change = ProcessingChange {
            echo_cancellation: r.echo_cancellation,
            noise_suppression: r.noise_suppression,
            gain_control: r.gain_control,
        };
        if change.is_empty() {
            return Err(Status::invalid_argument(
                "name at least one stage to turn on or off: echo_cancellation, noise_suppression, gain_control",
            ));
        }
        let call = self.call_command(r.call_id, Command::SetProcessing(change), Default::default()).await?;
        Ok(Response::new(v1::SetAudioProcessingResponse { call: Some(call) }))
    }

    async fn set_hold(&self, request: Request<v1::SetHoldRequest>) -> Rpc<v1::SetHoldResponse> {
        let r = request.into_inner();
        let call = self.call_command(r.call_id, Command::SetHold(r.on_hold), Default::default()).await?;
        Ok(Response::new(v1::SetHoldResponse { call: Some(call) }))
    }

    async fn set_recording(&self, request: Request<v1::SetRecordingRequest>) -> Rpc<v1::SetRecordingResponse> {
        let r = request.into_inner();
        let call = optional_call_id(r.call_id)?;
        let recording_file = match r.file.as_str() {
            "" => None,
            _ if r.file.len() > MAX_PATH_BYTES => {
                return Err(Status::invalid_argument(format!(
                    "the recording's file name is {} bytes long; at most {MAX_PATH_BYTES} are allowed",
                    r.file.len()
                )));
            }
            path if !Path::new(path).is_absolute() => {
                return Err(Status::invalid_argument(format!(
                    "the recording's file must be an absolute path, not {path:?} (the daemon's folder is not yours)"
                )));
            }
            path => Some(PathBuf::from(path)),
        };
        let input = Command::SetRecording(r.recording);
        let call =
            self.ask(|reply| RegistryCommand::Call { call, input, audio: (None, None), recording_file, reply }).await?;
        Ok(Response::new(v1::SetRecordingResponse { call: Some(call) }))
    }

    async fn list_contacts(&self, _: Request<v1::ListContactsRequest>) -> Rpc<v1::ListContactsResponse> {
        if let Some(problem) = self.store.problem() {
            return Err(Status::failed_precondition(problem));
        }
        let contacts = self.store.contacts();
        let contacts = contacts.borrow().iter().map(convert::contact).collect();
        Ok(Response::new(v1::ListContactsResponse { contacts }))
    }

    async fn set_contact(&self, request: Request<v1::SetContactRequest>) -> Rpc<v1::SetContactResponse> {
        use v1::set_contact_request::Change as Set;
        let r = request.into_inner();
        let device = self.device_named(&r.device)?;
        let done = match r.change {
            None => return Err(Status::invalid_argument("say what to change: alias, standing or forget")),
            Some(Set::Alias(alias)) => {
                let alias = alias.trim().to_owned();
                if alias.len() > voicelink_core::vocab::MAX_NAME_BYTES || alias.chars().any(char::is_control) {
                    return Err(Status::invalid_argument(format!(
                        "an alias is at most {} bytes of text without control characters",
                        voicelink_core::vocab::MAX_NAME_BYTES
                    )));
                }
                self.remember_advertised_name(device);
                self.store.set_alias(device, Some(alias).filter(|a| !a.is_empty())).await
            }
            Some(Set::Standing(word)) => match Standing::parse(&word) {
                Some(standing) => {
                    self.remember_advertised_name(device);
                    self.store.set_standing(device, standing).await
                }
                None => {
                    let shown: String = word.chars().take(32).collect();
                    return Err(Status::invalid_argument(format!(
                        "{shown:?} is not a standing; use known, trusted or blocked"
                    )));
                }
            },
            Some(Set::Forget(_)) => self.store.forget(device).await.map(drop),
        };
        done.map_err(|error| Status::failed_precondition(error.to_string()))?;
        let contacts = self.store.contacts();
        let contact = contacts.borrow().get(&device).map(convert::contact);
        Ok(Response::new(v1::SetContactResponse { contact }))
    }

    async fn verify_peer(&self, request: Request<v1::VerifyPeerRequest>) -> Rpc<v1::VerifyPeerResponse> {
        let r = request.into_inner();
        let call = optional_call_id(r.call_id)?;
        let record = {
            let state = self.hub.state();
            let calls: Vec<&CallRecord> = state.calls.values().collect();
            let found = match &call {
                Some(id) => calls.iter().find(|c| &c.id == id).copied(),
                None if calls.len() == 1 => calls.first().copied(),
                None if calls.is_empty() => return Err(Status::not_found("there is no call")),
                None => return Err(Status::failed_precondition(format!("there are {} calls: name one", calls.len()))),
            };
            found.cloned().ok_or_else(|| Status::not_found("there is no such call (voicectl calls lists them)"))?
        };
        // Only a connected call's peer has proven its key.
        let (Some(peer), State::Active | State::OnHold) = (record.peer, record.state) else {
            return Err(Status::failed_precondition(
                "verify a call once it is answered: before that the peer has not proven its key",
            ));
        };
        let number = SafetyNumber::of(&self.info.device_id, &peer);
        if let Some(verified) = r.verified {
            self.store.set_verified(peer, verified).await.map_err(|e| Status::failed_precondition(e.to_string()))?;
        }
        let contacts = self.store.contacts();
        let verified = contacts.borrow().get(&peer).is_some_and(|c| c.verified);
        Ok(Response::new(v1::VerifyPeerResponse {
            safety_number: number.to_string(),
            peer_device_id: peer.to_string(),
            peer_display_name: record.peer_name,
            verified,
        }))
    }

    async fn list_history(&self, request: Request<v1::ListHistoryRequest>) -> Rpc<v1::ListHistoryResponse> {
        let r = request.into_inner();
        // A device we know (or one online), else whoever had that name.
        let (peer, peer_name) = match r.peer.as_str() {
            "" => (None, None),
            name => match self.device_named(name) {
                Ok(device) => (Some(device), None),
                Err(_) if name.len() <= voicelink_core::vocab::MAX_NAME_BYTES => (None, Some(name.to_owned())),
                Err(status) => return Err(status),
            },
        };
        let before = match r.page_token.as_str() {
            "" => None,
            token => {
                Some(token.parse::<i64>().map_err(|_| Status::invalid_argument("the page token is not one we gave"))?)
            }
        };
        let since = match r.since {
            None => None,
            Some(since) => Some(
                std::time::SystemTime::try_from(since)
                    .map_err(|_| Status::invalid_argument("`since` is not a time"))?,
            ),
        };
        let limit = match r.limit {
            0 => 50,
            n => n.min(1000) as usize,
        };
        let query = HistoryQuery { missed_only: r.missed_only, peer, peer_name, since, limit, before };
        let page = self.store.history(query).await.map_err(|e| Status::failed_precondition(e.to_string()))?;
        let next_page_token = match page.entries.last() {
            Some((id, _)) if page.entries.len() == limit => id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(v1::ListHistoryResponse {
            entries: page.entries.iter().map(|(_, entry)| convert::history_entry(entry)).collect(),
            next_page_token,
            unseen_missed: page.unseen_missed,
            newest_token: page.entries.first().map(|(id, _)| id.to_string()).unwrap_or_default(),
        }))
    }

    async fn mark_missed_seen(&self, request: Request<v1::MarkMissedSeenRequest>) -> Rpc<v1::MarkMissedSeenResponse> {
        let up_to = match request.into_inner().up_to.as_str() {
            "" => None,
            token => {
                Some(token.parse::<i64>().map_err(|_| Status::invalid_argument("`up_to` is not a token we gave"))?)
            }
        };
        let marked =
            self.store.mark_missed_seen(up_to).await.map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(v1::MarkMissedSeenResponse { marked }))
    }

    async fn list_calls(&self, _: Request<v1::ListCallsRequest>) -> Rpc<v1::ListCallsResponse> {
        let contacts = self.store.contacts();
        let contacts = contacts.borrow();
        let calls = self.hub.state().calls.values().map(|c| convert::flagged_call(c, &contacts)).collect();
        Ok(Response::new(v1::ListCallsResponse { calls }))
    }

    type WatchEventsStream = ReceiverStream<Result<v1::Event, Status>>;

    async fn watch_events(&self, _: Request<v1::WatchEventsRequest>) -> Rpc<Self::WatchEventsStream> {
        let (sender, receiver) = mpsc::channel(SUBSCRIBER_BUFFER);
        let mut subscription = self.hub.subscribe();
        let shutdown = self.shutdown.clone();
        let contacts = self.store.contacts();
        // One task per subscriber: it ends when the client goes away or the daemon
        // stops, so a graceful shutdown never waits on an open stream.
        tokio::spawn(async move {
            loop {
                let update = tokio::select! {
                    () = shutdown.cancelled() => {
                        stopping(&sender);
                        break;
                    }
                    () = sender.closed() => break,
                    update = subscription.next() => match update {
                        Some(update) => update,
                        None => break,
                    },
                };
                let event = {
                    let contacts = contacts.borrow();
                    match &update {
                        Update::State(state, why) => convert::snapshot(state, *why, &contacts),
                        Update::Change(published) => convert::event(published, &contacts),
                    }
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

    async fn watch_stats(&self, request: Request<v1::WatchStatsRequest>) -> Rpc<Self::WatchStatsStream> {
        let request = request.into_inner();
        let interval = stats_interval(request.interval)?;
        let call = optional_call_id(request.call_id)?;
        let mut subscription =
            self.stats.subscribe(call, interval).map_err(|error| Status::not_found(error.to_string()))?;
        let (sender, receiver) = mpsc::channel(STATS_BUFFER);
        let shutdown = self.shutdown.clone();
        // One task per subscriber, reading the board at its own pace: a client
        // that stops reading fills its own buffer and skips samples, nothing more.
        tokio::spawn(async move {
            loop {
                let stats = tokio::select! {
                    () = shutdown.cancelled() => {
                        stopping(&sender);
                        break;
                    }
                    () = sender.closed() => break,
                    stats = subscription.next() => match stats {
                        Some(stats) => stats,
                        None => break,
                    },
                };
                let last = matches!(&stats, Sample::Call(call) if call.summary.is_some());
                let sample = Ok(match &stats {
                    Sample::Call(call) => convert::call_stats(call),
                    Sample::Group(group) => convert::group_stats(group),
                });
                if last {
                    // A call's last sample is worth waiting for.
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        sent = sender.send(sample) => if sent.is_err() { break },
                    }
                } else if let Err(mpsc::error::TrySendError::Closed(_)) = sender.try_send(sample) {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    type WatchInputLevelStream = ReceiverStream<Result<v1::InputLevel, Status>>;

    async fn watch_input_level(
        &self,
        request: Request<v1::WatchInputLevelRequest>,
    ) -> Rpc<Self::WatchInputLevelStream> {
        let request = request.into_inner();
        let interval = interval_or(request.interval, Duration::from_millis(100))?;
        let input = spec::<InputSpec>(&request.input)?.unwrap_or_else(|| self.settings.borrow().audio_input.clone());
        let name = input.to_string();
        // Opening a sound card blocks.
        let source = tokio::task::spawn_blocking(move || input_level::open(&input))
            .await
            .map_err(|e| Status::internal(format!("opening the input failed: {e}")))?
            .map_err(|error| match error {
                LevelError::Echo => Status::invalid_argument(error.to_string()),
                LevelError::Endpoint(_) => Status::failed_precondition(error.to_string()),
            })?;
        let (readings_tx, mut readings) = mpsc::channel(STATS_BUFFER);
        tokio::spawn(input_level::watch(source, interval, readings_tx, self.shutdown.clone()));
        let (sender, receiver) = mpsc::channel(STATS_BUFFER);
        // Ends when the client goes away; the meter then sees its channel close.
        tokio::spawn(async move {
            while let Some(reading) = readings.recv().await {
                let level = v1::InputLevel {
                    input: name.clone(),
                    level_dbfs: reading.level_dbfs,
                    peak_dbfs: reading.peak_dbfs,
                };
                if sender.send(Ok(level)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn list_audio_devices(&self, _: Request<v1::ListAudioDevicesRequest>) -> Rpc<v1::ListAudioDevicesResponse> {
        // As the device watch last listed them (listing blocks: ALSA opens each one).
        let devices = self.devices.borrow().clone();
        Ok(Response::new(v1::ListAudioDevicesResponse {
            inputs: devices.inputs.iter().map(convert::audio_device).collect(),
            outputs: devices.outputs.iter().map(convert::audio_device).collect(),
            virtual_endpoints: ["default", "tone:HZ", "file:PATH.wav", "silence", "echo", "null"]
                .map(String::from)
                .to_vec(),
        }))
    }

    async fn set_audio_devices(
        &self,
        request: Request<v1::SetAudioDevicesRequest>,
    ) -> Rpc<v1::SetAudioDevicesResponse> {
        let r = request.into_inner();
        let (input, output) = (spec::<InputSpec>(&r.audio_input)?, spec::<OutputSpec>(&r.audio_output)?);
        // Take effect for calls that start from now on, until the next reload of
        // the config file.
        let mut changed = None;
        self.settings_tx.send_modify(|live| {
            if let Some(input) = input {
                live.audio_input = input;
            }
            if let Some(output) = output {
                live.audio_output = output;
            }
            changed = Some((live.audio_input.clone(), live.audio_output.clone()));
        });
        let (input, output) = changed.unwrap_or((InputSpec::Default, OutputSpec::Default));
        self.hub.publish(crate::events::Change::AudioDefaults { input: input.clone(), output: output.clone() });
        Ok(Response::new(v1::SetAudioDevicesResponse {
            audio_input: input.to_string(),
            audio_output: output.to_string(),
        }))
    }

    async fn get_config(&self, request: Request<v1::GetConfigRequest>) -> Rpc<v1::GetConfigResponse> {
        let key = Some(request.into_inner().key).filter(|k| !k.is_empty());
        let view = self.ask_config(|reply| SettingsCommand::Get { key, reply }).await?;
        Ok(Response::new(v1::GetConfigResponse {
            entries: view.entries.iter().map(convert::config_entry).collect(),
            path: view.path.map(|p| p.display().to_string()).unwrap_or_default(),
        }))
    }

    async fn set_config(&self, request: Request<v1::SetConfigRequest>) -> Rpc<v1::SetConfigResponse> {
        let r = request.into_inner();
        // Every key is short; no value needs more than a long path (the error
        // would otherwise echo what was sent).
        if r.key.len() > 64 || r.value.len() > MAX_CONFIG_VALUE_BYTES {
            return Err(Status::invalid_argument(format!(
                "config key {:?} or its value is too long (a key is at most 64 bytes, a value {MAX_CONFIG_VALUE_BYTES})",
                excerpt(&r.key)
            )));
        }
        let value = (!r.unset).then_some(r.value);
        let view = self.ask_config(|reply| SettingsCommand::Set { key: r.key, value, reply }).await?;
        Ok(Response::new(v1::SetConfigResponse {
            entry: view.entries.first().map(convert::config_entry),
            path: view.path.map(|p| p.display().to_string()).unwrap_or_default(),
        }))
    }
}
