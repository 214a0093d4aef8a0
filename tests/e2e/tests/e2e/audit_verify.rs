//! Tamper detection over real Postgres (storage §8.6, §8.8, §8.9): chained rows are written
//! as the ledger writes them, then changed as a deliberate owner would (append-only
//! triggers disabled), and the tamper sweep and `caracal audit verify` (database, dump and
//! export sources) must name every change: each column alone, a deleted row, swapped rows, a
//! row moved to another zone, a wrong key, a repeated id. A clean chain has no finding, a
//! retention gap is bridged by its anchor, and the published vectors go through the real
//! ledger and verify from the rows and from an export.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::Duration,
};

use chrono::{DateTime, Utc};
use control_audit::{
    canonical::{LedgerEvent, format_time, truncate_to_micros},
    config::{IngestSettings, LedgerKeys},
    entry::Entry,
    ingest::Ledger,
    metrics::Metrics,
    sweep::{SweepReport, SweepScope, run_once},
    verify::{
        AdminRow, AuditRow, OfflineArgs,
        export::{self, ManifestBuilder},
        object, offline_with_env,
    },
};
use control_crypto::{HmacKey, chain_hmac, ingest_signature};
use control_model::ZoneId;
use control_store::{
    ServiceRole,
    admin::admin_audit::{self, AdminAuditRow},
    audit::{
        ledger::{self, NewRow},
        rows::{self, RowFilter},
    },
    zone::{cross_zone_read, global_tx, zone_tx},
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tests_harness::{TestDb, api::ApiFixture};

const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const OTHER_KEY_HEX: &str = "abababababababababababababababababababababababababababababababab";

fn key(hex: &str) -> HmacKey {
    HmacKey::from_hex(hex).unwrap()
}

fn ledger_keys(hex: &str) -> LedgerKeys {
    let key = key(hex);
    LedgerKeys {
        producer: Some(key.clone()),
        producer_previous: None,
        chain: Some(key.clone()),
        retired: Vec::new(),
    }
}

/// A zone's chain of `n` events as the ledger stores them; `ingested[i]` for row `i` (the
/// last value repeats).
fn chain(zone: &str, n: usize, key: Option<&HmacKey>, ingested: &[DateTime<Utc>]) -> Vec<AuditRow> {
    let mut rows: Vec<AuditRow> = Vec::new();
    for i in 0..n {
        let data = json!({
            "id": format!("{zone}-e{}", i + 1),
            "zone_id": zone,
            "event_type": "token_exchange",
            "request_id": format!("req-{i}"),
            "decision": "allow",
            "policy_set_id": "ps-1",
            "policy_set_version_id": "psv-1",
            "manifest_sha": "sha256:abc",
            "evaluation_status": "complete",
            "determining_policies_json": [{"policy": "caracal-app-mint"}],
            "diagnostics_json": {"notes": ["ok"]},
            "metadata_json": {"latency_ms": 3.5, "n": i, "resource": "resource://api"},
            "occurred_at": format_time(Utc::now() - chrono::Duration::minutes(30)),
        });
        let event = LedgerEvent::parse(data.to_string().as_bytes()).unwrap();
        let content = event.content_sha256().unwrap().to_vec();
        let prev = rows.last().map(|r| r.content_sha256.clone());
        let seq = i64::try_from(i).unwrap() + 1;
        let ingested_at = truncate_to_micros(*ingested.get(i).or(ingested.last()).unwrap());
        rows.push(AuditRow {
            id: event.id.clone(),
            zone_id: event.zone_id.clone(),
            event_type: event.event_type.clone(),
            request_id: event.request_id.clone(),
            decision: event.decision.clone(),
            policy_set_id: event.policy_set_id.clone(),
            policy_set_version_id: event.policy_set_version_id.clone(),
            manifest_sha: event.manifest_sha.clone(),
            evaluation_status: event.evaluation_status.clone(),
            determining_policies_json: event.determining_policies_json.clone(),
            diagnostics_json: event.diagnostics_json.clone(),
            metadata_json: event.metadata_json.clone(),
            occurred_at: event.occurred_at,
            ingested_at,
            hash_version: 1,
            chain_hmac: key.map(|k| chain_hmac(k, zone, seq, prev.as_deref(), &content).to_vec()),
            chain_key_id: key.map(|k| k.chain_key_id().to_owned()),
            ingest_signature: key
                .map(|k| ingest_signature(k, &content, &format_time(ingested_at)).to_vec()),
            content_sha256: content,
            prev_content_sha256: prev,
            chain_seq: seq,
        });
    }
    rows
}

fn new_row(row: &AuditRow) -> NewRow {
    NewRow {
        id: row.id.clone(),
        zone_id: row.zone_id.clone(),
        event_type: row.event_type.clone(),
        request_id: row.request_id.clone(),
        decision: row.decision.clone(),
        policy_set_id: row.policy_set_id.clone(),
        policy_set_version_id: row.policy_set_version_id.clone(),
        manifest_sha: row.manifest_sha.clone(),
        evaluation_status: row.evaluation_status.clone(),
        determining_policies_json: row.determining_policies_json.as_ref().map(Value::to_string),
        diagnostics_json: row.diagnostics_json.as_ref().map(Value::to_string),
        metadata_json: row.metadata_json.as_ref().map(Value::to_string),
        occurred_at: row.occurred_at,
        ingested_at: row.ingested_at,
        content_sha256: row.content_sha256.clone(),
        prev_content_sha256: row.prev_content_sha256.clone(),
        chain_seq: row.chain_seq,
        chain_hmac: row.chain_hmac.clone(),
        chain_key_id: row.chain_key_id.clone(),
        ingest_signature: row.ingest_signature.clone(),
    }
}

/// Inserts `rows` as the audit role does: one zone transaction per zone.
async fn insert(pool: &PgPool, rows: &[AuditRow]) {
    let mut by_zone: BTreeMap<&str, Vec<NewRow>> = BTreeMap::new();
    for row in rows {
        by_zone.entry(&row.zone_id).or_default().push(new_row(row));
    }
    for (zone, rows) in by_zone {
        let mut tx = zone_tx(pool, &ZoneId::parse(zone).unwrap()).await.unwrap();
        ledger::insert(&mut tx, rows).await.unwrap();
        tx.commit().await.unwrap();
    }
}

/// Runs `statements` as the database owner with the user triggers of `table` (and its
/// partitions) disabled, as a deliberate owner can.
async fn as_owner(db: &TestDb, table: &str, statements: &[String]) {
    let mut admin = db.admin().await.unwrap();
    let mut tables: Vec<String> = sqlx::query_scalar(
        "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = $1::regclass",
    )
    .bind(format!("caracal.{table}"))
    .fetch_all(&mut admin)
    .await
    .unwrap();
    tables.push(format!("caracal.{table}"));
    for t in &tables {
        sqlx::raw_sql(&format!("ALTER TABLE {t} DISABLE TRIGGER USER"))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    for statement in statements {
        sqlx::raw_sql(statement).execute(&mut admin).await.unwrap();
    }
    for t in &tables {
        sqlx::raw_sql(&format!("ALTER TABLE {t} ENABLE TRIGGER USER"))
            .execute(&mut admin)
            .await
            .unwrap();
    }
}

async fn sweep(
    pool: &PgPool,
    keys: &LedgerKeys,
    metrics: &Metrics,
    scope: SweepScope,
) -> SweepReport {
    run_once(pool, keys, metrics, scope, 1_000_000)
        .await
        .unwrap()
}

type Spot = (String, i64, String);

fn spots(list: &[(&str, i64, &str)]) -> BTreeSet<Spot> {
    list.iter()
        .map(|(zone, seq, kind)| ((*zone).to_owned(), *seq, (*kind).to_owned()))
        .collect()
}

async fn alerts(db: &TestDb) -> BTreeSet<Spot> {
    let mut admin = db.admin().await.unwrap();
    let rows: Vec<(String, Option<i64>, String)> =
        sqlx::query_as("SELECT zone_id, chain_seq, kind FROM caracal.audit_ingest_alerts")
            .fetch_all(&mut admin)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(zone, seq, kind)| (zone, seq.unwrap_or_default(), kind))
        .collect()
}

/// `caracal audit verify` with `AUDIT_HMAC_KEY` = `key_hex`: (exit code, output).
async fn verify(args: OfflineArgs, key_hex: Option<&str>) -> (i32, String) {
    let key_hex = key_hex.map(str::to_owned);
    let env = move |name: &str| {
        (name == "AUDIT_HMAC_KEY")
            .then(|| key_hex.clone())
            .flatten()
    };
    let mut out = Vec::new();
    let code = offline_with_env(args, &mut out, &env).await;
    (code, String::from_utf8(out).unwrap())
}

/// The findings of a `--json` report.
fn reported(text: &str) -> BTreeSet<Spot> {
    let report: Value = serde_json::from_str(text).unwrap();
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["zone_id"].as_str().unwrap().to_owned(),
                f["chain_seq"].as_i64().unwrap(),
                f["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn database(db: &TestDb, role: &str) -> OfflineArgs {
    OfflineArgs {
        database_url: Some(db.url_as(role)),
        ..OfflineArgs::default()
    }
}

/// Every stored row, read as the audit role.
async fn stored_rows(pool: &PgPool) -> Vec<AuditRow> {
    let mut read = cross_zone_read(pool).await.unwrap();
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = rows::page(&mut read, &RowFilter::default(), cursor.as_ref(), 7)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        cursor = Some((last.zone_id.clone(), last.chain_seq));
        out.extend(page.into_iter().map(AuditRow::from));
    }
    read.finish().await.unwrap();
    out
}

struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("caracal-audit-verify-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _removed = std::fs::remove_dir_all(&self.0);
    }
}

fn write_ndjson(path: &Path, rows: &[AuditRow]) {
    let bytes: Vec<u8> = rows
        .iter()
        .flat_map(|r| export::to_line(r).unwrap())
        .collect();
    std::fs::write(path, bytes).unwrap();
}

/// Writes `rows` as an export: one Parquet object per ingest hour, each with its manifest.
fn write_export(root: &Path, rows: &[AuditRow]) {
    let mut hours: BTreeMap<String, Vec<AuditRow>> = BTreeMap::new();
    for row in rows {
        hours
            .entry(export::object_name(row.ingested_at))
            .or_default()
            .push(row.clone());
    }
    for (name, rows) in hours {
        let path = root.join(&name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let bytes = object::encode(&rows).unwrap();
        let mut builder = ManifestBuilder::new();
        for row in &rows {
            builder.add(row);
        }
        let manifest = builder.finish(Sha256::digest(&bytes).into());
        std::fs::write(&path, bytes).unwrap();
        std::fs::write(
            root.join(export::manifest_name(&name)),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
    }
}

#[tokio::test]
async fn a_clean_chain_has_no_finding_and_a_rolling_sweep_links_to_rows_before_its_window() {
    let db = TestDb::migrated().await.unwrap();
    let pool = db.service_pool(ServiceRole::Audit).await.unwrap();
    let k = key(KEY_HEX);
    let now = Utc::now();
    let old = now - chrono::Duration::hours(10);
    let mut all = chain("zone-a", 5, Some(&k), &[now]);
    all.extend(chain("zone-b", 3, Some(&k), &[now]));
    all.extend(chain("zone-r", 5, Some(&k), &[old, old, old, now]));
    insert(&pool, &all).await;

    let keys = ledger_keys(KEY_HEX);
    let metrics = Metrics::default();
    let full = sweep(&pool, &keys, &metrics, SweepScope::Full).await;
    assert_eq!(full.findings, 0, "{full:?}");
    assert_eq!(full.rows_checked, 13);
    assert_eq!(full.hmac_verified, 13);
    assert_eq!(metrics.tamper_checked.load(Ordering::Relaxed), 13);

    let rolling = sweep(
        &pool,
        &keys,
        &metrics,
        SweepScope::Rolling(Duration::from_secs(4 * 3600)),
    )
    .await;
    assert_eq!(rolling.findings, 0, "{rolling:?}");
    assert_eq!(
        rolling.rows_checked, 10,
        "zone-r's first three rows are outside the window"
    );
    assert!(alerts(&db).await.is_empty());

    // An old row changed outside the window: only the full sweep sees it.
    as_owner(
        &db,
        "audit_events",
        &["UPDATE caracal.audit_events SET decision = 'deny' WHERE zone_id = 'zone-r' AND chain_seq = 2".to_owned()],
    )
    .await;
    let rolling = sweep(
        &pool,
        &keys,
        &metrics,
        SweepScope::Rolling(Duration::from_secs(4 * 3600)),
    )
    .await;
    assert_eq!(rolling.findings, 0, "{rolling:?}");
    let full = sweep(&pool, &keys, &metrics, SweepScope::Full).await;
    assert_eq!(full.findings, 1, "{full:?}");
    assert_eq!(
        alerts(&db).await,
        spots(&[("zone-r", 2, "content_mismatch")])
    );
    assert_eq!(metrics.tamper_mismatch.load(Ordering::Relaxed), 1);

    // The offline verifier, as the audit role and as maintenance.
    for role in ["caracal_audit", "caracal_maintenance"] {
        let (code, text) = verify(database(&db, role), Some(KEY_HEX)).await;
        assert_eq!(code, 1, "{role}: {text}");
        assert!(
            text.contains("FIRST BAD ROW: zone zone-r chain_seq 2 id zone-r-e2: content_mismatch"),
            "{text}"
        );
        assert!(
            text.contains("chain HMAC: 13 verified, 0 skipped"),
            "{text}"
        );
    }
    // A window of one zone starting after the changed row is clean.
    let (code, text) = verify(
        OfflineArgs {
            zone: Some("zone-r".into()),
            from_seq: Some(3),
            ..database(&db, "caracal_audit")
        },
        Some(KEY_HEX),
    )
    .await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("rows checked: 3"), "{text}");
    // Without a key nothing is claimed about the HMACs.
    let (code, text) = verify(
        OfflineArgs {
            zone: Some("zone-a".into()),
            ..database(&db, "caracal_audit")
        },
        None,
    )
    .await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("chain HMAC: 0 verified, 5 skipped"), "{text}");
    assert!(text.contains("NOT verified"), "{text}");
    // A role without a cross-zone read sees nothing and finds nothing to verify.
    let (code, text) = verify(database(&db, "caracal_api"), Some(KEY_HEX)).await;
    assert_eq!(code, 2, "{text}");
}

#[tokio::test]
async fn every_change_an_owner_can_make_is_named_by_the_sweep_and_the_verifier() {
    let db = TestDb::migrated().await.unwrap();
    let pool = db.service_pool(ServiceRole::Audit).await.unwrap();
    let k = key(KEY_HEX);
    let now = Utc::now();

    // One zone per change, three rows each; the middle row is changed.
    let changes: Vec<(&str, &str)> = vec![
        ("id", "id = id || '-x'"),
        ("zone_id", "zone_id = 'col-zone_id-moved'"),
        ("event_type", "event_type = 'replay_detected'"),
        ("request_id", "request_id = 'req-x'"),
        ("decision", "decision = 'deny'"),
        ("policy_set_id", "policy_set_id = 'ps-x'"),
        ("policy_set_version_id", "policy_set_version_id = 'psv-x'"),
        ("manifest_sha", "manifest_sha = NULL"),
        ("evaluation_status", "evaluation_status = 'partial'"),
        (
            "determining_policies_json",
            "determining_policies_json = '[]'",
        ),
        ("diagnostics_json", "diagnostics_json = NULL"),
        (
            "metadata_json",
            "metadata_json = jsonb_set(metadata_json, '{latency_ms}', '3.6')",
        ),
        (
            "occurred_at",
            "occurred_at = occurred_at + interval '1 microsecond'",
        ),
        (
            "ingested_at",
            "ingested_at = ingested_at + interval '1 second'",
        ),
        (
            "content_sha256",
            "content_sha256 = decode(repeat('ab', 32), 'hex')",
        ),
        (
            "prev_content_sha256",
            "prev_content_sha256 = decode(repeat('ab', 32), 'hex')",
        ),
        ("chain_seq", "chain_seq = 12"),
        ("chain_hmac", "chain_hmac = decode(repeat('00', 32), 'hex')"),
        ("chain_key_id", "chain_key_id = '0123456789abcdef'"),
        (
            "ingest_signature",
            "ingest_signature = decode(repeat('00', 32), 'hex')",
        ),
    ];
    let mut all = Vec::new();
    for (column, _) in &changes {
        all.extend(chain(&format!("col-{column}"), 3, Some(&k), &[now]));
    }
    all.extend(chain("clean", 3, Some(&k), &[now]));
    all.extend(chain("gap", 4, Some(&k), &[now]));
    all.extend(chain("swap", 4, Some(&k), &[now]));
    all.extend(chain("dup-a", 1, Some(&k), &[now]));
    let mut twin = chain("dup-b", 1, Some(&k), &[now]);
    // The same id with another occurred_at is a new row for the hot path (storage §8.5).
    twin[0].id = "dup-a-e1".to_owned();
    twin[0].occurred_at -= chrono::Duration::seconds(1);
    let twin = {
        let mut row = twin.remove(0);
        row.content_sha256 = row.event().content_sha256().unwrap().to_vec();
        row.chain_hmac = Some(chain_hmac(&k, "dup-b", 1, None, &row.content_sha256).to_vec());
        row.ingest_signature =
            Some(ingest_signature(&k, &row.content_sha256, &format_time(row.ingested_at)).to_vec());
        row
    };
    all.push(twin);
    insert(&pool, &all).await;

    let mut statements: Vec<String> = changes
        .iter()
        .map(|(column, set)| {
            format!("UPDATE caracal.audit_events SET {set} WHERE zone_id = 'col-{column}' AND chain_seq = 2")
        })
        .collect();
    statements.push(
        "DELETE FROM caracal.audit_events WHERE zone_id = 'gap' AND chain_seq = 3".to_owned(),
    );
    statements.push(
        "UPDATE caracal.audit_events SET chain_seq = CASE chain_seq WHEN 2 THEN 3 ELSE 2 END \
          WHERE zone_id = 'swap' AND chain_seq IN (2, 3)"
            .to_owned(),
    );
    as_owner(&db, "audit_events", &statements).await;

    let content = |column: &str| (format!("col-{column}"), 2, "content_mismatch".to_owned());
    let mut expected: BTreeSet<Spot> = [
        "id",
        "event_type",
        "request_id",
        "decision",
        "policy_set_id",
        "policy_set_version_id",
        "manifest_sha",
        "evaluation_status",
        "determining_policies_json",
        "diagnostics_json",
        "metadata_json",
        "occurred_at",
    ]
    .into_iter()
    .map(content)
    .collect();
    expected.extend(spots(&[
        // hash_version cannot be changed: its CHECK allows only 1 (unit tests cover it).
        ("col-zone_id", 3, "sequence_gap"),
        ("col-zone_id-moved", 2, "content_mismatch"),
        ("col-zone_id-moved", 2, "sequence_gap"),
        ("col-zone_id-moved", 2, "hmac_mismatch"),
        ("col-ingested_at", 2, "ingest_signature_mismatch"),
        ("col-content_sha256", 2, "content_mismatch"),
        ("col-content_sha256", 2, "hmac_mismatch"),
        ("col-content_sha256", 2, "ingest_signature_mismatch"),
        ("col-content_sha256", 3, "chain_break"),
        ("col-prev_content_sha256", 2, "chain_break"),
        ("col-prev_content_sha256", 2, "hmac_mismatch"),
        ("col-chain_seq", 3, "sequence_gap"),
        ("col-chain_seq", 12, "sequence_gap"),
        ("col-chain_seq", 12, "hmac_mismatch"),
        ("col-chain_hmac", 2, "hmac_mismatch"),
        ("col-chain_key_id", 2, "unknown_key_id"),
        ("col-ingest_signature", 2, "ingest_signature_mismatch"),
        ("gap", 4, "sequence_gap"),
        ("swap", 2, "chain_break"),
        ("swap", 2, "hmac_mismatch"),
        ("swap", 3, "chain_break"),
        ("swap", 3, "hmac_mismatch"),
        ("swap", 4, "chain_break"),
        ("dup-a", 1, "duplicate_event_id"),
        ("dup-b", 1, "duplicate_event_id"),
    ]));

    // The sweep writes one alert per finding and counts them.
    let keys = ledger_keys(KEY_HEX);
    let metrics = Metrics::default();
    let report = sweep(&pool, &keys, &metrics, SweepScope::Full).await;
    assert_eq!(alerts(&db).await, expected);
    assert_eq!(report.findings, u64::try_from(expected.len()).unwrap());
    assert_eq!(report.alerts_written, report.findings);
    assert!(metrics.tamper_gaps.load(Ordering::Relaxed) >= 5);
    assert!(metrics.tamper_chain_breaks.load(Ordering::Relaxed) >= 5);
    assert!(metrics.tamper_hmac_failures.load(Ordering::Relaxed) >= 8);
    assert_eq!(metrics.tamper_other.load(Ordering::Relaxed), 2);
    // A second sweep finds the same and records nothing new.
    let again = sweep(&pool, &keys, &metrics, SweepScope::Full).await;
    assert_eq!(again.findings, report.findings);
    assert_eq!(again.alerts_written, 0);

    // The offline verifier reads the database and names the same rows.
    let (code, text) = verify(
        OfflineArgs {
            json: true,
            ..database(&db, "caracal_audit")
        },
        Some(KEY_HEX),
    )
    .await;
    assert_eq!(code, 1, "{text}");
    assert_eq!(reported(&text), expected);
    let (code, text) = verify(database(&db, "caracal_audit"), Some(KEY_HEX)).await;
    assert_eq!(code, 1);
    assert!(text.contains("FIRST BAD ROW: zone "), "{text}");

    // And a dump of the same rows: the moved row is the first of its chain in the file, so
    // its gap cannot be seen there, and a repeated id is named at its second occurrence.
    let scratch = Scratch::new();
    let dump = scratch.0.join("dump.ndjson");
    write_ndjson(&dump, &stored_rows(&pool).await);
    let (code, text) = verify(
        OfflineArgs {
            ndjson: Some(dump),
            json: true,
            ..OfflineArgs::default()
        },
        Some(KEY_HEX),
    )
    .await;
    assert_eq!(code, 1, "{text}");
    let mut from_file = expected.clone();
    from_file.remove(&("col-zone_id-moved".to_owned(), 2, "sequence_gap".to_owned()));
    from_file.remove(&("dup-a".to_owned(), 1, "duplicate_event_id".to_owned()));
    assert_eq!(reported(&text), from_file);
}

#[tokio::test]
async fn a_wrong_key_is_reported_and_a_retired_key_verifies_from_the_keyring() {
    let db = TestDb::migrated().await.unwrap();
    let pool = db.service_pool(ServiceRole::Audit).await.unwrap();
    let k = key(KEY_HEX);
    let other = key(OTHER_KEY_HEX);
    let now = Utc::now();
    let mut all = chain("zone-k", 3, Some(&k), &[now]);
    // A row whose HMAC was made with another key but that names the chain key.
    let mut forged = chain("zone-f", 2, Some(&other), &[now]);
    for row in &mut forged {
        row.chain_key_id = Some(k.chain_key_id().to_owned());
    }
    all.extend(forged);
    insert(&pool, &all).await;

    let metrics = Metrics::default();
    let report = sweep(
        &pool,
        &ledger_keys(OTHER_KEY_HEX),
        &metrics,
        SweepScope::Full,
    )
    .await;
    assert_eq!(report.by_kind.get("unknown_key_id"), Some(&5), "{report:?}");
    let report = sweep(&pool, &ledger_keys(KEY_HEX), &metrics, SweepScope::Full).await;
    assert_eq!(report.by_kind.get("hmac_mismatch"), Some(&2), "{report:?}");
    assert_eq!(
        report.by_kind.get("ingest_signature_mismatch"),
        Some(&2),
        "{report:?}"
    );
    assert_eq!(report.findings, 4);

    let zone_k = OfflineArgs {
        zone: Some("zone-k".into()),
        ..database(&db, "caracal_audit")
    };
    let (code, text) = verify(zone_k.clone(), Some(OTHER_KEY_HEX)).await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("unknown_key_id"), "{text}");
    assert!(
        text.contains(&format!(
            "chain_key_id {} is not configured",
            k.chain_key_id()
        )),
        "{text}"
    );
    assert!(
        !text.contains(KEY_HEX) && !text.contains(OTHER_KEY_HEX),
        "{text}"
    );

    // The retired key in a keyring file verifies the old rows.
    let scratch = Scratch::new();
    let keyring = scratch.0.join("keyring");
    std::fs::write(&keyring, format!("# retired\n{KEY_HEX}\n")).unwrap();
    let (code, text) = verify(
        OfflineArgs {
            keyring: Some(keyring),
            ..zone_k
        },
        Some(OTHER_KEY_HEX),
    )
    .await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("chain HMAC: 3 verified"), "{text}");
}

#[tokio::test]
async fn an_anchor_bridges_a_dropped_partition_and_a_changed_anchor_is_a_gap() {
    let db = TestDb::migrated().await.unwrap();
    let pool = db.service_pool(ServiceRole::Audit).await.unwrap();
    let mut admin = db.admin().await.unwrap();
    sqlx::query("SELECT caracal.caracal_audit_ensure_partitions('2020-01-15T00:00:00Z', 0)")
        .execute(&mut admin)
        .await
        .unwrap();
    let k = key(KEY_HEX);
    let now = Utc::now();
    let mut rows = chain("zone-p", 5, Some(&k), &[now]);
    // The first three happened in January 2020; the chain goes on this month.
    for (i, row) in rows.iter_mut().take(3).enumerate() {
        row.occurred_at = DateTime::parse_from_rfc3339("2020-01-20T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + chrono::Duration::seconds(i64::try_from(i).unwrap());
    }
    // Recompute the chain over the changed times.
    let mut prev: Option<Vec<u8>> = None;
    for row in &mut rows {
        row.content_sha256 = row.event().content_sha256().unwrap().to_vec();
        row.prev_content_sha256 = prev.clone();
        row.chain_hmac = Some(
            chain_hmac(
                &k,
                "zone-p",
                row.chain_seq,
                prev.as_deref(),
                &row.content_sha256,
            )
            .to_vec(),
        );
        row.ingest_signature =
            Some(ingest_signature(&k, &row.content_sha256, &format_time(row.ingested_at)).to_vec());
        prev = Some(row.content_sha256.clone());
    }
    insert(&pool, &rows).await;
    let keys = ledger_keys(KEY_HEX);
    let metrics = Metrics::default();
    assert_eq!(
        sweep(&pool, &keys, &metrics, SweepScope::Full)
            .await
            .findings,
        0
    );

    let dropped: Vec<String> =
        sqlx::query_scalar("SELECT caracal_audit_drop_partitions('2020-03-01T00:00:00Z')")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(dropped, vec!["audit_events_y2020m01".to_owned()]);
    let report = sweep(&pool, &keys, &metrics, SweepScope::Full).await;
    assert_eq!(
        (report.findings, report.rows_checked, report.anchors_used),
        (0, 2, 1),
        "{report:?}"
    );
    let (code, text) = verify(database(&db, "caracal_audit"), Some(KEY_HEX)).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("bridged by anchors: 1"), "{text}");

    // The anchor is also what an export carries across the gap.
    let scratch = Scratch::new();
    write_export(&scratch.0, &stored_rows(&pool).await);
    let anchors = {
        let mut read = cross_zone_read(&pool).await.unwrap();
        let found = rows::anchors_recorded_between(
            &mut read,
            now - chrono::Duration::days(1),
            Utc::now() + chrono::Duration::days(1),
        )
        .await
        .unwrap();
        read.finish().await.unwrap();
        found
    };
    assert_eq!(anchors.len(), 1);
    let records: Vec<export::AnchorRecord> = anchors.into_iter().map(Into::into).collect();
    let anchor_file = scratch.0.join(export::anchors_name(now));
    std::fs::create_dir_all(anchor_file.parent().unwrap()).unwrap();
    std::fs::write(&anchor_file, serde_json::to_vec(&records).unwrap()).unwrap();
    let export_args = OfflineArgs {
        export: Some(scratch.0.clone()),
        ..OfflineArgs::default()
    };
    let (code, text) = verify(export_args.clone(), Some(KEY_HEX)).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("bridged by anchors: 1"), "{text}");

    // An anchor changed by the owner no longer bridges the gap.
    as_owner(
        &db,
        "audit_chain_anchors",
        &["UPDATE caracal.audit_chain_anchors SET content_sha256 = decode(repeat('cd', 32), 'hex')".to_owned()],
    )
    .await;
    sweep(&pool, &keys, &metrics, SweepScope::Full).await;
    assert_eq!(alerts(&db).await, spots(&[("zone-p", 4, "sequence_gap")]));
}

/// The vector file's events, signed by the producer, through `Ledger::process` into
/// Postgres: the stored rows reproduce the vectors, and verify from the database, a dump and
/// an export.
#[tokio::test]
async fn the_published_vectors_go_through_the_ledger_and_verify_from_rows_and_export() {
    let db = TestDb::migrated().await.unwrap();
    let pool = db.service_pool(ServiceRole::Audit).await.unwrap();
    let vectors: Value = serde_json::from_str(include_str!(
        "../../../../control/crypto/vectors/audit-chain-v1.json"
    ))
    .unwrap();
    assert_eq!(vectors["key_hex"], json!(KEY_HEX));
    let events = vectors["events"].as_array().unwrap();
    let mut entries: Vec<Entry> = events
        .iter()
        .enumerate()
        .map(|(i, e)| Entry {
            entry_id: format!("{}-0", i + 1),
            id: Some(e["row"]["id"].as_str().unwrap().to_owned()),
            data: Some(e["data"].as_str().unwrap().to_owned()),
            sig: Some(e["producer_sig"].as_str().unwrap().to_owned()),
        })
        .collect();
    let refused: Vec<String> = vectors["rejections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("ledger_now").is_none())
        .enumerate()
        .map(|(i, r)| {
            let data = r["data"].as_str().unwrap().to_owned();
            entries.push(Entry {
                entry_id: format!("{}-1", i + 1),
                id: Some("0197a3c2-5e20-7000-8000-000000000001".to_owned()),
                sig: Some(control_crypto::hmac_sha256_hex(
                    &key(KEY_HEX),
                    &[data.as_bytes()],
                )),
                data: Some(data),
            });
            format!("{}-1", i + 1)
        })
        .collect();
    let ledger = Ledger {
        pool: pool.clone(),
        keys: ledger_keys(KEY_HEX),
        settings: IngestSettings {
            batch: 1000,
            workers: 1,
            max_deliveries: 8,
            claim_idle: Duration::from_secs(30),
            trim_interval: Duration::from_secs(10),
            max_future_skew: Duration::from_secs(3600),
        },
        // The vectors are dated 2026-05-21; keep them inside the window whenever this runs.
        retention: Duration::from_secs(100 * 365 * 86_400),
        metrics: std::sync::Arc::new(Metrics::default()),
        lane: (0, 1),
    };
    // Dead letters go to a leased database, never to one a benchmark owns.
    let lease = tests_harness::audit::RedisLease::acquire().await.unwrap();
    let mut redis = lease.conn().await.unwrap();
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let outcome = ledger
        .process(&mut redis, entries, &HashMap::new(), &shutdown)
        .await;
    assert_eq!(outcome.pending, 0);
    assert_eq!(
        outcome.ack.len(),
        events.len() + refused.len(),
        "every entry is acknowledged"
    );

    // The stored rows are the vectors' rows but for the ledger's clock.
    let stored = stored_rows(&pool).await;
    assert_eq!(
        stored.len(),
        events.len(),
        "the refused entries are not stored"
    );
    let by_id: HashMap<&str, &AuditRow> = stored.iter().map(|r| (r.id.as_str(), r)).collect();
    for event in events {
        let mut expected: AuditRow = serde_json::from_value(event["row"].clone()).unwrap();
        let row = by_id[expected.id.as_str()];
        assert_eq!(
            hex::encode(&row.content_sha256),
            event["content_sha256"].as_str().unwrap()
        );
        assert_eq!(row.chain_seq, event["chain_seq"].as_i64().unwrap());
        assert_eq!(
            hex::encode(row.chain_hmac.as_ref().unwrap()),
            event["chain_hmac"].as_str().unwrap()
        );
        // jsonb rewrites number forms (100.0 -> 100, -0.0 -> 0.0) and JCS erases the
        // difference: the members hash the same from the row, then the rest is equal.
        assert_eq!(
            row.event().content_sha256().unwrap(),
            expected.event().content_sha256().unwrap(),
            "{}",
            event["name"]
        );
        expected
            .determining_policies_json
            .clone_from(&row.determining_policies_json);
        expected.diagnostics_json.clone_from(&row.diagnostics_json);
        expected.metadata_json.clone_from(&row.metadata_json);
        expected.ingested_at = row.ingested_at;
        expected.ingest_signature.clone_from(&row.ingest_signature);
        assert_eq!(row, &expected, "{}", event["name"]);
    }

    let report = sweep(
        &pool,
        &ledger_keys(KEY_HEX),
        &Metrics::default(),
        SweepScope::Full,
    )
    .await;
    assert_eq!(
        (report.findings, report.hmac_verified),
        (0, 6),
        "{report:?}"
    );
    let (code, text) = verify(database(&db, "caracal_audit"), Some(KEY_HEX)).await;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("ingest signature: 6 verified, 0 skipped"),
        "{text}"
    );

    let scratch = Scratch::new();
    write_export(&scratch.0, &stored);
    let (code, text) = verify(
        OfflineArgs {
            export: Some(scratch.0.clone()),
            ..OfflineArgs::default()
        },
        Some(KEY_HEX),
    )
    .await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("chain HMAC: 6 verified, 0 skipped"), "{text}");
    // The vector rows themselves, as a dump, verify too.
    let dump = scratch.0.join("vectors.ndjson");
    let vector_rows: Vec<AuditRow> = events
        .iter()
        .map(|e| serde_json::from_value(e["row"].clone()).unwrap())
        .collect();
    write_ndjson(&dump, &vector_rows);
    let (code, text) = verify(
        OfflineArgs {
            ndjson: Some(dump),
            ..OfflineArgs::default()
        },
        Some(KEY_HEX),
    )
    .await;
    assert_eq!(code, 0, "{text}");
}

#[tokio::test]
async fn the_admin_chain_verifies_offline_and_a_changed_action_is_named() {
    let db = TestDb::migrated().await.unwrap();

    // Rows written by the real admin API verify with its key.
    let api = ApiFixture::start(&db).await.unwrap();
    let zone = api.create_zone("Verify Zone").await.unwrap();
    api.mint_token("read", Some(&zone)).await.unwrap();
    let api_key = api.audit_key_hex.clone();
    api.stop().await;
    let admin_args = OfflineArgs {
        admin: true,
        ..database(&db, "caracal_audit")
    };
    let (code, text) = verify(admin_args.clone(), Some(&api_key)).await;
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("chain HMAC: 0 verified"), "{text}");

    // The published admin vectors, inserted through the store as the API does.
    let vectors: Value = serde_json::from_str(include_str!(
        "../../../../control/crypto/vectors/audit-chain-v1.json"
    ))
    .unwrap();
    let api_pool = db.service_pool(ServiceRole::Api).await.unwrap();
    let mut admin = db.admin().await.unwrap();
    sqlx::query(
        "INSERT INTO caracal.zones (id, name, slug) VALUES ('zone-1', 'Zone One', 'zone-one')",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let admin_rows: Vec<AdminRow> = vectors["admin_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| serde_json::from_value(e["row"].clone()).unwrap())
        .collect();
    // The API's global chain already holds the zone creation: put the vectors' global rows
    // in a chain of their own by checking only zone-1 below, and insert zone-1's rows.
    for row in admin_rows.iter().filter(|r| r.zone_id.is_some()) {
        let payload = row.payload_json.clone().unwrap_or(Value::Null);
        let record = AdminAuditRow {
            id: &row.id,
            zone_id: row.zone_id.as_deref(),
            request_id: row.request_id.as_deref().unwrap_or_default(),
            actor_id: &row.actor_id,
            actor_name: row.actor_name.as_deref().unwrap_or_default(),
            actor_scope: row.actor_scope.as_deref().unwrap_or_default(),
            action: &row.action,
            method: &row.method,
            path: &row.path,
            entity_type: row.entity_type.as_deref(),
            entity_id: row.entity_id.as_deref(),
            status_code: row.status_code,
            payload_json: &payload,
            occurred_at: row.occurred_at,
            content_sha256: &row.content_sha256,
            prev_content_sha256: row.prev_content_sha256.as_deref(),
            chain_seq: row.chain_seq,
            chain_hmac: row.chain_hmac.as_deref(),
            chain_key_id: row.chain_key_id.as_deref(),
        };
        let mut tx = zone_tx(&api_pool, &ZoneId::parse("zone-1").unwrap())
            .await
            .unwrap();
        admin_audit::insert(&mut tx, &record).await.unwrap();
        tx.commit().await.unwrap();
    }
    let zone_1 = OfflineArgs {
        zone: Some("zone-1".into()),
        ..admin_args.clone()
    };
    let (code, text) = verify(zone_1.clone(), Some(KEY_HEX)).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("chain HMAC: 2 verified, 0 skipped"), "{text}");

    // The global rows go through a global transaction in a fresh database of their own.
    let global_db = TestDb::migrated().await.unwrap();
    let global_pool = global_db.service_pool(ServiceRole::Api).await.unwrap();
    for row in admin_rows.iter().filter(|r| r.zone_id.is_none()) {
        let payload = row.payload_json.clone().unwrap_or(Value::Null);
        let mut tx = global_tx(&global_pool).await.unwrap();
        sqlx::query(
            "INSERT INTO admin_audit_events (id, zone_id, request_id, actor_id, actor_name, actor_scope, \
               action, method, path, entity_type, entity_id, status_code, payload_json, occurred_at, \
               content_sha256, prev_content_sha256, chain_seq, chain_hmac, chain_key_id) \
             VALUES ($1, NULL, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
        )
        .bind(&row.id)
        .bind(&row.request_id)
        .bind(&row.actor_id)
        .bind(&row.actor_name)
        .bind(&row.actor_scope)
        .bind(&row.action)
        .bind(&row.method)
        .bind(&row.path)
        .bind(&row.entity_type)
        .bind(&row.entity_id)
        .bind(row.status_code)
        .bind(&payload)
        .bind(row.occurred_at)
        .bind(&row.content_sha256)
        .bind(&row.prev_content_sha256)
        .bind(row.chain_seq)
        .bind(&row.chain_hmac)
        .bind(&row.chain_key_id)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.finish().await.unwrap();
    }
    let (code, text) = verify(
        OfflineArgs {
            admin: true,
            ..database(&global_db, "caracal_audit")
        },
        Some(KEY_HEX),
    )
    .await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("chain HMAC: 2 verified, 0 skipped"), "{text}");

    // A changed status code is named, with the chain and the row.
    as_owner(
        &db,
        "admin_audit_events",
        &["UPDATE caracal.admin_audit_events SET status_code = 200 WHERE zone_id = 'zone-1' AND chain_seq = 2".to_owned()],
    )
    .await;
    let (code, text) = verify(zone_1, Some(KEY_HEX)).await;
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("FIRST BAD ROW: zone zone-1 chain_seq 2 id 0197a3c2-6000-7000-8000-000000000004: content_mismatch"),
        "{text}"
    );
}
