//! Call history: one entry per call, both directions, written when the call
//! ends (and marked interrupted if the daemon never saw the end). Pure: what an
//! ended call means for its entry.

use std::time::{Duration, SystemTime};

use crate::call_record::CallRecord;
use crate::stats::CallStats;
use crate::vocab::{CallId, DeviceId, Direction, EndReason};

/// How a call went, as the history shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered (whoever hung up).
    Answered,
    /// It rang here and nobody answered (the caller gave up, or it timed out).
    Missed,
    /// Declined (here, or by the callee).
    Declined,
    /// The callee was in another call.
    Busy,
    /// Our call was not answered in time, or was cancelled here.
    NotAnswered,
    /// A blocked device's call, refused without ringing (or ours refused so).
    Blocked,
    /// Refused by do-not-disturb (here or there).
    DoNotDisturb,
    /// Refused because only known or trusted devices may ring.
    NotAllowed,
    /// Failed before or while it was connected.
    Failed,
    /// The daemon stopped (or was killed) while the call was on.
    Interrupted,
}

impl Outcome {
    /// The word stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Missed => "missed",
            Outcome::Declined => "declined",
            Outcome::Busy => "busy",
            Outcome::NotAnswered => "not_answered",
            Outcome::Blocked => "blocked",
            Outcome::DoNotDisturb => "do_not_disturb",
            Outcome::NotAllowed => "not_allowed",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
        }
    }

    /// The outcome a stored word names.
    pub fn parse(word: &str) -> Option<Self> {
        ALL.iter().copied().find(|o| o.as_str() == word)
    }

    /// How an ended call went.
    pub fn of(direction: Direction, answered: bool, reason: &EndReason) -> Self {
        match (answered, direction, reason) {
            (true, _, _) => Outcome::Answered,
            (false, _, EndReason::Blocked) => Outcome::Blocked,
            (false, _, EndReason::DoNotDisturb) => Outcome::DoNotDisturb,
            (false, _, EndReason::NotAllowed) => Outcome::NotAllowed,
            (false, _, EndReason::Declined(_)) => Outcome::Declined,
            (false, _, EndReason::Busy) => Outcome::Busy,
            (false, _, EndReason::Failed(_)) => Outcome::Failed,
            (false, Direction::Incoming, _) => Outcome::Missed,
            (false, Direction::Outgoing, _) => Outcome::NotAnswered,
        }
    }
}

const ALL: [Outcome; 10] = [
    Outcome::Answered,
    Outcome::Missed,
    Outcome::Declined,
    Outcome::Busy,
    Outcome::NotAnswered,
    Outcome::Blocked,
    Outcome::DoNotDisturb,
    Outcome::NotAllowed,
    Outcome::Failed,
    Outcome::Interrupted,
];

/// One call in the history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    /// The call.
    pub call_id: CallId,
    /// The other side, when known.
    pub peer: Option<DeviceId>,
    /// Its name at the time.
    pub peer_name: String,
    /// Who dialed.
    pub direction: Direction,
    /// When it began (dialed, or the request arrived).
    pub started_at: SystemTime,
    /// From the start to the answer.
    pub setup: Option<Duration>,
    /// From the answer to the end.
    pub talk: Duration,
    /// How it went; `None` while the call is on.
    pub outcome: Option<Outcome>,
    /// The end reason in words ("declined: in a meeting", "ICE failed").
    pub detail: String,
    /// The call's summary: mean opinion score of its worst minute.
    pub mos: Option<f64>,
    /// The share of packets lost, 0 to 1.
    pub loss: Option<f64>,
    /// The last round trip.
    pub round_trip: Option<Duration>,
}

impl HistoryEntry {
    /// The entry of a call as it stands: its outcome once it has ended, and its
    /// numbers from the last stats sample (the one with the summary, at the end).
    pub fn of(record: &CallRecord, last: Option<&CallStats>) -> Self {
        let answered = record.answered_at.is_some();
        let outcome = record.end_reason.as_ref().map(|reason| Outcome::of(record.direction, answered, reason));
        let detail = match &record.end_reason {
            Some(EndReason::Declined(why)) => why.clone(),
            Some(EndReason::Failed(cause)) => cause.to_string(),
            _ => String::new(),
        };
        let summary = last.and_then(|stats| stats.summary.as_ref());
        let loss = summary.and_then(|s| {
            let lost = u64::try_from(s.packets_lost).unwrap_or(0);
            let expected = s.packets_received + lost;
            (expected > 0).then(|| lost as f64 / expected as f64)
        });
        HistoryEntry {
            call_id: record.id.clone(),
            peer: record.peer,
            peer_name: record.peer_name.clone(),
            direction: record.direction,
            started_at: record.started_at,
            setup: record.answered_at.and_then(|at| at.duration_since(record.started_at).ok()),
            talk: summary.map_or(Duration::ZERO, |s| s.duration),
            outcome,
            detail,
            mos: summary.and_then(|s| s.worst_minute_mos),
            loss,
            round_trip: last.and_then(|stats| stats.round_trip.map(|(rtt, _)| rtt)),
        }
    }

    /// The entry of a call refused before it rang (blocked, do-not-disturb, not
    /// allowed, too many requests).
    pub fn refused(call_id: CallId, peer: DeviceId, peer_name: String, reason: EndReason, at: SystemTime) -> Self {
        HistoryEntry {
            call_id,
            peer: Some(peer),
            peer_name,
            direction: Direction::Incoming,
            started_at: at,
            setup: None,
            talk: Duration::ZERO,
            outcome: Some(Outcome::of(Direction::Incoming, false, &reason)),
            detail: String::new(),
            mos: None,
            loss: None,
            round_trip: None,
        }
    }
}

/// What `ListHistory` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only missed calls.
    pub missed_only: bool,
    /// Only calls with this device.
    pub peer: Option<DeviceId>,
    /// Only calls with a peer that had this name (any case): for callers that
    /// never became known.
    pub peer_name: Option<String>,
    /// Only calls since then.
    pub since: Option<SystemTime>,
    /// At most this many, newest first.
    pub limit: usize,
    /// Older than this row (the page before): the `id` the last page ended with.
    pub before: Option<i64>,
}

/// How much history to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Entries older than this go.
    pub max_age: Duration,
    /// Beyond this many, the oldest go.
    pub max_entries: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { max_age: Duration::from_secs(365 * 24 * 3600), max_entries: 10_000 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::FailCause;

    #[test]
    fn every_end_maps_to_what_a_person_would_call_it() {
        use Direction::{Incoming, Outgoing};
        let cases = [
            (Incoming, true, EndReason::HungUpRemote, Outcome::Answered),
            (Outgoing, true, EndReason::PeerLost, Outcome::Answered),
            (Incoming, false, EndReason::Cancelled, Outcome::Missed),
            (Incoming, false, EndReason::NoAnswer, Outcome::Missed),
            (Incoming, false, EndReason::Declined(String::new()), Outcome::Declined),
            (Outgoing, false, EndReason::Declined("busy day".into()), Outcome::Declined),
            (Outgoing, false, EndReason::Busy, Outcome::Busy),
            (Outgoing, false, EndReason::NoAnswer, Outcome::NotAnswered),
            (Outgoing, false, EndReason::Cancelled, Outcome::NotAnswered),
            (Outgoing, false, EndReason::Blocked, Outcome::Blocked),
            (Incoming, false, EndReason::DoNotDisturb, Outcome::DoNotDisturb),
            (Outgoing, false, EndReason::NotAllowed, Outcome::NotAllowed),
            (Outgoing, false, EndReason::Failed(FailCause::ConnectTimeout), Outcome::Failed),
        ];
        for (direction, answered, reason, expected) in cases {
            assert_eq!(Outcome::of(direction, answered, &reason), expected, "{direction:?} {reason:?}");
        }
        for outcome in ALL {
            assert_eq!(Outcome::parse(outcome.as_str()), Some(outcome));
        }
    }
}
