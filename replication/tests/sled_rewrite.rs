//! sled rewritten whole from a snapshot (a restored data dir, a lost sled, a follower that
//! installs a snapshot) holds every row the log implies: listings, coupons, orders' terms
//! and the shop's identity included, so `panshi audit` finds it clean.

mod common;

use common::{once_coupon, product, sku, with_coupon};
use engine::listing::{IdentityChange, ProductChange};
use engine::{CardId, Event};
use replication::Node;

fn events() -> Vec<Event> {
    vec![
        product(),
        Event::ProductEdited {
            sku: sku(),
            changes: vec![ProductChange::Description("A game key".into())],
            at_ms: 2,
        },
        Event::CardsImported {
            sku: sku(),
            first_card_id: CardId(1),
            keys: vec!["K1".into(), "K2".into()],
        },
        once_coupon(),
        with_coupon(1, 1),
        Event::ShopIdentitySet {
            changes: vec![IdentityChange::Name("Rock shop".into())],
            at_ms: 4,
        },
    ]
}

#[test]
fn sled_rewritten_from_a_snapshot_holds_listings_coupons_terms_and_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let node = Node::start_single(dir.path()).unwrap();
    for event in &events() {
        node.store().commit(event).unwrap().wait_blocking().unwrap();
    }
    runtime.block_on(node.snapshot_now()).unwrap();
    node.shutdown();
    let before = storage::audit::audit(dir.path()).unwrap();
    assert!(before.violations.is_empty(), "{:?}", before.violations);

    // sled gone (a restore writes none): the next start rewrites it from the snapshot.
    std::fs::remove_dir_all(storage::store::sled_dir(dir.path())).unwrap();
    let node = Node::start_single(dir.path()).unwrap();
    node.shutdown();
    let after = storage::audit::audit(dir.path()).unwrap();
    assert!(after.violations.is_empty(), "{:?}", after.violations);
}
