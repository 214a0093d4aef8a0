//! The session and edge cascade of authority §2.5, shared by the admin API (subject kill
//! switch) and the Coordinator (terminate, delegation revoke, the expiry sweepers): end a
//! set of agent sessions with their descendants, revoke the edges touching them, bump the
//! zone's graph epoch. Every function runs inside the caller's zone transaction, so the
//! cascade and the outbox rows announcing it commit together.

use sqlx::PgConnection;

/// The deepest agent tree (authority §9: session depth 10).
pub const MAX_DEPTH: i32 = 10;

/// Where a cascade starts.
#[derive(Debug, Clone, Copy)]
pub enum Roots<'a> {
    /// The active or suspended sessions bound to any authority record of this subject
    /// (whatever the record's status, so sessions left behind by an earlier record
    /// revocation are caught too).
    BoundToSubject(&'a str),
    /// These sessions, when active or suspended.
    Sessions(&'a [String]),
}

/// The status a cascade gives its roots; descendants always become `terminated` with reason
/// `parent_terminated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `terminated` (a request, a revocation).
    Terminated,
    /// `expired` (a task's TTL or a service's lease ran out).
    Expired,
}

impl Ending {
    fn status(self) -> &'static str {
        match self {
            Self::Terminated => "terminated",
            Self::Expired => "expired",
        }
    }
}

/// An agent session whose status a cascade changed (ended, suspended or resumed).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChangedSession {
    /// Agent session id.
    pub id: String,
    /// Its application.
    pub application_id: String,
    /// Its parent, if any.
    pub parent_id: Option<String>,
    /// `task` or `service`.
    pub lifecycle: String,
    /// `status_version` after the change (names the transition in dedupe keys).
    pub status_version: i64,
    /// Lease generation.
    pub lease_generation: i64,
    /// The termination reason stored.
    pub termination_reason: String,
    /// The subject authority record to announce with the session (authority §2.5: user
    /// typed, still active after the cascade's own record revocations, and referenced by no
    /// other active or suspended session).
    pub announce_record_id: Option<String>,
}

/// Ends the active or suspended sessions selected by `roots` (status per `ending`, reason
/// `reason`) and their active or suspended descendants down `agent_topology` (at most
/// [`MAX_DEPTH`] levels; `terminated`, reason `parent_terminated`); decrements the parents'
/// `child_count`. Returns the ended sessions, shallowest first.
pub async fn end_trees(
    conn: &mut PgConnection,
    roots: Roots<'_>,
    ending: Ending,
    reason: &str,
    actor: &str,
) -> Result<Vec<ChangedSession>, sqlx::Error> {
    let (subject, ids): (Option<&str>, Option<&[String]>) = match roots {
        Roots::BoundToSubject(subject) => (Some(subject), None),
        Roots::Sessions(ids) => (None, Some(ids)),
    };
    let ended: Vec<(String, Option<String>)> = sqlx::query_as(
        "WITH RECURSIVE tree AS ( \
           SELECT a.id, 0 AS depth, true AS root FROM agent_sessions a \
            WHERE a.status IN ('active', 'suspended') \
              AND (($1::text IS NOT NULL AND a.subject_authority_record_id IN \
                     (SELECT id FROM sessions WHERE subject_id = $1)) \
                   OR ($2::text[] IS NOT NULL AND a.id = ANY($2))) \
           UNION \
           SELECT t.child_id, tree.depth + 1, false FROM agent_topology t \
             JOIN tree ON t.parent_id = tree.id \
            WHERE tree.depth < $6 \
         ), targets AS (SELECT id, bool_or(root) AS root FROM tree GROUP BY id) \
         UPDATE agent_sessions a \
            SET status = CASE WHEN t.root THEN $3 ELSE 'terminated' END, \
                status_version = a.status_version + 1, \
                termination_reason = CASE WHEN t.root THEN $4 ELSE 'parent_terminated' END, \
                terminated_at = now(), updated_at = now(), updated_by = $5 \
           FROM targets t \
          WHERE a.id = t.id AND a.status IN ('active', 'suspended') \
          RETURNING a.id, a.parent_id",
    )
    .bind(subject)
    .bind(ids)
    .bind(ending.status())
    .bind(reason)
    .bind(actor)
    .bind(MAX_DEPTH)
    .fetch_all(&mut *conn)
    .await?;
    if ended.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = ended.iter().map(|(id, _)| id.clone()).collect();
    let parents: Vec<String> = ended
        .iter()
        .filter_map(|(_, parent)| parent.clone())
        .collect();
    if !parents.is_empty() {
        sqlx::query(
            "UPDATE agent_sessions p SET child_count = GREATEST(p.child_count - c.n, 0) \
               FROM (SELECT parent_id, count(*)::int AS n FROM unnest($1::text[]) AS x(parent_id) \
                      GROUP BY parent_id) c \
              WHERE p.id = c.parent_id",
        )
        .bind(&parents)
        .execute(&mut *conn)
        .await?;
    }
    changed_sessions(conn, &ids).await
}

/// The sessions `ids` as changed sessions, shallowest first. A session's subject record is
/// announced with it (authority §2.5) when the record is user typed, still active, and no
/// session outside `ids` that is active or suspended (resumable) runs under it.
pub(crate) async fn changed_sessions(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<Vec<ChangedSession>, sqlx::Error> {
    sqlx::query_as::<_, ChangedSession>(
        "SELECT a.id, a.application_id, a.parent_id, a.lifecycle, a.status_version, \
                a.lease_generation, coalesce(a.termination_reason, '') AS termination_reason, \
                CASE WHEN r.session_type = 'user' AND r.status = 'active' \
                      AND NOT EXISTS (SELECT 1 FROM agent_sessions o \
                                       WHERE o.subject_authority_record_id = r.id \
                                         AND o.status IN ('active', 'suspended') \
                                         AND NOT (o.id = ANY($1))) \
                     THEN r.id END AS announce_record_id \
           FROM agent_sessions a \
           LEFT JOIN sessions r ON r.zone_id = a.zone_id AND r.id = a.subject_authority_record_id \
          WHERE a.id = ANY($1) ORDER BY a.depth, a.id",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// Revokes every active edge whose source or target is one of `session_ids` (status
/// `revoked`, `revoked_at`, `edge_version + 1`); returns their ids.
pub async fn revoke_edges_touching(
    conn: &mut PgConnection,
    session_ids: &[String],
    actor: &str,
) -> Result<Vec<String>, sqlx::Error> {
    if session_ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "UPDATE delegation_edges SET status = 'revoked', revoked_at = now(), \
                edge_version = edge_version + 1, updated_at = now(), updated_by = $2 \
          WHERE status = 'active' \
            AND (source_session_id = ANY($1) OR target_session_id = ANY($1)) \
          RETURNING id",
    )
    .bind(session_ids)
    .bind(actor)
    .fetch_all(conn)
    .await
}

/// Bumps the zone's graph epoch by one (authority §2.4) and returns the new value.
pub async fn bump_epoch(conn: &mut PgConnection, zone_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO delegation_graph_epochs (zone_id, epoch) VALUES ($1, 1) \
         ON CONFLICT (zone_id) DO UPDATE \
            SET epoch = delegation_graph_epochs.epoch + 1, updated_at = now() \
         RETURNING epoch",
    )
    .bind(zone_id)
    .fetch_one(conn)
    .await
}
