//! A buyer's `Idempotency-Key` answers with its first order for 24 hours, then is free
//! again (issue 15, item 6): against a real `Shop` on a real `Store`, with a clock the
//! test moves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actors::{Clock, OrderRequest, OsEntropy, Settings, Shop};
use engine::order::IDEMPOTENCY_WINDOW_MS;
use engine::{Currency, Product, Sku};

struct TestClock(AtomicU64);

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn settings() -> Settings {
    Settings {
        flash: actors::flash::FlashSettings::default(),
        risk: engine::risk::RiskLimits {
            reserved_units_per_contact_max: 0,
            reserved_units_per_ip_max: 0,
            orders_per_contact_per_window_max: 0,
            orders_per_ip_per_minute_max: 0,
            ..engine::risk::RiskLimits::default()
        },
        payment_methods: actors::payment::default_methods(),
        breaker: engine::breaker::BreakerConfig::default(),
        order_ttl_ms: 15 * 60 * 1000,
        shards_per_sku: 1,
        currency: Currency::parse("CNY").unwrap(),
        public_url: "http://127.0.0.1:8080".into(),
        epay: Some(actors::EpaySettings {
            pid: "1".into(),
            key: "k-0123456789abcdef".into(),
            gateway_url: "http://127.0.0.1:9".into(),
            create_via_mapi: false,
        }),
        sealing_key: actors::seal::SealingKey([7; 32]),
    }
}

fn request(key: &str) -> OrderRequest {
    OrderRequest {
        sku: Sku::parse("idem").unwrap(),
        quantity: 1,
        contact: "a@x.com".into(),
        channel: "epay".into(),
        idempotency_key: Some(key.into()),
        fingerprint: 42,
        client_ip: None,
        vip: false,
        phone: false,
        terms: Default::default(),
    }
}

#[test]
fn a_key_answers_its_first_order_for_a_day_then_starts_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    actix::System::new().block_on(async move {
        let node = replication::Node::start_single(dir.path()).unwrap();
        let store = node.store().clone();
        let start_ms = 1_700_000_000_000;
        let clock = Arc::new(TestClock(AtomicU64::new(start_ms)));
        let shop = Shop::start(
            store.clone(),
            settings(),
            clock.clone(),
            Arc::new(OsEntropy),
        );
        let product = Product {
            sku: Sku::parse("idem").unwrap(),
            name: "Idem".into(),
            price_cents: 100,
            currency: Currency::parse("CNY").unwrap(),
            created_at_ms: start_ms,
        };
        shop.products().create(product).await.unwrap();
        shop.products()
            .import_cards(Sku::parse("idem").unwrap(), b"A\nB\nC\n".to_vec())
            .await
            .unwrap();
        let first = shop.create_order(request("k")).await.unwrap();
        let again = shop.create_order(request("k")).await.unwrap();
        assert_eq!(again.order_id, first.order_id, "a retry within the window");
        clock
            .0
            .store(start_ms + IDEMPOTENCY_WINDOW_MS - 1, Ordering::SeqCst);
        let late = shop.create_order(request("k")).await.unwrap();
        assert_eq!(
            late.order_id, first.order_id,
            "still the first, a millisecond before"
        );
        clock
            .0
            .store(start_ms + IDEMPOTENCY_WINDOW_MS, Ordering::SeqCst);
        let next_day = shop.create_order(request("k")).await.unwrap();
        assert_ne!(
            next_day.order_id, first.order_id,
            "the key is free after 24 hours"
        );
        assert!(store.state().check().is_empty());
        // Tokens are stored only as digests; the buyer's token is derived again.
        let token = shop.order_token(&first.order_id);
        assert!(!first.token.contains(&token));
        assert!(shop.lookup(&first.order_id, &token).is_ok());
        store.close().unwrap();
    });
}
