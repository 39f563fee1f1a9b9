//! Buyers who lost their order link find their orders again by contact plus the lookup
//! password they set when buying (dujiaoka's 查询密码).
//!
//! Invariants: only a slow salted hash of the password is stored (PBKDF2-HMAC-SHA256 from
//! ring, a random 128-bit salt per order, `LOOKUP_HASH_ITERATIONS` rounds), compared in
//! constant time; a lookup lists only orders whose contact matches and whose own password
//! verifies, so one buyer never sees another's orders, even with the same contact; hashing
//! and verifying run off the async threads. The edge rate-limits lookups per client and per
//! contact.

use std::num::NonZeroU32;
use std::sync::Arc;

use engine::{OrderRecord, Rejection};
use ring::pbkdf2;

use crate::{Shop, ShopError};

/// PBKDF2 rounds: about 30-60 ms per hash on a server core, which makes guessing slow and
/// keeps a purchase quick.
pub const LOOKUP_HASH_ITERATIONS: u32 = 100_000;
/// Shortest and longest lookup password, in bytes.
pub const LOOKUP_PASSWORD_LEN_MIN: usize = 4;
pub const LOOKUP_PASSWORD_LEN_MAX: usize = 64;
/// Most orders of one contact a lookup verifies (newest first); each costs one hash.
pub const LOOKUP_ORDERS_CHECKED_MAX: usize = 10;
/// The stored form's tag.
const SCHEME: &str = "pbkdf2-sha256";
const HASH_BYTES: usize = 32;

/// The password's shape: 4 to 64 bytes, no control characters.
pub fn check_password(password: &str) -> Result<(), Rejection> {
    let valid = (LOOKUP_PASSWORD_LEN_MIN..=LOOKUP_PASSWORD_LEN_MAX).contains(&password.len())
        && !password.chars().any(char::is_control);
    if valid {
        Ok(())
    } else {
        Err(Rejection::InvalidInput(
            "the lookup password is 4 to 64 characters",
        ))
    }
}

fn iterations(count: u32) -> NonZeroU32 {
    NonZeroU32::new(count).expect("rounds are positive")
}

/// `pbkdf2-sha256$<rounds>$<salt hex>$<hash hex>`.
pub fn hash_password(password: &str, salt: u128) -> String {
    let salt = salt.to_be_bytes();
    let mut hash = [0u8; HASH_BYTES];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations(LOOKUP_HASH_ITERATIONS),
        &salt,
        password.as_bytes(),
        &mut hash,
    );
    format!(
        "{SCHEME}${LOOKUP_HASH_ITERATIONS}${}${}",
        hex::encode(salt),
        hex::encode(hash)
    )
}

/// Whether `password` is the one `stored` was made from (constant-time in the hash).
pub fn verify_password(password: &str, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some(SCHEME), Some(rounds), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Ok(rounds), Ok(salt), Ok(hash)) =
        (rounds.parse::<u32>(), hex::decode(salt), hex::decode(hash))
    else {
        return false;
    };
    if rounds == 0 || rounds > 10 * LOOKUP_HASH_ITERATIONS {
        return false;
    }
    pbkdf2::verify(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations(rounds),
        &salt,
        password.as_bytes(),
        &hash,
    )
    .is_ok()
}

impl Shop {
    /// Hashes a buyer's lookup password on a blocking thread, with a fresh salt.
    pub(crate) async fn hash_lookup_password(&self, password: String) -> Result<String, ShopError> {
        check_password(&password)?;
        let salt = self.0.entropy.random_u128();
        metrics::counter!("panshi_lookup_password_hashes_total").increment(1);
        tokio::task::spawn_blocking(move || hash_password(&password, salt))
            .await
            .map_err(|_| ShopError::Unavailable("password hashing"))
    }

    /// The orders of `contact` whose lookup password is `password`, newest first (at most
    /// `LOOKUP_ORDERS_CHECKED_MAX` are examined). Orders without a lookup password, and
    /// orders of the same contact with another password, are never listed.
    pub async fn find_orders_by_contact(
        &self,
        contact: &str,
        password: &str,
    ) -> Result<Vec<Arc<OrderRecord>>, ShopError> {
        if contact.trim().is_empty() || check_password(password).is_err() {
            return Ok(Vec::new());
        }
        let candidates: Vec<(OrderRecord, String)> = {
            let state = self.store().state();
            state
                .lookup_candidates(contact)
                .iter()
                .rev()
                .take(LOOKUP_ORDERS_CHECKED_MAX)
                .filter_map(|index| {
                    let hash = state.order_terms(*index)?.lookup_password_hash.clone()?;
                    Some((state.order_at(*index)?.into_owned(), hash))
                })
                .collect()
        };
        let password = password.to_owned();
        let verified = tokio::task::spawn_blocking(move || {
            candidates
                .into_iter()
                .filter(|(_, hash)| verify_password(&password, hash))
                .map(|(record, _)| record)
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|_| ShopError::Unavailable("password hashing"))?;
        // The state may run ahead of durability: answer only with what is durable.
        let mut durable = Vec::with_capacity(verified.len());
        for record in verified {
            if let Some(record) = self.store().order(&record.created.order_id)? {
                durable.push(record);
            }
        }
        Ok(durable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_against_its_own_hash_only() {
        let stored = hash_password("open sesame", 42);
        assert!(stored.starts_with("pbkdf2-sha256$100000$"));
        assert!(verify_password("open sesame", &stored));
        assert!(!verify_password("open sesamE", &stored));
        assert_ne!(stored, hash_password("open sesame", 43), "salted");
        assert!(!verify_password("open sesame", "pbkdf2-sha256$0$00$00"));
        assert!(!verify_password("open sesame", "plain"));
    }
}
