//! The impairment model: what a link does to each frame, decided without any I/O.
//!
//! A [`Decider`] is fed the arrival time of every frame that enters one direction
//! of a link and answers with a [`Verdict`]: drop it, or deliver it at a given
//! time. It is seeded, so the same seed and the same arrivals give the same
//! verdicts, which is what makes a bench profile reproducible. The relay
//! ([`crate::relay`]) is the I/O edge that applies the verdicts to real frames.
//!
//! Delay and jitter behave like netem's: each frame's delivery time is its arrival
//! plus `delay` plus a uniform offset in `±jitter`, drawn independently per frame,
//! so under jitter frames can overtake each other (reordering), as on a real
//! congested path. A [`Profile`] applies its impairment to *each* direction
//! independently: "100 ms delay" adds 100 ms one way, so a round trip gains 200 ms.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How frames are lost.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Loss {
    /// Nothing is lost.
    #[default]
    None,
    /// Each frame is lost independently with this probability (0.0 to 1.0).
    Random {
        /// Probability that a frame is lost.
        probability: f64,
    },
    /// The Gilbert-Elliott two-state model: the link is in a good or a bad state,
    /// moves between them with the given per-frame probabilities, and loses frames
    /// with a state-dependent probability. Losses come in bursts while it is bad.
    GilbertElliott {
        /// Per-frame probability of moving from good to bad.
        p_good_to_bad: f64,
        /// Per-frame probability of moving from bad to good (1 / mean burst length).
        p_bad_to_good: f64,
        /// Loss probability while good.
        loss_in_good: f64,
        /// Loss probability while bad.
        loss_in_bad: f64,
    },
}

impl Loss {
    /// The long-run fraction of frames lost.
    ///
    /// For Gilbert-Elliott this is the stationary mix of the two states:
    /// P(bad) = p_gb / (p_gb + p_bg), loss = P(good)·loss_in_good + P(bad)·loss_in_bad.
    pub fn average(&self) -> f64 {
        match *self {
            Loss::None => 0.0,
            Loss::Random { probability } => probability.clamp(0.0, 1.0),
            Loss::GilbertElliott { p_good_to_bad, p_bad_to_good, loss_in_good, loss_in_bad } => {
                let total = p_good_to_bad + p_bad_to_good;
                // A chain that never moves stays in its start state (good).
                let p_bad = if total > 0.0 { p_good_to_bad / total } else { 0.0 };
                (1.0 - p_bad) * loss_in_good + p_bad * loss_in_bad
            }
        }
    }
}

/// What one direction of a link does to the frames that cross it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Impairment {
    /// Added one-way delay.
    pub delay: Duration,
    /// Each frame's delay varies uniformly within ±jitter around `delay` (never
    /// below zero added delay).
    pub jitter: Duration,
    /// How frames are lost.
    pub loss: Loss,
}

impl Impairment {
    /// A perfect link: no delay, no jitter, no loss.
    pub const CLEAN: Impairment = Impairment { delay: Duration::ZERO, jitter: Duration::ZERO, loss: Loss::None };

    /// Only a fixed delay.
    pub fn delay(delay: Duration) -> Impairment {
        Impairment { delay, ..Impairment::CLEAN }
    }

    /// Only random loss with this probability.
    pub fn random_loss(probability: f64) -> Impairment {
        Impairment { loss: Loss::Random { probability }, ..Impairment::CLEAN }
    }

    /// Everything is dropped.
    pub fn black_hole() -> Impairment {
        Impairment::random_loss(1.0)
    }
}

/// What happens to one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The frame is lost (by the loss model or because the link is down).
    Drop,
    /// The frame is delivered at this time.
    Deliver {
        /// When to release the frame.
        at: Instant,
    },
}

/// Decides the fate of each frame in one direction of a link. Pure: no clock is
/// read, the caller passes each frame's arrival time.
#[derive(Debug, Clone)]
pub struct Decider {
    impairment: Impairment,
    rng: ChaCha8Rng,
    /// Gilbert-Elliott state; starts good.
    bad: bool,
    /// The link is down (drops everything) from `.0` until `.1`.
    down: Option<(Instant, Instant)>,
}

impl Decider {
    /// A decider for `impairment`, reproducible from `seed`.
    pub fn new(impairment: Impairment, seed: u64) -> Decider {
        // ChaCha8 rather than StdRng: its output for a seed is fixed across rand
        // versions, so a profile's seed means the same thing after an upgrade.
        Decider { impairment, rng: ChaCha8Rng::seed_from_u64(seed), bad: false, down: None }
    }

    /// The impairment it applies.
    pub fn impairment(&self) -> Impairment {
        self.impairment
    }

    /// Applies `impairment` to the frames that arrive from now on (frames already
    /// given a delivery time keep it). The Gilbert-Elliott state restarts good.
    pub fn set_impairment(&mut self, impairment: Impairment) {
        self.impairment = impairment;
        self.bad = false;
    }

    /// Puts the link down from `from` for `length`: frames arriving in that window
    /// are dropped, and [`Decider::is_down`] tells the releasing side not to
    /// deliver frames due within it either.
    pub fn go_down(&mut self, from: Instant, length: Duration) {
        self.down = Some((from, from + length));
    }

    /// Whether the link is down at `at`.
    pub fn is_down(&self, at: Instant) -> bool {
        self.down.is_some_and(|(from, until)| from <= at && at < until)
    }

    /// The fate of a frame that arrives at `arrival`.
    pub fn decide(&mut self, arrival: Instant) -> Verdict {
        // Draw the same number of random values for every frame, whatever the
        // outcome, so that one model's draws do not shift another's: the jitter
        // sequence is the same with or without loss, for instance.
        let transition: f64 = self.rng.random();
        let loss_draw: f64 = self.rng.random();
        let jitter_draw: f64 = self.rng.random();

        let lost = match self.impairment.loss {
            Loss::None => false,
            Loss::Random { probability } => loss_draw < probability,
            Loss::GilbertElliott { p_good_to_bad, p_bad_to_good, loss_in_good, loss_in_bad } => {
                // Move first, then lose in the new state: the stationary loss rate is
                // then exactly `Loss::average`.
                self.bad = if self.bad { transition >= p_bad_to_good } else { transition < p_good_to_bad };
                loss_draw < if self.bad { loss_in_bad } else { loss_in_good }
            }
        };
        if lost || self.is_down(arrival) {
            return Verdict::Drop;
        }

        let Impairment { delay, jitter, .. } = self.impairment;
        // Uniform in [-jitter, +jitter], then never earlier than the arrival.
        let offset = (jitter_draw * 2.0 - 1.0) * jitter.as_secs_f64();
        let total = (delay.as_secs_f64() + offset).max(0.0);
        Verdict::Deliver { at: arrival + Duration::from_secs_f64(total) }
    }
}

/// A link-down event in a profile: triggered by the bench at runtime, `after` the
/// call became active, for `length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// How long after the call became active the link goes down.
    pub after: Duration,
    /// How long it stays down.
    pub length: Duration,
}

/// A named network condition: the same impairment applied independently to each
/// direction, and optionally an outage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// Short name, used on the command line and in reports.
    pub name: &'static str,
    /// One line for people.
    pub description: &'static str,
    /// Applied to each direction (so delays add up over a round trip).
    pub each_direction: Impairment,
    /// A mid-call outage, if any.
    pub outage: Option<Outage>,
    /// The callee's daemon is killed (SIGKILL) this long after the call became
    /// active: how soon, and how, the caller notices.
    pub kill_callee_after: Option<Duration>,
    /// Stalled TLS clients held against the callee's signaling port throughout
    /// ([`crate::hostile::StalledClients`], four from each of its loopback
    /// addresses 127.0.0.2 and up): a hostile LAN.
    pub stalled_clients: usize,
}

/// The Gilbert-Elliott parameters of the "bursty" profile: P(bad) = 0.02 / (0.02 +
/// 0.3) = 6.25 %, all-but-certain loss while bad (80 %), none while good, so 5.0 %
/// average loss, in bad spells of 1 / 0.3 ≈ 3.3 frames (≈ 67 ms of 20 ms packets).
pub const BURSTY: Loss =
    Loss::GilbertElliott { p_good_to_bad: 0.02, p_bad_to_good: 0.3, loss_in_good: 0.0, loss_in_bad: 0.8 };

/// Every named profile, in the order the bench runs them.
pub fn profiles() -> Vec<Profile> {
    let ms = Duration::from_millis;
    let clean = Impairment::CLEAN;
    vec![
        Profile {
            name: "clean",
            description: "no impairment",
            each_direction: clean,
            outage: None,
            kill_callee_after: None,
            stalled_clients: 0,
        },
        Profile {
            name: "stalled200",
            description: "clean, with 200 stalled TLS handshakes from 50 addresses held against the callee",
            each_direction: clean,
            outage: None,
            kill_callee_after: None,
            stalled_clients: 200,
        },
        Profile {
            name: "delay30_jitter10",
            description: "30 ms ± 10 ms (uniform) added each way",
            each_direction: Impairment { delay: ms(30), jitter: ms(10), loss: Loss::None },
            outage: None,
            kill_callee_after: None,
            stalled_clients: 0,
        },
        Profile {
            name: "delay30_jitter10_loss5",
            description: "30 ms ± 10 ms (uniform) and 5 % random loss added each way",
            each_direction: Impairment { delay: ms(30), jitter: ms(10), loss: Loss::Random { probability: 0.05 } },
            outage: None,
            kill_callee_after: None,
            stalled_clients: 0,
        },
        Profile {
            name: "loss5",
            description: "5 % random loss each way",
            each_direction: Impairment::random_loss(0.05),
            outage: None,
            kill_callee_after: None,
            stalled_clients: 0,
        },
        Profile {
            name: "loss15",
            description: "15 % random loss each way",
            each_direction: Impairment::random_loss(0.15),
            outage: None,
            kill_callee_after: None,
            stalled_clients: 0,
        },
        Profile {
            name: "bursty",
            description: "Gilbert-Elliott bursts, 5 % average loss each way (p_gb 0.02, p_bg 0.3, loss in bad 80 %)",
            each_direction: Impairment { loss: BURSTY, ..clean },
            outage: None,
            kill_callee_after: None,
            stalled_clients: 0,
        },
        Profile {
            name: "delay100",
            description: "100 ms added each way (200 ms added round trip)",
            each_direction: Impairment::delay(ms(100)),
            outage: None,
            kill_callee_after: None,
            stalled_clients: 0,
        },
        Profile {
            name: "outage3s",
            description: "clean, then the link goes down for 3 s mid-call",
            each_direction: clean,
            outage: Some(Outage { after: Duration::from_secs(6), length: Duration::from_secs(3) }),
            kill_callee_after: None,
            stalled_clients: 0,
        },
        Profile {
            name: "outage10s",
            description: "clean, then the link goes down for 10 s mid-call",
            each_direction: clean,
            outage: Some(Outage { after: Duration::from_secs(4), length: Duration::from_secs(10) }),
            kill_callee_after: None,
            stalled_clients: 0,
        },
        Profile {
            name: "outage30s",
            description: "clean, then the link goes down for 30 s mid-call",
            each_direction: clean,
            outage: Some(Outage { after: Duration::from_secs(3), length: Duration::from_secs(30) }),
            kill_callee_after: None,
            stalled_clients: 0,
        },
        Profile {
            name: "killed",
            description: "clean; the callee's daemon is killed (SIGKILL) 5 s into the call",
            each_direction: clean,
            outage: None,
            kill_callee_after: Some(Duration::from_secs(5)),
            stalled_clients: 0,
        },
    ]
}

/// The profile with this name.
pub fn profile(name: &str) -> Option<Profile> {
    profiles().into_iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAMES: usize = 100_000;
    /// 10 ms apart, like Opus packets.
    const SPACING: Duration = Duration::from_millis(10);

    fn run(impairment: Impairment, seed: u64, frames: usize) -> (Instant, Vec<Verdict>) {
        let start = Instant::now();
        let mut decider = Decider::new(impairment, seed);
        let verdicts = (0..frames).map(|i| decider.decide(start + SPACING * i as u32)).collect();
        (start, verdicts)
    }

    fn loss_rate(verdicts: &[Verdict]) -> f64 {
        verdicts.iter().filter(|v| **v == Verdict::Drop).count() as f64 / verdicts.len() as f64
    }

    /// Offsets from the base so that two runs with different start instants compare.
    fn offsets(start: Instant, verdicts: &[Verdict]) -> Vec<Option<Duration>> {
        verdicts
            .iter()
            .map(|v| match v {
                Verdict::Drop => None,
                Verdict::Deliver { at } => Some(*at - start),
            })
            .collect()
    }

    fn everything() -> Impairment {
        Impairment { delay: Duration::from_millis(30), jitter: Duration::from_millis(10), loss: BURSTY }
    }

    #[test]
    fn the_same_seed_gives_the_same_verdicts() {
        let (s1, a) = run(everything(), 7, 10_000);
        let (s2, b) = run(everything(), 7, 10_000);
        assert_eq!(offsets(s1, &a), offsets(s2, &b));
        let (s3, c) = run(everything(), 8, 10_000);
        assert_ne!(offsets(s1, &a), offsets(s3, &c), "another seed gives another run");
    }

    #[test]
    fn a_clean_link_delivers_everything_at_once() {
        let (start, verdicts) = run(Impairment::CLEAN, 1, 1000);
        for (i, v) in verdicts.iter().enumerate() {
            assert_eq!(*v, Verdict::Deliver { at: start + SPACING * i as u32 });
        }
    }

    #[test]
    fn random_loss_is_close_to_its_probability() {
        for p in [0.05, 0.15, 0.5] {
            let (_, verdicts) = run(Impairment::random_loss(p), 42, FRAMES);
            let rate = loss_rate(&verdicts);
            // The binomial standard deviation at 100k frames is ≤ 0.0016; ±0.006 is
            // over 3.7 of them, and the seed is fixed anyway.
            assert!((rate - p).abs() < 0.006, "configured {p}, measured {rate}");
        }
        let (_, all) = run(Impairment::black_hole(), 1, 1000);
        assert_eq!(loss_rate(&all), 1.0);
    }

    #[test]
    fn gilbert_elliott_average_loss_matches_theory() {
        let general =
            Loss::GilbertElliott { p_good_to_bad: 0.05, p_bad_to_good: 0.2, loss_in_good: 0.01, loss_in_bad: 0.5 };
        // P(bad) = 0.05 / 0.25 = 0.2; 0.8 × 0.01 + 0.2 × 0.5 = 0.108.
        assert!((general.average() - 0.108).abs() < 1e-12);
        assert!((BURSTY.average() - 0.05).abs() < 1e-12, "the bursty profile averages 5 %");
        for loss in [general, BURSTY] {
            let (_, verdicts) = run(Impairment { loss, ..Impairment::CLEAN }, 3, 4 * FRAMES);
            let rate = loss_rate(&verdicts);
            // Bursts correlate the losses (a few times the binomial variance); over
            // 400k frames the standard deviation is still below 0.002.
            assert!((rate - loss.average()).abs() < 0.006, "{loss:?}: theory {}, measured {rate}", loss.average());
        }
    }

    #[test]
    fn gilbert_elliott_losses_come_in_bursts() {
        // P(lost | previous lost) is far above the average for bursty loss and
        // about the average for random loss.
        let conditional = |impairment| {
            let (_, v) = run(impairment, 11, 4 * FRAMES);
            let after_loss: Vec<_> = v.windows(2).filter(|w| w[0] == Verdict::Drop).map(|w| w[1]).collect();
            loss_rate(&after_loss)
        };
        let bursty = conditional(Impairment { loss: BURSTY, ..Impairment::CLEAN });
        let random = conditional(Impairment::random_loss(0.05));
        // Theory for BURSTY: after a loss the chain was bad; it stays bad with 0.7 and
        // then loses with 0.8, so ≈ 0.56.
        assert!(bursty > 0.4, "bursty: P(loss | loss) = {bursty}");
        assert!(random < 0.07, "random: P(loss | loss) = {random}");
    }

    #[test]
    fn delivery_stays_within_the_jitter_band_and_never_before_arrival() {
        let delay = Duration::from_millis(30);
        let jitter = Duration::from_millis(10);
        let start = Instant::now();
        let mut decider = Decider::new(Impairment { delay, jitter, loss: Loss::None }, 5);
        let (mut lowest, mut highest) = (Duration::MAX, Duration::ZERO);
        for i in 0..FRAMES as u32 {
            let arrival = start + SPACING * i;
            let Verdict::Deliver { at } = decider.decide(arrival) else { panic!("no loss configured") };
            let added = at - arrival;
            assert!(added >= delay - jitter && added <= delay + jitter, "frame {i}: {added:?} outside 30 ± 10 ms");
            lowest = lowest.min(added);
            highest = highest.max(added);
        }
        // The whole band is used, not just its middle.
        assert!(lowest < Duration::from_millis(21) && highest > Duration::from_millis(39), "{lowest:?}..{highest:?}");

        // Jitter larger than the delay never delivers before the arrival.
        let mut wide = Decider::new(Impairment { delay: Duration::from_millis(5), jitter, loss: Loss::None }, 6);
        for i in 0..10_000u32 {
            let arrival = start + SPACING * i;
            let Verdict::Deliver { at } = wide.decide(arrival) else { panic!("no loss configured") };
            assert!(at >= arrival);
        }
    }

    #[test]
    fn jitter_reorders_frames_sent_closer_than_the_band() {
        let (_, verdicts) = run(everything(), 9, 10_000);
        let times: Vec<Instant> = verdicts
            .iter()
            .filter_map(|v| match v {
                Verdict::Deliver { at } => Some(*at),
                Verdict::Drop => None,
            })
            .collect();
        assert!(times.windows(2).any(|w| w[1] < w[0]), "±10 ms jitter on 10 ms spacing reorders some frames");
    }

    #[test]
    fn a_down_link_drops_everything_in_its_window_only() {
        let start = Instant::now();
        let mut decider = Decider::new(Impairment::delay(Duration::from_millis(1)), 1);
        decider.go_down(start + Duration::from_secs(1), Duration::from_secs(3));
        for i in 0..600u32 {
            let arrival = start + SPACING * i;
            let in_window = (100..400).contains(&i);
            assert_eq!(decider.is_down(arrival), in_window, "frame {i}");
            match decider.decide(arrival) {
                Verdict::Drop => assert!(in_window, "frame {i} dropped outside the outage"),
                Verdict::Deliver { at } => {
                    assert!(!in_window, "frame {i} delivered during the outage");
                    assert_eq!(at, arrival + Duration::from_millis(1));
                }
            }
        }
    }

    #[test]
    fn set_impairment_applies_to_later_frames() {
        let start = Instant::now();
        let mut decider = Decider::new(Impairment::CLEAN, 1);
        assert_eq!(decider.decide(start), Verdict::Deliver { at: start });
        decider.set_impairment(Impairment::black_hole());
        assert_eq!(decider.decide(start + SPACING), Verdict::Drop);
        assert_eq!(decider.impairment(), Impairment::black_hole());
    }

    #[test]
    fn every_profile_named_in_the_issue_exists() {
        for name in
            ["clean", "delay30_jitter10", "delay30_jitter10_loss5", "loss5", "loss15", "bursty", "delay100", "outage3s"]
        {
            assert!(profile(name).is_some(), "{name}");
        }
        assert!(profile("outage3s").unwrap().outage.is_some_and(|o| o.length == Duration::from_secs(3)));
        assert_eq!(profile("delay100").unwrap().each_direction.delay, Duration::from_millis(100));
        assert!(profile("nope").is_none());
    }
}
