//! Replication and failover with real processes: three voters and a learner on loopback,
//! node-to-node links through a fault proxy, buyers under load, `kill -9`, partitions,
//! rolling restarts, backups and membership changes (CONTRACT.md, "Cluster" and "Backup
//! and restore"). One cluster runs at a time (`harness::SERIAL`); node logs go to files.

#[path = "../common/mod.rs"]
mod common;
mod harness;
mod load;

mod backup;
mod failover;
mod formation;
mod membership;
mod partition;
mod quorum;
mod rolling;
