//! `panshi reseller watch`: follows a reseller's stream over a WebSocket and prints each
//! event as one JSON line on stdout, keeping the last seq in a cursor file so that a
//! restarted watcher resumes where the last one stopped.
//!
//! Invariants: events are printed in seq order, each once per run (an event at or below the
//! cursor is skipped, so a server replay never prints twice); the cursor file always holds
//! a whole number (written to a temporary file, synced, then renamed over the old one); a
//! closed or failed socket is reopened with exponential backoff, from the cursor.
//!
//! Key decision: the line is printed (and flushed) before the cursor is saved, so a crash
//! can at worst repeat the one event in between, never skip one: at least once, with `seq`
//! to deduplicate by. A refused key (401) or a TLS failure (an untrusted or mismatched
//! certificate) ends the watcher: retrying cannot fix either. `wss://` (and `https://`)
//! speak TLS through rustls with the Mozilla roots compiled in.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The WebSocket's read and write buffers.
pub const SOCKET_BUFFER_BYTES: usize = 4_096;
/// The first reconnection delay; each failed attempt in a row doubles it.
pub const RECONNECT_FIRST_MS: u64 = 250;
/// The longest reconnection delay.
pub const RECONNECT_MAX_MS: u64 = 30_000;
/// Largest event frame accepted (a 1,000-key order fits with room to spare).
pub const FRAME_BYTES_MAX: usize = 4 << 20;
const _: () = assert!(RECONNECT_FIRST_MS <= RECONNECT_MAX_MS);

/// What to watch and where to keep the cursor.
pub struct WatchOptions {
    /// The server's base URL, `http://host:port` (or `https://`, `ws://`, `wss://`).
    pub base: String,
    pub api_key: String,
    pub cursor_file: Option<PathBuf>,
}

/// The stream URL for `base` from `cursor`.
pub fn stream_url(base: &str, cursor: u64) -> anyhow::Result<String> {
    let base = base.trim_end_matches('/');
    let socket_base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_owned()
    } else {
        anyhow::bail!("--base must start with http://, https://, ws:// or wss://");
    };
    Ok(format!(
        "{socket_base}/api/v1/reseller/stream?cursor={cursor}"
    ))
}

/// The delay before reconnection attempt `failures` (1 for the first in a row).
pub fn reconnect_delay_ms(failures: u32) -> u64 {
    let shift = failures.saturating_sub(1).min(16);
    RECONNECT_FIRST_MS
        .saturating_mul(1 << shift)
        .min(RECONNECT_MAX_MS)
}

/// The saved cursor: 0 when there is no file yet.
pub fn read_cursor(path: &Path) -> anyhow::Result<u64> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("{} holds no cursor", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// Replaces the cursor file atomically: a reader (or a restart) sees the old or the new.
pub fn write_cursor(path: &Path, seq: u64) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = std::fs::File::create(&temporary)?;
    writeln!(file, "{seq}")?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// Watches until the key is refused (an error) or the process is stopped.
pub async fn run(options: WatchOptions) -> anyhow::Result<()> {
    let mut cursor = match &options.cursor_file {
        Some(path) => read_cursor(path)?,
        None => 0,
    };
    let mut failures = 0u32;
    loop {
        match follow(&options, &mut cursor).await {
            Ok(()) => failures = 0,
            Err(error) => {
                if is_refused(&error) {
                    return Err(error).context("the server refused the API key");
                }
                if is_tls_failure(&error) {
                    return Err(error).context("TLS failed (is the certificate trusted?)");
                }
                failures = failures.saturating_add(1);
                eprintln!("panshi watch: {error:#}; reconnecting from cursor {cursor}");
            }
        }
        let delay = reconnect_delay_ms(failures.max(1));
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
}

fn is_refused(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<WsError>(),
        Some(WsError::Http(response)) if response.status() == 401
    )
}

/// A TLS failure: the handshake refused (rustls reports it as invalid data), a name that
/// cannot be a certificate's, or a build without TLS.
fn is_tls_failure(error: &anyhow::Error) -> bool {
    use tokio_tungstenite::tungstenite::error::UrlError;
    match error.downcast_ref::<WsError>() {
        Some(WsError::Tls(_)) | Some(WsError::Url(UrlError::TlsFeatureNotEnabled)) => true,
        Some(WsError::Io(io)) => io.kind() == std::io::ErrorKind::InvalidData,
        _ => false,
    }
}

/// One connection: prints events until the socket closes (`Ok`) or fails (`Err`).
async fn follow(options: &WatchOptions, cursor: &mut u64) -> anyhow::Result<()> {
    let mut request = stream_url(&options.base, *cursor)?.into_client_request()?;
    let authorization = format!("Bearer {}", options.api_key).parse()?;
    request.headers_mut().insert("Authorization", authorization);
    let config = WebSocketConfig::default()
        .read_buffer_size(SOCKET_BUFFER_BYTES)
        .write_buffer_size(SOCKET_BUFFER_BYTES)
        .max_frame_size(Some(FRAME_BYTES_MAX))
        .max_message_size(Some(FRAME_BYTES_MAX));
    let (mut socket, _) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), false).await?;
    while let Some(message) = socket.next().await {
        match message? {
            Message::Text(text) => emit(options, cursor, text.as_str())?,
            Message::Close(_) => return Ok(()),
            _ => {}
        }
    }
    Ok(())
}

/// Prints one event and saves its seq; skips what the cursor already covers.
fn emit(options: &WatchOptions, cursor: &mut u64, text: &str) -> anyhow::Result<()> {
    let event: serde_json::Value = serde_json::from_str(text).context("a frame is no JSON")?;
    let seq = event["seq"].as_u64().context("a frame has no seq")?;
    if seq <= *cursor {
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{event}")?;
    stdout.flush()?;
    *cursor = seq;
    if let Some(path) = &options.cursor_file {
        write_cursor(path, seq).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_backoff() {
        assert_eq!(
            stream_url("http://h:1/", 7).unwrap(),
            "ws://h:1/api/v1/reseller/stream?cursor=7"
        );
        assert!(stream_url("wss://h", 0).unwrap().starts_with("wss://h/"));
        assert!(stream_url("ftp://h", 0).is_err());
        assert_eq!(reconnect_delay_ms(1), RECONNECT_FIRST_MS);
        assert_eq!(reconnect_delay_ms(2), 2 * RECONNECT_FIRST_MS);
        assert_eq!(reconnect_delay_ms(u32::MAX), RECONNECT_MAX_MS);
    }

    #[test]
    fn cursor_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursor");
        assert_eq!(read_cursor(&path).unwrap(), 0);
        write_cursor(&path, 42).unwrap();
        assert_eq!(read_cursor(&path).unwrap(), 42);
        write_cursor(&path, 43).unwrap();
        assert_eq!(read_cursor(&path).unwrap(), 43);
    }
}
