//! Where call samples wait for subscribers. Calls write the latest sample of
//! each call; every subscriber reads them at its own interval, so nothing a
//! subscriber does (or fails to do) reaches a call or another subscriber. The
//! last sample of an ended call, with its summary, is broadcast so that each
//! subscriber sends it once, as soon as the call ends. A subscriber to every
//! call also gets each group call's totals, from its legs' latest samples.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::time::{Interval, MissedTickBehavior};

use voicelink_core::stats::{CallStats, GroupStats};
use voicelink_core::vocab::CallId;

/// Ended calls' last samples kept for late subscribers to one call.
const RECENT_FINALS: usize = 32;

/// Final samples a subscriber may fall behind by (beyond that it misses some).
const FINALS_CAPACITY: usize = 64;

/// The latest samples of every call.
#[derive(Clone)]
pub struct StatsBoard {
    live: Arc<watch::Sender<BTreeMap<CallId, Arc<CallStats>>>>,
    finals: broadcast::Sender<Arc<CallStats>>,
    recent: Arc<Mutex<VecDeque<Arc<CallStats>>>>,
}

impl Default for StatsBoard {
    fn default() -> Self {
        StatsBoard {
            live: Arc::new(watch::Sender::new(BTreeMap::new())),
            finals: broadcast::channel(FINALS_CAPACITY).0,
            recent: Arc::default(),
        }
    }
}

/// A subscription to a call that is neither in progress nor recently ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("there is no call {0} (it may have ended a while ago): `voicectl calls` lists the calls in progress")]
pub struct NoSuchCall(pub CallId);

impl StatsBoard {
    /// Replaces a call's sample.
    pub fn update(&self, stats: CallStats) {
        let stats = Arc::new(stats);
        // No subscriber needs waking: each reads on its own tick.
        self.live.send_if_modified(|live| {
            live.insert(stats.call_id.clone(), stats);
            false
        });
    }

    /// A call ended: its last sample, with the summary.
    pub fn finish(&self, stats: CallStats) {
        let stats = Arc::new(stats);
        // Recent first: a subscriber looking for the call always finds it in one.
        {
            let mut recent = self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if recent.len() == RECENT_FINALS {
                recent.pop_front();
            }
            recent.push_back(stats.clone());
        }
        self.live.send_if_modified(|live| {
            live.remove(&stats.call_id);
            false
        });
        let _ = self.finals.send(stats);
    }

    /// The last sample of a call that ended recently.
    fn recent(&self, call: &CallId) -> Option<Arc<CallStats>> {
        let recent = self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        recent.iter().rev().find(|stats| stats.call_id == *call).cloned()
    }

    /// The latest sample of a call in progress.
    pub fn latest(&self, call: &CallId) -> Option<Arc<CallStats>> {
        self.live.borrow().get(call).cloned()
    }

    /// Samples of one call (until it ends) or of every call, every `interval`,
    /// starting now.
    pub fn subscribe(&self, call: Option<CallId>, interval: Duration) -> Result<StatsSubscription, NoSuchCall> {
        // Subscribe to the finals first, so a call that ends meanwhile is not missed.
        let finals = self.finals.subscribe();
        let mut pending = VecDeque::new();
        let mut done = false;
        if let Some(call) = &call
            && !self.live.borrow().contains_key(call)
        {
            pending.push_back(Sample::Call(self.recent(call).ok_or_else(|| NoSuchCall(call.clone()))?));
            done = true;
        }
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(StatsSubscription { board: self.clone(), finals, call, tick, pending, done })
    }
}

/// What a subscriber is sent.
#[derive(Debug, Clone)]
pub enum Sample {
    /// A call's (a leg's, in a group call).
    Call(Arc<CallStats>),
    /// A group call's totals.
    Group(Box<GroupStats>),
}

/// One subscriber's view of the board.
pub struct StatsSubscription {
    board: StatsBoard,
    finals: broadcast::Receiver<Arc<CallStats>>,
    call: Option<CallId>,
    tick: Interval,
    pending: VecDeque<Sample>,
    done: bool,
}

impl StatsSubscription {
    /// The next sample; `None` once the subscribed call has ended (or the board
    /// is gone).
    pub async fn next(&mut self) -> Option<Sample> {
        loop {
            if let Some(stats) = self.pending.pop_front() {
                return Some(stats);
            }
            if self.done {
                return None;
            }
            tokio::select! {
                _ = self.tick.tick() => {
                    let live = self.board.live.borrow().clone();
                    match &self.call {
                        None => {
                            self.pending.extend(live.values().cloned().map(Sample::Call));
                            let groups = GroupStats::of(live.values().map(AsRef::as_ref));
                            self.pending.extend(groups.into_iter().map(|group| Sample::Group(Box::new(group))));
                        }
                        Some(call) => match live.get(call) {
                            Some(stats) => self.pending.push_back(Sample::Call(stats.clone())),
                            // Ended, and its final was missed (this subscriber lagged).
                            None => {
                                self.pending.extend(self.board.recent(call).map(Sample::Call));
                                self.done = true;
                            }
                        },
                    }
                }
                last = self.finals.recv() => match last {
                    Ok(last) if self.call.as_ref().is_none_or(|call| last.call_id == *call) => {
                        self.done = self.call.is_some();
                        self.pending.push_back(Sample::Call(last));
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use voicelink_core::audio_spec::{InputSpec, OutputSpec};
    use voicelink_core::call_record::CallRecord;
    use voicelink_core::stats::{CallMeter, CodecInfo};
    use voicelink_core::vocab::{Direction, State};

    use super::*;

    fn sample(call: &CallId, state: State) -> CallStats {
        let now = std::time::SystemTime::now();
        let audio = (InputSpec::Silence, OutputSpec::Null);
        let record = CallRecord::new(call.clone(), None, "alice".into(), Direction::Outgoing, audio, now);
        let record = CallRecord { state, ..record };
        let codec = CodecInfo::opus(32_000, Duration::from_millis(20), false);
        CallMeter::new(codec).sample(&record, None, now)
    }

    /// A call's sample, not a group's.
    fn leg(sample: Option<Sample>) -> Arc<CallStats> {
        match sample {
            Some(Sample::Call(stats)) => stats,
            other => panic!("not a call's sample: {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscriber_gets_samples_at_once_then_each_interval_then_the_final() {
        let board = StatsBoard::default();
        let (one, two) = (CallId::random(), CallId::random());
        board.update(sample(&one, State::Active));
        board.update(sample(&two, State::Incoming));
        let mut all = board.subscribe(None, Duration::from_secs(1)).unwrap();
        let mut only_one = board.subscribe(Some(one.clone()), Duration::from_millis(100)).unwrap();
        let first = [leg(all.next().await), leg(all.next().await)];
        assert_eq!(first.iter().filter(|s| s.call_id == one || s.call_id == two).count(), 2);
        assert_eq!(leg(only_one.next().await).call_id, one);
        assert_eq!(leg(only_one.next().await).call_id, one);

        board.finish(sample(&one, State::Ended));
        // The final comes as soon as the call ends, and ends a one-call stream.
        let last = loop {
            let stats = leg(only_one.next().await);
            if stats.state == State::Ended {
                break stats;
            }
        };
        assert_eq!(last.call_id, one);
        assert!(only_one.next().await.is_none());
        // The all-calls stream carries the final and goes on with the other call.
        let mut seen_final = false;
        for _ in 0..4 {
            let stats = leg(all.next().await);
            seen_final |= stats.call_id == one && stats.state == State::Ended;
        }
        assert!(seen_final);
        assert_eq!(leg(all.next().await).call_id, two);
    }

    #[tokio::test(start_paused = true)]
    async fn subscribing_to_an_ended_call_gives_its_final_and_an_unknown_call_is_refused() {
        let board = StatsBoard::default();
        let call = CallId::random();
        board.update(sample(&call, State::Active));
        board.finish(sample(&call, State::Ended));
        let mut late = board.subscribe(Some(call.clone()), Duration::from_secs(1)).unwrap();
        assert_eq!(leg(late.next().await).state, State::Ended);
        assert!(late.next().await.is_none());
        let unknown = CallId::random();
        assert_eq!(board.subscribe(Some(unknown.clone()), Duration::from_secs(1)).err(), Some(NoSuchCall(unknown)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscriber_to_every_call_gets_each_group_calls_totals_after_its_legs() {
        let board = StatsBoard::default();
        let (ab, ac) = (CallId::random(), CallId::random());
        for leg in [&ab, &ac] {
            board.update(CallStats { group: Some(ab.clone()), ..sample(leg, State::Active) });
        }
        let mut all = board.subscribe(None, Duration::from_secs(1)).unwrap();
        let legs = [leg(all.next().await), leg(all.next().await)];
        assert!(legs.iter().all(|leg| leg.group.as_ref() == Some(&ab)));
        match all.next().await {
            Some(Sample::Group(group)) => assert_eq!((group.group, group.participants), (ab.clone(), 3)),
            other => panic!("{other:?}"),
        }
        // A subscriber to one leg gets that leg only.
        let mut one = board.subscribe(Some(ac.clone()), Duration::from_secs(1)).unwrap();
        assert_eq!(leg(one.next().await).call_id, ac);
        assert_eq!(leg(one.next().await).call_id, ac);
    }
}
