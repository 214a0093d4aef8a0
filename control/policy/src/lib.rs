//! Caracal policy: adopter-document validation, bundle builds and the decision contract.
//!
//! This crate owns everything between a stored policy version and a [`Decision`]
//! (`authority-and-policy.md` §5), and is shared by the STS, the gateway and the admin API:
//!
//! - [`validate_document`] checks one adopter document (§5.1) by parsing it with regorus's
//!   parser and walking the AST; [`content_sha256`] and [`manifest_sha256`] are the §5.7 hashes.
//! - [`Bundle::build`] turns a policy-set version into a prepared evaluator (§5.2): it verifies
//!   the hashes, validates every document, materializes the six data roots once, checks their
//!   shapes and prepares our own decision contract ([`CONTRACT_REGO`]) over that data, with the
//!   contract's data-derived values (its §5.2 second-line checks and lookup tables) evaluated
//!   once and stored as `data.caracal.derived`.
//! - [`Bundle::evaluate`] decides one [`PolicyInput`] (§5.3) under the configured time limit and
//!   interprets the result document (§5.4, §5.5), and remembers the decision under the part of
//!   the input the contract reads (decision 0032), so fresh mandates of one caller are decided
//!   once per bundle; [`Bundle::deny_all`] is the no-binding fallback (§5.6).
//! - [`self_check`] is the start-up check every evaluating role runs before serving.
//!
//! What this crate must never do:
//! - never compile Rego, parse adopter documents or add data on the request path: all of that
//!   happens in [`Bundle::build`], off the path, and [`Bundle::evaluate`] only clones a prepared
//!   engine (or answers a remembered decision);
//! - never turn an engine failure, a timeout or a malformed result into an allow: each is an
//!   [`EvalError`], which callers answer with 503 `policy_eval_failed`;
//! - never let an adopter document read `input`, reach outside `data.caracal.authz.<root>`,
//!   use `with`, or call a banned built-in;
//! - never perform I/O: documents arrive as strings, and loading them is the caller's job.
//!
//! Start reading at [`Bundle::build`], then `contract/caracal_contract.rego`.

mod bundle;
mod config;
mod contract;
mod decision;
mod document;
mod hashes;
mod input;
mod shapes;

pub use bundle::{Bundle, BundleError, BundleSource, PolicyDocument, Provenance};
pub use config::{
    DEFAULT_EVAL_TIMEOUT_MS, EVAL_TIMEOUT_ENV, MATERIALIZATION_LIMIT, MAX_EVAL_TIMEOUT_MS,
    MIN_EVAL_TIMEOUT_MS, PolicyConfig, PolicyConfigError,
};
pub use contract::{CONTRACT_REGO, CONTRACT_VERSION, RESULT_RULE, contract_sha256, self_check};
pub use decision::{Approver, Decision, DecisionKind, EvalError, Privacy, TierDeclaration};
pub use document::{
    BANNED_BUILTINS, DATA_DOCUMENT_MARKER, DATA_ROOTS, MAX_DOCUMENT_CHARS, ValidationError,
    validate_document,
};
pub use hashes::{content_sha256, manifest_sha256};
pub use input::{
    Action, ActionId, Context, DelegationEdge, PolicyInput, Principal, PrincipalType, Resource,
    ResourceType, SCHEMA_VERSION, SessionRef,
};
