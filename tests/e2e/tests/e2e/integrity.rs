//! Integrity triggers (storage §5.4, §5.5): immutable policy versions, append-only ledgers,
//! immutable plugin bytes, and the binding revision bump with its outbox message.

use control_model::ZoneId;
use control_store::{ServiceRole, zone::zone_tx};
use sqlx::Row;
use tests_harness::TestDb;

use crate::fixtures::{ZONE_A, seed_zone, sqlstate};

async fn seeded() -> anyhow::Result<TestDb> {
    let db = TestDb::migrated().await?;
    seed_zone(&mut db.admin().await?, ZONE_A).await?;
    Ok(db)
}

/// Runs a statement as `caracal_maintenance` (owner member, BYPASSRLS): privileges and
/// row-level security let it through, so only the trigger can stop it.
async fn as_maintenance(db: &TestDb, statement: &str) -> Result<u64, sqlx::Error> {
    let pool = db
        .pool_as("caracal_maintenance")
        .await
        .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    sqlx::query(statement)
        .execute(&pool)
        .await
        .map(|r| r.rows_affected())
}

#[tokio::test]
async fn policy_versions_and_set_versions_refuse_update_delete_and_truncate() -> anyhow::Result<()>
{
    let db = seeded().await?;
    for (table, change) in [
        (
            "policy_versions",
            "UPDATE policy_versions SET content = 'package evil'",
        ),
        ("policy_versions", "DELETE FROM policy_versions"),
        ("policy_versions", "TRUNCATE policy_versions"),
        (
            "policy_set_versions",
            "UPDATE policy_set_versions SET manifest_sha256 = repeat('c', 64)",
        ),
        ("policy_set_versions", "DELETE FROM policy_set_versions"),
        (
            "policy_set_versions",
            "TRUNCATE policy_set_versions CASCADE",
        ),
    ] {
        let err = as_maintenance(&db, change).await.unwrap_err();
        assert_eq!(sqlstate(&err), "42501", "{change}: {err}");
        assert!(
            err.to_string()
                .contains(&format!("{table} rows are immutable")),
            "{change}: {err}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn ledgers_are_append_only_even_for_the_owner() -> anyhow::Result<()> {
    let db = seeded().await?;
    for (table, change) in [
        ("audit_events", "UPDATE audit_events SET decision = 'allow'"),
        ("audit_events", "DELETE FROM audit_events"),
        ("audit_events", "TRUNCATE audit_events"),
        (
            "admin_audit_events",
            "UPDATE admin_audit_events SET status_code = 500",
        ),
        ("admin_audit_events", "DELETE FROM admin_audit_events"),
    ] {
        let err = as_maintenance(&db, change).await.unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("{table} rows are append-only")),
            "{change}: {err}"
        );
    }
    let mut admin = db.admin().await?;
    sqlx::raw_sql(
        "INSERT INTO caracal.audit_chain_anchors (zone_id, chain_seq, content_sha256, partition_name) \
         VALUES ('zone-a', 1, decode(repeat('00', 32), 'hex'), 'p'); \
         INSERT INTO caracal.audit_ingest_alerts (event_id, zone_id, kind) VALUES ('e', 'zone-a', 'chain_break');",
    )
    .execute(&mut admin)
    .await?;
    for (table, change) in [
        ("audit_chain_anchors", "DELETE FROM audit_chain_anchors"),
        (
            "audit_ingest_alerts",
            "UPDATE audit_ingest_alerts SET detail = 'x'",
        ),
    ] {
        let err = as_maintenance(&db, change).await.unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("{table} rows are append-only")),
            "{change}: {err}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn plugin_component_bytes_cannot_change() -> anyhow::Result<()> {
    let db = seeded().await?;
    let pool = db.service_pool(ServiceRole::Api).await?;
    let mut tx = zone_tx(&pool, &ZoneId::parse(ZONE_A)?).await?;
    let err = sqlx::query("UPDATE gateway_plugins SET component = '\\x01'")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("component bytes are immutable"),
        "{err}"
    );
    drop(tx);
    let mut tx = zone_tx(&pool, &ZoneId::parse(ZONE_A)?).await?;
    let renamed = sqlx::query("UPDATE gateway_plugins SET description = 'renamed'")
        .execute(&mut *tx)
        .await?;
    assert_eq!(renamed.rows_affected(), 1, "other columns stay editable");
    Ok(())
}

#[tokio::test]
async fn gateway_relevant_writes_bump_the_revision_and_enqueue_one_invalidation()
-> anyhow::Result<()> {
    let db = seeded().await?;
    let mut admin = db.admin().await?;
    let before: i64 = sqlx::query_scalar("SELECT version FROM caracal.gateway_binding_revision")
        .fetch_one(&mut admin)
        .await?;

    let pool = db.service_pool(ServiceRole::Api).await?;
    let mut tx = zone_tx(&pool, &ZoneId::parse(ZONE_A)?).await?;
    sqlx::query("UPDATE resources SET upstream_url = 'http://127.0.0.1:9/'")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    let after: i64 = sqlx::query_scalar("SELECT version FROM caracal.gateway_binding_revision")
        .fetch_one(&mut admin)
        .await?;
    assert_eq!(after, before + 1);
    let row = sqlx::query(
        "SELECT producer, topic, dedupe_key, payload_json->>'revision' AS revision, payload_json->>'zone_id' AS zone, id \
           FROM caracal.event_outbox WHERE dedupe_key = $1",
    )
    .bind(format!("bindings:{after}"))
    .fetch_one(&mut admin)
    .await?;
    assert_eq!(row.try_get::<String, _>("producer")?, "api");
    assert_eq!(
        row.try_get::<String, _>("topic")?,
        "caracal.gateway.bindings.invalidate"
    );
    assert_eq!(row.try_get::<String, _>("revision")?, after.to_string());
    assert_eq!(row.try_get::<String, _>("zone")?, "*");
    let id: String = row.try_get("id")?;
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "7", "outbox ids from SQL are UUIDv7: {id}");

    // A statement on a table the gateway does not hold changes nothing.
    let mut tx = zone_tx(&pool, &ZoneId::parse(ZONE_A)?).await?;
    sqlx::query("UPDATE teams SET name = 'renamed'")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let unchanged: i64 = sqlx::query_scalar("SELECT version FROM caracal.gateway_binding_revision")
        .fetch_one(&mut admin)
        .await?;
    assert_eq!(unchanged, after);
    Ok(())
}

#[tokio::test]
async fn sts_writes_are_attributed_to_the_sts_producer() -> anyhow::Result<()> {
    let db = seeded().await?;
    let pool = db.service_pool(ServiceRole::Sts).await?;
    let mut tx = zone_tx(&pool, &ZoneId::parse(ZONE_A)?).await?;
    sqlx::query("UPDATE secrets SET status = 'retiring'")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let mut admin = db.admin().await?;
    let producers: Vec<String> = sqlx::query_scalar(
        "SELECT producer FROM caracal.event_outbox ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_all(&mut admin)
    .await?;
    assert_eq!(producers, vec!["sts".to_owned()]);
    Ok(())
}

#[tokio::test]
async fn zone_ids_outside_the_pattern_are_rejected_by_the_schema() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let mut admin = db.admin().await?;
    for bad in ["*", "", "a b", "zone/1"] {
        let err =
            sqlx::query("INSERT INTO caracal.zones (id, name, slug) VALUES ($1, 'n', 'slug')")
                .bind(bad)
                .execute(&mut admin)
                .await
                .unwrap_err();
        assert_eq!(sqlstate(&err), "23514", "{bad:?}: {err}");
    }
    Ok(())
}

#[tokio::test]
async fn outbox_topics_outside_the_pattern_are_rejected_by_the_schema() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let mut admin = db.admin().await?;
    // Migration 0012 rewrote both checks in a cheaper form; the rule is unchanged.
    let longest = "a".repeat(128);
    let too_long = "a".repeat(129);
    for (table, producer) in [("event_outbox", "api"), ("caracal_outbox", "coordinator")] {
        let insert = format!(
            "INSERT INTO caracal.{table} (id, producer, topic, payload_json) VALUES ($1, $2, $3, '{{}}')"
        );
        for (n, bad) in ["", "Caps", "a b", "topic/1", too_long.as_str()]
            .into_iter()
            .enumerate()
        {
            let err = sqlx::query(&insert)
                .bind(format!("bad-{n}"))
                .bind(producer)
                .bind(bad)
                .execute(&mut admin)
                .await
                .unwrap_err();
            assert_eq!(sqlstate(&err), "23514", "{table} {bad:?}: {err}");
        }
        for (n, good) in ["caracal.agents.lifecycle", "a:b_c-d", longest.as_str()]
            .into_iter()
            .enumerate()
        {
            sqlx::query(&insert)
                .bind(format!("good-{n}"))
                .bind(producer)
                .bind(good)
                .execute(&mut admin)
                .await?;
        }
    }
    Ok(())
}
