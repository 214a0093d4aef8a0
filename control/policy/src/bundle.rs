//! Policy bundles: built once per policy-set version off the request path, evaluated per
//! request (`authority-and-policy.md` §5.2, §5.6).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use regorus::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{MATERIALIZATION_LIMIT, PolicyConfig, timer};
use crate::contract::{
    CONTRACT_VERSION, build_evaluation_engine, contract_sha256, evaluate_prepared, new_engine,
    to_regorus_value,
};
use crate::decision::{Decision, EvalError, engine_error};
use crate::document::{DATA_ROOTS, ValidationError, validate_document};
use crate::hashes::{content_sha256, manifest_sha256};
use crate::input::PolicyInput;
use crate::shapes::check_roots;

/// Largest manifest, in policy versions (§9).
const MAX_MANIFEST_ENTRIES: usize = 256;

/// Our own module that reads the six roots in one evaluation during materialization. It is
/// loaded next to the adopter documents in the materialization engine only; an undefined root
/// leaves its key out. (In Rego v1, `roots["x"] := …` would be a ref-head rule, so each root gets
/// its own one-key object and `roots` merges them.)
const MATERIALIZE_REGO: &str = r#"package caracal_bundle.materialize

import rego.v1

default app_ids_root := {}

app_ids_root := {"app_ids": data.caracal.authz.app_ids}

default grants_root := {}

grants_root := {"grants": data.caracal.authz.grants}

default confinement_root := {}

confinement_root := {"confinement": data.caracal.authz.confinement}

default restrict_root := {}

restrict_root := {"restrict": data.caracal.authz.restrict}

default risk_root := {}

risk_root := {"risk": data.caracal.authz.risk}

default approval_tiers_root := {}

approval_tiers_root := {"approval_tiers": data.caracal.authz.approval_tiers}

roots := object.union_n([
	app_ids_root,
	grants_root,
	confinement_root,
	restrict_root,
	risk_root,
	approval_tiers_root,
])
"#;

const MATERIALIZE_RULE: &str = "data.caracal_bundle.materialize.roots";

/// One stored policy version named by the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDocument {
    /// The policy version id.
    pub id: String,
    /// The Rego content.
    pub content: String,
    /// The stored lowercase hex SHA-256 of `content`.
    pub content_sha256: String,
    /// The stored schema version.
    pub schema_version: String,
}

/// A policy-set version and the policy versions its manifest names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleSource {
    /// The policy set.
    pub policy_set_id: String,
    /// The policy-set version.
    pub policy_set_version_id: String,
    /// The policy version ids, in manifest order.
    pub manifest: Vec<String>,
    /// The stored manifest hash.
    pub manifest_sha256: String,
    /// The policy versions named by the manifest, in any order.
    pub documents: Vec<PolicyDocument>,
}

/// What a decision was made with; stamped on audit events and holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The policy set (empty for the deny-all fallback).
    pub policy_set_id: String,
    /// The policy-set version (empty for the deny-all fallback).
    pub policy_set_version_id: String,
    /// The manifest hash (empty for the deny-all fallback).
    pub manifest_sha256: String,
    /// [`CONTRACT_VERSION`].
    pub contract_version: String,
    /// [`crate::contract_sha256`].
    pub contract_sha256: String,
}

/// Why a policy-set version could not be loaded. Every variant is a load failure: keep the
/// zone's previous bundle, else answer 503 (§5.6).
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The manifest names no policy version, or more than 256.
    #[error("manifest must name 1..=256 policy versions, got {count}")]
    ManifestSize {
        /// How many it names.
        count: usize,
    },
    /// The manifest names a policy version twice.
    #[error("manifest names policy version {policy_version_id} twice")]
    DuplicateManifestEntry {
        /// The repeated id.
        policy_version_id: String,
    },
    /// The stored manifest hash does not match the manifest.
    #[error("manifest_sha256 mismatch: stored {stored}, computed {computed}")]
    ManifestHashMismatch {
        /// The stored hash.
        stored: String,
        /// The hash of the manifest as given.
        computed: String,
    },
    /// A policy version named by the manifest was not supplied.
    #[error("policy version {policy_version_id} named by the manifest was not supplied")]
    MissingDocument {
        /// The missing id.
        policy_version_id: String,
    },
    /// A supplied policy version is not named by the manifest, or is supplied twice.
    #[error("policy version {policy_version_id} is not named by the manifest or is supplied twice")]
    UnexpectedDocument {
        /// The unexpected id.
        policy_version_id: String,
    },
    /// A policy version's content does not match its stored hash.
    #[error(
        "content_sha256 mismatch for policy version {policy_version_id}: stored {stored}, computed {computed}"
    )]
    ContentHashMismatch {
        /// The policy version.
        policy_version_id: String,
        /// The stored hash.
        stored: String,
        /// The hash of the content as given.
        computed: String,
    },
    /// A policy version fails §5.1 validation.
    #[error("policy version {policy_version_id} is invalid: {source}")]
    InvalidDocument {
        /// The policy version.
        policy_version_id: String,
        /// The validation failure; its code is the §5.1 description.
        #[source]
        source: ValidationError,
    },
    /// Evaluating the adopter modules failed (for example a root with two values).
    #[error("materializing the data roots failed: {source}")]
    Materialization {
        /// The engine error.
        #[source]
        source: EvalError,
    },
    /// A materialized root has the wrong shape (§5.2 step 3).
    #[error("data root {root} has the wrong shape: {detail}")]
    BadShape {
        /// The root.
        root: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The contract could not be prepared over the data.
    #[error("preparing the evaluation engine failed: {source}")]
    Compile {
        /// The engine error.
        #[source]
        source: EvalError,
    },
}

/// How a bundle decides.
enum Evaluator {
    /// The no-binding fallback: deny without an engine call.
    DenyAll,
    /// The contract over the materialized data, prepared once; cloned per evaluation that
    /// misses the bundle's decisions.
    Prepared {
        engine: Box<Engine>,
        /// Decisions made, by [`PolicyInput::decision_key`]; filled on the request path,
        /// bounded, and dropped with the bundle (a new policy version is a new bundle).
        decisions: moka::sync::Cache<String, Decision>,
    },
}

/// How many decisions a bundle remembers: distinct (caller, resource, labels, scopes,
/// session) combinations in use at once, each entry a few hundred bytes.
const DECISIONS_REMEMBERED: u64 = 8_192;

/// A loaded policy-set version: the prepared contract over its materialized data, or the
/// deny-all fallback. Build it once, share it as `Arc<Bundle>`.
///
/// Each evaluation clones the prepared [`Engine`] (its modules, compiled rules and data are
/// shared behind `Arc`s), sets the input and evaluates [`crate::RESULT_RULE`]; nothing is parsed
/// or compiled per request. The prepared data holds the materialized roots under
/// `data.caracal.authz` and the contract's data-derived values under `data.caracal.derived`
/// (computed once by [`Bundle::build`]). The clone and `CompiledPolicy::eval_with_input` measured
/// the same within noise in `benches/policy_eval.rs` (group `strategy`; both build a fresh
/// interpreter that shares the prepared state), so we keep the clone: it carries the bundle's
/// own time limit, where a compiled policy only sees regorus's process-wide fallback.
pub struct Bundle {
    provenance: Provenance,
    data: Value,
    evaluator: Evaluator,
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("provenance", &self.provenance)
            .field("deny_all", &matches!(self.evaluator, Evaluator::DenyAll))
            .finish_non_exhaustive()
    }
}

impl Bundle {
    /// Builds the bundle of a policy-set version (§5.2 steps 1–5).
    ///
    /// 1. verifies the manifest (1–256 unique ids, hash) and every content hash, and validates
    ///    every document (§5.1);
    /// 2. materializes the six roots with the adopter modules only, under a 2 s limit;
    /// 3. checks the shapes of the roots;
    /// 4. prepares the contract over `{"caracal":{"authz":<roots>}}` with the configured time
    ///    limit, and installs that limit as regorus's process-wide fallback; before compiling,
    ///    it evaluates the contract's `derive_values` once over those roots and adds the value as
    ///    `data.caracal.derived`, so requests do not recompute what depends on the data alone;
    /// 5. records the provenance.
    pub fn build(source: BundleSource, config: &PolicyConfig) -> Result<Self, BundleError> {
        let documents = verify_source(&source)?;
        let roots = materialize(&documents)?;
        check_roots(&roots).map_err(|err| BundleError::BadShape {
            root: err.root.to_owned(),
            detail: err.detail,
        })?;
        let data = Value::Object(roots);
        let engine = build_evaluation_engine(data.clone(), config)
            .map_err(|source| BundleError::Compile { source })?;
        regorus::utils::limits::set_fallback_execution_timer_config(Some(config.eval_timer()));
        Ok(Self {
            provenance: Provenance {
                policy_set_id: source.policy_set_id,
                policy_set_version_id: source.policy_set_version_id,
                manifest_sha256: source.manifest_sha256,
                contract_version: CONTRACT_VERSION.to_owned(),
                contract_sha256: contract_sha256(),
            },
            data,
            evaluator: Evaluator::Prepared {
                engine: Box::new(engine),
                decisions: moka::sync::Cache::new(DECISIONS_REMEMBERED),
            },
        })
    }

    /// The fallback for a zone without an active binding (§5.6): every evaluation is
    /// deny/complete `no_active_policy_set`, without an engine call. Its provenance is empty
    /// strings plus the contract version and SHA-256.
    pub fn deny_all() -> Self {
        Self {
            provenance: Provenance {
                policy_set_id: String::new(),
                policy_set_version_id: String::new(),
                manifest_sha256: String::new(),
                contract_version: CONTRACT_VERSION.to_owned(),
                contract_sha256: contract_sha256(),
            },
            data: Value::Object(Map::new()),
            evaluator: Evaluator::DenyAll,
        }
    }

    /// Decides one request. A timeout, any regorus error or a result of the wrong shape is an
    /// [`EvalError`], never an allow. A decision is remembered under
    /// [`PolicyInput::decision_key`] and answered again for the same key without running the
    /// contract; errors are not remembered.
    pub fn evaluate(&self, input: &PolicyInput) -> Result<Decision, EvalError> {
        match &self.evaluator {
            Evaluator::DenyAll => Ok(Decision::deny("no_active_policy_set")),
            Evaluator::Prepared { engine, decisions } => {
                let key = input
                    .decision_key()
                    .map_err(|source| EvalError::Input { source })?;
                if let Some(decision) = decisions.get(&key) {
                    return Ok(decision);
                }
                let value = input
                    .to_regorus_value()
                    .map_err(|source| EvalError::Input { source })?;
                // Only decisions are remembered: an engine error or a timeout is evaluated
                // again next time.
                let decision = evaluate_prepared(engine, value)?;
                decisions.insert(key, decision.clone());
                Ok(decision)
            }
        }
    }

    /// Decides a raw JSON input document (simulation and explain), with the same rules as
    /// [`Bundle::evaluate`].
    pub fn evaluate_json(&self, input: &Value) -> Result<Decision, EvalError> {
        match &self.evaluator {
            Evaluator::DenyAll => Ok(Decision::deny("no_active_policy_set")),
            Evaluator::Prepared { engine, .. } => {
                evaluate_prepared(engine, to_regorus_value(input.clone())?)
            }
        }
    }

    /// What this bundle decides with.
    pub const fn provenance(&self) -> &Provenance {
        &self.provenance
    }

    /// Whether this is the deny-all fallback.
    pub const fn is_deny_all(&self) -> bool {
        matches!(self.evaluator, Evaluator::DenyAll)
    }

    /// The materialized roots (`data.caracal.authz`); `{}` for the deny-all fallback.
    pub const fn data(&self) -> &Value {
        &self.data
    }
}

/// Step 1: the manifest, the hashes and §5.1 validation. Returns the documents in manifest
/// order.
fn verify_source(source: &BundleSource) -> Result<Vec<&PolicyDocument>, BundleError> {
    let count = source.manifest.len();
    if count == 0 || count > MAX_MANIFEST_ENTRIES {
        return Err(BundleError::ManifestSize { count });
    }
    let mut seen = BTreeSet::new();
    for id in &source.manifest {
        if !seen.insert(id.as_str()) {
            return Err(BundleError::DuplicateManifestEntry {
                policy_version_id: id.clone(),
            });
        }
    }
    let computed = manifest_sha256(&source.manifest);
    if computed != source.manifest_sha256 {
        return Err(BundleError::ManifestHashMismatch {
            stored: source.manifest_sha256.clone(),
            computed,
        });
    }
    let mut by_id: BTreeMap<&str, &PolicyDocument> = BTreeMap::new();
    for document in &source.documents {
        let named = seen.contains(document.id.as_str());
        if !named || by_id.insert(document.id.as_str(), document).is_some() {
            return Err(BundleError::UnexpectedDocument {
                policy_version_id: document.id.clone(),
            });
        }
    }
    let mut ordered = Vec::with_capacity(count);
    for id in &source.manifest {
        let document =
            by_id
                .get(id.as_str())
                .copied()
                .ok_or_else(|| BundleError::MissingDocument {
                    policy_version_id: id.clone(),
                })?;
        let computed = content_sha256(&document.content);
        if computed != document.content_sha256 {
            return Err(BundleError::ContentHashMismatch {
                policy_version_id: document.id.clone(),
                stored: document.content_sha256.clone(),
                computed,
            });
        }
        validate_document(&document.content, &document.schema_version).map_err(|source| {
            BundleError::InvalidDocument {
                policy_version_id: document.id.clone(),
                source,
            }
        })?;
        ordered.push(document);
    }
    Ok(ordered)
}

/// Step 2: evaluates the six roots over the adopter modules, in one evaluation under
/// [`MATERIALIZATION_LIMIT`]. Sets become arrays.
fn materialize(documents: &[&PolicyDocument]) -> Result<Map<String, Value>, BundleError> {
    let failed = |source: EvalError| BundleError::Materialization { source };
    let mut engine = new_engine();
    engine.set_execution_timer_config(timer(MATERIALIZATION_LIMIT));
    for document in documents {
        engine
            .add_policy(document.id.clone(), document.content.clone())
            .map_err(|err| failed(engine_error(err)))?;
    }
    engine
        .add_policy(
            "caracal_bundle_materialize.rego".to_owned(),
            MATERIALIZE_REGO.to_owned(),
        )
        .map_err(|err| failed(engine_error(err)))?;
    let roots = engine
        .eval_rule(MATERIALIZE_RULE.to_owned())
        .map_err(|err| failed(engine_error(err)))?;
    if roots == regorus::Value::Undefined {
        return Ok(Map::new());
    }
    let json =
        serde_json::to_value(&roots).map_err(|source| failed(EvalError::Input { source }))?;
    let Value::Object(mut roots) = json else {
        return Err(failed(EvalError::BadResultShape {
            detail: "materialized roots are not an object".to_owned(),
        }));
    };
    roots.retain(|root, _| DATA_ROOTS.contains(&root.as_str()));
    Ok(roots)
}

#[cfg(test)]
mod tests;
