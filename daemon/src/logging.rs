//! The daemon's log filter. The WebRTC libraries (webrtc-rs and its `rtc*` crates)
//! log warnings on every healthy call (a packet before SRTP keys exist, an ICE
//! check before the peer's candidates, a DTLS server name), and cpal's PulseAudio
//! client logs each connection it makes to list or open a device; a daemon that
//! warns on every call teaches its users to ignore warnings. So unless the filter
//! names those libraries itself, or asks for debug or trace everywhere, they log
//! errors only.
//!
//! And every field is written escaped ([`escaped_fields`]): a name or an error
//! from the network cannot start a new line of its own in the log (or the
//! journal), move the terminal's cursor, or turn text right to left.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing_subscriber::field::MakeExt as _;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;
use voicelink_core::vocab::is_invisible;

/// Log targets of those libraries (a directive's target matches by prefix:
/// `rtc` covers `rtc_ice`, `rtc_dtls`, …).
const CHATTY_TARGETS: [&str; 3] = ["webrtc", "rtc", "pulseaudio"];

/// The filter directives for a configured log level (`info`, or directives like
/// `info,voicelink_daemon=debug`).
pub fn directives(level: &str) -> String {
    let parts: Vec<&str> = level.split(',').map(str::trim).collect();
    let names_a_library = parts.iter().any(|part| CHATTY_TARGETS.iter().any(|target| part.starts_with(target)));
    let verbose_everywhere = parts.iter().any(|part| matches!(*part, "debug" | "trace"));
    if names_a_library || verbose_everywhere {
        return level.to_owned();
    }
    let quiet: Vec<String> = CHATTY_TARGETS.iter().map(|target| format!("{target}=error")).collect();
    format!("{level},{}", quiet.join(","))
}

/// Drops the errors libraries log on healthy calls:
/// - webrtc-rs's SRTP replay check rejecting a packet that arrived twice ("srtp
///   ssrc=… index=…: duplicated", logged as "handle_read error" by its driver).
///   With retransmission on, that is routine: a request repeated before the
///   first answer came back, or a packet that was only reordered, is sent twice,
///   and the second copy is dropped as it should be. See
///   `docs/upstream/webrtc-rs-srtp-replay-error-log.md`.
/// - The PulseAudio client under cpal reporting "Reactor error: Client
///   disconnected" each time one of its connections closes, which is each time a
///   device list is read or a stream is closed. A sound server that goes away is
///   noticed by the device watcher, which says so itself.
pub struct RoutineLibraryErrors;

/// A layer of its own (not a per-layer filter: tracing-subscriber 0.3.23 leaves
/// a per-layer filter's state set after an event it alone refused, and the next
/// event is then checked against it), so refusing here refuses the event for
/// the whole subscriber.
impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RoutineLibraryErrors {
    fn event_enabled(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) -> bool {
        if *event.metadata().level() != tracing::Level::ERROR {
            return true;
        }
        let mut message = MessageText(String::new());
        event.record(&mut message);
        !is_routine(&message.0)
    }
}

/// Whether a library's error is one of the routine ones above.
fn is_routine(message: &str) -> bool {
    let replayed_srtp_packet = message.contains("srtp ssrc=") && message.ends_with(": duplicated");
    replayed_srtp_packet || message == "Reactor error: Client disconnected"
}

/// An event's message, as text.
struct MessageText(String);

impl tracing::field::Visit for MessageText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

/// Counts something that may happen thousands of times a second (a flood
/// refused) so that it is logged at most once per `every`, with how many.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    count: u64,
    reported: Option<Instant>,
    /// The last total given to `note_total`.
    total: u64,
}

impl Throttle {
    /// At most one report per `every`.
    pub const fn new(every: Duration) -> Self {
        Throttle { every, count: 0, reported: None, total: 0 }
    }

    /// One more happened at `now`: how many to report now, if it is time.
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        self.note_many(1, now)
    }

    /// A running count (one a pure core keeps) stands at `total` at `now`.
    pub fn note_total(&mut self, total: u64, now: Instant) -> Option<u64> {
        let new = total.saturating_sub(std::mem::replace(&mut self.total, total));
        self.note_many(new, now)
    }

    /// `n` more happened at `now` (none: nothing to report).
    fn note_many(&mut self, n: u64, now: Instant) -> Option<u64> {
        self.count += n;
        if self.count == 0 || self.reported.is_some_and(|at| now.saturating_duration_since(at) < self.every) {
            return None;
        }
        self.reported = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

/// How the log writes an event's fields: `name=value`, the message bare, with
/// every control and invisible character in a value escaped (`\n`, `\u{202e}`).
pub fn escaped_fields() -> impl for<'writer> FormatFields<'writer> + Send + Sync + 'static {
    tracing_subscriber::fmt::format::debug_fn(|writer: &mut Writer<'_>, field: &tracing::field::Field, value| {
        if field.name() != "message" {
            write!(writer, "{}=", field.name())?;
        }
        write_escaped(writer, &format!("{value:?}"))
    })
    .delimited(" ")
}

fn write_escaped(out: &mut impl fmt::Write, text: &str) -> fmt::Result {
    for c in text.chars() {
        match c {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if c.is_control() || is_invisible(c) => write!(out, "\\u{{{:x}}}", u32::from(c))?,
            c => out.write_char(c)?,
        }
    }
    Ok(())
}

/// Where the C libraries under cpal write: ALSA, and the JACK, OSS and
/// PulseAudio plugins it loads, print their complaints straight to file
/// descriptor 2 (two dozen lines on a machine without a sound card, at start
/// and whenever devices are probed). While this lives, descriptor 2 is a pipe
/// whose lines are logged at debug (target `voiced::audio_libraries`); our own
/// log and a panic go to the real stderr ([`LibraryStderr::original`]).
/// Dropping it puts the real stderr back.
pub struct LibraryStderr {
    original: Arc<std::fs::File>,
}

impl LibraryStderr {
    /// Routes descriptor 2 through the pipe.
    pub fn route() -> std::io::Result<LibraryStderr> {
        use std::io::{BufRead, Write};
        use std::os::fd::AsFd;

        let original = Arc::new(std::fs::File::from(std::io::stderr().as_fd().try_clone_to_owned()?));
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // The reader runs before descriptor 2 is switched: nothing written there
        // is ever stuck in a pipe nobody reads.
        std::thread::Builder::new().name("voicelink-stderr".into()).spawn(move || {
            let mut reader = std::io::BufReader::new(std::fs::File::from(read));
            let mut line = Vec::new();
            // Any bytes (a description in the locale's encoding): read until
            // the pipe closes, never stop at a line that is not UTF-8.
            while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                let text = String::from_utf8_lossy(&line[..line.len().min(4096)]);
                if !text.trim().is_empty() {
                    tracing::debug!(target: "voiced::audio_libraries", line = %text.trim_end(), "a library wrote to stderr");
                }
                line.clear();
            }
        })?;
        let panics = Arc::clone(&original);
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let backtrace = std::backtrace::Backtrace::capture();
            let backtrace = match backtrace.status() {
                std::backtrace::BacktraceStatus::Captured => format!("\n{backtrace}"),
                _ => String::new(),
            };
            let _ = writeln!(&*panics, "thread '{}' {info}{backtrace}", thread.name().unwrap_or("<unnamed>"));
        }));
        nix::unistd::dup2_stderr(&write)?;
        drop(write);
        Ok(LibraryStderr { original })
    }

    /// The real stderr, for the daemon's own log.
    pub fn original(&self) -> Arc<std::fs::File> {
        Arc::clone(&self.original)
    }
}

impl Drop for LibraryStderr {
    fn drop(&mut self) {
        let _ = nix::unistd::dup2_stderr(&*self.original);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chatty_libraries_log_errors_only_unless_asked() {
        assert_eq!(directives("info"), "info,webrtc=error,rtc=error,pulseaudio=error");
        assert_eq!(
            directives("warn,voicelink_daemon=debug"),
            "warn,voicelink_daemon=debug,webrtc=error,rtc=error,pulseaudio=error"
        );
        assert_eq!(directives("info,rtc_ice=debug"), "info,rtc_ice=debug", "named: left as asked");
        assert_eq!(directives("debug"), "debug", "debug everywhere means everywhere");
    }

    #[test]
    fn the_log_output_leaves_out_the_routine_library_errors_only() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let written = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = Arc::clone(&written);
        let make_writer = move || Captured(Arc::clone(&sink));
        let output = tracing_subscriber::fmt::layer().with_writer(make_writer);
        tracing::subscriber::with_default(
            tracing_subscriber::registry().with(RoutineLibraryErrors).with(output),
            || {
                tracing::error!("handle_read error: srtp ssrc=1234 index=77: duplicated");
                tracing::error!("Reactor error: Client disconnected");
                tracing::error!("Reactor error: Protocol error");
                tracing::error!("handle_read error: srtp ssrc=1234: failed to verify auth tag");
                tracing::warn!("srtp ssrc=1 index=2: duplicated");
            },
        );
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("index=77") && !text.contains("Client disconnected"), "{text}");
        assert!(text.contains("auth tag") && text.contains("index=2") && text.contains("Protocol error"), "{text}");
    }

    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn only_the_routine_library_errors_are_dropped() {
        assert!(is_routine("handle_read error: srtp ssrc=1234 index=77: duplicated"));
        assert!(!is_routine("handle_read error: srtp ssrc=1234: failed to verify auth tag"));
        assert!(!is_routine("duplicated packet"));
        assert!(is_routine("Reactor error: Client disconnected"));
        assert!(!is_routine("Reactor error: Protocol error"));
    }

    #[test]
    fn a_throttle_reports_the_first_then_a_count_per_period() {
        let mut throttle = Throttle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(throttle.note(start), Some(1));
        for n in 1..=99 {
            assert_eq!(throttle.note(start + Duration::from_millis(n * 10)), None);
        }
        assert_eq!(throttle.note(start + Duration::from_secs(10)), Some(100));

        // A running total: what it grew by since the last report.
        let mut totals = Throttle::new(Duration::from_secs(10));
        assert_eq!(totals.note_total(0, start), None, "nothing yet");
        assert_eq!(totals.note_total(5, start), Some(5));
        assert_eq!(totals.note_total(7, start + Duration::from_secs(1)), None);
        assert_eq!(totals.note_total(7, start + Duration::from_secs(10)), Some(2));
    }

    #[test]
    fn a_field_from_the_network_cannot_forge_a_line_or_an_escape() {
        let caller = "eve\n2026-11-30T00:00:00Z  INFO voiced is ready\u{1b}[2J\u{202e}";
        let line = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let seen = line.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(escaped_fields())
            .with_writer(move || Capture(seen.clone()))
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(name = %caller, quoted = caller, "call from {caller}");
        });
        let logged = line.lock().unwrap().clone();
        assert_eq!(logged.lines().count(), 1, "{logged}");
        assert!(!logged.contains('\u{1b}') && !logged.contains('\u{202e}'), "{logged}");
        assert!(logged.contains(r"name=eve\n2026-11-30T00:00:00Z  INFO voiced is ready\u{1b}[2J\u{202e}"), "{logged}");
    }

    /// A log writer into a shared string.
    struct Capture(std::sync::Arc<std::sync::Mutex<String>>);

    impl std::io::Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push_str(&String::from_utf8_lossy(bytes));
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
