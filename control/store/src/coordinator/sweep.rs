//! The Coordinator sweepers' batches (storage §11): what is due, read across zones, then
//! changed per zone by the caller (the cascade runs in a zone transaction).

use sqlx::PgConnection;

/// A due row: its zone and id.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Due {
    /// Zone.
    pub zone_id: String,
    /// Row id.
    pub id: String,
}

/// Active tasks past their TTL and active services past their lease (in a cross-zone read),
/// at most `limit`, oldest deadline first.
pub async fn due_sessions(conn: &mut PgConnection, limit: i64) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as(
        "SELECT zone_id, id FROM ( \
           SELECT zone_id, id, started_at + make_interval(secs => ttl_seconds) AS due \
             FROM agent_sessions \
            WHERE status = 'active' AND lifecycle = 'task' \
              AND started_at + make_interval(secs => ttl_seconds) <= now() \
           UNION ALL \
           SELECT zone_id, id, heartbeat_deadline_at FROM agent_sessions \
            WHERE status = 'active' AND lifecycle = 'service' AND heartbeat_deadline_at <= now() \
         ) d ORDER BY due LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Zones holding active edges past their expiry (in a cross-zone read).
pub async fn zones_with_expired_edges(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT zone_id FROM delegation_edges WHERE status = 'active' AND expires_at <= now()",
    )
    .fetch_all(conn)
    .await
}

/// Marks at most `limit` active edges of the transaction's zone past their expiry as
/// `expired` (`edge_version + 1`); returns their ids.
pub async fn expire_edges(conn: &mut PgConnection, limit: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE delegation_edges SET status = 'expired', edge_version = edge_version + 1, \
                updated_at = now(), updated_by = 'coordinator:sweeper' \
          WHERE id IN (SELECT id FROM delegation_edges \
                        WHERE status = 'active' AND expires_at <= now() \
                        ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
          RETURNING id",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Every zone that has Coordinator rows (in a cross-zone read): the retention sweep visits
/// each.
pub async fn zones(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT zone_id FROM agent_sessions UNION SELECT zone_id FROM idempotency_receipts",
    )
    .fetch_all(conn)
    .await
}

/// What one retention round deleted in a zone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Expired idempotency receipts.
    pub receipts: u64,
    /// Revoked or expired edges older than the cutoff.
    pub edges: u64,
    /// Finished invocations of deleted sessions.
    pub invocations: u64,
    /// Ended sessions older than the cutoff (with their tree rows).
    pub sessions: u64,
}

/// Deletes, in the transaction's zone, at most `limit` rows of each kind: expired receipts;
/// revoked or expired edges whose last change is before `cutoff`; finished invocations of
/// sessions ended before `cutoff`; sessions ended before `cutoff` that no edge, child or
/// invocation still references (a tree goes leaves first, over rounds).
pub async fn delete_old(
    conn: &mut PgConnection,
    cutoff: chrono::DateTime<chrono::Utc>,
    limit: i64,
) -> Result<Deleted, sqlx::Error> {
    let receipts = sqlx::query(
        "DELETE FROM idempotency_receipts WHERE id IN \
           (SELECT id FROM idempotency_receipts WHERE expires_at <= now() LIMIT $1)",
    )
    .bind(limit)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let edges = sqlx::query(
        "DELETE FROM delegation_edges WHERE id IN \
           (SELECT id FROM delegation_edges WHERE status IN ('revoked', 'expired') \
              AND updated_at < $1 LIMIT $2)",
    )
    .bind(cutoff)
    .bind(limit)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let invocations = sqlx::query(
        "DELETE FROM agent_invocations WHERE id IN \
           (SELECT i.id FROM agent_invocations i JOIN agent_sessions s ON s.id = i.source_session_id \
             WHERE s.status IN ('terminated', 'expired') AND s.terminated_at < $1 \
               AND i.status IN ('succeeded', 'failed', 'canceled', 'timed_out', 'dead') LIMIT $2)",
    )
    .bind(cutoff)
    .bind(limit)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let sessions = sqlx::query(
        "DELETE FROM agent_sessions WHERE id IN \
           (SELECT s.id FROM agent_sessions s \
             WHERE s.status IN ('terminated', 'expired') AND s.terminated_at < $1 \
               AND NOT EXISTS (SELECT 1 FROM agent_sessions c WHERE c.parent_id = s.id) \
               AND NOT EXISTS (SELECT 1 FROM delegation_edges e \
                                WHERE e.source_session_id = s.id OR e.target_session_id = s.id) \
               AND NOT EXISTS (SELECT 1 FROM agent_invocations i \
                                WHERE i.source_session_id = s.id OR i.target_session_id = s.id) \
             LIMIT $2)",
    )
    .bind(cutoff)
    .bind(limit)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(Deleted {
        receipts,
        edges,
        invocations,
        sessions,
    })
}

/// Locks, among `ids` in the transaction's zone, the sessions that are still due (an active
/// task past its TTL, an active service past its lease): a heartbeat that arrived since the
/// cross-zone read keeps its session.
pub async fn lock_still_due(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM agent_sessions WHERE id = ANY($1) AND status = 'active' \
            AND ((lifecycle = 'task' AND started_at + make_interval(secs => ttl_seconds) <= now()) \
                 OR (lifecycle = 'service' AND heartbeat_deadline_at <= now())) \
          ORDER BY id FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// Tries the session-level advisory lock `key` on this connection (the sweepers' leader
/// lock); `true` when this connection now holds it.
pub async fn try_lead(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(conn)
        .await
}

/// Releases the leader lock `key` held by this connection.
pub async fn stop_leading(conn: &mut PgConnection, key: i64) -> Result<(), sqlx::Error> {
    sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .fetch_one(conn)
        .await?;
    Ok(())
}

/// Zones holding running invocations past their deadline (in a cross-zone read).
pub async fn zones_with_overdue_invocations(
    conn: &mut PgConnection,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT zone_id FROM agent_invocations \
          WHERE status IN ('running', 'cancel_requested') AND deadline_at <= now()",
    )
    .fetch_all(conn)
    .await
}

/// Zones holding healthy or degraded services without a heartbeat (or, never having sent
/// one, without a change) since before `stale` (in a cross-zone read).
pub async fn zones_with_silent_services(
    conn: &mut PgConnection,
    stale: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT zone_id FROM agent_services \
          WHERE health IN ('healthy', 'degraded') \
            AND coalesce(last_heartbeat_at, updated_at) < $1",
    )
    .bind(stale)
    .fetch_all(conn)
    .await
}

/// Marks the transaction zone's healthy or degraded services silent since before `stale`
/// (last heartbeat, else last change) as `unhealthy`; returns how many.
pub async fn mark_silent_services(
    conn: &mut PgConnection,
    stale: chrono::DateTime<chrono::Utc>,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE agent_services SET health = 'unhealthy', updated_at = now(), \
                updated_by = 'coordinator:sweeper' \
          WHERE health IN ('healthy', 'degraded') \
            AND coalesce(last_heartbeat_at, updated_at) < $1",
    )
    .bind(stale)
    .execute(conn)
    .await?
    .rows_affected())
}
