//! What operators see beyond single requests: running HTTP totals, the alert rules run every
//! few seconds over samples of the shop, the operator's incident note, and the components of
//! the public status page, all derived from the same health data.
//!
//! Invariants: the rules themselves are pure (`actors::alerts`); this module only samples,
//! publishes (metrics, log, and the operator channels of `notify.rs`) and serves them. The incident note is at most
//! `INCIDENT_NOTE_BYTES_MAX` bytes. No order id or contact ever becomes a metric label.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use actors::alerts::{Alert, AlertSettings, Alerts, Rule, Sample};
use actors::Shop;
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::notify::{alert_json, Notifier};
use crate::AppState;

/// Longest incident note an operator may set.
pub const INCIDENT_NOTE_BYTES_MAX: usize = 2_000;

/// Help text and unit of every metric the shop records, so the scrape passes
/// `promtool check metrics`. Call once, after the recorder is installed.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "panshi_http_requests_total",
        "HTTP requests by route pattern, method and status class."
    );
    describe_histogram!(
        "panshi_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request duration by route pattern and method."
    );
    describe_gauge!(
        "panshi_websockets_open",
        "Open live-order WebSocket connections."
    );
    describe_counter!(
        "panshi_operator_auth_failures_total",
        "Wrong operator tokens (bearer or sign-in); each one lengthens its address's lockout."
    );
    describe_counter!(
        "panshi_http_body_timeouts_total",
        "Requests answered 408 because their body arrived too slowly."
    );
    describe_counter!(
        "panshi_http_connections_refused_total",
        "Connections refused (429) because their address already held its cap of open ones."
    );
    describe_counter!(
        "panshi_http_client_faults_total",
        "Connections the HTTP layer dropped for a client's fault (malformed request, broken connection)."
    );
    describe_histogram!(
        "panshi_log_commit_seconds",
        Unit::Seconds,
        "Wait of the oldest record of a log group commit, until fdatasync."
    );
    describe_histogram!(
        "panshi_log_group_records",
        Unit::Count,
        "Records per log group commit (batch size)."
    );
    describe_gauge!("panshi_actors_live", "Live actors by kind.");
    describe_gauge!(
        "panshi_pipeline_in_flight",
        "Order creations in flight (sampled every 100 ms)."
    );
    describe_gauge!(
        "panshi_overload_saturated",
        "1 while the order pipeline is saturated and new buyers queue automatically."
    );
    describe_counter!(
        "panshi_queue_tickets_total",
        "Buyers given a waiting-room ticket instead of an order, by lane."
    );
    describe_counter!(
        "panshi_rate_limited_total",
        "Requests refused 429 by the per-client rate limits, by lane."
    );
    describe_counter!(
        "panshi_risk_refusals_total",
        "New orders refused by a risk rule, by rule."
    );
    describe_counter!(
        "panshi_orders_manual_queue_total",
        "Orders sent to the manual payment queue because every channel was down."
    );
    describe_counter!(
        "panshi_reseller_orders_total",
        "Reseller bulk purchases committed."
    );
    describe_counter!(
        "panshi_webhook_failures_total",
        "Reseller webhook delivery attempts that failed."
    );
    describe_counter!(
        "panshi_overload_episodes_total",
        "Times the order pipeline became saturated."
    );
    describe_gauge!(
        "panshi_channel_breaker_state",
        "Payment channel circuit breaker: 0 closed, 1 half-open, 2 open."
    );
    describe_counter!(
        "panshi_gateway_calls_total",
        "Server-to-server calls to payment gateways (create, query), by channel and outcome."
    );
    describe_counter!(
        "panshi_reconcile_recoveries_total",
        "Orders found paid by querying the gateway before their notify arrived."
    );
    describe_gauge!(
        "panshi_actor_mailbox_depth",
        "Messages sent to actors of a kind and not yet answered."
    );
    describe_histogram!(
        "panshi_actor_handling_seconds",
        Unit::Seconds,
        "Time an actor took to handle one message, commit included."
    );
    describe_counter!(
        "panshi_actor_restarts_total",
        "Supervisor restarts by actor kind."
    );
    describe_counter!(
        "panshi_actor_errors_total",
        "Operational failures reported by actors of a kind."
    );
    describe_counter!("panshi_orders_created_total", "Orders created.");
    describe_counter!(
        "panshi_orders_sold_out_at_once_total",
        "Creates answered sold out from the published stock count, before any work for the order."
    );
    describe_counter!(
        "panshi_lookup_password_hashes_total",
        "Buyers' lookup passwords hashed for new orders (PBKDF2: CPU-heavy)."
    );
    describe_counter!(
        "panshi_orders_paid_total",
        "Orders paid, by payment channel."
    );
    describe_counter!("panshi_orders_delivered_total", "Orders delivered.");
    describe_counter!("panshi_orders_expired_total", "Orders expired unpaid.");
    describe_counter!(
        "panshi_orders_manual_review_total",
        "Paid orders sent to manual review."
    );
    describe_gauge!(
        "panshi_manual_review_orders",
        "Orders waiting in the manual-review queue."
    );
    describe_gauge!("panshi_orders", "Orders ever made, in memory and archived.");
    describe_gauge!(
        "panshi_orders_in_memory",
        "Orders held in memory; the rest are settled, archived by a snapshot into cold tables."
    );
    describe_gauge!(
        "panshi_keys",
        "Card keys ever imported, in memory and archived."
    );
    describe_gauge!(
        "panshi_keys_in_memory",
        "Card keys held in memory; the rest were sold by archived orders and left with them."
    );
    describe_counter!("panshi_payment_notifies_total", "Payment notifications by channel, outcome and reason; success rate is outcome=applied over all.");
    describe_histogram!(
        "panshi_delivery_seconds",
        Unit::Seconds,
        "From a payment reaching its order to its keys being durable and pushed."
    );
    describe_histogram!(
        "panshi_order_create_to_delivery_seconds",
        Unit::Seconds,
        "From order creation to delivery."
    );
    describe_gauge!("panshi_alerts_active", "Alerts firing now, by rule.");
    describe_gauge!(
        "panshi_raft_term",
        "The cluster's current term, as this node knows it."
    );
    describe_gauge!(
        "panshi_raft_leader_id",
        "The leader's node id (0: none known)."
    );
    describe_gauge!(
        "panshi_raft_active",
        "1 while this node leads and takes writes (past its readiness gate)."
    );
    describe_gauge!(
        "panshi_raft_commit_index",
        "The last log index known committed."
    );
    describe_gauge!(
        "panshi_raft_applied_index",
        "The last log index applied here."
    );
    describe_gauge!(
        "panshi_raft_quorum_ack_age_seconds",
        "On the leader: time since a majority last answered."
    );
    describe_gauge!(
        "panshi_raft_follower_lag_entries",
        "On the leader: log entries each follower is behind."
    );
    describe_gauge!(
        "panshi_raft_snapshot_failures",
        "Snapshot builds that failed (a full disk) since this node started, tried every 30 s; the log is kept until one succeeds."
    );
    describe_counter!(
        "panshi_outbound_posts_total",
        "Outbound alert and error-report POSTs by outcome."
    );
    describe_counter!(
        "panshi_mails_total",
        "Tries to send a buyer's delivery mail, by outcome."
    );
    describe_counter!(
        "panshi_operator_mails_total",
        "Operator alert mails, by outcome."
    );
}

/// Requests, 5xx answers and total latency since start, fed by the request middleware.
#[derive(Default)]
pub struct HttpTotals {
    requests: AtomicU64,
    errors: AtomicU64,
    latency_us: AtomicU64,
}

impl HttpTotals {
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// A note the operator sets for the public status page.
#[derive(Debug, Clone)]
pub struct Incident {
    pub note: String,
    pub at_ms: u64,
}

/// How a component of the shop is doing, as the status page says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Operational,
    Degraded,
    Down,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Operational => "operational",
            Level::Degraded => "degraded",
            Level::Down => "down",
        }
    }
}

/// Alerts, incident note and HTTP totals, shared by the middleware, the evaluator task and
/// the operator routes.
pub struct Observatory {
    pub http: HttpTotals,
    alerts: Mutex<Alerts>,
    incident: Mutex<Option<Incident>>,
    /// Where fired and cleared alerts are sent besides the log.
    notifier: Notifier,
    /// When a cluster leader was last known (0: not sampled yet).
    leader_seen_ms: std::sync::atomic::AtomicU64,
}

impl Observatory {
    pub fn new(rules: AlertSettings, notifier: Notifier) -> Self {
        Self {
            http: HttpTotals::default(),
            alerts: Mutex::new(Alerts::new(rules)),
            incident: Mutex::new(None),
            notifier,
            leader_seen_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Reads the shop, the cluster and the HTTP totals at `shop.now_ms()`.
    pub fn sample(&self, shop: &Shop, cluster: &replication::ClusterStatus) -> Sample {
        let (manual_review_count, oldest_undelivered_paid_at_ms) =
            shop.order_book().delivery_backlog();
        let lag = shop.store().mirror_lag();
        let now_ms = shop.now_ms();
        let first = self.leader_seen_ms.load(Ordering::Relaxed) == 0;
        let leader_seen_ms = if cluster.leader_id.is_some() || first {
            self.leader_seen_ms.store(now_ms, Ordering::Relaxed);
            now_ms
        } else {
            self.leader_seen_ms.load(Ordering::Relaxed)
        };
        let applied = cluster.applied_index;
        let follower_lag = cluster
            .members
            .iter()
            .filter(|m| m.node_id != cluster.node_id)
            .filter_map(|m| {
                m.matched_index
                    .map(|matched| (m.node_id, applied.saturating_sub(matched)))
            })
            .collect();
        Sample {
            leaderless_ms: now_ms.saturating_sub(leader_seen_ms),
            follower_lag,
            at_ms: shop.now_ms(),
            requests_total: self.http.requests.load(Ordering::Relaxed),
            errors_total: self.http.errors.load(Ordering::Relaxed),
            latency_us_total: self.http.latency_us.load(Ordering::Relaxed),
            channels: shop.channel_totals(),
            // A product never stocked is not "running low": it is being set up.
            stock: shop
                .products()
                .list()
                .into_iter()
                .filter(|p| p.stock.imported > 0)
                .map(|p| (p.product.sku.as_str().to_owned(), p.stock.available))
                .collect(),
            oldest_undelivered_paid_at_ms,
            manual_review_count,
            data_dir_free_bytes: storage::disk::free_bytes(shop.store().data_dir()).ok(),
            mirror_lag_records: lag.records,
            mirror_lag_ms: lag.age.as_millis() as u64,
        }
    }

    /// Samples, runs the rules, and publishes what changed.
    pub fn evaluate(&self, shop: &Shop, cluster: &replication::ClusterStatus) {
        let sample = self.sample(shop, cluster);
        cluster_metrics(cluster);
        metrics::gauge!("panshi_manual_review_orders").set(sample.manual_review_count as f64);
        let (orders, in_memory, keys, keys_in_memory) = {
            let state = shop.store().state();
            let orders = (state.orders_count(), state.hot_orders_count());
            (
                orders.0,
                orders.1,
                state.cards_count(),
                state.hot_cards_count(),
            )
        };
        metrics::gauge!("panshi_orders").set(orders as f64);
        metrics::gauge!("panshi_orders_in_memory").set(in_memory as f64);
        metrics::gauge!("panshi_keys").set(keys as f64);
        metrics::gauge!("panshi_keys_in_memory").set(keys_in_memory as f64);
        let (changes, counts) = {
            let mut alerts = self.alerts.lock();
            let changes = alerts.evaluate(sample);
            let counts = Rule::ALL.map(|rule| (rule, alerts.active_count(rule)));
            (changes, counts)
        };
        for (rule, count) in counts {
            metrics::gauge!("panshi_alerts_active", "rule" => rule.as_str()).set(count as f64);
        }
        for alert in changes {
            self.publish(&alert);
        }
    }

    fn publish(&self, alert: &Alert) {
        if alert.cleared_ms.is_some() {
            tracing::info!(rule = alert.rule.as_str(), subject = %alert.subject, message = %alert.message, "alert cleared");
        } else {
            tracing::warn!(rule = alert.rule.as_str(), subject = %alert.subject, message = %alert.message, alert = true, "alert fired");
        }
        self.notifier.alert(alert);
    }

    /// Active and recently cleared alerts, as the operator endpoint answers.
    pub fn alerts_json(&self) -> Value {
        let alerts = self.alerts.lock();
        json!({
            "active": alerts.active().map(alert_json).collect::<Vec<_>>(),
            "recent": alerts.recent().rev().map(alert_json).collect::<Vec<_>>(),
            "dropped": alerts.dropped_count,
        })
    }

    /// The (rule, subject) pairs active now.
    pub fn active(&self) -> Vec<(Rule, String)> {
        self.alerts
            .lock()
            .active()
            .map(|a| (a.rule, a.subject.clone()))
            .collect()
    }

    /// Sets the incident note; an empty (or blank) note clears it.
    pub fn set_incident(&self, note: &str, at_ms: u64) -> Result<(), &'static str> {
        if note.len() > INCIDENT_NOTE_BYTES_MAX {
            return Err("note must be at most 2000 bytes");
        }
        if note
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err("note may not hold control characters but line breaks and tabs");
        }
        let note = note.trim();
        *self.incident.lock() = (!note.is_empty()).then(|| Incident {
            note: note.to_owned(),
            at_ms,
        });
        Ok(())
    }

    pub fn incident(&self) -> Option<Incident> {
        self.incident.lock().clone()
    }
}

/// The status page's components: ordering, each payment channel, delivery. `ready` is
/// whether the log takes writes; `active` the alerts firing now.
pub fn components(
    ready: bool,
    epay_configured: bool,
    active: &[(Rule, String)],
) -> Vec<(&'static str, Level)> {
    let firing = |rule: Rule, subject: &str| {
        active
            .iter()
            .any(|(r, s)| *r == rule && (subject.is_empty() || s == subject))
    };
    let level = |down: bool, degraded: bool| match (down, degraded) {
        (true, _) => Level::Down,
        (false, true) => Level::Degraded,
        (false, false) => Level::Operational,
    };
    vec![
        (
            "Ordering",
            level(
                !ready,
                firing(Rule::ErrorRate, "") || firing(Rule::LatencyRising, ""),
            ),
        ),
        (
            "Payment: Epay (Alipay, WeChat Pay, QQ Pay)",
            level(
                !ready || !epay_configured,
                firing(Rule::PaymentSuccess, "epay"),
            ),
        ),
        ("Delivery", level(!ready, firing(Rule::DeliveryOverdue, ""))),
        (
            "Replication",
            level(firing(Rule::NoLeader, ""), firing(Rule::FollowerLag, "")),
        ),
    ]
}

/// The cluster's gauges. Member labels are bounded by the cluster's size.
fn cluster_metrics(cluster: &replication::ClusterStatus) {
    metrics::gauge!("panshi_raft_term").set(cluster.term as f64);
    metrics::gauge!("panshi_raft_leader_id").set(cluster.leader_id.unwrap_or(0) as f64);
    metrics::gauge!("panshi_raft_active").set(if cluster.active { 1.0 } else { 0.0 });
    metrics::gauge!("panshi_raft_commit_index").set(cluster.commit_index as f64);
    metrics::gauge!("panshi_raft_applied_index").set(cluster.applied_index as f64);
    metrics::gauge!("panshi_raft_snapshot_failures").set(cluster.snapshot_failures as f64);
    if let Some(ms) = cluster.millis_since_quorum_ack {
        metrics::gauge!("panshi_raft_quorum_ack_age_seconds").set(ms as f64 / 1000.0);
    }
    for member in cluster
        .members
        .iter()
        .filter(|m| m.node_id != cluster.node_id)
    {
        if let Some(matched) = member.matched_index {
            let lag = cluster.applied_index.saturating_sub(matched);
            metrics::gauge!("panshi_raft_follower_lag_entries", "node" => member.node_id.to_string())
                .set(lag as f64);
        }
    }
}

/// Runs the alert rules every `interval` on the current runtime, for as long as it runs.
pub fn start_evaluator(state: web::Data<AppState>, interval: Duration) {
    let observatory: Arc<Observatory> = state.observatory.clone();
    actix_web::rt::spawn(async move {
        let mut ticks = actix_web::rt::time::interval(interval);
        loop {
            ticks.tick().await;
            state.limits.prune();
            crate::routes::resellers::prune_limits();
            observatory.evaluate(&state.shop, &state.cluster.node.status());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_follow_readiness_and_alerts() {
        let all_ok = components(true, true, &[]);
        assert!(all_ok.iter().all(|(_, l)| *l == Level::Operational));
        let down = components(false, true, &[]);
        assert!(down[..3].iter().all(|(_, l)| *l == Level::Down));
        let active = [
            (Rule::PaymentSuccess, "epay".to_owned()),
            (Rule::DeliveryOverdue, String::new()),
        ];
        let levels: Vec<Level> = components(true, true, &active)
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        assert_eq!(
            levels,
            [
                Level::Operational,
                Level::Degraded,
                Level::Degraded,
                Level::Operational
            ]
        );
        let leaderless = [(Rule::NoLeader, String::new())];
        assert_eq!(components(true, true, &leaderless)[3].1, Level::Down);
        let lagging = [(Rule::FollowerLag, "node 3".to_owned())];
        assert_eq!(components(true, true, &lagging)[3].1, Level::Degraded);
        assert_eq!(components(true, false, &[])[1].1, Level::Down);
    }

    #[test]
    fn incident_note_is_bounded_and_blank_clears() {
        let observatory = Observatory::new(AlertSettings::default(), Notifier::default());
        observatory.set_incident("  payments slow  ", 5).unwrap();
        assert_eq!(observatory.incident().unwrap().note, "payments slow");
        assert!(observatory
            .set_incident(&"x".repeat(INCIDENT_NOTE_BYTES_MAX + 1), 6)
            .is_err());
        observatory.set_incident(" ", 7).unwrap();
        assert!(observatory.incident().is_none());
    }
}
