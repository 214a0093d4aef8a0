//! The ledger's view of a producer's event (storage §8.1, §8.2): strict parsing and
//! normalisation of the `data` bytes, the 13-member canonical object and its content hash.
//!
//! The same parser reads the `jsonb` columns back from Postgres (for the tamper sweep and
//! the verifier), so a hash computed at ingest is reproduced from the stored row. What
//! `jsonb` cannot keep exactly is refused at ingest: repeated object keys, U+0000, numbers
//! that do not survive an IEEE-754 double, nesting deeper than [`MAX_NESTING`].

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use control_crypto::{AUDIT_CONTENT_DOMAIN, CanonicalError, canonical_sha256};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};

/// Largest accepted `data` (`AUDIT_MAX_EVENT_BYTES`).
pub const MAX_EVENT_BYTES: usize = 262_144;
/// Deepest accepted nesting of arrays and objects.
pub const MAX_NESTING: usize = 64;

/// Why an event was refused; its [`code`](InvalidEvent::code) follows `invalid_event:` in
/// the dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    /// `data` is larger than [`MAX_EVENT_BYTES`].
    #[error("event larger than {MAX_EVENT_BYTES} bytes")]
    TooLarge,
    /// `data` is not JSON.
    #[error("data is not JSON")]
    NotJson,
    /// `data` is JSON but not an object.
    #[error("data is not a JSON object")]
    NotObject,
    /// Nesting deeper than [`MAX_NESTING`].
    #[error("nesting deeper than {MAX_NESTING}")]
    TooDeep,
    /// An object repeats a key.
    #[error("an object repeats a key")]
    RepeatedKey,
    /// A string or key holds U+0000.
    #[error("a string holds U+0000")]
    NulCharacter,
    /// A number that an IEEE-754 double cannot hold exactly.
    #[error("a number does not survive a double")]
    InexactNumber,
    /// A required member is absent or a member has the wrong type or form.
    #[error("member {0} is missing or malformed")]
    Member(&'static str),
}

impl InvalidEvent {
    /// The rule's name, e.g. `repeated_key` or `member_zone_id`.
    #[must_use]
    pub fn code(&self) -> String {
        match self {
            Self::TooLarge => "too_large".into(),
            Self::NotJson => "not_json".into(),
            Self::NotObject => "not_object".into(),
            Self::TooDeep => "too_deep".into(),
            Self::RepeatedKey => "repeated_key".into(),
            Self::NulCharacter => "nul_character".into(),
            Self::InexactNumber => "inexact_number".into(),
            Self::Member(name) => format!("member_{name}"),
        }
    }
}

/// A validated, normalised event: what one `audit_events` row holds before the chain
/// columns are added.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerEvent {
    /// Event id (the producer's UUIDv7).
    pub id: String,
    /// Zone id.
    pub zone_id: String,
    /// Event type.
    pub event_type: String,
    /// Request id.
    pub request_id: Option<String>,
    /// `allow`, `deny` or `partial`.
    pub decision: Option<String>,
    /// Policy set id.
    pub policy_set_id: Option<String>,
    /// Policy set version id.
    pub policy_set_version_id: Option<String>,
    /// Bundle manifest digest.
    pub manifest_sha: Option<String>,
    /// Evaluation status.
    pub evaluation_status: Option<String>,
    /// Determining policies.
    pub determining_policies_json: Option<Value>,
    /// Diagnostics.
    pub diagnostics_json: Option<Value>,
    /// Metadata.
    pub metadata_json: Option<Value>,
    /// When it happened, in UTC, truncated to microseconds.
    pub occurred_at: DateTime<Utc>,
}

impl LedgerEvent {
    /// Parses and normalises a producer's `data` bytes (§8.2 step 1).
    ///
    /// # Errors
    ///
    /// The first rule the bytes break.
    pub fn parse(data: &[u8]) -> Result<Self, InvalidEvent> {
        if data.len() > MAX_EVENT_BYTES {
            return Err(InvalidEvent::TooLarge);
        }
        let Value::Object(mut members) = strict_json(data)? else {
            return Err(InvalidEvent::NotObject);
        };
        let id = required_text(&mut members, "id", is_identifier)?;
        let zone_id = required_text(&mut members, "zone_id", is_identifier)?;
        let event_type = required_text(&mut members, "event_type", is_event_type)?;
        let decision = optional_text(&mut members, "decision")?;
        if decision
            .as_deref()
            .is_some_and(|d| !matches!(d, "allow" | "deny" | "partial"))
        {
            return Err(InvalidEvent::Member("decision"));
        }
        let occurred_at = match members.remove("occurred_at") {
            Some(Value::String(text)) => {
                parse_occurred_at(&text).ok_or(InvalidEvent::Member("occurred_at"))?
            }
            _ => return Err(InvalidEvent::Member("occurred_at")),
        };
        Ok(Self {
            id,
            zone_id,
            event_type,
            request_id: optional_text(&mut members, "request_id")?,
            decision,
            policy_set_id: optional_text(&mut members, "policy_set_id")?,
            policy_set_version_id: optional_text(&mut members, "policy_set_version_id")?,
            manifest_sha: optional_text(&mut members, "manifest_sha")?,
            evaluation_status: optional_text(&mut members, "evaluation_status")?,
            determining_policies_json: optional_json(&mut members, "determining_policies_json"),
            diagnostics_json: optional_json(&mut members, "diagnostics_json"),
            metadata_json: optional_json(&mut members, "metadata_json"),
            occurred_at,
        })
    }

    /// The canonical object of §8.2 step 2: exactly 13 members, `null` for absent ones.
    #[must_use]
    pub fn canonical(&self) -> Value {
        json!({
            "id": self.id,
            "zone_id": self.zone_id,
            "event_type": self.event_type,
            "request_id": self.request_id,
            "decision": self.decision,
            "policy_set_id": self.policy_set_id,
            "policy_set_version_id": self.policy_set_version_id,
            "manifest_sha": self.manifest_sha,
            "evaluation_status": self.evaluation_status,
            "determining_policies_json": self.determining_policies_json,
            "diagnostics_json": self.diagnostics_json,
            "metadata_json": self.metadata_json,
            "occurred_at": format_time(self.occurred_at),
        })
    }

    /// `content_sha256` (§8.2 steps 3 and 4).
    ///
    /// # Errors
    ///
    /// [`CanonicalError`], which a parsed event cannot produce.
    pub fn content_sha256(&self) -> Result<[u8; 32], CanonicalError> {
        Ok(self.content()?.sha256)
    }

    /// The content hash and the JCS text of the three JSON members, from one serialisation
    /// of each value: the canonical object is written member by member in JCS order (the
    /// same bytes as JCS of [`canonical`](Self::canonical), without building that object),
    /// and the members' texts are what the ledger stores in their `jsonb` columns.
    ///
    /// # Errors
    ///
    /// [`CanonicalError`], which a parsed event cannot produce.
    pub fn content(&self) -> Result<Content, CanonicalError> {
        let json = |value: &Option<Value>| {
            value
                .as_ref()
                .map(serde_json_canonicalizer::to_string)
                .transpose()
                .map_err(|_unserialisable| CanonicalError)
        };
        let determining_policies_json = json(&self.determining_policies_json)?;
        let diagnostics_json = json(&self.diagnostics_json)?;
        let metadata_json = json(&self.metadata_json)?;
        /// A member's value: JCS text already written, or a value to write.
        enum Member<'a> {
            Json(Option<&'a str>),
            Text(Option<&'a str>),
        }
        let occurred_at = format_time(self.occurred_at);
        // The names are ASCII, so JCS's UTF-16 order is their byte order.
        let members = [
            ("decision", Member::Text(self.decision.as_deref())),
            (
                "determining_policies_json",
                Member::Json(determining_policies_json.as_deref()),
            ),
            (
                "diagnostics_json",
                Member::Json(diagnostics_json.as_deref()),
            ),
            (
                "evaluation_status",
                Member::Text(self.evaluation_status.as_deref()),
            ),
            ("event_type", Member::Text(Some(&self.event_type))),
            ("id", Member::Text(Some(&self.id))),
            ("manifest_sha", Member::Text(self.manifest_sha.as_deref())),
            ("metadata_json", Member::Json(metadata_json.as_deref())),
            ("occurred_at", Member::Text(Some(&occurred_at))),
            ("policy_set_id", Member::Text(self.policy_set_id.as_deref())),
            (
                "policy_set_version_id",
                Member::Text(self.policy_set_version_id.as_deref()),
            ),
            ("request_id", Member::Text(self.request_id.as_deref())),
            ("zone_id", Member::Text(Some(&self.zone_id))),
        ];
        let json_bytes = [
            &determining_policies_json,
            &diagnostics_json,
            &metadata_json,
        ]
        .iter()
        .map(|t| t.as_ref().map_or(0, String::len))
        .sum::<usize>();
        let mut canonical: Vec<u8> = Vec::with_capacity(json_bytes + 512);
        canonical.push(b'{');
        for (n, (name, value)) in members.iter().enumerate() {
            if n > 0 {
                canonical.push(b',');
            }
            canonical.push(b'"');
            canonical.extend_from_slice(name.as_bytes());
            canonical.extend_from_slice(b"\":");
            match value {
                Member::Json(text) => {
                    canonical.extend_from_slice(text.unwrap_or("null").as_bytes());
                }
                Member::Text(text) => serde_json_canonicalizer::to_writer(text, &mut canonical)
                    .map_err(|_unserialisable| CanonicalError)?,
            }
        }
        canonical.push(b'}');
        Ok(Content {
            sha256: canonical_sha256(AUDIT_CONTENT_DOMAIN, &canonical),
            determining_policies_json,
            diagnostics_json,
            metadata_json,
        })
    }
}

/// An event's content hash with the canonical text of its JSON members
/// ([`LedgerEvent::content`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// `content_sha256`.
    pub sha256: [u8; 32],
    /// JCS text of `determining_policies_json`.
    pub determining_policies_json: Option<String>,
    /// JCS text of `diagnostics_json`.
    pub diagnostics_json: Option<String>,
    /// JCS text of `metadata_json`.
    pub metadata_json: Option<String>,
}

/// Renders a time as the ledger does everywhere: UTC, 6 fractional digits, `Z`.
#[must_use]
pub fn format_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Truncates a time to microseconds (Postgres would round).
#[must_use]
pub fn truncate_to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    let nanos = at.nanosecond();
    at.with_nanosecond(nanos - nanos % 1000).unwrap_or(at)
}

/// Parses RFC 3339 with any offset and at most 9 fractional digits, converted to UTC and
/// truncated to microseconds. Leap seconds are refused (Postgres cannot store them).
#[must_use]
pub fn parse_occurred_at(text: &str) -> Option<DateTime<Utc>> {
    let fraction_digits = text.split_once('.').map_or(0, |(_, rest)| {
        rest.bytes().take_while(u8::is_ascii_digit).count()
    });
    if fraction_digits > 9 {
        return None;
    }
    let at = DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc);
    if at.nanosecond() >= 1_000_000_000 {
        return None;
    }
    Some(truncate_to_micros(at))
}

/// Parses JSON under the ledger's rules: at most [`MAX_NESTING`] levels, no repeated object
/// key, no U+0000, every number exact in a double. Used for incoming events and for `jsonb`
/// columns read back from Postgres.
///
/// # Errors
///
/// The first rule the text breaks.
pub fn strict_json(text: &[u8]) -> Result<Value, InvalidEvent> {
    scan(text)?;
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let value = Strict::deserialize(&mut deserializer).map_err(|e| {
        if e.to_string().starts_with(REPEATED_KEY) {
            InvalidEvent::RepeatedKey
        } else {
            InvalidEvent::NotJson
        }
    })?;
    deserializer
        .end()
        .map_err(|_trailing| InvalidEvent::NotJson)?;
    if holds_nul(&value.0) {
        return Err(InvalidEvent::NulCharacter);
    }
    Ok(value.0)
}

fn required_text(
    members: &mut Map<String, Value>,
    name: &'static str,
    valid: fn(&str) -> bool,
) -> Result<String, InvalidEvent> {
    match members.remove(name) {
        Some(Value::String(text)) if valid(&text) => Ok(text),
        _ => Err(InvalidEvent::Member(name)),
    }
}

/// A string member, `""` and `null` read as absent.
fn optional_text(
    members: &mut Map<String, Value>,
    name: &'static str,
) -> Result<Option<String>, InvalidEvent> {
    match members.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.is_empty() => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(InvalidEvent::Member(name)),
    }
}

fn optional_json(members: &mut Map<String, Value>, name: &str) -> Option<Value> {
    members.remove(name).filter(|value| !value.is_null())
}

/// `^[A-Za-z0-9._:-]{1,128}$` (event ids and zone ids).
fn is_identifier(text: &str) -> bool {
    (1..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// `^[a-z0-9_.]{1,64}$`, the stored rule for event types (also the query filter's).
pub(crate) fn is_event_type(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.'))
}

fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(members) => members
            .iter()
            .any(|(key, item)| key.contains('\0') || holds_nul(item)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// A lexical pass over the raw bytes: nesting depth and the exactness of every number
/// literal (the parsed value no longer shows which digits were written).
fn scan(text: &[u8]) -> Result<(), InvalidEvent> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(InvalidEvent::TooDeep);
                }
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < text.len()
                    && matches!(text[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let literal =
                    std::str::from_utf8(&text[start..i]).map_err(|_bad| InvalidEvent::NotJson)?;
                if !exact_in_double(literal) {
                    return Err(InvalidEvent::InexactNumber);
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Whether the decimal value written as `literal` is the value of the nearest double's
/// shortest round-trip spelling. When the double lies exactly halfway between two shortest
/// spellings, writers break the tie differently (Rust's formatter and JCS's ECMAScript
/// writer can disagree in the last digit), so the spelling of either passes; the canonical
/// form and the stored `jsonb` text are always the one JCS writes.
fn exact_in_double(literal: &str) -> bool {
    let Ok(value) = literal.parse::<f64>() else {
        return false;
    };
    if !value.is_finite() {
        return false;
    }
    let Some(written) = decimal(literal) else {
        return false;
    };
    decimal(&format!("{value:e}")).is_some_and(|held| held == written)
        || serde_json_canonicalizer::to_string(&value)
            .ok()
            .and_then(|jcs| decimal(&jcs))
            .is_some_and(|held| held == written)
}

/// A decimal literal as (negative, significant digits, exponent of the last digit), with
/// zero normalised to `(false, "", 0)`.
fn decimal(literal: &str) -> Option<(bool, String, i64)> {
    let (negative, rest) = match literal.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, literal),
    };
    let (mantissa, exponent) = match rest.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = format!("{int}{frac}");
    let mut exponent = exponent.checked_sub(i64::try_from(frac.len()).ok()?)?;
    let trimmed_end = digits.trim_end_matches('0');
    exponent = exponent.checked_add(i64::try_from(digits.len() - trimmed_end.len()).ok()?)?;
    let significant = trimmed_end.trim_start_matches('0');
    if significant.is_empty() {
        return Some((false, String::new(), 0));
    }
    Some((negative, significant.to_owned(), exponent))
}

/// Marker that opens the error raised for a repeated key.
const REPEATED_KEY: &str = "caracal: repeated key";

/// A `serde_json::Value` built by a visitor that refuses repeated object keys.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(item) = map.next_value()?;
            if members.insert(key, item).is_some() {
                return Err(de::Error::custom(REPEATED_KEY));
            }
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR: &str = r#"{"id":"0197a3c2-5e10-7d3a-9f1e-2b4c6d8e0f12","zone_id":"zone-1","event_type":"token_exchange",
 "request_id":"req-1","decision":"allow","policy_set_id":"ps-1","policy_set_version_id":"psv-1",
 "manifest_sha":"","evaluation_status":"complete",
 "determining_policies_json":[{"policy":"caracal-app-mint"}],"diagnostics_json":[],
 "metadata_json":{"resource":"resource://api","latency_ms":3.50},
 "occurred_at":"2026-05-21T12:00:00.123456789Z"}"#;

    #[test]
    fn the_published_example_hashes_to_the_published_value() {
        let event = LedgerEvent::parse(VECTOR.as_bytes()).unwrap();
        assert_eq!(
            serde_json_canonicalizer::to_string(&event.canonical()).unwrap(),
            r#"{"decision":"allow","determining_policies_json":[{"policy":"caracal-app-mint"}],"diagnostics_json":[],"evaluation_status":"complete","event_type":"token_exchange","id":"0197a3c2-5e10-7d3a-9f1e-2b4c6d8e0f12","manifest_sha":null,"metadata_json":{"latency_ms":3.5,"resource":"resource://api"},"occurred_at":"2026-05-21T12:00:00.123456Z","policy_set_id":"ps-1","policy_set_version_id":"psv-1","request_id":"req-1","zone_id":"zone-1"}"#
        );
        assert_eq!(
            hex::encode(event.content_sha256().unwrap()),
            "66d38c79d34c405c0a96983845cfb56bc5f703b9991bb4ae5df944e2365ff2fb"
        );
    }

    fn with(member: &str) -> String {
        format!(
            r#"{{"id":"e-1","zone_id":"z","event_type":"t","occurred_at":"2026-05-21T12:00:00Z",{member}}}"#
        )
    }

    #[test]
    fn each_rule_refuses_with_its_code() {
        let cases: Vec<(String, &str)> = vec![
            (with(r#""metadata_json":{"a":1,"a":2}"#), "repeated_key"),
            (with(r#""metadata_json":{"n":12345678901234567890}"#), "inexact_number"),
            (with(r#""metadata_json":{"n":0.30000000000000001}"#), "inexact_number"),
            (with(r#""metadata_json":{"n":9007199254740993}"#), "inexact_number"),
            (with(r#""metadata_json":{"n":1e400}"#), "inexact_number"),
            (with(r#""metadata_json":{"s":"a\u0000b"}"#), "nul_character"),
            (with(r#""metadata_json":{"a\u0000":1}"#), "nul_character"),
            (with(r#""decision":"maybe""#), "member_decision"),
            (with(r#""request_id":7"#), "member_request_id"),
            (r#"{"id":"e 1","zone_id":"z","event_type":"t","occurred_at":"2026-05-21T12:00:00Z"}"#.into(), "member_id"),
            (r#"{"id":"e","zone_id":"z","event_type":"T","occurred_at":"2026-05-21T12:00:00Z"}"#.into(), "member_event_type"),
            (r#"{"id":"e","event_type":"t","occurred_at":"2026-05-21T12:00:00Z"}"#.into(), "member_zone_id"),
            (r#"{"id":"e","zone_id":"z","event_type":"t","occurred_at":"2026-05-21T12:00:00.1234567891Z"}"#.into(), "member_occurred_at"),
            (r#"{"id":"e","zone_id":"z","event_type":"t","occurred_at":"yesterday"}"#.into(), "member_occurred_at"),
            ("[1]".into(), "not_object"),
            ("{".into(), "not_json"),
            (r#"{"id":"e"} x"#.into(), "not_json"),
            (format!("{}{}", "[".repeat(65), "]".repeat(65)), "too_deep"),
        ];
        for (data, code) in cases {
            let error = LedgerEvent::parse(data.as_bytes()).unwrap_err();
            assert_eq!(error.code(), code, "{data}");
        }
        let huge = with(&format!(
            r#""metadata_json":"{}""#,
            "x".repeat(MAX_EVENT_BYTES)
        ));
        assert_eq!(
            LedgerEvent::parse(huge.as_bytes()).unwrap_err(),
            InvalidEvent::TooLarge
        );
    }

    #[test]
    fn exact_numbers_and_normalisations_pass() {
        let event = LedgerEvent::parse(
            with(r#""metadata_json":{"a":3.50,"b":1e2,"c":-0,"d":9007199254740992,"e":0.1,"f":[[[]]]},"request_id":"","decision":null"#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(event.request_id, None);
        assert_eq!(event.decision, None);
        let canonical =
            serde_json_canonicalizer::to_string(&event.canonical()["metadata_json"]).unwrap();
        assert_eq!(
            canonical,
            r#"{"a":3.5,"b":100,"c":0,"d":9007199254740992,"e":0.1,"f":[[[]]]}"#
        );
    }

    #[test]
    fn a_double_halfway_between_two_shortest_spellings_accepts_both_and_stores_one() {
        // 146167767586274.125 is a double: Rust writes it …13, ECMAScript writes …12.
        let mut stored = Vec::new();
        for literal in [
            "146167767586274.12",
            "146167767586274.13",
            "1.4616776758627413e14",
        ] {
            let event = LedgerEvent::parse(
                with(&format!(r#""metadata_json":{{"n":{literal}}}"#)).as_bytes(),
            )
            .unwrap();
            let text = event.content().unwrap().metadata_json.unwrap();
            // The sweep reads the stored text back under the same rules.
            strict_json(text.as_bytes()).unwrap();
            stored.push(text);
        }
        assert_eq!(stored[0], stored[1]);
        assert_eq!(stored[1], stored[2]);
        // One digit more than the shortest is still refused.
        assert_eq!(
            strict_json(b"146167767586274.125").unwrap_err(),
            InvalidEvent::InexactNumber
        );
    }

    #[test]
    fn offsets_become_utc_and_extra_digits_are_truncated_not_rounded() {
        let at = parse_occurred_at("2026-05-21T14:00:00.9999999+02:00").unwrap();
        assert_eq!(format_time(at), "2026-05-21T12:00:00.999999Z");
        assert!(parse_occurred_at("2026-12-31T23:59:60Z").is_none());
    }

    /// The hash of the canonical object written member by member equals the hash of the
    /// JCS of the whole object, and the member texts read back to the same canonical values.
    fn assert_content_matches_the_canonical_object(event: &LedgerEvent) {
        let whole =
            control_crypto::content_sha256(AUDIT_CONTENT_DOMAIN, &event.canonical()).unwrap();
        let content = event.content().unwrap();
        assert_eq!(content.sha256, whole);
        for (text, value) in [
            (
                &content.determining_policies_json,
                &event.determining_policies_json,
            ),
            (&content.diagnostics_json, &event.diagnostics_json),
            (&content.metadata_json, &event.metadata_json),
        ] {
            // Read back as the sweep reads the column: the same canonical value (JCS
            // writes -0 as 0, so compare canonical forms).
            let reread = text.as_ref().map(|t| strict_json(t.as_bytes()).unwrap());
            let jcs = |v: &Option<Value>| {
                v.as_ref()
                    .map(|v| serde_json_canonicalizer::to_string(v).unwrap())
            };
            assert_eq!(jcs(&reread), jcs(value));
        }
    }

    #[test]
    fn content_is_the_hash_of_the_canonical_object_with_every_member_shape() {
        assert_content_matches_the_canonical_object(
            &LedgerEvent::parse(VECTOR.as_bytes()).unwrap(),
        );
        let sparse =
            r#"{"id":"e-1","zone_id":"z","event_type":"t","occurred_at":"2026-05-21T12:00:00Z"}"#;
        let event = LedgerEvent::parse(sparse.as_bytes()).unwrap();
        assert_eq!(event.content().unwrap().metadata_json, None);
        assert_content_matches_the_canonical_object(&event);
        let escapes = with(
            r#""request_id":"r\"\\\n\u001f\u00e9\ud83d\ude00","metadata_json":{"\u00e9":1,"e":[1e21,1e-7,-0.0,"\u2028"],"f":{"b":null,"a":true}}"#,
        );
        assert_content_matches_the_canonical_object(
            &LedgerEvent::parse(escapes.as_bytes()).unwrap(),
        );
    }

    proptest::proptest! {
        #[test]
        fn content_matches_the_canonical_object(
            n in proptest::num::f64::NORMAL,
            s in "\\PC{0,12}",
            k in "[a-zA-Z\u{e0}-\u{ff}\u{1f600}]{1,4}",
        ) {
            let data = with(&format!(
                r#""request_id":{s},"metadata_json":{{{k}:{{"n":{n:e},"s":{s}}},"z":[{s}]}}"#,
                s = serde_json::to_string(&s).unwrap(),
                k = serde_json::to_string(&k).unwrap(),
            ));
            if let Ok(event) = LedgerEvent::parse(data.as_bytes()) {
                assert_content_matches_the_canonical_object(&event);
            }
        }

        /// Whatever the parser accepts hashes the same after a trip through text, as the
        /// jsonb columns make it.
        #[test]
        fn accepted_metadata_round_trips(n in proptest::num::f64::NORMAL, i in proptest::num::i64::ANY, s in "[^\u{0}]{0,16}") {
            let data = with(&format!(r#""metadata_json":{{"n":{n:e},"i":{i},"s":{}}}"#, serde_json::to_string(&s).unwrap()));
            if let Ok(event) = LedgerEvent::parse(data.as_bytes()) {
                let text = serde_json::to_string(event.metadata_json.as_ref().unwrap()).unwrap();
                let reread = strict_json(text.as_bytes()).unwrap();
                proptest::prop_assert_eq!(Some(&reread), event.metadata_json.as_ref());
            }
        }
    }
}
