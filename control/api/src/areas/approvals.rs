//! `/v1/zones/{z}/approvals`: approval holds as operators see and decide them
//! (wire-contract §6.5, authority §6.5).
//!
//! Deciding needs an `approve` token or the bootstrap token (`Need::Decide`). A decision
//! applies only to holds of class `operator` or `any` (else 403 `subject_approval_required`)
//! that are pending (else 409 `approval_not_decidable`, with the current state in
//! `details.state`). The transition is the STS's own guarded update
//! (`control_store::approvals`), so the two planes cannot both win; the decision, its
//! `pg_notify('caracal_approval_decided')`, the `step_up_decided` audit event (through the
//! outbox) and the admin audit row commit together. The decider is `admin:<token id>`.

use chrono::{DateTime, Utc};
use control_events::{
    audit::approval::{Decider, decided_event},
    outbox::AUDIT_PAYLOAD_EVENT,
    streams::AUDIT_EVENTS,
};
use control_store::{
    admin::approvals::{self, ApprovalFilter, ApprovalView, STATES},
    approvals::{self as holds, OperatorDecision},
    outbox::{self, OutboxMessage, PRODUCER_API},
};
use http::Method;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Reply, open_zone, to_value};
use crate::{
    audit::{self, Action},
    auth::Need,
    error::{ApiError, Problem},
    request::AdminRequest,
    routes::{Answer, Param, RequestBody, Route, Scope, schema_of, unknown_op},
    state::Api,
};

/// The longest reason, in characters (the column's CHECK).
const MAX_REASON: usize = 500;

/// Body of `POST …/approvals/{id}/approve|reject` (optional; a bodyless POST decides
/// without a reason): `reason` is at most 500 characters; an empty one is no reason.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Decide {
    reason: Option<String>,
}

fn query_time(req: &AdminRequest, name: &str) -> Result<Option<DateTime<Utc>>, Problem> {
    match req.filter(name) {
        None => Ok(None),
        Some(raw) => DateTime::parse_from_rfc3339(raw)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_unparsable| {
                Problem::new(
                    400,
                    "invalid_query",
                    format!("{name} must be an RFC 3339 time"),
                )
            }),
    }
}

/// `GET …/approvals`.
pub async fn list(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    req.only_query(&["state", "tier", "principal", "since", "until"])?;
    let state = req.filter("state");
    if state.is_some_and(|s| !STATES.contains(&s)) {
        return Err(Problem::new(
            400,
            "invalid_query",
            "state must be pending, approved, rejected, expired or consumed",
        )
        .into());
    }
    let filter = ApprovalFilter {
        state,
        tier: req.filter("tier"),
        principal: req.filter("principal"),
        since: query_time(req, "since")?,
        until: query_time(req, "until")?,
    };
    super::zone_page(api, zone, &req.page()?, async |c, p| {
        approvals::list(c, &filter, p).await
    })
    .await
}

/// `GET …/approvals/{id}`.
pub async fn get(api: &Api, zone: &str, id: &str) -> Result<Reply, ApiError> {
    super::zone_row(api, zone, "approval", async |c| approvals::get(c, id).await).await
}

fn not_decidable(state: &str) -> Problem {
    Problem::new(409, "approval_not_decidable", "the approval is not pending")
        .with_details(json!({ "state": state }))
}

/// `POST …/approvals/{id}/approve` (`approve`) or `…/reject`.
pub async fn decide(
    api: &Api,
    req: &AdminRequest,
    zone: &str,
    id: &str,
    approve: bool,
) -> Result<Reply, ApiError> {
    let body: Decide = req.json()?;
    let reason = body.reason.filter(|r| !r.is_empty());
    if reason
        .as_deref()
        .is_some_and(|r| r.chars().count() > MAX_REASON)
    {
        return Err(Problem::invalid_body("reason", "must be at most 500 characters").into());
    }
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    let hold = approvals::get(&mut tx, id)
        .await?
        .filter(|h| h.approval_type == "human_approval")
        .ok_or_else(|| Problem::not_found("approval"))?;
    if hold.approver_class != "operator" && hold.approver_class != "any" {
        return Err(Problem::new(
            403,
            "subject_approval_required",
            "only the subject may decide this approval",
        )
        .into());
    }
    if hold.state != "pending" {
        return Err(not_decidable(&hold.state).into());
    }
    let decided_by = format!("admin:{}", req.principal.id);
    let decided = holds::decide_by_operator(
        &mut tx,
        &OperatorDecision {
            id,
            zone_id: zone_id.as_str(),
            approve,
            decided_by: &decided_by,
            reason: reason.as_deref(),
        },
    )
    .await?;
    let Some((row, metadata)) = decided else {
        // Decided, consumed or expired since it was read: answer with the state now.
        let state = approvals::get(&mut tx, id)
            .await?
            .map_or_else(|| "expired".to_owned(), |h| h.state);
        return Err(not_decidable(&state).into());
    };
    let event = decided_event(
        &row,
        &metadata,
        approve,
        Decider::Operator {
            decided_by: &decided_by,
        },
        &req.request_id,
    );
    let data: Value = serde_json::from_str(&event.to_data())
        .map_err(|e| ApiError::Internal(format!("audit event serialisation: {e}")))?;
    let outbox_id = uuid::Uuid::now_v7().to_string();
    let dedupe = format!("audit:{}", event.id());
    let mut payload = Map::new();
    payload.insert(AUDIT_PAYLOAD_EVENT.to_owned(), data);
    outbox::enqueue(
        &mut tx,
        &OutboxMessage {
            id: &outbox_id,
            producer: PRODUCER_API,
            zone_id: Some(zone_id.as_str()),
            topic: AUDIT_EVENTS,
            dedupe_key: Some(&dedupe),
            payload: &Value::Object(payload),
            request_id: Some(&req.request_id),
        },
    )
    .await?;
    let view = approvals::get(&mut tx, id)
        .await?
        .ok_or_else(|| Problem::not_found("approval"))?;
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(
            zone_id.as_str(),
            "approval",
            id,
            200,
            json!({
                "decision": if approve { "approved" } else { "rejected" },
                "reason": reason,
            }),
        ),
    )
    .await?;
    api.outbox.wake();
    Ok(Reply::Json(200, to_value(&view)?))
}

/// The refusals of both decision routes.
const DECISION_REFUSALS: &[(u16, &str)] = &[
    (403, "subject_approval_required"),
    (404, "zone_not_found"),
    (404, "approval_not_found"),
    (409, "approval_not_decidable"),
];

/// The area's operations.
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/approvals",
        op: "approvals.list",
        summary: "List approval holds",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Page(schema_of::<ApprovalView>),
        query: &[
            Param {
                name: "state",
                description: "pending, approved, rejected, expired or consumed",
            },
            Param {
                name: "tier",
                description: "exact tier label",
            },
            Param {
                name: "principal",
                description: "exact principal id",
            },
            Param {
                name: "since",
                description: "RFC 3339; created at or after",
            },
            Param {
                name: "until",
                description: "RFC 3339; created before",
            },
        ],
        refusals: &[(404, "zone_not_found")],
    },
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/approvals/{approval_id}",
        op: "approvals.get",
        summary: "Read an approval hold",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Json(200, schema_of::<ApprovalView>),
        query: &[],
        refusals: &[(404, "zone_not_found"), (404, "approval_not_found")],
    },
    Route {
        method: Method::POST,
        path: "/zones/{zone_id}/approvals/{approval_id}/approve",
        op: "approvals.approve",
        summary: "Approve a pending hold (approve capability or bootstrap)",
        need: Need::Decide,
        scope: Scope::Zone,
        body: RequestBody::Json(schema_of::<Decide>),
        answer: Answer::Json(200, schema_of::<ApprovalView>),
        query: &[],
        refusals: DECISION_REFUSALS,
    },
    Route {
        method: Method::POST,
        path: "/zones/{zone_id}/approvals/{approval_id}/reject",
        op: "approvals.reject",
        summary: "Reject a pending hold (approve capability or bootstrap)",
        need: Need::Decide,
        scope: Scope::Zone,
        body: RequestBody::Json(schema_of::<Decide>),
        answer: Answer::Json(200, schema_of::<ApprovalView>),
        query: &[],
        refusals: DECISION_REFUSALS,
    },
];

/// Runs operation `op` with its path parameters.
pub async fn handle(
    api: &Api,
    req: &AdminRequest,
    op: &str,
    p: &[&str],
) -> Result<Reply, ApiError> {
    match (op, p) {
        ("approvals.list", [z]) => list(api, req, z).await,
        ("approvals.get", [z, id]) => get(api, z, id).await,
        ("approvals.approve", [z, id]) => decide(api, req, z, id, true).await,
        ("approvals.reject", [z, id]) => decide(api, req, z, id, false).await,
        _ => Err(unknown_op(op)),
    }
}
