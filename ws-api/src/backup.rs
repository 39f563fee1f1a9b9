//! `panshi backup` and `panshi restore`: an online, consistent copy of a running node's
//! state (a snapshot bundle: the snapshot and the cold tables of archived orders it names,
//! checked before it is kept), and a new data dir made from one.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

/// How long a backup may take to arrive.
pub const BACKUP_TIMEOUT_SECS: u64 = 3_600;

pub fn backup(url: &str, to: &Path, token: &str) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = runtime
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(fetch(url, to, token)));
    match result {
        Ok((orders, cards, through)) => {
            println!("backup: {orders} orders, {cards} cards, through {through}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("panshi backup: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn fetch(url: &str, to: &Path, token: &str) -> anyhow::Result<(u64, u64, u64)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(BACKUP_TIMEOUT_SECS))
        .build()?;
    let base = url.trim_end_matches('/');
    let response = client
        .get(format!("{base}/api/v1/admin/backup"))
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("asking {base} for a backup"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        anyhow::bail!("{base} answered {status}: {body}");
    }
    let partial = to.with_extension("partial");
    let kept = keep(response, &partial, to).await;
    if kept.is_err() {
        // A copy that did not arrive whole must not take the disk it filled.
        let _ = std::fs::remove_file(&partial);
    }
    let storage::snapshot::Loaded { header, state, .. } = kept?;
    Ok((state.orders_count(), state.cards_count(), header.last_index))
}

/// Writes the answer to `partial`, checks it whole (unpacked beside it: every checksum, the
/// decoding, every invariant, every archived order), and only then gives it the name `to`.
async fn keep(
    mut response: reqwest::Response,
    partial: &Path,
    to: &Path,
) -> anyhow::Result<storage::snapshot::Loaded> {
    let writing = || format!("writing {}", partial.display());
    let mut file = std::fs::File::create(partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    while let Some(chunk) = response.chunk().await.context("receiving the backup")? {
        file.write_all(&chunk).with_context(writing)?;
    }
    file.sync_all().with_context(writing)?;
    drop(file);
    let checked = check(partial).with_context(|| format!("checking {}", partial.display()))?;
    std::fs::rename(partial, to)?;
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(checked)
}

/// Unpacks a bundle into a scratch data dir beside it, reads it back whole, and removes the
/// scratch dir.
fn check(bundle: &Path) -> anyhow::Result<storage::snapshot::Loaded> {
    let scratch = bundle.with_extension("checking");
    let _ = std::fs::remove_dir_all(&scratch);
    let checked = storage::bundle::unpack_checked(bundle, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(checked?)
}

pub fn restore(from: &Path, data: &Path, node_id: u64) -> ExitCode {
    match replication::restore(from, data, node_id) {
        Ok((orders, cards, through)) => {
            println!(
                "restore: {orders} orders, {cards} cards, through {through}, into {} as node {node_id}",
                data.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!(
                "panshi restore: {error} ({} is left as it was)",
                data.display()
            );
            ExitCode::FAILURE
        }
    }
}
