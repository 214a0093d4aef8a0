//! Building responses: JSON bodies, the request id header, and denials rendered from the
//! catalog. Nothing here decides a status; callers pass a [`Denial`] or a success.

use control_model::Denial;
use http::{HeaderValue, Response, header};

pub(crate) use control_http::respond::{Body, empty, json, with_request_id};

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
