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

/// Below this size of sled's files sled is never rebuilt (`SledRebuild::min_bytes`).
pub const SLED_REBUILD_MIN_BYTES: u64 = 256 * 1024 * 1024;
/// sled is rebuilt when its files take more than this many times `SLED_ROW_BYTES` a row of
/// what the state holds in memory (`SledRebuild::ratio`).
pub const SLED_OUTGROWN_RATIO: u64 = 8;
/// What a row takes in sled's files, for that comparison: a million delivered orders (rows
/// of about 700 B) with their keys (about 120 B) took 1.28 GB, 1.3 KB an order and key.
pub const SLED_ROW_BYTES: u64 = 1_024;

/// When sled has outgrown what memory holds (`outgrown`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SledRebuild {
    /// sled's files take more than this,
    pub min_bytes: u64,
    /// and more than this many times `SLED_ROW_BYTES` a row memory holds.
    pub ratio: u64,
}

impl Default for SledRebuild {
    fn default() -> Self {
        Self {
            min_bytes: SLED_REBUILD_MIN_BYTES,
            ratio: SLED_OUTGROWN_RATIO,
        }
    }
}

impl SledRebuild {
    /// Whenever a snapshot archived anything, and at every start after one did (the
    /// simulator, so that rebuilds meet crashes and lookups).
    pub const ALWAYS: Self = Self {
        min_bytes: 0,
        ratio: 0,
    };
}

/// Whether sled's files (`sled_bytes`, `disk_bytes` of `sled_dir`) have outgrown the rows
/// `state` holds in memory (`when`) and it is to be rebuilt: at a start before it is opened, while the node runs by the mirror thread
/// (`Store::archive`). sled mirrors memory, and a snapshot that
/// archives orders and keys leaves their rows behind: sled 0.34 deletes a row without
/// freeing its pages, and reads a page table over every page it ever wrote at open. Ten
/// million archived orders left 11.5 GB of files, which took about 750 MB to open. Only a
/// state with archived orders can have outgrown its sled: a rebuild of any other replays
/// what sled already held.
pub(crate) fn outgrown(
    sled_bytes: u64,
    state: &engine::state::ShopState,
    when: SledRebuild,
) -> bool {
    if state.hot_orders_count() == state.orders_count() {
        return false;
    }
    let rows = state.hot_orders_count() + state.hot_cards_count() + state.audit_count();
    let outgrown = sled_bytes > when.min_bytes && sled_bytes / SLED_ROW_BYTES >= rows * when.ratio;
    if outgrown {
        tracing::info!(
            sled_bytes,
            rows_in_memory = rows,
            "sled holds the rows of archived orders; rebuilding it with the rows memory holds"
        );
    }
    outgrown
}

/// Sets sled aside unopened (`outgrown`), to be deleted once a fresh one is rebuilt; fails
/// with `Error::InUse` while a server holds it.
pub(crate) fn set_aside_outgrown(data_dir: &Path) -> Result<(), Error> {
    let _held = hold_unused(data_dir)?;
    std::fs::rename(sled_dir(data_dir), stale_sled_dir(data_dir))?;
    Ok(())
}

/// The disk space the files under `dir` take (0 for none).
pub(crate) fn disk_bytes(dir: &Path) -> Result<u64, Error> {
    use std::os::unix::fs::MetadataExt;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(error.into()),
    };
    let mut bytes = 0;
    for entry in entries {
        let entry = entry?;
        let metadata = entry.metadata()?;
        bytes += match metadata.is_dir() {
            true => disk_bytes(&entry.path())?,
            false => metadata.blocks() * 512,
        };
    }
    Ok(bytes)
}

pub fn sled_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("state")
}

/// How long `open_sled` waits for a previous user of the data dir to let go of sled's file
/// lock: sled releases it from a background thread shortly after its last handle drops.
pub const SLED_LOCK_WAIT_MS: u64 = 5_000;

pub fn open_sled(data_dir: &Path) -> Result<sled::Db, Error> {
    open_sled_in(sled_dir(data_dir), data_dir)
}

/// Opens the sled in `dir`, a sled directory of `data_dir`.
fn open_sled_in(dir: PathBuf, data_dir: &Path) -> Result<sled::Db, Error> {
    let config = sled::Config::new()
        .path(dir)
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
    remove_if_there(&stale_sled_dir(data_dir))
}

fn remove_if_there(dir: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
        _ => Ok(()),
    }
}

/// Where a running node rebuilds an outgrown sled before it takes `state/`'s place.
pub(crate) fn next_sled_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("state.next")
}

/// Deletes a rebuild a crash interrupted (`state/` is still the old sled, or missing and
/// rebuilt from the snapshot).
pub(crate) fn remove_next_sled(data_dir: &Path) -> Result<(), Error> {
    remove_if_there(&next_sled_dir(data_dir))
}

/// What memory holds of the rows that grow with history: the orders and cards a rebuilt
/// sled keeps (`rebuild_held`).
pub(crate) struct Held {
    pub(crate) orders: Vec<engine::OrderId>,
    pub(crate) cards: Vec<engine::CardId>,
}

/// Builds a sled in `next_sled_dir` from `old` with the rows of `held` orders and cards and
/// every other row, and flushes it (the caller swaps it in: `swap_in_next`). Rows are read
/// from `old`, so the new sled mirrors exactly what `old` does, minus archived orders and
/// cards; `meta` (with `applied_lsn`) is copied last.
pub(crate) fn rebuild_held(data_dir: &Path, old: &sled::Db, held: &Held) -> Result<(), Error> {
    remove_next_sled(data_dir)?;
    crate::private::create_dir(&next_sled_dir(data_dir))?;
    let new = open_sled_in(next_sled_dir(data_dir), data_dir)?;
    let trees = &mut HashMap::new();
    let mut rows: Vec<Row> = Vec::new();
    let mut flush = |rows: &mut Vec<Row>, force: bool| match force || rows.len() >= RESET_SLICE_ROWS
    {
        true => apply_batches(&new, trees, batches_of(std::mem::take(rows))),
        false => Ok(()),
    };
    for id in &held.orders {
        if let Some(record) = crate::rows::read_order(old, id)? {
            crate::rows::order_rows(&record, true, &mut rows);
            flush(&mut rows, false)?;
        }
    }
    let cards = old.open_tree(TreeName::Cards.as_string())?;
    for card in &held.cards {
        let key = crate::rows::card_key(*card);
        if let Some(value) = cards.get(key)? {
            rows.push(Row {
                tree: TreeName::Cards,
                key: key.to_vec(),
                value: value.to_vec(),
            });
            flush(&mut rows, false)?;
        }
    }
    flush(&mut rows, true)?;
    let grows_with_history = |name: &[u8]| {
        name.starts_with(b"orders/")
            || name == TreeName::OrderMonth.as_string().as_bytes()
            || name == TreeName::Cards.as_string().as_bytes()
    };
    let meta = TreeName::Meta.as_string();
    let mut names: Vec<sled::IVec> = old.tree_names();
    names.retain(|name| !grows_with_history(name) && name.as_ref() != b"__sled__default");
    // `meta` last: a sled with `applied_lsn` holds every row before it.
    names.sort_by_key(|name| name.as_ref() == meta.as_bytes());
    for name in names {
        let from = old.open_tree(&name)?;
        let to = new.open_tree(&name)?;
        let mut batch = sled::Batch::default();
        let mut count = 0;
        for entry in from.iter() {
            let (key, value) = entry?;
            batch.insert(key, value);
            count += 1;
            if count % RESET_SLICE_ROWS == 0 {
                to.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        to.apply_batch(batch)?;
    }
    new.flush()?;
    Ok(())
}

/// Puts the sled `rebuild_held` made in `state/`'s place and opens it, once the caller has
/// dropped every handle of the old one (which is left in `stale_sled_dir` to be deleted). A
/// crash in between leaves `state/` the old sled, or missing (a start rebuilds it from the
/// snapshot). sled 0.34 touches its files by path only when it opens (the rest goes
/// through open files), so the old one's last writes cannot land in the new one.
pub(crate) fn swap_in_next(data_dir: &Path) -> Result<sled::Db, Error> {
    std::fs::rename(sled_dir(data_dir), stale_sled_dir(data_dir))?;
    std::fs::rename(next_sled_dir(data_dir), sled_dir(data_dir))?;
    std::fs::File::open(data_dir)?.sync_all()?;
    open_sled(data_dir)
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
    remove_if_there(&aside)?;
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
