//! `GET /api/v1/orders/{order_id}/live`: the order's status over a WebSocket. The first
//! frame is the current state; after a terminal state the server closes normally.

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason};
use actors::live::BoxedUpdate;
use engine::OrderId;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::socket::{self, Feed, Outgoing};
use crate::wire::order_update;
use crate::wire::TokenQuery;
use crate::{resource, AppState};

pub fn configure(config: &mut web::ServiceConfig) {
    config.service(
        resource("/api/v1/orders/{order_id}/live")
            .guard(actix_web::guard::Get())
            .to(live),
    );
}

async fn live(
    request: HttpRequest,
    body: web::Payload,
    path: web::Path<String>,
    query: web::Query<TokenQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    socket::verify(&request)?;
    let order_id = OrderId::parse(&path).map_err(|_| ApiError::not_found("unknown order"))?;
    let client = state.client(&request);
    state.limits.check(crate::limits::Lane::Websocket, client)?;
    let guard = socket::open_socket(&state)?;
    let feed = state
        .shop
        .subscribe(&order_id, &query.token)
        .map_err(ApiError::from)?;
    socket::serve(
        &request,
        body,
        OrderFeed(feed),
        guard,
        state.lifecycle.clone(),
    )
}

/// An order's updates as socket frames: closed normally after a terminal status.
struct OrderFeed(mpsc::Receiver<BoxedUpdate>);

impl Feed for OrderFeed {
    async fn next(&mut self) -> Outgoing {
        match self.0.recv().await {
            Some(update) if update.status.is_terminal() => {
                Outgoing::Last(order_update(&update), CloseReason::from(CloseCode::Normal))
            }
            Some(update) => Outgoing::Text(order_update(&update)),
            // The feed ends early only when this reader fell behind: it reconnects and gets
            // the current state first.
            None => Outgoing::Close(CloseReason {
                code: CloseCode::Again,
                description: Some("fell behind; reconnect for the current state".into()),
            }),
        }
    }
}
