//! One parsed admin request: path segments, query, body, and the helpers handlers use to
//! read them strictly (unknown fields, bad cursors and bad limits are refused with the
//! catalog's codes; messages never echo submitted values).

use bytes::Bytes;
use control_store::admin::page::PageRequest;
use http::Method;
use serde::de::DeserializeOwned;

use crate::{auth::Principal, error::Problem};

/// A request as handlers see it.
#[derive(Debug)]
pub struct AdminRequest {
    /// Method.
    pub method: Method,
    /// Path as received (for the admin audit log).
    pub path: String,
    /// Query pairs.
    pub query: Vec<(String, String)>,
    /// Body bytes (empty when none).
    pub body: Bytes,
    /// Whether the body was declared JSON.
    pub json_content: bool,
    /// The declared `Content-Type` without parameters, lowercased.
    pub media_type: Option<String>,
    /// Request id.
    pub request_id: String,
    /// Caller.
    pub principal: Principal,
}

impl AdminRequest {
    /// The body parsed as `T` (an empty body reads as `{}`): 415 when it is not declared
    /// JSON, 400 `invalid_body` with one issue otherwise.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Problem> {
        control_http::strict::json(&self.body, self.json_content)
    }

    /// The raw body, which must be declared `media_type`: 415 `unsupported_media_type`
    /// otherwise.
    pub fn raw(&self, media_type: &str) -> Result<&Bytes, Problem> {
        if self.media_type.as_deref() != Some(media_type) {
            return Err(Problem::new(
                415,
                "unsupported_media_type",
                format!("request body must be {media_type}"),
            ));
        }
        Ok(&self.body)
    }

    /// The single value of query parameter `name`.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A filter parameter: absent or empty means no filter.
    pub fn filter(&self, name: &str) -> Option<&str> {
        self.query(name).filter(|v| !v.is_empty())
    }

    /// Refuses query parameters outside `allowed` (besides `cursor` and `limit`).
    pub fn only_query(&self, allowed: &[&str]) -> Result<(), Problem> {
        match self
            .query
            .iter()
            .find(|(k, _)| k != "cursor" && k != "limit" && !allowed.contains(&k.as_str()))
        {
            Some((name, _)) => Err(Problem::new(
                400,
                "invalid_query",
                format!("unknown query parameter {}", printable(name)),
            )),
            None => Ok(()),
        }
    }

    /// `limit` and `cursor`.
    pub fn page(&self) -> Result<PageRequest, Problem> {
        control_http::strict::page_request(self.query("limit"), self.query("cursor"))
    }
}

pub use control_http::strict::{DEFAULT_LIMIT, MAX_LIMIT, encode_cursor, page_body, printable};
