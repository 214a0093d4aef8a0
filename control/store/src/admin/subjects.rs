//! The revocations only the admin API runs (authority §2.5): the authority records of a
//! subject (kill switch, grant revoke) and the subject's provider grants. The session and
//! edge cascade that follows is shared with the Coordinator ([`crate::cascade`]). Every
//! function runs inside the caller's zone transaction, so a cascade and the outbox rows
//! announcing it commit together.

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
