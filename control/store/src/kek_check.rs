//! `kek_check`: the KEK canary (storage §10.1). `caracal migrate` seals it; every service
//! holding `ZONE_KEK` opens it at start-up and stays unready when it cannot.

use sqlx::PgConnection;

/// The canary's table.
pub const CANARY_TABLE: &str = "kek_check";
/// The canary's column.
pub const CANARY_COLUMN: &str = "ciphertext";
/// The zone part of the canary's associated data (the canary belongs to no zone).
pub const CANARY_ZONE: &str = "*";
/// The row part of the canary's associated data.
pub const CANARY_ROW: &str = "kek_check";
/// The sealed plaintext.
pub const CANARY_PLAINTEXT: &[u8] = b"caracal.kek_check.v1";

/// The sealed canary.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Canary {
    /// KEK id it is sealed under.
    pub dek_id: String,
    /// Nonce.
    pub nonce: Vec<u8>,
    /// Ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

/// The canary, when one was sealed.
pub async fn read(conn: &mut PgConnection) -> Result<Option<Canary>, sqlx::Error> {
    sqlx::query_as::<_, Canary>("SELECT dek_id, nonce, ciphertext FROM kek_check")
        .fetch_optional(conn)
        .await
}
