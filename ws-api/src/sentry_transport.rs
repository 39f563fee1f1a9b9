//! A Sentry transport: envelopes are queued and POSTed by one background thread with
//! `post::send` (reqwest with rustls, so `https://` DSNs work), so the `sentry` crate is used
//! without its own transport and the TLS stack it would bring.
//!
//! Invariants: at most `SENTRY_QUEUE_CAPACITY` envelopes wait (more are dropped); nothing is
//! sent unless a DSN is configured (without one `sentry::init` installs no client at all);
//! `flush` waits at most its timeout, which is what lets a panic report leave before the
//! release build aborts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sentry::{Envelope, Transport, TransportFactory, TransportOptions};

use crate::post::{client, send, web_url, Post};

/// Envelopes that may wait for the sender thread.
pub const SENTRY_QUEUE_CAPACITY: usize = 64;
/// How often `flush` looks at the queue.
const FLUSH_POLL_MS: u64 = 10;

/// Creates the transport for the DSN in the client options.
pub struct HttpTransportFactory;

impl TransportFactory for HttpTransportFactory {
    fn create_transport_with_options(&self, options: TransportOptions) -> Arc<dyn Transport> {
        let url = web_url(options.dsn.envelope_api_url().as_str());
        let auth = options.dsn.to_auth(Some(&options.user_agent)).to_string();
        match url {
            Ok(url) => Arc::new(HttpTransport::start(url, auth)),
            Err(error) => {
                eprintln!("panshi: sentry DSN not usable ({error}); error reports are off");
                Arc::new(HttpTransport::disabled())
            }
        }
    }
}

struct HttpTransport {
    queue: Option<SyncSender<Envelope>>,
    /// Envelopes queued or being sent.
    pending: Arc<AtomicUsize>,
}

impl HttpTransport {
    fn start(url: reqwest::Url, auth: String) -> Self {
        let (queue, receiver) = sync_channel(SENTRY_QUEUE_CAPACITY);
        let pending = Arc::new(AtomicUsize::new(0));
        let worker_pending = pending.clone();
        std::thread::Builder::new()
            .name("panshi-sentry".into())
            .spawn(move || run(receiver, url, auth, worker_pending))
            .expect("spawning the sentry thread");
        Self {
            queue: Some(queue),
            pending,
        }
    }

    fn disabled() -> Self {
        Self {
            queue: None,
            pending: Arc::default(),
        }
    }
}

fn run(receiver: Receiver<Envelope>, url: reqwest::Url, auth: String, pending: Arc<AtomicUsize>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let client = client();
    for envelope in receiver {
        let mut body = Vec::new();
        if envelope.to_writer(&mut body).is_ok() {
            let post = Post {
                url: url.clone(),
                content_type: "application/x-sentry-envelope",
                headers: vec![("X-Sentry-Auth", auth.clone())],
                body,
            };
            if let Err(error) = runtime.block_on(send(&client, &post)) {
                // Not through tracing: an error event here would be sent to Sentry again.
                eprintln!("panshi: sentry report not sent: {error}");
            }
        }
        pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Transport for HttpTransport {
    fn send_envelope(&self, envelope: Envelope) {
        let Some(queue) = &self.queue else { return };
        self.pending.fetch_add(1, Ordering::AcqRel);
        if queue.try_send(envelope).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.pending.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(FLUSH_POLL_MS));
        }
        true
    }
}
