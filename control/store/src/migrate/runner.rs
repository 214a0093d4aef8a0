//! Applying pending migrations (§4.3).

use std::time::Duration;

use sqlx::{ConnectOptions, Connection, PgConnection, Row, postgres::PgConnectOptions};
use tokio::time::Instant;

use super::{MIGRATION_LOCK_KEY, MigrateError, Migration, MigrationSet, bootstrap};
use crate::error::describe_connect_error;

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// How long to wait for another run's lock (`CARACAL_MIGRATE_LOCK_TIMEOUT_SECS`, 300).
    pub lock_wait: Duration,
    /// Connect limit (5 s).
    pub connect_timeout: Duration,
    /// The version recorded in `schema_migrations.caracal_version`.
    pub caracal_version: String,
    /// Login passwords to set on the Caracal roles (from `CARACAL_<ROLE>_DB_PASSWORD`).
    pub role_passwords: Vec<RolePassword>,
}

/// A login role and the password `caracal migrate` sets for it. `Debug` never shows the
/// password, and it is wiped from memory on drop.
#[derive(Clone)]
pub struct RolePassword {
    role: String,
    password: zeroize::Zeroizing<String>,
}

impl RolePassword {
    /// A password for `role`.
    pub fn new(role: &str, password: String) -> Self {
        Self {
            role: role.to_owned(),
            password: zeroize::Zeroizing::new(password),
        }
    }

    /// The role.
    pub fn role(&self) -> &str {
        &self.role
    }

    pub(crate) fn password(&self) -> &str {
        &self.password
    }
}

impl std::fmt::Debug for RolePassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RolePassword({}, <redacted>)", self.role)
    }
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            lock_wait: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
            caracal_version: env!("CARGO_PKG_VERSION").to_owned(),
            role_passwords: Vec::new(),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct MigrateReport {
    /// Files applied by this run, with their duration.
    pub applied: Vec<(String, Duration)>,
    /// The schema version after the run.
    pub version: i32,
    /// Audit partitions created by this run.
    pub partitions_created: i32,
    /// Notes for the operator (skipped steps).
    pub warnings: Vec<String>,
}

/// Applies every pending migration of `set` to the database of `options`.
pub async fn migrate(
    options: &PgConnectOptions,
    set: &MigrationSet,
    run: &MigrateOptions,
) -> Result<MigrateReport, MigrateError> {
    let mut conn = open(options, run.connect_timeout).await?;
    acquire_lock(&mut conn, run.lock_wait).await?;
    let result = migrate_locked(&mut conn, set, run).await;
    // The lock also ends with the connection; unlocking explicitly keeps it short.
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut conn)
        .await;
    let _closed = conn.close().await;
    let report = result?;
    unlocked?;
    Ok(report)
}

/// A dedicated connection with `statement_timeout` 0 and `lock_timeout` 10 s.
pub(crate) async fn open(
    options: &PgConnectOptions,
    timeout: Duration,
) -> Result<PgConnection, MigrateError> {
    let options = options
        .clone()
        .application_name("caracal-migrate")
        .options([("statement_timeout", "0"), ("lock_timeout", "10000")]);
    match tokio::time::timeout(timeout, options.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(err)) => Err(MigrateError::Connect(describe_connect_error(&err))),
        Err(_elapsed) => Err(MigrateError::Connect(format!(
            "no answer within {} ms",
            timeout.as_millis()
        ))),
    }
}

async fn acquire_lock(conn: &mut PgConnection, wait: Duration) -> Result<(), MigrateError> {
    let deadline = Instant::now() + wait;
    loop {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(MIGRATION_LOCK_KEY)
            .fetch_one(&mut *conn)
            .await?;
        if locked {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(MigrateError::LockTimeout(wait.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn migrate_locked(
    conn: &mut PgConnection,
    set: &MigrationSet,
    run: &MigrateOptions,
) -> Result<MigrateReport, MigrateError> {
    let notes = bootstrap::ensure(conn, &run.role_passwords).await?;
    let applied = applied_versions(conn).await?;
    let pending = check_history(set, &applied)?;

    let mut report = MigrateReport {
        warnings: notes.warnings,
        ..MigrateReport::default()
    };
    for migration in pending {
        let took = apply(conn, migration, &run.caracal_version).await?;
        tracing::info!(file = %migration.name, duration_ms = took.as_millis() as u64, "migration applied");
        report.applied.push((migration.name.clone(), took));
    }
    report.version = set.latest();
    report.partitions_created = ensure_partitions(conn).await?;
    Ok(report)
}

/// `(version, name, checksum)` of every applied migration, in order.
pub(crate) async fn applied_versions(
    conn: &mut PgConnection,
) -> Result<Vec<(i32, String, Vec<u8>)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT version, name, checksum FROM caracal.schema_migrations ORDER BY version",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("version")?,
                r.try_get("name")?,
                r.try_get("checksum")?,
            ))
        })
        .collect()
}

/// Compares the history with the files: refuses a newer database, an edited or renamed
/// file, and a pending file below the highest applied version; returns the pending files.
pub(crate) fn check_history<'a>(
    set: &'a MigrationSet,
    applied: &[(i32, String, Vec<u8>)],
) -> Result<Vec<&'a Migration>, MigrateError> {
    let highest = applied.iter().map(|(v, _, _)| *v).max().unwrap_or(0);
    if highest > set.latest() {
        return Err(MigrateError::DatabaseNewer {
            db: highest,
            binary: set.latest(),
        });
    }
    for (version, name, recorded) in applied {
        let Some(file) = set.get(*version) else {
            return Err(MigrateError::DatabaseNewer {
                db: *version,
                binary: set.latest(),
            });
        };
        if &file.name != name {
            return Err(MigrateError::Renamed {
                version: *version,
                recorded: name.clone(),
                file: file.name.clone(),
            });
        }
        if recorded.as_slice() != file.checksum.as_slice() {
            return Err(MigrateError::Edited {
                file: file.name.clone(),
                recorded: short_hex(recorded),
                actual: short_hex(&file.checksum),
            });
        }
    }
    let pending: Vec<&Migration> = set
        .iter()
        .filter(|m| !applied.iter().any(|(v, _, _)| *v == m.version))
        .collect();
    if let Some(first) = pending.iter().find(|m| m.version < highest) {
        return Err(MigrateError::OutOfOrder {
            file: first.name.clone(),
            applied: highest,
        });
    }
    Ok(pending)
}

fn short_hex(bytes: &[u8]) -> String {
    hex::encode(bytes.get(..4).unwrap_or(bytes))
}

async fn apply(
    conn: &mut PgConnection,
    migration: &Migration,
    caracal_version: &str,
) -> Result<Duration, MigrateError> {
    let started = Instant::now();
    let failed = |err: sqlx::Error| file_failed(migration, &err);
    if migration.no_transaction {
        sqlx::raw_sql("SET ROLE caracal_owner; SET search_path = caracal, pg_catalog")
            .execute(&mut *conn)
            .await?;
        let outcome = sqlx::raw_sql(&migration.sql).execute(&mut *conn).await;
        sqlx::raw_sql("RESET ROLE; RESET search_path")
            .execute(&mut *conn)
            .await?;
        outcome.map_err(failed)?;
        record(&mut *conn, migration, started.elapsed(), caracal_version).await?;
    } else {
        let mut tx = conn.begin().await?;
        sqlx::raw_sql("SET LOCAL ROLE caracal_owner; SET LOCAL search_path = caracal, pg_catalog")
            .execute(&mut *tx)
            .await?;
        // Simple-query protocol: the whole file is one round trip and may hold many
        // statements. On error the transaction is rolled back when `tx` drops.
        sqlx::raw_sql(&migration.sql)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        record(&mut tx, migration, started.elapsed(), caracal_version).await?;
        tx.commit().await?;
    }
    Ok(started.elapsed())
}

async fn record(
    conn: &mut PgConnection,
    migration: &Migration,
    took: Duration,
    caracal_version: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO caracal.schema_migrations (version, name, checksum, duration_ms, caracal_version) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(migration.version)
    .bind(&migration.name)
    .bind(migration.checksum.as_slice())
    .bind(i32::try_from(took.as_millis()).unwrap_or(i32::MAX))
    .bind(caracal_version)
    .execute(conn)
    .await
    .map(|_| ())
}

fn file_failed(migration: &Migration, err: &sqlx::Error) -> MigrateError {
    let Some(db) = err.as_database_error() else {
        return MigrateError::FileFailed {
            file: migration.name.clone(),
            line: "?".to_owned(),
            sqlstate: "?".to_owned(),
            message: err.to_string(),
        };
    };
    let line = db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .and_then(|pg| match pg.position() {
            Some(sqlx::postgres::PgErrorPosition::Original(pos)) => {
                Some(line_of(&migration.sql, pos))
            }
            _ => None,
        })
        .map_or_else(|| "?".to_owned(), |l| l.to_string());
    MigrateError::FileFailed {
        file: migration.name.clone(),
        line,
        sqlstate: db.code().map(|c| c.into_owned()).unwrap_or_default(),
        message: db.message().to_owned(),
    }
}

/// The 1-based line of a 1-based character position.
fn line_of(sql: &str, position: usize) -> usize {
    sql.chars()
        .take(position.saturating_sub(1))
        .filter(|c| *c == '\n')
        .count()
        + 1
}

/// Pre-creates the audit partitions (§5.2), once the function exists.
async fn ensure_partitions(conn: &mut PgConnection) -> Result<i32, MigrateError> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regprocedure('caracal.caracal_audit_ensure_partitions(timestamptz, integer)') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
    if !exists {
        return Ok(0);
    }
    let mut tx = conn.begin().await?;
    sqlx::raw_sql("SET LOCAL ROLE caracal_owner")
        .execute(&mut *tx)
        .await?;
    let created: i32 =
        sqlx::query_scalar("SELECT caracal.caracal_audit_ensure_partitions(now(), $1)")
            .bind(crate::schema::PARTITIONS_AHEAD)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> MigrationSet {
        MigrationSet::from_files([
            ("0001_a.sql".to_owned(), "SELECT 1;".to_owned()),
            ("0002_b.sql".to_owned(), "SELECT 2;".to_owned()),
        ])
        .unwrap()
    }

    fn row(m: &Migration) -> (i32, String, Vec<u8>) {
        (m.version, m.name.clone(), m.checksum.to_vec())
    }

    #[test]
    fn pending_files_follow_the_applied_ones() {
        let set = set();
        let first = row(set.get(1).unwrap());
        let pending = check_history(&set, &[first]).unwrap();
        assert_eq!(
            pending.iter().map(|m| m.version).collect::<Vec<_>>(),
            vec![2]
        );
    }

    #[test]
    fn edited_file_is_named_with_both_checksums() {
        let set = set();
        let mut first = row(set.get(1).unwrap());
        first.2 = vec![0x3f, 0x1a, 0, 0];
        let err = check_history(&set, &[first]).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "0001_a.sql was edited after it was applied: recorded 3f1a0000…, file "
            ),
            "{err}"
        );
    }

    #[test]
    fn newer_database_is_refused() {
        let set = set();
        let err = check_history(&set, &[(3, "0003_c.sql".to_owned(), vec![])]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "database is at 0003, newer than this binary (0002)"
        );
    }

    #[test]
    fn line_numbers_count_from_one() {
        assert_eq!(line_of("a\nb\nc", 1), 1);
        assert_eq!(line_of("a\nb\nc", 3), 2);
        assert_eq!(line_of("a\nb\nc", 5), 3);
    }
}
