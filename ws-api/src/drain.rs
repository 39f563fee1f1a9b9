//! A graceful drain on SIGTERM or SIGINT, so that a load balancer and a rolling restart lose
//! nothing: for `http.drain_ms` the server goes on serving everything (the listener stays
//! open) while `/readyz` answers 503 and every answer closes its connection (keep-alive
//! clients reconnect, and are sent elsewhere once the balancer has seen the 503); then live
//! sockets are closed with 1001 ("going away"), the listener closes, and the requests in
//! flight are answered (up to `http.shutdown_timeout_secs`) before the process stops.
//! A second signal cuts the drain short.
//!
//! Invariant: a request that reached the server before the listener closed is answered.
//!
//! The lifecycle also carries the live sockets' heartbeat: one task per server (`beat`)
//! ticks every `http.websocket_ping_secs` and bumps a `watch` epoch that every socket awaits
//! (`beats`), so idle sockets hold no timer of their own and cost no CPU between beats.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// The server's stage of life, shared by the readiness check, the answers and live sockets.
#[derive(Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    /// Set once live sockets must close (the end of the drain).
    closing: AtomicBool,
    close_sockets: Notify,
    /// Bumped at every heartbeat; each live socket pings its client when it changes.
    beats: watch::Sender<()>,
}

impl Lifecycle {
    /// The shared heartbeat: every `interval`, every live socket is told to ping its client.
    /// Runs until the runtime stops; spawn it once per server.
    pub async fn beat(self: Arc<Self>, interval: Duration) {
        let first = tokio::time::Instant::now() + interval;
        let mut ticks = tokio::time::interval_at(first, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.beats.send_replace(());
        }
    }

    /// The heartbeat as one socket sees it: the next beat is the first after this call.
    pub fn beats(&self) -> watch::Receiver<()> {
        self.beats.subscribe()
    }

    /// Whether a stop was asked for: not ready, and every answer closes its connection.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Resolves once live sockets must close.
    pub async fn sockets_closing(&self) {
        loop {
            let notified = self.close_sockets.notified();
            if self.closing.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    fn close_sockets(&self) {
        self.closing.store(true, Ordering::Release);
        self.close_sockets.notify_waiters();
    }
}

/// The server's shutdown signal (`HttpServer::shutdown_signal`): resolves after the first
/// SIGTERM or SIGINT (Ctrl-C) and the drain; actix then closes the listener and lets requests
/// in flight finish for up to `shutdown_timeout_secs`, and the log is closed cleanly. (actix's
/// own handler treats SIGINT as a forced stop, which would cut requests in flight.)
///
/// The handlers are installed when this is called, not when the future is first polled: a
/// signal sent as soon as "listening on" is printed must already stop gracefully.
pub fn stop_signal(
    lifecycle: Arc<Lifecycle>,
    drain: Duration,
    shutdown_timeout_secs: u64,
) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let signals = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(interrupt), Ok(terminate)) = signals else {
            tracing::error!("cannot listen for SIGINT and SIGTERM; stop the server with SIGKILL");
            return std::future::pending().await;
        };
        drain_on(
            lifecycle,
            drain,
            shutdown_timeout_secs,
            interrupt,
            terminate,
        )
        .await;
    }
}

async fn drain_on(
    lifecycle: Arc<Lifecycle>,
    drain: Duration,
    shutdown_timeout_secs: u64,
    mut interrupt: tokio::signal::unix::Signal,
    mut terminate: tokio::signal::unix::Signal,
) {
    let name = tokio::select! {
        _ = interrupt.recv() => "Ctrl-C (SIGINT)",
        _ = terminate.recv() => "SIGTERM",
    };
    lifecycle.draining.store(true, Ordering::Release);
    tracing::info!(
        "{name} received: draining for {} ms (not ready; answers close their connections; a \
         second signal cuts it short), then stopping gracefully: requests in flight may finish \
         for up to {shutdown_timeout_secs} s",
        drain.as_millis()
    );
    tokio::select! {
        _ = tokio::time::sleep(drain) => {}
        _ = interrupt.recv() => tracing::warn!("second signal: the drain is cut short"),
        _ = terminate.recv() => tracing::warn!("second signal: the drain is cut short"),
    }
    lifecycle.close_sockets();
    tracing::info!("drained: closing the listener and answering what is in flight");
}
