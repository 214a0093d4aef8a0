//! The mapping of one binding: read and checked once, then turned into operations per call.

use std::collections::{BTreeMap, BTreeSet};

use caracal_plugin_sdk::config::{self, ConfigError};
use caracal_plugin_sdk::injector::{check_attach_header_name, check_plain_header_name};
use caracal_plugin_sdk::{HeaderOp, PRIMARY, RequestHead};
use serde::Deserialize;

/// The most operations the gateway accepts from one call.
const OPERATIONS_MAX: usize = 32;

/// The longest header value the gateway accepts.
const VALUE_MAX: usize = 8 * 1024;

/// The configuration as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    credential_header: String,
    scheme: Option<String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    copy: BTreeMap<String, String>,
}

/// The mapping of one binding, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mapping {
    credential_header: String,
    scheme: Option<String>,
    set: BTreeMap<String, String>,
    remove: Vec<String>,
    /// Source header → target header.
    copy: BTreeMap<String, String>,
}

impl Mapping {
    /// Read and check a binding's configuration.
    pub(crate) fn parse(text: &str) -> Result<Mapping, ConfigError> {
        let raw: RawMapping = config::parse(text)?;
        check_attach_header_name(&raw.credential_header).map_err(|err| {
            ConfigError::invalid(format!(
                "credential_header {:?} {err}",
                raw.credential_header
            ))
        })?;
        if let Some(scheme) = &raw.scheme
            && (scheme.is_empty() || !scheme.bytes().all(is_token_byte))
        {
            return Err(ConfigError::invalid(format!(
                "scheme {scheme:?} is not an HTTP authentication scheme (a token such as \"Token\" or \"Bearer\")"
            )));
        }
        for (name, value) in &raw.set {
            check_plain(&format!("set key {name:?}"), name)?;
            if value.len() > VALUE_MAX || !value.bytes().all(is_value_byte) {
                return Err(ConfigError::invalid(format!(
                    "set.{name} must be at most {VALUE_MAX} bytes of visible characters, spaces and tabs"
                )));
            }
        }
        for (index, name) in raw.remove.iter().enumerate() {
            check_plain(&format!("remove[{index}] {name:?}"), name)?;
        }
        for (from, to) in &raw.copy {
            if !caracal_plugin_sdk::injector::is_lowercase_field_name(from) {
                return Err(ConfigError::invalid(format!(
                    "copy key {from:?} is not a lowercase HTTP header name"
                )));
            }
            check_plain(&format!("copy.{from} target {to:?}"), to)?;
        }
        // Every header is written by one operation only, so their order cannot matter.
        let mut written = BTreeSet::from([raw.credential_header.as_str()]);
        let targets = raw
            .set
            .keys()
            .chain(raw.remove.iter())
            .chain(raw.copy.values());
        for name in targets {
            if !written.insert(name.as_str()) {
                return Err(ConfigError::invalid(format!(
                    "header {name:?} is written more than once (credential_header, set, remove and copy targets must all differ)"
                )));
            }
        }
        let operations = 1 + raw.set.len() + raw.remove.len() + raw.copy.len();
        if operations > OPERATIONS_MAX {
            return Err(ConfigError::invalid(format!(
                "the mapping makes {operations} operations; the gateway accepts at most {OPERATIONS_MAX}"
            )));
        }
        Ok(Mapping {
            credential_header: raw.credential_header,
            scheme: raw.scheme,
            set: raw.set,
            remove: raw.remove,
            copy: raw.copy,
        })
    }

    /// The operations for one request: removals, then copies of the request's headers (a
    /// header the request lacks is not copied), then fixed values, then the credential.
    pub(crate) fn operations(&self, request: &RequestHead) -> Vec<HeaderOp> {
        let removals = self.remove.iter().map(HeaderOp::remove_header);
        let copies = self.copy.iter().filter_map(|(from, to)| {
            request
                .header(from)
                .map(|value| HeaderOp::set_header(to, value))
        });
        let sets = self
            .set
            .iter()
            .map(|(name, value)| HeaderOp::set_header(name, value));
        let attach = HeaderOp::attach_header(
            self.credential_header.as_str(),
            PRIMARY,
            self.scheme.as_deref(),
        );
        removals
            .chain(copies)
            .chain(sets)
            .chain(std::iter::once(attach))
            .collect()
    }
}

fn check_plain(what: &str, name: &str) -> Result<(), ConfigError> {
    check_plain_header_name(name).map_err(|err| ConfigError::invalid(format!("{what} {err}")))
}

/// An RFC 9110 `tchar`.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// A byte of an RFC 9110 field value this plugin accepts: visible ASCII, space and tab.
fn is_value_byte(byte: u8) -> bool {
    byte == b'\t' || (b' '..=b'~').contains(&byte)
}

#[cfg(test)]
mod tests {
    use caracal_plugin_sdk::testing::CallBuilder;

    use super::*;

    fn refusal(config: &str) -> String {
        Mapping::parse(config).unwrap_err().to_string()
    }

    #[test]
    fn the_credential_is_attached_at_the_configured_header_with_its_scheme() {
        let mapping =
            Mapping::parse(r#"{"credential_header": "x-api-token", "scheme": "Token"}"#).unwrap();
        let request = CallBuilder::new("GET", "/").build().request;
        assert_eq!(
            mapping.operations(&request),
            [HeaderOp::attach_header(
                "x-api-token",
                "primary",
                Some("Token")
            )]
        );
    }

    #[test]
    fn removals_copies_and_sets_come_before_the_credential() {
        let mapping = Mapping::parse(
            r#"{"credential_header": "authorization", "scheme": "Bearer",
                "set": {"x-static": "v"}, "remove": ["x-debug"],
                "copy": {"x-tenant": "x-upstream-tenant", "x-absent": "x-never"}}"#,
        )
        .unwrap();
        let request = CallBuilder::new("GET", "/")
            .header("x-tenant", "acme")
            .build()
            .request;
        let expected = [
            HeaderOp::remove_header("x-debug"),
            HeaderOp::set_header("x-upstream-tenant", "acme"),
            HeaderOp::set_header("x-static", "v"),
            HeaderOp::attach_header("authorization", "primary", Some("Bearer")),
        ];
        assert_eq!(mapping.operations(&request), expected);
    }

    #[test]
    fn the_credential_header_is_required() {
        assert!(refusal("{}").contains("missing field `credential_header`"));
    }

    #[test]
    fn names_the_gateway_would_refuse_are_refused_at_configure() {
        assert_eq!(
            refusal(r#"{"credential_header": "host"}"#),
            r#"invalid configuration: credential_header "host" is reserved to the gateway"#
        );
        assert!(
            refusal(r#"{"credential_header": "x-k", "set": {"authorization": "Bearer x"}}"#)
                .contains("carries a credential")
        );
        assert!(
            refusal(r#"{"credential_header": "x-k", "remove": ["x-caracal-user"]}"#)
                .contains(r#"remove[0] "x-caracal-user" is reserved"#)
        );
        assert!(
            refusal(r#"{"credential_header": "x-k", "copy": {"x-a": "X-B"}}"#)
                .contains("is not a lowercase HTTP header name")
        );
    }

    #[test]
    fn a_header_written_twice_is_refused() {
        assert!(
            refusal(r#"{"credential_header": "x-k", "set": {"x-k": "v"}}"#)
                .contains(r#"header "x-k" is written more than once"#)
        );
        assert!(
            refusal(r#"{"credential_header": "x-k", "remove": ["x-a"], "copy": {"x-b": "x-a"}}"#)
                .contains("written more than once")
        );
    }

    #[test]
    fn bad_schemes_values_and_too_many_operations_are_refused() {
        assert!(refusal(r#"{"credential_header": "x-k", "scheme": "Bear er"}"#).contains("scheme"));
        assert!(
            refusal(r#"{"credential_header": "x-k", "set": {"x-a": "line\nbreak"}}"#)
                .contains("set.x-a")
        );
        let many: Vec<String> = (0..32).map(|n| format!("x-h{n}")).collect();
        let config = format!(r#"{{"credential_header": "x-k", "remove": {many:?}}}"#);
        assert!(refusal(&config).contains("33 operations"));
        assert!(
            refusal(r#"{"credential_header": "x-k", "rename": {}}"#)
                .contains("unknown field `rename`")
        );
    }
}
