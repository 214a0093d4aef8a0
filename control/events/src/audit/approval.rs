//! The `step_up_decided` audit event (authority §3 "Approval events"), built the same way
//! whether a subject decided at the STS or an operator through the admin API.

use chrono::Utc;
use control_store::approvals::ApprovalRow;
use serde_json::{Map, Value, json};

use super::event::{AuditDecision, AuditEvent};

/// Who decided a hold.
#[derive(Debug, Clone, Copy)]
pub enum Decider<'a> {
    /// A subject, named only by the authority record it decided under.
    Subject {
        /// The approver's authority record id.
        authority_record_id: &'a str,
    },
    /// An operator through the admin API (`admin:<token id>`).
    Operator {
        /// The decider's id.
        decided_by: &'a str,
    },
}

/// The event for a decided hold. `metadata` is the hold's stored metadata: the members it
/// carries over (session, labels, edge, contract, policy provenance) come from there, so the
/// decision event matches the hold's issue event.
pub fn decided_event(
    row: &ApprovalRow,
    metadata: &Value,
    approved: bool,
    decider: Decider<'_>,
    request_id: &str,
) -> AuditEvent {
    let stored = |name: &str| metadata.get(name).cloned();
    let mut m = Map::new();
    m.insert("challenge_id".into(), json!(row.id));
    m.insert("tier".into(), json!(row.tier));
    m.insert("approver_class".into(), json!(row.approver_class));
    m.insert("privacy_mode".into(), json!(row.privacy_mode));
    m.insert("binding".into(), json!(hex::encode(&row.resource_set_hash)));
    m.insert("expires_at".into(), json!(row.expires_at.to_rfc3339()));
    m.insert("subject_anchor".into(), json!(row.subject_anchor));
    m.insert("application_id".into(), json!(row.application_id));
    if !row.session_id.is_empty() {
        m.insert("session_id".into(), json!(row.session_id));
    }
    for name in [
        "agent_session_id",
        "agent_labels",
        "delegation_edge_id",
        "decision_contract_version",
        "decision_contract_sha256",
    ] {
        if let Some(value) = stored(name) {
            m.insert(name.into(), value);
        }
    }
    m.insert(
        "decision".into(),
        json!(if approved { "approved" } else { "rejected" }),
    );
    match decider {
        Decider::Subject {
            authority_record_id,
        } => {
            m.insert("approver_plane".into(), json!("subject"));
            m.insert(
                "approver_authority_record_id".into(),
                json!(authority_record_id),
            );
        }
        Decider::Operator { decided_by } => {
            m.insert("approver_plane".into(), json!("operator"));
            m.insert("decided_by".into(), json!(decided_by));
        }
    }
    let mut event = AuditEvent::new(row.zone_id.as_str(), "step_up_decided")
        .request_id(request_id)
        .decision(if approved {
            AuditDecision::Allow
        } else {
            AuditDecision::Deny
        })
        .metadata_json(Value::Object(m))
        .occurred_at(Utc::now());
    if let Some(Value::String(version)) = stored("policy_set_version_id") {
        event = event.policy_set_version_id(version);
    }
    if let Some(Value::String(sha)) = stored("manifest_sha256") {
        event = event.manifest_sha(sha);
    }
    event
}
