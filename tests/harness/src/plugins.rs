//! WebAssembly plugins provisioned through the admin connection, as the admin API stores
//! them: a component registered in `gateway_plugins` (Postgres computes its SHA-256) and
//! bound to a resource in `resource_plugin_bindings`.
//!
//! Nothing here checks a component against its world or a binding's configuration against
//! its plugin: tests also store what the admin API would refuse (a component of the wrong
//! world, a configuration the plugin rejects) to see the gateway fail closed.

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::provision::Provision;

/// `resource_plugin_bindings.deadline_ms`'s column default.
pub const DEFAULT_DEADLINE_MS: i32 = 5;
/// `resource_plugin_bindings.memory_limit_bytes`'s column default (16 MiB).
pub const DEFAULT_MEMORY_LIMIT_BYTES: i64 = 16 * 1024 * 1024;

/// One `resource_plugin_bindings` row. Start from [`PluginBinding::authorizer`] or
/// [`PluginBinding::injector`]; the other columns have the table's defaults until set.
#[derive(Debug, Clone)]
pub struct PluginBinding {
    /// The binding id.
    pub id: String,
    /// The bound resource's row id.
    pub resource_id: String,
    /// `gateway_plugins.id`.
    pub plugin_id: String,
    /// `authorizer` or `injector`.
    pub hook: String,
    /// The order among the resource's bindings of the same hook.
    pub position: i16,
    /// `augment` or `replace` (injectors); `None` for authorizers.
    pub mode: Option<String>,
    /// The binding's configuration (`config_json`).
    pub config: Value,
    /// Each call's deadline.
    pub deadline_ms: i32,
    /// Each call's memory limit.
    pub memory_limit_bytes: i64,
}

impl PluginBinding {
    /// An authorizer binding at position 0 with the configuration `{}`.
    pub fn authorizer(id: &str, resource_id: &str, plugin_id: &str) -> Self {
        Self::new(id, resource_id, plugin_id, "authorizer", None)
    }

    /// An injector binding in `mode` (`augment` or `replace`) at position 0 with the
    /// configuration `{}`.
    pub fn injector(id: &str, resource_id: &str, plugin_id: &str, mode: &str) -> Self {
        Self::new(id, resource_id, plugin_id, "injector", Some(mode))
    }

    fn new(id: &str, resource_id: &str, plugin_id: &str, hook: &str, mode: Option<&str>) -> Self {
        Self {
            id: id.to_owned(),
            resource_id: resource_id.to_owned(),
            plugin_id: plugin_id.to_owned(),
            hook: hook.to_owned(),
            position: 0,
            mode: mode.map(str::to_owned),
            config: json!({}),
            deadline_ms: DEFAULT_DEADLINE_MS,
            memory_limit_bytes: DEFAULT_MEMORY_LIMIT_BYTES,
        }
    }

    /// With this configuration.
    #[must_use]
    pub fn config(mut self, config: Value) -> Self {
        self.config = config;
        self
    }

    /// With this deadline per call.
    #[must_use]
    pub fn deadline_ms(mut self, deadline_ms: i32) -> Self {
        self.deadline_ms = deadline_ms;
        self
    }

    /// With this memory limit per call.
    #[must_use]
    pub fn memory_limit_bytes(mut self, bytes: i64) -> Self {
        self.memory_limit_bytes = bytes;
        self
    }

    /// At this position.
    #[must_use]
    pub fn position(mut self, position: i16) -> Self {
        self.position = position;
        self
    }
}

impl Provision {
    /// Registers `component` as plugin `id` named `name` of `world` (`authorizer` or
    /// `credential-injector`) in `zone`; the digest is the SHA-256 Postgres computes.
    pub async fn plugin(
        &mut self,
        zone: &str,
        id: &str,
        name: &str,
        world: &str,
        component: &[u8],
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO gateway_plugins (id, zone_id, name, world, component_sha256, component) \
             VALUES ($1, $2, $3, $4, sha256($5), $5)",
        )
        .bind(id)
        .bind(zone)
        .bind(name)
        .bind(world)
        .bind(component)
        .execute(self.conn())
        .await
        .with_context(|| format!("plugin {id}"))?;
        Ok(())
    }

    /// Inserts one binding in `zone`.
    pub async fn bind_plugin(&mut self, zone: &str, binding: &PluginBinding) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO resource_plugin_bindings \
                 (id, zone_id, resource_id, plugin_id, hook, position, mode, config_json, deadline_ms, memory_limit_bytes) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&binding.id)
        .bind(zone)
        .bind(&binding.resource_id)
        .bind(&binding.plugin_id)
        .bind(&binding.hook)
        .bind(binding.position)
        .bind(binding.mode.as_deref())
        .bind(&binding.config)
        .bind(binding.deadline_ms)
        .bind(binding.memory_limit_bytes)
        .execute(self.conn())
        .await
        .with_context(|| format!("plugin binding {}", binding.id))?;
        Ok(())
    }
}
