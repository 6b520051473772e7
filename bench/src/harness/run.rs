//! One profile: two namespaces joined by the impaired link, a daemon in each, one
//! call, and everything measured about it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::mpsc;
use voicelink_bench::analysis;
use voicelink_bench::impairment::{Loss, Profile};
use voicelink_bench::relay::{Direction, ImpairedLink, LinkConfig, Namespace};
use voicelink_proto::Client;
use voicelink_proto::v1::{AnswerRequest, CallState, CallStats, DialRequest, Event, HangupRequest, WatchStatsRequest};

use super::daemon::{DEADLINE, Daemon, DaemonSpec, event_call, peer_online, proc_sample, shows_peer_online, stall};
use super::report::{
    Applied, CalleeEnd, DirectionLoss, Latency, Outcome, PeerInOutage, ProcessUse, ProfileResult, Reported, SideStats,
};
use super::speech::{self, CALL_RATE, Material};

/// Settings shared by every profile.
#[derive(Clone)]
pub struct RunSettings {
    pub voiced: PathBuf,
    pub python: PathBuf,
    pub pesq_script: PathBuf,
    pub work: PathBuf,
    pub seed: u64,
    pub call: Duration,
    pub idle: Duration,
    /// How long the callee rings before the bench answers.
    pub ring: Duration,
    /// The daemons' `log_level`.
    pub daemon_log: String,
}

/// Runs one profile; errors only for failures of the bench itself (a daemon that
/// does not start, a namespace that cannot be made). A call that fails is a result.
pub async fn run_profile(settings: &RunSettings, material: &Material, profile: &Profile) -> Result<ProfileResult> {
    let dir = settings.work.join(profile.name);
    std::fs::create_dir_all(&dir)?;
    let mut result = ProfileResult {
        name: profile.name.into(),
        description: profile.description.into(),
        applied: applied(profile),
        ..ProfileResult::default()
    };

    // Declared before the link and the daemons, so they are dropped after them.
    let ns_caller = Namespace::create("vlb")?;
    let ns_callee = Namespace::create("vlb")?;
    // Clean while the daemons start and find each other; the profile applies from the dial.
    let link =
        ImpairedLink::start(LinkConfig { seed: settings.seed, ..LinkConfig::new(ns_caller.name(), ns_callee.name()) })?;

    let caller_heard = dir.join("caller-heard.wav");
    let callee_heard = dir.join("callee-heard.wav");
    let mut caller = Daemon::start(
        &settings.voiced,
        &settings.daemon_log,
        DaemonSpec::new("caller", ns_caller.name(), &dir.join("caller"), "audio.loop_files = false\n".into()),
    )
    .await?;
    let mut callee = Daemon::start(
        &settings.voiced,
        &settings.daemon_log,
        DaemonSpec::echo(ns_callee.name(), &dir.join("callee"), &format!("file:{}", callee_heard.display())),
    )
    .await?;
    let stalled = stall(&callee, ns_callee.name(), profile.stalled_clients).await?;
    let outcome = call(settings, material, profile, &link, &caller, &callee, &caller_heard, &mut result).await;
    drop(stalled);
    // Stopped before the analysis: after SIGTERM the recordings are complete.
    let stopped = (caller.stop().await, callee.stop().await);
    let timeline = match outcome {
        Ok(timeline) => timeline,
        Err(e) => {
            for daemon in [&caller, &callee] {
                let log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                tracing::warn!(
                    "{} log (last lines):\n{}",
                    daemon.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            result.notes.push(format!("the call could not be measured: {e:#}"));
            result.outcome.end_reason = "bench error".into();
            return Ok(result);
        }
    };
    stopped.0.context("stop the caller")?;
    stopped.1.context("stop the callee")?;
    let counters = link.counters();
    result.loss.caller_to_callee = DirectionLoss::new(counters.a_to_b.rtp_forwarded, counters.a_to_b.rtp_dropped);
    result.loss.callee_to_caller = DirectionLoss::new(counters.b_to_a.rtp_forwarded, counters.b_to_a.rtp_dropped);
    drop(link);
    if let Some(timeline) = timeline {
        if let Some(first) = counters.a_to_b.first_rtp_forwarded {
            result.setup.answer_to_first_packet_ms = Some(signed_ms(first, timeline.answered));
        }
        analyse(settings, material, &timeline, &caller_heard, &callee_heard, &dir, &mut result);
    }
    Ok(result)
}

/// Instants the analysis needs.
struct Timeline {
    /// When the bench called Answer on the callee.
    answered: Instant,
    callee_ended: Option<Instant>,
}

fn applied(profile: &Profile) -> Applied {
    let i = profile.each_direction;
    let loss_model = match i.loss {
        Loss::None => "none".into(),
        Loss::Random { .. } => "random".into(),
        Loss::GilbertElliott { p_good_to_bad, p_bad_to_good, loss_in_good, loss_in_bad } => format!(
            "Gilbert-Elliott (p_gb {p_good_to_bad}, p_bg {p_bad_to_good}, loss good {loss_in_good}, bad {loss_in_bad})"
        ),
    };
    let delay = i.delay.as_secs_f64() * 1000.0;
    let jitter = i.jitter.as_secs_f64() * 1000.0;
    Applied {
        delay_ms_each_way: delay,
        jitter_ms_each_way: jitter,
        loss_model,
        loss_each_way: i.loss.average(),
        added_rtt_ms: 2.0 * delay,
        expected_rfc3550_jitter_ms: 2.0 * jitter / 3.0,
        outage_after_s: profile.outage.map(|o| o.after.as_secs_f64()),
        outage_length_s: profile.outage.map(|o| o.length.as_secs_f64()),
    }
}

/// What the caller's peer list showed of the callee from the time the link went
/// `down` until the call ended: whether it went offline, and when it was back
/// online, in ms after the link was `back`.
fn peer_through_outage(seen: &[(Instant, Event)], callee: &str, down: Instant, back: Instant) -> PeerInOutage {
    let mut shown =
        seen.iter().filter(|(at, _)| *at >= down).filter_map(|(at, e)| Some((*at, peer_online(e, callee)?)));
    if !shown.any(|(_, online)| !online) {
        return PeerInOutage { went_offline: false, back_online_after_ms: None };
    }
    let back_online = shown.find(|(_, online)| *online).map(|(at, _)| signed_ms(at, back));
    PeerInOutage { went_offline: true, back_online_after_ms: back_online }
}

pub(super) fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(d) => d.as_secs_f64() * 1000.0,
        None => -(earlier - later).as_secs_f64() * 1000.0,
    }
}

pub(super) fn is_state(event: &voicelink_proto::v1::Event, call_id: Option<&str>, state: CallState) -> bool {
    event_call(event).is_some_and(|c| call_id.is_none_or(|id| c.call_id == id) && c.state == state as i32)
}

/// The call itself, from discovery to hang-up.
#[allow(clippy::too_many_arguments)]
async fn call(
    settings: &RunSettings,
    material: &Material,
    profile: &Profile,
    link: &ImpairedLink,
    caller: &Daemon,
    callee: &Daemon,
    caller_heard: &Path,
    result: &mut ProfileResult,
) -> Result<Option<Timeline>> {
    let mut caller_events = caller.events().await?;
    let mut callee_events = callee.events().await?;
    caller_events.seen_or_wait_for("the callee online", DEADLINE, |e| shows_peer_online(e, &callee.device_id)).await?;

    // Idle: both daemons up and discovered, no call.
    let idle_start = [proc_sample(caller.pid())?, proc_sample(callee.pid())?];
    tokio::time::sleep(settings.idle).await;
    let idle_end = [proc_sample(caller.pid())?, proc_sample(callee.pid())?];
    for (i, usage) in [&mut result.resources.caller, &mut result.resources.callee].into_iter().enumerate() {
        *usage = ProcessUse {
            cpu_idle_percent: Some(cpu_percent(&idle_start[i], &idle_end[i])),
            peak_rss_idle_kib: Some(idle_end[i].peak_rss_kib),
            ..ProcessUse::default()
        };
    }

    for direction in [Direction::AToB, Direction::BToA] {
        link.set_impairment(direction, profile.each_direction);
    }
    let dialed = Instant::now();
    let call = caller
        .client
        .clone()
        .dial(DialRequest {
            target: callee.device_id.clone(),
            audio_input: format!("file:{}", material.call_input.display()),
            audio_output: format!("file:{}", caller_heard.display()),
        })
        .await?
        .into_inner()
        .call
        .ok_or_else(|| anyhow!("Dial returned no call"))?;
    let call_id = call.call_id;

    // The callee rings; the bench answers after `ring`, as a person would. While it
    // rings, the media path is being negotiated (DESIGN.md promise 2).
    let (ringing_at, ringing) =
        callee_events.wait_for("the incoming call", DEADLINE, |e| is_state(e, None, CallState::Incoming)).await?;
    result.setup.dial_to_ringing_ms = Some(signed_ms(ringing_at, dialed));
    let callee_call_id = event_call(&ringing).map(|c| c.call_id.clone()).unwrap_or_default();
    tokio::time::sleep_until((ringing_at + settings.ring).into()).await;
    let answered = Instant::now();
    callee.client.clone().answer(AnswerRequest { call_id: callee_call_id.clone(), ..AnswerRequest::default() }).await?;
    let (caller_active_at, caller_first) = caller_events
        .wait_for("the caller's call to become active", DEADLINE, |e| {
            is_state(e, Some(&call_id), CallState::Active) || is_state(e, Some(&call_id), CallState::Ended)
        })
        .await?;
    if !is_state(&caller_first, Some(&call_id), CallState::Active) {
        // A result, not a bench failure: the call did not survive its setup.
        let reason =
            event_call(&caller_first).map(|c| format!("{:?} ({})", c.end_reason(), c.end_detail)).unwrap_or_default();
        let after = signed_ms(caller_active_at, answered) / 1000.0;
        result.notes.push(format!("the call failed during setup, {after:.1} s after the answer: {reason}"));
        result.outcome = Outcome { survived: false, end_reason: reason, ..Outcome::default() };
        return Ok(None);
    }
    result.setup.dial_to_active_ms = Some(signed_ms(caller_active_at, dialed));
    result.setup.answer_to_active_ms = Some(signed_ms(caller_active_at, answered));

    let caller_stats = spawn_stats(caller.client.clone(), call_id.clone());
    let callee_stats = spawn_stats(callee.client.clone(), callee_call_id);
    let call_start = [proc_sample(caller.pid())?, proc_sample(callee.pid())?];

    // The outage, if any, then the rest of the call; the call may end by itself.
    // A call with an outage lasts at least until 5 s after the link is back.
    let outage_end = profile.outage.map(|o| o.after + o.length + Duration::from_secs(5));
    let hang_up_at = caller_active_at + outage_end.map_or(settings.call, |end| end.max(settings.call));
    let call_limit = hang_up_at.saturating_duration_since(caller_active_at) + DEADLINE;
    let mut audio_back = None;
    let mut killed_at = None;
    let ended_early = async {
        // RTP delivered to the callee when the link went down.
        let mut at_outage = None;
        if let Some(outage) = profile.outage {
            let at = caller_active_at + outage.after;
            tokio::select! {
                () = tokio::time::sleep_until(at.into()) => {}
                ended = caller_events.wait_for("the call to end", call_limit, |e| is_state(e, Some(&call_id), CallState::Ended)) => return (Some(ended), at_outage),
            }
            link.go_down_for(outage.length);
            let before = link.counters().a_to_b.rtp_forwarded;
            at_outage = Some(before);
            // How long after the link returns the callee hears the caller again.
            let back_at = at + outage.length;
            let heard_again = async {
                tokio::time::sleep_until(back_at.into()).await;
                while link.is_down() || link.counters().a_to_b.rtp_forwarded <= before {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                signed_ms(Instant::now(), back_at)
            };
            tokio::select! {
                ms = heard_again => audio_back = Some(ms),
                ended = caller_events.wait_for("the call to end", call_limit, |e| is_state(e, Some(&call_id), CallState::Ended)) => return (Some(ended), at_outage),
            }
        }
        if let Some(after) = profile.kill_callee_after {
            tokio::select! {
                () = tokio::time::sleep_until((caller_active_at + after).into()) => {}
                ended = caller_events.wait_for("the call to end", call_limit, |e| is_state(e, Some(&call_id), CallState::Ended)) => return (Some(ended), at_outage),
            }
            let pid = nix::unistd::Pid::from_raw(callee.pid());
            if let Err(error) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
                tracing::warn!(%error, "cannot kill the callee");
            }
            killed_at = Some(Instant::now());
        }
        tokio::select! {
            () = tokio::time::sleep_until(hang_up_at.into()) => (None, at_outage),
            ended = caller_events.wait_for("the call to end", call_limit, |e| is_state(e, Some(&call_id), CallState::Ended)) => (Some(ended), at_outage),
        }
    };
    let (ended_early, at_outage) = ended_early.await;
    let call_end = [proc_sample(caller.pid())?, proc_sample(callee.pid())?];
    if let Some(before) = at_outage {
        // Nothing is delivered while the link is down (not even frames delayed
        // into that time), so any RTP delivered since arrived after it came back.
        result.outcome.audio_after_outage = Some(!link.is_down() && link.counters().a_to_b.rtp_forwarded > before);
        result.outcome.audio_back_after_ms = audio_back;
    }
    if let (Some(outage), Some(_)) = (profile.outage, at_outage) {
        let down = caller_active_at + outage.after;
        result.outcome.peer_in_outage =
            Some(peer_through_outage(&caller_events.seen, &callee.device_id, down, down + outage.length));
    }

    let mut hung_up_at = None;
    let caller_ended = match ended_early {
        Some(ended) => {
            result.outcome.survived = false;
            ended?
        }
        None => {
            result.outcome.survived = true;
            hung_up_at = Some(Instant::now());
            caller.client.clone().hangup(HangupRequest { call_id: call_id.clone() }).await?;
            caller_events
                .wait_for("the caller's call to end", DEADLINE, |e| is_state(e, Some(&call_id), CallState::Ended))
                .await?
        }
    };
    if let Some(call) = event_call(&caller_ended.1) {
        result.outcome.end_reason = format!("{:?}", call.end_reason());
        if !call.end_detail.is_empty() {
            result.outcome.end_reason.push_str(&format!(" ({})", call.end_detail));
        }
    }
    if let Some(killed) = killed_at {
        result.outcome.ended_after_kill_ms = Some(signed_ms(caller_ended.0, killed));
    }
    result.outcome.ended_after_s = Some(signed_ms(caller_ended.0, caller_active_at) / 1000.0);
    let callee_ended = callee_events
        .seen_or_wait_for("the callee's call to end", DEADLINE, |e| is_state(e, None, CallState::Ended))
        .await;
    if let (Some(hung_up), Some(_), Ok((at, event))) = (hung_up_at, at_outage, &callee_ended) {
        // Whether the hang-up still reached the callee through the signaling
        // connection the outage stalled, and when.
        result.outcome.callee_after_hang_up = Some(CalleeEnd {
            after_ms: signed_ms(*at, hung_up),
            reason: event_call(event).map(|c| format!("{:?}", c.end_reason())).unwrap_or_default(),
        });
    }
    let callee_ended = callee_ended.map(|(at, _)| at).ok();

    for (i, usage) in [&mut result.resources.caller, &mut result.resources.callee].into_iter().enumerate() {
        usage.cpu_call_percent = Some(cpu_percent(&call_start[i], &call_end[i]));
        usage.peak_rss_call_kib = Some(call_end[i].peak_rss_kib);
    }
    result.reported = reported(caller_stats, callee_stats).await;
    Ok(Some(Timeline { answered, callee_ended }))
}

pub(super) fn cpu_percent(start: &super::daemon::ProcSample, end: &super::daemon::ProcSample) -> f64 {
    let wall = end.at.saturating_duration_since(start.at).as_secs_f64();
    if wall == 0.0 { 0.0 } else { end.cpu.saturating_sub(start.cpu).as_secs_f64() / wall * 100.0 }
}

/// What a stats stream gave.
pub(super) enum StatsOutcome {
    Samples(Vec<CallStats>),
    Unavailable(String),
}

/// Follows WatchStats for one call until it ends; the samples arrive on the channel.
pub(super) fn spawn_stats(mut client: Client, call_id: String) -> mpsc::UnboundedReceiver<StatsOutcome> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let request = WatchStatsRequest { call_id, interval: Some(prost_types::Duration { seconds: 1, nanos: 0 }) };
        let mut stream = match client.watch_stats(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                let _ = tx.send(StatsOutcome::Unavailable(format!(
                    "WatchStats: {:?}: {}",
                    status.code(),
                    status.message()
                )));
                return;
            }
        };
        let mut samples = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(sample)) => samples.push(sample),
                Ok(None) => break,
                Err(status) if samples.is_empty() => {
                    let _ = tx.send(StatsOutcome::Unavailable(format!(
                        "WatchStats: {:?}: {}",
                        status.code(),
                        status.message()
                    )));
                    return;
                }
                Err(status) => {
                    tracing::warn!("the stats stream failed: {status}");
                    break;
                }
            }
        }
        let _ = tx.send(StatsOutcome::Samples(samples));
    });
    rx
}

pub(super) async fn reported(
    mut caller: mpsc::UnboundedReceiver<StatsOutcome>,
    mut callee: mpsc::UnboundedReceiver<StatsOutcome>,
) -> Reported {
    // A stream for one call ends after its final sample; a guard for one that does not.
    let limit = Duration::from_secs(10);
    let mut result = Reported::default();
    for (rx, slot) in [(&mut caller, &mut result.caller), (&mut callee, &mut result.callee)] {
        match tokio::time::timeout(limit, rx.recv()).await {
            Ok(Some(StatsOutcome::Samples(samples))) if !samples.is_empty() => *slot = Some(summarize(&samples)),
            Ok(Some(StatsOutcome::Samples(_))) => {
                result.unavailable.get_or_insert_with(|| "the stats stream sent no sample".into());
            }
            Ok(Some(StatsOutcome::Unavailable(why))) => {
                result.unavailable.get_or_insert(why);
            }
            Ok(None) | Err(_) => {
                result.unavailable.get_or_insert_with(|| "the stats stream did not end after the call".into());
            }
        }
    }
    result
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

/// The last sample taken while the call was up (the summary sample after it ended
/// has the final counts), with medians of the noisy values.
fn summarize(samples: &[CallStats]) -> SideStats {
    let live: Vec<&CallStats> = samples.iter().filter(|s| s.summary.is_none()).collect();
    let last_live = live.last().copied().unwrap_or(&samples[samples.len() - 1]);
    let last = &samples[samples.len() - 1];
    let fraction = |lost: i64, received: u64| {
        let total = received as f64 + lost.max(0) as f64;
        (total > 0.0).then(|| lost.max(0) as f64 / total)
    };
    SideStats {
        samples: samples.len(),
        packets_sent: last.packets_sent,
        packets_received: last.packets_received,
        packets_lost: last.packets_lost,
        loss_fraction: fraction(last.packets_lost, last.packets_received),
        remote_packets_lost: last.remote_packets_lost,
        // The peer lost these of what we sent.
        remote_loss_fraction: {
            let lost = last.remote_packets_lost.max(0) as f64;
            (last.packets_sent > 0).then(|| lost / last.packets_sent as f64)
        },
        jitter_ms: last_live.jitter_ms,
        jitter_ms_median: median(live.iter().map(|s| s.jitter_ms).filter(|&j| j > 0.0).collect()),
        rtt_ms: last_live.round_trip_time_ms,
        rtt_ms_median: median(live.iter().map(|s| s.round_trip_time_ms).filter(|&r| r > 0.0).collect()),
        rtt_source: last_live.round_trip_time_source.clone(),
        jitter_buffer_delay_ms: last_live.jitter_buffer_delay_ms,
        concealment_events: last.concealment_events,
        concealed_samples: last.concealed_samples,
        packets_recovered_fec: last.packets_recovered_fec,
        packets_repaired: last.packets_repaired,
        // Received counts the repaired packets already.
        loss_before_repair_fraction: fraction(last.packets_lost, last.packets_received).map(|_| {
            let missing = last.packets_lost.max(0) as f64 + last.packets_repaired as f64;
            missing / (last.packets_received as f64 + last.packets_lost.max(0) as f64)
        }),
        packets_resent: last.packets_resent,
        late_packets: last.late_packets,
        mos: last_live.mos,
        quality: last_live.quality.clone(),
    }
}

/// Latency, first audio and PESQ from the recordings.
fn analyse(
    settings: &RunSettings,
    material: &Material,
    timeline: &Timeline,
    caller_heard: &Path,
    callee_heard: &Path,
    dir: &Path,
    result: &mut ProfileResult,
) {
    let rate = f64::from(CALL_RATE);
    let speech = material.speech();

    // Mouth-to-ear: the caller's input and its recording share a time line (both
    // start when its media connects), so the lag of the speech in the recording,
    // less where it sits in the input, is the echo's round trip.
    match speech::read_wav(caller_heard) {
        Ok(heard) => match analysis::align(speech, &heard, heard.len()) {
            Some(found) if found.correlation >= 0.2 => {
                let round_trip = (found.lag as f64 - material.speech_offset as f64) / rate * 1000.0;
                result.latency = Latency {
                    echo_round_trip_ms: Some(round_trip),
                    one_way_ms: Some(round_trip / 2.0),
                    correlation: Some(found.correlation),
                };
            }
            found => result.notes.push(format!(
                "the echo was not found in the caller's recording (best correlation {})",
                found.map_or("none".into(), |f| format!("{:.2}", f.correlation))
            )),
        },
        Err(e) => result.notes.push(format!("no caller recording: {e:#}")),
    }

    let heard = match speech::read_wav(callee_heard) {
        Ok(heard) => heard,
        Err(e) => {
            result.notes.push(format!("no callee recording: {e:#}"));
            return;
        }
    };
    // First audio: the recording's origin is its end minus its length.
    if let (Some(active), Some(ended)) = (Some(timeline.answered), timeline.callee_ended) {
        match analysis::first_sound(&heard, (rate * 0.005) as usize, -50.0) {
            Some(index) => {
                let origin_to_end = Duration::from_secs_f64(heard.len() as f64 / rate);
                let first = ended
                    .checked_sub(origin_to_end)
                    .map(|origin| origin + Duration::from_secs_f64(index as f64 / rate));
                result.setup.answer_to_first_audio_ms = first.map(|first| signed_ms(first, active));
            }
            None => result.notes.push("the callee heard nothing".into()),
        }
    }

    // PESQ: the speech as the callee heard it, aligned, against the reference.
    let Some(found) = analysis::align(speech, &heard, heard.len()) else {
        result.notes.push("the speech was not found in the callee's recording".into());
        return;
    };
    let mut degraded: Vec<f32> = heard.iter().skip(found.lag).take(speech.len()).copied().collect();
    degraded.resize(speech.len(), 0.0);
    let degraded_48k = dir.join("callee-speech-48k.wav");
    let degraded_16k = dir.join("callee-speech-16k.wav");
    let score = speech::write_wav(&degraded_48k, CALL_RATE, &degraded)
        .and_then(|()| speech::resample(&degraded_48k, &degraded_16k, 16_000))
        .and_then(|()| pesq(settings, &material.reference_16k, &degraded_16k));
    match score {
        Ok(score) => result.pesq_wb = Some(score),
        Err(e) => result.notes.push(format!("no PESQ score: {e:#}")),
    }
}

/// Runs the PESQ script in the bench venv.
pub(crate) fn pesq(settings: &RunSettings, reference: &Path, degraded: &Path) -> Result<f64> {
    let output = std::process::Command::new(&settings.python)
        .arg(&settings.pesq_script)
        .arg(reference)
        .arg(degraded)
        .output()
        .with_context(|| format!("run {} (scripts/setup.sh --bench makes it)", settings.python.display()))?;
    if !output.status.success() {
        bail!("{}", String::from_utf8_lossy(&output.stderr).trim());
    }
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).context("the PESQ script's output")?;
    match answer["pesq_wb"].as_f64() {
        Some(score) => Ok(score),
        None => bail!("{}", answer["error"].as_str().unwrap_or("no score")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use voicelink_proto::v1::{Peer, PeerChanged, event};

    fn changed(device_id: &str, online: bool) -> Event {
        let peer = Peer { device_id: device_id.into(), online, ..Peer::default() };
        Event { kind: Some(event::Kind::PeerChanged(PeerChanged { peer: Some(peer) })), ..Event::default() }
    }

    #[test]
    fn an_outage_reports_whether_the_peer_showed_offline_and_when_it_was_back() {
        let down = Instant::now();
        let at = |ms: u64| down + Duration::from_millis(ms);
        let back = at(3000);
        let seen = vec![
            (at(0), changed("bob", true)),
            (at(1000), changed("carol", false)),
            (at(2500), changed("bob", false)),
            (at(3400), changed("bob", true)),
        ];
        let shown = peer_through_outage(&seen, "bob", down, back);
        assert!(shown.went_offline);
        assert_eq!(shown.back_online_after_ms.map(f64::round), Some(400.0));

        let quiet = peer_through_outage(&seen[..2], "bob", down, back);
        assert!(!quiet.went_offline && quiet.back_online_after_ms.is_none());
        let still_offline = peer_through_outage(&seen[..3], "bob", down, back);
        assert!(still_offline.went_offline && still_offline.back_online_after_ms.is_none());
    }
}
