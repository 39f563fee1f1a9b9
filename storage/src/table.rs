//! Cold tables: immutable files of values sorted by key, for what leaves memory (settled
//! orders, archived by `cold.rs`).
//!
//! File: `block* | index | filter | footer`, little-endian.
//! - Block: `len: u32 | crc32: u32 | entry*`, the CRC over the entries. Entry:
//!   `key_len: u16 | value_len: u32 | key | value`. Keys rise strictly across the file; a
//!   block closes once it holds `BLOCK_BYTES` (an entry larger than that makes a large
//!   block).
//! - Index: per block, `key_len: u16 | first key | offset: u64 | len: u32`.
//! - Filter: a Bloom filter over every key, `FILTER_HASHES` probes into
//!   `FILTER_BITS_PER_KEY` bits a key (about 1% false positives), as `u64` words.
//! - Footer (`FOOTER_BYTES`): `index_offset: u64 | index_len: u32 | filter_len: u32 |
//!   entries: u64 | crc32: u32 | magic: u32`, the CRC over the index, the filter and the
//!   footer's fields before it.
//!
//! A table is written under a temporary name, fsync'd, renamed into place and its directory
//! fsync'd, so a table that exists is whole. Open reads and checks the footer, the index and
//! the filter (what a table keeps in memory: a key and 16 bytes a block, 1.25 bytes a key);
//! each block's CRC is checked when the block is read.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::Error;

/// A block closes once its entries reach this size. Larger blocks keep less in memory (a
/// key and 16 bytes a block: about 2 bytes a 700-byte order at 16 KiB) and read more per
/// lookup; cold orders are read seldom.
pub const BLOCK_BYTES: usize = 16 * 1024;
/// Block header: length, CRC.
pub const BLOCK_HEADER_BYTES: usize = 8;
/// Entry header: key length, value length.
pub const ENTRY_HEADER_BYTES: usize = 6;
/// Longest key.
pub const KEY_BYTES_MAX: usize = u16::MAX as usize;
/// Largest value (a settled order with its keys is under a few KiB).
pub const VALUE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Footer: index offset and length, filter length, entries, CRC, magic.
pub const FOOTER_BYTES: usize = 32;
/// The footer's fields that its CRC covers (all before the CRC).
const FOOTER_CHECKED_BYTES: usize = 24;
pub const FILTER_BITS_PER_KEY: u64 = 10;
pub const FILTER_HASHES: u64 = 7;
const MAGIC: u32 = u32::from_le_bytes(*b"PSCT");
const _: () = assert!(VALUE_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(FOOTER_CHECKED_BYTES + 8 == FOOTER_BYTES);
const _: () = assert!(BLOCK_HEADER_BYTES + ENTRY_HEADER_BYTES < BLOCK_BYTES);

/// Writes one table: `add` in strictly rising key order, then `finish`.
pub struct TableWriter {
    path: PathBuf,
    temporary: PathBuf,
    out: BufWriter<File>,
    written: u64,
    block: Vec<u8>,
    block_first_key: Option<Vec<u8>>,
    last_key: Option<Vec<u8>>,
    index: Vec<u8>,
    key_hashes: Vec<u64>,
}

impl TableWriter {
    /// Begins the table that `finish` puts at `path` (which must not exist yet).
    pub fn create(path: &Path) -> Result<Self, Error> {
        let temporary = path.with_extension("tmp");
        let file = crate::private::create_file(&temporary)?;
        Ok(Self {
            path: path.to_owned(),
            temporary,
            out: BufWriter::new(file),
            written: 0,
            block: Vec::with_capacity(BLOCK_BYTES),
            block_first_key: None,
            last_key: None,
            index: Vec::new(),
            key_hashes: Vec::new(),
        })
    }

    pub fn add(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        if key.len() > KEY_BYTES_MAX || value.len() > VALUE_BYTES_MAX {
            return Err(Error::RecordTooLarge(key.len() + value.len()));
        }
        if self.last_key.as_deref().is_some_and(|last| last >= key) {
            return Err(Error::Corrupt("table keys must rise strictly".into()));
        }
        self.block
            .extend_from_slice(&(key.len() as u16).to_le_bytes());
        self.block
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.block.extend_from_slice(key);
        self.block.extend_from_slice(value);
        self.block_first_key.get_or_insert_with(|| key.to_vec());
        self.last_key = Some(key.to_vec());
        self.key_hashes.push(key_hash(key));
        if self.block.len() >= BLOCK_BYTES {
            self.close_block()?;
        }
        Ok(())
    }

    fn close_block(&mut self) -> Result<(), Error> {
        let Some(first_key) = self.block_first_key.take() else {
            return Ok(());
        };
        let len = self.block.len() as u32;
        self.index
            .extend_from_slice(&(first_key.len() as u16).to_le_bytes());
        self.index.extend_from_slice(&first_key);
        self.index.extend_from_slice(&self.written.to_le_bytes());
        self.index.extend_from_slice(&len.to_le_bytes());
        self.out.write_all(&len.to_le_bytes())?;
        self.out
            .write_all(&crc32fast::hash(&self.block).to_le_bytes())?;
        self.out.write_all(&self.block)?;
        self.written += (BLOCK_HEADER_BYTES + self.block.len()) as u64;
        self.block.clear();
        Ok(())
    }

    /// Writes the index, the filter and the footer, makes the table durable and puts it in
    /// place.
    pub fn finish(mut self) -> Result<PathBuf, Error> {
        self.close_block()?;
        let filter = Filter::of(&self.key_hashes).to_bytes();
        let mut footer = Vec::with_capacity(FOOTER_BYTES);
        footer.extend_from_slice(&self.written.to_le_bytes());
        footer.extend_from_slice(&(self.index.len() as u32).to_le_bytes());
        footer.extend_from_slice(&(filter.len() as u32).to_le_bytes());
        footer.extend_from_slice(&(self.key_hashes.len() as u64).to_le_bytes());
        let mut checked = crc32fast::Hasher::new();
        checked.update(&self.index);
        checked.update(&filter);
        checked.update(&footer);
        footer.extend_from_slice(&checked.finalize().to_le_bytes());
        footer.extend_from_slice(&MAGIC.to_le_bytes());
        debug_assert_eq!(footer.len(), FOOTER_BYTES);
        self.out.write_all(&self.index)?;
        self.out.write_all(&filter)?;
        self.out.write_all(&footer)?;
        let file = self.out.into_inner().map_err(|error| error.into_error())?;
        file.sync_all()?;
        fs::rename(&self.temporary, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(self.path)
    }
}

/// An open table: its index and filter in memory, its blocks read on demand.
pub struct Table {
    file: File,
    /// Per block: where its first key ends in `first_keys`, its offset and its length.
    blocks: Vec<BlockRef>,
    /// Every block's first key, one after another (one allocation, not one a block).
    first_keys: Vec<u8>,
    filter: Filter,
    entries: u64,
}

impl Table {
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        let corrupt = |what: &str| Error::Corrupt(format!("table {}: {what}", path.display()));
        if size < FOOTER_BYTES as u64 {
            return Err(corrupt("shorter than its footer"));
        }
        let mut footer = [0; FOOTER_BYTES];
        file.read_exact_at(&mut footer, size - FOOTER_BYTES as u64)?;
        let mut fields = Fields(&footer);
        let index_offset = fields.u64();
        let index_len = u64::from(fields.u32());
        let filter_len = u64::from(fields.u32());
        let entries = fields.u64();
        let crc = fields.u32();
        if fields.u32() != MAGIC {
            return Err(corrupt("no table magic"));
        }
        let tables_end = [index_len, filter_len, FOOTER_BYTES as u64]
            .into_iter()
            .try_fold(index_offset, u64::checked_add);
        if tables_end != Some(size) {
            return Err(corrupt("its footer does not match its size"));
        }
        let mut tail = vec![0; (index_len + filter_len) as usize];
        file.read_exact_at(&mut tail, index_offset)?;
        let mut checked = crc32fast::Hasher::new();
        checked.update(&tail);
        checked.update(&footer[..FOOTER_CHECKED_BYTES]);
        if checked.finalize() != crc {
            return Err(corrupt("index, filter or footer fails its CRC"));
        }
        let (index, filter) = tail.split_at(index_len as usize);
        let mut blocks = Vec::new();
        let mut first_keys = Vec::new();
        let mut fields = Fields(index);
        while !fields.0.is_empty() {
            // A key's length, the key, then 12 bytes: else the index is cut short (checked
            // before reading, so that a short field is never read as zeros).
            let key_len = usize::from(fields.u16());
            if fields.0.len() < key_len + 12 {
                return Err(corrupt("index cut short"));
            }
            let key = fields.take(key_len).expect("length checked");
            first_keys.extend_from_slice(key);
            let offset = fields.u64();
            let len = fields.u32();
            let end = offset.checked_add(BLOCK_HEADER_BYTES as u64 + u64::from(len));
            if end.is_none_or(|end| end > index_offset) {
                return Err(corrupt("a block past the index"));
            }
            blocks.push(BlockRef {
                offset,
                len,
                key_end: first_keys.len() as u32,
            });
        }
        let filter = Filter::from_bytes(filter).ok_or_else(|| corrupt("bad filter"))?;
        Ok(Self {
            file,
            blocks,
            first_keys,
            filter,
            entries,
        })
    }

    /// How many entries the table holds.
    pub fn len(&self) -> u64 {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The value of `key`, if the table holds it.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        if !self.filter.may_hold(key_hash(key)) {
            return Ok(None);
        }
        let Some(block) = self.block_holding(key) else {
            return Ok(None);
        };
        let entries = self.block(block)?;
        for entry in Entries(&entries) {
            let (found, value) = entry?;
            if found == key {
                return Ok(Some(value.to_vec()));
            }
        }
        Ok(None)
    }

    /// The block that holds `key` if any block does: the last whose first key is at or
    /// below it (keys rise strictly across blocks).
    fn block_holding(&self, key: &[u8]) -> Option<usize> {
        let (mut after, mut high) = (0, self.blocks.len());
        while after < high {
            let middle = after + (high - after) / 2;
            if self.first_key(middle) <= key {
                after = middle + 1;
            } else {
                high = middle;
            }
        }
        after.checked_sub(1)
    }

    /// The entries from the first key at or above `from` (every entry from `&[]`), in key
    /// order, a block read at a time (to merge tables without holding one whole). A block
    /// its CRC refuses ends the walk with that error.
    pub fn cursor(&self, from: &[u8]) -> Cursor<'_> {
        Cursor {
            table: self,
            next_block: self.block_holding(from).unwrap_or(0),
            entries: Vec::new(),
            at: 0,
            from: from.to_vec(),
        }
    }

    /// Block `block`'s entries, checked against its CRC.
    fn block(&self, block: usize) -> Result<Vec<u8>, Error> {
        let BlockRef { offset, len, .. } = self.blocks[block];
        let mut bytes = vec![0; BLOCK_HEADER_BYTES + len as usize];
        self.file.read_exact_at(&mut bytes, offset)?;
        let mut header = Fields(&bytes);
        let (stored_len, crc) = (header.u32(), header.u32());
        let entries = bytes.split_off(BLOCK_HEADER_BYTES);
        if stored_len != len || crc32fast::hash(&entries) != crc {
            return Err(Error::Corrupt(format!(
                "table block at {offset} fails its CRC"
            )));
        }
        Ok(entries)
    }
}

/// Entries of a table in key order from a key on (`Table::cursor`).
pub struct Cursor<'a> {
    table: &'a Table,
    next_block: usize,
    /// The block being read, and where its next entry begins.
    entries: Vec<u8>,
    at: usize,
    /// Entries below this key are skipped (only in the first block read).
    from: Vec<u8>,
}

impl Iterator for Cursor<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.at >= self.entries.len() {
                if self.next_block >= self.table.blocks.len() {
                    return None;
                }
                match self.table.block(self.next_block) {
                    Ok(entries) => (self.entries, self.at) = (entries, 0),
                    Err(error) => {
                        self.next_block = self.table.blocks.len();
                        return Some(Err(error));
                    }
                }
                self.next_block += 1;
                continue;
            }
            let mut rest = Entries(&self.entries[self.at..]);
            let entry = match rest.next()? {
                Ok((key, value)) => (key.to_vec(), value.to_vec()),
                Err(error) => {
                    (self.next_block, self.at) = (self.table.blocks.len(), self.entries.len());
                    return Some(Err(error));
                }
            };
            self.at = self.entries.len() - rest.0.len();
            if entry.0 < self.from {
                continue;
            }
            return Some(Ok(entry));
        }
    }
}

/// A block as the index names it.
struct BlockRef {
    offset: u64,
    len: u32,
    key_end: u32,
}
const _: () = assert!(std::mem::size_of::<BlockRef>() == 16);

impl Table {
    /// Block `block`'s first key: it begins where the one before it ends.
    fn first_key(&self, block: usize) -> &[u8] {
        let start = block
            .checked_sub(1)
            .map_or(0, |before| self.blocks[before].key_end as usize);
        &self.first_keys[start..self.blocks[block].key_end as usize]
    }
}

/// The entries of one block, as (key, value).
struct Entries<'a>(&'a [u8]);

impl<'a> Iterator for Entries<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let cut = || Error::Corrupt("a table entry is cut short".into());
        let mut fields = Fields(self.0);
        let Some(header) = fields.take(ENTRY_HEADER_BYTES) else {
            self.0 = &[];
            return Some(Err(cut()));
        };
        let mut header = Fields(header);
        let key_len = usize::from(header.u16());
        let value_len = header.u32() as usize;
        let (Some(key), Some(value)) = (fields.take(key_len), fields.take(value_len)) else {
            self.0 = &[];
            return Some(Err(cut()));
        };
        self.0 = fields.0;
        Some(Ok((key, value)))
    }
}

/// Little-endian fields read from the front of a slice (the callers check lengths first;
/// a short read yields zeros rather than a panic).
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(taken)
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        self.take(N)
            .and_then(|bytes| bytes.try_into().ok())
            .unwrap_or([0; N])
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

/// A Bloom filter over 64-bit key hashes (double hashing: probe `i` is `h1 + i * h2`).
struct Filter {
    words: Vec<u64>,
}

impl Filter {
    fn of(hashes: &[u64]) -> Self {
        let bits = (hashes.len() as u64 * FILTER_BITS_PER_KEY).max(64);
        let mut filter = Self {
            words: vec![0; bits.div_ceil(64) as usize],
        };
        for &hash in hashes {
            for bit in filter.probes(hash) {
                filter.words[(bit / 64) as usize] |= 1 << (bit % 64);
            }
        }
        filter
    }

    fn probes(&self, hash: u64) -> impl Iterator<Item = u64> {
        let bits = self.words.len() as u64 * 64;
        let (h1, h2) = (hash, hash.rotate_left(32) | 1);
        (0..FILTER_HASHES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % bits)
    }

    fn may_hold(&self, hash: u64) -> bool {
        self.probes(hash)
            .all(|bit| self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    fn to_bytes(&self) -> Vec<u8> {
        self.words
            .iter()
            .flat_map(|word| word.to_le_bytes())
            .collect()
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(8) {
            return None;
        }
        let words = bytes
            .chunks_exact(8)
            .map(|word| u64::from_le_bytes(word.try_into().expect("8 bytes")))
            .collect();
        Some(Self { words })
    }
}

/// A key's hash for the filter: FNV-1a, then MurmurHash3's finaliser to spread its bits.
/// Part of the file format: it must never change.
fn key_hash(key: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in key {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn write(dir: &Path, entries: &BTreeMap<Vec<u8>, Vec<u8>>) -> PathBuf {
        let mut writer = TableWriter::create(&dir.join("t.cold")).unwrap();
        for (key, value) in entries {
            writer.add(key, value).unwrap();
        }
        writer.finish().unwrap()
    }

    fn order_key(n: u64) -> Vec<u8> {
        format!("0000019{n:08x}{:016x}", n.wrapping_mul(0x9e37_79b9)).into_bytes()
    }

    proptest! {
        #[test]
        fn every_key_reads_back_and_no_other(
            entries in proptest::collection::btree_map(
                proptest::collection::vec(any::<u8>(), 0..40),
                proptest::collection::vec(any::<u8>(), 0..9_000),
                0..60,
            ),
            absent in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let table = Table::open(&write(dir.path(), &entries)).unwrap();
            prop_assert_eq!(table.len(), entries.len() as u64);
            for (key, value) in &entries {
                prop_assert_eq!(table.get(key).unwrap(), Some(value.clone()));
            }
            prop_assert_eq!(table.get(&absent).unwrap(), entries.get(&absent).cloned());
            let walked: BTreeMap<_, _> = table.cursor(&[]).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(&walked, &entries);
            let from: BTreeMap<_, _> = table.cursor(&absent).collect::<Result<_, _>>().unwrap();
            let want: BTreeMap<_, _> = entries
                .range(absent.clone()..)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            prop_assert_eq!(from, want);
        }
    }

    #[test]
    fn a_hundred_thousand_orders_cost_few_bytes_each_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let entries: BTreeMap<_, _> = (0..100_000).map(|n| (order_key(n), vec![7; 700])).collect();
        let table = Table::open(&write(dir.path(), &entries)).unwrap();
        // A block of 16 KiB holds 23 such orders: the index holds its first key and 16
        // bytes, the filter 1.25 bytes a key.
        let held = table.blocks.len() * std::mem::size_of::<BlockRef>()
            + table.first_keys.len()
            + table.filter.words.len() * 8;
        assert!(held < 100_000 * 4, "{held} bytes held for 100,000 orders");
        assert_eq!(table.get(&order_key(99_999)).unwrap(), Some(vec![7; 700]));
        // The filter answers most absent keys without reading a block: about 1% get through.
        let passed = (100_000..110_000)
            .filter(|&n| table.filter.may_hold(key_hash(&order_key(n))))
            .count();
        assert!(
            passed < 300,
            "{passed} of 10,000 absent keys passed the filter"
        );
    }

    /// A file whose CRCs hold but whose fields do not (as a bug or a collision could make):
    /// an index cut inside an entry, and offsets that overflow, are refused, never read.
    #[test]
    fn fields_that_pass_the_crc_are_still_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.cold");
        // `index_offset` bytes of blocks (zeros) when it is small, then the index.
        let file_of = |index_offset: u64, index: &[u8]| {
            let blocks = vec![
                0u8;
                if index_offset < 64 {
                    index_offset as usize
                } else {
                    0
                }
            ];
            let filter = [0u8; 8];
            let mut footer = Vec::new();
            footer.extend_from_slice(&index_offset.to_le_bytes());
            footer.extend_from_slice(&(index.len() as u32).to_le_bytes());
            footer.extend_from_slice(&(filter.len() as u32).to_le_bytes());
            footer.extend_from_slice(&0u64.to_le_bytes());
            let mut crc = crc32fast::Hasher::new();
            crc.update(index);
            crc.update(&filter);
            crc.update(&footer);
            footer.extend_from_slice(&crc.finalize().to_le_bytes());
            footer.extend_from_slice(&MAGIC.to_le_bytes());
            [&blocks[..], index, &filter[..], &footer].concat()
        };
        for (index_offset, index) in [
            (16, vec![5]),
            (16, vec![1, 0, b'k', 0, 0, 0]),
            (u64::MAX - 3, vec![]),
        ] {
            fs::write(&path, file_of(index_offset, &index)).unwrap();
            assert!(
                matches!(Table::open(&path), Err(Error::Corrupt(_))),
                "{index_offset} {index:?}"
            );
        }
        // The same shape with a whole (empty) index opens as an empty table.
        fs::write(&path, file_of(0, &[])).unwrap();
        assert!(Table::open(&path).unwrap().is_empty());
    }

    #[test]
    fn keys_out_of_order_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = TableWriter::create(&dir.path().join("t.cold")).unwrap();
        writer.add(b"b", b"1").unwrap();
        assert!(matches!(writer.add(b"b", b"2"), Err(Error::Corrupt(_))));
        assert!(matches!(writer.add(b"a", b"2"), Err(Error::Corrupt(_))));
    }

    #[test]
    fn an_unfinished_table_is_not_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.cold");
        let mut writer = TableWriter::create(&path).unwrap();
        writer.add(b"a", b"1").unwrap();
        drop(writer);
        assert!(!path.exists());
    }

    #[test]
    fn every_flipped_byte_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let entries: BTreeMap<_, _> = (0..40)
            .map(|n| (order_key(n), vec![n as u8; 300]))
            .collect();
        let path = write(dir.path(), &entries);
        let good = fs::read(&path).unwrap();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            fs::write(&path, &bad).unwrap();
            let read = Table::open(&path)
                .and_then(|table| table.cursor(&[]).collect::<Result<BTreeMap<_, _>, _>>());
            assert!(
                read.is_err(),
                "a flip at byte {at} of {} read as a table",
                good.len()
            );
        }
    }
}
