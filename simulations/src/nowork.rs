//! The no-work server: the buyer's and the gateway's purchase endpoints of the contract
//! (create, Epay notify, lookup, `/readyz`), answered with fixed bodies on the same actix
//! HTTP stack and worker count as Panshi, doing nothing else. Run beside Panshi under the
//! same probe (`panshi-load closed --versus`), it is the ceiling of this machine and this
//! HTTP stack: Panshi's share of it is what its own work costs.
//!
//! It does read what a real server must read (the body of each request, the path's order
//! id) and writes answers of the same shape and about the same size, so that the
//! difference is the shop's work, not the bytes.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::{web, App, HttpResponse, HttpServer};

use crate::load::server::LISTENING_PREFIX;

/// Most worker threads; Panshi's default is one per core.
pub const WORKERS_MAX: usize = 64;
/// Largest request body read; the probe's are a few hundred bytes.
const BODY_BYTES_MAX: usize = 64 * 1024;
/// Pending connections the kernel queues, as Panshi's listener (std's `bind` gives 128,
/// and actix's `backlog` only applies to sockets actix binds itself).
const LISTEN_BACKLOG: i32 = 4_096;

/// Order ids handed out, so that every answer differs as Panshi's do.
static ORDERS: AtomicU64 = AtomicU64::new(0);

async fn create(body: web::Bytes) -> HttpResponse {
    let n = ORDERS.fetch_add(1, Ordering::Relaxed);
    let answer = format!(
        r#"{{"order_id":"NW{n:016}","token":"{n:032x}","status":"awaiting_payment","sku":"nowork","quantity":1,"amount_cents":1000,"currency":"CNY","body_bytes":{},"payment_url":"http://127.0.0.1:9/epay/submit.php?out_trade_no=NW{n:016}","expires_at_ms":0}}"#,
        body.len()
    );
    HttpResponse::Created()
        .content_type("application/json")
        .body(answer)
}

async fn notify(body: web::Bytes) -> HttpResponse {
    match body.is_empty() {
        true => HttpResponse::BadRequest().body("fail"),
        false => HttpResponse::Ok()
            .content_type("text/plain")
            .body("success"),
    }
}

async fn lookup(path: web::Path<String>) -> HttpResponse {
    let answer = format!(
        r#"{{"order_id":"{}","status":"delivered","sku":"nowork","quantity":1,"amount_cents":1000,"currency":"CNY","cards":["NOWORK-0000-0000-0000"]}}"#,
        path.into_inner()
    );
    HttpResponse::Ok()
        .content_type("application/json")
        .body(answer)
}

async fn ready() -> HttpResponse {
    HttpResponse::Ok().body("ready")
}

/// A listener on `address` with Panshi's backlog.
pub fn listen(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Serves until SIGINT or SIGTERM; prints `LISTENING_PREFIX` and the address once bound.
pub fn serve(listener: TcpListener, workers: usize) -> std::io::Result<()> {
    let bound = listener.local_addr()?;
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(|| {
            App::new()
                .app_data(web::PayloadConfig::new(BODY_BYTES_MAX))
                .route("/readyz", web::get().to(ready))
                .route("/api/v1/orders", web::post().to(create))
                .route("/api/v1/payments/epay/notify", web::post().to(notify))
                .route("/api/v1/orders/{order_id}", web::get().to(lookup))
        })
        .workers(workers)
        .listen(listener)?
        .run();
        println!("{LISTENING_PREFIX}{bound}");
        server.await
    })
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;
    use std::time::Duration;

    /// Postmortem: the no-work server took std's backlog of 128 (actix's `backlog` does not
    /// apply to a listener it is handed), so a flash sale's buyers had their SYNs dropped
    /// and waited 1 s to retry, and its storm was no floor at all.
    #[test]
    fn the_listener_queues_more_than_std_s_128_connections() {
        let listener = super::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        // Nobody accepts: every connection beyond the backlog would wait for a SYN retry.
        let queued: Vec<TcpStream> = (0..300)
            .map(|n| {
                TcpStream::connect_timeout(&address, Duration::from_millis(500))
                    .unwrap_or_else(|error| panic!("connection {n} was not queued: {error}"))
            })
            .collect();
        assert_eq!(queued.len(), 300);
    }
}
