//! `/v1/zones/{z}/policies` and `/v1/policies/validate`: adopter Rego documents, validated
//! against the contract's rules (authority §5.1) before anything is stored, kept as
//! immutable numbered versions.

use control_store::admin::{
    Archivable,
    policies::{self, NewPolicyVersion, PolicyRow, PolicyVersionRow},
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use http::Method;

use super::{Reply, check_len, open_zone, to_value};
use crate::{
    audit::{self, Action},
    auth::Need,
    error::{ApiError, Problem},
    request::AdminRequest,
    routes::{Answer, RequestBody, Route, Scope, schema_of, unknown_op},
    state::Api,
};

/// Body of `POST …/policies`: `schema_version` defaults to the build's.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePolicy {
    /// Display name, 1 to 256 characters.
    #[schemars(length(min = 1, max = 256))]
    name: String,
    /// The Rego data document.
    #[schemars(length(max = 262_144))]
    content: String,
    /// Description, at most 4096 characters.
    #[schemars(length(max = 4096))]
    description: Option<String>,
    schema_version: Option<String>,
}

/// Body of `POST …/policies/{id}/versions` and `POST /policies/validate`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVersion {
    content: String,
    schema_version: Option<String>,
}

/// The document's schema version: the 1.0 client never sends one, so it defaults to the
/// version this build implements.
fn schema_version(declared: Option<&str>) -> &str {
    declared.unwrap_or(control_policy::SCHEMA_VERSION)
}

/// §5.1 validation; 422 `invalid_rego` with the description code.
fn validate(content: &str, schema: &str) -> Result<(), Problem> {
    control_policy::validate_document(content, schema).map_err(|e| {
        let code = e.code();
        Problem::new(422, "invalid_rego", "the policy document was rejected").with_description(code)
    })
}

/// `GET …/policies`.
pub async fn list(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    req.only_query(&[])?;
    super::zone_page(api, zone, &req.page()?, policies::list).await
}

/// `POST …/policies {name, content, description?, schema_version?}`.
pub async fn create(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    let body: CreatePolicy = req.json()?;
    check_len("name", &body.name, 1, 256)?;
    if let Some(d) = &body.description {
        check_len("description", d, 0, 4096)?;
    }
    let schema = schema_version(body.schema_version.as_deref());
    validate(&body.content, schema)?;
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    if policies::name_taken(&mut tx, &body.name).await? {
        return Err(Problem::new(
            409,
            "policy_name_taken",
            "a policy in this zone has this name",
        )
        .into());
    }
    let id = uuid::Uuid::now_v7().to_string();
    let version_id = uuid::Uuid::now_v7().to_string();
    let sha = control_policy::content_sha256(&body.content);
    policies::insert(
        &mut tx,
        &id,
        zone_id.as_str(),
        &body.name,
        body.description.as_deref(),
        &req.principal.id,
    )
    .await?;
    let version = policies::append_version(
        &mut tx,
        &NewPolicyVersion {
            id: &version_id,
            zone_id: zone_id.as_str(),
            policy_id: &id,
            content: &body.content,
            content_sha256: &sha,
            schema_version: schema,
            created_by: &req.principal.id,
        },
    )
    .await?;
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(zone_id.as_str(), "policy", &id, 201, json!({"name": body.name, "version_id": version_id, "version": version, "content_sha256": sha})),
    )
    .await?;
    let created = PolicyCreated {
        id,
        version_id,
        zone_id: zone_id.as_str().to_owned(),
        name: body.name,
        description: body.description,
        version,
        content_sha256: sha,
        schema_version: schema.to_owned(),
    };
    Ok(Reply::Json(201, to_value(&created)?))
}

/// `GET …/policies/{id}` with every version.
pub async fn get(api: &Api, zone: &str, id: &str) -> Result<Reply, ApiError> {
    let (mut tx, _) = open_zone(api, zone).await?;
    let row = policies::get(&mut tx, id)
        .await?
        .ok_or_else(|| Problem::not_found("policy"))?;
    let versions = policies::versions(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Reply::Json(200, to_value(&PolicyDetail { row, versions })?))
}

/// `POST …/policies/{id}/versions {content, schema_version?}`.
pub async fn add_version(
    api: &Api,
    req: &AdminRequest,
    zone: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    let body: NewVersion = req.json()?;
    let schema = schema_version(body.schema_version.as_deref());
    validate(&body.content, schema)?;
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    if policies::get(&mut tx, id).await?.is_none() {
        return Err(Problem::not_found("policy").into());
    }
    let version_id = uuid::Uuid::now_v7().to_string();
    let sha = control_policy::content_sha256(&body.content);
    let version = policies::append_version(
        &mut tx,
        &NewPolicyVersion {
            id: &version_id,
            zone_id: zone_id.as_str(),
            policy_id: id,
            content: &body.content,
            content_sha256: &sha,
            schema_version: schema,
            created_by: &req.principal.id,
        },
    )
    .await?;
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(
            zone_id.as_str(),
            "policy_version",
            &version_id,
            201,
            json!({"policy_id": id, "version": version, "content_sha256": sha}),
        ),
    )
    .await?;
    Ok(Reply::Json(
        201,
        to_value(&VersionCreated {
            version_id,
            policy_id: id.to_owned(),
            version,
            content_sha256: sha,
            schema_version: schema.to_owned(),
        })?,
    ))
}

/// `DELETE …/policies/{id}`: archives it (its versions stay, immutable).
pub async fn delete(
    api: &Api,
    req: &AdminRequest,
    zone: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    super::archive(api, req, zone, Archivable::Policy, "policy", id).await
}

/// `POST /v1/policies/validate {content, schema_version?}` → `{valid, error?, error_description?}`.
pub fn validate_only(req: &AdminRequest) -> Result<Reply, ApiError> {
    let body: NewVersion = req.json()?;
    let schema = schema_version(body.schema_version.as_deref());
    let outcome = match control_policy::validate_document(&body.content, schema) {
        Ok(()) => Validation {
            valid: true,
            error: None,
            error_description: None,
        },
        Err(e) => Validation {
            valid: false,
            error: Some("invalid_rego".to_owned()),
            error_description: Some(e.code()),
        },
    };
    Ok(Reply::Json(200, to_value(&outcome)?))
}

/// The answer to a policy creation.
#[derive(Debug, serde::Serialize, JsonSchema)]
pub struct PolicyCreated {
    /// Policy id.
    pub id: String,
    /// Its first version.
    pub version_id: String,
    /// Zone.
    pub zone_id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Version number (1).
    pub version: i32,
    /// Lowercase hex SHA-256 of the content.
    pub content_sha256: String,
    /// Schema version the document was validated against.
    pub schema_version: String,
}

/// A policy with every version.
#[derive(Debug, serde::Serialize, JsonSchema)]
pub struct PolicyDetail {
    /// The policy.
    #[serde(flatten)]
    pub row: PolicyRow,
    /// Versions, oldest first.
    pub versions: Vec<PolicyVersionRow>,
}

/// The answer to a new version.
#[derive(Debug, serde::Serialize, JsonSchema)]
pub struct VersionCreated {
    /// Version id.
    pub version_id: String,
    /// Policy.
    pub policy_id: String,
    /// Version number.
    pub version: i32,
    /// Lowercase hex SHA-256 of the content.
    pub content_sha256: String,
    /// Schema version.
    pub schema_version: String,
}

/// The answer of `POST /v1/policies/validate`.
#[derive(Debug, serde::Serialize, JsonSchema)]
pub struct Validation {
    /// Whether the document is acceptable.
    pub valid: bool,
    /// `invalid_rego` when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The §5.1 description code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

const INVALID_REGO: (u16, &str) = (422, "invalid_rego");

/// The area's operations.
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/policies",
        op: "policies.list",
        summary: "List policies",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Page(schema_of::<PolicyRow>),
        query: &[],
        refusals: &[(404, "zone_not_found")],
    },
    Route {
        method: Method::POST,
        path: "/zones/{zone_id}/policies",
        op: "policies.create",
        summary: "Create a policy from a validated document",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::Json(schema_of::<CreatePolicy>),
        answer: Answer::Json(201, schema_of::<PolicyCreated>),
        query: &[],
        refusals: &[
            (404, "zone_not_found"),
            (409, "policy_name_taken"),
            INVALID_REGO,
        ],
    },
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/policies/{policy_id}",
        op: "policies.get",
        summary: "Read a policy and its versions",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Json(200, schema_of::<PolicyDetail>),
        query: &[],
        refusals: &[(404, "policy_not_found")],
    },
    Route {
        method: Method::DELETE,
        path: "/zones/{zone_id}/policies/{policy_id}",
        op: "policies.delete",
        summary: "Archive a policy",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::NoContent,
        query: &[],
        refusals: &[(404, "policy_not_found")],
    },
    Route {
        method: Method::POST,
        path: "/zones/{zone_id}/policies/{policy_id}/versions",
        op: "policies.add_version",
        summary: "Add a validated version",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::Json(schema_of::<NewVersion>),
        answer: Answer::Json(201, schema_of::<VersionCreated>),
        query: &[],
        refusals: &[(404, "policy_not_found"), INVALID_REGO],
    },
    Route {
        method: Method::POST,
        path: "/policies/validate",
        op: "policies.validate",
        summary: "Validate a document without storing it",
        need: Need::Read,
        scope: Scope::Any,
        body: RequestBody::Json(schema_of::<NewVersion>),
        answer: Answer::Json(200, schema_of::<Validation>),
        query: &[],
        refusals: &[],
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
        ("policies.list", [z]) => list(api, req, z).await,
        ("policies.create", [z]) => create(api, req, z).await,
        ("policies.get", [z, id]) => get(api, z, id).await,
        ("policies.delete", [z, id]) => delete(api, req, z, id).await,
        ("policies.add_version", [z, id]) => add_version(api, req, z, id).await,
        ("policies.validate", []) => validate_only(req),
        _ => Err(unknown_op(op)),
    }
}
