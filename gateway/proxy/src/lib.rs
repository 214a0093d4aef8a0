//! Role `gateway` (port 8081): the governed reverse proxy. Every request is decided
//! locally, in the order of authority-and-policy.md §4.2, from the snapshot and the live
//! authority view of `gateway-state`; then the upstream credential is injected and the
//! call proxied, with revocation re-checked while the response streams.
//!
//! What this crate owns: the listener and TLS (`server`), the phases (`pipeline`: admit,
//! check_authority_fresh, authenticate, resolve, authorize, prepare_upstream, forward,
//! finish), the single error-to-HTTP mapping (`error::rescue`), credential placement
//! (`pipeline::prepare`), the upstream guard (`guard`), header handling (`headers`), the
//! governed response body (`upstream`), Redis counters (`redis_ops`) and the operator
//! endpoints (`ops`).
//!
//! What it must never do: allow when a dependency it needs is down (stale revocation
//! state, Redis for single use or rate limits, the policy engine, a bound plugin: each is a
//! catalog 4xx/5xx); wait on Redis for audit; forward a caller's `Authorization`,
//! `X-Caracal-*` or `X-Forwarded-*`; log or return a secret, a token or a key.
//!
//! Start reading at `pipeline::Gateway::handle`.

mod audit;
mod config;
mod error;
mod guard;
mod headers;
mod mandate;
mod metrics;
mod ops;
mod pipeline;
mod redis_ops;
mod server;
mod upstream;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use control_store::{ServiceRole, pool::connect_service_pool};
use gateway_state::{Refresh, StateHandle, build::BuildConfig};
use tokio::{sync::watch, task::JoinHandle};

pub use config::{ConfigError, GatewayConfig, Limits, Lookup, Mode};

/// The gateway failed to start; `Display` is one line naming the cause.
#[derive(Debug, thiserror::Error)]
pub enum GatewayStartError {
    /// A setting is missing or malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The policy contract failed its start-up self check.
    #[error("policy self check failed: {0}")]
    PolicySelfCheck(String),
    /// Postgres settings are invalid.
    #[error(transparent)]
    Database(#[from] control_store::StoreError),
    /// Redis settings are invalid.
    #[error("REDIS_URL: {0}")]
    Redis(String),
    /// The audit emitter could not start.
    #[error("audit emitter: {0}")]
    Audit(String),
    /// The TLS files cannot be used.
    #[error("{0}")]
    Tls(String),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        cause: std::io::Error,
    },
}

/// A running gateway.
#[derive(Debug)]
pub struct GatewayHandle {
    /// The bound address.
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl GatewayHandle {
    /// Stops accepting, drains connections, flushes the audit queue.
    pub async fn stop(self) {
        let _sent = self.shutdown.send(true);
        for task in self.tasks {
            let _joined = task.await;
        }
    }
}

/// Starts the gateway on `config.bind`.
pub async fn start(
    config: GatewayConfig,
    lookup: Lookup<'_>,
) -> Result<GatewayHandle, GatewayStartError> {
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|cause| GatewayStartError::Bind {
            addr: config.bind,
            cause,
        })?;
    start_with_listener(config, lookup, listener).await
}

/// Starts the gateway on a bound listener: self check, TLS, pool, Redis, the audit
/// emitter, the first snapshot and authority poll, then serving. A replica whose first
/// build failed serves 503 until a build succeeds.
pub async fn start_with_listener(
    config: GatewayConfig,
    lookup: Lookup<'_>,
    listener: tokio::net::TcpListener,
) -> Result<GatewayHandle, GatewayStartError> {
    control_policy::self_check().map_err(|e| GatewayStartError::PolicySelfCheck(e.to_string()))?;
    if config.streams_hmac_keys.is_empty() {
        tracing::warn!(
            "STREAMS_HMAC_KEY is not set: stream messages are accepted unsigned (dev mode only)"
        );
    }
    let tls = match &config.tls {
        Some((cert, key)) => Some(server::tls_acceptor(cert, key).map_err(GatewayStartError::Tls)?),
        None => None,
    };
    let addr = listener
        .local_addr()
        .map_err(|cause| GatewayStartError::Bind {
            addr: config.bind,
            cause,
        })?;
    let pool = connect_service_pool(ServiceRole::Gateway, &config.instance_id, lookup).await?;
    let counters =
        redis_ops::Counters::redis(&config.redis_url).map_err(GatewayStartError::Redis)?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut audit_config =
        control_events::audit::AuditEmitterConfig::from_lookup("gateway", lookup)
            .map_err(|e| GatewayStartError::Audit(e.to_string()))?;
    audit_config.instance = config.instance_id.clone();
    let audit_client = redis::Client::open(config.audit_redis_url.as_str())
        .map_err(|e| GatewayStartError::Redis(format!("AUDIT_REDIS_URL: {e}")))?;
    let mut audit_shutdown = shutdown_rx.clone();
    let (audit, audit_task) =
        control_events::audit::AuditEmitter::spawn(audit_config, audit_client, async move {
            let _changed = audit_shutdown.changed().await;
        })
        .await;
    let policy = control_policy::PolicyConfig::with_eval_timeout_ms(
        u64::try_from(config.policy_eval_timeout.as_millis()).unwrap_or(20),
    )
    .map_err(|e| ConfigError(e.to_string()))?;
    let state = Arc::new(StateHandle::postgres(
        pool,
        BuildConfig {
            kek: config.kek.clone(),
            policy,
            key_grace: config.key_grace,
            control_audience: config.control_audience.clone(),
        },
        config.revocation_max_age,
    ));
    let redis_client = redis::Client::open(config.redis_url.as_str())
        .map_err(|e| GatewayStartError::Redis(e.to_string()))?;
    let template = control_events::fanout::FanoutConfig {
        stream: String::new(),
        group_base: String::new(),
        service: "gateway".to_owned(),
        instance: config.instance_id.clone(),
        keys: config.streams_hmac_keys.clone(),
    };
    let mut tasks = state
        .start(
            Some((redis_client, template)),
            Refresh {
                poll_interval: config.poll_interval,
                full_rebuild_interval: Duration::from_secs(30),
            },
            shutdown_rx.clone(),
        )
        .await;
    let gateway = Arc::new(pipeline::Gateway {
        state,
        counters,
        audit,
        client: upstream::UpstreamClient::new(Duration::from_secs(5), config.limits.idle_timeout),
        guard: guard::UpstreamGuard::new(config.upstream_host_allowlist.clone()),
        metrics: Arc::new(metrics::Metrics::default()),
        last_key_reload_ms: std::sync::atomic::AtomicI64::new(0),
        config,
    });
    tasks.push(tokio::spawn(server::serve(
        gateway,
        listener,
        tls,
        shutdown_rx,
    )));
    tasks.push(audit_task);
    tracing::info!(%addr, "gateway listening");
    Ok(GatewayHandle {
        addr,
        shutdown,
        tasks,
    })
}

/// Runs the gateway until `shutdown` resolves.
pub async fn run(
    config: GatewayConfig,
    lookup: Lookup<'_>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayStartError> {
    let handle = start(config, lookup).await?;
    shutdown.await;
    handle.stop().await;
    Ok(())
}
