//! Node-to-node calls over HTTP: `POST {peer}/internal/raft/{call}` with a signed body.

use std::sync::Arc;
use std::time::Duration;

use replication::{Rpc, Transport, TransportError, TransportFuture};

/// Connections kept open to each peer.
pub const IDLE_CONNECTIONS_PER_PEER_MAX: usize = 8;
/// How long connecting to a peer may take before it counts as unreachable.
pub const CONNECT_TIMEOUT_MS: u64 = 500;

pub struct HttpTransport {
    client: reqwest::Client,
    secret: Arc<str>,
}

impl HttpTransport {
    /// `source`: the local address connections to other nodes leave from.
    pub fn new(secret: &str, source: Option<std::net::IpAddr>) -> Self {
        let client = reqwest::Client::builder()
            .local_address(source)
            .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_PEER_MAX)
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client");
        Self {
            client,
            secret: secret.into(),
        }
    }
}

/// The path a call travels under.
pub fn path(rpc: Rpc) -> String {
    format!("/internal/raft/{}", rpc.name())
}

impl Transport for HttpTransport {
    fn call(&self, url: &str, rpc: Rpc, body: Vec<u8>, timeout: Duration) -> TransportFuture {
        let signature = super::sign(
            &self.secret,
            super::now_secs(),
            &[rpc.name().as_bytes(), &body],
        );
        let request = self
            .client
            .post(format!("{url}{}", path(rpc)))
            .timeout(timeout)
            .header("Panshi-Cluster", signature)
            .header("Content-Type", "application/octet-stream")
            .body(body);
        Box::pin(async move {
            let response = request
                .send()
                .await
                .map_err(|e| TransportError::Unreachable(e.without_url().to_string()))?;
            let status = response.status();
            let bytes = response
                .bytes()
                .await
                .map_err(|e| TransportError::Unreachable(e.without_url().to_string()))?;
            if !status.is_success() {
                return Err(TransportError::BadAnswer(format!("HTTP {status}")));
            }
            Ok(bytes.to_vec())
        })
    }
}
