//! The engine of a process: configuration, the pooling probe, the linkers of both worlds, the
//! epoch ticker and compilation.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::{
    Authorizer, AuthorizerPre, CredentialInjector, CredentialInjectorPre, PluginPre,
};
use crate::call::CallState;
use crate::{CallLimits, CompiledPlugin, LoadError, World};

/// How the host is sized. Every field has a default that suits one gateway replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// Plugin calls that may run at once (the size of the instance pool and of the semaphore
    /// in front of it). Default 64.
    pub max_concurrency: u32,
    /// The largest memory limit a binding may ask for; bindings asking more are capped to it.
    /// Also the size of a memory slot in the pool. Default 64 MiB.
    pub max_memory_bytes: u64,
    /// The longest deadline a binding may ask for; longer ones are capped. Default 1 s (the
    /// largest `deadline_ms` the store accepts).
    pub max_deadline: Duration,
    /// How often the epoch advances: the granularity of deadlines and of the yields of a
    /// running guest. Default 1 ms.
    pub epoch_tick: Duration,
    /// Try the pooling allocator first (default). `false` uses on-demand allocation, which is
    /// what a process that only validates components (the admin API) wants.
    pub pooling: bool,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            max_concurrency: 64,
            max_memory_bytes: 64 * 1024 * 1024,
            max_deadline: Duration::from_secs(1),
            epoch_tick: Duration::from_millis(1),
            pooling: true,
        }
    }
}

/// A host configuration the engine refused.
#[derive(Debug, thiserror::Error)]
pub enum HostConfigError {
    /// A value is out of range.
    #[error("plugin host: {0}")]
    Invalid(&'static str),
    /// wasmtime refused the configuration.
    #[error("plugin host: the WebAssembly engine could not start: {0}")]
    Engine(String),
}

/// The plugin host of a process: one engine, its linkers, the call semaphore. Cloning is
/// cheap and shares everything.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    authorizer_linker: Linker<CallState>,
    injector_linker: Linker<CallState>,
    permits: Semaphore,
    config: HostConfig,
    pooling: bool,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("config", &self.inner.config)
            .field("pooling", &self.inner.pooling)
            .finish_non_exhaustive()
    }
}

impl PluginHost {
    /// Builds the engine and starts the epoch ticker (a thread that ends when the last clone
    /// of the host, and of every compiled plugin, is gone).
    ///
    /// With `pooling`, the pooling allocator is tried first; when the address space cannot hold
    /// the pool (a `ulimit -v`, strict overcommit), the host says so in the log and falls back
    /// to on-demand allocation, which is slower to instantiate but otherwise the same.
    pub fn start(config: HostConfig) -> Result<Self, HostConfigError> {
        check(&config)?;
        let (engine, pooling) = if config.pooling {
            match Engine::new(&engine_config(&config, true)) {
                Ok(engine) => (engine, true),
                Err(error) => {
                    tracing::warn!(
                        error = %first_line(&error),
                        "plugin host: the pooling allocator could not reserve its address space; \
                         using on-demand allocation"
                    );
                    (new_engine(&config, false)?, false)
                }
            }
        } else {
            (new_engine(&config, false)?, false)
        };
        let authorizer_linker = authorizer_linker(&engine)?;
        let injector_linker = injector_linker(&engine)?;
        // The ticker is an OS thread, not a task: a guest spinning on a runtime's only worker
        // must still see the epoch advance, or it would never reach its deadline.
        let weak = engine.weak();
        let tick = config.epoch_tick;
        std::thread::Builder::new()
            .name("plugin-epoch".to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(tick);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| HostConfigError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        let permits = Semaphore::new(config.max_concurrency as usize);
        Ok(PluginHost {
            inner: Arc::new(Inner {
                engine,
                authorizer_linker,
                injector_linker,
                permits,
                config,
                pooling,
            }),
        })
    }

    /// Whether the pooling allocator is in use (`false` after the fallback).
    pub fn pooling(&self) -> bool {
        self.inner.pooling
    }

    /// The configuration the host runs with.
    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    /// Caps a binding's limits to the host's.
    pub fn limits(&self, deadline: Duration, memory_bytes: u64) -> CallLimits {
        CallLimits {
            deadline: deadline.min(self.inner.config.max_deadline),
            memory_bytes: memory_bytes.min(self.inner.config.max_memory_bytes),
        }
    }

    /// Compiles a component and links it against `world`: the component must be a component
    /// (not a core module), import nothing the host does not provide, and export the world's
    /// functions with their exact types.
    ///
    /// This is expensive (Cranelift compiles the whole component): call it when a snapshot is
    /// built or a component is uploaded, on a blocking thread, never on the request path.
    pub fn compile(&self, world: World, bytes: &[u8]) -> Result<CompiledPlugin, LoadError> {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if !is_component(bytes) {
            return Err(LoadError::NotAComponent(
                "the bytes do not start with the header of a WebAssembly component".to_owned(),
            ));
        }
        let component = Component::new(&self.inner.engine, bytes)
            .map_err(|e| LoadError::NotAComponent(first_line(&e)))?;
        let wrong = |e: wasmtime::Error| LoadError::WrongWorld {
            world,
            detail: first_line(&e),
        };
        let pre = match world {
            World::Authorizer => {
                let pre = self
                    .inner
                    .authorizer_linker
                    .instantiate_pre(&component)
                    .map_err(wrong)?;
                PluginPre::Authorizer(AuthorizerPre::new(pre).map_err(wrong)?)
            }
            World::CredentialInjector => {
                let pre = self
                    .inner
                    .injector_linker
                    .instantiate_pre(&component)
                    .map_err(wrong)?;
                PluginPre::Injector(CredentialInjectorPre::new(pre).map_err(wrong)?)
            }
        };
        Ok(CompiledPlugin { digest, world, pre })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub(crate) fn permits(&self) -> &Semaphore {
        &self.inner.permits
    }
}

fn check(config: &HostConfig) -> Result<(), HostConfigError> {
    if config.max_concurrency == 0 || config.max_concurrency > 10_000 {
        return Err(HostConfigError::Invalid(
            "max concurrency must be between 1 and 10000",
        ));
    }
    if config.max_memory_bytes < 64 * 1024 || config.max_memory_bytes > 4 * 1024 * 1024 * 1024 {
        return Err(HostConfigError::Invalid(
            "max memory must be between 64 KiB and 4 GiB",
        ));
    }
    if config.max_deadline.is_zero() {
        return Err(HostConfigError::Invalid("max deadline must be positive"));
    }
    if config.epoch_tick.is_zero() || config.epoch_tick > Duration::from_millis(100) {
        return Err(HostConfigError::Invalid(
            "epoch tick must be between 1 ns and 100 ms",
        ));
    }
    Ok(())
}

fn new_engine(config: &HostConfig, pooling: bool) -> Result<Engine, HostConfigError> {
    Engine::new(&engine_config(config, pooling))
        .map_err(|e| HostConfigError::Engine(first_line(&e)))
}

/// Bytes of each freed table slot kept resident (see [`engine_config`]).
const TABLE_KEEP_RESIDENT: usize = 16 * 1024;

fn engine_config(host: &HostConfig, pooling: bool) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.max_wasm_stack(512 * 1024);
    config.async_stack_size(2 * 1024 * 1024);
    if pooling {
        let slots = host.max_concurrency;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(slots)
            // A component built for wasm32-wasip2 holds a handful of core instances (the
            // program, the WASI adapter and its shims) and one or two memories.
            .max_core_instances_per_component(32)
            .total_core_instances(slots.saturating_mul(16))
            .max_memories_per_component(4)
            .total_memories(slots.saturating_mul(4))
            .max_tables_per_component(8)
            .total_tables(slots.saturating_mul(8))
            .total_stacks(slots)
            .max_memory_size(usize::try_from(host.max_memory_bytes).unwrap_or(usize::MAX))
            // Freed memory slots are reset (madvise) in batches: one system call and one TLB
            // shootdown per batch instead of per call. Measured in bench/benches/plugins.rs:
            // about 29 → 24 µs per call; keeping memory resident (memset) was slower.
            .decommit_batch_size(usize::try_from(slots.min(32)).unwrap_or(1))
            // A freed table slot is reset in place (memset) up to this size instead of
            // decommitted, so the next call's lazy function-reference initialisation does not
            // fault its pages back in. A wasip2 component's tables are a few KiB. Measured in
            // bench/benches/plugins.rs on 2026-12-04 (criterion medians, two alternated
            // runs): 21.3/21.0 → 16.5/16.5 µs a call for the allow authorizer, 20.2/20.1 →
            // 19.0/19.0 µs for the echo injector; keeping linear memory resident the same way
            // was slower (a 256 KiB reset: 29.7 µs).
            .table_keep_resident(TABLE_KEEP_RESIDENT);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

fn authorizer_linker(engine: &Engine) -> Result<Linker<CallState>, HostConfigError> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| HostConfigError::Engine(first_line(&e)))?;
    Authorizer::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |state| state)
        .map_err(|e| HostConfigError::Engine(first_line(&e)))?;
    Ok(linker)
}

fn injector_linker(engine: &Engine) -> Result<Linker<CallState>, HostConfigError> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| HostConfigError::Engine(first_line(&e)))?;
    CredentialInjector::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |state| state)
        .map_err(|e| HostConfigError::Engine(first_line(&e)))?;
    Ok(linker)
}

/// `\0asm` followed by the component layer's version bytes.
fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[0..4] == *b"\0asm" && bytes[6..8] == [0x01, 0x00]
}

/// The first line of an error's display: enough to name the problem without a cause chain.
pub(crate) fn first_line(error: &wasmtime::Error) -> String {
    let text = error.to_string();
    crate::truncate(
        text.lines().next().unwrap_or_default().to_owned(),
        crate::MAX_DETAIL_BYTES,
    )
}
