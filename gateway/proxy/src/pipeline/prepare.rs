//! Steps 26–31: where the request goes, with which credential, built from what the caller
//! sent minus everything it may not decide.

use std::ops::ControlFlow;

use control_model::{Denial, ErrorCode};
use gateway_state::{Credential, KeyPlacement};
use http::{HeaderName, HeaderValue, Request, header};
use hyper::body::Incoming;

use super::{Authenticated, Gateway, Refusal, RequestCtx, Resolved};
use crate::{error::GatewayError, headers, mandate};

/// A request ready for dispatch (step 32).
pub(crate) struct Outbound {
    pub(crate) request: Request<Incoming>,
}

impl Gateway {
    pub(super) async fn prepare_upstream(
        &self,
        ctx: &mut RequestCtx,
        auth: &Authenticated,
        resolved: &Resolved,
        req: Request<Incoming>,
    ) -> Result<ControlFlow<Refusal, Outbound>, GatewayError> {
        let binding = &resolved.binding;
        let provider = &binding.provider;
        // Step 26: an upstream.
        let Some(upstream) = binding.upstream.as_ref() else {
            return Ok(ControlFlow::Break(Refusal::caused(
                Denial::forbidden("resource upstream not configured"),
                "upstream_not_configured",
            )));
        };
        let host = upstream.host_str().unwrap_or_default().to_ascii_lowercase();
        ctx.audit.set("upstream_host", host.clone());
        // Step 27: the upstream guard (re-checked at dial by the resolver).
        if let Err(reason) = self.guard.check_url(upstream) {
            ctx.audit.set("guard", reason);
            return Ok(ControlFlow::Break(Refusal::caused(
                Denial::new(502, ErrorCode::InternalError, "upstream not addressable"),
                "upstream_not_addressable",
            )));
        }
        // Step 28: the credential may go to this host. For client credentials the list
        // restricts the token endpoint instead (authority §7.1), checked when fetching.
        let oauth = matches!(provider.credential, Credential::OAuthClientCredentials(_));
        if !oauth
            && !provider.allowed_token_hosts.is_empty()
            && !provider.allowed_token_hosts.contains(&host)
        {
            return Ok(ControlFlow::Break(Refusal::caused(
                Denial::new(
                    502,
                    ErrorCode::InternalError,
                    "provider credential not allowed for upstream host",
                ),
                "credential_host_not_allowed",
            )));
        }
        // Step 29: the credential material.
        let unavailable = |reason: &str| {
            Ok(ControlFlow::Break(Refusal::caused(
                Denial::new(
                    502,
                    ErrorCode::HttpRequestFailed,
                    format!(
                        "upstream credential for resource {} is unavailable: {reason}",
                        binding.identifier
                    ),
                ),
                "provider_credential_unavailable",
            )))
        };
        let access_token = match &provider.credential {
            Credential::Unavailable(reason) => return unavailable(reason),
            Credential::OAuthClientCredentials(client) => {
                match self
                    .oauth
                    .token(&provider.id, client, &provider.allowed_token_hosts)
                    .await
                {
                    Ok(token) => Some(token),
                    Err(reason) => return unavailable(&reason.0),
                }
            }
            _ => None,
        };
        // Step 30: the resource mandate, when one is needed.
        let needs_mandate = matches!(provider.credential, Credential::CaracalMandate)
            || provider.forward_caracal_identity;
        let resource_mandate = if needs_mandate {
            let signer = auth.zone.signer.as_ref().ok_or_else(|| {
                GatewayError::MandateSigning("the zone has no usable signing key".into())
            })?;
            let claims = mandate::resource_claims(
                &auth.mandate,
                &binding.identifier,
                auth.revalidated.proof(),
                auth.now,
            );
            let bytes = serde_json::to_vec(&claims)
                .map_err(|e| GatewayError::MandateSigning(e.to_string()))?;
            let jwt = signer
                .key
                .sign_jwt(&signer.kid, &bytes)
                .map_err(|e| GatewayError::MandateSigning(e.to_string()))?;
            ctx.audit.set("resource_mandate_jti", claims.jti);
            Some(jwt)
        } else {
            None
        };
        // Step 31: the outbound request.
        if let Some(plugin) = binding.plugins.iter().find(|p| p.hook == "injector") {
            return Err(GatewayError::PluginFailed {
                plugin: plugin.name.clone(),
                cause: "the plugin host is not available".to_owned(),
            });
        }
        let (mut parts, body) = req.into_parts();
        let inbound_host = parts.headers.get(header::HOST).cloned();
        let inbound_trace = parts.headers.get("traceparent").cloned();
        let inbound_xff = parts.headers.get("x-forwarded-for").cloned();
        headers::sanitize_request(&mut parts.headers);
        let build_failed = |what: &str| GatewayError::RequestBuild(what.to_owned());
        let (drop_param, add) = match &provider.credential {
            Credential::ApiKey {
                placement: KeyPlacement::Query { param },
                key,
            } => (Some(param.as_str()), Some((param.as_str(), key.expose()))),
            _ => (None, None),
        };
        let uri = headers::outbound_uri(
            upstream,
            parts.uri.path(),
            parts.uri.query(),
            drop_param,
            add,
        )
        .map_err(build_failed)?;
        let out = &mut parts.headers;
        let set = |out: &mut http::HeaderMap,
                   name: HeaderName,
                   value: &str|
         -> Result<(), GatewayError> {
            if headers::is_reserved(&name) && name != header::AUTHORIZATION {
                return Err(build_failed("credential header name is reserved"));
            }
            let value = HeaderValue::from_str(value)
                .map_err(|_bad| build_failed("credential is not a header value"))?;
            out.insert(name, value);
            Ok(())
        };
        match &provider.credential {
            Credential::None | Credential::Unavailable(_) => {}
            Credential::OAuthClientCredentials(client) => {
                if let Some(token) = &access_token {
                    let value = format!("{} {}", client.scheme, token.access_token.expose());
                    set(out, client.header.clone(), &value)?;
                }
            }
            Credential::CaracalMandate => {
                if let Some(jwt) = &resource_mandate {
                    set(out, header::AUTHORIZATION, &format!("Bearer {jwt}"))?;
                }
            }
            Credential::ApiKey { placement, key } => {
                if let KeyPlacement::Header { name, scheme } = placement {
                    let value = match scheme {
                        Some(scheme) => format!("{scheme} {}", key.expose()),
                        None => key.expose().to_owned(),
                    };
                    set(out, name.clone(), &value)?;
                }
            }
            Credential::Bearer {
                header: name,
                scheme,
                token,
            } => set(out, name.clone(), &format!("{scheme} {}", token.expose()))?,
            Credential::Basic { value } => set(out, header::AUTHORIZATION, value.expose())?,
        }
        if provider.forward_caracal_identity
            && let Some(jwt) = &resource_mandate
        {
            let value =
                HeaderValue::from_str(jwt).map_err(|_bad| build_failed("identity mandate"))?;
            out.insert("x-caracal-identity", value);
        }
        if let Ok(value) = HeaderValue::from_str(&ctx.request_id) {
            out.insert("x-request-id", value);
        }
        let (traceparent, trace_id) = headers::traceparent(inbound_trace.as_ref());
        ctx.audit.set("trace_id", trace_id);
        out.insert("traceparent", traceparent);
        if let Some(peer) = ctx.peer {
            out.insert(
                "x-forwarded-for",
                headers::forwarded_for(peer.ip(), inbound_xff.as_ref(), self.config.trust_proxy),
            );
        }
        out.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(if self.config.tls.is_some() {
                "https"
            } else {
                "http"
            }),
        );
        if let Some(host) = inbound_host {
            out.insert("x-forwarded-host", host);
        }
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        out.insert(
            header::HOST,
            HeaderValue::from_str(&authority).map_err(|_bad| build_failed("upstream host"))?,
        );
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        Ok(ControlFlow::Continue(Outbound {
            request: Request::from_parts(parts, body),
        }))
    }
}
