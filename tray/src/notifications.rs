//! Desktop notifications (notify-rust): a ringing call with Answer and Decline
//! actions, withdrawn when the call stops ringing, and a missed-call notice.
//!
//! Each ringing notification has a thread that waits for the person to act on it
//! (notify-rust's wait is blocking); the thread ends when the notification is
//! acted on or closed. Withdrawing closes it by ID over the session bus, which
//! makes the server send "closed" and so ends that thread too.

use std::collections::HashMap;
use std::time::Duration;

use gtk::gio;
use gtk::glib;
use notify_rust::{Hint, Notification, Timeout, Urgency};
use tokio::sync::mpsc;

use crate::UiInput;

/// What the person chose on a ringing notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Answer (the notification's default action, or its Answer button).
    Answer,
    /// Decline.
    Decline,
    /// Dismissed without choosing.
    Dismissed,
}

impl Choice {
    fn from_action(action: &str) -> Choice {
        match action {
            // "default" is what a click on the notification body sends.
            "default" | "answer" => Choice::Answer,
            "decline" => Choice::Decline,
            _ => Choice::Dismissed,
        }
    }
}

/// Raises and withdraws the tray's notifications.
pub struct Notifier {
    /// Ringing notifications by call ID.
    ringing: HashMap<String, u32>,
    /// Where choices go (the UI loop).
    inputs: mpsc::Sender<UiInput>,
    /// Whether the server shows action buttons; asked once, on the first call.
    actions: Option<bool>,
}

const APP_NAME: &str = "voicelink";

impl Notifier {
    /// A notifier that reports choices to `inputs`.
    pub fn new(inputs: mpsc::Sender<UiInput>) -> Notifier {
        Notifier { ringing: HashMap::new(), inputs, actions: None }
    }

    fn server_has_actions(&mut self) -> bool {
        *self.actions.get_or_insert_with(|| match notify_rust::get_capabilities() {
            Ok(caps) => caps.iter().any(|c| c == "actions"),
            Err(error) => {
                tracing::warn!(%error, "no notification server; calls ring in the tray only");
                false
            }
        })
    }

    /// A call is ringing: raise a notification with Answer / Decline.
    pub fn ringing(&mut self, call_id: &str, caller: &str) {
        let actions = self.server_has_actions();
        let mut notification = Notification::new();
        notification
            .appname(APP_NAME)
            .summary(&format!("{caller} is calling"))
            .body(if actions {
                "Incoming voicelink call"
            } else {
                "Incoming voicelink call: answer from the tray menu"
            })
            .icon("call-start")
            .hint(Hint::Category("call.incoming".to_owned()))
            .urgency(Urgency::Critical)
            .timeout(Timeout::Never);
        if actions {
            // "default" is the click on the notification itself: answering is
            // what a ringing phone is picked up for.
            notification.action("default", "Answer").action("answer", "Answer").action("decline", "Decline");
        }
        let handle = match notification.show() {
            Ok(handle) => handle,
            Err(error) => {
                tracing::warn!(%error, call_id, "cannot show the incoming-call notification");
                return;
            }
        };
        let id = handle.id();
        self.ringing.insert(call_id.to_owned(), id);
        tracing::info!(call_id, notification = id, actions, "incoming-call notification shown");
        if !actions {
            return;
        }
        let inputs = self.inputs.clone();
        let call = call_id.to_owned();
        let spawned = std::thread::Builder::new().name(format!("notification-{id}")).spawn(move || {
            tracing::info!(call_id = %call, notification = id, "waiting for notification action");
            handle.wait_for_action(|action| {
                let choice = Choice::from_action(action);
                tracing::info!(call_id = %call, action, ?choice, "notification action");
                // The UI may be gone (quitting); then nobody needs the choice.
                let _ = inputs.blocking_send(UiInput::Notification { call_id: call.clone(), choice });
            });
        });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot wait for notification actions; answer from the menu");
        }
    }

    /// The person dismissed the notification: it is gone already.
    pub fn forget(&mut self, call_id: &str) {
        self.ringing.remove(call_id);
    }

    /// The call stopped ringing without being missed: withdraw its notification.
    pub fn stopped_ringing(&mut self, call_id: &str) {
        if let Some(id) = self.ringing.remove(call_id) {
            close_notification(id);
        }
    }

    /// The call was missed: replace the ringing notification with one that stays.
    pub fn missed(&mut self, call_id: &str, caller: &str) {
        self.stopped_ringing(call_id);
        let shown = Notification::new()
            .appname(APP_NAME)
            .summary(&format!("Missed call from {caller}"))
            .body("voicelink")
            .icon("call-missed")
            .hint(Hint::Category("call.unanswered".to_owned()))
            .urgency(Urgency::Normal)
            .timeout(Timeout::Never)
            .show();
        match shown {
            Ok(handle) => tracing::info!(call_id, notification = handle.id(), "missed-call notification shown"),
            Err(error) => tracing::warn!(%error, call_id, "cannot show the missed-call notification"),
        }
    }
}

/// Closes a notification by ID. notify-rust can only close through the handle,
/// which the waiting thread owns, so this calls the server directly.
fn close_notification(id: u32) {
    let result = gio::bus_get_sync(gio::BusType::Session, gio::Cancellable::NONE).and_then(|bus| {
        bus.call_sync(
            Some("org.freedesktop.Notifications"),
            "/org/freedesktop/Notifications",
            "org.freedesktop.Notifications",
            "CloseNotification",
            Some(&glib::Variant::tuple_from_iter([glib::ToVariant::to_variant(&id)])),
            None,
            gio::DBusCallFlags::NONE,
            Duration::from_secs(2).as_millis() as i32,
            gio::Cancellable::NONE,
        )
    });
    if let Err(error) = result {
        tracing::warn!(%error, notification = id, "cannot close the notification");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_action_answers() {
        assert_eq!(Choice::from_action("default"), Choice::Answer);
        assert_eq!(Choice::from_action("answer"), Choice::Answer);
        assert_eq!(Choice::from_action("decline"), Choice::Decline);
        assert_eq!(Choice::from_action("__closed"), Choice::Dismissed);
    }
}
