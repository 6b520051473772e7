//! Audio endpoints: where a call's sound comes from and goes to.

pub mod endpoints;
mod spec;

pub use spec::{InputSpec, OutputSpec, SpecError};

use endpoints::{EndpointError, NullSink, Silence, Sink, Tone, WavSink, WavSource};

use crate::media::session::Input;

/// Opens a call's audio input. Sound cards (`default`, `device:`) are not in this
/// build: `default` falls back to silence, a named device is an error.
pub fn open_input(spec: &InputSpec) -> Result<Input, EndpointError> {
    Ok(match spec {
        InputSpec::Default => {
            tracing::warn!(
                "no sound-card support in this build: sending silence (use --audio-input tone:HZ or file:PATH.wav)"
            );
            Input::Source(Box::new(Silence))
        }
        InputSpec::Device(name) => {
            return Err(EndpointError::Unavailable(format!(
                "capture device {name:?}: sound-card support is not in this build; use tone:HZ, file:PATH.wav, silence or echo"
            )));
        }
        InputSpec::File(path) => Input::Source(Box::new(WavSource::open(path, true)?)),
        InputSpec::Tone(hz) => Input::Source(Box::new(Tone::new(*hz))),
        InputSpec::Silence => Input::Source(Box::new(Silence)),
        InputSpec::Echo => Input::Echo,
    })
}

/// Opens a call's audio output (see `open_input` about sound cards).
pub fn open_output(spec: &OutputSpec) -> Result<Box<dyn Sink>, EndpointError> {
    Ok(match spec {
        OutputSpec::Default => {
            tracing::warn!(
                "no sound-card support in this build: discarding received audio (use --audio-output file:PATH.wav)"
            );
            Box::new(NullSink)
        }
        OutputSpec::Device(name) => {
            return Err(EndpointError::Unavailable(format!(
                "playback device {name:?}: sound-card support is not in this build; use file:PATH.wav or null"
            )));
        }
        OutputSpec::File(path) => Box::new(WavSink::create(path)?),
        OutputSpec::Null => Box::new(NullSink),
    })
}
