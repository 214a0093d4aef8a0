//! The audit ledger's leader jobs against real Postgres (storage §5.2, §5.3, §8.7): partition
//! upkeep and the retention drop with its anchors (never before export when export is on),
//! and the hourly export to a directory and to a real S3-compatible server, whose objects
//! verify offline and are never overwritten.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use chrono::{DurationRound, Utc};
use control_audit::{
    config::{LeaderSettings, LedgerKeys},
    export,
    leaders::{LeaderContext, retention_once},
    metrics::Metrics,
    objects::{Body, ExportTarget, ObjectStore, Put, S3Settings},
    sweep::{SweepScope, run_once},
    verify::{
        AuditRow, OfflineArgs,
        export::{manifest_name, object_name},
        object, offline_with_env,
    },
};
use control_store::ServiceRole;
use serde_json::json;
use tests_harness::{
    TestDb,
    audit::{AuditFixture, PRODUCER_KEY_HEX, await_rows, emit_raw, event_data, producer_key},
    s3::S3Server,
};

const WITHIN: Duration = Duration::from_secs(20);

fn keys() -> LedgerKeys {
    let key = producer_key().unwrap();
    LedgerKeys {
        producer: Some(key.clone()),
        producer_previous: None,
        chain: Some(key.clone()),
        retired: Vec::new(),
    }
}

fn settings(export_dir: Option<&std::path::Path>) -> LeaderSettings {
    LeaderSettings {
        retention: Duration::from_secs(365 * 86_400),
        partition_interval: Duration::from_secs(6 * 3600),
        tamper_rolling: Duration::from_secs(4 * 3600),
        tamper_rolling_interval: Duration::from_secs(3600),
        tamper_full_interval: Duration::from_secs(86_400),
        tamper_rows_per_sec: 1_000_000,
        export: export_dir.map(|dir| ExportTarget::Dir(dir.to_path_buf())),
        export_spool: None,
        export_grace: Duration::ZERO,
        tick: Duration::from_secs(1),
    }
}

async fn partitions(db: &TestDb) -> Vec<String> {
    let mut conn = db.admin().await.unwrap();
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'caracal.audit_events'::regclass ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

/// `caracal audit verify --export <export>` with the ledger key and `env`.
async fn verify_export(export: PathBuf, env: &HashMap<String, String>) -> (i32, String) {
    let mut out = Vec::new();
    let env = |name: &str| {
        if name == "AUDIT_HMAC_KEY" {
            Some(PRODUCER_KEY_HEX.to_owned())
        } else {
            env.get(name).cloned()
        }
    };
    let code = offline_with_env(
        OfflineArgs {
            export: Some(export),
            ..OfflineArgs::default()
        },
        &mut out,
        &env,
    )
    .await;
    (code, String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn retention_drops_old_partitions_with_anchors_but_never_unexported_evidence() {
    let db = TestDb::migrated().await.unwrap();
    let old = Utc::now() - chrono::Duration::days(400);
    let mut owner = db.admin().await.unwrap();
    let _created: i32 = sqlx::query_scalar("SELECT caracal.caracal_audit_ensure_partitions($1, 0)")
        .bind(old)
        .fetch_one(&mut owner)
        .await
        .unwrap();
    let old_partition = format!("audit_events_y{}", old.format("%Ym%m"));
    assert!(partitions(&db).await.contains(&old_partition));
    // Three events dated 400 days ago, then two now, in one zone's chain.
    let audit = AuditFixture::start_with(&db, &[("AUDIT_RETENTION_DAYS", "1000")])
        .await
        .unwrap();
    let key = producer_key().unwrap();
    let mut entries = Vec::new();
    for n in 0..5 {
        let id = format!("ev-{n}");
        let at = if n < 3 { old } else { Utc::now() };
        entries.push((
            id.clone(),
            event_data("zone-a", &id, json!({"occurred_at": at.to_rfc3339()})),
        ));
    }
    for entry in entries {
        // One at a time, so the chain order is the emission order.
        emit_raw(&audit.redis, &[entry], Some(&key)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    await_rows(&db, 5, WITHIN).await.unwrap();
    audit.stop().await;
    let (third_hash,): (Vec<u8>,) =
        sqlx::query_as("SELECT content_sha256 FROM caracal.audit_events WHERE zone_id = 'zone-a' AND chain_seq = 3")
            .fetch_one(&mut owner)
            .await
            .unwrap();
    let pool = db.service_pool(ServiceRole::Audit).await.unwrap();
    let scratch = tempfile::tempdir().unwrap();
    // Export on and nothing exported yet: the old partition stays.
    let exporting = LeaderContext {
        pool: pool.clone(),
        keys: keys(),
        settings: settings(Some(scratch.path())),
        metrics: Arc::new(Metrics::default()),
    };
    retention_once(&exporting, Utc::now()).await.unwrap();
    assert!(
        partitions(&db).await.contains(&old_partition),
        "unexported evidence is never dropped"
    );
    // Export off: dropped, with the anchor that bridges the chain.
    let context = LeaderContext {
        settings: settings(None),
        ..exporting
    };
    retention_once(&context, Utc::now()).await.unwrap();
    let after = partitions(&db).await;
    assert!(!after.contains(&old_partition), "{after:?}");
    assert!(
        after.contains(&"audit_events_default".to_owned()),
        "the default partition is never dropped"
    );
    let this_month = format!("audit_events_y{}", Utc::now().format("%Ym%m"));
    assert!(after.contains(&this_month));
    assert_eq!(
        after
            .iter()
            .filter(|p| p.starts_with("audit_events_y"))
            .count(),
        4,
        "{after:?}"
    );
    let anchors: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT zone_id, chain_seq, content_sha256 FROM caracal.audit_chain_anchors",
    )
    .fetch_all(&mut owner)
    .await
    .unwrap();
    assert_eq!(anchors, vec![("zone-a".to_owned(), 3, third_hash)]);
    assert_eq!(
        context
            .metrics
            .partitions_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The remaining rows still verify: the anchor bridges the gap.
    let report = run_once(
        &pool,
        &keys(),
        &context.metrics,
        SweepScope::Full,
        1_000_000,
    )
    .await
    .unwrap();
    assert_eq!(report.findings, 0, "{report:?}");
}

/// The export of one closed hour into `store`, verified from `export` (the verifier's
/// `--export`, with `env`): 30 events written once as a Parquet object with its manifest;
/// the watermark moved, so nothing is exported again; with the watermark lost and one more
/// row in the hour, an overlapping export leaves the object as it is (If-None-Match); an
/// object added without a manifest and with a changed row is named by the verifier.
async fn exports_each_closed_hour_once(
    store: ObjectStore,
    export: PathBuf,
    env: HashMap<String, String>,
) {
    let db = TestDb::migrated().await.unwrap();
    let audit = AuditFixture::start(&db).await.unwrap();
    let key = producer_key().unwrap();
    let emit = |range: std::ops::Range<usize>| {
        range
            .map(|n| {
                let id = format!("ex-{n:03}");
                (
                    id.clone(),
                    event_data(if n % 2 == 0 { "zone-a" } else { "zone-b" }, &id, json!({})),
                )
            })
            .collect::<Vec<(String, String)>>()
    };
    emit_raw(&audit.redis, &emit(0..30), Some(&key))
        .await
        .unwrap();
    await_rows(&db, 30, WITHIN).await.unwrap();
    let pool = db.service_pool(ServiceRole::Audit).await.unwrap();
    let metrics = Metrics::default();
    // Start two hours back, so the rows' hour is exported whatever the minute is now.
    let hour = Utc::now()
        .duration_trunc(chrono::Duration::hours(1))
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    control_store::audit::partitions::advance_watermark(
        &mut conn,
        export::WATERMARK,
        hour - chrono::Duration::hours(2),
    )
    .await
    .unwrap();
    // Not yet closed: nothing is written and the watermark stays.
    let none = export::run_due(&pool, &store, None, Duration::ZERO, &metrics, Utc::now())
        .await
        .unwrap();
    assert!(none <= 1, "only the previous, empty hour may be closed");
    let later = Utc::now() + chrono::Duration::hours(1);
    export::run_due(&pool, &store, None, Duration::ZERO, &metrics, later)
        .await
        .unwrap();
    let rows_exported = || {
        metrics
            .rows_exported
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(rows_exported(), 30);
    let object_rows = || async {
        let bytes = store
            .get(&object_name(hour))
            .await
            .unwrap()
            .expect("the object");
        let mut rows = Vec::new();
        let problems = object::decode(bytes, |row| rows.push(row)).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        rows
    };
    let written: Vec<AuditRow> = object_rows().await;
    assert_eq!(written.len(), 30);
    assert!(
        store
            .get(&manifest_name(&object_name(hour)))
            .await
            .unwrap()
            .is_some()
    );
    let (code, report) = verify_export(export.clone(), &env).await;
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("rows checked: 30"), "{report}");
    // The watermark moved: nothing is exported again.
    let again = export::run_due(&pool, &store, None, Duration::ZERO, &metrics, later)
        .await
        .unwrap();
    assert_eq!(again, 0);

    // One more row, then an overlapping leader (the watermark lost) exports the hour again:
    // the objects are already there and stay as they were.
    emit_raw(&audit.redis, &emit(30..31), Some(&key))
        .await
        .unwrap();
    await_rows(&db, 31, WITHIN).await.unwrap();
    audit.stop().await;
    let mut owner = db.admin().await.unwrap();
    sqlx::query("DELETE FROM caracal.audit_export_watermark")
        .execute(&mut owner)
        .await
        .unwrap();
    control_store::audit::partitions::advance_watermark(
        &mut conn,
        export::WATERMARK,
        hour - chrono::Duration::hours(2),
    )
    .await
    .unwrap();
    export::run_due(&pool, &store, None, Duration::ZERO, &metrics, later)
        .await
        .unwrap();
    assert_eq!(
        rows_exported(),
        30,
        "no row is counted for an object left as it was"
    );
    assert_eq!(object_rows().await, written);
    let (code, report) = verify_export(export.clone(), &env).await;
    assert_eq!(code, 0, "{report}");

    // A stray object (no manifest, a changed copy of a row) is named.
    let mut forged = written[0].clone();
    forged.decision = Some("deny".into());
    let stray = object_name(hour + chrono::Duration::hours(3));
    let put = store
        .put_once(
            &stray,
            Body::Bytes(object::encode(&[forged]).unwrap().into()),
        )
        .await
        .unwrap();
    assert_eq!(put, Put::Created);
    let (code, report) = verify_export(export, &env).await;
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains(&format!("{stray}: no manifest")),
        "{report}"
    );
    assert!(report.contains("content_mismatch"), "{report}");
}

#[tokio::test]
async fn closed_hours_are_exported_once_to_a_directory_and_verify_offline() {
    let dir = tempfile::tempdir().unwrap();
    exports_each_closed_hour_once(
        ObjectStore::Dir(dir.path().to_path_buf()),
        dir.path().to_path_buf(),
        HashMap::new(),
    )
    .await;
}

#[tokio::test]
async fn closed_hours_are_exported_once_to_an_s3_bucket_and_verify_offline() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("caracal-audit").await.unwrap();
    let env: HashMap<String, String> = [
        ("AUDIT_EXPORT_S3_ENDPOINT", server.endpoint()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing-secret".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let lookup = |name: &str| env.get(name).cloned();
    let settings = S3Settings::from_env(&lookup, "caracal-audit", "prod/ledger").unwrap();
    let store = ObjectStore::open(&ExportTarget::S3(Box::new(settings))).unwrap();
    exports_each_closed_hour_once(
        store,
        PathBuf::from("s3://caracal-audit/prod/ledger"),
        env.clone(),
    )
    .await;
    // The objects are under the prefix.
    let listing = tests_harness::http::get(
        server.addr,
        "/caracal-audit?list-type=2&prefix=prod/ledger/audit/",
    )
    .await
    .unwrap();
    assert_eq!(listing.status, 200);
    assert!(
        String::from_utf8_lossy(&listing.body).contains(".parquet.manifest.json"),
        "{listing:?}"
    );
    // Unreachable or refusing buckets are errors naming the operation, never a signed URL.
    let wrong = S3Settings::from_env(&lookup, "no-such-bucket", "").unwrap();
    let error = ObjectStore::open(&ExportTarget::S3(Box::new(wrong)))
        .unwrap()
        .put_once("audit/x", Body::Bytes("x".into()))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("S3 PUT audit/x: 404"), "{error}");
    assert!(
        !error.contains("X-Amz-Signature") && !error.contains("testing"),
        "{error}"
    );
    server.stop().await;
}
