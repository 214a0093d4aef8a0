//! Fan-out stream consumers (storage §6.2, §6.4): every replica reads every revocation and
//! invalidation message under its own consumer group `<group>:<instance>`.
//!
//! The loop: reclaim own or orphaned entries idle for 30 s (`XAUTOCLAIM`), then read new
//! ones (`XREADGROUP … BLOCK 1000`). Each entry's `_sig` is verified; a bad signature is
//! acknowledged and dropped (counted and logged). A handler error leaves the entry pending
//! (it comes back through the reclaim) and counts in `stream-failure:<s>:<g>:<id>`; at five
//! failures the entry is copied, signed, to `<stream>.dead` and acknowledged. Messages are
//! hints: handlers re-read Postgres, and the polls heal anything missed.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use control_crypto::{HmacKey, sign_stream_fields, verify_stream_fields};
use redis::{AsyncCommands, aio::MultiplexedConnection, streams::StreamId};
use tokio::task::JoinHandle;

use crate::streams;

/// What a handler returns: `Err` leaves the entry pending for a retry.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A message handler: the entry's fields (without `_sig`).
pub type Handler = Arc<dyn Fn(HashMap<String, String>) -> HandlerFuture + Send + Sync>;

/// One consumer.
#[derive(Clone)]
pub struct FanoutConfig {
    /// Stream name.
    pub stream: String,
    /// Group base name, e.g. `sts-policy`; the group is `<base>:<instance>`.
    pub group_base: String,
    /// Service name, for the consumer name `<service>-<instance>`.
    pub service: String,
    /// Instance id.
    pub instance: String,
    /// `STREAMS_HMAC_KEY` and, during a rotation, `STREAMS_HMAC_KEY_PREVIOUS`. Empty in dev
    /// mode without a key: messages are then accepted unsigned.
    pub keys: Vec<HmacKey>,
}

impl std::fmt::Debug for FanoutConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanoutConfig")
            .field("stream", &self.stream)
            .field("group_base", &self.group_base)
            .field("instance", &self.instance)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl FanoutConfig {
    /// `<group base>:<instance>`.
    pub fn group(&self) -> String {
        streams::replica_group(&self.group_base, &self.instance)
    }

    fn consumer(&self) -> String {
        streams::consumer_name(&self.service, &self.instance)
    }
}

/// Counters of one consumer.
#[derive(Debug, Default)]
pub struct FanoutStats {
    /// Entries handled and acknowledged.
    pub handled: AtomicU64,
    /// Entries dropped for a bad or missing signature.
    pub bad_signatures: AtomicU64,
    /// Handler failures.
    pub failures: AtomicU64,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: AtomicU64,
    /// The consumer holds a connection and its group exists (false while Redis is away or
    /// before the first round): `/ready` reports `stream_consumers_not_ready`.
    pub connected: std::sync::atomic::AtomicBool,
    /// Unix milliseconds at which the last `XREADGROUP` completed (an empty read counts);
    /// 0 before the first. The gateway's authority view is fresh while this is recent.
    pub last_read_ms: std::sync::atomic::AtomicI64,
}

impl FanoutStats {
    /// Milliseconds since the last completed read, `None` before the first.
    pub fn read_age_ms(&self, now_ms: i64) -> Option<i64> {
        match self.last_read_ms.load(Ordering::Acquire) {
            0 => None,
            at => Some(now_ms.saturating_sub(at)),
        }
    }
}

/// Failures before an entry is dead-lettered.
const MAX_FAILURES: i64 = 5;
/// Idle time after which pending entries are reclaimed.
const CLAIM_IDLE_MS: u64 = 30_000;
/// Entries per read.
const BATCH: usize = 50;

/// Creates the replica's group at the end of the stream (`$`, `MKSTREAM`); an existing
/// group is fine. Call this before loading Postgres state, so nothing published during the
/// load is missed (it is applied twice, harmlessly).
pub async fn ensure_group(
    conn: &mut MultiplexedConnection,
    config: &FanoutConfig,
) -> Result<(), redis::RedisError> {
    let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&config.stream)
        .arg(config.group())
        .arg("$")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Spawns the consumer loop; it stops when `shutdown` turns true. Redis failures back off
/// (100 ms doubling to 5 s) and retry: a consumer never gives up.
pub fn spawn(
    client: redis::Client,
    config: FanoutConfig,
    handler: Handler,
    stats: Arc<FanoutStats>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let round = async {
                // Blocking reads get a connection of their own, whose response deadline
                // outlasts the 1 s BLOCK.
                let config_conn = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(5)));
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config_conn)
                    .await?;
                ensure_group(&mut conn, &config).await?;
                stats
                    .connected
                    .store(true, std::sync::atomic::Ordering::Release);
                loop {
                    let claimed = reclaim(&mut conn, &config).await?;
                    process(&mut conn, &config, &handler, &stats, claimed).await?;
                    let fresh = read_new(&mut conn, &config).await?;
                    stats
                        .last_read_ms
                        .store(chrono::Utc::now().timestamp_millis(), Ordering::Release);
                    process(&mut conn, &config, &handler, &stats, fresh).await?;
                }
                #[allow(unreachable_code, reason = "the loop only ends through `?`")]
                Ok::<(), redis::RedisError>(())
            };
            tokio::select! {
                result = round => {
                    stats.connected.store(false, std::sync::atomic::Ordering::Release);
                    if let Err(error) = result {
                        tracing::warn!(stream = %config.stream, %error, "stream consumer interrupted; retrying");
                    }
                }
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    })
}

async fn reclaim(
    conn: &mut MultiplexedConnection,
    config: &FanoutConfig,
) -> Result<Vec<StreamId>, redis::RedisError> {
    let reply: redis::streams::StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
        .arg(&config.stream)
        .arg(config.group())
        .arg(config.consumer())
        .arg(CLAIM_IDLE_MS)
        .arg("0-0")
        .arg("COUNT")
        .arg(BATCH)
        .query_async(conn)
        .await?;
    Ok(reply.claimed)
}

async fn read_new(
    conn: &mut MultiplexedConnection,
    config: &FanoutConfig,
) -> Result<Vec<StreamId>, redis::RedisError> {
    let options = redis::streams::StreamReadOptions::default()
        .group(config.group(), config.consumer())
        .count(BATCH)
        .block(1000);
    let reply: Option<redis::streams::StreamReadReply> = conn
        .xread_options(&[config.stream.as_str()], &[">"], &options)
        .await?;
    Ok(reply
        .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
        .unwrap_or_default())
}

/// The entry's fields as strings; a non-string value makes the message malformed.
fn fields_of(entry: &StreamId) -> Option<Vec<(String, String)>> {
    entry
        .map
        .iter()
        .map(|(k, v)| {
            redis::from_redis_value::<String>(v.clone())
                .ok()
                .map(|v| (k.clone(), v))
        })
        .collect()
}

async fn process(
    conn: &mut MultiplexedConnection,
    config: &FanoutConfig,
    handler: &Handler,
    stats: &FanoutStats,
    entries: Vec<StreamId>,
) -> Result<(), redis::RedisError> {
    for entry in entries {
        let group = config.group();
        let fields = fields_of(&entry);
        let verified = match &fields {
            None => false,
            Some(fields) if config.keys.is_empty() => !fields.is_empty(),
            Some(fields) => {
                let keys: Vec<&HmacKey> = config.keys.iter().collect();
                verify_stream_fields(&keys, &config.stream, fields).is_ok()
            }
        };
        if !verified {
            stats.bad_signatures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(stream = %config.stream, entry = %entry.id, "stream message dropped: bad or missing signature");
            let _acked: i64 = conn.xack(&config.stream, &group, &[&entry.id]).await?;
            continue;
        }
        let map: HashMap<String, String> = fields
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k != streams::FIELD_SIG)
            .collect();
        match handler(map.clone()).await {
            Ok(()) => {
                stats.handled.fetch_add(1, Ordering::Relaxed);
                let _acked: i64 = conn.xack(&config.stream, &group, &[&entry.id]).await?;
            }
            Err(error) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                let counter = streams::stream_failure_key(&config.stream, &group, &entry.id);
                let (failures,): (i64,) = redis::pipe()
                    .atomic()
                    .incr(&counter, 1)
                    .expire(&counter, 86_400)
                    .ignore()
                    .query_async(conn)
                    .await?;
                tracing::warn!(stream = %config.stream, entry = %entry.id, failures, %error, "stream message handler failed");
                if failures >= MAX_FAILURES {
                    dead_letter(conn, config, &group, &entry.id, &error, &map).await?;
                    stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    let _acked: i64 = conn.xack(&config.stream, &group, &[&entry.id]).await?;
                    let _deleted: i64 = conn.del(&counter).await?;
                }
            }
        }
    }
    Ok(())
}

async fn dead_letter(
    conn: &mut MultiplexedConnection,
    config: &FanoutConfig,
    group: &str,
    entry_id: &str,
    error: &str,
    values: &HashMap<String, String>,
) -> Result<(), redis::RedisError> {
    let dead = streams::dead_letter_stream(&config.stream);
    let error: String = error
        .chars()
        .map(|c| if c == '\n' { ' ' } else { c })
        .take(512)
        .collect();
    let mut fields: Vec<(String, String)> = vec![
        ("original_id".to_owned(), entry_id.to_owned()),
        ("error".to_owned(), error),
        (
            "values".to_owned(),
            serde_json::to_string(values).unwrap_or_default(),
        ),
        ("group".to_owned(), group.to_owned()),
    ];
    if let Some(key) = config.keys.first()
        && let Ok(sig) = sign_stream_fields(key, &dead, &fields)
    {
        fields.push((streams::FIELD_SIG.to_owned(), sig));
    }
    let _id: String = redis::cmd("XADD")
        .arg(&dead)
        .arg("MAXLEN")
        .arg("~")
        .arg(10_000)
        .arg("*")
        .arg(&fields)
        .query_async(conn)
        .await?;
    Ok(())
}
