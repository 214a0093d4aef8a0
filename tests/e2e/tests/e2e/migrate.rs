//! `caracal migrate` against real Postgres (storage §4): idempotence, concurrency, edited
//! and failing files, and `--verify`.

use control_store::migrate::{
    MigrateError, MigrateOptions, MigrationSet, VerifyOutcome, migrate, verify,
};
use std::time::Duration;
use tests_harness::TestDb;

fn embedded() -> MigrationSet {
    MigrationSet::embedded().expect("embedded migrations are valid")
}

/// The embedded files with one of them replaced or one appended.
fn with_file(name: &str, sql: &str) -> MigrationSet {
    let mut files: Vec<(String, String)> = embedded()
        .iter()
        .map(|m| (m.name.clone(), m.sql.clone()))
        .collect();
    match files.iter_mut().find(|(n, _)| n == name) {
        Some(file) => file.1 = sql.to_owned(),
        None => files.push((name.to_owned(), sql.to_owned())),
    }
    MigrationSet::from_files(files).expect("valid set")
}

async fn applied_rows(db: &TestDb) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM caracal.schema_migrations")
            .fetch_one(&mut db.admin().await?)
            .await?,
    )
}

#[tokio::test]
async fn second_migrate_is_a_no_op() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let first = db.migrate().await?;
    assert_eq!(first.applied.len() as i32, embedded().latest());
    assert_eq!(
        first.partitions_created, 0,
        "0008 itself pre-creates the partitions"
    );
    let second = db.migrate().await?;
    assert!(second.applied.is_empty(), "{:?}", second.applied);
    assert_eq!(second.partitions_created, 0);
    assert_eq!(applied_rows(&db).await?, i64::from(embedded().latest()));
    Ok(())
}

#[tokio::test]
async fn concurrent_migrates_both_succeed_and_apply_each_file_once() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let set = embedded();
    let options = MigrateOptions::default();
    let target = db.options();
    let (a, b) = tokio::join!(
        migrate(&target, &set, &options),
        migrate(&target, &set, &options)
    );
    let (a, b) = (a?, b?);
    assert_eq!(
        a.applied.len() + b.applied.len(),
        set.latest() as usize,
        "each file applied by exactly one run"
    );
    assert_eq!(applied_rows(&db).await?, i64::from(set.latest()));
    let report = verify(&db.options(), &set, Duration::from_secs(5)).await?;
    assert_eq!(report.outcome(), VerifyOutcome::Clean, "{:?}", report.drift);
    Ok(())
}

#[tokio::test]
async fn edited_applied_migration_is_refused_naming_the_file() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let original = embedded().get(3).expect("0003").sql.clone();
    let edited = with_file(
        "0003_product_model.sql",
        &format!("{original}\n-- a harmless-looking edit\n"),
    );
    let err = migrate(&db.options(), &edited, &MigrateOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, MigrateError::Edited { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("0003_product_model.sql was edited after it was applied: recorded "),
        "{err}"
    );
    // --verify reports the same as drift.
    let report = verify(&db.options(), &edited, Duration::from_secs(5)).await?;
    assert_eq!(report.outcome(), VerifyOutcome::Drift);
    assert!(
        report.drift[0].contains("0003_product_model.sql was edited"),
        "{:?}",
        report.drift
    );
    Ok(())
}

#[tokio::test]
async fn a_failing_file_is_rolled_back_and_reported_with_line_and_sqlstate() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let next = embedded().latest() + 1;
    let name = format!("{next:04}_broken.sql");
    let set = with_file(
        &name,
        "CREATE TABLE half_done (id int);\n\nSELECT * FROM no_such_table;\n",
    );
    let err = migrate(&db.options(), &set, &MigrateOptions::default())
        .await
        .unwrap_err();
    match &err {
        MigrateError::FileFailed {
            file,
            line,
            sqlstate,
            ..
        } => {
            assert_eq!(file, &name);
            assert_eq!(line, "3");
            assert_eq!(sqlstate, "42P01");
        }
        other => panic!("expected FileFailed, got {other:?}"),
    }
    let mut admin = db.admin().await?;
    let half_done: bool = sqlx::query_scalar("SELECT to_regclass('caracal.half_done') IS NOT NULL")
        .fetch_one(&mut admin)
        .await?;
    assert!(
        !half_done,
        "the failed file's earlier statements must be rolled back"
    );
    assert_eq!(applied_rows(&db).await?, i64::from(embedded().latest()));
    Ok(())
}

#[tokio::test]
async fn a_database_newer_than_the_binary_is_refused() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let next = embedded().latest() + 1;
    let newer = with_file(&format!("{next:04}_future.sql"), "SELECT 1;");
    migrate(&db.options(), &newer, &MigrateOptions::default()).await?;
    let err = migrate(&db.options(), &embedded(), &MigrateOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "database is at {next:04}, newer than this binary ({:04})",
            next - 1
        )
    );
    Ok(())
}

#[tokio::test]
async fn verify_is_clean_after_migrate_and_pending_before() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let set = embedded();
    let before = verify(&db.options(), &set, Duration::from_secs(5)).await?;
    assert_eq!(before.outcome(), VerifyOutcome::Pending);
    assert_eq!(before.pending.len() as i32, set.latest());
    // verify changed nothing: there is still no schema.
    let schema: bool = sqlx::query_scalar("SELECT to_regnamespace('caracal') IS NOT NULL")
        .fetch_one(&mut db.admin().await?)
        .await?;
    assert!(!schema, "--verify must not create anything");

    db.migrate().await?;
    let after = verify(&db.options(), &set, Duration::from_secs(5)).await?;
    assert_eq!(after.outcome(), VerifyOutcome::Clean, "{:?}", after.drift);
    Ok(())
}

#[tokio::test]
async fn verify_reports_each_kind_of_drift() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    sqlx::raw_sql(
        "GRANT UPDATE ON caracal.audit_events TO caracal_audit;
         REVOKE SELECT ON caracal.resources FROM caracal_gateway;
         ALTER TABLE caracal.providers NO FORCE ROW LEVEL SECURITY;
         DROP POLICY cross_zone_read ON caracal.secrets;
         ALTER TABLE caracal.policy_versions DISABLE TRIGGER policy_versions_immutable;
         GRANT EXECUTE ON FUNCTION caracal.caracal_uuid_v7() TO PUBLIC;
         GRANT SELECT ON caracal.audit_events_default TO caracal_api;
         CREATE TABLE caracal.stray (id int);
         DROP TABLE caracal.audit_events_default;",
    )
    .execute(&mut db.admin().await?)
    .await?;
    let report = verify(&db.options(), &embedded(), Duration::from_secs(5)).await?;
    assert_eq!(report.outcome(), VerifyOutcome::Drift);
    let all = report.drift.join("\n");
    for expected in [
        "caracal_audit has UPDATE on audit_events",
        "caracal_gateway lacks SELECT on resources",
        "table providers: row-level security must be enabled and forced",
        "table secrets: policy cross_zone_read (SELECT to caracal_gateway) is missing",
        "trigger policy_versions_immutable on policy_versions is missing or disabled",
        "function caracal_uuid_v7: EXECUTE is granted to [PUBLIC]",
        "table stray is not part of the schema",
        "audit partition audit_events_default is missing",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    Ok(())
}

#[tokio::test]
async fn unreachable_database_is_a_connect_error() -> anyhow::Result<()> {
    let options = "postgres://postgres@127.0.0.1:1/nothing".parse()?;
    let err = migrate(&options, &embedded(), &MigrateOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, MigrateError::Connect(_)), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("cannot connect to the database: "),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn role_passwords_are_set_as_scram_verifiers_and_never_logged_in_errors() -> anyhow::Result<()>
{
    use control_store::migrate::RolePassword;
    let db = TestDb::create().await?;
    let options = MigrateOptions {
        role_passwords: vec![RolePassword::new(
            "caracal_coordinator",
            "it's a s3cret".to_owned(),
        )],
        ..MigrateOptions::default()
    };
    assert!(
        !format!("{options:?}").contains("s3cret"),
        "Debug must redact"
    );
    migrate(&db.options(), &embedded(), &options).await?;
    let mut admin = db.admin().await?;
    let stored: Option<String> = sqlx::query_scalar(
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'caracal_coordinator'",
    )
    .fetch_one(&mut admin)
    .await?;
    // Roles are cluster-wide: put the test cluster back the way it was (trust auth).
    sqlx::raw_sql("ALTER ROLE caracal_coordinator PASSWORD NULL")
        .execute(&mut admin)
        .await?;
    let stored = stored.expect("a password was set");
    assert!(
        stored.starts_with("SCRAM-SHA-256$"),
        "stored as a verifier, not plain text"
    );
    assert!(!stored.contains("s3cret"));
    Ok(())
}
