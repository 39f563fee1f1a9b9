//! The `failover` scenario: three nodes on loopback under a steady load of buyers; the
//! leader is killed with `kill -9` again and again (and restarted after a pause), and each
//! time the harness measures how long writes take to resume on the survivors.
//!
//! Buyers create orders with an `Idempotency-Key` and pay them, each step retried on the
//! next node after a 503, a 409 `request_in_progress` or a lost connection (as a client
//! behind a load balancer would).
//! After the kills: every acknowledged create is on every node, every acknowledged payment
//! is delivered there, each key is one order, stock is conserved on every node, and each
//! node's `panshi audit` is clean and `panshi audit --compare` finds one history.
//!
//! Resumption is measured by a probe: from the instant of the kill it sends a keyed create
//! to the survivors in turn every `PROBE_PAUSE`, and the first 201 ends the measurement.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use parking_lot::Mutex;

use super::api::{parse_created, parse_lookup, Credentials, Order, Shop};
use super::check::Checks;
use super::cli::{secs, FailoverArgs};
use super::cpu::{load_average, ServerPid};
use super::http::{Connection, Retry};
use super::server::{free_port, SpawnedServer};

/// Voters the scenario runs.
pub const NODES: u64 = 3;
/// Shared by the spawned nodes.
const SECRET: &str = "panshi-load-failover-secret";
const SEALING_KEY: &str = "10adf00d00000000000000000000000000000000000000000000000000000001";
const SKU: &str = "failover";
/// One request's timeout (a write passed on to the leader waits for it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a buyer retries one step before the purchase counts as failed.
pub const RETRY_WINDOW: Duration = Duration::from_secs(30);
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// The probe's pause between attempts, and its timeout per attempt.
const PROBE_PAUSE: Duration = Duration::from_millis(10);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for writes to resume, for a leader, or for a node to catch up.
pub const SETTLE_MAX: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);
/// The contract's target: writes resume within this long of a kill.
pub const RESUME_TARGET: Duration = Duration::from_secs(2);
/// Longest a paid order may take to read `delivered` on a node.
const DELIVERY_WAIT_MAX: Duration = Duration::from_secs(30);

/// What the buyers and probes had acknowledged.
#[derive(Default)]
struct Ledger {
    /// Acknowledged creates by key.
    created: BTreeMap<String, Order>,
    /// Keys whose payment was acknowledged.
    paid: HashSet<String>,
    /// Purchases that failed (given up or refused), with why.
    failed: Vec<String>,
    /// Keys answered with more than one order id.
    split_keys: Vec<String>,
    /// Writes retried after a 503 or a lost connection.
    retries: u64,
}

impl Ledger {
    fn created(&mut self, key: &str, order: Order) {
        if let Some(first) = self.created.get(key) {
            if first.order_id != order.order_id {
                self.split_keys.push(key.to_owned());
            }
            return;
        }
        self.created.insert(key.to_owned(), order);
    }
}

struct Nodes {
    servers: Vec<SpawnedServer>,
    shops: Vec<Arc<Shop>>,
}

/// Runs the scenario against `binary`; `Ok(false)` when a check failed.
pub async fn run(
    binary: &Path,
    credentials: Credentials,
    plan: &FailoverArgs,
) -> anyhow::Result<bool> {
    let mut nodes = start_nodes(binary, &credentials).await?;
    // A leader may still move while the nodes come up (a slow start): the set-up retries
    // until one leader takes it.
    let started = Instant::now();
    let leader = loop {
        let leader = wait_leader(&nodes.shops, &[]).await?;
        match nodes.shops[leader].create_product(SKU, 1_000).await {
            Ok(()) => break leader,
            // An earlier try whose answer was lost (503 not_committed) did commit.
            Err(error) if format!("{error:#}").contains("sku_exists") => break leader,
            Err(error) if started.elapsed() < SETTLE_MAX => {
                println!("set-up: {error:#}; again");
                tokio::time::sleep(POLL).await;
            }
            Err(error) => return Err(error),
        }
    };
    let shop = &nodes.shops[leader];
    // Keys already imported by a try whose answer was lost come back as duplicates.
    let started = Instant::now();
    while let Err(error) = shop.import_keys_again(SKU, 0, plan.keys).await {
        anyhow::ensure!(started.elapsed() < SETTLE_MAX, "importing keys: {error:#}");
        println!("set-up: {error:#}; again");
        tokio::time::sleep(POLL).await;
    }
    println!(
        "cluster: {NODES} nodes, node {} leads; {} keys; {} buyers at {} purchases/s",
        leader + 1,
        plan.keys,
        plan.buyers,
        plan.rate
    );
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let buyers = start_buyers(&nodes.shops, plan, &ledger, &stop);
    tokio::time::sleep(secs(plan.settle_secs)).await;
    let mut resumes = Vec::new();
    for round in 0..plan.kills {
        let resumed = kill_round(&mut nodes, round, plan, &ledger).await?;
        resumes.push(resumed);
    }
    stop.store(true, Ordering::Release);
    for buyer in buyers {
        buyer.await?;
    }
    let ledger = Arc::try_unwrap(ledger)
        .map_err(|_| anyhow::anyhow!("buyers still hold the ledger"))?
        .into_inner();
    let mut checks = Checks::default();
    report_resumes(&resumes, &mut checks);
    check_history(&nodes.shops, &ledger, plan.keys, &mut checks).await;
    finish(&mut nodes, binary, &mut checks).await;
    println!("machine: load average {} at end", load_average());
    checks.print();
    Ok(checks.passed())
}

/// Picks three free ports (below the ephemeral range: a killed node's port must still be
/// free when it is relaunched), then starts a node on each with the others as peers.
async fn start_nodes(binary: &Path, credentials: &Credentials) -> anyhow::Result<Nodes> {
    let addrs: Vec<SocketAddr> = (0..NODES)
        .map(|_| {
            let port = free_port().context("no free port below the ephemeral range")?;
            Ok(SocketAddr::from(([127, 0, 0, 1], port)))
        })
        .collect::<anyhow::Result<_>>()?;
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| format!("{}=http://{addr}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Nodes {
        servers: Vec::new(),
        shops: Vec::new(),
    };
    for (i, addr) in addrs.iter().enumerate() {
        let env = vec![
            ("PANSHI_CLUSTER__NODE_ID".to_owned(), (i + 1).to_string()),
            ("PANSHI_CLUSTER__PEERS".to_owned(), peers.clone()),
            ("PANSHI_CLUSTER__SECRET".to_owned(), SECRET.to_owned()),
            (
                "PANSHI_RESELLERS__SEALING_KEY".to_owned(),
                SEALING_KEY.to_owned(),
            ),
            (
                "PANSHI_OVERLOAD__INFLIGHT_HIGH".to_owned(),
                u32::MAX.to_string(),
            ),
            (
                "PANSHI_OVERLOAD__LATENCY_HIGH_MS".to_owned(),
                u32::MAX.to_string(),
            ),
        ];
        let server = SpawnedServer::start_at(
            binary,
            credentials.clone(),
            ServerPid::default(),
            env,
            *addr,
        )
        .await
        .with_context(|| format!("starting node {}", i + 1))?;
        println!(
            "node {}: {addr}, data {}, log {}",
            i + 1,
            server.data_dir.display(),
            server.log_path.display()
        );
        nodes.servers.push(server);
        nodes
            .shops
            .push(Arc::new(Shop::new(*addr, credentials.clone())));
    }
    Ok(nodes)
}

/// Waits until exactly one node (not in `down`) answers `/leaderz` with 200.
async fn wait_leader(shops: &[Arc<Shop>], down: &[usize]) -> anyhow::Result<usize> {
    let started = Instant::now();
    while started.elapsed() < SETTLE_MAX {
        let mut leading = Vec::new();
        for (i, shop) in shops.iter().enumerate() {
            if !down.contains(&i) && shop.leads().await {
                leading.push(i);
            }
        }
        if let [leader] = leading[..] {
            return Ok(leader);
        }
        tokio::time::sleep(POLL).await;
    }
    anyhow::bail!("no single leader within {SETTLE_MAX:?}")
}

/// One kill: the leader dies, the probe times the resumption, the node returns after
/// `plan.down_secs` and catches up.
async fn kill_round(
    nodes: &mut Nodes,
    round: u32,
    plan: &FailoverArgs,
    ledger: &Mutex<Ledger>,
) -> anyhow::Result<Duration> {
    let leader = wait_leader(&nodes.shops, &[]).await?;
    let killed_at = Instant::now();
    nodes.servers[leader].kill9().await?;
    let survivors: Vec<Arc<Shop>> = (0..nodes.shops.len())
        .filter(|&i| i != leader)
        .map(|i| nodes.shops[i].clone())
        .collect();
    let resumed = probe(&survivors, round, killed_at, ledger).await?;
    println!(
        "kill {:>2}: node {} killed, writes resumed after {} ms (load average {})",
        round + 1,
        leader + 1,
        resumed.as_millis(),
        load_average()
    );
    tokio::time::sleep(secs(plan.down_secs)).await;
    nodes.servers[leader].restart().await?;
    let next = wait_leader(&nodes.shops, &[]).await?;
    let commit = index(&nodes.shops[next], "commit_index").await?;
    wait_applied(&nodes.shops[leader], commit).await?;
    tokio::time::sleep(secs(plan.settle_secs)).await;
    Ok(resumed)
}

async fn index(shop: &Shop, field: &str) -> anyhow::Result<u64> {
    let status = shop.cluster_status().await?;
    status[field]
        .as_u64()
        .with_context(|| format!("{field} in {status}"))
}

async fn wait_applied(shop: &Shop, target: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < SETTLE_MAX {
        if index(shop, "applied_index")
            .await
            .is_ok_and(|i| i >= target)
        {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
    anyhow::bail!("a restarted node did not catch up with index {target}")
}

/// Keyed creates on the survivors in turn until one is acknowledged: the time since
/// `killed_at`.
async fn probe(
    survivors: &[Arc<Shop>],
    round: u32,
    killed_at: Instant,
    ledger: &Mutex<Ledger>,
) -> anyhow::Result<Duration> {
    let mut connections: Vec<Connection> = survivors
        .iter()
        .map(|shop| Connection::with_timeout(shop.addr, PROBE_TIMEOUT))
        .collect();
    let key = format!("probe-{round}");
    let mut attempt = 0;
    while killed_at.elapsed() < SETTLE_MAX {
        let n = attempt % survivors.len();
        attempt += 1;
        let request = survivors[n].create_keyed_request(SKU, &key);
        if let Ok(answer) = connections[n].send(&request, Retry::Never).await {
            if answer.status == 201 {
                let resumed = killed_at.elapsed();
                let order = parse_created(answer.body, 1).context("the probe's order")?;
                ledger.lock().created(&key, order);
                return Ok(resumed);
            }
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
    anyhow::bail!(
        "writes did not resume within {SETTLE_MAX:?} of kill {}",
        round + 1
    )
}

fn start_buyers(
    shops: &[Arc<Shop>],
    plan: &FailoverArgs,
    ledger: &Arc<Mutex<Ledger>>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let interval = Duration::from_secs_f64(plan.buyers as f64 / plan.rate);
    (0..plan.buyers)
        .map(|number| {
            let buyer = Buyer {
                number,
                shops: shops.to_vec(),
                connections: shops
                    .iter()
                    .map(|s| Connection::with_timeout(s.addr, REQUEST_TIMEOUT))
                    .collect(),
                next: number,
                ledger: ledger.clone(),
            };
            tokio::spawn(buyer.run(interval, stop.clone()))
        })
        .collect()
}

struct Buyer {
    number: usize,
    shops: Vec<Arc<Shop>>,
    connections: Vec<Connection>,
    /// The node the next request goes to (it moves on after each retry).
    next: usize,
    ledger: Arc<Mutex<Ledger>>,
}

/// How one step ended.
enum Step {
    Done(Vec<u8>),
    Failed(String),
    SoldOut,
}

impl Buyer {
    async fn run(mut self, interval: Duration, stop: Arc<AtomicBool>) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut purchase = 0u64;
        while !stop.load(Ordering::Acquire) {
            ticks.tick().await;
            let key = format!("buyer{}-{purchase}", self.number);
            purchase += 1;
            if !self.purchase(&key).await {
                return;
            }
        }
    }

    /// One purchase; `false` once the keys are sold out.
    async fn purchase(&mut self, key: &str) -> bool {
        let order = match self
            .step(|shop| shop.create_keyed_request(SKU, key), 201)
            .await
        {
            Step::Done(body) => match parse_created(&body, 1) {
                Some(order) => order,
                None => return self.fail(key, "create: unreadable answer".into()),
            },
            Step::SoldOut => return false,
            Step::Failed(why) => return self.fail(key, format!("create: {why}")),
        };
        self.ledger.lock().created(key, order.clone());
        match self.step(|shop| shop.notify_request(&order), 200).await {
            Step::Done(body) if body == b"success" => {
                self.ledger.lock().paid.insert(key.to_owned());
            }
            Step::Done(body) => {
                let text = String::from_utf8_lossy(&body).into_owned();
                return self.fail(key, format!("notify answered {text}"));
            }
            Step::SoldOut | Step::Failed(_) => return self.fail(key, "notify failed".into()),
        }
        true
    }

    fn fail(&self, key: &str, why: String) -> bool {
        self.ledger.lock().failed.push(format!("{key}: {why}"));
        true
    }

    /// Sends the request built for each node in turn until it is answered `expected`, or
    /// with anything but a 503, or the retry window ends.
    async fn step(&mut self, build: impl Fn(&Shop) -> Vec<u8>, expected: u16) -> Step {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < RETRY_WINDOW {
            let n = self.next % self.shops.len();
            let request = build(&self.shops[n]);
            match self.connections[n].send(&request, Retry::Never).await {
                Ok(answer) if answer.status == expected => return Step::Done(answer.body.to_vec()),
                Ok(answer) => match (answer.status, error_code(answer.body).as_deref()) {
                    (409, Some("sold_out")) => return Step::SoldOut,
                    // 503: no leader or an unknown outcome; 409 request_in_progress: the
                    // first attempt is still under way. Both are retried with the same key.
                    (503, _) | (409, Some("request_in_progress")) => {
                        last = format!("HTTP {}", answer.status);
                    }
                    (status, _) => {
                        let body = String::from_utf8_lossy(answer.body);
                        return Step::Failed(format!("HTTP {status} {body}"));
                    }
                },
                Err(error) => last = format!("{:?}", error.kind()),
            }
            self.ledger.lock().retries += 1;
            self.next += 1;
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        Step::Failed(format!("gave up after {RETRY_WINDOW:?}: {last}"))
    }
}

/// The `error` code of an error answer.
fn error_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("error")?.as_str().map(str::to_owned)
}

/// The resumption times: every one, p50 and max, checked against the target.
fn report_resumes(resumes: &[Duration], checks: &mut Checks) {
    let mut ms: Vec<u128> = resumes.iter().map(Duration::as_millis).collect();
    ms.sort_unstable();
    if ms.is_empty() {
        checks.add(false, "no kill was made");
        return;
    }
    let p50 = ms[(ms.len() - 1) / 2];
    let max = ms[ms.len() - 1];
    println!("\n== failover ==");
    println!("kills: {}", ms.len());
    println!("writes resumed after (ms, sorted): {ms:?}");
    println!("p50 {p50} ms, max {max} ms");
    checks.add(
        max <= RESUME_TARGET.as_millis(),
        format!(
            "writes resumed within {} ms of every kill (p50 {p50} ms, max {max} ms)",
            RESUME_TARGET.as_millis()
        ),
    );
}

/// Every acknowledged create on every node, every acknowledged payment delivered there, no
/// key sold twice, stock conserved.
async fn check_history(shops: &[Arc<Shop>], ledger: &Ledger, imported: u64, checks: &mut Checks) {
    println!(
        "acknowledged: {} creates, {} payments; {} writes retried; {} purchases failed",
        ledger.created.len(),
        ledger.paid.len(),
        ledger.retries,
        ledger.failed.len()
    );
    for failure in ledger.failed.iter().take(5) {
        println!("failed: {failure}");
    }
    checks.add(
        ledger.split_keys.is_empty(),
        format!(
            "each Idempotency-Key is one order ({} split)",
            ledger.split_keys.len()
        ),
    );
    let mut sold_counts = Vec::new();
    for (i, shop) in shops.iter().enumerate() {
        let books = books_on(shop, ledger).await;
        let cards = books.keys;
        checks.add(
            books.lost == 0,
            format!("node {}: acknowledged work lost: {}", i + 1, books.lost),
        );
        checks.add(
            books.sold_twice == 0,
            format!("node {}: keys sold twice: {}", i + 1, books.sold_twice),
        );
        match shop.stock(SKU).await {
            Ok(stock) => {
                let total = stock.available + stock.reserved + stock.sold;
                checks.add(
                    total == imported && stock.sold == cards,
                    format!(
                        "node {}: stock conserved ({} + {} + {} = {imported}), sold = {cards} delivered keys",
                        i + 1, stock.available, stock.reserved, stock.sold
                    ),
                );
                sold_counts.push(stock.sold);
            }
            Err(error) => checks.add(false, format!("node {}: stock: {error:#}", i + 1)),
        }
    }
    sold_counts.dedup();
    checks.add(
        sold_counts.len() == 1,
        "every node counts the same keys sold",
    );
}

/// What one node shows of the acknowledged history.
struct NodeBooks {
    /// Acknowledged creates missing plus acknowledged payments not delivered.
    lost: u64,
    /// Keys delivered to the acknowledged orders.
    keys: u64,
    /// Keys delivered to more than one of them.
    sold_twice: u64,
}

async fn books_on(shop: &Shop, ledger: &Ledger) -> NodeBooks {
    let mut connection = Connection::with_timeout(shop.addr, REQUEST_TIMEOUT);
    let mut books = NodeBooks {
        lost: 0,
        keys: 0,
        sold_twice: 0,
    };
    let mut keys = HashSet::new();
    for (key, order) in &ledger.created {
        let paid = ledger.paid.contains(key);
        let started = Instant::now();
        let view = loop {
            let request = shop.lookup_request(order);
            let view = match connection.send(&request, Retry::OnStaleConnection).await {
                Ok(answer) if answer.status == 200 => parse_lookup(answer.body),
                _ => None,
            };
            match view {
                Some(view) if paid && view.status != "delivered" => {
                    if started.elapsed() > DELIVERY_WAIT_MAX {
                        break None;
                    }
                }
                other => break other,
            }
            tokio::time::sleep(POLL).await;
        };
        let Some(view) = view else {
            books.lost += 1;
            continue;
        };
        for card in view.cards {
            if !keys.insert(card) {
                books.sold_twice += 1;
            }
        }
    }
    books.keys = keys.len() as u64;
    books
}

/// Stops every node, audits each data dir and compares them.
async fn finish(nodes: &mut Nodes, binary: &Path, checks: &mut Checks) {
    for (i, server) in nodes.servers.iter_mut().enumerate() {
        match server.stop().await {
            Ok(status) => checks.add(
                status.success(),
                format!("node {} stopped ({status})", i + 1),
            ),
            Err(error) => checks.add(false, format!("node {} stop: {error:#}", i + 1)),
        }
        match server.audit().await {
            Ok((clean, output)) => {
                let last = output.lines().last().unwrap_or("(no output)").to_owned();
                checks.add(clean, format!("node {}: {last}", i + 1));
            }
            Err(error) => checks.add(false, format!("node {} audit: {error:#}", i + 1)),
        }
    }
    let dirs: Vec<&Path> = nodes.servers.iter().map(|s| s.data_dir.as_path()).collect();
    let output = tokio::process::Command::new(binary)
        .args(["audit", "--data"])
        .arg(dirs[0])
        .arg("--compare")
        .args(&dirs[1..])
        .output()
        .await;
    match output {
        Ok(output) => {
            let text = String::from_utf8_lossy(&output.stdout);
            let last = text.lines().last().unwrap_or("(no output)").to_owned();
            checks.add(output.status.success(), format!("audit --compare: {last}"));
        }
        Err(error) => checks.add(false, format!("audit --compare: {error}")),
    }
}
