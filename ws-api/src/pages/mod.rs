//! The HTML pages: the storefront (`/`), the operator pages (`/admin`), and the shared frame
//! around them. Server-rendered with maud (templates checked at compile time, every value
//! escaped); the live parts (order status, stock, copy buttons) are one small plain
//! JavaScript file served from the binary.
//!
//! Invariants: no page loads script, styles or anything but images from another origin, and
//! no page holds inline script: the Content-Security-Policy on every page forbids both.
//! Images (a product's picture, the shop's logo, set by the operator) may come from https
//! origins; the pages send no referrer, so an image host never learns an order's address.
//! Pages that show keys or operator data are never cached.
//!
//! Every page carries the shop's identity as its operator set it (name, logo, announcement
//! on the storefront, footer with the support contact and the terms).

pub mod admin;
pub mod assets;
pub mod i18n;
pub mod qr;
pub mod session;
pub mod shop;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup, DOCTYPE};

use engine::listing::ShopIdentity;
use i18n::Lang;

/// Every page's policy: scripts, styles, images and sockets from this origin only, forms
/// post only here, nothing frames the page.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' https:; connect-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

pub fn configure(config: &mut web::ServiceConfig) {
    assets::configure(config);
    shop::configure(config);
    admin::configure(config);
    config.route("/lang/{code}", web::get().to(i18n::switch));
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie(request: &HttpRequest, name: &str) -> Option<String> {
    request
        .headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Whether cookies get `Secure`: decided by configuration (`public_url` is `https://`),
/// never by a header a client could send (`X-Forwarded-Proto`, `Forwarded`).
pub fn is_secure(request: &HttpRequest) -> bool {
    request
        .app_data::<web::Data<crate::AppState>>()
        .is_some_and(|state| state.public_https)
}

/// What the frame of a page needs.
pub struct Frame<'a> {
    pub lang: Lang,
    pub title: &'a str,
    /// The page's own path and query, for the language switch to come back to.
    pub path: &'a str,
    /// Operator pages get the operators' navigation.
    pub admin_nav: Option<&'a session::OperatorSession>,
    /// The shop as its operator named it.
    pub identity: ShopIdentity,
}

impl<'a> Frame<'a> {
    pub fn new(request: &'a HttpRequest, lang: Lang, title: &'a str) -> Self {
        let identity = request
            .app_data::<web::Data<crate::AppState>>()
            .map(|state| state.shop.storefront().identity())
            .unwrap_or_default();
        Frame {
            lang,
            title,
            path: request.uri().path_and_query().map_or("/", |p| p.as_str()),
            admin_nav: None,
            identity,
        }
    }

    /// The shop's name: the operator's, else the default.
    pub fn shop_name(&self) -> &str {
        match self.identity.name.as_str() {
            "" => self.lang.pick("Panshi shop", "磐石发卡"),
            name => name,
        }
    }
}

/// The storefront's footer: the operator's text, support contact and terms.
fn shop_footer(frame: &Frame<'_>) -> Markup {
    let (lang, identity) = (frame.lang, &frame.identity);
    html! {
        @if !identity.footer.is_empty() { p #footer-text { (identity.footer) } }
        @if !identity.support_contact.is_empty() {
            p #support { (lang.pick("Support: ", "客服：")) (identity.support_contact) }
        }
        p {
            @if !identity.terms.is_empty() {
                a href="/terms" { (lang.pick("Terms of sale", "购买须知")) } " · "
            }
            a href="/status" { (lang.pick("Service status", "服务状态")) }
        }
    }
}

/// The document around a page's main content.
pub fn document(frame: &Frame<'_>, main: Markup) -> Markup {
    let lang = frame.lang;
    let other = lang.other();
    let switch = format!("/lang/{}?next={}", other.code(), url_encode(frame.path));
    html! {
        (DOCTYPE)
        html lang=(lang.html_lang()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width,initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (frame.title) " · " (frame.shop_name()) }
                link rel="stylesheet" href=(assets::css_url());
                link rel="icon" type="image/svg+xml" href=(assets::icon_url());
                script src=(assets::js_url()) defer {}
            }
            body.admin[frame.admin_nav.is_some()] {
                a.skip href="#main" { (lang.pick("Skip to content", "跳到正文")) }
                header.top {
                    @if frame.admin_nav.is_some() {
                        a.brand href="/admin" { (lang.pick("Panshi operators", "磐石 · 运营")) }
                    } @else {
                        a.brand href="/" {
                            @if !frame.identity.logo_url.is_empty() {
                                img.logo src=(frame.identity.logo_url) alt="" width="32" height="32";
                            }
                            (frame.shop_name())
                        }
                    }
                    nav aria-label=(lang.pick("Site", "站点")) {
                        @if let Some(session) = frame.admin_nav {
                            (admin::nav(lang, session))
                        } @else {
                            a href="/" { (lang.pick("Catalogue", "商品")) }
                            a href="/lookup" { (lang.pick("Find my order", "查询订单")) }
                        }
                        a href=(switch) lang=(other.html_lang()) hreflang=(other.html_lang()) {
                            (other.native_name())
                        }
                    }
                }
                @if frame.admin_nav.is_none() && !frame.identity.announcement.is_empty() {
                    div.banner #announcement role="note" { (frame.identity.announcement) }
                }
                main #main tabindex="-1" { (main) }
                footer.foot {
                    @if frame.admin_nav.is_some() {
                        a href="/status" { (lang.pick("Service status", "服务状态")) }
                    } @else {
                        (shop_footer(frame))
                    }
                }
            }
        }
    }
}

/// Percent-encodes a path for use as a query value.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An HTML answer with the security headers every page carries.
pub fn respond(status: StatusCode, markup: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        // Pages show live stock, keys and operator data: never serve them from a cache.
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(markup.into_string())
}

/// A short page that says what went wrong, with a way on.
pub fn message_page(
    request: &HttpRequest,
    status: StatusCode,
    title: &str,
    text: &str,
) -> HttpResponse {
    let lang = Lang::of(request);
    let main = html! {
        h1 { (title) }
        p { (text) }
        p { a href="/" { (lang.pick("Back to the catalogue", "返回商品列表")) } }
    };
    respond(status, document(&Frame::new(request, lang, title), main))
}

/// A See Other redirect to a local path.
pub fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location.to_owned()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}
