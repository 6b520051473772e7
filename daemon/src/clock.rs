//! The daemon's one clock: tokio's. Every task reads `now` here and sleeps on the
//! same clock, so tests that pause tokio time move both together; the pure core
//! gets `now` as an argument and never reads a clock itself.

use std::time::Instant;

/// Now, on tokio's clock (paused and advanced by tests).
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Sleeps until `deadline`; forever when there is none (a `select!` branch that
/// never fires).
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
