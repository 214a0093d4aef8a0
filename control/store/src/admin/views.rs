//! Read views of the admin API (wire-contract §6.3 "Read views"): authority records
//! (`sessions`) and agent sessions (`agent_sessions`), paged newest first inside a zone
//! transaction. Claim snapshots and session metadata are not shown.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::page::{After, Keyed, Page, PageRequest, bounds};

/// An authority record as the admin API shows it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct AuthorityRecordView {
    /// Id (the mandate's `sid`).
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// `user` or `application` (the `kind` filter).
    pub kind: String,
    /// The same value under the stored column's name.
    pub session_type: String,
    /// Subject.
    pub subject_id: String,
    /// Minting application.
    pub application_id: Option<String>,
    /// Parent record.
    pub parent_id: Option<String>,
    /// Root record (`root_sid`).
    pub root_id: String,
    /// `active`, `revoked` or `expired`.
    pub status: String,
    /// Expiry (the mandate's `exp`).
    pub expires_at: DateTime<Utc>,
    /// When the subject authenticated.
    pub authenticated_at: Option<DateTime<Utc>>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Revocation reason.
    pub revoked_reason: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Keyed for AuthorityRecordView {
    fn key(&self) -> After {
        After {
            ts: self.created_at,
            id: self.id.clone(),
        }
    }
}

/// Authority record filters; `None` does not filter.
#[derive(Debug, Clone, Default)]
pub struct RecordFilter<'a> {
    /// Exact id.
    pub authority_record_id: Option<&'a str>,
    /// Exact status.
    pub status: Option<&'a str>,
    /// Exact subject.
    pub subject_id: Option<&'a str>,
    /// `user` or `application`.
    pub kind: Option<&'a str>,
}

/// A page of the zone's authority records.
pub async fn authority_records(
    conn: &mut PgConnection,
    filter: &RecordFilter<'_>,
    page: &PageRequest,
) -> Result<Page<AuthorityRecordView>, sqlx::Error> {
    let (ts, id) = bounds(page);
    let rows = sqlx::query_as::<_, AuthorityRecordView>(
        "SELECT id, zone_id, session_type AS kind, session_type, subject_id, application_id, \
                parent_id, root_id, status, expires_at, authenticated_at, revoked_at, \
                revoked_reason, created_at, updated_at \
           FROM sessions \
          WHERE ($1::text IS NULL OR id = $1) \
            AND ($2::text IS NULL OR status = $2) \
            AND ($3::text IS NULL OR subject_id = $3) \
            AND ($4::text IS NULL OR session_type = $4) \
            AND (created_at, id) < ($5, $6) \
          ORDER BY created_at DESC, id DESC LIMIT $7",
    )
    .bind(filter.authority_record_id)
    .bind(filter.status)
    .bind(filter.subject_id)
    .bind(filter.kind)
    .bind(ts)
    .bind(id)
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page.limit))
}

/// An agent session as the admin API shows it, with its subject.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct AgentSessionView {
    /// Id.
    pub id: String,
    /// The same id under its wire name.
    pub agent_session_id: String,
    /// Zone.
    pub zone_id: String,
    /// Application.
    pub application_id: String,
    /// Parent agent session.
    pub parent_id: Option<String>,
    /// The authority record it runs under.
    pub subject_authority_record_id: Option<String>,
    /// That record's subject.
    pub subject_id: Option<String>,
    /// `task` or `service`.
    pub lifecycle: String,
    /// `active`, `suspended`, `terminated` or `expired`.
    pub status: String,
    /// Bumped on every status change.
    pub status_version: i64,
    /// Why it ended.
    pub termination_reason: Option<String>,
    /// Depth in the agent tree (0 for a root).
    pub depth: i32,
    /// Labels (roles in policy).
    pub labels: Vec<String>,
    /// Children it may start.
    pub max_children: i32,
    /// Children holding a slot.
    pub child_count: i32,
    /// Task lifetime.
    pub ttl_seconds: Option<i32>,
    /// Start time.
    pub started_at: DateTime<Utc>,
    /// Last heartbeat (services).
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// Lease deadline (services).
    pub heartbeat_deadline_at: Option<DateTime<Utc>>,
    /// Lease generation (services).
    pub lease_generation: i64,
    /// End time.
    pub terminated_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Keyed for AgentSessionView {
    fn key(&self) -> After {
        After {
            ts: self.created_at,
            id: self.id.clone(),
        }
    }
}

/// Agent session filters; `None` does not filter.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter<'a> {
    /// The subject of the session's authority record.
    pub subject_id: Option<&'a str>,
    /// Exact status.
    pub status: Option<&'a str>,
    /// Exact application.
    pub application_id: Option<&'a str>,
    /// Exact subject authority record.
    pub authority_record_id: Option<&'a str>,
}

/// A page of the zone's agent sessions.
pub async fn agent_sessions(
    conn: &mut PgConnection,
    filter: &SessionFilter<'_>,
    page: &PageRequest,
) -> Result<Page<AgentSessionView>, sqlx::Error> {
    let (ts, id) = bounds(page);
    let rows = sqlx::query_as::<_, AgentSessionView>(
        "SELECT a.id, a.id AS agent_session_id, a.zone_id, a.application_id, a.parent_id, \
                a.subject_authority_record_id, r.subject_id, a.lifecycle, a.status, \
                a.status_version, a.termination_reason, a.depth, a.labels, a.max_children, \
                a.child_count, a.ttl_seconds, a.started_at, a.last_heartbeat_at, \
                a.heartbeat_deadline_at, a.lease_generation, a.terminated_at, a.created_at, \
                a.updated_at \
           FROM agent_sessions a \
           LEFT JOIN sessions r ON r.zone_id = a.zone_id AND r.id = a.subject_authority_record_id \
          WHERE ($1::text IS NULL OR r.subject_id = $1) \
            AND ($2::text IS NULL OR a.status = $2) \
            AND ($3::text IS NULL OR a.application_id = $3) \
            AND ($4::text IS NULL OR a.subject_authority_record_id = $4) \
            AND (a.created_at, a.id) < ($5, $6) \
          ORDER BY a.created_at DESC, a.id DESC LIMIT $7",
    )
    .bind(filter.subject_id)
    .bind(filter.status)
    .bind(filter.application_id)
    .bind(filter.authority_record_id)
    .bind(ts)
    .bind(id)
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page.limit))
}
