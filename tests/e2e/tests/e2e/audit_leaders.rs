//! The audit ledger's leader jobs against real Postgres (storage §5.2, §5.3, §8.7): partition
//! upkeep and the retention drop with its anchors (never before export when export is on),
//! and the hourly export, whose objects verify offline and are never overwritten.

use std::{path::Path, sync::Arc, time::Duration};

use chrono::{DurationRound, Utc};
use control_audit::{
    config::{LeaderSettings, LedgerKeys},
    export,
    leaders::{LeaderContext, retention_once},
    metrics::Metrics,
    sweep::{SweepScope, run_once},
    verify::{OfflineArgs, offline_with_env},
};
use control_store::ServiceRole;
use serde_json::json;
use tests_harness::{
    TestDb,
    audit::{AuditFixture, PRODUCER_KEY_HEX, await_rows, emit_raw, event_data, producer_key},
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

fn settings(export_dir: Option<&Path>) -> LeaderSettings {
    LeaderSettings {
        retention: Duration::from_secs(365 * 86_400),
        partition_interval: Duration::from_secs(6 * 3600),
        tamper_rolling: Duration::from_secs(4 * 3600),
        tamper_rolling_interval: Duration::from_secs(3600),
        tamper_full_interval: Duration::from_secs(86_400),
        tamper_rows_per_sec: 1_000_000,
        export_dir: export_dir.map(Path::to_path_buf),
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

async fn verify_export(dir: &Path) -> (i32, String) {
    let mut out = Vec::new();
    let env = |name: &str| (name == "AUDIT_HMAC_KEY").then(|| PRODUCER_KEY_HEX.to_owned());
    let code = offline_with_env(
        OfflineArgs {
            export: Some(dir.to_path_buf()),
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

#[tokio::test]
async fn closed_hours_are_exported_once_and_verify_offline() {
    let db = TestDb::migrated().await.unwrap();
    let audit = AuditFixture::start(&db).await.unwrap();
    let key = producer_key().unwrap();
    let entries: Vec<(String, String)> = (0..30)
        .map(|n| {
            let id = format!("ex-{n:03}");
            (
                id.clone(),
                event_data(if n % 2 == 0 { "zone-a" } else { "zone-b" }, &id, json!({})),
            )
        })
        .collect();
    emit_raw(&audit.redis, &entries, Some(&key)).await.unwrap();
    await_rows(&db, 30, WITHIN).await.unwrap();
    audit.stop().await;
    let pool = db.service_pool(ServiceRole::Audit).await.unwrap();
    let metrics = Metrics::default();
    let dir = tempfile::tempdir().unwrap();
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
    let none = export::run_due(&pool, dir.path(), Duration::ZERO, &metrics, Utc::now())
        .await
        .unwrap();
    assert!(none <= 1, "only the previous, empty hour may be closed");
    let later = Utc::now() + chrono::Duration::hours(1);
    export::run_due(&pool, dir.path(), Duration::ZERO, &metrics, later)
        .await
        .unwrap();
    assert_eq!(
        metrics
            .rows_exported
            .load(std::sync::atomic::Ordering::Relaxed),
        30
    );
    let object = dir
        .path()
        .join(control_audit::verify::export::object_name(hour));
    let manifest = dir
        .path()
        .join(control_audit::verify::export::manifest_name(
            &control_audit::verify::export::object_name(hour),
        ));
    assert!(object.exists() && manifest.exists(), "{object:?}");
    let lines = std::fs::read_to_string(&object).unwrap();
    assert_eq!(lines.lines().count(), 30);
    let (code, report) = verify_export(dir.path()).await;
    assert_eq!(code, 0, "{report}");
    // The watermark moved: nothing is exported again.
    let again = export::run_due(&pool, dir.path(), Duration::ZERO, &metrics, later)
        .await
        .unwrap();
    assert_eq!(again, 0);
    // An overlapping leader (the watermark lost) never overwrites an object: a changed
    // object stays changed, and the verifier names it.
    let changed = lines.replacen("\"allow\"", "\"deny\"", 1);
    std::fs::write(&object, &changed).unwrap();
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
    export::run_due(&pool, dir.path(), Duration::ZERO, &metrics, later)
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&object).unwrap(), changed);
    let (code, report) = verify_export(dir.path()).await;
    assert_eq!(code, 1, "{report}");
}
