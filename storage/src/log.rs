//! The durable truth: an append-only log of checksummed frames in numbered segment files,
//! written by one thread with group commit and `fdatasync`.
//!
//! Frame: `len: u32 | crc32: u32 | lsn: u64 | payload[len]`, little-endian; the CRC covers
//! the lsn and the payload. Segment files are named by the first lsn they hold. The lsn is
//! the Raft log index; a payload is an `entry::EntryRecord` (opaque here).
//!
//! Zero tail: a segment may end in zero bytes after its last frame. The writer writes zeros
//! `ZEROED_AHEAD_BYTES` ahead of its frames, so that most syncs find the file's blocks and
//! size already on disk and write data only. No frame is all zeros (its CRC would have to
//! be zero over a zero lsn), so recovery reads a zero tail as "nothing written here".
//!
//! Everything that changes the log dir goes through the writer, in order: appends
//! (grouped: one `write` and one `fdatasync` for everything queued), truncation of a suffix,
//! purging of a prefix, and small metadata files (vote, committed, purged) written
//! atomically. Each operation completes through its `Done` callback, after the sync. A
//! failed write or sync is sticky: every later operation fails with `LogFailed`. The
//! writer's state is behind a lock: its thread holds it for each group, and an append
//! submitted while nothing else is in flight is run by the submitting thread itself.
//!
//! Reads go through an in-memory index (lsn -> segment, offset) kept by the writer, with
//! positioned reads, so a reader never blocks the writer for longer than an index lookup.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Mutex, RwLock};

use crate::queue::{Queue, Refused};
use crate::Error;

/// Frame header: length, CRC, lsn.
pub const FRAME_HEADER_BYTES: usize = 16;
/// Largest payload of one record.
pub const RECORD_BYTES_MAX: usize = 32 * 1024 * 1024;
/// A segment is closed and a new one begun past this size.
pub const SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Operations waiting for the writer; a full queue refuses at once (back-pressure).
pub const OPS_QUEUE_CAPACITY: usize = 1_024;
/// Most operations taken and synced as one group.
pub const GROUP_OPS_MAX: usize = 256;
/// Most bytes of appends written before one sync.
pub const GROUP_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How far past its last frame the writer keeps a segment written with zeros. An
/// `fdatasync` after a write that grows the file must also write the file's new size and
/// block allocation; one after a write over zeros writes the data alone (measured here with
/// 1,000-byte records, medians of two runs each: 141-148 us per write and sync at the end
/// of the file, 90-101 us over zeros written 1 MiB at a time; docs/BENCHMARKS.md).
pub const ZEROED_AHEAD_BYTES: u64 = 1024 * 1024;
const _: () = assert!(GROUP_OPS_MAX <= OPS_QUEUE_CAPACITY);
const _: () = assert!(ZEROED_AHEAD_BYTES < SEGMENT_BYTES_MAX);
const _: () = assert!((RECORD_BYTES_MAX as u64) < SEGMENT_BYTES_MAX);
const _: () = assert!(RECORD_BYTES_MAX <= GROUP_BYTES_MAX);

/// A log sequence number: the Raft index of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// Called once when an operation is done: for appends, after `fdatasync`.
pub type Done = Box<dyn FnOnce(Result<(), Error>) + Send>;

/// What the writer thread does, in the order submitted.
pub enum Op {
    /// Records with consecutive lsns, the first being the log's next lsn.
    Append {
        records: Vec<(u64, Vec<u8>)>,
        done: Done,
    },
    /// Removes every record at or above `from`; the next append is `from`.
    Truncate { from: u64, done: Done },
    /// Deletes every segment whose records all lie at or below `through` (the newest segment
    /// stays). With `through` at or past the last record the log becomes empty and goes on
    /// at `through + 1`.
    Purge { through: u64, done: Done },
    /// Writes a small file in the log dir atomically: temporary file, fsync, rename, fsync
    /// of the directory. For the vote and the purge mark.
    SaveFile {
        name: &'static str,
        bytes: Vec<u8>,
        done: Done,
    },
    /// Writes a small file in place, without a sync (a hint that may be lost, such as the
    /// commit index).
    SaveHint {
        name: &'static str,
        bytes: Vec<u8>,
        done: Done,
    },
}

/// Test-only fault: makes the next sync fail, to prove failures are sticky.
#[derive(Default)]
pub struct Faults {
    pub fail_next_sync: AtomicBool,
}

/// What recovery found.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    /// The first lsn in the log, and the one after its last (equal when it is empty).
    pub first_lsn: u64,
    pub next_lsn: u64,
    pub records_count: u64,
    /// Damaged bytes after the last segment's last whole frame (a torn or corrupted,
    /// unacknowledged write), up to its last nonzero byte: `recover` zeroes them when it
    /// repairs. A zero tail is not damage.
    pub truncated_bytes: u64,
}

impl Recovery {
    pub fn last_lsn(&self) -> Option<u64> {
        (self.next_lsn > self.first_lsn).then(|| self.next_lsn - 1)
    }
}

/// One segment file's frames: frame `i` holds lsn `first_lsn + i`; they end at `end`
/// (zeros or the end of the file follow).
struct Segment {
    path: PathBuf,
    offsets: Vec<u64>,
    end: u64,
}

/// Where every record lives, by lsn.
#[derive(Default)]
pub struct LogIndex {
    segments: BTreeMap<u64, Segment>,
}

impl LogIndex {
    fn locate(&self, lsn: u64) -> Option<(&Path, u64)> {
        let (first, segment) = self.segments.range(..=lsn).next_back()?;
        let offset = *segment.offsets.get((lsn - first) as usize)?;
        Some((&segment.path, offset))
    }

    /// The first and last lsn indexed; `None` when the log is empty.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        let (first, _) = self.segments.iter().find(|(_, s)| !s.offsets.is_empty())?;
        let (last_first, last) = self
            .segments
            .iter()
            .rev()
            .find(|(_, s)| !s.offsets.is_empty())?;
        Some((*first, last_first + last.offsets.len() as u64 - 1))
    }
}

/// The log's directory in a data dir.
pub fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("log")
}

fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!("{first_lsn:020}.log"))
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, Error> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(stem) = name.strip_suffix(".log") {
            if let Ok(first) = stem.parse::<u64>() {
                segments.push((first, path));
            }
        }
    }
    segments.sort();
    Ok(segments)
}

pub fn frame_crc(lsn: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&lsn.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

pub fn encode_frame(buffer: &mut Vec<u8>, lsn: u64, payload: &[u8]) {
    assert!(payload.len() <= RECORD_BYTES_MAX);
    buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buffer.extend_from_slice(&frame_crc(lsn, payload).to_le_bytes());
    buffer.extend_from_slice(&lsn.to_le_bytes());
    buffer.extend_from_slice(payload);
}

/// A frame that checks out at `offset`: its lsn and its payload's range.
fn frame_at(bytes: &[u8], offset: usize) -> Option<(u64, std::ops::Range<usize>)> {
    let header = bytes.get(offset..offset + FRAME_HEADER_BYTES)?;
    let len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
    let lsn = u64::from_le_bytes(header[8..16].try_into().unwrap());
    if len > RECORD_BYTES_MAX {
        return None;
    }
    let start = offset + FRAME_HEADER_BYTES;
    let payload = bytes.get(start..start + len)?;
    (frame_crc(lsn, payload) == crc).then_some((lsn, start..start + len))
}

/// Whether any valid frame with an lsn above `after` starts past `from`: if so the damage
/// is not a torn tail but corruption inside acknowledged data.
fn valid_frame_beyond(bytes: &[u8], from: usize, after: u64) -> bool {
    (from + 1..bytes.len().saturating_sub(FRAME_HEADER_BYTES - 1)).any(|offset| {
        let lsn = u64::from_le_bytes(bytes[offset + 8..offset + 16].try_into().unwrap());
        lsn > after && lsn < after.saturating_add(1 << 32) && frame_at(bytes, offset).is_some()
    })
}

/// Reads every record in lsn order and hands it to `visit`, building the index. A damaged
/// tail of the last segment (torn write) is zeroed when `repair` is set and only reported
/// otherwise; damage anywhere else is `Error::Corrupt`. Empty segments are dropped when
/// `repair` is set. `Log::start` wants a repaired log: it writes on where the frames end.
pub fn recover(
    dir: &Path,
    repair: bool,
    mut visit: impl FnMut(Lsn, &[u8]) -> Result<(), Error>,
) -> Result<(Recovery, LogIndex), Error> {
    if repair {
        crate::private::create_dir(dir)?;
    } else if !dir.exists() {
        // Read-only (audit): a missing log is an empty one, and is not created.
        return Ok((Recovery::default(), LogIndex::default()));
    }
    let mut segments = list_segments(dir)?;
    // An empty segment before others holds no record. Writers before this check left one
    // behind when a follower's log was purged beyond its end twice in a row; it is no hole.
    while segments.len() > 1 && fs::metadata(&segments[0].1)?.len() == 0 {
        let (_, path) = segments.remove(0);
        if repair {
            fs::remove_file(&path)?;
            sync_dir(dir)?;
        }
    }
    let first_lsn = segments.first().map_or(0, |(first, _)| *first);
    let mut recovery = Recovery {
        first_lsn,
        next_lsn: first_lsn,
        ..Recovery::default()
    };
    let mut index = LogIndex::default();
    let mut expected = recovery.first_lsn;
    let mut bytes = Vec::new();
    for (position, (first, path)) in segments.iter().enumerate() {
        if *first != expected {
            return Err(Error::Corrupt(format!(
                "segment {first} where lsn {expected} is next"
            )));
        }
        bytes.clear();
        File::open(path)?.read_to_end(&mut bytes)?;
        let mut offsets = Vec::new();
        let mut offset = 0;
        while offset < bytes.len() {
            match frame_at(&bytes, offset) {
                Some((lsn, range)) if lsn == expected => {
                    visit(Lsn(lsn), &bytes[range.clone()])?;
                    offsets.push(offset as u64);
                    expected += 1;
                    recovery.records_count += 1;
                    offset = range.end;
                }
                _ => break,
            }
        }
        let last = position + 1 == segments.len();
        // After the last whole frame: zeros (written ahead), then perhaps the end of the
        // file. Anything else is damage.
        let damaged = bytes[offset..]
            .iter()
            .rposition(|byte| *byte != 0)
            .map_or(0, |at| at + 1);
        if damaged > 0 {
            if !last || valid_frame_beyond(&bytes, offset, expected.saturating_sub(1)) {
                return Err(Error::Corrupt(format!(
                    "{}: damaged frame at byte {offset} before acknowledged records",
                    path.display()
                )));
            }
            recovery.truncated_bytes = damaged as u64;
            if repair {
                // Zeroed, not cut: the writer counts on zeros after its frames.
                let file = OpenOptions::new().write(true).open(path)?;
                write_zeros(&file, offset as u64, (offset + damaged) as u64)?;
                file.sync_data()?;
                // Bytes leave the data dir here: an operator at `warn` must see it.
                tracing::warn!(
                    segment = %path.display(),
                    truncated_bytes = recovery.truncated_bytes,
                    last_lsn_kept = expected.saturating_sub(1),
                    kept_bytes = offset,
                    "cut a torn tail from the log: {} bytes after lsn {} (never acknowledged)",
                    recovery.truncated_bytes,
                    expected.saturating_sub(1)
                );
            }
        }
        index.segments.insert(
            *first,
            Segment {
                path: path.clone(),
                offsets,
                end: offset as u64,
            },
        );
    }
    recovery.next_lsn = expected;
    Ok((recovery, index))
}

/// The commit hint's file in the log dir: `term node index`, as text padded with spaces to
/// `COMMITTED_HINT_BYTES`.
pub const COMMITTED_FILE: &str = "committed";
/// Every commit hint is this long, so each one is written over the last in place.
/// Truncating the file for each entry freed its block, and the device's discard made that
/// a synchronous wait on the log writer for every entry.
pub const COMMITTED_HINT_BYTES: usize = 64;
// Three u64s of 20 digits, two spaces and a newline fit.
#[allow(clippy::int_plus_one)] // the sum reads as what it counts
const _: () = assert!(3 * 20 + 2 + 1 <= COMMITTED_HINT_BYTES);

pub fn committed_hint(term: u64, node: u64, index: u64) -> Vec<u8> {
    let mut hint = format!("{term} {node} {index}").into_bytes();
    hint.resize(COMMITTED_HINT_BYTES - 1, b' ');
    hint.push(b'\n');
    hint
}

/// The last commit a node heard of, `(term, leader, index)`: a hint (written without a
/// sync), `None` when absent or unreadable.
pub fn read_committed_hint(dir: &Path) -> Result<Option<(u64, u64, u64)>, Error> {
    let Some(bytes) = read_file(dir, COMMITTED_FILE)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    let numbers: Vec<u64> = text
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    Ok(match numbers[..] {
        [term, node, index] => Some((term, node, index)),
        _ => None,
    })
}

/// Reads a small file written by `Op::SaveFile` or `Op::SaveHint`; `None` when absent.
pub fn read_file(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, Error> {
    match fs::read(dir.join(name)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

struct Writer {
    dir: PathBuf,
    file: File,
    segment_first: u64,
    /// Where the current segment's frames end: the next write's offset.
    segment_bytes: u64,
    /// The current segment's length: from `segment_bytes` to here it holds zeros.
    zeroed_bytes: u64,
    next_lsn: u64,
    buffer: Vec<u8>,
    /// Offsets of the frames in `buffer`, indexed once written.
    unindexed: Vec<u64>,
    index: Arc<RwLock<LogIndex>>,
    failed: Arc<AtomicBool>,
    faults: Arc<Faults>,
    ops: Arc<OpsCount>,
    /// The hint file written last, kept open.
    hint: Option<OpenHint>,
}

struct OpenHint {
    name: &'static str,
    file: File,
    /// Bytes written at its start by the last write.
    len: usize,
}

/// Opens (or creates) a segment for writing at chosen offsets; returns it and its length.
fn open_segment(dir: &Path, first_lsn: u64) -> Result<(File, u64), Error> {
    let path = segment_path(dir, first_lsn);
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .mode(crate::private::FILE_MODE)
        .open(&path)?;
    let len = file.metadata()?.len();
    File::open(dir)?.sync_all()?;
    Ok((file, len))
}

/// Zeros for `write_zeros` to copy from (in zero-filled static memory: no allocation).
static ZEROS: [u8; ZEROED_AHEAD_BYTES as usize] = [0; ZEROED_AHEAD_BYTES as usize];

/// Writes zeros over `from..to` of `file`, a `ZEROS` at a time.
fn write_zeros(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let mut at = from;
    while at < to {
        let len = (to - at).min(ZEROED_AHEAD_BYTES) as usize;
        file.write_all_at(&ZEROS[..len], at)?;
        at += len as u64;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// The writer thread: takes the queued operations a group at a time.
fn run_writer(writer: Arc<Mutex<Writer>>, queue: Arc<Queue<Op>>) {
    let mut group: Vec<Op> = Vec::with_capacity(GROUP_OPS_MAX);
    while queue.recv_group(GROUP_OPS_MAX, &mut group) {
        writer.lock().run_group(group.drain(..));
    }
}

impl Writer {
    /// Runs `group` in order: appends are buffered and synced together (before any other
    /// operation, and whenever `GROUP_BYTES_MAX` is buffered), then completed.
    fn run_group(&mut self, group: impl IntoIterator<Item = Op>) {
        let mut appends: Vec<Done> = Vec::new();
        let mut finished = 0;
        for op in group {
            finished += 1;
            match op {
                Op::Append { records, done } => {
                    match self.guarded(|w| w.buffer_append(&records)) {
                        Ok(()) => appends.push(done),
                        Err(e) => done(Err(e)),
                    }
                    if self.buffer.len() >= GROUP_BYTES_MAX {
                        self.flush_appends(&mut appends);
                    }
                }
                other => {
                    self.flush_appends(&mut appends);
                    self.run_other(other);
                }
            }
        }
        self.flush_appends(&mut appends);
        self.ops.finished.fetch_add(finished, Ordering::AcqRel);
    }

    /// Runs `work` unless the log failed earlier; a failure makes it fail for good.
    fn guarded(&mut self, work: impl FnOnce(&mut Self) -> Result<(), Error>) -> Result<(), Error> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::LogFailed);
        }
        let result = work(self);
        if let Err(error) = &result {
            self.failed.store(true, Ordering::Release);
            tracing::error!(%error, "log write failed; the log refuses every later write");
        }
        result
    }

    fn buffer_append(&mut self, records: &[(u64, Vec<u8>)]) -> Result<(), Error> {
        for (lsn, payload) in records {
            if *lsn != self.next_lsn && self.is_empty() {
                // An empty log (new, or wholly purged) goes on wherever it is told.
                self.restart_at(*lsn)?;
            }
            if *lsn != self.next_lsn {
                return Err(Error::Corrupt(format!(
                    "append of lsn {lsn} where {} is next",
                    self.next_lsn
                )));
            }
            if payload.len() > RECORD_BYTES_MAX {
                return Err(Error::RecordTooLarge(payload.len()));
            }
            if self.segment_bytes >= SEGMENT_BYTES_MAX {
                self.write_buffer()?;
                self.start_segment(self.next_lsn)?;
            }
            let offset = self.segment_bytes + self.buffer.len() as u64;
            encode_frame(&mut self.buffer, *lsn, payload);
            self.unindexed.push(offset);
            self.next_lsn += 1;
        }
        Ok(())
    }

    /// Replaces the (empty) current segment with one that starts at `lsn`.
    fn restart_at(&mut self, lsn: u64) -> Result<(), Error> {
        let old = segment_path(&self.dir, self.segment_first);
        self.index.write().segments.clear();
        let (file, len) = open_segment(&self.dir, lsn)?;
        if old != segment_path(&self.dir, lsn) {
            fs::remove_file(&old)?;
            sync_dir(&self.dir)?;
        }
        self.adopt(file, lsn, 0, len);
        self.next_lsn = lsn;
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.buffer.is_empty() && self.index.read().bounds().is_none()
    }

    /// Makes `file` the current segment: its frames end at `end`, zeros follow to `len`.
    fn adopt(&mut self, file: File, first_lsn: u64, end: u64, len: u64) {
        self.file = file;
        self.segment_first = first_lsn;
        self.segment_bytes = end;
        self.zeroed_bytes = len.max(end);
    }

    /// Writes the buffered frames to the current segment (no sync), then indexes them: a
    /// record is readable through the index only once it is in the file.
    fn write_buffer(&mut self) -> Result<(), Error> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(&self.buffer, self.segment_bytes)?;
        self.segment_bytes += self.buffer.len() as u64;
        self.buffer.clear();
        self.zero_ahead();
        let mut index = self.index.write();
        let dir = &self.dir;
        let segment = index
            .segments
            .entry(self.segment_first)
            .or_insert_with(|| Segment {
                path: segment_path(dir, self.segment_first),
                offsets: Vec::new(),
                end: 0,
            });
        segment.offsets.append(&mut self.unindexed);
        segment.end = self.segment_bytes;
        Ok(())
    }

    /// Keeps the segment written with zeros `ZEROED_AHEAD_BYTES` past its frames (up to
    /// `SEGMENT_BYTES_MAX`), a chunk at a time; the group's sync makes them durable. Only a
    /// speed-up: when the zeros cannot be written (a full disk), the frames grow the file.
    fn zero_ahead(&mut self) {
        let end = self.segment_bytes;
        if end + ZEROED_AHEAD_BYTES / 2 <= self.zeroed_bytes || end >= SEGMENT_BYTES_MAX {
            return;
        }
        let from = self.zeroed_bytes.max(end);
        let to = (end + ZEROED_AHEAD_BYTES).min(SEGMENT_BYTES_MAX);
        match write_zeros(&self.file, from, to) {
            Ok(()) => self.zeroed_bytes = to,
            Err(error) => {
                // Part of it may be written: zeros either way, and frames go on at `end`.
                self.zeroed_bytes = self.zeroed_bytes.max(end);
                tracing::debug!(%error, "could not write zeros ahead of the log");
            }
        }
    }

    fn start_segment(&mut self, first_lsn: u64) -> Result<(), Error> {
        self.file.sync_data()?;
        let (file, len) = open_segment(&self.dir, first_lsn)?;
        self.adopt(file, first_lsn, 0, len);
        Ok(())
    }

    /// Writes and syncs what the group appended, then completes the appends.
    fn flush_appends(&mut self, appends: &mut Vec<Done>) {
        if appends.is_empty() {
            return;
        }
        let result = self.guarded(|w| {
            w.write_buffer()?;
            if w.faults.fail_next_sync.swap(false, Ordering::AcqRel) {
                return Err(Error::Io(std::io::Error::other("injected sync failure")));
            }
            w.file.sync_data()?;
            Ok(())
        });
        for done in appends.drain(..) {
            done(match &result {
                Ok(()) => Ok(()),
                Err(_) => Err(Error::LogFailed),
            });
        }
    }

    fn run_other(&mut self, op: Op) {
        match op {
            Op::Append { .. } => unreachable!("appends are grouped"),
            Op::Truncate { from, done } => done(self.guarded(|w| w.truncate(from))),
            Op::Purge { through, done } => done(self.guarded(|w| w.purge(through))),
            Op::SaveFile { name, bytes, done } => {
                done(self.guarded(|w| save_file(&w.dir, name, &bytes)))
            }
            Op::SaveHint { name, bytes, done } => {
                // A hint that fails to write is only a lost hint: not sticky.
                done(self.save_hint(name, &bytes).map_err(Error::from))
            }
        }
    }

    /// Writes a hint over the last one of the same file in place when it covers it (no
    /// truncation: see `COMMITTED_HINT_BYTES`); otherwise creates the file afresh.
    fn save_hint(&mut self, name: &'static str, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(hint) = &mut self.hint {
            if hint.name == name && bytes.len() >= hint.len {
                hint.file.write_all_at(bytes, 0)?;
                hint.len = bytes.len();
                return Ok(());
            }
        }
        self.hint = None;
        let mut file = crate::private::create_file(&self.dir.join(name))?;
        file.write_all(bytes)?;
        self.hint = Some(OpenHint {
            name,
            file,
            len: bytes.len(),
        });
        Ok(())
    }

    fn truncate(&mut self, from: u64) -> Result<(), Error> {
        if from >= self.next_lsn {
            return Ok(());
        }
        self.write_buffer()?;
        let mut index = self.index.write();
        // Newest first, so that a crash part-way leaves a prefix of the log, never a gap.
        let doomed: Vec<u64> = index.segments.range(from..).map(|(f, _)| *f).collect();
        for first in doomed.into_iter().rev() {
            let segment = index.segments.remove(&first).expect("listed");
            fs::remove_file(&segment.path)?;
        }
        let mut resume = None;
        if let Some((first, segment)) = index.segments.iter_mut().next_back() {
            let keep = (from - first) as usize;
            if keep < segment.offsets.len() {
                let cut = segment.offsets[keep];
                segment.offsets.truncate(keep);
                segment.end = cut;
                let file = OpenOptions::new().write(true).open(&segment.path)?;
                file.set_len(cut)?;
                file.sync_all()?;
            }
            resume = Some((*first, segment.end));
        }
        drop(index);
        sync_dir(&self.dir)?;
        self.next_lsn = from;
        match resume {
            Some((first, end)) => {
                let (file, len) = open_segment(&self.dir, first)?;
                self.adopt(file, first, end, len);
            }
            None => self.start_segment(from)?,
        }
        Ok(())
    }

    fn purge(&mut self, through: u64) -> Result<(), Error> {
        self.write_buffer()?;
        if through + 1 >= self.next_lsn {
            // Everything goes (a snapshot beyond the log, on a follower): start afresh. The
            // current segment goes too, even when it is empty and so not indexed (a purge
            // beyond the log right after another one): left behind, it would read as a hole
            // before the new one. Oldest first, so a crash part-way leaves a suffix.
            let mut doomed: Vec<PathBuf> = std::mem::take(&mut self.index.write().segments)
                .into_values()
                .map(|segment| segment.path)
                .collect();
            doomed.push(segment_path(&self.dir, self.segment_first));
            doomed.dedup();
            for path in doomed {
                match fs::remove_file(&path) {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                        return Err(error.into())
                    }
                    _ => {}
                }
            }
            sync_dir(&self.dir)?;
            self.next_lsn = through + 1;
            let (file, len) = open_segment(&self.dir, self.next_lsn)?;
            self.adopt(file, self.next_lsn, 0, len);
            return Ok(());
        }
        let mut index = self.index.write();
        let firsts: Vec<u64> = index.segments.keys().copied().collect();
        for pair in firsts.windows(2) {
            if pair[1] - 1 <= through {
                let segment = index.segments.remove(&pair[0]).expect("listed");
                fs::remove_file(&segment.path)?;
            }
        }
        drop(index);
        sync_dir(&self.dir)
    }
}

fn save_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), Error> {
    let temporary = dir.join(format!("{name}.tmp"));
    let mut file = crate::private::create_file(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temporary, dir.join(name))?;
    sync_dir(dir)
}

/// The writing half of an open log, and its reader.
pub struct Log {
    dir: PathBuf,
    /// Closed by `close`.
    queue: Arc<Queue<Op>>,
    /// The writer's state: its thread holds it for each group; a caller that finds the log
    /// idle holds it to write its own append.
    shared: Arc<Mutex<Writer>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    index: Arc<RwLock<LogIndex>>,
    failed: Arc<AtomicBool>,
    pub faults: Arc<Faults>,
    /// Operations submitted and finished (their `done` returned), counted for callers that
    /// wait until the writer is idle (the simulator).
    ops: Arc<OpsCount>,
}

#[derive(Default)]
struct OpsCount {
    submitted: AtomicU64,
    finished: AtomicU64,
}

impl Log {
    /// Starts the writer after `recover` has read (and repaired) the log; the next append is
    /// `recovery.next_lsn`, or any lsn while the log is empty.
    pub fn start(dir: &Path, recovery: &Recovery, index: LogIndex) -> Result<Self, Error> {
        let next_lsn = recovery.next_lsn;
        let segment_first = index
            .segments
            .keys()
            .next_back()
            .copied()
            .unwrap_or(next_lsn);
        // Frames end where recovery found the last whole one; zeros follow (repaired).
        let segment_bytes = index
            .segments
            .get(&segment_first)
            .map_or(0, |segment| segment.end);
        let (file, len) = open_segment(dir, segment_first)?;
        let queue = Arc::new(Queue::new(OPS_QUEUE_CAPACITY));
        let index = Arc::new(RwLock::new(index));
        let failed = Arc::new(AtomicBool::new(false));
        let faults = Arc::new(Faults::default());
        let ops = Arc::new(OpsCount::default());
        let writer = Writer {
            dir: dir.to_owned(),
            file,
            segment_first,
            segment_bytes,
            zeroed_bytes: len.max(segment_bytes),
            next_lsn,
            buffer: Vec::with_capacity(1 << 20),
            unindexed: Vec::new(),
            index: index.clone(),
            failed: failed.clone(),
            faults: faults.clone(),
            ops: ops.clone(),
            hint: None,
        };
        let shared = Arc::new(Mutex::new(writer));
        let thread = {
            let (shared, queue) = (shared.clone(), queue.clone());
            std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || run_writer(shared, queue))?
        };
        Ok(Self {
            dir: dir.to_owned(),
            queue,
            shared,
            writer: Mutex::new(Some(thread)),
            index,
            failed,
            faults,
            ops,
        })
    }

    /// Queues an operation; its `done` runs on the writer thread once it is finished. An
    /// append submitted while nothing else is in flight is written and synced on the
    /// caller's thread instead, and its `done` runs before this returns: two thread
    /// hand-offs fewer when nothing would have joined its group anyway.
    pub fn submit(&self, op: Op) -> Result<(), Error> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::LogFailed);
        }
        let Some(op) = self.run_if_idle(op) else {
            return Ok(());
        };
        self.ops.submitted.fetch_add(1, Ordering::AcqRel);
        let result = match self.queue.try_send(op) {
            Ok(()) => return Ok(()),
            Err(Refused::Full(_)) => Err(Error::Busy),
            Err(Refused::Closed(_)) => Err(Error::Closed),
        };
        self.ops.finished.fetch_add(1, Ordering::AcqRel);
        result
    }

    /// Queues an operation, waiting while the queue is full (an append to an idle log is
    /// written on the caller's thread, as `submit` says).
    pub fn submit_waiting(&self, op: Op) -> Result<(), Error> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::LogFailed);
        }
        let Some(op) = self.run_if_idle(op) else {
            return Ok(());
        };
        self.ops.submitted.fetch_add(1, Ordering::AcqRel);
        self.queue.send(op).map_err(|_| {
            self.ops.finished.fetch_add(1, Ordering::AcqRel);
            Error::Closed
        })
    }

    /// Runs an append on the caller's thread when nothing else is in flight (and gives
    /// every other operation back). Submitted and finished under the writer's lock: the
    /// thread cannot be between taking a group and writing it, since that group would be
    /// unfinished.
    fn run_if_idle(&self, op: Op) -> Option<Op> {
        if !matches!(op, Op::Append { .. }) || self.unfinished_count() != 0 {
            return Some(op);
        }
        let Some(mut writer) = self.shared.try_lock() else {
            return Some(op);
        };
        if self.queue.is_closed() || self.unfinished_count() != 0 {
            return Some(op);
        }
        self.ops.submitted.fetch_add(1, Ordering::AcqRel);
        writer.run_group([op]);
        None
    }

    /// The payloads of records `from..=through` that the writer has written (a record still
    /// in the writer's buffer is not readable here: the caller keeps its own copy until then).
    pub fn read(&self, from: u64, through: u64) -> Result<Vec<(u64, Vec<u8>)>, Error> {
        let mut out = Vec::new();
        let mut open: Option<(PathBuf, File)> = None;
        for lsn in from..=through {
            let (path, offset) = {
                let index = self.index.read();
                match index.locate(lsn) {
                    Some((path, offset)) => (path.to_owned(), offset),
                    None => break,
                }
            };
            if open.as_ref().is_none_or(|(p, _)| *p != path) {
                open = Some((path.clone(), File::open(&path)?));
            }
            let file = &open.as_ref().expect("opened").1;
            out.push((lsn, read_frame(file, offset, lsn)?));
        }
        Ok(out)
    }

    /// The first and last lsn written; `None` when the log is empty.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        self.index.read().bounds()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Operations queued for the writer, approximately.
    pub fn queued_count(&self) -> usize {
        self.queue.len()
    }

    /// Operations submitted and not yet finished (their `done` has not returned): zero means
    /// the writer is idle and every completion has been delivered.
    pub fn unfinished_count(&self) -> u64 {
        let finished = self.ops.finished.load(Ordering::Acquire);
        self.ops.submitted.load(Ordering::Acquire) - finished
    }

    /// Operations finished since the log was opened.
    pub fn finished_count(&self) -> u64 {
        self.ops.finished.load(Ordering::Acquire)
    }

    /// Stops accepting operations, lets the writer finish everything queued, and waits for it.
    pub fn close(&self) {
        self.queue.close();
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.close();
    }
}

fn read_frame(file: &File, offset: u64, lsn: u64) -> Result<Vec<u8>, Error> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    file.read_exact_at(&mut header, offset)?;
    let len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
    let stored_lsn = u64::from_le_bytes(header[8..16].try_into().unwrap());
    if len > RECORD_BYTES_MAX || stored_lsn != lsn {
        return Err(Error::Corrupt(format!("frame of lsn {lsn} at {offset}")));
    }
    let mut payload = vec![0u8; len];
    file.read_exact_at(&mut payload, offset + FRAME_HEADER_BYTES as u64)?;
    if frame_crc(lsn, &payload) != crc {
        return Err(Error::Corrupt(format!("checksum of lsn {lsn}")));
    }
    Ok(payload)
}

/// The newest segment's path and where each of its records ends: `(lsn, end offset)`.
pub type TailFrames = (PathBuf, Vec<(u64, u64)>);

/// Where each record of the newest segment ends, plus that segment's path. For fault
/// injection (the simulator cuts or tears the tail at a chosen record).
pub fn tail_frames(dir: &Path) -> Result<Option<TailFrames>, Error> {
    let Some((_, path)) = list_segments(dir)?.pop() else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    File::open(&path)?.read_to_end(&mut bytes)?;
    let mut ends = Vec::new();
    let mut offset = 0;
    while let Some((lsn, range)) = frame_at(&bytes, offset) {
        ends.push((lsn, range.end as u64));
        offset = range.end;
    }
    Ok(Some((path, ends)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `make(done)` on the writer and waits for its result.
    fn run(log: &Log, make: impl FnOnce(Done) -> Op) -> Result<(), Error> {
        let (sender, receiver) = crossbeam_channel::bounded(1);
        log.submit_waiting(make(Box::new(move |result| {
            let _ = sender.send(result);
        })))?;
        receiver.recv().expect("the writer answers")
    }

    fn append(log: &Log, lsns: std::ops::RangeInclusive<u64>) {
        let records = lsns.map(|lsn| (lsn, lsn.to_le_bytes().to_vec())).collect();
        run(log, |done| Op::Append { records, done }).expect("append");
    }

    fn open(dir: &Path) -> Log {
        let (recovery, index) = recover(dir, true, |_, _| Ok(())).expect("recover");
        Log::start(dir, &recovery, index).expect("start")
    }

    /// Every record recovery reads, and what it found.
    fn read_back(dir: &Path, repair: bool) -> (Vec<u64>, Recovery) {
        let mut seen = Vec::new();
        let (recovery, _) = recover(dir, repair, |lsn, payload| {
            assert_eq!(payload, lsn.0.to_le_bytes());
            seen.push(lsn.0);
            Ok(())
        })
        .expect("the log reads back");
        (seen, recovery)
    }

    /// Writes records `lsns` to a new log in `dir` and closes it; its newest segment and
    /// where each record in it ends (`tail_frames`).
    fn written(dir: &Path, lsns: std::ops::RangeInclusive<u64>) -> (PathBuf, Vec<(u64, u64)>) {
        let log = open(dir);
        append(&log, lsns);
        log.close();
        tail_frames(dir).unwrap().unwrap()
    }

    /// Bytes of `path` from `from` on.
    fn bytes_from(path: &Path, from: u64) -> Vec<u8> {
        std::fs::read(path).unwrap()[from as usize..].to_vec()
    }

    /// An append to an idle log is written and synced on the caller's thread (its `done`
    /// runs there, before `submit` returns); appends made while another operation is in
    /// flight go to the writer thread and keep their order; a closed log writes nothing.
    #[test]
    fn an_idle_log_takes_an_append_on_the_callers_thread() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        let caller = std::thread::current().id();
        let (sender, receiver) = crossbeam_channel::unbounded();
        let submit = |lsn: u64| {
            let sender = sender.clone();
            let done: Done = Box::new(move |result| {
                result.expect("appended");
                let _ = sender.send((lsn, std::thread::current().id()));
            });
            let records = vec![(lsn, lsn.to_le_bytes().to_vec())];
            log.submit_waiting(Op::Append { records, done }).unwrap();
        };
        submit(1);
        assert_eq!(
            receiver.try_recv().ok(),
            Some((1, caller)),
            "not done on return"
        );
        // The writer thread is held inside an operation's `done`: appends now queue.
        let (release, held) = crossbeam_channel::bounded::<()>(0);
        let done: Done = Box::new(move |result| {
            result.expect("saved");
            held.recv().expect("released");
        });
        let hold = Op::SaveFile {
            name: "held",
            bytes: Vec::new(),
            done,
        };
        log.submit(hold).unwrap();
        for lsn in 2..=100 {
            submit(lsn);
        }
        assert!(
            receiver.try_recv().is_err(),
            "an append went past a busy writer"
        );
        release.send(()).unwrap();
        for lsn in 2..=100 {
            let (done, thread) = receiver.recv().unwrap();
            assert_eq!(done, lsn, "appends completed out of order");
            assert_ne!(thread, caller, "a queued append ran on the caller's thread");
        }
        log.close();
        let records = vec![(101, 101u64.to_le_bytes().to_vec())];
        let refused = log.submit_waiting(Op::Append {
            records,
            done: Box::new(|_| panic!("a closed log wrote")),
        });
        assert!(matches!(refused, Err(Error::Closed)), "{refused:?}");
        let (seen, _) = read_back(dir.path(), false);
        assert_eq!(seen, (1..=100).collect::<Vec<_>>());
    }

    /// The writer keeps zeros ahead of its frames (so a sync writes data, not the file's
    /// size), and recovery reads a zero tail as nothing written, on every reopen.
    #[test]
    fn frames_are_written_over_zeros_and_a_zero_tail_is_no_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (path, ends) = written(dir.path(), 1..=40);
        let end = ends.last().unwrap().1;
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(
            len >= end + ZEROED_AHEAD_BYTES / 2,
            "{len} bytes, frames end at {end}"
        );
        assert!(bytes_from(&path, end).iter().all(|byte| *byte == 0));
        let (seen, recovery) = read_back(dir.path(), true);
        assert_eq!(seen, (1..=40).collect::<Vec<_>>());
        assert_eq!(recovery.truncated_bytes, 0);
        // Reopened, it writes on at the frames' end, over the zeros.
        let log = open(dir.path());
        append(&log, 41..=45);
        log.close();
        assert_eq!(read_back(dir.path(), false).0, (1..=45).collect::<Vec<_>>());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    }

    /// A crash mid-write over zeros leaves the frame's start and zeros where its end was:
    /// recovery zeroes the damage in place (the zeros ahead stay), and the log goes on.
    #[test]
    fn a_frame_torn_over_zeros_is_zeroed_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (path, ends) = written(dir.path(), 1..=5);
        let (kept, torn_end) = (ends[3].1, ends[4].1);
        // The payload (the lsn's 8 bytes) never landed; the header did.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0; 8], torn_end - 8).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        let (seen, recovery) = read_back(dir.path(), false);
        assert_eq!(seen, vec![1, 2, 3, 4]);
        // Counted up to the last nonzero byte: the header's length, CRC and the lsn's low byte.
        assert_eq!(torn_end - 8 - kept, FRAME_HEADER_BYTES as u64);
        assert_eq!(recovery.truncated_bytes, 9);
        let (seen, _) = read_back(dir.path(), true);
        assert_eq!(seen, vec![1, 2, 3, 4]);
        assert!(bytes_from(&path, kept).iter().all(|byte| *byte == 0));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        let log = open(dir.path());
        append(&log, 5..=7);
        log.close();
        let (seen, recovery) = read_back(dir.path(), false);
        assert_eq!(seen, (1..=7).collect::<Vec<_>>());
        assert_eq!(recovery.truncated_bytes, 0);
    }

    /// Garbage beyond the zeros is damage too (counted up to its last byte), and a valid
    /// frame of a later record out there is corruption, not a torn tail.
    #[test]
    fn bytes_beyond_the_zeros_are_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (path, ends) = written(dir.path(), 1..=3);
        let end = ends.last().unwrap().1;
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xAB; 40], end + 100).unwrap();
        let (seen, recovery) = read_back(dir.path(), true);
        assert_eq!(seen, vec![1, 2, 3]);
        assert_eq!(recovery.truncated_bytes, 140);
        assert_eq!(read_back(dir.path(), false).1.truncated_bytes, 0);
        let mut frame = Vec::new();
        encode_frame(&mut frame, 5, &5u64.to_le_bytes());
        file.write_all_at(&frame, end + 100).unwrap();
        assert!(matches!(
            recover(dir.path(), false, |_, _| Ok(())),
            Err(Error::Corrupt(_))
        ));
    }

    /// A segment that is not the last may end in zeros too; a truncation that removes the
    /// whole newer segment resumes the older one at its frames' end, not at its length.
    #[test]
    fn a_truncation_resumes_an_older_segment_at_its_frames_end() {
        let dir = tempfile::tempdir().unwrap();
        let write_segment = |first: u64, lsns: std::ops::RangeInclusive<u64>, zeros: usize| {
            let mut bytes = Vec::new();
            for lsn in lsns {
                encode_frame(&mut bytes, lsn, &lsn.to_le_bytes());
            }
            bytes.resize(bytes.len() + zeros, 0);
            std::fs::write(segment_path(dir.path(), first), bytes).unwrap();
        };
        write_segment(1, 1..=5, 4096);
        write_segment(6, 6..=10, 0);
        assert_eq!(read_back(dir.path(), false).0, (1..=10).collect::<Vec<_>>());
        let log = open(dir.path());
        run(&log, |done| Op::Truncate { from: 6, done }).unwrap();
        append(&log, 6..=7);
        log.close();
        let (seen, recovery) = read_back(dir.path(), false);
        assert_eq!(seen, (1..=7).collect::<Vec<_>>());
        assert_eq!(recovery.truncated_bytes, 0);
    }

    /// Hints are written over each other in place (never truncated): a smaller index after
    /// a larger one, and an empty hint after both, still read back as the last one written.
    #[test]
    fn a_hint_written_in_place_reads_back_as_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        let save = |bytes: Vec<u8>| {
            run(&log, |done| Op::SaveHint {
                name: COMMITTED_FILE,
                bytes,
                done,
            })
            .unwrap()
        };
        save(committed_hint(u64::MAX, u64::MAX, u64::MAX));
        assert_eq!(
            read_committed_hint(dir.path()).unwrap(),
            Some((u64::MAX, u64::MAX, u64::MAX))
        );
        save(committed_hint(2, 1, 5));
        assert_eq!(read_committed_hint(dir.path()).unwrap(), Some((2, 1, 5)));
        let on_disk = std::fs::read(dir.path().join(COMMITTED_FILE)).unwrap();
        assert_eq!(on_disk.len(), COMMITTED_HINT_BYTES);
        save(Vec::new());
        assert_eq!(read_committed_hint(dir.path()).unwrap(), None);
        save(committed_hint(3, 1, 9));
        log.close();
        assert_eq!(read_committed_hint(dir.path()).unwrap(), Some((3, 1, 9)));
    }

    /// A follower installs two snapshots beyond its log in a row (the second before any
    /// append): the log must go on at the second one, with no leftover segment of the first
    /// that reads as a hole (it was "segment 113 where lsn 110 is next" in the simulator).
    #[test]
    fn purges_beyond_the_log_twice_leave_no_hole() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        append(&log, 1..=75);
        run(&log, |done| Op::Purge { through: 109, done }).unwrap();
        run(&log, |done| Op::Purge { through: 112, done }).unwrap();
        append(&log, 113..=131);
        log.close();
        let mut seen = Vec::new();
        let (recovery, _) = recover(dir.path(), false, |lsn, _| {
            seen.push(lsn.0);
            Ok(())
        })
        .expect("the log reads back whole");
        assert_eq!(seen, (113..=131).collect::<Vec<_>>());
        assert_eq!(recovery.next_lsn, 132);
        let log = open(dir.path());
        append(&log, 132..=132);
        log.close();
    }

    /// A data dir that an older writer left with an empty segment before the log's first
    /// record reads whole, and opening it for writing removes the empty segment.
    #[test]
    fn an_empty_leading_segment_is_no_hole() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        append(&log, 113..=120);
        log.close();
        File::create(segment_path(dir.path(), 110)).unwrap();
        let (recovery, _) = recover(dir.path(), false, |_, _| Ok(())).expect("reads whole");
        assert_eq!((recovery.first_lsn, recovery.next_lsn), (113, 121));
        assert!(
            segment_path(dir.path(), 110).exists(),
            "an audit changes nothing"
        );
        let log = open(dir.path());
        append(&log, 121..=121);
        log.close();
        assert!(!segment_path(dir.path(), 110).exists());
    }
}
