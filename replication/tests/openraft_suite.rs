//! openraft's own storage test suite, run against Panshi's log store and state machine on
//! real files.

use openraft::testing::{StoreBuilder, Suite};
use replication::log_store::LogStore;
use replication::state_machine::ShopMachine;
use replication::types::{NodeId, PanshiRaft, StorageError};

struct Builder;

impl StoreBuilder<PanshiRaft, LogStore, ShopMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, ShopMachine), StorageError> {
        let dir = tempfile::tempdir().expect("a temporary dir");
        let (log, machine) = replication::node::open_storage(dir.path()).map_err(|e| {
            StorageError::from(openraft::StorageIOError::<NodeId>::write(
                openraft::AnyError::new(&e),
            ))
        })?;
        Ok((dir, log, machine))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}
