//! The request pipeline (style §3): admission, then phases named for what they establish,
//! each citing the steps of authority-and-policy.md §4.2 it covers. Denials are values
//! ([`Refusal`]); errors go to the one `rescue`. `finish` always runs, never awaits, and
//! emits the audit events through the slots reserved at admission.

mod authenticate;
mod authorize;
mod forward;
mod plugins;
mod prepare;
mod resolve;

use std::{net::SocketAddr, ops::ControlFlow, sync::Arc};

use bytes::Bytes;
use control_events::audit::{AuditEmitter, AuditSlot};
use control_model::{Denial, ErrorCode, authority::Revalidated};
use gateway_state::{Anchors, Binding, Snapshot, StateHandle, ZoneState};
use http::{HeaderValue, Request, Response, header};
use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;

use crate::{
    audit::AuditDraft,
    config::GatewayConfig,
    error::{GatewayError, rescue},
    guard::UpstreamGuard,
    mandate::Verified,
    metrics::Metrics,
    redis_ops::Counters,
    upstream::UpstreamClient,
};

/// The boxed error of bodies.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body the gateway sends.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A catalog denial and what travels with it.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) denial: Denial,
    /// `Retry-After` seconds (429).
    pub(crate) retry_after: Option<u64>,
    /// The audit cause (`resource_not_found`, …); `None` leaves the draft's.
    pub(crate) cause: Option<&'static str>,
}

impl From<Denial> for Refusal {
    fn from(denial: Denial) -> Self {
        Self {
            denial,
            retry_after: None,
            cause: None,
        }
    }
}

impl Refusal {
    fn caused(denial: Denial, cause: &'static str) -> Self {
        Self {
            denial,
            retry_after: None,
            cause: Some(cause),
        }
    }
}

/// Continue with a value for the next phase, or break with a denial.
pub(crate) type Phase<T> = Result<ControlFlow<Refusal, T>, GatewayError>;

/// Unwraps `Continue`, returns `Ok(Outcome::Denied(_))` on `Break`.
macro_rules! next {
    ($phase:expr) => {
        match $phase {
            ControlFlow::Continue(value) => value,
            ControlFlow::Break(refusal) => return Ok(Outcome::Denied(refusal)),
        }
    };
}

/// What a request came to.
pub(crate) enum Outcome {
    Forwarded(forward::Answered),
    Denied(Refusal),
}

/// The shared state of the role.
pub(crate) struct Gateway {
    pub(crate) config: GatewayConfig,
    pub(crate) state: Arc<StateHandle>,
    pub(crate) counters: Counters,
    pub(crate) audit: AuditEmitter,
    pub(crate) client: UpstreamClient,
    pub(crate) guard: UpstreamGuard,
    pub(crate) oauth: Arc<crate::oauth::OAuthTokens>,
    /// The standalone sidecar's configuration (`caracal gateway --config`); `None` in the
    /// Postgres mode. With it, step 11 refetches the JWKS URLs instead of rebuilding, step
    /// 13 uses the marks only, step 14 checks the configured applications, steps 16 and 17
    /// are not run, and `principal.labels` are the application's configured labels.
    pub(crate) standalone: Option<Arc<gateway_state::standalone::Standalone>>,
    pub(crate) metrics: Arc<Metrics>,
    /// Runs the resources' WebAssembly plugins (steps 25 and 31).
    pub(crate) plugins: gateway_plugin_host::PluginHost,
    /// Unix ms of the last forced key reload (step 11's 30 s cooldown).
    pub(crate) last_key_reload_ms: std::sync::atomic::AtomicI64,
}

/// Created at admission, carried through every phase, consumed by `finish`.
pub(crate) struct RequestCtx {
    pub(crate) request_id: String,
    /// Pinned once; no phase reads the swap handle again (step 11's forced key reload
    /// re-pins before anything else was read from it).
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) started: tokio::time::Instant,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) audit: AuditDraft,
    slots: Option<(AuditSlot, AuditSlot)>,
    metrics: Arc<Metrics>,
    /// The status answered; 499 while undecided (a dropped context is a cancelled client).
    pub(crate) status: u16,
}

impl RequestCtx {
    /// Completes the audit event and sends it through the reserved slots. Never awaits.
    pub(crate) fn finish(&mut self, status: u16) {
        self.status = status;
        let Some(slots) = self.slots.take() else {
            return;
        };
        let latency = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.metrics.record_status(status);
        let draft = std::mem::take(&mut self.audit);
        draft.emit(&self.request_id, status, latency, slots);
    }
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        // The client went away before an answer (hyper dropped the future) or while the
        // body streamed: the event is finished with the status recorded so far.
        if self.slots.is_some() {
            if self.status == 0 {
                self.audit.set("error_kind", "client_cancelled");
                self.finish(499);
            } else {
                let status = self.status;
                self.finish(status);
            }
        }
    }
}

/// What authentication established (steps 2–17).
pub(crate) struct Authenticated {
    pub(crate) mandate: Verified,
    pub(crate) zone: Arc<ZoneState>,
    pub(crate) anchors: Anchors,
    pub(crate) revalidated: Revalidated,
    pub(crate) now: chrono::DateTime<chrono::Utc>,
}

/// What resolution established (steps 18–22).
pub(crate) struct Resolved {
    pub(crate) binding: Arc<Binding>,
}

impl Gateway {
    /// Serves one request on port 8081 (operator routes are answered before this);
    /// `request_id` is the one the frame took from the request (wire-contract §1.3).
    pub(crate) async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        request_id: String,
        peer: Option<SocketAddr>,
    ) -> Response<ProxyBody> {
        let mut ctx = match self.admit(&request_id, peer) {
            Ok(ctx) => ctx,
            Err(error) => {
                self.metrics.record_status(503);
                return render(&rescue(&error).into(), &request_id);
            }
        };
        let outcome = self.run(&mut ctx, req).await;
        match outcome {
            Ok(Outcome::Forwarded(answered)) => self.respond(ctx, answered),
            Ok(Outcome::Denied(refusal)) => self.refuse(ctx, &refusal),
            Err(error) => {
                tracing::warn!(request_id = %ctx.request_id, %error, "gateway request failed");
                ctx.audit.cause = Some(error_kind(&error).to_owned());
                self.refuse(ctx, &rescue(&error).into())
            }
        }
    }

    /// Reserves the audit slots and pins the snapshot. No slot: 503 before any work.
    fn admit(
        &self,
        request_id: &str,
        peer: Option<SocketAddr>,
    ) -> Result<RequestCtx, GatewayError> {
        let first = self
            .audit
            .reserve()
            .map_err(|_full| GatewayError::AuditUnavailable)?;
        let second = self
            .audit
            .reserve()
            .map_err(|_full| GatewayError::AuditUnavailable)?;
        Ok(RequestCtx {
            request_id: request_id.to_owned(),
            snapshot: self.state.snapshot(),
            started: tokio::time::Instant::now(),
            peer,
            audit: AuditDraft::default(),
            slots: Some((first, second)),
            metrics: Arc::clone(&self.metrics),
            status: 0,
        })
    }

    async fn run(
        self: &Arc<Self>,
        ctx: &mut RequestCtx,
        req: Request<Incoming>,
    ) -> Result<Outcome, GatewayError> {
        next!(self.check_authority_fresh()); // step 1
        let auth = next!(self.authenticate(ctx, &req).await?); // steps 2-17
        let resolved = next!(self.resolve(ctx, &auth, &req)); // steps 18-22
        next!(self.authorize(ctx, &auth, &resolved, &req).await?); // steps 23-24
        let binding = Arc::clone(&resolved.binding);
        let (req, body_sha256) = next!(self.take_body(&binding, req).await?);
        let call = (!binding.plugins.is_empty()).then(|| {
            plugins::plugin_call(ctx, &auth, &resolved, &req, body_sha256, self.labels(&auth))
        });
        if let Some(call) = &call {
            next!(self.run_authorizers(ctx, &binding, call).await?); // step 25
        }
        let outbound = next!(
            self.prepare_upstream(ctx, &auth, &resolved, req, call.as_ref())
                .await?
        ); // steps 26-31
        self.forward(ctx, &auth, outbound).await // step 32
    }

    /// The principal's labels as policy sees them: the agent session's, or in standalone
    /// mode the application's configured labels.
    fn labels(&self, auth: &Authenticated) -> Vec<String> {
        match &self.standalone {
            Some(standalone) => standalone
                .labels(&auth.zone.zone_id, &auth.mandate.client_id)
                .to_vec(),
            None => auth
                .revalidated
                .agent_session()
                .map(|s| s.labels.clone())
                .unwrap_or_default(),
        }
    }

    /// Step 1: the authority view is fresh and a snapshot is loaded.
    fn check_authority_fresh(&self) -> ControlFlow<Refusal, ()> {
        if !self.state.is_loaded() || !self.state.view().is_fresh() {
            self.metrics.denial("stale_authority");
            return ControlFlow::Break(Denial::unavailable("revocation state unavailable").into());
        }
        ControlFlow::Continue(())
    }

    /// Renders a refusal and finishes the context.
    fn refuse(&self, mut ctx: RequestCtx, refusal: &Refusal) -> Response<ProxyBody> {
        if let Some(cause) = refusal.cause {
            ctx.audit.cause = Some(cause.to_owned());
        } else if ctx.audit.cause.is_none() {
            ctx.audit.cause = Some(refusal.denial.code.as_str().to_owned());
        }
        self.metrics
            .denial(refusal.cause.unwrap_or(refusal.denial.code.as_str()));
        tracing::info!(
            request_id = %ctx.request_id,
            status = refusal.denial.status,
            error = refusal.denial.code.as_str(),
            description = %refusal.denial.description,
            "gateway request refused"
        );
        let response = render(refusal, &ctx.request_id);
        ctx.finish(refusal.denial.status);
        response
    }
}

/// The audit cause of an error.
fn error_kind(error: &GatewayError) -> &'static str {
    match error {
        GatewayError::ReplayStoreUnavailable(_) => "replay_store_unavailable",
        GatewayError::RateLimiterUnavailable(_) => "rate_limiter_unavailable",
        GatewayError::AuthorityUnavailable(_) => "authority_unavailable",
        GatewayError::PolicyEngine(_) => "policy_eval_failed",
        GatewayError::PluginFailed { .. } => "plugin_failed",
        GatewayError::MandateSigning(_) => "resource_mandate_failed",
        GatewayError::RequestBuild(_) => "request_build_failed",
        GatewayError::AuditUnavailable => "audit_unavailable",
    }
}

/// The §1.2 body with `X-Request-Id` (and `Retry-After`, `WWW-Authenticate`).
pub(crate) fn render(refusal: &Refusal, request_id: &str) -> Response<ProxyBody> {
    let denial = &refusal.denial;
    let body = serde_json::to_vec(&denial.body(request_id)).unwrap_or_default();
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = http::StatusCode::from_u16(denial.status)
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", value);
    }
    if let Some(seconds) = refusal.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if denial.status == 401 && denial.code == ErrorCode::InvalidToken {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
    }
    response
}

/// A complete body.
pub(crate) fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}
