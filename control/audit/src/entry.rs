//! One entry of `caracal.audit.events` checked before it is chained (storage §8.4 step 2):
//! its fields, the producer signature, the event rules of §8.2 and the time window.

use chrono::{DateTime, Utc};
use control_crypto::verify_hmac_sha256_hex;
use control_events::streams::{AUDIT_FIELD_DATA, AUDIT_FIELD_ID, AUDIT_FIELD_SIG};
use redis::streams::StreamId;

use crate::{
    canonical::{Content, LedgerEvent},
    config::LedgerKeys,
};

/// A stream entry as read: its stream id and the three fields (absent ones empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The stream entry id (`<ms>-<seq>`).
    pub entry_id: String,
    /// The `id` field.
    pub id: Option<String>,
    /// The `data` field: the exact bytes the signature covers.
    pub data: Option<String>,
    /// The `sig` field.
    pub sig: Option<String>,
}

impl Entry {
    /// Takes the fields out of a stream entry (moved, not copied: `data` is most of a
    /// batch's bytes); a field that is not a string counts as absent.
    #[must_use]
    pub fn from_stream(mut entry: StreamId) -> Self {
        let mut field = |name: &str| {
            entry
                .map
                .remove(name)
                .and_then(|v| redis::from_redis_value::<String>(v).ok())
        };
        let (id, data, sig) = (
            field(AUDIT_FIELD_ID),
            field(AUDIT_FIELD_DATA),
            field(AUDIT_FIELD_SIG),
        );
        Self {
            entry_id: entry.id,
            id,
            data,
            sig,
        }
    }
}

/// A valid entry, ready to chain.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The stream entry id.
    pub entry_id: String,
    /// The normalised event.
    pub event: LedgerEvent,
    /// Its content hash and the canonical text of its JSON members.
    pub content: Content,
}

/// The accepted `occurred_at` window (§8.3).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Latest accepted time.
    pub latest: DateTime<Utc>,
    /// Earliest accepted time (the retention horizon).
    pub earliest: DateTime<Utc>,
}

/// Checks one entry. The error is the dead-letter reason.
///
/// # Errors
///
/// `missing_field:<name>`, `id_mismatch`, `bad_signature`, `invalid_event:<rule>` or
/// `occurred_at_out_of_range`.
pub fn check(entry: &Entry, keys: &LedgerKeys, window: Window) -> Result<Checked, String> {
    let (Some(id), Some(data)) = (&entry.id, &entry.data) else {
        let name = if entry.id.is_none() { "id" } else { "data" };
        return Err(format!("missing_field:{name}"));
    };
    if let Some(key) = &keys.producer {
        let sig = entry.sig.as_deref().unwrap_or_default();
        let parts = [data.as_bytes()];
        let verified = verify_hmac_sha256_hex(key, &parts, sig)
            || keys
                .producer_previous
                .as_ref()
                .is_some_and(|previous| verify_hmac_sha256_hex(previous, &parts, sig));
        if !verified {
            return Err("bad_signature".to_owned());
        }
    }
    let event = LedgerEvent::parse(data.as_bytes())
        .map_err(|invalid| format!("invalid_event:{}", invalid.code()))?;
    if &event.id != id {
        return Err("id_mismatch".to_owned());
    }
    if event.occurred_at > window.latest || event.occurred_at < window.earliest {
        return Err("occurred_at_out_of_range".to_owned());
    }
    let content = event
        .content()
        .map_err(|_unserialisable| "invalid_event:canonical".to_owned())?;
    Ok(Checked {
        entry_id: entry.entry_id.clone(),
        event,
        content,
    })
}

#[cfg(test)]
mod tests {
    use control_crypto::{HmacKey, hmac_sha256_hex};

    use super::*;

    fn keys() -> LedgerKeys {
        let key = HmacKey::from_bytes(&[7u8; 32]).unwrap();
        LedgerKeys {
            producer: Some(key.clone()),
            producer_previous: None,
            chain: Some(key.clone()),
            retired: Vec::new(),
        }
    }

    fn window() -> Window {
        Window {
            latest: "2026-06-01T00:00:00Z".parse().unwrap(),
            earliest: "2025-06-01T00:00:00Z".parse().unwrap(),
        }
    }

    fn entry(id: &str, data: &str, key: Option<&HmacKey>) -> Entry {
        Entry {
            entry_id: "1-0".into(),
            id: Some(id.into()),
            data: Some(data.into()),
            sig: key.map(|k| hmac_sha256_hex(k, &[data.as_bytes()])),
        }
    }

    const DATA: &str =
        r#"{"id":"e-1","zone_id":"z","event_type":"t","occurred_at":"2026-05-21T12:00:00Z"}"#;

    #[test]
    fn a_signed_valid_entry_passes_and_every_fault_has_its_reason() {
        let keys = keys();
        let good = keys.producer.clone().unwrap();
        assert!(check(&entry("e-1", DATA, Some(&good)), &keys, window()).is_ok());
        let other = HmacKey::from_bytes(&[8u8; 32]).unwrap();
        let cases = [
            (entry("e-1", DATA, Some(&other)), "bad_signature"),
            (entry("e-1", DATA, None), "bad_signature"),
            (entry("e-2", DATA, Some(&good)), "id_mismatch"),
            (entry("e-1", "[]", Some(&good)), "invalid_event:not_object"),
            (
                entry(
                    "e-1",
                    &DATA.replace("2026-05-21", "2026-07-21"),
                    Some(&good),
                ),
                "occurred_at_out_of_range",
            ),
            (
                entry(
                    "e-1",
                    &DATA.replace("2026-05-21", "2024-05-21"),
                    Some(&good),
                ),
                "occurred_at_out_of_range",
            ),
            (
                Entry {
                    data: None,
                    ..entry("e-1", DATA, Some(&good))
                },
                "missing_field:data",
            ),
        ];
        for (entry, reason) in cases {
            assert_eq!(check(&entry, &keys, window()).unwrap_err(), reason);
        }
    }

    #[test]
    fn the_previous_key_verifies_during_a_rotation_and_no_key_skips_the_check() {
        let previous = HmacKey::from_bytes(&[9u8; 32]).unwrap();
        let keys = LedgerKeys {
            producer_previous: Some(previous.clone()),
            ..keys()
        };
        assert!(check(&entry("e-1", DATA, Some(&previous)), &keys, window()).is_ok());
        assert!(check(&entry("e-1", DATA, None), &LedgerKeys::default(), window()).is_ok());
    }
}
