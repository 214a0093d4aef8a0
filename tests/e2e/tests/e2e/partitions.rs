//! Audit partitions (storage §5.1–5.3): monthly partitions for the current month and three
//! ahead, a default partition for everything else, moves out of the default partition, and
//! retention drops that keep chain anchors.

use control_model::ZoneId;
use control_store::{ServiceRole, zone::zone_tx};
use tests_harness::TestDb;

async fn insert_event(db: &TestDb, id: &str, occurred_at: &str) -> anyhow::Result<String> {
    let pool = db.service_pool(ServiceRole::Audit).await?;
    let mut tx = zone_tx(&pool, &ZoneId::parse("zone-a")?).await?;
    sqlx::query(
        "INSERT INTO audit_events (id, zone_id, event_type, occurred_at, content_sha256, chain_seq) \
         VALUES ($1, 'zone-a', 'token_exchange', $2::timestamptz, decode(repeat('00', 32), 'hex'), 1)",
    )
    .bind(id)
    .bind(occurred_at)
    .execute(&mut *tx)
    .await?;
    let partition: String = sqlx::query_scalar("SELECT c.relname::text FROM audit_events e JOIN pg_class c ON c.oid = e.tableoid WHERE e.id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(partition)
}

#[tokio::test]
async fn current_and_next_three_months_land_in_monthly_partitions() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let mut admin = db.admin().await?;
    let months: Vec<(String, String)> = sqlx::query_as(
        "SELECT to_char(m + interval '14 days', 'YYYY-MM-DD\"T\"12:00:00Z'), \
                'audit_events_y' || to_char(m, 'YYYY') || 'm' || to_char(m, 'MM') \
           FROM generate_series(date_trunc('month', now() AT TIME ZONE 'UTC'), \
                                date_trunc('month', now() AT TIME ZONE 'UTC') + interval '3 months', \
                                interval '1 month') AS m",
    )
    .fetch_all(&mut admin)
    .await?;
    assert_eq!(months.len(), 4);
    for (i, (when, expected)) in months.iter().enumerate() {
        assert_eq!(&insert_event(&db, &format!("e{i}"), when).await?, expected);
    }
    assert_eq!(
        insert_event(&db, "far", "2999-06-01T00:00:00Z").await?,
        "audit_events_default"
    );
    Ok(())
}

#[tokio::test]
async fn partition_bounds_are_utc_month_edges() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let mut admin = db.admin().await?;
    // Create a known month, then insert on both sides of its lower edge.
    sqlx::query("SELECT caracal.caracal_audit_ensure_partitions('2031-05-15T00:00:00Z', 0)")
        .execute(&mut admin)
        .await?;
    assert_eq!(
        insert_event(&db, "edge-in", "2031-05-01T00:00:00Z").await?,
        "audit_events_y2031m05"
    );
    assert_eq!(
        insert_event(&db, "edge-out", "2031-05-01T01:59:59+02:00").await?,
        "audit_events_default",
        "23:59:59 UTC on April 30th belongs to April"
    );
    Ok(())
}

#[tokio::test]
async fn ensuring_a_month_moves_its_rows_out_of_the_default_partition() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    assert_eq!(
        insert_event(&db, "early", "2040-03-10T00:00:00Z").await?,
        "audit_events_default"
    );
    let pool = db.service_pool(ServiceRole::Audit).await?;
    let created: i32 =
        sqlx::query_scalar("SELECT caracal_audit_ensure_partitions('2040-03-01T00:00:00Z', 1)")
            .fetch_one(&pool)
            .await?;
    assert_eq!(created, 2);
    let mut tx = zone_tx(&pool, &ZoneId::parse("zone-a")?).await?;
    let partition: String = sqlx::query_scalar("SELECT c.relname::text FROM audit_events e JOIN pg_class c ON c.oid = e.tableoid WHERE e.id = 'early'")
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(partition, "audit_events_y2040m03");
    // The moved partition is append-only like every other.
    drop(tx);
    let mut admin = db.admin().await?;
    let err = sqlx::query("DELETE FROM caracal.audit_events_y2040m03")
        .execute(&mut admin)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = sqlx::query("TRUNCATE caracal.audit_events_y2040m03")
        .execute(&mut admin)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    Ok(())
}

#[tokio::test]
async fn retention_drop_keeps_an_anchor_for_each_zone_head() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let mut admin = db.admin().await?;
    sqlx::query("SELECT caracal.caracal_audit_ensure_partitions('2020-01-15T00:00:00Z', 0)")
        .execute(&mut admin)
        .await?;
    insert_event(&db, "old", "2020-01-20T00:00:00Z").await?;
    let pool = db.service_pool(ServiceRole::Audit).await?;
    let dropped: Vec<String> =
        sqlx::query_scalar("SELECT caracal_audit_drop_partitions('2020-03-01T00:00:00Z')")
            .fetch_all(&pool)
            .await?;
    assert_eq!(dropped, vec!["audit_events_y2020m01".to_owned()]);
    let anchors: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM caracal.audit_chain_anchors WHERE zone_id = 'zone-a' AND partition_name = 'audit_events_y2020m01'",
    )
    .fetch_one(&mut admin)
    .await?;
    assert_eq!(anchors, 1);
    // Current partitions and the default partition are never dropped by a past cutoff.
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'caracal.audit_events'::regclass",
    )
    .fetch_one(&mut admin)
    .await?;
    assert_eq!(left, 5);
    Ok(())
}
