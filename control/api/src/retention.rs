//! Outbox retention (storage §11), run by the API because its role is the one with DELETE
//! on `event_outbox`: published rows of every producer (`api` and `sts`) older than
//! `OUTBOX_RETENTION_DAYS` and dead rows older than `OUTBOX_DEAD_RETENTION_DAYS` are deleted
//! in batches, once at start and then every `OUTBOX_RETENTION_INTERVAL_SECONDS`. Pending rows
//! are never touched. Replicas may run it concurrently: the batches skip locked rows.

use std::time::Duration;

use control_events::outbox::{Retention, purge_finished, run_retention};
use control_store::outbox::OutboxTable;
use sqlx::PgPool;
use tokio::sync::watch;

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

impl RetentionConfig {
    fn retention(&self) -> Retention {
        Retention {
            published: self.published,
            dead: self.dead,
        }
    }
}

/// One sweep: returns how many rows of each kind were deleted.
pub async fn sweep(pool: &PgPool, config: &RetentionConfig) -> Result<(u64, u64), sqlx::Error> {
    purge_finished(pool, OutboxTable::Event, config.retention()).await
}

/// Sweeps until `shutdown`.
pub async fn run(pool: PgPool, config: RetentionConfig, shutdown: watch::Receiver<bool>) {
    run_retention(
        pool,
        OutboxTable::Event,
        config.retention(),
        config.interval,
        shutdown,
    )
    .await;
}
