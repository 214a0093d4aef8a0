//! The audit service as the admin API reaches it (storage §8.9): the role `caracal_api` has
//! no rights on `audit_events`, so the audit reads are answered by the audit service. A
//! separate API forwards them to its internal `POST /internal/audit/query` (bearer
//! `CARACAL_INTERNAL_TOKEN`); in `caracal all` the same query runs in process, through a
//! small pool that logs in as `caracal_audit` (settled point 3), with the same deadline and
//! the same answers.
//!
//! Every call has a deadline and a bound on the answer it buffers. A missing token, a
//! connection failure, a deadline, an oversized or malformed answer, and any refusal that
//! is not the caller's fault (the audit service refusing our bearer, its database down)
//! are all the same outcome for the client: 503 `audit_unavailable`; the cause goes to the
//! log. Only `invalid_query`, `invalid_cursor` and `request_not_found` are passed on.

use std::time::Duration;

use bytes::Bytes;
use control_http::jwks::Connector;
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use zeroize::Zeroizing;

use crate::{
    config::ApiConfig,
    error::{ApiError, Problem},
};

/// How long a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a whole query may take, answer included (a large CSV export is slow).
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer buffered (the audit service stops a page at 16 MiB).
pub const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;
/// The header carrying a CSV export's continuation.
pub const NEXT_CURSOR_HEADER: &str = "x-next-cursor";

/// A successful answer of the audit service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `application/json` or `text/csv; charset=utf-8` (the only two accepted).
    pub content_type: &'static str,
    /// The continuation of a CSV export.
    pub next_cursor: Option<String>,
    /// The body, as the audit service rendered it.
    pub body: Bytes,
}

/// The admin API's way to the audit reads.
pub struct AuditService {
    link: Link,
}

#[allow(
    clippy::large_enum_variant,
    reason = "one per process: the size of the rarer variant does not matter"
)]
enum Link {
    /// The audit service's internal endpoint.
    Remote {
        client: Client<Connector, Full<Bytes>>,
        query_url: String,
        token: Option<Zeroizing<String>>,
    },
    /// The ledger's query run in this process, through a `caracal_audit` pool.
    InProcess(sqlx::PgPool),
}

impl std::fmt::Debug for AuditService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.link {
            Link::Remote { query_url, .. } => f
                .debug_struct("AuditService")
                .field("query_url", query_url)
                .finish_non_exhaustive(),
            Link::InProcess(_) => f.write_str("AuditService(in process)"),
        }
    }
}

impl AuditService {
    /// A client for `config.audit_url` with `config.internal_token`.
    pub fn new(config: &ApiConfig) -> Self {
        let https = control_http::jwks::connector(Some(CONNECT_TIMEOUT));
        Self {
            link: Link::Remote {
                client: Client::builder(TokioExecutor::new())
                    .pool_max_idle_per_host(4)
                    .build(https),
                query_url: format!("{}/internal/audit/query", config.audit_url),
                token: config.internal_token.clone(),
            },
        }
    }

    /// The reads run in this process through `pool`, which must log in as `caracal_audit`.
    #[must_use]
    pub fn in_process(pool: sqlx::PgPool) -> Self {
        Self {
            link: Link::InProcess(pool),
        }
    }

    /// Sends `query` (the JSON body of the internal endpoint) on behalf of request
    /// `request_id`.
    ///
    /// # Errors
    ///
    /// [`ApiError::Refused`] with the audit service's `invalid_query`, `invalid_cursor` or
    /// `request_not_found`; [`ApiError::AuditUnavailable`] for everything else.
    pub async fn query(
        &self,
        query: &serde_json::Value,
        request_id: &str,
    ) -> Result<Answer, ApiError> {
        match &self.link {
            Link::Remote {
                client,
                query_url,
                token,
            } => {
                let token = token.as_ref().ok_or_else(|| {
                    ApiError::AuditUnavailable(
                        "CARACAL_INTERNAL_TOKEN is not configured".to_owned(),
                    )
                })?;
                remote(client, query_url, token, query, request_id).await
            }
            Link::InProcess(pool) => in_process(pool, query).await,
        }
    }
}

/// One round trip to the internal endpoint.
async fn remote(
    client: &Client<Connector, Full<Bytes>>,
    query_url: &str,
    token: &str,
    query: &serde_json::Value,
    request_id: &str,
) -> Result<Answer, ApiError> {
    let bearer = Zeroizing::new(format!("Bearer {token}"));
    let mut builder = Request::post(query_url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/csv");
    if let Ok(value) = HeaderValue::from_str(request_id) {
        builder = builder.header(control_http::respond::REQUEST_ID, value);
    }
    let mut request = builder
        .body(Full::new(Bytes::from(query.to_string())))
        .map_err(|e| ApiError::AuditUnavailable(format!("cannot build the request: {e}")))?;
    let mut authorization = HeaderValue::from_str(bearer.as_str()).map_err(|_invalid| {
        ApiError::AuditUnavailable("the internal token is not a header value".to_owned())
    })?;
    authorization.set_sensitive(true);
    request
        .headers_mut()
        .insert(header::AUTHORIZATION, authorization);
    let round = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| ApiError::AuditUnavailable(format!("request failed: {e}")))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| ApiError::AuditUnavailable(format!("answer body: {e}")))?
            .to_bytes();
        Ok::<_, ApiError>((status, headers, body))
    };
    let (status, headers, body) = tokio::time::timeout(QUERY_TIMEOUT, round)
        .await
        .map_err(|_elapsed| no_answer())??;
    interpret(status, &headers, body)
}

/// The ledger's query, run here.
async fn in_process(pool: &sqlx::PgPool, query: &serde_json::Value) -> Result<Answer, ApiError> {
    use control_audit::query::{self, QueryError};
    let request: query::QueryRequest = serde_json::from_value(query.clone()).map_err(|e| {
        ApiError::AuditUnavailable(format!("the query is not the audit service's: {e}"))
    })?;
    let answer = tokio::time::timeout(QUERY_TIMEOUT, query::run(pool, request))
        .await
        .map_err(|_elapsed| no_answer())?;
    match answer {
        Ok(answer) => Ok(Answer {
            content_type: if answer.content_type == query::CSV_TYPE {
                "text/csv; charset=utf-8"
            } else {
                "application/json"
            },
            next_cursor: answer.next_cursor,
            body: answer.body,
        }),
        Err(QueryError::Store(error)) => Err(ApiError::AuditUnavailable(format!(
            "the ledger's database: {error}"
        ))),
        Err(refusal) => Err(refused(
            refusal.status(),
            Some((
                refusal.code().to_owned(),
                refusal.problem().message.into_owned(),
            )),
        )),
    }
}

fn no_answer() -> ApiError {
    ApiError::AuditUnavailable(format!("no answer within {} s", QUERY_TIMEOUT.as_secs()))
}

/// The audit service's answer as the API's outcome.
fn interpret(status: u16, headers: &http::HeaderMap, body: Bytes) -> Result<Answer, ApiError> {
    if status == 200 {
        let media_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase());
        let content_type = match media_type.as_deref() {
            Some("application/json") => "application/json",
            Some("text/csv") => "text/csv; charset=utf-8",
            _ => {
                return Err(ApiError::AuditUnavailable(
                    "answer of an unexpected content type".to_owned(),
                ));
            }
        };
        let next_cursor = headers
            .get(NEXT_CURSOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|c| !c.is_empty() && c.len() <= 1024)
            .map(str::to_owned);
        return Ok(Answer {
            content_type,
            next_cursor,
            body,
        });
    }
    let refusal: Option<(String, String)> = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let code = v.get("error")?.as_str()?.to_owned();
            let message = v
                .get("message")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned();
            Some((code, message))
        });
    Err(refused(status, refusal))
}

/// A refusal of the audit service (status, catalog code and message) as the API's: the
/// caller's mistakes are passed on, everything else is `audit_unavailable`.
fn refused(status: u16, refusal: Option<(String, String)>) -> ApiError {
    match (status, refusal) {
        (400, Some((code, message))) if code == "invalid_query" || code == "invalid_cursor" => {
            Problem::new(400, code, control_http::strict::printable(&message)).into()
        }
        (404, Some((code, _))) if code == "request_not_found" => Problem::new(
            404,
            "request_not_found",
            "no audit event has this request id",
        )
        .into(),
        (status, refusal) => ApiError::AuditUnavailable(format!(
            "audit service answered {status} {}",
            refusal.map(|(code, _)| code).unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::rescue;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn problem(outcome: Result<Answer, ApiError>) -> Problem {
        rescue(&outcome.unwrap_err())
    }

    #[test]
    fn a_success_keeps_its_body_content_type_and_continuation() {
        let answer = interpret(
            200,
            &headers(&[
                ("content-type", "text/csv; charset=utf-8"),
                (NEXT_CURSOR_HEADER, "abc"),
            ]),
            Bytes::from_static(b"id\r\n"),
        )
        .unwrap();
        assert_eq!(answer.content_type, "text/csv; charset=utf-8");
        assert_eq!(answer.next_cursor.as_deref(), Some("abc"));
        assert_eq!(answer.body, Bytes::from_static(b"id\r\n"));
        let json = interpret(
            200,
            &headers(&[("content-type", "application/json")]),
            Bytes::new(),
        );
        assert_eq!(json.unwrap().content_type, "application/json");
        let html = interpret(
            200,
            &headers(&[("content-type", "text/html")]),
            Bytes::new(),
        );
        assert_eq!(problem(html).code, "audit_unavailable");
    }

    #[test]
    fn only_the_callers_own_mistakes_pass_through() {
        let body = |code: &str| {
            Bytes::from(format!(
                r#"{{"error":"{code}","message":"limit must be 1..1000"}}"#
            ))
        };
        let passed = problem(interpret(
            400,
            &http::HeaderMap::new(),
            body("invalid_query"),
        ));
        assert_eq!(
            (passed.status, passed.code.as_ref()),
            (400, "invalid_query")
        );
        assert_eq!(passed.message, "limit must be 1..1000");
        let cursor = problem(interpret(
            400,
            &http::HeaderMap::new(),
            body("invalid_cursor"),
        ));
        assert_eq!(cursor.code, "invalid_cursor");
        let missing = problem(interpret(
            404,
            &http::HeaderMap::new(),
            body("request_not_found"),
        ));
        assert_eq!(
            (missing.status, missing.code.as_ref()),
            (404, "request_not_found")
        );
        for (status, code) in [
            (401, "unauthorized"),
            (404, "not_found"),
            (503, "service_unavailable"),
            (503, "internal_disabled"),
            (400, "invalid_body"),
            (500, "anything"),
        ] {
            let unavailable = problem(interpret(status, &http::HeaderMap::new(), body(code)));
            assert_eq!(
                (unavailable.status, unavailable.code.as_ref()),
                (503, "audit_unavailable"),
                "{status} {code}"
            );
        }
        let garbage = problem(interpret(
            400,
            &http::HeaderMap::new(),
            Bytes::from_static(b"<html>"),
        ));
        assert_eq!(garbage.code, "audit_unavailable");
    }
}
