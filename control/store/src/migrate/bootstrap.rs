//! Step 3 of a run: the cluster roles (§2.2), the database's grants, the `caracal` schema
//! and `schema_migrations`.

use sqlx::{Connection, PgConnection, Row};

use super::{MigrateError, RolePassword};
use crate::{
    ServiceRole,
    error::sqlstate,
    role::{MAINTENANCE_ROLE, OWNER_ROLE},
};

const ROLES_SQL: &str = include_str!("../../sql/bootstrap_roles.sql");

/// SQLSTATEs of a concurrent bootstrap in another database of the same cluster: the role
/// was created between our check and our CREATE, or the catalog row was updated under us.
const RACE_STATES: &[&str] = &["42710", "23505", "XX000", "40001"];

/// What the bootstrap could and could not do with the migrating user's rights.
#[derive(Debug, Default, Clone)]
pub(crate) struct BootstrapNotes {
    /// Warnings for the operator (e.g. database grants skipped for lack of rights).
    pub(crate) warnings: Vec<String>,
}

pub(crate) async fn ensure(
    conn: &mut PgConnection,
    passwords: &[RolePassword],
) -> Result<BootstrapNotes, MigrateError> {
    let notes = roles_and_grants(conn, passwords).await?;
    schema(conn).await?;
    Ok(notes)
}

/// The part of [`ensure`] a restore needs before `pg_restore`: the cluster roles, the
/// migrating user's membership of `caracal_owner` and the database's grants, but not the
/// schema (the dump brings it). Returns the operator warnings.
pub(crate) async fn ensure_roles(conn: &mut PgConnection) -> Result<Vec<String>, MigrateError> {
    Ok(roles_and_grants(conn, &[]).await?.warnings)
}

/// The cluster roles (created when the user may, with their passwords), their verification,
/// the user's membership of `caracal_owner` and the database's grants.
async fn roles_and_grants(
    conn: &mut PgConnection,
    passwords: &[RolePassword],
) -> Result<BootstrapNotes, MigrateError> {
    let mut notes = BootstrapNotes::default();
    let can_create_roles: bool = sqlx::query_scalar(
        "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut *conn)
    .await?;
    if can_create_roles {
        create_roles(conn).await?;
        set_passwords(conn, passwords).await?;
    } else {
        notes.warnings.push(
            "the migrating user cannot create roles; verifying the existing ones only".to_owned(),
        );
        if !passwords.is_empty() {
            notes.warnings.push(
                "role passwords were given but the migrating user cannot set them".to_owned(),
            );
        }
    }
    verify_roles(conn, &mut notes).await?;
    grant_owner_to_migrator(conn, &mut notes).await?;
    database_grants(conn, &mut notes).await?;
    Ok(notes)
}

async fn create_roles(conn: &mut PgConnection) -> Result<(), MigrateError> {
    // Each DO block is idempotent; a race with another database's bootstrap surfaces as one
    // of RACE_STATES and is retried a few times.
    for statement in ROLES_SQL
        .split("END $$;")
        .map(str::trim)
        .filter(|s| s.contains("DO $$"))
    {
        let statement = format!("{statement}\nEND $$;");
        let mut attempt = 0;
        loop {
            match sqlx::raw_sql(&statement).execute(&mut *conn).await {
                Ok(_) => break,
                Err(err)
                    if attempt < 5
                        && sqlstate(&err).is_some_and(|s| RACE_STATES.contains(&s.as_str())) =>
                {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
                }
                Err(err) => return Err(MigrateError::Roles(describe(&err))),
            }
        }
    }
    Ok(())
}

/// Sets login passwords. `ALTER ROLE … PASSWORD` takes no bind parameters, so Postgres
/// itself quotes the value (`format('%L')`); statement logging is switched off for the
/// transaction when the migrating user may do so, and the server stores a SCRAM verifier.
async fn set_passwords(
    conn: &mut PgConnection,
    passwords: &[RolePassword],
) -> Result<(), MigrateError> {
    for entry in passwords {
        let mut tx = conn.begin().await?;
        let superuser: bool =
            sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                .fetch_one(&mut *tx)
                .await?;
        if superuser {
            sqlx::raw_sql(
                "SET LOCAL log_statement = 'none'; SET LOCAL log_min_duration_statement = -1; \
                 SET LOCAL log_min_error_statement = 'panic'",
            )
            .execute(&mut *tx)
            .await?;
        }
        let statement: String =
            sqlx::query_scalar("SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)")
                .bind(entry.role())
                .bind(entry.password())
                .fetch_one(&mut *tx)
                .await?;
        let statement = zeroize::Zeroizing::new(statement);
        sqlx::raw_sql(statement.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                MigrateError::Roles(format!(
                    "cannot set the password of {}: {}",
                    entry.role(),
                    describe(&e)
                ))
            })?;
        tx.commit().await?;
    }
    Ok(())
}

/// A service role with SUPERUSER or BYPASSRLS, or a member of `caracal_owner`, would pass
/// row-level security: refuse (§2.2). The owner must not bypass RLS either.
async fn verify_roles(
    conn: &mut PgConnection,
    notes: &mut BootstrapNotes,
) -> Result<(), MigrateError> {
    let rows = sqlx::query(
        "SELECT rolname, rolsuper, rolbypassrls, rolcanlogin, \
                pg_has_role(rolname, $1, 'MEMBER') AS owner_member \
           FROM pg_roles WHERE rolname = ANY($2)",
    )
    .bind(OWNER_ROLE)
    .bind(
        ServiceRole::ALL
            .iter()
            .map(|r| r.db_role())
            .chain([OWNER_ROLE, MAINTENANCE_ROLE])
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut seen = Vec::new();
    for row in rows {
        let name: String = row.try_get("rolname")?;
        let superuser: bool = row.try_get("rolsuper")?;
        let bypass: bool = row.try_get("rolbypassrls")?;
        let owner_member: bool = row.try_get("owner_member")?;
        let too_powerful = |problem: &str| MigrateError::RoleTooPowerful {
            role: name.clone(),
            problem: problem.to_owned(),
        };
        match name.as_str() {
            OWNER_ROLE if superuser || bypass => {
                return Err(too_powerful("must be NOSUPERUSER NOBYPASSRLS"));
            }
            MAINTENANCE_ROLE if superuser => return Err(too_powerful("must not be a superuser")),
            MAINTENANCE_ROLE if !bypass => notes.warnings.push(
                "caracal_maintenance lacks BYPASSRLS: maintenance commands will see no zone rows"
                    .to_owned(),
            ),
            OWNER_ROLE | MAINTENANCE_ROLE => {}
            _ if superuser => {
                return Err(too_powerful("is a superuser; service roles must not be"));
            }
            _ if bypass => return Err(too_powerful("has BYPASSRLS; service roles must not")),
            _ if owner_member => {
                return Err(too_powerful(
                    "is a member of caracal_owner; service roles must not be",
                ));
            }
            _ => {}
        }
        seen.push(name);
    }
    let missing: Vec<&str> = ServiceRole::ALL
        .iter()
        .map(|r| r.db_role())
        .chain([OWNER_ROLE, MAINTENANCE_ROLE])
        .filter(|r| !seen.iter().any(|s| s == r))
        .collect();
    if !missing.is_empty() {
        return Err(MigrateError::Roles(format!(
            "missing roles {} (run `caracal migrate` once as a user with CREATEROLE)",
            missing.join(", ")
        )));
    }
    Ok(())
}

/// The runner sets `ROLE caracal_owner` per file, so the migrating user must be a member.
async fn grant_owner_to_migrator(
    conn: &mut PgConnection,
    notes: &mut BootstrapNotes,
) -> Result<(), MigrateError> {
    let member: bool = sqlx::query_scalar("SELECT pg_has_role(current_user, $1, 'MEMBER')")
        .bind(OWNER_ROLE)
        .fetch_one(&mut *conn)
        .await?;
    if member {
        return Ok(());
    }
    match sqlx::raw_sql("GRANT caracal_owner TO CURRENT_USER")
        .execute(&mut *conn)
        .await
    {
        Ok(_) => {
            notes
                .warnings
                .push("granted caracal_owner to the migrating user".to_owned());
            Ok(())
        }
        Err(err) => Err(MigrateError::Roles(format!(
            "the migrating user is not a member of caracal_owner and cannot become one: {}",
            describe(&err)
        ))),
    }
}

/// `REVOKE ALL ON DATABASE … FROM PUBLIC`, then CONNECT for each Caracal role. Needs the
/// database owner or a superuser; otherwise it is reported and left to the operator.
async fn database_grants(
    conn: &mut PgConnection,
    notes: &mut BootstrapNotes,
) -> Result<(), MigrateError> {
    let privileged: bool = sqlx::query_scalar(
        "SELECT r.rolsuper OR pg_has_role(current_user, d.datdba, 'MEMBER') \
           FROM pg_database d, pg_roles r \
          WHERE d.datname = current_database() AND r.rolname = current_user",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !privileged {
        notes.warnings.push(
            "database-level grants skipped (not the database owner): grant CONNECT to the caracal_* roles yourself"
                .to_owned(),
        );
        return Ok(());
    }
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut *conn)
        .await?;
    let db = quote_ident(&database);
    let roles = ServiceRole::ALL
        .iter()
        .map(|r| r.db_role())
        .chain([MAINTENANCE_ROLE, OWNER_ROLE])
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "REVOKE ALL ON DATABASE {db} FROM PUBLIC; GRANT CONNECT ON DATABASE {db} TO {roles};"
    );
    retry_races(conn, &sql).await
}

async fn schema(conn: &mut PgConnection) -> Result<(), MigrateError> {
    let services = ServiceRole::ALL
        .iter()
        .map(|r| r.db_role())
        .collect::<Vec<_>>()
        .join(", ");
    let mut tx = conn.begin().await?;
    let sql = format!(
        "CREATE SCHEMA IF NOT EXISTS caracal AUTHORIZATION caracal_owner;
         REVOKE ALL ON SCHEMA caracal FROM PUBLIC;
         GRANT USAGE ON SCHEMA caracal TO {services}, caracal_maintenance;
         SET LOCAL ROLE caracal_owner;
         CREATE TABLE IF NOT EXISTS caracal.schema_migrations (
           version         integer PRIMARY KEY CHECK (version >= 1),
           name            text NOT NULL,
           checksum        bytea NOT NULL CHECK (octet_length(checksum) = 32),
           applied_at      timestamptz NOT NULL DEFAULT now(),
           applied_by      text NOT NULL DEFAULT session_user,
           duration_ms     integer NOT NULL CHECK (duration_ms >= 0),
           caracal_version text NOT NULL
         );
         GRANT SELECT ON caracal.schema_migrations TO {services};"
    );
    sqlx::raw_sql(&sql).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

async fn retry_races(conn: &mut PgConnection, sql: &str) -> Result<(), MigrateError> {
    let mut attempt = 0;
    loop {
        match sqlx::raw_sql(sql).execute(&mut *conn).await {
            Ok(_) => return Ok(()),
            Err(err)
                if attempt < 5
                    && sqlstate(&err).is_some_and(|s| RACE_STATES.contains(&s.as_str())) =>
            {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
            }
            Err(err) => return Err(MigrateError::Roles(describe(&err))),
        }
    }
}

fn describe(err: &sqlx::Error) -> String {
    match err.as_database_error() {
        Some(db) => format!(
            "{} (SQLSTATE {})",
            db.message(),
            db.code().unwrap_or_default()
        ),
        None => err.to_string(),
    }
}

/// Quotes an identifier the way `quote_ident` does.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_script_splits_into_one_block_per_role() {
        let blocks = ROLES_SQL
            .split("END $$;")
            .filter(|s| s.contains("DO $$"))
            .count();
        assert_eq!(blocks, 8, "owner, maintenance, five services, membership");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("caracal"), "\"caracal\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
