//! `shop.products()`: the operators' handle on products and their keys: create, list, edit
//! the listing, import keys, list, search and delete unsold keys.
//!
//! Invariants: a key is deleted only after the pool shards gave it up (so no shard can hand
//! it to a buyer), and only when the log agrees it is available; the shards drop it again
//! after the commit (a shard reloaded from the log in between took it back) and never take
//! it back from a lapsed or refused reservation. The engine refuses any reservation of a
//! deleted key all the same. Sold keys are never deleted.

use engine::listing::{ProductChange, ProductDetails};
use engine::money::AMOUNT_CENTS_MAX;
use engine::state::Holder;
use engine::{CardId, Event, OrderId, Product, Rejection, Sku, Stock};

use crate::catalog::{self, DeleteOutcome, ImportOutcome};
use crate::{ActorKind, Shop, ShopError};

/// Cards examined per hold of the state's read lock by a listing: a large product is
/// listed in slices so that checkouts (which need the write lock) never wait long.
pub const CARD_SCAN_CHUNK: usize = 20_000;
/// Most keys one listing page or export returns.
pub const CARDS_PAGE_MAX: usize = 100_000;

/// A product as operators see it: the listing, the stock, the deleted count.
#[derive(Clone, Debug)]
pub struct ProductListing {
    pub product: Product,
    pub stock: Stock,
    pub details: ProductDetails,
    pub deleted: u64,
}

impl ProductListing {
    /// Whether the listing already is what `change` would make it.
    pub fn has(&self, change: &ProductChange) -> bool {
        let details = &self.details;
        match change {
            ProductChange::Name(name) => self.product.name == *name,
            ProductChange::PriceCents(cents) => self.product.price_cents == *cents,
            ProductChange::Description(text) => details.description == *text,
            ProductChange::Hidden(hidden) => details.hidden == *hidden,
            ProductChange::QuantityMax(limit) => details.quantity_max == *limit,
            ProductChange::UsageNote(text) => details.usage_note == *text,
            ProductChange::ImageUrl(url) => details.image_url == *url,
            ProductChange::Category(category) => details.category == *category,
        }
    }
}

/// Where a key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CardStatus {
    Available,
    Reserved,
    Sold,
    Deleted,
    /// Not a key of this product.
    Elsewhere,
}

impl CardStatus {
    pub const LISTED: [CardStatus; 4] = [
        CardStatus::Available,
        CardStatus::Reserved,
        CardStatus::Sold,
        CardStatus::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CardStatus::Available => "available",
            CardStatus::Reserved => "reserved",
            CardStatus::Sold => "sold",
            CardStatus::Deleted => "deleted",
            CardStatus::Elsewhere => "elsewhere",
        }
    }

    pub fn parse(text: &str) -> Option<CardStatus> {
        Self::LISTED.into_iter().find(|s| s.as_str() == text)
    }
}

/// One key in an operator's listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardLine {
    pub card: CardId,
    pub key: String,
    pub status: CardStatus,
    /// The order holding or holding it sold.
    pub order_id: Option<OrderId>,
}

/// Which keys a listing shows.
#[derive(Clone, Debug, Default)]
pub struct CardQuery {
    /// Part of the key, any case (empty: every key).
    pub search: String,
    pub status: Option<CardStatus>,
    pub offset: usize,
    pub limit: usize,
}

/// A page of keys, and how many match in all.
#[derive(Clone, Debug, Default)]
pub struct CardPage {
    pub total: usize,
    pub cards: Vec<CardLine>,
}

/// The operators' handle on products and keys (`shop.products()`).
pub struct Products<'a> {
    shop: &'a Shop,
}

impl Shop {
    pub fn products(&self) -> Products<'_> {
        Products { shop: self }
    }
}

fn status_of(holder: Holder) -> CardStatus {
    match holder {
        Holder::Available => CardStatus::Available,
        Holder::Reserved(_) => CardStatus::Reserved,
        Holder::Sold(_) => CardStatus::Sold,
        Holder::Deleted => CardStatus::Deleted,
    }
}

impl Products<'_> {
    pub async fn create(&self, product: Product) -> Result<(), ShopError> {
        if !ProductChange::Name(product.name.clone()).is_valid() {
            return Err(Rejection::InvalidInput("name must be 1 to 200 bytes").into());
        }
        if product.price_cents == 0 || product.price_cents > AMOUNT_CENTS_MAX {
            return Err(Rejection::InvalidInput("price_cents must be 1 to 1000000000").into());
        }
        let _queued = self.shop.health().queued(ActorKind::Catalog);
        self.shop
            .catalog()
            .send(catalog::CreateProduct(product))
            .await
            .map_err(|_| ShopError::Unavailable("catalogue"))?
    }

    pub async fn import_cards(&self, sku: Sku, body: Vec<u8>) -> Result<ImportOutcome, ShopError> {
        let _queued = self.shop.health().queued(ActorKind::Catalog);
        self.shop
            .catalog()
            .send(catalog::ImportCards { sku, body })
            .await
            .map_err(|_| ShopError::Unavailable("catalogue"))?
    }

    /// Every product, hidden ones too, in SKU order.
    pub fn list(&self) -> Vec<ProductListing> {
        let state = self.shop.store().state();
        state
            .products()
            .map(|p| ProductListing {
                product: p.product.clone(),
                stock: p.stock,
                details: p.details.clone(),
                deleted: p.deleted,
            })
            .collect()
    }

    /// The products buyers may see: not hidden.
    pub fn listed(&self) -> Vec<ProductListing> {
        let mut products = self.list();
        products.retain(|p| !p.details.hidden);
        products
    }

    pub fn get(&self, sku: &Sku) -> Option<ProductListing> {
        let state = self.shop.store().state();
        state.product(sku).map(|p| ProductListing {
            product: p.product.clone(),
            stock: p.stock,
            details: p.details.clone(),
            deleted: p.deleted,
        })
    }

    pub fn stock(&self, sku: &Sku) -> Result<Stock, ShopError> {
        self.shop
            .store()
            .state()
            .product(sku)
            .map(|p| p.stock)
            .ok_or(Rejection::UnknownSku.into())
    }

    /// Edits a product's listing: every change in one durable event. Orders made before
    /// keep their amounts; orders made after pay the new price. Answers the listing and the
    /// changes that were made (those that set a field to what it was are dropped).
    pub async fn edit(
        &self,
        sku: &Sku,
        changes: Vec<ProductChange>,
    ) -> Result<(ProductListing, Vec<ProductChange>), ShopError> {
        if changes.is_empty() || changes.len() > engine::listing::CHANGES_PER_EDIT_MAX {
            return Err(Rejection::InvalidInput("an edit changes 1 to 16 fields").into());
        }
        if changes.iter().any(|c| !c.is_valid()) {
            return Err(Rejection::InvalidInput(
                "a value is out of bounds (name 1-200 bytes, price 1-1000000000, \
                 texts up to 4000 bytes, limit up to 100)",
            )
            .into());
        }
        let current = self.get(sku).ok_or(Rejection::UnknownSku)?;
        // A form sends every field: only what differs is an edit (and an audit entry).
        let changes: Vec<ProductChange> = changes
            .into_iter()
            .filter(|change| !current.has(change))
            .collect();
        if changes.is_empty() {
            return Ok((current, changes));
        }
        let event = Event::ProductEdited {
            sku: sku.clone(),
            changes: changes.clone(),
            at_ms: self.shop.now_ms(),
        };
        self.shop.commit(&event).await?;
        let listing = self.get(sku).ok_or(Rejection::UnknownSku)?;
        Ok((listing, changes))
    }

    /// A page of a product's keys, oldest first, filtered by `query`.
    pub fn cards(&self, sku: &Sku, query: &CardQuery) -> Result<CardPage, ShopError> {
        let runs: Vec<(CardId, u64)> = {
            let state = self.shop.store().state();
            let product = state.product(sku).ok_or(Rejection::UnknownSku)?;
            product.card_runs().to_vec()
        };
        let needle = query.search.trim().to_lowercase();
        let limit = query.limit.min(CARDS_PAGE_MAX);
        let mut page = CardPage::default();
        let chunks = runs.iter().flat_map(|(first, count)| {
            let end = first.0 + count;
            (first.0..end)
                .step_by(CARD_SCAN_CHUNK)
                .map(move |start| start..end.min(start + CARD_SCAN_CHUNK as u64))
        });
        for chunk in chunks {
            let state = self.shop.store().state();
            state.for_each_card(chunk, |card, slot| {
                let status = status_of(slot.holder);
                if query.status.is_some_and(|wanted| wanted != status) {
                    return;
                }
                // Keys are sealed at rest: a search opens each one it looks at.
                let key = crate::cards::open_key(self.shop.sealer(), card, &slot.key)
                    .unwrap_or_else(|_| "(does not open)".to_owned());
                if !needle.is_empty() && !key.to_lowercase().contains(&needle) {
                    return;
                }
                page.total += 1;
                if page.total <= query.offset || page.cards.len() >= limit {
                    return;
                }
                let order_id = match slot.holder {
                    Holder::Reserved(index) | Holder::Sold(index) => {
                        state.order_at(index).map(|r| r.created.order_id.clone())
                    }
                    Holder::Available | Holder::Deleted => None,
                };
                page.cards.push(CardLine {
                    card,
                    key,
                    status,
                    order_id,
                });
            });
        }
        Ok(page)
    }

    /// Deletes unsold keys of a product; keys that are sold, reserved or already deleted
    /// are kept and listed with their status.
    pub async fn delete_cards(
        &self,
        sku: Sku,
        cards: Vec<CardId>,
    ) -> Result<DeleteOutcome, ShopError> {
        let max = engine::state::CARDS_PER_DELETION_MAX;
        if cards.is_empty() || cards.len() > max {
            return Err(Rejection::InvalidInput("delete 1 to 10000 keys at a time").into());
        }
        let _queued = self.shop.health().queued(ActorKind::Catalog);
        self.shop
            .catalog()
            .send(catalog::DeleteCards { sku, cards })
            .await
            .map_err(|_| ShopError::Unavailable("catalogue"))?
    }
}

/// The deletion itself, run inside the catalogue actor (serialised with imports).
pub(crate) async fn delete_cards(
    shop: &Shop,
    sku: Sku,
    mut cards: Vec<CardId>,
) -> Result<DeleteOutcome, ShopError> {
    cards.sort_unstable();
    cards.dedup();
    let mut outcome = DeleteOutcome::default();
    let candidates: Vec<CardId> = {
        let state = shop.store().state();
        if state.product(&sku).is_none() {
            return Err(Rejection::UnknownSku.into());
        }
        let mut candidates = Vec::with_capacity(cards.len());
        for card in cards {
            let status = match state.card(card) {
                Some(slot) if state.sku_of(card).as_ref() == Some(&sku) => status_of(slot.holder),
                _ => CardStatus::Elsewhere,
            };
            if status == CardStatus::Available {
                candidates.push(card);
            } else {
                outcome.kept.push((card, status));
            }
        }
        candidates
    };
    if candidates.is_empty() {
        return Ok(outcome);
    }
    // Out of the shards first: from here no buyer can be handed these keys.
    let pool = shop.pool(&sku)?;
    let mut removed = pool.remove(&candidates).await;
    removed.sort_unstable();
    for card in &candidates {
        if removed.binary_search(card).is_err() {
            // Taken by a reservation that is not committed yet.
            outcome.kept.push((*card, CardStatus::Reserved));
        }
    }
    if removed.is_empty() {
        return Ok(outcome);
    }
    let event = Event::CardsDeleted {
        sku: sku.clone(),
        cards: removed.clone(),
        at_ms: shop.now_ms(),
    };
    if let Err(error) = shop.commit(&event).await {
        if error.is_refused_before_logging() {
            pool.add(removed).await;
        }
        return Err(error);
    }
    // A shard restarted meanwhile reloaded them from the log: drop them again.
    pool.remove(&removed).await;
    outcome.deleted = removed;
    Ok(outcome)
}
