//! A minimal WebSocket client for watching thousands of orders at once: the upgrade and the
//! frame reader written by hand over one TCP stream and one fixed 4 KiB buffer, with no
//! per-socket task machinery beyond what tokio needs to wait for a readable socket. A
//! library client (tokio-tungstenite) costs several times the memory and CPU per socket,
//! which on a 2-core machine is taken from the server being measured.
//!
//! Invariants: a socket never holds more than `BUFFER_BYTES` of the server's bytes (a frame
//! that would not fit is a protocol error); server frames are unmasked and unfragmented
//! (the server sends every frame whole); the client's frames are masked, as RFC 6455
//! requires.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::http::open_stream;
use super::stats::ErrorKind;

/// The read buffer of each socket: the upgrade's answer and any one server frame fit.
pub const BUFFER_BYTES: usize = 4 * 1024;
/// Largest control-frame payload (RFC 6455 5.5).
const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

pub const OPCODE_TEXT: u8 = 0x1;
pub const OPCODE_CLOSE: u8 = 0x8;
pub const OPCODE_PING: u8 = 0x9;
const OPCODE_PONG: u8 = 0xa;

/// One open WebSocket.
pub struct RawSocket {
    stream: TcpStream,
    buffer: Vec<u8>,
    /// Bytes of `buffer` that belong to the frame last returned.
    consumed: usize,
}

/// A frame read: its opcode and where its payload lies in the socket's buffer.
pub struct Frame {
    pub opcode: u8,
    payload: Range<usize>,
}

impl RawSocket {
    /// Connects from `source` and upgrades `path`; `Err` carries the answer's status when
    /// it is not 101.
    pub async fn open(
        addr: SocketAddr,
        source: Option<IpAddr>,
        path: &str,
    ) -> Result<RawSocket, ErrorKind> {
        let stream = open_stream(addr, source)
            .await
            .map_err(|_| ErrorKind::Connect)?;
        Self::upgrade(stream, addr, path, &[]).await
    }

    /// Upgrades `path` over `stream`, a connection to `addr`, sending `headers` (whole
    /// header lines without their CRLF) with the upgrade.
    pub async fn upgrade(
        mut stream: TcpStream,
        addr: SocketAddr,
        path: &str,
        headers: &[&str],
    ) -> Result<RawSocket, ErrorKind> {
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n"
        );
        for header in headers {
            request.push_str(header);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|_| ErrorKind::Io)?;
        let mut socket = RawSocket {
            stream,
            buffer: Vec::with_capacity(BUFFER_BYTES),
            consumed: 0,
        };
        let head_end = loop {
            if let Some(end) = find(&socket.buffer, b"\r\n\r\n") {
                break end + 4;
            }
            socket.fill().await?;
        };
        let status = std::str::from_utf8(&socket.buffer[..head_end])
            .ok()
            .and_then(|head| head.split(' ').nth(1)?.parse::<u16>().ok())
            .ok_or(ErrorKind::Protocol)?;
        if status != 101 {
            return Err(ErrorKind::Status(status));
        }
        socket.consumed = head_end;
        Ok(socket)
    }

    /// Reads more of the server's bytes into the buffer's free room.
    async fn fill(&mut self) -> Result<(), ErrorKind> {
        if self.buffer.len() == self.buffer.capacity() {
            return Err(ErrorKind::Protocol);
        }
        // `read_buf` only ever writes into the spare capacity checked above.
        match self.stream.read_buf(&mut self.buffer).await {
            Ok(0) => Err(ErrorKind::Closed),
            Ok(_) => Ok(()),
            Err(_) => Err(ErrorKind::Io),
        }
    }

    /// The next whole frame from the server.
    pub async fn next_frame(&mut self) -> Result<Frame, ErrorKind> {
        self.buffer.drain(..self.consumed);
        self.consumed = 0;
        loop {
            if let Some((opcode, payload)) = frame_at(&self.buffer)? {
                self.consumed = payload.end;
                return Ok(Frame { opcode, payload });
            }
            self.fill().await?;
        }
    }

    /// The payload of `frame`, the last one read.
    pub fn payload(&self, frame: &Frame) -> &[u8] {
        &self.buffer[frame.payload.clone()]
    }

    /// Answers a ping with its payload.
    pub async fn pong(&mut self, ping: &Frame) -> Result<(), ErrorKind> {
        let payload = self.payload(ping);
        if payload.len() > CONTROL_PAYLOAD_BYTES_MAX {
            return Err(ErrorKind::Protocol);
        }
        let mut frame = Vec::with_capacity(6 + payload.len());
        frame.extend_from_slice(&[0x80 | OPCODE_PONG, 0x80 | payload.len() as u8, 0, 0, 0, 0]);
        // An all-zero mask leaves the payload as it is.
        frame.extend_from_slice(payload);
        self.stream
            .write_all(&frame)
            .await
            .map_err(|_| ErrorKind::Io)
    }
}

/// The frame at the start of `buffer` once it is all in: its opcode and payload range.
fn frame_at(buffer: &[u8]) -> Result<Option<(u8, Range<usize>)>, ErrorKind> {
    let [first, second, ..] = *buffer else {
        return Ok(None);
    };
    if second & 0x80 != 0 || first & 0x80 == 0 {
        // A server never masks, and never fragments what this client reads.
        return Err(ErrorKind::Protocol);
    }
    let (header, length) = match second & 0x7f {
        126 => match buffer.get(2..4) {
            Some(bytes) => (4, u64::from(u16::from_be_bytes([bytes[0], bytes[1]]))),
            None => return Ok(None),
        },
        127 => match buffer.get(2..10) {
            Some(bytes) => (10, u64::from_be_bytes(bytes.try_into().expect("8 bytes"))),
            None => return Ok(None),
        },
        short => (2, u64::from(short)),
    };
    if length > (BUFFER_BYTES - header) as u64 {
        return Err(ErrorKind::Protocol);
    }
    let end = header + length as usize;
    Ok((buffer.len() >= end).then_some((first & 0x0f, header..end)))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_read_only_once_whole() {
        assert_eq!(frame_at(&[0x81]).unwrap(), None);
        assert_eq!(frame_at(&[0x81, 3, b'a']).unwrap(), None);
        assert_eq!(
            frame_at(&[0x81, 3, b'a', b'b', b'c']).unwrap(),
            Some((1, 2..5))
        );
        assert_eq!(frame_at(&[0x89, 0]).unwrap(), Some((9, 2..2)));
        let mut long = vec![0x81, 126, 0x01, 0x00];
        long.resize(4 + 256, b'x');
        assert_eq!(frame_at(&long).unwrap(), Some((1, 4..260)));
        assert_eq!(frame_at(&[0x81, 0x83]), Err(ErrorKind::Protocol));
        assert_eq!(
            frame_at(&[0x82, 127, 0, 0, 0, 1, 0, 0, 0, 0]),
            Err(ErrorKind::Protocol)
        );
    }
}
