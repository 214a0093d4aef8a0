//! The internal audit query (storage §8.9, wire-contract §6.6): what `POST
//! /internal/audit/query` does once its bearer is checked, without any HTTP plumbing.
//!
//! The admin API validates the caller, the zone and the query parameters, then sends a
//! [`QueryRequest`]; [`run`] validates it again (it is the boundary of the ledger's data),
//! reads in a read-only transaction scoped to the zone, and answers a finished
//! [`QueryAnswer`]: a page `{items, next_cursor}` or a CSV export of decision events, the
//! bare array of one request's events (oldest first), or a page of the zone's admin audit
//! log. Refusals are [`QueryError`] values with the catalog's codes.
//!
//! What a reader sees is filtered: metadata keys that look secret are replaced by
//! `"[redacted]"` at any depth ([`redact`]), CSV cells that a spreadsheet would run as a
//! formula are neutralised ([`csv_cell`]), and an answer stops at [`MAX_ANSWER_BYTES`] (a
//! page then ends early, its `next_cursor` set).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use control_http::{Body, problem::Problem, respond};
use control_model::{
    ZoneId,
    page::{Keyed, Page, PageRequest},
};
use control_store::{
    StoreError,
    audit::query::{self as store, AdminAuditRow, AdminFilter, EventFilter, EventRow},
    zone::zone_snapshot,
};
use http::{HeaderValue, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::canonical::{format_time, is_event_type};

/// Default page size of event queries.
pub const EVENTS_DEFAULT_LIMIT: i64 = 100;
/// Largest page of event queries.
pub const EVENTS_MAX_LIMIT: i64 = 1000;
/// Default page size of admin audit pages (the admin API's general paging, §6.2).
pub const ADMIN_DEFAULT_LIMIT: i64 = 200;
/// Largest admin audit page.
pub const ADMIN_MAX_LIMIT: i64 = 500;
/// Most events answered for one request id.
pub const BY_REQUEST_MAX: i64 = 1000;
/// Most event types in one `event_types` filter.
pub const MAX_EVENT_TYPES: usize = 16;
/// Longest text filter value, in characters.
pub const MAX_FILTER_CHARS: usize = 256;
/// The body size after which an answer stops adding rows (at least one row is always
/// answered). Events hold at most 256 KiB each, so a full page of large events would
/// otherwise reach hundreds of MiB.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// What replaces a secret-looking metadata value.
pub const REDACTED: &str = "[redacted]";
/// `Content-Type` of JSON answers.
pub const JSON_TYPE: &str = "application/json";
/// `Content-Type` of CSV exports.
pub const CSV_TYPE: &str = "text/csv; charset=utf-8";
/// `Content-Disposition` of CSV exports.
pub const CSV_DISPOSITION: &str = "attachment; filename=\"audit.csv\"";
/// The header that carries a CSV export's `next_cursor` (ours: a CSV body has no place for it).
pub const NEXT_CURSOR_HEADER: &str = "x-next-cursor";

/// The columns of an event item, in CSV order (wire-contract §6.6 "Items").
pub const EVENT_FIELDS: [&str; 14] = [
    "id",
    "zone_id",
    "event_type",
    "request_id",
    "decision",
    "policy_set_id",
    "policy_set_version_id",
    "manifest_sha",
    "evaluation_status",
    "determining_policies_json",
    "diagnostics_json",
    "metadata_json",
    "occurred_at",
    "ingested_at",
];

/// Which read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryKind {
    /// A page (or CSV export) of decision events: `GET /v1/zones/{z}/audit`.
    #[default]
    Events,
    /// One request's events: `GET /v1/zones/{z}/audit/by-request/{rid}`.
    ByRequest,
    /// A page of the admin audit log: `GET /v1/zones/{z}/admin-audit`.
    Admin,
}

/// The answer's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// JSON (default).
    #[default]
    Json,
    /// CSV with a header row (events only).
    Csv,
}

/// A decision filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// `allow`.
    Allow,
    /// `deny`.
    Deny,
    /// `partial`.
    Partial,
}

impl Decision {
    /// The stored spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Partial => "partial",
        }
    }
}

/// What the admin API sends: the JSON body of `POST /internal/audit/query`. Absent members
/// do not filter; a member that does not apply to `kind` is refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// Which read.
    pub kind: QueryKind,
    /// The zone (the admin API checked the caller may read it).
    pub zone_id: String,
    /// Exact request id (required for [`QueryKind::ByRequest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// `occurred_at >= since` (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// `occurred_at < until` (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// Events: the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// Events: any of these types (at most [`MAX_EVENT_TYPES`]; empty: any type).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_types: Vec<String>,
    /// Events: metadata `application_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_id: Option<String>,
    /// Events: metadata `agent_session_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Events: metadata `session_id` (the authority record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_record_id: Option<String>,
    /// Events: metadata `agent_labels` holds this label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Admin: exact actor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    /// Admin: exact entity type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_type: Option<String>,
    /// Admin: exact entity id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    /// Pages: the opaque cursor of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Pages: rows wanted (events 1..=1000, default 100; admin 1..=500, default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// Events: `json` (default) or `csv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// Events: the item members to answer, in this order for CSV (default: all of
    /// [`EVENT_FIELDS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
}

/// A finished answer: status, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryAnswer {
    /// HTTP status (200).
    pub status: u16,
    /// [`JSON_TYPE`] or [`CSV_TYPE`].
    pub content_type: &'static str,
    /// [`CSV_DISPOSITION`] for CSV.
    pub content_disposition: Option<&'static str>,
    /// The page's continuation (also in the JSON body); sent as [`NEXT_CURSOR_HEADER`].
    pub next_cursor: Option<String>,
    /// The body.
    pub body: Bytes,
}

impl QueryAnswer {
    /// The HTTP response: status, `Content-Type`, `Content-Disposition` and
    /// [`NEXT_CURSOR_HEADER`] when set, and the body.
    #[must_use]
    pub fn into_response(self) -> Response<Body> {
        let mut response = respond::bytes(self.status, self.content_type, self.body);
        let headers = response.headers_mut();
        if let Some(disposition) = self.content_disposition {
            headers.insert(
                http::header::CONTENT_DISPOSITION,
                HeaderValue::from_static(disposition),
            );
        }
        // A cursor is base64url text, always a valid header value.
        if let Some(cursor) = self.next_cursor
            && let Ok(value) = HeaderValue::from_str(&cursor)
        {
            headers.insert(NEXT_CURSOR_HEADER, value);
        }
        response
    }
}

/// Why a query was not answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// 400 `invalid_query`: a parameter is missing, malformed or does not apply. The
    /// message names the parameter, never its value.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// 400 `invalid_cursor`: the cursor is not one this service issued.
    #[error("invalid cursor")]
    InvalidCursor,
    /// 404 `request_not_found`: no event carries the request id in the zone.
    #[error("request not found")]
    RequestNotFound,
    /// 503: the database failed or timed out.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for QueryError {
    fn from(error: sqlx::Error) -> Self {
        QueryError::Store(StoreError::from(error))
    }
}

impl QueryError {
    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            QueryError::InvalidQuery(_) | QueryError::InvalidCursor => 400,
            QueryError::RequestNotFound => 404,
            QueryError::Store(_) => 503,
        }
    }

    /// The catalog code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::InvalidQuery(_) => "invalid_query",
            QueryError::InvalidCursor => "invalid_cursor",
            QueryError::RequestNotFound => "request_not_found",
            QueryError::Store(_) => "service_unavailable",
        }
    }

    /// The refusal as a client may see it (a store failure says only that the database is
    /// unavailable; the cause belongs in the log).
    #[must_use]
    pub fn problem(&self) -> Problem {
        let message = match self {
            QueryError::InvalidQuery(message) => message.clone(),
            QueryError::InvalidCursor => "cursor is not one this API issued".to_owned(),
            QueryError::RequestNotFound => "no audit event has this request id".to_owned(),
            QueryError::Store(_) => "the database is unavailable".to_owned(),
        };
        Problem::new(self.status(), self.code(), message)
    }
}

fn invalid(message: impl Into<String>) -> QueryError {
    QueryError::InvalidQuery(message.into())
}

/// Answers `request` from the ledger through `pool` (role `caracal_audit`).
///
/// # Errors
///
/// [`QueryError`]: the refusal to answer, or the store failure.
pub async fn run(pool: &sqlx::PgPool, request: QueryRequest) -> Result<QueryAnswer, QueryError> {
    let plan = Plan::from_request(&request)?;
    let zone = plan.zone.as_str();
    // Read in one read-only snapshot, release the connection, then redact and render.
    let mut tx = zone_snapshot(pool, &plan.zone).await?;
    let fetched = match plan.kind {
        QueryKind::Events => Fetched::Events(
            store::events(&mut tx, zone, &event_filter(&request), &plan.page).await?,
        ),
        QueryKind::ByRequest => {
            let request_id = request.request_id.as_deref().unwrap_or_default();
            Fetched::ByRequest(store::by_request(&mut tx, zone, request_id, BY_REQUEST_MAX).await?)
        }
        QueryKind::Admin => Fetched::Admin(
            store::admin_events(&mut tx, zone, &admin_filter(&request), &plan.page).await?,
        ),
    };
    tx.commit().await?;
    match fetched {
        Fetched::Events(mut page) => {
            page.items.iter_mut().for_each(redact_event);
            Ok(match plan.format {
                Format::Json => events_json(page, &plan.fields),
                Format::Csv => events_csv(page, &plan.fields),
            })
        }
        Fetched::ByRequest(rows) if rows.is_empty() => Err(QueryError::RequestNotFound),
        Fetched::ByRequest(mut rows) => {
            rows.iter_mut().for_each(redact_event);
            Ok(by_request_json(rows))
        }
        Fetched::Admin(mut page) => {
            page.items
                .iter_mut()
                .filter_map(|row| row.payload_json.as_mut())
                .for_each(redact);
            Ok(admin_json(page))
        }
    }
}

/// What one read returned.
enum Fetched {
    Events(Page<EventRow>),
    ByRequest(Vec<EventRow>),
    Admin(Page<AdminAuditRow>),
}

/// A validated request: what [`run`] reads and how it renders.
#[derive(Debug, Clone)]
struct Plan {
    kind: QueryKind,
    zone: ZoneId,
    page: PageRequest,
    format: Format,
    /// Indexes into [`EVENT_FIELDS`], in answer order.
    fields: Vec<usize>,
}

impl Plan {
    /// Checks every member of `request`; the first problem is the refusal.
    fn from_request(request: &QueryRequest) -> Result<Self, QueryError> {
        let kind = request.kind;
        let zone = ZoneId::parse(&request.zone_id)
            .map_err(|_invalid| invalid("zone_id is not a zone id"))?;
        let allowed: &[&str] = match kind {
            QueryKind::Events => &[
                "request_id",
                "since",
                "until",
                "decision",
                "event_type",
                "application_id",
                "session_id",
                "authority_record_id",
                "label",
                "cursor",
                "limit",
                "format",
                "fields",
            ],
            QueryKind::ByRequest => &["request_id"],
            QueryKind::Admin => &[
                "request_id",
                "since",
                "until",
                "actor_id",
                "entity_type",
                "entity_id",
                "cursor",
                "limit",
            ],
        };
        if let Some(name) = present(request).into_iter().find(|n| !allowed.contains(n)) {
            return Err(invalid(format!("{name} does not apply to this query")));
        }
        for (name, value) in [
            ("request_id", &request.request_id),
            ("application_id", &request.application_id),
            ("session_id", &request.session_id),
            ("authority_record_id", &request.authority_record_id),
            ("label", &request.label),
            ("actor_id", &request.actor_id),
            ("entity_type", &request.entity_type),
            ("entity_id", &request.entity_id),
        ] {
            if let Some(value) = value {
                check_text(name, value)?;
            }
        }
        if kind == QueryKind::ByRequest && request.request_id.is_none() {
            return Err(invalid("request_id is required"));
        }
        if let (Some(since), Some(until)) = (request.since, request.until)
            && since > until
        {
            return Err(invalid("since must not be after until"));
        }
        if request.event_types.len() > MAX_EVENT_TYPES {
            return Err(invalid(format!(
                "event_type lists at most {MAX_EVENT_TYPES} types"
            )));
        }
        if !request.event_types.iter().all(|t| is_event_type(t)) {
            return Err(invalid(
                "event_type must be 1 to 64 of a-z, 0-9, '_' and '.'",
            ));
        }
        let (default_limit, max_limit) = match kind {
            QueryKind::Admin => (ADMIN_DEFAULT_LIMIT, ADMIN_MAX_LIMIT),
            QueryKind::Events | QueryKind::ByRequest => (EVENTS_DEFAULT_LIMIT, EVENTS_MAX_LIMIT),
        };
        let limit = match request.limit {
            None => default_limit,
            Some(limit) if (1..=max_limit).contains(&limit) => limit,
            Some(_) => {
                return Err(invalid(format!(
                    "limit must be an integer from 1 to {max_limit}"
                )));
            }
        };
        let after = match request.cursor.as_deref() {
            None | Some("") => None,
            // The admin API's cursor format (base64url of `{"ts","id"}`), decoded by the
            // same code that encodes it.
            Some(cursor) => Some(
                control_http::strict::page_request(None, Some(cursor))
                    .ok()
                    .and_then(|page| page.after)
                    .ok_or(QueryError::InvalidCursor)?,
            ),
        };
        let fields = match &request.fields {
            None => (0..EVENT_FIELDS.len()).collect(),
            Some(names) => projection(names)?,
        };
        Ok(Self {
            kind,
            zone,
            page: PageRequest { limit, after },
            format: request.format.unwrap_or_default(),
            fields,
        })
    }
}

/// The optional members `request` sets, by their admin API parameter names.
fn present(request: &QueryRequest) -> Vec<&'static str> {
    [
        ("request_id", request.request_id.is_some()),
        ("since", request.since.is_some()),
        ("until", request.until.is_some()),
        ("decision", request.decision.is_some()),
        ("event_type", !request.event_types.is_empty()),
        ("application_id", request.application_id.is_some()),
        ("session_id", request.session_id.is_some()),
        ("authority_record_id", request.authority_record_id.is_some()),
        ("label", request.label.is_some()),
        ("actor_id", request.actor_id.is_some()),
        ("entity_type", request.entity_type.is_some()),
        ("entity_id", request.entity_id.is_some()),
        ("cursor", request.cursor.is_some()),
        ("limit", request.limit.is_some()),
        // `format=json` is the default for every kind; only CSV is events-only.
        ("format", request.format == Some(Format::Csv)),
        ("fields", request.fields.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect()
}

/// A text filter: 1 to [`MAX_FILTER_CHARS`] characters, none of them a control character
/// (Postgres text cannot hold NUL; the others are never in ids).
fn check_text(name: &str, value: &str) -> Result<(), QueryError> {
    let chars = value.chars().count();
    if chars == 0 || chars > MAX_FILTER_CHARS || value.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{name} must be 1 to {MAX_FILTER_CHARS} characters without control characters"
        )));
    }
    Ok(())
}

/// The indexes of `names` in [`EVENT_FIELDS`]: each known, none twice, at least one.
fn projection(names: &[String]) -> Result<Vec<usize>, QueryError> {
    if names.is_empty() {
        return Err(invalid("fields must name at least one field"));
    }
    let mut indexes = Vec::with_capacity(names.len());
    for name in names {
        let index = EVENT_FIELDS
            .iter()
            .position(|field| field == name)
            .ok_or_else(|| invalid(format!("fields may name only {}", EVENT_FIELDS.join(", "))))?;
        if indexes.contains(&index) {
            return Err(invalid("fields names a field twice"));
        }
        indexes.push(index);
    }
    Ok(indexes)
}

fn event_filter(request: &QueryRequest) -> EventFilter<'_> {
    EventFilter {
        since: request.since,
        until: request.until,
        request_id: request.request_id.as_deref(),
        decision: request.decision.map(Decision::as_str),
        event_types: &request.event_types,
        application_id: request.application_id.as_deref(),
        agent_session_id: request.session_id.as_deref(),
        authority_record_id: request.authority_record_id.as_deref(),
        label: request.label.as_deref(),
    }
}

fn admin_filter(request: &QueryRequest) -> AdminFilter<'_> {
    AdminFilter {
        since: request.since,
        until: request.until,
        request_id: request.request_id.as_deref(),
        actor_id: request.actor_id.as_deref(),
        entity_type: request.entity_type.as_deref(),
        entity_id: request.entity_id.as_deref(),
    }
}

/// Whether a metadata key looks like it names a secret: it contains `secret`, `token`,
/// `password`, `passwd`, `authorization`, `api_key`, `private_key`, `credential` or `cookie`,
/// compared without case and without `_` and `-` (so `apiKey`, `x-api-key` and `API_KEY`
/// all count).
#[must_use]
pub fn is_secret_key(key: &str) -> bool {
    const MARKERS: [&str; 9] = [
        "secret",
        "token",
        "password",
        "passwd",
        "authorization",
        "apikey",
        "privatekey",
        "credential",
        "cookie",
    ];
    let folded: String = key
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    MARKERS.iter().any(|marker| folded.contains(marker))
}

/// Replaces the value of every secret-looking key ([`is_secret_key`]) with
/// [`REDACTED`], at any depth of objects and arrays.
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, member) in map.iter_mut() {
                if is_secret_key(key) {
                    *member = Value::String(REDACTED.to_owned());
                } else {
                    redact(member);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
    }
}

/// Redacts the JSON columns of an event (metadata above all; diagnostics and determining
/// policies may quote it).
fn redact_event(row: &mut EventRow) {
    for column in [
        &mut row.determining_policies_json,
        &mut row.diagnostics_json,
        &mut row.metadata_json,
    ]
    .into_iter()
    .flatten()
    {
        redact(column);
    }
}

/// One value of an answer row.
enum Cell<'a> {
    /// A text column.
    Text(Option<&'a str>),
    /// A time, rendered `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    Time(DateTime<Utc>),
    /// A `jsonb` column.
    Json(Option<&'a Value>),
}

impl Cell<'_> {
    fn to_json(&self) -> Value {
        match self {
            Cell::Text(text) => text.map_or(Value::Null, |t| Value::String(t.to_owned())),
            Cell::Time(at) => Value::String(format_time(*at)),
            Cell::Json(value) => value.cloned().unwrap_or(Value::Null),
        }
    }

    fn to_text(&self) -> String {
        match self {
            Cell::Text(text) => text.unwrap_or_default().to_owned(),
            Cell::Time(at) => format_time(*at),
            Cell::Json(value) => value.map(Value::to_string).unwrap_or_default(),
        }
    }
}

/// The cell of `EVENT_FIELDS[index]`.
fn event_cell(row: &EventRow, index: usize) -> Cell<'_> {
    match index {
        0 => Cell::Text(Some(&row.id)),
        1 => Cell::Text(Some(&row.zone_id)),
        2 => Cell::Text(Some(&row.event_type)),
        3 => Cell::Text(row.request_id.as_deref()),
        4 => Cell::Text(row.decision.as_deref()),
        5 => Cell::Text(row.policy_set_id.as_deref()),
        6 => Cell::Text(row.policy_set_version_id.as_deref()),
        7 => Cell::Text(row.manifest_sha.as_deref()),
        8 => Cell::Text(row.evaluation_status.as_deref()),
        9 => Cell::Json(row.determining_policies_json.as_ref()),
        10 => Cell::Json(row.diagnostics_json.as_ref()),
        11 => Cell::Json(row.metadata_json.as_ref()),
        12 => Cell::Time(row.occurred_at),
        _ => Cell::Time(row.ingested_at),
    }
}

/// An event item with the projected members.
fn event_item(row: &EventRow, fields: &[usize]) -> Value {
    let mut item = Map::new();
    for &index in fields {
        if let Some(name) = EVENT_FIELDS.get(index) {
            item.insert((*name).to_owned(), event_cell(row, index).to_json());
        }
    }
    Value::Object(item)
}

/// An admin audit item.
fn admin_item(row: &AdminAuditRow) -> Value {
    serde_json::json!({
        "id": row.id,
        "zone_id": row.zone_id,
        "request_id": row.request_id,
        "actor_id": row.actor_id,
        "actor_name": row.actor_name,
        "actor_scope": row.actor_scope,
        "action": row.action,
        "method": row.method,
        "path": row.path,
        "entity_type": row.entity_type,
        "entity_id": row.entity_id,
        "status_code": row.status_code,
        "payload_json": row.payload_json,
        "occurred_at": format_time(row.occurred_at),
        "chain_seq": row.chain_seq,
        "content_sha256": row.content_sha256,
    })
}

/// Rows rendered one by one until the next would pass [`MAX_ANSWER_BYTES`] (the first is
/// always taken): the rendered rows and the key to continue after when rows were left out
/// or the page has more.
fn within_budget<T: Keyed>(
    page: &Page<T>,
    render: impl Fn(&T) -> Vec<u8>,
) -> (Vec<Vec<u8>>, Option<String>) {
    let mut rendered = Vec::with_capacity(page.items.len());
    let mut size = 0usize;
    for row in &page.items {
        let bytes = render(row);
        if !rendered.is_empty() && size.saturating_add(bytes.len()) > MAX_ANSWER_BYTES {
            let next = rendered
                .len()
                .checked_sub(1)
                .and_then(|last| page.items.get(last))
                .map(|row: &T| control_http::strict::encode_cursor(&row.key()));
            return (rendered, next);
        }
        size = size.saturating_add(bytes.len());
        rendered.push(bytes);
    }
    let next = page.next.as_ref().map(control_http::strict::encode_cursor);
    (rendered, next)
}

/// `{"items":[…],"next_cursor":…}` from rendered items.
fn page_json(items: &[Vec<u8>], next_cursor: Option<String>) -> QueryAnswer {
    let cursor = next_cursor.as_ref().map_or_else(
        || "null".to_owned(),
        |c| Value::String(c.clone()).to_string(),
    );
    let mut body = Vec::with_capacity(items.iter().map(Vec::len).sum::<usize>() + 64);
    body.extend_from_slice(b"{\"items\":[");
    body.extend_from_slice(&items.join(&b","[..]));
    body.extend_from_slice(b"],\"next_cursor\":");
    body.extend_from_slice(cursor.as_bytes());
    body.push(b'}');
    QueryAnswer {
        status: 200,
        content_type: JSON_TYPE,
        content_disposition: None,
        next_cursor,
        body: Bytes::from(body),
    }
}

fn events_json(page: Page<EventRow>, fields: &[usize]) -> QueryAnswer {
    let (items, next) = within_budget(&page, |row| {
        event_item(row, fields).to_string().into_bytes()
    });
    page_json(&items, next)
}

fn admin_json(page: Page<AdminAuditRow>) -> QueryAnswer {
    let (items, next) = within_budget(&page, |row| admin_item(row).to_string().into_bytes());
    page_json(&items, next)
}

/// The bare array of one request's events, up to [`MAX_ANSWER_BYTES`].
fn by_request_json(rows: Vec<EventRow>) -> QueryAnswer {
    let all: Vec<usize> = (0..EVENT_FIELDS.len()).collect();
    let page = Page {
        items: rows,
        next: None,
    };
    let (items, _more) = within_budget(&page, |row| event_item(row, &all).to_string().into_bytes());
    let mut body = Vec::with_capacity(items.iter().map(Vec::len).sum::<usize>() + 2);
    body.push(b'[');
    body.extend_from_slice(&items.join(&b","[..]));
    body.push(b']');
    QueryAnswer {
        status: 200,
        content_type: JSON_TYPE,
        content_disposition: None,
        next_cursor: None,
        body: Bytes::from(body),
    }
}

/// A CSV export: a header row with the projected names, then one row per event, lines
/// ending in CRLF (RFC 4180).
fn events_csv(page: Page<EventRow>, fields: &[usize]) -> QueryAnswer {
    let header: Vec<String> = fields
        .iter()
        .filter_map(|&index| EVENT_FIELDS.get(index))
        .map(|name| csv_cell(name))
        .collect();
    let (rows, next) = within_budget(&page, |row| {
        let cells: Vec<String> = fields
            .iter()
            .map(|&index| csv_cell(&event_cell(row, index).to_text()))
            .collect();
        format!("{}\r\n", cells.join(",")).into_bytes()
    });
    let mut body = format!("{}\r\n", header.join(",")).into_bytes();
    for row in rows {
        body.extend_from_slice(&row);
    }
    QueryAnswer {
        status: 200,
        content_type: CSV_TYPE,
        content_disposition: Some(CSV_DISPOSITION),
        next_cursor: next,
        body: Bytes::from(body),
    }
}

/// One CSV field: a value a spreadsheet would evaluate (starting with `=`, `+`, `-`, `@`,
/// tab or carriage return) is prefixed with `'`; then a value holding a comma, a quote, CR
/// or LF is quoted with its quotes doubled (RFC 4180).
#[must_use]
pub fn csv_cell(value: &str) -> String {
    let neutral = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if neutral.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", neutral.replace('"', "\"\""))
    } else {
        neutral
    }
}

#[cfg(test)]
mod tests;
