//! The JSON shapes of sessions and edges (wire-contract §7.3, §7.4, §7.6). Times are
//! RFC 3339 with microseconds; absent values are `null`.

use chrono::{DateTime, SecondsFormat, Utc};
use control_store::coordinator::{
    edges::EdgeRow, invocations::InvocationRow, services::ServiceRow, sessions::AgentSessionRow,
};
use serde_json::{Value, json};

/// RFC 3339 with microseconds.
pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn opt_time(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| Value::String(time(t)))
}

/// A session as the start call answers it and the reads return it; `delegation_edge_id` is
/// the edge a start inherited.
pub fn session(row: &AgentSessionRow, delegation_edge_id: Option<&str>) -> Value {
    json!({
        "agent_session_id": row.id,
        "id": row.id,
        "zone_id": row.zone_id,
        "application_id": row.application_id,
        "parent_id": row.parent_id,
        "subject_authority_record_id": row.subject_authority_record_id,
        "lifecycle": row.lifecycle,
        "labels": row.labels,
        "status": row.status,
        "depth": row.depth,
        "ttl_seconds": row.ttl_seconds,
        "started_at": time(row.started_at),
        "last_active_at": opt_time(row.last_active_at),
        "last_heartbeat_at": opt_time(row.last_heartbeat_at),
        "heartbeat_deadline_at": opt_time(row.heartbeat_deadline_at),
        "lease_generation": row.lease_generation,
        "child_count": row.child_count,
        "max_children": row.max_children,
        "termination_reason": row.termination_reason,
        "terminated_at": opt_time(row.terminated_at),
        "metadata": row.metadata_json,
        "created_at": time(row.created_at),
        "delegation_edge_id": delegation_edge_id,
    })
}

/// An edge as the reads return it (`id` and `delegation_edge_id` both name it).
pub fn edge(row: &EdgeRow) -> Value {
    json!({
        "id": row.id,
        "delegation_edge_id": row.id,
        "zone_id": row.zone_id,
        "source_session_id": row.source_session_id,
        "target_session_id": row.target_session_id,
        "issuer_application_id": row.issuer_application_id,
        "receiver_application_id": row.receiver_application_id,
        "parent_edge_id": row.parent_edge_id,
        "resource_id": row.resource_id,
        "scopes": row.scopes,
        "constraints_json": row.constraints_json,
        "status": row.status,
        "expires_at": time(row.expires_at),
        "edge_version": row.edge_version,
        "revoked_at": opt_time(row.revoked_at),
        "created_at": time(row.created_at),
    })
}

/// A registered service (`service_id` and `id` both name it).
pub fn service(row: &ServiceRow) -> Value {
    json!({
        "service_id": row.id,
        "id": row.id,
        "zone_id": row.zone_id,
        "application_id": row.application_id,
        "endpoint_url": row.endpoint_url,
        "protocol_versions": row.protocol_versions,
        "framework_name": row.framework_name,
        "framework_version": row.framework_version,
        "capabilities": row.capabilities,
        "health": row.health,
        "metadata": row.metadata_json,
        "last_heartbeat_at": opt_time(row.last_heartbeat_at),
        "created_at": time(row.created_at),
        "updated_at": time(row.updated_at),
    })
}

/// A durable invocation (`invocation_id` and `id` both name it).
pub fn invocation(row: &InvocationRow) -> Value {
    json!({
        "invocation_id": row.id,
        "id": row.id,
        "zone_id": row.zone_id,
        "service_id": row.service_id,
        "source_session_id": row.source_session_id,
        "target_session_id": row.target_session_id,
        "method": row.method,
        "params": row.params_json,
        "metadata": row.metadata_json,
        "status": row.status,
        "attempts": row.attempts,
        "max_attempts": row.max_attempts,
        "timeout_ms": row.timeout_ms,
        "retry_policy": row.retry_policy_json,
        "result": row.result_json,
        "error": row.error_json,
        "available_at": time(row.available_at),
        "deadline_at": opt_time(row.deadline_at),
        "cancel_requested_at": opt_time(row.cancel_requested_at),
        "started_at": opt_time(row.started_at),
        "completed_at": opt_time(row.completed_at),
        "created_at": time(row.created_at),
    })
}
