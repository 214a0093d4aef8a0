//! The gateway's authority-view polls (authority §4.1): revoked authority records, agent
//! sessions and delegation edges changed since a watermark, and every zone's graph epoch.
//! All run in a cross-zone read as `caracal_gateway`; the rows come back as the views of
//! `control_model::authority`, with their zone.

use chrono::{DateTime, Utc};
use control_model::authority::{AgentSessionView, EdgeView};
use sqlx::{PgConnection, Row};

/// A revoked authority record that has not expired yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedRecord {
    /// Record id (a mandate's `sid` / `root_sid`).
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// Its expiry: after it, the record fails on time alone.
    pub expires_at: DateTime<Utc>,
}

/// Every revoked record with `expires_at > now()`.
pub async fn revoked_records(conn: &mut PgConnection) -> Result<Vec<RevokedRecord>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, zone_id, expires_at FROM sessions WHERE status = 'revoked' AND expires_at > now()",
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(RevokedRecord {
                id: r.try_get("id")?,
                zone_id: r.try_get("zone_id")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .collect()
}

/// Agent sessions whose row changed at or after `since`, with the largest `updated_at`
/// seen (the next watermark).
pub async fn sessions_changed_since(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
) -> Result<(Vec<AgentSessionView>, Option<DateTime<Utc>>), sqlx::Error> {
    let ids: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, updated_at FROM agent_sessions WHERE updated_at >= $1 ORDER BY updated_at LIMIT 10000",
    )
    .bind(since)
    .fetch_all(&mut *conn)
    .await?;
    let latest = ids.iter().map(|(_, at)| *at).max();
    if ids.is_empty() {
        return Ok((Vec::new(), latest));
    }
    let ids: Vec<String> = ids.into_iter().map(|(id, _)| id).collect();
    let views = crate::delegation::agent_sessions(conn, &ids).await?;
    Ok((views, latest))
}

/// Delegation edges whose row changed at or after `since`, with the largest `updated_at`
/// seen.
pub async fn edges_changed_since(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
) -> Result<(Vec<EdgeView>, Option<DateTime<Utc>>), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, zone_id, source_session_id, target_session_id, issuer_application_id, \
                receiver_application_id, resource_id, scopes, constraints_json, status, expires_at, \
                revoked_at, parent_edge_id, edge_version, updated_at \
           FROM delegation_edges WHERE updated_at >= $1 ORDER BY updated_at LIMIT 10000",
    )
    .bind(since)
    .fetch_all(conn)
    .await?;
    let mut latest = None;
    let mut edges = Vec::with_capacity(rows.len());
    for r in &rows {
        let at: DateTime<Utc> = r.try_get("updated_at")?;
        latest = latest.max(Some(at));
        edges.push(crate::delegation::edge_view(r)?);
    }
    Ok((edges, latest))
}

/// Every zone's graph epoch.
pub async fn epochs(conn: &mut PgConnection) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT zone_id, epoch FROM delegation_graph_epochs")
        .fetch_all(conn)
        .await
}
