//! `ShardedMap<K, V>`: a hash map that grows a small part at a time.
//!
//! A hash map that fills up moves every entry into a table twice as large, in one insert:
//! the order index of 1,835,008 orders took 238-270 ms for it, under the state's write
//! lock (see `state/cards.rs` for the same with the cards). Here the entries are spread
//! over `SHARDS` maps by a hash of the key, so each grows on its own and one growth moves
//! a `SHARDS`th of them. The shard's hash has fixed keys; each shard keeps std's randomly
//! keyed hasher, so keys chosen to collide crowd one shard at worst (a map as large as
//! an unsharded one), never one bucket.
//!
//! Encoded exactly as a `HashMap<K, V>` (the length, then each pair), so a snapshot written
//! with either reads with the other.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};

/// How many maps the entries are spread over: a power of two, picked by the hash's top bits.
pub const SHARDS: usize = 64;
const _: () = assert!(SHARDS.is_power_of_two());
const SHARD_BITS: u32 = SHARDS.trailing_zeros();

pub struct ShardedMap<K, V> {
    shards: Vec<HashMap<K, V>>,
    len: usize,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| HashMap::new()).collect(),
            len: 0,
        }
    }
}

impl<K, V> ShardedMap<K, V> {
    /// Every entry, shard by shard (no order to rely on, as in a `HashMap`).
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flatten()
    }
}

fn shard_of<Q: Hash + ?Sized>(key: &Q) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() >> (u64::BITS - SHARD_BITS)) as usize
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    /// Room for about `len` entries spread evenly (a decoded map fills without growing).
    pub fn with_capacity(len: usize) -> Self {
        let per_shard = len / SHARDS + len / SHARDS / 8;
        Self {
            shards: (0..SHARDS)
                .map(|_| HashMap::with_capacity(per_shard))
                .collect(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[shard_of(key)].get(key)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Inserts or replaces; the value replaced, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let replaced = self.shards[shard_of(&key)].insert(key, value);
        if replaced.is_none() {
            self.len += 1;
        }
        replaced
    }

    /// Removes `key`; its value, if it was there.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let removed = self.shards[shard_of(key)].remove(key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }
}

impl<K: Encode, V: Encode> Encode for ShardedMap<K, V> {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        (self.len as u64).encode(encoder)?;
        for (key, value) in self.iter() {
            key.encode(encoder)?;
            value.encode(encoder)?;
        }
        Ok(())
    }
}

/// The number of pairs, claimed against the decoder's limit as `HashMap` does.
fn decode_len<K, V, D: Decoder>(decoder: &mut D) -> Result<usize, DecodeError> {
    let len = u64::decode(decoder)?;
    let len = usize::try_from(len).map_err(|_| DecodeError::OutsideUsizeRange(len))?;
    decoder.claim_container_read::<(K, V)>(len)?;
    Ok(len)
}

impl<Context, K, V> Decode<Context> for ShardedMap<K, V>
where
    K: Decode<Context> + Hash + Eq,
    V: Decode<Context>,
{
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let len = decode_len::<K, V, D>(decoder)?;
        let mut map = ShardedMap::with_capacity(len);
        for _ in 0..len {
            decoder.unclaim_bytes_read(std::mem::size_of::<(K, V)>());
            let key = K::decode(decoder)?;
            let value = V::decode(decoder)?;
            map.insert(key, value);
        }
        Ok(map)
    }
}

/// The same decoding (nothing is borrowed); the derived `Decode` of a struct that holds a
/// `ShardedMap` asks for it.
impl<'de, Context, K, V> BorrowDecode<'de, Context> for ShardedMap<K, V>
where
    K: Decode<Context> + Hash + Eq,
    V: Decode<Context>,
{
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Self::decode(decoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> bincode::config::Configuration {
        bincode::config::standard()
    }

    #[test]
    fn gets_inserts_and_counts_across_shards() {
        let mut map = ShardedMap::default();
        for n in 0..1_000u32 {
            assert_eq!(map.insert(format!("key-{n}"), n), None);
        }
        assert_eq!(map.insert("key-7".to_owned(), 70), Some(7));
        assert_eq!(map.len(), 1_000);
        assert_eq!(map.get("key-7"), Some(&70));
        assert!(map.contains_key("key-999"));
        assert!(!map.contains_key("key-1000"));
        assert_eq!(map.iter().count(), 1_000);
        let used = map.shards.iter().filter(|s| !s.is_empty()).count();
        assert_eq!(used, SHARDS, "a thousand keys reach every shard");
    }

    /// No single growth moves more than about a `SHARDS`th of the entries.
    #[test]
    fn no_shard_holds_much_more_than_its_share() {
        let mut map = ShardedMap::default();
        for n in 0..(SHARDS as u32 * 1_000) {
            map.insert(n, ());
        }
        let largest = map.shards.iter().map(HashMap::len).max().unwrap();
        assert!(largest < 1_200, "largest shard {largest} of {}", map.len());
    }

    #[test]
    fn encodes_as_a_hash_map_does() {
        let plain: HashMap<String, u32> = (0..500).map(|n| (format!("k{n}"), n)).collect();
        let mut sharded = ShardedMap::default();
        for (key, value) in &plain {
            sharded.insert(key.clone(), *value);
        }
        let from_plain = bincode::encode_to_vec(&plain, config()).unwrap();
        let from_sharded = bincode::encode_to_vec(&sharded, config()).unwrap();
        assert_eq!(from_plain.len(), from_sharded.len());
        let (decoded, _): (ShardedMap<String, u32>, usize) =
            bincode::decode_from_slice(&from_plain, config()).unwrap();
        assert_eq!(decoded.len(), plain.len());
        assert!(plain.iter().all(|(k, v)| decoded.get(k) == Some(v)));
        let (decoded, _): (HashMap<String, u32>, usize) =
            bincode::decode_from_slice(&from_sharded, config()).unwrap();
        assert_eq!(decoded, plain);
    }
}
