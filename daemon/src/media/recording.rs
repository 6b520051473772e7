//! Recording a call into one 48 kHz 16-bit stereo WAV: what we send on the left,
//! what we hear on the right. The two pumps hand over each frame as they send or
//! play it (after mute and hold, so the file holds what really went each way).
//! Both tick at the call's frame rate on the same clock, so frames pair up in
//! order; a side that stops (its pump ended, a media session being replaced) is
//! padded with silence once it is half a second behind, so the other is never
//! held back for long.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use voicelink_core::audio_math::SAMPLE_RATE;

use crate::audio::endpoints::{EndpointError, Sink, WavSink};

/// How far one side may run ahead before the other is padded.
const MAX_SKEW: usize = SAMPLE_RATE as usize / 2;

/// Where the pumps hand their frames; a no-op while nothing records. Cloned into
/// every media session of a call, so a replaced session records on.
#[derive(Clone, Default)]
pub struct RecordingTap {
    active: Arc<Mutex<Option<Active>>>,
}

struct Active {
    file: WavSink,
    sent: VecDeque<i16>,
    heard: VecDeque<i16>,
    interleaved: Vec<i16>,
    frames: u64,
    /// Why writing stopped, until the call task takes it.
    failure: Option<EndpointError>,
}

impl RecordingTap {
    fn lock(&self) -> MutexGuard<'_, Option<Active>> {
        // A pump that panicked mid-write leaves a usable recording.
        self.active.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts writing into `file` (a stereo WAV).
    pub fn start(&self, file: WavSink) {
        *self.lock() = Some(Active {
            file,
            sent: VecDeque::new(),
            heard: VecDeque::new(),
            interleaved: Vec::new(),
            frames: 0,
            failure: None,
        });
    }

    /// Stops, completes the file and says how long it is.
    pub fn stop(&self) -> Option<Result<Duration, EndpointError>> {
        let mut active = self.lock().take()?;
        active.write(true);
        let length = Duration::from_secs_f64(active.frames as f64 / f64::from(SAMPLE_RATE));
        Some(match active.failure.take() {
            Some(error) => Err(error),
            None => active.file.finish().map(|()| length),
        })
    }

    /// Writing failed (a full disk, a removed folder): the error, once.
    pub fn take_failure(&self) -> Option<EndpointError> {
        self.lock().as_mut().and_then(|active| active.failure.take())
    }

    /// A frame we sent (silence while muted or held).
    pub fn sent(&self, frame: &[i16]) {
        if let Some(active) = self.lock().as_mut() {
            active.sent.extend(frame);
            active.write(false);
        }
    }

    /// A frame we played.
    pub fn heard(&self, frame: &[i16]) {
        if let Some(active) = self.lock().as_mut() {
            active.heard.extend(frame);
            active.write(false);
        }
    }
}

impl Active {
    /// Writes every pair of samples both sides have; with `all`, pads the shorter
    /// side and writes everything (at the end).
    fn write(&mut self, all: bool) {
        if self.failure.is_some() {
            self.sent.clear();
            self.heard.clear();
            return;
        }
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
        self.interleaved.clear();
        for (left, right) in self.sent.drain(..pairs).zip(self.heard.drain(..pairs)) {
            self.interleaved.extend([left, right]);
        }
        match self.file.write(&self.interleaved) {
            Ok(()) => self.frames += pairs as u64,
            Err(error) => self.failure = Some(error),
        }
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
        tap.start(WavSink::create_stereo(&path).unwrap());
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
        tap.start(WavSink::create_stereo(&path).unwrap());
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
    fn an_existing_file_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("precious.wav");
        std::fs::write(&path, "keep me").unwrap();
        let error = WavSink::create_stereo(&path).err().unwrap();
        assert!(error.to_string().contains("exists"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }
}
