//! `/ready` and `/metrics`.

use control_http::{Body, respond};
use http::{Request, Response};

use crate::{server::ready_body, state::Api};

/// 200 when Postgres and Redis answer and the outbox is within its readiness bounds, else
/// 503 naming the first problem.
pub async fn ready(api: &Api) -> Response<Body> {
    let db = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&api.pool),
    )
    .await;
    if !matches!(db, Ok(Ok(1))) {
        return respond::json(503, &ready_body(false, Some("database_unavailable")));
    }
    let redis_ok = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let mut conn = api.redis.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    })
    .await;
    if !matches!(redis_ok, Ok(Ok(_))) {
        return respond::json(503, &ready_body(false, Some("redis_unavailable")));
    }
    if let Some(reason) = api.outbox.ready_reason() {
        return respond::json(503, &ready_body(false, Some(reason)));
    }
    respond::json(200, &ready_body(true, None))
}

/// Prometheus text; behind `METRICS_BEARER` when it is set.
pub fn metrics<B>(api: &Api, req: &Request<B>) -> Response<Body> {
    if let Some(expected) = &api.config.metrics_bearer {
        let given = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !control_crypto::ct_eq(given.as_bytes(), expected.as_bytes()) {
            return respond::empty(401);
        }
    }
    respond::bytes(
        200,
        "text/plain; version=0.0.4",
        bytes::Bytes::from(api.metrics.render(&api.outbox.stats().snapshot())),
    )
}
