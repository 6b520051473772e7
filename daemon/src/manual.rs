//! The manual pages the daemon ships: `voiced(1)`, from the command line's own
//! definition plus signals, exit status, environment and files; and
//! `voiced.toml(5)`, from the table of config keys (`config_keys::KEYS`), so a
//! key cannot be added without its page.

use std::io;

use roff::{Roff, bold, italic, roman};
use voicelink_core::config_keys::{Applies, KEYS};

/// `voiced(1)`: `command` is voiced's clap definition.
pub fn voiced_page(command: clap::Command) -> io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(command);
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;

    let mut page = Roff::new();
    page.control("SH", ["SIGNALS"]);
    definitions(
        &mut page,
        &[
            (
                "SIGTERM, SIGINT",
                "Stop cleanly: calls are hung up, peers are told by an mDNS goodbye, API streams end, and the \
                 control socket is removed.",
            ),
            (
                "SIGHUP",
                "Re-read the config file (what systemctl --user reload voiced sends). A file that does not read \
                 is refused with the reason in the log, and the config in force stays. See voiced.toml(5) for \
                 when each key applies.",
            ),
        ],
    );
    page.control("SH", ["EXIT STATUS"]);
    definitions(
        &mut page,
        &[
            ("0", "Stopped cleanly."),
            (
                "1",
                "Could not start, or failed: the message on standard error says why (a config error names the \
                 file, key and line; a socket in use names the other daemon).",
            ),
            ("2", "Bad command line."),
        ],
    );
    page.control("SH", ["ENVIRONMENT"]);
    definitions(
        &mut page,
        &[
            ("VOICED_CONFIG", "The config file, as --config."),
            ("RUST_LOG", "A log filter; outranks log_level in the file, not --log-level."),
            ("XDG_CONFIG_HOME", "Where the config file is looked for (default ~/.config)."),
            ("XDG_DATA_HOME", "Where the identity lives (default ~/.local/share)."),
            (
                "XDG_RUNTIME_DIR",
                "Where the control socket goes; without it, a per-user folder in TMPDIR (default /tmp).",
            ),
            ("NOTIFY_SOCKET", "Set by systemd: voiced reports READY=1, RELOADING=1 and STOPPING=1."),
            ("JOURNAL_STREAM", "Set by systemd: log lines leave out their own timestamps."),
        ],
    );
    page.control("SH", ["FILES"]);
    definitions(
        &mut page,
        &[
            ("$XDG_CONFIG_HOME/voicelink/voiced.toml", "The config file: voiced.toml(5)."),
            (
                "$XDG_DATA_HOME/voicelink/device-key.pem, device-cert.pem",
                "The device identity (0600), made on first start; the device ID is the SHA-256 of the \
                 certificate. Deleting them makes a new identity.",
            ),
            ("$XDG_DATA_HOME/voicelink/api-token", "The TCP API token, made when api.tcp_listen is set."),
            ("$XDG_RUNTIME_DIR/voicelink/voiced.sock", "The control socket (0600, in a 0700 folder)."),
            ("/usr/lib/systemd/user/voiced.service", "The systemd user unit: systemctl --user enable --now voiced."),
        ],
    );
    see_also(&mut page, &[("voicectl", 1), ("voiced.toml", 5), ("systemctl", 1)]);
    page.to_writer(&mut out)?;
    Ok(out)
}

/// `voiced.toml(5)`.
pub fn config_page() -> Vec<u8> {
    let mut page = Roff::new();
    page.control("TH", ["voiced.toml", "5", "", &format!("voiced {}", env!("CARGO_PKG_VERSION")), "voicelink"]);
    page.control("SH", ["NAME"]);
    page.text([roman("voiced.toml - the configuration of voiced, the voicelink daemon")]);
    page.control("SH", ["SYNOPSIS"]);
    page.text([italic("$XDG_CONFIG_HOME/voicelink/voiced.toml"), roman(" (usually ~/.config/voicelink/voiced.toml)")]);
    page.control("SH", ["DESCRIPTION"]);
    page.text([roman(
        "A TOML file; every key is optional and the file itself may be missing. A key voiced does not know, \
         or a value it does not allow, is an error that names the file, the key and the line: at start voiced \
         exits, on a reload the config in force stays. voiced --print-config prints the configuration in \
         force with every default written out.",
    )]);
    page.control("PP", []);
    page.text([roman(
        "Change the file and send SIGHUP (systemctl --user reload voiced), or let voicectl config set KEY VALUE \
         edit it (comments kept) and apply it. Each key below says when a change applies: at once, to calls \
         that start afterwards (calls in progress keep theirs), or after a restart of voiced. voiced's flags \
         (--name, --log-level, --audio-input, ...) outrank the file.",
    )]);
    page.control("SH", ["KEYS"]);
    let mut section = "";
    for key in KEYS {
        let (table, name) = key.key.rsplit_once('.').unwrap_or(("", key.key));
        if table != section {
            section = table;
            page.control("SS", [format!("[{table}]").as_str()]);
        }
        page.control("TP", []);
        page.text([bold(name)]);
        let applies = match key.applies {
            Applies::Live => "Applies at once.",
            Applies::NewCalls => "Applies to new calls.",
            Applies::Restart => "Applies after a restart.",
        };
        let flag = key.flag.map(|flag| format!(" The flag {flag} outranks it.")).unwrap_or_default();
        page.text([roman(format!("{} Default: {}. {applies}{flag}", key.doc, key.default))]);
    }
    page.control("SH", ["EXAMPLE"]);
    page.control("nf", []);
    for line in [
        "name = \"workshop\"",
        "log_level = \"info,voicelink_daemon=debug\"",
        "",
        "[signaling]",
        "port = 47000            # reachable as workshop.local:47000",
        "",
        "[audio]",
        "input = \"device:USB Headset\"",
        "",
        "[calls]",
        "ring_timeout_secs = 45",
        "stun_servers = [\"stun:stun.example.org:3478\"]",
    ] {
        page.text([roman(line)]);
    }
    page.control("fi", []);
    see_also(&mut page, &[("voiced", 1), ("voicectl", 1)]);
    page.to_roff().into_bytes()
}

/// A list of terms and what they mean.
fn definitions(page: &mut Roff, items: &[(&str, &str)]) {
    for (term, meaning) in items {
        page.control("TP", []);
        page.text([bold(*term)]);
        page.text([roman(*meaning)]);
    }
}

fn see_also(page: &mut Roff, pages: &[(&str, u8)]) {
    page.control("SH", ["SEE ALSO"]);
    let mut line = Vec::new();
    for (i, (name, section)) in pages.iter().enumerate() {
        if i > 0 {
            line.push(roman(", "));
        }
        line.push(bold(*name));
        line.push(roman(format!("({section})")));
    }
    page.text(line);
}
