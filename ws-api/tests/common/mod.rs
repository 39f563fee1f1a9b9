//! A real `panshi serve` process on port 0, and a buyer's, an operator's and a gateway's
//! clients for it: reqwest for HTTP, tokio-tungstenite for WebSockets.
#![allow(dead_code)]

pub mod raw;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

pub const ADMIN: &str = "test-admin-token-0123456789abcdef";
pub const PID: &str = "2001";
pub const KEY: &str = "test-merchant-key";

pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub data: PathBuf,
    pub http: reqwest::Client,
    env: Vec<(String, String)>,
    args: Vec<String>,
    /// Whether the test Epay channel is configured (almost always).
    payments: bool,
    /// Where the server's stderr (its logs) goes; discarded when `None` (unless
    /// `PANSHI_TEST_SERVER_LOGS` is set).
    stderr: Option<PathBuf>,
    /// Where it listens (`127.0.0.1:0` unless a test fixes the port).
    listen: String,
}

impl Server {
    pub fn start(data: &Path) -> Server {
        Self::start_with(data, &[])
    }

    /// Starts the server on port 0 with `env` added, and waits until it listens.
    pub fn start_with(data: &Path, env: &[(&str, &str)]) -> Server {
        Self::start_full(data, env, &[])
    }

    /// Starts the server with `env` added and extra command-line `args` for `serve`.
    pub fn start_full(data: &Path, env: &[(&str, &str)], args: &[&str]) -> Server {
        let mut server = Self::unstarted(data, env, args);
        server.spawn();
        server
    }

    /// Starts the server with no payment channel at all, as a shop owner's first start is.
    pub fn start_without_payments(data: &Path) -> Server {
        let mut server = Self::unstarted(data, &[], &[]);
        server.payments = false;
        server.spawn();
        server
    }

    /// Starts the server with its logs (stderr) written to `stderr`, for tests that read them.
    pub fn start_logged(data: &Path, env: &[(&str, &str)], stderr: &Path) -> Server {
        let mut server = Self::unstarted(data, env, &[]);
        server.stderr = Some(stderr.to_owned());
        server.spawn();
        server
    }

    /// A server that listens on `listen` (a fixed port, known before it starts) and logs
    /// into `log`; not started yet (`relaunch` starts it).
    pub fn at(data: &Path, listen: &str, env: &[(&str, &str)], log: &Path) -> Server {
        let mut server = Self::unstarted(data, env, &[]);
        server.listen = listen.to_owned();
        server.base = format!("http://{listen}");
        server.stderr = Some(log.to_owned());
        server
    }

    fn unstarted(data: &Path, env: &[(&str, &str)], args: &[&str]) -> Server {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Server {
            child: None,
            base: String::new(),
            data: data.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            env,
            args: args.iter().map(|a| a.to_string()).collect(),
            payments: true,
            stderr: None,
            listen: "127.0.0.1:0".to_owned(),
        }
    }

    /// Starts the process again (after `kill9`, or the first time for `at`).
    pub fn relaunch(&mut self) {
        assert!(self.child.is_none(), "one process at a time");
        self.spawn();
    }

    /// Whether the process runs (it was started and not stopped or killed since).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// A server whose logs stay out of the test output (operators' actions log at warn).
    pub fn start_quiet(data: &Path) -> Server {
        Self::start_with(data, &[("PANSHI_LOG__LEVEL", "error")])
    }

    /// `serve --demo` with its own demo gateway (no Epay settings from the harness), its
    /// logs kept out of the test output.
    pub fn start_demo_gateway(data: &Path) -> Server {
        let mut server = Self::unstarted(data, &[("PANSHI_LOG__LEVEL", "error")], &["--demo"]);
        server.payments = false;
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_panshi"));
        command
            .args(["serve", "--listen", &self.listen, "--data"])
            .arg(&self.data)
            .args(&self.args)
            .env("PANSHI_ADMIN_TOKEN", ADMIN)
            // Warnings, less the set-up advice (a test server has no public address and
            // no sealing key): tests stay quiet unless something goes wrong.
            .env("PANSHI_LOG__LEVEL", "warn,panshi::setup=error")
            // Restarts stop at once; tests/fault_drills.rs drains.
            .env("PANSHI_HTTP__DRAIN_MS", "0")
            // Every test client is 127.0.0.1: per-client limits and risk rules are off by
            // default here; tests/traffic.rs turns them back on.
            .env("PANSHI_LIMITS__CREATE__PER_SECOND", "1000000")
            .env("PANSHI_LIMITS__CREATE__BURST", "1000000")
            .env("PANSHI_LIMITS__LOOKUP__PER_SECOND", "1000000")
            .env("PANSHI_LIMITS__LOOKUP__BURST", "1000000")
            .env("PANSHI_LIMITS__WEBSOCKET__PER_SECOND", "1000000")
            .env("PANSHI_LIMITS__WEBSOCKET__BURST", "1000000")
            .env("PANSHI_RISK__RESERVED_UNITS_PER_CONTACT_MAX", "0")
            .env("PANSHI_RISK__RESERVED_UNITS_PER_IP_MAX", "0")
            .env("PANSHI_RISK__ORDERS_PER_CONTACT_PER_WINDOW_MAX", "0")
            .env("PANSHI_RISK__ORDERS_PER_IP_PER_MINUTE_MAX", "0")
            // The tests' own knob, not a setting: the server refuses unknown PANSHI_ names.
            .env_remove("PANSHI_TEST_SERVER_LOGS")
            .stdout(Stdio::piped())
            .stderr(match &self.stderr {
                Some(path) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .expect("the server's log file opens"),
                ),
                // Quiet unless asked for: PANSHI_TEST_SERVER_LOGS=1 shows every server's logs.
                None if std::env::var_os("PANSHI_TEST_SERVER_LOGS").is_some() => Stdio::inherit(),
                None => Stdio::null(),
            });
        // Demo mode refuses to start beside real gateway settings.
        let demo = self.args.iter().any(|a| a == "--demo");
        if self.payments && !demo {
            command
                .env("PANSHI_EPAY__PID", PID)
                .env("PANSHI_EPAY__KEY", KEY)
                .env("PANSHI_EPAY__GATEWAY_URL", "http://127.0.0.1:9/epay");
        }
        for (k, v) in &self.env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("panshi starts");
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(url) = line.strip_prefix("panshi: listening on ") {
                    let _ = sender.send(url.to_owned());
                }
            }
        });
        self.base = receiver
            .recv_timeout(Duration::from_secs(60))
            .expect("server printed its address");
        self.child = Some(child);
    }

    /// The server's logs so far (only with `start_logged`).
    pub fn log_text(&self) -> String {
        let path = self.stderr.as_ref().expect("started with start_logged");
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server runs").id()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, and wait for a graceful stop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status()
                .unwrap();
            let status = child.wait().unwrap();
            assert!(status.success(), "graceful stop exited with {status}");
        }
    }

    /// Sends SIGTERM and returns at once (`wait_exit` collects the process).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.child.take().expect("the server runs").wait().unwrap()
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn audit(&self) -> (bool, String) {
        Self::audit_of(&self.data)
    }

    /// `panshi audit` of a data dir no server uses.
    pub fn audit_of(data: &Path) -> (bool, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_panshi"))
            .args(["audit", "--data"])
            .arg(data)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("{}{}", self.base.replacen("http://", "ws://", 1), path)
    }

    /// The body of `GET path` as text (metrics, pages).
    pub async fn get_text(&self, path: &str) -> String {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        answer(r).await
    }

    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        answer(r).await
    }

    pub async fn import(&self, sku: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(&format!("/api/v1/admin/products/{sku}/cards")))
            .bearer_auth(ADMIN)
            .header("Content-Type", "text/plain")
            .body(body)
            .send()
            .await
            .unwrap();
        answer(r).await
    }

    /// Creates a product and imports `keys`.
    pub async fn product(&self, sku: &str, price_cents: u64, keys: &[String]) {
        let (code, body) = self
            .admin_post("/api/v1/admin/products", json!({"sku": sku, "name": format!("Product {sku}"), "price_cents": price_cents, "currency": "CNY"}))
            .await;
        assert_eq!(code, 201, "{body}");
        if !keys.is_empty() {
            let (code, body) = self.import(sku, keys.join("\n")).await;
            assert_eq!(code, 200, "{body}");
            assert_eq!(body["imported"], keys.len() as u64);
        }
    }

    pub async fn order(&self, sku: &str, quantity: u32) -> (u16, Value) {
        self.order_as(sku, quantity, "buyer@example.com").await
    }

    /// `POST /api/v1/orders` for `contact`, paying by Epay.
    pub async fn order_as(&self, sku: &str, quantity: u32, contact: &str) -> (u16, Value) {
        self.order_via(sku, quantity, contact, "epay").await
    }

    /// `POST /api/v1/orders` for `contact`, paying through `channel`.
    pub async fn order_via(
        &self,
        sku: &str,
        quantity: u32,
        contact: &str,
        channel: &str,
    ) -> (u16, Value) {
        let body =
            json!({"sku": sku, "quantity": quantity, "contact": contact, "channel": channel});
        self.order_with(body).await
    }

    /// `POST /api/v1/orders` with this body as it is.
    pub async fn order_with(&self, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url("/api/v1/orders"))
            .json(&body)
            .send()
            .await
            .unwrap();
        answer(r).await
    }

    /// `POST /api/v1/orders` for `contact`, paying by Epay, with an `Idempotency-Key`.
    pub async fn order_keyed(
        &self,
        sku: &str,
        quantity: u32,
        contact: &str,
        key: &str,
    ) -> (u16, Value) {
        let body = json!({"sku": sku, "quantity": quantity, "contact": contact, "channel": "epay"});
        let r = self
            .http
            .post(self.url("/api/v1/orders"))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .unwrap();
        answer(r).await
    }

    pub async fn lookup(&self, order: &Value) -> (u16, Value) {
        let path = format!(
            "/api/v1/orders/{}?token={}",
            order["order_id"].as_str().unwrap(),
            order["token"].as_str().unwrap()
        );
        let r = self.http.get(self.url(&path)).send().await.unwrap();
        answer(r).await
    }

    pub async fn stock(&self, sku: &str) -> (u64, u64, u64) {
        let (code, s) = self
            .admin_get(&format!("/api/v1/admin/products/{sku}/stock"))
            .await;
        assert_eq!(code, 200, "{s}");
        (
            s["available"].as_u64().unwrap(),
            s["reserved"].as_u64().unwrap(),
            s["sold"].as_u64().unwrap(),
        )
    }

    /// Sends a signed Epay notify as a gateway would (form POST); returns status and body.
    pub async fn notify(&self, params: &[(String, String)]) -> (u16, String) {
        let r = self
            .http
            .post(self.url("/api/v1/payments/epay/notify"))
            .form(params)
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        (code, r.text().await.unwrap())
    }

    pub async fn pay(&self, order: &Value) -> (u16, String) {
        self.notify(&epay_params(order, PID, KEY, None)).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub async fn answer(r: reqwest::Response) -> (u16, Value) {
    let code = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// Signed notify parameters for an order; `money_override` forges the amount.
pub fn epay_params(
    order: &Value,
    pid: &str,
    key: &str,
    money_override: Option<&str>,
) -> Vec<(String, String)> {
    let id = order["order_id"].as_str().unwrap();
    let amount = money(order["amount_cents"].as_u64().unwrap());
    let mut params: Vec<(String, String)> = [
        ("pid", pid),
        ("trade_no", &format!("G{id}")),
        ("out_trade_no", id),
        ("type", "alipay"),
        ("name", "test item"),
        ("money", money_override.unwrap_or(&amount)),
        ("trade_status", "TRADE_SUCCESS"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let sign =
        engine::payment::epay_sign(params.iter().map(|(k, v)| (k.as_str(), v.as_str())), key);
    params.push(("sign".into(), sign));
    params.push(("sign_type".into(), "MD5".into()));
    params
}

pub fn keys(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i:05}")).collect()
}

/// A live WebSocket on an order, with 4 KiB buffers.
pub struct Live {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

pub enum Frame {
    Update(Value),
    /// The server closed, with this close code.
    Closed(Option<u16>),
}

/// The path of an order's live socket: `/api/v1/orders/{id}/live?token=`.
pub fn live_path(order: &Value) -> String {
    format!(
        "/api/v1/orders/{}/live?token={}",
        order["order_id"].as_str().unwrap(),
        order["token"].as_str().unwrap()
    )
}

impl Live {
    pub async fn connect(server: &Server, order: &Value) -> Live {
        let url = server.ws_url(&live_path(order));
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(4096);
        let (stream, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
            .await
            .expect("websocket connects");
        Live { stream }
    }

    pub async fn next(&mut self) -> Frame {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await
                .expect("a frame within 10 s");
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Frame::Update(serde_json::from_str(&text).unwrap())
                }
                Some(Ok(Message::Close(frame))) => {
                    return Frame::Closed(frame.map(|f| u16::from(f.code)))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Frame::Closed(None),
            }
        }
    }

    pub async fn status(&mut self) -> String {
        match self.next().await {
            Frame::Update(v) => v["status"].as_str().unwrap().to_owned(),
            Frame::Closed(code) => panic!("socket closed ({code:?}) while a frame was expected"),
        }
    }
}

/// Runs `promtool check metrics` on the scrape. Without promtool the check fails under CI
/// (CI installs it) and is skipped, with a note, elsewhere.
pub fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is not installed, and CI is set: install Debian's `prometheus` package \
                 (.ci/run does) so /metrics is checked"
            );
            eprintln!("note: promtool not installed; skipping `promtool check metrics`");
            return;
        }
        Err(error) => panic!("running promtool: {error}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\n--- scrape ---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every frame of a ticket's live feed until the server closes it.
pub async fn watch_ticket(server: &Server, ticket: &Value) -> Vec<Value> {
    let url = server.ws_url(&format!(
        "/api/v1/queue/{}/live?token={}",
        ticket["ticket"].as_str().unwrap(),
        ticket["token"].as_str().unwrap()
    ));
    let (mut stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut frames = Vec::new();
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(20), stream.next()).await
    {
        match message {
            Message::Text(text) => frames.push(serde_json::from_str(&text).unwrap()),
            Message::Close(_) => break,
            _ => {}
        }
    }
    frames
}

/// Every file under `dir`, read as bytes and concatenated.
pub fn files_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all.extend(files_bytes(&path));
        } else {
            all.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    all
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// An aiosmtpd server saving each message as JSON (tests/support/smtp_sink.py).
pub struct Sink {
    child: Child,
    dir: PathBuf,
}

impl Sink {
    pub fn start(dir: &Path, port: u16, hold_first: bool) -> Sink {
        std::fs::create_dir_all(dir).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_sink.py");
        let mut command = Command::new("python3");
        command
            .arg(script)
            .arg(dir)
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if hold_first {
            command.arg("--hold-first");
        }
        let mut child = command.spawn().expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "the SMTP sink did not start (is aiosmtpd installed? .ci/run installs it)"
        );
        Sink {
            child,
            dir: dir.to_owned(),
        }
    }

    /// The messages saved so far, in arrival order.
    pub fn messages(&self) -> Vec<Value> {
        let mut numbered: Vec<(u64, Value)> = std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let number = path
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()?;
                let text = std::fs::read_to_string(&path).ok()?;
                Some((number, serde_json::from_str(&text).ok()?))
            })
            .collect();
        numbered.sort_by_key(|(number, _)| *number);
        numbered.into_iter().map(|(_, message)| message).collect()
    }

    /// Waits until `count` messages have arrived.
    pub async fn wait_for(&self, count: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let messages = self.messages();
            if messages.len() >= count {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} messages within {within:?}",
                messages.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on now, below the ephemeral range (a port from `bind(0)` can be
/// taken by a client connection's source port before the server binds it), never the same
/// twice in one test process.
pub fn free_port() -> u16 {
    simulations::load::server::free_port().expect("a free port below the ephemeral range")
}

/// Reads one HTTP/1.1 request: (head, body).
pub async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<(String, String)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let read = tokio::io::AsyncReadExt::read(socket, &mut chunk)
            .await
            .ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let read = tokio::io::AsyncReadExt::read(socket, &mut chunk)
            .await
            .ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    let body = String::from_utf8_lossy(&buffer[head_end..head_end + length]).into_owned();
    Some((head, body))
}

/// Runs `panshi serve` on port 0 with only `env` (and the operator token) and `args`, and
/// expects it to refuse to start: returns what it said on stderr. Panics if it listens.
pub fn refused_start(data: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_panshi"));
    command.arg("serve");
    if !args.contains(&"--listen") {
        command.args(["--listen", "127.0.0.1:0"]);
    }
    command
        .arg("--data")
        .arg(data)
        .args(args)
        .env("PANSHI_ADMIN_TOKEN", ADMIN)
        .env("PANSHI_LOG__LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("panshi starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("panshi was expected to refuse to start, but it kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !status.success() && !stdout.contains("listening on"),
        "panshi was expected to refuse to start: {status}\n{stdout}\n{stderr}"
    );
    stderr
}

/// HMAC-SHA256 Stripe-Signature for `body` at unix time `t`.
pub fn stripe_signature(body: &str, t: u64, secret: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!(
        "t={t},v1={}",
        engine::payment::hex_lower(&mac.finalize().into_bytes())
    )
}

/// A paid `checkout.session.completed` event for `order`.
pub fn stripe_paid_event(event_id: &str, session_id: &str, order: &Value) -> String {
    json!({
        "id": event_id,
        "type": "checkout.session.completed",
        "data": {"object": {
            "id": session_id, "payment_status": "paid",
            "client_reference_id": order["order_id"],
            "amount_total": order["amount_cents"], "currency": "cny",
        }},
    })
    .to_string()
}

/// An epusdt callback for `order` at its amount, signed with `token`, with `status`.
pub fn epusdt_callback_with(order: &Value, token: &str, status: u32, trade_id: &str) -> String {
    let id = order["order_id"].as_str().unwrap();
    let cents = order["amount_cents"].as_u64().unwrap();
    let amount = engine::payment::shortest_decimal(&money(cents)).unwrap();
    let status_text = status.to_string();
    let fields = [
        ("amount", amount.as_str()),
        ("block_transaction_id", "0xabc"),
        ("order_id", id),
        ("status", status_text.as_str()),
        ("trade_id", trade_id),
    ];
    let signature = engine::payment::epusdt_sign(fields, token);
    format!(
        r#"{{"trade_id":"{trade_id}","order_id":"{id}","amount":{amount},"block_transaction_id":"0xabc","signature":"{signature}","status":{status}}}"#
    )
}

/// Unix seconds now.
pub fn unix_now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A request a stand-in server received.
pub struct Seen {
    /// `POST /path HTTP/1.1`.
    pub line: String,
    /// The header lines, as received.
    pub head: String,
    pub body: String,
}

impl Seen {
    /// A header's value (names compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// A stand-in server's answer.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

pub type Handler = Arc<dyn Fn(&str, &str) -> (u16, String) + Send + Sync>;

/// A stand-in HTTP server: `handler(request line, body)` answers each request with JSON.
pub async fn stand_in(handler: Handler) -> String {
    stand_in_with(Arc::new(move |seen: &Seen| {
        let (status, body) = handler(&seen.line, &seen.body);
        Reply {
            status,
            headers: Vec::new(),
            body,
        }
    }))
    .await
}

/// A stand-in HTTP server that sees every request whole and answers with any headers.
pub async fn stand_in_with(handler: Arc<dyn Fn(&Seen) -> Reply + Send + Sync>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let Some((head, body)) = read_request(&mut socket).await else {
                    return;
                };
                let (line, head) = head.split_once("\r\n").unwrap_or((&head, ""));
                let reply = handler(&Seen {
                    line: line.to_owned(),
                    head: head.trim_end().to_owned(),
                    body,
                });
                let mut response = format!(
                    "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                    reply.status,
                    reply.body.len()
                );
                for (name, value) in &reply.headers {
                    response.push_str(&format!("{name}: {value}\r\n"));
                }
                response.push_str("\r\n");
                response.push_str(&reply.body);
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    url
}
