//! `resources`, their gateway routing rows (`gateway_resource_bindings`) and their optional
//! per-resource gateway limit (`resource_rate_limits`), inside a zone transaction. Every
//! write here also fires the binding revision trigger (storage §5.5), which bumps
//! `gateway_binding_revision` and enqueues the gateway's invalidation in the same
//! transaction.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::page::{After, Keyed, Page, PageRequest, bounds};

/// One declared operation of a resource, stored and returned as sent.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct ResourceOperation {
    /// HTTP method (matched case-insensitively by the gateway).
    pub method: String,
    /// Exact path, starting with `/`.
    pub path: String,
    /// The resource scope the operation needs.
    pub scope: String,
}

/// A resource's gateway rate limit (authority §8.3).
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct ResourceRateLimit {
    /// Window length in seconds (1..86400).
    pub window_seconds: i32,
    /// Requests allowed per window (> 0).
    pub max_requests: i64,
    /// `application` (one budget per calling application) or `resource` (one for all).
    pub key_by: String,
}

/// A resource row as the admin API returns it: stored values, verbatim.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct ResourceRow {
    /// Id.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// Name.
    pub name: String,
    /// Identifier: the policy key and the token audience.
    pub identifier: String,
    /// Upstream base URL (`null` only for the control resource).
    pub upstream_url: Option<String>,
    /// Scopes (1..64).
    pub scopes: Vec<String>,
    /// The provider whose credential the gateway attaches.
    pub credential_provider_id: String,
    /// Declared operations.
    #[sqlx(json)]
    pub operations: Vec<ResourceOperation>,
    /// `enforced` or `transport_uniform`.
    pub operation_enforcement: String,
    /// The gateway rate limit, when one is set.
    #[sqlx(json(nullable))]
    pub rate_limit: Option<ResourceRateLimit>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Keyed for ResourceRow {
    fn key(&self) -> After {
        After {
            ts: self.created_at,
            id: self.id.clone(),
        }
    }
}

const SELECT: &str = "SELECT r.id, r.zone_id, r.name, r.identifier, r.upstream_url, r.scopes, \
       r.credential_provider_id, r.operations, r.operation_enforcement, \
       (SELECT jsonb_build_object('window_seconds', l.window_seconds, \
                                  'max_requests', l.max_requests, 'key_by', l.key_by) \
          FROM resource_rate_limits l WHERE l.resource_id = r.id) AS rate_limit, \
       r.created_at, r.updated_at \
  FROM resources r";

/// A page of the zone's live resources.
pub async fn list(
    conn: &mut PgConnection,
    page: &PageRequest,
) -> Result<Page<ResourceRow>, sqlx::Error> {
    let (ts, id) = bounds(page);
    let rows = sqlx::query_as::<_, ResourceRow>(&format!(
        "{SELECT} WHERE r.archived_at IS NULL AND (r.created_at, r.id) < ($1, $2) \
         ORDER BY r.created_at DESC, r.id DESC LIMIT $3"
    ))
    .bind(ts)
    .bind(id)
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page.limit))
}

/// A live resource of the zone.
pub async fn get(conn: &mut PgConnection, id: &str) -> Result<Option<ResourceRow>, sqlx::Error> {
    sqlx::query_as::<_, ResourceRow>(&format!(
        "{SELECT} WHERE r.id = $1 AND r.archived_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// A live resource, locked for a change.
pub async fn lock(conn: &mut PgConnection, id: &str) -> Result<Option<ResourceRow>, sqlx::Error> {
    sqlx::query_as::<_, ResourceRow>(&format!(
        "{SELECT} WHERE r.id = $1 AND r.archived_at IS NULL FOR UPDATE OF r"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Whether a live resource of the zone other than `except` has `identifier`.
pub async fn identifier_taken(
    conn: &mut PgConnection,
    identifier: &str,
    except: Option<&str>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM resources WHERE identifier = $1 AND archived_at IS NULL \
           AND ($2::text IS NULL OR id <> $2))",
    )
    .bind(identifier)
    .bind(except)
    .fetch_one(conn)
    .await
}

/// A resource's stored state: what an insert writes and an update replaces.
#[derive(Debug, Clone)]
pub struct ResourceState<'a> {
    /// Name.
    pub name: &'a str,
    /// Identifier.
    pub identifier: &'a str,
    /// Upstream URL.
    pub upstream_url: Option<&'a str>,
    /// Scopes.
    pub scopes: &'a [String],
    /// Provider.
    pub credential_provider_id: &'a str,
    /// Operations.
    pub operations: &'a [ResourceOperation],
    /// `enforced` or `transport_uniform`.
    pub operation_enforcement: &'a str,
}

/// Inserts a resource (its binding and limit are written separately).
pub async fn insert(
    conn: &mut PgConnection,
    id: &str,
    zone_id: &str,
    state: &ResourceState<'_>,
    actor: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO resources (id, zone_id, name, identifier, upstream_url, scopes, \
           credential_provider_id, operations, operation_enforcement, created_by, updated_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
    )
    .bind(id)
    .bind(zone_id)
    .bind(state.name)
    .bind(state.identifier)
    .bind(state.upstream_url)
    .bind(state.scopes)
    .bind(state.credential_provider_id)
    .bind(sqlx::types::Json(state.operations))
    .bind(state.operation_enforcement)
    .bind(actor)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Replaces a live resource's state; false when there is no live resource.
pub async fn update(
    conn: &mut PgConnection,
    id: &str,
    state: &ResourceState<'_>,
    actor: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE resources SET name = $2, identifier = $3, upstream_url = $4, scopes = $5, \
           credential_provider_id = $6, operations = $7, operation_enforcement = $8, \
           updated_at = now(), updated_by = $9 \
         WHERE id = $1 AND archived_at IS NULL",
    )
    .bind(id)
    .bind(state.name)
    .bind(state.identifier)
    .bind(state.upstream_url)
    .bind(state.scopes)
    .bind(state.credential_provider_id)
    .bind(sqlx::types::Json(state.operations))
    .bind(state.operation_enforcement)
    .bind(actor)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Makes the resource routable under `identifier` (creates its binding, or re-keys it
/// after an identifier change).
pub async fn bind(
    conn: &mut PgConnection,
    zone_id: &str,
    resource_id: &str,
    identifier: &str,
    actor: &str,
) -> Result<(), sqlx::Error> {
    // A binding left under this identifier by another row can only belong to an archived
    // resource (identifiers are unique among live ones): it goes, so the key is free.
    let stale: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM gateway_resource_bindings \
           WHERE resource_identifier = $1 AND resource_id <> $2)",
    )
    .bind(identifier)
    .bind(resource_id)
    .fetch_one(&mut *conn)
    .await?;
    if stale {
        sqlx::query(
            "DELETE FROM gateway_resource_bindings \
              WHERE resource_identifier = $1 AND resource_id <> $2",
        )
        .bind(identifier)
        .bind(resource_id)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "INSERT INTO gateway_resource_bindings (zone_id, resource_identifier, resource_id, \
           created_by, updated_by) VALUES ($1, $2, $3, $4, $4) \
         ON CONFLICT (zone_id, resource_id) DO UPDATE \
           SET resource_identifier = EXCLUDED.resource_identifier, updated_at = now(), \
               updated_by = EXCLUDED.updated_by",
    )
    .bind(zone_id)
    .bind(identifier)
    .bind(resource_id)
    .bind(actor)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Makes the resource unroutable (removes its binding).
pub async fn unbind(conn: &mut PgConnection, resource_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM gateway_resource_bindings WHERE resource_id = $1")
        .bind(resource_id)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Sets the resource's gateway rate limit.
pub async fn set_rate_limit(
    conn: &mut PgConnection,
    zone_id: &str,
    resource_id: &str,
    limit: &ResourceRateLimit,
    actor: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO resource_rate_limits (zone_id, resource_id, window_seconds, max_requests, \
           key_by, created_by, updated_by) VALUES ($1, $2, $3, $4, $5, $6, $6) \
         ON CONFLICT (zone_id, resource_id) DO UPDATE \
           SET window_seconds = EXCLUDED.window_seconds, max_requests = EXCLUDED.max_requests, \
               key_by = EXCLUDED.key_by, updated_at = now(), updated_by = EXCLUDED.updated_by",
    )
    .bind(zone_id)
    .bind(resource_id)
    .bind(limit.window_seconds)
    .bind(limit.max_requests)
    .bind(&limit.key_by)
    .bind(actor)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Removes the resource's gateway rate limit.
pub async fn clear_rate_limit(
    conn: &mut PgConnection,
    resource_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM resource_rate_limits WHERE resource_id = $1")
        .bind(resource_id)
        .execute(conn)
        .await
        .map(|_| ())
}
