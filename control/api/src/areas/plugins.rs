//! `/v1/zones/{z}/plugins`: the zone's WebAssembly plugins (README design decision 6).
//!
//! `POST` takes the raw component (`Content-Type: application/wasm`, at most 32 MiB) with the
//! plugin's name, world and description in the query. Before anything is stored the
//! component is compiled and linked against its world with the gateway's own plugin host
//! ([`crate::components`]), so a core module, junk, or a component of the other world (or of
//! some other package) is refused with 400 `invalid_plugin_component` and the host's reason.
//! Rows are content-addressed: a digest is registered once per zone (409
//! `plugin_already_registered`, naming the row, archived or not), and a name once among the
//! zone's live plugins (409 `plugin_name_taken`). The answer is the metadata; the bytes are
//! served only by `GET …/plugins/{id}/component`.
//!
//! `DELETE` archives: an archived plugin cannot be bound (`plugin_bindings` refuses it), and a
//! plugin still named by a resource binding cannot be archived (409 `plugin_in_use` with the
//! resource ids). Upload and archive write the admin audit row in their own transaction and
//! fire the binding revision trigger; the outbox is woken after commit.

use chrono::{DateTime, Utc};
use control_store::admin::{
    self, Archivable,
    page::Page,
    plugins::{self, Listed, NewPlugin, PluginRow},
};
use gateway_plugin_host::{WIT_PACKAGE, World};
use http::Method;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::json;

use super::{Reply, open_zone, to_value};
use crate::{
    audit::{self, Action},
    auth::Need,
    error::{ApiError, Problem},
    request::{AdminRequest, page_body, printable},
    routes::{Answer, Param, RawBody, RequestBody, Route, Scope, schema_of, unknown_op},
    state::Api,
};

/// The media type of an upload and of a download.
pub const WASM: &str = "application/wasm";
/// The largest component (the column's CHECK): 32 MiB.
pub const MAX_COMPONENT_BYTES: usize = 32 * 1024 * 1024;
/// How long an upload's body may take to arrive.
pub const UPLOAD_READ_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);
/// The longest description, in characters (the column's CHECK).
pub const MAX_DESCRIPTION_CHARS: usize = 4096;
/// The longest name.
const MAX_NAME_BYTES: usize = 64;

/// A plugin as the API answers it: its metadata, never its bytes.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PluginMetadata {
    /// Id (UUIDv7).
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// Name, unique among the zone's live plugins.
    pub name: String,
    /// `authorizer` or `credential-injector`.
    pub world: String,
    /// The WIT package the component was checked against, `caracal:gateway@0.1.0`.
    pub wit_package: String,
    /// SHA-256 of the component, lowercase hex.
    pub component_sha256: String,
    /// Size of the component in bytes.
    pub size_bytes: i64,
    /// Free text, when given.
    pub description: Option<String>,
    /// Registration time.
    pub created_at: DateTime<Utc>,
    /// Archiving time; `null` while the plugin can be bound.
    pub archived_at: Option<DateTime<Utc>>,
}

impl From<&PluginRow> for PluginMetadata {
    fn from(row: &PluginRow) -> Self {
        PluginMetadata {
            id: row.id.clone(),
            zone_id: row.zone_id.clone(),
            name: row.name.clone(),
            world: row.world.clone(),
            wit_package: row.wit_package.clone(),
            component_sha256: hex::encode(&row.component_sha256),
            size_bytes: i64::from(row.size_bytes),
            description: row.description.clone(),
            created_at: row.created_at,
            archived_at: row.archived_at,
        }
    }
}

/// Whether `name` matches `^[a-z0-9][a-z0-9._-]{0,63}$` (the column's CHECK).
fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    name.len() <= MAX_NAME_BYTES
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// What an upload asks for, checked.
#[derive(Debug, Clone, PartialEq)]
struct Upload {
    name: String,
    world: World,
    description: Option<String>,
}

/// The checks of an upload's query, in order: known parameters only, the name, the world,
/// the description.
fn check_upload(query: &[(String, String)]) -> Result<Upload, Problem> {
    const ALLOWED: [&str; 3] = ["name", "world", "description"];
    if let Some((name, _)) = query.iter().find(|(k, _)| !ALLOWED.contains(&k.as_str())) {
        return Err(Problem::new(
            400,
            "invalid_query",
            format!("unknown query parameter {}", printable(name)),
        ));
    }
    let value = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let name = value("name").unwrap_or_default();
    if !valid_name(name) {
        return Err(Problem::new(
            400,
            "invalid_plugin_name",
            "name must match ^[a-z0-9][a-z0-9._-]{0,63}$",
        ));
    }
    let world = World::parse(value("world").unwrap_or_default()).ok_or_else(|| {
        Problem::new(
            400,
            "invalid_plugin_world",
            "world must be authorizer or credential-injector",
        )
    })?;
    let description = match value("description") {
        None | Some("") => None,
        Some(text) if text.chars().count() > MAX_DESCRIPTION_CHARS || text.contains('\0') => {
            return Err(Problem::new(
                400,
                "invalid_plugin_description",
                "description must be at most 4096 characters, without NUL",
            ));
        }
        Some(text) => Some(text.to_owned()),
    };
    Ok(Upload {
        name: name.to_owned(),
        world,
        description,
    })
}

/// 400 `invalid_plugin_component`: the host's reason in `error_description`.
pub fn invalid_component(world: World, reason: impl Into<String>) -> Problem {
    Problem::new(
        400,
        "invalid_plugin_component",
        format!("the body is not a WebAssembly component of world {world} of {WIT_PACKAGE}"),
    )
    .with_description(reason)
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

/// `GET …/plugins?status=active|archived|all`.
pub async fn list(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    req.only_query(&["status"])?;
    let listed = match req.query("status") {
        None | Some("" | "active") => Listed::Live,
        Some("archived") => Listed::Archived,
        Some("all") => Listed::All,
        Some(_) => {
            return Err(Problem::new(
                400,
                "invalid_query",
                "status must be active, archived or all",
            )
            .into());
        }
    };
    let page = req.page()?;
    let (mut tx, _) = open_zone(api, zone).await?;
    let rows = plugins::list(&mut tx, listed, &page).await?;
    tx.commit().await?;
    let answer = Page {
        items: rows.items.iter().map(PluginMetadata::from).collect(),
        next: rows.next,
    };
    Ok(Reply::Json(
        200,
        page_body(&answer, |plugin| to_value(plugin).unwrap_or_default()),
    ))
}

/// `POST …/plugins?name=&world=&description=` with the component as the body.
pub async fn create(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    let upload = check_upload(&req.query)?;
    let bytes = req.raw(WASM)?.clone();
    if bytes.is_empty() {
        return Err(invalid_component(upload.world, "the body is empty").into());
    }
    let compiled = match api.components.compile(upload.world, bytes.clone()).await? {
        Ok(compiled) => compiled,
        Err(refused) => return Err(invalid_component(upload.world, refused.to_string()).into()),
    };
    let digest = *compiled.digest();

    let (mut tx, zone_id) = open_zone(api, zone).await?;
    if let Some(existing) = plugins::with_digest(&mut tx, &digest).await? {
        return Err(already_registered(Some(&existing)).into());
    }
    if let Some(holder) = plugins::live_named(&mut tx, &upload.name).await? {
        return Err(name_taken(Some(&holder)).into());
    }
    let id = uuid::Uuid::now_v7().to_string();
    let inserted = plugins::insert(
        &mut tx,
        zone_id.as_str(),
        &NewPlugin {
            id: &id,
            name: &upload.name,
            world: upload.world.as_str(),
            wit_package: WIT_PACKAGE,
            component_sha256: &digest,
            component: &bytes,
            description: upload.description.as_deref(),
        },
        &req.principal.id,
    )
    .await;
    // A concurrent upload of the same bytes or name got there first.
    let row = match inserted {
        Ok(row) => row,
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            let digest_taken = db.constraint().is_some_and(|c| c.contains("sha256"));
            return Err(if digest_taken {
                already_registered(None)
            } else {
                name_taken(None)
            }
            .into());
        }
        Err(other) => return Err(other.into()),
    };
    let answer = PluginMetadata::from(&row);
    let payload = json!({
        "name": answer.name,
        "world": answer.world,
        "wit_package": answer.wit_package,
        "component_sha256": answer.component_sha256,
        "size_bytes": answer.size_bytes,
        "description": answer.description,
    });
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(zone_id.as_str(), "plugin", &id, 201, payload),
    )
    .await?;
    api.outbox.wake();
    Ok(Reply::Json(201, to_value(&answer)?))
}

fn already_registered(existing: Option<&str>) -> Problem {
    let problem = Problem::new(
        409,
        "plugin_already_registered",
        "a plugin of this zone already has this component",
    );
    match existing {
        Some(id) => problem.with_details(json!({ "plugin_id": id })),
        None => problem,
    }
}

fn name_taken(holder: Option<&str>) -> Problem {
    let problem = Problem::new(
        409,
        "plugin_name_taken",
        "a live plugin of this zone has this name",
    );
    match holder {
        Some(id) => problem.with_details(json!({ "plugin_id": id })),
        None => problem,
    }
}

/// `GET …/plugins/{id}`: live or archived.
pub async fn get(api: &Api, req: &AdminRequest, zone: &str, id: &str) -> Result<Reply, ApiError> {
    no_query(req)?;
    let (mut tx, _) = open_zone(api, zone).await?;
    let row = plugins::get(&mut tx, id)
        .await?
        .ok_or_else(|| Problem::not_found("plugin"))?;
    tx.commit().await?;
    Ok(Reply::Json(200, to_value(&PluginMetadata::from(&row))?))
}

/// `GET …/plugins/{id}/component`: the bytes as registered.
pub async fn component(
    api: &Api,
    req: &AdminRequest,
    zone: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    no_query(req)?;
    let (mut tx, _) = open_zone(api, zone).await?;
    let bytes = plugins::component(&mut tx, id)
        .await?
        .ok_or_else(|| Problem::not_found("plugin"))?;
    tx.commit().await?;
    Ok(Reply::Bytes(WASM, bytes::Bytes::from(bytes)))
}

/// `DELETE …/plugins/{id}`: archives a plugin no resource binds.
pub async fn delete(
    api: &Api,
    req: &AdminRequest,
    zone: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    no_query(req)?;
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    // Held until commit: a concurrent PUT of bindings (which reads the plugin FOR SHARE)
    // either finishes first, and its bindings are seen below, or sees the plugin archived.
    if !plugins::lock_live(&mut tx, id).await? {
        return Err(Problem::not_found("plugin").into());
    }
    let bound = plugins::bound_resources(&mut tx, id).await?;
    if !bound.is_empty() {
        return Err(Problem::new(
            409,
            "plugin_in_use",
            "resource bindings name this plugin; unbind it first",
        )
        .with_details(json!({ "resource_ids": bound }))
        .into());
    }
    if !admin::archive(&mut tx, Archivable::Plugin, id, &req.principal.id).await? {
        return Err(Problem::not_found("plugin").into());
    }
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(zone_id.as_str(), "plugin", id, 204, json!({})),
    )
    .await?;
    api.outbox.wake();
    Ok(Reply::NoContent)
}

const INVALID_QUERY: (u16, &str) = (400, "invalid_query");
const ZONE_NOT_FOUND: (u16, &str) = (404, "zone_not_found");
const PLUGIN_NOT_FOUND: (u16, &str) = (404, "plugin_not_found");

/// The area's operations.
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/plugins",
        op: "plugins.list",
        summary: "List the zone's plugins (metadata), newest first",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Page(schema_of::<PluginMetadata>),
        query: &[Param {
            name: "status",
            description: "active (default), archived or all",
        }],
        refusals: &[ZONE_NOT_FOUND],
    },
    Route {
        method: Method::POST,
        path: "/zones/{zone_id}/plugins",
        op: "plugins.create",
        summary: "Register a plugin: the raw WebAssembly component, checked against its world",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::Raw(RawBody {
            media_type: WASM,
            max_bytes: MAX_COMPONENT_BYTES,
            read_deadline: UPLOAD_READ_DEADLINE,
            description: "The WebAssembly component (not a core module) implementing the world, \
                          at most 32 MiB",
        }),
        answer: Answer::Json(201, schema_of::<PluginMetadata>),
        query: &[
            Param {
                name: "name",
                description: "required: ^[a-z0-9][a-z0-9._-]{0,63}$, unique among the zone's live plugins",
            },
            Param {
                name: "world",
                description: "required: authorizer or credential-injector",
            },
            Param {
                name: "description",
                description: "optional, at most 4096 characters",
            },
        ],
        refusals: &[
            INVALID_QUERY,
            (400, "invalid_plugin_name"),
            (400, "invalid_plugin_world"),
            (400, "invalid_plugin_description"),
            (400, "invalid_plugin_component"),
            ZONE_NOT_FOUND,
            (409, "plugin_already_registered"),
            (409, "plugin_name_taken"),
        ],
    },
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/plugins/{plugin_id}",
        op: "plugins.get",
        summary: "A plugin's metadata (live or archived)",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Json(200, schema_of::<PluginMetadata>),
        query: &[],
        refusals: &[INVALID_QUERY, ZONE_NOT_FOUND, PLUGIN_NOT_FOUND],
    },
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/plugins/{plugin_id}/component",
        op: "plugins.component",
        summary: "The plugin's component bytes, as registered",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Bytes(WASM),
        query: &[],
        refusals: &[INVALID_QUERY, ZONE_NOT_FOUND, PLUGIN_NOT_FOUND],
    },
    Route {
        method: Method::DELETE,
        path: "/zones/{zone_id}/plugins/{plugin_id}",
        op: "plugins.delete",
        summary: "Archive a plugin that no resource binds",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::NoContent,
        query: &[],
        refusals: &[
            INVALID_QUERY,
            ZONE_NOT_FOUND,
            PLUGIN_NOT_FOUND,
            (409, "plugin_in_use"),
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
        ("plugins.list", [z]) => list(api, req, z).await,
        ("plugins.create", [z]) => create(api, req, z).await,
        ("plugins.get", [z, id]) => get(api, req, z, id).await,
        ("plugins.component", [z, id]) => component(api, req, z, id).await,
        ("plugins.delete", [z, id]) => delete(api, req, z, id).await,
        _ => Err(unknown_op(op)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn code(pairs: &[(&str, &str)]) -> String {
        check_upload(&query(pairs))
            .err()
            .map(|p| p.code.into_owned())
            .unwrap_or_default()
    }

    #[test]
    fn names_follow_the_column_pattern() {
        let longest = format!("a{}", "b".repeat(63));
        for good in ["a", "0", "request-rules", "a.b_c-d", longest.as_str()] {
            assert!(valid_name(good), "{good}");
        }
        let too_long = format!("a{}", "b".repeat(64));
        for bad in [
            "",
            "-a",
            ".a",
            "_a",
            "A",
            "aB",
            "a b",
            "a/b",
            "é",
            too_long.as_str(),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn each_upload_query_rule_has_its_code() {
        let long = "x".repeat(4097);
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![("name", "guard"), ("world", "authorizer")], ""),
            (
                vec![
                    ("name", "guard"),
                    ("world", "credential-injector"),
                    ("description", "signs requests"),
                ],
                "",
            ),
            (vec![("world", "authorizer")], "invalid_plugin_name"),
            (
                vec![("name", "Guard"), ("world", "authorizer")],
                "invalid_plugin_name",
            ),
            (vec![("name", "guard")], "invalid_plugin_world"),
            (
                vec![("name", "guard"), ("world", "injector")],
                "invalid_plugin_world",
            ),
            (
                vec![
                    ("name", "guard"),
                    ("world", "authorizer"),
                    ("description", &long),
                ],
                "invalid_plugin_description",
            ),
            (
                vec![
                    ("name", "guard"),
                    ("world", "authorizer"),
                    ("description", "a\0b"),
                ],
                "invalid_plugin_description",
            ),
            (
                vec![("name", "guard"), ("world", "authorizer"), ("limit", "5")],
                "invalid_query",
            ),
        ];
        for (pairs, want) in cases {
            assert_eq!(code(&pairs), want, "{pairs:?}");
        }
    }

    #[test]
    fn a_description_of_exactly_4096_characters_is_kept() {
        let text = "é".repeat(4096);
        let upload = check_upload(&query(&[
            ("name", "guard"),
            ("world", "authorizer"),
            ("description", &text),
        ]))
        .unwrap();
        assert_eq!(upload.description.as_deref(), Some(text.as_str()));
        assert_eq!(upload.world, World::Authorizer);
    }
}
