//! LAN discovery: the task that advertises this daemon by mDNS (mdns-sd), browses
//! for the others, owns the peer table and publishes its changes.
//!
//! Liveness: mDNS only notices a peer that vanished without a goodbye when its
//! records expire (about two minutes). The task therefore asks mdns-sd to verify
//! online peers every few seconds (a few each round, in turn); a peer that does
//! not answer is removed from the cache, which we see as a removal while a
//! verification is outstanding. A daemon that shuts down cleanly first
//! re-announces itself with a signed `bye=1` (and waits until mdns-sd has sent
//! it) and then sends the mDNS goodbye, so its peers can tell "left" from "lost"
//! without guessing.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use mdns_sd::{DaemonEvent, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use voicelink_core::advert::{Advert, PROTOCOL_VERSION, SERVICE_TYPE};
use voicelink_core::peer_table::{MAX_PEERS, PeerChange, PeerTable, Removal};

use crate::clock;
use crate::events::{Change, EventHub};
use crate::identity::Identity;
use crate::logging::Throttle;
use proof::{AdvertSigner, SigningError};
use voicelink_core::reload::LiveSettings;
use voicelink_core::vocab::DeviceId;

/// How often online peers are asked to confirm they are still there.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(3);
/// Peers asked per round, in turn: however many adverts a LAN floods us with,
/// our own queries stay at a few a second.
const VERIFY_PER_ROUND: usize = 8;
/// How long a peer has to answer a verification.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(1);
/// A removal this long after a verification was sent is still that verification's.
const VERIFY_WINDOW: Duration = Duration::from_millis(2500);
/// How long an offline peer stays listed.
const OFFLINE_RETENTION: Duration = Duration::from_secs(600);
/// How far apart mdns-sd's announcements on different interfaces may be (it
/// jitters each by up to 50 ms).
const ANNOUNCE_SPREAD: Duration = Duration::from_millis(200);
/// How long shutdown waits for mdns-sd to send the goodbye.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

pub mod proof;

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The mDNS responder failed.
    #[error("cannot start mDNS discovery: {0}")]
    Mdns(#[from] mdns_sd::Error),
    /// Our adverts cannot be signed.
    #[error(transparent)]
    Signing(#[from] SigningError),
}

/// What this daemon advertises.
#[derive(Debug, Clone)]
pub struct OwnAdvert {
    /// This device.
    pub device_id: DeviceId,
    /// Its display name.
    pub display_name: String,
    /// Its signaling port.
    pub signaling_port: u16,
}

/// A running discovery: the mDNS responder and browser, before its task is spawned.
pub struct Discovery {
    mdns: ServiceDaemon,
    events: mdns_sd::Receiver<ServiceEvent>,
    own: OwnAdvert,
    fullname: String,
    signer: AdvertSigner,
}

impl Discovery {
    /// Starts the mDNS daemon, registers this device and starts browsing.
    pub fn start(own: OwnAdvert, identity: &Identity) -> Result<Discovery, DiscoveryError> {
        let mut signer = AdvertSigner::new(identity)?;
        let mdns = ServiceDaemon::new()?;
        let info = service_info(&own, false, &mut signer)?;
        let fullname = info.get_fullname().to_owned();
        mdns.register(info)?;
        let events = mdns.browse(SERVICE_TYPE)?;
        info!(instance = %fullname, port = own.signaling_port, "advertising on the LAN by mDNS");
        Ok(Discovery { mdns, events, own, fullname, signer })
    }

    /// Runs until `shutdown`, then says goodbye. A new display name on `settings`
    /// is advertised at once.
    pub async fn run(self, hub: EventHub, mut settings: watch::Receiver<LiveSettings>, shutdown: CancellationToken) {
        let Discovery { mdns, events, mut own, fullname, mut signer } = self;
        let mut table = PeerTable::new(own.device_id, OFFLINE_RETENTION);
        // Instance full name → when its last verification was sent.
        let mut verifying: HashMap<String, Instant> = HashMap::new();
        // Where the next liveness round starts among the online instances.
        let mut next_to_verify = 0;
        let mut turned_away = Throttle::new(Duration::from_secs(10));
        let mut turned_away_total = 0;
        let mut disbelieved = Throttle::new(Duration::from_secs(10));
        let mut disbelieved_total = 0;
        let mut liveness = tokio::time::interval(LIVENESS_INTERVAL);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            let expiry = table.next_expiry();
            let changes = tokio::select! {
                () = shutdown.cancelled() => break,
                event = events.recv_async() => match event {
                    Ok(event) => handle_event(&mut table, &verifying, event),
                    Err(_) => {
                        warn!("the mDNS daemon stopped; peers will no longer be discovered");
                        break;
                    }
                },
                _ = liveness.tick() => {
                    let now = clock::now();
                    verifying.retain(|_, sent| now.duration_since(*sent) < VERIFY_WINDOW);
                    let online: Vec<&str> = table.online_instances().collect();
                    let round = online.len().min(VERIFY_PER_ROUND);
                    for n in 0..round {
                        let instance = online[(next_to_verify + n) % online.len()];
                        if let Err(error) = mdns.verify(instance.to_owned(), VERIFY_TIMEOUT) {
                            debug!(instance = ?instance, %error, "cannot verify a peer");
                        }
                        verifying.insert(instance.to_owned(), now);
                    }
                    next_to_verify = if online.is_empty() { 0 } else { (next_to_verify + round) % online.len() };
                    Vec::new()
                }
                () = clock::sleep_until(expiry), if expiry.is_some() => table.expire(clock::now()),
                Ok(()) = settings.changed() => {
                    let name = settings.borrow_and_update().display_name.to_string();
                    if name != own.display_name {
                        own.display_name = name;
                        let registered = service_info(&own, false, &mut signer)
                            .and_then(|info| mdns.register(info).map_err(DiscoveryError::from));
                        match registered {
                            Ok(()) => info!(name = %own.display_name, "now advertising a new name"),
                            Err(error) => warn!(%error, "cannot advertise the new name"),
                        }
                    }
                    Vec::new()
                }
            };
            let now = clock::now();
            let new = table.disbelieved() - std::mem::replace(&mut disbelieved_total, table.disbelieved());
            if let Some(adverts) = disbelieved.note_many(new, now) {
                warn!(adverts, "ignored mDNS adverts that a peer's key did not sign (forged, or replayed)");
            }
            let new = table.turned_away() - std::mem::replace(&mut turned_away_total, table.turned_away());
            if let Some(adverts) = turned_away.note_many(new, now) {
                warn!(
                    adverts,
                    peers = MAX_PEERS,
                    "too many peers or instances advertised on the LAN; ignoring the newest"
                );
            }
            for change in changes {
                log_change(&change);
                hub.publish(Change::Peer(change));
            }
        }
        say_goodbye(&mdns, &own, &fullname, &mut signer).await;
    }
}

fn service_info(own: &OwnAdvert, leaving: bool, signer: &mut AdvertSigner) -> Result<ServiceInfo, DiscoveryError> {
    let advert = signer.sign(Advert {
        protocol_version: PROTOCOL_VERSION,
        device_id: own.device_id,
        display_name: own.display_name.clone(),
        signaling_port: own.signaling_port,
        leaving,
        proof: None,
    })?;
    // The instance name is the short device ID: unique on a LAN and stable across
    // renames. The host name is ours alone so it never clashes with the machine's.
    let short = own.device_id.short();
    let host = format!("voicelink-{}.local.", short.to_lowercase());
    let txt = advert.to_txt();
    Ok(ServiceInfo::new(SERVICE_TYPE, &short, &host, (), own.signaling_port, &txt[..])?.enable_addr_auto())
}

fn handle_event(table: &mut PeerTable, verifying: &HashMap<String, Instant>, event: ServiceEvent) -> Vec<PeerChange> {
    let now = clock::now();
    match event {
        ServiceEvent::ServiceResolved(service) => {
            let properties = service.txt_properties.iter().map(|p| (p.key(), p.val()));
            match Advert::from_txt(properties) {
                Ok(advert) => {
                    let addresses = service.addresses.iter().map(|a| a.to_ip_addr());
                    let signed_at = proof::checked_time(&advert);
                    debug!(instance = %service.fullname, leaving = advert.leaving, ?signed_at, "mDNS advert");
                    table.resolved(&service.fullname, &advert, signed_at, addresses, now, SystemTime::now())
                }
                Err(error) => {
                    debug!(instance = %service.fullname, %error, "skipping an mDNS record that is not a usable voicelink advertisement");
                    Vec::new()
                }
            }
        }
        ServiceEvent::ServiceRemoved(_, instance) => {
            let removal = match verifying.get(&instance) {
                Some(sent) if now.duration_since(*sent) < VERIFY_WINDOW => Removal::Lost,
                _ => Removal::Goodbye,
            };
            table.instance_removed(&instance, removal, now).into_iter().collect()
        }
        _ => Vec::new(),
    }
}

fn log_change(change: &PeerChange) {
    match change {
        PeerChange::Appeared(peer) => info!(peer = %peer.device_id.short(), name = %peer.display_name, "peer appeared"),
        PeerChange::Changed(peer) => {
            info!(peer = %peer.device_id.short(), name = %peer.display_name, online = peer.online, "peer changed")
        }
        PeerChange::Gone { device_id, display_name, reason } => {
            info!(peer = %device_id.short(), name = %display_name, ?reason, "peer gone")
        }
    }
}

/// Announces `bye=1`, then unregisters (the mDNS goodbye) and stops mdns-sd.
async fn say_goodbye(mdns: &ServiceDaemon, own: &OwnAdvert, fullname: &str, signer: &mut AdvertSigner) {
    // The signed `bye=1` must be on the wire before the goodbye. mdns-sd sends
    // a re-registered service with its next announcement (about a second on),
    // and tells its monitors. Commands run in order, so a monitor made after the
    // registration hears only announcements of the new record.
    match service_info(own, true, signer).and_then(|info| mdns.register(info).map_err(DiscoveryError::from)) {
        Ok(()) => {
            // Each interface announces on its own timer, within
            // `ANNOUNCE_SPREAD` of the first: wait for the first, then that long.
            let announcements = |monitor: mdns_sd::Receiver<DaemonEvent>| async move {
                while let Ok(event) = monitor.recv_async().await {
                    if matches!(&event, DaemonEvent::Announce(name, _) if name == fullname) {
                        return true;
                    }
                }
                false
            };
            match mdns.monitor() {
                Ok(monitor) => match tokio::time::timeout(GOODBYE_TIMEOUT, announcements(monitor.clone())).await {
                    Ok(true) => {
                        let _ = tokio::time::timeout(ANNOUNCE_SPREAD, async {
                            while announcements(monitor.clone()).await {}
                        })
                        .await;
                    }
                    _ => debug!("the leaving advert was not announced in time; peers may take us for lost"),
                },
                Err(error) => debug!(%error, "cannot follow mDNS announcements"),
            }
        }
        Err(error) => debug!(%error, "cannot announce that we are leaving"),
    }
    match mdns.unregister(fullname) {
        Ok(status) => {
            if tokio::time::timeout(GOODBYE_TIMEOUT, status.recv_async()).await.is_err() {
                warn!("the mDNS goodbye was not confirmed in time; peers will notice we left a little later");
            }
        }
        Err(error) => warn!(%error, "cannot send the mDNS goodbye"),
    }
    if let Ok(status) = mdns.shutdown() {
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, status.recv_async()).await;
    }
    info!("stopped advertising");
}
