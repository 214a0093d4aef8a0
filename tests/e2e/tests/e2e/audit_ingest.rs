//! The ledger's ingest against real Postgres and Redis (storage §6.5, §8.4, §8.5): chaining
//! per zone, acknowledgement after commit, duplicates, tamper on replay, dead letters with
//! their reasons, claims of stuck entries, trimming below the acknowledged point, transient
//! database failures, and the internal dead-letter endpoints.

use std::time::Duration;

use control_crypto::{HmacKey, chain_hmac, ingest_signature};
use control_events::streams::{AUDIT_DLQ, AUDIT_EVENTS, AUDIT_INGESTOR_GROUP};
use redis::AsyncCommands;
use serde_json::json;
use tests_harness::{
    TestDb,
    audit::{AuditFixture, await_rows, emit_raw, event_data, producer_key},
};

const WITHIN: Duration = Duration::from_secs(20);

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

/// Dead letters as (reason, src_id).
async fn dead_letters(audit: &AuditFixture) -> Vec<(String, String)> {
    let mut conn = audit.redis.conn().await.unwrap();
    let reply: redis::streams::StreamRangeReply = conn.xrange_all(AUDIT_DLQ).await.unwrap();
    reply
        .ids
        .iter()
        .map(|e| {
            (
                e.get::<String>("reason").unwrap_or_default(),
                e.get::<String>("src_id").unwrap_or_default(),
            )
        })
        .collect()
}

async fn await_dead_letters(audit: &AuditFixture, count: usize) -> Vec<(String, String)> {
    let started = tokio::time::Instant::now();
    loop {
        let letters = dead_letters(audit).await;
        if letters.len() >= count {
            return letters;
        }
        assert!(
            started.elapsed() < WITHIN,
            "{} of {count} dead letters",
            letters.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pending(audit: &AuditFixture) -> i64 {
    let mut conn = audit.redis.conn().await.unwrap();
    let reply: redis::streams::StreamPendingReply = conn
        .xpending(AUDIT_EVENTS, AUDIT_INGESTOR_GROUP)
        .await
        .unwrap();
    reply.count() as i64
}

async fn await_no_pending(audit: &AuditFixture) {
    let started = tokio::time::Instant::now();
    while pending(audit).await > 0 {
        assert!(started.elapsed() < WITHIN, "entries still pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type Row = (
    String,
    String,
    i64,
    Vec<u8>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<String>,
    Option<Vec<u8>>,
    String,
);

async fn rows(db: &TestDb) -> Vec<Row> {
    let mut conn = db.admin().await.unwrap();
    sqlx::query_as(
        "SELECT id, zone_id, chain_seq, content_sha256, prev_content_sha256, chain_hmac, chain_key_id,
                ingest_signature, to_char(ingested_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
           FROM caracal.audit_events ORDER BY zone_id, chain_seq",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

async fn alerts(db: &TestDb) -> Vec<(String, String, String)> {
    let mut conn = db.admin().await.unwrap();
    sqlx::query_as(
        "SELECT kind, event_id, coalesce(detail, '') FROM caracal.audit_ingest_alerts ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn events_are_chained_per_zone_and_acknowledged_after_commit() {
    let db = TestDb::migrated().await.unwrap();
    let audit = AuditFixture::start(&db).await.unwrap();
    let key = producer_key().unwrap();
    let mut entries = Vec::new();
    for (n, id) in ids("ev", 60).into_iter().enumerate() {
        let zone = if n % 3 == 0 { "zone-b" } else { "zone-a" };
        entries.push((id.clone(), event_data(zone, &id, json!({}))));
    }
    emit_raw(&audit.redis, &entries, Some(&key)).await.unwrap();
    await_rows(&db, 60, WITHIN).await.unwrap();
    await_no_pending(&audit).await;
    let rows = rows(&db).await;
    let chain_key = HmacKey::from_hex(tests_harness::audit::PRODUCER_KEY_HEX).unwrap();
    for zone in ["zone-a", "zone-b"] {
        let chain: Vec<&Row> = rows.iter().filter(|r| r.1 == zone).collect();
        assert_eq!(chain.len(), if zone == "zone-b" { 20 } else { 40 });
        let mut prev: Option<Vec<u8>> = None;
        for (n, row) in chain.iter().enumerate() {
            assert_eq!(row.2, n as i64 + 1, "{zone} sequence");
            assert_eq!(row.4, prev, "{zone} link at {}", row.2);
            let expected = chain_hmac(&chain_key, zone, row.2, prev.as_deref(), &row.3);
            assert_eq!(row.5.as_deref(), Some(expected.as_slice()), "chain hmac");
            assert_eq!(row.6.as_deref(), Some(chain_key.chain_key_id()));
            let signature = ingest_signature(&chain_key, &row.3, &row.8);
            assert_eq!(
                row.7.as_deref(),
                Some(signature.as_slice()),
                "ingest signature"
            );
            prev = Some(row.3.clone());
        }
    }
    // Stream order is chain order within a zone.
    let zone_a: Vec<&String> = rows
        .iter()
        .filter(|r| r.1 == "zone-a")
        .map(|r| &r.0)
        .collect();
    let mut sorted = zone_a.clone();
    sorted.sort();
    assert_eq!(zone_a, sorted);
    assert!(alerts(&db).await.is_empty());
    assert!(dead_letters(&audit).await.is_empty());
    audit.stop().await;
}

#[tokio::test]
async fn replayed_duplicates_are_benign_and_changed_content_is_tamper() {
    let db = TestDb::migrated().await.unwrap();
    let audit = AuditFixture::start(&db).await.unwrap();
    let key = producer_key().unwrap();
    let original = event_data(
        "zone-a",
        "dup-1",
        json!({"occurred_at": "2026-11-30T10:00:00.5Z"}),
    );
    emit_raw(
        &audit.redis,
        &[("dup-1".into(), original.clone())],
        Some(&key),
    )
    .await
    .unwrap();
    await_rows(&db, 1, WITHIN).await.unwrap();
    let before = rows(&db).await;
    // A producer replaying its replay file: the same bytes, twice, in one batch and later.
    emit_raw(
        &audit.redis,
        &[
            ("dup-1".into(), original.clone()),
            ("dup-1".into(), original.clone()),
        ],
        Some(&key),
    )
    .await
    .unwrap();
    // The same key with other content (a different decision).
    let changed = original.replace("\"allow\"", "\"deny\"");
    assert_ne!(changed, original);
    emit_raw(&audit.redis, &[("dup-1".into(), changed)], Some(&key))
        .await
        .unwrap();
    let letters = await_dead_letters(&audit, 1).await;
    assert_eq!(
        letters,
        vec![("tamper_on_replay".to_owned(), "dup-1".to_owned())]
    );
    await_no_pending(&audit).await;
    assert_eq!(rows(&db).await, before, "the stored row stays as it was");
    let alerts = alerts(&db).await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].0, "content_mismatch_on_replay");
    assert_eq!(alerts[0].1, "dup-1");
    assert!(
        alerts[0]
            .2
            .starts_with(&format!("stored={} incoming=", hex::encode(&before[0].3)))
    );
    let metrics = tests_harness::http::get(audit.addr, "/metrics")
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(text.contains("caracal_audit_duplicates_total 2"), "{text}");
    audit.stop().await;
}

#[tokio::test]
async fn invalid_entries_go_to_the_dead_letters_with_their_reason_and_nothing_is_stored() {
    let db = TestDb::migrated().await.unwrap();
    let audit = AuditFixture::start(&db).await.unwrap();
    let key = producer_key().unwrap();
    let other_key = HmacKey::from_bytes(&[1u8; 32]).unwrap();
    let far_future = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let long_ago = (chrono::Utc::now() - chrono::Duration::days(400)).to_rfc3339();
    let cases: Vec<(&str, String, Option<&HmacKey>, &str)> = vec![
        (
            "bad-sig",
            event_data("z", "bad-sig", json!({})),
            Some(&other_key),
            "bad_signature",
        ),
        (
            "unsigned",
            event_data("z", "unsigned", json!({})),
            None,
            "bad_signature",
        ),
        (
            "mismatch",
            event_data("z", "other-id", json!({})),
            Some(&key),
            "id_mismatch",
        ),
        (
            "repeated",
            event_data("z", "repeated", json!({})).replacen('{', r#"{"zone_id":"y","#, 1),
            Some(&key),
            "invalid_event:repeated_key",
        ),
        (
            "inexact",
            event_data("z", "inexact", json!({})).replace("200", "12345678901234567890"),
            Some(&key),
            "invalid_event:inexact_number",
        ),
        (
            "nul",
            event_data("z", "nul", json!({"request_id": "a\u{0}b"})),
            Some(&key),
            "invalid_event:nul_character",
        ),
        (
            "future",
            event_data("z", "future", json!({"occurred_at": far_future})),
            Some(&key),
            "occurred_at_out_of_range",
        ),
        (
            "old",
            event_data("z", "old", json!({"occurred_at": long_ago})),
            Some(&key),
            "occurred_at_out_of_range",
        ),
        (
            "notjson",
            "{".to_owned(),
            Some(&key),
            "invalid_event:not_json",
        ),
    ];
    for (id, data, signer, _) in &cases {
        emit_raw(&audit.redis, &[((*id).to_owned(), data.clone())], *signer)
            .await
            .unwrap();
    }
    let letters = await_dead_letters(&audit, cases.len()).await;
    for (id, _, _, reason) in &cases {
        assert!(
            letters.contains(&((*reason).to_owned(), (*id).to_owned())),
            "{id}: {reason} not in {letters:?}"
        );
    }
    await_no_pending(&audit).await;
    assert!(rows(&db).await.is_empty());
    audit.stop().await;
}

#[tokio::test]
async fn an_id_taken_in_another_zone_is_isolated_by_bisection() {
    let db = TestDb::migrated().await.unwrap();
    let audit = AuditFixture::start(&db).await.unwrap();
    let key = producer_key().unwrap();
    let first = event_data(
        "zone-a",
        "shared-id",
        json!({"occurred_at": "2026-11-30T10:00:00Z"}),
    );
    emit_raw(&audit.redis, &[("shared-id".into(), first)], Some(&key))
        .await
        .unwrap();
    await_rows(&db, 1, WITHIN).await.unwrap();
    // One batch for zone-b: seven good events around the conflicting one.
    let mut batch = Vec::new();
    for id in ids("b", 7) {
        batch.push((id.clone(), event_data("zone-b", &id, json!({}))));
    }
    batch.insert(
        3,
        (
            "shared-id".into(),
            event_data(
                "zone-b",
                "shared-id",
                json!({"occurred_at": "2026-11-30T10:00:00Z"}),
            ),
        ),
    );
    emit_raw(&audit.redis, &batch, Some(&key)).await.unwrap();
    let letters = await_dead_letters(&audit, 1).await;
    assert_eq!(
        letters,
        vec![("id_conflict_other_zone".to_owned(), "shared-id".to_owned())]
    );
    await_rows(&db, 8, WITHIN).await.unwrap();
    await_no_pending(&audit).await;
    let zone_b: Vec<i64> = rows(&db)
        .await
        .iter()
        .filter(|r| r.1 == "zone-b")
        .map(|r| r.2)
        .collect();
    assert_eq!(
        zone_b,
        (1..=7).collect::<Vec<_>>(),
        "the good events chain without a gap"
    );
    audit.stop().await;
}

#[tokio::test]
async fn entries_stuck_at_a_dead_consumer_are_claimed_or_dead_lettered_after_too_many_deliveries() {
    let db = TestDb::migrated().await.unwrap();
    let redis = tests_harness::audit::RedisLease::acquire().await.unwrap();
    let key = producer_key().unwrap();
    let mut conn = redis.conn().await.unwrap();
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(AUDIT_EVENTS)
        .arg(AUDIT_INGESTOR_GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    let entries: Vec<(String, String)> = ids("stuck", 2)
        .into_iter()
        .map(|id| (id.clone(), event_data("zone-a", &id, json!({}))))
        .collect();
    let stream_ids = emit_raw(&redis, &entries, Some(&key)).await.unwrap();
    // A consumer that read both and died; the second entry was delivered 20 times already.
    let _read: redis::streams::StreamReadReply = conn
        .xread_options(
            &[AUDIT_EVENTS],
            &[">"],
            &redis::streams::StreamReadOptions::default()
                .group(AUDIT_INGESTOR_GROUP, "ghost")
                .count(10),
        )
        .await
        .unwrap();
    let _claimed: redis::Value = redis::cmd("XCLAIM")
        .arg(AUDIT_EVENTS)
        .arg(AUDIT_INGESTOR_GROUP)
        .arg("ghost")
        .arg(0)
        .arg(&stream_ids[1])
        .arg("RETRYCOUNT")
        .arg(20)
        .query_async(&mut conn)
        .await
        .unwrap();
    let audit = AuditFixture::start_on(&db, redis, &[]).await.unwrap();
    await_rows(&db, 1, WITHIN).await.unwrap();
    let letters = await_dead_letters(&audit, 1).await;
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0]
            .0
            .starts_with("transient_exceeded_max_deliveries:"),
        "{letters:?}"
    );
    assert_eq!(letters[0].1, "stuck-0001");
    await_no_pending(&audit).await;
    // The internal endpoints: browse, then replay the retryable letter; it is ingested.
    let listed = audit.get_internal("/internal/audit/dlq").await.unwrap();
    assert_eq!(listed.status, 200);
    let listed = listed.json().unwrap();
    let dlq_id = listed["items"][0]["dlq_id"].as_str().unwrap().to_owned();
    assert_eq!(listed["items"][0]["fields"]["src_id"], "stuck-0001");
    let shown = audit
        .get_internal(&format!("/internal/audit/dlq/{dlq_id}"))
        .await
        .unwrap();
    assert_eq!(shown.status, 200);
    let replayed = audit
        .post_internal("/internal/audit/dlq/replay", &json!({}))
        .await
        .unwrap();
    assert_eq!(replayed.status, 200);
    assert_eq!(replayed.json().unwrap()["replayed"], json!([dlq_id]));
    await_rows(&db, 2, WITHIN).await.unwrap();
    assert!(dead_letters(&audit).await.is_empty());
    audit.stop().await;
}

#[tokio::test]
async fn evidence_letters_are_kept_by_replay_and_the_internal_routes_need_the_bearer() {
    let db = TestDb::migrated().await.unwrap();
    let audit = AuditFixture::start(&db).await.unwrap();
    emit_raw(
        &audit.redis,
        &[("x".into(), event_data("z", "x", json!({})))],
        None,
    )
    .await
    .unwrap();
    await_dead_letters(&audit, 1).await;
    let replayed = audit
        .post_internal("/internal/audit/dlq/replay", &json!({}))
        .await
        .unwrap();
    assert_eq!(replayed.json().unwrap()["replayed"], json!([]));
    assert_eq!(
        dead_letters(&audit).await.len(),
        1,
        "a bad signature stays as evidence"
    );
    let anonymous = tests_harness::http::get(audit.addr, "/internal/audit/dlq")
        .await
        .unwrap();
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.json().unwrap()["error"], "unauthorized");
    let bad = audit
        .post_internal("/internal/audit/dlq/purge", &json!({"before": "yesterday"}))
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    let purged = audit
        .post_internal(
            "/internal/audit/dlq/purge",
            &json!({"before": chrono::Utc::now().to_rfc3339()}),
        )
        .await
        .unwrap();
    assert_eq!(purged.status, 200);
    assert!(dead_letters(&audit).await.is_empty());
    audit.stop().await;
    // Without a token the internal routes are off.
    let audit = AuditFixture::start_with(&db, &[("CARACAL_INTERNAL_TOKEN", "")])
        .await
        .unwrap();
    let off = audit.get_internal("/internal/audit/dlq").await.unwrap();
    assert_eq!(off.status, 503);
    audit.stop().await;
}

#[tokio::test]
async fn the_stream_is_trimmed_only_below_every_groups_delivered_and_pending_point() {
    let db = TestDb::migrated().await.unwrap();
    let audit = AuditFixture::start(&db).await.unwrap();
    let key = producer_key().unwrap();
    let mut conn = audit.redis.conn().await.unwrap();
    // An observer group that has read nothing holds the floor at the start.
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(AUDIT_EVENTS)
        .arg("observer")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    let entries: Vec<(String, String)> = ids("trim", 600)
        .into_iter()
        .map(|id| (id.clone(), event_data("zone-a", &id, json!({}))))
        .collect();
    emit_raw(&audit.redis, &entries, Some(&key)).await.unwrap();
    await_rows(&db, 600, WITHIN).await.unwrap();
    await_no_pending(&audit).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let length: usize = conn.xlen(AUDIT_EVENTS).await.unwrap();
    assert_eq!(length, 600, "nothing trimmed while a group has not read");
    // The observer reads everything but acknowledges nothing: still held by its pending list.
    let _read: redis::streams::StreamReadReply = conn
        .xread_options(
            &[AUDIT_EVENTS],
            &[">"],
            &redis::streams::StreamReadOptions::default()
                .group("observer", "o-1")
                .count(1000),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let length: usize = conn.xlen(AUDIT_EVENTS).await.unwrap();
    assert_eq!(length, 600, "pending entries are never trimmed");
    let _destroyed: i64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(AUDIT_EVENTS)
        .arg("observer")
        .query_async(&mut conn)
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    loop {
        let length: usize = conn.xlen(AUDIT_EVENTS).await.unwrap();
        if length < 600 {
            break;
        }
        assert!(started.elapsed() < WITHIN, "never trimmed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The trim is counted once XTRIM has answered.
    loop {
        let metrics = tests_harness::http::get(audit.addr, "/metrics")
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&metrics.body).into_owned();
        let trims: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("caracal_audit_stream_trims_total "))
            .and_then(|v| v.parse().ok())
            .unwrap();
        if trims >= 1 {
            break;
        }
        assert!(started.elapsed() < WITHIN, "trim not counted: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    audit.stop().await;
}

#[tokio::test]
async fn a_database_outage_delays_ingest_and_loses_nothing() {
    let db = TestDb::migrated().await.unwrap();
    let target: std::net::SocketAddr = {
        let o = db.options();
        format!(
            "{}:{}",
            if o.get_host() == "localhost" {
                "127.0.0.1"
            } else {
                o.get_host()
            },
            o.get_port()
        )
        .parse()
        .unwrap()
    };
    let proxy = tests_harness::proxy::TcpProxy::start(target).await.unwrap();
    let url = format!("postgres://postgres@{}/{}", proxy.addr, db.name());
    let audit = AuditFixture::start_with(&db, &[("DATABASE_URL", url.as_str())])
        .await
        .unwrap();
    let key = producer_key().unwrap();
    let first: Vec<(String, String)> = ids("before", 20)
        .into_iter()
        .map(|id| (id.clone(), event_data("zone-a", &id, json!({}))))
        .collect();
    emit_raw(&audit.redis, &first, Some(&key)).await.unwrap();
    await_rows(&db, 20, WITHIN).await.unwrap();
    proxy.set_up(false);
    let during: Vec<(String, String)> = ids("during", 50)
        .into_iter()
        .map(|id| (id.clone(), event_data("zone-a", &id, json!({}))))
        .collect();
    emit_raw(&audit.redis, &during, Some(&key)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        pending(&audit).await > 0,
        "read but not acknowledged while the database is away"
    );
    let ready = tests_harness::http::get(audit.addr, "/ready")
        .await
        .unwrap();
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json().unwrap()["reason"], "postgres_unreachable");
    proxy.set_up(true);
    await_rows(&db, 70, Duration::from_secs(30)).await.unwrap();
    await_no_pending(&audit).await;
    let rows = rows(&db).await;
    assert_eq!(rows.len(), 70);
    assert_eq!(
        rows.iter().map(|r| r.2).collect::<Vec<_>>(),
        (1..=70).collect::<Vec<_>>()
    );
    assert!(dead_letters(&audit).await.is_empty());
    audit.stop().await;
}
