//! A TCP fault proxy for the links between cluster nodes, driven from a test or a harness.
//!
//! One front per node: the cluster's peers list names the fronts (`url(id)`), each front
//! passes every connection on to its node's real address. A connection's source node is
//! known by the loopback address it comes from (each node makes its node-to-node
//! connections from an address of its own, `cluster.source_address`); any other source is
//! a client and always passes. So each directed link `from -> to` (the connections `from`
//! opens to `to`, carrying its requests and their answers) can pass, be dropped or be
//! delayed on its own.
//!
//! Dropping is a blackhole, not a refusal: bytes are taken from the sender and never passed
//! on, new connections are accepted and never served, so calls hang until their own
//! timeouts as they do behind a dead switch. A connection that saw its link dropped is
//! closed once the link passes again (its peer has long given up), never resumed.
//!
//! Invariants: only 127.0.0.1 is listened on; a fault takes effect on connections already
//! open as well as on new ones; dropping the proxy closes every connection it holds.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub type NodeId = u64;

/// The source of connections from anything that is not a node (test clients, buyers).
pub const CLIENT: NodeId = 0;
/// Bytes read per chunk of a passed-on stream.
const CHUNK_BYTES: usize = 64 * 1024;
/// How long connecting to a node may take before the connection is given up.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a link does to its traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    Pass,
    /// A blackhole: nothing passes, nothing is refused.
    Drop,
    /// Every chunk waits this long before it is passed on.
    Delay(Duration),
}

/// The loopback address node `id` makes its node-to-node connections from (127.0.0.1 is
/// left to clients).
pub fn node_source(id: NodeId) -> IpAddr {
    assert!((1..200).contains(&id), "node ids 1 to 199");
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + id as u8))
}

struct Shared {
    links: Mutex<HashMap<(NodeId, NodeId), Fault>>,
    /// Bumped on every change, so that waiting connections look again.
    generation: watch::Sender<u64>,
}

impl Shared {
    fn fault(&self, link: (NodeId, NodeId)) -> Fault {
        self.links.lock().get(&link).copied().unwrap_or_default()
    }

    /// Waits out a delay; `false` when the link was dropped meanwhile (then only once it
    /// passes again, so a blackholed call hangs until its caller gives up).
    async fn pass(&self, link: (NodeId, NodeId)) -> bool {
        let mut changes = self.generation.subscribe();
        let mut dropped = false;
        loop {
            match self.fault(link) {
                Fault::Pass if !dropped => return true,
                Fault::Delay(delay) if !dropped => {
                    tokio::time::sleep(delay).await;
                    return self.fault(link) != Fault::Drop;
                }
                Fault::Drop => dropped = true,
                _ => return false,
            }
            if changes.changed().await.is_err() {
                return false;
            }
        }
    }
}

/// The running proxy; dropping it stops every front and connection.
pub struct NetProxy {
    runtime: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    fronts: BTreeMap<NodeId, SocketAddr>,
}

impl NetProxy {
    /// Starts one front per node, each passing on to `nodes[id]` (the node's real listen
    /// address). Sources are told apart by `node_source`.
    pub fn start(nodes: &BTreeMap<NodeId, SocketAddr>) -> std::io::Result<NetProxy> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("netproxy")
            .enable_all()
            .build()?;
        let (generation, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            links: Mutex::default(),
            generation,
        });
        let sources: Arc<HashMap<IpAddr, NodeId>> =
            Arc::new(nodes.keys().map(|id| (node_source(*id), *id)).collect());
        let mut fronts = BTreeMap::new();
        for (&id, &upstream) in nodes {
            let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            listener.set_nonblocking(true)?;
            fronts.insert(id, listener.local_addr()?);
            let (shared, sources) = (shared.clone(), sources.clone());
            runtime.spawn(async move {
                let Ok(listener) = TcpListener::from_std(listener) else {
                    return;
                };
                accept(listener, id, upstream, shared, sources).await;
            });
        }
        Ok(NetProxy {
            runtime: Some(runtime),
            shared,
            fronts,
        })
    }

    /// The base URL other nodes reach node `id` at.
    pub fn url(&self, id: NodeId) -> String {
        format!("http://{}", self.fronts[&id])
    }

    /// The cluster's peers setting for `ids`, every url a front.
    pub fn members(&self, ids: &[NodeId]) -> String {
        ids.iter()
            .map(|id| format!("{id}={}", self.url(*id)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Sets what the link `from -> to` does (`CLIENT` as `from` for non-node sources).
    pub fn set(&self, from: NodeId, to: NodeId, fault: Fault) {
        self.shared.links.lock().insert((from, to), fault);
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Drops every link to and from `node` (clients still reach it directly).
    pub fn isolate(&self, node: NodeId) {
        for &other in self.fronts.keys().filter(|&&other| other != node) {
            self.set(node, other, Fault::Drop);
            self.set(other, node, Fault::Drop);
        }
    }

    /// Every link passes again.
    pub fn heal(&self) {
        self.shared.links.lock().clear();
        self.shared.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for NetProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn accept(
    listener: TcpListener,
    to: NodeId,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    sources: Arc<HashMap<IpAddr, NodeId>>,
) {
    while let Ok((client, peer)) = listener.accept().await {
        let from = sources.get(&peer.ip()).copied().unwrap_or(CLIENT);
        tokio::spawn(serve(client, (from, to), upstream, shared.clone()));
    }
}

/// One connection: held while its link is dropped, then passed on both ways.
async fn serve(
    client: TcpStream,
    link: (NodeId, NodeId),
    upstream: SocketAddr,
    shared: Arc<Shared>,
) {
    if !shared.pass(link).await {
        return;
    }
    let connect = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream));
    let Ok(Ok(server)) = connect.await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let requests = pump(client_read, server_write, link, shared.clone());
    let answers = pump(server_read, client_write, link, shared);
    tokio::pin!(requests, answers);
    let (mut requests_done, mut answers_done) = (false, false);
    // A clean end of one direction leaves the other running (a half-close); a dropped link
    // or an error ends the whole connection.
    while !(requests_done && answers_done) {
        tokio::select! {
            clean = &mut requests, if !requests_done => {
                if !clean { return; }
                requests_done = true;
            }
            clean = &mut answers, if !answers_done => {
                if !clean { return; }
                answers_done = true;
            }
        }
    }
}

/// Copies one direction; `true` on a clean end of stream.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: (NodeId, NodeId),
    shared: Arc<Shared>,
) -> bool {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) => return to.shutdown().await.is_ok(),
            Ok(read) => read,
            Err(_) => return false,
        };
        if !shared.pass(link).await || to.write_all(&buffer[..read]).await.is_err() {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// An echo server on 127.0.0.1; answers each chunk it reads.
    fn echo() -> SocketAddr {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 1024];
                    while let Ok(read) = stream.read(&mut buffer) {
                        if read == 0 || stream.write_all(&buffer[..read]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn connect_from(source: IpAddr, to: SocketAddr) -> std::net::TcpStream {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stream = runtime
            .block_on(async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(source, 0))?;
                socket.connect(to).await
            })
            .unwrap()
            .into_std()
            .unwrap();
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        stream
    }

    /// Whether a round trip from `source` through the front of node 2 comes back.
    fn round_trip(stream: &mut std::net::TcpStream) -> bool {
        let mut buffer = [0u8; 4];
        stream.write_all(b"ping").is_ok() && stream.read_exact(&mut buffer).is_ok()
    }

    #[test]
    fn each_directed_link_passes_drops_or_delays_on_its_own() {
        let nodes = BTreeMap::from([(1, echo()), (2, echo())]);
        let proxy = NetProxy::start(&nodes).unwrap();
        let front = proxy.fronts[&2];
        let mut from_1 = connect_from(node_source(1), front);
        let mut from_client = connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST), front);
        assert!(round_trip(&mut from_1) && round_trip(&mut from_client));

        proxy.set(1, 2, Fault::Drop);
        assert!(!round_trip(&mut from_1), "an open connection is blackholed");
        assert!(round_trip(&mut from_client), "other sources still pass");
        let mut new_from_1 = connect_from(node_source(1), front);
        assert!(!round_trip(&mut new_from_1), "a new connection hangs");

        proxy.heal();
        let mut healed = connect_from(node_source(1), front);
        assert!(
            round_trip(&mut healed),
            "a new connection passes once healed"
        );
        let mut buffer = [0u8; 4];
        assert!(
            !matches!(from_1.read(&mut buffer), Ok(n) if n > 0),
            "a blackholed connection is closed, never resumed"
        );

        proxy.set(1, 2, Fault::Delay(Duration::from_millis(100)));
        healed
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let started = std::time::Instant::now();
        assert!(round_trip(&mut healed));
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "both ways wait"
        );
    }
}
