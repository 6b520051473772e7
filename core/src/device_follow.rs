//! Which sound device an open endpoint should be on, as devices come and go: the
//! policy behind "a call follows its device". Pure: the daemon hands it what the
//! host lists now and what the endpoint has open, and carries out the move.
//!
//! - An endpoint on `default` follows the system default.
//! - An endpoint on a named device stays on it while it is there; when it goes
//!   (a headset unplugged), it falls back to the default; when it comes back,
//!   it returns to it.
//! - With no device at all, the endpoint waits on nothing (silence) until one
//!   appears.

use std::fmt;

/// A sound device as the host lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// What `device:NAME` takes: the host's own name for the device (a sound
    /// server's sink or source name, or ALSA's PCM name such as `hw:CARD=PCH,DEV=0`).
    pub name: String,
    /// What the host says the device is, for people.
    pub description: String,
    /// The system's default for its direction.
    pub is_default: bool,
    /// Sample rates it accepts (the ends of its ranges).
    pub sample_rates: Vec<u32>,
}

/// Capture and playback devices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceList {
    /// Capture devices.
    pub inputs: Vec<DeviceInfo>,
    /// Playback devices.
    pub outputs: Vec<DeviceInfo>,
}

impl DeviceList {
    /// One direction's device names and its default, as [`follow`] takes them.
    pub fn present(&self, direction: AudioDirection) -> (Vec<String>, Option<String>) {
        let devices = match direction {
            AudioDirection::Input => &self.inputs,
            AudioDirection::Output => &self.outputs,
        };
        let default = devices.iter().find(|d| d.is_default).map(|d| d.name.clone());
        (devices.iter().map(|d| d.name.clone()).collect(), default)
    }
}

/// Which way an endpoint's audio goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioDirection {
    /// A microphone.
    Input,
    /// A speaker.
    Output,
}

impl AudioDirection {
    /// `input` or `output`.
    pub fn word(self) -> &'static str {
        match self {
            AudioDirection::Input => "input",
            AudioDirection::Output => "output",
        }
    }
}

/// A move an endpoint made, for its call to tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMoved {
    /// Which endpoint moved.
    pub direction: AudioDirection,
    /// The device it is on now; `None`: none is left.
    pub device: Option<String>,
    /// Why it moved.
    pub reason: MoveReason,
}

/// The device an endpoint was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WantedDevice {
    /// The system default, whichever it is.
    Default,
    /// This device, by the host's name for it.
    Named(String),
}

/// The devices of one direction as the host lists them now.
#[derive(Debug, Clone, Copy)]
pub struct Present<'a> {
    /// Every device's name.
    pub names: &'a [String],
    /// The system default's name, when there is one.
    pub default: Option<&'a str>,
}

impl Present<'_> {
    fn has(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
}

/// Why an endpoint moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveReason {
    /// The device it was on is gone (`NAME`).
    Unplugged(String),
    /// The named device it was asked for is back.
    Returned,
    /// The system default is now another device.
    DefaultChanged,
}

impl fmt::Display for MoveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MoveReason::Unplugged(name) => write!(f, "{name} was unplugged"),
            MoveReason::Returned => f.write_str("the chosen device is back"),
            MoveReason::DefaultChanged => f.write_str("the system default changed"),
        }
    }
}

/// A move the endpoint should make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMove {
    /// The device to open; `None`: there is none left (play to nothing, capture
    /// silence).
    pub to: Option<String>,
    /// Why.
    pub reason: MoveReason,
}

/// The device `wanted` should be on, given what is present.
pub fn target(wanted: &WantedDevice, present: Present<'_>) -> Option<String> {
    match wanted {
        WantedDevice::Named(name) if present.has(name) => Some(name.clone()),
        _ => present.default.filter(|d| present.has(d)).map(str::to_owned),
    }
}

/// Where an endpoint that wants `wanted` and has `in_use` open should go now;
/// `None` when it should stay.
pub fn follow(wanted: &WantedDevice, in_use: Option<&str>, present: Present<'_>) -> Option<DeviceMove> {
    let to = target(wanted, present);
    if to.as_deref() == in_use {
        return None;
    }
    let reason = match in_use {
        Some(old) if !present.has(old) => MoveReason::Unplugged(old.to_owned()),
        _ if matches!(wanted, WantedDevice::Named(name) if to.as_deref() == Some(name)) => MoveReason::Returned,
        _ => MoveReason::DefaultChanged,
    };
    Some(DeviceMove { to, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn named(name: &str) -> WantedDevice {
        WantedDevice::Named(name.into())
    }

    #[test]
    fn the_default_is_followed_when_it_changes() {
        let list = names(&["speakers", "headset"]);
        let present = Present { names: &list, default: Some("headset") };
        assert_eq!(follow(&WantedDevice::Default, Some("headset"), present), None);
        let moved = follow(&WantedDevice::Default, Some("speakers"), present).unwrap();
        assert_eq!(moved, DeviceMove { to: Some("headset".into()), reason: MoveReason::DefaultChanged });
    }

    #[test]
    fn a_named_device_unplugged_falls_back_to_the_default_and_returns_when_replugged() {
        let without = names(&["speakers"]);
        let gone = Present { names: &without, default: Some("speakers") };
        let moved = follow(&named("headset"), Some("headset"), gone).unwrap();
        assert_eq!(moved, DeviceMove { to: Some("speakers".into()), reason: MoveReason::Unplugged("headset".into()) });
        // On the fallback, nothing more happens while the headset stays away.
        assert_eq!(follow(&named("headset"), Some("speakers"), gone), None);

        let with = names(&["speakers", "headset"]);
        let back = Present { names: &with, default: Some("speakers") };
        let moved = follow(&named("headset"), Some("speakers"), back).unwrap();
        assert_eq!(moved, DeviceMove { to: Some("headset".into()), reason: MoveReason::Returned });
        // A named device stays put whatever the default does.
        let three = names(&["speakers", "headset", "hdmi"]);
        let other_default = Present { names: &three, default: Some("hdmi") };
        assert_eq!(follow(&named("headset"), Some("headset"), other_default), None);
    }

    #[test]
    fn with_no_device_left_the_endpoint_goes_quiet_and_comes_back_on_the_next() {
        let none: Vec<String> = Vec::new();
        let empty = Present { names: &none, default: None };
        let moved = follow(&WantedDevice::Default, Some("speakers"), empty).unwrap();
        assert_eq!(moved, DeviceMove { to: None, reason: MoveReason::Unplugged("speakers".into()) });
        assert_eq!(follow(&WantedDevice::Default, None, empty), None);

        let list = names(&["usb"]);
        let plugged = Present { names: &list, default: Some("usb") };
        let moved = follow(&WantedDevice::Default, None, plugged).unwrap();
        assert_eq!(moved, DeviceMove { to: Some("usb".into()), reason: MoveReason::DefaultChanged });
    }

    #[test]
    fn a_list_presents_each_direction_with_its_default() {
        let device = |name: &str, is_default| DeviceInfo {
            name: name.into(),
            description: String::new(),
            is_default,
            sample_rates: vec![48_000],
        };
        let list = DeviceList {
            inputs: vec![device("mic", false), device("headset.monitor", true)],
            outputs: vec![device("speakers", false)],
        };
        assert_eq!(
            list.present(AudioDirection::Input),
            (names(&["mic", "headset.monitor"]), Some("headset.monitor".into()))
        );
        assert_eq!(list.present(AudioDirection::Output), (names(&["speakers"]), None));
    }

    #[test]
    fn a_default_that_is_not_listed_is_no_device() {
        // A host may name a default it cannot list (ALSA's clockless `null`).
        let list = names(&["speakers"]);
        let present = Present { names: &list, default: Some("null") };
        assert_eq!(target(&WantedDevice::Default, present), None);
        assert_eq!(target(&named("speakers"), present), Some("speakers".into()));
    }
}
