//! Caracal role `api` (port 3000): the `/v1` admin API of Caracal 1.0.
//!
//! Requests pass through one frame (`server`): the request id, authentication
//! (`auth`: the bootstrap token or a minted token, with the per-address failure limit), the
//! route table with the capability and zone checks, then the body limit (1 MiB, or 32 MiB for
//! a plugin component upload). Each area handler (`areas`) reads its input strictly
//! (`request`), works inside one transaction scoped to the zone in the path as the
//! `caracal_api` role, records the admin audit row in that same transaction (`audit`, chained
//! per zone), and returns a reply. Every refusal is
//! a [`error::Problem`] value; every failure is mapped to its answer in one place
//! ([`error::rescue`]).
//!
//! Plugin components are checked against their WIT world with the gateway's own plugin host
//! (`components`), and a binding's configuration with the plugin's own `configure`.
//!
//! It must never return or log a secret: application secrets and admin tokens are shown
//! once, at creation, and stored as Argon2id hashes (tokens also by SHA-256 for lookup).

pub mod areas;
pub mod audit;
pub mod audit_service;
pub mod auth;
pub mod components;
pub mod config;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod request;
pub mod retention;
pub mod routes;
pub mod server;
pub mod state;

use std::{net::SocketAddr, sync::Arc};

use control_store::{ServiceRole, pool::connect_service_pool};
use tokio::sync::watch;

pub use config::{ApiConfig, ConfigError, Lookup};

/// The API failed to start; `Display` is one line naming the cause.
#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    /// A setting is missing or malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Postgres cannot be reached.
    #[error(transparent)]
    Database(#[from] control_store::StoreError),
    /// Redis settings are invalid.
    #[error("REDIS_URL: {0}")]
    Redis(String),
    /// The plugin host could not start.
    #[error(transparent)]
    PluginHost(#[from] gateway_plugin_host::HostConfigError),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        cause: std::io::Error,
    },
}

/// A running admin API; `stop` drains connections and stops the dispatcher and retention.
pub type ApiHandle = control_http::RoleHandle;

/// Starts the API on `config.bind`.
pub async fn start(config: ApiConfig, lookup: Lookup<'_>) -> Result<ApiHandle, ApiStartError> {
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|cause| ApiStartError::Bind {
            addr: config.bind,
            cause,
        })?;
    start_with_listener(config, lookup, listener).await
}

/// Most connections of the `caracal_audit` pool that answers the audit reads in process.
const AUDIT_READ_POOL_MAX: u32 = 4;

/// Starts the API on an already bound listener.
pub async fn start_with_listener(
    config: ApiConfig,
    lookup: Lookup<'_>,
    listener: tokio::net::TcpListener,
) -> Result<ApiHandle, ApiStartError> {
    let pool = connect_service_pool(ServiceRole::Api, &config.instance_id, lookup).await?;
    let components = components::Components::start()?;
    let redis = redis::Client::open(config.redis_url.as_str())
        .map_err(|e| ApiStartError::Redis(e.to_string()))?;
    let argon2 = control_crypto::Argon2Params::from_lookup(lookup)
        .map_err(|e| ConfigError(e.to_string()))?;
    let addr = control_http::local_addr(&listener).map_err(|cause| ApiStartError::Bind {
        addr: config.bind,
        cause,
    })?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    // The outbox dispatcher of producer `api` (storage §7.3): activations, revocations and
    // the binding revisions that admin writes trigger.
    let dispatcher = control_events::outbox::Dispatcher::new(
        pool.clone(),
        redis.clone(),
        control_events::outbox::OutboxTarget {
            table: control_store::outbox::OutboxTable::Event,
            producer: control_store::outbox::PRODUCER_API.to_owned(),
            worker: control_events::streams::consumer_name("api", &config.instance_id),
        },
        config.outbox.clone(),
        control_events::outbox::OutboxKeys {
            streams: config.streams_hmac_key.clone(),
            audit: config.audit_hmac_key.clone(),
        },
    );
    let outbox = dispatcher.handle();
    let serve_config = control_http::ServeConfig {
        max_connections: config.max_connections,
        ..control_http::ServeConfig::default()
    };
    // Audit reads are the audit service's: this role has no rights on `audit_events`
    // (settled point 3). In `caracal all` they run here, logged in as `caracal_audit`.
    let audit_service = if config.audit_in_process {
        use control_store::{StoreError, pool::connect_pool, settings};
        let mut pool_settings = settings::PoolSettings::from_lookup(ServiceRole::Audit, lookup)
            .map_err(StoreError::from)?;
        pool_settings.max_connections = pool_settings.max_connections.min(AUDIT_READ_POOL_MAX);
        pool_settings.min_connections = 0;
        let options =
            settings::connect_options(ServiceRole::Audit, lookup).map_err(StoreError::from)?;
        let reads = connect_pool(
            ServiceRole::Audit,
            &config.instance_id,
            options,
            &pool_settings,
        )
        .await?;
        audit_service::AuditService::in_process(reads)
    } else {
        audit_service::AuditService::new(&config)
    };
    let api = Arc::new(state::Api {
        pool,
        config,
        argon2,
        verified_tokens: moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(auth::VERIFIED_TTL)
            .build(),
        auth_failures: moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(auth::FAILURE_WINDOW)
            .build(),
        metrics: metrics::Metrics::default(),
        redis,
        outbox,
        components,
        uploads: tokio::sync::Semaphore::new(state::MAX_UPLOADS),
        audit_service,
    });
    let outbox_task = dispatcher.spawn(shutdown_rx.clone());
    let retention_task = tokio::spawn(retention::run(
        api.pool.clone(),
        api.config.retention,
        shutdown_rx.clone(),
    ));
    let serve = tokio::spawn(control_http::serve(
        listener,
        serve_config,
        shutdown_rx,
        move |req| server::handle(Arc::clone(&api), req),
    ));
    tracing::info!(%addr, "api listening");
    Ok(ApiHandle::new(
        addr,
        shutdown,
        vec![serve, outbox_task, retention_task],
    ))
}
