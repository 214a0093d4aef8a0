//! `delegated_grants`: administrative subject grants (`/v1/zones/{z}/grants`), inside a
//! zone transaction. A grant's provider is its resource's credential provider, read through
//! the resource row.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::page::{After, Keyed, Page, PageRequest, bounds};

/// A grant as the admin API returns it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct GrantRow {
    /// Id.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// The application the grant is for.
    pub application_id: Option<String>,
    /// The user (subject) the grant is for.
    pub user_id: String,
    /// The resource row id.
    pub resource_id: String,
    /// The resource's credential provider (not stored on the grant).
    pub provider_id: Option<String>,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// `active`, `revoked` or `expired`.
    pub status: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Keyed for GrantRow {
    fn key(&self) -> After {
        After {
            ts: self.created_at,
            id: self.id.clone(),
        }
    }
}

const COLUMNS: &str = "g.id, g.zone_id, g.application_id, g.user_id, g.resource_id, \
                       r.credential_provider_id AS provider_id, g.scopes, g.status, g.created_at, \
                       g.updated_at";

/// List filters; `None` does not filter.
#[derive(Debug, Clone, Default)]
pub struct GrantFilter<'a> {
    /// Exact application.
    pub application_id: Option<&'a str>,
    /// Exact user.
    pub user_id: Option<&'a str>,
    /// Exact resource row id.
    pub resource_id: Option<&'a str>,
    /// The resource's credential provider.
    pub provider_id: Option<&'a str>,
    /// Exact status.
    pub status: Option<&'a str>,
    /// Grants holding every one of these scopes.
    pub scopes: Option<&'a [String]>,
}

/// A page of the zone's grants matching `filter`, newest first.
pub async fn list(
    conn: &mut PgConnection,
    filter: &GrantFilter<'_>,
    page: &PageRequest,
) -> Result<Page<GrantRow>, sqlx::Error> {
    let (ts, id) = bounds(page);
    let rows = sqlx::query_as::<_, GrantRow>(&format!(
        "SELECT {COLUMNS} FROM delegated_grants g \
           LEFT JOIN resources r ON r.zone_id = g.zone_id AND r.id = g.resource_id \
          WHERE ($1::text IS NULL OR g.application_id = $1) \
            AND ($2::text IS NULL OR g.user_id = $2) \
            AND ($3::text IS NULL OR g.resource_id = $3) \
            AND ($4::text IS NULL OR r.credential_provider_id = $4) \
            AND ($5::text IS NULL OR g.status = $5) \
            AND ($6::text[] IS NULL OR g.scopes @> $6) \
            AND (g.created_at, g.id) < ($7, $8) \
          ORDER BY g.created_at DESC, g.id DESC LIMIT $9"
    ))
    .bind(filter.application_id)
    .bind(filter.user_id)
    .bind(filter.resource_id)
    .bind(filter.provider_id)
    .bind(filter.status)
    .bind(filter.scopes)
    .bind(ts)
    .bind(id)
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page.limit))
}

/// A grant of the zone, whatever its status.
pub async fn get(conn: &mut PgConnection, id: &str) -> Result<Option<GrantRow>, sqlx::Error> {
    sqlx::query_as::<_, GrantRow>(&format!(
        "SELECT {COLUMNS} FROM delegated_grants g \
           LEFT JOIN resources r ON r.zone_id = g.zone_id AND r.id = g.resource_id \
          WHERE g.id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// The declared scopes of a live resource of the zone; `None` when there is none.
pub async fn resource_scopes(
    conn: &mut PgConnection,
    resource_id: &str,
) -> Result<Option<Vec<String>>, sqlx::Error> {
    sqlx::query_scalar("SELECT scopes FROM resources WHERE id = $1 AND archived_at IS NULL")
        .bind(resource_id)
        .fetch_optional(conn)
        .await
}

/// A new grant.
#[derive(Debug, Clone)]
pub struct NewGrant<'a> {
    /// Id.
    pub id: &'a str,
    /// Zone.
    pub zone_id: &'a str,
    /// Application.
    pub application_id: &'a str,
    /// User.
    pub user_id: &'a str,
    /// Resource row id.
    pub resource_id: &'a str,
    /// Scopes.
    pub scopes: &'a [String],
    /// Actor.
    pub created_by: &'a str,
}

/// Inserts an active grant.
pub async fn insert(
    conn: &mut PgConnection,
    grant: &NewGrant<'_>,
) -> Result<GrantRow, sqlx::Error> {
    sqlx::query(
        "INSERT INTO delegated_grants (id, zone_id, application_id, user_id, resource_id, scopes, \
                                       created_by, updated_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
    )
    .bind(grant.id)
    .bind(grant.zone_id)
    .bind(grant.application_id)
    .bind(grant.user_id)
    .bind(grant.resource_id)
    .bind(grant.scopes)
    .bind(grant.created_by)
    .execute(&mut *conn)
    .await?;
    get(conn, grant.id).await?.ok_or(sqlx::Error::RowNotFound)
}

/// Marks an active grant revoked. Returns the grant as it now is and whether this call
/// revoked it (`false`: it was already revoked or expired); `None` when there is no grant.
pub async fn revoke(
    conn: &mut PgConnection,
    id: &str,
    actor: &str,
) -> Result<Option<(GrantRow, bool)>, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE delegated_grants SET status = 'revoked', updated_at = now(), updated_by = $2 \
          WHERE id = $1 AND status = 'active'",
    )
    .bind(id)
    .bind(actor)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    Ok(get(conn, id).await?.map(|row| (row, changed)))
}
