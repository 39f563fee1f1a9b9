//! The server side of every live WebSocket (an order, a queue ticket, a reseller's stream):
//! the upgrade, the client's frames, and the pump that turns a feed into the socket's frames.
//!
//! A socket is its connection's response body (`serve`): the connection asks the pump for
//! its next frame, and the pump waits on the feed, the client's frames, the drain and the
//! server's one heartbeat. So an open socket costs its connection and this state alone: no
//! task, channel or timer of its own (issue 19: 10,000 sockets at most 16 KiB each).
//!
//! The client's frames are read here rather than by actix-ws's `MessageStream`, because
//! actix-http's codec buffers a frame until it is complete whatever length its header
//! declares: eight sockets declaring 2^40-byte frames held 800 MB. Here a header declaring
//! more than `CLIENT_FRAME_BYTES_MAX` closes the socket with 1009 before its payload is read.
//!
//! Invariants: a socket holds at most one frame limit of client bytes plus one read chunk;
//! a client's Close is answered at once with its own code (RFC 6455 5.5.1); a text frame
//! that is not UTF-8 closes with 1007; pings are answered; a socket holds no timer of its
//! own: it pings its client at each beat of the server's one heartbeat (`Lifecycle::beat`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix_codec::{Decoder, Encoder};
use actix_http::ws::{Codec, Frame, ProtocolError};
use actix_web::body::{BodyStream, MessageBody};
use actix_web::web::{Bytes, BytesMut};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message};
use futures_util::StreamExt;

use crate::drain::Lifecycle;
use crate::error::ApiError;
use crate::AppState;

/// Largest frame a client may send (they only need pings and closes).
pub const CLIENT_FRAME_BYTES_MAX: usize = 4 * 1024;
/// Every client is pinged this often by default (`http.websocket_ping_secs`).
pub const PING_INTERVAL_SECS_DEFAULT: u64 = 30;
/// The longest ping interval a setting may ask for.
pub const PING_INTERVAL_SECS_MAX: u64 = 3_600;
/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
const FRAME_HEADER_BYTES_MAX: usize = 14;

/// Refuses a request that is no WebSocket upgrade (400 in the contract's shape); call it
/// before anything with an effect.
pub fn verify(request: &HttpRequest) -> Result<(), ApiError> {
    actix_http::ws::verify_handshake(request.head())
        .map_err(|error| ApiError::bad_request("not_a_websocket", error.to_string()))
}

/// Answers the upgrade with `feed` as the socket. The socket's frames are the response
/// body itself, made as the connection asks for them (`Pump`): a socket has no task, no
/// channel and no timer of its own, only this state inside its connection. `guard` is held
/// until the connection ends.
pub fn serve(
    request: &HttpRequest,
    body: web::Payload,
    feed: impl Feed + 'static,
    guard: OpenSocket,
    lifecycle: Arc<Lifecycle>,
) -> Result<HttpResponse, actix_web::Error> {
    let mut response = actix_http::ws::handshake(request.head())?;
    let pump = Pump {
        beats: lifecycle.beats(),
        lifecycle,
        frames: ClientFrames::new(body),
        feed,
        codec: Codec::new(),
        stage: Stage::Open,
        _guard: guard,
    };
    let frames = futures_util::stream::unfold(pump, Pump::next_bytes);
    Ok(response
        .message_body(BodyStream::new(frames).boxed())?
        .into())
}

/// The client's frames, each checked against the frame limit as soon as its header is in.
pub struct ClientFrames {
    payload: web::Payload,
    buffer: BytesMut,
    codec: Codec,
    /// The connection ended or a frame was refused: nothing more is read.
    ended: bool,
}

impl ClientFrames {
    fn new(payload: web::Payload) -> Self {
        Self {
            payload,
            buffer: BytesMut::with_capacity(FRAME_HEADER_BYTES_MAX),
            codec: Codec::new().max_size(CLIENT_FRAME_BYTES_MAX),
            ended: false,
        }
    }

    /// The next complete frame; `Err` carries the close the server answers with; `None`
    /// once the client is gone. Cancel-safe: bytes read stay in the buffer.
    pub async fn recv(&mut self) -> Option<Result<Message, CloseReason>> {
        loop {
            if declared_length(&self.buffer).is_some_and(|n| n > CLIENT_FRAME_BYTES_MAX as u64) {
                return Some(Err(self.refuse(too_big())));
            }
            match self.codec.decode(&mut self.buffer) {
                Ok(Some(frame)) => match message(frame) {
                    Ok(message) => return Some(Ok(message)),
                    Err(reason) => return Some(Err(self.refuse(reason))),
                },
                Ok(None) => {}
                Err(error) => return Some(Err(self.refuse(protocol_close(&error)))),
            }
            if self.ended {
                return None;
            }
            match self.payload.next().await {
                Some(Ok(bytes)) => self.buffer.extend_from_slice(&bytes),
                Some(Err(_)) | None => self.ended = true,
            }
        }
    }

    fn refuse(&mut self, reason: CloseReason) -> CloseReason {
        self.ended = true;
        self.buffer = BytesMut::new();
        reason
    }
}

/// The payload length a frame header at the start of `buffer` declares, once it is in.
fn declared_length(buffer: &[u8]) -> Option<u64> {
    let length = match buffer.get(1)? & 0x7f {
        126 => u64::from(u16::from_be_bytes(buffer.get(2..4)?.try_into().ok()?)),
        127 => u64::from_be_bytes(buffer.get(2..10)?.try_into().ok()?),
        short => u64::from(short),
    };
    Some(length)
}

fn too_big() -> CloseReason {
    CloseReason {
        code: CloseCode::Size,
        description: Some(format!(
            "frames are limited to {CLIENT_FRAME_BYTES_MAX} bytes"
        )),
    }
}

fn protocol_close(error: &ProtocolError) -> CloseReason {
    match error {
        ProtocolError::Overflow => too_big(),
        _ => CloseReason::from(CloseCode::Protocol),
    }
}

fn message(frame: Frame) -> Result<Message, CloseReason> {
    Ok(match frame {
        Frame::Text(bytes) => {
            let text = bytestring::ByteString::try_from(bytes).map_err(|_| CloseReason {
                code: CloseCode::Invalid,
                description: Some("text frames must be UTF-8".into()),
            })?;
            Message::Text(text)
        }
        Frame::Binary(bytes) => Message::Binary(bytes),
        Frame::Ping(bytes) => Message::Ping(bytes),
        Frame::Pong(bytes) => Message::Pong(bytes),
        Frame::Close(reason) => Message::Close(reason),
        Frame::Continuation(item) => Message::Continuation(item),
    })
}

/// Counts an open socket; the count drops when the guard does.
pub struct OpenSocket(Arc<AtomicUsize>);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("panshi_websockets_open").decrement(1.0);
    }
}

pub fn open_socket(state: &AppState) -> Result<OpenSocket, ApiError> {
    let open = state.websockets_open.fetch_add(1, Ordering::AcqRel);
    let guard = OpenSocket(state.websockets_open.clone());
    metrics::gauge!("panshi_websockets_open").increment(1.0);
    if open >= state.websockets_max {
        return Err(ApiError::unavailable(
            "too_many_websockets",
            "too many live connections; retry shortly",
        ));
    }
    Ok(guard)
}

/// What the server sends next.
pub enum Outgoing {
    Text(String),
    /// A last text frame, then the close.
    Last(String, CloseReason),
    Close(CloseReason),
}

/// A source of frames for one socket.
pub trait Feed {
    /// The next thing to send. Must be cancel-safe: it races the client's frames.
    fn next(&mut self) -> impl Future<Output = Outgoing>;
}

/// Where a socket is in its life.
enum Stage {
    Open,
    /// The last text frame went out; the close follows.
    Closing(CloseReason),
    /// The close went out: the body (and the connection) ends.
    Ended,
}

/// One socket: sends `feed` until either side ends or the server stops, answering the
/// client's pings and closes, and pinging the client at each heartbeat.
struct Pump<F> {
    frames: ClientFrames,
    feed: F,
    lifecycle: Arc<Lifecycle>,
    beats: tokio::sync::watch::Receiver<()>,
    codec: Codec,
    stage: Stage,
    _guard: OpenSocket,
}

/// What woke a socket.
enum Wake {
    Frame(Message),
    /// A last text frame, then the close.
    Last(String, CloseReason),
    Close(Option<CloseReason>),
    Nothing,
}

impl<F: Feed> Pump<F> {
    /// The next frame's bytes, for the response body; `None` once the close went out.
    async fn next_bytes(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        let message = match std::mem::replace(&mut self.stage, Stage::Ended) {
            Stage::Ended => return None,
            Stage::Closing(reason) => Message::Close(Some(reason)),
            Stage::Open => self.next_message().await,
        };
        let mut bytes = BytesMut::new();
        // Only a continuation frame fails to encode, and the pump sends none.
        self.codec.encode(message, &mut bytes).ok()?;
        Some((Ok(bytes.freeze()), self))
    }

    /// The next message to send; sets the stage that follows it.
    async fn next_message(&mut self) -> Message {
        loop {
            let wake = tokio::select! {
                // The server is stopping: the client reconnects (elsewhere).
                _ = self.lifecycle.sockets_closing() => Wake::Close(Some(CloseReason {
                    code: CloseCode::Away,
                    description: Some("the server is restarting; reconnect".into()),
                })),
                outgoing = self.feed.next() => match outgoing {
                    Outgoing::Text(text) => Wake::Frame(Message::Text(text.into())),
                    Outgoing::Last(text, reason) => Wake::Last(text, reason),
                    Outgoing::Close(reason) => Wake::Close(Some(reason)),
                },
                inbound = self.frames.recv() => match inbound {
                    Some(Ok(Message::Ping(bytes))) => Wake::Frame(Message::Pong(bytes)),
                    // RFC 6455 5.5.1: answer at once, echoing the client's code.
                    Some(Ok(Message::Close(reason))) => {
                        Wake::Close(reason.map(|r| CloseReason::from(r.code)))
                    }
                    Some(Ok(_)) => Wake::Nothing,
                    Some(Err(reason)) => Wake::Close(Some(reason)),
                    None => Wake::Close(None),
                },
                () = next_beat(&mut self.beats) => Wake::Frame(Message::Ping(Bytes::new())),
            };
            match wake {
                Wake::Frame(message) => {
                    self.stage = Stage::Open;
                    return message;
                }
                Wake::Last(text, reason) => {
                    self.stage = Stage::Closing(reason);
                    return Message::Text(text.into());
                }
                Wake::Close(reason) => return Message::Close(reason),
                Wake::Nothing => {}
            }
        }
    }
}

/// Resolves at the next heartbeat; never, should the heartbeat be gone (no busy loop).
async fn next_beat(beats: &mut tokio::sync::watch::Receiver<()>) {
    if beats.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_lengths_are_read_from_the_header_alone() {
        assert_eq!(declared_length(&[0x81]), None);
        assert_eq!(declared_length(&[0x81, 0x85]), Some(5));
        assert_eq!(declared_length(&[0x82, 0xfe, 0x10]), None);
        assert_eq!(declared_length(&[0x82, 0xfe, 0x10, 0x00]), Some(4096));
        let huge = [0x82, 0xff, 0, 0, 1, 0, 0, 0, 0, 0];
        assert_eq!(declared_length(&huge), Some(1 << 40));
    }
}
