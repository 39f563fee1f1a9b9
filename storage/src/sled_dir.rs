//! sled's directory (`state/` in the data dir): opened for the server, set aside when it
//! cannot be read, and copied for `audit`, which must never write to the dir it checks.
//!
//! sled is derived from the log, so an unreadable sled (a full disk during a restart left
//! `Read corrupted data`) is no reason to refuse to start: it is moved to `state.unreadable`
//! (replacing an older one), said so at WARN, and a fresh one is rebuilt from the log.
//!
//! Invariant: nothing here touches the log; an error that says nothing about sled's own
//! bytes (a full disk, a held lock, a refused permission) is returned, never "repaired".

use std::path::{Path, PathBuf};

use crate::store::{applied_lsn, open_sled, sled_dir, SLED_LOCK_WAIT_MS};
use crate::Error;

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
