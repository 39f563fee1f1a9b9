//! Snapshot bundles: a snapshot and the cold tables it names in one file, for a snapshot that
//! leaves the data dir (sent to a replica, fetched as a backup) and comes back (installed,
//! restored).
//!
//! File: `BUNDLE_MAGIC | tables: u32 | (name_len: u16 | name | len: u64 | table)* |
//! snapshot` (little-endian). Each table and the snapshot carry their own checksums, which
//! unpacking leaves to `snapshot::read` and `Table::open` (a bundle is checked by reading
//! what it unpacked). A file that begins with the snapshot's own magic is a plain snapshot (what
//! versions before archiving sent and backed up): it names no tables.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::snapshot::{self, Loaded, SnapshotHeader, MAGIC};
use crate::{cold, Error};

pub const BUNDLE_MAGIC: &[u8; 8] = b"PANSHIBN";
/// More tables than a snapshot ever names (about log2 of the orders archived).
pub const BUNDLE_TABLES_MAX: u32 = 4_096;
const IO_BUFFER_BYTES: usize = 1 << 20;
/// Where a bundle's snapshot is unpacked in the snapshot directory (not a `.snap`: a start
/// never takes it for the newest snapshot).
const UNPACKED: &str = "unpacked.snapshot";

/// The bundle of the snapshot at `snapshot_path` (in `data_dir`'s snapshot directory), as an
/// open file at its start whose name is already removed: it takes disk space only while it
/// is read (a bundle is as large as the archive). The caller keeps the snapshot and its
/// tables from being removed meanwhile. Returns the snapshot's header too (the snapshot is
/// verified once, here).
pub fn export(data_dir: &Path, snapshot_path: &Path) -> Result<(File, SnapshotHeader), Error> {
    let header = snapshot::verify(snapshot_path)?;
    let temporary = snapshot_path.with_extension("bundle.tmp");
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(crate::private::FILE_MODE)
        .open(&temporary)?;
    let removed = fs::remove_file(&temporary);
    let mut out = BufWriter::with_capacity(IO_BUFFER_BYTES, file);
    removed?;
    out.write_all(BUNDLE_MAGIC)?;
    out.write_all(&(header.cold.len() as u32).to_le_bytes())?;
    let cold_dir = cold::cold_dir(data_dir);
    for name in &header.cold {
        let mut table = File::open(cold_dir.join(name))?;
        out.write_all(&(name.len() as u16).to_le_bytes())?;
        out.write_all(name.as_bytes())?;
        out.write_all(&table.metadata()?.len().to_le_bytes())?;
        std::io::copy(&mut table, &mut out)?;
    }
    std::io::copy(&mut File::open(snapshot_path)?, &mut out)?;
    let mut file = out.into_inner().map_err(|e| Error::Io(e.into_error()))?;
    file.seek(SeekFrom::Start(0))?;
    Ok((file, header))
}

/// Unpacks a bundle (or a plain snapshot) into `data_dir`, each table durable in `cold/`
/// under its own name, its snapshot durable in the snapshot directory, and reads it back
/// (`snapshot::read`: what a start checks). Returns it with where its snapshot file is.
pub fn unpack(bundle: &Path, data_dir: &Path) -> Result<(Loaded, PathBuf), Error> {
    let snapshot_dir = snapshot::snapshot_dir(data_dir);
    crate::private::create_dir(&snapshot_dir)?;
    let unpacked = snapshot_dir.join(UNPACKED);
    import(bundle, &cold::cold_dir(data_dir), &unpacked)?;
    Ok((snapshot::read(&unpacked)?, unpacked))
}

/// `unpack`, then what a backup and a restore check beyond a start: every block of every
/// table, and every invariant over every order, archived ones included. The unpacked
/// snapshot file is removed (its tables stay in `cold/`).
pub fn unpack_checked(bundle: &Path, data_dir: &Path) -> Result<Loaded, Error> {
    let (loaded, unpacked) = unpack(bundle, data_dir)?;
    fs::remove_file(&unpacked)?;
    loaded.archive.verify()?;
    if let Some(violation) = loaded.state.check().into_iter().next() {
        return Err(Error::Corrupt(format!(
            "the state breaks an invariant: {violation}"
        )));
    }
    Ok(loaded)
}

fn import(bundle: &Path, cold_dir: &Path, snapshot_to: &Path) -> Result<(), Error> {
    let corrupt = |what: &str| Error::Corrupt(format!("bundle {}: {what}", bundle.display()));
    let mut input = BufReader::with_capacity(IO_BUFFER_BYTES, File::open(bundle)?);
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic)?;
    if &magic == MAGIC {
        drop(input);
        copy_synced(&mut File::open(bundle)?, snapshot_to)?;
        return Ok(());
    }
    if &magic != BUNDLE_MAGIC {
        return Err(corrupt("neither a bundle nor a snapshot"));
    }
    let tables = u32::from_le_bytes(read_array(&mut input)?);
    if tables > BUNDLE_TABLES_MAX {
        return Err(corrupt("too many tables"));
    }
    crate::private::create_dir(cold_dir)?;
    for _ in 0..tables {
        let name_len = u16::from_le_bytes(read_array(&mut input)?);
        let mut name = vec![0u8; usize::from(name_len)];
        input.read_exact(&mut name)?;
        let name = String::from_utf8(name).map_err(|_| corrupt("a table name is not text"))?;
        if !cold::is_table_name(&name) {
            return Err(corrupt(&format!("a table named {name:?}")));
        }
        let len = u64::from_le_bytes(read_array(&mut input)?);
        let mut table = (&mut input).take(len);
        let written = copy_synced(&mut table, &cold_dir.join(&name))?;
        if written != len {
            return Err(corrupt("cut short"));
        }
    }
    copy_synced(&mut input, snapshot_to)?;
    Ok(())
}

fn read_array<const N: usize>(input: &mut impl Read) -> Result<[u8; N], Error> {
    let mut bytes = [0u8; N];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Copies `from` to `to` through a temporary file, fsync'd and renamed (and the directory
/// fsync'd); returns the bytes copied.
fn copy_synced(from: &mut impl Read, to: &Path) -> Result<u64, Error> {
    let temporary = to.with_extension("unpacking");
    let mut out = crate::private::create_file(&temporary)?;
    let copied = std::io::copy(from, &mut out);
    let copied = match copied.and_then(|n| out.sync_all().map(|()| n)) {
        Ok(copied) => copied,
        Err(error) => {
            let _ = fs::remove_file(&temporary);
            return Err(error.into());
        }
    };
    fs::rename(&temporary, to)?;
    if let Some(dir) = to.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(copied)
}
