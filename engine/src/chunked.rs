//! `Chunked<T>`: a sequence that grows without moving what it holds.
//!
//! The state keeps every order and every card in index order. In a `Vec`, the push that
//! finds it full copies all of it into one twice as large: at a million orders that is
//! hundreds of megabytes copied (and both copies resident) while the state's write lock is
//! held, so every checkout waits. Here items live in chunks of `CHUNK_ITEMS` that never
//! grow past it; a push allocates at most one new chunk, and only the small list of chunks
//! is ever copied.
//!
//! Encoded exactly as a `Vec<T>` (the length, then each item), so a snapshot written with
//! either reads with the other.

use std::ops::{Index, IndexMut, Range};

use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};

/// Items per chunk: a power of two, so an index splits with a shift and a mask.
pub const CHUNK_ITEMS: usize = 4_096;
const _: () = assert!(CHUNK_ITEMS.is_power_of_two());

pub struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunked<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, item: T) {
        if self.len.is_multiple_of(CHUNK_ITEMS) {
            self.chunks.push(Vec::with_capacity(CHUNK_ITEMS));
        }
        let chunk = self.chunks.last_mut().expect("the last chunk has room");
        chunk.push(item);
        self.len += 1;
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        self.chunks
            .get(index / CHUNK_ITEMS)?
            .get(index % CHUNK_ITEMS)
    }

    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.chunks
            .get_mut(index / CHUNK_ITEMS)?
            .get_mut(index % CHUNK_ITEMS)
    }

    /// The items at `range` (which must lie within the length), in order.
    pub fn range(&self, range: Range<usize>) -> Iter<'_, T> {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "range {range:?} outside a length of {}",
            self.len
        );
        Iter { items: self, range }
    }

    pub fn iter(&self) -> Iter<'_, T> {
        self.range(0..self.len)
    }
}

impl<T> Index<usize> for Chunked<T> {
    type Output = T;

    fn index(&self, index: usize) -> &T {
        match self.get(index) {
            Some(item) => item,
            None => panic!("index {index} outside a length of {}", self.len),
        }
    }
}

impl<T> IndexMut<usize> for Chunked<T> {
    fn index_mut(&mut self, index: usize) -> &mut T {
        let len = self.len;
        match self.get_mut(index) {
            Some(item) => item,
            None => panic!("index {index} outside a length of {len}"),
        }
    }
}

/// Items of a `Chunked`, by index: either end, with an exact length.
pub struct Iter<'a, T> {
    items: &'a Chunked<T>,
    range: Range<usize>,
}

impl<'a, T> Iterator for Iter<'a, T> {
    type Item = &'a T;

    fn next(&mut self) -> Option<&'a T> {
        self.range.next().map(|index| &self.items[index])
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.range.size_hint()
    }
}

impl<T> DoubleEndedIterator for Iter<'_, T> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.range.next_back().map(|index| &self.items[index])
    }
}

impl<T> ExactSizeIterator for Iter<'_, T> {}

impl<'a, T> IntoIterator for &'a Chunked<T> {
    type Item = &'a T;
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<T> FromIterator<T> for Chunked<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut chunked = Chunked::default();
        for item in items {
            chunked.push(item);
        }
        chunked
    }
}

impl<T: Encode> Encode for Chunked<T> {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        (self.len as u64).encode(encoder)?;
        for item in self {
            item.encode(encoder)?;
        }
        Ok(())
    }
}

/// The length of an encoded sequence, claimed against the decoder's limit as `Vec` does.
fn decode_len<T, D: Decoder>(decoder: &mut D) -> Result<usize, DecodeError> {
    let len = u64::decode(decoder)?;
    let len = usize::try_from(len).map_err(|_| DecodeError::OutsideUsizeRange(len))?;
    decoder.claim_container_read::<T>(len)?;
    Ok(len)
}

impl<Context, T: Decode<Context>> Decode<Context> for Chunked<T> {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let len = decode_len::<T, D>(decoder)?;
        let mut chunked = Chunked::default();
        for _ in 0..len {
            decoder.unclaim_bytes_read(std::mem::size_of::<T>());
            chunked.push(T::decode(decoder)?);
        }
        Ok(chunked)
    }
}

/// The same decoding (nothing is borrowed); the derived `Decode` of a struct that holds a
/// `Chunked` asks for it.
impl<'de, Context, T: Decode<Context>> BorrowDecode<'de, Context> for Chunked<T> {
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
    fn indexes_iterates_and_ranges_across_chunks() {
        let count = CHUNK_ITEMS * 2 + 3;
        let mut items: Chunked<u64> = (0..count as u64).collect();
        assert_eq!(items.len(), count);
        assert_eq!(items[CHUNK_ITEMS], CHUNK_ITEMS as u64);
        items[CHUNK_ITEMS + 1] = 7;
        assert_eq!(items.get(CHUNK_ITEMS + 1), Some(&7));
        assert_eq!(items.get(count), None);
        assert_eq!(items.iter().len(), count);
        let tail: Vec<u64> = items.range(count - 4..count).rev().copied().collect();
        let want: Vec<u64> = (count as u64 - 4..count as u64).rev().collect();
        assert_eq!(tail, want);
        assert_eq!(items.iter().nth(CHUNK_ITEMS), Some(&(CHUNK_ITEMS as u64)));
    }

    /// A push never moves what is already held (a `Vec` moves everything when it grows).
    #[test]
    fn a_push_never_moves_earlier_items() {
        let mut items: Chunked<u64> = Chunked::default();
        items.push(1);
        let first: *const u64 = &items[0];
        for n in 0..(CHUNK_ITEMS as u64) * 3 {
            items.push(n);
        }
        assert!(std::ptr::eq(first, &items[0]));
    }

    #[test]
    fn encodes_as_a_vec_does() {
        let vec: Vec<String> = (0..CHUNK_ITEMS + 5).map(|n| format!("item-{n}")).collect();
        let chunked: Chunked<String> = vec.iter().cloned().collect();
        let from_vec = bincode::encode_to_vec(&vec, config()).unwrap();
        let from_chunked = bincode::encode_to_vec(&chunked, config()).unwrap();
        assert_eq!(from_vec, from_chunked);
        let (decoded, _): (Chunked<String>, usize) =
            bincode::decode_from_slice(&from_vec, config()).unwrap();
        assert!(decoded.iter().eq(vec.iter()));
        let (decoded, _): (Vec<String>, usize) =
            bincode::decode_from_slice(&from_chunked, config()).unwrap();
        assert_eq!(decoded, vec);
    }

    #[test]
    #[should_panic(expected = "outside a length of 3")]
    fn an_index_past_the_end_panics() {
        let items: Chunked<u8> = (0..3).collect();
        let _ = items[3];
    }
}
