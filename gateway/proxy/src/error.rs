//! The one place that maps what broke to HTTP (style §3): `rescue` is a `match` over
//! [`GatewayError`] without a wildcard arm, so a new variant does not compile until someone
//! decides its status and code. The client sees the catalog body only; the cause goes to the
//! audit draft and the request's log line.

use control_model::{Denial, ErrorCode};

/// Something broke while a request was decided or forwarded (a denial is not an error).
#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayError {
    /// Redis could not answer the single-use check (step 12).
    #[error("replay store unavailable: {0}")]
    ReplayStoreUnavailable(String),
    /// Redis could not answer the rate-limit script (step 24).
    #[error("rate limiter unavailable: {0}")]
    RateLimiterUnavailable(String),
    /// The authority view could not load a record, session or edge (steps 13–17).
    #[error(transparent)]
    AuthorityUnavailable(#[from] gateway_state::ViewError),
    /// The zone's bundle could not be built, or the engine failed (step 23).
    #[error("policy engine: {0}")]
    PolicyEngine(String),
    /// A bound plugin could not run (step 25 / 31).
    #[error("plugin {plugin}: {cause}")]
    PluginFailed {
        /// Plugin name.
        plugin: String,
        /// What happened.
        cause: String,
    },
    /// The resource mandate could not be signed (step 30).
    #[error("resource mandate: {0}")]
    MandateSigning(String),
    /// The outbound request could not be built (step 31).
    #[error("outbound request: {0}")]
    RequestBuild(String),
    /// The audit emitter can take no event (admission).
    #[error("audit evidence unavailable")]
    AuditUnavailable,
}

/// The catalog answer for an error; the description never carries the cause.
pub(crate) fn rescue(error: &GatewayError) -> Denial {
    match error {
        GatewayError::ReplayStoreUnavailable(_) => {
            Denial::unavailable("replay protection unavailable")
        }
        GatewayError::RateLimiterUnavailable(_) => Denial::unavailable("rate limit unavailable"),
        GatewayError::AuthorityUnavailable(_) => {
            Denial::unavailable("revocation state unavailable")
        }
        GatewayError::PolicyEngine(_) => Denial::new(
            503,
            ErrorCode::PolicyEvalFailed,
            "policy evaluation unavailable",
        ),
        GatewayError::PluginFailed { plugin, .. } => Denial::new(
            503,
            ErrorCode::PluginFailed,
            format!("plugin {plugin} failed"),
        ),
        GatewayError::MandateSigning(_) => Denial::internal(""),
        GatewayError::RequestBuild(_) => Denial::new(
            400,
            ErrorCode::InternalError,
            "upstream request build failed",
        ),
        GatewayError::AuditUnavailable => Denial::unavailable("audit evidence unavailable"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_catalog_answer() {
        let cases = [
            (
                GatewayError::ReplayStoreUnavailable("x".into()),
                503,
                "sts_unavailable",
                "replay protection unavailable",
            ),
            (
                GatewayError::RateLimiterUnavailable("x".into()),
                503,
                "sts_unavailable",
                "rate limit unavailable",
            ),
            (
                GatewayError::AuthorityUnavailable(gateway_state::ViewError("x".into())),
                503,
                "sts_unavailable",
                "revocation state unavailable",
            ),
            (
                GatewayError::PolicyEngine("x".into()),
                503,
                "policy_eval_failed",
                "policy evaluation unavailable",
            ),
            (
                GatewayError::PluginFailed {
                    plugin: "p".into(),
                    cause: "trap".into(),
                },
                503,
                "plugin_failed",
                "plugin p failed",
            ),
            (
                GatewayError::MandateSigning("x".into()),
                500,
                "internal_error",
                "",
            ),
            (
                GatewayError::RequestBuild("x".into()),
                400,
                "internal_error",
                "upstream request build failed",
            ),
            (
                GatewayError::AuditUnavailable,
                503,
                "sts_unavailable",
                "audit evidence unavailable",
            ),
        ];
        for (error, status, code, description) in cases {
            let denial = rescue(&error);
            assert_eq!(
                (
                    denial.status,
                    denial.code.as_str(),
                    denial.description.as_ref()
                ),
                (status, code, description),
                "{error}"
            );
        }
    }

    #[test]
    fn no_cause_reaches_the_description() {
        let denial = rescue(&GatewayError::PolicyEngine(
            "redis://secret-host:6379".into(),
        ));
        assert!(!denial.description.contains("secret-host"));
    }
}
