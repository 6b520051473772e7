//! What voicelink reads from and fixes in SDP text, without an SDP library: the
//! DTLS fingerprint (which must be the peer's device ID) and candidate lines that
//! no peer can use. Pure and line-based, so a peer's odd SDP is tested here.

/// The `a=fingerprint:sha-256` value of an SDP as bytes.
pub fn fingerprint(sdp: &str) -> Option<Vec<u8>> {
    let value = sdp.lines().find_map(|line| line.trim().strip_prefix("a=fingerprint:sha-256 "))?;
    value.trim().split(':').map(|hex| u8::from_str_radix(hex, 16).ok()).collect()
}

/// Whether an ICE candidate (`candidate:…`, with or without `a=`) names an
/// address nobody can send to: the unspecified `0.0.0.0` or `::`.
pub fn is_unusable_candidate(candidate: &str) -> bool {
    let candidate = candidate.trim().trim_start_matches("a=");
    // candidate:<foundation> <component> <transport> <priority> <address> <port> typ …
    candidate
        .split_whitespace()
        .nth(4)
        .and_then(|address| address.parse::<std::net::IpAddr>().ok())
        .is_some_and(|address| address.is_unspecified())
}

/// The SDP without candidate lines that [`is_unusable_candidate`] rejects.
pub fn without_unusable_candidates(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        if line.trim_start().starts_with("a=candidate:") && is_unusable_candidate(line) {
            continue;
        }
        out.push_str(line);
    }
    out
}

/// The payload type the SDP's audio section gives Opus (`a=rtpmap:<pt>
/// opus/48000[/2]`, any case): the first such format in the `m=audio` line's
/// order, which is the sender's preference. `None` when the audio section
/// offers no Opus.
pub fn opus_payload_type(sdp: &str) -> Option<u8> {
    let mut formats: Vec<u8> = Vec::new();
    let mut opus: Vec<u8> = Vec::new();
    let mut in_audio = false;
    for line in sdp.lines().map(str::trim) {
        if let Some(media) = line.strip_prefix("m=") {
            if in_audio {
                break; // Only the first audio section.
            }
            let mut fields = media.split_whitespace();
            in_audio = fields.next() == Some("audio");
            // m=audio <port> <proto> <fmt>...
            formats = fields.skip(2).filter_map(|f| f.parse().ok()).collect();
        } else if let Some(map) = line.strip_prefix("a=rtpmap:").filter(|_| in_audio) {
            let (pt, encoding) = map.split_once(' ').unwrap_or((map, ""));
            let mut encoding = encoding.trim().split('/');
            let is_opus = encoding.next().is_some_and(|name| name.eq_ignore_ascii_case("opus"))
                && encoding.next() == Some("48000");
            if let (true, Ok(pt)) = (is_opus, pt.parse()) {
                opus.push(pt);
            }
        }
    }
    formats.into_iter().find(|pt| opus.contains(pt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_read() {
        let sdp = "v=0\r\na=fingerprint:sha-256 0A:FF:10\r\na=setup:actpass\r\n";
        assert_eq!(fingerprint(sdp), Some(vec![0x0a, 0xff, 0x10]));
        assert_eq!(fingerprint("v=0\r\n"), None);
        assert_eq!(fingerprint("a=fingerprint:sha-256 ZZ:00\r\n"), None);
    }

    #[test]
    fn unspecified_addresses_are_unusable_and_real_ones_are_kept() {
        assert!(is_unusable_candidate("candidate:1 1 udp 2130706431 :: 50000 typ host"));
        assert!(is_unusable_candidate("a=candidate:1 1 udp 2130706431 0.0.0.0 50000 typ host"));
        assert!(!is_unusable_candidate("candidate:1 1 udp 2130706431 10.0.0.2 50000 typ host"));
        assert!(!is_unusable_candidate("candidate:1 1 udp 2130706431 fd00::2 50000 typ host"));
        assert!(!is_unusable_candidate("candidate:1 1 udp 2130706431 host.local 50000 typ host"));
        assert!(!is_unusable_candidate("garbage"));
    }

    #[test]
    fn an_sdp_loses_only_its_unusable_candidate_lines() {
        let sdp = "v=0\r\na=candidate:1 1 udp 1 10.0.0.2 5000 typ host\r\na=candidate:2 1 udp 1 :: 5001 typ host\r\na=end-of-candidates\r\n";
        assert_eq!(
            without_unusable_candidates(sdp),
            "v=0\r\na=candidate:1 1 udp 1 10.0.0.2 5000 typ host\r\na=end-of-candidates\r\n"
        );
    }

    #[test]
    fn opus_is_found_on_whatever_payload_type_the_audio_section_gives_it() {
        let ours = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        assert_eq!(opus_payload_type(ours), Some(111));
        let firefox = "m=audio 9 UDP/TLS/RTP/SAVPF 109 9 0 8 101\r\na=rtpmap:109 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\n";
        assert_eq!(opus_payload_type(firefox), Some(109));
        // The m-line's order wins; the encoding name is case-insensitive.
        let two = "m=audio 9 RTP/SAVPF 96 97\na=rtpmap:97 opus/48000/2\na=rtpmap:96 OPUS/48000\n";
        assert_eq!(opus_payload_type(two), Some(96));
        // Not Opus at 48 kHz, not listed on the m-line, or not in the audio section.
        assert_eq!(opus_payload_type("m=audio 9 RTP/SAVPF 0\na=rtpmap:0 PCMU/8000\n"), None);
        assert_eq!(opus_payload_type("m=audio 9 RTP/SAVPF 0\na=rtpmap:111 opus/48000/2\n"), None);
        assert_eq!(opus_payload_type("m=video 9 RTP/SAVPF 111\na=rtpmap:111 opus/48000/2\n"), None);
        assert_eq!(opus_payload_type("m=audio 9 RTP/SAVPF 111\na=rtpmap:111 opus/16000\n"), None);
        assert_eq!(opus_payload_type(""), None);
    }
}
