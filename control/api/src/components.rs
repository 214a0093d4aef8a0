//! The API's plugin host: checking uploaded components against their WIT world, and running a
//! plugin's `configure` on a binding's configuration when an operator binds it.
//!
//! One [`PluginHost`] per API process, started without the pooling allocator (the API only
//! validates; it runs no requests). Compiling is expensive (Cranelift compiles the whole
//! component), so it runs on a blocking thread, at most [`MAX_CONCURRENT_COMPILES`] at once,
//! and its result is kept in a small cache by world and digest: an upload warms the cache for
//! the bindings that follow, and repeated `PUT`s of a resource's bindings never recompile.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gateway_plugin_host::{
    CompiledPlugin, HostConfig, HostConfigError, LoadError, PluginFailure, PluginHost, World,
};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Compiled plugins kept (by world and digest).
pub const MAX_COMPILED: u64 = 32;
/// How long a compiled plugin nobody asked for stays cached.
pub const COMPILED_IDLE: Duration = Duration::from_secs(3600);
/// Compilations that may run at once; more wait their turn.
pub const MAX_CONCURRENT_COMPILES: usize = 2;

/// The host, the compiled-plugin cache and the compile slots.
pub struct Components {
    host: PluginHost,
    compiled: moka::future::Cache<(World, [u8; 32]), Arc<CompiledPlugin>>,
    compiles: Semaphore,
}

impl std::fmt::Debug for Components {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Components")
            .field("host", &self.host)
            .field("compiled", &self.compiled.entry_count())
            .finish_non_exhaustive()
    }
}

impl Components {
    /// Starts the host (on-demand allocation, default limits). Must run inside a tokio runtime.
    pub fn start() -> Result<Self, HostConfigError> {
        let host = PluginHost::start(HostConfig {
            pooling: false,
            ..HostConfig::default()
        })?;
        Ok(Components {
            host,
            compiled: moka::future::Cache::builder()
                .max_capacity(MAX_COMPILED)
                .time_to_idle(COMPILED_IDLE)
                .build(),
            compiles: Semaphore::new(MAX_CONCURRENT_COMPILES),
        })
    }

    /// Compiles `bytes` against `world` (or finds them compiled): `Ok(Err(_))` when the bytes
    /// are not a component of that world, `Err(_)` when the compilation itself broke.
    pub async fn compile(
        &self,
        world: World,
        bytes: Bytes,
    ) -> Result<Result<Arc<CompiledPlugin>, LoadError>, ApiError> {
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if let Some(compiled) = self.compiled.get(&(world, digest)).await {
            return Ok(Ok(compiled));
        }
        let _slot = self
            .compiles
            .acquire()
            .await
            .map_err(|e| ApiError::Internal(format!("compile slots closed: {e}")))?;
        // Another request may have compiled the same bytes while this one waited.
        if let Some(compiled) = self.compiled.get(&(world, digest)).await {
            return Ok(Ok(compiled));
        }
        let host = self.host.clone();
        let outcome = tokio::task::spawn_blocking(move || host.compile(world, &bytes))
            .await
            .map_err(|e| ApiError::Internal(format!("component compilation task failed: {e}")))?;
        Ok(match outcome {
            Ok(compiled) => {
                let compiled = Arc::new(compiled);
                self.compiled
                    .insert((world, digest), Arc::clone(&compiled))
                    .await;
                Ok(compiled)
            }
            Err(refused) => Err(refused),
        })
    }

    /// The stored plugin with `digest` compiled against `world`: from the cache, or compiled
    /// from the bytes `load` reads (only called on a miss).
    pub async fn compiled(
        &self,
        world: World,
        digest: [u8; 32],
        load: impl AsyncFnOnce() -> Result<Vec<u8>, ApiError>,
    ) -> Result<Result<Arc<CompiledPlugin>, LoadError>, ApiError> {
        if let Some(compiled) = self.compiled.get(&(world, digest)).await {
            return Ok(Ok(compiled));
        }
        let bytes = load().await?;
        self.compile(world, Bytes::from(bytes)).await
    }

    /// Runs the plugin's `configure` with a binding's configuration text under the binding's
    /// memory limit (capped by the host's) and `configure`'s deadline floor, as the gateway
    /// does: what the plugin needs, or why it refuses.
    pub async fn configure(
        &self,
        plugin: &CompiledPlugin,
        config: &str,
        deadline: Duration,
        memory_bytes: u64,
    ) -> Result<(), PluginFailure> {
        let limits = self.host.limits(deadline, memory_bytes).for_configure();
        self.host
            .configure(plugin, config, limits)
            .await
            .map(|_needs| ())
    }
}
