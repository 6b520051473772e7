//! Call statistics as the daemon publishes them: the board that call tasks write
//! samples to and `WatchStats` subscribers read at their own pace. What a sample
//! holds and how it is computed is pure and lives in `voicelink_core::stats`.

pub mod board;

pub use board::{Sample, StatsBoard, StatsSubscription};
