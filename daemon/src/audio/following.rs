//! Sound-card endpoints that follow their device as devices come and go
//! (`voicelink_core::device_follow` decides where to): a call on `default` moves
//! when the system default changes; a call on a named device falls back to the
//! default when it is unplugged and returns when it is plugged in again.
//!
//! The pump keeps calling `fill` or `write` every frame; a move opens the new
//! device on a thread of its own while the old one keeps playing, and swaps
//! them between two frames. Each move is reported to the call.

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{info, warn};
use voicelink_core::device_follow::{
    AudioDirection as Direction, DeviceMove, DeviceMoved, Present, WantedDevice, follow,
};

use super::device::{Capture, Playback};
use super::device_watch::Devices;
use super::endpoints::{EchoReference, EndpointError, Sink, Source};

/// Where moves are reported (nowhere for a ringtone).
pub type MoveReports = Option<mpsc::UnboundedSender<DeviceMoved>>;

/// An open device endpoint, whichever way it goes.
trait Opened: Send + Sized + 'static {
    const DIRECTION: Direction;
    fn open(name: Option<&str>) -> Result<Self, EndpointError>;
    fn device_name(&self) -> &str;
}

impl Opened for Capture {
    const DIRECTION: Direction = Direction::Input;
    fn open(name: Option<&str>) -> Result<Self, EndpointError> {
        Capture::open(name)
    }
    fn device_name(&self) -> &str {
        Capture::device_name(self)
    }
}

impl Opened for Playback {
    const DIRECTION: Direction = Direction::Output;
    fn open(name: Option<&str>) -> Result<Self, EndpointError> {
        Playback::open(name)
    }
    fn device_name(&self) -> &str {
        Playback::device_name(self)
    }
}

/// After a move that could not be made, when the policy is asked again.
const RETRY: Duration = Duration::from_secs(1);
/// An open that takes longer than this is given up (its thread is left to end).
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// A device being opened for a move.
struct Opening<E> {
    planned: DeviceMove,
    since: Instant,
    result: std_mpsc::Receiver<Result<E, EndpointError>>,
}

/// One endpoint, the device it wants, and the move under way.
struct Follower<E: Opened> {
    wanted: WantedDevice,
    /// Open now; `None`: no device (silence).
    current: Option<E>,
    devices: Devices,
    opening: Option<Opening<E>>,
    /// The policy is asked again at this time, list change or not (a move failed).
    retry_at: Option<Instant>,
    /// Threads opening or closing devices: joined on drop, so nothing of this
    /// endpoint is still open once it is gone.
    threads: Vec<JoinHandle<()>>,
    reports: MoveReports,
}

impl<E: Opened> Follower<E> {
    /// Opens the device `wanted` names. A named device must open; the default
    /// may be missing (the endpoint waits for one).
    fn open(wanted: WantedDevice, devices: Devices, reports: MoveReports) -> Result<Self, EndpointError> {
        let (wanted, current) = match wanted {
            // By the host's name from now on, however it was named (its
            // description, or its ID with the host): that is what lists show.
            WantedDevice::Named(name) => {
                let opened = E::open(Some(&name))?;
                (WantedDevice::Named(opened.device_name().to_owned()), Some(opened))
            }
            WantedDevice::Default => {
                let opened = E::open(None)
                    .inspect_err(|error| {
                        warn!(%error, direction = E::DIRECTION.word(), "no sound device yet; waiting for one");
                    })
                    .ok();
                (WantedDevice::Default, opened)
            }
        };
        Ok(Follower { wanted, current, devices, opening: None, retry_at: None, threads: Vec::new(), reports })
    }

    fn in_use(&self) -> Option<&str> {
        self.current.as_ref().map(E::device_name)
    }

    /// Finishes a move whose device has opened, and starts one the device list
    /// asks for. True when the endpoint was replaced.
    fn poll(&mut self) -> bool {
        let now = Instant::now();
        self.threads.retain(|thread| !thread.is_finished());
        let mut replaced = false;
        if let Some(opening) = self.opening.take() {
            match opening.result.try_recv() {
                Err(std_mpsc::TryRecvError::Empty) if now.duration_since(opening.since) < OPEN_TIMEOUT => {
                    self.opening = Some(opening);
                }
                Ok(Ok(endpoint)) => {
                    let old = self.current.replace(endpoint);
                    self.close_elsewhere(old);
                    replaced = true;
                    self.report(opening.planned);
                }
                Ok(Err(error)) => {
                    warn!(%error, direction = E::DIRECTION.word(), "cannot move to the sound device; trying again");
                    self.retry_at = Some(now + RETRY);
                }
                Err(_) => {
                    warn!(direction = E::DIRECTION.word(), "the sound device did not open; trying again");
                    self.retry_at = Some(now + RETRY);
                }
            }
        }
        let retry = self.retry_at.is_some_and(|at| now >= at);
        if self.opening.is_none() && (self.devices.has_changed().unwrap_or(false) || retry) {
            self.retry_at = None;
            let list = self.devices.borrow_and_update().clone();
            let (names, default) = list.present(E::DIRECTION);
            let present = Present { names: &names, default: default.as_deref() };
            if let Some(planned) = follow(&self.wanted, self.in_use(), present) {
                match planned.to.clone() {
                    None => {
                        let old = self.current.take();
                        self.close_elsewhere(old);
                        replaced = true;
                        self.report(planned);
                    }
                    Some(name) => {
                        let (done, result) = std_mpsc::channel();
                        let spawned = std::thread::Builder::new()
                            .name("voicelink-device-open".into())
                            .spawn(move || drop(done.send(E::open(Some(&name)))));
                        match spawned {
                            Ok(thread) => {
                                self.threads.push(thread);
                                self.opening = Some(Opening { planned, since: now, result });
                            }
                            Err(_) => self.retry_at = Some(now + RETRY),
                        }
                    }
                }
            }
        }
        replaced
    }

    /// Closes a device stream on a thread of its own: closing waits for its
    /// audio thread, which is no work for the pump's.
    fn close_elsewhere(&mut self, endpoint: Option<E>) {
        if let Some(endpoint) = endpoint {
            let closing =
                std::thread::Builder::new().name("voicelink-device-close".into()).spawn(move || drop(endpoint));
            self.threads.extend(closing.ok());
        }
    }

    fn report(&self, planned: DeviceMove) {
        let moved = DeviceMoved { direction: E::DIRECTION, device: planned.to, reason: planned.reason };
        info!(
            direction = moved.direction.word(),
            device = moved.device.as_deref().unwrap_or("none"),
            reason = %moved.reason,
            "the call's sound device moved"
        );
        if let Some(reports) = &self.reports {
            let _ = reports.send(moved);
        }
    }
}

impl<E: Opened> Drop for Follower<E> {
    fn drop(&mut self) {
        drop(self.current.take());
        // A device still opening is dropped on its thread once open (its
        // receiver is gone): waited for too.
        drop(self.opening.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A microphone that follows its device.
pub struct FollowingCapture(Follower<Capture>);

impl FollowingCapture {
    /// Opens `wanted`; moves are told to `reports`.
    pub fn open(wanted: WantedDevice, devices: Devices, reports: MoveReports) -> Result<Self, EndpointError> {
        Follower::open(wanted, devices, reports).map(FollowingCapture)
    }
}

impl Source for FollowingCapture {
    fn fill(&mut self, frame: &mut [i16]) {
        match self.0.current.as_mut() {
            Some(capture) => capture.fill(frame),
            None => frame.fill(0),
        }
    }

    /// The device's pace while there is one; with none, the sender's (silence).
    fn ready_samples(&mut self) -> Option<usize> {
        self.0.poll();
        self.0.current.as_mut().and_then(Source::ready_samples)
    }
}

/// A speaker that follows its device. Its echo reference follows it too.
pub struct FollowingPlayback {
    follower: Follower<Playback>,
    tap: SharedTap,
}

impl FollowingPlayback {
    /// Opens `wanted`; moves are told to `reports`.
    pub fn open(wanted: WantedDevice, devices: Devices, reports: MoveReports) -> Result<Self, EndpointError> {
        let mut follower = Follower::open(wanted, devices, reports)?;
        let tap = SharedTap::default();
        tap.replace(follower.current.as_mut().and_then(Sink::echo_reference));
        Ok(FollowingPlayback { follower, tap })
    }
}

impl Sink for FollowingPlayback {
    fn write(&mut self, frame: &[i16]) -> Result<(), EndpointError> {
        if self.follower.poll() {
            self.tap.replace(self.follower.current.as_mut().and_then(Sink::echo_reference));
        }
        match self.follower.current.as_mut() {
            Some(playback) => playback.write(frame),
            None => Ok(()),
        }
    }

    fn finish(&mut self) -> Result<(), EndpointError> {
        Ok(())
    }

    fn ready(&self) -> bool {
        self.follower.current.as_ref().is_none_or(Sink::ready)
    }

    fn echo_reference(&mut self) -> Option<Box<dyn EchoReference>> {
        Some(Box::new(self.tap.clone()))
    }
}

/// The echo reference of whichever device plays now.
#[derive(Clone, Default)]
struct SharedTap(Arc<Mutex<Option<Box<dyn EchoReference>>>>);

impl SharedTap {
    fn replace(&self, tap: Option<Box<dyn EchoReference>>) {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = tap;
    }
}

impl EchoReference for SharedTap {
    fn drain(&mut self, take: &mut dyn FnMut(&[i16])) {
        if let Some(tap) = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_mut() {
            tap.drain(take);
        }
    }
}
