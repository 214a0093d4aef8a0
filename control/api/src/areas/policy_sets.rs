//! `/v1/zones/{z}/policy-sets` and `/v1/policy-templates` (wire-contract §6.3, §6.4;
//! authority §5.2, §5.7).
//!
//! A set version is a manifest of policy versions. Before one is stored, the API builds its
//! bundle with the same crate the STS and the gateway load it with (`control_policy`), so a
//! version that is stored is a version that loads. Activation is one transaction under the
//! zone's activation lock: the other sets' active pointers are nulled (one active set per
//! zone), the set's binding points at the version, and `caracal.policy.invalidate` is written
//! to the outbox, which the API's dispatcher publishes after the commit. Activation status
//! reads that outbox row and what every live STS and gateway replica reported to Redis.

use control_store::admin::Archivable;
use std::collections::{BTreeSet, HashMap};

use chrono::Utc;
use control_events::presence::{self, LoadState, PolicyStatus};
use control_policy::{Bundle, BundleError, BundleSource, PolicyConfig, PolicyDocument};
use control_store::{
    admin::policy_sets::{self, NewSetVersion, OutboxRow, PolicySetRow, PolicySetVersionRow},
    outbox::{self, OutboxMessage, PRODUCER_API},
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use http::Method;

use super::{Reply, check_len, is_unique_violation, open_zone, to_value};
use crate::{
    audit::{self, Action},
    auth::Need,
    error::{ApiError, Problem},
    request::{AdminRequest, page_body},
    routes::{Answer, RequestBody, Route, Scope, schema_of, unknown_op},
    state::Api,
};

/// Largest manifest, in policy versions (authority §5.7).
const MAX_MANIFEST: usize = 256;
/// The longest build or evaluation error passed back to the caller, in characters.
const MAX_REASON_CHARS: usize = 1000;
/// The deadline of the Redis reads of activation status.
const REDIS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// The stream activation announces itself on.
const POLICY_INVALIDATE: &str = control_events::streams::POLICY_INVALIDATE;

/// Body of `POST …/policy-sets`: `name` 1–256 characters, unique in the zone.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePolicySet {
    name: String,
    description: Option<String>,
}

/// One manifest entry: a policy version of the zone.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    policy_version_id: String,
}

/// Body of `POST …/policy-sets/{id}/versions`: 1–256 distinct policy versions of the zone,
/// in evaluation order.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSetVersion {
    manifest: Vec<ManifestEntry>,
}

/// Body of `POST …/policy-sets/{id}/simulate`: a version of the set and, optionally, a
/// policy input document (authority §5.3) to decide.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Simulate {
    version_id: String,
    input: Option<Value>,
}

/// Body of `POST …/policy-sets/{id}/activate`: a version of the set.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Activate {
    version_id: String,
}

/// The answer to a new set version: its row plus `version_id`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SetVersionCreated {
    /// The new version's id (also `id`).
    pub version_id: String,
    /// The row.
    #[serde(flatten)]
    pub row: PolicySetVersionRow,
}

/// The answer of `POST …/simulate`: nothing is stored or activated.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Simulation {
    /// Always true.
    pub dry_run: bool,
    /// Whether activating the version would load (its bundle builds).
    pub would_activate: bool,
    /// Machine-readable notes, e.g. `restriction_active`, `no_grants`, `already_active`,
    /// `invalid_policy_bundle:<code>`, `policy_eval_failed`.
    pub warnings: Vec<String>,
    /// One line saying what happened.
    pub explanation: String,
    /// The result document (authority §5.4) for `input`; `null` without input or when the
    /// bundle does not build or the evaluation fails.
    pub result: Option<Value>,
}

/// The answer of `POST …/activate` (202).
#[derive(Debug, Serialize, JsonSchema)]
pub struct Activation {
    /// Always true.
    pub activated: bool,
    /// The activated version.
    pub version_id: String,
    /// The outbox row that announces it.
    pub outbox_id: String,
    /// Where to poll the propagation status.
    pub status_url: String,
}

/// Where an activation stands (authority §5.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PropagationStatus {
    /// The version is not the zone's active version.
    WaitingForActivation,
    /// The invalidation is not published yet.
    WaitingForOutbox,
    /// A live replica has not loaded the version yet, or no STS replica is live.
    WaitingForSts,
    /// Every live STS and gateway replica has loaded the version.
    Loaded,
    /// A live replica reported that the version failed to load.
    Failed,
}

/// The outbox row of an activation.
#[derive(Debug, Serialize, JsonSchema)]
pub struct OutboxState {
    /// Outbox id.
    pub id: String,
    /// `pending`, `published` or `dead`.
    pub state: String,
    /// Publication attempts.
    pub attempts: i32,
    /// The last publication error.
    pub last_error: Option<String>,
    /// When it was published.
    pub dispatched_at: Option<chrono::DateTime<Utc>>,
}

/// What one live replica holds for the zone.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ReplicaStatus {
    /// The replica's instance id.
    pub instance: String,
    /// `loaded` or `failed` for the version asked about; `waiting` when the replica has
    /// reported nothing for it.
    pub state: String,
    /// The version its last report was about.
    pub reported_version_id: Option<String>,
    /// That version's manifest hash.
    pub manifest_sha256: Option<String>,
    /// Why the load failed.
    pub error: Option<String>,
    /// When it reported (RFC 3339).
    pub at: Option<String>,
}

/// The live replicas of one role.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ReplicaGroup {
    /// Live replicas.
    pub live: usize,
    /// Of those, how many loaded the version.
    pub loaded: usize,
    /// Of those, how many failed to load it.
    pub failed: usize,
    /// Each live replica.
    pub instances: Vec<ReplicaStatus>,
}

/// The answer of `GET …/activation-status`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ActivationStatus {
    /// Zone.
    pub zone_id: String,
    /// Policy set.
    pub policy_set_id: String,
    /// The version asked about (default: the set's active version).
    pub version_id: Option<String>,
    /// Whether that version is the zone's active version.
    pub active: bool,
    /// The set's active version.
    pub active_version_id: Option<String>,
    /// The version's manifest hash.
    pub manifest_sha256: Option<String>,
    /// Where the activation stands.
    pub propagation_status: PropagationStatus,
    /// The announcing outbox row (the one named by `outbox_id`, else the newest for the
    /// version); `null` when there is none.
    pub outbox: Option<OutboxState>,
    /// Live STS replicas.
    pub sts: ReplicaGroup,
    /// Live gateway replicas.
    pub gateways: ReplicaGroup,
}

/// A built-in policy document.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PolicyTemplate {
    /// Stable id.
    pub id: String,
    /// Name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// The Rego data document (passes `POST /v1/policies/validate`).
    pub content: String,
}

/// The built-in templates: id, name, description, content.
const TEMPLATES: [(&str, &str, &str, &str); 4] = [
    (
        "grants",
        "Application grants",
        "Binds readable keys to application ids and grants each resource's owning application \
         scopes per role label. Replace the ids, identifiers and scopes with your own.",
        r#"# caracal:data-document
package caracal.authz

import rego.v1

app_ids := {"billing-agent": "<application id>"}

grants := {"resource://billing": {
	"application": "billing-agent",
	"roles": {
		"billing-agent": ["billing:read"],
		"billing-admin": ["billing:read", "billing:write"],
	},
}}
"#,
    ),
    (
        "freeze",
        "Freeze the zone",
        "Any element of restrict denies every request in the zone (restriction_active). \
         Activate it in an incident; activate the previous version to lift it.",
        r#"# caracal:data-document
package caracal.authz

import rego.v1

restrict := ["zone frozen by an operator"]
"#,
    ),
    (
        "risk-approval-tiers",
        "Risk tiers with human approval",
        "Tags scopes with tiers and holds a mint of a tiered scope until a human approves it. \
         Combine with a grants document in the same set.",
        r#"# caracal:data-document
package caracal.authz

import rego.v1

risk := [
	{"scope": "billing:write", "tier": "high"},
	{"scope": "billing:refund", "tier": "critical"},
]

approval_tiers := [
	{"tier": "high", "approver": "operator", "ttl_seconds": 1800},
	{"tier": "critical", "approver": "subject", "ttl_seconds": 600, "privacy": "identified"},
]
"#,
    ),
    (
        "label-confinement",
        "Confinement by session label",
        "A session with a label starting with the prefix may mint only the listed scopes. \
         Combine with a grants document in the same set.",
        r#"# caracal:data-document
package caracal.authz

import rego.v1

confinement := [{"label_prefix": "sandbox-", "scopes": ["billing:read"]}]
"#,
    ),
];

/// The built-in templates.
pub fn templates() -> Vec<PolicyTemplate> {
    TEMPLATES
        .iter()
        .map(|(id, name, description, content)| PolicyTemplate {
            id: (*id).to_owned(),
            name: (*name).to_owned(),
            description: description.split_whitespace().collect::<Vec<_>>().join(" "),
            content: (*content).to_owned(),
        })
        .collect()
}

fn set_not_found() -> Problem {
    Problem::not_found("policy_set")
}

fn version_not_found() -> Problem {
    Problem::not_found("policy_set_version")
}

fn name_taken() -> Problem {
    Problem::new(
        409,
        "policy_set_name_taken",
        "a policy set in this zone has this name",
    )
}

/// 422 `invalid_policy_contract` for the manifest entry at `index`.
fn contract_problem(description: impl Into<String>, index: Option<usize>) -> Problem {
    let problem = Problem::new(
        422,
        "invalid_policy_contract",
        "the manifest does not name usable policy versions of this zone",
    )
    .with_description(description);
    match index {
        Some(index) => problem.with_details(json!({ "index": index })),
        None => problem,
    }
}

/// The machine-readable code of a bundle build failure.
fn bundle_code(err: &BundleError) -> String {
    match err {
        BundleError::ManifestSize { .. } => "manifest_size".to_owned(),
        BundleError::DuplicateManifestEntry { .. } => "duplicate_manifest_entry".to_owned(),
        BundleError::ManifestHashMismatch { .. } => "manifest_hash_mismatch".to_owned(),
        BundleError::MissingDocument { .. } => "missing_document".to_owned(),
        BundleError::UnexpectedDocument { .. } => "unexpected_document".to_owned(),
        BundleError::ContentHashMismatch { .. } => "content_hash_mismatch".to_owned(),
        BundleError::InvalidDocument { source, .. } => source.code(),
        BundleError::Materialization { .. } => "materialization_failed".to_owned(),
        BundleError::BadShape { root, .. } => format!("bad_shape:{root}"),
        BundleError::Compile { .. } => "compile_failed".to_owned(),
    }
}

/// Text cut to [`MAX_REASON_CHARS`].
fn clipped(text: &str) -> String {
    text.chars().take(MAX_REASON_CHARS).collect()
}

/// 422 `invalid_policy_bundle` with the build error's code and reason (build errors name
/// documents, roots and rules; they carry no secrets).
fn bundle_problem(err: &BundleError) -> Problem {
    Problem::new(
        422,
        "invalid_policy_bundle",
        "the policy bundle could not be built",
    )
    .with_description(bundle_code(err))
    .with_details(json!({ "reason": clipped(&err.to_string()) }))
}

/// Builds a bundle off the async workers, with the process's evaluation limits.
async fn build_bundle(
    source: BundleSource,
    config: PolicyConfig,
) -> Result<Result<Bundle, BundleError>, ApiError> {
    tokio::task::spawn_blocking(move || Bundle::build(source, &config))
        .await
        .map_err(|e| ApiError::Internal(format!("bundle build task failed: {e}")))
}

/// The policy version ids of a stored manifest, in order.
fn manifest_ids(manifest: &Value) -> Result<Vec<String>, ApiError> {
    manifest
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e.get("policy_version_id").and_then(Value::as_str))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|ids| ids.len() == manifest.as_array().map_or(0, Vec::len))
        .ok_or_else(|| ApiError::Internal("stored manifest is malformed".to_owned()))
}

/// `GET …/policy-sets`.
pub async fn list(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    req.only_query(&[])?;
    super::zone_page(api, zone, &req.page()?, policy_sets::list).await
}

/// `POST …/policy-sets {name, description?}`.
pub async fn create(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    let body: CreatePolicySet = req.json()?;
    check_len("name", &body.name, 1, 256)?;
    if let Some(d) = &body.description {
        check_len("description", d, 0, 4096)?;
    }
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    if policy_sets::name_taken(&mut tx, &body.name).await? {
        return Err(name_taken().into());
    }
    let id = uuid::Uuid::now_v7().to_string();
    let row = match policy_sets::insert(
        &mut tx,
        &id,
        zone_id.as_str(),
        &body.name,
        body.description.as_deref(),
        &req.principal.id,
    )
    .await
    {
        Ok(row) => row,
        Err(e) => {
            let err = ApiError::from(e);
            return Err(if is_unique_violation(&err) {
                name_taken().into()
            } else {
                err
            });
        }
    };
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(
            zone_id.as_str(),
            "policy_set",
            &id,
            201,
            json!({"name": body.name}),
        ),
    )
    .await?;
    Ok(Reply::Json(201, to_value(&row)?))
}

/// `GET …/policy-sets/{id}`.
pub async fn get(api: &Api, zone: &str, id: &str) -> Result<Reply, ApiError> {
    let (mut tx, _) = open_zone(api, zone).await?;
    let row = policy_sets::get(&mut tx, id)
        .await?
        .ok_or_else(set_not_found)?;
    tx.commit().await?;
    Ok(Reply::Json(200, to_value(&row)?))
}

/// `DELETE …/policy-sets/{id}`: archives the set and removes its binding. When the set was
/// the zone's active set, the zone falls back to deny-all (`no_active_policy_set`) and
/// `caracal.policy.invalidate` (without a version) tells every replica to reload.
pub async fn delete(
    api: &Api,
    req: &AdminRequest,
    zone: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    policy_sets::lock_activation(&mut tx, zone_id.as_str()).await?;
    if policy_sets::get_for_update(&mut tx, id).await?.is_none() {
        return Err(set_not_found().into());
    }
    let was_active = policy_sets::remove_binding(&mut tx, id).await?;
    control_store::admin::archive(&mut tx, Archivable::PolicySet, id, &req.principal.id).await?;
    let mut outbox_id = None;
    if was_active.is_some() {
        let message_id = uuid::Uuid::now_v7().to_string();
        // Deletion is terminal, so the set id names the transition once.
        let dedupe = format!("deactivate:{}:{id}", zone_id.as_str());
        let payload = json!({"zone_id": zone_id.as_str(), "policy_set_id": id});
        outbox::enqueue(
            &mut tx,
            &OutboxMessage {
                id: &message_id,
                producer: PRODUCER_API,
                zone_id: Some(zone_id.as_str()),
                topic: POLICY_INVALIDATE,
                dedupe_key: Some(&dedupe),
                payload: &payload,
                request_id: Some(&req.request_id),
            },
        )
        .await?;
        outbox_id = Some(message_id);
    }
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(
            zone_id.as_str(),
            "policy_set",
            id,
            204,
            json!({"deactivated_version_id": was_active, "outbox_id": outbox_id}),
        ),
    )
    .await?;
    if outbox_id.is_some() {
        api.outbox.wake();
    }
    Ok(Reply::NoContent)
}

/// `POST …/policy-sets/{id}/versions {manifest}`: checks the manifest against the zone's
/// policy versions (422 `invalid_policy_contract`), builds the bundle (422
/// `invalid_policy_bundle`), then stores the next version.
pub async fn add_version(
    api: &Api,
    req: &AdminRequest,
    zone: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    let body: CreateSetVersion = req.json()?;
    if body.manifest.is_empty() || body.manifest.len() > MAX_MANIFEST {
        return Err(Problem::invalid_body(
            "manifest",
            format!("must name 1 to {MAX_MANIFEST} policy versions"),
        )
        .into());
    }
    let ids: Vec<String> = body
        .manifest
        .into_iter()
        .map(|e| e.policy_version_id)
        .collect();
    let mut seen = BTreeSet::new();
    for (index, pv) in ids.iter().enumerate() {
        check_len(&format!("manifest[{index}].policy_version_id"), pv, 1, 256)?;
        if !seen.insert(pv.as_str()) {
            return Err(Problem::invalid_body(
                &format!("manifest[{index}].policy_version_id"),
                "names a policy version already in the manifest",
            )
            .into());
        }
    }
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    if policy_sets::get_for_update(&mut tx, id).await?.is_none() {
        return Err(set_not_found().into());
    }
    let found = policy_sets::manifest_documents(&mut tx, &ids).await?;
    let mut by_id: HashMap<String, policy_sets::ManifestDocument> =
        found.into_iter().map(|d| (d.id.clone(), d)).collect();
    let mut documents = Vec::with_capacity(ids.len());
    for (index, pv) in ids.iter().enumerate() {
        let document = by_id
            .remove(pv)
            .ok_or_else(|| contract_problem("unknown_policy_version", Some(index)))?;
        if document.policy_archived {
            return Err(contract_problem("policy_archived", Some(index)).into());
        }
        documents.push(document);
    }
    let schema = documents
        .first()
        .map(|d| d.schema_version.clone())
        .unwrap_or_default();
    if let Some(index) = documents.iter().position(|d| d.schema_version != schema) {
        return Err(contract_problem("mixed_schema_versions", Some(index)).into());
    }
    if schema != control_policy::SCHEMA_VERSION {
        return Err(contract_problem(format!("unsupported_schema_version:{schema}"), None).into());
    }
    let version_id = uuid::Uuid::now_v7().to_string();
    let manifest_sha256 = control_policy::manifest_sha256(&ids);
    let source = BundleSource {
        policy_set_id: id.to_owned(),
        policy_set_version_id: version_id.clone(),
        manifest: ids.clone(),
        manifest_sha256: manifest_sha256.clone(),
        documents: documents
            .into_iter()
            .map(|d| PolicyDocument {
                id: d.id,
                content: d.content,
                content_sha256: d.content_sha256,
                schema_version: d.schema_version,
            })
            .collect(),
    };
    if let Err(err) = build_bundle(source, api.config.policy).await? {
        return Err(bundle_problem(&err).into());
    }
    let manifest_json = Value::Array(
        ids.iter()
            .map(|pv| json!({"policy_version_id": pv}))
            .collect(),
    );
    let row = policy_sets::append_version(
        &mut tx,
        &NewSetVersion {
            id: &version_id,
            zone_id: zone_id.as_str(),
            policy_set_id: id,
            manifest_json: &manifest_json,
            manifest_sha256: &manifest_sha256,
            schema_version: &schema,
            created_by: &req.principal.id,
        },
    )
    .await?;
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(
            zone_id.as_str(),
            "policy_set_version",
            &version_id,
            201,
            json!({"policy_set_id": id, "version": row.version, "manifest_sha256": manifest_sha256}),
        ),
    )
    .await?;
    Ok(Reply::Json(
        201,
        to_value(&SetVersionCreated { version_id, row })?,
    ))
}

/// `GET …/policy-sets/{id}/versions`.
pub async fn list_versions(
    api: &Api,
    req: &AdminRequest,
    zone: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    req.only_query(&[])?;
    let page = req.page()?;
    let (mut tx, _) = open_zone(api, zone).await?;
    if policy_sets::get(&mut tx, id).await?.is_none() {
        return Err(set_not_found().into());
    }
    let rows = policy_sets::versions(&mut tx, id, &page).await?;
    tx.commit().await?;
    Ok(Reply::Json(
        200,
        page_body(&rows, |row| to_value(row).unwrap_or_default()),
    ))
}

/// `GET …/policy-sets/{id}/versions/{version_id}`.
pub async fn get_version(
    api: &Api,
    zone: &str,
    id: &str,
    version_id: &str,
) -> Result<Reply, ApiError> {
    let (mut tx, _) = open_zone(api, zone).await?;
    if policy_sets::get(&mut tx, id).await?.is_none() {
        return Err(set_not_found().into());
    }
    let row = policy_sets::version(&mut tx, id, version_id)
        .await?
        .ok_or_else(version_not_found)?;
    tx.commit().await?;
    Ok(Reply::Json(200, to_value(&row)?))
}

/// `POST …/policy-sets/{id}/simulate {version_id, input?}`: builds the version's bundle as a
/// replica would and, given an input, decides it. Nothing is stored.
pub async fn simulate(
    api: &Api,
    req: &AdminRequest,
    zone: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    let body: Simulate = req.json()?;
    if body.input.as_ref().is_some_and(|i| !i.is_object()) {
        return Err(Problem::invalid_body("input", "must be a JSON object").into());
    }
    let (mut tx, _) = open_zone(api, zone).await?;
    if policy_sets::get(&mut tx, id).await?.is_none() {
        return Err(set_not_found().into());
    }
    let version = policy_sets::version(&mut tx, id, &body.version_id)
        .await?
        .ok_or_else(version_not_found)?;
    let ids = manifest_ids(&version.manifest_json)?;
    let rows = control_store::policy_sets::policy_versions(&mut tx, &ids).await?;
    tx.commit().await?;
    let source = BundleSource {
        policy_set_id: id.to_owned(),
        policy_set_version_id: version.id.clone(),
        manifest: ids,
        manifest_sha256: version.manifest_sha256.clone(),
        documents: rows
            .into_iter()
            .map(|r| PolicyDocument {
                id: r.id,
                content: r.content,
                content_sha256: r.content_sha256,
                schema_version: r.schema_version,
            })
            .collect(),
    };
    let input = body.input;
    let config = api.config.policy;
    let outcome = tokio::task::spawn_blocking(move || {
        Bundle::build(source, &config).map(|bundle| {
            let decision = input.as_ref().map(|i| bundle.evaluate_json(i));
            (bundle.data().clone(), decision)
        })
    })
    .await
    .map_err(|e| ApiError::Internal(format!("simulation task failed: {e}")))?;
    let mut warnings = Vec::new();
    if version.active {
        warnings.push("already_active".to_owned());
    }
    let simulation = match outcome {
        Err(err) => {
            warnings.push(format!("invalid_policy_bundle:{}", bundle_code(&err)));
            Simulation {
                dry_run: true,
                would_activate: false,
                warnings,
                explanation: format!("the bundle does not build: {}", clipped(&err.to_string())),
                result: None,
            }
        }
        Ok((data, decision)) => {
            if data.get("restrict").is_some_and(non_empty) {
                warnings.push("restriction_active".to_owned());
            }
            if !data.get("grants").is_some_and(non_empty) {
                warnings.push("no_grants".to_owned());
            }
            let (explanation, result) = match decision {
                None => (
                    "the bundle builds; no input was given, so nothing was decided".to_owned(),
                    None,
                ),
                Some(Ok(decision)) => (explain(&decision), Some(decision.to_result_document())),
                Some(Err(err)) => {
                    warnings.push("policy_eval_failed".to_owned());
                    (
                        format!("the evaluation failed: {}", clipped(&err.to_string())),
                        None,
                    )
                }
            };
            Simulation {
                dry_run: true,
                would_activate: true,
                warnings,
                explanation,
                result,
            }
        }
    };
    Ok(Reply::Json(200, to_value(&simulation)?))
}

/// Whether a materialized root holds at least one element or entry.
fn non_empty(value: &Value) -> bool {
    match value {
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Null => false,
        _ => true,
    }
}

/// One line for a decision.
fn explain(decision: &control_policy::Decision) -> String {
    if decision.is_allow() {
        let by = decision.determining_policies.join(", ");
        let tiers: Vec<String> = decision
            .approval_tiers()
            .into_iter()
            .map(|t| t.tier)
            .collect();
        if tiers.is_empty() {
            format!("allow by {by}")
        } else {
            format!(
                "allow by {by}, held for human approval (tiers {})",
                tiers.join(", ")
            )
        }
    } else {
        format!(
            "deny: {}",
            decision.deny_reason().unwrap_or("no_rule_matched")
        )
    }
}

/// `POST …/policy-sets/{id}/activate {version_id}` → 202 (authority §5.7): under the zone's
/// activation lock, makes the version the zone's only active version and writes
/// `caracal.policy.invalidate` to the outbox in the same transaction.
pub async fn activate(
    api: &Api,
    req: &AdminRequest,
    zone: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    let body: Activate = req.json()?;
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    policy_sets::lock_activation(&mut tx, zone_id.as_str()).await?;
    if policy_sets::get_for_update(&mut tx, id).await?.is_none() {
        return Err(set_not_found().into());
    }
    // Policy versions are immutable (a trigger refuses UPDATE and DELETE), so the version
    // and the documents its manifest names cannot change under the activation; the spec's
    // `FOR SHARE` lock on them (which `caracal_api` could not take without UPDATE) adds nothing.
    let version = policy_sets::version(&mut tx, id, &body.version_id)
        .await?
        .ok_or_else(version_not_found)?;
    let updated_at = policy_sets::activate(
        &mut tx,
        zone_id.as_str(),
        id,
        &version.id,
        &req.principal.id,
    )
    .await?;
    let dedupe = format!(
        "activate:{}:{}:{}",
        zone_id.as_str(),
        version.id,
        updated_at.timestamp_micros()
    );
    let payload = json!({
        "zone_id": zone_id.as_str(),
        "policy_set_id": id,
        "policy_set_version_id": version.id,
    });
    let message_id = uuid::Uuid::now_v7().to_string();
    let inserted = outbox::enqueue(
        &mut tx,
        &OutboxMessage {
            id: &message_id,
            producer: PRODUCER_API,
            zone_id: Some(zone_id.as_str()),
            topic: POLICY_INVALIDATE,
            dedupe_key: Some(&dedupe),
            payload: &payload,
            request_id: Some(&req.request_id),
        },
    )
    .await?;
    let outbox_id = if inserted {
        message_id
    } else {
        policy_sets::outbox_id_by_dedupe(&mut tx, POLICY_INVALIDATE, &dedupe)
            .await?
            .ok_or_else(|| ApiError::Internal("activation outbox row vanished".to_owned()))?
    };
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(
            zone_id.as_str(),
            "policy_set",
            id,
            202,
            json!({"version_id": version.id, "manifest_sha256": version.manifest_sha256, "outbox_id": outbox_id}),
        ),
    )
    .await?;
    api.outbox.wake();
    let status_url = format!(
        "/v1/zones/{}/policy-sets/{id}/activation-status?version_id={}&outbox_id={outbox_id}",
        zone_id.as_str(),
        version.id
    );
    Ok(Reply::Json(
        202,
        to_value(&Activation {
            activated: true,
            version_id: version.id,
            outbox_id,
            status_url,
        })?,
    ))
}

/// `GET …/policy-sets/{id}/activation-status?version_id=&outbox_id=` (authority §5.7).
pub async fn activation_status(
    api: &Api,
    req: &AdminRequest,
    zone: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    req.only_query(&["version_id", "outbox_id"])?;
    let asked_version = req.filter("version_id");
    let asked_outbox = req.filter("outbox_id");
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    let set = policy_sets::get(&mut tx, id)
        .await?
        .ok_or_else(set_not_found)?;
    // The outbox row named by the caller, if any: it must announce this set.
    let named_row = match asked_outbox {
        Some(o) => Some(
            policy_sets::invalidation(&mut tx, zone_id.as_str(), POLICY_INVALIDATE, o)
                .await?
                .filter(|r| r.policy_set_id.as_deref() == Some(id))
                .ok_or_else(|| Problem::not_found("outbox"))?,
        ),
        None => None,
    };
    // The version: asked for, else the one the named row announces, else the active one.
    let version_key = asked_version
        .or_else(|| {
            named_row
                .as_ref()
                .and_then(|r| r.policy_set_version_id.as_deref())
        })
        .or(set.active_version_id.as_deref());
    let version = match version_key {
        Some(v) => Some(
            policy_sets::version(&mut tx, id, v)
                .await?
                .ok_or_else(version_not_found)?,
        ),
        None => None,
    };
    let outbox_row = match (named_row, &version) {
        (Some(row), v) => {
            if row.policy_set_version_id.as_deref() != v.as_ref().map(|v| v.id.as_str()) {
                return Err(Problem::not_found("outbox").into());
            }
            Some(row)
        }
        (None, Some(v)) => {
            policy_sets::latest_invalidation(&mut tx, zone_id.as_str(), POLICY_INVALIDATE, &v.id)
                .await?
        }
        (None, None) => None,
    };
    tx.commit().await?;
    let (live_sts, live_gateways, reports) = read_presence(api, zone_id.as_str()).await?;
    let version_id = version.as_ref().map(|v| v.id.clone());
    let sts = replica_group("sts", &live_sts, &reports, version_id.as_deref());
    let gateways = replica_group("gateway", &live_gateways, &reports, version_id.as_deref());
    let active = version
        .as_ref()
        .is_some_and(|v| set.active_version_id.as_deref() == Some(v.id.as_str()));
    let propagation_status = propagation(active, outbox_row.as_ref(), &sts, &gateways);
    let status = ActivationStatus {
        zone_id: zone_id.as_str().to_owned(),
        policy_set_id: id.to_owned(),
        version_id,
        active,
        active_version_id: set.active_version_id,
        manifest_sha256: version.map(|v| v.manifest_sha256),
        propagation_status,
        outbox: outbox_row.map(|r| OutboxState {
            id: r.id,
            state: r.status,
            attempts: r.attempts,
            last_error: r.last_error.map(|e| clipped(&e)),
            dispatched_at: r.published_at,
        }),
        sts,
        gateways,
    };
    Ok(Reply::Json(200, to_value(&status)?))
}

/// Live STS instances, live gateway instances and the zone's status reports.
async fn read_presence(
    api: &Api,
    zone: &str,
) -> Result<(Vec<String>, Vec<String>, HashMap<String, PolicyStatus>), ApiError> {
    let redis_error = |e: String| ApiError::Redis(e);
    let reads = async {
        let mut conn = api
            .redis
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let now = Utc::now();
        let sts = presence::live_instances(&mut conn, "sts", now)
            .await
            .map_err(|e| e.to_string())?;
        let gateways = presence::live_instances(&mut conn, "gateway", now)
            .await
            .map_err(|e| e.to_string())?;
        let reports = presence::policy_statuses(&mut conn, zone)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((sts, gateways, reports))
    };
    tokio::time::timeout(REDIS_TIMEOUT, reads)
        .await
        .map_err(|_elapsed| redis_error("presence read timed out".to_owned()))?
        .map_err(redis_error)
}

/// What the live instances of `service` report for `version`.
fn replica_group(
    service: &str,
    live: &[String],
    reports: &HashMap<String, PolicyStatus>,
    version: Option<&str>,
) -> ReplicaGroup {
    let mut instances: Vec<ReplicaStatus> = live
        .iter()
        .map(|instance| {
            let field = control_events::streams::policy_status_field(service, instance);
            let report = reports.get(&field);
            let about_version =
                report.filter(|r| version == Some(r.policy_set_version_id.as_str()));
            let state = match about_version.map(|r| r.state) {
                Some(LoadState::Loaded) => "loaded",
                Some(LoadState::Failed) => "failed",
                None => "waiting",
            };
            ReplicaStatus {
                instance: instance.clone(),
                state: state.to_owned(),
                reported_version_id: report.map(|r| r.policy_set_version_id.clone()),
                manifest_sha256: report
                    .map(|r| r.manifest_sha256.clone())
                    .filter(|m| !m.is_empty()),
                error: report.and_then(|r| r.error.as_deref().map(clipped)),
                at: report.map(|r| r.at.clone()),
            }
        })
        .collect();
    instances.sort_by(|a, b| a.instance.cmp(&b.instance));
    ReplicaGroup {
        live: instances.len(),
        loaded: instances.iter().filter(|i| i.state == "loaded").count(),
        failed: instances.iter().filter(|i| i.state == "failed").count(),
        instances,
    }
}

/// The propagation status: not active → waiting for activation; any live replica failed →
/// failed; the announcing row still pending → waiting for the outbox; no live STS, or a live
/// STS or gateway that has not loaded the version → waiting for the STS; else loaded.
///
/// A `dead` outbox row does not block: the replicas' binding poll loads the version without
/// the message. With no live gateway the gateways are not waited for (a deployment may run
/// without one); with no live STS nothing can have loaded, so the answer stays waiting.
fn propagation(
    active: bool,
    outbox: Option<&OutboxRow>,
    sts: &ReplicaGroup,
    gateways: &ReplicaGroup,
) -> PropagationStatus {
    if !active {
        return PropagationStatus::WaitingForActivation;
    }
    if sts.failed > 0 || gateways.failed > 0 {
        return PropagationStatus::Failed;
    }
    if outbox.is_some_and(|r| r.status == "pending") {
        return PropagationStatus::WaitingForOutbox;
    }
    if sts.live == 0 || sts.loaded < sts.live || gateways.loaded < gateways.live {
        return PropagationStatus::WaitingForSts;
    }
    PropagationStatus::Loaded
}

/// `GET /v1/policy-templates`: a bare array.
pub fn list_templates(req: &AdminRequest) -> Result<Reply, ApiError> {
    req.only_query(&[])?;
    let items = templates()
        .iter()
        .map(to_value)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Reply::Json(200, Value::Array(items)))
}

const ZONE_404: (u16, &str) = (404, "zone_not_found");
const SET_404: (u16, &str) = (404, "policy_set_not_found");
const VERSION_404: (u16, &str) = (404, "policy_set_version_not_found");

/// The area's operations.
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/policy-sets",
        op: "policy_sets.list",
        summary: "List policy sets (rows carry active_version_id)",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Page(schema_of::<PolicySetRow>),
        query: &[],
        refusals: &[ZONE_404],
    },
    Route {
        method: Method::POST,
        path: "/zones/{zone_id}/policy-sets",
        op: "policy_sets.create",
        summary: "Create a policy set",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::Json(schema_of::<CreatePolicySet>),
        answer: Answer::Json(201, schema_of::<PolicySetRow>),
        query: &[],
        refusals: &[ZONE_404, (409, "policy_set_name_taken")],
    },
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/policy-sets/{policy_set_id}",
        op: "policy_sets.get",
        summary: "Read a policy set",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Json(200, schema_of::<PolicySetRow>),
        query: &[],
        refusals: &[ZONE_404, SET_404],
    },
    Route {
        method: Method::DELETE,
        path: "/zones/{zone_id}/policy-sets/{policy_set_id}",
        op: "policy_sets.delete",
        summary: "Archive a policy set; if it was active the zone denies everything",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::NoContent,
        query: &[],
        refusals: &[ZONE_404, SET_404],
    },
    Route {
        method: Method::POST,
        path: "/zones/{zone_id}/policy-sets/{policy_set_id}/versions",
        op: "policy_sets.add_version",
        summary: "Add a version from a manifest of policy versions (its bundle is built first)",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::Json(schema_of::<CreateSetVersion>),
        answer: Answer::Json(201, schema_of::<SetVersionCreated>),
        query: &[],
        refusals: &[
            ZONE_404,
            SET_404,
            (422, "invalid_policy_contract"),
            (422, "invalid_policy_bundle"),
        ],
    },
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/policy-sets/{policy_set_id}/versions",
        op: "policy_sets.list_versions",
        summary: "List a policy set's versions",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Page(schema_of::<PolicySetVersionRow>),
        query: &[],
        refusals: &[ZONE_404, SET_404],
    },
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/policy-sets/{policy_set_id}/versions/{version_id}",
        op: "policy_sets.get_version",
        summary: "Read a policy set version",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Json(200, schema_of::<PolicySetVersionRow>),
        query: &[],
        refusals: &[ZONE_404, SET_404, VERSION_404],
    },
    Route {
        method: Method::POST,
        path: "/zones/{zone_id}/policy-sets/{policy_set_id}/simulate",
        op: "policy_sets.simulate",
        summary: "Build a version's bundle and decide an input, without activating anything",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::Json(schema_of::<Simulate>),
        answer: Answer::Json(200, schema_of::<Simulation>),
        query: &[],
        refusals: &[ZONE_404, SET_404, VERSION_404],
    },
    Route {
        method: Method::POST,
        path: "/zones/{zone_id}/policy-sets/{policy_set_id}/activate",
        op: "policy_sets.activate",
        summary: "Make a version the zone's active policy (202; poll status_url)",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::Json(schema_of::<Activate>),
        answer: Answer::Accepted(schema_of::<Activation>),
        query: &[],
        refusals: &[ZONE_404, SET_404, VERSION_404],
    },
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/policy-sets/{policy_set_id}/activation-status",
        op: "policy_sets.activation_status",
        summary: "Where an activation stands across the live STS and gateway replicas",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Json(200, schema_of::<ActivationStatus>),
        query: &[
            crate::routes::Param {
                name: "version_id",
                description: "the version to report on (default: the set's active version)",
            },
            crate::routes::Param {
                name: "outbox_id",
                description: "the outbox row the activation answered with",
            },
        ],
        refusals: &[
            ZONE_404,
            SET_404,
            VERSION_404,
            (404, "outbox_not_found"),
            (503, "redis_unavailable"),
        ],
    },
    Route {
        method: Method::GET,
        path: "/policy-templates",
        op: "policy_templates.list",
        summary: "Built-in policy documents (a bare array)",
        need: Need::Read,
        scope: Scope::Any,
        body: RequestBody::None,
        answer: Answer::Array(schema_of::<PolicyTemplate>),
        query: &[],
        refusals: &[],
    },
];

/// Runs operation `op` with its path parameters.
pub async fn handle(
    api: &Api,
    req: &AdminRequest,
    op: &str,
    p: &[&str],
) -> Result<Reply, ApiError> {
    match (op, p) {
        ("policy_sets.list", [z]) => list(api, req, z).await,
        ("policy_sets.create", [z]) => create(api, req, z).await,
        ("policy_sets.get", [z, id]) => get(api, z, id).await,
        ("policy_sets.delete", [z, id]) => delete(api, req, z, id).await,
        ("policy_sets.add_version", [z, id]) => add_version(api, req, z, id).await,
        ("policy_sets.list_versions", [z, id]) => list_versions(api, req, z, id).await,
        ("policy_sets.get_version", [z, id, v]) => get_version(api, z, id, v).await,
        ("policy_sets.simulate", [z, id]) => simulate(api, req, z, id).await,
        ("policy_sets.activate", [z, id]) => activate(api, req, z, id).await,
        ("policy_sets.activation_status", [z, id]) => activation_status(api, req, z, id).await,
        ("policy_templates.list", []) => list_templates(req),
        _ => Err(unknown_op(op)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_validate_and_build() {
        for template in templates() {
            control_policy::validate_document(&template.content, control_policy::SCHEMA_VERSION)
                .unwrap_or_else(|e| panic!("{}: {}", template.id, e.code()));
            let ids = vec![template.id.clone()];
            let source = BundleSource {
                policy_set_id: "set".to_owned(),
                policy_set_version_id: "v".to_owned(),
                manifest_sha256: control_policy::manifest_sha256(&ids),
                manifest: ids,
                documents: vec![PolicyDocument {
                    id: template.id.clone(),
                    content_sha256: control_policy::content_sha256(&template.content),
                    content: template.content.clone(),
                    schema_version: control_policy::SCHEMA_VERSION.to_owned(),
                }],
            };
            if let Err(e) = Bundle::build(source, &PolicyConfig::default()) {
                panic!("{}: {e}", template.id);
            }
        }
    }

    fn group(live: usize, loaded: usize, failed: usize) -> ReplicaGroup {
        ReplicaGroup {
            live,
            loaded,
            failed,
            instances: Vec::new(),
        }
    }

    fn outbox_row(status: &str) -> OutboxRow {
        OutboxRow {
            id: "o".to_owned(),
            status: status.to_owned(),
            attempts: 1,
            last_error: None,
            published_at: None,
            policy_set_id: None,
            policy_set_version_id: None,
        }
    }

    #[test]
    fn propagation_follows_activation_outbox_and_replicas() {
        use PropagationStatus::*;
        let published = outbox_row("published");
        let pending = outbox_row("pending");
        let dead = outbox_row("dead");
        let cases: [(
            bool,
            Option<&OutboxRow>,
            ReplicaGroup,
            ReplicaGroup,
            PropagationStatus,
        ); 9] = [
            (
                false,
                Some(&published),
                group(1, 1, 0),
                group(0, 0, 0),
                WaitingForActivation,
            ),
            (
                true,
                Some(&pending),
                group(1, 1, 0),
                group(0, 0, 0),
                WaitingForOutbox,
            ),
            (true, Some(&pending), group(1, 0, 1), group(0, 0, 0), Failed),
            (
                true,
                Some(&published),
                group(0, 0, 0),
                group(0, 0, 0),
                WaitingForSts,
            ),
            (
                true,
                Some(&published),
                group(2, 1, 0),
                group(0, 0, 0),
                WaitingForSts,
            ),
            (
                true,
                Some(&published),
                group(1, 1, 0),
                group(1, 0, 0),
                WaitingForSts,
            ),
            (
                true,
                Some(&published),
                group(1, 1, 0),
                group(1, 0, 1),
                Failed,
            ),
            (true, Some(&dead), group(1, 1, 0), group(1, 1, 0), Loaded),
            (true, None, group(2, 2, 0), group(0, 0, 0), Loaded),
        ];
        for (i, (active, outbox, sts, gateways, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                propagation(active, outbox, &sts, &gateways),
                want,
                "case {i}"
            );
        }
    }
}
