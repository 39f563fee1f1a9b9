//! The data dir is the owner's alone: directories 0700, files 0600. It holds sealed keys,
//! token digests, contacts and the operators' audit trail; nobody else on the machine has a
//! reason to read it. New files are created owner-only; what an older version (or sled,
//! which follows the umask) created more openly is tightened at open.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Mode of every directory in the data dir.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file in the data dir.
pub const FILE_MODE: u32 = 0o600;
/// Deepest directory nesting walked when tightening (sled nests two levels).
const DEPTH_MAX: usize = 8;

/// Creates `dir` (and its missing parents) owner-only, or tightens it when it exists.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
}

/// Creates (or truncates) the file at `path`, owner-only, for writing.
pub fn create_file(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Tightens `dir` and everything in it: directories 0700, files 0600.
pub fn restrict_tree(dir: &Path) -> io::Result<()> {
    restrict(dir, 0)
}

fn restrict(dir: &Path, depth: usize) -> io::Result<()> {
    fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))?;
    if depth >= DEPTH_MAX {
        return Ok(());
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            restrict(&entry.path(), depth + 1)?;
        } else if kind.is_file() {
            fs::set_permissions(entry.path(), Permissions::from_mode(FILE_MODE))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_tightened_to_the_owner() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        create_dir(&dir).unwrap();
        let nested = dir.join("state").join("blobs");
        fs::create_dir_all(&nested).unwrap();
        fs::set_permissions(&nested, Permissions::from_mode(0o755)).unwrap();
        let file = nested.join("x");
        fs::write(&file, b"x").unwrap();
        fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        restrict_tree(&dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), DIR_MODE);
        assert_eq!(mode(&nested), DIR_MODE);
        assert_eq!(mode(&file), FILE_MODE);
    }
}
