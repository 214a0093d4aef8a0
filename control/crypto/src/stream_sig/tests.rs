use std::collections::BTreeMap;

use proptest::prelude::*;

use super::{StreamSigError, canonical_stream_bytes, sign_stream_fields, verify_stream_fields};
use crate::mac::HmacKey;

const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const PREVIOUS_KEY: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
const STREAM: &str = "caracal.sessions.revoke";

fn key() -> HmacKey {
    HmacKey::from_hex(KEY).unwrap()
}

fn spec_fields() -> Vec<(&'static str, &'static str)> {
    vec![
        ("zone_id", "zone-1"),
        ("session_id", "authority-record-1"),
        ("reason", "grant_revoked"),
        ("grant_id", "grant-1"),
        ("outbox_id", "0197a3c2-5e10-7d3a-9f1e-2b4c6d8e0f12"),
    ]
}

fn with_sig<'a>(fields: &[(&'a str, &'a str)], sig: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut fields = fields.to_vec();
    fields.push(("_sig", sig));
    fields
}

#[test]
fn spec_worked_example_signs_to_the_published_sig() {
    let canonical = canonical_stream_bytes(STREAM, &spec_fields()).unwrap();
    assert_eq!(canonical.len(), 154);
    assert_eq!(
        canonical,
        b"caracal.sessions.revoke\ngrant_id=grant-1\noutbox_id=0197a3c2-5e10-7d3a-9f1e-2b4c6d8e0f12\nreason=grant_revoked\nsession_id=authority-record-1\nzone_id=zone-1\n"
    );
    assert_eq!(
        sign_stream_fields(&key(), STREAM, &spec_fields()).unwrap(),
        "339ac075987f1396409f3f49be9cfda9ec470355858af50a309a68134792f1b3"
    );
}

#[test]
fn signed_message_verifies_in_any_field_order() {
    let sig = sign_stream_fields(&key(), STREAM, &spec_fields()).unwrap();
    let mut fields = with_sig(&spec_fields(), &sig);
    fields.reverse();
    verify_stream_fields(&[&key()], STREAM, &fields).unwrap();
}

#[test]
fn owned_strings_are_accepted() {
    let fields: Vec<(String, String)> = spec_fields()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let sig = sign_stream_fields(&key(), STREAM, &fields).unwrap();
    let mut fields = fields;
    fields.push(("_sig".to_owned(), sig));
    verify_stream_fields(&[&key()], STREAM, &fields).unwrap();
}

#[test]
fn sign_ignores_an_existing_sig_field() {
    let plain = sign_stream_fields(&key(), STREAM, &spec_fields()).unwrap();
    let resigned = sign_stream_fields(&key(), STREAM, &with_sig(&spec_fields(), "stale")).unwrap();
    assert_eq!(plain, resigned);
}

#[test]
fn previous_key_still_verifies_during_rotation() {
    let previous = HmacKey::from_hex(PREVIOUS_KEY).unwrap();
    let sig = sign_stream_fields(&previous, STREAM, &spec_fields()).unwrap();
    let fields = with_sig(&spec_fields(), &sig);
    verify_stream_fields(&[&key(), &previous], STREAM, &fields).unwrap();
    assert_eq!(
        verify_stream_fields(&[&key()], STREAM, &fields),
        Err(StreamSigError::Mismatch)
    );
}

#[test]
fn verification_without_a_key_fails() {
    let sig = sign_stream_fields(&key(), STREAM, &spec_fields()).unwrap();
    let fields = with_sig(&spec_fields(), &sig);
    assert_eq!(
        verify_stream_fields(&[], STREAM, &fields),
        Err(StreamSigError::NoKey)
    );
}

#[test]
fn value_with_line_feed_is_rejected_by_sign_and_verify() {
    let mut fields = spec_fields();
    fields.push(("note", "a\nb"));
    let expected = Err(StreamSigError::ValueHasNewline {
        field: "note".to_owned(),
    });
    assert_eq!(sign_stream_fields(&key(), STREAM, &fields), expected);
    let sig = "0".repeat(64);
    assert_eq!(
        verify_stream_fields(&[&key()], STREAM, &with_sig(&fields, &sig)).map(|()| String::new()),
        expected
    );
}

#[test]
fn repeated_field_is_rejected() {
    let mut fields = spec_fields();
    fields.push(("zone_id", "zone-2"));
    assert_eq!(
        sign_stream_fields(&key(), STREAM, &fields),
        Err(StreamSigError::RepeatedField {
            field: "zone_id".to_owned()
        })
    );
}

#[test]
fn bad_field_names_are_rejected() {
    let long = "n".repeat(65);
    for name in ["Zone_id", "zone-id", "", "zöne", "_sig ", long.as_str()] {
        let mut fields = spec_fields();
        fields.push((name, "x"));
        assert!(
            matches!(
                sign_stream_fields(&key(), STREAM, &fields),
                Err(StreamSigError::BadFieldName { .. })
            ),
            "{name:?}"
        );
    }
}

#[test]
fn bad_field_name_in_error_is_shortened() {
    let long = "X".repeat(500);
    let err = sign_stream_fields(&key(), STREAM, &[(long.as_str(), "x")]).unwrap_err();
    let StreamSigError::BadFieldName { field } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(field.chars().count(), 65);
    assert!(err.to_string().len() < 200);
}

#[test]
fn stream_name_with_line_feed_is_rejected() {
    assert_eq!(
        sign_stream_fields(&key(), "a\nb", &spec_fields()),
        Err(StreamSigError::BadStreamName)
    );
}

#[test]
fn missing_sig_is_rejected() {
    assert_eq!(
        verify_stream_fields(&[&key()], STREAM, &spec_fields()),
        Err(StreamSigError::Missing)
    );
}

#[test]
fn sig_must_be_64_lowercase_hex_characters() {
    let sig = sign_stream_fields(&key(), STREAM, &spec_fields()).unwrap();
    let too_long = format!("{sig}0");
    let not_hex = format!("{}g", &sig[..63]);
    for bad in [
        sig.to_uppercase(),
        sig[..63].to_owned(),
        too_long,
        not_hex,
        String::new(),
    ] {
        assert_eq!(
            verify_stream_fields(&[&key()], STREAM, &with_sig(&spec_fields(), &bad)),
            Err(StreamSigError::Malformed),
            "{bad:?}"
        );
    }
}

#[test]
fn two_sig_fields_are_rejected() {
    let sig = sign_stream_fields(&key(), STREAM, &spec_fields()).unwrap();
    let fields = with_sig(&with_sig(&spec_fields(), &sig), &sig);
    assert_eq!(
        verify_stream_fields(&[&key()], STREAM, &fields),
        Err(StreamSigError::RepeatedField {
            field: "_sig".to_owned()
        })
    );
}

#[test]
fn empty_value_differs_from_omitted_field() {
    let mut with_empty = spec_fields();
    with_empty.push(("dedupe_key", ""));
    let a = sign_stream_fields(&key(), STREAM, &with_empty).unwrap();
    let b = sign_stream_fields(&key(), STREAM, &spec_fields()).unwrap();
    assert_ne!(a, b);
    let canonical = canonical_stream_bytes(STREAM, &with_empty).unwrap();
    assert!(
        canonical
            .windows(12)
            .any(|window| window == b"dedupe_key=\n")
    );
}

fn field_name() -> impl Strategy<Value = String> {
    "[a-z0-9_]{1,64}".prop_filter("not _sig", |name| name != "_sig")
}

fn field_set() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(field_name(), "[^\n]{0,40}", 0..12)
}

proptest! {
    #[test]
    fn any_valid_field_set_signs_then_verifies(
        stream in "[a-z.:_-]{1,40}",
        fields in field_set(),
        rotate in 0_usize..16,
    ) {
        let key = key();
        let mut pairs: Vec<(&str, &str)> =
            fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let sig = sign_stream_fields(&key, &stream, &pairs).unwrap();
        prop_assert_eq!(sig.len(), 64);
        if !pairs.is_empty() {
            let by = rotate % pairs.len();
            pairs.rotate_left(by);
        }
        pairs.push(("_sig", &sig));
        prop_assert_eq!(verify_stream_fields(&[&key], &stream, &pairs), Ok(()));
    }

    #[test]
    fn changing_any_field_value_fails_verification(
        stream in "[a-z.:_-]{1,40}",
        fields in field_set().prop_filter("at least one field", |fields| !fields.is_empty()),
        pick in any::<prop::sample::Index>(),
        suffix in "[^\n]{1,8}",
    ) {
        let key = key();
        let pairs: Vec<(&str, &str)> =
            fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let sig = sign_stream_fields(&key, &stream, &pairs).unwrap();
        let index = pick.index(pairs.len());
        let changed = format!("{}{suffix}", pairs[index].1);
        let mut tampered = pairs.clone();
        tampered[index].1 = &changed;
        tampered.push(("_sig", &sig));
        prop_assert_eq!(
            verify_stream_fields(&[&key], &stream, &tampered),
            Err(StreamSigError::Mismatch)
        );
        // Truncating the value (when it has any) must fail too.
        if let Some((last, _)) = pairs[index].1.char_indices().last() {
            let shorter = &pairs[index].1[..last];
            let mut tampered = pairs.clone();
            tampered[index].1 = shorter;
            tampered.push(("_sig", &sig));
            prop_assert_eq!(
                verify_stream_fields(&[&key], &stream, &tampered),
                Err(StreamSigError::Mismatch)
            );
        }
    }
}
