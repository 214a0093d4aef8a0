//! The gateway snapshot's reads (authority §4.1, storage §1.6): every row the gateway
//! decides from, for every live zone, one statement per kind of row.
//!
//! Every function runs inside a [`crate::zone::cross_zone_read`] transaction opened by
//! `caracal_gateway` (row-level security setting `*`), returns `zone_id` on each row and
//! filters by zone explicitly where rows of two zones could meet. Rows of archived zones are
//! left out. Nothing here decrypts: sealed columns come back as stored.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::signing_keys::SigningKeyRow;

/// `gateway_binding_revision` with the database's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Revision {
    /// `gateway_binding_revision.version`.
    pub version: i64,
    /// The transaction's `now()`: the trusted time to judge key activation and grace by.
    pub now: DateTime<Utc>,
}

/// The binding revision (read first by a build, so a change made during the build triggers
/// another one). `None` only on a database that was not migrated.
pub async fn binding_revision(conn: &mut PgConnection) -> Result<Option<Revision>, sqlx::Error> {
    sqlx::query_as::<_, Revision>(
        "SELECT version, now() AS now FROM gateway_binding_revision WHERE id",
    )
    .fetch_optional(conn)
    .await
}

/// Live zones, by id.
pub async fn live_zones(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM zones WHERE archived_at IS NULL ORDER BY id")
        .fetch_all(conn)
        .await
}

/// Zone signing keys of every live zone that may still verify or sign (not `retired`),
/// by zone, newest version first.
pub async fn signing_keys(conn: &mut PgConnection) -> Result<Vec<SigningKeyRow>, sqlx::Error> {
    sqlx::query_as::<_, SigningKeyRow>(
        "SELECT id, zone_id, version, status, activates_at, rotated_at, public_jwk, nonce, ciphertext, dek_id \
           FROM secrets \
          WHERE name = 'zone_signing_key' AND entity_id = zone_id AND status <> 'retired' \
            AND zone_id IN (SELECT id FROM zones WHERE archived_at IS NULL) \
          ORDER BY zone_id, version DESC",
    )
    .fetch_all(conn)
    .await
}

/// An application as the gateway's step 14 needs it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct GatewayApplicationRow {
    /// Zone.
    pub zone_id: String,
    /// Id.
    pub id: String,
    /// `managed` or `dcr`.
    pub registration_method: String,
    /// Expiry (DCR applications).
    pub expires_at: Option<DateTime<Utc>>,
    /// `archived_at IS NOT NULL`.
    pub archived: bool,
}

/// Every application of the live zones, archived ones included (they are refused, not
/// unknown).
pub async fn applications(
    conn: &mut PgConnection,
) -> Result<Vec<GatewayApplicationRow>, sqlx::Error> {
    sqlx::query_as::<_, GatewayApplicationRow>(
        "SELECT zone_id, id, registration_method, expires_at, archived_at IS NOT NULL AS archived \
           FROM applications WHERE zone_id IN (SELECT id FROM zones WHERE archived_at IS NULL) \
          ORDER BY zone_id, id",
    )
    .fetch_all(conn)
    .await
}

/// A routable resource with its rate limit.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct GatewayResourceRow {
    /// Zone.
    pub zone_id: String,
    /// Id.
    pub id: String,
    /// Identifier (`X-Caracal-Resource`).
    pub identifier: String,
    /// Upstream base URL, as stored.
    pub upstream_url: Option<String>,
    /// The provider whose credential is attached.
    pub credential_provider_id: String,
    /// Declared scopes.
    pub scopes: Vec<String>,
    /// Declared operations: a JSON array of `{method, path, scope}`.
    pub operations: serde_json::Value,
    /// `enforced` or `transport_uniform`.
    pub operation_enforcement: String,
    /// `resource_rate_limits.window_seconds`, when a limit is set.
    pub rate_limit_window_seconds: Option<i32>,
    /// `resource_rate_limits.max_requests`, when a limit is set.
    pub rate_limit_max_requests: Option<i64>,
    /// `resource_rate_limits.key_by`, when a limit is set.
    pub rate_limit_key_by: Option<String>,
}

/// Live resources of the live zones, with their rate limits. A resource whose
/// `gateway_resource_bindings` row is disabled is left out; one without a row is included.
pub async fn resources(conn: &mut PgConnection) -> Result<Vec<GatewayResourceRow>, sqlx::Error> {
    sqlx::query_as::<_, GatewayResourceRow>(
        "SELECT r.zone_id, r.id, r.identifier, r.upstream_url, r.credential_provider_id, r.scopes, \
                r.operations, r.operation_enforcement, \
                l.window_seconds AS rate_limit_window_seconds, \
                l.max_requests AS rate_limit_max_requests, \
                l.key_by AS rate_limit_key_by \
           FROM resources r \
           LEFT JOIN resource_rate_limits l ON l.zone_id = r.zone_id AND l.resource_id = r.id \
          WHERE r.archived_at IS NULL \
            AND r.zone_id IN (SELECT id FROM zones WHERE archived_at IS NULL) \
            AND NOT EXISTS (SELECT 1 FROM gateway_resource_bindings b \
                             WHERE b.zone_id = r.zone_id AND b.resource_id = r.id AND NOT b.enabled) \
          ORDER BY r.zone_id, r.identifier",
    )
    .fetch_all(conn)
    .await
}

/// An enabled plugin hook of a resource.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct GatewayPluginBindingRow {
    /// Zone.
    pub zone_id: String,
    /// The resource.
    pub resource_id: String,
    /// `gateway_plugins.id`.
    pub plugin_id: String,
    /// `gateway_plugins.name`.
    pub plugin_name: String,
    /// `gateway_plugins.world`.
    pub plugin_world: String,
    /// `gateway_plugins.archived_at IS NOT NULL`.
    pub plugin_archived: bool,
    /// SHA-256 of the component (32 bytes).
    pub component_sha256: Vec<u8>,
    /// `authorizer` or `injector`.
    pub hook: String,
    /// Position within the hook.
    pub position: i16,
    /// `replace` or `augment` (injectors only).
    pub mode: Option<String>,
    /// The per-binding configuration as JSON text.
    pub config_text: String,
    /// Per-call deadline.
    pub deadline_ms: i32,
    /// Per-instance memory limit.
    pub memory_limit_bytes: i64,
}

/// Enabled plugin bindings of live resources, by zone and resource, then hook and position.
/// A binding to an archived plugin is still returned: it must fail closed, not vanish.
pub async fn plugin_bindings(
    conn: &mut PgConnection,
) -> Result<Vec<GatewayPluginBindingRow>, sqlx::Error> {
    sqlx::query_as::<_, GatewayPluginBindingRow>(
        "SELECT b.zone_id, b.resource_id, p.id AS plugin_id, p.name AS plugin_name, \
                p.world AS plugin_world, p.archived_at IS NOT NULL AS plugin_archived, \
                p.component_sha256, b.hook, b.position, b.mode, \
                b.config_json::text AS config_text, b.deadline_ms, b.memory_limit_bytes \
           FROM resource_plugin_bindings b \
           JOIN gateway_plugins p ON p.zone_id = b.zone_id AND p.id = b.plugin_id \
           JOIN resources r ON r.zone_id = b.zone_id AND r.id = b.resource_id \
          WHERE b.enabled AND r.archived_at IS NULL \
            AND b.zone_id IN (SELECT id FROM zones WHERE archived_at IS NULL) \
          ORDER BY b.zone_id, b.resource_id, b.hook, b.position",
    )
    .fetch_all(conn)
    .await
}

/// A component's bytes, by digest.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct GatewayComponentRow {
    /// SHA-256 of the component.
    pub component_sha256: Vec<u8>,
    /// The component.
    pub component: Vec<u8>,
}

/// The components with these digests (one row per digest, whichever zone holds it: the bytes
/// are the same). Only the digests a build has not compiled before are asked for.
pub async fn plugin_components(
    conn: &mut PgConnection,
    digests: &[Vec<u8>],
) -> Result<Vec<GatewayComponentRow>, sqlx::Error> {
    if digests.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as::<_, GatewayComponentRow>(
        "SELECT DISTINCT ON (component_sha256) component_sha256, component \
           FROM gateway_plugins WHERE component_sha256 = ANY($1)",
    )
    .bind(digests)
    .fetch_all(conn)
    .await
}

/// A provider with its sealed secret document, when it has one.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct GatewayProviderRow {
    /// Zone.
    pub zone_id: String,
    /// Id.
    pub id: String,
    /// `provider://…`.
    pub identifier: String,
    /// `provider_kind`.
    pub provider_kind: String,
    /// The public part of the configuration.
    pub config_json: serde_json::Value,
    /// `archived_at IS NOT NULL`.
    pub archived: bool,
    /// `providers.secret_id`.
    pub secret_id: Option<String>,
    /// Nonce of the sealed document (`None` when the row is missing).
    pub secret_nonce: Option<Vec<u8>>,
    /// Sealed document (ct ‖ tag).
    pub secret_ciphertext: Option<Vec<u8>>,
    /// KEK id of the sealed document.
    pub secret_dek_id: Option<String>,
}

/// The providers that live resources of live zones name (archived ones included), each with
/// its `provider_secret_config` row joined in the same zone.
pub async fn providers(conn: &mut PgConnection) -> Result<Vec<GatewayProviderRow>, sqlx::Error> {
    sqlx::query_as::<_, GatewayProviderRow>(
        "SELECT p.zone_id, p.id, p.identifier, p.provider_kind, p.config_json, \
                p.archived_at IS NOT NULL AS archived, p.secret_id, \
                s.nonce AS secret_nonce, s.ciphertext AS secret_ciphertext, s.dek_id AS secret_dek_id \
           FROM providers p \
           LEFT JOIN secrets s ON s.zone_id = p.zone_id AND s.id = p.secret_id \
                              AND s.name = 'provider_secret_config' \
          WHERE p.zone_id IN (SELECT id FROM zones WHERE archived_at IS NULL) \
            AND EXISTS (SELECT 1 FROM resources r \
                         WHERE r.zone_id = p.zone_id AND r.credential_provider_id = p.id \
                           AND r.archived_at IS NULL) \
          ORDER BY p.zone_id, p.id",
    )
    .fetch_all(conn)
    .await
}

/// A zone's active policy-set binding with its version's manifest.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ActivePolicyRow {
    /// Zone.
    pub zone_id: String,
    /// The bound set.
    pub policy_set_id: String,
    /// The active version.
    pub policy_set_version_id: String,
    /// Manifest: `[{"policy_version_id": …}]`.
    pub manifest_json: serde_json::Value,
    /// Stored manifest hash.
    pub manifest_sha256: String,
}

/// The active binding of every live zone that has one, with its set version (same zone).
pub async fn active_policies(conn: &mut PgConnection) -> Result<Vec<ActivePolicyRow>, sqlx::Error> {
    sqlx::query_as::<_, ActivePolicyRow>(
        "SELECT b.zone_id, b.policy_set_id, v.id AS policy_set_version_id, v.manifest_json, v.manifest_sha256 \
           FROM policy_set_bindings b \
           JOIN policy_set_versions v ON v.zone_id = b.zone_id AND v.policy_set_id = b.policy_set_id \
                                     AND v.id = b.active_version_id \
          WHERE b.active_version_id IS NOT NULL \
            AND b.zone_id IN (SELECT id FROM zones WHERE archived_at IS NULL) \
          ORDER BY b.zone_id",
    )
    .fetch_all(conn)
    .await
}

/// A policy version's document.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct GatewayPolicyVersionRow {
    /// Zone.
    pub zone_id: String,
    /// Version id.
    pub id: String,
    /// Rego text.
    pub content: String,
    /// Stored hash.
    pub content_sha256: String,
    /// Schema version.
    pub schema_version: String,
}

/// The policy versions named by `wanted` (`(zone_id, policy_version_id)` pairs); a version
/// is returned only for the zone that asks for it.
pub async fn policy_versions(
    conn: &mut PgConnection,
    wanted: &[(String, String)],
) -> Result<Vec<GatewayPolicyVersionRow>, sqlx::Error> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let (zones, ids): (Vec<&str>, Vec<&str>) = wanted
        .iter()
        .map(|(zone, id)| (zone.as_str(), id.as_str()))
        .unzip();
    sqlx::query_as::<_, GatewayPolicyVersionRow>(
        "SELECT v.zone_id, v.id, v.content, v.content_sha256, v.schema_version \
           FROM policy_versions v \
           JOIN (SELECT DISTINCT zone_id, id FROM unnest($1::text[], $2::text[]) AS w(zone_id, id)) w \
             ON v.zone_id = w.zone_id AND v.id = w.id",
    )
    .bind(zones)
    .bind(ids)
    .fetch_all(conn)
    .await
}
