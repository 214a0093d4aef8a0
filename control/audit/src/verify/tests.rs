use std::path::PathBuf;

use chrono::{DateTime, Duration, Utc};
use control_crypto::{HmacKey, chain_hmac, ingest_signature};
use serde_json::json;

use super::{
    export::{self, ManifestBuilder},
    object, *,
};
use crate::canonical::format_time;

fn key(byte: u8) -> HmacKey {
    HmacKey::from_bytes(&[byte; 32]).unwrap()
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// A row as the ledger would store it after `prev` in its zone.
fn chained(zone: &str, id: &str, prev: Option<&AuditRow>, key: Option<&HmacKey>) -> AuditRow {
    let seq = prev.map_or(1, |p| p.chain_seq + 1);
    let occurred_at = at("2026-05-21T12:00:00.123456Z") + Duration::seconds(seq);
    let ingested_at = occurred_at + Duration::milliseconds(1500);
    let mut row = AuditRow {
        id: id.to_owned(),
        zone_id: zone.to_owned(),
        event_type: "token_exchange".to_owned(),
        request_id: Some(format!("req-{id}")),
        decision: Some("allow".to_owned()),
        policy_set_id: None,
        policy_set_version_id: None,
        manifest_sha: None,
        evaluation_status: Some("complete".to_owned()),
        determining_policies_json: Some(json!([{"policy": "p"}])),
        diagnostics_json: None,
        metadata_json: Some(json!({"latency_ms": 3.5, "n": seq})),
        occurred_at,
        ingested_at,
        hash_version: 1,
        content_sha256: Vec::new(),
        prev_content_sha256: prev.map(|p| p.content_sha256.clone()),
        chain_seq: seq,
        chain_hmac: None,
        chain_key_id: None,
        ingest_signature: None,
    };
    row.content_sha256 = row.event().content_sha256().unwrap().to_vec();
    seal(&mut row, key);
    row
}

/// Recomputes the keyed columns of `row` as the ledger does.
fn seal(row: &mut AuditRow, key: Option<&HmacKey>) {
    row.chain_hmac = key.map(|k| {
        chain_hmac(
            k,
            &row.zone_id,
            row.chain_seq,
            row.prev_content_sha256.as_deref(),
            &row.content_sha256,
        )
        .to_vec()
    });
    row.chain_key_id = key.map(|k| k.chain_key_id().to_owned());
    row.ingest_signature = key
        .map(|k| ingest_signature(k, &row.content_sha256, &format_time(row.ingested_at)).to_vec());
}

fn zone_chain(zone: &str, n: usize, key: Option<&HmacKey>) -> Vec<AuditRow> {
    let mut rows: Vec<AuditRow> = Vec::new();
    for i in 1..=n {
        let row = chained(zone, &format!("{zone}-e{i}"), rows.last(), key);
        rows.push(row);
    }
    rows
}

fn run(verifier: &mut Verifier, rows: &[AuditRow]) -> Vec<Finding> {
    rows.iter().flat_map(|row| verifier.check(row)).collect()
}

fn kinds(findings: &[Finding]) -> Vec<FindingKind> {
    findings.iter().map(|f| f.kind).collect()
}

#[test]
fn a_clean_chain_over_two_zones_verifies_every_hmac_and_signature() {
    let k = key(1);
    let mut rows = zone_chain("zone-a", 3, Some(&k));
    rows.extend(zone_chain("zone-b", 2, Some(&k)));
    let mut verifier = Verifier::new(Keyring::new([k]));
    assert!(run(&mut verifier, &rows).is_empty());
    let tally = verifier.tally();
    assert_eq!(tally.rows, 5);
    assert_eq!(tally.hmac_verified, 5);
    assert_eq!(tally.signatures_verified, 5);
    assert_eq!(tally.hmac_skipped + tally.signatures_skipped, 0);
    assert_eq!(verifier.chains(), 2);
}

#[test]
fn without_keys_hmacs_and_signatures_are_skipped_never_passed() {
    let rows = zone_chain("zone-a", 4, Some(&key(1)));
    let mut verifier = Verifier::new(Keyring::default());
    assert!(run(&mut verifier, &rows).is_empty());
    let tally = verifier.tally();
    assert_eq!(tally.hmac_verified, 0);
    assert_eq!(tally.signatures_verified, 0);
    assert_eq!(tally.hmac_skipped, 4);
    assert_eq!(tally.signatures_skipped, 4);
}

#[test]
fn an_unkeyed_dev_chain_is_skipped_but_a_keyed_chain_cannot_drop_its_hmac() {
    let rows = zone_chain("zone-a", 3, None);
    let mut verifier = Verifier::new(Keyring::new([key(1)]));
    assert!(run(&mut verifier, &rows).is_empty());
    assert_eq!(verifier.tally().hmac_skipped, 3);

    let k = key(1);
    let mut rows = zone_chain("zone-a", 3, Some(&k));
    seal(&mut rows[2], None);
    let mut verifier = Verifier::new(Keyring::new([k]));
    let found = run(&mut verifier, &rows);
    assert_eq!(kinds(&found), vec![FindingKind::HmacMismatch]);
    assert_eq!(found[0].chain_seq, 3);
}

/// Changes one column of the middle row of a keyed 3-row chain and returns the findings.
fn tamper(change: impl Fn(&mut AuditRow)) -> Vec<Finding> {
    let k = key(1);
    let mut rows = zone_chain("zone-a", 3, Some(&k));
    change(&mut rows[1]);
    let mut verifier = Verifier::new(Keyring::new([k]));
    run(&mut verifier, &rows)
}

#[test]
fn every_column_changed_alone_is_detected_with_its_kind() {
    use FindingKind::*;
    let content = |change: &dyn Fn(&mut AuditRow)| {
        let found = tamper(change);
        assert_eq!(kinds(&found), vec![ContentMismatch], "{found:?}");
        assert_eq!(found[0].chain_seq, 2);
    };
    content(&|r| r.id = "other".into());
    content(&|r| r.event_type = "replay_detected".into());
    content(&|r| r.request_id = None);
    content(&|r| r.request_id = Some(String::new()));
    content(&|r| r.decision = Some("deny".into()));
    content(&|r| r.policy_set_id = Some("ps".into()));
    content(&|r| r.policy_set_version_id = Some("psv".into()));
    content(&|r| r.manifest_sha = Some("m".into()));
    content(&|r| r.evaluation_status = None);
    content(&|r| r.determining_policies_json = Some(json!([])));
    content(&|r| r.diagnostics_json = Some(json!({})));
    content(&|r| r.metadata_json = Some(json!({"latency_ms": 3.6, "n": 2})));
    content(&|r| r.occurred_at += Duration::microseconds(1));
    content(&|r| r.hash_version = 2);

    // Moving a row to another zone changes its content and its chain.
    let found = tamper(|r| r.zone_id = "zone-b".into());
    assert!(kinds(&found).contains(&ContentMismatch), "{found:?}");
    assert!(kinds(&found).contains(&HmacMismatch), "{found:?}");
    assert!(kinds(&found).contains(&SequenceGap), "{found:?}");

    let found = tamper(|r| r.ingested_at += Duration::seconds(1));
    assert_eq!(kinds(&found), vec![IngestSignatureMismatch]);
    let found = tamper(|r| r.ingest_signature = Some(vec![0; 32]));
    assert_eq!(kinds(&found), vec![IngestSignatureMismatch]);
    let found = tamper(|r| r.ingest_signature = None);
    assert_eq!(kinds(&found), vec![IngestSignatureMismatch]);
    let found = tamper(|r| r.chain_hmac = Some(vec![0; 32]));
    assert_eq!(kinds(&found), vec![HmacMismatch]);
    let found = tamper(|r| r.chain_key_id = Some("0123456789abcdef".into()));
    assert_eq!(kinds(&found), vec![UnknownKeyId]);
    let found = tamper(|r| r.chain_key_id = None);
    assert_eq!(kinds(&found), vec![UnknownKeyId]);

    // The stored hash: the row no longer matches, nor does its successor's link.
    let found = tamper(|r| r.content_sha256 = vec![7; 32]);
    assert_eq!(
        kinds(&found),
        vec![
            ContentMismatch,
            HmacMismatch,
            IngestSignatureMismatch,
            ChainBreak
        ]
    );
    assert_eq!(found[3].chain_seq, 3);

    let found = tamper(|r| r.prev_content_sha256 = Some(vec![7; 32]));
    assert_eq!(kinds(&found), vec![ChainBreak, HmacMismatch]);

    let found = tamper(|r| r.chain_seq = 5);
    assert!(kinds(&found).contains(&SequenceGap), "{found:?}");
    assert!(kinds(&found).contains(&HmacMismatch), "{found:?}");
}

#[test]
fn a_consistent_rewrite_without_the_key_is_caught_by_the_hmac() {
    // The attacker recomputes content hash and link, but cannot recompute the HMACs.
    let k = key(1);
    let mut rows = zone_chain("zone-a", 3, Some(&k));
    rows[1].decision = Some("deny".into());
    rows[1].content_sha256 = rows[1].event().content_sha256().unwrap().to_vec();
    rows[2].prev_content_sha256 = Some(rows[1].content_sha256.clone());
    seal(&mut rows[1], Some(&key(9)));
    rows[1].chain_key_id = Some(k.chain_key_id().to_owned());
    let mut verifier = Verifier::new(Keyring::new([k]));
    let found = run(&mut verifier, &rows);
    assert_eq!(
        kinds(&found),
        vec![
            FindingKind::HmacMismatch,
            FindingKind::IngestSignatureMismatch,
            FindingKind::HmacMismatch
        ]
    );
}

#[test]
fn a_deleted_row_is_a_gap_and_swapped_rows_break_the_chain() {
    let k = key(1);
    let rows = zone_chain("zone-a", 5, Some(&k));
    let mut verifier = Verifier::new(Keyring::new([k.clone()]));
    let without: Vec<AuditRow> = rows.iter().filter(|r| r.chain_seq != 3).cloned().collect();
    let found = run(&mut verifier, &without);
    assert_eq!(kinds(&found), vec![FindingKind::SequenceGap]);
    assert_eq!(
        (found[0].chain_seq, found[0].event_id.as_str()),
        (4, "zone-a-e4")
    );

    let mut swapped = rows.clone();
    swapped[2].chain_seq = 4;
    swapped[3].chain_seq = 3;
    swapped.sort_by_key(|r| r.chain_seq);
    let mut verifier = Verifier::new(Keyring::new([k]));
    let found = run(&mut verifier, &swapped);
    let breaks: Vec<i64> = found
        .iter()
        .filter(|f| f.kind == FindingKind::ChainBreak)
        .map(|f| f.chain_seq)
        .collect();
    assert_eq!(breaks, vec![3, 4, 5]);
    assert!(kinds(&found).contains(&FindingKind::HmacMismatch));
}

#[test]
fn a_window_starting_mid_chain_uses_its_predecessor_or_an_anchor() {
    let k = key(1);
    let rows = zone_chain("zone-a", 5, Some(&k));
    let window = &rows[2..];

    let mut verifier = Verifier::new(Keyring::new([k.clone()]));
    assert!(verifier.needs_predecessor(&window[0]));
    verifier.seed("zone-a", Link::of(&rows[1]));
    assert!(!verifier.needs_predecessor(&window[0]));
    assert!(run(&mut verifier, window).is_empty());

    let mut verifier = Verifier::new(Keyring::new([k.clone()]));
    verifier.seed(
        "zone-a",
        Link::anchor(2, rows[1].content_sha256.clone(), true),
    );
    assert!(run(&mut verifier, window).is_empty());
    assert_eq!(verifier.tally().anchors_used, 1);

    let mut verifier = Verifier::new(Keyring::new([k.clone()]));
    verifier.seed("zone-a", Link::anchor(2, vec![0; 32], true));
    assert_eq!(
        kinds(&run(&mut verifier, window)),
        vec![FindingKind::SequenceGap]
    );

    // Nothing known before the window: a gap, unless the source is a partial file.
    let mut verifier = Verifier::new(Keyring::new([k.clone()]));
    assert_eq!(
        kinds(&run(&mut verifier, window)),
        vec![FindingKind::SequenceGap]
    );
    let mut verifier = Verifier::new(Keyring::new([k])).accepting_partial_starts();
    assert!(run(&mut verifier, window).is_empty());
    assert_eq!(verifier.partial_starts(), &[("zone-a".to_owned(), 3)]);
}

#[test]
fn the_first_row_must_not_name_a_predecessor() {
    let k = key(1);
    let mut rows = zone_chain("zone-a", 1, Some(&k));
    rows[0].prev_content_sha256 = Some(vec![1; 32]);
    let mut verifier = Verifier::new(Keyring::new([k]));
    let found = run(&mut verifier, &rows);
    assert_eq!(
        kinds(&found),
        vec![FindingKind::ChainBreak, FindingKind::HmacMismatch]
    );
}

#[test]
fn retired_keys_verify_through_the_keyring() {
    let old = key(1);
    let new = key(2);
    let mut rows = zone_chain("zone-a", 2, Some(&old));
    let third = chained("zone-a", "e3", rows.last(), Some(&new));
    rows.push(third);
    let mut verifier = Verifier::new(Keyring::new([new.clone()]));
    let found = run(&mut verifier, &rows);
    assert_eq!(
        kinds(&found),
        vec![FindingKind::UnknownKeyId, FindingKind::UnknownKeyId]
    );
    let mut verifier = Verifier::new(Keyring::new([new, old]));
    assert!(run(&mut verifier, &rows).is_empty());
}

#[test]
fn repeated_ids_in_a_file_are_duplicates() {
    let rows = zone_chain("zone-a", 2, None);
    let mut other = zone_chain("zone-b", 1, None);
    other[0].id = rows[0].id.clone();
    let mut seen = SeenIds::default();
    assert!(seen.observe(&rows[0]).is_none());
    assert!(seen.observe(&rows[1]).is_none());
    let finding = seen.observe(&other[0]).unwrap();
    assert_eq!(finding.kind, FindingKind::DuplicateEventId);
    assert_eq!(finding.zone_id, "zone-b");
}

#[test]
fn the_line_format_has_every_column_in_hex_and_micros_and_refuses_unknown_members() {
    let row = chained("zone-a", "e1", None, Some(&key(1)));
    let line = serde_json::to_value(&row).unwrap();
    let members = line.as_object().unwrap();
    assert_eq!(members.len(), 21);
    assert_eq!(
        line["content_sha256"],
        json!(hex::encode(&row.content_sha256))
    );
    assert_eq!(line["prev_content_sha256"], json!(null));
    assert_eq!(line["occurred_at"], json!("2026-05-21T12:00:01.123456Z"));
    assert_eq!(line["metadata_json"], json!({"latency_ms": 3.5, "n": 1}));
    assert_eq!(line["diagnostics_json"], json!(null));
    let back: AuditRow = serde_json::from_value(line.clone()).unwrap();
    assert_eq!(back, row);

    let mut extra = line.clone();
    extra["note"] = json!("x");
    assert!(serde_json::from_value::<AuditRow>(extra).is_err());
    let mut missing = line;
    missing.as_object_mut().unwrap().remove("chain_hmac");
    assert!(serde_json::from_value::<AuditRow>(missing).is_err());
}

#[test]
fn jsonb_text_is_read_strictly_and_a_changed_value_still_hashes_differently() {
    use control_store::audit::rows::StoredAuditRow;
    let row = chained("zone-a", "e1", None, None);
    let stored = |metadata: &str| StoredAuditRow {
        id: row.id.clone(),
        zone_id: row.zone_id.clone(),
        event_type: row.event_type.clone(),
        request_id: row.request_id.clone(),
        decision: row.decision.clone(),
        policy_set_id: None,
        policy_set_version_id: None,
        manifest_sha: None,
        evaluation_status: row.evaluation_status.clone(),
        determining_policies_json: Some(r#"[{"policy": "p"}]"#.to_owned()),
        diagnostics_json: None,
        metadata_json: Some(metadata.to_owned()),
        occurred_at: row.occurred_at,
        ingested_at: row.ingested_at,
        hash_version: 1,
        content_sha256: row.content_sha256.clone(),
        prev_content_sha256: None,
        chain_seq: 1,
        chain_hmac: None,
        chain_key_id: None,
        ingest_signature: None,
    };
    // jsonb reorders keys and rewrites numbers; the hash does not move.
    let same = AuditRow::from(stored(r#"{"n": 1, "latency_ms": 3.50}"#));
    assert_eq!(same, row);
    for changed in [
        r#"{"n": 12345678901234567890, "latency_ms": 3.5}"#,
        r#"{"n": 1e400}"#,
    ] {
        let changed = AuditRow::from(stored(changed));
        let mut verifier = Verifier::new(Keyring::default());
        assert_eq!(
            kinds(&verifier.check(&changed)),
            vec![FindingKind::ContentMismatch]
        );
    }
}

fn admin_row(chain: Option<&str>, seq: i64, prev: Option<&AdminRow>, key: &HmacKey) -> AdminRow {
    let mut row = AdminRow {
        id: format!("adm-{seq}"),
        zone_id: chain.map(str::to_owned),
        request_id: Some(format!("req-{seq}")),
        actor_id: "tok-1".into(),
        actor_name: Some("ops".into()),
        actor_scope: Some("global".into()),
        action: "POST /v1/zones".into(),
        method: "POST".into(),
        path: "/v1/zones".into(),
        entity_type: Some("zone".into()),
        entity_id: Some("zone-a".into()),
        status_code: 201,
        payload_json: Some(json!({"name": "A"})),
        occurred_at: at("2026-05-21T12:00:00.5Z"),
        hash_version: 1,
        content_sha256: Vec::new(),
        prev_content_sha256: prev.map(|p| p.content_sha256.clone()),
        chain_seq: seq,
        chain_hmac: None,
        chain_key_id: Some(key.chain_key_id().to_owned()),
        created_at: at("2026-05-21T12:00:00.6Z"),
    };
    row.content_sha256 = row.recompute_content().unwrap().to_vec();
    row.chain_hmac = Some(
        chain_hmac(
            key,
            row.chain(),
            seq,
            row.prev_content_sha256.as_deref(),
            &row.content_sha256,
        )
        .to_vec(),
    );
    row
}

#[test]
fn the_admin_chain_is_checked_per_zone_with_the_global_chain_under_star() {
    let k = key(3);
    let g1 = admin_row(None, 1, None, &k);
    let g2 = admin_row(None, 2, Some(&g1), &k);
    let z1 = admin_row(Some("zone-a"), 1, None, &k);
    let mut verifier = Verifier::new(Keyring::new([k.clone()]));
    for row in [&g1, &g2, &z1] {
        assert!(verifier.check(row).is_empty());
    }
    assert_eq!(verifier.tally().hmac_verified, 3);
    assert_eq!(
        verifier.tally().signatures_verified + verifier.tally().signatures_skipped,
        0
    );
    assert_eq!(g1.canonical().as_object().unwrap().len(), 14);

    // Moving a global action into a zone's chain is caught.
    let mut moved = g2.clone();
    moved.zone_id = Some("zone-a".into());
    moved.chain_seq = 2;
    let mut verifier = Verifier::new(Keyring::new([k]));
    verifier.check(&g1);
    verifier.check(&z1);
    let found = verifier.check(&moved);
    assert!(kinds(&found).contains(&FindingKind::ContentMismatch));
    assert!(kinds(&found).contains(&FindingKind::ChainBreak));
    assert!(kinds(&found).contains(&FindingKind::HmacMismatch));
    assert_eq!(found[0].zone_id, "zone-a");
}

#[test]
fn the_manifest_builder_describes_each_zone_span() {
    let mut rows = zone_chain("zone-a", 3, None);
    rows.extend(zone_chain("zone-b", 2, None));
    let mut builder = ManifestBuilder::new();
    for row in &rows {
        builder.add(row);
    }
    let manifest = builder.finish([7; 32]);
    assert_eq!(manifest.rows, 5);
    assert_eq!(manifest.object_sha256, "07".repeat(32));
    let b = &manifest.zones["zone-b"];
    assert_eq!((b.first_seq, b.last_seq), (1, 2));
    assert_eq!(b.last_hash, hex::encode(&rows[4].content_sha256));
    assert_eq!(
        export::object_name(at("2026-05-21T13:00:00Z")),
        "audit/2026/05/21/2026-05-21T13.parquet"
    );
}

#[test]
fn an_object_round_trips_every_column_and_its_hash_is_the_manifests() {
    let k = key(1);
    let mut rows = zone_chain("zone-a", 3, Some(&k));
    rows[1].request_id = Some(String::new());
    rows[1].decision = None;
    rows[2].metadata_json = Some(json!({"nested": {"n": 1.5, "list": [1, "two", null]}}));
    rows[2].chain_hmac = None;
    let bytes = object::encode(&rows).unwrap();
    let decode = |bytes: Vec<u8>| {
        let mut decoded = Vec::new();
        let problems = object::decode(bytes::Bytes::from(bytes), |row| decoded.push(row))?;
        assert!(problems.is_empty(), "{problems:?}");
        Ok::<_, object::ObjectError>(decoded)
    };
    assert_eq!(decode(bytes.clone()).unwrap(), rows);
    let mut writer = object::ObjectWriter::new(Vec::new()).unwrap();
    writer.write_group(&rows[..2]).unwrap();
    writer.write_group(&rows[2..]).unwrap();
    let (written, sha) = writer.finish().unwrap();
    assert_eq!(
        sha,
        <[u8; 32]>::from(<sha2::Sha256 as sha2::Digest>::digest(&written))
    );
    assert_eq!(decode(written).unwrap(), rows);
    // Not Parquet at all, and Parquet cut short: an error naming the cause, no panic.
    assert!(decode(b"{\"id\": 1}\n".to_vec()).is_err());
    assert!(decode(bytes[..bytes.len() / 2].to_vec()).is_err());
}

/// A scratch directory removed at the end of the test.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "caracal-verify-{name}-{}-{}",
            std::process::id(),
            Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _removed = std::fs::remove_dir_all(&self.0);
    }
}

fn write_export(root: &std::path::Path, hours: &[(&str, Vec<AuditRow>)]) {
    for (hour, rows) in hours {
        let name = export::object_name(at(hour));
        let path = root.join(&name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let bytes = object::encode(rows).unwrap();
        let mut builder = ManifestBuilder::new();
        for row in rows {
            builder.add(row);
        }
        let manifest = builder.finish(<sha2::Sha256 as sha2::Digest>::digest(&bytes).into());
        std::fs::write(&path, bytes).unwrap();
        std::fs::write(
            root.join(export::manifest_name(&name)),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
    }
}

async fn verify_with(args: OfflineArgs, key_hex: Option<&str>) -> (i32, String) {
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

const KEY_HEX: &str = "0101010101010101010101010101010101010101010101010101010101010101";

#[tokio::test]
async fn an_export_verifies_across_objects_and_names_what_differs() {
    let k = key(1);
    let rows = zone_chain("zone-a", 6, Some(&k));
    let scratch = Scratch::new("export");
    write_export(
        &scratch.0,
        &[
            ("2026-05-21T12:00:00Z", rows[0..2].to_vec()),
            ("2026-05-21T13:00:00Z", rows[2..4].to_vec()),
            ("2026-05-22T00:00:00Z", rows[4..6].to_vec()),
        ],
    );
    let args = OfflineArgs {
        export: Some(scratch.0.clone()),
        ..OfflineArgs::default()
    };
    let (code, text) = verify_with(args.clone(), Some(KEY_HEX)).await;
    assert_eq!(code, EXIT_CLEAN, "{text}");
    assert!(text.contains("chain HMAC: 6 verified, 0 skipped"), "{text}");

    // Without a key: still exit 0, but the report says the HMACs were not verified.
    let (code, text) = verify_with(args.clone(), None).await;
    assert_eq!(code, EXIT_CLEAN, "{text}");
    assert!(
        text.contains("6 skipped") && text.contains("NOT verified"),
        "{text}"
    );

    // A row changed and the object rewritten: the manifest hash differs and the row's
    // content too.
    let middle = scratch
        .0
        .join(export::object_name(at("2026-05-21T13:00:00Z")));
    let original = std::fs::read(&middle).unwrap();
    let mut changed = rows[2..4].to_vec();
    changed[0].decision = Some("deny".into());
    std::fs::write(&middle, object::encode(&changed).unwrap()).unwrap();
    let (code, text) = verify_with(args.clone(), Some(KEY_HEX)).await;
    assert_eq!(code, EXIT_FINDINGS, "{text}");
    assert!(text.contains("differs from the manifest"), "{text}");
    assert!(
        text.contains("FIRST BAD ROW: zone zone-a chain_seq 3 id zone-a-e3: content_mismatch"),
        "{text}"
    );

    // One byte flipped in the original: the manifest hash differs (and the object may no
    // longer decode); either way it is not clean.
    let mut flipped = original.clone();
    let at_byte = flipped.len() / 3;
    flipped[at_byte] ^= 0x40;
    std::fs::write(&middle, &flipped).unwrap();
    let (code, text) = verify_with(args.clone(), Some(KEY_HEX)).await;
    assert_eq!(code, EXIT_FINDINGS, "{text}");
    assert!(text.contains("differs from the manifest"), "{text}");

    // A file that is not of the layout beside the objects is named.
    std::fs::write(&middle, &original).unwrap();
    let stray = scratch.0.join("audit/2026/05/21/2026-05-21T14.ndjson");
    std::fs::write(&stray, b"{}").unwrap();
    let (code, text) = verify_with(args.clone(), Some(KEY_HEX)).await;
    assert_eq!(code, EXIT_FINDINGS, "{text}");
    assert!(
        text.contains("audit/2026/05/21/2026-05-21T14.ndjson: not an object of the export layout"),
        "{text}"
    );
    std::fs::remove_file(&stray).unwrap();

    // The middle hour deleted with its manifest: the chain across objects has a gap.
    std::fs::remove_file(&middle).unwrap();
    std::fs::remove_file(
        scratch
            .0
            .join(export::manifest_name(&export::object_name(at(
                "2026-05-21T13:00:00Z",
            )))),
    )
    .unwrap();
    let (code, text) = verify_with(args.clone(), Some(KEY_HEX)).await;
    assert_eq!(code, EXIT_FINDINGS, "{text}");
    assert!(
        text.contains("FIRST BAD ROW: zone zone-a chain_seq 5 id zone-a-e5: sequence_gap"),
        "{text}"
    );

    // An anchor for chain_seq 4 bridges it.
    let anchors = scratch.0.join(export::ANCHORS_DIR);
    std::fs::create_dir_all(&anchors).unwrap();
    let anchor = AnchorRecord {
        zone_id: "zone-a".into(),
        chain_seq: 4,
        content_sha256: rows[3].content_sha256.clone(),
        chain_hmac: rows[3].chain_hmac.clone(),
        chain_key_id: rows[3].chain_key_id.clone(),
    };
    std::fs::write(
        anchors.join("2026-06-01T000000Z.json"),
        serde_json::to_vec(&[anchor]).unwrap(),
    )
    .unwrap();
    let (code, text) = verify_with(args.clone(), Some(KEY_HEX)).await;
    assert_eq!(code, EXIT_CLEAN, "{text}");
    assert!(text.contains("bridged by anchors: 1"), "{text}");

    // JSON output.
    let (code, text) = verify_with(OfflineArgs { json: true, ..args }, Some(KEY_HEX)).await;
    assert_eq!(code, EXIT_CLEAN);
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["clean"], json!(true));
    assert_eq!(report["tally"]["rows"], json!(4));
}

#[tokio::test]
async fn an_ndjson_dump_is_filtered_by_zone_and_sequence() {
    let k = key(1);
    let mut rows = zone_chain("zone-a", 4, Some(&k));
    rows.extend(zone_chain("zone-b", 3, Some(&k)));
    rows[5].decision = Some("partial".into());
    let scratch = Scratch::new("ndjson");
    let path = scratch.0.join("dump.ndjson");
    let bytes: Vec<u8> = rows
        .iter()
        .flat_map(|r| export::to_line(r).unwrap())
        .collect();
    std::fs::write(&path, bytes).unwrap();
    let args = OfflineArgs {
        ndjson: Some(path),
        ..OfflineArgs::default()
    };
    let (code, text) = verify_with(args.clone(), Some(KEY_HEX)).await;
    assert_eq!(code, EXIT_FINDINGS, "{text}");
    assert!(
        text.contains("FIRST BAD ROW: zone zone-b chain_seq 2 id zone-b-e2: content_mismatch"),
        "{text}"
    );
    let zone_a = OfflineArgs {
        zone: Some("zone-a".into()),
        from_seq: Some(3),
        ..args.clone()
    };
    let (code, text) = verify_with(zone_a, Some(KEY_HEX)).await;
    assert_eq!(code, EXIT_CLEAN, "{text}");
    assert!(text.contains("rows checked: 2"), "{text}");
    let since = OfflineArgs {
        zone: Some("zone-b".into()),
        since: Some(format_time(rows[6].ingested_at)),
        ..args
    };
    let (code, text) = verify_with(since, Some(KEY_HEX)).await;
    assert_eq!(code, EXIT_CLEAN, "{text}");
}

#[tokio::test]
async fn usage_and_io_errors_exit_2() {
    let cases = [
        OfflineArgs::default(),
        OfflineArgs {
            ndjson: Some("/nonexistent/x.ndjson".into()),
            database_url: Some("postgres://x@127.0.0.1/x".into()),
            ..OfflineArgs::default()
        },
        OfflineArgs {
            ndjson: Some("/nonexistent/x.ndjson".into()),
            ..OfflineArgs::default()
        },
        // A bucket without credentials in the environment.
        OfflineArgs {
            export: Some("s3://bucket/prefix".into()),
            ..OfflineArgs::default()
        },
        OfflineArgs {
            export: Some("s3://Not_A_Bucket/prefix".into()),
            ..OfflineArgs::default()
        },
        OfflineArgs {
            export: Some("/nonexistent".into()),
            ..OfflineArgs::default()
        },
        OfflineArgs {
            ndjson: Some("x".into()),
            since: Some("yesterday".into()),
            ..OfflineArgs::default()
        },
        OfflineArgs {
            ndjson: Some("x".into()),
            zone: Some("a b".into()),
            ..OfflineArgs::default()
        },
        OfflineArgs {
            ndjson: Some("x".into()),
            hmac_key_env: Some("NOT_SET_ANYWHERE".into()),
            ..OfflineArgs::default()
        },
        OfflineArgs {
            database_url: Some("not a url".into()),
            ..OfflineArgs::default()
        },
    ];
    for args in cases {
        let (code, text) = verify_with(args.clone(), None).await;
        assert_eq!(code, EXIT_ERROR, "{args:?}: {text}");
        assert!(text.contains("error"), "{text}");
    }
    let (code, text) = verify_with(
        OfflineArgs {
            ndjson: Some("x".into()),
            ..OfflineArgs::default()
        },
        Some("zz-not-a-key-zz"),
    )
    .await;
    assert_eq!(code, EXIT_ERROR);
    assert!(!text.contains("zz-not-a-key-zz"), "{text}");
}
