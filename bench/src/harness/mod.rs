//! The bench binary's parts: daemons, speech material, the per-profile run and
//! the report.

pub mod codec_ceiling;
pub mod daemon;
pub mod devices;
pub mod echo;
pub mod group;
pub mod report;
pub mod run;
pub mod setup_trials;
pub mod speech;
