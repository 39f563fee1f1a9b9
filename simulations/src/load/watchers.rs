//! `watchers`: N buyers watch N unpaid orders over live sockets (`raw_ws`). Measures what
//! the server holds per open socket (its VmRSS before and after they open), what idle
//! sockets cost it in CPU, and then, paying R of the orders a second with the gateway's
//! signed notify, how long each delivery frame takes to reach its socket.
//!
//! Invariants: every order, socket, delivery and wait is bounded by a named constant; each
//! socket's task only waits on its socket (no timer), so idle watchers cost the generator
//! nothing; delivery latencies are computed after the run from three timestamps per order
//! (notify written, acknowledged, frame read), so no task races another to record them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::api::{Order, Shop};
use super::cpu::{rss_kib, CpuMark, ServerPid};
use super::http::{loopback_source, Connection};
use super::purchase::{self, Created, Ledger, Payment};
use super::raw_ws::{RawSocket, OPCODE_CLOSE, OPCODE_PING, OPCODE_TEXT};
use super::stats::{lock, ms, Endpoint, SharedStats, Stats};

/// The goal of issue 19: what one open order socket may cost the server, in KiB.
pub const SOCKET_KIB_GOAL: f64 = 16.0;
/// Connections creating the orders.
const CREATE_CONNECTIONS: usize = 32;
/// Upgrades in flight at once (more only fill the listen queue).
const OPENING_CONCURRENCY: usize = 128;
/// Connections paying the orders.
const PAY_CONNECTIONS: usize = 64;
/// Pause before each RSS reading, so the server's allocator and workers are at rest.
const SETTLE: Duration = Duration::from_secs(2);
/// Longest wait for all sockets to open.
const OPEN_WAIT_MAX: Duration = Duration::from_secs(300);
/// Longest wait, after the last notify, for the delivery frames.
const DELIVERY_WAIT_MAX: Duration = Duration::from_secs(30);
/// Poll period while waiting for sockets or frames.
const POLL: Duration = Duration::from_millis(20);
/// Largest latency the histograms hold, in microseconds.
const LATENCY_US_MAX: u64 = 600_000_000;

#[derive(Clone, Copy, Debug)]
pub struct WatchersPlan {
    pub sockets: usize,
    pub deliveries_per_sec: f64,
    pub duration: Duration,
    pub idle: Duration,
}

/// What happened to each order, as microseconds since the run's start plus one (0: not
/// yet), written by whichever task saw it.
struct Board {
    start: Instant,
    sent_us: Vec<AtomicU64>,
    acked_us: Vec<AtomicU64>,
    delivered_us: Vec<AtomicU64>,
    opened: AtomicUsize,
    failed: AtomicUsize,
    pings: AtomicU64,
    /// Sockets the server closed (or that failed) before their order was delivered.
    lost: AtomicU64,
}

impl Board {
    fn new(orders: usize) -> Self {
        let zeros = || (0..orders).map(|_| AtomicU64::new(0)).collect();
        Self {
            start: Instant::now(),
            sent_us: zeros(),
            acked_us: zeros(),
            delivered_us: zeros(),
            opened: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            pings: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }

    fn stamp(&self, slot: &AtomicU64) {
        slot.store(
            self.start.elapsed().as_micros() as u64 + 1,
            Ordering::Release,
        );
    }

    fn delivered(&self) -> usize {
        self.delivered_us
            .iter()
            .filter(|at| at.load(Ordering::Acquire) != 0)
            .count()
    }
}

/// What the scenario hands back to the report and the checks.
pub struct WatchersOutcome {
    pub ledger: Ledger,
    pub checks: Vec<(bool, String)>,
    /// Deliveries planned (orders paid, exactly).
    pub deliveries: u64,
}

pub async fn run_watchers(
    shop: &Arc<Shop>,
    sku: &str,
    plan: WatchersPlan,
    server: &ServerPid,
) -> anyhow::Result<WatchersOutcome> {
    let stats = Stats::shared();
    let orders = create_orders(shop, sku, plan.sockets, &stats).await;
    let mut checks = vec![(
        orders.len() == plan.sockets,
        format!("{} of {} orders created", orders.len(), plan.sockets),
    )];
    let board = Arc::new(Board::new(orders.len()));
    tokio::time::sleep(SETTLE).await;
    let before_kib = server.get().and_then(|pid| rss_kib(Some(pid)));
    let mut sockets = open_sockets(shop, &orders, &board, &stats).await;
    let opened = board.opened.load(Ordering::Acquire);
    checks.push((
        opened == orders.len(),
        format!("{opened} of {} sockets opened", orders.len()),
    ));
    tokio::time::sleep(SETTLE).await;
    let after_kib = server.get().and_then(|pid| rss_kib(Some(pid)));
    report_memory(before_kib, after_kib, opened, &mut checks);
    report_idle(server, &board, plan.idle).await;
    let deliveries = ((plan.deliveries_per_sec * plan.duration.as_secs_f64()).round() as usize)
        .min(orders.len());
    let ledger = if deliveries > 0 {
        let ledger = deliver(shop, &orders[..deliveries], &board, plan, server, &stats).await;
        report_latency(&board, deliveries, &mut checks);
        ledger
    } else {
        Ledger::default()
    };
    let lost = board.lost.load(Ordering::Acquire);
    checks.push((
        lost == 0,
        format!("{lost} sockets closed before their order was delivered"),
    ));
    println!("{}", lock(&stats).table(board.start.elapsed()));
    sockets.abort_all();
    while sockets.join_next().await.is_some() {}
    Ok(WatchersOutcome {
        deliveries: deliveries as u64,
        ledger,
        checks,
    })
}

/// Creates `count` unpaid orders over a few connections, in index order.
async fn create_orders(
    shop: &Arc<Shop>,
    sku: &str,
    count: usize,
    stats: &SharedStats,
) -> Vec<Order> {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for worker in 0..CREATE_CONNECTIONS.min(count) {
        let (shop, next, stats) = (shop.clone(), next.clone(), stats.clone());
        let request = shop.create_order_request(sku, 1);
        workers.spawn(async move {
            let mut connection = Connection::new(shop.addr).from_source(loopback_source(worker));
            let mut created = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::AcqRel);
                if index >= count {
                    return created;
                }
                if let Created::Order(order) =
                    purchase::create(&mut connection, &request, &stats, false).await
                {
                    created.push((index, order));
                }
            }
        });
    }
    let mut orders = Vec::with_capacity(count);
    while let Some(created) = workers.join_next().await {
        orders.extend(created.unwrap_or_default());
    }
    orders.sort_by_key(|(index, _)| *index);
    println!(
        "setup: {} orders created in {:.2} s",
        orders.len(),
        started.elapsed().as_secs_f64()
    );
    orders.into_iter().map(|(_, order)| order).collect()
}

/// Opens one socket per order, `OPENING_CONCURRENCY` upgrades at a time; each socket's task
/// then watches it until the run ends.
async fn open_sockets(
    shop: &Arc<Shop>,
    orders: &[Order],
    board: &Arc<Board>,
    stats: &SharedStats,
) -> JoinSet<()> {
    let started = Instant::now();
    let opening = Arc::new(Semaphore::new(OPENING_CONCURRENCY));
    let mut sockets = JoinSet::new();
    for (index, order) in orders.iter().enumerate() {
        let path = format!(
            "/api/v1/orders/{}/live?token={}",
            order.order_id, order.token
        );
        let (addr, opening, board, stats) =
            (shop.addr, opening.clone(), board.clone(), stats.clone());
        sockets.spawn(async move {
            let permit = opening.acquire_owned().await;
            let Some(socket) = open_one(addr, index, &path, &board, &stats).await else {
                return;
            };
            drop(permit);
            watch(socket, index, &board).await;
        });
    }
    let deadline = Instant::now() + OPEN_WAIT_MAX;
    while board.opened.load(Ordering::Acquire) + board.failed.load(Ordering::Acquire) < orders.len()
        && Instant::now() < deadline
    {
        tokio::time::sleep(POLL).await;
    }
    println!(
        "sockets: {} opened, {} failed, in {:.2} s",
        board.opened.load(Ordering::Acquire),
        board.failed.load(Ordering::Acquire),
        started.elapsed().as_secs_f64()
    );
    sockets
}

/// Upgrades and reads the first frame (the order's current state).
async fn open_one(
    addr: SocketAddr,
    index: usize,
    path: &str,
    board: &Board,
    stats: &SharedStats,
) -> Option<RawSocket> {
    let sent = Instant::now();
    let first = async {
        let mut socket = RawSocket::open(addr, Some(loopback_source(index)), path).await?;
        match socket.next_frame().await?.opcode {
            OPCODE_TEXT => Ok(socket),
            _ => Err(super::stats::ErrorKind::Protocol),
        }
    };
    match tokio::time::timeout(super::ws::CONNECT_TIMEOUT, first).await {
        Ok(Ok(socket)) => {
            lock(stats).record(Endpoint::WsConnect, sent.elapsed());
            board.opened.fetch_add(1, Ordering::AcqRel);
            Some(socket)
        }
        Ok(Err(kind)) => {
            lock(stats).error(Endpoint::WsConnect, kind);
            board.failed.fetch_add(1, Ordering::AcqRel);
            None
        }
        Err(_) => {
            lock(stats).error(Endpoint::WsConnect, super::stats::ErrorKind::Timeout);
            board.failed.fetch_add(1, Ordering::AcqRel);
            None
        }
    }
}

/// Waits on the socket alone: answers pings, stamps the `delivered` frame, ends on close.
async fn watch(mut socket: RawSocket, index: usize, board: &Board) {
    loop {
        let Ok(frame) = socket.next_frame().await else {
            break;
        };
        match frame.opcode {
            OPCODE_TEXT if is_delivered(socket.payload(&frame)) => {
                board.stamp(&board.delivered_us[index]);
            }
            OPCODE_PING => {
                board.pings.fetch_add(1, Ordering::Relaxed);
                if socket.pong(&frame).await.is_err() {
                    break;
                }
            }
            OPCODE_CLOSE => break,
            _ => {}
        }
    }
    if board.delivered_us[index].load(Ordering::Acquire) == 0 {
        board.lost.fetch_add(1, Ordering::AcqRel);
    }
}

fn is_delivered(payload: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Update<'a> {
        status: &'a str,
    }
    serde_json::from_slice::<Update<'_>>(payload).is_ok_and(|update| update.status == "delivered")
}

fn report_memory(
    before_kib: Option<u64>,
    after_kib: Option<u64>,
    opened: usize,
    checks: &mut Vec<(bool, String)>,
) {
    let (Some(before), Some(after)) = (before_kib, after_kib) else {
        println!("memory: the server's RSS is unknown (not spawned)");
        return;
    };
    let per_socket = after.saturating_sub(before) as f64 / opened.max(1) as f64;
    println!(
        "memory: server RSS {:.1} MiB before, {:.1} MiB with {opened} sockets open: \
         {per_socket:.2} KiB per socket",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    checks.push((
        per_socket <= SOCKET_KIB_GOAL,
        format!("{per_socket:.2} KiB of server RSS per open socket (goal <= {SOCKET_KIB_GOAL})"),
    ));
}

/// CPU of both processes while every socket is open and nothing happens.
async fn report_idle(server: &ServerPid, board: &Board, idle: Duration) {
    let pings_before = board.pings.load(Ordering::Acquire);
    let mark = CpuMark::now(server);
    tokio::time::sleep(idle).await;
    let share = mark.share_since(server);
    let cores = super::cpu::cores() as f64;
    let server_ms = share.server.map_or("n/a".to_owned(), |s| {
        format!("{:.1} ms", s * cores * 1000.0)
    });
    println!(
        "idle: {} s with every socket open: {share}; server CPU {server_ms} per second; \
         {} pings answered",
        idle.as_secs(),
        board.pings.load(Ordering::Acquire) - pings_before
    );
}

/// Pays `orders` at the plan's rate over `PAY_CONNECTIONS` connections (worker `i` takes
/// slots `i, i + n, ...`, slot `k` at `k / rate` s), then waits for their frames.
async fn deliver(
    shop: &Arc<Shop>,
    orders: &[Order],
    board: &Arc<Board>,
    plan: WatchersPlan,
    server: &ServerPid,
    stats: &SharedStats,
) -> Ledger {
    let mark = CpuMark::now(server);
    let start = tokio::time::Instant::now() + super::rate::START_DELAY;
    let orders: Arc<[Order]> = orders.into();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let connections = PAY_CONNECTIONS.min(orders.len());
    let mut workers = JoinSet::new();
    for worker in 0..connections {
        let (shop, orders, board, stats, ledger) = (
            shop.clone(),
            orders.clone(),
            board.clone(),
            stats.clone(),
            ledger.clone(),
        );
        let rate = plan.deliveries_per_sec;
        workers.spawn(async move {
            let mut connection = Connection::new(shop.addr).from_source(loopback_source(worker));
            for slot in (worker..orders.len()).step_by(connections) {
                tokio::time::sleep_until(start + Duration::from_secs_f64(slot as f64 / rate)).await;
                let order = &orders[slot];
                board.stamp(&board.sent_us[slot]);
                let payment = purchase::pay(&mut connection, &shop, order, &stats).await;
                let mut ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
                match payment {
                    Payment::Paid => {
                        board.stamp(&board.acked_us[slot]);
                        ledger.paid.push(order.clone());
                    }
                    Payment::Refused => ledger.refused += 1,
                    Payment::InDoubt => ledger.in_doubt.push(order.clone()),
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let deadline = Instant::now() + DELIVERY_WAIT_MAX;
    while board.delivered() < orders.len() && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    println!(
        "deliveries: {} orders paid at {:.0}/s over {PAY_CONNECTIONS} connections: {}",
        orders.len(),
        plan.deliveries_per_sec,
        mark.share_since(server)
    );
    Arc::try_unwrap(ledger)
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .unwrap_or_default()
}

/// Latency from the notify written, and from its acknowledgement, to the frame read.
fn report_latency(board: &Board, deliveries: usize, checks: &mut Vec<(bool, String)>) {
    let histogram = || Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3).expect("bounds");
    let (mut from_sent, mut from_ack) = (histogram(), histogram());
    let mut before_ack = 0;
    for slot in 0..deliveries {
        let at = |v: &[AtomicU64]| v[slot].load(Ordering::Acquire);
        let (sent, acked, delivered) = (
            at(&board.sent_us),
            at(&board.acked_us),
            at(&board.delivered_us),
        );
        if sent == 0 || delivered == 0 {
            continue;
        }
        from_sent.saturating_record(delivered.saturating_sub(sent).max(1));
        if acked != 0 {
            if delivered < acked {
                before_ack += 1;
            }
            from_ack.saturating_record(delivered.saturating_sub(acked).max(1));
        }
    }
    for (name, h) in [
        ("notify written", &from_sent),
        ("notify acknowledged", &from_ack),
    ] {
        println!(
            "push: from the {name} to the delivered frame: p50 {} p99 {} max {} ({} frames)",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
            h.len()
        );
    }
    println!("push: {before_ack} frames arrived before their notify's acknowledgement");
    let arrived = from_sent.len();
    checks.push((
        arrived == deliveries as u64,
        format!("{arrived} of {deliveries} delivery frames reached their sockets"),
    ));
}
