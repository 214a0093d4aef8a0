//! `/v1/zones`: create, list, read, patch, archive, DCR status.

use control_store::{
    admin::{
        Archivable,
        zones::{self, NewZone, ZonePatch, ZoneRow},
    },
    zone::zone_tx,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use http::Method;

use super::{Reply, check_len, open_zone, to_value, unique_or};
use crate::{
    audit::{self, Action},
    auth::Need,
    error::{ApiError, Problem},
    request::{AdminRequest, page_body},
    routes::{Answer, RequestBody, Route, Scope, schema_of, unknown_op},
    state::Api,
};

/// Body of `POST /zones`: `slug` matches `^[a-z0-9-]{1,63}$` (default: from the name).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateZone {
    /// Display name, 1 to 256 characters.
    #[schemars(length(min = 1, max = 256))]
    name: String,
    /// Unique slug; default: from the name.
    #[schemars(regex(pattern = r"^[a-z0-9-]{1,63}$"))]
    slug: Option<String>,
    /// Allow dynamic client registration (default false).
    dcr_enabled: Option<bool>,
}

/// Body of `PATCH /zones/{id}`: `dcr_shutdown` is keep_live or revoke_live.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchZone {
    /// Display name, 1 to 256 characters.
    #[schemars(length(min = 1, max = 256))]
    name: Option<String>,
    /// Unique slug.
    #[schemars(regex(pattern = r"^[a-z0-9-]{1,63}$"))]
    slug: Option<String>,
    /// Allow dynamic client registration.
    dcr_enabled: Option<bool>,
    /// What happens to live DCR sessions when DCR is turned off.
    #[schemars(regex(pattern = r"^(keep_live|revoke_live)$"))]
    dcr_shutdown: Option<String>,
    operator_coauthor_badge: Option<bool>,
    operator_governed: Option<bool>,
}

fn valid_slug(slug: &str) -> bool {
    (1..=63).contains(&slug.len())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The slug a name gets when none is given: lower-case alphanumeric runs joined by `-`.
fn slug_of(name: &str) -> String {
    let mut slug = String::new();
    for word in name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !slug.is_empty() {
            slug.push('-');
        }
        slug.push_str(&word.to_ascii_lowercase());
    }
    slug.truncate(63);
    let slug = slug.trim_end_matches('-').to_owned();
    if slug.is_empty() {
        "zone".to_owned()
    } else {
        slug
    }
}

fn slug_conflict() -> Problem {
    Problem::new(409, "zone_slug_conflict", "another zone has this slug")
}

/// `GET /zones` (a zone token sees its own zone only).
pub async fn list(api: &Api, req: &AdminRequest) -> Result<Reply, ApiError> {
    req.only_query(&[])?;
    let page = req.page()?;
    let mut read = control_store::zone::cross_zone_read(&api.pool).await?;
    let rows = zones::list(&mut read, req.principal.zone.as_deref(), &page).await?;
    read.finish().await?;
    Ok(Reply::Json(
        200,
        page_body(&rows, |row| to_value(row).unwrap_or_default()),
    ))
}

/// `POST /zones`.
pub async fn create(api: &Api, req: &AdminRequest) -> Result<Reply, ApiError> {
    let body: CreateZone = req.json()?;
    check_len("name", &body.name, 1, 256)?;
    let slug = match body.slug {
        Some(slug) if valid_slug(&slug) => slug,
        Some(_) => {
            return Err(
                Problem::new(400, "invalid_slug", "slug must match ^[a-z0-9-]{1,63}$").into(),
            );
        }
        None => slug_of(&body.name),
    };
    let id = uuid::Uuid::now_v7().to_string();
    let zone_id =
        control_model::ZoneId::parse(&id).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut tx = zone_tx(&api.pool, &zone_id).await?;
    if zones::slug_taken(&mut tx, &slug, None).await? {
        return Err(slug_conflict().into());
    }
    let row = unique_or(
        zones::insert(
            &mut tx,
            &NewZone {
                id: &id,
                name: &body.name,
                slug: &slug,
                dcr_enabled: body.dcr_enabled.unwrap_or(false),
                created_by: &req.principal.id,
            },
        )
        .await,
        slug_conflict,
    )?;
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(
            &id,
            "zone",
            &id,
            201,
            json!({"name": row.name, "slug": row.slug, "dcr_enabled": row.dcr_enabled}),
        ),
    )
    .await?;
    Ok(Reply::Json(201, to_value(&row)?))
}

/// `GET /zones/{z}`.
pub async fn get(api: &Api, zone: &str) -> Result<Reply, ApiError> {
    let (mut tx, id) = open_zone(api, zone).await?;
    let row = zones::get(&mut tx, id.as_str())
        .await?
        .ok_or_else(|| Problem::not_found("zone"))?;
    tx.commit().await?;
    Ok(Reply::Json(200, to_value(&row)?))
}

/// `PATCH /zones/{z}`.
pub async fn patch(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    let body: PatchZone = req.json()?;
    if let Some(name) = &body.name {
        check_len("name", name, 1, 256)?;
    }
    if let Some(slug) = &body.slug
        && !valid_slug(slug)
    {
        return Err(Problem::new(400, "invalid_slug", "slug must match ^[a-z0-9-]{1,63}$").into());
    }
    if let Some(mode) = &body.dcr_shutdown
        && mode != "keep_live"
        && mode != "revoke_live"
    {
        return Err(
            Problem::invalid_body("dcr_shutdown", "must be keep_live or revoke_live").into(),
        );
    }
    let (mut tx, id) = open_zone(api, zone).await?;
    if let Some(slug) = &body.slug
        && zones::slug_taken(&mut tx, slug, Some(id.as_str())).await?
    {
        return Err(slug_conflict().into());
    }
    let patch = ZonePatch {
        name: body.name.as_deref(),
        slug: body.slug.as_deref(),
        dcr_enabled: body.dcr_enabled,
        dcr_shutdown: body.dcr_shutdown.as_deref(),
        operator_coauthor_badge: body.operator_coauthor_badge,
        operator_governed: body.operator_governed,
    };
    let row = zones::update(&mut tx, id.as_str(), &patch, &req.principal.id)
        .await?
        .ok_or_else(|| Problem::not_found("zone"))?;
    audit::record(
        api,
        &mut tx,
        req,
        Action {
            zone: Some(id.as_str()),
            entity_type: "zone",
            entity_id: Some(id.as_str()),
            status: 200,
            payload: json!({
                "name": body.name, "slug": body.slug, "dcr_enabled": body.dcr_enabled,
                "dcr_shutdown": body.dcr_shutdown,
                "operator_coauthor_badge": body.operator_coauthor_badge,
                "operator_governed": body.operator_governed,
            }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Reply::Json(200, to_value(&row)?))
}

/// `DELETE /zones/{z}`: archives the zone.
pub async fn delete(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    super::archive(api, req, zone, Archivable::Zone, "zone", zone).await
}

/// `GET /zones/{z}/dcr-status`.
pub async fn dcr_status(api: &Api, zone: &str) -> Result<Reply, ApiError> {
    let (mut tx, id) = open_zone(api, zone).await?;
    let row = zones::get(&mut tx, id.as_str())
        .await?
        .ok_or_else(|| Problem::not_found("zone"))?;
    tx.commit().await?;
    let status = DcrStatus {
        zone_id: row.id,
        dcr_enabled: row.dcr_enabled,
        dcr_shutdown: row.dcr_shutdown,
    };
    Ok(Reply::Json(200, to_value(&status)?))
}

/// `GET /zones/{z}/dcr-status`.
#[derive(Debug, serde::Serialize, JsonSchema)]
pub struct DcrStatus {
    /// Zone.
    pub zone_id: String,
    /// DCR allowed.
    pub dcr_enabled: bool,
    /// What happens to live DCR sessions when DCR is turned off.
    pub dcr_shutdown: Option<String>,
}

/// The area's operations.
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/zones",
        op: "zones.list",
        summary: "List zones (a zone token sees its own)",
        need: Need::Read,
        scope: Scope::Any,
        body: RequestBody::None,
        answer: Answer::Page(schema_of::<ZoneRow>),
        query: &[],
        refusals: &[],
    },
    Route {
        method: Method::POST,
        path: "/zones",
        op: "zones.create",
        summary: "Create a zone",
        need: Need::Write,
        scope: Scope::Global,
        body: RequestBody::Json(schema_of::<CreateZone>),
        answer: Answer::Json(201, schema_of::<ZoneRow>),
        query: &[],
        refusals: &[(400, "invalid_slug"), (409, "zone_slug_conflict")],
    },
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}",
        op: "zones.get",
        summary: "Read a zone",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Json(200, schema_of::<ZoneRow>),
        query: &[],
        refusals: &[(404, "zone_not_found")],
    },
    Route {
        method: Method::PATCH,
        path: "/zones/{zone_id}",
        op: "zones.patch",
        summary: "Change a zone",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::Json(schema_of::<PatchZone>),
        answer: Answer::Json(200, schema_of::<ZoneRow>),
        query: &[],
        refusals: &[
            (400, "invalid_slug"),
            (404, "zone_not_found"),
            (409, "zone_slug_conflict"),
        ],
    },
    Route {
        method: Method::DELETE,
        path: "/zones/{zone_id}",
        op: "zones.delete",
        summary: "Archive a zone",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::NoContent,
        query: &[],
        refusals: &[(404, "zone_not_found")],
    },
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/dcr-status",
        op: "zones.dcr_status",
        summary: "Dynamic client registration status",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Json(200, schema_of::<DcrStatus>),
        query: &[],
        refusals: &[(404, "zone_not_found")],
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
        ("zones.list", []) => list(api, req).await,
        ("zones.create", []) => create(api, req).await,
        ("zones.get", [z]) => get(api, z).await,
        ("zones.patch", [z]) => patch(api, req, z).await,
        ("zones.delete", [z]) => delete(api, req, z).await,
        ("zones.dcr_status", [z]) => dcr_status(api, z).await,
        _ => Err(unknown_op(op)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_derived_from_names_and_validated() {
        assert_eq!(slug_of("Acme Payments, EU!"), "acme-payments-eu");
        assert_eq!(slug_of("***"), "zone");
        assert!(valid_slug(&slug_of(&"x".repeat(100))));
        assert!(valid_slug("a-1"));
        assert!(!valid_slug("A"));
        assert!(!valid_slug(""));
        assert!(!valid_slug(&"a".repeat(64)));
    }
}
