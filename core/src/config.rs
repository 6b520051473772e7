//! The daemon's configuration: a TOML file in the XDG config directory, with
//! command-line flags on top. Every value is checked while it is read, so an error
//! names the key and the line it is on.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_with::{DeserializeFromStr, SerializeDisplay};

use crate::audio_spec::{InputSpec, OutputSpec, RingtoneSpec};
use crate::switchboard::{AutoAnswer, WhoMayRing};
pub use crate::vocab::DisplayName;

/// The whole configuration. Missing keys take their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The name peers see. Defaults to the host name.
    pub name: DisplayName,
    /// Where the identity and other state live. Defaults to the XDG data directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// A tracing filter: a level (`info`) or directives (`voicelink_daemon=debug`).
    pub log_level: LogLevel,
    /// The control API.
    pub api: ApiConfig,
    /// Daemon-to-daemon signaling.
    pub signaling: SignalingConfig,
    /// LAN discovery.
    pub discovery: DiscoveryConfig,
    /// Audio endpoints used for calls unless a call chooses its own.
    pub audio: AudioConfig,
    /// Call policies and codec settings.
    pub calls: CallsConfig,
    /// How much call history to keep.
    pub history: HistoryConfig,
}

/// How much call history to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Days a call stays in the history (1 to 36500).
    pub keep_days: Bounded<1, 36_500>,
    /// Calls the history keeps at most (10 to 1 000 000).
    pub keep_calls: Bounded<10, 1_000_000>,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig { keep_days: Bounded(365), keep_calls: Bounded(10_000) }
    }
}

impl HistoryConfig {
    /// As the store applies it.
    pub fn retention(&self) -> crate::history::Retention {
        crate::history::Retention {
            max_age: std::time::Duration::from_secs(u64::from(self.keep_days.0) * 24 * 3600),
            max_entries: self.keep_calls.0 as usize,
        }
    }
}

/// Call policies and codec settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    /// Which calls are answered at once: off, trusted, everyone (`true` and
    /// `false` read as everyone and off).
    pub auto_answer: AutoAnswer,
    /// Who may ring: everyone, known, trusted, nobody.
    pub who_may_ring: WhoMayRing,
    /// Do-not-disturb: nobody rings, whatever `who_may_ring` says (which comes
    /// back when it is turned off).
    pub do_not_disturb: bool,
    /// Call waiting: a call that comes in while another is live rings softly
    /// and can be answered by holding the other call or merging the two;
    /// off, the caller is told "busy".
    pub call_waiting: bool,
    /// Seconds a call rings before it ends as "no answer" (5 to 600).
    pub ring_timeout_secs: Bounded<5, 600>,
    /// Opus frame length in milliseconds: 10 or 20.
    pub frame_ms: FrameMs,
    /// Opus target bitrate in kb/s (12 to 128): what a clear link carries.
    pub bitrate_kbps: Bounded<12, 128>,
    /// The least the bitrate comes down to under congestion, in kb/s (12 to 128;
    /// `bitrate_kbps` if above it).
    pub min_bitrate_kbps: Bounded<12, 128>,
    /// Discontinuous transmission: send almost nothing while silent.
    pub dtx: bool,
    /// STUN servers (`stun:host:port`) for server-reflexive candidates; none by
    /// default: on a LAN, host candidates are all it takes, and it works offline.
    pub stun_servers: Vec<StunServer>,
    /// Offer loopback candidates too (two daemons on one host without a LAN).
    pub allow_loopback: bool,
    /// Seconds an answered call waits for a link that went silent to come back
    /// ("reconnecting") before it ends as "peer lost" (5 to 300). A peer that
    /// quits or is killed closes its connection and is noticed at once.
    pub reconnect_timeout_secs: Bounded<5, MAX_RECONNECT_TIMEOUT_SECS>,
}

/// The longest `calls.reconnect_timeout_secs`: a signaling connection must
/// outlive an outage this long.
pub const MAX_RECONNECT_TIMEOUT_SECS: u32 = 300;

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            auto_answer: AutoAnswer::Off,
            who_may_ring: WhoMayRing::Everyone,
            do_not_disturb: false,
            call_waiting: false,
            ring_timeout_secs: Bounded(30),
            frame_ms: FrameMs(20),
            // Opus alone scores PESQ-WB 3.83 at 32 kb/s and 4.19 at 48 on the
            // bench's speech (BENCHMARKS.md, "Opus alone"); a LAN has the room.
            bitrate_kbps: Bounded(48),
            min_bitrate_kbps: Bounded(16),
            dtx: false,
            stun_servers: Vec::new(),
            allow_loopback: false,
            reconnect_timeout_secs: Bounded(40),
        }
    }
}

/// A whole number between `MIN` and `MAX`, checked when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Bounded<const MIN: u32, const MAX: u32>(pub u32);

impl<const MIN: u32, const MAX: u32> TryFrom<u32> for Bounded<MIN, MAX> {
    type Error = String;
    fn try_from(value: u32) -> Result<Self, String> {
        if (MIN..=MAX).contains(&value) {
            Ok(Bounded(value))
        } else {
            Err(format!("{value} is not between {MIN} and {MAX}"))
        }
    }
}

impl<const MIN: u32, const MAX: u32> From<Bounded<MIN, MAX>> for u32 {
    fn from(value: Bounded<MIN, MAX>) -> u32 {
        value.0
    }
}

/// An Opus frame length: 10 or 20 ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct FrameMs(pub u32);

impl TryFrom<u32> for FrameMs {
    type Error = String;
    fn try_from(value: u32) -> Result<Self, String> {
        match value {
            10 | 20 => Ok(FrameMs(value)),
            _ => Err(format!("{value} ms is not a supported frame length: use 10 or 20")),
        }
    }
}

impl FrameMs {
    /// A frame length a peer asked for, if it is one we support.
    pub fn of(ms: u32) -> Option<FrameMs> {
        FrameMs::try_from(ms).ok()
    }

    /// The frame length.
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::from(self.0))
    }
}

impl From<FrameMs> for u32 {
    fn from(value: FrameMs) -> u32 {
        value.0
    }
}

/// The control API's listeners.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The Unix socket. Defaults to `$XDG_RUNTIME_DIR/voicelink/voiced.sock`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// An extra TCP listener, off unless set: `PORT` (on loopback) or `HOST:PORT`.
    /// Every request on it must carry the token from `<data_dir>/api-token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_listen: Option<TcpListen>,
}

/// Signaling between daemons.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalingConfig {
    /// TCP port for signaling; 0 picks a free one (peers learn it by mDNS). Fix it
    /// to make this device reachable as `host:port`.
    pub port: u16,
}

/// LAN discovery by mDNS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Advertise this device and browse for peers.
    pub enabled: bool,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig { enabled: true }
    }
}

/// Default audio endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioConfig {
    /// What we send.
    pub input: InputSpec,
    /// Where what we hear goes.
    pub output: OutputSpec,
    /// A `file:` input starts again at its end (otherwise silence follows).
    pub loop_files: bool,
    /// How loud calls play, in per cent (100: as received).
    pub output_volume: Bounded<0, 200>,
    /// What an incoming call rings with (on a sound card only).
    pub ringtone: RingtoneSpec,
    /// The caller hears a ringing tone while the peer rings (on a sound card).
    pub ringback: bool,
    /// How loud ringing is, in per cent.
    pub ring_volume: Bounded<0, 100>,
    /// Remove the speaker's echo from a sound card's microphone.
    pub echo_cancellation: bool,
    /// Attenuate steady background noise on a sound card's microphone.
    pub noise_suppression: bool,
    /// Bring a sound card's microphone to a steady speech level.
    pub gain_control: bool,
}

impl Default for AudioConfig {
    fn default() -> Self {
        AudioConfig {
            input: InputSpec::Default,
            output: OutputSpec::Default,
            loop_files: true,
            output_volume: Bounded(100),
            ringtone: RingtoneSpec::Builtin,
            ringback: true,
            ring_volume: Bounded(50),
            echo_cancellation: true,
            noise_suppression: true,
            gain_control: true,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: name_from_host(),
            data_dir: None,
            log_level: LogLevel("info".into()),
            api: ApiConfig::default(),
            signaling: SignalingConfig::default(),
            discovery: DiscoveryConfig::default(),
            audio: AudioConfig::default(),
            calls: CallsConfig::default(),
            history: HistoryConfig::default(),
        }
    }
}

/// Values given on the command line; each replaces the file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--name`
    pub name: Option<DisplayName>,
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--socket`
    pub socket: Option<PathBuf>,
    /// `--log-level`
    pub log_level: Option<LogLevel>,
    /// `--audio-input`
    pub audio_input: Option<InputSpec>,
    /// `--audio-output`
    pub audio_output: Option<OutputSpec>,
    /// `--auto-answer`
    pub auto_answer: bool,
}

/// Where the configuration comes from: the file (as named on the command line,
/// or the default) and the flags on top. Kept so SIGHUP can read it again.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// `--config`, if given.
    pub explicit_path: Option<PathBuf>,
    /// The flags.
    pub overrides: Overrides,
}

impl ConfigSource {
    /// Reads the file and applies the flags. Returns the config and the file read.
    pub fn load(&self) -> Result<(Config, Option<PathBuf>), ConfigError> {
        let (mut config, path) = Config::load(self.explicit_path.as_deref())?;
        config.apply(self.overrides.clone());
        Ok((config, path))
    }
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` does not exist or cannot be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or a value is wrong.
    #[error("invalid config file {path}, {location}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// `key name at line N` (as much as is known).
        location: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// Where the config file is looked for when `--config` is not given.
pub fn default_config_path() -> Option<PathBuf> {
    project_dirs().map(|dirs| dirs.config_dir().join("voiced.toml"))
}

/// Where the daemon listens by default: `$XDG_RUNTIME_DIR/voicelink/voiced.sock`,
/// or a per-user folder in the temporary directory where there is no runtime dir
/// (macOS, or a session without `XDG_RUNTIME_DIR`).
pub fn default_socket_path() -> PathBuf {
    let runtime_dir =
        directories::BaseDirs::new().and_then(|dirs| dirs.runtime_dir().map(std::path::Path::to_path_buf));
    match runtime_dir {
        Some(dir) => dir.join("voicelink").join("voiced.sock"),
        None => std::env::temp_dir().join(format!("voicelink-{}", nix::unistd::getuid())).join("voiced.sock"),
    }
}

fn project_dirs() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("", "", "voicelink")
}

impl Config {
    /// Reads the config: the file given, or the default file if it exists, or the
    /// defaults. Returns the config and the file it came from.
    pub fn load(explicit: Option<&Path>) -> Result<(Config, Option<PathBuf>), ConfigError> {
        let path = match explicit {
            Some(path) => path.to_owned(),
            None => match default_config_path() {
                Some(path) if path.exists() => path,
                _ => return Ok((Config::default(), None)),
            },
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        let config = Config::parse(&text).map_err(|(location, message)| ConfigError::Invalid {
            path: path.clone(),
            location,
            message,
        })?;
        Ok((config, Some(path)))
    }

    /// Parses TOML text. The error is (where, what).
    pub fn parse(text: &str) -> Result<Config, (String, String)> {
        let deserializer =
            toml::de::Deserializer::parse(text).map_err(|e| (locate(text, &e, None), e.message().to_owned()))?;
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let key = (key != ".").then_some(key);
            (locate(text, e.inner(), key), e.inner().message().to_owned())
        })
    }

    /// Applies command-line flags.
    pub fn apply(&mut self, overrides: Overrides) {
        let Overrides { name, data_dir, socket, log_level, audio_input, audio_output, auto_answer } = overrides;
        if auto_answer {
            self.calls.auto_answer = AutoAnswer::Everyone;
        }
        self.name = name.unwrap_or(self.name.clone());
        self.data_dir = data_dir.or(self.data_dir.take());
        self.api.socket = socket.or(self.api.socket.take());
        self.log_level = log_level.unwrap_or(self.log_level.clone());
        self.audio.input = audio_input.unwrap_or(self.audio.input.clone());
        self.audio.output = audio_output.unwrap_or(self.audio.output.clone());
    }

    /// The data directory in effect.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| match project_dirs() {
            Some(dirs) => dirs.data_dir().to_owned(),
            None => PathBuf::from(".voicelink"),
        })
    }

    /// The control socket in effect.
    pub fn socket(&self) -> PathBuf {
        self.api.socket.clone().unwrap_or_else(default_socket_path)
    }

    /// The config with every default written out, as `--print-config` shows it.
    pub fn to_effective_toml(&self) -> String {
        let mut effective = self.clone();
        effective.data_dir = Some(self.data_dir());
        effective.api.socket = Some(self.socket());
        // Serializing plain data with string keys cannot fail.
        toml::to_string(&effective).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
    }
}

/// "key `a.b` at line N" from a TOML error's span.
fn locate(text: &str, error: &toml::de::Error, key: Option<String>) -> String {
    let line = error.span().map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    match (key, line) {
        (Some(key), Some(line)) => format!("key `{key}` at line {line}"),
        (Some(key), None) => format!("key `{key}`"),
        (None, Some(line)) => format!("line {line}"),
        (None, None) => "at an unknown place".into(),
    }
}

/// Where the TCP control API listens. A bare port means loopback, so opening
/// the API beyond this machine always takes an explicit address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, SerializeDisplay, DeserializeFromStr)]
pub struct TcpListen(pub SocketAddr);

impl FromStr for TcpListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(port) = s.parse::<u16>() {
            return Ok(TcpListen(SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port))));
        }
        s.parse().map(TcpListen).map_err(|_| format!("{s:?} is not PORT or HOST:PORT (e.g. 7700 or 127.0.0.1:7700)"))
    }
}

impl fmt::Display for TcpListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The host name as a display name; "voicelink" if it is not a valid one.
fn name_from_host() -> DisplayName {
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    // A host name is short ASCII in practice; fall back rather than fail.
    host.parse().unwrap_or_else(|_| DisplayName::fallback())
}

/// A tracing filter, checked when read.
#[derive(Debug, Clone, PartialEq, Eq, SerializeDisplay, DeserializeFromStr)]
pub struct LogLevel(String);

impl LogLevel {
    /// The filter text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LogLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const ALLOWED: &str =
            "use error, warn, info, debug, trace or off, or directives like info,voicelink_daemon=debug";
        // The filter syntax reads a bare word as a target to log at every level, so
        // a misspelt level ("loud", "warning") would silence everything else. A bare
        // word must be a level; targets take `=LEVEL`.
        for directive in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let bare_word = !directive.contains(['=', '[']);
            if bare_word && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
                return Err(format!("{directive:?} is not a log level; {ALLOWED}"));
            }
        }
        tracing_subscriber::EnvFilter::builder()
            .parse(s)
            .map(|_| LogLevel(s.to_owned()))
            .map_err(|e| format!("{e}; {ALLOWED}"))
    }
}

/// The level names a log filter accepts.
const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// A STUN server, `stun:HOST[:PORT]` (RFC 7064), checked when read.
#[derive(Debug, Clone, PartialEq, Eq, SerializeDisplay, DeserializeFromStr)]
pub struct StunServer(String);

impl FromStr for StunServer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = "write stun:HOST[:PORT], e.g. stun:stun.example.org:3478";
        let Some((scheme, rest)) = s.split_once(':') else {
            return Err(format!("{s:?} is not a STUN URL; {usage}"));
        };
        match scheme {
            "stun" => {}
            // webrtc-rs skips stuns: URLs when it gathers: accepted, it would do nothing.
            "stuns" => return Err(format!("{s:?}: STUN over TLS (stuns:) is not supported; {usage}")),
            "turn" | "turns" => {
                return Err(format!(
                    "{s:?} is a TURN server, which voiced does not use (on a LAN no relay is needed); {usage}"
                ));
            }
            _ => return Err(format!("{s:?} does not start with stun:; {usage}")),
        }
        if rest.starts_with("//") {
            return Err(format!("{s:?}: a STUN URL has no // after the scheme; {usage}"));
        }
        // `[v6]:port`, `host:port`, or a host alone.
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (address, after) = v6.split_once(']').ok_or_else(|| format!("{s:?}: no closing ]; {usage}"))?;
                if address.parse::<std::net::Ipv6Addr>().is_err() {
                    return Err(format!("{s:?}: {address:?} is not an IPv6 address; {usage}"));
                }
                (address, after.strip_prefix(':'))
            }
            None => match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            },
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty() && label.len() <= 63 && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !host_ok && !rest.starts_with('[') {
            return Err(format!("{s:?}: {host:?} is not a host name or address; {usage}"));
        }
        if let Some(port) = port
            && !port.parse::<u16>().is_ok_and(|p| p != 0)
        {
            return Err(format!("{s:?}: {port:?} is not a port (1-65535); {usage}"));
        }
        Ok(StunServer(s.to_owned()))
    }
}

impl Serialize for AutoAnswer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AutoAnswer {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Before the three settings it was a boolean; files that say so still read.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Flag(bool),
            Word(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Flag(true) => Ok(AutoAnswer::Everyone),
            Written::Flag(false) => Ok(AutoAnswer::Off),
            Written::Word(word) => word.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for WhoMayRing {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for WhoMayRing {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for StunServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_level_that_is_not_one_is_refused() {
        for good in ["info", "DEBUG", "warn,voicelink_daemon=trace", "off", "info,webrtc[peer]=debug"] {
            assert!(good.parse::<LogLevel>().is_ok(), "{good}");
        }
        for bad in ["loud", "warning", "info,verbose"] {
            let error = bad.parse::<LogLevel>().unwrap_err();
            assert!(error.contains("is not a log level") && error.contains("debug"), "{bad}: {error}");
        }
        let (location, message) = Config::parse("log_level = \"loud\"\n").unwrap_err();
        assert_eq!(location, "key `log_level` at line 1");
        assert!(message.contains("\"loud\" is not a log level"), "{message}");
    }

    #[test]
    fn stun_servers_must_be_stun_urls() {
        for good in ["stun:stun.example.org", "stun:stun.example.org:3478", "stun:10.0.0.1:5349", "stun:[fd00::1]:3478"]
        {
            assert!(good.parse::<StunServer>().is_ok(), "{good}");
        }
        for (bad, says) in [
            ("stun.example.org:3478", "does not start with stun:"),
            ("stun://stun.example.org", "no //"),
            ("turn:relay.example.org", "TURN"),
            ("stuns:stun.example.org", "not supported"),
            ("stun:stun.example.org:0", "not a port"),
            ("stun:stun.example.org:99999", "not a port"),
            ("stun:", "not a host"),
            ("stun:bad host", "not a host"),
            ("stun:[fd00::zz]:3478", "not an IPv6"),
        ] {
            let error = bad.parse::<StunServer>().unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
        let (location, _) = Config::parse("[calls]\nstun_servers = [\"stun:ok.example\", \"http://x\"]\n").unwrap_err();
        assert!(location.starts_with("key `calls.stun_servers"), "{location}");
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let config = Config::parse("").unwrap();
        assert_eq!(config, Config::default());
        assert!(config.discovery.enabled);
        assert_eq!(config.signaling.port, 0);
        assert_eq!(config.api.tcp_listen, None);
    }

    #[test]
    fn every_section_is_read() {
        let config = Config::parse(
            r#"
            name = "kitchen"
            data_dir = "/var/lib/vl"
            log_level = "debug"
            [api]
            socket = "/tmp/v.sock"
            tcp_listen = "127.0.0.1:7000"
            [signaling]
            port = 47000
            [discovery]
            enabled = false
            [audio]
            input = "tone:440"
            output = "file:/tmp/heard.wav"
            "#,
        )
        .unwrap();
        assert_eq!(config.name.as_str(), "kitchen");
        assert_eq!(config.data_dir(), PathBuf::from("/var/lib/vl"));
        assert_eq!(config.socket(), PathBuf::from("/tmp/v.sock"));
        assert_eq!(config.api.tcp_listen, Some(TcpListen("127.0.0.1:7000".parse().unwrap())));
        assert_eq!(config.signaling.port, 47000);
        assert!(!config.discovery.enabled);
        assert_eq!(config.audio.input, InputSpec::Tone(440));
        assert_eq!(config.audio.output, OutputSpec::File("/tmp/heard.wav".into()));
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let (location, message) = Config::parse("name = \"a\"\n[api]\nsockett = \"/x\"\n").unwrap_err();
        assert_eq!(location, "key `api.sockett` at line 3");
        assert!(message.contains("unknown field `sockett`"), "{message}");
        assert!(message.contains("socket"), "the allowed keys are listed: {message}");
    }

    #[test]
    fn a_bad_value_is_named_with_its_key_line_and_reason() {
        let (location, message) = Config::parse("\n\n[audio]\ninput = \"microphone\"\n").unwrap_err();
        assert_eq!(location, "key `audio.input` at line 4");
        assert!(message.contains("tone:HZ"), "{message}");

        let (location, message) = Config::parse("[signaling]\nport = 70000\n").unwrap_err();
        assert_eq!(location, "key `signaling.port` at line 2");
        assert!(message.contains("70000"), "{message}");

        let (location, message) = Config::parse(&format!("name = \"{}\"", "x".repeat(64))).unwrap_err();
        assert_eq!(location, "key `name` at line 1");
        assert!(message.contains("at most 63"), "{message}");

        let (location, message) = Config::parse("log_level = \"voicelink=loudest\"").unwrap_err();
        assert_eq!(location, "key `log_level` at line 1");
        assert!(message.contains("use error, warn, info"), "{message}");
    }

    #[test]
    fn a_bare_tcp_port_listens_on_loopback_only() {
        let config = Config::parse("[api]\ntcp_listen = \"7700\"").unwrap();
        assert_eq!(config.api.tcp_listen, Some(TcpListen("127.0.0.1:7700".parse().unwrap())));
        let config = Config::parse("[api]\ntcp_listen = \"[::]:7700\"").unwrap();
        assert_eq!(config.api.tcp_listen, Some(TcpListen("[::]:7700".parse().unwrap())));
        let (location, message) = Config::parse("[api]\ntcp_listen = \"everywhere\"").unwrap_err();
        assert_eq!(location, "key `api.tcp_listen` at line 2");
        assert!(message.contains("PORT or HOST:PORT"), "{message}");
    }

    #[test]
    fn call_settings_are_checked() {
        let config = Config::parse(
            "[calls]\nauto_answer = true\nframe_ms = 10\nbitrate_kbps = 64\nstun_servers = [\"stun:10.0.0.1:3478\"]\nallow_loopback = true\n[audio]\nloop_files = false\n",
        )
        .unwrap();
        assert_eq!(config.calls.auto_answer, AutoAnswer::Everyone, "the old boolean still reads");
        let words = Config::parse("[calls]\nauto_answer = \"trusted\"\nwho_may_ring = \"known\"\n").unwrap();
        assert_eq!((words.calls.auto_answer, words.calls.who_may_ring), (AutoAnswer::Trusted, WhoMayRing::Known));
        let (location, message) = Config::parse("[calls]\nwho_may_ring = \"friends\"\n").unwrap_err();
        assert_eq!(location, "key `calls.who_may_ring` at line 2");
        assert!(message.contains("everyone, known, trusted, nobody"), "{message}");
        assert_eq!(config.calls.stun_servers, ["stun:10.0.0.1:3478".parse::<StunServer>().unwrap()]);
        assert!(config.calls.allow_loopback);
        assert!(!config.audio.loop_files);
        assert!(Config::default().audio.loop_files, "files loop by default");
        assert_eq!(config.calls.frame_ms, FrameMs(10));
        let (location, message) = Config::parse("[calls]\nbitrate_kbps = 500\n").unwrap_err();
        assert_eq!(location, "key `calls.bitrate_kbps` at line 2");
        assert!(message.contains("between 12 and 128"), "{message}");
        let (_, message) = Config::parse("[calls]\nframe_ms = 30\n").unwrap_err();
        assert!(message.contains("use 10 or 20"), "{message}");
    }

    #[test]
    fn broken_toml_is_reported_with_its_line() {
        let (location, _) = Config::parse("name = \"a\"\nport = \n").unwrap_err();
        assert_eq!(location, "line 2");
    }

    #[test]
    fn flags_override_the_file_and_the_effective_config_round_trips() {
        let mut config = Config::parse("name = \"file-name\"\n[audio]\ninput = \"silence\"").unwrap();
        config.apply(Overrides {
            name: Some("flag-name".parse().unwrap()),
            socket: Some("/run/x.sock".into()),
            ..Overrides::default()
        });
        assert_eq!(config.name.as_str(), "flag-name");
        assert_eq!(config.socket(), PathBuf::from("/run/x.sock"));
        assert_eq!(config.audio.input, InputSpec::Silence, "not overridden, so the file's value stays");

        let printed = config.to_effective_toml();
        assert!(printed.contains("data_dir = "), "{printed}");
        let reparsed = Config::parse(&printed).unwrap();
        assert_eq!(reparsed.name, config.name);
        assert_eq!(reparsed.socket(), config.socket());
        assert_eq!(reparsed.audio, config.audio);
    }

    #[test]
    fn a_missing_explicit_file_is_an_error_naming_it() {
        let error = Config::load(Some(Path::new("/nonexistent/voiced.toml"))).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/voiced.toml"), "{error}");
    }
}
