//! `panshi-load`: drives a running Panshi server over real HTTP and WebSocket, measures it,
//! and checks afterwards that nothing was oversold or lost.
//!
//! Scenarios (`scenarios`): `steady` (a fixed purchase rate), `closed` (back to back,
//! optionally against the no-work server), `ramp` (rising rates until
//! throughput stops rising), `flash` (K keys, M buyers at once, live sockets, optionally through a waiting room) and `phases`
//! (2x baseline, 3x historical peak, then `kill -9` and restart of a spawned server),
//! `watchers` (N order sockets held open: server memory per socket, idle CPU, push latency),
//! `resellers` (N reseller streams read while bulk purchases flow, and one slow reader)
//! and `failover` (three spawned nodes, the leader killed again and again under load).
//! Each prints a report with the exact command line, per-endpoint throughput and
//! percentiles (hdrhistogram), errors by kind, and the CPU share of the generator and the
//! server; a progress line goes to stderr every second.
//!
//! Invariants: only 127.0.0.1 is ever targeted; every loop is bounded in count and time by
//! a named constant; the run fails (non-zero exit) when any end-of-run check fails
//! (`check`), including `panshi audit` on a server the harness spawned.
//!
//! Design decision: HTTP goes through a small raw HTTP/1.1 keep-alive client (`http`)
//! instead of reqwest, because the generator shares a 2-core machine with the server and
//! reqwest costs about five times the CPU per purchase; whatever the generator burns is
//! taken from the server it measures.

pub mod api;
pub mod check;
pub mod cli;
pub mod closed;
pub mod cpu;
pub mod failover;
pub mod flash;
pub mod http;
pub mod progress;
pub mod purchase;
pub mod rate;
pub mod raw_ws;
pub mod resellers;
pub mod scenarios;
pub mod server;
pub mod settle;
pub mod stats;
pub mod watchers;
pub mod ws;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use api::{Credentials, Shop};
use check::Checks;
use cli::{secs, Cli, Scenario};
use cpu::{cores, load_average, ServerPid};
use flash::FlashPlan;
use resellers::ResellersPlan;
use scenarios::{Context, PhasesPlan, RampPlan, ScenarioOutcome};
use server::{loopback_address, SpawnedServer};
use watchers::WatchersPlan;

/// Runs the chosen scenario and the checks; `Ok(false)` when a check failed.
pub async fn run(cli: Cli, command_line: String) -> anyhow::Result<bool> {
    println!("command: {command_line}");
    raise_open_files_limit();
    println!(
        "machine: {} cores, load average {} at start",
        cores(),
        load_average()
    );
    let credentials = Credentials {
        admin_token: cli.target.admin_token.clone(),
        epay_pid: cli.target.epay_pid.clone(),
        epay_key: cli.target.epay_key.clone(),
    };
    if let (Scenario::Failover(args), Some(binary)) = (&cli.scenario, &cli.target.spawn) {
        return failover::run(binary, credentials, args).await;
    }
    let server_pid = ServerPid::default();
    let mut server = match &cli.target.spawn {
        Some(binary) => {
            let mut env = server_env(&cli.scenario);
            env.push((
                "PANSHI_LOG__LEVEL".to_owned(),
                cli.target.server_log_level.clone(),
            ));
            Some(SpawnedServer::start(binary, credentials.clone(), server_pid.clone(), env).await?)
        }
        None => None,
    };
    let addr = match &server {
        Some(server) => server.addr,
        None => loopback_address(&cli.target.base)?,
    };
    describe_server(server.as_ref(), addr);
    let shop = Arc::new(Shop::new(addr, credentials));
    shop.wait_ready().await?;
    let ctx = Context {
        shop,
        server_pid,
        load: cli.load.clone(),
        run_id: run_id(),
        probe: Default::default(),
    };
    let outcome = run_scenario(&ctx, &cli.scenario, server.as_mut()).await?;
    let mut checks = Checks::default();
    check_outcome(&ctx, outcome, &mut checks).await?;
    if let Some(server) = server.as_mut() {
        check::finish_server(server, &mut checks).await;
        report_server_log(server, &cli.target.server_log_level);
        if cli.target.keep_data {
            println!("data kept in {}", server.keep().display());
        }
    }
    println!("machine: load average {} at end", load_average());
    checks.print();
    Ok(checks.passed())
}

/// Settings for a spawned server beyond the harness's fixed ones: the automatic waiting
/// room is off (its thresholds out of reach) unless a flash sale asks for it, since the
/// paced scenarios measure the order pipeline itself and count a 202 as an error.
fn server_env(scenario: &Scenario) -> Vec<(String, String)> {
    let mut env = watchers_env(scenario);
    let auto = matches!(
        scenario,
        Scenario::Flash {
            waiting_room: flash::RoomMode::Auto,
            ..
        }
    );
    if !auto {
        env.extend(
            [
                "PANSHI_OVERLOAD__INFLIGHT_HIGH",
                "PANSHI_OVERLOAD__LATENCY_HIGH_MS",
            ]
            .iter()
            .map(|key| (key.to_string(), u32::MAX.to_string())),
        );
    }
    env
}

/// Room for `watchers`' and `resellers`' sockets (all from this host) beyond the
/// production defaults: every socket may land on one worker, and the harness's own HTTP
/// connections come on top. `resellers` also lifts the per-key purchase limit, which its
/// slow reader's own purchases (one key, many a second) would otherwise hit.
fn watchers_env(scenario: &Scenario) -> Vec<(String, String)> {
    let (sockets, mut env) = match scenario {
        Scenario::Watchers(args) => (args.sockets, Vec::new()),
        Scenario::Resellers(args) => {
            let per_key = (args.slow_rate.max(1.0) * 2.0).ceil().to_string();
            let env = vec![
                (
                    "PANSHI_RESELLERS__RATE_PER_SECOND".to_owned(),
                    per_key.clone(),
                ),
                ("PANSHI_RESELLERS__RATE_BURST".to_owned(), per_key),
            ];
            (args.streams + 1, env)
        }
        _ => return Vec::new(),
    };
    let room = (sockets + WATCHERS_CONNECTIONS_SLACK).to_string();
    env.extend([
        ("PANSHI_HTTP__WEBSOCKETS_MAX".to_owned(), room.clone()),
        ("PANSHI_HTTP__CONNECTIONS_PER_WORKER_MAX".to_owned(), room),
    ]);
    env
}

/// Connections beyond the sockets: order creation, payments, checks.
const WATCHERS_CONNECTIONS_SLACK: usize = 1_024;

/// Raises this process's open-file limit to its hard limit, as a deployment would for a
/// server holding many sockets; a spawned server inherits it. Failure only costs sockets.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    if let Err(error) = setrlimit(Resource::Nofile, raised) {
        eprintln!("panshi-load: raising the open-file limit: {error}");
    }
    let limit = getrlimit(Resource::Nofile);
    println!(
        "open files: limit {} (hard {})",
        limit
            .current
            .map_or("unlimited".to_owned(), |n| n.to_string()),
        limit
            .maximum
            .map_or("unlimited".to_owned(), |n| n.to_string())
    );
}

fn describe_server(server: Option<&SpawnedServer>, addr: std::net::SocketAddr) {
    match server {
        Some(server) => println!(
            "server: spawned pid {} on {addr}, data {}, log {}",
            server.current_pid().unwrap_or(0),
            server.data_dir.display(),
            server.log_path.display()
        ),
        None => println!("server: {addr}, not spawned (no server CPU, no kill, no audit)"),
    }
}

fn run_id() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{ms:x}")
}

async fn run_scenario(
    ctx: &Context,
    scenario: &Scenario,
    server: Option<&mut SpawnedServer>,
) -> anyhow::Result<ScenarioOutcome> {
    match *scenario {
        Scenario::Steady { rate, duration } => scenarios::steady(ctx, rate, secs(duration)).await,
        Scenario::Closed {
            duration,
            ref versus,
        } => scenarios::closed(ctx, secs(duration), versus.as_deref()).await,
        Scenario::Ramp {
            start,
            step,
            step_duration,
            max_rate,
        } => {
            let plan = RampPlan {
                start,
                step,
                step_duration: secs(step_duration),
                max_rate,
            };
            scenarios::ramp(ctx, plan).await
        }
        Scenario::Flash {
            keys,
            buyers,
            waiting_room,
            lookup_password,
            ref versus,
        } => {
            let plan = FlashPlan {
                keys,
                buyers,
                room: waiting_room,
                lookup_password,
            };
            scenarios::flash(ctx, plan, versus.as_deref()).await
        }
        Scenario::Phases {
            baseline,
            peak,
            phase_duration,
        } => {
            let plan = PhasesPlan {
                baseline,
                peak,
                phase_duration: secs(phase_duration),
            };
            scenarios::phases(ctx, plan, server).await
        }
        Scenario::Watchers(ref args) => {
            let plan = WatchersPlan {
                sockets: args.sockets,
                deliveries_per_sec: args.deliveries_per_sec,
                duration: secs(args.duration),
                idle: secs(args.idle_secs),
            };
            scenarios::watchers(ctx, plan).await
        }
        Scenario::Resellers(ref args) => {
            let plan = ResellersPlan {
                streams: args.streams,
                rate: args.rate,
                quantity: args.quantity,
                duration: secs(args.duration),
                slow_rate: args.slow_rate,
                slow_quantity: args.slow_quantity,
                slow_reads: args.slow_reader_reads,
            };
            scenarios::resellers(ctx, plan).await
        }
        Scenario::Failover(_) => anyhow::bail!("failover starts its own nodes (--spawn)"),
    }
}

/// The books of the scenario and of the probe purchases made while settling.
async fn check_outcome(
    ctx: &Context,
    mut outcome: ScenarioOutcome,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    for (ok, text) in std::mem::take(&mut outcome.checks) {
        checks.add(ok, text);
    }
    check::reconcile(&ctx.shop, &mut outcome.ledger, checks).await;
    let paid = outcome.ledger.paid.len();
    // A run that planned no payment (`watchers` without deliveries) measured its sockets.
    checks.add(
        paid > 0 || outcome.exact_paid == Some(0),
        format!("{paid} orders paid: the run measured something"),
    );
    if let Some(expected) = outcome.exact_paid {
        let paid = outcome.ledger.paid_quantity();
        checks.add(
            paid == expected,
            format!("exactly {expected} keys won and paid: {paid}"),
        );
    }
    let mut probe = std::mem::take(&mut *ctx.probe.lock().await);
    check::reconcile(&ctx.shop, &mut probe.ledger, checks).await;
    outcome.products.extend(probe.product);
    outcome.ledger.merge(probe.ledger);
    check::check_stock(&ctx.shop, &outcome.products, &outcome.ledger, checks).await?;
    check::check_delivered(&ctx.shop, &outcome.ledger.paid, checks).await;
    Ok(())
}

fn report_server_log(server: &SpawnedServer, level: &str) {
    let (lines, tail) = server.log_tail();
    println!(
        "\nserver log: {lines} lines (level {level}) in {}",
        server.log_path.display()
    );
    for line in tail {
        println!("log> {line}");
    }
}

/// The command line as typed, quoted where a shell would need it.
pub fn command_line() -> String {
    std::env::args()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@".contains(&b));
            if plain {
                arg
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
