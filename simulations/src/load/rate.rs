//! Purchases at a target rate. `connections` workers, each with its own keep-alive
//! connection, share one schedule of purchase starts: worker `i` of `n` takes slots
//! `i, i + n, i + 2n, ...`, slot `k` starting at `k / rate` seconds. Latency is measured
//! per request from the moment it is written.
//!
//! A worker more than `LAG_SKIP` behind its schedule skips the missed slots instead of
//! bursting, and counts them: a saturated server then shows as throughput below target,
//! which is what the ramp looks for, rather than as an ever-growing backlog.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::api::Shop;
use super::cpu::{listen_overflows, overflows_since, CpuMark, CpuShare, ServerPid};
use super::http::{Connection, REQUEST_TIMEOUT};
use super::progress::Progress;
use super::purchase::{self, Created, Ledger, NOTIFY_ATTEMPTS_MAX, NOTIFY_RETRY_PAUSE};
use super::stats::{lock, Endpoint, ErrorKind, SharedStats, Stats};

/// A worker further behind its schedule than this skips the missed slots.
pub const LAG_SKIP: Duration = Duration::from_secs(1);
/// A start later than this behind its slot is counted as late.
pub const LATE_START: Duration = Duration::from_millis(10);
/// After a failed connect a worker waits this long, so a dead server is not hammered.
pub const CONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// Workers start this long after they are spawned, so spawning is not measured.
pub const START_DELAY: Duration = Duration::from_millis(50);
/// The longest one purchase can take: create, every notify attempt, lookup.
pub const PURCHASE_TIME_MAX: Duration = Duration::from_secs(
    REQUEST_TIMEOUT.as_secs() * (2 + NOTIFY_ATTEMPTS_MAX as u64)
        + NOTIFY_RETRY_PAUSE.as_secs() * NOTIFY_ATTEMPTS_MAX as u64
        + 1,
);
/// How long after the deadline in-flight purchases are awaited.
pub const DRAIN_MAX: Duration = Duration::from_secs(PURCHASE_TIME_MAX.as_secs() + 5);

const _: () = assert!(DRAIN_MAX.as_secs() > PURCHASE_TIME_MAX.as_secs());

#[derive(Clone, Debug)]
pub struct RatePlan {
    pub label: String,
    pub rate_per_sec: f64,
    pub duration: Duration,
    pub connections: usize,
    pub lookup: bool,
}

/// What one rate-driven run measured and learnt.
pub struct RateOutcome {
    pub plan: RatePlan,
    pub stats: Stats,
    pub ledger: Ledger,
    /// From the first slot to the last worker's end.
    pub wall: Duration,
    pub cpu: CpuShare,
    /// Workers that did not end within `DRAIN_MAX` (their orders are unaccounted for).
    pub workers_lost: usize,
    /// Listen-queue overflows on the machine during the run.
    pub listen_overflows: String,
}

impl RateOutcome {
    pub fn achieved_per_sec(&self) -> f64 {
        self.stats.count(Endpoint::Purchase) as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    pub fn print(&self) {
        let plan = &self.plan;
        println!(
            "\n== {}: target {:.0}/s for {} s over {} connections{} ==",
            plan.label,
            plan.rate_per_sec,
            plan.duration.as_secs(),
            plan.connections,
            if plan.lookup { ", with lookups" } else { "" },
        );
        println!(
            "wall {:.2} s, purchases {} ({:.1}/s, {:.1}% of target), errors {}",
            self.wall.as_secs_f64(),
            self.stats.count(Endpoint::Purchase),
            self.achieved_per_sec(),
            100.0 * self.achieved_per_sec() / plan.rate_per_sec,
            self.stats.errors_total(),
        );
        print!("{}", self.stats.table(self.wall));
        let purchases = self.stats.count(Endpoint::Purchase).max(1) as f64;
        println!(
            "cpu share of the machine: {}; generator {:.1} us CPU per purchase",
            self.cpu,
            self.cpu.own_secs * 1e6 / purchases
        );
        println!(
            "listen queue overflows (dropped SYNs): {}",
            self.listen_overflows
        );
        if self.workers_lost > 0 {
            println!(
                "WARNING: {} workers did not finish in time",
                self.workers_lost
            );
        }
    }
}

/// Everything the workers of one run share.
struct Shared {
    shop: Arc<Shop>,
    stats: SharedStats,
    create_request: Vec<u8>,
    lookup: bool,
}

/// One worker's slots.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    deadline: Instant,
    /// Seconds between this worker's slots (`connections / rate`).
    period_secs: f64,
    /// Seconds from `start` to this worker's first slot (`index / rate`).
    offset_secs: f64,
    slots_max: u64,
}

impl Schedule {
    fn slot_at(&self, slot: u64) -> Instant {
        self.start + Duration::from_secs_f64(self.offset_secs + self.period_secs * slot as f64)
    }

    /// The first slot at or after `now`.
    fn slot_after(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.start).as_secs_f64() - self.offset_secs;
        (since / self.period_secs).ceil().max(0.0) as u64
    }
}

pub async fn run_rate(
    shop: &Arc<Shop>,
    sku: &str,
    plan: &RatePlan,
    server: &ServerPid,
) -> RateOutcome {
    assert!(plan.rate_per_sec > 0.0 && plan.connections > 0);
    let stats = Stats::shared();
    let shared = Arc::new(Shared {
        shop: shop.clone(),
        stats: stats.clone(),
        create_request: shop.create_order_request(sku, 1),
        lookup: plan.lookup,
    });
    let start = Instant::now() + START_DELAY;
    let deadline = start + plan.duration;
    let drain_deadline = deadline + DRAIN_MAX;
    let progress = Progress::start(
        plan.label.clone(),
        stats.clone(),
        server.clone(),
        drain_deadline,
    );
    let cpu_mark = CpuMark::now(server);
    let overflows_before = listen_overflows();
    let handles: Vec<JoinHandle<Ledger>> = (0..plan.connections)
        .map(|index| {
            tokio::spawn(worker(
                shared.clone(),
                schedule(plan, index, start, deadline),
            ))
        })
        .collect();
    let (ledger, workers_lost) = join_workers(handles, drain_deadline).await;
    let wall = start.elapsed();
    let cpu = cpu_mark.share_since(server);
    progress.finish();
    let stats = std::mem::take(&mut *lock(&stats));
    RateOutcome {
        plan: plan.clone(),
        stats,
        ledger,
        wall,
        cpu,
        workers_lost,
        listen_overflows: overflows_since(overflows_before),
    }
}

fn schedule(plan: &RatePlan, index: usize, start: Instant, deadline: Instant) -> Schedule {
    let slots_total = (plan.rate_per_sec * plan.duration.as_secs_f64()).ceil() as u64;
    let workers = plan.connections as u64;
    Schedule {
        start,
        deadline,
        period_secs: plan.connections as f64 / plan.rate_per_sec,
        offset_secs: index as f64 / plan.rate_per_sec,
        slots_max: slots_total.div_ceil(workers),
    }
}

async fn join_workers(
    handles: Vec<JoinHandle<Ledger>>,
    drain_deadline: Instant,
) -> (Ledger, usize) {
    let mut ledger = Ledger::default();
    let mut lost = 0;
    for mut handle in handles {
        match tokio::time::timeout_at(drain_deadline.into(), &mut handle).await {
            Ok(Ok(worker_ledger)) => ledger.merge(worker_ledger),
            Ok(Err(_)) => lost += 1,
            Err(_) => {
                handle.abort();
                lost += 1;
            }
        }
    }
    (ledger, lost)
}

async fn worker(shared: Arc<Shared>, schedule: Schedule) -> Ledger {
    let mut connection = Connection::new(shared.shop.addr);
    let mut ledger = Ledger::default();
    let mut slot = 0;
    while slot < schedule.slots_max {
        let at = schedule.slot_at(slot);
        if at >= schedule.deadline {
            break;
        }
        let now = Instant::now();
        if now < at {
            tokio::time::sleep_until(at.into()).await;
        } else if now - at > LAG_SKIP {
            let caught_up = schedule.slot_after(now).max(slot + 1);
            lock(&shared.stats).note("skipped slots", caught_up - slot);
            slot = caught_up;
            continue;
        } else if now - at > LATE_START {
            lock(&shared.stats).note("late starts", 1);
        }
        if let Err(ErrorKind::Connect) = buy(&shared, &mut connection, &mut ledger).await {
            tokio::time::sleep(CONNECT_BACKOFF).await;
        }
        slot += 1;
    }
    if connection.stale_replaced > 0 {
        lock(&shared.stats).note("stale connections replaced", connection.stale_replaced);
    }
    ledger
}

/// One full purchase: create, pay, and optionally look up.
async fn buy(
    shared: &Shared,
    connection: &mut Connection,
    ledger: &mut Ledger,
) -> Result<(), ErrorKind> {
    let started = Instant::now();
    let order =
        match purchase::create(connection, &shared.create_request, &shared.stats, false).await {
            Created::Order(order) => order,
            Created::SoldOut => return Ok(()),
            Created::Failed(kind) => return Err(kind),
            // Only a flash sale takes tickets; a paced run has the automatic room off.
            Created::Queued(_) => return Err(ErrorKind::Status(202)),
        };
    let lookup_order = shared.lookup.then(|| order.clone());
    if !purchase::pay_and_file(connection, &shared.shop, order, &shared.stats, ledger).await {
        return Ok(());
    }
    if let Some(order) = lookup_order {
        purchase::lookup(connection, &shared.shop, &order, &shared.stats).await;
    }
    lock(&shared.stats).record(Endpoint::Purchase, started.elapsed());
    Ok(())
}
