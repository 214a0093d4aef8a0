//! Loading the active policy-set version of a zone with its documents (authority §5.7).

use sqlx::{PgConnection, Row};

/// The active binding of a zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveBinding {
    /// Zone.
    pub zone_id: String,
    /// Set.
    pub policy_set_id: String,
    /// Active version.
    pub policy_set_version_id: String,
}

/// A policy-set version with its manifest.
#[derive(Debug, Clone)]
pub struct SetVersionRow {
    /// Set.
    pub policy_set_id: String,
    /// Version id.
    pub id: String,
    /// Manifest: `[{"policy_version_id": …}]`.
    pub manifest_json: serde_json::Value,
    /// Stored manifest hash.
    pub manifest_sha256: String,
    /// Schema version.
    pub schema_version: String,
}

/// A policy version's document.
#[derive(Debug, Clone)]
pub struct PolicyVersionRow {
    /// Version id.
    pub id: String,
    /// Rego text.
    pub content: String,
    /// Stored hash.
    pub content_sha256: String,
    /// Schema version.
    pub schema_version: String,
}

/// Every active binding visible in the current transaction (all zones in a cross-zone read).
pub async fn active_bindings(conn: &mut PgConnection) -> Result<Vec<ActiveBinding>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT zone_id, policy_set_id, active_version_id FROM policy_set_bindings \
          WHERE active_version_id IS NOT NULL ORDER BY zone_id",
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ActiveBinding {
                zone_id: r.try_get("zone_id")?,
                policy_set_id: r.try_get("policy_set_id")?,
                policy_set_version_id: r.try_get("active_version_id")?,
            })
        })
        .collect()
}

/// A set version by id.
pub async fn set_version(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<SetVersionRow>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT policy_set_id, id, manifest_json, manifest_sha256, schema_version FROM policy_set_versions WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        Ok(SetVersionRow {
            policy_set_id: r.try_get("policy_set_id")?,
            id: r.try_get("id")?,
            manifest_json: r.try_get("manifest_json")?,
            manifest_sha256: r.try_get("manifest_sha256")?,
            schema_version: r.try_get("schema_version")?,
        })
    })
    .transpose()
}

/// Policy versions by id (any order; the caller follows the manifest).
pub async fn policy_versions(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<Vec<PolicyVersionRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, content, content_sha256, schema_version FROM policy_versions WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(PolicyVersionRow {
                id: r.try_get("id")?,
                content: r.try_get("content")?,
                content_sha256: r.try_get("content_sha256")?,
                schema_version: r.try_get("schema_version")?,
            })
        })
        .collect()
}
