//! The STS boundary error and the one place that maps it to a catalog answer.
//!
//! A denial that policy or validation chose travels as a [`Denial`] value; `StsError` is
//! for things that broke. [`rescue`] is a `match` without a wildcard arm: a new cause does
//! not compile until someone decides its status and code. The client sees only the catalog
//! code and a fixed description; the cause goes to the log line of the request.

use control_model::{Denial, ErrorCode};
use control_store::StoreError;

/// Something broke while answering a request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StsError {
    /// Postgres failed or timed out.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Postgres failed (through the store).
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A signing key could not be created, decrypted or used.
    #[error("signing key unavailable: {0}")]
    KeyUnavailable(String),
    /// The policy engine failed.
    #[error("policy engine: {0}")]
    PolicyEngine(String),
    /// An audit event could not be accepted by the queue, the stream or the replay volume.
    #[error("audit evidence unavailable: {0}")]
    AuditUnavailable(String),
    /// An invariant did not hold.
    #[error("internal: {0}")]
    Internal(String),
}

/// Maps a failure to its catalog answer.
pub(crate) fn rescue(err: &StsError) -> Denial {
    match err {
        StsError::Database(_) | StsError::Store(_) => Denial::unavailable("database unavailable"),
        StsError::KeyUnavailable(_) => Denial::internal("token issuance failed"),
        StsError::PolicyEngine(_) => Denial::new(
            503,
            ErrorCode::PolicyEvalFailed,
            "policy evaluation unavailable",
        ),
        StsError::AuditUnavailable(_) => Denial::unavailable("audit evidence unavailable"),
        StsError::Internal(_) => Denial::internal("internal error"),
    }
}
