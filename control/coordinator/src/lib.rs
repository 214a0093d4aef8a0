//! Caracal role `coordinator` (port 4000): agent sessions, delegation edges that only
//! narrow, and cascading revocation, wire-compatible with Caracal 1.0 (wire-contract §7).
//!
//! A request passes one frame (`server`): the route table (`routes`), authentication
//! (`auth`: a `use=session` mandate verified against the zone's STS key set (`keys`), or the
//! operator token on the operator routes), the idempotency key (`idempotency`), the 1 MiB
//! body, then the operation: sessions (`sessions`: start with the ordered rules of
//! authority §2.1, terminate, heartbeat and lease with fencing, suspend, resume, reads) or
//! delegations (`delegations`: create with the narrowing rules of §2.2, whose pure part is
//! `narrowing`; revoke with its cascade; reads). Every change commits in one zone
//! transaction together with its outbox rows (`caracal_outbox`, producer `coordinator`,
//! through the cascade shared with the admin API in `control_events::cascade`); the
//! dispatcher publishes them to the revocation and invalidation streams right after the
//! commit. The sweepers (`sweeper`) expire tasks, leases and edges and delete old rows under
//! one leader lock.
//!
//! Every refusal is a [`error::Problem`] value with the catalog's code; every failure is
//! mapped to its answer in one place ([`error::rescue`]). It never logs or returns a token.

pub mod auth;
pub mod config;
pub mod delegations;
pub mod error;
pub mod idempotency;
pub mod invocations;
pub mod keys;
pub mod metrics;
pub mod narrowing;
pub mod ops;
pub mod request;
pub mod routes;
pub mod server;
pub mod services;
pub mod sessions;
pub mod state;
pub mod sweeper;
pub mod views;

use std::{net::SocketAddr, sync::Arc};

use control_events::outbox::{Dispatcher, OutboxKeys, OutboxTarget};
use control_store::{
    ServiceRole,
    outbox::{OutboxTable, PRODUCER_COORDINATOR},
    pool::connect_service_pool,
};
use tokio::sync::watch;

pub use config::{ConfigError, CoordinatorConfig, Lookup};

/// The Coordinator failed to start; `Display` is one line naming the cause.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorStartError {
    /// A setting is missing or malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Postgres cannot be reached.
    #[error(transparent)]
    Database(#[from] control_store::StoreError),
    /// Redis settings are invalid.
    #[error("REDIS_URL: {0}")]
    Redis(String),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        cause: std::io::Error,
    },
}

/// A running Coordinator; `stop` drains connections and stops the dispatcher, the sweepers and the presence heartbeat.
pub type CoordinatorHandle = control_http::RoleHandle;

/// Starts the Coordinator on `config.bind`.
///
/// # Errors
///
/// [`CoordinatorStartError`].
pub async fn start(
    config: CoordinatorConfig,
    lookup: Lookup<'_>,
) -> Result<CoordinatorHandle, CoordinatorStartError> {
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|cause| CoordinatorStartError::Bind {
            addr: config.bind,
            cause,
        })?;
    start_with_listener(config, lookup, listener).await
}

/// Starts the Coordinator on an already bound listener.
///
/// # Errors
///
/// [`CoordinatorStartError`].
pub async fn start_with_listener(
    config: CoordinatorConfig,
    lookup: Lookup<'_>,
    listener: tokio::net::TcpListener,
) -> Result<CoordinatorHandle, CoordinatorStartError> {
    let pool = connect_service_pool(ServiceRole::Coordinator, &config.instance_id, lookup).await?;
    let redis = redis::Client::open(config.redis_url.as_str())
        .map_err(|e| CoordinatorStartError::Redis(e.to_string()))?;
    let addr =
        control_http::local_addr(&listener).map_err(|cause| CoordinatorStartError::Bind {
            addr: config.bind,
            cause,
        })?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let dispatcher = Dispatcher::new(
        pool.clone(),
        redis.clone(),
        OutboxTarget {
            table: OutboxTable::Caracal,
            producer: PRODUCER_COORDINATOR.to_owned(),
            worker: control_events::streams::consumer_name("coordinator", &config.instance_id),
        },
        config.outbox.clone(),
        OutboxKeys {
            streams: config.streams_hmac_key.clone(),
            audit: None,
        },
    );
    let (presence, presence_task) = control_events::presence::spawn(
        redis.clone(),
        "coordinator",
        &config.instance_id,
        shutdown_rx.clone(),
    );
    let serve_config = control_http::ServeConfig {
        max_connections: config.max_connections,
        ..control_http::ServeConfig::default()
    };
    let co = Arc::new(state::Coordinator {
        pool,
        keys: keys::ZoneKeys::new(config.sts_url.clone()),
        config,
        rates: moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(auth::RATE_WINDOW)
            .build(),
        metrics: metrics::Metrics::default(),
        redis,
        presence,
        outbox: dispatcher.handle(),
    });
    let outbox_task = dispatcher.spawn(shutdown_rx.clone());
    let sweeper_task = tokio::spawn(sweeper::run(Arc::clone(&co), shutdown_rx.clone()));
    let serve = tokio::spawn(control_http::serve(
        listener,
        serve_config,
        shutdown_rx,
        move |req| server::handle(Arc::clone(&co), req),
    ));
    tracing::info!(%addr, "coordinator listening");
    Ok(CoordinatorHandle::new(
        addr,
        shutdown,
        vec![serve, outbox_task, sweeper_task, presence_task],
    ))
}
