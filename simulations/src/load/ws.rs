//! A buyer watching an order over `GET /api/v1/orders/{id}/live` (tokio-tungstenite with
//! 4 KiB buffers, as thousands of these are open at once in a flash sale), over a TCP
//! connection the harness opens itself so that it chooses the loopback source address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::http::open_stream;
use super::stats::ErrorKind;

/// Longest wait for the handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the next frame.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Most frames read from one order's socket (it sees a handful of status changes).
pub const FRAMES_PER_ORDER_MAX: usize = 16;
/// Buffer sizes of each socket.
const BUFFER_BYTES: usize = 4 * 1024;

pub struct Live {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

#[derive(Deserialize)]
struct Frame<'a> {
    status: &'a str,
}

fn error_kind(error: &WsError) -> ErrorKind {
    match error {
        WsError::Http(response) => ErrorKind::Status(response.status().as_u16()),
        WsError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => ErrorKind::Connect,
        WsError::Io(_) => ErrorKind::Io,
        WsError::ConnectionClosed | WsError::AlreadyClosed => ErrorKind::Closed,
        _ => ErrorKind::Protocol,
    }
}

impl Live {
    /// Connects to `url` (on `addr`) from `source`, and upgrades.
    pub async fn connect(addr: SocketAddr, source: IpAddr, url: &str) -> Result<Live, ErrorKind> {
        match tokio::time::timeout(CONNECT_TIMEOUT, Self::handshake(addr, source, url)).await {
            Ok(result) => result,
            Err(_) => Err(ErrorKind::Timeout),
        }
    }

    async fn handshake(addr: SocketAddr, source: IpAddr, url: &str) -> Result<Live, ErrorKind> {
        let tcp = open_stream(addr, Some(source))
            .await
            .map_err(|_| ErrorKind::Connect)?;
        let config = WebSocketConfig::default()
            .read_buffer_size(BUFFER_BYTES)
            .write_buffer_size(BUFFER_BYTES);
        let upgrading = tokio_tungstenite::client_async_with_config(
            url,
            MaybeTlsStream::Plain(tcp),
            Some(config),
        );
        match upgrading.await {
            Ok((stream, _)) => Ok(Live { stream }),
            Err(error) => Err(error_kind(&error)),
        }
    }

    /// The next text frame; `Closed` when the server closed first.
    async fn next_text(&mut self) -> Result<tokio_tungstenite::tungstenite::Utf8Bytes, ErrorKind> {
        for _ in 0..FRAMES_PER_ORDER_MAX {
            let message = tokio::time::timeout(FRAME_TIMEOUT, self.stream.next())
                .await
                .map_err(|_| ErrorKind::Timeout)?;
            match message {
                Some(Ok(Message::Text(text))) => return Ok(text),
                Some(Ok(Message::Close(_))) | None => return Err(ErrorKind::Closed),
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(error_kind(&error)),
            }
        }
        Err(ErrorKind::Protocol)
    }

    /// The status of the next text frame; `Closed` when the server closed first.
    pub async fn next_status(&mut self) -> Result<String, ErrorKind> {
        let text = self.next_text().await?;
        let frame: Frame<'_> =
            serde_json::from_str(&text).map_err(|_| ErrorKind::UnexpectedBody)?;
        Ok(frame.status.to_owned())
    }

    /// The next text frame as JSON (a waiting-room ticket's frames).
    pub async fn next_json(&mut self) -> Result<serde_json::Value, ErrorKind> {
        let text = self.next_text().await?;
        serde_json::from_str(&text).map_err(|_| ErrorKind::UnexpectedBody)
    }

    /// Reads frames until `status` arrives; any terminal status before it is an error.
    pub async fn wait_for(&mut self, status: &str) -> Result<(), ErrorKind> {
        for _ in 0..FRAMES_PER_ORDER_MAX {
            let seen = self.next_status().await?;
            if seen == status {
                return Ok(());
            }
            if matches!(
                seen.as_str(),
                "delivered" | "expired" | "refunded" | "cancelled"
            ) {
                return Err(ErrorKind::UnexpectedBody);
            }
        }
        Err(ErrorKind::Protocol)
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(FRAME_TIMEOUT, self.stream.close(None)).await;
    }
}
