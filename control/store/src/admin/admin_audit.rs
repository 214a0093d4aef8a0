//! `admin_audit_events`: one chained row per admin action, written inside the action's
//! transaction (storage §8.7). Rows chain per zone; global actions chain under `*`.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// The chain position a new row takes.
#[derive(Debug, Clone)]
pub struct ChainHead {
    /// The head's `chain_seq` (0 for an empty chain).
    pub seq: i64,
    /// The head's content hash (`None` for an empty chain).
    pub content_sha256: Option<Vec<u8>>,
}

/// Takes the chain's transaction-scoped advisory lock, then reads its head. `chain` is the
/// zone id or `*`.
pub async fn lock_head(conn: &mut PgConnection, chain: &str) -> Result<ChainHead, sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('caracal:admin_audit:chain:' || $1, 0))",
    )
    .bind(chain)
    .execute(&mut *conn)
    .await?;
    let head: Option<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT chain_seq, content_sha256 FROM admin_audit_events \
         WHERE coalesce(zone_id, '*') = $1 ORDER BY chain_seq DESC LIMIT 1",
    )
    .bind(chain)
    .fetch_optional(conn)
    .await?;
    Ok(match head {
        Some((seq, hash)) => ChainHead {
            seq,
            content_sha256: Some(hash),
        },
        None => ChainHead {
            seq: 0,
            content_sha256: None,
        },
    })
}

/// A finished row.
#[derive(Debug, Clone)]
pub struct AdminAuditRow<'a> {
    /// Id.
    pub id: &'a str,
    /// Zone (None: global chain).
    pub zone_id: Option<&'a str>,
    /// Request id.
    pub request_id: &'a str,
    /// Actor id.
    pub actor_id: &'a str,
    /// Actor name.
    pub actor_name: &'a str,
    /// Actor scope.
    pub actor_scope: &'a str,
    /// `"METHOD path"`.
    pub action: &'a str,
    /// Method.
    pub method: &'a str,
    /// Path.
    pub path: &'a str,
    /// Entity type.
    pub entity_type: Option<&'a str>,
    /// Entity id.
    pub entity_id: Option<&'a str>,
    /// Response status.
    pub status_code: i32,
    /// Payload (secrets stripped by the caller).
    pub payload_json: &'a serde_json::Value,
    /// Time of the action.
    pub occurred_at: DateTime<Utc>,
    /// Content hash.
    pub content_sha256: &'a [u8],
    /// Predecessor's content hash.
    pub prev_content_sha256: Option<&'a [u8]>,
    /// Position.
    pub chain_seq: i64,
    /// Chain HMAC (None without a key).
    pub chain_hmac: Option<&'a [u8]>,
    /// Key id of the chain HMAC.
    pub chain_key_id: Option<&'a str>,
}

/// Inserts a row.
pub async fn insert(conn: &mut PgConnection, row: &AdminAuditRow<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO admin_audit_events (id, zone_id, request_id, actor_id, actor_name, actor_scope, \
           action, method, path, entity_type, entity_id, status_code, payload_json, occurred_at, \
           content_sha256, prev_content_sha256, chain_seq, chain_hmac, chain_key_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
    )
    .bind(row.id)
    .bind(row.zone_id)
    .bind(row.request_id)
    .bind(row.actor_id)
    .bind(row.actor_name)
    .bind(row.actor_scope)
    .bind(row.action)
    .bind(row.method)
    .bind(row.path)
    .bind(row.entity_type)
    .bind(row.entity_id)
    .bind(row.status_code)
    .bind(row.payload_json)
    .bind(row.occurred_at)
    .bind(row.content_sha256)
    .bind(row.prev_content_sha256)
    .bind(row.chain_seq)
    .bind(row.chain_hmac)
    .bind(row.chain_key_id)
    .execute(conn)
    .await?;
    Ok(())
}
