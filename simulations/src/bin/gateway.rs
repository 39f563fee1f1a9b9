//! `panshi-gateway`: a payment gateway simulator (Epay, epusdt, Alipay and WeChat Pay) with
//! fault injection. Alipay and WeChat Pay use the test keys in `simulations/keys/`.
//! Everything lives in `panshi_simulations::gateway`; this file parses the command line,
//! prints the seed and the address, and serves until SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use panshi_simulations::gateway::{self, Config};

#[derive(Parser, Debug)]
#[command(
    name = "panshi-gateway",
    about = "Simulates Epay, epusdt, Alipay and WeChat Pay gateways over HTTP"
)]
struct Cli {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Epay merchant id.
    #[arg(long)]
    pid: String,
    /// Epay merchant key.
    #[arg(long)]
    key: String,
    /// epusdt API token.
    #[arg(long)]
    epusdt_token: String,
    /// Seed for every random choice; from the clock when absent (and printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// actix worker threads.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=gateway::WORKERS_MAX as u64))]
    workers: u64,
    /// First wait between notify attempts, in milliseconds; it doubles per attempt.
    #[arg(long, default_value_t = 1_000)]
    notify_backoff_ms: u64,
    /// Base URL for payment links, when buyers reach the simulator by another address.
    #[arg(long)]
    public_url: Option<String>,
    /// The Alipay application id the shop uses.
    #[arg(long, default_value = gateway::keys::ALIPAY_APP_ID)]
    alipay_app_id: String,
    /// The WeChat Pay merchant id the shop uses.
    #[arg(long, default_value = gateway::keys::WECHAT_MCH_ID)]
    wechat_mch_id: String,
    /// The WeChat Pay AppID the shop uses.
    #[arg(long, default_value = gateway::keys::WECHAT_APP_ID)]
    wechat_app_id: String,
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let seed = cli.seed.unwrap_or_else(clock_seed);
    // The seed goes first, to stderr, so stdout's first line stays the address.
    eprintln!("gateway: seed {seed}");
    let config = Config {
        listen: cli.listen,
        seed,
        workers: cli.workers as usize,
        notify_backoff_first_ms: cli.notify_backoff_ms,
        public_url: cli.public_url,
        handle_signals: true,
        direct: std::sync::Arc::new(gateway::keys::DirectIdentity {
            alipay_app_id: cli.alipay_app_id,
            wechat_mch_id: cli.wechat_mch_id,
            wechat_app_id: cli.wechat_app_id,
            ..gateway::keys::DirectIdentity::test()
        }),
        ..Config::new(&cli.pid, &cli.key, &cli.epusdt_token)
    };
    let gateway = gateway::start(config)
        .await
        .with_context(|| format!("listening on {}", cli.listen))?;
    println!("gateway: listening on http://{}", gateway.addr());
    std::io::stdout().flush().context("writing to stdout")?;
    gateway.wait().await.context("serving")?;
    eprintln!("gateway: stopped");
    Ok(())
}
