//! Desktop notifications: a ringing call with Answer and Decline actions,
//! withdrawn when the call stops ringing, and a missed-call notice.
//!
//! They are spoken straight over D-Bus (the freedesktop.org Desktop
//! Notifications spec: `Notify`, `CloseNotification`, `GetCapabilities`, and the
//! `ActionInvoked` / `NotificationClosed` signals) with GIO, asynchronously on
//! the GLib main loop, so a slow or hung notification server never freezes the
//! tray: every call has a deadline, and the UI only ever queues a request.
//! (notify-rust, the crate the tray first used, blocks on each call and listens
//! for actions with a thread and a connection per notification, subscribing
//! only after the notification is up; a quick answer or decline was lost.)
//!
//! One task, [`run`], owns everything: the session-bus connection, one signal
//! subscription made on it before the first `Notify` is sent, and the table of
//! ringing notifications (notification ID → call ID). Requests from the UI and
//! signals from the server reach it on the same queue, in order, so a signal is
//! never looked up before the ID it names has been recorded: the task records
//! the ID as soon as `Notify` returns it, before it reads anything else.

use std::collections::HashMap;
use std::time::Duration;

use glib::ToVariant as _;
use tokio::sync::{mpsc, oneshot};

use crate::UiInput;

/// What the person chose on a ringing notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Answer (the notification's default action, or its Answer button).
    Answer,
    /// Decline.
    Decline,
}

impl Choice {
    /// The choice an action key stands for; `None` for keys that are not ours.
    fn from_action(action: &str) -> Option<Choice> {
        match action {
            // "default" is what a click on the notification body sends.
            "default" | "answer" => Some(Choice::Answer),
            "decline" => Some(Choice::Decline),
            _ => None,
        }
    }
}

const APP_NAME: &str = "voicelink";
const BUS_NAME: &str = "org.freedesktop.Notifications";
const PATH: &str = "/org/freedesktop/Notifications";
const INTERFACE: &str = "org.freedesktop.Notifications";

/// How long the server may take over any call before we give up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long getting the session bus may take.
const BUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Queued requests and signals; more than this and something is flooding.
const QUEUE: usize = 64;

/// What the task is asked to do, or told by the server.
#[derive(Debug)]
enum Message {
    /// A call is ringing: raise its notification (replacing one it may have).
    Ringing { call_id: String, caller: String },
    /// The call stopped ringing without being missed: withdraw its notification.
    Withdraw { call_id: String },
    /// The call was missed: withdraw its ringing notification, leave a missed one.
    Missed { call_id: String, caller: String },
    /// A peer advertises the name of a device we know: warn once.
    Impostor { claimed: String, known: String },
    /// The tray is quitting: withdraw every ringing notification, then say so.
    CloseAll { done: oneshot::Sender<()> },
    /// `ActionInvoked(id, action_key)`.
    ActionInvoked { id: u32, action: String },
    /// `NotificationClosed(id, reason)`.
    Closed { id: u32, reason: u32 },
}

/// The UI's handle on the notification task: every method only queues.
#[derive(Clone)]
pub struct Notifier {
    queue: mpsc::Sender<Message>,
}

impl Notifier {
    /// Starts the task on the thread's GLib main context (the tray's main loop);
    /// choices made on notifications go to `inputs`.
    pub fn start(inputs: mpsc::Sender<UiInput>) -> Notifier {
        let (queue, messages) = mpsc::channel(QUEUE);
        glib::MainContext::default().spawn_local(run(queue.clone(), messages, inputs));
        Notifier { queue }
    }

    fn queue(&self, message: Message) {
        if let Err(error) = self.queue.try_send(message) {
            tracing::warn!(%error, "notification request dropped");
        }
    }

    /// A call is ringing: raise a notification with Answer / Decline.
    pub fn ringing(&self, call_id: &str, caller: &str) {
        self.queue(Message::Ringing { call_id: call_id.to_owned(), caller: caller.to_owned() });
    }

    /// The call stopped ringing without being missed: withdraw its notification.
    pub fn stopped_ringing(&self, call_id: &str) {
        self.queue(Message::Withdraw { call_id: call_id.to_owned() });
    }

    /// The call was missed: replace the ringing notification with one that stays.
    pub fn missed(&self, call_id: &str, caller: &str) {
        self.queue(Message::Missed { call_id: call_id.to_owned(), caller: caller.to_owned() });
    }

    /// A peer advertises `claimed`, the name of `known`, a device we know: a
    /// notice that stays.
    pub fn impostor(&self, claimed: &str, known: &str) {
        self.queue(Message::Impostor { claimed: claimed.to_owned(), known: known.to_owned() });
    }

    /// Withdraws every ringing notification (the tray is quitting); returns
    /// once they are withdrawn, or once the task is gone.
    pub async fn close_all(&self) {
        let (done, withdrawn) = oneshot::channel();
        if self.queue.send(Message::CloseAll { done }).await.is_ok() {
            let _ = withdrawn.await;
        }
    }
}

/// The task's state.
struct Notifications {
    /// The session bus, once reached; subscribed to the server's signals.
    bus: Option<gio::DBusConnection>,
    /// Where the subscription's callback queues signals.
    queue: mpsc::Sender<Message>,
    /// Whether the server shows action buttons; `None` until it has said.
    actions: Option<bool>,
    /// Ringing notifications: notification ID → call ID.
    ringing: HashMap<u32, String>,
    /// Where choices go (the UI loop).
    inputs: mpsc::Sender<UiInput>,
}

async fn run(queue: mpsc::Sender<Message>, mut messages: mpsc::Receiver<Message>, inputs: mpsc::Sender<UiInput>) {
    let mut state = Notifications { bus: None, queue, actions: None, ringing: HashMap::new(), inputs };
    // Subscribed at startup, so the subscription is in place long before a call rings.
    state.bus().await;
    while let Some(message) = messages.recv().await {
        state.handle(message).await;
    }
}

impl Notifications {
    /// The session bus, reaching it (and subscribing to the server's signals)
    /// if that has not worked yet.
    async fn bus(&mut self) -> Option<gio::DBusConnection> {
        if let Some(bus) = self.bus.as_ref().filter(|bus| !bus.is_closed()) {
            return Some(bus.clone());
        }
        let bus = match glib::future_with_timeout(BUS_TIMEOUT, gio::bus_get_future(gio::BusType::Session)).await {
            Ok(Ok(bus)) => bus,
            Ok(Err(error)) => {
                tracing::warn!(%error, "no session bus; calls ring in the tray only");
                return None;
            }
            Err(_) => {
                tracing::warn!("the session bus does not answer; calls ring in the tray only");
                return None;
            }
        };
        // One subscription for both signals, made before any Notify is sent on
        // this connection: the bus applies our match rule before it delivers
        // the Notify (it handles a connection's messages in order), so no
        // signal about one of our notifications can come before it.
        let queue = self.queue.clone();
        bus.signal_subscribe(
            Some(BUS_NAME),
            Some(INTERFACE),
            None,
            Some(PATH),
            None,
            gio::DBusSignalFlags::NONE,
            move |_, _, _, _, member, parameters| {
                let message = match member {
                    "ActionInvoked" => {
                        parameters.get::<(u32, String)>().map(|(id, action)| Message::ActionInvoked { id, action })
                    }
                    "NotificationClosed" => {
                        parameters.get::<(u32, u32)>().map(|(id, reason)| Message::Closed { id, reason })
                    }
                    // Other signals of the interface (ActivationToken) are not needed.
                    _ => return,
                };
                let Some(message) = message else {
                    tracing::warn!(member, signature = %parameters.type_(), "malformed notification signal ignored");
                    return;
                };
                if let Err(error) = queue.try_send(message) {
                    tracing::warn!(%error, member, "notification signal dropped");
                }
            },
        );
        tracing::info!("listening for notification actions");
        self.bus = Some(bus.clone());
        Some(bus)
    }

    /// Calls a method of the notification server, with a deadline.
    async fn call(
        &mut self,
        method: &str,
        parameters: Option<glib::Variant>,
        reply: &str,
    ) -> Result<glib::Variant, glib::Error> {
        let Some(bus) = self.bus().await else {
            return Err(glib::Error::new(gio::IOErrorEnum::NotConnected, "no session bus"));
        };
        let reply = glib::VariantTy::new(reply).ok();
        bus.call_future(
            Some(BUS_NAME),
            PATH,
            INTERFACE,
            method,
            parameters.as_ref(),
            reply,
            gio::DBusCallFlags::NONE,
            CALL_TIMEOUT.as_millis() as i32,
        )
        .await
    }

    /// Whether the server shows actions; asked until it has answered once.
    async fn server_has_actions(&mut self) -> bool {
        if let Some(actions) = self.actions {
            return actions;
        }
        match self.call("GetCapabilities", None, "(as)").await.map(|caps| caps.get::<(Vec<String>,)>()) {
            Ok(Some((caps,))) => {
                let actions = caps.iter().any(|c| c == "actions");
                self.actions = Some(actions);
                actions
            }
            Ok(None) => {
                tracing::warn!("the notification server's capabilities are malformed");
                false
            }
            Err(error) => {
                tracing::warn!(%error, "cannot ask the notification server what it can do");
                false
            }
        }
    }

    /// Sends a notification; returns its ID.
    async fn notify(
        &mut self,
        summary: &str,
        body: &str,
        icon: &str,
        category: &str,
        urgency: u8,
        actions: &[&str],
    ) -> Result<u32, glib::Error> {
        let hints: HashMap<String, glib::Variant> = [
            ("category".to_owned(), category.to_variant()),
            ("urgency".to_owned(), urgency.to_variant()),
            ("desktop-entry".to_owned(), "voicelink-tray".to_variant()),
        ]
        .into_iter()
        .collect();
        let actions: Vec<String> = actions.iter().map(|a| (*a).to_owned()).collect();
        // (app_name, replaces_id, app_icon, summary, body, actions, hints, expire_timeout):
        // 0 replaces nothing; an expiry of 0 never expires.
        let parameters = (APP_NAME, 0u32, icon, summary, body, actions, hints, 0i32).to_variant();
        let reply = self.call("Notify", Some(parameters), "(u)").await?;
        reply
            .get::<(u32,)>()
            .map(|(id,)| id)
            .ok_or_else(|| glib::Error::new(gio::IOErrorEnum::InvalidData, "Notify answered without an ID"))
    }

    async fn close(&mut self, id: u32) {
        if let Err(error) = self.call("CloseNotification", Some((id,).to_variant()), "()").await {
            tracing::warn!(%error, notification = id, "cannot close the notification");
        }
    }

    /// Forgets and closes the ringing notification of `call_id`, if any.
    async fn withdraw(&mut self, call_id: &str) {
        let ids: Vec<u32> = self.ringing.iter().filter(|(_, call)| *call == call_id).map(|(id, _)| *id).collect();
        for id in ids {
            self.ringing.remove(&id);
            self.close(id).await;
        }
    }

    async fn handle(&mut self, message: Message) {
        match message {
            Message::Ringing { call_id, caller } => self.ringing(call_id, &caller).await,
            Message::Withdraw { call_id } => self.withdraw(&call_id).await,
            Message::Missed { call_id, caller } => {
                self.withdraw(&call_id).await;
                let shown = self
                    .notify(
                        &format!("Missed call from {caller}"),
                        "voicelink",
                        "call-missed",
                        "call.unanswered",
                        1,
                        &[],
                    )
                    .await;
                match shown {
                    Ok(id) => tracing::info!(call_id, notification = id, "missed-call notification shown"),
                    Err(error) => tracing::warn!(%error, call_id, "cannot show the missed-call notification"),
                }
            }
            Message::Impostor { claimed, known } => {
                let body = format!(
                    "A new device on the network calls itself {claimed}, but it is NOT the {known} you know. \
                     Do not trust it until you compare safety numbers (voicectl verify)."
                );
                let shown =
                    self.notify(&format!("Not the {known} you know"), &body, "dialog-warning", "device", 1, &[]).await;
                if let Err(error) = shown {
                    tracing::warn!(%error, "cannot show the impostor notification");
                }
            }
            Message::CloseAll { done } => {
                let ids: Vec<u32> = self.ringing.drain().map(|(id, _)| id).collect();
                for id in ids {
                    self.close(id).await;
                }
                let _ = done.send(());
            }
            Message::ActionInvoked { id, action } => {
                // Not ours, or withdrawn already: nothing to do.
                let Some(call_id) = self.ringing.get(&id).cloned() else { return };
                let Some(choice) = Choice::from_action(&action) else {
                    tracing::warn!(call_id, notification = id, action, "unknown notification action ignored");
                    return;
                };
                tracing::info!(call_id, notification = id, action, ?choice, "notification action");
                // Servers need not close a notification whose action was
                // invoked (dunst does not), so close it.
                self.ringing.remove(&id);
                if let Err(error) = self.inputs.try_send(UiInput::Notification { call_id, choice }) {
                    tracing::warn!(%error, "notification choice dropped");
                }
                self.close(id).await;
            }
            Message::Closed { id, reason } => {
                // Only this ID is forgotten: a newer notification for the same
                // call has its own.
                if let Some(call_id) = self.ringing.remove(&id) {
                    tracing::info!(call_id, notification = id, reason, "incoming-call notification closed");
                }
            }
        }
    }

    async fn ringing(&mut self, call_id: String, caller: &str) {
        // A call rings once; if it is raised again, the old notification goes.
        self.withdraw(&call_id).await;
        let actions = self.server_has_actions().await;
        let (body, keys): (&str, &[&str]) = if actions {
            // "default" is the click on the notification itself: answering is
            // what a ringing phone is picked up for.
            ("Incoming voicelink call", &["default", "Answer", "answer", "Answer", "decline", "Decline"])
        } else {
            ("Incoming voicelink call: answer from the tray menu", &[])
        };
        match self.notify(&format!("{caller} is calling"), body, "call-start", "call.incoming", 2, keys).await {
            Ok(id) => {
                self.ringing.insert(id, call_id.clone());
                tracing::info!(call_id, notification = id, actions, "incoming-call notification shown");
            }
            Err(error) => tracing::warn!(%error, call_id, "cannot show the incoming-call notification"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_action_answers() {
        assert_eq!(Choice::from_action("default"), Some(Choice::Answer));
        assert_eq!(Choice::from_action("answer"), Some(Choice::Answer));
        assert_eq!(Choice::from_action("decline"), Some(Choice::Decline));
        assert_eq!(Choice::from_action("__closed"), None);
    }
}
