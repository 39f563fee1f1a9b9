//! A flash sale: K keys, M buyers at once. Every buyer opens its connection first; then
//! all go together, each ordering one key. A winner (201) watches its order over the live
//! WebSocket, is paid by the gateway, and waits for the `delivered` frame; a loser gets
//! 409 `sold_out`. With M >= K exactly K must win.
//!
//! With a waiting room (the operator's flash-sale switch, or the server's automatic one)
//! a buyer may get 202 and a ticket instead: it watches the ticket over its WebSocket
//! (positions pushed as the queue advances) until `admitted` with an order, which it then
//! pays as a winner does, or `sold_out`.
//!
//! Buyers hold at most `connections_max` connections at once: the process's open-files
//! limit (shared with the server, which holds the other end) minus a reserve and one
//! socket per possible winner, halved with a waiting room (a queued buyer holds its HTTP
//! connection and its ticket's socket). Buyers beyond it wait for a finished buyer's slot.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use super::api::{parse_admitted, Order, Shop, Ticket};
use super::cpu::{listen_overflows, overflows_since, peak_rss_kib, CpuMark, CpuShare, ServerPid};
use super::http::{loopback_source, Connection, Retry};
use super::progress::Progress;
use super::purchase::{self, Created, Ledger};
use super::stats::{lock, Endpoint, ErrorKind, SharedStats, Stats};
use super::ws::Live;

/// Open files kept free for the runtime, the log, the operator's connections.
pub const FD_RESERVE: usize = 512;
/// Connects in progress at once before the sale. Not a bound that keeps the server's
/// listen queue from overflowing: connections wait there after the client counts them as
/// connected, so only the server's accept rate and backlog decide that.
pub const CONNECT_PARALLEL: usize = 256;
/// Connect attempts per buyer.
pub const CONNECT_ATTEMPTS_MAX: u32 = 3;
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Longest wait for buyers to connect before the sale opens. The server closes a
/// connection that sends no request within 5 s (actix's client request timeout), so the
/// sale opens before the first connections go stale; buyers not connected by then connect
/// in the opening rush, as a real crowd would.
pub const PRECONNECT_WAIT_MAX: Duration = Duration::from_secs(4);
/// Per-request timeout: thousands of orders arrive at the same instant.
pub const FLASH_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the sale may run after it opens.
pub const SALE_TIME_MAX: Duration = Duration::from_secs(300);
const PRECONNECT_POLL: Duration = Duration::from_millis(10);
/// The lookup password buyers set with `--lookup-password`.
pub const FLASH_LOOKUP_PASSWORD: &str = "flash-sale lookup password";
/// Creates sent one at a time after the sale, to time the server's own sold-out answer.
pub const QUIET_PROBES: usize = 1_000;
/// Most frames read from one ticket's socket (positions come once a second).
pub const TICKET_FRAMES_MAX: usize = 1_000;

/// Which waiting room the sale runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RoomMode {
    /// None: the server's automatic room is switched off, every buyer is served at once.
    Off,
    /// The operator puts the product on flash sale: every buyer queues.
    Flash,
    /// The server's own overload detection decides (its default thresholds).
    Auto,
}

#[derive(Clone, Copy, Debug)]
pub struct FlashPlan {
    pub keys: usize,
    pub buyers: usize,
    pub room: RoomMode,
    /// Buyers set a lookup password on their orders.
    pub lookup_password: bool,
}

pub struct FlashOutcome {
    pub plan: FlashPlan,
    pub stats: Stats,
    pub ledger: Ledger,
    pub won: u64,
    pub sold_out: u64,
    pub failed: u64,
    pub unpaid: u64,
    pub connections_max: usize,
    /// Buyers connected when the sale opened, and how long that took.
    pub preconnected: usize,
    pub preconnect: Duration,
    /// From the opening to the last buyer's end.
    pub wall: Duration,
    /// From the opening to the last 201.
    pub last_win_after: Duration,
    /// From the opening to the last `delivered` frame.
    pub last_delivery_after: Duration,
    /// From the opening to the first sold-out answer (all keys taken).
    pub last_key_seen_after: Option<Duration>,
    pub cpu: CpuShare,
    /// Listen-queue overflows on the machine from the opening to the end.
    pub listen_overflows: String,
    pub tickets: TicketCounts,
    /// Peak resident memory of the server and of the generator at the end, KiB.
    pub server_peak_rss_kib: Option<u64>,
    pub generator_peak_rss_kib: Option<u64>,
}

/// What the queued buyers saw.
#[derive(Default, Debug)]
pub struct TicketCounts {
    pub tickets: u64,
    pub admitted: u64,
    pub sold_out: u64,
    pub failed: u64,
    /// `queued` frames received (the first one, then every position push).
    pub position_frames: u64,
    /// Tickets that saw their position fall while they watched.
    pub moved_while_watched: u64,
    /// Position frames that went up (must be 0: a queue only advances).
    pub rose: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BuyerEnd {
    Won,
    SoldOut,
    Failed,
    /// Won an order but the payment got no `success`.
    Unpaid,
}

struct Shared {
    shop: Arc<Shop>,
    stats: SharedStats,
    create_request: Vec<u8>,
    connections: Semaphore,
    connecting: Semaphore,
    /// Buyers done connecting (or given up), before the sale opens.
    ready: AtomicUsize,
    go: watch::Receiver<bool>,
    opened_at: OnceLock<Instant>,
    /// When the first sold-out answer arrived. The server answers sold out only once its
    /// pool was empty, and in this sale no key comes back (every winner pays; a refused
    /// create's keys would, and it counts as an error), so every create sent from then
    /// on was sent after the last key was taken.
    last_key_seen: OnceLock<Instant>,
    last_win_us: AtomicU64,
    last_delivery_us: AtomicU64,
    tickets: [AtomicU64; 7],
}

/// Indexes of `Shared::tickets`, in `TicketCounts` order.
#[derive(Clone, Copy)]
enum TicketCount {
    Tickets,
    Admitted,
    SoldOut,
    Failed,
    PositionFrames,
    Moved,
    Rose,
}

impl Shared {
    fn new(
        shop: &Arc<Shop>,
        create_request: Vec<u8>,
        connections_max: usize,
        go: watch::Receiver<bool>,
    ) -> Self {
        Shared {
            shop: shop.clone(),
            stats: Stats::shared(),
            create_request,
            connections: Semaphore::new(connections_max),
            connecting: Semaphore::new(CONNECT_PARALLEL),
            ready: AtomicUsize::new(0),
            go,
            opened_at: OnceLock::new(),
            last_key_seen: OnceLock::new(),
            last_win_us: AtomicU64::new(0),
            last_delivery_us: AtomicU64::new(0),
            tickets: Default::default(),
        }
    }

    fn count(&self, which: TicketCount, n: u64) {
        self.tickets[which as usize].fetch_add(n, Ordering::Relaxed);
    }

    fn ticket_counts(&self) -> TicketCounts {
        let get = |which: TicketCount| self.tickets[which as usize].load(Ordering::Acquire);
        TicketCounts {
            tickets: get(TicketCount::Tickets),
            admitted: get(TicketCount::Admitted),
            sold_out: get(TicketCount::SoldOut),
            failed: get(TicketCount::Failed),
            position_frames: get(TicketCount::PositionFrames),
            moved_while_watched: get(TicketCount::Moved),
            rose: get(TicketCount::Rose),
        }
    }

    fn mark(&self, slot: &AtomicU64) {
        if let Some(opened) = self.opened_at.get() {
            slot.fetch_max(opened.elapsed().as_micros() as u64, Ordering::AcqRel);
        }
    }
}

/// Open files this process may hold (the soft limit), from `/proc/self/limits`.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

pub fn connection_budget(plan: &FlashPlan) -> anyhow::Result<usize> {
    let limit = open_files_limit().context("reading the open-files limit")?;
    let winners = plan.keys.min(plan.buyers);
    let sockets_per_buyer = if plan.room == RoomMode::Off { 1 } else { 2 };
    let budget = limit.saturating_sub(FD_RESERVE + winners) / sockets_per_buyer;
    anyhow::ensure!(
        budget > 0,
        "open-files limit {limit} leaves no room for buyers"
    );
    Ok(budget.min(plan.buyers))
}

pub async fn run_flash(
    shop: &Arc<Shop>,
    sku: &str,
    plan: FlashPlan,
    server: &ServerPid,
) -> anyhow::Result<FlashOutcome> {
    let connections_max = connection_budget(&plan)?;
    let create_request = match plan.lookup_password {
        true => shop.create_request_with_password(sku, FLASH_LOOKUP_PASSWORD),
        false => shop.create_order_request(sku, 1),
    };
    let (go_sender, go) = watch::channel(false);
    let shared = Arc::new(Shared::new(shop, create_request, connections_max, go));
    let preconnect_started = Instant::now();
    let overflows_at_start = listen_overflows();
    let handles: Vec<JoinHandle<(BuyerEnd, Ledger)>> = (0..plan.buyers)
        .map(|index| tokio::spawn(buyer(shared.clone(), index)))
        .collect();
    wait_preconnected(&shared, connections_max).await;
    let preconnect = preconnect_started.elapsed();
    let preconnected = shared.ready.load(Ordering::Acquire);
    eprintln!(
        "flash: {preconnected} of {} buyers connected in {:.2} s; the sale opens",
        plan.buyers,
        preconnect.as_secs_f64()
    );
    let overflows_while_connecting = overflows_since(overflows_at_start);
    let cpu_mark = CpuMark::now(server);
    let overflows_before = listen_overflows();
    let opened = Instant::now();
    let _ = shared.opened_at.set(opened);
    let progress = Progress::start(
        "flash".into(),
        shared.stats.clone(),
        server.clone(),
        opened + SALE_TIME_MAX,
    );
    go_sender.send_replace(true);
    let ends = join_buyers(handles, opened + SALE_TIME_MAX).await;
    let wall = opened.elapsed();
    let cpu = cpu_mark.share_since(server);
    progress.finish();
    probe_quiet_sold_out(&shared).await;
    let mut outcome = outcome(plan, &shared, ends, connections_max, preconnect, wall, cpu);
    outcome.preconnected = preconnected;
    outcome.last_key_seen_after = shared.last_key_seen.get().map(|seen| *seen - opened);
    outcome.server_peak_rss_kib = server.get().and_then(|pid| peak_rss_kib(Some(pid)));
    outcome.listen_overflows = format!(
        "{overflows_while_connecting} while buyers connected, {} during the sale",
        overflows_since(overflows_before)
    );
    Ok(outcome)
}

/// After the sale: `QUIET_PROBES` creates one after another on one keep-alive connection,
/// each answered sold out; their latency is the server's, with nobody queued in front.
async fn probe_quiet_sold_out(shared: &Shared) {
    let mut connection = Connection::with_timeout(shared.shop.addr, FLASH_REQUEST_TIMEOUT);
    if connection.connect().await.is_err() {
        lock(&shared.stats).error(Endpoint::CreateSoldOutQuiet, ErrorKind::Connect);
        return;
    }
    for _ in 0..QUIET_PROBES {
        let sent = Instant::now();
        let answer = connection.send(&shared.create_request, Retry::Never).await;
        let latency = sent.elapsed();
        let mut stats = lock(&shared.stats);
        match answer {
            Ok(answer) if answer.status == 409 => {
                stats.record(Endpoint::CreateSoldOutQuiet, latency)
            }
            Ok(answer) => stats.error(
                Endpoint::CreateSoldOutQuiet,
                ErrorKind::Status(answer.status),
            ),
            Err(error) => stats.error(Endpoint::CreateSoldOutQuiet, error.kind()),
        }
    }
}

/// The opening storm alone, against any server of the contract's create endpoint: `buyers`
/// connect first (as a sale's buyers do), then all write one create at the same instant and
/// hang up after its answer. Run against the no-work server (`--versus`), it is the floor
/// of a flash sale's create latency on this machine and HTTP stack: what the TCP and HTTP
/// work of that many buyers at once costs when the server does nothing else.
pub async fn run_storm(
    shop: &Arc<Shop>,
    sku: &str,
    buyers: usize,
    server: &ServerPid,
) -> anyhow::Result<StormOutcome> {
    let plan = FlashPlan {
        keys: 0,
        buyers,
        room: RoomMode::Off,
        lookup_password: false,
    };
    let connections_max = connection_budget(&plan)?;
    let (go_sender, go) = watch::channel(false);
    let request = shop.create_order_request(sku, 1);
    let shared = Arc::new(Shared::new(shop, request, connections_max, go));
    let handles: Vec<JoinHandle<bool>> = (0..buyers)
        .map(|index| tokio::spawn(storm_buyer(shared.clone(), index)))
        .collect();
    wait_preconnected(&shared, connections_max).await;
    let preconnected = shared.ready.load(Ordering::Acquire);
    let cpu_mark = CpuMark::now(server);
    let opened = Instant::now();
    go_sender.send_replace(true);
    let mut answered = 0;
    for mut handle in handles {
        let deadline = (opened + SALE_TIME_MAX).into();
        match tokio::time::timeout_at(deadline, &mut handle).await {
            Ok(Ok(true)) => answered += 1,
            Ok(_) => {}
            Err(_) => handle.abort(),
        }
    }
    let wall = opened.elapsed();
    let cpu = cpu_mark.share_since(server);
    let stats = std::mem::take(&mut *lock(&shared.stats));
    Ok(StormOutcome {
        buyers,
        preconnected,
        answered,
        wall,
        cpu,
        stats,
    })
}

/// What a storm measured.
pub struct StormOutcome {
    pub buyers: usize,
    pub preconnected: usize,
    /// Creates answered 201 or 409.
    pub answered: usize,
    /// From the opening to the last answer.
    pub wall: Duration,
    pub cpu: CpuShare,
    pub stats: Stats,
}

impl StormOutcome {
    pub fn print(&self, label: &str) {
        println!(
            "\n== {label}: the opening storm alone ==\n{} buyers ({} connected before the \
             opening), one create each at the same instant: {} answered in {:.2} s; {}",
            self.buyers,
            self.preconnected,
            self.answered,
            self.wall.as_secs_f64(),
            self.cpu
        );
        println!("{}", self.stats.table(self.wall));
    }
}

/// One storm buyer: connects, waits for the opening, sends its create; true when answered
/// 201 or 409.
async fn storm_buyer(shared: Arc<Shared>, index: usize) -> bool {
    let Ok(_permit) = shared.connections.acquire().await else {
        return false;
    };
    let mut connection = Connection::with_timeout(shared.shop.addr, FLASH_REQUEST_TIMEOUT)
        .from_source(loopback_source(index));
    let connected = connect(&shared, &mut connection).await;
    shared.ready.fetch_add(1, Ordering::AcqRel);
    let mut go = shared.go.clone();
    if connected.is_err() || go.wait_for(|open| *open).await.is_err() {
        return false;
    }
    let sent = Instant::now();
    let answer = connection.send(&shared.create_request, Retry::Never).await;
    let mut stats = lock(&shared.stats);
    match answer {
        Ok(answer) if matches!(answer.status, 201 | 409) => {
            stats.record(Endpoint::Create, sent.elapsed());
            true
        }
        Ok(answer) => {
            stats.error(Endpoint::Create, ErrorKind::Status(answer.status));
            false
        }
        Err(error) => {
            stats.error(Endpoint::Create, error.kind());
            false
        }
    }
}

async fn wait_preconnected(shared: &Shared, expected: usize) {
    let deadline = Instant::now() + PRECONNECT_WAIT_MAX;
    while shared.ready.load(Ordering::Acquire) < expected && Instant::now() < deadline {
        tokio::time::sleep(PRECONNECT_POLL).await;
    }
}

async fn join_buyers(
    handles: Vec<JoinHandle<(BuyerEnd, Ledger)>>,
    deadline: Instant,
) -> Vec<(BuyerEnd, Ledger)> {
    let mut ends = Vec::with_capacity(handles.len());
    for mut handle in handles {
        match tokio::time::timeout_at(deadline.into(), &mut handle).await {
            Ok(Ok(end)) => ends.push(end),
            Ok(Err(_)) => ends.push((BuyerEnd::Failed, Ledger::default())),
            Err(_) => {
                handle.abort();
                ends.push((BuyerEnd::Failed, Ledger::default()));
            }
        }
    }
    ends
}

fn outcome(
    plan: FlashPlan,
    shared: &Shared,
    ends: Vec<(BuyerEnd, Ledger)>,
    connections_max: usize,
    preconnect: Duration,
    wall: Duration,
    cpu: CpuShare,
) -> FlashOutcome {
    let mut ledger = Ledger::default();
    let mut counts = [0u64; 4];
    for (end, buyer_ledger) in ends {
        counts[end as usize] += 1;
        ledger.merge(buyer_ledger);
    }
    FlashOutcome {
        plan,
        stats: std::mem::take(&mut *lock(&shared.stats)),
        ledger,
        won: counts[BuyerEnd::Won as usize],
        sold_out: counts[BuyerEnd::SoldOut as usize],
        failed: counts[BuyerEnd::Failed as usize],
        unpaid: counts[BuyerEnd::Unpaid as usize],
        connections_max,
        preconnected: 0,
        preconnect,
        wall,
        last_win_after: Duration::from_micros(shared.last_win_us.load(Ordering::Acquire)),
        last_delivery_after: Duration::from_micros(shared.last_delivery_us.load(Ordering::Acquire)),
        last_key_seen_after: None,
        cpu,
        listen_overflows: String::new(),
        tickets: shared.ticket_counts(),
        server_peak_rss_kib: None,
        generator_peak_rss_kib: peak_rss_kib(None),
    }
}

async fn connect(shared: &Shared, connection: &mut Connection) -> Result<(), ErrorKind> {
    let _permit = shared
        .connecting
        .acquire()
        .await
        .map_err(|_| ErrorKind::Connect)?;
    for attempt in 1..=CONNECT_ATTEMPTS_MAX {
        if attempt > 1 {
            tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
        }
        let started = Instant::now();
        match connection.connect().await {
            Ok(()) => {
                lock(&shared.stats).record(Endpoint::Connect, started.elapsed());
                return Ok(());
            }
            Err(error) => lock(&shared.stats).error(Endpoint::Connect, error.kind()),
        }
    }
    Err(ErrorKind::Connect)
}

async fn buyer(shared: Arc<Shared>, index: usize) -> (BuyerEnd, Ledger) {
    let mut ledger = Ledger::default();
    let Ok(_permit) = shared.connections.acquire().await else {
        return (BuyerEnd::Failed, ledger);
    };
    let source = loopback_source(index);
    let mut connection =
        Connection::with_timeout(shared.shop.addr, FLASH_REQUEST_TIMEOUT).from_source(source);
    let connected = connect(&shared, &mut connection).await;
    shared.ready.fetch_add(1, Ordering::AcqRel);
    if connected.is_err() {
        return (BuyerEnd::Failed, ledger);
    }
    let mut go = shared.go.clone();
    if go.wait_for(|open| *open).await.is_err() {
        return (BuyerEnd::Failed, ledger);
    }
    let started = Instant::now();
    let after_last_key = shared.last_key_seen.get().is_some();
    let created =
        purchase::create(&mut connection, &shared.create_request, &shared.stats, true).await;
    if after_last_key {
        note_after_last_key(&shared, &created, started.elapsed());
    }
    if matches!(created, Created::SoldOut) {
        let _ = shared.last_key_seen.set(Instant::now());
    }
    let order = match created {
        Created::Order(order) => order,
        Created::Queued(ticket) => match wait_ticket(&shared, source, &ticket).await {
            TicketEnd::Admitted(order) => order,
            TicketEnd::SoldOut => return (BuyerEnd::SoldOut, ledger),
            TicketEnd::Failed => return (BuyerEnd::Failed, ledger),
        },
        Created::SoldOut => {
            note_stale(&shared, &connection);
            return (BuyerEnd::SoldOut, ledger);
        }
        Created::Failed(_) => return (BuyerEnd::Failed, ledger),
    };
    shared.mark(&shared.last_win_us);
    let end = watch_and_pay(&shared, &mut connection, source, order, &mut ledger).await;
    note_stale(&shared, &connection);
    if end == BuyerEnd::Won {
        lock(&shared.stats).record(Endpoint::Purchase, started.elapsed());
    }
    (end, ledger)
}

enum TicketEnd {
    Admitted(Order),
    SoldOut,
    Failed,
}

/// Watches a waiting-room ticket until its outcome: positions, then admitted or sold out.
async fn wait_ticket(shared: &Shared, source: IpAddr, ticket: &Ticket) -> TicketEnd {
    shared.count(TicketCount::Tickets, 1);
    let started = Instant::now();
    let mut live =
        match Live::connect(shared.shop.addr, source, &shared.shop.ticket_url(ticket)).await {
            Ok(live) => live,
            Err(kind) => {
                lock(&shared.stats).error(Endpoint::WsConnect, kind);
                shared.count(TicketCount::Failed, 1);
                return TicketEnd::Failed;
            }
        };
    let mut last_position = ticket.position;
    let mut moved = false;
    let mut end = TicketEnd::Failed;
    let mut error = Some(ErrorKind::Protocol);
    for _ in 0..TICKET_FRAMES_MAX {
        let frame = match live.next_json().await {
            Ok(frame) => frame,
            Err(kind) => {
                error = Some(kind);
                break;
            }
        };
        match frame["status"].as_str() {
            Some("queued") => {
                shared.count(TicketCount::PositionFrames, 1);
                let position = frame["position"].as_u64().unwrap_or(u64::MAX);
                if position > last_position {
                    shared.count(TicketCount::Rose, 1);
                }
                moved |= position < last_position;
                last_position = position;
                continue;
            }
            Some("admitted") => {
                error = None;
                end = match parse_admitted(&frame) {
                    Some(order) => TicketEnd::Admitted(order),
                    None => {
                        error = Some(ErrorKind::UnexpectedBody);
                        TicketEnd::Failed
                    }
                };
            }
            Some("sold_out") => {
                error = None;
                end = TicketEnd::SoldOut;
            }
            Some("failed") => {
                // The server's own answer (for example the sale ended): not a protocol error.
                error = None;
                lock(&shared.stats).note("tickets failed by the server", 1);
            }
            _ => error = Some(ErrorKind::UnexpectedBody),
        }
        break;
    }
    live.close().await;
    if moved {
        shared.count(TicketCount::Moved, 1);
    }
    match (&end, error) {
        (_, Some(kind)) => {
            lock(&shared.stats).error(Endpoint::QueueWait, kind);
            shared.count(TicketCount::Failed, 1);
        }
        (TicketEnd::Admitted(_), None) => {
            lock(&shared.stats).record(Endpoint::QueueWait, started.elapsed());
            shared.count(TicketCount::Admitted, 1);
        }
        (TicketEnd::SoldOut, None) => {
            lock(&shared.stats).record(Endpoint::QueueWait, started.elapsed());
            shared.count(TicketCount::SoldOut, 1);
        }
        (TicketEnd::Failed, None) => shared.count(TicketCount::Failed, 1),
    }
    end
}

/// A create sent after the last key was seen taken: sold out is the answer to time; a
/// win would be a key sold after a sold-out answer (counted, for the checks to see).
fn note_after_last_key(shared: &Shared, created: &Created, latency: Duration) {
    let mut stats = lock(&shared.stats);
    match created {
        Created::SoldOut => stats.record(Endpoint::CreateAfterLastKey, latency),
        Created::Order(_) => stats.note("orders won after a sold-out answer", 1),
        Created::Queued(_) => stats.note("tickets after a sold-out answer", 1),
        Created::Failed(kind) => stats.error(Endpoint::CreateAfterLastKey, *kind),
    }
}

fn note_stale(shared: &Shared, connection: &Connection) {
    if connection.stale_replaced > 0 {
        lock(&shared.stats).note("closed by the server before use", connection.stale_replaced);
    }
}

/// Opens the order's live socket, has the gateway pay, and waits for `delivered`.
async fn watch_and_pay(
    shared: &Shared,
    connection: &mut Connection,
    source: IpAddr,
    order: Order,
    ledger: &mut Ledger,
) -> BuyerEnd {
    let mut live = open_live(shared, source, &order).await;
    let notified = Instant::now();
    let (paid, pushed) = tokio::join!(
        purchase::pay_and_file(connection, &shared.shop, order, &shared.stats, ledger),
        async {
            match live.as_mut() {
                Some(live) => Some(
                    live.wait_for("delivered")
                        .await
                        .map(|()| notified.elapsed()),
                ),
                None => None,
            }
        }
    );
    match pushed {
        Some(Ok(latency)) => {
            lock(&shared.stats).record(Endpoint::WsPush, latency);
            shared.mark(&shared.last_delivery_us);
        }
        Some(Err(kind)) => lock(&shared.stats).error(Endpoint::WsPush, kind),
        None => {}
    }
    if let Some(live) = live {
        live.close().await;
    }
    if paid {
        BuyerEnd::Won
    } else {
        BuyerEnd::Unpaid
    }
}

/// Connects the live socket and reads its first frame, which must be the current state.
async fn open_live(shared: &Shared, source: IpAddr, order: &Order) -> Option<Live> {
    let started = Instant::now();
    let mut live = match Live::connect(shared.shop.addr, source, &shared.shop.live_url(order)).await
    {
        Ok(live) => live,
        Err(kind) => {
            lock(&shared.stats).error(Endpoint::WsConnect, kind);
            return None;
        }
    };
    match live.next_status().await {
        Ok(status) if status == "awaiting_payment" => {
            lock(&shared.stats).record(Endpoint::WsConnect, started.elapsed());
            Some(live)
        }
        Ok(_) => {
            lock(&shared.stats).error(Endpoint::WsConnect, ErrorKind::UnexpectedBody);
            Some(live)
        }
        Err(kind) => {
            lock(&shared.stats).error(Endpoint::WsConnect, kind);
            None
        }
    }
}

impl FlashOutcome {
    pub fn print(&self) {
        println!(
            "\n== flash: {} keys, {} buyers{}, waiting room {:?}, at most {} buyers connected at once ==",
            self.plan.keys,
            self.plan.buyers,
            if self.plan.lookup_password { " with lookup passwords" } else { "" },
            self.plan.room,
            self.connections_max
        );
        println!(
            "{} buyers connected in {:.2} s before the opening; sale wall {:.2} s; last win at {:.3} s, last delivery at {:.3} s",
            self.preconnected,
            self.preconnect.as_secs_f64(),
            self.wall.as_secs_f64(),
            self.last_win_after.as_secs_f64(),
            self.last_delivery_after.as_secs_f64(),
        );
        println!(
            "won {}, sold out {}, errors {}, won but unpaid {}",
            self.won, self.sold_out, self.failed, self.unpaid
        );
        print!("{}", self.stats.table(self.wall));
        match self.last_key_seen_after {
            Some(seen) => println!(
                "after last: creates sent after the first sold-out answer ({:.3} s after the opening), answered sold out",
                seen.as_secs_f64()
            ),
            None => println!("after last: no sold-out answer"),
        }
        println!(
            "quiet 409: {QUIET_PROBES} creates one at a time on one connection after the sale"
        );
        println!("cpu share of the machine: {}", self.cpu);
        println!(
            "listen queue overflows (dropped SYNs): {}",
            self.listen_overflows
        );
        let t = &self.tickets;
        println!(
            "waiting room: {} tickets; admitted {}, sold out {}, failed {}; {} position frames, \
             {} tickets saw their position fall while watching, {} positions rose",
            t.tickets,
            t.admitted,
            t.sold_out,
            t.failed,
            t.position_frames,
            t.moved_while_watched,
            t.rose
        );
        let mib = |kib: Option<u64>| {
            kib.map_or("unknown".to_owned(), |k| {
                format!("{:.0} MiB", k as f64 / 1024.0)
            })
        };
        println!(
            "peak resident memory: server {}, generator {}",
            mib(self.server_peak_rss_kib),
            mib(self.generator_peak_rss_kib)
        );
    }
}
