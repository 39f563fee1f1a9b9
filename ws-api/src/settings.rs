//! Server settings: defaults < config file (TOML) < environment (`PANSHI_`, `__` between
//! levels) < command-line flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Deserialize, Debug, Clone)]
#[serde(default)]
pub struct ServerSettings {
    /// Operator bearer token. When unset, a random one is generated and printed at start.
    pub admin_token: Option<String>,
    pub listen: String,
    pub data: PathBuf,
    /// Base URL gateways and buyers reach this shop at; defaults to `http://{listen}`.
    pub public_url: Option<String>,
    pub order_ttl_secs: u64,
    pub shards_per_sku: usize,
    pub shop: ShopSection,
    pub epay: EpaySection,
    pub http: HttpSection,
    pub log: LogSection,
    /// Seed a demo catalogue and mount the built-in demo gateway.
    pub demo: bool,
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
    pub key: Option<String>,
    pub gateway_url: Option<String>,
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
}

#[derive(Deserialize, Debug, Clone)]
#[serde(default)]
pub struct LogSection {
    /// `json` (default) or `text`.
    pub format: String,
    /// A tracing filter, for example `info` or `panshi=debug`.
    pub level: String,
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
            http: HttpSection::default(),
            log: LogSection::default(),
            demo: false,
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
