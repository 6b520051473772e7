//! Mouth-to-ear through sound devices. The files the other profiles use have no
//! sound-card buffering; here the caller's microphone and speaker are real
//! devices (ALSA → a user-mode PulseAudio) and the callee echoes what it hears.
//! Both devices are one channel of a two-channel null sink, the "room": the
//! microphone hears its left channel, the speaker plays into its right. The bench
//! plays the speech into the left and records the room, so the speech and, a
//! round trip later, its echo lie on one time line, sample for sample, and
//! nothing the speaker plays reaches the microphone.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use voicelink_bench::analysis;
use voicelink_bench::relay::{ImpairedLink, LinkConfig, Namespace};
use voicelink_bench::sound_server::SoundServer;
use voicelink_proto::v1::{CallState, HangupRequest, ListCallsRequest};

use super::daemon::{DEADLINE, Daemon, DaemonSpec, shows_peer_online};
use super::report::Reported;
use super::run::{RunSettings, is_state, reported, spawn_stats};
use super::setup_trials::dial;
use super::speech::{self, CALL_RATE, Material};

/// How long the call runs before the speech: the echo canceller converges and
/// the jitter buffers settle.
const SETTLE: Duration = Duration::from_secs(2);
/// Recorded after the speech, for its echo.
const TAIL: Duration = Duration::from_secs(2);
/// The room: a two-channel null sink at the call's rate (nothing resampled).
const ROOM: &str = "room";
/// The envelopes' resolution: 1 ms.
const BLOCK: usize = CALL_RATE as usize / 1000;
/// The speech is measured in windows this long (in blocks): the round trip
/// may change during the call.
const WINDOW: usize = 2_000;
/// The longest round trip looked for, in blocks.
const MAX_ROUND_TRIP: usize = 1_000;
/// Below this envelope correlation a window's echo was not found.
const MIN_CORRELATION: f64 = 0.5;

/// What was measured.
#[derive(Debug, Serialize, Default)]
pub struct DeviceLatency {
    /// From the speech played into the caller's microphone to its echo out of
    /// the caller's speaker: the median over the windows.
    pub round_trip_ms: Option<f64>,
    /// Each 2 s window of the speech: when it started (s after the speech's
    /// start), its round trip (ms) and the envelopes' correlation.
    pub windows: Vec<(f64, f64, f64)>,
    /// What the caller's and the callee's jitter buffers held at the end of
    /// the call (ms): part of the round trip that is not the devices'.
    pub jitter_buffers_ms: Option<(f64, f64)>,
    /// Why something is missing.
    pub notes: Vec<String>,
    /// The round trip of a second call, the caller on 10 ms frames
    /// (`calls.frame_ms = 10`): what the frame length costs through devices.
    pub round_trip_10ms_frames_ms: Option<f64>,
}

/// One call on a clean link, the caller on sound devices, and one more with
/// 10 ms frames. What went wrong is a note: the rest of the bench is still
/// worth its report.
pub async fn run(settings: &RunSettings, material: &Material) -> DeviceLatency {
    let server = match SoundServer::start().and_then(|server| furnish(&server).map(|()| server)) {
        Ok(server) => server,
        Err(reason) => return DeviceLatency { notes: vec![reason], ..DeviceLatency::default() },
    };
    let mut measured = measure_call(settings, material, &server, 20).await.unwrap_or_else(|e| {
        tracing::warn!(error = %format!("{e:#}"), "mouth-to-ear through devices not measured");
        DeviceLatency { notes: vec![format!("{e:#}")], ..DeviceLatency::default() }
    });
    match measure_call(settings, material, &server, 10).await {
        Ok(ten) => {
            measured.round_trip_10ms_frames_ms = ten.round_trip_ms;
            measured.notes.extend(ten.notes.into_iter().map(|note| format!("with 10 ms frames: {note}")));
        }
        Err(e) => measured.notes.push(format!("with 10 ms frames: {e:#}")),
    }
    measured
}

async fn measure_call(
    settings: &RunSettings,
    material: &Material,
    server: &SoundServer,
    frame_ms: u32,
) -> Result<DeviceLatency> {
    let dir = settings.work.join(format!("devices-{frame_ms}ms"));
    let speech_samples = material.speech();
    // The speech on the left (the microphone's) channel only.
    let speech_file = dir.join("speech-left.wav");
    std::fs::create_dir_all(&dir)?;
    let left: Vec<f32> = speech_samples.iter().flat_map(|&s| [s, 0.0]).collect();
    speech::write_wav_channels(&speech_file, CALL_RATE, 2, &left)?;

    let ns_caller = Namespace::create("vld")?;
    let ns_callee = Namespace::create("vld")?;
    let _link = ImpairedLink::start(LinkConfig::new(ns_caller.name(), ns_callee.name()))?;
    let mut caller = Daemon::start(
        &settings.voiced,
        &settings.daemon_log,
        DaemonSpec {
            name: "caller",
            netns: ns_caller.name(),
            dir: &dir.join("caller"),
            // The voice processing adds no delay, and nothing the speaker plays
            // reaches this microphone; but the echo canceller, whose reference
            // is the speaker, would see the speech come back as an echo that
            // leads it by a round trip and garble it.
            extra_config: format!(
                "audio.echo_cancellation = false\naudio.noise_suppression = false\naudio.gain_control = false\n\
                 calls.frame_ms = {frame_ms}\n"
            ),
            sound_server: Some(server.address()),
        },
    )
    .await?;
    let callee_dir = dir.join("callee");
    let mut callee_spec = DaemonSpec::echo(ns_callee.name(), &callee_dir, "null");
    callee_spec.extra_config.push_str("calls.auto_answer = true\n");
    let mut callee = Daemon::start(&settings.voiced, &settings.daemon_log, callee_spec).await?;
    let recording = call(server, &caller, &callee, &speech_file, speech_samples.len()).await;
    let stopped = (caller.stop().await, callee.stop().await);
    let ((mouth, ear), reported) = recording?;
    stopped.0.context("stop the caller")?;
    stopped.1.context("stop the callee")?;
    speech::write_wav(&dir.join("mouth.wav"), CALL_RATE, &mouth)?;
    speech::write_wav(&dir.join("ear.wav"), CALL_RATE, &ear)?;
    let mut measured = measure(speech_samples, &mouth, &ear);
    match (&reported.caller, &reported.callee) {
        (Some(caller), Some(callee)) => {
            measured.jitter_buffers_ms = Some((caller.jitter_buffer_delay_ms, callee.jitter_buffer_delay_ms));
        }
        _ => measured.notes.push(reported.unavailable.unwrap_or_else(|| "no stats from one side".into())),
    }
    Ok(measured)
}

/// The room and the two devices on it, the defaults.
fn furnish(server: &SoundServer) -> Result<(), String> {
    let rate = format!("rate={CALL_RATE}");
    server.pactl(&["load-module", "module-null-sink", &format!("sink_name={ROOM}"), "channels=2", &rate])?;
    let master = format!("master={ROOM}");
    let mono = "channel_map=mono";
    server.pactl(&[
        "load-module",
        "module-remap-sink",
        "sink_name=speaker",
        &master,
        "channels=1",
        "master_channel_map=front-right",
        mono,
    ])?;
    let monitor = format!("master={ROOM}.monitor");
    server.pactl(&[
        "load-module",
        "module-remap-source",
        "source_name=mic",
        &monitor,
        "channels=1",
        "master_channel_map=front-left",
        mono,
    ])?;
    server.pactl(&["set-default-sink", "speaker"])?;
    server.pactl(&["set-default-source", "mic"])
}

/// Dials, plays the speech into the room once the call is active, and returns
/// what the room's two channels played meanwhile (the microphone's, the
/// speaker's), and both sides' stats.
async fn call(
    server: &SoundServer,
    caller: &Daemon,
    callee: &Daemon,
    speech_file: &std::path::Path,
    speech_len: usize,
) -> Result<((Vec<f32>, Vec<f32>), Reported)> {
    let mut events = caller.events().await?;
    events.seen_or_wait_for("the callee online", DEADLINE, |e| shows_peer_online(e, &callee.device_id)).await?;
    let call_id = dial(caller, callee).await?;
    let (_, state) = events
        .wait_for("the call to become active", DEADLINE, |e| {
            is_state(e, Some(&call_id), CallState::Active) || is_state(e, Some(&call_id), CallState::Ended)
        })
        .await?;
    if !is_state(&state, Some(&call_id), CallState::Active) {
        bail!("the call ended before it became active");
    }
    let callee_calls = callee.client.clone().list_calls(ListCallsRequest {}).await?.into_inner().calls;
    let [callee_call] = callee_calls.as_slice() else {
        bail!("the callee has {} calls, not the one it answered", callee_calls.len());
    };
    let callee_call_id = callee_call.call_id.clone();
    let caller_stats = spawn_stats(caller.client.clone(), call_id.clone());
    let callee_stats = spawn_stats(callee.client.clone(), callee_call_id);
    let seconds = SETTLE + Duration::from_secs_f64(speech_len as f64 / f64::from(CALL_RATE)) + TAIL;
    let address = server.address();
    let recorder = tokio::task::spawn_blocking(move || record(&address, seconds));
    tokio::time::sleep(SETTLE).await;
    let played = tokio::process::Command::new("paplay")
        .args(["--server", &server.address(), &format!("--device={ROOM}")])
        .arg(speech_file)
        .status()
        .await
        .context("run paplay (pulseaudio-utils)")?;
    if !played.success() {
        bail!("paplay failed: {played}");
    }
    let recording = recorder.await??;
    caller.client.clone().hangup(HangupRequest { call_id }).await?;
    Ok((recording, reported(caller_stats, callee_stats).await))
}

/// What the room plays over the next `length`: its left and right channels.
fn record(server: &str, length: Duration) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut parec = Command::new("parec")
        .args(["--server", server, &format!("--device={ROOM}.monitor")])
        .args(["--format=s16le", &format!("--rate={CALL_RATE}"), "--channels=2", "--raw"])
        .stdout(Stdio::piped())
        .spawn()
        .context("run parec (pulseaudio-utils)")?;
    let mut bytes = vec![0u8; (length.as_secs_f64() * f64::from(CALL_RATE)) as usize * 4];
    let read = parec.stdout.take().ok_or_else(|| anyhow!("parec has no output"))?.read_exact(&mut bytes);
    let _ = parec.kill();
    let _ = parec.wait();
    read.context("read what the room played")?;
    let sample = |b: &[u8]| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0;
    Ok(bytes.chunks_exact(4).map(|frame| (sample(&frame[..2]), sample(&frame[2..]))).unzip())
}

/// Finds the speech where the microphone heard it, then each window of it in
/// what the speaker played, by level envelope: the playout is resampled by the
/// clock-drift estimate, which leaves the waveform out of phase within a second
/// (and its polarity means nothing).
fn measure(speech: &[f32], mouth: &[f32], ear: &[f32]) -> DeviceLatency {
    let mut result = DeviceLatency::default();
    let Some(played) = analysis::align(speech, mouth, mouth.len()) else {
        result.notes.push("the speech was not found on the microphone's channel".into());
        return result;
    };
    let (mouth, ear) = (analysis::envelope(mouth, BLOCK), analysis::envelope(ear, BLOCK));
    let start = played.lag / BLOCK;
    let end = (start + speech.len() / BLOCK).min(mouth.len());
    for from in (start..end.saturating_sub(WINDOW / 2)).step_by(WINDOW) {
        let heard = &mouth[from..(from + WINDOW).min(end)];
        let Some(echo) = ear.get(from..).and_then(|ear| analysis::align_envelopes(heard, ear, MAX_ROUND_TRIP)) else {
            continue;
        };
        if echo.correlation >= MIN_CORRELATION {
            result.windows.push(((from - start) as f64 / 1000.0, echo.lag as f64, echo.correlation));
        }
    }
    let mut round_trips: Vec<f64> = result.windows.iter().map(|(_, ms, _)| *ms).collect();
    round_trips.sort_by(f64::total_cmp);
    result.round_trip_ms = round_trips.get(round_trips.len() / 2).copied();
    if result.round_trip_ms.is_none() {
        result.notes.push("no echo of the speech came back".into());
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_round_trip_is_from_the_speech_to_its_echo_window_by_window_and_a_missing_echo_is_said() {
        // Noise in bursts of 62.5 ms, on or off at random, for 6 s, heard at
        // 0.5 s; the echo comes back inverted and quieter, 150 ms later at
        // first and 170 ms from 2 s on.
        let noise = |i: usize| ((i as u32).wrapping_mul(2_654_435_761) >> 16) as f32 / 65_536.0 - 0.5;
        let speech: Vec<f32> =
            (0..288_000).map(|i| if noise(i / 3_000 * 7_919) > 0.0 { noise(i) } else { 0.0 }).collect();
        let mut mouth = vec![0.0; 384_000];
        mouth[24_000..312_000].copy_from_slice(&speech);
        let mut ear = vec![0.0; 384_000];
        for (i, s) in speech.iter().enumerate() {
            let delay = if i < 96_000 { 7_200 } else { 8_160 };
            ear[24_000 + delay + i] = -0.5 * s;
        }
        let found = measure(&speech, &mouth, &ear);
        let round_trips: Vec<f64> = found.windows.iter().map(|(_, ms, _)| *ms).collect();
        assert_eq!(round_trips, [150.0, 170.0, 170.0], "{found:?}");
        assert_eq!(found.round_trip_ms, Some(170.0));
        let found = measure(&speech, &mouth, &vec![0.0; 384_000]);
        assert_eq!(found.round_trip_ms, None);
        assert!(!found.notes.is_empty());
    }
}
