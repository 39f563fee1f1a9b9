//! `GET /api/v1/orders/{order_id}/live`: the order's status over a WebSocket. The first
//! frame is the current state; after a terminal state the server closes normally.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message};
use engine::OrderId;

use crate::error::ApiError;
use crate::routes::orders::TokenQuery;
use crate::wire::order_update;
use crate::AppState;

/// Largest frame a client may send (they only need pings and closes).
pub const CLIENT_FRAME_BYTES_MAX: usize = 4 * 1024;
/// A silent client is pinged this often.
pub const PING_INTERVAL_SECS: u64 = 30;

pub fn configure(config: &mut web::ServiceConfig) {
    config.route("/api/v1/orders/{order_id}/live", web::get().to(live));
}

/// Counts an open socket; the count drops when the guard does.
pub(crate) struct OpenSocket(Arc<AtomicUsize>);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("panshi_websockets_open").decrement(1.0);
    }
}

pub(crate) fn open_socket(state: &AppState) -> Result<OpenSocket, ApiError> {
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

async fn live(
    request: HttpRequest,
    body: web::Payload,
    path: web::Path<String>,
    query: web::Query<TokenQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let order_id = OrderId::parse(&path).map_err(|_| ApiError::not_found("unknown order"))?;
    let client = state.client(&request);
    state.limits.check(crate::limits::Lane::Websocket, client)?;
    let guard = open_socket(&state)?;
    let mut feed = state
        .shop
        .subscribe(&order_id, &query.token)
        .await
        .map_err(ApiError::from)?;
    let (response, mut session, stream) = actix_ws::handle(&request, body)?;
    let mut stream = stream.max_frame_size(CLIENT_FRAME_BYTES_MAX);
    actix_web::rt::spawn(async move {
        let _guard = guard;
        let mut ping = actix_web::rt::time::interval(Duration::from_secs(PING_INTERVAL_SECS));
        ping.tick().await;
        let close = loop {
            tokio::select! {
                update = feed.recv() => match update {
                    Some(update) => {
                        if session.text(order_update(&update)).await.is_err() {
                            return;
                        }
                        if update.status.is_terminal() {
                            break Some(CloseReason::from(CloseCode::Normal));
                        }
                    }
                    // The feed ends early only when this reader fell behind: it reconnects
                    // and gets the current state first.
                    None => break Some(CloseReason {
                        code: CloseCode::Again,
                        description: Some("fell behind; reconnect for the current state".into()),
                    }),
                },
                message = stream.recv() => match message {
                    Some(Ok(Message::Ping(bytes))) => {
                        if session.pong(&bytes).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Ok(_)) => {}
                    Some(Err(_)) => break Some(CloseReason::from(CloseCode::Protocol)),
                },
                _ = ping.tick() => {
                    if session.ping(b"").await.is_err() {
                        return;
                    }
                }
            }
        };
        let _ = session.close(close).await;
    });
    Ok(response)
}
