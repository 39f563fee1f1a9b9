//! Command-line arguments of `panshi-load`: which server to drive, how, and which scenario.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Operator token the harness passes to a server it spawns, and uses by default.
pub const ADMIN_TOKEN_DEFAULT: &str = "load-admin-token-0123456789abcdef";
/// Epay merchant id the harness passes to a server it spawns, and signs notifies with.
pub const EPAY_PID_DEFAULT: &str = "1001";
/// Epay merchant key the harness passes to a server it spawns, and signs notifies with.
pub const EPAY_KEY_DEFAULT: &str = "load-merchant-key";

/// Highest purchase rate any scenario may ask for.
pub const RATE_PER_SEC_MAX: f64 = 100_000.0;
/// Longest run of one rate-driven scenario step.
pub const DURATION_SECS_MAX: u64 = 3_600;
/// Most keep-alive connections of the paced scenarios.
pub const CONNECTIONS_MAX: usize = 4_096;
/// Most generator runtime threads.
pub const THREADS_MAX: usize = 16;
/// Most buyers of a flash sale.
pub const FLASH_BUYERS_MAX: usize = 100_000;
/// Most keys of a flash sale.
pub const FLASH_KEYS_MAX: usize = 1_000_000;
/// Most live sockets of a `watchers` run.
pub const WATCHERS_SOCKETS_MAX: usize = 200_000;
/// Most reseller streams of a `resellers` run (each reseller may open 16; one is enough).
pub const RESELLER_STREAMS_MAX: usize = 20_000;
/// Most keys per reseller purchase in a `resellers` run: an event of 50 keys of about 40
/// bytes fits the raw client's 4 KiB frame buffer.
pub const RESELLER_QUANTITY_MAX: u32 = 50;
/// Longest idle measurement of a `watchers` run.
pub const IDLE_SECS_MAX: u64 = 600;
/// Most leader kills of one failover run.
pub const KILLS_MAX: u32 = 1_000;
/// Most buyers of a failover run.
pub const FAILOVER_BUYERS_MAX: usize = 1_024;
/// Most keys a failover run imports.
pub const FAILOVER_KEYS_MAX: u64 = 10_000_000;

#[derive(Parser, Debug)]
#[command(
    name = "panshi-load",
    about = "Drives a Panshi server over real HTTP and WebSocket, reports latency and CPU, \
             and checks that nothing was oversold or lost"
)]
pub struct Cli {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// Start this `panshi` binary on a free 127.0.0.1 port with a temporary data dir.
    #[arg(long, global = true)]
    pub spawn: Option<PathBuf>,
    /// Base URL of a running server (127.0.0.1 only); unused with --spawn.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    pub base: String,
    /// Operator bearer token.
    #[arg(long, global = true, default_value = ADMIN_TOKEN_DEFAULT)]
    pub admin_token: String,
    /// Epay merchant id (`pid`) of the server.
    #[arg(long, global = true, default_value = EPAY_PID_DEFAULT)]
    pub epay_pid: String,
    /// Epay merchant key of the server.
    #[arg(long, global = true, default_value = EPAY_KEY_DEFAULT)]
    pub epay_key: String,
    /// Keep the spawned server's data dir instead of deleting it.
    #[arg(long, global = true)]
    pub keep_data: bool,
    /// Log level of a spawned server (its `log.level`); its log goes to a file.
    #[arg(long, global = true, default_value = "warn")]
    pub server_log_level: String,
}

#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Keep-alive connections (one worker each) of the paced scenarios.
    #[arg(long, global = true, default_value_t = 256)]
    pub connections: usize,
    /// Generator runtime threads (1 keeps the generator on one core).
    #[arg(long, global = true, default_value_t = 1)]
    pub threads: usize,
    /// Also look every order up (GET /api/v1/orders/{id}?token=) after paying it.
    #[arg(long, global = true)]
    pub lookup: bool,
    /// Price of the products the harness creates.
    #[arg(long, global = true, default_value_t = 1_000)]
    pub price_cents: u64,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// A fixed rate of full purchases (create, pay, optionally look up).
    Steady {
        /// Purchases started per second.
        #[arg(long, default_value_t = 1_000.0)]
        rate: f64,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// Closed loop: every connection buys back to back (create, notify, lookup that must
    /// show exactly one key); reports purchases/s and the server's CPU and context
    /// switches per purchase. With --versus, the no-work server first, then Panshi.
    Closed {
        /// Seconds of each run.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// The `panshi-nowork` binary: run the same probe against it first.
        #[arg(long)]
        versus: Option<PathBuf>,
    },
    /// Raises the rate step by step until throughput stops rising; reports the knee.
    Ramp {
        /// Rate of the first step.
        #[arg(long, default_value_t = 1_000.0)]
        start: f64,
        /// Rate added per step.
        #[arg(long, default_value_t = 1_000.0)]
        step: f64,
        /// Seconds per step.
        #[arg(long, default_value_t = 5)]
        step_duration: u64,
        /// Highest rate tried.
        #[arg(long, default_value_t = 30_000.0)]
        max_rate: f64,
    },
    /// K keys, M buyers at once: each orders one, watches it live, pays; exactly K win.
    Flash {
        #[arg(long, default_value_t = 1_000)]
        keys: usize,
        #[arg(long, default_value_t = 20_000)]
        buyers: usize,
        /// Waiting room: off (buyers served at once), flash (the operator's flash-sale
        /// switch), auto (the server's overload detection at its default thresholds).
        #[arg(long, value_enum, default_value_t = super::flash::RoomMode::Off)]
        waiting_room: super::flash::RoomMode,
        /// Every buyer sets the optional lookup password (the server hashes it for an
        /// order it makes).
        #[arg(long)]
        lookup_password: bool,
        /// First run the opening storm alone (every buyer's create at the same instant,
        /// nothing after) against this no-work server binary (`panshi-nowork`), then
        /// against Panshi: the floor of the create latency on this machine.
        #[arg(long)]
        versus: Option<std::path::PathBuf>,
    },
    /// Twice a baseline rate, three times a historical peak, then a kill -9 and restart
    /// mid-run (with --spawn).
    Phases {
        /// Baseline purchases per second; phase 1 runs at twice this.
        #[arg(long, default_value_t = 500.0)]
        baseline: f64,
        /// Historical peak purchases per second; phase 2 runs at three times this.
        #[arg(long, default_value_t = 1_000.0)]
        peak: f64,
        /// Seconds per phase.
        #[arg(long, default_value_t = 10)]
        phase_duration: u64,
    },
    /// N buyers watch N unpaid orders over live sockets: the server's RSS per socket, its
    /// CPU while they idle, then R deliveries a second and the push latency to the sockets.
    Watchers(WatchersArgs),
    /// N resellers hold their streams open while bulk purchases flow through them at R a
    /// second, and one more reseller's stream reads nothing: push latency to the streams,
    /// no gap and no repeat on any, the slow reader cut off and resumed from its cursor.
    Resellers(ResellersArgs),
    /// Three nodes (with --spawn) under a steady load; the leader is killed with kill -9
    /// again and again and restarted after a pause. Reports how long writes took to resume
    /// after each kill and the acknowledged work lost (must be 0), then audits and compares.
    Failover(FailoverArgs),
}

#[derive(Args, Debug, Clone)]
pub struct WatchersArgs {
    /// Order sockets held open at once.
    #[arg(long, default_value_t = 10_000)]
    pub sockets: usize,
    /// Orders paid per second once the sockets are open (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub deliveries_per_sec: f64,
    /// Seconds of deliveries.
    #[arg(long, default_value_t = 5)]
    pub duration: u64,
    /// Seconds of CPU measurement with every socket open and idle.
    #[arg(long, default_value_t = 10)]
    pub idle_secs: u64,
}

#[derive(Args, Debug, Clone)]
pub struct ResellersArgs {
    /// Resellers, each with one stream open and read.
    #[arg(long, default_value_t = 1_000)]
    pub streams: usize,
    /// Purchases a second, round-robin over those resellers.
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,
    /// Keys per purchase.
    #[arg(long, default_value_t = 10)]
    pub quantity: u32,
    /// Seconds of purchases.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Purchases a second of one more reseller whose stream reads nothing (0: none). The
    /// kernel holds up to 4 MiB of its events before the server's own queue fills, so the
    /// default buys enough (3,000 events of about 2 KB) to be cut off within 10 s.
    #[arg(long, default_value_t = 300.0)]
    pub slow_rate: f64,
    /// Keys per purchase of that reseller.
    #[arg(long, default_value_t = 50)]
    pub slow_quantity: u32,
    /// The control run: that reseller's stream is read like the others (same load, no
    /// stalled reader), to tell what the stall costs the others from what its load costs.
    #[arg(long)]
    pub slow_reader_reads: bool,
}

impl ResellersArgs {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=RESELLER_STREAMS_MAX).contains(&self.streams),
            "--streams must be 1 to {RESELLER_STREAMS_MAX}"
        );
        for (name, quantity) in [
            ("--quantity", self.quantity),
            ("--slow-quantity", self.slow_quantity),
        ] {
            anyhow::ensure!(
                (1..=RESELLER_QUANTITY_MAX).contains(&quantity),
                "{name} must be 1 to {RESELLER_QUANTITY_MAX} (each event must fit the raw \
                 client's frame buffer)"
            );
        }
        check_rate(self.rate)?;
        if self.slow_rate != 0.0 {
            check_rate(self.slow_rate)?;
        }
        check_duration(self.duration)
    }
}

impl WatchersArgs {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=WATCHERS_SOCKETS_MAX).contains(&self.sockets),
            "--sockets must be 1 to {WATCHERS_SOCKETS_MAX}"
        );
        anyhow::ensure!(
            (1..=IDLE_SECS_MAX).contains(&self.idle_secs),
            "--idle-secs must be 1 to {IDLE_SECS_MAX}"
        );
        if self.deliveries_per_sec != 0.0 {
            check_rate(self.deliveries_per_sec)?;
        }
        check_duration(self.duration)
    }
}

#[derive(Args, Debug, Clone)]
pub struct FailoverArgs {
    /// Leader kills.
    #[arg(long, default_value_t = 20)]
    pub kills: u32,
    /// Purchases started per second, across all buyers.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Concurrent buyers.
    #[arg(long, default_value_t = 16)]
    pub buyers: usize,
    /// Seconds a killed node stays down.
    #[arg(long, default_value_t = 3)]
    pub down_secs: u64,
    /// Seconds of steady load before the first kill and after each node's return.
    #[arg(long, default_value_t = 2)]
    pub settle_secs: u64,
    /// Keys imported for the run.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
}

impl FailoverArgs {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=KILLS_MAX).contains(&self.kills),
            "--kills must be 1 to {KILLS_MAX}"
        );
        anyhow::ensure!(
            (1..=FAILOVER_BUYERS_MAX).contains(&self.buyers),
            "--buyers must be 1 to {FAILOVER_BUYERS_MAX}"
        );
        anyhow::ensure!(
            (1..=FAILOVER_KEYS_MAX).contains(&self.keys),
            "--keys must be 1 to {FAILOVER_KEYS_MAX}"
        );
        check_rate(self.rate)?;
        check_duration(self.down_secs)?;
        check_duration(self.settle_secs)
    }
}

impl Cli {
    /// Refuses values outside the named bounds, so every loop stays bounded.
    pub fn validate(&self) -> anyhow::Result<()> {
        let load = &self.load;
        anyhow::ensure!(
            (1..=CONNECTIONS_MAX).contains(&load.connections),
            "--connections must be 1 to {CONNECTIONS_MAX}"
        );
        anyhow::ensure!(
            (1..=THREADS_MAX).contains(&load.threads),
            "--threads must be 1 to {THREADS_MAX}"
        );
        anyhow::ensure!(load.price_cents >= 1, "--price-cents must be positive");
        match &self.scenario {
            Scenario::Steady { rate, duration } => {
                check_rate(*rate)?;
                check_duration(*duration)
            }
            Scenario::Ramp {
                start,
                step,
                step_duration,
                max_rate,
            } => {
                check_rate(*start)?;
                check_rate(*step)?;
                check_rate(*max_rate)?;
                check_duration(*step_duration)
            }
            Scenario::Closed { duration, .. } => check_duration(*duration),
            Scenario::Flash { keys, buyers, .. } => {
                anyhow::ensure!(
                    (1..=FLASH_KEYS_MAX).contains(keys),
                    "--keys must be 1 to {FLASH_KEYS_MAX}"
                );
                anyhow::ensure!(
                    (1..=FLASH_BUYERS_MAX).contains(buyers),
                    "--buyers must be 1 to {FLASH_BUYERS_MAX}"
                );
                Ok(())
            }
            Scenario::Watchers(args) => args.validate(),
            Scenario::Resellers(args) => args.validate(),
            Scenario::Phases {
                baseline,
                peak,
                phase_duration,
            } => {
                check_rate(baseline * 2.0)?;
                check_rate(peak * 3.0)?;
                check_duration(*phase_duration)
            }
            Scenario::Failover(args) => {
                anyhow::ensure!(
                    self.target.spawn.is_some(),
                    "failover needs --spawn (it starts and kills the nodes itself)"
                );
                args.validate()
            }
        }
    }
}

fn check_rate(rate: f64) -> anyhow::Result<()> {
    anyhow::ensure!(
        rate.is_finite() && rate > 0.0 && rate <= RATE_PER_SEC_MAX,
        "rates must be above 0 and at most {RATE_PER_SEC_MAX}/s (got {rate})"
    );
    Ok(())
}

fn check_duration(secs: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=DURATION_SECS_MAX).contains(&secs),
        "durations must be 1 to {DURATION_SECS_MAX} s"
    );
    Ok(())
}

/// Seconds as a `Duration`, for the bounded values above.
pub fn secs(value: u64) -> Duration {
    Duration::from_secs(value)
}
