//! Audio endpoints: where a call's sound comes from and goes to.

pub mod bridge;
pub mod device;
pub mod device_watch;
pub mod endpoints;
pub mod following;
pub mod input_level;
pub mod ringer;

use voicelink_core::audio_spec::{InputSpec, OutputSpec};
use voicelink_core::device_follow::WantedDevice;

use device_watch::Devices;
use endpoints::{EndpointError, NullSink, Silence, Sink, Tone, WavSink, WavSource};
use following::{FollowingCapture, FollowingPlayback, MoveReports};

/// Where a call's audio comes from.
pub enum Input {
    /// A source paced by the sender.
    Source(Box<dyn endpoints::Source>),
    /// Send back what is heard (an echo-test peer).
    Echo,
}

/// Opens a call's audio input. A sound card follows its device as devices come
/// and go (moves are told to `reports`); `default` on a machine without one sends
/// silence until one appears; a named device that cannot be opened fails the
/// call with the reason.
pub fn open_input(
    spec: &InputSpec,
    loop_files: bool,
    devices: &Devices,
    reports: MoveReports,
) -> Result<Input, EndpointError> {
    let microphone = |wanted| FollowingCapture::open(wanted, devices.clone(), reports);
    Ok(match spec {
        InputSpec::Default => Input::Source(Box::new(microphone(WantedDevice::Default)?)),
        InputSpec::Device(name) => Input::Source(Box::new(microphone(WantedDevice::Named(name.clone()))?)),
        InputSpec::File(path) => Input::Source(Box::new(WavSource::open(path, loop_files)?)),
        InputSpec::Tone(hz) => Input::Source(Box::new(Tone::new(*hz))),
        InputSpec::Silence => Input::Source(Box::new(Silence)),
        InputSpec::Echo => Input::Echo,
    })
}

/// Opens a call's audio output (see `open_input` about sound cards).
pub fn open_output(spec: &OutputSpec, devices: &Devices, reports: MoveReports) -> Result<Box<dyn Sink>, EndpointError> {
    let speaker = |wanted| FollowingPlayback::open(wanted, devices.clone(), reports);
    Ok(match spec {
        OutputSpec::Default => Box::new(speaker(WantedDevice::Default)?),
        OutputSpec::Device(name) => Box::new(speaker(WantedDevice::Named(name.clone()))?),
        OutputSpec::File(path) => Box::new(WavSink::create(path)?),
        OutputSpec::Null => Box::new(NullSink),
    })
}
