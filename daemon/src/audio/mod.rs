//! Audio endpoints: where a call's sound comes from and goes to.

pub mod device;
pub mod endpoints;
pub mod input_level;
pub mod ringer;

use voicelink_core::audio_spec::{InputSpec, OutputSpec};

use endpoints::{EndpointError, NullSink, Silence, Sink, Tone, WavSink, WavSource};

/// Where a call's audio comes from.
pub enum Input {
    /// A source paced by the sender.
    Source(Box<dyn endpoints::Source>),
    /// Send back what is heard (an echo-test peer).
    Echo,
}

/// Opens a call's audio input. `default` uses the default capture device and,
/// on a machine without one, sends silence (and says so); a named device that
/// cannot be opened fails the call with the reason.
pub fn open_input(spec: &InputSpec, loop_files: bool) -> Result<Input, EndpointError> {
    Ok(match spec {
        InputSpec::Default => match device::Capture::open(None) {
            Ok(capture) => Input::Source(Box::new(capture)),
            Err(error) => {
                tracing::warn!(%error, "no capture device: sending silence (choose --audio-input tone:HZ, file:PATH.wav or echo)");
                Input::Source(Box::new(Silence))
            }
        },
        InputSpec::Device(name) => Input::Source(Box::new(device::Capture::open(Some(name))?)),
        InputSpec::File(path) => Input::Source(Box::new(WavSource::open(path, loop_files)?)),
        InputSpec::Tone(hz) => Input::Source(Box::new(Tone::new(*hz))),
        InputSpec::Silence => Input::Source(Box::new(Silence)),
        InputSpec::Echo => Input::Echo,
    })
}

/// Opens a call's audio output (see `open_input` about `default`).
pub fn open_output(spec: &OutputSpec) -> Result<Box<dyn Sink>, EndpointError> {
    Ok(match spec {
        OutputSpec::Default => match device::Playback::open(None) {
            Ok(playback) => Box::new(playback),
            Err(error) => {
                tracing::warn!(%error, "no playback device: discarding what is heard (choose --audio-output file:PATH.wav)");
                Box::new(NullSink)
            }
        },
        OutputSpec::Device(name) => Box::new(device::Playback::open(Some(name))?),
        OutputSpec::File(path) => Box::new(WavSink::create(path)?),
        OutputSpec::Null => Box::new(NullSink),
    })
}
