//! The admin audit log: every change the API makes is recorded, inside the change's own
//! transaction, as one row chained per zone (`*` for global actions) under the chain's
//! advisory lock (storage §8.7). Payloads are the request's non-secret fields; callers
//! strip secrets before they get here.

use chrono::{DateTime, SecondsFormat, Utc};
use control_crypto::{ADMIN_AUDIT_CONTENT_DOMAIN, chain_hmac, content_sha256};
use control_store::admin::admin_audit::{self, AdminAuditRow};
use serde_json::{Value, json};
use sqlx::PgConnection;

use crate::{error::ApiError, request::AdminRequest, state::Api};

/// What a handler records about its change.
#[derive(Debug, Clone)]
pub struct Action<'a> {
    /// The zone whose chain takes the row (`None`: the global chain).
    pub zone: Option<&'a str>,
    /// Entity type, e.g. `application`.
    pub entity_type: &'a str,
    /// Entity id.
    pub entity_id: Option<&'a str>,
    /// The status the response will carry.
    pub status: u16,
    /// Non-secret details.
    pub payload: Value,
}

impl<'a> Action<'a> {
    /// An action on entity `entity_id` in `zone`'s chain.
    pub fn in_zone(
        zone: &'a str,
        entity_type: &'a str,
        entity_id: &'a str,
        status: u16,
        payload: Value,
    ) -> Self {
        Self {
            zone: Some(zone),
            entity_type,
            entity_id: Some(entity_id),
            status,
            payload,
        }
    }
}

/// Records `action` in the zone transaction `tx`, then commits the change and its record
/// together.
pub async fn commit_zone(
    api: &Api,
    mut tx: control_store::zone::ZoneTx,
    req: &AdminRequest,
    action: Action<'_>,
) -> Result<(), ApiError> {
    record(api, &mut tx, req, action).await?;
    tx.commit().await?;
    Ok(())
}

/// Time truncated to the database's microsecond precision, so the hash recomputed from the
/// stored row matches.
fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    let micros = now.timestamp_micros();
    DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or(now)
}

/// Appends the row for `action` on `conn`, which must be a transaction scoped to
/// `action.zone` (a `zone_tx`) or, for the global chain, a `global_tx`.
pub async fn record(
    api: &Api,
    conn: &mut PgConnection,
    req: &AdminRequest,
    action: Action<'_>,
) -> Result<(), ApiError> {
    let id = uuid::Uuid::now_v7().to_string();
    let occurred_at = now_micros();
    let method = req.method.as_str();
    let verb = format!("{method} {}", req.path);
    let actor_scope = req.principal.scope_label();
    let status = i32::from(action.status);
    let members = json!({
        "id": id,
        "request_id": req.request_id,
        "actor_id": req.principal.id,
        "actor_name": req.principal.name,
        "actor_scope": actor_scope,
        "action": verb,
        "method": method,
        "path": req.path,
        "zone_id": action.zone,
        "entity_type": action.entity_type,
        "entity_id": action.entity_id,
        "status_code": status,
        "payload_json": action.payload,
        "occurred_at": occurred_at.to_rfc3339_opts(SecondsFormat::Micros, true),
    });
    let content = content_sha256(ADMIN_AUDIT_CONTENT_DOMAIN, &members)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let chain = action.zone.unwrap_or("*");
    let head = admin_audit::lock_head(conn, chain).await?;
    let seq = head.seq + 1;
    let hmac = api
        .config
        .audit_hmac_key
        .as_ref()
        .map(|key| chain_hmac(key, chain, seq, head.content_sha256.as_deref(), &content));
    admin_audit::insert(
        conn,
        &AdminAuditRow {
            id: &id,
            zone_id: action.zone,
            request_id: &req.request_id,
            actor_id: &req.principal.id,
            actor_name: &req.principal.name,
            actor_scope: &actor_scope,
            action: &verb,
            method,
            path: &req.path,
            entity_type: Some(action.entity_type),
            entity_id: action.entity_id,
            status_code: status,
            payload_json: &action.payload,
            occurred_at,
            content_sha256: &content,
            prev_content_sha256: head.content_sha256.as_deref(),
            chain_seq: seq,
            chain_hmac: hmac.as_ref().map(<[u8; 32]>::as_slice),
            chain_key_id: api
                .config
                .audit_hmac_key
                .as_ref()
                .map(control_crypto::HmacKey::chain_key_id),
        },
    )
    .await?;
    Ok(())
}
