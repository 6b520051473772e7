//! The microphone check: an input opened outside any call and its level read
//! at the audio's pace, one task per watcher, until the watcher goes away.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use voicelink_core::audio_math::samples_per_frame;
use voicelink_core::audio_spec::InputSpec;
use voicelink_core::stats::{LevelMeter, LevelReading};

use super::device::Capture;
use super::endpoints::{EndpointError, Silence, Source, Tone, WavSource};

/// How often a frame is read from the input.
const FRAME: Duration = Duration::from_millis(20);

/// Why an input's level cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum LevelError {
    /// The input cannot be opened.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The echo input only exists in a call.
    #[error("echo has no level outside a call: it sends back what the peer says")]
    Echo,
}

/// Opens `spec` to measure it. Unlike a call's input, `default` without a
/// capture device is an error: the point is to know whether the microphone works.
pub fn open(spec: &InputSpec) -> Result<Box<dyn Source>, LevelError> {
    Ok(match spec {
        InputSpec::Default => Box::new(Capture::open(None)?),
        InputSpec::Device(name) => Box::new(Capture::open(Some(name))?),
        InputSpec::File(path) => Box::new(WavSource::open(path, true)?),
        InputSpec::Tone(hz) => Box::new(Tone::new(*hz)),
        InputSpec::Silence => Box::new(Silence),
        InputSpec::Echo => return Err(LevelError::Echo),
    })
}

/// Reads `source` every frame and sends a reading every `interval` until the
/// receiver goes away or `stop` is cancelled. A reader that falls behind
/// misses readings (they are only worth anything live).
pub async fn watch(
    mut source: Box<dyn Source>,
    interval: Duration,
    readings: mpsc::Sender<LevelReading>,
    stop: CancellationToken,
) {
    let mut frame = vec![0i16; samples_per_frame(FRAME)];
    let mut meter = LevelMeter::default();
    let mut tick = tokio::time::interval(FRAME);
    // After a stall, read on rather than catch up: the catching-up reads would
    // find the capture ring empty and pull the reading toward silence.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let frames_per_reading = (interval.as_millis() / FRAME.as_millis()).max(1);
    let mut frames = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = readings.closed() => break,
            _ = tick.tick() => {
                source.fill(&mut frame);
                meter.add(&frame);
                frames += 1;
                if frames == frames_per_reading {
                    frames = 0;
                    if let Err(mpsc::error::TrySendError::Closed(_)) = readings.try_send(meter.take()) {
                        break;
                    }
                }
            }
        }
    }
    // A sound card's stream closes on its own thread.
    let _ = tokio::task::spawn_blocking(move || drop(source)).await;
}
