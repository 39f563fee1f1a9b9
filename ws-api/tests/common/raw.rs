//! Raw sockets for hostile-client tests: HTTP and WebSocket bytes written by hand, so a test
//! can send what no library client would (a frame header without its payload, a body one
//! byte at a time) and see exactly what the server answers.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to the server from `source` (any 127.0.0.0/8 address; 127.0.0.1 when
/// `None`), so that tests can play many clients from one machine.
pub async fn connect_from(server: SocketAddr, source: Option<std::net::IpAddr>) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).unwrap();
    }
    socket.connect(server).await.unwrap()
}

/// The server's address from its base URL.
pub fn address(base: &str) -> SocketAddr {
    base.trim_start_matches("http://").parse().unwrap()
}

/// Reads an HTTP answer's head (status line and headers) and as much of its body as
/// `Content-Length` says; `None` when the connection closes first.
pub async fn read_answer(stream: &mut TcpStream, wait: Duration) -> Option<(u16, String, String)> {
    read_answer_from(stream, wait).await
}

/// `read_answer` from any reader (the read half of a split stream).
pub async fn read_answer_from(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    wait: Duration,
) -> Option<(u16, String, String)> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(end) = find(&bytes, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
            let length = header(&head, "content-length").map_or(0, |v| v.parse().unwrap_or(0));
            if bytes.len() >= end + 4 + length {
                let status = head.split(' ').nth(1)?.parse().ok()?;
                let body = String::from_utf8_lossy(&bytes[end + 4..end + 4 + length]).into_owned();
                return Some((status, head, body));
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
}

/// A header's value in a response head (case-insensitive name).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A WebSocket opened by hand.
pub struct RawSocket {
    pub stream: TcpStream,
    /// Bytes read past the last whole frame.
    pending: Vec<u8>,
}

/// A server frame: opcode and payload.
pub struct ServerFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl ServerFrame {
    /// A close frame's status code, if it carries one.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 0x8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// The upgrade request for `path`.
pub fn upgrade_request(path: &str, extra_headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: panshi\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         {extra_headers}\r\n"
    )
}

impl RawSocket {
    /// Sends the upgrade; `Err` holds the answer when it is not 101.
    pub async fn open(
        base: &str,
        path: &str,
        extra_headers: &str,
    ) -> Result<RawSocket, (u16, String, String)> {
        let mut stream = connect_from(address(base), None).await;
        stream
            .write_all(upgrade_request(path, extra_headers).as_bytes())
            .await
            .unwrap();
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 1024];
        let end = loop {
            if let Some(end) = find(&bytes, b"\r\n\r\n") {
                break end;
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the server closed during the upgrade");
            bytes.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        if status != 101 {
            let length = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
            while bytes.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                bytes.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&bytes[end + 4..end + 4 + length]).into_owned();
            return Err((status, head, body));
        }
        Ok(RawSocket {
            stream,
            pending: bytes[end + 4..].to_vec(),
        })
    }

    /// A masked client frame's header for `len` payload bytes (mask all zero, so the payload
    /// goes as is).
    pub fn header(opcode: u8, len: u64) -> Vec<u8> {
        let mut header = vec![0x80 | opcode];
        match len {
            0..=125 => header.push(0x80 | len as u8),
            126..=0xffff => {
                header.push(0x80 | 126);
                header.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                header.push(0x80 | 127);
                header.extend_from_slice(&len.to_be_bytes());
            }
        }
        header.extend_from_slice(&[0, 0, 0, 0]);
        header
    }

    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mut frame = Self::header(opcode, payload.len() as u64);
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).await.unwrap();
    }

    /// The next frame from the server, or `None` when the connection closes or `wait` passes.
    pub async fn read_frame(&mut self, wait: Duration) -> Option<ServerFrame> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((frame, used)) = parse(&self.pending) {
                self.pending.drain(..used);
                return Some(frame);
            }
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames until a close; its code (`Some(None)` for a close without one).
    pub async fn close_code(&mut self, wait: Duration) -> Option<Option<u16>> {
        loop {
            let frame = self.read_frame(wait).await?;
            if frame.opcode == 0x8 {
                return Some(frame.close_code());
            }
        }
    }
}

/// One unmasked server frame at the start of `bytes`, with the bytes it took.
fn parse(bytes: &[u8]) -> Option<(ServerFrame, usize)> {
    let opcode = bytes.first()? & 0x0f;
    let (len, start) = match bytes.get(1)? & 0x7f {
        126 => (
            u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = bytes.get(start..start + len)?.to_vec();
    Some((ServerFrame { opcode, payload }, start + len))
}

/// The resident set of a process, in bytes (Linux).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// The TCP connections a process holds open (Linux: its socket descriptors).
pub fn sockets_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
                .filter(|target| target.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}
