//! The small language that names an audio endpoint (DESIGN.md, "Audio endpoints"):
//! a sound card, a WAV file, a tone, silence, or the echo of the far end.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde_with::{DeserializeFromStr, SerializeDisplay};

use crate::vocab::excerpt;

/// Highest tone we accept: well inside the 24 kHz Nyquist limit of 48 kHz audio.
const MAX_TONE_HZ: u32 = 20_000;

/// Where a call's outgoing audio comes from.
#[derive(Debug, Clone, PartialEq, SerializeDisplay, DeserializeFromStr)]
pub enum InputSpec {
    /// The system's default capture device.
    Default,
    /// A capture device by name (as `voicectl devices` lists it).
    Device(String),
    /// A WAV file, played in real time.
    File(PathBuf),
    /// A sine tone of this frequency in hertz.
    Tone(u32),
    /// Digital silence.
    Silence,
    /// What the peer sends us, sent straight back (an echo-test peer).
    Echo,
}

impl InputSpec {
    /// A microphone (the default one or a named one): what voice processing is
    /// for; not a file, a tone, silence or the echo of the peer.
    pub fn is_sound_card(&self) -> bool {
        matches!(self, InputSpec::Default | InputSpec::Device(_))
    }
}

/// Where a call's incoming audio goes.
#[derive(Debug, Clone, PartialEq, SerializeDisplay, DeserializeFromStr)]
pub enum OutputSpec {
    /// The system's default playback device.
    Default,
    /// A playback device by name.
    Device(String),
    /// A WAV file that records what is heard.
    File(PathBuf),
    /// Discarded.
    Null,
}

/// Why a string is not an endpoint spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid audio {side} {given:?}: {problem}")]
pub struct SpecError {
    side: &'static str,
    given: String,
    problem: String,
}

const INPUT_FORMS: &str = "use default, device:NAME, file:PATH.wav, tone:HZ, silence or echo";
const OUTPUT_FORMS: &str = "use default, device:NAME, file:PATH.wav or null";

/// The longest spec: a path as long as Linux allows (PATH_MAX) and its prefix.
pub const MAX_SPEC_BYTES: usize = 4096 + 8;

/// Splits `kind:value`, refusing an empty value and a spec longer than any path.
fn split<'a>(given: &'a str, side: &'static str) -> Result<(&'a str, Option<&'a str>), SpecError> {
    if given.len() > MAX_SPEC_BYTES {
        let problem = format!("it is {} bytes long; at most {MAX_SPEC_BYTES}", given.len());
        return Err(SpecError { side, given: excerpt(given), problem });
    }
    match given.split_once(':') {
        None => Ok((given, None)),
        Some((kind, "")) => {
            Err(SpecError { side, given: given.into(), problem: format!("{kind}: needs a value after the colon") })
        }
        Some((kind, value)) => Ok((kind, Some(value))),
    }
}

impl FromStr for InputSpec {
    type Err = SpecError;

    fn from_str(given: &str) -> Result<Self, Self::Err> {
        let error = |problem: String| SpecError { side: "input", given: given.into(), problem };
        match split(given.trim(), "input")? {
            ("default", None) => Ok(InputSpec::Default),
            ("silence", None) => Ok(InputSpec::Silence),
            ("echo", None) => Ok(InputSpec::Echo),
            ("device", Some(name)) => Ok(InputSpec::Device(name.into())),
            ("file", Some(path)) => Ok(InputSpec::File(path.into())),
            ("tone", Some(hz)) => match hz.parse::<u32>() {
                Ok(hz @ 1..=MAX_TONE_HZ) => Ok(InputSpec::Tone(hz)),
                _ => Err(error(format!("the tone must be a whole number of hertz from 1 to {MAX_TONE_HZ}"))),
            },
            _ => Err(error(INPUT_FORMS.into())),
        }
    }
}

impl FromStr for OutputSpec {
    type Err = SpecError;

    fn from_str(given: &str) -> Result<Self, Self::Err> {
        match split(given.trim(), "output")? {
            ("default", None) => Ok(OutputSpec::Default),
            ("null", None) => Ok(OutputSpec::Null),
            ("device", Some(name)) => Ok(OutputSpec::Device(name.into())),
            ("file", Some(path)) => Ok(OutputSpec::File(path.into())),
            _ => Err(SpecError { side: "output", given: given.into(), problem: OUTPUT_FORMS.into() }),
        }
    }
}

impl fmt::Display for InputSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputSpec::Default => f.write_str("default"),
            InputSpec::Device(name) => write!(f, "device:{name}"),
            InputSpec::File(path) => write!(f, "file:{}", path.display()),
            InputSpec::Tone(hz) => write!(f, "tone:{hz}"),
            InputSpec::Silence => f.write_str("silence"),
            InputSpec::Echo => f.write_str("echo"),
        }
    }
}

impl fmt::Display for OutputSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputSpec::Default => f.write_str("default"),
            OutputSpec::Device(name) => write!(f, "device:{name}"),
            OutputSpec::File(path) => write!(f, "file:{}", path.display()),
            OutputSpec::Null => f.write_str("null"),
        }
    }
}

/// What an incoming call rings with.
#[derive(Debug, Clone, PartialEq, SerializeDisplay, DeserializeFromStr)]
pub enum RingtoneSpec {
    /// The built-in chime.
    Builtin,
    /// A WAV file (any rate, mono or more channels), looped.
    File(PathBuf),
    /// Silence: nothing rings.
    Off,
}

const RINGTONE_FORMS: &str = "use builtin, file:PATH.wav or off";

impl FromStr for RingtoneSpec {
    type Err = SpecError;

    fn from_str(given: &str) -> Result<Self, Self::Err> {
        match split(given.trim(), "ringtone")? {
            ("builtin", None) => Ok(RingtoneSpec::Builtin),
            ("off", None) => Ok(RingtoneSpec::Off),
            ("file", Some(path)) => Ok(RingtoneSpec::File(path.into())),
            _ => Err(SpecError { side: "ringtone", given: excerpt(given), problem: RINGTONE_FORMS.into() }),
        }
    }
}

impl fmt::Display for RingtoneSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingtoneSpec::Builtin => f.write_str("builtin"),
            RingtoneSpec::File(path) => write!(f, "file:{}", path.display()),
            RingtoneSpec::Off => f.write_str("off"),
        }
    }
}

impl OutputSpec {
    /// A sound card (the default one or a named one), where ringing is heard;
    /// not a file or nothing.
    pub fn is_sound_card(&self) -> bool {
        matches!(self, OutputSpec::Default | OutputSpec::Device(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_form_parses_and_prints_back() {
        for text in ["default", "device:USB Audio", "file:/tmp/a.wav", "tone:440", "silence", "echo"] {
            let spec: InputSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
        assert_eq!("tone:880".parse::<InputSpec>(), Ok(InputSpec::Tone(880)));
    }

    #[test]
    fn every_output_form_parses_and_prints_back() {
        for text in ["default", "device:hw:1", "file:/tmp/out.wav", "null"] {
            let spec: OutputSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
        // A device name may itself contain colons.
        assert_eq!("device:hw:1".parse::<OutputSpec>(), Ok(OutputSpec::Device("hw:1".into())));
    }

    #[test]
    fn bad_specs_say_what_is_accepted() {
        let error = "mic".parse::<InputSpec>().unwrap_err().to_string();
        assert!(error.contains("\"mic\"") && error.contains("tone:HZ"), "{error}");
        let error = "tone:0".parse::<InputSpec>().unwrap_err().to_string();
        assert!(error.contains("1 to 20000"), "{error}");
        let error = "tone:abc".parse::<InputSpec>().unwrap_err().to_string();
        assert!(error.contains("whole number"), "{error}");
        let error = "file:".parse::<OutputSpec>().unwrap_err().to_string();
        assert!(error.contains("needs a value"), "{error}");
        let huge = format!("file:/{}.wav", "x".repeat(1 << 20));
        let error = huge.parse::<OutputSpec>().unwrap_err().to_string();
        assert!(error.len() < 300 && error.contains("at most 4104"), "{error}");
        // echo is an input (what we send), not an output.
        assert!("echo".parse::<OutputSpec>().is_err());
    }

    #[test]
    fn ringtones_are_builtin_a_file_or_off() {
        assert_eq!("builtin".parse(), Ok(RingtoneSpec::Builtin));
        assert_eq!(" off ".parse(), Ok(RingtoneSpec::Off));
        assert_eq!("file:/a/ring.wav".parse(), Ok(RingtoneSpec::File("/a/ring.wav".into())));
        let error = "loud".parse::<RingtoneSpec>().unwrap_err().to_string();
        assert!(error.contains("use builtin, file:PATH.wav or off"), "{error}");
        for spec in ["builtin", "off", "file:/x.wav"] {
            assert_eq!(spec.parse::<RingtoneSpec>().unwrap().to_string(), spec);
        }
        assert!(OutputSpec::Default.is_sound_card() && OutputSpec::Device("hw".into()).is_sound_card());
        assert!(!OutputSpec::Null.is_sound_card() && !OutputSpec::File("a.wav".into()).is_sound_card());
        assert!(InputSpec::Default.is_sound_card() && InputSpec::Device("usb".into()).is_sound_card());
        assert!(
            ![InputSpec::Tone(440), InputSpec::Silence, InputSpec::Echo, InputSpec::File("a.wav".into())]
                .iter()
                .any(InputSpec::is_sound_card)
        );
    }
}
