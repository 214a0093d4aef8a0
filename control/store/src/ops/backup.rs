//! Reads for `caracal backup` (what the manifest records about the source) and for
//! `caracal backup restore` / `caracal restore verify` (what the target is, and whether the
//! restored database matches the manifest).
//!
//! Every function runs on a connection of the operator's own user (the migrating user,
//! which must read every row: a superuser, or `caracal_maintenance` with BYPASSRLS).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// Who and what a database is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseIdentity {
    /// `current_database()`.
    pub name: String,
    /// The cluster's `system_identifier` (`pg_control_system()`), as decimal text.
    pub system_identifier: String,
    /// `server_version`.
    pub server_version: String,
    /// `now()` on the server.
    pub now: DateTime<Utc>,
}

/// The identity of the database `conn` is connected to.
///
/// # Errors
///
/// Database errors (`pg_control_system()` needs a superuser or `pg_monitor`-like rights on
/// managed services; there it reads as an empty identifier).
pub async fn identity(conn: &mut PgConnection) -> Result<DatabaseIdentity, sqlx::Error> {
    let (name, system_identifier, server_version, now): (String, Option<String>, String, _) =
        sqlx::query_as(
            "SELECT current_database()::text,
                    (SELECT system_identifier::text FROM pg_control_system()),
                    current_setting('server_version'),
                    now()",
        )
        .fetch_one(conn)
        .await?;
    Ok(DatabaseIdentity {
        name,
        system_identifier: system_identifier.unwrap_or_default(),
        server_version,
        now,
    })
}

/// Whether the database holds a `caracal` schema (a restore target must not).
///
/// # Errors
///
/// Database errors.
pub async fn has_caracal_schema(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'caracal')")
        .fetch_one(conn)
        .await
}

/// Whether database `name` exists in the cluster.
///
/// # Errors
///
/// Database errors.
pub async fn database_exists(conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(conn)
        .await
}

/// Creates database `name`, which the caller has checked is a plain identifier.
///
/// # Errors
///
/// Database errors (no CREATEDB right, a concurrent create).
pub async fn create_database(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    let quoted: String = sqlx::query_scalar("SELECT quote_ident($1)")
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
    sqlx::raw_sql(&format!("CREATE DATABASE {quoted}"))
        .execute(conn)
        .await?;
    Ok(())
}

/// One applied migration as `schema_migrations` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    /// Its number.
    pub version: i32,
    /// SHA-256 of the file as applied.
    pub checksum: Vec<u8>,
}

/// The applied migrations, in order.
///
/// # Errors
///
/// Database errors.
pub async fn applied_migrations(
    conn: &mut PgConnection,
) -> Result<Vec<AppliedMigration>, sqlx::Error> {
    let rows: Vec<(i32, Vec<u8>)> =
        sqlx::query_as("SELECT version, checksum FROM caracal.schema_migrations ORDER BY version")
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(version, checksum)| AppliedMigration { version, checksum })
        .collect())
}

/// Row counts of every table of the `caracal` schema (a partitioned table counts all its
/// partitions; partitions are not listed on their own).
///
/// # Errors
///
/// Database errors.
pub async fn row_counts(conn: &mut PgConnection) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, quote_ident(c.relname)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'caracal' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut counts = BTreeMap::new();
    for (name, quoted) in tables {
        let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM caracal.{quoted}"))
            .fetch_one(&mut *conn)
            .await?;
        counts.insert(name, count);
    }
    Ok(counts)
}

/// The head of one zone's audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// The zone.
    pub zone_id: String,
    /// Its highest `chain_seq`.
    pub chain_seq: i64,
    /// That row's content hash.
    pub content_sha256: Vec<u8>,
}

/// The head of every zone's audit chain, by zone.
///
/// # Errors
///
/// Database errors.
pub async fn audit_chain_heads(conn: &mut PgConnection) -> Result<Vec<ChainHead>, sqlx::Error> {
    let rows: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT DISTINCT ON (zone_id) zone_id, chain_seq, content_sha256
           FROM caracal.audit_events
          ORDER BY zone_id, chain_seq DESC",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(zone_id, chain_seq, content_sha256)| ChainHead {
            zone_id,
            chain_seq,
            content_sha256,
        })
        .collect())
}

/// The key ids a restore needs keys for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyIds {
    /// `dek_id`s of sealed values (`secrets`) and of the KEK canary.
    pub dek_ids: Vec<String>,
    /// `chain_key_id`s of the audit ledger.
    pub chain_key_ids: Vec<String>,
}

/// The distinct key ids in use.
///
/// # Errors
///
/// Database errors.
pub async fn key_ids(conn: &mut PgConnection) -> Result<KeyIds, sqlx::Error> {
    let dek_ids: Vec<String> = sqlx::query_scalar(
        "SELECT dek_id FROM caracal.secrets
         UNION SELECT dek_id FROM caracal.kek_check
         ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    let chain_key_ids: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT chain_key_id FROM caracal.audit_events ORDER BY 1")
            .fetch_all(conn)
            .await?;
    Ok(KeyIds {
        dek_ids,
        chain_key_ids,
    })
}

/// `gateway_binding_revision.version`, if the row exists.
///
/// # Errors
///
/// Database errors.
pub async fn binding_revision(conn: &mut PgConnection) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM caracal.gateway_binding_revision")
        .fetch_optional(conn)
        .await
}

/// What one policy set binding activates: the version in force and the stored-only shadow.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyActivation {
    /// `active_version_id`.
    pub active_version_id: Option<String>,
    /// `shadow_version_id`.
    pub shadow_version_id: Option<String>,
}

/// Every policy set binding's activation, keyed `zone_id/policy_set_id`.
///
/// # Errors
///
/// Database errors.
pub async fn policy_activations(
    conn: &mut PgConnection,
) -> Result<BTreeMap<String, PolicyActivation>, sqlx::Error> {
    let rows: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT zone_id || '/' || policy_set_id, active_version_id, shadow_version_id
           FROM caracal.policy_set_bindings ORDER BY 1",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(key, active_version_id, shadow_version_id)| {
            (
                key,
                PolicyActivation {
                    active_version_id,
                    shadow_version_id,
                },
            )
        })
        .collect())
}

/// Every audit export watermark (`name` → last exported hour).
///
/// # Errors
///
/// Database errors.
pub async fn export_watermarks(
    conn: &mut PgConnection,
) -> Result<BTreeMap<String, Option<DateTime<Utc>>>, sqlx::Error> {
    let rows: Vec<(String, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT name, last_exported_hour FROM caracal.audit_export_watermark ORDER BY name",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Names and attributes of the cluster's Caracal roles (no passwords).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoleAttributes {
    /// `rolname`.
    pub name: String,
    /// `rolcanlogin`.
    pub login: bool,
    /// `rolbypassrls`.
    pub bypass_rls: bool,
}

/// The `caracal_*` roles of the cluster.
///
/// # Errors
///
/// Database errors.
pub async fn caracal_roles(conn: &mut PgConnection) -> Result<Vec<RoleAttributes>, sqlx::Error> {
    let rows: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT rolname::text, rolcanlogin, rolbypassrls FROM pg_roles
          WHERE rolname LIKE 'caracal\\_%' ORDER BY 1",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, login, bypass_rls)| RoleAttributes {
            name,
            login,
            bypass_rls,
        })
        .collect())
}
