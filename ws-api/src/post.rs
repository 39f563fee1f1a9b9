//! A minimal HTTP/1.1 POST client for `http://` URLs, and one background thread that sends
//! queued posts (alert webhooks, Sentry envelopes) so no request path ever waits on them.
//!
//! Invariants: at most `POST_QUEUE_CAPACITY` posts wait (more are dropped and counted); every
//! connect, write and read has a timeout (`POST_TIMEOUT_MS`); only plain `http://` URLs are
//! accepted: this server carries no TLS stack.
//!
//! Design decision: hand-written rather than a client crate because the server needs only a
//! fire-and-forget POST with a status line back, and every HTTP client crate in reach brings
//! TLS or a second runtime.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::Duration;

/// Posts that may wait for the sender thread.
pub const POST_QUEUE_CAPACITY: usize = 256;
/// Timeout for each of connect, write and read.
pub const POST_TIMEOUT_MS: u64 = 5_000;
/// Bytes of the answer read (enough for the status line).
const ANSWER_BYTES_MAX: usize = 1_024;

/// A parsed `http://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub target: String,
}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or("only http:// URLs are supported (this build has no TLS)")?;
        let (authority, target) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') || target.contains(['\r', '\n', ' ']) {
            return Err("a host is required; no credentials, spaces or line breaks".into());
        }
        let (host, port) = split_host_port(authority)?;
        Ok(HttpUrl {
            host: host.into(),
            port,
            target: target.into(),
        })
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(authority: &str) -> Result<(&str, u16), String> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, rest) = v6.split_once(']').ok_or("unclosed [")?;
            (host, rest.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = port.map_or(Ok(80), |p| p.parse().map_err(|_| "bad port".to_owned()))?;
    Ok((host, port))
}

/// One request for the sender thread.
pub struct Post {
    pub url: HttpUrl,
    pub content_type: &'static str,
    /// Extra headers, each `Name: value` without line breaks.
    pub headers: Vec<String>,
    pub body: Vec<u8>,
}

/// Sends a POST and returns the answer's status code.
pub fn send(post: &Post) -> std::io::Result<u16> {
    let timeout = Duration::from_millis(POST_TIMEOUT_MS);
    let address = (post.url.host.as_str(), post.url.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("host has no address"))?;
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_read_timeout(Some(timeout))?;
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: panshi\r\n",
        post.url.target,
        post.url.host,
        post.url.port,
        post.content_type,
        post.body.len()
    );
    for header in &post.headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(&post.body)?;
    let mut answer = vec![0; ANSWER_BYTES_MAX];
    let read = stream.read(&mut answer)?;
    parse_status(&answer[..read]).ok_or_else(|| std::io::Error::other("no HTTP status line"))
}

fn parse_status(answer: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(answer).ok()?.lines().next()?;
    let mut parts = line.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

/// The queue of the sender thread. Cheap to clone.
#[derive(Clone)]
pub struct Poster {
    queue: SyncSender<Post>,
}

impl Poster {
    /// Starts the sender thread.
    pub fn start() -> Poster {
        let (queue, receiver) = sync_channel(POST_QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("panshi-post".into())
            .spawn(move || run(receiver))
            .expect("spawning the post thread");
        Poster { queue }
    }

    /// Queues a post; drops it (counted) when the queue is full.
    pub fn post(&self, post: Post) {
        match self.queue.try_send(post) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metrics::counter!("panshi_outbound_posts_total", "outcome" => "dropped")
                    .increment(1);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn run(receiver: Receiver<Post>) {
    for post in receiver {
        let outcome = match send(&post) {
            Ok(status) if (200..300).contains(&status) => "sent",
            Ok(status) => {
                tracing::warn!(status, host = %post.url.host, "outbound POST refused");
                "refused"
            }
            Err(error) => {
                tracing::warn!(%error, host = %post.url.host, "outbound POST failed");
                "failed"
            }
        };
        metrics::counter!("panshi_outbound_posts_total", "outcome" => outcome).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_urls_only() {
        let url = HttpUrl::parse("http://127.0.0.1:9000/hooks/alert?x=1").unwrap();
        assert_eq!(url.host, "127.0.0.1");
        assert_eq!(url.port, 9000);
        assert_eq!(url.target, "/hooks/alert?x=1");
        assert_eq!(HttpUrl::parse("http://example.test").unwrap().port, 80);
        assert!(HttpUrl::parse("https://example.test/").is_err());
        assert!(HttpUrl::parse("http://user:pw@example.test/").is_err());
        assert!(HttpUrl::parse("http:///x").is_err());
    }

    #[test]
    fn posts_and_reads_the_status() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut chunk = [0; 1024];
            while !request.ends_with(b"{}") {
                let read = stream.read(&mut chunk).unwrap();
                assert!(read > 0, "client closed early");
                request.extend_from_slice(&chunk[..read]);
            }
            stream
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        let post = Post {
            url: HttpUrl::parse(&format!("http://127.0.0.1:{port}/hook")).unwrap(),
            content_type: "application/json",
            headers: vec!["X-Test: 1".into()],
            body: b"{}".to_vec(),
        };
        assert_eq!(send(&post).unwrap(), 204);
        let request = server.join().unwrap();
        assert!(request.starts_with("POST /hook HTTP/1.1\r\n"));
        assert!(request.contains("X-Test: 1\r\n"));
        assert!(request.ends_with("\r\n\r\n{}"));
    }
}
