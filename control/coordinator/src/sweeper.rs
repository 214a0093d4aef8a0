//! The Coordinator's sweepers (storage §11), all under one leader lock
//! (`0x4341524130303035`, session-level, taken per round): only the replica holding it
//! sweeps; the others try again next round.
//!
//! - **Expiry** (`TTL_SWEEP_INTERVAL_MS`, and `SERVICE_LEASE_SWEEP_INTERVAL_MS` for leases):
//!   active tasks past their TTL and active services past their lease become `expired` with
//!   their subtrees ended and their edges revoked, announced like a termination with reason
//!   `expired`; active edges past their expiry become `expired`, bump the epoch and are
//!   announced as one `edge_expire` per zone and batch (settled point 6).
//!   Healthy or degraded agent services silent for longer than the service lease become
//!   `unhealthy`.
//! - **Deadlines** (`DEADLINE_SWEEP_INTERVAL_MS`): an invocation attempt past its deadline
//!   ends as a failure (retried while attempts remain, else `timed_out`); a cancel-requested
//!   one becomes `canceled`.
//! - **Retention** (`RETENTION_CLEANUP_INTERVAL_MS`): expired idempotency receipts; ended
//!   sessions and edges older than `DELEGATION_RETENTION_DAYS`; finished `caracal_outbox`
//!   rows past `OUTBOX_RETENTION_DAYS` / `OUTBOX_DEAD_RETENTION_DAYS`.
//!
//! Each zone's changes commit in their own transaction with their outbox rows; a failure is
//! logged and counted, and the next round retries.

use std::{collections::BTreeMap, sync::Arc};

use control_events::{
    cascade::{self, Announce, Context, Producer},
    outbox::{Retention, purge_finished},
};
use control_model::ZoneId;
use control_store::{
    cascade::{Ending, Roots, bump_epoch},
    coordinator::sweep,
    outbox::OutboxTable,
    zone::{cross_zone_read, zone_tx},
};
use tokio::sync::watch;

use crate::{error::CoordError, invocations, metrics::Metrics, state::Coordinator};

/// The Coordinator's sweeper leader lock (storage §11).
pub const LEADER_LOCK: i64 = 0x4341_5241_3030_3035;
/// `updated_by` of the sweepers' changes.
const ACTOR: &str = "coordinator:sweeper";

/// Which sweep a round runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// Task TTLs, service leases, edge expiry and silent services.
    Expiry,
    /// Invocation attempts past their deadline.
    Deadlines,
    /// Deletion of old rows.
    Retention,
}

/// Runs the sweeps on their cadences until `shutdown`.
pub async fn run(co: Arc<Coordinator>, mut shutdown: watch::Receiver<bool>) {
    let sweeps = co.config.sweeps;
    let expiry_every = sweeps.ttl_interval.min(sweeps.lease_interval);
    let mut expiry = tokio::time::interval(expiry_every);
    let mut retention = tokio::time::interval(sweeps.retention_interval);
    let mut deadlines = tokio::time::interval(sweeps.deadline_interval);
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    deadlines.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let sweep = tokio::select! {
            _ = expiry.tick() => Sweep::Expiry,
            _ = deadlines.tick() => Sweep::Deadlines,
            _ = retention.tick() => Sweep::Retention,
            _ = shutdown.changed() => return,
        };
        if let Err(error) = round(&co, sweep).await {
            Metrics::count(&co.metrics.sweep_failures);
            tracing::warn!(?sweep, %error, "coordinator sweep failed; retrying next round");
        }
    }
}

/// One round of `sweep`, if this replica wins the leader lock. Returns whether it led.
///
/// # Errors
///
/// Database failures; the round's committed zones stay committed.
pub async fn round(co: &Coordinator, sweep: Sweep) -> Result<bool, CoordError> {
    let mut leader = co.pool.acquire().await?;
    if !sweep::try_lead(&mut leader, LEADER_LOCK).await? {
        return Ok(false);
    }
    let outcome = match sweep {
        Sweep::Expiry => expire(co).await,
        Sweep::Deadlines => deadlines(co).await,
        Sweep::Retention => retain(co).await,
    };
    let released = sweep::stop_leading(&mut leader, LEADER_LOCK).await;
    outcome?;
    released?;
    Ok(true)
}

fn context(zone: &str) -> Context<'_> {
    Context {
        producer: Producer::COORDINATOR,
        zone,
        actor: ACTOR,
        request_id: None,
    }
}

fn zone_id(zone: &str) -> Result<ZoneId, CoordError> {
    ZoneId::parse(zone).map_err(|_bad| CoordError::Internal(format!("stored zone id {zone:?}")))
}

async fn expire(co: &Coordinator) -> Result<(), CoordError> {
    let batch = co.config.sweeps.batch;
    // A service is silent after one service lease without a heartbeat.
    let silent_since =
        chrono::Utc::now() - chrono::Duration::seconds(co.config.limits.lease_seconds);
    let mut read = cross_zone_read(&co.pool).await?;
    let due = sweep::due_sessions(&mut read, batch).await?;
    let edge_zones = sweep::zones_with_expired_edges(&mut read).await?;
    let silent_zones = sweep::zones_with_silent_services(&mut read, silent_since).await?;
    read.finish().await?;
    for zone in silent_zones {
        let mut tx = zone_tx(&co.pool, &zone_id(&zone)?).await?;
        let marked = sweep::mark_silent_services(&mut tx, silent_since).await?;
        tx.commit().await?;
        tracing::info!(%zone, marked, "silent agent services marked unhealthy");
    }
    let mut by_zone: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in due {
        by_zone.entry(row.zone_id).or_default().push(row.id);
    }
    let mut woke = false;
    for (zone, ids) in by_zone {
        let mut tx = zone_tx(&co.pool, &zone_id(&zone)?).await?;
        let still_due = sweep::lock_still_due(&mut tx, &ids).await?;
        let changed = cascade::end_sessions(
            &mut tx,
            &context(&zone),
            Roots::Sessions(&still_due),
            Ending::Expired,
            "expired",
            Announce {
                edge_reason: "expired",
                cause_edge: None,
                already_revoked: &[],
            },
        )
        .await?;
        tx.commit().await?;
        Metrics::add(&co.metrics.sessions_ended, changed.sessions.len());
        Metrics::add(&co.metrics.edges_ended, changed.edges.len());
        woke |= !changed.sessions.is_empty();
    }
    for zone in edge_zones {
        let mut tx = zone_tx(&co.pool, &zone_id(&zone)?).await?;
        let expired = sweep::expire_edges(&mut tx, batch).await?;
        if expired.is_empty() {
            tx.rollback().await?;
            continue;
        }
        let epoch = bump_epoch(&mut tx, &zone).await?;
        cascade::announce_expired_edges(&mut tx, &context(&zone), &expired, epoch).await?;
        tx.commit().await?;
        Metrics::add(&co.metrics.edges_ended, expired.len());
        woke = true;
    }
    if woke {
        co.outbox.wake();
    }
    Ok(())
}

async fn deadlines(co: &Coordinator) -> Result<(), CoordError> {
    let mut read = cross_zone_read(&co.pool).await?;
    let zones = sweep::zones_with_overdue_invocations(&mut read).await?;
    read.finish().await?;
    let mut woke = false;
    for zone in zones {
        let mut tx = zone_tx(&co.pool, &zone_id(&zone)?).await?;
        let ended = invocations::sweep_overdue(&mut tx, &zone, co.config.sweeps.batch).await?;
        tx.commit().await?;
        woke |= ended > 0;
    }
    if woke {
        co.outbox.wake();
    }
    Ok(())
}

async fn retain(co: &Coordinator) -> Result<(), CoordError> {
    let sweeps = co.config.sweeps;
    let keep =
        chrono::Duration::from_std(sweeps.delegation_retention).unwrap_or(chrono::Duration::MAX);
    let cutoff = chrono::Utc::now()
        .checked_sub_signed(keep)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    let mut read = cross_zone_read(&co.pool).await?;
    let zones = sweep::zones(&mut read).await?;
    read.finish().await?;
    for zone in zones {
        let mut tx = zone_tx(&co.pool, &zone_id(&zone)?).await?;
        let deleted = sweep::delete_old(&mut tx, cutoff, sweeps.retention_batch).await?;
        tx.commit().await?;
        if deleted != sweep::Deleted::default() {
            tracing::info!(%zone, ?deleted, "coordinator retention deleted old rows");
        }
    }
    purge_finished(
        &co.pool,
        OutboxTable::Caracal,
        Retention {
            published: sweeps.outbox_published,
            dead: sweeps.outbox_dead,
        },
    )
    .await?;
    Ok(())
}
