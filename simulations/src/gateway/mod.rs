//! A payment gateway simulator that speaks Epay (易支付), epusdt, Alipay (Open Platform,
//! RSA2) and WeChat Pay (API v3) over real HTTP, with switches that inject the faults real
//! gateways show: lost, duplicated, late and forged notifies, failing or slow create and
//! query calls, and whole outages.
//!
//! Surface (relative to the base URL):
//! - Epay: `GET|POST /submit.php` (buyer cashier), `GET|POST /mapi.php` (server-side
//!   create), `GET /api.php?act=order` (order query).
//! - epusdt: `POST /api/v1/order/create-transaction`, `GET|POST /pay/{trade_id}`.
//! - Alipay: `GET|POST /gateway.do` (page, wap, precreate, query, close),
//!   `GET /alipay/qr/{trade_no}`, `POST /alipay/pay/{trade_no}`.
//! - WeChat Pay: `POST /v3/pay/transactions/native`,
//!   `GET /v3/pay/transactions/out-trade-no/{id}`, `POST .../{id}/close`.
//! - Control (never affected by faults): `GET|POST /control/faults`, `POST /control/pay`,
//!   `GET /control/orders`.
//!
//! Invariants:
//! - Every signature is made and checked by the engine (`engine::payment`, `engine::alipay`,
//!   `engine::wechatpay`), never by a copy of its rules, so the simulator and the shop cannot
//!   drift apart silently; the providers' own SDKs check both (tests/sdk).
//! - An order is paid at most once; paying it again sends nothing new.
//! - Everything is bounded by a named constant: orders kept (oldest evicted), request body
//!   size, parameters per request, notifies queued, in flight and being sent at once, and
//!   attempts per notify.
//! - One `u64` seed drives every random choice (fault percentages, ids, addresses), so a
//!   sequential run replays exactly.
//!
//! Key decision: the server runs on the caller's tokio runtime through [`start`], so Rust
//! integration tests embed it without spawning a process; the `panshi-gateway` binary is a
//! thin CLI around the same call. Notifies are sent from one dispatcher task on that
//! runtime (not from actix's worker threads), so their HTTP client and retries outlive any
//! single request and stop with the gateway.

mod alipay;
mod control;
mod epay;
mod epusdt;
mod json;
pub mod keys;
mod notify;
mod page;
mod store;
mod wechat;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};
use tokio::task::JoinHandle;

pub use control::ORDERS_LISTED_MAX;
pub use json::{json_fields, JsonFieldsError};
pub use notify::{NOTIFY_ATTEMPTS_MAX, NOTIFY_BACKOFF_MS_MAX};
pub use store::{
    Channel, DeliveryView, Faults, NotifyOutcome, OrderView, FAULT_DELAY_MS_MAX, ORDERS_MAX,
};

use notify::Notifier;
use store::World;

/// Largest request body read, for every endpoint; real create calls are a few hundred bytes.
pub const BODY_BYTES_MAX: usize = 16 * 1024;
/// Most parameters or JSON fields one request may carry.
pub const PARAMS_COUNT_MAX: usize = 32;
/// Most connections each actix worker keeps open at once.
pub const CONNECTIONS_PER_WORKER_MAX: usize = 4_096;
/// Most actix worker threads.
pub const WORKERS_MAX: usize = 64;
/// Longest accepted `notify_url`, `return_url` or `redirect_url`.
pub const URL_BYTES_MAX: usize = 2_048;

const _: () = assert!(URL_BYTES_MAX < BODY_BYTES_MAX);

/// How the simulator runs; [`Config::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The Epay merchant id (`pid`) the shop is configured with.
    pub pid: String,
    /// The Epay merchant key that signs both ways.
    pub key: String,
    /// The epusdt API token that signs both ways.
    pub epusdt_token: String,
    /// Drives every random choice.
    pub seed: u64,
    /// actix worker threads serving requests.
    pub workers: usize,
    /// First wait between notify attempts; it doubles per attempt up to
    /// [`NOTIFY_BACKOFF_MS_MAX`].
    pub notify_backoff_first_ms: u64,
    /// The base URL put into payment links; `http://<bound address>` when `None`.
    pub public_url: Option<String>,
    /// Whether SIGINT/SIGTERM stop the server (the binary), or only [`Gateway::stop`] does
    /// (tests, which must not steal the test harness's signals).
    pub handle_signals: bool,
    /// Alipay's and WeChat Pay's keys and merchant ids ([`keys::DirectIdentity::test`]).
    pub direct: Arc<keys::DirectIdentity>,
}

impl Config {
    pub fn new(pid: &str, key: &str, epusdt_token: &str) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid: pid.to_owned(),
            key: key.to_owned(),
            epusdt_token: epusdt_token.to_owned(),
            seed: 0,
            workers: 2,
            notify_backoff_first_ms: 1_000,
            public_url: None,
            handle_signals: false,
            direct: Arc::new(keys::DirectIdentity::test()),
        }
    }
}

/// What every request handler shares.
pub(crate) struct Shared {
    pub(crate) pid: String,
    pub(crate) key: String,
    pub(crate) epusdt_token: String,
    pub(crate) direct: Arc<keys::DirectIdentity>,
    /// The base URL for payment links, without a trailing slash.
    pub(crate) base_url: String,
    /// Orders, faults and the random generator, behind one lock so that a run's random
    /// choices happen in one order.
    world: Mutex<World>,
    pub(crate) notifier: Notifier,
}

impl Shared {
    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        // A panic while holding the lock aborts the process (panic = "abort" in release);
        // in tests the state is still consistent enough to inspect, so poison is ignored.
        self.world
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running simulator.
pub struct Gateway {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: ServerHandle,
    server_task: JoinHandle<io::Result<()>>,
    dispatcher_task: JoinHandle<()>,
}

impl Gateway {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL payment links point at, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    /// Replaces the fault switches, as `POST /control/faults` does.
    pub fn set_faults(&self, faults: Faults) -> Result<(), &'static str> {
        faults.validate()?;
        self.shared.world().faults = faults;
        Ok(())
    }

    /// Every order kept, oldest first.
    pub fn orders(&self) -> Vec<OrderView> {
        self.shared.world().store.views(usize::MAX, None)
    }

    /// Waits until the server stops (a signal, when `handle_signals` is set).
    pub async fn wait(self) -> io::Result<()> {
        let result = join_server(self.server_task).await;
        self.dispatcher_task.abort();
        result
    }

    /// Stops serving, then drops every notify still queued or retrying.
    pub async fn stop(self) -> io::Result<()> {
        self.server.stop(true).await;
        self.wait().await
    }
}

async fn join_server(task: JoinHandle<io::Result<()>>) -> io::Result<()> {
    match task.await {
        Ok(result) => result,
        Err(error) => Err(io::Error::other(error)),
    }
}

/// Binds, then serves on the current tokio runtime until [`Gateway::stop`].
pub async fn start(config: Config) -> io::Result<Gateway> {
    assert!(config.workers >= 1, "at least one worker");
    assert!(config.workers <= WORKERS_MAX, "at most WORKERS_MAX workers");
    // Bind first: payment links need the real port before the first request.
    let listener = std::net::TcpListener::bind(config.listen)?;
    let addr = listener.local_addr()?;
    let base_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"))
        .trim_end_matches('/')
        .to_owned();
    let (notifier, queue) = Notifier::new();
    let shared = Arc::new(Shared {
        pid: config.pid,
        key: config.key,
        epusdt_token: config.epusdt_token,
        direct: config.direct,
        base_url,
        world: Mutex::new(World::new(config.seed)),
        notifier,
    });
    let app_shared = shared.clone();
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::from(app_shared.clone()))
            .app_data(web::PayloadConfig::new(BODY_BYTES_MAX))
            .configure(routes)
    })
    .workers(config.workers)
    .max_connections(CONNECTIONS_PER_WORKER_MAX)
    .shutdown_timeout(1)
    .listen(listener)?;
    if !config.handle_signals {
        server = server.disable_signals();
    }
    let dispatcher_task = tokio::spawn(notify::dispatch(
        shared.clone(),
        queue,
        config.notify_backoff_first_ms,
    ));
    let server = server.run();
    let handle = server.handle();
    let server_task = tokio::spawn(server);
    Ok(Gateway {
        addr,
        shared,
        server: handle,
        server_task,
        dispatcher_task,
    })
}

fn routes(config: &mut web::ServiceConfig) {
    let get_or_post = || {
        web::route()
            .guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Post()))
    };
    config
        .route("/submit.php", get_or_post().to(epay::submit))
        .route("/mapi.php", get_or_post().to(epay::mapi))
        .route("/api.php", web::get().to(epay::query))
        .route(
            "/api/v1/order/create-transaction",
            web::post().to(epusdt::create),
        )
        .route("/pay/{trade_id}", web::get().to(epusdt::cashier))
        .route("/pay/{trade_id}", web::post().to(epusdt::pay))
        .route("/gateway.do", get_or_post().to(alipay::gateway))
        .route("/alipay/qr/{trade_no}", web::get().to(alipay::qr))
        .route("/alipay/pay/{trade_no}", web::post().to(alipay::pay))
        .route(
            "/v3/pay/transactions/native",
            web::post().to(wechat::native),
        )
        .route(
            "/v3/pay/transactions/out-trade-no/{out_trade_no}",
            web::get().to(wechat::query),
        )
        .route(
            "/v3/pay/transactions/out-trade-no/{out_trade_no}/close",
            web::post().to(wechat::close),
        )
        .route("/control/faults", web::get().to(control::faults))
        .route("/control/faults", web::post().to(control::set_faults))
        .route("/control/pay", web::post().to(control::pay))
        .route("/control/orders", web::get().to(control::orders))
        .default_service(web::to(|| async {
            HttpResponse::NotFound().body("not found")
        }));
}

/// Unix seconds by the wall clock: the providers stamp their answers with it.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// The query faults: the configured delay, then maybe an injected failure.
pub(crate) async fn query_faults(shared: &Shared) -> Option<HttpResponse> {
    let delay_ms = shared.world().faults.query_delay_ms;
    if delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
    }
    shared
        .world()
        .chance_of(|f| f.query_fail_percent)
        .then(|| HttpResponse::InternalServerError().body("query failed (fault injected)"))
}

/// The answer every protocol endpoint gives during an outage.
pub(crate) fn outage_answer(shared: &Shared) -> Option<HttpResponse> {
    shared.world().faults.outage.then(|| {
        HttpResponse::ServiceUnavailable().body("gateway simulator: outage (fault injected)")
    })
}
