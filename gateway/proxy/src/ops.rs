//! Operator endpoints (wire-contract §4.9), answered before the pipeline: they shadow
//! upstream paths of the same name.

use std::sync::Arc;

use bytes::Bytes;
use control_model::Denial;
use http::{HeaderValue, Method, Request, Response, header};
use hyper::body::Incoming;
use serde_json::json;

use crate::pipeline::{Gateway, ProxyBody, Refusal, full, render};

/// The operator answer for `req`, or `None` when the request is for the pipeline.
pub(crate) async fn route(
    gateway: &Arc<Gateway>,
    req: &Request<Incoming>,
    request_id: &str,
) -> Option<Response<ProxyBody>> {
    let path = req.uri().path();
    let method = req.method();
    match (method, path) {
        (_, "/health") => Some(with_id(Response::new(full(Bytes::new())), request_id)),
        (&Method::GET, "/ready") => Some(ready(gateway, request_id).await),
        (&Method::GET, "/metrics") => Some(metrics(gateway, req, request_id, false)),
        (&Method::GET, "/metrics.json") => Some(metrics(gateway, req, request_id, true)),
        (&Method::POST, "/internal/revocations/reload") => {
            Some(reload(gateway, req, request_id).await)
        }
        _ => None,
    }
}

fn with_id(mut response: Response<ProxyBody>, request_id: &str) -> Response<ProxyBody> {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

fn json_response(status: u16, body: &serde_json::Value, request_id: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    with_id(response, request_id)
}

/// `/ready`: the first failing reason, in a fixed order.
async fn ready(gateway: &Arc<Gateway>, request_id: &str) -> Response<ProxyBody> {
    let reason = if !gateway.state.is_loaded() {
        Some("snapshot_not_loaded")
    } else if !gateway.state.view().is_fresh() {
        Some("revocation_snapshot_stale")
    } else if !gateway.counters.ping().await {
        Some("redis_unreachable")
    } else {
        gateway.audit.health().ready_failure()
    };
    match reason {
        None => json_response(200, &json!({"ok": true, "ready": true}), request_id),
        Some(reason) => json_response(
            503,
            &json!({"ok": false, "ready": false, "reason": reason}),
            request_id,
        ),
    }
}

fn bearer_matches(req: &Request<Incoming>, expected: &str) -> bool {
    control_http::respond::bearer_matches(req.headers(), expected)
}

/// Metrics behind `METRICS_BEARER`; open without one only in dev mode.
fn metrics(
    gateway: &Arc<Gateway>,
    req: &Request<Incoming>,
    request_id: &str,
    as_json: bool,
) -> Response<ProxyBody> {
    let authorized = match &gateway.config.metrics_bearer {
        Some(expected) => bearer_matches(req, expected),
        None => gateway.config.mode == crate::config::Mode::Dev,
    };
    if !authorized {
        return render(
            &Refusal::from(Denial::unauthorized(
                "metrics require the METRICS_BEARER token",
            )),
            request_id,
        );
    }
    let health = gateway.audit.health();
    if as_json {
        return json_response(
            200,
            &gateway.metrics.json(&gateway.state, &health),
            request_id,
        );
    }
    let mut response = Response::new(full(Bytes::from(
        gateway.metrics.prometheus(&gateway.state, &health),
    )));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    with_id(response, request_id)
}

/// Forces an authority poll and a snapshot rebuild.
async fn reload(
    gateway: &Arc<Gateway>,
    req: &Request<Incoming>,
    request_id: &str,
) -> Response<ProxyBody> {
    let Some(expected) = gateway.config.admin_token.as_deref() else {
        return json_response(404, &json!({"error": "not_found"}), request_id);
    };
    if !bearer_matches(req, expected) {
        return render(
            &Refusal::from(Denial::unauthorized("admin token required")),
            request_id,
        );
    }
    let view = gateway.state.view();
    let polled = view.poll().await;
    let built = gateway.state.rebuild_now().await;
    match (polled, built) {
        (Ok(()), Ok(())) => json_response(
            200,
            &json!({"ok": true, "revocations": view.mark_count()}),
            request_id,
        ),
        (polled, built) => {
            tracing::warn!(poll = ?polled.err(), build = ?built.err().map(|e| e.to_string()), "forced reload failed");
            render(
                &Refusal::from(Denial::unavailable("reload failed")),
                request_id,
            )
        }
    }
}
