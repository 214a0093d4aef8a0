//! The STS's Redis state (authority §8.1, §8.2, §3 step 17): the mint limit, the
//! authentication-failure limiter and the JTI issuance registry. Every call has a deadline
//! and every failure is reported, so the caller can fail closed.

use std::time::Duration;

use redis::{AsyncCommands, aio::ConnectionManager};
use sha2::{Digest, Sha256};

/// A Redis call failed or timed out.
#[derive(Debug, thiserror::Error)]
#[error("redis {operation} failed: {cause}")]
pub(crate) struct RedisUnavailable {
    operation: &'static str,
    cause: String,
}

/// `INCR key` with a 60 s expiry set on the first hit (fixed windows, §8.1 and §8.2).
async fn incr_in_window(conn: &mut ConnectionManager, key: &str) -> redis::RedisResult<i64> {
    let (count,): (i64,) = redis::pipe()
        .atomic()
        .cmd("INCR")
        .arg(key)
        .cmd("PEXPIRE")
        .arg(key)
        .arg(WINDOW_MS)
        .arg("NX")
        .ignore()
        .query_async(conn)
        .await?;
    Ok(count)
}

/// The STS's Redis handle: a lazily connecting, self-healing multiplexed connection.
#[derive(Clone)]
pub(crate) struct RedisState {
    conn: ConnectionManager,
    deadline: Duration,
}

/// Failures that block an application (§8.2).
const AUTH_FAILURE_LIMIT: i64 = 60;
/// The limiter windows, in milliseconds.
const WINDOW_MS: u64 = 60_000;

impl RedisState {
    /// Builds the handle without connecting; the first command connects.
    pub(crate) fn new(url: &str) -> Result<Self, RedisUnavailable> {
        let client = redis::Client::open(url).map_err(|e| RedisUnavailable {
            operation: "open",
            cause: e.to_string(),
        })?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
            RedisUnavailable {
                operation: "connect",
                cause: e.to_string(),
            }
        })?;
        Ok(Self {
            conn,
            deadline: Duration::from_secs(2),
        })
    }

    async fn run<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisUnavailable> {
        match tokio::time::timeout(self.deadline, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(RedisUnavailable {
                operation,
                cause: e.to_string(),
            }),
            Err(_elapsed) => Err(RedisUnavailable {
                operation,
                cause: "timed out".to_owned(),
            }),
        }
    }

    /// `PING`, for readiness.
    pub(crate) async fn ping(&self) -> Result<(), RedisUnavailable> {
        let mut conn = self.conn.clone();
        self.run("ping", async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
        .map(|_| ())
    }

    fn auth_key(application_id: &str) -> String {
        format!(
            "auth-rl:{}",
            hex::encode(Sha256::digest(application_id.as_bytes()))
        )
    }

    /// True when the application is blocked for failing authentication too often.
    pub(crate) async fn auth_blocked(
        &self,
        application_id: &str,
    ) -> Result<bool, RedisUnavailable> {
        let key = format!("{}:blocked", Self::auth_key(application_id));
        let mut conn = self.conn.clone();
        self.run("auth limiter read", async move {
            conn.exists::<_, bool>(key).await
        })
        .await
    }

    /// Records a failed authentication; blocks the application for 60 s past the limit.
    pub(crate) async fn record_auth_failure(
        &self,
        application_id: &str,
    ) -> Result<(), RedisUnavailable> {
        let key = Self::auth_key(application_id);
        let blocked = format!("{key}:blocked");
        let mut conn = self.conn.clone();
        self.run("auth limiter write", async move {
            let count = incr_in_window(&mut conn, &key).await?;
            if count > AUTH_FAILURE_LIMIT {
                let () = conn
                    .set_options(
                        &blocked,
                        1,
                        redis::SetOptions::default()
                            .with_expiration(redis::SetExpiry::PX(WINDOW_MS)),
                    )
                    .await?;
            }
            Ok(())
        })
        .await
    }

    /// Counts one mint against `rl:<zone>:<resource>:<app>`; true while within `limit`.
    pub(crate) async fn mint_allowed(
        &self,
        zone_id: &str,
        resource_id: &str,
        application_id: &str,
        limit: u64,
    ) -> Result<bool, RedisUnavailable> {
        let key = format!("rl:{zone_id}:{resource_id}:{application_id}");
        let mut conn = self.conn.clone();
        let count: i64 = self
            .run("mint limiter", async move {
                incr_in_window(&mut conn, &key).await
            })
            .await?;
        Ok(u64::try_from(count).unwrap_or(u64::MAX) <= limit)
    }

    /// `SET audit:jti:<jti> <request id> NX PX <ttl>`: true when registered, false on a
    /// collision.
    pub(crate) async fn register_jti(
        &self,
        jti: &str,
        request_id: &str,
        ttl: Duration,
    ) -> Result<bool, RedisUnavailable> {
        let key = format!("audit:jti:{jti}");
        let request_id = request_id.to_owned();
        let px = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut conn = self.conn.clone();
        self.run("jti registry", async move {
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&request_id)
                .arg("NX")
                .arg("PX")
                .arg(px)
                .query_async(&mut conn)
                .await?;
            Ok(set.is_some())
        })
        .await
    }
}
