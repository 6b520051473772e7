//! Sound cards, through cpal. Each open device runs its stream on a thread of
//! its own (cpal streams are not `Send` everywhere); the stream's callback only
//! touches a lock-free ring buffer, and the media tasks convert between the
//! device's rate and channels and 48 kHz mono on their side of the ring.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{SampleFormat, SizedSample, StreamConfig};

use super::endpoints::{EchoReference, EndpointError, SAMPLE_RATE, Sink, Source};
use voicelink_core::clock_drift::DriftCorrector;
use voicelink_core::resample::Resampler;

/// Ring capacity, in seconds of audio.
const RING_SECONDS: u32 = 1;
/// Captured audio buffered beyond this is dropped (a clock drifting ahead).
const MAX_CAPTURE_BACKLOG_MS: u32 = 200;
/// The cushion the speaker keeps beyond what the device asks for next: playing
/// (re)starts once this much waits, so the pumps' scheduling jitter does not
/// chop the sound: the device finds a pump frame more than it asks for, so a
/// pump up to a frame late is not heard. It was 40 ms, which cost 20 ms of
/// mouth-to-ear latency.
const PLAYBACK_CUSHION_MS: u32 = 20;
/// Audio waiting for the speaker beyond the device's request: writes stop at
/// this much (a stream that stalls, as one does while it starts, drops what it
/// is given rather than queueing it), and a callback that finds this much cuts
/// it back to the cushion. Without it a device whose clock runs slow, or one
/// that starts late, adds latency without end, and puts the echo out of the echo
/// canceller's reach (about 600 ms). It leaves room, beyond the fill the drift
/// corrector aims at (the cushion and half a period) and a device period, for
/// a pump frame and a late one.
const MAX_PLAYBACK_BACKLOG_MS: u32 = PLAYBACK_CUSHION_MS + DEVICE_PERIOD_MS + 40;
/// What the echo canceller is handed at most in one go: what the device played
/// longer ago is older than any echo it can cancel.
const PLAYED_KEPT_MS: u32 = 200;
/// The period asked of the device; the device's own limits win. A sound
/// server's stream buffers two (cpal's PulseAudio host): at 10 ms, on a busy
/// 2-core machine, its threads missed their turn, the stream underran, the echo
/// path moved and the echo canceller lost the echo in 2 calls of 3; at 20 ms
/// in none of 7. (A 10 ms speaker alone, measured through devices, moved the
/// round trip by up to 50 ms within a call and shortened it by nothing.)
const DEVICE_PERIOD_MS: u32 = 20;

pub use voicelink_core::device_follow::{DeviceInfo, DeviceList};

/// ALSA's `null` device opens but has no clock: its callbacks spin at full CPU.
/// It is not a device anyone means.
fn is_real(name: &str) -> bool {
    !name.eq_ignore_ascii_case("null")
}

/// The device's name on its host: cpal's ID (`alsa:pulse`) without the host.
fn name_of(device: &cpal::Device) -> Option<String> {
    let id = device.id().ok()?.to_string();
    Some(id.split_once(':').map_or(id.clone(), |(_, name)| name.to_owned()))
}

/// The host every device comes from: PulseAudio's (or PipeWire's pulse server)
/// where one runs, else the platform's own. Asked once: asking connects.
fn default_host_id() -> cpal::HostId {
    static HOST: std::sync::OnceLock<cpal::HostId> = std::sync::OnceLock::new();
    *HOST.get_or_init(|| cpal::default_host().id())
}

/// The devices come from a PulseAudio (or PipeWire pulse) server.
#[cfg(target_os = "linux")]
pub fn host_is_pulse() -> bool {
    default_host_id() == cpal::HostId::PulseAudio
}

/// The devices come from bare ALSA.
#[cfg(target_os = "linux")]
pub fn host_is_alsa() -> bool {
    default_host_id() == cpal::HostId::Alsa
}

/// Not on this platform.
#[cfg(not(target_os = "linux"))]
pub fn host_is_alsa() -> bool {
    false
}

fn description_of(device: &cpal::Device) -> String {
    device.description().map(|d| d.name().to_owned()).unwrap_or_default()
}

/// Lists the devices of the default host. Blocking (ALSA probes each device).
pub fn list() -> DeviceList {
    let host = cpal::default_host();
    let default_in = host.default_input_device().and_then(|d| name_of(&d));
    let default_out = host.default_output_device().and_then(|d| name_of(&d));
    let describe = |device: cpal::Device, input: bool| -> Option<DeviceInfo> {
        let name = name_of(&device).filter(|n| is_real(n))?;
        let ranges = if input {
            device.supported_input_configs().map(|r| r.collect::<Vec<_>>())
        } else {
            device.supported_output_configs().map(|r| r.collect())
        };
        let mut sample_rates: Vec<u32> = match ranges {
            Ok(ranges) => ranges.iter().flat_map(|r| [r.min_sample_rate(), r.max_sample_rate()]).collect(),
            // In use (a call holds ALSA's hw: device): still there, its rates unknown.
            Err(error) if error.kind() == cpal::ErrorKind::DeviceBusy => Vec::new(),
            Err(_) => return None,
        };
        sample_rates.sort_unstable();
        sample_rates.dedup();
        let default = if input { &default_in } else { &default_out };
        Some(DeviceInfo {
            is_default: default.as_deref() == Some(name.as_str()),
            description: description_of(&device),
            name,
            sample_rates,
        })
    };
    DeviceList {
        inputs: host.input_devices().map(|d| d.filter_map(|d| describe(d, true)).collect()).unwrap_or_default(),
        outputs: host.output_devices().map(|d| d.filter_map(|d| describe(d, false)).collect()).unwrap_or_default(),
    }
}

fn find(name: Option<&str>, input: bool) -> Result<cpal::Device, EndpointError> {
    let host = cpal::default_host();
    let direction = if input { "capture" } else { "playback" };
    match name {
        None => {
            let device = if input { host.default_input_device() } else { host.default_output_device() };
            device.filter(|d| name_of(d).is_some_and(|n| is_real(&n))).ok_or_else(|| {
                EndpointError::Unavailable(format!("there is no default {direction} device (no sound card?)"))
            })
        }
        Some(wanted) => {
            let devices = if input {
                host.input_devices().map(|d| d.collect::<Vec<_>>())
            } else {
                host.output_devices().map(|d| d.collect())
            };
            let devices =
                devices.map_err(|e| EndpointError::Unavailable(format!("cannot list {direction} devices: {e}")))?;
            let mut names = Vec::new();
            let mut described = Vec::new();
            for device in devices {
                let Some(name) = name_of(&device).filter(|n| is_real(n)) else { continue };
                let id = device.id().map(|id| id.to_string()).unwrap_or_default();
                if name == wanted || id == wanted {
                    return Ok(device);
                }
                if description_of(&device) == wanted {
                    described.push((name.clone(), device));
                }
                names.push(name);
            }
            // A description names a device only when it is the only one so described
            // (ALSA gives hw, plughw, front… of one card the same one).
            match described.len() {
                1 => return Ok(described.remove(0).1),
                0 => {}
                _ => {
                    let candidates: Vec<String> = described.into_iter().map(|(name, _)| name).collect();
                    return Err(EndpointError::Unavailable(format!(
                        "{wanted:?} describes {} {direction} devices; name one: {}",
                        candidates.len(),
                        candidates.join(", ")
                    )));
                }
            }
            Err(EndpointError::Unavailable(format!(
                "no {direction} device is called {wanted:?}; there are: {}",
                if names.is_empty() { "none".into() } else { names.join(", ") }
            )))
        }
    }
}

/// The device's configuration closest to 48 kHz in a format we handle.
fn choose(device: &cpal::Device, input: bool) -> Result<(StreamConfig, SampleFormat), EndpointError> {
    let name = name_of(device).unwrap_or_default();
    let direction = if input { "capture" } else { "playback" };
    // `default` without a sound card or a running sound server lands here.
    let error = |e: String| {
        EndpointError::Unavailable(format!(
            "the {direction} device {name:?} cannot be used (no sound card, or no sound server running?): {e}"
        ))
    };
    let ranges: Vec<cpal::SupportedStreamConfigRange> = if input {
        device.supported_input_configs().map_err(|e| error(e.to_string()))?.collect()
    } else {
        device.supported_output_configs().map_err(|e| error(e.to_string()))?.collect()
    };
    let usable = |format: SampleFormat| matches!(format, SampleFormat::F32 | SampleFormat::I16);
    let best = ranges
        .iter()
        .filter(|r| usable(r.sample_format()))
        .min_by_key(|r| (!r.contains_rate(SAMPLE_RATE), r.channels(), r.sample_format() != SampleFormat::F32))
        .ok_or_else(|| error("no 16-bit or float format".into()))?;
    let rate = if best.contains_rate(SAMPLE_RATE) {
        SAMPLE_RATE
    } else {
        SAMPLE_RATE.clamp(best.min_sample_rate(), best.max_sample_rate())
    };
    let config = best.with_sample_rate(rate);
    let mut stream = config.config();
    // Without this, ALSA's pulse plugin buffers most of a second.
    if let cpal::SupportedBufferSize::Range { min, max } = config.buffer_size() {
        stream.buffer_size = cpal::BufferSize::Fixed((rate * DEVICE_PERIOD_MS / 1000).clamp(*min, *max));
    }
    Ok((stream, config.sample_format()))
}

/// Runs a stream on its own thread until the handle is dropped.
struct StreamThread {
    stop: Option<std_mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl StreamThread {
    fn spawn(build: impl FnOnce() -> Result<cpal::Stream, String> + Send + 'static) -> Result<Self, EndpointError> {
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let (stop, stopped) = std_mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("voicelink-audio".into())
            .spawn(move || {
                let stream = match build().and_then(|s| s.play().map(|()| s).map_err(|e| e.to_string())) {
                    Ok(stream) => stream,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                // Park until the endpoint is dropped; the stream runs meanwhile.
                let _ = stopped.recv();
                drop(stream);
            })
            .map_err(|e| EndpointError::Unavailable(format!("cannot start the audio thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(StreamThread { stop: Some(stop), thread: Some(thread) }),
            Ok(Err(error)) => Err(EndpointError::Unavailable(format!("cannot open the stream: {error}"))),
            Err(_) => Err(EndpointError::Unavailable("the audio thread stopped".into())),
        }
    }
}

impl Drop for StreamThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn to_f32<T: SizedSample + cpal::Sample>(sample: T) -> f32
where
    f32: cpal::FromSample<T>,
{
    cpal::Sample::from_sample(sample)
}

/// Captures from a device.
pub struct Capture {
    ring: rtrb::Consumer<f32>,
    resampler: Resampler,
    converted: std::collections::VecDeque<f32>,
    scratch: Vec<f32>,
    max_backlog: usize,
    max_backlog_48k: usize,
    /// The first frame was read (what came before it was cut).
    started: bool,
    /// The host's name for the device.
    device_name: String,
    _stream: StreamThread,
}

impl Capture {
    /// Opens `name` (the default device when `None`).
    pub fn open(name: Option<&str>) -> Result<Self, EndpointError> {
        let device = find(name, true)?;
        let device_name = name_of(&device).unwrap_or_default();
        let (config, format) = choose(&device, true)?;
        let rate = config.sample_rate;
        let channels = usize::from(config.channels.max(1));
        let (mut producer, consumer) = rtrb::RingBuffer::new((rate * RING_SECONDS) as usize);
        let stream = StreamThread::spawn(move || {
            let error = |e: cpal::Error| tracing::warn!(%e, "capture stream error");
            let result = match format {
                SampleFormat::F32 => device.build_input_stream::<f32, _, _>(
                    config,
                    move |data, _| push_mono(&mut producer, data, channels),
                    error,
                    None,
                ),
                _ => device.build_input_stream::<i16, _, _>(
                    config,
                    move |data, _| push_mono(&mut producer, data, channels),
                    error,
                    None,
                ),
            };
            result.map_err(|e| e.to_string())
        })?;
        Ok(Capture {
            ring: consumer,
            resampler: Resampler::new(rate, SAMPLE_RATE),
            converted: Default::default(),
            scratch: Vec::new(),
            max_backlog: (rate * MAX_CAPTURE_BACKLOG_MS / 1000) as usize,
            max_backlog_48k: (SAMPLE_RATE * MAX_CAPTURE_BACKLOG_MS / 1000) as usize,
            started: false,
            device_name,
            _stream: stream,
        })
    }

    /// The host's name for the device (what `device:NAME` takes).
    pub fn device_name(&self) -> &str {
        &self.device_name
    }
}

/// The audio callback: mix to mono and push; drop what does not fit.
fn push_mono<T>(producer: &mut rtrb::Producer<f32>, data: &[T], channels: usize)
where
    T: SizedSample + cpal::Sample,
    f32: cpal::FromSample<T>,
{
    for frame in data.chunks(channels) {
        let mono = frame.iter().map(|&s| to_f32(s)).sum::<f32>() / channels as f32;
        if producer.push(mono).is_err() {
            break;
        }
    }
}

impl Capture {
    /// Moves what the device delivered into the 48 kHz queue. Latency stays
    /// bounded: what the stream delivered before the call first looked is old
    /// (the call starts on the newest device period), and a backlog beyond
    /// [`MAX_CAPTURE_BACKLOG_MS`] (a reader that stalled) is dropped.
    fn pull(&mut self) {
        take_newest(&mut self.ring, self.max_backlog, &mut self.scratch);
        self.resampler.push(&self.scratch, &mut self.converted);
        if !self.started && !self.converted.is_empty() {
            self.started = true;
            let keep = (SAMPLE_RATE * DEVICE_PERIOD_MS / 1000) as usize;
            let early = self.converted.len().saturating_sub(keep);
            self.converted.drain(..early);
        }
        let excess = self.converted.len().saturating_sub(self.max_backlog_48k);
        self.converted.drain(..excess);
    }
}

impl Source for Capture {
    fn fill(&mut self, frame: &mut [i16]) {
        self.pull();
        for sample in frame {
            *sample = self.converted.pop_front().map_or(0, |s| (s.clamp(-1.0, 1.0) * 32767.0) as i16);
        }
    }

    /// The device paces the sender: its clock, not ours, says when a frame is
    /// there, so the two never drift apart (and the echo canceller sees the
    /// microphone's samples as the device made them).
    fn ready_samples(&mut self) -> Option<usize> {
        self.pull();
        Some(self.converted.len())
    }
}

/// Replaces `into` with what `ring` holds, at most its newest `keep` samples
/// (the older ones are skipped).
fn take_newest(ring: &mut rtrb::Consumer<f32>, keep: usize, into: &mut Vec<f32>) {
    let stale = ring.slots().saturating_sub(keep);
    if stale > 0
        && let Ok(chunk) = ring.read_chunk(stale)
    {
        chunk.commit_all();
    }
    into.clear();
    if let Ok(chunk) = ring.read_chunk(ring.slots()) {
        into.extend(chunk);
    }
}

/// Plays to a device.
pub struct Playback {
    ring: rtrb::Producer<f32>,
    resampler: Resampler,
    input: Vec<f32>,
    converted: Vec<f32>,
    /// Samples that may wait in the ring beyond the device's request.
    max_backlog: usize,
    /// The device's last request, in frames.
    device_need: Arc<AtomicUsize>,
    /// Times playing resumed after the ring ran dry.
    underruns: Arc<AtomicUsize>,
    /// Holds the ring at the cushion and half a period, whatever the clocks.
    drift: DriftCorrector,
    /// What the device played, until the echo canceller takes it.
    played: Option<PlayedTap>,
    /// The host's name for the device.
    device_name: String,
    _stream: StreamThread,
}

impl Playback {
    /// Opens `name` (the default device when `None`).
    pub fn open(name: Option<&str>) -> Result<Self, EndpointError> {
        let device = find(name, false)?;
        let device_name = name_of(&device).unwrap_or_default();
        let (config, format) = choose(&device, false)?;
        let rate = config.sample_rate;
        let channels = usize::from(config.channels.max(1));
        let (producer, consumer) = rtrb::RingBuffer::<f32>::new((rate * RING_SECONDS) as usize);
        let max_backlog = (rate * MAX_PLAYBACK_BACKLOG_MS / 1000) as usize;
        let (played, played_tap) = rtrb::RingBuffer::<f32>::new((rate * RING_SECONDS) as usize);
        let device_need = Arc::new(AtomicUsize::new(0));
        let underruns = Arc::new(AtomicUsize::new(0));
        let mut speaker = SpeakerRing {
            ring: consumer,
            played,
            need: device_need.clone(),
            underruns: underruns.clone(),
            playing: false,
            ran_dry: false,
            cushion: (rate * PLAYBACK_CUSHION_MS / 1000) as usize,
            max_backlog,
        };
        let stream = StreamThread::spawn(move || {
            let error = |e: cpal::Error| tracing::warn!(%e, "playback stream error");
            let result = match format {
                SampleFormat::F32 => device.build_output_stream::<f32, _, _>(
                    config,
                    move |data, _| speaker.pop(data, channels),
                    error,
                    None,
                ),
                _ => device.build_output_stream::<i16, _, _>(
                    config,
                    move |data, _| speaker.pop(data, channels),
                    error,
                    None,
                ),
            };
            result.map_err(|e| e.to_string())
        })?;
        Ok(Playback {
            ring: producer,
            resampler: Resampler::new(SAMPLE_RATE, rate),
            input: Vec::new(),
            converted: Vec::new(),
            max_backlog,
            device_need,
            underruns,
            // Read just before a write, the ring stands at the cushion once
            // playing starts (the device took its request from request +
            // cushion). Half a period above it: the corrector (0.2 % at most)
            // climbs there in about 5 s, 10 ms of latency. At the cushion
            // itself the speaker ran dry now and then (2 underruns in a call),
            // each a jump in the echo path: the echo test failed 1 in 6, 0 in 6
            // here. A period above took 10 s and 25 ms to reach.
            drift: DriftCorrector::new(((2 * PLAYBACK_CUSHION_MS + DEVICE_PERIOD_MS) * rate / 2000) as usize),
            played: Some(PlayedTap {
                ring: played_tap,
                keep: (rate * PLAYED_KEPT_MS / 1000) as usize,
                resampler: Resampler::new(rate, SAMPLE_RATE),
                scratch: Vec::new(),
                converted: Vec::new(),
                pcm: Vec::new(),
            }),
            device_name,
            _stream: stream,
        })
    }

    /// The host's name for the device (what `device:NAME` takes).
    pub fn device_name(&self) -> &str {
        &self.device_name
    }
}

/// The device's end of the playback ring.
struct SpeakerRing {
    ring: rtrb::Consumer<f32>,
    /// Every sample handed to the device, silence included: the echo reference.
    played: rtrb::Producer<f32>,
    /// What the device asked for last, in frames (the writer's limit grows by it).
    need: Arc<AtomicUsize>,
    /// Times playing resumed after the ring ran dry.
    underruns: Arc<AtomicUsize>,
    /// Playing, rather than waiting for the cushion to fill.
    playing: bool,
    /// The ring ran dry while playing, and playing has not resumed since.
    ran_dry: bool,
    cushion: usize,
    max_backlog: usize,
}

impl SpeakerRing {
    /// The audio callback: one mono sample to every channel. Silence while the
    /// cushion fills after a start or an underrun; a backlog is cut to the cushion.
    fn pop<T>(&mut self, data: &mut [T], channels: usize)
    where
        T: SizedSample + cpal::Sample + cpal::FromSample<f32>,
    {
        let need = data.len() / channels.max(1);
        self.need.store(need, Ordering::Relaxed);
        let queued = self.ring.slots();
        if queued >= need + self.max_backlog
            && let Ok(chunk) = self.ring.read_chunk(queued - need - self.cushion)
        {
            chunk.commit_all();
        }
        if !self.playing && self.ring.slots() >= need + self.cushion {
            self.playing = true;
            // Counted when the sound comes back, so that the ring emptying as a
            // call ends (its writer gone first) is no underrun.
            if std::mem::take(&mut self.ran_dry) {
                self.underruns.fetch_add(1, Ordering::Relaxed);
            }
        }
        for frame in data.chunks_mut(channels) {
            let sample = if self.playing { self.ring.pop().ok() } else { None };
            if sample.is_none() && self.playing {
                self.playing = false;
                self.ran_dry = true;
            }
            let sample = sample.unwrap_or(0.0);
            frame.fill(T::from_sample(sample));
            // Nobody reading (no echo canceller): dropped.
            let _ = self.played.push(sample);
        }
    }
}

/// What a sound card played, converted back to 48 kHz mono on the reader's side.
struct PlayedTap {
    ring: rtrb::Consumer<f32>,
    /// The most recent audio kept for a drain, at the device rate.
    keep: usize,
    resampler: Resampler,
    scratch: Vec<f32>,
    converted: Vec<f32>,
    pcm: Vec<i16>,
}

impl EchoReference for PlayedTap {
    fn drain(&mut self, take: &mut dyn FnMut(&[i16])) {
        // Played before the canceller started (the output opens first), or while
        // the sender stalled: too old to be the echo of anything still coming.
        take_newest(&mut self.ring, self.keep, &mut self.scratch);
        self.converted.clear();
        self.resampler.push(&self.scratch, &mut self.converted);
        self.pcm.clear();
        self.pcm.extend(self.converted.iter().map(|&s| (s.clamp(-1.0, 1.0) * 32767.0) as i16));
        take(&self.pcm);
    }
}

impl Drop for Playback {
    fn drop(&mut self) {
        // Each one is a click and a jump in the echo path: worth knowing when a
        // call sounded choppy.
        let underruns = self.underruns.load(Ordering::Relaxed);
        if underruns > 0 {
            tracing::info!(device = %self.device_name, underruns, "speaker closed");
        } else {
            tracing::debug!(device = %self.device_name, "speaker closed");
        }
    }
}

impl Sink for Playback {
    fn write(&mut self, frame: &[i16]) -> Result<(), EndpointError> {
        if !self.ready() {
            return Ok(());
        }
        // Buffers are reused: this runs on every audio frame.
        self.input.clear();
        self.input.extend(frame.iter().map(|&s| f32::from(s) / 32768.0));
        self.converted.clear();
        // The device's clock is not the pump's: slightly more or fewer samples
        // keep the ring at its target instead of running dry or growing.
        // Not before the stream's first request: an empty ring then says
        // nothing about the clocks.
        if self.device_need.load(Ordering::Relaxed) > 0 {
            let queued = self.ring.buffer().capacity() - self.ring.slots();
            self.resampler.set_factor(self.drift.observe(queued));
        }
        self.resampler.push(&self.input, &mut self.converted);
        // A full ring means the device is behind: drop rather than block.
        if let Ok(chunk) = self.ring.write_chunk_uninit(self.converted.len().min(self.ring.slots())) {
            chunk.fill_from_iter(self.converted.iter().copied());
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), EndpointError> {
        Ok(())
    }

    fn echo_reference(&mut self) -> Option<Box<dyn EchoReference>> {
        self.played.take().map(|tap| Box::new(tap) as Box<dyn EchoReference>)
    }

    fn ready(&self) -> bool {
        let queued = self.ring.buffer().capacity() - self.ring.slots();
        queued < self.device_need.load(Ordering::Relaxed) + self.max_backlog
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alsa_null_device_is_never_a_device() {
        assert!(!is_real("null"));
        assert!(is_real("default"));
        // Listing works (and lists no null device) with or without a sound card.
        let devices = list();
        assert!(devices.inputs.iter().chain(&devices.outputs).all(|d| is_real(&d.name)));
    }

    /// A speaker ring of `cushion` and `max_backlog` samples, its writer, and the
    /// played tap's reader.
    fn speaker(cushion: usize, max_backlog: usize) -> (SpeakerRing, rtrb::Producer<f32>, rtrb::Consumer<f32>) {
        let (writer, ring) = rtrb::RingBuffer::new(1000);
        let (played, tap) = rtrb::RingBuffer::new(1000);
        let need = Arc::new(AtomicUsize::new(0));
        let underruns = Arc::new(AtomicUsize::new(0));
        let speaker =
            SpeakerRing { ring, played, need, underruns, playing: false, ran_dry: false, cushion, max_backlog };
        (speaker, writer, tap)
    }

    fn write(writer: &mut rtrb::Producer<f32>, from: usize, count: usize) {
        for sample in from..from + count {
            writer.push(sample as f32).unwrap();
        }
    }

    /// One callback of `frames` stereo frames; the left channel.
    fn callback(speaker: &mut SpeakerRing, frames: usize) -> Vec<f32> {
        let mut data = vec![-1.0f32; frames * 2];
        speaker.pop(&mut data, 2);
        assert!(data.chunks(2).all(|f| f[0] == f[1]), "both channels get the sample");
        data.iter().step_by(2).copied().collect()
    }

    #[test]
    fn the_speaker_plays_from_a_cushion_and_waits_for_it_again_after_an_underrun() {
        let (mut speaker, mut writer, mut tap) = speaker(4, 8);
        write(&mut writer, 1, 5);
        assert_eq!(callback(&mut speaker, 2), [0.0; 2], "5 queued: less than the request and the cushion");
        write(&mut writer, 6, 1);
        assert_eq!(callback(&mut speaker, 2), [1.0, 2.0]);
        assert_eq!(callback(&mut speaker, 2), [3.0, 4.0]);
        // Two left for a request of three: the underrun plays silence, and
        // playing waits for the cushion again.
        assert_eq!(callback(&mut speaker, 3), [5.0, 6.0, 0.0]);
        assert_eq!(speaker.underruns.load(Ordering::Relaxed), 0, "not yet: a call that ends empties the ring too");
        write(&mut writer, 7, 3);
        assert_eq!(callback(&mut speaker, 2), [0.0; 2]);
        write(&mut writer, 10, 3);
        assert_eq!(callback(&mut speaker, 2), [7.0, 8.0]);
        // The tap got every sample the device took, silence included.
        let played: Vec<f32> = std::iter::from_fn(|| tap.pop().ok()).collect();
        assert_eq!(played, [0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0, 0.0, 7.0, 8.0]);
        assert_eq!(speaker.underruns.load(Ordering::Relaxed), 1, "once the sound came back, and once only");
    }

    #[test]
    fn a_backlog_is_cut_to_the_cushion_keeping_the_newest() {
        let (mut speaker, mut writer, _tap) = speaker(4, 8);
        // A stream that stalled while its writer went on: the request plus the
        // whole backlog wait.
        write(&mut writer, 1, 10);
        assert_eq!(callback(&mut speaker, 2), [5.0, 6.0], "cut to request + cushion: 5..10 left");
        assert_eq!(speaker.ring.slots(), 4);
        assert_eq!(speaker.need.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_missing_device_is_a_clear_error() {
        let error = Capture::open(Some("no such microphone")).err().unwrap().to_string();
        assert!(error.contains("no capture device is called \"no such microphone\""), "{error}");
    }
}
