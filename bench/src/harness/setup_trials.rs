//! Setup reliability: many short calls over one profile's link, counting how many
//! connect and how long each takes from the answer to "active". One call per
//! profile says little about a failure that strikes one call in ten; this does.
//! Then as many calls again with the callee answering by itself
//! (`calls.auto_answer`), timed from the dial to "active", when audio starts.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use voicelink_bench::impairment::Profile;
use voicelink_bench::relay::{Direction, ImpairedLink, LinkConfig, Namespace};
use voicelink_proto::v1::{AnswerRequest, CallState, DialRequest, HangupRequest, SetConfigRequest};

use super::daemon::{DEADLINE, Daemon, DaemonSpec, event_call, shows_peer_online, stall};
use super::report::SetupTrials;
use super::run::{RunSettings, is_state, signed_ms};

/// How long a call may take to become active after the answer before the trial
/// counts it as failed (the daemon's own connect timer is 15 s).
const ACTIVE_DEADLINE: Duration = Duration::from_secs(20);

/// Runs `calls` short calls over `profile`'s impairment.
pub async fn run(settings: &RunSettings, profile: &Profile, calls: usize) -> Result<SetupTrials> {
    let dir = settings.work.join(format!("{}-setup", profile.name));
    std::fs::create_dir_all(&dir)?;
    let ns_caller = Namespace::create("vlb")?;
    let ns_callee = Namespace::create("vlb")?;
    let link = ImpairedLink::start(LinkConfig {
        seed: settings.seed ^ 0x5e7u64,
        ..LinkConfig::new(ns_caller.name(), ns_callee.name())
    })?;
    let (caller_dir, callee_dir) = (dir.join("caller"), dir.join("callee"));
    let audio = |input: &str| format!("audio.input = {input:?}\naudio.output = \"null\"\n");
    let caller_spec = DaemonSpec::new("caller", ns_caller.name(), &caller_dir, audio("tone:440"));
    let callee_spec = DaemonSpec::new("callee", ns_callee.name(), &callee_dir, audio("tone:880"));
    let mut caller = Daemon::start(&settings.voiced, &settings.daemon_log, caller_spec).await?;
    let mut callee = Daemon::start(&settings.voiced, &settings.daemon_log, callee_spec).await?;
    let stalled = stall(&callee, ns_callee.name(), profile.stalled_clients).await?;
    let outcome = trials(settings, profile, &link, &caller, &callee, calls).await;
    drop(stalled);
    let stopped = (caller.stop().await, callee.stop().await);
    stopped.0?;
    stopped.1?;
    outcome
}

async fn trials(
    settings: &RunSettings,
    profile: &Profile,
    link: &ImpairedLink,
    caller: &Daemon,
    callee: &Daemon,
    calls: usize,
) -> Result<SetupTrials> {
    let mut caller_events = caller.events().await?;
    let mut callee_events = callee.events().await?;
    caller_events.seen_or_wait_for("the callee online", DEADLINE, |e| shows_peer_online(e, &callee.device_id)).await?;
    for direction in [Direction::AToB, Direction::BToA] {
        link.set_impairment(direction, profile.each_direction);
    }
    let mut result = SetupTrials { calls, ..SetupTrials::default() };
    for trial in 0..calls {
        let dialed = Instant::now();
        let call_id = dial(caller, callee).await?;
        // The call may end before it rings (refused, unreachable): a result too.
        let rang = tokio::select! {
            rang = callee_events.wait_for("the incoming call", DEADLINE, |e| is_state(e, None, CallState::Incoming)) => rang?,
            ended = caller_events.wait_for("the call to end", DEADLINE, |e| is_state(e, Some(&call_id), CallState::Ended)) => {
                let (_, ended) = ended?;
                let reason = event_call(&ended).map(|c| format!("{:?} ({})", c.end_reason(), c.end_detail)).unwrap_or_default();
                tracing::warn!(profile = profile.name, trial, %reason, "a call ended before it rang");
                result.failed += 1;
                result.failures.push(format!("before ringing: {reason}"));
                continue;
            }
        };
        let (ringing_at, ringing) = rang;
        result.dial_to_ringing_ms.push(signed_ms(ringing_at, dialed));
        let callee_call = event_call(&ringing).map(|c| c.call_id.clone()).unwrap_or_default();
        tokio::time::sleep_until((ringing_at + settings.ring).into()).await;
        let answered = Instant::now();
        let answer = AnswerRequest { call_id: callee_call.clone(), ..AnswerRequest::default() };
        callee.client.clone().answer(answer).await?;
        let (at, first) = caller_events
            .wait_for("the call to become active or end", ACTIVE_DEADLINE, |e| {
                is_state(e, Some(&call_id), CallState::Active) || is_state(e, Some(&call_id), CallState::Ended)
            })
            .await?;
        if is_state(&first, Some(&call_id), CallState::Active) {
            result.answer_to_active_ms.push(signed_ms(at, answered));
            caller.client.clone().hangup(HangupRequest { call_id: call_id.clone() }).await?;
            caller_events
                .wait_for("the call to end", DEADLINE, |e| is_state(e, Some(&call_id), CallState::Ended))
                .await?;
        } else {
            let reason =
                event_call(&first).map(|c| format!("{:?} ({})", c.end_reason(), c.end_detail)).unwrap_or_default();
            tracing::warn!(profile = profile.name, trial, %reason, "a call did not connect");
            result.failed += 1;
            result.failures.push(reason);
        }
        // Both sides over before the next dial (the callee hears the end a trip later).
        callee_events
            .seen_or_wait_for("the callee's call to end", DEADLINE, |e| {
                is_state(e, Some(&callee_call), CallState::Ended)
            })
            .await?;
        tracing::info!(profile = profile.name, trial, failed = result.failed, "setup trial done");
    }

    // The callee answers by itself: dial → active is the whole wait for audio.
    let auto_answer = SetConfigRequest { key: "calls.auto_answer".into(), value: "everyone".into(), unset: false };
    callee.client.clone().set_config(auto_answer).await?;
    for trial in 0..calls {
        let dialed = Instant::now();
        let call_id = dial(caller, callee).await?;
        let (at, first) = caller_events
            .wait_for("the call to become active or end", ACTIVE_DEADLINE, |e| {
                is_state(e, Some(&call_id), CallState::Active) || is_state(e, Some(&call_id), CallState::Ended)
            })
            .await?;
        let answered = is_state(&first, Some(&call_id), CallState::Active);
        if answered {
            result.auto_answer_dial_to_active_ms.push(signed_ms(at, dialed));
            caller.client.clone().hangup(HangupRequest { call_id: call_id.clone() }).await?;
        } else {
            let reason =
                event_call(&first).map(|c| format!("{:?} ({})", c.end_reason(), c.end_detail)).unwrap_or_default();
            tracing::warn!(profile = profile.name, trial, %reason, "an auto-answered call did not connect");
            result.auto_answer_failed += 1;
        }
        caller_events
            .seen_or_wait_for("the call to end", DEADLINE, |e| is_state(e, Some(&call_id), CallState::Ended))
            .await?;
        // A call that failed may never have reached the callee: then there is
        // nothing to wait for, and no reason to give up the profile.
        let callee_ended = |e: &_| is_state(e, Some(&call_id), CallState::Ended);
        let wait = if answered { DEADLINE } else { Duration::from_secs(5) };
        if let Err(error) = callee_events.seen_or_wait_for("the callee's call to end", wait, callee_ended).await
            && answered
        {
            return Err(error);
        }
    }
    Ok(result)
}

/// Dials the callee; returns the call's ID at the caller.
pub(super) async fn dial(caller: &Daemon, callee: &Daemon) -> Result<String> {
    let call = caller
        .client
        .clone()
        .dial(DialRequest { target: callee.device_id.clone(), ..DialRequest::default() })
        .await?
        .into_inner()
        .call
        .ok_or_else(|| anyhow!("Dial returned no call"))?;
    Ok(call.call_id)
}
