//! The cluster's routes: node-to-node calls, `/leaderz`, `/api/v1/ops/cluster`, membership
//! changes and online backups.

use std::collections::BTreeSet;

use actix_web::{web, HttpRequest, HttpResponse};
use replication::{ClusterStatus, Rpc};
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::operator::require_operator;
use crate::AppState;

/// Chunks a backup is streamed in.
pub const BACKUP_CHUNK_BYTES: usize = 1024 * 1024;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/internal/raft/{call}", web::post().to(raft_call))
        .route("/leaderz", web::get().to(leaderz))
        .route("/api/v1/ops/cluster", web::get().to(cluster_status))
        .route(
            "/api/v1/admin/cluster/learners",
            web::post().to(add_learner),
        )
        .route("/api/v1/admin/cluster/voters", web::put().to(set_voters))
        .route(
            "/api/v1/admin/cluster/members/{node_id}",
            web::delete().to(remove_member),
        )
        .route("/api/v1/admin/backup", web::get().to(backup));
}

async fn raft_call(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let rpc = Rpc::parse(&path).ok_or_else(|| ApiError::not_found("no such call"))?;
    let body = crate::read_body(
        payload,
        replication::network::RPC_BYTES_MAX,
        crate::payload_too_large,
    )
    .await?;
    let signature = request
        .headers()
        .get("Panshi-Cluster")
        .and_then(|v| v.to_str().ok());
    if !state
        .cluster
        .verify(signature, &[rpc.name().as_bytes(), &body])
    {
        return Err(ApiError::unauthorized());
    }
    let reply = state
        .cluster
        .node
        .serve(rpc, body.to_vec())
        .await
        .map_err(|e| ApiError::unavailable("unavailable", e.to_string()))?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(reply))
}

/// 200 on the active leader (a load balancer may send everything there), 503 elsewhere.
async fn leaderz(state: web::Data<AppState>) -> HttpResponse {
    if state.cluster.node.is_active() {
        HttpResponse::Ok().body("leader\n")
    } else {
        HttpResponse::ServiceUnavailable().body("not the leader\n")
    }
}

pub fn status_json(status: &ClusterStatus) -> serde_json::Value {
    json!({
        "node_id": status.node_id,
        "role": status.role.as_str(),
        "leader_id": status.leader_id,
        "term": status.term,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "active": status.active,
        "millis_since_quorum_ack": status.millis_since_quorum_ack,
        "members": status.members.iter().map(|m| json!({
            "node_id": m.node_id,
            "url": m.url,
            "role": m.role.as_str(),
            "matched_index": m.matched_index,
        })).collect::<Vec<_>>(),
    })
}

async fn cluster_status(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    Ok(HttpResponse::Ok().json(status_json(&state.cluster.node.status())))
}

fn membership_error(error: replication::Error) -> ApiError {
    match error {
        replication::Error::NoLeader | replication::Error::Stopped => {
            ApiError::unavailable("no_leader", error.to_string())
        }
        other => ApiError::new(
            actix_web::http::StatusCode::CONFLICT,
            "membership_refused",
            other.to_string(),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LearnerRequest {
    node_id: u64,
    url: String,
}

/// Adds a learner: a node started empty with this id replicates everything (by snapshot
/// first) and never votes.
async fn add_learner(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let body: LearnerRequest = crate::json_body(payload, &state).await?;
    let members = super::parse_members(&format!("{}={}", body.node_id, body.url), "learner")
        .map_err(|e| ApiError::bad_request("bad_request", e.to_string()))?;
    let (id, url) = members.into_iter().next().expect("one member");
    state
        .cluster
        .node
        .add_learner(id, url)
        .await
        .map_err(membership_error)?;
    Ok(HttpResponse::Ok().json(status_json(&state.cluster.node.status())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VotersRequest {
    voters: Vec<u64>,
}

/// Makes exactly these nodes the voters (each already a member: add it as a learner
/// first); nodes no longer voting stay as learners until removed.
async fn set_voters(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let body: VotersRequest = crate::json_body(payload, &state).await?;
    let voters: BTreeSet<u64> = body.voters.into_iter().collect();
    if voters.is_empty() || voters.len() > super::VOTERS_MAX {
        return Err(ApiError::bad_request(
            "bad_request",
            format!("voters must list 1 to {} node ids", super::VOTERS_MAX),
        ));
    }
    state
        .cluster
        .node
        .change_voters(voters)
        .await
        .map_err(membership_error)?;
    Ok(HttpResponse::Ok().json(status_json(&state.cluster.node.status())))
}

/// Removes a member that is not a voter (a learner, or a dead voter demoted first).
async fn remove_member(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let id: u64 = path
        .parse()
        .map_err(|_| ApiError::bad_request("bad_request", "node id must be a positive integer"))?;
    state
        .cluster
        .node
        .remove_nodes(BTreeSet::from([id]))
        .await
        .map_err(membership_error)?;
    Ok(HttpResponse::Ok().json(status_json(&state.cluster.node.status())))
}

/// A consistent copy of the state as a snapshot bundle (the snapshot and its cold tables,
/// `storage::bundle`): everything acknowledged before the
/// request is in it (this node has caught up with the leader before it snapshots).
async fn backup(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let node = &state.cluster.node;
    node.read_barrier()
        .await
        .map_err(|e| ApiError::unavailable("no_leader", e.to_string()))?;
    let file = node
        .backup_bundle()
        .await
        .map_err(|e| ApiError::unavailable("unavailable", e.to_string()))?;
    let file = tokio::fs::File::from_std(file);
    let length = file
        .metadata()
        .await
        .map_err(|e| ApiError::unavailable("unavailable", e.to_string()))?
        .len();
    let chunks = futures_util::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buffer = vec![0u8; BACKUP_CHUNK_BYTES];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(read) => {
                buffer.truncate(read);
                Some((Ok::<_, std::io::Error>(web::Bytes::from(buffer)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header(("Cache-Control", "no-store"))
        .body(actix_web::body::SizedStream::new(length, chunks)))
}
