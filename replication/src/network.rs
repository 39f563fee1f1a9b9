//! Node-to-node messages over a transport that moves bytes (`Transport`): ws-api carries
//! them over HTTP, the simulator through its simulated network. openraft's messages are
//! encoded here (bincode through serde), so the transport never sees openraft's types.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::{NodeId, PanshiRaft, PeerNode};

/// Largest node-to-node message: a batch of entries (`max_payload_entries` of up to
/// `proposer::BATCH_BYTES_MAX` each) or a snapshot chunk.
pub const RPC_BYTES_MAX: usize = 256 * 1024 * 1024;

/// The node-to-node calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    Append,
    Vote,
    Snapshot,
    /// Asks the leader for the index a linearizable read must wait for.
    ReadIndex,
}

impl Rpc {
    pub const ALL: [Rpc; 4] = [Rpc::Append, Rpc::Vote, Rpc::Snapshot, Rpc::ReadIndex];

    /// The path segment this call travels under.
    pub fn name(self) -> &'static str {
        match self {
            Rpc::Append => "append",
            Rpc::Vote => "vote",
            Rpc::Snapshot => "snapshot",
            Rpc::ReadIndex => "read-index",
        }
    }

    pub fn parse(name: &str) -> Option<Rpc> {
        Rpc::ALL.into_iter().find(|rpc| rpc.name() == name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer could not be reached (or did not answer in time).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The peer answered with something other than a reply.
    #[error("bad answer: {0}")]
    BadAnswer(String),
}

pub type TransportFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, TransportError>> + Send>>;

/// Moves one request's bytes to the node at `url` and brings its reply back.
pub trait Transport: Send + Sync + 'static {
    fn call(&self, url: &str, rpc: Rpc, body: Vec<u8>, timeout: Duration) -> TransportFuture;
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, config()).expect("messages encode")
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, TransportError> {
    if bytes.len() > RPC_BYTES_MAX {
        return Err(TransportError::BadAnswer("oversized message".into()));
    }
    bincode::serde::decode_from_slice(bytes, config())
        .map(|(value, _)| value)
        .map_err(|e| TransportError::BadAnswer(e.to_string()))
}

/// Makes a `Network` per peer.
pub struct NetworkFactory {
    pub(crate) transport: Arc<dyn Transport>,
}

impl RaftNetworkFactory<PanshiRaft> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> Network {
        Network {
            target,
            url: node.url.clone(),
            transport: self.transport.clone(),
        }
    }
}

pub struct Network {
    target: NodeId,
    url: String,
    transport: Arc<dyn Transport>,
}

type RaftRpcError<E = openraft::error::Infallible> =
    RPCError<NodeId, PeerNode, RaftError<NodeId, E>>;

impl Network {
    async fn send<
        Req: Serialize,
        Resp: DeserializeOwned,
        E: DeserializeOwned + std::error::Error,
    >(
        &self,
        rpc: Rpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RaftRpcError<E>> {
        let body = encode(request);
        let reply = self
            .transport
            .call(&self.url, rpc, body, option.hard_ttl())
            .await
            .map_err(|e| match e {
                TransportError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
                TransportError::BadAnswer(_) => RPCError::Network(NetworkError::new(&e)),
            })?;
        let answer: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<PanshiRaft> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<PanshiRaft>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RaftRpcError> {
        self.send(Rpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<PanshiRaft>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RaftRpcError<InstallSnapshotError>> {
        self.send(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RaftRpcError> {
        self.send(Rpc::Vote, &rpc, &option).await
    }
}

/// A transport that reaches nobody: a single node.
pub struct NoTransport;

impl Transport for NoTransport {
    fn call(&self, url: &str, _: Rpc, _: Vec<u8>, _: Duration) -> TransportFuture {
        let url = url.to_owned();
        Box::pin(async move {
            Err(TransportError::Unreachable(format!(
                "no transport to {url}"
            )))
        })
    }
}

/// How long a node waits for a read index, and at most for its own apply to reach it.
pub const READ_INDEX_TIMEOUT_MS: u64 = 2_000;

pub(crate) fn read_index_timeout() -> Duration {
    Duration::from_millis(READ_INDEX_TIMEOUT_MS)
}

/// Handles a request another node sent: decodes it, runs it, encodes the reply.
pub(crate) async fn serve(
    raft: &crate::types::Raft,
    rpc: Rpc,
    body: &[u8],
) -> Result<Vec<u8>, TransportError> {
    Ok(match rpc {
        Rpc::Append => {
            let request: AppendEntriesRequest<PanshiRaft> = decode(body)?;
            encode(&raft.append_entries(request).await)
        }
        Rpc::Vote => {
            let request: VoteRequest<NodeId> = decode(body)?;
            encode(&raft.vote(request).await)
        }
        Rpc::Snapshot => {
            let request: InstallSnapshotRequest<PanshiRaft> = decode(body)?;
            encode(&raft.install_snapshot(request).await)
        }
        Rpc::ReadIndex => {
            let answer: Result<u64, String> = match raft.get_read_log_id().await {
                Ok((read, _)) => Ok(read.map_or(0, |l| l.index)),
                Err(e) => Err(e.to_string()),
            };
            encode(&answer)
        }
    })
}
