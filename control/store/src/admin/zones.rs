//! `zones` (no row-level security: the zone list is global).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::page::{After, Keyed, Page, PageRequest, bounds};

/// A zone row.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct ZoneRow {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Unique slug.
    pub slug: String,
    /// Dynamic client registration allowed.
    pub dcr_enabled: bool,
    /// What happens to live DCR sessions when DCR is turned off.
    pub dcr_shutdown: Option<String>,
    /// Operator co-author badge.
    pub operator_coauthor_badge: bool,
    /// Operator-governed zone.
    pub operator_governed: bool,
    /// Archival time.
    pub archived_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Keyed for ZoneRow {
    fn key(&self) -> After {
        After {
            ts: self.created_at,
            id: self.id.clone(),
        }
    }
}

const COLUMNS: &str = "id, name, slug, dcr_enabled, dcr_shutdown, operator_coauthor_badge, \
                       operator_governed, archived_at, created_at, updated_at";

/// A page of live zones, optionally only `only` (a zone token sees its own zone).
pub async fn list(
    conn: &mut PgConnection,
    only: Option<&str>,
    page: &PageRequest,
) -> Result<Page<ZoneRow>, sqlx::Error> {
    let (ts, id) = bounds(page);
    let rows = sqlx::query_as::<_, ZoneRow>(&format!(
        "SELECT {COLUMNS} FROM zones WHERE archived_at IS NULL AND ($1::text IS NULL OR id = $1) \
           AND (created_at, id) < ($2, $3) ORDER BY created_at DESC, id DESC LIMIT $4"
    ))
    .bind(only)
    .bind(ts)
    .bind(id)
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page.limit))
}

/// A live zone by id.
pub async fn get(conn: &mut PgConnection, id: &str) -> Result<Option<ZoneRow>, sqlx::Error> {
    sqlx::query_as::<_, ZoneRow>(&format!(
        "SELECT {COLUMNS} FROM zones WHERE id = $1 AND archived_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Whether a zone with this id ever existed (archived ones included: ids are never reused).
pub async fn id_taken(conn: &mut PgConnection, id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM zones WHERE id = $1)")
        .bind(id)
        .fetch_one(conn)
        .await
}

/// Whether another zone holds `slug`.
pub async fn slug_taken(
    conn: &mut PgConnection,
    slug: &str,
    except: Option<&str>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM zones WHERE slug = $1 AND ($2::text IS NULL OR id <> $2))",
    )
    .bind(slug)
    .bind(except)
    .fetch_one(conn)
    .await
}

/// A new zone.
#[derive(Debug, Clone)]
pub struct NewZone<'a> {
    /// Id.
    pub id: &'a str,
    /// Name.
    pub name: &'a str,
    /// Slug.
    pub slug: &'a str,
    /// DCR enabled.
    pub dcr_enabled: bool,
    /// Actor.
    pub created_by: &'a str,
}

/// Inserts a zone.
pub async fn insert(conn: &mut PgConnection, zone: &NewZone<'_>) -> Result<ZoneRow, sqlx::Error> {
    sqlx::query_as::<_, ZoneRow>(&format!(
        "INSERT INTO zones (id, name, slug, dcr_enabled, created_by, updated_by) \
         VALUES ($1, $2, $3, $4, $5, $5) RETURNING {COLUMNS}"
    ))
    .bind(zone.id)
    .bind(zone.name)
    .bind(zone.slug)
    .bind(zone.dcr_enabled)
    .bind(zone.created_by)
    .fetch_one(conn)
    .await
}

/// A partial update; `None` keeps the column.
#[derive(Debug, Clone, Default)]
pub struct ZonePatch<'a> {
    /// Name.
    pub name: Option<&'a str>,
    /// Slug.
    pub slug: Option<&'a str>,
    /// DCR enabled.
    pub dcr_enabled: Option<bool>,
    /// DCR shutdown mode.
    pub dcr_shutdown: Option<&'a str>,
    /// Co-author badge.
    pub operator_coauthor_badge: Option<bool>,
    /// Operator governed.
    pub operator_governed: Option<bool>,
}

/// Applies a patch to a live zone; `None` when there is none.
pub async fn update(
    conn: &mut PgConnection,
    id: &str,
    patch: &ZonePatch<'_>,
    actor: &str,
) -> Result<Option<ZoneRow>, sqlx::Error> {
    sqlx::query_as::<_, ZoneRow>(&format!(
        "UPDATE zones SET name = coalesce($2, name), slug = coalesce($3, slug), \
           dcr_enabled = coalesce($4, dcr_enabled), dcr_shutdown = coalesce($5, dcr_shutdown), \
           operator_coauthor_badge = coalesce($6, operator_coauthor_badge), \
           operator_governed = coalesce($7, operator_governed), updated_at = now(), updated_by = $8 \
         WHERE id = $1 AND archived_at IS NULL RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(patch.name)
    .bind(patch.slug)
    .bind(patch.dcr_enabled)
    .bind(patch.dcr_shutdown)
    .bind(patch.operator_coauthor_badge)
    .bind(patch.operator_governed)
    .bind(actor)
    .fetch_optional(conn)
    .await
}
