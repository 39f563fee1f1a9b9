//! The cluster at the edge: node-to-node HTTP, passing writes to the leader, reads that see
//! every acknowledged change, and the operators' cluster endpoints.
//!
//! - Node-to-node requests (`POST /internal/raft/{call}`) travel to each node's public base
//!   URL, signed with the shared `cluster.secret` (`Panshi-Cluster: t=..,v1=..`, HMAC-SHA256
//!   over the time, the call and the body); anything unsigned gets 401.
//! - A node that is not the active leader passes every write to the leader and returns its
//!   answer (`forward.rs`): with no leader known the answer is 503 `no_leader`, and when
//!   the leader was reached but its answer lost, 503 `not_committed` (an `Idempotency-Key`
//!   retried anywhere then returns the first answer if it did commit).
//! - Before a read, such a node waits until it has applied everything the leader had
//!   committed when the read arrived (`Node::read_barrier`).

pub mod forward;
pub mod routes;
pub mod transport;

use std::collections::BTreeMap;

use anyhow::Context;
use hmac::{Hmac, Mac};
use replication::{Node, NodeConfig};
use sha2::Sha256;

use crate::settings::ClusterSection;

/// Shortest `cluster.secret`.
pub const CLUSTER_SECRET_BYTES_MIN: usize = 16;
/// How far a signed node-to-node request's time may be from ours.
pub const SIGNATURE_WINDOW_SECS: u64 = 300;
/// Voters a cluster may have (three or five in practice).
pub const VOTERS_MAX: usize = 7;
/// Learners a cluster may have.
pub const LEARNERS_MAX: usize = 8;

/// The node and what the edge needs to reach the others.
pub struct Cluster {
    pub node: Node,
    /// `None` for a single node: there is nobody to sign for.
    secret: Option<String>,
    /// Passes writes to the leader.
    pub(crate) client: reqwest::Client,
}

impl Cluster {
    /// `source`: the local address connections to other nodes leave from.
    pub fn new(node: Node, secret: Option<String>, source: Option<std::net::IpAddr>) -> Self {
        Self {
            node,
            secret,
            client: forward::client(source),
        }
    }

    /// Whether this node runs with others (a single node never forwards or waits).
    pub fn is_replicated(&self) -> bool {
        self.secret.is_some()
    }

    /// The `Panshi-Cluster` header value for `parts`.
    pub(crate) fn sign(&self, parts: &[&[u8]]) -> Option<String> {
        let secret = self.secret.as_deref()?;
        Some(sign(secret, now_secs(), parts))
    }

    /// Whether `header` signs `parts` with our secret, within the time window.
    pub(crate) fn verify(&self, header: Option<&str>, parts: &[&[u8]]) -> bool {
        match (self.secret.as_deref(), header) {
            (Some(secret), Some(header)) => verify(secret, header, now_secs(), parts),
            _ => false,
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mac(secret: &str, time: u64, parts: &[&[u8]]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(time.to_string().as_bytes());
    for part in parts {
        mac.update(b".");
        mac.update(part);
    }
    mac
}

pub(crate) fn sign(secret: &str, time: u64, parts: &[&[u8]]) -> String {
    let tag = mac(secret, time, parts).finalize().into_bytes();
    format!("t={time},v1={}", hex_string(&tag))
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn verify(secret: &str, header: &str, now: u64, parts: &[&[u8]]) -> bool {
    let mut time = None;
    let mut tag = None;
    for field in header.split(',') {
        match field.trim().split_once('=') {
            Some(("t", value)) => time = value.parse::<u64>().ok(),
            Some(("v1", value)) => tag = Some(value),
            _ => {}
        }
    }
    let (Some(time), Some(tag)) = (time, tag) else {
        return false;
    };
    if time.abs_diff(now) > SIGNATURE_WINDOW_SECS || tag.len() != 64 {
        return false;
    }
    let Some(tag) = (0..32)
        .map(|i| u8::from_str_radix(&tag[2 * i..2 * i + 2], 16).ok())
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    mac(secret, time, parts).verify_slice(&tag).is_ok()
}

/// `id=url, id=url`: ids positive and unique, urls `http(s)://host[:port]` without a path.
pub fn parse_members(text: &str, what: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut members = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, url) = pair
            .split_once('=')
            .with_context(|| format!("{what}: `{pair}` is not id=url"))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .with_context(|| format!("{what}: node id `{id}` is not a positive integer"))?;
        let url = url.trim().trim_end_matches('/');
        let parsed = reqwest::Url::parse(url).with_context(|| format!("{what}: `{url}`"))?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https")
                && parsed.host_str().is_some()
                && parsed.path() == "/"
                && parsed.query().is_none(),
            "{what}: `{url}` must be http(s)://host[:port], the node's public base URL"
        );
        anyhow::ensure!(
            members.insert(id, url.to_owned()).is_none(),
            "{what}: node {id} is listed twice"
        );
    }
    Ok(members)
}

/// The node's configuration from the settings. `None` for the `secret` of a single node.
pub fn node_config(
    section: &ClusterSection,
    public_url: &str,
) -> anyhow::Result<(NodeConfig, Option<String>)> {
    let mut config = NodeConfig::single();
    config.heartbeat_ms = section.heartbeat_ms;
    config.election_timeout_ms = section.election_timeout_ms;
    config.snapshot_every_entries = section.snapshot_every_entries;
    anyhow::ensure!(
        section.heartbeat_ms >= 10 && section.election_timeout_ms >= 3 * section.heartbeat_ms,
        "cluster.election_timeout_ms must be at least three heartbeats (cluster.heartbeat_ms, at least 10)"
    );
    anyhow::ensure!(
        section.snapshot_every_entries >= 100,
        "cluster.snapshot_every_entries must be at least 100"
    );
    let peers = section.peers.as_deref().filter(|p| !p.trim().is_empty());
    let learners = section.learners.as_deref().filter(|p| !p.trim().is_empty());
    if peers.is_none() && learners.is_none() {
        anyhow::ensure!(
            section.node_id.is_none_or(|id| id == 1),
            "cluster.node_id needs cluster.peers (a single node is node 1)"
        );
        config.voters = BTreeMap::from([(1, public_url.to_owned())]);
        return Ok((config, None));
    }
    let voters = parse_members(peers.unwrap_or(""), "cluster.peers")?;
    let learners = parse_members(learners.unwrap_or(""), "cluster.learners")?;
    anyhow::ensure!(!voters.is_empty(), "cluster.peers lists no voter");
    anyhow::ensure!(
        voters.len() <= VOTERS_MAX && learners.len() <= LEARNERS_MAX,
        "a cluster has at most {VOTERS_MAX} voters and {LEARNERS_MAX} learners"
    );
    if let Some(id) = learners.keys().find(|id| voters.contains_key(id)) {
        anyhow::bail!("node {id} is both a voter (cluster.peers) and a learner");
    }
    let node_id = section
        .node_id
        .context("cluster.node_id is required with cluster.peers")?;
    anyhow::ensure!(
        voters.contains_key(&node_id) || learners.contains_key(&node_id),
        "cluster.node_id {node_id} is in neither cluster.peers nor cluster.learners"
    );
    let secret = section
        .secret
        .as_ref()
        .map(|s| s.0.clone())
        .filter(|s| s.len() >= CLUSTER_SECRET_BYTES_MIN)
        .with_context(|| {
            format!("cluster.secret of at least {CLUSTER_SECRET_BYTES_MIN} bytes is required with cluster.peers")
        })?;
    config.node_id = node_id;
    config.voters = voters;
    config.learners = learners;
    Ok((config, Some(secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_its_secret_parts_and_time() {
        let header = sign("a-long-enough-secret", 1_000, &[b"append", b"body"]);
        assert!(verify(
            "a-long-enough-secret",
            &header,
            1_010,
            &[b"append", b"body"]
        ));
        assert!(!verify(
            "another-secret-entirely",
            &header,
            1_010,
            &[b"append", b"body"]
        ));
        assert!(!verify(
            "a-long-enough-secret",
            &header,
            1_010,
            &[b"vote", b"body"]
        ));
        assert!(!verify(
            "a-long-enough-secret",
            &header,
            1_010,
            &[b"append", b"bodz"]
        ));
        assert!(!verify(
            "a-long-enough-secret",
            &header,
            2_000,
            &[b"append", b"body"]
        ));
        assert!(!verify("a-long-enough-secret", "t=1000,v1=zz", 1_000, &[]));
    }

    #[test]
    fn members_parse_and_refuse_what_would_misroute() {
        let members =
            parse_members("1=http://a:8080, 2=https://b.example/,3=http://c", "p").unwrap();
        assert_eq!(members[&2], "https://b.example");
        assert_eq!(members.len(), 3);
        for bad in [
            "0=http://a",
            "1=http://a,1=http://b",
            "x=http://a",
            "1=ftp://a",
            "1=http://a/submit.php",
            "1",
        ] {
            assert!(parse_members(bad, "p").is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_cluster_needs_its_id_among_the_members_and_a_secret() {
        let mut section = ClusterSection {
            peers: Some("1=http://a:1,2=http://b:1,3=http://c:1".into()),
            ..ClusterSection::default()
        };
        assert!(node_config(&section, "").is_err(), "no node id");
        section.node_id = Some(4);
        section.secret = Some(crate::settings::Secret("s".repeat(16)));
        assert!(node_config(&section, "").is_err(), "node 4 is not listed");
        section.node_id = Some(2);
        section.secret = Some(crate::settings::Secret("short".into()));
        assert!(node_config(&section, "").is_err(), "short secret");
        section.secret = Some(crate::settings::Secret("s".repeat(16)));
        let (config, secret) = node_config(&section, "").unwrap();
        assert_eq!((config.node_id, config.voters.len()), (2, 3));
        assert!(secret.is_some());
        let (single, secret) = node_config(&ClusterSection::default(), "http://x:1").unwrap();
        assert_eq!((single.node_id, secret), (1, None));
    }
}
