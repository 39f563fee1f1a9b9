//! A small HTTP/1.1 keep-alive client over a tokio `TcpStream`.
//!
//! The generator shares a 2-core machine with the server, so its own CPU matters: a
//! reqwest client costs about 100 us of CPU per purchase, this one about 18 us. Callers
//! format request bytes once; an answer is parsed from its status line, `Content-Length`
//! and `Connection: close` (the server always sends a length). One request at a time per
//! connection, no pipelining.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::stats::ErrorKind;

/// Longest wait for one whole exchange (connect, write, read the answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest status line plus headers accepted.
pub const HEAD_BYTES_MAX: usize = 16 * 1024;
/// Longest answer accepted; lookups and operator answers are far smaller.
pub const ANSWER_BYTES_MAX: usize = 8 * 1024 * 1024;
/// A connection idle longer than this is replaced before use: the server's keep-alive
/// timer (5 s in actix) could close it just as a request goes out.
pub const IDLE_REUSE_MAX: Duration = Duration::from_secs(2);
/// `408 Request Timeout`.
const REQUEST_TIMEOUT_STATUS: u16 = 408;
/// Spare room made in the buffer before each read.
const READ_RESERVE_BYTES: usize = 4 * 1024;

/// Distinct loopback source addresses (127.0.1.0 upwards) for many simultaneous connections.
pub const SOURCE_ADDRESSES: u32 = 250;

const _: () = assert!(HEAD_BYTES_MAX < ANSWER_BYTES_MAX);
const _: () = assert!(IDLE_REUSE_MAX.as_millis() < 5_000);

#[derive(Debug)]
pub enum HttpError {
    Connect(io::Error),
    Timeout,
    /// The connection closed before any byte of the answer.
    Closed,
    Io(io::Error),
    Protocol(&'static str),
}

impl HttpError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            HttpError::Connect(_) => ErrorKind::Connect,
            HttpError::Timeout => ErrorKind::Timeout,
            HttpError::Closed => ErrorKind::Closed,
            HttpError::Io(_) => ErrorKind::Io,
            HttpError::Protocol(_) => ErrorKind::Protocol,
        }
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Connect(e) => write!(f, "connect: {e}"),
            HttpError::Timeout => f.write_str("timed out"),
            HttpError::Closed => f.write_str("connection closed before the answer"),
            HttpError::Io(e) => write!(f, "i/o: {e}"),
            HttpError::Protocol(what) => write!(f, "protocol: {what}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// Whether a request may go out again when a reused connection turns out to be closed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    Never,
    /// Safe for idempotent requests (lookups, notifies, operator reads).
    OnStaleConnection,
}

pub struct Answer<'a> {
    pub status: u16,
    pub body: &'a [u8],
}

/// The loopback source address for connection number `index`. With thousands of
/// connections from 127.0.0.1 to one port, the kernel's search for a free ephemeral port
/// costs more CPU than everything else the generator does; spread over many source
/// addresses it stays short. The destination is still only ever 127.0.0.1.
pub fn loopback_source(index: usize) -> IpAddr {
    let n = index as u32 % SOURCE_ADDRESSES;
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        1 + (n / 250) as u8,
        (n % 250) as u8 + 1,
    ))
}

/// Connects to `addr`, from `source` when given.
pub async fn open_stream(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let stream = match source {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket = TcpSocket::new_v4()?;
            // Lets a port still in TIME_WAIT from an earlier run be bound again.
            socket.set_reuseaddr(true)?;
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One keep-alive connection to one address, reconnecting as needed.
pub struct Connection {
    addr: SocketAddr,
    /// Source address to connect from; the kernel's choice when `None`.
    source: Option<IpAddr>,
    timeout: Duration,
    stream: Option<TcpStream>,
    /// Holds one answer at a time; cleared before each request.
    buffer: Vec<u8>,
    /// When the current stream last completed an exchange; `None` while it has not.
    last_used: Option<Instant>,
    /// Streams dropped before a request because the server had closed them (or they sat
    /// idle too long): requests that would otherwise have failed without reaching it.
    pub stale_replaced: u64,
}

struct Head {
    status: u16,
    content_length: usize,
    close: bool,
}

impl Connection {
    pub fn new(addr: SocketAddr) -> Self {
        Self::with_timeout(addr, REQUEST_TIMEOUT)
    }

    pub fn with_timeout(addr: SocketAddr, timeout: Duration) -> Self {
        Self {
            addr,
            source: None,
            timeout,
            stream: None,
            buffer: Vec::with_capacity(READ_RESERVE_BYTES),
            last_used: None,
            stale_replaced: 0,
        }
    }

    /// Connects from `source` (see `loopback_source`).
    pub fn from_source(mut self, source: IpAddr) -> Self {
        self.source = Some(source);
        self
    }

    /// Opens the TCP connection now rather than at the first request.
    pub async fn connect(&mut self) -> Result<(), HttpError> {
        let stream = tokio::time::timeout(self.timeout, open_stream(self.addr, self.source))
            .await
            .map_err(|_| HttpError::Timeout)?
            .map_err(HttpError::Connect)?;
        self.stream = Some(stream);
        self.last_used = None;
        Ok(())
    }

    pub fn close(&mut self) {
        self.stream = None;
        self.last_used = None;
    }

    /// Sends one request and reads its answer, within the connection's timeout.
    pub async fn send(&mut self, request: &[u8], retry: Retry) -> Result<Answer<'_>, HttpError> {
        let idle_too_long = self
            .last_used
            .is_some_and(|at| at.elapsed() > IDLE_REUSE_MAX);
        if idle_too_long || self.stream.as_ref().is_some_and(peer_closed) {
            self.stale_replaced += 1;
            self.close();
        }
        let reused = self.stream.is_some() && self.last_used.is_some();
        let mut result = self.exchange_within_timeout(request).await;
        // A 408 is the server giving up on an idle connection before it read our request
        // (actix sends it after its client request timeout), so the request was not
        // processed and may go out again whatever it is.
        let stale = match &result {
            Ok((status, _)) => *status == REQUEST_TIMEOUT_STATUS,
            Err(HttpError::Closed) => reused && retry == Retry::OnStaleConnection,
            Err(_) => false,
        };
        if stale {
            self.stale_replaced += 1;
            self.close();
            result = self.exchange_within_timeout(request).await;
        }
        let (status, body) = result?;
        Ok(Answer {
            status,
            body: &self.buffer[body],
        })
    }

    async fn exchange_within_timeout(
        &mut self,
        request: &[u8],
    ) -> Result<(u16, Range<usize>), HttpError> {
        let result = match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(HttpError::Timeout),
        };
        if result.is_err() {
            self.close();
        }
        result
    }

    async fn exchange(&mut self, request: &[u8]) -> Result<(u16, Range<usize>), HttpError> {
        if self.stream.is_none() {
            self.connect().await?;
        }
        let stream = self.stream.as_mut().expect("connected above");
        stream.write_all(request).await.map_err(closed_or_io)?;
        self.buffer.clear();
        let head_len = read_head(stream, &mut self.buffer).await?;
        let head = parse_head(&self.buffer[..head_len])?;
        let answer_len = head_len
            .checked_add(head.content_length)
            .filter(|len| *len <= ANSWER_BYTES_MAX)
            .ok_or(HttpError::Protocol("answer too large"))?;
        while self.buffer.len() < answer_len {
            read_more(stream, &mut self.buffer).await?;
        }
        if self.buffer.len() != answer_len {
            return Err(HttpError::Protocol("bytes after the answer"));
        }
        if head.close {
            self.close();
        } else {
            self.last_used = Some(Instant::now());
        }
        Ok((head.status, head_len..answer_len))
    }
}

/// Whether the server already closed this idle connection (its FIN or RST arrived), so a
/// request written to it would be lost without ever reaching the server. Costs no system
/// call unless the reactor saw the socket become readable.
fn peer_closed(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    match stream.try_read(&mut probe) {
        Err(error) => error.kind() != io::ErrorKind::WouldBlock,
        // End of stream, or bytes nobody asked for: either way the connection is done.
        Ok(_) => true,
    }
}

fn closed_or_io(error: io::Error) -> HttpError {
    match error.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => HttpError::Closed,
        _ => HttpError::Io(error),
    }
}

/// Reads until the blank line after the headers; returns the head's length.
async fn read_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<usize, HttpError> {
    let mut searched = 0;
    loop {
        if let Some(end) = find_head_end(buffer, searched) {
            return Ok(end);
        }
        if buffer.len() >= HEAD_BYTES_MAX {
            return Err(HttpError::Protocol("head too long"));
        }
        searched = buffer.len().saturating_sub(3);
        read_more(stream, buffer).await?;
    }
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<(), HttpError> {
    buffer.reserve(READ_RESERVE_BYTES);
    let nothing_yet = buffer.is_empty();
    match stream.read_buf(buffer).await {
        Ok(0) if nothing_yet => Err(HttpError::Closed),
        Ok(0) => Err(HttpError::Io(io::ErrorKind::UnexpectedEof.into())),
        Ok(_) => Ok(()),
        Err(error) if nothing_yet => Err(closed_or_io(error)),
        Err(error) => Err(HttpError::Io(error)),
    }
}

fn find_head_end(buffer: &[u8], from: usize) -> Option<usize> {
    buffer[from..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| from + at + 4)
}

fn parse_head(head: &[u8]) -> Result<Head, HttpError> {
    let text = std::str::from_utf8(head).map_err(|_| HttpError::Protocol("head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Protocol("not an HTTP/1 answer"));
    }
    let status: u16 = parts
        .next()
        .and_then(|code| code.parse().ok())
        .ok_or(HttpError::Protocol("bad status line"))?;
    let mut content_length = None;
    let mut close = version == "HTTP/1.0";
    for line in lines.filter(|line| !line.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::Protocol("bad header line"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse()
                    .map_err(|_| HttpError::Protocol("bad content-length"))?,
            );
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Protocol("chunked answers are not supported"));
        }
    }
    let content_length = match (content_length, status) {
        (Some(length), _) => length,
        (None, 100..=199 | 204 | 304) => 0,
        (None, _) => return Err(HttpError::Protocol("answer without content-length")),
    };
    Ok(Head {
        status,
        content_length,
        close,
    })
}

/// Formats one request. `headers` are whole `Name: value` lines without the line break.
pub fn request(method: &str, path: &str, host: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    for header in headers {
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || method != "GET" {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse() {
        let head =
            parse_head(b"HTTP/1.1 201 Created\r\ncontent-length: 12\r\nconnection: close\r\n\r\n")
                .unwrap();
        assert_eq!(head.status, 201);
        assert_eq!(head.content_length, 12);
        assert!(head.close);
        let head = parse_head(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!(head.content_length, 0);
        assert!(!head.close);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }

    #[test]
    fn head_end_is_found_across_reads() {
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n\r\nbody", 0), Some(19));
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n\r", 0), None);
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n\r\n", 15), Some(19));
    }
}
