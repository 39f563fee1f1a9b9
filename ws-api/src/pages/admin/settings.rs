//! The operators' shop settings: coupons (create, list, withdraw) and the shop's identity
//! (name, logo, announcement, footer, support contact, terms, time zone).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use engine::coupon::Discount;
use engine::listing::ShopIdentity;
use engine::money::{format_cents, parse_decimal_cents};
use maud::{html, Markup};
use serde::Deserialize;

use super::FORM_BYTES_MAX;
use super::{admin_page, csrf_field, operator, record_action, refuse, signed_form};
use crate::error::ApiError;
use crate::pages::i18n::Lang;
use crate::pages::session::OperatorSession;
use crate::pages::url_encode;
use crate::routes::manage::{utc_offset, CouponBody, IdentityBody};
use crate::AppState;

/// The identity form carries four texts of up to 4,000 bytes each.
pub const IDENTITY_FORM_BYTES_MAX: usize = 24 * 1024;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/admin/coupons", web::get().to(coupons))
        .route("/admin/coupons", web::post().to(create_coupon))
        .route(
            "/admin/coupons/{code}/disable",
            web::post().to(disable_coupon),
        )
        .route("/admin/shop", web::get().to(identity_page))
        .route("/admin/shop", web::post().to(set_identity));
}

fn coupons_main(
    lang: Lang,
    session: &OperatorSession,
    state: &AppState,
    result: Option<Result<String, String>>,
) -> Markup {
    let coupons = state.shop.coupons().list();
    let offset = utc_offset(state);
    let skus = super::skus(state);
    html! {
        h1 { (lang.pick("Coupons", "优惠码")) }
        @match &result {
            Some(Ok(text)) => p.ok #coupon-result role="status" { (text) },
            Some(Err(text)) => p.error role="alert" { (text) },
            None => {},
        }
        div.scroll { table #coupons {
            thead { tr {
                th scope="col" { (lang.pick("Code", "优惠码")) } th scope="col" { (lang.pick("Discount", "优惠")) }
                th scope="col" { (lang.pick("Product", "商品")) } th scope="col" { (lang.pick("Used", "已用")) }
                th scope="col" { (lang.pick("Valid through", "有效期至")) } th scope="col" { (lang.pick("State", "状态")) }
                th scope="col" { (lang.pick("Action", "操作")) }
            } }
            tbody { @for c in &coupons { tr {
                td { code { (c.coupon.code) } }
                td { @match c.coupon.discount {
                    Discount::Percent { basis_points } => { (format_cents(u64::from(basis_points))) " %" },
                    Discount::Fixed { amount_cents } => { "−" (format_cents(amount_cents)) },
                } }
                td { @match &c.coupon.sku { Some(sku) => (sku.as_str()), None => (lang.pick("All products", "全部商品")) } }
                td { (c.used) " / " (c.coupon.uses_max) }
                // The last day it works, in the shop's time zone (it expires at that day's end).
                td { (actors::order_book::local_day(c.coupon.expires_at_ms.saturating_sub(1), offset)) }
                td { @if c.disabled_at_ms.is_some() { (lang.pick("Withdrawn", "已停用")) }
                     @else if c.coupon.expires_at_ms <= state.shop.now_ms() { (lang.pick("Expired", "已过期")) }
                     @else if c.used >= c.coupon.uses_max { (lang.pick("Used up", "已用完")) }
                     @else { (lang.pick("Active", "有效")) } }
                td { @if c.disabled_at_ms.is_none() {
                    form.inline method="post" action=(format!("/admin/coupons/{}/disable", url_encode(&c.coupon.code))) {
                        (csrf_field(session))
                        button.link type="submit" { (lang.pick("Withdraw", "停用")) }
                    }
                } }
            } } }
        } }
        section aria-labelledby="new-coupon-h" {
            h2 #new-coupon-h { (lang.pick("New coupon", "新建优惠码")) }
            form.stack method="post" action="/admin/coupons" {
                (csrf_field(session))
                label for="code" { (lang.pick("Code (letters, digits, - and _)", "优惠码（字母、数字、- 和 _）")) }
                input #code type="text" name="code" required maxlength="32";
                fieldset {
                    legend { (lang.pick("Discount", "优惠方式")) }
                    label.choice { input type="radio" name="kind" value="percent" checked; " " (lang.pick("Percent off", "按百分比")) }
                    label.choice { input type="radio" name="kind" value="fixed"; " " (lang.pick("Amount off", "固定金额")) }
                }
                label for="value" { (lang.pick("Percent (e.g. 10) or amount (e.g. 5.00)", "百分比（如 10）或金额（如 5.00）")) }
                input #value type="text" name="value" required inputmode="decimal";
                label for="coupon-sku" { (lang.pick("Product", "适用商品")) }
                select #coupon-sku name="sku" {
                    option value="" { (lang.pick("All products", "全部商品")) }
                    @for sku in &skus { option value=(sku) { (sku) } }
                }
                label for="uses_max" { (lang.pick("Uses at most", "最多使用次数")) }
                input #uses_max type="number" name="uses_max" required min="1" value="1";
                label for="expires_on" { (lang.pick("Valid through (day)", "有效期至（含当天）")) }
                input #expires_on type="date" name="expires_on" required;
                p.help { (lang.pick("A use counts when an order is made with the code, paid or not.",
                                    "下单即计一次使用，无论是否付款。")) }
                button type="submit" { (lang.pick("Create coupon", "创建优惠码")) }
            }
        }
    }
}

async fn coupons(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let Some(session) = operator(&request) else {
        return refuse(&request);
    };
    let lang = Lang::of(&request);
    let main = coupons_main(lang, &session, &state, None);
    admin_page(
        &request,
        &session,
        lang.pick("Coupons", "优惠码"),
        StatusCode::OK,
        main,
    )
}

#[derive(Deserialize)]
struct CouponForm {
    code: String,
    kind: String,
    value: String,
    #[serde(default)]
    sku: String,
    uses_max: String,
    expires_on: String,
}

impl CouponForm {
    fn into_body(self) -> Result<CouponBody, ApiError> {
        let bad = |text: &str| ApiError::bad_request("bad_request", text.to_owned());
        let value = parse_decimal_cents(self.value.trim())
            .ok_or_else(|| bad("the discount is a number like 10 or 5.00"))?;
        let (percent_bp, amount_off_cents) = match self.kind.as_str() {
            // Percent as a decimal: 12.5 % is 1250 basis points, the same digits as cents.
            "percent" => (
                Some(u32::try_from(value).map_err(|_| bad("percent is at most 100"))?),
                None,
            ),
            _ => (None, Some(value)),
        };
        Ok(CouponBody {
            code: self.code,
            percent_bp,
            amount_off_cents,
            sku: Some(self.sku),
            uses_max: self
                .uses_max
                .trim()
                .parse()
                .map_err(|_| bad("uses is a whole number"))?,
            expires_at_ms: None,
            expires_on: Some(self.expires_on),
        })
    }
}

async fn create_coupon(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (session, form): (_, CouponForm) =
        match signed_form(&request, payload, FORM_BYTES_MAX).await {
            Ok(signed) => signed,
            Err(refusal) => return refusal,
        };
    let lang = Lang::of(&request);
    let result = async {
        let new = form.into_body()?.into_coupon(utc_offset(&state))?;
        let coupon = state.shop.coupons().create(new).await?;
        record_action(&state, &request, "create_coupon", &coupon.code, "").await?;
        Ok::<_, ApiError>(coupon.code)
    }
    .await;
    let shown = result.map(|code| format!("{}{code}", lang.pick("Created: ", "已创建：")));
    coupons_answer(&request, &session, &state, shown)
}

#[derive(Deserialize)]
struct Empty {}

async fn disable_coupon(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (session, Empty {}) = match signed_form(&request, payload, FORM_BYTES_MAX).await {
        Ok(signed) => signed,
        Err(refusal) => return refusal,
    };
    let lang = Lang::of(&request);
    let result = async {
        state.shop.coupons().disable(&path).await?;
        record_action(&state, &request, "disable_coupon", &path, "").await?;
        Ok::<_, ApiError>(())
    }
    .await;
    let shown =
        result.map(|()| format!("{}{}", lang.pick("Withdrawn: ", "已停用："), path.as_str()));
    coupons_answer(&request, &session, &state, shown)
}

/// The coupons page again, with what the operator's form did.
fn coupons_answer(
    request: &HttpRequest,
    session: &OperatorSession,
    state: &AppState,
    result: Result<String, ApiError>,
) -> HttpResponse {
    let lang = Lang::of(request);
    let status = result
        .as_ref()
        .map_or_else(|e| e.status, |_| StatusCode::OK);
    let main = coupons_main(lang, session, state, Some(result.map_err(|e| e.message)));
    admin_page(
        request,
        session,
        lang.pick("Coupons", "优惠码"),
        status,
        main,
    )
}

fn identity_main(
    lang: Lang,
    session: &OperatorSession,
    identity: &ShopIdentity,
    result: Option<Result<(), String>>,
) -> Markup {
    html! {
        h1 { (lang.pick("Shop settings", "店铺设置")) }
        @match &result {
            Some(Ok(())) => p.ok #saved role="status" { (lang.pick("Saved.", "已保存。")) },
            Some(Err(text)) => p.error role="alert" { (text) },
            None => {},
        }
        form.stack method="post" action="/admin/shop" {
            (csrf_field(session))
            label for="shop-name" { (lang.pick("Shop name", "店铺名称")) }
            input #shop-name type="text" name="name" maxlength="100" value=(identity.name);
            label for="logo_url" { (lang.pick("Logo address (https://…)", "Logo 地址（https://…）")) }
            input #logo_url type="text" name="logo_url" maxlength="500" value=(identity.logo_url);
            label for="announcement" { (lang.pick("Announcement banner (empty: none)", "公告横幅（留空则不显示）")) }
            textarea #announcement name="announcement" rows="2" maxlength="4000" { (identity.announcement) }
            label for="support_contact" { (lang.pick("Support contact", "客服联系方式")) }
            input #support_contact type="text" name="support_contact" maxlength="200" value=(identity.support_contact);
            label for="footer" { (lang.pick("Footer text", "页脚文字")) }
            textarea #footer name="footer" rows="2" maxlength="4000" { (identity.footer) }
            label for="terms" { (lang.pick("Terms of sale (shown at /terms)", "购买须知（显示在 /terms）")) }
            textarea #terms name="terms" rows="6" maxlength="4000" { (identity.terms) }
            label for="utc_offset" { (lang.pick("Time zone, minutes east of UTC (480 for China)", "时区，相对 UTC 的分钟数（中国为 480）")) }
            input #utc_offset type="number" name="utc_offset_minutes" min="-840" max="840" value=(identity.utc_offset_minutes);
            button type="submit" { (lang.pick("Save", "保存")) }
        }
    }
}

async fn identity_page(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let Some(session) = operator(&request) else {
        return refuse(&request);
    };
    let lang = Lang::of(&request);
    let main = identity_main(lang, &session, &state.shop.storefront().identity(), None);
    admin_page(
        &request,
        &session,
        lang.pick("Shop settings", "店铺设置"),
        StatusCode::OK,
        main,
    )
}

#[derive(Deserialize)]
struct IdentityForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    logo_url: String,
    #[serde(default)]
    announcement: String,
    #[serde(default)]
    support_contact: String,
    #[serde(default)]
    footer: String,
    #[serde(default)]
    terms: String,
    #[serde(default)]
    utc_offset_minutes: String,
}

async fn set_identity(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (session, form): (_, IdentityForm) =
        match signed_form(&request, payload, IDENTITY_FORM_BYTES_MAX).await {
            Ok(signed) => signed,
            Err(refusal) => return refusal,
        };
    let lang = Lang::of(&request);
    let result = async {
        let offset = match form.utc_offset_minutes.trim() {
            "" => 0,
            text => text.parse().map_err(|_| {
                ApiError::bad_request("bad_request", "the time zone is whole minutes")
            })?,
        };
        let body = IdentityBody {
            name: Some(form.name),
            logo_url: Some(form.logo_url),
            announcement: Some(form.announcement),
            footer: Some(form.footer),
            support_contact: Some(form.support_contact),
            terms: Some(form.terms),
            utc_offset_minutes: Some(offset),
        };
        let identity = state
            .shop
            .storefront()
            .set_identity(body.into_changes()?)
            .await?;
        record_action(&state, &request, "set_identity", "shop", "").await?;
        Ok::<_, ApiError>(identity)
    }
    .await;
    let (status, identity, shown) = match result {
        Ok(identity) => (StatusCode::OK, identity, Ok(())),
        Err(error) => (
            error.status,
            state.shop.storefront().identity(),
            Err(error.message),
        ),
    };
    let main = identity_main(lang, &session, &identity, Some(shown));
    admin_page(
        &request,
        &session,
        lang.pick("Shop settings", "店铺设置"),
        status,
        main,
    )
}
