//! Role `sts` (port 8080): the RFC 8693 token exchange of Caracal 1.0 (bootstrap,
//! delegated mint, federation, control keys), zone signing keys and their JWKS, and
//! approvals (holds, long poll, subject decisions).
//!
//! What this crate owns: the HTTP surface of the STS (`server`), the exchange flow
//! (`exchange`, one module per step group, in the order of authority-and-policy.md §3), zone
//! signing keys (`keys`), the per-zone policy bundles it evaluates with (`bundles`), and its
//! Redis state (`redis_ops`: mint limit, authentication-failure limiter, JTI registry).
//!
//! What it must never do: answer an exchange it could not audit; allow when a dependency
//! it needs is down (Redis, Postgres, the policy engine: each is a catalog 4xx/5xx); log or
//! return a secret, a token or a key; evaluate policy without the zone's pinned bundle.
//!
//! Start reading at `exchange::exchange`, then `server::token`.

mod approvals;
mod bundles;
mod config;
mod decision;
mod error;
mod exchange;
mod federation;
mod form;
mod keys;
mod metrics;
mod ops;
mod redis_ops;
mod respond;
mod server;
mod state;
mod sweeper;

use std::{net::SocketAddr, sync::Arc};

use control_store::{ServiceRole, pool::connect_service_pool};
use tokio::sync::watch;

pub use config::{ConfigError, Lookup, Mode, StsConfig};

/// The STS failed to start; `Display` is one line naming the cause.
#[derive(Debug, thiserror::Error)]
pub enum StsStartError {
    /// A setting is missing or malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The policy contract failed its start-up self check.
    #[error("policy self check failed: {0}")]
    PolicySelfCheck(String),
    /// Postgres cannot be reached.
    #[error(transparent)]
    Database(#[from] control_store::StoreError),
    /// Redis settings are invalid.
    #[error("REDIS_URL: {0}")]
    Redis(String),
    /// The audit emitter could not start.
    #[error("audit emitter: {0}")]
    Audit(String),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        cause: std::io::Error,
    },
}

/// A running STS; `stop` stops accepting, drains connections and flushes the audit queue.
pub type StsHandle = control_http::RoleHandle;

/// Starts the STS on `config.bind`.
pub async fn start(config: StsConfig, lookup: Lookup<'_>) -> Result<StsHandle, StsStartError> {
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|cause| StsStartError::Bind {
            addr: config.bind,
            cause,
        })?;
    start_with_listener(config, lookup, listener).await
}

/// Starts the STS on an already bound listener (tests bind port 0 first, so that
/// `ISSUER_URL` can name the real port): self check, pools, Redis, the audit emitter,
/// bundles, then serving.
pub async fn start_with_listener(
    config: StsConfig,
    lookup: Lookup<'_>,
    listener: tokio::net::TcpListener,
) -> Result<StsHandle, StsStartError> {
    control_policy::self_check().map_err(|e| StsStartError::PolicySelfCheck(e.to_string()))?;
    if config.streams_hmac_keys.is_empty() {
        tracing::warn!(
            "STREAMS_HMAC_KEY is not set: stream messages are accepted unsigned (dev mode only)"
        );
    }
    let pool = connect_service_pool(ServiceRole::Sts, &config.instance_id, lookup).await?;
    let redis = redis_ops::RedisState::new(&config.redis_url)
        .map_err(|e| StsStartError::Redis(e.to_string()))?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut audit_config = control_events::audit::AuditEmitterConfig::from_lookup("sts", lookup)
        .map_err(|e| StsStartError::Audit(e.to_string()))?;
    audit_config.instance = config.instance_id.clone();
    let redis_client = redis::Client::open(config.audit_redis_url.as_str())
        .map_err(|e| StsStartError::Redis(format!("AUDIT_REDIS_URL: {e}")))?;
    let mut audit_shutdown = shutdown_rx.clone();
    let (audit, audit_task) =
        control_events::audit::AuditEmitter::spawn(audit_config, redis_client, async move {
            let _changed = audit_shutdown.changed().await;
        })
        .await;
    let policy_config = control_policy::PolicyConfig::with_eval_timeout_ms(
        u64::try_from(config.policy_eval_timeout.as_millis()).unwrap_or(20),
    )
    .map_err(|e| ConfigError(e.to_string()))?;
    let presence_client = redis::Client::open(config.redis_url.as_str())
        .map_err(|e| StsStartError::Redis(e.to_string()))?;
    let (reporter, presence_task) = control_events::presence::spawn(
        presence_client,
        "sts",
        &config.instance_id,
        shutdown_rx.clone(),
    );
    let bundles = Arc::new(bundles::Bundles::new(pool.clone(), policy_config, reporter));
    // The outbox dispatcher of producer `sts` (storage §7.3): key changes and the binding
    // revisions their writes trigger. Built before the state, so the key store can wake it
    // after each commit; spawned with the other tasks below.
    let dispatcher = control_events::outbox::Dispatcher::new(
        pool.clone(),
        redis::Client::open(config.redis_url.as_str())
            .map_err(|e| StsStartError::Redis(e.to_string()))?,
        control_events::outbox::OutboxTarget {
            table: control_store::outbox::OutboxTable::Event,
            producer: control_store::outbox::PRODUCER_STS.to_owned(),
            worker: control_events::streams::consumer_name("sts", &config.instance_id),
        },
        config.outbox.clone(),
        control_events::outbox::OutboxKeys {
            streams: config.streams_hmac_keys.first().cloned(),
            audit: config.audit_hmac_key.clone(),
        },
    );
    let outbox = dispatcher.handle();
    let argon2_params = control_crypto::Argon2Params::from_lookup(lookup)
        .map_err(|e| ConfigError(e.to_string()))?;
    let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let consumers = [
        Arc::new(control_events::fanout::FanoutStats::default()),
        Arc::new(control_events::fanout::FanoutStats::default()),
    ];
    let state = Arc::new(state::Sts {
        consumers: consumers.clone(),
        keys: keys::ZoneKeys::new(
            pool.clone(),
            config.kek.clone(),
            config.key_grace,
            outbox.clone(),
        ),
        outbox,
        bundles: Arc::clone(&bundles),
        redis,
        audit,
        secret_cache: moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(std::time::Duration::from_secs(60))
            .build(),
        argon_permits: Arc::new(tokio::sync::Semaphore::new(cpus)),
        argon2_params,
        metrics: metrics::Metrics::default(),
        kek_ok: std::sync::atomic::AtomicBool::new(true),
        federation: federation::Federation::from_lookup(lookup)?,
        pool,
        config: config.clone(),
    });
    let kek_ok = state.check_kek().await.unwrap_or(false);
    state
        .kek_ok
        .store(kek_ok, std::sync::atomic::Ordering::Relaxed);
    if !kek_ok {
        tracing::error!(
            "zone_kek_mismatch: ZONE_KEK does not open the KEK canary; this replica stays unready"
        );
    }
    let addr = server::local_addr(&listener).map_err(|e| StsStartError::Bind {
        addr: config.bind,
        cause: std::io::Error::other(e.to_string()),
    })?;
    // Every replica reads every invalidation under its own group (design decision 5); the
    // groups exist before the first load, so nothing published during it is missed.
    let mut tasks = Vec::new();
    let client = redis::Client::open(config.redis_url.as_str())
        .map_err(|e| StsStartError::Redis(e.to_string()))?;
    for ((stream, base), stats) in [
        (control_events::streams::POLICY_INVALIDATE, "sts-policy"),
        (control_events::streams::KEYS_INVALIDATE, "sts-keys"),
    ]
    .into_iter()
    .zip(consumers)
    {
        let fanout = control_events::fanout::FanoutConfig {
            stream: stream.to_owned(),
            group_base: base.to_owned(),
            service: "sts".to_owned(),
            instance: config.instance_id.clone(),
            keys: config.streams_hmac_keys.clone(),
        };
        if let Ok(Ok(mut conn)) = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
            && let Err(error) = control_events::fanout::ensure_group(&mut conn, &fanout).await
        {
            tracing::warn!(%stream, %error, "cannot create the consumer group yet; the consumer retries");
        }
        tasks.push(control_events::fanout::spawn(
            client.clone(),
            fanout,
            invalidation_handler(stream, Arc::clone(&state)),
            stats,
            shutdown_rx.clone(),
        ));
    }
    // Every bound zone is loaded before the first request is served; a failure here only
    // logs: zones then load on first sight and the poll retries.
    if let Err(error) = bundles.refresh_all().await {
        tracing::warn!(%error, "initial policy load failed; zones load on first use");
    }
    let serve = tokio::spawn(server::serve(
        Arc::clone(&state),
        listener,
        shutdown_rx.clone(),
    ));
    let sweep = tokio::spawn(sweeper::run(
        Arc::clone(&state),
        config.sweep_interval,
        shutdown_rx.clone(),
    ));
    let outbox_task = dispatcher.spawn(shutdown_rx.clone());
    let poll = tokio::spawn(bundles.poll(config.policy_poll, shutdown_rx));
    tracing::info!(%addr, "sts listening");
    tasks.extend([serve, poll, sweep, outbox_task, audit_task, presence_task]);
    Ok(StsHandle::new(addr, shutdown, tasks))
}

/// Applies one invalidation message: messages are hints, so each handler re-reads Postgres
/// (or drops a cache) for the named zone.
fn invalidation_handler(
    stream: &'static str,
    state: Arc<state::Sts>,
) -> control_events::fanout::Handler {
    Arc::new(move |fields| {
        let state = Arc::clone(&state);
        Box::pin(async move {
            let Some(zone) = fields
                .get("zone_id")
                .and_then(|z| control_model::ZoneId::parse(z).ok())
            else {
                return Ok(());
            };
            if stream == control_events::streams::POLICY_INVALIDATE {
                state
                    .bundles
                    .refresh_zone(&zone)
                    .await
                    .map_err(|e| e.to_string())
            } else {
                state.keys.invalidate(zone.as_str()).await;
                Ok(())
            }
        })
    })
}

/// Entry points for the fuzz targets in `control/sts/fuzz`; not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    /// Parses a token-request body; must never panic, whatever the bytes.
    pub fn parse_token_form(body: &[u8]) -> bool {
        crate::form::parse(body).is_ok()
    }
}
