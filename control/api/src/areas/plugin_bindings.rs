//! `/v1/zones/{z}/resources/{id}/plugins`: the ordered WebAssembly plugin hooks of a resource
//! (README design decision 6, authority §4.2 step 25 and §7.5). A resource has at most
//! [`MAX_AUTHORIZERS`] authorizers, run in order (the first deny wins), and at most
//! [`MAX_INJECTORS`] credential injectors, of which at most one `replace`s the built-in
//! placement (the others `augment` it).
//!
//! `PUT` replaces the whole list in one transaction: positions are the order within each
//! hook; a plugin appears at most once per resource, so a gateway audit event that names a
//! plugin names one binding, and a binding keeps its id (and creation time) while its plugin
//! stays bound. Every `PUT`, the empty list included, fires the binding revision trigger
//! (storage §5.5): `gateway_binding_revision` is bumped and `caracal.gateway.bindings.invalidate`
//! enqueued in the same transaction; the outbox is woken after commit. The admin audit row
//! records plugin ids, hooks, positions, modes and limits, and only the key names of each
//! configuration, never its values.
//!
//! Each binding's configuration is checked by the plugin itself before anything is written:
//! its `configure` export runs on the configuration text the gateway will see, under the
//! binding's deadline and memory limit (400 `invalid_plugin_config` with the plugin's
//! message). Disabled bindings are checked like enabled ones.
//! Plugins are uploaded in the `plugins` area; a plugin of another zone is not found
//! (row-level security).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use control_store::admin::{
    plugin_bindings::{self, NewBinding, PluginBindingRow, PluginRef, StoredBinding},
    plugins,
};
use gateway_plugin_host::{FailureCause, World};
use http::Method;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Reply, check_len, open_zone, to_value};
use crate::{
    audit::{self, Action},
    auth::Need,
    error::{ApiError, Problem},
    request::{AdminRequest, printable},
    routes::{Answer, RequestBody, Route, Scope, schema_of, unknown_op},
    state::Api,
};

/// Authorizer bindings per resource.
pub const MAX_AUTHORIZERS: usize = 16;
/// Injector bindings per resource (at most one of them in `replace` mode).
pub const MAX_INJECTORS: usize = 4;
/// The largest configuration, in bytes of its stored `jsonb` text (the column's CHECK).
pub const MAX_CONFIG_BYTES: usize = 65_536;
/// Deadline of a binding that names none (milliseconds).
pub const DEFAULT_DEADLINE_MS: i32 = 5;
/// Memory limit of a binding that names none (16 MiB).
pub const DEFAULT_MEMORY_LIMIT_BYTES: i64 = 16 * 1024 * 1024;
const DEADLINE_MS: std::ops::RangeInclusive<i64> = 1..=1000;
const MEMORY_LIMIT_BYTES: std::ops::RangeInclusive<i64> = 65_536..=1_073_741_824;

/// Body of `PUT …/resources/{id}/plugins`: the complete ordered list; authorizers run in
/// the order given, then injectors in the order given. An empty list removes every binding.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutResourcePlugins {
    /// The bindings, at most 16 authorizers and 4 injectors.
    #[schemars(length(max = 20))]
    bindings: Vec<PluginBindingBody>,
}

/// One binding as submitted.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginBindingBody {
    /// A live plugin of the zone.
    #[schemars(length(min = 1, max = 256))]
    plugin_id: String,
    /// `authorizer` (plugin world `authorizer`) or `injector` (world `credential-injector`).
    #[schemars(regex(pattern = r"^(authorizer|injector)$"))]
    hook: String,
    /// Injectors only: `replace` skips the built-in credential placement (at most one per
    /// resource), `augment` (the default) runs after it.
    #[schemars(regex(pattern = r"^(replace|augment)$"))]
    mode: Option<String>,
    /// A JSON object handed to the plugin (at most 64 KiB as stored); default `{}`.
    #[schemars(with = "Option<Map<String, Value>>")]
    config: Option<Value>,
    /// Per-call deadline in milliseconds; default 5.
    #[schemars(range(min = 1, max = 1000))]
    deadline_ms: Option<i64>,
    /// Per-call memory limit in bytes; default 16 MiB.
    #[schemars(range(min = 65_536, max = 1_073_741_824))]
    memory_limit_bytes: Option<i64>,
    /// Whether the gateway runs the binding; default `true`.
    enabled: Option<bool>,
}

/// A resource's plugin bindings: authorizers by position, then injectors by position.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ResourcePlugins {
    /// The resource.
    pub resource_id: String,
    /// The bindings in the order the gateway runs them.
    pub bindings: Vec<PluginBindingRow>,
}

/// A hook of the request pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Hook {
    Authorizer,
    Injector,
}

impl Hook {
    fn parse(value: &str) -> Option<Self> {
        match value {
            "authorizer" => Some(Self::Authorizer),
            "injector" => Some(Self::Injector),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Authorizer => "authorizer",
            Self::Injector => "injector",
        }
    }

    /// The WIT world a plugin bound at this hook must implement.
    fn world(self) -> World {
        match self {
            Self::Authorizer => World::Authorizer,
            Self::Injector => World::CredentialInjector,
        }
    }
}

/// A binding that passed the checks that need no database, with its position.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    plugin_id: String,
    hook: Hook,
    position: i16,
    mode: Option<&'static str>,
    config: Value,
    deadline_ms: i32,
    memory_limit_bytes: i64,
    enabled: bool,
}

/// 400 `code` for the binding at `index` (the index, never the submitted value).
fn rule(code: &'static str, message: &'static str, index: usize) -> Problem {
    Problem::new(400, code, message).with_details(json!({ "index": index }))
}

/// The checks of one binding that need no database.
fn check_one(index: usize, body: PluginBindingBody) -> Result<Entry, Problem> {
    check_len(
        &format!("bindings[{index}].plugin_id"),
        &body.plugin_id,
        1,
        256,
    )?;
    let hook = Hook::parse(&body.hook).ok_or_else(|| {
        rule(
            "invalid_plugin_hook",
            "hook must be authorizer or injector",
            index,
        )
    })?;
    let mode = match (hook, body.mode.as_deref()) {
        (Hook::Authorizer, None) => None,
        (Hook::Authorizer, Some(_)) => {
            return Err(rule(
                "invalid_plugin_mode",
                "an authorizer binding takes no mode",
                index,
            ));
        }
        (Hook::Injector, None | Some("augment")) => Some("augment"),
        (Hook::Injector, Some("replace")) => Some("replace"),
        (Hook::Injector, Some(_)) => {
            return Err(rule(
                "invalid_plugin_mode",
                "an injector's mode must be replace or augment",
                index,
            ));
        }
    };
    let deadline_ms = match body.deadline_ms {
        None => DEFAULT_DEADLINE_MS,
        Some(ms) if DEADLINE_MS.contains(&ms) => i32::try_from(ms).unwrap_or(DEFAULT_DEADLINE_MS),
        Some(_) => {
            return Err(rule(
                "invalid_plugin_limits",
                "deadline_ms must be from 1 to 1000",
                index,
            ));
        }
    };
    let memory_limit_bytes = match body.memory_limit_bytes {
        None => DEFAULT_MEMORY_LIMIT_BYTES,
        Some(bytes) if MEMORY_LIMIT_BYTES.contains(&bytes) => bytes,
        Some(_) => {
            return Err(rule(
                "invalid_plugin_limits",
                "memory_limit_bytes must be from 65536 to 1073741824",
                index,
            ));
        }
    };
    let config = match body.config {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(config @ Value::Object(_)) => config,
        Some(_) => {
            return Err(rule(
                "invalid_plugin_config",
                "config must be a JSON object",
                index,
            ));
        }
    };
    Ok(Entry {
        plugin_id: body.plugin_id,
        hook,
        position: 0,
        mode,
        config,
        deadline_ms,
        memory_limit_bytes,
        enabled: body.enabled.unwrap_or(true),
    })
}

/// Every check that needs no database, in order: the list's length, each binding, then
/// duplicates, the per-hook limits and the single `replace` injector. Assigns positions.
fn check(body: PutResourcePlugins) -> Result<Vec<Entry>, Problem> {
    let too_many = || {
        Problem::new(
            400,
            "too_many_plugin_bindings",
            "a resource has at most 16 authorizer and 4 injector bindings",
        )
    };
    if body.bindings.len() > MAX_AUTHORIZERS + MAX_INJECTORS {
        return Err(too_many());
    }
    let mut entries = body
        .bindings
        .into_iter()
        .enumerate()
        .map(|(index, binding)| check_one(index, binding))
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = BTreeSet::new();
    for (index, entry) in entries.iter().enumerate() {
        if !seen.insert(entry.plugin_id.as_str()) {
            return Err(rule(
                "duplicate_plugin_binding",
                "a plugin is bound at most once per resource",
                index,
            ));
        }
    }
    let count = |hook| entries.iter().filter(|e| e.hook == hook).count();
    if count(Hook::Authorizer) > MAX_AUTHORIZERS || count(Hook::Injector) > MAX_INJECTORS {
        return Err(too_many());
    }
    if let Some(index) = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.mode == Some("replace"))
        .nth(1)
        .map(|(index, _)| index)
    {
        return Err(rule(
            "multiple_replace_injectors",
            "at most one injector may replace the built-in credential placement",
            index,
        ));
    }
    let mut next: HashMap<Hook, i16> = HashMap::new();
    for entry in &mut entries {
        let position = next.entry(entry.hook).or_insert(0);
        entry.position = *position;
        *position += 1;
    }
    Ok(entries)
}

/// The checks against the zone's plugins: each exists in the zone, is live, and implements
/// the hook's world.
fn check_plugins(entries: &[Entry], plugins: &[PluginRef]) -> Result<(), Problem> {
    for (index, entry) in entries.iter().enumerate() {
        let plugin = plugins
            .iter()
            .find(|p| p.id == entry.plugin_id)
            .ok_or_else(|| Problem::not_found("plugin").with_details(json!({ "index": index })))?;
        if plugin.archived {
            return Err(rule(
                "plugin_archived",
                "an archived plugin cannot be bound",
                index,
            ));
        }
        if plugin.world != entry.hook.world().as_str() {
            return Err(rule(
                "plugin_hook_mismatch",
                "authorizer bindings need an authorizer plugin, injector bindings a credential-injector plugin",
                index,
            ));
        }
    }
    Ok(())
}

/// Runs the plugin's `configure` on the binding's configuration, under the binding's limits:
/// the plugin is compiled from its stored component (or found compiled by digest), and is
/// handed the same text the gateway will hand it (the `jsonb` text Postgres stores). A
/// component that no longer loads is 400 `invalid_plugin_component`; a configuration the
/// plugin refuses, or a `configure` that traps, overruns or runs out of memory, is 400
/// `invalid_plugin_config` with the plugin's message or the cause in `error_description`.
async fn check_config(
    api: &Api,
    conn: &mut sqlx::PgConnection,
    index: usize,
    entry: &Entry,
    plugin: &PluginRef,
    config: &str,
) -> Result<(), ApiError> {
    let world = entry.hook.world();
    let digest: [u8; 32] =
        plugin
            .component_sha256
            .as_slice()
            .try_into()
            .map_err(|_wrong_length| {
                ApiError::Internal(format!("plugin {} has a malformed digest", plugin.id))
            })?;
    let compiled = api
        .components
        .compiled(world, digest, async || {
            plugins::component(conn, &plugin.id)
                .await?
                .ok_or_else(|| ApiError::Internal(format!("plugin {} vanished", plugin.id)))
        })
        .await?
        .map_err(|refused| {
            super::plugins::invalid_component(world, refused.to_string())
                .with_details(json!({ "index": index }))
        })?;
    let deadline = Duration::from_millis(u64::try_from(entry.deadline_ms).unwrap_or(0));
    let memory_bytes = u64::try_from(entry.memory_limit_bytes).unwrap_or(0);
    match api
        .components
        .configure(&compiled, config, deadline, memory_bytes)
        .await
    {
        Ok(()) => Ok(()),
        Err(failure) => {
            let (message, description) = match failure.cause {
                FailureCause::GuestError => (
                    format!("plugin {} refused the configuration", plugin.name),
                    failure.detail,
                ),
                _ => (
                    format!(
                        "plugin {} failed while checking the configuration",
                        plugin.name
                    ),
                    failure.to_string(),
                ),
            };
            Err(Problem::new(400, "invalid_plugin_config", message)
                .with_description(description)
                .with_details(json!({ "index": index }))
                .into())
        }
    }
}

/// The rows to insert: a plugin that stays bound at the same hook keeps its binding's id and
/// creation, and its last change when nothing about it changed.
fn plan(entries: &[Entry], previous: Vec<StoredBinding>) -> Vec<NewBinding> {
    let mut previous: HashMap<(String, String), StoredBinding> = previous
        .into_iter()
        .map(|b| ((b.plugin_id.clone(), b.hook.clone()), b))
        .collect();
    entries
        .iter()
        .map(|entry| {
            let old = previous.remove(&(entry.plugin_id.clone(), entry.hook.as_str().to_owned()));
            let unchanged = old.as_ref().is_some_and(|old| {
                old.position == entry.position
                    && old.mode.as_deref() == entry.mode
                    && old.config == entry.config
                    && old.deadline_ms == entry.deadline_ms
                    && old.memory_limit_bytes == entry.memory_limit_bytes
                    && old.enabled == entry.enabled
            });
            let (id, created_at, created_by, updated_at, updated_by) = match old {
                Some(old) if unchanged => (
                    old.id,
                    Some(old.created_at),
                    old.created_by,
                    Some(old.updated_at),
                    old.updated_by,
                ),
                Some(old) => (old.id, Some(old.created_at), old.created_by, None, None),
                None => (uuid::Uuid::now_v7().to_string(), None, None, None, None),
            };
            NewBinding {
                id,
                plugin_id: entry.plugin_id.clone(),
                hook: entry.hook.as_str().to_owned(),
                position: entry.position,
                mode: entry.mode.map(str::to_owned),
                config_json: entry.config.clone(),
                deadline_ms: entry.deadline_ms,
                memory_limit_bytes: entry.memory_limit_bytes,
                enabled: entry.enabled,
                created_at,
                created_by,
                updated_at,
                updated_by,
            }
        })
        .collect()
}

/// The admin audit payload: everything but configuration values (only their key names).
fn audit_payload(resource_id: &str, entries: &[Entry], removed: &[String]) -> Value {
    let bindings: Vec<Value> = entries
        .iter()
        .map(|e| {
            let keys: Vec<&String> = e
                .config
                .as_object()
                .map(|m| m.keys().collect())
                .unwrap_or_default();
            json!({
                "plugin_id": e.plugin_id,
                "hook": e.hook.as_str(),
                "position": e.position,
                "mode": e.mode,
                "deadline_ms": e.deadline_ms,
                "memory_limit_bytes": e.memory_limit_bytes,
                "enabled": e.enabled,
                "config_keys": keys,
            })
        })
        .collect();
    json!({"resource_id": resource_id, "bindings": bindings, "removed_plugin_ids": removed})
}

/// 400 `invalid_query` for any query parameter (these routes take none).
fn no_query(req: &AdminRequest) -> Result<(), Problem> {
    match req.query.first() {
        Some((name, _)) => Err(Problem::new(
            400,
            "invalid_query",
            format!("unknown query parameter {}", printable(name)),
        )),
        None => Ok(()),
    }
}

/// `GET …/resources/{id}/plugins`.
pub async fn get(api: &Api, req: &AdminRequest, zone: &str, id: &str) -> Result<Reply, ApiError> {
    no_query(req)?;
    let (mut tx, _) = open_zone(api, zone).await?;
    if !plugin_bindings::resource_live(&mut tx, id).await? {
        return Err(Problem::not_found("resource").into());
    }
    let bindings = plugin_bindings::list(&mut tx, id).await?;
    tx.commit().await?;
    let answer = ResourcePlugins {
        resource_id: id.to_owned(),
        bindings,
    };
    Ok(Reply::Json(200, to_value(&answer)?))
}

/// `PUT …/resources/{id}/plugins`: replaces the resource's bindings.
pub async fn put(api: &Api, req: &AdminRequest, zone: &str, id: &str) -> Result<Reply, ApiError> {
    no_query(req)?;
    let body: PutResourcePlugins = req.json()?;
    let entries = check(body)?;

    let (mut tx, zone_id) = open_zone(api, zone).await?;
    if !plugin_bindings::lock_resource(&mut tx, id).await? {
        return Err(Problem::not_found("resource").into());
    }
    let ids: Vec<String> = entries.iter().map(|e| e.plugin_id.clone()).collect();
    let plugins = plugin_bindings::plugins(&mut tx, &ids).await?;
    check_plugins(&entries, &plugins)?;
    let configs = Value::Array(entries.iter().map(|e| e.config.clone()).collect());
    let texts = plugin_bindings::stored_texts(&mut tx, &configs).await?;
    if let Some(index) = texts.iter().position(|text| text.len() > MAX_CONFIG_BYTES) {
        return Err(rule(
            "invalid_plugin_config",
            "config must be at most 64 KiB as stored",
            index,
        )
        .into());
    }
    for (index, (entry, text)) in entries.iter().zip(&texts).enumerate() {
        let plugin = plugins
            .iter()
            .find(|p| p.id == entry.plugin_id)
            .ok_or_else(|| ApiError::Internal(format!("plugin {} vanished", entry.plugin_id)))?;
        check_config(api, &mut tx, index, entry, plugin, text).await?;
    }

    let previous = plugin_bindings::remove_all(&mut tx, id).await?;
    let removed: Vec<String> = previous
        .iter()
        .filter(|old| !entries.iter().any(|e| e.plugin_id == old.plugin_id))
        .map(|old| old.plugin_id.clone())
        .collect();
    let rows = plan(&entries, previous);
    let actor = req.principal.id.as_str();
    plugin_bindings::insert_all(&mut tx, zone_id.as_str(), id, &rows, actor).await?;
    let bindings = plugin_bindings::list(&mut tx, id).await?;
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(
            zone_id.as_str(),
            "resource_plugin_bindings",
            id,
            200,
            audit_payload(id, &entries, &removed),
        ),
    )
    .await?;
    api.outbox.wake();
    let answer = ResourcePlugins {
        resource_id: id.to_owned(),
        bindings,
    };
    Ok(Reply::Json(200, to_value(&answer)?))
}

const INVALID_QUERY: (u16, &str) = (400, "invalid_query");
const ZONE_NOT_FOUND: (u16, &str) = (404, "zone_not_found");
const RESOURCE_NOT_FOUND: (u16, &str) = (404, "resource_not_found");

/// The area's operations.
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/resources/{resource_id}/plugins",
        op: "plugin_bindings.get",
        summary: "List a resource's plugin bindings in the order the gateway runs them",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Json(200, schema_of::<ResourcePlugins>),
        query: &[],
        refusals: &[INVALID_QUERY, ZONE_NOT_FOUND, RESOURCE_NOT_FOUND],
    },
    Route {
        method: Method::PUT,
        path: "/zones/{zone_id}/resources/{resource_id}/plugins",
        op: "plugin_bindings.put",
        summary: "Replace a resource's plugin bindings (authorizers, then credential injectors)",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::Json(schema_of::<PutResourcePlugins>),
        answer: Answer::Json(200, schema_of::<ResourcePlugins>),
        query: &[],
        refusals: &[
            INVALID_QUERY,
            (400, "invalid_plugin_hook"),
            (400, "invalid_plugin_mode"),
            (400, "invalid_plugin_limits"),
            (400, "invalid_plugin_config"),
            (400, "duplicate_plugin_binding"),
            (400, "too_many_plugin_bindings"),
            (400, "multiple_replace_injectors"),
            (400, "plugin_archived"),
            (400, "plugin_hook_mismatch"),
            (400, "invalid_plugin_component"),
            ZONE_NOT_FOUND,
            RESOURCE_NOT_FOUND,
            (404, "plugin_not_found"),
        ],
    },
];

/// Runs operation `op` with its path parameters.
pub async fn handle(
    api: &Api,
    req: &AdminRequest,
    op: &str,
    p: &[&str],
) -> Result<Reply, ApiError> {
    match (op, p) {
        ("plugin_bindings.get", [z, id]) => get(api, req, z, id).await,
        ("plugin_bindings.put", [z, id]) => put(api, req, z, id).await,
        _ => Err(unknown_op(op)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(bindings: Value) -> PutResourcePlugins {
        serde_json::from_value(json!({ "bindings": bindings })).unwrap()
    }

    fn code(bindings: Value) -> String {
        check(body(bindings))
            .err()
            .map(|p| p.code.into_owned())
            .unwrap_or_default()
    }

    fn authorizer(id: &str) -> Value {
        json!({"plugin_id": id, "hook": "authorizer"})
    }

    #[test]
    fn each_static_rule_has_its_code() {
        let many_authorizers: Vec<Value> = (0..17).map(|i| authorizer(&format!("a{i}"))).collect();
        let many_injectors: Vec<Value> = (0..5)
            .map(|i| json!({"plugin_id": format!("i{i}"), "hook": "injector"}))
            .collect();
        let cases = [
            (json!([]), ""),
            (
                json!([authorizer("a"), {"plugin_id": "b", "hook": "injector"}]),
                "",
            ),
            (
                json!([{"plugin_id": "", "hook": "authorizer"}]),
                "invalid_body",
            ),
            (
                json!([{"plugin_id": "a", "hook": "filter"}]),
                "invalid_plugin_hook",
            ),
            (
                json!([{"plugin_id": "a", "hook": "Authorizer"}]),
                "invalid_plugin_hook",
            ),
            (
                json!([{"plugin_id": "a", "hook": "authorizer", "mode": "augment"}]),
                "invalid_plugin_mode",
            ),
            (
                json!([{"plugin_id": "a", "hook": "injector", "mode": "append"}]),
                "invalid_plugin_mode",
            ),
            (
                json!([{"plugin_id": "a", "hook": "authorizer", "deadline_ms": 0}]),
                "invalid_plugin_limits",
            ),
            (
                json!([{"plugin_id": "a", "hook": "authorizer", "deadline_ms": 1001}]),
                "invalid_plugin_limits",
            ),
            (
                json!([{"plugin_id": "a", "hook": "authorizer", "memory_limit_bytes": 65535}]),
                "invalid_plugin_limits",
            ),
            (
                json!([{"plugin_id": "a", "hook": "authorizer", "memory_limit_bytes": 1_073_741_825_i64}]),
                "invalid_plugin_limits",
            ),
            (
                json!([{"plugin_id": "a", "hook": "authorizer", "config": []}]),
                "invalid_plugin_config",
            ),
            (
                json!([{"plugin_id": "a", "hook": "authorizer", "config": "x"}]),
                "invalid_plugin_config",
            ),
            (
                json!([authorizer("a"), authorizer("a")]),
                "duplicate_plugin_binding",
            ),
            (Value::Array(many_authorizers), "too_many_plugin_bindings"),
            (Value::Array(many_injectors), "too_many_plugin_bindings"),
            (
                json!([{"plugin_id": "a", "hook": "injector", "mode": "replace"},
                       {"plugin_id": "b", "hook": "injector", "mode": "replace"}]),
                "multiple_replace_injectors",
            ),
        ];
        for (bindings, want) in cases {
            assert_eq!(code(bindings.clone()), want, "{bindings}");
        }
    }

    #[test]
    fn positions_count_within_each_hook_and_defaults_apply() {
        let entries = check(body(json!([
            authorizer("a"),
            {"plugin_id": "i", "hook": "injector", "mode": "replace"},
            {"plugin_id": "b", "hook": "authorizer", "config": {"k": 1}, "deadline_ms": 1000,
             "memory_limit_bytes": 65536, "enabled": false},
            {"plugin_id": "j", "hook": "injector"},
        ])))
        .unwrap();
        let summary: Vec<(&str, &str, i16, Option<&str>)> = entries
            .iter()
            .map(|e| (e.plugin_id.as_str(), e.hook.as_str(), e.position, e.mode))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("a", "authorizer", 0, None),
                ("i", "injector", 0, Some("replace")),
                ("b", "authorizer", 1, None),
                ("j", "injector", 1, Some("augment")),
            ]
        );
        assert_eq!(entries[0].config, json!({}));
        assert_eq!(entries[0].deadline_ms, DEFAULT_DEADLINE_MS);
        assert_eq!(entries[0].memory_limit_bytes, DEFAULT_MEMORY_LIMIT_BYTES);
        assert!(entries[0].enabled);
        assert_eq!(
            (
                entries[2].deadline_ms,
                entries[2].memory_limit_bytes,
                entries[2].enabled
            ),
            (1000, 65536, false)
        );
    }

    #[test]
    fn rule_details_carry_the_index_and_never_the_value() {
        let problem = check(body(
            json!([authorizer("a"), {"plugin_id": "secret-ish-id", "hook": "nope-value"}]),
        ))
        .unwrap_err();
        let text = json!({"details": problem.details, "message": problem.message}).to_string();
        assert!(text.contains("\"index\":1"), "{text}");
        assert!(
            !text.contains("nope-value") && !text.contains("secret-ish-id"),
            "{text}"
        );
    }

    #[test]
    fn audit_payload_keeps_config_key_names_only() {
        let entries = check(body(json!([
            {"plugin_id": "a", "hook": "authorizer", "config": {"api_token": "hunter2-value", "n": 3}},
        ])))
        .unwrap();
        let payload = audit_payload("res-1", &entries, &["old".to_owned()]).to_string();
        assert!(
            payload.contains("api_token") && !payload.contains("hunter2-value"),
            "{payload}"
        );
        assert!(
            payload.contains("\"removed_plugin_ids\":[\"old\"]"),
            "{payload}"
        );
    }
}
