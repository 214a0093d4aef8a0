//! What the migrated schema must look like: the privilege matrix of §2.3, row-level
//! security of §3, and the integrity objects of §5. `caracal migrate --verify` compares the
//! live database with these constants, and the tests drive every role through them, so the
//! SQL files, the verifier and the tests cannot drift apart silently.

use crate::ServiceRole;

/// One table's row of the grant matrix.
#[derive(Debug, Clone, Copy)]
pub struct TableSpec {
    /// Table name in schema `caracal`.
    pub name: &'static str,
    /// True when the table is zone-scoped and carries the FORCEd `zone_isolation` policy.
    pub rls: bool,
    /// Grants per service role in [`ServiceRole::ALL`] order: letters `S I U D` for
    /// SELECT, INSERT, UPDATE, DELETE, and `*` when the role may read across zones.
    pub grants: [&'static str; 5],
}

const fn t(name: &'static str, rls: bool, grants: [&'static str; 5]) -> TableSpec {
    TableSpec { name, rls, grants }
}

/// The grant matrix (§2.3, with the gateway's read grants of settled point 11). Columns:
/// api, sts, gateway, coordinator, audit.
pub const TABLES: &[TableSpec] = &[
    t("zones", false, ["SIUD", "S", "S", "S", "S"]),
    t("providers", true, ["SIUD", "S", "S*", "", ""]),
    t("applications", true, ["SIUD*", "S*", "S*", "S", ""]),
    t("resources", true, ["SIUD", "S", "S*", "S", ""]),
    t("application_dependencies", true, ["SIUD", "S", "", "", ""]),
    // the gateway's SELECT on sessions is column-level: see SESSIONS_GATEWAY_COLUMNS
    t("sessions", true, ["SU", "SIUD*", "*", "S", ""]),
    t("delegated_grants", true, ["SIUD", "", "", "", ""]),
    t("provider_grants", true, ["SIUD", "SIU", "S*", "", ""]),
    t("step_up_challenges", true, ["SU", "SIUD*", "", "", ""]),
    t("subject_issuers", true, ["SIUD", "S", "", "", ""]),
    t("workloads", true, ["SIUD", "S", "", "", ""]),
    t("policies", true, ["SIUD", "S*", "S*", "", ""]),
    t("policy_versions", true, ["SI", "S*", "S*", "", ""]),
    t("policy_sets", true, ["SIUD", "S*", "S*", "", ""]),
    t("policy_set_versions", true, ["SI", "S*", "S*", "", ""]),
    t("policy_set_bindings", true, ["SIUD", "S*", "S*", "", ""]),
    t("agent_sessions", true, ["SU", "S", "S*", "SIUD*", ""]),
    t("agent_session_slots", true, ["", "", "", "SU", ""]),
    t("agent_session_slot_releases", true, ["", "", "", "SD", ""]),
    t("agent_topology", true, ["S", "", "", "SID*", ""]),
    t("delegation_edges", true, ["SU", "S", "S*", "SIUD*", ""]),
    t(
        "delegation_graph_epochs",
        true,
        ["SIU", "S", "S*", "SIU", ""],
    ),
    t("agent_services", true, ["S", "", "", "SIUD*", ""]),
    t("agent_invocations", true, ["S", "", "", "SIUD*", ""]),
    t("idempotency_receipts", true, ["", "", "", "SID*", ""]),
    t("secrets", true, ["SIUD", "SIU", "S*", "", ""]),
    t("resource_rate_limits", true, ["SIUD", "S", "S*", "", ""]),
    t("sts_rate_limit", false, ["SIU", "S", "", "", ""]),
    t(
        "gateway_resource_bindings",
        true,
        ["SIUD", "S", "S*", "", ""],
    ),
    t("resource_plugin_bindings", true, ["SIUD", "", "S*", "", ""]),
    t("gateway_plugins", true, ["SIU", "", "S*", "", ""]),
    t("gateway_binding_revision", false, ["S", "", "S", "", ""]),
    t("admin_tokens", true, ["SIUD*", "", "", "", ""]),
    t("invitations", true, ["SIUD", "", "", "", ""]),
    t("teams", true, ["SIUD", "", "", "", ""]),
    t("notification_sinks", true, ["SIUD", "", "", "", "SU*"]),
    t("notification_deliveries", true, ["S", "", "", "", "SIUD*"]),
    t("audit_events", true, ["", "", "", "", "SI*"]),
    t("admin_audit_events", true, ["SI*", "", "", "", "S*"]),
    t("audit_export_watermark", false, ["", "", "", "", "SIU"]),
    t("audit_ingest_alerts", false, ["", "", "", "", "SI"]),
    t("audit_chain_anchors", false, ["", "", "", "", "S"]),
    t("event_outbox", false, ["SIUD", "SIU", "", "", ""]),
    t("caracal_outbox", false, ["", "", "", "SIUD", ""]),
    t("kek_check", false, ["S", "S", "S", "", "S"]),
    t("schema_migrations", false, ["S", "S", "S", "S", "S"]),
];

/// The columns of `sessions` the gateway may read (authority fields, never the claims).
pub const SESSIONS_GATEWAY_COLUMNS: &[&str] = &[
    "id",
    "zone_id",
    "session_type",
    "subject_id",
    "application_id",
    "parent_id",
    "root_id",
    "status",
    "expires_at",
    "revoked_at",
];

/// Tables with a second policy, `global_rows`, for the API's zone-less rows (§3.3).
pub const GLOBAL_ROW_TABLES: &[&str] = &["admin_tokens", "admin_audit_events"];

/// Functions every migrated database has, with the roles allowed to execute them (nobody
/// else may, PUBLIC included).
pub const FUNCTIONS: &[(&str, &[&str])] = &[
    ("caracal_uuid_v7", &[]),
    ("caracal_enable_zone_rls", &[]),
    ("caracal_reject_change", &[]),
    ("caracal_bump_binding_revision", &[]),
    ("caracal_plugin_content_immutable", &[]),
    ("caracal_agent_session_slots", &[]),
    ("caracal_audit_events_append_only", &[]),
    ("caracal_audit_ensure_partitions", &["caracal_audit"]),
    ("caracal_audit_drop_partitions", &["caracal_audit"]),
];

/// Triggers on named tables (partitions are checked separately).
pub const TRIGGERS: &[(&str, &str)] = &[
    ("policy_versions", "policy_versions_immutable"),
    ("policy_versions", "policy_versions_immutable_truncate"),
    ("policy_set_versions", "policy_set_versions_immutable"),
    (
        "policy_set_versions",
        "policy_set_versions_immutable_truncate",
    ),
    ("audit_events", "audit_events_append_only"),
    ("audit_events", "audit_events_append_only_truncate"),
    ("admin_audit_events", "admin_audit_events_append_only"),
    (
        "admin_audit_events",
        "admin_audit_events_append_only_truncate",
    ),
    ("audit_ingest_alerts", "audit_ingest_alerts_append_only"),
    (
        "audit_ingest_alerts",
        "audit_ingest_alerts_append_only_truncate",
    ),
    ("audit_chain_anchors", "audit_chain_anchors_append_only"),
    (
        "audit_chain_anchors",
        "audit_chain_anchors_append_only_truncate",
    ),
    ("gateway_plugins", "gateway_plugins_content_immutable"),
    ("secrets", "secrets_binding_revision"),
    ("providers", "providers_binding_revision"),
    ("applications", "applications_binding_revision"),
    ("resources", "resources_binding_revision"),
    (
        "resource_rate_limits",
        "resource_rate_limits_binding_revision",
    ),
    (
        "gateway_resource_bindings",
        "gateway_resource_bindings_binding_revision",
    ),
    ("gateway_plugins", "gateway_plugins_binding_revision"),
    (
        "resource_plugin_bindings",
        "resource_plugin_bindings_binding_revision",
    ),
    ("agent_sessions", "agent_sessions_slot_taken"),
    ("agent_sessions", "agent_sessions_slot_changed"),
    ("agent_sessions", "agent_sessions_slot_released"),
];

/// How many months past the current one must have an audit partition (§5.2).
pub const PARTITIONS_AHEAD: i32 = 3;

/// Table privileges a role holds on a table per the matrix, as Postgres names them.
pub fn expected_privileges(table: &TableSpec, role: ServiceRole) -> Vec<&'static str> {
    let cell = table.grants[role_index(role)];
    cell.chars()
        .filter_map(|c| match c {
            'S' => Some("SELECT"),
            'I' => Some("INSERT"),
            'U' => Some("UPDATE"),
            'D' => Some("DELETE"),
            _ => None,
        })
        .collect()
}

/// True when the role may read the table across zones (`*` in its cell).
pub fn reads_across_zones(table: &TableSpec, role: ServiceRole) -> bool {
    table.grants[role_index(role)].contains('*')
}

/// The roles of a table's `cross_zone_read` policy, sorted.
pub fn cross_zone_readers(table: &TableSpec) -> Vec<&'static str> {
    let mut roles: Vec<&'static str> = ServiceRole::ALL
        .into_iter()
        .filter(|r| reads_across_zones(table, *r))
        .map(ServiceRole::db_role)
        .collect();
    roles.sort_unstable();
    roles
}

/// The matrix row of a table, when it is one of ours.
pub fn table(name: &str) -> Option<&'static TableSpec> {
    TABLES.iter().find(|t| t.name == name)
}

fn role_index(role: ServiceRole) -> usize {
    match role {
        ServiceRole::Api => 0,
        ServiceRole::Sts => 1,
        ServiceRole::Gateway => 2,
        ServiceRole::Coordinator => 3,
        ServiceRole::Audit => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cell_uses_only_known_letters() {
        for t in TABLES {
            for cell in t.grants {
                assert!(
                    cell.chars().all(|c| "SIUD*".contains(c)),
                    "{}: {cell}",
                    t.name
                );
            }
        }
    }

    #[test]
    fn cross_zone_reads_exist_only_on_row_level_secured_tables() {
        for t in TABLES.iter().filter(|t| !t.rls) {
            assert!(
                cross_zone_readers(t).is_empty(),
                "{} is not zone-scoped",
                t.name
            );
        }
    }

    #[test]
    fn the_gateway_writes_nothing() {
        for t in TABLES {
            let privs = expected_privileges(t, ServiceRole::Gateway);
            assert!(
                privs.iter().all(|p| *p == "SELECT"),
                "{}: {privs:?}",
                t.name
            );
        }
    }

    #[test]
    fn no_service_may_change_audit_events() {
        let audit = table("audit_events").unwrap();
        for role in ServiceRole::ALL {
            let privs = expected_privileges(audit, role);
            assert!(
                !privs.contains(&"UPDATE") && !privs.contains(&"DELETE"),
                "{role}"
            );
        }
    }
}
