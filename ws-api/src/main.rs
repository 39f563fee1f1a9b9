//! The `panshi` binary: `serve` runs the shop, `audit` checks a stopped data dir.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpServer};
use actors::{CommitMetrics, EpaySettings, OsEntropy, Settings, Shop, SystemClock};
use anyhow::Context;
use clap::{Parser, Subcommand};
use engine::Currency;
use replication::Node;
use storage::Store;
use ws_api::cluster::Cluster;
use ws_api::mail::{Mailer, OperatorMail};
use ws_api::notify::Notifier;
use ws_api::observe::Observatory;
use ws_api::settings::{self, ServerSettings};
use ws_api::AppState;

/// glibc's malloc showed up at 10-15% of CPU under load (many threads freeing what others
/// allocated); mimalloc handles that pattern far better.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "panshi",
    version,
    about = "Panshi (磐石): an auto-delivery card shop that does not fall over"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Shown under `panshi serve --help`.
const SERVE_AFTER_HELP: &str = "\
Settings come from, each overriding the one before: the defaults, the --config file, the
environment, these flags. Every setting can be set in the environment with the prefix
PANSHI_ and __ between levels, for example:
  PANSHI_ADMIN_TOKEN          the operator token (else a random one is printed at start)
  PANSHI_PUBLIC_URL           the address gateways and buyers reach the shop at
  PANSHI_EPAY__PID, PANSHI_EPAY__KEY, PANSHI_EPAY__GATEWAY_URL    the Epay gateway
  PANSHI_SMTP__HOST, PANSHI_SMTP__FROM    e-mail to buyers
  PANSHI_LOG__FORMAT          auto (text on a terminal, else JSON), json or text
panshi.example.toml lists every setting with its default; `panshi config check FILE`
validates a file. SIGTERM or Ctrl-C stops gracefully: requests in flight finish first.";

/// Shown under `panshi audit --help`.
const AUDIT_ABOUT: &str = "\
Check a stopped data dir against every invariant

Replays the log through the engine without changing anything, re-derives every invariant
(no key sold twice, stock conserved, every paid order delivered or in manual review, reseller
ledgers, the mail outbox) and compares the sled mirror with the log. Run it on a data dir no
server is using: stop the server first, or audit a copy.

Exit status: 0 when clean, 1 when a violation was found, 2 when the data dir could not be
audited (missing, not a data dir, or held by a running server). The last line reads
`audit: <N> orders, <M> cards, <V> violations`.";

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    #[command(after_help = SERVE_AFTER_HELP)]
    Serve {
        /// Address to listen on; port 0 picks a free port (the bound address is printed).
        /// [default: 127.0.0.1:8080] [setting: listen, env: PANSHI_LISTEN]
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Data directory, created when missing.
        /// [default: ./panshi-data] [setting: data, env: PANSHI_DATA]
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// TOML settings file (see panshi.example.toml). [default: none]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Seed a demo catalogue and mount the demo payment gateway.
        /// [setting: demo, env: PANSHI_DEMO]
        #[arg(long)]
        demo: bool,
    },
    #[command(about = "Check a stopped data dir against every invariant", long_about = AUDIT_ABOUT)]
    Audit {
        /// The data dir to check.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Other nodes' data dirs (stopped) to compare with `--data`.
        #[arg(long, num_args = 1..)]
        compare: Vec<PathBuf>,
    },
    /// Write a consistent copy of a running node's state to a file, without stopping it:
    /// everything acknowledged before the command started is in it.
    Backup {
        /// The node's base URL, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        url: String,
        /// Where the copy goes (written whole, then renamed into place).
        #[arg(long)]
        to: PathBuf,
        /// The operator token (or PANSHI_ADMIN_TOKEN).
        #[arg(long, env = "PANSHI_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Make a new data dir from a backup: it serves exactly that state, as a single node or
    /// as the first node of a new cluster.
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// The new data dir (must be empty or absent).
        #[arg(long)]
        data: PathBuf,
        /// The node id it starts as (1 for a single node).
        #[arg(long, default_value_t = 1)]
        node_id: u64,
    },
    /// Check configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Tools for resellers.
    Reseller {
        #[command(subcommand)]
        command: ResellerCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a TOML settings file: exit 0 when every key is known and every value valid,
    /// else name each unknown key or bad value and exit 1. Warnings are printed either way.
    Check {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ResellerCommand {
    /// Follow the reseller's stream: one JSON line per event on stdout, resuming from the
    /// cursor file across restarts and reconnecting when the socket closes.
    Watch {
        /// The server's base URL, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        base: String,
        /// The reseller's API key (or PANSHI_RESELLER_KEY, which keeps it out of `ps`).
        #[arg(long, env = "PANSHI_RESELLER_KEY")]
        key: String,
        /// Where the last seq is kept (atomically replaced after each event).
        #[arg(long)]
        cursor_file: Option<PathBuf>,
    },
}

/// Exit status of a configuration that does not load.
const EXIT_CONFIGURATION: u8 = 2;

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    match Cli::parse().command {
        Command::Serve {
            listen,
            data,
            config,
            demo,
        } => {
            let mut overrides = Vec::new();
            if let Some(listen) = listen {
                overrides.push(("listen", listen));
            }
            if let Some(data) = data {
                overrides.push(("data", data.display().to_string()));
            }
            if demo {
                overrides.push(("demo", "true".to_owned()));
            }
            let settings = match settings::load(config.as_deref(), &overrides) {
                Ok(settings) => settings,
                Err(problems) => {
                    report_problems(&problems);
                    return ExitCode::from(EXIT_CONFIGURATION);
                }
            };
            match serve(settings) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("panshi: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Audit { data, compare } => audit(&data, &compare),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check(&file),
        Command::Backup { url, to, token } => ws_api::backup::backup(&url, &to, &token),
        Command::Restore {
            from,
            data,
            node_id,
        } => ws_api::backup::restore(&from, &data, node_id),
        Command::Reseller {
            command:
                ResellerCommand::Watch {
                    base,
                    key,
                    cursor_file,
                },
        } => watch(ws_api::watch::WatchOptions {
            base,
            api_key: key,
            cursor_file,
        }),
    }
}

fn report_problems(problems: &settings::Problems) {
    eprintln!(
        "panshi: the configuration has {} problem(s):",
        problems.0.len()
    );
    for problem in &problems.0 {
        eprintln!("  - {problem}");
    }
}

/// `panshi config check FILE`.
fn config_check(file: &std::path::Path) -> ExitCode {
    match settings::check_file(file) {
        Ok(settings) => {
            for warning in settings.warnings() {
                println!("warning: {warning}");
            }
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(problems) => {
            report_problems(&problems);
            ExitCode::FAILURE
        }
    }
}

fn watch(options: ws_api::watch::WatchOptions) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = runtime
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(ws_api::watch::run(options)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("panshi watch: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn audit(data: &std::path::Path, compare: &[PathBuf]) -> ExitCode {
    if !compare.is_empty() {
        let mut dirs = vec![data.to_owned()];
        dirs.extend(compare.iter().cloned());
        return audit_compare(&dirs);
    }
    match storage::audit::audit(data) {
        Ok(report) => {
            for note in &report.notes {
                println!("note: {note}");
            }
            for violation in &report.violations {
                println!("violation: {violation}");
            }
            println!(
                "audit: {} orders, {} cards, {} violations",
                report.orders_count,
                report.cards_count,
                report.violations.len()
            );
            if report.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        // Not audited at all: say why, apart from what a replay found.
        Err(
            error @ (storage::Error::NoDataDir(_)
            | storage::Error::NotADataDir(_)
            | storage::Error::InUse(_)),
        ) => {
            eprintln!("panshi audit: {error}");
            ExitCode::from(EXIT_NOT_AUDITED)
        }
        Err(error) => {
            println!("violation: the data dir cannot be read: {error}");
            println!("audit: 0 orders, 0 cards, 1 violations");
            ExitCode::FAILURE
        }
    }
}

/// Exit status of `audit` when it could not look at the data dir.
const EXIT_NOT_AUDITED: u8 = 2;

/// Audits every data dir, then checks that their committed histories agree.
fn audit_compare(dirs: &[PathBuf]) -> ExitCode {
    let mut violations = 0;
    for dir in dirs {
        match storage::audit::audit(dir) {
            Ok(report) => {
                for violation in &report.violations {
                    println!("violation: {}: {violation}", dir.display());
                }
                violations += report.violations.len();
            }
            Err(error) => {
                println!("violation: {}: {error}", dir.display());
                violations += 1;
            }
        }
    }
    match storage::audit::compare(dirs) {
        Ok(report) => {
            for violation in &report.violations {
                println!("violation: {violation}");
            }
            violations += report.violations.len();
            println!(
                "compare: {} data dirs, committed histories agree through index {}, {} entries compared",
                dirs.len(),
                report.agreed_through,
                report.entries_compared
            );
        }
        Err(error) => {
            println!("violation: {error}");
            violations += 1;
        }
    }
    println!("audit: {} data dirs, {violations} violations", dirs.len());
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// How long a panic report may take to leave before the process aborts.
const SENTRY_PANIC_FLUSH_MS: u64 = 2_000;

/// Logs to stderr: human-readable text on a terminal, JSON lines otherwise (or as
/// `log.format` says); with Sentry on, error events also go to Sentry and lesser ones become
/// its breadcrumbs. actix-server's own start and stop lines are left out unless the filter
/// names it: the shop says what it does in its own words.
fn init_tracing(settings: &ServerSettings, sentry_on: bool) {
    use tracing_subscriber::util::SubscriberInitExt;
    log_subscriber(&settings.log.level, &settings.log.format, sentry_on).init();
}

/// The subscriber `init_tracing` installs. Its level hint is the filter's most verbose
/// level, so that events below it stop at their macros' level check (and `init` caps the
/// `log` crate's records there too).
fn log_subscriber(
    level: &str,
    format: &str,
    sentry_on: bool,
) -> impl tracing::Subscriber + Send + Sync + 'static {
    use sentry::integrations::tracing::{BreadcrumbLayer, ErrorLayer};
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{FilterExt, LevelFilter};
    use tracing_subscriber::prelude::*;
    use ws_api::client_faults::{without_client_faults, ClientFaults};
    let mut directives = level.to_owned();
    if !directives.contains("actix_server") {
        directives.push_str(",actix_server=warn");
    }
    // openraft narrates every election and membership step at info: warnings are enough
    // unless asked for by name.
    if !directives.contains("openraft") {
        directives.push_str(",openraft=warn");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let max_level = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let text = match format {
        "text" => true,
        "json" => false,
        _ => std::io::stderr().is_terminal(),
    };
    let text_layer = text.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(without_client_faults(max_level))
    });
    let json_layer = (!text).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(without_client_faults(max_level))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(text_layer)
        .with(json_layer)
        .with(ClientFaults::default())
        .with(sentry_on.then(|| {
            ErrorLayer::new().with_filter(LevelFilter::ERROR.and(without_client_faults(max_level)))
        }))
        .with(sentry_on.then(|| {
            BreadcrumbLayer::new()
                .with_filter(LevelFilter::INFO.and(without_client_faults(max_level)))
        }))
}

/// Starts Sentry when a DSN is configured; panics are then reported (and flushed) before
/// the release build aborts.
fn init_sentry(settings: &ServerSettings) -> anyhow::Result<Option<sentry::ClientInitGuard>> {
    let Some(dsn) = settings.sentry.dsn.as_deref().filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    let dsn: sentry::types::Dsn = dsn.parse().context("sentry.dsn")?;
    let mut options =
        sentry::ClientOptions::new().transport(ws_api::sentry_transport::HttpTransportFactory);
    options.dsn = Some(dsn);
    options.release = sentry::release_name!();
    options.environment = settings.sentry.environment.clone().map(Into::into);
    let guard = sentry::init(options);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        if let Some(client) = sentry::Hub::current().client() {
            client.flush(Some(Duration::from_millis(SENTRY_PANIC_FLUSH_MS)));
        }
    }));
    Ok(Some(guard))
}

/// The alert rules' state, with the channels alerts are sent to. Must run inside the
/// actix system when operator e-mail is configured (its sender is spawned there).
fn observatory(
    settings: &ServerSettings,
    mailer: Option<&Mailer>,
) -> anyhow::Result<Arc<Observatory>> {
    let to: Vec<lettre::message::Mailbox> = settings
        .alerts
        .email_addresses()
        .into_iter()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let email = match mailer {
        Some(mailer) if !to.is_empty() => Some(OperatorMail::start(mailer.clone(), to)),
        _ => None,
    };
    let notifier = Notifier::new(&settings.alerts, email)?;
    Ok(Arc::new(Observatory::new(
        settings.alerts.rules(),
        notifier,
    )))
}

fn random_token() -> String {
    engine::ids::hex128(rand_u128())
}

fn rand_u128() -> u128 {
    use actors::Entropy;
    OsEntropy.random_u128()
}

/// Where a generated operator token is written (owner-only), when none is configured.
const OPERATOR_TOKEN_FILE: &str = "operator.token";

/// The configured operator token, else a fresh one written to an owner-only file in the
/// data dir (never to a log or a terminal, which others may read).
fn operator_token(settings: &ServerSettings) -> anyhow::Result<String> {
    if let Some(token) = &settings.admin_token {
        return Ok(token.0.trim().to_owned());
    }
    let token = random_token();
    let path = settings.data.join(OPERATOR_TOKEN_FILE);
    storage::keyfile::create(&path, &token)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "panshi: no admin_token configured; this run's operator token is in {} (owner-only)",
        path.display()
    );
    Ok(token)
}

/// Says, where nobody can miss it, that this server takes no real money: on stdout (beside
/// the address it prints) and in the log (info: a demo is no fault to warn about).
fn announce_demo(bound: &std::net::SocketAddr) {
    println!(
        "panshi: DEMO MODE: a built-in fake gateway pays every order for free; no real payment \
         is taken or checked. Never expose this server."
    );
    tracing::info!(%bound, "demo mode: the built-in fake gateway pays every order for free");
}

/// The sealing key's file in the data dir, when none is configured.
const SEALING_KEY_FILE: &str = "sealing.key";

/// The configured sealing key, else the data dir's key file. A new key file is written
/// only while nothing sealed exists: sealed secrets without their key are an operator's
/// mistake to report, not a reason to seal new ones under another key.
fn sealing_key(
    settings: &ServerSettings,
    store: &Store,
) -> anyhow::Result<actors::seal::SealingKey> {
    use actors::seal::{is_sealed, SealingKey};
    if let Some(text) = &settings.resellers.sealing_key {
        return SealingKey::parse(&text.0)
            .context("resellers.sealing_key must be 64 hex digits (32 bytes)");
    }
    let path = settings.data.join(SEALING_KEY_FILE);
    let text =
        storage::keyfile::read(&path).with_context(|| format!("reading {}", path.display()))?;
    if let Some(text) = text {
        if !settings.demo {
            tracing::info!(
                path = %path.display(),
                "no resellers.sealing_key configured: webhook secrets are sealed with the data dir's key file"
            );
        }
        return SealingKey::parse(&text)
            .with_context(|| format!("{} must hold 64 hex digits", path.display()));
    }
    let sealed = {
        let state = store.state();
        let secrets = state
            .resellers()
            .any(|account| is_sealed(&account.reseller.webhook_secret));
        secrets || state.clear_cards().count() < state.cards_count() as usize
    };
    if sealed {
        anyhow::bail!(
            "the data dir holds sealed card keys or webhook secrets but neither \
             resellers.sealing_key nor {SEALING_KEY_FILE} is there; set the key they were \
             sealed with"
        );
    }
    let fresh = SealingKey(
        [rand_u128().to_le_bytes(), rand_u128().to_le_bytes()]
            .concat()
            .try_into()
            .expect("32 bytes"),
    );
    storage::keyfile::create(&path, &fresh.to_hex())
        .with_context(|| format!("creating {}", path.display()))?;
    // A demo has no resellers to protect: the advice is for shops that will have some.
    if !settings.demo {
        tracing::warn!(
            target: SETUP_LOG_TARGET,
            path = %path.display(),
            "no resellers.sealing_key configured: a sealing key was generated into the data dir; \
             set one from a secret store so that copies of the data dir do not carry it"
        );
    }
    Ok(fresh)
}

/// No transparent huge pages for this process. mimalloc asks for them on its arenas, so
/// each first touch of 2 MiB made the kernel zero 2 MiB: in a flash sale's opening, with
/// thousands of requests in flight at once, that zeroing was a fifth of the server's CPU
/// (docs/BENCHMARKS.md, "Flash sale (issue 19)"). And sparsely touched pages were resident
/// 2 MiB at a time: 27.8 KiB of RSS per open socket with them, 19.8 without ("Live sockets
/// (issue 19)"). First thing in `main`, before most memory is touched; where the kernel
/// refuses, the process runs as before.
fn disable_transparent_huge_pages() {
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

/// The log target of advice about the set-up (tests silence it).
const SETUP_LOG_TARGET: &str = "panshi::setup";

fn serve(settings: ServerSettings) -> anyhow::Result<()> {
    // Whatever this process creates (the data dir, sled's files, the token file) is the
    // owner's alone; storage also sets its own files' modes explicitly.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let sentry = init_sentry(&settings)?;
    init_tracing(&settings, sentry.is_some());
    for warning in settings.warnings() {
        tracing::warn!(target: SETUP_LOG_TARGET, "{warning}");
    }
    raise_open_files_limit(settings.http.websockets_max, !settings.demo);
    let recorder = ws_api::recorder::ShopRecorder::new();
    let metrics = recorder.handle();
    metrics::set_global_recorder(recorder).context("installing the metrics recorder")?;
    ws_api::observe::describe_metrics();
    let listener = listen(&settings.listen)?;
    // Production advice; the demo gives none (it takes no crowd).
    if !settings.demo {
        let somaxconn = std::fs::read_to_string(SOMAXCONN_PATH).ok();
        if let Some(advice) = listen_backlog_advice(somaxconn.as_deref()) {
            tracing::warn!(target: SETUP_LOG_TARGET, "{advice}");
        }
    }
    let bound = listener.local_addr()?;
    let public_url = settings
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"));
    storage::private::create_dir(&settings.data)
        .with_context(|| format!("creating {}", settings.data.display()))?;
    let admin_token = operator_token(&settings)?;
    if settings.demo {
        announce_demo(&bound);
    }
    let (mut node_config, cluster_secret) =
        ws_api::cluster::node_config(&settings.cluster, &public_url)?;
    node_config.sled_rebuild.min_bytes = settings.storage.sled_rebuild_min_bytes;
    anyhow::ensure!(
        cluster_secret.is_none() || settings.resellers.sealing_key.is_some(),
        "a cluster needs resellers.sealing_key, the same on every node (a key file in each \
         data dir would differ)"
    );
    let transport: Arc<dyn replication::Transport> = match &cluster_secret {
        Some(secret) => Arc::new(ws_api::cluster::transport::HttpTransport::new(
            secret,
            settings.cluster.source_address,
        )),
        None => Arc::new(replication::network::NoTransport),
    };
    let node = Node::start(
        &settings.data,
        node_config,
        transport,
        Arc::new(CommitMetrics),
    )
    .context("opening the data dir")?;
    let store = node.store().clone();
    tracing::info!(
        node = node.node_id(),
        snapshot_index = store.applied_index(),
        records = node.log_recovery().records_count,
        truncated_bytes = node.log_recovery().truncated_bytes,
        "log recovered"
    );
    let sealing_key = sealing_key(&settings, &store)?;
    let epay = match (
        &settings.epay.pid,
        &settings.epay.key,
        &settings.epay.gateway_url,
    ) {
        (Some(pid), Some(key), Some(url)) => Some(EpaySettings {
            pid: pid.clone(),
            key: key.0.clone(),
            gateway_url: url.clone(),
            create_via_mapi: settings.epay.create_via_mapi,
        }),
        // The demo gateway signs with a key of this data dir's own (derived from its sealing
        // key, so a payment page survives a restart), never a well-known one.
        _ if settings.demo => Some(EpaySettings {
            pid: "1000".into(),
            key: actors::seal::Sealer::new(&sealing_key).derive_token("demo-epay-key", ""),
            gateway_url: format!("{public_url}/demo/gateway"),
            create_via_mapi: false,
        }),
        _ => None,
    };
    let direct = ws_api::direct::DirectChannels {
        alipay: ws_api::direct::alipay::AlipayConfig::from_settings(&settings.alipay)?
            .map(Arc::new),
        wechat: ws_api::direct::wechat::WechatConfig::from_settings(&settings.wechat)?
            .map(Arc::new),
    };
    let shop_settings = Settings {
        sealing_key,
        flash: settings.flash.settings(&settings.overload),
        risk: settings.risk.limits(),
        payment_methods: settings.payment_methods.clone(),
        breaker: settings.breaker.config(),
        order_ttl_ms: settings.order_ttl_secs * 1000,
        shards_per_sku: settings.shards_per_sku,
        currency: Currency::parse(&settings.shop.currency).context("shop.currency")?,
        public_url,
        epay: epay.clone(),
    };
    ws_api::routes::resellers::init(&settings.resellers);
    let mailer = match settings.smtp.enabled() {
        true => Some(Mailer::new(&settings.smtp, &shop_settings.public_url).context("[smtp]")?),
        false => None,
    };
    let workers = match settings.http.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let cluster = Arc::new(Cluster::new(
        node.clone(),
        cluster_secret,
        settings.cluster.source_address,
    ));
    actix_web::rt::System::new().block_on(async {
        let shop = Shop::new(
            store.clone(),
            shop_settings,
            Arc::new(SystemClock),
            Arc::new(OsEntropy),
            gateways(&settings, epay.as_ref(), &direct),
        );
        shop.check_sealed_cards().map_err(|error| {
            anyhow::anyhow!(
                "card keys: {error}; set resellers.sealing_key (or restore the data dir's \
                 {SEALING_KEY_FILE}) to the key they were sealed with"
            )
        })?;
        shop.check_sealed_secrets().map_err(|error| {
            anyhow::anyhow!(
                "{error}; set resellers.sealing_key (or restore the data dir's {SEALING_KEY_FILE}) \
                 to the key it was sealed with"
            )
        })?;
        let cluster_replicated = cluster.is_replicated();
        let observatory = observatory(&settings, mailer.as_ref())?;
        let lifecycle = Arc::new(ws_api::drain::Lifecycle::default());
        actix_web::rt::spawn(
            lifecycle
                .clone()
                .beat(Duration::from_secs(settings.http.websocket_ping_secs)),
        );
        let state = web::Data::new(AppState {
            shop: shop.clone(),
            admin_token,
            epay,
            metrics: Some(metrics),
            websockets_open: Arc::new(AtomicUsize::new(0)),
            websockets_max: settings.http.websockets_max,
            json_body_bytes_max: settings.http.json_body_bytes_max,
            demo: settings.demo,
            observatory,
            epusdt_token: settings
                .epusdt
                .token
                .as_ref()
                .map(|token| token.0.clone())
                .filter(|_| settings.epusdt.gateway_url.is_some()),
            stripe_webhook_secret: settings.stripe.webhook_secret.as_ref().map(|s| s.0.clone()),
            stripe_events: parking_lot::Mutex::default(),
            limits: ws_api::limits::EdgeLimits::new(&settings.limits),
            payment_channels: settings.callback_channels(),
            proxies: settings.trusted_proxies.clone(),
            public_https: settings
                .public_url
                .as_deref()
                .is_some_and(|url| url.starts_with("https://")),
            auth_backoff: Default::default(),
            metrics_token: settings
                .metrics
                .token
                .as_ref()
                .map(|t| t.0.trim().to_owned()),
            lifecycle: lifecycle.clone(),
            free_bytes_min: settings.storage.free_bytes_min,
            cluster,
            direct,
        });
        ws_api::observe::start_evaluator(
            state.clone(),
            Duration::from_secs(settings.alerts.evaluation_interval_secs),
        );
        ws_api::set_body_read_timeout(Duration::from_secs(settings.http.body_read_timeout_secs));
        let cap = ws_api::connections::ConnectionCap::new(
            settings.http.connections_per_address_max,
            settings.http.connection_cap_exempt.iter().copied(),
        );
        let stop = ws_api::drain::stop_signal(
            lifecycle,
            Duration::from_millis(settings.http.drain_ms),
            settings.http.shutdown_timeout_secs,
        );
        let server = HttpServer::new(move || {
            // Each worker hosts pool shards, so that a create reserves on its own thread.
            state.shop.host_pool_shards();
            ws_api::app(state.clone())
        })
        .shutdown_signal(stop)
        .on_connect(move |connection, data| cap.on_connect(connection, data))
        .workers(workers)
        .max_connections(settings.http.connections_per_worker_max)
        .shutdown_timeout(settings.http.shutdown_timeout_secs)
        .backlog(LISTEN_BACKLOG as u32)
        .keep_alive(Duration::from_secs(settings.http.keep_alive_secs))
        .listen(listener)?
        .run();
        // Polled from here on: the workers start.
        let server = actix_web::rt::spawn(server);
        // The workers register as shard hosts as they start; the pools are seeded when the
        // shop activates, so it activates after them (or after a bounded wait).
        wait_shard_hosts(&shop, workers).await;
        let duties_started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        node.set_leadership(Arc::new(Leading {
            shop: shop.clone(),
            arbiter: actix::Arbiter::current(),
            settings: settings.clone(),
            demo_seeded: Arc::default(),
            duties_started: duties_started.clone(),
            mailer: mailer.clone(),
        }));
        if !cluster_replicated {
            // A single node leads at once: say where it listens only once it does (until
            // then it answers 503, as a node that does not lead).
            wait_leading(&duties_started).await?;
        }
        println!("panshi: listening on http://{bound}");
        tracing::info!(%bound, workers, "listening");
        server.await.context("the HTTP server task")??;
        anyhow::Ok(())
    })?;
    node.shutdown();
    std::thread::sleep(Duration::from_millis(10));
    tracing::info!("stopped cleanly");
    drop(sentry);
    Ok(())
}

/// How long a single node may take to lead after start.
const LEAD_WAIT_MS: u64 = 30_000;
/// Open files beyond the WebSocket cap: HTTP connections, the log, sled, the listener.
const OPEN_FILES_BESIDE_SOCKETS: u64 = 1_024;

/// Raises the soft open-file limit to the hard one: every connection is a file, and the
/// usual soft default (1,024) would refuse connections far below `http.websockets_max`.
/// With `advise` (not the demo), warns when even the hard limit is below what the caps allow.
fn raise_open_files_limit(websockets_max: usize, advise: bool) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    if let Err(error) = setrlimit(Resource::Nofile, raised) {
        tracing::warn!(target: SETUP_LOG_TARGET, %error, "could not raise the open-file limit");
    }
    let needed = websockets_max as u64 + OPEN_FILES_BESIDE_SOCKETS;
    let current = getrlimit(Resource::Nofile).current;
    if advise && current.is_some_and(|files| files < needed) {
        tracing::warn!(
            target: SETUP_LOG_TARGET,
            open_files_max = current,
            needed,
            "the open-file limit is below http.websockets_max plus room for other files: \
             raise it (LimitNOFILE= in systemd, ulimit -n) or lower http.websockets_max"
        );
    }
}

/// How long the shop waits for the HTTP workers to offer themselves as pool shard hosts
/// before it activates with those that did (shards then start on the shop's own arbiter
/// where no worker registered).
const SHARD_HOSTS_WAIT_MS: u64 = 5_000;

async fn wait_shard_hosts(shop: &Shop, workers: usize) {
    let started = std::time::Instant::now();
    while shop.pool_shard_hosts() < workers
        && started.elapsed() < Duration::from_millis(SHARD_HOSTS_WAIT_MS)
    {
        actix_web::rt::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn wait_leading(duties_started: &std::sync::atomic::AtomicBool) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    while !duties_started.load(std::sync::atomic::Ordering::Acquire) {
        anyhow::ensure!(
            started.elapsed() < Duration::from_millis(LEAD_WAIT_MS),
            "the node did not start leading within {LEAD_WAIT_MS} ms"
        );
        actix_web::rt::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// What this node does when it starts and stops leading: the shop's actors, timers and
/// webhook workers run only on the active leader. Called from openraft's watcher; the
/// work runs on the actix system.
struct Leading {
    shop: Shop,
    arbiter: actix::ArbiterHandle,
    settings: ServerSettings,
    demo_seeded: Arc<std::sync::atomic::AtomicBool>,
    /// Set once the first activation's duties have started.
    duties_started: Arc<std::sync::atomic::AtomicBool>,
    /// Sends buyers' delivery mails, when a mail server is configured.
    mailer: Option<Mailer>,
}

impl replication::Leadership for Leading {
    fn activate(&self) {
        let (shop, settings, demo_seeded, started, mailer) = (
            self.shop.clone(),
            self.settings.clone(),
            self.demo_seeded.clone(),
            self.duties_started.clone(),
            self.mailer.clone(),
        );
        self.arbiter.spawn(async move {
            shop.activate();
            if let Err(error) = on_activation(&shop, &settings, &demo_seeded, mailer).await {
                tracing::error!(%error, "activation step failed");
            }
            started.store(true, std::sync::atomic::Ordering::Release);
        });
    }

    fn deactivate(&self) {
        let shop = self.shop.clone();
        self.arbiter.spawn(async move { shop.deactivate() });
    }
}

/// The leader's duties beyond the actors: seal secrets an older version stored in the
/// clear, seed the demo once, start the webhook workers and the mail outbox's sender.
async fn on_activation(
    shop: &Shop,
    settings: &ServerSettings,
    demo_seeded: &std::sync::atomic::AtomicBool,
    mailer: Option<Mailer>,
) -> anyhow::Result<()> {
    let resealed = shop.seal_legacy_secrets().await?;
    if resealed > 0 {
        tracing::warn!(
            resealed,
            "webhook secrets stored in the clear by an older version are sealed now; \
             the log's older records hold them until purged"
        );
    }
    let sealed_cards = shop.seal_legacy_cards().await?;
    if sealed_cards > 0 {
        tracing::warn!(
            sealed_cards,
            "card keys stored in the clear by an older version are sealed now; the log's \
             older records hold them until purged"
        );
    }
    if settings.demo && !demo_seeded.swap(true, std::sync::atomic::Ordering::AcqRel) {
        seed_demo(shop).await?;
    }
    ws_api::webhooks::start(shop, &settings.resellers);
    if let Some(mailer) = mailer {
        ws_api::mail::start(shop, mailer).await?;
    }
    Ok(())
}

/// Connections the kernel queues before `accept`. std's default of 128 dropped SYNs in a
/// flash sale's opening second, and so did 4,096 once in four runs: 9,244 buyers
/// connecting within 0.3 s left up to 4,571 connections waiting for the accept loop
/// (panshi-load flash, docs/BENCHMARKS.md). The kernel caps it at `net.core.somaxconn`
/// (4,096 by default), so this asks for the most and `listen_backlog_advice` says when
/// the kernel gives less.
const LISTEN_BACKLOG: i32 = 65_535;
/// Where the kernel's cap on every listen backlog is read.
const SOMAXCONN_PATH: &str = "/proc/sys/net/core/somaxconn";

/// Advice when the kernel caps the listen backlog below `LISTEN_BACKLOG` (`somaxconn`, as
/// read from `SOMAXCONN_PATH`); `None` when it does not, or cannot be read.
fn listen_backlog_advice(somaxconn: Option<&str>) -> Option<String> {
    let cap: i64 = somaxconn?.trim().parse().ok()?;
    (cap < i64::from(LISTEN_BACKLOG)).then(|| {
        format!(
            "net.core.somaxconn is {cap}: at most {cap} connections wait for the accept loop, \
             and a flash-sale crowd connecting faster than that is dropped (SYN retried after \
             1 s); raise it for a shop that runs flash sales (sysctl -w \
             net.core.somaxconn={LISTEN_BACKLOG})"
        )
    })
}

fn listen(address: &str) -> anyhow::Result<TcpListener> {
    use std::net::ToSocketAddrs;
    let address = address
        .to_socket_addrs()
        .with_context(|| format!("resolving {address}"))?
        .next()
        .with_context(|| format!("{address} resolves to nothing"))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket
        .bind(&address.into())
        .with_context(|| format!("binding {address}"))?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// The gateways the shop creates payments at and queries to reconcile orders. The demo
/// gateway has no query API.
fn gateways(
    settings: &ServerSettings,
    epay: Option<&EpaySettings>,
    direct: &ws_api::direct::DirectChannels,
) -> Vec<(String, Arc<dyn actors::channel::GatewayClient>)> {
    let mut gateways: Vec<(String, Arc<dyn actors::channel::GatewayClient>)> = Vec::new();
    if let (Some(epay), false) = (epay, settings.demo) {
        let client = ws_api::gateways::EpayClient::new(&epay.gateway_url, &epay.pid, &epay.key);
        gateways.push(("epay".to_owned(), Arc::new(client)));
    }
    if let (Some(url), Some(token)) = (&settings.epusdt.gateway_url, &settings.epusdt.token) {
        gateways.push((
            "epusdt".to_owned(),
            Arc::new(ws_api::gateways::EpusdtClient::new(url, &token.0)),
        ));
    }
    if let Some(secret_key) = &settings.stripe.secret_key {
        let client = ws_api::gateways::StripeClient::new(&settings.stripe.api_base, &secret_key.0);
        gateways.push(("stripe".to_owned(), Arc::new(client)));
    }
    if let Some(config) = &direct.alipay {
        let client =
            ws_api::direct::alipay::AlipayClient::new(config.clone(), Arc::new(SystemClock));
        gateways.push(("alipay".to_owned(), Arc::new(client)));
    }
    if let Some(config) = &direct.wechat {
        let client =
            ws_api::direct::wechat::WechatClient::new(config.clone(), Arc::new(SystemClock));
        gateways.push(("wechat".to_owned(), Arc::new(client)));
    }
    gateways
}

/// A small demo catalogue, seeded once into an empty shop.
async fn seed_demo(shop: &Shop) -> anyhow::Result<()> {
    if !shop.products().list().is_empty() {
        return Ok(());
    }
    let catalogue = [
        ("steam-10", "Steam wallet code 10 USD", 7_200, "STEAM"),
        ("office-365", "Office 365 personal, 1 year", 19_900, "O365"),
        ("vpn-30d", "VPN 30-day pass", 1_500, "VPN"),
    ];
    for (sku, name, price_cents, prefix) in catalogue {
        let product = engine::Product {
            sku: engine::Sku::parse(sku)?,
            name: name.into(),
            price_cents,
            currency: shop.settings().currency,
            created_at_ms: shop.now_ms(),
        };
        shop.products().create(product).await?;
        let keys: String = (1..=20)
            .map(|n| format!("{prefix}-DEMO-{n:04}-{:08X}\n", rand_u128() as u32))
            .collect();
        shop.products()
            .import_cards(engine::Sku::parse(sku)?, keys.into_bytes())
            .await?;
    }
    println!("panshi: demo catalogue seeded");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_cap_below_the_backlog_is_advised_and_nothing_else() {
        let advice = listen_backlog_advice(Some("4096\n")).expect("4,096 caps the backlog");
        assert!(advice.contains("net.core.somaxconn is 4096"), "{advice}");
        assert!(advice.contains("somaxconn=65535"), "{advice}");
        assert_eq!(listen_backlog_advice(Some("65535\n")), None);
        assert_eq!(listen_backlog_advice(Some("1000000")), None);
        assert_eq!(listen_backlog_advice(Some("not a number")), None);
        assert_eq!(listen_backlog_advice(None), None);
    }

    /// Without a level hint every disabled `trace!` and `debug!` ran each layer's filter
    /// (actix-http traces every poll; sled's `log` records went through them too): perf put
    /// 1.4% of the server's samples in `__is_enabled` and 0.85% in the `log` bridge.
    #[test]
    fn the_log_subscriber_tells_its_most_verbose_level() {
        use tracing::Subscriber;
        use tracing_subscriber::filter::LevelFilter;
        for (level, sentry_on, hint) in [
            ("info", false, LevelFilter::INFO),
            ("info", true, LevelFilter::INFO),
            ("warn", false, LevelFilter::WARN),
            ("warn,panshi=debug", false, LevelFilter::DEBUG),
            ("trace", true, LevelFilter::TRACE),
        ] {
            for format in ["json", "text"] {
                let subscriber = log_subscriber(level, format, sentry_on);
                assert_eq!(
                    subscriber.max_level_hint(),
                    Some(hint),
                    "{level} {format} sentry {sentry_on}"
                );
            }
        }
    }
}
