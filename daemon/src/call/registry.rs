//! The task that owns all calls: it turns API commands into calls and commands to
//! them, takes incoming call requests, and applies the policies: one call at a
//! time (another caller hears "busy"), glare (both sides dial each other: one call
//! survives, the same one on both sides), auto-answer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::machine::{Glare, Input, InvalidCommand, State, resolve_glare};
use super::record::CallRecord;
use super::task::{self, CallCommand, CallContext, CallHandle, Destination};
use crate::audio::{InputSpec, OutputSpec};
use crate::identity::DeviceId;
use crate::reload::LiveSettings;
use crate::signaling::transport::Connection;
use crate::signaling::wire::{Body, CallId, EndCode, Message};

/// Why a call command failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No call has that ID.
    #[error("there is no call {0} (voicectl calls lists them)")]
    NoSuchCall(String),
    /// No call at all.
    #[error("there is no call")]
    NoCall,
    /// Several calls and none named.
    #[error("there are {0} calls: name one (voicectl calls lists them)")]
    WhichCall(usize),
    /// The dial target names no peer we know.
    #[error("no online peer is called {0:?} (voicectl peers lists who is); dial host:port for a peer mDNS cannot see")]
    UnknownPeer(String),
    /// Several peers have that name.
    #[error("{count} online peers are called {name:?}: dial one by device ID")]
    Ambiguous {
        /// The name.
        name: String,
        /// How many.
        count: usize,
    },
    /// The target does not parse.
    #[error("cannot dial {0:?}: {1}")]
    BadTarget(String, String),
    /// Already in a call.
    #[error("already in a call: hang up first (one call at a time)")]
    Busy,
    /// The call refused the command.
    #[error(transparent)]
    Invalid(#[from] InvalidCommand),
    /// The daemon is stopping.
    #[error("the daemon is stopping")]
    Stopped,
}

type Reply = oneshot::Sender<Result<CallRecord, CallError>>;

/// A request from the API.
pub enum RegistryCommand {
    /// Place a call.
    Dial {
        /// Name, device ID, `host:port` or `ID@host:port`.
        target: String,
        /// Overrides of the default audio endpoints.
        input: Option<InputSpec>,
        /// Overrides of the default audio endpoints.
        output: Option<OutputSpec>,
        /// The new call.
        reply: Reply,
    },
    /// A command for one call (or the only one).
    Call {
        /// Which call; `None` for the only one.
        call: Option<CallId>,
        /// What to do.
        input: Input,
        /// For answer: audio overrides.
        audio: (Option<InputSpec>, Option<OutputSpec>),
        /// The call afterwards.
        reply: Reply,
    },
}

/// What reaches the registry from the network side and from call tasks, on one
/// channel so their order is kept (glare depends on it).
pub enum Inbox {
    /// A call request on a new connection.
    Incoming(Box<IncomingRequest>),
    /// The peer told a call of ours to yield to its simultaneous call (glare).
    /// The call waits for the registry to end it.
    Yielded {
        /// The peer.
        peer: DeviceId,
        /// Our call.
        call: CallId,
    },
    /// A call's task ended.
    Finished(CallId),
}

/// How long after our call yielded to glare the peer's call is still its twin.
const GLARE_WINDOW: Duration = Duration::from_secs(10);
/// Call requests one peer may make per window; more are refused, so a broken or
/// hostile peer cannot ring this device without pause.
const REQUESTS_PER_PEER: usize = 10;
const REQUEST_WINDOW: Duration = Duration::from_secs(60);

/// A call request that arrived on a new signaling connection.
pub struct IncomingRequest {
    /// The authenticated connection.
    pub connection: Connection,
    /// The caller's call ID.
    pub call_id: CallId,
    /// The caller's display name.
    pub caller_name: String,
    /// The caller's frame length, which the call adopts.
    pub frame: Option<Duration>,
}

/// The registry's state; `run` owns it.
pub struct Registry {
    context: CallContext,
    settings: watch::Receiver<LiveSettings>,
    calls: HashMap<CallId, CallHandle>,
    /// Peers whose calls ours yielded to, and when.
    yielded: HashMap<DeviceId, Instant>,
    /// Recent call requests by peer.
    requests: HashMap<DeviceId, Vec<Instant>>,
}

impl Registry {
    /// A registry that starts calls with `context`.
    pub fn new(context: CallContext, settings: watch::Receiver<LiveSettings>) -> Self {
        Registry { context, settings, calls: HashMap::new(), yielded: HashMap::new(), requests: HashMap::new() }
    }

    /// Serves until the command channel closes and every call has ended.
    pub async fn run(mut self, mut commands: mpsc::Receiver<RegistryCommand>, mut inbox: mpsc::Receiver<Inbox>) {
        let shutdown = self.context.shutdown.clone();
        loop {
            tokio::select! {
                Some(command) = commands.recv(), if !shutdown.is_cancelled() => self.command(command).await,
                Some(message) = inbox.recv() => match message {
                    Inbox::Incoming(request) if !shutdown.is_cancelled() => self.incoming(*request).await,
                    Inbox::Incoming(request) => { tokio::spawn(request.connection.close()); }
                    Inbox::Yielded { peer, call } => {
                        // Recorded before the call ends, so a request from the peer
                        // that comes later finds the record and one that came
                        // earlier found our call still ringing.
                        // Only our own ringing call to that peer can yield: anything
                        // else would let a caller make us answer by ourselves.
                        let ours = self.calls.get(&call).cloned().filter(|c| {
                            c.direction == super::Direction::Outgoing && self.still_ringing(&c.id)
                        });
                        if let Some(ours) = ours {
                            self.yielded.insert(peer, Instant::now());
                            self.tell(&ours, Input::Remote(Body::End { reason: EndCode::Glare })).await;
                        }
                    }
                    Inbox::Finished(id) => { self.calls.remove(&id); }
                },
                () = shutdown.cancelled(), if self.calls.is_empty() => break,
                else => break,
            }
            if shutdown.is_cancelled() && self.calls.is_empty() {
                break;
            }
        }
    }

    fn context(&self) -> CallContext {
        let mut context = self.context.clone();
        context.own_name = self.settings.borrow().display_name.to_string();
        context
    }

    async fn command(&mut self, command: RegistryCommand) {
        match command {
            RegistryCommand::Dial { target, input, output, reply } => {
                let _ = reply.send(self.dial(&target, input, output).await);
            }
            RegistryCommand::Call { call, input, audio, reply } => {
                let handle = match self.pick(call.as_ref()) {
                    Ok(handle) => handle.clone(),
                    Err(error) => {
                        let _ = reply.send(Err(error));
                        return;
                    }
                };
                let audio = match audio {
                    (None, None) => None,
                    (input, output) => {
                        let live = self.settings.borrow();
                        Some((input.unwrap_or(live.audio_input.clone()), output.unwrap_or(live.audio_output.clone())))
                    }
                };
                // The call's task answers; the registry does not wait for it.
                tokio::spawn(async move {
                    let (tx, rx) = oneshot::channel();
                    let sent = handle.commands.send(CallCommand { input, audio, reply: tx }).await;
                    let outcome = match (sent, rx.await) {
                        (Ok(()), Ok(outcome)) => outcome.map_err(CallError::from),
                        _ => Err(CallError::NoSuchCall(handle.id.to_string())),
                    };
                    let _ = reply.send(outcome);
                });
            }
        }
    }

    fn pick(&self, call: Option<&CallId>) -> Result<&CallHandle, CallError> {
        if let Some(id) = call {
            return self.calls.get(id).ok_or_else(|| CallError::NoSuchCall(id.to_string()));
        }
        // "The only call" means the only one not over yet.
        let state = self.context.hub.state();
        let live: Vec<&CallHandle> = self.calls.values().filter(|c| state.calls.contains_key(&c.id)).collect();
        match live.as_slice() {
            [] => Err(CallError::NoCall),
            [only] => Ok(only),
            many => Err(CallError::WhichCall(many.len())),
        }
    }

    async fn dial(
        &mut self,
        target: &str,
        input: Option<InputSpec>,
        output: Option<OutputSpec>,
    ) -> Result<CallRecord, CallError> {
        let destination = self.resolve(target).await?;
        // Dialing someone who is ringing us right now means answering them (it is
        // also how glare ends when their call arrived before our dial did).
        let ringing_from_them = destination.expected.and_then(|peer| {
            let state = self.context.hub.state();
            self.calls
                .values()
                .find(|c| c.peer == Some(peer) && state.calls.get(&c.id).is_some_and(|r| r.state == State::Incoming))
                .cloned()
        });
        if let Some(theirs) = ringing_from_them {
            info!(call_id = %theirs.id, target, "dialing a peer that is calling us: answering its call");
            let audio = (input.is_some() || output.is_some()).then(|| {
                let live = self.settings.borrow();
                (input.unwrap_or(live.audio_input.clone()), output.unwrap_or(live.audio_output.clone()))
            });
            let (reply, answer) = oneshot::channel();
            let sent = theirs.commands.send(CallCommand { input: Input::Answer, audio, reply }).await;
            return match (sent, answer.await) {
                (Ok(()), Ok(outcome)) => outcome.map_err(CallError::from),
                _ => Err(CallError::NoSuchCall(theirs.id.to_string())),
            };
        }
        if self.live_calls() > 0 {
            return Err(CallError::Busy);
        }
        let (input, output) = {
            let live = self.settings.borrow();
            (input.unwrap_or(live.audio_input.clone()), output.unwrap_or(live.audio_output.clone()))
        };
        let (handle, record) = task::dial(self.context(), destination, input, output);
        info!(call_id = %handle.id, target, "dialing");
        self.calls.insert(handle.id.clone(), handle);
        Ok(record)
    }

    /// Turns a dial target into addresses and the identity to expect.
    async fn resolve(&self, target: &str) -> Result<Destination, CallError> {
        let target = target.trim();
        let bad = |why: &str| CallError::BadTarget(target.to_owned(), why.to_owned());
        if let Some((id, address)) = target.split_once('@') {
            let expected = id.parse::<DeviceId>().map_err(|e| bad(&e.to_string()))?;
            let addresses = lookup(address).await.map_err(|e| bad(&e))?;
            return Ok(Destination { addresses, expected: Some(expected), name: address.to_owned() });
        }
        if let Ok(id) = target.parse::<DeviceId>() {
            let state = self.context.hub.state();
            let peer = state.peers.get(&id).ok_or_else(|| CallError::UnknownPeer(target.to_owned()))?;
            return Ok(Destination {
                addresses: peer_addresses(peer),
                expected: Some(id),
                name: peer.display_name.clone(),
            });
        }
        let state = self.context.hub.state();
        let named: Vec<_> =
            state.peers.values().filter(|p| p.online && p.display_name.eq_ignore_ascii_case(target)).collect();
        match named.as_slice() {
            [peer] => Ok(Destination {
                addresses: peer_addresses(peer),
                expected: Some(peer.device_id),
                name: peer.display_name.clone(),
            }),
            [] if target.contains(':') => {
                let addresses = lookup(target).await.map_err(|e| bad(&e))?;
                Ok(Destination { addresses, expected: None, name: target.to_owned() })
            }
            [] => Err(CallError::UnknownPeer(target.to_owned())),
            many => Err(CallError::Ambiguous { name: target.to_owned(), count: many.len() }),
        }
    }

    async fn incoming(&mut self, request: IncomingRequest) {
        let IncomingRequest { mut connection, call_id, caller_name, frame } = request;
        let peer = connection.peer;
        let own = self.context.identity.device_id;
        if self.calls.contains_key(&call_id) {
            tokio::spawn(connection.refuse(call_id, "that call ID is in use"));
            return;
        }
        let recent = self.requests.entry(peer).or_default();
        recent.retain(|at| at.elapsed() < REQUEST_WINDOW);
        if recent.len() >= REQUESTS_PER_PEER {
            warn!(peer = %peer.short(), "refusing a call request: too many from this peer");
            tokio::spawn(connection.refuse(call_id, "too many call requests; try again in a minute"));
            return;
        }
        recent.push(Instant::now());
        let mut answer_at_once = self.settings.borrow().auto_answer;

        let ours_to_them =
            self.calls.values().find(|c| c.peer == Some(peer) && c.direction == super::Direction::Outgoing).cloned();
        let glare = resolve_glare(own.as_bytes(), peer.as_bytes());
        let recently_yielded = self.yielded.remove(&peer).is_some_and(|at| at.elapsed() < GLARE_WINDOW);
        match (glare, ours_to_them.filter(|c| self.still_ringing(&c.id))) {
            // Both dialed and ours wins: theirs yields on their side too.
            (Glare::KeepOurs, Some(_)) => {
                info!(call_id = %call_id, "glare: both sides dialed; keeping our call");
                let _ = connection.send(&Message::new(call_id, Body::End { reason: EndCode::Glare })).await;
                tokio::spawn(connection.close());
                return;
            }
            // Both dialed and theirs wins: end ours and answer theirs, which is
            // the conversation both asked for.
            (Glare::TakeTheirs, Some(ours)) => {
                info!(call_id = %call_id, "glare: both sides dialed; taking theirs");
                self.tell(&ours, Input::Hangup).await;
                self.calls.remove(&ours.id);
                answer_at_once = true;
            }
            // Ours already yielded to this call (the peer told us first).
            (Glare::TakeTheirs, None) if recently_yielded => answer_at_once = true,
            _ => {}
        }

        if self.live_calls() > 0 {
            info!(peer = %peer.short(), "busy: refusing a second call");
            let _ = connection.send(&Message::new(call_id, Body::Busy)).await;
            tokio::spawn(connection.close());
            return;
        }
        let (input, output) = {
            let live = self.settings.borrow();
            (live.audio_input.clone(), live.audio_output.clone())
        };
        let mut context = self.context();
        if let Some(frame) = frame {
            context.codec.frame = frame;
        }
        let handle = task::incoming(context, connection, call_id, caller_name, input, output);
        if answer_at_once {
            self.tell(&handle, Input::Answer).await;
        }
        self.calls.insert(handle.id.clone(), handle);
    }

    /// Sends a call an input without waiting for its answer.
    async fn tell(&self, call: &CallHandle, input: Input) {
        let (reply, _) = oneshot::channel();
        let _ = call.commands.send(CallCommand { input, audio: None, reply }).await;
    }

    /// Calls not yet over. A call whose end is published but whose task has not
    /// finished yet no longer counts.
    fn live_calls(&self) -> usize {
        let state = self.context.hub.state();
        self.calls.keys().filter(|id| state.calls.contains_key(*id)).count()
    }

    fn still_ringing(&self, id: &CallId) -> bool {
        self.context.hub.state().calls.get(id).is_some_and(|c| c.state == State::Outgoing)
    }
}

/// Addresses to try for a discovered peer: IPv4 first; IPv6 link-local is left
/// out (it needs an interface scope the records do not carry).
fn peer_addresses(peer: &crate::discovery::PeerRecord) -> Vec<SocketAddr> {
    let mut addresses: Vec<IpAddr> = peer
        .addresses
        .iter()
        .copied()
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .collect();
    addresses.sort_by_key(|ip| ip.is_ipv6());
    addresses.into_iter().map(|ip| SocketAddr::new(ip, peer.signaling_port)).collect()
}

async fn lookup(address: &str) -> Result<Vec<SocketAddr>, String> {
    let addresses: Vec<SocketAddr> =
        tokio::net::lookup_host(address).await.map_err(|e| format!("cannot resolve {address}: {e}"))?.collect();
    if addresses.is_empty() { Err(format!("{address} resolves to no address")) } else { Ok(addresses) }
}
