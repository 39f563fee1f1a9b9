//! The durable truth: an append-only log of checksummed frames in numbered segment files,
//! written by one thread with group commit and `fdatasync`.
//!
//! Frame: `len: u32 | crc32: u32 | lsn: u64 | payload[len]`, little-endian; the CRC covers
//! the lsn and the payload. Segment files are named by the first lsn they hold.
//!
//! Shaped for replication later: appends are acknowledged through a durability sink, and the
//! log can `truncate` an uncommitted suffix, `purge` a prefix that a snapshot covers, and
//! persist a vote.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::{Mutex, RwLock};

use crate::Error;

/// Frame header: length, CRC, lsn.
pub const FRAME_HEADER_BYTES: usize = 16;
/// Largest payload of one record.
pub const RECORD_BYTES_MAX: usize = 32 * 1024 * 1024;
/// A segment is closed and a new one begun past this size.
pub const SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Records waiting for the writer; a full queue refuses appends at once (back-pressure).
pub const APPEND_QUEUE_CAPACITY: usize = 65_536;
/// Most records written and synced as one group.
pub const GROUP_RECORDS_MAX: usize = 8_192;
const _: () = assert!(GROUP_RECORDS_MAX <= APPEND_QUEUE_CAPACITY);
const _: () = assert!((RECORD_BYTES_MAX as u64) < SEGMENT_BYTES_MAX);

/// A log sequence number: 1 for the first record, rising by one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// A group of records made durable together, in lsn order, each with its caller's tag.
pub struct DurableGroup<T> {
    pub result: Result<(), Error>,
    pub records: Vec<(Lsn, T)>,
}

struct Append<T> {
    payload: Vec<u8>,
    tag: T,
}

/// Test-only fault: makes the next sync fail, to prove failures are sticky.
#[derive(Default)]
pub struct Faults {
    pub fail_next_sync: AtomicBool,
}

/// The writing half of an open log.
pub struct Log<T: Send + 'static> {
    /// `None` once closed.
    sender: RwLock<Option<Sender<Append<T>>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    failed: Arc<AtomicBool>,
    pub faults: Arc<Faults>,
}

/// What recovery found.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    pub last_lsn: u64,
    pub records_count: u64,
    /// Bytes cut from the tail of the last segment: a torn or corrupted, unacknowledged write.
    pub truncated_bytes: u64,
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

/// Reads every record in lsn order and hands it to `visit`. A damaged tail of the last
/// segment (torn write) is cut off when `repair` is set and only reported otherwise; damage
/// anywhere else is `Error::Corrupt`.
pub fn recover(
    dir: &Path,
    repair: bool,
    mut visit: impl FnMut(Lsn, &[u8]) -> Result<(), Error>,
) -> Result<Recovery, Error> {
    if repair {
        crate::private::create_dir(dir)?;
    } else if !dir.exists() {
        // Read-only (audit): a missing log is an empty one, and is not created.
        return Ok(Recovery::default());
    }
    let segments = list_segments(dir)?;
    let mut recovery = Recovery::default();
    let mut expected = segments.first().map_or(1, |(first, _)| *first);
    for (index, (first, path)) in segments.iter().enumerate() {
        if *first != expected {
            return Err(Error::Corrupt(format!(
                "segment {first} follows lsn {}",
                expected - 1
            )));
        }
        let mut bytes = Vec::new();
        File::open(path)?.read_to_end(&mut bytes)?;
        let mut offset = 0;
        while offset < bytes.len() {
            match frame_at(&bytes, offset) {
                Some((lsn, range)) if lsn == expected => {
                    visit(Lsn(lsn), &bytes[range.clone()])?;
                    expected += 1;
                    recovery.records_count += 1;
                    offset = range.end;
                }
                _ => break,
            }
        }
        if offset < bytes.len() {
            let last = index + 1 == segments.len();
            if !last || valid_frame_beyond(&bytes, offset, expected - 1) {
                return Err(Error::Corrupt(format!(
                    "{}: damaged frame at byte {offset} before acknowledged records",
                    path.display()
                )));
            }
            recovery.truncated_bytes = (bytes.len() - offset) as u64;
            if repair {
                let file = OpenOptions::new().write(true).open(path)?;
                file.set_len(offset as u64)?;
                file.sync_all()?;
                // Bytes leave the data dir here: an operator at `warn` must see it.
                tracing::warn!(
                    segment = %path.display(),
                    truncated_bytes = recovery.truncated_bytes,
                    last_lsn_kept = expected - 1,
                    kept_bytes = offset,
                    "cut a torn tail from the log: {} bytes after lsn {} (never acknowledged)",
                    recovery.truncated_bytes,
                    expected - 1
                );
            }
        }
    }
    recovery.last_lsn = expected - 1;
    Ok(recovery)
}

struct Writer<T> {
    dir: PathBuf,
    file: File,
    segment_bytes: u64,
    next_lsn: u64,
    buffer: Vec<u8>,
    receiver: Receiver<Append<T>>,
    sink: Sender<DurableGroup<T>>,
    failed: Arc<AtomicBool>,
    faults: Arc<Faults>,
}

fn open_segment(dir: &Path, first_lsn: u64) -> Result<(File, u64), Error> {
    let path = segment_path(dir, first_lsn);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(crate::private::FILE_MODE)
        .open(&path)?;
    let len = file.metadata()?.len();
    File::open(dir)?.sync_all()?;
    Ok((file, len))
}

impl<T: Send + 'static> Writer<T> {
    fn run(mut self) {
        let mut group: Vec<Append<T>> = Vec::with_capacity(GROUP_RECORDS_MAX);
        while let Ok(first) = self.receiver.recv() {
            group.push(first);
            while group.len() < GROUP_RECORDS_MAX {
                match self.receiver.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            let first_lsn = self.next_lsn;
            let result = if self.failed.load(Ordering::Acquire) {
                Err(Error::LogFailed)
            } else {
                self.write_group(&group)
            };
            if result.is_err() {
                self.failed.store(true, Ordering::Release);
            }
            let records = group
                .drain(..)
                .enumerate()
                .map(|(i, append)| (Lsn(first_lsn + i as u64), append.tag))
                .collect();
            if self.sink.send(DurableGroup { result, records }).is_err() {
                return;
            }
        }
    }

    fn write_group(&mut self, group: &[Append<T>]) -> Result<(), Error> {
        if self.segment_bytes >= SEGMENT_BYTES_MAX {
            let (file, len) = open_segment(&self.dir, self.next_lsn)?;
            self.file = file;
            self.segment_bytes = len;
        }
        self.buffer.clear();
        for append in group {
            encode_frame(&mut self.buffer, self.next_lsn, &append.payload);
            self.next_lsn += 1;
        }
        self.file.write_all(&self.buffer)?;
        if self.faults.fail_next_sync.swap(false, Ordering::AcqRel) {
            return Err(Error::Io(std::io::Error::other("injected sync failure")));
        }
        self.file.sync_data()?;
        self.segment_bytes += self.buffer.len() as u64;
        Ok(())
    }
}

impl<T: Send + 'static> Log<T> {
    /// Starts the writer after `recover` has read (and repaired) the log up to `last_lsn`.
    /// Durable groups go to `sink`, in lsn order.
    pub fn start(dir: &Path, last_lsn: u64, sink: Sender<DurableGroup<T>>) -> Result<Self, Error> {
        let segments = list_segments(dir)?;
        let first = segments.last().map_or(last_lsn + 1, |(first, _)| *first);
        let (file, segment_bytes) = open_segment(dir, first)?;
        let (sender, receiver) = crossbeam_channel::bounded(APPEND_QUEUE_CAPACITY);
        let failed = Arc::new(AtomicBool::new(false));
        let faults = Arc::new(Faults::default());
        let writer = Writer {
            dir: dir.to_owned(),
            file,
            segment_bytes,
            next_lsn: last_lsn + 1,
            buffer: Vec::with_capacity(1 << 20),
            receiver,
            sink,
            failed: failed.clone(),
            faults: faults.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer.run())?;
        Ok(Self {
            sender: RwLock::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
            failed,
            faults,
        })
    }

    /// Queues a record. Its durability (or failure) arrives at the sink with `tag`.
    /// The caller must append in the order it wants records logged.
    pub fn append(&self, payload: Vec<u8>, tag: T) -> Result<(), Error> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::LogFailed);
        }
        if payload.len() > RECORD_BYTES_MAX {
            return Err(Error::RecordTooLarge(payload.len()));
        }
        let sender = self.sender.read();
        let sender = sender.as_ref().ok_or(Error::Closed)?;
        match sender.try_send(Append { payload, tag }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Error::Busy),
            Err(TrySendError::Disconnected(_)) => Err(Error::Closed),
        }
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Records queued or written but not yet drained, approximately.
    pub fn queued_count(&self) -> usize {
        self.sender.read().as_ref().map_or(0, Sender::len)
    }

    /// Stops accepting appends, lets the writer finish everything queued, and waits for it.
    pub fn close(&self) {
        self.sender.write().take();
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
    }
}

impl<T: Send + 'static> Drop for Log<T> {
    fn drop(&mut self) {
        self.close();
    }
}

/// Cuts every record above `keep_through` (for a replica whose suffix was not committed).
/// Only on a closed log.
pub fn truncate_after(dir: &Path, keep_through: u64) -> Result<(), Error> {
    for (first, path) in list_segments(dir)?.into_iter().rev() {
        if first > keep_through {
            fs::remove_file(&path)?;
            continue;
        }
        let mut bytes = Vec::new();
        File::open(&path)?.read_to_end(&mut bytes)?;
        let mut offset = 0;
        while let Some((lsn, range)) = frame_at(&bytes, offset) {
            if lsn > keep_through {
                break;
            }
            offset = range.end;
        }
        let file = OpenOptions::new().write(true).open(&path)?;
        file.set_len(offset as u64)?;
        file.sync_all()?;
        break;
    }
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Deletes whole segments whose records all lie at or below `through` (a snapshot covers
/// them). The newest segment is always kept.
pub fn purge_through(dir: &Path, through: u64) -> Result<usize, Error> {
    let segments = list_segments(dir)?;
    let mut removed = 0;
    for pair in segments.windows(2) {
        let (_, path) = &pair[0];
        let (next_first, _) = pair[1];
        if next_first - 1 <= through {
            fs::remove_file(path)?;
            removed += 1;
        }
    }
    File::open(dir)?.sync_all()?;
    Ok(removed)
}

/// A persisted vote (term and candidate), written atomically: for replication.
pub fn save_vote(dir: &Path, term: u64, voted_for: u64) -> Result<(), Error> {
    let temporary = dir.join("vote.tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(crate::private::FILE_MODE)
        .open(&temporary)?;
    let mut bytes = Vec::with_capacity(20);
    bytes.extend_from_slice(&term.to_le_bytes());
    bytes.extend_from_slice(&voted_for.to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
    file.write_all(&bytes)?;
    file.sync_all()?;
    fs::rename(&temporary, dir.join("vote"))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

pub fn load_vote(dir: &Path) -> Result<Option<(u64, u64)>, Error> {
    let bytes = match fs::read(dir.join("vote")) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if bytes.len() != 20 || crc32fast::hash(&bytes[..16]).to_le_bytes() != bytes[16..20] {
        return Err(Error::Corrupt("vote file".into()));
    }
    let term = u64::from_le_bytes(bytes[0..8].try_into().unwrap());
    let voted_for = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    Ok(Some((term, voted_for)))
}

/// Where each record of the newest segment ends: `(lsn, end offset)`, plus that segment's
/// path. For fault injection (the simulator cuts or tears the tail at a chosen record).
pub fn tail_frames(dir: &Path) -> Result<Option<(PathBuf, Vec<(u64, u64)>)>, Error> {
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
