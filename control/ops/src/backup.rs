//! `caracal backup create`, `caracal backup restore` and `caracal backup keygen`
//! (storage-and-events.md §12).
//!
//! **Create**, in phases: check the sealing key; open a `SERIALIZABLE READ ONLY DEFERRABLE`
//! transaction, export its snapshot and read the manifest's facts in it (identity, schema,
//! row counts, audit chain heads, key ids, binding revision, export watermarks); `pg_dump
//! -Fc --snapshot` from that same snapshot, so the manifest describes exactly the dump;
//! gather the roles, the runtime secrets (only with `--include-secrets`) and the replay
//! volumes; write the sealed archive ([`archive`]).
//!
//! **Restore**, in phases: unpack and check the archive (checksums, format, schema known
//! to this binary); check the target is isolated (no `caracal` schema; not the source
//! database; another cluster unless `--allow-same-cluster`); create the target database
//! if it is missing; prepare the roles and grants; `pg_restore --single-transaction`;
//! write the secrets and replay segments out (mode 0600) when asked. Nothing secret is
//! printed.

pub mod archive;
pub mod manifest;
pub mod pg;

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use control_store::{
    migrate::MigrationSet,
    ops::backup as store,
    settings::{Lookup, parse_url},
};
use sqlx::{ConnectOptions, Connection, PgConnection, postgres::PgConnectOptions};

pub use archive::{Seal, Unseal};
pub use manifest::Manifest;

use crate::{ExitStatus, OpsError};
use manifest::SourceFacts;

/// The runtime secrets and settings `--include-secrets` copies (each from `VAR` or
/// `VAR_FILE`): the keys and tokens, and the URLs a restored stack needs to run.
pub const SECRET_VARS: &[&str] = &[
    "ZONE_KEK",
    "ZONE_KEK_PREVIOUS",
    "AUDIT_HMAC_KEY",
    "AUDIT_HMAC_KEY_PREVIOUS",
    "AUDIT_CHAIN_HMAC_KEY",
    "STREAMS_HMAC_KEY",
    "STREAMS_HMAC_KEY_PREVIOUS",
    "CARACAL_ADMIN_TOKEN",
    "CARACAL_COORDINATOR_TOKEN",
    "CARACAL_INTERNAL_TOKEN",
    "DATABASE_URL",
    "REDIS_URL",
    "ISSUER_URL",
    "CARACAL_STS_DB_PASSWORD",
    "CARACAL_API_DB_PASSWORD",
    "CARACAL_COORDINATOR_DB_PASSWORD",
    "CARACAL_GATEWAY_DB_PASSWORD",
    "CARACAL_AUDIT_DB_PASSWORD",
];

/// Arguments of `caracal backup create`.
#[derive(Debug, Clone)]
pub struct CreateArgs {
    /// The archive to write.
    pub out: PathBuf,
    /// How it is sealed.
    pub seal: Seal,
    /// Copy the runtime secrets into the archive.
    pub include_secrets: bool,
    /// Replay volumes (`AUDIT_REPLAY_DIR`s) to copy.
    pub replay_dirs: Vec<PathBuf>,
}

/// Arguments of `caracal backup restore`.
#[derive(Debug, Clone)]
pub struct RestoreArgs {
    /// The archive.
    pub archive: PathBuf,
    /// How to open it.
    pub unseal: Unseal,
    /// The target database (an admin URL; created when missing).
    pub into: String,
    /// Where to write `runtime.env` (when the archive has secrets).
    pub secrets_out: Option<PathBuf>,
    /// Where to write the replay segments.
    pub replay_out: Option<PathBuf>,
    /// Accept a target in the source's cluster (another database name is still required).
    pub allow_same_cluster: bool,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `caracal backup keygen`: writes a fresh X25519 identity to `out` (mode 0600, which must
/// not exist) and prints its recipient.
pub fn keygen(out: &Path, stdout: &mut dyn Write) -> Result<ExitStatus, OpsError> {
    let (identity, recipient) = archive::generate_identity();
    let mut file = archive::private_file(out)
        .map_err(|e| OpsError::Refused(format!("cannot create {}: {e}", out.display())))?;
    file.write_all(identity.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| OpsError::Refused(format!("cannot write {}: {e}", out.display())))?;
    writeln!(stdout, "{recipient}")?;
    Ok(ExitStatus::Success)
}

/// `caracal backup create`.
pub async fn create(
    args: &CreateArgs,
    lookup: Lookup<'_>,
    out: &mut dyn Write,
) -> Result<ExitStatus, OpsError> {
    args.seal.check()?;
    let (var, url) = source_url(lookup)?;
    let libpq = pg::Libpq::from_url(var, &url)?;
    let options = parse_url(var, &url).map_err(|e| OpsError::Config(e.to_string()))?;
    let work = tempfile::Builder::new()
        .prefix("caracal-backup-")
        .tempdir()
        .map_err(|e| OpsError::Refused(format!("cannot create a working directory: {e}")))?;

    // Phase: the snapshot, its facts and its dump.
    let mut conn = connect(&options).await?;
    let dump = work.path().join("dump.pgc");
    let facts = dump_snapshot(&mut conn, &libpq, &dump).await?;
    let roles = store::caracal_roles(&mut conn).await.map_err(database)?;
    let _closed = conn.close().await;

    // Phase: the other members.
    let mut members = vec![("postgres/dump.pgc".to_owned(), dump)];
    let roles_file = work.path().join("roles.json");
    write_json(&roles_file, &roles)?;
    members.push(("postgres/roles.json".to_owned(), roles_file));
    if args.include_secrets {
        let env_file = work.path().join("runtime.env");
        write_secrets(&env_file, lookup)?;
        members.push(("secrets/runtime.env".to_owned(), env_file));
    }
    let replay_dirs = replay_members(&args.replay_dirs, &mut members)?;
    let manifest = Manifest::new(facts, args.include_secrets, replay_dirs);
    let manifest_file = work.path().join("manifest.json");
    write_json(&manifest_file, &manifest)?;
    members.insert(0, ("manifest.json".to_owned(), manifest_file));

    // Phase: the sealed archive.
    let target = args.out.clone();
    let seal = args.seal.clone();
    let bytes = tokio::task::spawn_blocking(move || archive::write(&target, &seal, &members))
        .await
        .map_err(|_cancelled| OpsError::Refused("the archive writer stopped".to_owned()))??;

    let rows: i64 = manifest.row_counts.values().sum();
    writeln!(
        out,
        "backup written: {} ({bytes} bytes, {}); database {} at {}: {} tables, {rows} rows, \
         {} audit chains; secrets {}; {} replay directories",
        args.out.display(),
        args.seal.describe(),
        manifest.source.database,
        manifest.created_at.to_rfc3339(),
        manifest.row_counts.len(),
        manifest.audit_chain_heads.len(),
        if manifest.includes_secrets {
            "included"
        } else {
            "not included"
        },
        manifest.replay_dirs.len(),
    )?;
    Ok(ExitStatus::Success)
}

/// The facts and the dump of one exported snapshot.
async fn dump_snapshot(
    conn: &mut PgConnection,
    libpq: &pg::Libpq,
    dump: &Path,
) -> Result<SourceFacts, OpsError> {
    let mut tx = conn.begin().await.map_err(database)?;
    sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE")
        .execute(&mut *tx)
        .await
        .map_err(database)?;
    let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut *tx)
        .await
        .map_err(database)?;
    let facts = SourceFacts {
        identity: store::identity(&mut tx).await.map_err(database)?,
        migrations: store::applied_migrations(&mut tx).await.map_err(database)?,
        row_counts: store::row_counts(&mut tx).await.map_err(database)?,
        heads: store::audit_chain_heads(&mut tx).await.map_err(database)?,
        key_ids: store::key_ids(&mut tx).await.map_err(database)?,
        binding_revision: store::binding_revision(&mut tx).await.map_err(database)?,
        policy_activations: store::policy_activations(&mut tx).await.map_err(database)?,
        export_watermarks: store::export_watermarks(&mut tx).await.map_err(database)?,
    };
    pg::dump(libpq, Some(&snapshot), dump).await?;
    tx.commit().await.map_err(database)?;
    Ok(facts)
}

/// `caracal backup restore`.
pub async fn restore(args: &RestoreArgs, out: &mut dyn Write) -> Result<ExitStatus, OpsError> {
    let target_libpq = pg::Libpq::from_url("--into", &args.into)?;
    let target_options =
        parse_url("--into", &args.into).map_err(|e| OpsError::Config(e.to_string()))?;
    if !plain_identifier(&target_libpq.database) {
        return Err(OpsError::Config(
            "--into must name a database made of letters, digits and underscores".to_owned(),
        ));
    }
    let work = tempfile::Builder::new()
        .prefix("caracal-restore-")
        .tempdir()
        .map_err(|e| OpsError::Refused(format!("cannot create a working directory: {e}")))?;

    // Phase: open and check the archive.
    let unpacked = work.path().join("archive");
    archive::create_private_dir(&unpacked)
        .map_err(|e| OpsError::Refused(format!("cannot create a working directory: {e}")))?;
    let (source, unseal, into) = (args.archive.clone(), args.unseal.clone(), unpacked.clone());
    tokio::task::spawn_blocking(move || archive::unpack(&source, &unseal, &into))
        .await
        .map_err(|_cancelled| OpsError::Refused("the archive reader stopped".to_owned()))??;
    let manifest = read_manifest(&unpacked)?;
    let binary = MigrationSet::embedded().map_err(|e| OpsError::Config(e.to_string()))?;
    manifest.check_compatible(&binary)?;

    // Phase: the target, isolated from the source.
    let admin_db = target_options.clone().database("postgres");
    let mut admin = connect(&admin_db).await?;
    if !store::database_exists(&mut admin, &target_libpq.database)
        .await
        .map_err(database)?
    {
        store::create_database(&mut admin, &target_libpq.database)
            .await
            .map_err(|e| OpsError::Refused(format!("cannot create the target database: {e}")))?;
        writeln!(out, "created database {}", target_libpq.database)?;
    }
    let _closed = admin.close().await;
    let mut conn = connect(&target_options).await?;
    let target = store::identity(&mut conn).await.map_err(database)?;
    check_isolated(&manifest, &target, args.allow_same_cluster)?;
    if store::has_caracal_schema(&mut conn)
        .await
        .map_err(database)?
    {
        return Err(OpsError::Refused(format!(
            "database {} already has a caracal schema; restore into an empty database",
            target.name
        )));
    }
    let warnings = control_store::migrate::prepare_restore_target(&mut conn)
        .await
        .map_err(|e| OpsError::Refused(e.to_string()))?;
    for warning in warnings {
        writeln!(out, "warning: {warning}")?;
    }
    let _closed = conn.close().await;

    // Phase: the data.
    pg::restore(&target_libpq, &unpacked.join("postgres/dump.pgc")).await?;
    writeln!(
        out,
        "restored {} ({} tables, backup of {} taken at {}) into {}",
        args.archive.display(),
        manifest.row_counts.len(),
        manifest.source.database,
        manifest.created_at.to_rfc3339(),
        target.name
    )?;

    // Phase: secrets and replay segments, only where asked.
    if let Some(dir) = &args.secrets_out {
        if manifest.includes_secrets {
            copy_out(&unpacked.join("secrets"), dir)?;
            writeln!(out, "secrets written to {} (mode 0600)", dir.display())?;
        } else {
            writeln!(
                out,
                "the archive holds no secrets (taken without --include-secrets)"
            )?;
        }
    }
    if let Some(dir) = &args.replay_out {
        copy_out(&unpacked.join("replay"), dir)?;
        writeln!(
            out,
            "{} replay directories written to {}",
            manifest.replay_dirs.len(),
            dir.display()
        )?;
    }
    writeln!(
        out,
        "next: caracal restore verify --archive {} --database-url <target>",
        args.archive.display()
    )?;
    Ok(ExitStatus::Success)
}

/// Reads only the manifest of an archive (restore verification).
pub async fn manifest_of(archive_path: &Path, unseal: &Unseal) -> Result<Manifest, OpsError> {
    let work = tempfile::Builder::new()
        .prefix("caracal-verify-")
        .tempdir()
        .map_err(|e| OpsError::Refused(format!("cannot create a working directory: {e}")))?;
    let into = work.path().join("archive");
    archive::create_private_dir(&into)
        .map_err(|e| OpsError::Refused(format!("cannot create a working directory: {e}")))?;
    let (source, unseal, target) = (archive_path.to_owned(), unseal.clone(), into.clone());
    tokio::task::spawn_blocking(move || archive::unpack(&source, &unseal, &target))
        .await
        .map_err(|_cancelled| OpsError::Refused("the archive reader stopped".to_owned()))??;
    read_manifest(&into)
}

fn read_manifest(unpacked: &Path) -> Result<Manifest, OpsError> {
    let bytes = std::fs::read(unpacked.join("manifest.json"))
        .map_err(|_missing| OpsError::Refused("the archive has no manifest.json".to_owned()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| OpsError::Refused(format!("the archive's manifest.json is malformed: {e}")))
}

/// The target must not be the source database, and must be in another cluster unless the
/// operator allows the same one.
fn check_isolated(
    manifest: &Manifest,
    target: &store::DatabaseIdentity,
    allow_same_cluster: bool,
) -> Result<(), OpsError> {
    let same_cluster = !target.system_identifier.is_empty()
        && target.system_identifier == manifest.source.system_identifier;
    if same_cluster && target.name == manifest.source.database {
        return Err(OpsError::Refused(format!(
            "the target is the source database {} itself; restore into another database",
            target.name
        )));
    }
    if same_cluster && !allow_same_cluster {
        return Err(OpsError::Refused(
            "the target is in the source's cluster (same system_identifier); pass \
             --allow-same-cluster to restore next to the source"
                .to_owned(),
        ));
    }
    Ok(())
}

fn plain_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `CARACAL_MIGRATE_DATABASE_URL`, else `DATABASE_URL`: the operator's connection.
fn source_url(lookup: Lookup<'_>) -> Result<(&'static str, String), OpsError> {
    for var in ["CARACAL_MIGRATE_DATABASE_URL", "DATABASE_URL"] {
        if let Some(url) = lookup(var) {
            return Ok((var, url));
        }
    }
    Err(OpsError::Config(
        "DATABASE_URL (or CARACAL_MIGRATE_DATABASE_URL) is not set".to_owned(),
    ))
}

async fn connect(options: &PgConnectOptions) -> Result<PgConnection, OpsError> {
    tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
        .await
        .map_err(|_elapsed| {
            OpsError::Unreachable("the database did not answer in 10 s".to_owned())
        })?
        .map_err(|e| OpsError::Unreachable(format!("cannot connect to the database: {e}")))
}

fn database(error: sqlx::Error) -> OpsError {
    OpsError::Refused(format!("database: {error}"))
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), OpsError> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| OpsError::Refused(format!("cannot encode {}: {e}", path.display())))?;
    let mut file = archive::private_file(path)
        .map_err(|e| OpsError::Refused(format!("cannot write {}: {e}", path.display())))?;
    file.write_all(&bytes)
        .map_err(|e| OpsError::Refused(format!("cannot write {}: {e}", path.display())))
}

/// `NAME=value` lines for every set secret of [`SECRET_VARS`].
fn write_secrets(path: &Path, lookup: Lookup<'_>) -> Result<(), OpsError> {
    let mut text = zeroize::Zeroizing::new(String::new());
    for var in SECRET_VARS {
        let value = match lookup(var) {
            Some(value) => Some(zeroize::Zeroizing::new(value)),
            None => match lookup(&format!("{var}_FILE")) {
                Some(file) => Some(zeroize::Zeroizing::new(
                    std::fs::read_to_string(file.trim())
                        .map_err(|e| OpsError::Config(format!("cannot read {var}_FILE: {e}")))?
                        .trim_end_matches(['\r', '\n'])
                        .to_owned(),
                )),
                None => None,
            },
        };
        if let Some(value) = value {
            if value.contains(['\n', '\r']) {
                return Err(OpsError::Config(format!("{var} spans several lines")));
            }
            text.push_str(var);
            text.push('=');
            text.push_str(&value);
            text.push('\n');
        }
    }
    let mut file = archive::private_file(path)
        .map_err(|e| OpsError::Refused(format!("cannot write the secrets: {e}")))?;
    file.write_all(text.as_bytes())
        .map_err(|e| OpsError::Refused(format!("cannot write the secrets: {e}")))
}

/// Adds every file under each replay volume as `replay/<relative path>`; returns the
/// top-level directories (`<service>-<instance>`). Two volumes holding the same directory
/// name are refused.
fn replay_members(
    dirs: &[PathBuf],
    members: &mut Vec<(String, PathBuf)>,
) -> Result<Vec<String>, OpsError> {
    let mut tops: Vec<String> = Vec::new();
    for root in dirs {
        let mut files = Vec::new();
        walk(root, root, &mut files)?;
        for (relative, path) in files {
            let top = relative.split('/').next().unwrap_or_default().to_owned();
            let name = format!("replay/{relative}");
            if members.iter().any(|(existing, _)| *existing == name) {
                return Err(OpsError::Config(format!(
                    "two replay volumes hold {relative}; back them up separately"
                )));
            }
            if !tops.contains(&top) {
                tops.push(top);
            }
            members.push((name, path));
        }
    }
    tops.sort();
    Ok(tops)
}

fn walk(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) -> Result<(), OpsError> {
    let unreadable = |e: std::io::Error| {
        OpsError::Config(format!("cannot read replay volume {}: {e}", dir.display()))
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .collect::<Result<_, _>>()
        .map_err(unreadable)?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let kind = entry.file_type().map_err(unreadable)?;
        if kind.is_dir() {
            walk(root, &path, files)?;
        } else if kind.is_file() {
            let relative = path
                .strip_prefix(root)
                .ok()
                .and_then(Path::to_str)
                .ok_or_else(|| {
                    OpsError::Config(format!("{} has a name that is not UTF-8", path.display()))
                })?
                .to_owned();
            files.push((relative, path));
        }
    }
    Ok(())
}

/// Copies the unpacked tree `from` into `to` (created 0700; files 0600, never overwritten).
fn copy_out(from: &Path, to: &Path) -> Result<(), OpsError> {
    let failed =
        |e: std::io::Error| OpsError::Refused(format!("cannot write {}: {e}", to.display()));
    archive::create_private_dir(to).map_err(failed)?;
    if !from.exists() {
        return Ok(());
    }
    let mut files = Vec::new();
    walk(from, from, &mut files)?;
    for (relative, path) in files {
        let target = to.join(&relative);
        if let Some(parent) = target.parent() {
            archive::create_private_dir(parent).map_err(failed)?;
        }
        let mut output = archive::private_file(&target).map_err(failed)?;
        let mut input = std::fs::File::open(&path).map_err(failed)?;
        std::io::copy(&mut input, &mut output).map_err(failed)?;
        output.sync_all().map_err(failed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(name: &str, cluster: &str) -> store::DatabaseIdentity {
        store::DatabaseIdentity {
            name: name.to_owned(),
            system_identifier: cluster.to_owned(),
            server_version: "15".to_owned(),
            now: chrono::Utc::now(),
        }
    }

    fn manifest() -> Manifest {
        let raw = serde_json::json!({
            "format": 1, "caracal_version": "0.1.0", "created_at": "2026-12-02T00:00:00Z",
            "source": {"database": "caracal", "system_identifier": "42", "server_version": "15"},
            "schema": {}, "row_counts": {}, "audit_chain_heads": {}, "dek_ids": [],
            "chain_key_ids": [], "binding_revision": 1, "policy_activations": {},
            "export_watermarks": {},
            "includes_secrets": false, "replay_dirs": []
        });
        serde_json::from_value(raw).unwrap()
    }

    #[test]
    fn the_source_itself_is_never_a_target_and_its_cluster_only_when_allowed() {
        let m = manifest();
        let error = check_isolated(&m, &identity("caracal", "42"), true).unwrap_err();
        assert!(error.to_string().contains("source database"), "{error}");
        let error = check_isolated(&m, &identity("restored", "42"), false).unwrap_err();
        assert!(
            error.to_string().contains("--allow-same-cluster"),
            "{error}"
        );
        check_isolated(&m, &identity("restored", "42"), true).unwrap();
        check_isolated(&m, &identity("caracal", "43"), false).unwrap();
    }

    #[test]
    fn only_plain_database_names_are_created() {
        assert!(plain_identifier("caracal_restore_1"));
        assert!(!plain_identifier("x; DROP DATABASE y"));
        assert!(!plain_identifier(""));
        assert!(!plain_identifier(&"a".repeat(64)));
    }
}
