//! Every key of `voiced.toml`: what it is, its default, and when a change takes
//! effect. One table serves the manual page (`voiced.toml(5)`), `voicectl config
//! get/set`, and the edit of the file that `set` makes (comments and layout kept,
//! the result checked exactly as the daemon reads the file). Pure: text in, text out.

use std::fmt;

use crate::config::Config;

/// When a changed key takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// At once (a name advertised again, a log filter swapped, a policy changed).
    Live,
    /// For calls that start afterwards; calls in progress keep their settings.
    NewCalls,
    /// After voiced restarts: where it listens and who it is.
    Restart,
}

impl fmt::Display for Applies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Applies::Live => "at once",
            Applies::NewCalls => "for new calls",
            Applies::Restart => "after a restart",
        })
    }
}

/// The TOML type of a key's value, for reading what a user types on a command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string: typed bare (`kitchen`) or quoted.
    Text,
    /// A whole number.
    Integer,
    /// `true` or `false`.
    Bool,
    /// A list of strings: a TOML array, or items separated by commas.
    TextList,
}

/// One key of the config file.
#[derive(Debug)]
pub struct ConfigKey {
    /// Dotted: `calls.ring_timeout_secs`.
    pub key: &'static str,
    /// Its value's type.
    pub kind: Kind,
    /// The default, as written in the file (or how it is found).
    pub default: &'static str,
    /// When a change applies.
    pub applies: Applies,
    /// What it does and what it allows.
    pub doc: &'static str,
    /// The command-line flag of `voiced` that overrides it, if any.
    pub flag: Option<&'static str>,
}

/// Every key, in the file's order.
pub const KEYS: &[ConfigKey] = &[
    ConfigKey {
        key: "name",
        kind: Kind::Text,
        default: "the host name",
        applies: Applies::Live,
        doc: "The name peers see: 1-63 bytes of UTF-8.",
        flag: Some("--name"),
    },
    ConfigKey {
        key: "data_dir",
        kind: Kind::Text,
        default: "$XDG_DATA_HOME/voicelink",
        applies: Applies::Restart,
        doc: "Where the device identity (device-key.pem, device-cert.pem) and the API token live.",
        flag: Some("--data-dir"),
    },
    ConfigKey {
        key: "log_level",
        kind: Kind::Text,
        default: "\"info\"",
        applies: Applies::Live,
        doc: "A level (error, warn, info, debug, trace, off) or directives like \"info,voicelink_daemon=debug\". \
              RUST_LOG outranks it too.",
        flag: Some("--log-level"),
    },
    ConfigKey {
        key: "api.socket",
        kind: Kind::Text,
        default: "$XDG_RUNTIME_DIR/voicelink/voiced.sock",
        applies: Applies::Restart,
        doc: "The control socket (0600, in a 0700 folder).",
        flag: Some("--socket"),
    },
    ConfigKey {
        key: "api.tcp_listen",
        kind: Kind::Text,
        default: "not set (no TCP listener)",
        applies: Applies::Restart,
        doc: "An extra TCP listener for the API: PORT (on 127.0.0.1 only) or HOST:PORT. Every request on it \
              must carry the token from data_dir/api-token.",
        flag: None,
    },
    ConfigKey {
        key: "signaling.port",
        kind: Kind::Integer,
        default: "0",
        applies: Applies::Restart,
        doc: "TCP port for calls from peers; 0 takes any free port (peers learn it by mDNS). Fix it to be \
              reachable as host:port.",
        flag: None,
    },
    ConfigKey {
        key: "discovery.enabled",
        kind: Kind::Bool,
        default: "true",
        applies: Applies::Restart,
        doc: "Advertise this device and find peers by mDNS. Off, peers are dialed by address.",
        flag: None,
    },
    ConfigKey {
        key: "audio.input",
        kind: Kind::Text,
        default: "\"default\"",
        applies: Applies::NewCalls,
        doc: "What calls send: default, device:NAME, file:PATH.wav, tone:HZ, silence, echo.",
        flag: Some("--audio-input"),
    },
    ConfigKey {
        key: "audio.output",
        kind: Kind::Text,
        default: "\"default\"",
        applies: Applies::NewCalls,
        doc: "Where what calls receive goes: default, device:NAME, file:PATH.wav, null.",
        flag: Some("--audio-output"),
    },
    ConfigKey {
        key: "audio.loop_files",
        kind: Kind::Bool,
        default: "true",
        applies: Applies::NewCalls,
        doc: "A file: input starts again at its end (otherwise silence follows).",
        flag: None,
    },
    ConfigKey {
        key: "audio.output_volume",
        kind: Kind::Integer,
        default: "100",
        applies: Applies::Live,
        doc: "How loud calls play, in per cent of what is received (0-200; above 100 amplifies, clipping \
              at full scale). Calls in progress follow at once; recordings keep what was received.",
        flag: None,
    },
    ConfigKey {
        key: "audio.ringtone",
        kind: Kind::Text,
        default: "\"builtin\"",
        applies: Applies::NewCalls,
        doc: "What an incoming call rings with on the sound card: builtin (a chime), file:PATH.wav (looped) \
              or off. Nothing rings on a file or null output, for a call answered at once, or with \
              do-not-disturb (such calls are declined).",
        flag: None,
    },
    ConfigKey {
        key: "audio.ringback",
        kind: Kind::Bool,
        default: "true",
        applies: Applies::NewCalls,
        doc: "While the peer rings, the caller hears a ringing tone (425 Hz, 1 s in 5) on the sound card, \
              made here: nothing is sent before the answer.",
        flag: None,
    },
    ConfigKey {
        key: "audio.ring_volume",
        kind: Kind::Integer,
        default: "50",
        applies: Applies::NewCalls,
        doc: "How loud the ringtone and the ringing tone are, in per cent (0-100).",
        flag: None,
    },
    ConfigKey {
        key: "audio.echo_cancellation",
        kind: Kind::Bool,
        default: "true",
        applies: Applies::Live,
        doc: "Remove what the speaker plays from what a sound card's microphone hears (WebRTC's AEC3). \
              Files, tones and echo inputs are never processed. Calls in progress follow at once.",
        flag: None,
    },
    ConfigKey {
        key: "audio.noise_suppression",
        kind: Kind::Bool,
        default: "true",
        applies: Applies::Live,
        doc: "Attenuate steady background noise (fans, hum) on a sound card's microphone. Calls in \
              progress follow at once.",
        flag: None,
    },
    ConfigKey {
        key: "audio.gain_control",
        kind: Kind::Bool,
        default: "true",
        applies: Applies::Live,
        doc: "Bring a quiet or loud sound-card microphone to a steady speech level. Calls in progress \
              follow at once.",
        flag: None,
    },
    ConfigKey {
        key: "calls.auto_answer",
        kind: Kind::Text,
        default: "\"off\"",
        applies: Applies::Live,
        doc: "Which calls are answered at once: off, trusted (trusted devices' calls), everyone (bots, \
              intercoms, an echo peer). true and false read as everyone and off.",
        flag: Some("--auto-answer"),
    },
    ConfigKey {
        key: "calls.who_may_ring",
        kind: Kind::Text,
        default: "\"everyone\"",
        applies: Applies::Live,
        doc: "Who may ring: everyone (blocked devices excepted), known (devices this one has had a call \
              with, or named), trusted, nobody (do-not-disturb). A refused caller is told why.",
        flag: None,
    },
    ConfigKey {
        key: "calls.call_waiting",
        kind: Kind::Bool,
        default: "false",
        applies: Applies::Live,
        doc: "Call waiting: a call that comes in during another rings softly, and answering it holds the \
              other call (or merges the two into a group call: voicectl answer --merge). Off, the caller \
              hears busy.",
        flag: None,
    },
    ConfigKey {
        key: "calls.do_not_disturb",
        kind: Kind::Bool,
        default: "false",
        applies: Applies::Live,
        doc: "Do-not-disturb: nobody rings (callers are told so); calls.who_may_ring applies again when it \
              is turned off.",
        flag: None,
    },
    ConfigKey {
        key: "calls.ring_timeout_secs",
        kind: Kind::Integer,
        default: "30",
        applies: Applies::NewCalls,
        doc: "Seconds a call rings before it ends as \"no answer\": 5-600.",
        flag: None,
    },
    ConfigKey {
        key: "calls.frame_ms",
        kind: Kind::Integer,
        default: "20",
        applies: Applies::NewCalls,
        doc: "Opus frame length in milliseconds: 10 or 20.",
        flag: None,
    },
    ConfigKey {
        key: "calls.bitrate_kbps",
        kind: Kind::Integer,
        default: "48",
        applies: Applies::NewCalls,
        doc: "Opus target bitrate in kb/s on a clear link: 12-128.",
        flag: None,
    },
    ConfigKey {
        key: "calls.min_bitrate_kbps",
        kind: Kind::Integer,
        default: "16",
        applies: Applies::NewCalls,
        doc: "The least the bitrate comes down to under congestion, in kb/s: 12-128.",
        flag: None,
    },
    ConfigKey {
        key: "calls.dtx",
        kind: Kind::Bool,
        default: "false",
        applies: Applies::NewCalls,
        doc: "Discontinuous transmission: send almost nothing while silent.",
        flag: None,
    },
    ConfigKey {
        key: "calls.stun_servers",
        kind: Kind::TextList,
        default: "[]",
        applies: Applies::NewCalls,
        doc: "STUN servers (stun:HOST[:PORT]) for server-reflexive candidates; none is needed on a LAN.",
        flag: None,
    },
    ConfigKey {
        key: "calls.allow_loopback",
        kind: Kind::Bool,
        default: "false",
        applies: Applies::NewCalls,
        doc: "Also offer 127.0.0.1 and ::1 media candidates (two daemons on one host).",
        flag: None,
    },
    ConfigKey {
        key: "calls.reconnect_timeout_secs",
        kind: Kind::Integer,
        default: "40",
        applies: Applies::NewCalls,
        doc: "Seconds an answered call whose link went silent waits (\"reconnecting\") before it ends as \
              \"peer lost\": 5-300.",
        flag: None,
    },
    ConfigKey {
        key: "history.keep_days",
        kind: Kind::Integer,
        default: "365",
        applies: Applies::Restart,
        doc: "Days a call stays in the history: 1-36500.",
        flag: None,
    },
    ConfigKey {
        key: "history.keep_calls",
        kind: Kind::Integer,
        default: "10000",
        applies: Applies::Restart,
        doc: "Calls the history keeps at most (the oldest go first): 10-1000000.",
        flag: None,
    },
];

/// Why a key cannot be read or set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// No such key.
    #[error("there is no config key {key:?}; the keys are: {known}")]
    UnknownKey {
        /// What was asked for.
        key: String,
        /// Every key, comma-separated.
        known: String,
    },
    /// The value does not fit the key's type.
    #[error("{key}: {message}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// The file as it is cannot be edited: it is not TOML.
    #[error("the config file is not valid TOML ({0}); fix it by hand first")]
    Unreadable(String),
    /// The edited file would not be accepted by the daemon.
    #[error("{key}: {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// The daemon's reason, as for a file it reads.
        message: String,
    },
}

/// The key named `key`.
pub fn find(key: &str) -> Result<&'static ConfigKey, EditError> {
    KEYS.iter().find(|k| k.key == key).ok_or_else(|| EditError::UnknownKey {
        // Bounded: a key is echoed only as far as a real one could be long.
        key: key.chars().take(64).collect(),
        known: KEYS.iter().map(|k| k.key).collect::<Vec<_>>().join(", "),
    })
}

/// The value of `key` in `config` as TOML text (`"kitchen"`, `30`, `[]`), or
/// `None` where it is not set.
pub fn value_of(config: &Config, key: &ConfigKey) -> Option<String> {
    let table = toml::Value::try_from(config).ok()?;
    let value = key.key.split('.').try_fold(&table, |value, part| value.get(part))?;
    Some(value.to_string())
}

/// `text` (a config file) with `key` set to `value`, or removed (back to its
/// default) when `value` is `None`. Comments and layout are kept; the result is
/// checked as the daemon reads a file, so an edit the daemon would refuse is never
/// written.
pub fn edit(text: &str, key: &ConfigKey, value: Option<&str>) -> Result<String, EditError> {
    let mut document: toml_edit::DocumentMut =
        text.parse().map_err(|e: toml_edit::TomlError| EditError::Unreadable(e.message().to_owned()))?;
    let (tables, name) = match key.key.rsplit_once('.') {
        Some((table, name)) => (Some(table), name),
        None => (None, key.key),
    };
    // `[calls]`, `calls.dtx = …` and `calls = { dtx = … }` are all tables here.
    let root: &mut dyn toml_edit::TableLike = document.as_table_mut();
    let table = match tables {
        None => root,
        Some(section) => root
            .entry(section)
            .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()))
            .as_table_like_mut()
            .ok_or_else(|| EditError::Invalid {
                key: key.key,
                message: format!("{section} is not a table in the file; fix it by hand first"),
            })?,
    };
    match value {
        Some(value) => {
            let parsed = typed_value(key, value)?;
            match table.get_mut(name).and_then(toml_edit::Item::as_value_mut) {
                // Keep the comment after the old value.
                Some(existing) => {
                    let decor = existing.decor().clone();
                    *existing = parsed;
                    *existing.decor_mut() = decor;
                }
                None => {
                    table.insert(name, toml_edit::Item::Value(parsed));
                }
            }
        }
        None => {
            table.remove(name);
        }
    }
    // A section left empty by an unset goes too, unless it holds comments.
    if let Some(path) = tables
        && let Some(emptied) = document.get(path).and_then(toml_edit::Item::as_table)
        && emptied.is_empty()
        && emptied.decor().prefix().and_then(toml_edit::RawString::as_str).is_none_or(|p| p.trim().is_empty())
    {
        document.remove(path);
    }
    let edited = document.to_string();
    Config::parse(&edited).map_err(|(_, message)| EditError::Invalid { key: key.key, message })?;
    Ok(edited)
}

/// The longest value `set` takes (a path is the longest sensible one).
pub const MAX_VALUE_BYTES: usize = 4096;

/// What the user typed, as a TOML value of the key's type.
fn typed_value(key: &ConfigKey, typed: &str) -> Result<toml_edit::Value, EditError> {
    let bad = |message: String| EditError::BadValue { key: key.key, message };
    if typed.len() > MAX_VALUE_BYTES {
        return Err(bad(format!("the value is {} bytes long; at most {MAX_VALUE_BYTES} are allowed", typed.len())));
    }
    let typed = typed.trim();
    match key.kind {
        Kind::Text => {
            // Quoted: TOML's own string syntax; bare: the text itself.
            if typed.starts_with(['"', '\'']) {
                match typed.parse::<toml_edit::Value>() {
                    Ok(value @ toml_edit::Value::String(_)) => Ok(value),
                    _ => Err(bad(format!("{typed} is not a quoted string"))),
                }
            } else {
                Ok(typed.into())
            }
        }
        Kind::Integer => {
            typed.parse::<i64>().map(Into::into).map_err(|_| bad(format!("{typed:?} is not a whole number")))
        }
        Kind::Bool => match typed {
            "true" | "on" | "yes" => Ok(true.into()),
            "false" | "off" | "no" => Ok(false.into()),
            _ => Err(bad(format!("{typed:?} is not true or false"))),
        },
        Kind::TextList => {
            if typed.starts_with('[') {
                return match typed.parse::<toml_edit::Value>() {
                    Ok(value @ toml_edit::Value::Array(_)) => Ok(value),
                    _ => Err(bad(format!("{typed} is not a TOML array of strings"))),
                };
            }
            let items = typed.split(',').map(str::trim).filter(|item| !item.is_empty());
            Ok(toml_edit::Value::Array(items.collect()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reload::ReloadPlan;

    /// A value of the right type for each key, different from its default.
    fn example(key: &ConfigKey) -> &'static str {
        match key.key {
            "name" => "kitchen",
            "data_dir" => "/var/lib/voicelink",
            "log_level" => "debug",
            "api.socket" => "/tmp/v.sock",
            "api.tcp_listen" => "7700",
            "signaling.port" => "47000",
            "audio.input" => "tone:440",
            "audio.output" => "null",
            "audio.output_volume" => "50",
            "audio.ringtone" => "off",
            "audio.ring_volume" => "20",
            "calls.ring_timeout_secs" => "45",
            "calls.auto_answer" => "trusted",
            "calls.who_may_ring" => "nobody",
            "calls.frame_ms" => "10",
            "calls.bitrate_kbps" => "64",
            "calls.min_bitrate_kbps" => "24",
            "calls.stun_servers" => "stun:stun.example.org:3478",
            "calls.reconnect_timeout_secs" => "60",
            "history.keep_days" => "30",
            "history.keep_calls" => "500",
            "discovery.enabled"
            | "audio.loop_files"
            | "audio.ringback"
            | "audio.echo_cancellation"
            | "audio.noise_suppression"
            | "audio.gain_control" => "false",
            "calls.do_not_disturb" => "true",
            _ => "true",
        }
    }

    #[test]
    fn the_table_names_every_key_the_daemon_reads_and_says_truly_when_each_applies() {
        // Every key of the effective config is in the table, and no other.
        let effective = Config::default().to_effective_toml();
        let mut printed = Vec::new();
        let mut section = String::new();
        for line in effective.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = format!("{name}.");
            } else if let Some((key, _)) = line.split_once(" = ") {
                printed.push(format!("{section}{key}"));
            }
        }
        printed.push("api.tcp_listen".into()); // not printed while unset
        printed.sort();
        let mut known: Vec<_> = KEYS.iter().map(|k| k.key.to_owned()).collect();
        known.sort();
        assert_eq!(printed, known);

        // A change to each key is a restart exactly where the table says so.
        for key in KEYS {
            let text = edit("", key, Some(example(key))).unwrap_or_else(|e| panic!("{}: {e}", key.key));
            let changed = Config::parse(&text).unwrap();
            let plan = ReloadPlan::between(&Config::default(), &changed);
            assert_eq!(plan.needs_restart.contains(&key.key), key.applies == Applies::Restart, "{}", key.key);
            assert_ne!(value_of(&changed, key), value_of(&Config::default(), key), "{}", key.key);
        }
    }

    #[test]
    fn an_edit_keeps_comments_and_other_keys() {
        let text = "# my daemon\nname = \"old\" # the kitchen one\n\n[calls]\n# rings long\nring_timeout_secs = 60\n";
        let edited = edit(text, find("name").unwrap(), Some("new")).unwrap();
        assert_eq!(
            edited,
            "# my daemon\nname = \"new\" # the kitchen one\n\n[calls]\n# rings long\nring_timeout_secs = 60\n"
        );
        let edited = edit(&edited, find("calls.dtx").unwrap(), Some("on")).unwrap();
        assert!(edited.ends_with("ring_timeout_secs = 60\ndtx = true\n"), "{edited}");
        let edited = edit(&edited, find("calls.ring_timeout_secs").unwrap(), None).unwrap();
        assert!(!edited.contains("ring_timeout_secs"), "{edited}");
        let emptied = edit("name = \"a\"\n[calls]\ndtx = true\n", find("calls.dtx").unwrap(), None).unwrap();
        assert_eq!(emptied, "name = \"a\"\n", "an emptied section goes");
        assert!(edited.contains("# my daemon") && edited.contains("dtx = true"), "{edited}");
        // Inline and dotted tables are tables too.
        let inline = edit("calls = { dtx = true }\n", find("calls.ring_timeout_secs").unwrap(), Some("50")).unwrap();
        assert_eq!(Config::parse(&inline).unwrap().calls.ring_timeout_secs.0, 50, "{inline}");
        let dotted = edit("calls.dtx = true\n", find("calls.frame_ms").unwrap(), Some("10")).unwrap();
        assert_eq!(Config::parse(&dotted).unwrap().calls.frame_ms.0, 10, "{dotted}");
        // A section that did not exist is made.
        let edited = edit("", find("signaling.port").unwrap(), Some("4000")).unwrap();
        assert_eq!(Config::parse(&edited).unwrap().signaling.port, 4000);
    }

    #[test]
    fn values_are_read_by_the_keys_type() {
        let config = |text: &str| Config::parse(text).unwrap();
        let set = |key: &str, value: &str| edit("", find(key).unwrap(), Some(value));
        assert_eq!(config(&set("name", "\"quoted name\"").unwrap()).name.as_str(), "quoted name");
        assert_eq!(config(&set("name", "42").unwrap()).name.as_str(), "42", "a bare value of a text key is text");
        let servers = config(&set("calls.stun_servers", "stun:a.example, stun:b.example:3478").unwrap());
        assert_eq!(servers.calls.stun_servers.len(), 2);
        assert!(config(&set("calls.stun_servers", "").unwrap()).calls.stun_servers.is_empty());
        assert_eq!(config(&set("calls.stun_servers", "[\"stun:c.example\"]").unwrap()).calls.stun_servers.len(), 1);
    }

    #[test]
    fn a_value_the_daemon_would_refuse_is_never_written() {
        let set = |key: &str, value: &str| edit("", find(key).unwrap(), Some(value)).unwrap_err().to_string();
        assert!(set("calls.ring_timeout_secs", "soon").contains("is not a whole number"));
        assert!(set("calls.ring_timeout_secs", "2").contains("5"), "{}", set("calls.ring_timeout_secs", "2"));
        assert!(set("calls.dtx", "maybe").contains("true or false"));
        assert!(set("log_level", "loud").contains("is not a log level"));
        assert!(set("calls.stun_servers", "http://x").contains("stun:"));
        let unknown = find("calls.ringtone").unwrap_err().to_string();
        assert!(unknown.contains("calls.ring_timeout_secs"), "{unknown}");
        let long = "k".repeat(100_000);
        assert!(find(&long).unwrap_err().to_string().len() < 1_000, "unbounded input is not echoed");
        assert!(set("calls.dtx", &long).len() < 1_000, "nor an unbounded value");
        let broken = edit("name = ", find("name").unwrap(), Some("x")).unwrap_err();
        assert!(matches!(broken, EditError::Unreadable(_)), "{broken}");
    }
}
