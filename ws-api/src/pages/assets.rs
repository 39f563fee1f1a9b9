//! The pages' static files, compiled into the binary: one stylesheet, one script and an icon. Pages
//! link them with their content hash in the query (`?v=`), so a browser may cache them for a
//! year and still picks up a new build at once; the ETag answers revalidations with 304.

use std::sync::LazyLock;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

const APP_JS: &str = include_str!("../../assets/app.js");
const APP_CSS: &str = include_str!("../../assets/app.css");
const ICON_SVG: &str = include_str!("../../assets/icon.svg");
/// How long a browser may keep an asset: a year, since the URL changes with the content.
pub const ASSET_MAX_AGE_SECS: u64 = 365 * 24 * 3600;

struct Asset {
    body: &'static str,
    content_type: &'static str,
    /// FNV-1a of the body, in hex: the ETag and the `?v=` of the URL.
    version: String,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Asset {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in body.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
        Asset {
            body,
            content_type,
            version: format!("{hash:016x}"),
        }
    }
}

static JS: LazyLock<Asset> = LazyLock::new(|| Asset::new(APP_JS, "text/javascript; charset=utf-8"));
static CSS: LazyLock<Asset> = LazyLock::new(|| Asset::new(APP_CSS, "text/css; charset=utf-8"));

static ICON: LazyLock<Asset> = LazyLock::new(|| Asset::new(ICON_SVG, "image/svg+xml"));

pub fn icon_url() -> String {
    format!("/assets/icon.svg?v={}", ICON.version)
}

pub fn js_url() -> String {
    format!("/assets/app.js?v={}", JS.version)
}

pub fn css_url() -> String {
    format!("/assets/app.css?v={}", CSS.version)
}

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route(
            "/assets/app.js",
            web::get().to(|r: HttpRequest| serve(r, &JS)),
        )
        .route(
            "/assets/app.css",
            web::get().to(|r: HttpRequest| serve(r, &CSS)),
        )
        .route(
            "/assets/icon.svg",
            web::get().to(|r: HttpRequest| serve(r, &ICON)),
        )
        // Browsers ask for it whatever the page says; answering spares a 404 per visit.
        .route(
            "/favicon.ico",
            web::get().to(|r: HttpRequest| serve(r, &ICON)),
        );
}

async fn serve(request: HttpRequest, asset: &'static Asset) -> HttpResponse {
    let etag = format!("\"{}\"", asset.version);
    let cache = format!("public, max-age={ASSET_MAX_AGE_SECS}, immutable");
    let matches = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matches {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, cache))
        .insert_header(("X-Content-Type-Options", "nosniff"));
    if matches {
        return response.finish();
    }
    response.content_type(asset.content_type).body(asset.body)
}
