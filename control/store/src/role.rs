//! The service roles and their Postgres login roles.

use std::fmt;

/// A Caracal service that holds its own database pool and login role (§2.1, §13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceRole {
    /// The admin API (`caracal_api`).
    Api,
    /// The token service (`caracal_sts`).
    Sts,
    /// The gateway (`caracal_gateway`), read-only.
    Gateway,
    /// The Coordinator (`caracal_coordinator`).
    Coordinator,
    /// The audit ledger (`caracal_audit`).
    Audit,
}

impl ServiceRole {
    /// Every service role, in the column order of the grant matrix.
    pub const ALL: [ServiceRole; 5] = [
        ServiceRole::Api,
        ServiceRole::Sts,
        ServiceRole::Gateway,
        ServiceRole::Coordinator,
        ServiceRole::Audit,
    ];

    /// The service name as it appears in env variables and application names (`api`).
    pub fn service(self) -> &'static str {
        match self {
            ServiceRole::Api => "api",
            ServiceRole::Sts => "sts",
            ServiceRole::Gateway => "gateway",
            ServiceRole::Coordinator => "coordinator",
            ServiceRole::Audit => "audit",
        }
    }

    /// The default Postgres login role (`caracal_api`).
    pub fn db_role(self) -> &'static str {
        match self {
            ServiceRole::Api => "caracal_api",
            ServiceRole::Sts => "caracal_sts",
            ServiceRole::Gateway => "caracal_gateway",
            ServiceRole::Coordinator => "caracal_coordinator",
            ServiceRole::Audit => "caracal_audit",
        }
    }

    /// The upper-case env prefix of per-service settings (`CARACAL_API_`).
    pub fn env_prefix(self) -> &'static str {
        match self {
            ServiceRole::Api => "CARACAL_API_",
            ServiceRole::Sts => "CARACAL_STS_",
            ServiceRole::Gateway => "CARACAL_GATEWAY_",
            ServiceRole::Coordinator => "CARACAL_COORDINATOR_",
            ServiceRole::Audit => "CARACAL_AUDIT_",
        }
    }
}

impl fmt::Display for ServiceRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.service())
    }
}

/// The role that owns the schema and every object in it (NOLOGIN, NOBYPASSRLS).
pub const OWNER_ROLE: &str = "caracal_owner";

/// The maintenance login role (BYPASSRLS, member of the owner); never used by a service.
pub const MAINTENANCE_ROLE: &str = "caracal_maintenance";
