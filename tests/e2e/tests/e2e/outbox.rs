//! The transactional-outbox dispatcher against real Postgres and Redis (storage §7): what it
//! publishes, at-least-once after a crash, Redis outages, permanent failures and `dead`
//! rows, re-queueing, retention, and the STS publishing its own key changes.
//!
//! Every test has its own database and publishes to streams named after a fresh UUID, so
//! tests running in parallel never read each other's messages.

use std::time::Duration;

use control_crypto::{HmacKey, verify_stream_fields};
use control_events::outbox::{
    Dispatcher, OutboxConfig, OutboxHandle, OutboxKeys, OutboxTarget, encode,
};
use control_store::{
    ServiceRole,
    outbox::{self, ClaimRequest, Finished, OutboxMessage, OutboxTable},
};
use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use tests_harness::{
    TestDb, http,
    proxy::TcpProxy,
    streams::{self, field},
    sts::StsFixture,
};
use tokio::sync::watch;

const STREAMS_KEY: &str = "3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d";
const AUDIT_KEY: &str = "5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c";

/// Fast settings: a 20 ms poll, a 1 s lease, backoff from 20 ms to 100 ms.
fn fast_config() -> OutboxConfig {
    OutboxConfig {
        poll: Duration::from_millis(20),
        lock: Duration::from_secs(1),
        max_attempts: 3,
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        redis_timeout: Duration::from_secs(1),
        stats_interval: Duration::from_millis(100),
        ..OutboxConfig::default()
    }
}

fn keys() -> OutboxKeys {
    OutboxKeys {
        streams: Some(HmacKey::from_hex(STREAMS_KEY).unwrap()),
        audit: Some(HmacKey::from_hex(AUDIT_KEY).unwrap()),
    }
}

fn dispatcher(pool: &PgPool, redis_url: &str, config: OutboxConfig) -> Dispatcher {
    Dispatcher::new(
        pool.clone(),
        redis::Client::open(redis_url).unwrap(),
        OutboxTarget {
            table: OutboxTable::Event,
            producer: "sts".to_owned(),
            worker: "sts-outbox-test".to_owned(),
        },
        config,
        keys(),
    )
}

/// A stream name no other test uses.
fn unique_stream(label: &str) -> String {
    format!("test.outbox.{label}.{}", uuid::Uuid::new_v4().simple())
}

/// Enqueues a row as the STS would, in its own transaction; returns its id.
async fn enqueue(
    pool: &PgPool,
    producer: &str,
    topic: &str,
    dedupe_key: Option<&str>,
    payload: &Value,
) -> String {
    let id = uuid::Uuid::now_v7().to_string();
    let mut tx = pool.begin().await.unwrap();
    let inserted = outbox::enqueue(
        &mut tx,
        &OutboxMessage {
            id: &id,
            producer,
            zone_id: Some("z"),
            topic,
            dedupe_key,
            payload,
            request_id: None,
        },
    )
    .await
    .unwrap();
    assert!(inserted);
    tx.commit().await.unwrap();
    id
}

struct RowState {
    status: String,
    attempts: i32,
    last_error: Option<String>,
    published: bool,
}

async fn row_state(db: &TestDb, id: &str) -> RowState {
    let mut admin = db.admin().await.unwrap();
    let row = sqlx::query(
        "SELECT status, attempts, last_error, published_at IS NOT NULL AS published \
           FROM caracal.event_outbox WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    RowState {
        status: row.get("status"),
        attempts: row.get("attempts"),
        last_error: row.get("last_error"),
        published: row.get("published"),
    }
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Every entry of a stream after `after` (exclusive; `0-0` for all), as field lists.
async fn entries_after(stream: &str, after: &str) -> Vec<Vec<(String, String)>> {
    streams::entries_after(&tests_harness::sts::redis_url(), stream, after)
        .await
        .unwrap()
}

/// The id of a stream's last entry (`0-0` when it is empty or missing).
async fn last_entry_id(stream: &str) -> String {
    streams::last_entry_id(&tests_harness::sts::redis_url(), stream)
        .await
        .unwrap()
}

async fn delete_stream(stream: &str) {
    let mut conn = redis_conn(&tests_harness::sts::redis_url()).await;
    let _deleted: i64 = redis::cmd("DEL")
        .arg(stream)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sts_pool(db: &TestDb) -> PgPool {
    db.service_pool(ServiceRole::Sts).await.unwrap()
}

#[tokio::test]
async fn published_messages_carry_the_flattened_payload_the_envelope_and_a_valid_sig()
-> anyhow::Result<()> {
    tests_harness::init_logs();
    let db = TestDb::migrated().await?;
    let pool = sts_pool(&db).await;
    let stream = unique_stream("fields");
    let with_dedupe = enqueue(
        &pool,
        "sts",
        &stream,
        Some("keys:k1:created"),
        &json!({"zone_id": "z", "kid": "k1", "reason": "created", "epoch": 7,
                "flag": true, "ids": ["a", "b"], "detail": {"n": 1}, "absent": null}),
    )
    .await;
    let without_dedupe = enqueue(&pool, "sts", &stream, None, &json!({"zone_id": "z"})).await;
    // Another producer's row is not this dispatcher's to publish.
    let api_row = enqueue(&pool, "api", &stream, None, &json!({"zone_id": "z"})).await;

    let mut dispatcher = dispatcher(&pool, &tests_harness::sts::redis_url(), fast_config());
    let outcome = dispatcher.dispatch_once().await?;
    assert_eq!((outcome.claimed, outcome.published), (2, 2));

    let entries = entries_after(&stream, "0-0").await;
    assert_eq!(entries.len(), 2);
    let key = HmacKey::from_hex(STREAMS_KEY)?;
    for fields in &entries {
        verify_stream_fields(&[&key], &stream, fields)?;
    }
    let first = entries
        .iter()
        .find(|f| field(f, "outbox_id") == Some(with_dedupe.as_str()))
        .unwrap();
    assert_eq!(field(first, "kid"), Some("k1"));
    assert_eq!(field(first, "reason"), Some("created"));
    assert_eq!(field(first, "epoch"), Some("7"));
    assert_eq!(field(first, "flag"), Some("true"));
    assert_eq!(field(first, "ids"), Some(r#"["a","b"]"#));
    assert_eq!(field(first, "detail"), Some(r#"{"n":1}"#));
    assert_eq!(field(first, "absent"), None);
    assert_eq!(field(first, "dedupe_key"), Some("keys:k1:created"));
    assert_eq!(field(first, "_sig").map(str::len), Some(64));
    let second = entries
        .iter()
        .find(|f| field(f, "outbox_id") == Some(without_dedupe.as_str()))
        .unwrap();
    assert_eq!(field(second, "dedupe_key"), None);

    for id in [&with_dedupe, &without_dedupe] {
        let state = row_state(&db, id).await;
        assert_eq!(state.status, "published");
        assert!(state.published);
        assert_eq!(state.attempts, 1);
    }
    assert_eq!(row_state(&db, &api_row).await.status, "pending");
    assert_eq!(dispatcher.dispatch_once().await?.claimed, 0);
    delete_stream(&stream).await;
    Ok(())
}

#[tokio::test]
async fn one_round_publishes_its_rows_in_enqueue_order() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let pool = sts_pool(&db).await;
    let stream = unique_stream("order");
    for n in 0..12 {
        enqueue(
            &pool,
            "sts",
            &stream,
            None,
            &json!({"zone_id": "z", "n": n}),
        )
        .await;
    }
    // Rewrite the first half, so their row versions now lie after the second half's: a
    // claim that returned rows in table order would publish 6..11 before 0..5.
    let mut admin = db.admin().await?;
    sqlx::query(
        "UPDATE caracal.event_outbox SET last_error = 'rewritten' \
          WHERE topic = $1 AND (payload_json->>'n')::int < 6",
    )
    .bind(&stream)
    .execute(&mut admin)
    .await?;
    let mut dispatcher = dispatcher(&pool, &tests_harness::sts::redis_url(), fast_config());
    assert_eq!(dispatcher.dispatch_once().await?.published, 12);
    let order: Vec<String> = entries_after(&stream, "0-0")
        .await
        .iter()
        .filter_map(|fields| field(fields, "n").map(str::to_owned))
        .collect();
    let expected: Vec<String> = (0..12).map(|n: i32| n.to_string()).collect();
    assert_eq!(order, expected);
    delete_stream(&stream).await;
    Ok(())
}

#[tokio::test]
async fn a_wake_publishes_at_once_without_waiting_for_the_poll() -> anyhow::Result<()> {
    tests_harness::init_logs();
    let db = TestDb::migrated().await?;
    let pool = sts_pool(&db).await;
    let stream = unique_stream("wake");
    let config = OutboxConfig {
        poll: Duration::from_secs(60),
        ..fast_config()
    };
    let dispatcher = dispatcher(&pool, &tests_harness::sts::redis_url(), config);
    let handle: OutboxHandle = dispatcher.handle();
    let (stop, stopped) = watch::channel(false);
    let task = dispatcher.spawn(stopped);
    // Let the first (empty) round pass, so only a wake can start the next one.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let id = enqueue(&pool, "sts", &stream, None, &json!({"zone_id": "z"})).await;
    handle.wake();
    assert!(
        eventually(Duration::from_secs(3), async || {
            row_state(&db, &id).await.status == "published"
        })
        .await,
        "a woken dispatcher publishes well before its 60 s poll"
    );
    assert_eq!(entries_after(&stream, "0-0").await.len(), 1);
    assert_eq!(handle.stats().snapshot().published, 1);
    stop.send(true)?;
    task.await?;
    delete_stream(&stream).await;
    Ok(())
}

#[tokio::test]
async fn audit_topic_rows_publish_id_data_and_sig_without_trimming() -> anyhow::Result<()> {
    tests_harness::init_logs();
    let db = TestDb::migrated().await?;
    let pool = sts_pool(&db).await;
    let stream = control_events::streams::AUDIT_EVENTS;
    let event_id = uuid::Uuid::now_v7().to_string();
    let event = json!({"id": event_id, "zone_id": "z", "event_type": "outbox_test",
                       "decision": "allow", "metadata_json": {"k": "v"}});
    let dedupe = format!("audit:{event_id}");
    let id = enqueue(
        &pool,
        "sts",
        stream,
        Some(&dedupe),
        &json!({ "event": event }),
    )
    .await;
    let before = last_entry_id(stream).await;

    let mut dispatcher = dispatcher(&pool, &tests_harness::sts::redis_url(), fast_config());
    assert_eq!(dispatcher.dispatch_once().await?.published, 1);

    let ours: Vec<_> = entries_after(stream, &before)
        .await
        .into_iter()
        .filter(|f| field(f, "id") == Some(event_id.as_str()))
        .collect();
    assert_eq!(ours.len(), 1);
    let fields = &ours[0];
    let mut names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["data", "id", "sig"]);
    let data = field(fields, "data").unwrap();
    assert_eq!(serde_json::from_str::<Value>(data)?, event);
    let sig = field(fields, "sig").unwrap();
    assert!(control_crypto::verify_hmac_sha256_hex(
        &HmacKey::from_hex(AUDIT_KEY)?,
        &[data.as_bytes()],
        sig
    ));
    assert_eq!(row_state(&db, &id).await.status, "published");
    Ok(())
}

#[tokio::test]
async fn a_crash_between_publish_and_record_republishes_with_the_same_outbox_id_after_the_lease()
-> anyhow::Result<()> {
    tests_harness::init_logs();
    let db = TestDb::migrated().await?;
    let pool = sts_pool(&db).await;
    let stream = unique_stream("crash");
    let id = enqueue(
        &pool,
        "sts",
        &stream,
        Some("crash:1"),
        &json!({"zone_id": "z"}),
    )
    .await;

    // A worker claims the row, publishes it, and dies before recording anything.
    let mut conn = pool.acquire().await?;
    let claimed = outbox::claim(
        &mut conn,
        OutboxTable::Event,
        &ClaimRequest {
            producer: "sts",
            worker: "sts-crashed",
            lock: Duration::from_secs(1),
            batch: 10,
        },
    )
    .await?;
    drop(conn);
    assert_eq!(claimed.len(), 1);
    let message = encode(&claimed[0], &keys())?;
    let mut redis = redis_conn(&tests_harness::sts::redis_url()).await;
    let _entry: String = message.xadd(100_000).query_async(&mut redis).await?;

    // While the lease holds, nobody else takes the row.
    let mut dispatcher = dispatcher(&pool, &tests_harness::sts::redis_url(), fast_config());
    assert_eq!(dispatcher.dispatch_once().await?.claimed, 0);
    assert_eq!(row_state(&db, &id).await.status, "pending");

    // After it, the row is published again, with the same outbox_id.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        eventually(Duration::from_secs(3), async || {
            dispatcher.dispatch_once().await.unwrap();
            row_state(&db, &id).await.status == "published"
        })
        .await
    );
    let entries = entries_after(&stream, "0-0").await;
    assert_eq!(entries.len(), 2);
    let key = HmacKey::from_hex(STREAMS_KEY)?;
    for fields in &entries {
        assert_eq!(field(fields, "outbox_id"), Some(id.as_str()));
        assert_eq!(field(fields, "dedupe_key"), Some("crash:1"));
        verify_stream_fields(&[&key], &stream, fields)?;
    }
    assert_eq!(row_state(&db, &id).await.attempts, 2);
    delete_stream(&stream).await;
    Ok(())
}

/// `host:port` of the test Redis, resolved.
async fn redis_addr() -> std::net::SocketAddr {
    let url = tests_harness::sts::redis_url();
    let rest = url.strip_prefix("redis://").unwrap_or(&url);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    tokio::net::lookup_host(host_port)
        .await
        .unwrap()
        .next()
        .unwrap()
}

#[tokio::test]
async fn while_redis_is_unreachable_rows_stay_pending_and_all_publish_after_recovery()
-> anyhow::Result<()> {
    tests_harness::init_logs();
    let db = TestDb::migrated().await?;
    let pool = sts_pool(&db).await;
    let stream = unique_stream("outage");
    let proxy = TcpProxy::start(redis_addr().await).await?;
    proxy.set_up(false);

    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            enqueue(
                &pool,
                "sts",
                &stream,
                None,
                &json!({"zone_id": "z", "n": i}),
            )
            .await,
        );
    }
    // Two attempts would kill a row with a permanent failure; an outage never does.
    let config = OutboxConfig {
        max_attempts: 2,
        ..fast_config()
    };
    let dispatcher = dispatcher(&pool, &format!("redis://{}", proxy.addr), config);
    let handle = dispatcher.handle();
    let (stop, stopped) = watch::channel(false);
    let task = dispatcher.spawn(stopped);

    assert!(
        eventually(Duration::from_secs(10), async || {
            let mut all = true;
            for id in &ids {
                all &= row_state(&db, id).await.attempts >= 4;
            }
            all
        })
        .await,
        "the dispatcher keeps retrying while Redis is away"
    );
    for id in &ids {
        let state = row_state(&db, id).await;
        assert_eq!(state.status, "pending");
        assert!(state.last_error.is_some());
    }
    assert!(
        eventually(Duration::from_secs(3), async || {
            handle.stats().snapshot().pending == 5
        })
        .await
    );
    let during = handle.stats().snapshot();
    assert_eq!(
        (during.dead, during.dead_total, during.published),
        (0, 0, 0)
    );
    assert!(during.retries >= 10);

    proxy.set_up(true);
    assert!(
        eventually(Duration::from_secs(10), async || {
            let mut all = true;
            for id in &ids {
                all &= row_state(&db, id).await.status == "published";
            }
            all
        })
        .await,
        "every row is published once Redis is back"
    );
    let entries = entries_after(&stream, "0-0").await;
    for id in &ids {
        assert!(
            entries
                .iter()
                .any(|f| field(f, "outbox_id") == Some(id.as_str())),
            "{id} was published"
        );
    }
    assert!(
        eventually(Duration::from_secs(3), async || {
            handle.stats().snapshot().pending == 0
        })
        .await
    );
    stop.send(true)?;
    task.await?;
    delete_stream(&stream).await;
    Ok(())
}

#[tokio::test]
async fn a_permanent_error_makes_a_row_dead_after_max_attempts_and_retry_dead_requeues_it()
-> anyhow::Result<()> {
    tests_harness::init_logs();
    let db = TestDb::migrated().await?;
    let pool = sts_pool(&db).await;
    let blocked = unique_stream("wrongtype");
    let healthy = unique_stream("healthy");
    // The stream key is a plain string, so XADD answers WRONGTYPE.
    let mut redis = redis_conn(&tests_harness::sts::redis_url()).await;
    let () = redis::cmd("SET")
        .arg(&blocked)
        .arg("not a stream")
        .query_async(&mut redis)
        .await?;

    let doomed = enqueue(&pool, "sts", &blocked, None, &json!({"zone_id": "z"})).await;
    let unencodable = enqueue(&pool, "sts", &healthy, None, &json!({"Bad-Name": "x"})).await;
    let fine = enqueue(&pool, "sts", &healthy, None, &json!({"zone_id": "z"})).await;

    let mut dispatcher = dispatcher(&pool, &tests_harness::sts::redis_url(), fast_config());
    let handle = dispatcher.handle();
    // One bad row does not hold back the others of its batch.
    let first = dispatcher.dispatch_once().await?;
    assert_eq!((first.claimed, first.published, first.retried), (3, 1, 2));
    assert_eq!(row_state(&db, &fine).await.status, "published");

    assert!(
        eventually(Duration::from_secs(5), async || {
            dispatcher.dispatch_once().await.unwrap();
            row_state(&db, &doomed).await.status == "dead"
                && row_state(&db, &unencodable).await.status == "dead"
        })
        .await
    );
    let state = row_state(&db, &doomed).await;
    assert_eq!(state.attempts, 3, "dead exactly at OUTBOX_MAX_ATTEMPTS");
    assert!(!state.published);
    assert!(state.last_error.unwrap_or_default().contains("WRONGTYPE"));
    let state = row_state(&db, &unencodable).await;
    assert_eq!(state.attempts, 3);
    assert!(
        state
            .last_error
            .unwrap_or_default()
            .starts_with("encoding failed")
    );
    // Dead rows are left alone by later rounds.
    assert_eq!(dispatcher.dispatch_once().await?.claimed, 0);
    dispatcher.refresh_stats().await?;
    let stats = handle.stats().snapshot();
    assert_eq!((stats.dead, stats.dead_total, stats.pending), (2, 2, 0));

    // `caracal outbox retry --dead --topic <blocked>`: only that topic's row comes back.
    let mut conn = pool.acquire().await?;
    assert_eq!(
        outbox::retry_dead(
            &mut conn,
            OutboxTable::Event,
            Some("sts"),
            Some("no.such.topic")
        )
        .await?,
        0
    );
    assert_eq!(
        outbox::retry_dead(&mut conn, OutboxTable::Event, Some("sts"), Some(&blocked)).await?,
        1
    );
    drop(conn);
    let state = row_state(&db, &doomed).await;
    assert_eq!((state.status.as_str(), state.attempts), ("pending", 0));
    assert_eq!(row_state(&db, &unencodable).await.status, "dead");

    delete_stream(&blocked).await;
    assert!(
        eventually(Duration::from_secs(3), async || {
            dispatcher.dispatch_once().await.unwrap();
            row_state(&db, &doomed).await.status == "published"
        })
        .await
    );
    let entries = entries_after(&blocked, "0-0").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(field(&entries[0], "outbox_id"), Some(doomed.as_str()));
    delete_stream(&blocked).await;
    delete_stream(&healthy).await;
    Ok(())
}

#[tokio::test]
async fn purge_removes_only_published_rows_older_than_the_cutoff() -> anyhow::Result<()> {
    tests_harness::init_logs();
    let db = TestDb::migrated().await?;
    let pool = sts_pool(&db).await;
    let stream = unique_stream("purge");
    let old_published = enqueue(&pool, "sts", &stream, None, &json!({"n": 1})).await;
    let new_published = enqueue(&pool, "sts", &stream, None, &json!({"n": 2})).await;
    let mut dispatcher = dispatcher(&pool, &tests_harness::sts::redis_url(), fast_config());
    assert_eq!(dispatcher.dispatch_once().await?.published, 2);
    let old_pending = enqueue(&pool, "api", &stream, None, &json!({"n": 3})).await;
    let old_dead = enqueue(&pool, "api", &stream, None, &json!({"n": 4})).await;
    let old_api_published = enqueue(&pool, "api", &stream, None, &json!({"n": 5})).await;
    let mut admin = db.admin().await?;
    sqlx::query("UPDATE caracal.event_outbox SET status = 'dead' WHERE id = $1")
        .bind(&old_dead)
        .execute(&mut admin)
        .await?;
    sqlx::query(
        "UPDATE caracal.event_outbox SET status = 'published', published_at = now() WHERE id = $1",
    )
    .bind(&old_api_published)
    .execute(&mut admin)
    .await?;
    sqlx::query(
        "UPDATE caracal.event_outbox SET updated_at = now() - interval '8 days', \
                created_at = now() - interval '8 days' WHERE id <> $1",
    )
    .bind(&new_published)
    .execute(&mut admin)
    .await?;

    let cutoff = chrono::Utc::now() - chrono::Duration::days(7);
    // The STS has no DELETE on event_outbox (storage §2.3): its retention must run elsewhere.
    let mut sts_conn = pool.acquire().await?;
    assert!(
        outbox::purge(
            &mut sts_conn,
            OutboxTable::Event,
            Finished::Published,
            cutoff,
            Some("sts"),
            100
        )
        .await
        .is_err()
    );
    drop(sts_conn);

    let api = db.service_pool(ServiceRole::Api).await?;
    let mut conn = api.acquire().await?;
    // Limited to one producer, then to all, in batches.
    assert_eq!(
        outbox::purge(
            &mut conn,
            OutboxTable::Event,
            Finished::Published,
            cutoff,
            Some("sts"),
            100
        )
        .await?,
        1
    );
    assert_eq!(
        outbox::purge(
            &mut conn,
            OutboxTable::Event,
            Finished::Published,
            cutoff,
            None,
            100
        )
        .await?,
        1
    );
    assert_eq!(
        outbox::purge(
            &mut conn,
            OutboxTable::Event,
            Finished::Published,
            cutoff,
            None,
            100
        )
        .await?,
        0
    );
    let left: Vec<String> =
        sqlx::query_scalar("SELECT id FROM caracal.event_outbox WHERE topic = $1 ORDER BY id")
            .bind(&stream)
            .fetch_all(&mut admin)
            .await?;
    let mut expected = vec![new_published.clone(), old_pending.clone(), old_dead];
    expected.sort();
    assert_eq!(left, expected);
    assert!(!left.contains(&old_published));
    // Dead rows have their own horizon.
    assert_eq!(
        outbox::purge(
            &mut conn,
            OutboxTable::Event,
            Finished::Dead,
            cutoff,
            None,
            100
        )
        .await?,
        1
    );
    let left: Vec<String> =
        sqlx::query_scalar("SELECT id FROM caracal.event_outbox WHERE topic = $1 ORDER BY id")
            .bind(&stream)
            .fetch_all(&mut admin)
            .await?;
    let mut expected = vec![new_published, old_pending];
    expected.sort();
    assert_eq!(left, expected);
    delete_stream(&stream).await;
    Ok(())
}

#[tokio::test]
async fn the_coordinator_table_is_dispatched_the_same_way() -> anyhow::Result<()> {
    tests_harness::init_logs();
    let db = TestDb::migrated().await?;
    let pool = db.service_pool(ServiceRole::Coordinator).await?;
    let stream = unique_stream("coordinator");
    let id = uuid::Uuid::now_v7().to_string();
    sqlx::query(
        "INSERT INTO caracal_outbox (id, producer, zone_id, topic, dedupe_key, payload_json) \
         VALUES ($1, 'coordinator', 'z', $2, 'spawn:a1:v1', $3)",
    )
    .bind(&id)
    .bind(&stream)
    .bind(json!({"event": "spawn", "zone_id": "z", "agent_session_id": "a1"}))
    .execute(&pool)
    .await?;
    let mut dispatcher = Dispatcher::new(
        pool.clone(),
        redis::Client::open(tests_harness::sts::redis_url())?,
        OutboxTarget {
            table: OutboxTable::Caracal,
            producer: "coordinator".to_owned(),
            worker: "coordinator-test".to_owned(),
        },
        fast_config(),
        keys(),
    );
    assert_eq!(dispatcher.dispatch_once().await?.published, 1);
    let entries = entries_after(&stream, "0-0").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(field(&entries[0], "outbox_id"), Some(id.as_str()));
    assert_eq!(field(&entries[0], "dedupe_key"), Some("spawn:a1:v1"));
    verify_stream_fields(&[&HmacKey::from_hex(STREAMS_KEY)?], &stream, &entries[0])?;
    let status: String =
        sqlx::query_scalar("SELECT status FROM caracal.caracal_outbox WHERE id = $1")
            .bind(&id)
            .fetch_one(&pool)
            .await?;
    assert_eq!(status, "published");
    delete_stream(&stream).await;
    Ok(())
}

#[tokio::test]
async fn the_sts_publishes_its_key_created_row_on_the_keys_stream() -> anyhow::Result<()> {
    tests_harness::init_logs();
    let db = TestDb::migrated().await?;
    super::sts::scenario(&db).await?;
    let sts = StsFixture::start(&db).await?;
    let stream = control_events::streams::KEYS_INVALIDATE;
    let before = last_entry_id(stream).await;

    // The zone's first mint creates its signing key and enqueues `created`.
    let resp = sts
        .token(&super::sts::bootstrap_form(
            super::sts::AGENT,
            "resource://crm",
        ))
        .await?;
    assert_eq!(resp.status, 200);
    let mut admin = db.admin().await?;
    let row = sqlx::query(
        "SELECT id, dedupe_key, payload_json->>'kid' AS kid FROM caracal.event_outbox \
          WHERE topic = $1 AND payload_json->>'reason' = 'created'",
    )
    .bind(stream)
    .fetch_one(&mut admin)
    .await?;
    let (id, dedupe, kid): (String, String, String) =
        (row.get("id"), row.get("dedupe_key"), row.get("kid"));
    assert!(
        eventually(Duration::from_secs(5), async || {
            row_state(&db, &id).await.status == "published"
        })
        .await,
        "the STS dispatcher publishes the key-created row"
    );
    // The binding revision the key insert triggered is the STS's row too.
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM caracal.event_outbox WHERE producer = 'sts' AND status <> 'published'",
    )
    .fetch_one(&mut admin)
    .await?;
    assert_eq!(pending, 0);

    let ours: Vec<_> = entries_after(stream, &before)
        .await
        .into_iter()
        .filter(|f| field(f, "outbox_id") == Some(id.as_str()))
        .collect();
    assert_eq!(ours.len(), 1);
    let fields = &ours[0];
    assert_eq!(field(fields, "zone_id"), Some(super::sts::ZONE));
    assert_eq!(field(fields, "kid"), Some(kid.as_str()));
    assert_eq!(field(fields, "reason"), Some("created"));
    assert_eq!(field(fields, "dedupe_key"), Some(dedupe.as_str()));
    assert_eq!(dedupe, format!("keys:{kid}:created"));
    verify_stream_fields(&[&HmacKey::from_hex(&sts.streams_key_hex)?], stream, fields)?;

    // `/metrics` shows the outbox gauges.
    assert!(
        eventually(Duration::from_secs(10), async || {
            let metrics = http::get(sts.addr, "/metrics").await.unwrap();
            let text = String::from_utf8_lossy(&metrics.body).into_owned();
            text.contains("# TYPE caracal_sts_outbox_pending gauge\ncaracal_sts_outbox_pending 0\n")
                && text.contains("caracal_sts_outbox_dead 0\n")
                && text.contains("caracal_sts_outbox_oldest_pending_age_seconds 0\n")
                && !text.contains("caracal_sts_outbox_published_total 0\n")
        })
        .await
    );
    sts.stop().await;
    Ok(())
}
