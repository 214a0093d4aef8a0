//! The admin API's outcomes that are not successes, and the one place that renders them.
//!
//! A refusal the API chose (bad input, missing row, capability) is a [`Problem`] value with
//! its status and catalog code. [`ApiError`] is for things that broke; [`rescue`] maps each
//! cause to a fixed answer without a wildcard arm, and the cause goes only to the log line.

use std::borrow::Cow;

use control_store::StoreError;
use serde_json::{Value, json};

/// A refusal: status, `error` code, message and optional details.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// HTTP status.
    pub status: u16,
    /// The snake_case `error` code (wire-contract §6.1).
    pub code: Cow<'static, str>,
    /// Human-readable message; never carries a secret or echoes a raw body.
    pub message: Cow<'static, str>,
    /// `details`, e.g. `{"issues":[{path,message}]}`.
    pub details: Option<Value>,
    /// `error_description`: a machine-readable refinement of the code (policy validation).
    pub description: Option<String>,
}

impl Problem {
    /// A problem without details.
    pub fn new(
        status: u16,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            details: None,
            description: None,
        }
    }

    /// Adds `error_description`.
    #[must_use]
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Adds details.
    #[must_use]
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// 400 `invalid_body` with one issue.
    pub fn invalid_body(path: &str, message: impl Into<String>) -> Self {
        Self::new(400, "invalid_body", "request body is invalid").with_details(json!({
            "issues": [{"path": path, "message": message.into()}]
        }))
    }

    /// 404 `<thing>_not_found`.
    pub fn not_found(thing: &'static str) -> Self {
        Self::new(
            404,
            format!("{thing}_not_found"),
            format!("{thing} not found"),
        )
    }

    /// The JSON body: `{"error","message","request_id","details"?,"error_description"?}`.
    pub fn body(&self, request_id: &str) -> Value {
        let mut body = json!({
            "error": self.code,
            "message": self.message,
            "request_id": request_id,
        });
        if let Some(map) = body.as_object_mut() {
            if let Some(details) = &self.details {
                map.insert("details".to_owned(), details.clone());
            }
            if let Some(description) = &self.description {
                map.insert(
                    "error_description".to_owned(),
                    Value::String(description.clone()),
                );
            }
        }
        body
    }
}

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
