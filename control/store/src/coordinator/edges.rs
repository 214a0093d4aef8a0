//! `delegation_edges` for the Coordinator (storage §1.5, authority §2.2, §2.5): create,
//! read, the cycle search, the downstream walk of a revocation and its dry run.

use chrono::{DateTime, Utc};
use control_model::page::{After, Keyed, Page, PageRequest, bounds};
use sqlx::PgConnection;

use crate::cascade::MAX_DEPTH;

/// A delegation edge row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EdgeRow {
    /// Id.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// Source agent session.
    pub source_session_id: String,
    /// Target agent session.
    pub target_session_id: String,
    /// Issuer application.
    pub issuer_application_id: String,
    /// Receiver application.
    pub receiver_application_id: String,
    /// Resource row id.
    pub resource_id: Option<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Constraints object.
    pub constraints_json: serde_json::Value,
    /// `active`, `revoked`, `expired`.
    pub status: String,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// +1 on every status change.
    pub edge_version: i32,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The edge it narrows.
    pub parent_edge_id: Option<String>,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// The transaction's `now()` when the row was read.
    pub read_at: DateTime<Utc>,
}

impl Keyed for EdgeRow {
    fn key(&self) -> After {
        After {
            ts: self.created_at,
            id: self.id.clone(),
        }
    }
}

impl EdgeRow {
    /// Active, unrevoked and unexpired when read.
    pub fn is_live(&self) -> bool {
        self.status == "active" && self.revoked_at.is_none() && self.expires_at > self.read_at
    }
}

const COLUMNS: &str = "id, zone_id, source_session_id, target_session_id, issuer_application_id, \
     receiver_application_id, resource_id, scopes, constraints_json, status, expires_at, \
     edge_version, revoked_at, parent_edge_id, created_at, now() AS read_at";

/// One edge.
pub async fn get(conn: &mut PgConnection, id: &str) -> Result<Option<EdgeRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM delegation_edges WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Serialises delegation changes in a zone (authority §2.2 step 5: `delegation:<zone>`,
/// transaction scoped).
pub async fn lock_zone(conn: &mut PgConnection, zone: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('delegation:' || $1, 0))")
        .bind(zone)
        .execute(conn)
        .await?;
    Ok(())
}

/// The edges into `session` (any status), oldest first.
pub async fn into_session(
    conn: &mut PgConnection,
    session: &str,
) -> Result<Vec<EdgeRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM delegation_edges WHERE target_session_id = $1 \
          ORDER BY created_at, id"
    ))
    .bind(session)
    .fetch_all(conn)
    .await
}

/// An edge to insert.
#[derive(Debug, Clone)]
pub struct NewEdge<'a> {
    /// Source session.
    pub source_session_id: &'a str,
    /// Target session.
    pub target_session_id: &'a str,
    /// Issuer application.
    pub issuer_application_id: &'a str,
    /// Receiver application.
    pub receiver_application_id: &'a str,
    /// Resource row id.
    pub resource_id: Option<&'a str>,
    /// Scopes.
    pub scopes: &'a [String],
    /// Constraints object.
    pub constraints: &'a serde_json::Value,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// The edge it narrows.
    pub parent_edge_id: Option<&'a str>,
}

/// Inserts an edge into `zone` with a new UUIDv7 id, `created_by` `actor`.
pub async fn insert(
    conn: &mut PgConnection,
    zone: &str,
    actor: &str,
    new: &NewEdge<'_>,
) -> Result<EdgeRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO delegation_edges (id, zone_id, source_session_id, target_session_id, \
                issuer_application_id, receiver_application_id, resource_id, scopes, \
                constraints_json, expires_at, parent_edge_id, created_by, updated_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) \
         RETURNING {COLUMNS}"
    ))
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(zone)
    .bind(new.source_session_id)
    .bind(new.target_session_id)
    .bind(new.issuer_application_id)
    .bind(new.receiver_application_id)
    .bind(new.resource_id)
    .bind(new.scopes)
    .bind(new.constraints)
    .bind(new.expires_at)
    .bind(new.parent_edge_id)
    .bind(actor)
    .fetch_one(conn)
    .await
}

/// Whether following live edges from `from` (at most [`MAX_DEPTH`] hops) reaches `to`.
pub async fn reaches(conn: &mut PgConnection, from: &str, to: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "WITH RECURSIVE walk AS ( \
           SELECT $1::text AS session, 0 AS depth \
           UNION \
           SELECT e.target_session_id, walk.depth + 1 FROM delegation_edges e \
             JOIN walk ON e.source_session_id = walk.session \
            WHERE e.status = 'active' AND e.revoked_at IS NULL AND e.expires_at > now() \
              AND walk.depth < $3 \
         ) SELECT EXISTS (SELECT 1 FROM walk WHERE session = $2)",
    )
    .bind(from)
    .bind(to)
    .bind(MAX_DEPTH)
    .fetch_one(conn)
    .await
}

/// An edge reached by a revocation's downstream walk.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Downstream {
    /// Edge id.
    pub id: String,
    /// Its source.
    pub source_session_id: String,
    /// Its target.
    pub target_session_id: String,
    /// 0 for the revoked edge, then +1 per hop.
    pub depth: i32,
}

/// The active edge `id` and every active edge downstream of it (source = a previous edge's
/// target, at most [`MAX_DEPTH`] hops), shallowest first. Empty when `id` is not active.
pub async fn downstream(conn: &mut PgConnection, id: &str) -> Result<Vec<Downstream>, sqlx::Error> {
    sqlx::query_as(
        "WITH RECURSIVE walk AS ( \
           SELECT id, source_session_id, target_session_id, 0 AS depth FROM delegation_edges \
            WHERE id = $1 AND status = 'active' \
           UNION \
           SELECT e.id, e.source_session_id, e.target_session_id, walk.depth + 1 \
             FROM delegation_edges e JOIN walk ON e.source_session_id = walk.target_session_id \
            WHERE e.status = 'active' AND walk.depth < $2 \
         ) SELECT id, source_session_id, target_session_id, min(depth) AS depth FROM walk \
           GROUP BY id, source_session_id, target_session_id ORDER BY min(depth), id",
    )
    .bind(id)
    .bind(MAX_DEPTH)
    .fetch_all(conn)
    .await
}

/// Revokes the active edges among `ids`; returns the ids revoked.
pub async fn revoke(
    conn: &mut PgConnection,
    ids: &[String],
    actor: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE delegation_edges SET status = 'revoked', revoked_at = now(), \
                edge_version = edge_version + 1, updated_at = now(), updated_by = $2 \
          WHERE id = ANY($1) AND status = 'active' RETURNING id",
    )
    .bind(ids)
    .bind(actor)
    .fetch_all(conn)
    .await
}

/// Which edges a list returns.
#[derive(Debug, Clone, Copy, Default)]
pub struct EdgeFilter<'a> {
    /// Edges into this session.
    pub target: Option<&'a str>,
    /// Edges out of this session.
    pub source: Option<&'a str>,
    /// Only live edges (active, unrevoked, unexpired).
    pub live_only: bool,
    /// Only edges with this status.
    pub status: Option<&'a str>,
    /// Only edges this application issued or receives.
    pub party: Option<&'a str>,
}

/// A page of edges, newest first.
pub async fn list(
    conn: &mut PgConnection,
    filter: EdgeFilter<'_>,
    page: &PageRequest,
) -> Result<Page<EdgeRow>, sqlx::Error> {
    let (ts, id) = bounds(page);
    let rows: Vec<EdgeRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM delegation_edges \
          WHERE ($1::text IS NULL OR target_session_id = $1) \
            AND ($2::text IS NULL OR source_session_id = $2) \
            AND (NOT $3 OR (status = 'active' AND revoked_at IS NULL AND expires_at > now())) \
            AND ($7::text IS NULL OR status = $7) \
            AND ($8::text IS NULL OR issuer_application_id = $8 OR receiver_application_id = $8) \
            AND (created_at, id) < ($4, $5) \
          ORDER BY created_at DESC, id DESC LIMIT $6"
    ))
    .bind(filter.target)
    .bind(filter.source)
    .bind(filter.live_only)
    .bind(ts)
    .bind(id)
    .bind(page.limit + 1)
    .bind(filter.status)
    .bind(filter.party)
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page.limit))
}

/// The edge `id` and its ancestors through `parent_edge_id`, root first (at most
/// [`MAX_DEPTH`] + 1 edges).
pub async fn lineage(conn: &mut PgConnection, id: &str) -> Result<Vec<EdgeRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "WITH RECURSIVE lineage AS ( \
           SELECT e.*, 1 AS depth FROM delegation_edges e WHERE e.id = $1 \
           UNION ALL \
           SELECT p.*, l.depth + 1 FROM delegation_edges p JOIN lineage l ON p.id = l.parent_edge_id \
            WHERE l.depth <= $2 \
         ) SELECT {COLUMNS} FROM lineage ORDER BY depth DESC"
    ))
    .bind(id)
    .bind(MAX_DEPTH)
    .fetch_all(conn)
    .await
}

/// A resource as a delegation names it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ResourceRef {
    /// Row id.
    pub id: String,
    /// `resource://…` identifier.
    pub identifier: String,
    /// Declared scopes.
    pub scopes: Vec<String>,
}

/// Live resources whose row id or identifier is among `refs`.
pub async fn resources(
    conn: &mut PgConnection,
    refs: &[String],
) -> Result<Vec<ResourceRef>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, identifier, scopes FROM resources \
          WHERE archived_at IS NULL AND (id = ANY($1) OR identifier = ANY($1))",
    )
    .bind(refs)
    .fetch_all(conn)
    .await
}
