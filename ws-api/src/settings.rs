//! Server settings: defaults < config file (TOML) < environment (`PANSHI_`, `__` between
//! levels) < command-line flags.
//!
//! Invariants: a key that names no setting, in the file or as a `PANSHI_` variable, is an
//! error naming it (never silently ignored); `serve` and `config check` validate through the
//! one function `build`, so a file `config check` passes is a file `serve` accepts.
//!
//! Key decision: every settings struct derives `Serialize`, and the defaults serialized are
//! the list of known keys (`known_keys`). Unknown keys are found by walking what was given
//! against that tree, which names every unknown key at once and tells the file's from the
//! environment's; a struct without `Serialize` does not compile into `ServerSettings`, so no
//! section can escape the check. `panshi.example.toml` is tested against the same tree.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A secret from the configuration (a key, a token): `Debug` never prints it.
#[derive(Deserialize, Clone, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

/// Serialized only to list the known settings (`known_keys`): never the secret itself.
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("")
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default)]
pub struct ServerSettings {
    /// Operator bearer token, at least 32 characters. When unset, a random one is generated
    /// at each start and written to the data dir's `operator.token` (owner-only).
    pub admin_token: Option<Secret>,
    pub listen: String,
    pub data: PathBuf,
    /// Base URL gateways and buyers reach this shop at; defaults to `http://{listen}`.
    /// When it is `https://`, cookies are marked `Secure`.
    pub public_url: Option<String>,
    /// Reverse proxies (addresses or CIDR ranges) whose `X-Forwarded-For` / `Forwarded`
    /// name the client. Empty (the default): the TCP peer is the client.
    pub trusted_proxies: crate::client::TrustedProxies,
    pub order_ttl_secs: u64,
    pub shards_per_sku: usize,
    pub shop: ShopSection,
    pub epay: EpaySection,
    pub epusdt: EpusdtSection,
    pub stripe: StripeSection,
    /// Alipay direct (Open Platform, RSA2).
    pub alipay: AlipaySection,
    /// WeChat Pay direct (API v3).
    pub wechat: WechatSection,
    /// Payment method -> ordered channels (primary first), for example
    /// `alipay = ["epay"]`, `usdt = ["epusdt"]`, `card = ["stripe", "epay"]`.
    pub payment_methods: std::collections::BTreeMap<String, Vec<String>>,
    pub http: HttpSection,
    /// Who may read `/metrics`.
    pub metrics: MetricsSection,
    pub log: LogSection,
    pub alerts: AlertsSection,
    pub sentry: SentrySection,
    /// Outgoing e-mail: buyers' keys on delivery, operator alerts.
    pub smtp: SmtpSection,
    /// Seed a demo catalogue and mount the built-in demo gateway.
    pub demo: bool,
    /// Circuit breakers of the payment channels.
    pub breaker: BreakerSection,
    /// Reseller API: rate limit per key, webhook address policy.
    pub resellers: crate::routes::resellers::ResellerSettings,
    /// Buyer-side rate limits per client IP.
    pub limits: crate::limits::LimitsSettings,
    /// Per-buyer risk rules for new orders.
    pub risk: RiskSection,
    /// Flash-sale waiting rooms.
    pub flash: FlashSection,
    /// When the order pipeline counts as saturated and new buyers queue automatically.
    pub overload: OverloadSection,
    /// The data dir's disk.
    pub storage: StorageSection,
    /// Replication: unset means one node on its own (the embedded default).
    pub cluster: ClusterSection,
}

#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default)]
pub struct StorageSection {
    /// Below this many free bytes on the data dir's disk `/readyz` answers 503 (a full disk
    /// stops the log; a balancer should stop sending before that).
    pub free_bytes_min: u64,
    /// sled (`state/`, a mirror of what memory holds) is rebuilt with only those rows when
    /// its files take more than this and over eight times what those rows need: at a
    /// snapshot that archives orders, and at a start.
    pub sled_rebuild_min_bytes: u64,
}

/// Default readiness threshold of free space: 256 MiB.
pub const FREE_BYTES_MIN_DEFAULT: u64 = 256 << 20;

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            free_bytes_min: FREE_BYTES_MIN_DEFAULT,
            sled_rebuild_min_bytes: storage::sled_dir::SLED_REBUILD_MIN_BYTES,
        }
    }
}

/// Replication and failover (ws-api `cluster/` explains the rules).
#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default)]
pub struct ClusterSection {
    /// This node's id, a positive integer (with `peers` or `learners`).
    pub node_id: Option<u64>,
    /// Every voter, this node included when it votes: `id=url` pairs, comma-separated; each
    /// url is that node's public base URL (node-to-node requests travel there too).
    pub peers: Option<String>,
    /// Nodes that replicate everything and serve reads but never vote (`id=url`, ...).
    pub learners: Option<String>,
    /// Shared by every node; node-to-node requests without it are refused (401).
    pub secret: Option<Secret>,
    /// How often the leader tells the others it is alive.
    pub heartbeat_ms: u64,
    /// The election timeout: a follower that has not heard from the leader for three to
    /// four times this (openraft's leader lease of twice it, then one to two times it at
    /// random) stands for election, and a leader that has not heard from a majority within
    /// it stops acknowledging. 300 ms: writes resume about 1.2 s after a leader dies.
    pub election_timeout_ms: u64,
    /// A snapshot of the state is taken after this many log entries (each a batch of
    /// events); the log before it is then purged, so restarts replay little.
    pub snapshot_every_entries: u64,
    /// The local address node-to-node connections (Raft calls, writes passed to the leader)
    /// leave from; unset, the system chooses. For hosts with several addresses, so that the
    /// firewall between nodes can name one (the fault-injection tests tell nodes apart by it).
    pub source_address: Option<std::net::IpAddr>,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            node_id: None,
            peers: None,
            learners: None,
            secret: None,
            heartbeat_ms: 100,
            election_timeout_ms: 300,
            snapshot_every_entries: 20_000,
            source_address: None,
        }
    }
}

#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default)]
pub struct OverloadSection {
    /// Order creations in flight at which new buyers start to queue.
    pub inflight_high: u32,
    /// Creations in flight the queue admits up to while saturated.
    pub inflight_low: u32,
    /// Mean creation latency over a 100 ms window at which new buyers start to queue.
    pub latency_high_ms: u32,
    /// Calm time before queueing stops.
    pub calm_ms: u64,
}

impl Default for OverloadSection {
    fn default() -> Self {
        let o = engine::overload::OverloadSettings::default();
        Self {
            inflight_high: o.inflight_high,
            inflight_low: o.inflight_low,
            latency_high_ms: o.latency_high_ms,
            calm_ms: o.calm_ms,
        }
    }
}

impl OverloadSection {
    pub fn settings(&self) -> engine::overload::OverloadSettings {
        engine::overload::OverloadSettings {
            inflight_high: self.inflight_high,
            inflight_low: self.inflight_low,
            latency_high_ms: self.latency_high_ms,
            calm_ms: self.calm_ms,
        }
        .normalised()
    }
}

#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default)]
pub struct FlashSection {
    /// Tickets admitted per second from each waiting room.
    pub admit_per_second: u32,
    /// Share of admissions reserved for the VIP lane, in percent.
    pub vip_share_percent: u32,
    /// No longer honoured (a buyer types any contact): must be empty. The VIP lane is for
    /// holders of an invite code (`POST /api/v1/admin/vip-invites`).
    pub vip_contacts: Vec<String>,
}

impl Default for FlashSection {
    fn default() -> Self {
        let flash = actors::flash::FlashSettings::default();
        Self {
            admit_per_second: flash.admit_per_second,
            vip_share_percent: flash.vip_share_percent,
            vip_contacts: Vec::new(),
        }
    }
}

impl FlashSection {
    pub fn settings(&self, overload: &OverloadSection) -> actors::flash::FlashSettings {
        actors::flash::FlashSettings {
            admit_per_second: self.admit_per_second.max(1),
            vip_share_percent: self.vip_share_percent.min(100),
            overload: overload.settings(),
        }
    }
}

#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default)]
pub struct RiskSection {
    pub reserved_units_per_contact_max: u32,
    pub reserved_units_per_ip_max: u32,
    pub orders_per_contact_per_window_max: u32,
    pub purchase_window_secs: u64,
    pub orders_per_ip_per_minute_max: u32,
    pub blocked_contacts: Vec<String>,
    pub blocked_ips: Vec<String>,
}

impl Default for RiskSection {
    fn default() -> Self {
        let limits = engine::risk::RiskLimits::default();
        Self {
            reserved_units_per_contact_max: limits.reserved_units_per_contact_max,
            reserved_units_per_ip_max: limits.reserved_units_per_ip_max,
            orders_per_contact_per_window_max: limits.orders_per_contact_per_window_max,
            purchase_window_secs: limits.purchase_window_ms / 1000,
            orders_per_ip_per_minute_max: limits.orders_per_ip_per_minute_max,
            blocked_contacts: Vec::new(),
            blocked_ips: Vec::new(),
        }
    }
}

impl RiskSection {
    pub fn limits(&self) -> engine::risk::RiskLimits {
        engine::risk::RiskLimits {
            reserved_units_per_contact_max: self.reserved_units_per_contact_max,
            reserved_units_per_ip_max: self.reserved_units_per_ip_max,
            orders_per_contact_per_window_max: self.orders_per_contact_per_window_max,
            purchase_window_ms: self.purchase_window_secs * 1000,
            orders_per_ip_per_minute_max: self.orders_per_ip_per_minute_max,
            blocked_contacts: self.blocked_contacts.iter().cloned().collect(),
            blocked_ips: self.blocked_ips.iter().cloned().collect(),
        }
    }
}

#[derive(Deserialize, Serialize, Debug, Clone, Default)]
#[serde(default)]
pub struct EpusdtSection {
    pub gateway_url: Option<String>,
    pub token: Option<Secret>,
}

#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default)]
pub struct StripeSection {
    pub api_base: String,
    pub secret_key: Option<Secret>,
    pub webhook_secret: Option<Secret>,
}

impl Default for StripeSection {
    fn default() -> Self {
        Self {
            api_base: "https://api.stripe.com".into(),
            secret_key: None,
            webhook_secret: None,
        }
    }
}

/// Alipay direct. Keys are PEM (or the bare base64 body Alipay's key tool writes), inline or
/// from a file (`*_file`), one or the other; checked at start.
#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default)]
pub struct AlipaySection {
    pub app_id: Option<String>,
    /// The merchant's application private key (PKCS#1 or PKCS#8).
    pub private_key: Option<Secret>,
    pub private_key_file: Option<PathBuf>,
    /// Alipay's public key (not the application's own public key).
    pub alipay_public_key: Option<Secret>,
    pub alipay_public_key_file: Option<PathBuf>,
    pub gateway_url: String,
    /// `page` (desktop cashier; phones get wap), `wap`, or `precreate` (a QR code).
    pub product: String,
}

impl Default for AlipaySection {
    fn default() -> Self {
        Self {
            app_id: None,
            private_key: None,
            private_key_file: None,
            alipay_public_key: None,
            alipay_public_key_file: None,
            gateway_url: crate::direct::alipay::ALIPAY_GATEWAY_URL_DEFAULT.into(),
            product: "page".into(),
        }
    }
}

/// WeChat Pay direct (API v3, Native payments). Keys as for Alipay.
#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default)]
pub struct WechatSection {
    pub mch_id: Option<String>,
    /// The AppID bound to the merchant (an official account's or a website application's).
    pub app_id: Option<String>,
    /// The APIv3 key: 32 characters.
    pub api_v3_key: Option<Secret>,
    pub api_v3_key_file: Option<PathBuf>,
    /// The merchant's API private key (`apiclient_key.pem`).
    pub merchant_private_key: Option<Secret>,
    pub merchant_private_key_file: Option<PathBuf>,
    /// The serial number of the merchant's API certificate.
    pub merchant_serial_no: Option<String>,
    /// WeChat Pay's public key (the merchant platform's "WeChat Pay public key").
    pub platform_public_key: Option<Secret>,
    pub platform_public_key_file: Option<PathBuf>,
    pub api_base: String,
}

impl Default for WechatSection {
    fn default() -> Self {
        Self {
            mch_id: None,
            app_id: None,
            api_v3_key: None,
            api_v3_key_file: None,
            merchant_private_key: None,
            merchant_private_key_file: None,
            merchant_serial_no: None,
            platform_public_key: None,
            platform_public_key_file: None,
            api_base: crate::direct::wechat::WECHAT_API_BASE_DEFAULT.into(),
        }
    }
}

#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default)]
pub struct BreakerSection {
    pub consecutive_failures_max: u32,
    pub window_secs: u64,
    pub window_calls_min: u32,
    pub error_rate_percent_max: u32,
    pub cooldown_secs: u64,
    pub half_open_probes_max: u32,
}

impl Default for BreakerSection {
    fn default() -> Self {
        let config = engine::breaker::BreakerConfig::default();
        Self {
            consecutive_failures_max: config.consecutive_failures_max,
            window_secs: config.window_ms / 1000,
            window_calls_min: config.window_calls_min,
            error_rate_percent_max: config.error_rate_percent_max,
            cooldown_secs: config.cooldown_ms / 1000,
            half_open_probes_max: config.half_open_probes_max,
        }
    }
}

impl BreakerSection {
    pub fn config(&self) -> engine::breaker::BreakerConfig {
        engine::breaker::BreakerConfig {
            consecutive_failures_max: self.consecutive_failures_max.max(1),
            window_ms: self.window_secs * 1000,
            window_calls_min: self.window_calls_min,
            error_rate_percent_max: self.error_rate_percent_max,
            cooldown_ms: self.cooldown_secs * 1000,
            half_open_probes_max: self.half_open_probes_max.max(1),
        }
    }
}

#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default)]
pub struct ShopSection {
    pub currency: String,
}

#[derive(Deserialize, Serialize, Debug, Clone, Default)]
#[serde(default)]
pub struct EpaySection {
    pub pid: Option<String>,
    pub key: Option<Secret>,
    pub gateway_url: Option<String>,
    /// Create payments through the gateway's `mapi.php` instead of a signed `submit.php` URL.
    pub create_via_mapi: bool,
}

#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default)]
pub struct HttpSection {
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// Open connections per worker.
    pub connections_per_worker_max: usize,
    /// Largest JSON request body.
    pub json_body_bytes_max: usize,
    /// Open WebSocket connections, across workers.
    pub websockets_max: usize,
    /// How often every live WebSocket's client is pinged (one heartbeat for all sockets).
    pub websocket_ping_secs: u64,
    /// After the drain, how long requests in flight may take before the process stops.
    pub shutdown_timeout_secs: u64,
    /// On SIGTERM/SIGINT, how long the server goes on serving with `/readyz` at 503 and
    /// every answer closing its connection, before it stops (a second signal cuts it short).
    pub drain_ms: u64,
    /// How long an idle keep-alive connection stays open.
    pub keep_alive_secs: u64,
    /// How long a request body may take to arrive (larger bodies get 64 KiB/s on top);
    /// slower ones get 408.
    pub body_read_timeout_secs: u64,
    /// Open connections one client address may hold; 0 for no cap.
    pub connections_per_address_max: u32,
    /// Addresses never capped: a reverse proxy or load balancer in front carries every
    /// client's connections.
    pub connection_cap_exempt: Vec<std::net::IpAddr>,
}

/// `/metrics` lists per-SKU stock and payment counters. Public by default (the contract's
/// scrape); with `token` set, a scrape must send `Authorization: Bearer <token>` (or the
/// operator token).
#[derive(Deserialize, Serialize, Debug, Clone, Default)]
#[serde(default)]
pub struct MetricsSection {
    pub token: Option<Secret>,
}

#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default)]
pub struct LogSection {
    /// `auto` (default: human-readable text on a terminal, JSON otherwise), `json` or `text`.
    pub format: String,
    /// A tracing filter, for example `info` or `panshi=debug`.
    pub level: String,
}

/// Alert rules (see `actors::alerts`): thresholds, how often they run, where they are sent.
#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default)]
pub struct AlertsSection {
    /// Seconds between two evaluations of the rules.
    pub evaluation_interval_secs: u64,
    /// An `https://` (or `http://`) URL that receives each fired and cleared alert as a
    /// JSON POST.
    pub webhook_url: Option<String>,
    /// Operator e-mail addresses (comma-separated) that get each alert, sent through `[smtp]`.
    pub email_to: Option<String>,
    /// A Telegram bot that posts each alert to a chat.
    pub telegram: TelegramSection,
    pub latency_rise_ratio: f64,
    pub latency_rise_samples: usize,
    pub error_rate_max: f64,
    pub error_window_secs: u64,
    pub error_requests_min: u64,
    pub payment_success_drop_ratio: f64,
    pub payment_volume_normal_ratio: f64,
    pub payment_window_secs: u64,
    pub payment_orders_min: u64,
    pub stock_min: u64,
    pub delivery_overdue_secs: u64,
    /// Free bytes on the data dir's disk below which `disk_space_low` fires.
    pub disk_free_bytes_min: u64,
    /// How long a durable change may wait for sled before `mirror_lag` fires.
    pub mirror_lag_secs_max: u64,
    /// No cluster leader known for this long raises `no_leader`.
    pub leaderless_secs_max: u64,
    /// A follower this many log entries behind the leader raises `follower_lag`.
    pub follower_lag_entries_max: u64,
}

/// `[alerts.telegram]`: alerts as messages from a Telegram bot (`sendMessage`).
#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default)]
pub struct TelegramSection {
    /// The bot's token from @BotFather; no message is sent while it is unset.
    pub bot_token: Option<Secret>,
    /// The chat (a user, group or channel id) the bot posts to.
    pub chat_id: Option<String>,
    /// The Bot API's base URL (tests point it at a stand-in).
    pub api_base: String,
}

impl Default for TelegramSection {
    fn default() -> Self {
        Self {
            bot_token: None,
            chat_id: None,
            api_base: "https://api.telegram.org".into(),
        }
    }
}

/// How the SMTP connection is protected.
#[derive(Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which must succeed (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS: only for a relay on the same host or network.
    None,
}

/// `[smtp]`: the mail server that sends buyers their keys and operators their alerts.
#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default)]
pub struct SmtpSection {
    /// The mail server's host name; no e-mail is sent while it is unset.
    pub host: Option<String>,
    pub port: u16,
    /// The sender, `shop@example.com` or `Shop <shop@example.com>`.
    pub from: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: SmtpTls,
    /// The first retry's delay after a failed try; each further one doubles it.
    pub retry_first_ms: u64,
    /// Timeout of one try (connect, dialogue, answer).
    pub timeout_ms: u64,
}

impl Default for SmtpSection {
    fn default() -> Self {
        Self {
            host: None,
            port: 587,
            from: None,
            username: None,
            password: None,
            tls: SmtpTls::Starttls,
            retry_first_ms: engine::mail::MAIL_RETRY_FIRST_MS_DEFAULT,
            timeout_ms: 30_000,
        }
    }
}

impl SmtpSection {
    /// Whether e-mail is on (a host is set).
    pub fn enabled(&self) -> bool {
        self.host.as_deref().is_some_and(|h| !h.is_empty())
    }

    fn problems(&self, problems: &mut Vec<String>) {
        if !self.enabled() {
            return;
        }
        match self.from.as_deref() {
            None | Some("") => problems.push("smtp.from is required when smtp.host is set".into()),
            Some(from) if from.parse::<lettre::message::Mailbox>().is_err() => {
                problems.push(format!("smtp.from: `{from}` is not an e-mail address"))
            }
            Some(_) => {}
        }
        if self.username.is_some() != self.password.is_some() {
            problems.push("smtp.username and smtp.password go together".into());
        }
        if self.retry_first_ms == 0 || self.timeout_ms == 0 {
            problems.push("smtp.retry_first_ms and smtp.timeout_ms must be above 0".into());
        }
    }
}

/// Error reporting: errors and panics go to Sentry only when a DSN is set.
#[derive(Deserialize, Serialize, Debug, Clone, Default)]
#[serde(default)]
pub struct SentrySection {
    /// A Sentry DSN (`https://` or `http://`).
    pub dsn: Option<String>,
    pub environment: Option<String>,
}

/// Longest time between two evaluations of the alert rules.
pub const ALERT_EVALUATION_INTERVAL_SECS_MAX: u64 = 300;

impl Default for AlertsSection {
    fn default() -> Self {
        let rules = actors::alerts::AlertSettings::default();
        Self {
            evaluation_interval_secs: 5,
            webhook_url: None,
            email_to: None,
            telegram: TelegramSection::default(),
            latency_rise_ratio: rules.latency_rise_ratio,
            latency_rise_samples: rules.latency_rise_samples,
            error_rate_max: rules.error_rate_max,
            error_window_secs: rules.error_window_ms / 1000,
            error_requests_min: rules.error_requests_min,
            payment_success_drop_ratio: rules.payment_success_drop_ratio,
            payment_volume_normal_ratio: rules.payment_volume_normal_ratio,
            payment_window_secs: rules.payment_window_ms / 1000,
            payment_orders_min: rules.payment_orders_min,
            stock_min: rules.stock_min,
            delivery_overdue_secs: rules.delivery_overdue_ms / 1000,
            disk_free_bytes_min: rules.disk_free_bytes_min,
            mirror_lag_secs_max: rules.mirror_lag_ms_max / 1000,
            leaderless_secs_max: rules.leaderless_ms_max / 1000,
            follower_lag_entries_max: rules.follower_lag_entries_max,
        }
    }
}

impl AlertsSection {
    pub fn rules(&self) -> actors::alerts::AlertSettings {
        actors::alerts::AlertSettings {
            latency_rise_ratio: self.latency_rise_ratio,
            latency_rise_samples: self.latency_rise_samples,
            error_rate_max: self.error_rate_max,
            error_window_ms: self.error_window_secs.saturating_mul(1000),
            error_requests_min: self.error_requests_min,
            payment_success_drop_ratio: self.payment_success_drop_ratio,
            payment_volume_normal_ratio: self.payment_volume_normal_ratio,
            payment_window_ms: self.payment_window_secs.saturating_mul(1000),
            payment_orders_min: self.payment_orders_min,
            stock_min: self.stock_min,
            delivery_overdue_ms: self.delivery_overdue_secs.saturating_mul(1000),
            disk_free_bytes_min: self.disk_free_bytes_min,
            mirror_lag_ms_max: self.mirror_lag_secs_max.saturating_mul(1000),
            leaderless_ms_max: self.leaderless_secs_max.saturating_mul(1000),
            follower_lag_entries_max: self.follower_lag_entries_max,
        }
    }

    fn problems(&self, problems: &mut Vec<String>) {
        if !(1..=ALERT_EVALUATION_INTERVAL_SECS_MAX).contains(&self.evaluation_interval_secs) {
            problems.push(format!(
                "alerts.evaluation_interval_secs must be 1 to {ALERT_EVALUATION_INTERVAL_SECS_MAX}"
            ));
        }
        if !(2..=actors::alerts::ALERT_HISTORY_SAMPLES_MAX).contains(&self.latency_rise_samples) {
            problems.push(format!(
                "alerts.latency_rise_samples must be 2 to {}",
                actors::alerts::ALERT_HISTORY_SAMPLES_MAX
            ));
        }
        if let Some(url) = self.webhook_url.as_deref().filter(|u| !u.is_empty()) {
            if let Err(error) = crate::post::web_url(url) {
                problems.push(format!("alerts.webhook_url: {error}"));
            }
        }
        if let Err(error) = crate::post::web_url(&self.telegram.api_base) {
            problems.push(format!("alerts.telegram.api_base: {error}"));
        }
        if self.telegram.bot_token.is_some() != self.telegram.chat_id.is_some() {
            problems
                .push("alerts.telegram.bot_token and alerts.telegram.chat_id go together".into());
        }
        for address in self.email_addresses() {
            if address.parse::<lettre::message::Mailbox>().is_err() {
                problems.push(format!(
                    "alerts.email_to: `{address}` is not an e-mail address"
                ));
            }
        }
    }

    /// The operators' addresses from `email_to`.
    pub fn email_addresses(&self) -> Vec<&str> {
        self.email_to
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect()
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            admin_token: None,
            listen: "127.0.0.1:8080".into(),
            data: PathBuf::from("./panshi-data"),
            public_url: None,
            trusted_proxies: Default::default(),
            order_ttl_secs: engine::order::ORDER_TTL_MS_DEFAULT / 1000,
            shards_per_sku: engine::pool::SHARDS_PER_SKU_DEFAULT,
            shop: ShopSection::default(),
            epay: EpaySection::default(),
            epusdt: EpusdtSection::default(),
            stripe: StripeSection::default(),
            alipay: AlipaySection::default(),
            wechat: WechatSection::default(),
            payment_methods: actors::payment::default_methods(),
            http: HttpSection::default(),
            metrics: MetricsSection::default(),
            log: LogSection::default(),
            alerts: AlertsSection::default(),
            sentry: SentrySection::default(),
            smtp: SmtpSection::default(),
            demo: false,
            breaker: BreakerSection::default(),
            resellers: Default::default(),
            limits: crate::limits::LimitsSettings::default(),
            risk: RiskSection::default(),
            flash: FlashSection::default(),
            overload: OverloadSection::default(),
            storage: StorageSection::default(),
            cluster: ClusterSection::default(),
        }
    }
}

impl Default for ShopSection {
    fn default() -> Self {
        Self {
            currency: "CNY".into(),
        }
    }
}

/// Default drain: long enough for a balancer polling `/readyz` every 2 s to see two 503s.
pub const DRAIN_MS_DEFAULT: u64 = 5_000;

/// Default cap on one address's open connections: room for a few dozen buyers behind one
/// NAT, each with a browser's handful of connections and a live socket.
pub const CONNECTIONS_PER_ADDRESS_MAX_DEFAULT: u32 = 512;

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            workers: 0,
            connections_per_worker_max: 25_000,
            json_body_bytes_max: 64 * 1024,
            websockets_max: 50_000,
            websocket_ping_secs: crate::socket::PING_INTERVAL_SECS_DEFAULT,
            shutdown_timeout_secs: 10,
            drain_ms: DRAIN_MS_DEFAULT,
            keep_alive_secs: 75,
            body_read_timeout_secs: crate::BODY_READ_TIMEOUT_SECS_DEFAULT,
            connections_per_address_max: CONNECTIONS_PER_ADDRESS_MAX_DEFAULT,
            connection_cap_exempt: vec![
                std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::Ipv6Addr::LOCALHOST.into(),
            ],
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: "auto".into(),
            level: "info".into(),
        }
    }
}

/// Variables with the `PANSHI_` prefix that are not settings (read by other commands).
const NON_SETTING_VARIABLES: [&str; 1] = ["PANSHI_RESELLER_KEY"];

/// Tables whose keys are the operator's own names, not settings.
const FREE_FORM_TABLES: [&str; 1] = ["payment_methods"];

/// Every problem found in the settings, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct Problems(pub Vec<String>);

/// Loads settings for `serve`: the optional file, the environment, then `overrides` (flags).
pub fn load(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<ServerSettings, Problems> {
    build(file, &environment(), overrides)
}

/// Loads one file alone, as `panshi config check FILE` does.
pub fn check_file(file: &Path) -> Result<ServerSettings, Problems> {
    build(Some(file), &[], &[])
}

/// The process's `PANSHI_` variables that are settings.
fn environment() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(name, _)| {
            name.to_ascii_uppercase().starts_with("PANSHI_")
                && !NON_SETTING_VARIABLES.contains(&name.as_str())
        })
        .collect()
}

/// The one validation path of `serve` and `config check`: unknown keys, then types, then
/// values.
fn build(
    file: Option<&Path>,
    environment: &[(String, String)],
    overrides: &[(&str, String)],
) -> Result<ServerSettings, Problems> {
    let known = known_keys();
    let mut problems = Vec::new();
    if let Some(file) = file {
        let given = file_tree(file).map_err(|e| Problems(vec![e]))?;
        let mut unknown = Vec::new();
        unknown_keys(&known, &given, "", &mut unknown);
        problems.extend(
            unknown
                .into_iter()
                .map(|key| format!("unknown setting `{key}` in {}", file.display())),
        );
    }
    for (name, _) in environment {
        let key = variable_key(name);
        if !is_known(&known, &key) {
            problems.push(format!(
                "unknown setting `{key}` from the environment variable {name}"
            ));
        }
    }
    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    let settings = merged(file, environment, overrides)?;
    settings.problems(&mut problems);
    if problems.is_empty() {
        Ok(settings)
    } else {
        Err(Problems(problems))
    }
}

fn merged(
    file: Option<&Path>,
    environment: &[(String, String)],
    overrides: &[(&str, String)],
) -> Result<ServerSettings, Problems> {
    let mut builder = config::Config::builder();
    if let Some(file) = file {
        builder = builder.add_source(
            config::File::from(file)
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    let variables = environment.iter().cloned().collect();
    builder = builder.add_source(
        config::Environment::with_prefix("PANSHI")
            .prefix_separator("_")
            .separator("__")
            .source(Some(variables)),
    );
    for (key, value) in overrides {
        builder = builder
            .set_override(*key, value.clone())
            .map_err(|e| Problems(vec![e.to_string()]))?;
    }
    let config = builder.build().map_err(|e| Problems(vec![e.to_string()]))?;
    config
        .clone()
        .try_deserialize()
        .map_err(|first| Problems(bad_values(&config).unwrap_or_else(|| vec![first.to_string()])))
}

/// Deserialization stops at the first bad value; this finds the first in each top-level
/// setting or section, so that one pass names them all.
fn bad_values(config: &config::Config) -> Option<Vec<String>> {
    let table = config
        .clone()
        .try_deserialize::<config::Map<String, config::Value>>()
        .ok()?;
    let problems: Vec<String> = table
        .into_iter()
        .filter_map(|(key, value)| {
            let alone = config::Config::builder()
                .set_override(key, value)
                .and_then(|builder| builder.build())
                .and_then(|config| config.try_deserialize::<ServerSettings>());
            alone.err().map(|e| e.to_string())
        })
        .collect();
    (!problems.is_empty()).then_some(problems)
}

/// The file's keys as a tree.
pub fn file_tree(file: &Path) -> Result<serde_json::Value, String> {
    config::Config::builder()
        .add_source(
            config::File::from(file)
                .format(config::FileFormat::Toml)
                .required(true),
        )
        .build()
        .and_then(|config| config.try_deserialize())
        .map_err(|e| e.to_string())
}

/// Every setting, as the tree of the defaults. A `null` (an optional setting unset by
/// default) is a leaf.
pub fn known_keys() -> serde_json::Value {
    serde_json::to_value(ServerSettings::default()).expect("settings serialize")
}

/// `PANSHI_EPAY__PID` -> `epay.pid`, as `config::Environment` maps it.
fn variable_key(name: &str) -> String {
    name["PANSHI_".len()..].to_lowercase().replace("__", ".")
}

fn is_known(known: &serde_json::Value, key: &str) -> bool {
    let mut node = known;
    for (depth, part) in key.split('.').enumerate() {
        if depth == 1 && FREE_FORM_TABLES.contains(&key.split('.').next().unwrap_or("")) {
            return true;
        }
        match node {
            serde_json::Value::Object(map) => match map.get(part) {
                Some(child) => node = child,
                None => return false,
            },
            _ => return false,
        }
    }
    true
}

/// Collects the dotted paths of `given` that name no setting in `known`.
pub fn unknown_keys(
    known: &serde_json::Value,
    given: &serde_json::Value,
    prefix: &str,
    unknown: &mut Vec<String>,
) {
    let serde_json::Value::Object(given) = given else {
        return;
    };
    for (key, value) in given {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if FREE_FORM_TABLES.contains(&path.as_str()) {
            continue;
        }
        match known.get(key) {
            None => unknown.push(path),
            Some(child @ serde_json::Value::Object(_)) => {
                unknown_keys(child, value, &path, unknown)
            }
            Some(_) => {}
        }
    }
}

impl ServerSettings {
    /// Values that parse but cannot work, each named.
    fn problems(&self, problems: &mut Vec<String>) {
        self.alerts.problems(problems);
        self.smtp.problems(problems);
        if self.order_ttl_secs < 1 {
            problems.push("order_ttl_secs must be at least 1".into());
        }
        if self.http.body_read_timeout_secs < 1 {
            problems.push("http.body_read_timeout_secs must be at least 1".into());
        }
        if !(1..=crate::socket::PING_INTERVAL_SECS_MAX).contains(&self.http.websocket_ping_secs) {
            problems.push(format!(
                "http.websocket_ping_secs must be 1 to {}",
                crate::socket::PING_INTERVAL_SECS_MAX
            ));
        }
        if !(1..=engine::pool::SHARDS_PER_SKU_MAX).contains(&self.shards_per_sku) {
            problems.push(format!(
                "shards_per_sku must be 1 to {}",
                engine::pool::SHARDS_PER_SKU_MAX
            ));
        }
        if engine::Currency::parse(&self.shop.currency).is_err() {
            problems.push(format!(
                "shop.currency: `{}` is not a currency code",
                self.shop.currency
            ));
        }
        if !["auto", "json", "text"].contains(&self.log.format.as_str()) {
            problems.push(format!(
                "log.format must be auto, json or text, not `{}`",
                self.log.format
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            problems.push(format!(
                "log.level: `{}` is not a tracing filter",
                self.log.level
            ));
        }
        if let Some(url) = self.public_url.as_deref() {
            if let Err(error) = crate::post::web_url(url) {
                problems.push(format!("public_url: {error}"));
            }
        }
        if let Some(key) = &self.resellers.sealing_key {
            if actors::seal::SealingKey::parse(&key.0).is_none() {
                problems.push("resellers.sealing_key must be 64 hex digits (32 bytes)".into());
            }
        }
        self.payment_problems(problems);
        self.security_problems(problems);
    }

    fn payment_problems(&self, problems: &mut Vec<String>) {
        let epay = [
            self.epay.pid.is_some(),
            self.epay.key.is_some(),
            self.epay.gateway_url.is_some(),
        ];
        if epay.contains(&true) && epay.contains(&false) {
            problems.push("epay.pid, epay.key and epay.gateway_url go together".into());
        }
        if let Some(url) = self.epay.gateway_url.as_deref() {
            if let Err(error) = crate::post::web_url(url) {
                problems.push(format!("epay.gateway_url: {error}"));
            } else if url.trim_end_matches('/').ends_with(".php") {
                problems.push(format!(
                    "epay.gateway_url is the gateway's base URL (https://pay.example.com/), \
                     not a page of it: `{url}`"
                ));
            }
        }
        if self.epusdt.gateway_url.is_some() != self.epusdt.token.is_some() {
            problems.push("epusdt.gateway_url and epusdt.token go together".into());
        }
        // A signature keyed with an empty secret is one anyone computes: a present secret
        // must be long enough; an absent one means the channel is not configured. Stripe's
        // two stand alone (the API key's queries find payments without webhooks).
        for (name, value) in [
            ("epay.key", secret(&self.epay.key)),
            ("epusdt.token", secret(&self.epusdt.token)),
            ("stripe.secret_key", secret(&self.stripe.secret_key)),
            ("stripe.webhook_secret", secret(&self.stripe.webhook_secret)),
        ] {
            if let Some(problem) = value.and_then(|v| weak_secret(name, v)) {
                problems.push(problem);
            }
        }
        // The direct channels' keys are parsed here, so a malformed or missing one stops the
        // start (and `config check`), named; the error never quotes a key.
        if let Err(error) = crate::direct::alipay::AlipayConfig::from_settings(&self.alipay) {
            problems.push(format!("{error:#}"));
        }
        if let Err(error) = crate::direct::wechat::WechatConfig::from_settings(&self.wechat) {
            problems.push(format!("{error:#}"));
        }
    }

    /// The operator and scrape tokens' floors, demo mode's bounds, the retired VIP list.
    fn security_problems(&self, problems: &mut Vec<String>) {
        for (name, token) in [
            ("admin_token", secret(&self.admin_token)),
            ("metrics.token", secret(&self.metrics.token)),
        ] {
            if token.is_some_and(|t| t.trim().len() < ADMIN_TOKEN_LEN_MIN) {
                problems.push(format!(
                    "{name} is shorter than {ADMIN_TOKEN_LEN_MIN} characters (an empty one \
                     counts too): set a long random one, or leave it out"
                ));
            }
        }
        if !self.flash.vip_contacts.is_empty() {
            problems.push(
                "flash.vip_contacts is no longer supported: a buyer's contact proves nothing, \
                 anyone can type a VIP's address. Give VIPs invite codes \
                 (POST /api/v1/admin/vip-invites)"
                    .into(),
            );
        }
        if self.demo {
            self.demo_problems(problems);
        }
    }

    /// Demo mode signs its own notifies: it must never run beside real gateway settings
    /// or where anyone but this machine can reach it.
    fn demo_problems(&self, problems: &mut Vec<String>) {
        let real = self.configured_gateways();
        if !real.is_empty() {
            problems.push(format!(
                "demo mode refuses to start beside real gateway settings ({}): the demo \
                 gateway would pay orders for free",
                real.join(", ")
            ));
        }
        if !listen_is_loopback(&self.listen) {
            problems.push(format!(
                "demo mode listens on loopback addresses only (127.0.0.1, [::1], localhost), \
                 not {}",
                self.listen
            ));
        }
    }

    /// The real gateways with any setting present, by channel name.
    pub fn configured_gateways(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.epay.pid.is_some() || self.epay.key.is_some() || self.epay.gateway_url.is_some() {
            names.push("epay");
        }
        if self.epusdt.token.is_some() || self.epusdt.gateway_url.is_some() {
            names.push("epusdt");
        }
        if self.stripe.secret_key.is_some() || self.stripe.webhook_secret.is_some() {
            names.push("stripe");
        }
        if self.alipay.app_id.is_some()
            || self.alipay.private_key.is_some()
            || self.alipay.private_key_file.is_some()
        {
            names.push("alipay");
        }
        if self.wechat.mch_id.is_some()
            || self.wechat.api_v3_key.is_some()
            || self.wechat.api_v3_key_file.is_some()
        {
            names.push("wechat");
        }
        names
    }

    /// The channels whose gateway calls back, by name: each gets its callback route.
    pub fn callback_channels(&self) -> Vec<String> {
        let mut names = Vec::new();
        if self.epay.key.is_some() || self.demo {
            names.push("epay".to_owned());
        }
        if self.epusdt.token.is_some() {
            names.push("epusdt".to_owned());
        }
        if self.stripe.webhook_secret.is_some() {
            names.push("stripe".to_owned());
        }
        names
    }

    /// Whether any payment channel is configured (the demo brings its own).
    pub fn payment_configured(&self) -> bool {
        self.demo
            || self.epay.pid.is_some()
            || self.epusdt.gateway_url.is_some()
            || self.stripe.secret_key.is_some()
            || self.alipay.app_id.is_some()
            || self.wechat.mch_id.is_some()
    }

    /// Settings that work but are probably not what the operator wants; each is logged at
    /// start and printed by `config check`.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.payment_configured() {
            warnings.push(
                "no payment channel is configured ([alipay], [wechat], [epay], [epusdt] or \
                 [stripe]): buyers see products as temporarily unavailable and cannot order"
                    .to_owned(),
            );
        }
        if self.stripe.secret_key.is_some() && self.stripe.webhook_secret.is_none() {
            warnings.push(
                "stripe.webhook_secret is not set: Stripe payments are seen only when the shop \
                 queries Stripe, not the moment they happen"
                    .to_owned(),
            );
        }
        if self.public_url.is_none() && !self.demo && !is_host_name(&self.listen) {
            warnings.push(format!(
                "public_url is not set: gateways are told to call http://{} back, which they \
                 cannot reach; set public_url to the shop's address (https://shop.example.com)",
                self.listen
            ));
        }
        warnings
    }
}

/// Whether `listen` names a host (`shop.example.com:8080`) rather than an IP address.
fn is_host_name(listen: &str) -> bool {
    let host = listen.rsplit_once(':').map_or(listen, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<std::net::IpAddr>().is_err() && host != "localhost" && !host.is_empty()
}

/// Shortest operator (and scrape) token accepted; the generated one has 32 hex digits.
pub const ADMIN_TOKEN_LEN_MIN: usize = 32;

fn secret(value: &Option<Secret>) -> Option<&str> {
    value.as_ref().map(|s| s.0.as_str())
}

/// What is wrong with a gateway secret, if anything (never the secret itself).
fn weak_secret(name: &str, value: &str) -> Option<String> {
    if value.trim().is_empty() {
        return Some(format!(
            "{name} is empty (an unset variable in a service file?): set it, or leave the \
             whole section out to run without this channel"
        ));
    }
    (!engine::payment::secret_strong_enough(value)).then(|| {
        format!(
            "{name} is shorter than {} bytes",
            engine::payment::GATEWAY_SECRET_LEN_MIN
        )
    })
}

/// Whether every address `listen` resolves to is a loopback address.
fn listen_is_loopback(listen: &str) -> bool {
    use std::net::ToSocketAddrs;
    match listen.to_socket_addrs() {
        Ok(addresses) => {
            let addresses: Vec<_> = addresses.collect();
            !addresses.is_empty() && addresses.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}
