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

/// Marks `pending` keys whose activation time has passed `active`, and the keys they
/// replace `retiring` with `rotated_at` = the successor's activation (storage §10.4).
/// Returns the ids of keys that became active.
pub async fn activate_due(
    conn: &mut PgConnection,
    zone_id: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let activated: Vec<(String, DateTime<Utc>, i32)> = sqlx::query_as(
        "SELECT id, activates_at, version FROM secrets \
          WHERE zone_id = $1 AND entity_id = $1 AND name = 'zone_signing_key' AND status = 'pending' \
            AND activates_at <= now() ORDER BY version",
    )
    .bind(zone_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut ids = Vec::new();
    for (id, activates_at, version) in activated {
        sqlx::query(
            "UPDATE secrets SET status = 'retiring', rotated_at = $2, updated_at = now(), updated_by = 'system:sts' \
              WHERE zone_id = $1 AND entity_id = $1 AND name = 'zone_signing_key' AND status = 'active' AND version < $3",
        )
        .bind(zone_id)
        .bind(activates_at)
        .bind(version)
        .execute(&mut *conn)
        .await?;
        sqlx::query("UPDATE secrets SET status = 'active', updated_at = now(), updated_by = 'system:sts' WHERE id = $1")
            .bind(&id)
            .execute(&mut *conn)
            .await?;
        ids.push(id);
    }
    Ok(ids)
}

/// Marks `retiring` keys whose grace ended `retired`; returns their ids.
pub async fn retire_expired(
    conn: &mut PgConnection,
    zone_id: &str,
    grace_seconds: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE secrets SET status = 'retired', updated_at = now(), updated_by = 'system:sts' \
          WHERE zone_id = $1 AND entity_id = $1 AND name = 'zone_signing_key' AND status = 'retiring' \
            AND rotated_at + make_interval(secs => $2) <= now() \
          RETURNING id",
    )
    .bind(zone_id)
    .bind(grace_seconds as f64)
    .fetch_all(conn)
    .await
}

/// Live zones (the zone registry is not row-level secured, so any role can list it; the
/// STS cannot read `secrets` across zones, so sweeps visit each zone in turn).
pub async fn live_zones(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM zones WHERE archived_at IS NULL ORDER BY id")
        .fetch_all(conn)
        .await
}

/// The highest key version of the zone (0 when it has none).
pub async fn latest_version(conn: &mut PgConnection, zone_id: &str) -> Result<i32, sqlx::Error> {
    let v: Option<i32> = sqlx::query_scalar(
        "SELECT max(version) FROM secrets WHERE zone_id = $1 AND entity_id = $1 AND name = 'zone_signing_key'",
    )
    .bind(zone_id)
    .fetch_one(conn)
    .await?;
    Ok(v.unwrap_or(0))
}
