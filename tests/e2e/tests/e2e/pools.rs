//! Service pools (storage §13): each service logs in as its own role, with the documented
//! startup options and timeouts, read from the environment.

use std::collections::HashMap;

use control_store::{ServiceRole, StoreError, pool::connect_service_pool};
use sqlx::Row;
use tests_harness::TestDb;

fn env(pairs: Vec<(&str, String)>) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    move |k| map.get(k).cloned()
}

#[tokio::test]
async fn each_service_pool_logs_in_as_its_role_with_the_documented_settings() -> anyhow::Result<()>
{
    let db = TestDb::migrated().await?;
    for role in ServiceRole::ALL {
        let lookup = env(vec![
            ("DATABASE_URL", db.url()),
            ("CARACAL_DB_POOL_MAX", "2".to_owned()),
        ]);
        let pool = connect_service_pool(role, "gw-7", &lookup).await?;
        let row = sqlx::query(
            "SELECT current_user::text AS who, current_setting('search_path') AS search_path, \
                    current_setting('statement_timeout') AS statement_timeout, \
                    current_setting('idle_in_transaction_session_timeout') AS idle_in_tx, \
                    current_setting('application_name') AS app, \
                    current_setting('jit') AS jit",
        )
        .fetch_one(&pool)
        .await?;
        assert_eq!(row.try_get::<String, _>("who")?, role.db_role());
        assert_eq!(row.try_get::<String, _>("search_path")?, "caracal");
        assert_eq!(row.try_get::<String, _>("statement_timeout")?, "15s");
        assert_eq!(row.try_get::<String, _>("idle_in_tx")?, "30s");
        assert_eq!(row.try_get::<String, _>("jit")?, "off");
        assert_eq!(
            row.try_get::<String, _>("app")?,
            format!("caracal-{}-gw-7", role.service())
        );
        assert_eq!(pool.options().get_max_connections(), 2);
        pool.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn statement_timeout_comes_from_the_environment_and_is_enforced() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let lookup = env(vec![
        ("DATABASE_URL", db.url()),
        ("CARACAL_STS_DB_STATEMENT_TIMEOUT_MS", "200".to_owned()),
    ]);
    let pool = connect_service_pool(ServiceRole::Sts, "t", &lookup).await?;
    let err = sqlx::query("SELECT pg_sleep(2)")
        .execute(&pool)
        .await
        .unwrap_err();
    assert_eq!(
        crate::fixtures::sqlstate(&err),
        "57014",
        "statement_timeout cancels: {err}"
    );
    Ok(())
}

#[tokio::test]
async fn unreachable_database_fails_with_one_line_naming_the_role() -> anyhow::Result<()> {
    let lookup = env(vec![(
        "DATABASE_URL",
        "postgres://someone:hunter2@127.0.0.1:1/db".to_owned(),
    )]);
    let err = connect_service_pool(ServiceRole::Gateway, "t", &lookup)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Connect { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with("cannot connect to the database as caracal_gateway: "),
        "{message}"
    );
    assert!(
        !message.contains("hunter2") && !message.contains('\n'),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn a_missing_database_is_named_by_the_server() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let url = db.url().replace(db.name(), "caracal_test_does_not_exist");
    let lookup = env(vec![("DATABASE_URL", url)]);
    let err = connect_service_pool(ServiceRole::Api, "t", &lookup)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    Ok(())
}
