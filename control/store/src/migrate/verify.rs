//! `caracal migrate --verify` (§4.4): read-only comparison of the live database with the
//! embedded files and the expected schema of [`crate::schema`].

use std::collections::BTreeSet;

use sqlx::{PgConnection, Row, postgres::PgConnectOptions};

use super::{MigrateError, MigrationSet, runner};
use crate::{
    ServiceRole,
    role::{MAINTENANCE_ROLE, OWNER_ROLE},
    schema::{self, FUNCTIONS, GLOBAL_ROW_TABLES, SESSIONS_GATEWAY_COLUMNS, TABLES, TRIGGERS},
};

/// The verdict of a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// Everything matches (exit code 0).
    Clean,
    /// At least one difference (exit code 1).
    Drift,
    /// No difference, but migrations are pending (exit code 3).
    Pending,
}

/// Every difference found, one line each.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Differences between the database and what this binary expects.
    pub drift: Vec<String>,
    /// Migration files not yet applied.
    pub pending: Vec<String>,
}

impl VerifyReport {
    /// Drift wins over pending.
    pub fn outcome(&self) -> VerifyOutcome {
        if !self.drift.is_empty() {
            VerifyOutcome::Drift
        } else if !self.pending.is_empty() {
            VerifyOutcome::Pending
        } else {
            VerifyOutcome::Clean
        }
    }
}

/// Verifies the database of `options` without changing anything: the connection runs with
/// `default_transaction_read_only`.
pub async fn verify(
    options: &PgConnectOptions,
    set: &MigrationSet,
    connect_timeout: std::time::Duration,
) -> Result<VerifyReport, MigrateError> {
    let options = options
        .clone()
        .options([("default_transaction_read_only", "on")]);
    let mut conn = runner::open(&options, connect_timeout).await?;
    let mut report = VerifyReport::default();

    let has_history: bool =
        sqlx::query_scalar("SELECT to_regclass('caracal.schema_migrations') IS NOT NULL")
            .fetch_one(&mut conn)
            .await?;
    if !has_history {
        report.pending = set.iter().map(|m| m.name.clone()).collect();
        return Ok(report);
    }
    match runner::check_history(set, &runner::applied_versions(&mut conn).await?) {
        Ok(pending) => report.pending = pending.iter().map(|m| m.name.clone()).collect(),
        Err(err) => report.drift.push(err.to_string()),
    }
    if !report.pending.is_empty() {
        // The schema checks below describe the latest version; a database that is behind
        // is reported as pending, not as drift.
        return Ok(report);
    }
    check_roles(&mut conn, &mut report.drift).await?;
    check_tables(&mut conn, &mut report.drift).await?;
    check_rls(&mut conn, &mut report.drift).await?;
    check_grants(&mut conn, &mut report.drift).await?;
    check_functions(&mut conn, &mut report.drift).await?;
    check_triggers(&mut conn, &mut report.drift).await?;
    check_partitions(&mut conn, &mut report.drift).await?;
    Ok(report)
}

async fn check_roles(conn: &mut PgConnection, drift: &mut Vec<String>) -> Result<(), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT rolname, rolsuper, rolbypassrls, rolcanlogin, pg_has_role(rolname, $1, 'MEMBER') AS owner_member \
           FROM pg_roles WHERE rolname LIKE 'caracal\\_%'",
    )
    .bind(OWNER_ROLE)
    .fetch_all(&mut *conn)
    .await?;
    let find = |name: &str| {
        rows.iter()
            .find(|r| r.try_get::<String, _>("rolname").is_ok_and(|n| n == name))
    };
    for role in ServiceRole::ALL
        .iter()
        .map(|r| r.db_role())
        .chain([OWNER_ROLE, MAINTENANCE_ROLE])
    {
        let Some(row) = find(role) else {
            drift.push(format!("role {role} is missing"));
            continue;
        };
        let superuser: bool = row.try_get("rolsuper")?;
        let bypass: bool = row.try_get("rolbypassrls")?;
        let login: bool = row.try_get("rolcanlogin")?;
        let owner_member: bool = row.try_get("owner_member")?;
        match role {
            OWNER_ROLE => {
                if superuser || bypass || login {
                    drift.push(format!(
                        "role {role} must be NOLOGIN NOSUPERUSER NOBYPASSRLS"
                    ));
                }
            }
            MAINTENANCE_ROLE => {
                if superuser || !owner_member {
                    drift.push(format!(
                        "role {role} must be NOSUPERUSER and a member of {OWNER_ROLE}"
                    ));
                }
            }
            _ => {
                if superuser || bypass || owner_member || !login {
                    drift.push(format!(
                        "role {role} must be LOGIN NOSUPERUSER NOBYPASSRLS and not a member of {OWNER_ROLE}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Every table of the matrix exists, and nothing else does (partitions aside).
async fn check_tables(conn: &mut PgConnection, drift: &mut Vec<String>) -> Result<(), sqlx::Error> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE n.nspname = 'caracal' AND c.relkind IN ('r', 'p') AND NOT c.relispartition",
    )
    .fetch_all(&mut *conn)
    .await?;
    let actual: BTreeSet<&str> = rows.iter().map(String::as_str).collect();
    let expected: BTreeSet<&str> = TABLES.iter().map(|t| t.name).collect();
    for missing in expected.difference(&actual) {
        drift.push(format!("table {missing} is missing"));
    }
    for extra in actual.difference(&expected) {
        drift.push(format!("table {extra} is not part of the schema"));
    }
    Ok(())
}

/// RLS enabled and forced exactly on the zone-scoped tables, with exactly the expected
/// policies.
async fn check_rls(conn: &mut PgConnection, drift: &mut Vec<String>) -> Result<(), sqlx::Error> {
    let flags = sqlx::query(
        "SELECT c.relname::text AS name, c.relrowsecurity, c.relforcerowsecurity \
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE n.nspname = 'caracal' AND c.relkind IN ('r', 'p') AND NOT c.relispartition",
    )
    .fetch_all(&mut *conn)
    .await?;
    for row in &flags {
        let name: String = row.try_get("name")?;
        let Some(spec) = schema::table(&name) else {
            continue;
        };
        let enabled: bool = row.try_get("relrowsecurity")?;
        let forced: bool = row.try_get("relforcerowsecurity")?;
        if spec.rls && !(enabled && forced) {
            drift.push(format!(
                "table {name}: row-level security must be enabled and forced"
            ));
        }
        if !spec.rls && (enabled || forced) {
            drift.push(format!(
                "table {name}: row-level security is on but the table is not zone-scoped"
            ));
        }
    }

    let rows = sqlx::query(
        "SELECT tablename::text AS tablename, policyname::text AS policyname, roles::text[] AS roles, cmd \
           FROM pg_policies WHERE schemaname = 'caracal'",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut actual = BTreeSet::new();
    for row in &rows {
        let mut roles: Vec<String> = row.try_get("roles")?;
        roles.sort();
        actual.insert((
            row.try_get::<String, _>("tablename")?,
            row.try_get::<String, _>("policyname")?,
            roles.join(","),
            row.try_get::<String, _>("cmd")?,
        ));
    }
    let mut expected = BTreeSet::new();
    for spec in TABLES.iter().filter(|t| t.rls) {
        expected.insert((
            spec.name.to_owned(),
            "zone_isolation".to_owned(),
            "public".to_owned(),
            "ALL".to_owned(),
        ));
        let readers = schema::cross_zone_readers(spec);
        if !readers.is_empty() {
            expected.insert((
                spec.name.to_owned(),
                "cross_zone_read".to_owned(),
                readers.join(","),
                "SELECT".to_owned(),
            ));
        }
    }
    for table in GLOBAL_ROW_TABLES {
        expected.insert((
            (*table).to_owned(),
            "global_rows".to_owned(),
            "caracal_api".to_owned(),
            "ALL".to_owned(),
        ));
    }
    for (table, policy, roles, cmd) in expected.difference(&actual) {
        drift.push(format!(
            "table {table}: policy {policy} ({cmd} to {roles}) is missing or different"
        ));
    }
    for (table, policy, roles, cmd) in actual.difference(&expected) {
        drift.push(format!(
            "table {table}: unexpected policy {policy} ({cmd} to {roles})"
        ));
    }
    Ok(())
}

/// Table and column privileges of the service roles equal the matrix; partitions have none.
async fn check_grants(conn: &mut PgConnection, drift: &mut Vec<String>) -> Result<(), sqlx::Error> {
    let services: Vec<&str> = ServiceRole::ALL.iter().map(|r| r.db_role()).collect();
    let rows = sqlx::query(
        "SELECT c.relname::text AS tbl, r.rolname::text AS grantee, a.privilege_type AS privilege \
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
           CROSS JOIN LATERAL aclexplode(c.relacl) a \
           JOIN pg_roles r ON r.oid = a.grantee \
          WHERE n.nspname = 'caracal' AND c.relkind IN ('r', 'p', 'v', 'm', 'S') AND r.rolname = ANY($1)",
    )
    .bind(&services)
    .fetch_all(&mut *conn)
    .await?;
    let mut actual = BTreeSet::new();
    for row in &rows {
        actual.insert((
            row.try_get::<String, _>("tbl")?,
            row.try_get::<String, _>("grantee")?,
            row.try_get::<String, _>("privilege")?,
        ));
    }
    let mut expected = BTreeSet::new();
    for spec in TABLES {
        for role in ServiceRole::ALL {
            for privilege in schema::expected_privileges(spec, role) {
                expected.insert((
                    spec.name.to_owned(),
                    role.db_role().to_owned(),
                    privilege.to_owned(),
                ));
            }
        }
    }
    for (table, role, privilege) in expected.difference(&actual) {
        drift.push(format!("{role} lacks {privilege} on {table}"));
    }
    for (table, role, privilege) in actual.difference(&expected) {
        drift.push(format!(
            "{role} has {privilege} on {table}, which the grant matrix does not give"
        ));
    }

    let columns = sqlx::query(
        "SELECT c.relname::text AS tbl, att.attname::text AS col, r.rolname::text AS grantee, a.privilege_type AS privilege \
           FROM pg_attribute att \
           JOIN pg_class c ON c.oid = att.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
           CROSS JOIN LATERAL aclexplode(att.attacl) a \
           JOIN pg_roles r ON r.oid = a.grantee \
          WHERE n.nspname = 'caracal' AND att.attnum > 0 AND NOT att.attisdropped AND r.rolname = ANY($1)",
    )
    .bind(&services)
    .fetch_all(&mut *conn)
    .await?;
    let mut actual_columns = BTreeSet::new();
    for row in &columns {
        actual_columns.insert((
            row.try_get::<String, _>("tbl")?,
            row.try_get::<String, _>("col")?,
            row.try_get::<String, _>("grantee")?,
            row.try_get::<String, _>("privilege")?,
        ));
    }
    let expected_columns: BTreeSet<_> = SESSIONS_GATEWAY_COLUMNS
        .iter()
        .map(|c| {
            (
                "sessions".to_owned(),
                (*c).to_owned(),
                "caracal_gateway".to_owned(),
                "SELECT".to_owned(),
            )
        })
        .collect();
    for (table, column, role, privilege) in expected_columns.symmetric_difference(&actual_columns) {
        let verb = if expected_columns.contains(&(
            table.clone(),
            column.clone(),
            role.clone(),
            privilege.clone(),
        )) {
            "lacks"
        } else {
            "has unexpected"
        };
        drift.push(format!(
            "{role} {verb} column privilege {privilege} on {table}.{column}"
        ));
    }
    Ok(())
}

/// Every function exists; nobody but the listed roles may execute it (PUBLIC included).
async fn check_functions(
    conn: &mut PgConnection,
    drift: &mut Vec<String>,
) -> Result<(), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT p.proname::text AS name, p.proacl IS NULL AS default_acl, \
                coalesce(array_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE r.rolname::text END) \
                         FILTER (WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner), '{}') AS executors \
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
           LEFT JOIN LATERAL aclexplode(p.proacl) a ON true \
           LEFT JOIN pg_roles r ON r.oid = a.grantee \
          WHERE n.nspname = 'caracal' \
          GROUP BY p.proname, p.proacl",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (name, allowed) in FUNCTIONS {
        let Some(row) = rows
            .iter()
            .find(|r| r.try_get::<String, _>("name").is_ok_and(|n| n == *name))
        else {
            drift.push(format!("function {name} is missing"));
            continue;
        };
        let default_acl: bool = row.try_get("default_acl")?;
        let mut executors: Vec<String> = row.try_get("executors")?;
        executors.sort();
        executors.dedup();
        let mut allowed: Vec<String> = allowed.iter().map(|s| (*s).to_owned()).collect();
        allowed.sort();
        if default_acl || executors != allowed {
            drift.push(format!(
                "function {name}: EXECUTE is granted to [{}], expected [{}]",
                if default_acl {
                    "PUBLIC".to_owned()
                } else {
                    executors.join(", ")
                },
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

async fn check_triggers(
    conn: &mut PgConnection,
    drift: &mut Vec<String>,
) -> Result<(), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT c.relname::text AS tbl, t.tgname::text AS name, t.tgenabled::text AS enabled \
           FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE n.nspname = 'caracal' AND NOT t.tgisinternal",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut actual = BTreeSet::new();
    for row in &rows {
        let enabled: String = row.try_get("enabled")?;
        if enabled != "D" {
            actual.insert((
                row.try_get::<String, _>("tbl")?,
                row.try_get::<String, _>("name")?,
            ));
        }
    }
    for (table, trigger) in TRIGGERS {
        if !actual.contains(&((*table).to_owned(), (*trigger).to_owned())) {
            drift.push(format!(
                "trigger {trigger} on {table} is missing or disabled"
            ));
        }
    }
    let partitions: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
          WHERE i.inhparent = 'caracal.audit_events'::regclass",
    )
    .fetch_all(&mut *conn)
    .await?;
    for partition in partitions {
        for trigger in [
            "audit_events_append_only",
            "audit_events_append_only_truncate",
        ] {
            if !actual.contains(&(partition.clone(), trigger.to_owned())) {
                drift.push(format!(
                    "trigger {trigger} on partition {partition} is missing or disabled"
                ));
            }
        }
    }
    Ok(())
}

/// The default partition is attached and the current month plus the next three exist.
async fn check_partitions(
    conn: &mut PgConnection,
    drift: &mut Vec<String>,
) -> Result<(), sqlx::Error> {
    let attached: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
          WHERE i.inhparent = 'caracal.audit_events'::regclass",
    )
    .fetch_all(&mut *conn)
    .await?;
    let wanted: Vec<String> = sqlx::query_scalar(
        "SELECT 'audit_events_y' || to_char(m, 'YYYY') || 'm' || to_char(m, 'MM') \
           FROM generate_series(date_trunc('month', now() AT TIME ZONE 'UTC'), \
                                date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => $1), \
                                interval '1 month') AS m",
    )
    .bind(schema::PARTITIONS_AHEAD)
    .fetch_all(&mut *conn)
    .await?;
    for name in std::iter::once("audit_events_default".to_owned()).chain(wanted) {
        if !attached.contains(&name) {
            drift.push(format!("audit partition {name} is missing"));
        }
    }
    Ok(())
}
