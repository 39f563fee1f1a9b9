//! Outbound notification POSTs (alert webhooks, Telegram messages, Sentry envelopes) over
//! reqwest with rustls, so `https://` receivers work; one background thread sends what is
//! queued so no request path ever waits on them.
//!
//! Invariants: at most `POST_QUEUE_CAPACITY` posts wait (more are dropped and counted);
//! every try has a timeout (`POST_TIMEOUT_MS`); a post gets at most `POST_ATTEMPTS_MAX`
//! tries, retried only on a network error, a 429 or a 5xx; a URL may carry a secret (a
//! Telegram bot token), so only its host is ever logged.
//!
//! Key decision: the sender thread runs its own current-thread runtime, so the Sentry
//! transport, which is called from any thread (panics included), and the alert publisher
//! share one client without either needing the server's runtime.

use std::time::Duration;

use tokio::sync::mpsc::{channel, error::TrySendError, Receiver, Sender};

/// Posts that may wait for the sender thread.
pub const POST_QUEUE_CAPACITY: usize = 256;
/// Timeout of one try (connect, send, answer).
pub const POST_TIMEOUT_MS: u64 = 5_000;
/// Tries per post.
pub const POST_ATTEMPTS_MAX: u32 = 3;
/// Delay before the first retry; the second waits twice as long.
pub const POST_RETRY_FIRST_MS: u64 = 1_000;

/// Parses an `https://` or `http://` URL with a host and no credentials.
pub fn web_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(format!("`{url}` must start with https:// or http://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("a URL may not carry credentials".into());
    }
    Ok(parsed)
}

/// One request for the sender thread.
#[derive(Clone, Debug)]
pub struct Post {
    pub url: reqwest::Url,
    pub content_type: &'static str,
    /// Extra headers: (name, value).
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// The client every outbound post uses: rustls, with a timeout on each try.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(POST_TIMEOUT_MS))
        .connect_timeout(Duration::from_millis(POST_TIMEOUT_MS))
        .user_agent("panshi")
        .build()
        .expect("a rustls client with compiled-in roots always builds")
}

/// One try: the answer's status, or why there is none.
pub async fn send(client: &reqwest::Client, post: &Post) -> Result<u16, String> {
    let mut request = client
        .post(post.url.clone())
        .header("Content-Type", post.content_type)
        .body(post.body.clone());
    for (name, value) in &post.headers {
        request = request.header(*name, value);
    }
    let response = request
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    Ok(response.status().as_u16())
}

/// Tries until a 2xx, a refusal that a retry would not change, or `POST_ATTEMPTS_MAX`
/// tries. Returns the outcome's name for the metric.
pub async fn deliver(client: &reqwest::Client, post: &Post) -> &'static str {
    let host = post.url.host_str().unwrap_or("").to_owned();
    for attempt in 1..=POST_ATTEMPTS_MAX {
        let retry = match send(client, post).await {
            Ok(status) if (200..300).contains(&status) => return "sent",
            Ok(status) => {
                tracing::warn!(status, %host, attempt, "outbound POST refused");
                status == 429 || status >= 500
            }
            Err(error) => {
                tracing::warn!(%error, %host, attempt, "outbound POST failed");
                true
            }
        };
        if !retry {
            return "refused";
        }
        if attempt < POST_ATTEMPTS_MAX {
            let delay = POST_RETRY_FIRST_MS << (attempt - 1);
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }
    "failed"
}

/// The queue of the sender thread. Cheap to clone.
#[derive(Clone)]
pub struct Poster {
    queue: Sender<Post>,
}

impl Poster {
    /// Starts the sender thread.
    pub fn start() -> Poster {
        let (queue, receiver) = channel(POST_QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("panshi-post".into())
            .spawn(move || run(receiver))
            .expect("spawning the post thread");
        Poster { queue }
    }

    /// Queues a post; drops it (counted) when the queue is full.
    pub fn post(&self, post: Post) {
        match self.queue.try_send(post) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metrics::counter!("panshi_outbound_posts_total", "outcome" => "dropped")
                    .increment(1);
            }
            Err(TrySendError::Closed(_)) => {}
        }
    }
}

/// The sender thread: one post at a time, each with its retries.
fn run(mut receiver: Receiver<Post>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async move {
        let client = client();
        while let Some(post) = receiver.recv().await {
            let outcome = deliver(&client, &post).await;
            metrics::counter!("panshi_outbound_posts_total", "outcome" => outcome).increment(1);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_urls_are_http_or_https_with_a_host_and_no_credentials() {
        assert_eq!(
            web_url("https://hooks.example.com/alert?x=1")
                .unwrap()
                .host_str(),
            Some("hooks.example.com")
        );
        assert!(web_url("http://127.0.0.1:9000/hook").is_ok());
        for bad in [
            "ftp://example.test/",
            "https://user:pw@example.test/",
            "not a url",
            "https://",
        ] {
            assert!(web_url(bad).is_err(), "{bad}");
        }
    }
}
