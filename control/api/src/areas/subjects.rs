//! `POST /v1/zones/{z}/subjects/revoke`: the subject kill switch (authority §2.5).
//!
//! One transaction revokes every active authority record of the subject (any type), in
//! batches of 1000; terminates the active or suspended agent sessions bound to the subject's
//! records (reason `subject_revoked`) and their descendants (`parent_terminated`); revokes every
//! active edge touching a terminated session and bumps the zone's graph epoch once; and
//! revokes the subject's provider grants. It enqueues, in the same transaction:
//!
//! | Stream | Message | Dedupe key |
//! | --- | --- | --- |
//! | `caracal.sessions.revoke` | per record: `session_id` | `revoke:record:<id>` |
//! | `caracal.sessions.revoke` | per session: `agent_session_id` (+ `session_id` by the terminate rule) | `revoke:agent:<id>:v<status_version>` |
//! | `caracal.sessions.revoke` | per edge: `delegation_edge_id` | `revoke:edge:<id>` |
//! | `caracal.agents.lifecycle` | per session: `terminate` | `terminate:<id>:v<status_version>` |
//! | `caracal.delegations.invalidate` | per edge: `edge_revoke` with the new `epoch` | `edge_revoke:<id>` |
//!
//! Stream `reason`s are `subject_revoked` (and `parent_terminated` for descendants); the
//! caller's `reason`, if any, is stored as the records' `revoked_reason` and in the admin
//! audit row. A second call finds nothing active and changes nothing: it is idempotent.

use control_events::cascade::{self, Announce, Cascade};
use control_store::{
    admin::subjects::{self, RecordSelector},
    cascade::{Ending, Roots},
};
use http::Method;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Reply, grants::REVOKE_BATCH, open_zone, to_value};
use crate::{
    audit::{self, Action},
    auth::Need,
    error::{ApiError, Problem},
    request::AdminRequest,
    routes::{Answer, RequestBody, Route, Scope, schema_of, unknown_op},
    state::Api,
};

/// The stream reason of the kill switch.
const SUBJECT_REVOKED: &str = "subject_revoked";
/// The longest caller reason, in characters.
const MAX_REASON: usize = 500;

/// Body of `POST …/subjects/revoke`: `subject_id` is 1 to 512 bytes; `reason` (≤ 500
/// characters) is recorded, not published.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeSubject {
    subject_id: String,
    reason: Option<String>,
}

/// What the kill switch changed (all zero when nothing was active).
#[derive(Debug, Serialize, JsonSchema)]
pub struct RevokeSummary {
    /// Zone.
    pub zone_id: String,
    /// The subject.
    pub subject_id: String,
    /// Authority records revoked.
    pub revoked_authority_records: usize,
    /// Agent sessions terminated (bound sessions and their descendants).
    pub terminated_sessions: usize,
    /// Delegation edges revoked.
    pub revoked_edges: usize,
    /// Provider grants revoked.
    pub revoked_provider_grants: u64,
    /// The zone's graph epoch after the change, when edges were revoked.
    pub epoch: Option<i64>,
}

/// `POST …/subjects/revoke`.
pub async fn revoke(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    let body: RevokeSubject = req.json()?;
    super::grants::check_subject("subject_id", &body.subject_id)?;
    let reason = body.reason.filter(|r| !r.is_empty());
    if reason
        .as_deref()
        .is_some_and(|r| r.chars().count() > MAX_REASON || r.chars().any(char::is_control))
    {
        return Err(Problem::invalid_body(
            "reason",
            "must be at most 500 characters without control characters",
        )
        .into());
    }
    let stored_reason = reason.as_deref().unwrap_or(SUBJECT_REVOKED);
    let actor = req.principal.id.as_str();
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    let z = zone_id.as_str();

    let ctx = cascade::Context {
        producer: cascade::Producer::API,
        zone: z,
        actor,
        request_id: Some(&req.request_id),
    };

    // Records, in batches.
    let mut records: Vec<String> = Vec::new();
    loop {
        let batch = subjects::revoke_records(
            &mut tx,
            RecordSelector {
                subject_id: &body.subject_id,
                user_only: false,
            },
            stored_reason,
            actor,
            REVOKE_BATCH,
        )
        .await?;
        cascade::announce_revoked_records(&mut tx, &ctx, &batch, SUBJECT_REVOKED, None).await?;
        let full = i64::try_from(batch.len()).unwrap_or(i64::MAX) >= REVOKE_BATCH;
        records.extend(batch);
        if !full {
            break;
        }
    }

    // Agent sessions bound to the subject's records, their descendants, the edges touching
    // them (one epoch bump).
    let Cascade {
        sessions,
        edges,
        epoch,
    } = cascade::end_sessions(
        &mut tx,
        &ctx,
        Roots::BoundToSubject(&body.subject_id),
        Ending::Terminated,
        SUBJECT_REVOKED,
        Announce {
            edge_reason: SUBJECT_REVOKED,
            cause_edge: None,
            already_revoked: &[],
        },
    )
    .await?;

    let provider_grants =
        subjects::revoke_provider_grants(&mut tx, &body.subject_id, actor).await?;
    let summary = RevokeSummary {
        zone_id: z.to_owned(),
        subject_id: body.subject_id.clone(),
        revoked_authority_records: records.len(),
        terminated_sessions: sessions.len(),
        revoked_edges: edges.len(),
        revoked_provider_grants: provider_grants,
        epoch,
    };
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(
            z,
            "subject",
            &body.subject_id,
            200,
            json!({
                "reason": reason,
                "revoked_authority_records": summary.revoked_authority_records,
                "terminated_sessions": summary.terminated_sessions,
                "revoked_edges": summary.revoked_edges,
                "revoked_provider_grants": summary.revoked_provider_grants,
            }),
        ),
    )
    .await?;
    if !records.is_empty() || !sessions.is_empty() {
        api.outbox.wake();
    }
    Ok(Reply::Json(200, to_value(&summary)?))
}

/// The area's operations.
pub const ROUTES: &[Route] = &[Route {
    method: Method::POST,
    path: "/zones/{zone_id}/subjects/revoke",
    op: "subjects.revoke",
    summary: "Kill switch: revoke a subject's records, sessions, edges and provider grants",
    need: Need::Write,
    scope: Scope::Zone,
    body: RequestBody::Json(schema_of::<RevokeSubject>),
    answer: Answer::Json(200, schema_of::<RevokeSummary>),
    query: &[],
    refusals: &[(404, "zone_not_found")],
}];

/// Runs operation `op` with its path parameters.
pub async fn handle(
    api: &Api,
    req: &AdminRequest,
    op: &str,
    p: &[&str],
) -> Result<Reply, ApiError> {
    match (op, p) {
        ("subjects.revoke", [z]) => revoke(api, req, z).await,
        _ => Err(unknown_op(op)),
    }
}
