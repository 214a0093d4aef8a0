//! Reading Redis streams in tests: where a stream ends now, what came after, and waiting for
//! an entry, so a test sees exactly the messages its own actions published.

use std::time::Duration;

use anyhow::Context as _;

/// A stream entry's fields, in order.
pub type Fields = Vec<(String, String)>;

async fn connection(redis_url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?)
}

/// The id of the stream's newest entry, or `0-0` when it is empty or missing: read what
/// comes after it with [`entries_after`].
pub async fn last_entry_id(redis_url: &str, stream: &str) -> anyhow::Result<String> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut connection(redis_url).await?)
        .await
        .context("XREVRANGE")?;
    Ok(reply
        .ids
        .first()
        .map_or_else(|| "0-0".to_owned(), |entry| entry.id.clone()))
}

/// Every entry of the stream after `after` (exclusive), as field lists in order.
pub async fn entries_after(
    redis_url: &str,
    stream: &str,
    after: &str,
) -> anyhow::Result<Vec<Fields>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg(format!("({after}"))
        .arg("+")
        .query_async(&mut connection(redis_url).await?)
        .await
        .context("XRANGE")?;
    reply
        .ids
        .iter()
        .map(|entry| {
            entry
                .map
                .iter()
                .map(|(k, v)| Ok((k.clone(), redis::from_redis_value::<String>(v.clone())?)))
                .collect()
        })
        .collect()
}

/// Waits up to `within` for an entry after `after` that `wanted` accepts; its fields, or
/// `None` when none arrived in time.
pub async fn await_entry(
    redis_url: &str,
    stream: &str,
    after: &str,
    within: Duration,
    wanted: impl Fn(&[(String, String)]) -> bool,
) -> anyhow::Result<Option<Fields>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let entries = entries_after(redis_url, stream, after).await?;
        if let Some(found) = entries.into_iter().find(|fields| wanted(fields)) {
            return Ok(Some(found));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of field `name`.
pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
