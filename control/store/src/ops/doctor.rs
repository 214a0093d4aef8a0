//! Reads for `caracal doctor` (storage §12.5), each on the caller's connection as
//! `caracal_maintenance` (BYPASSRLS, so zone tables are read across zones without a
//! `caracal.zone_id` setting) with `search_path=caracal` and read-only transactions.
//!
//! Nothing here decrypts or returns a payload: sealed columns come back only as the sample
//! `kek.match` opens, and outbox rows only as counts, ages and ids. Every list that could be
//! long is capped by the caller's `limit` and returns the full count beside its examples.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// Whether the `caracal` schema has been migrated at all (`schema_migrations` exists).
///
/// # Errors
///
/// Database errors.
pub async fn schema_present(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass('caracal.schema_migrations') IS NOT NULL")
        .fetch_one(conn)
        .await
}

/// The database's wall clock (`clock_timestamp()`, not the transaction's start).
///
/// # Errors
///
/// Database errors.
pub async fn database_clock(conn: &mut PgConnection) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(conn)
        .await
}

/// How many sealed values one KEK id covers, by where they are stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DekIdUse {
    /// `secrets`, `provider_grants` or `notification_sinks`.
    pub source: String,
    /// The `dek_id` (`kek:` + 16 hex).
    pub dek_id: String,
    /// Sealed values under it.
    pub rows: i64,
}

/// Every `dek_id` in use: the `secrets` column, and the id inside the single-column
/// envelopes of `provider_grants` and `notification_sinks` (`0x01 ‖ len ‖ dek_id ‖ …`,
/// storage §10.2; a malformed envelope shows up as whatever its bytes say, escaped).
///
/// # Errors
///
/// Database errors.
pub async fn dek_ids_in_use(conn: &mut PgConnection) -> Result<Vec<DekIdUse>, sqlx::Error> {
    sqlx::query_as::<_, DekIdUse>(
        "WITH envelopes AS ( \
             SELECT 'provider_grants' AS source, access_token_ct AS ct FROM provider_grants \
             UNION ALL \
             SELECT 'provider_grants', refresh_token_ct FROM provider_grants \
              WHERE refresh_token_ct IS NOT NULL \
             UNION ALL \
             SELECT 'notification_sinks', secret_ct FROM notification_sinks \
              WHERE secret_ct IS NOT NULL \
         ) \
         SELECT 'secrets' AS source, dek_id, count(*) AS rows FROM secrets GROUP BY dek_id \
         UNION ALL \
         SELECT source, \
                CASE WHEN octet_length(ct) >= 2 AND get_byte(ct, 0) = 1 \
                     THEN encode(substring(ct FROM 3 FOR get_byte(ct, 1)), 'escape') \
                     ELSE '(malformed envelope)' END AS dek_id, \
                count(*) AS rows \
           FROM envelopes GROUP BY 1, 2 \
          ORDER BY 1, 2",
    )
    .fetch_all(conn)
    .await
}

/// One zone's newest signing key as stored: the value `kek.match` tries to open.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SealedKeySample {
    /// Zone.
    pub zone_id: String,
    /// The key's id (`kid`), the row id bound into the associated data.
    pub id: String,
    /// Nonce.
    pub nonce: Vec<u8>,
    /// Ciphertext and tag.
    pub ciphertext: Vec<u8>,
    /// KEK id it is sealed under.
    pub dek_id: String,
}

/// The newest zone signing key of every zone (archived zones included: their keys were
/// sealed under the same KEK).
///
/// # Errors
///
/// Database errors.
pub async fn signing_key_samples(
    conn: &mut PgConnection,
) -> Result<Vec<SealedKeySample>, sqlx::Error> {
    sqlx::query_as::<_, SealedKeySample>(
        "SELECT DISTINCT ON (zone_id) zone_id, id, nonce, ciphertext, dek_id \
           FROM secrets \
          WHERE name = 'zone_signing_key' AND entity_id = zone_id \
          ORDER BY zone_id, version DESC",
    )
    .fetch_all(conn)
    .await
}

/// A zone's audit chain head.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ChainHead {
    /// Zone id (audit rows have no foreign key to `zones`).
    pub zone_id: String,
    /// The highest `chain_seq`.
    pub chain_seq: i64,
}

/// Every zone holding audit rows with its head, walking `audit_events_chain_idx` one zone
/// at a time (a loose index scan, so it costs one index probe per zone), at most `limit`.
///
/// # Errors
///
/// Database errors.
pub async fn chain_heads(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<ChainHead>, sqlx::Error> {
    sqlx::query_as::<_, ChainHead>(
        "WITH RECURSIVE zones_seen AS ( \
             SELECT min(zone_id) AS zone_id FROM audit_events \
             UNION ALL \
             SELECT (SELECT min(a.zone_id) FROM audit_events a WHERE a.zone_id > z.zone_id) \
               FROM zones_seen z WHERE z.zone_id IS NOT NULL \
         ) \
         SELECT z.zone_id, \
                (SELECT a.chain_seq FROM audit_events a WHERE a.zone_id = z.zone_id \
                  ORDER BY a.chain_seq DESC LIMIT 1) AS chain_seq \
           FROM zones_seen z WHERE z.zone_id IS NOT NULL \
          LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The default audit partition (storage §5.1, §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultPartition {
    /// `audit_events_default` is attached as the DEFAULT partition.
    pub attached: bool,
    /// Rows in it, counted up to 100,000.
    pub rows: i64,
}

/// Whether the default partition is attached and how many rows it holds.
///
/// # Errors
///
/// Database errors.
pub async fn default_partition(conn: &mut PgConnection) -> Result<DefaultPartition, sqlx::Error> {
    let attached: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                         WHERE i.inhparent = 'caracal.audit_events'::regclass \
                           AND c.relname = 'audit_events_default' \
                           AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT')",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !attached {
        return Ok(DefaultPartition { attached, rows: 0 });
    }
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM audit_events_default LIMIT 100000) capped",
    )
    .fetch_one(conn)
    .await?;
    Ok(DefaultPartition { attached, rows })
}

/// How many tamper alerts of one kind were recorded.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AlertCount {
    /// `audit_ingest_alerts.kind`.
    pub kind: String,
    /// How many.
    pub alerts: i64,
}

/// Alerts recorded at or after `since`, by kind.
///
/// # Errors
///
/// Database errors.
pub async fn alerts_since(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
) -> Result<Vec<AlertCount>, sqlx::Error> {
    sqlx::query_as::<_, AlertCount>(
        "SELECT kind, count(*) AS alerts FROM audit_ingest_alerts WHERE observed_at >= $1 \
          GROUP BY kind ORDER BY kind",
    )
    .bind(since)
    .fetch_all(conn)
    .await
}

/// `gateway_binding_revision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct BindingRevision {
    /// The revision.
    pub version: i64,
    /// When it last moved.
    pub updated_at: DateTime<Utc>,
}

/// The binding revision row; `None` when it is missing.
///
/// # Errors
///
/// Database errors.
pub async fn binding_revision(
    conn: &mut PgConnection,
) -> Result<Option<BindingRevision>, sqlx::Error> {
    sqlx::query_as::<_, BindingRevision>(
        "SELECT version, updated_at FROM gateway_binding_revision WHERE id",
    )
    .fetch_optional(conn)
    .await
}

/// A live resource with an `upstream_url` the gateway has no enabled binding for.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UnboundResource {
    /// Zone.
    pub zone_id: String,
    /// Resource id.
    pub id: String,
    /// Its identifier.
    pub identifier: String,
    /// `None`: no binding row; `Some(false)`: the row is disabled.
    pub binding_enabled: Option<bool>,
    /// How many resources are in this state in all (the same on every row).
    pub total: i64,
}

/// Live resources of live zones that have an `upstream_url` but no enabled binding, the
/// first `limit` of them.
///
/// # Errors
///
/// Database errors.
pub async fn unbound_resources(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<UnboundResource>, sqlx::Error> {
    sqlx::query_as::<_, UnboundResource>(
        "SELECT r.zone_id, r.id, r.identifier, b.enabled AS binding_enabled, \
                count(*) OVER () AS total \
           FROM resources r \
           JOIN zones z ON z.id = r.zone_id AND z.archived_at IS NULL \
           LEFT JOIN gateway_resource_bindings b \
                  ON b.zone_id = r.zone_id AND b.resource_id = r.id \
          WHERE r.archived_at IS NULL AND r.upstream_url IS NOT NULL \
            AND (b.resource_id IS NULL OR NOT b.enabled) \
          ORDER BY r.zone_id, r.identifier \
          LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// A binding that points nowhere useful.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StrayBinding {
    /// Zone.
    pub zone_id: String,
    /// The routed identifier.
    pub resource_identifier: String,
    /// The bound resource id.
    pub resource_id: String,
    /// `missing` (no such resource), `archived`, or `identifier` (the binding's identifier
    /// is not the resource's).
    pub problem: String,
    /// How many bindings are in one of these states in all.
    pub total: i64,
}

/// Bindings to missing or archived resources, or under an identifier the resource no
/// longer has, the first `limit` of them.
///
/// # Errors
///
/// Database errors.
pub async fn stray_bindings(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<StrayBinding>, sqlx::Error> {
    sqlx::query_as::<_, StrayBinding>(
        "SELECT zone_id, resource_identifier, resource_id, problem, count(*) OVER () AS total \
           FROM ( \
             SELECT b.zone_id, b.resource_identifier, b.resource_id, \
                    CASE WHEN r.id IS NULL THEN 'missing' \
                         WHEN r.archived_at IS NOT NULL THEN 'archived' \
                         ELSE 'identifier' END AS problem \
               FROM gateway_resource_bindings b \
               LEFT JOIN resources r ON r.zone_id = b.zone_id AND r.id = b.resource_id \
              WHERE r.id IS NULL OR r.archived_at IS NOT NULL \
                 OR r.identifier <> b.resource_identifier \
           ) stray \
          ORDER BY zone_id, resource_identifier \
          LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Undelivered rows of one outbox topic.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OutboxBacklog {
    /// `event_outbox` or `caracal_outbox`.
    pub outbox: String,
    /// The stream the rows are for.
    pub topic: String,
    /// Rows waiting to be published.
    pub pending: i64,
    /// Rows given up.
    pub dead: i64,
    /// Age of the oldest pending row, in seconds.
    pub oldest_pending_secs: Option<f64>,
    /// Highest `attempts` among the pending rows.
    pub max_attempts: Option<i32>,
}

/// Pending and dead rows of both outboxes, by table and topic (published rows are left out).
///
/// # Errors
///
/// Database errors.
pub async fn outbox_backlog(conn: &mut PgConnection) -> Result<Vec<OutboxBacklog>, sqlx::Error> {
    sqlx::query_as::<_, OutboxBacklog>(
        "SELECT outbox, topic, \
                count(*) FILTER (WHERE status = 'pending') AS pending, \
                count(*) FILTER (WHERE status = 'dead') AS dead, \
                extract(epoch FROM clock_timestamp() - min(created_at) \
                        FILTER (WHERE status = 'pending'))::float8 AS oldest_pending_secs, \
                max(attempts) FILTER (WHERE status = 'pending') AS max_attempts \
           FROM ( \
             SELECT 'event_outbox' AS outbox, topic, status, created_at, attempts \
               FROM event_outbox WHERE status IN ('pending', 'dead') \
             UNION ALL \
             SELECT 'caracal_outbox', topic, status, created_at, attempts \
               FROM caracal_outbox WHERE status IN ('pending', 'dead') \
           ) undelivered \
          GROUP BY outbox, topic \
          ORDER BY outbox, topic",
    )
    .fetch_all(conn)
    .await
}

/// The state of the outbox row that carries `dedupe_key` on `topic`, in either outbox.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxRowState {
    /// `pending`, `published` or `dead`.
    pub status: String,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
}

/// The row of `topic` with `dedupe_key`, if either outbox still holds one (published rows
/// are deleted after `OUTBOX_RETENTION_DAYS`).
///
/// # Errors
///
/// Database errors.
pub async fn outbox_row(
    conn: &mut PgConnection,
    topic: &str,
    dedupe_key: &str,
) -> Result<Option<OutboxRowState>, sqlx::Error> {
    sqlx::query_as::<_, OutboxRowState>(
        "SELECT status, created_at FROM event_outbox \
          WHERE producer = ANY('{api,sts}') AND topic = $1 AND dedupe_key = $2 \
         UNION ALL \
         SELECT status, created_at FROM caracal_outbox \
          WHERE producer = ANY('{api,coordinator}') AND topic = $1 AND dedupe_key = $2 \
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(topic)
    .bind(dedupe_key)
    .fetch_optional(conn)
    .await
}

/// An authority record revoked without a published `caracal.sessions.revoke` message.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UnannouncedRevocation {
    /// Zone.
    pub zone_id: String,
    /// The record (`sid`).
    pub session_id: String,
    /// When it was revoked.
    pub revoked_at: DateTime<Utc>,
    /// The state of its outbox row, `None` when there is none.
    pub outbox_status: Option<String>,
    /// How many records are in this state in all.
    pub total: i64,
}

/// Records revoked in `[since, settled_before)` whose message (`revoke:record:<id>`) is not
/// published in either outbox, the first `limit` of them. Only records revoked before they
/// expired are seen (the query walks the index on revoked records' expiry); a record revoked
/// after its expiry needs no announcement.
///
/// # Errors
///
/// Database errors.
pub async fn unannounced_revocations(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
    settled_before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<UnannouncedRevocation>, sqlx::Error> {
    sqlx::query_as::<_, UnannouncedRevocation>(
        "SELECT s.zone_id, s.id AS session_id, s.revoked_at, m.status AS outbox_status, \
                count(*) OVER () AS total \
           FROM sessions s \
           LEFT JOIN LATERAL ( \
             SELECT status FROM ( \
               SELECT status FROM event_outbox \
                WHERE producer = ANY('{api,sts}') AND topic = 'caracal.sessions.revoke' \
                  AND dedupe_key = 'revoke:record:' || s.id \
               UNION ALL \
               SELECT status FROM caracal_outbox \
                WHERE producer = ANY('{api,coordinator}') AND topic = 'caracal.sessions.revoke' \
                  AND dedupe_key = 'revoke:record:' || s.id \
             ) rows_of_record \
             ORDER BY status = 'published' DESC LIMIT 1 \
           ) m ON true \
          WHERE s.status = 'revoked' AND s.expires_at >= $1 \
            AND s.revoked_at >= $1 AND s.revoked_at < $2 \
            AND m.status IS DISTINCT FROM 'published' \
          ORDER BY s.revoked_at \
          LIMIT $3",
    )
    .bind(since)
    .bind(settled_before)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// A Caracal role's attributes.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RoleAttributes {
    /// Role name.
    pub name: String,
    /// `rolsuper`.
    pub superuser: bool,
    /// `rolbypassrls`.
    pub bypassrls: bool,
    /// `rolcanlogin`.
    pub login: bool,
    /// Member of `caracal_owner` (directly or not).
    pub owner_member: bool,
}

/// The attributes of `names` that exist (a missing role has no row).
///
/// # Errors
///
/// Database errors.
pub async fn roles(
    conn: &mut PgConnection,
    names: &[&str],
) -> Result<Vec<RoleAttributes>, sqlx::Error> {
    sqlx::query_as::<_, RoleAttributes>(
        "SELECT rolname::text AS name, rolsuper AS superuser, rolbypassrls AS bypassrls, \
                rolcanlogin AS login, \
                (rolname <> 'caracal_owner' AND EXISTS (SELECT 1 FROM pg_roles o \
                   WHERE o.rolname = 'caracal_owner' AND pg_has_role(r.oid, o.oid, 'MEMBER'))) \
                  AS owner_member \
           FROM pg_roles r WHERE rolname = ANY($1) ORDER BY rolname",
    )
    .bind(names)
    .fetch_all(conn)
    .await
}

/// The role doctor itself is connected as.
///
/// # Errors
///
/// Database errors.
pub async fn current_role(conn: &mut PgConnection) -> Result<RoleAttributes, sqlx::Error> {
    sqlx::query_as::<_, RoleAttributes>(
        "SELECT rolname::text AS name, rolsuper AS superuser, rolbypassrls AS bypassrls, \
                rolcanlogin AS login, false AS owner_member \
           FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(conn)
    .await
}

/// Connection use of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Connections {
    /// `max_connections`.
    pub max_connections: i64,
    /// `superuser_reserved_connections`.
    pub reserved: i64,
    /// Client backends connected now, to any database.
    pub in_use: i64,
    /// Of those, the services' (`application_name` `caracal-<service>-<instance>`; doctor's
    /// own connection is not counted).
    pub caracal: i64,
}

/// Connection use of the whole server.
///
/// # Errors
///
/// Database errors.
pub async fn connections(conn: &mut PgConnection) -> Result<Connections, sqlx::Error> {
    sqlx::query_as::<_, Connections>(
        "SELECT current_setting('max_connections')::bigint AS max_connections, \
                current_setting('superuser_reserved_connections')::bigint AS reserved, \
                count(*) FILTER (WHERE backend_type = 'client backend') AS in_use, \
                count(*) FILTER (WHERE backend_type = 'client backend' \
                                   AND application_name LIKE 'caracal-%' \
                                   AND application_name <> 'caracal-doctor') AS caracal \
           FROM pg_stat_activity",
    )
    .fetch_one(conn)
    .await
}

/// Live (not archived) zones, at most `limit`.
///
/// # Errors
///
/// Database errors.
pub async fn live_zones(conn: &mut PgConnection, limit: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM zones WHERE archived_at IS NULL ORDER BY id LIMIT $1")
        .bind(limit)
        .fetch_all(conn)
        .await
}
