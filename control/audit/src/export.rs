//! Hourly export of closed hours (storage §8.7) to a directory or an S3-compatible bucket
//! ([`crate::objects`]), in the layout of [`crate::verify::export`]: the rows ingested in each
//! hour as one Parquet object with OCSF and chain columns ([`crate::verify::object`]), its
//! manifest, and the anchors retention recorded in that hour. An hour is exported once
//! `now ≥ hour + 1 h + AUDIT_EXPORT_GRACE_SECS`; the watermark then advances; an hour without
//! rows only advances it.
//!
//! The object is spooled to a file row group by row group (the encoding runs on the blocking
//! pool), synced, and then created once in the store: linked into a directory, or uploaded
//! with `If-None-Match: *`. An object already there means an overlapping leader exported the
//! hour; it is never overwritten. The manifest is created before its object, so an object is
//! never seen without one.

use std::{io::BufWriter, path::Path, sync::atomic::Ordering, time::Duration};

use bytes::Bytes;
use chrono::{DateTime, DurationRound, Utc};
use control_store::{
    audit::{partitions, rows},
    zone::cross_zone_read,
};

use crate::{
    metrics::Metrics,
    objects::{Body, ObjectStore, ObjectStoreError, Put},
    verify::{
        AuditRow,
        export::{AnchorRecord, ManifestBuilder, anchors_name, manifest_name, object_name},
        object::{ObjectError, ObjectWriter, ROW_GROUP_ROWS},
    },
};

/// The export watermark's name (kept from the spec, which exports Parquet).
pub const WATERMARK: &str = "parquet-hourly";
/// Rows per read.
const PAGE: i64 = 2000;

/// An export failed; the hour is retried at the next tick.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] control_store::StoreError),
    /// Spooling the object failed.
    #[error("export spool: {0}")]
    Io(#[from] std::io::Error),
    /// The object could not be encoded.
    #[error("export object: {0}")]
    Object(#[from] ObjectError),
    /// The store refused or failed.
    #[error("export store: {0}")]
    Objects(#[from] ObjectStoreError),
    /// A manifest or anchor file could not be serialised.
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
    store: &ObjectStore,
    spool: Option<&Path>,
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
        let rows = export_hour(pool, store, spool, hour).await?;
        let mut conn = pool.acquire().await?;
        partitions::advance_watermark(&mut conn, WATERMARK, hour).await?;
        metrics.hours_exported.fetch_add(1, Ordering::Relaxed);
        metrics.rows_exported.fetch_add(rows, Ordering::Relaxed);
        exported += 1;
        hour += hour_len;
    }
    Ok(exported)
}

/// The spooled object: a temporary file (removed on drop) behind the Parquet writer.
type Spool = ObjectWriter<BufWriter<std::fs::File>>;

/// Writes hour `hour`'s object, manifest and anchors (when it has any); returns the rows
/// written (0 when the object was already there).
async fn export_hour(
    pool: &sqlx::PgPool,
    store: &ObjectStore,
    spool: Option<&Path>,
    hour: DateTime<Utc>,
) -> Result<u64, ExportError> {
    let end = hour + chrono::Duration::hours(1);
    let spool_dir = store.spool_dir(spool);
    tokio::fs::create_dir_all(&spool_dir).await?;
    // The object is linked into a directory store as it is: the mode of the other files
    // (0644 less the umask) rather than the temporary file's 0600.
    let (file, spooled) = tempfile::Builder::new()
        .prefix(".export-")
        .suffix(".tmp")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(&spool_dir)?
        .into_parts();
    let mut writer = ObjectWriter::new(BufWriter::new(file))?;
    let mut group: Vec<AuditRow> = Vec::with_capacity(ROW_GROUP_ROWS);
    let mut manifest = ManifestBuilder::new();
    let mut read = cross_zone_read(pool).await?;
    let mut after: Option<rows::Cursor> = None;
    let mut count = 0u64;
    loop {
        let page = rows::ingested_between(&mut read, hour, end, after.as_ref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.zone_id.clone(), last.chain_seq));
        let full = page.len() == usize::try_from(PAGE).unwrap_or(usize::MAX);
        for stored in page {
            let row = AuditRow::from(stored);
            manifest.add(&row);
            group.push(row);
            count += 1;
        }
        if group.len() >= ROW_GROUP_ROWS {
            writer = write_group(writer, std::mem::take(&mut group)).await?;
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
        let writer = write_group(writer, group).await?;
        let sha = blocking(move || {
            let (sink, sha) = writer.finish()?;
            let file = sink
                .into_inner()
                .map_err(std::io::IntoInnerError::into_error)?;
            file.sync_all()?;
            Ok(sha)
        })
        .await?;
        let object = object_name(hour);
        let manifest = serde_json::to_vec_pretty(&manifest.finish(sha))?;
        store
            .put_once(&manifest_name(&object), Body::Bytes(Bytes::from(manifest)))
            .await?;
        if store.put_once(&object, Body::File(&spooled)).await? == Put::Existed {
            tracing::info!(
                object,
                "audit hour already exported (by an overlapping leader); left as it is"
            );
            count = 0;
        }
    }
    drop(spooled);
    if !anchors.is_empty() {
        store
            .put_once(
                &anchors_name(hour),
                Body::Bytes(Bytes::from(serde_json::to_vec_pretty(&anchors)?)),
            )
            .await?;
    }
    Ok(count)
}

/// Encodes one row group on the blocking pool.
async fn write_group(mut writer: Spool, rows: Vec<AuditRow>) -> Result<Spool, ExportError> {
    blocking(move || {
        writer.write_group(&rows)?;
        Ok(writer)
    })
    .await
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ExportError> + Send + 'static,
) -> Result<T, ExportError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_cancelled| ExportError::Io(std::io::ErrorKind::Interrupted.into()))?
}
