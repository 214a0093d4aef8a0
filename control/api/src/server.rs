//! The HTTP surface: operator endpoints, the `/v1` frame (authentication, body limit,
//! capability and zone checks), the route table, and the one rendering of every outcome.

use std::{net::IpAddr, sync::Arc};

use http::{Method, Request, Response, header};
use hyper::body::Incoming;

use crate::{
    areas::{
        Reply, admin_tokens, applications, approvals, audit_reads, grants, plugin_bindings,
        plugins, policies, policy_sets, providers, resources, subject_issuers, subjects, views,
        zones_area,
    },
    auth,
    error::{ApiError, Problem, rescue},
    metrics::Metrics,
    request::AdminRequest,
    routes::{RequestBody, Route, Scope, no_route, wrong_method},
    state::Api,
};
use control_http::{Body, respond};

/// The OpenAPI document, generated on first request.
static OPENAPI: std::sync::OnceLock<String> = std::sync::OnceLock::new();

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

/// The `/v1` frame: authentication, the route and its capability and zone checks, then the
/// body, read within the route's bound (1 MiB, or the route's own for a raw upload), and the
/// operation. The checks come before the body so that a refused caller never makes the API
/// buffer an upload.
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
    // Ids are plain ASCII; segments are matched as sent (an escaped id matches nothing).
    let segments: Vec<String> = path
        .trim_start_matches("/v1/")
        .split('/')
        .map(str::to_owned)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    if segs == ["openapi.json"] {
        if method != Method::GET {
            return Err(wrong_method().into());
        }
        return Ok(respond::bytes(
            200,
            "application/json",
            bytes::Bytes::from(OPENAPI.get_or_init(crate::openapi::document_text).clone()),
        ));
    }
    let (area, route, params) = find(&segs, &method)?;
    let zone = match route.scope {
        Scope::Zone => params.first().copied(),
        Scope::Global => None,
        Scope::Any => principal.zone.as_deref(),
    };
    auth::authorize(&principal, route.need, zone)?;

    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let media_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase());
    let json_content = media_type.as_deref() == Some("application/json");
    // A raw upload holds one of a few slots while it is read and handled, so the bodies the
    // API buffers stay bounded (shed with 503 when every slot is taken).
    let _upload_slot = match route.body {
        RequestBody::Raw(_) => Some(api.uploads.try_acquire().map_err(|_closed_or_full| {
            Problem::new(
                503,
                "too_many_uploads",
                "too many uploads in progress; retry shortly",
            )
        })?),
        RequestBody::None | RequestBody::Json(_) => None,
    };
    let limit = route.body.limit();
    let read = control_http::read_body(req, limit);
    let outcome = match route.body {
        RequestBody::Raw(raw) => tokio::time::timeout(raw.read_deadline, read)
            .await
            .map_err(|_elapsed| {
                Problem::new(
                    408,
                    "request_timeout",
                    "the request body did not arrive in time",
                )
            })?,
        RequestBody::None | RequestBody::Json(_) => read.await,
    };
    let body = match outcome {
        Ok(body) => body,
        Err(control_http::BodyError::TooLarge) => {
            return Err(Problem::new(
                413,
                "payload_too_large",
                format!("request body exceeds {}", size_label(limit)),
            )
            .into());
        }
        Err(control_http::BodyError::Broken) => {
            return Err(Problem::new(400, "invalid_body", "request body could not be read").into());
        }
    };
    let request = AdminRequest {
        method,
        path,
        query,
        body,
        json_content,
        media_type,
        request_id: request_id.to_owned(),
        principal,
    };
    match call(area, api, &request, route.op, &params).await? {
        Reply::Json(status, value) => Ok(respond::json(status, &value)),
        Reply::Bytes(media_type, bytes) => Ok(respond::bytes(200, media_type, bytes)),
        Reply::Download {
            media_type,
            disposition,
            next_cursor,
            body,
        } => {
            let mut response = respond::bytes(200, media_type, body);
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_DISPOSITION,
                http::HeaderValue::from_static(disposition),
            );
            if let Some(value) =
                next_cursor.and_then(|cursor| http::HeaderValue::from_str(&cursor).ok())
            {
                headers.insert(crate::audit_service::NEXT_CURSOR_HEADER, value);
            }
            Ok(response)
        }
        Reply::NoContent => Ok(respond::empty(204)),
    }
}

/// `1 MiB`, `32 MiB`: a body limit as the 413 message states it.
fn size_label(bytes: usize) -> String {
    const MIB: usize = 1024 * 1024;
    if bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// The areas, each with its route table.
#[derive(Debug, Clone, Copy)]
enum Area {
    Zones,
    Applications,
    Providers,
    Resources,
    PluginBindings,
    Plugins,
    Policies,
    PolicySets,
    Grants,
    SubjectIssuers,
    Approvals,
    Subjects,
    Views,
    AdminTokens,
    AuditReads,
}

const AREAS: [(Area, &[Route]); 15] = [
    (Area::Zones, zones_area::ROUTES),
    (Area::Applications, applications::ROUTES),
    (Area::Providers, providers::ROUTES),
    (Area::Resources, resources::ROUTES),
    (Area::PluginBindings, plugin_bindings::ROUTES),
    (Area::Plugins, plugins::ROUTES),
    (Area::Policies, policies::ROUTES),
    (Area::PolicySets, policy_sets::ROUTES),
    (Area::Grants, grants::ROUTES),
    (Area::SubjectIssuers, subject_issuers::ROUTES),
    (Area::Approvals, approvals::ROUTES),
    (Area::Subjects, subjects::ROUTES),
    (Area::Views, views::ROUTES),
    (Area::AdminTokens, admin_tokens::ROUTES),
    (Area::AuditReads, audit_reads::ROUTES),
];

/// Every route the API serves, in table order.
pub fn routes() -> impl Iterator<Item = &'static Route> {
    AREAS.iter().flat_map(|(_, routes)| routes.iter())
}

async fn call(
    area: Area,
    api: &Api,
    req: &AdminRequest,
    op: &str,
    p: &[&str],
) -> Result<Reply, ApiError> {
    match area {
        Area::Zones => zones_area::handle(api, req, op, p).await,
        Area::Applications => applications::handle(api, req, op, p).await,
        Area::Providers => providers::handle(api, req, op, p).await,
        Area::Resources => resources::handle(api, req, op, p).await,
        Area::PluginBindings => plugin_bindings::handle(api, req, op, p).await,
        Area::Plugins => plugins::handle(api, req, op, p).await,
        Area::Policies => policies::handle(api, req, op, p).await,
        Area::PolicySets => policy_sets::handle(api, req, op, p).await,
        Area::Grants => grants::handle(api, req, op, p).await,
        Area::SubjectIssuers => subject_issuers::handle(api, req, op, p).await,
        Area::Approvals => approvals::handle(api, req, op, p).await,
        Area::Subjects => subjects::handle(api, req, op, p).await,
        Area::Views => views::handle(api, req, op, p).await,
        Area::AdminTokens => admin_tokens::handle(api, req, op, p).await,
        Area::AuditReads => audit_reads::handle(api, req, op, p).await,
    }
}

/// The route of `method` on `segs` with its area and path parameters: 404 when no route has
/// the path, 405 when only other methods do.
fn find<'a>(
    segs: &[&'a str],
    method: &Method,
) -> Result<(Area, &'static Route, Vec<&'a str>), Problem> {
    let mut path_known = false;
    for (area, routes) in AREAS {
        for route in routes {
            let Some(params) = route.matches(segs) else {
                continue;
            };
            if route.method != *method {
                path_known = true;
                continue;
            }
            return Ok((area, route, params));
        }
    }
    if path_known {
        Err(wrong_method())
    } else {
        Err(no_route())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_limits_are_stated_in_mib_when_whole() {
        assert_eq!(size_label(MAX_BODY), "1 MiB");
        assert_eq!(size_label(32 * 1024 * 1024), "32 MiB");
        assert_eq!(size_label(1000), "1000 bytes");
    }

    #[test]
    fn only_the_component_upload_takes_a_raw_body_and_a_larger_limit() {
        let raw: Vec<(&str, usize)> = routes()
            .filter(|r| matches!(r.body, RequestBody::Raw(_)))
            .map(|r| (r.op, r.body.limit()))
            .collect();
        assert_eq!(raw, vec![("plugins.create", 32 * 1024 * 1024)]);
        assert!(
            routes()
                .filter(|r| !matches!(r.body, RequestBody::Raw(_)))
                .all(|r| r.body.limit() == MAX_BODY)
        );
    }
}
