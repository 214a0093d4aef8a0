//! The dead-letter stream `caracal.audit.events.dlq` (storage §6.1, §8.5): writing an entry
//! with its reason, browsing, replaying the retryable ones and purging by age. It is never
//! trimmed automatically; signature, validation and tamper entries stay as evidence.

use std::collections::BTreeMap;

use control_events::streams::{
    AUDIT_DLQ, AUDIT_EVENTS, AUDIT_FIELD_DATA, AUDIT_FIELD_ID, AUDIT_FIELD_SIG,
};
use redis::{AsyncCommands, aio::ConnectionLike};
use serde::Serialize;

use crate::entry::Entry;

/// Reasons whose entries `replay` puts back on the audit stream.
const REPLAYABLE: [&str; 2] = ["transient_exceeded_max_deliveries:", "pg_permanent_error:"];

/// Copies `entry` to the dead-letter stream with `reason`.
///
/// # Errors
///
/// Redis errors; the caller then leaves the entry pending.
pub async fn write<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    entry: &Entry,
    reason: &str,
    deliveries: u64,
) -> Result<(), redis::RedisError> {
    let received_at = chrono::Utc::now().timestamp_millis().to_string();
    let deliveries = deliveries.to_string();
    let mut fields: Vec<(&str, &str)> = vec![
        ("reason", reason),
        ("src_entry_id", &entry.entry_id),
        ("received_at", &received_at),
        ("deliveries", &deliveries),
    ];
    for (name, value) in [
        ("src_id", &entry.id),
        ("src_data", &entry.data),
        ("src_sig", &entry.sig),
    ] {
        if let Some(value) = value {
            fields.push((name, value));
        }
    }
    let _id: String = redis::cmd("XADD")
        .arg(AUDIT_DLQ)
        .arg("*")
        .arg(&fields)
        .query_async(conn)
        .await?;
    Ok(())
}

/// One dead letter as the browse endpoint shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Its id in the dead-letter stream.
    pub dlq_id: String,
    /// Its fields (`reason`, `src_entry_id`, `src_id`, `received_at`, `deliveries`,
    /// `src_data`, `src_sig`).
    pub fields: BTreeMap<String, String>,
}

impl DeadLetter {
    fn reason(&self) -> &str {
        self.fields.get("reason").map_or("", String::as_str)
    }

    /// Whether `replay` puts it back on the audit stream.
    #[must_use]
    pub fn replayable(&self) -> bool {
        REPLAYABLE
            .iter()
            .any(|prefix| self.reason().starts_with(prefix))
    }
}

/// Up to `count` dead letters after `after` (exclusive; `None` = from the start), oldest
/// first.
///
/// # Errors
///
/// Redis errors.
pub async fn list<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    after: Option<&str>,
    count: usize,
) -> Result<Vec<DeadLetter>, redis::RedisError> {
    let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
    let reply: redis::streams::StreamRangeReply =
        conn.xrange_count(AUDIT_DLQ, start, "+", count).await?;
    Ok(reply.ids.iter().map(dead_letter).collect())
}

/// The dead letter `id`, if it exists.
///
/// # Errors
///
/// Redis errors.
pub async fn show<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    id: &str,
) -> Result<Option<DeadLetter>, redis::RedisError> {
    let reply: redis::streams::StreamRangeReply = conn.xrange_count(AUDIT_DLQ, id, id, 1).await?;
    Ok(reply.ids.first().map(dead_letter))
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Replayed {
    /// Entries put back on the audit stream and removed from the dead letters.
    pub replayed: Vec<String>,
    /// Entries kept as evidence (their reason is not retryable).
    pub kept: Vec<String>,
}

/// Puts the retryable dead letters among `ids` (all of them when `ids` is empty) back on
/// `caracal.audit.events` with their original `id`, `data` and `sig`, then deletes them from
/// the dead letters.
///
/// # Errors
///
/// Redis errors; entries already re-added stay re-added (the ledger absorbs duplicates).
pub async fn replay<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    ids: &[String],
) -> Result<Replayed, redis::RedisError> {
    let letters = if ids.is_empty() {
        let reply: redis::streams::StreamRangeReply = conn.xrange_all(AUDIT_DLQ).await?;
        reply.ids.iter().map(dead_letter).collect::<Vec<_>>()
    } else {
        let mut letters = Vec::new();
        for id in ids {
            letters.extend(show(conn, id).await?);
        }
        letters
    };
    let mut done = Replayed::default();
    for letter in letters {
        let (Some(id), Some(data)) = (letter.fields.get("src_id"), letter.fields.get("src_data"))
        else {
            done.kept.push(letter.dlq_id);
            continue;
        };
        if !letter.replayable() {
            done.kept.push(letter.dlq_id);
            continue;
        }
        let sig = letter.fields.get("src_sig").cloned().unwrap_or_default();
        let _new_id: String = redis::cmd("XADD")
            .arg(AUDIT_EVENTS)
            .arg("*")
            .arg(&[
                (AUDIT_FIELD_ID, id.as_str()),
                (AUDIT_FIELD_DATA, data),
                (AUDIT_FIELD_SIG, &sig),
            ])
            .query_async(conn)
            .await?;
        let _deleted: i64 = conn.xdel(AUDIT_DLQ, &[&letter.dlq_id]).await?;
        done.replayed.push(letter.dlq_id);
    }
    Ok(done)
}

/// Deletes the dead letters older than `before_ms` (unix ms); returns how many.
///
/// # Errors
///
/// Redis errors.
pub async fn purge_before<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    before_ms: i64,
) -> Result<u64, redis::RedisError> {
    redis::cmd("XTRIM")
        .arg(AUDIT_DLQ)
        .arg("MINID")
        .arg(format!("{before_ms}-0"))
        .query_async(conn)
        .await
}

/// Length and the age of the oldest dead letter (ms), for metrics and `/ready`.
///
/// # Errors
///
/// Redis errors.
pub async fn stats<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
) -> Result<(u64, Option<i64>), redis::RedisError> {
    let length: u64 = conn.xlen(AUDIT_DLQ).await?;
    let oldest: redis::streams::StreamRangeReply =
        conn.xrange_count(AUDIT_DLQ, "-", "+", 1).await?;
    let oldest_ms = oldest
        .ids
        .first()
        .and_then(|entry| entry.id.split_once('-'))
        .and_then(|(ms, _)| ms.parse::<i64>().ok());
    Ok((
        length,
        oldest_ms.map(|ms| chrono::Utc::now().timestamp_millis() - ms),
    ))
}

fn dead_letter(entry: &redis::streams::StreamId) -> DeadLetter {
    DeadLetter {
        dlq_id: entry.id.clone(),
        fields: entry
            .map
            .iter()
            .filter_map(|(k, v)| {
                redis::from_redis_value::<String>(v.clone())
                    .ok()
                    .map(|v| (k.clone(), v))
            })
            .collect(),
    }
}
