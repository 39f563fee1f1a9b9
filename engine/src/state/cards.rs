//! The cards in memory, by id: every card but those a snapshot archived with their orders.
//!
//! Cards sit in chunks of `CARDS_PER_CHUNK` that never grow past it: in a `Vec`, the push
//! that finds it full copies every card into one twice as large, hundreds of megabytes at
//! millions of keys, under the state's write lock while every checkout waits. Here a push
//! allocates at most one new chunk, and only the list of chunks is ever copied.
//!
//! A card is archived once the order that bought it is: its order is delivered, so the card
//! is sold for good, and nothing changes it again (a refund needs an order that holds no
//! keys, a deletion an available key, sealing a clear one). Archived cards live in the cold
//! tables with their orders (`ColdOrders::card`); the slots they leave free the chunk that
//! held them once every card of that chunk is archived. Keys sell oldest first, so chunks
//! empty in id order; a chunk with one card still in memory stays whole.
//!
//! Encoded (`StateEncoding::HotCards`) as the ids issued, then each card in memory with its
//! index. Earlier encodings held every card in order, as a `Vec` does.

use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};

use super::{CardSlot, StateEncoding};

/// Cards per chunk: a power of two, so an index splits with a shift and a mask.
pub const CARDS_PER_CHUNK: usize = 4_096;
const _: () = assert!(CARDS_PER_CHUNK.is_power_of_two());

#[derive(Default)]
pub(super) struct CardTable {
    /// `None`: every card of the chunk is archived.
    chunks: Vec<Option<Chunk>>,
    /// Cards ever imported: the next card's index.
    len: usize,
    /// Cards in memory.
    hot: usize,
}

struct Chunk {
    slots: Vec<Option<CardSlot>>,
    /// Slots that hold a card.
    held: usize,
}

impl CardTable {
    /// Cards ever imported, archived ones included.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Cards in memory.
    pub(super) fn hot_len(&self) -> usize {
        self.hot
    }

    pub(super) fn push(&mut self, slot: CardSlot) {
        let chunk = self.next_chunk();
        chunk.slots.push(Some(slot));
        chunk.held += 1;
        self.len += 1;
        self.hot += 1;
    }

    /// The chunk the next index falls in, opened when the last one is full (only full
    /// chunks are ever freed).
    fn next_chunk(&mut self) -> &mut Chunk {
        if self.len.is_multiple_of(CARDS_PER_CHUNK) {
            self.chunks.push(Some(Chunk {
                slots: Vec::with_capacity(CARDS_PER_CHUNK),
                held: 0,
            }));
        }
        let last = self.chunks.last_mut().and_then(Option::as_mut);
        last.expect("the last chunk is open")
    }

    /// The card at `index`, if it is in memory.
    pub(super) fn get(&self, index: usize) -> Option<&CardSlot> {
        let chunk = self.chunks.get(index / CARDS_PER_CHUNK)?.as_ref()?;
        chunk.slots.get(index % CARDS_PER_CHUNK)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, index: usize) -> Option<&mut CardSlot> {
        let chunk = self.chunks.get_mut(index / CARDS_PER_CHUNK)?.as_mut()?;
        chunk.slots.get_mut(index % CARDS_PER_CHUNK)?.as_mut()
    }

    /// Drops the card at `index` from memory (archived); a full chunk left empty goes.
    pub(super) fn remove(&mut self, index: usize) -> Option<CardSlot> {
        let at = index / CARDS_PER_CHUNK;
        let chunk = self.chunks.get_mut(at)?.as_mut()?;
        let slot = chunk.slots.get_mut(index % CARDS_PER_CHUNK)?.take()?;
        chunk.held -= 1;
        self.hot -= 1;
        let full = chunk.slots.len() == CARDS_PER_CHUNK;
        if chunk.held == 0 && full {
            self.chunks[at] = None;
        }
        Some(slot)
    }

    /// The cards in memory with their indexes, index rising.
    pub(super) fn iter(&self) -> impl Iterator<Item = (usize, &CardSlot)> {
        self.chunks
            .iter()
            .enumerate()
            .filter_map(|(at, chunk)| Some((at, chunk.as_ref()?)))
            .flat_map(|(at, chunk)| {
                chunk
                    .slots
                    .iter()
                    .enumerate()
                    .filter_map(move |(i, slot)| Some((at * CARDS_PER_CHUNK + i, slot.as_ref()?)))
            })
    }

    /// Places the card at `index` (at or above every index issued so far).
    fn place(&mut self, index: usize, slot: CardSlot) {
        self.extend_to(index);
        self.push(slot);
    }

    /// Issues ids up to `len` for archived cards: whole chunks of them take no memory.
    fn extend_to(&mut self, len: usize) {
        while self.len < len {
            if self.len.is_multiple_of(CARDS_PER_CHUNK) && len - self.len >= CARDS_PER_CHUNK {
                self.chunks.push(None);
                self.len += CARDS_PER_CHUNK;
            } else {
                self.next_chunk().slots.push(None);
                self.len += 1;
            }
        }
    }
}

impl Encode for CardTable {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        (self.len as u64).encode(encoder)?;
        (self.hot as u64).encode(encoder)?;
        for (index, slot) in self.iter() {
            (index as u64).encode(encoder)?;
            slot.encode(encoder)?;
        }
        Ok(())
    }
}

impl Decode<StateEncoding> for CardTable {
    fn decode<D: Decoder<Context = StateEncoding>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let mut cards = CardTable::default();
        match *decoder.context() {
            StateEncoding::AllOrders | StateEncoding::HotOrders => {
                let len = u64::decode(decoder)?;
                for _ in 0..len {
                    cards.push(CardSlot::decode(decoder)?);
                }
            }
            StateEncoding::HotCards => {
                let len = usize::try_from(u64::decode(decoder)?)
                    .map_err(|_| DecodeError::Other("card count beyond memory"))?;
                let hot = u64::decode(decoder)?;
                for _ in 0..hot {
                    let index = u64::decode(decoder)?;
                    let index = usize::try_from(index)
                        .ok()
                        .filter(|index| *index >= cards.len && *index < len)
                        .ok_or(DecodeError::Other("card indexes out of order"))?;
                    cards.place(index, CardSlot::decode(decoder)?);
                }
                cards.extend_to(len);
            }
        }
        Ok(cards)
    }
}

impl<'de> BorrowDecode<'de, StateEncoding> for CardTable {
    fn borrow_decode<D: BorrowDecoder<'de, Context = StateEncoding>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Self::decode(decoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{CardKey, Holder};

    fn slot(n: u32) -> CardSlot {
        CardSlot {
            sku_index: n,
            key: CardKey::Sealed(vec![n as u8]),
            holder: Holder::Available,
        }
    }

    fn round_trip(cards: &CardTable) -> CardTable {
        let config = bincode::config::standard();
        let bytes = bincode::encode_to_vec(cards, config).unwrap();
        let (decoded, read) =
            bincode::decode_from_slice_with_context(&bytes, config, StateEncoding::HotCards)
                .unwrap();
        assert_eq!(read, bytes.len());
        decoded
    }

    fn held(cards: &CardTable) -> Vec<(usize, u32)> {
        cards.iter().map(|(i, slot)| (i, slot.sku_index)).collect()
    }

    #[test]
    fn archived_cards_free_their_chunks_and_read_back_sparse() {
        let mut cards = CardTable::default();
        let total = CARDS_PER_CHUNK * 3 + 10;
        for n in 0..total {
            cards.push(slot(n as u32));
        }
        // The first chunk whole, the second but one card, and one card of the last.
        for index in (0..CARDS_PER_CHUNK * 2 - 1).chain([total - 3]) {
            assert_eq!(cards.remove(index).unwrap().sku_index, index as u32);
        }
        assert!(cards.remove(0).is_none(), "removed twice");
        assert!(cards.chunks[0].is_none(), "an archived chunk stays");
        assert!(cards.chunks[1].is_some());
        assert_eq!(cards.len(), total);
        assert_eq!(cards.hot_len(), total - (CARDS_PER_CHUNK * 2 - 1) - 1);
        assert!(cards.get(5).is_none());
        assert_eq!(
            cards.get(CARDS_PER_CHUNK * 2 - 1).unwrap().sku_index as usize,
            CARDS_PER_CHUNK * 2 - 1
        );
        let decoded = round_trip(&cards);
        assert_eq!(decoded.len(), total);
        assert_eq!(decoded.hot_len(), cards.hot_len());
        assert_eq!(held(&decoded), held(&cards));
        assert!(
            decoded.chunks[0].is_none(),
            "decoding allocates no archived chunk"
        );
        // It goes on growing where it was.
        let mut decoded = decoded;
        decoded.push(slot(99));
        assert_eq!(decoded.get(total).unwrap().sku_index, 99);
    }

    #[test]
    fn trailing_archived_cards_and_an_empty_table_read_back() {
        let mut cards = CardTable::default();
        for n in 0..CARDS_PER_CHUNK + 5 {
            cards.push(slot(n as u32));
        }
        for index in 3..CARDS_PER_CHUNK + 5 {
            cards.remove(index);
        }
        let decoded = round_trip(&cards);
        assert_eq!(decoded.len(), CARDS_PER_CHUNK + 5);
        assert_eq!(held(&decoded), vec![(0, 0), (1, 1), (2, 2)]);
        let empty = round_trip(&CardTable::default());
        assert_eq!((empty.len(), empty.hot_len()), (0, 0));
    }

    #[test]
    fn cards_out_of_order_are_refused() {
        let config = bincode::config::standard();
        // Two cards in memory, the second at an index below the first.
        let mut bytes = bincode::encode_to_vec((10_u64, 2_u64, 5_u64), config).unwrap();
        bytes.extend(bincode::encode_to_vec(slot(1), config).unwrap());
        bytes.extend(bincode::encode_to_vec(3_u64, config).unwrap());
        bytes.extend(bincode::encode_to_vec(slot(2), config).unwrap());
        let decoded: Result<(CardTable, usize), _> =
            bincode::decode_from_slice_with_context(&bytes, config, StateEncoding::HotCards);
        assert!(decoded.is_err());
    }
}
