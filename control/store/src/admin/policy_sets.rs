//! `policy_sets`, their immutable `policy_set_versions`, the zone's one active binding
//! (`policy_set_bindings`) and the outbox rows that announce activations, as the admin API
//! manages them (inside a zone transaction; authority §5.7).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::page::{After, Keyed, Page, PageRequest, bounds};

/// A policy set with its active version (`null` when another set of the zone, or none, is
/// active) and its newest version number.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct PolicySetRow {
    /// Id.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// The active version, `null` when the set is not the zone's active set.
    pub active_version_id: Option<String>,
    /// When the active version was activated (`null` when inactive).
    pub activated_at: Option<DateTime<Utc>>,
    /// Newest version number (0 before the first version).
    pub latest_version: i32,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Keyed for PolicySetRow {
    fn key(&self) -> After {
        After {
            ts: self.created_at,
            id: self.id.clone(),
        }
    }
}

/// A policy-set version: an immutable manifest of policy versions.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct PolicySetVersionRow {
    /// Id.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// Policy set.
    pub policy_set_id: String,
    /// Version number (1, 2, …).
    pub version: i32,
    /// The manifest as stored: `[{"policy_version_id": …}, …]`, in manifest order.
    pub manifest_json: serde_json::Value,
    /// Lowercase hex SHA-256 of the compact manifest.
    pub manifest_sha256: String,
    /// The schema version every named policy version shares.
    pub schema_version: String,
    /// Whether this is the zone's active version.
    pub active: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl Keyed for PolicySetVersionRow {
    fn key(&self) -> After {
        After {
            ts: self.created_at,
            id: self.id.clone(),
        }
    }
}

/// A policy version named by a manifest, with what set-version creation checks.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ManifestDocument {
    /// Policy version id.
    pub id: String,
    /// Rego text.
    pub content: String,
    /// Stored content hash.
    pub content_sha256: String,
    /// Declared schema version.
    pub schema_version: String,
    /// Whether its policy is archived.
    pub policy_archived: bool,
}

/// An `event_outbox` row as activation status reports it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    /// Outbox id.
    pub id: String,
    /// `pending`, `published` or `dead`.
    pub status: String,
    /// Publication attempts so far.
    pub attempts: i32,
    /// The last publication error.
    pub last_error: Option<String>,
    /// When it was published.
    pub published_at: Option<DateTime<Utc>>,
    /// The payload's `policy_set_id`.
    pub policy_set_id: Option<String>,
    /// The payload's `policy_set_version_id`.
    pub policy_set_version_id: Option<String>,
}

const SET_COLUMNS: &str = "s.id, s.zone_id, s.name, s.description, \
     b.active_version_id, CASE WHEN b.active_version_id IS NULL THEN NULL ELSE b.updated_at END AS activated_at, \
     coalesce((SELECT max(v.version) FROM policy_set_versions v WHERE v.policy_set_id = s.id), 0) AS latest_version, \
     s.created_at, s.updated_at";

const SET_FROM: &str = "policy_sets s LEFT JOIN policy_set_bindings b \
     ON b.zone_id = s.zone_id AND b.policy_set_id = s.id";

const VERSION_COLUMNS: &str = "v.id, v.zone_id, v.policy_set_id, v.version, v.manifest_json, \
     v.manifest_sha256, v.schema_version, \
     EXISTS (SELECT 1 FROM policy_set_bindings b WHERE b.policy_set_id = v.policy_set_id \
               AND b.active_version_id = v.id) AS active, \
     v.created_at";

/// A page of the zone's live policy sets.
pub async fn list(
    conn: &mut PgConnection,
    page: &PageRequest,
) -> Result<Page<PolicySetRow>, sqlx::Error> {
    let (ts, id) = bounds(page);
    let rows = sqlx::query_as::<_, PolicySetRow>(&format!(
        "SELECT {SET_COLUMNS} FROM {SET_FROM} WHERE s.archived_at IS NULL \
           AND (s.created_at, s.id) < ($1, $2) ORDER BY s.created_at DESC, s.id DESC LIMIT $3"
    ))
    .bind(ts)
    .bind(id)
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page.limit))
}

/// A live policy set of the zone.
pub async fn get(conn: &mut PgConnection, id: &str) -> Result<Option<PolicySetRow>, sqlx::Error> {
    sqlx::query_as::<_, PolicySetRow>(&format!(
        "SELECT {SET_COLUMNS} FROM {SET_FROM} WHERE s.id = $1 AND s.archived_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// A live policy set of the zone, with its row locked against concurrent version appends,
/// activations and archival until the transaction ends.
pub async fn get_for_update(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<PolicySetRow>, sqlx::Error> {
    let locked: Option<String> = sqlx::query_scalar(
        "SELECT id FROM policy_sets WHERE id = $1 AND archived_at IS NULL FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    match locked {
        Some(_) => get(conn, id).await,
        None => Ok(None),
    }
}

/// Whether the zone has a policy set called `name` (archived ones included: names are
/// unique).
pub async fn name_taken(conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM policy_sets WHERE name = $1)")
        .bind(name)
        .fetch_one(conn)
        .await
}

/// Inserts a policy set and returns its row.
pub async fn insert(
    conn: &mut PgConnection,
    id: &str,
    zone_id: &str,
    name: &str,
    description: Option<&str>,
    actor: &str,
) -> Result<PolicySetRow, sqlx::Error> {
    sqlx::query(
        "INSERT INTO policy_sets (id, zone_id, name, description, created_by, updated_by) \
         VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(id)
    .bind(zone_id)
    .bind(name)
    .bind(description)
    .bind(actor)
    .execute(&mut *conn)
    .await?;
    get(conn, id).await?.ok_or(sqlx::Error::RowNotFound)
}

/// Takes the zone's activation lock (transaction-scoped advisory lock
/// `caracal:policy_activation:<zone>`): activations and set deletions of one zone run one
/// after the other, so the one-active-set rule never trips on a race.
pub async fn lock_activation(conn: &mut PgConnection, zone_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('caracal:policy_activation:' || $1, 0))",
    )
    .bind(zone_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// A page of a set's versions, newest first.
pub async fn versions(
    conn: &mut PgConnection,
    policy_set_id: &str,
    page: &PageRequest,
) -> Result<Page<PolicySetVersionRow>, sqlx::Error> {
    let (ts, id) = bounds(page);
    let rows = sqlx::query_as::<_, PolicySetVersionRow>(&format!(
        "SELECT {VERSION_COLUMNS} FROM policy_set_versions v WHERE v.policy_set_id = $1 \
           AND (v.created_at, v.id) < ($2, $3) ORDER BY v.created_at DESC, v.id DESC LIMIT $4"
    ))
    .bind(policy_set_id)
    .bind(ts)
    .bind(id)
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page.limit))
}

/// A version of the set `policy_set_id`.
pub async fn version(
    conn: &mut PgConnection,
    policy_set_id: &str,
    version_id: &str,
) -> Result<Option<PolicySetVersionRow>, sqlx::Error> {
    sqlx::query_as::<_, PolicySetVersionRow>(&format!(
        "SELECT {VERSION_COLUMNS} FROM policy_set_versions v \
          WHERE v.policy_set_id = $1 AND v.id = $2"
    ))
    .bind(policy_set_id)
    .bind(version_id)
    .fetch_optional(conn)
    .await
}

/// The zone's policy versions among `ids` (any order; unknown ids are simply absent). The
/// rows' policies are locked `FOR SHARE`, so none can be archived before the caller's
/// transaction ends.
pub async fn manifest_documents(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<Vec<ManifestDocument>, sqlx::Error> {
    sqlx::query_as::<_, ManifestDocument>(
        "SELECT v.id, v.content, v.content_sha256, v.schema_version, \
                (p.archived_at IS NOT NULL) AS policy_archived \
           FROM policy_versions v JOIN policies p ON p.zone_id = v.zone_id AND p.id = v.policy_id \
          WHERE v.id = ANY($1) \
          FOR SHARE OF p",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// A new set version.
#[derive(Debug, Clone)]
pub struct NewSetVersion<'a> {
    /// Id.
    pub id: &'a str,
    /// Zone.
    pub zone_id: &'a str,
    /// Policy set (locked by the caller with [`get_for_update`]).
    pub policy_set_id: &'a str,
    /// The manifest: `[{"policy_version_id": …}, …]`.
    pub manifest_json: &'a serde_json::Value,
    /// Its hash.
    pub manifest_sha256: &'a str,
    /// Schema version.
    pub schema_version: &'a str,
    /// Actor.
    pub created_by: &'a str,
}

/// Appends the next version of a set (the caller holds the set's row lock, so versions are
/// numbered one after the other) and returns its row.
pub async fn append_version(
    conn: &mut PgConnection,
    version: &NewSetVersion<'_>,
) -> Result<PolicySetVersionRow, sqlx::Error> {
    sqlx::query(
        "INSERT INTO policy_set_versions (id, zone_id, policy_set_id, version, manifest_json, \
           manifest_sha256, schema_version, created_by) \
         SELECT $1, $2, $3, coalesce(max(version), 0) + 1, $4, $5, $6, $7 \
           FROM policy_set_versions WHERE policy_set_id = $3",
    )
    .bind(version.id)
    .bind(version.zone_id)
    .bind(version.policy_set_id)
    .bind(version.manifest_json)
    .bind(version.manifest_sha256)
    .bind(version.schema_version)
    .bind(version.created_by)
    .execute(&mut *conn)
    .await?;
    self::version(conn, version.policy_set_id, version.id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)
}

/// Makes `version_id` the zone's active version (authority §5.7 step 3): nulls every other
/// set's active pointer in the zone, then points the set's binding at the version. Returns
/// the binding's new `updated_at` (microsecond precision, as stored). The caller holds the
/// activation lock.
pub async fn activate(
    conn: &mut PgConnection,
    zone_id: &str,
    policy_set_id: &str,
    version_id: &str,
    actor: &str,
) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query(
        "UPDATE policy_set_bindings SET active_version_id = NULL, updated_at = now(), updated_by = $3 \
          WHERE zone_id = $1 AND policy_set_id <> $2 AND active_version_id IS NOT NULL",
    )
    .bind(zone_id)
    .bind(policy_set_id)
    .bind(actor)
    .execute(&mut *conn)
    .await?;
    sqlx::query_scalar(
        "INSERT INTO policy_set_bindings (zone_id, policy_set_id, active_version_id, created_by, updated_by) \
         VALUES ($1, $2, $3, $4, $4) \
         ON CONFLICT (zone_id, policy_set_id) DO UPDATE \
           SET active_version_id = EXCLUDED.active_version_id, updated_at = now(), \
               updated_by = EXCLUDED.updated_by \
         RETURNING updated_at",
    )
    .bind(zone_id)
    .bind(policy_set_id)
    .bind(version_id)
    .bind(actor)
    .fetch_one(conn)
    .await
}

/// Removes the set's binding; returns the version that was active, if any.
pub async fn remove_binding(
    conn: &mut PgConnection,
    policy_set_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    let removed: Option<Option<String>> = sqlx::query_scalar(
        "DELETE FROM policy_set_bindings WHERE policy_set_id = $1 RETURNING active_version_id",
    )
    .bind(policy_set_id)
    .fetch_optional(conn)
    .await?;
    Ok(removed.flatten())
}

const OUTBOX_COLUMNS: &str = "id, status, attempts, last_error, published_at, \
     payload_json ->> 'policy_set_id' AS policy_set_id, \
     payload_json ->> 'policy_set_version_id' AS policy_set_version_id";

/// The `event_outbox` row `id` when it is a policy invalidation of `zone_id` (the outbox is
/// not row-level secured, so the zone is matched here).
pub async fn invalidation(
    conn: &mut PgConnection,
    zone_id: &str,
    topic: &str,
    id: &str,
) -> Result<Option<OutboxRow>, sqlx::Error> {
    sqlx::query_as::<_, OutboxRow>(&format!(
        "SELECT {OUTBOX_COLUMNS} FROM event_outbox \
          WHERE id = $1 AND zone_id = $2 AND topic = $3 AND producer = 'api'"
    ))
    .bind(id)
    .bind(zone_id)
    .bind(topic)
    .fetch_optional(conn)
    .await
}

/// The newest policy invalidation of `zone_id` announcing `version_id`.
pub async fn latest_invalidation(
    conn: &mut PgConnection,
    zone_id: &str,
    topic: &str,
    version_id: &str,
) -> Result<Option<OutboxRow>, sqlx::Error> {
    sqlx::query_as::<_, OutboxRow>(&format!(
        "SELECT {OUTBOX_COLUMNS} FROM event_outbox \
          WHERE zone_id = $1 AND topic = $2 AND producer = 'api' \
            AND payload_json ->> 'policy_set_version_id' = $3 \
          ORDER BY created_at DESC, id DESC LIMIT 1"
    ))
    .bind(zone_id)
    .bind(topic)
    .bind(version_id)
    .fetch_optional(conn)
    .await
}

/// The id of the api-produced outbox row with `dedupe_key` on `topic`.
pub async fn outbox_id_by_dedupe(
    conn: &mut PgConnection,
    topic: &str,
    dedupe_key: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM event_outbox WHERE producer = 'api' AND topic = $1 AND dedupe_key = $2",
    )
    .bind(topic)
    .bind(dedupe_key)
    .fetch_optional(conn)
    .await
}
