//! The audit draft every phase adds to, and the events it becomes (wire-contract §4.10,
//! authority §4.5, settled point 1).
//!
//! A request stopped at steps 1–11 yields no event (metrics only). A replay at step 12
//! yields `replay_detected`. Every other request yields `gateway_resource_request`, and,
//! when the policy was evaluated, a `token_exchange` event with the local decision, both
//! under the gateway's request id. The slots were reserved at admission, so emitting can
//! neither block nor fail.

use chrono::Utc;
use control_events::audit::{AuditDecision, AuditEvent, AuditSlot};
use control_policy::{Decision, Provenance};
use serde_json::{Map, Value, json};

/// How far a request got, for the events it yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Stage {
    /// Stopped at steps 1–11: no event.
    #[default]
    Unauthenticated,
    /// Step 12 found the `jti` used: `replay_detected`.
    Replay,
    /// Passed step 12: `gateway_resource_request` (+ `token_exchange` when evaluated).
    Authenticated,
}

/// The policy evaluation of step 23, as audited.
#[derive(Debug, Clone)]
pub(crate) struct Evaluated {
    pub(crate) allow: bool,
    pub(crate) evaluation_status: String,
    pub(crate) determining: Value,
    pub(crate) diagnostics: Value,
    pub(crate) provenance: Provenance,
}

impl Evaluated {
    /// From an engine decision.
    pub(crate) fn from_decision(decision: &Decision, provenance: &Provenance) -> Self {
        Self {
            allow: decision.is_allow(),
            evaluation_status: decision.evaluation_status.clone(),
            determining: Value::Array(
                decision
                    .determining_policies
                    .iter()
                    .map(|p| json!({ "policy": p }))
                    .collect(),
            ),
            diagnostics: Value::Array(decision.diagnostics.clone()),
            provenance: provenance.clone(),
        }
    }

    /// From an engine failure.
    pub(crate) fn failed(error: &str, provenance: &Provenance) -> Self {
        Self {
            allow: false,
            evaluation_status: "policy_eval_failed".to_owned(),
            determining: json!([]),
            diagnostics: json!([{ "error": error }]),
            provenance: provenance.clone(),
        }
    }
}

/// What the phases learned about one request.
#[derive(Debug, Default)]
pub(crate) struct AuditDraft {
    pub(crate) stage: Stage,
    pub(crate) zone_id: String,
    /// The cause of a denial (`resource_not_found`, `operation_not_permitted`, …) or of a
    /// failure, for the event's metadata; never a secret.
    pub(crate) cause: Option<String>,
    pub(crate) evaluated: Option<Evaluated>,
    /// Metadata members, in wire names.
    pub(crate) metadata: Map<String, Value>,
}

impl AuditDraft {
    /// Sets one metadata member.
    pub(crate) fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.metadata.insert(key.to_owned(), value.into());
    }

    /// Appends one plugin call's record to the `plugins` member (steps 25 and 31): the
    /// plugin, its hook, the outcome and, on a failure, the cause.
    pub(crate) fn push_plugin(&mut self, record: Value) {
        match self.metadata.get_mut("plugins") {
            Some(Value::Array(records)) => records.push(record),
            _ => {
                self.metadata
                    .insert("plugins".to_owned(), Value::Array(vec![record]));
            }
        }
    }

    /// Builds the events and hands them to the reserved slots. `status` is the answer's
    /// status (499 when the client went away).
    pub(crate) fn emit(
        mut self,
        request_id: &str,
        status: u16,
        latency_ms: u64,
        slots: (AuditSlot, AuditSlot),
    ) {
        let (first, second) = slots;
        match self.stage {
            Stage::Unauthenticated => {}
            Stage::Replay => {
                let event = AuditEvent::new(&self.zone_id, "replay_detected")
                    .request_id(request_id)
                    .decision(AuditDecision::Deny)
                    .metadata_json(Value::Object(self.metadata))
                    .occurred_at(Utc::now());
                first.emit(event);
            }
            Stage::Authenticated => {
                // An upstream answered: the call was allowed, whatever the upstream said.
                let allow = self.metadata.contains_key("upstream_status");
                self.set("gateway_status", status);
                self.set("latency_ms", latency_ms);
                if let Some(cause) = self.cause.take() {
                    self.set("reason", cause);
                }
                if let Some((version, sha)) = self.evaluated.as_ref().map(|e| {
                    (
                        e.provenance.contract_version.clone(),
                        e.provenance.contract_sha256.clone(),
                    )
                }) {
                    self.set("decision_contract_version", version);
                    self.set("decision_contract_sha256", sha);
                }
                let decision = if allow {
                    AuditDecision::Allow
                } else {
                    AuditDecision::Deny
                };
                let mut request = AuditEvent::new(&self.zone_id, "gateway_resource_request")
                    .request_id(request_id)
                    .decision(decision)
                    .occurred_at(Utc::now());
                if let Some(evaluated) = self.evaluated.take() {
                    let p = &evaluated.provenance;
                    let exchange = AuditEvent::new(&self.zone_id, "token_exchange")
                        .request_id(request_id)
                        .decision(if evaluated.allow {
                            AuditDecision::Allow
                        } else {
                            AuditDecision::Deny
                        })
                        .evaluation_status(evaluated.evaluation_status.clone())
                        .policy_set_id(p.policy_set_id.clone())
                        .policy_set_version_id(p.policy_set_version_id.clone())
                        .manifest_sha(p.manifest_sha256.clone())
                        .determining_policies_json(evaluated.determining.clone())
                        .diagnostics_json(evaluated.diagnostics.clone())
                        .metadata_json(exchange_metadata(&self.metadata))
                        .occurred_at(Utc::now());
                    request = request
                        .evaluation_status(evaluated.evaluation_status)
                        .policy_set_id(p.policy_set_id.clone())
                        .policy_set_version_id(p.policy_set_version_id.clone())
                        .manifest_sha(p.manifest_sha256.clone())
                        .determining_policies_json(evaluated.determining)
                        .diagnostics_json(evaluated.diagnostics);
                    second.emit(exchange);
                } else {
                    request = request.evaluation_status("not_evaluated");
                }
                first.emit(request.metadata_json(Value::Object(self.metadata)));
            }
        }
    }
}

/// The `token_exchange` event's metadata: who asked for what, as the STS records it.
fn exchange_metadata(request: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    for key in [
        "application_id",
        "resource",
        "session_id",
        "agent_session_id",
        "delegation_edge_id",
        "agent_labels",
        "delegation_graph_epoch",
        "decision_contract_version",
        "decision_contract_sha256",
        "trace_id",
    ] {
        if let Some(value) = request.get(key) {
            out.insert(key.to_owned(), value.clone());
        }
    }
    out.insert("exchange_class".to_owned(), json!("gateway_local"));
    Value::Object(out)
}
