//! Free space on the file system that holds the data dir. A full disk stops the log (a
//! failed write is sticky); the server reports itself not ready before that, below a
//! configured threshold, so a balancer and an operator see it coming.

use std::path::Path;

/// Bytes an unprivileged writer may still use on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let stats = rustix::fs::statvfs(path)?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}
