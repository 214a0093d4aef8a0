//! The audit stream as a work queue (storage §6.5, §8.4): the shared group
//! `audit-ingestor`, the ingest loops that read new entries, the claim loop that takes over
//! entries idle at a consumer (dead-lettering those delivered too often), and the trim loop
//! that removes only entries below every group's delivered and pending point.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use control_events::streams::{AUDIT_EVENTS, AUDIT_INGESTOR_GROUP};
use control_store::audit::ledger::Alert;
use redis::{
    AsyncCommands,
    aio::{ConnectionLike, MultiplexedConnection},
    streams::{StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply},
};
use tokio::{sync::watch, task::JoinHandle};

use crate::{dlq, entry::Entry, ingest::Ledger};

/// Entries per `XAUTOCLAIM` page.
const CLAIM_PAGE: usize = 500;
/// Consumers idle this long with nothing pending are removed from the group.
const CONSUMER_IDLE_REMOVE_MS: i64 = 3_600_000;

/// What the loops observe about the stream, for `/ready` and `/metrics`.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// The group exists and an ingest loop is connected.
    pub connected: AtomicBool,
    /// Entries of the group not yet delivered (`lag` of `XINFO GROUPS`).
    pub lag: AtomicU64,
    /// Entries delivered and not acknowledged.
    pub pending: AtomicU64,
    /// Idle time of the oldest pending entry (ms; 0 when none).
    pub oldest_pending_ms: AtomicI64,
    /// Dead letters.
    pub dlq_length: AtomicU64,
    /// Age of the oldest dead letter (ms; 0 when none).
    pub dlq_oldest_ms: AtomicI64,
    /// Entries in the stream.
    pub length: AtomicU64,
    /// Trims that removed entries.
    pub trims: AtomicU64,
}

/// Creates the group at the start of the stream (`0`, `MKSTREAM`), so events produced
/// before the ledger first ran are ingested; an existing group is fine.
///
/// # Errors
///
/// Redis errors.
pub async fn ensure_group<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
) -> Result<(), redis::RedisError> {
    let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(AUDIT_EVENTS)
        .arg(AUDIT_INGESTOR_GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}

/// A connection for blocking reads: its response deadline outlasts the 1 s `BLOCK`.
async fn blocking_connection(
    client: &redis::Client,
) -> Result<MultiplexedConnection, redis::RedisError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Acknowledges `ids`.
async fn ack<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    ids: &[String],
) -> Result<(), redis::RedisError> {
    if ids.is_empty() {
        return Ok(());
    }
    let _acked: i64 = conn.xack(AUDIT_EVENTS, AUDIT_INGESTOR_GROUP, ids).await?;
    Ok(())
}

/// Runs `round` until shutdown, backing off 100 ms doubling to 5 s after each failure.
fn supervise<F, Fut>(
    name: &'static str,
    mut shutdown: watch::Receiver<bool>,
    round: F,
) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), redis::RedisError>> + Send,
{
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                result = round() => match result {
                    Ok(()) => backoff = Duration::from_millis(100),
                    Err(error) => {
                        tracing::warn!(loop_name = name, %error, "audit stream loop interrupted; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    })
}

/// Spawns one ingest loop reading new entries as `consumer`.
pub fn spawn_ingest(
    ledger: Ledger,
    client: redis::Client,
    consumer: String,
    stats: Arc<StreamStats>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let inner_shutdown = shutdown.clone();
    supervise("ingest", shutdown, move || {
        let (ledger, client, consumer, stats, shutdown) = (
            ledger.clone(),
            client.clone(),
            consumer.clone(),
            Arc::clone(&stats),
            inner_shutdown.clone(),
        );
        async move {
            let mut reader = blocking_connection(&client).await?;
            let mut writer = client.get_multiplexed_async_connection().await?;
            ensure_group(&mut writer).await?;
            stats.connected.store(true, Ordering::Release);
            let options = StreamReadOptions::default()
                .group(AUDIT_INGESTOR_GROUP, &consumer)
                .count(ledger.settings.batch)
                .block(1000);
            let result = async {
                while !*shutdown.borrow() {
                    let reply: Option<StreamReadReply> = reader
                        .xread_options(&[AUDIT_EVENTS], &[">"], &options)
                        .await?;
                    ledger
                        .metrics
                        .last_read_ms
                        .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
                    let entries: Vec<Entry> = reply
                        .into_iter()
                        .flat_map(|r| r.keys.into_iter().flat_map(|k| k.ids.into_iter()))
                        .map(Entry::from_stream)
                        .collect();
                    if entries.is_empty() {
                        continue;
                    }
                    ledger.metrics.batches.fetch_add(1, Ordering::Relaxed);
                    let outcome = ledger
                        .process(&mut writer, entries, &HashMap::new(), &shutdown)
                        .await;
                    ack(&mut writer, &outcome.ack).await?;
                }
                Ok(())
            }
            .await;
            stats.connected.store(false, Ordering::Release);
            result
        }
    })
}

/// Spawns the claim loop: every `AUDIT_CLAIM_IDLE_SECS` it takes over the entries idle at
/// any consumer for that long, page by page, dead-letters those delivered more than
/// `AUDIT_MAX_DELIVERIES` times and ingests the rest.
pub fn spawn_claims(
    ledger: Ledger,
    client: redis::Client,
    consumer: String,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let inner_shutdown = shutdown.clone();
    supervise("claims", shutdown, move || {
        let (ledger, client, consumer, mut shutdown) = (
            ledger.clone(),
            client.clone(),
            consumer.clone(),
            inner_shutdown.clone(),
        );
        async move {
            let mut conn = client.get_multiplexed_async_connection().await?;
            ensure_group(&mut conn).await?;
            loop {
                claim_round(&ledger, &mut conn, &consumer, &shutdown).await?;
                tokio::select! {
                    () = tokio::time::sleep(ledger.settings.claim_idle) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            }
        }
    })
}

/// One pass of `XAUTOCLAIM` over the whole pending list.
///
/// # Errors
///
/// Redis errors.
pub async fn claim_round<C: ConnectionLike + Send + Sync>(
    ledger: &Ledger,
    conn: &mut C,
    consumer: &str,
    shutdown: &watch::Receiver<bool>,
) -> Result<(), redis::RedisError> {
    let idle_ms = u64::try_from(ledger.settings.claim_idle.as_millis()).unwrap_or(u64::MAX);
    let mut cursor = "0-0".to_owned();
    loop {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(AUDIT_EVENTS)
            .arg(AUDIT_INGESTOR_GROUP)
            .arg(consumer)
            .arg(idle_ms)
            .arg(&cursor)
            .arg("COUNT")
            .arg(CLAIM_PAGE)
            .query_async(conn)
            .await?;
        if !reply.deleted_ids.is_empty() {
            record_missing(ledger, &reply.deleted_ids).await;
        }
        if !reply.claimed.is_empty() {
            ledger
                .metrics
                .claimed
                .fetch_add(reply.claimed.len() as u64, Ordering::Relaxed);
            let deliveries = delivery_counts(conn, consumer, &reply.claimed).await?;
            let mut fresh = Vec::new();
            let mut done = Vec::new();
            for stream_entry in reply.claimed {
                let entry = Entry::from_stream(stream_entry);
                let delivered = deliveries.get(&entry.entry_id).copied().unwrap_or(1);
                if delivered > ledger.settings.max_deliveries {
                    let reason = format!(
                        "transient_exceeded_max_deliveries:{}",
                        ledger.metrics.last_transient_cause()
                    );
                    if dlq::write(conn, &entry, &reason, delivered).await.is_ok() {
                        ledger.metrics.dead_lettered(&reason);
                        done.push(entry.entry_id);
                    }
                } else {
                    fresh.push(entry);
                }
            }
            ack(conn, &done).await?;
            let outcome = ledger.process(conn, fresh, &deliveries, shutdown).await;
            ack(conn, &outcome.ack).await?;
        }
        if reply.next_stream_id == "0-0" || *shutdown.borrow() {
            return Ok(());
        }
        cursor = reply.next_stream_id;
    }
}

/// Delivery counts of the claimed entries (`XPENDING` extended form over their range).
async fn delivery_counts<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    consumer: &str,
    claimed: &[StreamId],
) -> Result<HashMap<String, u64>, redis::RedisError> {
    let (Some(first), Some(last)) = (claimed.first(), claimed.last()) else {
        return Ok(HashMap::new());
    };
    let reply: redis::streams::StreamPendingCountReply = conn
        .xpending_consumer_count(
            AUDIT_EVENTS,
            AUDIT_INGESTOR_GROUP,
            &first.id,
            &last.id,
            claimed.len(),
            consumer,
        )
        .await?;
    Ok(reply
        .ids
        .into_iter()
        .map(|p| (p.id, u64::try_from(p.times_delivered).unwrap_or(u64::MAX)))
        .collect())
}

/// Entries `XAUTOCLAIM` reports deleted were pending yet are gone from the stream: they
/// should never exist, so each raises alert `missing_entry`.
async fn record_missing(ledger: &Ledger, ids: &[String]) {
    ledger
        .metrics
        .missing_entries
        .fetch_add(ids.len() as u64, Ordering::Relaxed);
    let alerts: Vec<Alert> = ids
        .iter()
        .map(|id| Alert {
            event_id: id.clone(),
            zone_id: "*".to_owned(),
            chain_seq: None,
            kind: "missing_entry".to_owned(),
            detail: format!("stream entry {id} was pending and is no longer in {AUDIT_EVENTS}"),
        })
        .collect();
    let written = async {
        let mut conn = ledger.pool.acquire().await?;
        control_store::audit::ledger::insert_alerts(&mut conn, &alerts).await
    }
    .await;
    if let Err(error) = written {
        tracing::error!(%error, count = ids.len(), "missing stream entries could not be recorded as alerts");
    }
}

/// Spawns the trim loop, which also refreshes [`StreamStats`] and removes long-idle
/// consumers with nothing pending.
pub fn spawn_trim(
    client: redis::Client,
    interval: Duration,
    stats: Arc<StreamStats>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let inner_shutdown = shutdown.clone();
    supervise("trim", shutdown, move || {
        let (client, stats, mut shutdown) =
            (client.clone(), Arc::clone(&stats), inner_shutdown.clone());
        async move {
            let mut conn = client.get_multiplexed_async_connection().await?;
            loop {
                trim_round(&mut conn, &stats).await?;
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            }
        }
    })
}

/// One trim: `T` = the lowest of every group's last delivered id and smallest pending id;
/// `XTRIM MINID ~ T` removes only entries below it. No groups, no trim.
///
/// # Errors
///
/// Redis errors.
pub async fn trim_round<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    stats: &StreamStats,
) -> Result<Option<String>, redis::RedisError> {
    let groups: redis::streams::StreamInfoGroupsReply = match conn.xinfo_groups(AUDIT_EVENTS).await
    {
        Ok(groups) => groups,
        Err(e) if e.code() == Some("ERR") => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut floor: Option<(u64, u64)> = None;
    for group in &groups.groups {
        let mut low = parse_id(&group.last_delivered_id);
        let summary: redis::streams::StreamPendingReply =
            conn.xpending(AUDIT_EVENTS, &group.name).await?;
        if let redis::streams::StreamPendingReply::Data(data) = &summary {
            low = low.min(parse_id(&data.start_id));
        }
        if group.name == AUDIT_INGESTOR_GROUP {
            stats
                .lag
                .store(group.lag.unwrap_or(0) as u64, Ordering::Relaxed);
            stats.pending.store(group.pending as u64, Ordering::Relaxed);
            stats
                .oldest_pending_ms
                .store(oldest_idle(conn, &summary).await?, Ordering::Relaxed);
            remove_idle_consumers(conn).await?;
        }
        floor = Some(floor.map_or(low, |f| f.min(low)));
    }
    let length: u64 = conn.xlen(AUDIT_EVENTS).await?;
    stats.length.store(length, Ordering::Relaxed);
    let (dlq_length, dlq_oldest) = dlq::stats(conn).await?;
    stats.dlq_length.store(dlq_length, Ordering::Relaxed);
    stats
        .dlq_oldest_ms
        .store(dlq_oldest.unwrap_or(0), Ordering::Relaxed);
    let Some((ms, seq)) = floor else {
        return Ok(None);
    };
    if (ms, seq) == (0, 0) {
        return Ok(None);
    }
    let minid = format!("{ms}-{seq}");
    let trimmed: u64 = redis::cmd("XTRIM")
        .arg(AUDIT_EVENTS)
        .arg("MINID")
        .arg("~")
        .arg(&minid)
        .query_async(conn)
        .await?;
    if trimmed > 0 {
        stats.trims.fetch_add(1, Ordering::Relaxed);
    }
    Ok(Some(minid))
}

/// Idle time of the group's oldest pending entry.
async fn oldest_idle<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    summary: &redis::streams::StreamPendingReply,
) -> Result<i64, redis::RedisError> {
    let redis::streams::StreamPendingReply::Data(data) = summary else {
        return Ok(0);
    };
    let reply: redis::streams::StreamPendingCountReply = conn
        .xpending_count(
            AUDIT_EVENTS,
            AUDIT_INGESTOR_GROUP,
            &data.start_id,
            &data.start_id,
            1,
        )
        .await?;
    Ok(reply.ids.first().map_or(0, |p| {
        i64::try_from(p.last_delivered_ms).unwrap_or(i64::MAX)
    }))
}

/// `XGROUP DELCONSUMER` for consumers idle over an hour with nothing pending.
async fn remove_idle_consumers<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
) -> Result<(), redis::RedisError> {
    let consumers: redis::streams::StreamInfoConsumersReply = conn
        .xinfo_consumers(AUDIT_EVENTS, AUDIT_INGESTOR_GROUP)
        .await?;
    for consumer in consumers.consumers {
        if consumer.pending == 0
            && i64::try_from(consumer.idle).unwrap_or(i64::MAX) > CONSUMER_IDLE_REMOVE_MS
        {
            let _removed: i64 = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(AUDIT_EVENTS)
                .arg(AUDIT_INGESTOR_GROUP)
                .arg(&consumer.name)
                .query_async(conn)
                .await?;
        }
    }
    Ok(())
}

/// A stream id as `(ms, seq)`; unparsable ids count as `0-0` (no trim).
fn parse_id(id: &str) -> (u64, u64) {
    id.split_once('-')
        .and_then(|(ms, seq)| Some((ms.parse().ok()?, seq.parse().ok()?)))
        .unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_compare_numerically() {
        assert!(parse_id("10-0") > parse_id("9-5"));
        assert!(parse_id("1700000000000-10") > parse_id("1700000000000-2"));
        assert_eq!(parse_id("garbage"), (0, 0));
        assert_eq!(parse_id("5-7"), (5, 7));
    }
}
