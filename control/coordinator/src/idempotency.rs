//! Idempotency keys (wire-contract §7.5, authority §2.1 step 3): `idempotency-key` scopes to
//! (zone, caller application, operation). The same key with the same request replays the
//! stored answer with `Idempotency-Replayed: true` while what it created is still live; the
//! same key with another request is 409 `idempotency_key_conflict`; a replay whose session
//! or edge has ended is 409 `idempotency_result_inactive`; more than
//! `IDEMPOTENCY_MAX_RECEIPTS_PER_SCOPE` live receipts is 429
//! `idempotency_receipt_limit_exceeded`.
//!
//! Receipts store digests only: `SHA-256("caracal.idempotency.v1\n" ‖ key)` and the SHA-256
//! of the request body in canonical form (object members sorted, no insignificant white
//! space: RFC 8785 for the integers, strings, booleans and nulls these bodies hold).

use control_store::coordinator::receipts::{self, NewReceipt, Operation, Receipt};
use http::HeaderMap;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;

use crate::{
    config::Receipts,
    error::{CoordError, Problem, refuse},
    request::Reply,
};

/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// A parsed `idempotency-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The key as sent (an invocation stores it; receipts keep only the digest).
    pub raw: String,
    /// SHA-256 of the domain-separated key.
    pub digest: [u8; 32],
    /// Sent with `idempotency-key-kind: generated` (shorter retention).
    pub generated: bool,
}

/// The key of `headers`, if any: 1..=255 printable ASCII characters, else 400
/// `invalid_idempotency_key`.
pub fn from_headers(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN)
        .filter(|k| k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            Problem::new(
                400,
                "invalid_idempotency_key",
                "idempotency-key must be 1 to 255 printable ASCII characters",
            )
        })?;
    let mut hasher = Sha256::new();
    hasher.update(b"caracal.idempotency.v1\n");
    hasher.update(key.as_bytes());
    let generated = headers
        .get("idempotency-key-kind")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|kind| kind.eq_ignore_ascii_case("generated"));
    Ok(Some(IdempotencyKey {
        raw: key.to_owned(),
        digest: hasher.finalize().into(),
        generated,
    }))
}

/// SHA-256 of the canonical form of a request body.
pub fn request_digest(body: &Value) -> [u8; 32] {
    let mut canonical = String::new();
    write_canonical(body, &mut canonical);
    Sha256::digest(canonical.as_bytes()).into()
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (name, member)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(name.clone()).to_string());
                out.push(':');
                write_canonical(member, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            out.push_str(&value.to_string());
        }
    }
}

/// One idempotent call: its key, operation, scope (the caller application) and request
/// digest.
#[derive(Debug, Clone)]
pub struct Idempotent<'a> {
    /// The parsed key.
    pub key: &'a IdempotencyKey,
    /// The operation.
    pub operation: Operation,
    /// The caller application.
    pub scope: &'a str,
    /// SHA-256 of the canonical request body.
    pub request: [u8; 32],
}

impl<'a> Idempotent<'a> {
    /// The call of `key`, for `operation` by `scope`, with request body `body`.
    pub fn new(
        key: &'a IdempotencyKey,
        operation: Operation,
        scope: &'a str,
        body: &Value,
    ) -> Self {
        Self {
            key,
            operation,
            scope,
            request: request_digest(body),
        }
    }

    /// The live receipt of the same request, if any. Call inside the operation's
    /// transaction, after its advisory lock, so two concurrent first uses of one key cannot
    /// both create.
    ///
    /// # Errors
    ///
    /// 409 `idempotency_key_conflict` when the key was used for another request; 429
    /// `idempotency_receipt_limit_exceeded` when a fresh key would exceed the scope's bound.
    pub async fn lookup(
        &self,
        conn: &mut PgConnection,
        limits: &Receipts,
    ) -> Result<Option<Receipt>, CoordError> {
        if let Some(receipt) =
            receipts::find(conn, self.operation, self.scope, &self.key.digest).await?
        {
            if receipt.request_digest.as_slice() != self.request.as_slice() {
                return Err(refuse(409, "idempotency_key_conflict").into());
            }
            return Ok(Some(receipt));
        }
        if receipts::count_live(conn, self.scope).await? >= limits.max_per_scope {
            return Err(refuse(429, "idempotency_receipt_limit_exceeded").into());
        }
        Ok(None)
    }

    /// Stores the answer of the call that created `resource_id`.
    pub async fn store(
        &self,
        conn: &mut PgConnection,
        zone: &str,
        (resource_type, resource_id): (&str, &str),
        answer: &Value,
        limits: &Receipts,
    ) -> Result<(), CoordError> {
        let lifetime = if self.key.generated {
            limits.generated_retention
        } else {
            limits.retention
        };
        receipts::insert(
            conn,
            &NewReceipt {
                zone_id: zone,
                operation: self.operation,
                scope: self.scope,
                key_digest: &self.key.digest,
                request_digest: &self.request,
                resource_type,
                resource_id,
                status: 201,
                response: answer,
                lifetime_seconds: i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX),
            },
        )
        .await?;
        Ok(())
    }
}

/// The answer to a replay: the stored one with `Idempotency-Replayed: true` while what it
/// created is `live`, else 409 `idempotency_result_inactive`.
pub fn replay(receipt: Receipt, live: bool) -> Result<Reply, CoordError> {
    if !live {
        return Err(refuse(409, "idempotency_result_inactive").into());
    }
    Ok(Reply::Replayed(
        u16::try_from(receipt.response_status).unwrap_or(201),
        receipt.response_json,
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_digest_ignores_member_order_and_white_space() {
        let a = json!({"b": [1, {"y": true, "x": null}], "a": "s"});
        let b: Value =
            serde_json::from_str(r#"{ "a":"s", "b":[ 1, {"x":null,"y":true} ] }"#).unwrap();
        assert_eq!(request_digest(&a), request_digest(&b));
        assert_ne!(request_digest(&a), request_digest(&json!({"a": "s"})));
    }

    #[test]
    fn keys_are_bounded_printable_ascii() {
        let mut headers = HeaderMap::new();
        assert_eq!(from_headers(&headers).unwrap(), None);
        headers.insert("idempotency-key", "k-1".parse().unwrap());
        let key = from_headers(&headers).unwrap().unwrap();
        assert!(!key.generated);
        headers.insert("idempotency-key-kind", "generated".parse().unwrap());
        assert!(from_headers(&headers).unwrap().unwrap().generated);
        headers.insert("idempotency-key", "a b".parse().unwrap());
        assert_eq!(
            from_headers(&headers).unwrap_err().code,
            "invalid_idempotency_key"
        );
        headers.insert("idempotency-key", "x".repeat(256).parse().unwrap());
        assert!(from_headers(&headers).is_err());
    }
}
