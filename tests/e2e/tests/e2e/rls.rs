//! Row-level security, every zone-scoped table × every service role (storage §3.4): in a
//! transaction scoped to zone B, zone A's rows are invisible and cannot be written; with no
//! zone set the role sees nothing and writes nothing; `*` opens reads only for the roles
//! the matrix names; `caracal_maintenance` sees everything.

use control_model::ZoneId;
use control_store::{
    ServiceRole,
    schema::{self, TABLES, TableSpec},
    zone::{cross_zone_read, zone_tx},
};
use sqlx::{PgConnection, PgPool, Row};
use tests_harness::TestDb;

use crate::fixtures::{ZONE_A, ZONE_B, seed_zone, sqlstate};

async fn seeded() -> anyhow::Result<TestDb> {
    let db = TestDb::migrated().await?;
    let mut admin = db.admin().await?;
    seed_zone(&mut admin, ZONE_A).await?;
    seed_zone(&mut admin, ZONE_B).await?;
    Ok(db)
}

fn can_read(table: &TableSpec, role: ServiceRole) -> bool {
    schema::expected_privileges(table, role).contains(&"SELECT")
        || (table.name == "sessions" && role == ServiceRole::Gateway)
}

fn can(table: &TableSpec, role: ServiceRole, privilege: &str) -> bool {
    schema::expected_privileges(table, role).contains(&privilege)
}

/// Rows of zone A and zone B visible on this connection.
async fn visible(conn: &mut PgConnection, table: &str) -> anyhow::Result<(i64, i64)> {
    let row = sqlx::query(&format!(
        "SELECT count(*) FILTER (WHERE zone_id = $1) AS a, count(*) FILTER (WHERE zone_id = $2) AS b FROM {table}"
    ))
    .bind(ZONE_A)
    .bind(ZONE_B)
    .fetch_one(conn)
    .await?;
    Ok((row.try_get("a")?, row.try_get("b")?))
}

/// Zone A's row of `table` as JSON, read by the admin.
async fn zone_a_row(
    admin: &mut PgConnection,
    table: &str,
) -> anyhow::Result<serde_json_value::Value> {
    let row: serde_json_value::Value = sqlx::query_scalar(&format!(
        "SELECT to_jsonb(t) FROM caracal.{table} t WHERE zone_id = $1 LIMIT 1"
    ))
    .bind(ZONE_A)
    .fetch_one(admin)
    .await?;
    Ok(row)
}

/// A row inserted (a copy of zone A's row) must be rejected by the policy: 42501.
async fn insert_copy(
    conn: &mut PgConnection,
    table: &str,
    row: &serde_json_value::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO {table} SELECT (jsonb_populate_record(NULL::{table}, $1)).*"
    ))
    .bind(row)
    .execute(conn)
    .await
    .map(|_| ())
}

mod serde_json_value {
    pub(crate) type Value = sqlx::types::JsonValue;
}

async fn check_role(db: &TestDb, role: ServiceRole, pool: &PgPool) -> anyhow::Result<Vec<String>> {
    let mut failures = Vec::new();
    let mut admin = db.admin().await?;
    let zone_b = ZoneId::parse(ZONE_B)?;
    let zone_a = ZoneId::parse(ZONE_A)?;
    for table in TABLES.iter().filter(|t| t.rls) {
        let name = table.name;
        let who = format!("{} on {name}", role.db_role());
        if can_read(table, role) {
            // Scoped to zone B: only B's rows.
            let mut tx = zone_tx(pool, &zone_b).await?;
            let (a, b) = visible(&mut tx, name).await?;
            if a != 0 || b == 0 {
                failures.push(format!("{who}: zone-b transaction saw a={a} b={b}"));
            }
            tx.rollback().await?;

            // No zone set: nothing at all.
            let mut conn = pool.acquire().await?;
            let (a, b) = visible(&mut conn, name).await?;
            if a != 0 || b != 0 {
                failures.push(format!("{who}: no zone set but saw a={a} b={b}"));
            }
            drop(conn);

            // `*`: both zones only for the roles the matrix names.
            let mut read = cross_zone_read(pool).await?;
            let (a, b) = visible(&mut read, name).await?;
            let across = schema::reads_across_zones(table, role);
            if across && (a == 0 || b == 0) || !across && (a != 0 || b != 0) {
                failures.push(format!(
                    "{who}: cross-zone read (allowed={across}) saw a={a} b={b}"
                ));
            }
            read.finish().await?;
        }
        if can(table, role, "INSERT") {
            let row = zone_a_row(&mut admin, name).await?;
            let mut tx = zone_tx(pool, &zone_b).await?;
            match insert_copy(&mut tx, name, &row).await {
                Err(e)
                    if sqlstate(&e) == "42501" && e.to_string().contains("row-level security") => {}
                other => failures.push(format!(
                    "{who}: insert of a zone-a row from zone-b gave {other:?}"
                )),
            }
            drop(tx);
            let mut conn = pool.acquire().await?;
            match insert_copy(&mut conn, name, &row).await {
                Err(e) if sqlstate(&e) == "42501" => {}
                other => failures.push(format!("{who}: insert with no zone set gave {other:?}")),
            }
            drop(conn);
            // In its own zone the policy admits the row; the copy then collides on its key.
            let mut tx = zone_tx(pool, &zone_a).await?;
            match insert_copy(&mut tx, name, &row).await {
                Err(e) if sqlstate(&e) == "23505" => {}
                other => failures.push(format!(
                    "{who}: insert in its own zone gave {other:?}, expected 23505"
                )),
            }
            drop(tx);
        }
        if can(table, role, "UPDATE") {
            let mut tx = zone_tx(pool, &zone_b).await?;
            let hidden = sqlx::query(&format!(
                "UPDATE {name} SET zone_id = zone_id WHERE zone_id = $1"
            ))
            .bind(ZONE_A)
            .execute(&mut *tx)
            .await?;
            if hidden.rows_affected() != 0 {
                failures.push(format!(
                    "{who}: updated {} zone-a rows from zone-b",
                    hidden.rows_affected()
                ));
            }
            match sqlx::query(&format!(
                "UPDATE {name} SET zone_id = $1 WHERE zone_id = $2"
            ))
            .bind(ZONE_A)
            .bind(ZONE_B)
            .execute(&mut *tx)
            .await
            {
                Err(e) if sqlstate(&e) == "42501" => {}
                other => failures.push(format!("{who}: moving a row into zone-a gave {other:?}")),
            }
            drop(tx);
        }
        if can(table, role, "DELETE") {
            let mut tx = zone_tx(pool, &zone_b).await?;
            let deleted = sqlx::query(&format!("DELETE FROM {name} WHERE zone_id = $1"))
                .bind(ZONE_A)
                .execute(&mut *tx)
                .await?;
            if deleted.rows_affected() != 0 {
                failures.push(format!(
                    "{who}: deleted {} zone-a rows from zone-b",
                    deleted.rows_affected()
                ));
            }
            tx.rollback().await?;
        }
    }
    Ok(failures)
}

#[tokio::test]
async fn every_service_role_is_confined_to_its_zone_on_every_zone_table() -> anyhow::Result<()> {
    let db = seeded().await?;
    let mut failures = Vec::new();
    for role in ServiceRole::ALL {
        let pool = db.service_pool(role).await?;
        failures.extend(check_role(&db, role, &pool).await?);
        pool.close().await;
    }
    assert!(
        failures.is_empty(),
        "row-level security failures:\n{}",
        failures.join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn maintenance_role_sees_every_zone_without_a_setting() -> anyhow::Result<()> {
    let db = seeded().await?;
    let pool = db.pool_as("caracal_maintenance").await?;
    let mut conn = pool.acquire().await?;
    for table in TABLES.iter().filter(|t| t.rls) {
        let (a, b) = visible(&mut conn, table.name).await?;
        assert!(
            a > 0 && b > 0,
            "caracal_maintenance on {}: a={a} b={b}",
            table.name
        );
    }
    Ok(())
}

#[tokio::test]
async fn zone_setting_does_not_outlive_its_transaction() -> anyhow::Result<()> {
    let db = seeded().await?;
    let pool = db.service_pool(ServiceRole::Api).await?;
    let mut tx = zone_tx(&pool, &ZoneId::parse(ZONE_A)?).await?;
    let (a, _) = visible(&mut tx, "applications").await?;
    assert_eq!(a, 1);
    tx.commit().await?;
    // Every pooled connection, including the one just used, is back to no setting.
    for _ in 0..3 {
        let mut conn = pool.acquire().await?;
        let setting: Option<String> =
            sqlx::query_scalar("SELECT current_setting('caracal.zone_id', true)")
                .fetch_one(&mut *conn)
                .await?;
        assert!(
            matches!(setting.as_deref(), None | Some("")),
            "leaked setting {setting:?}"
        );
        assert_eq!(visible(&mut conn, "applications").await?, (0, 0));
    }
    Ok(())
}

#[tokio::test]
async fn cross_zone_read_cannot_write() -> anyhow::Result<()> {
    let db = seeded().await?;
    let pool = db.service_pool(ServiceRole::Api).await?;
    let mut read = cross_zone_read(&pool).await?;
    let err = sqlx::query("UPDATE applications SET name = name")
        .execute(&mut *read)
        .await
        .expect_err("a cross-zone read is read-only");
    assert_eq!(sqlstate(&err), "25006", "{err}");
    Ok(())
}
