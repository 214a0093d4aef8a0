//! `gateway.bindings` (storage §5.5, §6.1, §12.5): why a gateway cannot route.
//!
//! From Postgres: resources with an `upstream_url` but no enabled binding, bindings that
//! point at missing or archived resources (or under an identifier the resource no longer
//! has), and the `gateway_binding_revision` row. From Redis: whether each live gateway
//! (`caracal:instances:gateway`) has read the newest `caracal.gateway.bindings.invalidate`
//! message, and whether the database's revision was announced at all; and the policy load
//! failures gateways report in `caracal:policy:status:<zone>`.
//!
//! Gateways do not publish the binding revision their snapshot holds (only the metric
//! `caracal_gateway_snapshot_revision`), so "a gateway on an older revision" is read from its
//! consumer group: a live gateway whose `gateway-bindings:<instance>` group has not been
//! delivered (or has not acknowledged) the invalidation of the newest revision for more than
//! [`STALE_AFTER_SECS`] is reported as behind the database.

use control_events::{
    presence::{LoadState, policy_statuses},
    streams::{GATEWAY_BINDINGS_INVALIDATE, replica_group},
};
use control_store::ops::doctor as store;

use super::{
    CheckError, Context, age,
    audit::unreachable_check,
    redis_link::{self, GroupStanding},
    report::{Check, Findings},
    sample,
};

const ID: &str = "gateway.bindings";
/// Examples listed per finding.
const EXAMPLES: i64 = 5;
/// A message older than this should have been read by every live replica (their groups
/// block for 1 s; their poll runs every 5 s).
pub(crate) const STALE_AFTER_SECS: f64 = 30.0;
/// Zones whose policy status is read.
const MAX_ZONES: i64 = 1000;

/// Runs `gateway.bindings`.
pub(crate) async fn bindings(cx: &mut Context<'_>) -> Result<Check, CheckError> {
    let mut findings = Findings::new(ID);

    let revision = store::binding_revision(&mut cx.db).await?;
    match &revision {
        None => findings.fail(
            "gateway_binding_revision has no row: every gateway snapshot build fails",
            "restore the row as caracal_owner (INSERT INTO caracal.gateway_binding_revision (id, version) VALUES (true, <a version above any gateway has seen>)), or restore the database from its backup",
        ),
        Some(revision) => findings.ok(format!("binding revision {}", revision.version)),
    }

    let unbound = store::unbound_resources(&mut cx.db, EXAMPLES).await?;
    if let Some(first) = unbound.first() {
        let names: Vec<String> = unbound
            .iter()
            .map(|r| {
                let why = match r.binding_enabled {
                    None => "no binding",
                    Some(_) => "binding disabled",
                };
                format!("{}/{} ({why})", r.zone_id, r.identifier)
            })
            .collect();
        findings.fail(
            format!(
                "{} resource(s) with an upstream_url have no enabled gateway binding: {}",
                first.total,
                sample(&names, usize::try_from(first.total).unwrap_or(names.len()), names.len())
            ),
            "set the resource's upstream_url again through the admin API (remove it, then set it: PATCH /v1/zones/<zone>/resources/<id>), which recreates the binding; after a partial restore, restore gateway_resource_bindings",
        );
    } else {
        findings.ok("every resource with an upstream_url has an enabled binding");
    }

    let stray = store::stray_bindings(&mut cx.db, EXAMPLES).await?;
    if let Some(first) = stray.first() {
        let names: Vec<String> = stray
            .iter()
            .map(|b| {
                let why = match b.problem.as_str() {
                    "missing" => "resource missing",
                    "archived" => "resource archived",
                    _ => "identifier changed",
                };
                format!("{}/{} ({why})", b.zone_id, b.resource_identifier)
            })
            .collect();
        findings.warn(
            format!(
                "{} binding(s) point at a missing or archived resource or an old identifier: {}",
                first.total,
                sample(&names, usize::try_from(first.total).unwrap_or(names.len()), names.len())
            ),
            "delete them as caracal_owner (DELETE FROM caracal.gateway_resource_bindings WHERE zone_id = … AND resource_identifier = …), or save the resource again through the admin API",
        );
    }

    // What the gateways hold.
    let mut conn = match cx.redis.conn() {
        Ok(conn) => conn,
        Err(error) => {
            let check = unreachable_check(ID, &cx.redis, &error);
            findings.fail(check.finding, check.fix.unwrap_or_default());
            return Ok(findings.finish());
        }
    };
    let live = redis_link::live_instances(&mut conn, "gateway").await?;
    let groups = redis_link::groups(&mut conn, GATEWAY_BINDINGS_INVALIDATE).await?;
    let newest = redis_link::latest_entry(&mut conn, GATEWAY_BINDINGS_INVALIDATE).await?;
    let announced: Option<i64> = newest
        .as_ref()
        .and_then(|(_, fields)| fields.get("revision"))
        .and_then(|r| r.parse().ok());

    if let Some(revision) = &revision
        && announced.is_none_or(|announced| announced < revision.version)
    {
        let dedupe = format!("bindings:{}", revision.version);
        let row = store::outbox_row(&mut cx.db, GATEWAY_BINDINGS_INVALIDATE, &dedupe).await?;
        let since = (cx.db_now - revision.updated_at).num_milliseconds() as f64 / 1000.0;
        match row {
            Some(row) if row.status == "dead" => findings.fail(
                format!(
                    "binding revision {} will never be announced: its outbox row is dead; gateways see it only through their poll",
                    revision.version
                ),
                "re-queue dead event_outbox rows as caracal_maintenance (UPDATE caracal.event_outbox SET status = 'pending', attempts = 0, available_at = now() WHERE status = 'dead'), after fixing what the outbox check reports",
            ),
            Some(row) if row.status == "pending" && since > STALE_AFTER_SECS => findings.warn(
                format!(
                    "binding revision {} is not announced yet ({} after the change): gateways see it only through their poll",
                    revision.version,
                    age(since)
                ),
                "check that the API and STS run and reach Redis: their outbox dispatchers publish the invalidation",
            ),
            _ => {}
        }
    }

    if live.is_empty() {
        findings.ok("no live gateway in caracal:instances:gateway");
    } else {
        let mut current = 0_usize;
        for instance in &live {
            let group = replica_group("gateway-bindings", instance);
            let standing = redis_link::standing(
                &mut conn,
                GATEWAY_BINDINGS_INVALIDATE,
                &group,
                groups.as_deref(),
                newest.as_ref().map(|(id, _)| id.as_str()),
                chrono::Utc::now(),
            )
            .await?;
            let revision_text = announced.map_or_else(
                || "the newest revision".to_owned(),
                |r| format!("revision {r}"),
            );
            match standing {
                GroupStanding::Missing => findings.fail(
                    format!("live gateway {instance} has no group {group}: it learns of binding changes only through its poll"),
                    "restart that gateway (it creates its groups at start-up); if its groups keep disappearing, raise STREAM_GROUP_GC_SECONDS",
                ),
                GroupStanding::Behind { age_secs } if age_secs > STALE_AFTER_SECS => findings.fail(
                    format!(
                        "stale binding revision: live gateway {instance} has not read the invalidation of {revision_text} (published {} ago), so its snapshot may be older than the database's",
                        age(age_secs)
                    ),
                    "check that gateway's logs and /ready (a stuck consumer, or snapshot builds failing); restart it to rebuild its snapshot",
                ),
                GroupStanding::Unacknowledged { pending, idle_secs } if idle_secs > STALE_AFTER_SECS => findings.fail(
                    format!(
                        "stale binding revision: live gateway {instance} holds {pending} unacknowledged binding invalidation(s), the oldest idle for {}",
                        age(idle_secs)
                    ),
                    "check that gateway's logs (its rebuilds fail or its consumer stopped); restart it to rebuild its snapshot",
                ),
                _ => current += 1,
            }
        }
        findings.ok(format!(
            "{current} of {} live gateway(s) have read the newest binding invalidation",
            live.len()
        ));
    }

    // Policy loads the gateways report as failed.
    let zones = store::live_zones(&mut cx.db, MAX_ZONES).await?;
    let mut failed_loads = Vec::new();
    for zone in &zones {
        for (field, status) in policy_statuses(&mut conn, zone).await? {
            let Some(instance) = field.strip_prefix("gateway/") else {
                continue;
            };
            if status.state == LoadState::Failed && live.iter().any(|l| l == instance) {
                let error = status.error.unwrap_or_default();
                failed_loads.push(format!(
                    "{instance} in zone {zone} (version {}{}{})",
                    status.policy_set_version_id,
                    if error.is_empty() { "" } else { ": " },
                    error
                ));
            }
        }
    }
    if !failed_loads.is_empty() {
        findings.warn(
            format!(
                "live gateways report failed policy loads: {}",
                sample(&failed_loads, failed_loads.len(), 3)
            ),
            "fix the policy set version named (its bundle does not build), or activate a working version through the admin API; the gateway keeps its previous bundle meanwhile",
        );
    }
    Ok(findings.finish())
}
