//! Building responses: JSON bodies, the request id header, and denials rendered from the
//! catalog. Nothing here decides a status; callers pass a [`Denial`] or a success.

use bytes::Bytes;
use control_model::Denial;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// The body type of every STS response.
pub(crate) type Body = Full<Bytes>;

/// `X-Request-Id`.
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// A JSON response.
pub(crate) fn json(status: u16, value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_unserializable| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A catalog denial: `{"error","error_description"?,"requestId"?}`.
pub(crate) fn denial(denial: &Denial, request_id: &str) -> Response<Body> {
    let mut response = json(denial.status, &denial.body(request_id));
    if denial.code == control_model::ErrorCode::InteractionRequired {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"interaction_required\""),
        );
    }
    response
}

/// An empty response.
pub(crate) fn empty(status: u16) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
}

/// Sets `X-Request-Id` (every response carries it, errors included).
pub(crate) fn with_request_id(mut response: Response<Body>, request_id: &str) -> Response<Body> {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}
