//! The live authority view (authority §4.1): revoked anchors, agent sessions, delegation
//! edges and graph epochs, updated in place, so that a revocation bites at once, including
//! in the re-checks while a response streams.
//!
//! - **Marks.** A revoked authority record, a stopped or suspended agent session and a
//!   revoked edge each leave a mark (one map per kind, keyed by id). Stream messages set marks the
//!   moment they are read; the poll sets them from Postgres and clears a session's mark when
//!   it is active again (resume), but never a mark set after the poll began.
//! - **Read-through.** Records, sessions and edges a request names are loaded once from
//!   Postgres and cached; concurrent lookups of one id share one load; unknown ids are
//!   cached as absent for 1 s. Ids come only from signature-verified claims.
//! - **Freshness.** The view is fresh while the revocation consumers completed a read, or
//!   a poll completed, within `max_age`. A stale view denies every request (step 1).

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use control_events::{fanout::FanoutStats, streams};
use control_model::authority::{AgentSessionView, AuthorityLookup, EdgeView, MAX_HOPS, RecordView};
use control_store::{delegation, gateway_view, zone::cross_zone_read};
use sqlx::PgPool;

/// How long an unknown id is remembered as absent.
const NEGATIVE_TTL: Duration = Duration::from_secs(1);
/// How long a loaded row is kept without news (streams and the poll refresh it sooner).
const POSITIVE_TTL: Duration = Duration::from_secs(60);
/// Marks of sessions and edges outlive any mandate anchored on them.
const MARK_TTL_SECONDS: i64 = 24 * 3600;
/// Rows changed this long before the watermark are re-read (commit order is not
/// `updated_at` order).
const WATERMARK_OVERLAP: chrono::Duration = chrono::Duration::seconds(30);

/// The view could not load what a request needs (Postgres unreachable): fail closed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("authority view unavailable: {0}")]
pub struct ViewError(pub String);

impl From<control_store::StoreError> for ViewError {
    fn from(e: control_store::StoreError) -> Self {
        Self(e.to_string())
    }
}

impl From<sqlx::Error> for ViewError {
    fn from(e: sqlx::Error) -> Self {
        Self(e.to_string())
    }
}

/// A mark: until when it holds, and when it was set (unix ms).
#[derive(Debug, Clone, Copy)]
struct Mark {
    until: i64,
    set_ms: i64,
}

/// Expires entries at their own deadline.
struct MarkExpiry;

#[allow(
    clippy::disallowed_types,
    reason = "moka's Expiry trait names std::time::Instant"
)]
impl moka::Expiry<String, Mark> for MarkExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Mark,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let left = value.until.saturating_sub(Utc::now().timestamp()).max(1);
        Some(Duration::from_secs(u64::try_from(left).unwrap_or(1)))
    }

    fn expire_after_update(
        &self,
        key: &String,
        value: &Mark,
        updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, updated_at)
    }
}

/// Absent rows live 1 s, present ones [`POSITIVE_TTL`].
struct RowExpiry;

#[allow(
    clippy::disallowed_types,
    reason = "moka's Expiry trait names std::time::Instant"
)]
impl<T> moka::Expiry<String, Option<Arc<T>>> for RowExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Option<Arc<T>>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(if value.is_some() {
            POSITIVE_TTL
        } else {
            NEGATIVE_TTL
        })
    }

    fn expire_after_update(
        &self,
        key: &String,
        value: &Option<Arc<T>>,
        updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, updated_at)
    }
}

type RowCache<T> = moka::future::Cache<String, Option<Arc<T>>>;

fn row_cache<T: Send + Sync + 'static>() -> RowCache<T> {
    moka::future::Cache::builder()
        .max_capacity(200_000)
        .expire_after(RowExpiry)
        .build()
}

/// The anchors of a bearer (wire-contract §4.4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Anchors {
    /// `sid`.
    pub sid: String,
    /// `root_sid`.
    pub root_sid: String,
    /// `agent_session_id`.
    pub agent_session_id: Option<String>,
    /// `delegation_edge_id`.
    pub delegation_edge_id: Option<String>,
}

/// The live authority view.
pub struct AuthorityView {
    pool: Option<PgPool>,
    records: RowCache<RecordView>,
    sessions: RowCache<AgentSessionView>,
    edges: RowCache<EdgeView>,
    epochs: moka::sync::Cache<String, i64>,
    /// Marks by id, one map per [`Kind`]: a check needs no key to be built.
    marks: [moka::sync::Cache<String, Mark>; 3],
    consumers: Vec<Arc<FanoutStats>>,
    last_poll_ms: AtomicI64,
    max_age: Duration,
    watermarks: tokio::sync::Mutex<(DateTime<Utc>, DateTime<Utc>)>,
}

impl std::fmt::Debug for AuthorityView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityView")
            .field("marks", &self.mark_count())
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl AuthorityView {
    /// A view backed by Postgres (`pool` as `caracal_gateway`), fresh while the given
    /// revocation consumers or the poll are recent. `pool = None` (standalone mode) has no
    /// authority records, sessions or edges: mandates that name them are refused.
    pub fn new(pool: Option<PgPool>, consumers: Vec<Arc<FanoutStats>>, max_age: Duration) -> Self {
        Self {
            pool,
            records: row_cache(),
            sessions: row_cache(),
            edges: row_cache(),
            epochs: moka::sync::Cache::builder().max_capacity(100_000).build(),
            marks: [(); 3].map(|()| {
                moka::sync::Cache::builder()
                    .max_capacity(1_000_000)
                    .expire_after(MarkExpiry)
                    .build()
            }),
            consumers,
            last_poll_ms: AtomicI64::new(0),
            max_age,
            watermarks: tokio::sync::Mutex::new((DateTime::UNIX_EPOCH, DateTime::UNIX_EPOCH)),
        }
    }

    /// Whether revocation state is recent enough to decide with (step 1).
    pub fn is_fresh(&self) -> bool {
        self.age_ms()
            .is_some_and(|age| u128::try_from(age).unwrap_or(u128::MAX) <= self.max_age.as_millis())
    }

    /// Milliseconds since the newest of: the last completed poll, the oldest of the
    /// consumers' last reads. `None` before either happened.
    pub fn age_ms(&self) -> Option<i64> {
        let now = Utc::now().timestamp_millis();
        let poll = match self.last_poll_ms.load(Ordering::Acquire) {
            0 => None,
            at => Some(now.saturating_sub(at)),
        };
        let streams = if self.consumers.is_empty() {
            None
        } else {
            self.consumers
                .iter()
                .map(|c| c.read_age_ms(now))
                .collect::<Option<Vec<i64>>>()
                .and_then(|ages| ages.into_iter().max())
        };
        match (poll, streams) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Marks the view fresh without a source (standalone mode without revocation streams:
    /// there is nothing to be stale about).
    pub fn mark_polled_now(&self) {
        self.last_poll_ms
            .store(Utc::now().timestamp_millis(), Ordering::Release);
    }

    /// Step 13's marks: any of the anchors revoked. Synchronous and cheap: the streaming
    /// re-checks call this before every read from the upstream.
    pub fn anchors_revoked(&self, anchors: &Anchors) -> bool {
        let marked = |kind: Kind, id: &str| !id.is_empty() && self.marks(kind).contains_key(id);
        marked(Kind::Record, &anchors.sid)
            || marked(Kind::Record, &anchors.root_sid)
            || anchors
                .agent_session_id
                .as_deref()
                .is_some_and(|id| marked(Kind::Session, id))
            || anchors
                .delegation_edge_id
                .as_deref()
                .is_some_and(|id| marked(Kind::Edge, id))
    }

    /// Number of marks held (metrics, `/internal/revocations/reload`).
    pub fn mark_count(&self) -> u64 {
        self.marks
            .iter()
            .map(|marks| {
                marks.run_pending_tasks();
                marks.entry_count()
            })
            .sum()
    }

    fn marks(&self, kind: Kind) -> &moka::sync::Cache<String, Mark> {
        &self.marks[kind as usize]
    }

    fn mark(&self, kind: Kind, id: &str, until: i64) {
        if id.is_empty() {
            return;
        }
        self.marks(kind).insert(
            id.to_owned(),
            Mark {
                until,
                set_ms: Utc::now().timestamp_millis(),
            },
        );
    }

    /// Loads what §2.3 needs for these anchors: the `sid` record, the agent session, the
    /// edge with its lineage and every session the lineage names, and the zone epoch.
    pub async fn prefetch(&self, zone: &str, anchors: &Anchors) -> Result<Prefetched, ViewError> {
        let mut out = Prefetched {
            epoch: 0,
            records: HashMap::new(),
            sessions: HashMap::new(),
            edges: HashMap::new(),
        };
        if let Some(record) = self.record(&anchors.sid).await? {
            out.records.insert(record.id.clone(), record);
        }
        let mut session_ids: Vec<String> = anchors.agent_session_id.iter().cloned().collect();
        if let Some(edge_id) = anchors.delegation_edge_id.as_deref() {
            let mut next = Some(edge_id.to_owned());
            while let Some(id) = next.take() {
                if out.edges.len() > MAX_HOPS || out.edges.contains_key(&id) {
                    break;
                }
                let Some(edge) = self.edge(&id).await? else {
                    break;
                };
                session_ids.push(edge.source_session_id.clone());
                session_ids.push(edge.target_session_id.clone());
                next.clone_from(&edge.parent_edge_id);
                out.edges.insert(id, edge);
            }
            out.epoch = self.epoch(zone).await?;
        }
        for id in session_ids {
            if out.sessions.contains_key(&id) {
                continue;
            }
            if let Some(session) = self.session(&id).await? {
                out.sessions.insert(id, session);
            }
        }
        Ok(out)
    }

    async fn record(&self, id: &str) -> Result<Option<Arc<RecordView>>, ViewError> {
        let Some(pool) = self.pool.clone() else {
            return Ok(None);
        };
        let key = id.to_owned();
        self.records
            .try_get_with(key.clone(), async move {
                let mut tx = cross_zone_read(&pool).await?;
                let row = delegation::record(&mut tx, &key).await?;
                tx.finish().await?;
                Ok::<_, ViewError>(row.map(Arc::new))
            })
            .await
            .map_err(|e| (*e).clone())
    }

    async fn session(&self, id: &str) -> Result<Option<Arc<AgentSessionView>>, ViewError> {
        let Some(pool) = self.pool.clone() else {
            return Ok(None);
        };
        let key = id.to_owned();
        self.sessions
            .try_get_with(key.clone(), async move {
                let mut tx = cross_zone_read(&pool).await?;
                let rows = delegation::agent_sessions(&mut tx, std::slice::from_ref(&key)).await?;
                tx.finish().await?;
                Ok::<_, ViewError>(rows.into_iter().next().map(Arc::new))
            })
            .await
            .map_err(|e| (*e).clone())
    }

    /// One edge; a miss loads its whole lineage in one query and caches the ancestors too.
    async fn edge(&self, id: &str) -> Result<Option<Arc<EdgeView>>, ViewError> {
        let Some(pool) = self.pool.clone() else {
            return Ok(None);
        };
        let key = id.to_owned();
        let edges = self.edges.clone();
        self.edges
            .try_get_with(key.clone(), async move {
                let mut tx = cross_zone_read(&pool).await?;
                let lineage = delegation::edge_lineage(&mut tx, &key).await?;
                tx.finish().await?;
                let mut found = None;
                for edge in lineage {
                    let edge = Arc::new(edge);
                    if edge.id == key {
                        found = Some(Arc::clone(&edge));
                    } else if !edges.contains_key(&edge.id) {
                        edges.insert(edge.id.clone(), Some(edge)).await;
                    }
                }
                Ok::<_, ViewError>(found)
            })
            .await
            .map_err(|e| (*e).clone())
    }

    async fn epoch(&self, zone: &str) -> Result<i64, ViewError> {
        if let Some(epoch) = self.epochs.get(zone) {
            return Ok(epoch);
        }
        let Some(pool) = self.pool.as_ref() else {
            return Ok(0);
        };
        let mut tx = cross_zone_read(pool).await?;
        let epoch = delegation::epoch(&mut tx, zone).await?;
        tx.finish().await?;
        self.raise_epoch(zone, epoch);
        Ok(self.epochs.get(zone).unwrap_or(epoch))
    }

    fn raise_epoch(&self, zone: &str, epoch: i64) {
        self.epochs
            .entry(zone.to_owned())
            .and_upsert_with(|current| current.map_or(epoch, |c| c.into_value().max(epoch)));
    }

    /// Applies one verified message of `caracal.sessions.revoke`,
    /// `caracal.agents.lifecycle` or `caracal.delegations.invalidate` (wire-contract §5).
    pub async fn apply(&self, stream: &str, fields: &HashMap<String, String>) {
        let field = |name: &str| {
            fields
                .get(name)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        };
        let until = Utc::now().timestamp() + MARK_TTL_SECONDS;
        match stream {
            streams::SESSIONS_REVOKE => {
                if let Some(id) = field("session_id") {
                    self.mark(Kind::Record, id, until);
                    self.records.invalidate(id).await;
                }
                if let Some(id) = field("agent_session_id") {
                    self.mark(Kind::Session, id, until);
                    self.sessions.invalidate(id).await;
                }
                if let Some(id) = field("delegation_edge_id") {
                    self.mark(Kind::Edge, id, until);
                    self.edges.invalidate(id).await;
                }
            }
            streams::AGENTS_LIFECYCLE => {
                let Some(id) = field("agent_session_id") else {
                    return;
                };
                match field("event") {
                    Some("suspend" | "terminate") => self.mark(Kind::Session, id, until),
                    Some("resume") => self.marks(Kind::Session).invalidate(id),
                    _ => {}
                }
                self.sessions.invalidate(id).await;
            }
            streams::DELEGATIONS_INVALIDATE => {
                if let (Some(zone), Some(epoch)) = (
                    field("zone_id"),
                    field("epoch").and_then(|e| e.parse().ok()),
                ) {
                    self.raise_epoch(zone, epoch);
                }
                if let Some(id) = field("edge_id") {
                    if field("event") == Some("edge_revoke") {
                        self.mark(Kind::Edge, id, until);
                    }
                    self.edges.invalidate(id).await;
                }
                if let Some(ids) =
                    field("edge_ids").and_then(|raw| serde_json::from_str::<Vec<String>>(raw).ok())
                {
                    for id in ids {
                        self.edges.invalidate(&id).await;
                    }
                }
            }
            _ => {}
        }
    }

    /// One healing poll (every 5 s): revoked records, sessions and edges changed since the
    /// watermark, epochs. A completed poll makes the view fresh.
    pub async fn poll(&self) -> Result<(), ViewError> {
        let Some(pool) = self.pool.as_ref() else {
            self.mark_polled_now();
            return Ok(());
        };
        let started_ms = Utc::now().timestamp_millis();
        let mut watermarks = self.watermarks.lock().await;
        let mut tx = cross_zone_read(pool).await?;
        let revoked = gateway_view::revoked_records(&mut tx).await?;
        let (sessions, sessions_at) =
            gateway_view::sessions_changed_since(&mut tx, watermarks.0 - WATERMARK_OVERLAP).await?;
        let (edges, edges_at) =
            gateway_view::edges_changed_since(&mut tx, watermarks.1 - WATERMARK_OVERLAP).await?;
        let epochs = gateway_view::epochs(&mut tx).await?;
        tx.finish().await?;

        for record in revoked {
            if !self.marks(Kind::Record).contains_key(&record.id) {
                self.mark(Kind::Record, &record.id, record.expires_at.timestamp());
                self.records.invalidate(&record.id).await;
            }
        }
        let until = Utc::now().timestamp() + MARK_TTL_SECONDS;
        for session in sessions {
            let id = session.id.clone();
            match session.status.as_str() {
                "active" => self.unmark_if_older(Kind::Session, &id, started_ms),
                _ => self.mark(Kind::Session, &id, until),
            }
            if self.sessions.contains_key(&id) {
                self.sessions.insert(id, Some(Arc::new(session))).await;
            }
        }
        for edge in edges {
            let id = edge.id.clone();
            if edge.status == "revoked" || edge.revoked_at.is_some() {
                self.mark(Kind::Edge, &id, until);
            }
            if self.edges.contains_key(&id) {
                self.edges.insert(id, Some(Arc::new(edge))).await;
            }
        }
        for (zone, epoch) in epochs {
            self.raise_epoch(&zone, epoch);
        }
        if let Some(at) = sessions_at {
            watermarks.0 = watermarks.0.max(at);
        }
        if let Some(at) = edges_at {
            watermarks.1 = watermarks.1.max(at);
        }
        self.last_poll_ms
            .store(Utc::now().timestamp_millis(), Ordering::Release);
        Ok(())
    }

    /// Clears a mark unless a message set it after `since_ms` (a revocation read while
    /// this poll ran must survive the poll's older snapshot).
    fn unmark_if_older(&self, kind: Kind, id: &str, since_ms: i64) {
        let marks = self.marks(kind);
        if marks.get(id).is_some_and(|m| m.set_ms < since_ms) {
            marks.invalidate(id);
        }
    }
}

/// What a mark is about.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A revoked authority record (`sid`, `root_sid`).
    Record = 0,
    /// A stopped or suspended agent session.
    Session = 1,
    /// A revoked delegation edge.
    Edge = 2,
}

/// What one request's §2.3 re-validation reads, fetched once and held for the decision.
#[derive(Debug, Clone)]
pub struct Prefetched {
    epoch: i64,
    records: HashMap<String, Arc<RecordView>>,
    sessions: HashMap<String, Arc<AgentSessionView>>,
    edges: HashMap<String, Arc<EdgeView>>,
}

impl AuthorityLookup for Prefetched {
    fn record(&self, id: &str) -> Option<&RecordView> {
        self.records.get(id).map(AsRef::as_ref)
    }

    fn session(&self, id: &str) -> Option<&AgentSessionView> {
        self.sessions.get(id).map(AsRef::as_ref)
    }

    fn edge(&self, id: &str) -> Option<&EdgeView> {
        self.edges.get(id).map(AsRef::as_ref)
    }

    fn epoch(&self) -> i64 {
        self.epoch
    }
}

#[cfg(test)]
mod tests;
