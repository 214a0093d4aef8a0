//! The agent service registry (`/zones/{z}/services`): register (or update) a service of
//! an application, read, set its health, deregister. A session heartbeat that names a
//! service stores the service's health and heartbeat too ([`heartbeat_service`]).
//! A service another application owns answers 404 `service_not_found` to writes, like one
//! that does not exist; every agent of the zone may read the registry.

use control_store::{
    applications,
    coordinator::services::{self, NewService, ServiceRow},
    zone::{ZoneTx, zone_snapshot, zone_tx},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    auth::Caller,
    error::{CoordError, Problem, refuse},
    request::{CoordRequest, Reply},
    state::Coordinator,
    views,
};

/// The health values a service reports.
pub const HEALTH: [&str; 4] = ["starting", "healthy", "degraded", "unhealthy"];
/// The longest endpoint URL.
const MAX_URL: usize = 2048;
/// Entries of `protocol_versions` and `capabilities`, and characters per entry.
const MAX_LIST: usize = 64;
const MAX_ENTRY: usize = 128;
/// The largest metadata object, serialised.
const MAX_METADATA_BYTES: usize = 65_536;

/// Body of `POST /zones/{z}/services`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    application_id: String,
    endpoint_url: String,
    protocol_versions: Option<Vec<String>>,
    framework_name: Option<String>,
    framework_version: Option<String>,
    capabilities: Option<Vec<String>>,
    metadata: Option<Value>,
}

fn check_list(field: &str, list: &[String]) -> Result<(), Problem> {
    if list.len() > MAX_LIST
        || list
            .iter()
            .any(|e| e.is_empty() || e.chars().count() > MAX_ENTRY)
    {
        return Err(Problem::invalid_body(
            field,
            "at most 64 entries of 1 to 128 characters",
        ));
    }
    Ok(())
}

fn check_register(body: &RegisterBody) -> Result<(), Problem> {
    let url_ok = body.endpoint_url.len() <= MAX_URL
        && url::Url::parse(&body.endpoint_url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    if !url_ok {
        return Err(Problem::invalid_body(
            "endpoint_url",
            "must be an http(s) URL of at most 2048 bytes",
        ));
    }
    check_list(
        "protocol_versions",
        body.protocol_versions.as_deref().unwrap_or_default(),
    )?;
    check_list(
        "capabilities",
        body.capabilities.as_deref().unwrap_or_default(),
    )?;
    for (field, value) in [
        ("framework_name", &body.framework_name),
        ("framework_version", &body.framework_version),
    ] {
        if value
            .as_deref()
            .is_some_and(|v| v.is_empty() || v.chars().count() > MAX_ENTRY)
        {
            return Err(Problem::invalid_body(field, "1 to 128 characters"));
        }
    }
    if body
        .metadata
        .as_ref()
        .is_some_and(|m| !m.is_object() || m.to_string().len() > MAX_METADATA_BYTES)
    {
        return Err(Problem::invalid_body(
            "metadata",
            "must be an object of at most 64 KiB",
        ));
    }
    Ok(())
}

/// `POST /zones/{z}/services`: 201 for a new registration, 200 when the application's
/// endpoint was registered already (its details are replaced).
pub async fn register(co: &Coordinator, req: &CoordRequest) -> Result<Reply, CoordError> {
    let body: RegisterBody = req.json()?;
    check_register(&body)?;
    if !req.caller.owns(&body.application_id) {
        return Err(refuse(403, "application_ownership_required").into());
    }
    let actor = req.caller.actor();
    let mut tx = zone_tx(&co.pool, &req.zone).await?;
    applications::find_as_of(&mut tx, &body.application_id)
        .await?
        .filter(|a| a.row.is_usable(a.now))
        .ok_or_else(|| refuse(404, "application_not_found"))?;
    let metadata = body.metadata.clone().unwrap_or_else(|| json!({}));
    let (row, created) = services::register(
        &mut tx,
        req.zone.as_str(),
        &actor,
        &NewService {
            application_id: &body.application_id,
            endpoint_url: &body.endpoint_url,
            protocol_versions: body.protocol_versions.as_deref().unwrap_or_default(),
            framework_name: body.framework_name.as_deref(),
            framework_version: body.framework_version.as_deref(),
            capabilities: body.capabilities.as_deref().unwrap_or_default(),
            metadata: &metadata,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Reply::Json(
        if created { 201 } else { 200 },
        views::service(&row),
    ))
}

/// A service the caller may change: its application's owner or an admin.
pub async fn owned(tx: &mut ZoneTx, caller: &Caller, id: &str) -> Result<ServiceRow, CoordError> {
    services::get(tx, id)
        .await?
        .filter(|s| caller.owns(&s.application_id))
        .ok_or_else(|| refuse(404, "service_not_found").into())
}

/// `GET /zones/{z}/services/{id}`.
pub async fn get(co: &Coordinator, req: &CoordRequest, id: &str) -> Result<Reply, CoordError> {
    let mut tx = zone_snapshot(&co.pool, &req.zone).await?;
    let row = services::get(&mut tx, id)
        .await?
        .ok_or_else(|| refuse(404, "service_not_found"))?;
    tx.commit().await?;
    Ok(Reply::Json(200, views::service(&row)))
}

/// `GET /zones/{z}/services` (filters `application_id`, `health`).
pub async fn list(co: &Coordinator, req: &CoordRequest) -> Result<Reply, CoordError> {
    let page = req.page()?;
    let mut tx = zone_snapshot(&co.pool, &req.zone).await?;
    let rows = services::list(
        &mut tx,
        req.query("application_id"),
        req.query("health"),
        &page,
    )
    .await?;
    tx.commit().await?;
    Ok(Reply::Json(
        200,
        control_http::strict::page_body(&rows, views::service),
    ))
}

/// Body of `PATCH …/services/{id}/health`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthBody {
    health: String,
}

/// The health value, or 400 `invalid_body`.
pub fn check_health(health: &str) -> Result<(), Problem> {
    if HEALTH.contains(&health) {
        Ok(())
    } else {
        Err(Problem::invalid_body(
            "health",
            "must be starting, healthy, degraded or unhealthy",
        ))
    }
}

/// `PATCH /zones/{z}/services/{id}/health`.
pub async fn set_health(
    co: &Coordinator,
    req: &CoordRequest,
    id: &str,
) -> Result<Reply, CoordError> {
    let body: HealthBody = req.json()?;
    check_health(&body.health)?;
    let mut tx = zone_tx(&co.pool, &req.zone).await?;
    owned(&mut tx, &req.caller, id).await?;
    let row = services::set_health(&mut tx, id, &body.health, false, &req.caller.actor()).await?;
    tx.commit().await?;
    Ok(Reply::Json(200, views::service(&row)))
}

/// `DELETE /zones/{z}/services/{id}`: refused (409 `service_has_active_invocations`) while
/// invocations wait for it or run on it; its finished invocations go with it.
pub async fn deregister(
    co: &Coordinator,
    req: &CoordRequest,
    id: &str,
) -> Result<Reply, CoordError> {
    let mut tx = zone_tx(&co.pool, &req.zone).await?;
    owned(&mut tx, &req.caller, id).await?;
    if services::has_active_invocations(&mut tx, id).await? {
        return Err(refuse(409, "service_has_active_invocations").into());
    }
    services::delete(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Reply::NoContent)
}

/// A session heartbeat naming `service_id`: the service must belong to the session's
/// application; its health becomes the heartbeat's status and its heartbeat is now.
pub async fn heartbeat_service(
    tx: &mut ZoneTx,
    application_id: &str,
    service_id: &str,
    health: &str,
    actor: &str,
) -> Result<ServiceRow, CoordError> {
    services::get(tx, service_id)
        .await?
        .filter(|s| s.application_id == application_id)
        .ok_or_else(|| refuse(404, "service_not_found"))?;
    Ok(services::set_health(tx, service_id, health, true, actor).await?)
}
