//! The group call's mixer: what several legs' players hear, mixed into the one
//! speaker. Pure: legs hand it frames in the order their players write them, and
//! the frames of the mix come out; the conference bridge (`voiced`'s
//! `audio/bridge.rs`) feeds it under its lock and writes what comes out.
//!
//! Every leg's player writes a frame per period on its own tick. One leg, the
//! clock, writes the mix whenever it writes its own frame: its own audio goes
//! out at once and the others' comes from their queues. The players tick on the
//! same clock, so no queue drifts; but on a busy machine a tick is late now and
//! then and the next comes at once. A queue holding only the frame the leg just
//! wrote is empty the moment its leg's write slips past the clock's (or the
//! clock writes twice in a row), and that gap shifts the leg's audio by a frame:
//! a click, and for a tone a jump in phase. So each other leg keeps a cushion
//! of 20 ms of its own audio (a frame, at the usual 20 ms), started as silence
//! when it joins: a write that slips by up to that much is then heard on time.
//! That costs the others up to 20 ms of latency, the least that hides a slipped
//! write.
//!
//! A queue that keeps a frame more than its cushion through 50 of the clock's
//! frames (a second, at 20 ms: a gap grew it, or the clock was late for a while)
//! gives a frame back at its next quiet frame, where the cut is not heard:
//! latency does not pile up, and speech is not clipped for it. A clock that
//! stops writing (its call ended or stalled) is replaced by the first leg that
//! queues 4 of the clock's frames beyond its cushion, so the speaker never waits
//! on one peer.

use std::collections::{BTreeMap, VecDeque};

/// The cushion each leg other than the clock keeps: 20 ms at 48 kHz.
pub const CUSHION: usize = 960;
/// How many of the clock's frames (or of its own, if longer) a leg may queue
/// beyond its cushion before it takes the clock over from a clock that stopped
/// writing.
const STALLED_FRAMES: usize = 4;
/// How many of the clock's frames a queue's surplus must last before a frame of
/// it is given back: a second, at 20 ms.
const REVIEW_FRAMES: u32 = 50;
/// A frame no louder than this (-50 dBFS) may be cut to give latency back.
const QUIET: u16 = 104;

/// Mixes what the legs of a call hear. A leg is any `u64` the caller picks.
#[derive(Debug, Default)]
pub struct Mixer {
    legs: BTreeMap<u64, Queue>,
    /// The leg whose writes write the mix.
    clock: Option<u64>,
    /// The length of the clock's frames, in samples.
    clock_frame: usize,
    mix: Vec<i32>,
    out: Vec<i16>,
}

/// One leg's queued audio.
#[derive(Debug)]
struct Queue {
    samples: VecDeque<i16>,
    /// The fewest samples left after the clock's takes since the last review.
    lowest: usize,
    takes: u32,
    /// A frame beyond the cushion is to go, at the next quiet frame.
    trim: bool,
}

impl Queue {
    fn primed() -> Self {
        Queue { samples: VecDeque::from(vec![0; CUSHION]), lowest: usize::MAX, takes: 0, trim: false }
    }

    /// Adds up to `frame` samples into `mix` (fewer: the rest is a gap), then
    /// reviews what is left.
    fn take_into(&mut self, mix: &mut [i32]) {
        let frame = mix.len();
        if self.trim && self.samples.len() < CUSHION + 2 * frame {
            self.trim = false;
        } else if self.trim && self.samples.range(..frame).all(|sample| sample.unsigned_abs() <= QUIET) {
            self.samples.drain(..frame);
            self.trim = false;
        }
        let take = self.samples.len().min(frame);
        for (sum, sample) in mix.iter_mut().zip(self.samples.drain(..take)) {
            *sum += i32::from(sample);
        }
        self.lowest = self.lowest.min(self.samples.len());
        self.takes += 1;
        if self.takes == REVIEW_FRAMES {
            // A whole second with a frame more than the cushion: never needed.
            self.trim = self.lowest >= CUSHION + frame;
            self.lowest = usize::MAX;
            self.takes = 0;
        }
    }
}

impl Mixer {
    /// An empty mixer.
    pub fn new() -> Self {
        Mixer::default()
    }

    /// `leg`'s player wrote `frame`: the frame of the mix to play now, if this
    /// leg is the clock.
    pub fn write(&mut self, leg: u64, frame: &[i16]) -> Option<&[i16]> {
        let clock_plays = self.clock.is_some_and(|clock| self.legs.contains_key(&clock));
        let queue = self.legs.entry(leg).or_insert_with(Queue::primed);
        queue.samples.extend(frame);
        // Measured in the clock's frames: a leg of 10 ms frames writes twice
        // per 20 ms frame of the clock, and that is no stall.
        let stalled = queue.samples.len() >= CUSHION + STALLED_FRAMES * self.clock_frame.max(frame.len());
        if !clock_plays || (stalled && self.clock != Some(leg)) {
            // The new clock plays from its newest frame: what it had queued
            // while another leg was the clock would only be latency now.
            let stale = queue.samples.len() - frame.len();
            queue.samples.drain(..stale);
            // A stalled clock that writes again is an ordinary leg, and starts
            // with a cushion like any other.
            if let Some(old) = self.clock.replace(leg) {
                self.legs.remove(&old);
            }
        }
        if self.clock != Some(leg) {
            return None;
        }
        self.clock_frame = frame.len();
        self.mix.clear();
        self.mix.resize(frame.len(), 0);
        for (id, queue) in self.legs.iter_mut() {
            if *id == leg {
                for (sum, sample) in self.mix.iter_mut().zip(queue.samples.drain(..)) {
                    *sum += i32::from(sample);
                }
            } else {
                queue.take_into(&mut self.mix);
            }
        }
        self.out.clear();
        self.out.extend(self.mix.iter().map(|sum| (*sum).clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16));
        Some(&self.out)
    }

    /// `leg`'s player stopped: its queue goes, and the next leg to write takes
    /// the clock over if it was this one.
    pub fn leave(&mut self, leg: u64) {
        self.legs.remove(&leg);
        if self.clock == Some(leg) {
            self.clock = None;
        }
    }

    /// How many samples `leg` has queued, cushion included (0 for the clock
    /// once it wrote, and for a leg that never wrote).
    pub fn queued(&self, leg: u64) -> usize {
        self.legs.get(&leg).map_or(0, |queue| queue.samples.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: usize = 960;

    /// Frame `n` of a leg: every sample is `base + n`, so the mix shows which
    /// frame of each leg went out.
    fn frame(base: i16, n: i16) -> Vec<i16> {
        vec![base + n; FRAME]
    }

    /// A call of a clock (leg 0, frames 0, 1, 2, …) and another leg (leg 1,
    /// frames 1000, 1001, …) writing in the order `schedule` gives (`true`: the
    /// clock writes). Returns each mixed frame's value less the clock's frame,
    /// which is what leg 1 contributed (0 for silence).
    fn run(schedule: &[bool]) -> Vec<i16> {
        let mut mixer = Mixer::new();
        let (mut clock, mut other) = (0, 0);
        let mut heard = Vec::new();
        for &clock_writes in schedule {
            if clock_writes {
                let out = mixer.write(0, &frame(0, clock)).expect("the first writer is the clock");
                assert!(out.iter().all(|s| *s == out[0]), "a frame mixes whole frames");
                heard.push(out[0] - clock);
                clock += 1;
            } else {
                assert!(mixer.write(1, &frame(1000, other)).is_none());
                other += 1;
            }
        }
        heard
    }

    #[test]
    fn one_leg_passes_straight_through() {
        let mut mixer = Mixer::new();
        for n in 0..3 {
            assert_eq!(mixer.write(7, &frame(0, n)), Some(&frame(0, n)[..]));
        }
        assert_eq!(mixer.queued(7), 0);
    }

    #[test]
    fn another_leg_is_heard_a_cushion_late_and_in_order() {
        // The other leg writes between the clock's writes.
        let schedule: Vec<bool> = (0..20).flat_map(|_| [true, false]).collect();
        let heard = run(&schedule);
        assert_eq!(heard[..2], [0, 0], "nothing yet, then its cushion of silence");
        let expected: Vec<i16> = (0..18).map(|n| 1000 + n).collect();
        assert_eq!(heard[2..], expected[..], "then every frame, once, in order");
    }

    #[test]
    fn a_write_that_slips_past_the_clocks_or_a_clock_that_writes_twice_loses_nothing() {
        // The other leg writes just before the clock: the phase where, with no
        // cushion, any slip is a gap.
        let steady = || (0..10).flat_map(|_| [false, true]);
        let mut schedule: Vec<bool> = vec![true];
        schedule.extend(steady());
        // Its write slips past the clock's once.
        schedule.extend([true, false]);
        schedule.extend(steady());
        // The clock's tick is late, and the next comes at once.
        schedule.extend([false, false, true, true]);
        schedule.extend(steady());
        let heard = run(&schedule);
        assert_eq!(heard[..2], [0, 0], "nothing yet, then the cushion");
        let expected: Vec<i16> = (0..heard.len() as i16 - 2).map(|n| 1000 + n).collect();
        assert_eq!(heard[2..], expected[..], "no gap, no frame lost or played twice");
    }

    /// Leg 1 falls a frame further behind than its cushion (its writes were
    /// late twice), then writes `frames` in step with the clock: the queue
    /// before each of its writes.
    fn held_back(frames: impl IntoIterator<Item = Vec<i16>>) -> Vec<usize> {
        let mut mixer = Mixer::new();
        mixer.write(0, &frame(0, 0));
        mixer.write(1, &frame(0, 0));
        mixer.write(1, &frame(0, 0));
        assert_eq!(mixer.queued(1), CUSHION + 2 * FRAME);
        frames
            .into_iter()
            .map(|heard| {
                mixer.write(0, &frame(0, 0));
                let queued = mixer.queued(1);
                mixer.write(1, &heard);
                queued
            })
            .collect()
    }

    #[test]
    fn a_leg_held_back_by_a_gap_gives_the_frame_back_when_it_is_quiet() {
        let second = REVIEW_FRAMES as usize;
        let queued = held_back((0..3 * second).map(|_| frame(0, 0)));
        assert!(queued[..second].iter().all(|q| *q == CUSHION + FRAME), "a frame more than the cushion for a second…");
        assert!(queued[second..].iter().all(|q| *q == CUSHION), "…then the cushion alone, for good");
        // Loud audio is not cut: the frame goes at the first quiet one.
        let loud = (0..3 * second).map(|_| frame(1000, 0));
        let queued = held_back(loud.chain((0..4).map(|_| frame(50, 0))));
        assert!(queued[..3 * second].iter().all(|q| *q == CUSHION + FRAME));
        assert_eq!(queued.last(), Some(&CUSHION));
    }

    #[test]
    fn a_clock_that_stops_is_replaced_and_one_that_leaves_too() {
        let mut mixer = Mixer::new();
        assert!(mixer.write(0, &frame(0, 0)).is_some());
        // Leg 0 stops writing: leg 1's queue grows until it takes over.
        let mut writes = 0;
        loop {
            writes += 1;
            if mixer.write(1, &frame(10, 0)).is_some() {
                break;
            }
            assert!(writes < 10, "a stalled clock is replaced");
        }
        assert_eq!(writes, STALLED_FRAMES, "once leg 1 queued that many frames beyond its cushion");
        assert_eq!(mixer.queued(1), 0, "it plays from its newest frame");
        assert!(mixer.write(0, &frame(0, 0)).is_none());
        assert_eq!(mixer.queued(0), CUSHION + FRAME, "the old clock writes again behind a cushion");
        // Leg 1 leaves: leg 0 is the clock again at its next write.
        mixer.leave(1);
        assert_eq!(mixer.write(0, &frame(5, 0)), Some(&frame(5, 0)[..]));
    }

    #[test]
    fn a_leg_of_shorter_frames_waits_for_a_late_clock() {
        let mut mixer = Mixer::new();
        let short = vec![1; FRAME / 2];
        mixer.write(0, &frame(0, 0));
        // A 10 ms leg writes twice per frame of the clock, just before it.
        for n in 0..5 {
            mixer.write(1, &short);
            mixer.write(1, &short);
            let heard = mixer.write(0, &frame(0, 0)).unwrap()[0];
            assert_eq!(heard, if n == 0 { 0 } else { 1 }, "its cushion, then two frames make one of the mix");
        }
        // The clock is a frame late, then catches up: still the clock.
        for _ in 0..4 {
            assert!(mixer.write(1, &short).is_none());
        }
        assert!(mixer.write(0, &frame(0, 0)).is_some());
        assert!(mixer.write(0, &frame(0, 0)).is_some());
    }

    #[test]
    fn the_mix_is_clipped_not_wrapped() {
        let mut mixer = Mixer::new();
        mixer.write(0, &frame(0, 0));
        mixer.write(1, &[i16::MIN; FRAME]);
        mixer.write(2, &[i16::MIN; FRAME]);
        assert_eq!(mixer.write(0, &frame(0, 0)).unwrap()[0], 0, "the cushions");
        assert_eq!(mixer.write(0, &[i16::MIN; FRAME]).unwrap()[0], i16::MIN, "clipped at the bottom");
        mixer.write(1, &[i16::MAX; FRAME]);
        mixer.write(2, &[i16::MAX; FRAME]);
        assert_eq!(mixer.write(0, &[i16::MAX; FRAME]).unwrap()[0], i16::MAX, "and at the top");
    }
}
