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
