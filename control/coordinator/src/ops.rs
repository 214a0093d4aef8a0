//! `/ready` and `/metrics`.

use control_http::{Body, respond};
use http::{Request, Response};

use crate::state::Coordinator;

/// 200 when Postgres and Redis answer and the outbox is within its readiness bounds, else
/// 503 naming the first problem.
pub async fn ready(co: &Coordinator) -> Response<Body> {
    respond::ready(control_events::outbox::not_ready_reason(&co.pool, &co.redis, &co.outbox).await)
}

/// Prometheus text; behind `METRICS_BEARER` when it is set.
pub fn metrics<B>(co: &Coordinator, req: &Request<B>) -> Response<Body> {
    if let Some(expected) = &co.config.metrics_bearer
        && !respond::bearer_matches(req.headers(), expected)
    {
        return respond::empty(401);
    }
    respond::bytes(
        200,
        "text/plain; version=0.0.4",
        bytes::Bytes::from(co.metrics.render(&co.outbox.stats().snapshot())),
    )
}
