//! The operators' product pages: the product list, a product's edit form (name, price,
//! description, visibility, purchase limit, usage note, image, category), its keys (search,
//! export as CSV, delete unsold ones) and key imports, pasted or uploaded as a file.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use actors::products::{CardQuery, CardStatus, ProductListing};
use engine::money::{format_cents, parse_decimal_cents};
use engine::{CardId, Sku};
use futures_util::StreamExt;
use maud::{html, Markup};
use serde::Deserialize;

use super::{admin_page, csrf_field, message, operator, record_action, refuse, signed_form};
use super::{FORM_BYTES_MAX, IMPORT_FORM_BYTES_MAX};
use crate::error::ApiError;
use crate::export::{CardsQueryText, PAGE_ROWS_DEFAULT};
use crate::pages::i18n::{card_word, Lang};
use crate::pages::session::OperatorSession;
use crate::pages::{see_other, url_encode};
use crate::routes::manage::ProductEdit;
use crate::AppState;

/// Bytes of multipart framing an import form may add to its keys.
pub const MULTIPART_OVERHEAD_BYTES_MAX: usize = 16 * 1024;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/admin/products", web::get().to(products))
        .route("/admin/products", web::post().to(create_product))
        .route("/admin/import", web::post().to(import))
        .route("/admin/products/{sku}", web::get().to(edit_page))
        .route("/admin/products/{sku}", web::post().to(edit))
        .route("/admin/products/{sku}/keys", web::get().to(keys_page))
        .route(
            "/admin/products/{sku}/keys/export",
            web::get().to(export_keys),
        )
        .route(
            "/admin/products/{sku}/keys/delete",
            web::post().to(delete_keys),
        );
}

fn product_path(sku: &Sku) -> String {
    format!("/admin/products/{}", url_encode(sku.as_str()))
}

async fn products(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let Some(session) = operator(&request) else {
        return refuse(&request);
    };
    let lang = Lang::of(&request);
    let products = state.shop.products().list();
    let unpayable = super::payments_missing(lang, &state).await;
    let main = html! {
        h1 { (lang.pick("Products", "商品")) }
        (unpayable)
        div.scroll { table #products {
            thead { tr {
                th scope="col" { "SKU" } th scope="col" { (lang.pick("Name", "名称")) }
                th scope="col" { (lang.pick("Category", "分类")) }
                th scope="col" { (lang.pick("Price", "价格")) }
                th scope="col" { (lang.pick("On sale", "上架")) }
                th scope="col" { (lang.pick("Available", "可售")) }
                th scope="col" { (lang.pick("Reserved", "预留")) }
                th scope="col" { (lang.pick("Sold", "已售")) }
                th scope="col" { (lang.pick("Deleted", "已删除")) }
                th scope="col" { (lang.pick("Manage", "管理")) }
            } }
            tbody { @for listing in &products { (product_row(lang, listing)) } }
        } }
        (import_form(lang, &session, &products, None))
        (product_form(lang, &session, state.shop.settings().currency.as_str()))
    };
    admin_page(
        &request,
        &session,
        lang.pick("Products", "商品"),
        StatusCode::OK,
        main,
    )
}

fn product_row(lang: Lang, listing: &ProductListing) -> Markup {
    let (product, stock) = (&listing.product, &listing.stock);
    let path = product_path(&product.sku);
    html! {
        tr {
            td { code { (product.sku.as_str()) } } td { (product.name) }
            td { (listing.details.category) }
            td { (format_cents(product.price_cents)) " " (product.currency.as_str()) }
            td { @if listing.details.hidden { (lang.pick("Hidden", "已隐藏")) } @else { (lang.pick("Yes", "是")) } }
            td { (stock.available) } td { (stock.reserved) } td { (stock.sold) } td { (listing.deleted) }
            td {
                a href=(path) { (lang.pick("Edit", "编辑")) } " · "
                a href=(format!("{path}/keys")) { (lang.pick("Keys", "卡密")) }
            }
        }
    }
}

fn import_form(
    lang: Lang,
    session: &OperatorSession,
    products: &[ProductListing],
    only: Option<&Sku>,
) -> Markup {
    html! {
        section aria-labelledby="import-h" {
            h2 #import-h { (lang.pick("Import keys", "导入卡密")) }
            form.stack method="post" action="/admin/import" enctype="multipart/form-data" {
                (csrf_field(session))
                label for="import-sku" { (lang.pick("Product", "商品")) }
                select #import-sku name="sku" required {
                    @for listing in products {
                        @let sku = &listing.product.sku;
                        option value=(sku.as_str()) selected[only == Some(sku)] {
                            (sku.as_str()) " — " (listing.product.name)
                        }
                    }
                }
                label for="keys" { (lang.pick("Keys, one per line", "卡密，每行一个")) }
                textarea #keys name="keys" rows="8" spellcheck="false" {}
                label for="key-file" { (lang.pick("…or a key file (text, one per line)", "……或上传卡密文件（文本，每行一个）")) }
                input #key-file type="file" name="file" accept=".txt,.csv,text/plain";
                button type="submit" { (lang.pick("Import", "导入")) }
            }
        }
    }
}

fn product_form(lang: Lang, session: &OperatorSession, currency: &str) -> Markup {
    html! {
        section aria-labelledby="new-h" {
            h2 #new-h { (lang.pick("New product", "新建商品")) }
            form.stack method="post" action="/admin/products" {
                (csrf_field(session))
                label for="new-sku" { "SKU" }
                input #new-sku type="text" name="sku" required maxlength="64";
                label for="new-name" { (lang.pick("Name", "名称")) }
                input #new-name type="text" name="name" required maxlength="200";
                label for="new-price" { (lang.pick("Price (e.g. 12.50)", "价格（如 12.50）")) }
                input #new-price type="text" name="price" required inputmode="decimal";
                label for="new-currency" { (lang.pick("Currency", "币种")) }
                input #new-currency type="text" name="currency" required maxlength="3" value=(currency);
                button type="submit" { (lang.pick("Create", "创建")) }
            }
        }
    }
}

#[derive(Deserialize)]
struct ProductForm {
    sku: String,
    name: String,
    price: String,
    currency: String,
}

async fn create_product(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (session, form): (_, ProductForm) =
        match signed_form(&request, payload, FORM_BYTES_MAX).await {
            Ok(signed) => signed,
            Err(refusal) => return refusal,
        };
    let body = crate::wire::ProductBody {
        sku: form.sku.trim().to_owned(),
        name: form.name.trim().to_owned(),
        price_cents: parse_decimal_cents(form.price.trim()).unwrap_or(0),
        currency: form.currency.trim().to_owned(),
    };
    let created = match body.into_product(state.shop.now_ms()) {
        Ok(product) => state
            .shop
            .products()
            .create(product)
            .await
            .map_err(ApiError::from),
        Err(error) => Err(error),
    };
    match created {
        Ok(()) => see_other("/admin/products"),
        Err(error) => message(
            &request,
            &session,
            error.status,
            "Product not created",
            &error.message,
        ),
    }
}

/// An import form's fields, from a multipart upload (a file and/or the textarea).
struct ImportFields {
    csrf: String,
    sku: String,
    keys: Vec<u8>,
}

/// Reads an import form, multipart (the page's, with a file) or URL-encoded (pasted keys
/// only): the file wins over the textarea when both are given.
async fn import_fields(
    request: &HttpRequest,
    payload: web::Payload,
) -> Result<ImportFields, ApiError> {
    let bad = |e: multer::Error| ApiError::bad_request("bad_import", e.to_string());
    let content_type = request
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let limit = IMPORT_FORM_BYTES_MAX + MULTIPART_OVERHEAD_BYTES_MAX;
    let body = crate::read_body(payload, limit, crate::payload_too_large).await?;
    let Ok(boundary) = multer::parse_boundary(content_type) else {
        let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map_or(String::new(), |(_, v)| v.clone())
        };
        return Ok(ImportFields {
            csrf: field("csrf"),
            sku: field("sku"),
            keys: field("keys").into_bytes(),
        });
    };
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body.freeze()) });
    let mut multipart = multer::Multipart::new(stream.boxed(), boundary);
    let mut fields = ImportFields {
        csrf: String::new(),
        sku: String::new(),
        keys: Vec::new(),
    };
    let mut file = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("").to_owned();
        let data = field.bytes().await.map_err(bad)?;
        match name.as_str() {
            "csrf" => fields.csrf = String::from_utf8_lossy(&data).into_owned(),
            "sku" => fields.sku = String::from_utf8_lossy(&data).into_owned(),
            "keys" => fields.keys = data.to_vec(),
            "file" => file = data.to_vec(),
            _ => {}
        }
    }
    if !file.is_empty() {
        fields.keys = file;
    }
    Ok(fields)
}

async fn import(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let Some(session) = operator(&request) else {
        return refuse(&request);
    };
    let fields = match import_fields(&request, payload).await {
        Ok(fields) => fields,
        Err(error) => {
            return message(
                &request,
                &session,
                error.status,
                "Import refused",
                &error.message,
            )
        }
    };
    if !session.csrf_matches(&fields.csrf) {
        return super::forbidden(&request);
    }
    let lang = Lang::of(&request);
    let outcome = match Sku::parse(fields.sku.trim()) {
        Ok(sku) => state
            .shop
            .products()
            .import_cards(sku, fields.keys)
            .await
            .map_err(ApiError::from),
        Err(rejection) => Err(ApiError::from(rejection)),
    };
    let title = lang.pick("Import result", "导入结果");
    let (status, imported, duplicates, rejected) = match &outcome {
        Ok(o) => (StatusCode::OK, o.imported, o.duplicates, None),
        Err(e) => (e.status, 0, 0, Some(e.message.as_str())),
    };
    let main = html! {
        h1 { (title) }
        dl.facts #import-result {
            dt { (lang.pick("Product", "商品")) } dd { code { (fields.sku) } }
            dt { (lang.pick("Imported", "已导入")) } dd #imported { (imported) }
            dt { (lang.pick("Duplicates skipped", "重复跳过")) } dd #duplicates { (duplicates) }
            dt { (lang.pick("Rejected", "被拒")) }
            dd #rejected { @match rejected {
                None => "0",
                Some(reason) => { (lang.pick("the whole upload, nothing imported: ", "整批被拒，未导入：")) (reason) },
            } }
        }
        p { a href="/admin/products" { (lang.pick("Back to products", "返回商品")) } }
    };
    admin_page(&request, &session, title, status, main)
}

fn listing_of(state: &AppState, path: &str) -> Option<ProductListing> {
    state.shop.products().get(&Sku::parse(path).ok()?)
}

/// The signed-in operator and the product a page is about, or the page that refuses (an
/// answer, like `signed_form`'s, rarely built: its size does not matter).
#[allow(clippy::result_large_err)]
fn operator_and_product(
    request: &HttpRequest,
    state: &AppState,
    path: &str,
) -> Result<(OperatorSession, ProductListing), HttpResponse> {
    let Some(session) = operator(request) else {
        return Err(refuse(request));
    };
    match listing_of(state, path) {
        Some(listing) => Ok((session, listing)),
        None => Err(unknown_product(request, &session, path)),
    }
}

fn unknown_product(request: &HttpRequest, session: &OperatorSession, sku: &str) -> HttpResponse {
    let lang = Lang::of(request);
    message(
        request,
        session,
        StatusCode::NOT_FOUND,
        lang.pick("Unknown product", "商品不存在"),
        sku,
    )
}

async fn edit_page(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (session, listing) = match operator_and_product(&request, &state, &path) {
        Ok(found) => found,
        Err(refusal) => return refusal,
    };
    let lang = Lang::of(&request);
    let main = edit_form(lang, &session, &listing, None);
    admin_page(
        &request,
        &session,
        lang.pick("Edit product", "编辑商品"),
        StatusCode::OK,
        main,
    )
}

fn edit_form(
    lang: Lang,
    session: &OperatorSession,
    listing: &ProductListing,
    result: Option<Result<(), String>>,
) -> Markup {
    let (product, details) = (&listing.product, &listing.details);
    let path = product_path(&product.sku);
    html! {
        p.crumbs { a href="/admin/products" { "← " (lang.pick("Products", "商品")) } }
        h1 { (lang.pick("Edit product", "编辑商品")) " " code { (product.sku.as_str()) } }
        @match &result {
            Some(Ok(())) => p.ok #saved role="status" { (lang.pick("Saved.", "已保存。")) },
            Some(Err(text)) => p.error role="alert" { (text) },
            None => {},
        }
        p { a href=(format!("{path}/keys")) { (lang.pick("Keys of this product", "该商品的卡密")) } }
        form.stack method="post" action=(path) {
            (csrf_field(session))
            label for="name" { (lang.pick("Name", "名称")) }
            input #name type="text" name="name" required maxlength="200" value=(product.name);
            label for="price" { (lang.pick("Price (e.g. 12.50)", "价格（如 12.50）")) " (" (product.currency.as_str()) ")" }
            input #price type="text" name="price" required inputmode="decimal" value=(format_cents(product.price_cents));
            p.help { (lang.pick("A new price applies to orders made from now on.", "新价格仅对此后的订单生效。")) }
            label for="category" { (lang.pick("Category", "分类")) }
            input #category type="text" name="category" maxlength="60" value=(details.category);
            label for="image_url" { (lang.pick("Image address (https://…)", "图片地址（https://…）")) }
            input #image_url type="text" name="image_url" maxlength="500" value=(details.image_url);
            label for="description" { (lang.pick("Description", "商品描述")) }
            textarea #description name="description" rows="4" maxlength="4000" { (details.description) }
            label for="usage_note" { (lang.pick("Usage note, shown to the buyer with the keys", "使用说明（随卡密展示给买家）")) }
            textarea #usage_note name="usage_note" rows="3" maxlength="4000" { (details.usage_note) }
            label for="quantity_max" { (lang.pick("Most keys per order (0: no limit of its own)", "每单限购数量（0 为不单独限制）")) }
            input #quantity_max type="number" name="quantity_max" min="0" max="100" value=(details.quantity_max);
            label.choice {
                input #hidden type="checkbox" name="hidden" value="1" checked[details.hidden];
                " " (lang.pick("Hidden: not listed and not for sale (stock is kept)", "隐藏：下架且不可购买（库存保留）"))
            }
            button type="submit" { (lang.pick("Save", "保存")) }
        }
    }
}

#[derive(Deserialize)]
struct EditForm {
    name: String,
    price: String,
    #[serde(default)]
    category: String,
    #[serde(default)]
    image_url: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    usage_note: String,
    #[serde(default)]
    quantity_max: String,
    #[serde(default)]
    hidden: String,
}

impl EditForm {
    fn into_edit(self) -> Result<ProductEdit, ApiError> {
        let price_cents = parse_decimal_cents(self.price.trim()).ok_or_else(|| {
            ApiError::bad_request("bad_request", "the price is a decimal like 12.50")
        })?;
        let quantity_max = match self.quantity_max.trim() {
            "" => 0,
            text => text
                .parse()
                .map_err(|_| ApiError::bad_request("bad_request", "the limit is a whole number"))?,
        };
        Ok(ProductEdit {
            name: Some(self.name),
            price_cents: Some(price_cents),
            description: Some(self.description),
            hidden: Some(!self.hidden.is_empty()),
            quantity_max: Some(quantity_max),
            usage_note: Some(self.usage_note),
            image_url: Some(self.image_url),
            category: Some(self.category),
        })
    }
}

async fn edit(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (session, form): (_, EditForm) =
        match signed_form(&request, payload, FORM_BYTES_MAX * 2).await {
            Ok(signed) => signed,
            Err(refusal) => return refusal,
        };
    let Some(listing) = listing_of(&state, &path) else {
        return unknown_product(&request, &session, &path);
    };
    let lang = Lang::of(&request);
    let sku = listing.product.sku.clone();
    let result = async {
        let changes = form.into_edit()?.into_changes()?;
        crate::routes::manage::edit_listing(&state, &request, &sku, changes).await
    }
    .await;
    let (status, shown, result) = match result {
        Ok(listing) => (StatusCode::OK, listing, Some(Ok(()))),
        Err(error) => (error.status, listing, Some(Err(error.message))),
    };
    let main = edit_form(lang, &session, &shown, result);
    admin_page(
        &request,
        &session,
        lang.pick("Edit product", "编辑商品"),
        status,
        main,
    )
}

async fn keys_page(
    request: HttpRequest,
    path: web::Path<String>,
    query: web::Query<CardsQueryText>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (session, listing) = match operator_and_product(&request, &state, &path) {
        Ok(found) => found,
        Err(refusal) => return refusal,
    };
    let lang = Lang::of(&request);
    let card_query = match query.to_query(PAGE_ROWS_DEFAULT) {
        Ok(q) => q,
        Err(error) => return message(&request, &session, error.status, "Keys", &error.message),
    };
    let page = match state
        .shop
        .products()
        .cards(&listing.product.sku, &card_query)
    {
        Ok(page) => page,
        Err(error) => {
            let error = ApiError::from(error);
            return message(&request, &session, error.status, "Keys", &error.message);
        }
    };
    let main = keys_main(lang, &session, &listing, &query, &card_query, &page);
    admin_page(
        &request,
        &session,
        lang.pick("Keys", "卡密"),
        StatusCode::OK,
        main,
    )
}

/// The query string of a keys listing, with another offset.
fn keys_query(query: &CardsQueryText, offset: usize) -> String {
    format!(
        "q={}&status={}&offset={offset}",
        url_encode(&query.q),
        url_encode(&query.status)
    )
}

fn keys_main(
    lang: Lang,
    session: &OperatorSession,
    listing: &ProductListing,
    query: &CardsQueryText,
    card_query: &CardQuery,
    page: &actors::products::CardPage,
) -> Markup {
    let sku = &listing.product.sku;
    let path = format!("{}/keys", product_path(sku));
    let shown_to = card_query.offset + page.cards.len();
    html! {
        p.crumbs { a href="/admin/products" { "← " (lang.pick("Products", "商品")) } }
        h1 { (lang.pick("Keys of ", "卡密：")) (listing.product.name) " " code { (sku.as_str()) } }
        form.filters method="get" action=(path) role="search" {
            div {
                label for="q" { (lang.pick("Search keys", "搜索卡密")) }
                input #q type="text" name="q" maxlength="254" value=(query.q);
            }
            div {
                label for="status" { (lang.pick("State", "状态")) }
                select #status name="status" {
                    option value="" { (lang.pick("Any", "全部")) }
                    @for status in CardStatus::LISTED {
                        option value=(status.as_str()) selected[card_query.status == Some(status)] { (card_word(lang, status)) }
                    }
                }
            }
            div { button type="submit" { (lang.pick("Search", "搜索")) } }
            div {
                a.button #export href=(format!("{path}/export?{}", keys_query(query, 0))) download {
                    (lang.pick("Export CSV", "导出 CSV"))
                }
            }
        }
        p #keys-total { (lang.pick("Matching keys: ", "符合条件的卡密：")) (page.total)
            @if page.total > 0 { " (" (card_query.offset + 1) "–" (shown_to) ")" } }
        form method="post" action=(format!("{path}/delete")) {
            (csrf_field(session))
            div.scroll { table #keys-table {
                thead { tr {
                    th scope="col" { span.visually-hidden { (lang.pick("Select", "选择")) } }
                    th scope="col" { "#" } th scope="col" { (lang.pick("Key", "卡密")) }
                    th scope="col" { (lang.pick("State", "状态")) } th scope="col" { (lang.pick("Order", "订单")) }
                } }
                tbody { @for line in &page.cards { tr {
                    td { @if line.status == CardStatus::Available {
                        input type="checkbox" name="card" value=(line.card.0) id=(format!("card-{}", line.card.0))
                            aria-label=(format!("{} {}", lang.pick("Select", "选择"), line.key));
                    } }
                    td { (line.card.0) } td { code.key { (line.key) } }
                    td { (card_word(lang, line.status)) }
                    td { @if let Some(id) = &line.order_id { (super::order_link(id.as_str())) } }
                } } }
            } }
            p.help { (lang.pick("Only available keys can be deleted; sold keys stay for the record.",
                                "只能删除可售的卡密；已售卡密永久保留。")) }
            button type="submit" #delete-selected { (lang.pick("Delete selected keys", "删除所选卡密")) }
        }
        nav.pager aria-label=(lang.pick("Pages", "分页")) {
            @if card_query.offset > 0 {
                a href=(format!("{path}?{}", keys_query(query, card_query.offset.saturating_sub(card_query.limit)))) { (lang.pick("← Previous", "← 上一页")) }
            }
            @if shown_to < page.total {
                " " a href=(format!("{path}?{}", keys_query(query, shown_to))) { (lang.pick("Next →", "下一页 →")) }
            }
        }
    }
}

async fn export_keys(
    request: HttpRequest,
    path: web::Path<String>,
    query: web::Query<CardsQueryText>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (session, listing) = match operator_and_product(&request, &state, &path) {
        Ok(found) => found,
        Err(refusal) => return refusal,
    };
    match crate::routes::manage::cards_export(&state, &request, &listing.product.sku, &query).await
    {
        Ok(csv) => csv,
        Err(error) => message(&request, &session, error.status, "Export", &error.message),
    }
}

/// The deletion form: its CSRF token and every ticked card (a repeated `card` field).
async fn delete_fields(payload: web::Payload) -> Result<(String, Vec<CardId>), ApiError> {
    let limit = FORM_BYTES_MAX * 8;
    let body = crate::read_body(payload, limit, crate::payload_too_large).await?;
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|e| ApiError::bad_request("bad_request", e.to_string()))?;
    let mut csrf = String::new();
    let mut cards = Vec::new();
    for (name, value) in fields {
        match name.as_str() {
            "csrf" => csrf = value,
            "card" => {
                cards.push(CardId(value.parse().map_err(|_| {
                    ApiError::bad_request("bad_request", "a card is a number")
                })?))
            }
            _ => {}
        }
    }
    Ok((csrf, cards))
}

async fn delete_keys(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let Some(session) = operator(&request) else {
        return refuse(&request);
    };
    let (csrf, cards) = match delete_fields(payload).await {
        Ok(fields) => fields,
        Err(error) => {
            return message(
                &request,
                &session,
                error.status,
                "Delete keys",
                &error.message,
            )
        }
    };
    if !session.csrf_matches(&csrf) {
        return super::forbidden(&request);
    }
    let Some(listing) = listing_of(&state, &path) else {
        return unknown_product(&request, &session, &path);
    };
    let lang = Lang::of(&request);
    let sku = listing.product.sku.clone();
    let result = async {
        let outcome = state
            .shop
            .products()
            .delete_cards(sku.clone(), cards)
            .await?;
        if !outcome.deleted.is_empty() {
            let note = format!("{} keys", outcome.deleted.len());
            record_action(&state, &request, "delete_keys", sku.as_str(), &note).await?;
        }
        Ok::<_, ApiError>(outcome)
    }
    .await;
    let title = lang.pick("Delete keys", "删除卡密");
    let back = format!("{}/keys", product_path(&sku));
    let main = match &result {
        Ok(outcome) => html! {
            h1 { (title) }
            p.result #deleted role="status" { (lang.pick("Deleted: ", "已删除：")) (outcome.deleted.len()) }
            @if !outcome.kept.is_empty() {
                p #kept { (lang.pick("Kept (not deletable now): ", "保留（当前不可删除）：")) (outcome.kept.len()) }
                ul { @for (card, status) in &outcome.kept { li { "#" (card.0) ": " (card_word(lang, *status)) } } }
            }
            p { a href=(back) { (lang.pick("Back to the keys", "返回卡密列表")) } }
        },
        Err(error) => html! {
            h1 { (title) }
            p.error role="alert" { (error.message) }
            p { a href=(back) { (lang.pick("Back to the keys", "返回卡密列表")) } }
        },
    };
    let status = result
        .as_ref()
        .map_or_else(|e| e.status, |_| StatusCode::OK);
    admin_page(&request, &session, title, status, main)
}
