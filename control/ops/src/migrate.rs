//! `caracal migrate` and `caracal migrate --verify`.

use std::{io::Write, path::PathBuf, time::Duration};

use control_crypto::{KekRing, SealContext};
use control_store::{
    migrate::{MigrateError, MigrateOptions, MigrationSet, RolePassword, VerifyOutcome},
    settings::{Lookup, migrate_connect_options},
};
use sqlx::{ConnectOptions, Connection};

use crate::{ExitStatus, OpsError, keys};

/// Arguments of `caracal migrate`.
#[derive(Debug, Clone, Default)]
pub struct MigrateArgs {
    /// Report drift without changing anything.
    pub verify: bool,
    /// Read migrations from this directory instead of the embedded ones (development).
    pub dir: Option<PathBuf>,
}

/// Where the KEK canary lives (§10.1): a constant plaintext sealed under `ZONE_KEK`.
pub const KEK_CANARY_CONTEXT: SealContext<'static> = SealContext {
    table: control_store::kek_check::CANARY_TABLE,
    column: control_store::kek_check::CANARY_COLUMN,
    zone_id: control_store::kek_check::CANARY_ZONE,
    row_id: control_store::kek_check::CANARY_ROW,
};

/// The canary's plaintext.
pub const KEK_CANARY_PLAINTEXT: &[u8] = control_store::kek_check::CANARY_PLAINTEXT;

/// Runs `caracal migrate` (or `--verify`) against `CARACAL_MIGRATE_DATABASE_URL` or
/// `DATABASE_URL`. When `ZONE_KEK` is set it is validated first, and the KEK canary is
/// sealed on first run or checked on later ones.
pub async fn run(
    args: &MigrateArgs,
    lookup: Lookup<'_>,
    out: &mut dyn Write,
) -> Result<ExitStatus, OpsError> {
    let kek = match lookup("ZONE_KEK").or_else(|| lookup("ZONE_KEK_FILE")) {
        Some(_) => Some(keys::load_kek(lookup)?),
        None => None,
    };
    let options = migrate_connect_options(lookup).map_err(|e| OpsError::Config(e.to_string()))?;
    let set = match &args.dir {
        Some(dir) => MigrationSet::from_dir(dir),
        None => MigrationSet::embedded(),
    }
    .map_err(|e| OpsError::Config(e.to_string()))?;
    let lock_wait = match lookup("CARACAL_MIGRATE_LOCK_TIMEOUT_SECS") {
        None => Duration::from_secs(300),
        Some(raw) => raw
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| (1..=86_400).contains(s))
            .map(Duration::from_secs)
            .ok_or_else(|| {
                OpsError::Config(
                    "CARACAL_MIGRATE_LOCK_TIMEOUT_SECS must be an integer between 1 and 86400"
                        .to_owned(),
                )
            })?,
    };
    let run = MigrateOptions {
        lock_wait,
        ..MigrateOptions::default()
    };

    if args.verify {
        return verify(&options, &set, run.connect_timeout, out).await;
    }
    // A wrong KEK is refused before anything changes.
    if let Some(kek) = &kek {
        kek_canary(
            &options,
            kek,
            CanaryStep::CheckExisting,
            run.connect_timeout,
        )
        .await?;
    }
    let run = MigrateOptions {
        role_passwords: role_passwords(lookup)?,
        ..run
    };
    let report = control_store::migrate::migrate(&options, &set, &run)
        .await
        .map_err(classify)?;
    for warning in &report.warnings {
        writeln!(out, "warning: {warning}")?;
    }
    if report.applied.is_empty() {
        writeln!(
            out,
            "schema is current at {:04}; nothing to apply",
            report.version
        )?;
    }
    for (file, took) in &report.applied {
        writeln!(out, "applied {file} ({} ms)", took.as_millis())?;
    }
    if report.partitions_created > 0 {
        writeln!(
            out,
            "created {} audit partition(s)",
            report.partitions_created
        )?;
    }
    if let Some(kek) = &kek {
        let message =
            kek_canary(&options, kek, CanaryStep::SealOrCheck, run.connect_timeout).await?;
        writeln!(out, "{message}")?;
    }
    Ok(ExitStatus::Success)
}

async fn verify(
    options: &sqlx::postgres::PgConnectOptions,
    set: &MigrationSet,
    connect_timeout: Duration,
    out: &mut dyn Write,
) -> Result<ExitStatus, OpsError> {
    let report = control_store::migrate::verify(options, set, connect_timeout)
        .await
        .map_err(classify)?;
    for line in &report.drift {
        writeln!(out, "drift: {line}")?;
    }
    for file in &report.pending {
        writeln!(out, "pending: {file}")?;
    }
    Ok(match report.outcome() {
        VerifyOutcome::Clean => {
            writeln!(
                out,
                "schema is current at {:04} and matches this binary",
                set.latest()
            )?;
            ExitStatus::Success
        }
        VerifyOutcome::Drift => ExitStatus::Findings,
        VerifyOutcome::Pending => ExitStatus::Pending,
    })
}

/// What [`kek_canary`] may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CanaryStep {
    /// Before migrating: check an existing canary, never write.
    CheckExisting,
    /// After migrating: seal the canary if there is none, then check it.
    SealOrCheck,
}

/// Seals the KEK canary on first run (§10.1) and checks on every run that the configured
/// KEK opens it. Two first runs racing both insert with `ON CONFLICT DO NOTHING`, then both
/// check the one row that won.
async fn kek_canary(
    options: &sqlx::postgres::PgConnectOptions,
    kek: &KekRing,
    step: CanaryStep,
    connect_timeout: Duration,
) -> Result<String, OpsError> {
    let unreachable =
        |e: sqlx::Error| OpsError::Unreachable(format!("cannot check the KEK canary: {e}"));
    let mut conn = match tokio::time::timeout(connect_timeout, options.connect()).await {
        Ok(conn) => conn.map_err(unreachable)?,
        Err(_elapsed) => {
            return Err(OpsError::Unreachable(
                "cannot check the KEK canary: connect timed out".to_owned(),
            ));
        }
    };
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('caracal.kek_check') IS NOT NULL")
        .fetch_one(&mut conn)
        .await
        .map_err(unreachable)?;
    if !exists {
        return Ok("no KEK canary yet".to_owned());
    }
    let mut tx = conn.begin().await.map_err(unreachable)?;
    sqlx::raw_sql("SET LOCAL ROLE caracal_owner; SET LOCAL search_path = caracal")
        .execute(&mut *tx)
        .await
        .map_err(unreachable)?;
    let mut sealed_now = None;
    if step == CanaryStep::SealOrCheck {
        let sealed = kek
            .seal(&KEK_CANARY_CONTEXT, KEK_CANARY_PLAINTEXT)
            .map_err(|e| OpsError::Config(format!("cannot seal the KEK canary: {e}")))?;
        let inserted = sqlx::query(
            "INSERT INTO kek_check (id, dek_id, nonce, ciphertext) VALUES (true, $1, $2, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(sealed.dek_id.as_str())
        .bind(sealed.nonce.as_slice())
        .bind(&sealed.ciphertext)
        .execute(&mut *tx)
        .await
        .map_err(unreachable)?;
        if inserted.rows_affected() == 1 {
            sealed_now = Some(sealed.dek_id);
        }
    }
    let existing: Option<(String, Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT dek_id, nonce, ciphertext FROM kek_check")
            .fetch_optional(&mut *tx)
            .await
            .map_err(unreachable)?;
    tx.commit().await.map_err(unreachable)?;
    let _closed = conn.close().await;
    match (existing, sealed_now) {
        (_, Some(dek_id)) => Ok(format!("sealed the KEK canary under {dek_id}")),
        (None, None) => Ok("no KEK canary yet".to_owned()),
        (Some((dek_id, nonce, ciphertext)), None) => {
            kek.open(&KEK_CANARY_CONTEXT, &nonce, &ciphertext, &dek_id)
                .map_err(|e| OpsError::Refused(format!("zone_kek_mismatch: {e}")))?;
            Ok(format!("ZONE_KEK opens the KEK canary ({dek_id})"))
        }
    }
}

/// Login roles whose password `caracal migrate` sets, and the variable that holds it.
const ROLE_PASSWORD_VARS: &[(&str, &str)] = &[
    ("caracal_api", "CARACAL_API_DB_PASSWORD"),
    ("caracal_sts", "CARACAL_STS_DB_PASSWORD"),
    ("caracal_gateway", "CARACAL_GATEWAY_DB_PASSWORD"),
    ("caracal_coordinator", "CARACAL_COORDINATOR_DB_PASSWORD"),
    ("caracal_audit", "CARACAL_AUDIT_DB_PASSWORD"),
    ("caracal_maintenance", "CARACAL_MAINTENANCE_DB_PASSWORD"),
];

/// Reads `CARACAL_<ROLE>_DB_PASSWORD` or the file named by `..._FILE` for each login role
/// (§2.1: passwords never appear in migrations).
fn role_passwords(lookup: Lookup<'_>) -> Result<Vec<RolePassword>, OpsError> {
    let mut passwords = Vec::new();
    for (role, var) in ROLE_PASSWORD_VARS {
        let file_var = format!("{var}_FILE");
        let value = match (lookup(var), lookup(&file_var)) {
            (Some(_), Some(_)) => {
                return Err(OpsError::Config(format!(
                    "{var} and {file_var} are both set; set exactly one of them"
                )));
            }
            (Some(value), None) => Some(value),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path.trim())
                    .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                    .map_err(|e| {
                        OpsError::Config(format!("{file_var}: cannot read {}: {e}", path.trim()))
                    })?,
            ),
            (None, None) => None,
        };
        if let Some(value) = value {
            if value.is_empty() {
                return Err(OpsError::Config(format!("{var} is empty")));
            }
            passwords.push(RolePassword::new(role, value));
        }
    }
    Ok(passwords)
}

fn classify(err: MigrateError) -> OpsError {
    match err {
        MigrateError::Connect(reason) => {
            OpsError::Unreachable(format!("cannot connect to the database: {reason}"))
        }
        MigrateError::Files(e) => OpsError::Config(e.to_string()),
        other => OpsError::Refused(other.to_string()),
    }
}
