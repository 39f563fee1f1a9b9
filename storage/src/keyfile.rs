//! A small secret kept in the data dir (the sealing key, when the operator configures
//! none). Created once, durably and atomically (a temporary file, fsync, rename, fsync of
//! the dir) before anything sealed with it can reach the log, readable by the owner only.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The file's text (trimmed), writing `fresh` first when it does not exist.
pub fn load_or_create(path: &Path, fresh: &str) -> io::Result<String> {
    match fs::read_to_string(path) {
        Ok(text) => return Ok(text.trim().to_owned()),
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        Err(_) => {}
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let temporary = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(fresh.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    fs::rename(&temporary, path)?;
    File::open(dir)?.sync_all()?;
    Ok(fresh.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_owner_only_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sealing.key");
        assert_eq!(load_or_create(&path, "first").unwrap(), "first");
        assert_eq!(load_or_create(&path, "second").unwrap(), "first");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!path.with_extension("tmp").exists());
    }
}
