//! The daemon's log filter. The WebRTC libraries (webrtc-rs and its `rtc*` crates)
//! log warnings on every healthy call (a packet before SRTP keys exist, an ICE
//! check before the peer's candidates, a DTLS server name); a daemon that warns on
//! every call teaches its users to ignore warnings. So unless the filter names those
//! libraries itself, or asks for debug or trace everywhere, they log errors only.

/// Log targets of the WebRTC libraries (a directive's target matches by prefix:
/// `rtc` covers `rtc_ice`, `rtc_dtls`, …).
const WEBRTC_TARGETS: [&str; 2] = ["webrtc", "rtc"];

/// The filter directives for a configured log level (`info`, or directives like
/// `info,voicelink_daemon=debug`).
pub fn directives(level: &str) -> String {
    let parts: Vec<&str> = level.split(',').map(str::trim).collect();
    let names_a_library = parts.iter().any(|part| WEBRTC_TARGETS.iter().any(|target| part.starts_with(target)));
    let verbose_everywhere = parts.iter().any(|part| matches!(*part, "debug" | "trace"));
    if names_a_library || verbose_everywhere {
        return level.to_owned();
    }
    let quiet: Vec<String> = WEBRTC_TARGETS.iter().map(|target| format!("{target}=error")).collect();
    format!("{level},{}", quiet.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webrtc_libraries_log_errors_only_unless_asked() {
        assert_eq!(directives("info"), "info,webrtc=error,rtc=error");
        assert_eq!(directives("warn,voicelink_daemon=debug"), "warn,voicelink_daemon=debug,webrtc=error,rtc=error");
        assert_eq!(directives("info,rtc_ice=debug"), "info,rtc_ice=debug", "named: left as asked");
        assert_eq!(directives("debug"), "debug", "debug everywhere means everywhere");
    }
}
