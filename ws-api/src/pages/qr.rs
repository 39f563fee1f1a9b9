//! QR codes drawn by the server: WeChat Pay's `code_url` (a `weixin://` link that only the
//! WeChat app opens) and Alipay precreate's `qr_code`, as inline SVG in the order page.
//! Nothing leaves the shop to draw them (no third-party image service sees the payment
//! link), and inline SVG needs no script and no `img-src` beyond the page's own policy.

use maud::{html, Markup, PreEscaped};

/// Longest payment URL drawn; real ones are under 100 characters.
pub const QR_TEXT_BYTES_MAX: usize = 1_024;
/// Light modules around the code, as the QR specification asks.
const QUIET_ZONE_MODULES: usize = 4;

/// Whether the buyer scans this payment rather than opening it: WeChat Pay Native always;
/// Alipay when the link is a precreate `qr_code` (its page and wap links are signed gateway
/// URLs the shop built, carrying their `method`).
pub fn is_scanned(channel: &str, url: &str) -> bool {
    match channel {
        "wechat" => true,
        "alipay" => !url.contains("method=alipay.trade."),
        _ => false,
    }
}

/// The QR code of `text` as one SVG path, dark modules on a light square; `None` when the
/// text is too long to draw.
pub fn svg(text: &str, label: &str) -> Option<Markup> {
    if text.len() > QR_TEXT_BYTES_MAX {
        return None;
    }
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M).ok()?;
    let width = code.width();
    let colors = code.to_colors();
    let mut path = String::with_capacity(width * width * 4);
    for (index, color) in colors.iter().enumerate() {
        if *color == qrcode::Color::Dark {
            let (x, y) = (
                index % width + QUIET_ZONE_MODULES,
                index / width + QUIET_ZONE_MODULES,
            );
            path.push_str(&format!("M{x} {y}h1v1h-1z"));
        }
    }
    let size = width + 2 * QUIET_ZONE_MODULES;
    Some(html! {
        svg.qr xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {size} {size}"))
            width="240" height="240" role="img" aria-label=(label) shape-rendering="crispEdges" {
            rect width=(size) height=(size) fill="#fff" {}
            path d=(PreEscaped(path)) fill="#000" {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanned_links_are_told_apart() {
        assert!(is_scanned("wechat", "weixin://wxpay/bizpayurl?pr=abc"));
        assert!(is_scanned("alipay", "https://qr.alipay.com/bax01234"));
        assert!(!is_scanned(
            "alipay",
            "https://openapi.alipay.com/gateway.do?app_id=1&method=alipay.trade.page.pay"
        ));
        assert!(!is_scanned("epay", "https://pay.example/submit.php"));
    }

    #[test]
    fn the_code_is_an_inline_svg_of_the_link() {
        let markup = svg("weixin://wxpay/bizpayurl?pr=abc", "QR")
            .unwrap()
            .into_string();
        assert!(markup.starts_with("<svg class=\"qr\""), "{markup}");
        assert!(
            markup.contains("<path d=\"M4 4h1v1h-1z"),
            "the finder pattern's corner"
        );
        assert!(svg(&"x".repeat(QR_TEXT_BYTES_MAX + 1), "QR").is_none());
    }
}
