//! The few HTML pages a buyer sees: a cashier with a Pay button, and its outcome.

use actix_web::HttpResponse;

/// Escapes text for HTML content and double-quoted attributes.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page; `body` is already escaped HTML.
pub fn page(title: &str, body: &str) -> HttpResponse {
    let title = escape_html(title);
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
             <body><h1>{title}</h1>{body}</body></html>"
        ))
}

/// The cashier: what is being paid, and a Pay button that POSTs to `action` (to the page's
/// own URL when empty).
pub fn cashier(title: &str, lines: &[(&str, &str)], action: &str) -> HttpResponse {
    let mut body = String::from("<dl>");
    for (label, value) in lines {
        body.push_str(&format!(
            "<dt>{}</dt><dd>{}</dd>",
            escape_html(label),
            escape_html(value)
        ));
    }
    body.push_str("</dl><form method=\"post\"");
    if !action.is_empty() {
        body.push_str(&format!(" action=\"{}\"", escape_html(action)));
    }
    body.push_str("><button type=\"submit\">Pay</button></form>");
    page(title, &body)
}

/// After the Pay button: paid now, or already paid before.
pub fn paid(title: &str, already: bool, return_url: &str) -> HttpResponse {
    let mut body = String::from(if already {
        "<p>This order was already paid.</p>"
    } else {
        "<p>Paid. The shop is being notified.</p>"
    });
    if !return_url.is_empty() {
        body.push_str(&format!(
            "<p><a href=\"{}\">Back to the shop</a></p>",
            escape_html(return_url)
        ));
    }
    page(title, &body)
}

/// A request the gateway refuses, said in plain text (HTTP 400).
pub fn refusal(who: &str, message: &str) -> HttpResponse {
    HttpResponse::BadRequest()
        .content_type("text/plain; charset=utf-8")
        .body(format!("{who}: {message}"))
}
