//! Enqueueing stream messages in the producer's transaction (storage §7.2).

use sqlx::PgConnection;

/// A message for `event_outbox` (producers `api`, `sts`).
#[derive(Debug, Clone)]
pub struct OutboxMessage<'a> {
    /// UUIDv7.
    pub id: &'a str,
    /// `api` or `sts`.
    pub producer: &'a str,
    /// Zone, when the message has one.
    pub zone_id: Option<&'a str>,
    /// Stream name.
    pub topic: &'a str,
    /// Names the state transition exactly once.
    pub dedupe_key: Option<&'a str>,
    /// Flat JSON object of the stream fields.
    pub payload: &'a serde_json::Value,
    /// Request that caused it.
    pub request_id: Option<&'a str>,
}

/// Inserts the message unless its dedupe key was already enqueued; returns whether it was.
pub async fn enqueue(
    conn: &mut PgConnection,
    message: &OutboxMessage<'_>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO event_outbox (id, producer, zone_id, topic, dedupe_key, payload_json, request_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (producer, topic, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING",
    )
    .bind(message.id)
    .bind(message.producer)
    .bind(message.zone_id)
    .bind(message.topic)
    .bind(message.dedupe_key)
    .bind(message.payload)
    .bind(message.request_id)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// One outbox message of a batch: dedupe key and flat payload.
#[derive(Debug, Clone)]
pub struct BatchMessage {
    /// Names the transition once (storage §7.2).
    pub dedupe_key: String,
    /// The stream fields.
    pub payload: serde_json::Value,
}

/// Messages for one topic of one producer, enqueued by [`enqueue_batch`] on their own or
/// inside another write's statement ([`crate::coordinator::sessions::insert`]).
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// The outbox table.
    pub table: OutboxTable,
    /// Who enqueues.
    pub producer: &'a str,
    /// The zone of the transaction.
    pub zone_id: &'a str,
    /// The stream.
    pub topic: &'a str,
    /// The messages.
    pub messages: &'a [BatchMessage],
    /// The request that caused them.
    pub request_id: Option<&'a str>,
}

impl Batch<'_> {
    /// The insert, over parameters `$1`–`$7` bound by [`Batch::bind`] (storage §7.2:
    /// `ON CONFLICT … DO NOTHING` on the dedupe key), returning one row per new message
    /// (`RETURNING 1`, so one binding path serves it alone and inside another statement).
    pub(crate) fn insert_sql(&self) -> &'static str {
        self.table.sql().insert_batch
    }

    /// Binds `$1`–`$7` of [`Batch::insert_sql`]; they must be a query's first parameters.
    pub(crate) fn bind<'q, O>(
        &self,
        query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        let ids: Vec<String> = self
            .messages
            .iter()
            .map(|_| uuid::Uuid::now_v7().to_string())
            .collect();
        let keys: Vec<String> = self.messages.iter().map(|m| m.dedupe_key.clone()).collect();
        let payloads: Vec<serde_json::Value> =
            self.messages.iter().map(|m| m.payload.clone()).collect();
        query
            .bind(ids)
            .bind(keys)
            .bind(payloads)
            .bind(self.producer.to_owned())
            .bind(self.zone_id.to_owned())
            .bind(self.topic.to_owned())
            .bind(self.request_id.map(str::to_owned))
    }
}

/// Enqueues `batch` in one statement; returns how many rows were new.
pub async fn enqueue_batch(conn: &mut PgConnection, batch: &Batch<'_>) -> Result<u64, sqlx::Error> {
    if batch.messages.is_empty() {
        return Ok(0);
    }
    let new: Vec<(i32,)> = batch
        .bind(sqlx::query_as::<_, (i32,)>(batch.insert_sql()))
        .fetch_all(conn)
        .await?;
    Ok(u64::try_from(new.len()).unwrap_or(u64::MAX))
}

/// Announces a zone signing-key change on `caracal.keys.invalidate` (storage §6.1) in the
/// caller's transaction: `reason` is `created`, `rotated` or `retired`; the dedupe key
/// `keys:<kid>:<reason>` names the transition once.
pub async fn enqueue_key_change(
    conn: &mut PgConnection,
    zone_id: &str,
    kid: &str,
    reason: &str,
    request_id: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let payload = serde_json::json!({"zone_id": zone_id, "kid": kid, "reason": reason});
    let dedupe = format!("keys:{kid}:{reason}");
    let id = uuid::Uuid::now_v7().to_string();
    enqueue(
        conn,
        &OutboxMessage {
            id: &id,
            producer: PRODUCER_STS,
            zone_id: Some(zone_id),
            topic: KEYS_INVALIDATE,
            dedupe_key: Some(&dedupe),
            payload: &payload,
            request_id,
        },
    )
    .await
}

/// The producer name of the STS's rows in `event_outbox`.
pub const PRODUCER_STS: &str = "sts";
/// The producer name of the admin API's rows (`event_outbox`, and upstream's `caracal_outbox`).
pub const PRODUCER_API: &str = "api";
/// The producer name of the Coordinator's rows in `caracal_outbox`.
pub const PRODUCER_COORDINATOR: &str = "coordinator";

/// The stream of signing-key changes (the same name as `control_events::streams`).
pub const KEYS_INVALIDATE: &str = "caracal.keys.invalidate";

// ---------------------------------------------------------------------------
// The dispatcher's side (storage §7.3, §11)
// ---------------------------------------------------------------------------

/// Which outbox a dispatcher works on. Each table has its own static statements: the table
/// name is never spliced from input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxTable {
    /// `event_outbox` (producers `api`, `sts`).
    Event,
    /// `caracal_outbox` (producer `coordinator`; upstream's `api` is kept by its CHECK).
    Caracal,
}

impl OutboxTable {
    /// The table name, for logs and metrics labels.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Event => "event_outbox",
            Self::Caracal => "caracal_outbox",
        }
    }

    fn sql(self) -> &'static Statements {
        match self {
            Self::Event => &EVENT_OUTBOX,
            Self::Caracal => &CARACAL_OUTBOX,
        }
    }
}

/// The statements of one table, built from string literals at compile time.
struct Statements {
    insert_batch: &'static str,
    claim: &'static str,
    published: &'static str,
    retry: &'static str,
    dead: &'static str,
    stats: &'static str,
    purge: &'static str,
    retry_dead: &'static str,
}

macro_rules! outbox_statements {
    ($table:literal) => {
        Statements {
            insert_batch: concat!(
                "INSERT INTO caracal.", $table, " \
                        (id, producer, zone_id, topic, dedupe_key, payload_json, request_id) \
                 SELECT m.id, $4, $5, $6, m.dedupe_key, m.payload, $7 \
                   FROM unnest($1::text[], $2::text[], $3::jsonb[]) AS m(id, dedupe_key, payload) \
                 ON CONFLICT (producer, topic, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING \
                 RETURNING 1"
            ),
            // §7.3: one autocommit statement; the lease makes a crashed worker's rows
            // claimable again once it expires.
            claim: concat!(
                "UPDATE caracal.", $table, " o \
                    SET locked_until = now() + make_interval(secs => $1), locked_by = $2, \
                        attempts = o.attempts + 1, updated_at = now() \
                  WHERE o.id IN (SELECT id FROM caracal.", $table, " \
                                  WHERE status = 'pending' AND producer = $3 AND available_at <= now() \
                                    AND (locked_until IS NULL OR locked_until < now()) \
                                  ORDER BY available_at, id \
                                  LIMIT $4 FOR UPDATE SKIP LOCKED) \
              RETURNING o.id, o.topic, o.dedupe_key, o.payload_json, o.attempts, o.created_at"
            ),
            published: concat!(
                "UPDATE caracal.", $table, " \
                    SET status = 'published', published_at = now(), updated_at = now(), \
                        locked_until = NULL, last_error = NULL \
                  WHERE id = ANY($1) AND status = 'pending'"
            ),
            retry: concat!(
                "UPDATE caracal.", $table, " o \
                    SET available_at = now() + make_interval(secs => f.backoff), \
                        last_error = f.error, locked_until = NULL, updated_at = now() \
                   FROM unnest($1::text[], $2::float8[], $3::text[]) AS f(id, backoff, error) \
                  WHERE o.id = f.id AND o.status = 'pending'"
            ),
            dead: concat!(
                "UPDATE caracal.", $table, " o \
                    SET status = 'dead', last_error = f.error, locked_until = NULL, updated_at = now() \
                   FROM unnest($1::text[], $2::text[]) AS f(id, error) \
                  WHERE o.id = f.id AND o.status = 'pending'"
            ),
            // Three index-backed aggregates (partial indexes on pending rows, the retention
            // index for dead rows), never a scan of the published history.
            stats: concat!(
                "SELECT (SELECT count(*) FROM caracal.", $table, " \
                          WHERE status = 'pending' AND ($1::text IS NULL OR producer = $1)) AS pending, \
                        (SELECT count(*) FROM caracal.", $table, " \
                          WHERE status = 'dead' AND ($1::text IS NULL OR producer = $1)) AS dead, \
                        (SELECT EXTRACT(EPOCH FROM now() - min(created_at))::float8 \
                           FROM caracal.", $table, " \
                          WHERE status = 'pending' AND ($1::text IS NULL OR producer = $1)) AS oldest"
            ),
            purge: concat!(
                "DELETE FROM caracal.", $table, " \
                  WHERE id IN (SELECT id FROM caracal.", $table, " \
                                WHERE status = $4 AND updated_at < $1 \
                                  AND ($2::text IS NULL OR producer = $2) \
                                LIMIT $3 FOR UPDATE SKIP LOCKED)"
            ),
            retry_dead: concat!(
                "UPDATE caracal.", $table, " \
                    SET status = 'pending', attempts = 0, available_at = now(), \
                        locked_until = NULL, locked_by = NULL, updated_at = now() \
                  WHERE status = 'dead' AND ($1::text IS NULL OR producer = $1) \
                    AND ($2::text IS NULL OR topic = $2)"
            ),
        }
    };
}

const EVENT_OUTBOX: Statements = outbox_statements!("event_outbox");
const CARACAL_OUTBOX: Statements = outbox_statements!("caracal_outbox");

/// The longest `last_error` kept, in characters.
pub const MAX_LAST_ERROR_CHARS: usize = 1000;

/// A row leased by [`claim`].
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedRow {
    /// The outbox id (published as `outbox_id`).
    pub id: String,
    /// The stream name.
    pub topic: String,
    /// Published as `dedupe_key` when set.
    pub dedupe_key: Option<String>,
    /// The flat object of stream fields (audit rows: `{"event": {…}}`).
    pub payload_json: serde_json::Value,
    /// Claims so far, this one included.
    pub attempts: i32,
    /// When the producer enqueued it (publish latency).
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// How [`claim`] leases rows.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    /// Only this producer's rows (`api`, `sts`, `coordinator`).
    pub producer: &'a str,
    /// Written to `locked_by`, e.g. `sts-sts-0`.
    pub worker: &'a str,
    /// The lease (`OUTBOX_LOCK_SEC`).
    pub lock: std::time::Duration,
    /// At most this many rows (`OUTBOX_BATCH_SIZE`).
    pub batch: i64,
}

/// Leases up to `batch` due rows of `producer` (storage §7.3): one autocommit `UPDATE … FOR
/// UPDATE SKIP LOCKED … RETURNING`, which increments `attempts`. Run it outside any
/// transaction, so the lease is visible to other dispatchers at once.
///
/// The rows come back in enqueue order (`created_at`, the enqueueing transaction's start,
/// then `id`): `RETURNING` follows no order of its own, and a stream must receive a session's
/// `suspend` before its `resume`.
pub async fn claim(
    conn: &mut PgConnection,
    table: OutboxTable,
    request: &ClaimRequest<'_>,
) -> Result<Vec<ClaimedRow>, sqlx::Error> {
    let mut rows = sqlx::query_as::<_, ClaimedRow>(table.sql().claim)
        .bind(request.lock.as_secs_f64())
        .bind(request.worker)
        .bind(request.producer)
        .bind(request.batch)
        .fetch_all(conn)
        .await?;
    rows.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(rows)
}

/// Marks rows published (`published_at = now()`, lease and `last_error` cleared); rows no
/// longer pending are left alone. Returns how many changed.
pub async fn mark_published(
    conn: &mut PgConnection,
    table: OutboxTable,
    ids: &[String],
) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(table.sql().published)
        .bind(ids)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// A failed publication to schedule again.
#[derive(Debug, Clone)]
pub struct RetryMark {
    /// The outbox id.
    pub id: String,
    /// Delay before the row is due again.
    pub backoff: std::time::Duration,
    /// Why it failed (truncated to [`MAX_LAST_ERROR_CHARS`]).
    pub error: String,
}

/// Schedules rows again: `available_at = now() + backoff`, `last_error`, lease released.
/// Returns how many changed.
pub async fn mark_retry(
    conn: &mut PgConnection,
    table: OutboxTable,
    marks: &[RetryMark],
) -> Result<u64, sqlx::Error> {
    if marks.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = marks.iter().map(|m| m.id.as_str()).collect();
    let backoffs: Vec<f64> = marks.iter().map(|m| m.backoff.as_secs_f64()).collect();
    let errors: Vec<String> = marks.iter().map(|m| truncate_error(&m.error)).collect();
    let done = sqlx::query(table.sql().retry)
        .bind(&ids)
        .bind(&backoffs)
        .bind(&errors)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// Gives rows up: `status = 'dead'` with their `last_error` (truncated), lease released.
/// `marks` pairs an id with its error. Returns how many changed.
pub async fn mark_dead(
    conn: &mut PgConnection,
    table: OutboxTable,
    marks: &[(String, String)],
) -> Result<u64, sqlx::Error> {
    if marks.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = marks.iter().map(|(id, _)| id.as_str()).collect();
    let errors: Vec<String> = marks.iter().map(|(_, e)| truncate_error(e)).collect();
    let done = sqlx::query(table.sql().dead)
        .bind(&ids)
        .bind(&errors)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// Counts for metrics and readiness (storage §7.3 step 6).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct OutboxStats {
    /// Rows waiting to be published.
    pub pending: i64,
    /// Rows given up (`dead`).
    pub dead: i64,
    /// Age of the oldest pending row, in seconds; `None` with nothing pending.
    pub oldest_pending_age_secs: Option<f64>,
}

/// Pending and dead counts and the oldest pending age, of one producer or (`None`) all.
pub async fn stats(
    conn: &mut PgConnection,
    table: OutboxTable,
    producer: Option<&str>,
) -> Result<OutboxStats, sqlx::Error> {
    let (pending, dead, oldest): (i64, i64, Option<f64>) = sqlx::query_as(table.sql().stats)
        .bind(producer)
        .fetch_one(conn)
        .await?;
    Ok(OutboxStats {
        pending,
        dead,
        oldest_pending_age_secs: oldest,
    })
}

/// Which finished rows retention deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// `published` rows (`OUTBOX_RETENTION_DAYS`).
    Published,
    /// `dead` rows (`OUTBOX_DEAD_RETENTION_DAYS`).
    Dead,
}

impl Finished {
    fn status(self) -> &'static str {
        match self {
            Finished::Published => "published",
            Finished::Dead => "dead",
        }
    }
}

/// Retention (storage §11): deletes at most `limit` rows in state `finished` last updated
/// before `cutoff`, of one producer or (`None`) all. Pending rows are never touched.
/// Returns how many were deleted; call again while it returns `limit`.
///
/// Needs DELETE on the table: `caracal_api` and `caracal_coordinator` have it,
/// `caracal_sts` does not (storage §2.3).
pub async fn purge(
    conn: &mut PgConnection,
    table: OutboxTable,
    finished: Finished,
    cutoff: chrono::DateTime<chrono::Utc>,
    producer: Option<&str>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(table.sql().purge)
        .bind(cutoff)
        .bind(producer)
        .bind(limit)
        .bind(finished.status())
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// `caracal outbox retry --dead [--topic]`: dead rows become pending again, due now, with
/// `attempts` reset (their `last_error` is kept). Optionally only one producer's rows, or one
/// topic's. Returns how many were re-queued.
pub async fn retry_dead(
    conn: &mut PgConnection,
    table: OutboxTable,
    producer: Option<&str>,
    topic: Option<&str>,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(table.sql().retry_dead)
        .bind(producer)
        .bind(topic)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// At most [`MAX_LAST_ERROR_CHARS`] characters, on a character boundary.
fn truncate_error(error: &str) -> String {
    match error.char_indices().nth(MAX_LAST_ERROR_CHARS) {
        Some((end, _)) => error[..end].to_owned(),
        None => error.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_table_has_its_own_static_statements() {
        for (table, other) in [
            (OutboxTable::Event, "caracal_outbox"),
            (OutboxTable::Caracal, "event_outbox"),
        ] {
            let sql = table.sql();
            for statement in [
                sql.claim,
                sql.published,
                sql.retry,
                sql.dead,
                sql.stats,
                sql.purge,
                sql.retry_dead,
            ] {
                assert!(
                    statement.contains(&format!("caracal.{} ", table.name())),
                    "{statement}"
                );
                assert!(!statement.contains(other), "{statement}");
            }
            assert!(sql.claim.contains("FOR UPDATE SKIP LOCKED"));
        }
    }

    #[test]
    fn errors_are_truncated_on_a_character_boundary() {
        let long = "é".repeat(MAX_LAST_ERROR_CHARS + 10);
        let cut = truncate_error(&long);
        assert_eq!(cut.chars().count(), MAX_LAST_ERROR_CHARS);
        assert_eq!(truncate_error("short"), "short");
    }
}
