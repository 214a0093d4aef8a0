//! `agent_services` (storage §1.5): the registry of agent services, their health and
//! heartbeats.

use chrono::{DateTime, Utc};
use control_model::page::{After, Keyed, Page, PageRequest, bounds};
use sqlx::PgConnection;

/// A registered agent service.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ServiceRow {
    /// Id.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// Owning application.
    pub application_id: String,
    /// Where it is reached.
    pub endpoint_url: String,
    /// Protocol versions it speaks.
    pub protocol_versions: Vec<String>,
    /// Agent framework.
    pub framework_name: Option<String>,
    /// Its version.
    pub framework_version: Option<String>,
    /// Declared capabilities.
    pub capabilities: Vec<String>,
    /// `starting`, `healthy`, `degraded`, `unhealthy`.
    pub health: String,
    /// Caller metadata.
    pub metadata_json: serde_json::Value,
    /// Last heartbeat.
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Keyed for ServiceRow {
    fn key(&self) -> After {
        After {
            ts: self.created_at,
            id: self.id.clone(),
        }
    }
}

const COLUMNS: &str = "id, zone_id, application_id, endpoint_url, protocol_versions, \
     framework_name, framework_version, capabilities, health, metadata_json, last_heartbeat_at, \
     created_at, updated_at";

/// A service registration.
#[derive(Debug, Clone)]
pub struct NewService<'a> {
    /// Owning application.
    pub application_id: &'a str,
    /// Where it is reached.
    pub endpoint_url: &'a str,
    /// Protocol versions.
    pub protocol_versions: &'a [String],
    /// Agent framework.
    pub framework_name: Option<&'a str>,
    /// Its version.
    pub framework_version: Option<&'a str>,
    /// Capabilities.
    pub capabilities: &'a [String],
    /// Metadata.
    pub metadata: &'a serde_json::Value,
}

/// Registers the service in `zone`, or updates the registration of the same application and
/// endpoint; returns the row and whether it is new.
pub async fn register(
    conn: &mut PgConnection,
    zone: &str,
    actor: &str,
    new: &NewService<'_>,
) -> Result<(ServiceRow, bool), sqlx::Error> {
    let (row, created): (ServiceRow, bool) = sqlx::query_as::<_, ServiceRowCreated>(&format!(
        "INSERT INTO agent_services (id, zone_id, application_id, endpoint_url, protocol_versions, \
                framework_name, framework_version, capabilities, metadata_json, created_by, updated_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) \
         ON CONFLICT (zone_id, application_id, endpoint_url) DO UPDATE \
            SET protocol_versions = EXCLUDED.protocol_versions, \
                framework_name = EXCLUDED.framework_name, \
                framework_version = EXCLUDED.framework_version, \
                capabilities = EXCLUDED.capabilities, metadata_json = EXCLUDED.metadata_json, \
                updated_at = now(), updated_by = EXCLUDED.updated_by \
         RETURNING {COLUMNS}, (xmax = 0) AS created"
    ))
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(zone)
    .bind(new.application_id)
    .bind(new.endpoint_url)
    .bind(new.protocol_versions)
    .bind(new.framework_name)
    .bind(new.framework_version)
    .bind(new.capabilities)
    .bind(new.metadata)
    .bind(actor)
    .fetch_one(conn)
    .await
    .map(|r| (r.row, r.created))?;
    Ok((row, created))
}

#[derive(sqlx::FromRow)]
struct ServiceRowCreated {
    #[sqlx(flatten)]
    row: ServiceRow,
    created: bool,
}

/// One service.
pub async fn get(conn: &mut PgConnection, id: &str) -> Result<Option<ServiceRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM agent_services WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Sets the service's health; with `heartbeat`, also its last heartbeat.
pub async fn set_health(
    conn: &mut PgConnection,
    id: &str,
    health: &str,
    heartbeat: bool,
    actor: &str,
) -> Result<ServiceRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE agent_services SET health = $2, \
                last_heartbeat_at = CASE WHEN $3 THEN now() ELSE last_heartbeat_at END, \
                updated_at = now(), updated_by = $4 \
          WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(health)
    .bind(heartbeat)
    .bind(actor)
    .fetch_one(conn)
    .await
}

/// Whether the service has pending or running invocations.
pub async fn has_active_invocations(
    conn: &mut PgConnection,
    id: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM agent_invocations WHERE service_id = $1 \
                           AND status IN ('pending', 'running', 'cancel_requested'))",
    )
    .bind(id)
    .fetch_one(conn)
    .await
}

/// Deletes the service and its finished invocations.
pub async fn delete(conn: &mut PgConnection, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM agent_invocations WHERE service_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM agent_services WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// A page of services, newest first (filters `application_id`, `health`).
pub async fn list(
    conn: &mut PgConnection,
    application_id: Option<&str>,
    health: Option<&str>,
    page: &PageRequest,
) -> Result<Page<ServiceRow>, sqlx::Error> {
    let (ts, id) = bounds(page);
    let rows: Vec<ServiceRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM agent_services \
          WHERE ($1::text IS NULL OR application_id = $1) AND ($2::text IS NULL OR health = $2) \
            AND (created_at, id) < ($3, $4) \
          ORDER BY created_at DESC, id DESC LIMIT $5"
    ))
    .bind(application_id)
    .bind(health)
    .bind(ts)
    .bind(id)
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page.limit))
}
