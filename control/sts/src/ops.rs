//! `/ready` and `/metrics` (wire-contract §2.11).

use http::{Request, header};
use hyper::body::Incoming;

use crate::{
    config::Mode,
    respond::{self, Body},
    state::Sts,
};

/// 200 `{"ok":true,"ready":true}` when Postgres and Redis answer, the invalidation
/// consumers are connected, audit evidence can be kept and the outbox is within its
/// thresholds; otherwise 503 with the first failing reason.
pub(crate) async fn ready(state: &Sts) -> http::Response<Body> {
    let postgres = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&state.pool),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let reason = if !postgres {
        Some("postgres_unreachable")
    } else if !state.kek_ok.load(std::sync::atomic::Ordering::Relaxed) {
        Some("zone_kek_mismatch")
    } else if state.redis.ping().await.is_err() {
        Some("redis_unreachable")
    } else if !state
        .consumers
        .iter()
        .all(|c| c.connected.load(std::sync::atomic::Ordering::Acquire))
    {
        Some("stream_consumers_not_ready")
    } else {
        let health = state.audit.health();
        if health.evidence_lost {
            Some("audit_evidence_lost")
        } else if !health.replay_writable {
            Some("audit_replay_unavailable")
        } else {
            // `outbox_dead` / `outbox_stalled`, when their thresholds are set (storage §7.3).
            state.outbox.ready_reason()
        }
    };
    match reason {
        None => respond::json(200, &serde_json::json!({"ok": true, "ready": true})),
        Some(reason) => respond::json(
            503,
            &serde_json::json!({"ok": false, "ready": false, "reason": reason}),
        ),
    }
}

/// Metrics behind `METRICS_BEARER`; open without one only in dev mode.
pub(crate) fn metrics(state: &Sts, req: &Request<Incoming>, as_json: bool) -> http::Response<Body> {
    let authorized = match &state.config.metrics_bearer {
        Some(expected) => control_http::respond::bearer_matches(req.headers(), expected),
        None => state.config.mode == Mode::Dev,
    };
    if !authorized {
        return respond::denial(
            &control_model::Denial::unauthorized("metrics require the METRICS_BEARER token"),
            "",
        );
    }
    if as_json {
        respond::json(
            200,
            &state
                .metrics
                .json(&state.outbox.stats().snapshot(), &state.audit.health()),
        )
    } else {
        let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
            state
                .metrics
                .prometheus(&state.outbox.stats().snapshot(), &state.audit.health()),
        )));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        response
    }
}
