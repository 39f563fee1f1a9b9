//! Snapshots: the whole `ShopState` as of one log index, in one file, so that the log before
//! it can be purged and a restart or a new replica starts from it instead of from the first
//! event.
//!
//! File `snapshot/{index:020}-{term:020}.snap`:
//! `MAGIC | SNAPSHOT_FORMAT: u8 | meta_len: u32 | meta | last_index: u64 | last_term: u64 |
//! bincode(Chains) | bincode(cold: Vec<String>) | bincode(ShopState) | crc32: u32`
//! (little-endian; the CRC covers everything before it). `cold` names the tables of
//! archived orders (`cold.rs`, in `cold/` beside `snapshot/`), newest first; the state holds
//! the orders and cards in memory. Format 2 (before cards were archived) holds every card
//! and each product's keys without their cards; format 1 (before archiving) has no `cold`
//! and holds every order. Both are read, never written.
//! `meta` is opaque here (the replication layer's snapshot metadata: membership and log id).
//! A snapshot is written to a temporary file, fsync'd, renamed and the directory fsync'd,
//! so a crash leaves either the old snapshot or the new one. Reading checks the CRC in a
//! first pass before decoding anything, then `ShopState::check` on the decoded state.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use engine::state::{ShopState, StateEncoding};

use crate::cold::ColdArchive;
use crate::entry::Chains;

use crate::Error;

pub const MAGIC: &[u8; 8] = b"PANSHISN";
/// Free space a running node's snapshot never writes into: the log and sled go on writing
/// while it is written, and a snapshot that filled the disk to the last byte (its part is
/// removed only when it fails) would fail their writes, which stop the node.
pub const SNAPSHOT_HEADROOM_BYTES: u64 = 64 * 1024 * 1024;
/// How often a snapshot being written looks at the free space.
const HEADROOM_CHECK_EVERY_BYTES: u64 = 1024 * 1024;
pub const SNAPSHOT_FORMAT: u8 = 3;
/// Snapshots written before cards were archived: read, never written.
const SNAPSHOT_FORMAT_HOT_ORDERS: u8 = 2;
/// Snapshots written before orders were archived: read, never written.
const SNAPSHOT_FORMAT_ALL_ORDERS: u8 = 1;
/// Largest `meta` section: membership of a few nodes is far smaller.
pub const SNAPSHOT_META_BYTES_MAX: usize = 1024 * 1024;
const IO_BUFFER_BYTES: usize = 1 << 20;

/// What a snapshot covers: the log through `last_index` (of `last_term`), and the
/// replication layer's own description of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub meta: Vec<u8>,
    pub last_index: u64,
    pub last_term: u64,
    /// The last admitted batch (part of the replicated state).
    pub chains: Chains,
    /// The cold tables of archived orders, newest first.
    pub cold: Vec<String>,
}

pub fn snapshot_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshot")
}

fn file_name(last_index: u64, last_term: u64) -> String {
    format!("{last_index:020}-{last_term:020}.snap")
}

/// Feeds everything written through it into a CRC.
struct CrcWriter<W: Write> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Refuses to write once the file system holding the snapshot has less than `headroom`
/// bytes free: looked at before the first write and every `HEADROOM_CHECK_EVERY_BYTES`
/// (never, with a headroom of 0).
struct Headroom<W: Write> {
    inner: W,
    dir: PathBuf,
    headroom: u64,
    unchecked: u64,
}

impl Headroom<File> {
    fn new(file: File, dir: &Path, headroom: u64) -> Self {
        Headroom {
            inner: file,
            dir: dir.to_owned(),
            headroom,
            unchecked: HEADROOM_CHECK_EVERY_BYTES,
        }
    }
}

impl<W: Write> Headroom<W> {
    fn check(&mut self) -> std::io::Result<()> {
        self.unchecked = 0;
        let free = crate::disk::free_bytes(&self.dir)?;
        if free < self.headroom {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "No space left on device for a snapshot: {free} bytes free, {} kept for the log and sled",
                    self.headroom
                ),
            ));
        }
        Ok(())
    }
}

impl<W: Write> Write for Headroom<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.headroom > 0 && self.unchecked >= HEADROOM_CHECK_EVERY_BYTES {
            self.check()?;
        }
        let written = self.inner.write(bytes)?;
        self.unchecked += written as u64;
        Ok(written)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Writes `state` as the snapshot through `header.last_index` into `dir` (atomically), and
/// removes older snapshots. Returns the new file. With `headroom_bytes` (a running node's
/// `SNAPSHOT_HEADROOM_BYTES`; 0 where nothing else writes), it fails with `StorageFull`
/// rather than leave less than that free.
pub fn write(
    dir: &Path,
    header: &SnapshotHeader,
    state: &ShopState,
    headroom_bytes: u64,
) -> Result<PathBuf, Error> {
    crate::private::create_dir(dir)?;
    let name = file_name(header.last_index, header.last_term);
    let temporary = dir.join(format!("{name}.tmp"));
    let written = crate::private::create_file(&temporary)
        .map_err(Error::from)
        .and_then(|file| write_to(Headroom::new(file, dir, headroom_bytes), header, state));
    if let Err(error) = written {
        // A full disk must not keep the part that filled it.
        let _ = fs::remove_file(&temporary);
        return Err(error);
    }
    let path = dir.join(&name);
    fs::rename(&temporary, &path)?;
    File::open(dir)?.sync_all()?;
    remove_older(dir, &path)?;
    Ok(path)
}

/// Writes a snapshot into `file` and syncs it.
fn write_to(file: Headroom<File>, header: &SnapshotHeader, state: &ShopState) -> Result<(), Error> {
    if header.meta.len() > SNAPSHOT_META_BYTES_MAX {
        return Err(Error::RecordTooLarge(header.meta.len()));
    }
    let mut out = CrcWriter {
        inner: BufWriter::with_capacity(IO_BUFFER_BYTES, file),
        hasher: crc32fast::Hasher::new(),
    };
    out.write_all(MAGIC)?;
    out.write_all(&[SNAPSHOT_FORMAT])?;
    out.write_all(&(header.meta.len() as u32).to_le_bytes())?;
    out.write_all(&header.meta)?;
    out.write_all(&header.last_index.to_le_bytes())?;
    out.write_all(&header.last_term.to_le_bytes())?;
    bincode::encode_into_std_write(header.chains, &mut out, config()).map_err(encode_error)?;
    bincode::encode_into_std_write(&header.cold, &mut out, config()).map_err(encode_error)?;
    bincode::encode_into_std_write(state, &mut out, config()).map_err(encode_error)?;
    let crc = out.hasher.clone().finalize();
    let mut inner = out.inner;
    inner.write_all(&crc.to_le_bytes())?;
    let file = inner.into_inner().map_err(|e| Error::Io(e.into_error()))?;
    file.inner.sync_all()?;
    Ok(())
}

/// The write's own error (a full disk stays `StorageFull`, and reads as one), not bincode's
/// wrapper of it.
fn encode_error(error: bincode::error::EncodeError) -> Error {
    match error {
        bincode::error::EncodeError::Io { inner, .. } => Error::Io(inner),
        other => Error::Io(std::io::Error::other(other.to_string())),
    }
}

/// Removes every snapshot but `keep`, and parts of unfinished ones.
fn remove_older(dir: &Path, keep: &Path) -> Result<(), Error> {
    let old = |e: &std::ffi::OsStr| e == "snap" || e == "tmp";
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path != keep && path.extension().is_some_and(old) {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// The newest snapshot file in `dir`, if any.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>, Error> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut newest: Option<PathBuf> = None;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "snap")
            && newest.as_ref().is_none_or(|n| path > *n)
        {
            newest = Some(path);
        }
    }
    Ok(newest)
}

/// Checks a snapshot file's CRC (reading it once) and returns its header.
pub fn verify(path: &Path) -> Result<SnapshotHeader, Error> {
    let length = fs::metadata(path)?.len();
    if length < (MAGIC.len() + 1 + 4 + 16 + 4) as u64 {
        return Err(corrupt(path, "too short"));
    }
    let mut reader = BufReader::with_capacity(IO_BUFFER_BYTES, File::open(path)?);
    let mut hasher = crc32fast::Hasher::new();
    let mut remaining = length - 4;
    let mut buffer = vec![0u8; IO_BUFFER_BYTES];
    while remaining > 0 {
        let want = remaining.min(buffer.len() as u64) as usize;
        reader.read_exact(&mut buffer[..want])?;
        hasher.update(&buffer[..want]);
        remaining -= want as u64;
    }
    let mut stored = [0u8; 4];
    reader.read_exact(&mut stored)?;
    if hasher.finalize().to_le_bytes() != stored {
        return Err(corrupt(path, "checksum mismatch"));
    }
    let mut reader = BufReader::new(File::open(path)?);
    read_header(&mut reader, path)
}

fn corrupt(path: &Path, what: &str) -> Error {
    Error::Corrupt(format!("snapshot {}: {what}", path.display()))
}

fn read_header(reader: &mut impl Read, path: &Path) -> Result<SnapshotHeader, Error> {
    read_header_and_format(reader, path).map(|(header, _)| header)
}

fn read_header_and_format(
    reader: &mut impl Read,
    path: &Path,
) -> Result<(SnapshotHeader, u8), Error> {
    let mut magic = [0u8; 9];
    reader.read_exact(&mut magic)?;
    if &magic[..8] != MAGIC {
        return Err(corrupt(path, "not a snapshot"));
    }
    let format = magic[8];
    if ![
        SNAPSHOT_FORMAT,
        SNAPSHOT_FORMAT_HOT_ORDERS,
        SNAPSHOT_FORMAT_ALL_ORDERS,
    ]
    .contains(&format)
    {
        return Err(corrupt(path, &format!("unknown format {format}")));
    }
    let mut word = [0u8; 4];
    reader.read_exact(&mut word)?;
    let meta_len = u32::from_le_bytes(word) as usize;
    if meta_len > SNAPSHOT_META_BYTES_MAX {
        return Err(corrupt(path, "oversized metadata"));
    }
    let mut meta = vec![0u8; meta_len];
    reader.read_exact(&mut meta)?;
    let mut long = [0u8; 8];
    reader.read_exact(&mut long)?;
    let last_index = u64::from_le_bytes(long);
    reader.read_exact(&mut long)?;
    let last_term = u64::from_le_bytes(long);
    let chains = bincode::decode_from_std_read(reader, config())
        .map_err(|e| corrupt(path, &format!("undecodable chains: {e}")))?;
    let cold: Vec<String> = match format {
        SNAPSHOT_FORMAT_ALL_ORDERS => Vec::new(),
        _ => bincode::decode_from_std_read(reader, config())
            .map_err(|e| corrupt(path, &format!("undecodable table names: {e}")))?,
    };
    if let Some(name) = cold.iter().find(|name| !crate::cold::is_table_name(name)) {
        return Err(corrupt(path, &format!("names a table {name:?}")));
    }
    let header = SnapshotHeader {
        meta,
        last_index,
        last_term,
        chains,
        cold,
    };
    Ok((header, format))
}

/// A snapshot as read: its header, its state (reading archived orders from `archive`).
pub struct Loaded {
    pub header: SnapshotHeader,
    pub state: ShopState,
    pub archive: Arc<ColdArchive>,
}

/// Reads a snapshot whole: checks the CRC, opens the cold tables it names (in `cold/`
/// beside the snapshot's directory), decodes the state and checks its invariants as far as
/// they are in memory (`ShopState::check_in_memory`: `panshi audit`, a backup's check and a
/// restore check the archived orders too).
pub fn read(path: &Path) -> Result<Loaded, Error> {
    verify(path)?;
    let mut reader = BufReader::with_capacity(IO_BUFFER_BYTES, File::open(path)?);
    let (header, format) = read_header_and_format(&mut reader, path)?;
    let encoding = match format {
        SNAPSHOT_FORMAT_ALL_ORDERS => StateEncoding::AllOrders,
        SNAPSHOT_FORMAT_HOT_ORDERS => StateEncoding::HotOrders,
        _ => StateEncoding::HotCards,
    };
    let mut state: ShopState =
        bincode::decode_from_std_read_with_context(&mut reader, config(), encoding)
            .map_err(|e| corrupt(path, &format!("undecodable state: {e}")))?;
    let archive = match header.cold.is_empty() {
        true => Arc::new(ColdArchive::empty()),
        false => {
            let data_dir = path
                .parent()
                .and_then(Path::parent)
                .unwrap_or(Path::new("."));
            let cold_dir = crate::cold::cold_dir(data_dir);
            let archive = Arc::new(ColdArchive::open(&cold_dir, &header.cold)?);
            state.set_cold(archive.clone());
            archive
        }
    };
    if let Some(violation) = state.check_in_memory().into_iter().next() {
        return Err(corrupt(
            path,
            &format!("state breaks an invariant: {violation}"),
        ));
    }
    Ok(Loaded {
        header,
        state,
        archive,
    })
}
