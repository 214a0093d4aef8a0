//! Steps 26–31: where the request goes, with which credential, built from what the caller
//! sent minus everything it may not decide.

use std::{ops::ControlFlow, sync::Arc};

use control_model::{Denial, ErrorCode};
use gateway_plugin_host::{
    Call, CredentialKind, CredentialSet, HostCredential,
    ops::{CheckedOp, InjectRules},
};
use gateway_state::{Credential, InjectMode, KeyPlacement, PluginHook, Provider};
use http::{HeaderName, HeaderValue, Request, Uri, header};
use zeroize::Zeroizing;

use super::{Authenticated, Gateway, Refusal, RequestCtx, Resolved};
use crate::{error::GatewayError, headers, mandate, oauth::Token, upstream::CallerBody};

/// A request ready for dispatch (step 32).
pub(crate) struct Outbound {
    pub(crate) request: Request<CallerBody>,
}

impl Gateway {
    pub(super) async fn prepare_upstream(
        &self,
        ctx: &mut RequestCtx,
        auth: &Authenticated,
        resolved: &Resolved,
        req: Request<CallerBody>,
        call: Option<&Call>,
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
        // Step 31: the outbound request. An injector bound in mode `replace` takes the place
        // of the built-in placement (authority §7.5).
        let injectors = binding
            .plugins
            .iter()
            .any(|p| p.hook == PluginHook::Injector);
        let builtin = !binding
            .plugins
            .iter()
            .any(|p| p.hook == PluginHook::Injector && p.mode == InjectMode::Replace);
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
            } => (
                Some(param.as_str()),
                builtin.then(|| (param.as_str(), key.expose())),
            ),
            _ => (None, None),
        };
        let mut uri = headers::outbound_uri(
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
        let mut placed: Option<HeaderName> = None;
        if builtin {
            let mut place = |out: &mut http::HeaderMap, name: HeaderName, value: &str| {
                placed = Some(name.clone());
                set(out, name, value)
            };
            match &provider.credential {
                Credential::None | Credential::Unavailable(_) => {}
                Credential::OAuthClientCredentials(client) => {
                    if let Some(token) = &access_token {
                        let value = format!("{} {}", client.scheme, token.access_token.expose());
                        place(out, client.header.clone(), &value)?;
                    }
                }
                Credential::CaracalMandate => {
                    if let Some(jwt) = &resource_mandate {
                        place(out, header::AUTHORIZATION, &format!("Bearer {jwt}"))?;
                    }
                }
                Credential::ApiKey { placement, key } => {
                    if let KeyPlacement::Header { name, scheme } = placement {
                        let value = match scheme {
                            Some(scheme) => format!("{scheme} {}", key.expose()),
                            None => key.expose().to_owned(),
                        };
                        place(out, name.clone(), &value)?;
                    }
                }
                Credential::Bearer {
                    header: name,
                    scheme,
                    token,
                } => place(out, name.clone(), &format!("{scheme} {}", token.expose()))?,
                Credential::Basic { value } => place(out, header::AUTHORIZATION, value.expose())?,
            }
        }
        if injectors && let Some(call) = call {
            let credentials = Arc::new(credential_set(
                provider,
                access_token.as_deref(),
                resource_mandate.as_deref(),
            ));
            let rules = InjectRules {
                placed_header: placed,
            };
            let ops = self
                .run_injectors(ctx, binding, call, &credentials, &rules)
                .await?;
            apply(ops, &credentials, out, &mut uri)?;
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

/// The credentials an injector may name: `primary` (the provider's key, token, Basic value or
/// access token) and `resource-mandate` (when one was minted).
fn credential_set(
    provider: &Provider,
    access_token: Option<&Token>,
    resource_mandate: Option<&str>,
) -> CredentialSet {
    let mut set = CredentialSet::new();
    let mut primary = |kind: CredentialKind, value: &str| {
        set.insert(HostCredential::new(
            "primary",
            kind,
            Zeroizing::new(value.as_bytes().to_vec()),
        ));
    };
    match &provider.credential {
        Credential::ApiKey { key, .. } => primary(CredentialKind::ApiKey, key.expose()),
        Credential::Bearer { token, .. } => primary(CredentialKind::BearerToken, token.expose()),
        Credential::Basic { value } => {
            let encoded = value.expose();
            let encoded = encoded.strip_prefix("Basic ").unwrap_or(encoded);
            primary(CredentialKind::Basic, encoded);
        }
        Credential::OAuthClientCredentials(_) => {
            if let Some(token) = access_token {
                primary(
                    CredentialKind::OauthAccessToken,
                    token.access_token.expose(),
                );
            }
        }
        Credential::None | Credential::CaracalMandate | Credential::Unavailable(_) => {}
    }
    if let Some(jwt) = resource_mandate {
        set.insert(HostCredential::new(
            "resource-mandate",
            CredentialKind::ResourceMandate,
            Zeroizing::new(jwt.as_bytes().to_vec()),
        ));
    }
    set
}

/// Applies checked injector operations. Only here do credential bytes meet a header.
fn apply(
    ops: Vec<CheckedOp>,
    credentials: &CredentialSet,
    out: &mut http::HeaderMap,
    uri: &mut Uri,
) -> Result<(), GatewayError> {
    let build_failed = |what: &str| GatewayError::RequestBuild(what.to_owned());
    let secret = |handle: &str| {
        credentials
            .get(handle)
            .map(HostCredential::expose)
            .ok_or_else(|| build_failed("unknown credential handle"))
    };
    for op in ops {
        match op {
            CheckedOp::AttachHeader {
                name,
                handle,
                scheme,
            } => {
                let bytes = secret(&handle)?;
                let mut value = Zeroizing::new(Vec::with_capacity(bytes.len() + 16));
                if let Some(scheme) = scheme {
                    value.extend_from_slice(scheme.as_bytes());
                    value.push(b' ');
                }
                value.extend_from_slice(bytes);
                let mut value = HeaderValue::from_bytes(&value)
                    .map_err(|_bad| build_failed("credential is not a header value"))?;
                value.set_sensitive(true);
                out.insert(name, value);
            }
            CheckedOp::AttachQuery { param, handle } => {
                let value = std::str::from_utf8(secret(&handle)?)
                    .map_err(|_bad| build_failed("credential is not text"))?;
                *uri = append_query(uri, &param, value)?;
            }
            CheckedOp::SetHeader { name, value } => {
                out.insert(name, value);
            }
            CheckedOp::RemoveHeader { name } => {
                out.remove(name);
            }
        }
    }
    Ok(())
}

/// `uri` with one more query parameter, both parts percent-encoded.
fn append_query(uri: &Uri, param: &str, value: &str) -> Result<Uri, GatewayError> {
    let build_failed = || GatewayError::RequestBuild("upstream query".to_owned());
    let mut path_and_query = uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    path_and_query.push(if uri.query().is_some() { '&' } else { '?' });
    path_and_query.push_str(
        &form_urlencoded::Serializer::new(String::new())
            .append_pair(param, value)
            .finish(),
    );
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().map_err(|_bad| build_failed())?);
    Uri::from_parts(parts).map_err(|_bad| build_failed())
}
