//! Outbox retention (storage §11), run by the API because its role is the one with DELETE
//! on `event_outbox`: published rows of every producer (`api` and `sts`) older than
//! `OUTBOX_RETENTION_DAYS` and dead rows older than `OUTBOX_DEAD_RETENTION_DAYS` are deleted
//! in batches, once at start and then every `OUTBOX_RETENTION_INTERVAL_SECONDS`. Pending rows
//! are never touched. Replicas may run it concurrently: the batches skip locked rows.

use std::time::Duration;

use control_store::outbox::{self, Finished, OutboxTable};
use sqlx::PgPool;
use tokio::sync::watch;

/// Rows deleted per statement.
const BATCH: i64 = 1000;

/// Retention settings.
#[derive(Debug, Clone, Copy)]
pub struct RetentionConfig {
    /// Published rows are kept this long.
    pub published: Duration,
    /// Dead rows are kept this long.
    pub dead: Duration,
    /// Time between sweeps.
    pub interval: Duration,
}

/// One sweep: returns how many rows of each kind were deleted.
pub async fn sweep(pool: &PgPool, config: &RetentionConfig) -> Result<(u64, u64), sqlx::Error> {
    let mut totals = (0, 0);
    for (finished, keep) in [
        (Finished::Published, config.published),
        (Finished::Dead, config.dead),
    ] {
        let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        let cutoff = chrono::Utc::now()
            .checked_sub_signed(keep)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        loop {
            let mut conn = pool.acquire().await?;
            let deleted =
                outbox::purge(&mut conn, OutboxTable::Event, finished, cutoff, None, BATCH).await?;
            match finished {
                Finished::Published => totals.0 += deleted,
                Finished::Dead => totals.1 += deleted,
            }
            if deleted < u64::try_from(BATCH).unwrap_or(u64::MAX) {
                break;
            }
        }
    }
    Ok(totals)
}

/// Sweeps until `shutdown`.
pub async fn run(pool: PgPool, config: RetentionConfig, mut shutdown: watch::Receiver<bool>) {
    loop {
        match sweep(&pool, &config).await {
            Ok((0, 0)) => {}
            Ok((published, dead)) => {
                tracing::info!(published, dead, "outbox retention deleted finished rows");
            }
            Err(error) => tracing::warn!(%error, "outbox retention sweep failed; retrying later"),
        }
        tokio::select! {
            () = tokio::time::sleep(config.interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}
