//! `shop.storefront()`: the shop's identity (name, logo, announcement, footer, support
//! contact, terms, time zone) as the operator sets it, kept in the log like every change.

use engine::listing::{IdentityChange, ShopIdentity, CHANGES_PER_EDIT_MAX};
use engine::{Event, Rejection};

use crate::{Shop, ShopError};

/// The handle on the shop's identity (`shop.storefront()`).
pub struct Storefront<'a> {
    shop: &'a Shop,
}

impl Shop {
    pub fn storefront(&self) -> Storefront<'_> {
        Storefront { shop: self }
    }
}

impl Storefront<'_> {
    pub fn identity(&self) -> ShopIdentity {
        self.shop.store().state().identity().clone()
    }

    /// Sets the given fields, all at once and durably; changes that set a field to what it
    /// already is are dropped, and nothing is written when nothing changes.
    pub async fn set_identity(
        &self,
        changes: Vec<IdentityChange>,
    ) -> Result<ShopIdentity, ShopError> {
        if changes.len() > CHANGES_PER_EDIT_MAX || changes.iter().any(|c| !c.is_valid()) {
            return Err(Rejection::InvalidInput(
                "shop name up to 100 bytes, URLs up to 500, texts up to 4000, \
                 time zone within 14 hours of UTC",
            )
            .into());
        }
        let current = self.identity();
        let changes: Vec<IdentityChange> = changes
            .into_iter()
            .filter(|change| {
                let mut after = current.clone();
                after.apply(change);
                after != current
            })
            .collect();
        if changes.is_empty() {
            return Ok(current);
        }
        let event = Event::ShopIdentitySet {
            changes,
            at_ms: self.shop.now_ms(),
        };
        self.shop.commit(&event).await?;
        Ok(self.identity())
    }
}
