//! `caracal doctor`: read-only checks that explain what is wrong with a deployment and how
//! to fix it (storage-and-events.md §12.5).
//!
//! Doctor connects to Postgres the way `caracal migrate` does (as `caracal_maintenance`,
//! `CARACAL_MIGRATE_DATABASE_URL` else `DATABASE_URL`), every statement in a read-only
//! transaction, and to Redis (`REDIS_URL`; the audit stream on `AUDIT_REDIS_URL` when set). It
//! loads the keys the services load (`ZONE_KEK`, `AUDIT_HMAC_KEY`, …) only to compare key ids
//! and to try one decryption or verification; it never prints a key, a token, a secret or an
//! event's content. Key ids (`dek_id`, `chain_key_id`) are printed: they name keys without
//! revealing them.
//!
//! Each check has an id, a status (ok, warn, fail), a one-line finding and a fix:
//!
//! | id | module | what it looks at |
//! | --- | --- | --- |
//! | `db.migrations` | `database` | the same verification as `caracal migrate --verify` |
//! | `db.roles` | `database` | the Caracal roles' attributes, and the role doctor runs as |
//! | `kek.match` | `keys` | `ZONE_KEK` id against `kek_check` and every `dek_id`; one trial decrypt per zone |
//! | `audit.chain` | `audit` | chain key ids and a recent-window verification; partitions; the default partition |
//! | `gateway.bindings` | `gateway` | unroutable resources, stray bindings, the revision row, gateways behind it |
//! | `revocation.state` | `outbox` | revocation groups of live gateways, revocation outbox rows, unannounced revocations |
//! | `outbox` | `outbox` | pending, stalled and dead rows of both outboxes |
//! | `audit.stream` | `audit` | the `audit-ingestor` group, its lag and pending entries, dead letters |
//! | `redis.config` | `redis_link` | version, `maxmemory-policy`, AOF |
//! | `replay.backlog` | `replay` | segments, bytes and oldest age in the replay volumes |
//! | `clock.skew` | `database` | this host's clock against the database's |
//! | `db.pool` | `database` | pool sizing of the live processes against `max_connections` |
//!
//! Exit status: 0 when no check failed, 1 when one did, 2 when the database cannot be
//! reached ([`OpsError::Unreachable`]). Redis being unreachable fails the checks that need
//! it, not the run. A check that cannot finish (a query error) fails with the error.

pub(crate) mod audit;
pub(crate) mod database;
pub(crate) mod gateway;
pub(crate) mod keys;
mod outbox;
mod redis_link;
mod replay;
pub(crate) mod report;

use std::{io::Write, path::PathBuf, time::Duration};

use chrono::{DateTime, Utc};
use control_store::{ops::doctor as store, settings::Lookup};
use sqlx::{ConnectOptions, Connection, PgConnection, postgres::PgConnectOptions};

pub use report::{Check, Status};

use crate::{ExitStatus, OpsError};

/// What `caracal doctor` was asked to check.
#[derive(Debug, Clone, Default)]
pub struct DoctorOptions {
    /// Replay volumes to inspect (`--replay-dir`, repeatable).
    pub replay_dirs: Vec<PathBuf>,
    /// Machine-readable output (`--json`).
    pub json: bool,
}

/// How long connecting to the database may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The statement limit of doctor's reads.
const STATEMENT_TIMEOUT_MS: &str = "30000";
/// Redis' default URL, as the services use it.
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Runs every check and writes the report. Exit status: success when no check failed,
/// findings when one did; a database that cannot be reached is an error (exit 2).
pub async fn run(
    options: &DoctorOptions,
    lookup: Lookup<'_>,
    out: &mut dyn Write,
) -> Result<ExitStatus, OpsError> {
    let checks = run_checks(options, lookup).await?;
    if options.json {
        report::write_json(out, &checks)?;
    } else {
        report::write_human(out, "caracal doctor", &checks)?;
    }
    Ok(if report::failed_count(&checks) > 0 {
        ExitStatus::Findings
    } else {
        ExitStatus::Success
    })
}

/// Runs every check, in the order of the report.
///
/// # Errors
///
/// [`OpsError::Config`] for a malformed database URL, [`OpsError::Unreachable`] when the
/// database cannot be reached.
pub async fn run_checks(
    options: &DoctorOptions,
    lookup: Lookup<'_>,
) -> Result<Vec<Check>, OpsError> {
    let (mut cx, schema) = Context::open(lookup).await?;

    let mut checks = vec![
        database::migrations(&cx).await,
        guard("db.roles", database::roles(&mut cx)).await,
    ];
    if schema {
        checks.push(guard("kek.match", keys::kek_match(&mut cx)).await);
        checks.push(guard("audit.chain", audit::chain(&mut cx)).await);
        checks.push(guard("gateway.bindings", gateway::bindings(&mut cx)).await);
        checks.push(guard("revocation.state", outbox::revocation_state(&mut cx)).await);
        checks.push(guard("outbox", outbox::backlog(&mut cx)).await);
    } else {
        for id in [
            "kek.match",
            "audit.chain",
            "gateway.bindings",
            "revocation.state",
            "outbox",
        ] {
            checks.push(report::failed(
                id,
                "the database has no caracal schema, so there is nothing to check",
                "point CARACAL_MIGRATE_DATABASE_URL (or DATABASE_URL) at the Caracal database, or run `caracal migrate`",
            ));
        }
    }
    checks.push(guard("audit.stream", audit::stream(&mut cx)).await);
    checks.push(guard("redis.config", redis_link::config(&cx)).await);
    checks.push(replay::backlog(options, lookup));
    checks.push(guard("clock.skew", database::clock_skew(&mut cx)).await);
    checks.push(guard("db.pool", database::pool(&mut cx)).await);
    let _closed = cx.db.close().await;
    Ok(checks)
}

/// What every check may use.
pub(crate) struct Context<'a> {
    /// The environment.
    pub(crate) lookup: Lookup<'a>,
    /// The read-only maintenance connection (`search_path=caracal`).
    pub(crate) db: PgConnection,
    /// The options `caracal migrate --verify` connects with.
    pub(crate) verify_options: PgConnectOptions,
    /// `REDIS_URL`.
    pub(crate) redis: redis_link::RedisLink,
    /// `AUDIT_REDIS_URL`, else the same as `redis`.
    pub(crate) audit_redis: redis_link::RedisLink,
    /// The database's clock when doctor started.
    pub(crate) db_now: DateTime<Utc>,
}

impl<'a> Context<'a> {
    /// Connects the way every check expects: the maintenance connection (read only,
    /// `search_path=caracal`, a statement limit) and the Redis links. Returns whether the
    /// database holds a `caracal` schema.
    ///
    /// # Errors
    ///
    /// [`OpsError::Config`] for a malformed database URL, [`OpsError::Unreachable`] when
    /// the database cannot be reached.
    pub(crate) async fn open(lookup: Lookup<'a>) -> Result<(Self, bool), OpsError> {
        let verify_options = control_store::settings::migrate_connect_options(lookup)
            .map_err(|e| OpsError::Config(e.to_string()))?;
        let read_options = verify_options
            .clone()
            .application_name("caracal-doctor")
            .options([
                ("search_path", "caracal"),
                ("default_transaction_read_only", "on"),
                ("statement_timeout", STATEMENT_TIMEOUT_MS),
                // As on every service connection (decision 0034).
                ("jit", "off"),
            ]);
        let unreachable = |e: sqlx::Error| {
            OpsError::Unreachable(format!(
                "cannot connect to the database: {}",
                describe_db(&e)
            ))
        };
        let mut db = match tokio::time::timeout(CONNECT_TIMEOUT, read_options.connect()).await {
            Ok(conn) => conn.map_err(unreachable)?,
            Err(_elapsed) => {
                return Err(OpsError::Unreachable(
                    "cannot connect to the database: connect timed out".to_owned(),
                ));
            }
        };
        let schema = store::schema_present(&mut db).await.map_err(unreachable)?;
        let db_now = store::database_clock(&mut db).await.map_err(unreachable)?;
        let redis_url = lookup("REDIS_URL").unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned());
        let redis = redis_link::RedisLink::connect("REDIS_URL", &redis_url).await;
        let audit_redis = match lookup("AUDIT_REDIS_URL") {
            Some(url) => redis_link::RedisLink::connect("AUDIT_REDIS_URL", &url).await,
            None => redis.clone(),
        };
        let cx = Context {
            lookup,
            db,
            verify_options,
            redis,
            audit_redis,
            db_now,
        };
        Ok((cx, schema))
    }

    /// Closes the database connection.
    pub(crate) async fn close(self) {
        let _closed = self.db.close().await;
    }
}

/// Why a check could not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckError {
    /// A query failed.
    #[error("database read failed: {}", describe_db(.0))]
    Db(#[from] sqlx::Error),
    /// A Redis command failed.
    #[error("Redis command failed: {0}")]
    Redis(#[from] redis::RedisError),
}

impl CheckError {
    fn fix(&self) -> &'static str {
        match self {
            CheckError::Db(_) => {
                "check that the database is up and that doctor connects as caracal_maintenance (CARACAL_MIGRATE_DATABASE_URL)"
            }
            CheckError::Redis(_) => "check that Redis is up and that REDIS_URL points at it",
        }
    }
}

/// A check that could not finish fails with the reason.
pub(crate) async fn guard(
    id: &'static str,
    check: impl Future<Output = Result<Check, CheckError>>,
) -> Check {
    match check.await {
        Ok(check) => check,
        Err(error) => report::failed(
            id,
            format!("the check could not finish: {error}"),
            error.fix(),
        ),
    }
}

/// A database error described without the connection URL.
pub(crate) fn describe_db(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Tls(_) => "TLS handshake failed".to_owned(),
        sqlx::Error::Configuration(_) => "invalid connection settings".to_owned(),
        sqlx::Error::Protocol(_) => "protocol error".to_owned(),
        sqlx::Error::PoolTimedOut => "timed out".to_owned(),
        other => other.to_string(),
    }
}

/// At most `max` items of `items`, joined with `, `, and how many were left out.
pub(crate) fn sample<T: AsRef<str>>(items: &[T], total: usize, max: usize) -> String {
    let shown: Vec<&str> = items.iter().take(max).map(AsRef::as_ref).collect();
    let rest = total.saturating_sub(shown.len());
    if rest > 0 {
        format!("{} and {rest} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// A duration in seconds, rounded for people (`42 s`, `17 min`, `5 h`, `3 d`).
pub(crate) fn age(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 120.0 {
        format!("{secs:.0} s")
    } else if secs < 7_200.0 {
        format!("{:.0} min", secs / 60.0)
    } else if secs < 172_800.0 {
        format!("{:.0} h", secs / 3_600.0)
    } else {
        format!("{:.0} d", secs / 86_400.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_name_how_many_were_left_out() {
        assert_eq!(sample(&["a", "b", "c"], 5, 2), "a, b and 3 more");
        assert_eq!(sample(&["a"], 1, 2), "a");
    }

    #[test]
    fn ages_are_rounded_for_people() {
        assert_eq!(age(42.4), "42 s");
        assert_eq!(age(1_020.0), "17 min");
        assert_eq!(age(18_000.0), "5 h");
        assert_eq!(age(-3.0), "0 s");
    }
}
