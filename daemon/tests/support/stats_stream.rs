//! Reading a daemon's `WatchStats` stream in tests: the samples as they come, and
//! waiting for one that shows something. Included by the tests that watch stats.

use hyper_util::rt::TokioIo;
use tokio_stream::StreamExt;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};
use voicelink_proto::v1::{self, CallStats, WatchStatsRequest};

use crate::support::{DEADLINE, Daemon};
use std::time::Duration;

/// A channel to the daemon; `window` limits the HTTP/2 flow-control windows,
/// to make a client whose buffers fill after a few samples.
pub async fn channel(daemon: &Daemon, window: Option<u32>) -> Channel {
    let path = daemon.socket.clone();
    let connector = tower::service_fn(move |_| {
        let path = path.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
    });
    Endpoint::from_static("http://voiced.invalid")
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .connect_with_connector(connector)
        .await
        .unwrap()
}

pub async fn watch(channel: Channel, call_id: &str, interval: Duration) -> Streaming<CallStats> {
    let mut client = v1::voicelink_client::VoicelinkClient::new(channel);
    let interval = Some(prost_types::Duration::try_from(interval).unwrap());
    client.watch_stats(WatchStatsRequest { call_id: call_id.into(), interval }).await.unwrap().into_inner()
}

/// The next sample, or `None` when the stream ended.
pub async fn next(stream: &mut Streaming<CallStats>) -> Option<CallStats> {
    tokio::time::timeout(DEADLINE, stream.next()).await.expect("a stats sample").map(|s| s.unwrap())
}

/// Reads samples until one satisfies `done`; returns it.
pub async fn sample_where(
    stream: &mut Streaming<CallStats>,
    what: &str,
    done: impl Fn(&CallStats) -> bool,
) -> CallStats {
    let mut last = None;
    let wait = async {
        while let Some(sample) = next(stream).await {
            if done(&sample) {
                return Some(sample);
            }
            last = Some(sample);
        }
        None
    };
    match tokio::time::timeout(DEADLINE, wait).await {
        Ok(Some(sample)) => sample,
        _ => panic!("no sample where {what}; the last one: {last:#?}"),
    }
}
