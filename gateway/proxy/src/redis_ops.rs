//! The gateway's Redis state: single-use `jti` (wire-contract §4.3) and the per-resource
//! sliding-window rate limit (authority §8.3). Both fail closed: an error is a
//! [`GatewayError`], answered 503.
//!
//! Without Redis (standalone mode), both are kept in process and the gateway says so at
//! start.

use std::time::Duration;

use control_events::streams;
use redis::aio::ConnectionManager;

use crate::error::GatewayError;

/// The sliding-window script: increments the current bucket (expiry 2w on first hit) and
/// returns it with the previous bucket, in one round trip.
const RATE_SCRIPT: &str = r"
local current = redis.call('INCR', KEYS[1])
if current == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
return {current, previous}
";

/// Where single use and rate limits are kept.
#[derive(Clone)]
pub(crate) enum Counters {
    /// Redis, shared by every replica.
    Redis {
        conn: ConnectionManager,
        script: redis::Script,
    },
    /// This process only (standalone without Redis).
    Local {
        seen: moka::sync::Cache<String, ()>,
        buckets: moka::sync::Cache<String, u64>,
    },
}

/// The verdict of the rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RateVerdict {
    /// Under the limit.
    Allowed,
    /// Over it; retry after this many seconds (≥ 1).
    Limited { retry_after: u64 },
}

const DEADLINE: Duration = Duration::from_secs(2);

fn unix_now() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0)
}

impl Counters {
    /// A lazily connecting Redis handle.
    pub(crate) fn redis(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(DEADLINE))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200));
        let conn =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())?;
        Ok(Self::Redis {
            conn,
            script: redis::Script::new(RATE_SCRIPT),
        })
    }

    /// In-process counters.
    pub(crate) fn local() -> Self {
        Self::Local {
            seen: moka::sync::Cache::builder()
                .max_capacity(10_000_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            buckets: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(2 * 86_400))
                .build(),
        }
    }

    /// Whether Redis answers a `PING` (`/ready`); always true in process.
    pub(crate) async fn ping(&self) -> bool {
        match self {
            Self::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let pong = tokio::time::timeout(
                    DEADLINE,
                    redis::cmd("PING").query_async::<String>(&mut conn),
                )
                .await;
                matches!(pong, Ok(Ok(_)))
            }
            Self::Local { .. } => true,
        }
    }

    /// Whether a circuit key is set (authority §7.3). An unreachable Redis counts as a
    /// closed circuit: the breaker protects the provider, and the request itself already
    /// passed the single-use check against the same Redis.
    pub(crate) async fn circuit_open(&self, key: &str) -> bool {
        match self {
            Self::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let open = tokio::time::timeout(
                    DEADLINE,
                    redis::cmd("EXISTS").arg(key).query_async::<i64>(&mut conn),
                )
                .await;
                matches!(open, Ok(Ok(n)) if n > 0)
            }
            Self::Local { buckets, .. } => buckets.get(key).is_some_and(|until| until > unix_now()),
        }
    }

    /// Counts a failure in the window; at `max` failures opens the circuit for `open_s`.
    pub(crate) async fn record_failure(
        &self,
        failures_key: &str,
        circuit_key: &str,
        max: i64,
        window_s: u64,
        open_s: u64,
    ) {
        match self {
            Self::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let counted: Result<Result<(i64,), _>, _> = tokio::time::timeout(
                    DEADLINE,
                    redis::pipe()
                        .atomic()
                        .incr(failures_key, 1)
                        .expire(failures_key, i64::try_from(window_s).unwrap_or(300))
                        .ignore()
                        .query_async(&mut conn),
                )
                .await;
                if let Ok(Ok((failures,))) = counted
                    && failures >= max
                {
                    let _opened: Result<Result<(), redis::RedisError>, _> = tokio::time::timeout(
                        DEADLINE,
                        redis::cmd("SET")
                            .arg(circuit_key)
                            .arg("1")
                            .arg("EX")
                            .arg(open_s)
                            .query_async(&mut conn),
                    )
                    .await;
                }
            }
            Self::Local { buckets, .. } => {
                let failures = buckets
                    .entry(failures_key.to_owned())
                    .and_upsert_with(|c| c.map_or(1, |c| c.into_value() + 1))
                    .into_value();
                if i64::try_from(failures).unwrap_or(i64::MAX) >= max {
                    buckets.insert(circuit_key.to_owned(), unix_now() + open_s);
                    buckets.invalidate(failures_key);
                }
            }
        }
    }

    /// Clears the failure counter and the circuit after a success.
    pub(crate) async fn clear_failures(&self, keys: &[String]) {
        match self {
            Self::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let _cleared: Result<Result<i64, redis::RedisError>, _> = tokio::time::timeout(
                    DEADLINE,
                    redis::cmd("DEL").arg(keys).query_async(&mut conn),
                )
                .await;
            }
            Self::Local { buckets, .. } => {
                for key in keys {
                    buckets.invalidate(key);
                }
            }
        }
    }

    /// Step 12: records the first use of `jti` for `ttl_ms`. `Ok(false)` is a replay.
    pub(crate) async fn first_use(
        &self,
        jti: &str,
        request_id: &str,
        ttl_ms: u64,
    ) -> Result<bool, GatewayError> {
        let key = streams::seen_jti_key(jti);
        match self {
            Self::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let set: Option<String> = tokio::time::timeout(
                    DEADLINE,
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(request_id)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms.max(1))
                        .query_async(&mut conn),
                )
                .await
                .map_err(|_elapsed| GatewayError::ReplayStoreUnavailable("timeout".into()))?
                .map_err(|e| GatewayError::ReplayStoreUnavailable(e.to_string()))?;
                Ok(set.is_some())
            }
            Self::Local { seen, .. } => {
                let entry = seen.entry(key).or_insert(());
                Ok(entry.is_fresh())
            }
        }
    }

    /// Step 24: counts this request in the window and decides.
    pub(crate) async fn rate(
        &self,
        zone: &str,
        resource_id: &str,
        application: Option<&str>,
        limit: &gateway_state::RateLimit,
        now_ms: u64,
    ) -> Result<RateVerdict, GatewayError> {
        let window_ms = u64::from(limit.window_seconds) * 1000;
        let bucket = now_ms / window_ms.max(1);
        let current_key = streams::gateway_rate_limit_key(zone, resource_id, application, bucket);
        let previous_key = streams::gateway_rate_limit_key(
            zone,
            resource_id,
            application,
            bucket.saturating_sub(1),
        );
        let (current, previous): (u64, u64) = match self {
            Self::Redis { conn, script } => {
                let mut conn = conn.clone();
                let reply: (u64, u64) = tokio::time::timeout(
                    DEADLINE,
                    script
                        .key(&current_key)
                        .key(&previous_key)
                        .arg(2 * u64::from(limit.window_seconds))
                        .invoke_async(&mut conn),
                )
                .await
                .map_err(|_elapsed| GatewayError::RateLimiterUnavailable("timeout".into()))?
                .map_err(|e| GatewayError::RateLimiterUnavailable(e.to_string()))?;
                reply
            }
            Self::Local { buckets, .. } => {
                let current = buckets
                    .entry(current_key)
                    .and_upsert_with(|c| c.map_or(1, |c| c.into_value() + 1))
                    .into_value();
                (current, buckets.get(&previous_key).unwrap_or(0))
            }
        };
        Ok(sliding_window(
            current,
            previous,
            now_ms % window_ms.max(1),
            window_ms,
            limit.max_requests,
        ))
    }
}

/// `current + previous × (1 − elapsed / w)` against the limit; when over, the seconds until
/// the estimate falls to the limit (at least 1).
fn sliding_window(
    current: u64,
    previous: u64,
    elapsed_ms: u64,
    window_ms: u64,
    max: u64,
) -> RateVerdict {
    let window = window_ms.max(1) as f64;
    let weight = 1.0 - (elapsed_ms as f64 / window);
    let estimate = current as f64 + previous as f64 * weight;
    if estimate <= max as f64 {
        return RateVerdict::Allowed;
    }
    // The previous bucket's share shrinks linearly; past the window only `current` counts
    // (and it resets at the next boundary).
    let retry_ms = if previous > 0 && current as f64 <= max as f64 {
        let needed = (estimate - max as f64) / previous as f64;
        needed * window
    } else {
        window - elapsed_ms as f64
    };
    RateVerdict::Limited {
        retry_after: ((retry_ms / 1000.0).ceil() as u64).max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_weighs_the_previous_window() {
        // Half-way through: 5 now + 10 before × 0.5 = 10, at the limit: allowed.
        assert_eq!(sliding_window(5, 10, 500, 1000, 10), RateVerdict::Allowed);
        // One more tips it over.
        assert!(matches!(
            sliding_window(6, 10, 500, 1000, 10),
            RateVerdict::Limited { .. }
        ));
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        assert_eq!(
            sliding_window(11, 0, 999, 1000, 10),
            RateVerdict::Limited { retry_after: 1 }
        );
        // A 60 s window, 30 s in, over on the current bucket alone: 30 s left.
        assert_eq!(
            sliding_window(11, 0, 30_000, 60_000, 10),
            RateVerdict::Limited { retry_after: 30 }
        );
    }

    #[tokio::test]
    async fn local_counters_detect_a_replay() -> Result<(), GatewayError> {
        let counters = Counters::local();
        assert!(counters.first_use("j1", "r1", 60_000).await?);
        assert!(!counters.first_use("j1", "r2", 60_000).await?);
        assert!(counters.first_use("j2", "r3", 60_000).await?);
        Ok(())
    }
}
