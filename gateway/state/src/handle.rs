//! The swap handle: the current [`Snapshot`] behind `arc-swap`, rebuilt off the request
//! path, and the tasks that keep it and the authority view current (design decisions 4, 5).
//!
//! - Every replica reads the revocation and invalidation streams under its own groups
//!   (`gateway-<stream>:<instance>`). Groups are created before the first build, so nothing
//!   committed during it is missed.
//! - Revocation messages go to the [`AuthorityView`] at once; binding, key and policy
//!   invalidations wake the builder.
//! - A poll every `poll_interval` heals missed messages: the authority view's poll, then a
//!   rebuild when `gateway_binding_revision` moved, and a full rebuild every
//!   `full_rebuild_interval` (policy activations do not move the revision).
//! - A failed build keeps the previous snapshot; the failure is counted and logged.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use control_events::{
    fanout::{self, FanoutConfig, FanoutStats},
    streams,
};
use sqlx::PgPool;
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    authority::AuthorityView,
    build::{self, BuildConfig, BuildError},
    snapshot::Snapshot,
};

/// The streams every gateway replica reads, with their group base names: the first three
/// feed the authority view, the others wake the builder.
pub const GATEWAY_STREAMS: [(&str, &str); 6] = [
    (streams::SESSIONS_REVOKE, "gateway-revocation"),
    (streams::DELEGATIONS_INVALIDATE, "gateway-delegation"),
    (streams::AGENTS_LIFECYCLE, "gateway-lifecycle"),
    (streams::GATEWAY_BINDINGS_INVALIDATE, "gateway-bindings"),
    (streams::KEYS_INVALIDATE, "gateway-keys"),
    (streams::POLICY_INVALIDATE, "gateway-policy"),
];

/// How the handle refreshes.
#[derive(Debug, Clone, Copy)]
pub struct Refresh {
    /// Authority poll and revision check (default 5 s).
    pub poll_interval: Duration,
    /// Unconditional rebuild (default 30 s).
    pub full_rebuild_interval: Duration,
}

impl Default for Refresh {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(5),
            full_rebuild_interval: Duration::from_secs(30),
        }
    }
}

/// Build counters (metrics).
#[derive(Debug, Default)]
pub struct BuildStats {
    /// Successful builds.
    pub ok: AtomicU64,
    /// Failed builds (the previous snapshot stayed).
    pub failed: AtomicU64,
    /// Duration of the last successful build, in microseconds.
    pub last_build_us: AtomicU64,
    /// Unix ms of the last successful build.
    pub last_ok_ms: AtomicI64,
}

/// The current snapshot and the authority view.
pub struct StateHandle {
    snapshot: ArcSwap<Snapshot>,
    loaded: AtomicBool,
    view: Arc<AuthorityView>,
    pool: Option<PgPool>,
    config: Option<BuildConfig>,
    wake: tokio::sync::Notify,
    building: tokio::sync::Mutex<()>,
    /// Build counters.
    pub stats: BuildStats,
    /// Counters of the stream consumers, in [`GATEWAY_STREAMS`] order.
    pub consumers: Vec<Arc<FanoutStats>>,
}

impl std::fmt::Debug for StateHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateHandle")
            .field("loaded", &self.loaded.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl StateHandle {
    /// A handle that builds from Postgres (`pool` as `caracal_gateway`); nothing is loaded
    /// until [`StateHandle::rebuild_now`] succeeds.
    pub fn postgres(pool: PgPool, config: BuildConfig, max_age: Duration) -> Self {
        let consumers: Vec<Arc<FanoutStats>> = GATEWAY_STREAMS
            .iter()
            .map(|_| Arc::new(FanoutStats::default()))
            .collect();
        let revocation_consumers = consumers.iter().take(3).cloned().collect();
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            loaded: AtomicBool::new(false),
            view: Arc::new(AuthorityView::new(
                Some(pool.clone()),
                revocation_consumers,
                max_age,
            )),
            pool: Some(pool),
            config: Some(config),
            wake: tokio::sync::Notify::new(),
            building: tokio::sync::Mutex::new(()),
            stats: BuildStats::default(),
            consumers,
        }
    }

    /// A handle over a fixed snapshot (standalone mode, tests).
    pub fn fixed(snapshot: Snapshot, view: AuthorityView) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            loaded: AtomicBool::new(true),
            view: Arc::new(view),
            pool: None,
            config: None,
            wake: tokio::sync::Notify::new(),
            building: tokio::sync::Mutex::new(()),
            stats: BuildStats::default(),
            consumers: Vec::new(),
        }
    }

    /// The current snapshot; a request pins it once.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Replaces the snapshot (standalone reloads and tests).
    pub fn store(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
        self.loaded.store(true, Ordering::Release);
    }

    /// Whether a snapshot has been loaded (`/ready`: `snapshot_not_loaded`).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The live authority view.
    pub fn view(&self) -> &Arc<AuthorityView> {
        &self.view
    }

    /// Asks the builder task for a rebuild.
    pub fn request_rebuild(&self) {
        self.wake.notify_one();
    }

    /// Builds now and swaps the result in; on failure the previous snapshot stays.
    pub async fn rebuild_now(&self) -> Result<(), BuildError> {
        let (Some(pool), Some(config)) = (self.pool.as_ref(), self.config.as_ref()) else {
            return Ok(());
        };
        let _one_at_a_time = self.building.lock().await;
        let started = tokio::time::Instant::now();
        let previous = self.snapshot.load_full();
        let previous = self.is_loaded().then_some(previous.as_ref());
        match build::build(pool, config, previous).await {
            Ok(snapshot) => {
                self.store(snapshot);
                self.stats.ok.fetch_add(1, Ordering::Relaxed);
                self.stats.last_build_us.store(
                    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                self.stats
                    .last_ok_ms
                    .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "snapshot build failed; the previous snapshot stays");
                Err(error)
            }
        }
    }

    /// Creates the consumer groups (best effort), loads the first snapshot and polls the
    /// view once, then spawns the consumers, the poll and the builder. Returns their tasks.
    pub async fn start(
        self: &Arc<Self>,
        redis: Option<(redis::Client, FanoutConfig)>,
        refresh: Refresh,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        let mut configs = Vec::new();
        if let Some((client, template)) = &redis {
            let conn = tokio::time::timeout(
                Duration::from_secs(2),
                client.get_multiplexed_async_connection(),
            )
            .await;
            let mut conn = match conn {
                Ok(Ok(conn)) => Some(conn),
                _ => None,
            };
            for (stream, base) in GATEWAY_STREAMS {
                let config = FanoutConfig {
                    stream: stream.to_owned(),
                    group_base: base.to_owned(),
                    ..template.clone()
                };
                if let Some(conn) = conn.as_mut()
                    && let Err(error) = fanout::ensure_group(conn, &config).await
                {
                    tracing::warn!(%stream, %error, "cannot create the consumer group yet; the consumer retries");
                }
                configs.push(config);
            }
        }
        if let Err(error) = self.rebuild_now().await {
            tracing::warn!(%error, "initial snapshot build failed; retrying in the background");
        }
        if let Err(error) = self.view.poll().await {
            tracing::warn!(%error, "initial authority poll failed");
        }
        if let Some((client, _template)) = redis {
            for (config, stats) in configs.into_iter().zip(self.consumers.iter()) {
                let handler = self.handler(config.stream.clone());
                tasks.push(fanout::spawn(
                    client.clone(),
                    config,
                    handler,
                    Arc::clone(stats),
                    shutdown.clone(),
                ));
            }
        }
        tasks.push(tokio::spawn(
            Arc::clone(self).poll_loop(refresh, shutdown.clone()),
        ));
        tasks.push(tokio::spawn(Arc::clone(self).build_loop(refresh, shutdown)));
        tasks
    }

    fn handler(self: &Arc<Self>, stream: String) -> fanout::Handler {
        let handle = Arc::clone(self);
        Arc::new(move |fields: HashMap<String, String>| {
            let handle = Arc::clone(&handle);
            let stream = stream.clone();
            Box::pin(async move {
                match stream.as_str() {
                    streams::SESSIONS_REVOKE
                    | streams::DELEGATIONS_INVALIDATE
                    | streams::AGENTS_LIFECYCLE => handle.view.apply(&stream, &fields).await,
                    _ => handle.request_rebuild(),
                }
                Ok(())
            })
        })
    }

    async fn poll_loop(self: Arc<Self>, refresh: Refresh, mut shutdown: watch::Receiver<bool>) {
        let mut seen_revision = self.snapshot.load().revision;
        loop {
            tokio::select! {
                () = tokio::time::sleep(refresh.poll_interval) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(error) = self.view.poll().await {
                tracing::warn!(%error, "authority poll failed");
            }
            if let Some(pool) = self.pool.as_ref() {
                match build::current_revision(pool).await {
                    Ok(revision) if revision != seen_revision || !self.is_loaded() => {
                        seen_revision = revision;
                        self.request_rebuild();
                    }
                    Ok(_unchanged) => {}
                    Err(error) => tracing::warn!(%error, "binding revision poll failed"),
                }
            }
        }
    }

    async fn build_loop(self: Arc<Self>, refresh: Refresh, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(refresh.full_rebuild_interval) => {}
                _ = shutdown.changed() => return,
            }
            // A burst of invalidations collapses into one build.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _outcome = self.rebuild_now().await;
        }
    }
}
