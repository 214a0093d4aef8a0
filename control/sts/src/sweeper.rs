//! The STS's periodic maintenance (storage §10.4, §11): signing-key lifecycle transitions
//! and the purge of terminal approval holds 24 h after their last transition (authority
//! §6.3; every sweep, which is at least as often as the spec's hourly).
//! One replica works per tick (a transaction-scoped advisory lock, "CARA0006"); reads go
//! across zones, writes happen per zone.

use std::{sync::Arc, time::Duration};

use control_model::ZoneId;
use control_store::{
    approvals, outbox, signing_keys,
    zone::{cross_zone_read, zone_tx},
};
use sqlx::Connection;

use crate::{error::StsError, state::Sts};

/// How long a terminal approval hold is kept after its last transition.
const TERMINAL_HOLD_KEEP_SECS: i64 = 24 * 3600;

/// The STS's sweeper lock, `0x4341524130303036` ("CARA0006").
const STS_SWEEPER_LOCK: i64 = 0x4341_5241_3030_3036;

/// Runs [`sweep`] every `interval` until shutdown.
pub(crate) async fn run(
    state: Arc<Sts>,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(error) = sweep(&state).await {
            tracing::warn!(%error, "sts sweep failed; retrying next tick");
        }
        // The KEK canary is re-checked every tick, so a fixed key makes the replica ready.
        match state.check_kek().await {
            Ok(ok) => {
                let was = state.kek_ok.swap(ok, std::sync::atomic::Ordering::Relaxed);
                if !ok && was {
                    tracing::error!("zone_kek_mismatch: ZONE_KEK no longer opens the KEK canary");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the KEK canary"),
        }
    }
}

/// One sweep: pending keys whose time came become active (their predecessors retiring),
/// retiring keys past the grace period become retired and are announced.
pub(crate) async fn sweep(state: &Sts) -> Result<(), StsError> {
    let mut leader = state.pool.acquire().await.map_err(StsError::Database)?;
    let mut lock_tx = leader.begin().await?;
    let is_leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(STS_SWEEPER_LOCK)
        .fetch_one(&mut *lock_tx)
        .await?;
    if !is_leader {
        return Ok(());
    }
    let mut read = cross_zone_read(&state.pool).await?;
    let zones = signing_keys::live_zones(&mut read).await?;
    read.finish().await?;
    let grace = i64::try_from(state.config.key_grace.as_secs()).unwrap_or(86_400);
    for zone in zones {
        let Ok(zone) = ZoneId::parse(&zone) else {
            continue;
        };
        let mut tx = zone_tx(&state.pool, &zone).await?;
        let activated = signing_keys::activate_due(&mut tx, zone.as_str()).await?;
        let retired = signing_keys::retire_expired(&mut tx, zone.as_str(), grace).await?;
        for kid in &retired {
            outbox::enqueue_key_change(&mut tx, zone.as_str(), kid, "retired", None).await?;
        }
        let purged =
            approvals::purge_terminal(&mut tx, zone.as_str(), TERMINAL_HOLD_KEEP_SECS).await?;
        tx.commit().await?;
        if purged > 0 {
            tracing::info!(zone = %zone, purged, "terminal approval holds purged");
        }
        if !activated.is_empty() || !retired.is_empty() {
            // The retirements and the binding revisions the key writes triggered.
            state.outbox.wake();
            state.keys.invalidate(zone.as_str()).await;
            tracing::info!(zone = %zone, activated = activated.len(), retired = retired.len(), "signing keys swept");
        }
    }
    lock_tx.commit().await?;
    Ok(())
}
