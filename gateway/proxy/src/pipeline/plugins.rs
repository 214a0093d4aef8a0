//! Steps 25 and 31's WebAssembly plugins: the call a plugin sees, the body read for a
//! plugin that asked for its digest, authorizers in their declared order (the first deny
//! wins), injectors (their operations checked by the host, applied by `prepare`).
//!
//! Every failure fails closed: a plugin that could not be loaded, trapped, overran its
//! deadline or memory limit, returned an error or output the host refused is a
//! [`GatewayError::PluginFailed`] (503 `plugin_failed`), and the audit event's `plugins`
//! member names the plugin and the cause.

use std::{ops::ControlFlow, sync::Arc};

use bytes::Bytes;
use control_model::{Denial, ErrorCode};
use gateway_plugin_host::{
    Authorization, Call, CredentialSet, FailureCause, Header, Mandate, PluginFailure, Principal,
    RequestHead, Resource,
    ops::{CheckedOp, InjectRules},
};
use gateway_state::{Binding, Credential, KeyPlacement, PluginHook, PluginRef, PluginState};
use http::Request;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::{Authenticated, Gateway, Phase, Refusal, RequestCtx, Resolved};
use crate::{error::GatewayError, headers, metrics::PluginOutcome, upstream::CallerBody};

impl Gateway {
    /// Reads the whole body when a bound plugin asked for its digest (bounded by
    /// `MAX_REQUEST_BYTES` and `READ_TIMEOUT`, like a forwarded body); otherwise the body
    /// keeps streaming. Returns the request and the digest, if one was taken.
    pub(super) async fn take_body(
        &self,
        binding: &Binding,
        req: Request<Incoming>,
    ) -> Phase<(Request<CallerBody>, Option<Vec<u8>>)> {
        if !binding.plugins.iter().any(PluginRef::needs_body_sha256) {
            return Ok(ControlFlow::Continue((
                req.map(CallerBody::Streaming),
                None,
            )));
        }
        let limits = &self.config.limits;
        let (parts, body) = req.into_parts();
        let limit = usize::try_from(limits.max_request_bytes).unwrap_or(usize::MAX);
        let read = tokio::time::timeout(limits.read_timeout, Limited::new(body, limit).collect());
        let refuse = |status: u16, code: ErrorCode, description: &'static str, cause| {
            Ok(ControlFlow::Break(Refusal::caused(
                Denial::new(status, code, description),
                cause,
            )))
        };
        let bytes: Bytes = match read.await {
            Err(_elapsed) => {
                return refuse(
                    408,
                    ErrorCode::InternalError,
                    "request body read timeout",
                    "request_timeout",
                );
            }
            Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
                return refuse(
                    413,
                    ErrorCode::PayloadTooLarge,
                    "request too large",
                    "payload_too_large",
                );
            }
            Ok(Err(_broken)) => {
                return refuse(
                    400,
                    ErrorCode::InvalidToken,
                    "malformed request body",
                    "request_body_invalid",
                );
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        let digest = Sha256::digest(&bytes).to_vec();
        Ok(ControlFlow::Continue((
            Request::from_parts(parts, CallerBody::Buffered(Some(bytes))),
            Some(digest),
        )))
    }

    /// Step 25: the resource's authorizers, in their declared order.
    pub(super) async fn run_authorizers(
        &self,
        ctx: &mut RequestCtx,
        binding: &Binding,
        call: &Call,
    ) -> Phase<()> {
        for plugin in binding
            .plugins
            .iter()
            .filter(|p| p.hook == PluginHook::Authorizer)
        {
            let compiled = self.ready(ctx, plugin)?;
            let call = for_binding(call, plugin);
            match self.plugins.authorize(compiled, &call, plugin.limits).await {
                Ok(Authorization::Allow { attributes }) => {
                    self.metrics.plugin(PluginOutcome::Allowed);
                    ctx.audit.push_plugin(json!({
                        "plugin": plugin.name,
                        "plugin_id": plugin.plugin_id,
                        "hook": "authorizer",
                        "outcome": "allow",
                        "attributes": attribute_map(attributes),
                    }));
                }
                Ok(Authorization::Deny { reason, attributes }) => {
                    self.metrics.plugin(PluginOutcome::Denied);
                    // Settled point 7: the client sees the plugin's name and its reason.
                    let description = format!("denied by plugin {}: {reason}", plugin.name);
                    ctx.audit.push_plugin(json!({
                        "plugin": plugin.name,
                        "plugin_id": plugin.plugin_id,
                        "hook": "authorizer",
                        "outcome": "deny",
                        "reason": reason,
                        "attributes": attribute_map(attributes),
                    }));
                    return Ok(ControlFlow::Break(Refusal::caused(
                        Denial::forbidden(description),
                        "plugin_denied",
                    )));
                }
                Err(failure) => return Err(self.failed(ctx, plugin, failure)),
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Step 31's injectors, in their declared order: each one's operations, checked.
    pub(super) async fn run_injectors(
        &self,
        ctx: &mut RequestCtx,
        binding: &Binding,
        call: &Call,
        credentials: &Arc<CredentialSet>,
        rules: &InjectRules,
    ) -> Result<Vec<CheckedOp>, GatewayError> {
        let mut all = Vec::new();
        for plugin in binding
            .plugins
            .iter()
            .filter(|p| p.hook == PluginHook::Injector)
        {
            let compiled = self.ready(ctx, plugin)?;
            let call = for_binding(call, plugin);
            match self
                .plugins
                .inject(
                    compiled,
                    &call,
                    Arc::clone(credentials),
                    rules,
                    plugin.limits,
                )
                .await
            {
                Ok(ops) => {
                    self.metrics.plugin(PluginOutcome::Injected);
                    ctx.audit.push_plugin(json!({
                        "plugin": plugin.name,
                        "plugin_id": plugin.plugin_id,
                        "hook": "injector",
                        "outcome": "injected",
                        "operations": ops.len(),
                    }));
                    all.extend(ops);
                }
                Err(failure) => return Err(self.failed(ctx, plugin, failure)),
            }
        }
        Ok(all)
    }

    /// The compiled plugin, or the failure of a binding that cannot run.
    fn ready<'a>(
        &self,
        ctx: &mut RequestCtx,
        plugin: &'a PluginRef,
    ) -> Result<&'a gateway_plugin_host::CompiledPlugin, GatewayError> {
        match &plugin.state {
            PluginState::Ready {
                plugin: compiled, ..
            } => Ok(compiled),
            PluginState::Failed(cause) => Err(self.failed(
                ctx,
                plugin,
                PluginFailure::new(FailureCause::Unavailable, cause.to_string()),
            )),
        }
    }

    /// Records a failed call (audit, metrics) and turns it into the error that answers 503.
    fn failed(
        &self,
        ctx: &mut RequestCtx,
        plugin: &PluginRef,
        failure: PluginFailure,
    ) -> GatewayError {
        self.metrics.plugin(PluginOutcome::Failed(failure.cause));
        ctx.audit.push_plugin(json!({
            "plugin": plugin.name,
            "plugin_id": plugin.plugin_id,
            "hook": plugin.hook.as_str(),
            "outcome": "failed",
            "cause": failure.cause.as_str(),
            "detail": failure.detail,
        }));
        GatewayError::PluginFailed {
            plugin: plugin.name.clone(),
            cause: failure.to_string(),
        }
    }
}

/// The call every plugin of a request sees (its `config` is set per binding): the request
/// head without what the gateway strips, the principal, the mandate's claims, the resource.
pub(super) fn plugin_call(
    ctx: &RequestCtx,
    auth: &Authenticated,
    resolved: &Resolved,
    req: &Request<CallerBody>,
    body_sha256: Option<Vec<u8>>,
    labels: Vec<String>,
) -> Call {
    let mut visible = req.headers().clone();
    headers::sanitize_request(&mut visible);
    let request_headers = visible
        .iter()
        .filter_map(|(name, value)| {
            value.to_str().ok().map(|value| Header {
                name: name.as_str().to_owned(),
                value: value.to_owned(),
            })
        })
        .collect();
    let mandate = &auth.mandate;
    let zone = &auth.zone;
    let session = auth.revalidated.agent_session();
    let binding = &resolved.binding;
    let (path, query) = upstream_path_and_query(binding, req);
    Call {
        request_id: ctx.request_id.clone(),
        now_unix_ms: auth.now.timestamp_millis(),
        request: RequestHead {
            method: req.method().as_str().to_ascii_uppercase(),
            path,
            query,
            headers: request_headers,
            body_sha256,
        },
        principal: Principal {
            application_id: mandate.client_id.clone(),
            zone_id: zone.zone_id.clone(),
            registration_method: zone
                .applications
                .get(&mandate.client_id)
                .map(|app| app.registration_method.clone())
                .unwrap_or_default(),
            agent_session_id: session.map(|s| s.id.clone()),
            lifecycle: session.map(|s| s.lifecycle.clone()),
            labels,
        },
        mandate: Mandate {
            subject: mandate.sub.clone(),
            session_id: mandate.sid.clone().unwrap_or_default(),
            scopes: mandate
                .scope
                .as_deref()
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            delegation_edge_id: mandate.delegation_edge_id.clone(),
            hop_count: mandate
                .all
                .get("hop_count")
                .and_then(serde_json::Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            token_id: mandate.jti.clone().unwrap_or_default(),
            issued_at: mandate.iat.map_or(0, |iat| iat as i64),
            expires_at: mandate.exp as i64,
        },
        resource: Resource {
            id: binding.resource_id.clone(),
            identifier: binding.identifier.clone(),
            upstream_url: binding
                .upstream
                .as_ref()
                .map(|u| u.as_str().to_owned())
                .unwrap_or_default(),
            scopes: binding.scopes.clone(),
            auth_mode: binding.provider.auth_mode().to_owned(),
        },
        config: String::new(),
    }
}

/// The path and query as the upstream will receive them (`request-head.path` in
/// `wit/gateway.wit`): joined to the resource's upstream URL exactly as step 31 joins them,
/// without the provider's query credential parameter. Without a usable upstream (step 26 or
/// 31 refuses the request later), the request's own.
fn upstream_path_and_query(
    binding: &Binding,
    req: &Request<CallerBody>,
) -> (String, Option<String>) {
    let (path, query) = (req.uri().path(), req.uri().query());
    let drop_param = match &binding.provider.credential {
        Credential::ApiKey {
            placement: KeyPlacement::Query { param },
            ..
        } => Some(param.as_str()),
        _ => None,
    };
    match binding
        .upstream
        .as_ref()
        .map(|upstream| headers::outbound_uri(upstream, path, query, drop_param, None))
    {
        Some(Ok(uri)) => (uri.path().to_owned(), uri.query().map(str::to_owned)),
        None | Some(Err(_)) => (path.to_owned(), query.map(str::to_owned)),
    }
}

/// The call with one binding's config.
fn for_binding(call: &Call, plugin: &PluginRef) -> Call {
    let mut call = call.clone();
    plugin.config.as_ref().clone_into(&mut call.config);
    call
}

fn attribute_map(attributes: Vec<(String, String)>) -> serde_json::Map<String, serde_json::Value> {
    attributes
        .into_iter()
        .map(|(key, value)| (key, serde_json::Value::String(value)))
        .collect()
}
