//! The HTTP surface: operator endpoints, the `/v1` frame (authentication, body limit,
//! capability and zone checks), the route table, and the one rendering of every outcome.

use std::{net::IpAddr, sync::Arc};

use http::{Method, Request, Response, header};
use hyper::body::Incoming;
use serde_json::json;

use crate::{
    areas::{Reply, admin_tokens, applications, policies, zones_area},
    auth::{self, Need},
    error::{ApiError, Problem, rescue},
    metrics::Metrics,
    request::AdminRequest,
    state::Api,
};
use control_http::{Body, respond};

/// The body limit of `/v1` requests (1 MiB).
pub const MAX_BODY: usize = 1024 * 1024;

/// One request: request id, route, render, log.
pub async fn handle(api: Arc<Api>, req: Request<Incoming>) -> Response<Body> {
    Metrics::count(&api.metrics.requests);
    let request_id = control_http::request_id(&req);
    let response = match route(&api, req, request_id.as_str()).await {
        Ok(response) => response,
        Err(err) => {
            let problem = rescue(&err);
            if problem.status >= 500 {
                Metrics::count(&api.metrics.errors);
                tracing::error!(request_id = %request_id, error = %err, "request failed");
            } else {
                Metrics::count(&api.metrics.refusals);
                tracing::info!(request_id = %request_id, status = problem.status, error = %problem.code, "refused");
            }
            respond::json(problem.status, &problem.body(request_id.as_str()))
        }
    };
    respond::with_request_id(response, request_id.as_str())
}

async fn route(
    api: &Api,
    req: Request<Incoming>,
    request_id: &str,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/health") => Ok(respond::empty(200)),
        (&Method::GET, "/ready") => Ok(crate::ops::ready(api).await),
        (&Method::GET, "/metrics") => Ok(crate::ops::metrics(api, &req)),
        (_, p) if p.starts_with("/v1/") => admin(api, req, request_id).await,
        _ => Err(Problem::new(404, "not_found", "no such route").into()),
    }
}

/// The `/v1` frame.
async fn admin(
    api: &Api,
    req: Request<Incoming>,
    request_id: &str,
) -> Result<Response<Body>, ApiError> {
    let peer: Option<IpAddr> = req
        .extensions()
        .get::<control_http::Peer>()
        .map(|p| p.0.ip());
    let principal = auth::authenticate(api, req.headers(), peer).await?;
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let json_content = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    let body = match control_http::read_body(req, MAX_BODY).await {
        Ok(body) => body,
        Err(control_http::BodyError::TooLarge) => {
            return Err(
                Problem::new(413, "payload_too_large", "request body exceeds 1 MiB").into(),
            );
        }
        Err(control_http::BodyError::Broken) => {
            return Err(Problem::new(400, "invalid_body", "request body could not be read").into());
        }
    };
    // Ids are plain ASCII; segments are matched as sent (an escaped id matches nothing).
    let segments: Vec<String> = path
        .trim_start_matches("/v1/")
        .split('/')
        .map(str::to_owned)
        .collect();
    let request = AdminRequest {
        method,
        path,
        query,
        body,
        json_content,
        request_id: request_id.to_owned(),
        principal,
    };
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    match dispatch(api, &request, &segs).await? {
        Reply::Json(status, value) => Ok(respond::json(status, &value)),
        Reply::NoContent => Ok(respond::empty(204)),
    }
}

/// The capability a request needs: reads for GET, decisions for approval decisions,
/// writes otherwise.
fn need(method: &Method, segs: &[&str]) -> Need {
    if method == Method::GET || method == Method::HEAD {
        return Need::Read;
    }
    match segs {
        ["zones", _, "approvals", _, "approve" | "reject"] => Need::Decide,
        // Validation changes nothing.
        ["policies", "validate"] => Need::Read,
        _ => Need::Write,
    }
}

async fn dispatch(api: &Api, req: &AdminRequest, segs: &[&str]) -> Result<Reply, ApiError> {
    let zone = match segs {
        ["zones", zone, ..] => Some(*zone),
        // A zone token lists only its own zone, and may validate documents.
        ["zones"] if req.method == Method::GET => req.principal.zone.as_deref(),
        ["policies", "validate"] => req.principal.zone.as_deref(),
        _ => None,
    };
    auth::authorize(&req.principal, need(&req.method, segs), zone)?;
    let m = &req.method;
    match segs {
        ["zones"] if m == Method::GET => zones_area::list(api, req).await,
        ["zones"] if m == Method::POST => zones_area::create(api, req).await,
        ["zones", z] if m == Method::GET => zones_area::get(api, z).await,
        ["zones", z] if m == Method::PATCH => zones_area::patch(api, req, z).await,
        ["zones", z] if m == Method::DELETE => zones_area::delete(api, req, z).await,
        ["zones", z, "dcr-status"] if m == Method::GET => zones_area::dcr_status(api, z).await,
        ["zones", z, "applications"] if m == Method::GET => applications::list(api, req, z).await,
        ["zones", z, "applications"] if m == Method::POST => {
            applications::create(api, req, z).await
        }
        ["zones", z, "applications", "dcr"] if m == Method::POST => {
            applications::create_dcr(api, req, z).await
        }
        ["zones", z, "applications", id] if m == Method::GET => applications::get(api, z, id).await,
        ["zones", z, "applications", id] if m == Method::PATCH => {
            applications::patch(api, req, z, id).await
        }
        ["zones", z, "applications", id] if m == Method::DELETE => {
            applications::delete(api, req, z, id).await
        }
        ["zones", z, "applications", id, "rotate-secret"] if m == Method::POST => {
            applications::rotate(api, req, z, id).await
        }
        ["zones", z, "applications", id, "client-secret"] if m == Method::GET => {
            applications::reveal(api, z, id).await
        }
        ["zones", z, "policies"] if m == Method::GET => policies::list(api, req, z).await,
        ["zones", z, "policies"] if m == Method::POST => policies::create(api, req, z).await,
        ["zones", z, "policies", id] if m == Method::GET => policies::get(api, z, id).await,
        ["zones", z, "policies", id] if m == Method::DELETE => {
            policies::delete(api, req, z, id).await
        }
        ["zones", z, "policies", id, "versions"] if m == Method::POST => {
            policies::add_version(api, req, z, id).await
        }
        ["policies", "validate"] if m == Method::POST => policies::validate_only(req),
        ["admin-tokens"] if m == Method::GET => admin_tokens::list(api, req).await,
        ["admin-tokens"] if m == Method::POST => admin_tokens::create(api, req).await,
        ["admin-tokens", id] if m == Method::DELETE => admin_tokens::revoke(api, req, id).await,
        _ if known_path(segs) => {
            Err(Problem::new(405, "method_not_allowed", "method not allowed").into())
        }
        _ => Err(Problem::new(404, "not_found", "no such route").into()),
    }
}

/// Paths that exist under some method (a wrong method is 405, not 404).
fn known_path(segs: &[&str]) -> bool {
    matches!(
        segs,
        ["zones"]
            | ["zones", _]
            | ["zones", _, "dcr-status"]
            | ["zones", _, "applications"]
            | ["zones", _, "applications", _]
            | [
                "zones",
                _,
                "applications",
                _,
                "rotate-secret" | "client-secret"
            ]
            | ["zones", _, "policies"]
            | ["zones", _, "policies", _]
            | ["zones", _, "policies", _, "versions"]
            | ["policies", "validate"]
            | ["admin-tokens"]
            | ["admin-tokens", _]
    )
}

/// `{"ok":true,"ready":true}`.
pub fn ready_body(ok: bool, reason: Option<&str>) -> serde_json::Value {
    match reason {
        None => json!({"ok": ok, "ready": ok}),
        Some(reason) => json!({"ok": ok, "ready": ok, "reason": reason}),
    }
}
