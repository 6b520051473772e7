//! `voicelink-tray`: the voicelink daemon from the system tray.
//!
//! Two threads of ours: the GLib main loop owns the tray icon, its menu and
//! the notifications (`ui.rs`, `notifications.rs`; nothing there blocks: D-Bus
//! calls to the notification server are asynchronous on the same loop); a
//! tokio thread owns the connection to `voiced` (`voicelink_tray::client`).
//! They talk over bounded channels: updates one way, commands the other.
//! (tray-icon's StatusNotifierItem backend, ksni, serves the icon and menu on
//! D-Bus from threads of its own; menu clicks come back as [`UiInput::Menu`].)

mod notifications;
mod ui;

use std::cell::Cell;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tokio::sync::mpsc;
use voicelink_proto::DaemonAddress;
use voicelink_tray::view::IconKind;

use notifications::{Choice, Notifier};

/// A tray icon for voicelink: see who is online, answer, decline, hang up,
/// mute and hold calls, and choose audio devices.
#[derive(Debug, Parser)]
#[command(name = "voicelink-tray", version)]
struct Args {
    /// The daemon's control socket [default: $XDG_RUNTIME_DIR/voicelink/voiced.sock]
    #[arg(long, env = voicelink_proto::SOCKET_ENV, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Log filter (tracing's RUST_LOG syntax)
    #[arg(long, env = "RUST_LOG", default_value = "info", value_name = "FILTER")]
    log: String,
    /// Write the tray's icons as PNG files into DIR and exit
    #[arg(long, value_name = "DIR")]
    write_icons: Option<PathBuf>,
}

/// What the main loop (the UI) reacts to.
#[derive(Debug)]
pub enum UiInput {
    /// A menu item was chosen (its ID).
    Menu(String),
    /// Answer or Decline was chosen on a ringing notification.
    Notification {
        /// The call it was about.
        call_id: String,
        /// What was chosen.
        choice: Choice,
    },
    /// A second passed (only while a call's duration is shown).
    Tick,
    /// The tray was asked to quit by a signal (SIGTERM at logout, ^C).
    Quit,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("voicelink-tray: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    if let Some(dir) = args.write_icons {
        return write_icons(&dir);
    }

    let address = DaemonAddress::Unix(args.socket.unwrap_or_else(voicelink_proto::default_socket_path));
    tracing::info!(%address, "voicelink-tray starting");

    let (updates_tx, updates) = mpsc::channel(64);
    let (commands, commands_rx) = mpsc::channel(16);
    let (inputs, inputs_rx) = mpsc::channel(32);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    std::thread::Builder::new()
        .name("daemon-client".into())
        .spawn(move || runtime.block_on(voicelink_tray::client::run(address, updates_tx, commands_rx)))
        .context("cannot start the daemon client thread")?;

    let menu_inputs = inputs.clone();
    tray_icon::menu::MenuEvent::set_event_handler(Some(move |event: tray_icon::menu::MenuEvent| {
        if let Err(error) = menu_inputs.try_send(UiInput::Menu(event.id.0)) {
            tracing::warn!(%error, "menu click dropped");
        }
    }));

    // Logging out (SIGTERM) or ^C quits like the menu's Quit: ringing
    // notifications are withdrawn first.
    for signal in [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGINT] {
        let quit = inputs.clone();
        glib::unix_signal_add_local(signal as i32, move || {
            tracing::info!(%signal, "asked to quit");
            if let Err(error) = quit.try_send(UiInput::Quit) {
                tracing::warn!(%error, "cannot quit yet; send the signal again");
            }
            glib::ControlFlow::Continue
        });
    }

    // Started before anything can ring, so its signal subscription is in place
    // before the first notification is sent.
    let notifier = Notifier::start(inputs.clone());
    let ui = ui::Ui::new(commands, inputs, notifier)?;
    let exit = std::rc::Rc::new(Cell::new(None));
    let exit_set = exit.clone();
    let main_loop = glib::MainLoop::new(None, false);
    let quit_loop = main_loop.clone();
    glib::MainContext::default().spawn_local(async move {
        exit_set.set(Some(ui::drive(ui, updates, inputs_rx).await));
        quit_loop.quit();
    });
    main_loop.run();
    match exit.get() {
        Some(ui::Exit::Quit) => {
            tracing::info!("voicelink-tray quits");
            Ok(())
        }
        Some(ui::Exit::ClientStopped) => anyhow::bail!("the daemon client stopped unexpectedly"),
        None => anyhow::bail!("the main loop ended on its own"),
    }
}

fn write_icons(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    for kind in IconKind::ALL {
        for size in [16, 22, 24, 32, 48, 64] {
            let path = dir.join(format!("voicelink-{}-{size}.png", format!("{kind:?}").to_lowercase()));
            let png = voicelink_tray::icons::png(kind, size).context("encode PNG")?;
            std::fs::write(&path, png).with_context(|| format!("write {}", path.display()))?;
        }
    }
    Ok(())
}
