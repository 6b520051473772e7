//! voicelink-tray: the voicelink daemon (`voiced`) from the system tray.
//!
//! The tray is a gRPC client of the daemon like `voicectl`, with no state of its
//! own beyond what the event feed tells it. The library holds the parts that do
//! not touch the desktop, so they are tested without one:
//!
//! - [`model`]: what the tray knows ([`model::TrayState`]) and how each update
//!   from the daemon changes it, including which notifications to raise;
//! - [`view`]: the pure function from that state to the icon, tooltip and menu;
//! - [`icons`]: the icons, drawn in code;
//! - [`command`]: what a menu item or notification action asks for;
//! - [`client`]: the task that follows the event feed (and the stats feed for
//!   the quality verdict), runs commands, and reconnects with back-off.
//!
//! The binary (`src/main.rs`) adds the thin desktop glue: a GLib main loop, the
//! tray icon (tray-icon's StatusNotifierItem backend, ksni; see `ui.rs` for why)
//! and notifications (the freedesktop.org notification spec over GIO, see
//! `notifications.rs`).

pub mod client;
pub mod command;
pub mod icons;
pub mod model;
pub mod view;
