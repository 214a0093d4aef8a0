//! Steps 23–24: the zone's policy and the per-resource rate limit (step 25, the authorizer
//! plugins, is in `plugins`).

use std::ops::ControlFlow;

use control_model::{Denial, ErrorCode};
use control_policy::{Action, Context, DelegationEdge, PolicyInput, Principal, Resource};
use gateway_state::{PolicySlot, standalone::Standalone};
use http::Request;
use hyper::body::Incoming;

use super::{Authenticated, Gateway, Phase, Refusal, RequestCtx, Resolved};
use crate::{audit::Evaluated, error::GatewayError, redis_ops::RateVerdict};

impl Gateway {
    pub(super) async fn authorize(
        &self,
        ctx: &mut RequestCtx,
        auth: &Authenticated,
        resolved: &Resolved,
        req: &Request<Incoming>,
    ) -> Phase<()> {
        let binding = &resolved.binding;
        // Step 23: the "use" rule on the zone's bundle.
        let bundle = match &auth.zone.policy {
            PolicySlot::Ready(bundle) => bundle,
            PolicySlot::Failed(reason) => {
                return Err(GatewayError::PolicyEngine(format!(
                    "no loadable bundle: {reason}"
                )));
            }
        };
        let input = policy_input(ctx, auth, resolved, req, self.standalone.as_deref());
        let decision = match bundle.evaluate(&input) {
            Ok(decision) => decision,
            Err(error) => {
                ctx.audit.evaluated =
                    Some(Evaluated::failed(&error.to_string(), bundle.provenance()));
                return Err(GatewayError::PolicyEngine(error.to_string()));
            }
        };
        ctx.audit.evaluated = Some(Evaluated::from_decision(&decision, bundle.provenance()));
        if !decision.is_complete() {
            return Ok(ControlFlow::Break(Refusal::caused(
                Denial::new(
                    403,
                    ErrorCode::PolicyEvalFailed,
                    "policy evaluation incomplete",
                ),
                "policy_eval_incomplete",
            )));
        }
        if !decision.is_allow() {
            let description = match decision.deny_reason() {
                Some(reason) => format!("policy denied ({reason})"),
                None => "policy denied".to_owned(),
            };
            return Ok(ControlFlow::Break(Refusal::caused(
                Denial::forbidden(description),
                "policy_denied",
            )));
        }
        // Step 24: the per-resource rate limit, counted once the policy allowed.
        if let Some(limit) = &binding.rate_limit {
            let now_ms = u64::try_from(auth.now.timestamp_millis()).unwrap_or(0);
            let app = limit
                .per_application
                .then_some(auth.mandate.client_id.as_str());
            let verdict = self
                .counters
                .rate(&auth.zone.zone_id, &binding.resource_id, app, limit, now_ms)
                .await?;
            if let RateVerdict::Limited { retry_after } = verdict {
                return Ok(ControlFlow::Break(Refusal {
                    denial: Denial::new(
                        429,
                        ErrorCode::RateLimited,
                        "resource rate limit exceeded",
                    ),
                    retry_after: Some(retry_after),
                    cause: Some("rate_limited"),
                }));
            }
        }
        Ok(ControlFlow::Continue(()))
    }
}

/// The input the STS would build on a re-exchange (authority §4.3). Standalone: no session
/// registry, so `principal.labels` are the application's configured labels and
/// `lifecycle` is empty.
fn policy_input(
    ctx: &RequestCtx,
    auth: &Authenticated,
    resolved: &Resolved,
    req: &Request<Incoming>,
    standalone: Option<&Standalone>,
) -> PolicyInput {
    let mandate = &auth.mandate;
    let zone = &auth.zone;
    let mut principal = Principal::application(&mandate.client_id, &zone.zone_id);
    if let Some(app) = zone.applications.get(&mandate.client_id) {
        principal = principal.with_registration_method(&app.registration_method);
    }
    if let Some(session) = auth.revalidated.agent_session() {
        principal =
            principal.with_agent_session(&session.id, &session.lifecycle, session.labels.clone());
    }
    if let Some(standalone) = standalone {
        principal.labels = standalone
            .labels(&zone.zone_id, &mandate.client_id)
            .to_vec();
    }
    let binding = &resolved.binding;
    let mut context = Context::for_client(&mandate.client_id)
        .with_subject_claims(mandate.all.clone())
        .with_trace_id(&ctx.request_id)
        .with_requested_scopes(Vec::<String>::new())
        .with_challenge_resolved(false);
    if !auth.anchors.sid.is_empty() {
        context = context.with_session_id(&auth.anchors.sid);
    }
    if let Some(id) = &auth.anchors.agent_session_id {
        context = context.with_agent_session_id(id);
    }
    if let Some(id) = &auth.anchors.delegation_edge_id {
        context = context.with_delegation_edge_id(id);
    }
    let mut input = PolicyInput::new(
        principal,
        Resource::new(
            &binding.resource_id,
            &binding.identifier,
            binding.scopes.clone(),
        ),
        Action::gateway(req.method().as_str().to_ascii_uppercase(), req.uri().path()),
        context,
    );
    if !auth.anchors.sid.is_empty() {
        input = input.with_session(&auth.anchors.sid);
    }
    if let Some(proof) = auth.revalidated.proof() {
        input = input.with_delegation_edge(DelegationEdge::from_proof(proof));
    }
    input
}
