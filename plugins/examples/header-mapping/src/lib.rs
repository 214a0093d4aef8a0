//! Example credential injector `example-header-mapping`: attaches the provider's credential
//! at a configured header and applies plain header changes.
//!
//! # Configuration
//!
//! ```json
//! {
//!   "credential_header": "x-api-token",
//!   "scheme": "Token",
//!   "set": { "x-static": "v" },
//!   "remove": ["x-debug"],
//!   "copy": { "x-tenant": "x-upstream-tenant" }
//! }
//! ```
//!
//! | Key | Meaning |
//! | --- | --- |
//! | `credential_header` (required) | the header the `primary` credential is attached to (by the gateway: the plugin never sees it); `authorization` is allowed |
//! | `scheme` | written before the credential, `<scheme> <credential>` (an HTTP token such as `Token` or `Bearer`); without it the header holds the credential alone |
//! | `set` | plain headers set to fixed values |
//! | `remove` | headers removed from the outbound request |
//! | `copy` | `source: target`: the inbound request's `source` header (its first value) is set as `target`; a request without `source` gets no `target` |
//!
//! Header names must be lowercase and writable by a plugin (not `host`, `content-length`,
//! `x-caracal-*`, `x-forwarded-*`, ...); `set`, `remove` and `copy` targets cannot be
//! credential-bearing headers (`authorization`, `proxy-authorization`, `cookie`). Each header
//! may be written by one entry only, values are at most 8 KiB of visible characters, and the
//! whole mapping makes at most 32 operations. `configure` refuses anything else, naming the
//! key.
//!
//! # Operations
//!
//! Per request, in this order: the removals, the copies, the fixed values, then
//! `attach-header(credential_header, primary, scheme)`.

mod mapping;

use caracal_plugin_sdk::injector::has_credential;
use caracal_plugin_sdk::{Call, Credential, CredentialInjector, HeaderOp, Needs, PRIMARY};

use crate::mapping::Mapping;

/// The injector this component exports.
struct HeaderMapping;

impl CredentialInjector for HeaderMapping {
    fn configure(config: &str) -> Result<Needs, String> {
        Mapping::parse(config)?;
        Ok(Needs::default())
    }

    fn inject(call: Call, credentials: Vec<Credential>) -> Result<Vec<HeaderOp>, String> {
        let mapping = Mapping::parse(&call.config)?;
        if !has_credential(&credentials, PRIMARY) {
            return Err("the call has no primary credential to attach".to_owned());
        }
        Ok(mapping.operations(&call.request))
    }
}

caracal_plugin_sdk::export_injector!(HeaderMapping);

#[cfg(test)]
mod tests {
    use caracal_plugin_sdk::CredentialKind;
    use caracal_plugin_sdk::testing::CallBuilder;

    use super::*;

    #[test]
    fn inject_attaches_the_primary_credential() {
        let call = CallBuilder::new("GET", "/")
            .config(r#"{"credential_header": "x-api-token"}"#)
            .build();
        let credentials = vec![Credential {
            name: PRIMARY.to_owned(),
            kind: CredentialKind::ApiKey,
        }];
        let operations = HeaderMapping::inject(call, credentials).unwrap();
        assert_eq!(
            operations,
            [HeaderOp::attach_header("x-api-token", PRIMARY, None)]
        );
    }

    #[test]
    fn inject_fails_without_a_primary_credential() {
        let call = CallBuilder::new("GET", "/")
            .config(r#"{"credential_header": "x-api-token"}"#)
            .build();
        assert!(HeaderMapping::inject(call, Vec::new()).is_err());
    }

    #[test]
    fn configure_needs_no_body_and_refuses_a_missing_header() {
        assert!(
            !HeaderMapping::configure(r#"{"credential_header": "x-k"}"#)
                .unwrap()
                .body_sha256
        );
        assert!(HeaderMapping::configure("{}").is_err());
    }
}
