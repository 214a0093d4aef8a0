//! Zone signing keys: `secrets` rows with `name = 'zone_signing_key'` (storage §10.4).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// A zone signing key row. The private key is sealed; `public_jwk` is in clear.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SigningKeyRow {
    /// Row id = JWT `kid`.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// 1, 2, …
    pub version: i32,
    /// `pending`, `active`, `retiring`, `retired`.
    pub status: String,
    /// When it may sign.
    pub activates_at: DateTime<Utc>,
    /// When its successor took over.
    pub rotated_at: Option<DateTime<Utc>>,
    /// Public JWK.
    pub public_jwk: Option<serde_json::Value>,
    /// Nonce of the sealed PKCS#8 key.
    pub nonce: Vec<u8>,
    /// Sealed PKCS#8 key (ct ‖ tag).
    pub ciphertext: Vec<u8>,
    /// KEK id.
    pub dek_id: String,
}

/// Keys of the current zone that may still verify or sign (not `retired`), newest first.
pub async fn list_usable(
    conn: &mut PgConnection,
    zone_id: &str,
) -> Result<Vec<SigningKeyRow>, sqlx::Error> {
    sqlx::query_as::<_, SigningKeyRow>(
        "SELECT id, zone_id, version, status, activates_at, rotated_at, public_jwk, nonce, ciphertext, dek_id \
           FROM secrets \
          WHERE zone_id = $1 AND entity_id = $1 AND name = 'zone_signing_key' AND status <> 'retired' \
          ORDER BY version DESC",
    )
    .bind(zone_id)
    .fetch_all(conn)
    .await
}

/// Serialises key creation for a zone across STS replicas (transaction-scoped).
pub async fn lock_zone(conn: &mut PgConnection, zone_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('caracal:zone_signing_key:' || $1, 0))",
    )
    .bind(zone_id)
    .execute(conn)
    .await
    .map(|_| ())
}

/// A key to insert.
#[derive(Debug, Clone)]
pub struct NewSigningKey<'a> {
    /// Row id = `kid` (UUIDv7).
    pub id: &'a str,
    /// Zone.
    pub zone_id: &'a str,
    /// Version.
    pub version: i32,
    /// `active` (first key) or `pending` (rotation).
    pub status: &'a str,
    /// When it may sign.
    pub activates_at: DateTime<Utc>,
    /// Public JWK.
    pub public_jwk: &'a serde_json::Value,
    /// Nonce.
    pub nonce: &'a [u8],
    /// Sealed PKCS#8.
    pub ciphertext: &'a [u8],
    /// KEK id.
    pub dek_id: &'a str,
    /// Actor.
    pub created_by: &'a str,
}

/// Inserts a key.
pub async fn insert(conn: &mut PgConnection, key: &NewSigningKey<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO secrets (id, zone_id, entity_id, name, type, ciphertext, nonce, dek_id, version, status, \
                              activates_at, public_jwk, created_by, updated_by) \
         VALUES ($1, $2, $2, 'zone_signing_key', 'token', $3, $4, $5, $6, $7, $8, $9, $10, $10)",
    )
    .bind(key.id)
    .bind(key.zone_id)
    .bind(key.ciphertext)
    .bind(key.nonce)
    .bind(key.dek_id)
    .bind(key.version)
    .bind(key.status)
    .bind(key.activates_at)
    .bind(key.public_jwk)
    .bind(key.created_by)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Whether the zone exists (JWKS answers 404 for unknown zones).
pub async fn zone_exists(conn: &mut PgConnection, zone_id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM zones WHERE id = $1 AND archived_at IS NULL)")
        .bind(zone_id)
        .fetch_one(conn)
        .await
}
