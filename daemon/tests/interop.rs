//! Calls from a peer that is not a voicelink daemon, as someone writing one from
//! docs/PROTOCOL.md would make it: signaling and WebRTC from the daemon's own
//! parts, but offering Opus on another payload type and sending packets of
//! another length than it announced. The daemon must answer it, play what it
//! sends and send what it can play. Needs root (namespaces).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use support::{Daemon, Heard, Lan, classify, listen};
use voicelink_bench::relay::enter_namespace;
use voicelink_core::wire::{Body, CallId, Decoded, EndCode, Message};
use voicelink_daemon::identity::Identity;
use voicelink_daemon::media::peer_connection::{Connection, ConnectionEvent, NetworkSettings};
use voicelink_daemon::signaling::transport::Endpoint;

/// How the foreign peer does things differently.
#[derive(Debug, Clone, Copy)]
struct Foreign {
    /// The payload type it offers Opus on.
    opus_pt: u8,
    /// The frame length its `call_request` announces.
    announced_ms: u32,
    /// The length of the packets it really sends.
    packet: Duration,
}

/// What the foreign peer heard of the daemon.
struct Received {
    pcm: Vec<i16>,
    packets: usize,
}

const FOREIGN_TONE: u32 = 440;
const DAEMON_TONE: u32 = 880;
/// How long the foreign peer talks once the call is up.
const TALK: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_peer_offering_opus_on_payload_type_109_is_answered_and_heard_both_ways() {
    call_from(Foreign { opus_pt: 109, announced_ms: 20, packet: Duration::from_millis(20) }).await;
}

#[tokio::test]
async fn twenty_ms_packets_into_a_call_announced_as_ten_ms_are_heard() {
    call_from(Foreign { opus_pt: 111, announced_ms: 10, packet: Duration::from_millis(20) }).await;
}

#[tokio::test]
async fn forty_ms_packets_on_payload_type_96_are_heard() {
    call_from(Foreign { opus_pt: 96, announced_ms: 20, packet: Duration::from_millis(40) }).await;
}

async fn call_from(foreign: Foreign) {
    require_netns!();
    let lan = Lan::new(2, 1);
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("daemon-heard.wav");
    let config = format!(
        "[audio]\ninput = \"tone:{DAEMON_TONE}\"\noutput = \"file:{}\"\n[calls]\nauto_answer = \"everyone\"\n",
        wav.display()
    );
    let daemon = Daemon::start(Some(&lan.host(0)), &dir.path().join("d"), "bob", &config).await;
    let mut events = daemon.follow_events().await;
    let port = daemon.ctl_json(&["status"]).await["signaling_port"].as_u64().unwrap() as u16;
    let target = SocketAddr::new(IpAddr::from([10, 77, 0, 1]), port);

    let host = lan.host(1);
    let heard = tokio::task::spawn_blocking(move || {
        enter_namespace(&host).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(tokio::time::timeout(Duration::from_secs(30), foreign_call(target, foreign)))
    })
    .await
    .unwrap()
    .expect("the foreign call took over 30 s")
    .unwrap_or_else(|e| panic!("{foreign:?}: {e}"));
    events
        .wait_for("the call ends at the daemon", |e| {
            let kind = e["type"].as_str().unwrap_or_default();
            e[kind]["call"]["state"] == "ended"
        })
        .await;

    // The daemon played the foreign peer's tone, and the foreign peer (which
    // plays only packets of the Opus payload types in its offer and the
    // daemon's answer) heard the daemon's.
    let at_daemon = listen(&wav, &[FOREIGN_TONE, DAEMON_TONE]);
    let at_foreign = classify(&heard.pcm, &[FOREIGN_TONE, DAEMON_TONE]);
    eprintln!("{foreign:?}: the daemon heard {at_daemon:?}; the foreign peer {at_foreign:?}");
    // Every 200 ms window is the tone but the first and last (the onset, the
    // hang-up): packets of any length, on any payload type, play whole.
    let tone_windows = at_daemon.iter().filter(|h| **h == Heard::Tone(FOREIGN_TONE)).count();
    assert!(
        at_daemon.len() >= 10 && tone_windows + 2 >= at_daemon.len(),
        "{foreign:?}: the daemon heard {at_daemon:?}"
    );
    let tone_windows = at_foreign.iter().filter(|h| **h == Heard::Tone(DAEMON_TONE)).count();
    assert!(
        at_foreign.len() >= 10 && tone_windows + 2 >= at_foreign.len(),
        "{foreign:?}: {} packets, heard {at_foreign:?}",
        heard.packets
    );
}

/// Calls the daemon at `target`, talks for [`TALK`] once answered and
/// connected, hangs up; returns what it heard.
async fn foreign_call(target: SocketAddr, foreign: Foreign) -> Result<Received, String> {
    let identity = Arc::new(Identity::ephemeral().map_err(|e| e.to_string())?);
    let endpoint = Endpoint::new(Arc::clone(&identity)).map_err(|e| e.to_string())?;
    let mut signaling = endpoint.connect(&[target], None, None).await.map_err(|e| e.to_string())?;
    let call_id = CallId::random();
    let say = |body: Body| Message::new(call_id.clone(), body);
    let request =
        Body::CallRequest { caller_name: "foreign".into(), frame_ms: Some(foreign.announced_ms), group: None };
    signaling.send(&say(request)).await.map_err(|e| e.to_string())?;

    let rtcp = Default::default();
    let settings = NetworkSettings::default();
    let (mut media, track, mut packets) =
        Connection::offering_opus_on(foreign.opus_pt, &identity, signaling.peer, &settings, rtcp)
            .await
            .map_err(|e| e.to_string())?;
    let offer = media.create_offer().await.map_err(|e| e.to_string())?;
    signaling.send(&say(Body::Offer { sdp: offer })).await.map_err(|e| e.to_string())?;

    let mut encoder = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let packet_samples = (48_000 * foreign.packet.as_millis() / 1000) as usize;
    let (mut accepted, mut connected) = (false, false);
    let mut talk_until = None;
    let mut tick = tokio::time::interval(foreign.packet);
    let mut sent_samples = 0usize;
    let mut heard = Received { pcm: Vec::new(), packets: 0 };
    let mut pcm = vec![0i16; 5760];
    loop {
        tokio::select! {
            message = signaling.recv() => match message.map_err(|e| e.to_string())? {
                Some(Decoded::Message(message)) => match message.body {
                    Body::Answer { sdp } => media.accept_answer(sdp).await.map_err(|e| e.to_string())?,
                    Body::IceCandidate { candidate, .. } => media.add_remote_candidate(candidate).await,
                    Body::Accept => accepted = true,
                    Body::Ringing { .. } => {}
                    other => return Err(format!("unexpected {other:?}")),
                },
                Some(_) => {}
                None => return Err("the daemon closed the connection".into()),
            },
            event = media.next_event() => match event {
                Some(ConnectionEvent::LocalCandidate { candidate, sdp_mid, sdp_mline_index }) => {
                    let body = Body::IceCandidate { candidate, sdp_mid, sdp_mline_index };
                    signaling.send(&say(body)).await.map_err(|e| e.to_string())?;
                }
                Some(ConnectionEvent::Connected) => connected = true,
                Some(ConnectionEvent::Failed(cause)) => return Err(format!("media failed: {cause:?}")),
                Some(_) => {}
                None => return Err("the media connection went away".into()),
            },
            Some(packet) = packets.recv() => {
                heard.packets += 1;
                if let Ok(n) = decoder.decode(&packet.payload, &mut pcm, false) {
                    heard.pcm.extend_from_slice(&pcm[..n]);
                }
            }
            now = tick.tick(), if accepted && connected => {
                let until = *talk_until.get_or_insert(now + TALK);
                if now >= until {
                    break;
                }
                let tone: Vec<i16> = (sent_samples..sent_samples + packet_samples)
                    .map(|i| {
                        let phase = 2.0 * std::f64::consts::PI * f64::from(FOREIGN_TONE) * i as f64 / 48_000.0;
                        (phase.sin() * 8000.0) as i16
                    })
                    .collect();
                sent_samples += packet_samples;
                let mut encoded = [0u8; 1500];
                let len = encoder.encode(&tone, &mut encoded).map_err(|e| e.to_string())?;
                track.send(&encoded[..len], foreign.packet, now.into_std()).await;
            }
        }
    }
    signaling.send(&say(Body::End { reason: EndCode::HangUp })).await.map_err(|e| e.to_string())?;
    signaling.close().await;
    media.close().await;
    Ok(heard)
}
