//! Choosing where a buyer pays. A new order names a channel (`epay`, `epusdt`, `stripe`,
//! `alipay`, `wechat`) or
//! a payment method that the configuration maps to an ordered list of channels (primary,
//! then backups). The first configured channel whose circuit breaker is not open gets the
//! order; when every configured channel of the method is open or failing, the order is
//! still accepted, into the manual payment queue, with instructions for the buyer.

use std::collections::BTreeMap;

use engine::money::format_cents;
use engine::payment::epay_submit_url;
use engine::{Currency, OrderId, Rejection};

use crate::channel::{Create, CreateRequest};
use crate::Shop;

/// The channel of orders that no gateway could take: an operator confirms them by hand.
pub const MANUAL_CHANNEL: &str = "manual";
/// Channels Panshi speaks.
pub const CHANNELS: [&str; 5] = ["epay", "epusdt", "stripe", "alipay", "wechat"];

/// The default method -> channels map; the configuration may replace it. The direct
/// channels come first where they are configured, the aggregator after them; a channel
/// that is not configured is skipped when an order is placed.
pub fn default_methods() -> BTreeMap<String, Vec<String>> {
    let mut methods = BTreeMap::new();
    for (method, channels) in [
        ("alipay", &["alipay", "epay"][..]),
        ("wxpay", &["wechat", "epay"]),
        ("qqpay", &["epay"]),
        ("usdt", &["epusdt"]),
        ("card", &["stripe"]),
    ] {
        methods.insert(
            method.to_owned(),
            channels.iter().map(|c| c.to_string()).collect(),
        );
    }
    methods
}

/// Where the buyer pays.
#[derive(Debug, Clone)]
pub struct PaymentLink {
    pub channel: String,
    pub url: String,
    pub reference: String,
}

/// What the buyer needs to name a payment: the order and its product.
pub struct PaymentSubject<'a> {
    pub order_id: &'a OrderId,
    pub name: &'a str,
    pub amount_cents: u64,
    pub currency: Currency,
    /// The buyer is on a phone (Alipay's wap flow).
    pub phone: bool,
}

impl Shop {
    /// The ordered channels for what the buyer asked for, each with the Epay `type` to use.
    /// A method wins over a channel of the same name: `alipay` is the method (the direct
    /// channel, then Epay), so a buyer who asks for it keeps the fallback.
    fn candidates(&self, requested: &str) -> Result<Vec<(String, String)>, Rejection> {
        if let Some(channels) = self.settings().payment_methods.get(requested) {
            return Ok(channels
                .iter()
                .map(|c| (c.clone(), requested.to_owned()))
                .collect());
        }
        if CHANNELS.contains(&requested) {
            return Ok(vec![(requested.to_owned(), String::new())]);
        }
        Err(Rejection::UnknownChannel)
    }

    /// Whether a verified payment through `channel` may pay the order (and deliver it):
    /// the channel the order was created on, a channel of what the buyer asked for (the
    /// method's fallbacks: a gateway that timed out at creation may still have taken the
    /// money), or an operator's confirmation. Any other goes to manual review. Keyed by
    /// channel name only, so every channel, present or future, is bound the same way.
    pub fn channel_may_pay(&self, order_id: &OrderId, channel: &str) -> bool {
        if channel == MANUAL_CHANNEL {
            return true;
        }
        let state = self.store().state();
        let Some(record) = state.order(order_id) else {
            return true; // Unknown orders are refused by the order itself.
        };
        let created = &record.created;
        created.payment_channel == channel
            || self
                .candidates(&created.channel)
                .is_ok_and(|candidates| candidates.iter().any(|(c, _)| c == channel))
    }

    fn usable(&self, channel: &str) -> bool {
        self.0.channels.is_usable(channel, self.now_ms())
    }

    /// Picks the channel and creates the payment there; falls back along the method's list,
    /// then to the manual queue.
    pub(crate) async fn payment_link(
        &self,
        requested: &str,
        subject: &PaymentSubject<'_>,
    ) -> Result<PaymentLink, Rejection> {
        let mut configured = false;
        for (channel, method) in self.candidates(requested)? {
            let link = match channel.as_str() {
                "epay" if self.settings().epay.is_some() => {
                    configured = true;
                    if !self.usable("epay") {
                        continue;
                    }
                    let via_mapi = self
                        .settings()
                        .epay
                        .as_ref()
                        .is_some_and(|e| e.create_via_mapi);
                    match via_mapi.then(|| self.channel("epay")).flatten() {
                        Some(addr) => self.create_at(&addr, "epay", &method, subject).await,
                        None => self.epay_link(&method, subject),
                    }
                }
                other => match self.channel(other) {
                    Some(addr) => {
                        configured = true;
                        self.create_at(&addr, other, &method, subject).await
                    }
                    None => None,
                },
            };
            if let Some(link) = link {
                return Ok(link);
            }
        }
        if !configured {
            return Err(Rejection::ChannelUnavailable);
        }
        metrics::counter!("panshi_orders_manual_queue_total").increment(1);
        tracing::warn!(order_id = %subject.order_id, requested, alert = true, "every channel is down; order goes to the manual payment queue");
        let base = self.settings().public_url.trim_end_matches('/');
        Ok(PaymentLink {
            channel: MANUAL_CHANNEL.to_owned(),
            url: format!("{base}/pay/manual/{}", subject.order_id),
            reference: String::new(),
        })
    }

    /// Creates the payment at a gateway, behind its channel's breaker; `None` on failure.
    async fn create_at(
        &self,
        addr: &actix::Addr<crate::channel::ChannelActor>,
        channel: &str,
        method: &str,
        subject: &PaymentSubject<'_>,
    ) -> Option<PaymentLink> {
        match addr
            .send(Create(self.create_request(channel, method, subject)))
            .await
        {
            Ok(Ok(created)) => Some(PaymentLink {
                channel: channel.to_owned(),
                url: created.url,
                reference: created.reference,
            }),
            Ok(Err(error)) => {
                tracing::warn!(channel, order_id = %subject.order_id, %error, "payment creation failed; trying the next channel");
                None
            }
            Err(_) => None,
        }
    }

    fn create_request(
        &self,
        channel: &str,
        method: &str,
        subject: &PaymentSubject<'_>,
    ) -> CreateRequest {
        let base = self.settings().public_url.trim_end_matches('/');
        let notify_path = match channel {
            "stripe" => "stripe/webhook",
            "epay" => "epay/notify",
            "alipay" => "alipay/notify",
            "wechat" => "wechat/notify",
            _ => "epusdt/notify",
        };
        CreateRequest {
            method: method.to_owned(),
            order_id: subject.order_id.clone(),
            amount_cents: subject.amount_cents,
            currency: subject.currency.as_str().to_owned(),
            name: subject.name.to_owned(),
            notify_url: format!("{base}/api/v1/payments/{notify_path}"),
            return_url: order_page_url(base, subject),
            phone: subject.phone,
        }
    }

    fn epay_link(&self, method: &str, subject: &PaymentSubject<'_>) -> Option<PaymentLink> {
        let epay = self.settings().epay.as_ref()?;
        let base = self.settings().public_url.trim_end_matches('/');
        let notify_url = format!("{base}/api/v1/payments/epay/notify");
        let return_url = order_page_url(base, subject);
        let money = format_cents(subject.amount_cents);
        let fields = [
            ("pid", epay.pid.as_str()),
            ("type", method),
            ("out_trade_no", subject.order_id.as_str()),
            ("notify_url", notify_url.as_str()),
            ("return_url", return_url.as_str()),
            ("name", subject.name),
            ("money", money.as_str()),
        ];
        Some(PaymentLink {
            channel: "epay".to_owned(),
            url: epay_submit_url(&epay.gateway_url, &epay.key, &fields),
            reference: String::new(),
        })
    }
}

/// The buyer's order page, where a gateway sends the buyer back after paying (on a phone
/// the buyer returns there, not to the catalogue). It carries no token: the URL is kept in
/// the log and seen by the gateway; the buyer's browser holds the token in a cookie for this
/// order's page since it first opened it.
pub fn order_page_url(base: &str, subject: &PaymentSubject<'_>) -> String {
    format!("{base}/order/{}", subject.order_id)
}
