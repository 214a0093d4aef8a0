//! The published audit chain vectors (storage §8.3 "Required test vectors"):
//! `control/crypto/vectors/audit-chain-v1.json`.
//!
//! The document is rebuilt here from its inputs (event data, ingest times, admin actions)
//! with the ledger's own code and compared with the file member by member; with
//! `UPDATE_VECTORS=1` the file is rewritten instead. The spec's worked example is asserted
//! literally, and every value read back from the file is recomputed along a second path
//! (plain SHA-256 over the domain and the canonical text, HMAC over the printed message),
//! then the chains are run through the verifier.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails loudly"
)]

use std::{collections::HashMap, path::PathBuf};

use chrono::{DateTime, Duration, Utc};
use control_audit::{
    canonical::{LedgerEvent, format_time},
    config::LedgerKeys,
    entry::{Entry, Window, check},
    verify::{AdminRow, AuditRow, ChainRow, Keyring, Verifier},
};
use control_crypto::{
    ADMIN_AUDIT_CONTENT_DOMAIN, AUDIT_CONTENT_DOMAIN, CHAIN_DOMAIN, HmacKey, INGEST_DOMAIN,
    chain_hmac, hmac_sha256, hmac_sha256_hex, ingest_signature,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// The worked example of storage §8.3, byte for byte as the spec prints it.
const WORKED_EXAMPLE: &str = r#"{"id":"0197a3c2-5e10-7d3a-9f1e-2b4c6d8e0f12","zone_id":"zone-1","event_type":"token_exchange",
 "request_id":"req-1","decision":"allow","policy_set_id":"ps-1","policy_set_version_id":"psv-1",
 "manifest_sha":"","evaluation_status":"complete",
 "determining_policies_json":[{"policy":"caracal-app-mint"}],"diagnostics_json":[],
 "metadata_json":{"resource":"resource://api","latency_ms":3.50},
 "occurred_at":"2026-05-21T12:00:00.123456789Z"}"#;

/// The chain: (name, what it exercises, data). Ingested one second apart from
/// 2026-05-21T12:00:01Z, in this order.
fn chain_inputs() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        (
            "spec_worked_example",
            "storage-and-events.md §8.3 worked example: \"\" becomes null, 3.50 becomes 3.5, nanoseconds truncated",
            WORKED_EXAMPLE,
        ),
        (
            "zone2_offset_time_and_number_forms",
            "an offset converted to UTC, 1e2 -> 100, -0.0 -> 0, 1.5e-7 kept, non-ASCII text, an explicit null, an unknown member (signed, not stored)",
            r#"{"id":"0197a3c2-5e11-7000-8000-000000000002","zone_id":"zone-2","event_type":"gateway_resource_request","request_id":"req-2","decision":"deny","policy_set_id":null,"evaluation_status":"complete","determining_policies_json":[],"diagnostics_json":{"reason":"operation_not_allowed","codes":[403,1e2,-0.0]},"metadata_json":{"resource":"resource://crm","path":"/contacts/\u00fcmlaut","z":1,"a":true,"nested":{"b":null,"a":[1.5e-7,0.1]}},"occurred_at":"2026-05-21T14:00:00.5+02:00","producer_note":"ignored"}"#,
        ),
        (
            "zone1_utf16_key_order",
            "JCS sorts keys by UTF-16 code units: U+1F600 (a surrogate pair, D83D) before U+E000; 9 fractional digits truncated, not rounded",
            r#"{"id":"0197a3c2-5e12-7000-8000-000000000003","zone_id":"zone-1","event_type":"replay_detected","request_id":"","decision":"deny","manifest_sha":"sha256:abc","metadata_json":{"\ue000":"private use","\ud83d\ude00":"emoji","jti":"j-1"},"occurred_at":"2026-05-21T12:00:02.999999999Z"}"#,
        ),
        (
            "zone2_string_escapes",
            "minimal JCS string escaping (quote, backslash, line feed, tab), 2^53 exact, a negative fraction",
            r#"{"id":"0197a3c2-5e13-7000-8000-000000000004","zone_id":"zone-2","event_type":"step_up_issued","decision":"partial","policy_set_version_id":"psv-9","evaluation_status":"partial","metadata_json":{"big":9007199254740992,"neg":-12.25,"s":"line\nbreak \"quoted\" \\ tab\t"},"occurred_at":"2026-05-21T12:00:03Z"}"#,
        ),
        (
            "zone1_nulls_and_nesting",
            "a JSON null member stored as NULL, nested arrays, no fractional digits given",
            r#"{"id":"0197a3c2-5e14-7000-8000-000000000005","zone_id":"zone-1","event_type":"jti_collision","occurred_at":"2026-05-21T12:00:04.000001Z","metadata_json":null,"diagnostics_json":[null,{"x":[]}]}"#,
        ),
        (
            "zone2_labels",
            "a third row in zone-2",
            r#"{"id":"0197a3c2-5e15-7000-8000-000000000006","zone_id":"zone-2","event_type":"token_exchange","request_id":"req-6","decision":"allow","policy_set_id":"ps-2","policy_set_version_id":"psv-2","manifest_sha":"sha256:def","evaluation_status":"complete","determining_policies_json":[{"policy":"caracal-app-mint"},{"policy":"labels"}],"metadata_json":{"agent_labels":["a","b"],"application_id":"app-1","latency_ms":0.25},"occurred_at":"2026-05-21T12:00:05.25-00:30"}"#,
        ),
    ]
}

/// The negative cases: (name, data, the ledger's rejection code).
fn rejection_inputs() -> Vec<(&'static str, String, &'static str)> {
    let with = |member: &str| {
        format!(
            r#"{{"id":"0197a3c2-5e20-7000-8000-000000000001","zone_id":"zone-1","event_type":"token_exchange",{member},"occurred_at":"2026-05-21T12:00:00Z"}}"#
        )
    };
    vec![
        (
            "repeated_key",
            with(r#""metadata_json":{"a":1,"a":2}"#),
            "repeated_key",
        ),
        (
            "oversized_integer",
            with(r#""metadata_json":{"n":12345678901234567890}"#),
            "inexact_number",
        ),
        (
            "inexact_fraction",
            with(r#""metadata_json":{"n":0.30000000000000001}"#),
            "inexact_number",
        ),
        (
            "nul_character",
            with(r#""metadata_json":{"s":"a\u0000b"}"#),
            "nul_character",
        ),
        (
            "nul_in_key",
            with(r#""metadata_json":{"a\u0000":1}"#),
            "nul_character",
        ),
    ]
}

/// Time window cases: (name, occurred_at) judged at [`LEDGER_NOW`].
const TIME_CASES: [(&str, &str); 2] = [
    (
        "occurred_at_beyond_future_skew",
        "2026-05-21T13:00:00.000001Z",
    ),
    (
        "occurred_at_before_retention",
        "2025-05-21T11:59:59.999999Z",
    ),
];
const LEDGER_NOW: &str = "2026-05-21T12:00:00Z";
const MAX_FUTURE_SKEW_SECS: i64 = 3600;
const RETENTION_DAYS: i64 = 365;

fn key() -> HmacKey {
    HmacKey::from_hex(KEY_HEX).unwrap()
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn jcs(value: &Value) -> String {
    serde_json_canonicalizer::to_string(value).unwrap()
}

fn chain_message(chain: &str, seq: i64, prev: Option<&[u8]>, content: &[u8]) -> String {
    format!(
        "{CHAIN_DOMAIN}\n{chain}\n{seq}\n{}\n{}",
        prev.map(hex::encode).unwrap_or_default(),
        hex::encode(content)
    )
}

fn events(key: &HmacKey) -> Vec<Value> {
    let mut heads: HashMap<String, (i64, Vec<u8>)> = HashMap::new();
    let first_ingest = at("2026-05-21T12:00:01Z");
    let mut out = Vec::new();
    for (n, (name, note, data)) in chain_inputs().into_iter().enumerate() {
        let event = LedgerEvent::parse(data.as_bytes()).unwrap();
        let canonical = jcs(&event.canonical());
        let content = event.content_sha256().unwrap();
        let (seq, prev) = heads
            .get(&event.zone_id)
            .map_or((1, None), |(seq, hash)| (seq + 1, Some(hash.clone())));
        let ingested_at = first_ingest + Duration::seconds(i64::try_from(n).unwrap());
        let ingested = format_time(ingested_at);
        let hmac = chain_hmac(key, &event.zone_id, seq, prev.as_deref(), &content);
        let signature = ingest_signature(key, &content, &ingested);
        let row = AuditRow {
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
            content_sha256: content.to_vec(),
            prev_content_sha256: prev.clone(),
            chain_seq: seq,
            chain_hmac: Some(hmac.to_vec()),
            chain_key_id: Some(key.chain_key_id().to_owned()),
            ingest_signature: Some(signature.to_vec()),
        };
        out.push(json!({
            "name": name,
            "note": note,
            "data": data,
            "producer_sig": hmac_sha256_hex(key, &[data.as_bytes()]),
            "zone_id": event.zone_id,
            "chain_seq": seq,
            "canonical": canonical,
            "content_sha256": hex::encode(content),
            "prev_content_sha256": prev.as_ref().map(hex::encode),
            "chain_message": chain_message(&event.zone_id, seq, prev.as_deref(), &content),
            "chain_hmac": hex::encode(hmac),
            "ingested_at": ingested,
            "ingest_message": format!("{INGEST_DOMAIN}\n{}\n{ingested}", hex::encode(content)),
            "ingest_signature": hex::encode(signature),
            "row": serde_json::to_value(&row).unwrap(),
        }));
        heads.insert(event.zone_id.clone(), (seq, content.to_vec()));
    }
    out
}

fn rejections() -> Vec<Value> {
    let mut out: Vec<Value> = rejection_inputs()
        .into_iter()
        .map(|(name, data, _)| {
            let code = LedgerEvent::parse(data.as_bytes()).unwrap_err().code();
            json!({
                "name": name,
                "data": data,
                "code": code,
                "dlq_reason": format!("invalid_event:{code}"),
            })
        })
        .collect();
    let now = at(LEDGER_NOW);
    let window = Window {
        latest: now + Duration::seconds(MAX_FUTURE_SKEW_SECS),
        earliest: now - Duration::days(RETENTION_DAYS),
    };
    for (name, occurred_at) in TIME_CASES {
        let data = format!(
            r#"{{"id":"0197a3c2-5e21-7000-8000-000000000001","zone_id":"zone-1","event_type":"token_exchange","occurred_at":"{occurred_at}"}}"#
        );
        let entry = Entry {
            entry_id: "1-0".into(),
            id: Some("0197a3c2-5e21-7000-8000-000000000001".into()),
            data: Some(data.clone()),
            sig: None,
        };
        let reason = check(&entry, &LedgerKeys::default(), window).unwrap_err();
        out.push(json!({
            "name": name,
            "data": data,
            "ledger_now": LEDGER_NOW,
            "max_future_skew_secs": MAX_FUTURE_SKEW_SECS,
            "retention_days": RETENTION_DAYS,
            "code": reason,
            "dlq_reason": reason,
        }));
    }
    out
}

/// Admin actions: (chain zone, seq-independent members).
fn admin_inputs() -> Vec<AdminRow> {
    let base = |id: &str,
                zone: Option<&str>,
                action: (&str, &str),
                entity: (&str, &str),
                status: i32,
                payload: Value,
                occurred: &str| AdminRow {
        id: id.to_owned(),
        zone_id: zone.map(str::to_owned),
        request_id: Some(format!("req-{id}")),
        actor_id: "admtok-1".to_owned(),
        actor_name: Some("operator".to_owned()),
        actor_scope: Some(zone.map_or("global".to_owned(), |z| format!("zone:{z}"))),
        action: format!("{} {}", action.0, action.1),
        method: action.0.to_owned(),
        path: action.1.to_owned(),
        entity_type: Some(entity.0.to_owned()),
        entity_id: Some(entity.1.to_owned()),
        status_code: status,
        payload_json: Some(payload),
        occurred_at: at(occurred),
        hash_version: 1,
        content_sha256: Vec::new(),
        prev_content_sha256: None,
        chain_seq: 0,
        chain_hmac: None,
        chain_key_id: None,
        created_at: at(occurred),
    };
    let mut second = base(
        "0197a3c2-6000-7000-8000-000000000002",
        None,
        ("POST", "/v1/admin-tokens"),
        ("admin_token", "admtok-2"),
        201,
        json!({"name": "ci", "scope": "global", "token": null}),
        "2026-05-21T12:01:00.000002Z",
    );
    second.actor_name = None;
    vec![
        base(
            "0197a3c2-6000-7000-8000-000000000001",
            None,
            ("POST", "/v1/zones"),
            ("zone", "zone-1"),
            201,
            json!({"name": "Zone One", "slug": "zone-one", "dcr_enabled": false}),
            "2026-05-21T12:01:00.000001Z",
        ),
        second,
        base(
            "0197a3c2-6000-7000-8000-000000000003",
            Some("zone-1"),
            ("PUT", "/v1/zones/zone-1/resources/crm"),
            ("resource", "crm"),
            200,
            json!({"operation_enforcement": "enforced", "operations": ["read", "write"], "rate": 2.5}),
            "2026-05-21T12:01:01Z",
        ),
        base(
            "0197a3c2-6000-7000-8000-000000000004",
            Some("zone-1"),
            ("DELETE", "/v1/zones/zone-1/resources/crm"),
            ("resource", "crm"),
            204,
            Value::Null,
            "2026-05-21T12:01:02.5Z",
        ),
    ]
}

fn admin_events(key: &HmacKey) -> Vec<Value> {
    let mut heads: HashMap<String, (i64, Vec<u8>)> = HashMap::new();
    admin_inputs()
        .into_iter()
        .map(|mut row| {
            let chain = row.chain().to_owned();
            let (seq, prev) = heads
                .get(&chain)
                .map_or((1, None), |(seq, hash)| (seq + 1, Some(hash.clone())));
            let content = row.recompute_content().unwrap();
            let hmac = chain_hmac(key, &chain, seq, prev.as_deref(), &content);
            row.chain_seq = seq;
            row.prev_content_sha256 = prev.clone();
            row.content_sha256 = content.to_vec();
            row.chain_hmac = Some(hmac.to_vec());
            row.chain_key_id = Some(key.chain_key_id().to_owned());
            heads.insert(chain.clone(), (seq, content.to_vec()));
            json!({
                "chain": chain,
                "chain_seq": seq,
                "members": row.canonical(),
                "canonical": jcs(&row.canonical()),
                "content_sha256": hex::encode(content),
                "prev_content_sha256": prev.as_ref().map(hex::encode),
                "chain_message": chain_message(&chain, seq, prev.as_deref(), &content),
                "chain_hmac": hex::encode(hmac),
                "row": serde_json::to_value(&row).unwrap(),
            })
        })
        .collect()
}

fn document() -> Value {
    let key = key();
    json!({
        "description": "Audit chain vectors (storage-and-events.md §8.2, §8.3, §8.8). content_sha256 = SHA-256(domain LF canonical), canonical = RFC 8785 (JCS) of the 13 ledger members (14 admin members), null for NULL. chain_hmac = HMAC-SHA256(key, chain_message) with chain_message = \"caracal.audit.chain.v1\" LF chain LF chain_seq LF hex(prev or empty) LF hex(content); the chain is the zone id, or * for global admin actions. ingest_signature = HMAC-SHA256(key, ingest_message) with ingest_message = \"caracal.audit.ingest.v1\" LF hex(content) LF ingested_at. chain_key_id = first 16 hex of SHA-256(\"caracal.audit-hmac.v1\" LF key). producer_sig = HMAC-SHA256(key, data) as hex: the stream entry's sig when the producers use the same key. `row` is the stored row in the export line format (bytea as hex, jsonb as JSON, times with 6 fractional digits). Rejections name the ledger's code and dead-letter reason. Generated by control/audit/tests/vectors.rs (UPDATE_VECTORS=1 rewrites it); the worked example matches the spec literally.",
        "hash_version": 1,
        "domains": {
            "content": AUDIT_CONTENT_DOMAIN,
            "admin_content": ADMIN_AUDIT_CONTENT_DOMAIN,
            "chain": CHAIN_DOMAIN,
            "ingest": INGEST_DOMAIN,
            "key_id": "caracal.audit-hmac.v1",
        },
        "key_hex": KEY_HEX,
        "chain_key_id": key.chain_key_id(),
        "events": events(&key),
        "rejections": rejections(),
        "admin_events": admin_events(&key),
    })
}

fn vector_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crypto/vectors/audit-chain-v1.json")
}

/// The first path where `a` and `b` differ.
fn first_difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys()) {
                let here = format!("{path}.{key}");
                match (x.get(key), y.get(key)) {
                    (Some(u), Some(v)) => {
                        if let Some(found) = first_difference(&here, u, v) {
                            return Some(found);
                        }
                    }
                    _ => return Some(here),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("{path} (length {} vs {})", x.len(), y.len()));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (u, v))| first_difference(&format!("{path}[{i}]"), u, v))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: {a} vs {b}")),
    }
}

/// The file, checked against [`document`] (and first rewritten with `UPDATE_VECTORS=1`),
/// once per test process.
fn load() -> Value {
    static LOADED: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    LOADED.get_or_init(load_once).clone()
}

fn load_once() -> Value {
    let expected = document();
    let path = vector_path();
    if std::env::var("UPDATE_VECTORS").is_ok_and(|v| v == "1") {
        let mut text = serde_json::to_string_pretty(&expected).unwrap();
        text.push('\n');
        std::fs::write(&path, text).unwrap();
    }
    let stored: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    if let Some(path) = first_difference("$", &expected, &stored) {
        panic!(
            "audit-chain-v1.json differs from what the code computes at {path} (UPDATE_VECTORS=1 rewrites it)"
        );
    }
    stored
}

fn text<'a>(value: &'a Value, member: &str) -> &'a str {
    value[member]
        .as_str()
        .unwrap_or_else(|| panic!("{member} is not a string"))
}

fn bytes(value: &Value, member: &str) -> Vec<u8> {
    hex::decode(text(value, member)).unwrap()
}

#[test]
fn the_worked_example_matches_the_spec_literally() {
    let doc = load();
    let first = &doc["events"][0];
    assert_eq!(text(first, "name"), "spec_worked_example");
    assert_eq!(text(first, "data"), WORKED_EXAMPLE);
    assert_eq!(
        text(first, "canonical"),
        r#"{"decision":"allow","determining_policies_json":[{"policy":"caracal-app-mint"}],"diagnostics_json":[],"evaluation_status":"complete","event_type":"token_exchange","id":"0197a3c2-5e10-7d3a-9f1e-2b4c6d8e0f12","manifest_sha":null,"metadata_json":{"latency_ms":3.5,"resource":"resource://api"},"occurred_at":"2026-05-21T12:00:00.123456Z","policy_set_id":"ps-1","policy_set_version_id":"psv-1","request_id":"req-1","zone_id":"zone-1"}"#
    );
    assert_eq!(
        text(first, "content_sha256"),
        "66d38c79d34c405c0a96983845cfb56bc5f703b9991bb4ae5df944e2365ff2fb"
    );
    assert_eq!(text(&doc, "chain_key_id"), "615883fe5fe1bb57");
    assert_eq!(
        text(first, "chain_hmac"),
        "24bab472817576294a9f8423cb8ced8ba2df503fa5df8b29ea982df02ceeb577"
    );
    assert_eq!(text(first, "ingested_at"), "2026-05-21T12:00:01.000000Z");
    assert_eq!(
        text(first, "ingest_signature"),
        "140f1f3838e8bfa1b3bc9055e190e1576d2f03f7ef37162f3167b34eb534b045"
    );
    assert_eq!(
        text(first, "chain_message"),
        "caracal.audit.chain.v1\nzone-1\n1\n\n66d38c79d34c405c0a96983845cfb56bc5f703b9991bb4ae5df944e2365ff2fb"
    );
}

#[test]
fn every_chain_value_recomputes_from_the_file() {
    let doc = load();
    let key = HmacKey::from_hex(text(&doc, "key_hex")).unwrap();
    let events = doc["events"].as_array().unwrap();
    assert!(events.len() >= 5);
    let zones: std::collections::BTreeSet<&str> =
        events.iter().map(|e| text(e, "zone_id")).collect();
    assert!(zones.len() >= 2);
    let mut heads: HashMap<String, (i64, String)> = HashMap::new();
    let mut verifier = Verifier::new(Keyring::new([key.clone()]));
    for event in events {
        let name = text(event, "name");
        let data = text(event, "data");
        assert_eq!(
            hmac_sha256_hex(&key, &[data.as_bytes()]),
            text(event, "producer_sig"),
            "{name}"
        );
        let parsed = LedgerEvent::parse(data.as_bytes()).unwrap();
        assert_eq!(jcs(&parsed.canonical()), text(event, "canonical"), "{name}");
        // SHA-256 over the domain, a line feed and the canonical text, computed directly.
        let digest = Sha256::digest(format!("caracal.audit.v1\n{}", text(event, "canonical")));
        assert_eq!(hex::encode(digest), text(event, "content_sha256"), "{name}");
        // The chain position follows the zone's previous event.
        let zone = text(event, "zone_id");
        let (seq, prev) = heads
            .get(zone)
            .map_or((1, Value::Null), |(seq, hash)| (seq + 1, json!(hash)));
        assert_eq!(event["chain_seq"], json!(seq), "{name}");
        assert_eq!(event["prev_content_sha256"], prev, "{name}");
        // The HMACs over the printed messages.
        let message = text(event, "chain_message");
        assert_eq!(
            hex::encode(hmac_sha256(&key, &[message.as_bytes()])),
            text(event, "chain_hmac"),
            "{name}"
        );
        let message = text(event, "ingest_message");
        assert!(message.ends_with(text(event, "ingested_at")));
        assert_eq!(
            hex::encode(hmac_sha256(&key, &[message.as_bytes()])),
            text(event, "ingest_signature"),
            "{name}"
        );
        // The stored row verifies.
        let row: AuditRow = serde_json::from_value(event["row"].clone()).unwrap();
        assert_eq!(row.content_sha256, bytes(event, "content_sha256"));
        assert_eq!(row.chain_hmac, Some(bytes(event, "chain_hmac")));
        assert!(verifier.check(&row).is_empty(), "{name}");
        heads.insert(
            zone.to_owned(),
            (seq, text(event, "content_sha256").to_owned()),
        );
    }
    assert_eq!(
        verifier.tally().hmac_verified,
        u64::try_from(events.len()).unwrap()
    );
    assert_eq!(
        verifier.tally().signatures_verified,
        u64::try_from(events.len()).unwrap()
    );
}

#[test]
fn every_rejection_is_refused_with_its_code() {
    let doc = load();
    let rejections = doc["rejections"].as_array().unwrap();
    let codes: std::collections::BTreeSet<&str> =
        rejections.iter().map(|r| text(r, "code")).collect();
    for code in [
        "repeated_key",
        "inexact_number",
        "nul_character",
        "occurred_at_out_of_range",
    ] {
        assert!(codes.contains(code), "{code}");
    }
    for case in rejections {
        let data = text(case, "data");
        let expected = text(case, "dlq_reason");
        let reason = match case.get("ledger_now") {
            None => format!(
                "invalid_event:{}",
                LedgerEvent::parse(data.as_bytes()).unwrap_err().code()
            ),
            Some(now) => {
                let now = at(now.as_str().unwrap());
                let window = Window {
                    latest: now + Duration::seconds(case["max_future_skew_secs"].as_i64().unwrap()),
                    earliest: now - Duration::days(case["retention_days"].as_i64().unwrap()),
                };
                let entry = Entry {
                    entry_id: "1-0".into(),
                    id: Some(LedgerEvent::parse(data.as_bytes()).unwrap().id),
                    data: Some(data.to_owned()),
                    sig: None,
                };
                check(&entry, &LedgerKeys::default(), window).unwrap_err()
            }
        };
        assert_eq!(reason, expected, "{}", text(case, "name"));
    }
}

#[test]
fn the_admin_chain_recomputes_and_verifies() {
    let doc = load();
    let key = HmacKey::from_hex(text(&doc, "key_hex")).unwrap();
    let admin = doc["admin_events"].as_array().unwrap();
    assert!(admin.iter().any(|e| text(e, "chain") == "*"));
    assert!(admin.iter().any(|e| text(e, "chain") != "*"));
    let mut verifier = Verifier::new(Keyring::new([key.clone()]));
    for event in admin {
        let members = event["members"].as_object().unwrap();
        assert_eq!(members.len(), 14);
        assert!(members["status_code"].is_number());
        assert_eq!(jcs(&event["members"]), text(event, "canonical"));
        let digest = Sha256::digest(format!(
            "caracal.admin_audit.v1\n{}",
            text(event, "canonical")
        ));
        assert_eq!(hex::encode(digest), text(event, "content_sha256"));
        let message = text(event, "chain_message");
        assert!(message.starts_with(&format!(
            "caracal.audit.chain.v1\n{}\n",
            text(event, "chain")
        )));
        assert_eq!(
            hex::encode(hmac_sha256(&key, &[message.as_bytes()])),
            text(event, "chain_hmac")
        );
        let row: AdminRow = serde_json::from_value(event["row"].clone()).unwrap();
        assert_eq!(row.canonical(), event["members"]);
        assert!(verifier.check(&row).is_empty());
    }
    assert_eq!(
        verifier.tally().hmac_verified,
        u64::try_from(admin.len()).unwrap()
    );
}
