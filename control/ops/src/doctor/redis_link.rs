//! Doctor's Redis connection, the stream and presence reads the checks share, and
//! `redis.config` (storage §6.5: version, `maxmemory-policy noeviction`, AOF).

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use redis::{
    aio::{ConnectionLike, MultiplexedConnection},
    streams::{StreamInfoGroup, StreamInfoGroupsReply, StreamPendingCountReply, StreamRangeReply},
};

use super::{
    CheckError, Context,
    report::{Check, Findings},
};

/// Connecting may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One command may take this long.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// A Redis connection, or why there is none.
#[derive(Clone)]
pub(crate) struct RedisLink {
    /// The variable its URL came from (`REDIS_URL`, `AUDIT_REDIS_URL`).
    pub(crate) var: &'static str,
    conn: Result<MultiplexedConnection, String>,
}

impl RedisLink {
    /// Connects to `url`; a failure is kept for the checks that need the connection.
    pub(crate) async fn connect(var: &'static str, url: &str) -> Self {
        let conn = match redis::Client::open(url) {
            Err(_malformed) => Err(format!("{var} is not a valid redis:// URL")),
            Ok(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(COMMAND_TIMEOUT));
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        Self { var, conn }
    }

    /// A handle on the connection.
    pub(crate) fn conn(&self) -> Result<MultiplexedConnection, String> {
        self.conn.clone()
    }
}

/// The groups of `stream`; `None` when the stream does not exist.
pub(crate) async fn groups<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    stream: &str,
) -> Result<Option<Vec<StreamInfoGroup>>, redis::RedisError> {
    let kind: String = redis::cmd("TYPE").arg(stream).query_async(conn).await?;
    if kind != "stream" {
        return Ok(None);
    }
    let reply: StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await?;
    Ok(Some(reply.groups))
}

/// `XLEN` (0 for a missing stream).
pub(crate) async fn stream_length<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    stream: &str,
) -> Result<u64, redis::RedisError> {
    redis::cmd("XLEN").arg(stream).query_async(conn).await
}

/// The newest entry of `stream`: its id and fields.
pub(crate) async fn latest_entry<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    stream: &str,
) -> Result<Option<(String, HashMap<String, String>)>, redis::RedisError> {
    let reply: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(reply.ids.into_iter().next().map(|entry| {
        let fields = entry
            .map
            .keys()
            .filter_map(|name| entry.get::<String>(name).map(|value| (name.clone(), value)))
            .collect();
        (entry.id, fields)
    }))
}

/// How long the oldest pending entry of `group` has been idle, in milliseconds.
pub(crate) async fn oldest_pending_idle_ms<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    stream: &str,
    group: &str,
) -> Result<Option<usize>, redis::RedisError> {
    let reply: StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(reply.ids.first().map(|entry| entry.last_delivered_ms))
}

/// A stream entry id as `(milliseconds, sequence)`.
pub(crate) fn parse_entry_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// How a per-replica group stands against the newest entry of its stream.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum GroupStanding {
    /// The group (or its whole stream) does not exist.
    Missing,
    /// The group has not been delivered the newest entry, written `age_secs` ago.
    Behind {
        /// Age of the newest entry.
        age_secs: f64,
    },
    /// The group holds unacknowledged entries, the oldest idle this long.
    Unacknowledged {
        /// Pending entries.
        pending: usize,
        /// Idle time of the oldest, in seconds.
        idle_secs: f64,
    },
    /// Delivered and acknowledged everything (or the stream has nothing to deliver).
    Current,
}

/// Where `group` stands on `stream`, given the stream's groups and newest entry id, at
/// `now`.
pub(crate) async fn standing<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    stream: &str,
    group: &str,
    groups: Option<&[StreamInfoGroup]>,
    newest: Option<&str>,
    now: DateTime<Utc>,
) -> Result<GroupStanding, redis::RedisError> {
    // Replicas create their groups with MKSTREAM, so a missing stream is a missing group.
    let Some(info) = groups.and_then(|groups| groups.iter().find(|g| g.name == group)) else {
        return Ok(GroupStanding::Missing);
    };
    if let Some(newest) = newest
        && let (Some(newest_id), Some(delivered)) = (
            parse_entry_id(newest),
            parse_entry_id(&info.last_delivered_id),
        )
        && delivered < newest_id
    {
        let written = i64::try_from(newest_id.0).unwrap_or(i64::MAX);
        let age_ms = now.timestamp_millis().saturating_sub(written);
        return Ok(GroupStanding::Behind {
            age_secs: age_ms as f64 / 1000.0,
        });
    }
    if info.pending > 0 {
        let idle = oldest_pending_idle_ms(conn, stream, group)
            .await?
            .unwrap_or(0);
        return Ok(GroupStanding::Unacknowledged {
            pending: info.pending,
            idle_secs: idle as f64 / 1000.0,
        });
    }
    Ok(GroupStanding::Current)
}

/// The live instances of `service` (heartbeat younger than 30 s).
pub(crate) async fn live_instances(
    conn: &mut MultiplexedConnection,
    service: &str,
) -> Result<Vec<String>, redis::RedisError> {
    control_events::presence::live_instances(conn, service, Utc::now()).await
}

/// Runs `redis.config`.
pub(crate) async fn config(cx: &Context<'_>) -> Result<Check, CheckError> {
    let mut findings = Findings::new("redis.config");
    let mut conn = match cx.redis.conn() {
        Ok(conn) => conn,
        Err(error) => {
            return Ok(super::audit::unreachable_check(
                "redis.config",
                &cx.redis,
                &error,
            ));
        }
    };
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await?;
    let version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .map(str::trim)
        .unwrap_or("unknown")
        .to_owned();
    let numbers: Vec<u32> = version
        .split('.')
        .take(2)
        .filter_map(|part| part.parse().ok())
        .collect();
    match numbers.as_slice() {
        [major, minor] if (*major, *minor) < (6, 2) => findings.fail(
            format!(
                "Redis {version} is older than 6.2 (XAUTOCLAIM and MINID trimming are missing)"
            ),
            "upgrade Redis to 6.2 or later (7 recommended)",
        ),
        [major, _] if *major < 7 => {
            findings.ok(format!(
                "Redis {version} (7 recommended: consumer lag is reported from 7.0)"
            ));
        }
        [_, _] => findings.ok(format!("Redis {version}")),
        _ => findings.warn(
            format!("the Redis version ({version}) cannot be read"),
            "make sure Redis is 6.2 or later",
        ),
    }
    match config_value(&mut conn, "maxmemory-policy").await {
        Ok(Some(policy)) if policy == "noeviction" => findings.ok("maxmemory-policy noeviction"),
        Ok(Some(policy)) => findings.fail(
            format!("maxmemory-policy is {policy}: under memory pressure Redis would evict replay keys (jti) and stream entries"),
            "set maxmemory-policy noeviction (CONFIG SET maxmemory-policy noeviction, and in redis.conf)",
        ),
        Ok(None) | Err(_) => findings.warn(
            "maxmemory-policy cannot be read (CONFIG is disabled, e.g. on a managed Redis)",
            "make sure the server runs with maxmemory-policy noeviction",
        ),
    }
    match config_value(&mut conn, "appendonly").await {
        Ok(Some(aof)) if aof == "yes" => findings.ok("AOF on"),
        Ok(Some(_)) => findings.warn(
            "append-only file is off: a Redis restart loses pending stream entries and replay keys written since the last snapshot",
            "set appendonly yes with appendfsync everysec (recommended)",
        ),
        Ok(None) | Err(_) => findings.ok("AOF setting cannot be read"),
    }
    Ok(findings.finish())
}

/// `CONFIG GET name`.
async fn config_value(
    conn: &mut MultiplexedConnection,
    name: &str,
) -> Result<Option<String>, redis::RedisError> {
    let pairs: HashMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(conn)
        .await?;
    Ok(pairs.get(name).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_compare_by_time_then_sequence() {
        assert_eq!(
            parse_entry_id("1700000000000-3"),
            Some((1_700_000_000_000, 3))
        );
        assert!(parse_entry_id("0-0") < parse_entry_id("1-0"));
        assert!(parse_entry_id("5-1") > parse_entry_id("5-0"));
        assert_eq!(parse_entry_id("nonsense"), None);
    }
}
