//! `resource_plugin_bindings`: the ordered WebAssembly plugin hooks of a resource (authorizers,
//! then credential injectors), as the admin API reads and replaces them inside a zone
//! transaction. The plugins themselves (`gateway_plugins`) are only read here (see
//! [`super::plugins`] for their registration).
//!
//! A replacement deletes the resource's bindings and inserts the new list in two statements;
//! each fires the binding revision trigger (storage §5.5), which bumps
//! `gateway_binding_revision` and enqueues `caracal.gateway.bindings.invalidate` in the same
//! transaction.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;

/// A binding as the admin API returns it, with its plugin's name and world.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct PluginBindingRow {
    /// Binding id (kept while the same plugin stays bound to the resource).
    pub id: String,
    /// The bound plugin.
    pub plugin_id: String,
    /// The plugin's name.
    pub plugin_name: String,
    /// The plugin's WIT world: `authorizer` or `credential-injector`.
    pub world: String,
    /// `authorizer` or `injector`.
    pub hook: String,
    /// Order within the hook, from 0.
    pub position: i16,
    /// `replace` or `augment` for an injector; `null` for an authorizer.
    pub mode: Option<String>,
    /// The configuration handed to the plugin, as stored.
    #[schemars(with = "serde_json::Map<String, Value>")]
    pub config: Value,
    /// Per-call deadline in milliseconds (1..1000).
    pub deadline_ms: i32,
    /// Per-call memory limit in bytes (65536..1073741824).
    pub memory_limit_bytes: i64,
    /// Whether the gateway runs the binding.
    pub enabled: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A stored binding with its authorship, as removed by [`remove_all`].
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredBinding {
    /// Binding id.
    pub id: String,
    /// The bound plugin.
    pub plugin_id: String,
    /// `authorizer` or `injector`.
    pub hook: String,
    /// Order within the hook.
    pub position: i16,
    /// Injector mode.
    pub mode: Option<String>,
    /// Configuration.
    pub config: Value,
    /// Deadline in milliseconds.
    pub deadline_ms: i32,
    /// Memory limit in bytes.
    pub memory_limit_bytes: i64,
    /// Enabled.
    pub enabled: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Creator.
    pub created_by: Option<String>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Last changer.
    pub updated_by: Option<String>,
}

/// A plugin of the zone as a binding needs it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PluginRef {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// `authorizer` or `credential-injector`.
    pub world: String,
    /// SHA-256 of the component (32 bytes).
    pub component_sha256: Vec<u8>,
    /// Whether the plugin is archived.
    pub archived: bool,
}

/// A binding to insert. `None` timestamps and authors mean "now" and the actor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewBinding {
    /// Binding id.
    pub id: String,
    /// The bound plugin.
    pub plugin_id: String,
    /// `authorizer` or `injector`.
    pub hook: String,
    /// Order within the hook.
    pub position: i16,
    /// Injector mode (`None` for an authorizer).
    pub mode: Option<String>,
    /// Configuration (a JSON object).
    pub config_json: Value,
    /// Deadline in milliseconds.
    pub deadline_ms: i32,
    /// Memory limit in bytes.
    pub memory_limit_bytes: i64,
    /// Enabled.
    pub enabled: bool,
    /// Creation time kept from the previous binding of the plugin.
    pub created_at: Option<DateTime<Utc>>,
    /// Creator kept from the previous binding of the plugin.
    pub created_by: Option<String>,
    /// Last change kept when nothing changed.
    pub updated_at: Option<DateTime<Utc>>,
    /// Last changer kept when nothing changed.
    pub updated_by: Option<String>,
}

/// Whether `id` is a live resource of the zone.
pub async fn resource_live(conn: &mut PgConnection, id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM resources WHERE id = $1 AND archived_at IS NULL)",
    )
    .bind(id)
    .fetch_one(conn)
    .await
}

/// Locks the live resource `id` for the rest of the transaction, so replacements of its
/// bindings run one after the other; false when there is no live resource.
pub async fn lock_resource(conn: &mut PgConnection, id: &str) -> Result<bool, sqlx::Error> {
    let found: Option<String> = sqlx::query_scalar(
        "SELECT id FROM resources WHERE id = $1 AND archived_at IS NULL FOR NO KEY UPDATE",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(found.is_some())
}

/// The resource's bindings: authorizers by position, then injectors by position.
pub async fn list(
    conn: &mut PgConnection,
    resource_id: &str,
) -> Result<Vec<PluginBindingRow>, sqlx::Error> {
    sqlx::query_as::<_, PluginBindingRow>(
        "SELECT b.id, b.plugin_id, p.name AS plugin_name, p.world, b.hook, b.position, b.mode, \
                b.config_json AS config, b.deadline_ms, b.memory_limit_bytes, b.enabled, \
                b.created_at, b.updated_at \
           FROM resource_plugin_bindings b \
           JOIN gateway_plugins p ON p.zone_id = b.zone_id AND p.id = b.plugin_id \
          WHERE b.resource_id = $1 \
          ORDER BY b.hook = 'injector', b.position",
    )
    .bind(resource_id)
    .fetch_all(conn)
    .await
}

/// The zone's plugins among `ids` (unknown ids and other zones' plugins are absent), held
/// against concurrent changes until the transaction ends.
pub async fn plugins(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<Vec<PluginRef>, sqlx::Error> {
    sqlx::query_as::<_, PluginRef>(
        "SELECT id, name, world, component_sha256, archived_at IS NOT NULL AS archived \
           FROM gateway_plugins WHERE id = ANY($1) FOR SHARE",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// Each of `configs` (a JSON array) in the text form Postgres gives its `jsonb` (what
/// `config_json::text` returns, so what the gateway hands the plugin, and what the column's
/// CHECK bounds), in order.
pub async fn stored_texts(
    conn: &mut PgConnection,
    configs: &Value,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT e.c::text \
           FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(c, n) ORDER BY e.n",
    )
    .bind(configs)
    .fetch_all(conn)
    .await
}

/// Deletes every binding of the resource and returns what was stored.
pub async fn remove_all(
    conn: &mut PgConnection,
    resource_id: &str,
) -> Result<Vec<StoredBinding>, sqlx::Error> {
    sqlx::query_as::<_, StoredBinding>(
        "DELETE FROM resource_plugin_bindings WHERE resource_id = $1 \
         RETURNING id, plugin_id, hook, position, mode, config_json AS config, deadline_ms, \
                   memory_limit_bytes, enabled, created_at, created_by, updated_at, updated_by",
    )
    .bind(resource_id)
    .fetch_all(conn)
    .await
}

/// Inserts `bindings` for the resource in one statement (nothing when the list is empty).
pub async fn insert_all(
    conn: &mut PgConnection,
    zone_id: &str,
    resource_id: &str,
    bindings: &[NewBinding],
    actor: &str,
) -> Result<(), sqlx::Error> {
    if bindings.is_empty() {
        return Ok(());
    }
    let rows = serde_json::to_value(bindings).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO resource_plugin_bindings \
           (id, zone_id, resource_id, plugin_id, hook, position, mode, config_json, deadline_ms, \
            memory_limit_bytes, enabled, created_at, created_by, updated_at, updated_by) \
         SELECT b.id, $1, $2, b.plugin_id, b.hook, b.position, b.mode, b.config_json, \
                b.deadline_ms, b.memory_limit_bytes, b.enabled, coalesce(b.created_at, now()), \
                CASE WHEN b.created_at IS NULL THEN $4 ELSE b.created_by END, coalesce(b.updated_at, now()), \
                CASE WHEN b.updated_at IS NULL THEN $4 ELSE b.updated_by END \
           FROM jsonb_to_recordset($3::jsonb) AS b(id text, plugin_id text, hook text, \
                position smallint, mode text, config_json jsonb, deadline_ms integer, \
                memory_limit_bytes bigint, enabled boolean, created_at timestamptz, \
                created_by text, updated_at timestamptz, updated_by text)",
    )
    .bind(zone_id)
    .bind(resource_id)
    .bind(rows)
    .bind(actor)
    .execute(conn)
    .await
    .map(|_| ())
}
