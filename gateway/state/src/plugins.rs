//! The plugin bindings of a snapshot: components compiled once per digest (reused from the
//! previous snapshot), each binding configured once per (digest, config, limits).
//!
//! A binding whose plugin cannot be used (archived, missing, not a component of its world, a
//! config the plugin refuses, no plugin host) is kept as [`PluginState::Failed`]: requests to
//! its resource fail closed with 503 `plugin_failed`, they never skip the plugin.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gateway_plugin_host::{CallLimits, CompiledPlugin, Needs, PluginHost, World};

use crate::snapshot::Snapshot;

/// Where a plugin runs in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginHook {
    /// Step 25: may deny.
    Authorizer,
    /// Step 31: attaches the credential.
    Injector,
}

impl PluginHook {
    /// Parses `resource_plugin_bindings.hook`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "authorizer" => Some(PluginHook::Authorizer),
            "injector" => Some(PluginHook::Injector),
            _ => None,
        }
    }

    /// The world a plugin bound at this hook implements.
    pub fn world(self) -> World {
        match self {
            PluginHook::Authorizer => World::Authorizer,
            PluginHook::Injector => World::CredentialInjector,
        }
    }

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginHook::Authorizer => "authorizer",
            PluginHook::Injector => "injector",
        }
    }
}

/// How an injector relates to the built-in credential placement (authority §7.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectMode {
    /// The built-in placement runs first; the plugin may add headers.
    Augment,
    /// The built-in placement is skipped; the plugin places the credential.
    Replace,
}

/// A plugin bound to a resource.
#[derive(Debug, Clone)]
pub struct PluginRef {
    /// `gateway_plugins.id` (the standalone file's plugin name).
    pub plugin_id: String,
    /// Plugin name (audit and error descriptions).
    pub name: String,
    /// Where it runs.
    pub hook: PluginHook,
    /// Injectors only; `Augment` for authorizers.
    pub mode: InjectMode,
    /// SHA-256 of the component.
    pub digest: [u8; 32],
    /// The per-binding configuration (JSON object text).
    pub config: Arc<str>,
    /// Deadline and memory limit of each call (capped by the host).
    pub limits: CallLimits,
    /// Ready to call, or why it cannot be.
    pub state: PluginState,
}

impl PluginRef {
    /// Whether the plugin asked for the request body's digest.
    pub fn needs_body_sha256(&self) -> bool {
        matches!(&self.state, PluginState::Ready { needs, .. } if needs.body_sha256)
    }
}

/// A bound plugin's readiness.
#[derive(Debug, Clone)]
pub enum PluginState {
    /// Compiled, linked and configured.
    Ready {
        /// The compiled component (shared by every binding of the same digest).
        plugin: Arc<CompiledPlugin>,
        /// What `configure` asked for.
        needs: Needs,
    },
    /// Cannot run; every request to the resource fails closed. The text names the cause.
    Failed(Arc<str>),
}

/// One binding as the store (or the standalone file) declares it.
#[derive(Debug, Clone)]
pub(crate) struct PluginSpec {
    pub zone_id: String,
    pub resource_id: String,
    pub plugin_id: String,
    pub name: String,
    /// The plugin's registered world (`None`: not a known world).
    pub world: Option<World>,
    pub archived: bool,
    pub digest: [u8; 32],
    pub hook: PluginHook,
    pub mode: InjectMode,
    pub config: String,
    pub deadline: Duration,
    pub memory_bytes: u64,
}

type Compiled = Result<Arc<CompiledPlugin>, Arc<str>>;
type ConfigKey = ([u8; 32], Arc<str>, CallLimits);

/// What the previous snapshot already compiled and configured.
#[derive(Default)]
pub(crate) struct Known {
    compiled: HashMap<[u8; 32], Compiled>,
    configured: HashMap<ConfigKey, Needs>,
}

impl Known {
    /// Collects the compiled plugins (and refusals to compile) and the successful
    /// configurations of `previous`. Failed configurations are tried again.
    pub(crate) fn from_snapshot(previous: Option<&Snapshot>) -> Self {
        let mut known = Known::default();
        let Some(previous) = previous else {
            return known;
        };
        for zone in previous.zones.values() {
            for binding in zone.resources.values() {
                for plugin in &binding.plugins {
                    match &plugin.state {
                        PluginState::Ready {
                            plugin: compiled,
                            needs,
                        } => {
                            known
                                .compiled
                                .insert(plugin.digest, Ok(Arc::clone(compiled)));
                            known.configured.insert(
                                (plugin.digest, Arc::clone(&plugin.config), plugin.limits),
                                *needs,
                            );
                        }
                        PluginState::Failed(_) => {}
                    }
                }
            }
        }
        known
    }

    /// Whether a component with this digest needs its bytes read.
    pub(crate) fn needs_bytes(&self, digest: &[u8; 32]) -> bool {
        !self.compiled.contains_key(digest)
    }
}

/// Compiles the components not compiled before (on blocking threads), then configures every
/// binding. Returns the bindings by (zone, resource), in the order of `specs`.
pub(crate) async fn build_plugins(
    specs: Vec<PluginSpec>,
    mut components: HashMap<[u8; 32], Vec<u8>>,
    host: Option<&PluginHost>,
    mut known: Known,
) -> HashMap<(String, String), Vec<PluginRef>> {
    let mut by_resource: HashMap<(String, String), Vec<PluginRef>> = HashMap::new();
    for spec in specs {
        let state = match host {
            None => PluginState::Failed(Arc::from("no plugin host is configured")),
            Some(host) => prepare(host, &spec, &mut components, &mut known).await,
        };
        let limits = match host {
            Some(host) => host.limits(spec.deadline, spec.memory_bytes),
            None => CallLimits {
                deadline: spec.deadline,
                memory_bytes: spec.memory_bytes,
            },
        };
        if let PluginState::Failed(cause) = &state {
            tracing::warn!(
                zone_id = %spec.zone_id,
                resource_id = %spec.resource_id,
                plugin = %spec.name,
                %cause,
                "a bound plugin cannot run; requests to its resource fail closed"
            );
        }
        by_resource
            .entry((spec.zone_id, spec.resource_id))
            .or_default()
            .push(PluginRef {
                plugin_id: spec.plugin_id,
                name: spec.name,
                hook: spec.hook,
                mode: spec.mode,
                digest: spec.digest,
                config: Arc::from(spec.config),
                limits,
                state,
            });
    }
    by_resource
}

async fn prepare(
    host: &PluginHost,
    spec: &PluginSpec,
    components: &mut HashMap<[u8; 32], Vec<u8>>,
    known: &mut Known,
) -> PluginState {
    if spec.archived {
        return PluginState::Failed(Arc::from("the plugin is archived"));
    }
    if spec.world != Some(spec.hook.world()) {
        return PluginState::Failed(Arc::from(format!(
            "a {} binding needs a {} plugin",
            spec.hook.as_str(),
            spec.hook.world()
        )));
    }
    let compiled = match known.compiled.get(&spec.digest) {
        Some(compiled) => compiled.clone(),
        None => {
            let compiled = match components.remove(&spec.digest) {
                None => Err(Arc::from("the component is missing")),
                Some(bytes) => compile(host, spec.hook.world(), bytes).await,
            };
            known.compiled.insert(spec.digest, compiled.clone());
            compiled
        }
    };
    let plugin = match compiled {
        Ok(plugin) => plugin,
        Err(cause) => return PluginState::Failed(cause),
    };
    let limits = host.limits(spec.deadline, spec.memory_bytes);
    let key: ConfigKey = (spec.digest, Arc::from(spec.config.as_str()), limits);
    if let Some(needs) = known.configured.get(&key) {
        return PluginState::Ready {
            plugin,
            needs: *needs,
        };
    }
    match host
        .configure(&plugin, &spec.config, limits.for_configure())
        .await
    {
        Ok(needs) => {
            known.configured.insert(key, needs);
            PluginState::Ready { plugin, needs }
        }
        Err(failure) => PluginState::Failed(Arc::from(format!("configure failed: {failure}"))),
    }
}

/// Compiles one component on a blocking thread.
pub(crate) async fn compile(host: &PluginHost, world: World, bytes: Vec<u8>) -> Compiled {
    let host = host.clone();
    match tokio::task::spawn_blocking(move || host.compile(world, &bytes)).await {
        Ok(Ok(plugin)) => Ok(Arc::new(plugin)),
        Ok(Err(error)) => Err(Arc::from(error.to_string())),
        Err(_) => Err(Arc::from("the compilation task failed")),
    }
}

/// A stored digest as an array (a malformed one never matches a component).
pub(crate) fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    if bytes.len() == 32 {
        out.copy_from_slice(bytes);
    }
    out
}
