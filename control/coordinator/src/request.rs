//! One authenticated Coordinator request as handlers see it, and the replies they give.

use bytes::Bytes;
use control_events::cascade::{Context, Producer};
use control_model::ZoneId;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{auth::Caller, error::Problem, idempotency::IdempotencyKey};

/// A request past authentication.
#[derive(Debug)]
pub struct CoordRequest {
    /// Request id.
    pub request_id: String,
    /// The path's zone (the caller's, for an agent).
    pub zone: ZoneId,
    /// Who calls.
    pub caller: Caller,
    /// Query pairs.
    pub query: Vec<(String, String)>,
    /// Body bytes (empty when none).
    pub body: Bytes,
    /// Whether the body was declared JSON.
    pub json_content: bool,
    /// `idempotency-key` (with its kind), when sent.
    pub idempotency: Option<IdempotencyKey>,
}

impl CoordRequest {
    /// The body parsed strictly as `T` (an empty body reads as `{}`).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Problem> {
        control_http::strict::json(&self.body, self.json_content)
    }

    /// The body parsed strictly as `T`, with the JSON value it was read from (for request
    /// digests).
    pub fn json_and_value<T: DeserializeOwned>(&self) -> Result<(T, Value), Problem> {
        control_http::strict::json_and_value(&self.body, self.json_content)
    }

    /// The single value of query parameter `name`; empty counts as absent.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// The outbox context of a change this request makes as `actor`.
    pub fn outbox<'a>(&'a self, actor: &'a str) -> Context<'a> {
        Context {
            producer: Producer::COORDINATOR,
            zone: self.zone.as_str(),
            actor,
            request_id: Some(&self.request_id),
        }
    }

    /// `limit` and `cursor`.
    pub fn page(&self) -> Result<control_model::page::PageRequest, Problem> {
        control_http::strict::page_request(self.query("limit"), self.query("cursor"))
    }
}

/// What a handler answers.
#[derive(Debug)]
pub enum Reply {
    /// A JSON body with a status.
    Json(u16, Value),
    /// A stored answer replayed for an idempotency key (`Idempotency-Replayed: true`).
    Replayed(u16, Value),
    /// 204.
    NoContent,
}
