//! voicectl's manual pages: `voicectl(1)` from the command line's own definition
//! plus exit status, environment and files, and one page per subcommand
//! (`voicectl-dial(1)`, `voicectl-config-set(1)`, …), which `voicectl(1)` refers to.

use std::io;
use std::path::Path;

use roff::{Roff, bold, roman};

/// `voicectl(1)`: `command` is voicectl's clap definition.
pub fn main_page(command: clap::Command) -> io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(command.disable_help_subcommand(true));
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;

    let mut page = Roff::new();
    page.control("SH", ["EXIT STATUS"]);
    definitions(
        &mut page,
        &[
            ("0", "Success."),
            ("1", "The daemon refused or failed the request; the message says why."),
            ("2", "Bad command line (including --tcp without a token)."),
            ("3", "The daemon cannot be reached: not running, another user's, or the connection was lost."),
            ("130", "Interrupted by Ctrl-C (a waiting dial cancels its call first)."),
        ],
    );
    page.control("SH", ["ENVIRONMENT"]);
    definitions(
        &mut page,
        &[
            ("VOICELINK_SOCKET", "The daemon's control socket, as --socket."),
            ("VOICELINK_TCP", "The daemon's TCP listener, as --tcp."),
            ("VOICELINK_TOKEN", "The API token for --tcp, as --token."),
            ("XDG_RUNTIME_DIR", "Where the default control socket is."),
        ],
    );
    page.control("SH", ["FILES"]);
    definitions(
        &mut page,
        &[
            ("$XDG_RUNTIME_DIR/voicelink/voiced.sock", "The control socket of the user's daemon."),
            ("$XDG_DATA_HOME/voicelink/api-token", "The token for --tcp, when the daemon listens on TCP."),
        ],
    );
    page.control("SH", ["SEE ALSO"]);
    page.text([bold("voiced"), roman("(1), "), bold("voiced.toml"), roman("(5)")]);
    page.to_writer(&mut out)?;
    Ok(out)
}

/// Writes `voicectl.1` and a page for every subcommand into `dir`.
pub fn write_pages(command: clap::Command, dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(command.clone(), dir)?;
    // generate_to wrote a plain voicectl.1 too; ours has the extra sections.
    std::fs::write(dir.join("voicectl.1"), main_page(command)?)
}

fn definitions(page: &mut Roff, items: &[(&str, &str)]) {
    for (term, meaning) in items {
        page.control("TP", []);
        page.text([bold(*term)]);
        page.text([roman(*meaning)]);
    }
}
