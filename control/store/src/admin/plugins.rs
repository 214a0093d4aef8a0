//! `gateway_plugins`: the zone's WebAssembly components, as the admin API registers, lists,
//! serves and archives them inside a zone transaction. The component bytes are read only by
//! [`component`]; every other statement returns metadata.
//!
//! Rows are content-addressed: one row per digest per zone (archived rows included), one live
//! row per name, and the bytes never change once stored (a trigger refuses it). Every insert
//! and update fires the binding revision trigger (storage §5.5), which bumps
//! `gateway_binding_revision` and enqueues the gateway's invalidation in the same
//! transaction.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::page::{After, Keyed, Page, PageRequest, bounds};

/// A plugin's metadata (never its bytes).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PluginRow {
    /// Id.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// Name (`^[a-z0-9][a-z0-9._-]{0,63}$`), unique among the zone's live plugins.
    pub name: String,
    /// `authorizer` or `credential-injector`.
    pub world: String,
    /// The WIT package the component implements.
    pub wit_package: String,
    /// SHA-256 of the component (32 bytes).
    pub component_sha256: Vec<u8>,
    /// Size of the component in bytes.
    pub size_bytes: i32,
    /// Free text.
    pub description: Option<String>,
    /// Registration time.
    pub created_at: DateTime<Utc>,
    /// Archiving time; `None` while the plugin is live.
    pub archived_at: Option<DateTime<Utc>>,
}

impl Keyed for PluginRow {
    fn key(&self) -> After {
        After {
            ts: self.created_at,
            id: self.id.clone(),
        }
    }
}

/// Which plugins a list holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// Live plugins only.
    Live,
    /// Archived plugins only.
    Archived,
    /// Both.
    All,
}

/// A plugin to register.
#[derive(Debug, Clone, Copy)]
pub struct NewPlugin<'a> {
    /// Id.
    pub id: &'a str,
    /// Name.
    pub name: &'a str,
    /// World.
    pub world: &'a str,
    /// WIT package.
    pub wit_package: &'a str,
    /// SHA-256 of `component`.
    pub component_sha256: &'a [u8],
    /// The component bytes.
    pub component: &'a [u8],
    /// Description.
    pub description: Option<&'a str>,
}

const COLUMNS: &str = "id, zone_id, name, world, wit_package, component_sha256, \
       octet_length(component) AS size_bytes, description, created_at, archived_at";

/// A page of the zone's plugins, newest first.
pub async fn list(
    conn: &mut PgConnection,
    listed: Listed,
    page: &PageRequest,
) -> Result<Page<PluginRow>, sqlx::Error> {
    let (ts, id) = bounds(page);
    let archived: Option<bool> = match listed {
        Listed::Live => Some(false),
        Listed::Archived => Some(true),
        Listed::All => None,
    };
    let rows = sqlx::query_as::<_, PluginRow>(&format!(
        "SELECT {COLUMNS} FROM gateway_plugins \
          WHERE ($1::boolean IS NULL OR (archived_at IS NOT NULL) = $1) \
            AND (created_at, id) < ($2, $3) ORDER BY created_at DESC, id DESC LIMIT $4"
    ))
    .bind(archived)
    .bind(ts)
    .bind(id)
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page.limit))
}

/// A plugin of the zone, live or archived.
pub async fn get(conn: &mut PgConnection, id: &str) -> Result<Option<PluginRow>, sqlx::Error> {
    sqlx::query_as::<_, PluginRow>(&format!(
        "SELECT {COLUMNS} FROM gateway_plugins WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// The component bytes of a plugin of the zone, live or archived.
pub async fn component(conn: &mut PgConnection, id: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT component FROM gateway_plugins WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// The id of the zone's plugin with this digest (live or archived: a digest is registered
/// once per zone).
pub async fn with_digest(
    conn: &mut PgConnection,
    sha256: &[u8],
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM gateway_plugins WHERE component_sha256 = $1")
        .bind(sha256)
        .fetch_optional(conn)
        .await
}

/// The id of the zone's live plugin named `name`.
pub async fn live_named(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM gateway_plugins WHERE name = $1 AND archived_at IS NULL")
        .bind(name)
        .fetch_optional(conn)
        .await
}

/// Registers a plugin in `zone_id` and returns its metadata.
pub async fn insert(
    conn: &mut PgConnection,
    zone_id: &str,
    plugin: &NewPlugin<'_>,
    actor: &str,
) -> Result<PluginRow, sqlx::Error> {
    sqlx::query_as::<_, PluginRow>(&format!(
        "INSERT INTO gateway_plugins \
           (id, zone_id, name, world, wit_package, component_sha256, component, description, \
            created_by, updated_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
         RETURNING {COLUMNS}"
    ))
    .bind(plugin.id)
    .bind(zone_id)
    .bind(plugin.name)
    .bind(plugin.world)
    .bind(plugin.wit_package)
    .bind(plugin.component_sha256)
    .bind(plugin.component)
    .bind(plugin.description)
    .bind(actor)
    .fetch_one(conn)
    .await
}

/// Locks the live plugin `id` against bindings made concurrently (they read it `FOR SHARE`)
/// until the transaction ends; false when there is no live plugin.
pub async fn lock_live(conn: &mut PgConnection, id: &str) -> Result<bool, sqlx::Error> {
    let found: Option<String> = sqlx::query_scalar(
        "SELECT id FROM gateway_plugins WHERE id = $1 AND archived_at IS NULL FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(found.is_some())
}

/// The resources whose bindings name the plugin, in id order.
pub async fn bound_resources(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT resource_id FROM resource_plugin_bindings WHERE plugin_id = $1 \
          ORDER BY resource_id",
    )
    .bind(id)
    .fetch_all(conn)
    .await
}
