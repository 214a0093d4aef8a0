//! `applications` as the admin API manages them (inside a zone transaction).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::page::{After, Keyed, Page, PageRequest, bounds};

/// An application row as the admin API returns it (the secret hash never leaves the store).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct AdminApplicationRow {
    /// Id.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// Name.
    pub name: String,
    /// `managed` or `dcr`.
    pub registration_method: String,
    /// Traits.
    pub traits: Vec<String>,
    /// Expiry (DCR only).
    pub expires_at: Option<DateTime<Utc>>,
    /// Archival time.
    pub archived_at: Option<DateTime<Utc>>,
    /// Last token exchange.
    pub last_active_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Keyed for AdminApplicationRow {
    fn key(&self) -> After {
        After {
            ts: self.created_at,
            id: self.id.clone(),
        }
    }
}

const COLUMNS: &str = "id, zone_id, name, registration_method, traits, expires_at, archived_at, \
                       last_active_at, created_at, updated_at";

/// A page of the zone's applications; `archived` picks archived rows instead of live ones.
pub async fn list(
    conn: &mut PgConnection,
    archived: bool,
    page: &PageRequest,
) -> Result<Page<AdminApplicationRow>, sqlx::Error> {
    let (ts, id) = bounds(page);
    let rows = sqlx::query_as::<_, AdminApplicationRow>(&format!(
        "SELECT {COLUMNS} FROM applications WHERE (archived_at IS NOT NULL) = $1 \
           AND (created_at, id) < ($2, $3) ORDER BY created_at DESC, id DESC LIMIT $4"
    ))
    .bind(archived)
    .bind(ts)
    .bind(id)
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page.limit))
}

/// A live application of the zone.
pub async fn get(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<AdminApplicationRow>, sqlx::Error> {
    sqlx::query_as::<_, AdminApplicationRow>(&format!(
        "SELECT {COLUMNS} FROM applications WHERE id = $1 AND archived_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Whether a live application of the zone other than `except` is called `name`.
pub async fn name_taken(
    conn: &mut PgConnection,
    name: &str,
    except: Option<&str>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM applications WHERE name = $1 AND archived_at IS NULL \
           AND ($2::text IS NULL OR id <> $2))",
    )
    .bind(name)
    .bind(except)
    .fetch_one(conn)
    .await
}

/// A new application.
#[derive(Debug, Clone)]
pub struct NewApplication<'a> {
    /// Id.
    pub id: &'a str,
    /// Zone.
    pub zone_id: &'a str,
    /// Name.
    pub name: &'a str,
    /// `managed` or `dcr`.
    pub registration_method: &'a str,
    /// Argon2id PHC of the secret.
    pub client_secret_hash: &'a str,
    /// Traits.
    pub traits: &'a [String],
    /// Expiry (DCR).
    pub expires_at: Option<DateTime<Utc>>,
    /// Actor.
    pub created_by: &'a str,
}

/// Inserts an application.
pub async fn insert(
    conn: &mut PgConnection,
    app: &NewApplication<'_>,
) -> Result<AdminApplicationRow, sqlx::Error> {
    sqlx::query_as::<_, AdminApplicationRow>(&format!(
        "INSERT INTO applications (id, zone_id, name, registration_method, client_secret_hash, \
           traits, expires_at, created_by, updated_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING {COLUMNS}"
    ))
    .bind(app.id)
    .bind(app.zone_id)
    .bind(app.name)
    .bind(app.registration_method)
    .bind(app.client_secret_hash)
    .bind(app.traits)
    .bind(app.expires_at)
    .bind(app.created_by)
    .fetch_one(conn)
    .await
}

/// A partial update; `None` keeps the column.
#[derive(Debug, Clone, Default)]
pub struct ApplicationPatch<'a> {
    /// Name.
    pub name: Option<&'a str>,
    /// New secret hash.
    pub client_secret_hash: Option<&'a str>,
    /// Traits.
    pub traits: Option<&'a [String]>,
}

/// Applies a patch to a live application.
pub async fn update(
    conn: &mut PgConnection,
    id: &str,
    patch: &ApplicationPatch<'_>,
    actor: &str,
) -> Result<Option<AdminApplicationRow>, sqlx::Error> {
    sqlx::query_as::<_, AdminApplicationRow>(&format!(
        "UPDATE applications SET name = coalesce($2, name), \
           client_secret_hash = coalesce($3, client_secret_hash), traits = coalesce($4, traits), \
           updated_at = now(), updated_by = $5 \
         WHERE id = $1 AND archived_at IS NULL RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(patch.name)
    .bind(patch.client_secret_hash)
    .bind(patch.traits)
    .bind(actor)
    .fetch_optional(conn)
    .await
}
