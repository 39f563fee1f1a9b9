//! `resellers`: N resellers each hold their stream open (`raw_ws`) while bulk purchases
//! flow through them at a fixed rate, and one more reseller's stream is a slow reader that
//! reads nothing while its own purchases pile up. Measures how long each purchase's event
//! takes to reach its stream, and checks that every stream saw each of its orders exactly
//! once, in seq order from 1, and that the slow reader was cut off (close 1013 with its
//! cursor) and resumed from that cursor without a gap, without slowing the others.
//!
//! Invariants: every reseller, socket, purchase and wait is bounded by a named constant;
//! each stream's task only waits on its socket and writes only its own log (an uncontended
//! lock); latencies are computed after the run from timestamps (request written, answer
//! read, event read), so no task races another to record them.
//!
//! Design decision: the event is pushed from the commit, before the purchase's answer is
//! written, so the commit lies between the request written and the answer read. "From the
//! request" is therefore an upper bound of commit -> event, and "from the answer" a lower
//! bound (0 when the event came first); both are reported.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::api::Shop;
use super::cpu::{CpuMark, ServerPid};
use super::http::{loopback_source, Connection, Retry};
use super::raw_ws::{RawSocket, OPCODE_CLOSE, OPCODE_PING, OPCODE_TEXT};
use super::stats::{lock, ms, Endpoint, ErrorKind, SharedStats, Stats};

/// The goal of issue 19: a purchase's event reaches its stream within this, p99.
pub const PUSH_P99_GOAL_MS: f64 = 10.0;
/// The close code of a reader cut off for falling behind ("try again later").
pub const CLOSE_FELL_BEHIND: u16 = 1013;
/// Connections creating and funding the resellers.
const SETUP_CONNECTIONS: usize = 16;
/// Upgrades in flight at once.
const OPENING_CONCURRENCY: usize = 128;
/// Connections buying for the resellers with a fast reader.
const BUY_CONNECTIONS: usize = 64;
/// Longest wait for every stream to open.
const OPEN_WAIT_MAX: Duration = Duration::from_secs(120);
/// Longest wait, after the last purchase, for the events (and for a resumed slow reader).
const EVENT_WAIT_MAX: Duration = Duration::from_secs(30);
/// How long the slow reader's backlog may stay silent before the drain stops: the server
/// has nothing more for it and never cut it off.
const DRAIN_SILENCE_MAX: Duration = Duration::from_secs(2);
/// Poll period while waiting.
const POLL: Duration = Duration::from_millis(20);
/// The slow reader's receive buffer: small, so that its backlog stays in the server's
/// queue (where the cut-off rule counts it) rather than in the kernel.
const SLOW_RECEIVE_BUFFER_BYTES: u32 = 4_096;
/// Largest latency the histograms hold, in microseconds.
const LATENCY_US_MAX: u64 = 600_000_000;
/// Each reseller is funded for this many times its share of the purchases, plus some.
const FUNDING_FACTOR: u64 = 2;
const FUNDING_PURCHASES_EXTRA: u64 = 16;

#[derive(Clone, Copy, Debug)]
pub struct ResellersPlan {
    /// Resellers with a stream that reads (the slow reader comes on top).
    pub streams: usize,
    /// Purchases a second, spread round-robin over those resellers.
    pub rate: f64,
    pub quantity: u32,
    pub duration: Duration,
    /// The slow reader's own purchases a second (0: no slow reader).
    pub slow_rate: f64,
    pub slow_quantity: u32,
    /// The control: the extra reseller's stream is read like the others.
    pub slow_reads: bool,
}

impl ResellersPlan {
    fn purchases(&self) -> usize {
        (self.rate * self.duration.as_secs_f64()).round() as usize
    }

    fn slow_purchases(&self) -> usize {
        (self.slow_rate * self.duration.as_secs_f64()).round() as usize
    }

    /// Keys the run buys at most.
    pub fn keys(&self) -> u64 {
        self.purchases() as u64 * u64::from(self.quantity)
            + self.slow_purchases() as u64 * u64::from(self.slow_quantity)
    }
}

/// One reseller as the harness drives it.
struct Reseller {
    api_key: String,
    buy_request: Vec<u8>,
}

/// What one stream read, written only by its own task.
#[derive(Default)]
struct StreamLog {
    /// Each event's order id and when it was read (microseconds since the run's start).
    events: Vec<(String, u64)>,
    last_seq: u64,
    /// Events whose seq was not the last one plus 1 (a gap or a repeat).
    out_of_order: u64,
    /// The close code the server sent (0 when it gave none), or `None` while open.
    closed: Option<u16>,
}

struct Board {
    start: Instant,
    logs: Vec<Mutex<StreamLog>>,
    opened: AtomicUsize,
    failed: AtomicUsize,
}

impl Board {
    fn at_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn log(&self, index: usize) -> std::sync::MutexGuard<'_, StreamLog> {
        self.logs[index].lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One purchase answered 201.
struct Bought {
    reseller: usize,
    order_id: String,
    sent_us: u64,
    answered_us: u64,
}

/// What the buyers hand back.
#[derive(Default)]
struct Purchases {
    bought: Vec<Bought>,
    cards: Vec<String>,
    failed: u64,
}

/// What the scenario hands back to the report and the checks.
pub struct ResellersOutcome {
    pub checks: Vec<(bool, String)>,
    /// Keys bought (and delivered in the 201s).
    pub keys: u64,
}

pub async fn run_resellers(
    shop: &Arc<Shop>,
    sku: &str,
    plan: ResellersPlan,
    price_cents: u64,
    server: &ServerPid,
) -> anyhow::Result<ResellersOutcome> {
    let stats = Stats::shared();
    let slow = plan.slow_rate > 0.0;
    let resellers = Arc::new(create_resellers(shop, sku, plan, price_cents, slow).await?);
    let board = Arc::new(Board {
        start: Instant::now(),
        logs: (0..resellers.len()).map(|_| Mutex::default()).collect(),
        opened: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
    });
    let mut checks = Vec::new();
    let reading = plan.streams + usize::from(slow && plan.slow_reads);
    let mut streams = open_streams(shop.addr, &resellers[..reading], &board, &stats).await;
    let opened = board.opened.load(Ordering::Acquire);
    checks.push((
        opened == reading,
        format!("{opened} of {reading} reseller streams opened"),
    ));
    let slow_socket = if slow && !plan.slow_reads {
        Some(open_slow(shop.addr, &resellers[plan.streams], plan.streams).await?)
    } else {
        None
    };
    let mark = CpuMark::now(server);
    let purchases = buy(shop, &resellers, plan, &board, &stats).await;
    let expected = purchases
        .bought
        .iter()
        .filter(|b| b.reseller < plan.streams)
        .count();
    let deadline = Instant::now() + EVENT_WAIT_MAX;
    while fast_events(&board, plan.streams) < expected && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    println!(
        "purchases: {} at {:.0}/s x {} keys over {BUY_CONNECTIONS} connections, {} failed; \
         the extra reseller's ({}) {} at {:.0}/s x {} keys: {}",
        expected,
        plan.rate,
        plan.quantity,
        purchases.failed,
        match (slow, plan.slow_reads) {
            (false, _) => "none",
            (true, true) => "read",
            (true, false) => "stalled",
        },
        purchases.bought.len() - expected,
        plan.slow_rate,
        plan.slow_quantity,
        mark.share_since(server)
    );
    report_latency(&board, &purchases, plan.streams);
    checks.push((
        purchases.failed == 0,
        format!(
            "{} purchases failed (anything but a 201 with its keys)",
            purchases.failed
        ),
    ));
    check_streams(&board, &purchases, plan.streams, &mut checks);
    let unique: HashSet<&str> = purchases.cards.iter().map(String::as_str).collect();
    checks.push((
        unique.len() == purchases.cards.len(),
        format!(
            "{} keys bought, {} distinct: no key sold twice",
            purchases.cards.len(),
            unique.len()
        ),
    ));
    if let Some(socket) = slow_socket {
        let bought = purchases
            .bought
            .iter()
            .filter(|b| b.reseller == plan.streams)
            .count() as u64;
        let resumed = resume_slow(
            shop.addr,
            socket,
            &resellers[plan.streams],
            plan.streams,
            bought,
        )
        .await;
        checks.extend(resumed);
    }
    println!("{}", lock(&stats).table(board.start.elapsed()));
    streams.abort_all();
    while streams.join_next().await.is_some() {}
    Ok(ResellersOutcome {
        checks,
        keys: purchases.cards.len() as u64,
    })
}

/// Events read so far by the first `streams` (the reading) streams.
fn fast_events(board: &Board, streams: usize) -> usize {
    (0..streams)
        .map(|index| board.log(index).events.len())
        .sum()
}

/// Creates and funds `plan.streams` resellers (and the slow one last).
async fn create_resellers(
    shop: &Arc<Shop>,
    sku: &str,
    plan: ResellersPlan,
    price_cents: u64,
    slow: bool,
) -> anyhow::Result<Vec<Reseller>> {
    let started = Instant::now();
    let count = plan.streams + usize::from(slow);
    let share = plan.purchases().div_ceil(plan.streams) as u64;
    let fast_cents =
        price_cents * u64::from(plan.quantity) * (share * FUNDING_FACTOR + FUNDING_PURCHASES_EXTRA);
    let slow_cents = price_cents
        * u64::from(plan.slow_quantity)
        * (plan.slow_purchases() as u64 * FUNDING_FACTOR + FUNDING_PURCHASES_EXTRA);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..SETUP_CONNECTIONS.min(count) {
        let (shop, next, sku) = (shop.clone(), next.clone(), sku.to_owned());
        workers.spawn(async move {
            let mut connection = shop.operator_connection();
            let mut created = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::AcqRel);
                if index >= count {
                    return Ok::<_, anyhow::Error>(created);
                }
                let (cents, quantity) = if index < plan.streams {
                    (fast_cents, plan.quantity)
                } else {
                    (slow_cents, plan.slow_quantity)
                };
                let name = format!("{sku}-r{index}");
                let (_, api_key) = shop.create_reseller(&mut connection, &name, cents).await?;
                let buy_request = shop.reseller_buy_request(&api_key, &sku, quantity);
                created.push((
                    index,
                    Reseller {
                        api_key,
                        buy_request,
                    },
                ));
            }
        });
    }
    let mut resellers = Vec::with_capacity(count);
    while let Some(created) = workers.join_next().await {
        resellers.extend(created??);
    }
    resellers.sort_by_key(|(index, _)| *index);
    println!(
        "setup: {count} resellers created and funded in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(resellers.into_iter().map(|(_, r)| r).collect())
}

fn stream_path(cursor: u64) -> String {
    format!("/api/v1/reseller/stream?cursor={cursor}")
}

fn authorization(reseller: &Reseller) -> String {
    format!("Authorization: Bearer {}", reseller.api_key)
}

/// Opens one reading stream per reseller, `OPENING_CONCURRENCY` upgrades at a time.
async fn open_streams(
    addr: SocketAddr,
    resellers: &[Reseller],
    board: &Arc<Board>,
    stats: &SharedStats,
) -> JoinSet<()> {
    let started = Instant::now();
    let opening = Arc::new(Semaphore::new(OPENING_CONCURRENCY));
    let mut streams = JoinSet::new();
    for (index, reseller) in resellers.iter().enumerate() {
        let header = authorization(reseller);
        let (opening, board, stats) = (opening.clone(), board.clone(), stats.clone());
        streams.spawn(async move {
            let permit = opening.acquire_owned().await;
            let sent = Instant::now();
            let opened = async {
                let stream = super::http::open_stream(addr, Some(loopback_source(index)))
                    .await
                    .map_err(|_| ErrorKind::Connect)?;
                RawSocket::upgrade(stream, addr, &stream_path(0), &[&header]).await
            };
            let socket = match tokio::time::timeout(super::ws::CONNECT_TIMEOUT, opened).await {
                Ok(Ok(socket)) => socket,
                Ok(Err(kind)) => {
                    lock(&stats).error(Endpoint::WsConnect, kind);
                    board.failed.fetch_add(1, Ordering::AcqRel);
                    return;
                }
                Err(_) => {
                    lock(&stats).error(Endpoint::WsConnect, ErrorKind::Timeout);
                    board.failed.fetch_add(1, Ordering::AcqRel);
                    return;
                }
            };
            lock(&stats).record(Endpoint::WsConnect, sent.elapsed());
            board.opened.fetch_add(1, Ordering::AcqRel);
            drop(permit);
            read_stream(socket, index, &board).await;
        });
    }
    let deadline = Instant::now() + OPEN_WAIT_MAX;
    while board.opened.load(Ordering::Acquire) + board.failed.load(Ordering::Acquire)
        < resellers.len()
        && Instant::now() < deadline
    {
        tokio::time::sleep(POLL).await;
    }
    println!(
        "streams: {} opened, {} failed, in {:.2} s",
        board.opened.load(Ordering::Acquire),
        board.failed.load(Ordering::Acquire),
        started.elapsed().as_secs_f64()
    );
    streams
}

/// Reads a stream until it closes: each event's seq checked against the last, its order id
/// and arrival time logged; pings answered.
async fn read_stream(mut socket: RawSocket, index: usize, board: &Board) {
    let closed = loop {
        let record = |payload: &[u8]| {
            let at_us = board.at_us();
            record_event(&mut board.log(index), payload, at_us);
        };
        match read_one(&mut socket, record).await {
            Ok(None) => {}
            Ok(Some(code)) => break code,
            Err(_) => break 0,
        }
    };
    board.log(index).closed = Some(closed);
}

fn record_event(log: &mut StreamLog, payload: &[u8], at_us: u64) {
    #[derive(serde::Deserialize)]
    struct Event<'a> {
        seq: u64,
        #[serde(borrow)]
        order_id: std::borrow::Cow<'a, str>,
    }
    let Ok(event) = serde_json::from_slice::<Event<'_>>(payload) else {
        log.out_of_order += 1;
        return;
    };
    if event.seq != log.last_seq + 1 {
        log.out_of_order += 1;
    }
    log.last_seq = log.last_seq.max(event.seq);
    log.events.push((event.order_id.into_owned(), at_us));
}

/// The code of a close frame's payload; 0 when it gave none.
fn close_code(payload: &[u8]) -> u16 {
    match payload {
        [high, low, ..] => u16::from_be_bytes([*high, *low]),
        _ => 0,
    }
}

/// The slow reader's stream: a receive buffer of `SLOW_RECEIVE_BUFFER_BYTES`, not read.
async fn open_slow(
    addr: SocketAddr,
    reseller: &Reseller,
    index: usize,
) -> anyhow::Result<RawSocket> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(SLOW_RECEIVE_BUFFER_BYTES)?;
    socket.bind(SocketAddr::new(loopback_source(index), 0))?;
    let stream = socket.connect(addr).await?;
    RawSocket::upgrade(stream, addr, &stream_path(0), &[&authorization(reseller)])
        .await
        .map_err(|kind| anyhow::anyhow!("the slow reader's stream: {kind}"))
}

/// Buys at the plan's rates: slot `k` of the readers' purchases at `k / rate` s for
/// reseller `k mod streams` (connection `i` takes slots `i, i + n, ...`); the slow
/// reader's purchases on one more connection of their own.
async fn buy(
    shop: &Arc<Shop>,
    resellers: &Arc<Vec<Reseller>>,
    plan: ResellersPlan,
    board: &Arc<Board>,
    stats: &SharedStats,
) -> Purchases {
    let buying = Buying {
        shop: shop.clone(),
        resellers: resellers.clone(),
        board: board.clone(),
        stats: stats.clone(),
        start: tokio::time::Instant::now() + super::rate::START_DELAY,
    };
    let purchases = plan.purchases();
    let connections = BUY_CONNECTIONS.min(purchases.max(1));
    let mut workers = JoinSet::new();
    for worker in 0..connections {
        let slots: Vec<(usize, usize)> = (worker..purchases)
            .step_by(connections)
            .map(|slot| (slot, slot % plan.streams))
            .collect();
        workers.spawn(buy_slots(buying.clone(), worker, plan.rate, slots));
    }
    if plan.slow_rate > 0.0 {
        let slots = (0..plan.slow_purchases())
            .map(|slot| (slot, plan.streams))
            .collect();
        workers.spawn(buy_slots(buying, connections, plan.slow_rate, slots));
    }
    let mut all = Purchases::default();
    while let Some(done) = workers.join_next().await {
        if let Ok(done) = done {
            all.bought.extend(done.bought);
            all.cards.extend(done.cards);
            all.failed += done.failed;
        }
    }
    all
}

/// What every buying connection shares.
#[derive(Clone)]
struct Buying {
    shop: Arc<Shop>,
    resellers: Arc<Vec<Reseller>>,
    board: Arc<Board>,
    stats: SharedStats,
    /// Slot 0's instant.
    start: tokio::time::Instant,
}

/// One connection's purchases: each `(slot, reseller)` at `slot / rate` s after the start.
async fn buy_slots(
    buying: Buying,
    worker: usize,
    rate: f64,
    slots: Vec<(usize, usize)>,
) -> Purchases {
    let Buying {
        shop,
        resellers,
        board,
        stats,
        start,
    } = buying;
    #[derive(serde::Deserialize)]
    struct Answer {
        order_id: String,
        cards: Vec<String>,
    }
    let mut connection = Connection::new(shop.addr).from_source(loopback_source(worker));
    let mut done = Purchases::default();
    for (slot, reseller) in slots {
        tokio::time::sleep_until(start + Duration::from_secs_f64(slot as f64 / rate)).await;
        let sent = Instant::now();
        let sent_us = board.at_us();
        let answer = connection
            .send(&resellers[reseller].buy_request, Retry::Never)
            .await;
        let answered_us = board.at_us();
        match answer {
            Ok(answer) if answer.status == 201 => {
                match serde_json::from_slice::<Answer>(answer.body) {
                    Ok(answer) => {
                        lock(&stats).record(Endpoint::ResellerBuy, sent.elapsed());
                        done.cards.extend(answer.cards);
                        done.bought.push(Bought {
                            reseller,
                            order_id: answer.order_id,
                            sent_us,
                            answered_us,
                        });
                    }
                    Err(_) => {
                        lock(&stats).error(Endpoint::ResellerBuy, ErrorKind::UnexpectedBody);
                        done.failed += 1;
                    }
                }
            }
            Ok(answer) => {
                lock(&stats).error(Endpoint::ResellerBuy, ErrorKind::Status(answer.status));
                done.failed += 1;
            }
            Err(error) => {
                lock(&stats).error(Endpoint::ResellerBuy, error.kind());
                done.failed += 1;
            }
        }
    }
    done
}

/// Each reading stream's events matched to the purchases: request -> event and
/// answer -> event.
fn report_latency(board: &Board, purchases: &Purchases, streams: usize) {
    let mut arrived: HashMap<&str, u64> = HashMap::new();
    let logs: Vec<_> = (0..streams).map(|index| board.log(index)).collect();
    for log in &logs {
        for (order_id, at_us) in &log.events {
            arrived.insert(order_id.as_str(), *at_us);
        }
    }
    let histogram = || Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3).expect("bounds");
    let (mut from_request, mut from_answer) = (histogram(), histogram());
    let mut before_answer = 0;
    for bought in purchases.bought.iter().filter(|b| b.reseller < streams) {
        let Some(&at_us) = arrived.get(bought.order_id.as_str()) else {
            continue;
        };
        from_request.saturating_record(at_us.saturating_sub(bought.sent_us).max(1));
        if at_us < bought.answered_us {
            before_answer += 1;
        }
        from_answer.saturating_record(at_us.saturating_sub(bought.answered_us).max(1));
    }
    for (name, h) in [("request", &from_request), ("answer", &from_answer)] {
        println!(
            "push: from the purchase's {name} to its stream event: p50 {} p99 {} max {} \
             ({} events)",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
            h.len()
        );
    }
    println!("push: {before_answer} events arrived before their purchase's answer");
    let p99_ms = from_request.value_at_quantile(0.99) as f64 / 1000.0;
    println!(
        "push: p99 {p99_ms:.2} ms from the request, an upper bound of commit -> event \
         (goal {PUSH_P99_GOAL_MS} ms)"
    );
}

/// Every purchase's event on its own reseller's stream, once, in seq order; no stream
/// closed.
fn check_streams(
    board: &Board,
    purchases: &Purchases,
    streams: usize,
    checks: &mut Vec<(bool, String)>,
) {
    let mut expected: Vec<HashSet<&str>> = vec![HashSet::new(); streams];
    for bought in purchases.bought.iter().filter(|b| b.reseller < streams) {
        expected[bought.reseller].insert(bought.order_id.as_str());
    }
    let (mut missing, mut foreign, mut repeated, mut out_of_order, mut closed) = (0, 0, 0, 0, 0);
    for (index, expected) in expected.iter().enumerate() {
        let log = board.log(index);
        let mut seen = HashSet::new();
        for (order_id, _) in &log.events {
            if !expected.contains(order_id.as_str()) {
                foreign += 1;
            } else if !seen.insert(order_id.as_str()) {
                repeated += 1;
            }
        }
        missing += expected.len() - seen.len();
        out_of_order += log.out_of_order;
        closed += usize::from(log.closed.is_some());
    }
    let events: usize = expected.iter().map(HashSet::len).sum();
    checks.push((
        missing == 0 && foreign == 0 && repeated == 0 && out_of_order == 0,
        format!(
            "{events} purchases on {streams} streams: {missing} events missing, {foreign} \
             not this reseller's, {repeated} repeated, {out_of_order} out of seq order"
        ),
    ));
    checks.push((
        closed == 0,
        format!("{closed} reading streams closed during the run"),
    ));
}

/// Reads the slow reader's backlog to its close, then reconnects from its cursor and reads
/// until it has an event for each of its `bought` purchases.
async fn resume_slow(
    addr: SocketAddr,
    mut socket: RawSocket,
    reseller: &Reseller,
    index: usize,
    bought: u64,
) -> Vec<(bool, String)> {
    let mut log = StreamLog::default();
    let drained = tokio::time::timeout(EVENT_WAIT_MAX, drain(&mut socket, &mut log)).await;
    let cut_at = log.last_seq;
    let closed = match log.closed {
        Some(code) => format!("close {code}"),
        None => "no close".to_owned(),
    };
    let mut checks = vec![(
        drained.is_ok() && log.closed == Some(CLOSE_FELL_BEHIND) && cut_at < bought,
        format!(
            "the slow reader was cut off with {closed} (want {CLOSE_FELL_BEHIND}) after \
             {cut_at} of its {bought} events"
        ),
    )];
    let resumed = async {
        let stream = super::http::open_stream(addr, Some(loopback_source(index)))
            .await
            .map_err(|_| ErrorKind::Connect)?;
        let path = stream_path(cut_at);
        let mut socket =
            RawSocket::upgrade(stream, addr, &path, &[&authorization(reseller)]).await?;
        log.closed = None;
        while log.last_seq < bought && log.closed.is_none() {
            read_into(&mut socket, &mut log).await?;
        }
        Ok::<_, ErrorKind>(())
    };
    let outcome = tokio::time::timeout(EVENT_WAIT_MAX, resumed).await;
    let distinct: HashSet<&str> = log.events.iter().map(|(id, _)| id.as_str()).collect();
    checks.push((
        matches!(outcome, Ok(Ok(())))
            && log.out_of_order == 0
            && log.last_seq == bought
            && distinct.len() as u64 == bought,
        format!(
            "the slow reader resumed from cursor {cut_at} and read to seq {} of {bought}: \
             {} distinct orders, {} out of seq order",
            log.last_seq,
            distinct.len(),
            log.out_of_order
        ),
    ));
    checks
}

/// Reads frames until the socket closes, or stays silent for `DRAIN_SILENCE_MAX` (a reader
/// that was never cut off).
async fn drain(socket: &mut RawSocket, log: &mut StreamLog) {
    while log.closed.is_none() {
        match tokio::time::timeout(DRAIN_SILENCE_MAX, read_into(socket, log)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => log.closed = Some(0),
            Err(_) => return,
        }
    }
}

/// Reads one frame into `log` (untimed); a close frame sets `log.closed`.
async fn read_into(socket: &mut RawSocket, log: &mut StreamLog) -> Result<(), ErrorKind> {
    if let Some(code) = read_one(socket, |payload| record_event(log, payload, 0)).await? {
        log.closed = Some(code);
    }
    Ok(())
}

/// Reads one frame: hands a text frame's payload to `event`, answers a ping; the close
/// code (0 when none was given) once the server closed.
async fn read_one(
    socket: &mut RawSocket,
    event: impl FnOnce(&[u8]),
) -> Result<Option<u16>, ErrorKind> {
    let frame = socket.next_frame().await?;
    match frame.opcode {
        OPCODE_TEXT => event(socket.payload(&frame)),
        OPCODE_PING => socket.pong(&frame).await?,
        OPCODE_CLOSE => return Ok(Some(close_code(socket.payload(&frame)))),
        _ => {}
    }
    Ok(None)
}
