//! The sounds of ringing, generated at 48 kHz. Pure: a position goes in, samples
//! come out, so the cadence is tested without a sound card.
//!
//! - [`Ring::Incoming`], the ringtone: a two-note chime (E6 then C6, 150 ms
//!   each, twice), then 1.4 s of quiet; a 2 s cycle.
//! - [`Ring::Ringback`], what a caller hears while the peer rings: 425 Hz for
//!   1 s, then 4 s of quiet (ITU-T E.180's ringing tone).
//! - [`Ring::Waiting`], a call waiting while another is live: two soft 425 Hz
//!   beeps (200 ms, 200 ms apart) every 4 s, 12 dB below the ringtone, so
//!   the conversation goes on over it.
//!
//! Every note fades in and out over 10 ms, so nothing clicks.

use std::f64::consts::TAU;

/// The sample rate.
const RATE: u64 = 48_000;
/// Peak level: -12 dBFS, before the ring volume.
const AMPLITUDE: f64 = 8192.0;
/// Fade in and out of each note.
const FADE: u64 = RATE / 100;

/// Which ringing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    /// A call is coming in.
    Incoming,
    /// The peer is ringing (the caller's side).
    Ringback,
    /// A call is waiting beside the one in progress.
    Waiting,
}

/// A note: a frequency from `start` for `length` samples, within a cycle.
struct Note {
    hz: f64,
    start: u64,
    length: u64,
}

impl Ring {
    /// The length of one cycle, in samples.
    fn cycle(self) -> u64 {
        match self {
            Ring::Incoming => 2 * RATE,
            Ring::Ringback => 5 * RATE,
            Ring::Waiting => 4 * RATE,
        }
    }

    fn notes(self) -> &'static [Note] {
        const NOTE: u64 = RATE * 15 / 100;
        match self {
            Ring::Incoming => &[
                Note { hz: 1318.5, start: 0, length: NOTE },
                Note { hz: 1046.5, start: NOTE, length: NOTE },
                Note { hz: 1318.5, start: 2 * NOTE, length: NOTE },
                Note { hz: 1046.5, start: 3 * NOTE, length: NOTE },
            ],
            Ring::Ringback => &[Note { hz: 425.0, start: 0, length: RATE }],
            Ring::Waiting => &[
                Note { hz: 425.0, start: 0, length: RATE / 5 },
                Note { hz: 425.0, start: 2 * RATE / 5, length: RATE / 5 },
            ],
        }
    }

    /// How loud, before the ring volume.
    fn amplitude(self) -> f64 {
        match self {
            Ring::Incoming | Ring::Ringback => AMPLITUDE,
            // -24 dBFS: under the voices of the call in progress.
            Ring::Waiting => AMPLITUDE / 4.0,
        }
    }

    /// The sample at `position` (samples since ringing started).
    fn sample(self, position: u64) -> i16 {
        let within = position % self.cycle();
        let Some(note) = self.notes().iter().find(|n| (n.start..n.start + n.length).contains(&within)) else {
            return 0;
        };
        let into = within - note.start;
        let edge = into.min(note.length - 1 - into);
        let envelope =
            if edge < FADE { 0.5 - 0.5 * (std::f64::consts::PI * edge as f64 / FADE as f64).cos() } else { 1.0 };
        let phase = TAU * note.hz * position as f64 / RATE as f64;
        (self.amplitude() * envelope * phase.sin()) as i16
    }
}

/// A ringing sound, played from its start.
#[derive(Debug, Clone)]
pub struct RingTone {
    ring: Ring,
    position: u64,
}

impl RingTone {
    /// `ring` from its start.
    pub fn new(ring: Ring) -> Self {
        RingTone { ring, position: 0 }
    }

    /// Fills `frame` with the next samples.
    pub fn fill(&mut self, frame: &mut [i16]) {
        for sample in frame {
            *sample = self.ring.sample(self.position);
            self.position += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio_math::tone_share;

    fn seconds(ring: Ring, seconds: f64) -> Vec<i16> {
        let mut samples = vec![0; (seconds * RATE as f64) as usize];
        RingTone::new(ring).fill(&mut samples);
        samples
    }

    fn rms(samples: &[i16]) -> f64 {
        (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
    }

    #[test]
    fn ringback_is_425_hz_for_a_second_then_four_seconds_of_quiet() {
        let samples = seconds(Ring::Ringback, 10.0);
        let second = |n: usize| &samples[n * 48_000..(n + 1) * 48_000];
        assert!(tone_share(second(0), 425.0) > 0.9);
        assert!(rms(second(0)) > 4000.0, "{}", rms(second(0)));
        for quiet in 1..5 {
            assert_eq!(rms(second(quiet)), 0.0, "second {quiet}");
        }
        assert!(tone_share(second(5), 425.0) > 0.9, "the next cycle");
    }

    #[test]
    fn the_ringtone_chimes_two_notes_twice_every_two_seconds() {
        let samples = seconds(Ring::Incoming, 4.0);
        let note = |n: usize| &samples[n * 7200..(n + 1) * 7200];
        for n in [0, 2] {
            assert!(tone_share(note(n), 1318.5) > 0.8, "note {n}");
            assert!(tone_share(note(n + 1), 1046.5) > 0.8, "note {}", n + 1);
        }
        assert_eq!(rms(&samples[4 * 7200..96_000]), 0.0, "quiet after the chime");
        assert!(tone_share(&samples[96_000..96_000 + 7200], 1318.5) > 0.8, "the next cycle");
    }

    #[test]
    fn a_waiting_call_beeps_twice_softly_every_four_seconds() {
        let samples = seconds(Ring::Waiting, 8.0);
        let tenth = |n: usize| &samples[n * 4800..(n + 1) * 4800];
        for beep in [0, 1, 4, 5, 40, 41, 44, 45] {
            assert!(tone_share(tenth(beep), 425.0) > 0.9, "tenth {beep}");
            let level = rms(tenth(beep));
            assert!(level > 1000.0 && level < 2100.0, "a quarter of the ringtone's level: {level}");
        }
        for quiet in [2, 3, 6, 7, 20, 39, 46, 79] {
            assert_eq!(rms(tenth(quiet)), 0.0, "tenth {quiet}");
        }
    }

    #[test]
    fn notes_fade_in_and_out_without_a_click() {
        for ring in [Ring::Incoming, Ring::Ringback, Ring::Waiting] {
            let samples = seconds(ring, 5.0);
            let largest_step = samples.windows(2).map(|w| (i32::from(w[1]) - i32::from(w[0])).abs()).max();
            // A 1.3 kHz sine at -12 dBFS moves at most ~1400 per sample; a
            // note that started or stopped abruptly would jump by up to 8192.
            assert!(largest_step.is_some_and(|step| step < 1500), "{ring:?}: {largest_step:?}");
            assert_eq!(samples[0], 0);
        }
    }

    #[test]
    fn filling_in_pieces_is_filling_at_once() {
        let whole = seconds(Ring::Incoming, 0.5);
        let mut tone = RingTone::new(Ring::Incoming);
        let mut pieces = vec![0i16; whole.len()];
        for chunk in pieces.chunks_mut(960) {
            tone.fill(chunk);
        }
        assert_eq!(pieces, whole);
    }
}
