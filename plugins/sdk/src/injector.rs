//! The `credential-injector` world: a plugin that decides how the upstream credential is
//! attached to the outbound request.
//!
//! Implement [`CredentialInjector`] and export it with
//! [`export_injector!`](crate::export_injector). The plugin answers with a list of
//! [`HeaderOp`]s. It names credentials by handle ([`PRIMARY`], [`RESOURCE_MANDATE`]) and never
//! sees their bytes: [`HeaderOp::attach_header`] and [`HeaderOp::attach_query`] ask the gateway
//! to place one, and [`hmac_sha256`] asks it for a MAC keyed with one.
//!
//! The gateway checks every operation before it applies any (see `header-op` in
//! `wit/gateway.wit`): header names must be valid lowercase field names and not reserved
//! (`host`, `content-length`, hop-by-hop headers, `proxy-*`, `traceparent`, `x-caracal-*`,
//! `x-forwarded-*`, ...); `authorization`, `cookie` and the header the gateway itself placed
//! the credential in can be written only once and only with `attach-header`; at most 32
//! operations, 8 KiB per value and 32 KiB in all. Any violation fails the request with 503
//! `plugin_failed`.

use std::fmt;

use crate::generated::injector::Guest;
use crate::{
    AttachHeader, AttachQuery, Call, Credential, CredentialError, Header, HeaderOp, Needs,
};

/// The handle of the provider's credential.
pub const PRIMARY: &str = "primary";

/// The handle of the `use=resource` mandate the gateway minted for this call (provider
/// `caracal_mandate`).
pub const RESOURCE_MANDATE: &str = "resource-mandate";

/// A credential injector plugin.
///
/// Both functions are associated functions (no `self`): every call runs in a fresh instance,
/// so there is no state to keep between them.
pub trait CredentialInjector {
    /// Check the binding's configuration, once, when the gateway loads the binding. Return
    /// `Err` with a message naming the key and the problem to refuse it; return
    /// [`Needs::BODY_SHA256`] to receive the body's digest in every call.
    ///
    /// The default accepts any configuration and needs nothing beyond the request head.
    fn configure(config: &str) -> Result<Needs, String> {
        let _ = config;
        Ok(Needs::default())
    }

    /// Build the operations for one request. `credentials` lists the handles this call has
    /// (see [`has_credential`]). An `Err` fails the request with 503 `plugin_failed`, and its
    /// message (at most 1,024 bytes) goes into the audit event.
    fn inject(call: Call, credentials: Vec<Credential>) -> Result<Vec<HeaderOp>, String>;
}

impl<T: CredentialInjector> Guest for T {
    fn configure(config: String) -> Result<Needs, String> {
        <T as CredentialInjector>::configure(&config)
    }

    fn inject(call: Call, credentials: Vec<Credential>) -> Result<Vec<HeaderOp>, String> {
        <T as CredentialInjector>::inject(call, credentials)
    }
}

/// HMAC-SHA256 of `message` keyed with the bytes of the credential named `handle`, computed
/// by the gateway: the 32-byte MAC. The key never leaves the gateway.
///
/// Only a credential injector can call it: it is an import of the `credential-injector`
/// world, and an authorizer that called it would fail to load. It fails with
/// [`CredentialError::UnknownCredential`] for a handle this call does not have and
/// [`CredentialError::MessageTooLarge`] for a message over 1 MiB. Outside a component (in a
/// native unit test) it panics; keep it out of the functions you test natively.
pub fn hmac_sha256(handle: &str, message: &[u8]) -> Result<Vec<u8>, CredentialError> {
    crate::generated::injector::caracal::gateway::credentials::hmac_sha256(handle, message)
}

/// Whether `credentials` holds a credential with the handle `handle`.
pub fn has_credential(credentials: &[Credential], handle: &str) -> bool {
    credentials
        .iter()
        .any(|credential| credential.name == handle)
}

impl HeaderOp {
    /// Attach the credential `handle` as the header `name`: its value is the credential, or
    /// `<scheme> <credential>` with a scheme such as `Bearer`.
    pub fn attach_header(
        name: impl Into<String>,
        handle: impl Into<String>,
        scheme: Option<&str>,
    ) -> HeaderOp {
        HeaderOp::AttachHeader(AttachHeader {
            name: name.into(),
            handle: handle.into(),
            scheme: scheme.map(str::to_owned),
        })
    }

    /// Attach the credential `handle` as the query parameter `param` (the gateway
    /// percent-encodes it).
    pub fn attach_query(param: impl Into<String>, handle: impl Into<String>) -> HeaderOp {
        HeaderOp::AttachQuery(AttachQuery {
            param: param.into(),
            handle: handle.into(),
        })
    }

    /// Set the plain header `name` to `value`, replacing any value it had.
    pub fn set_header(name: impl Into<String>, value: impl Into<String>) -> HeaderOp {
        HeaderOp::SetHeader(Header {
            name: name.into(),
            value: value.into(),
        })
    }

    /// Remove the header `name`.
    pub fn remove_header(name: impl Into<String>) -> HeaderOp {
        HeaderOp::RemoveHeader(name.into())
    }
}

/// Whether `name` is a valid lowercase HTTP field name (a non-empty RFC 9110 token without
/// uppercase letters), as the gateway requires of every header a plugin writes.
pub fn is_lowercase_field_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&byte)
        })
}

/// Why the gateway would refuse a header name in an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderNameError {
    /// Not a valid lowercase HTTP field name.
    NotLowercaseFieldName,
    /// Reserved to the gateway: hop-by-hop headers, `host`, `content-length`,
    /// `transfer-encoding`, `te`, `trailer`, `upgrade`, `proxy-*`, `traceparent`,
    /// `tracestate`, `x-caracal-*`, `x-forwarded-*`, `forwarded`, `x-real-ip`.
    Reserved,
    /// Carries a credential (`authorization`, `cookie`): only
    /// [`HeaderOp::attach_header`] may write it.
    CredentialBearing,
}

impl fmt::Display for HeaderNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeaderNameError::NotLowercaseFieldName => "is not a lowercase HTTP header name",
            HeaderNameError::Reserved => "is reserved to the gateway",
            HeaderNameError::CredentialBearing => {
                "carries a credential and can be written only by attaching one"
            }
        })
    }
}

impl std::error::Error for HeaderNameError {}

/// Check a header name for [`HeaderOp::set_header`] or [`HeaderOp::remove_header`] the way the
/// gateway will, so that `configure` can refuse a configuration naming one with a clear
/// message instead of every request failing. The gateway's check stays the authority; it also
/// refuses writing the header it placed the credential in, which a plugin cannot know.
pub fn check_plain_header_name(name: &str) -> Result<(), HeaderNameError> {
    if CREDENTIAL_HEADERS.contains(&name) {
        return Err(HeaderNameError::CredentialBearing);
    }
    check_attach_header_name(name)
}

/// Check a header name for [`HeaderOp::attach_header`] the way the gateway will (see
/// [`check_plain_header_name`]); credential-bearing headers are allowed here.
pub fn check_attach_header_name(name: &str) -> Result<(), HeaderNameError> {
    if !is_lowercase_field_name(name) {
        return Err(HeaderNameError::NotLowercaseFieldName);
    }
    if CREDENTIAL_HEADERS.contains(&name) {
        return Ok(());
    }
    let reserved = RESERVED_HEADERS.contains(&name)
        || RESERVED_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix));
    if reserved {
        return Err(HeaderNameError::Reserved);
    }
    Ok(())
}

/// Headers a plugin may not write at all (`header-op` in `wit/gateway.wit`).
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "host",
    "content-length",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "forwarded",
    "x-real-ip",
    "traceparent",
    "tracestate",
];

/// Prefixes of header names a plugin may not write at all.
const RESERVED_PREFIXES: &[&str] = &["proxy-", "x-caracal-", "x-forwarded-"];

/// Headers that carry a credential: written only by `attach-header`, once.
const CREDENTIAL_HEADERS: &[&str] = &["authorization", "cookie"];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CredentialKind;

    struct Nothing;

    impl CredentialInjector for Nothing {
        fn inject(_call: Call, _credentials: Vec<Credential>) -> Result<Vec<HeaderOp>, String> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn the_default_configure_needs_nothing() {
        assert!(
            !<Nothing as Guest>::configure(String::new())
                .unwrap()
                .body_sha256
        );
    }

    #[test]
    fn the_world_trait_forwards_to_the_injector() {
        let call = crate::testing::CallBuilder::new("GET", "/").build();
        assert!(
            <Nothing as Guest>::inject(call, Vec::new())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn constructors_build_the_matching_operations() {
        let HeaderOp::AttachHeader(attach) =
            HeaderOp::attach_header("authorization", PRIMARY, Some("Bearer"))
        else {
            panic!("expected attach-header");
        };
        assert_eq!(
            (attach.name.as_str(), attach.handle.as_str()),
            ("authorization", "primary")
        );
        assert_eq!(attach.scheme.as_deref(), Some("Bearer"));
        assert!(
            matches!(HeaderOp::attach_query("key", PRIMARY), HeaderOp::AttachQuery(q) if q.param == "key")
        );
        assert!(
            matches!(HeaderOp::set_header("x-a", "1"), HeaderOp::SetHeader(h) if h.value == "1")
        );
        assert!(
            matches!(HeaderOp::remove_header("x-b"), HeaderOp::RemoveHeader(name) if name == "x-b")
        );
    }

    #[test]
    fn a_credential_is_found_by_its_handle() {
        let credentials = [Credential {
            name: PRIMARY.to_owned(),
            kind: CredentialKind::ApiKey,
        }];
        assert!(has_credential(&credentials, PRIMARY));
        assert!(!has_credential(&credentials, RESOURCE_MANDATE));
    }

    #[test]
    fn reserved_and_credential_headers_are_refused_for_plain_writes() {
        assert_eq!(check_plain_header_name("x-signature"), Ok(()));
        for reserved in [
            "host",
            "content-length",
            "te",
            "proxy-connection",
            "proxy-authorization",
            "traceparent",
            "x-caracal-user",
            "x-forwarded-for",
            "forwarded",
        ] {
            assert_eq!(
                check_plain_header_name(reserved),
                Err(HeaderNameError::Reserved),
                "{reserved}"
            );
        }
        for credential in ["authorization", "cookie"] {
            assert_eq!(
                check_plain_header_name(credential),
                Err(HeaderNameError::CredentialBearing)
            );
        }
        assert_eq!(
            check_plain_header_name("Cookie"),
            Err(HeaderNameError::NotLowercaseFieldName)
        );
    }

    #[test]
    fn credential_headers_can_be_attached() {
        assert_eq!(check_attach_header_name("authorization"), Ok(()));
        assert_eq!(check_attach_header_name("cookie"), Ok(()));
        assert_eq!(
            check_attach_header_name("proxy-authorization"),
            Err(HeaderNameError::Reserved)
        );
        assert_eq!(
            check_attach_header_name("x-caracal-key"),
            Err(HeaderNameError::Reserved)
        );
    }

    #[test]
    fn field_names_must_be_lowercase_tokens() {
        assert!(is_lowercase_field_name("x-api-token"));
        assert!(!is_lowercase_field_name("X-Api-Token"));
        assert!(!is_lowercase_field_name(""));
        assert!(!is_lowercase_field_name("x api"));
        assert!(!is_lowercase_field_name("x:api"));
    }
}
