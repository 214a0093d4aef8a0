//! Agent sessions (`/zones/{z}/agents`, wire-contract §7.3, authority §2.1, §2.5): start with
//! its ordered rules, terminate with the cascade, heartbeat and lease with generation
//! fencing, suspend and resume of a subtree, and the reads.
//!
//! Every change runs in one zone transaction that also writes its outbox rows
//! (`caracal_outbox`, producer `coordinator`); the dispatcher is woken after the commit.
//! A session the caller may not see answers 404 `session_not_found`, like one that does not
//! exist.

use std::collections::BTreeSet;

use control_events::cascade::{self, Announce, Context};
use control_model::authority::{Constraints, MAX_HOPS};
use control_store::{
    applications,
    cascade::{Ending, Roots},
    coordinator::{
        edges::{self, EdgeRow, NewEdge},
        receipts::Operation,
        sessions::{self, AgentSessionRow, ListFilter, NewSession},
    },
    delegation::{self, ApplicationAndRecord},
    outbox::BatchMessage,
    zone::{ZoneTx, zone_snapshot, zone_tx},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    auth::{self, Caller},
    delegations,
    error::{CoordError, Problem, refuse},
    idempotency::{self, Idempotent},
    metrics::Metrics,
    request::{CoordRequest, Reply},
    state::Coordinator,
    views,
};

/// The default task TTL.
const DEFAULT_TTL_SECONDS: i64 = 3600;
/// The longest task TTL.
const MAX_TTL_SECONDS: i64 = 86_400;
/// Labels per session and characters per label.
const MAX_LABELS: usize = 32;
const MAX_LABEL_CHARS: usize = 64;
/// The deepest tree (authority §9).
const MAX_DEPTH: i32 = 10;
/// The longest caller-supplied termination reason.
const MAX_REASON_CHARS: usize = 128;
/// The largest metadata object, serialised: half the column's bound, so that an answer
/// holding it fits an idempotency receipt (64 KiB).
const MAX_METADATA_BYTES: usize = 32_768;

/// Body of `POST /zones/{z}/agents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    application_id: String,
    lifecycle: Option<String>,
    subject_session_id: Option<String>,
    /// Accepted and ignored, as Caracal 1.0 does.
    #[serde(rename = "subject_token")]
    _subject_token: Option<Value>,
    parent_id: Option<String>,
    ttl_seconds: Option<i64>,
    metadata: Option<Value>,
    labels: Option<Vec<String>>,
    parent_authority: Option<String>,
    inherit_parent_edge_id: Option<String>,
}

/// A start body after its field rules.
struct Start {
    application_id: String,
    service: bool,
    subject: Option<String>,
    parent_id: Option<String>,
    ttl_seconds: Option<i32>,
    metadata: Value,
    labels: Vec<String>,
    inherit: bool,
    inherit_edge: Option<String>,
}

fn checked_start(body: StartBody) -> Result<Start, Problem> {
    let service = match body.lifecycle.as_deref() {
        None | Some("task") => false,
        Some("service") => true,
        Some(_) => {
            return Err(Problem::invalid_body(
                "lifecycle",
                "must be task or service",
            ));
        }
    };
    let ttl_seconds = match (service, body.ttl_seconds) {
        (true, Some(_)) => {
            return Err(Problem::invalid_body(
                "ttl_seconds",
                "only task sessions take ttl_seconds",
            ));
        }
        (true, None) => None,
        (false, ttl) => {
            let ttl = ttl.unwrap_or(DEFAULT_TTL_SECONDS);
            if !(1..=MAX_TTL_SECONDS).contains(&ttl) {
                return Err(Problem::invalid_body(
                    "ttl_seconds",
                    "must be between 1 and 86400",
                ));
            }
            Some(i32::try_from(ttl).unwrap_or(i32::MAX))
        }
    };
    let labels = body.labels.unwrap_or_default();
    if labels.len() > MAX_LABELS
        || labels
            .iter()
            .any(|l| l.is_empty() || l.chars().count() > MAX_LABEL_CHARS)
    {
        return Err(Problem::invalid_body(
            "labels",
            "at most 32 labels of 1 to 64 characters",
        ));
    }
    let metadata = body.metadata.unwrap_or_else(|| json!({}));
    if !metadata.is_object() || metadata.to_string().len() > MAX_METADATA_BYTES {
        return Err(Problem::invalid_body(
            "metadata",
            "must be an object of at most 32 KiB",
        ));
    }
    let inherit = match body.parent_authority.as_deref() {
        None | Some("inherit") => true,
        Some("none") => false,
        Some(_) => {
            return Err(Problem::invalid_body(
                "parent_authority",
                "must be inherit or none",
            ));
        }
    };
    if body.application_id.is_empty() {
        return Err(Problem::invalid_body("application_id", "must not be empty"));
    }
    Ok(Start {
        application_id: body.application_id,
        service,
        subject: body.subject_session_id.filter(|s| !s.is_empty()),
        parent_id: body.parent_id.filter(|s| !s.is_empty()),
        ttl_seconds,
        metadata,
        labels,
        inherit,
        inherit_edge: body.inherit_parent_edge_id.filter(|s| !s.is_empty()),
    })
}

/// `POST /zones/{z}/agents`: the rules of authority §2.1, in order. The caller's identity
/// rows and rate are confirmed first, in this route's transaction (decision 0033).
pub async fn start(co: &Coordinator, req: &CoordRequest) -> Result<Reply, CoordError> {
    // The caller's agent; it acts only once `auth::confirm` has judged its identity rows.
    let Some(agent) = auth::awaiting_confirmation(&req.caller) else {
        return Err(CoordError::Internal(
            "session start reached without an unconfirmed session mandate".into(),
        ));
    };
    let zone = req.zone.as_str();
    // The body is read now and its refusals given after the identity's, which come first.
    let checked = req
        .json_and_value::<StartBody>()
        .and_then(|(body, raw)| Ok((checked_start(body)?, raw)));
    let started_application = checked
        .as_ref()
        .map_or(agent.client_id.as_str(), |(start, _)| {
            start.application_id.as_str()
        });
    // 4. One start at a time per zone: the transaction begins holding the zone's start lock;
    //    the idempotency lookup (3) runs under it so two first uses of one key cannot both
    //    create. Its first read brings the caller's identity rows and the slot bound of
    //    step 7 in one round trip; each is judged in the rules' order below.
    let mut tx = sessions::begin_start(&co.pool, &req.zone).await?;
    let reads =
        sessions::start_reads(&mut tx, &agent.client_id, &agent.sid, started_application).await?;
    let caller = auth::confirm(co, agent, &reads.identity).await?;
    let (start, raw) = checked?;
    // 1. The subject authority record.
    let subject = start.subject.clone().unwrap_or_else(|| agent.sid.clone());
    if subject.is_empty() {
        return Err(refuse(400, "subject_session_id_required").into());
    }
    // 2. Ownership of the application.
    if !caller.owns_or_holds(&start.application_id, "coordinator.spawn_for:") {
        return Err(refuse(403, "application_ownership_required").into());
    }
    let actor = caller.actor();
    // An agent starting a session of its own application on its own record (the usual
    // start) has had both rows read already.
    let ApplicationAndRecord {
        application,
        record,
    } = if start.application_id == agent.client_id && subject == agent.sid {
        reads.identity
    } else {
        delegation::application_and_record(&mut tx, &start.application_id, &subject).await?
    };
    let idempotent = req
        .idempotency
        .as_ref()
        .map(|key| Idempotent::new(key, Operation::SessionStart, &agent.client_id, &raw));
    if let Some(idempotent) = &idempotent
        && let Some(receipt) = idempotent.lookup(&mut tx, &co.config.receipts).await?
    {
        let live = is_live(&mut tx, zone, &receipt.resource_id).await?;
        tx.rollback().await?;
        return idempotency::replay(receipt, live);
    }
    // 5. The application.
    let application = application
        .filter(|a| a.row.is_usable(a.now))
        .ok_or_else(|| refuse(404, "application_not_found"))?;
    let dcr = application.row.registration_method == "dcr";
    if dcr && start.service {
        return Err(refuse(409, "dcr_application_cannot_host_service").into());
    }
    if dcr && start.parent_id.is_some() {
        return Err(refuse(409, "dcr_application_cannot_be_child").into());
    }
    // 6. The subject record.
    if !record.is_some_and(|r| r.is_live(zone, application.now)) {
        return Err(refuse(404, "session_not_found").into());
    }
    // 7. Capacity.
    let limits = co.config.limits;
    let slots = sessions::slots(
        &mut tx,
        reads.bound,
        &start.application_id,
        limits.per_zone,
        limits.per_app,
        dcr,
    )
    .await?;
    if slots.zone >= limits.per_zone {
        return Err(refuse(429, "session_zone_limit_exceeded").into());
    }
    if dcr && slots.application > 0 {
        return Err(refuse(409, "dcr_application_already_bound").into());
    }
    if slots.application >= limits.per_app {
        return Err(refuse(429, "session_limit_exceeded").into());
    }
    // 8. The parent.
    let parent = match &start.parent_id {
        None => None,
        Some(parent_id) => Some(check_parent(&mut tx, &caller, parent_id, &start).await?),
    };
    // 9. Insert, with the lifecycle event (11) in the same statement.
    let id = uuid::Uuid::now_v7().to_string();
    let new = NewSession {
        id: &id,
        zone_id: zone,
        application_id: &start.application_id,
        parent_id: parent.as_ref().map(|p| p.id.as_str()),
        subject_authority_record_id: &subject,
        lifecycle: if start.service { "service" } else { "task" },
        depth: parent.as_ref().map_or(0, |p| p.depth + 1),
        labels: &start.labels,
        ttl_seconds: start.ttl_seconds,
        lease_seconds: start.service.then_some(co.config.limits.lease_seconds),
        metadata: &start.metadata,
        actor: &actor,
    };
    let ctx = req.outbox(&actor);
    let spawn = [cascade::lifecycle(zone, "spawn", &new.changed(), None)];
    let row = sessions::insert(
        &mut tx,
        &new,
        &ctx.batch(control_events::streams::AGENTS_LIFECYCLE, &spawn),
    )
    .await?;
    // 10. Edge inheritance.
    let inherited = match (&parent, start.inherit) {
        (Some(parent), true) => {
            inherit(&mut tx, &ctx, parent, &row, start.inherit_edge.as_deref()).await?
        }
        _ => None,
    };
    let answer = views::session(&row, inherited.as_deref());
    if let Some(idempotent) = &idempotent {
        idempotent
            .store(
                &mut tx,
                zone,
                ("agent_session", &row.id),
                &answer,
                &co.config.receipts,
            )
            .await?;
    }
    tx.commit().await?;
    co.outbox.wake();
    Metrics::count(&co.metrics.sessions_started);
    Ok(Reply::Json(201, answer))
}

/// Whether session `id` is live now by the shared rule (authority §2.1, Liveness): its own
/// state, and a user-typed subject record that is still live.
async fn is_live(tx: &mut ZoneTx, zone: &str, id: &str) -> Result<bool, CoordError> {
    let now = delegation::now(tx).await?;
    let views = delegation::agent_sessions(tx, &[id.to_owned()]).await?;
    Ok(views.iter().any(|s| s.id == id && s.is_live(zone, now)))
}

/// Step 8: the parent, locked, live, and allowed to take this child.
async fn check_parent(
    tx: &mut ZoneTx,
    caller: &Caller,
    parent_id: &str,
    start: &Start,
) -> Result<AgentSessionRow, CoordError> {
    let parent = sessions::lock(tx, parent_id)
        .await?
        .ok_or_else(|| refuse(404, "parent_not_found"))?;
    if !is_live(tx, &parent.zone_id, &parent.id).await? {
        return Err(refuse(404, "parent_not_found").into());
    }
    let parent_app = applications::find_as_of(tx, &parent.application_id).await?;
    if parent_app.is_some_and(|a| a.row.registration_method == "dcr") {
        return Err(refuse(409, "dcr_application_cannot_start_child").into());
    }
    if parent.lifecycle == "task" && start.service {
        return Err(refuse(409, "task_session_cannot_start_service").into());
    }
    if !caller.owns_or_holds(&parent.application_id, "coordinator.spawn_under:") {
        return Err(refuse(403, "parent_ownership_required").into());
    }
    if parent.child_count >= parent.max_children {
        return Err(refuse(429, "session_children_limit_exceeded").into());
    }
    if parent.depth + 1 > MAX_DEPTH {
        return Err(refuse(429, "session_depth_limit_exceeded").into());
    }
    Ok(parent)
}

/// Step 10: copies the parent's one live inbound edge whose receiver is the child's
/// application, with one hop less; returns the copy's id.
async fn inherit(
    tx: &mut ZoneTx,
    ctx: &Context<'_>,
    parent: &AgentSessionRow,
    child: &AgentSessionRow,
    named: Option<&str>,
) -> Result<Option<String>, CoordError> {
    let candidates: Vec<EdgeRow> = edges::into_session(tx, &parent.id)
        .await?
        .into_iter()
        .filter(|e| e.receiver_application_id == child.application_id)
        .filter(|e| named.is_none_or(|n| e.id == n))
        .collect();
    if candidates.is_empty() {
        return match named {
            Some(_) => Err(refuse(409, "inherit_parent_edge_not_active").into()),
            None => Ok(None),
        };
    }
    let live: Vec<&EdgeRow> = candidates.iter().filter(|e| e.is_live()).collect();
    let source = match live.as_slice() {
        [] => return Err(refuse(409, "inherit_parent_edge_not_active").into()),
        [one] => *one,
        _ => return Err(refuse(409, "inherit_parent_edge_ambiguous").into()),
    };
    let constraints = Constraints::parse(&source.constraints_json)
        .map_err(|_bad| refuse(409, "inherit_parent_edge_not_active"))?;
    let hops = constraints.hops();
    // Settled point 9: an edge that allows no further hop is refused, never skipped.
    if hops <= 1 {
        return Err(refuse(409, "inherit_parent_edge_exhausted").into());
    }
    let mut copied = constraints;
    copied.max_depth = None;
    copied.max_hops = Some((hops - 1).min(i64::try_from(MAX_HOPS).unwrap_or(10)));
    let constraints_json = serde_json::to_value(&copied)
        .map_err(|e| CoordError::Internal(format!("constraints: {e}")))?;
    let edge = delegations::insert_edge(
        tx,
        ctx,
        &NewEdge {
            source_session_id: &parent.id,
            target_session_id: &child.id,
            issuer_application_id: &parent.application_id,
            receiver_application_id: &child.application_id,
            resource_id: source.resource_id.as_deref(),
            scopes: &source.scopes,
            constraints: &constraints_json,
            expires_at: source.expires_at,
            parent_edge_id: Some(&source.id),
        },
    )
    .await?;
    Ok(Some(edge.row.id))
}

/// A session of the zone the caller may act on: its application's owner or an admin.
async fn visible(
    tx: &mut ZoneTx,
    caller: &Caller,
    id: &str,
    lock: bool,
) -> Result<AgentSessionRow, CoordError> {
    let row = if lock {
        sessions::lock(tx, id).await?
    } else {
        sessions::get(tx, id).await?
    };
    row.filter(|s| caller.owns(&s.application_id))
        .ok_or_else(|| refuse(404, "session_not_found").into())
}

/// Body of `DELETE …/agents/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TerminateBody {
    lease_generation: Option<i64>,
}

/// `DELETE /zones/{z}/agents/{id}[?reason=]`: ends the session and its subtree, revokes the
/// edges touching them. A session that already ended answers 204 and changes nothing.
pub async fn terminate(
    co: &Coordinator,
    req: &CoordRequest,
    id: &str,
) -> Result<Reply, CoordError> {
    let body: TerminateBody = req.json()?;
    let reason = match req.query("reason") {
        None => "requested".to_owned(),
        Some(reason)
            if reason.chars().count() <= MAX_REASON_CHARS
                && !reason.chars().any(char::is_control) =>
        {
            reason.to_owned()
        }
        Some(_) => {
            return Err(Problem::new(
                400,
                "invalid_query",
                "reason must be at most 128 characters without control characters",
            )
            .into());
        }
    };
    let actor = req.caller.actor();
    let mut tx = zone_tx(&co.pool, &req.zone).await?;
    let session = visible(&mut tx, &req.caller, id, true).await?;
    if !matches!(session.status.as_str(), "active" | "suspended") {
        tx.rollback().await?;
        return Ok(Reply::NoContent);
    }
    if session.lifecycle == "service" && !req.caller.is_admin() {
        let generation = body
            .lease_generation
            .ok_or_else(|| refuse(400, "lease_generation_required"))?;
        if generation != session.lease_generation {
            return Err(refuse(409, "session_lease_fenced").into());
        }
    }
    let ctx = req.outbox(&actor);
    let changed = cascade::end_sessions(
        &mut tx,
        &ctx,
        Roots::Sessions(std::slice::from_ref(&session.id)),
        Ending::Terminated,
        &reason,
        Announce {
            edge_reason: &reason,
            cause_edge: None,
            already_revoked: &[],
        },
    )
    .await?;
    tx.commit().await?;
    co.outbox.wake();
    Metrics::add(&co.metrics.sessions_ended, changed.sessions.len());
    Metrics::add(&co.metrics.edges_ended, changed.edges.len());
    Ok(Reply::NoContent)
}

/// Body of `POST …/agents/{id}/heartbeat`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatBody {
    status: String,
    lease_generation: i64,
    service_id: Option<String>,
    metadata: Option<Value>,
    active_invocations: Option<i64>,
}

/// The lease checks shared by heartbeat and lease: a running service session.
fn check_lease(session: &AgentSessionRow) -> Result<(), Problem> {
    if session.lifecycle != "service" {
        return Err(refuse(409, "session_not_service"));
    }
    if session.status != "active" {
        return Err(refuse(409, "session_not_live"));
    }
    if session
        .heartbeat_deadline_at
        .is_none_or(|deadline| deadline <= session.read_at)
    {
        return Err(refuse(409, "session_lease_expired"));
    }
    Ok(())
}

/// `POST /zones/{z}/agents/{id}/heartbeat`: renews a service's lease for the holder of the
/// current generation.
pub async fn heartbeat(
    co: &Coordinator,
    req: &CoordRequest,
    id: &str,
) -> Result<Reply, CoordError> {
    let body: HeartbeatBody = req.json()?;
    if !crate::services::HEALTH.contains(&body.status.as_str()) {
        return Err(Problem::invalid_body(
            "status",
            "must be starting, healthy, degraded or unhealthy",
        )
        .into());
    }
    if body.lease_generation < 1 {
        return Err(Problem::invalid_body("lease_generation", "must be at least 1").into());
    }
    if body
        .metadata
        .as_ref()
        .is_some_and(|m| !m.is_object() || m.to_string().len() > MAX_METADATA_BYTES)
    {
        return Err(
            Problem::invalid_body("metadata", "must be an object of at most 32 KiB").into(),
        );
    }
    let mut tx = zone_tx(&co.pool, &req.zone).await?;
    let session = visible(&mut tx, &req.caller, id, true).await?;
    if session.lifecycle == "service" && body.lease_generation != session.lease_generation {
        return Err(refuse(409, "session_lease_fenced").into());
    }
    check_lease(&session)?;
    if !is_live(&mut tx, req.zone.as_str(), id).await? {
        return Err(refuse(409, "session_not_live").into());
    }
    let row = sessions::heartbeat(
        &mut tx,
        id,
        co.config.limits.lease_seconds,
        body.metadata.as_ref(),
    )
    .await?;
    let service = match &body.service_id {
        None => None,
        Some(service_id) => Some(
            crate::services::heartbeat_service(
                &mut tx,
                &row.application_id,
                service_id,
                &body.status,
                &req.caller.actor(),
            )
            .await?,
        ),
    };
    tx.commit().await?;
    Ok(Reply::Json(
        200,
        json!({
            "agent": {
                "id": row.id,
                "zone_id": row.zone_id,
                "application_id": row.application_id,
                "status": row.status,
                "health": body.status,
                "last_active_at": row.last_active_at.map(views::time),
                "last_heartbeat_at": row.last_heartbeat_at.map(views::time),
                "heartbeat_deadline_at": row.heartbeat_deadline_at.map(views::time),
                "lease_generation": row.lease_generation,
            },
            "service": service.as_ref().map(views::service),
            "active_invocations": body.active_invocations.unwrap_or(0),
        }),
    ))
}

/// `POST /zones/{z}/agents/{id}/lease`: takes the lease with the next generation, fencing
/// every older holder.
pub async fn lease(co: &Coordinator, req: &CoordRequest, id: &str) -> Result<Reply, CoordError> {
    let mut tx = zone_tx(&co.pool, &req.zone).await?;
    let session = visible(&mut tx, &req.caller, id, true).await?;
    check_lease(&session)?;
    if !is_live(&mut tx, req.zone.as_str(), id).await? {
        return Err(refuse(409, "session_not_live").into());
    }
    let row = sessions::take_lease(&mut tx, id, co.config.limits.lease_seconds).await?;
    tx.commit().await?;
    Ok(Reply::Json(
        200,
        json!({
            "status": row.status,
            "heartbeat_deadline_at": row.heartbeat_deadline_at.map(views::time),
            "lease_generation": row.lease_generation,
        }),
    ))
}

/// `PATCH /zones/{z}/agents/{id}/suspend`: the session and its active descendants become
/// `suspended`; edges are kept. Answers `{suspended: N}`.
pub async fn suspend(co: &Coordinator, req: &CoordRequest, id: &str) -> Result<Reply, CoordError> {
    let actor = req.caller.actor();
    let mut tx = zone_tx(&co.pool, &req.zone).await?;
    visible(&mut tx, &req.caller, id, true).await?;
    let changed = sessions::suspend_tree(&mut tx, id, &actor).await?;
    let zone = req.zone.as_str();
    let revokes: Vec<BatchMessage> = changed
        .iter()
        .map(|s| cascade::session_revoke(zone, s, "suspended", None))
        .collect();
    let lifecycle: Vec<BatchMessage> = changed
        .iter()
        .map(|s| cascade::lifecycle(zone, "suspend", s, Some("suspended")))
        .collect();
    let ctx = req.outbox(&actor);
    ctx.enqueue(&mut tx, control_events::streams::SESSIONS_REVOKE, &revokes)
        .await?;
    ctx.enqueue(
        &mut tx,
        control_events::streams::AGENTS_LIFECYCLE,
        &lifecycle,
    )
    .await?;
    tx.commit().await?;
    co.outbox.wake();
    Ok(Reply::Json(200, json!({"suspended": changed.len()})))
}

/// `PATCH /zones/{z}/agents/{id}/resume`: the suspended sessions of the subtree become
/// `active` again (a service with a fresh lease). Answers `{resumed: N}`.
pub async fn resume(co: &Coordinator, req: &CoordRequest, id: &str) -> Result<Reply, CoordError> {
    let actor = req.caller.actor();
    let mut tx = zone_tx(&co.pool, &req.zone).await?;
    visible(&mut tx, &req.caller, id, true).await?;
    let changed =
        sessions::resume_tree(&mut tx, id, co.config.limits.lease_seconds, &actor).await?;
    let zone = req.zone.as_str();
    let lifecycle: Vec<BatchMessage> = changed
        .iter()
        .map(|s| cascade::lifecycle(zone, "resume", s, None))
        .collect();
    req.outbox(&actor)
        .enqueue(
            &mut tx,
            control_events::streams::AGENTS_LIFECYCLE,
            &lifecycle,
        )
        .await?;
    tx.commit().await?;
    co.outbox.wake();
    Ok(Reply::Json(200, json!({"resumed": changed.len()})))
}

/// `GET /zones/{z}/agents/{id}`.
pub async fn get(co: &Coordinator, req: &CoordRequest, id: &str) -> Result<Reply, CoordError> {
    let mut tx = zone_snapshot(&co.pool, &req.zone).await?;
    let row = visible(&mut tx, &req.caller, id, false).await?;
    tx.commit().await?;
    Ok(Reply::Json(200, views::session(&row, None)))
}

/// `GET /zones/{z}/agents` (filters `status`, `lifecycle`, `application_id`, `label`; an
/// agent sees its own application's sessions only).
pub async fn list(co: &Coordinator, req: &CoordRequest) -> Result<Reply, CoordError> {
    let page = req.page()?;
    let own = match &req.caller {
        caller if caller.is_admin() => None,
        caller => caller.client_id(),
    };
    if let (Some(own), Some(asked)) = (own, req.query("application_id"))
        && own != asked
    {
        return Ok(Reply::Json(200, json!({"items": [], "next_cursor": null})));
    }
    let filter = ListFilter {
        status: req.query("status"),
        lifecycle: req.query("lifecycle"),
        application_id: own.or(req.query("application_id")),
        label: req.query("label"),
        parent_id: None,
    };
    let mut tx = zone_snapshot(&co.pool, &req.zone).await?;
    let rows = sessions::list(&mut tx, filter, &page).await?;
    tx.commit().await?;
    Ok(Reply::Json(
        200,
        control_http::strict::page_body(&rows, |row| views::session(row, None)),
    ))
}

/// `GET /zones/{z}/agents/{id}/children`: `{items, next_cursor}`.
pub async fn children(co: &Coordinator, req: &CoordRequest, id: &str) -> Result<Reply, CoordError> {
    let page = req.page()?;
    let mut tx = zone_snapshot(&co.pool, &req.zone).await?;
    visible(&mut tx, &req.caller, id, false).await?;
    let filter = ListFilter {
        parent_id: Some(id),
        status: req.query("status"),
        ..ListFilter::default()
    };
    let rows = sessions::list(&mut tx, filter, &page).await?;
    tx.commit().await?;
    Ok(Reply::Json(
        200,
        control_http::strict::page_body(&rows, |row| views::session(row, None)),
    ))
}

/// `GET /zones/{z}/agents/{id}/effective-authority`: what the session's live inbound edges
/// grant together: the union of their scopes and resources, the largest `max_hops`, the
/// smallest `ttl_seconds` and the earliest expiry.
pub async fn effective_authority(
    co: &Coordinator,
    req: &CoordRequest,
    id: &str,
) -> Result<Reply, CoordError> {
    let mut tx = zone_snapshot(&co.pool, &req.zone).await?;
    visible(&mut tx, &req.caller, id, false).await?;
    let inbound: Vec<EdgeRow> = edges::into_session(&mut tx, id)
        .await?
        .into_iter()
        .filter(EdgeRow::is_live)
        .collect();
    let resource_ids: BTreeSet<String> = inbound
        .iter()
        .filter_map(|e| e.resource_id.clone())
        .collect();
    let named: Vec<String> = resource_ids.iter().cloned().collect();
    let identifiers = if named.is_empty() {
        Vec::new()
    } else {
        edges::resources(&mut tx, &named).await?
    };
    tx.commit().await?;
    let mut scopes = BTreeSet::new();
    let mut resources: BTreeSet<String> = identifiers.into_iter().map(|r| r.identifier).collect();
    let mut max_hops: Option<i64> = None;
    let mut ttl: Option<i64> = None;
    for edge in &inbound {
        scopes.extend(edge.scopes.iter().cloned());
        if let Ok(constraints) = Constraints::parse(&edge.constraints_json) {
            resources.extend(constraints.resources.clone().unwrap_or_default());
            max_hops = Some(max_hops.map_or(constraints.hops(), |h| h.max(constraints.hops())));
            if let Some(t) = constraints.ttl_seconds {
                ttl = Some(ttl.map_or(t, |current| current.min(t)));
            }
        }
    }
    let earliest = inbound.iter().map(|e| e.expires_at).min();
    Ok(Reply::Json(
        200,
        json!({
            "agent_session_id": id,
            "inbound_edges": inbound.iter().map(views::edge).collect::<Vec<_>>(),
            "effective_scopes": scopes,
            "effective_resources": resources,
            "effective_resource_ids": resource_ids,
            "effective_max_hops": max_hops,
            "effective_ttl_seconds": ttl,
            "earliest_expires_at": earliest.map(views::time),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: Value) -> Result<Start, Problem> {
        checked_start(serde_json::from_value(value).unwrap())
    }

    fn issue(problem: &Problem) -> String {
        problem.details.as_ref().unwrap()["issues"][0]["path"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn a_task_gets_the_default_ttl_and_a_service_none() {
        let task = body(json!({"application_id": "a"})).unwrap();
        assert_eq!(task.ttl_seconds, Some(3600));
        assert!(task.inherit && !task.service);
        let service = body(json!({"application_id": "a", "lifecycle": "service"})).unwrap();
        assert_eq!(service.ttl_seconds, None);
        assert!(service.service);
    }

    #[test]
    fn each_field_rule_names_its_field() {
        let cases = [
            (
                json!({"application_id": "a", "lifecycle": "daemon"}),
                "lifecycle",
            ),
            (
                json!({"application_id": "a", "lifecycle": "service", "ttl_seconds": 5}),
                "ttl_seconds",
            ),
            (
                json!({"application_id": "a", "ttl_seconds": 0}),
                "ttl_seconds",
            ),
            (
                json!({"application_id": "a", "ttl_seconds": 86401}),
                "ttl_seconds",
            ),
            (
                json!({"application_id": "a", "labels": vec!["x"; 33]}),
                "labels",
            ),
            (
                json!({"application_id": "a", "labels": ["x".repeat(65)]}),
                "labels",
            ),
            (json!({"application_id": "a", "labels": [""]}), "labels"),
            (json!({"application_id": "a", "metadata": [1]}), "metadata"),
            (
                json!({"application_id": "a", "parent_authority": "all"}),
                "parent_authority",
            ),
            (json!({"application_id": ""}), "application_id"),
        ];
        for (value, field) in cases {
            let problem = body(value.clone())
                .err()
                .unwrap_or_else(|| panic!("{value} passed"));
            assert_eq!(problem.code, "invalid_body");
            assert_eq!(issue(&problem), field, "{value}");
        }
        let subject_token_is_ignored =
            body(json!({"application_id": "a", "subject_token": "eyJ..."})).unwrap();
        assert_eq!(subject_token_is_ignored.application_id, "a");
    }

    #[test]
    fn the_lease_checks_answer_in_order() {
        let now = chrono::Utc::now();
        let mut s = AgentSessionRow {
            id: "s".into(),
            zone_id: "z".into(),
            application_id: "a".into(),
            parent_id: None,
            subject_authority_record_id: None,
            lifecycle: "task".into(),
            status: "active".into(),
            status_version: 0,
            termination_reason: None,
            depth: 0,
            labels: vec![],
            max_children: 10,
            child_count: 0,
            ttl_seconds: Some(60),
            started_at: now,
            last_active_at: None,
            last_heartbeat_at: None,
            heartbeat_deadline_at: None,
            lease_generation: 0,
            terminated_at: None,
            metadata_json: json!({}),
            created_at: now,
            read_at: now,
        };
        assert_eq!(check_lease(&s).unwrap_err().code, "session_not_service");
        s.lifecycle = "service".into();
        s.ttl_seconds = None;
        s.status = "suspended".into();
        assert_eq!(check_lease(&s).unwrap_err().code, "session_not_live");
        s.status = "active".into();
        s.heartbeat_deadline_at = Some(now - chrono::Duration::seconds(1));
        assert_eq!(check_lease(&s).unwrap_err().code, "session_lease_expired");
        s.heartbeat_deadline_at = Some(now + chrono::Duration::seconds(60));
        assert!(check_lease(&s).is_ok());
    }
}
