//! Every row of the decision table (`authority-and-policy.md` §5.4), evaluated through
//! [`Bundle::build`] and [`Bundle::evaluate`] over real adopter documents in `tests/fixtures/`.
//!
//! The rows whose data a bundle build rejects (`malformed_risk_data`,
//! `malformed_approval_data`) are covered against the contract directly, in
//! `src/contract/tests.rs`.

use std::error::Error;

use control_policy::{
    Action, Approver, Bundle, BundleSource, Context, Decision, DelegationEdge, PolicyConfig,
    PolicyDocument, PolicyInput, Principal, Privacy, Resource, SCHEMA_VERSION, TierDeclaration,
    content_sha256, manifest_sha256,
};
use serde_json::{Map, Value, json};

type TestResult<T = ()> = Result<T, Box<dyn Error>>;

const ZONE_GRANTS: &str = include_str!("fixtures/zone_grants.rego");
const ZONE_RISK: &str = include_str!("fixtures/zone_risk.rego");
const RESTRICTED: &str = include_str!("fixtures/restricted.rego");

fn bundle(documents: &[&str]) -> TestResult<Bundle> {
    let documents: Vec<PolicyDocument> = documents
        .iter()
        .enumerate()
        .map(|(index, content)| PolicyDocument {
            id: format!("pv-{index}"),
            content: (*content).to_owned(),
            content_sha256: content_sha256(content),
            schema_version: SCHEMA_VERSION.to_owned(),
        })
        .collect();
    let manifest: Vec<String> = documents
        .iter()
        .map(|document| document.id.clone())
        .collect();
    let source = BundleSource {
        policy_set_id: "ps-1".to_owned(),
        policy_set_version_id: "psv-1".to_owned(),
        manifest_sha256: manifest_sha256(&manifest),
        manifest,
        documents,
    };
    Ok(Bundle::build(source, &PolicyConfig::default())?)
}

fn zone() -> TestResult<Bundle> {
    bundle(&[ZONE_GRANTS, ZONE_RISK])
}

fn crm() -> Resource {
    Resource::new(
        "res-crm",
        "resource://crm",
        ["crm:read", "crm:write", "crm:admin"],
    )
}

/// A delegated mint by `app_id` from an agent session with `labels`.
fn mint(app_id: &str, labels: &[&str], requested: &[&str], delegated: &[&str]) -> PolicyInput {
    mint_of(app_id, labels, crm(), requested, delegated)
}

fn mint_of(
    app_id: &str,
    labels: &[&str],
    resource: Resource,
    requested: &[&str],
    delegated: &[&str],
) -> PolicyInput {
    PolicyInput::new(
        Principal::application(app_id, "zone-1")
            .with_registration_method("managed")
            .with_agent_session("as-1", "task", labels.iter().copied()),
        resource,
        Action::token_exchange(),
        Context::for_client(app_id)
            .with_trace_id("req-1")
            .with_agent_session_id("as-1")
            .with_delegation_edge_id("edge-1")
            .with_requested_scopes(requested.iter().copied()),
    )
    .with_delegation_edge(DelegationEdge::new("edge-1", delegated.iter().copied()))
}

fn bootstrap(app_id: &str, resource: Resource) -> PolicyInput {
    PolicyInput::new(
        Principal::application(app_id, "zone-1").with_registration_method("managed"),
        resource,
        Action::token_exchange(),
        Context::for_client(app_id).with_scope_field("agent:lifecycle"),
    )
}

fn workload(requested: &[&str]) -> PolicyInput {
    PolicyInput::new(
        Principal::workload("wl-1", "zone-1"),
        Resource::new("res-x", "resource://not-granted-anywhere", ["x:read"]),
        Action::credential_injection(),
        Context::for_client("wl-1").with_requested_scopes(requested.iter().copied()),
    )
}

fn claims(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// A gateway decision on a presented mandate (no requested scopes).
fn use_of(app_id: &str, labels: &[&str], scope: &str, target: &[&str]) -> PolicyInput {
    PolicyInput::new(
        Principal::application(app_id, "zone-1").with_agent_session(
            "as-1",
            "task",
            labels.iter().copied(),
        ),
        crm(),
        Action::gateway("GET", "/v1/contacts"),
        Context::for_client(app_id).with_subject_claims(claims(json!({
            "sub": "user-1",
            "aud": ["caracal"],
            "scope": scope,
            "target": target,
            "delegation_edge_id": "edge-1",
            "exp": 1_900_000_000
        }))),
    )
}

fn deny_reason(decision: &Decision) -> Option<&str> {
    decision.deny_reason()
}

fn assert_deny(decision: &Decision, reason: &str) {
    assert_eq!(
        decision.to_result_document(),
        json!({
            "decision": "deny",
            "evaluation_status": "complete",
            "determining_policies": [],
            "diagnostics": [{"reason": reason}]
        }),
        "{decision:?}"
    );
}

fn assert_allow(decision: &Decision, policy: &str, diagnostics: &Value) {
    assert_eq!(
        decision.to_result_document(),
        json!({
            "decision": "allow",
            "evaluation_status": "complete",
            "determining_policies": [{"policy": policy}],
            "diagnostics": diagnostics
        }),
        "{decision:?}"
    );
}

// --- any shape: restriction_active ---

#[test]
fn restriction_denies_every_shape() -> TestResult {
    let bundle = bundle(&[ZONE_GRANTS, ZONE_RISK, RESTRICTED])?;
    let inputs = [
        mint("app-crm", &["reader"], &["crm:read"], &["crm:read"]),
        bootstrap("app-crm", crm()),
        workload(&[]),
        use_of("app-crm", &["reader"], "crm:read", &["resource://crm"]),
        bootstrap("app-crm", crm()).with_session("sess-1"),
    ];
    for input in inputs {
        assert_deny(&bundle.evaluate(&input)?, "restriction_active");
    }
    Ok(())
}

// --- workload ---

#[test]
fn workload_injection_allows_caracal_workload_mint_without_a_grants_check() -> TestResult {
    let decision = zone()?.evaluate(&workload(&[]))?;
    assert_allow(&decision, "caracal-workload-mint", &json!([]));
    Ok(())
}

#[test]
fn workload_injection_carries_mint_diagnostics() -> TestResult {
    let decision = zone()?.evaluate(&workload(&["crm:write", "x:unclassified"]))?;
    assert_allow(
        &decision,
        "caracal-workload-mint",
        &json!([
            {"step_up_required": {"type": "human_approval", "tiers": [
                {"approver": "subject", "privacy": "pseudonymous", "tier": "high", "ttl_seconds": 600}
            ]}},
            {"risk": [{"scope": "crm:write", "tier": "high"}]}
        ]),
    );
    Ok(())
}

#[test]
fn a_workload_presenting_a_subject_token_is_not_the_workload_shape() -> TestResult {
    let mut input = workload(&[]);
    input.context.subject_claims = Some(claims(json!({"sub": "user-1"})));
    assert_deny(&zone()?.evaluate(&input)?, "no_rule_matched");
    Ok(())
}

// --- mint ---

#[test]
fn mint_within_grant_delegation_confinement_and_role_allows_caracal_key_mint() -> TestResult {
    let decision = zone()?.evaluate(&mint(
        "app-crm",
        &["writer"],
        &["crm:write"],
        &["crm:read", "crm:write"],
    ))?;
    assert!(decision.is_allow());
    assert_eq!(decision.determining_policies, vec!["caracal-crm-mint"]);
    Ok(())
}

#[test]
fn mint_diagnostics_list_matching_tiers_then_classified_scopes_both_sorted() -> TestResult {
    let decision = zone()?.evaluate(&mint(
        "app-crm",
        &["admin"],
        &["crm:write", "crm:read", "crm:admin", "crm:write"],
        &["crm:read", "crm:write", "crm:admin"],
    ))?;
    assert_allow(
        &decision,
        "caracal-crm-mint",
        &json!([
            {"step_up_required": {"type": "human_approval", "tiers": [
                {"approver": "any", "tier": "low"},
                {"approver": "subject", "privacy": "pseudonymous", "tier": "high", "ttl_seconds": 600}
            ]}},
            {"risk": [
                {"scope": "crm:admin", "tier": "high"},
                {"scope": "crm:read", "tier": "low"},
                {"scope": "crm:write", "tier": "high"}
            ]}
        ]),
    );
    assert_eq!(
        decision.approval_tiers(),
        vec![
            TierDeclaration {
                tier: "low".into(),
                approver: Approver::Any,
                privacy: Privacy::Identified,
                ttl_seconds: None,
            },
            TierDeclaration {
                tier: "high".into(),
                approver: Approver::Subject,
                privacy: Privacy::Pseudonymous,
                ttl_seconds: Some(600),
            },
        ]
    );
    assert!(decision.requires_step_up());
    Ok(())
}

#[test]
fn mint_of_a_low_tier_scope_names_only_the_low_tier() -> TestResult {
    let decision = zone()?.evaluate(&mint("app-crm", &["reader"], &["crm:read"], &["crm:read"]))?;
    assert_allow(
        &decision,
        "caracal-crm-mint",
        &json!([
            {"step_up_required": {"type": "human_approval", "tiers": [{"approver": "any", "tier": "low"}]}},
            {"risk": [{"scope": "crm:read", "tier": "low"}]}
        ]),
    );
    Ok(())
}

#[test]
fn mint_without_risk_data_has_no_diagnostics() -> TestResult {
    let decision = bundle(&[ZONE_GRANTS])?.evaluate(&mint(
        "app-crm",
        &["reader"],
        &["crm:read"],
        &["crm:read"],
    ))?;
    assert_allow(&decision, "caracal-crm-mint", &json!([]));
    assert!(!decision.requires_step_up());
    Ok(())
}

#[test]
fn mint_through_a_second_key_of_the_same_application_is_owned() -> TestResult {
    // app-billing is bound to `billing` only; app-crm to both `crm` and `crm-legacy`.
    let billing = Resource::new("res-b", "resource://billing", ["billing:read"]);
    let decision = zone()?.evaluate(&mint_of(
        "app-billing",
        &["reader"],
        billing,
        &["billing:read"],
        &["billing:read"],
    ))?;
    assert_eq!(decision.determining_policies, vec!["caracal-billing-mint"]);
    Ok(())
}

#[test]
fn mint_by_an_application_that_does_not_own_the_resource_is_resource_not_granted() -> TestResult {
    let decision = zone()?.evaluate(&mint(
        "app-billing",
        &["reader"],
        &["crm:read"],
        &["crm:read"],
    ))?;
    assert_deny(&decision, "resource_not_granted");
    Ok(())
}

#[test]
fn mint_of_a_resource_without_a_grant_is_resource_not_granted() -> TestResult {
    let unknown = Resource::new("res-u", "resource://unknown", ["u:read"]);
    let decision = zone()?.evaluate(&mint_of(
        "app-crm",
        &["reader"],
        unknown,
        &["u:read"],
        &["u:read"],
    ))?;
    assert_deny(&decision, "resource_not_granted");
    Ok(())
}

#[test]
fn mint_beyond_the_delegated_scopes_is_delegation_scope_exceeded() -> TestResult {
    let decision = zone()?.evaluate(&mint(
        "app-crm",
        &["writer"],
        &["crm:read", "crm:write"],
        &["crm:read"],
    ))?;
    assert_deny(&decision, "delegation_scope_exceeded");
    let decision = zone()?.evaluate(&mint("app-crm", &["writer"], &["crm:read"], &[]))?;
    assert_deny(&decision, "delegation_scope_exceeded");
    Ok(())
}

#[test]
fn mint_from_a_confined_session_outside_its_scopes_is_confinement_violation() -> TestResult {
    let decision = zone()?.evaluate(&mint(
        "app-crm",
        &["sandbox-7", "writer"],
        &["crm:write"],
        &["crm:read", "crm:write"],
    ))?;
    assert_deny(&decision, "confinement_violation");
    Ok(())
}

#[test]
fn mint_from_a_confined_session_within_its_scopes_allows() -> TestResult {
    let decision = zone()?.evaluate(&mint(
        "app-crm",
        &["sandbox-7", "reader"],
        &["crm:read"],
        &["crm:read"],
    ))?;
    assert!(decision.is_allow(), "{decision:?}");
    Ok(())
}

#[test]
fn mint_beyond_every_role_of_the_session_is_role_scope_mismatch() -> TestResult {
    let decision = zone()?.evaluate(&mint(
        "app-crm",
        &["reader"],
        &["crm:write"],
        &["crm:write"],
    ))?;
    assert_deny(&decision, "role_scope_mismatch");
    // One role must hold every requested scope; two roles do not add up.
    let decision = zone()?.evaluate(&mint(
        "app-crm",
        &["reader", "unknown-role"],
        &["crm:read", "crm:admin"],
        &["crm:read", "crm:admin"],
    ))?;
    assert_deny(&decision, "role_scope_mismatch");
    Ok(())
}

#[test]
fn mint_from_a_session_without_labels_is_role_scope_mismatch() -> TestResult {
    let decision = zone()?.evaluate(&mint("app-crm", &[], &["crm:read"], &["crm:read"]))?;
    assert_deny(&decision, "role_scope_mismatch");
    Ok(())
}

#[test]
fn mint_guards_apply_in_table_order() -> TestResult {
    // Not owned, not narrowed, not confined and no role: the first guard answers.
    let decision = zone()?.evaluate(&mint("app-billing", &["sandbox-1"], &["crm:admin"], &[]))?;
    assert_eq!(deny_reason(&decision), Some("resource_not_granted"));
    // Owned but not narrowed, not confined and no role.
    let decision = zone()?.evaluate(&mint("app-crm", &["sandbox-1"], &["crm:admin"], &[]))?;
    assert_eq!(deny_reason(&decision), Some("delegation_scope_exceeded"));
    // Narrowed but not confined and no role.
    let decision = zone()?.evaluate(&mint(
        "app-crm",
        &["sandbox-1"],
        &["crm:admin"],
        &["crm:admin"],
    ))?;
    assert_eq!(deny_reason(&decision), Some("confinement_violation"));
    Ok(())
}

// --- use ---

#[test]
fn use_within_the_role_allows_caracal_key_use_without_diagnostics() -> TestResult {
    let decision = zone()?.evaluate(&use_of(
        "app-crm",
        &["writer"],
        "crm:read crm:write",
        &["resource://crm"],
    ))?;
    assert_allow(&decision, "caracal-crm-use", &json!([]));
    Ok(())
}

#[test]
fn use_of_a_mandate_for_another_target_is_mandate_target_mismatch() -> TestResult {
    let decision = zone()?.evaluate(&use_of(
        "app-crm",
        &["reader"],
        "crm:read",
        &["resource://billing"],
    ))?;
    assert_deny(&decision, "mandate_target_mismatch");
    Ok(())
}

#[test]
fn use_by_an_application_that_does_not_own_the_resource_is_resource_not_granted() -> TestResult {
    let decision = zone()?.evaluate(&use_of(
        "app-billing",
        &["reader"],
        "crm:read",
        &["resource://crm"],
    ))?;
    assert_deny(&decision, "resource_not_granted");
    Ok(())
}

#[test]
fn use_with_presented_scopes_beyond_the_role_is_role_scope_mismatch() -> TestResult {
    let decision = zone()?.evaluate(&use_of(
        "app-crm",
        &["reader"],
        "crm:read  crm:write",
        &["resource://crm"],
    ))?;
    assert_deny(&decision, "role_scope_mismatch");
    Ok(())
}

#[test]
fn a_mandate_without_scopes_is_not_the_use_shape() -> TestResult {
    let decision = zone()?.evaluate(&use_of("app-crm", &["reader"], " ", &["resource://crm"]))?;
    assert_deny(&decision, "no_rule_matched");
    Ok(())
}

// --- bootstrap ---

#[test]
fn bootstrap_by_the_owning_application_allows_caracal_bootstrap_without_a_role_check() -> TestResult
{
    let decision = zone()?.evaluate(&bootstrap("app-crm", crm()))?;
    assert_allow(&decision, "caracal-bootstrap", &json!([]));
    Ok(())
}

#[test]
fn bootstrap_failing_ownership_is_no_rule_matched() -> TestResult {
    let decision = zone()?.evaluate(&bootstrap("app-billing", crm()))?;
    assert_deny(&decision, "no_rule_matched");
    let unknown = Resource::new("res-u", "resource://unknown", ["u:read"]);
    let decision = zone()?.evaluate(&bootstrap("app-crm", unknown))?;
    assert_deny(&decision, "no_rule_matched");
    Ok(())
}

// --- otherwise ---

#[test]
fn requests_of_no_known_shape_are_no_rule_matched() -> TestResult {
    let zone = zone()?;
    // agent:lifecycle together with another scope is neither a mint nor a bootstrap.
    let mixed = mint(
        "app-crm",
        &["admin"],
        &["agent:lifecycle", "crm:read"],
        &["agent:lifecycle", "crm:read"],
    );
    // A mint without the agent session in the context.
    let mut sessionless = mint("app-crm", &["reader"], &["crm:read"], &["crm:read"]);
    sessionless.context.agent_session_id.clear();
    // A direct exchange of a subject token with requested scopes.
    let mut direct = use_of("app-crm", &["reader"], "crm:read", &["resource://crm"]);
    direct.context.requested_scopes = vec!["crm:read".to_owned()];
    // Nothing requested at all.
    let empty = PolicyInput::new(
        Principal::application("app-crm", "zone-1"),
        crm(),
        Action::token_exchange(),
        Context::for_client("app-crm"),
    );
    for input in [mixed, sessionless, direct, empty] {
        assert_deny(&zone.evaluate(&input)?, "no_rule_matched");
    }
    Ok(())
}

// --- fallback and raw JSON ---

#[test]
fn deny_all_fallback_answers_no_active_policy_set_for_every_input() -> TestResult {
    let fallback = Bundle::deny_all();
    for input in [
        mint("app-crm", &["reader"], &["crm:read"], &["crm:read"]),
        workload(&[]),
    ] {
        assert_deny(&fallback.evaluate(&input)?, "no_active_policy_set");
    }
    assert_deny(&fallback.evaluate_json(&json!({}))?, "no_active_policy_set");
    Ok(())
}

#[test]
fn raw_json_input_is_decided_like_the_typed_input() -> TestResult {
    let zone = zone()?;
    let input = mint("app-crm", &["reader"], &["crm:read"], &["crm:read"]);
    assert_eq!(
        zone.evaluate_json(&input.to_json()?)?,
        zone.evaluate(&input)?
    );
    assert_deny(&zone.evaluate_json(&json!({}))?, "no_rule_matched");
    assert_deny(
        &zone.evaluate_json(&json!("not an object"))?,
        "no_rule_matched",
    );
    Ok(())
}
