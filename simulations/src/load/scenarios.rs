//! The scenarios: `steady`, `closed`, `ramp`, `flash`, `phases` and `watchers`. Each creates its own product,
//! imports the keys it needs through the operator API, runs, prints its section of the
//! report, and hands back what the final checks need.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::api::Shop;
use super::check::ImportedProduct;
use super::cli::LoadArgs;
use super::closed::{against_nowork, print_ratio, run_closed};
use super::cpu::ServerPid;
use super::flash::{run_flash, run_storm, FlashPlan};
use super::purchase::Ledger;
use super::rate::{run_rate, RateOutcome, RatePlan};
use super::resellers::{run_resellers, ResellersPlan};
use super::server::SpawnedServer;
use super::settle::{wait_quiet, Probe, PROBE_PURCHASES_MAX};
use super::stats::{ms, Endpoint};
use super::watchers::{run_watchers, WatchersPlan};

/// Keys imported beyond the planned purchases, as a fraction of them.
const KEYS_HEADROOM: f64 = 0.05;
/// Keys imported beyond the planned purchases, in addition to the headroom.
const KEYS_SLACK: u64 = 1_000;
/// Most ramp steps.
pub const RAMP_STEPS_MAX: usize = 40;
/// How long the pipeline may take to be calm again after a sale that saturated it (the
/// detector's calm period is 1 s by default).
const CALM_WAIT_MAX: Duration = Duration::from_secs(15);
/// A step must beat the best throughput so far by this fraction to count as rising.
pub const RAMP_GAIN_MIN: f64 = 0.03;
/// Steps in a row without such a rise that end the ramp.
pub const RAMP_FLAT_STEPS_MAX: usize = 2;
/// A step that completes this share of its target rate is sustained.
pub const SUSTAINED_SHARE: f64 = 0.95;

/// What every scenario shares.
pub struct Context {
    pub shop: Arc<Shop>,
    pub server_pid: ServerPid,
    pub load: LoadArgs,
    /// Makes this run's SKUs and keys unique on a server that has seen other runs.
    pub run_id: String,
    /// The product bought while waiting for the server to be quiet.
    pub probe: tokio::sync::Mutex<Probe>,
}

/// What the final checks need from a scenario.
pub struct ScenarioOutcome {
    pub products: Vec<ImportedProduct>,
    pub ledger: Ledger,
    /// Orders that must end paid, exactly (a flash sale's keys).
    pub exact_paid: Option<u64>,
    /// Further checks the scenario made, passed or not.
    pub checks: Vec<(bool, String)>,
}

impl Context {
    fn plan(&self, label: &str, rate_per_sec: f64, duration: Duration) -> RatePlan {
        RatePlan {
            label: label.to_owned(),
            rate_per_sec,
            duration,
            connections: self.load.connections,
            lookup: self.load.lookup,
        }
    }

    /// Keys enough for `rate` purchases per second over `duration`, never short.
    fn keys_for(&self, rate: f64, duration: Duration) -> u64 {
        let planned = rate * duration.as_secs_f64();
        (planned * (1.0 + KEYS_HEADROOM)).ceil() as u64 + KEYS_SLACK + self.load.connections as u64
    }

    async fn stocked_product(&self, name: &str, keys: u64) -> anyhow::Result<ImportedProduct> {
        let sku = format!("load-{}-{name}", self.run_id);
        let started = Instant::now();
        self.shop
            .create_product(&sku, self.load.price_cents)
            .await?;
        let imported = self.shop.import_keys(&sku, 0, keys).await?;
        println!(
            "setup: product {sku}, imported {imported} keys in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        Ok(ImportedProduct { sku, imported })
    }

    /// Waits until the server is quiet (see `settle`), buying the probe product.
    async fn settle(&self) -> anyhow::Result<()> {
        let mut probe = self.probe.lock().await;
        let probe = &mut *probe;
        let product = match &mut probe.product {
            Some(product) => product,
            None => probe
                .product
                .insert(self.stocked_product("probe", PROBE_PURCHASES_MAX).await?),
        };
        self.top_up(product, PROBE_PURCHASES_MAX).await?;
        let (quiet, purchases, took) =
            wait_quiet(&self.shop, &product.sku, &mut probe.ledger).await;
        println!(
            "settle: {} after {purchases} probe purchases in {:.2} s",
            if quiet { "quiet" } else { "NOT quiet" },
            took.as_secs_f64()
        );
        Ok(())
    }

    /// Imports more keys when fewer than `keys` are available.
    async fn top_up(&self, product: &mut ImportedProduct, keys: u64) -> anyhow::Result<()> {
        let stock = self.shop.stock(&product.sku).await?;
        if stock.available >= keys {
            return Ok(());
        }
        let more = keys - stock.available;
        product.imported += self
            .shop
            .import_keys(&product.sku, product.imported, more)
            .await?;
        Ok(())
    }
}

pub async fn steady(
    ctx: &Context,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<ScenarioOutcome> {
    let product = ctx
        .stocked_product("steady", ctx.keys_for(rate, duration))
        .await?;
    ctx.settle().await?;
    let outcome = run_rate(
        &ctx.shop,
        &product.sku,
        &ctx.plan("steady", rate, duration),
        &ctx.server_pid,
    )
    .await;
    outcome.print();
    Ok(ScenarioOutcome {
        products: vec![product],
        ledger: outcome.ledger,
        exact_paid: None,
        checks: Vec::new(),
    })
}

/// Keys per second of a closed-loop run: above what this machine can sell.
const CLOSED_KEYS_PER_SEC: u64 = 25_000;

/// The closed-loop probe, after the no-work server's run when `versus` names its binary.
pub async fn closed(
    ctx: &Context,
    duration: Duration,
    versus: Option<&std::path::Path>,
) -> anyhow::Result<ScenarioOutcome> {
    let connections = ctx.load.connections;
    let ceiling = match versus {
        Some(binary) => {
            let outcome = against_nowork(
                binary,
                ctx.shop.credentials().clone(),
                connections,
                duration,
            )
            .await?;
            outcome.print();
            Some(outcome)
        }
        None => None,
    };
    let keys = CLOSED_KEYS_PER_SEC * duration.as_secs() + KEYS_SLACK;
    let product = ctx.stocked_product("closed", keys).await?;
    ctx.settle().await?;
    let outcome = run_closed(
        "panshi",
        &ctx.shop,
        &product.sku,
        connections,
        duration,
        &ctx.server_pid,
    )
    .await;
    outcome.print();
    if let Some(ceiling) = &ceiling {
        print_ratio(&outcome, ceiling);
    }
    let errors = outcome.stats.errors_total()
        + outcome
            .stats
            .note_count("lookups without exactly the keys bought");
    Ok(ScenarioOutcome {
        products: vec![product],
        ledger: outcome.ledger,
        exact_paid: None,
        checks: vec![(
            errors == 0,
            format!("closed loop: {errors} errors or lookups without exactly the keys bought"),
        )],
    })
}

#[derive(Clone, Copy, Debug)]
pub struct RampPlan {
    pub start: f64,
    pub step: f64,
    pub step_duration: Duration,
    pub max_rate: f64,
}

/// One row of the ramp's summary.
struct RampRow {
    target: f64,
    achieved: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
    own_cpu: f64,
    server_cpu: Option<f64>,
}

impl RampRow {
    fn of(outcome: &RateOutcome) -> Self {
        Self {
            target: outcome.plan.rate_per_sec,
            achieved: outcome.achieved_per_sec(),
            p50_us: outcome.stats.quantile_us(Endpoint::Purchase, 0.5),
            p99_us: outcome.stats.quantile_us(Endpoint::Purchase, 0.99),
            errors: outcome.stats.errors_total(),
            own_cpu: outcome.cpu.own,
            server_cpu: outcome.cpu.server,
        }
    }
}

pub async fn ramp(ctx: &Context, plan: RampPlan) -> anyhow::Result<ScenarioOutcome> {
    let mut product = ctx
        .stocked_product("ramp", ctx.keys_for(plan.start, plan.step_duration))
        .await?;
    let mut ledger = Ledger::default();
    let mut rows = Vec::new();
    let mut best = 0.0_f64;
    let mut flat_steps = 0;
    let mut stop = "ran RAMP_STEPS_MAX steps";
    for step in 0..RAMP_STEPS_MAX {
        let rate = plan.start + plan.step * step as f64;
        if rate > plan.max_rate {
            stop = "reached --max-rate";
            break;
        }
        ctx.top_up(&mut product, ctx.keys_for(rate, plan.step_duration))
            .await?;
        ctx.settle().await?;
        let label = format!("ramp step {} at {rate:.0}/s", step + 1);
        let outcome = run_rate(
            &ctx.shop,
            &product.sku,
            &ctx.plan(&label, rate, plan.step_duration),
            &ctx.server_pid,
        )
        .await;
        outcome.print();
        let row = RampRow::of(&outcome);
        ledger.merge(outcome.ledger);
        if row.achieved > best * (1.0 + RAMP_GAIN_MIN) {
            best = row.achieved;
            flat_steps = 0;
        } else {
            flat_steps += 1;
        }
        rows.push(row);
        if flat_steps >= RAMP_FLAT_STEPS_MAX {
            stop = "throughput stopped rising";
            break;
        }
    }
    print_ramp_summary(&rows, stop);
    Ok(ScenarioOutcome {
        products: vec![product],
        ledger,
        exact_paid: None,
        checks: Vec::new(),
    })
}

fn print_ramp_summary(rows: &[RampRow], stop: &str) {
    println!("\n== ramp summary (stopped: {stop}) ==");
    println!(
        "{:>9}{:>11}{:>10}{:>10}{:>9}{:>10}{:>10}",
        "target/s", "achieved/s", "p50", "p99", "errors", "gen cpu", "srv cpu"
    );
    for row in rows {
        let server = row
            .server_cpu
            .map_or("n/a".to_owned(), |s| format!("{:.1}%", s * 100.0));
        println!(
            "{:>9.0}{:>11.1}{:>10}{:>10}{:>9}{:>9.1}%{:>10}",
            row.target,
            row.achieved,
            ms(row.p50_us),
            ms(row.p99_us),
            row.errors,
            row.own_cpu * 100.0,
            server
        );
    }
    let peak = rows.iter().max_by(|a, b| a.achieved.total_cmp(&b.achieved));
    let knee = rows
        .iter()
        .rfind(|row| row.achieved >= row.target * SUSTAINED_SHARE);
    if let Some(knee) = knee {
        println!(
            "knee: {:.0}/s is the highest target sustained (>= {:.0}% completed), p99 {}",
            knee.target,
            SUSTAINED_SHARE * 100.0,
            ms(knee.p99_us)
        );
    } else {
        println!("knee: no step sustained its target");
    }
    if let Some(peak) = peak {
        println!(
            "peak throughput: {:.1} purchases/s (at target {:.0}/s)",
            peak.achieved, peak.target
        );
    }
}

/// A flash sale; with `versus`, first the opening storm alone against the no-work server,
/// then against this server, so that the sale's create latency has its floor beside it.
pub async fn flash(
    ctx: &Context,
    plan: FlashPlan,
    versus: Option<&std::path::Path>,
) -> anyhow::Result<ScenarioOutcome> {
    if let Some(binary) = versus {
        storm_against_nowork(binary, ctx, plan.buyers).await?;
        let product = ctx.stocked_product("storm", 0).await?;
        ctx.settle().await?;
        let storm = run_storm(&ctx.shop, &product.sku, plan.buyers, &ctx.server_pid).await?;
        storm.print("Panshi, every create answered sold out");
    }
    let product = ctx.stocked_product("flash", plan.keys as u64).await?;
    ctx.settle().await?;
    if plan.room == super::flash::RoomMode::Flash {
        ctx.shop.start_flash_sale(&product.sku).await?;
    }
    let outcome = run_flash(&ctx.shop, &product.sku, plan, &ctx.server_pid).await?;
    outcome.print();
    let mut checks = Vec::new();
    if plan.room == super::flash::RoomMode::Auto {
        checks.push(calm_again(&ctx.shop).await?);
    }
    Ok(ScenarioOutcome {
        products: vec![product],
        ledger: outcome.ledger,
        exact_paid: Some(plan.keys.min(plan.buyers) as u64),
        checks,
    })
}

/// N sockets on N unpaid orders (`watchers`); the product holds a key for each.
pub async fn watchers(ctx: &Context, plan: WatchersPlan) -> anyhow::Result<ScenarioOutcome> {
    let product = ctx.stocked_product("watchers", plan.sockets as u64).await?;
    ctx.settle().await?;
    let outcome = run_watchers(&ctx.shop, &product.sku, plan, &ctx.server_pid).await?;
    Ok(ScenarioOutcome {
        products: vec![product],
        ledger: outcome.ledger,
        exact_paid: Some(outcome.deliveries),
        checks: outcome.checks,
    })
}

/// Resellers' streams under bulk purchases. The reseller orders are not buyer orders, so
/// the product's books are checked here (every key imported is available, reserved or
/// sold; sold = the keys in the 201s) rather than against the buyer ledger.
pub async fn resellers(ctx: &Context, plan: ResellersPlan) -> anyhow::Result<ScenarioOutcome> {
    let product = ctx.stocked_product("resellers", plan.keys()).await?;
    ctx.settle().await?;
    let outcome = run_resellers(
        &ctx.shop,
        &product.sku,
        plan,
        ctx.load.price_cents,
        &ctx.server_pid,
    )
    .await?;
    let mut checks = outcome.checks;
    let stock = ctx.shop.stock(&product.sku).await?;
    checks.push((
        product.imported == stock.available + stock.reserved + stock.sold,
        format!(
            "{}: imported {} = available {} + reserved {} + sold {}",
            product.sku, product.imported, stock.available, stock.reserved, stock.sold
        ),
    ));
    checks.push((
        stock.sold == outcome.keys && outcome.keys > 0,
        format!(
            "{}: sold {} == keys in the resellers' 201s {}",
            product.sku, stock.sold, outcome.keys
        ),
    ));
    Ok(ScenarioOutcome {
        products: Vec::new(),
        ledger: Ledger::default(),
        // No buyer order: nothing for the buyer checks to find.
        exact_paid: Some(0),
        checks,
    })
}

/// The opening storm alone against a spawned no-work server.
async fn storm_against_nowork(
    binary: &std::path::Path,
    ctx: &Context,
    buyers: usize,
) -> anyhow::Result<()> {
    let pid = ServerPid::default();
    let credentials = ctx.shop.credentials().clone();
    let mut server =
        SpawnedServer::start(binary, credentials.clone(), pid.clone(), Vec::new()).await?;
    let shop = Arc::new(Shop::new(server.addr, credentials));
    shop.wait_ready().await?;
    let storm = run_storm(&shop, "nowork", buyers, &pid).await?;
    server.stop().await?;
    storm.print("the no-work server");
    Ok(())
}

/// After a sale that saturated the pipeline: it must leave the saturated state and close
/// its automatic rooms by itself once the crowd is gone (the detector's calm period).
async fn calm_again(shop: &Shop) -> anyhow::Result<(bool, String)> {
    let started = Instant::now();
    while started.elapsed() < CALM_WAIT_MAX {
        let view = shop.pipeline().await?;
        let rooms_open = view["rooms"].as_array().map_or(0, Vec::len);
        if view["saturated"] == false && rooms_open == 0 {
            let after = started.elapsed().as_secs_f64();
            return Ok((
                true,
                format!("the pipeline was calm with no room open {after:.1} s after the sale"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view = shop.pipeline().await?;
    Ok((
        false,
        format!(
            "the pipeline was still saturated or queueing {CALM_WAIT_MAX:?} after the sale: {view}"
        ),
    ))
}

#[derive(Clone, Copy, Debug)]
pub struct PhasesPlan {
    pub baseline: f64,
    pub peak: f64,
    pub phase_duration: Duration,
}

/// Phase 1 at twice the baseline, phase 2 at three times the historical peak, phase 3 at
/// twice the baseline with a kill -9 and restart of a spawned server halfway through.
pub async fn phases(
    ctx: &Context,
    plan: PhasesPlan,
    server: Option<&mut SpawnedServer>,
) -> anyhow::Result<ScenarioOutcome> {
    let d = plan.phase_duration;
    let rates = [plan.baseline * 2.0, plan.peak * 3.0, plan.baseline * 2.0];
    let keys: u64 = rates.iter().map(|rate| ctx.keys_for(*rate, d)).sum();
    let product = ctx.stocked_product("phases", keys).await?;
    ctx.settle().await?;
    let mut ledger = Ledger::default();
    for (label, rate) in [
        ("phase 1: 2x baseline", rates[0]),
        ("phase 2: 3x peak", rates[1]),
    ] {
        let outcome = run_rate(
            &ctx.shop,
            &product.sku,
            &ctx.plan(label, rate, d),
            &ctx.server_pid,
        )
        .await;
        outcome.print();
        ledger.merge(outcome.ledger);
    }
    let plan3 = ctx.plan("phase 3: destructive", rates[2], d);
    let outcome = match server {
        Some(server) => destructive(ctx, &product.sku, &plan3, server).await?,
        None => {
            println!("\nphase 3: the server was not spawned by the harness, so it is not killed");
            run_rate(&ctx.shop, &product.sku, &plan3, &ctx.server_pid).await
        }
    };
    outcome.print();
    ledger.merge(outcome.ledger);
    Ok(ScenarioOutcome {
        products: vec![product],
        ledger,
        exact_paid: None,
        checks: Vec::new(),
    })
}

async fn destructive(
    ctx: &Context,
    sku: &str,
    plan: &RatePlan,
    server: &mut SpawnedServer,
) -> anyhow::Result<RateOutcome> {
    let (outcome, restart) = tokio::join!(
        run_rate(&ctx.shop, sku, plan, &ctx.server_pid),
        kill_and_restart(server, &ctx.shop, plan.duration / 2)
    );
    let (listening, ready) = restart?;
    println!(
        "\nphase 3: kill -9 at {:.1} s; listening again after {:.0} ms, ready after {:.0} ms",
        (plan.duration / 2).as_secs_f64(),
        listening.as_secs_f64() * 1000.0,
        ready.as_secs_f64() * 1000.0
    );
    Ok(outcome)
}

/// Kills the server with SIGKILL after `after`, restarts it on the same port and data
/// dir, and waits until it is ready; returns the times to listening and to ready.
async fn kill_and_restart(
    server: &mut SpawnedServer,
    shop: &Shop,
    after: Duration,
) -> anyhow::Result<(Duration, Duration)> {
    tokio::time::sleep(after).await;
    let killed = Instant::now();
    server.kill9().await?;
    eprintln!("phases: server killed with SIGKILL; restarting");
    server.restart().await?;
    let listening = killed.elapsed();
    shop.wait_ready().await?;
    let ready = killed.elapsed();
    eprintln!(
        "phases: server ready again after {:.0} ms",
        ready.as_secs_f64() * 1000.0
    );
    Ok((listening, ready))
}
