//! `applications`: the OAuth clients of the STS.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// An application as the STS needs it to authenticate a client.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApplicationRow {
    /// Id (the `application_id` form field, `client_id` claim).
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// Name.
    pub name: String,
    /// `managed` or `dcr`.
    pub registration_method: String,
    /// Argon2id PHC of the client secret.
    pub client_secret_hash: Option<String>,
    /// Traits (control keys).
    pub traits: Vec<String>,
    /// Expiry (DCR applications).
    pub expires_at: Option<DateTime<Utc>>,
    /// Archival time.
    pub archived_at: Option<DateTime<Utc>>,
}

impl ApplicationRow {
    /// Usable at `now`: not archived and not expired.
    pub fn is_usable(&self, now: DateTime<Utc>) -> bool {
        self.archived_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
}

/// An application read together with the reading transaction's `now()`, the trusted time to
/// judge its expiry by, in one round trip.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApplicationAsOf {
    /// The row.
    #[sqlx(flatten)]
    pub row: ApplicationRow,
    /// The transaction's `now()`.
    pub now: DateTime<Utc>,
}

/// Looks an application up by id, with the transaction's `now()` beside the row. Ids are
/// globally unique, so inside a cross-zone read this finds it whatever its zone; inside a zone
/// transaction only within that zone.
pub async fn find_as_of(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<ApplicationAsOf>, sqlx::Error> {
    sqlx::query_as::<_, ApplicationAsOf>(
        "SELECT id, zone_id, name, registration_method, client_secret_hash, traits, expires_at, archived_at, now() AS now \
           FROM applications WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}
