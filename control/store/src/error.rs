//! Errors of this crate. Messages name the setting, table or file at fault and never carry
//! a URL, a password or row contents.

/// A setting from the environment is missing or malformed. The message names the variable
/// and the problem, never its value (it may be a URL with a password).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No database URL is configured for this service.
    #[error("{var} is not set (the database to connect to)")]
    MissingUrl {
        /// The variable that should have been set.
        var: String,
    },
    /// A URL could not be parsed.
    #[error("{var} is not a valid postgres:// URL")]
    BadUrl {
        /// The variable holding the URL.
        var: String,
    },
    /// A numeric setting is not a number, or out of range.
    #[error("{var} must be {expected}")]
    BadNumber {
        /// The variable.
        var: String,
        /// What was expected, e.g. "an integer between 1 and 1000".
        expected: &'static str,
    },
    /// A `_FILE` variable names a file that cannot be read.
    #[error("{var}: cannot read the file it names: {source}")]
    File {
        /// The variable.
        var: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Configuration was rejected before any connection was made.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database could not be reached in time.
    #[error("cannot connect to the database as {role}: {reason}")]
    Connect {
        /// The login role used.
        role: String,
        /// What went wrong, without the URL.
        reason: String,
    },
    /// A statement failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// True when retrying the transaction may succeed: serialization failure (`40001`) or
    /// deadlock (`40P01`). Callers retry such transactions up to 3 times (§13).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Database(err) => {
                sqlstate(err).is_some_and(|code| code == "40001" || code == "40P01")
            }
            _ => false,
        }
    }

    /// True when the failure is expected to pass by itself (storage §8.4 step 5): the
    /// database unreachable or restarting, too many connections, out of memory, a
    /// serialization failure or deadlock, or a timeout. Everything else is permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Config(_) => false,
            StoreError::Connect { .. } => true,
            StoreError::Database(err) => match sqlstate(err) {
                Some(code) => {
                    code.starts_with("08")
                        || matches!(
                            code.as_str(),
                            "40001"
                                | "40P01"
                                | "53300"
                                | "53400"
                                | "57P01"
                                | "57P02"
                                | "57P03"
                                | "57014"
                                | "55P03"
                        )
                }
                None => !matches!(
                    err,
                    sqlx::Error::ColumnDecode { .. }
                        | sqlx::Error::ColumnNotFound(_)
                        | sqlx::Error::ColumnIndexOutOfBounds { .. }
                        | sqlx::Error::TypeNotFound { .. }
                        | sqlx::Error::Decode(_)
                        | sqlx::Error::Encode(_)
                        | sqlx::Error::RowNotFound
                ),
            },
        }
    }

    /// The SQLSTATE when a statement failed with one.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            StoreError::Database(err) => sqlstate(err),
            _ => None,
        }
    }
}

/// The SQLSTATE of a database error, when it is one.
pub(crate) fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|db| db.code())
        .map(|code| code.into_owned())
}

/// A connection error described without the URL: sqlx's own messages for I/O and TLS
/// failures do not include credentials, but we keep only the kind to be sure.
pub(crate) fn describe_connect_error(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Tls(_) => "TLS handshake failed".to_owned(),
        sqlx::Error::PoolTimedOut => "timed out".to_owned(),
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::Configuration(_) => "invalid connection configuration".to_owned(),
        other => other.to_string(),
    }
}
