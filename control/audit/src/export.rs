//! Hourly export of closed hours to a directory (storage §8.7), in the layout of
//! [`crate::verify::export`]: the rows ingested in each hour, one JSON line per row with every
//! chain column, a manifest, and the anchors retention recorded in that hour. An hour is
//! exported once `now ≥ hour + 1 h + AUDIT_EXPORT_GRACE_SECS`; the watermark then advances;
//! an hour without rows only advances it.
//!
//! Objects are written to a temporary file, synced, and linked into place with a call that
//! fails when the name exists: an object already there means the hour was exported (by an
//! overlapping leader), and it is never overwritten. Objects are NDJSON rather than Parquet
//! (decision 0028).

use std::{
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::Duration,
};

use chrono::{DateTime, DurationRound, Utc};
use control_store::{
    audit::{partitions, rows},
    zone::cross_zone_read,
};
use tokio::io::AsyncWriteExt;

use crate::{
    metrics::Metrics,
    verify::{
        AuditRow,
        export::{
            AnchorRecord, ManifestBuilder, anchors_name, manifest_name, object_name, to_line,
        },
    },
};

/// The export watermark's name (kept from the spec, which exports Parquet).
pub const WATERMARK: &str = "parquet-hourly";
/// Rows per read.
const PAGE: i64 = 1000;

/// An export failed; the hour is retried at the next tick.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] control_store::StoreError),
    /// Writing a file failed.
    #[error("export I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A row could not be serialised.
    #[error("export serialisation: {0}")]
    Serialise(#[from] serde_json::Error),
}

impl From<sqlx::Error> for ExportError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(error.into())
    }
}

/// Exports every closed hour after the watermark (missing watermark: starts at the last
/// complete hour). Returns the hours exported.
///
/// # Errors
///
/// [`ExportError`]; the watermark stays at the last hour fully written.
pub async fn run_due(
    pool: &sqlx::PgPool,
    dir: &Path,
    grace: Duration,
    metrics: &Metrics,
    now: DateTime<Utc>,
) -> Result<u32, ExportError> {
    let hour_len = chrono::Duration::hours(1);
    // AUDIT_EXPORT_GRACE_SECS is at most a day; a value chrono cannot hold waits a day.
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::days(1));
    let this_hour = now.duration_trunc(hour_len).unwrap_or(now);
    let mut hour = {
        let mut conn = pool.acquire().await?;
        match partitions::watermark(&mut conn, WATERMARK).await? {
            Some(last) => last + hour_len,
            None => this_hour - hour_len,
        }
    };
    let mut exported = 0;
    while now >= hour + hour_len + grace {
        let rows = export_hour(pool, dir, hour).await?;
        let mut conn = pool.acquire().await?;
        partitions::advance_watermark(&mut conn, WATERMARK, hour).await?;
        metrics.hours_exported.fetch_add(1, Ordering::Relaxed);
        metrics.rows_exported.fetch_add(rows, Ordering::Relaxed);
        exported += 1;
        hour += hour_len;
    }
    Ok(exported)
}

/// Writes hour `hour`'s object, manifest and anchors (when it has any); returns its rows.
async fn export_hour(
    pool: &sqlx::PgPool,
    dir: &Path,
    hour: DateTime<Utc>,
) -> Result<u64, ExportError> {
    let end = hour + chrono::Duration::hours(1);
    let mut read = cross_zone_read(pool).await?;
    let mut body = Vec::new();
    let mut manifest = ManifestBuilder::new();
    let mut after: Option<rows::Cursor> = None;
    let mut count = 0u64;
    loop {
        let page = rows::ingested_between(&mut read, hour, end, after.as_ref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.zone_id.clone(), last.chain_seq));
        let full = page.len() == usize::try_from(PAGE).unwrap_or(usize::MAX);
        for stored in page {
            let row = AuditRow::from(stored);
            let line = to_line(&row)?;
            manifest.add_line(&line, &row);
            body.extend_from_slice(&line);
            count += 1;
        }
        if !full {
            break;
        }
    }
    let anchors: Vec<AnchorRecord> = rows::anchors_recorded_between(&mut read, hour, end)
        .await?
        .into_iter()
        .map(AnchorRecord::from)
        .collect();
    read.finish().await?;
    if count > 0 {
        let object = object_name(hour);
        let manifest = serde_json::to_vec_pretty(&manifest.finish())?;
        // The manifest goes first: an object is only ever seen with its manifest present.
        write_once(&dir.join(manifest_name(&object)), &manifest).await?;
        write_once(&dir.join(&object), &body).await?;
    }
    if !anchors.is_empty() {
        write_once(
            &dir.join(anchors_name(hour)),
            &serde_json::to_vec_pretty(&anchors)?,
        )
        .await?;
    }
    Ok(count)
}

/// Creates `path` with `bytes` unless it exists: temporary file, sync, hard link (which
/// refuses an existing name), unlink of the temporary name, sync of the directory.
async fn write_once(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let parent = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    tokio::fs::create_dir_all(&parent).await?;
    if tokio::fs::try_exists(path).await? {
        return Ok(());
    }
    let temporary = parent.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let mut file = tokio::fs::File::create(&temporary).await?;
    file.write_all(bytes).await?;
    file.sync_all().await?;
    drop(file);
    let linked = tokio::fs::hard_link(&temporary, path).await;
    tokio::fs::remove_file(&temporary).await?;
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    tokio::fs::File::open(&parent).await?.sync_all().await?;
    Ok(())
}
