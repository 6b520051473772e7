//! An impaired Ethernet link between two network namespaces, in user space.
//!
//! This kernel has no `sch_netem`, so delay, jitter, bursty loss and outages are
//! made here: [`ImpairedLink::start`] opens a TAP device in each namespace (the
//! opening thread `setns`es into the namespace; the device stays there, and its
//! file descriptor works from any thread), gives it an address, and forwards the
//! Ethernet frames each side writes to the other side through a seeded
//! [`Decider`]. Because it works at the Ethernet level, ARP, IPv6 neighbour
//! discovery and multicast (mDNS on 224.0.0.251 and ff02::fb) cross it like any
//! other frame, and every frame is subject to the impairment.
//!
//! Per direction there are two threads: a reader that waits for a frame, asks the
//! decider, and hands delivered frames to a writer that releases them at their due
//! time, earliest first (so jitter reorders frames, as netem does). Dropping the
//! link closes a pipe that every reader also polls; the readers exit, the writers
//! see their channel close and exit, and the TAP devices vanish with their fds.
//!
//! [`Namespace`] makes (and on drop deletes) a network namespace for the link.

use std::collections::BinaryHeap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::impairment::{Decider, Impairment, Verdict};

/// Why the link (or a namespace) could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An `ip` command failed.
    #[error("`ip {args}` failed: {stderr}")]
    Ip {
        /// Its arguments.
        args: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A thread that had to enter a namespace panicked.
    #[error("the thread working in namespace {0} panicked")]
    ThreadPanicked(String),
}

impl RelayError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RelayError {
        let what = what.into();
        move |source| RelayError::Io { what, source }
    }
}

/// Runs `ip ARGS`, turning a failure into an error with its stderr.
fn ip(args: &[&str]) -> Result<(), RelayError> {
    let output = Command::new("ip").args(args).output().map_err(RelayError::io("cannot run `ip` (iproute2)"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(RelayError::Ip { args: args.join(" "), stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned() })
    }
}

/// Runs `f` on a new thread that has entered network namespace `ns` (a name from
/// `ip netns`) and returns its result. Sockets and devices opened in `f` stay in
/// that namespace wherever they are used afterwards, so a test can bind a socket
/// here and use it from its own thread.
pub fn in_namespace<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T, RelayError> {
    let ns_owned = ns.to_owned();
    let handle = std::thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || -> Result<T, RelayError> {
            enter_namespace(&ns_owned)?;
            Ok(f())
        })
        .map_err(RelayError::io("spawn a thread"))?;
    handle.join().map_err(|_| RelayError::ThreadPanicked(ns.to_owned()))?
}

/// Moves the calling thread (only it) into network namespace `ns`.
pub fn enter_namespace(ns: &str) -> Result<(), RelayError> {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).map_err(RelayError::io(format!("open {path}")))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| RelayError::Io { what: format!("setns {path}"), source: e.into() })
}

static NEXT_NAMESPACE: AtomicUsize = AtomicUsize::new(0);

/// A network namespace made with `ip netns add` (so `ip netns exec NAME` works),
/// with `lo` up; deleted when dropped.
#[derive(Debug)]
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// Makes a namespace named `{prefix}{pid}n{counter}`, unique in this process
    /// and unlikely to collide with another process's. Keep `prefix` short.
    pub fn create(prefix: &str) -> Result<Namespace, RelayError> {
        let name = format!("{prefix}{}n{}", std::process::id(), NEXT_NAMESPACE.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name])?;
        // From here on, Drop deletes it even if bringing `lo` up fails.
        let namespace = Namespace { name };
        ip(&["-n", &namespace.name, "link", "set", "lo", "up"])?;
        Ok(namespace)
    }

    /// Its name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a thread inside this namespace; see [`in_namespace`].
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, RelayError> {
        in_namespace(&self.name, f)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            tracing::warn!(namespace = %self.name, "cannot delete the namespace: {e}");
        }
    }
}

/// Why a namespace test cannot run on this machine, if it cannot (not root, or no
/// usable `ip netns`).
pub fn netns_unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root to create network namespaces (ip netns add)".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!("`ip netns list` failed: {}", String::from_utf8_lossy(&out.stderr).trim())),
        Err(e) => Some(format!("cannot run `ip` (install iproute2): {e}")),
    }
}

/// One direction of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Frames sent in namespace A, delivered in B.
    AToB,
    /// Frames sent in namespace B, delivered in A.
    BToA,
}

/// How to build the link.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Namespace of side A (an `ip netns` name).
    pub ns_a: String,
    /// Namespace of side B.
    pub ns_b: String,
    /// Side A's IPv4 address with prefix length, e.g. "10.99.0.1/24".
    pub addr_a: String,
    /// Side B's IPv4 address with prefix length.
    pub addr_b: String,
    /// Side A's IPv6 address with prefix length, if any (added without DAD).
    pub addr6_a: Option<String>,
    /// Side B's IPv6 address with prefix length, if any.
    pub addr6_b: Option<String>,
    /// What happens to frames from A to B.
    pub a_to_b: Impairment,
    /// What happens to frames from B to A.
    pub b_to_a: Impairment,
    /// Seeds both directions' deciders (each direction gets its own stream).
    pub seed: u64,
    /// Name of the TAP device in each namespace (at most 15 bytes).
    pub tap_name: String,
}

impl LinkConfig {
    /// A clean link between `ns_a` (10.99.0.1/24, fd99::1/64) and `ns_b`
    /// (10.99.0.2/24, fd99::2/64) over devices named `vl0`, seed 0. Change fields
    /// with struct update syntax: `LinkConfig { a_to_b: …, ..LinkConfig::new(a, b) }`.
    pub fn new(ns_a: impl Into<String>, ns_b: impl Into<String>) -> LinkConfig {
        LinkConfig {
            ns_a: ns_a.into(),
            ns_b: ns_b.into(),
            addr_a: "10.99.0.1/24".into(),
            addr_b: "10.99.0.2/24".into(),
            addr6_a: Some("fd99::1/64".into()),
            addr6_b: Some("fd99::2/64".into()),
            a_to_b: Impairment::CLEAN,
            b_to_a: Impairment::CLEAN,
            seed: 0,
            tap_name: "vl0".into(),
        }
    }

    /// The same impairment in both directions.
    pub fn with_impairment(mut self, impairment: Impairment) -> LinkConfig {
        self.a_to_b = impairment;
        self.b_to_a = impairment;
        self
    }
}

/// What one direction has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionCounters {
    /// Frames that entered this direction.
    pub frames_in: u64,
    /// Frames delivered to the other side.
    pub frames_forwarded: u64,
    /// Frames lost: by the loss model, the link being down, or a failed write.
    pub frames_dropped: u64,
    /// Of `frames_forwarded`, RTP packets (version 2, payload type 111 over UDP).
    pub rtp_forwarded: u64,
    /// Of `frames_dropped`, RTP packets.
    pub rtp_dropped: u64,
    /// When the first RTP packet was delivered (the first audio on the wire).
    pub first_rtp_forwarded: Option<Instant>,
}

impl DirectionCounters {
    /// Frames accepted for delivery but not yet released (delayed in flight).
    pub fn in_flight(&self) -> u64 {
        self.frames_in - self.frames_forwarded - self.frames_dropped
    }
}

/// Both directions' counters, taken at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Frames from A to B.
    pub a_to_b: DirectionCounters,
    /// Frames from B to A.
    pub b_to_a: DirectionCounters,
}

impl LinkCounters {
    /// The counters of one direction.
    pub fn direction(&self, direction: Direction) -> DirectionCounters {
        match direction {
            Direction::AToB => self.a_to_b,
            Direction::BToA => self.b_to_a,
        }
    }

    fn direction_mut(&mut self, direction: Direction) -> &mut DirectionCounters {
        match direction {
            Direction::AToB => &mut self.a_to_b,
            Direction::BToA => &mut self.b_to_a,
        }
    }
}

/// Whether an Ethernet frame carries an RTP media packet: IPv4 or IPv6 (no
/// extension headers) UDP whose payload has RTP version 2 and payload type 111
/// (our Opus). SRTP leaves the RTP header in clear, so this sees encrypted media
/// too. RTCP (packet types 200-204 in the same byte), STUN and DTLS do not match.
pub fn is_rtp(frame: &[u8]) -> bool {
    const ETHERNET_HEADER: usize = 14;
    const UDP: u8 = 17;
    let Some(ethertype) = frame.get(12..14) else { return false };
    let ip = &frame[ETHERNET_HEADER..];
    let udp = match u16::from_be_bytes([ethertype[0], ethertype[1]]) {
        0x0800 => {
            let Some(&version_ihl) = ip.first() else { return false };
            let header = usize::from(version_ihl & 0x0f) * 4;
            // Not UDP, or a fragment other than the first (no UDP header of its own).
            let fragment_offset = ip.get(6..8).map(|b| u16::from_be_bytes([b[0], b[1]]) & 0x1fff);
            if version_ihl >> 4 != 4 || ip.get(9) != Some(&UDP) || fragment_offset != Some(0) || header < 20 {
                return false;
            }
            ip.get(header..)
        }
        0x86dd => {
            if ip.get(6) != Some(&UDP) {
                return false;
            }
            ip.get(40..)
        }
        _ => None,
    };
    let Some(payload) = udp.and_then(|udp| udp.get(8..)) else { return false };
    payload.len() >= 12 && payload[0] >> 6 == 2 && payload[1] & 0x7f == 111 && !(200..=204).contains(&payload[1])
}

/// State shared by the link's threads and its handle.
struct Shared {
    a_to_b: Mutex<Decider>,
    b_to_a: Mutex<Decider>,
    counters: Mutex<LinkCounters>,
    /// Notified whenever a counter changes, for [`ImpairedLink::wait_until`].
    counted: Condvar,
}

impl Shared {
    fn decider(&self, direction: Direction) -> MutexGuard<'_, Decider> {
        let decider = match direction {
            Direction::AToB => &self.a_to_b,
            Direction::BToA => &self.b_to_a,
        };
        // A panicking relay thread cannot leave a decider half-updated in a way that
        // matters (at worst one frame's verdict), so poisoning is ignored.
        decider.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, direction: Direction, update: impl FnOnce(&mut DirectionCounters)) {
        update(self.counters.lock().unwrap_or_else(|e| e.into_inner()).direction_mut(direction));
        self.counted.notify_all();
    }
}

/// A running impaired link between two namespaces; dropping it stops the relay
/// and removes the TAP devices.
pub struct ImpairedLink {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// Write end of the stop pipe: dropping it wakes and ends every reader.
    stop: Option<OwnedFd>,
}

impl std::fmt::Debug for ImpairedLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImpairedLink").field("counters", &self.counters()).finish_non_exhaustive()
    }
}

/// The largest frame a TAP device hands over (it may use GSO-less jumbo MTUs).
const MAX_FRAME: usize = 65_536;

impl ImpairedLink {
    /// Creates the TAP devices, configures their addresses, brings them up with a
    /// multicast route (so mDNS has a way out), and starts forwarding.
    pub fn start(config: LinkConfig) -> Result<ImpairedLink, RelayError> {
        let tap_a = Arc::new(open_tap_in(&config.ns_a, &config.tap_name)?);
        let tap_b = Arc::new(open_tap_in(&config.ns_b, &config.tap_name)?);
        for (ns, addr, addr6) in
            [(&config.ns_a, &config.addr_a, &config.addr6_a), (&config.ns_b, &config.addr_b, &config.addr6_b)]
        {
            configure(ns, &config.tap_name, addr, addr6.as_deref())?;
        }

        let shared = Arc::new(Shared {
            // Distinct streams per direction from one seed.
            a_to_b: Mutex::new(Decider::new(config.a_to_b, config.seed)),
            b_to_a: Mutex::new(Decider::new(config.b_to_a, config.seed ^ 0x9e37_79b9_7f4a_7c15)),
            counters: Mutex::new(LinkCounters::default()),
            counted: Condvar::new(),
        });
        let (stop_read, stop_write) =
            nix::unistd::pipe().map_err(|e| RelayError::Io { what: "make the stop pipe".into(), source: e.into() })?;
        let stop_read = Arc::new(stop_read);
        let mut link = ImpairedLink { shared, threads: Vec::new(), stop: Some(stop_write) };
        for (direction, from, to) in [(Direction::AToB, &tap_a, &tap_b), (Direction::BToA, &tap_b, &tap_a)] {
            let (queue, pending) = mpsc::channel();
            let (shared, from, stop) = (link.shared.clone(), from.clone(), stop_read.clone());
            // If spawning fails, `link` is dropped: the threads already started stop.
            link.threads.push(spawn(format!("relay-read-{direction:?}"), move || {
                read_loop(direction, &from, &stop, &shared, &queue)
            })?);
            let (shared, to) = (link.shared.clone(), to.clone());
            link.threads.push(spawn(format!("relay-write-{direction:?}"), move || {
                write_loop(direction, &to, &shared, &pending)
            })?);
        }
        tracing::debug!(a = %config.ns_a, b = %config.ns_b, "impaired link up");
        Ok(link)
    }

    /// Both directions' counters now.
    pub fn counters(&self) -> LinkCounters {
        *self.shared.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `done` holds for the counters (re-checked whenever they change)
    /// or `timeout` passes; returns the counters that satisfied it, or the last ones
    /// as the error. The timeout is a guard against hangs, not a measurement.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&LinkCounters) -> bool,
    ) -> Result<LinkCounters, LinkCounters> {
        let guard = self.shared.counters.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .shared
            .counted
            .wait_timeout_while(guard, timeout, |counters| !done(counters))
            .unwrap_or_else(|e| e.into_inner());
        if done(&guard) { Ok(*guard) } else { Err(*guard) }
    }

    /// Puts the link down now for `length`, both directions: frames arriving in
    /// that time are dropped, and delayed frames due in it are not delivered.
    pub fn go_down_for(&self, length: Duration) {
        let now = Instant::now();
        for direction in [Direction::AToB, Direction::BToA] {
            self.shared.decider(direction).go_down(now, length);
        }
        tracing::info!(?length, "link down");
    }

    /// Whether the link is down now.
    pub fn is_down(&self) -> bool {
        self.shared.decider(Direction::AToB).is_down(Instant::now())
    }

    /// Changes one direction's impairment for frames arriving from now on.
    pub fn set_impairment(&self, direction: Direction, impairment: Impairment) {
        self.shared.decider(direction).set_impairment(impairment);
    }

    /// The impairment one direction applies now.
    pub fn impairment(&self, direction: Direction) -> Impairment {
        self.shared.decider(direction).impairment()
    }
}

impl Drop for ImpairedLink {
    fn drop(&mut self) {
        // Closing the write end makes the pipe readable (hang-up) for every reader.
        self.stop.take();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a relay thread panicked");
            }
        }
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, RelayError> {
    std::thread::Builder::new().name(name).spawn(f).map_err(RelayError::io("spawn a relay thread"))
}

/// `ifreq` as TUNSETIFF reads it: the name, then the flags in the union.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    /// The rest of the 24-byte union.
    _pad: [u8; 22],
}

/// `_IOW('T', 202, int)` in the common Linux ioctl encoding (x86, Arm, RISC-V).
const TUNSETIFF: u64 = 0x4004_54ca;

/// Opens a TAP device named `name` in namespace `ns`.
fn open_tap_in(ns: &str, name: &str) -> Result<File, RelayError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(RelayError::Io {
            what: format!("TAP device name {name:?}"),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "must be 1 to 15 bytes"),
        });
    }
    let name = name.to_owned();
    in_namespace(ns, move || open_tap(&name))?
}

/// Opens /dev/net/tun as a TAP device (Ethernet frames, no packet-info prefix)
/// named `name` in the calling thread's namespace.
fn open_tap(name: &str) -> Result<File, RelayError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(RelayError::io("open /dev/net/tun"))?;
    let mut request =
        IfReq { name: [0; libc::IFNAMSIZ], flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short, _pad: [0; 22] };
    for (dst, src) in request.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads (and may write back) one `struct ifreq`; `request`
    // has its layout and size and lives across the call.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut request as *mut IfReq) };
    if result < 0 {
        return Err(RelayError::Io { what: format!("TUNSETIFF {name}"), source: std::io::Error::last_os_error() });
    }
    Ok(file)
}

/// Addresses, DAD off, multicast route, up.
fn configure(ns: &str, dev: &str, addr: &str, addr6: Option<&str>) -> Result<(), RelayError> {
    // Without DAD the automatic IPv6 link-local address (mDNS on ff02::fb is sent
    // from it) is usable at once rather than after a second or two. Best effort:
    // without IPv6 there is no such setting.
    let sysctl = format!("net.ipv6.conf.{dev}.accept_dad=0");
    match Command::new("ip").args(["netns", "exec", ns, "sysctl", "-q", "-w", &sysctl]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => tracing::debug!(ns, "{sysctl}: {}", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => tracing::debug!(ns, "{sysctl}: {e}"),
    }
    ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
    if let Some(addr6) = addr6 {
        ip(&["-n", ns, "addr", "add", addr6, "dev", dev, "nodad"])?;
    }
    ip(&["-n", ns, "link", "set", dev, "multicast", "on", "up"])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    // A namespace with no default route has no route for 224.0.0.251; mDNS needs one.
    ip(&["-n", ns, "route", "replace", "224.0.0.0/4", "dev", dev])?;
    Ok(())
}

/// A frame waiting for its delivery time. Ordered so that the max-heap pops the
/// earliest time first, and frames due at the same time in arrival order.
struct Pending {
    at: Instant,
    sequence: u64,
    frame: Vec<u8>,
    rtp: bool,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.sequence).cmp(&(self.at, self.sequence))
    }
}

/// Waits until `tap` or `stop` is readable; false when it is time to stop.
fn wait_readable(tap: &File, stop: &OwnedFd) -> bool {
    let mut fds = [
        libc::pollfd { fd: tap.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("relay poll failed: {error}");
            return false;
        }
        if fds[1].revents != 0 {
            return false;
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            tracing::error!("relay TAP device failed (revents {:#x})", fds[0].revents);
            return false;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            return true;
        }
    }
}

fn read_loop(direction: Direction, tap: &File, stop: &OwnedFd, shared: &Shared, queue: &mpsc::Sender<Pending>) {
    let mut buffer = vec![0u8; MAX_FRAME];
    let mut sequence = 0u64;
    while wait_readable(tap, stop) {
        let n = match (&*tap).read(&mut buffer) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(?direction, "relay read failed: {e}");
                return;
            }
        };
        let arrival = Instant::now();
        let frame = &buffer[..n];
        let rtp = is_rtp(frame);
        let verdict = shared.decider(direction).decide(arrival);
        match verdict {
            Verdict::Drop => shared.count(direction, |c| {
                c.frames_in += 1;
                c.frames_dropped += 1;
                c.rtp_dropped += u64::from(rtp);
            }),
            Verdict::Deliver { at } => {
                shared.count(direction, |c| c.frames_in += 1);
                sequence += 1;
                if queue.send(Pending { at, sequence, frame: frame.to_vec(), rtp }).is_err() {
                    return; // The writer is gone: the link is stopping.
                }
            }
        }
    }
}

fn write_loop(direction: Direction, tap: &File, shared: &Shared, pending: &mpsc::Receiver<Pending>) {
    let mut heap = BinaryHeap::<Pending>::new();
    loop {
        let next = match heap.peek() {
            None => pending.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(first) => pending.recv_timeout(first.at.saturating_duration_since(Instant::now())),
        };
        match next {
            Ok(frame) => heap.push(frame),
            Err(RecvTimeoutError::Timeout) => {}
            // The reader stopped: frames still in flight are discarded with the link.
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        while heap.peek().is_some_and(|first| first.at <= now) {
            let Some(Pending { frame, rtp, .. }) = heap.pop() else { break };
            let delivered = if shared.decider(direction).is_down(now) {
                false
            } else {
                match (&*tap).write(&frame) {
                    // A TAP write takes the whole frame or fails.
                    Ok(n) => n == frame.len(),
                    Err(e) => {
                        tracing::debug!(?direction, "relay write failed: {e}");
                        false
                    }
                }
            };
            shared.count(direction, |c| {
                if delivered {
                    c.frames_forwarded += 1;
                    c.rtp_forwarded += u64::from(rtp);
                    if rtp && c.first_rtp_forwarded.is_none() {
                        c.first_rtp_forwarded = Some(now);
                    }
                } else {
                    c.frames_dropped += 1;
                    c.rtp_dropped += u64::from(rtp);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + UDP frame around `payload`.
    fn udp4(payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; 14];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        ip.extend_from_slice(&[0x13, 0x88, 0x13, 0x89, 0, 0, 0, 0]);
        ip.extend_from_slice(payload);
        frame.extend(ip);
        frame
    }

    fn udp6(payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; 14];
        frame[12..14].copy_from_slice(&[0x86, 0xdd]);
        let mut ip = vec![0u8; 40];
        ip[0] = 0x60;
        ip[6] = 17;
        ip.extend_from_slice(&[0x13, 0x88, 0x13, 0x89, 0, 0, 0, 0]);
        ip.extend_from_slice(payload);
        frame.extend(ip);
        frame
    }

    fn rtp(byte1: u8) -> Vec<u8> {
        let mut packet = vec![0x80, byte1];
        packet.extend_from_slice(&[0; 30]);
        packet
    }

    #[test]
    fn opus_rtp_is_recognised_over_both_ip_versions() {
        assert!(is_rtp(&udp4(&rtp(111))));
        assert!(is_rtp(&udp4(&rtp(0x80 | 111))), "marker bit set");
        assert!(is_rtp(&udp6(&rtp(111))));
    }

    #[test]
    fn other_traffic_is_not_rtp() {
        for rtcp in 200..=204 {
            assert!(!is_rtp(&udp4(&rtp(rtcp))), "RTCP {rtcp}");
        }
        assert!(!is_rtp(&udp4(&rtp(96))), "another payload type");
        let mut stun = rtp(111);
        stun[0] = 0x00;
        assert!(!is_rtp(&udp4(&stun)), "STUN");
        let mut dtls = rtp(111);
        dtls[0] = 22;
        assert!(!is_rtp(&udp4(&dtls)), "DTLS");
        assert!(!is_rtp(&udp4(&rtp(111)[..8])), "shorter than an RTP header");
        let mut tcp = udp4(&rtp(111));
        tcp[14 + 9] = 6;
        assert!(!is_rtp(&tcp), "TCP");
        let mut fragment = udp4(&rtp(111));
        fragment[14 + 7] = 8;
        assert!(!is_rtp(&fragment), "a later fragment");
        let mut arp = udp4(&rtp(111));
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(!is_rtp(&arp), "ARP");
        assert!(!is_rtp(&[0u8; 13]), "a runt frame");
    }

    #[test]
    fn pending_frames_pop_earliest_first_then_in_arrival_order() {
        let t = Instant::now();
        let mut heap = BinaryHeap::new();
        for (ms, sequence) in [(30, 1), (10, 2), (10, 3), (20, 4)] {
            heap.push(Pending { at: t + Duration::from_millis(ms), sequence, frame: Vec::new(), rtp: false });
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|p| p.sequence)).collect();
        assert_eq!(order, [2, 3, 4, 1]);
    }
}
