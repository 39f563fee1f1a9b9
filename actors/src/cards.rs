//! Card keys at rest: sealed with the sealing key (`seal.rs`, ChaCha20-Poly1305, the card
//! id as associated data, so a sealed key neither reads without the key nor moves to
//! another card), deduplicated by a keyed digest (HMAC-SHA256 of the SKU and the key under
//! a key derived from the sealing key), and opened only to hand a key to its buyer.
//!
//! Invariant: every key the shop imports is sealed before it reaches the log. Keys an older
//! version imported in the clear are sealed at start (`seal_legacy_cards`, before anything
//! is served); then one sealed key per SKU must open, so a changed sealing key stops the
//! server instead of every delivery.

use engine::events::{Event, SealedCard};
use engine::state::CardKey;
use engine::{CardId, ShopState, Sku};

use crate::seal::{SealError, Sealer};
use crate::{Shop, ShopError};

/// Cards sealed per migration event (as imports are chunked: a short state lock each).
pub const SEAL_CHUNK_CARDS: usize = 2_000;

/// The associated data a card's key is sealed with.
fn card_context(card: CardId) -> String {
    format!("card:{}", card.0)
}

/// The digest a key of `sku` is deduplicated by.
pub fn key_digest(sealer: &Sealer, sku: &Sku, key: &str) -> [u8; 32] {
    sealer.digest("card", sku.as_str(), key.as_bytes())
}

/// `key` of `sku` sealed for `card` with `nonce`: what the catalogue commits (and the
/// simulator, with its own nonces).
pub fn seal_key(
    sealer: &Sealer,
    sku: &Sku,
    card: CardId,
    key: &str,
    nonce: [u8; 12],
) -> SealedCard {
    SealedCard {
        digest: key_digest(sealer, sku, key),
        sealed: sealer.seal_bytes(key.as_bytes(), card_context(card).as_bytes(), nonce),
    }
}

/// A key as it opens: a sealed one under its card's context, a clear one as it is.
pub fn open_key(sealer: &Sealer, card: CardId, key: &CardKey) -> Result<String, SealError> {
    match key {
        CardKey::Clear(text) => Ok(text.clone()),
        CardKey::Sealed(sealed) => {
            let plain = sealer.open_bytes(sealed, card_context(card).as_bytes())?;
            String::from_utf8(plain).map_err(|_| SealError::Malformed)
        }
    }
}

/// The keys of `cards`, opened, in order. A key that does not open is left out and logged:
/// the start-up check makes that a bug, not a configuration.
pub(crate) fn keys_of(state: &ShopState, sealer: &Sealer, cards: &[CardId]) -> Vec<String> {
    cards
        .iter()
        .filter_map(|card| {
            let key = state.card_key(*card)?;
            open_key(sealer, *card, &key)
                .inspect_err(
                    |error| tracing::error!(card = card.0, %error, "a card key does not open"),
                )
                .ok()
        })
        .collect()
}

impl Shop {
    /// `key` of `sku`, sealed for `card`.
    pub(crate) fn seal_card(&self, sku: &Sku, card: CardId, key: &str) -> SealedCard {
        let nonce: [u8; 12] = self.0.entropy.random_u128().to_le_bytes()[..12]
            .try_into()
            .expect("12 bytes");
        seal_key(&self.0.sealer, sku, card, key, nonce)
    }

    /// The digest a key of `sku` is deduplicated by.
    pub(crate) fn key_digest(&self, sku: &Sku, key: &str) -> [u8; 32] {
        key_digest(&self.0.sealer, sku, key)
    }

    pub(crate) fn sealer(&self) -> &Sealer {
        &self.0.sealer
    }

    /// Seals every key an older version imported in the clear (same cards, same keys), in
    /// chunks; returns how many. Run at start, before anything is served.
    pub async fn seal_legacy_cards(&self) -> Result<usize, ShopError> {
        let mut sealed = 0;
        loop {
            let chunk: Vec<(CardId, SealedCard)> = {
                let state = self.store().state();
                let clear: Vec<(CardId, String)> = state
                    .clear_cards()
                    .take(SEAL_CHUNK_CARDS)
                    .map(|(card, key)| (card, key.to_owned()))
                    .collect();
                clear
                    .into_iter()
                    .map(|(card, key)| {
                        let sku = state.sku_of(card).expect("a card has a sku");
                        (card, self.seal_card(&sku, card, &key))
                    })
                    .collect()
            };
            if chunk.is_empty() {
                return Ok(sealed);
            }
            sealed += chunk.len();
            self.commit(&Event::CardsSealed { cards: chunk }).await?;
        }
    }

    /// Opens one sealed key per SKU: a sealing key other than the one they were sealed with
    /// is found at start, not at the next delivery.
    pub fn check_sealed_cards(&self) -> Result<(), SealError> {
        let state = self.store().state();
        for listing in state.products() {
            // The first sealed key of each: keys in the clear come first if any (an older
            // version's), and archived keys are sealed, so this reads at most one of them.
            let first_sealed = listing.card_ids().find_map(|card| {
                let slot = state.card(card)?;
                matches!(slot.key, CardKey::Sealed(_)).then_some((card, slot))
            });
            if let Some((card, slot)) = first_sealed {
                open_key(&self.0.sealer, card, &slot.key)?;
            }
        }
        Ok(())
    }
}
