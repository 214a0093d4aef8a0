//! `providers` and their sealed secret documents (`secrets` rows named
//! `provider_secret_config`), inside a zone transaction. Only the public part of a provider's
//! configuration is in clear; the sealed document is opened by the gateway (and by the API
//! when a change keeps some sealed keys and replaces others), never returned.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::PgConnection;

use super::page::{After, Keyed, Page, PageRequest, bounds};

/// The `secrets.name` of a provider's sealed document.
pub const SECRET_NAME: &str = "provider_secret_config";

/// A provider row as the admin API returns it (the sealed document never leaves the store
/// through this type; `secret_id` is kept for the handler and not serialised).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct ProviderRow {
    /// Id.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// Name.
    pub name: String,
    /// `provider://…`.
    pub identifier: String,
    /// The kind, as `POST` takes it.
    pub kind: String,
    /// The kind again, under the column's name (authority §7.1).
    pub provider_kind: String,
    /// The public part of the configuration, as stored.
    #[sqlx(json)]
    pub config_json: Map<String, Value>,
    /// The names of the sealed keys (their values are never returned).
    pub secret_config_keys: Vec<String>,
    /// When a connectivity check last failed.
    pub connectivity_failed_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// The sealed document's `secrets` row.
    #[serde(skip)]
    pub secret_id: Option<String>,
}

impl Keyed for ProviderRow {
    fn key(&self) -> After {
        After {
            ts: self.created_at,
            id: self.id.clone(),
        }
    }
}

const COLUMNS: &str = "id, zone_id, name, identifier, provider_kind AS kind, provider_kind, \
                       config_json, secret_config_keys, connectivity_failed_at, created_at, \
                       updated_at, secret_id";

/// A page of the zone's live providers.
pub async fn list(
    conn: &mut PgConnection,
    page: &PageRequest,
) -> Result<Page<ProviderRow>, sqlx::Error> {
    let (ts, id) = bounds(page);
    let rows = sqlx::query_as::<_, ProviderRow>(&format!(
        "SELECT {COLUMNS} FROM providers WHERE archived_at IS NULL \
           AND (created_at, id) < ($1, $2) ORDER BY created_at DESC, id DESC LIMIT $3"
    ))
    .bind(ts)
    .bind(id)
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page.limit))
}

/// A live provider of the zone.
pub async fn get(conn: &mut PgConnection, id: &str) -> Result<Option<ProviderRow>, sqlx::Error> {
    sqlx::query_as::<_, ProviderRow>(&format!(
        "SELECT {COLUMNS} FROM providers WHERE id = $1 AND archived_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// A live provider, locked for a change (`FOR UPDATE`).
pub async fn lock(conn: &mut PgConnection, id: &str) -> Result<Option<ProviderRow>, sqlx::Error> {
    sqlx::query_as::<_, ProviderRow>(&format!(
        "SELECT {COLUMNS} FROM providers WHERE id = $1 AND archived_at IS NULL FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Whether `id` is a live provider of the zone; the row is share-locked until the end of the
/// transaction, so it cannot be archived while a resource starts to use it.
pub async fn hold_live(conn: &mut PgConnection, id: &str) -> Result<bool, sqlx::Error> {
    let found: Option<String> = sqlx::query_scalar(
        "SELECT id FROM providers WHERE id = $1 AND archived_at IS NULL FOR SHARE",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(found.is_some())
}

/// Whether a live provider of the zone other than `except` has `identifier`.
pub async fn identifier_taken(
    conn: &mut PgConnection,
    identifier: &str,
    except: Option<&str>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM providers WHERE identifier = $1 AND archived_at IS NULL \
           AND ($2::text IS NULL OR id <> $2))",
    )
    .bind(identifier)
    .bind(except)
    .fetch_one(conn)
    .await
}

/// Whether a live resource of the zone uses provider `id`.
pub async fn in_use(conn: &mut PgConnection, id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM resources WHERE credential_provider_id = $1 \
           AND archived_at IS NULL)",
    )
    .bind(id)
    .fetch_one(conn)
    .await
}

/// A provider's stored state: what an insert writes and an update replaces.
#[derive(Debug, Clone)]
pub struct ProviderState<'a> {
    /// Name.
    pub name: &'a str,
    /// Kind.
    pub kind: &'a str,
    /// Public configuration.
    pub config_json: &'a Map<String, Value>,
    /// Names of the sealed keys, sorted.
    pub secret_config_keys: &'a [String],
    /// The sealed document's row, when there is one.
    pub secret_id: Option<&'a str>,
}

/// Inserts a provider.
pub async fn insert(
    conn: &mut PgConnection,
    id: &str,
    zone_id: &str,
    identifier: &str,
    state: &ProviderState<'_>,
    actor: &str,
) -> Result<ProviderRow, sqlx::Error> {
    sqlx::query_as::<_, ProviderRow>(&format!(
        "INSERT INTO providers (id, zone_id, name, identifier, provider_kind, config_json, \
           secret_config_keys, secret_id, created_by, updated_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(zone_id)
    .bind(state.name)
    .bind(identifier)
    .bind(state.kind)
    .bind(sqlx::types::Json(state.config_json))
    .bind(state.secret_config_keys)
    .bind(state.secret_id)
    .bind(actor)
    .fetch_one(conn)
    .await
}

/// Replaces a live provider's state.
pub async fn update(
    conn: &mut PgConnection,
    id: &str,
    state: &ProviderState<'_>,
    actor: &str,
) -> Result<Option<ProviderRow>, sqlx::Error> {
    sqlx::query_as::<_, ProviderRow>(&format!(
        "UPDATE providers SET name = $2, provider_kind = $3, config_json = $4, \
           secret_config_keys = $5, secret_id = $6, updated_at = now(), updated_by = $7 \
         WHERE id = $1 AND archived_at IS NULL RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(state.name)
    .bind(state.kind)
    .bind(sqlx::types::Json(state.config_json))
    .bind(state.secret_config_keys)
    .bind(state.secret_id)
    .bind(actor)
    .fetch_optional(conn)
    .await
}

/// Archives a live provider and detaches its sealed document (the caller deletes that row
/// afterwards); false when there is no live provider.
pub async fn archive(conn: &mut PgConnection, id: &str, actor: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE providers SET archived_at = now(), updated_at = now(), updated_by = $2, \
           secret_id = NULL \
         WHERE id = $1 AND archived_at IS NULL",
    )
    .bind(id)
    .bind(actor)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A sealed provider document as stored (nothing here is secret).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SealedDocument {
    /// Row id (bound into the associated data).
    pub id: String,
    /// Zone (bound into the associated data).
    pub zone_id: String,
    /// Nonce.
    pub nonce: Vec<u8>,
    /// Ciphertext ‖ tag.
    pub ciphertext: Vec<u8>,
    /// KEK id.
    pub dek_id: String,
}

/// The sealed document in row `id`.
pub async fn load_secret(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<SealedDocument>, sqlx::Error> {
    sqlx::query_as::<_, SealedDocument>(
        "SELECT id, zone_id, nonce, ciphertext, dek_id FROM secrets WHERE id = $1 AND name = $2",
    )
    .bind(id)
    .bind(SECRET_NAME)
    .fetch_optional(conn)
    .await
}

/// A freshly sealed document to write.
#[derive(Debug, Clone)]
pub struct NewSealedDocument<'a> {
    /// Row id (the one bound into the associated data).
    pub id: &'a str,
    /// Zone.
    pub zone_id: &'a str,
    /// The provider it belongs to.
    pub provider_id: &'a str,
    /// Nonce.
    pub nonce: &'a [u8],
    /// Ciphertext ‖ tag.
    pub ciphertext: &'a [u8],
    /// KEK id.
    pub dek_id: &'a str,
}

/// Inserts a provider's sealed document (version 1, `active`).
pub async fn insert_secret(
    conn: &mut PgConnection,
    doc: &NewSealedDocument<'_>,
    actor: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO secrets (id, zone_id, entity_id, name, type, ciphertext, nonce, dek_id, \
           version, status, created_by, updated_by) \
         VALUES ($1, $2, $3, $4, 'password', $5, $6, $7, 1, 'active', $8, $8)",
    )
    .bind(doc.id)
    .bind(doc.zone_id)
    .bind(doc.provider_id)
    .bind(SECRET_NAME)
    .bind(doc.ciphertext)
    .bind(doc.nonce)
    .bind(doc.dek_id)
    .bind(actor)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Re-seals a provider's document in place (same row id, next version); the old ciphertext
/// is overwritten, not kept.
pub async fn replace_secret(
    conn: &mut PgConnection,
    doc: &NewSealedDocument<'_>,
    actor: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE secrets SET ciphertext = $2, nonce = $3, dek_id = $4, version = version + 1, \
           rotated_at = now(), updated_at = now(), updated_by = $5 \
         WHERE id = $1 AND name = $6 AND entity_id = $7",
    )
    .bind(doc.id)
    .bind(doc.ciphertext)
    .bind(doc.nonce)
    .bind(doc.dek_id)
    .bind(actor)
    .bind(SECRET_NAME)
    .bind(doc.provider_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes a sealed document no provider refers to any more.
pub async fn delete_secret(conn: &mut PgConnection, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM secrets WHERE id = $1 AND name = $2")
        .bind(id)
        .bind(SECRET_NAME)
        .execute(conn)
        .await
        .map(|_| ())
}
