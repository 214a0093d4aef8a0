//! The contract decides exactly as the contract it replaced, and the precomputed derived values
//! change nothing.
//!
//! `tests/fixtures/reference_contract.rego` is the contract as it was before the request path
//! was optimized (a rule per derived value, every check re-run per request). It is the oracle:
//! over generated data (well formed and malformed, the hand-made rows a bundle build rejects
//! included) and generated inputs (every shape, and fields of the wrong type), three evaluations
//! must agree:
//! - the reference contract over `data.caracal.authz`;
//! - our contract as a bundle prepares it, with `data.caracal.derived` precomputed;
//! - our contract without `data.caracal.derived`, computing the values itself (its fallback).
//!
//! "Agree" means the same result document, or an engine error in all three.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value as Json, json};

use super::*;

const REFERENCE_CONTRACT: &str = include_str!("../../tests/fixtures/reference_contract.rego");

/// What one evaluation gave: the result document, or that the engine failed.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Result(Json),
    EngineError,
}

fn outcome(result: Result<Value, EvalError>) -> Outcome {
    match result {
        Ok(value) => Outcome::Result(serde_json::to_value(&value).unwrap_or(Json::Null)),
        Err(_) => Outcome::EngineError,
    }
}

fn reference_engine(authz: &Json) -> Result<Engine, EvalError> {
    let mut engine = new_engine();
    engine
        .add_policy("reference.rego".to_owned(), REFERENCE_CONTRACT.to_owned())
        .map_err(engine_error)?;
    engine
        .add_data(to_regorus_value(json!({"caracal": {"authz": authz}}))?)
        .map_err(engine_error)?;
    engine.set_execution_timer_config(PolicyConfig::default().eval_timer());
    Ok(engine)
}

fn eval_result(engine: &Engine, input: &Json) -> Result<Value, EvalError> {
    let mut engine = engine.clone();
    engine.set_input(to_regorus_value(input.clone())?);
    engine
        .eval_rule(RESULT_RULE.to_owned())
        .map_err(engine_error)
}

/// The three outcomes for one data document and one input: reference, precomputed, fallback.
fn outcomes(authz: &Json, input: &Json) -> [Outcome; 3] {
    let config = PolicyConfig::default();
    let reference = reference_engine(authz).and_then(|engine| eval_result(&engine, input));
    let precomputed = build_engine(authz.clone(), &config, Derived::Precomputed)
        .and_then(|engine| eval_result(&engine, input));
    let fallback = build_engine(authz.clone(), &config, Derived::Absent)
        .and_then(|engine| eval_result(&engine, input));
    [outcome(reference), outcome(precomputed), outcome(fallback)]
}

fn assert_agree(authz: &Json, input: &Json) -> Outcome {
    let [reference, precomputed, fallback] = outcomes(authz, input);
    assert_eq!(
        precomputed, reference,
        "precomputed differs from the reference\ndata: {authz}\ninput: {input}"
    );
    assert_eq!(
        fallback, reference,
        "fallback differs from the reference\ndata: {authz}\ninput: {input}"
    );
    reference
}

// ---------------------------------------------------------------------------
// Generators. Small vocabularies, so that keys, labels and scopes meet often; mostly well-formed
// values with a share of wrong types, numbers where strings belong, and absent fields.
// ---------------------------------------------------------------------------

fn one_of(items: Vec<Json>) -> impl Strategy<Value = Json> {
    proptest::sample::select(items)
}

fn scope() -> impl Strategy<Value = Json> {
    prop_oneof![
        8 => one_of(vec![json!("a:read"), json!("a:write"), json!("a:admin"), json!("b:read")]),
        1 => one_of(vec![json!("agent:lifecycle"), json!(""), json!(5), json!(null)]),
    ]
}

fn string_scopes() -> impl Strategy<Value = Json> {
    proptest::collection::vec(
        one_of(vec![
            json!("a:read"),
            json!("a:write"),
            json!("a:admin"),
            json!("b:read"),
        ]),
        0..4,
    )
    .prop_map(Json::Array)
}

fn scopes() -> impl Strategy<Value = Json> {
    proptest::collection::vec(scope(), 0..4).prop_map(Json::Array)
}

fn label() -> impl Strategy<Value = Json> {
    prop_oneof![
        8 => one_of(vec![json!("reader"), json!("writer"), json!("sandbox-1"), json!("ci-1")]),
        1 => one_of(vec![json!(""), json!(7), json!("5")]),
    ]
}

fn identifier() -> impl Strategy<Value = Json> {
    prop_oneof![
        8 => one_of(vec![json!("resource://a"), json!("resource://b")]),
        1 => one_of(vec![json!("5"), json!(5), json!(null)]),
    ]
}

fn app_id() -> impl Strategy<Value = Json> {
    prop_oneof![
        8 => one_of(vec![json!("app-a"), json!("app-b")]),
        1 => one_of(vec![json!("app-c"), json!(1)]),
    ]
}

/// Wraps `value` so that it is absent about a quarter of the time.
fn maybe(value: impl Strategy<Value = Json>) -> impl Strategy<Value = Option<Json>> {
    proptest::option::weighted(0.75, value)
}

fn object(fields: Vec<(&'static str, Option<Json>)>) -> Json {
    let mut map = Map::new();
    for (key, value) in fields {
        if let Some(value) = value {
            map.insert(key.to_owned(), value);
        }
    }
    Json::Object(map)
}

fn app_ids() -> impl Strategy<Value = Json> {
    prop_oneof![
        8 => proptest::collection::btree_map(
            proptest::sample::select(vec!["a", "b", "5", "c"]),
            app_id(),
            0..4,
        )
        .prop_map(|map| Json::Object(map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        1 => one_of(vec![json!(["a"]), json!("a")]),
    ]
}

fn grant() -> impl Strategy<Value = Json> {
    let roles = proptest::collection::btree_map(
        proptest::sample::select(vec!["reader", "writer", "sandbox-1", "5"]),
        prop_oneof![6 => string_scopes(), 1 => scopes(), 1 => Just(json!("a:read"))],
        0..3,
    )
    .prop_map(|map| Json::Object(map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()));
    prop_oneof![
        8 => (
            maybe(prop_oneof![
                8 => one_of(vec![json!("a"), json!("b")]),
                1 => one_of(vec![json!("5"), json!(5), json!("c")]),
            ]),
            maybe(roles),
        )
            .prop_map(|(application, roles)| object(vec![
                ("application", application),
                ("roles", roles),
            ])),
        1 => Just(json!("grant")),
    ]
}

fn grants() -> impl Strategy<Value = Json> {
    prop_oneof![
        8 => proptest::collection::btree_map(
            proptest::sample::select(vec!["resource://a", "resource://b", "5"]),
            grant(),
            0..3,
        )
        .prop_map(|map| Json::Object(map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        1 => Just(json!(["resource://a"])),
    ]
}

fn confinement() -> impl Strategy<Value = Json> {
    let entry = prop_oneof![
        8 => (
            maybe(prop_oneof![
                8 => one_of(vec![json!("sandbox-"), json!("ci-"), json!("writ")]),
                1 => one_of(vec![json!(""), json!(1)]),
            ]),
            maybe(prop_oneof![4 => string_scopes(), 1 => Just(json!("a:read"))]),
        )
            .prop_map(|(prefix, scopes)| object(vec![
                ("label_prefix", prefix),
                ("scopes", scopes),
            ])),
        1 => Just(json!("sandbox-")),
    ];
    prop_oneof![
        8 => proptest::collection::vec(entry, 0..3).prop_map(Json::Array),
        1 => one_of(vec![json!({}), json!("sandbox-")]),
    ]
}

fn restrict() -> impl Strategy<Value = Json> {
    prop_oneof![
        8 => one_of(vec![json!([]), json!({})]),
        1 => one_of(vec![
            json!(["maintenance"]),
            json!({"k": 1}),
            json!("frozen"),
            json!(""),
            json!(true),
            json!(0),
            json!(null),
        ]),
    ]
}

fn risk() -> impl Strategy<Value = Json> {
    let entry = prop_oneof![
        8 => (
            prop_oneof![8 => one_of(vec![json!("a:write"), json!("a:admin"), json!("b:read")]), 1 => one_of(vec![json!(""), json!(5)])],
            prop_oneof![8 => one_of(vec![json!("high"), json!("low")]), 1 => one_of(vec![json!(""), json!(1)])],
        )
            .prop_map(|(scope, tier)| json!({"scope": scope, "tier": tier})),
        1 => one_of(vec![json!("a:write"), json!({"scope": "a:write"}), json!({"tier": "high"})]),
    ];
    prop_oneof![
        8 => proptest::collection::vec(entry, 0..4).prop_map(Json::Array),
        1 => one_of(vec![json!({"scope": "a:write", "tier": "high"}), json!("high")]),
    ]
}

fn approval_tiers() -> impl Strategy<Value = Json> {
    let declaration = prop_oneof![
        8 => (
            maybe(prop_oneof![8 => one_of(vec![json!("high"), json!("low")]), 1 => one_of(vec![json!(""), json!(3)])]),
            proptest::option::weighted(0.4, prop_oneof![8 => one_of(vec![json!("operator"), json!("subject"), json!("any")]), 1 => one_of(vec![json!("root"), json!(null)])]),
            proptest::option::weighted(0.4, prop_oneof![8 => one_of(vec![json!("identified"), json!("pseudonymous"), json!("anonymous")]), 1 => Just(json!("public"))]),
            proptest::option::weighted(0.4, prop_oneof![8 => one_of(vec![json!(60), json!(900), json!(60.0)]), 1 => one_of(vec![json!(0), json!(-5), json!(1.5), json!("60")])]),
        )
            .prop_map(|(tier, approver, privacy, ttl)| object(vec![
                ("tier", tier),
                ("approver", approver),
                ("privacy", privacy),
                ("ttl_seconds", ttl),
            ])),
        1 => Just(json!("high")),
    ];
    prop_oneof![
        8 => proptest::collection::vec(declaration, 0..3).prop_map(Json::Array),
        1 => one_of(vec![json!({"tier": "high"}), json!("high")]),
    ]
}

/// The scopes of a role: usually one of the nested role lists of a realistic grant.
fn role_scopes() -> impl Strategy<Value = Json> {
    prop_oneof![
        6 => one_of(vec![
            json!(["a:read"]),
            json!(["a:read", "a:write"]),
            json!(["a:read", "a:write", "a:admin"]),
            json!(["b:read"]),
        ]),
        1 => scopes(),
    ]
}

/// A coherent zone (keys, grants, tiers and declarations that refer to each other), with the
/// parts chosen at random.
fn coherent_app_ids() -> impl Strategy<Value = Json> {
    one_of(vec![
        json!({"a": "app-a", "b": "app-b"}),
        json!({"a": "app-a", "a-legacy": "app-a", "b": "app-b", "5": "app-b"}),
    ])
}

fn coherent_roles() -> impl Strategy<Value = Json> {
    proptest::collection::btree_map(
        proptest::sample::select(vec!["reader", "writer", "sandbox-1", "ci-1"]),
        role_scopes(),
        1..4,
    )
    .prop_map(|map| Json::Object(map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

fn coherent_grants() -> impl Strategy<Value = Json> {
    (coherent_roles(), coherent_roles()).prop_map(|(a_roles, b_roles)| {
        json!({
            "resource://a": {"application": "a", "roles": a_roles},
            "resource://b": {"application": "b", "roles": b_roles},
            "5": {"application": "5", "roles": {"reader": ["a:read"]}},
        })
    })
}

fn coherent_confinement() -> impl Strategy<Value = Json> {
    one_of(vec![
        json!([]),
        json!([{"label_prefix": "sandbox-", "scopes": ["a:read"]}]),
        json!([{"label_prefix": "sandbox-", "scopes": ["a:read"]}, {"label_prefix": "ci-", "scopes": ["a:read", "a:write"]}]),
    ])
}

fn coherent_risk() -> impl Strategy<Value = Json> {
    proptest::sample::subsequence(
        vec![
            json!({"scope": "a:write", "tier": "high"}),
            json!({"scope": "a:admin", "tier": "high"}),
            json!({"scope": "a:read", "tier": "low"}),
            json!({"scope": "b:read", "tier": "unlisted"}),
        ],
        0..=4,
    )
    .prop_map(Json::Array)
}

fn coherent_approval_tiers() -> impl Strategy<Value = Json> {
    proptest::sample::subsequence(
        vec![
            json!({"tier": "high", "approver": "subject", "ttl_seconds": 600}),
            json!({"tier": "low"}),
            json!({"tier": "low", "approver": "any", "privacy": "anonymous"}),
            json!({"tier": "spare"}),
        ],
        0..=4,
    )
    .prop_map(Json::Array)
}

/// Data for the contract: two times in three a coherent zone (every root well formed, no
/// restriction), else roots drawn from everything, malformed included.
fn authz_data() -> impl Strategy<Value = Json> {
    let coherent = (
        coherent_app_ids(),
        coherent_grants(),
        coherent_confinement(),
        proptest::option::weighted(0.5, one_of(vec![json!([]), json!({})])),
        coherent_risk(),
        coherent_approval_tiers(),
    )
        .prop_map(
            |(app_ids, grants, confinement, restrict, risk, approval_tiers)| {
                object(vec![
                    ("app_ids", Some(app_ids)),
                    ("grants", Some(grants)),
                    ("confinement", Some(confinement)),
                    ("restrict", restrict),
                    ("risk", Some(risk)),
                    ("approval_tiers", Some(approval_tiers)),
                ])
            },
        );
    let mixed = (
        maybe(prop_oneof![1 => coherent_app_ids().boxed(), 1 => app_ids().boxed()]),
        maybe(prop_oneof![1 => coherent_grants().boxed(), 1 => grants().boxed()]),
        maybe(prop_oneof![1 => coherent_confinement().boxed(), 1 => confinement().boxed()]),
        maybe(restrict()),
        maybe(prop_oneof![1 => coherent_risk().boxed(), 1 => risk().boxed()]),
        maybe(prop_oneof![1 => coherent_approval_tiers().boxed(), 1 => approval_tiers().boxed()]),
    )
        .prop_map(
            |(app_ids, grants, confinement, restrict, risk, approval_tiers)| {
                object(vec![
                    ("app_ids", app_ids),
                    ("grants", grants),
                    ("confinement", confinement),
                    ("restrict", restrict),
                    ("risk", risk),
                    ("approval_tiers", approval_tiers),
                ])
            },
        );
    prop_oneof![2 => coherent, 1 => mixed]
}

/// Present with probability `p`.
fn present(p: f64, value: impl Strategy<Value = Json>) -> impl Strategy<Value = Option<Json>> {
    proptest::option::weighted(p, value)
}

fn coherent_labels() -> impl Strategy<Value = Json> {
    proptest::sample::subsequence(
        vec![
            json!("reader"),
            json!("writer"),
            json!("sandbox-1"),
            json!("ci-1"),
            json!("team"),
        ],
        0..=3,
    )
    .prop_map(Json::Array)
}

fn a_scopes() -> impl Strategy<Value = Vec<Json>> {
    proptest::sample::subsequence(
        vec![json!("a:read"), json!("a:write"), json!("a:admin")],
        1..=3,
    )
}

/// A well-formed mint, use or workload request of application `app-a` on `resource://a`.
fn coherent_input() -> impl Strategy<Value = Json> {
    let mint = (coherent_labels(), a_scopes(), prop_oneof![Just(None), a_scopes().prop_map(Some)])
        .prop_map(|(labels, requested, delegated)| {
            let delegated = delegated.unwrap_or_else(|| requested.clone());
            json!({
                "schema_version": "2026-05-20",
                "principal": {"type": "Application", "id": "app-a", "zone_id": "z",
                              "agent_session_id": "as-1", "labels": labels},
                "resource": {"type": "Resource", "id": "r-1", "identifier": "resource://a", "scopes": ["a:read"]},
                "action": {"id": "TokenExchange"},
                "delegation_edge": {"id": "edge-1", "scopes": delegated, "constraints_json": {}},
                "context": {"actor_claims": {}, "agent_session_id": "as-1",
                            "challenge_resolved": false, "requested_scopes": requested}
            })
        });
    let usage = (coherent_labels(), a_scopes(), prop_oneof![Just(json!(["resource://a"])), Just(json!(["resource://b"]))])
        .prop_map(|(labels, presented, target)| {
            let scope = presented
                .iter()
                .filter_map(Json::as_str)
                .collect::<Vec<_>>()
                .join(" ");
            json!({
                "schema_version": "2026-05-20",
                "principal": {"type": "Application", "id": "app-a", "zone_id": "z", "labels": labels},
                "resource": {"type": "Resource", "id": "r-1", "identifier": "resource://a", "scopes": ["a:read"]},
                "action": {"id": "TokenExchange", "method": "GET", "path": "/x"},
                "context": {"actor_claims": {}, "challenge_resolved": false, "requested_scopes": [],
                            "subject_claims": {"delegation_edge_id": "edge-1", "scope": scope, "target": target}}
            })
        });
    let workload = a_scopes().prop_map(|requested| {
        json!({
            "schema_version": "2026-05-20",
            "principal": {"type": "Workload", "id": "wl-1", "zone_id": "z"},
            "resource": {"type": "Resource", "id": "r-1", "identifier": "resource://a", "scopes": ["a:read"]},
            "action": {"id": "CredentialInjection"},
            "context": {"actor_claims": {}, "challenge_resolved": false, "requested_scopes": requested}
        })
    });
    prop_oneof![3 => mint, 2 => usage, 1 => workload]
}

/// An input: often a well-formed request, else one whose fields' presence is biased by the
/// shape it leans to, with values of any type.
fn policy_input() -> impl Strategy<Value = Json> {
    prop_oneof![1 => coherent_input().boxed(), 2 => leaning_input().boxed()]
}

/// An input of any shape. Each field's presence is biased by the shape the input leans to, so
/// that the deep rows of every shape's table are reached often.
fn leaning_input() -> impl Strategy<Value = Json> {
    // (workload, subject claims, delegation edge, agent session, requested scopes) presence.
    let leaning = proptest::sample::select(vec![
        // mint
        (0.05, 0.1, 0.95, 0.95, 0.95),
        // use
        (0.05, 0.95, 0.1, 0.1, 0.1),
        // workload
        (0.9, 0.1, 0.1, 0.1, 0.5),
        // bootstrap
        (0.05, 0.1, 0.1, 0.1, 0.95),
    ]);
    leaning.prop_flat_map(|(workload, claims, edge, session, requested)| {
        let principal = (
            if workload > 0.5 {
                one_of(vec![json!("Workload"), json!("Workload"), json!("Application")]).boxed()
            } else {
                one_of(vec![json!("Application"), json!("Application"), json!("Workload")]).boxed()
            },
            prop_oneof![3 => Just(json!("app-a")), 1 => app_id()],
            maybe(prop_oneof![
                8 => proptest::collection::vec(label(), 0..3).prop_map(Json::Array),
                1 => one_of(vec![json!("reader"), json!("sandbox-1"), json!({"x": "reader"})]),
            ]),
        )
            .prop_map(|(kind, id, labels)| {
                object(vec![
                    ("type", Some(kind)),
                    ("id", Some(id)),
                    ("zone_id", Some(json!("z"))),
                    ("labels", labels),
                ])
            });
        let action = if workload > 0.5 {
            one_of(vec![json!("CredentialInjection"), json!("CredentialInjection"), json!("TokenExchange")]).boxed()
        } else {
            one_of(vec![json!("TokenExchange"), json!("TokenExchange"), json!("CredentialInjection")]).boxed()
        };
        let subject_claims = present(
            claims,
            (
                maybe(prop_oneof![8 => Just(json!("edge-1")), 1 => one_of(vec![json!(""), json!(5)])]),
                maybe(prop_oneof![
                    8 => one_of(vec![json!("a:read"), json!("a:read a:write"), json!("b:read"), json!("a:admin")]),
                    1 => one_of(vec![json!(" a:read  "), json!(""), json!(" "), json!(5)]),
                ]),
                maybe(prop_oneof![
                    4 => Just(json!(["resource://a"])),
                    4 => proptest::collection::vec(identifier(), 0..3).prop_map(Json::Array),
                    1 => Just(json!("resource://a")),
                ]),
            )
                .prop_map(|(edge_id, scope, target)| {
                    object(vec![
                        ("delegation_edge_id", edge_id),
                        ("scope", scope),
                        ("target", target),
                    ])
                }),
        );
        let delegation_edge = present(
            edge,
            (
                maybe(prop_oneof![8 => Just(json!("edge-1")), 1 => one_of(vec![json!(null), json!(false)])]),
                maybe(prop_oneof![
                    4 => one_of(vec![json!(["a:read"]), json!(["a:read", "a:write"]), json!(["a:read", "a:write", "a:admin"])]),
                    4 => scopes(),
                    1 => one_of(vec![json!("a:read"), json!({"x": "a:read"})]),
                ]),
            )
                .prop_map(|(id, scopes)| object(vec![("id", id), ("scopes", scopes)])),
        );
        let agent_session = present(
            session,
            prop_oneof![8 => Just(json!("as-1")), 1 => one_of(vec![json!(null), json!(false)])],
        );
        let requested_scopes = prop_oneof![
            4 => proptest::sample::subsequence(vec![json!("a:read"), json!("a:write"), json!("a:admin")], 1..=3).prop_map(Json::Array),
            4 => proptest::collection::vec(scope(), 0..4).prop_map(Json::Array),
            1 => one_of(vec![json!("a:read"), json!({"0": "a:read"}), json!(null)]),
        ];
        let requested_scopes = if requested > 0.9 {
            prop_oneof![
                6 => requested_scopes.boxed(),
                2 => Just(json!(["agent:lifecycle"])).boxed(),
            ]
            .boxed()
        } else {
            present(0.3, requested_scopes)
                .prop_map(|scopes| scopes.unwrap_or_else(|| json!([])))
                .boxed()
        };
        (
            principal,
            prop_oneof![3 => Just(json!("resource://a")), 1 => identifier()],
            action,
            subject_claims,
            delegation_edge,
            agent_session,
            requested_scopes,
        )
            .prop_map(
                |(principal, identifier, action, subject_claims, edge, session, requested)| {
                    object(vec![
                        ("schema_version", Some(json!("2026-05-20"))),
                        ("principal", Some(principal)),
                        (
                            "resource",
                            Some(json!({"type": "Resource", "id": "r-1", "identifier": identifier, "scopes": ["a:read"]})),
                        ),
                        ("action", Some(json!({"id": action}))),
                        ("delegation_edge", edge),
                        (
                            "context",
                            Some(object(vec![
                                ("actor_claims", Some(json!({}))),
                                ("subject_claims", subject_claims),
                                ("agent_session_id", session),
                                ("challenge_resolved", Some(json!(false))),
                                ("requested_scopes", Some(requested)),
                            ])),
                        ),
                    ])
                },
            )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_contract_decides_as_the_reference_with_and_without_derived_data(
        authz in authz_data(),
        input in policy_input(),
    ) {
        assert_agree(&authz, &input);
    }
}

/// The generators reach every row of the decision table, so the property above compares them
/// all. Deterministic: the same cases on every run.
#[test]
fn generated_cases_reach_every_row_of_the_decision_table() {
    let mut runner = TestRunner::new(Config {
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        ..Config::default()
    });
    let mut seen = std::collections::BTreeSet::new();
    let mut counts = std::collections::BTreeMap::new();
    let strategy = (authz_data(), policy_input());
    for _ in 0..1500 {
        let (authz, input) = strategy
            .new_tree(&mut runner)
            .map(|tree| tree.current())
            .unwrap();
        if let Outcome::Result(document) = assert_agree(&authz, &input) {
            let decision = Decision::from_result_document(&document).unwrap();
            let row = match decision.deny_reason() {
                Some(reason) => reason.to_owned(),
                None => decision
                    .determining_policies
                    .first()
                    .map(|policy| {
                        let hold = if decision.requires_step_up() {
                            "+hold"
                        } else {
                            ""
                        };
                        match policy.rsplit('-').next() {
                            Some("bootstrap") => "allow bootstrap".to_owned(),
                            Some(kind) if policy == "caracal-workload-mint" => {
                                format!("allow workload {kind}{hold}")
                            }
                            Some(kind) => format!("allow {kind}{hold}"),
                            None => policy.clone(),
                        }
                    })
                    .unwrap_or_default(),
            };
            *counts.entry(row.clone()).or_insert(0_u32) += 1;
            seen.insert(row);
        }
    }

    for row in [
        "restriction_active",
        "malformed_risk_data",
        "malformed_approval_data",
        "resource_not_granted",
        "delegation_scope_exceeded",
        "confinement_violation",
        "role_scope_mismatch",
        "mandate_target_mismatch",
        "no_rule_matched",
        "allow workload mint",
        "allow workload mint+hold",
        "allow mint",
        "allow mint+hold",
        "allow use",
        "allow bootstrap",
    ] {
        assert!(
            seen.contains(row),
            "no generated case reached {row:?}; reached {counts:?}"
        );
    }
}

/// The value a bundle stores as `data.caracal.derived` is the one the contract computes for
/// itself when that namespace is absent.
#[test]
fn stored_derived_values_equal_what_the_contract_computes_itself() {
    let datasets = [
        json!({}),
        json!({
            "app_ids": {"crm": "app-crm"},
            "grants": {"resource://crm": {"application": "crm", "roles": {"reader": ["crm:read"]}}},
            "confinement": [{"label_prefix": "sandbox-", "scopes": ["crm:read"]}],
            "restrict": [],
            "risk": [{"scope": "crm:write", "tier": "high"}, {"scope": "crm:admin", "tier": "high"}, {"scope": "crm:read", "tier": "low"}],
            "approval_tiers": [{"tier": "low", "approver": "any"}, {"tier": "high", "approver": "subject", "ttl_seconds": 600}, {"tier": "unused"}]
        }),
        json!({"risk": "broken", "approval_tiers": [{"tier": ""}], "confinement": [{"label_prefix": 1}], "restrict": true}),
    ];
    for authz in datasets {
        let config = PolicyConfig::default();
        let prepared = build_engine(authz.clone(), &config, Derived::Precomputed).unwrap();
        let stored = prepared
            .clone()
            .eval_query("data.caracal.derived".to_owned(), false)
            .unwrap()
            .result[0]
            .expressions[0]
            .value
            .clone();
        let mut fallback = build_engine(authz.clone(), &config, Derived::Absent).unwrap();
        let computed = fallback
            .eval_rule("data.caracal.authz.derived".to_owned())
            .unwrap();
        assert_eq!(stored, computed, "{authz}");
        assert!(stored.as_object().is_ok(), "{authz}");
    }
}

/// Generated data: the stored value and the contract's own computation agree too.
#[test]
fn stored_derived_values_equal_the_fallback_on_generated_data() {
    let mut runner = TestRunner::new(Config {
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        ..Config::default()
    });
    let strategy = authz_data();
    for _ in 0..200 {
        let authz = strategy.new_tree(&mut runner).unwrap().current();
        let config = PolicyConfig::default();
        let prepared = build_engine(authz.clone(), &config, Derived::Precomputed).unwrap();
        let stored = prepared
            .clone()
            .eval_query("data.caracal.derived".to_owned(), false)
            .unwrap()
            .result[0]
            .expressions[0]
            .value
            .clone();
        let computed = build_engine(authz.clone(), &config, Derived::Absent)
            .unwrap()
            .eval_rule("data.caracal.authz.derived".to_owned())
            .unwrap();
        assert_eq!(stored, computed, "{authz}");
    }
}
