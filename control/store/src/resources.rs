//! `resources`: protected upstreams, as the STS's per-resource loop reads them.

use sqlx::PgConnection;

/// A resource row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ResourceRow {
    /// Row id.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// `resource://…`: the policy key and audience.
    pub identifier: String,
    /// Upstream URL.
    pub upstream_url: Option<String>,
    /// Declared scopes.
    pub scopes: Vec<String>,
    /// Credential provider.
    pub credential_provider_id: String,
}

/// Live (not archived) resources of the current zone with these identifiers.
pub async fn by_identifiers(
    conn: &mut PgConnection,
    identifiers: &[String],
) -> Result<Vec<ResourceRow>, sqlx::Error> {
    sqlx::query_as::<_, ResourceRow>(
        "SELECT id, zone_id, identifier, upstream_url, scopes, credential_provider_id \
           FROM resources WHERE identifier = ANY($1) AND archived_at IS NULL",
    )
    .bind(identifiers)
    .fetch_all(conn)
    .await
}
