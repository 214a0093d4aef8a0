//! Partition upkeep (storage §5.2, §5.3) through the SECURITY DEFINER functions of
//! migration 0008, the export watermark, and the leader locks of the audit service.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// Creates the partitions for the month of `now` and the `ahead` following months; returns
/// how many were created.
///
/// # Errors
///
/// Database errors.
pub async fn ensure(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    ahead: i32,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT caracal_audit_ensure_partitions($1, $2)")
        .bind(now)
        .bind(ahead)
        .fetch_one(conn)
        .await
}

/// Drops the monthly partitions entirely before `cutoff` (and, when `exported_through` is
/// set, exported); returns their names.
///
/// # Errors
///
/// Database errors.
pub async fn drop_before(
    conn: &mut PgConnection,
    cutoff: DateTime<Utc>,
    exported_through: Option<DateTime<Utc>>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT caracal_audit_drop_partitions($1, $2)")
        .bind(cutoff)
        .bind(exported_through)
        .fetch_all(conn)
        .await
}

/// The monthly partitions that exist, oldest first.
///
/// # Errors
///
/// Database errors.
pub async fn names(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'caracal.audit_events'::regclass
            AND c.relname ~ '^audit_events_y[0-9]{4}m[0-9]{2}$'
          ORDER BY c.relname",
    )
    .fetch_all(conn)
    .await
}

/// Tries to take session-level advisory lock `key` on this connection.
///
/// # Errors
///
/// Database errors.
pub async fn try_lock(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(conn)
        .await
}

/// Checks that the leader connection still works (a broken one has lost its locks).
///
/// # Errors
///
/// Database errors.
pub async fn ping(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(conn).await?;
    Ok(())
}

/// The export watermark `name`: the start of the last exported hour.
///
/// # Errors
///
/// Database errors.
pub async fn watermark(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let row: Option<Option<DateTime<Utc>>> =
        sqlx::query_scalar("SELECT last_exported_hour FROM audit_export_watermark WHERE name = $1")
            .bind(name)
            .fetch_optional(conn)
            .await?;
    Ok(row.flatten())
}

/// Advances watermark `name` to `hour` (never backwards).
///
/// # Errors
///
/// Database errors.
pub async fn advance_watermark(
    conn: &mut PgConnection,
    name: &str,
    hour: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_export_watermark (name, last_exported_hour, updated_at)
         VALUES ($1, $2, now())
         ON CONFLICT (name) DO UPDATE
            SET last_exported_hour = greatest(audit_export_watermark.last_exported_hour, $2),
                updated_at = now()",
    )
    .bind(name)
    .bind(hour)
    .execute(conn)
    .await?;
    Ok(())
}
