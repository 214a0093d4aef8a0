//! Privileges (storage §2.3): every role holds exactly the matrix, the audit role cannot
//! change the ledger, the gateway cannot write anything, and partitions grant nothing.

use control_model::ZoneId;
use control_store::{
    ServiceRole,
    schema::{self, TABLES},
    zone::zone_tx,
};
use sqlx::Row;
use tests_harness::TestDb;

use crate::fixtures::{ZONE_A, seed_zone, sqlstate};

#[tokio::test]
async fn every_role_holds_exactly_the_grant_matrix() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let mut admin = db.admin().await?;
    let mut mismatches = Vec::new();
    for table in TABLES {
        for role in ServiceRole::ALL {
            let expected = schema::expected_privileges(table, role);
            for privilege in [
                "SELECT",
                "INSERT",
                "UPDATE",
                "DELETE",
                "TRUNCATE",
                "REFERENCES",
                "TRIGGER",
            ] {
                let has: bool = sqlx::query_scalar("SELECT has_table_privilege($1, $2, $3)")
                    .bind(role.db_role())
                    .bind(format!("caracal.{}", table.name))
                    .bind(privilege)
                    .fetch_one(&mut admin)
                    .await?;
                if has != expected.contains(&privilege) {
                    mismatches.push(format!(
                        "{} {privilege} on {}: has={has}",
                        role.db_role(),
                        table.name
                    ));
                }
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    Ok(())
}

#[tokio::test]
async fn gateway_reads_only_the_authority_columns_of_sessions() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let mut admin = db.admin().await?;
    for column in ["id", "status", "revoked_at", "root_id"] {
        let ok: bool = sqlx::query_scalar(
            "SELECT has_column_privilege('caracal_gateway', 'caracal.sessions', $1, 'SELECT')",
        )
        .bind(column)
        .fetch_one(&mut admin)
        .await?;
        assert!(ok, "gateway must read sessions.{column}");
    }
    let claims: bool =
        sqlx::query_scalar("SELECT has_column_privilege('caracal_gateway', 'caracal.sessions', 'claims_json', 'SELECT')")
            .fetch_one(&mut admin)
            .await?;
    assert!(!claims, "the claim snapshot is not the gateway's to read");

    let pool = db.service_pool(ServiceRole::Gateway).await?;
    let mut tx = zone_tx(&pool, &ZoneId::parse(ZONE_A)?).await?;
    let err = sqlx::query("SELECT claims_json FROM sessions")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "{err}");
    Ok(())
}

#[tokio::test]
async fn audit_role_gets_permission_denied_on_update_and_delete_of_audit_events()
-> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    seed_zone(&mut db.admin().await?, ZONE_A).await?;
    let pool = db.service_pool(ServiceRole::Audit).await?;
    let zone = ZoneId::parse(ZONE_A)?;
    for statement in [
        "UPDATE audit_events SET decision = 'allow'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        "DELETE FROM audit_events_default",
    ] {
        let mut tx = zone_tx(&pool, &zone).await?;
        let err = sqlx::query(statement).execute(&mut *tx).await.unwrap_err();
        assert_eq!(sqlstate(&err), "42501", "{statement}: {err}");
        assert!(
            err.to_string().contains("permission denied"),
            "{statement}: {err}"
        );
    }
    // ... while appending works.
    let mut tx = zone_tx(&pool, &zone).await?;
    sqlx::query(
        "INSERT INTO audit_events (id, zone_id, event_type, occurred_at, content_sha256, chain_seq, prev_content_sha256) \
         VALUES ('new', $1, 'token_exchange', now(), decode(repeat('07', 32), 'hex'), 2, decode(repeat('04', 32), 'hex'))",
    )
    .bind(ZONE_A)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

#[tokio::test]
async fn gateway_can_write_nothing() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    seed_zone(&mut db.admin().await?, ZONE_A).await?;
    let pool = db.service_pool(ServiceRole::Gateway).await?;
    let zone = ZoneId::parse(ZONE_A)?;
    let mut admin = db.admin().await?;
    let mut allowed = Vec::new();
    for table in TABLES {
        let first_column: String = sqlx::query(
            "SELECT attname::text AS c FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 \
               AND NOT attisdropped AND attidentity = '' ORDER BY attnum LIMIT 1",
        )
        .bind(format!("caracal.{}", table.name))
        .fetch_one(&mut admin)
        .await?
        .try_get("c")?;
        for statement in [
            format!("INSERT INTO {} DEFAULT VALUES", table.name),
            format!("UPDATE {} SET {first_column} = {first_column}", table.name),
            format!("DELETE FROM {}", table.name),
            format!("TRUNCATE {}", table.name),
        ] {
            let mut tx = zone_tx(&pool, &zone).await?;
            match sqlx::query(&statement).execute(&mut *tx).await {
                Err(e)
                    if sqlstate(&e) == "42501" && e.to_string().contains("permission denied") => {}
                other => allowed.push(format!("{statement}: {other:?}")),
            }
        }
    }
    assert!(
        allowed.is_empty(),
        "the gateway could write:\n{}",
        allowed.join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn audit_partitions_grant_nothing_to_services() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let mut admin = db.admin().await?;
    let partitions: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
          WHERE i.inhparent = 'caracal.audit_events'::regclass",
    )
    .fetch_all(&mut admin)
    .await?;
    assert_eq!(
        partitions.len(),
        5,
        "default + current month + 3: {partitions:?}"
    );
    for partition in partitions {
        for role in ServiceRole::ALL {
            let any: bool = sqlx::query_scalar(
                "SELECT has_table_privilege($1, $2, 'SELECT') OR has_table_privilege($1, $2, 'INSERT') \
                     OR has_table_privilege($1, $2, 'UPDATE') OR has_table_privilege($1, $2, 'DELETE')",
            )
            .bind(role.db_role())
            .bind(format!("caracal.{partition}"))
            .fetch_one(&mut admin)
            .await?;
            assert!(!any, "{} holds a privilege on {partition}", role.db_role());
        }
    }
    Ok(())
}

#[tokio::test]
async fn functions_are_not_executable_by_public() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let pool = db.service_pool(ServiceRole::Api).await?;
    let err = sqlx::query("SELECT caracal_audit_drop_partitions(now())")
        .execute(&pool)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "{err}");
    let err = sqlx::query("SELECT caracal_uuid_v7()")
        .execute(&pool)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "{err}");
    Ok(())
}
