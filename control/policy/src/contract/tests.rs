//! The contract evaluated directly over hand-made data (rows a bundle build would reject), the
//! start-up self check, and the regorus behaviours of settled point 16.

use std::time::Duration;

use serde_json::{Value as Json, json};

use super::*;
use crate::config::timer;

fn decide(authz: Json, input: Json) -> Result<Decision, EvalError> {
    decide_with(authz, input, &PolicyConfig::default())
}

fn decide_with(authz: Json, input: Json, config: &PolicyConfig) -> Result<Decision, EvalError> {
    let engine = build_evaluation_engine(authz, config)?;
    evaluate_prepared(&engine, to_regorus_value(input)?)
}

fn grants() -> Json {
    json!({
        "app_ids": {"crm": "app-crm"},
        "grants": {"resource://crm": {"application": "crm", "roles": {"reader": ["crm:read"]}}}
    })
}

fn with_root(root: &str, value: Json) -> Json {
    let mut data = grants();
    data[root] = value;
    data
}

fn mint_input() -> Json {
    json!({
        "schema_version": "2026-05-20",
        "principal": {"type": "Application", "id": "app-crm", "zone_id": "z",
                      "agent_session_id": "as-1", "lifecycle": "task", "labels": ["reader"]},
        "resource": {"type": "Resource", "id": "r-1", "identifier": "resource://crm", "scopes": ["crm:read"]},
        "action": {"id": "TokenExchange"},
        "delegation_edge": {"id": "e-1", "scopes": ["crm:read"], "constraints_json": {}},
        "context": {"actor_claims": {"caracal_client_id": "app-crm"}, "agent_session_id": "as-1",
                    "challenge_resolved": false, "requested_scopes": ["crm:read"]}
    })
}

fn workload_input() -> Json {
    json!({
        "schema_version": "2026-05-20",
        "principal": {"type": "Workload", "id": "wl-1", "zone_id": "z"},
        "resource": {"type": "Resource", "id": "r-1", "identifier": "resource://crm", "scopes": ["crm:read"]},
        "action": {"id": "CredentialInjection"},
        "context": {"actor_claims": {}, "challenge_resolved": false, "requested_scopes": []}
    })
}

fn reason(decision: &Decision) -> Option<&str> {
    decision.deny_reason()
}

#[test]
fn contract_identity_is_the_version_and_the_hash_of_the_embedded_text() {
    assert_eq!(CONTRACT_VERSION, "2026-07-12");
    let hash = contract_sha256();
    assert_eq!(hash.len(), 64);
    assert!(
        hash.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(hash, hex::encode(Sha256::digest(CONTRACT_REGO.as_bytes())));
    assert!(CONTRACT_REGO.contains("package caracal.authz"));
}

#[test]
fn self_check_gets_the_default_deny() {
    self_check().unwrap();
}

#[test]
fn the_well_formed_mint_allows_over_hand_made_data() {
    let decision = decide(grants(), mint_input()).unwrap();
    assert!(decision.is_allow(), "{decision:?}");
    assert_eq!(decision.determining_policies, vec!["caracal-crm-mint"]);
}

#[test]
fn risk_that_is_not_an_array_is_malformed_risk_data() {
    for risk in [
        json!({"scope": "crm:read", "tier": "high"}),
        json!("high"),
        json!(null),
    ] {
        let decision = decide(with_root("risk", risk), mint_input()).unwrap();
        assert_eq!(reason(&decision), Some("malformed_risk_data"));
    }
}

#[test]
fn a_risk_entry_without_scope_or_tier_is_malformed_risk_data() {
    for entry in [
        json!("crm:read"),
        json!({"scope": "crm:read"}),
        json!({"scope": "", "tier": "high"}),
        json!({"scope": "crm:read", "tier": 1}),
    ] {
        let decision = decide(with_root("risk", json!([entry])), mint_input()).unwrap();
        assert_eq!(reason(&decision), Some("malformed_risk_data"), "{entry}");
    }
}

#[test]
fn a_scope_with_two_tiers_is_malformed_risk_data_not_a_conflict_error() {
    let risk = json!([
        {"scope": "crm:read", "tier": "high"},
        {"scope": "crm:read", "tier": "low"}
    ]);
    for input in [mint_input(), workload_input()] {
        let decision = decide(with_root("risk", risk.clone()), input).unwrap();
        assert_eq!(reason(&decision), Some("malformed_risk_data"));
    }
    // The same tier twice is not a conflict.
    let risk = json!([
        {"scope": "crm:read", "tier": "high"},
        {"scope": "crm:read", "tier": "high"}
    ]);
    let decision = decide(with_root("risk", risk), mint_input()).unwrap();
    assert!(decision.is_allow(), "{decision:?}");
}

#[test]
fn malformed_risk_does_not_deny_shapes_other_than_mint_and_workload() {
    let data = with_root("risk", json!("broken"));
    let bootstrap = json!({
        "principal": {"type": "Application", "id": "app-crm", "zone_id": "z"},
        "resource": {"type": "Resource", "id": "r-1", "identifier": "resource://crm", "scopes": []},
        "action": {"id": "TokenExchange"},
        "context": {"actor_claims": {}, "challenge_resolved": false, "requested_scopes": ["agent:lifecycle"]}
    });
    let decision = decide(data, bootstrap).unwrap();
    assert_eq!(decision.determining_policies, vec!["caracal-bootstrap"]);
}

#[test]
fn invalid_approval_declarations_are_malformed_approval_data() {
    let invalid = [
        json!({"tier": "high"}),
        json!([{"approver": "operator"}]),
        json!(["high"]),
        json!([{"tier": ""}]),
        json!([{"tier": "high", "approver": "root"}]),
        json!([{"tier": "high", "approver": null}]),
        json!([{"tier": "high", "privacy": "public"}]),
        json!([{"tier": "high", "ttl_seconds": 0}]),
        json!([{"tier": "high", "ttl_seconds": -60}]),
        json!([{"tier": "high", "ttl_seconds": 1.5}]),
        json!([{"tier": "high", "ttl_seconds": "600"}]),
    ];
    for tiers in invalid {
        for input in [mint_input(), workload_input()] {
            let decision = decide(with_root("approval_tiers", tiers.clone()), input).unwrap();
            assert_eq!(
                reason(&decision),
                Some("malformed_approval_data"),
                "{tiers}"
            );
        }
    }
}

#[test]
fn valid_approval_declarations_use_their_defaults() {
    let tiers = json!([
        {"tier": "high"},
        {"tier": "mid", "approver": "any", "privacy": "anonymous", "ttl_seconds": 60.0},
        {"tier": "low", "approver": "subject", "privacy": "pseudonymous", "ttl_seconds": 1}
    ]);
    let decision = decide(with_root("approval_tiers", tiers), mint_input()).unwrap();
    assert!(decision.is_allow(), "{decision:?}");
}

#[test]
fn malformed_risk_is_checked_before_malformed_approval() {
    let mut data = with_root("risk", json!("x"));
    data["approval_tiers"] = json!("y");
    let decision = decide(data, mint_input()).unwrap();
    assert_eq!(reason(&decision), Some("malformed_risk_data"));
}

#[test]
fn restriction_is_checked_before_malformed_data() {
    let mut data = with_root("risk", json!("x"));
    data["restrict"] = json!(["maintenance"]);
    let decision = decide(data, mint_input()).unwrap();
    assert_eq!(reason(&decision), Some("restriction_active"));
}

#[test]
fn a_scalar_restrict_freezes_the_zone_in_the_contract() {
    for restrict in [json!(true), json!("frozen"), json!(0), json!(null)] {
        let decision = decide(with_root("restrict", restrict), mint_input()).unwrap();
        assert_eq!(reason(&decision), Some("restriction_active"));
    }
    for restrict in [json!([]), json!({})] {
        let decision = decide(with_root("restrict", restrict), mint_input()).unwrap();
        assert!(decision.is_allow());
    }
}

#[test]
fn an_evaluation_past_the_time_limit_is_an_error_not_an_allow() {
    let scopes: Vec<String> = (0..5_000).map(|i| format!("s:{i}")).collect();
    let risk: Vec<Json> = scopes
        .iter()
        .map(|scope| json!({"scope": scope, "tier": "t"}))
        .collect();
    let data = json!({
        "app_ids": {"crm": "app-crm"},
        "grants": {"resource://crm": {"application": "crm", "roles": {"reader": scopes}}},
        "risk": risk
    });
    let mut input = mint_input();
    input["context"]["requested_scopes"] = json!(scopes);
    input["delegation_edge"]["scopes"] = json!(scopes);
    let config = PolicyConfig::with_eval_timeout_ms(1).unwrap();
    let err = decide_with(data, input, &config).unwrap_err();
    assert!(
        matches!(err, EvalError::TimedOut { limit } if limit == Duration::from_millis(1)),
        "{err:?}"
    );
}

// Settled point 16: the regorus behaviours the contract relies on, at the pinned version.

#[test]
fn regorus_serves_data_under_caracal_authz_next_to_the_contract_rules() {
    let engine = build_evaluation_engine(grants(), &PolicyConfig::default()).unwrap();
    let mut engine = engine.clone();
    // Data is readable at its path although the package also defines rules (eval_rule only
    // takes rule paths, so this reads it with a query)...
    let results = engine
        .eval_query("data.caracal.authz.app_ids".to_owned(), false)
        .unwrap();
    assert_eq!(
        results.result[0].expressions[0].value,
        to_regorus_value(json!({"crm": "app-crm"})).unwrap()
    );
    // ...and the package's rules read it.
    engine.set_input(to_regorus_value(mint_input()).unwrap());
    let keys = engine
        .eval_rule("data.caracal.authz.keys".to_owned())
        .unwrap();
    assert_eq!(serde_json::to_value(&keys).unwrap(), json!(["crm"]));
    // The result rule is defined over the same data.
    let result = engine.eval_rule(RESULT_RULE.to_owned()).unwrap();
    assert!(Decision::from_result(&result).unwrap().is_allow());
}

#[test]
fn regorus_accepts_import_rego_v1() {
    let mut engine = new_engine();
    engine
        .add_policy(
            "v1.rego".to_owned(),
            "package t\n\nimport rego.v1\n\nxs contains x if {\n\tsome x in [1, 2]\n}\n\ny := 1 if 2 in xs\n"
                .to_owned(),
        )
        .unwrap();
    assert_eq!(
        engine.eval_rule("data.t.y".to_owned()).unwrap(),
        regorus::Value::from(1_u64)
    );
    assert!(CONTRACT_REGO.contains("\nimport rego.v1\n"));
}

#[test]
fn regorus_sorts_sets_deterministically() {
    let policy = |order: &str| {
        format!(
            "package t\n\nimport rego.v1\n\nitems contains x if {{\n\tsome x in {order}\n}}\n\nsorted := sort(items)\n"
        )
    };
    let orders = [
        r#"[{"tier": "b"}, {"tier": "a", "approver": "subject"}, {"tier": "a"}, "z", 3]"#,
        r#"[3, "z", {"tier": "a"}, {"tier": "b"}, {"tier": "a", "approver": "subject"}]"#,
    ];
    let mut results = Vec::new();
    for order in orders {
        let mut engine = new_engine();
        engine
            .add_policy("s.rego".to_owned(), policy(order))
            .unwrap();
        for _ in 0..3 {
            let sorted = engine.eval_rule("data.t.sorted".to_owned()).unwrap();
            results.push(serde_json::to_value(&sorted).unwrap());
        }
    }
    assert!(results.windows(2).all(|pair| pair[0] == pair[1]));
    assert_eq!(
        results[0],
        json!([3, "z", {"approver": "subject", "tier": "a"}, {"tier": "a"}, {"tier": "b"}])
    );
}

#[test]
fn regorus_execution_timer_stops_a_long_evaluation() {
    let mut engine = new_engine();
    engine
        .add_policy(
            "slow.rego".to_owned(),
            "package t\n\nimport rego.v1\n\nn := count([x | some i in numbers.range(1, 10000000); x := i * 2])\n"
                .to_owned(),
        )
        .unwrap();
    engine.set_execution_timer_config(timer(Duration::from_millis(1)));
    let err = engine.eval_rule("data.t.n".to_owned()).unwrap_err();
    assert!(
        matches!(engine_error(err), EvalError::TimedOut { .. }),
        "the timer must stop the evaluation"
    );
}

#[test]
fn regorus_with_strict_builtin_errors_off_makes_a_failing_builtin_undefined() {
    let mut engine = new_engine();
    engine
        .add_policy(
            "b.rego".to_owned(),
            "package t\n\nimport rego.v1\n\ndefault v := \"fallback\"\n\nv := to_number(\"not a number\")\n".to_owned(),
        )
        .unwrap();
    assert_eq!(
        engine.eval_rule("data.t.v".to_owned()).unwrap(),
        regorus::Value::from("fallback")
    );
}

// Behaviours the request path of the contract relies on (settled point 16), at the pinned
// version. The equivalence property in `equivalence.rs` covers them in context; these pin each one.

fn eval_with_input(policy: &str, rule: &str, input: Json) -> Result<regorus::Value, EvalError> {
    let mut engine = new_engine();
    engine
        .add_policy("b.rego".to_owned(), policy.to_owned())
        .map_err(engine_error)?;
    engine.set_input(to_regorus_value(input)?);
    engine.eval_rule(rule.to_owned()).map_err(engine_error)
}

#[test]
fn regorus_not_x_equals_x_is_true_exactly_when_x_is_absent() {
    let policy = "package t\n\nimport rego.v1\n\nabsent if not input.x == input.x\n";
    for (input, expected) in [
        (json!({}), regorus::Value::Bool(true)),
        (json!({"x": null}), regorus::Value::Undefined),
        (json!({"x": false}), regorus::Value::Undefined),
        (json!({"x": []}), regorus::Value::Undefined),
        (json!({"x": "a"}), regorus::Value::Undefined),
    ] {
        assert_eq!(
            eval_with_input(policy, "data.t.absent", input.clone()).unwrap(),
            expected,
            "{input}"
        );
    }
}

#[test]
fn regorus_index_zero_of_an_input_value_is_defined_exactly_for_a_non_empty_array() {
    let policy = "package t\n\nimport rego.v1\n\nnon_empty if {\n\t_ = input.x[0]\n}\n";
    for (input, expected) in [
        (json!({"x": ["a"]}), regorus::Value::Bool(true)),
        (json!({"x": [null]}), regorus::Value::Bool(true)),
        (json!({"x": [false]}), regorus::Value::Bool(true)),
        (json!({"x": []}), regorus::Value::Undefined),
        (json!({"x": "abc"}), regorus::Value::Undefined),
        (json!({"x": {"0": "a"}}), regorus::Value::Undefined),
        (json!({"x": 0}), regorus::Value::Undefined),
        (json!({}), regorus::Value::Undefined),
    ] {
        assert_eq!(
            eval_with_input(policy, "data.t.non_empty", input.clone()).unwrap(),
            expected,
            "{input}"
        );
    }
}

#[test]
fn regorus_any_prefix_match_is_false_only_when_every_label_is_a_string_matching_no_prefix() {
    let policy = "package t\n\nimport rego.v1\n\nm := strings.any_prefix_match(input.labels, input.prefixes)\n";
    for (input, expected) in [
        (
            json!({"labels": ["a-1", "b"], "prefixes": ["c-"]}),
            json!(false),
        ),
        (json!({"labels": [], "prefixes": ["c-"]}), json!(false)),
        (json!({"labels": ["a-1"], "prefixes": []}), json!(false)),
        (
            json!({"labels": ["c-1"], "prefixes": ["a-", "c-"]}),
            json!(true),
        ),
        (json!({"labels": [7, "b"], "prefixes": ["c-"]}), json!(null)),
        (json!({"prefixes": ["c-"]}), json!(null)),
    ] {
        let value = eval_with_input(policy, "data.t.m", input.clone()).unwrap();
        let value = if value == regorus::Value::Undefined {
            json!(null)
        } else {
            serde_json::to_value(&value).unwrap()
        };
        assert_eq!(value, expected, "{input}");
    }
}

#[test]
fn regorus_else_falls_through_a_body_whose_value_is_undefined() {
    let policy = "package t\n\nimport rego.v1\n\nv := input.missing if {\n\ttrue\n} else := 2\n";
    assert_eq!(
        eval_with_input(policy, "data.t.v", json!({})).unwrap(),
        regorus::Value::from(2_u64)
    );
}

#[test]
fn regorus_checks_a_type_before_iterating_in_the_order_written() {
    // `some x in <scalar>` is an error; the guard written before it must run first.
    let policy = "package t\n\nimport rego.v1\n\nr if {\n\tis_array(input.l)\n\tsome x in input.l\n\tx == 1\n}\n";
    for input in [json!({"l": "abc"}), json!({"l": 3}), json!({"l": [2]})] {
        assert_eq!(
            eval_with_input(policy, "data.t.r", input.clone()).unwrap(),
            regorus::Value::Undefined,
            "{input}"
        );
    }
    assert_eq!(
        eval_with_input(policy, "data.t.r", json!({"l": [1]})).unwrap(),
        regorus::Value::Bool(true)
    );
}

#[test]
fn regorus_converts_a_number_index_to_a_string_key_only_on_data_references() {
    // The contract indexes grants and app_ids from `data` (like the notation of section 5.4),
    // and role and diagnostics tables through local values, as the reference contract did.
    let mut engine = new_engine();
    engine
        .add_policy(
            "n.rego".to_owned(),
            "package t\n\nimport rego.v1\n\nfrom_data := data.d[input.k]\n\nfrom_local := v if {\n\tm := data.d\n\tv := m[input.k]\n}\n".to_owned(),
        )
        .unwrap();
    engine
        .add_data(to_regorus_value(json!({"d": {"5": "five"}})).unwrap())
        .unwrap();
    engine.set_input(to_regorus_value(json!({"k": 5})).unwrap());
    assert_eq!(
        engine.eval_rule("data.t.from_data".to_owned()).unwrap(),
        regorus::Value::from("five")
    );
    assert_eq!(
        engine.eval_rule("data.t.from_local".to_owned()).unwrap(),
        regorus::Value::Undefined
    );
}

/// `PolicyInput::decision_key` holds what the contract reads: every `input` path in the
/// contract's code is either keyed whole or only tested for presence (`not P == P`), and the
/// lists below match the key's documentation. A contract change that reads another path, binds
/// `input` to a variable or indexes it dynamically fails here until the key covers it, and so
/// does one that calls a clock, random, runtime or network built-in.
#[test]
fn the_decision_key_covers_every_input_path_the_contract_reads() {
    const KEYED: &[&str] = &[
        "input.principal.type",
        "input.principal.id",
        "input.principal.labels",
        "input.action.id",
        "input.resource.identifier",
        "input.delegation_edge.id",
        "input.delegation_edge.scopes",
        "input.context.subject_claims.scope",
        "input.context.subject_claims.target",
        "input.context.subject_claims.delegation_edge_id",
        "input.context.requested_scopes",
        "input.context.agent_session_id",
    ];
    const PRESENCE: &[&str] = &["input.delegation_edge", "input.context.subject_claims"];
    let mut code: String = CONTRACT_REGO
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = std::collections::BTreeSet::new();
    for path in PRESENCE {
        let check = format!("not {path} == {path}");
        if code.contains(&check) {
            found.insert((*path).to_owned());
            code = code.replace(&check, "not presence_checked");
        }
    }
    let bytes = code.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut from = 0;
    while let Some(at) = code[from..].find("input") {
        let start = from + at;
        from = start + "input".len();
        let joined = start > 0 && (word(bytes[start - 1]) || bytes[start - 1] == b'.');
        if joined || bytes.get(from).copied().is_some_and(word) {
            continue;
        }
        let mut end = from;
        while bytes.get(end) == Some(&b'.') {
            end += 1;
            while bytes.get(end).copied().is_some_and(word) {
                end += 1;
            }
        }
        let path = &code[start..end];
        assert!(
            KEYED.contains(&path),
            "the contract reads {path:?}, which the decision key does not hold"
        );
        found.insert(path.to_owned());
    }
    // Nor may the contract's answer depend on anything but input and data: the clock,
    // randomness, the runtime or the network.
    for builtin in [
        "time.",
        "rand.",
        "uuid.",
        "http.send",
        "opa.runtime",
        "net.",
    ] {
        assert!(
            !code.contains(builtin),
            "the contract calls {builtin}…, so its decisions cannot be remembered"
        );
    }
    let expected: std::collections::BTreeSet<String> = KEYED
        .iter()
        .chain(PRESENCE)
        .map(|p| (*p).to_owned())
        .collect();
    assert_eq!(found, expected);
}
