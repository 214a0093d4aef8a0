//! Role `gateway` (port 8081): the governed reverse proxy. Every request is decided
//! locally, in the order of authority-and-policy.md §4.2, from the snapshot and the live
//! authority view of `gateway-state`; then the upstream credential is injected and the
//! call proxied, with revocation re-checked while the response streams.
//!
//! What this crate owns: the listener and TLS (`server`), request framing checked on the
//! wire below hyper (`framing`), the phases (`pipeline`: admit,
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
//! Start reading at `pipeline::Gateway::handle`. [`start`] builds the snapshot from
//! Postgres; [`start_standalone`] (the sidecar, `caracal gateway --config FILE`) builds it from
//! a file through `gateway_state::standalone` and runs the same pipeline.

mod audit;
mod config;
mod error;
mod framing;
mod guard;
mod headers;
mod mandate;
mod metrics;
mod oauth;
mod ops;
mod pipeline;
mod redis_ops;
mod server;
mod upstream;

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use control_events::audit::AuditEmitter;
use control_store::{ServiceRole, pool::connect_service_pool};
use gateway_plugin_host::PluginHost;
use gateway_state::{
    AuthorityView, Refresh, StateHandle,
    build::BuildConfig,
    standalone::{self, LoadSettings, Standalone, StandaloneError},
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tokio_rustls::TlsAcceptor;

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
    /// The standalone configuration file cannot be used.
    #[error(transparent)]
    Standalone(#[from] StandaloneError),
    /// The WebAssembly plugin host could not start.
    #[error(transparent)]
    Plugins(#[from] gateway_plugin_host::HostConfigError),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        cause: std::io::Error,
    },
}

/// A running gateway; `stop` stops accepting, drains connections and flushes the audit queue.
pub type GatewayHandle = control_http::RoleHandle;

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
    let (tls, addr) = open_listener(&config, &listener, true)?;
    let pool = connect_service_pool(ServiceRole::Gateway, &config.instance_id, lookup).await?;
    let counters =
        redis_ops::Counters::redis(&config.redis_url).map_err(GatewayStartError::Redis)?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (audit, audit_task) = spawn_audit(
        &config,
        lookup,
        Some(config.audit_redis_url.as_str()),
        None,
        &shutdown_rx,
    )
    .await?;
    let policy = policy_config(&config)?;
    let plugins = PluginHost::start(config.plugins.clone())?;
    // Heartbeats into `caracal:instances:gateway` and policy load reports, which the admin
    // API turns into an activation's `propagation_status`.
    let presence_client = redis::Client::open(config.redis_url.as_str())
        .map_err(|e| GatewayStartError::Redis(e.to_string()))?;
    let (reporter, presence_task) = control_events::presence::spawn(
        presence_client,
        "gateway",
        &config.instance_id,
        shutdown_rx.clone(),
    );
    let state = Arc::new(StateHandle::postgres(
        pool,
        BuildConfig {
            kek: config.kek.clone(),
            policy,
            key_grace: config.key_grace,
            control_audience: config.control_audience.clone(),
            reporter: Some(reporter),
            plugins: Some(plugins.clone()),
        },
        config.revocation_max_age,
    ));
    let redis_client = redis::Client::open(config.redis_url.as_str())
        .map_err(|e| GatewayStartError::Redis(e.to_string()))?;
    let template = fanout_template(&config);
    let tasks = state
        .start(
            Some((redis_client, template)),
            Refresh {
                poll_interval: config.poll_interval,
                full_rebuild_interval: Duration::from_secs(30),
            },
            shutdown_rx.clone(),
        )
        .await;
    serve(Serving {
        config,
        plugins,
        state,
        counters,
        audit,
        standalone: None,
        listener,
        tls,
        addr,
        shutdown,
        shutdown_rx,
        tasks,
        trailing: vec![audit_task, presence_task],
    })
}

/// Starts the standalone sidecar (`caracal gateway --config FILE`): the same pipeline over
/// a snapshot built from `file`, without Postgres. The file wins over the environment for
/// `listen`, `issuer`, `redis_url` and `audit_replay_dir`; every other setting (limits,
/// timeouts, TLS, `METRICS_BEARER`, `AUDIT_HMAC_KEY`, ...) is read through `lookup` as in
/// the Postgres mode, and `ZONE_KEK` is not required.
///
/// Redis is used only when the file sets `redis_url` or `REDIS_URL` is set: then `jti`
/// and rate limits are shared and the revocation streams set the authority view's marks.
/// Without it they are kept in this process, there is no revocation feed, audit events go
/// to the replay directory only, and one warning says so at start.
pub async fn start_standalone(
    file: &Path,
    lookup: Lookup<'_>,
) -> Result<GatewayHandle, GatewayStartError> {
    let (config, standalone, redis_url) = load_standalone(file, lookup)?;
    let listener =
        TcpListener::bind(config.bind)
            .await
            .map_err(|cause| GatewayStartError::Bind {
                addr: config.bind,
                cause,
            })?;
    let (tls, addr) = open_listener(&config, &listener, redis_url.is_some())?;
    let counters = match &redis_url {
        Some(url) => redis_ops::Counters::redis(url).map_err(GatewayStartError::Redis)?,
        None => redis_ops::Counters::local(),
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (audit, audit_task) = spawn_audit(
        &config,
        lookup,
        redis_url.as_ref().map(|_| config.audit_redis_url.as_str()),
        standalone.audit_replay_dir(),
        &shutdown_rx,
    )
    .await?;
    let plugins = PluginHost::start(config.plugins.clone())?;
    let mut standalone = standalone;
    standalone.load_plugins(&plugins).await?;
    let standalone = Arc::new(standalone);
    if standalone.has_jwks_urls() && standalone.refresh_keys().await > 0 {
        tracing::error!(
            "a zone's jwks_url could not be fetched at start; its mandates are refused until a \
             fetch succeeds (on an unknown kid at most every 30 s, and every 5 min)"
        );
    }
    let stats = match redis_url {
        Some(_) => standalone::revocation_stats(),
        None => Vec::new(),
    };
    let view = AuthorityView::new(None, stats.clone(), config.revocation_max_age);
    let state = Arc::new(StateHandle::fixed(standalone.snapshot(), view));
    let mut tasks = match &redis_url {
        Some(url) => {
            let client = redis::Client::open(url.as_str())
                .map_err(|e| GatewayStartError::Redis(e.to_string()))?;
            standalone::spawn_revocation_feed(
                Arc::clone(state.view()),
                &stats,
                client,
                fanout_template(&config),
                shutdown_rx.clone(),
            )
            .await
        }
        None => {
            tracing::warn!(
                "standalone without Redis: jti single use and rate limits are counted in this \
                 process only, there is no revocation feed, and audit events go to the replay \
                 directory only"
            );
            vec![standalone::spawn_freshness(
                Arc::clone(state.view()),
                shutdown_rx.clone(),
            )]
        }
    };
    if standalone.has_jwks_urls() {
        tasks.push(standalone::spawn_key_refresh(
            Arc::clone(&standalone),
            Arc::clone(&state),
            shutdown_rx.clone(),
        ));
    }
    let snapshot = state.snapshot();
    tracing::info!(
        file = %standalone.file().display(),
        zones = snapshot.zones.len(),
        bindings = snapshot.binding_count(),
        redis = redis_url.is_some(),
        "standalone configuration loaded"
    );
    serve(Serving {
        config,
        plugins,
        state,
        counters,
        audit,
        standalone: Some(standalone),
        listener,
        tls,
        addr,
        shutdown,
        shutdown_rx,
        tasks,
        trailing: vec![audit_task],
    })
}

/// Runs the standalone sidecar until `shutdown` resolves.
pub async fn run_standalone(
    file: &Path,
    lookup: Lookup<'_>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayStartError> {
    let handle = start_standalone(file, lookup).await?;
    shutdown.await;
    handle.stop().await;
    Ok(())
}

/// The gateway settings of a standalone start and the loaded file: the environment's
/// settings, then the file's `listen`, `issuer` and `redis_url` over them. Returns the Redis
/// URL when there is one (the file's, else an explicit `REDIS_URL`).
fn load_standalone(
    file: &Path,
    lookup: Lookup<'_>,
) -> Result<(GatewayConfig, Standalone, Option<String>), GatewayStartError> {
    // Standalone mode opens nothing sealed: a throwaway key satisfies the shared parser
    // when no ZONE_KEK is configured (a configured one is still validated).
    let throwaway = hex::encode(rand::random::<[u8; 32]>());
    let kek_configured = lookup("ZONE_KEK").is_some() || lookup("ZONE_KEK_FILE").is_some();
    let with_kek = |name: &str| match name {
        "ZONE_KEK" if !kek_configured => Some(throwaway.clone()),
        _ => lookup(name),
    };
    let mut config = GatewayConfig::from_lookup(&with_kek)?;
    let loaded = Standalone::load(
        file,
        lookup,
        &LoadSettings {
            policy: policy_config(&config)?,
            control_audience: config.control_audience.clone(),
        },
    )?;
    if let Some(listen) = loaded.listen() {
        config.bind = listen;
    }
    match (loaded.issuer(), lookup("ISSUER_URL")) {
        (Some(issuer), _) => issuer.clone_into(&mut config.issuer_url),
        (None, Some(_)) => {}
        (None, None) => {
            return Err(StandaloneError {
                file: file.display().to_string(),
                detail: "issuer: is required (or set ISSUER_URL)".to_owned(),
            }
            .into());
        }
    }
    let redis_url = loaded
        .redis_url()
        .map(str::to_owned)
        .or_else(|| lookup("REDIS_URL"));
    if let Some(url) = &redis_url {
        config.redis_url.clone_from(url);
        config.audit_redis_url = lookup("AUDIT_REDIS_URL").unwrap_or_else(|| url.clone());
    }
    Ok((config, loaded, redis_url))
}

/// What both modes share before their state is built: the policy self check, the TLS
/// acceptor and the bound address. `streams`: stream messages will be read (the unsigned
/// warning applies).
fn open_listener(
    config: &GatewayConfig,
    listener: &TcpListener,
    streams: bool,
) -> Result<(Option<TlsAcceptor>, SocketAddr), GatewayStartError> {
    control_policy::self_check().map_err(|e| GatewayStartError::PolicySelfCheck(e.to_string()))?;
    if streams && config.streams_hmac_keys.is_empty() {
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
    Ok((tls, addr))
}

/// Bundle build settings from `CARACAL_POLICY_EVAL_TIMEOUT_MS`.
fn policy_config(config: &GatewayConfig) -> Result<control_policy::PolicyConfig, ConfigError> {
    control_policy::PolicyConfig::with_eval_timeout_ms(
        u64::try_from(config.policy_eval_timeout.as_millis()).unwrap_or(20),
    )
    .map_err(|e| ConfigError(e.to_string()))
}

/// The common part of the stream consumers' settings.
fn fanout_template(config: &GatewayConfig) -> control_events::fanout::FanoutConfig {
    control_events::fanout::FanoutConfig {
        stream: String::new(),
        group_base: String::new(),
        service: "gateway".to_owned(),
        instance: config.instance_id.clone(),
        keys: config.streams_hmac_keys.clone(),
    }
}

/// The audit emitter. `redis_url: None` (standalone without Redis): the emitter is given a
/// client that can never connect, so every event goes to the replay directory (it spills
/// whenever Redis is unreachable). `replay_dir` overrides `AUDIT_REPLAY_DIR`.
async fn spawn_audit(
    config: &GatewayConfig,
    lookup: Lookup<'_>,
    redis_url: Option<&str>,
    replay_dir: Option<&Path>,
    shutdown_rx: &watch::Receiver<bool>,
) -> Result<(AuditEmitter, JoinHandle<()>), GatewayStartError> {
    /// A path below a character device cannot exist, so this socket never answers.
    const NO_REDIS: &str = "redis+unix:///dev/null/caracal-standalone-without-redis";
    let mut audit_config =
        control_events::audit::AuditEmitterConfig::from_lookup("gateway", lookup)
            .map_err(|e| GatewayStartError::Audit(e.to_string()))?;
    audit_config.instance = config.instance_id.clone();
    if let Some(dir) = replay_dir {
        audit_config.replay_dir = dir.to_path_buf();
    }
    let audit_client = redis::Client::open(redis_url.unwrap_or(NO_REDIS))
        .map_err(|e| GatewayStartError::Redis(format!("AUDIT_REDIS_URL: {e}")))?;
    let mut audit_shutdown = shutdown_rx.clone();
    Ok(AuditEmitter::spawn(audit_config, audit_client, async move {
        let _changed = audit_shutdown.changed().await;
    })
    .await)
}

/// What both modes hand to the listener once their state is built.
struct Serving {
    config: GatewayConfig,
    plugins: PluginHost,
    state: Arc<StateHandle>,
    counters: redis_ops::Counters,
    audit: AuditEmitter,
    standalone: Option<Arc<Standalone>>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    shutdown_rx: watch::Receiver<bool>,
    /// Tasks that stop at shutdown (state upkeep, consumers).
    tasks: Vec<JoinHandle<()>>,
    /// Tasks awaited after the server drained (the audit flush, presence).
    trailing: Vec<JoinHandle<()>>,
}

/// Builds the role's shared state and serves.
fn serve(serving: Serving) -> Result<GatewayHandle, GatewayStartError> {
    let Serving {
        config,
        plugins,
        state,
        counters,
        audit,
        standalone,
        listener,
        tls,
        addr,
        shutdown,
        shutdown_rx,
        mut tasks,
        trailing,
    } = serving;
    let roots = upstream::trust_roots(config.upstream_ca_file.as_deref())
        .map_err(GatewayStartError::Tls)?;
    let oauth = Arc::new(oauth::OAuthTokens::new(
        counters.clone(),
        config.private_egress_hosts.clone(),
        roots.clone(),
        config.max_grant_ttl,
    ));
    let gateway = Arc::new(pipeline::Gateway {
        state,
        counters,
        audit,
        client: upstream::UpstreamClient::new(
            Duration::from_secs(5),
            config.limits.idle_timeout,
            roots,
        ),
        guard: guard::UpstreamGuard::new(config.upstream_host_allowlist.clone()),
        oauth,
        standalone,
        metrics: Arc::new(metrics::Metrics::default()),
        plugins,
        last_key_reload_ms: std::sync::atomic::AtomicI64::new(0),
        config,
    });
    tasks.push(tokio::spawn(server::serve(
        gateway,
        listener,
        tls,
        shutdown_rx,
    )));
    tasks.extend(trailing);
    tracing::info!(%addr, "gateway listening");
    Ok(GatewayHandle::new(addr, shutdown, tasks))
}

/// Entry points for the fuzz target in `gateway/proxy/fuzz`; not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    /// Feeds `data` through the request-framing guard in small reads (the first byte picks
    /// the read sizes). `Err` names a broken property: the reader got bytes that were not
    /// sent, bytes were held back without a refusal, or the answer depends on the split.
    pub fn framing(data: &[u8]) -> Result<(), String> {
        crate::framing::exercise(data)
    }

    /// Feeds `data` to every parser of caller-controlled text. Must never panic.
    pub fn exercise(data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        let _peeked = crate::mandate::peek(&text);
        let _traversal = crate::headers::path_traversal(&text);
        if let Ok(value) = http::HeaderValue::from_bytes(data) {
            let _trace = crate::headers::traceparent(Some(&value));
            let mut headers = http::HeaderMap::new();
            headers.insert("baggage", value.clone());
            headers.insert(http::header::CONNECTION, value.clone());
            crate::headers::sanitize_request(&mut headers);
            let mut response = http::HeaderMap::new();
            response.insert(http::header::LOCATION, value);
            crate::headers::filter_response(&mut response);
        }
        if let Ok(upstream) = url::Url::parse("http://127.0.0.1:9000/base?k=v") {
            let (path, query) = text.split_once('?').unwrap_or((&text, ""));
            let _uri = crate::headers::outbound_uri(
                &upstream,
                path,
                Some(query),
                Some("k"),
                Some(("api_key", "x")),
            );
        }
    }
}
