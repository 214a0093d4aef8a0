//! Instance presence and policy propagation status (storage §6.1, authority §5.7).
//!
//! Every process heartbeats into the sorted set `caracal:instances:<service>` (member: the
//! instance id, score: unix milliseconds) every [`HEARTBEAT_INTERVAL`]; an instance counts as
//! live while its score is younger than [`LIVE_WINDOW`]. After each policy load attempt an STS
//! or gateway replica writes what it holds for the zone into the hash
//! `caracal:policy:status:<zone>` under the field `<service>/<instance>`. The admin API reads
//! both to report `propagation_status`.
//!
//! Reports travel through a bounded queue to one writer task: a policy load (which may run on
//! a request's read-through path) never waits on Redis, and a full queue drops the report
//! (the next load or poll writes a fresh one).

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, SecondsFormat, Utc};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::streams;

/// How often a process refreshes its presence.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// How long a heartbeat keeps an instance live.
pub const LIVE_WINDOW: Duration = Duration::from_secs(30);
/// Reports waiting for the writer; beyond this they are dropped (and counted in the log).
const REPORT_QUEUE: usize = 256;
/// The deadline of one Redis write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Outcome of one load attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadState {
    /// The version is built and serving.
    Loaded,
    /// The version could not be built; the replica keeps what it had.
    Failed,
}

/// What one replica reports for one zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// The policy-set version the attempt was for.
    pub policy_set_version_id: String,
    /// Its manifest hash (empty on a failure that came before the manifest was read).
    pub manifest_sha256: String,
    /// Loaded or failed.
    pub state: LoadState,
    /// Why it failed (no secrets: bundle build errors name documents and rules only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the attempt finished (RFC 3339).
    pub at: String,
}

impl PolicyStatus {
    /// A report stamped now.
    pub fn new(
        policy_set_version_id: &str,
        manifest_sha256: &str,
        state: LoadState,
        error: Option<String>,
    ) -> Self {
        Self {
            policy_set_version_id: policy_set_version_id.to_owned(),
            manifest_sha256: manifest_sha256.to_owned(),
            state,
            error,
            at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        }
    }
}

/// The sending side of the report queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct StatusReporter {
    tx: mpsc::Sender<(String, PolicyStatus)>,
}

impl StatusReporter {
    /// Queues `status` for `zone`; never waits. A full queue drops the report.
    pub fn report(&self, zone: &str, status: PolicyStatus) {
        if self.tx.try_send((zone.to_owned(), status)).is_err() {
            tracing::warn!(zone, "policy status queue full or closed; report dropped");
        }
    }
}

/// Starts the presence task of `service`/`instance`: the heartbeat and the status writer.
/// Returns the reporter and the task, which ends on `shutdown` after removing the instance
/// from the live set.
pub fn spawn(
    client: redis::Client,
    service: &str,
    instance: &str,
    mut shutdown: watch::Receiver<bool>,
) -> (StatusReporter, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<(String, PolicyStatus)>(REPORT_QUEUE);
    let service = service.to_owned();
    let instance = instance.to_owned();
    let task = tokio::spawn(async move {
        let field = streams::policy_status_field(&service, &instance);
        let key = streams::instances_key(&service);
        let mut conn: Option<redis::aio::MultiplexedConnection> = None;
        let mut ticker = tokio::time::interval(HEARTBEAT_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let result = with_conn(&client, &mut conn, |mut c| {
                        let key = key.clone();
                        let instance = instance.clone();
                        async move { c.zadd::<_, _, _, ()>(key, instance, Utc::now().timestamp_millis()).await }
                    }).await;
                    if let Err(error) = result {
                        tracing::warn!(%error, "presence heartbeat failed");
                    }
                }
                report = rx.recv() => {
                    let Some((zone, status)) = report else { break };
                    let Ok(value) = serde_json::to_string(&status) else { continue };
                    let result = with_conn(&client, &mut conn, |mut c| {
                        let key = streams::policy_status_key(&zone);
                        let field = field.clone();
                        async move { c.hset::<_, _, _, ()>(key, field, value).await }
                    }).await;
                    if let Err(error) = result {
                        tracing::warn!(%error, zone, "could not write policy status");
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        let result = with_conn(&client, &mut conn, |mut c| {
            let key = key.clone();
            let instance = instance.clone();
            async move { c.zrem::<_, _, ()>(key, instance).await }
        })
        .await;
        if let Err(error) = result {
            tracing::warn!(%error, "could not leave the live instance set");
        }
    });
    (StatusReporter { tx }, task)
}

/// Runs one command on the cached connection, connecting first when there is none and
/// dropping it after a failure so the next call reconnects.
async fn with_conn<F, Fut>(
    client: &redis::Client,
    conn: &mut Option<redis::aio::MultiplexedConnection>,
    call: F,
) -> Result<(), String>
where
    F: FnOnce(redis::aio::MultiplexedConnection) -> Fut,
    Fut: Future<Output = redis::RedisResult<()>>,
{
    let current = match conn.take() {
        Some(c) => c,
        None => tokio::time::timeout(WRITE_TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .map_err(|_elapsed| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?,
    };
    match tokio::time::timeout(WRITE_TIMEOUT, call(current.clone())).await {
        Ok(Ok(())) => {
            *conn = Some(current);
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_elapsed) => Err("timed out".to_owned()),
    }
}

/// The live instances of `service` at `now`.
pub async fn live_instances(
    conn: &mut impl redis::aio::ConnectionLike,
    service: &str,
    now: DateTime<Utc>,
) -> redis::RedisResult<Vec<String>> {
    let window_ms = i64::try_from(LIVE_WINDOW.as_millis()).unwrap_or(i64::MAX);
    let since = now.timestamp_millis().saturating_sub(window_ms);
    redis::cmd("ZRANGEBYSCORE")
        .arg(streams::instances_key(service))
        .arg(format!("({since}"))
        .arg("+inf")
        .query_async(conn)
        .await
}

/// Every report for `zone`, by `<service>/<instance>`; unparseable values are skipped.
pub async fn policy_statuses(
    conn: &mut impl redis::aio::ConnectionLike,
    zone: &str,
) -> redis::RedisResult<HashMap<String, PolicyStatus>> {
    let raw: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(streams::policy_status_key(zone))
        .query_async(conn)
        .await?;
    Ok(raw
        .into_iter()
        .filter_map(|(field, value)| {
            serde_json::from_str::<PolicyStatus>(&value)
                .ok()
                .map(|status| (field, status))
        })
        .collect())
}
