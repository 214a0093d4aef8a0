use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::input::{Action, Context, DelegationEdge, Principal, Resource, SCHEMA_VERSION};

const GRANTS_A: &str = r#"package caracal.authz

import rego.v1

# caracal:data-document

app_ids := {"crm": "app-crm"}

grants["resource://crm"] := {"application": "crm", "roles": {"reader": ["crm:read"]}}
"#;

const GRANTS_B: &str = r#"package caracal.authz

import rego.v1

# caracal:data-document

grants["resource://billing"] := {"application": "crm", "roles": {"reader": ["billing:read"]}}

restrict contains x if {
	some x in []
}
"#;

fn document(id: &str, content: &str) -> PolicyDocument {
    PolicyDocument {
        id: id.to_owned(),
        content: content.to_owned(),
        content_sha256: content_sha256(content),
        schema_version: SCHEMA_VERSION.to_owned(),
    }
}

fn source(documents: Vec<PolicyDocument>) -> BundleSource {
    let manifest: Vec<String> = documents.iter().map(|d| d.id.clone()).collect();
    BundleSource {
        policy_set_id: "ps-1".to_owned(),
        policy_set_version_id: "psv-1".to_owned(),
        manifest_sha256: manifest_sha256(&manifest),
        manifest,
        documents,
    }
}

fn data_document(body: &str) -> String {
    format!("package caracal.authz\n\nimport rego.v1\n\n# caracal:data-document\n\n{body}\n")
}

fn build(contents: &[&str]) -> Result<Bundle, BundleError> {
    let documents = contents
        .iter()
        .enumerate()
        .map(|(index, content)| document(&format!("pv-{index}"), content))
        .collect();
    Bundle::build(source(documents), &PolicyConfig::default())
}

fn bad_shape_root(result: Result<Bundle, BundleError>) -> String {
    match result {
        Err(BundleError::BadShape { root, .. }) => root,
        other => panic!("expected a shape rejection, got {other:?}"),
    }
}

fn mint_input(requested: Vec<String>) -> PolicyInput {
    PolicyInput::new(
        Principal::application("app-crm", "zone-1").with_agent_session("as-1", "task", ["reader"]),
        Resource::new("res-1", "resource://crm", ["crm:read"]),
        Action::token_exchange(),
        Context::for_client("app-crm")
            .with_agent_session_id("as-1")
            .with_requested_scopes(requested.clone()),
    )
    .with_delegation_edge(DelegationEdge::new("edge-1", requested))
}

#[test]
fn a_bundle_records_its_provenance_and_the_contract_identity() {
    let bundle = build(&[GRANTS_A]).unwrap();
    let expected_manifest = manifest_sha256(&["pv-0"]);
    assert_eq!(
        bundle.provenance(),
        &Provenance {
            policy_set_id: "ps-1".into(),
            policy_set_version_id: "psv-1".into(),
            manifest_sha256: expected_manifest,
            contract_version: "2026-07-12".into(),
            contract_sha256: contract_sha256(),
        }
    );
    assert!(!bundle.is_deny_all());
}

#[test]
fn incremental_rules_across_documents_materialize_into_one_root_and_sets_become_arrays() {
    let bundle = build(&[GRANTS_A, GRANTS_B]).unwrap();
    assert_eq!(
        bundle.data(),
        &json!({
            "app_ids": {"crm": "app-crm"},
            "grants": {
                "resource://billing": {"application": "crm", "roles": {"reader": ["billing:read"]}},
                "resource://crm": {"application": "crm", "roles": {"reader": ["crm:read"]}}
            },
            "restrict": []
        })
    );
}

#[test]
fn roots_may_be_computed_from_other_roots() {
    let content = data_document(
        "app_ids := {\"crm\": \"app-crm\"}\n\nrisk := [{\"scope\": sprintf(\"%s:read\", [k]), \"tier\": \"low\"} | some k, _ in data.caracal.authz.app_ids]",
    );
    let bundle = build(&[&content]).unwrap();
    assert_eq!(
        bundle.data()["risk"],
        json!([{"scope": "crm:read", "tier": "low"}])
    );
}

#[test]
fn deny_all_answers_the_fixed_document_with_empty_provenance() {
    let fallback = Bundle::deny_all();
    assert!(fallback.is_deny_all());
    assert_eq!(
        fallback.provenance(),
        &Provenance {
            policy_set_id: String::new(),
            policy_set_version_id: String::new(),
            manifest_sha256: String::new(),
            contract_version: CONTRACT_VERSION.to_owned(),
            contract_sha256: contract_sha256(),
        }
    );
    let decision = fallback
        .evaluate(&mint_input(vec!["crm:read".into()]))
        .unwrap();
    assert_eq!(
        decision.to_result_document(),
        json!({"decision":"deny","evaluation_status":"complete","determining_policies":[],"diagnostics":[{"reason":"no_active_policy_set"}]})
    );
}

#[test]
fn a_content_hash_mismatch_rejects_the_bundle() {
    let mut tampered = document("pv-0", GRANTS_A);
    tampered.content.push_str("\nrestrict := []\n");
    let err = Bundle::build(source(vec![tampered]), &PolicyConfig::default()).unwrap_err();
    assert!(
        matches!(err, BundleError::ContentHashMismatch { ref policy_version_id, .. } if policy_version_id == "pv-0"),
        "{err}"
    );
}

#[test]
fn a_manifest_hash_mismatch_rejects_the_bundle() {
    let mut source = source(vec![document("pv-0", GRANTS_A), document("pv-1", GRANTS_B)]);
    source.manifest.reverse();
    let err = Bundle::build(source, &PolicyConfig::default()).unwrap_err();
    assert!(
        matches!(err, BundleError::ManifestHashMismatch { .. }),
        "{err}"
    );
}

#[test]
fn manifests_must_name_one_to_256_unique_supplied_versions() {
    let empty = source(Vec::new());
    assert!(matches!(
        Bundle::build(empty, &PolicyConfig::default()),
        Err(BundleError::ManifestSize { count: 0 })
    ));

    let too_many: Vec<PolicyDocument> = (0..257)
        .map(|i| document(&format!("pv-{i}"), GRANTS_A))
        .collect();
    assert!(matches!(
        Bundle::build(source(too_many), &PolicyConfig::default()),
        Err(BundleError::ManifestSize { count: 257 })
    ));

    let mut duplicate = source(vec![document("pv-0", GRANTS_A)]);
    duplicate.manifest.push("pv-0".into());
    duplicate.manifest_sha256 = manifest_sha256(&duplicate.manifest);
    assert!(matches!(
        Bundle::build(duplicate, &PolicyConfig::default()),
        Err(BundleError::DuplicateManifestEntry { .. })
    ));

    let mut missing = source(vec![document("pv-0", GRANTS_A)]);
    missing.manifest.push("pv-9".into());
    missing.manifest_sha256 = manifest_sha256(&missing.manifest);
    assert!(matches!(
        Bundle::build(missing, &PolicyConfig::default()),
        Err(BundleError::MissingDocument { ref policy_version_id }) if policy_version_id == "pv-9"
    ));

    let mut extra = source(vec![document("pv-0", GRANTS_A)]);
    extra.documents.push(document("pv-7", GRANTS_B));
    assert!(matches!(
        Bundle::build(extra, &PolicyConfig::default()),
        Err(BundleError::UnexpectedDocument { ref policy_version_id }) if policy_version_id == "pv-7"
    ));

    let mut twice = source(vec![document("pv-0", GRANTS_A)]);
    twice.documents.push(document("pv-0", GRANTS_A));
    assert!(matches!(
        Bundle::build(twice, &PolicyConfig::default()),
        Err(BundleError::UnexpectedDocument { .. })
    ));
}

#[test]
fn an_invalid_document_rejects_the_bundle_with_its_validation_code() {
    let reads_input = data_document("restrict contains x if {\n\tx := input.principal\n}");
    match build(&[GRANTS_A, &reads_input]) {
        Err(BundleError::InvalidDocument {
            policy_version_id,
            source,
        }) => {
            assert_eq!(policy_version_id, "pv-1");
            assert_eq!(source.code(), "input_reference_not_allowed");
        }
        other => panic!("expected an invalid document, got {other:?}"),
    }

    let mut old_schema = document("pv-0", GRANTS_A);
    old_schema.schema_version = "2025-01-01".into();
    match Bundle::build(source(vec![old_schema]), &PolicyConfig::default()) {
        Err(BundleError::InvalidDocument { source, .. }) => {
            assert_eq!(source.code(), "unsupported_schema_version:2025-01-01");
        }
        other => panic!("expected an invalid document, got {other:?}"),
    }
}

#[test]
fn two_complete_rules_with_different_values_reject_the_bundle() {
    let first = data_document("restrict := [\"a\"]");
    let second = data_document("restrict := [\"b\"]");
    let err = build(&[&first, &second]).unwrap_err();
    assert!(matches!(err, BundleError::Materialization { .. }), "{err}");

    let one_module = data_document(
        "risk := [] if true\n\nrisk := [{\"scope\": \"a\", \"tier\": \"b\"}] if true",
    );
    let err = build(&[&one_module]).unwrap_err();
    assert!(matches!(err, BundleError::Materialization { .. }), "{err}");
}

#[test]
fn materialization_stops_at_its_time_limit() {
    let slow = data_document(
        "restrict := [1 |\n\tsome i in numbers.range(1, 20000)\n\tsome j in numbers.range(1, 20000)\n\ti == j + 50000\n]",
    );
    match build(&[&slow]) {
        Err(BundleError::Materialization {
            source: EvalError::TimedOut { limit },
        }) => assert_eq!(limit, MATERIALIZATION_LIMIT),
        other => panic!("expected a materialization timeout, got {other:?}"),
    }
}

#[test]
fn roots_of_the_wrong_type_reject_the_bundle() {
    let cases = [
        ("app_ids", "app_ids := [\"crm\"]"),
        ("grants", "grants := \"crm\""),
        ("confinement", "confinement := {\"label_prefix\": \"x\"}"),
        ("risk", "risk := {\"scope\": \"a\", \"tier\": \"b\"}"),
        ("approval_tiers", "approval_tiers := {\"tier\": \"high\"}"),
    ];
    for (root, body) in cases {
        assert_eq!(
            bad_shape_root(build(&[&data_document(body)])),
            root,
            "{body}"
        );
    }
}

#[test]
fn a_scalar_restrict_rejects_the_bundle() {
    for body in [
        "restrict := true",
        "restrict := \"frozen\"",
        "restrict := 1",
        "restrict := null",
    ] {
        assert_eq!(
            bad_shape_root(build(&[&data_document(body)])),
            "restrict",
            "{body}"
        );
    }
    for body in ["restrict := {}", "restrict := {\"k\": 1}", "restrict := []"] {
        assert!(build(&[&data_document(body)]).is_ok(), "{body}");
    }
}

#[test]
fn malformed_risk_entries_and_a_scope_with_two_tiers_reject_the_bundle() {
    let cases = [
        "risk := [{\"scope\": \"crm:read\"}]",
        "risk := [{\"scope\": \"\", \"tier\": \"high\"}]",
        "risk := [\"crm:read\"]",
        "risk := [{\"scope\": \"crm:read\", \"tier\": \"high\"}, {\"scope\": \"crm:read\", \"tier\": \"low\"}]",
    ];
    for body in cases {
        assert_eq!(
            bad_shape_root(build(&[&data_document(body)])),
            "risk",
            "{body}"
        );
    }
}

#[test]
fn invalid_approval_tiers_reject_the_bundle() {
    let cases = [
        "approval_tiers := [{\"approver\": \"subject\"}]",
        "approval_tiers := [{\"tier\": \"high\", \"approver\": \"admin\"}]",
        "approval_tiers := [{\"tier\": \"high\", \"privacy\": \"public\"}]",
        "approval_tiers := [{\"tier\": \"high\", \"ttl_seconds\": 0}]",
        "approval_tiers := [{\"tier\": \"high\", \"ttl_seconds\": 2.5}]",
    ];
    for body in cases {
        assert_eq!(
            bad_shape_root(build(&[&data_document(body)])),
            "approval_tiers",
            "{body}"
        );
    }
}

#[test]
fn a_bundle_evaluation_past_the_time_limit_is_an_error_not_an_allow() {
    let heavy = data_document(concat!(
        "app_ids := {\"crm\": \"app-crm\"}\n\n",
        "grants[\"resource://crm\"] := {\"application\": \"crm\", \"roles\": {\"reader\": [sprintf(\"s:%d\", [i]) | some i in numbers.range(1, 3000)]}}\n\n",
        "risk := [{\"scope\": sprintf(\"s:%d\", [i]), \"tier\": \"t\"} | some i in numbers.range(1, 3000)]",
    ));
    let config = PolicyConfig::with_eval_timeout_ms(1).unwrap();
    let documents = vec![document("pv-0", &heavy)];
    let bundle = Bundle::build(source(documents), &config).unwrap();
    let requested: Vec<String> = (1..=3000).map(|i| format!("s:{i}")).collect();
    let err = bundle.evaluate(&mint_input(requested)).unwrap_err();
    assert!(
        matches!(err, EvalError::TimedOut { limit } if limit == Duration::from_millis(1)),
        "{err:?}"
    );
}

#[test]
fn a_bundle_is_shared_across_threads_and_decides_the_same_everywhere() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Bundle>();

    let bundle = Arc::new(build(&[GRANTS_A]).unwrap());
    let input = mint_input(vec!["crm:read".into()]);
    let expected = bundle.evaluate(&input).unwrap();
    assert!(expected.is_allow());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let bundle = Arc::clone(&bundle);
            let input = input.clone();
            std::thread::spawn(move || {
                (0..20)
                    .map(|_| bundle.evaluate(&input).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for handle in handles {
        for decision in handle.join().unwrap() {
            assert_eq!(decision, expected);
        }
    }
}

#[test]
fn evaluations_do_not_leak_state_into_each_other() {
    let bundle = build(&[GRANTS_A]).unwrap();
    let allowed = mint_input(vec!["crm:read".into()]);
    let mut denied = allowed.clone();
    denied.principal.id = "app-other".into();
    for _ in 0..3 {
        assert!(bundle.evaluate(&allowed).unwrap().is_allow());
        assert_eq!(
            bundle.evaluate(&denied).unwrap().deny_reason(),
            Some("resource_not_granted")
        );
    }
}

#[test]
fn expressions_at_the_depth_bound_build_and_evaluate_on_a_small_stack() {
    // The validation bound keeps regorus's recursive walks well inside a 2 MiB thread stack.
    let sum = vec!["1"; 120].join(" + ");
    let refs = format!("data.caracal.authz.app_ids{}", ".x".repeat(120));
    let content = data_document(&format!(
        "app_ids := {{\"crm\": \"app-crm\"}}\n\nrestrict := [x | x := {sum}; x < 0]\n\nrisk := [y | y := {refs}]"
    ));
    let handle = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let bundle = build(&[&content]).unwrap();
            assert_eq!(bundle.data()["restrict"], json!([]));
            bundle
                .evaluate(&mint_input(vec!["crm:read".into()]))
                .unwrap()
        })
        .unwrap();
    let decision = handle.join().unwrap();
    assert_eq!(decision.deny_reason(), Some("resource_not_granted"));
}

#[test]
fn a_bundle_stores_the_derived_values_the_contract_computes_over_its_data() {
    let fixtures = [
        vec![
            include_str!("../../tests/fixtures/zone_grants.rego"),
            include_str!("../../tests/fixtures/zone_risk.rego"),
        ],
        vec![include_str!("../../tests/fixtures/restricted.rego")],
        vec![GRANTS_A, GRANTS_B],
    ];
    for contents in fixtures {
        let bundle = build(&contents).unwrap();
        let Evaluator::Prepared { engine, .. } = &bundle.evaluator else {
            panic!("a built bundle is prepared");
        };
        let stored = engine
            .as_ref()
            .clone()
            .eval_query("data.caracal.derived".to_owned(), false)
            .unwrap()
            .result[0]
            .expressions[0]
            .value
            .clone();
        let mut fallback = crate::contract::build_engine(
            bundle.data().clone(),
            &PolicyConfig::default(),
            crate::contract::Derived::Absent,
        )
        .unwrap();
        let computed = fallback
            .eval_rule("data.caracal.authz.derived".to_owned())
            .unwrap();
        assert_eq!(stored, computed);
        // Nothing malformed survives a build, so the stored flags are all false.
        for flag in [
            "malformed_risk",
            "malformed_approval",
            "confinement_malformed",
        ] {
            assert_eq!(stored[flag], regorus::Value::Bool(false), "{flag}");
        }
    }
}

#[test]
fn the_zone_fixture_derives_tiers_and_declarations_per_scope() {
    let bundle = build(&[
        include_str!("../../tests/fixtures/zone_grants.rego"),
        include_str!("../../tests/fixtures/zone_risk.rego"),
    ])
    .unwrap();
    let Evaluator::Prepared { engine, .. } = &bundle.evaluator else {
        panic!("a built bundle is prepared");
    };
    let stored = engine
        .as_ref()
        .clone()
        .eval_query("data.caracal.derived".to_owned(), false)
        .unwrap()
        .result[0]
        .expressions[0]
        .value
        .clone();
    assert_eq!(
        serde_json::to_value(&stored).unwrap(),
        json!({
            "restricted": false,
            "malformed_risk": false,
            "malformed_approval": false,
            "confinement_malformed": false,
            "confinement_prefixes": ["sandbox-"],
            "risk_of": {
                "crm:admin": {"scope": "crm:admin", "tier": "high"},
                "crm:read": {"scope": "crm:read", "tier": "low"},
                "crm:write": {"scope": "crm:write", "tier": "high"}
            },
            "step_up_of": {
                "crm:admin": [{"approver": "subject", "privacy": "pseudonymous", "tier": "high", "ttl_seconds": 600}],
                "crm:read": [{"approver": "any", "tier": "low"}],
                "crm:write": [{"approver": "subject", "privacy": "pseudonymous", "tier": "high", "ttl_seconds": 600}]
            }
        })
    );
}

/// A gateway decision on a presented mandate, with the per-mandate claims as given.
fn use_input(labels: &[&str], scope: &str, jti: &str, exp: i64) -> PolicyInput {
    let claims = json!({
        "sub": "user-1",
        "scope": scope,
        "target": ["resource://crm"],
        "delegation_edge_id": "edge-1",
        "jti": jti,
        "iat": exp - 300,
        "exp": exp,
    });
    let serde_json::Value::Object(claims) = claims else {
        unreachable!("an object literal");
    };
    PolicyInput::new(
        Principal::application("app-crm", "zone-1").with_agent_session(
            "as-1",
            "task",
            labels.iter().copied(),
        ),
        Resource::new("res-1", "resource://crm", ["crm:read"]),
        Action::gateway("GET", "/v1/contacts"),
        Context::for_client("app-crm")
            .with_subject_claims(claims)
            .with_trace_id(jti)
            .with_agent_session_id("as-1"),
    )
    .with_session("ar-1")
}

/// The contract evaluated without the bundle's remembered decisions.
fn fresh(bundle: &Bundle, input: &PolicyInput) -> Decision {
    let Evaluator::Prepared { engine, .. } = &bundle.evaluator else {
        panic!("a prepared bundle");
    };
    evaluate_prepared(engine, input.to_regorus_value().unwrap()).unwrap()
}

#[test]
fn a_remembered_decision_equals_a_fresh_evaluation_in_every_shape() {
    let bundle = build(&[GRANTS_A]).unwrap();
    let mut denied = mint_input(vec!["crm:read".into()]);
    denied.principal.id = "app-other".into();
    let workload = PolicyInput::new(
        Principal::workload("wl-1", "zone-1"),
        Resource::new("res-x", "resource://x", ["x:read"]),
        Action::credential_injection(),
        Context::for_client("wl-1").with_requested_scopes(["x:read"]),
    );
    let inputs = [
        mint_input(vec!["crm:read".into()]),
        mint_input(vec!["crm:write".into()]),
        denied,
        use_input(&["reader"], "crm:read", "j-1", 1_900_000_000),
        use_input(&["reader"], "crm:read crm:write", "j-1", 1_900_000_000),
        use_input(&[], "crm:read", "j-1", 1_900_000_000),
        workload,
    ];
    let decided: Vec<Decision> = inputs.iter().map(|i| fresh(&bundle, i)).collect();
    // Allows and several denials, so the comparison is not between equal answers.
    assert!(decided[0].is_allow() && decided[3].is_allow());
    assert!(decided.iter().filter(|d| !d.is_allow()).count() >= 3);
    for _ in 0..2 {
        for (input, expected) in inputs.iter().zip(&decided) {
            assert_eq!(&bundle.evaluate(input).unwrap(), expected);
        }
    }
}

#[test]
fn fresh_mandates_of_one_caller_share_a_decision_and_a_keyed_change_is_decided_again() {
    let bundle = build(&[GRANTS_A]).unwrap();
    let first = use_input(&["reader"], "crm:read", "j-1", 1_900_000_000);
    // What the contract does not read: the claims' jti, iat and exp, the trace id, the
    // method and path, the registration method, the lifecycle.
    let mut other = use_input(&["reader"], "crm:read", "j-2", 1_900_000_600);
    other.action = Action::gateway("POST", "/v1/elsewhere");
    other.principal.registration_method = "dcr".into();
    other.principal.lifecycle = "service".into();
    assert_eq!(first.decision_key().unwrap(), other.decision_key().unwrap());
    assert_eq!(fresh(&bundle, &first), fresh(&bundle, &other));
    assert!(bundle.evaluate(&first).unwrap().is_allow());
    assert!(bundle.evaluate(&other).unwrap().is_allow());
    // A label, a scope or the claims' presence changes the key and the decision.
    let unlabelled = use_input(&[], "crm:read", "j-3", 1_900_000_000);
    let wider = use_input(&["reader"], "crm:read crm:admin", "j-4", 1_900_000_000);
    let mut unclaimed = first.clone();
    unclaimed.context.subject_claims = None;
    for changed in [&unlabelled, &wider, &unclaimed] {
        assert_ne!(
            first.decision_key().unwrap(),
            changed.decision_key().unwrap()
        );
        let decision = bundle.evaluate(changed).unwrap();
        assert!(!decision.is_allow(), "{decision:?}");
        assert_eq!(decision, fresh(&bundle, changed));
    }
    assert!(bundle.evaluate(&first).unwrap().is_allow());
}

#[test]
fn present_claims_without_the_read_members_differ_from_absent_claims() {
    let mut empty_of_read = use_input(&["reader"], "crm:read", "j-1", 1_900_000_000);
    let mut only_sub = serde_json::Map::new();
    only_sub.insert("sub".into(), json!("user-1"));
    empty_of_read.context.subject_claims = Some(only_sub);
    let mut absent = empty_of_read.clone();
    absent.context.subject_claims = None;
    let mut empty = empty_of_read.clone();
    empty.context.subject_claims = Some(serde_json::Map::new());
    assert_ne!(
        empty_of_read.decision_key().unwrap(),
        absent.decision_key().unwrap()
    );
    // A claim present with the value `null` is defined in Rego, a missing one is not.
    let mut null_target = empty_of_read.clone();
    if let Some(claims) = null_target.context.subject_claims.as_mut() {
        claims.insert("target".into(), serde_json::Value::Null);
    }
    assert_ne!(
        empty_of_read.decision_key().unwrap(),
        null_target.decision_key().unwrap()
    );
    // `{}` is omitted from the input like `None`, and so keyed alike.
    assert_eq!(
        absent.decision_key().unwrap(),
        empty.decision_key().unwrap()
    );
}
