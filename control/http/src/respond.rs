//! Building responses: JSON bodies, empty bodies and the request id header. Nothing here
//! decides a status; callers pass it.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// The body type of every response.
pub type Body = Full<Bytes>;

/// `X-Request-Id`.
pub const REQUEST_ID: &str = "x-request-id";

/// A JSON response with `status` (an invalid status renders as 500).
pub fn json(status: u16, value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_unserializable| b"{}".to_vec());
    bytes(status, "application/json", Bytes::from(body))
}

/// A response with a body of the given media type.
pub fn bytes(status: u16, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// An empty response.
pub fn empty(status: u16) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
}

/// `/ready`: 200 `{"ok":true,"ready":true}`, or 503 `{"ok":false,"ready":false,"reason":…}`
/// (wire-contract §1.1).
pub fn ready(not_ready: Option<&str>) -> Response<Body> {
    match not_ready {
        None => json(200, &serde_json::json!({"ok": true, "ready": true})),
        Some(reason) => json(
            503,
            &serde_json::json!({"ok": false, "ready": false, "reason": reason}),
        ),
    }
}

/// Whether `headers` carry `Authorization: Bearer <expected>` (scheme case-insensitive),
/// compared in constant time.
pub fn bearer_matches(headers: &http::HeaderMap, expected: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_at_checked(7))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer "))
        .is_some_and(|(_, token)| {
            control_crypto::ct_eq(token.trim().as_bytes(), expected.as_bytes())
        })
}

/// Sets `X-Request-Id` (every response carries it, errors included).
pub fn with_request_id(mut response: Response<Body>, request_id: &str) -> Response<Body> {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}
