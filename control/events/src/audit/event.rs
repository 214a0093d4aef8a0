//! The producer's audit event (`storage-and-events.md` §8.1), serialised once
//! to the exact `data` bytes and signed with `AUDIT_HMAC_KEY`.

use chrono::{DateTime, SecondsFormat, Utc};
use control_crypto::{HmacKey, hmac_sha256_hex, verify_hmac_sha256_hex};
use serde_json::Value;

/// Largest `data` the ledger accepts (`AUDIT_MAX_EVENT_BYTES`, §8.2). Larger
/// events are shrunk at signing time (see [`AuditEvent::sign`]), so an event
/// can always be written to the stream and to a replay line (≤ 1 MiB).
pub const MAX_EVENT_DATA_BYTES: usize = 262_144;

/// Longest string member kept when an oversized event has to be shrunk.
const SHRUNK_STRING_BYTES: usize = 1024;

/// A policy decision recorded in an audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditDecision {
    /// The request was allowed.
    Allow,
    /// The request was denied.
    Deny,
    /// Part of the requested authority was granted.
    Partial,
}

impl AuditDecision {
    /// The wire spelling: `allow`, `deny` or `partial`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Partial => "partial",
        }
    }
}

/// An audit event as a producer (STS, gateway) builds it.
///
/// `id` is a fresh UUIDv7 and `occurred_at` the current time unless set.
/// Build it with [`AuditEvent::new`] and the setters, then hand it to the
/// emitter, which signs it ([`AuditEvent::sign`]) on the caller's thread.
///
/// ```
/// use control_events::audit::{AuditDecision, AuditEvent};
/// let event = AuditEvent::new("zone-1", "token_exchange")
///     .request_id("req-1")
///     .decision(AuditDecision::Allow)
///     .metadata_json(serde_json::json!({"status": 200}));
/// assert_eq!(event.zone_id(), "zone-1");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    id: String,
    zone_id: String,
    event_type: String,
    request_id: Option<String>,
    decision: Option<AuditDecision>,
    policy_set_id: Option<String>,
    policy_set_version_id: Option<String>,
    manifest_sha: Option<String>,
    evaluation_status: Option<String>,
    determining_policies_json: Option<Value>,
    diagnostics_json: Option<Value>,
    metadata_json: Option<Value>,
    occurred_at: DateTime<Utc>,
}

impl AuditEvent {
    /// A new event of `event_type` (e.g. `token_exchange`,
    /// `gateway_resource_request`) in `zone_id`, with a fresh UUIDv7 id and
    /// `occurred_at` = now.
    #[must_use]
    pub fn new(zone_id: impl Into<String>, event_type: impl Into<String>) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            zone_id: zone_id.into(),
            event_type: event_type.into(),
            request_id: None,
            decision: None,
            policy_set_id: None,
            policy_set_version_id: None,
            manifest_sha: None,
            evaluation_status: None,
            determining_policies_json: None,
            diagnostics_json: None,
            metadata_json: None,
            occurred_at: Utc::now(),
        }
    }

    /// Sets `request_id`.
    #[must_use]
    pub fn request_id(mut self, value: impl Into<String>) -> Self {
        self.request_id = Some(value.into());
        self
    }

    /// Sets `decision`.
    #[must_use]
    pub fn decision(mut self, value: AuditDecision) -> Self {
        self.decision = Some(value);
        self
    }

    /// Sets `policy_set_id`.
    #[must_use]
    pub fn policy_set_id(mut self, value: impl Into<String>) -> Self {
        self.policy_set_id = Some(value.into());
        self
    }

    /// Sets `policy_set_version_id`.
    #[must_use]
    pub fn policy_set_version_id(mut self, value: impl Into<String>) -> Self {
        self.policy_set_version_id = Some(value.into());
        self
    }

    /// Sets `manifest_sha` (the policy bundle's manifest digest).
    #[must_use]
    pub fn manifest_sha(mut self, value: impl Into<String>) -> Self {
        self.manifest_sha = Some(value.into());
        self
    }

    /// Sets `evaluation_status`.
    #[must_use]
    pub fn evaluation_status(mut self, value: impl Into<String>) -> Self {
        self.evaluation_status = Some(value.into());
        self
    }

    /// Sets `determining_policies_json`.
    #[must_use]
    pub fn determining_policies_json(mut self, value: Value) -> Self {
        self.determining_policies_json = Some(value);
        self
    }

    /// Sets `diagnostics_json`.
    #[must_use]
    pub fn diagnostics_json(mut self, value: Value) -> Self {
        self.diagnostics_json = Some(value);
        self
    }

    /// Sets `metadata_json`.
    #[must_use]
    pub fn metadata_json(mut self, value: Value) -> Self {
        self.metadata_json = Some(value);
        self
    }

    /// Sets `occurred_at` (written in UTC with microseconds; finer digits are
    /// truncated).
    #[must_use]
    pub fn occurred_at(mut self, value: DateTime<Utc>) -> Self {
        self.occurred_at = value;
        self
    }

    /// The event id (a UUIDv7).
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The zone id.
    #[must_use]
    pub fn zone_id(&self) -> &str {
        &self.zone_id
    }

    /// The event type.
    #[must_use]
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// Serialises the event to its `data` JSON: one compact object with all
    /// 13 members of §8.1 (`null` where unset) and `occurred_at` as
    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    #[must_use]
    pub fn to_data(&self) -> String {
        // Written straight from borrowed fields, the members in byte order of their names
        // (the order a `serde_json::Map` of them would have).
        #[derive(serde::Serialize)]
        struct Wire<'a> {
            decision: Option<&'a str>,
            determining_policies_json: Option<&'a Value>,
            diagnostics_json: Option<&'a Value>,
            evaluation_status: Option<&'a str>,
            event_type: &'a str,
            id: &'a str,
            manifest_sha: Option<&'a str>,
            metadata_json: Option<&'a Value>,
            occurred_at: String,
            policy_set_id: Option<&'a str>,
            policy_set_version_id: Option<&'a str>,
            request_id: Option<&'a str>,
            zone_id: &'a str,
        }
        let wire = Wire {
            decision: self.decision.map(AuditDecision::as_str),
            determining_policies_json: self.determining_policies_json.as_ref(),
            diagnostics_json: self.diagnostics_json.as_ref(),
            evaluation_status: self.evaluation_status.as_deref(),
            event_type: &self.event_type,
            id: &self.id,
            manifest_sha: self.manifest_sha.as_deref(),
            metadata_json: self.metadata_json.as_ref(),
            occurred_at: format_occurred_at(self.occurred_at),
            policy_set_id: self.policy_set_id.as_deref(),
            policy_set_version_id: self.policy_set_version_id.as_deref(),
            request_id: self.request_id.as_deref(),
            zone_id: &self.zone_id,
        };
        // Strings, options and `Value`s (whose map keys are strings) always serialise.
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// Serialises the event once and signs those exact bytes:
    /// `sig` = lowercase hex HMAC-SHA256(`key`, `data`), or empty without a key
    /// (dev mode).
    ///
    /// An event whose `data` would exceed [`MAX_EVENT_DATA_BYTES`] is not
    /// refused (emission never fails): its JSON members are replaced by
    /// `{"caracal_truncated":true,"original_bytes":N}` and, if that is not
    /// enough, its strings are cut to 1 KiB, so the evidence that it happened
    /// survives.
    #[must_use]
    pub fn sign(&self, key: Option<&HmacKey>) -> SignedAuditEvent {
        let mut data = self.to_data();
        if data.len() > MAX_EVENT_DATA_BYTES {
            data = self.shrunk().to_data();
        }
        let sig = key
            .map(|key| hmac_sha256_hex(key, &[data.as_bytes()]))
            .unwrap_or_default();
        SignedAuditEvent {
            id: self.id.clone(),
            data,
            sig,
        }
    }

    /// A copy small enough for [`MAX_EVENT_DATA_BYTES`].
    fn shrunk(&self) -> Self {
        fn marker(value: Option<&Value>) -> Option<Value> {
            value.map(|v| {
                serde_json::json!({
                    "caracal_truncated": true,
                    "original_bytes": v.to_string().len(),
                })
            })
        }
        let mut small = self.clone();
        small.determining_policies_json = marker(self.determining_policies_json.as_ref());
        small.diagnostics_json = marker(self.diagnostics_json.as_ref());
        small.metadata_json = marker(self.metadata_json.as_ref());
        if small.to_data().len() <= MAX_EVENT_DATA_BYTES {
            return small;
        }
        for text in [&mut small.zone_id, &mut small.event_type] {
            cut(text);
        }
        for text in [
            &mut small.request_id,
            &mut small.policy_set_id,
            &mut small.policy_set_version_id,
            &mut small.manifest_sha,
            &mut small.evaluation_status,
        ]
        .into_iter()
        .flatten()
        {
            cut(text);
        }
        small
    }
}

/// Cuts `text` to at most [`SHRUNK_STRING_BYTES`] on a character boundary.
fn cut(text: &mut String) {
    if text.len() <= SHRUNK_STRING_BYTES {
        return;
    }
    let mut end = SHRUNK_STRING_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, exactly six fractional digits).
#[must_use]
pub fn format_occurred_at(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// An event ready for the stream or a replay line: its id, the exact `data`
/// bytes and the `sig` over them. These three strings are what is written to
/// `XADD … id <id> data <data> sig <sig>` and to a segment line, and are never
/// re-serialised afterwards.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignedAuditEvent {
    id: String,
    data: String,
    sig: String,
}

impl SignedAuditEvent {
    /// Rebuilds a signed event from its three parts (e.g. read back from a
    /// replay segment). Nothing is checked; see
    /// [`SignedAuditEvent::verify`].
    #[must_use]
    pub fn from_parts(id: String, data: String, sig: String) -> Self {
        Self { id, data, sig }
    }

    /// The event id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The event JSON, exactly as signed.
    #[must_use]
    pub fn data(&self) -> &str {
        &self.data
    }

    /// Lowercase hex HMAC-SHA256 over [`SignedAuditEvent::data`], or empty.
    #[must_use]
    pub fn sig(&self) -> &str {
        &self.sig
    }

    /// Whether `sig` is a valid tag over `data` under `key` (constant time).
    #[must_use]
    pub fn verify(&self, key: &HmacKey) -> bool {
        verify_hmac_sha256_hex(key, &[self.data.as_bytes()], &self.sig)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use control_crypto::HmacKey;
    use serde_json::{Value, json};

    use super::{AuditDecision, AuditEvent, MAX_EVENT_DATA_BYTES};

    const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn data_has_all_thirteen_members_and_microsecond_utc_time() {
        let at = chrono::Utc.with_ymd_and_hms(2026, 5, 21, 12, 0, 0).unwrap()
            + chrono::Duration::nanoseconds(123_456_789);
        let event = AuditEvent::new("zone-1", "token_exchange")
            .request_id("req-1")
            .decision(AuditDecision::Deny)
            .metadata_json(json!({"status": 403}))
            .occurred_at(at);
        let text = event.to_data();
        let data: Value = serde_json::from_str(&text).unwrap();
        // Compact, members in byte order of their names: the bytes a `Map` writes.
        assert_eq!(text, data.to_string());
        let object = data.as_object().unwrap();
        assert_eq!(object.len(), 13);
        assert_eq!(object["id"], event.id());
        assert_eq!(object["zone_id"], "zone-1");
        assert_eq!(object["decision"], "deny");
        assert_eq!(object["policy_set_id"], Value::Null);
        assert_eq!(object["diagnostics_json"], Value::Null);
        assert_eq!(object["metadata_json"], json!({"status": 403}));
        assert_eq!(object["occurred_at"], "2026-05-21T12:00:00.123456Z");
    }

    #[test]
    fn ids_are_uuid_v7() {
        let event = AuditEvent::new("z", "t");
        let id = uuid::Uuid::parse_str(event.id()).unwrap();
        assert_eq!(id.get_version_num(), 7);
        assert_ne!(AuditEvent::new("z", "t").id(), event.id());
    }

    #[test]
    fn sig_covers_the_exact_data_bytes() {
        let key = HmacKey::from_hex(KEY).unwrap();
        let signed = AuditEvent::new("zone-1", "token_exchange").sign(Some(&key));
        assert_eq!(signed.sig().len(), 64);
        assert!(signed.verify(&key));
        let expected = control_crypto::hmac_sha256_hex(&key, &[signed.data().as_bytes()]);
        assert_eq!(signed.sig(), expected);
        let tampered = super::SignedAuditEvent::from_parts(
            signed.id().to_owned(),
            signed.data().replace("zone-1", "zone-2"),
            signed.sig().to_owned(),
        );
        assert!(!tampered.verify(&key));
    }

    #[test]
    fn dev_mode_sig_is_empty() {
        let signed = AuditEvent::new("zone-1", "token_exchange").sign(None);
        assert_eq!(signed.sig(), "");
        assert!(signed.data().contains(signed.id()));
    }

    #[test]
    fn oversized_event_is_shrunk_not_refused() {
        let huge = "x".repeat(MAX_EVENT_DATA_BYTES + 10);
        let event = AuditEvent::new("zone-1", "gateway_resource_request")
            .metadata_json(json!({ "body": huge }))
            .request_id("r".repeat(MAX_EVENT_DATA_BYTES));
        let signed = event.sign(None);
        assert!(signed.data().len() <= MAX_EVENT_DATA_BYTES);
        let data: Value = serde_json::from_str(signed.data()).unwrap();
        assert_eq!(data["metadata_json"]["caracal_truncated"], true);
        assert_eq!(data["id"], event.id());
        assert_eq!(data["request_id"].as_str().unwrap().len(), 1024);
    }
}
