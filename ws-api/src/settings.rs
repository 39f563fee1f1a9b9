//! Server settings: defaults < config file (TOML) < environment (`PANSHI_`, `__` between
//! levels) < command-line flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A secret from the configuration (a key, a token): `Debug` never prints it.
#[derive(Deserialize, Clone, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Deserialize, Debug, Clone)]
#[serde(default)]
pub struct ServerSettings {
    /// Operator bearer token. When unset, a random one is generated and printed at start.
    pub admin_token: Option<Secret>,
    pub listen: String,
    pub data: PathBuf,
    /// Base URL gateways and buyers reach this shop at; defaults to `http://{listen}`.
    pub public_url: Option<String>,
    pub order_ttl_secs: u64,
    pub shards_per_sku: usize,
    pub shop: ShopSection,
    pub epay: EpaySection,
    pub epusdt: EpusdtSection,
    pub stripe: StripeSection,
    /// Payment method -> ordered channels (primary first), for example
    /// `alipay = ["epay"]`, `usdt = ["epusdt"]`, `card = ["stripe", "epay"]`.
    pub payment_methods: std::collections::BTreeMap<String, Vec<String>>,
    pub http: HttpSection,
    pub log: LogSection,
    pub alerts: AlertsSection,
    pub sentry: SentrySection,
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
}

#[derive(Deserialize, Debug, Clone)]
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

#[derive(Deserialize, Debug, Clone)]
#[serde(default)]
pub struct FlashSection {
    /// Tickets admitted per second from each waiting room.
    pub admit_per_second: u32,
    /// Share of admissions reserved for the VIP lane, in percent.
    pub vip_share_percent: u32,
    pub vip_contacts: Vec<String>,
}

impl Default for FlashSection {
    fn default() -> Self {
        let flash = actors::flash::FlashSettings::default();
        Self {
            admit_per_second: flash.admit_per_second,
            vip_share_percent: flash.vip_share_percent,
            vip_contacts: flash.vip_contacts,
        }
    }
}

impl FlashSection {
    pub fn settings(&self, overload: &OverloadSection) -> actors::flash::FlashSettings {
        actors::flash::FlashSettings {
            admit_per_second: self.admit_per_second.max(1),
            vip_share_percent: self.vip_share_percent.min(100),
            vip_contacts: self.vip_contacts.clone(),
            overload: overload.settings(),
        }
    }
}

#[derive(Deserialize, Debug, Clone)]
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

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct EpusdtSection {
    pub gateway_url: Option<String>,
    pub token: Option<Secret>,
}

#[derive(Deserialize, Debug, Clone)]
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

#[derive(Deserialize, Debug, Clone)]
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

#[derive(Deserialize, Debug, Clone)]
#[serde(default)]
pub struct ShopSection {
    pub currency: String,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct EpaySection {
    pub pid: Option<String>,
    pub key: Option<Secret>,
    pub gateway_url: Option<String>,
    /// Create payments through the gateway's `mapi.php` instead of a signed `submit.php` URL.
    pub create_via_mapi: bool,
}

#[derive(Deserialize, Debug, Clone)]
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
    pub shutdown_timeout_secs: u64,
    /// How long an idle keep-alive connection stays open.
    pub keep_alive_secs: u64,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(default)]
pub struct LogSection {
    /// `json` (default) or `text`.
    pub format: String,
    /// A tracing filter, for example `info` or `panshi=debug`.
    pub level: String,
}

/// Alert rules (see `actors::alerts`): thresholds, how often they run, where they are sent.
#[derive(Deserialize, Debug, Clone)]
#[serde(default)]
pub struct AlertsSection {
    /// Seconds between two evaluations of the rules.
    pub evaluation_interval_secs: u64,
    /// An `http://` URL that receives each fired and cleared alert as a JSON POST.
    pub webhook_url: Option<String>,
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
}

/// Error reporting: errors and panics go to Sentry only when a DSN is set.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct SentrySection {
    /// An `http://` Sentry DSN (this build sends no TLS).
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
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=ALERT_EVALUATION_INTERVAL_SECS_MAX).contains(&self.evaluation_interval_secs),
            "alerts.evaluation_interval_secs must be 1 to {ALERT_EVALUATION_INTERVAL_SECS_MAX}"
        );
        anyhow::ensure!(
            (2..=actors::alerts::ALERT_HISTORY_SAMPLES_MAX).contains(&self.latency_rise_samples),
            "alerts.latency_rise_samples must be 2 to {}",
            actors::alerts::ALERT_HISTORY_SAMPLES_MAX
        );
        if let Some(url) = self.webhook_url.as_deref().filter(|u| !u.is_empty()) {
            crate::post::HttpUrl::parse(url)
                .map_err(|e| anyhow::anyhow!("alerts.webhook_url: {e}"))?;
        }
        Ok(())
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            admin_token: None,
            listen: "127.0.0.1:8080".into(),
            data: PathBuf::from("./panshi-data"),
            public_url: None,
            order_ttl_secs: engine::order::ORDER_TTL_MS_DEFAULT / 1000,
            shards_per_sku: engine::pool::SHARDS_PER_SKU_DEFAULT,
            shop: ShopSection::default(),
            epay: EpaySection::default(),
            epusdt: EpusdtSection::default(),
            stripe: StripeSection::default(),
            payment_methods: actors::payment::default_methods(),
            http: HttpSection::default(),
            log: LogSection::default(),
            alerts: AlertsSection::default(),
            sentry: SentrySection::default(),
            demo: false,
            breaker: BreakerSection::default(),
            resellers: Default::default(),
            limits: crate::limits::LimitsSettings::default(),
            risk: RiskSection::default(),
            flash: FlashSection::default(),
            overload: OverloadSection::default(),
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

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            workers: 0,
            connections_per_worker_max: 25_000,
            json_body_bytes_max: 64 * 1024,
            websockets_max: 50_000,
            shutdown_timeout_secs: 10,
            keep_alive_secs: 75,
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: "json".into(),
            level: "info".into(),
        }
    }
}

/// Loads settings from the optional file, the environment, then `overrides` (flags).
pub fn load(file: Option<&Path>, overrides: &[(&str, String)]) -> anyhow::Result<ServerSettings> {
    let mut builder = config::Config::builder();
    if let Some(file) = file {
        builder = builder.add_source(
            config::File::from(file)
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    builder = builder.add_source(
        config::Environment::with_prefix("PANSHI")
            .prefix_separator("_")
            .separator("__"),
    );
    for (key, value) in overrides {
        builder = builder.set_override(*key, value.clone())?;
    }
    let settings: ServerSettings = builder.build()?.try_deserialize()?;
    settings.alerts.validate()?;
    anyhow::ensure!(
        settings.order_ttl_secs >= 1,
        "order_ttl_secs must be at least 1"
    );
    anyhow::ensure!(
        (1..=engine::pool::SHARDS_PER_SKU_MAX).contains(&settings.shards_per_sku),
        "shards_per_sku must be 1 to {}",
        engine::pool::SHARDS_PER_SKU_MAX
    );
    Ok(settings)
}
