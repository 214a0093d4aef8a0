use super::*;
use crate::bindings::{Header, HeaderOp};
use crate::{CredentialKind, HostCredential};
use zeroize::Zeroizing;

fn credentials() -> CredentialSet {
    let mut set = CredentialSet::new();
    set.insert(HostCredential::new(
        "primary",
        CredentialKind::ApiKey,
        Zeroizing::new(b"k-123".to_vec()),
    ));
    set
}

fn attach(name: &str, handle: &str, scheme: Option<&str>) -> HeaderOp {
    HeaderOp::AttachHeader(crate::bindings::AttachHeader {
        name: name.to_owned(),
        handle: handle.to_owned(),
        scheme: scheme.map(str::to_owned),
    })
}

fn set(name: &str, value: &str) -> HeaderOp {
    HeaderOp::SetHeader(Header {
        name: name.to_owned(),
        value: value.to_owned(),
    })
}

fn refused(ops: Vec<HeaderOp>, rules: &InjectRules) -> String {
    match check_ops(ops, &credentials(), rules) {
        Ok(ops) => panic!("accepted: {ops:?}"),
        Err(failure) => {
            assert_eq!(failure.cause, FailureCause::BadOutput);
            failure.detail
        }
    }
}

#[test]
fn valid_operations_are_accepted_in_order() {
    let ops = check_ops(
        vec![
            attach("authorization", "primary", Some("Bearer")),
            set("x-static", "v"),
            HeaderOp::RemoveHeader("x-debug".to_owned()),
            HeaderOp::AttachQuery(crate::bindings::AttachQuery {
                param: "key".to_owned(),
                handle: "primary".to_owned(),
            }),
        ],
        &credentials(),
        &InjectRules::default(),
    )
    .unwrap();
    assert_eq!(ops.len(), 4);
    assert!(
        matches!(&ops[0], CheckedOp::AttachHeader { name, scheme: Some(s), .. } if name == "authorization" && s == "Bearer")
    );
    assert!(
        matches!(&ops[1], CheckedOp::SetHeader { name, value } if name == "x-static" && value == "v")
    );
}

#[test]
fn plain_writes_of_credential_headers_are_refused() {
    for name in ["authorization", "cookie"] {
        let detail = refused(vec![set(name, "Bearer stolen")], &InjectRules::default());
        assert!(
            detail.contains("only be written with attach-header"),
            "{detail}"
        );
        refused(
            vec![HeaderOp::RemoveHeader(name.to_owned())],
            &InjectRules::default(),
        );
    }
}

#[test]
fn reserved_headers_are_refused() {
    for name in [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
        "proxy-authorization",
        "x-caracal-user",
        "x-forwarded-for",
        "forwarded",
        "x-real-ip",
    ] {
        let detail = refused(vec![set(name, "x")], &InjectRules::default());
        assert!(detail.contains("reserved"), "{name}: {detail}");
        refused(vec![attach(name, "primary", None)], &InjectRules::default());
    }
}

#[test]
fn a_second_write_of_the_credential_header_is_refused() {
    let placed = InjectRules {
        placed_header: Some(HeaderName::from_static("x-api-key")),
    };
    let detail = refused(vec![attach("x-api-key", "primary", None)], &placed);
    assert!(detail.contains("second write"), "{detail}");
    refused(vec![set("x-api-key", "other")], &placed);
    refused(
        vec![HeaderOp::RemoveHeader("x-api-key".to_owned())],
        &placed,
    );
    let twice = vec![
        attach("authorization", "primary", None),
        attach("authorization", "primary", Some("Bearer")),
    ];
    assert!(refused(twice, &InjectRules::default()).contains("second write"));
}

#[test]
fn bad_names_values_schemes_and_handles_are_refused() {
    let rules = InjectRules::default();
    assert!(refused(vec![set("X-Upper", "v")], &rules).contains("lowercase"));
    assert!(refused(vec![set("bad name", "v")], &rules).contains("not a valid header name"));
    assert!(
        refused(vec![set("x-a", "line\r\nbreak")], &rules).contains("not a valid header value")
    );
    assert!(
        refused(vec![attach("x-key", "secondary", None)], &rules)
            .contains("unknown credential handle")
    );
    assert!(
        refused(vec![attach("x-key", "primary", Some("Bad Scheme"))], &rules).contains("scheme")
    );
}

#[test]
fn oversized_output_is_refused() {
    let many: Vec<HeaderOp> = (0..MAX_OPS + 1)
        .map(|i| set(&format!("x-h{i}"), "v"))
        .collect();
    assert!(refused(many, &InjectRules::default()).contains("operations"));
    let big = "v".repeat(MAX_TOTAL_BYTES + 1);
    assert!(refused(vec![set("x-big", &big)], &InjectRules::default()).contains("bytes"));
}

#[test]
fn a_value_longer_than_eight_kib_is_refused() {
    let long = "v".repeat(MAX_VALUE_BYTES + 1);
    assert!(refused(vec![set("x-long", &long)], &InjectRules::default()).contains("longer than"));
    let fits = "v".repeat(MAX_VALUE_BYTES);
    assert!(
        check_ops(
            vec![set("x-long", &fits)],
            &credentials(),
            &InjectRules::default()
        )
        .is_ok()
    );
}
