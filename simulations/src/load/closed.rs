//! The closed-loop probe: `connections` buyers, each on its own keep-alive connection,
//! buy back to back (create, signed Epay notify, lookup that must show exactly one key)
//! until the deadline. With `--versus`, the same probe runs first against the no-work
//! server (`panshi-nowork`, spawned for it), so one run gives Panshi's share of this
//! machine's HTTP ceiling, and the server's CPU and context switches per purchase beside
//! the ceiling's.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::api::{Credentials, Shop};
use super::cpu::{context_switches, cpu_time, ServerPid};
use super::http::Connection;
use super::progress::Progress;
use super::purchase::{self, Created, Ledger};
use super::rate::{CONNECT_BACKOFF, DRAIN_MAX, START_DELAY};
use super::server::SpawnedServer;
use super::stats::{lock, Endpoint, ErrorKind, SharedStats, Stats};

/// What one closed-loop run measured, with the server's counters over the run.
pub struct ClosedOutcome {
    pub label: String,
    pub connections: usize,
    pub stats: Stats,
    pub ledger: Ledger,
    pub wall: Duration,
    /// The server's CPU time over the run (utime + stime of every thread).
    pub server_cpu: Option<Duration>,
    /// The server's context switches over the run, voluntary and not, summed over the
    /// threads alive at the end (a thread that exited mid-run takes its count with it).
    pub server_switches: Option<u64>,
    pub generator_cpu: Duration,
}

impl ClosedOutcome {
    pub fn purchases(&self) -> u64 {
        self.stats.count(Endpoint::Purchase)
    }

    pub fn per_sec(&self) -> f64 {
        self.purchases() as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Server CPU per purchase, in microseconds.
    pub fn cpu_us(&self) -> Option<f64> {
        let purchases = self.purchases().max(1) as f64;
        self.server_cpu
            .map(|cpu| cpu.as_secs_f64() * 1e6 / purchases)
    }

    pub fn switches(&self) -> Option<f64> {
        let purchases = self.purchases().max(1) as f64;
        self.server_switches.map(|n| n as f64 / purchases)
    }

    pub fn print(&self) {
        println!(
            "\n== {}: closed loop, {} in flight, {:.1} s ==",
            self.label,
            self.connections,
            self.wall.as_secs_f64()
        );
        println!(
            "purchases {} ({:.0}/s), errors {}",
            self.purchases(),
            self.per_sec(),
            self.stats.errors_total()
        );
        print!("{}", self.stats.table(self.wall));
        let purchases = self.purchases().max(1) as f64;
        println!(
            "per purchase: server CPU {} us, server context switches {}, generator CPU {:.1} us",
            fmt_opt(self.cpu_us()),
            fmt_opt(self.switches()),
            self.generator_cpu.as_secs_f64() * 1e6 / purchases
        );
    }
}

fn fmt_opt(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"))
}

/// Runs the probe against `shop` (buying `sku`) for `duration`.
pub async fn run_closed(
    label: &str,
    shop: &Arc<Shop>,
    sku: &str,
    connections: usize,
    duration: Duration,
    server: &ServerPid,
) -> ClosedOutcome {
    assert!(connections > 0);
    let stats = Stats::shared();
    let create_request = Arc::new(shop.create_order_request(sku, 1));
    let start = Instant::now() + START_DELAY;
    let deadline = start + duration;
    let drain_deadline = deadline + DRAIN_MAX;
    let progress = Progress::start(
        label.to_owned(),
        stats.clone(),
        server.clone(),
        drain_deadline,
    );
    let pid = server.get();
    let cpu_before = pid.and_then(|pid| cpu_time(Some(pid)));
    let switches_before = pid.and_then(context_switches);
    let own_before = cpu_time(None).unwrap_or_default();
    let handles: Vec<_> = (0..connections)
        .map(|_| {
            let shop = shop.clone();
            let stats = stats.clone();
            let create_request = create_request.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(start.into()).await;
                buyer(&shop, &create_request, &stats, deadline).await
            })
        })
        .collect();
    let mut ledger = Ledger::default();
    for mut handle in handles {
        match tokio::time::timeout_at(drain_deadline.into(), &mut handle).await {
            Ok(Ok(buyer_ledger)) => ledger.merge(buyer_ledger),
            Ok(Err(_)) => lock(&stats).note("buyers lost", 1),
            Err(_) => {
                handle.abort();
                lock(&stats).note("buyers lost", 1);
            }
        }
    }
    let wall = start.elapsed();
    let server_cpu = pid
        .filter(|pid| server.get() == Some(*pid))
        .and_then(|pid| Some(cpu_time(Some(pid))?.saturating_sub(cpu_before?)));
    let server_switches = pid
        .filter(|pid| server.get() == Some(*pid))
        .and_then(|pid| Some(context_switches(pid)?.saturating_sub(switches_before?)));
    let generator_cpu = cpu_time(None)
        .unwrap_or_default()
        .saturating_sub(own_before);
    progress.finish();
    let stats = std::mem::take(&mut *lock(&stats));
    ClosedOutcome {
        label: label.to_owned(),
        connections,
        stats,
        ledger,
        wall,
        server_cpu,
        server_switches,
        generator_cpu,
    }
}

/// One buyer: full purchases back to back until the deadline.
async fn buyer(
    shop: &Shop,
    create_request: &[u8],
    stats: &SharedStats,
    deadline: Instant,
) -> Ledger {
    let mut connection = Connection::new(shop.addr);
    let mut ledger = Ledger::default();
    while Instant::now() < deadline {
        if let Err(ErrorKind::Connect) =
            buy(shop, &mut connection, create_request, stats, &mut ledger).await
        {
            tokio::time::sleep(CONNECT_BACKOFF).await;
        }
    }
    ledger
}

async fn buy(
    shop: &Shop,
    connection: &mut Connection,
    create_request: &[u8],
    stats: &SharedStats,
    ledger: &mut Ledger,
) -> Result<(), ErrorKind> {
    let started = Instant::now();
    let order = match purchase::create(connection, create_request, stats, false).await {
        Created::Order(order) => order,
        Created::SoldOut => return Err(ErrorKind::Status(409)),
        Created::Failed(kind) => return Err(kind),
        Created::Queued(_) => return Err(ErrorKind::Status(202)),
    };
    if !purchase::pay_and_file(connection, shop, order.clone(), stats, ledger).await {
        return Ok(());
    }
    let Some(view) = purchase::lookup(connection, shop, &order, stats).await else {
        return Ok(());
    };
    if view.status == "delivered" && view.cards.len() as u64 == order.quantity {
        lock(stats).record(Endpoint::Purchase, started.elapsed());
    } else {
        lock(stats).note("lookups without exactly the keys bought", 1);
    }
    Ok(())
}

/// The probe against the no-work server, spawned from `binary` for it and stopped after.
pub async fn against_nowork(
    binary: &Path,
    credentials: Credentials,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<ClosedOutcome> {
    let pid = ServerPid::default();
    let mut server =
        SpawnedServer::start(binary, credentials.clone(), pid.clone(), Vec::new()).await?;
    let shop = Arc::new(Shop::new(server.addr, credentials));
    shop.wait_ready().await?;
    let outcome = run_closed(
        "no-work server",
        &shop,
        "nowork",
        connections,
        duration,
        &pid,
    )
    .await;
    server.stop().await?;
    Ok(outcome)
}

/// The comparison lines of a `--versus` run.
pub fn print_ratio(panshi: &ClosedOutcome, ceiling: &ClosedOutcome) {
    let share = panshi.per_sec() / ceiling.per_sec().max(1e-9);
    println!(
        "\n== Panshi against the no-work server, same probe, same run ==\n\
         throughput: {:.0}/s against {:.0}/s: {:.1}% of the ceiling",
        panshi.per_sec(),
        ceiling.per_sec(),
        share * 100.0
    );
    if let (Some(ours), Some(theirs)) = (panshi.cpu_us(), ceiling.cpu_us()) {
        println!(
            "server CPU per purchase: {ours:.1} us against {theirs:.1} us: {:.2}x",
            ours / theirs.max(1e-9)
        );
    }
    if let (Some(ours), Some(theirs)) = (panshi.switches(), ceiling.switches()) {
        println!("context switches per purchase: {ours:.2} against {theirs:.2}");
    }
}
