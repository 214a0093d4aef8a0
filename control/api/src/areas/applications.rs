//! `/v1/zones/{z}/applications`: the STS's OAuth clients. Secrets are generated (`cs_` + 43
//! base64url characters) or, on PATCH, chosen by the caller; only their Argon2id hash is
//! stored, so a secret is shown once and never again. A new hash takes effect at once: the
//! STS's verification cache is keyed by the stored hash.

use control_store::admin::{
    Archivable,
    applications::{self, AdminApplicationRow, ApplicationPatch, NewApplication},
    zones,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use http::Method;

use super::{Reply, check_len, hash_secret, open_zone, random_credential, to_value, unique_or};
use crate::{
    audit::{self, Action},
    auth::Need,
    error::{ApiError, Problem},
    request::AdminRequest,
    routes::{Answer, RequestBody, Route, Scope, schema_of, unknown_op},
    state::Api,
};

/// Traits per application, and their length.
const MAX_TRAITS: usize = 32;
const MAX_TRAIT_LEN: usize = 128;
/// A caller-chosen secret: 16 to 512 printable ASCII characters.
const MIN_SECRET: usize = 16;
const MAX_SECRET: usize = 512;
/// DCR application lifetime bounds, seconds.
const DCR_DEFAULT_TTL: i64 = 86_400;
const DCR_MAX_TTL: i64 = 30 * 86_400;

/// Body of `POST …/applications`: `registration_method` may only be `managed`; at most 32 traits.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApplication {
    /// Display name, 1 to 256 characters.
    #[schemars(length(min = 1, max = 256))]
    name: String,
    /// Only `managed`.
    #[schemars(regex(pattern = r"^managed$"))]
    registration_method: Option<String>,
    /// Traits (at most 32, each 1 to 128 printable ASCII characters).
    #[schemars(length(max = 32), inner(regex(pattern = r"^[!-~]{1,128}$")))]
    traits: Option<Vec<String>>,
}

/// Body of `PATCH …/applications/{id}`: `client_secret` (16–512 printable ASCII) replaces the secret.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchApplication {
    /// Display name, 1 to 256 characters.
    #[schemars(length(min = 1, max = 256))]
    name: Option<String>,
    /// A new secret chosen by the caller: 16 to 512 printable ASCII characters.
    #[schemars(regex(pattern = r"^[!-~]{16,512}$"))]
    client_secret: Option<String>,
    /// Traits (at most 32, each 1 to 128 printable ASCII characters).
    #[schemars(length(max = 32), inner(regex(pattern = r"^[!-~]{1,128}$")))]
    traits: Option<Vec<String>>,
}

/// Body of `POST …/applications/dcr`: `expires_in` is 60 s to 30 days (default 1 day).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDcr {
    /// Display name, 1 to 256 characters.
    #[schemars(length(min = 1, max = 256))]
    name: String,
    /// Lifetime in seconds (default 86400).
    #[schemars(range(min = 60, max = 2_592_000))]
    expires_in: Option<i64>,
}

fn check_traits(traits: &[String]) -> Result<(), Problem> {
    if traits.len() > MAX_TRAITS {
        return Err(Problem::invalid_body(
            "traits",
            format!("at most {MAX_TRAITS} traits"),
        ));
    }
    for t in traits {
        if t.is_empty() || t.len() > MAX_TRAIT_LEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Problem::invalid_body(
                "traits",
                format!("each trait is 1 to {MAX_TRAIT_LEN} printable ASCII characters"),
            ));
        }
    }
    Ok(())
}

fn name_taken() -> Problem {
    Problem::new(
        409,
        "application_name_taken",
        "a live application in this zone has this name",
    )
}

/// An application with its secret, in the one answer that shows it.
#[derive(Debug, serde::Serialize, JsonSchema)]
pub struct ApplicationWithSecret {
    /// The row.
    #[serde(flatten)]
    pub row: AdminApplicationRow,
    /// The client secret; shown only here.
    pub client_secret: String,
}

fn with_secret(row: AdminApplicationRow, secret: &str) -> Result<Value, ApiError> {
    to_value(&ApplicationWithSecret {
        row,
        client_secret: secret.to_owned(),
    })
}

/// `GET …/applications?status=active|archived`.
pub async fn list(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    req.only_query(&["status"])?;
    let archived = match req.query("status") {
        None | Some("active") => false,
        Some("archived") => true,
        Some(_) => {
            return Err(
                Problem::new(400, "invalid_query", "status must be active or archived").into(),
            );
        }
    };
    super::zone_page(api, zone, &req.page()?, async |c, p| {
        applications::list(c, archived, p).await
    })
    .await
}

/// `POST …/applications`.
pub async fn create(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    let body: CreateApplication = req.json()?;
    check_len("name", &body.name, 1, 256)?;
    if body
        .registration_method
        .as_deref()
        .is_some_and(|m| m != "managed")
    {
        return Err(Problem::invalid_body(
            "registration_method",
            "must be managed (DCR applications are created through …/applications/dcr)",
        )
        .into());
    }
    let traits = body.traits.unwrap_or_default();
    check_traits(&traits)?;
    create_row(api, req, zone, &body.name, "managed", &traits, None).await
}

/// `POST …/applications/dcr` (needs `dcr_enabled`).
pub async fn create_dcr(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    let body: CreateDcr = req.json()?;
    check_len("name", &body.name, 1, 256)?;
    let ttl = body.expires_in.unwrap_or(DCR_DEFAULT_TTL);
    if !(60..=DCR_MAX_TTL).contains(&ttl) {
        return Err(Problem::invalid_body(
            "expires_in",
            format!("must be 60 to {DCR_MAX_TTL} seconds"),
        )
        .into());
    }
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(ttl);
    create_row(api, req, zone, &body.name, "dcr", &[], Some(expires_at)).await
}

async fn create_row(
    api: &Api,
    req: &AdminRequest,
    zone: &str,
    name: &str,
    method: &str,
    traits: &[String],
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Reply, ApiError> {
    let secret = random_credential("cs_")?;
    let hash = hash_secret(api, &secret).await?;
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    if method == "dcr" {
        let dcr_enabled = zones::get(&mut tx, zone_id.as_str())
            .await?
            .is_some_and(|z| z.dcr_enabled);
        if !dcr_enabled {
            return Err(Problem::new(
                403,
                "dcr_disabled",
                "dynamic client registration is disabled in this zone",
            )
            .into());
        }
    }
    if applications::name_taken(&mut tx, name, None).await? {
        return Err(name_taken().into());
    }
    let id = uuid::Uuid::now_v7().to_string();
    let row = unique_or(
        applications::insert(
            &mut tx,
            &NewApplication {
                id: &id,
                zone_id: zone_id.as_str(),
                name,
                registration_method: method,
                client_secret_hash: &hash,
                traits,
                expires_at,
                created_by: &req.principal.id,
            },
        )
        .await,
        name_taken,
    )?;
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(
            zone_id.as_str(),
            "application",
            &id,
            201,
            json!({"name": name, "registration_method": method, "traits": traits}),
        ),
    )
    .await?;
    Ok(Reply::Json(201, with_secret(row, &secret)?))
}

/// `GET …/applications/{id}`.
pub async fn get(api: &Api, zone: &str, id: &str) -> Result<Reply, ApiError> {
    super::zone_row(api, zone, "application", async |c| {
        applications::get(c, id).await
    })
    .await
}

/// `PATCH …/applications/{id}`: name, traits, or a caller-chosen secret.
pub async fn patch(api: &Api, req: &AdminRequest, zone: &str, id: &str) -> Result<Reply, ApiError> {
    let body: PatchApplication = req.json()?;
    if let Some(name) = &body.name {
        check_len("name", name, 1, 256)?;
    }
    if let Some(traits) = &body.traits {
        check_traits(traits)?;
    }
    let hash = match &body.client_secret {
        Some(secret) => {
            if secret.len() < MIN_SECRET
                || secret.len() > MAX_SECRET
                || !secret.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(Problem::invalid_body(
                    "client_secret",
                    format!("must be {MIN_SECRET} to {MAX_SECRET} printable ASCII characters"),
                )
                .into());
            }
            Some(hash_secret(api, secret).await?)
        }
        None => None,
    };
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    if let Some(name) = &body.name
        && applications::name_taken(&mut tx, name, Some(id)).await?
    {
        return Err(name_taken().into());
    }
    let patch = ApplicationPatch {
        name: body.name.as_deref(),
        client_secret_hash: hash.as_deref(),
        traits: body.traits.as_deref(),
    };
    let row = applications::update(&mut tx, id, &patch, &req.principal.id)
        .await?
        .ok_or_else(|| Problem::not_found("application"))?;
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(
            zone_id.as_str(),
            "application",
            id,
            200,
            json!({
                "name": body.name,
                "traits": body.traits,
                "client_secret_changed": body.client_secret.is_some(),
            }),
        ),
    )
    .await?;
    Ok(Reply::Json(200, to_value(&row)?))
}

/// `POST …/applications/{id}/rotate-secret`: a new generated secret, shown once.
pub async fn rotate(
    api: &Api,
    req: &AdminRequest,
    zone: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    let secret = random_credential("cs_")?;
    let hash = hash_secret(api, &secret).await?;
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    let patch = ApplicationPatch {
        client_secret_hash: Some(&hash),
        ..ApplicationPatch::default()
    };
    let row = applications::update(&mut tx, id, &patch, &req.principal.id)
        .await?
        .ok_or_else(|| Problem::not_found("application"))?;
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(
            zone_id.as_str(),
            "application",
            id,
            200,
            json!({"client_secret_changed": true}),
        ),
    )
    .await?;
    Ok(Reply::Json(200, with_secret(row, &secret)?))
}

/// `GET …/applications/{id}/client-secret`: secrets are stored as Argon2id hashes only, so
/// there is nothing to reveal (decision 0018): 404 for an unknown application, else 409
/// `client_secret_not_retrievable`.
pub async fn reveal(api: &Api, zone: &str, id: &str) -> Result<Reply, ApiError> {
    let (mut tx, _) = open_zone(api, zone).await?;
    let found = applications::get(&mut tx, id).await?.is_some();
    tx.commit().await?;
    if !found {
        return Err(Problem::not_found("application").into());
    }
    Err(Problem::new(
        409,
        "client_secret_not_retrievable",
        "client secrets are stored as one-way hashes; rotate the secret to get a new one",
    )
    .into())
}

/// `DELETE …/applications/{id}`: archives it (its secret stops working at once).
pub async fn delete(
    api: &Api,
    req: &AdminRequest,
    zone: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    super::archive(api, req, zone, Archivable::Application, "application", id).await
}

/// The area's operations.
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/applications",
        op: "applications.list",
        summary: "List applications",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Page(schema_of::<AdminApplicationRow>),
        query: &[crate::routes::Param {
            name: "status",
            description: "active (default) or archived",
        }],
        refusals: &[(404, "zone_not_found")],
    },
    Route {
        method: Method::POST,
        path: "/zones/{zone_id}/applications",
        op: "applications.create",
        summary: "Create a managed application; the answer carries its secret once",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::Json(schema_of::<CreateApplication>),
        answer: Answer::Json(201, schema_of::<ApplicationWithSecret>),
        query: &[],
        refusals: &[(404, "zone_not_found"), (409, "application_name_taken")],
    },
    Route {
        method: Method::POST,
        path: "/zones/{zone_id}/applications/dcr",
        op: "applications.dcr",
        summary: "Register a dynamic client",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::Json(schema_of::<CreateDcr>),
        answer: Answer::Json(201, schema_of::<ApplicationWithSecret>),
        query: &[],
        refusals: &[
            (403, "dcr_disabled"),
            (404, "zone_not_found"),
            (409, "application_name_taken"),
        ],
    },
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/applications/{application_id}",
        op: "applications.get",
        summary: "Read an application",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Json(200, schema_of::<AdminApplicationRow>),
        query: &[],
        refusals: &[(404, "application_not_found")],
    },
    Route {
        method: Method::PATCH,
        path: "/zones/{zone_id}/applications/{application_id}",
        op: "applications.patch",
        summary: "Change an application (name, traits, or a chosen secret)",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::Json(schema_of::<PatchApplication>),
        answer: Answer::Json(200, schema_of::<AdminApplicationRow>),
        query: &[],
        refusals: &[
            (404, "application_not_found"),
            (409, "application_name_taken"),
        ],
    },
    Route {
        method: Method::DELETE,
        path: "/zones/{zone_id}/applications/{application_id}",
        op: "applications.delete",
        summary: "Archive an application",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::NoContent,
        query: &[],
        refusals: &[(404, "application_not_found")],
    },
    Route {
        method: Method::POST,
        path: "/zones/{zone_id}/applications/{application_id}/rotate-secret",
        op: "applications.rotate_secret",
        summary: "Replace the secret with a generated one",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Json(200, schema_of::<ApplicationWithSecret>),
        query: &[],
        refusals: &[(404, "application_not_found")],
    },
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/applications/{application_id}/client-secret",
        op: "applications.client_secret",
        summary: "Always refused: secrets are stored one-way",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::NoContent,
        query: &[],
        refusals: &[
            (404, "application_not_found"),
            (409, "client_secret_not_retrievable"),
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
        ("applications.list", [z]) => list(api, req, z).await,
        ("applications.create", [z]) => create(api, req, z).await,
        ("applications.dcr", [z]) => create_dcr(api, req, z).await,
        ("applications.get", [z, id]) => get(api, z, id).await,
        ("applications.patch", [z, id]) => patch(api, req, z, id).await,
        ("applications.delete", [z, id]) => delete(api, req, z, id).await,
        ("applications.rotate_secret", [z, id]) => rotate(api, req, z, id).await,
        ("applications.client_secret", [z, id]) => reveal(api, z, id).await,
        _ => Err(unknown_op(op)),
    }
}
