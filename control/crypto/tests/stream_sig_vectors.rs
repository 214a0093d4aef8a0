//! Runs every vector and rejection case in `vectors/stream-sig.json` through
//! the public API.

use control_crypto::{
    HmacKey, StreamSigError, canonical_stream_bytes, sign_stream_fields, verify_stream_fields,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct VectorFile {
    vectors: Vec<Vector>,
    rejections: Vec<Rejection>,
}

#[derive(Deserialize)]
struct Vector {
    name: String,
    source: String,
    key_hex: String,
    stream: String,
    fields: Vec<(String, String)>,
    canonical: String,
    canonical_len: usize,
    sig: String,
}

#[derive(Deserialize)]
struct Rejection {
    name: String,
    operation: String,
    key_hex: String,
    stream: String,
    fields: Vec<(String, String)>,
    error: String,
}

fn load() -> Result<VectorFile, Box<dyn std::error::Error>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/stream-sig.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

fn error_kind(err: &StreamSigError) -> &'static str {
    match err {
        StreamSigError::ValueHasNewline { .. } => "value_has_newline",
        StreamSigError::RepeatedField { .. } => "repeated_field",
        StreamSigError::BadFieldName { .. } => "bad_field_name",
        StreamSigError::BadStreamName => "bad_stream_name",
        StreamSigError::Missing => "missing",
        StreamSigError::Malformed => "malformed",
        StreamSigError::Mismatch => "mismatch",
        StreamSigError::NoKey => "no_key",
        _ => "unknown",
    }
}

#[test]
fn stream_sig_vectors_sign_and_verify() {
    let file = load().unwrap();
    assert!(file.vectors.len() >= 3);
    for sources in ["spec:", "upstream:", "computed:"] {
        assert!(
            file.vectors.iter().any(|v| v.source.starts_with(sources)),
            "no {sources} vector"
        );
    }
    for vector in &file.vectors {
        let name = &vector.name;
        let key = HmacKey::from_hex(&vector.key_hex).unwrap();
        let canonical = canonical_stream_bytes(&vector.stream, &vector.fields).unwrap();
        assert_eq!(canonical.len(), vector.canonical_len, "{name}");
        assert_eq!(canonical, vector.canonical.as_bytes(), "{name}");
        let sig = sign_stream_fields(&key, &vector.stream, &vector.fields).unwrap();
        assert_eq!(sig, vector.sig, "{name}");
        let mut signed = vector.fields.clone();
        signed.push(("_sig".to_owned(), vector.sig.clone()));
        verify_stream_fields(&[&key], &vector.stream, &signed)
            .unwrap_or_else(|err| panic!("{name}: {err}"));
    }
}

#[test]
fn stream_sig_rejections_are_rejected_with_the_named_error() {
    let file = load().unwrap();
    assert!(!file.rejections.is_empty());
    for case in &file.rejections {
        let name = &case.name;
        let key = HmacKey::from_hex(&case.key_hex).unwrap();
        let verified = verify_stream_fields(&[&key], &case.stream, &case.fields);
        let err = verified.expect_err(name);
        assert_eq!(error_kind(&err), case.error, "{name}: {err}");
        match case.operation.as_str() {
            "verify" => {}
            "both" => {
                let err = sign_stream_fields(&key, &case.stream, &case.fields).expect_err(name);
                assert_eq!(error_kind(&err), case.error, "{name}: {err}");
            }
            other => panic!("{name}: unknown operation {other}"),
        }
    }
}
