//! `revocation.state` (storage §6.2, §12.5) and `outbox` (§7).
//!
//! `revocation.state`: every live gateway reads the revocation streams under its own groups;
//! no revocation message is dead or stalled in an outbox; every authority record revoked in
//! the last 24 h has a published `caracal.sessions.revoke` message. In-tree verifiers also
//! poll Postgres, so a missing message delays nothing for them; external verifiers (resource
//! servers with their own caches) depend on it.
//!
//! `outbox`: pending, stalled and dead rows of `event_outbox` (API, STS) and
//! `caracal_outbox` (Coordinator), by topic.

use chrono::Duration;
use control_events::streams::{
    AGENTS_LIFECYCLE, DELEGATIONS_INVALIDATE, SESSIONS_REVOKE, replica_group,
};
use control_store::ops::doctor::{self as store, OutboxBacklog};

use super::{
    CheckError, Context, age,
    audit::unreachable_check,
    gateway::STALE_AFTER_SECS,
    redis_link::{self, GroupStanding},
    report::{Check, Findings},
    sample,
};

/// The revocation streams every gateway replica reads, with their group base names.
const REVOCATION_STREAMS: [(&str, &str); 3] = [
    (SESSIONS_REVOKE, "gateway-revocation"),
    (DELEGATIONS_INVALIDATE, "gateway-delegation"),
    (AGENTS_LIFECYCLE, "gateway-lifecycle"),
];
/// A pending row older than this is stalled (dispatchers poll every 0.25–1 s).
const STALLED_WARN_SECS: f64 = 60.0;
/// A pending row older than this fails.
const STALLED_FAIL_SECS: f64 = 300.0;
/// A revocation younger than this may still be on its way.
const SETTLE_SECS: i64 = 60;
/// Examples listed.
const EXAMPLES: i64 = 5;

/// Who publishes a table's rows.
fn producers(outbox: &str) -> &'static str {
    if outbox == "caracal_outbox" {
        "the Coordinator"
    } else {
        "the API and the STS"
    }
}

fn requeue_fix(outbox: &str) -> String {
    format!(
        "fix the cause (the row's last_error), then re-queue dead rows as caracal_maintenance: UPDATE caracal.{outbox} SET status = 'pending', attempts = 0, available_at = now() WHERE status = 'dead' (there is no `caracal outbox retry` command yet)"
    )
}

fn stalled_fix(outbox: &str) -> String {
    format!(
        "check that {} run and reach Redis: their outbox dispatchers publish these rows (their /ready reports outbox_stalled when OUTBOX_READY_MAX_AGE_SECS is set)",
        producers(outbox)
    )
}

/// Reports the dead and stalled rows of `rows` into `findings`; returns whether any was.
fn report_backlog(findings: &mut Findings, rows: &[&OutboxBacklog], what: &str) -> bool {
    let mut reported = false;
    for row in rows {
        if row.dead > 0 {
            findings.fail(
                format!(
                    "{} dead {what} row(s) on {} in {}: they will never be published",
                    row.dead, row.topic, row.outbox
                ),
                requeue_fix(&row.outbox),
            );
            reported = true;
        }
        let oldest = row.oldest_pending_secs.unwrap_or(0.0);
        if row.pending > 0 && oldest > STALLED_WARN_SECS {
            let finding = format!(
                "{} pending {what} row(s) on {} in {}, the oldest waiting {} ({} attempt(s))",
                row.pending,
                row.topic,
                row.outbox,
                age(oldest),
                row.max_attempts.unwrap_or(0)
            );
            if oldest > STALLED_FAIL_SECS {
                findings.fail(finding, stalled_fix(&row.outbox));
            } else {
                findings.warn(finding, stalled_fix(&row.outbox));
            }
            reported = true;
        }
    }
    reported
}

/// Runs `outbox`.
pub(crate) async fn backlog(cx: &mut Context<'_>) -> Result<Check, CheckError> {
    let mut findings = Findings::new("outbox");
    let rows = store::outbox_backlog(&mut cx.db).await?;
    let all: Vec<&OutboxBacklog> = rows.iter().collect();
    if !report_backlog(&mut findings, &all, "outbox") {
        let pending: i64 = rows.iter().map(|r| r.pending).sum();
        findings.ok(format!("{pending} row(s) pending, none stalled, none dead"));
    }
    Ok(findings.finish())
}

/// Runs `revocation.state`.
pub(crate) async fn revocation_state(cx: &mut Context<'_>) -> Result<Check, CheckError> {
    let mut findings = Findings::new("revocation.state");

    let rows = store::outbox_backlog(&mut cx.db).await?;
    let revocations: Vec<&OutboxBacklog> = rows
        .iter()
        .filter(|r| {
            REVOCATION_STREAMS
                .iter()
                .any(|(stream, _)| *stream == r.topic)
        })
        .collect();
    if !report_backlog(&mut findings, &revocations, "revocation") {
        findings.ok("no dead or stalled revocation message");
    }

    let since = cx.db_now - Duration::hours(24);
    let settled = cx.db_now - Duration::seconds(SETTLE_SECS);
    let unannounced = store::unannounced_revocations(&mut cx.db, since, settled, EXAMPLES).await?;
    if let Some(first) = unannounced.first() {
        let names: Vec<String> = unannounced
            .iter()
            .map(|r| {
                let state = r.outbox_status.as_deref().unwrap_or("no outbox row");
                format!("{}/{} ({state})", r.zone_id, r.session_id)
            })
            .collect();
        findings.fail(
            format!(
                "{} authority record(s) revoked in the last 24 h have no published {SESSIONS_REVOKE} message: {}",
                first.total,
                sample(&names, usize::try_from(first.total).unwrap_or(names.len()), names.len())
            ),
            "in-tree gateways still deny through their Postgres poll, but external verifiers miss the revocation: fix the outbox (see the outbox check) and re-queue dead rows; `caracal revocations republish` (storage §12.3) is not built yet, so for records with no row, revoke them again through the admin API",
        );
    } else {
        findings.ok("every record revoked in the last 24 h was announced");
    }

    // The groups of the live gateways.
    let mut conn = match cx.redis.conn() {
        Ok(conn) => conn,
        Err(error) => {
            let check = unreachable_check("revocation.state", &cx.redis, &error);
            findings.fail(check.finding, check.fix.unwrap_or_default());
            return Ok(findings.finish());
        }
    };
    let live = redis_link::live_instances(&mut conn, "gateway").await?;
    if live.is_empty() {
        findings.ok("no live gateway in caracal:instances:gateway");
        return Ok(findings.finish());
    }
    let mut standings = Vec::new();
    for (stream, base) in REVOCATION_STREAMS {
        let groups = redis_link::groups(&mut conn, stream).await?;
        let newest = redis_link::latest_entry(&mut conn, stream).await?;
        for instance in &live {
            let group = replica_group(base, instance);
            let standing = redis_link::standing(
                &mut conn,
                stream,
                &group,
                groups.as_deref(),
                newest.as_ref().map(|(id, _)| id.as_str()),
                chrono::Utc::now(),
            )
            .await?;
            standings.push((instance, stream, group, standing));
        }
    }
    let mut problems = 0_usize;
    for instance in &live {
        let of_instance = || standings.iter().filter(move |(i, ..)| *i == instance);
        let missing: Vec<String> = of_instance()
            .filter(|(.., standing)| *standing == GroupStanding::Missing)
            .map(|(_, _, group, _)| group.clone())
            .collect();
        if !missing.is_empty() {
            problems += 1;
            findings.fail(
                format!(
                    "live gateway {instance} has no group {}: revocations reach it only through its poll",
                    missing.join(", ")
                ),
                "restart that gateway (it creates its groups at start-up); if groups keep disappearing, raise STREAM_GROUP_GC_SECONDS",
            );
        }
        for (_, stream, group, standing) in of_instance() {
            match standing {
                GroupStanding::Behind { age_secs } if *age_secs > STALE_AFTER_SECS => {
                    problems += 1;
                    findings.fail(
                        format!(
                            "live gateway {instance} has not read {stream} for {} (group {group})",
                            age(*age_secs)
                        ),
                        "check that gateway's logs and /ready; restart it if its consumers are stuck",
                    );
                }
                GroupStanding::Unacknowledged { pending, idle_secs }
                    if *idle_secs > STALE_AFTER_SECS =>
                {
                    problems += 1;
                    findings.warn(
                        format!(
                            "live gateway {instance} holds {pending} unacknowledged message(s) on {stream}, the oldest idle for {}",
                            age(*idle_secs)
                        ),
                        "check that gateway's logs: a handler keeps failing (after 5 failures the entry goes to <stream>.dead)",
                    );
                }
                _ => {}
            }
        }
    }
    if problems == 0 {
        findings.ok(format!(
            "{} live gateway(s) read every revocation stream",
            live.len()
        ));
    }
    Ok(findings.finish())
}
