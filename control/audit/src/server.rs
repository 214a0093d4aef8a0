//! The HTTP surface on port 9090: `/health`, `/ready`, `/metrics`, and the internal
//! routes under `/internal/audit/` (bearer `CARACAL_INTERNAL_TOKEN`): the query endpoint the
//! admin API forwards to, and the dead-letter browse, replay and purge endpoints. Every
//! refusal is rendered in one place ([`rescue`]).

use std::sync::{Arc, atomic::Ordering};

use bytes::Bytes;
use control_http::{Body, problem::Problem, respond};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::{dlq, query, state::AuditState};

/// Internal request bodies are small; 1 MiB bounds them.
const MAX_BODY: usize = 1024 * 1024;
/// Most dead letters one browse returns.
const MAX_DLQ_PAGE: usize = 500;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A refusal with its catalog code.
    #[error("{}", .0.code)]
    Refused(Problem),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Postgres failed.
    #[error(transparent)]
    Store(#[from] control_store::StoreError),
}

impl From<Problem> for AuditError {
    fn from(problem: Problem) -> Self {
        Self::Refused(problem)
    }
}

/// The one mapping from a failure to its answer.
#[must_use]
pub fn rescue(error: &AuditError) -> Problem {
    match error {
        AuditError::Refused(problem) => problem.clone(),
        AuditError::Redis(_) => Problem::new(503, "service_unavailable", "redis is unavailable"),
        AuditError::Store(_) => {
            Problem::new(503, "service_unavailable", "the database is unavailable")
        }
    }
}

/// One request: request id, route, render, log.
pub async fn handle(state: Arc<AuditState>, req: Request<Incoming>) -> Response<Body> {
    let request_id = control_http::request_id(&req);
    let response = match route(&state, req).await {
        Ok(response) => response,
        Err(error) => {
            let problem = rescue(&error);
            if problem.status >= 500 {
                tracing::error!(request_id = %request_id, %error, "request failed");
            }
            respond::json(problem.status, &problem.body(request_id.as_str()))
        }
    };
    respond::with_request_id(response, request_id.as_str())
}

async fn route(state: &AuditState, req: Request<Incoming>) -> Result<Response<Body>, AuditError> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/health") => Ok(respond::json(200, &json!({"ok": true}))),
        (&Method::GET, "/ready") => Ok(respond::ready(state.not_ready().await)),
        (&Method::GET, "/metrics") => metrics(state, &req),
        (_, p) if p.starts_with("/internal/audit/") => internal(state, req).await,
        _ => Err(Problem::new(404, "not_found", "no such route").into()),
    }
}

fn metrics(state: &AuditState, req: &Request<Incoming>) -> Result<Response<Body>, AuditError> {
    if let Some(bearer) = &state.config.metrics_bearer
        && !respond::bearer_matches(req.headers(), bearer)
    {
        return Err(Problem::new(401, "unauthorized", "metrics bearer required").into());
    }
    Ok(respond::bytes(
        200,
        "text/plain; version=0.0.4",
        Bytes::from(state.render_metrics()),
    ))
}

/// The internal routes: the bearer first (503 when no token is configured: the endpoints
/// are off), then the route.
async fn internal(
    state: &AuditState,
    req: Request<Incoming>,
) -> Result<Response<Body>, AuditError> {
    let Some(token) = &state.config.internal_token else {
        return Err(Problem::new(
            503,
            "internal_disabled",
            "CARACAL_INTERNAL_TOKEN is not configured",
        )
        .into());
    };
    if !respond::bearer_matches(req.headers(), token) {
        return Err(Problem::new(401, "unauthorized", "internal bearer required").into());
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
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
    let rest = path.trim_start_matches("/internal/audit/");
    match (&method, rest) {
        (&Method::POST, "query") => run_query(state, &body).await,
        (&Method::GET, "dlq") => {
            let after = param(&query, "after");
            let limit = match param(&query, "limit") {
                None => 100,
                Some(raw) => raw
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_DLQ_PAGE).contains(n))
                    .ok_or_else(|| Problem::new(400, "invalid_query", "limit must be 1..500"))?,
            };
            let mut conn = state.redis.clone();
            let letters = dlq::list(&mut conn, after, limit).await?;
            let next = (letters.len() == limit)
                .then(|| letters.last().map(|l| l.dlq_id.clone()))
                .flatten();
            Ok(respond::json(
                200,
                &json!({"items": letters, "next_cursor": next}),
            ))
        }
        (&Method::POST, "dlq/replay") => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct ReplayBody {
                #[serde(default)]
                ids: Vec<String>,
            }
            let body: ReplayBody = control_http::strict::json(&body, true)?;
            let mut conn = state.redis.clone();
            let done = dlq::replay(&mut conn, &body.ids).await?;
            Ok(respond::json(200, &json!(done)))
        }
        (&Method::POST, "dlq/purge") => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct PurgeBody {
                before: String,
            }
            let body: PurgeBody = control_http::strict::json(&body, true)?;
            let before = chrono::DateTime::parse_from_rfc3339(&body.before)
                .map_err(|_bad| Problem::invalid_body("before", "must be an RFC 3339 time"))?;
            let mut conn = state.redis.clone();
            let purged = dlq::purge_before(&mut conn, before.timestamp_millis()).await?;
            Ok(respond::json(200, &json!({"purged": purged})))
        }
        (&Method::GET, id) if id.starts_with("dlq/") => {
            let id = id.trim_start_matches("dlq/");
            let mut conn = state.redis.clone();
            match dlq::show(&mut conn, id).await? {
                Some(letter) => Ok(respond::json(200, &json!(letter))),
                None => Err(Problem::not_found("dead letter").into()),
            }
        }
        _ => Err(Problem::new(404, "not_found", "no such route").into()),
    }
}

/// `POST /internal/audit/query`: the admin API's audit reads.
async fn run_query(state: &AuditState, body: &[u8]) -> Result<Response<Body>, AuditError> {
    let request: query::QueryRequest = control_http::strict::json(body, true)?;
    match query::run(&state.pool, request).await {
        Ok(answer) => Ok(answer.into_response()),
        Err(query::QueryError::Store(error)) => Err(AuditError::Store(error)),
        Err(refusal) => Err(AuditError::Refused(refusal.problem())),
    }
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

impl AuditState {
    /// The first reason the service is not ready, if any: Postgres, Redis, the stream
    /// group, then the configured bounds.
    pub async fn not_ready(&self) -> Option<&'static str> {
        let db = async {
            let mut conn = self.pool.acquire().await?;
            control_store::audit::partitions::ping(&mut conn).await
        };
        if tokio::time::timeout(std::time::Duration::from_secs(2), db)
            .await
            .map_or(true, |r| r.is_err())
        {
            return Some("postgres_unreachable");
        }
        let mut redis = self.redis.clone();
        let ping: Result<String, _> = redis::cmd("PING").query_async(&mut redis).await;
        if ping.is_err() {
            return Some("redis_unreachable");
        }
        if !self.stream.connected.load(Ordering::Acquire) {
            return Some("stream_consumers_not_ready");
        }
        let bounds = self.config.ready;
        let over = |bound: u64, value: u64| bound > 0 && value > bound;
        if over(
            bounds.dlq_max,
            self.stream.dlq_length.load(Ordering::Relaxed),
        ) {
            return Some("audit_dlq_over_bound");
        }
        if over(bounds.lag_max, self.stream.lag.load(Ordering::Relaxed)) {
            return Some("audit_lag_over_bound");
        }
        let oldest_secs =
            u64::try_from(self.stream.oldest_pending_ms.load(Ordering::Relaxed) / 1000)
                .unwrap_or(0);
        if over(bounds.pel_oldest_secs_max, oldest_secs) {
            return Some("audit_pending_too_old");
        }
        None
    }

    /// `/metrics` text: counters and the stream gauges.
    #[must_use]
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let mut out = self.metrics.render();
        let gauges = [
            (
                "caracal_audit_stream_length",
                self.stream.length.load(Ordering::Relaxed) as i64,
            ),
            (
                "caracal_audit_consumer_lag",
                self.stream.lag.load(Ordering::Relaxed) as i64,
            ),
            (
                "caracal_audit_pending",
                self.stream.pending.load(Ordering::Relaxed) as i64,
            ),
            (
                "caracal_audit_pending_oldest_ms",
                self.stream.oldest_pending_ms.load(Ordering::Relaxed),
            ),
            (
                "caracal_audit_dlq_length",
                self.stream.dlq_length.load(Ordering::Relaxed) as i64,
            ),
            (
                "caracal_audit_dlq_oldest_age_ms",
                self.stream.dlq_oldest_ms.load(Ordering::Relaxed),
            ),
            (
                "caracal_audit_last_read_ms",
                self.metrics.last_read_ms.load(Ordering::Relaxed),
            ),
        ];
        for (name, value) in gauges {
            let _ = writeln!(out, "# TYPE {name} gauge\n{name} {value}");
        }
        let trims = self.stream.trims.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# TYPE caracal_audit_stream_trims_total counter\ncaracal_audit_stream_trims_total {trims}"
        );
        out
    }
}
