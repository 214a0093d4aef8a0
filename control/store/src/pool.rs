//! One connection pool per service login role (§13).

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{
    ServiceRole, StoreError,
    error::describe_connect_error,
    settings::{Lookup, PoolSettings, connect_options},
};

/// Adds the per-connection startup options every service connection carries:
/// `application_name=caracal-<service>-<instance>`, `search_path=caracal`, the server
/// side statement and idle-in-transaction timeouts, and `jit=off`: every query of the
/// services is a short indexed one, and a misestimated plan (an unanalysed partition, a
/// guessed array size) otherwise pays tens of milliseconds of JIT compilation for a
/// statement that runs in a few (decision 0034).
pub fn with_service_options(
    options: PgConnectOptions,
    role: ServiceRole,
    instance: &str,
    settings: &PoolSettings,
) -> PgConnectOptions {
    options
        .application_name(&format!("caracal-{}-{instance}", role.service()))
        .options([
            ("search_path", "caracal".to_owned()),
            ("jit", "off".to_owned()),
            (
                "statement_timeout",
                format!("{}", settings.statement_timeout.as_millis()),
            ),
            (
                "idle_in_transaction_session_timeout",
                format!("{}", settings.idle_in_transaction_timeout.as_millis()),
            ),
        ])
}

/// Builds the pool of `role` from the environment and opens one connection to prove the
/// database is reachable and the login works. Fails with one line naming the role and the
/// cause, never the URL.
pub async fn connect_service_pool(
    role: ServiceRole,
    instance: &str,
    lookup: Lookup<'_>,
) -> Result<PgPool, StoreError> {
    let settings = PoolSettings::from_lookup(role, lookup)?;
    let options = connect_options(role, lookup)?;
    connect_pool(role, instance, options, &settings).await
}

/// Builds a pool from explicit options (the harness and `caracal all` use this).
pub async fn connect_pool(
    role: ServiceRole,
    instance: &str,
    options: PgConnectOptions,
    settings: &PoolSettings,
) -> Result<PgPool, StoreError> {
    let user = options.get_username().to_owned();
    let options = with_service_options(options, role, instance, settings);
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(settings.min_connections)
        .acquire_timeout(settings.connect_timeout)
        .idle_timeout(Some(settings.idle_timeout))
        .max_lifetime(Some(settings.max_lifetime))
        .connect_lazy_with(options);
    match tokio::time::timeout(settings.connect_timeout, pool.acquire()).await {
        Ok(Ok(_conn)) => Ok(pool),
        Ok(Err(err)) => Err(StoreError::Connect {
            role: user,
            reason: describe_connect_error(&err),
        }),
        Err(_elapsed) => Err(StoreError::Connect {
            role: user,
            reason: format!(
                "no answer within {} ms",
                settings.connect_timeout.as_millis()
            ),
        }),
    }
}
