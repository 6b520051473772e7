//! Any `:authority` from a Unix-socket client.
//!
//! gRPC libraries derive the HTTP/2 authority of a Unix-socket channel from the
//! socket's path: gRPC C-core (grpcio, Ruby, C++) sends it percent-encoded
//! (`tmp%2Fvoiced.sock`), grpc-java and older grpc-go send the bare path. h2, under
//! tonic, rejects both as malformed with `RST_STREAM(PROTOCOL_ERROR)` before any
//! service sees the request (hyperium/h2#487; see docs/upstream/h2-unix-authority.md).
//! On a Unix socket the authority names nothing, so every request header block a
//! client sends is rewritten to carry `localhost` before it reaches the server.
//!
//! [`AuthorityRewriter`] is the sans-IO part: bytes from the client in, bytes for
//! the server out. [`rewrite_authority`] runs it between a client and the server.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::{Connected, UdsConnectInfo};
use tracing::debug;

/// The authority every rewritten request carries.
const LOCAL_AUTHORITY: &[u8] = b"localhost";
/// The connection preface a client sends before its first frame (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
/// The largest frame the server accepts: h2's default SETTINGS_MAX_FRAME_SIZE,
/// which tonic leaves alone. A larger frame is the client's protocol error.
const MAX_FRAME_LEN: usize = 16_384;
/// A bound on one header block split over CONTINUATION frames.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// A bound on the headers one block decodes to (names + values + 32 each, as
/// RFC 9113 counts them): hyper refuses more than 16 KiB anyway, and a block of
/// small references to one big table entry must not make us allocate gigabytes.
const MAX_HEADER_LIST: usize = 64 * 1024;
/// The dynamic table size h2 allows a client (SETTINGS_HEADER_TABLE_SIZE, which
/// hyper leaves at its default).
const HEADER_TABLE_SIZE: usize = 4096;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// Why a client's byte stream cannot be passed on.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// A frame longer than the server accepts.
    #[error("a {0}-byte HTTP/2 frame is larger than the 16384 bytes allowed")]
    FrameTooLarge(usize),
    /// A header block that does not decode.
    #[error("an HTTP/2 header block does not decode: {0}")]
    HeaderBlock(#[from] loona_hpack::decoder::DecoderError),
    /// A header block that decodes to more than anyone needs.
    #[error("an HTTP/2 header block decodes to more than {MAX_HEADER_LIST} bytes")]
    HeadersTooLarge,
    /// Frames out of the order RFC 9113 requires.
    #[error("malformed HTTP/2: {0}")]
    Malformed(&'static str),
}

/// A header block whose CONTINUATION frames are still to come.
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// Rewrites the client-to-server half of an HTTP/2 connection: every header
/// block is decoded with the client's HPACK state and encoded again with our own
/// (which the server's decoder follows), with `:authority` set to `localhost`.
/// Every other frame passes through unchanged.
pub struct AuthorityRewriter {
    input: Vec<u8>,
    preface_seen: bool,
    pending: Option<PendingBlock>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
}

impl Default for AuthorityRewriter {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        // A client may not grow the table beyond what the server allows.
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        AuthorityRewriter {
            input: Vec::new(),
            preface_seen: false,
            pending: None,
            decoder,
            encoder: loona_hpack::Encoder::new(),
        }
    }
}

impl AuthorityRewriter {
    /// Takes bytes the client sent and appends what the server should get to `out`.
    /// Bytes of an incomplete frame are kept for the next call.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        self.input.extend_from_slice(bytes);
        let mut consumed = 0;
        if !self.preface_seen {
            // The preface itself is h2's to check.
            if self.input.len() < PREFACE_LEN {
                return Ok(());
            }
            out.extend_from_slice(&self.input[..PREFACE_LEN]);
            consumed = PREFACE_LEN;
            self.preface_seen = true;
        }
        while let Some(header) = self.input.get(consumed..consumed + FRAME_HEADER_LEN) {
            let length = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            if length > MAX_FRAME_LEN {
                return Err(RewriteError::FrameTooLarge(length));
            }
            let end = consumed + FRAME_HEADER_LEN + length;
            if self.input.len() < end {
                break;
            }
            let (kind, flags) = (header[3], header[4]);
            let stream_id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            let frame = consumed..end;
            consumed = end;
            let payload = &self.input[frame.start + FRAME_HEADER_LEN..frame.end];
            match (kind, self.pending.as_mut()) {
                (TYPE_HEADERS, None) => {
                    let (priority, fragment) = headers_payload(flags, payload)?;
                    self.pending = Some(PendingBlock {
                        stream_id,
                        end_stream: flags & FLAG_END_STREAM != 0,
                        priority,
                        fragment: fragment.to_vec(),
                    });
                }
                (TYPE_CONTINUATION, Some(block)) if block.stream_id == stream_id => {
                    if block.fragment.len() + payload.len() > MAX_HEADER_BLOCK {
                        return Err(RewriteError::Malformed("a header block longer than 64 KiB"));
                    }
                    block.fragment.extend_from_slice(payload);
                }
                (_, Some(_)) => return Err(RewriteError::Malformed("a header block interrupted by another frame")),
                (TYPE_CONTINUATION, None) => return Err(RewriteError::Malformed("CONTINUATION without HEADERS")),
                (_, None) => {
                    out.extend_from_slice(&self.input[frame]);
                    continue;
                }
            }
            if flags & FLAG_END_HEADERS != 0
                && let Some(block) = self.pending.take()
            {
                self.emit(block, out)?;
            }
        }
        self.input.drain(..consumed);
        Ok(())
    }

    fn emit(&mut self, block: PendingBlock, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let (mut headers, mut size) = (Vec::new(), 0);
        self.decoder.decode_with_cb(&block.fragment, |name, value| {
            // Every field is decoded (the table must stay in step); only the
            // first MAX_HEADER_LIST bytes of them are kept.
            size += name.len() + value.len() + 32;
            if size <= MAX_HEADER_LIST {
                let value = if *name == *b":authority" { LOCAL_AUTHORITY.to_vec() } else { value.into_owned() };
                headers.push((name.into_owned(), value));
            }
        })?;
        if size > MAX_HEADER_LIST {
            return Err(RewriteError::HeadersTooLarge);
        }
        let encoded = self.encoder.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));

        // The first frame is HEADERS (with the priority fields it came with), the
        // rest CONTINUATION; END_HEADERS on the last.
        let priority_len = if block.priority.is_some() { 5 } else { 0 };
        let first_len = encoded.len().min(MAX_FRAME_LEN - priority_len);
        let (first, rest) = encoded.split_at(first_len);
        let mut flags = if block.end_stream { FLAG_END_STREAM } else { 0 };
        if block.priority.is_some() {
            flags |= FLAG_PRIORITY;
        }
        let mut chunks = rest.chunks(MAX_FRAME_LEN).peekable();
        if chunks.peek().is_none() {
            flags |= FLAG_END_HEADERS;
        }
        write_frame_header(out, priority_len + first.len(), TYPE_HEADERS, flags, block.stream_id);
        if let Some(priority) = block.priority {
            out.extend_from_slice(&priority);
        }
        out.extend_from_slice(first);
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_none() { FLAG_END_HEADERS } else { 0 };
            write_frame_header(out, chunk.len(), TYPE_CONTINUATION, flags, block.stream_id);
            out.extend_from_slice(chunk);
        }
        Ok(())
    }
}

/// Splits a HEADERS payload into its priority fields and its header block
/// fragment, without the padding.
fn headers_payload(flags: u8, payload: &[u8]) -> Result<(Option<[u8; 5]>, &[u8]), RewriteError> {
    let mut payload = payload;
    if flags & FLAG_PADDED != 0 {
        let (&pad, rest) = payload.split_first().ok_or(RewriteError::Malformed("a padded frame with no pad length"))?;
        let keep =
            rest.len().checked_sub(usize::from(pad)).ok_or(RewriteError::Malformed("padding longer than its frame"))?;
        payload = &rest[..keep];
    }
    if flags & FLAG_PRIORITY == 0 {
        return Ok((None, payload));
    }
    match payload.split_first_chunk::<5>() {
        Some((priority, fragment)) => Ok((Some(*priority), fragment)),
        None => Err(RewriteError::Malformed("HEADERS too short for its priority fields")),
    }
}

fn write_frame_header(out: &mut Vec<u8>, length: usize, kind: u8, flags: u8, stream_id: u32) {
    // Lengths here never exceed MAX_FRAME_LEN, which fits 24 bits.
    out.extend_from_slice(&(length as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream_id.to_be_bytes());
}

/// A Unix-socket connection as the server sees it: the rewritten byte stream,
/// with the client's credentials taken before the rewriting began.
pub struct RewrittenConnection {
    stream: DuplexStream,
    info: UdsConnectInfo,
}

impl Connected for RewrittenConnection {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> UdsConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for RewrittenConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for RewrittenConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Puts an [`AuthorityRewriter`] between `client` and the server: a task (one per
/// connection) carries the bytes both ways until either side closes.
pub fn rewrite_authority(client: UnixStream) -> RewrittenConnection {
    let info = client.connect_info();
    let (server_side, ours) = tokio::io::duplex(64 * 1024);
    tokio::spawn(carry(client, ours));
    RewrittenConnection { stream: server_side, info }
}

async fn carry(client: UnixStream, server: DuplexStream) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = tokio::io::split(server);
    // Ends with what the client sent wrong, if it did.
    let upstream = async {
        let mut rewriter = AuthorityRewriter::default();
        let (mut buffer, mut out) = (vec![0; MAX_FRAME_LEN], Vec::new());
        loop {
            let n = from_client.read(&mut buffer).await?;
            if n == 0 {
                return to_server.shutdown().await.map(|()| None);
            }
            out.clear();
            if let Err(refused) = rewriter.feed(&buffer[..n], &mut out) {
                return Ok(Some(refused));
            }
            to_server.write_all(&out).await?;
        }
    };
    let (refused, result) = {
        let downstream = tokio::io::copy(&mut from_server, &mut to_client);
        tokio::pin!(upstream, downstream);
        tokio::select! {
            result = &mut downstream => (None, result.map(drop)),
            result = &mut upstream => match result {
                // A client that stops sending may still be owed responses.
                Ok(None) => (None, downstream.await.map(drop)),
                Ok(Some(refused)) => (Some(refused), Ok(())),
                Err(error) => (None, Err(error)),
            },
        }
    };
    if let Some(error) = refused {
        debug!(%error, "refused a control connection's HTTP/2");
        // GOAWAY (RFC 9113 §6.8): no stream processed, PROTOCOL_ERROR (1) or
        // FRAME_SIZE_ERROR (6).
        let code: u32 = if matches!(error, RewriteError::FrameTooLarge(_)) { 6 } else { 1 };
        let mut goaway = Vec::new();
        write_frame_header(&mut goaway, 8, 0x7, 0, 0);
        goaway.extend_from_slice(&0u32.to_be_bytes());
        goaway.extend_from_slice(&code.to_be_bytes());
        let _ = to_client.write_all(&goaway).await;
    } else if let Err(error) = result {
        debug!(%error, "a control connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame_header(&mut out, payload.len(), kind, flags, stream_id);
        out.extend_from_slice(payload);
        out
    }

    /// Splits `bytes` (after the preface) into (type, flags, stream, payload).
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut rest = &bytes[PREFACE_LEN..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let length = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let id = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            frames.push((rest[3], rest[4], id, rest[9..9 + length].to_vec()));
            rest = &rest[9 + length..];
        }
        frames
    }

    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn request_headers(authority: &[u8]) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (b":path", b"/voicelink.v1.Voicelink/GetStatus".to_vec()),
            (b":authority", authority.to_vec()),
            (b"content-type", b"application/grpc".to_vec()),
        ]
    }

    fn encode(encoder: &mut loona_hpack::Encoder<'_>, headers: &[(&'static [u8], Vec<u8>)]) -> Vec<u8> {
        encoder.encode(headers.iter().map(|(n, v)| (*n, v.as_slice())))
    }

    #[test]
    fn the_authority_becomes_localhost_across_requests_sharing_the_dynamic_table() {
        // The client's encoder indexes the bad authority in the first request and
        // refers to it by index in the second: both must come out rewritten.
        let mut client = loona_hpack::Encoder::new();
        let headers = request_headers(b"tmp%2Fexp%2Fvoiced.sock");
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &encode(&mut client, &headers)));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\0")); // DATA
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 3, &encode(&mut client, &headers)));

        let mut rewriter = AuthorityRewriter::default();
        let mut out = Vec::new();
        // Byte by byte: frames split anywhere must come out whole.
        for byte in &input {
            rewriter.feed(std::slice::from_ref(byte), &mut out).unwrap();
        }
        assert_eq!(&out[..PREFACE_LEN], PREFACE);
        let frames = frames(&out);
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0], (0x4, 0, 0, vec![]));
        assert_eq!(frames[2], (0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\0".to_vec()));
        assert_eq!((frames[3].0, frames[3].1), (TYPE_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM));

        let mut server = loona_hpack::Decoder::new();
        for block in [&frames[1].3, &frames[3].3] {
            let decoded = server.decode(block).unwrap();
            let expected = request_headers(b"localhost");
            let expected: Vec<_> = expected.into_iter().map(|(n, v)| (n.to_vec(), v)).collect();
            assert_eq!(decoded, expected);
        }
    }

    #[test]
    fn continuation_padding_and_priority_are_reassembled() {
        let mut client = loona_hpack::Encoder::new();
        let block = encode(&mut client, &request_headers(b"/run/user/1000/voicelink/voiced.sock"));
        let (a, b) = block.split_at(block.len() / 2);
        let mut headers_payload = vec![3]; // pad length
        headers_payload.extend([0x80, 0, 0, 0, 16]); // exclusive dependency on 0, weight 16
        headers_payload.extend(a);
        headers_payload.extend([0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_PADDED | FLAG_PRIORITY, 5, &headers_payload));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 5, b));

        let mut out = Vec::new();
        AuthorityRewriter::default().feed(&input, &mut out).unwrap();
        let frames = frames(&out);
        assert_eq!(frames.len(), 1);
        let (kind, flags, stream, payload) = &frames[0];
        assert_eq!((*kind, *flags, *stream), (TYPE_HEADERS, FLAG_PRIORITY | FLAG_END_HEADERS, 5));
        assert_eq!(payload[..5], [0x80, 0, 0, 0, 16]);
        let decoded = loona_hpack::Decoder::new().decode(&payload[5..]).unwrap();
        assert!(decoded.contains(&(b":authority".to_vec(), b"localhost".to_vec())), "{decoded:?}");
    }

    #[test]
    fn a_block_larger_than_a_frame_is_split_into_continuations() {
        let mut client = loona_hpack::Encoder::new();
        let mut headers = request_headers(b"x");
        headers.push((b"x-big", vec![b'a'; 40_000]));
        let block = encode(&mut client, &headers);
        let mut input = PREFACE.to_vec();
        let mut chunks = block.chunks(MAX_FRAME_LEN).peekable();
        let mut kind = TYPE_HEADERS;
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_none() { FLAG_END_HEADERS } else { 0 };
            input.extend(frame(kind, flags, 1, chunk));
            kind = TYPE_CONTINUATION;
        }
        let mut out = Vec::new();
        AuthorityRewriter::default().feed(&input, &mut out).unwrap();
        let frames = frames(&out);
        assert!(frames.len() >= 3);
        assert!(frames.iter().all(|f| f.3.len() <= MAX_FRAME_LEN));
        assert_eq!(frames.last().map(|f| f.1), Some(FLAG_END_HEADERS));
        let block: Vec<u8> = frames.iter().flat_map(|f| f.3.clone()).collect();
        let decoded = loona_hpack::Decoder::new().decode(&block).unwrap();
        assert_eq!(decoded[5].1.len(), 40_000);
    }

    #[test]
    fn broken_framing_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        let cases: [Vec<u8>; 4] = [
            frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b"x"),
            [frame(TYPE_HEADERS, 0, 1, b""), frame(0x0, 0, 1, b"")].concat(),
            frame(TYPE_HEADERS, FLAG_PADDED | FLAG_END_HEADERS, 1, &[9, 1]),
            vec![0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1],
        ];
        for case in cases {
            let input = [PREFACE.as_slice(), &case].concat();
            assert!(AuthorityRewriter::default().feed(&input, &mut out).is_err(), "{case:?}");
        }
        // A header block that is not HPACK.
        let input = [PREFACE.as_slice(), &frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0xff; 8])].concat();
        let error = AuthorityRewriter::default().feed(&input, &mut out).unwrap_err();
        assert!(matches!(error, RewriteError::HeaderBlock(_)), "{error}");
    }

    #[test]
    fn a_client_cannot_make_the_decoder_allocate_without_bound() {
        let mut out = Vec::new();
        // A dynamic table size update to 1 GiB: more than the server allows.
        let mut update = vec![0x3f];
        let mut rest = (1usize << 30) - 31;
        while rest >= 128 {
            update.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        update.push(rest as u8);
        update.extend(loona_hpack::Encoder::new().encode([(b":method".as_slice(), b"POST".as_slice())]));
        let input = [PREFACE.as_slice(), &frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &update)].concat();
        let error = AuthorityRewriter::default().feed(&input, &mut out).unwrap_err();
        assert!(matches!(error, RewriteError::HeaderBlock(_)), "{error}");

        // One 4000-byte header in the table, then 16 000 one-byte references to it:
        // 64 MB decoded from a 16 KB block.
        let mut client = loona_hpack::Encoder::new();
        let big = vec![b'a'; 4000];
        let first = client.encode([(b"x-big".as_slice(), big.as_slice())]);
        let index = 62u8; // the first dynamic entry
        let references = vec![0x80 | index; 16_000];
        let mut rewriter = AuthorityRewriter::default();
        let input = [
            PREFACE.as_slice(),
            &frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &first),
            &frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &references),
        ]
        .concat();
        let error = rewriter.feed(&input, &mut out).unwrap_err();
        assert!(matches!(error, RewriteError::HeadersTooLarge), "{error}");
    }
}
