//! The control API and the command line against a real daemon (discovery off, so
//! nothing leaves this machine): many clients, who may connect, the TCP token,
//! health and reflection, and the errors a user sees.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use support::{Daemon, voicectl_bin, voiced_bin};
use tokio_stream::StreamExt;
use voicelink_proto::{DaemonAddress, v1};

const NO_DISCOVERY: &str = "[discovery]\nenabled = false\n";

async fn daemon(dir: &std::path::Path, extra: &str) -> Daemon {
    Daemon::start(None, dir, "solo", &format!("{extra}{NO_DISCOVERY}")).await
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn many_clients_are_served_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), "").await;
    let clients = (0..12).map(|_| {
        let socket = d.socket.clone();
        tokio::spawn(async move {
            let mut client = voicelink_proto::connect(DaemonAddress::Unix(socket)).await.unwrap();
            // Hold an event stream open while making unary calls on the same connection.
            let mut events = client.watch_events(v1::WatchEventsRequest {}).await.unwrap().into_inner();
            let status = client.get_status(v1::GetStatusRequest {}).await.unwrap().into_inner();
            let first = events.next().await.unwrap().unwrap();
            (status.display_name, first.kind)
        })
    });
    for client in clients {
        let (name, first) = client.await.unwrap();
        assert_eq!(name, "solo");
        assert!(matches!(first, Some(v1::event::Kind::Snapshot(_))), "{first:?}");
    }
    // And the command line alongside.
    assert_eq!(d.ctl_json(&["status"]).await["display_name"], "solo");
}

#[tokio::test]
async fn another_user_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to run a client as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), "").await;
    let nobody = 65534;
    let as_nobody = || {
        let mut command = Command::new(voicectl_bin());
        command.arg("--socket").arg(&d.socket).arg("status").uid(nobody).gid(nobody);
        command.output().unwrap()
    };

    // The socket's folder is private (0700), so the file system refuses first.
    let out = as_nobody();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("permission denied"), "{}", stderr(&out));

    // With the file system opened up, the daemon's own peer-credential check refuses.
    for dir in [dir.path(), d.socket.parent().unwrap()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("may not use it"), "{}", stderr(&out));
    assert!(d.log_text().contains("refused a control connection from another user"));

    // The owner is still served.
    assert_eq!(d.ctl_json(&["status"]).await["display_name"], "solo");
}

fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn the_tcp_listener_requires_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_loopback_port();
    let d = daemon(dir.path(), &format!("api.tcp_listen = \"127.0.0.1:{port}\"\n")).await;
    let token = std::fs::read_to_string(d.dir.join("data/api-token")).unwrap();
    let mode = std::fs::metadata(d.dir.join("data/api-token")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let address = format!("127.0.0.1:{port}");
    let tcp_ctl = |token: Option<&str>| {
        let mut command = Command::new(voicectl_bin());
        command.args(["--tcp", &address, "--json", "status"]).env_remove("VOICELINK_SOCKET");
        if let Some(token) = token {
            command.args(["--token", token]);
        }
        command.output().unwrap()
    };
    // A command-line error, as the README's exit codes say.
    let out = tcp_ctl(None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--token"), "{}", stderr(&out));

    let out = tcp_ctl(Some("wrong"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("valid API token is required"), "{}", stderr(&out));

    let out = tcp_ctl(Some(token.trim()));
    assert!(out.status.success(), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["device_id"], d.device_id.as_str());
}

#[tokio::test]
async fn health_and_reflection_serve_generic_clients() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), "").await;
    let (channel, _) = voicelink_proto::channel(&DaemonAddress::Unix(d.socket.clone())).await.unwrap();

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest { service: "voicelink.v1.Voicelink".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.status(), tonic_health::pb::health_check_response::ServingStatus::Serving);

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let channel_alpha = channel.clone();
    let mut replies = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = replies.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"voicelink.v1.Voicelink".to_owned()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");

    // The older v1alpha reflection too (grpcurl 1.8, grpcio-reflection speak only it).
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as AlphaClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::ListServices(String::new())),
    };
    let mut replies = AlphaClient::new(channel_alpha)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(AlphaResponse::ListServicesResponse(list)) = replies.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list over v1alpha")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"voicelink.v1.Voicelink".to_owned()), "{names:?}");
}

#[tokio::test]
async fn call_verbs_say_plainly_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), "").await;
    let cases: [(&[&str], &str); 5] = [
        (&["dial", "bob"], "no online peer is called \"bob\""),
        (&["dial", "NOT-AN-ID@127.0.0.1:1"], "cannot dial"),
        (&["answer"], "there is no call"),
        (&["hangup", "no-such-call"], "there is no call no-such-call"),
        (&["stats", "no-such-call"], "there is no call no-such-call"),
    ];
    for (args, expected) in cases {
        let out = d.ctl(args).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let text = stderr(&out);
        assert!(text.contains(expected), "{args:?}: {text}");
        assert_eq!(text.lines().count(), 1, "one line, no trace: {text}");
    }
    let out = d.ctl(&["dial", "bob", "--input", "microphone"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("use default, device:NAME"), "{}", stderr(&out));
    assert_eq!(d.ctl_json(&["calls"]).await, serde_json::json!([]));
    let out = d.ctl(&["stats"]).await;
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "no calls", "{out:?}");
}

#[tokio::test]
async fn megabytes_of_input_are_refused_without_being_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), "").await;
    let mut client = voicelink_proto::connect(DaemonAddress::Unix(d.socket.clone())).await.unwrap();
    let huge = "x".repeat(1 << 20);
    let refusals = [
        client.dial(v1::DialRequest { target: format!("{huge}:1"), ..Default::default() }).await.map(drop),
        client
            .dial(v1::DialRequest {
                target: "127.0.0.1:1".into(),
                audio_output: format!("file:/{huge}.wav"),
                ..Default::default()
            })
            .await
            .map(drop),
        client
            .set_config(v1::SetConfigRequest {
                key: "audio.output".into(),
                value: format!("file:/{huge}.wav"),
                ..Default::default()
            })
            .await
            .map(drop),
        client.set_config(v1::SetConfigRequest { key: huge.clone(), ..Default::default() }).await.map(drop),
    ];
    for refusal in refusals {
        let status = refusal.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().len() < 300, "{}", status.message().len());
    }
    assert_eq!(d.ctl_json(&["calls"]).await, serde_json::json!([]), "the daemon is still serving");
}

#[tokio::test]
async fn streaming_commands_say_the_daemon_went_away_and_follow_it_back() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path(), "").await;
    let mut events = tokio::process::Command::new(voicectl_bin())
        .arg("--socket")
        .arg(&d.socket)
        .args(["--json", "events"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(events.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    assert!(first.contains(r#""type":"snapshot""#), "{first}");

    d.stop_with(nix::sys::signal::Signal::SIGTERM).await;
    d.restart().await;
    // The feed starts over with a snapshot of the daemon that came back.
    loop {
        let line = lines.next_line().await.unwrap().expect("voicectl events kept following");
        if line.contains(r#""type":"snapshot""#) {
            break;
        }
    }
    events.start_kill().unwrap();
    let mut said = String::new();
    let mut stderr = events.stderr.take().unwrap();
    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut said).await.unwrap();
    assert!(said.contains("voiced went away (voiced is stopping); waiting for it to come back"), "{said}");
    assert!(said.contains("voiced is back"), "{said}");
    assert!(!said.contains("h2 protocol error"), "{said}");
}

#[tokio::test]
async fn voicectl_without_a_daemon_names_the_socket_and_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nothing-here.sock");
    let out = Command::new(voicectl_bin()).arg("--socket").arg(&socket).arg("peers").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let text = stderr(&out);
    assert!(text.contains("not running") && text.contains(&*socket.to_string_lossy()), "{text}");
    assert!(text.contains("voiced"), "says how to start it: {text}");
    assert!(!text.contains("panicked") && !text.contains("backtrace"), "{text}");
}

#[tokio::test]
async fn a_second_daemon_on_a_live_socket_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), "").await;
    let out = Command::new(voiced_bin())
        .arg("--socket")
        .arg(&d.socket)
        .arg("--data-dir")
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("another voiced is already running"), "{}", stderr(&out));
    assert_eq!(d.ctl_json(&["status"]).await["display_name"], "solo", "the first is unharmed");
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_the_identity_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path(), "").await;
    let first_id = d.device_id.clone();
    d.stop_with(nix::sys::signal::Signal::SIGKILL).await;
    assert!(d.socket.exists(), "a killed daemon leaves its socket behind");
    d.restart().await;
    assert_eq!(d.ctl_json(&["status"]).await["device_id"], first_id.as_str());
    assert!(d.log_text().contains("replaced a stale socket"));
}

#[test]
fn a_bad_config_names_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("voiced.toml");
    std::fs::write(&config, "name = \"x\"\n\n[signaling]\nport = \"high\"\n").unwrap();
    let out = Command::new(voiced_bin()).arg("--config").arg(&config).arg("--print-config").output().unwrap();
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(text.contains("key `signaling.port` at line 4"), "{text}");
    assert!(text.contains(&*config.to_string_lossy()), "{text}");
}

#[test]
fn print_config_shows_flags_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("voiced.toml");
    std::fs::write(&config, "name = \"from-file\"\n[audio]\ninput = \"tone:440\"\n").unwrap();
    let out = Command::new(voiced_bin())
        .arg("--config")
        .arg(&config)
        .args(["--name", "from-flag", "--data-dir", "/srv/vl", "--print-config"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("name = \"from-flag\""), "{text}");
    assert!(text.contains("data_dir = \"/srv/vl\""), "{text}");
    assert!(text.contains("input = \"tone:440\""), "{text}");
    assert!(text.contains("socket = "), "the default socket is written out: {text}");
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_tells_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path(), "").await;
    let mut client = voicelink_proto::connect(DaemonAddress::Unix(d.socket.clone())).await.unwrap();
    let mut events = client.watch_events(v1::WatchEventsRequest {}).await.unwrap().into_inner();
    assert!(matches!(events.next().await, Some(Ok(_))), "the snapshot");
    let status = d.stop_with(nix::sys::signal::Signal::SIGTERM).await;
    assert!(status.success(), "{status:?}");
    d.notified("STOPPING=1").await;
    assert!(!d.socket.exists(), "the socket is removed");
    // The open event stream was told, instead of holding the shutdown up.
    let last = events.next().await;
    assert!(
        matches!(&last, Some(Err(status)) if status.code() == tonic::Code::Unavailable && status.message() == "voiced is stopping"),
        "{last:?}"
    );
}

#[tokio::test]
async fn under_systemd_log_lines_carry_no_timestamp_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_with_env(None, dir.path(), "journal", NO_DISCOVERY, &[("JOURNAL_STREAM", "8:1234")]).await;
    let log = d.log_text();
    let ready = log.lines().find(|l| l.contains("voiced is ready")).expect("a ready line");
    assert!(ready.trim_start().starts_with("INFO"), "the journal adds the time: {ready}");
    assert!(!ready.contains("\u{1b}["), "no colour codes in the journal: {ready}");
}

#[tokio::test]
async fn config_set_edits_the_file_keeps_its_comments_and_applies_live_keys_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), "# rings for a while\n[calls]\nring_timeout_secs = 60 # long\n").await;
    let config_file = dir.path().join("voiced.toml");

    let out = d.ctl(&["config", "set", "calls.ring_timeout_secs", "45"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&config_file).unwrap();
    assert!(text.contains("# rings for a while\n[calls]\nring_timeout_secs = 45 # long\n"), "{text}");
    let entry = d.ctl_json(&["config", "get", "calls.ring_timeout_secs"]).await;
    assert_eq!((entry["value"].as_str(), entry["applies"].as_str()), (Some("45"), Some("to new calls")));

    // A live key: the daemon's name changes at once.
    let out = d.ctl(&["config", "set", "name", "kitchen"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(d.ctl_json(&["status"]).await["display_name"], "kitchen");

    // A restart key: written, reported as waiting, the one in force unchanged.
    let out = d.ctl(&["config", "set", "signaling.port", "4999"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("after a restart"), "{out:?}");
    let entry = d.ctl_json(&["config", "get", "signaling.port"]).await;
    assert_eq!(entry["pending"], "4999");
    assert_ne!(entry["value"], "4999");

    // Refused edits name the problem and leave the file alone.
    let before = std::fs::read_to_string(&config_file).unwrap();
    for (args, says) in [
        (["config", "set", "calls.ring_timeout_secs", "2"], "between 5 and 600"),
        (["config", "set", "log_level", "loud"], "is not a log level"),
        (["config", "set", "calls.ringtone", "x"], "no config key"),
    ] {
        let out = d.ctl(&args).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(std::fs::read_to_string(&config_file).unwrap(), before);

    // Unset: back to the default, the key gone from the file.
    let out = d.ctl(&["config", "unset", "calls.ring_timeout_secs"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(d.ctl_json(&["config", "get", "calls.ring_timeout_secs"]).await["value"], "30");
    assert!(!std::fs::read_to_string(&config_file).unwrap().contains("ring_timeout_secs"));
}

#[tokio::test]
async fn a_client_that_sends_the_socket_path_as_its_authority_is_served() {
    // As grpcurl 1.8 and grpc-java do: `:authority` is the bare path, which h2
    // alone refuses with RST_STREAM(PROTOCOL_ERROR).
    let Some(python) = support::example_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), "").await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/bare_authority.py");
    let out = tokio::process::Command::new(python).arg(script).arg(&d.socket).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), "grpc-status 0", "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn the_microphone_check_reads_an_inputs_level_outside_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), "[audio]\ninput = \"tone:440\"\n").await;
    // The default input: a tone at -12 dBFS peak, so -15 dBFS RMS.
    let out = d.ctl(&["--json", "level", "--count", "5"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let readings: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(readings.len(), 5, "{readings:?}");
    for reading in &readings {
        assert_eq!(reading["input"], "tone:440");
        let (level, peak) = (reading["level_dbfs"].as_f64().unwrap(), reading["peak_dbfs"].as_f64().unwrap());
        assert!((level + 15.05).abs() < 0.3 && (peak + 12.04).abs() < 0.3, "{reading}");
    }
    // Another input, and the text form's bar.
    let out = d.ctl(&["level", "--input", "silence", "--count", "2", "--interval", "200"]).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.lines().all(|l| l.contains("-99.9 dBFS") && l.ends_with(&".".repeat(30))), "{text}");
    // What cannot be measured says why.
    let echo = d.ctl(&["level", "--input", "echo"]).await;
    assert_eq!(echo.status.code(), Some(1));
    assert!(stderr(&echo).contains("echo has no level outside a call"), "{}", stderr(&echo));
    let missing = d.ctl(&["level", "--input", "device:no-such-microphone"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("no-such-microphone"), "{}", stderr(&missing));
    let wrong = d.ctl(&["level", "--input", "loud"]).await;
    assert!(stderr(&wrong).contains("invalid audio input"), "{}", stderr(&wrong));
}

#[tokio::test]
async fn without_a_sound_card_nothing_clockless_is_offered_and_the_libraries_noise_stays_off_stderr() {
    let dir = tempfile::tempdir().unwrap();
    // Default audio: the daemon probes the sound cards at start, and again here.
    let d = daemon(dir.path(), "").await;
    let devices = d.ctl_json(&["devices"]).await;
    for device in devices["inputs"].as_array().unwrap().iter().chain(devices["outputs"].as_array().unwrap()) {
        let id = device["id"].as_str().unwrap();
        assert!(id.starts_with("device:") && id != "device:null", "{device}");
        assert!(
            !id.contains(' ') || id.contains("CARD="),
            "the ID is the device's name, not its description: {device}"
        );
    }
    // The level check of `default`: a clear error on a machine without one.
    let level = d.ctl(&["level", "--count", "1"]).await;
    if !level.status.success() {
        assert!(stderr(&level).contains("cannot be used"), "{}", stderr(&level));
    }
    // ALSA, its JACK and OSS plugins and PulseAudio's client complain on stderr
    // when there is no sound card; the daemon's output keeps only its own lines.
    let log = d.log_text();
    for noise in ["ALSA lib", "jack server", "JackShm", "Cannot connect to server"] {
        assert!(!log.contains(noise), "{noise:?} reached the daemon's output:\n{log}");
    }
    assert!(log.contains("voiced is ready"), "our own lines still do:\n{log}");
}
