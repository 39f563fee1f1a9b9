//! Operators' edits inside `ShopState`: product listings, key deletion, the shop identity.
//!
//! Invariants (refused by `apply`, re-derived by `check`): only available keys are deleted,
//! and a deleted key is never reserved or sold again (`check_cards` wants `Available`); a
//! deleted key leaves `stock.imported` and `stock.available` together, so imported =
//! available + reserved + sold keeps holding, and `deleted` counts it beside them.

use std::collections::HashSet;

use super::{Holder, ShopState, Touched, Violation};
use crate::ids::{CardId, Sku};
use crate::listing::{IdentityChange, ProductChange, CHANGES_PER_EDIT_MAX};

/// Most keys one deletion event may carry (an operator deletes page by page).
pub const CARDS_PER_DELETION_MAX: usize = 10_000;

impl ShopState {
    pub(super) fn apply_product_edited(
        &mut self,
        sku: &Sku,
        changes: &[ProductChange],
    ) -> Result<Touched, Violation> {
        ensure!(
            !changes.is_empty() && changes.len() <= CHANGES_PER_EDIT_MAX,
            "edit of {sku} with {} changes",
            changes.len()
        );
        for change in changes {
            ensure!(change.is_valid(), "edit of {sku}: {change:?} out of bounds");
        }
        let product = self
            .products
            .get_mut(sku)
            .ok_or_else(|| Violation(format!("edit of unknown sku {sku}")))?;
        for change in changes {
            let details = &mut product.details;
            match change {
                ProductChange::Name(name) => product.product.name = name.clone(),
                ProductChange::PriceCents(cents) => product.product.price_cents = *cents,
                ProductChange::Description(text) => details.description = text.clone(),
                ProductChange::Hidden(hidden) => details.hidden = *hidden,
                ProductChange::QuantityMax(limit) => details.quantity_max = *limit,
                ProductChange::UsageNote(text) => details.usage_note = text.clone(),
                ProductChange::ImageUrl(url) => details.image_url = url.clone(),
                ProductChange::Category(category) => details.category = category.clone(),
            }
        }
        Ok(Touched {
            sku: Some(sku.clone()),
            listing: Some(sku.clone()),
            ..Touched::default()
        })
    }

    pub(super) fn apply_cards_deleted(
        &mut self,
        sku: &Sku,
        cards: &[CardId],
    ) -> Result<Touched, Violation> {
        ensure!(
            !cards.is_empty() && cards.len() <= CARDS_PER_DELETION_MAX,
            "deletion of {} keys of {sku}",
            cards.len()
        );
        ensure!(self.products.contains_key(sku), "deletion in unknown {sku}");
        // Sold and reserved keys are refused here: sold history is never deleted.
        self.check_cards(sku, cards, Holder::Available)?;
        self.set_holders(cards, Holder::Deleted);
        let product = self.products.get_mut(sku).expect("checked");
        let count = cards.len() as u64;
        product.stock.imported -= count;
        product.stock.available -= count;
        product.deleted += count;
        Ok(Touched {
            sku: Some(sku.clone()),
            listing: Some(sku.clone()),
            cards: cards.to_vec(),
            ..Touched::default()
        })
    }

    pub(super) fn apply_identity(
        &mut self,
        changes: &[IdentityChange],
    ) -> Result<Touched, Violation> {
        ensure!(
            !changes.is_empty() && changes.len() <= CHANGES_PER_EDIT_MAX,
            "identity edit with {} changes",
            changes.len()
        );
        let mut kinds = HashSet::new();
        for change in changes {
            ensure!(change.is_valid(), "identity: {change:?} out of bounds");
            ensure!(
                kinds.insert(std::mem::discriminant(change)),
                "identity edit sets one field twice"
            );
        }
        for change in changes {
            self.identity.apply(change);
        }
        Ok(Touched {
            identity: true,
            ..Touched::default()
        })
    }

    pub fn identity(&self) -> &crate::listing::ShopIdentity {
        &self.identity
    }

    /// Whether a card was deleted by an operator.
    pub fn is_deleted(&self, card: CardId) -> bool {
        self.card(card)
            .is_some_and(|slot| slot.holder == Holder::Deleted)
    }
}
