//! The Coordinator's outcomes that are not successes, and the one place that renders them.
//!
//! A refusal the Coordinator chose (authentication, a start or narrowing rule, a missing
//! row) is a [`Problem`] value with its status and catalog code (authority §10). A
//! [`CoordError`] is something that broke; [`rescue`] maps each cause to a fixed answer
//! without a wildcard arm, and the cause goes only to the log line.

use control_store::StoreError;

pub use control_http::problem::Problem;

/// Something broke while answering.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// A refusal chosen by the Coordinator (not a failure; carried through `?`).
    #[error("refused: {}", .0.code)]
    Refused(Problem),
    /// Postgres failed or timed out.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Postgres failed (through the store).
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The STS key set of a zone could not be fetched: no mandate of the zone can be
    /// verified, so the request is refused (fail closed).
    #[error("key set: {0}")]
    KeySet(String),
    /// An invariant did not hold.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<Problem> for CoordError {
    fn from(problem: Problem) -> Self {
        CoordError::Refused(problem)
    }
}

/// Maps an outcome to the problem the client sees.
pub fn rescue(err: &CoordError) -> Problem {
    match err {
        CoordError::Refused(problem) => problem.clone(),
        CoordError::Database(_) | CoordError::Store(_) => {
            Problem::new(503, "database_unavailable", "database unavailable")
        }
        CoordError::KeySet(_) => Problem::new(
            503,
            "sts_unavailable",
            "the zone's signing keys cannot be fetched",
        ),
        CoordError::Internal(_) => Problem::new(500, "internal_error", "internal error"),
    }
}

/// A refusal with the catalog code as its message.
pub fn refuse(status: u16, code: &'static str) -> Problem {
    Problem::new(status, code, code.replace('_', " "))
}

/// The SQLSTATE of a database error, if any.
pub fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_never_reach_the_client_with_their_cause() {
        let db = rescue(&CoordError::Internal("secret detail".into()));
        assert_eq!((db.status, db.code.as_ref()), (500, "internal_error"));
        assert!(!db.message.contains("secret"));
        let keys = rescue(&CoordError::KeySet("http://sts: refused".into()));
        assert_eq!((keys.status, keys.code.as_ref()), (503, "sts_unavailable"));
        let refused = rescue(&refuse(409, "session_lease_fenced").into());
        assert_eq!(refused.code, "session_lease_fenced");
        assert_eq!(refused.message, "session lease fenced");
    }
}
