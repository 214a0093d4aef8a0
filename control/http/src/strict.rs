//! Strict request input shared by the admin API and the Coordinator: JSON bodies read into
//! `deny_unknown_fields` types, keyset pages and their opaque cursors (wire-contract §6.2).
//! Refusals name fields, never submitted values.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use control_model::page::{After, Page, PageRequest};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::problem::Problem;

/// The default page size.
pub const DEFAULT_LIMIT: i64 = 200;
/// The largest page.
pub const MAX_LIMIT: i64 = 500;

/// `body` parsed as `T` (an empty body reads as `{}`): 415 `unsupported_media_type` when a
/// body is not declared JSON (`json_content`), 400 `invalid_body` with one issue otherwise.
pub fn json<T: DeserializeOwned>(body: &[u8], json_content: bool) -> Result<T, Problem> {
    json_and_value(body, json_content).map(|(typed, _value)| typed)
}

/// As [`json`], also returning the body as the JSON value it was read from (for request
/// digests), from one parse.
pub fn json_and_value<T: DeserializeOwned>(
    body: &[u8],
    json_content: bool,
) -> Result<(T, Value), Problem> {
    let value: Value = if body.is_empty() {
        Value::Object(serde_json::Map::new())
    } else if !json_content {
        return Err(Problem::new(
            415,
            "unsupported_media_type",
            "request body must be application/json",
        ));
    } else {
        serde_json::from_slice(body).map_err(|e| describe(&e))?
    };
    // Postgres text cannot hold NUL: refuse it here, as bad input, for every field.
    if holds_nul(&value) {
        return Err(Problem::invalid_body(
            "",
            "strings may not contain NUL characters",
        ));
    }
    let typed = serde_json::from_value(value.clone()).map_err(|e| describe(&e))?;
    Ok((typed, value))
}

/// The page asked for by the `limit` (1..=500, default 200) and `cursor` query values.
pub fn page_request(limit: Option<&str>, cursor: Option<&str>) -> Result<PageRequest, Problem> {
    let limit = match limit {
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
    let after = match cursor {
        None | Some("") => None,
        Some(raw) => Some(decode_cursor(raw).ok_or_else(|| {
            Problem::new(400, "invalid_cursor", "cursor is not one this API issued")
        })?),
    };
    Ok(PageRequest { limit, after })
}

/// `{"items":[…],"next_cursor":…}`.
pub fn page_body<T>(page: &Page<T>, render: impl Fn(&T) -> Value) -> Value {
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
    fn limits_are_bounded() {
        assert_eq!(page_request(None, None).unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(page_request(Some("500"), None).unwrap().limit, 500);
        for bad in ["0", "501", "x", "-1"] {
            assert_eq!(
                page_request(Some(bad), None).unwrap_err().code,
                "invalid_query"
            );
        }
        assert_eq!(
            page_request(None, Some("%%")).unwrap_err().code,
            "invalid_cursor"
        );
    }

    #[test]
    fn body_errors_name_fields_but_never_values() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code, reason = "only parsed")]
        struct Body {
            name: String,
        }
        let unknown = json::<Body>(br#"{"name":"a","secret_x":"hunter2"}"#, true).unwrap_err();
        let text = unknown.details.unwrap().to_string();
        assert!(
            text.contains("secret_x") && !text.contains("hunter2"),
            "{text}"
        );
        let wrong = json::<Body>(br#"{"name":12345678}"#, true).unwrap_err();
        let text = wrong.details.unwrap().to_string();
        assert!(!text.contains("12345678"), "{text}");
        assert_eq!(
            json::<Body>(b"{}", false).unwrap_err().code,
            "unsupported_media_type"
        );
        let nul = json::<Body>(b"{\"name\":\"a\\u0000\"}", true).unwrap_err();
        assert_eq!(nul.code, "invalid_body");
    }
}
