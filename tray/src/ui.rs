//! The tray glue: renders a [`View`] into the tray icon, its tooltip and its
//! menu, and turns clicks into [`Command`]s. It decides nothing;
//! [`voicelink_tray::view`] does.
//!
//! # Why tray-icon's StatusNotifierItem backend (`ksni`)
//!
//! tray-icon on Linux has two backends. The default one goes through GTK and
//! libayatana-appindicator; the AppIndicator protocol it speaks has no tooltip
//! (tray-icon's `set_tooltip` does nothing there; its D-Bus item has no
//! `ToolTip` property), and the tray has to say its state in words. The `ksni`
//! feature is a StatusNotifierItem spoken straight over D-Bus (zbus, on
//! threads of its own): the tooltip works (title "voicelink", the state in
//! words as its text), the menu is exported as a dbusmenu, and no GTK is
//! linked, so the tray needs only GLib (its main loop and the notifications'
//! D-Bus calls). What it needs is a StatusNotifierItem host, which shows it:
//! KDE Plasma, XFCE (xfce4-panel's Status Tray plugin, 4.16 and later), LXQt,
//! Cinnamon, MATE, Budgie, waybar, and GNOME with the
//! AppIndicator/KStatusNotifierItem extension (GNOME needs that with either
//! backend). XEmbed-only trays (trayer, stalonetray, i3bar's tray) show
//! nothing: there the libappindicator backend's XEmbed fallback would have
//! shown an icon without a tooltip. The end-to-end test runs a real host:
//! xfce4-panel under Xvfb, and reads the tooltip from the item over D-Bus.
//!
//! # Icon size
//!
//! The icons are handed over at one size, [`ICON_SIZE`]: tray-icon's ksni
//! backend sends the one image it is given as the item's pixmap, and it does
//! not tell us the panel's size either (`TrayIcon::rect` is `None` there). The
//! host scales that pixmap to its panel, so it is drawn at 32 px, the largest
//! size panels commonly use, and scaled down rather than up.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tray_icon::menu::{CheckMenuItem, IsMenuItem, Menu, MenuItem, PredefinedMenuItem, Submenu};
use tray_icon::{Icon, TrayIcon, TrayIconBuilder};
use voicelink_tray::command::Command;
use voicelink_tray::icons;
use voicelink_tray::model::{Link, Notice, TrayState, Update};
use voicelink_tray::view::{IconKind, MenuEntry, View, view};

use crate::UiInput;
use crate::notifications::{Choice, Notifier};

/// Icons are drawn at this size; hosts scale them to their panel.
const ICON_SIZE: u32 = 32;

/// How long quitting waits for ringing notifications to be withdrawn.
const CLOSE_ON_QUIT: Duration = Duration::from_secs(3);

/// A label as muda reads it: `&` marks a mnemonic there, `&&` is a plain `&`
/// (a peer called "Tom & Jerry" must not lose its ampersand).
fn menu_text(label: &str) -> String {
    label.replace('&', "&&")
}

/// A rendered menu item that can be changed in place.
enum Item {
    Normal(MenuItem),
    Check(CheckMenuItem),
    Sub(Submenu),
    Separator,
}

/// The identity of a menu's structure: same shape, same items, so texts and
/// flags can be updated in place instead of rebuilding the menu (which would
/// close it under the person's pointer every second during a call).
fn shape(entries: &[MenuEntry], out: &mut Vec<String>) {
    for entry in entries {
        match entry {
            MenuEntry::Info { id, .. } => out.push(id.clone()),
            MenuEntry::Action { command, .. } => out.push(command.to_menu_id()),
            MenuEntry::Check { command, .. } => out.push(format!("check:{}", command.to_menu_id())),
            MenuEntry::Submenu { id, entries, .. } => {
                out.push(format!("{id}["));
                shape(entries, out);
                out.push("]".to_owned());
            }
            MenuEntry::Separator => out.push("-".to_owned()),
        }
    }
}

/// Builds menu items for `entries`, appending each to `append`, and records
/// them in order in `items`.
fn build(
    entries: &[MenuEntry],
    append: &dyn Fn(&dyn IsMenuItem) -> tray_icon::menu::Result<()>,
    items: &mut Vec<Item>,
) -> anyhow::Result<()> {
    for entry in entries {
        match entry {
            MenuEntry::Info { id, label } => {
                let item = MenuItem::with_id(id.as_str(), menu_text(label), false, None);
                append(&item)?;
                items.push(Item::Normal(item));
            }
            MenuEntry::Action { label, command, enabled } => {
                let item = MenuItem::with_id(command.to_menu_id(), menu_text(label), *enabled, None);
                append(&item)?;
                items.push(Item::Normal(item));
            }
            MenuEntry::Check { label, command, checked } => {
                let item = CheckMenuItem::with_id(command.to_menu_id(), menu_text(label), true, *checked, None);
                append(&item)?;
                items.push(Item::Check(item));
            }
            MenuEntry::Submenu { id, label, enabled, entries } => {
                let submenu = Submenu::with_id(id.as_str(), menu_text(label), *enabled);
                append(&submenu)?;
                items.push(Item::Sub(submenu.clone()));
                build(entries, &|item| submenu.append(item), items)?;
            }
            MenuEntry::Separator => {
                append(&PredefinedMenuItem::separator())?;
                items.push(Item::Separator);
            }
        }
    }
    Ok(())
}

/// Sets every item's text and flags from `entries` (same shape as built).
fn refresh(entries: &[MenuEntry], items: &mut std::slice::Iter<'_, Item>) {
    for entry in entries {
        let item = items.next();
        match (entry, item) {
            (MenuEntry::Info { label, .. }, Some(Item::Normal(item))) => item.set_text(menu_text(label)),
            (MenuEntry::Action { label, enabled, .. }, Some(Item::Normal(item))) => {
                item.set_text(menu_text(label));
                item.set_enabled(*enabled);
            }
            (MenuEntry::Check { label, checked, .. }, Some(Item::Check(item))) => {
                item.set_text(menu_text(label));
                item.set_checked(*checked);
            }
            (MenuEntry::Submenu { label, enabled, entries, .. }, Some(Item::Sub(item))) => {
                item.set_text(menu_text(label));
                item.set_enabled(*enabled);
                refresh(entries, items);
            }
            (MenuEntry::Separator, Some(Item::Separator)) => {}
            // Shapes are compared before refreshing, so this cannot happen; if
            // it did, the next rebuild puts things right.
            _ => tracing::error!("menu shape mismatch while refreshing"),
        }
    }
}

/// The tray icon, its menu, and the notifications, driven by [`TrayState`].
pub struct Ui {
    tray: TrayIcon,
    icons: HashMap<IconKind, Icon>,
    state: TrayState,
    notifier: Notifier,
    commands: mpsc::Sender<Command>,
    inputs: mpsc::Sender<UiInput>,
    shown: Option<View>,
    /// The kind of link last logged ("Up", "Down", "Connecting").
    shown_link: Option<&'static str>,
    shown_shape: Vec<String>,
    items: Vec<Item>,
    ticker: Option<glib::SourceId>,
}

impl Ui {
    /// Creates the tray icon in its initial (connecting) state. Notifications
    /// go through `notifier`.
    pub fn new(
        commands: mpsc::Sender<Command>,
        inputs: mpsc::Sender<UiInput>,
        notifier: Notifier,
    ) -> anyhow::Result<Ui> {
        let mut icons = HashMap::new();
        for kind in IconKind::ALL {
            let icon = Icon::from_rgba(icons::rgba(kind, ICON_SIZE), ICON_SIZE, ICON_SIZE)
                .with_context(|| format!("the {kind:?} icon"))?;
            icons.insert(kind, icon);
        }
        let state = TrayState::default();
        let initial = view(&state, SystemTime::now());
        let tray = TrayIconBuilder::new()
            .with_id("voicelink")
            .with_icon(icons[&initial.icon].clone())
            .with_title("voicelink")
            .with_tooltip(&initial.tooltip)
            .build()
            .context("cannot create the tray icon")?;
        let mut ui = Ui {
            tray,
            icons,
            state,
            notifier,
            commands,
            inputs,
            shown: None,
            shown_link: None,
            shown_shape: Vec::new(),
            items: Vec::new(),
            ticker: None,
        };
        ui.render(false)?;
        Ok(ui)
    }

    /// Applies an update from the daemon client: the tray shows it first, then
    /// the notifications are queued (they never wait on the server).
    pub fn update(&mut self, update: Update) {
        let notices = self.state.apply(update);
        self.render_or_log(false);
        for notice in notices {
            self.notify(notice);
        }
    }

    fn render_or_log(&mut self, force: bool) {
        if let Err(error) = self.render(force) {
            tracing::error!(error = format!("{error:#}"), "cannot update the tray");
        }
    }

    /// Handles one input; returns false when the tray should quit.
    pub fn handle(&mut self, input: UiInput) -> bool {
        let mut force = false;
        match input {
            UiInput::Menu(id) => match Command::from_menu_id(&id) {
                Some(Command::Quit) => return false,
                Some(command) => {
                    // A check item ticks itself when clicked; the daemon's
                    // answer decides, so put the ticks back from the state.
                    force = matches!(command, Command::SetInput { .. } | Command::SetOutput { .. });
                    self.send(command);
                }
                None => {}
            },
            // The notification task has withdrawn the notification already.
            UiInput::Notification { call_id, choice } => match choice {
                Choice::Answer => self.send(Command::Answer { call_id }),
                Choice::Decline => self.send(Command::Decline { call_id }),
            },
            UiInput::Tick => {}
            UiInput::Quit => return false,
        }
        self.render_or_log(force);
        true
    }

    fn send(&mut self, command: Command) {
        tracing::info!(?command, "chosen");
        if let Err(error) = self.commands.try_send(command) {
            // Full only if the person clicks faster than the daemon answers.
            tracing::warn!(%error, "command dropped");
        }
    }

    fn notify(&mut self, notice: Notice) {
        match notice {
            Notice::Ringing { call_id, caller } => self.notifier.ringing(&call_id, &caller),
            Notice::StoppedRinging { call_id, outcome, .. } => {
                tracing::info!(call_id, outcome, "stopped ringing");
                self.notifier.stopped_ringing(&call_id);
            }
            Notice::Missed { call_id, caller } => self.notifier.missed(&call_id, &caller),
            Notice::Impostor { claimed, known } => self.notifier.impostor(&claimed, &known),
        }
    }

    fn render(&mut self, force: bool) -> anyhow::Result<()> {
        let next = view(&self.state, SystemTime::now());
        let link = match &self.state.link {
            Link::Connecting => "Connecting",
            Link::Up => "Up",
            Link::Down { .. } => "Down",
        };
        let icon_changed = self.shown.as_ref().map(|v| v.icon) != Some(next.icon);
        if force || self.shown.as_ref() != Some(&next) {
            if icon_changed {
                self.tray.set_icon(Some(self.icons[&next.icon].clone())).context("set the icon")?;
            }
            self.tray.set_tooltip(Some(&next.tooltip)).context("set the tooltip")?;
            let mut next_shape = Vec::new();
            shape(&next.menu, &mut next_shape);
            if next_shape == self.shown_shape && !self.items.is_empty() {
                refresh(&next.menu, &mut self.items.iter());
            } else {
                let menu = Menu::new();
                let mut items = Vec::new();
                build(&next.menu, &|item| menu.append(item), &mut items)?;
                self.tray.set_menu(Some(Box::new(menu)));
                self.items = items;
                self.shown_shape = next_shape;
            }
            self.set_ticking(next.ticking);
        }
        // Logged once the item shows it (the backend has applied the icon, the
        // tooltip and a rebuilt menu when its setters return), on every change
        // of icon or of the link's kind (connecting, up, down), not on each
        // tick of a call's clock.
        if icon_changed || self.shown_link != Some(link) {
            tracing::info!(icon = ?next.icon, link = %link, tooltip = %next.tooltip, "tray state");
            self.shown_link = Some(link);
        }
        self.shown = Some(next);
        Ok(())
    }

    /// Runs a once-a-second clock while a call's duration is on show.
    fn set_ticking(&mut self, ticking: bool) {
        match (ticking, self.ticker.is_some()) {
            (true, false) => {
                let inputs = self.inputs.clone();
                self.ticker = Some(glib::timeout_add_seconds_local(1, move || {
                    // A full queue already holds work that re-renders.
                    let _ = inputs.try_send(UiInput::Tick);
                    glib::ControlFlow::Continue
                }));
            }
            (false, true) => {
                if let Some(ticker) = self.ticker.take() {
                    ticker.remove();
                }
            }
            _ => {}
        }
    }
}

/// Why the UI stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The person chose Quit, or a signal (SIGTERM, SIGINT) asked to.
    Quit,
    /// The daemon client's thread ended (it only does when it fails).
    ClientStopped,
}

/// Feeds the UI from the client's updates and from its own inputs until one of
/// them says to stop; then withdraws the ringing notifications (a quitting tray
/// can no longer answer them) and says why it stopped.
pub async fn drive(mut ui: Ui, mut updates: mpsc::Receiver<Update>, mut inputs: mpsc::Receiver<UiInput>) -> Exit {
    let exit = loop {
        tokio::select! {
            update = updates.recv() => match update {
                Some(update) => ui.update(update),
                None => {
                    tracing::error!("the daemon client stopped");
                    break Exit::ClientStopped;
                }
            },
            input = inputs.recv() => {
                // The UI holds a sender itself, so the queue never ends.
                let keep_going = input.is_some_and(|input| ui.handle(input));
                if !keep_going {
                    break Exit::Quit;
                }
            }
        }
    };
    if glib::future_with_timeout(CLOSE_ON_QUIT, ui.notifier.close_all()).await.is_err() {
        tracing::warn!("the notification server did not withdraw the ringing notifications in time");
    }
    exit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ampersands_survive_the_mnemonic_syntax() {
        assert_eq!(menu_text("Call Tom & Jerry"), "Call Tom && Jerry");
        assert_eq!(menu_text("A&&B"), "A&&&&B");
        assert_eq!(menu_text("Hang up"), "Hang up");
    }
}
