//! Telling the service manager how the daemon is: `READY=1`, `RELOADING=1`,
//! `STOPPING=1` (sd_notify; a no-op outside systemd).

use tracing::warn;

/// Sends `state` to systemd, if it is listening.
pub fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(error) = sd_notify::notify(state) {
        warn!(%error, "cannot notify systemd");
    }
}
