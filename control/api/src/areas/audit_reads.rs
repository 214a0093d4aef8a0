//! Audit reads (wire-contract §6.6, "Read views" of §6.3): `GET /v1/zones/{z}/audit`,
//! `GET …/audit/by-request/{request_id}` and `GET /v1/zones/{z}/admin-audit`.
//!
//! This role has no rights on `audit_events` (settled point 3), so nothing here touches
//! the ledger: each handler checks every query parameter first (400 `invalid_query` or
//! `invalid_cursor`, naming the parameter, never echoing its value), then that the zone
//! exists (archived zones keep their evidence readable), then forwards the query to the
//! audit service ([`crate::audit_service`]) and answers its body as it is. The audit
//! service validates again, redacts secret-looking metadata and renders JSON or CSV.
//!
//! `…/audit/by-request/{rid}/explain` (rebuilding the policy input of a denial) is not
//! served: it has no route, so it answers 404 `not_found`.

use chrono::{DateTime, SecondsFormat, Utc};
use control_model::ZoneId;
use control_store::{admin::zones, zone::zone_tx};
use http::Method;
use serde_json::{Map, Value, json};

use super::Reply;
use crate::{
    auth::Need,
    error::{ApiError, Problem},
    request::AdminRequest,
    routes::{Answer, PageShape, Param, RequestBody, Route, Scope, schema_of, unknown_op},
    state::Api,
};

/// Default page size of `/audit`.
pub const DEFAULT_LIMIT: i64 = 100;
/// Largest page of `/audit`.
pub const MAX_LIMIT: i64 = 1000;
/// Most types in one `event_type` list.
pub const MAX_EVENT_TYPES: usize = 16;
/// Longest text filter, in characters.
pub const MAX_FILTER_CHARS: usize = 256;

/// The members of an event item, in CSV column order (the `fields` projection names them).
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

const DECISIONS: [&str; 3] = ["allow", "deny", "partial"];
const FORMATS: [&str; 2] = ["json", "csv"];

/// The exact-match text filters of `/audit`, by parameter name (the wire names them the
/// same).
const EVENT_TEXT_FILTERS: [&str; 5] = [
    "request_id",
    "application_id",
    "session_id",
    "authority_record_id",
    "label",
];
/// The exact-match text filters of `/admin-audit`.
const ADMIN_TEXT_FILTERS: [&str; 4] = ["request_id", "actor_id", "entity_type", "entity_id"];

/// A decision event as the audit reads show it (chain columns are not shown). With
/// `fields`, only the named members are present.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct AuditEventItem {
    /// Event id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone_id: Option<String>,
    /// Event type, e.g. `token_exchange`, `gateway_resource_request`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// Request id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// `allow`, `deny` or `partial`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// Policy set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_set_id: Option<String>,
    /// Policy set version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_set_version_id: Option<String>,
    /// Manifest digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_sha: Option<String>,
    /// Evaluation status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluation_status: Option<String>,
    /// The policies that decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub determining_policies_json: Option<Value>,
    /// Evaluation diagnostics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics_json: Option<Value>,
    /// Producer metadata; secret-looking keys read `"[redacted]"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_json: Option<Value>,
    /// When it happened (RFC 3339, µs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
    /// When the ledger stored it (RFC 3339, µs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingested_at: Option<String>,
}

/// One admin action as the admin audit log shows it, with its chain position.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct AdminAuditItem {
    /// Id.
    pub id: String,
    /// Zone.
    pub zone_id: Option<String>,
    /// Request id of the admin call.
    pub request_id: Option<String>,
    /// Actor (`admin:<token id>`, `env-bootstrap`, …).
    pub actor_id: String,
    /// Actor's name.
    pub actor_name: Option<String>,
    /// Actor's scope.
    pub actor_scope: Option<String>,
    /// `"METHOD path"`.
    pub action: String,
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Entity type.
    pub entity_type: Option<String>,
    /// Entity id.
    pub entity_id: Option<String>,
    /// Response status.
    pub status_code: i32,
    /// Payload (never secrets).
    pub payload_json: Option<Value>,
    /// When it happened (RFC 3339, µs).
    pub occurred_at: String,
    /// Position in the zone's admin chain.
    pub chain_seq: i64,
    /// Content hash (hex).
    pub content_sha256: String,
}

fn invalid(message: impl Into<std::borrow::Cow<'static, str>>) -> Problem {
    Problem::new(400, "invalid_query", message)
}

/// `limit` within `1..=max`, `default` when absent.
fn limit(req: &AdminRequest, default: i64, max: i64) -> Result<i64, Problem> {
    match req.query("limit") {
        None => Ok(default),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=max).contains(l))
            .ok_or_else(|| invalid(format!("limit must be an integer from 1 to {max}"))),
    }
}

/// The cursor, checked to be one the API's pages issue; forwarded as sent.
fn cursor(req: &AdminRequest) -> Result<Option<String>, Problem> {
    match req.query("cursor") {
        None | Some("") => Ok(None),
        Some(raw) => {
            control_http::strict::page_request(None, Some(raw))?;
            Ok(Some(raw.to_owned()))
        }
    }
}

/// An RFC 3339 time parameter, as the UTC time it names.
fn time(req: &AdminRequest, name: &'static str) -> Result<Option<DateTime<Utc>>, Problem> {
    req.filter(name)
        .map(|raw| {
            DateTime::parse_from_rfc3339(raw)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_bad| invalid(format!("{name} must be an RFC 3339 time")))
        })
        .transpose()
}

/// A text filter: 1 to [`MAX_FILTER_CHARS`] characters without control characters.
fn text<'a>(req: &'a AdminRequest, name: &'static str) -> Result<Option<&'a str>, Problem> {
    match req.filter(name) {
        Some(value)
            if value.chars().count() > MAX_FILTER_CHARS || value.chars().any(char::is_control) =>
        {
            Err(invalid(format!(
                "{name} must be at most {MAX_FILTER_CHARS} characters without control characters"
            )))
        }
        other => Ok(other),
    }
}

/// A value restricted to `allowed`.
fn one_of<'a>(
    req: &'a AdminRequest,
    name: &'static str,
    allowed: &[&str],
) -> Result<Option<&'a str>, Problem> {
    match req.filter(name) {
        Some(v) if !allowed.contains(&v) => Err(invalid(format!(
            "{name} must be one of {}",
            allowed.join(", ")
        ))),
        other => Ok(other),
    }
}

/// `^[a-z0-9_.]{1,64}$`.
fn is_event_type(value: &str) -> bool {
    (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

/// `event_type`: one type or a comma list of at most [`MAX_EVENT_TYPES`].
fn event_types(req: &AdminRequest) -> Result<Vec<String>, Problem> {
    let Some(raw) = req.filter("event_type") else {
        return Ok(Vec::new());
    };
    let types: Vec<&str> = raw.split(',').collect();
    if types.len() > MAX_EVENT_TYPES {
        return Err(invalid(format!(
            "event_type lists at most {MAX_EVENT_TYPES} types"
        )));
    }
    if !types.iter().all(|t| is_event_type(t)) {
        return Err(invalid(
            "event_type must be a comma list of types of 1 to 64 of a-z, 0-9, '_' and '.'",
        ));
    }
    Ok(types.into_iter().map(str::to_owned).collect())
}

/// `fields`: a comma list of item members, each once.
fn fields(req: &AdminRequest) -> Result<Option<Vec<String>>, Problem> {
    let Some(raw) = req.filter("fields") else {
        return Ok(None);
    };
    let mut names: Vec<String> = Vec::new();
    for name in raw.split(',') {
        if !EVENT_FIELDS.contains(&name) {
            return Err(invalid(format!(
                "fields may name only {}",
                EVENT_FIELDS.join(", ")
            )));
        }
        if names.iter().any(|n| n == name) {
            return Err(invalid("fields names a field twice"));
        }
        names.push(name.to_owned());
    }
    Ok(Some(names))
}

/// Adds the members that are set.
fn put(query: &mut Map<String, Value>, name: &str, value: Option<Value>) {
    if let Some(value) = value {
        query.insert(name.to_owned(), value);
    }
}

fn rfc3339(at: DateTime<Utc>) -> Value {
    Value::String(at.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// The window `since`..`until`, which must not end before it starts.
fn window(req: &AdminRequest, query: &mut Map<String, Value>) -> Result<(), Problem> {
    let since = time(req, "since")?;
    let until = time(req, "until")?;
    if let (Some(since), Some(until)) = (since, until)
        && since > until
    {
        return Err(invalid("since must not be after until"));
    }
    put(query, "since", since.map(rfc3339));
    put(query, "until", until.map(rfc3339));
    Ok(())
}

/// The internal query of `GET …/audit`, every parameter checked.
pub fn events_query(req: &AdminRequest, zone: &str) -> Result<Value, Problem> {
    req.only_query(&[
        "since",
        "until",
        "request_id",
        "decision",
        "event_type",
        "application_id",
        "session_id",
        "authority_record_id",
        "label",
        "format",
        "fields",
    ])?;
    let mut query = Map::new();
    query.insert("kind".to_owned(), json!("events"));
    query.insert("zone_id".to_owned(), json!(zone));
    window(req, &mut query)?;
    for name in EVENT_TEXT_FILTERS {
        put(&mut query, name, text(req, name)?.map(Value::from));
    }
    put(
        &mut query,
        "decision",
        one_of(req, "decision", &DECISIONS)?.map(Value::from),
    );
    let types = event_types(req)?;
    if !types.is_empty() {
        query.insert("event_types".to_owned(), json!(types));
    }
    put(
        &mut query,
        "format",
        one_of(req, "format", &FORMATS)?.map(Value::from),
    );
    put(&mut query, "fields", fields(req)?.map(Value::from));
    put(&mut query, "cursor", cursor(req)?.map(Value::from));
    query.insert(
        "limit".to_owned(),
        json!(limit(req, DEFAULT_LIMIT, MAX_LIMIT)?),
    );
    Ok(Value::Object(query))
}

/// The internal query of `GET …/audit/by-request/{request_id}`.
pub fn by_request_query(
    req: &AdminRequest,
    zone: &str,
    request_id: &str,
) -> Result<Value, Problem> {
    req.only_query(&[])?;
    if req.query("cursor").is_some() || req.query("limit").is_some() {
        return Err(invalid(
            "by-request answers every event of the request; it takes no cursor or limit",
        ));
    }
    if request_id.chars().count() > MAX_FILTER_CHARS || request_id.chars().any(char::is_control) {
        return Err(invalid(format!(
            "request_id must be at most {MAX_FILTER_CHARS} characters without control characters"
        )));
    }
    Ok(json!({"kind": "by_request", "zone_id": zone, "request_id": request_id}))
}

/// The internal query of `GET …/admin-audit` (paged as every list, §6.2).
pub fn admin_query(req: &AdminRequest, zone: &str) -> Result<Value, Problem> {
    req.only_query(&[
        "since",
        "until",
        "request_id",
        "actor_id",
        "entity_type",
        "entity_id",
    ])?;
    let page = req.page()?;
    let mut query = Map::new();
    query.insert("kind".to_owned(), json!("admin"));
    query.insert("zone_id".to_owned(), json!(zone));
    window(req, &mut query)?;
    for name in ADMIN_TEXT_FILTERS {
        put(&mut query, name, text(req, name)?.map(Value::from));
    }
    put(&mut query, "cursor", cursor(req)?.map(Value::from));
    query.insert("limit".to_owned(), json!(page.limit));
    Ok(Value::Object(query))
}

/// 404 `zone_not_found` unless `zone` is a zone that exists or existed (an archived
/// zone's evidence stays readable).
async fn check_zone(api: &Api, zone: &str) -> Result<(), ApiError> {
    let id = ZoneId::parse(zone).map_err(|_invalid| Problem::not_found("zone"))?;
    let mut tx = zone_tx(&api.pool, &id).await?;
    let known = zones::id_taken(&mut tx, id.as_str()).await?;
    tx.commit().await?;
    if known {
        Ok(())
    } else {
        Err(Problem::not_found("zone").into())
    }
}

/// Checks the zone, forwards `query` and answers what the audit service rendered.
async fn forward(
    api: &Api,
    req: &AdminRequest,
    zone: &str,
    query: Value,
) -> Result<Reply, ApiError> {
    check_zone(api, zone).await?;
    let answer = api.audit_service.query(&query, &req.request_id).await?;
    if answer.content_type.starts_with("text/csv") {
        Ok(Reply::Download {
            media_type: answer.content_type,
            disposition: "attachment; filename=\"audit.csv\"",
            next_cursor: answer.next_cursor,
            body: answer.body,
        })
    } else {
        Ok(Reply::Bytes(answer.content_type, answer.body))
    }
}

/// The area's operations.
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/audit",
        op: "audit.events",
        summary: "Query the zone's decision events, newest first (JSON page or CSV)",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::PageOf(
            schema_of::<AuditEventItem>,
            PageShape {
                default_limit: DEFAULT_LIMIT,
                max_limit: MAX_LIMIT,
                csv: true,
            },
        ),
        query: &[
            Param {
                name: "since",
                description: "RFC 3339; occurred_at >= since",
            },
            Param {
                name: "until",
                description: "RFC 3339; occurred_at < until",
            },
            Param {
                name: "request_id",
                description: "exact request id",
            },
            Param {
                name: "decision",
                description: "allow, deny or partial",
            },
            Param {
                name: "event_type",
                description: "one event type or a comma list of at most 16",
            },
            Param {
                name: "application_id",
                description: "metadata application_id",
            },
            Param {
                name: "session_id",
                description: "metadata agent_session_id",
            },
            Param {
                name: "authority_record_id",
                description: "metadata session_id (the authority record)",
            },
            Param {
                name: "label",
                description: "metadata agent_labels contains it",
            },
            Param {
                name: "format",
                description: "json (default) or csv (an attachment; X-Next-Cursor continues it)",
            },
            Param {
                name: "fields",
                description: "comma list of the item members to answer",
            },
        ],
        refusals: &[(404, "zone_not_found"), (503, "audit_unavailable")],
    },
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/audit/by-request/{request_id}",
        op: "audit.by_request",
        summary: "The decision events of one request, oldest first",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Array(schema_of::<AuditEventItem>),
        query: &[],
        refusals: &[
            (400, "invalid_query"),
            (404, "zone_not_found"),
            (404, "request_not_found"),
            (503, "audit_unavailable"),
        ],
    },
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/admin-audit",
        op: "audit.admin",
        summary: "The zone's admin audit log, newest first",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Page(schema_of::<AdminAuditItem>),
        query: &[
            Param {
                name: "since",
                description: "RFC 3339; occurred_at >= since",
            },
            Param {
                name: "until",
                description: "RFC 3339; occurred_at < until",
            },
            Param {
                name: "request_id",
                description: "exact request id",
            },
            Param {
                name: "actor_id",
                description: "exact actor",
            },
            Param {
                name: "entity_type",
                description: "exact entity type",
            },
            Param {
                name: "entity_id",
                description: "exact entity id",
            },
        ],
        refusals: &[(404, "zone_not_found"), (503, "audit_unavailable")],
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
        ("audit.events", [z]) => forward(api, req, z, events_query(req, z)?).await,
        ("audit.by_request", [z, rid]) => {
            forward(api, req, z, by_request_query(req, z, rid)?).await
        }
        ("audit.admin", [z]) => forward(api, req, z, admin_query(req, z)?).await,
        _ => Err(unknown_op(op)),
    }
}

#[cfg(test)]
mod tests;
