//! A cluster of real `panshi serve` processes on loopback: ports fixed before the first
//! start (every node's URL is in every node's settings), node-to-node traffic through the
//! fault proxy, each node's log in a file (never in the test's output).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use simulations::netproxy::{node_source, NetProxy};

use crate::common::{Server, ADMIN};

pub const SECRET: &str = "cluster-tests-shared-secret";
pub const SEALING_KEY: &str = "5ea1ed0000000000000000000000000000000000000000000000000000c0ffee";
/// How long a test waits for the cluster to settle (a leader, a node caught up).
pub const SETTLE_MAX: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// One cluster test at a time: each runs three to five servers on a 2-core machine, and
/// elections stay honest only while the processes get the CPU they need.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub proxy: NetProxy,
    pub nodes: BTreeMap<u64, Server>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Settings every node gets on top of `node_env`.
    extra_env: Vec<(String, String)>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// A free port on 127.0.0.1 that the node binds next (`common::free_port`: outside the
/// ephemeral range, so no client connection takes it meanwhile, nor while the node is down).
fn free_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], crate::common::free_port()))
}

impl Cluster {
    /// Prepares `voters`, `learners` (in everyone's settings) and `spares` (known to the
    /// proxy only, for membership changes), and starts the voters and learners.
    pub fn start(voters: &[u64], learners: &[u64], spares: &[u64]) -> Cluster {
        Self::start_with(voters, learners, spares, &[])
    }

    /// `start`, with settings added on every node.
    pub fn start_with(
        voters: &[u64],
        learners: &[u64],
        spares: &[u64],
        env: &[(&str, &str)],
    ) -> Cluster {
        let mut cluster = Self::prepare_all(voters, learners, spares, env);
        for id in voters.iter().chain(learners) {
            cluster.relaunch(*id);
        }
        cluster
    }

    /// Prepares `voters` and starts only those of them in `started`: the others wait,
    /// pristine, for `relaunch`.
    pub fn start_some(voters: &[u64], started: &[u64]) -> Cluster {
        let mut cluster = Self::prepare_all(voters, &[], &[], &[]);
        for id in started {
            cluster.relaunch(*id);
        }
        cluster
    }

    fn prepare_all(
        voters: &[u64],
        learners: &[u64],
        spares: &[u64],
        env: &[(&str, &str)],
    ) -> Cluster {
        let serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let all: Vec<u64> = voters
            .iter()
            .chain(learners)
            .chain(spares)
            .copied()
            .collect();
        let addrs: BTreeMap<u64, SocketAddr> = all.iter().map(|id| (*id, free_port())).collect();
        let proxy = NetProxy::start(&addrs).unwrap();
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            proxy,
            dir,
            _serial: serial,
        };
        for id in all {
            let own_learner = spares.contains(&id).then_some(id);
            let server = cluster.prepare(id, addrs[&id], own_learner);
            cluster.nodes.insert(id, server);
        }
        cluster
    }

    /// A node's server, not started. A spare lists itself as a learner (a node must be in
    /// its own settings); the cluster learns of it through the membership endpoints.
    fn prepare(&self, id: u64, addr: SocketAddr, own_learner: Option<u64>) -> Server {
        let data = self.dir.path().join(format!("node-{id}"));
        let log = self.dir.path().join(format!("node-{id}.log"));
        let mut learners = self.learners.clone();
        learners.extend(own_learner);
        let env = node_env(
            id,
            &self.proxy.members(&self.voters),
            &self.proxy.members(&learners),
        );
        let extra = self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let env: Vec<(&str, &str)> = env
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(extra)
            .collect();
        Server::at(&data, &addr.to_string(), &env, &log)
    }

    pub fn node(&self, id: u64) -> &Server {
        &self.nodes[&id]
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, s)| s.is_running())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Every node's base URL (running or not), for the load.
    pub fn targets(&self) -> Vec<String> {
        self.nodes.values().map(|s| s.base.clone()).collect()
    }

    pub fn kill9(&mut self, id: u64) {
        self.nodes.get_mut(&id).unwrap().kill9();
    }

    pub fn stop(&mut self, id: u64) {
        self.nodes.get_mut(&id).unwrap().stop();
    }

    pub fn relaunch(&mut self, id: u64) {
        self.nodes.get_mut(&id).unwrap().relaunch();
    }

    /// `/api/v1/ops/cluster` on node `id`; `None` when it does not answer.
    pub async fn status(&self, id: u64) -> Option<Value> {
        let server = self.node(id);
        let answer = server
            .http
            .get(server.url("/api/v1/ops/cluster"))
            .bearer_auth(ADMIN)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        (answer.status() == 200).then_some(())?;
        answer.json().await.ok()
    }

    /// Whether `/leaderz` on node `id` answers 200.
    pub async fn leads(&self, id: u64) -> bool {
        let server = self.node(id);
        let answer = server
            .http
            .get(server.url("/leaderz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        answer.is_ok_and(|a| a.status() == 200)
    }

    /// Waits until exactly one of `among` leads (its gate open) and every one of them
    /// names it as the leader; returns it.
    pub async fn wait_leader(&self, among: &[u64]) -> u64 {
        let started = Instant::now();
        loop {
            if let Some(leader) = self.agreed_leader(among).await {
                return leader;
            }
            if started.elapsed() > SETTLE_MAX {
                let logs: Vec<String> = among
                    .iter()
                    .map(|id| format!("--- node {id} ---\n{}", self.log_tail(*id)))
                    .collect();
                panic!(
                    "no agreed leader among {among:?} within {SETTLE_MAX:?}: {:?}\n{}",
                    self.statuses(among).await,
                    logs.join("\n")
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// An order on whichever of `among` leads, as a client following the contract writes
    /// it: a 503 refusal (leadership moved, or the leader lost its lease on a loaded
    /// machine, between `wait_leader` and the write) is retried with the same
    /// Idempotency-Key on whoever leads then, within `SETTLE_MAX`. The last answer.
    pub async fn order_on_leader(&self, among: &[u64], sku: &str, key: &str) -> (u16, Value) {
        let started = Instant::now();
        loop {
            let leader = self.wait_leader(among).await;
            let server = self.node(leader);
            let body = serde_json::json!({"sku": sku, "quantity": 1, "contact": format!("{key}@example.com"), "channel": "epay"});
            let response = server
                .http
                .post(server.url("/api/v1/orders"))
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await;
            let answer = match response {
                Ok(response) => crate::common::answer(response).await,
                Err(error) => (0, serde_json::json!({ "unanswered": error.to_string() })),
            };
            if !matches!(answer.0, 0 | 503) || started.elapsed() > SETTLE_MAX {
                return answer;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn agreed_leader(&self, among: &[u64]) -> Option<u64> {
        let mut leading = Vec::new();
        for &id in among {
            if self.leads(id).await {
                leading.push(id);
            }
        }
        let [leader] = leading[..] else { return None };
        for &id in among {
            let status = self.status(id).await?;
            if status["leader_id"].as_u64() != Some(leader) {
                return None;
            }
        }
        Some(leader)
    }

    pub async fn statuses(&self, among: &[u64]) -> Vec<Option<Value>> {
        let mut all = Vec::new();
        for &id in among {
            all.push(self.status(id).await);
        }
        all
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64) {
        let started = Instant::now();
        loop {
            let applied = self
                .status(id)
                .await
                .and_then(|s| s["applied_index"].as_u64());
            if applied.is_some_and(|a| a >= index) {
                return;
            }
            assert!(
                started.elapsed() < SETTLE_MAX,
                "node {id} never applied {index} (at {applied:?})"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every running node has applied what the leader has committed now.
    pub async fn wait_caught_up(&self, leader: u64) {
        let commit = self.status(leader).await.expect("the leader answers")["commit_index"]
            .as_u64()
            .unwrap();
        for id in self.running() {
            self.wait_applied(id, commit).await;
        }
    }

    /// Stops every node gracefully, audits each data dir and compares them all.
    pub fn stop_and_audit(&mut self) {
        let ids: Vec<u64> = self.running();
        for id in &ids {
            self.stop(*id);
        }
        let mut dirs = Vec::new();
        for (id, server) in &self.nodes {
            if !server.data.exists() {
                continue;
            }
            let (clean, report) = server.audit();
            assert!(clean, "audit of node {id} found violations:\n{report}");
            dirs.push(server.data.clone());
        }
        let (agrees, report) = compare(&dirs);
        assert!(agrees, "the nodes' histories differ:\n{report}");
    }

    /// Every node's log lines at level ERROR from Panshi's own crates (a healthy cluster,
    /// stopped gracefully, has none; openraft's own lines about a stopped peer are not
    /// Panshi's to judge).
    pub fn errors_logged(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for id in self.nodes.keys() {
            let path = self.dir.path().join(format!("node-{id}.log"));
            let text = std::fs::read_to_string(path).unwrap_or_default();
            errors.extend(
                text.lines()
                    .filter(|line| line.contains(r#""level":"ERROR""#))
                    .filter(|line| {
                        ["replication", "storage", "actors", "ws_api", "panshi"]
                            .iter()
                            .any(|own| line.contains(&format!(r#""target":"{own}"#)))
                    })
                    .map(|line| format!("node {id}: {line}")),
            );
        }
        errors
    }

    /// The last lines of node `id`'s log, for a failure message.
    pub fn log_tail(&self, id: u64) -> String {
        let path = self.dir.path().join(format!("node-{id}.log"));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// The settings every node of a test cluster gets.
pub fn node_env(id: u64, peers: &str, learners: &str) -> Vec<(&'static str, String)> {
    vec![
        ("PANSHI_CLUSTER__NODE_ID", id.to_string()),
        ("PANSHI_CLUSTER__PEERS", peers.to_owned()),
        ("PANSHI_CLUSTER__LEARNERS", learners.to_owned()),
        ("PANSHI_CLUSTER__SECRET", SECRET.to_owned()),
        (
            "PANSHI_CLUSTER__SOURCE_ADDRESS",
            node_source(id).to_string(),
        ),
        ("PANSHI_RESELLERS__SEALING_KEY", SEALING_KEY.to_owned()),
        // The load is paced by the tests; the waiting room would turn a slow machine's
        // latency into 202s, which these tests do not follow.
        ("PANSHI_OVERLOAD__INFLIGHT_HIGH", u32::MAX.to_string()),
        ("PANSHI_OVERLOAD__LATENCY_HIGH_MS", u32::MAX.to_string()),
    ]
}

/// `panshi audit --data D --compare D2 ...`: whether the histories agree, and the report.
pub fn compare(dirs: &[PathBuf]) -> (bool, String) {
    let (first, rest) = dirs.split_first().expect("at least one data dir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_panshi"));
    command.args(["audit", "--data"]).arg(first);
    if !rest.is_empty() {
        command.arg("--compare").args(rest);
    }
    let output = command.output().unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// What a write answered, for tests that expect it refused.
#[derive(Debug)]
pub enum Written {
    /// The status, the error code (if any) and whether `Retry-After` came with it.
    Answered(u16, Option<String>, bool),
    /// No answer within the timeout, or no connection (why: read through `Debug`).
    #[allow(dead_code)]
    Unanswered(String),
}

impl Written {
    /// A 503 `no_leader` or `not_committed` with `Retry-After`, as the contract fixes it.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Written::Answered(503, Some(code), true) if code == "no_leader" || code == "not_committed")
    }
}

/// An order with `key` on `server`, waiting at most `timeout` for the answer.
pub async fn try_order(server: &Server, sku: &str, key: &str, timeout: Duration) -> Written {
    let body = serde_json::json!({"sku": sku, "quantity": 1, "contact": format!("{key}@example.com"), "channel": "epay"});
    let sent = server
        .http
        .post(server.url("/api/v1/orders"))
        .header("Idempotency-Key", key)
        .json(&body)
        .timeout(timeout)
        .send()
        .await;
    match sent {
        Ok(response) => {
            let retry_after = response.headers().contains_key("Retry-After");
            let (code, body) = crate::common::answer(response).await;
            let error = body["error"].as_str().map(str::to_owned);
            Written::Answered(code, error, retry_after)
        }
        Err(error) => Written::Unanswered(error.to_string()),
    }
}

/// Sends each key to two nodes in turn: 201 both times, with one order id.
pub async fn one_order_each(cluster: &Cluster, sku: &str, keys: &[String], nodes: &[u64]) {
    for (n, key) in keys.iter().enumerate() {
        let mut ids = Vec::new();
        for attempt in 0..2 {
            let id = nodes[(n + attempt) % nodes.len()];
            let (code, order) = cluster
                .node(id)
                .order_keyed(sku, 1, &format!("{key}@example.com"), key)
                .await;
            assert_eq!(code, 201, "{key} on node {id}: {order}");
            ids.push(order["order_id"].clone());
        }
        assert_eq!(ids[0], ids[1], "{key} is one order");
    }
}
