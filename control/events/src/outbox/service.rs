//! What every producing role serves about its outbox and its dependencies: the readiness
//! verdict of `/ready`, the outbox lines of `/metrics`, and the retention of finished rows
//! (storage §7.3 step 6, §11).

use std::time::Duration;

use control_store::outbox::{self, Finished, OutboxTable};
use sqlx::PgPool;
use tokio::sync::watch;

use super::{OutboxHandle, OutboxSnapshot};

/// The reason a role is not ready, checking in order Postgres (`database_unavailable`),
/// Redis (`redis_unavailable`) and the outbox's bounds (`outbox_dead`, `outbox_stalled`);
/// each probe has 2 s.
pub async fn not_ready_reason(
    pool: &PgPool,
    redis: &redis::Client,
    outbox: &OutboxHandle,
) -> Option<&'static str> {
    let db = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool),
    )
    .await;
    if !matches!(db, Ok(Ok(1))) {
        return Some("database_unavailable");
    }
    let redis_ok = tokio::time::timeout(Duration::from_secs(2), async {
        let mut conn = redis.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    })
    .await;
    if !matches!(redis_ok, Ok(Ok(_))) {
        return Some("redis_unavailable");
    }
    outbox.ready_reason()
}

/// Prometheus lines of a role's outbox, named `<prefix>_outbox_*`.
pub fn metric_lines(prefix: &str, outbox: &OutboxSnapshot) -> String {
    [
        ("outbox_pending", "gauge", outbox.pending),
        ("outbox_dead", "gauge", outbox.dead_total),
        (
            "outbox_oldest_pending_age_seconds",
            "gauge",
            outbox.oldest_pending_age_secs,
        ),
        (
            "outbox_publish_latency_ms",
            "gauge",
            outbox.last_publish_latency_ms,
        ),
        ("outbox_published_total", "counter", outbox.published),
        ("outbox_retries_total", "counter", outbox.retries),
    ]
    .iter()
    .map(|(name, kind, value)| format!("# TYPE {prefix}_{name} {kind}\n{prefix}_{name} {value}\n"))
    .collect()
}

/// How long finished rows are kept (`OUTBOX_RETENTION_DAYS`, `OUTBOX_DEAD_RETENTION_DAYS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Published rows are kept this long.
    pub published: Duration,
    /// Dead rows are kept this long.
    pub dead: Duration,
}

/// Rows deleted per statement.
const PURGE_BATCH: i64 = 1000;

/// Deletes finished rows of `table` past their retention, in batches; returns how many
/// published and dead rows went.
pub async fn purge_finished(
    pool: &PgPool,
    table: OutboxTable,
    retention: Retention,
) -> Result<(u64, u64), sqlx::Error> {
    let mut totals = (0, 0);
    for (finished, keep) in [
        (Finished::Published, retention.published),
        (Finished::Dead, retention.dead),
    ] {
        let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        let cutoff = chrono::Utc::now()
            .checked_sub_signed(keep)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        loop {
            let mut conn = pool.acquire().await?;
            let deleted =
                outbox::purge(&mut conn, table, finished, cutoff, None, PURGE_BATCH).await?;
            match finished {
                Finished::Published => totals.0 += deleted,
                Finished::Dead => totals.1 += deleted,
            }
            if deleted < u64::try_from(PURGE_BATCH).unwrap_or(u64::MAX) {
                break;
            }
        }
    }
    Ok(totals)
}

/// Purges `table` every `interval` until `shutdown`.
pub async fn run_retention(
    pool: PgPool,
    table: OutboxTable,
    retention: Retention,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match purge_finished(&pool, table, retention).await {
            Ok((0, 0)) => {}
            Ok((published, dead)) => {
                tracing::info!(
                    table = table.name(),
                    published,
                    dead,
                    "outbox retention deleted finished rows"
                );
            }
            Err(error) => {
                tracing::warn!(table = table.name(), %error, "outbox retention sweep failed; retrying later");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}
