//! E-mail over SMTP (lettre, with rustls): each buyer's delivery mail from the durable
//! outbox (actors/src/mail.rs), and operators' alert notices.
//!
//! Invariants: the outbox worker never holds a lock across a send (it reads due mails, sends,
//! then commits the outcome), so a slow or failing mail server never slows a purchase; every
//! try has a timeout (`smtp.timeout_ms`); at most `MAIL_BATCH_MAX` due mails are held in
//! memory at once, the rest wait in the log; operator notices wait in a queue of
//! `OPERATOR_QUEUE_CAPACITY` (more are dropped and counted). A delivery mail's `Message-ID`
//! is derived from its order, so a resend after a crash carries the same one.
//!
//! Key decision: STARTTLS is required by default (`smtp.tls = "starttls"`): a server that
//! does not offer it fails the try instead of receiving the buyer's keys in the clear.

use std::time::Duration;

use actors::mail::{DeliveryMail, MailOutcome};
use actors::Shop;
use lettre::message::{header::ContentType, Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::sync::mpsc::{channel, error::TrySendError, Receiver, Sender};

use crate::settings::{SmtpSection, SmtpTls};

/// Due mails read from the outbox per round.
pub const MAIL_BATCH_MAX: usize = 16;
/// An idle worker looks at the outbox this often even without a wake-up.
pub const MAIL_IDLE_RECHECK_MS: u64 = 5_000;
/// Pause after a failed outcome commit (the log refusing writes) before trying again.
pub const SETTLE_RETRY_MS: u64 = 1_000;
/// Operator notices that may wait for the sender.
pub const OPERATOR_QUEUE_CAPACITY: usize = 64;

/// The SMTP client and what every message needs.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The shop's base URL, for the order page's link.
    public_url: String,
    retry_first_ms: u64,
}

impl Mailer {
    /// Builds the client from `[smtp]` (validated by settings: a host and a sender are set).
    pub fn new(settings: &SmtpSection, public_url: &str) -> anyhow::Result<Mailer> {
        let host = settings.host.as_deref().unwrap_or_default();
        let builder = match settings.tls {
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)?,
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
        };
        let mut builder = builder
            .port(settings.port)
            .timeout(Some(Duration::from_millis(settings.timeout_ms)));
        if let (Some(username), Some(password)) = (&settings.username, &settings.password) {
            builder = builder.credentials(Credentials::new(username.clone(), password.0.clone()));
        }
        let from: Mailbox = settings.from.as_deref().unwrap_or_default().parse()?;
        Ok(Mailer {
            transport: builder.build(),
            from,
            public_url: public_url.trim_end_matches('/').to_owned(),
            retry_first_ms: settings.retry_first_ms,
        })
    }

    /// Sends one delivery mail.
    pub async fn send_delivery(&self, mail: &DeliveryMail) -> MailOutcome {
        let message = match delivery_message(&self.from, mail, &self.public_url) {
            Ok(message) => message,
            Err(error) => return MailOutcome::Failed { error },
        };
        match self.transport.send(message).await {
            Ok(_) => MailOutcome::Sent,
            Err(error) => MailOutcome::Failed {
                error: error.to_string(),
            },
        }
    }

    async fn send_notice(&self, to: &[Mailbox], notice: &Notice) -> Result<(), String> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(&notice.subject);
        for address in to {
            builder = builder.to(address.clone());
        }
        let message = builder
            .header(ContentType::TEXT_PLAIN)
            .body(notice.body.clone())
            .map_err(|e| e.to_string())?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The `Message-ID` of an order's delivery mail: the same for every try.
pub fn delivery_message_id(order_id: &str, from: &Mailbox) -> String {
    format!("<delivery.{order_id}@{}>", from.email.domain())
}

/// The order page's link, as the buyer's mail shows it.
pub fn order_link(public_url: &str, mail: &DeliveryMail) -> String {
    if mail.token.is_empty() {
        return format!("{public_url}/lookup");
    }
    format!("{public_url}/order/{}?token={}", mail.order_id, mail.token)
}

/// The buyer's mail: the keys and the order page's link, in English and Chinese.
pub fn delivery_message(
    from: &Mailbox,
    mail: &DeliveryMail,
    public_url: &str,
) -> Result<Message, String> {
    let to: Mailbox = mail
        .to
        .parse()
        .map_err(|e| format!("the contact is not a usable address: {e}"))?;
    let keys: String = mail.keys.iter().map(|key| format!("    {key}\n")).collect();
    let body = format!(
        "Thank you for your order. Your keys are below.\n\
         感谢您的购买，您的卡密如下。\n\n\
         Product / 商品: {product}\n\
         Order / 订单: {order}\n\n\
         Keys / 卡密:\n{keys}\n\
         Your order page (keep this link) / 订单页面（请保存此链接）:\n{link}\n",
        product = mail.product_name,
        order = mail.order_id,
        link = order_link(public_url, mail),
    );
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(format!("Your order / 您的订单: {}", mail.product_name))
        .message_id(Some(delivery_message_id(mail.order_id.as_str(), from)))
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| e.to_string())
}

/// Starts the outbox worker on the current actix system, after opening the outbox.
pub async fn start(shop: &Shop, mailer: Mailer) -> anyhow::Result<()> {
    shop.open_mail_outbox().await?;
    actix_web::rt::spawn(run_outbox(shop.clone(), mailer));
    Ok(())
}

/// The outbox worker (on the active leader only): send what is due, commit each outcome, sleep until woken or the next
/// retry is due.
async fn run_outbox(shop: Shop, mailer: Mailer) {
    let waker = shop.mail_waker();
    // Only the active leader sends; a new activation starts a new worker.
    let generation = shop.generation();
    loop {
        if !shop.is_active() || shop.generation() != generation {
            return;
        }
        let now_ms = shop.now_ms();
        let (due, next_at_ms) = shop.mails_due(now_ms, mailer.retry_first_ms, MAIL_BATCH_MAX);
        if due.is_empty() {
            let wait_ms = next_at_ms.map_or(MAIL_IDLE_RECHECK_MS, |at| {
                at.saturating_sub(now_ms).clamp(1, MAIL_IDLE_RECHECK_MS)
            });
            let _ = tokio::time::timeout(Duration::from_millis(wait_ms), waker.notified()).await;
            continue;
        }
        for mail in due {
            let outcome = mailer.send_delivery(&mail).await;
            let name = match &outcome {
                MailOutcome::Sent => "sent",
                MailOutcome::Failed { error } => {
                    tracing::warn!(order_id = %mail.order_id, attempt = mail.attempts + 1, %error, "delivery mail not sent");
                    "failed"
                }
            };
            metrics::counter!("panshi_mails_total", "outcome" => name).increment(1);
            if let Err(error) = shop.mail_settle(&mail, outcome).await {
                tracing::error!(order_id = %mail.order_id, %error, "mail outcome not committed");
                tokio::time::sleep(Duration::from_millis(SETTLE_RETRY_MS)).await;
                break;
            }
        }
    }
}

/// An operator notice: an alert fired or cleared.
#[derive(Clone, Debug)]
pub struct Notice {
    pub subject: String,
    pub body: String,
}

/// The operators' mail queue. Cheap to clone.
#[derive(Clone)]
pub struct OperatorMail {
    queue: Sender<Notice>,
}

impl OperatorMail {
    /// Starts the sender of operator notices to `to` on the current actix system.
    pub fn start(mailer: Mailer, to: Vec<Mailbox>) -> OperatorMail {
        let (queue, receiver) = channel(OPERATOR_QUEUE_CAPACITY);
        actix_web::rt::spawn(run_notices(mailer, to, receiver));
        OperatorMail { queue }
    }

    /// Queues a notice; drops it (counted) when the queue is full.
    pub fn send(&self, notice: Notice) {
        if let Err(TrySendError::Full(_)) = self.queue.try_send(notice) {
            metrics::counter!("panshi_operator_mails_total", "outcome" => "dropped").increment(1);
        }
    }
}

async fn run_notices(mailer: Mailer, to: Vec<Mailbox>, mut receiver: Receiver<Notice>) {
    while let Some(notice) = receiver.recv().await {
        let outcome = match mailer.send_notice(&to, &notice).await {
            Ok(()) => "sent",
            Err(error) => {
                tracing::warn!(%error, "operator mail not sent");
                "failed"
            }
        };
        metrics::counter!("panshi_operator_mails_total", "outcome" => outcome).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail() -> DeliveryMail {
        DeliveryMail {
            order_id: engine::OrderId::parse("o-42").unwrap(),
            token: "tok".into(),
            to: "buyer@example.com".into(),
            product_name: "Game key".into(),
            keys: vec!["KEY-1".into(), "KEY-2".into()],
            attempts: 0,
        }
    }

    #[test]
    fn the_delivery_mail_holds_the_keys_the_link_and_a_stable_message_id() {
        let from: Mailbox = "Shop <shop@shop.example>".parse().unwrap();
        let text = |m: &Message| String::from_utf8(m.formatted()).unwrap();
        let first = text(&delivery_message(&from, &mail(), "https://shop.example").unwrap());
        let again = text(&delivery_message(&from, &mail(), "https://shop.example").unwrap());
        assert!(
            first.contains("Message-ID: <delivery.o-42@shop.example>"),
            "{first}"
        );
        assert!(again.contains("Message-ID: <delivery.o-42@shop.example>"));
        assert!(first.contains("To: buyer@example.com"), "{first}");
    }

    #[test]
    fn starttls_is_the_default() {
        assert_eq!(SmtpSection::default().tls, SmtpTls::Starttls);
        assert_eq!(SmtpSection::default().port, 587);
    }
}
