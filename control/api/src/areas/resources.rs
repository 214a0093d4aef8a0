//! `/v1/zones/{z}/resources`: protected upstreams (wire-contract §6.3). Rows echo the stored
//! values verbatim (no URL normalisation, no derived scopes), so the 1.0 client's
//! `ensure_resource` converges. A resource with an `upstream_url` has a
//! `gateway_resource_bindings` row (created, re-keyed or removed here in the same
//! transaction); every write bumps `gateway_binding_revision` through the revision trigger,
//! which also enqueues the gateway's invalidation, and the outbox is woken after commit.
//!
//! Choices: a `credential_provider_id` that is not a live provider of the zone is 404
//! `provider_not_found`; the schema keeps `credential_provider_id NOT NULL`, so every resource
//! (the control resource included) names one, and `PATCH {"credential_provider_id": null}` is
//! 400 `credential_provider_required`. Only the control resource (identifier
//! `caracal-control`, the default `CONTROL_AUDIENCE`) may have no `upstream_url`.

use control_store::admin::Archivable;
use control_store::admin::{
    providers,
    resources::{self, ResourceOperation, ResourceRateLimit, ResourceRow, ResourceState},
};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use serde_json::json;

use http::Method;

use super::{
    Reply, open_zone,
    providers::{absolute_url_host, check_name, is_scope_token, slug},
    to_value, unique_or,
};
use crate::{
    audit::{self, Action},
    auth::Need,
    error::{ApiError, Problem},
    request::AdminRequest,
    routes::{Answer, RequestBody, Route, Scope, schema_of, unknown_op},
    state::Api,
};

/// The control resource's identifier (the default `CONTROL_AUDIENCE` of the STS).
pub const CONTROL_RESOURCE: &str = "caracal-control";
/// Scopes per resource.
const MAX_SCOPES: usize = 64;
/// Operations per resource.
const MAX_OPERATIONS: usize = 256;
/// The stored operations' size bound (the column's CHECK).
const MAX_OPERATIONS_BYTES: usize = 262_144;

/// One operation as submitted: `method` an HTTP method, `path` starting with `/`, `scope`
/// one of the resource's scopes.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OperationBody {
    method: String,
    path: String,
    scope: String,
}

impl From<OperationBody> for ResourceOperation {
    fn from(op: OperationBody) -> Self {
        ResourceOperation {
            method: op.method,
            path: op.path,
            scope: op.scope,
        }
    }
}

fn operations(body: Option<Vec<OperationBody>>) -> Option<Vec<ResourceOperation>> {
    body.map(|ops| ops.into_iter().map(ResourceOperation::from).collect())
}

/// A gateway rate limit as submitted: `window_seconds` 1..86400, `max_requests` > 0,
/// `key_by` `application` (default) or `resource`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitBody {
    window_seconds: i64,
    max_requests: i64,
    key_by: Option<String>,
}

/// Body of `POST …/resources`: `name` or `identifier` (default `resource://<slug of name>`);
/// `upstream_url` and `credential_provider_id` are required except that the control
/// resource needs no upstream; `operation_enforcement` defaults to `enforced`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateResource {
    name: Option<String>,
    identifier: Option<String>,
    upstream_url: Option<String>,
    scopes: Vec<String>,
    credential_provider_id: Option<String>,
    operations: Option<Vec<OperationBody>>,
    operation_enforcement: Option<String>,
    rate_limit: Option<RateLimitBody>,
}

/// A member that may be `null` on purpose: absent → `None`, `null` → `Some(None)`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Body of `PATCH …/resources/{id}`: every member optional; `upstream_url: null` clears the
/// upstream (control resource only), `rate_limit: null` removes the limit.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchResource {
    name: Option<String>,
    identifier: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schemars(with = "Option<String>")]
    upstream_url: Option<Option<String>>,
    scopes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schemars(with = "Option<String>")]
    credential_provider_id: Option<Option<String>>,
    operations: Option<Vec<OperationBody>>,
    operation_enforcement: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schemars(with = "Option<RateLimitBody>")]
    rate_limit: Option<Option<RateLimitBody>>,
}

/// A resource as it will be stored.
#[derive(Debug, Clone)]
struct Desired {
    name: String,
    identifier: String,
    upstream_url: Option<String>,
    scopes: Vec<String>,
    credential_provider_id: Option<String>,
    operations: Vec<ResourceOperation>,
    operation_enforcement: String,
}

impl Desired {
    fn state(&self) -> Result<ResourceState<'_>, Problem> {
        Ok(ResourceState {
            name: &self.name,
            identifier: &self.identifier,
            upstream_url: self.upstream_url.as_deref(),
            scopes: &self.scopes,
            credential_provider_id: self
                .credential_provider_id
                .as_deref()
                .ok_or_else(provider_required)?,
            operations: &self.operations,
            operation_enforcement: &self.operation_enforcement,
        })
    }

    fn audit(&self, rate_limit: Option<&ResourceRateLimit>) -> serde_json::Value {
        json!({
            "name": self.name,
            "identifier": self.identifier,
            "upstream_url": self.upstream_url,
            "scopes": self.scopes,
            "credential_provider_id": self.credential_provider_id,
            "operations": self.operations,
            "operation_enforcement": self.operation_enforcement,
            "rate_limit": rate_limit,
        })
    }
}

fn provider_required() -> Problem {
    Problem::new(
        400,
        "credential_provider_required",
        "a resource needs a credential_provider_id",
    )
}

fn identifier_conflict() -> Problem {
    Problem::new(
        409,
        "resource_identifier_conflict",
        "a live resource in this zone has this identifier",
    )
}

fn issue(code: &'static str, message: &'static str, path: String, why: &str) -> Problem {
    Problem::new(400, code, message)
        .with_details(json!({"issues": [{"path": path, "message": why}]}))
}

/// Printable ASCII without spaces, at most 512 characters, not a `provider:` URI, and no
/// userinfo when it is a URI.
fn valid_identifier(identifier: &str) -> bool {
    let userinfo = identifier.split_once("://").is_some_and(|(_, rest)| {
        rest.split(['/', '?', '#'])
            .next()
            .is_some_and(|authority| authority.contains('@'))
    });
    !identifier.is_empty()
        && identifier.len() <= 512
        && identifier.bytes().all(|b| b.is_ascii_graphic())
        && !identifier.to_ascii_lowercase().starts_with("provider:")
        && !userinfo
}

fn check_scopes(scopes: &[String]) -> Result<(), Problem> {
    const CODE: &str = "invalid_scopes";
    const MESSAGE: &str = "scopes are invalid";
    if scopes.is_empty() || scopes.len() > MAX_SCOPES {
        return Err(issue(
            CODE,
            MESSAGE,
            "scopes".to_owned(),
            "a resource has 1 to 64 scopes",
        ));
    }
    for (i, scope) in scopes.iter().enumerate() {
        if !is_scope_token(scope) {
            return Err(issue(
                CODE,
                MESSAGE,
                format!("scopes[{i}]"),
                "a scope is 1 to 256 printable characters without spaces, '\"' or '\\'",
            ));
        }
        if scopes[..i].contains(scope) {
            return Err(issue(
                CODE,
                MESSAGE,
                format!("scopes[{i}]"),
                "duplicate scope",
            ));
        }
    }
    Ok(())
}

fn check_operations(operations: &[ResourceOperation], scopes: &[String]) -> Result<(), Problem> {
    const CODE: &str = "invalid_operations";
    const MESSAGE: &str = "operations are invalid";
    if operations.len() > MAX_OPERATIONS {
        return Err(issue(
            CODE,
            MESSAGE,
            "operations".to_owned(),
            "a resource has at most 256 operations",
        ));
    }
    // Compact JSON plus the spaces Postgres prints after each `:` and `,` of an operation.
    let stored = serde_json::to_vec(operations).map_or(usize::MAX, |bytes| bytes.len());
    if stored.saturating_add(8 * operations.len()) > MAX_OPERATIONS_BYTES {
        return Err(issue(
            CODE,
            MESSAGE,
            "operations".to_owned(),
            "the operations take more than 256 KiB",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, op) in operations.iter().enumerate() {
        let method_ok = !op.method.is_empty()
            && op.method.len() <= 32
            && op
                .method
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !method_ok {
            return Err(issue(
                CODE,
                MESSAGE,
                format!("operations[{i}].method"),
                "must be an HTTP method",
            ));
        }
        let path_ok = op.path.starts_with('/')
            && op.path.len() <= 2048
            && !op
                .path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#');
        if !path_ok {
            return Err(issue(
                CODE,
                MESSAGE,
                format!("operations[{i}].path"),
                "must start with '/' and carry no query, fragment or whitespace",
            ));
        }
        if !scopes.contains(&op.scope) {
            return Err(issue(
                CODE,
                MESSAGE,
                format!("operations[{i}].scope"),
                "must be one of the resource's scopes",
            ));
        }
        if !seen.insert((op.method.to_ascii_uppercase(), op.path.as_str())) {
            return Err(issue(
                CODE,
                MESSAGE,
                format!("operations[{i}]"),
                "duplicate method and path",
            ));
        }
    }
    Ok(())
}

fn rate_limit(body: RateLimitBody) -> Result<ResourceRateLimit, Problem> {
    let window_seconds = i32::try_from(body.window_seconds)
        .ok()
        .filter(|w| (1..=86_400).contains(w))
        .ok_or_else(|| Problem::invalid_body("rate_limit.window_seconds", "must be 1 to 86400"))?;
    if body.max_requests < 1 {
        return Err(Problem::invalid_body(
            "rate_limit.max_requests",
            "must be at least 1",
        ));
    }
    let key_by = body.key_by.unwrap_or_else(|| "application".to_owned());
    if key_by != "application" && key_by != "resource" {
        return Err(Problem::invalid_body(
            "rate_limit.key_by",
            "must be application or resource",
        ));
    }
    Ok(ResourceRateLimit {
        window_seconds,
        max_requests: body.max_requests,
        key_by,
    })
}

/// Every rule of §6.3 on the resource as it would be stored.
fn check(desired: &Desired) -> Result<(), Problem> {
    check_name(&desired.name)?;
    if !valid_identifier(&desired.identifier) {
        return Err(Problem::new(
            400,
            "invalid_identifier",
            "identifier must be 1 to 512 printable characters without spaces, not a provider:// \
             identifier, and without userinfo",
        ));
    }
    check_scopes(&desired.scopes)?;
    check_operations(&desired.operations, &desired.scopes)?;
    if !matches!(
        desired.operation_enforcement.as_str(),
        "enforced" | "transport_uniform"
    ) {
        return Err(Problem::invalid_body(
            "operation_enforcement",
            "must be enforced or transport_uniform",
        ));
    }
    match &desired.upstream_url {
        Some(url) => {
            absolute_url_host(url, false).map_err(|why| {
                issue(
                    "invalid_upstream_url",
                    "upstream_url is invalid",
                    "upstream_url".to_owned(),
                    why,
                )
            })?;
        }
        None if desired.identifier != CONTROL_RESOURCE => {
            return Err(Problem::new(
                400,
                "upstream_url_required",
                "a resource other than the control resource needs an upstream_url",
            ));
        }
        None => {}
    }
    if desired.credential_provider_id.is_none() {
        return Err(provider_required());
    }
    Ok(())
}

/// `GET …/resources`.
pub async fn list(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    req.only_query(&[])?;
    super::zone_page(api, zone, &req.page()?, resources::list).await
}

/// `POST …/resources`.
pub async fn create(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    let body: CreateResource = req.json()?;
    let identifier = match (&body.identifier, &body.name) {
        (Some(identifier), _) => identifier.clone(),
        (None, Some(name)) => format!("resource://{}", slug(name, "resource")),
        (None, None) => {
            return Err(Problem::invalid_body("name", "name or identifier is required").into());
        }
    };
    let desired = Desired {
        name: body
            .name
            .clone()
            .unwrap_or_else(|| identifier.chars().take(256).collect()),
        identifier,
        upstream_url: body.upstream_url,
        scopes: body.scopes,
        credential_provider_id: body.credential_provider_id,
        operations: operations(body.operations).unwrap_or_default(),
        operation_enforcement: body
            .operation_enforcement
            .unwrap_or_else(|| "enforced".to_owned()),
    };
    check(&desired)?;
    let limit = body.rate_limit.map(rate_limit).transpose()?;
    let state = desired.state()?;

    let (mut tx, zone_id) = open_zone(api, zone).await?;
    if !providers::hold_live(&mut tx, state.credential_provider_id).await? {
        return Err(Problem::not_found("provider").into());
    }
    if resources::identifier_taken(&mut tx, state.identifier, None).await? {
        return Err(identifier_conflict().into());
    }
    let id = uuid::Uuid::now_v7().to_string();
    let actor = req.principal.id.as_str();
    unique_or(
        resources::insert(&mut tx, &id, zone_id.as_str(), &state, actor).await,
        identifier_conflict,
    )?;
    if state.upstream_url.is_some() {
        resources::bind(&mut tx, zone_id.as_str(), &id, state.identifier, actor).await?;
    }
    if let Some(limit) = &limit {
        resources::set_rate_limit(&mut tx, zone_id.as_str(), &id, limit, actor).await?;
    }
    let row = resources::get(&mut tx, &id)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("resource {id} vanished after insert")))?;
    let payload = desired.audit(limit.as_ref());
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(zone_id.as_str(), "resource", &id, 201, payload),
    )
    .await?;
    api.outbox.wake();
    Ok(Reply::Json(201, to_value(&row)?))
}

/// `GET …/resources/{id}`.
pub async fn get(api: &Api, zone: &str, id: &str) -> Result<Reply, ApiError> {
    super::zone_row(api, zone, "resource", async |c| resources::get(c, id).await).await
}

/// `PATCH …/resources/{id}` (partial).
pub async fn patch(api: &Api, req: &AdminRequest, zone: &str, id: &str) -> Result<Reply, ApiError> {
    let body: PatchResource = req.json()?;
    let limit = match body.rate_limit {
        None => None,
        Some(None) => Some(None),
        Some(Some(limit)) => Some(Some(rate_limit(limit)?)),
    };
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    let row = resources::lock(&mut tx, id)
        .await?
        .ok_or_else(|| Problem::not_found("resource"))?;
    let desired = Desired {
        name: body.name.unwrap_or_else(|| row.name.clone()),
        identifier: body.identifier.unwrap_or_else(|| row.identifier.clone()),
        upstream_url: body
            .upstream_url
            .unwrap_or_else(|| row.upstream_url.clone()),
        scopes: body.scopes.unwrap_or_else(|| row.scopes.clone()),
        credential_provider_id: body
            .credential_provider_id
            .unwrap_or_else(|| Some(row.credential_provider_id.clone())),
        operations: operations(body.operations).unwrap_or_else(|| row.operations.clone()),
        operation_enforcement: body
            .operation_enforcement
            .unwrap_or_else(|| row.operation_enforcement.clone()),
    };
    check(&desired)?;
    let state = desired.state()?;
    if state.credential_provider_id != row.credential_provider_id
        && !providers::hold_live(&mut tx, state.credential_provider_id).await?
    {
        return Err(Problem::not_found("provider").into());
    }
    let identifier_changed = state.identifier != row.identifier;
    if identifier_changed
        && resources::identifier_taken(&mut tx, state.identifier, Some(id)).await?
    {
        return Err(identifier_conflict().into());
    }
    let actor = req.principal.id.as_str();
    let updated = unique_or(
        resources::update(&mut tx, id, &state, actor).await,
        identifier_conflict,
    )?;
    if !updated {
        return Err(Problem::not_found("resource").into());
    }
    match (&row.upstream_url, state.upstream_url) {
        (None, Some(_)) => {
            resources::bind(&mut tx, zone_id.as_str(), id, state.identifier, actor).await?;
        }
        (Some(_), Some(_)) if identifier_changed => {
            resources::bind(&mut tx, zone_id.as_str(), id, state.identifier, actor).await?;
        }
        (Some(_), None) => resources::unbind(&mut tx, id).await?,
        _ => {}
    }
    match &limit {
        Some(Some(limit)) => {
            resources::set_rate_limit(&mut tx, zone_id.as_str(), id, limit, actor).await?;
        }
        Some(None) if row.rate_limit.is_some() => resources::clear_rate_limit(&mut tx, id).await?,
        _ => {}
    }
    let row = resources::get(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("resource {id} vanished after update")))?;
    let payload = desired.audit(row.rate_limit.as_ref());
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(zone_id.as_str(), "resource", id, 200, payload),
    )
    .await?;
    api.outbox.wake();
    Ok(Reply::Json(200, to_value(&row)?))
}

/// `DELETE …/resources/{id}`: archives it and makes it unroutable (its binding and rate
/// limit and plugin bindings are removed, so its identifier is free for a new resource).
pub async fn delete(
    api: &Api,
    req: &AdminRequest,
    zone: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    if !control_store::admin::archive(&mut tx, Archivable::Resource, id, &req.principal.id).await? {
        return Err(Problem::not_found("resource").into());
    }
    resources::unbind(&mut tx, id).await?;
    resources::clear_rate_limit(&mut tx, id).await?;
    // Its plugin hooks go with it (the gateway never sees bindings of an archived resource).
    control_store::admin::plugin_bindings::remove_all(&mut tx, id).await?;
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(zone_id.as_str(), "resource", id, 204, json!({})),
    )
    .await?;
    api.outbox.wake();
    Ok(Reply::NoContent)
}

const NOT_FOUND: (u16, &str) = (404, "resource_not_found");
const PROVIDER_NOT_FOUND: (u16, &str) = (404, "provider_not_found");
const CONFLICT: (u16, &str) = (409, "resource_identifier_conflict");
const RULES: [(u16, &str); 6] = [
    (400, "invalid_identifier"),
    (400, "invalid_scopes"),
    (400, "invalid_operations"),
    (400, "invalid_upstream_url"),
    (400, "upstream_url_required"),
    (400, "credential_provider_required"),
];

/// The area's operations (`POST …/{id}/test` is not served).
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/resources",
        op: "resources.list",
        summary: "List resources",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Page(schema_of::<ResourceRow>),
        query: &[],
        refusals: &[(404, "zone_not_found")],
    },
    Route {
        method: Method::POST,
        path: "/zones/{zone_id}/resources",
        op: "resources.create",
        summary: "Create a resource (routable at the gateway when it has an upstream)",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::Json(schema_of::<CreateResource>),
        answer: Answer::Json(201, schema_of::<ResourceRow>),
        query: &[],
        refusals: &[
            RULES[0],
            RULES[1],
            RULES[2],
            RULES[3],
            RULES[4],
            RULES[5],
            (404, "zone_not_found"),
            PROVIDER_NOT_FOUND,
            CONFLICT,
        ],
    },
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/resources/{resource_id}",
        op: "resources.get",
        summary: "Read a resource",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Json(200, schema_of::<ResourceRow>),
        query: &[],
        refusals: &[NOT_FOUND],
    },
    Route {
        method: Method::PATCH,
        path: "/zones/{zone_id}/resources/{resource_id}",
        op: "resources.patch",
        summary: "Change a resource (partial)",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::Json(schema_of::<PatchResource>),
        answer: Answer::Json(200, schema_of::<ResourceRow>),
        query: &[],
        refusals: &[
            RULES[0],
            RULES[1],
            RULES[2],
            RULES[3],
            RULES[4],
            RULES[5],
            NOT_FOUND,
            PROVIDER_NOT_FOUND,
            CONFLICT,
        ],
    },
    Route {
        method: Method::DELETE,
        path: "/zones/{zone_id}/resources/{resource_id}",
        op: "resources.delete",
        summary: "Archive a resource and make it unroutable",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::NoContent,
        query: &[],
        refusals: &[NOT_FOUND],
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
        ("resources.list", [z]) => list(api, req, z).await,
        ("resources.create", [z]) => create(api, req, z).await,
        ("resources.get", [z, id]) => get(api, z, id).await,
        ("resources.patch", [z, id]) => patch(api, req, z, id).await,
        ("resources.delete", [z, id]) => delete(api, req, z, id).await,
        _ => Err(unknown_op(op)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: &str, path: &str, scope: &str) -> ResourceOperation {
        ResourceOperation {
            method: method.to_owned(),
            path: path.to_owned(),
            scope: scope.to_owned(),
        }
    }

    fn code(result: Result<(), Problem>) -> String {
        result
            .err()
            .map(|p| p.code.into_owned())
            .unwrap_or_default()
    }

    #[test]
    fn identifiers_may_be_uris_or_names_but_not_providers_or_userinfo() {
        for good in [
            "resource://crm",
            "https://api.example.com/v1",
            "caracal-control",
            "urn:x:y",
        ] {
            assert!(valid_identifier(good), "{good}");
        }
        for bad in [
            "",
            "a b",
            "provider://x",
            "https://u:p@host/",
            &"x".repeat(513),
        ] {
            assert!(!valid_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn operations_follow_the_section_6_3_rules() {
        let scopes = vec!["read".to_owned(), "write".to_owned()];
        let cases = [
            (vec![op("GET", "/a", "read"), op("POST", "/a", "write")], ""),
            (vec![op("GET", "a", "read")], "invalid_operations"),
            (vec![op("GET", "/a?x=1", "read")], "invalid_operations"),
            (vec![op("GET", "/a", "admin")], "invalid_operations"),
            (
                vec![op("GET", "/a", "read"), op("get", "/a", "write")],
                "invalid_operations",
            ),
            (vec![op("G ET", "/a", "read")], "invalid_operations"),
        ];
        for (ops, want) in cases {
            assert_eq!(code(check_operations(&ops, &scopes)), want, "{ops:?}");
        }
        let many: Vec<_> = (0..257)
            .map(|i| op("GET", &format!("/{i}"), "read"))
            .collect();
        assert_eq!(code(check_operations(&many, &scopes)), "invalid_operations");
        assert_eq!(code(check_scopes(&[])), "invalid_scopes");
        assert_eq!(
            code(check_scopes(&["a".to_owned(), "a".to_owned()])),
            "invalid_scopes"
        );
        assert_eq!(code(check_scopes(&["a b".to_owned()])), "invalid_scopes");
    }

    #[test]
    fn upstream_urls_are_absolute_http_without_userinfo() {
        for good in [
            "http://127.0.0.1:9000",
            "https://api.example.com/v1/",
            "http://h/p?q=1",
        ] {
            assert!(absolute_url_host(good, false).is_ok(), "{good}");
        }
        for bad in [
            "ftp://h/",
            "/relative",
            "http://u:p@h/",
            "https://h/#frag",
            "http:// h/",
            "",
        ] {
            assert!(absolute_url_host(bad, false).is_err(), "{bad}");
        }
    }
}
