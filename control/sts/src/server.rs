//! The HTTP surface: accept loop, connection limits, routing, and the per-request frame
//! (request id, body limits, one rendering of every outcome).

use std::{net::SocketAddr, sync::Arc};

use control_events::audit::AuditEmitMode;
use control_model::{Denial, ErrorCode, ZoneId};
use http::{Method, Request, Response, header};
use hyper::body::Incoming;
use tokio::{net::TcpListener, sync::watch};

use crate::{
    error::{StsError, rescue},
    exchange::{self, Answer},
    form,
    metrics::Metrics,
    respond::{self, Body},
    state::Sts,
};

/// The token endpoint's body limit (wire-contract §2.2).
const MAX_TOKEN_BODY: usize = 64 * 1024;

/// Serves until `shutdown` turns true, then drains open connections for up to 10 s.
pub(crate) async fn serve(state: Arc<Sts>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    let config = control_http::ServeConfig {
        max_connections: state.config.max_connections,
        ..control_http::ServeConfig::default()
    };
    control_http::serve(listener, config, shutdown, move |req| {
        let state = Arc::clone(&state);
        async move { handle(&state, req).await }
    })
    .await;
}

/// One request: request id, route, render, log.
async fn handle(state: &Sts, req: Request<Incoming>) -> Response<Body> {
    Metrics::count(&state.metrics.requests);
    let request_id = control_http::request_id(&req);
    // In AUDIT_EMIT_MODE=sync the answer waits until the request's audit events are accepted;
    // one that was not refuses the request, so no token leaves without its evidence. The
    // default async mode collects nothing and pays nothing for it.
    let routed = match state.audit.emit_mode() {
        AuditEmitMode::Async => route(state, req, request_id.as_str()).await,
        AuditEmitMode::Sync => {
            let (routed, accepted) =
                crate::state::with_audit_receipts(Box::pin(route(state, req, request_id.as_str())))
                    .await;
            accepted
                .map_err(|unavailable| StsError::AuditUnavailable(unavailable.to_string()))
                .and(routed)
        }
    };
    let response = match routed {
        Ok(response) => response,
        Err(err) => {
            Metrics::count(&state.metrics.errors);
            tracing::error!(request_id = %request_id, error = %err, "request failed");
            respond::denial(&rescue(&err), request_id.as_str())
        }
    };
    respond::with_request_id(response, request_id.as_str())
}

async fn route(
    state: &Sts,
    req: Request<Incoming>,
    request_id: &str,
) -> Result<Response<Body>, StsError> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::POST, "/oauth/2/token") => token(state, req, request_id).await,
        (_, "/oauth/2/token") => Ok(respond::denial(
            &Denial::new(405, ErrorCode::InvalidToken, "method not allowed"),
            request_id,
        )),
        (&Method::GET, "/.well-known/jwks.json") => {
            jwks(state, req.uri().query(), request_id).await
        }
        (&Method::GET, p)
            if p.starts_with("/approvals/") && !p["/approvals/".len()..].contains('/') =>
        {
            crate::approvals::poll(
                state,
                &p["/approvals/".len()..],
                req.uri().query(),
                request_id,
            )
            .await
        }
        (&Method::POST, p)
            if p.starts_with("/approvals/")
                && p.ends_with("/decision")
                && p.len() > "/approvals//decision".len() =>
        {
            let id = &p["/approvals/".len()..p.len() - "/decision".len()];
            crate::decision::decide(state, id, req, request_id).await
        }
        (&Method::GET, "/health") => Ok(respond::empty(200)),
        (&Method::GET, "/ready") => Ok(crate::ops::ready(state).await),
        (&Method::GET, "/metrics") => Ok(crate::ops::metrics(state, &req, false)),
        (&Method::GET, "/metrics.json") => Ok(crate::ops::metrics(state, &req, true)),
        _ => Ok(respond::denial(
            &Denial::new(404, ErrorCode::ResourceNotFound, "not found"),
            request_id,
        )),
    }
}

/// `POST /oauth/2/token`: the checks of wire-contract §2.2 that come before the form.
async fn token(
    state: &Sts,
    req: Request<Incoming>,
    request_id: &str,
) -> Result<Response<Body>, StsError> {
    if req.uri().query().is_some() {
        return Ok(deny(
            state,
            &Denial::bad_request("query parameters are not allowed"),
            request_id,
        ));
    }
    let form_encoded = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| {
            media
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_encoded {
        return Ok(deny(
            state,
            &Denial::new(
                415,
                ErrorCode::InvalidToken,
                "content type must be application/x-www-form-urlencoded",
            ),
            request_id,
        ));
    }
    let too_large = Denial::new(
        413,
        ErrorCode::PayloadTooLarge,
        "request body exceeds 64 KiB",
    );
    // Gateway-signed re-exchanges are not offered (settled point 8): fail closed.
    if req
        .headers()
        .keys()
        .any(|name| name.as_str().starts_with("x-caracal-gateway-"))
    {
        return Ok(deny(
            state,
            &Denial::unauthorized("invalid gateway exchange signature"),
            request_id,
        ));
    }
    let body = match control_http::read_body(req, MAX_TOKEN_BODY).await {
        Ok(body) => body,
        Err(_too_large_or_broken) => return Ok(deny(state, &too_large, request_id)),
    };
    let parsed = match form::parse(&body) {
        Ok(parsed) => parsed,
        Err(denial) => return Ok(deny(state, &denial, request_id)),
    };
    match exchange::exchange(state, request_id, parsed).await? {
        Answer::Token(body) => {
            Metrics::count(&state.metrics.tokens_issued);
            Ok(respond::json(200, &body))
        }
        Answer::Denied(denial) => Ok(deny(state, &denial, request_id)),
        Answer::Hold(body) => {
            Metrics::count(&state.metrics.denials);
            let mut response = respond::json(401, &body);
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer error=\"interaction_required\""),
            );
            Ok(response)
        }
    }
}

fn deny(state: &Sts, denial: &Denial, request_id: &str) -> Response<Body> {
    Metrics::count(&state.metrics.denials);
    tracing::info!(request_id, status = denial.status, error = denial.code.as_str(), description = %denial.description, "denied");
    respond::denial(denial, request_id)
}

/// `GET /.well-known/jwks.json?zone_id=Z` (wire-contract §2.9).
async fn jwks(
    state: &Sts,
    query: Option<&str>,
    request_id: &str,
) -> Result<Response<Body>, StsError> {
    let zone = query
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .find(|(k, _)| k == "zone_id")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty());
    let Some(zone) = zone else {
        return Ok(respond::denial(
            &Denial::bad_request("zone_id required"),
            request_id,
        ));
    };
    let not_found = Denial::new(404, ErrorCode::ResourceNotFound, "zone has no signing keys");
    let Ok(zone) = ZoneId::parse(&zone) else {
        return Ok(respond::denial(&not_found, request_id));
    };
    let now = chrono::Utc::now();
    let Some(keys) = state.keys.jwks(&zone, now).await? else {
        return Ok(respond::denial(&not_found, request_id));
    };
    let mut response = respond::json(200, &serde_json::json!({ "keys": keys }));
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("public, max-age=300, must-revalidate"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

/// The address a listener actually bound (port 0 in tests).
pub(crate) fn local_addr(listener: &TcpListener) -> Result<SocketAddr, StsError> {
    control_http::local_addr(listener)
        .map_err(|e| StsError::Internal(format!("listener address: {e}")))
}
