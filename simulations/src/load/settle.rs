//! Waiting for the server to be quiet before a measured run.
//!
//! A bulk key import is answered once it is in the log, but the server's next sled flush
//! (every `SLED_FLUSH_EVERY_MS`) writes it out while commits wait to be mirrored: after a
//! 50,000-key import that is a stall of about half a second, which a run started right
//! away would measure instead of steady state. So before each measured run the harness
//! buys a separate probe product every `PROBE_INTERVAL` until every purchase over
//! `QUIET_WINDOW` (longer than two flushes) was fast. The probe's orders are real: the
//! final checks count them like any other.

use std::time::{Duration, Instant};

use storage::sled_dir::SLED_FLUSH_EVERY_MS;

use super::api::Shop;
use super::check::ImportedProduct;
use super::http::Connection;
use super::purchase::{self, Created, Ledger};
use super::stats::Stats;

/// A purchase at most this slow counts as quiet.
pub const QUIET_PURCHASE_MAX: Duration = Duration::from_millis(25);
/// How long every probe purchase must stay quiet.
pub const QUIET_WINDOW: Duration = Duration::from_millis(1_200);
/// Pause between probe purchases.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// Longest wait.
pub const SETTLE_TIME_MAX: Duration = Duration::from_secs(60);
/// Most probe purchases per wait: one per interval for the longest wait.
pub const PROBE_PURCHASES_MAX: u64 = 3_000;

const _: () = assert!(QUIET_WINDOW.as_millis() as u64 > 2 * SLED_FLUSH_EVERY_MS);
const _: () = assert!(
    PROBE_PURCHASES_MAX * PROBE_INTERVAL.as_millis() as u64 >= SETTLE_TIME_MAX.as_millis() as u64
);

/// The probe product and what its purchases paid, kept for the final checks.
#[derive(Default)]
pub struct Probe {
    pub product: Option<ImportedProduct>,
    pub ledger: Ledger,
}

/// Buys the probe product every `PROBE_INTERVAL` until the purchases of a whole
/// `QUIET_WINDOW` were quiet; returns whether they were, the purchases made and the time
/// taken.
pub async fn wait_quiet(shop: &Shop, sku: &str, ledger: &mut Ledger) -> (bool, u64, Duration) {
    let stats = Stats::shared();
    let request = shop.create_order_request(sku, 1);
    let mut connection = Connection::new(shop.addr);
    let started = Instant::now();
    let mut quiet_since: Option<Instant> = None;
    let mut purchases = 0;
    while purchases < PROBE_PURCHASES_MAX && started.elapsed() < SETTLE_TIME_MAX {
        let began = Instant::now();
        purchases += 1;
        let paid = match purchase::create(&mut connection, &request, &stats, false).await {
            Created::Order(order) => {
                purchase::pay_and_file(&mut connection, shop, order, &stats, ledger).await
            }
            Created::SoldOut | Created::Queued(_) | Created::Failed(_) => false,
        };
        if paid && began.elapsed() <= QUIET_PURCHASE_MAX {
            if began - *quiet_since.get_or_insert(began) >= QUIET_WINDOW {
                return (true, purchases, started.elapsed());
            }
        } else {
            quiet_since = None;
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    (false, purchases, started.elapsed())
}
