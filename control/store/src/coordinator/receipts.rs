//! `idempotency_receipts` (storage §1.5): the stored answers of idempotent Coordinator calls,
//! keyed by digests only.

use sqlx::PgConnection;

/// The operation a receipt belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `session.start`.
    SessionStart,
    /// `delegation.create`.
    DelegationCreate,
    /// `invocation.create`.
    InvocationCreate,
}

impl Operation {
    /// The stored name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::SessionStart => "session.start",
            Self::DelegationCreate => "delegation.create",
            Self::InvocationCreate => "invocation.create",
        }
    }
}

/// A live receipt.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Receipt {
    /// SHA-256 of the canonical request.
    pub request_digest: Vec<u8>,
    /// Stored status.
    pub response_status: i16,
    /// Stored body.
    pub response_json: serde_json::Value,
    /// Id of what the call created.
    pub resource_id: String,
}

/// The live receipt of `key_digest` for `operation` in `scope` (the caller application).
pub async fn find(
    conn: &mut PgConnection,
    operation: Operation,
    scope: &str,
    key_digest: &[u8; 32],
) -> Result<Option<Receipt>, sqlx::Error> {
    sqlx::query_as(
        "SELECT request_digest, response_status, response_json, resource_id \
           FROM idempotency_receipts \
          WHERE operation = $1 AND scope_id = $2 AND key_digest = $3 AND expires_at > now()",
    )
    .bind(operation.name())
    .bind(scope)
    .bind(key_digest.as_slice())
    .fetch_optional(conn)
    .await
}

/// Live receipts of `scope` in the transaction's zone.
pub async fn count_live(conn: &mut PgConnection, scope: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM idempotency_receipts WHERE scope_id = $1 AND expires_at > now()",
    )
    .bind(scope)
    .fetch_one(conn)
    .await
}

/// A receipt to store.
#[derive(Debug, Clone)]
pub struct NewReceipt<'a> {
    /// Zone.
    pub zone_id: &'a str,
    /// Operation.
    pub operation: Operation,
    /// Caller application.
    pub scope: &'a str,
    /// SHA-256 of the domain-separated key.
    pub key_digest: &'a [u8; 32],
    /// SHA-256 of the canonical request.
    pub request_digest: &'a [u8; 32],
    /// `agent_session` or `delegation_edge`.
    pub resource_type: &'a str,
    /// Id of what the call created.
    pub resource_id: &'a str,
    /// Status answered.
    pub status: u16,
    /// Body answered.
    pub response: &'a serde_json::Value,
    /// Lifetime in seconds.
    pub lifetime_seconds: i64,
}

/// Stores a receipt. An expired receipt of the same key is deleted first (the role may
/// delete receipts, not update them).
pub async fn insert(conn: &mut PgConnection, new: &NewReceipt<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM idempotency_receipts \
          WHERE operation = $1 AND scope_id = $2 AND key_digest = $3 AND expires_at <= now()",
    )
    .bind(new.operation.name())
    .bind(new.scope)
    .bind(new.key_digest.as_slice())
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO idempotency_receipts (id, zone_id, operation, scope_id, key_digest, \
                request_digest, resource_type, resource_id, response_status, response_json, \
                expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now() + make_interval(secs => $11))",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(new.zone_id)
    .bind(new.operation.name())
    .bind(new.scope)
    .bind(new.key_digest.as_slice())
    .bind(new.request_digest.as_slice())
    .bind(new.resource_type)
    .bind(new.resource_id)
    .bind(i16::try_from(new.status).unwrap_or(200))
    .bind(new.response)
    .bind(new.lifetime_seconds)
    .execute(conn)
    .await?;
    Ok(())
}
