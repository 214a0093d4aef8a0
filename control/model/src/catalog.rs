//! The error catalog (authority-and-policy.md §10) and the denial value every STS and
//! gateway outcome that is not a success travels as.

use std::borrow::Cow;

/// Every `error` code an STS or gateway body may carry. Only these may appear on the wire
/// (wire-contract §1.2); each variant spells its code once, in [`ErrorCode::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `invalid_token`: malformed exchange (400), invalid token (401), wrong method or media
    /// type (405 / 415).
    InvalidToken,
    /// `access_denied`: credentials (401), policy or binding denials (403), decision
    /// binding mismatch (409).
    AccessDenied,
    /// `zone_invalid`: the application is registered in another zone.
    ZoneInvalid,
    /// `operation_not_permitted`: operation floor.
    OperationNotPermitted,
    /// `interaction_required`: an approval hold.
    InteractionRequired,
    /// `approval_consumed`: an approval already spent.
    ApprovalConsumed,
    /// `policy_eval_failed`: engine error (503) or incomplete evaluation (403).
    PolicyEvalFailed,
    /// `provider_rate_limited`: authentication-failure block or limiter unavailable.
    ProviderRateLimited,
    /// `rate_limited`: per-resource gateway limit.
    RateLimited,
    /// `sts_unavailable`: a dependency the decision needs is unavailable (fail closed).
    StsUnavailable,
    /// `credential_expired_not_renewable`.
    CredentialExpiredNotRenewable,
    /// `http_request_failed`: upstream credential unavailable.
    HttpRequestFailed,
    /// `plugin_failed`: a plugin trapped, timed out or misbehaved.
    PluginFailed,
    /// `internal_error`.
    InternalError,
    /// `payload_too_large`.
    PayloadTooLarge,
    /// `resource_not_found`: unknown approval, JWKS zone or key.
    ResourceNotFound,
}

impl ErrorCode {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::ZoneInvalid => "zone_invalid",
            ErrorCode::OperationNotPermitted => "operation_not_permitted",
            ErrorCode::InteractionRequired => "interaction_required",
            ErrorCode::ApprovalConsumed => "approval_consumed",
            ErrorCode::PolicyEvalFailed => "policy_eval_failed",
            ErrorCode::ProviderRateLimited => "provider_rate_limited",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::StsUnavailable => "sts_unavailable",
            ErrorCode::CredentialExpiredNotRenewable => "credential_expired_not_renewable",
            ErrorCode::HttpRequestFailed => "http_request_failed",
            ErrorCode::PluginFailed => "plugin_failed",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::ResourceNotFound => "resource_not_found",
        }
    }
}

/// A catalog outcome: status, code and the client-visible description. A denial is a
/// value, not an error: policy chose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// HTTP status.
    pub status: u16,
    /// Catalog code.
    pub code: ErrorCode,
    /// `error_description`; omitted from the body when empty.
    pub description: Cow<'static, str>,
}

impl Denial {
    /// A denial with a description.
    pub fn new(status: u16, code: ErrorCode, description: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            code,
            description: description.into(),
        }
    }

    /// 400 `invalid_token`.
    pub fn bad_request(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(400, ErrorCode::InvalidToken, description)
    }

    /// 401 `access_denied`.
    pub fn unauthorized(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(401, ErrorCode::AccessDenied, description)
    }

    /// 403 `access_denied`.
    pub fn forbidden(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(403, ErrorCode::AccessDenied, description)
    }

    /// 503 `sts_unavailable`.
    pub fn unavailable(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(503, ErrorCode::StsUnavailable, description)
    }

    /// 500 `internal_error`.
    pub fn internal(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(500, ErrorCode::InternalError, description)
    }

    /// The body `{"error","error_description"?,"requestId"?}` (wire-contract §1.2), with
    /// empty members omitted.
    pub fn body(&self, request_id: &str) -> serde_json::Value {
        let mut body = serde_json::Map::new();
        body.insert("error".to_owned(), self.code.as_str().into());
        if !self.description.is_empty() {
            body.insert(
                "error_description".to_owned(),
                self.description.as_ref().into(),
            );
        }
        if !request_id.is_empty() {
            body.insert("requestId".to_owned(), request_id.into());
        }
        serde_json::Value::Object(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_omits_empty_members_and_uses_camel_case_request_id() {
        let d = Denial::forbidden("policy denied (no_rule_matched)");
        assert_eq!(
            d.body("req-1").to_string(),
            r#"{"error":"access_denied","error_description":"policy denied (no_rule_matched)","requestId":"req-1"}"#
        );
        assert_eq!(
            Denial::new(415, ErrorCode::InvalidToken, "")
                .body("")
                .to_string(),
            r#"{"error":"invalid_token"}"#
        );
    }
}
