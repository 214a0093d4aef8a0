//! `sessions`: authority records, one per successful mint (the JWT `sid`).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// A new authority record.
#[derive(Debug, Clone)]
pub struct NewAuthorityRecord<'a> {
    /// New UUIDv7 (the `sid`).
    pub id: &'a str,
    /// Zone.
    pub zone_id: &'a str,
    /// `user` or `application`.
    pub session_type: &'a str,
    /// Subject.
    pub subject_id: &'a str,
    /// Minting application.
    pub application_id: &'a str,
    /// Parent record (`use=resource` mints).
    pub parent_id: Option<&'a str>,
    /// Root record.
    pub root_id: &'a str,
    /// Equal to the mandate's `exp`.
    pub expires_at: DateTime<Utc>,
    /// When the subject authenticated.
    pub authenticated_at: DateTime<Utc>,
    /// Non-secret claim snapshot.
    pub claims_json: &'a serde_json::Value,
    /// Actor, e.g. `system:sts`.
    pub created_by: &'a str,
}

/// An authority record as the checks read it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuthorityRecordRow {
    /// Id.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// `user` or `application`.
    pub session_type: String,
    /// Subject.
    pub subject_id: String,
    /// Minting application.
    pub application_id: Option<String>,
    /// Parent.
    pub parent_id: Option<String>,
    /// Root.
    pub root_id: String,
    /// `active`, `revoked` or `expired`.
    pub status: String,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
}

impl AuthorityRecordRow {
    /// Active and unexpired at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.status == "active" && self.expires_at > now
    }
}

/// Inserts a record.
pub async fn insert(
    conn: &mut PgConnection,
    record: &NewAuthorityRecord<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sessions (id, zone_id, session_type, subject_id, application_id, parent_id, root_id, \
                               status, expires_at, authenticated_at, claims_json, created_by, updated_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $9, $10, $11, $11)",
    )
    .bind(record.id)
    .bind(record.zone_id)
    .bind(record.session_type)
    .bind(record.subject_id)
    .bind(record.application_id)
    .bind(record.parent_id)
    .bind(record.root_id)
    .bind(record.expires_at)
    .bind(record.authenticated_at)
    .bind(record.claims_json)
    .bind(record.created_by)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Reads a record in the current zone.
pub async fn find(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<AuthorityRecordRow>, sqlx::Error> {
    sqlx::query_as::<_, AuthorityRecordRow>(
        "SELECT id, zone_id, session_type, subject_id, application_id, parent_id, root_id, status, expires_at \
           FROM sessions WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}
