//! The catalogue actor: serialises product creation, card imports and key deletions, so
//! that a key's deduplication and its card id are decided against a state no other import
//! is changing, and a deletion never races an import of the same product.

use std::time::Instant;

use actix::prelude::*;
use engine::import::parse_import;
use engine::{Event, Product, Rejection};

use crate::{ActorKind, Shop, ShopError};

pub const CATALOG_MAILBOX_CAPACITY: usize = 64;
/// Keys per committed import event.
pub const IMPORT_CHUNK_KEYS: usize = 2_000;

#[derive(Message)]
#[rtype(result = "Result<(), ShopError>")]
pub struct CreateProduct(pub Product);

/// An operator's upload, raw: parsed here so a bad body imports nothing.
#[derive(Message)]
#[rtype(result = "Result<ImportOutcome, ShopError>")]
pub struct ImportCards {
    pub sku: engine::Sku,
    pub body: Vec<u8>,
}

/// An operator's deletion of unsold keys of one product.
#[derive(Message)]
#[rtype(result = "Result<DeleteOutcome, ShopError>")]
pub struct DeleteCards {
    pub sku: engine::Sku,
    pub cards: Vec<engine::CardId>,
}

/// What a deletion did: the keys deleted, and those kept with the reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOutcome {
    pub deleted: Vec<engine::CardId>,
    /// Keys not deleted: sold, reserved by an order (or a reservation under way), already
    /// deleted, or of another product.
    pub kept: Vec<(engine::CardId, crate::products::CardStatus)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportOutcome {
    pub imported: u64,
    pub duplicates: u64,
}

pub struct Catalog {
    pub(crate) shop: Shop,
}

impl Actor for Catalog {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(CATALOG_MAILBOX_CAPACITY);
        self.shop.health().started(ActorKind::Catalog);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.shop.health().stopped(ActorKind::Catalog);
    }
}

impl Catalog {
    /// Records a message's handling time, and its failure when it is an operational one (a
    /// refusal such as a duplicate SKU is an answer, not an actor failure).
    fn handled<T>(&self, result: &Result<T, ShopError>, started: Instant) {
        let health = self.shop.health();
        health.handled(ActorKind::Catalog, started.elapsed());
        if let Err(error) = result {
            if !matches!(error, ShopError::Rejected(_)) {
                health.failed(ActorKind::Catalog, &error.to_string(), self.shop.now_ms());
            }
        }
    }
}

impl Supervised for Catalog {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.shop.health().restarted(ActorKind::Catalog);
    }
}

impl Handler<CreateProduct> for Catalog {
    type Result = AtomicResponse<Self, Result<(), ShopError>>;

    fn handle(&mut self, msg: CreateProduct, _: &mut Self::Context) -> Self::Result {
        let shop = self.shop.clone();
        let work = async move {
            let product = msg.0;
            if shop.store().state().product(&product.sku).is_some() {
                return Err(Rejection::SkuExists.into());
            }
            let sku = product.sku.clone();
            shop.commit(&Event::ProductCreated(product)).await?;
            shop.open_pool(&sku);
            Ok(())
        };
        let started = Instant::now();
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            move |result, act, _| {
                act.handled(&result, started);
                result
            },
        )))
    }
}

impl Handler<ImportCards> for Catalog {
    type Result = AtomicResponse<Self, Result<ImportOutcome, ShopError>>;

    fn handle(&mut self, msg: ImportCards, _: &mut Self::Context) -> Self::Result {
        let shop = self.shop.clone();
        let work = async move {
            let parsed = parse_import(&msg.body)?;
            // Digests before the state lock: the lock then only looks them up.
            let digests: Vec<[u8; 32]> = parsed
                .keys
                .iter()
                .map(|key| shop.key_digest(&msg.sku, key))
                .collect();
            let (keys, first_card_id, duplicates) = {
                let state = shop.store().state();
                let product = state.product(&msg.sku).ok_or(Rejection::UnknownSku)?;
                let mut duplicates = parsed.duplicates_count;
                let mut keys = Vec::with_capacity(parsed.keys.len());
                for (key, digest) in parsed.keys.into_iter().zip(digests) {
                    if state.has_digest(&msg.sku, &digest) || product.has_key(key) {
                        duplicates += 1;
                    } else {
                        keys.push(key.to_owned());
                    }
                }
                (keys, state.next_card_id(), duplicates)
            };
            let imported = keys.len() as u64;
            // Commit in chunks: one huge event would hold the state lock and the sled
            // mirror long enough to stall every checkout (measured: 3.8 s for 200k keys).
            // The body was validated whole above, so a chunked import still refuses a
            // malformed body whole; a crash between chunks leaves the chunks before it, and
            // the operator's retry skips them as duplicates. Every key is sealed for its
            // card before it reaches the log.
            let mut next = first_card_id.0;
            for chunk in keys.chunks(IMPORT_CHUNK_KEYS) {
                let cards = chunk
                    .iter()
                    .zip(next..)
                    .map(|(key, id)| shop.seal_card(&msg.sku, engine::CardId(id), key))
                    .collect();
                let event = Event::SealedCardsImported {
                    sku: msg.sku.clone(),
                    first_card_id: engine::CardId(next),
                    cards,
                };
                shop.commit(&event).await?;
                let ids = (next..next + chunk.len() as u64).map(engine::CardId);
                shop.add_cards(&msg.sku, ids.collect()).await;
                next += chunk.len() as u64;
            }
            Ok(ImportOutcome {
                imported,
                duplicates,
            })
        };
        let started = Instant::now();
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            move |result, act, _| {
                act.handled(&result, started);
                result
            },
        )))
    }
}

impl Handler<DeleteCards> for Catalog {
    type Result = AtomicResponse<Self, Result<DeleteOutcome, ShopError>>;

    fn handle(&mut self, msg: DeleteCards, _: &mut Self::Context) -> Self::Result {
        let shop = self.shop.clone();
        let work = async move { crate::products::delete_cards(&shop, msg.sku, msg.cards).await };
        let started = Instant::now();
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            move |result, act, _| {
                act.handled(&result, started);
                result
            },
        )))
    }
}
