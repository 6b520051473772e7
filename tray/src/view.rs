//! The tray as a pure function of what it knows: [`view`] turns a
//! [`TrayState`] and the current time into the icon, the tooltip and the menu.
//!
//! Nothing here touches the desktop or the daemon, so every state the tray can
//! be in is tested below by building the state and looking at the result. The
//! desktop glue (`ui.rs` in the binary) only renders a [`View`].

use std::time::{Duration, SystemTime};

use voicelink_proto::v1::{self, CallState};

use crate::command::Command;
use crate::model::{Link, TrayState, caller_name, not_the_one_you_know};

/// Which icon the tray shows (drawn by [`crate::icons`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IconKind {
    /// Connected, no call.
    Idle,
    /// A call is ringing here.
    Ringing,
    /// In a call (also while dialing and connecting).
    InCall,
    /// In a call with the microphone muted.
    Muted,
    /// The call is on hold.
    OnHold,
    /// The daemon cannot be reached (or the tray is still connecting).
    DaemonDown,
}

impl IconKind {
    /// Every icon, for tests and for drawing them all up front.
    pub const ALL: [IconKind; 6] =
        [IconKind::Idle, IconKind::Ringing, IconKind::InCall, IconKind::Muted, IconKind::OnHold, IconKind::DaemonDown];
}

/// "Add to the call": the online peers not in `call`'s (group) call.
fn add_to_the_call(state: &TrayState, call: &v1::Call, calls: &[&v1::Call]) -> MenuEntry {
    let in_the_call = |device_id: &str| {
        calls.iter().any(|c| {
            c.peer_device_id == device_id
                && (c.call_id == call.call_id || (!call.group_id.is_empty() && c.group_id == call.group_id))
        })
    };
    let mut online: Vec<&v1::Peer> = state.peers.values().filter(|p| p.online && !in_the_call(&p.device_id)).collect();
    online.sort_by(|a, b| a.display_name.cmp(&b.display_name).then(a.device_id.cmp(&b.device_id)));
    let entries: Vec<MenuEntry> = online
        .into_iter()
        .map(|peer| MenuEntry::Action {
            label: peer_label(peer),
            command: Command::AddParticipant { call_id: call.call_id.clone(), device_id: peer.device_id.clone() },
            enabled: true,
        })
        .collect();
    MenuEntry::Submenu {
        id: format!("add-to:{}", call.call_id),
        label: "Add to the call".to_owned(),
        enabled: !entries.is_empty(),
        entries,
    }
}

/// A peer as the menu names it: the user's alias, else its name, else its ID,
/// with a warning when it is not the device the user knows by that name.
fn peer_label(peer: &v1::Peer) -> String {
    let name = match (peer.alias.as_str(), peer.display_name.as_str()) {
        ("", "") => peer.device_id.clone(),
        ("", name) => name.to_owned(),
        (alias, _) => alias.to_owned(),
    };
    format!("{name}{}", not_the_one_you_know(&peer.name_conflict))
}

/// One entry of the tray menu.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MenuEntry {
    /// A line of text that does nothing when chosen (status, call details).
    Info {
        /// A stable ID, so the glue can update the text in place.
        id: String,
        /// The text.
        label: String,
    },
    /// An item that runs a command.
    Action {
        /// The text.
        label: String,
        /// What choosing it does (its ID is [`Command::to_menu_id`]).
        command: Command,
        /// Whether it can be chosen now.
        enabled: bool,
    },
    /// A check item (a device choice).
    Check {
        /// The text.
        label: String,
        /// What choosing it does.
        command: Command,
        /// Whether it is the current choice.
        checked: bool,
    },
    /// A submenu.
    Submenu {
        /// A stable ID.
        id: String,
        /// The text.
        label: String,
        /// Whether it can be opened.
        enabled: bool,
        /// Its entries.
        entries: Vec<MenuEntry>,
    },
    /// A separator line.
    Separator,
}

/// Everything the tray shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The icon.
    pub icon: IconKind,
    /// The state in words: the tooltip, and also the menu's first status line
    /// (so it is there on hosts that show no tooltips).
    pub tooltip: String,
    /// The menu, top to bottom.
    pub menu: Vec<MenuEntry>,
    /// Whether the view shows a running clock (a call's duration), so it must
    /// be recomputed every second while this is true.
    pub ticking: bool,
}

/// The menu item ID of the status line.
pub const STATUS_ID: &str = "info:status";

/// Who holds a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hold {
    /// Held by us: only we can resume it.
    here: bool,
    /// Held by the peer: we cannot resume it (but may hold it too).
    by_peer: bool,
}

impl Hold {
    fn of(call: &v1::Call) -> Hold {
        if call.held_here || call.held_by_peer {
            Hold { here: call.held_here, by_peer: call.held_by_peer }
        } else {
            // A daemon from before `held_here` / `held_by_peer` only says
            // `on_hold`; its holds were taken to be ours, as then.
            Hold { here: call.on_hold || call.state() == CallState::OnHold, by_peer: false }
        }
    }

    fn either(self) -> bool {
        self.here || self.by_peer
    }
}

fn is_on_hold(call: &v1::Call) -> bool {
    Hold::of(call).either()
}

/// Whether a call carries audio (so it can be muted and held).
fn is_live(call: &v1::Call) -> bool {
    matches!(call.state(), CallState::Active | CallState::OnHold | CallState::Reconnecting)
}

/// Whether this build knows what the call's state means. A newer daemon's state
/// arrives as `Unspecified` (prost's reading of an unknown value).
fn is_known(call: &v1::Call) -> bool {
    !matches!(call.state(), CallState::Unspecified)
}

/// How long a call has been answered, if it has.
fn answered_for(call: &v1::Call, now: SystemTime) -> Option<Duration> {
    let answered = call.answered_at.as_ref()?;
    let answered = SystemTime::try_from(*answered).ok()?;
    // A clock step backwards shows 00:00 rather than nothing.
    Some(now.duration_since(answered).unwrap_or_default())
}

/// `mm:ss`, or `h:mm:ss` from an hour on.
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 { format!("{h}:{m:02}:{s:02}") } else { format!("{m:02}:{s:02}") }
}

/// A call in words: "In call with alice · 03:12 · good".
fn describe_call(call: &v1::Call, quality: Option<&str>, now: SystemTime) -> String {
    let name = caller_name(call);
    let hold = Hold::of(call);
    let mut parts = vec![match call.state() {
        CallState::Outgoing => format!("Calling {name}…"),
        CallState::Connecting => format!("Connecting to {name}…"),
        CallState::Reconnecting => format!("Reconnecting to {name}…"),
        CallState::Active | CallState::OnHold => match (hold.here, hold.by_peer) {
            (true, true) => format!("{name} on hold (both sides)"),
            (true, false) => format!("{name} on hold"),
            (false, true) => format!("{name} put the call on hold"),
            (false, false) => format!("In call with {name}"),
        },
        // Incoming and ended calls are not described here; anything else is a
        // state this build does not know: say no more than that there is a call.
        _ => format!("Call with {name} · state unknown"),
    }];
    if let Some(duration) = answered_for(call, now) {
        parts.push(format_duration(duration));
    }
    if call.muted {
        parts.push("muted".to_owned());
    }
    // Nobody is recorded without seeing it.
    match (call.recording, call.recorded_by_peer) {
        (true, true) => parts.push("● recorded by both sides".to_owned()),
        (true, false) => parts.push("● recording".to_owned()),
        (false, true) => parts.push(format!("● {name} is recording")),
        (false, false) => {}
    }
    if let Some(quality) = quality {
        parts.push(quality.to_owned());
    }
    parts.join(" · ")
}

fn device_menu(
    id: &str,
    label: &str,
    devices: Option<&[v1::AudioDevice]>,
    current: &str,
    command: impl Fn(String) -> Command,
) -> MenuEntry {
    let Some(devices) = devices else {
        return MenuEntry::Submenu { id: id.to_owned(), label: label.to_owned(), enabled: false, entries: Vec::new() };
    };
    let mut entries = vec![MenuEntry::Check {
        label: "System default".to_owned(),
        command: command("default".to_owned()),
        checked: current.is_empty() || current == "default",
    }];
    entries.extend(devices.iter().map(|d| MenuEntry::Check {
        label: if d.description.is_empty() { d.id.clone() } else { d.description.clone() },
        command: command(d.id.clone()),
        checked: current == d.id,
    }));
    MenuEntry::Submenu { id: id.to_owned(), label: label.to_owned(), enabled: true, entries }
}

/// The tray for this state at time `now`.
pub fn view(state: &TrayState, now: SystemTime) -> View {
    let ringing: Vec<&v1::Call> = state.calls.values().filter(|c| c.state() == CallState::Incoming).collect();
    let others: Vec<&v1::Call> = state.calls.values().filter(|c| c.state() != CallState::Incoming).collect();
    let quality = |call: &v1::Call| state.quality.get(&call.call_id).map(String::as_str);

    let (icon, tooltip) = match &state.link {
        Link::Connecting => (IconKind::DaemonDown, "voicelink: connecting to voiced…".to_owned()),
        Link::Down { reason, retry_in } => {
            (IconKind::DaemonDown, format!("voicelink: {reason} · retrying in {}", format_retry(*retry_in)))
        }
        Link::Up => match (ringing.first(), others.first()) {
            (Some(call), _) => {
                let more = if ringing.len() > 1 { format!(" (+{} more)", ringing.len() - 1) } else { String::new() };
                (IconKind::Ringing, format!("{} is calling{more}", caller_name(call)))
            }
            (None, Some(_)) => {
                // A call that is not held decides the icon over one on hold, and
                // a call in a known state over one in a state this build does not know.
                let call = others
                    .iter()
                    .find(|c| is_known(c) && !is_on_hold(c))
                    .or_else(|| others.iter().find(|c| is_known(c)))
                    .unwrap_or(&others[0]);
                let icon = if is_on_hold(call) {
                    IconKind::OnHold
                } else if call.muted {
                    IconKind::Muted
                } else {
                    IconKind::InCall
                };
                (icon, describe_call(call, quality(call), now))
            }
            (None, None) => {
                let online = state.peers.values().filter(|p| p.online).count();
                let peers = match online {
                    0 => "no peers online".to_owned(),
                    1 => "1 peer online".to_owned(),
                    n => format!("{n} peers online"),
                };
                let missed = match state.unseen_missed {
                    0 => String::new(),
                    1 => " · 1 missed call".to_owned(),
                    n => format!(" · {n} missed calls"),
                };
                (IconKind::Idle, format!("voicelink: idle · {peers}{missed}"))
            }
        },
    };

    let mut menu = Vec::new();
    // Answer and Decline come first: that is what a ringing tray is for.
    for call in &ringing {
        let name = caller_name(call);
        // A waiting call: answering holds the call in progress, or merges.
        let hold = if call.waiting { ", hold the call" } else { "" };
        menu.push(MenuEntry::Action {
            label: format!("Answer {name}{hold}"),
            command: Command::Answer { call_id: call.call_id.clone() },
            enabled: true,
        });
        if call.waiting {
            menu.push(MenuEntry::Action {
                label: format!("Answer {name} and merge"),
                command: Command::AnswerAndMerge { call_id: call.call_id.clone() },
                enabled: true,
            });
        }
        menu.push(MenuEntry::Action {
            label: format!("Decline {name}"),
            command: Command::Decline { call_id: call.call_id.clone() },
            enabled: true,
        });
    }
    if !ringing.is_empty() {
        menu.push(MenuEntry::Separator);
    }
    menu.push(MenuEntry::Info { id: STATUS_ID.to_owned(), label: tooltip.clone() });
    menu.push(MenuEntry::Separator);

    if state.link == Link::Up {
        for call in &others {
            let id = call.call_id.clone();
            let live = is_live(call);
            menu.push(MenuEntry::Info {
                id: format!("info:call:{id}"),
                label: describe_call(call, quality(call), now),
            });
            // Ending a call is right in every state, even one this build does
            // not know (the daemon hangs up any call that has not ended).
            menu.push(MenuEntry::Action {
                label: "Hang up".to_owned(),
                command: Command::Hangup { call_id: id.clone() },
                enabled: true,
            });
            menu.push(MenuEntry::Action {
                label: if call.muted { "Unmute" } else { "Mute" }.to_owned(),
                command: Command::SetMute { call_id: id.clone(), muted: !call.muted },
                enabled: live,
            });
            menu.push(MenuEntry::Action {
                label: if call.speaker_muted { "Unmute speaker" } else { "Mute speaker" }.to_owned(),
                command: Command::SetSpeakerMute { call_id: id.clone(), muted: !call.speaker_muted },
                enabled: live,
            });
            // Only a hold placed here can be resumed here; a call the peer holds
            // can still be held here too.
            let held_here = Hold::of(call).here;
            menu.push(MenuEntry::Action {
                label: if held_here { "Resume" } else { "Hold" }.to_owned(),
                command: Command::SetHold { call_id: id.clone(), on_hold: !held_here },
                enabled: live,
            });
            menu.push(MenuEntry::Action {
                label: if call.recording { "Stop recording" } else { "Record" }.to_owned(),
                command: Command::SetRecording { call_id: id.clone(), recording: !call.recording },
                enabled: live,
            });
            // A group call's legs share one "Add to the call": under its first.
            let first_of_group = call.group_id.is_empty()
                || others
                    .iter()
                    .find(|c| c.group_id == call.group_id && is_live(c))
                    .is_some_and(|c| c.call_id == call.call_id);
            if live && first_of_group {
                menu.push(add_to_the_call(state, call, &others));
            }
            menu.push(MenuEntry::Separator);
        }
        // Peers to call only when idle: the daemon takes one call at a time.
        if state.calls.is_empty() {
            let mut online: Vec<&v1::Peer> = state.peers.values().filter(|p| p.online).collect();
            online.sort_by(|a, b| a.display_name.cmp(&b.display_name).then(a.device_id.cmp(&b.device_id)));
            if online.is_empty() {
                menu.push(MenuEntry::Info { id: "info:peers".to_owned(), label: "No peers online".to_owned() });
            }
            for peer in online {
                menu.push(MenuEntry::Action {
                    label: format!("Call {}", peer_label(peer)),
                    command: Command::Dial { device_id: peer.device_id.clone() },
                    enabled: true,
                });
            }
            menu.push(MenuEntry::Separator);
        }
    }

    if state.link == Link::Up && state.unseen_missed > 0 {
        let calls = if state.unseen_missed == 1 { "call" } else { "calls" };
        menu.push(MenuEntry::Action {
            label: format!("{} missed {calls}: mark as seen", state.unseen_missed),
            command: Command::MarkMissedSeen,
            enabled: true,
        });
    }
    if state.link == Link::Up
        && let Some(dnd) = state.do_not_disturb
    {
        menu.push(MenuEntry::Check {
            label: "Do not disturb".to_owned(),
            command: Command::SetDoNotDisturb { on: !dnd },
            checked: dnd,
        });
    }
    let devices = state.devices.as_ref();
    menu.push(device_menu(
        "menu:input",
        "Input device",
        devices.map(|d| d.inputs.as_slice()),
        &state.audio_input,
        |spec| Command::SetInput { spec },
    ));
    menu.push(device_menu(
        "menu:output",
        "Output device",
        devices.map(|d| d.outputs.as_slice()),
        &state.audio_output,
        |spec| Command::SetOutput { spec },
    ));
    // The microphone check is for before a call; a call shows its own level.
    if state.link == Link::Up && state.calls.is_empty() {
        match &state.input_level {
            Some(reading) => {
                menu.push(MenuEntry::Info { id: "info:mic-level".to_owned(), label: level_bar(reading.peak_dbfs) });
                menu.push(MenuEntry::Action {
                    label: "Stop the microphone check".to_owned(),
                    command: Command::CheckMicrophone { on: false },
                    enabled: true,
                });
            }
            None => menu.push(MenuEntry::Action {
                label: "Check the microphone".to_owned(),
                command: Command::CheckMicrophone { on: true },
                enabled: true,
            }),
        }
    }
    if let Some(error) = &state.last_error {
        menu.push(MenuEntry::Info { id: "info:error".to_owned(), label: format!("Last error: {error}") });
    }
    menu.push(MenuEntry::Separator);
    menu.push(MenuEntry::Action { label: "Quit tray".to_owned(), command: Command::Quit, enabled: true });

    let ticking = state.link == Link::Up && others.iter().any(|c| c.answered_at.is_some());
    View { icon, tooltip, menu, ticking }
}

/// The microphone check's reading as a bar: a block per 6 dB from -60 dBFS.
pub fn level_bar(peak_dbfs: f64) -> String {
    const BLOCKS: usize = 10;
    let lit = ((peak_dbfs + 60.0) / 6.0).clamp(0.0, BLOCKS as f64) as usize;
    let level = if peak_dbfs <= -100.0 { "silence".to_owned() } else { format!("{peak_dbfs:.0} dBFS") };
    format!("Microphone {}{} {level}", "\u{25AE}".repeat(lit), "\u{25AF}".repeat(BLOCKS - lit))
}

fn format_retry(retry_in: Duration) -> String {
    if retry_in < Duration::from_secs(1) {
        format!("{} ms", retry_in.as_millis())
    } else {
        format!("{} s", retry_in.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Update;

    const T0: u64 = 1_800_000_000;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + 192)
    }

    fn up() -> TrayState {
        TrayState { link: Link::Up, ..Default::default() }
    }

    fn peer(id: &str, name: &str, online: bool) -> v1::Peer {
        v1::Peer { device_id: id.into(), display_name: name.into(), online, ..Default::default() }
    }

    fn call(state: CallState) -> v1::Call {
        let answered = matches!(state, CallState::Active | CallState::OnHold | CallState::Reconnecting);
        v1::Call {
            call_id: "c1".into(),
            peer_device_id: "DEV-ALICE".into(),
            peer_display_name: "alice".into(),
            state: state as i32,
            on_hold: state == CallState::OnHold,
            held_here: state == CallState::OnHold,
            answered_at: answered.then_some(prost_types::Timestamp { seconds: T0 as i64, nanos: 0 }),
            ..Default::default()
        }
    }

    fn with_call(call: v1::Call) -> TrayState {
        let mut state = up();
        state.calls.insert(call.call_id.clone(), call);
        state
    }

    /// The labels of the enabled actions, in order.
    fn actions(view: &View) -> Vec<&str> {
        view.menu
            .iter()
            .filter_map(|e| match e {
                MenuEntry::Action { label, enabled: true, .. } => Some(label.as_str()),
                _ => None,
            })
            .collect()
    }

    fn disabled_actions(view: &View) -> Vec<&str> {
        view.menu
            .iter()
            .filter_map(|e| match e {
                MenuEntry::Action { label, enabled: false, .. } => Some(label.as_str()),
                _ => None,
            })
            .collect()
    }

    fn infos(view: &View) -> Vec<&str> {
        view.menu
            .iter()
            .filter_map(|e| match e {
                MenuEntry::Info { label, .. } => Some(label.as_str()),
                _ => None,
            })
            .collect()
    }

    fn command_of<'a>(view: &'a View, label: &str) -> &'a Command {
        view.menu
            .iter()
            .find_map(|e| match e {
                MenuEntry::Action { label: l, command, .. } if l == label => Some(command),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {label:?} in {:#?}", view.menu))
    }

    #[test]
    fn connecting_shows_the_daemon_down_icon_and_only_quit() {
        let view = view(&TrayState::default(), now());
        assert_eq!(view.icon, IconKind::DaemonDown);
        assert_eq!(view.tooltip, "voicelink: connecting to voiced…");
        assert_eq!(actions(&view), ["Quit tray"]);
        assert!(!view.ticking);
    }

    #[test]
    fn daemon_down_says_why_and_when_it_retries() {
        let state = TrayState {
            link: Link::Down { reason: "voiced is not running".into(), retry_in: Duration::from_secs(4) },
            ..Default::default()
        };
        let view = view(&state, now());
        assert_eq!(view.icon, IconKind::DaemonDown);
        assert_eq!(view.tooltip, "voicelink: voiced is not running · retrying in 4 s");
        assert_eq!(infos(&view), [view.tooltip.as_str()], "the status line repeats the tooltip");
        assert_eq!(actions(&view), ["Quit tray"]);
        // The device menus are there but cannot be opened.
        let submenus: Vec<_> = view
            .menu
            .iter()
            .filter_map(|e| match e {
                MenuEntry::Submenu { label, enabled, .. } => Some((label.as_str(), *enabled)),
                _ => None,
            })
            .collect();
        assert_eq!(submenus, [("Input device", false), ("Output device", false)]);
    }

    #[test]
    fn idle_lists_online_peers_to_call_sorted_by_name() {
        let mut state = up();
        for p in [peer("D2", "zed", true), peer("D1", "bob", true), peer("D3", "carol", false)] {
            state.peers.insert(p.device_id.clone(), p);
        }
        let view = view(&state, now());
        assert_eq!(view.icon, IconKind::Idle);
        assert_eq!(view.tooltip, "voicelink: idle · 2 peers online");
        assert_eq!(actions(&view), ["Call bob", "Call zed", "Check the microphone", "Quit tray"]);
        assert_eq!(command_of(&view, "Call bob"), &Command::Dial { device_id: "D1".into() });
    }

    #[test]
    fn an_answered_call_offers_to_add_the_online_peers_not_in_it() {
        let mut group_leg = call(CallState::Active);
        group_leg.group_id = "g1".into();
        let mut second = group_leg.clone();
        second.call_id = "c2".into();
        second.peer_device_id = "D2".into();
        second.peer_display_name = "carol".into();
        let mut state = with_call(group_leg);
        state.calls.insert("c2".into(), second);
        for p in [peer("DEV-ALICE", "alice", true), peer("D2", "carol", true), peer("D3", "dave", true)] {
            state.peers.insert(p.device_id.clone(), p);
        }
        state.peers.insert("D4".into(), peer("D4", "erin", false));
        let view = view(&state, now());
        let adds: Vec<&MenuEntry> = view
            .menu
            .iter()
            .filter(|e| matches!(e, MenuEntry::Submenu { label, .. } if label == "Add to the call"))
            .collect();
        assert_eq!(adds.len(), 1, "one per group call: {:#?}", view.menu);
        let MenuEntry::Submenu { entries, enabled: true, .. } = adds[0] else { panic!("{:?}", adds[0]) };
        assert_eq!(
            entries,
            &[MenuEntry::Action {
                label: "dave".into(),
                command: Command::AddParticipant { call_id: "c1".into(), device_id: "D3".into() },
                enabled: true,
            }],
            "alice and carol are in the call, erin is offline"
        );
    }

    #[test]
    fn idle_with_nobody_online_says_so() {
        let view = view(&up(), now());
        assert_eq!(view.icon, IconKind::Idle);
        assert_eq!(view.tooltip, "voicelink: idle · no peers online");
        assert!(infos(&view).contains(&"No peers online"));
        assert_eq!(actions(&view), ["Check the microphone", "Quit tray"]);
    }

    #[test]
    fn ringing_puts_answer_and_decline_at_the_top_with_the_callers_name() {
        let mut state = with_call(call(CallState::Incoming));
        state.peers.insert("D1".into(), peer("D1", "bob", true));
        let view = view(&state, now());
        assert_eq!(view.icon, IconKind::Ringing);
        assert_eq!(view.tooltip, "alice is calling");
        assert!(matches!(&view.menu[0], MenuEntry::Action { label, .. } if label == "Answer alice"));
        assert!(matches!(&view.menu[1], MenuEntry::Action { label, .. } if label == "Decline alice"));
        assert_eq!(command_of(&view, "Answer alice"), &Command::Answer { call_id: "c1".into() });
        assert_eq!(command_of(&view, "Decline alice"), &Command::Decline { call_id: "c1".into() });
        // Nobody to dial while a call rings.
        assert_eq!(actions(&view), ["Answer alice", "Decline alice", "Quit tray"]);
        assert!(!view.ticking);
    }

    #[test]
    fn a_caller_without_a_name_is_shown_by_device_id() {
        let mut c = call(CallState::Incoming);
        c.peer_display_name.clear();
        let view = view(&with_call(c), now());
        assert_eq!(view.tooltip, "DEV-ALICE is calling");
    }

    #[test]
    fn a_call_whose_link_went_silent_says_it_is_reconnecting_and_stays_in_hand() {
        let view = view(&with_call(call(CallState::Reconnecting)), now());
        assert_eq!(view.icon, IconKind::InCall);
        assert_eq!(view.tooltip, "Reconnecting to alice… · 03:12");
        assert!(disabled_actions(&view).is_empty(), "mute and hold still work: {:?}", disabled_actions(&view));
    }

    #[test]
    fn dialing_and_connecting_offer_hang_up_only() {
        for (state, words) in [(CallState::Outgoing, "Calling alice…"), (CallState::Connecting, "Connecting to alice…")]
        {
            let view = view(&with_call(call(state)), now());
            assert_eq!(view.icon, IconKind::InCall, "{state:?}");
            assert_eq!(view.tooltip, words);
            assert_eq!(actions(&view), ["Hang up", "Quit tray"], "{state:?}");
            assert_eq!(disabled_actions(&view), ["Mute", "Mute speaker", "Hold", "Record"], "{state:?}");
            assert!(!view.ticking, "no duration before the answer");
        }
    }

    #[test]
    fn in_a_call_shows_peer_duration_and_quality() {
        let mut state = with_call(call(CallState::Active));
        state.quality.insert("c1".into(), "good".into());
        let view = view(&state, now());
        assert_eq!(view.icon, IconKind::InCall);
        assert_eq!(view.tooltip, "In call with alice · 03:12 · good");
        assert!(infos(&view).contains(&"In call with alice · 03:12 · good"), "the call line");
        assert_eq!(actions(&view), ["Hang up", "Mute", "Mute speaker", "Hold", "Record", "Quit tray"]);
        assert_eq!(command_of(&view, "Hang up"), &Command::Hangup { call_id: "c1".into() });
        assert_eq!(command_of(&view, "Mute"), &Command::SetMute { call_id: "c1".into(), muted: true });
        assert_eq!(command_of(&view, "Hold"), &Command::SetHold { call_id: "c1".into(), on_hold: true });
        assert!(view.ticking, "the duration runs");
    }

    #[test]
    fn missed_calls_are_counted_until_marked_seen() {
        let mut state = up();
        let missed = |outcome: v1::CallOutcome| {
            Update::Event(Box::new(v1::Event {
                kind: Some(v1::event::Kind::HistoryAdded(v1::HistoryAdded {
                    entry: Some(v1::HistoryEntry { outcome: outcome.into(), ..Default::default() }),
                })),
                ..Default::default()
            }))
        };
        state.apply(missed(v1::CallOutcome::Missed));
        state.apply(missed(v1::CallOutcome::Answered));
        state.apply(missed(v1::CallOutcome::Missed));
        let shown = view(&state, now());
        assert_eq!(shown.tooltip, "voicelink: idle · no peers online · 2 missed calls");
        assert_eq!(command_of(&shown, "2 missed calls: mark as seen"), &Command::MarkMissedSeen);
        state.apply(Update::CommandDone { command: Command::MarkMissedSeen });
        assert!(!view(&state, now()).tooltip.contains("missed"));
    }

    #[test]
    fn do_not_disturb_is_a_check_item() {
        let mut state = up();
        let policy = |on: bool| {
            Update::Event(Box::new(v1::Event {
                kind: Some(v1::event::Kind::PolicyChanged(v1::PolicyChanged {
                    who_may_ring: "known".into(),
                    auto_answer: "off".into(),
                    do_not_disturb: on,
                })),
                ..Default::default()
            }))
        };
        let check = |view: &View| {
            view.menu.iter().find_map(|entry| match entry {
                MenuEntry::Check { label, command, checked } if label == "Do not disturb" => {
                    Some((command.clone(), *checked))
                }
                _ => None,
            })
        };
        assert_eq!(check(&view(&state, now())), None, "not before the daemon said");
        state.apply(policy(false));
        assert_eq!(check(&view(&state, now())), Some((Command::SetDoNotDisturb { on: true }, false)));
        state.apply(policy(true));
        assert_eq!(check(&view(&state, now())), Some((Command::SetDoNotDisturb { on: false }, true)));
    }

    #[test]
    fn a_caller_that_claims_a_known_name_is_called_out() {
        let mut impostor = call(CallState::Active);
        impostor.peer_name_conflict = "alice".into();
        let shown = view(&with_call(impostor), now());
        assert_eq!(shown.tooltip, "In call with alice (NOT the alice you know) · 03:12");
    }

    #[test]
    fn a_recording_by_either_side_is_shown_and_ours_can_be_stopped() {
        let mut peer_records = call(CallState::Active);
        peer_records.recorded_by_peer = true;
        let shown = view(&with_call(peer_records), now());
        assert_eq!(shown.tooltip, "In call with alice · 03:12 · ● alice is recording");
        assert_eq!(command_of(&shown, "Record"), &Command::SetRecording { call_id: "c1".into(), recording: true });

        let mut we_record = call(CallState::Active);
        we_record.recording = true;
        let ours = view(&with_call(we_record), now());
        assert_eq!(ours.tooltip, "In call with alice · 03:12 · ● recording");
        assert_eq!(
            command_of(&ours, "Stop recording"),
            &Command::SetRecording { call_id: "c1".into(), recording: false }
        );
    }

    #[test]
    fn without_stats_there_is_no_verdict() {
        let view = view(&with_call(call(CallState::Active)), now());
        assert_eq!(view.tooltip, "In call with alice · 03:12");
    }

    #[test]
    fn muted_offers_unmute() {
        let mut c = call(CallState::Active);
        c.muted = true;
        let view = view(&with_call(c), now());
        assert_eq!(view.icon, IconKind::Muted);
        assert_eq!(view.tooltip, "In call with alice · 03:12 · muted");
        assert_eq!(actions(&view), ["Hang up", "Unmute", "Mute speaker", "Hold", "Record", "Quit tray"]);
        assert_eq!(command_of(&view, "Unmute"), &Command::SetMute { call_id: "c1".into(), muted: false });
    }

    #[test]
    fn on_hold_offers_resume() {
        let view = view(&with_call(call(CallState::OnHold)), now());
        assert_eq!(view.icon, IconKind::OnHold);
        assert_eq!(view.tooltip, "alice on hold · 03:12");
        assert_eq!(actions(&view), ["Hang up", "Mute", "Mute speaker", "Resume", "Record", "Quit tray"]);
        assert_eq!(command_of(&view, "Resume"), &Command::SetHold { call_id: "c1".into(), on_hold: false });
    }

    #[test]
    fn a_hold_from_a_daemon_that_does_not_say_who_holds_is_ours() {
        let mut c = call(CallState::OnHold);
        c.held_here = false;
        let view = view(&with_call(c), now());
        assert_eq!(view.icon, IconKind::OnHold);
        assert_eq!(view.tooltip, "alice on hold · 03:12");
        assert_eq!(actions(&view), ["Hang up", "Mute", "Mute speaker", "Resume", "Record", "Quit tray"]);
    }

    #[test]
    fn held_by_the_peer_says_so_and_offers_hold_not_resume() {
        let mut c = call(CallState::OnHold);
        c.held_here = false;
        c.held_by_peer = true;
        let view = view(&with_call(c), now());
        assert_eq!(view.icon, IconKind::OnHold);
        assert_eq!(view.tooltip, "alice put the call on hold · 03:12");
        assert!(infos(&view).contains(&"alice put the call on hold · 03:12"), "the call line: {:?}", infos(&view));
        assert_eq!(actions(&view), ["Hang up", "Mute", "Mute speaker", "Hold", "Record", "Quit tray"]);
        assert_eq!(command_of(&view, "Hold"), &Command::SetHold { call_id: "c1".into(), on_hold: true });
    }

    #[test]
    fn held_on_both_sides_offers_resume_of_our_hold() {
        let mut c = call(CallState::OnHold);
        c.held_by_peer = true;
        let view = view(&with_call(c), now());
        assert_eq!(view.icon, IconKind::OnHold);
        assert_eq!(view.tooltip, "alice on hold (both sides) · 03:12");
        assert_eq!(actions(&view), ["Hang up", "Mute", "Mute speaker", "Resume", "Record", "Quit tray"]);
        assert_eq!(command_of(&view, "Resume"), &Command::SetHold { call_id: "c1".into(), on_hold: false });
    }

    #[test]
    fn a_call_state_this_build_does_not_know_is_shown_neutrally() {
        // 0 (unspecified) and a value from a newer daemon read the same.
        for raw in [CallState::Unspecified as i32, 99] {
            let mut c = call(CallState::Active);
            c.state = raw;
            let view = view(&with_call(c), now());
            assert_eq!(view.tooltip, "Call with alice · state unknown · 03:12", "{raw}");
            assert_eq!(actions(&view), ["Hang up", "Quit tray"], "{raw}");
            assert_eq!(disabled_actions(&view), ["Mute", "Mute speaker", "Hold", "Record"], "{raw}");
        }
    }

    #[test]
    fn a_known_call_decides_the_icon_over_one_in_an_unknown_state() {
        let mut state = with_call(call(CallState::OnHold));
        let mut unknown = call(CallState::Active);
        unknown.call_id = "c0".into();
        unknown.state = 99;
        state.calls.insert("c0".into(), unknown);
        let view = view(&state, now());
        assert_eq!(view.icon, IconKind::OnHold);
        assert_eq!(view.tooltip, "alice on hold · 03:12");
    }

    #[test]
    fn a_call_ringing_during_another_rings_and_keeps_the_call_controls() {
        let mut state = with_call(call(CallState::Active));
        let mut second = call(CallState::Incoming);
        second.call_id = "c2".into();
        second.peer_display_name = "bob".into();
        state.calls.insert("c2".into(), second);
        let view = view(&state, now());
        assert_eq!(view.icon, IconKind::Ringing);
        assert_eq!(view.tooltip, "bob is calling");
        assert_eq!(
            actions(&view),
            ["Answer bob", "Decline bob", "Hang up", "Mute", "Mute speaker", "Hold", "Record", "Quit tray"]
        );
        assert_eq!(command_of(&view, "Hang up"), &Command::Hangup { call_id: "c1".into() });
    }

    #[test]
    fn a_waiting_call_offers_to_hold_the_call_or_merge() {
        let mut state = with_call(call(CallState::Active));
        let mut second = call(CallState::Incoming);
        second.call_id = "c2".into();
        second.peer_display_name = "bob".into();
        second.waiting = true;
        state.calls.insert("c2".into(), second);
        let view = view(&state, now());
        assert_eq!(
            actions(&view)[..3],
            ["Answer bob, hold the call", "Answer bob and merge", "Decline bob"],
            "{:?}",
            actions(&view)
        );
        assert_eq!(command_of(&view, "Answer bob, hold the call"), &Command::Answer { call_id: "c2".into() });
        assert_eq!(command_of(&view, "Answer bob and merge"), &Command::AnswerAndMerge { call_id: "c2".into() });
    }

    #[test]
    fn long_calls_show_hours() {
        assert_eq!(format_duration(Duration::from_secs(3 * 60 + 12)), "03:12");
        assert_eq!(format_duration(Duration::from_secs(3600 + 5)), "1:00:05");
    }

    #[test]
    fn device_menus_check_the_current_choice() {
        let mut state = up();
        state.apply(Update::Connected {
            unseen_missed: 0,
            status: Box::new(v1::Status {
                audio_input: "hw:1".into(),
                audio_output: "default".into(),
                ..Default::default()
            }),
            devices: Some(v1::ListAudioDevicesResponse {
                inputs: vec![v1::AudioDevice {
                    id: "hw:1".into(),
                    description: "USB mic".into(),
                    ..Default::default()
                }],
                outputs: vec![v1::AudioDevice { id: "hw:2".into(), description: String::new(), ..Default::default() }],
                virtual_endpoints: vec![],
            }),
        });
        let view = view(&state, now());
        let submenu = |name: &str| {
            view.menu
                .iter()
                .find_map(|e| match e {
                    MenuEntry::Submenu { label, entries, enabled: true, .. } if label == name => Some(entries.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no enabled {name}"))
        };
        let checks = |entries: Vec<MenuEntry>| -> Vec<(String, bool, Command)> {
            entries
                .into_iter()
                .filter_map(|e| match e {
                    MenuEntry::Check { label, checked, command } => Some((label, checked, command)),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            checks(submenu("Input device")),
            [
                ("System default".into(), false, Command::SetInput { spec: "default".into() }),
                ("USB mic".into(), true, Command::SetInput { spec: "hw:1".into() }),
            ]
        );
        assert_eq!(
            checks(submenu("Output device")),
            [
                ("System default".into(), true, Command::SetOutput { spec: "default".into() }),
                ("hw:2".into(), false, Command::SetOutput { spec: "hw:2".into() }),
            ]
        );
    }

    #[test]
    fn the_microphone_check_shows_a_level_bar_while_it_runs() {
        let mut state = up();
        let idle = view(&state, now());
        assert_eq!(command_of(&idle, "Check the microphone"), &Command::CheckMicrophone { on: true });
        state.input_level = Some(v1::InputLevel { peak_dbfs: -24.0, ..Default::default() });
        let checking = view(&state, now());
        let bar = format!("Microphone {}{} -24 dBFS", "\u{25AE}".repeat(6), "\u{25AF}".repeat(4));
        assert!(infos(&checking).contains(&bar.as_str()), "{:?}", infos(&checking));
        assert_eq!(command_of(&checking, "Stop the microphone check"), &Command::CheckMicrophone { on: false });
        assert_eq!(level_bar(-127.0), format!("Microphone {} silence", "\u{25AF}".repeat(10)));
        assert_eq!(level_bar(3.0), format!("Microphone {} 3 dBFS", "\u{25AE}".repeat(10)));
    }

    #[test]
    fn the_last_error_is_shown() {
        let mut state = up();
        state.last_error = Some("Dial: bob is busy".into());
        assert!(infos(&view(&state, now())).contains(&"Last error: Dial: bob is busy"));
    }

    #[test]
    fn every_action_id_maps_back_to_its_command_and_ids_are_unique() {
        let mut state = with_call(call(CallState::Active));
        let mut ringing = call(CallState::Incoming);
        ringing.call_id = "c2".into();
        state.calls.insert("c2".into(), ringing);
        let view = view(&state, now());
        let mut ids = Vec::new();
        for entry in &view.menu {
            match entry {
                MenuEntry::Action { command, .. } => {
                    assert_eq!(Command::from_menu_id(&command.to_menu_id()).as_ref(), Some(command));
                    ids.push(command.to_menu_id());
                }
                MenuEntry::Info { id, .. } | MenuEntry::Submenu { id, .. } => {
                    assert_eq!(Command::from_menu_id(id), None, "{id} must not look like a command");
                    ids.push(id.clone());
                }
                _ => {}
            }
        }
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "duplicate menu IDs: {ids:?}");
    }
}
