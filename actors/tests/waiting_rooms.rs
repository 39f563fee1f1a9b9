//! Waiting rooms under concurrency, against a real `Shop` on a real `Store`: buyers join
//! from several threads while the ticker admits them into a small stock and watchers read their
//! tickets; every ticket must reach its outcome, and nothing may deadlock. A newcomer's
//! live position must match the position its 202 gave it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use actors::flash::{FlashSettings, Queued, TicketUpdate, SETTLED_TICKETS_MAX};
use actors::{OrderRequest, OsEntropy, Settings, Shop, SystemClock};
use engine::{Currency, Product, Sku};
use storage::Store;

/// Longest a scenario may run before it counts as stuck (a deadlock never returns).
const SCENARIO_TIME_MAX: Duration = Duration::from_secs(60);

fn settings(admit_per_second: u32) -> Settings {
    Settings {
        flash: FlashSettings {
            admit_per_second,
            ..FlashSettings::default()
        },
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
        shards_per_sku: engine::pool::SHARDS_PER_SKU_DEFAULT,
        currency: Currency::parse("CNY").unwrap(),
        public_url: "http://127.0.0.1:8080".into(),
        epay: Some(actors::EpaySettings {
            pid: "1".into(),
            key: "k".into(),
            gateway_url: "http://127.0.0.1:9".into(),
            create_via_mapi: false,
        }),
        sealing_key: actors::seal::SealingKey([0; 32]),
    }
}

fn request(n: u64) -> OrderRequest {
    OrderRequest {
        sku: Sku::parse("hot").unwrap(),
        quantity: 1,
        contact: format!("b{n}@x.com"),
        channel: "epay".into(),
        idempotency_key: None,
        fingerprint: n,
        client_ip: None,
        terms: Default::default(),
        vip: false,
        phone: false,
    }
}

async fn flash_shop(store: Arc<Store>, admit_per_second: u32, keys: u64) -> Shop {
    let shop = Shop::start(
        store,
        settings(admit_per_second),
        Arc::new(SystemClock),
        Arc::new(OsEntropy),
    );
    let sku = Sku::parse("hot").unwrap();
    let product = Product {
        sku: sku.clone(),
        name: "Hot".into(),
        price_cents: 100,
        currency: Currency::parse("CNY").unwrap(),
        created_at_ms: 1,
    };
    shop.products().create(product).await.unwrap();
    if keys > 0 {
        let body: String = (0..keys).map(|i| format!("KEY-{i:08}\n")).collect();
        shop.products()
            .import_cards(sku.clone(), body.into_bytes())
            .await
            .unwrap();
    }
    shop.set_flash_sale(&sku, true).unwrap();
    shop
}

fn join(shop: &Shop, n: u64) -> Queued {
    match shop.queue_if_needed(request(n)) {
        Ok(Ok(queued)) => queued,
        Ok(Err(_)) => panic!("a flash-sale buyer was served directly"),
        Err(error) => panic!("join refused: {error}"),
    }
}

/// Runs `scenario` in its own actix system; fails when it does not finish in time.
fn run<F, Fut>(scenario: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        actix::System::new().block_on(scenario());
        let _ = done.send(());
    });
    finished
        .recv_timeout(SCENARIO_TIME_MAX)
        .expect("the scenario finished (no deadlock, no panic)");
}

#[test]
fn every_ticket_settles_while_buyers_join_and_watch_from_several_threads() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let node = replication::Node::start_single(dir.path()).unwrap();
        let store = node.store().clone();
        // Few keys and a fast ticker: most tickets are admitted into a sold-out pool and
        // settle as sold out, racing the joins.
        let shop = flash_shop(store, 100_000, 500).await;
        let stop = Arc::new(AtomicBool::new(false));
        let numbers = Arc::new(AtomicU64::new(0));
        let joined: Arc<parking_lot::Mutex<Vec<Queued>>> = Arc::default();
        let mut threads = Vec::new();
        for _ in 0..2 {
            let (shop, stop, numbers, joined) =
                (shop.clone(), stop.clone(), numbers.clone(), joined.clone());
            threads.push(std::thread::spawn(move || {
                // Fewer than the settled tickets kept, so every one can still be read.
                let mut mine = 0;
                while !stop.load(Ordering::Relaxed) && mine < SETTLED_TICKETS_MAX / 4 {
                    mine += 1;
                    let queued = join(&shop, numbers.fetch_add(1, Ordering::Relaxed));
                    joined.lock().push(queued);
                }
            }));
        }
        {
            // A watcher reads tickets throughout, as the live sockets do.
            let (shop, stop, joined) = (shop.clone(), stop.clone(), joined.clone());
            threads.push(std::thread::spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let ticket = {
                        let joined = joined.lock();
                        joined
                            .get(i % joined.len().max(1))
                            .map(|q| (q.ticket, q.token.clone()))
                    };
                    if let Some((ticket, token)) = ticket {
                        let _feed = shop.watch_ticket(ticket, &token).unwrap();
                    }
                    i += 7;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        stop.store(true, Ordering::Relaxed);
        for thread in threads {
            thread.join().unwrap();
        }
        let joined = std::mem::take(&mut *joined.lock());
        assert!(joined.len() > 1_000, "only {} joins", joined.len());
        let settled = |q: &Queued| {
            matches!(
                shop.ticket_now(q.ticket, &q.token),
                Ok(TicketUpdate::SoldOut | TicketUpdate::Admitted(_))
            )
        };
        for _ in 0..300 {
            if joined.iter().all(settled) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let admitted = joined
            .iter()
            .filter(|q| {
                matches!(
                    shop.ticket_now(q.ticket, &q.token),
                    Ok(TicketUpdate::Admitted(_))
                )
            })
            .count();
        assert_eq!(admitted, 500, "exactly the stock was admitted into orders");
        let unsettled: Vec<_> = joined
            .iter()
            .filter(|q| !settled(q))
            .map(|q| q.ticket)
            .collect();
        assert!(
            unsettled.is_empty(),
            "{} of {} tickets never settled, e.g. {:?}",
            unsettled.len(),
            joined.len(),
            &unsettled[..unsettled.len().min(3)]
        );
    });
}

#[test]
fn a_newcomer_sees_the_position_it_was_given() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let node = replication::Node::start_single(dir.path()).unwrap();
        let store = node.store().clone();
        let shop = flash_shop(store, 10, 1_000).await;
        for n in 0..50 {
            join(&shop, n);
        }
        // Some of the first are admitted before the newcomer joins.
        tokio::time::sleep(Duration::from_millis(550)).await;
        let newcomer = join(&shop, 50);
        assert!(newcomer.position < 50, "{}", newcomer.position);
        match shop.ticket_now(newcomer.ticket, &newcomer.token).unwrap() {
            TicketUpdate::Queued { position, .. } => assert!(
                position + 1 >= newcomer.position && position <= newcomer.position,
                "202 said {}, the ticket says {position}",
                newcomer.position
            ),
            other => panic!("still queued expected: {other:?}"),
        }
    });
}
