//! The decision contract: our own Rego module (`contract/caracal_contract.rego`), its identity,
//! the prepared evaluation engine built from it, and the start-up self check
//! (`authority-and-policy.md` §5.2, §5.4).

use regorus::{Engine, Rc, Value};
use sha2::{Digest, Sha256};

use crate::config::{MATERIALIZATION_LIMIT, PolicyConfig, timer};
use crate::decision::{Decision, DecisionKind, EvalError, engine_error};
use crate::document::{MAX_DOCUMENT_BYTES, MAX_DOCUMENT_COLUMN, MAX_DOCUMENT_LINES};

/// The contract's Rego source, embedded at build time.
pub const CONTRACT_REGO: &str = include_str!("../contract/caracal_contract.rego");

/// The upstream decision semantics the contract implements.
pub const CONTRACT_VERSION: &str = "2026-07-12";

/// The rule every evaluation asks for.
pub const RESULT_RULE: &str = "data.caracal.authz.result";

/// The contract rule that computes the data-derived values (flags and lookup tables that depend
/// on the data alone). [`build_evaluation_engine`] evaluates it once and stores the value as
/// `data.caracal.derived`, which the contract reads instead of recomputing it per request.
pub(crate) const DERIVE_RULE: &str = "data.caracal.authz.derive_values";

/// The file name the contract is loaded under (appears in regorus messages).
const CONTRACT_SOURCE_NAME: &str = "caracal_contract.rego";

/// Whether [`build_engine`] precomputes the data-derived values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Derived {
    /// Evaluate [`DERIVE_RULE`] once and add its value as `data.caracal.derived` (every bundle).
    Precomputed,
    /// Leave `data.caracal.derived` absent, so the contract computes the values itself on every
    /// evaluation (its fallback; tests compare the two).
    #[cfg(test)]
    Absent,
}

/// Lowercase hex SHA-256 of [`CONTRACT_REGO`].
pub fn contract_sha256() -> String {
    hex::encode(Sha256::digest(CONTRACT_REGO.as_bytes()))
}

/// A regorus engine with the parser limits and the OPA built-in semantics every engine here
/// shares: Rego v1, and a failing built-in makes its expression undefined.
pub(crate) fn new_engine() -> Engine {
    let mut engine = Engine::new();
    engine.set_rego_v0(false);
    engine.set_strict_builtin_errors(false);
    engine.set_policy_length_config(regorus::PolicyLengthConfig {
        max_col: MAX_DOCUMENT_COLUMN,
        max_file_bytes: MAX_DOCUMENT_BYTES,
        max_lines: MAX_DOCUMENT_LINES,
    });
    engine
}

/// The prepared evaluation engine (§5.2 step 4): the contract over `authz_data`, which becomes
/// `data.caracal.authz`, with the configured time limit, compiled for [`RESULT_RULE`] once.
///
/// Before compiling, the contract's own [`DERIVE_RULE`] is evaluated once over that data (under
/// [`MATERIALIZATION_LIMIT`], like the rest of the bundle build) and its value is added as
/// `data.caracal.derived`: the per-request evaluation then reads the `risk` and
/// `approval_tiers` checks (the §5.2 second line) and the diagnostics lookup tables instead of
/// recomputing them. The values come from the contract's Rego, so there is one definition.
///
/// The returned engine is never evaluated directly: each evaluation clones it.
pub(crate) fn build_evaluation_engine(
    authz_data: serde_json::Value,
    config: &PolicyConfig,
) -> Result<Engine, EvalError> {
    build_engine(authz_data, config, Derived::Precomputed)
}

/// [`build_evaluation_engine`], optionally without the precomputed derived values.
pub(crate) fn build_engine(
    authz_data: serde_json::Value,
    config: &PolicyConfig,
    derived: Derived,
) -> Result<Engine, EvalError> {
    let mut engine = new_engine();
    engine
        .add_policy(CONTRACT_SOURCE_NAME.to_owned(), CONTRACT_REGO.to_owned())
        .map_err(engine_error)?;
    let authz = to_regorus_value(authz_data)?;
    engine
        .add_data(caracal_data("authz", authz))
        .map_err(engine_error)?;
    if derived == Derived::Precomputed {
        let values = derive_values(&engine)?;
        engine
            .add_data(caracal_data("derived", values))
            .map_err(engine_error)?;
    }
    engine.set_execution_timer_config(config.eval_timer());
    let entrypoint: Rc<str> = Rc::from(RESULT_RULE);
    engine
        .compile_with_entrypoint(&entrypoint)
        .map_err(engine_error)?;
    Ok(engine)
}

/// Evaluates [`DERIVE_RULE`] over the data already added to `engine` (no input), on a clone
/// limited to [`MATERIALIZATION_LIMIT`].
pub(crate) fn derive_values(engine: &Engine) -> Result<Value, EvalError> {
    let mut engine = engine.clone();
    engine.set_execution_timer_config(timer(MATERIALIZATION_LIMIT));
    let values = engine
        .eval_rule(DERIVE_RULE.to_owned())
        .map_err(engine_error)?;
    if values.as_object().is_err() {
        return Err(EvalError::BadResultShape {
            detail: format!("{DERIVE_RULE} is not an object: {values}"),
        });
    }
    Ok(values)
}

/// `{"caracal": {<key>: <value>}}`, for `add_data`.
fn caracal_data(key: &str, value: Value) -> Value {
    let inner: regorus::value::Object = [(Value::from(key), value)].into_iter().collect();
    let outer: regorus::value::Object = [(Value::from("caracal"), Value::from(inner))]
        .into_iter()
        .collect();
    Value::from(outer)
}

/// Converts JSON into a regorus value without regorus's silent `Undefined` on failure.
pub(crate) fn to_regorus_value(json: serde_json::Value) -> Result<Value, EvalError> {
    serde_json::from_value::<Value>(json).map_err(|source| EvalError::Input { source })
}

/// Evaluates [`RESULT_RULE`] on a fresh clone of a prepared engine.
pub(crate) fn evaluate_prepared(prepared: &Engine, input: Value) -> Result<Decision, EvalError> {
    let mut engine = prepared.clone();
    engine.set_input(input);
    let result = engine
        .eval_rule(RESULT_RULE.to_owned())
        .map_err(engine_error)?;
    Decision::from_result(&result)
}

/// The start-up self check (§5.2): the contract, compiled with empty data and evaluated on an
/// empty input, must answer the default deny `no_rule_matched`. A role that gets anything else
/// must refuse to start.
pub fn self_check() -> Result<(), EvalError> {
    let engine = build_evaluation_engine(
        serde_json::Value::Object(serde_json::Map::new()),
        &PolicyConfig::default(),
    )?;
    let decision = evaluate_prepared(&engine, Value::new_object())?;
    if decision.decision == DecisionKind::Deny
        && decision.is_complete()
        && decision.deny_reason() == Some("no_rule_matched")
    {
        Ok(())
    } else {
        Err(EvalError::SelfCheckFailed {
            got: decision.to_result_document().to_string(),
        })
    }
}

#[cfg(test)]
mod equivalence;
#[cfg(test)]
mod tests;
