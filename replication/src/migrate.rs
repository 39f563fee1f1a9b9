//! A data dir written before replication holds a log of bare events. At its first start
//! under replication its log is folded into a snapshot of a one-node cluster (this node),
//! and the old log is kept beside it in `log.pre-replication/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use engine::state::ShopState;
use openraft::{Membership, StoredMembership};
use storage::entry::is_pre_replication;
use storage::log::log_dir;
use storage::replay::{self, Chains};
use storage::snapshot::{self, SnapshotHeader};

use crate::node::NodeConfig;
use crate::types::{self, PeerNode, SnapshotMeta};
use crate::Error;

/// Where the old log goes.
pub const PRE_REPLICATION_LOG_DIR: &str = "log.pre-replication";

pub(crate) fn migrate_if_needed(data_dir: &Path, config: &NodeConfig) -> Result<(), Error> {
    let dir = log_dir(data_dir);
    let mut first_is_old = None;
    storage::log::recover(&dir, false, |_, payload| {
        first_is_old.get_or_insert(is_pre_replication(payload));
        Ok(())
    })?;
    if first_is_old != Some(true) {
        return Ok(());
    }
    let mut state = ShopState::default();
    let mut chains = Chains::default();
    let mut last = 0;
    storage::log::recover(&dir, false, |lsn, payload| {
        let entry = replay::decode_any(lsn.0, payload)?;
        replay::apply_entry(&mut state, &mut chains, &entry, |_, _, _| {})?;
        last = lsn.0;
        Ok(())
    })?;
    let me = config.node_id;
    let log_id = types::log_id(1, me, last);
    let url = config.voters.get(&me).cloned().unwrap_or_default();
    let membership = Membership::new(
        vec![BTreeSet::from([me])],
        BTreeMap::from([(me, PeerNode { url })]),
    );
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), membership),
        snapshot_id: format!("{last}-1-migrated"),
    };
    let header = SnapshotHeader {
        meta: serde_json::to_vec(&meta).expect("snapshot metadata encodes"),
        last_index: last,
        last_term: 1,
        chains,
        cold: Vec::new(),
    };
    snapshot::write(&snapshot::snapshot_dir(data_dir), &header, &state, 0)?;
    let old = data_dir.join(PRE_REPLICATION_LOG_DIR);
    std::fs::rename(&dir, &old)?;
    storage::private::create_dir(&dir)?;
    let vote = openraft::Vote::new_committed(1, me);
    write_synced(
        &dir.join("vote"),
        &serde_json::to_vec(&vote).expect("a vote encodes"),
    )?;
    write_synced(
        &dir.join("purged"),
        &serde_json::to_vec(&log_id).expect("a log id encodes"),
    )?;
    std::fs::File::open(data_dir)?.sync_all()?;
    tracing::warn!(
        records = last,
        kept = %old.display(),
        "migrated a data dir from before replication: its log is now a snapshot"
    );
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// Makes `data_dir` (empty or absent) a data dir that serves exactly the state of the
/// snapshot file `from` (a backup), as the only voter `node_id` of a new cluster. Returns
/// the snapshot's header and state summary `(orders, cards)`.
///
/// A restore that fails (a full disk, a damaged file) leaves `data_dir` as it found it:
/// absent, or empty.
pub fn restore(from: &Path, data_dir: &Path, node_id: u64) -> Result<(u64, u64, u64), Error> {
    if !from.is_file() {
        return Err(Error::Config(format!(
            "{}: no such backup file",
            from.display()
        )));
    }
    let existed = data_dir.exists();
    if existed && std::fs::read_dir(data_dir)?.next().is_some() {
        return Err(Error::Config(format!(
            "{} is not empty: restore makes a new data dir",
            data_dir.display()
        )));
    }
    let restored = restore_into(from, data_dir, node_id);
    if restored.is_err() && data_dir.exists() {
        let removed = match existed {
            true => empty_dir(data_dir),
            false => std::fs::remove_dir_all(data_dir),
        };
        if let Err(error) = removed {
            tracing::warn!(%error, dir = %data_dir.display(), "a failed restore left files behind");
        }
    }
    restored
}

fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        match path.is_dir() {
            true => std::fs::remove_dir_all(&path)?,
            false => std::fs::remove_file(&path)?,
        }
    }
    Ok(())
}

fn restore_into(from: &Path, data_dir: &Path, node_id: u64) -> Result<(u64, u64, u64), Error> {
    // A restore is a drill: every archived order is read and checked, not only memory's.
    let snapshot::Loaded { header, state, .. } = storage::bundle::unpack_checked(from, data_dir)?;
    let old: SnapshotMeta = crate::state_machine::decode_meta(&header.meta)?;
    let last = header.last_index;
    let term = header.last_term.max(1);
    let log_id = old
        .last_log_id
        .unwrap_or_else(|| types::log_id(term, node_id, last));
    let membership = Membership::new(
        vec![BTreeSet::from([node_id])],
        BTreeMap::from([(node_id, PeerNode::default())]),
    );
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), membership),
        snapshot_id: format!("{last}-{term}-restored"),
    };
    let restored = SnapshotHeader {
        meta: serde_json::to_vec(&meta).expect("snapshot metadata encodes"),
        ..header
    };
    storage::private::create_dir(data_dir)?;
    snapshot::write(&snapshot::snapshot_dir(data_dir), &restored, &state, 0)?;
    let dir = log_dir(data_dir);
    storage::private::create_dir(&dir)?;
    // A vote past the snapshot's term: this node's first election starts a new term.
    let vote = openraft::Vote::new_committed(log_id.leader_id.term + 1, node_id);
    write_synced(
        &dir.join("vote"),
        &serde_json::to_vec(&vote).expect("a vote encodes"),
    )?;
    write_synced(
        &dir.join("purged"),
        &serde_json::to_vec(&log_id).expect("a log id encodes"),
    )?;
    std::fs::File::open(data_dir)?.sync_all()?;
    let counts = (state.orders_count(), state.cards_count(), last);
    // sled is derived, but building it here (a minute for a million orders) lets the node
    // start in seconds and keeps that minute out of the restore drill's downtime.
    storage::Store::open(data_dir, state, last, last)?.close()?;
    Ok(counts)
}
