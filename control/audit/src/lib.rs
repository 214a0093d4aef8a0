//! Caracal role `audit` (port 9090): the evidence store.
//!
//! Producers (the STS, the gateway, and the outboxes of the API and the Coordinator) put
//! signed events on `caracal.audit.events`. The ledger reads them under the shared group
//! `audit-ingestor` (`stream`), checks each entry (`entry`: fields, producer signature, the
//! strict event rules of `canonical`, the time window), chains each zone's events with
//! content hash, previous hash, sequence number, chain HMAC and ingest signature and inserts
//! them in one transaction under the zone's chain lock (`ingest`), and acknowledges only
//! after the commit. What cannot be stored goes to the dead-letter stream (`dlq`) first.
//!
//! Leader jobs (`leaders`), each under its advisory lock on a dedicated connection, keep the
//! monthly partitions ahead of time, drop partitions past retention (anchoring the chain),
//! sweep for tampering (`sweep`, with the checks of `verify`, shared with the offline
//! `caracal audit verify`) and export closed hours (`export`). The internal query endpoint
//! (`query`) answers the admin API's audit reads. `server` serves `/health`, `/ready`,
//! `/metrics` and the internal routes.
//!
//! It never logs event content, a key or a token.

pub mod canonical;
pub mod config;
pub mod dlq;
pub mod entry;
pub mod export;
pub mod ingest;
pub mod leaders;
pub mod metrics;
pub mod objects;
pub mod query;
pub mod server;
pub mod state;
pub mod stream;
pub mod sweep;
pub mod verify;

pub use config::{AuditConfig, ConfigError, Lookup};

use std::{net::SocketAddr, sync::Arc};

use control_store::{ServiceRole, pool::connect_service_pool};
use tokio::sync::watch;

/// The audit service failed to start; `Display` is one line naming the cause.
#[derive(Debug, thiserror::Error)]
pub enum AuditStartError {
    /// A setting is missing or malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Postgres cannot be reached.
    #[error(transparent)]
    Database(#[from] control_store::StoreError),
    /// Redis settings are invalid or Redis cannot be reached.
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

/// A running audit service; `stop` drains connections and stops every loop.
pub type AuditHandle = control_http::RoleHandle;

/// Starts the audit service on `config.bind`.
///
/// # Errors
///
/// [`AuditStartError`].
pub async fn start(
    config: AuditConfig,
    lookup: Lookup<'_>,
) -> Result<AuditHandle, AuditStartError> {
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|cause| AuditStartError::Bind {
            addr: config.bind,
            cause,
        })?;
    start_with_listener(config, lookup, listener).await
}

/// Starts the audit service on an already bound listener.
///
/// # Errors
///
/// [`AuditStartError`].
pub async fn start_with_listener(
    config: AuditConfig,
    lookup: Lookup<'_>,
    listener: tokio::net::TcpListener,
) -> Result<AuditHandle, AuditStartError> {
    let pool = connect_service_pool(ServiceRole::Audit, &config.instance_id, lookup).await?;
    let client = redis::Client::open(config.redis_url.as_str())
        .map_err(|e| AuditStartError::Redis(e.to_string()))?;
    let redis = redis::aio::ConnectionManager::new(client.clone())
        .await
        .map_err(|e| AuditStartError::Redis(e.to_string()))?;
    let addr = control_http::local_addr(&listener).map_err(|cause| AuditStartError::Bind {
        addr: config.bind,
        cause,
    })?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let metrics = Arc::new(metrics::Metrics::default());
    let stream_stats = Arc::new(stream::StreamStats::default());
    let ledger = ingest::Ledger {
        pool: pool.clone(),
        keys: config.keys.clone(),
        settings: config.ingest,
        retention: config.leaders.retention,
        metrics: Arc::clone(&metrics),
        lane: (0, 1),
    };
    let consumer = control_events::streams::consumer_name("audit", &config.instance_id);
    let mut tasks = Vec::new();
    for n in 0..config.ingest.workers {
        // Each loop is its own consumer, so a stuck loop's entries are claimable.
        tasks.push(stream::spawn_ingest(
            ingest::Ledger {
                lane: (n, config.ingest.workers),
                ..ledger.clone()
            },
            client.clone(),
            format!("{consumer}-{n}"),
            Arc::clone(&stream_stats),
            shutdown_rx.clone(),
        ));
    }
    tasks.push(stream::spawn_claims(
        ledger.clone(),
        client.clone(),
        consumer.clone(),
        shutdown_rx.clone(),
    ));
    tasks.push(stream::spawn_trim(
        client.clone(),
        config.ingest.trim_interval,
        Arc::clone(&stream_stats),
        shutdown_rx.clone(),
    ));
    tasks.push(leaders::spawn(
        leaders::LeaderContext {
            pool: pool.clone(),
            keys: config.keys.clone(),
            settings: config.leaders.clone(),
            metrics: Arc::clone(&metrics),
        },
        shutdown_rx.clone(),
    ));
    let (_presence, presence_task) = control_events::presence::spawn(
        client.clone(),
        "audit",
        &config.instance_id,
        shutdown_rx.clone(),
    );
    tasks.push(presence_task);
    let state = Arc::new(state::AuditState {
        config,
        pool,
        redis,
        metrics,
        stream: stream_stats,
    });
    tasks.push(tokio::spawn(control_http::serve(
        listener,
        control_http::ServeConfig::default(),
        shutdown_rx,
        move |req| server::handle(Arc::clone(&state), req),
    )));
    tracing::info!(%addr, "audit ledger listening");
    Ok(AuditHandle::new(addr, shutdown, tasks))
}
