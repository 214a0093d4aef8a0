//! A real audit ledger on `127.0.0.1:<free port>` against a test database and a Redis
//! database of its own.
//!
//! Every producer writes to the one stream `caracal.audit.events`, and other tests read that
//! stream in Redis database 0 while they run; a ledger there would consume and trim their
//! events. So each ledger fixture leases one of the databases 4–11 ([`RedisLease`]),
//! flushed when leased, and at most eight ledgers run at once.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use control_audit::{AuditConfig, AuditHandle};
use control_crypto::{HmacKey, hmac_sha256_hex};
use control_events::streams::{AUDIT_EVENTS, AUDIT_FIELD_DATA, AUDIT_FIELD_ID, AUDIT_FIELD_SIG};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{TestDb, http, sts::isolated_redis};

/// The Redis databases leased to ledger fixtures.
const LEASED_DBS: std::ops::RangeInclusive<u8> = 4..=11;

struct DbPool {
    free: Mutex<Vec<u8>>,
    permits: Arc<Semaphore>,
}

fn db_pool() -> &'static DbPool {
    static POOL: OnceLock<DbPool> = OnceLock::new();
    POOL.get_or_init(|| DbPool {
        free: Mutex::new(LEASED_DBS.collect()),
        permits: Arc::new(Semaphore::new(LEASED_DBS.count())),
    })
}

/// One Redis database, flushed when leased and returned when dropped.
pub struct RedisLease {
    /// The database number.
    pub db: u8,
    /// `redis://…/<db>`.
    pub url: String,
    _permit: OwnedSemaphorePermit,
}

impl RedisLease {
    /// Waits for a free database and flushes it.
    pub async fn acquire() -> anyhow::Result<Self> {
        let pool = db_pool();
        let permit = Arc::clone(&pool.permits).acquire_owned().await?;
        let db = pool
            .free
            .lock()
            .map_err(|_poisoned| anyhow::anyhow!("lease pool poisoned"))?
            .pop()
            .ok_or_else(|| anyhow::anyhow!("no free Redis database"))?;
        let url = isolated_redis(db).await?;
        Ok(Self {
            db,
            url,
            _permit: permit,
        })
    }

    /// A connection to the leased database.
    pub async fn conn(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        Ok(redis::Client::open(self.url.as_str())?
            .get_multiplexed_async_connection()
            .await?)
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        if let Ok(mut free) = db_pool().free.lock() {
            free.push(self.db);
        }
    }
}

/// The producer key every ledger fixture verifies with (hex).
pub const PRODUCER_KEY_HEX: &str =
    "5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c";
/// The internal bearer of every ledger fixture.
pub const INTERNAL_TOKEN: &str = "internal-token-for-tests-0123456789abcdef";

/// The producer key.
pub fn producer_key() -> anyhow::Result<HmacKey> {
    Ok(HmacKey::from_hex(PRODUCER_KEY_HEX)?)
}

/// A running ledger.
pub struct AuditFixture {
    handle: Option<AuditHandle>,
    /// Listen address.
    pub addr: SocketAddr,
    /// Its Redis database.
    pub redis: RedisLease,
    /// `CARACAL_INSTANCE_ID`.
    pub instance_id: String,
}

impl AuditFixture {
    /// Starts a ledger with the test settings (fast claim, trim and leader ticks).
    pub async fn start(db: &TestDb) -> anyhow::Result<Self> {
        Self::start_with(db, &[]).await
    }

    /// Starts a ledger; `overrides` replace or add settings (an empty value unsets one).
    pub async fn start_with(db: &TestDb, overrides: &[(&str, &str)]) -> anyhow::Result<Self> {
        let redis = RedisLease::acquire().await?;
        Self::start_on(db, redis, overrides).await
    }

    /// Starts a ledger on an already leased Redis database (a restart keeps the stream).
    pub async fn start_on(
        db: &TestDb,
        redis: RedisLease,
        overrides: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let instance_id = format!("audit-test-{}", uuid::Uuid::new_v4().simple());
        let mut env: HashMap<String, String> = HashMap::from([
            ("DATABASE_URL".to_owned(), db.url()),
            ("REDIS_URL".to_owned(), redis.url.clone()),
            ("AUDIT_HMAC_KEY".to_owned(), PRODUCER_KEY_HEX.to_owned()),
            (
                "CARACAL_INTERNAL_TOKEN".to_owned(),
                INTERNAL_TOKEN.to_owned(),
            ),
            ("CARACAL_AUDIT_ADDR".to_owned(), addr.to_string()),
            ("CARACAL_INSTANCE_ID".to_owned(), instance_id.clone()),
            ("CARACAL_DB_POOL_MAX".to_owned(), "4".to_owned()),
            ("CARACAL_DB_POOL_MIN".to_owned(), "0".to_owned()),
            // Two loops (the default is 4) keep the tests' consumers and connections few.
            ("AUDIT_WORKERS".to_owned(), "2".to_owned()),
            ("AUDIT_CLAIM_IDLE_SECS".to_owned(), "1".to_owned()),
            ("AUDIT_STREAM_TRIM_INTERVAL_SECS".to_owned(), "1".to_owned()),
            ("AUDIT_LEADER_TICK_SECS".to_owned(), "1".to_owned()),
        ]);
        for (k, v) in overrides {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let lookup = move |name: &str| env.get(name).cloned().filter(|v| !v.is_empty());
        let config = AuditConfig::from_lookup(&lookup)?;
        let handle = control_audit::start_with_listener(config, &lookup, listener).await?;
        Ok(Self {
            handle: Some(handle),
            addr,
            redis,
            instance_id,
        })
    }

    /// Stops the ledger and hands back its Redis database (for a restart).
    pub async fn stop(mut self) -> RedisLease {
        if let Some(handle) = self.handle.take() {
            handle.stop().await;
        }
        self.redis
    }

    /// `GET path` with the internal bearer.
    pub async fn get_internal(&self, path: &str) -> anyhow::Result<http::HttpResponse> {
        let bearer = format!("Bearer {INTERNAL_TOKEN}");
        http::request(
            self.addr,
            "GET",
            path,
            &[("authorization", bearer.as_str())],
            bytes::Bytes::new(),
        )
        .await
    }

    /// `POST path` with a JSON body and the internal bearer.
    pub async fn post_internal(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<http::HttpResponse> {
        let bearer = format!("Bearer {INTERNAL_TOKEN}");
        http::request(
            self.addr,
            "POST",
            path,
            &[
                ("authorization", bearer.as_str()),
                ("content-type", "application/json"),
            ],
            body.to_string(),
        )
        .await
    }
}

/// Adds `(id, data)` entries to the stream of `redis`, signed with `key` (unsigned when
/// `None`); returns their stream ids.
pub async fn emit_raw(
    redis: &RedisLease,
    entries: &[(String, String)],
    key: Option<&HmacKey>,
) -> anyhow::Result<Vec<String>> {
    let mut conn = redis.conn().await?;
    let mut pipe = redis::pipe();
    for (id, data) in entries {
        let sig = key
            .map(|k| hmac_sha256_hex(k, &[data.as_bytes()]))
            .unwrap_or_default();
        pipe.cmd("XADD")
            .arg(AUDIT_EVENTS)
            .arg("*")
            .arg(AUDIT_FIELD_ID)
            .arg(id)
            .arg(AUDIT_FIELD_DATA)
            .arg(data)
            .arg(AUDIT_FIELD_SIG)
            .arg(sig);
    }
    Ok(pipe.query_async(&mut conn).await?)
}

/// An event's `data` in zone `zone` with id `id`, occurred now, with `extra` members.
pub fn event_data(zone: &str, id: &str, extra: serde_json::Value) -> String {
    let mut data = serde_json::json!({
        "id": id,
        "zone_id": zone,
        "event_type": "gateway_resource_request",
        "request_id": format!("req-{id}"),
        "decision": "allow",
        "metadata_json": {"application_id": "app-1", "status": 200},
        "occurred_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
    });
    if let (Some(target), serde_json::Value::Object(extra)) = (data.as_object_mut(), extra) {
        target.extend(extra);
    }
    data.to_string()
}

/// Waits until `audit_events` holds `count` rows (read as the owner), or fails after `within`.
pub async fn await_rows(db: &TestDb, count: i64, within: Duration) -> anyhow::Result<()> {
    let mut conn = db.admin().await?;
    let started = tokio::time::Instant::now();
    loop {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM caracal.audit_events")
            .fetch_one(&mut conn)
            .await?;
        if rows >= count {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "{rows} of {count} rows after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
