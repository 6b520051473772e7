//! What a person can ask of the tray, and how it rides in a menu item's ID.
//!
//! Each actionable menu item's ID *is* its command ([`Command::to_menu_id`]), so a
//! click needs no lookup table that could go stale between the menu being built
//! and the click arriving.

/// An action chosen in the menu or on a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Ring a peer by device ID.
    Dial {
        /// The peer's device ID.
        device_id: String,
    },
    /// Add a peer to an answered call (a group call).
    AddParticipant {
        /// The call.
        call_id: String,
        /// The peer's device ID.
        device_id: String,
    },
    /// Answer a ringing call.
    Answer {
        /// The call.
        call_id: String,
    },
    /// Answer a call waiting beside the one in progress, and merge the two
    /// into a group call.
    AnswerAndMerge {
        /// The waiting call.
        call_id: String,
    },
    /// Decline a ringing call.
    Decline {
        /// The call.
        call_id: String,
    },
    /// End a call.
    Hangup {
        /// The call.
        call_id: String,
    },
    /// Mute or unmute a call.
    SetMute {
        /// The call.
        call_id: String,
        /// The new state.
        muted: bool,
    },
    /// Mute or unmute a call's speaker.
    SetSpeakerMute {
        /// The call.
        call_id: String,
        /// The new state.
        muted: bool,
    },
    /// Hold or resume a call.
    SetHold {
        /// The call.
        call_id: String,
        /// The new state.
        on_hold: bool,
    },
    /// Record a call (into a new file in the daemon's recordings folder) or stop.
    SetRecording {
        /// The call.
        call_id: String,
        /// The new state.
        recording: bool,
    },
    /// Mark the missed calls seen.
    MarkMissedSeen,
    /// Do-not-disturb on or off (calls.do_not_disturb).
    SetDoNotDisturb {
        /// On.
        on: bool,
    },
    /// Choose the daemon's audio input (an endpoint spec).
    SetInput {
        /// The spec, e.g. "default" or a device ID.
        spec: String,
    },
    /// Choose the daemon's audio output (an endpoint spec).
    SetOutput {
        /// The spec.
        spec: String,
    },
    /// Show the default input's level for a while (the microphone check), or stop.
    CheckMicrophone {
        /// Start (true) or stop.
        on: bool,
    },
    /// Leave the tray (the daemon keeps running).
    Quit,
}

impl Command {
    /// The menu item ID that stands for this command.
    pub fn to_menu_id(&self) -> String {
        match self {
            Command::Dial { device_id } => format!("dial:{device_id}"),
            // Call IDs never hold a colon; device IDs neither.
            Command::AddParticipant { call_id, device_id } => format!("add:{call_id}:{device_id}"),
            Command::Answer { call_id } => format!("answer:{call_id}"),
            Command::AnswerAndMerge { call_id } => format!("merge:{call_id}"),
            Command::Decline { call_id } => format!("decline:{call_id}"),
            Command::Hangup { call_id } => format!("hangup:{call_id}"),
            Command::SetMute { call_id, muted: true } => format!("mute:{call_id}"),
            Command::SetMute { call_id, muted: false } => format!("unmute:{call_id}"),
            Command::SetSpeakerMute { call_id, muted: true } => format!("speaker-off:{call_id}"),
            Command::SetSpeakerMute { call_id, muted: false } => format!("speaker-on:{call_id}"),
            Command::SetHold { call_id, on_hold: true } => format!("hold:{call_id}"),
            Command::SetHold { call_id, on_hold: false } => format!("resume:{call_id}"),
            Command::SetRecording { call_id, recording: true } => format!("record:{call_id}"),
            Command::SetRecording { call_id, recording: false } => format!("stop-recording:{call_id}"),
            Command::MarkMissedSeen => "missed:seen".to_owned(),
            Command::SetDoNotDisturb { on: true } => "dnd:on".to_owned(),
            Command::SetDoNotDisturb { on: false } => "dnd:off".to_owned(),
            Command::SetInput { spec } => format!("input:{spec}"),
            Command::SetOutput { spec } => format!("output:{spec}"),
            Command::CheckMicrophone { on: true } => "mic-check:on".to_owned(),
            Command::CheckMicrophone { on: false } => "mic-check:off".to_owned(),
            Command::Quit => "quit".to_owned(),
        }
    }

    /// The command a menu item ID stands for; `None` for items that are not
    /// actions (status lines, submenu titles).
    pub fn from_menu_id(id: &str) -> Option<Command> {
        if id == "quit" {
            return Some(Command::Quit);
        }
        // Only the first colon separates: call IDs and specs may contain more.
        let (verb, arg) = id.split_once(':')?;
        let arg = arg.to_owned();
        Some(match verb {
            "dial" => Command::Dial { device_id: arg },
            "add" => {
                let (call_id, device_id) = arg.split_once(':')?;
                Command::AddParticipant { call_id: call_id.to_owned(), device_id: device_id.to_owned() }
            }
            "answer" => Command::Answer { call_id: arg },
            "merge" => Command::AnswerAndMerge { call_id: arg },
            "decline" => Command::Decline { call_id: arg },
            "hangup" => Command::Hangup { call_id: arg },
            "mute" => Command::SetMute { call_id: arg, muted: true },
            "unmute" => Command::SetMute { call_id: arg, muted: false },
            "speaker-off" => Command::SetSpeakerMute { call_id: arg, muted: true },
            "speaker-on" => Command::SetSpeakerMute { call_id: arg, muted: false },
            "hold" => Command::SetHold { call_id: arg, on_hold: true },
            "resume" => Command::SetHold { call_id: arg, on_hold: false },
            "record" => Command::SetRecording { call_id: arg, recording: true },
            "stop-recording" => Command::SetRecording { call_id: arg, recording: false },
            "dnd" => Command::SetDoNotDisturb { on: arg == "on" },
            "missed" => Command::MarkMissedSeen,
            "input" => Command::SetInput { spec: arg },
            "output" => Command::SetOutput { spec: arg },
            "mic-check" => Command::CheckMicrophone { on: arg == "on" },
            _ => return None,
        })
    }

    /// A short name for messages ("Answer: no such call").
    pub fn describe(&self) -> &'static str {
        match self {
            Command::Dial { .. } => "Dial",
            Command::AddParticipant { .. } => "Add to the call",
            Command::Answer { .. } => "Answer",
            Command::AnswerAndMerge { .. } => "Answer and merge",
            Command::Decline { .. } => "Decline",
            Command::Hangup { .. } => "Hang up",
            Command::SetMute { muted: true, .. } => "Mute",
            Command::SetMute { muted: false, .. } => "Unmute",
            Command::SetSpeakerMute { muted: true, .. } => "Mute speaker",
            Command::SetSpeakerMute { muted: false, .. } => "Unmute speaker",
            Command::SetHold { on_hold: true, .. } => "Hold",
            Command::SetHold { on_hold: false, .. } => "Resume",
            Command::SetRecording { recording: true, .. } => "Record",
            Command::SetRecording { recording: false, .. } => "Stop recording",
            Command::SetDoNotDisturb { .. } => "Do not disturb",
            Command::MarkMissedSeen => "Missed calls",
            Command::SetInput { .. } => "Input device",
            Command::SetOutput { .. } => "Output device",
            Command::CheckMicrophone { .. } => "Microphone check",
            Command::Quit => "Quit",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_survives_the_menu_id() {
        let all = [
            Command::Dial { device_id: "ABCD-EFGH".into() },
            Command::AddParticipant { call_id: "c1".into(), device_id: "ABCD-EFGH".into() },
            Command::Answer { call_id: "c:1".into() },
            Command::AnswerAndMerge { call_id: "c1".into() },
            Command::Decline { call_id: "c1".into() },
            Command::Hangup { call_id: "c1".into() },
            Command::SetMute { call_id: "c1".into(), muted: true },
            Command::SetMute { call_id: "c1".into(), muted: false },
            Command::SetSpeakerMute { call_id: "c1".into(), muted: true },
            Command::SetSpeakerMute { call_id: "c1".into(), muted: false },
            Command::SetHold { call_id: "c1".into(), on_hold: true },
            Command::SetHold { call_id: "c1".into(), on_hold: false },
            Command::SetRecording { call_id: "c1".into(), recording: true },
            Command::SetRecording { call_id: "c1".into(), recording: false },
            Command::SetDoNotDisturb { on: true },
            Command::SetDoNotDisturb { on: false },
            Command::MarkMissedSeen,
            Command::SetInput { spec: "tone:440".into() },
            Command::SetOutput { spec: "file:/tmp/a:b.wav".into() },
            Command::CheckMicrophone { on: true },
            Command::CheckMicrophone { on: false },
            Command::Quit,
        ];
        for command in all {
            assert_eq!(Command::from_menu_id(&command.to_menu_id()), Some(command.clone()), "{command:?}");
        }
    }

    #[test]
    fn status_lines_are_not_commands() {
        assert_eq!(Command::from_menu_id("info:0"), None);
        assert_eq!(Command::from_menu_id("status"), None);
        assert_eq!(Command::from_menu_id(""), None);
    }
}
