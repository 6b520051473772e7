//! The conference bridge: one microphone and one speaker shared by every leg of
//! a call. A two-party call has one leg and the bridge passes its audio straight
//! through; a group call has a leg per participant (a full mesh), and then:
//! - what the microphone captures (after voice processing, once) is handed to
//!   every leg's sender: the first leg to want a frame reads it from the device,
//!   the others read the same samples from a short history;
//! - what the legs' players hear is mixed into the one output by the call's
//!   [`Mixer`]: one leg, the clock, writes the mix whenever it writes its own
//!   frame, and the others' frames wait behind a cushion that hides a late tick.
//!
//! Nobody mixes for anyone else: each daemon mixes what it hears for its own
//! speaker, and the echo canceller's reference is the mix, which is what the
//! room hears.
//!
//! The call's own voice-processing choice lives here too, beside the
//! microphone it processes: whichever leg carries a change, and whichever leg
//! opened the devices, the capture follows it.
//!
//! The devices stay open while any leg's ends or any [`BridgeLease`] exist: a
//! call holds a lease while its media session is replaced, so the sound card
//! (or the recording file) is not closed and opened again under the call.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use voicelink_core::mixer::Mixer;
use voicelink_core::voice_processing::ProcessingChange;

use super::endpoints::{EndpointError, Sink, Source};

/// How far behind the newest captured sample a leg's sender may be before it
/// skips ahead: three 20 ms frames at 48 kHz.
const CAPTURE_HISTORY: usize = 3 * 960;

/// The shared endpoints of one call. Cloning gives another handle to the same.
#[derive(Clone, Default)]
pub struct Bridge {
    shared: Arc<Mutex<Shared>>,
    /// Held by the leg that opens the endpoints: a leg answered at the same
    /// moment waits for them instead of opening the devices a second time.
    opening: Arc<tokio::sync::Mutex<()>>,
    /// The call's own voice processing, over the config's.
    processing: Arc<watch::Sender<ProcessingChange>>,
}

#[derive(Default)]
struct Shared {
    input: Option<Box<dyn Source>>,
    output: Option<Box<dyn Sink>>,
    next_leg: u64,
    /// Legs' endpoints not yet dropped; the devices close when both are 0.
    sources: usize,
    sinks: usize,
    /// The newest captured samples; the last one is sample number `captured_to - 1`.
    captured: VecDeque<i16>,
    captured_to: u64,
    /// Each leg's sender: the number of the next sample it reads.
    readers: HashMap<u64, u64>,
    /// What the playing legs hear, mixed.
    mixer: Mixer,
    /// Samples just read from the input.
    fresh: Vec<i16>,
}

impl Bridge {
    /// A bridge with no endpoints yet.
    pub fn new() -> Self {
        Bridge::default()
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until no other leg is opening the endpoints, and keeps them from
    /// doing so until the guard is dropped.
    pub async fn opening(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.opening.clone().lock_owned().await
    }

    /// Whether a leg already opened the endpoints.
    pub fn is_open(&self) -> bool {
        let shared = self.lock();
        shared.input.is_some() && shared.output.is_some()
    }

    /// Gives the bridge its endpoints, where it has none (a leg may have
    /// opened them meanwhile: then those stay in use and these are dropped).
    pub fn open(&self, input: Box<dyn Source>, output: Box<dyn Sink>) {
        let mut shared = self.lock();
        shared.input.get_or_insert(input);
        shared.output.get_or_insert(output);
    }

    /// The call's own voice-processing choice, as the capture follows it.
    pub fn processing(&self) -> watch::Receiver<ProcessingChange> {
        self.processing.subscribe()
    }

    /// Gives the call its own voice processing, for the stages `change` names.
    pub fn set_processing(&self, change: ProcessingChange) {
        self.processing.send_replace(change);
    }

    /// Keeps the endpoints open, once opened, until the lease is dropped,
    /// whatever legs come and go meanwhile.
    pub fn lease(&self) -> BridgeLease {
        let mut shared = self.lock();
        shared.sources += 1;
        shared.sinks += 1;
        BridgeLease { bridge: self.clone() }
    }

    /// A leg's ends of the bridge: its sender's source and its player's sink.
    pub fn leg(&self) -> (BridgedSource, BridgedSink) {
        let mut shared = self.lock();
        let leg = shared.next_leg;
        shared.next_leg += 1;
        shared.sources += 1;
        shared.sinks += 1;
        let source = BridgedSource { bridge: self.clone(), leg };
        let sink = BridgedSink { bridge: self.clone(), leg, finished: false };
        (source, sink)
    }
}

impl Shared {
    /// Closes the input once no leg's sender uses it, and the output once no
    /// leg's player does (a later leg opens them anew). Each closes in the
    /// task of its own last user, so the two close side by side, as they
    /// open; a sound card may take a while to close.
    fn close_unused(&mut self) -> Result<(), EndpointError> {
        if self.sources == 0 {
            self.input = None;
            self.captured.clear();
        }
        match self.output.take_if(|_| self.sinks == 0) {
            Some(mut output) => output.finish(),
            None => Ok(()),
        }
    }
}

/// A call's hold on its bridge's endpoints ([`Bridge::lease`]).
pub struct BridgeLease {
    bridge: Bridge,
}

impl Drop for BridgeLease {
    fn drop(&mut self) {
        let mut shared = self.bridge.lock();
        shared.sources -= 1;
        shared.sinks -= 1;
        // The last user: a recording file that cannot be completed is worth a word.
        if let Err(error) = shared.close_unused() {
            tracing::warn!(%error, "cannot complete the audio output");
        }
    }
}

/// A leg's sender's view of the shared microphone.
pub struct BridgedSource {
    bridge: Bridge,
    leg: u64,
}

impl Source for BridgedSource {
    fn fill(&mut self, frame: &mut [i16]) {
        let mut guard = self.bridge.lock();
        let shared = &mut *guard;
        let oldest = shared.captured_to - shared.captured.len() as u64;
        // A leg that starts reading starts with the newest frame, which the
        // legs already reading have just taken, so that all are in step.
        let newest = shared.captured_to.saturating_sub(frame.len() as u64);
        let start = shared.readers.get(&self.leg).copied().unwrap_or(newest).max(oldest);
        let end = start + frame.len() as u64;
        if end > shared.captured_to {
            let wanted = (end - shared.captured_to) as usize;
            let Shared { input, fresh, captured, .. } = &mut *shared;
            fresh.clear();
            fresh.resize(wanted, 0);
            if let Some(input) = input.as_mut() {
                input.fill(fresh);
            }
            captured.extend(fresh.iter());
            shared.captured_to = end;
            let keep = CAPTURE_HISTORY.max(frame.len());
            let excess = shared.captured.len().saturating_sub(keep);
            shared.captured.drain(..excess);
        }
        let from = (start - (shared.captured_to - shared.captured.len() as u64)) as usize;
        for (to, sample) in frame.iter_mut().zip(shared.captured.range(from..)) {
            *to = *sample;
        }
        shared.readers.insert(self.leg, end);
    }

    fn ready_samples(&mut self) -> Option<usize> {
        let mut guard = self.bridge.lock();
        let shared = &mut *guard;
        let behind = shared.readers.get(&self.leg).map_or(0, |read| shared.captured_to.saturating_sub(*read));
        let device = shared.input.as_mut()?.ready_samples()?;
        Some(device + behind as usize)
    }
}

impl Drop for BridgedSource {
    fn drop(&mut self) {
        let mut shared = self.bridge.lock();
        shared.readers.remove(&self.leg);
        shared.sources -= 1;
        let _ = shared.close_unused();
    }
}

/// A leg's player's share of the shared speaker.
pub struct BridgedSink {
    bridge: Bridge,
    leg: u64,
    finished: bool,
}

impl BridgedSink {
    /// This leg stops playing; the last one completes the output.
    fn leave(&mut self) -> Result<(), EndpointError> {
        if std::mem::replace(&mut self.finished, true) {
            return Ok(());
        }
        let mut shared = self.bridge.lock();
        shared.mixer.leave(self.leg);
        shared.sinks -= 1;
        shared.close_unused()
    }
}

impl Sink for BridgedSink {
    fn write(&mut self, frame: &[i16]) -> Result<(), EndpointError> {
        let mut guard = self.bridge.lock();
        let Shared { mixer, output, .. } = &mut *guard;
        match (mixer.write(self.leg, frame), output.as_mut()) {
            (Some(mix), Some(output)) => output.write(mix),
            _ => Ok(()),
        }
    }

    fn finish(&mut self) -> Result<(), EndpointError> {
        self.leave()
    }

    fn ready(&self) -> bool {
        self.bridge.lock().output.as_ref().is_none_or(|output| output.ready())
    }
}

impl Drop for BridgedSink {
    fn drop(&mut self) {
        let _ = self.leave();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A source that counts: sample n is n (mod 30000).
    struct Counting(i16);

    impl Source for Counting {
        fn fill(&mut self, frame: &mut [i16]) {
            for sample in frame {
                *sample = self.0;
                self.0 = (self.0 + 1) % 30000;
            }
        }
    }

    /// A sink that keeps what it is given, and counts its finishes.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<i16>>>, Arc<AtomicU32>);

    impl Sink for Kept {
        fn write(&mut self, frame: &[i16]) -> Result<(), EndpointError> {
            self.0.lock().unwrap().extend_from_slice(frame);
            Ok(())
        }
        fn finish(&mut self) -> Result<(), EndpointError> {
            self.1.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    fn frame(value: i16) -> Vec<i16> {
        vec![value; 960]
    }

    #[test]
    fn one_leg_passes_straight_through() {
        let bridge = Bridge::new();
        let kept = Kept::default();
        bridge.open(Box::new(Counting(0)), Box::new(kept.clone()));
        let (mut source, mut sink) = bridge.leg();
        let mut pcm = vec![0; 960];
        source.fill(&mut pcm);
        source.fill(&mut pcm);
        assert_eq!(pcm[0], 960, "the second frame follows the first");
        sink.write(&frame(7)).unwrap();
        assert_eq!(*kept.0.lock().unwrap(), frame(7), "written at once, unchanged");
        drop(source);
        sink.finish().unwrap();
        assert_eq!(kept.1.load(Ordering::Relaxed), 1, "the last leg completes the output");
        assert!(!bridge.is_open());
    }

    #[test]
    fn every_leg_sends_the_same_capture_once_read_from_the_device() {
        let bridge = Bridge::new();
        bridge.open(Box::new(Counting(0)), Box::new(Kept::default()));
        let (mut first, _s1) = bridge.leg();
        let (mut second, _s2) = bridge.leg();
        let (mut a, mut b) = (vec![0; 960], vec![0; 960]);
        for n in 0..5 {
            first.fill(&mut a);
            second.fill(&mut b);
            assert_eq!(a, b);
            assert_eq!(a[0], n * 960, "nothing skipped, nothing read twice from the device");
        }
        // A leg that falls far behind skips to the history's start.
        for _ in 0..10 {
            first.fill(&mut a);
        }
        second.fill(&mut b);
        assert_eq!(b[0], a[0] - 2 * 960);
        // A leg with other frames (10 ms) joins with the newest audio.
        let (mut short, _s3) = bridge.leg();
        let mut c = vec![0; 480];
        short.fill(&mut c);
        assert_eq!(c[..], a[480..]);
        short.fill(&mut c);
        first.fill(&mut a);
        assert_eq!(c[..], a[..480], "and goes on in step");
    }

    #[test]
    fn what_the_legs_hear_is_mixed_and_a_clock_that_leaves_is_replaced() {
        let bridge = Bridge::new();
        let kept = Kept::default();
        bridge.open(Box::new(Counting(0)), Box::new(kept.clone()));
        let (_a, mut from_b) = bridge.leg();
        let (_c, mut from_c) = bridge.leg();
        let last = || *kept.0.lock().unwrap().last().unwrap();
        // B writes first, so B's writes write the mix; C is heard behind its
        // cushion (the mixer's own tests cover the policy).
        from_b.write(&frame(100)).unwrap();
        from_c.write(&frame(20)).unwrap();
        from_b.write(&frame(100)).unwrap();
        assert_eq!(last(), 100, "C's cushion is silence");
        from_c.write(&frame(20)).unwrap();
        from_b.write(&frame(100)).unwrap();
        assert_eq!(last(), 120);
        assert_eq!(kept.0.lock().unwrap().len(), 3 * 960, "one frame out per frame of the clock");
        // B leaves: C writes alone, at once.
        from_b.finish().unwrap();
        from_c.write(&frame(5)).unwrap();
        assert_eq!(last(), 5);
        assert_eq!(kept.1.load(Ordering::Relaxed), 0, "still playing");
    }

    #[test]
    fn every_leg_shares_the_calls_voice_processing_choice() {
        let bridge = Bridge::new();
        // The capture follows the choice of the leg that opened the devices…
        let capture = bridge.processing();
        // …and a change carried by any other leg, even after that leg is gone.
        let other_leg = bridge.clone();
        let off = ProcessingChange { echo_cancellation: Some(false), ..Default::default() };
        other_leg.set_processing(off);
        drop(other_leg);
        assert_eq!(*capture.borrow(), off);
        assert_eq!(*bridge.processing().borrow(), off, "a leg that joins later starts with it");
    }

    #[test]
    fn a_lease_keeps_the_endpoints_open_while_a_legs_ends_are_replaced() {
        let bridge = Bridge::new();
        let kept = Kept::default();
        bridge.open(Box::new(Counting(0)), Box::new(kept.clone()));
        let lease = bridge.lease();
        let (mut source, mut sink) = bridge.leg();
        let mut pcm = vec![0; 960];
        source.fill(&mut pcm);
        sink.write(&frame(1)).unwrap();
        // The media session is replaced: its ends go, new ones come.
        drop((source, sink));
        assert!(bridge.is_open(), "the devices were not closed under the call");
        assert_eq!(kept.1.load(Ordering::Relaxed), 0);
        let (mut source, mut sink) = bridge.leg();
        // A new leg starts with the newest frame, then reads on.
        source.fill(&mut pcm);
        source.fill(&mut pcm);
        assert_eq!(pcm[0], 960, "the same microphone, where it was");
        sink.write(&frame(2)).unwrap();
        assert_eq!(kept.0.lock().unwrap().len(), 2 * 960, "one recording, not a new one");
        drop((source, sink));
        drop(lease);
        assert_eq!(kept.1.load(Ordering::Relaxed), 1, "completed when the call lets go");
        assert!(!bridge.is_open());
    }
}
