//! `panshi-bench`: the in-process hot path, durably. Each order is created (keys reserved,
//! committed, fdatasync'd, mirrored), paid and delivered (committed the same way), with
//! `concurrency` orders in flight. `--layer actors` goes through the actors exactly as the
//! HTTP edge does; `--layer store` commits the same events straight to storage, to show
//! what the actors cost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::{OrderRequest, Settings, Shop, SystemClock};
use anyhow::Context;
use clap::{Parser, ValueEnum};
use engine::{Currency, Event, Fulfilment, NewOrder, OrderId, Payment, Product, Sku};
use hdrhistogram::Histogram;
use storage::Store;

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Layer {
    Actors,
    Store,
    /// The per-order cost of data at rest alone: derive the order's token and hash it
    /// (creation), open one sealed key (delivery), hash a presented token (lookup); and per
    /// imported key: its keyed digest and its seal. Single-threaded, no I/O.
    AtRest,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 200_000)]
    orders: u64,
    #[arg(long, default_value_t = 512)]
    concurrency: u64,
    #[arg(long, value_enum, default_value_t = Layer::Actors)]
    layer: Layer,
    /// Data dir (a fresh temporary one by default).
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// After the run, measure the state's resident memory per order, by part (`memory`).
    #[arg(long)]
    memory: bool,
    /// Actors layer: import the keys and buy them in this many rounds, each round's keys
    /// imported just before they are bought (a shop restocks; ten million keys imported at
    /// once took more than 24 GB in flight).
    #[arg(long, default_value_t = 1)]
    rounds: u64,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SKU: &str = "bench";
const PRICE_CENTS: u64 = 1000;
const IMPORT_BATCH_KEYS: u64 = 100_000;

struct SeededEntropy(std::sync::atomic::AtomicU64);

impl actors::Entropy for SeededEntropy {
    fn random_u64(&self) -> u64 {
        // splitmix64: distinct ids, no syscalls on the hot path.
        let mut z = self
            .0
            .fetch_add(0x9e37_79b9_7f4a_7c15, std::sync::atomic::Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn random_u128(&self) -> u128 {
        (u128::from(self.random_u64()) << 64) | u128::from(self.random_u64())
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Layer::AtRest = args.layer {
        at_rest(args.orders);
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let data = args.data.clone().unwrap_or_else(|| dir.path().to_owned());
    println!("panshi-bench {args:?}");
    println!(
        "machine: {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let node = replication::Node::start_single(&data).context("opening the data dir")?;
    let store = node.store().clone();
    let (elapsed, latencies) = match args.layer {
        Layer::Actors => actix::System::new().block_on(run_actors(store.clone(), &args))?,
        Layer::Store => run_store(store.clone(), &args)?,
        Layer::AtRest => unreachable!("measured before the store opens"),
    };
    node.shutdown();
    report(&args, elapsed, &latencies);
    if args.memory {
        memory::report(&store.state());
    }
    // The actors still hold the store (and sled's lock), so check the state in-process.
    let violations = store.state().check();
    println!(
        "check: {} orders, {} violations",
        store.state().orders_count(),
        violations.len()
    );
    anyhow::ensure!(
        violations.is_empty(),
        "invariants broken: {:?}",
        &violations[..violations.len().min(5)]
    );
    Ok(())
}

/// Times the cryptography data at rest adds, per order and per imported key.
fn at_rest(count: u64) {
    use actors::cards::{open_key, seal_key};
    let sealer = actors::seal::Sealer::new(&actors::seal::SealingKey([3; 32]));
    let sku = Sku::parse(SKU).unwrap();
    let sealed: Vec<engine::CardKey> = (0..count)
        .map(|i| {
            let card = engine::CardId(i + 1);
            let key = format!("BENCH-KEY-{i:012}");
            engine::CardKey::Sealed(seal_key(&sealer, &sku, card, &key, [7; 12]).sealed)
        })
        .collect();
    let started = std::time::Instant::now();
    let mut opened = 0usize;
    for (i, key) in sealed.iter().enumerate() {
        let order_id = format!("{i:027x}");
        let token = sealer.derive_token("order", &order_id);
        let stored = engine::ids::token_digest(&token);
        opened += open_key(&sealer, engine::CardId(i as u64 + 1), key)
            .unwrap()
            .len();
        assert!(engine::ids::token_matches(&stored, &token));
    }
    let per_order = started.elapsed();
    let started = std::time::Instant::now();
    for i in 0..count {
        let key = format!("BENCH-KEY-{i:012}");
        std::hint::black_box(seal_key(
            &sealer,
            &sku,
            engine::CardId(i + 1),
            &key,
            [7; 12],
        ));
    }
    let per_key = started.elapsed();
    println!(
        "at rest: {:.2} us per order (token derived and hashed, a key opened, a lookup's \
         hash), {:.2} us per imported key (digest and seal); {count} of each, {opened} bytes opened",
        per_order.as_secs_f64() * 1e6 / count as f64,
        per_key.as_secs_f64() * 1e6 / count as f64,
    );
}

fn report(args: &Args, elapsed: Duration, latencies: &Histogram<u64>) {
    let rate = args.orders as f64 / elapsed.as_secs_f64();
    println!(
        "{:?}: {} orders (create + pay + deliver, durable) in {:.2} s = {:.0} orders/s",
        args.layer,
        args.orders,
        elapsed.as_secs_f64(),
        rate
    );
    println!(
        "order latency (create to delivered): p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        latencies.value_at_quantile(0.5) as f64 / 1000.0,
        latencies.value_at_quantile(0.99) as f64 / 1000.0,
        latencies.value_at_quantile(0.999) as f64 / 1000.0,
        latencies.max() as f64 / 1000.0
    );
}

fn product() -> Product {
    Product {
        sku: Sku::parse(SKU).unwrap(),
        name: "Bench".into(),
        price_cents: PRICE_CENTS,
        currency: Currency::parse("CNY").unwrap(),
        created_at_ms: 1,
    }
}

fn key_batch(from: u64, count: u64) -> Vec<u8> {
    (from..from + count)
        .map(|i| format!("BENCH-KEY-{i:012}\n"))
        .collect::<String>()
        .into_bytes()
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

async fn run_actors(store: Arc<Store>, args: &Args) -> anyhow::Result<(Duration, Histogram<u64>)> {
    let settings = Settings {
        sealing_key: actors::seal::SealingKey([0; 32]),
        flash: actors::flash::FlashSettings::default(),
        risk: engine::risk::RiskLimits {
            reserved_units_per_contact_max: 0,
            orders_per_contact_per_window_max: 0,
            ..engine::risk::RiskLimits::default()
        },
        payment_methods: actors::payment::default_methods(),
        breaker: engine::breaker::BreakerConfig::default(),
        order_ttl_ms: 15 * 60 * 1000,
        shards_per_sku: engine::pool::SHARDS_PER_SKU_DEFAULT,
        currency: Currency::parse("CNY")?,
        public_url: "http://127.0.0.1:8080".into(),
        epay: Some(actors::EpaySettings {
            pid: "1".into(),
            key: "k".into(),
            gateway_url: "http://gw".into(),
            create_via_mapi: false,
        }),
    };
    let entropy = Arc::new(SeededEntropy(std::sync::atomic::AtomicU64::new(42)));
    let shop = Shop::start(store, settings, Arc::new(SystemClock), entropy);
    shop.products().create(product()).await?;
    let rounds = args.rounds.clamp(1, args.orders.max(1));
    let (mut imported, mut buying) = (0, Duration::ZERO);
    let mut latencies = new_histogram();
    for round in 0..rounds {
        let round_orders = args.orders / rounds + u64::from(round < args.orders % rounds);
        let stocked = imported + round_orders;
        while imported < stocked {
            let count = IMPORT_BATCH_KEYS.min(stocked - imported);
            shop.products()
                .import_cards(Sku::parse(SKU)?, key_batch(imported, count))
                .await?;
            imported += count;
        }
        let started = Instant::now();
        let per_task = round_orders / args.concurrency;
        let mut tasks = Vec::new();
        for task in 0..args.concurrency {
            let shop = shop.clone();
            let count = per_task + u64::from(task < round_orders % args.concurrency);
            tasks.push(actix::spawn(async move { buy(shop, count).await }));
        }
        for task in tasks {
            latencies.add(task.await??)?;
        }
        buying += started.elapsed();
    }
    Ok((buying, latencies))
}

async fn buy(shop: Shop, count: u64) -> anyhow::Result<Histogram<u64>> {
    let mut latencies = new_histogram();
    for n in 0..count {
        let began = Instant::now();
        let request = OrderRequest {
            sku: Sku::parse(SKU)?,
            quantity: 1,
            contact: "bench@example.com".into(),
            channel: "epay".into(),
            idempotency_key: None,
            fingerprint: n,
            client_ip: None,
            terms: Default::default(),
            vip: false,
            phone: false,
        };
        let order = shop.create_order(request).await?;
        let payment = Payment {
            channel: "epay".into(),
            gateway_trade_no: format!("T{}", order.order_id).into(),
            amount_cents: order.amount_cents,
        };
        shop.apply_payment(&order.order_id, payment).await?;
        latencies.record(began.elapsed().as_micros() as u64)?;
    }
    Ok(latencies)
}

/// The same events, committed straight to storage from `concurrency` threads.
fn run_store(store: Arc<Store>, args: &Args) -> anyhow::Result<(Duration, Histogram<u64>)> {
    store
        .commit(&Event::ProductCreated(product()))?
        .wait_blocking()?;
    let mut imported = 0;
    while imported < args.orders {
        let count = IMPORT_BATCH_KEYS.min(args.orders - imported);
        let keys = (imported..imported + count)
            .map(|i| format!("BENCH-KEY-{i:012}"))
            .collect();
        let first_card_id = engine::CardId(imported + 1);
        store
            .commit(&Event::CardsImported {
                sku: Sku::parse(SKU)?,
                first_card_id,
                keys,
            })?
            .wait_blocking()?;
        imported += count;
    }
    let started = Instant::now();
    let threads = args.concurrency.min(64);
    let per_thread = args.orders / threads;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || commit_orders(&store, t * per_thread, per_thread))
        })
        .collect();
    let mut latencies = new_histogram();
    for handle in handles {
        latencies.add(handle.join().expect("bench thread")?)?;
    }
    Ok((started.elapsed(), latencies))
}

fn commit_orders(store: &Store, first: u64, count: u64) -> anyhow::Result<Histogram<u64>> {
    let mut latencies = new_histogram();
    for n in first..first + count {
        let began = Instant::now();
        let order_id = OrderId::generate(1, n);
        let created = NewOrder {
            order_id: order_id.clone(),
            token: "0".repeat(32),
            trace_id: "0".repeat(32),
            sku: Sku::parse(SKU)?,
            quantity: 1,
            amount_cents: PRICE_CENTS,
            currency: Currency::parse("CNY")?,
            contact: "bench@example.com".into(),
            channel: "epay".into(),
            payment_channel: "epay".into(),
            payment_url: "http://gw/submit.php".into(),
            payment_ref: String::new(),
            created_at_ms: 1,
            expires_at_ms: 900_001,
            cards: vec![engine::CardId(n + 1)],
            idempotency: None,
        };
        store
            .commit(&Event::OrderCreated(std::sync::Arc::new(created)))?
            .wait_blocking()?;
        let payment = Payment {
            channel: "epay".into(),
            gateway_trade_no: format!("T{n}").into(),
            amount_cents: PRICE_CENTS,
        };
        let paid = Event::PaymentApplied {
            order_id,
            payment,
            at_ms: 2,
            fulfilment: Fulfilment::Delivered {
                newly_reserved: vec![],
            },
        };
        store.commit(&paid)?.wait_blocking()?;
        latencies.record(began.elapsed().as_micros() as u64)?;
    }
    Ok(latencies)
}

/// What the state holds in memory per order, by part, as the process's resident memory
/// grows while copies are decoded from their own encoding (as a start decodes a snapshot):
/// the whole state (after a first copy that takes up the pages the run freed), every
/// record, every key's slot, each copy kept until the end so that none reuses another's
/// freed pages.
mod memory {
    use engine::state::ShopState;

    /// Copies of the whole state made at most to take up freed pages.
    const WARM_COPIES_MAX: usize = 6;

    fn config() -> bincode::config::Configuration {
        bincode::config::standard()
    }

    fn rss_bytes() -> i64 {
        panshi_simulations::load::cpu::rss_kib(None).map_or(0, |kib| kib as i64 * 1024)
    }

    /// The resident bytes that `make` adds (what it returns is kept by the caller).
    fn resident<T>(make: impl FnOnce() -> T) -> (T, i64) {
        let before = rss_bytes();
        let made = make();
        (made, rss_bytes() - before)
    }

    fn copy<T: bincode::Encode + bincode::Decode<()>>(value: &T) -> T {
        let bytes = bincode::encode_to_vec(value, config()).expect("encodes");
        bincode::decode_from_slice(&bytes, config())
            .expect("decodes its own encoding")
            .0
    }

    pub fn report(state: &ShopState) {
        // Every order counts for the whole state; records and texts are of those in memory
        // (a snapshot during the run archives the settled ones).
        let (orders, hot) = (state.orders_count() as i64, state.hot_orders_count() as i64);
        let cards = state.cards_count() as i64;
        let hot_cards = state.hot_cards_count() as i64;
        let encoded = bincode::encode_to_vec(state, config()).expect("encodes");
        let decode = || -> ShopState {
            let encoding = engine::state::StateEncoding::HotCards;
            bincode::decode_from_slice_with_context(&encoded, config(), encoding)
                .expect("decodes its own encoding")
                .0
        };
        // The first copies take up the pages the run freed: copies are made until two in a
        // row add the same (within 2%), and the last is the one measured.
        let mut warm = Vec::new();
        let (mut whole, mut whole_bytes) = resident(decode);
        for _ in 0..WARM_COPIES_MAX {
            let (next, next_bytes) = resident(decode);
            let settled = (next_bytes - whole_bytes).abs() * 50 <= next_bytes;
            warm.push(std::mem::replace(&mut whole, next));
            whole_bytes = next_bytes;
            if settled {
                break;
            }
        }
        let (records, record_bytes) = resident(|| {
            let mut records = Vec::with_capacity(hot as usize);
            records.extend(state.hot_orders().map(|(_, record)| copy(record)));
            records
        });
        let (slots, card_bytes) = resident(|| {
            let mut slots = Vec::with_capacity(hot_cards as usize);
            slots.extend(state.hot_cards().map(|(_, slot)| copy(slot)));
            slots
        });
        let mut field_lens = [0usize; 5];
        for (_, record) in state.hot_orders() {
            let created = &record.created;
            for (sum, len) in field_lens.iter_mut().zip([
                created.token.len(),
                created.trace_id.len(),
                created.contact.len(),
                created.payment_url.len(),
                record
                    .payment
                    .as_ref()
                    .map_or(0, |p| p.gateway_trade_no.len()),
            ]) {
                *sum += len;
            }
        }
        drop((warm, whole, records, slots));
        let per = |bytes: i64, of: i64| bytes as f64 / of.max(1) as f64;
        println!(
            "memory: {orders} orders ({hot} in memory), {cards} keys ({hot_cards} in memory): the state {:.1} MB \
             resident ({:.0} B an order), {:.0} B an order encoded",
            whole_bytes as f64 / 1e6,
            per(whole_bytes, orders),
            per(encoded.len() as i64, orders),
        );
        println!(
            "memory: records {:.0} B an order in memory; key slots {:.0} B a key in memory; the rest \
             (indexes, key digests, products, ledgers) {:.0} B an order",
            per(record_bytes, hot),
            per(card_bytes, hot_cards),
            per(whole_bytes - record_bytes - card_bytes, orders),
        );
        let names = [
            "token",
            "trace_id",
            "contact",
            "payment_url",
            "gateway_trade_no",
        ];
        let lens: Vec<String> = names
            .iter()
            .zip(field_lens)
            .map(|(name, sum)| format!("{name} {:.0}", per(sum as i64, hot)))
            .collect();
        println!("memory: mean text lengths in bytes: {}", lens.join(", "));
        if whole_bytes < record_bytes + card_bytes {
            println!(
                "memory: the parts exceed the whole: copies reused pages the run freed, so \
                 these figures do not hold; measure with more orders"
            );
        }
    }
}
