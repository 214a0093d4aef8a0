//! Enqueueing stream messages in the producer's transaction (storage §7.2).

use sqlx::PgConnection;

/// A message for `event_outbox` (producers `api`, `sts`).
#[derive(Debug, Clone)]
pub struct OutboxMessage<'a> {
    /// UUIDv7.
    pub id: &'a str,
    /// `api` or `sts`.
    pub producer: &'a str,
    /// Zone, when the message has one.
    pub zone_id: Option<&'a str>,
    /// Stream name.
    pub topic: &'a str,
    /// Names the state transition exactly once.
    pub dedupe_key: Option<&'a str>,
    /// Flat JSON object of the stream fields.
    pub payload: &'a serde_json::Value,
    /// Request that caused it.
    pub request_id: Option<&'a str>,
}

/// Inserts the message unless its dedupe key was already enqueued; returns whether it was.
pub async fn enqueue(
    conn: &mut PgConnection,
    message: &OutboxMessage<'_>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO event_outbox (id, producer, zone_id, topic, dedupe_key, payload_json, request_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (producer, topic, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING",
    )
    .bind(message.id)
    .bind(message.producer)
    .bind(message.zone_id)
    .bind(message.topic)
    .bind(message.dedupe_key)
    .bind(message.payload)
    .bind(message.request_id)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Announces a zone signing-key change on `caracal.keys.invalidate` (storage §6.1) in the
/// caller's transaction: `reason` is `created`, `rotated` or `retired`; the dedupe key
/// `keys:<kid>:<reason>` names the transition once.
pub async fn enqueue_key_change(
    conn: &mut PgConnection,
    zone_id: &str,
    kid: &str,
    reason: &str,
    request_id: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let payload = serde_json::json!({"zone_id": zone_id, "kid": kid, "reason": reason});
    let dedupe = format!("keys:{kid}:{reason}");
    let id = uuid::Uuid::now_v7().to_string();
    enqueue(
        conn,
        &OutboxMessage {
            id: &id,
            producer: "sts",
            zone_id: Some(zone_id),
            topic: KEYS_INVALIDATE,
            dedupe_key: Some(&dedupe),
            payload: &payload,
            request_id,
        },
    )
    .await
}

/// The stream of signing-key changes (the same name as `control_events::streams`).
pub const KEYS_INVALIDATE: &str = "caracal.keys.invalidate";
