//! The audit service's reads (wire-contract §6.6, storage §8.9): pages of a zone's decision
//! events with every filter of the admin API, the events of one request, and pages of the
//! zone's admin audit log.
//!
//! Every function runs in a transaction scoped to the zone (`zone_tx`); the statements also
//! name the zone themselves, so the planner sees a bound value for the indexes that lead
//! with `zone_id`. Pages are newest first by `(occurred_at, id)` with a keyset cursor; the
//! cursor's time also bounds `occurred_at`, so a later page skips the partitions of months
//! it has passed.
//!
//! The event statement is assembled from fixed fragments, one per filter that is set, with
//! every value bound: each combination of filters is its own prepared statement, so a filter
//! on a metadata key always plans with its expression index (migration 0008) instead of a
//! generic plan that must also serve the unfiltered case.

use chrono::{DateTime, Utc};
use control_model::page::{After, Keyed, Page, PageRequest};
use serde_json::Value;
use sqlx::{PgConnection, Postgres, QueryBuilder};

/// The columns of an event as the reads show it: the event's own members and `ingested_at`;
/// chain columns are not shown.
const EVENT_COLUMNS: &str = "id, zone_id, event_type, request_id, decision, policy_set_id, \
     policy_set_version_id, manifest_sha, evaluation_status, determining_policies_json, \
     diagnostics_json, metadata_json, occurred_at, ingested_at";

/// One stored decision event.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EventRow {
    /// Event id.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// Event type (`token_exchange`, `gateway_resource_request`, …).
    pub event_type: String,
    /// Request id.
    pub request_id: Option<String>,
    /// `allow`, `deny` or `partial`.
    pub decision: Option<String>,
    /// Policy set.
    pub policy_set_id: Option<String>,
    /// Policy set version.
    pub policy_set_version_id: Option<String>,
    /// Manifest digest.
    pub manifest_sha: Option<String>,
    /// Evaluation status.
    pub evaluation_status: Option<String>,
    /// The policies that decided.
    pub determining_policies_json: Option<Value>,
    /// Evaluation diagnostics.
    pub diagnostics_json: Option<Value>,
    /// Producer metadata (application, sessions, labels, …).
    pub metadata_json: Option<Value>,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// When the ledger stored it.
    pub ingested_at: DateTime<Utc>,
}

impl Keyed for EventRow {
    fn key(&self) -> After {
        After {
            ts: self.occurred_at,
            id: self.id.clone(),
        }
    }
}

/// The filters of an event page; `None` (or an empty list) does not filter.
#[derive(Debug, Clone, Default)]
pub struct EventFilter<'a> {
    /// `occurred_at >= since`.
    pub since: Option<DateTime<Utc>>,
    /// `occurred_at < until`.
    pub until: Option<DateTime<Utc>>,
    /// Exact request id.
    pub request_id: Option<&'a str>,
    /// Exact decision.
    pub decision: Option<&'a str>,
    /// Any of these event types.
    pub event_types: &'a [String],
    /// Metadata `application_id`.
    pub application_id: Option<&'a str>,
    /// Metadata `agent_session_id` (the admin API's `session_id`).
    pub agent_session_id: Option<&'a str>,
    /// Metadata `session_id` (the admin API's `authority_record_id`).
    pub authority_record_id: Option<&'a str>,
    /// Metadata `agent_labels` holds this label.
    pub label: Option<&'a str>,
}

/// Adds `AND (occurred_at, id) < cursor` and `AND occurred_at <= cursor time`.
fn push_cursor(query: &mut QueryBuilder<'_, Postgres>, after: Option<&After>) {
    if let Some(after) = after {
        query.push(" AND occurred_at <= ");
        query.push_bind(after.ts);
        query.push(" AND (occurred_at, id) < (");
        query.push_bind(after.ts);
        query.push(", ");
        query.push_bind(after.id.clone());
        query.push(")");
    }
}

/// Adds `AND <column> = value` when `value` is set.
fn push_equal<'a>(
    query: &mut QueryBuilder<'a, Postgres>,
    column: &'static str,
    value: Option<&'a str>,
) {
    if let Some(value) = value {
        query.push(" AND ");
        query.push(column);
        query.push(" = ");
        query.push_bind(value);
    }
}

/// Adds the time window.
fn push_window(
    query: &mut QueryBuilder<'_, Postgres>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) {
    if let Some(since) = since {
        query.push(" AND occurred_at >= ");
        query.push_bind(since);
    }
    if let Some(until) = until {
        query.push(" AND occurred_at < ");
        query.push_bind(until);
    }
}

/// Adds the order and `LIMIT limit + 1` (the extra row says whether another page follows).
fn push_page_end(query: &mut QueryBuilder<'_, Postgres>, limit: i64) {
    query.push(" ORDER BY occurred_at DESC, id DESC LIMIT ");
    query.push_bind(limit.saturating_add(1));
}

/// One page of `zone`'s events, newest first by `(occurred_at, id)`.
///
/// # Errors
///
/// Database errors.
pub async fn events(
    conn: &mut PgConnection,
    zone: &str,
    filter: &EventFilter<'_>,
    page: &PageRequest,
) -> Result<Page<EventRow>, sqlx::Error> {
    let mut query = QueryBuilder::<Postgres>::new("SELECT ");
    query.push(EVENT_COLUMNS);
    query.push(" FROM audit_events WHERE zone_id = ");
    query.push_bind(zone);
    push_window(&mut query, filter.since, filter.until);
    push_equal(&mut query, "request_id", filter.request_id);
    push_equal(&mut query, "decision", filter.decision);
    if !filter.event_types.is_empty() {
        query.push(" AND event_type = ANY(");
        query.push_bind(filter.event_types);
        query.push("::text[])");
    }
    // Each metadata filter is written exactly as its expression index (migration 0008).
    push_equal(
        &mut query,
        "(metadata_json ->> 'application_id')",
        filter.application_id,
    );
    push_equal(
        &mut query,
        "(metadata_json ->> 'agent_session_id')",
        filter.agent_session_id,
    );
    push_equal(
        &mut query,
        "(metadata_json ->> 'session_id')",
        filter.authority_record_id,
    );
    if let Some(label) = filter.label {
        query.push(" AND (metadata_json -> 'agent_labels') ? ");
        query.push_bind(label);
    }
    push_cursor(&mut query, page.after.as_ref());
    push_page_end(&mut query, page.limit);
    let rows = query.build_query_as::<EventRow>().fetch_all(conn).await?;
    Ok(Page::from_rows(rows, page.limit))
}

/// The events of one request in `zone`, oldest first by `(occurred_at, id)`, at most `max`.
///
/// # Errors
///
/// Database errors.
pub async fn by_request(
    conn: &mut PgConnection,
    zone: &str,
    request_id: &str,
    max: i64,
) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as::<_, EventRow>(&format!(
        "SELECT {EVENT_COLUMNS} FROM audit_events \
          WHERE zone_id = $1 AND request_id = $2 \
          ORDER BY occurred_at, id LIMIT $3"
    ))
    .bind(zone)
    .bind(request_id)
    .bind(max)
    .fetch_all(conn)
    .await
}

/// One row of the admin audit log as the reads show it, with its chain position and
/// content hash (hex).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AdminAuditRow {
    /// Id.
    pub id: String,
    /// Zone.
    pub zone_id: Option<String>,
    /// Request id of the admin call.
    pub request_id: Option<String>,
    /// Actor (`admin:<token id>`, `env-bootstrap`, …).
    pub actor_id: String,
    /// Actor's display name.
    pub actor_name: Option<String>,
    /// Actor's scope (`global` or a zone).
    pub actor_scope: Option<String>,
    /// `"METHOD path"`.
    pub action: String,
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Entity type.
    pub entity_type: Option<String>,
    /// Entity id.
    pub entity_id: Option<String>,
    /// Response status.
    pub status_code: i32,
    /// Payload (secrets were stripped when it was written).
    pub payload_json: Option<Value>,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// Position in the zone's admin chain.
    pub chain_seq: i64,
    /// Content hash, lowercase hex.
    pub content_sha256: String,
}

impl Keyed for AdminAuditRow {
    fn key(&self) -> After {
        After {
            ts: self.occurred_at,
            id: self.id.clone(),
        }
    }
}

/// The filters of an admin audit page; `None` does not filter.
#[derive(Debug, Clone, Default)]
pub struct AdminFilter<'a> {
    /// `occurred_at >= since`.
    pub since: Option<DateTime<Utc>>,
    /// `occurred_at < until`.
    pub until: Option<DateTime<Utc>>,
    /// Exact request id.
    pub request_id: Option<&'a str>,
    /// Exact actor.
    pub actor_id: Option<&'a str>,
    /// Exact entity type.
    pub entity_type: Option<&'a str>,
    /// Exact entity id.
    pub entity_id: Option<&'a str>,
}

/// One page of `zone`'s admin audit rows, newest first by `(occurred_at, id)`.
///
/// # Errors
///
/// Database errors.
pub async fn admin_events(
    conn: &mut PgConnection,
    zone: &str,
    filter: &AdminFilter<'_>,
    page: &PageRequest,
) -> Result<Page<AdminAuditRow>, sqlx::Error> {
    let mut query = QueryBuilder::<Postgres>::new(
        "SELECT id, zone_id, request_id, actor_id, actor_name, actor_scope, action, method, \
                path, entity_type, entity_id, status_code, payload_json, occurred_at, \
                chain_seq, encode(content_sha256, 'hex') AS content_sha256 \
           FROM admin_audit_events WHERE zone_id = ",
    );
    query.push_bind(zone);
    push_window(&mut query, filter.since, filter.until);
    push_equal(&mut query, "request_id", filter.request_id);
    push_equal(&mut query, "actor_id", filter.actor_id);
    push_equal(&mut query, "entity_type", filter.entity_type);
    push_equal(&mut query, "entity_id", filter.entity_id);
    push_cursor(&mut query, page.after.as_ref());
    push_page_end(&mut query, page.limit);
    let rows = query
        .build_query_as::<AdminAuditRow>()
        .fetch_all(conn)
        .await?;
    Ok(Page::from_rows(rows, page.limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(build: impl FnOnce(&mut QueryBuilder<'_, Postgres>)) -> String {
        let mut query = QueryBuilder::<Postgres>::new("SELECT 1 FROM t WHERE true");
        build(&mut query);
        query.sql().to_owned()
    }

    #[test]
    fn unset_filters_add_nothing_and_set_ones_bind_their_values() {
        assert_eq!(
            sql(|q| {
                push_equal(q, "actor_id", None);
                push_window(q, None, None);
                push_cursor(q, None);
            }),
            "SELECT 1 FROM t WHERE true"
        );
        assert_eq!(
            sql(|q| push_equal(q, "(metadata_json ->> 'application_id')", Some("a'; --"))),
            "SELECT 1 FROM t WHERE true AND (metadata_json ->> 'application_id') = $1"
        );
    }

    #[test]
    fn the_cursor_bounds_the_time_for_pruning_and_the_key_for_order() {
        let after = After {
            ts: DateTime::<Utc>::MIN_UTC,
            id: "e-1".to_owned(),
        };
        assert_eq!(
            sql(|q| {
                push_cursor(q, Some(&after));
                push_page_end(q, 10);
            }),
            "SELECT 1 FROM t WHERE true AND occurred_at <= $1 AND (occurred_at, id) < ($2, $3) \
             ORDER BY occurred_at DESC, id DESC LIMIT $4"
        );
    }
}
