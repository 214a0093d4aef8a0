//! `agent_invocations` (storage §1.5, migration 0009): durable invocations of agent
//! services: create, claim by the service, complete with retries and backoff, cancel, and
//! the deadline sweep.

use chrono::{DateTime, Utc};
use control_model::page::{After, Keyed, Page, PageRequest, bounds};
use sqlx::PgConnection;

/// A durable invocation.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct InvocationRow {
    /// Id.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// The invoked service.
    pub service_id: String,
    /// The calling session.
    pub source_session_id: Option<String>,
    /// The session expected to serve it.
    pub target_session_id: Option<String>,
    /// The creator's idempotency key.
    pub idempotency_key: String,
    /// Method.
    pub method: String,
    /// Parameters.
    pub params_json: serde_json::Value,
    /// Metadata.
    pub metadata_json: serde_json::Value,
    /// `pending`, `running`, `succeeded`, `failed`, `cancel_requested`, `canceled`,
    /// `timed_out`, `dead`.
    pub status: String,
    /// Claims so far.
    pub attempts: i32,
    /// Claims allowed.
    pub max_attempts: i32,
    /// Deadline of one attempt.
    pub timeout_ms: i32,
    /// `{backoff_ms}`.
    pub retry_policy_json: serde_json::Value,
    /// The last failure.
    pub error_json: Option<serde_json::Value>,
    /// The result of a success.
    pub result_json: Option<serde_json::Value>,
    /// When a pending invocation may be claimed.
    pub available_at: DateTime<Utc>,
    /// Deadline of the running attempt.
    pub deadline_at: Option<DateTime<Utc>>,
    /// Cancellation request.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// Start of the running (or last) attempt.
    pub started_at: Option<DateTime<Utc>>,
    /// End.
    pub completed_at: Option<DateTime<Utc>>,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// `created_by`: the creator (`application:<id>`).
    pub created_by: Option<String>,
}

impl Keyed for InvocationRow {
    fn key(&self) -> After {
        After {
            ts: self.created_at,
            id: self.id.clone(),
        }
    }
}

const COLUMNS: &str = "id, zone_id, service_id, source_session_id, target_session_id, \
     idempotency_key, method, params_json, metadata_json, status, attempts, max_attempts, \
     timeout_ms, retry_policy_json, error_json, result_json, available_at, deadline_at, \
     cancel_requested_at, started_at, completed_at, created_at, created_by";

/// An invocation to create.
#[derive(Debug, Clone)]
pub struct NewInvocation<'a> {
    /// The invoked service.
    pub service_id: &'a str,
    /// The calling session.
    pub source_session_id: Option<&'a str>,
    /// The session expected to serve it.
    pub target_session_id: Option<&'a str>,
    /// The creator's idempotency key.
    pub idempotency_key: &'a str,
    /// Method.
    pub method: &'a str,
    /// Parameters.
    pub params: &'a serde_json::Value,
    /// Metadata.
    pub metadata: &'a serde_json::Value,
    /// Claims allowed.
    pub max_attempts: i32,
    /// Deadline of one attempt.
    pub timeout_ms: i32,
    /// `{backoff_ms}`.
    pub retry_policy: &'a serde_json::Value,
}

/// Creates a pending invocation in `zone`; `None` when the service already has one under
/// the same idempotency key.
pub async fn create(
    conn: &mut PgConnection,
    zone: &str,
    actor: &str,
    new: &NewInvocation<'_>,
) -> Result<Option<InvocationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO agent_invocations (id, zone_id, service_id, source_session_id, \
                target_session_id, idempotency_key, method, params_json, metadata_json, \
                max_attempts, timeout_ms, retry_policy_json, created_by, updated_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13) \
         ON CONFLICT (zone_id, service_id, idempotency_key) DO NOTHING \
         RETURNING {COLUMNS}"
    ))
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(zone)
    .bind(new.service_id)
    .bind(new.source_session_id)
    .bind(new.target_session_id)
    .bind(new.idempotency_key)
    .bind(new.method)
    .bind(new.params)
    .bind(new.metadata)
    .bind(new.max_attempts)
    .bind(new.timeout_ms)
    .bind(new.retry_policy)
    .bind(actor)
    .fetch_optional(conn)
    .await
}

/// Serialises creates of one idempotency key on one service (transaction scoped), so two
/// concurrent first uses cannot both miss the receipt and race on the unique key.
pub async fn lock_key(
    conn: &mut PgConnection,
    zone: &str,
    service_id: &str,
    key: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended( \
                'coordinator:invocation_create:' || $1 || ':' || $2 || ':' || $3, 0))",
    )
    .bind(zone)
    .bind(service_id)
    .bind(key)
    .execute(conn)
    .await?;
    Ok(())
}

/// One invocation (`lock`: for the rest of the transaction).
pub async fn get(
    conn: &mut PgConnection,
    id: &str,
    lock: bool,
) -> Result<Option<InvocationRow>, sqlx::Error> {
    let suffix = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM agent_invocations WHERE id = $1{suffix}"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Claims the service's oldest due pending invocation: `running`, one more attempt, the
/// attempt's deadline.
pub async fn claim(
    conn: &mut PgConnection,
    service_id: &str,
) -> Result<Option<InvocationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE agent_invocations SET status = 'running', attempts = attempts + 1, \
                started_at = now(), deadline_at = now() + make_interval(secs => timeout_ms / 1000.0), \
                updated_at = now() \
          WHERE id = (SELECT id FROM agent_invocations \
                       WHERE service_id = $1 AND status = 'pending' AND available_at <= now() \
                       ORDER BY available_at, created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
          RETURNING {COLUMNS}"
    ))
    .bind(service_id)
    .fetch_optional(conn)
    .await
}

/// How an attempt ends.
#[derive(Debug, Clone)]
pub enum Ending<'a> {
    /// `succeeded` with its result.
    Succeeded(&'a serde_json::Value),
    /// Back to `pending`, claimable after `backoff_ms`, with the failure.
    Retry {
        /// Delay before the next claim.
        backoff_ms: i64,
        /// The failure.
        error: &'a serde_json::Value,
    },
    /// A terminal status (`failed`, `dead`, `canceled`, `timed_out`) with the failure.
    Finished {
        /// The status.
        status: &'a str,
        /// The failure, if any.
        error: Option<&'a serde_json::Value>,
    },
}

/// Ends the current attempt of invocation `id`.
pub async fn end_attempt(
    conn: &mut PgConnection,
    id: &str,
    ending: &Ending<'_>,
) -> Result<InvocationRow, sqlx::Error> {
    let (status, result, error, backoff_ms): (
        &str,
        Option<&serde_json::Value>,
        Option<&serde_json::Value>,
        i64,
    ) = match ending {
        Ending::Succeeded(result) => ("succeeded", Some(result), None, 0),
        Ending::Retry { backoff_ms, error } => ("pending", None, Some(error), *backoff_ms),
        Ending::Finished { status, error } => (status, None, *error, 0),
    };
    sqlx::query_as(&format!(
        "UPDATE agent_invocations SET status = $2, result_json = coalesce($3, result_json), \
                error_json = coalesce($4, error_json), deadline_at = NULL, \
                available_at = now() + make_interval(secs => $5 / 1000.0), \
                completed_at = CASE WHEN $2 = 'pending' THEN NULL ELSE now() END, \
                updated_at = now() \
          WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(status)
    .bind(result)
    .bind(error)
    .bind(backoff_ms)
    .fetch_one(conn)
    .await
}

/// Asks a running invocation to stop (`cancel_requested`).
pub async fn request_cancel(
    conn: &mut PgConnection,
    id: &str,
) -> Result<InvocationRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE agent_invocations SET status = 'cancel_requested', cancel_requested_at = now(), \
                updated_at = now() WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .fetch_one(conn)
    .await
}

/// A page of the service's invocations, newest first (filter `status`).
pub async fn list(
    conn: &mut PgConnection,
    service_id: &str,
    status: Option<&str>,
    page: &PageRequest,
) -> Result<Page<InvocationRow>, sqlx::Error> {
    let (ts, id) = bounds(page);
    let rows: Vec<InvocationRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM agent_invocations \
          WHERE service_id = $1 AND ($2::text IS NULL OR status = $2) \
            AND (created_at, id) < ($3, $4) \
          ORDER BY created_at DESC, id DESC LIMIT $5"
    ))
    .bind(service_id)
    .bind(status)
    .bind(ts)
    .bind(id)
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page.limit))
}

/// Running (or cancel-requested) invocations of the transaction's zone past their
/// attempt's deadline, locked, at most `limit`.
pub async fn lock_overdue(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<InvocationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM agent_invocations \
          WHERE status IN ('running', 'cancel_requested') AND deadline_at <= now() \
          ORDER BY deadline_at LIMIT $1 FOR UPDATE SKIP LOCKED"
    ))
    .bind(limit)
    .fetch_all(conn)
    .await
}
