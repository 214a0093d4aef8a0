//! `POST /oauth/2/token` (authority §3): the token exchange, one phase per step group.
//!
//! The order of the checks is the spec's; the first failure answers. A denial is an
//! [`Answer::Denied`] value built from the catalog; `Err(StsError)` means something broke
//! and is mapped by `error::rescue`. Every decision becomes an audit event through the
//! shared emitter, and an exchange that cannot be audited is refused (settled point 4).

mod client_auth;
pub(crate) mod subject;
mod view;

use chrono::{DateTime, Utc};
use control_events::audit::{AuditDecision, AuditEvent};
use control_model::{
    Denial, ErrorCode, MandateClaims, MandateUse, SubType, ZoneId,
    authority::{DelegationProof, Revalidated, Revalidation, revalidate},
};
use control_policy::{Action, Bundle, Context, PolicyInput, Principal, Resource};
use control_store::{
    applications::ApplicationRow,
    approvals::{self, ApprovalRow, NewHold},
    authority_records::{self, AuthorityRecordRow, NewAuthorityRecord},
    delegation,
    resources::{self, ResourceRow},
    zone::{zone_snapshot, zone_tx},
};
use serde_json::{Value, json};

use crate::{
    approvals::{BindingParts, binding_hash, hold_denial_body, merge},
    error::StsError,
    form::{SubjectTokenType, TTL_CAP_NO_SUBJECT, TTL_CAP_WITH_SUBJECT, TokenRequest},
    state::Sts,
};
use client_auth::ClientAuth;
use subject::SubjectToken;
use view::PrefetchedView;

/// How an exchange ended.
#[derive(Debug)]
pub(crate) enum Answer {
    /// 200 with the token body.
    Token(Value),
    /// A catalog answer.
    Denied(Denial),
    /// 401 `interaction_required` with the hold body (wire-contract §2.10).
    Hold(Value),
}

/// Ends the exchange with a catalog answer.
macro_rules! deny {
    ($denial:expr) => {
        return Ok(Answer::Denied($denial))
    };
}

/// The mandate TTL when none (or 0) is requested.
const DEFAULT_TTL_SECONDS: i64 = 900;
/// The lifecycle scope of bootstrap mandates.
const LIFECYCLE_SCOPE: &str = "agent:lifecycle";

/// Runs the exchange for one parsed request.
pub(crate) async fn exchange(
    sts: &Sts,
    request_id: &str,
    req: TokenRequest,
) -> Result<Answer, StsError> {
    // Steps 4 and 5: limiter, client authentication, zone.
    let (application, zone) = match client_auth::authenticate(sts, &req).await? {
        ClientAuth::Authenticated { application, zone } => (application, zone),
        ClientAuth::Denied(denial) => deny!(denial),
    };
    // Step 6: federation.
    if matches!(req.subject_token, Some((_, SubjectTokenType::IdToken))) {
        return crate::federation::exchange(sts, request_id, &req, &application, &zone).await;
    }
    // Step 7: resources and trusted time.
    if req.resources.is_empty() {
        deny!(Denial::bad_request("at least one resource is required"));
    }
    let Ok(mut snapshot) = zone_snapshot(&sts.pool, &zone).await else {
        deny!(Denial::unavailable("trusted time unavailable"));
    };
    let Ok(now) = delegation::now(&mut snapshot).await else {
        deny!(Denial::unavailable("trusted time unavailable"));
    };

    // Step 8: the subject token.
    let subject = match &req.subject_token {
        Some((token, SubjectTokenType::AccessToken)) => {
            match subject::verify(sts, &zone, token, now).await? {
                Ok(subject) => Some(subject),
                Err(denial) => deny!(denial),
            }
        }
        _ => None,
    };
    if let Some(subject) = &subject
        && let Err(denial) =
            check_subject_record(&mut snapshot, &req, subject, &application, &zone, now).await?
    {
        deny!(denial);
    }
    let agent_session_id = subject
        .as_ref()
        .and_then(|s| s.agent_session_id.clone())
        .or_else(|| req.agent_session_id.clone());
    let delegation_edge_id = subject
        .as_ref()
        .and_then(|s| s.delegation_edge_id.clone())
        .or_else(|| req.delegation_edge_id.clone());
    let bound_record = subject
        .as_ref()
        .map(|s| s.sid.clone())
        .or_else(|| req.session_id.clone());
    let requested_scopes = req.requested_scopes();
    let requested_ttl = if req.ttl_seconds == 0 {
        DEFAULT_TTL_SECONDS
    } else {
        req.ttl_seconds
    };

    // Step 11: references (§2.3) against one consistent snapshot.
    let view = PrefetchedView::load(
        &mut snapshot,
        zone.as_str(),
        bound_record.as_deref(),
        agent_session_id.as_deref(),
        delegation_edge_id.as_deref(),
    )
    .await?;
    let revalidated = match revalidate(
        &Revalidation {
            zone_id: zone.as_str(),
            caller_application_id: &application.id,
            bound_record_id: bound_record.as_deref(),
            agent_session_id: agent_session_id.as_deref(),
            delegation_edge_id: delegation_edge_id.as_deref(),
            requested_scopes: &requested_scopes,
            requested_ttl: req.ttl_seconds,
            subject_token: subject.is_some(),
            now,
        },
        &view,
    ) {
        Ok(revalidated) => revalidated,
        Err(description) => deny!(Denial::forbidden(description)),
    };
    let resource_rows = resources::by_identifiers(&mut snapshot, &req.resources).await?;
    snapshot.commit().await?;

    // Step 9: context; the pinned bundle serves every evaluation of this exchange.
    let bundle = sts.bundles.pinned(&zone).await?;
    let ctx = Exchange {
        sts,
        request_id,
        req: &req,
        application: &application,
        zone: &zone,
        subject: subject.as_ref(),
        revalidated: &revalidated,
        bound_record: bound_record.as_deref(),
        requested_scopes: &requested_scopes,
        bundle: &bundle,
        now,
        resolved: false,
    };

    // The approval binding of this exchange (§6.2), over the pinned bundle's provenance.
    let principal = ctx.principal().to_owned();
    let provenance = bundle.provenance();
    let binding = binding_hash(&BindingParts {
        resources: &req.resources,
        scopes: &requested_scopes,
        principal: &principal,
        authority_record: bound_record.as_deref().unwrap_or(""),
        session: revalidated.agent_session().map_or("", |s| s.id.as_str()),
        delegation: revalidated.proof().map_or("", |p| p.edge.id.as_str()),
        application: &application.id,
        policy_set_version: &provenance.policy_set_version_id,
        policy_manifest: &provenance.manifest_sha256,
        contract_version: &provenance.contract_version,
        contract_sha: &provenance.contract_sha256,
    });

    // Step 10: a presented approval.
    let mut persist = Persist::Plain;
    if let Some(approval_id) = &req.approval_id {
        let mut tx = zone_tx(&sts.pool, &zone).await?;
        let row = approvals::find(&mut tx, approval_id).await?;
        tx.commit().await?;
        let row = row.filter(|row| {
            row.challenge_type == "human_approval"
                && row.principal_id == principal
                && row.session_id == bound_record.as_deref().unwrap_or("")
                && row.resource_set_hash.as_slice() == binding.as_slice()
        });
        let Some(row) = row else {
            ctx.audit_status(None, AuditDecision::Deny, "approval_invalid", json!({}))?;
            deny!(Denial::unauthorized(
                "approval not found or bindings do not match"
            ));
        };
        match row.state(now) {
            "consumed" => match reissuable(sts, &zone, &row, now).await? {
                Some(record) => persist = Persist::Reissue(Box::new(record)),
                None => {
                    return ctx.refuse_hold(
                        "approval_already_consumed",
                        &row.id,
                        approval_consumed(),
                    );
                }
            },
            "rejected" => {
                return ctx.refuse_hold("approval_rejected", &row.id, approval_rejected());
            }
            "expired" => {
                return ctx.refuse_hold(
                    "approval_expired",
                    &row.id,
                    Denial::unauthorized("approval expired"),
                );
            }
            "approved" => persist = Persist::Approved(Box::new(row)),
            _ => return Ok(Answer::Hold(hold_denial_body(&row, request_id, now))),
        }
    }
    let resolved = !matches!(persist, Persist::Plain);
    let ctx = Exchange { resolved, ..ctx };

    // Step 12: the per-resource loop.
    let mut granted: Vec<&ResourceRow> = Vec::new();
    let mut first_reason: Option<String> = None;
    let mut control_key = false;
    let mut tiers = Vec::new();
    for identifier in &req.resources {
        let Some(resource) = resource_rows.iter().find(|r| &r.identifier == identifier) else {
            ctx.audit_status(
                Some(identifier),
                AuditDecision::Deny,
                "resource_not_found",
                json!({}),
            )?;
            continue;
        };
        let mintable = |scope: &String| {
            resource.scopes.contains(scope)
                || (scope == LIFECYCLE_SCOPE && resource.upstream_url.is_some())
        };
        if !requested_scopes.iter().all(mintable) {
            ctx.audit_status(
                Some(identifier),
                AuditDecision::Deny,
                "scope_mismatch",
                json!({}),
            )?;
            continue;
        }
        if let Some(proof) = revalidated.proof()
            && !proof.allows_resource(&resource.id, &resource.identifier)
        {
            ctx.audit_status(
                Some(identifier),
                AuditDecision::Deny,
                "resource_outside_delegation",
                json!({}),
            )?;
            continue;
        }
        match sts
            .redis
            .mint_allowed(
                zone.as_str(),
                &resource.id,
                &application.id,
                sts.config.mint_limit_per_minute,
            )
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                ctx.audit_status(
                    Some(identifier),
                    AuditDecision::Deny,
                    "rate_limited",
                    json!({}),
                )?;
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "mint limiter unavailable");
                deny!(Denial::unavailable("rate limit unavailable"));
            }
        }
        if resource.identifier == sts.config.control_audience {
            if ctx.control_key_allows() {
                ctx.audit_decision(
                    Some(identifier),
                    AuditDecision::Allow,
                    "complete",
                    json!([{"policy": "control-key"}]),
                    json!([]),
                )?;
                control_key = true;
                granted.push(resource);
                continue;
            }
            ctx.audit_status(
                Some(identifier),
                AuditDecision::Deny,
                "control_resource_requires_control_key",
                json!({}),
            )?;
            deny!(Denial::forbidden("control resource requires a control key"));
        }
        let input = ctx.policy_input(resource);
        let decision = match bundle.evaluate(&input) {
            Ok(decision) => decision,
            Err(error) => {
                ctx.audit_decision(
                    Some(identifier),
                    AuditDecision::Deny,
                    "policy_eval_failed",
                    json!([]),
                    json!([{"error": error.to_string()}]),
                )?;
                deny!(Denial::new(
                    503,
                    ErrorCode::PolicyEvalFailed,
                    "policy evaluation unavailable"
                ));
            }
        };
        let allowed = decision.is_allow();
        ctx.audit_decision(
            Some(identifier),
            if allowed {
                AuditDecision::Allow
            } else {
                AuditDecision::Deny
            },
            &decision.evaluation_status,
            json!(
                decision
                    .determining_policies
                    .iter()
                    .map(|p| json!({"policy": p}))
                    .collect::<Vec<_>>()
            ),
            Value::Array(decision.diagnostics.clone()),
        )?;
        if !decision.is_complete() {
            deny!(Denial::new(
                403,
                ErrorCode::PolicyEvalFailed,
                "policy evaluation incomplete"
            ));
        }
        if allowed {
            if !resolved {
                tiers.extend(decision.approval_tiers());
            }
            granted.push(resource);
        } else if first_reason.is_none() {
            first_reason = decision.deny_reason().map(str::to_owned);
        }
    }

    // Step 13: the approval gate.
    if !resolved && !tiers.is_empty() {
        let Some(merged) = merge(&tiers) else {
            deny!(Denial::forbidden(
                "approval requires separate operator and subject decisions"
            ));
        };
        let hold_id = uuid::Uuid::new_v4().to_string();
        let metadata = ctx.hold_metadata(&provenance_json(&bundle));
        let anchor = subject_anchor(subject.as_ref(), &revalidated);
        let mut tx = zone_tx(&sts.pool, &zone).await?;
        let (row, created) = approvals::find_or_create(
            &mut tx,
            &NewHold {
                id: &hold_id,
                zone_id: zone.as_str(),
                session_id: bound_record.as_deref().unwrap_or(""),
                principal_id: &principal,
                application_id: &application.id,
                resource_set_hash: &binding,
                tier: &merged.tier,
                approver_class: merged.approver,
                privacy_mode: merged.privacy,
                subject_anchor: &anchor,
                ttl_seconds: merged.ttl_seconds,
                metadata: &metadata,
            },
        )
        .await?;
        tx.commit().await?;
        match row.state(now) {
            "approved" => persist = Persist::Approved(Box::new(row)),
            "rejected" => {
                return ctx.refuse_hold("approval_rejected", &row.id, approval_rejected());
            }
            _ => {
                if created {
                    ctx.audit_approval("step_up_issued", &row, &binding)?;
                }
                return Ok(Answer::Hold(hold_denial_body(&row, request_id, now)));
            }
        }
    }
    // Step 14: nothing granted.
    if granted.is_empty() {
        ctx.audit_status(
            None,
            AuditDecision::Deny,
            "exchange_denied",
            json!({"requested": req.resources}),
        )?;
        deny!(Denial::forbidden(match first_reason {
            Some(reason) => format!("policy denied ({reason})"),
            None => "policy denied".to_owned(),
        }));
    }
    // Step 15: resource mandates are only minted behind the gateway.
    if subject.is_some() {
        deny!(Denial::forbidden("resource exchanges must use the Gateway"));
    }
    mint(
        &ctx,
        &granted,
        control_key,
        requested_ttl,
        persist,
        &binding,
    )
    .await
}

/// Step 8's authority-record checks for a presented subject token.
async fn check_subject_record(
    conn: &mut sqlx::PgConnection,
    req: &TokenRequest,
    subject: &SubjectToken,
    application: &ApplicationRow,
    zone: &ZoneId,
    now: DateTime<Utc>,
) -> Result<Result<(), Denial>, StsError> {
    if req.session_id.as_deref().is_some_and(|s| s != subject.sid) {
        return Ok(Err(Denial::forbidden("authority record mismatch")));
    }
    let record = delegation::record(conn, &subject.sid).await?;
    let Some(record) = record.filter(|r| r.is_live(zone.as_str(), now)) else {
        return Ok(Err(Denial::forbidden(
            "authority record inactive or expired",
        )));
    };
    if record.subject_id != subject.sub {
        return Ok(Err(Denial::forbidden("authority record subject mismatch")));
    }
    if subject.client_id != application.id {
        return Ok(Err(Denial::forbidden("authority record client mismatch")));
    }
    if let (Some(form), Some(claim)) = (&req.agent_session_id, &subject.agent_session_id)
        && form != claim
    {
        return Ok(Err(Denial::forbidden("Session mismatch")));
    }
    if let (Some(form), Some(claim)) = (&req.delegation_edge_id, &subject.delegation_edge_id)
        && form != claim
    {
        return Ok(Err(Denial::forbidden("delegation edge mismatch")));
    }
    Ok(Ok(()))
}

/// How step 18 persists the authority record.
enum Persist {
    /// A plain INSERT.
    Plain,
    /// Consume this approved hold and insert in one statement.
    Approved(Box<ApprovalRow>),
    /// Re-issue for the record an earlier consumption created (§6.6); no insert.
    Reissue(Box<AuthorityRecordRow>),
}

/// The re-issue window of §6.6.
const REISSUE_WINDOW_SECONDS: i64 = 120;

/// A consumed hold may be re-issued within 2 minutes of its consumption while the record
/// the consumption created is still active.
async fn reissuable(
    sts: &Sts,
    zone: &ZoneId,
    row: &ApprovalRow,
    now: DateTime<Utc>,
) -> Result<Option<AuthorityRecordRow>, StsError> {
    let (Some(consumed_at), Some(record_id)) =
        (row.consumed_at, row.consumed_authority_record_id.as_deref())
    else {
        return Ok(None);
    };
    if (now - consumed_at).num_seconds() > REISSUE_WINDOW_SECONDS {
        return Ok(None);
    }
    let mut tx = zone_tx(&sts.pool, zone).await?;
    let record = authority_records::find(&mut tx, record_id).await?;
    tx.commit().await?;
    Ok(record.filter(|r| r.is_live(now)))
}

/// The pinned bundle's provenance, as stored with a hold.
fn provenance_json(bundle: &Bundle) -> Value {
    let p = bundle.provenance();
    json!({
        "policy_set_version_id": p.policy_set_version_id,
        "manifest_sha256": p.manifest_sha256,
        "decision_contract_version": p.contract_version,
        "decision_contract_sha256": p.contract_sha256,
    })
}

/// `subject_anchor` (§6.2): the `sub` of a user-typed subject token, else the subject of
/// the agent session's user-typed authority record, else empty.
fn subject_anchor(subject: Option<&SubjectToken>, revalidated: &Revalidated) -> String {
    if let Some(subject) = subject.filter(|s| s.sub_type == "user") {
        return subject.sub.clone();
    }
    revalidated
        .agent_session()
        .and_then(|s| s.subject_record.as_ref())
        .filter(|r| r.session_type == "user")
        .map(|r| r.subject_id.clone())
        .unwrap_or_default()
}

/// Everything the per-resource phases read.
struct Exchange<'a> {
    sts: &'a Sts,
    request_id: &'a str,
    req: &'a TokenRequest,
    application: &'a ApplicationRow,
    zone: &'a ZoneId,
    subject: Option<&'a SubjectToken>,
    revalidated: &'a Revalidated,
    bound_record: Option<&'a str>,
    requested_scopes: &'a [String],
    bundle: &'a Bundle,
    now: DateTime<Utc>,
    /// An approval resolved this exchange (§3 step 10).
    resolved: bool,
}

/// Step 17 (§3): a fresh UUIDv7 `jti` registered as `audit:jti:<jti>` for `ttl` seconds.
/// A collision is audited (`jti_collision`) and answers 500; an unavailable registry 503.
/// Shared by every mint path (the exchange and federation).
pub(crate) async fn register_jti(
    sts: &Sts,
    zone: &ZoneId,
    request_id: &str,
    application_id: &str,
    ttl: i64,
) -> Result<Result<String, Denial>, StsError> {
    let jti = uuid::Uuid::now_v7().to_string();
    let ttl = std::time::Duration::from_secs(u64::try_from(ttl).unwrap_or(1));
    match sts.redis.register_jti(&jti, request_id, ttl).await {
        Ok(true) => Ok(Ok(jti)),
        Ok(false) => {
            let event = AuditEvent::new(zone.as_str(), "jti_collision")
                .request_id(request_id)
                .decision(AuditDecision::Deny)
                .metadata_json(json!({"jti": jti, "application_id": application_id}))
                .occurred_at(Utc::now());
            sts.audit(event)?;
            Ok(Err(Denial::internal("token issuance failed")))
        }
        Err(error) => {
            tracing::warn!(%error, "jti registry unavailable");
            Ok(Err(Denial::unavailable("token registry unavailable")))
        }
    }
}

/// 409 `approval_consumed`: the approval was already spent.
fn approval_consumed() -> Denial {
    Denial::new(
        409,
        ErrorCode::ApprovalConsumed,
        "approval already consumed",
    )
}

/// 403 `access_denied`: the approver rejected the hold.
fn approval_rejected() -> Denial {
    Denial::forbidden("approval was rejected")
}

impl Exchange<'_> {
    /// The approval principal (§3 step 9): the subject token's `sub`, else the caller.
    fn principal(&self) -> &str {
        self.subject
            .map_or(self.application.id.as_str(), |s| s.sub.as_str())
    }

    /// Refuses because of a hold's state: one audit event naming the hold, then the answer.
    fn refuse_hold(
        &self,
        status: &str,
        challenge_id: &str,
        denial: Denial,
    ) -> Result<Answer, StsError> {
        self.audit_status(
            None,
            AuditDecision::Deny,
            status,
            json!({ "challenge_id": challenge_id }),
        )?;
        Ok(Answer::Denied(denial))
    }

    /// A control key (step 12.6): the application has `control:invoke`, every scope starts
    /// with `control:` and is listed as a `control:scope:<s>` trait, and `control:expires`
    /// has not passed.
    fn control_key_allows(&self) -> bool {
        let traits = &self.application.traits;
        let invoke = traits.iter().any(|t| t == "control:invoke");
        let scopes_ok = !self.requested_scopes.is_empty()
            && self.requested_scopes.iter().all(|s| {
                s.starts_with("control:")
                    && traits
                        .iter()
                        .any(|t| t.strip_prefix("control:scope:") == Some(s))
            });
        let not_expired = traits
            .iter()
            .filter_map(|t| t.strip_prefix("control:expires:"))
            .all(|at| DateTime::parse_from_rfc3339(at).is_ok_and(|at| at > self.now));
        invoke && scopes_ok && not_expired && self.subject.is_none()
    }

    /// `control:max-ttl:<n>`, the smallest when several are set.
    fn control_max_ttl(&self) -> Option<i64> {
        self.application
            .traits
            .iter()
            .filter_map(|t| t.strip_prefix("control:max-ttl:"))
            .filter_map(|n| n.parse::<i64>().ok())
            .min()
    }

    /// The policy input (§5.3) for one resource.
    fn policy_input(&self, resource: &ResourceRow) -> PolicyInput {
        let mut principal = Principal::application(&self.application.id, self.zone.as_str())
            .with_registration_method(&self.application.registration_method);
        if let Some(session) = self.revalidated.agent_session() {
            principal = principal.with_agent_session(
                &session.id,
                &session.lifecycle,
                session.labels.clone(),
            );
        }
        let mut context = Context::for_client(&self.application.id)
            .with_requested_scopes(self.requested_scopes.iter().cloned())
            .with_trace_id(self.request_id);
        if let Some(subject) = self.subject {
            context = context.with_subject_claims(subject.claims.clone());
        }
        if let Some(record) = self.bound_record {
            context = context.with_session_id(record);
        }
        if let Some(session) = self.revalidated.agent_session() {
            context = context.with_agent_session_id(&session.id);
        }
        if let Some(proof) = self.revalidated.proof() {
            context = context.with_delegation_edge_id(&proof.edge.id);
        }
        context.challenge_resolved = self.resolved;
        let mut input = PolicyInput::new(
            principal,
            Resource::new(&resource.id, &resource.identifier, resource.scopes.clone()),
            Action::token_exchange(),
            context,
        );
        if let Some(record) = self.bound_record {
            input = input.with_session(record);
        }
        if let Some(proof) = self.revalidated.proof() {
            input = input.with_delegation_edge(edge_input(proof));
        }
        input
    }

    fn metadata(&self, resource: Option<&str>) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("application_id".into(), json!(self.application.id));
        m.insert("application_name".into(), json!(self.application.name));
        m.insert(
            "application_registration_method".into(),
            json!(self.application.registration_method),
        );
        if let Some(resource) = resource {
            m.insert("resource".into(), json!(resource));
        }
        m.insert("requested_scopes".into(), json!(self.requested_scopes));
        if let Some(record) = self.bound_record {
            m.insert("session_id".into(), json!(record));
        }
        m.insert(
            "subject_kind".into(),
            json!(if self.subject.is_some_and(|s| s.sub_type == "user") {
                "user"
            } else {
                "application"
            }),
        );
        if let Some(session) = self.revalidated.agent_session() {
            m.insert("agent_session_id".into(), json!(session.id));
            m.insert("agent_lifecycle".into(), json!(session.lifecycle));
            m.insert("agent_labels".into(), json!(session.labels));
            m.insert("agent_depth".into(), json!(session.depth));
            if let Some(parent) = &session.parent_id {
                m.insert("agent_parent_id".into(), json!(parent));
            }
        }
        if let Some(proof) = self.revalidated.proof() {
            m.insert("delegation_edge_id".into(), json!(proof.edge.id));
            m.insert("delegation_chain".into(), json!(proof.chain));
            m.insert("delegation_hop_count".into(), json!(proof.path.len()));
            m.insert("delegation_graph_epoch".into(), json!(proof.epoch));
        }
        let provenance = self.bundle.provenance();
        m.insert(
            "decision_contract_version".into(),
            json!(provenance.contract_version),
        );
        m.insert(
            "decision_contract_sha256".into(),
            json!(provenance.contract_sha256),
        );
        Value::Object(m)
    }

    /// A `token_exchange` event with an STS-native status.
    fn audit_status(
        &self,
        resource: Option<&str>,
        decision: AuditDecision,
        status: &str,
        extra: Value,
    ) -> Result<(), StsError> {
        let mut metadata = self.metadata(resource);
        if let (Value::Object(m), Value::Object(extra)) = (&mut metadata, extra) {
            m.extend(extra);
        }
        self.emit(decision, status, json!([]), json!([]), metadata)
    }

    /// The metadata stored with a hold (§6.1).
    fn hold_metadata(&self, provenance: &Value) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("requested_scopes".into(), json!(self.requested_scopes));
        m.insert("resources".into(), json!(self.req.resources));
        if let Some(session) = self.revalidated.agent_session() {
            m.insert("agent_session_id".into(), json!(session.id));
            m.insert("agent_labels".into(), json!(session.labels));
        }
        if let Some(proof) = self.revalidated.proof() {
            m.insert("delegation_edge_id".into(), json!(proof.edge.id));
        }
        if let Value::Object(p) = provenance {
            m.extend(p.clone());
        }
        Value::Object(m)
    }

    /// A `step_up_*` event (§3 "Approval events").
    fn audit_approval(
        &self,
        event_type: &str,
        row: &ApprovalRow,
        binding: &[u8],
    ) -> Result<(), StsError> {
        let mut metadata = serde_json::Map::new();
        metadata.insert("challenge_id".into(), json!(row.id));
        metadata.insert("tier".into(), json!(row.tier));
        metadata.insert("approver_class".into(), json!(row.approver_class));
        metadata.insert("privacy_mode".into(), json!(row.privacy_mode));
        metadata.insert("binding".into(), json!(hex::encode(binding)));
        metadata.insert("expires_at".into(), json!(row.expires_at.to_rfc3339()));
        metadata.insert("subject_anchor".into(), json!(row.subject_anchor));
        metadata.insert("application_id".into(), json!(self.application.id));
        if let Some(record) = self.bound_record {
            metadata.insert("session_id".into(), json!(record));
        }
        if let Some(session) = self.revalidated.agent_session() {
            metadata.insert("agent_session_id".into(), json!(session.id));
            metadata.insert("agent_labels".into(), json!(session.labels));
        }
        if let Some(proof) = self.revalidated.proof() {
            metadata.insert("delegation_edge_id".into(), json!(proof.edge.id));
        }
        let provenance = self.bundle.provenance();
        metadata.insert(
            "decision_contract_version".into(),
            json!(provenance.contract_version),
        );
        metadata.insert(
            "decision_contract_sha256".into(),
            json!(provenance.contract_sha256),
        );
        let event = AuditEvent::new(self.zone.as_str(), event_type)
            .request_id(self.request_id)
            .policy_set_id(provenance.policy_set_id.clone())
            .policy_set_version_id(provenance.policy_set_version_id.clone())
            .manifest_sha(provenance.manifest_sha256.clone())
            .metadata_json(Value::Object(metadata))
            .occurred_at(Utc::now());
        self.sts.audit(event)
    }

    /// A `token_exchange` event carrying a policy decision.
    fn audit_decision(
        &self,
        resource: Option<&str>,
        decision: AuditDecision,
        status: &str,
        determining: Value,
        diagnostics: Value,
    ) -> Result<(), StsError> {
        self.emit(
            decision,
            status,
            determining,
            diagnostics,
            self.metadata(resource),
        )
    }

    fn emit(
        &self,
        decision: AuditDecision,
        status: &str,
        determining: Value,
        diagnostics: Value,
        metadata: Value,
    ) -> Result<(), StsError> {
        let provenance = self.bundle.provenance();
        let event = AuditEvent::new(self.zone.as_str(), "token_exchange")
            .request_id(self.request_id)
            .decision(decision)
            .evaluation_status(status)
            .policy_set_id(provenance.policy_set_id.clone())
            .policy_set_version_id(provenance.policy_set_version_id.clone())
            .manifest_sha(provenance.manifest_sha256.clone())
            .determining_policies_json(determining)
            .diagnostics_json(diagnostics)
            .metadata_json(metadata)
            .occurred_at(Utc::now());
        self.sts.audit(event)
    }
}

/// The policy input's `delegation_edge` (§5.3).
fn edge_input(proof: &DelegationProof) -> control_policy::DelegationEdge {
    control_policy::DelegationEdge::from_proof(proof)
}

/// Steps 16–21: TTL and use class, the JTI registry, the authority record, the signature.
async fn mint(
    ctx: &Exchange<'_>,
    granted: &[&ResourceRow],
    control_key: bool,
    requested_ttl: i64,
    persist: Persist,
    binding: &[u8],
) -> Result<Answer, StsError> {
    let sts = ctx.sts;
    let cap = if ctx.subject.is_some() {
        TTL_CAP_WITH_SUBJECT
    } else {
        TTL_CAP_NO_SUBJECT
    };
    let mut ttl = requested_ttl.min(cap);
    if let Some(proof) = ctx.revalidated.proof() {
        ttl = ttl.min((proof.edge.expires_at - ctx.now).num_seconds());
        if let Some(limit) = proof.constraints.ttl_seconds {
            ttl = ttl.min(limit);
        }
        match proof.constraints.expires_at() {
            Ok(Some(at)) => ttl = ttl.min((at - ctx.now).num_seconds()),
            Ok(None) => {}
            Err(cause) => deny!(Denial::forbidden(cause)),
        }
        if ttl <= 0 {
            deny!(Denial::forbidden(
                "delegation expires before the mandate could be used"
            ));
        }
    }
    if control_key && let Some(max) = ctx.control_max_ttl() {
        ttl = ttl.min(max);
    }
    // A re-issue is bounded by the remaining life of the record it re-issues.
    if let Persist::Reissue(record) = &persist {
        ttl = ttl.min((record.expires_at - ctx.now).num_seconds());
        if ttl <= 0 {
            deny!(approval_consumed());
        }
    }
    if ttl <= 0 {
        deny!(Denial::forbidden("token lifetime would not be positive"));
    }
    let use_ = if control_key {
        MandateUse::Resource
    } else if ctx.revalidated.proof().is_some() {
        MandateUse::Gateway
    } else {
        MandateUse::Session
    };

    // The zone key (created on first use) is resolved before the registry and the record,
    // so a key this replica cannot use leaves no orphan record behind.
    let key = sts.keys.signer(ctx.zone, ctx.now, ctx.request_id).await?;
    key.ensure_usable()?;

    // Step 17: the JTI registry, before anything is persisted.
    let jti = match register_jti(sts, ctx.zone, ctx.request_id, &ctx.application.id, ttl).await? {
        Ok(jti) => jti,
        Err(denial) => deny!(denial),
    };

    // Step 18: the authority record.
    let (sid, root_sid) = match &persist {
        Persist::Reissue(record) => (record.id.clone(), record.root_id.clone()),
        _ => {
            let sid = uuid::Uuid::now_v7().to_string();
            (sid.clone(), sid)
        }
    };
    let iat = ctx.now.timestamp();
    let exp = iat + ttl;
    let expires_at = DateTime::<Utc>::from_timestamp(exp, 0).unwrap_or(ctx.now);
    let mut target: Vec<String> = granted.iter().map(|r| r.identifier.clone()).collect();
    target.sort();
    let proof = ctx.revalidated.proof();
    let claims = MandateClaims {
        iss: sts.config.issuer_url.clone(),
        sub: ctx.application.id.clone(),
        aud: if use_ == MandateUse::Resource {
            target.clone()
        } else {
            vec![sts.config.issuer_url.clone()]
        },
        exp,
        iat,
        jti,
        zone_id: ctx.zone.as_str().to_owned(),
        client_id: ctx.application.id.clone(),
        scope: ctx.req.scope.clone().filter(|s| !s.trim().is_empty()),
        sid: sid.clone(),
        root_sid: root_sid.clone(),
        use_,
        sub_type: SubType::Application,
        target: target.clone(),
        agent_session_id: ctx.revalidated.agent_session().map(|s| s.id.clone()),
        delegation_edge_id: proof.map(|p| p.edge.id.clone()),
        source_session_id: proof.map(|p| p.edge.source_session_id.clone()),
        target_session_id: proof.map(|p| p.edge.target_session_id.clone()),
        delegation_path: proof.map(|p| p.path.clone()).unwrap_or_default(),
        delegation_chain: proof.map(|p| p.chain.clone()).unwrap_or_default(),
        hop_count: proof.map_or(0, |p| u32::try_from(p.path.len()).unwrap_or(0)),
        delegation_graph_epoch: proof.map_or(0, |p| p.epoch),
    };
    let snapshot = claim_snapshot(&claims);
    let record = NewAuthorityRecord {
        id: &sid,
        zone_id: ctx.zone.as_str(),
        session_type: "application",
        subject_id: &ctx.application.id,
        application_id: &ctx.application.id,
        parent_id: None,
        root_id: &root_sid,
        expires_at,
        authenticated_at: ctx.now,
        claims_json: &snapshot,
        created_by: "system:sts",
    };
    match &persist {
        Persist::Plain => {
            let mut tx = zone_tx(&sts.pool, ctx.zone).await?;
            if let Err(error) = authority_records::insert(&mut tx, &record).await {
                tracing::error!(%error, "authority record insert failed");
                deny!(Denial::internal("token issuance failed"));
            }
            tx.commit().await?;
        }
        Persist::Approved(hold) => {
            let mut tx = zone_tx(&sts.pool, ctx.zone).await?;
            let consumed =
                approvals::consume_and_record(&mut tx, &hold.id, ctx.principal(), binding, &record)
                    .await?;
            tx.commit().await?;
            if !consumed {
                return ctx.refuse_hold("approval_already_consumed", &hold.id, approval_consumed());
            }
            ctx.audit_approval("step_up_consumed", hold.as_ref(), binding)?;
        }
        Persist::Reissue(_) => {
            let event = AuditEvent::new(ctx.zone.as_str(), "step_up_consumed")
                .request_id(ctx.request_id)
                .metadata_json(json!({"reissued": true, "session_id": sid, "application_id": ctx.application.id}))
                .occurred_at(Utc::now());
            sts.audit(event)?;
        }
    }

    // Step 19: sign with the zone key chosen before anything was persisted.
    let body = serde_json::to_vec(&claims).map_err(|e| StsError::Internal(e.to_string()))?;
    let token = key.sign(&body)?;

    // Step 21: respond.
    let mut response = serde_json::Map::new();
    response.insert("access_token".into(), json!(token));
    response.insert("token_type".into(), json!("Bearer"));
    response.insert("expires_in".into(), json!(exp - iat));
    if let Some(scope) = &claims.scope {
        response.insert("scope".into(), json!(scope));
    }
    response.insert(
        "issued_token_type".into(),
        json!(crate::form::ACCESS_TOKEN_TYPE),
    );
    if !target.is_empty() {
        response.insert("target_resources".into(), json!(target));
    }
    Ok(Answer::Token(Value::Object(response)))
}

/// The non-secret claim snapshot stored with the authority record.
fn claim_snapshot(claims: &MandateClaims) -> Value {
    let mut value = serde_json::to_value(claims).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.remove("jti");
    }
    value
}
