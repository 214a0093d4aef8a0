//! `admin_tokens`: minted admin bearer tokens, stored as SHA-256 (lookup) plus Argon2id.
//! Global rows are reached in a `global_tx` / `cross_zone_read`; zone rows in a `zone_tx`.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::page::{After, Keyed, Page, PageRequest, bounds};

/// A token row without its hashes (what the API shows).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct AdminTokenRow {
    /// Id.
    pub id: String,
    /// Zone of a zone token.
    pub zone_id: Option<String>,
    /// Name.
    pub name: String,
    /// `global` or `zone`.
    pub scope: String,
    /// `read`, `write` or `approve`.
    pub capability: String,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Last use.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl Keyed for AdminTokenRow {
    fn key(&self) -> After {
        After {
            ts: self.created_at,
            id: self.id.clone(),
        }
    }
}

/// A live token found by its SHA-256, with its Argon2id PHC for verification.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenCredential {
    /// The row.
    #[sqlx(flatten)]
    pub row: AdminTokenRow,
    /// Argon2id PHC.
    pub token_hash: String,
    /// The reading transaction's `now()`.
    pub now: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, zone_id, name, scope, capability, expires_at, last_used_at, revoked_at, created_at";

/// The unrevoked token whose SHA-256 is `sha256` (inside a cross-zone read).
pub async fn find_live(
    conn: &mut PgConnection,
    sha256: &[u8],
) -> Result<Option<TokenCredential>, sqlx::Error> {
    sqlx::query_as::<_, TokenCredential>(&format!(
        "SELECT {COLUMNS}, token_hash, now() AS now FROM admin_tokens \
         WHERE token_sha256 = $1 AND revoked_at IS NULL"
    ))
    .bind(sha256)
    .fetch_optional(conn)
    .await
}

/// A page of the tokens visible in the transaction's scope.
pub async fn list(
    conn: &mut PgConnection,
    page: &PageRequest,
) -> Result<Page<AdminTokenRow>, sqlx::Error> {
    let (ts, id) = bounds(page);
    let rows = sqlx::query_as::<_, AdminTokenRow>(&format!(
        "SELECT {COLUMNS} FROM admin_tokens WHERE (created_at, id) < ($1, $2) \
         ORDER BY created_at DESC, id DESC LIMIT $3"
    ))
    .bind(ts)
    .bind(id)
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page.limit))
}

/// A new token.
#[derive(Debug, Clone)]
pub struct NewAdminToken<'a> {
    /// Id.
    pub id: &'a str,
    /// Zone of a zone token.
    pub zone_id: Option<&'a str>,
    /// Name.
    pub name: &'a str,
    /// SHA-256 of the token.
    pub token_sha256: &'a [u8],
    /// Argon2id PHC of the token.
    pub token_hash: &'a str,
    /// Capability.
    pub capability: &'a str,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Actor.
    pub created_by: &'a str,
}

/// Inserts a token.
pub async fn insert(
    conn: &mut PgConnection,
    token: &NewAdminToken<'_>,
) -> Result<AdminTokenRow, sqlx::Error> {
    sqlx::query_as::<_, AdminTokenRow>(&format!(
        "INSERT INTO admin_tokens (id, zone_id, name, token_sha256, token_hash, scope, capability, \
           expires_at, created_by, updated_by) \
         VALUES ($1, $2, $3, $4, $5, CASE WHEN $2::text IS NULL THEN 'global' ELSE 'zone' END, \
                 $6, $7, $8, $8) RETURNING {COLUMNS}"
    ))
    .bind(token.id)
    .bind(token.zone_id)
    .bind(token.name)
    .bind(token.token_sha256)
    .bind(token.token_hash)
    .bind(token.capability)
    .bind(token.expires_at)
    .bind(token.created_by)
    .fetch_one(conn)
    .await
}

/// Revokes an unrevoked token visible in the transaction's scope; false when none.
pub async fn revoke(conn: &mut PgConnection, id: &str, actor: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE admin_tokens SET revoked_at = now(), updated_at = now(), updated_by = $2 \
         WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(actor)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
