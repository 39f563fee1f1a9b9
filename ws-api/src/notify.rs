//! Where operator alerts go besides the log: a webhook (JSON POST, `https://` or `http://`),
//! a Telegram bot (the Bot API's `sendMessage`), and the operators' e-mail.
//!
//! Invariants: publishing an alert only queues (`post::Poster`, `mail::OperatorMail`, both
//! bounded), so the evaluator never waits on a receiver; the bot token is part of the Bot
//! API's URL path and is never logged (`post` logs hosts only).

use actors::alerts::Alert;
use engine::time::format_rfc3339_ms;
use serde_json::{json, Value};

use crate::mail::{Notice, OperatorMail};
use crate::post::{web_url, Post, Poster};
use crate::settings::AlertsSection;

/// The configured channels of operator alerts.
#[derive(Default)]
pub struct Notifier {
    poster: Option<Poster>,
    webhook: Option<reqwest::Url>,
    /// `sendMessage`'s URL (holding the token) and the chat.
    telegram: Option<(reqwest::Url, String)>,
    email: Option<OperatorMail>,
}

impl Notifier {
    /// The channels `[alerts]` configures; `email` is the operators' mail queue when
    /// `alerts.email_to` and `[smtp]` are set.
    pub fn new(settings: &AlertsSection, email: Option<OperatorMail>) -> anyhow::Result<Notifier> {
        let webhook = match settings.webhook_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => {
                Some(web_url(url).map_err(|e| anyhow::anyhow!("alerts.webhook_url: {e}"))?)
            }
            None => None,
        };
        let telegram = match (&settings.telegram.bot_token, &settings.telegram.chat_id) {
            (Some(token), Some(chat_id)) => {
                let base = settings.telegram.api_base.trim_end_matches('/');
                let url = web_url(&format!("{base}/bot{}/sendMessage", token.0)).map_err(|_| {
                    anyhow::anyhow!(
                        "alerts.telegram: the bot token or api_base is not usable in a URL"
                    )
                })?;
                Some((url, chat_id.clone()))
            }
            _ => None,
        };
        let poster = (webhook.is_some() || telegram.is_some()).then(Poster::start);
        Ok(Notifier {
            poster,
            webhook,
            telegram,
            email,
        })
    }

    /// Queues a fired or cleared alert to every channel.
    pub fn alert(&self, alert: &Alert) {
        let event = if alert.cleared_ms.is_some() {
            "cleared"
        } else {
            "fired"
        };
        if let (Some(poster), Some(url)) = (&self.poster, &self.webhook) {
            let mut body = alert_json(alert);
            body["event"] = json!(event);
            poster.post(Post {
                url: url.clone(),
                content_type: "application/json",
                headers: Vec::new(),
                body: body.to_string().into_bytes(),
            });
        }
        let text = alert_text(alert, event);
        if let (Some(poster), Some((url, chat_id))) = (&self.poster, &self.telegram) {
            let body = json!({"chat_id": chat_id, "text": text, "disable_web_page_preview": true});
            poster.post(Post {
                url: url.clone(),
                content_type: "application/json",
                headers: Vec::new(),
                body: body.to_string().into_bytes(),
            });
        }
        if let Some(email) = &self.email {
            email.send(Notice {
                subject: format!(
                    "[panshi] {} {event}: {}",
                    alert.rule.as_str(),
                    alert.subject
                ),
                body: format!("{text}\n"),
            });
        }
    }
}

/// An alert as the operator endpoint and the webhook show it.
pub fn alert_json(alert: &Alert) -> Value {
    json!({
        "rule": alert.rule.as_str(),
        "subject": alert.subject,
        "message": alert.message,
        "since": format_rfc3339_ms(alert.since_ms),
        "cleared_at": alert.cleared_ms.map(format_rfc3339_ms),
    })
}

/// An alert as one line of text (Telegram, e-mail).
fn alert_text(alert: &Alert, event: &str) -> String {
    let marker = if alert.cleared_ms.is_some() {
        "✅"
    } else {
        "⚠️"
    };
    format!(
        "{marker} Panshi alert {event}: {} — {}",
        alert.rule.as_str(),
        alert.message
    )
}
