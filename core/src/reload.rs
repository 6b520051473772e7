//! What a configuration reload (SIGHUP) changes. Pure: the old and the new config
//! in, the plan out. Names, the log level and auto-answer change at once, audio and
//! call settings for the calls that start afterwards; where the daemon listens and
//! who it is need a restart, and the plan keeps the old values
//! for those so that what the daemon reports stays true.

use crate::audio_spec::{InputSpec, OutputSpec, RingtoneSpec};
use crate::config::{CallsConfig, Config, DisplayName, LogLevel};
use crate::voice_processing::ProcessingChoice;

/// The settings a reload can change while the daemon runs, as published to the
/// tasks that use them (on a `watch` channel: only the latest value matters).
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSettings {
    /// The name peers see.
    pub display_name: DisplayName,
    /// Default audio input for new calls.
    pub audio_input: InputSpec,
    /// Default audio output for new calls.
    pub audio_output: OutputSpec,
    /// Loop `file:` inputs of new calls.
    pub loop_files: bool,
    /// How loud calls play, in per cent: calls in progress follow at once.
    pub output_volume: u32,
    /// How new calls ring.
    pub ringing: Ringing,
    /// Which voice processing stages a sound card's microphone gets: calls in
    /// progress follow at once.
    pub processing: ProcessingChoice,
    /// Call policy and codec settings: `auto_answer` at once, the rest for new calls.
    pub calls: CallsConfig,
}

impl LiveSettings {
    /// The live part of a config.
    pub fn of(config: &Config) -> Self {
        LiveSettings {
            display_name: config.name.clone(),
            audio_input: config.audio.input.clone(),
            audio_output: config.audio.output.clone(),
            loop_files: config.audio.loop_files,
            output_volume: config.audio.output_volume.0,
            ringing: Ringing {
                ringtone: config.audio.ringtone.clone(),
                ringback: config.audio.ringback,
                volume: config.audio.ring_volume.0,
            },
            processing: ProcessingChoice {
                echo_cancellation: config.audio.echo_cancellation,
                noise_suppression: config.audio.noise_suppression,
                gain_control: config.audio.gain_control,
            },
            calls: config.calls.clone(),
        }
    }
}

/// How calls ring: the ringtone of incoming calls and the ringing tone a caller
/// hears, both on a sound card only.
#[derive(Debug, Clone, PartialEq)]
pub struct Ringing {
    /// What an incoming call rings with.
    pub ringtone: RingtoneSpec,
    /// The caller hears a ringing tone while the peer rings.
    pub ringback: bool,
    /// How loud, in per cent.
    pub volume: u32,
}

/// The changes a new config asks for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReloadPlan {
    /// A new display name to advertise.
    pub display_name: Option<DisplayName>,
    /// New default audio endpoints for calls that start from now on.
    pub audio: Option<(InputSpec, OutputSpec)>,
    /// A new log filter.
    pub log_level: Option<LogLevel>,
    /// Keys that changed but only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
    /// The config now in force: the new one, with the restart-only keys as before.
    pub applied: Config,
}

impl ReloadPlan {
    /// Compares the config in force with the one just read.
    pub fn between(current: &Config, new: &Config) -> ReloadPlan {
        let mut applied = new.clone();
        let mut needs_restart = Vec::new();
        // Restart-only keys: keep what is in force, and say which changed.
        macro_rules! keep {
            ($($field:ident).+, $key:literal) => {
                if current.$($field).+ != new.$($field).+ {
                    needs_restart.push($key);
                    applied.$($field).+ = current.$($field).+.clone();
                }
            };
        }
        keep!(data_dir, "data_dir");
        keep!(api.socket, "api.socket");
        keep!(api.tcp_listen, "api.tcp_listen");
        keep!(signaling.port, "signaling.port");
        keep!(discovery.enabled, "discovery.enabled");
        keep!(history.keep_days, "history.keep_days");
        keep!(history.keep_calls, "history.keep_calls");

        let endpoints = |c: &Config| (c.audio.input.clone(), c.audio.output.clone());
        let audio = (endpoints(current) != endpoints(new)).then(|| endpoints(new));
        ReloadPlan {
            display_name: (current.name != new.name).then(|| new.name.clone()),
            audio,
            log_level: (current.log_level != new.log_level).then(|| new.log_level.clone()),
            needs_restart,
            applied,
        }
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.display_name.is_none() && self.audio.is_none() && self.log_level.is_none() && self.needs_restart.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    #[test]
    fn the_same_config_changes_nothing() {
        let c = config("name = \"a\"");
        let plan = ReloadPlan::between(&c, &c);
        assert!(plan.is_empty());
        assert_eq!(plan.applied, c);
    }

    #[test]
    fn name_audio_and_log_level_change_live() {
        let old = config("name = \"a\"");
        let new = config("name = \"b\"\nlog_level = \"debug\"\n[audio]\ninput = \"tone:440\"\n");
        let plan = ReloadPlan::between(&old, &new);
        assert_eq!(plan.display_name, Some("b".parse().unwrap()));
        assert_eq!(plan.audio, Some((InputSpec::Tone(440), OutputSpec::Default)));
        assert_eq!(plan.log_level, Some("debug".parse().unwrap()));
        assert!(plan.needs_restart.is_empty());
        assert_eq!(plan.applied, new);
    }

    #[test]
    fn listeners_and_identity_wait_for_a_restart_and_keep_their_values() {
        let old = config("name = \"a\"\n[signaling]\nport = 4000\n");
        let new = config(
            "name = \"b\"\ndata_dir = \"/elsewhere\"\n[signaling]\nport = 5000\n[api]\ntcp_listen = \"7700\"\n[discovery]\nenabled = false\n",
        );
        let plan = ReloadPlan::between(&old, &new);
        assert_eq!(plan.needs_restart, ["data_dir", "api.tcp_listen", "signaling.port", "discovery.enabled"]);
        assert_eq!(plan.applied.signaling.port, 4000);
        assert_eq!(plan.applied.data_dir, None);
        assert_eq!(plan.applied.api.tcp_listen, None);
        assert!(plan.applied.discovery.enabled);
        assert_eq!(plan.applied.name.as_str(), "b", "the live part still applies");
    }
}
