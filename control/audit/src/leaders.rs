//! Leader jobs (storage §5.2, §5.3, §8.6, §8.7): each runs in one audit process at a time,
//! chosen by a session advisory lock taken on a dedicated connection outside the pool. The
//! holder checks that connection before every tick; a broken connection means its locks are
//! gone, so it stops leading at once and tries again on a fresh connection.
//!
//! Every job tolerates a brief overlap of two holders: partition creation is idempotent,
//! drops are guarded, export writes only new objects, the sweep only reads (alerts are
//! inserted once per kind, zone and event).

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use chrono::{DateTime, Utc};
use control_store::audit::partitions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::{sync::watch, task::JoinHandle, time::Instant};

use crate::{
    config::{LeaderSettings, LedgerKeys},
    export,
    metrics::Metrics,
    objects::ObjectStore,
    sweep::{self, SweepScope},
};

/// Export leader ("CARA0001").
pub const EXPORT_LOCK: i64 = 0x4341_5241_3030_3031;
/// Retention leader: partitions and drops ("CARA0002").
pub const RETENTION_LOCK: i64 = 0x4341_5241_3030_3032;
/// Tamper sweep leader ("CARA0003").
pub const TAMPER_LOCK: i64 = 0x4341_5241_3030_3033;

/// Months of partitions kept ahead of the current one.
const MONTHS_AHEAD: i32 = 3;

/// What the leader jobs need.
#[derive(Clone)]
pub struct LeaderContext {
    /// The audit role's pool (the jobs' own queries).
    pub pool: PgPool,
    /// Keys for the sweep.
    pub keys: LedgerKeys,
    /// Settings.
    pub settings: LeaderSettings,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// When each job last ran in this process (while it held the lock).
#[derive(Debug, Default)]
struct Schedule {
    retention: Option<Instant>,
    full_sweep: Option<Instant>,
    rolling_sweep: Option<Instant>,
}

fn due(last: Option<Instant>, every: Duration) -> bool {
    last.is_none_or(|at| at.elapsed() >= every)
}

/// Spawns the leader loop.
pub fn spawn(context: LeaderContext, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut leader: Option<PgConnection> = None;
        let mut held: Vec<i64> = Vec::new();
        let mut schedule = Schedule::default();
        let store = match context.settings.export.as_ref().map(ObjectStore::open) {
            Some(Ok(store)) => Some(store),
            Some(Err(error)) => {
                tracing::error!(%error, "audit export store cannot be opened; export is off");
                None
            }
            None => None,
        };
        loop {
            if *shutdown.borrow() {
                break;
            }
            if let Err(error) = tick(
                &context,
                store.as_ref(),
                &mut leader,
                &mut held,
                &mut schedule,
            )
            .await
            {
                tracing::warn!(%error, "audit leader connection lost; every leader lock is released");
                leader = None;
                held.clear();
                schedule = Schedule::default();
            }
            tokio::select! {
                () = tokio::time::sleep(context.settings.tick) => {}
                _ = shutdown.changed() => break,
            }
        }
        if let Some(conn) = leader {
            let _closed = conn.close().await;
        }
    })
}

/// One tick: keep the connection, take the locks not held, run the jobs that are due.
/// A job's own failure is logged and retried next tick; only a connection failure is
/// returned.
async fn tick(
    context: &LeaderContext,
    store: Option<&ObjectStore>,
    leader: &mut Option<PgConnection>,
    held: &mut Vec<i64>,
    schedule: &mut Schedule,
) -> Result<(), sqlx::Error> {
    let conn = match leader {
        Some(conn) => {
            partitions::ping(conn).await?;
            conn
        }
        None => leader.insert(PgConnection::connect_with(&context.pool.connect_options()).await?),
    };
    let mut wanted = vec![RETENTION_LOCK, TAMPER_LOCK];
    if store.is_some() {
        wanted.push(EXPORT_LOCK);
    }
    for key in wanted {
        if !held.contains(&key) && partitions::try_lock(conn, key).await? {
            tracing::info!(lock = format!("{key:#x}"), "audit leader lock taken");
            held.push(key);
        }
    }
    if held.contains(&RETENTION_LOCK)
        && due(schedule.retention, context.settings.partition_interval)
    {
        match retention_once(context, Utc::now()).await {
            Ok(()) => schedule.retention = Some(Instant::now()),
            Err(error) => {
                tracing::warn!(%error, "audit partition upkeep failed; retrying next tick")
            }
        }
    }
    if held.contains(&TAMPER_LOCK) {
        let scope = if due(schedule.full_sweep, context.settings.tamper_full_interval) {
            Some(SweepScope::Full)
        } else if due(
            schedule.rolling_sweep,
            context.settings.tamper_rolling_interval,
        ) {
            Some(SweepScope::Rolling(context.settings.tamper_rolling))
        } else {
            None
        };
        if let Some(scope) = scope {
            let full = matches!(scope, SweepScope::Full);
            match sweep::run_once(
                &context.pool,
                &context.keys,
                &context.metrics,
                scope,
                context.settings.tamper_rows_per_sec,
            )
            .await
            {
                Ok(_report) => {
                    schedule.rolling_sweep = Some(Instant::now());
                    if full {
                        schedule.full_sweep = Some(Instant::now());
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "audit tamper sweep failed; retrying next tick")
                }
            }
        }
    }
    if held.contains(&EXPORT_LOCK)
        && let Some(store) = store
        && let Err(error) = export::run_due(
            &context.pool,
            store,
            context.settings.export_spool.as_deref(),
            context.settings.export_grace,
            &context.metrics,
            Utc::now(),
        )
        .await
    {
        tracing::warn!(%error, "audit export failed; retrying next tick");
    }
    Ok(())
}

/// Partition upkeep: the current month and three ahead exist; monthly partitions past
/// retention are dropped (only once exported, when export is on).
///
/// # Errors
///
/// Database errors.
pub async fn retention_once(
    context: &LeaderContext,
    now: DateTime<Utc>,
) -> Result<(), control_store::StoreError> {
    let mut conn = context.pool.acquire().await?;
    let created = partitions::ensure(&mut conn, now, MONTHS_AHEAD).await?;
    context
        .metrics
        .partitions_created
        .fetch_add(u64::try_from(created).unwrap_or(0), Ordering::Relaxed);
    let cutoff = chrono::Duration::from_std(context.settings.retention)
        .ok()
        .and_then(|retention| now.checked_sub_signed(retention))
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let exported_through = if context.settings.export.is_some() {
        // The watermark names the last exported hour's start; everything before its end is out.
        Some(
            partitions::watermark(&mut conn, export::WATERMARK)
                .await?
                .map_or(DateTime::<Utc>::UNIX_EPOCH, |hour| {
                    hour + chrono::Duration::hours(1)
                }),
        )
    } else {
        None
    };
    let dropped = partitions::drop_before(&mut conn, cutoff, exported_through).await?;
    context
        .metrics
        .partitions_dropped
        .fetch_add(dropped.len() as u64, Ordering::Relaxed);
    for name in dropped {
        tracing::info!(partition = %name, "audit partition past retention dropped");
    }
    Ok(())
}
