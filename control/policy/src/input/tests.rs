use serde_json::json;

use super::*;

fn claims(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[test]
fn minimal_input_has_only_the_always_present_fields() {
    let input = PolicyInput::new(
        Principal::application("app-1", "zone-1"),
        Resource::new("res-1", "resource://crm", ["crm:read"]),
        Action::token_exchange(),
        Context::for_client("app-1"),
    );
    assert_eq!(
        serde_json::to_string(&input).unwrap(),
        concat!(
            r#"{"schema_version":"2026-05-20","#,
            r#""principal":{"type":"Application","id":"app-1","zone_id":"zone-1"},"#,
            r#""resource":{"type":"Resource","id":"res-1","identifier":"resource://crm","scopes":["crm:read"]},"#,
            r#""action":{"id":"TokenExchange"},"#,
            r#""context":{"actor_claims":{"caracal_client_id":"app-1"},"challenge_resolved":false,"requested_scopes":[]}}"#
        )
    );
}

#[test]
fn full_mint_input_serializes_every_present_field_in_schema_order() {
    let mut edge = DelegationEdge::new("edge-2", ["crm:read"]);
    edge.source_session_id = "as-parent".into();
    edge.target_session_id = "as-1".into();
    edge.issuer_application_id = "app-0".into();
    edge.receiver_application_id = "app-1".into();
    edge.resource_id = "res-1".into();
    edge.edge_version = 1;
    edge.path = vec!["edge-1".into(), "edge-2".into()];
    edge.graph_epoch = 7;
    edge.constraints_json = claims(json!({"max_hops": 2, "resources": ["resource://crm"]}));
    let input = PolicyInput::new(
        Principal::application("app-1", "zone-1")
            .with_registration_method("managed")
            .with_agent_session("as-1", "task", ["reader"]),
        Resource::new("res-1", "resource://crm", ["crm:read", "crm:write"]),
        Action::gateway("GET", "/v1/contacts"),
        Context::for_client("app-1")
            .with_trace_id("req-1")
            .with_session_id("sess-1")
            .with_agent_session_id("as-1")
            .with_delegation_edge_id("edge-2")
            .with_challenge_resolved(true)
            .with_scope_field("  crm:read\tcrm:write  "),
    )
    .with_session("sess-1")
    .with_delegation_edge(edge);
    assert_eq!(
        serde_json::to_string(&input).unwrap(),
        concat!(
            r#"{"schema_version":"2026-05-20","#,
            r#""principal":{"type":"Application","id":"app-1","zone_id":"zone-1","registration_method":"managed","agent_session_id":"as-1","lifecycle":"task","labels":["reader"]},"#,
            r#""resource":{"type":"Resource","id":"res-1","identifier":"resource://crm","scopes":["crm:read","crm:write"]},"#,
            r#""action":{"id":"TokenExchange","method":"GET","path":"/v1/contacts"},"#,
            r#""session":{"id":"sess-1"},"#,
            r#""delegation_edge":{"id":"edge-2","source_session_id":"as-parent","target_session_id":"as-1","issuer_application_id":"app-0","receiver_application_id":"app-1","resource_id":"res-1","scopes":["crm:read"],"edge_version":1,"path":["edge-1","edge-2"],"graph_epoch":7,"constraints_json":{"max_hops":2,"resources":["resource://crm"]}},"#,
            r#""context":{"actor_claims":{"caracal_client_id":"app-1"},"trace_id":"req-1","session_id":"sess-1","agent_session_id":"as-1","delegation_edge_id":"edge-2","challenge_resolved":true,"requested_scopes":["crm:read","crm:write"]}}"#
        )
    );
}

#[test]
fn delegation_edge_omits_empty_strings_empty_arrays_and_zero_counters() {
    let edge = DelegationEdge::new("edge-1", Vec::<String>::new());
    assert_eq!(
        serde_json::to_string(&edge).unwrap(),
        r#"{"id":"edge-1","constraints_json":{}}"#
    );
}

#[test]
fn workload_input_carries_no_session_fields() {
    let input = PolicyInput::new(
        Principal::workload("wl-1", "zone-1"),
        Resource::new("res-1", "resource://crm", ["crm:read"]),
        Action::credential_injection(),
        Context::for_client("wl-1"),
    );
    let json = input.to_json().unwrap();
    assert_eq!(
        json["principal"],
        json!({"type": "Workload", "id": "wl-1", "zone_id": "zone-1"})
    );
    assert_eq!(json["action"], json!({"id": "CredentialInjection"}));
}

#[test]
fn subject_claims_are_omitted_when_absent_and_never_serialized_as_empty_object() {
    let without = Context::for_client("app-1");
    let empty = Context::for_client("app-1").with_subject_claims(Map::new());
    for context in [without, empty] {
        let json = serde_json::to_value(&context).unwrap();
        assert!(json.get("subject_claims").is_none(), "{json}");
    }
    let with = Context::for_client("app-1").with_subject_claims(claims(
        json!({"sub": "u-1", "aud": ["x"], "exp": 1_700_000_000}),
    ));
    let json = serde_json::to_value(&with).unwrap();
    assert_eq!(
        json["subject_claims"],
        json!({"sub": "u-1", "aud": ["x"], "exp": 1_700_000_000})
    );
}

#[test]
fn requested_scopes_are_always_an_array_and_challenge_resolved_always_a_bool() {
    let json = serde_json::to_value(Context::default().with_scope_field("   ")).unwrap();
    assert_eq!(json["requested_scopes"], json!([]));
    assert_eq!(json["challenge_resolved"], json!(false));
    assert_eq!(json["actor_claims"], json!({}));
}

#[test]
fn scope_field_is_split_on_any_whitespace_in_the_order_sent() {
    assert_eq!(
        split_scope_field("b:write  a:read\nc:x"),
        vec!["b:write", "a:read", "c:x"]
    );
    assert!(split_scope_field("").is_empty());
}

#[test]
fn input_round_trips_through_json() {
    let input = PolicyInput::new(
        Principal::application("app-1", "zone-1").with_agent_session("as-1", "service", ["a"]),
        Resource::new("res-1", "resource://crm", ["crm:read"]),
        Action::token_exchange(),
        Context::for_client("app-1").with_requested_scopes(["crm:read"]),
    )
    .with_delegation_edge(DelegationEdge::new("edge-1", ["crm:read"]));
    let json = serde_json::to_string(&input).unwrap();
    let back: PolicyInput = serde_json::from_str(&json).unwrap();
    assert_eq!(back, input);
}

// The direct regorus value (what `Bundle::evaluate` hands the engine) equals converting the
// serde JSON, for every field's presence and every kind of claim value.

mod direct_value {
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    use super::super::*;

    fn via_serde(input: &PolicyInput) -> regorus::Value {
        serde_json::from_value(input.to_json().unwrap()).unwrap()
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            2 => Just(String::new()),
            3 => "[a-z:]{1,8}",
            1 => "\\PC{0,12}",
        ]
    }

    fn texts() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(text(), 0..4)
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(|n| json!(n)),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |n| n.is_finite())
                .prop_map(|n| json!(n)),
            Just(json!(1.0)),
            Just(json!(-0.0)),
            text().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(text(), inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    fn claims() -> impl Strategy<Value = Map<String, Value>> {
        proptest::collection::btree_map(text(), json_value(), 0..4)
            .prop_map(|map| map.into_iter().collect())
    }

    fn principal() -> impl Strategy<Value = Principal> {
        (
            any::<bool>(),
            text(),
            text(),
            text(),
            text(),
            text(),
            texts(),
        )
            .prop_map(|(workload, id, zone, method, session, lifecycle, labels)| {
                let base = if workload {
                    Principal::workload(id, zone)
                } else {
                    Principal::application(id, zone)
                };
                Principal {
                    registration_method: method,
                    agent_session_id: session,
                    lifecycle,
                    labels,
                    ..base
                }
            })
    }

    fn action() -> impl Strategy<Value = Action> {
        (
            any::<bool>(),
            proptest::option::of(text()),
            proptest::option::of(text()),
        )
            .prop_map(|(injection, method, path)| Action {
                id: if injection {
                    ActionId::CredentialInjection
                } else {
                    ActionId::TokenExchange
                },
                method,
                path,
            })
    }

    fn edge() -> impl Strategy<Value = DelegationEdge> {
        (
            (text(), text(), text(), text(), text(), text()),
            texts(),
            prop_oneof![Just(0_u64), any::<u64>()],
            texts(),
            prop_oneof![Just(0_u64), any::<u64>()],
            claims(),
        )
            .prop_map(
                |(
                    (id, source, target, issuer, receiver, resource),
                    scopes,
                    edge_version,
                    path,
                    graph_epoch,
                    constraints_json,
                )| DelegationEdge {
                    id,
                    source_session_id: source,
                    target_session_id: target,
                    issuer_application_id: issuer,
                    receiver_application_id: receiver,
                    resource_id: resource,
                    scopes,
                    edge_version,
                    path,
                    graph_epoch,
                    constraints_json,
                },
            )
    }

    fn context() -> impl Strategy<Value = Context> {
        (
            claims(),
            proptest::option::of(claims()),
            (text(), text(), text(), text()),
            any::<bool>(),
            texts(),
        )
            .prop_map(
                |(
                    actor_claims,
                    subject_claims,
                    (trace_id, session_id, agent_session_id, delegation_edge_id),
                    challenge_resolved,
                    requested_scopes,
                )| Context {
                    actor_claims,
                    subject_claims,
                    trace_id,
                    session_id,
                    agent_session_id,
                    delegation_edge_id,
                    challenge_resolved,
                    requested_scopes,
                },
            )
    }

    fn policy_input() -> impl Strategy<Value = PolicyInput> {
        (
            principal(),
            (text(), text(), texts()),
            action(),
            proptest::option::of(text()),
            proptest::option::of(edge()),
            context(),
        )
            .prop_map(
                |(principal, (id, identifier, scopes), action, session, edge, context)| {
                    let mut input = PolicyInput::new(
                        principal,
                        Resource::new(id, identifier, scopes),
                        action,
                        context,
                    );
                    if let Some(session) = session {
                        input = input.with_session(session);
                    }
                    if let Some(edge) = edge {
                        input = input.with_delegation_edge(edge);
                    }
                    input
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn the_direct_regorus_value_equals_the_serde_conversion(input in policy_input()) {
            prop_assert_eq!(input.to_regorus_value().unwrap(), via_serde(&input));
        }
    }

    #[test]
    fn numbers_in_claims_convert_as_regorus_reads_json() {
        let claims: Map<String, Value> = json!({
            "small": 1, "negative": -7, "max": u64::MAX, "min": i64::MIN,
            "float": 1.5, "whole_float": 60.0, "tiny": 1e-300, "nested": [{"n": 2.25}]
        })
        .as_object()
        .cloned()
        .unwrap();
        let input = PolicyInput::new(
            Principal::application("app-1", "zone-1"),
            Resource::new("res-1", "resource://crm", ["crm:read"]),
            Action::gateway("GET", "/x"),
            Context::for_client("app-1").with_subject_claims(claims),
        );
        assert_eq!(input.to_regorus_value().unwrap(), via_serde(&input));
    }
}
