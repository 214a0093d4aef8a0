//! The revocation cascades the admin API runs (authority §2.5): authority records of a
//! subject (kill switch, grant revoke), the agent sessions bound to them with their
//! descendants, the edges touching those sessions, the zone's graph epoch and the subject's
//! provider grants. Every function runs inside the caller's zone transaction, so a cascade
//! and the outbox rows announcing it commit together.

use sqlx::PgConnection;

/// Which records [`revoke_records`] takes.
#[derive(Debug, Clone, Copy)]
pub struct RecordSelector<'a> {
    /// The records' `subject_id`.
    pub subject_id: &'a str,
    /// Only user-typed records (grant revoke); `false` takes every type (kill switch).
    pub user_only: bool,
}

/// Revokes at most `limit` active authority records of the selected subject, setting
/// `revoked_at` and `revoked_reason`; returns their ids (fewer than `limit`: none remain).
pub async fn revoke_records(
    conn: &mut PgConnection,
    selector: RecordSelector<'_>,
    reason: &str,
    actor: &str,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE sessions s SET status = 'revoked', revoked_at = now(), revoked_reason = $3, \
                updated_at = now(), updated_by = $4 \
          WHERE s.id IN (SELECT id FROM sessions \
                          WHERE subject_id = $1 AND status = 'active' \
                            AND (NOT $2 OR session_type = 'user') \
                          LIMIT $5 FOR UPDATE) \
          RETURNING s.id",
    )
    .bind(selector.subject_id)
    .bind(selector.user_only)
    .bind(reason)
    .bind(actor)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// An agent session a cascade terminated.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TerminatedSession {
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

/// Terminates the active or suspended agent sessions bound to any authority record of
/// `subject_id` (whatever the record's status, so sessions left behind by an earlier record
/// revocation are caught too), with reason `reason`, and their active or suspended
/// descendants (down `agent_topology`, depth ≤ 10) with reason `parent_terminated`;
/// decrements the parents' `child_count`. Returns the terminated sessions.
pub async fn terminate_bound_sessions(
    conn: &mut PgConnection,
    subject_id: &str,
    reason: &str,
    actor: &str,
) -> Result<Vec<TerminatedSession>, sqlx::Error> {
    let terminated: Vec<(String, Option<String>)> = sqlx::query_as(
        "WITH RECURSIVE tree AS ( \
           SELECT a.id, 0 AS depth, true AS root FROM agent_sessions a \
            WHERE a.status IN ('active', 'suspended') \
              AND a.subject_authority_record_id IN (SELECT id FROM sessions WHERE subject_id = $1) \
           UNION \
           SELECT t.child_id, tree.depth + 1, false FROM agent_topology t \
             JOIN tree ON t.parent_id = tree.id \
            WHERE tree.depth < 10 \
         ), targets AS (SELECT id, bool_or(root) AS root FROM tree GROUP BY id) \
         UPDATE agent_sessions a \
            SET status = 'terminated', status_version = a.status_version + 1, \
                termination_reason = CASE WHEN t.root THEN $2 ELSE 'parent_terminated' END, \
                terminated_at = now(), updated_at = now(), updated_by = $3 \
           FROM targets t \
          WHERE a.id = t.id AND a.status IN ('active', 'suspended') \
          RETURNING a.id, a.parent_id",
    )
    .bind(subject_id)
    .bind(reason)
    .bind(actor)
    .fetch_all(&mut *conn)
    .await?;
    if terminated.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = terminated.iter().map(|(id, _)| id.clone()).collect();
    let parents: Vec<String> = terminated
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
    sqlx::query_as::<_, TerminatedSession>(
        "SELECT a.id, a.application_id, a.parent_id, a.lifecycle, a.status_version, \
                a.lease_generation, coalesce(a.termination_reason, '') AS termination_reason, \
                CASE WHEN r.session_type = 'user' AND r.status = 'active' \
                      AND NOT EXISTS (SELECT 1 FROM agent_sessions o \
                                       WHERE o.subject_authority_record_id = r.id \
                                         AND o.status IN ('active', 'suspended')) \
                     THEN r.id END AS announce_record_id \
           FROM agent_sessions a \
           LEFT JOIN sessions r ON r.zone_id = a.zone_id AND r.id = a.subject_authority_record_id \
          WHERE a.id = ANY($1) ORDER BY a.depth, a.id",
    )
    .bind(&ids)
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

/// Revokes the subject's active provider grants; returns how many.
pub async fn revoke_provider_grants(
    conn: &mut PgConnection,
    subject_id: &str,
    actor: &str,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE provider_grants SET status = 'revoked', updated_at = now(), updated_by = $2 \
          WHERE subject_id = $1 AND status = 'active'",
    )
    .bind(subject_id)
    .bind(actor)
    .execute(conn)
    .await?
    .rows_affected())
}
