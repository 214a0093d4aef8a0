//! Delegation edges (`/zones/{z}/delegations`, wire-contract §7.4, authority §2.2, §2.5):
//! create with every narrowing rule in order, revoke with the downstream cascade, and the
//! reads (inbound, outbound, active, traverse, impact).
//!
//! Every create and revoke bumps the zone's graph epoch and announces the change on
//! `caracal.delegations.invalidate` through the outbox, in the same transaction.

use std::collections::BTreeSet;

use control_events::cascade::{self, Announce, Context, CreatedEdge};
use control_model::authority::Constraints;
use control_store::{
    cascade::{Ending, Roots, bump_epoch},
    coordinator::{
        edges::{self, Downstream, EdgeFilter, EdgeRow, NewEdge},
        receipts::Operation,
        sessions,
    },
    delegation,
    zone::{ZoneTx, zone_snapshot, zone_tx},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    auth::Caller,
    error::{CoordError, Problem, refuse},
    idempotency::{self, Idempotent},
    metrics::Metrics,
    narrowing::{self, NamedResource, Side},
    request::{CoordRequest, Reply},
    state::Coordinator,
    views,
};

/// The most scopes an edge carries.
const MAX_SCOPES: usize = 64;

/// Body of `POST /zones/{z}/delegations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    issuer_application_id: String,
    source_session_id: String,
    target_session_id: String,
    receiver_application_id: String,
    scopes: Vec<String>,
    resource_id: Option<String>,
    parent_edge_id: Option<String>,
    constraints: Option<Value>,
    constraints_json: Option<Value>,
    ttl_seconds: Option<Value>,
    expires_at: Option<Value>,
}

/// A written edge and the epoch its creation set.
#[derive(Debug, Clone)]
pub struct Created {
    /// The row.
    pub row: EdgeRow,
    /// The zone's graph epoch after the creation.
    pub epoch: i64,
}

/// Inserts an edge, bumps the zone's graph epoch and enqueues `edge_create` (authority §2.4;
/// also used for the inherited copy of a session start).
pub async fn insert_edge(
    tx: &mut ZoneTx,
    ctx: &Context<'_>,
    edge: &NewEdge<'_>,
) -> Result<Created, CoordError> {
    let row = edges::insert(tx, ctx.zone, ctx.actor, edge).await?;
    let epoch = bump_epoch(tx, ctx.zone).await?;
    cascade::announce_created_edge(
        tx,
        ctx,
        CreatedEdge {
            id: &row.id,
            source_session_id: &row.source_session_id,
            target_session_id: &row.target_session_id,
            epoch,
        },
    )
    .await?;
    Ok(Created { row, epoch })
}

/// `POST /zones/{z}/delegations`: the checks of authority §2.2, in order.
pub async fn create(co: &Coordinator, req: &CoordRequest) -> Result<Reply, CoordError> {
    let (body, raw): (CreateBody, _) = req.json_and_value()?;
    if body.scopes.is_empty()
        || body.scopes.len() > MAX_SCOPES
        || body
            .scopes
            .iter()
            .any(|s| s.is_empty() || s.len() > 256 || s.chars().any(char::is_whitespace))
    {
        return Err(Problem::invalid_body("scopes", "1 to 64 scopes without white space").into());
    }
    // 1. Constraints.
    let mut normalized = narrowing::normalize(
        body.constraints_json.as_ref(),
        body.constraints.as_ref(),
        body.ttl_seconds.as_ref(),
        body.expires_at.as_ref(),
    )?;
    let caller = &req.caller;
    // 2. The issuer.
    if !caller.owns_or_holds(&body.issuer_application_id, "coordinator.delegate_from:") {
        return Err(refuse(403, "issuer_ownership_required").into());
    }
    let mut allow_reason = vec![if caller.owns(&body.issuer_application_id) {
        "issuer_owner".to_owned()
    } else {
        format!(
            "scope:coordinator.delegate_from:{}",
            body.issuer_application_id
        )
    }];
    // 3. Not to itself.
    if body.source_session_id == body.target_session_id {
        return Err(refuse(400, "self_delegation_denied").into());
    }
    // 4. Broad edges.
    let resource_ref = body.resource_id.as_deref().filter(|r| !r.is_empty());
    let mut warnings = Vec::new();
    if narrowing::is_broad(resource_ref, &normalized.parsed) {
        let scoped = format!("coordinator.delegate_broad:{}", body.issuer_application_id);
        if !(caller.is_admin()
            || caller.holds("coordinator.delegate_broad")
            || caller.holds(&scoped))
        {
            return Err(refuse(403, "broad_delegation_permission_required").into());
        }
        narrowing::mark_broad(&mut normalized);
        warnings.push(narrowing::BROAD_WARNING.to_owned());
        allow_reason.push("broad_delegation_permitted".to_owned());
    }
    // 5. Idempotency, under the zone's delegation lock.
    let zone = req.zone.as_str();
    let actor = caller.actor();
    let scope = caller.client_id().unwrap_or("operator").to_owned();
    let mut tx = zone_tx(&co.pool, &req.zone).await?;
    edges::lock_zone(&mut tx, zone).await?;
    let idempotent = req
        .idempotency
        .as_ref()
        .map(|key| Idempotent::new(key, Operation::DelegationCreate, &scope, &raw));
    if let Some(idempotent) = &idempotent
        && let Some(receipt) = idempotent.lookup(&mut tx, &co.config.receipts).await?
    {
        let live = edges::get(&mut tx, &receipt.resource_id)
            .await?
            .is_some_and(|e| e.is_live());
        tx.rollback().await?;
        return idempotency::replay(receipt, live);
    }
    // 6. Both endpoints live, in the named applications.
    let now = delegation::now(&mut tx).await?;
    let endpoints = delegation::agent_sessions(
        &mut tx,
        &[
            body.source_session_id.clone(),
            body.target_session_id.clone(),
        ],
    )
    .await?;
    let find = |id: &str| {
        endpoints
            .iter()
            .find(|s| s.id == id && s.is_live(zone, now))
            .cloned()
    };
    let (Some(source), Some(target)) =
        (find(&body.source_session_id), find(&body.target_session_id))
    else {
        return Err(refuse(404, "delegation_endpoint_not_found").into());
    };
    if source.application_id != body.issuer_application_id
        || target.application_id != body.receiver_application_id
    {
        return Err(refuse(409, "delegation_application_mismatch").into());
    }
    // 7. Resources.
    let listed: Vec<String> = normalized.parsed.resources.clone().unwrap_or_default();
    let mut wanted: Vec<String> = listed.clone();
    if let Some(r) = resource_ref {
        wanted.push(r.to_owned());
    }
    let known = if wanted.is_empty() {
        Vec::new()
    } else {
        edges::resources(&mut tx, &wanted).await?
    };
    let lookup = |r: &str| known.iter().find(|k| k.id == r || k.identifier == r);
    if wanted.iter().any(|r| lookup(r).is_none()) {
        return Err(refuse(404, "resource_not_found").into());
    }
    let resource: Option<NamedResource> = resource_ref.and_then(lookup).map(|k| NamedResource {
        id: k.id.clone(),
        identifier: k.identifier.clone(),
    });
    if let Some(named) = &resource
        && !listed.is_empty()
        && !listed
            .iter()
            .any(|l| *l == named.identifier || *l == named.id)
    {
        return Err(refuse(400, "delegation_resource_scope_mismatch").into());
    }
    // 8. Scopes within the named resources' declared scopes.
    if !wanted.is_empty() {
        let declared: BTreeSet<&str> = known
            .iter()
            .flat_map(|k| k.scopes.iter().map(String::as_str))
            .collect();
        if body.scopes.iter().any(|s| !declared.contains(s.as_str())) {
            return Err(refuse(403, "delegation_scopes_exceed_resource").into());
        }
    }
    // 9. The parent edge, which the child must narrow.
    let parent = parent_edge(
        &mut tx,
        &body.source_session_id,
        body.parent_edge_id.as_deref(),
    )
    .await?;
    if let Some(parent) = &parent {
        let parent_constraints = Constraints::parse(&parent.constraints_json)
            .map_err(|_bad| refuse(403, "delegation_exceeds_parent_authority"))?;
        let parent_resource = match &parent.resource_id {
            None => None,
            Some(id) => edges::resources(&mut tx, std::slice::from_ref(id))
                .await?
                .into_iter()
                .next()
                .map(|k| NamedResource {
                    id: k.id,
                    identifier: k.identifier,
                }),
        };
        let narrows = narrowing::narrows(
            &Side {
                scopes: &parent.scopes,
                expires_at: Some(parent.expires_at),
                resource: parent_resource.as_ref(),
                constraints: &parent_constraints,
            },
            &Side {
                scopes: &body.scopes,
                expires_at: normalized.expires_at,
                resource: resource.as_ref(),
                constraints: &normalized.parsed,
            },
        );
        if !narrows {
            return Err(refuse(403, "delegation_exceeds_parent_authority").into());
        }
        allow_reason.push(format!("narrows_parent:{}", parent.id));
    } else {
        allow_reason.push("root_edge".to_owned());
    }
    // 10. No cycle.
    if edges::reaches(&mut tx, &body.target_session_id, &body.source_session_id).await? {
        return Err(refuse(409, "delegation_cycle_denied").into());
    }
    // 11. The expiry.
    let expires_at = match (normalized.expires_at, normalized.parsed.ttl_seconds) {
        (Some(explicit), _) => explicit,
        (None, Some(ttl)) => now + chrono::Duration::seconds(ttl),
        (None, None) => return Err(refuse(400, "delegation_expiry_required").into()),
    };
    let within_parent = parent.as_ref().is_none_or(|p| expires_at <= p.expires_at);
    if expires_at <= now || !within_parent {
        return Err(match parent {
            Some(_) => refuse(403, "delegation_exceeds_parent_authority"),
            None => refuse(400, "delegation_expired"),
        }
        .into());
    }
    // 12. Insert, bump the epoch, announce.
    let constraints_json = Value::Object(normalized.object.clone());
    let ctx = req.outbox(&actor);
    let created = insert_edge(
        &mut tx,
        &ctx,
        &NewEdge {
            source_session_id: &body.source_session_id,
            target_session_id: &body.target_session_id,
            issuer_application_id: &body.issuer_application_id,
            receiver_application_id: &body.receiver_application_id,
            resource_id: resource.as_ref().map(|r| r.id.as_str()),
            scopes: &body.scopes,
            constraints: &constraints_json,
            expires_at,
            parent_edge_id: parent.as_ref().map(|p| p.id.as_str()),
        },
    )
    .await?;
    let mut answer = views::edge(&created.row);
    if let Value::Object(map) = &mut answer {
        map.insert("warnings".to_owned(), json!(warnings));
        map.insert("allow_reason".to_owned(), json!(allow_reason));
        map.insert("epoch".to_owned(), json!(created.epoch));
        map.insert(
            "effective_authority".to_owned(),
            json!({
                "scopes": created.row.scopes,
                "resource_id": created.row.resource_id,
                "resources": normalized.parsed.resources,
                "max_hops": normalized.parsed.hops(),
                "ttl_seconds": normalized.parsed.ttl_seconds,
                "expires_at": views::time(created.row.expires_at),
            }),
        );
    }
    if let Some(idempotent) = &idempotent {
        idempotent
            .store(
                &mut tx,
                zone,
                ("delegation_edge", &created.row.id),
                &answer,
                &co.config.receipts,
            )
            .await?;
    }
    tx.commit().await?;
    co.outbox.wake();
    Metrics::count(&co.metrics.edges_created);
    Ok(Reply::Json(201, answer))
}

/// Step 9's parent: among the source session's live inbound edges, the named one or the
/// only one; `None` when the source holds no live inbound edge and none is named.
async fn parent_edge(
    tx: &mut ZoneTx,
    source: &str,
    named: Option<&str>,
) -> Result<Option<EdgeRow>, CoordError> {
    let mut live: Vec<EdgeRow> = edges::into_session(tx, source)
        .await?
        .into_iter()
        .filter(EdgeRow::is_live)
        .collect();
    match named.filter(|n| !n.is_empty()) {
        Some(named) => match live.iter().position(|e| e.id == named) {
            Some(at) => Ok(Some(live.swap_remove(at))),
            None => Err(refuse(403, "parent_delegation_not_active").into()),
        },
        None => match live.len() {
            0 => Ok(None),
            1 => Ok(live.pop()),
            _ => Err(refuse(409, "parent_delegation_ambiguous").into()),
        },
    }
}

/// An edge the caller may act on: its issuer's or receiver's owner, or an admin.
fn may_see(caller: &Caller, edge: &EdgeRow) -> bool {
    caller.owns(&edge.issuer_application_id) || caller.owns(&edge.receiver_application_id)
}

/// `PATCH /zones/{z}/delegations/{id}/revoke`: revokes the edge and every edge downstream
/// of it, terminates the target subtrees (`delegation_revoked`), bumps the epoch once.
/// Answers `{revoked_edges, affected_sessions, terminated_sessions}`; an edge that is no
/// longer active answers zeros.
pub async fn revoke(co: &Coordinator, req: &CoordRequest, id: &str) -> Result<Reply, CoordError> {
    let actor = req.caller.actor();
    let mut tx = zone_tx(&co.pool, &req.zone).await?;
    edges::lock_zone(&mut tx, req.zone.as_str()).await?;
    let edge = edges::get(&mut tx, id)
        .await?
        .filter(|e| may_see(&req.caller, e))
        .ok_or_else(|| refuse(404, "delegation_not_found"))?;
    let walk = edges::downstream(&mut tx, &edge.id).await?;
    if walk.is_empty() {
        tx.rollback().await?;
        return Ok(Reply::Json(
            200,
            json!({"revoked_edges": 0, "affected_sessions": 0, "terminated_sessions": 0}),
        ));
    }
    let walked: Vec<String> = walk.iter().map(|d| d.id.clone()).collect();
    let revoked = edges::revoke(&mut tx, &walked, &actor).await?;
    let targets: Vec<String> = walk
        .iter()
        .map(|d| d.target_session_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let ctx = req.outbox(&actor);
    let cascade = cascade::end_sessions(
        &mut tx,
        &ctx,
        Roots::Sessions(&targets),
        Ending::Terminated,
        "delegation_revoked",
        Announce {
            edge_reason: "delegation_revoked",
            cause_edge: Some(&edge.id),
            already_revoked: &revoked,
        },
    )
    .await?;
    tx.commit().await?;
    co.outbox.wake();
    let revoked_edges = cascade.edges.len();
    Metrics::add(&co.metrics.edges_ended, revoked_edges);
    Metrics::add(&co.metrics.sessions_ended, cascade.sessions.len());
    Ok(Reply::Json(
        200,
        json!({
            "revoked_edges": revoked_edges,
            "affected_sessions": cascade.sessions.len(),
            "terminated_sessions": cascade.sessions.len(),
        }),
    ))
}

/// A page of edges the caller may see (an agent: edges its application issued or receives),
/// newest first. `status` filters: absent lists live edges, `all` every edge, else one of
/// `active`, `revoked`, `expired`.
async fn edge_page(
    co: &Coordinator,
    req: &CoordRequest,
    mut filter: EdgeFilter<'_>,
) -> Result<Reply, CoordError> {
    let page = req.page()?;
    match req.query("status") {
        None => filter.live_only = true,
        Some("all") => {}
        Some(status @ ("active" | "revoked" | "expired")) => filter.status = Some(status),
        Some(_) => {
            return Err(Problem::new(
                400,
                "invalid_query",
                "status must be active, revoked, expired or all",
            )
            .into());
        }
    }
    if !req.caller.is_admin() {
        filter.party = req.caller.client_id();
    }
    let mut tx = zone_snapshot(&co.pool, &req.zone).await?;
    let rows = edges::list(&mut tx, filter, &page).await?;
    tx.commit().await?;
    Ok(Reply::Json(
        200,
        control_http::strict::page_body(&rows, views::edge),
    ))
}

/// `GET /zones/{z}/delegations/active`: live edges.
pub async fn active(co: &Coordinator, req: &CoordRequest) -> Result<Reply, CoordError> {
    edge_page(co, req, EdgeFilter::default()).await
}

/// `GET /zones/{z}/delegations/inbound/{session}`: edges into the session.
pub async fn inbound(
    co: &Coordinator,
    req: &CoordRequest,
    session: &str,
) -> Result<Reply, CoordError> {
    edge_page(
        co,
        req,
        EdgeFilter {
            target: Some(session),
            ..EdgeFilter::default()
        },
    )
    .await
}

/// `GET /zones/{z}/delegations/outbound/{session}`: edges out of the session.
pub async fn outbound(
    co: &Coordinator,
    req: &CoordRequest,
    session: &str,
) -> Result<Reply, CoordError> {
    edge_page(
        co,
        req,
        EdgeFilter {
            source: Some(session),
            ..EdgeFilter::default()
        },
    )
    .await
}

/// `GET /zones/{z}/delegations/inbound/{session}/{id}`: `{id, status}` of a live edge into
/// the session, else 404 `delegation_not_found`.
pub async fn inbound_one(
    co: &Coordinator,
    req: &CoordRequest,
    session: &str,
    id: &str,
) -> Result<Reply, CoordError> {
    let mut tx = zone_snapshot(&co.pool, &req.zone).await?;
    let edge = edges::get(&mut tx, id).await?;
    tx.commit().await?;
    let edge = edge
        .filter(|e| e.target_session_id == session && e.is_live() && may_see(&req.caller, e))
        .ok_or_else(|| refuse(404, "delegation_not_found"))?;
    let mut answer = views::edge(&edge);
    if let Value::Object(map) = &mut answer {
        map.insert("status".to_owned(), json!(edge.status));
    }
    Ok(Reply::Json(200, answer))
}

/// `GET /zones/{z}/delegations/{id}/traverse` (admins): the edge's lineage, root first, as
/// a bare array.
pub async fn traverse(co: &Coordinator, req: &CoordRequest, id: &str) -> Result<Reply, CoordError> {
    require_admin(&req.caller)?;
    let mut tx = zone_snapshot(&co.pool, &req.zone).await?;
    let lineage = edges::lineage(&mut tx, id).await?;
    tx.commit().await?;
    if lineage.is_empty() {
        return Err(refuse(404, "delegation_not_found").into());
    }
    Ok(Reply::Json(
        200,
        Value::Array(lineage.iter().map(views::edge).collect()),
    ))
}

/// `GET /zones/{z}/delegations/{id}/impact` (admins): what revoking the edge would reach,
/// without changing anything.
pub async fn impact(co: &Coordinator, req: &CoordRequest, id: &str) -> Result<Reply, CoordError> {
    require_admin(&req.caller)?;
    let mut tx = zone_snapshot(&co.pool, &req.zone).await?;
    if edges::get(&mut tx, id).await?.is_none() {
        return Err(refuse(404, "delegation_not_found").into());
    }
    let walk: Vec<Downstream> = edges::downstream(&mut tx, id).await?;
    let targets: Vec<String> = walk.iter().map(|d| d.target_session_id.clone()).collect();
    let reached = sessions::subtrees(&mut tx, &targets).await?;
    tx.commit().await?;
    let records: BTreeSet<&str> = reached
        .iter()
        .filter_map(|s| s.subject_authority_record_id.as_deref())
        .collect();
    Ok(Reply::Json(
        200,
        json!({
            "edge_id": id,
            "affected_edges": walk.iter().map(|d| json!({
                "id": d.id,
                "source_session_id": d.source_session_id,
                "target_session_id": d.target_session_id,
                "depth": d.depth,
            })).collect::<Vec<_>>(),
            "affected_sessions": reached.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            "affected_authority_records": records,
        }),
    ))
}

fn require_admin(caller: &Caller) -> Result<(), Problem> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(refuse(403, "missing_scope"))
    }
}
