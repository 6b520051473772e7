//! The task that announces impostors: each peer that advertises the name of
//! another device we know (a stranger, or that device reinstalled with a new
//! key) is published once as [`Change::NameConflict`] when the claim starts, so
//! a script or the tray need not compare every peer against the contacts.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use voicelink_core::contacts::{Contacts, NameClaims};
use voicelink_core::peer_table::PeerChange;
use voicelink_core::vocab::PeerRecord;

use crate::events::{Change, EventHub, Update};

/// Follows the peers on `hub` and the known devices on `contacts` until
/// `shutdown`.
pub async fn run(hub: EventHub, mut contacts: watch::Receiver<Arc<Contacts>>, shutdown: CancellationToken) {
    let mut claims = NameClaims::default();
    let mut feed = hub.subscribe();
    loop {
        // The peers to look at again.
        let peers: Vec<PeerRecord> = tokio::select! {
            () = shutdown.cancelled() => break,
            update = feed.next() => match update {
                None => break,
                Some(Update::State(state, _)) => state.peers.into_values().collect(),
                Some(Update::Change(published)) => match &published.change {
                    Change::Peer(PeerChange::Appeared(peer) | PeerChange::Changed(peer)) => vec![peer.clone()],
                    Change::Peer(PeerChange::Gone { device_id, .. }) => {
                        claims.gone(device_id);
                        Vec::new()
                    }
                    _ => Vec::new(),
                },
            },
            // Someone became known (a call, or the user named a device): the
            // online peers may now claim their name.
            Ok(()) = contacts.changed() => hub.state().peers.into_values().collect(),
        };
        let known = contacts.borrow_and_update().clone();
        for peer in peers {
            if let Some(claim) = claims.check(peer.device_id, &peer.display_name, &known) {
                warn!(
                    peer = %peer.device_id.short(),
                    name = ?peer.display_name,
                    known = %claim.known.short(),
                    "a peer advertises the name of another device this one knows"
                );
                hub.publish(Change::NameConflict { peer, known: claim.known });
            }
        }
    }
}
