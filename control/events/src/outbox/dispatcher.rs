//! The dispatch loop (`storage-and-events.md` §7.3): claim, encode, publish in one pipeline,
//! record per row.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use control_store::outbox::{self, ClaimRequest, ClaimedRow, OutboxTable, RetryMark};
use rand::Rng as _;
use redis::{AsyncConnectionConfig, RedisError, aio::MultiplexedConnection};
use sqlx::PgPool;
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
    time::Instant,
};

use super::{
    OutboxConfig, OutboxHandle, OutboxKeys, OutboxStats, ReadyThresholds,
    encode::{EncodedMessage, encode},
};

/// Which rows a dispatcher publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxTarget {
    /// The table.
    pub table: OutboxTable,
    /// Only this producer's rows: `api`, `sts` or `coordinator`.
    pub producer: String,
    /// Written to `locked_by`: `<service>-<instance>`.
    pub worker: String,
}

/// What one round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoundOutcome {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows published and marked.
    pub published: usize,
    /// Rows scheduled again.
    pub retried: usize,
    /// Rows marked `dead`.
    pub dead: usize,
}

/// A round could not run or record its results; claimed rows come back after their lease.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// Postgres failed (acquire, claim or record).
    #[error("outbox database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// How a publication failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// Retried forever (Redis away, busy or failing over).
    Transient(String),
    /// Counts towards `OUTBOX_MAX_ATTEMPTS`, then `dead`.
    Permanent(String),
}

/// The transactional-outbox dispatcher of one producer. Build it, keep its
/// [`Dispatcher::handle`], then [`Dispatcher::spawn`] it.
pub struct Dispatcher {
    pool: PgPool,
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    target: OutboxTarget,
    config: OutboxConfig,
    keys: OutboxKeys,
    notify: Arc<Notify>,
    stats: Arc<OutboxStats>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("target", &self.target)
            .field("config", &self.config)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher over `target`, publishing to the Redis of `client` (connected on first
    /// use, reconnected after any failure).
    #[must_use]
    pub fn new(
        pool: PgPool,
        client: redis::Client,
        target: OutboxTarget,
        config: OutboxConfig,
        keys: OutboxKeys,
    ) -> Self {
        Self {
            pool,
            client,
            conn: None,
            target,
            config,
            keys,
            notify: Arc::new(Notify::new()),
            stats: Arc::new(OutboxStats::default()),
        }
    }

    /// The producer's side: wake-ups, stats, readiness.
    #[must_use]
    pub fn handle(&self) -> OutboxHandle {
        OutboxHandle {
            notify: Arc::clone(&self.notify),
            stats: Arc::clone(&self.stats),
            ready: ReadyThresholds {
                dead_max: self.config.ready_dead_max,
                max_age_secs: self.config.ready_max_age_secs,
            },
        }
    }

    /// Runs [`Dispatcher::run`] on a task.
    #[must_use]
    pub fn spawn(self, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    /// Dispatches until `shutdown` turns true (or its sender is dropped): a round whenever a
    /// producer wakes it or the poll interval passes, at once again after a full batch. A
    /// round in progress finishes first. Database failures back off up to 5 s; the stats are
    /// refreshed every `stats_interval`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut next_stats = Instant::now();
        let mut failures: u32 = 0;
        loop {
            if *shutdown.borrow() {
                return;
            }
            if Instant::now() >= next_stats {
                if let Err(error) = self.refresh_stats().await {
                    tracing::warn!(table = self.target.table.name(), %error, "cannot read outbox stats");
                }
                next_stats = Instant::now() + self.config.stats_interval;
            }
            let delay = match self.dispatch_once().await {
                Ok(outcome) => {
                    failures = 0;
                    if outcome.claimed >= self.batch_len() {
                        Duration::ZERO
                    } else {
                        self.config.poll
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(table = self.target.table.name(), %error, "outbox round failed; retrying");
                    (self.config.poll * 2_u32.saturating_pow(failures.min(5)))
                        .min(Duration::from_secs(5))
                }
            };
            if delay.is_zero() {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                () = self.notify.notified() => {}
                () = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One round: claim a batch (§7.3), encode each row, publish the encodable ones in one
    /// pipeline, and record every row's outcome.
    ///
    /// # Errors
    ///
    /// [`DispatchError::Database`] when the claim or the recording fails; Redis failures are
    /// recorded per row, never returned.
    pub async fn dispatch_once(&mut self) -> Result<RoundOutcome, DispatchError> {
        let mut conn = self.pool.acquire().await?;
        let rows = outbox::claim(
            &mut conn,
            self.target.table,
            &ClaimRequest {
                producer: &self.target.producer,
                worker: &self.target.worker,
                lock: self.config.lock,
                batch: i64::from(self.config.batch_size),
            },
        )
        .await?;
        drop(conn);
        if rows.is_empty() {
            return Ok(RoundOutcome::default());
        }
        let mut results: Vec<Result<(), Failure>> = Vec::with_capacity(rows.len());
        let mut messages: Vec<(usize, EncodedMessage)> = Vec::with_capacity(rows.len());
        for (index, row) in rows.iter().enumerate() {
            match encode(row, &self.keys) {
                Ok(message) => {
                    messages.push((index, message));
                    results.push(Ok(()));
                }
                Err(error) => {
                    results.push(Err(Failure::Permanent(format!("encoding failed: {error}"))));
                }
            }
        }
        let published = self.publish(&messages).await;
        for ((index, _), outcome) in messages.iter().zip(published) {
            if let Some(slot) = results.get_mut(*index) {
                *slot = outcome;
            }
        }
        self.record(&rows, results).await
    }

    /// Re-reads the producer's pending and dead counts and oldest pending age.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn refresh_stats(&self) -> Result<(), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let table =
            outbox::stats(&mut conn, self.target.table, Some(&self.target.producer)).await?;
        self.stats.record_table(&table);
        Ok(())
    }

    fn batch_len(&self) -> usize {
        usize::try_from(self.config.batch_size).unwrap_or(usize::MAX)
    }

    /// `XADD`s every message in one pipeline; one result per message, in order.
    async fn publish(&mut self, messages: &[(usize, EncodedMessage)]) -> Vec<Result<(), Failure>> {
        if messages.is_empty() {
            return Vec::new();
        }
        let mut pipe = redis::pipe();
        // Each command answers for itself: a WRONGTYPE on one stream fails only its rows.
        pipe.ignore_errors();
        for (_, message) in messages {
            pipe.add_command(message.xadd(self.config.streams_maxlen));
        }
        let timeout = self.config.redis_timeout;
        let answer = tokio::time::timeout(timeout, async {
            let mut conn = match &self.conn {
                // A multiplexed connection is a cheap handle: clone it.
                Some(conn) => conn.clone(),
                None => {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(Some(timeout));
                    let conn = self
                        .client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?;
                    self.conn = Some(conn.clone());
                    conn
                }
            };
            pipe.query_async::<Vec<redis::RedisResult<String>>>(&mut conn)
                .await
        })
        .await;
        let whole = match answer {
            Ok(Ok(replies)) if replies.len() == messages.len() => {
                return replies
                    .into_iter()
                    .map(|reply| reply.map(|_id| ()).map_err(|e| classify(&e)))
                    .collect();
            }
            Ok(Ok(replies)) => format!(
                "redis answered {} replies to {} commands",
                replies.len(),
                messages.len()
            ),
            Ok(Err(error)) => error.to_string(),
            Err(_elapsed) => format!("redis did not answer within {timeout:?}"),
        };
        // The connection failed or is in doubt: reconnect next round. Every row retries.
        self.conn = None;
        messages
            .iter()
            .map(|_| Err(Failure::Transient(whole.clone())))
            .collect()
    }

    /// §7.3 step 3: published rows are marked, failed rows are scheduled again or, after a
    /// permanent failure at `OUTBOX_MAX_ATTEMPTS`, given up.
    async fn record(
        &self,
        rows: &[ClaimedRow],
        results: Vec<Result<(), Failure>>,
    ) -> Result<RoundOutcome, DispatchError> {
        let mut published = Vec::new();
        let mut retry = Vec::new();
        let mut dead = Vec::new();
        let mut latency = Duration::ZERO;
        let now = chrono::Utc::now();
        let max_attempts = i64::from(self.config.max_attempts);
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(()) => {
                    published.push(row.id.clone());
                    latency = latency.max((now - row.created_at).to_std().unwrap_or_default());
                }
                Err(Failure::Permanent(error)) if i64::from(row.attempts) >= max_attempts => {
                    tracing::error!(outbox_id = %row.id, topic = %row.topic, attempts = row.attempts, %error, "outbox row is dead");
                    dead.push((row.id.clone(), error));
                }
                Err(Failure::Permanent(error) | Failure::Transient(error)) => {
                    retry.push(RetryMark {
                        id: row.id.clone(),
                        backoff: backoff(
                            row.attempts,
                            self.config.backoff_base,
                            self.config.backoff_max,
                            rand::thread_rng().gen_range(0.0..0.3),
                        ),
                        error,
                    });
                }
            }
        }
        if !retry.is_empty() {
            tracing::warn!(
                table = self.target.table.name(),
                rows = retry.len(),
                error = %retry.first().map_or("", |m| m.error.as_str()),
                "outbox rows not published; retrying later"
            );
        }
        let mut conn = self.pool.acquire().await?;
        let table = self.target.table;
        outbox::mark_published(&mut conn, table, &published).await?;
        outbox::mark_retry(&mut conn, table, &retry).await?;
        outbox::mark_dead(&mut conn, table, &dead).await?;
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        self.stats
            .published
            .fetch_add(count(published.len()), Ordering::Relaxed);
        self.stats
            .retries
            .fetch_add(count(retry.len()), Ordering::Relaxed);
        self.stats
            .dead
            .fetch_add(count(dead.len()), Ordering::Relaxed);
        if !published.is_empty() {
            self.stats.last_publish_latency_ms.store(
                u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
        Ok(RoundOutcome {
            claimed: rows.len(),
            published: published.len(),
            retried: retry.len(),
            dead: dead.len(),
        })
    }
}

/// The delay before attempt `attempts + 1` (§7.3 step 3):
/// `min(max, base × 2^min(attempts − 1, 6)) × (1 + jitter)`, with `jitter` in `[0, 0.3)`.
/// With the defaults (1 s, 60 s): 1 s, 2 s, 4 s, … 32 s, then 60 s, before jitter.
#[must_use]
pub fn backoff(attempts: i32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 6)).unwrap_or(0);
    let raw = base.saturating_mul(1_u32 << exponent).min(max);
    raw.mul_f64(1.0 + jitter.clamp(0.0, 0.3))
}

/// Transient (retried forever) or permanent (counted) by the error's kind and server code.
fn classify(error: &RedisError) -> Failure {
    let text = error.to_string();
    if error.is_io_error()
        || error.is_timeout()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.code().is_some_and(is_transient_code)
    {
        Failure::Transient(text)
    } else {
        Failure::Permanent(text)
    }
}

/// Server error codes that say "not now" rather than "never" (§7.3 step 4, plus the cluster,
/// script and permission states an operator resolves without touching the row).
fn is_transient_code(code: &str) -> bool {
    matches!(
        code,
        "LOADING"
            | "READONLY"
            | "CLUSTERDOWN"
            | "OOM"
            | "TRYAGAIN"
            | "MOVED"
            | "ASK"
            | "MASTERDOWN"
            | "BUSY"
            | "NOREPLICAS"
            | "NOAUTH"
            | "NOPERM"
            | "WRONGPASS"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_the_cap_with_up_to_thirty_percent_jitter() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let secs = |attempts| backoff(attempts, base, max, 0.0).as_secs();
        assert_eq!(
            [1, 2, 3, 4, 5, 6, 7, 8, 100].map(secs),
            [1, 2, 4, 8, 16, 32, 60, 60, 60]
        );
        assert_eq!(secs(0), 1);
        assert_eq!(secs(-5), 1);
        assert_eq!(backoff(2, base, max, 0.25), Duration::from_millis(2500));
        assert!(backoff(7, base, max, 0.299) < Duration::from_secs(78));
        assert_eq!(backoff(7, base, max, 5.0), Duration::from_secs(78));
    }

    #[test]
    fn server_codes_are_sorted_into_transient_and_permanent() {
        for code in [
            "LOADING",
            "READONLY",
            "CLUSTERDOWN",
            "OOM",
            "TRYAGAIN",
            "MOVED",
            "ASK",
        ] {
            assert!(is_transient_code(code), "{code}");
        }
        for code in ["WRONGTYPE", "ERR", "EXECABORT"] {
            assert!(!is_transient_code(code), "{code}");
        }
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(classify(&io), Failure::Transient(_)));
    }
}
