//! Ringing you can hear: a task that plays the ringtone (an incoming call) or
//! the ringing tone (the caller's side, while the peer rings), or the soft
//! call-waiting beeps (a call rings during another) on a sound card,
//! paced at the audio's rate, until it is stopped. Its own output stream: the
//! sound server mixes it with the call's. Nothing rings on a file or null
//! output, and nothing is sent to the peer.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use voicelink_core::audio_math::{samples_per_frame, scale_into};
use voicelink_core::audio_spec::{OutputSpec, RingtoneSpec};
use voicelink_core::reload::Ringing;
use voicelink_core::ring_tones::{Ring, RingTone};

use super::device_watch::Devices;
use super::endpoints::{Source, WavSource};
use super::open_output;

/// How often the ringer hands the output a frame.
const FRAME: Duration = Duration::from_millis(20);

/// Ringing in progress; stops when [`Ringer::stop`]ped or dropped.
pub struct Ringer {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Ringer {
    /// Starts ringing on `output` (following its device in `devices`) as `ringing` says, if there is anything to
    /// hear: `None` for a file or null output, a ringtone or ringing tone that
    /// is off, or a volume of 0.
    pub fn start(ring: Ring, ringing: &Ringing, output: &OutputSpec, devices: &Devices) -> Option<Ringer> {
        let wanted = match ring {
            Ring::Incoming | Ring::Waiting => ringing.ringtone != RingtoneSpec::Off,
            Ring::Ringback => ringing.ringback,
        };
        if !wanted || ringing.volume == 0 || !output.is_sound_card() {
            return None;
        }
        let stop = CancellationToken::new();
        let sound = match (ring, &ringing.ringtone) {
            (Ring::Incoming, RingtoneSpec::File(path)) => Sound::File(path.clone()),
            _ => Sound::Builtin(ring),
        };
        let task = tokio::spawn(ring_until(sound, output.clone(), devices.clone(), ringing.volume, stop.clone()));
        Some(Ringer { stop, task: Some(task) })
    }

    /// Stops at once and waits until the output is closed, so the call can
    /// open it.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Ringer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Source for RingTone {
    fn fill(&mut self, frame: &mut [i16]) {
        RingTone::fill(self, frame);
    }
}

enum Sound {
    Builtin(Ring),
    File(std::path::PathBuf),
}

async fn ring_until(sound: Sound, output: OutputSpec, devices: Devices, volume: u32, stop: CancellationToken) {
    // Opening a device or reading a file blocks: not on the runtime's threads.
    let opened = tokio::task::spawn_blocking(move || {
        let source: Box<dyn Source> = match sound {
            Sound::Builtin(ring) => Box::new(RingTone::new(ring)),
            Sound::File(path) => match WavSource::open(&path, true) {
                Ok(file) => Box::new(file),
                Err(error) => {
                    warn!(%error, "cannot play the ringtone file; ringing with the built-in one");
                    Box::new(RingTone::new(Ring::Incoming))
                }
            },
        };
        open_output(&output, &devices, None).map(|sink| (source, sink))
    });
    // Stopped or not, the open is waited for: the call opens the output next
    // and must find it closed again.
    let (mut source, mut sink) = match opened.await {
        Ok(Ok(opened)) => opened,
        Ok(Err(error)) => {
            debug!(%error, "cannot open the output to ring on");
            return;
        }
        Err(_) => return,
    };
    if stop.is_cancelled() {
        let _ = tokio::task::spawn_blocking(move || drop(sink)).await;
        return;
    }
    let mut frame = vec![0i16; samples_per_frame(FRAME)];
    let mut scaled = frame.clone();
    let mut tick = tokio::time::interval(FRAME);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {
                // Paced by the device while its stream starts: the first ring is
                // heard whole.
                if !sink.ready() {
                    continue;
                }
                source.fill(&mut frame);
                scale_into(&frame, volume, &mut scaled);
                if let Err(error) = sink.write(&scaled) {
                    debug!(%error, "the output stopped taking the ringing");
                    break;
                }
            }
        }
    }
    // Closing a sound card's stream: not on the runtime's threads either.
    let _ = tokio::task::spawn_blocking(move || drop(sink)).await;
}
