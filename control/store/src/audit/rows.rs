//! Reads of stored ledger rows (storage §8.6, §8.7, §8.9): keyset pages in `(zone_id,
//! chain_seq)` order for the tamper sweep, the offline verifier and the hourly export, single
//! rows and anchors for a window's first row, ids stored more than once, and the admin chain.
//!
//! Pages walk one zone at a time: the next zone is `min(zone_id)` above the current one, and
//! within a zone the rows come from `audit_events_chain_idx (zone_id, chain_seq DESC)` read
//! backwards, so every page is an index range however deep the sweep is. The `jsonb` columns
//! are read as `::text` so the verifier can re-parse them with the ledger's strict parser.
//!
//! Reads run in the caller's transaction: a [`crate::zone::cross_zone_read`] for the audit
//! role, or [`begin_verifier_read`] on the offline verifier's own connection.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, postgres::PgArguments, query::QueryScalar};

/// One `audit_events` row as stored; the three `jsonb` columns as their JSON text.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredAuditRow {
    /// Event id.
    pub id: String,
    /// Zone id.
    pub zone_id: String,
    /// Event type.
    pub event_type: String,
    /// Request id.
    pub request_id: Option<String>,
    /// Decision.
    pub decision: Option<String>,
    /// Policy set id.
    pub policy_set_id: Option<String>,
    /// Policy set version id.
    pub policy_set_version_id: Option<String>,
    /// Manifest digest.
    pub manifest_sha: Option<String>,
    /// Evaluation status.
    pub evaluation_status: Option<String>,
    /// `determining_policies_json::text`.
    pub determining_policies_json: Option<String>,
    /// `diagnostics_json::text`.
    pub diagnostics_json: Option<String>,
    /// `metadata_json::text`.
    pub metadata_json: Option<String>,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// When the ledger chained it.
    pub ingested_at: DateTime<Utc>,
    /// Hash version (1).
    pub hash_version: i16,
    /// Content hash.
    pub content_sha256: Vec<u8>,
    /// The previous row's content hash.
    pub prev_content_sha256: Option<Vec<u8>>,
    /// Position in the zone's chain.
    pub chain_seq: i64,
    /// Chain HMAC.
    pub chain_hmac: Option<Vec<u8>>,
    /// Id of the chain key.
    pub chain_key_id: Option<String>,
    /// Ingest signature.
    pub ingest_signature: Option<Vec<u8>>,
}

/// One `admin_audit_events` row as stored; `payload_json` as its JSON text.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredAdminRow {
    /// Id.
    pub id: String,
    /// Zone (`None`: the global chain `*`).
    pub zone_id: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// Actor id.
    pub actor_id: String,
    /// Actor name.
    pub actor_name: Option<String>,
    /// Actor scope.
    pub actor_scope: Option<String>,
    /// `"METHOD path"`.
    pub action: String,
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Entity type.
    pub entity_type: Option<String>,
    /// Entity id.
    pub entity_id: Option<String>,
    /// Response status.
    pub status_code: i32,
    /// `payload_json::text`.
    pub payload_json: Option<String>,
    /// Time of the action.
    pub occurred_at: DateTime<Utc>,
    /// Hash version (1).
    pub hash_version: i16,
    /// Content hash.
    pub content_sha256: Vec<u8>,
    /// The previous row's content hash.
    pub prev_content_sha256: Option<Vec<u8>>,
    /// Position in the chain.
    pub chain_seq: i64,
    /// Chain HMAC.
    pub chain_hmac: Option<Vec<u8>>,
    /// Id of the chain key.
    pub chain_key_id: Option<String>,
    /// When the row was inserted.
    pub created_at: DateTime<Utc>,
}

/// A chain link kept when retention dropped its row (`audit_chain_anchors`, storage §5.3).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredAnchor {
    /// Zone id.
    pub zone_id: String,
    /// The dropped row's position.
    pub chain_seq: i64,
    /// Its content hash.
    pub content_sha256: Vec<u8>,
    /// Its chain HMAC.
    pub chain_hmac: Option<Vec<u8>>,
    /// Its chain key id.
    pub chain_key_id: Option<String>,
    /// The partition it was in.
    pub partition_name: String,
    /// When the anchor was recorded.
    pub recorded_at: DateTime<Utc>,
}

/// Which rows a page walks. Every bound is optional; the default is every row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowFilter {
    /// Only this zone (for the admin chain: a zone id or `*`).
    pub zone: Option<String>,
    /// Only rows ingested (admin chain: created) at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only rows ingested before this time (the export's hour end; ignored by the admin
    /// chain).
    pub until: Option<DateTime<Utc>>,
    /// Only rows with `chain_seq` at or above this.
    pub from_seq: Option<i64>,
}

/// Where a page ended: the last row's `(zone_id, chain_seq)` (for the admin chain, the chain
/// key `coalesce(zone_id, '*')`). The next page starts after it.
pub type Cursor = (String, i64);

const AUDIT_COLUMNS: &str = "id, zone_id, event_type, request_id, decision, policy_set_id, \
    policy_set_version_id, manifest_sha, evaluation_status, \
    determining_policies_json::text AS determining_policies_json, \
    diagnostics_json::text AS diagnostics_json, metadata_json::text AS metadata_json, \
    occurred_at, ingested_at, hash_version, content_sha256, prev_content_sha256, chain_seq, \
    chain_hmac, chain_key_id, ingest_signature";

const ADMIN_COLUMNS: &str = "id, zone_id, request_id, actor_id, actor_name, actor_scope, action, \
    method, path, entity_type, entity_id, status_code, payload_json::text AS payload_json, \
    occurred_at, hash_version, content_sha256, prev_content_sha256, chain_seq, chain_hmac, \
    chain_key_id, created_at";

/// Opens the offline verifier's transaction on its own connection: one `REPEATABLE READ READ
/// ONLY` snapshot, `caracal.zone_id = '*'` (the audit role's cross-zone read policy),
/// `search_path = caracal` and `jit = off` (as on every service connection, decision 0034),
/// all transaction-local. End it with [`end_verifier_read`].
///
/// # Errors
///
/// Database errors.
pub async fn begin_verifier_read(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
         SELECT set_config('caracal.zone_id', '*', true), \
                set_config('search_path', 'caracal', true), \
                set_config('jit', 'off', true)",
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Ends the transaction of [`begin_verifier_read`] (nothing was written).
///
/// # Errors
///
/// Database errors.
pub async fn end_verifier_read(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql("ROLLBACK").execute(conn).await?;
    Ok(())
}

/// Up to `limit` rows after `after`, ordered by `(zone_id, chain_seq)`, that `filter` admits.
/// Pass the last row's `(zone_id, chain_seq)` of one page as `after` of the next; an empty
/// page is the end.
///
/// # Errors
///
/// Database errors.
pub async fn page(
    conn: &mut PgConnection,
    filter: &RowFilter,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<StoredAuditRow>, sqlx::Error> {
    if limit <= 0 {
        return Ok(Vec::new());
    }
    let mut out: Vec<StoredAuditRow> = Vec::new();
    let mut current: Option<Cursor> = match after {
        Some(cursor) => Some(cursor.clone()),
        None => next_zone(conn, filter, None).await?.map(|zone| (zone, 0)),
    };
    while let Some((zone, after_seq)) = current {
        let want = limit.saturating_sub(i64::try_from(out.len()).unwrap_or(i64::MAX));
        let mut floor = filter
            .from_seq
            .map_or(after_seq, |from| after_seq.max(from.saturating_sub(1)));
        if after_seq == 0 && filter.since.is_some() {
            // A zone's first page of a time window starts at the window's first row, not at
            // the zone's first row: the rows before it are the zone's whole history.
            if let Some(first) = first_seq_in_window(conn, &zone, filter).await? {
                floor = floor.max(first.saturating_sub(1));
            }
        }
        out.extend(zone_rows(conn, &zone, floor, filter, want).await?);
        if i64::try_from(out.len()).unwrap_or(i64::MAX) >= limit {
            break;
        }
        current = next_zone(conn, filter, Some(&zone))
            .await?
            .map(|next| (next, 0));
    }
    Ok(out)
}

/// The rows ingested in `[from, to)`, after `after`, ordered by `(zone_id, chain_seq)`: the
/// hourly export's pages.
///
/// # Errors
///
/// Database errors.
pub async fn ingested_between(
    conn: &mut PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<StoredAuditRow>, sqlx::Error> {
    let filter = RowFilter {
        since: Some(from),
        until: Some(to),
        ..RowFilter::default()
    };
    page(conn, &filter, after, limit).await
}

/// The zone after `after` (the first when `None`) that holds rows `filter` admits.
///
/// With time bounds it walks the zones by skip scan (each next zone one probe of the chain
/// index) and asks each for a row in the window (one probe of the ingested index), so a
/// window's cost does not grow with the rows outside it.
async fn next_zone(
    conn: &mut PgConnection,
    filter: &RowFilter,
    after: Option<&str>,
) -> Result<Option<String>, sqlx::Error> {
    if let Some(zone) = &filter.zone {
        if after.is_some() {
            return Ok(None);
        }
        let mut sql = String::from("SELECT EXISTS (SELECT 1 FROM audit_events WHERE zone_id = $1");
        push_time_bounds(&mut sql, "ingested_at", filter, 2);
        sql.push(')');
        let found = bind_time_bounds(sqlx::query_scalar::<_, bool>(&sql).bind(zone), filter)
            .fetch_one(conn)
            .await?;
        return Ok(found.then(|| zone.clone()));
    }
    if filter.since.is_none() && filter.until.is_none() {
        return sqlx::query_scalar::<_, Option<String>>(
            "SELECT min(zone_id) FROM audit_events WHERE zone_id > $1",
        )
        .bind(after.unwrap_or(""))
        .fetch_one(conn)
        .await;
    }
    let mut sql = String::from(
        "WITH RECURSIVE zone AS ( \
           SELECT min(zone_id) AS id FROM audit_events WHERE zone_id > $1 \
           UNION ALL \
           SELECT (SELECT min(zone_id) FROM audit_events WHERE zone_id > zone.id) \
             FROM zone WHERE zone.id IS NOT NULL) \
         SELECT id FROM zone WHERE id IS NOT NULL \
           AND EXISTS (SELECT 1 FROM audit_events WHERE zone_id = zone.id",
    );
    push_time_bounds(&mut sql, "ingested_at", filter, 2);
    sql.push_str(") LIMIT 1");
    bind_time_bounds(
        sqlx::query_scalar::<_, String>(&sql).bind(after.unwrap_or("")),
        filter,
    )
    .fetch_optional(conn)
    .await
}

/// The lowest `chain_seq` of `zone` in the time window of `filter`, read through the
/// ingested index (`chain_seq + 0` keeps the planner from walking the chain index from the
/// zone's first row, which it would expect to meet the window early).
async fn first_seq_in_window(
    conn: &mut PgConnection,
    zone: &str,
    filter: &RowFilter,
) -> Result<Option<i64>, sqlx::Error> {
    let mut sql = String::from("SELECT min(chain_seq + 0) FROM audit_events WHERE zone_id = $1");
    push_time_bounds(&mut sql, "ingested_at", filter, 2);
    bind_time_bounds(
        sqlx::query_scalar::<_, Option<i64>>(&sql).bind(zone),
        filter,
    )
    .fetch_one(conn)
    .await
}

/// One zone's rows above `after_seq`, in chain order. The time bounds are applied as a filter
/// on the chain index's walk (`+ interval '0'` keeps them off the ingested index, which would
/// read and sort the whole window for every page).
async fn zone_rows(
    conn: &mut PgConnection,
    zone: &str,
    after_seq: i64,
    filter: &RowFilter,
    limit: i64,
) -> Result<Vec<StoredAuditRow>, sqlx::Error> {
    let mut sql =
        format!("SELECT {AUDIT_COLUMNS} FROM audit_events WHERE zone_id = $1 AND chain_seq > $2");
    let next = push_time_bounds(&mut sql, "ingested_at + interval '0'", filter, 3);
    sql.push_str(&format!(" ORDER BY chain_seq LIMIT ${next}"));
    let mut query = sqlx::query_as::<_, StoredAuditRow>(&sql)
        .bind(zone)
        .bind(after_seq);
    for at in time_bounds(filter) {
        query = query.bind(at);
    }
    query.bind(limit).fetch_all(conn).await
}

/// Appends the `ingested_at` bounds `filter` sets on `column` (`ingested_at`, or an expression
/// of it that keeps an index out of use), numbered from `$first`; returns the next
/// free parameter number.
fn push_time_bounds(sql: &mut String, column: &str, filter: &RowFilter, first: usize) -> usize {
    let mut next = first;
    if filter.since.is_some() {
        sql.push_str(&format!(" AND {column} >= ${next}"));
        next += 1;
    }
    if filter.until.is_some() {
        sql.push_str(&format!(" AND {column} < ${next}"));
        next += 1;
    }
    next
}

/// `query` with the values of [`push_time_bounds`] bound, in the same order.
fn bind_time_bounds<'q, O>(
    mut query: QueryScalar<'q, Postgres, O, PgArguments>,
    filter: &RowFilter,
) -> QueryScalar<'q, Postgres, O, PgArguments> {
    for at in time_bounds(filter) {
        query = query.bind(at);
    }
    query
}

/// The values of [`push_time_bounds`], in the same order.
fn time_bounds(filter: &RowFilter) -> impl Iterator<Item = DateTime<Utc>> {
    filter.since.into_iter().chain(filter.until)
}

/// The row `(zone, chain_seq)`, if stored (several can exist only after tampering; the first
/// by `ingested_at` is returned).
///
/// # Errors
///
/// Database errors.
pub async fn row(
    conn: &mut PgConnection,
    zone: &str,
    chain_seq: i64,
) -> Result<Option<StoredAuditRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE zone_id = $1 AND chain_seq = $2 \
         ORDER BY ingested_at, id LIMIT 1"
    );
    sqlx::query_as(&sql)
        .bind(zone)
        .bind(chain_seq)
        .fetch_optional(conn)
        .await
}

/// The anchor `(zone, chain_seq)`, if retention recorded one.
///
/// # Errors
///
/// Database errors.
pub async fn anchor(
    conn: &mut PgConnection,
    zone: &str,
    chain_seq: i64,
) -> Result<Option<StoredAnchor>, sqlx::Error> {
    sqlx::query_as(
        "SELECT zone_id, chain_seq, content_sha256, chain_hmac, chain_key_id, partition_name, \
                recorded_at \
           FROM audit_chain_anchors WHERE zone_id = $1 AND chain_seq = $2",
    )
    .bind(zone)
    .bind(chain_seq)
    .fetch_optional(conn)
    .await
}

/// The anchors recorded in `[from, to)`, ordered by `(zone_id, chain_seq)`: what the export
/// writes to `audit/anchors/`.
///
/// # Errors
///
/// Database errors.
pub async fn anchors_recorded_between(
    conn: &mut PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<StoredAnchor>, sqlx::Error> {
    sqlx::query_as(
        "SELECT zone_id, chain_seq, content_sha256, chain_hmac, chain_key_id, partition_name, \
                recorded_at \
           FROM audit_chain_anchors WHERE recorded_at >= $1 AND recorded_at < $2 \
          ORDER BY zone_id, chain_seq",
    )
    .bind(from)
    .bind(to)
    .fetch_all(conn)
    .await
}

/// Those of `ids` that occur more than once in `audit_events` (in any zone).
///
/// Each id is one probe of the primary key `(id, occurred_at)` in every partition, stopping
/// at the second copy. The form matters at scale: `id = ANY($1) GROUP BY id` is planned
/// from a guessed array size, and on a table of millions of rows the guess chose a
/// parallel bitmap scan with JIT compilation, about 100 ms a page of 1,000 ids, against a
/// few milliseconds for the probes.
///
/// # Errors
///
/// Database errors.
pub async fn repeated_ids(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "SELECT DISTINCT u.id FROM unnest($1::text[]) AS u(id) \
          WHERE (SELECT count(*) FROM (SELECT 1 FROM audit_events e WHERE e.id = u.id LIMIT 2) copies) > 1",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// Up to `limit` admin chain rows after `after`, ordered by `(coalesce(zone_id, '*'),
/// chain_seq)` (the chain's unique index). `filter.zone` names a chain (`*` for global
/// actions), `filter.since` bounds `created_at`.
///
/// # Errors
///
/// Database errors.
pub async fn admin_page(
    conn: &mut PgConnection,
    filter: &RowFilter,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<StoredAdminRow>, sqlx::Error> {
    let (after_chain, after_seq) = after.map_or(("", 0), |(chain, seq)| (chain.as_str(), *seq));
    let mut sql = format!(
        "SELECT {ADMIN_COLUMNS} FROM admin_audit_events \
          WHERE (coalesce(zone_id, '*'), chain_seq) > ($1, $2)"
    );
    let mut next = 3;
    if filter.zone.is_some() {
        sql.push_str(&format!(" AND coalesce(zone_id, '*') = ${next}"));
        next += 1;
    }
    if filter.since.is_some() {
        sql.push_str(&format!(" AND created_at >= ${next}"));
        next += 1;
    }
    if filter.from_seq.is_some() {
        sql.push_str(&format!(" AND chain_seq >= ${next}"));
        next += 1;
    }
    sql.push_str(&format!(
        " ORDER BY coalesce(zone_id, '*'), chain_seq LIMIT ${next}"
    ));
    let mut query = sqlx::query_as::<_, StoredAdminRow>(&sql)
        .bind(after_chain)
        .bind(after_seq);
    if let Some(zone) = &filter.zone {
        query = query.bind(zone);
    }
    if let Some(since) = filter.since {
        query = query.bind(since);
    }
    if let Some(from_seq) = filter.from_seq {
        query = query.bind(from_seq);
    }
    query.bind(limit).fetch_all(conn).await
}

/// The admin chain row `(chain, chain_seq)`, `chain` being a zone id or `*`.
///
/// # Errors
///
/// Database errors.
pub async fn admin_row(
    conn: &mut PgConnection,
    chain: &str,
    chain_seq: i64,
) -> Result<Option<StoredAdminRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {ADMIN_COLUMNS} FROM admin_audit_events \
          WHERE coalesce(zone_id, '*') = $1 AND chain_seq = $2"
    );
    sqlx::query_as(&sql)
        .bind(chain)
        .bind(chain_seq)
        .fetch_optional(conn)
        .await
}
