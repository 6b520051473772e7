//! LAN discovery: the task that advertises this daemon by mDNS (mdns-sd), browses
//! for the others, owns the peer table and publishes its changes.
//!
//! Liveness ([`voicelink_core::liveness`] says when): online peers are asked
//! every few seconds to confirm they are still there (a few each round, in
//! turn); one that does not answer is removed from mdns-sd's cache, which we see
//! as a removal, and it goes offline. Each loss makes us ask the LAN again
//! (`requery.rs`) at once, then at a doubling interval, and ask the lost peer
//! itself, by unicast, every second for a minute. mdns-sd checks our
//! interfaces every second: when a link comes back it announces us and queries
//! again (RFC 6762 §8.3), so after a pulled cable peers are back within about a
//! second, and after a silent outage at the next probe. A daemon that shuts
//! down cleanly first re-announces itself with a signed `bye=1` (and waits until
//! mdns-sd has sent it) and then sends the mDNS goodbye, so its peers can tell
//! "left" from "lost" without guessing.

use std::time::{Duration, SystemTime};

use mdns_sd::{DaemonEvent, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use voicelink_core::advert::{Advert, PROTOCOL_VERSION, SERVICE_TYPE};
use voicelink_core::liveness::{self, Liveness};
use voicelink_core::peer_events::{self, PeerEventPacer};
use voicelink_core::peer_table::{MAX_PEERS, PeerChange, PeerTable};

use crate::clock;
use crate::events::{Change, EventHub};
use crate::identity::Identity;
use crate::logging::Throttle;
use proof::{AdvertSigner, SigningError};
use requery::{OurLinks, probe, requery_lan};
use voicelink_core::reload::LiveSettings;
use voicelink_core::vocab::DeviceId;

/// How long an offline peer stays listed.
const OFFLINE_RETENTION: Duration = Duration::from_secs(600);
/// How far apart mdns-sd's announcements on different interfaces may be (it
/// jitters each by up to 50 ms).
const ANNOUNCE_SPREAD: Duration = Duration::from_millis(200);
/// How long shutdown waits for mdns-sd to send the goodbye.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often mdns-sd looks for interfaces that came up or went down, in seconds
/// (its default is 5): a link that returns is announced on within a second.
const INTERFACE_CHECK_SECS: u32 = 1;

pub mod proof;
mod requery;

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
        mdns.set_ip_check_interval(INTERFACE_CHECK_SECS)?;
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
        let Discovery { mdns, mut events, mut own, fullname, mut signer } = self;
        let mut table = PeerTable::new(own.device_id, OFFLINE_RETENTION);
        let mut liveness = Liveness::new();
        // Set while mdns-sd has dropped the browse: when to browse again.
        let mut browse_again_at: Option<std::time::Instant> = None;
        let mut browse_dropped = Throttle::new(Duration::from_secs(10));
        let mut pacer = PeerEventPacer::new(clock::now());
        let mut turned_away = Throttle::new(Duration::from_secs(10));
        let mut disbelieved = Throttle::new(Duration::from_secs(10));
        let mut held_back = Throttle::new(Duration::from_secs(10));
        let mut rounds = tokio::time::interval(liveness::ROUND);
        rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            let expiry = table.next_expiry();
            let ask_at = liveness.ask_at();
            let release_at = pacer.next_release();
            let changes = tokio::select! {
                () = shutdown.cancelled() => break,
                event = events.recv_async(), if browse_again_at.is_none() => match event {
                    Ok(event) => handle_event(&mut table, event),
                    // mdns-sd drops a browse whose channel is full (a flood read
                    // too slowly): browse again in a second.
                    Err(_) => {
                        let now = clock::now();
                        if let Some(times) = browse_dropped.note(now) {
                            warn!(times, "mDNS events came faster than they were read, and mdns-sd dropped them; browsing again");
                        }
                        browse_again_at = Some(now + Duration::from_secs(1));
                        Vec::new()
                    }
                },
                () = clock::sleep_until(browse_again_at), if browse_again_at.is_some() => {
                    match mdns.browse(SERVICE_TYPE) {
                        Ok(fresh) => {
                            events = fresh;
                            browse_again_at = None;
                        }
                        Err(mdns_sd::Error::DaemonShutdown) => {
                            warn!("the mDNS daemon stopped; peers will no longer be discovered");
                            break;
                        }
                        Err(error) => {
                            debug!(%error, "cannot browse again yet");
                            browse_again_at = Some(clock::now() + Duration::from_secs(1));
                        }
                    }
                    Vec::new()
                }
                _ = rounds.tick() => {
                    let online: Vec<&str> = table.online_instances().collect();
                    for instance in liveness.round(&online) {
                        if let Err(error) = mdns.verify(instance.clone(), liveness::VERIFY_TIMEOUT) {
                            debug!(instance = ?instance, %error, "cannot verify a peer");
                        }
                    }
                    Vec::new()
                }
                () = clock::sleep_until(ask_at), if ask_at.is_some() => {
                    let now = clock::now();
                    if liveness.requery_due(now) {
                        let interfaces = requery_lan();
                        debug!(interfaces, "a peer is offline; asked the LAN again");
                    }
                    let lost_at = liveness.probes_due(now);
                    if !lost_at.is_empty() {
                        let sent = probe(&lost_at);
                        debug!(sent, addresses = lost_at.len(), "asked lost peers directly");
                    }
                    Vec::new()
                }
                () = clock::sleep_until(expiry), if expiry.is_some() => table.expire(clock::now()),
                // The changes that waited are released below.
                () = clock::sleep_until(release_at), if release_at.is_some() => Vec::new(),
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
            if let Some(adverts) = disbelieved.note_total(table.disbelieved(), now) {
                warn!(adverts, "ignored mDNS adverts that a peer's key did not sign (forged, or replayed)");
            }
            if let Some(adverts) = turned_away.note_total(table.turned_away(), now) {
                warn!(
                    adverts,
                    peers = MAX_PEERS,
                    "too many peers or instances advertised on the LAN; ignoring the newest"
                );
            }
            // Listed once for however many peers this batch loses (a flood's may be many).
            let mut links: Option<OurLinks> = None;
            for change in changes {
                match &change {
                    PeerChange::Changed(peer) if !peer.online => {
                        let addresses = links.get_or_insert_with(OurLinks::list).first(peer.addresses.iter().copied());
                        liveness.peer_lost(peer.device_id, addresses, now)
                    }
                    PeerChange::Changed(peer) => liveness.peer_back(&peer.device_id),
                    PeerChange::Gone { device_id, .. } => liveness.peer_back(device_id),
                    PeerChange::Appeared(_) => {}
                }
                if let Some(change) = pacer.offer(change, now) {
                    publish(&hub, change);
                }
            }
            for change in pacer.release(now) {
                publish(&hub, change);
            }
            if liveness.ask_at().is_some() && table.peers().all(|peer| peer.online) {
                liveness.all_online();
            }
            if let Some(changes) = held_back.note_total(pacer.held(), now) {
                warn!(
                    changes,
                    per_second = peer_events::PER_SECOND,
                    "peers on the LAN change faster than discovery reports them; their changes wait and merge"
                );
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

fn handle_event(table: &mut PeerTable, event: ServiceEvent) -> Vec<PeerChange> {
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
        ServiceEvent::ServiceRemoved(_, instance) => table.instance_removed(&instance, now).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// Logs a change and tells the daemon.
fn publish(hub: &EventHub, change: PeerChange) {
    match &change {
        PeerChange::Appeared(peer) => info!(peer = %peer.device_id.short(), name = %peer.display_name, "peer appeared"),
        PeerChange::Changed(peer) => {
            info!(peer = %peer.device_id.short(), name = %peer.display_name, online = peer.online, "peer changed")
        }
        PeerChange::Gone { device_id, display_name, reason } => {
            info!(peer = %device_id.short(), name = %display_name, ?reason, "peer gone")
        }
    }
    hub.publish(Change::Peer(change));
}

/// Whether mdns-sd announced on more than loopback, by what its `Announce` event
/// says: the addresses at registration (`[10.0.0.2, ::1]`), or the host and
/// interface after a probe or on the second announcement (`host.local.:eth0`).
fn beyond_loopback(on: &str, loopback_interfaces: &[String]) -> bool {
    if let Some(list) = on.strip_prefix('[') {
        let list = list.trim_end_matches(']');
        return list.split(", ").filter_map(|a| a.parse::<std::net::IpAddr>().ok()).any(|ip| !ip.is_loopback());
    }
    // The host name ends in a dot; an interface name may hold a colon (`lo:1`).
    on.split_once(".:").is_some_and(|(_, interface)| !loopback_interfaces.iter().any(|lo| lo == interface))
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
            // Loopback does not count: it announces at once, while the LAN
            // interfaces may first probe the changed record (750 ms).
            let loopback: Vec<String> = if_addrs::get_if_addrs()
                .map(|all| all.into_iter().filter(|i| i.is_loopback()).map(|i| i.name).collect())
                .unwrap_or_default();
            let loopback = &loopback;
            let announcements = |monitor: mdns_sd::Receiver<DaemonEvent>| async move {
                while let Ok(event) = monitor.recv_async().await {
                    if matches!(&event, DaemonEvent::Announce(name, on) if name == fullname && beyond_loopback(on, loopback))
                    {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_on_loopback_alone_does_not_count() {
        let lo = ["lo".to_owned()];
        assert!(!beyond_loopback("[127.0.0.1]", &lo));
        assert!(!beyond_loopback("[::1, 127.0.0.1]", &lo));
        assert!(beyond_loopback("[10.77.0.2]", &lo));
        assert!(beyond_loopback("[fe80::1, fd77::2]", &lo));
        assert!(!beyond_loopback("[]", &lo));
        assert!(!beyond_loopback("voicelink-abc.local.:lo", &lo));
        assert!(beyond_loopback("voicelink-abc.local.:eth0", &lo));
        assert!(!beyond_loopback("no interface", &lo));
        assert!(!beyond_loopback("voicelink-abc.local.:lo:1", &["lo:1".to_owned()]));
    }
}
