use serde::Deserialize;

use super::{SealContext, SealError, associated_data, encode_envelope, envelope_dek_id};
use crate::kek::{Kek, KekRing};

const SPEC_KEK: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const OTHER_KEK: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";
const PLAINTEXT: &[u8] = br#"{"api_key":"sk-test-123"}"#;

fn ring(current: &str, previous: Option<&str>) -> KekRing {
    KekRing::new(
        Kek::from_hex(current).unwrap(),
        previous.map(|hex| Kek::from_hex(hex).unwrap()),
    )
    .unwrap()
}

fn ctx() -> SealContext<'static> {
    SealContext {
        table: "secrets",
        column: "ciphertext",
        zone_id: "zone-1",
        row_id: "0197a3c2-0000-7000-8000-000000000001",
    }
}

#[derive(Deserialize)]
struct VectorFile {
    vectors: Vec<SealVector>,
}

#[derive(Deserialize)]
struct SealVector {
    name: String,
    kek_hex: String,
    dek_id: String,
    nonce_hex: String,
    table: String,
    column: String,
    zone_id: String,
    row_id: String,
    plaintext: String,
    aad_hex: String,
    ciphertext_hex: String,
    envelope_hex: String,
}

fn load_vectors() -> Vec<SealVector> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/seal-v1.json");
    let text = std::fs::read_to_string(path).unwrap();
    let file: VectorFile = serde_json::from_str(&text).unwrap();
    assert!(!file.vectors.is_empty());
    file.vectors
}

#[test]
fn seal_vectors_from_file_reproduce() {
    for vector in load_vectors() {
        let name = &vector.name;
        let ring = ring(&vector.kek_hex, None);
        assert_eq!(ring.current().dek_id(), vector.dek_id.as_str(), "{name}");
        let ctx = SealContext {
            table: &vector.table,
            column: &vector.column,
            zone_id: &vector.zone_id,
            row_id: &vector.row_id,
        };
        let aad = associated_data(&ctx, ring.current().dek_id()).unwrap();
        assert_eq!(hex::encode(aad), vector.aad_hex, "{name}");

        let nonce: [u8; 12] = hex::decode(&vector.nonce_hex).unwrap().try_into().unwrap();
        let sealed = ring
            .seal_with_nonce(&ctx, nonce, vector.plaintext.as_bytes())
            .unwrap();
        assert_eq!(
            hex::encode(&sealed.ciphertext),
            vector.ciphertext_hex,
            "{name}"
        );
        assert_eq!(sealed.dek_id.as_str(), vector.dek_id, "{name}");
        assert_eq!(
            hex::encode(encode_envelope(&sealed).unwrap()),
            vector.envelope_hex,
            "{name}"
        );

        let ciphertext = hex::decode(&vector.ciphertext_hex).unwrap();
        let opened = ring
            .open(&ctx, &nonce, &ciphertext, &vector.dek_id)
            .unwrap();
        assert_eq!(opened.as_slice(), vector.plaintext.as_bytes(), "{name}");
        let envelope = hex::decode(&vector.envelope_hex).unwrap();
        assert_eq!(envelope_dek_id(&envelope).unwrap(), vector.dek_id, "{name}");
        let opened = ring.open_envelope(&ctx, &envelope).unwrap();
        assert_eq!(opened.as_slice(), vector.plaintext.as_bytes(), "{name}");
    }
}

#[test]
fn seal_then_open_round_trips() {
    let ring = ring(SPEC_KEK, None);
    let sealed = ring.seal(&ctx(), PLAINTEXT).unwrap();
    assert_eq!(sealed.dek_id, "kek:fad070c93b661a58");
    assert_eq!(sealed.ciphertext.len(), PLAINTEXT.len() + 16);
    let opened = ring
        .open(
            &ctx(),
            &sealed.nonce,
            &sealed.ciphertext,
            sealed.dek_id.as_str(),
        )
        .unwrap();
    assert_eq!(opened.as_slice(), PLAINTEXT);
}

#[test]
fn empty_plaintext_round_trips() {
    let ring = ring(SPEC_KEK, None);
    let sealed = ring.seal(&ctx(), b"").unwrap();
    let opened = ring
        .open(
            &ctx(),
            &sealed.nonce,
            &sealed.ciphertext,
            sealed.dek_id.as_str(),
        )
        .unwrap();
    assert!(opened.is_empty());
}

#[test]
fn each_seal_draws_a_fresh_nonce() {
    let ring = ring(SPEC_KEK, None);
    let a = ring.seal(&ctx(), PLAINTEXT).unwrap();
    let b = ring.seal(&ctx(), PLAINTEXT).unwrap();
    assert_ne!(a.nonce, b.nonce);
    assert_ne!(a.ciphertext, b.ciphertext);
}

#[test]
fn wrong_kek_reports_key_mismatch_naming_only_ids() {
    let sealed = ring(OTHER_KEK, None).seal(&ctx(), PLAINTEXT).unwrap();
    let err = ring(SPEC_KEK, None)
        .open(
            &ctx(),
            &sealed.nonce,
            &sealed.ciphertext,
            sealed.dek_id.as_str(),
        )
        .unwrap_err();
    assert!(matches!(err, SealError::KeyMismatch { .. }), "{err:?}");
    let message = err.to_string();
    assert_eq!(
        message,
        format!(
            "key does not match: value is sealed under {}; configured ZONE_KEK is kek:fad070c93b661a58 (ZONE_KEK_PREVIOUS unset)",
            sealed.dek_id
        )
    );
    assert!(!message.contains("sk-test"));
    assert!(!message.contains(SPEC_KEK) && !message.contains(OTHER_KEK));
}

#[test]
fn key_mismatch_names_the_previous_key_when_set() {
    let third = "2f2e2d2c2b2a292827262524232221201f1e1d1c1b1a19181716151413121110";
    let sealed = ring(third, None).seal(&ctx(), PLAINTEXT).unwrap();
    let keys = ring(SPEC_KEK, Some(OTHER_KEK));
    let previous_id = keys.previous().unwrap().dek_id().clone();
    let err = keys
        .open(
            &ctx(),
            &sealed.nonce,
            &sealed.ciphertext,
            sealed.dek_id.as_str(),
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .ends_with(&format!("(ZONE_KEK_PREVIOUS is {previous_id})")),
        "{err}"
    );
}

#[test]
fn previous_kek_still_opens_and_new_seals_use_current() {
    let old = ring(OTHER_KEK, None);
    let sealed = old.seal(&ctx(), PLAINTEXT).unwrap();
    let rotating = ring(SPEC_KEK, Some(OTHER_KEK));
    let opened = rotating
        .open(
            &ctx(),
            &sealed.nonce,
            &sealed.ciphertext,
            sealed.dek_id.as_str(),
        )
        .unwrap();
    assert_eq!(opened.as_slice(), PLAINTEXT);
    let resealed = rotating.seal(&ctx(), &opened).unwrap();
    assert_eq!(resealed.dek_id, "kek:fad070c93b661a58");
}

fn assert_unauthentic_when_moved(moved: SealContext<'_>) {
    let ring = ring(SPEC_KEK, None);
    let sealed = ring.seal(&ctx(), PLAINTEXT).unwrap();
    let err = ring
        .open(
            &moved,
            &sealed.nonce,
            &sealed.ciphertext,
            sealed.dek_id.as_str(),
        )
        .unwrap_err();
    assert!(matches!(err, SealError::Unauthentic { .. }), "{err:?}");
    let message = err.to_string();
    assert_eq!(
        message,
        format!(
            "ciphertext does not authenticate for {}.{} row {} under kek:fad070c93b661a58 (moved, altered, or sealed for another row)",
            moved.table, moved.column, moved.row_id
        )
    );
    assert!(!message.contains("sk-test"));
}

#[test]
fn ciphertext_moved_to_another_row_does_not_authenticate() {
    assert_unauthentic_when_moved(SealContext {
        row_id: "0197a3c2-0000-7000-8000-000000000002",
        ..ctx()
    });
}

#[test]
fn ciphertext_moved_to_another_column_does_not_authenticate() {
    assert_unauthentic_when_moved(SealContext {
        column: "public_jwk",
        ..ctx()
    });
}

#[test]
fn ciphertext_moved_to_another_zone_does_not_authenticate() {
    assert_unauthentic_when_moved(SealContext {
        zone_id: "zone-2",
        ..ctx()
    });
}

#[test]
fn ciphertext_moved_to_another_table_does_not_authenticate() {
    assert_unauthentic_when_moved(SealContext {
        table: "provider_grants",
        ..ctx()
    });
}

#[test]
fn any_tampered_byte_does_not_authenticate() {
    let ring = ring(SPEC_KEK, None);
    let sealed = ring.seal(&ctx(), PLAINTEXT).unwrap();
    for index in 0..sealed.ciphertext.len() {
        let mut ciphertext = sealed.ciphertext.clone();
        ciphertext[index] ^= 0x01;
        let err = ring
            .open(&ctx(), &sealed.nonce, &ciphertext, sealed.dek_id.as_str())
            .unwrap_err();
        assert!(matches!(err, SealError::Unauthentic { .. }), "byte {index}");
    }
    let mut nonce = sealed.nonce;
    nonce[0] ^= 0x80;
    let err = ring
        .open(&ctx(), &nonce, &sealed.ciphertext, sealed.dek_id.as_str())
        .unwrap_err();
    assert!(matches!(err, SealError::Unauthentic { .. }));
}

#[test]
fn truncated_ciphertext_does_not_authenticate() {
    let ring = ring(SPEC_KEK, None);
    let sealed = ring.seal(&ctx(), PLAINTEXT).unwrap();
    for len in [0, 1, 15, 16, sealed.ciphertext.len() - 1] {
        let err = ring
            .open(
                &ctx(),
                &sealed.nonce,
                &sealed.ciphertext[..len],
                sealed.dek_id.as_str(),
            )
            .unwrap_err();
        assert!(matches!(err, SealError::Unauthentic { .. }), "length {len}");
    }
}

#[test]
fn nonce_of_wrong_length_is_rejected() {
    let ring = ring(SPEC_KEK, None);
    let sealed = ring.seal(&ctx(), PLAINTEXT).unwrap();
    let err = ring
        .open(
            &ctx(),
            &sealed.nonce[..11],
            &sealed.ciphertext,
            sealed.dek_id.as_str(),
        )
        .unwrap_err();
    assert!(matches!(err, SealError::BadNonceLength { found: 11 }));
}

#[test]
fn context_with_nul_byte_is_rejected() {
    let ring = ring(SPEC_KEK, None);
    let err = ring
        .seal(
            &SealContext {
                row_id: "row\0id",
                ..ctx()
            },
            PLAINTEXT,
        )
        .unwrap_err();
    assert!(matches!(err, SealError::ContextHasNul { part: "row_id" }));
}

#[test]
fn envelope_round_trips() {
    let ring = ring(SPEC_KEK, None);
    let envelope = ring.seal_envelope(&ctx(), PLAINTEXT).unwrap();
    assert_eq!(envelope[0], 0x01);
    assert_eq!(usize::from(envelope[1]), "kek:fad070c93b661a58".len());
    assert_eq!(envelope_dek_id(&envelope).unwrap(), "kek:fad070c93b661a58");
    assert_eq!(envelope.len(), 2 + 20 + 12 + PLAINTEXT.len() + 16);
    let opened = ring.open_envelope(&ctx(), &envelope).unwrap();
    assert_eq!(opened.as_slice(), PLAINTEXT);
}

#[test]
fn envelope_under_unknown_key_reports_key_mismatch() {
    let envelope = ring(OTHER_KEK, None)
        .seal_envelope(&ctx(), PLAINTEXT)
        .unwrap();
    let err = ring(SPEC_KEK, None)
        .open_envelope(&ctx(), &envelope)
        .unwrap_err();
    assert!(matches!(err, SealError::KeyMismatch { .. }));
    assert!(err.to_string().contains("key does not match"));
}

#[test]
fn envelope_moved_to_another_row_does_not_authenticate() {
    let ring = ring(SPEC_KEK, None);
    let envelope = ring.seal_envelope(&ctx(), PLAINTEXT).unwrap();
    let moved = SealContext {
        row_id: "another-row",
        ..ctx()
    };
    let err = ring.open_envelope(&moved, &envelope).unwrap_err();
    assert!(matches!(err, SealError::Unauthentic { .. }));
}

#[test]
fn malformed_envelopes_are_typed_errors() {
    let ring = ring(SPEC_KEK, None);
    let envelope = ring.seal_envelope(&ctx(), PLAINTEXT).unwrap();
    // Every strict prefix is malformed (or, past the tag length, unauthentic).
    for len in 0..envelope.len() {
        match ring.open_envelope(&ctx(), &envelope[..len]) {
            Err(SealError::MalformedEnvelope { .. }) => assert!(len < 2 + 20 + 12 + 16),
            Err(SealError::Unauthentic { .. }) => assert!(len >= 2 + 20 + 12 + 16),
            other => panic!("prefix of {len} bytes: {other:?}"),
        }
    }
    let mut wrong_version = envelope.clone();
    wrong_version[0] = 0x02;
    assert!(matches!(
        ring.open_envelope(&ctx(), &wrong_version),
        Err(SealError::UnsupportedEnvelopeVersion { version: 0x02 })
    ));
    let mut zero_len = envelope.clone();
    zero_len[1] = 0;
    assert!(matches!(
        ring.open_envelope(&ctx(), &zero_len),
        Err(SealError::MalformedEnvelope { .. })
    ));
    let mut too_long = envelope.clone();
    too_long[1] = 0xff;
    assert!(matches!(
        ring.open_envelope(&ctx(), &too_long),
        Err(SealError::MalformedEnvelope { .. })
    ));
    let mut not_utf8 = envelope.clone();
    not_utf8[2] = 0xff;
    assert!(matches!(
        ring.open_envelope(&ctx(), &not_utf8),
        Err(SealError::MalformedEnvelope { .. })
    ));
    let empty = ring.open_envelope(&ctx(), &[]).unwrap_err();
    assert_eq!(empty.to_string(), "sealed envelope is malformed: empty");
}

#[test]
fn envelope_with_other_dek_id_bytes_reports_key_mismatch() {
    let ring = ring(SPEC_KEK, None);
    let mut envelope = ring.seal_envelope(&ctx(), PLAINTEXT).unwrap();
    envelope[2 + 4] = b'0';
    let err = ring.open_envelope(&ctx(), &envelope).unwrap_err();
    assert!(matches!(err, SealError::KeyMismatch { .. }), "{err:?}");
}

#[test]
fn key_mismatch_escapes_a_hostile_dek_id() {
    let ring = ring(SPEC_KEK, None);
    let hostile = format!("kek:evil\nforged log line{}", "x".repeat(200));
    let err = ring.open(&ctx(), &[0; 12], &[0; 32], &hostile).unwrap_err();
    let message = err.to_string();
    assert!(!message.contains('\n'), "{message}");
    assert!(message.contains("kek:evil\\nforged"), "{message}");
    assert!(message.len() < 300, "{message}");
}
