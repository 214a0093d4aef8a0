//! `caracal migrate`: forward-only, checksummed migrations applied under an advisory lock
//! (storage-and-events.md §4), and the read-only drift check `caracal migrate --verify`.
//!
//! The lifecycle of one run ([`migrate`]):
//! 1. connect on a dedicated connection (`statement_timeout` 0, `lock_timeout` 10 s);
//! 2. take `pg_advisory_lock(0x4341524130303030)`, waiting at most the configured time, so
//!    two runs against one database apply each file once;
//! 3. ensure the cluster roles, the schema and `schema_migrations` ([`bootstrap`]);
//! 4. refuse, naming the cause, when the database is newer than the binary, an applied file
//!    was edited, or a pending file is numbered below the highest applied one;
//! 5. apply each pending file in its own transaction as `caracal_owner`;
//! 6. pre-create the audit partitions for the current month and the three after it.

mod bootstrap;
mod files;
mod runner;
mod verify;

pub use files::{Migration, MigrationSet, MigrationSetError};
pub use runner::{MigrateOptions, MigrateReport, RolePassword, migrate};
pub use verify::{VerifyOutcome, VerifyReport, verify};

/// Prepares a restore target for `pg_restore`: the cluster roles (created when the user
/// may), the user's membership of `caracal_owner` and the database's grants, without the
/// schema, which the dump brings. Returns warnings for the operator.
///
/// # Errors
///
/// A role with rights it must not have, or database errors.
pub async fn prepare_restore_target(
    conn: &mut sqlx::PgConnection,
) -> Result<Vec<String>, MigrateError> {
    bootstrap::ensure_roles(conn).await
}

/// `pg_advisory_lock` key held while migrating: `0x4341524130303030`, "CARA0000".
pub const MIGRATION_LOCK_KEY: i64 = 0x4341_5241_3030_3030;

/// Why `caracal migrate` stopped. Every message names the file or the object at fault.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The migration files themselves are malformed.
    #[error(transparent)]
    Files(#[from] MigrationSetError),
    /// The database could not be reached.
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    /// Another migration held the lock for too long.
    #[error("another `caracal migrate` held the migration lock for more than {0} s")]
    LockTimeout(u64),
    /// The database has a migration this binary does not know.
    #[error("database is at {db:04}, newer than this binary ({binary:04})")]
    DatabaseNewer {
        /// Highest version applied in the database.
        db: i32,
        /// Highest version this binary embeds.
        binary: i32,
    },
    /// An applied migration's file changed after it was applied.
    #[error("{file} was edited after it was applied: recorded {recorded}…, file {actual}…")]
    Edited {
        /// The file name.
        file: String,
        /// First 8 hex digits of the recorded checksum.
        recorded: String,
        /// First 8 hex digits of the file's checksum.
        actual: String,
    },
    /// The database records a version under another name.
    #[error("migration {version:04} is recorded as {recorded} but the file is {file}")]
    Renamed {
        /// The version.
        version: i32,
        /// The recorded name.
        recorded: String,
        /// The file name.
        file: String,
    },
    /// A pending file sorts below an applied one (forward-only).
    #[error("{file} is pending but {applied:04} is already applied; migrations are forward-only")]
    OutOfOrder {
        /// The pending file.
        file: String,
        /// The highest applied version.
        applied: i32,
    },
    /// A cluster role exists with attributes a service role must not have.
    #[error("db_role_too_powerful: {role} {problem}")]
    RoleTooPowerful {
        /// The role.
        role: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The roles could not be created or verified.
    #[error("cannot ensure the Caracal database roles: {0}")]
    Roles(String),
    /// A migration file failed; it was rolled back.
    #[error("{file} failed at line {line} (SQLSTATE {sqlstate}): {message}")]
    FileFailed {
        /// The file name.
        file: String,
        /// Line of the failing statement, when the server reported a position.
        line: String,
        /// The SQLSTATE.
        sqlstate: String,
        /// The server's message.
        message: String,
    },
    /// Any other database error.
    #[error("database error during migration: {0}")]
    Database(#[from] sqlx::Error),
}
