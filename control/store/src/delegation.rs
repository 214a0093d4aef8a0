//! Reads of the delegation graph for re-validation (authority §2.3): an edge with its
//! lineage, agent sessions with their subject records, and the zone epoch. Rows come back
//! as the views of `control_model::authority`, which owns the algorithm.

use chrono::{DateTime, Utc};
use control_model::authority::{AgentSessionView, EdgeView, MAX_HOPS, RecordView};
use sqlx::{FromRow, PgConnection, Row, postgres::PgRow};

use crate::applications::ApplicationAsOf;

/// The edge `id` and its ancestors through `parent_edge_id` (at most `MAX_HOPS + 1`).
pub async fn edge_lineage(conn: &mut PgConnection, id: &str) -> Result<Vec<EdgeView>, sqlx::Error> {
    let rows = sqlx::query(
        "WITH RECURSIVE lineage AS ( \
           SELECT e.*, 1 AS depth FROM delegation_edges e WHERE e.id = $1 \
           UNION ALL \
           SELECT p.*, l.depth + 1 FROM delegation_edges p \
             JOIN lineage l ON p.id = l.parent_edge_id AND p.zone_id = l.zone_id \
            WHERE l.depth <= $2 \
         ) \
         SELECT id, zone_id, source_session_id, target_session_id, issuer_application_id, \
                receiver_application_id, resource_id, scopes, constraints_json, status, expires_at, \
                revoked_at, parent_edge_id, edge_version \
           FROM lineage ORDER BY depth",
    )
    .bind(id)
    .bind(i32::try_from(MAX_HOPS).unwrap_or(10))
    .fetch_all(conn)
    .await?;
    rows.iter().map(edge_view).collect()
}

pub(crate) fn edge_view(r: &PgRow) -> Result<EdgeView, sqlx::Error> {
    Ok(EdgeView {
        id: r.try_get("id")?,
        zone_id: r.try_get("zone_id")?,
        source_session_id: r.try_get("source_session_id")?,
        target_session_id: r.try_get("target_session_id")?,
        issuer_application_id: r.try_get("issuer_application_id")?,
        receiver_application_id: r.try_get("receiver_application_id")?,
        resource_id: r.try_get("resource_id")?,
        scopes: r.try_get("scopes")?,
        constraints_json: r.try_get("constraints_json")?,
        status: r.try_get("status")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        parent_edge_id: r.try_get("parent_edge_id")?,
        edge_version: r.try_get("edge_version")?,
    })
}

/// Agent sessions by id, each with its subject authority record.
pub async fn agent_sessions(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<Vec<AgentSessionView>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT a.id, a.zone_id, a.application_id, a.status, a.lifecycle, a.labels, a.depth, a.parent_id, \
                a.started_at, a.ttl_seconds, a.heartbeat_deadline_at, \
                r.id AS r_id, r.zone_id AS r_zone_id, r.session_type AS r_type, r.subject_id AS r_subject, \
                r.status AS r_status, r.expires_at AS r_expires_at \
           FROM agent_sessions a \
           LEFT JOIN sessions r ON r.zone_id = a.zone_id AND r.id = a.subject_authority_record_id \
          WHERE a.id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            let subject_record = joined_record(r)?;
            Ok(AgentSessionView {
                id: r.try_get("id")?,
                zone_id: r.try_get("zone_id")?,
                application_id: r.try_get("application_id")?,
                status: r.try_get("status")?,
                lifecycle: r.try_get("lifecycle")?,
                labels: r.try_get("labels")?,
                depth: r.try_get("depth")?,
                parent_id: r.try_get("parent_id")?,
                subject_record,
                started_at: r.try_get("started_at")?,
                ttl_seconds: r.try_get("ttl_seconds")?,
                heartbeat_deadline_at: r.try_get("heartbeat_deadline_at")?,
            })
        })
        .collect()
}

/// An authority record as a view.
pub async fn record(conn: &mut PgConnection, id: &str) -> Result<Option<RecordView>, sqlx::Error> {
    let row = sqlx::query("SELECT id, zone_id, session_type, subject_id, status, expires_at FROM sessions WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.map(|r| {
        Ok(RecordView {
            id: r.try_get("id")?,
            zone_id: r.try_get("zone_id")?,
            session_type: r.try_get("session_type")?,
            subject_id: r.try_get("subject_id")?,
            status: r.try_get("status")?,
            expires_at: r.try_get("expires_at")?,
        })
    })
    .transpose()
}

/// The columns of [`application_and_record`]: `a` the application, `r` the record.
/// The application's columns keep their names (read by `ApplicationAsOf`'s `FromRow`); the
/// record's carry the `r_` names of [`joined_record`].
pub(crate) const IDENTITY_COLUMNS: &str = "a.id, a.zone_id, a.name, a.registration_method, \
     a.client_secret_hash, a.traits, a.expires_at, a.archived_at, now() AS now, \
     r.id AS r_id, r.zone_id AS r_zone_id, r.session_type AS r_type, \
     r.subject_id AS r_subject, r.status AS r_status, r.expires_at AS r_expires_at";

/// The joins of [`application_and_record`] onto a one-row `FROM` item: `$1` the
/// application, `$2` the record.
pub(crate) const IDENTITY_JOINS: &str =
    "LEFT JOIN applications a ON a.id = $1 LEFT JOIN sessions r ON r.id = $2";

/// An application (with the reading transaction's `now()`) and an authority record, each
/// read by id: the pair a Coordinator identity check and a session start judge.
#[derive(Debug, Clone)]
pub struct ApplicationAndRecord {
    /// The application, when it exists in the transaction's zone.
    pub application: Option<ApplicationAsOf>,
    /// The authority record, when it exists in the transaction's zone.
    pub record: Option<RecordView>,
}

/// [`ApplicationAndRecord`] of `application_id` and `record_id`, in one round trip.
///
/// # Errors
///
/// Database errors.
pub async fn application_and_record(
    conn: &mut PgConnection,
    application_id: &str,
    record_id: &str,
) -> Result<ApplicationAndRecord, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {IDENTITY_COLUMNS} FROM (VALUES (1)) AS one (n) {IDENTITY_JOINS}"
    ))
    .bind(application_id)
    .bind(record_id)
    .fetch_one(conn)
    .await?;
    identity_pair(&row)
}

/// The application and record of a row selected with [`IDENTITY_COLUMNS`].
pub(crate) fn identity_pair(row: &PgRow) -> Result<ApplicationAndRecord, sqlx::Error> {
    // A left join that found no application leaves its columns null.
    let application = match row.try_get::<Option<String>, _>("id")? {
        None => None,
        Some(_) => Some(ApplicationAsOf::from_row(row)?),
    };
    Ok(ApplicationAndRecord {
        application,
        record: joined_record(row)?,
    })
}

/// The authority record of a row that joined `sessions` as `r` with the columns
/// `r_id`, `r_zone_id`, `r_type`, `r_subject`, `r_status` and `r_expires_at` (`None` when
/// the join found no record).
fn joined_record(row: &PgRow) -> Result<Option<RecordView>, sqlx::Error> {
    let Some(id) = row.try_get::<Option<String>, _>("r_id")? else {
        return Ok(None);
    };
    Ok(Some(RecordView {
        id,
        zone_id: row.try_get("r_zone_id")?,
        session_type: row.try_get("r_type")?,
        subject_id: row.try_get("r_subject")?,
        status: row.try_get("r_status")?,
        expires_at: row.try_get::<DateTime<Utc>, _>("r_expires_at")?,
    }))
}

/// The zone's graph epoch (0 before the first edge).
pub async fn epoch(conn: &mut PgConnection, zone_id: &str) -> Result<i64, sqlx::Error> {
    let epoch: Option<i64> =
        sqlx::query_scalar("SELECT epoch FROM delegation_graph_epochs WHERE zone_id = $1")
            .bind(zone_id)
            .fetch_optional(conn)
            .await?;
    Ok(epoch.unwrap_or(0))
}

/// Trusted time: the transaction's `now()`.
pub async fn now(conn: &mut PgConnection) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT now()").fetch_one(conn).await
}
