//! The HTTP surface: operator endpoints, the `/zones` frame (route, authentication, body,
//! idempotency key), and the one rendering of every outcome.

use std::sync::Arc;

use control_http::{Body, respond};
use control_model::ZoneId;
use http::{HeaderValue, Method, Request, Response, header};
use hyper::body::Incoming;

use crate::{
    auth, delegations,
    error::{CoordError, Problem, refuse, rescue},
    idempotency, invocations,
    metrics::Metrics,
    request::{CoordRequest, Reply},
    routes::{self, Found, Op},
    services, sessions,
    state::Coordinator,
};

/// The body limit (1 MiB).
pub const MAX_BODY: usize = 1024 * 1024;

/// One request: request id, route, render, log.
pub async fn handle(co: Arc<Coordinator>, req: Request<Incoming>) -> Response<Body> {
    Metrics::count(&co.metrics.requests);
    let request_id = control_http::request_id(&req);
    let response = match route(&co, req, request_id.as_str()).await {
        Ok(response) => response,
        Err(err) => {
            let problem = rescue(&err);
            if problem.status >= 500 {
                Metrics::count(&co.metrics.errors);
                tracing::error!(request_id = %request_id, error = %err, "request failed");
            } else {
                Metrics::count(&co.metrics.refusals);
                tracing::info!(request_id = %request_id, status = problem.status, error = %problem.code, "refused");
            }
            render_problem(&problem, request_id.as_str())
        }
    };
    respond::with_request_id(response, request_id.as_str())
}

/// The problem's body; a per-client rate refusal also says when the window ends.
fn render_problem(problem: &Problem, request_id: &str) -> Response<Body> {
    let mut response = respond::json(problem.status, &problem.body(request_id));
    if problem.code == "rate_limited"
        && let Ok(value) = HeaderValue::from_str(&auth::RATE_WINDOW.as_secs().to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

async fn route(
    co: &Coordinator,
    req: Request<Incoming>,
    request_id: &str,
) -> Result<Response<Body>, CoordError> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => Ok(respond::empty(200)),
        (&Method::GET, "/ready") => Ok(crate::ops::ready(co).await),
        (&Method::GET, "/metrics") => Ok(crate::ops::metrics(co, &req)),
        (_, path) if path.starts_with("/zones/") => zones(co, req, request_id).await,
        _ => Err(Problem::new(404, "not_found", "no such route").into()),
    }
}

/// The `/zones/{z}/…` frame: route, authentication, idempotency key, body, operation.
async fn zones(
    co: &Coordinator,
    req: Request<Incoming>,
    request_id: &str,
) -> Result<Response<Body>, CoordError> {
    let path = req.uri().path().to_owned();
    // Ids are plain ASCII; segments are matched as sent (an escaped id matches nothing).
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (route, params) = match routes::find(&segments, req.method()) {
        Found::Route(route, params) => (route, params),
        Found::WrongMethod => {
            return Err(Problem::new(405, "method_not_allowed", "method not allowed").into());
        }
        Found::Missing => return Err(Problem::new(404, "not_found", "no such route").into()),
    };
    let zone_param = params.first().copied().unwrap_or_default();
    let caller = auth::authenticate(
        co,
        req.headers(),
        zone_param,
        route.operator,
        route.op.identity_check(),
    )
    .await?;
    // An operator names any zone; a malformed one has no rows.
    let zone = ZoneId::parse(zone_param).map_err(|_bad| refuse(404, "zone_not_found"))?;
    let idempotency = idempotency::from_headers(req.headers())?;
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
    let body = control_http::read_body(req, MAX_BODY)
        .await
        .map_err(|error| match error {
            control_http::BodyError::TooLarge => {
                Problem::new(413, "payload_too_large", "request body exceeds 1 MiB")
            }
            control_http::BodyError::Broken => {
                Problem::new(400, "invalid_body", "request body could not be read")
            }
        })?;
    let request = CoordRequest {
        request_id: request_id.to_owned(),
        zone,
        caller,
        query,
        body,
        json_content,
        idempotency,
    };
    let ids = &params[1..];
    let reply = dispatch(co, &request, route.op, ids).await?;
    Ok(match reply {
        Reply::Json(status, value) => respond::json(status, &value),
        Reply::Replayed(status, value) => {
            let mut response = respond::json(status, &value);
            response
                .headers_mut()
                .insert("idempotency-replayed", HeaderValue::from_static("true"));
            response
        }
        Reply::NoContent => respond::empty(204),
    })
}

async fn dispatch(
    co: &Coordinator,
    req: &CoordRequest,
    op: Op,
    ids: &[&str],
) -> Result<Reply, CoordError> {
    match (op, ids) {
        (Op::Start, []) => sessions::start(co, req).await,
        (Op::List, []) => sessions::list(co, req).await,
        (Op::Get, [id]) => sessions::get(co, req, id).await,
        (Op::Terminate, [id]) => sessions::terminate(co, req, id).await,
        (Op::Heartbeat, [id]) => sessions::heartbeat(co, req, id).await,
        (Op::Lease, [id]) => sessions::lease(co, req, id).await,
        (Op::Children, [id]) => sessions::children(co, req, id).await,
        (Op::EffectiveAuthority, [id]) => sessions::effective_authority(co, req, id).await,
        (Op::Suspend, [id]) => sessions::suspend(co, req, id).await,
        (Op::Resume, [id]) => sessions::resume(co, req, id).await,
        (Op::Delegate, []) => delegations::create(co, req).await,
        (Op::Revoke, [id]) => delegations::revoke(co, req, id).await,
        (Op::Active, []) => delegations::active(co, req).await,
        (Op::Inbound, [session]) => delegations::inbound(co, req, session).await,
        (Op::InboundOne, [session, id]) => delegations::inbound_one(co, req, session, id).await,
        (Op::Outbound, [session]) => delegations::outbound(co, req, session).await,
        (Op::Traverse, [id]) => delegations::traverse(co, req, id).await,
        (Op::Impact, [id]) => delegations::impact(co, req, id).await,
        (Op::Register, []) => services::register(co, req).await,
        (Op::Services, []) => services::list(co, req).await,
        (Op::Service, [id]) => services::get(co, req, id).await,
        (Op::ServiceHealth, [id]) => services::set_health(co, req, id).await,
        (Op::Deregister, [id]) => services::deregister(co, req, id).await,
        (Op::Claim, [id]) => invocations::claim(co, req, id).await,
        (Op::Invocations, [id]) => invocations::list(co, req, id).await,
        (Op::Invoke, []) => invocations::create(co, req).await,
        (Op::Invocation, [id]) => invocations::get(co, req, id).await,
        (Op::Complete, [id]) => invocations::complete(co, req, id).await,
        (Op::Cancel, [id]) => invocations::cancel(co, req, id).await,
        _ => Err(CoordError::Internal(format!(
            "route {op:?} matched with {} parameters",
            ids.len()
        ))),
    }
}
