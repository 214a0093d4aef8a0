use serde_json::json;

use super::*;

#[test]
fn undefined_result_is_deny_complete_no_rule_matched() {
    let decision = Decision::from_result(&regorus::Value::Undefined).unwrap();
    assert_eq!(decision, Decision::deny("no_rule_matched"));
    assert!(decision.is_complete());
    assert_eq!(decision.deny_reason(), Some("no_rule_matched"));
}

#[test]
fn null_or_empty_result_is_deny_complete_no_rule_matched() {
    for document in [json!(null), json!({})] {
        let decision = Decision::from_result_document(&document).unwrap();
        assert_eq!(decision, Decision::deny("no_rule_matched"));
    }
}

#[test]
fn a_well_formed_allow_is_read_field_by_field() {
    let decision = Decision::from_result_document(&json!({
        "decision": "allow",
        "evaluation_status": "complete",
        "determining_policies": [{"policy": "caracal-crm-mint"}],
        "diagnostics": [{"risk": [{"scope": "crm:read", "tier": "high"}]}]
    }))
    .unwrap();
    assert!(decision.is_allow());
    assert_eq!(decision.determining_policies, vec!["caracal-crm-mint"]);
    assert_eq!(decision.deny_reason(), None);
    assert!(decision.approval_tiers().is_empty());
    assert!(!decision.requires_step_up());
}

#[test]
fn wrong_shapes_are_engine_errors() {
    let good = json!({
        "decision": "deny",
        "evaluation_status": "complete",
        "determining_policies": [],
        "diagnostics": [{"reason": "x"}]
    });
    assert!(Decision::from_result_document(&good).is_ok());
    let mutations = [
        ("decision", json!("maybe")),
        ("decision", json!(true)),
        ("evaluation_status", json!(1)),
        ("determining_policies", json!({"policy": "x"})),
        ("determining_policies", json!(["caracal-x-mint"])),
        ("diagnostics", json!("reason")),
        ("diagnostics", json!([["reason"]])),
    ];
    for (key, value) in mutations {
        let mut document = good.clone();
        document[key] = value;
        let err = Decision::from_result_document(&document).unwrap_err();
        assert!(
            matches!(err, EvalError::BadResultShape { .. }),
            "{key}: {err}"
        );
    }
    for key in [
        "decision",
        "evaluation_status",
        "determining_policies",
        "diagnostics",
    ] {
        let mut document = good.clone();
        document.as_object_mut().unwrap().remove(key);
        assert!(Decision::from_result_document(&document).is_err(), "{key}");
    }
    for document in [json!([]), json!("allow"), json!(true)] {
        assert!(
            Decision::from_result_document(&document).is_err(),
            "{document}"
        );
    }
}

#[test]
fn an_incomplete_status_is_kept_for_the_caller() {
    let decision = Decision::from_result_document(&json!({
        "decision": "allow",
        "evaluation_status": "partial",
        "determining_policies": [],
        "diagnostics": []
    }))
    .unwrap();
    assert!(!decision.is_complete());
}

#[test]
fn deny_reason_is_the_first_non_empty_reason() {
    let decision = Decision::from_result_document(&json!({
        "decision": "deny",
        "evaluation_status": "complete",
        "determining_policies": [],
        "diagnostics": [{"other": 1}, {"reason": ""}, {"reason": "role_scope_mismatch"}, {"reason": "later"}]
    }))
    .unwrap();
    assert_eq!(decision.deny_reason(), Some("role_scope_mismatch"));
}

#[test]
fn approval_tiers_come_from_human_approval_step_ups_with_defaults() {
    let decision = Decision::from_result_document(&json!({
        "decision": "allow",
        "evaluation_status": "complete",
        "determining_policies": [{"policy": "caracal-crm-mint"}],
        "diagnostics": [
            {"step_up_required": {"type": "human_approval", "tiers": [
                {"tier": "high", "approver": "subject", "privacy": "pseudonymous", "ttl_seconds": 600},
                {"tier": "mid", "ttl_seconds": 120.0},
                {"tier": ""},
                {"approver": "any"},
                {"tier": "odd", "ttl_seconds": -5}
            ]}},
            {"step_up_required": {"type": "other", "tiers": [{"tier": "ignored"}]}},
            {"risk": [{"scope": "crm:read", "tier": "high"}]}
        ]
    }))
    .unwrap();
    assert_eq!(
        decision.approval_tiers(),
        vec![
            TierDeclaration {
                tier: "high".into(),
                approver: Approver::Subject,
                privacy: Privacy::Pseudonymous,
                ttl_seconds: Some(600),
            },
            TierDeclaration {
                tier: "mid".into(),
                approver: Approver::Operator,
                privacy: Privacy::Identified,
                ttl_seconds: Some(120),
            },
            TierDeclaration {
                tier: "odd".into(),
                approver: Approver::Operator,
                privacy: Privacy::Identified,
                ttl_seconds: None,
            },
        ]
    );
    assert!(decision.requires_step_up());
}

#[test]
fn result_document_round_trips() {
    let document = json!({
        "decision": "allow",
        "evaluation_status": "complete",
        "determining_policies": [{"policy": "caracal-bootstrap"}],
        "diagnostics": []
    });
    let decision = Decision::from_result_document(&document).unwrap();
    assert_eq!(decision.to_result_document(), document);
}

#[test]
fn a_time_limit_error_reported_as_text_is_still_a_timeout() {
    let message = "\n--> policy.rego:3:1\nerror: execution exceeded time limit (elapsed=1007883ns, limit=1000000ns)";
    assert_eq!(
        time_limit_in_message(message),
        Some(Duration::from_millis(1))
    );
    assert_eq!(time_limit_in_message("rule conflicts with rule"), None);
    let boxed: Box<dyn Error + Send + Sync> = message.into();
    struct Wrapped(Box<dyn Error + Send + Sync>);
    impl AsRef<dyn Error + Send + Sync + 'static> for Wrapped {
        fn as_ref(&self) -> &(dyn Error + Send + Sync + 'static) {
            self.0.as_ref()
        }
    }
    impl From<Wrapped> for Box<dyn Error + Send + Sync + 'static> {
        fn from(wrapped: Wrapped) -> Self {
            wrapped.0
        }
    }
    assert!(matches!(
        engine_error(Wrapped(boxed)),
        EvalError::TimedOut { limit } if limit == Duration::from_millis(1)
    ));
}

// `from_result` reads well-formed results directly; it must decide exactly as reading their JSON.

mod direct_reading {
    use proptest::prelude::*;
    use regorus::Value as Rv;

    use super::super::*;

    /// The reading before the fast path: the whole result through JSON.
    fn via_json(result: &Rv) -> Result<Decision, ()> {
        if *result == Rv::Undefined {
            return Ok(Decision::deny("no_rule_matched"));
        }
        let json = serde_json::to_value(result).map_err(|_err| ())?;
        Decision::from_result_document(&json).map_err(|_err| ())
    }

    fn object(entries: Vec<(Rv, Rv)>) -> Rv {
        Rv::from(entries.into_iter().collect::<regorus::value::Object>())
    }

    fn scalar() -> impl Strategy<Value = Rv> {
        prop_oneof![
            Just(Rv::from("allow")),
            Just(Rv::from("deny")),
            Just(Rv::from("complete")),
            Just(Rv::from("pending")),
            Just(Rv::from("caracal-crm-mint")),
            Just(Rv::from("")),
            Just(Rv::from(3_u64)),
            Just(Rv::Null),
            Just(Rv::Bool(true)),
        ]
    }

    fn entry_object() -> impl Strategy<Value = Rv> {
        proptest::collection::vec(
            (
                prop_oneof![
                    4 => Just(Rv::from("policy")),
                    4 => Just(Rv::from("reason")),
                    1 => Just(Rv::from("risk")),
                    1 => Just(Rv::from(1_u64)),
                ],
                prop_oneof![3 => scalar(), 1 => proptest::collection::vec(scalar(), 0..3).prop_map(Rv::from)],
            ),
            0..3,
        )
        .prop_map(object)
    }

    fn list() -> impl Strategy<Value = Rv> {
        let items =
            proptest::collection::vec(prop_oneof![5 => entry_object(), 1 => scalar()], 0..3);
        prop_oneof![
            4 => items.clone().prop_map(Rv::from),
            1 => items.prop_map(|items| Rv::from(items.into_iter().collect::<std::collections::BTreeSet<_>>())),
            1 => scalar(),
        ]
    }

    fn result() -> impl Strategy<Value = Rv> {
        let fields = (
            proptest::option::weighted(0.9, scalar()),
            proptest::option::weighted(0.9, scalar()),
            proptest::option::weighted(0.9, list()),
            proptest::option::weighted(0.9, list()),
            proptest::option::weighted(0.2, scalar()),
        )
            .prop_map(|(decision, status, policies, diagnostics, extra)| {
                let mut entries = Vec::new();
                for (key, value) in [
                    ("decision", decision),
                    ("evaluation_status", status),
                    ("determining_policies", policies),
                    ("diagnostics", diagnostics),
                    ("extra", extra),
                ] {
                    if let Some(value) = value {
                        entries.push((Rv::from(key), value));
                    }
                }
                object(entries)
            });
        prop_oneof![
            8 => fields,
            1 => scalar(),
            1 => Just(Rv::Undefined),
            1 => Just(Rv::new_object()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn reading_a_result_directly_equals_reading_its_json(result in result()) {
            prop_assert_eq!(Decision::from_result(&result).map_err(|_err| ()), via_json(&result));
        }
    }

    #[test]
    fn the_contracts_documents_take_the_direct_path() {
        let allow = Rv::from_json_str(
            r#"{"decision":"allow","evaluation_status":"complete",
                "determining_policies":[{"policy":"caracal-crm-mint"}],
                "diagnostics":[{"step_up_required":{"type":"human_approval","tiers":[{"tier":"high"}]}},
                               {"risk":[{"scope":"crm:write","tier":"high"}]}]}"#,
        )
        .unwrap();
        let deny = Rv::from_json_str(
            r#"{"decision":"deny","evaluation_status":"complete","determining_policies":[],
                "diagnostics":[{"reason":"role_scope_mismatch"}]}"#,
        )
        .unwrap();
        for document in [allow, deny] {
            let direct = Decision::from_plain_result(&document).unwrap();
            assert_eq!(Ok(direct), via_json(&document));
        }
    }
}
