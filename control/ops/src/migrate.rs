//! `caracal migrate` and `caracal migrate --verify`.

use std::{io::Write, path::PathBuf, time::Duration};

use control_crypto::{KekRing, SealContext};
use control_store::{
    migrate::{MigrateError, MigrateOptions, MigrationSet, VerifyOutcome},
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
    table: "kek_check",
    column: "ciphertext",
    zone_id: "*",
    row_id: "kek_check",
};

/// The canary's plaintext.
pub const KEK_CANARY_PLAINTEXT: &[u8] = b"caracal.kek_check.v1";

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
    if let Some(kek) = kek {
        writeln!(out, "{}", ensure_kek_canary(&options, &kek).await?)?;
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

/// Seals the canary on first run; on later runs checks that the configured KEK opens it.
async fn ensure_kek_canary(
    options: &sqlx::postgres::PgConnectOptions,
    kek: &KekRing,
) -> Result<String, OpsError> {
    let unreachable =
        |e: sqlx::Error| OpsError::Unreachable(format!("cannot record the KEK canary: {e}"));
    let mut conn = options.connect().await.map_err(unreachable)?;
    let mut tx = conn.begin().await.map_err(unreachable)?;
    sqlx::raw_sql("SET LOCAL ROLE caracal_owner; SET LOCAL search_path = caracal")
        .execute(&mut *tx)
        .await
        .map_err(unreachable)?;
    let existing: Option<(String, Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT dek_id, nonce, ciphertext FROM kek_check FOR UPDATE")
            .fetch_optional(&mut *tx)
            .await
            .map_err(unreachable)?;
    let message = match existing {
        Some((dek_id, nonce, ciphertext)) => {
            kek.open(&KEK_CANARY_CONTEXT, &nonce, &ciphertext, &dek_id)
                .map_err(|e| OpsError::Refused(format!("zone_kek_mismatch: {e}")))?;
            format!("ZONE_KEK opens the KEK canary ({dek_id})")
        }
        None => {
            let sealed = kek
                .seal(&KEK_CANARY_CONTEXT, KEK_CANARY_PLAINTEXT)
                .map_err(|e| OpsError::Config(format!("cannot seal the KEK canary: {e}")))?;
            sqlx::query(
                "INSERT INTO kek_check (id, dek_id, nonce, ciphertext) VALUES (true, $1, $2, $3)",
            )
            .bind(sealed.dek_id.as_str())
            .bind(sealed.nonce.as_slice())
            .bind(&sealed.ciphertext)
            .execute(&mut *tx)
            .await
            .map_err(unreachable)?;
            format!("sealed the KEK canary under {}", sealed.dek_id)
        }
    };
    tx.commit().await.map_err(unreachable)?;
    let _closed = conn.close().await;
    Ok(message)
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
