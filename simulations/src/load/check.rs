//! The end-of-run checks, all through the API (and `panshi audit` when the harness owns
//! the server): nothing oversold, nothing lost.
//!
//! - Every notify left without a definite answer is sent again, as a gateway would, until
//!   it gets one; only then are the books compared.
//! - Per SKU: imported = available + reserved + sold, and the server's count of imported
//!   keys equals the harness's.
//! - Sold keys equal the quantity of orders whose notify was answered `success`.
//! - Every such order reads `delivered` on lookup, with its keys, and no key twice.
//! - With a spawned server: a graceful stop on SIGTERM and an audit ending in ` 0 violations`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::api::{parse_lookup, Lookup, Order, Shop};
use super::http::{Connection, Retry};
use super::purchase::Ledger;
use super::server::SpawnedServer;

/// Connections the checks use at once.
pub const CHECK_CONNECTIONS: usize = 32;
/// Longest a paid order may take to read `delivered`.
pub const DELIVERY_WAIT_MAX: Duration = Duration::from_secs(10);
const DELIVERY_POLL: Duration = Duration::from_millis(50);
/// Attempts per in-doubt notify before it is reported as unresolved.
pub const RECONCILE_ATTEMPTS_MAX: u32 = 60;
const RECONCILE_PAUSE: Duration = Duration::from_millis(500);
/// Failing orders named in the report.
const EXAMPLES_MAX: usize = 5;
/// Audit lines repeated in the report when it finds violations.
const AUDIT_LINES_MAX: usize = 20;

/// A product the run created and the keys it imported into it.
#[derive(Clone, Debug)]
pub struct ImportedProduct {
    pub sku: String,
    pub imported: u64,
}

#[derive(Default)]
pub struct Checks {
    results: Vec<(bool, String)>,
}

impl Checks {
    pub fn add(&mut self, ok: bool, text: impl Into<String>) {
        self.results.push((ok, text.into()));
    }

    pub fn passed(&self) -> bool {
        self.results.iter().all(|(ok, _)| *ok)
    }

    pub fn print(&self) {
        println!("\n== checks ==");
        for (ok, text) in &self.results {
            println!("{} {text}", if *ok { "ok  " } else { "FAIL" });
        }
        println!("result: {}", if self.passed() { "PASS" } else { "FAIL" });
    }
}

enum Resolution {
    Paid,
    Refused,
    Unresolved,
}

/// Re-sends every in-doubt notify until a definite answer; files each order by it.
pub async fn reconcile(shop: &Shop, ledger: &mut Ledger, checks: &mut Checks) {
    let in_doubt = std::mem::take(&mut ledger.in_doubt);
    if in_doubt.is_empty() {
        return;
    }
    let next = AtomicUsize::new(0);
    let workers = (0..CHECK_CONNECTIONS).map(|_| async {
        let mut connection = Connection::new(shop.addr);
        let mut resolved = Vec::new();
        while let Some(order) = in_doubt.get(next.fetch_add(1, Ordering::AcqRel)) {
            resolved.push((order.clone(), resolve(&mut connection, shop, order).await));
        }
        resolved
    });
    let (mut paid, mut refused, mut unresolved) = (0, 0, 0);
    for (order, resolution) in join_all(workers).await.into_iter().flatten() {
        match resolution {
            Resolution::Paid => {
                paid += 1;
                ledger.paid.push(order);
            }
            Resolution::Refused => {
                refused += 1;
                ledger.refused += 1;
            }
            Resolution::Unresolved => {
                unresolved += 1;
                ledger.in_doubt.push(order);
            }
        }
    }
    checks.add(
        unresolved == 0,
        format!(
            "{} in-doubt notifies re-sent: {paid} success, {refused} fail, {unresolved} unresolved",
            in_doubt.len()
        ),
    );
}

async fn resolve(connection: &mut Connection, shop: &Shop, order: &Order) -> Resolution {
    let request = shop.notify_request(order);
    for _ in 0..RECONCILE_ATTEMPTS_MAX {
        match connection.send(&request, Retry::OnStaleConnection).await {
            Ok(answer) if answer.status == 200 && answer.body == b"success" => {
                return Resolution::Paid
            }
            Ok(answer) if answer.status == 400 => return Resolution::Refused,
            _ => tokio::time::sleep(RECONCILE_PAUSE).await,
        }
    }
    Resolution::Unresolved
}

/// Stock conservation per SKU, and sold = paid.
pub async fn check_stock(
    shop: &Shop,
    products: &[ImportedProduct],
    ledger: &Ledger,
    checks: &mut Checks,
) -> anyhow::Result<u64> {
    let mut sold_total = 0;
    for product in products {
        let stock = shop.stock(&product.sku).await?;
        if let Some(server_imported) = stock.imported {
            checks.add(
                server_imported == product.imported,
                format!("{}: the server counts {server_imported} keys imported, the harness imported {}", product.sku, product.imported),
            );
        }
        checks.add(
            product.imported == stock.available + stock.reserved + stock.sold,
            format!(
                "{}: imported {} = available {} + reserved {} + sold {}",
                product.sku, product.imported, stock.available, stock.reserved, stock.sold
            ),
        );
        sold_total += stock.sold;
    }
    let paid = ledger.paid_quantity();
    checks.add(
        sold_total == paid,
        format!("sold {sold_total} == keys in orders whose notify answered success {paid}"),
    );
    Ok(sold_total)
}

/// What looking up every paid order found.
#[derive(Default)]
struct Deliveries {
    delivered: u64,
    keys: Vec<String>,
    wrong_key_count: u64,
    failures: Vec<String>,
    failures_count: u64,
}

impl Deliveries {
    fn merge(&mut self, other: Deliveries) {
        self.delivered += other.delivered;
        self.keys.extend(other.keys);
        self.wrong_key_count += other.wrong_key_count;
        self.failures_count += other.failures_count;
        let room = EXAMPLES_MAX.saturating_sub(self.failures.len());
        self.failures.extend(other.failures.into_iter().take(room));
    }

    fn fail(&mut self, text: String) {
        self.failures_count += 1;
        if self.failures.len() < EXAMPLES_MAX {
            self.failures.push(text);
        }
    }
}

/// Every paid order reads `delivered` with exactly its quantity of keys; no key twice.
pub async fn check_delivered(shop: &Shop, orders: &[Order], checks: &mut Checks) {
    let next = AtomicUsize::new(0);
    let workers = (0..CHECK_CONNECTIONS).map(|_| async {
        let mut connection = Connection::new(shop.addr);
        let mut found = Deliveries::default();
        while let Some(order) = orders.get(next.fetch_add(1, Ordering::AcqRel)) {
            match settled_lookup(&mut connection, shop, order).await {
                Ok(view) if view.status == "delivered" => {
                    found.delivered += 1;
                    if view.cards.len() as u64 != order.quantity {
                        found.wrong_key_count += 1;
                    }
                    found.keys.extend(view.cards);
                }
                Ok(view) => found.fail(format!("{} is {}", order.order_id, view.status)),
                Err(error) => found.fail(format!("{}: {error}", order.order_id)),
            }
        }
        found
    });
    let mut all = Deliveries::default();
    for found in join_all(workers).await {
        all.merge(found);
    }
    let distinct: HashSet<&str> = all.keys.iter().map(String::as_str).collect();
    checks.add(
        all.failures_count == 0,
        format!(
            "{} of {} paid orders delivered on lookup{}",
            all.delivered,
            orders.len(),
            examples(&all.failures)
        ),
    );
    checks.add(
        all.wrong_key_count == 0,
        format!(
            "{} delivered orders with the wrong number of keys",
            all.wrong_key_count
        ),
    );
    checks.add(
        distinct.len() == all.keys.len(),
        format!(
            "{} keys delivered, {} distinct",
            all.keys.len(),
            distinct.len()
        ),
    );
}

fn examples(failures: &[String]) -> String {
    if failures.is_empty() {
        String::new()
    } else {
        format!(" (for example {})", failures.join("; "))
    }
}

/// Looks an order up until it leaves `paid` (delivery follows payment), within a bound.
async fn settled_lookup(
    connection: &mut Connection,
    shop: &Shop,
    order: &Order,
) -> Result<Lookup, String> {
    let request = shop.lookup_request(order);
    let deadline = Instant::now() + DELIVERY_WAIT_MAX;
    loop {
        let answer = connection
            .send(&request, Retry::OnStaleConnection)
            .await
            .map_err(|e| e.to_string())?;
        if answer.status != 200 {
            return Err(format!("HTTP {}", answer.status));
        }
        let view = parse_lookup(answer.body).ok_or("unreadable lookup")?;
        if view.status != "paid" || Instant::now() >= deadline {
            return Ok(view);
        }
        tokio::time::sleep(DELIVERY_POLL).await;
    }
}

/// Stops the spawned server with SIGTERM and audits its data dir.
pub async fn finish_server(server: &mut SpawnedServer, checks: &mut Checks) {
    match server.stop().await {
        Ok(status) => checks.add(
            status.success(),
            format!("server stopped on SIGTERM ({status})"),
        ),
        Err(error) => checks.add(false, format!("server stop: {error:#}")),
    }
    match server.audit().await {
        Ok((success, output)) => {
            let last = output.lines().last().unwrap_or("(no output)").to_owned();
            let clean = success && last.ends_with(" 0 violations");
            if !clean {
                for line in output.lines().take(AUDIT_LINES_MAX) {
                    println!("audit> {line}");
                }
            }
            checks.add(clean, last);
        }
        Err(error) => checks.add(false, format!("audit: {error:#}")),
    }
}
