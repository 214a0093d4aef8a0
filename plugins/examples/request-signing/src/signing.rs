//! The signature: settings, canonical string and header value, as plain functions.

use caracal_plugin_sdk::config::{self, ConfigError};
use caracal_plugin_sdk::encoding;
use caracal_plugin_sdk::injector::check_plain_header_name;
use serde::Deserialize;

/// The signature header when the configuration names none.
const DEFAULT_HEADER: &str = "x-signature";

/// The date header when the configuration names none.
const DEFAULT_DATE_HEADER: &str = "x-signature-date";

/// The longest key id accepted.
const KEY_ID_MAX: usize = 128;

/// The configuration as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    header: Option<String>,
    date_header: Option<String>,
    key_id: Option<String>,
}

/// The settings of one binding, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) header: String,
    pub(crate) date_header: String,
    pub(crate) key_id: Option<String>,
}

impl Settings {
    /// Read and check a binding's configuration.
    pub(crate) fn parse(text: &str) -> Result<Settings, ConfigError> {
        let raw: RawSettings = config::parse(text)?;
        let header = raw.header.unwrap_or_else(|| DEFAULT_HEADER.to_owned());
        let date_header = raw
            .date_header
            .unwrap_or_else(|| DEFAULT_DATE_HEADER.to_owned());
        for (key, name) in [("header", &header), ("date_header", &date_header)] {
            check_plain_header_name(name)
                .map_err(|err| ConfigError::invalid(format!("{key} {name:?} {err}")))?;
        }
        if header == date_header {
            return Err(ConfigError::invalid(format!(
                "header and date_header are both {header:?}; they must differ"
            )));
        }
        if let Some(key_id) = &raw.key_id {
            let well_formed = !key_id.is_empty()
                && key_id.len() <= KEY_ID_MAX
                && key_id
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b"._:/-".contains(&byte));
            if !well_formed {
                return Err(ConfigError::invalid(format!(
                    "key_id {key_id:?} must be 1 to {KEY_ID_MAX} characters of A-Z a-z 0-9 . _ : / -"
                )));
            }
        }
        Ok(Settings {
            header,
            date_header,
            key_id: raw.key_id,
        })
    }
}

/// The string that is signed: `METHOD\nPATH[?QUERY]\nDATE\nhex(body sha256)`, with no
/// trailing newline. `None` when the digest is not 32 bytes.
pub(crate) fn canonical_string(
    method: &str,
    path_and_query: &str,
    date: &str,
    body_sha256: &[u8],
) -> Option<String> {
    if body_sha256.len() != 32 {
        return None;
    }
    Some(format!(
        "{method}\n{path_and_query}\n{date}\n{}",
        encoding::hex(body_sha256)
    ))
}

/// The signature header's value: `keyId=<key_id>,signature=<base64 MAC>`, or
/// `signature=<base64 MAC>` without a key id.
pub(crate) fn signature_value(key_id: Option<&str>, mac: &[u8]) -> String {
    let signature = encoding::base64(mac);
    match key_id {
        Some(key_id) => format!("keyId={key_id},signature={signature}"),
        None => format!("signature={signature}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256 of the empty string.
    const EMPTY_SHA256: [u8; 32] = [
        0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9,
        0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52,
        0xb8, 0x55,
    ];

    fn refusal(config: &str) -> String {
        Settings::parse(config).unwrap_err().to_string()
    }

    #[test]
    fn an_empty_configuration_uses_the_default_headers_and_no_key_id() {
        assert_eq!(
            Settings::parse("{}").unwrap(),
            Settings {
                header: "x-signature".to_owned(),
                date_header: "x-signature-date".to_owned(),
                key_id: None,
            }
        );
    }

    #[test]
    fn configured_headers_and_key_id_are_kept() {
        let settings = Settings::parse(
            r#"{"header": "x-sig", "date_header": "x-date", "key_id": "k-2026/01"}"#,
        )
        .unwrap();
        assert_eq!(
            (settings.header.as_str(), settings.date_header.as_str()),
            ("x-sig", "x-date")
        );
        assert_eq!(settings.key_id.as_deref(), Some("k-2026/01"));
    }

    #[test]
    fn headers_the_gateway_would_refuse_are_refused_at_configure() {
        assert_eq!(
            refusal(r#"{"header": "authorization"}"#),
            r#"invalid configuration: header "authorization" carries a credential and can be written only by attaching one"#
        );
        assert!(
            refusal(r#"{"date_header": "X-Date"}"#).contains("is not a lowercase HTTP header name")
        );
        assert!(refusal(r#"{"header": "x-caracal-sig"}"#).contains("is reserved to the gateway"));
        assert!(refusal(r#"{"header": "x-a", "date_header": "x-a"}"#).contains("must differ"));
    }

    #[test]
    fn malformed_key_ids_and_unknown_keys_are_refused() {
        assert!(refusal(r#"{"key_id": "a,signature=forged"}"#).contains("key_id"));
        assert!(refusal(r#"{"key_id": ""}"#).contains("key_id"));
        assert!(refusal(&format!(r#"{{"key_id": "{}"}}"#, "k".repeat(129))).contains("key_id"));
        assert!(refusal(r#"{"secret": "x"}"#).contains("unknown field `secret`"));
    }

    #[test]
    fn the_canonical_string_has_four_lines_without_a_trailing_newline() {
        let canonical = canonical_string(
            "POST",
            "/items?dry_run=1",
            "2026-01-05T10:00:00Z",
            &EMPTY_SHA256,
        )
        .unwrap();
        assert_eq!(
            canonical,
            "POST\n/items?dry_run=1\n2026-01-05T10:00:00Z\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_digest_that_is_not_32_bytes_gives_no_canonical_string() {
        assert_eq!(canonical_string("GET", "/", "d", &[0; 31]), None);
    }

    #[test]
    fn the_signature_value_carries_the_key_id_when_configured() {
        let mac = [0xfb; 32];
        assert_eq!(
            signature_value(Some("k1"), &mac),
            format!("keyId=k1,signature={}", encoding::base64(&mac))
        );
        assert_eq!(signature_value(None, &[0, 1, 2]), "signature=AAEC");
    }
}
