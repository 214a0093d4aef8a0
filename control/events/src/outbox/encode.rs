//! Turning a claimed outbox row into stream fields (`storage-and-events.md` §6.1, §6.3, §7.3
//! step 1). Pure: no I/O, so every rule is unit-tested.

use control_crypto::{
    HmacKey, StreamSigError, canonical_stream_bytes, hmac_sha256_hex, sign_stream_fields,
};
use control_store::outbox::ClaimedRow;
use serde_json::Value;

use crate::streams::{
    AUDIT_EVENTS, AUDIT_FIELD_DATA, AUDIT_FIELD_ID, AUDIT_FIELD_SIG, FIELD_DEDUPE_KEY,
    FIELD_OUTBOX_ID, FIELD_SIG,
};

/// The largest message published, in bytes of field names and values (§7.3 step 4: a
/// larger payload is a permanent failure).
pub const MAX_MESSAGE_BYTES: usize = 1_048_576;

/// The member of an audit row's payload that holds the event (§7.3 step 1).
pub const AUDIT_PAYLOAD_EVENT: &str = "event";

/// The keys a dispatcher signs with.
#[derive(Clone, Default)]
pub struct OutboxKeys {
    /// `STREAMS_HMAC_KEY` (the current key; the previous one only verifies). Without it (dev
    /// mode only) fan-out messages carry no `_sig`.
    pub streams: Option<HmacKey>,
    /// `AUDIT_HMAC_KEY`, for rows on `caracal.audit.events`. Without it `sig` is empty, as the
    /// audit emitter does in dev mode.
    pub audit: Option<HmacKey>,
}

impl std::fmt::Debug for OutboxKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxKeys")
            .field("streams", &self.streams.is_some())
            .field("audit", &self.audit.is_some())
            .finish()
    }
}

/// One message ready for `XADD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedMessage {
    /// The stream (the row's topic).
    pub stream: String,
    /// Field names and values, in publication order.
    pub fields: Vec<(String, String)>,
    /// Whether `MAXLEN ~ STREAMS_MAXLEN` applies: false for the audit stream, which
    /// producers never trim (§6.5).
    pub trim: bool,
}

impl EncodedMessage {
    /// The `XADD` command: `XADD <stream> [MAXLEN ~ <maxlen>] * <field> <value> …`.
    #[must_use]
    pub fn xadd(&self, maxlen: u64) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.stream);
        if self.trim {
            cmd.arg("MAXLEN").arg("~").arg(maxlen);
        }
        cmd.arg("*");
        for (name, value) in &self.fields {
            cmd.arg(name).arg(value);
        }
        cmd
    }

    /// The value of a field, if present.
    #[must_use]
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a row cannot be published. Every cause is permanent: the same row fails the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The payload is not a JSON object.
    #[error("payload is not a JSON object")]
    NotAnObject,
    /// The payload has a member the dispatcher writes itself.
    #[error("payload member {0:?} is reserved for the envelope")]
    ReservedField(String),
    /// A field name or value breaks the `_sig` rules (§6.3).
    #[error("{0}")]
    Fields(#[from] StreamSigError),
    /// An audit row's payload has no `event` object with a string `id`.
    #[error("audit row payload needs an \"event\" object with a string \"id\"")]
    AuditEvent,
    /// The message is larger than [`MAX_MESSAGE_BYTES`].
    #[error("message of {bytes} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge {
        /// Bytes of field names and values.
        bytes: usize,
    },
}

/// Encodes a claimed row (§7.3 step 1). Fan-out rows: the payload flattened (§6.1: strings
/// as they are, numbers in decimal, booleans `true`/`false`, arrays and objects as compact
/// JSON, nulls omitted), then `outbox_id`, `dedupe_key` when the row has one, and `_sig` when
/// a stream key is configured. Rows on `caracal.audit.events`: `id`, `data` (the payload's
/// `event` member, serialised) and `sig` (HMAC-SHA256 hex over the exact `data` bytes).
///
/// # Errors
///
/// [`EncodeError`]; all of them are permanent failures of the row.
pub fn encode(row: &ClaimedRow, keys: &OutboxKeys) -> Result<EncodedMessage, EncodeError> {
    let message = if row.topic == AUDIT_EVENTS {
        encode_audit(row, keys.audit.as_ref())?
    } else {
        encode_fanout(row, keys.streams.as_ref())?
    };
    let bytes = message
        .fields
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum::<usize>();
    if bytes > MAX_MESSAGE_BYTES {
        return Err(EncodeError::TooLarge { bytes });
    }
    Ok(message)
}

fn encode_fanout(row: &ClaimedRow, key: Option<&HmacKey>) -> Result<EncodedMessage, EncodeError> {
    let Value::Object(members) = &row.payload_json else {
        return Err(EncodeError::NotAnObject);
    };
    let mut fields: Vec<(String, String)> = Vec::with_capacity(members.len() + 3);
    for (name, value) in members {
        if name == FIELD_SIG {
            return Err(EncodeError::ReservedField(name.clone()));
        }
        if let Some(text) = flatten(value) {
            fields.push((name.clone(), text));
        }
    }
    // A payload member named like an envelope field is refused by the repeated-field rule.
    fields.push((FIELD_OUTBOX_ID.to_owned(), row.id.clone()));
    if let Some(dedupe) = &row.dedupe_key {
        fields.push((FIELD_DEDUPE_KEY.to_owned(), dedupe.clone()));
    }
    match key {
        Some(key) => {
            let sig = sign_stream_fields(key, &row.topic, &fields)?;
            fields.push((FIELD_SIG.to_owned(), sig));
        }
        // Unsigned (dev mode) messages still follow the field rules, so adding a key later
        // never turns a publishable row into an unpublishable one.
        None => {
            canonical_stream_bytes(&row.topic, &fields)?;
        }
    }
    Ok(EncodedMessage {
        stream: row.topic.clone(),
        fields,
        trim: true,
    })
}

fn encode_audit(row: &ClaimedRow, key: Option<&HmacKey>) -> Result<EncodedMessage, EncodeError> {
    let Value::Object(members) = &row.payload_json else {
        return Err(EncodeError::NotAnObject);
    };
    let event = members
        .get(AUDIT_PAYLOAD_EVENT)
        .filter(|event| event.is_object())
        .ok_or(EncodeError::AuditEvent)?;
    let id = event
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or(EncodeError::AuditEvent)?;
    let data = event.to_string();
    let sig = key
        .map(|key| hmac_sha256_hex(key, &[data.as_bytes()]))
        .unwrap_or_default();
    Ok(EncodedMessage {
        stream: row.topic.clone(),
        fields: vec![
            (AUDIT_FIELD_ID.to_owned(), id.to_owned()),
            (AUDIT_FIELD_DATA.to_owned(), data),
            (AUDIT_FIELD_SIG.to_owned(), sig),
        ],
        trim: false,
    })
}

/// One payload member as a stream value (§6.1); `None` for null, which is omitted.
fn flatten(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Number(number) => Some(number.to_string()),
        // `Value`'s Display is compact JSON.
        Value::Array(_) | Value::Object(_) => Some(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use control_crypto::verify_stream_fields;
    use serde_json::json;

    use super::*;

    fn row(topic: &str, dedupe: Option<&str>, payload: Value) -> ClaimedRow {
        ClaimedRow {
            id: "0197a3c2-5e10-7d3a-9f1e-2b4c6d8e0f12".to_owned(),
            topic: topic.to_owned(),
            dedupe_key: dedupe.map(str::to_owned),
            payload_json: payload,
            attempts: 1,
            created_at: chrono::Utc::now(),
        }
    }

    fn key(byte: &str) -> HmacKey {
        HmacKey::from_hex(&byte.repeat(32)).unwrap()
    }

    #[test]
    fn the_spec_example_is_signed_as_in_section_6_3() {
        let keys = OutboxKeys {
            streams: Some(
                HmacKey::from_hex(
                    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                )
                .unwrap(),
            ),
            audit: None,
        };
        let message = encode(
            &row(
                "caracal.sessions.revoke",
                None,
                json!({"zone_id": "zone-1", "session_id": "authority-record-1",
                       "reason": "grant_revoked", "grant_id": "grant-1"}),
            ),
            &keys,
        )
        .unwrap();
        assert_eq!(
            message.field("_sig"),
            Some("339ac075987f1396409f3f49be9cfda9ec470355858af50a309a68134792f1b3")
        );
        assert_eq!(
            message.field("outbox_id"),
            Some("0197a3c2-5e10-7d3a-9f1e-2b4c6d8e0f12")
        );
        assert_eq!(message.field("dedupe_key"), None);
        assert!(message.trim);
    }

    #[test]
    fn payloads_are_flattened_and_the_envelope_verifies() {
        let streams = key("3d");
        let keys = OutboxKeys {
            streams: Some(streams.clone()),
            audit: None,
        };
        let message = encode(
            &row(
                "caracal.delegations.invalidate",
                Some("edge_expire:z:abcd"),
                json!({"event": "edge_expire", "epoch": 42, "ratio": 1.5, "flag": true,
                       "off": false, "edge_ids": ["e1", "e2"], "nested": {"a": 1, "b": [null]},
                       "gone": null, "empty": ""}),
            ),
            &keys,
        )
        .unwrap();
        assert_eq!(message.field("event"), Some("edge_expire"));
        assert_eq!(message.field("epoch"), Some("42"));
        assert_eq!(message.field("ratio"), Some("1.5"));
        assert_eq!(message.field("flag"), Some("true"));
        assert_eq!(message.field("off"), Some("false"));
        assert_eq!(message.field("edge_ids"), Some(r#"["e1","e2"]"#));
        assert_eq!(message.field("nested"), Some(r#"{"a":1,"b":[null]}"#));
        assert_eq!(message.field("gone"), None);
        assert_eq!(message.field("empty"), Some(""));
        assert_eq!(message.field("dedupe_key"), Some("edge_expire:z:abcd"));
        verify_stream_fields(&[&streams], &message.stream, &message.fields).unwrap();
        // Another key does not verify it.
        assert!(verify_stream_fields(&[&key("11")], &message.stream, &message.fields).is_err());
    }

    #[test]
    fn without_a_stream_key_there_is_no_sig_but_the_field_rules_hold() {
        let keys = OutboxKeys::default();
        let message = encode(
            &row(
                "caracal.keys.invalidate",
                Some("keys:k:created"),
                json!({"kid": "k"}),
            ),
            &keys,
        )
        .unwrap();
        assert_eq!(message.field("_sig"), None);
        assert_eq!(
            encode(
                &row("caracal.keys.invalidate", None, json!({"Bad-Name": "x"})),
                &keys
            ),
            Err(EncodeError::Fields(StreamSigError::BadFieldName {
                field: "Bad-Name".to_owned()
            }))
        );
    }

    #[test]
    fn rows_that_cannot_be_encoded_are_refused() {
        let keys = OutboxKeys {
            streams: Some(key("3d")),
            audit: None,
        };
        let refused = |payload: Value, dedupe: Option<&str>| {
            encode(&row("caracal.keys.invalidate", dedupe, payload), &keys).unwrap_err()
        };
        assert!(matches!(
            refused(json!({"reason": "a\nb"}), None),
            EncodeError::Fields(StreamSigError::ValueHasNewline { .. })
        ));
        assert!(matches!(
            refused(json!({"outbox_id": "forged"}), None),
            EncodeError::Fields(StreamSigError::RepeatedField { .. })
        ));
        assert!(matches!(
            refused(json!({"dedupe_key": "x"}), Some("y")),
            EncodeError::Fields(StreamSigError::RepeatedField { .. })
        ));
        assert_eq!(
            refused(json!({"_sig": "x"}), None),
            EncodeError::ReservedField("_sig".to_owned())
        );
        assert_eq!(
            refused(json!(["not", "an", "object"]), None),
            EncodeError::NotAnObject
        );
        let big = "x".repeat(MAX_MESSAGE_BYTES);
        assert!(matches!(
            refused(json!({ "blob": big }), None),
            EncodeError::TooLarge { .. }
        ));
    }

    #[test]
    fn audit_rows_publish_id_data_and_sig() {
        let audit = key("5c");
        let keys = OutboxKeys {
            streams: Some(key("3d")),
            audit: Some(audit.clone()),
        };
        let event = json!({"id": "evt-1", "zone_id": "z", "event_type": "admin"});
        let message = encode(
            &row(AUDIT_EVENTS, Some("audit:evt-1"), json!({ "event": event })),
            &keys,
        )
        .unwrap();
        assert!(!message.trim);
        let names: Vec<&str> = message.fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["id", "data", "sig"]);
        assert_eq!(message.field("id"), Some("evt-1"));
        let data = message.field("data").unwrap();
        assert_eq!(serde_json::from_str::<Value>(data).unwrap(), event);
        assert_eq!(
            message.field("sig"),
            Some(hmac_sha256_hex(&audit, &[data.as_bytes()]).as_str())
        );
        // Without the audit key, `sig` is empty.
        let unsigned = encode(
            &row(AUDIT_EVENTS, None, json!({ "event": event })),
            &OutboxKeys::default(),
        )
        .unwrap();
        assert_eq!(unsigned.field("sig"), Some(""));
        assert_eq!(
            encode(
                &row(AUDIT_EVENTS, None, json!({"event": {"zone_id": "z"}})),
                &keys
            ),
            Err(EncodeError::AuditEvent)
        );
    }

    #[test]
    fn the_xadd_command_trims_fanout_streams_only() {
        let message = EncodedMessage {
            stream: "s".to_owned(),
            fields: vec![("a".to_owned(), "1".to_owned())],
            trim: true,
        };
        let packed = String::from_utf8(message.xadd(7).get_packed_command()).unwrap();
        assert!(
            packed.contains("MAXLEN\r\n$1\r\n~\r\n$1\r\n7\r\n$1\r\n*\r\n"),
            "{packed}"
        );
        let audit = EncodedMessage {
            trim: false,
            ..message
        };
        let packed = String::from_utf8(audit.xadd(7).get_packed_command()).unwrap();
        assert!(!packed.contains("MAXLEN"), "{packed}");
    }
}
