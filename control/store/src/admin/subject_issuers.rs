//! `subject_issuers`: the external OIDC issuers a zone trusts for federation, as the admin
//! API manages them (inside a zone transaction). Deleting one archives it; the STS reads
//! live rows only.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::page::{After, Keyed, Page, PageRequest, bounds};

/// A subject issuer as the admin API returns it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct SubjectIssuerAdminRow {
    /// Id.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// The exact `iss` the issuer's id_tokens carry.
    pub issuer: String,
    /// Where the issuer publishes its key set.
    pub jwks_url: String,
    /// The audience its id_tokens must carry.
    pub audience: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Keyed for SubjectIssuerAdminRow {
    fn key(&self) -> After {
        After {
            ts: self.created_at,
            id: self.id.clone(),
        }
    }
}

const COLUMNS: &str = "id, zone_id, issuer, jwks_url, audience, created_at, updated_at";

/// A page of the zone's live issuers.
pub async fn list(
    conn: &mut PgConnection,
    page: &PageRequest,
) -> Result<Page<SubjectIssuerAdminRow>, sqlx::Error> {
    let (ts, id) = bounds(page);
    let rows = sqlx::query_as::<_, SubjectIssuerAdminRow>(&format!(
        "SELECT {COLUMNS} FROM subject_issuers WHERE archived_at IS NULL \
           AND (created_at, id) < ($1, $2) ORDER BY created_at DESC, id DESC LIMIT $3"
    ))
    .bind(ts)
    .bind(id)
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page.limit))
}

/// A live issuer of the zone.
pub async fn get(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<SubjectIssuerAdminRow>, sqlx::Error> {
    sqlx::query_as::<_, SubjectIssuerAdminRow>(&format!(
        "SELECT {COLUMNS} FROM subject_issuers WHERE id = $1 AND archived_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Serialises issuer creation in the zone for the rest of the transaction, so the
/// per-zone limit holds under concurrent creates.
pub async fn lock_zone(conn: &mut PgConnection, zone_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('caracal:subject_issuers:' || $1, 0))",
    )
    .bind(zone_id)
    .execute(conn)
    .await
    .map(|_| ())
}

/// How many live issuers the zone has.
pub async fn count_live(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM subject_issuers WHERE archived_at IS NULL")
        .fetch_one(conn)
        .await
}

/// Whether a live issuer of the zone has this `issuer`.
pub async fn issuer_taken(conn: &mut PgConnection, issuer: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM subject_issuers WHERE issuer = $1 AND archived_at IS NULL)",
    )
    .bind(issuer)
    .fetch_one(conn)
    .await
}

/// A new issuer.
#[derive(Debug, Clone)]
pub struct NewSubjectIssuer<'a> {
    /// Id.
    pub id: &'a str,
    /// Zone.
    pub zone_id: &'a str,
    /// `iss`.
    pub issuer: &'a str,
    /// Key set URL.
    pub jwks_url: &'a str,
    /// Audience.
    pub audience: &'a str,
    /// Actor.
    pub created_by: &'a str,
}

/// Inserts an issuer.
pub async fn insert(
    conn: &mut PgConnection,
    issuer: &NewSubjectIssuer<'_>,
) -> Result<SubjectIssuerAdminRow, sqlx::Error> {
    sqlx::query_as::<_, SubjectIssuerAdminRow>(&format!(
        "INSERT INTO subject_issuers (id, zone_id, issuer, jwks_url, audience, created_by, updated_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING {COLUMNS}"
    ))
    .bind(issuer.id)
    .bind(issuer.zone_id)
    .bind(issuer.issuer)
    .bind(issuer.jwks_url)
    .bind(issuer.audience)
    .bind(issuer.created_by)
    .fetch_one(conn)
    .await
}

/// Changes a live issuer's key set URL and/or audience; `None` keeps the column.
pub async fn update(
    conn: &mut PgConnection,
    id: &str,
    jwks_url: Option<&str>,
    audience: Option<&str>,
    actor: &str,
) -> Result<Option<SubjectIssuerAdminRow>, sqlx::Error> {
    sqlx::query_as::<_, SubjectIssuerAdminRow>(&format!(
        "UPDATE subject_issuers SET jwks_url = coalesce($2, jwks_url), \
           audience = coalesce($3, audience), updated_at = now(), updated_by = $4 \
         WHERE id = $1 AND archived_at IS NULL RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(jwks_url)
    .bind(audience)
    .bind(actor)
    .fetch_optional(conn)
    .await
}
