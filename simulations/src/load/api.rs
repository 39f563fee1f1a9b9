//! The shop's API as a buyer, a gateway and an operator use it: pre-formatted requests for
//! the raw client, parsers for the few answer fields the harness needs, and the operator's
//! setup calls (products, key imports, stock).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use engine::money::format_cents;
use engine::payment::epay_sign;
use serde::Deserialize;

use super::http::{request, Connection, Retry};

/// Timeout of operator calls: an import of many keys takes a while.
pub const OPERATOR_TIMEOUT: Duration = Duration::from_secs(120);
/// Keys per import request; about 40 bytes each, well under the 16 MiB body limit.
pub const IMPORT_KEYS_PER_REQUEST: u64 = 200_000;
/// Longest wait for `/readyz` to answer 200.
pub const READY_WAIT_MAX: Duration = Duration::from_secs(60);
/// Pause between `/readyz` polls.
const READY_POLL: Duration = Duration::from_millis(20);

const _: () = assert!(IMPORT_KEYS_PER_REQUEST * 64 < 16 * 1024 * 1024);

#[derive(Clone, Debug)]
pub struct Credentials {
    pub admin_token: String,
    pub epay_pid: String,
    pub epay_key: String,
}

/// An order the harness created: what paying for it and looking it up need.
#[derive(Clone, Debug)]
pub struct Order {
    pub order_id: String,
    pub token: String,
    pub amount_cents: u64,
    pub quantity: u64,
}

/// The stock of one SKU as the operator API reports it.
#[derive(Deserialize, Debug, Clone, Copy)]
pub struct Stock {
    /// Not in the contract's list of fields; the server adds it.
    pub imported: Option<u64>,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
}

/// An order as its buyer looks it up.
#[derive(Deserialize, Debug)]
pub struct Lookup {
    pub status: String,
    #[serde(default)]
    pub cards: Vec<String>,
}

#[derive(Deserialize)]
struct Created<'a> {
    order_id: &'a str,
    token: &'a str,
    amount_cents: u64,
}

#[derive(Deserialize)]
struct Imported {
    imported: u64,
    duplicates: u64,
}

/// Where the shop is and the secrets to drive it.
pub struct Shop {
    pub addr: SocketAddr,
    host: String,
    auth_header: String,
    credentials: Credentials,
}

pub fn parse_created(body: &[u8], quantity: u64) -> Option<Order> {
    let created: Created<'_> = serde_json::from_slice(body).ok()?;
    Some(Order {
        order_id: created.order_id.to_owned(),
        token: created.token.to_owned(),
        amount_cents: created.amount_cents,
        quantity,
    })
}

/// A waiting-room ticket, from a 202 answer to an order.
#[derive(Clone, Debug)]
pub struct Ticket {
    pub ticket: String,
    pub token: String,
    pub position: u64,
}

#[derive(Deserialize)]
struct Queued<'a> {
    status: &'a str,
    ticket: &'a str,
    token: &'a str,
    position: u64,
}

pub fn parse_queued(body: &[u8]) -> Option<Ticket> {
    let queued: Queued<'_> = serde_json::from_slice(body).ok()?;
    (queued.status == "queued").then(|| Ticket {
        ticket: queued.ticket.to_owned(),
        token: queued.token.to_owned(),
        position: queued.position,
    })
}

/// The order in an `admitted` ticket frame.
pub fn parse_admitted(frame: &serde_json::Value) -> Option<Order> {
    let order = frame.get("order")?;
    Some(Order {
        order_id: order.get("order_id")?.as_str()?.to_owned(),
        token: order.get("token")?.as_str()?.to_owned(),
        amount_cents: order.get("amount_cents")?.as_u64()?,
        quantity: order.get("quantity")?.as_u64()?,
    })
}

pub fn parse_lookup(body: &[u8]) -> Option<Lookup> {
    serde_json::from_slice(body).ok()
}

impl Shop {
    pub fn new(addr: SocketAddr, credentials: Credentials) -> Self {
        Self {
            addr,
            host: addr.to_string(),
            auth_header: format!("Authorization: Bearer {}", credentials.admin_token),
            credentials,
        }
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    pub fn create_order_request(&self, sku: &str, quantity: u32) -> Vec<u8> {
        self.create_request(sku, quantity, None)
    }

    /// An order with an `Idempotency-Key`: sent again, it answers with the same order.
    pub fn create_keyed_request(&self, sku: &str, key: &str) -> Vec<u8> {
        self.create_request(sku, 1, Some(key))
    }

    /// One key, with the optional lookup password set.
    pub fn create_request_with_password(&self, sku: &str, password: &str) -> Vec<u8> {
        let mut body = Self::create_body(sku, 1);
        body["lookup_password"] = password.into();
        self.create_request_for(&body, None)
    }

    fn create_body(sku: &str, quantity: u32) -> serde_json::Value {
        serde_json::json!({
            "sku": sku,
            "quantity": quantity,
            "contact": "load@example.com",
            "channel": "epay",
        })
    }

    fn create_request(&self, sku: &str, quantity: u32, key: Option<&str>) -> Vec<u8> {
        self.create_request_for(&Self::create_body(sku, quantity), key)
    }

    fn create_request_for(&self, body: &serde_json::Value, key: Option<&str>) -> Vec<u8> {
        let body = body.to_string();
        let key = key.map(|key| format!("Idempotency-Key: {key}"));
        let mut headers = vec!["Content-Type: application/json"];
        headers.extend(key.as_deref());
        request(
            "POST",
            "/api/v1/orders",
            &self.host,
            &headers,
            body.as_bytes(),
        )
    }

    /// The gateway's signed notify for a paid order, as a form POST.
    pub fn notify_request(&self, order: &Order) -> Vec<u8> {
        let trade_no = format!("L{}", order.order_id);
        let money = format_cents(order.amount_cents);
        let mut params: Vec<(&str, &str)> = vec![
            ("pid", &self.credentials.epay_pid),
            ("trade_no", &trade_no),
            ("out_trade_no", &order.order_id),
            ("type", "alipay"),
            ("name", "load"),
            ("money", &money),
            ("trade_status", "TRADE_SUCCESS"),
        ];
        let sign = epay_sign(params.iter().copied(), &self.credentials.epay_key);
        params.push(("sign", &sign));
        params.push(("sign_type", "MD5"));
        let body = form_encode(&params);
        let headers = ["Content-Type: application/x-www-form-urlencoded"];
        request(
            "POST",
            "/api/v1/payments/epay/notify",
            &self.host,
            &headers,
            body.as_bytes(),
        )
    }

    pub fn lookup_request(&self, order: &Order) -> Vec<u8> {
        let path = format!("/api/v1/orders/{}?token={}", order.order_id, order.token);
        request("GET", &path, &self.host, &[], b"")
    }

    pub fn live_url(&self, order: &Order) -> String {
        format!(
            "ws://{}/api/v1/orders/{}/live?token={}",
            self.host, order.order_id, order.token
        )
    }

    pub fn ticket_url(&self, ticket: &Ticket) -> String {
        format!(
            "ws://{}/api/v1/queue/{}/live?token={}",
            self.host, ticket.ticket, ticket.token
        )
    }

    fn readyz_request(&self) -> Vec<u8> {
        request("GET", "/readyz", &self.host, &[], b"")
    }

    fn operator_request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Vec<u8> {
        let content_type = format!("Content-Type: {content_type}");
        let headers = [self.auth_header.as_str(), content_type.as_str()];
        request(method, path, &self.host, &headers, body)
    }

    pub fn operator_connection(&self) -> Connection {
        Connection::with_timeout(self.addr, OPERATOR_TIMEOUT)
    }

    pub async fn create_product(&self, sku: &str, price_cents: u64) -> anyhow::Result<()> {
        let body = serde_json::json!({
            "sku": sku,
            "name": format!("Load test {sku}"),
            "price_cents": price_cents,
            "currency": "CNY",
        })
        .to_string();
        let request = self.operator_request(
            "POST",
            "/api/v1/admin/products",
            "application/json",
            body.as_bytes(),
        );
        self.operator_call(&request, 201, &format!("creating product {sku}"))
            .await
    }

    /// Sends one operator request on a fresh connection; anything but `expected` fails.
    async fn operator_call(&self, request: &[u8], expected: u16, what: &str) -> anyhow::Result<()> {
        let mut connection = self.operator_connection();
        operator_exchange(&mut connection, request, expected, what).await?;
        Ok(())
    }

    /// Puts `sku` on flash sale: new buyers get waiting-room tickets.
    pub async fn start_flash_sale(&self, sku: &str) -> anyhow::Result<()> {
        let request = self.operator_request(
            "POST",
            &format!("/api/v1/admin/products/{sku}/flash-sale"),
            "application/json",
            br#"{"enabled":true}"#,
        );
        self.operator_call(&request, 200, &format!("starting a flash sale on {sku}"))
            .await
    }

    /// Imports keys `first..first + count` of `sku` (`<sku>-<index>`); returns how many
    /// the server counted as imported. A key the server already holds is an error.
    pub async fn import_keys(&self, sku: &str, first: u64, count: u64) -> anyhow::Result<u64> {
        self.import(sku, first, count, false).await
    }

    /// `import_keys` again after a try whose answer was lost (a 503 `not_committed` may
    /// have committed): keys the server already holds count as imported.
    pub async fn import_keys_again(
        &self,
        sku: &str,
        first: u64,
        count: u64,
    ) -> anyhow::Result<u64> {
        self.import(sku, first, count, true).await
    }

    async fn import(
        &self,
        sku: &str,
        first: u64,
        count: u64,
        duplicates_imported: bool,
    ) -> anyhow::Result<u64> {
        let mut connection = self.operator_connection();
        let path = format!("/api/v1/admin/products/{sku}/cards");
        let mut imported = 0;
        let mut next = first;
        while next < first + count {
            let chunk = IMPORT_KEYS_PER_REQUEST.min(first + count - next);
            let body = keys_body(sku, next, chunk);
            let request = self.operator_request("POST", &path, "text/plain", body.as_bytes());
            let answer = connection
                .send(&request, Retry::Never)
                .await
                .context("importing keys")?;
            if answer.status != 200 {
                bail!(
                    "importing keys: HTTP {} {}",
                    answer.status,
                    String::from_utf8_lossy(answer.body)
                );
            }
            let outcome: Imported = serde_json::from_slice(answer.body).context("import answer")?;
            let held = match duplicates_imported {
                true => outcome.imported + outcome.duplicates,
                false => outcome.imported,
            };
            if held != chunk || (!duplicates_imported && outcome.duplicates != 0) {
                bail!(
                    "import of {chunk} keys answered imported {} duplicates {}",
                    outcome.imported,
                    outcome.duplicates
                );
            }
            imported += held;
            next += chunk;
        }
        Ok(imported)
    }

    pub async fn stock(&self, sku: &str) -> anyhow::Result<Stock> {
        self.operator_get(&format!("/api/v1/admin/products/{sku}/stock"))
            .await
    }

    /// The order pipeline as operators see it: saturated or not, the rooms open.
    pub async fn pipeline(&self) -> anyhow::Result<serde_json::Value> {
        self.operator_get("/api/v1/ops/pipeline").await
    }

    /// Creates a reseller on `connection` and funds it with `balance_cents`: (its id, its
    /// API key).
    pub async fn create_reseller(
        &self,
        connection: &mut Connection,
        name: &str,
        balance_cents: u64,
    ) -> anyhow::Result<(String, String)> {
        #[derive(Deserialize)]
        struct Created {
            reseller_id: String,
            api_key: String,
        }
        let body = serde_json::json!({ "name": name }).to_string();
        let request = self.operator_request(
            "POST",
            "/api/v1/admin/resellers",
            "application/json",
            body.as_bytes(),
        );
        let answer = operator_exchange(connection, &request, 201, "creating a reseller").await?;
        let created: Created = serde_json::from_slice(&answer).context("reseller answer")?;
        let body = serde_json::json!({ "amount_cents": balance_cents, "note": "load" }).to_string();
        let path = format!("/api/v1/admin/resellers/{}/balance", created.reseller_id);
        let request = self.operator_request("POST", &path, "application/json", body.as_bytes());
        operator_exchange(connection, &request, 200, "funding a reseller").await?;
        Ok((created.reseller_id, created.api_key))
    }

    /// A reseller's bulk purchase of `quantity` keys of `sku`, with its API key.
    pub fn reseller_buy_request(&self, api_key: &str, sku: &str, quantity: u32) -> Vec<u8> {
        let body = format!(r#"{{"sku":"{sku}","quantity":{quantity}}}"#);
        let authorization = format!("Authorization: Bearer {api_key}");
        let headers = [authorization.as_str(), "Content-Type: application/json"];
        request(
            "POST",
            "/api/v1/reseller/orders",
            &self.host,
            &headers,
            body.as_bytes(),
        )
    }

    async fn operator_get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let request = self.operator_request("GET", path, "application/json", b"");
        let mut connection = self.operator_connection();
        let answer = connection
            .send(&request, Retry::OnStaleConnection)
            .await
            .with_context(|| format!("GET {path}"))?;
        if answer.status != 200 {
            bail!(
                "GET {path}: HTTP {} {}",
                answer.status,
                String::from_utf8_lossy(answer.body)
            );
        }
        serde_json::from_slice(answer.body).with_context(|| format!("GET {path}: the answer"))
    }

    /// Whether `/leaderz` answers 200 (this node leads a cluster); `false` when unreachable.
    pub async fn leads(&self) -> bool {
        let request = request("GET", "/leaderz", &self.host, &[], b"");
        let mut connection = Connection::with_timeout(self.addr, Duration::from_secs(2));
        connection
            .send(&request, Retry::Never)
            .await
            .is_ok_and(|answer| answer.status == 200)
    }

    /// `/api/v1/ops/cluster`: the cluster as this node sees it.
    pub async fn cluster_status(&self) -> anyhow::Result<serde_json::Value> {
        self.operator_get("/api/v1/ops/cluster").await
    }

    /// Polls `/readyz` until it answers 200; returns how long that took.
    pub async fn wait_ready(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let request = self.readyz_request();
        let mut connection = Connection::with_timeout(self.addr, Duration::from_secs(2));
        while started.elapsed() < READY_WAIT_MAX {
            if let Ok(answer) = connection.send(&request, Retry::OnStaleConnection).await {
                if answer.status == 200 {
                    return Ok(started.elapsed());
                }
            }
            tokio::time::sleep(READY_POLL).await;
        }
        bail!("the server was not ready within {READY_WAIT_MAX:?}")
    }
}

/// Sends one operator request on `connection`: the answer's body, or an error when its
/// status is not `expected`.
async fn operator_exchange(
    connection: &mut Connection,
    request: &[u8],
    expected: u16,
    what: &str,
) -> anyhow::Result<Vec<u8>> {
    let answer = connection
        .send(request, Retry::Never)
        .await
        .with_context(|| what.to_owned())?;
    if answer.status != expected {
        bail!(
            "{what}: HTTP {} {}",
            answer.status,
            String::from_utf8_lossy(answer.body)
        );
    }
    Ok(answer.body.to_vec())
}

fn keys_body(sku: &str, first: u64, count: u64) -> String {
    let mut body = String::with_capacity((count as usize) * (sku.len() + 12));
    for index in first..first + count {
        body.push_str(sku);
        body.push('-');
        body.push_str(&format!("{index:010}"));
        body.push('\n');
    }
    body
}

/// `application/x-www-form-urlencoded`: everything but unreserved characters is escaped.
fn form_encode(params: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(256);
    for (index, (key, value)) in params.iter().enumerate() {
        if index > 0 {
            out.push('&');
        }
        percent_encode(key, &mut out);
        out.push('=');
        percent_encode(value, &mut out);
    }
    out
}

fn percent_encode(text: &str, out: &mut String) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_escape_reserved_characters() {
        assert_eq!(
            form_encode(&[("a", "b c&d"), ("e", "1.5")]),
            "a=b%20c%26d&e=1.5"
        );
    }

    #[test]
    fn created_orders_parse() {
        let body = br#"{"order_id":"abc","token":"t1","status":"awaiting_payment","amount_cents":1000,"payment":{"channel":"epay"}}"#;
        let order = parse_created(body, 1).unwrap();
        assert_eq!(order.order_id, "abc");
        assert_eq!(order.token, "t1");
        assert_eq!(order.amount_cents, 1000);
    }
}
