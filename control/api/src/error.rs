//! The admin API's outcomes that are not successes, and the one place that renders them.
//!
//! A refusal the API chose (bad input, missing row, capability) is a [`Problem`] value with
//! its status and catalog code. [`ApiError`] is for things that broke; [`rescue`] maps each
//! cause to a fixed answer without a wildcard arm, and the cause goes only to the log line.

use control_store::StoreError;

pub use control_http::problem::Problem;

/// Something broke while answering.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A refusal chosen by the API (not a failure; carried through `?`).
    #[error("refused: {}", .0.code)]
    Refused(Problem),
    /// Postgres failed or timed out.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Postgres failed (through the store).
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(String),
    /// The audit service, which answers the audit reads, cannot be used (no internal
    /// token, unreachable, too slow, or refusing the API itself).
    #[error("audit service: {0}")]
    AuditUnavailable(String),
    /// Hashing or sealing failed.
    #[error("crypto: {0}")]
    Crypto(String),
    /// An invariant did not hold.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<Problem> for ApiError {
    fn from(problem: Problem) -> Self {
        ApiError::Refused(problem)
    }
}

/// Maps an outcome to the problem the client sees.
pub fn rescue(err: &ApiError) -> Problem {
    match err {
        ApiError::Refused(problem) => problem.clone(),
        ApiError::Database(_) | ApiError::Store(_) => {
            Problem::new(503, "database_unavailable", "database unavailable")
        }
        ApiError::Redis(_) => Problem::new(503, "redis_unavailable", "redis unavailable"),
        ApiError::AuditUnavailable(_) => {
            Problem::new(503, "audit_unavailable", "audit service unavailable")
        }
        ApiError::Crypto(_) | ApiError::Internal(_) => {
            Problem::new(500, "internal_error", "internal error")
        }
    }
}

/// The SQLSTATE of a database error, if any.
pub fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}
