//! The commands that follow a stream (`events`, `stats --follow`). When voiced
//! goes away (it stopped, restarted or died) they say so on stderr instead of
//! failing with a transport error, wait for it to come back, and follow again:
//! the event feed starts over with a snapshot. Following one call's stats ends
//! there instead, since the call went with the daemon.

use std::time::Duration;

use tokio_stream::StreamExt;
use voicelink_proto::{Client, DaemonAddress, daemon_went_away, v1};

use crate::output::Printer;

/// How often to look for the daemon while it is away.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

/// What is followed.
pub enum Feed {
    /// The event feed.
    Events,
    /// Call statistics: one call's, or every call's.
    Stats {
        /// The call, or all.
        call: Option<String>,
        /// Between samples.
        interval: Duration,
    },
}

/// Follows `feed` until it ends, across restarts of the daemon at `address`.
pub async fn follow(
    address: &DaemonAddress,
    mut client: Client,
    feed: Feed,
    printer: &Printer,
) -> Result<(), tonic::Status> {
    loop {
        let lost = match stream_once(&mut client, &feed, printer).await {
            Ok(()) => return Ok(()),
            Err(status) if daemon_went_away(&status) => status,
            Err(refused) => return Err(refused),
        };
        if let Feed::Stats { call: Some(call), .. } = &feed {
            eprintln!("voicectl: voiced went away ({}); call {call} ended with it", lost.message());
            return Err(lost);
        }
        eprintln!("voicectl: voiced went away ({}); waiting for it to come back (Ctrl-C to stop)", lost.message());
        client = reconnect(address).await;
        eprintln!("voicectl: voiced is back");
    }
}

/// One subscription, printed until it ends. An event feed, or every call's
/// stats, only ends when the daemon stops: that end counts as it going away.
async fn stream_once(client: &mut Client, feed: &Feed, printer: &Printer) -> Result<(), tonic::Status> {
    match feed {
        Feed::Events => {
            let mut stream = client.watch_events(v1::WatchEventsRequest {}).await?.into_inner();
            while let Some(event) = stream.next().await {
                printer.event(&event?);
            }
            Err(tonic::Status::unavailable("the event feed ended"))
        }
        Feed::Stats { call, interval } => {
            let request = v1::WatchStatsRequest {
                call_id: call.clone().unwrap_or_default(),
                interval: prost_types::Duration::try_from(*interval).ok(),
            };
            let mut stream = client.watch_stats(request).await?.into_inner();
            while let Some(sample) = stream.next().await {
                printer.stats(&sample?);
            }
            // One call's feed ends with the call; every call's, only with the daemon.
            match call {
                Some(_) => Ok(()),
                None => Err(tonic::Status::unavailable("the stats feed ended")),
            }
        }
    }
}

async fn reconnect(address: &DaemonAddress) -> Client {
    loop {
        if let Ok(client) = voicelink_proto::connect(address.clone()).await {
            return client;
        }
        tokio::time::sleep(RECONNECT_EVERY).await;
    }
}
