//! Read views (wire-contract §6.3): `GET /v1/zones/{z}/authority-records` and
//! `GET /v1/zones/{z}/sessions` (agent sessions), both pages of `{items, next_cursor}`,
//! newest first. Claim snapshots and session metadata are not shown.

use control_store::admin::views::{
    self, AgentSessionView, AuthorityRecordView, RecordFilter, SessionFilter,
};
use http::Method;

use super::Reply;
use crate::{
    auth::Need,
    error::{ApiError, Problem},
    request::AdminRequest,
    routes::{Answer, Param, RequestBody, Route, Scope, schema_of, unknown_op},
    state::Api,
};

const RECORD_STATUSES: [&str; 3] = ["active", "revoked", "expired"];
const KINDS: [&str; 2] = ["user", "application"];
const SESSION_STATUSES: [&str; 4] = ["active", "suspended", "terminated", "expired"];

/// A filter restricted to `allowed` values.
fn one_of<'a>(
    req: &'a AdminRequest,
    name: &'static str,
    allowed: &[&str],
) -> Result<Option<&'a str>, Problem> {
    match req.filter(name) {
        Some(v) if !allowed.contains(&v) => Err(Problem::new(
            400,
            "invalid_query",
            format!("{name} must be one of {}", allowed.join(", ")),
        )),
        other => Ok(other),
    }
}

/// `GET …/authority-records`.
pub async fn authority_records(
    api: &Api,
    req: &AdminRequest,
    zone: &str,
) -> Result<Reply, ApiError> {
    req.only_query(&["authority_record_id", "status", "subject_id", "kind"])?;
    let filter = RecordFilter {
        authority_record_id: req.filter("authority_record_id"),
        status: one_of(req, "status", &RECORD_STATUSES)?,
        subject_id: req.filter("subject_id"),
        kind: one_of(req, "kind", &KINDS)?,
    };
    super::zone_page(api, zone, &req.page()?, async |c, p| {
        views::authority_records(c, &filter, p).await
    })
    .await
}

/// `GET …/sessions`.
pub async fn sessions(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    req.only_query(&[
        "subject_id",
        "status",
        "application_id",
        "authority_record_id",
    ])?;
    let filter = SessionFilter {
        subject_id: req.filter("subject_id"),
        status: one_of(req, "status", &SESSION_STATUSES)?,
        application_id: req.filter("application_id"),
        authority_record_id: req.filter("authority_record_id"),
    };
    super::zone_page(api, zone, &req.page()?, async |c, p| {
        views::agent_sessions(c, &filter, p).await
    })
    .await
}

/// The area's operations.
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/authority-records",
        op: "views.authority_records",
        summary: "List authority records (one per mint)",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Page(schema_of::<AuthorityRecordView>),
        query: &[
            Param {
                name: "authority_record_id",
                description: "exact record id",
            },
            Param {
                name: "status",
                description: "active, revoked or expired",
            },
            Param {
                name: "subject_id",
                description: "exact subject",
            },
            Param {
                name: "kind",
                description: "user or application",
            },
        ],
        refusals: &[(404, "zone_not_found")],
    },
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/sessions",
        op: "views.sessions",
        summary: "List agent sessions with their subjects",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Page(schema_of::<AgentSessionView>),
        query: &[
            Param {
                name: "subject_id",
                description: "the subject of the session's authority record",
            },
            Param {
                name: "status",
                description: "active, suspended, terminated or expired",
            },
            Param {
                name: "application_id",
                description: "exact application",
            },
            Param {
                name: "authority_record_id",
                description: "exact subject authority record",
            },
        ],
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
        ("views.authority_records", [z]) => authority_records(api, req, z).await,
        ("views.sessions", [z]) => sessions(api, req, z).await,
        _ => Err(unknown_op(op)),
    }
}
