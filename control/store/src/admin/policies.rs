//! `policies` and their immutable `policy_versions` (inside a zone transaction).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::page::{After, Keyed, Page, PageRequest, bounds};

/// A policy row with its newest version number.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct PolicyRow {
    /// Id.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Newest version number.
    pub latest_version: i32,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Keyed for PolicyRow {
    fn key(&self) -> After {
        After {
            ts: self.created_at,
            id: self.id.clone(),
        }
    }
}

/// A version row.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct PolicyVersionRow {
    /// Id.
    pub id: String,
    /// Policy.
    pub policy_id: String,
    /// Version number (1, 2, …).
    pub version: i32,
    /// The Rego document, byte for byte.
    pub content: String,
    /// Lowercase hex SHA-256 of the content.
    pub content_sha256: String,
    /// Declared schema version.
    pub schema_version: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

const POLICY_COLUMNS: &str = "p.id, p.zone_id, p.name, p.description, \
     coalesce((SELECT max(v.version) FROM policy_versions v WHERE v.policy_id = p.id), 0) AS latest_version, \
     p.created_at, p.updated_at";

/// A page of live policies.
pub async fn list(
    conn: &mut PgConnection,
    page: &PageRequest,
) -> Result<Page<PolicyRow>, sqlx::Error> {
    let (ts, id) = bounds(page);
    let rows = sqlx::query_as::<_, PolicyRow>(&format!(
        "SELECT {POLICY_COLUMNS} FROM policies p WHERE p.archived_at IS NULL \
           AND (p.created_at, p.id) < ($1, $2) ORDER BY p.created_at DESC, p.id DESC LIMIT $3"
    ))
    .bind(ts)
    .bind(id)
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page.limit))
}

/// A live policy.
pub async fn get(conn: &mut PgConnection, id: &str) -> Result<Option<PolicyRow>, sqlx::Error> {
    sqlx::query_as::<_, PolicyRow>(&format!(
        "SELECT {POLICY_COLUMNS} FROM policies p WHERE p.id = $1 AND p.archived_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Every version of a policy, oldest first.
pub async fn versions(
    conn: &mut PgConnection,
    policy_id: &str,
) -> Result<Vec<PolicyVersionRow>, sqlx::Error> {
    sqlx::query_as::<_, PolicyVersionRow>(
        "SELECT id, policy_id, version, content, content_sha256, schema_version, created_at \
         FROM policy_versions WHERE policy_id = $1 ORDER BY version",
    )
    .bind(policy_id)
    .fetch_all(conn)
    .await
}

/// Whether the zone has a policy called `name` (archived ones included: names are unique).
pub async fn name_taken(conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM policies WHERE name = $1)")
        .bind(name)
        .fetch_one(conn)
        .await
}

/// Inserts a policy.
pub async fn insert(
    conn: &mut PgConnection,
    id: &str,
    zone_id: &str,
    name: &str,
    description: Option<&str>,
    actor: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO policies (id, zone_id, name, description, created_by, updated_by) \
         VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(id)
    .bind(zone_id)
    .bind(name)
    .bind(description)
    .bind(actor)
    .execute(conn)
    .await?;
    Ok(())
}

/// A new version.
#[derive(Debug, Clone)]
pub struct NewPolicyVersion<'a> {
    /// Id.
    pub id: &'a str,
    /// Zone.
    pub zone_id: &'a str,
    /// Policy.
    pub policy_id: &'a str,
    /// Content.
    pub content: &'a str,
    /// Its hash.
    pub content_sha256: &'a str,
    /// Schema version.
    pub schema_version: &'a str,
    /// Actor.
    pub created_by: &'a str,
}

/// Appends the next version of a policy (the policy row is locked first, so concurrent
/// appends number their versions one after the other); returns its number.
pub async fn append_version(
    conn: &mut PgConnection,
    version: &NewPolicyVersion<'_>,
) -> Result<i32, sqlx::Error> {
    sqlx::query("SELECT 1 FROM policies WHERE id = $1 FOR UPDATE")
        .bind(version.policy_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query_scalar(
        "INSERT INTO policy_versions (id, zone_id, policy_id, version, content, content_sha256, \
           schema_version, created_by) \
         SELECT $1, $2, $3, coalesce(max(version), 0) + 1, $4, $5, $6, $7 \
           FROM policy_versions WHERE policy_id = $3 \
         RETURNING version",
    )
    .bind(version.id)
    .bind(version.zone_id)
    .bind(version.policy_id)
    .bind(version.content)
    .bind(version.content_sha256)
    .bind(version.schema_version)
    .bind(version.created_by)
    .fetch_one(conn)
    .await
}
