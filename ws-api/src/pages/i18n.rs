//! The two languages of the pages. Each text is written in place as `lang.pick(en, zh)`, so a
//! missing translation is a compile error rather than a blank on the page.
//!
//! The language comes from the `panshi_lang` cookie (set by the switch at `/lang/{code}`),
//! else from `Accept-Language`, else English.

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use engine::OrderStatus;
use serde::Deserialize;

use crate::pages::cookie;

/// The cookie that remembers the buyer's choice of language.
pub const LANG_COOKIE: &str = "panshi_lang";
/// How long the language choice is remembered.
pub const LANG_COOKIE_MAX_AGE_SECS: u64 = 365 * 24 * 3600;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

impl Lang {
    pub fn from_code(code: &str) -> Option<Lang> {
        match code {
            "en" => Some(Lang::En),
            "zh" => Some(Lang::Zh),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh",
        }
    }

    /// The `lang` attribute of the document.
    pub fn html_lang(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }

    /// The other language, for the switch.
    pub fn other(self) -> Lang {
        match self {
            Lang::En => Lang::Zh,
            Lang::Zh => Lang::En,
        }
    }

    /// The language's own name, as the switch shows it.
    pub fn native_name(self) -> &'static str {
        match self {
            Lang::En => "English",
            Lang::Zh => "中文",
        }
    }

    pub fn pick(self, en: &'static str, zh: &'static str) -> &'static str {
        match self {
            Lang::En => en,
            Lang::Zh => zh,
        }
    }

    /// The cookie's choice, else the first language of `Accept-Language` we speak.
    pub fn of(request: &HttpRequest) -> Lang {
        if let Some(lang) = cookie(request, LANG_COOKIE).and_then(|c| Lang::from_code(&c)) {
            return lang;
        }
        let accept = request
            .headers()
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        accept_language(accept)
    }
}

/// The first of the listed languages we speak, by quality then position.
pub fn accept_language(header_value: &str) -> Lang {
    let mut best: Option<(u16, Lang)> = None;
    for item in header_value.split(',') {
        let mut parts = item.split(';');
        let tag = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let quality = parts
            .find_map(|p| p.trim().strip_prefix("q="))
            .and_then(|q| q.parse::<f32>().ok())
            .map_or(1000, |q| (q.clamp(0.0, 1.0) * 1000.0) as u16);
        let lang = if tag.starts_with("zh") {
            Lang::Zh
        } else if tag.starts_with("en") {
            Lang::En
        } else {
            continue;
        };
        if best.is_none_or(|(q, _)| quality > q) {
            best = Some((quality, lang));
        }
    }
    best.map_or(Lang::En, |(_, lang)| lang)
}

/// A buyer-facing name for an order status.
pub fn status_label(lang: Lang, status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::AwaitingPayment => lang.pick("Waiting for payment", "等待付款"),
        OrderStatus::Paid => lang.pick("Paid, delivering", "已付款，正在发货"),
        OrderStatus::Delivered => lang.pick("Delivered", "已发货"),
        OrderStatus::Expired => lang.pick("Expired (not paid in time)", "已过期（未按时付款）"),
        OrderStatus::ManualReview => lang.pick(
            "Paid; an operator is reviewing it",
            "已付款，客服正在人工处理",
        ),
        OrderStatus::Refunded => lang.pick("Refunded", "已退款"),
        OrderStatus::Cancelled => lang.pick("Cancelled", "已取消"),
    }
}

/// An operator-facing name for an order status.
pub fn status_word(lang: Lang, status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::AwaitingPayment => lang.pick("Awaiting payment", "待付款"),
        OrderStatus::Paid => lang.pick("Paid, delivering", "已付款，发货中"),
        OrderStatus::Delivered => lang.pick("Delivered", "已发货"),
        OrderStatus::Expired => lang.pick("Expired", "已过期"),
        OrderStatus::ManualReview => lang.pick("Needs review", "待人工处理"),
        OrderStatus::Refunded => lang.pick("Refunded", "已退款"),
        OrderStatus::Cancelled => lang.pick("Cancelled", "已取消"),
    }
}

/// A payment channel or method by the name people know it.
pub fn channel_word(lang: Lang, channel: &str) -> String {
    let word = match channel {
        "epay" => lang.pick("Epay", "易支付"),
        "epusdt" => "USDT (epusdt)",
        "stripe" => "Stripe",
        "alipay" => lang.pick("Alipay", "支付宝"),
        "wxpay" | "wechat" => lang.pick("WeChat Pay", "微信支付"),
        "qqpay" => lang.pick("QQ Pay", "QQ 钱包"),
        "usdt" => "USDT",
        "card" => lang.pick("Bank card", "银行卡"),
        "manual" => lang.pick("Paid by hand (manual queue)", "人工收款"),
        "reseller" => lang.pick("Reseller", "代理商"),
        other => return other.to_owned(),
    };
    word.to_owned()
}

/// An alert rule in words.
pub fn alert_word(lang: Lang, rule: &str) -> String {
    let word = match rule {
        "latency_rising" => lang.pick("Responses getting slower", "响应变慢"),
        "error_rate" => lang.pick("Many failed requests", "请求失败率高"),
        "payment_success" => lang.pick("Fewer orders paid", "支付成功率下降"),
        "stock_low" => lang.pick("Stock running low", "库存不足"),
        "delivery_overdue" => lang.pick("Paid orders waiting", "已付款订单待处理"),
        other => return other.to_owned(),
    };
    word.to_owned()
}

/// A stage of an order's trace in words.
pub fn stage_word(lang: Lang, stage: actors::trace::Stage) -> &'static str {
    use actors::trace::Stage;
    match stage {
        Stage::Create => lang.pick("Order received", "收到订单"),
        Stage::Reserve => lang.pick("Keys reserved", "预留卡密"),
        Stage::Commit => lang.pick("Saved durably", "持久保存"),
        Stage::Notify => lang.pick("Payment notice received", "收到支付通知"),
        Stage::Deliver => lang.pick("Keys delivered", "卡密已发"),
        Stage::ManualReview => lang.pick("Sent to manual review", "转人工处理"),
        Stage::Push => lang.pick("Buyer's page updated", "买家页面已更新"),
        Stage::Expire => lang.pick("Expired unpaid", "未付款过期"),
    }
}

/// A key's state in words.
pub fn card_word(lang: Lang, status: actors::products::CardStatus) -> &'static str {
    use actors::products::CardStatus;
    match status {
        CardStatus::Available => lang.pick("Available", "可售"),
        CardStatus::Reserved => lang.pick("Reserved by an order", "订单预留中"),
        CardStatus::Sold => lang.pick("Sold", "已售"),
        CardStatus::Deleted => lang.pick("Deleted", "已删除"),
        CardStatus::Elsewhere => lang.pick("Not this product's", "不属于该商品"),
    }
}

/// A time for operators: `YYYY-MM-DD HH:MM` in the shop's time zone, in a `<time>` element
/// whose `datetime` the script turns into the reader's own local time.
pub fn local_time(ms: u64, offset_minutes: i16) -> maud::Markup {
    let local = (ms as i64 + i64::from(offset_minutes) * 60_000).max(0) as u64;
    let text = engine::time::format_rfc3339_ms(local);
    let shown = format!("{} {}", &text[..10], &text[11..16]);
    let zone = match offset_minutes {
        0 => "UTC".to_owned(),
        m => format!(
            "UTC{}{}{}",
            if m > 0 { "+" } else { "-" },
            m.unsigned_abs() / 60,
            match m.unsigned_abs() % 60 {
                0 => String::new(),
                rest => format!(":{rest:02}"),
            }
        ),
    };
    maud::html! {
        time datetime=(engine::time::format_rfc3339_ms(ms)) data-local="" { (shown) " " (zone) }
    }
}

#[derive(Deserialize)]
pub struct NextQuery {
    #[serde(default)]
    next: String,
}

/// `GET /lang/{code}?next=/path`: remembers the choice and goes back to `next` (a local
/// path only, so the switch cannot be used as an open redirect).
pub async fn switch(
    path: web::Path<String>,
    query: web::Query<NextQuery>,
    request: HttpRequest,
) -> HttpResponse {
    let Some(lang) = Lang::from_code(&path) else {
        return HttpResponse::NotFound().finish();
    };
    let next = local_path(&query.next).unwrap_or("/");
    let secure = crate::pages::is_secure(&request);
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, next.to_owned()))
        .insert_header((
            header::SET_COOKIE,
            format!(
                "{LANG_COOKIE}={}; Path=/; Max-Age={LANG_COOKIE_MAX_AGE_SECS}; SameSite=Lax{}",
                lang.code(),
                if secure { "; Secure" } else { "" }
            ),
        ))
        .finish()
}

/// `next` when it is a path on this site (not `//host`, not a scheme, no backslash).
pub fn local_path(next: &str) -> Option<&str> {
    let local = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(char::is_control);
    local.then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language_picks_the_best_spoken_language() {
        assert_eq!(accept_language(""), Lang::En);
        assert_eq!(accept_language("zh-CN,zh;q=0.9,en;q=0.8"), Lang::Zh);
        assert_eq!(accept_language("fr,en;q=0.5,zh;q=0.9"), Lang::Zh);
        assert_eq!(accept_language("en-US,zh-TW;q=0.5"), Lang::En);
        assert_eq!(accept_language("de"), Lang::En);
    }

    #[test]
    fn only_local_paths_are_followed() {
        assert_eq!(local_path("/order/x?token=y"), Some("/order/x?token=y"));
        assert_eq!(local_path("//evil.example/"), None);
        assert_eq!(local_path("https://evil.example/"), None);
        assert_eq!(local_path("/\\evil.example"), None);
    }
}
