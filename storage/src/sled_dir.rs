//! sled's directory (`state/` in the data dir): opened for the server, set aside when it
//! cannot be read, and copied for `audit`, which must never write to the dir it checks.
//!
//! sled is derived from the log, so an unreadable sled (a full disk during a restart left
//! `Read corrupted data`) is no reason to refuse to start: it is moved to `state.unreadable`
//! (replacing an older one), said so at WARN, and a fresh one is rebuilt from the log.
//!
//! Invariant: nothing here touches the log; an error that says nothing about sled's own
//! bytes (a full disk, a held lock, a refused permission) is returned, never "repaired".

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::log::Lsn;
use crate::rows::{Row, TreeName};
use crate::Error;

const APPLIED_LSN_KEY: &[u8] = b"applied_lsn";
/// The version of the rows' format in sled; a sled written in another is rebuilt whole
/// from the log at open. 2: card keys sealed, order tokens kept as digests only. 3:
/// `order_month` rows only for ids that do not name their creation month. 4: a card's row
/// no longer says which order bought it (the order's row does; a sale writes no card row),
/// and no `idempotency` tree.
pub(crate) const ROWS_FORMAT_KEY: &[u8] = b"rows_format";
pub const ROWS_FORMAT: u32 = 4;

/// Whether this build reads rows of `format` (none: a sled that never had rows written).
pub fn rows_readable(format: Option<u32>) -> bool {
    format == Some(ROWS_FORMAT)
}
/// Cache sled may use, in bytes.
pub const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// How often sled writes its buffers out. sled is a mirror (the log is the truth), so a
/// rare flush only costs catch-up work after a crash.
pub const SLED_FLUSH_EVERY_MS: u64 = 500;
/// Rows per sled batch when sled is rewritten whole (a snapshot installed or restored).
/// sled keeps every node version a batch replaces until the batch ends, and splitting
/// nodes under sequential keys makes many: a restore of a million orders (and their million
/// keys) peaked at 3.8-3.9 GB and took 33-34 s with batches of 16,384 rows, 3.5 GB with
/// 4,096, 1.60-1.65 GB and 19.5-22 s with 256 to 1,024 (docs/BENCHMARKS.md). One
/// batch of all the rows held 20 GB and took over a minute. Atomicity is not
/// needed: the trees, `meta` with them, are dropped first and `applied_lsn` is written
/// after the last slice, so a crash part-way leaves sled behind the log and the next start
/// rewrites it all.
pub(crate) const RESET_SLICE_ROWS: usize = 512;

pub fn sled_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("state")
}

/// How long `open_sled` waits for a previous user of the data dir to let go of sled's file
/// lock: sled releases it from a background thread shortly after its last handle drops.
pub const SLED_LOCK_WAIT_MS: u64 = 5_000;

pub fn open_sled(data_dir: &Path) -> Result<sled::Db, Error> {
    let config = sled::Config::new()
        .path(sled_dir(data_dir))
        .cache_capacity(SLED_CACHE_BYTES)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(Some(SLED_FLUSH_EVERY_MS));
    let started = Instant::now();
    loop {
        match config.open() {
            // sled reports a held lock as `Other` with this text (sled 0.34.7, config.rs).
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && started.elapsed().as_millis() < u128::from(SLED_LOCK_WAIT_MS) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(sled::Error::Io(e)) if e.to_string().starts_with("could not acquire lock") => {
                return Err(Error::InUse(data_dir.to_owned()));
            }
            other => return Ok(other?),
        }
    }
}

/// Where a sled in an older format is set aside until it is deleted.
pub(crate) fn stale_sled_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("state.stale")
}

/// Deletes a sled set aside (at this open, once rebuilt, or at the next one).
pub(crate) fn remove_stale_sled(data_dir: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(stale_sled_dir(data_dir)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
        _ => Ok(()),
    }
}

/// The rows' format sled was written in (`None` before formats were recorded).
pub fn rows_format(db: &sled::Db) -> Result<Option<u32>, Error> {
    let meta = db.open_tree(TreeName::Meta.as_string())?;
    Ok(meta
        .get(ROWS_FORMAT_KEY)?
        .and_then(|v| v.as_ref().try_into().ok().map(u32::from_be_bytes)))
}

/// The last log index whose rows sled holds.
pub fn applied_lsn(db: &sled::Db) -> Result<u64, Error> {
    let meta = db.open_tree(TreeName::Meta.as_string())?;
    Ok(meta.get(APPLIED_LSN_KEY)?.map_or(0, |v| {
        u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))
    }))
}

pub(crate) fn write_rows(
    db: &sled::Db,
    trees: &mut HashMap<TreeName, sled::Tree>,
    rows: impl IntoIterator<Item = Row>,
    applied: Lsn,
) -> Result<(), Error> {
    let mut batches = batches_of(rows);
    let mut meta = batches.remove(&TreeName::Meta).unwrap_or_default();
    meta.insert(APPLIED_LSN_KEY, &applied.0.to_be_bytes());
    // Meta goes last (BTreeMap order puts it first otherwise): a crash in between leaves
    // applied_lsn behind, and the next start rewrites those rows from the log.
    apply_batches(
        db,
        trees,
        batches.into_iter().chain([(TreeName::Meta, meta)]),
    )
}

/// Rows grouped into one sled batch per tree.
pub(crate) fn batches_of(rows: impl IntoIterator<Item = Row>) -> BTreeMap<TreeName, sled::Batch> {
    let mut batches: BTreeMap<TreeName, sled::Batch> = BTreeMap::new();
    for row in rows {
        batches
            .entry(row.tree)
            .or_default()
            .insert(row.key, row.value);
    }
    batches
}

/// Applies each tree's batch, in the order given, opening trees as needed.
pub(crate) fn apply_batches(
    db: &sled::Db,
    trees: &mut HashMap<TreeName, sled::Tree>,
    batches: impl IntoIterator<Item = (TreeName, sled::Batch)>,
) -> Result<(), Error> {
    for (name, batch) in batches {
        let tree = match trees.get(&name) {
            Some(tree) => tree,
            None => trees
                .entry(name.clone())
                .or_insert(db.open_tree(name.as_string())?),
        };
        tree.apply_batch(batch)?;
    }
    Ok(())
}

/// Drops every sled tree and writes `rows` as the whole content, as of log index `applied`.
pub(crate) fn reset_sled(
    db: &sled::Db,
    trees: &mut HashMap<TreeName, sled::Tree>,
    rows: Vec<Row>,
    applied: u64,
) -> Result<(), Error> {
    drop_trees(db, trees)?;
    let mut rows = rows.into_iter();
    loop {
        let slice: Vec<Row> = rows.by_ref().take(RESET_SLICE_ROWS).collect();
        if slice.is_empty() {
            break;
        }
        apply_batches(db, trees, batches_of(slice))?;
    }
    finish_reset(db, trees, applied)
}

pub(crate) fn drop_trees(
    db: &sled::Db,
    trees: &mut HashMap<TreeName, sled::Tree>,
) -> Result<(), Error> {
    trees.clear();
    for name in db.tree_names() {
        if name.as_ref() != b"__sled__default" {
            db.drop_tree(name)?;
        }
    }
    Ok(())
}

pub(crate) fn finish_reset(
    db: &sled::Db,
    trees: &mut HashMap<TreeName, sled::Tree>,
    applied: u64,
) -> Result<(), Error> {
    write_rows(db, trees, Vec::new(), Lsn(applied))?;
    db.flush()?;
    Ok(())
}

/// Where an unreadable sled is moved.
pub fn set_aside_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("state.unreadable")
}

/// Opens sled and reads how far it mirrors the log; an unreadable sled is set aside and a
/// fresh one opened (mirroring nothing, so the caller rebuilds it from the log).
pub fn open_or_set_aside(data_dir: &Path) -> Result<(sled::Db, u64), Error> {
    let error = match open_and_read(data_dir) {
        Ok(opened) => return Ok(opened),
        Err(error) if !is_unreadable(&error) => return Err(error),
        Err(error) => error,
    };
    let aside = set_aside_dir(data_dir);
    if aside.exists() {
        std::fs::remove_dir_all(&aside)?;
    }
    std::fs::rename(sled_dir(data_dir), &aside)?;
    tracing::warn!(
        %error,
        moved_to = %aside.display(),
        "sled cannot be read; it was moved aside and is rebuilt from the log"
    );
    open_and_read(data_dir)
}

fn open_and_read(data_dir: &Path) -> Result<(sled::Db, u64), Error> {
    let db = open_sled(data_dir)?;
    let mirrored = applied_lsn(&db)?;
    Ok((db, mirrored))
}

/// Whether an error says sled's own bytes cannot be read (as opposed to the machine's state:
/// no space, a held lock, permissions).
fn is_unreadable(error: &Error) -> bool {
    use std::io::ErrorKind;
    match error {
        Error::Sled(sled::Error::Corruption { .. })
        | Error::Sled(sled::Error::Unsupported(_))
        | Error::Sled(sled::Error::ReportableBug(_))
        | Error::Corrupt(_) => true,
        Error::Sled(sled::Error::Io(io)) | Error::Io(io) => {
            matches!(io.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof)
        }
        _ => false,
    }
}

/// A private copy of sled's directory, removed when dropped: `audit` reads sled through it
/// because opening sled writes to its directory (and, on a full disk, damaged it).
pub struct SledCopy {
    dir: PathBuf,
}

/// Fails with `Error::InUse` while a server holds sled (its exclusive lock on `state/db`),
/// waiting as `open_sled` does for one that just stopped. Takes a shared lock, which writes
/// nothing; the returned file holds it (so no server starts mid-copy) until dropped.
fn hold_unused(data_dir: &Path) -> Result<Option<std::fs::File>, Error> {
    use rustix::fs::{flock, FlockOperation};
    let Ok(file) = std::fs::File::open(sled_dir(data_dir).join("db")) else {
        return Ok(None);
    };
    let started = std::time::Instant::now();
    loop {
        match flock(&file, FlockOperation::NonBlockingLockShared) {
            Ok(()) => return Ok(Some(file)),
            Err(rustix::io::Errno::WOULDBLOCK)
                if started.elapsed().as_millis() < u128::from(SLED_LOCK_WAIT_MS) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(Error::InUse(data_dir.to_owned())),
            Err(error) => return Err(Error::Io(error.into())),
        }
    }
}

impl SledCopy {
    /// Copies `state/` of `data_dir` under the system's temporary directory; `Ok(None)` when
    /// there is no `state/`.
    pub fn of(data_dir: &Path) -> Result<Option<SledCopy>, Error> {
        let source = sled_dir(data_dir);
        if !source.is_dir() {
            return Ok(None);
        }
        let _held = hold_unused(data_dir)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let copy = SledCopy {
            dir: std::env::temp_dir().join(format!("panshi-audit-{}-{nanos}", std::process::id())),
        };
        copy_dir(&source, &sled_dir(&copy.dir))?;
        Ok(Some(copy))
    }

    /// Opens the copy; reading it may fail like the original would.
    pub fn open(&self) -> Result<(sled::Db, u64), Error> {
        open_and_read(&self.dir)
    }
}

impl Drop for SledCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
