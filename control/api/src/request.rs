//! One parsed admin request: path segments, query, body, and the helpers handlers use to
//! read them strictly (unknown fields, bad cursors and bad limits are refused with the
//! catalog's codes; messages never echo submitted values).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use control_store::admin::page::{After, Page, PageRequest};
use http::Method;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{auth::Principal, error::Problem};

/// The default and largest page sizes (wire-contract §6.2).
pub const DEFAULT_LIMIT: i64 = 200;
/// The largest page.
pub const MAX_LIMIT: i64 = 500;

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
        if self.body.is_empty() {
            return serde_json::from_slice(b"{}").map_err(|e| describe(&e));
        }
        if !self.json_content {
            return Err(Problem::new(
                415,
                "unsupported_media_type",
                "request body must be application/json",
            ));
        }
        let value: Value = serde_json::from_slice(&self.body).map_err(|e| describe(&e))?;
        // Postgres text cannot hold NUL: refuse it here, as bad input, for every field.
        if holds_nul(&value) {
            return Err(Problem::invalid_body(
                "",
                "strings may not contain NUL characters",
            ));
        }
        serde_json::from_value(value).map_err(|e| describe(&e))
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
        let limit = match self.query("limit") {
            None => DEFAULT_LIMIT,
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|l| (1..=MAX_LIMIT).contains(l))
                .ok_or_else(|| {
                    Problem::new(
                        400,
                        "invalid_query",
                        "limit must be an integer from 1 to 500",
                    )
                })?,
        };
        let after = match self.query("cursor") {
            None | Some("") => None,
            Some(raw) => Some(decode_cursor(raw).ok_or_else(|| {
                Problem::new(400, "invalid_cursor", "cursor is not one this API issued")
            })?),
        };
        Ok(PageRequest { limit, after })
    }
}

/// `{"items":[…],"next_cursor":…}`.
pub fn page_body<T: serde::Serialize>(page: &Page<T>, render: impl Fn(&T) -> Value) -> Value {
    json!({
        "items": page.items.iter().map(render).collect::<Vec<_>>(),
        "next_cursor": page.next.as_ref().map(encode_cursor),
    })
}

/// base64url of `{"ts","id"}`.
pub fn encode_cursor(after: &After) -> String {
    let raw = json!({"ts": after.ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true), "id": after.id});
    URL_SAFE_NO_PAD.encode(raw.to_string())
}

fn decode_cursor(raw: &str) -> Option<After> {
    let bytes = URL_SAFE_NO_PAD.decode(raw.trim_end_matches('=')).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    let ts = DateTime::parse_from_rfc3339(value.get("ts")?.as_str()?)
        .ok()?
        .with_timezone(&Utc);
    let id = value.get("id")?.as_str()?;
    (!id.is_empty() && id.len() <= 256).then(|| After {
        ts,
        id: id.to_owned(),
    })
}

/// Whether any string (or key) in `value` contains U+0000.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// A serde error as an issue, naming fields but never echoing values.
fn describe(err: &serde_json::Error) -> Problem {
    let text = err.to_string();
    let message = if text.starts_with("unknown field") || text.starts_with("missing field") {
        text.split(" at line")
            .next()
            .unwrap_or("invalid field")
            .to_owned()
    } else if err.is_syntax() || err.is_eof() {
        format!(
            "malformed JSON at line {} column {}",
            err.line(),
            err.column()
        )
    } else {
        "a value has the wrong type or range".to_owned()
    };
    Problem::invalid_body("", message)
}

/// A client-supplied name made safe to put in a message.
pub fn printable(value: &str) -> String {
    value.chars().filter(|c| !c.is_control()).take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let after = After {
            ts: DateTime::parse_from_rfc3339("2026-12-02T01:02:03.456789Z")
                .unwrap()
                .with_timezone(&Utc),
            id: "app-1".to_owned(),
        };
        assert_eq!(decode_cursor(&encode_cursor(&after)), Some(after));
        for bad in ["", "%%%", "eyJ4IjoxfQ", "bm90IGpzb24"] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn body_errors_name_fields_but_never_values() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code, reason = "only parsed")]
        struct Body {
            name: String,
        }
        let unknown =
            serde_json::from_str::<Body>(r#"{"name":"a","secret_x":"hunter2"}"#).unwrap_err();
        let p = describe(&unknown);
        let text = p.details.unwrap().to_string();
        assert!(
            text.contains("secret_x") && !text.contains("hunter2"),
            "{text}"
        );
        let wrong = serde_json::from_str::<Body>(r#"{"name":12345678}"#).unwrap_err();
        let text = describe(&wrong).details.unwrap().to_string();
        assert!(!text.contains("12345678"), "{text}");
    }
}
