//! Reseller endpoints (CONTRACT.md, "Resellers"): operators open accounts, revoke keys and
//! move balances; resellers read their account, buy in bulk, look up their orders and
//! follow their stream over a WebSocket.
//!
//! Invariants: every reseller request carries `Authorization: Bearer <api key>` (the stream
//! too, on the upgrade); an unknown or revoked key, and the operator token, get 401; each
//! key is rate-limited (governor, keyed by reseller) before any work; bad input gets 400 and
//! changes nothing.
//!
//! Key decision: the rate limiter lives here, set once from the settings (`init`), so the
//! reseller lane never shares a budget with buyers' per-IP limits.

use std::num::NonZeroU32;
use std::sync::OnceLock;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason};
use actors::reseller::{
    FeedItem, PurchaseRequest, Receipt, ResellerKey, ResellerRequest, StreamEvent,
};
use actors::ShopError;
use engine::{OrderId, Rejection, ResellerId, Sku};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::ApiError;
use crate::operator::{bearer, require_operator};
use crate::socket::{self, Feed, Outgoing};
use crate::wire::order_view;
use crate::{json_body, AppState};

/// Default sustained reseller requests per second, per key.
pub const RATE_PER_SECOND_DEFAULT: u32 = 20;
/// Default burst per key: the contract asks for at least 50.
pub const RATE_BURST_DEFAULT: u32 = 100;
/// The contract's floor for the burst.
pub const RATE_BURST_MIN: u32 = 50;
const _: () = assert!(RATE_BURST_DEFAULT >= RATE_BURST_MIN);
/// Default sustained stream connects per second, per key (a watcher reconnects rarely).
pub const STREAM_RATE_PER_SECOND_DEFAULT: u32 = 1;

/// What a reseller request does, for its per-key bucket: a flood of lookups cannot eat
/// the budget of purchases, nor reconnects that of either.
#[derive(Clone, Copy, Debug)]
enum KeyLane {
    Purchase,
    Lookup,
    Stream,
}

/// `[resellers]` settings.
#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default)]
pub struct ResellerSettings {
    /// Per key: bulk purchases.
    pub rate_per_second: u32,
    pub rate_burst: u32,
    /// Per key: account and order lookups.
    pub lookup_rate_per_second: u32,
    pub lookup_rate_burst: u32,
    /// Per key: stream connects.
    pub stream_rate_per_second: u32,
    pub stream_rate_burst: u32,
    /// Whether a webhook URL may point at loopback or private addresses.
    pub webhook_private_addresses_allowed: bool,
    /// The first webhook retry's delay; each further one doubles it (tests shorten it).
    pub webhook_retry_first_ms: u64,
    /// 64 hex digits: the key that seals webhook secrets at rest. Set it from a secret
    /// store (`PANSHI_RESELLERS__SEALING_KEY`); when unset, a key is generated once into
    /// `sealing.key` in the data dir.
    pub sealing_key: Option<crate::settings::Secret>,
}

impl Default for ResellerSettings {
    fn default() -> Self {
        Self {
            rate_per_second: RATE_PER_SECOND_DEFAULT,
            rate_burst: RATE_BURST_DEFAULT,
            lookup_rate_per_second: RATE_PER_SECOND_DEFAULT,
            lookup_rate_burst: RATE_BURST_DEFAULT,
            stream_rate_per_second: STREAM_RATE_PER_SECOND_DEFAULT,
            stream_rate_burst: RATE_BURST_MIN,
            webhook_private_addresses_allowed: true,
            webhook_retry_first_ms: crate::webhooks::RETRY_FIRST_MS_DEFAULT,
            sealing_key: None,
        }
    }
}

struct Edge {
    purchase: DefaultKeyedRateLimiter<ResellerId>,
    lookup: DefaultKeyedRateLimiter<ResellerId>,
    stream: DefaultKeyedRateLimiter<ResellerId>,
    webhook_private_addresses_allowed: bool,
}

impl Edge {
    fn lanes(&self) -> [&DefaultKeyedRateLimiter<ResellerId>; 3] {
        [&self.purchase, &self.lookup, &self.stream]
    }

    fn lane(&self, lane: KeyLane) -> &DefaultKeyedRateLimiter<ResellerId> {
        match lane {
            KeyLane::Purchase => &self.purchase,
            KeyLane::Lookup => &self.lookup,
            KeyLane::Stream => &self.stream,
        }
    }
}

static EDGE: OnceLock<Edge> = OnceLock::new();

/// Sets the reseller settings; the first call wins (defaults apply if never called).
pub fn init(settings: &ResellerSettings) {
    let _ = EDGE.set(edge(settings));
}

/// A per-key bucket; the burst never goes below the contract's floor.
fn keyed(per_second: u32, burst: u32) -> DefaultKeyedRateLimiter<ResellerId> {
    let per_second = NonZeroU32::new(per_second.max(1)).expect("non-zero");
    let burst = NonZeroU32::new(burst.max(RATE_BURST_MIN)).expect("non-zero");
    RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))
}

fn edge(settings: &ResellerSettings) -> Edge {
    Edge {
        purchase: keyed(settings.rate_per_second, settings.rate_burst),
        lookup: keyed(settings.lookup_rate_per_second, settings.lookup_rate_burst),
        stream: keyed(settings.stream_rate_per_second, settings.stream_rate_burst),
        webhook_private_addresses_allowed: settings.webhook_private_addresses_allowed,
    }
}

/// Forgets resellers whose buckets are full again (keys are authenticated reseller ids,
/// so the maps never outgrow the accounts; pruning keeps them to the active ones).
pub fn prune_limits() {
    for limiter in current_edge().lanes() {
        limiter.retain_recent();
        limiter.shrink_to_fit();
    }
}

fn current_edge() -> &'static Edge {
    EDGE.get_or_init(|| edge(&ResellerSettings::default()))
}

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/api/v1/admin/resellers", web::post().to(create))
        .route(
            "/api/v1/admin/resellers/{id}/revoke",
            web::post().to(revoke),
        )
        .route(
            "/api/v1/admin/resellers/{id}/balance",
            web::post().to(balance),
        )
        .route(
            "/api/v1/admin/resellers/{id}/{rotation:rotate-key|rotate-webhook-secret}",
            web::post().to(rotate),
        )
        .route(
            "/api/v1/admin/resellers/{id}/discount",
            web::post().to(discount),
        )
        .route("/api/v1/reseller/me", web::get().to(me))
        .route("/api/v1/reseller/orders", web::post().to(purchase))
        .route("/api/v1/reseller/orders/{order_id}", web::get().to(order))
        .route("/api/v1/reseller/stream", web::get().to(stream));
}

/// The reseller a request's key belongs to, within its rate limit for `lane`.
fn authenticate(
    request: &HttpRequest,
    state: &AppState,
    lane: KeyLane,
) -> Result<ResellerKey, ApiError> {
    let key = bearer(request).ok_or_else(ApiError::unauthorized)?;
    let who = state
        .shop
        .reseller_by_key(key)
        .ok_or_else(ApiError::unauthorized)?;
    let id = who.id;
    if let Err(not_until) = current_edge().lane(lane).check_key(&id) {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        return Err(ApiError {
            retry_after_secs: Some(wait.as_secs().max(1) as u32),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests for this API key",
            )
        });
    }
    Ok(who)
}

/// Maps a shop error on a reseller route: a key revoked mid-request is 401, a purchase the
/// balance cannot pay is 402.
fn reseller_error(error: ShopError) -> ApiError {
    match error {
        ShopError::Rejected(Rejection::UnknownReseller) => ApiError::unauthorized(),
        ShopError::Rejected(Rejection::InsufficientBalance) => ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_balance",
            "the balance does not cover this purchase",
        ),
        other => other.into(),
    }
}

fn reseller_id(path: &str) -> Result<ResellerId, ApiError> {
    ResellerId::parse(path).ok_or_else(|| ApiError::not_found("unknown reseller"))
}

#[derive(Deserialize)]
struct CreateBody {
    name: String,
    #[serde(default)]
    webhook_url: Option<String>,
    #[serde(default)]
    discount_bp: u32,
}

async fn create(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let body: CreateBody = json_body(payload, &state).await?;
    if let Some(url) = &body.webhook_url {
        check_webhook_url(url, current_edge().webhook_private_addresses_allowed)?;
    }
    let created = state
        .shop
        .create_reseller(ResellerRequest {
            name: body.name.trim().to_owned(),
            webhook_url: body.webhook_url,
            discount_bp: body.discount_bp,
        })
        .await?;
    crate::webhooks::watch(&state.shop, created.reseller_id);
    Ok(HttpResponse::Created().json(json!({
        "reseller_id": created.reseller_id.to_string(),
        "api_key": created.api_key,
        "webhook_secret": created.webhook_secret,
    })))
}

/// An `http://` or `https://` URL with a host, a valid port and no credentials, parsed as
/// the webhook client will parse it; loopback and private hosts only when allowed.
fn check_webhook_url(url: &str, private_allowed: bool) -> Result<(), ApiError> {
    let bad = |message: &str| ApiError::bad_request("bad_request", message.to_owned());
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("webhook_url holds spaces or control characters"));
    }
    // The parser forgives (`http:///host` becomes `http://host/`); what is stored must be
    // what was meant, so the authority must follow `//` as written.
    let authority = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| bad("webhook_url must be an http or https URL"))?;
    if authority.starts_with(['/', '?', '#']) {
        return Err(bad("webhook_url needs a host and no credentials"));
    }
    let parsed =
        reqwest::Url::parse(url).map_err(|e| bad(&format!("webhook_url is not a URL: {e}")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("webhook_url needs a host and no credentials"));
    }
    let Some(host) = parsed.host() else {
        return Err(bad("webhook_url needs a host and no credentials"));
    };
    if !private_allowed && is_private_host(&host.to_string(), url) {
        return Err(bad(
            "webhook_url may not point at a loopback or private address",
        ));
    }
    Ok(())
}

/// A first, early refusal of what is private by its spelling (every form the URL parser
/// normalises, `localhost` and its subdomains); names are checked again on each
/// connection (`ssrf.rs`), where the resolved address is what counts.
fn is_private_host(host: &str, url: &str) -> bool {
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || crate::ssrf::check_literal(url).is_err()
}

async fn revoke(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let id = reseller_id(&path)?;
    state.shop.revoke_reseller(id).await?;
    Ok(HttpResponse::Ok().json(json!({"reseller_id": id.to_string(), "revoked": true})))
}

/// A new API key (the old one gets 401 and its open streams close) or webhook secret (it
/// signs every delivery from now on), shown this once.
async fn rotate(
    request: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let (id, rotation) = path.into_inner();
    let id = reseller_id(&id)?;
    let (field, secret) = if rotation == "rotate-key" {
        ("api_key", state.shop.rotate_api_key(id).await?)
    } else {
        (
            "webhook_secret",
            state.shop.rotate_webhook_secret(id).await?,
        )
    };
    Ok(HttpResponse::Ok().json(json!({"reseller_id": id.to_string(), field: secret})))
}

#[derive(Deserialize)]
struct DiscountBody {
    discount_bp: u32,
}

/// The wholesale discount of the reseller's purchases from now on.
async fn discount(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let id = reseller_id(&path)?;
    let body: DiscountBody = json_body(payload, &state).await?;
    state.shop.set_discount(id, body.discount_bp).await?;
    Ok(HttpResponse::Ok()
        .json(json!({"reseller_id": id.to_string(), "discount_bp": body.discount_bp})))
}

#[derive(Deserialize)]
struct BalanceBody {
    amount_cents: i64,
    #[serde(default)]
    note: String,
}

async fn balance(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let id = reseller_id(&path)?;
    let body: BalanceBody = json_body(payload, &state).await?;
    let balance_cents = state
        .shop
        .adjust_balance(id, body.amount_cents, body.note)
        .await?;
    Ok(HttpResponse::Ok().json(json!({"balance_cents": balance_cents})))
}

async fn me(request: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let id = authenticate(&request, &state, KeyLane::Lookup)?.id;
    let account = state.shop.reseller_account(id).map_err(reseller_error)?;
    Ok(HttpResponse::Ok().json(json!({
        "reseller_id": account.reseller_id.to_string(),
        "name": account.name,
        "balance_cents": account.balance_cents,
    })))
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
struct PurchaseBody {
    sku: String,
    #[serde(default = "one")]
    quantity: u32,
}

/// FNV-1a of the canonical request: stable across restarts (std's hasher is keyed).
fn fingerprint(sku: &Sku, quantity: u32) -> u64 {
    let text = format!("{}\n{quantity}", sku.as_str());
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
    })
}

fn receipt_json(receipt: &Receipt) -> serde_json::Value {
    json!({
        "order_id": receipt.order_id.as_str(),
        "status": receipt.status.as_str(),
        "cards": receipt.cards,
        "amount_cents": receipt.amount_cents,
        "balance_cents": receipt.balance_cents,
    })
}

async fn purchase(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&request, &state, KeyLane::Purchase)?;
    let body: PurchaseBody = json_body(payload, &state).await?;
    let sku = Sku::parse(&body.sku)?;
    let idempotency_key = match request.headers().get("Idempotency-Key") {
        Some(value) => Some(value.to_str().map_err(|_| {
            ApiError::bad_request("bad_request", "Idempotency-Key must be visible ASCII")
        })?),
        None => None,
    };
    let purchase = PurchaseRequest {
        fingerprint: fingerprint(&sku, body.quantity),
        sku,
        quantity: body.quantity,
        idempotency_key: idempotency_key.map(str::to_owned),
    };
    let receipt = state
        .shop
        .reseller_purchase(who, purchase)
        .await
        .map_err(reseller_error)?;
    Ok(HttpResponse::Created().json(receipt_json(&receipt)))
}

async fn order(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = authenticate(&request, &state, KeyLane::Lookup)?.id;
    let order_id = OrderId::parse(&path).map_err(|_| ApiError::not_found("unknown order"))?;
    let view = state
        .shop
        .reseller_order(id, &order_id)
        .map_err(reseller_error)?;
    Ok(HttpResponse::Ok().json(order_view(&view.record, &view.keys)))
}

/// `cursor=N`, 0 when absent; anything else is 400.
fn cursor_of(request: &HttpRequest) -> Result<u64, ApiError> {
    #[derive(Deserialize)]
    struct Query {
        cursor: Option<String>,
    }
    let query: Query = serde_urlencoded::from_str(request.query_string())
        .map_err(|_| ApiError::bad_request("bad_request", "bad query string"))?;
    match query.cursor {
        None => Ok(0),
        Some(text) => text
            .parse()
            .map_err(|_| ApiError::bad_request("bad_request", "cursor must be a whole number")),
    }
}

pub fn stream_frame(event: &StreamEvent) -> String {
    json!({
        "seq": event.seq,
        "order_id": event.order_id.as_str(),
        "status": event.status.as_str(),
        "cards": event.cards,
        "sku": event.sku.as_str(),
        "amount_cents": event.amount_cents,
    })
    .to_string()
}

async fn stream(
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let who = authenticate(&request, &state, KeyLane::Stream)?;
    socket::verify(&request)?;
    let cursor = cursor_of(&request)?;
    let guard = socket::open_socket(&state)?;
    let feed = state
        .shop
        .reseller_stream(who, cursor)
        .await
        .map_err(reseller_error)?;
    socket::serve(
        &request,
        body,
        StreamFeed(feed),
        guard,
        state.lifecycle.clone(),
    )
}

/// A reseller's stream as socket frames; a reader that fell behind is closed with code 1013
/// ("try again") and the cursor to resume from.
struct StreamFeed(actors::reseller::Feed);

impl Feed for StreamFeed {
    async fn next(&mut self) -> Outgoing {
        match self.0.next().await {
            FeedItem::Event(event) => Outgoing::Text(stream_frame(&event)),
            FeedItem::FellBehind => Outgoing::Close(CloseReason {
                code: CloseCode::Again,
                description: Some(format!(
                    "fell behind; reconnect with cursor={}",
                    self.0.cursor()
                )),
            }),
            FeedItem::KeyWithdrawn => Outgoing::Close(CloseReason {
                code: CloseCode::Policy,
                description: Some("the API key was rotated or revoked".into()),
            }),
        }
    }
}
