//! One-shot HTTP(S) calls for the operator commands that talk to running services:
//! `caracal restore verify` asks each role's `/ready` ([`get_status`]) and drives the canary
//! through the admin API, the STS, the Coordinator and the gateway ([`HttpClient::send`]).
//!
//! Every call has a deadline that covers the answer's head and its body, and a body is read
//! up to [`MAX_BODY_BYTES`] only. Bearer values are marked sensitive, and no error text
//! carries a header or a body: a failure names the URL's reachability, never what was sent.

use std::time::Duration;

use bytes::Bytes;
use control_http::jwks::Connector;
use http::{HeaderValue, Method, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

/// The most of an answer's body that is read; a longer one is a [`ProbeError::TooLarge`].
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Why a call has no answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The URL does not parse.
    #[error("{0} is not a URL")]
    BadUrl(String),
    /// The request could not be built (a header value that is not a header value).
    #[error("the request cannot be built ({0})")]
    Build(String),
    /// Connecting, sending or reading failed.
    #[error("request failed ({0})")]
    Failed(String),
    /// No whole answer within the deadline.
    #[error("no answer within {} s", .0.as_secs())]
    TimedOut(Duration),
    /// The body is longer than [`MAX_BODY_BYTES`].
    #[error("the answer's body is over {MAX_BODY_BYTES} bytes")]
    TooLarge,
}

/// What a request carries as its body.
#[derive(Debug, Clone)]
pub enum Payload {
    /// No body.
    Empty,
    /// `application/json`.
    Json(serde_json::Value),
    /// `application/x-www-form-urlencoded`, already encoded.
    Form(String),
}

/// One request: method, absolute URL, an optional bearer, extra headers and the body.
#[derive(Debug, Clone)]
pub struct Outbound<'a> {
    /// The method.
    pub method: Method,
    /// The absolute URL.
    pub url: &'a str,
    /// `Authorization: Bearer <it>`, sent as a sensitive header.
    pub bearer: Option<&'a str>,
    /// More headers (name, value).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub payload: Payload,
}

impl<'a> Outbound<'a> {
    /// A request without bearer, headers or body.
    #[must_use]
    pub fn new(method: Method, url: &'a str) -> Self {
        Self {
            method,
            url,
            bearer: None,
            headers: Vec::new(),
            payload: Payload::Empty,
        }
    }

    /// With `Authorization: Bearer <token>`.
    #[must_use]
    pub fn bearer(mut self, token: &'a str) -> Self {
        self.bearer = Some(token);
        self
    }

    /// With one more header.
    #[must_use]
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// With a JSON body.
    #[must_use]
    pub fn json(mut self, body: serde_json::Value) -> Self {
        self.payload = Payload::Json(body);
        self
    }

    /// With a form body (already encoded).
    #[must_use]
    pub fn form(mut self, encoded: String) -> Self {
        self.payload = Payload::Form(encoded);
        self
    }
}

/// A whole answer: status, `X-Request-Id` and body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The `X-Request-Id` header, when present and text.
    pub request_id: Option<String>,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON, when it is JSON.
    #[must_use]
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The `error` member of a JSON refusal body (every role names its catalog code there).
    #[must_use]
    pub fn error_code(&self) -> Option<String> {
        let body = self.json()?;
        body.get("error")?.as_str().map(str::to_owned)
    }

    /// The refusal's description: `error_description` (STS, gateway) or `message` (admin
    /// API, Coordinator).
    #[must_use]
    pub fn error_description(&self) -> Option<String> {
        let body = self.json()?;
        ["error_description", "message"]
            .iter()
            .find_map(|name| body.get(*name).and_then(|v| v.as_str()))
            .map(str::to_owned)
    }
}

/// An HTTP/1.1 client over plain TCP or TLS (webpki roots), keeping idle connections for
/// its own lifetime only.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<Connector, Full<Bytes>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    /// A client with two idle connections per host at most.
    #[must_use]
    pub fn new() -> Self {
        let https = control_http::jwks::connector(None);
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(2)
                .build(https),
        }
    }

    /// Sends `outbound` and reads the whole answer within `deadline`.
    pub async fn send(
        &self,
        outbound: &Outbound<'_>,
        deadline: Duration,
    ) -> Result<Answer, ProbeError> {
        let request = build(outbound)?;
        let round = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| ProbeError::Failed(causes(&error)))?;
            let status = response.status().as_u16();
            let request_id = response
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = match Limited::new(response.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
            {
                Ok(collected) => collected.to_bytes(),
                Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                    return Err(ProbeError::TooLarge);
                }
                Err(error) => return Err(ProbeError::Failed(format!("body: {error}"))),
            };
            Ok(Answer {
                status,
                request_id,
                body,
            })
        };
        tokio::time::timeout(deadline, round)
            .await
            .map_err(|_elapsed| ProbeError::TimedOut(deadline))?
    }
}

/// The request `outbound` describes.
fn build(outbound: &Outbound<'_>) -> Result<http::Request<Full<Bytes>>, ProbeError> {
    let uri: http::Uri = outbound
        .url
        .parse()
        .map_err(|_bad| ProbeError::BadUrl(outbound.url.to_owned()))?;
    if uri.scheme().is_none() || uri.host().is_none() {
        return Err(ProbeError::BadUrl(outbound.url.to_owned()));
    }
    let mut builder = http::Request::builder()
        .method(outbound.method.clone())
        .uri(uri)
        .header(header::ACCEPT, "application/json");
    if let Some(token) = outbound.bearer {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_bad| ProbeError::Build("the bearer is not a header value".to_owned()))?;
        value.set_sensitive(true);
        builder = builder.header(header::AUTHORIZATION, value);
    }
    for (name, value) in &outbound.headers {
        let value = HeaderValue::from_str(value)
            .map_err(|_bad| ProbeError::Build(format!("{name} is not a header value")))?;
        builder = builder.header(*name, value);
    }
    let (content_type, body) = match &outbound.payload {
        Payload::Empty => (None, Bytes::new()),
        Payload::Json(value) => (
            Some("application/json"),
            Bytes::from(serde_json::to_vec(value).map_err(|e| ProbeError::Build(e.to_string()))?),
        ),
        Payload::Form(encoded) => (
            Some("application/x-www-form-urlencoded"),
            Bytes::copy_from_slice(encoded.as_bytes()),
        ),
    };
    if let Some(content_type) = content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    builder
        .body(Full::new(body))
        .map_err(|e| ProbeError::Build(e.to_string()))
}

/// An error and its causes on one line (`client error (Connect): tcp connect error: …`).
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The status of `GET url`, or why there is none (a bad URL, a refused connection, the
/// deadline).
pub async fn get_status(url: &str, deadline: Duration) -> Result<u16, String> {
    HttpClient::new()
        .send(&Outbound::new(Method::GET, url), deadline)
        .await
        .map(|answer| answer.status)
        .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_a_failure_that_names_the_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let error = HttpClient::new()
            .send(
                &Outbound::new(Method::GET, &format!("http://{addr}/ready")),
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(matches!(error, ProbeError::Failed(_)), "{error}");
        assert!(error.to_string().contains("onnect"), "{error}");
    }

    #[tokio::test]
    async fn a_relative_url_is_refused_before_anything_is_sent() {
        let error = HttpClient::new()
            .send(
                &Outbound::new(Method::GET, "/ready"),
                Duration::from_secs(1),
            )
            .await
            .unwrap_err();
        assert!(matches!(error, ProbeError::BadUrl(_)), "{error}");
    }

    #[test]
    fn the_bearer_is_sensitive_and_the_body_typed() {
        let outbound = Outbound::new(Method::POST, "http://127.0.0.1:1/x")
            .bearer("tok")
            .form("a=b".to_owned());
        let request = build(&outbound).unwrap();
        let auth = request.headers().get(header::AUTHORIZATION).unwrap();
        assert!(auth.is_sensitive());
        assert_eq!(auth.to_str().unwrap(), "Bearer tok");
        assert_eq!(
            request.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/x-www-form-urlencoded"
        );
    }

    #[test]
    fn refusal_bodies_of_every_role_give_code_and_description() {
        let sts = Answer {
            status: 403,
            request_id: None,
            body: Bytes::from_static(
                br#"{"error":"access_denied","error_description":"policy denied"}"#,
            ),
        };
        assert_eq!(sts.error_code().as_deref(), Some("access_denied"));
        assert_eq!(sts.error_description().as_deref(), Some("policy denied"));
        let api = Answer {
            status: 401,
            request_id: None,
            body: Bytes::from_static(br#"{"error":"invalid_admin_token","message":"no"}"#),
        };
        assert_eq!(api.error_description().as_deref(), Some("no"));
        let text = Answer {
            status: 502,
            request_id: None,
            body: Bytes::from_static(b"bad gateway"),
        };
        assert_eq!(text.error_code(), None);
    }
}
