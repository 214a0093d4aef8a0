//! `/v1/zones/{z}/policies` and `/v1/policies/validate`: adopter Rego documents, validated
//! against the contract's rules (authority §5.1) before anything is stored, kept as
//! immutable numbered versions.

use control_store::admin::{
    Archivable,
    policies::{self, NewPolicyVersion},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Reply, check_len, open_zone, to_value};
use crate::{
    audit::{self, Action},
    error::{ApiError, Problem},
    request::{AdminRequest, page_body},
    state::Api,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatePolicy {
    name: String,
    content: String,
    description: Option<String>,
    schema_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewVersion {
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
    let page = req.page()?;
    let (mut tx, _) = open_zone(api, zone).await?;
    let rows = policies::list(&mut tx, &page).await?;
    tx.commit().await?;
    Ok(Reply::Json(
        200,
        page_body(&rows, |row| to_value(row).unwrap_or_default()),
    ))
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
    Ok(Reply::Json(
        201,
        json!({
            "id": id, "version_id": version_id, "zone_id": zone_id.as_str(), "name": body.name,
            "description": body.description, "version": version, "content_sha256": sha,
            "schema_version": schema,
        }),
    ))
}

/// `GET …/policies/{id}` with every version.
pub async fn get(api: &Api, zone: &str, id: &str) -> Result<Reply, ApiError> {
    let (mut tx, _) = open_zone(api, zone).await?;
    let row = policies::get(&mut tx, id)
        .await?
        .ok_or_else(|| Problem::not_found("policy"))?;
    let versions = policies::versions(&mut tx, id).await?;
    tx.commit().await?;
    let mut value = to_value(&row)?;
    if let Some(map) = value.as_object_mut() {
        map.insert(
            "versions".to_owned(),
            Value::Array(
                versions
                    .iter()
                    .map(|v| to_value(v).unwrap_or_default())
                    .collect(),
            ),
        );
    }
    Ok(Reply::Json(200, value))
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
        json!({"version_id": version_id, "policy_id": id, "version": version, "content_sha256": sha, "schema_version": schema}),
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
    Ok(Reply::Json(
        200,
        match control_policy::validate_document(&body.content, schema) {
            Ok(()) => json!({"valid": true}),
            Err(e) => {
                json!({"valid": false, "error": "invalid_rego", "error_description": e.code()})
            }
        },
    ))
}
