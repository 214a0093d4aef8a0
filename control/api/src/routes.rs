//! The route table: one [`Route`] per operation, owned by its area. The same table drives
//! dispatch (method and path template → operation id and path parameters), the capability
//! and zone checks, and the OpenAPI document (`openapi`), so the served API and its
//! description cannot drift apart.

use http::Method;
use schemars::{JsonSchema, Schema, SchemaGenerator};

use crate::{
    auth::Need,
    error::{ApiError, Problem},
};

/// Produces a JSON Schema for a body or answer type.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// The schema of `T`, registered in the document's components.
pub fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// What a request carries.
#[derive(Clone, Copy)]
pub enum RequestBody {
    /// Nothing: a body sent anyway is read within [`crate::server::MAX_BODY`] and ignored.
    None,
    /// A JSON object of this schema, at most [`crate::server::MAX_BODY`] (always optional on
    /// the wire for operations whose every field is optional).
    Json(SchemaFn),
    /// The raw bytes of one media type, read with their own bound.
    Raw(RawBody),
}

/// A request body taken as raw bytes rather than JSON (a plugin component).
#[derive(Debug, Clone, Copy)]
pub struct RawBody {
    /// The one media type accepted (`Content-Type`, parameters ignored); 415 otherwise.
    pub media_type: &'static str,
    /// The largest body read; 413 beyond it.
    pub max_bytes: usize,
    /// How long the whole body may take to arrive; 408 after it (a slow sender must not
    /// hold an upload slot for ever).
    pub read_deadline: std::time::Duration,
    /// What the bytes are, for the OpenAPI document.
    pub description: &'static str,
}

impl RequestBody {
    /// The most bytes the frame reads for this operation.
    pub fn limit(&self) -> usize {
        match self {
            RequestBody::None | RequestBody::Json(_) => crate::server::MAX_BODY,
            RequestBody::Raw(raw) => raw.max_bytes,
        }
    }
}

/// What a successful answer looks like.
#[derive(Clone, Copy)]
pub enum Answer {
    /// A JSON object with this status.
    Json(u16, SchemaFn),
    /// `{items: [T], next_cursor}` with 200; adds `cursor` and `limit` parameters.
    Page(SchemaFn),
    /// A page with its own limits, and optionally the same rows as a CSV download.
    PageOf(SchemaFn, PageShape),
    /// A bare JSON array of `T` with 200.
    Array(SchemaFn),
    /// 202 with a JSON object.
    Accepted(SchemaFn),
    /// 204, no body.
    NoContent,
    /// 200 with raw bytes of this media type.
    Bytes(&'static str),
}

/// The limits and formats of an [`Answer::PageOf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageShape {
    /// `limit` when absent.
    pub default_limit: i64,
    /// The largest `limit`.
    pub max_limit: i64,
    /// Whether `format=csv` answers `text/csv` (an attachment, continued by the
    /// `X-Next-Cursor` header).
    pub csv: bool,
}

/// Which zone the capability check compares a zone token against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The `{zone_id}` path parameter.
    Zone,
    /// No zone: zone tokens are refused.
    Global,
    /// Any token; the handler limits what a zone token sees.
    Any,
}

/// A query parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// Name.
    pub name: &'static str,
    /// What it does.
    pub description: &'static str,
}

/// One operation.
#[derive(Clone)]
pub struct Route {
    /// Method.
    pub method: Method,
    /// Path template below `/v1`, e.g. `/zones/{zone_id}/applications/{application_id}`.
    pub path: &'static str,
    /// Operation id, unique, e.g. `applications.create`.
    pub op: &'static str,
    /// One-line summary.
    pub summary: &'static str,
    /// Capability needed.
    pub need: Need,
    /// Zone scope.
    pub scope: Scope,
    /// The request body the operation takes, and so how much the frame reads.
    pub body: RequestBody,
    /// The success answer.
    pub answer: Answer,
    /// Query parameters (besides `cursor`/`limit` of pages).
    pub query: &'static [Param],
    /// Refusals specific to the operation: status and `error` code.
    pub refusals: &'static [(u16, &'static str)],
}

impl Route {
    /// The path parameters when `segs` (the path below `/v1/`, split on `/`) fits the
    /// template.
    pub fn matches<'a>(&self, segs: &[&'a str]) -> Option<Vec<&'a str>> {
        let template: Vec<&str> = self.path.trim_start_matches('/').split('/').collect();
        if template.len() != segs.len() {
            return None;
        }
        let mut params = Vec::new();
        for (t, s) in template.iter().zip(segs) {
            if t.starts_with('{') {
                if s.is_empty() {
                    return None;
                }
                params.push(*s);
            } else if t != s {
                return None;
            }
        }
        Some(params)
    }
}

/// The answer for an operation id an area's table names but its handler does not know
/// (an internal inconsistency, caught by the route-table tests).
pub fn unknown_op(op: &str) -> ApiError {
    ApiError::Internal(format!("no handler for operation {op}"))
}

/// 404 for a path no route matches.
pub fn no_route() -> Problem {
    Problem::new(404, "not_found", "no such route")
}

/// 405 for a path some route matches under another method.
pub fn wrong_method() -> Problem {
    Problem::new(405, "method_not_allowed", "method not allowed")
}
