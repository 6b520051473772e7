//! Recording a call into one 48 kHz 16-bit stereo WAV: what we send on the left,
//! what we hear on the right. The two pumps hand over each frame as they send or
//! play it (after mute and hold, so the file holds what really went each way).
//! Both tick at the call's frame rate on the same clock, so frames pair up in
//! order; a side that stops (its pump ended, a media session being replaced) is
//! padded with silence once it is half a second behind, so the other is never
//! held back for long.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::debug;
use voicelink_core::audio_math::SAMPLE_RATE;

use crate::audio::endpoints::{EndpointError, Sink, WavSink};

/// How far one side may run ahead before the other is padded.
const MAX_SKEW: usize = SAMPLE_RATE as usize / 2;
/// Frames waiting for the writer thread: about 10 s of audio at 20 ms. A disk
/// that falls further behind fails the recording rather than the audio.
const WRITE_BACKLOG: usize = 500;
/// A WAV file's sizes are 32-bit: stop short of 4 GiB (about 6 h 12 min of stereo).
const MAX_WAV_BYTES: u64 = 4_000_000_000;

/// Where the pumps hand their frames; a no-op while nothing records. Cloned into
/// every media session of a call, so a replaced session records on.
#[derive(Clone, Default)]
pub struct RecordingTap {
    active: Arc<Mutex<Option<Active>>>,
}

struct Active {
    path: std::path::PathBuf,
    sent: VecDeque<i16>,
    heard: VecDeque<i16>,
    frames: u64,
    /// To the writer thread; `None` once writing failed.
    to_writer: Option<SyncSender<Vec<i16>>>,
    writer: Option<JoinHandle<()>>,
    /// Why writing stopped, until the call task takes it.
    failure: Arc<Mutex<Option<EndpointError>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A pump that panicked mid-write leaves a usable recording.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RecordingTap {
    /// Starts writing into `file` (a stereo WAV) on a thread of its own, so a slow
    /// disk never holds up the audio.
    pub fn start(&self, file: WavSink, path: std::path::PathBuf) {
        let (to_writer, frames) = sync_channel(WRITE_BACKLOG);
        let failure = Arc::new(Mutex::new(None));
        let writer = std::thread::Builder::new()
            .name("voicelink-recording".into())
            .spawn({
                let failure = failure.clone();
                move || write_file(file, frames, &failure)
            })
            .map_err(|e| *lock(&failure) = Some(EndpointError::WriteWav { path: path.clone(), reason: e.to_string() }))
            .ok();
        *lock(&self.active) = Some(Active {
            path,
            sent: VecDeque::new(),
            heard: VecDeque::new(),
            frames: 0,
            to_writer: writer.is_some().then_some(to_writer),
            writer,
            failure,
        });
    }

    /// Stops, completes the file and says how long it is.
    pub fn stop(&self) -> Option<Result<Duration, EndpointError>> {
        let mut active = lock(&self.active).take()?;
        active.write(true);
        // Closing the channel tells the writer to finish the file.
        drop(active.to_writer.take());
        if let Some(writer) = active.writer.take()
            && writer.join().is_err()
        {
            debug!("the recording's writer thread panicked");
        }
        let length = Duration::from_secs_f64(active.frames as f64 / f64::from(SAMPLE_RATE));
        Some(match lock(&active.failure).take() {
            Some(error) => Err(error),
            None => Ok(length),
        })
    }

    /// Writing failed (a full disk, a removed folder, a disk too slow): the error, once.
    pub fn take_failure(&self) -> Option<EndpointError> {
        let guard = lock(&self.active);
        let active = guard.as_ref()?;
        lock(&active.failure).take()
    }

    /// A frame we sent (silence while muted or held).
    pub fn sent(&self, frame: &[i16]) {
        if let Some(active) = lock(&self.active).as_mut() {
            active.sent.extend(frame);
            active.write(false);
        }
    }

    /// A frame we played.
    pub fn heard(&self, frame: &[i16]) {
        if let Some(active) = lock(&self.active).as_mut() {
            active.heard.extend(frame);
            active.write(false);
        }
    }
}

impl Active {
    /// Hands every pair of samples both sides have to the writer; with `all`, pads
    /// the shorter side and hands over everything (at the end).
    fn write(&mut self, all: bool) {
        let (sent, heard) = (self.sent.len(), self.heard.len());
        let pad = |ahead: usize, behind: usize| ahead > behind + MAX_SKEW || (all && ahead > behind);
        if pad(sent, heard) {
            self.heard.resize(sent, 0);
        } else if pad(heard, sent) {
            self.sent.resize(heard, 0);
        }
        let pairs = self.sent.len().min(self.heard.len());
        if pairs == 0 {
            return;
        }
        let mut interleaved = Vec::with_capacity(2 * pairs);
        for (left, right) in self.sent.drain(..pairs).zip(self.heard.drain(..pairs)) {
            interleaved.extend([left, right]);
        }
        let Some(to_writer) = self.to_writer.as_ref() else { return };
        match to_writer.try_send(interleaved) {
            Ok(()) => self.frames += pairs as u64,
            Err(TrySendError::Full(_)) => {
                self.to_writer = None;
                lock(&self.failure).get_or_insert(EndpointError::WriteWav {
                    path: self.path.clone(),
                    reason: "the disk cannot keep up with the recording".into(),
                });
            }
            // The writer stopped and said why.
            Err(TrySendError::Disconnected(_)) => self.to_writer = None,
        }
    }
}

/// The writer thread: frames in, the file out, completed when the channel closes.
fn write_file(mut file: WavSink, frames: Receiver<Vec<i16>>, failure: &Mutex<Option<EndpointError>>) {
    let mut bytes = 44u64;
    for frame in frames {
        bytes += 2 * frame.len() as u64;
        let result = if bytes > MAX_WAV_BYTES { Err(file.too_long()) } else { file.write(&frame) };
        if let Err(error) = result {
            let _ = file.finish();
            *lock(failure) = Some(error);
            return;
        }
    }
    if let Err(error) = file.finish() {
        *lock(failure) = Some(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &std::path::Path) -> (hound::WavSpec, Vec<i16>) {
        let mut reader = hound::WavReader::open(path).unwrap();
        let spec = reader.spec();
        (spec, reader.samples::<i16>().map(Result::unwrap).collect())
    }

    #[test]
    fn both_directions_pair_up_left_sent_right_heard() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("call.wav");
        let tap = RecordingTap::default();
        tap.sent(&[9; 960]); // before start: not recorded
        tap.start(WavSink::create_stereo(&path).unwrap(), path.clone());
        for _ in 0..50 {
            tap.sent(&[1000; 960]);
            tap.heard(&[-2000; 960]);
        }
        let length = tap.stop().unwrap().unwrap();
        assert_eq!(length, Duration::from_secs(1));
        let (spec, samples) = read(&path);
        assert_eq!((spec.channels, spec.sample_rate, spec.bits_per_sample), (2, 48_000, 16));
        assert_eq!(samples.len(), 2 * 48_000);
        assert!(samples.chunks(2).all(|pair| pair == [1000, -2000]));
        tap.heard(&[5; 960]); // after stop: nothing, no panic
    }

    #[test]
    fn a_side_that_stops_is_padded_with_silence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("call.wav");
        let tap = RecordingTap::default();
        tap.start(WavSink::create_stereo(&path).unwrap(), path.clone());
        // Nothing is heard (the player stopped): after half a second the sent
        // audio is written with silence beside it.
        for _ in 0..100 {
            tap.sent(&[700; 960]);
        }
        tap.stop().unwrap().unwrap();
        let (_, samples) = read(&path);
        assert_eq!(samples.len() / 2, 96_000, "every sent sample is in the file");
        assert!(samples.chunks(2).all(|pair| pair == [700, 0]));
    }

    #[test]
    fn a_full_disk_fails_the_recording_with_its_reason() {
        let tap = RecordingTap::default();
        let full = std::path::Path::new("/dev/full");
        tap.start(WavSink::create(full).unwrap(), full.to_owned());
        for _ in 0..100 {
            tap.sent(&[1; 960]);
            tap.heard(&[2; 960]);
        }
        let error = tap.stop().unwrap().unwrap_err();
        assert!(error.to_string().contains("No space left"), "{error}");
    }

    #[test]
    fn an_existing_file_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("precious.wav");
        std::fs::write(&path, "keep me").unwrap();
        let error = WavSink::create_stereo(&path).err().unwrap();
        assert!(error.to_string().contains("exists"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }
}
