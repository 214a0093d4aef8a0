//! Step 32: dispatch, then the response the client receives (filtered headers, governed
//! body). The context moves into the body, which finishes it when the stream ends.

use std::{sync::Arc, time::Duration};

use control_model::{Denial, ErrorCode};
use gateway_state::Anchors;
use http::{HeaderValue, Response, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use super::{Authenticated, Gateway, Outcome, ProxyBody, Refusal, RequestCtx, prepare::Outbound};
use crate::{
    error::GatewayError,
    headers,
    upstream::{GovernedBody, InboundBody, InboundFlags},
};

/// An upstream answered: what the response needs to be assembled.
pub(crate) struct Answered {
    pub(crate) response: Response<Incoming>,
    pub(crate) anchors: Anchors,
    pub(crate) token_exp: i64,
}

impl Gateway {
    pub(super) async fn forward(
        &self,
        ctx: &mut RequestCtx,
        auth: &Authenticated,
        outbound: Outbound,
    ) -> Result<Outcome, GatewayError> {
        let limits = &self.config.limits;
        let refuse =
            |status: u16, code: ErrorCode, description: &'static str, cause: &'static str| {
                Ok(Outcome::Denied(Refusal::caused(
                    Denial::new(status, code, description),
                    cause,
                )))
            };
        let declared = outbound
            .request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limits.max_request_bytes) {
            return refuse(
                413,
                ErrorCode::PayloadTooLarge,
                "request too large",
                "payload_too_large",
            );
        }
        let flags = Arc::new(InboundFlags::default());
        let (parts, body) = outbound.request.into_parts();
        let body = InboundBody::new(
            body,
            limits.max_request_bytes,
            limits.read_timeout,
            Arc::clone(&flags),
        );
        let request = http::Request::from_parts(parts, body);
        let sent = tokio::time::timeout(limits.upstream_timeout, self.client.send(request)).await;
        let response = match sent {
            Err(_elapsed) => {
                ctx.audit.set("error_kind", "transport_error");
                return refuse(
                    504,
                    ErrorCode::InternalError,
                    "upstream timeout",
                    "upstream_timeout",
                );
            }
            Ok(Err(error)) => {
                use std::sync::atomic::Ordering;
                ctx.audit.set("error_kind", "transport_error");
                if flags.too_large.load(Ordering::Acquire) {
                    return refuse(
                        413,
                        ErrorCode::PayloadTooLarge,
                        "request too large",
                        "payload_too_large",
                    );
                }
                if flags.broken.load(Ordering::Acquire) {
                    return refuse(
                        400,
                        ErrorCode::InvalidToken,
                        "malformed request body",
                        "request_body_invalid",
                    );
                }
                if flags.timed_out.load(Ordering::Acquire) {
                    return refuse(
                        408,
                        ErrorCode::InternalError,
                        "request body read timeout",
                        "request_timeout",
                    );
                }
                if crate::guard::is_not_addressable(&error) {
                    return refuse(
                        502,
                        ErrorCode::InternalError,
                        "upstream not addressable",
                        "upstream_not_addressable",
                    );
                }
                tracing::info!(request_id = %ctx.request_id, %error, "upstream unreachable");
                return refuse(
                    502,
                    ErrorCode::InternalError,
                    "upstream unreachable",
                    "upstream_unreachable",
                );
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        ctx.audit.set("upstream_status", status);
        ctx.audit.set(
            "result_class",
            match status {
                200..=299 => "success",
                300..=399 => "redirect",
                400..=499 => "client_error",
                _ => "server_error",
            },
        );
        Ok(Outcome::Forwarded(Answered {
            response,
            anchors: auth.anchors.clone(),
            token_exp: auth.mandate.exp as i64,
        }))
    }

    /// The client's response: filtered headers, the gateway's headers, the governed body.
    pub(super) fn respond(&self, mut ctx: RequestCtx, answered: Answered) -> Response<ProxyBody> {
        let (mut parts, body) = answered.response.into_parts();
        headers::filter_response(&mut parts.headers);
        let out = &mut parts.headers;
        let left = answered.token_exp - chrono::Utc::now().timestamp();
        if left > 0 {
            out.insert("x-caracal-token-expires-in", HeaderValue::from(left));
        }
        if let Ok(value) = HeaderValue::from_str(&ctx.request_id) {
            out.insert("x-request-id", value);
        }
        out.insert(
            header::TRAILER,
            HeaderValue::from_static("X-Caracal-Revoked"),
        );
        let event_stream = out
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/event-stream"));
        let framed_by_length = out.contains_key(header::CONTENT_LENGTH);
        let streamed = event_stream || !framed_by_length;
        let idle = if streamed {
            self.config.limits.stream_idle_timeout
        } else {
            self.config.limits.write_timeout
        };
        ctx.status = parts.status.as_u16();
        self.metrics.record_forwarded();
        let metrics = Arc::clone(&self.metrics);
        let body = GovernedBody::new(
            body,
            Arc::clone(self.state.view()),
            answered.anchors,
            framed_by_length,
            idle.max(Duration::from_millis(1)),
            ctx,
            Arc::new(move || metrics.stream_revoked()),
        );
        Response::from_parts(parts, body.boxed_unsync())
    }
}
