//! The demo gateway, mounted only with `--demo`: a stand-in Epay cashier at
//! `/demo/gateway/submit.php`. GET shows the payment (or, for an order already paid, says so
//! and offers no Pay button); POST pays it by sending the shop a signed notify through the
//! same verification as a real gateway's, then shows the outcome with a link back to the
//! buyer's order page (the signed `return_url`), as a real cashier returns the buyer.

use actix_web::{web, HttpRequest, HttpResponse};
use engine::payment::{epay_sign, signatures_equal};

use crate::routes::pages::{escape_html, page};
use crate::routes::payments::apply_epay_params;
use crate::AppState;

pub fn configure(config: &mut web::ServiceConfig) {
    config.route(
        "/demo/gateway/submit.php",
        web::route()
            .guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Post()))
            .to(submit),
    );
}

async fn submit(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let (Some(epay), true) = (&state.epay, state.demo) else {
        return HttpResponse::NotFound().finish();
    };
    let params: Vec<(String, String)> =
        serde_urlencoded::from_str(request.query_string()).unwrap_or_default();
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let expected = epay_sign(
        params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &epay.key,
    );
    if !signatures_equal(&expected, get("sign")) || get("pid") != epay.pid {
        return HttpResponse::BadRequest().body("demo gateway: bad signature");
    }
    let back = format!(
        "<p><a id=\"back\" href=\"{}\">Back to your order</a></p>",
        escape_html(get("return_url"))
    );
    let order = format!("<code>{}</code>", escape_html(get("out_trade_no")));
    if is_paid(&state, get("out_trade_no")) {
        let body = format!("<h1>Demo gateway</h1><p>Order {order} is already paid.</p>{back}");
        return page("Demo gateway: paid", &body);
    }
    if request.method() == actix_web::http::Method::GET {
        let body = format!(
            "<h1>DEMO gateway: no real money</h1>\
             <p role=\"alert\"><strong>DEMO MODE.</strong> This stand-in pays every order \
             for free; nothing is charged and nothing is checked.</p>\
             <p>Order {order}: {} for {}</p>\
             <form method=\"post\"><button type=\"submit\">Pay (demo)</button></form>",
            escape_html(get("name")),
            escape_html(get("money"))
        );
        return page("Demo gateway", &body);
    }
    let out_trade_no = get("out_trade_no");
    let mut notify: Vec<(String, String)> = [
        ("pid", epay.pid.as_str()),
        ("trade_no", &format!("DEMO{out_trade_no}")),
        ("out_trade_no", out_trade_no),
        ("type", get("type")),
        ("name", get("name")),
        ("money", get("money")),
        ("trade_status", "TRADE_SUCCESS"),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let sign = epay_sign(
        notify.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &epay.key,
    );
    notify.push(("sign".into(), sign));
    notify.push(("sign_type".into(), "MD5".into()));
    let applied = apply_epay_params(&state, &notify).await;
    if !applied.status().is_success() {
        return applied;
    }
    let body = format!(
        "<h1>Demo gateway</h1><p id=\"paid\">Paid: success. Order {order} is paid; \
         the shop delivers its keys now.</p>{back}"
    );
    page("Demo gateway: paid", &body)
}

/// Whether the order a cashier shows was paid already (then it offers no Pay button).
fn is_paid(state: &AppState, order_id: &str) -> bool {
    engine::OrderId::parse(order_id)
        .ok()
        .and_then(|id| state.shop.store().order(&id).ok().flatten())
        .is_some_and(|record| record.status.is_paid())
}
