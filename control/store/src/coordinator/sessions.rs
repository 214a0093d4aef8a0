//! `agent_sessions` and `agent_topology` (storage §1.5): start, read, heartbeat and lease,
//! suspend and resume of a subtree.

use chrono::{DateTime, Utc};
use control_model::{
    ZoneId,
    page::{After, Keyed, Page, PageRequest, bounds},
};
use sqlx::{PgConnection, PgPool, Row};

use crate::{
    StoreError,
    cascade::{ChangedSession, MAX_DEPTH, changed_sessions},
    delegation::{self, ApplicationAndRecord, IDENTITY_COLUMNS, IDENTITY_JOINS},
    outbox::Batch,
    zone::{ZoneTx, zone_tx_with},
};

/// An agent session row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AgentSessionRow {
    /// Id.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// Owning application.
    pub application_id: String,
    /// Parent session.
    pub parent_id: Option<String>,
    /// The authority record it runs under.
    pub subject_authority_record_id: Option<String>,
    /// `task` or `service`.
    pub lifecycle: String,
    /// `active`, `suspended`, `terminated`, `expired`.
    pub status: String,
    /// +1 on every status change.
    pub status_version: i64,
    /// Why it ended.
    pub termination_reason: Option<String>,
    /// Depth in the tree (0 for a root).
    pub depth: i32,
    /// Labels.
    pub labels: Vec<String>,
    /// Children allowed.
    pub max_children: i32,
    /// Children started and not ended.
    pub child_count: i32,
    /// Task TTL.
    pub ttl_seconds: Option<i32>,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// Last heartbeat or lease call.
    pub last_active_at: Option<DateTime<Utc>>,
    /// Last heartbeat.
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// Service lease deadline.
    pub heartbeat_deadline_at: Option<DateTime<Utc>>,
    /// Lease fencing generation (0 for tasks).
    pub lease_generation: i64,
    /// End time.
    pub terminated_at: Option<DateTime<Utc>>,
    /// Caller metadata.
    pub metadata_json: serde_json::Value,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// The transaction's `now()` when the row was read.
    pub read_at: DateTime<Utc>,
}

impl Keyed for AgentSessionRow {
    fn key(&self) -> After {
        After {
            ts: self.created_at,
            id: self.id.clone(),
        }
    }
}

const COLUMNS: &str = "id, zone_id, application_id, parent_id, subject_authority_record_id, \
     lifecycle, status, status_version, termination_reason, depth, labels, max_children, \
     child_count, ttl_seconds, started_at, last_active_at, last_heartbeat_at, \
     heartbeat_deadline_at, lease_generation, terminated_at, metadata_json, created_at, \
     now() AS read_at";

/// One session.
pub async fn get(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<AgentSessionRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM agent_sessions WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// One session, locked for the rest of the transaction.
pub async fn lock(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<AgentSessionRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM agent_sessions WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// The statement that serialises session starts in the transaction's zone (authority §2.1
/// step 4: `coordinator:session_start:<zone>`, transaction scoped).
const START_LOCK: &str = "SELECT pg_advisory_xact_lock(\
     hashtextextended('coordinator:session_start:' || current_setting('caracal.zone_id'), 0))";

/// Begins a session start's transaction in `zone` holding the zone's start lock, in one
/// round trip: every statement after it reads under the lock.
///
/// # Errors
///
/// Database errors; a malformed zone id.
pub async fn begin_start(pool: &PgPool, zone: &ZoneId) -> Result<ZoneTx, StoreError> {
    zone_tx_with(pool, zone, START_LOCK).await
}

/// What a session start reads first under its lock, in one round trip.
#[derive(Debug, Clone)]
pub struct StartReads {
    /// The caller's application and authority record.
    pub identity: ApplicationAndRecord,
    /// The slot bound of [`slots`] for the started application.
    pub bound: Slots,
}

/// Under [`begin_start`]'s lock: the caller's application and authority record (as
/// [`delegation::application_and_record`] reads them) and the zone's slot bound for
/// `application_id` (the started application): the zone's pending releases are folded into
/// its slot counters and the counters summed, an upper bound of the exact counts read in one
/// statement whatever the number of sessions. Only start transactions, one at a time per
/// zone under its start lock, change the counters; releases committed after this statement
/// began stay for the next start.
///
/// # Errors
///
/// Database errors.
pub async fn start_reads(
    conn: &mut PgConnection,
    caller_application: &str,
    caller_record: &str,
    application_id: &str,
) -> Result<StartReads, sqlx::Error> {
    let row = sqlx::query(&format!(
        "WITH released AS (
            DELETE FROM agent_session_slot_releases RETURNING application_id
         ), counted AS (
            SELECT application_id, count(*) AS n FROM released GROUP BY application_id
         ), lowered AS (
            UPDATE agent_session_slots s SET held = greatest(s.held - c.n, 0)
              FROM counted c WHERE s.application_id = c.application_id
            RETURNING s.application_id, s.held
         ), bound AS (
            SELECT coalesce(sum(coalesce(l.held, s.held)), 0)::int8 AS zone_slots,
                   coalesce(sum(coalesce(l.held, s.held)) FILTER (WHERE s.application_id = $3), 0)::int8
                     AS application_slots
              FROM agent_session_slots s LEFT JOIN lowered l USING (application_id)
         )
         SELECT bound.zone_slots, bound.application_slots, {IDENTITY_COLUMNS}
           FROM bound {IDENTITY_JOINS}"
    ))
    .bind(caller_application)
    .bind(caller_record)
    .bind(application_id)
    .fetch_one(conn)
    .await?;
    Ok(StartReads {
        identity: delegation::identity_pair(&row)?,
        bound: Slots {
            zone: row.try_get("zone_slots")?,
            application: row.try_get("application_slots")?,
        },
    })
}

/// Sessions holding a capacity slot (authority §2.1 step 7): in the zone, of the
/// application. A session holds a slot while it is active or suspended and has not run out
/// (a task within its TTL; a service with a live lease, or suspended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slots {
    /// In the zone.
    pub zone: i64,
    /// Of the application.
    pub application: i64,
}

/// The slots held in the transaction's zone, as far as the start's rules need them, from
/// the `bound` of [`start_reads`] (call it under [`begin_start`]'s lock). When the bound
/// already shows both counts below their caps (and, for a `single`-session application, no
/// session at all), the exact counts cannot decide otherwise and the bound is returned. Only
/// when it might, the sessions are counted by the liveness rule, each count stopping at its
/// cap.
///
/// # Errors
///
/// Database errors.
pub async fn slots(
    conn: &mut PgConnection,
    bound: Slots,
    application_id: &str,
    zone_cap: i64,
    application_cap: i64,
    single: bool,
) -> Result<Slots, sqlx::Error> {
    const HOLDING: &str = "status IN ('active', 'suspended') \
        AND ((lifecycle = 'task' AND started_at + make_interval(secs => ttl_seconds) > now()) \
             OR (lifecycle = 'service' AND (status = 'suspended' OR heartbeat_deadline_at > now())))";
    let decided = bound.zone < zone_cap
        && bound.application < application_cap
        && !(single && bound.application > 0);
    if decided {
        return Ok(bound);
    }
    let (zone, application): (i64, i64) = sqlx::query_as(&format!(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM agent_sessions WHERE {HOLDING} LIMIT $2) z), \
                (SELECT count(*) FROM (SELECT 1 FROM agent_sessions \
                                        WHERE application_id = $1 AND {HOLDING} LIMIT $3) a)"
    ))
    .bind(application_id)
    .bind(zone_cap)
    .bind(application_cap)
    .fetch_one(conn)
    .await?;
    Ok(Slots { zone, application })
}

/// A session to insert.
#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    /// Id (UUIDv7).
    pub id: &'a str,
    /// Zone.
    pub zone_id: &'a str,
    /// Owning application.
    pub application_id: &'a str,
    /// Parent.
    pub parent_id: Option<&'a str>,
    /// Subject authority record.
    pub subject_authority_record_id: &'a str,
    /// `task` or `service`.
    pub lifecycle: &'a str,
    /// Depth.
    pub depth: i32,
    /// Labels.
    pub labels: &'a [String],
    /// Task TTL (tasks only).
    pub ttl_seconds: Option<i32>,
    /// Service lease length (services only).
    pub lease_seconds: Option<i64>,
    /// Metadata.
    pub metadata: &'a serde_json::Value,
    /// `created_by`.
    pub actor: &'a str,
}

impl NewSession<'_> {
    /// The session as it will be stored, for its `spawn` message: status version 0, lease
    /// generation 1 for a service (its first lease) and 0 for a task. [`insert`] writes
    /// exactly these values.
    #[must_use]
    pub fn changed(&self) -> ChangedSession {
        ChangedSession {
            id: self.id.to_owned(),
            application_id: self.application_id.to_owned(),
            parent_id: self.parent_id.map(str::to_owned),
            lifecycle: self.lifecycle.to_owned(),
            status_version: 0,
            lease_generation: if self.lifecycle == "service" { 1 } else { 0 },
            termination_reason: String::new(),
            announce_record_id: None,
        }
    }
}

/// Inserts a session (a service with a lease of `lease_seconds`) and, in the same statement,
/// its announcement `spawn` (the outbox rows built from [`NewSession::changed`]); when it
/// has a parent, records the tree edge and counts the child.
///
/// # Errors
///
/// Database errors.
pub async fn insert(
    conn: &mut PgConnection,
    new: &NewSession<'_>,
    spawn: &Batch<'_>,
) -> Result<AgentSessionRow, sqlx::Error> {
    let changed = new.changed();
    let sql = format!(
        "WITH announced AS ({}) \
         INSERT INTO agent_sessions (id, zone_id, application_id, parent_id, \
                subject_authority_record_id, lifecycle, depth, labels, ttl_seconds, \
                heartbeat_deadline_at, last_active_at, status_version, lease_generation, \
                metadata_json, created_by, updated_by) \
         VALUES ($8, $9, $10, $11, $12, $13, $14, $15, $16, \
                 CASE WHEN $17::bigint IS NULL THEN NULL ELSE now() + make_interval(secs => $17) END, \
                 now(), $18, $19, $20, $21, $21) \
         RETURNING {COLUMNS}",
        spawn.insert_sql()
    );
    let row: AgentSessionRow = spawn
        .bind(sqlx::query_as(&sql))
        .bind(new.id)
        .bind(new.zone_id)
        .bind(new.application_id)
        .bind(new.parent_id)
        .bind(new.subject_authority_record_id)
        .bind(new.lifecycle)
        .bind(new.depth)
        .bind(new.labels)
        .bind(new.ttl_seconds)
        .bind(new.lease_seconds)
        .bind(changed.status_version)
        .bind(changed.lease_generation)
        .bind(new.metadata)
        .bind(new.actor)
        .fetch_one(&mut *conn)
        .await?;
    if let Some(parent) = new.parent_id {
        sqlx::query(
            "INSERT INTO agent_topology (zone_id, parent_id, child_id) VALUES ($1, $2, $3)",
        )
        .bind(new.zone_id)
        .bind(parent)
        .bind(new.id)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "UPDATE agent_sessions SET child_count = child_count + 1, updated_at = now() WHERE id = $1",
        )
        .bind(parent)
        .execute(&mut *conn)
        .await?;
    }
    Ok(row)
}

/// Records a service heartbeat: a fresh lease of `lease_seconds`.
pub async fn heartbeat(
    conn: &mut PgConnection,
    id: &str,
    lease_seconds: i64,
    metadata: Option<&serde_json::Value>,
) -> Result<AgentSessionRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE agent_sessions SET last_heartbeat_at = now(), last_active_at = now(), \
                heartbeat_deadline_at = now() + make_interval(secs => $2), \
                metadata_json = coalesce($3, metadata_json), updated_at = now() \
          WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(lease_seconds)
    .bind(metadata)
    .fetch_one(conn)
    .await
}

/// Takes the service's lease: the next generation (fencing every older holder) and a fresh
/// deadline.
pub async fn take_lease(
    conn: &mut PgConnection,
    id: &str,
    lease_seconds: i64,
) -> Result<AgentSessionRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE agent_sessions SET lease_generation = lease_generation + 1, last_active_at = now(), \
                heartbeat_deadline_at = now() + make_interval(secs => $2), updated_at = now() \
          WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(lease_seconds)
    .fetch_one(conn)
    .await
}

/// Suspends `root` and its active descendants (authority §2.5: edges are kept); returns
/// them shallowest first, with the subject record to announce.
pub async fn suspend_tree(
    conn: &mut PgConnection,
    root: &str,
    actor: &str,
) -> Result<Vec<ChangedSession>, sqlx::Error> {
    change_tree(conn, root, "active", "suspended", None, actor).await
}

/// Resumes the suspended sessions of `root`'s subtree (a service gets a fresh lease of
/// `lease_seconds`); returns them shallowest first.
pub async fn resume_tree(
    conn: &mut PgConnection,
    root: &str,
    lease_seconds: i64,
    actor: &str,
) -> Result<Vec<ChangedSession>, sqlx::Error> {
    change_tree(
        conn,
        root,
        "suspended",
        "active",
        Some(lease_seconds),
        actor,
    )
    .await
}

async fn change_tree(
    conn: &mut PgConnection,
    root: &str,
    from: &str,
    to: &str,
    lease_seconds: Option<i64>,
    actor: &str,
) -> Result<Vec<ChangedSession>, sqlx::Error> {
    let ids: Vec<String> = sqlx::query_scalar(
        "WITH RECURSIVE tree AS ( \
           SELECT id, 0 AS depth FROM agent_sessions WHERE id = $1 \
           UNION \
           SELECT t.child_id, tree.depth + 1 FROM agent_topology t JOIN tree ON t.parent_id = tree.id \
            WHERE tree.depth < $6 \
         ) \
         UPDATE agent_sessions a SET status = $3, status_version = a.status_version + 1, \
                heartbeat_deadline_at = CASE WHEN a.lifecycle = 'service' AND $4::bigint IS NOT NULL \
                                             THEN now() + make_interval(secs => $4) \
                                             ELSE a.heartbeat_deadline_at END, \
                updated_at = now(), updated_by = $5 \
           FROM tree WHERE a.id = tree.id AND a.status = $2 \
          RETURNING a.id",
    )
    .bind(root)
    .bind(from)
    .bind(to)
    .bind(lease_seconds)
    .bind(actor)
    .bind(MAX_DEPTH)
    .fetch_all(&mut *conn)
    .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    changed_sessions(conn, &ids).await
}

/// The active or suspended sessions of the subtrees rooted at `roots` (at most
/// [`MAX_DEPTH`] levels), roots included, shallowest first.
pub async fn subtrees(
    conn: &mut PgConnection,
    roots: &[String],
) -> Result<Vec<AgentSessionRow>, sqlx::Error> {
    if roots.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(&format!(
        "WITH RECURSIVE tree AS ( \
           SELECT id, 0 AS level FROM agent_sessions WHERE id = ANY($1) \
           UNION \
           SELECT t.child_id, tree.level + 1 FROM agent_topology t JOIN tree ON t.parent_id = tree.id \
            WHERE tree.level < $2 \
         ) SELECT {COLUMNS} FROM agent_sessions \
            WHERE id IN (SELECT id FROM tree) AND status IN ('active', 'suspended') \
            ORDER BY depth, id"
    ))
    .bind(roots)
    .bind(MAX_DEPTH)
    .fetch_all(conn)
    .await
}

/// Which sessions a list returns.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListFilter<'a> {
    /// `status`.
    pub status: Option<&'a str>,
    /// `lifecycle`.
    pub lifecycle: Option<&'a str>,
    /// `application_id` (an agent caller is always restricted to its own).
    pub application_id: Option<&'a str>,
    /// A label the session carries.
    pub label: Option<&'a str>,
    /// Children of this session only.
    pub parent_id: Option<&'a str>,
}

/// A page of sessions, newest first.
pub async fn list(
    conn: &mut PgConnection,
    filter: ListFilter<'_>,
    page: &PageRequest,
) -> Result<Page<AgentSessionRow>, sqlx::Error> {
    let (ts, id) = bounds(page);
    let rows: Vec<AgentSessionRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM agent_sessions \
          WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR lifecycle = $2) \
            AND ($3::text IS NULL OR application_id = $3) AND ($4::text IS NULL OR $4 = ANY(labels)) \
            AND ($5::text IS NULL OR parent_id = $5) \
            AND (created_at, id) < ($6, $7) \
          ORDER BY created_at DESC, id DESC LIMIT $8"
    ))
    .bind(filter.status)
    .bind(filter.lifecycle)
    .bind(filter.application_id)
    .bind(filter.label)
    .bind(filter.parent_id)
    .bind(ts)
    .bind(id)
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page.limit))
}
