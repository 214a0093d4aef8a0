//! Example credential injector `example-request-signing`: signs every request with an
//! HMAC-SHA256 keyed with the provider's credential, which the gateway holds; the plugin never
//! sees the key.
//!
//! # Configuration
//!
//! ```json
//! { "header": "x-signature", "date_header": "x-signature-date", "key_id": "key-2026" }
//! ```
//!
//! Every key is optional: `header` defaults to `x-signature`, `date_header` to
//! `x-signature-date`, and without `key_id` the signature names no key. Header names must be
//! lowercase, different, and writable by a plugin (not `authorization`, `host`, `x-caracal-*`
//! and the like); a key id is 1 to 128 characters of `A-Z a-z 0-9 . _ : / -`. `configure`
//! refuses anything else, and asks the gateway for the body's SHA-256.
//!
//! # What an upstream verifies
//!
//! For each request the plugin sets two headers:
//!
//! ```text
//! <date_header>: <DATE>
//! <header>: keyId=<key_id>,signature=<SIGNATURE>      (with key_id)
//! <header>: signature=<SIGNATURE>                     (without)
//! ```
//!
//! - `DATE` is the gateway's clock at admission in RFC 3339 UTC to the second,
//!   `YYYY-MM-DDTHH:MM:SSZ` (for example `2026-01-05T10:00:00Z`).
//! - `SIGNATURE` is standard Base64 with padding (RFC 4648 §4) of the 32-byte
//!   `HMAC-SHA256(key, canonical)`, where `key` is the bytes of the provider's credential (the
//!   `primary` handle; for an API key, the key's bytes).
//! - `canonical` is four lines joined by `\n` (LF), with no trailing newline:
//!
//!   ```text
//!   METHOD
//!   PATH[?QUERY]
//!   DATE
//!   hex(SHA-256(body))
//!   ```
//!
//!   `METHOD` is the uppercase method; `PATH[?QUERY]` is the path as the upstream receives it,
//!   percent-encoding unchanged, followed by `?` and the raw query string only when there is
//!   one; `DATE` is the date header's value; the last line is the lowercase hexadecimal
//!   SHA-256 of the complete request body (of zero bytes for an empty body).
//!
//! An upstream recomputes `canonical` from the request it received, checks the MAC with a
//! constant-time comparison, and refuses a `DATE` too far from its own clock.
//!
//! A call without the body digest, without a `primary` credential, or whose MAC the gateway
//! refuses fails (503 `plugin_failed`) with a message in the audit event.

mod signing;

use caracal_plugin_sdk::injector::has_credential;
use caracal_plugin_sdk::time::UtcDateTime;
use caracal_plugin_sdk::{
    Call, Credential, CredentialInjector, HeaderOp, Needs, PRIMARY, hmac_sha256,
};

use crate::signing::{Settings, canonical_string, signature_value};

/// The injector this component exports.
struct RequestSigning;

impl CredentialInjector for RequestSigning {
    fn configure(config: &str) -> Result<Needs, String> {
        Settings::parse(config)?;
        Ok(Needs::BODY_SHA256)
    }

    fn inject(call: Call, credentials: Vec<Credential>) -> Result<Vec<HeaderOp>, String> {
        let settings = Settings::parse(&call.config)?;
        if !has_credential(&credentials, PRIMARY) {
            return Err("the call has no primary credential to sign with".to_owned());
        }
        let date = UtcDateTime::from_unix_ms(call.now_unix_ms)
            .to_rfc3339()
            .ok_or_else(|| format!("the gateway clock {} ms is out of range", call.now_unix_ms))?;
        let digest = call
            .request
            .body_sha256
            .as_deref()
            .ok_or("the gateway passed no body digest although configure asked for it")?;
        let canonical = canonical_string(
            &call.request.method,
            &call.request.path_and_query(),
            &date,
            digest,
        )
        .ok_or("the body digest is not 32 bytes")?;
        let mac = hmac_sha256(PRIMARY, canonical.as_bytes())
            .map_err(|err| format!("hmac-sha256 with the primary credential failed: {err}"))?;
        Ok(vec![
            HeaderOp::set_header(settings.date_header, date),
            HeaderOp::set_header(
                settings.header,
                signature_value(settings.key_id.as_deref(), &mac),
            ),
        ])
    }
}

caracal_plugin_sdk::export_injector!(RequestSigning);

#[cfg(test)]
mod tests {
    use caracal_plugin_sdk::testing::CallBuilder;

    use super::*;

    #[test]
    fn configure_asks_for_the_body_digest() {
        assert!(RequestSigning::configure("{}").unwrap().body_sha256);
    }

    #[test]
    fn configure_refuses_a_bad_configuration() {
        assert!(RequestSigning::configure(r#"{"header": "host"}"#).is_err());
    }

    #[test]
    fn a_call_without_a_primary_credential_fails_before_signing() {
        let call = CallBuilder::new("GET", "/").body_sha256([0; 32]).build();
        let message = RequestSigning::inject(call, Vec::new()).unwrap_err();
        assert_eq!(message, "the call has no primary credential to sign with");
    }
}
