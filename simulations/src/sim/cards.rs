//! Card keys at rest in the simulation, as the actors keep them: the setup imports keys in
//! the clear (as an older version did) and seals them at once with the start-up migration,
//! as every restart does again; every later import is sealed as the catalogue seals it; a
//! sealed import of a key the SKU has is refused by its digest; every sealed key opens to
//! what was imported; and at the end no key imported sealed is readable in the data dir.

use actors::cards::{key_digest, open_key, seal_key, SEAL_CHUNK_CARDS};
use actors::seal::{Sealer, SealingKey};
use engine::events::SealedCard;
use engine::pool::shard_of;
use engine::{CardId, Event, Sku};

use super::{World, SHARDS};

/// The simulated operator's sealing key (the resellers' secrets use the same).
pub(super) const SEALING_KEY: SealingKey = SealingKey([7; 32]);
/// Cards whose key is opened and compared after each step.
const CHECKED_PER_STEP: u64 = 3;

/// The key the simulation imports as card `card` (keys are numbered by card id).
fn expected_key(sku: &Sku, card: CardId) -> String {
    format!("{sku}-KEY-{:06}", card.0 - 1)
}

impl World {
    fn nonce(&mut self) -> [u8; 12] {
        let (a, b) = (
            self.rng.next_u64().to_le_bytes(),
            self.rng.next_u64().to_le_bytes(),
        );
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&a);
        nonce[8..].copy_from_slice(&b[..4]);
        nonce
    }

    /// Imports `count` new keys into `sku`, sealed unless `clear` (an older version's).
    pub(super) fn import_keys(&mut self, sku: &Sku, count: u64, clear: bool) {
        let first_card_id = self.store().state().next_card_id();
        let sealer = Sealer::new(&SEALING_KEY);
        let ids = (first_card_id.0..first_card_id.0 + count).map(CardId);
        let event = if clear {
            let keys = ids.map(|card| expected_key(sku, card)).collect();
            Event::CardsImported {
                sku: sku.clone(),
                first_card_id,
                keys,
            }
        } else {
            let mut cards = Vec::new();
            for card in ids {
                let nonce = self.nonce();
                cards.push(seal_key(
                    &sealer,
                    sku,
                    card,
                    &expected_key(sku, card),
                    nonce,
                ));
            }
            Event::SealedCardsImported {
                sku: sku.clone(),
                first_card_id,
                cards,
            }
        };
        if self.commit(&event).is_ok() {
            self.keys_imported += count;
            let shards = self.pools.get_mut(sku).expect("pool");
            for id in first_card_id.0..first_card_id.0 + count {
                shards[shard_of(CardId(id), SHARDS)].add([CardId(id)]);
            }
        }
    }

    /// Sometimes tries to import a key the SKU has (sealed): the digest must refuse it.
    pub(super) fn import_duplicate(&mut self, sku: &Sku) {
        let count = self.store().state().cards_count();
        if count == 0 {
            return;
        }
        let candidate = CardId(1 + self.rng.below(count));
        let existing =
            (self.store().state().sku_of(candidate).as_ref() == Some(sku)).then_some(candidate);
        let Some(existing) = existing else { return };
        let sealer = Sealer::new(&SEALING_KEY);
        let first_card_id = self.store().state().next_card_id();
        let nonce = self.nonce();
        let cards = vec![seal_key(
            &sealer,
            sku,
            first_card_id,
            &expected_key(sku, existing),
            nonce,
        )];
        let event = Event::SealedCardsImported {
            sku: sku.clone(),
            first_card_id,
            cards,
        };
        if !matches!(
            self.store().commit(&event),
            Err(storage::Error::Violation(_))
        ) {
            self.violation(format!(
                "a duplicate of card {existing:?}'s key was accepted"
            ));
        }
    }

    /// The start-up migration: every key still in the clear is sealed, in chunks.
    pub(super) fn seal_legacy_cards(&mut self) {
        let sealer = Sealer::new(&SEALING_KEY);
        loop {
            let clear: Vec<(CardId, Sku)> = {
                let state = self.store().state();
                state
                    .clear_cards()
                    .take(SEAL_CHUNK_CARDS)
                    .map(|(card, _)| (card, state.sku_of(card).expect("a card's sku")))
                    .collect()
            };
            if clear.is_empty() {
                return;
            }
            let mut cards: Vec<(CardId, SealedCard)> = Vec::new();
            for (card, sku) in clear {
                let nonce = self.nonce();
                cards.push((
                    card,
                    seal_key(&sealer, &sku, card, &expected_key(&sku, card), nonce),
                ));
            }
            if self.commit(&Event::CardsSealed { cards }).is_err() {
                return; // Crashed: the restart seals the rest.
            }
        }
    }

    /// A few cards' keys open to what was imported, and their digests deduplicate.
    pub(super) fn check_card_keys(&mut self, step: u64) {
        let sealer = Sealer::new(&SEALING_KEY);
        let mut problems = Vec::new();
        let count = self.store().state().cards_count();
        let picks: Vec<CardId> = (0..CHECKED_PER_STEP.min(count))
            .map(|_| CardId(1 + self.rng.below(count)))
            .collect();
        {
            let state = self.store().state();
            for card in picks {
                let (Some(slot), Some(sku)) = (state.card(card), state.sku_of(card)) else {
                    continue;
                };
                let want = expected_key(&sku, card);
                match open_key(&sealer, card, &slot.key) {
                    Ok(key) if key == want => {}
                    other => {
                        problems.push(format!("step {step}: card {card:?} opens to {other:?}"))
                    }
                }
                if matches!(slot.key, engine::CardKey::Sealed(_))
                    && !state.has_digest(&sku, &key_digest(&sealer, &sku, &want))
                {
                    problems.push(format!(
                        "step {step}: card {card:?}'s digest is not its product's"
                    ));
                }
            }
        }
        for problem in problems {
            self.violation(problem);
        }
    }

    /// At the end: no key of a card imported sealed is readable anywhere in the data dir
    /// (every node's, on a cluster).
    pub(super) fn check_keys_at_rest(&mut self, first_sealed: CardId) {
        let bytes: Vec<u8> = self
            .data_dirs()
            .iter()
            .flat_map(|dir| files_bytes(dir))
            .collect();
        let state = self.store().state();
        let mut leaked = Vec::new();
        for id in first_sealed.0..=state.cards_count() {
            let card = CardId(id);
            let Some(sku) = state.sku_of(card) else {
                continue;
            };
            let key = expected_key(&sku, card);
            if bytes.windows(key.len()).any(|w| w == key.as_bytes()) {
                leaked.push(key);
            }
            if leaked.len() >= 3 {
                break;
            }
        }
        drop(state);
        for key in leaked {
            self.violation(format!(
                "key {key}, imported sealed, is readable in the data dir"
            ));
        }
    }
}

/// Every file under `dir`, concatenated.
fn files_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            all.extend(files_bytes(&path));
        } else {
            all.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    all
}
