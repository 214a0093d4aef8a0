//! The emitter's Redis connection: lazily (re)connected, every operation
//! bounded by a timeout, dropped after any failure so the next use
//! reconnects.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};

use super::event::SignedAuditEvent;
use crate::streams::{AUDIT_FIELD_DATA, AUDIT_FIELD_ID, AUDIT_FIELD_SIG};

/// Why a Redis operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("redis error: {0}")]
    Redis(#[from] RedisError),
    #[error("redis operation timed out after {0:?}")]
    TimedOut(Duration),
}

pub(crate) struct RedisLink {
    client: Client,
    conn: Option<MultiplexedConnection>,
    timeout: Duration,
}

impl RedisLink {
    pub(crate) fn new(client: Client, timeout: Duration) -> Self {
        Self {
            client,
            conn: None,
            timeout,
        }
    }

    /// One pipelined `XADD <stream> * id <id> data <data> sig <sig>` per
    /// event (no `MAXLEN`: producers never trim the audit stream).
    pub(crate) async fn xadd_all<'a, I>(&mut self, stream: &str, events: I) -> Result<(), LinkError>
    where
        I: IntoIterator<Item = &'a SignedAuditEvent>,
    {
        let mut pipe = redis::pipe();
        let mut count = 0_usize;
        for event in events {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg(AUDIT_FIELD_ID)
                .arg(event.id())
                .arg(AUDIT_FIELD_DATA)
                .arg(event.data())
                .arg(AUDIT_FIELD_SIG)
                .arg(event.sig());
            count += 1;
        }
        if count == 0 {
            return Ok(());
        }
        let ids: Vec<String> = self
            .run(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await?;
        if ids.len() == count {
            Ok(())
        } else {
            self.conn = None;
            Err(LinkError::Redis(RedisError::from((
                redis::ErrorKind::Client,
                "XADD pipeline answered with the wrong number of replies",
            ))))
        }
    }

    /// `XLEN <stream>`.
    pub(crate) async fn xlen(&mut self, stream: &str) -> Result<u64, LinkError> {
        let stream = stream.to_owned();
        self.run(
            |mut conn| async move { redis::cmd("XLEN").arg(stream).query_async(&mut conn).await },
        )
        .await
    }

    /// `PING`.
    pub(crate) async fn ping(&mut self) -> Result<(), LinkError> {
        let _pong: String = self
            .run(|mut conn| async move { redis::cmd("PING").query_async(&mut conn).await })
            .await?;
        Ok(())
    }

    /// Runs `op` on the connection (connecting first if needed), all within
    /// the timeout; drops the connection on failure.
    async fn run<T, F, Fut>(&mut self, op: F) -> Result<T, LinkError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let timeout = self.timeout;
        let client = &self.client;
        let slot = &mut self.conn;
        let attempt = async move {
            if slot.is_none() {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout));
                *slot = Some(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                );
            }
            match slot.as_ref() {
                // A multiplexed connection is a cheap handle: clone it.
                Some(conn) => op(conn.clone()).await,
                None => Err(RedisError::from((
                    redis::ErrorKind::Client,
                    "no connection",
                ))),
            }
        };
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(LinkError::Redis(err)),
            Err(_elapsed) => Err(LinkError::TimedOut(timeout)),
        };
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}
