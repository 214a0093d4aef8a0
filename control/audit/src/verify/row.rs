//! The chained rows as the verifier sees them, and their line format.
//!
//! [`AuditRow`] (an `audit_events` row) and [`AdminRow`] (an `admin_audit_events` row) are
//! also one line of an export object, of `caracal audit dump` and of `--ndjson` files: one
//! JSON object per row with every column, `bytea` as lowercase hex, `jsonb` as JSON values
//! and times as `YYYY-MM-DDTHH:MM:SS.ffffffZ`. Unknown members are refused, so a misspelt
//! column cannot pass as a NULL one.

use chrono::{DateTime, Utc};
use control_crypto::{ADMIN_AUDIT_CONTENT_DOMAIN, CanonicalError, content_sha256};
use control_store::audit::rows::{StoredAdminRow, StoredAuditRow};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ChainRow, IngestColumns};
use crate::canonical::{LedgerEvent, format_time, strict_json};

/// One `audit_events` row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRow {
    /// Event id.
    pub id: String,
    /// Zone id.
    pub zone_id: String,
    /// Event type.
    pub event_type: String,
    /// Request id.
    pub request_id: Option<String>,
    /// Decision.
    pub decision: Option<String>,
    /// Policy set id.
    pub policy_set_id: Option<String>,
    /// Policy set version id.
    pub policy_set_version_id: Option<String>,
    /// Manifest digest.
    pub manifest_sha: Option<String>,
    /// Evaluation status.
    pub evaluation_status: Option<String>,
    /// Determining policies.
    pub determining_policies_json: Option<Value>,
    /// Diagnostics.
    pub diagnostics_json: Option<Value>,
    /// Metadata.
    pub metadata_json: Option<Value>,
    /// When it happened.
    #[serde(with = "utc_time")]
    pub occurred_at: DateTime<Utc>,
    /// When the ledger chained it.
    #[serde(with = "utc_time")]
    pub ingested_at: DateTime<Utc>,
    /// Hash version (1).
    pub hash_version: i16,
    /// Content hash.
    #[serde(with = "hex_bytes")]
    pub content_sha256: Vec<u8>,
    /// The previous row's content hash.
    #[serde(with = "hex_option")]
    pub prev_content_sha256: Option<Vec<u8>>,
    /// Position in the zone's chain.
    pub chain_seq: i64,
    /// Chain HMAC.
    #[serde(with = "hex_option")]
    pub chain_hmac: Option<Vec<u8>>,
    /// Id of the chain key.
    pub chain_key_id: Option<String>,
    /// Ingest signature.
    #[serde(with = "hex_option")]
    pub ingest_signature: Option<Vec<u8>>,
}

impl AuditRow {
    /// The event members as the ledger hashes them. Nothing is normalised here: a stored
    /// `""` stays `""` (ingest stores NULL), so a changed row hashes differently.
    #[must_use]
    pub fn event(&self) -> LedgerEvent {
        LedgerEvent {
            id: self.id.clone(),
            zone_id: self.zone_id.clone(),
            event_type: self.event_type.clone(),
            request_id: self.request_id.clone(),
            decision: self.decision.clone(),
            policy_set_id: self.policy_set_id.clone(),
            policy_set_version_id: self.policy_set_version_id.clone(),
            manifest_sha: self.manifest_sha.clone(),
            evaluation_status: self.evaluation_status.clone(),
            determining_policies_json: self.determining_policies_json.clone(),
            diagnostics_json: self.diagnostics_json.clone(),
            metadata_json: self.metadata_json.clone(),
            occurred_at: self.occurred_at,
        }
    }
}

impl From<StoredAuditRow> for AuditRow {
    fn from(row: StoredAuditRow) -> Self {
        Self {
            id: row.id,
            zone_id: row.zone_id,
            event_type: row.event_type,
            request_id: row.request_id,
            decision: row.decision,
            policy_set_id: row.policy_set_id,
            policy_set_version_id: row.policy_set_version_id,
            manifest_sha: row.manifest_sha,
            evaluation_status: row.evaluation_status,
            determining_policies_json: row.determining_policies_json.map(|t| stored_json(&t)),
            diagnostics_json: row.diagnostics_json.map(|t| stored_json(&t)),
            metadata_json: row.metadata_json.map(|t| stored_json(&t)),
            occurred_at: row.occurred_at,
            ingested_at: row.ingested_at,
            hash_version: row.hash_version,
            content_sha256: row.content_sha256,
            prev_content_sha256: row.prev_content_sha256,
            chain_seq: row.chain_seq,
            chain_hmac: row.chain_hmac,
            chain_key_id: row.chain_key_id,
            ingest_signature: row.ingest_signature,
        }
    }
}

impl ChainRow for AuditRow {
    fn chain(&self) -> &str {
        &self.zone_id
    }
    fn event_id(&self) -> &str {
        &self.id
    }
    fn chain_seq(&self) -> i64 {
        self.chain_seq
    }
    fn hash_version(&self) -> i16 {
        self.hash_version
    }
    fn content_sha256(&self) -> &[u8] {
        &self.content_sha256
    }
    fn prev_content_sha256(&self) -> Option<&[u8]> {
        self.prev_content_sha256.as_deref()
    }
    fn chain_hmac(&self) -> Option<&[u8]> {
        self.chain_hmac.as_deref()
    }
    fn chain_key_id(&self) -> Option<&str> {
        self.chain_key_id.as_deref()
    }
    fn recompute_content(&self) -> Result<[u8; 32], CanonicalError> {
        self.event().content_sha256()
    }
    fn ingest(&self) -> Option<IngestColumns<'_>> {
        Some(IngestColumns {
            signature: self.ingest_signature.as_deref(),
            ingested_at: self.ingested_at,
        })
    }
}

/// One `admin_audit_events` row (storage §8.8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminRow {
    /// Id.
    pub id: String,
    /// Zone (`None`: the global chain `*`).
    pub zone_id: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// Actor id.
    pub actor_id: String,
    /// Actor name.
    pub actor_name: Option<String>,
    /// Actor scope.
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
    /// Payload.
    pub payload_json: Option<Value>,
    /// Time of the action.
    #[serde(with = "utc_time")]
    pub occurred_at: DateTime<Utc>,
    /// Hash version (1).
    pub hash_version: i16,
    /// Content hash.
    #[serde(with = "hex_bytes")]
    pub content_sha256: Vec<u8>,
    /// The previous row's content hash.
    #[serde(with = "hex_option")]
    pub prev_content_sha256: Option<Vec<u8>>,
    /// Position in the chain.
    pub chain_seq: i64,
    /// Chain HMAC.
    #[serde(with = "hex_option")]
    pub chain_hmac: Option<Vec<u8>>,
    /// Id of the chain key.
    pub chain_key_id: Option<String>,
    /// When the row was inserted (not chained).
    #[serde(with = "utc_time")]
    pub created_at: DateTime<Utc>,
}

impl AdminRow {
    /// The canonical object of storage §8.8: 14 members, `null` for NULL, `status_code` a
    /// number, `occurred_at` with 6 fractional digits.
    #[must_use]
    pub fn canonical(&self) -> Value {
        json!({
            "id": self.id,
            "request_id": self.request_id,
            "actor_id": self.actor_id,
            "actor_name": self.actor_name,
            "actor_scope": self.actor_scope,
            "action": self.action,
            "method": self.method,
            "path": self.path,
            "zone_id": self.zone_id,
            "entity_type": self.entity_type,
            "entity_id": self.entity_id,
            "status_code": self.status_code,
            "payload_json": self.payload_json,
            "occurred_at": format_time(self.occurred_at),
        })
    }
}

impl From<StoredAdminRow> for AdminRow {
    fn from(row: StoredAdminRow) -> Self {
        Self {
            id: row.id,
            zone_id: row.zone_id,
            request_id: row.request_id,
            actor_id: row.actor_id,
            actor_name: row.actor_name,
            actor_scope: row.actor_scope,
            action: row.action,
            method: row.method,
            path: row.path,
            entity_type: row.entity_type,
            entity_id: row.entity_id,
            status_code: row.status_code,
            payload_json: row.payload_json.map(|t| stored_json(&t)),
            occurred_at: row.occurred_at,
            hash_version: row.hash_version,
            content_sha256: row.content_sha256,
            prev_content_sha256: row.prev_content_sha256,
            chain_seq: row.chain_seq,
            chain_hmac: row.chain_hmac,
            chain_key_id: row.chain_key_id,
            created_at: row.created_at,
        }
    }
}

impl ChainRow for AdminRow {
    fn chain(&self) -> &str {
        self.zone_id.as_deref().unwrap_or("*")
    }
    fn event_id(&self) -> &str {
        &self.id
    }
    fn chain_seq(&self) -> i64 {
        self.chain_seq
    }
    fn hash_version(&self) -> i16 {
        self.hash_version
    }
    fn content_sha256(&self) -> &[u8] {
        &self.content_sha256
    }
    fn prev_content_sha256(&self) -> Option<&[u8]> {
        self.prev_content_sha256.as_deref()
    }
    fn chain_hmac(&self) -> Option<&[u8]> {
        self.chain_hmac.as_deref()
    }
    fn chain_key_id(&self) -> Option<&str> {
        self.chain_key_id.as_deref()
    }
    fn recompute_content(&self) -> Result<[u8; 32], CanonicalError> {
        content_sha256(ADMIN_AUDIT_CONTENT_DOMAIN, &self.canonical())
    }
    fn ingest(&self) -> Option<IngestColumns<'_>> {
        None
    }
}

/// A `jsonb` column's text, parsed as the ledger parsed it at ingest. Text the strict
/// parser refuses can only come from a changed row; it is kept as near as possible (a
/// lenient parse, else the text itself as a string) so the content hash shows the change.
fn stored_json(text: &str) -> Value {
    strict_json(text.as_bytes())
        .ok()
        .or_else(|| serde_json::from_str(text).ok())
        .unwrap_or_else(|| Value::String(text.to_owned()))
}

/// Times as `YYYY-MM-DDTHH:MM:SS.ffffffZ`; any RFC 3339 time is read.
mod utc_time {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer, de};

    use crate::canonical::format_time;

    pub(super) fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_time(*at))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|at| at.with_timezone(&Utc))
            .map_err(|_malformed| de::Error::custom("expected an RFC 3339 time"))
    }
}

/// `bytea` as lowercase hex.
pub(super) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub(in crate::verify) fn serialize<S: Serializer>(
        bytes: &[u8],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub(in crate::verify) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(|_malformed| de::Error::custom("expected lowercase hex"))
    }
}

/// A nullable `bytea` as lowercase hex or `null`; the member must be present.
pub(super) mod hex_option {
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub(in crate::verify) fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => s.serialize_str(&hex::encode(bytes)),
            None => s.serialize_none(),
        }
    }

    pub(in crate::verify) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| {
                hex::decode(text).map_err(|_malformed| de::Error::custom("expected lowercase hex"))
            })
            .transpose()
    }
}
