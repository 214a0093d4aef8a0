//! The checks on what a credential injector returns (authority §7.5).
//!
//! Every operation is checked before any is applied, so a plugin's output is taken whole or
//! not at all. The result, [`CheckedOp`], carries typed header names and values; the gateway
//! applies it and is the only writer of credential bytes.

use std::collections::HashSet;

use http::{HeaderName, HeaderValue};

use crate::bindings::HeaderOp;
use crate::call::CredentialSet;
use crate::{FailureCause, PluginFailure};

/// Operations an injector may return.
pub const MAX_OPS: usize = 32;
/// Longest header value a `set-header` operation may carry.
pub const MAX_VALUE_BYTES: usize = 8 * 1024;
/// The most bytes all operations together may carry (names and values).
pub const MAX_TOTAL_BYTES: usize = 32 * 1024;
/// Longest authentication scheme.
const MAX_SCHEME_BYTES: usize = 32;

/// What the gateway knows when it checks an injector's output.
#[derive(Debug, Clone, Default)]
pub struct InjectRules {
    /// The header the gateway's built-in placement already wrote the credential in (mode
    /// `augment`); writing it again is refused.
    pub placed_header: Option<HeaderName>,
}

/// One checked operation, ready to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckedOp {
    /// Set header `name` to the credential behind `handle`, after `scheme ` when given.
    AttachHeader {
        /// Header name.
        name: HeaderName,
        /// Credential handle (present in the call's set).
        handle: String,
        /// Authentication scheme, an HTTP token.
        scheme: Option<String>,
    },
    /// Add query parameter `param` with the credential behind `handle` (the gateway
    /// percent-encodes both).
    AttachQuery {
        /// Parameter name.
        param: String,
        /// Credential handle.
        handle: String,
    },
    /// Set a plain header.
    SetHeader {
        /// Header name.
        name: HeaderName,
        /// Value.
        value: HeaderValue,
    },
    /// Remove a header.
    RemoveHeader {
        /// Header name.
        name: HeaderName,
    },
}

/// Checks an injector's output. The first violation fails the whole output with
/// [`FailureCause::BadOutput`].
pub fn check_ops(
    ops: Vec<HeaderOp>,
    credentials: &CredentialSet,
    rules: &InjectRules,
) -> Result<Vec<CheckedOp>, PluginFailure> {
    if ops.len() > MAX_OPS {
        return Err(bad(format!(
            "{} operations, more than {MAX_OPS}",
            ops.len()
        )));
    }
    let total: usize = ops.iter().map(op_bytes).sum();
    if total > MAX_TOTAL_BYTES {
        return Err(bad(format!(
            "the operations carry {total} bytes, more than {MAX_TOTAL_BYTES}"
        )));
    }
    let mut attached: HashSet<HeaderName> = HashSet::new();
    let mut attached_params: HashSet<String> = HashSet::new();
    let mut checked = Vec::with_capacity(ops.len());
    for op in ops {
        checked.push(match op {
            HeaderOp::AttachHeader(attach) => {
                let name = header_name(&attach.name)?;
                check_handle(&attach.handle, credentials)?;
                if rules.placed_header.as_ref() == Some(&name) || !attached.insert(name.clone()) {
                    return Err(bad(format!("a second write of credential header {name}")));
                }
                let scheme = match attach.scheme {
                    Some(scheme) => Some(check_scheme(scheme)?),
                    None => None,
                };
                CheckedOp::AttachHeader {
                    name,
                    handle: attach.handle,
                    scheme,
                }
            }
            HeaderOp::AttachQuery(attach) => {
                check_handle(&attach.handle, credentials)?;
                if attach.param.is_empty()
                    || attach.param.len() > 128
                    || attach.param.chars().any(char::is_control)
                {
                    return Err(bad(
                        "a query parameter name must have 1 to 128 bytes and no control characters",
                    ));
                }
                if !attached_params.insert(attach.param.clone()) {
                    return Err(bad(format!(
                        "a second write of credential parameter {}",
                        attach.param
                    )));
                }
                CheckedOp::AttachQuery {
                    param: attach.param,
                    handle: attach.handle,
                }
            }
            HeaderOp::SetHeader(header) => {
                let name = plain_header_name(&header.name, rules)?;
                if header.value.len() > MAX_VALUE_BYTES {
                    return Err(bad(format!(
                        "the value of header {name} is longer than {MAX_VALUE_BYTES} bytes"
                    )));
                }
                let value = HeaderValue::from_str(&header.value).map_err(|_invalid| {
                    bad(format!(
                        "the value of header {name} is not a valid header value"
                    ))
                })?;
                CheckedOp::SetHeader { name, value }
            }
            HeaderOp::RemoveHeader(name) => CheckedOp::RemoveHeader {
                name: plain_header_name(&name, rules)?,
            },
        });
    }
    Ok(checked)
}

fn bad(detail: impl Into<String>) -> PluginFailure {
    PluginFailure::new(FailureCause::BadOutput, detail)
}

fn op_bytes(op: &HeaderOp) -> usize {
    match op {
        HeaderOp::AttachHeader(a) => {
            a.name.len() + a.handle.len() + a.scheme.as_ref().map_or(0, String::len)
        }
        HeaderOp::AttachQuery(a) => a.param.len() + a.handle.len(),
        HeaderOp::SetHeader(h) => h.name.len() + h.value.len(),
        HeaderOp::RemoveHeader(name) => name.len(),
    }
}

fn check_handle(handle: &str, credentials: &CredentialSet) -> Result<(), PluginFailure> {
    if credentials.get(handle).is_none() {
        return Err(bad(format!(
            "unknown credential handle {}",
            printable(handle)
        )));
    }
    Ok(())
}

fn check_scheme(scheme: String) -> Result<String, PluginFailure> {
    let token = !scheme.is_empty()
        && scheme.len() <= MAX_SCHEME_BYTES
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(bad(format!(
            "scheme {} is not an HTTP token of at most {MAX_SCHEME_BYTES} bytes",
            printable(&scheme)
        )));
    }
    Ok(scheme)
}

/// A header name an injector may write at all: lowercase, valid, not reserved.
fn header_name(name: &str) -> Result<HeaderName, PluginFailure> {
    if name.is_empty() || name.len() > 256 || name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad(format!(
            "header name {} must be lowercase, 1 to 256 bytes",
            printable(name)
        )));
    }
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_invalid| bad(format!("{} is not a valid header name", printable(name))))?;
    if is_reserved(parsed.as_str()) {
        return Err(bad(format!("header {parsed} is reserved for the gateway")));
    }
    Ok(parsed)
}

/// A header an injector may set or remove as plain text: not reserved and not one that
/// carries a credential.
fn plain_header_name(name: &str, rules: &InjectRules) -> Result<HeaderName, PluginFailure> {
    let parsed = header_name(name)?;
    if is_credential_header(parsed.as_str()) || rules.placed_header.as_ref() == Some(&parsed) {
        return Err(bad(format!(
            "credential header {parsed} can only be written with attach-header"
        )));
    }
    Ok(parsed)
}

/// Headers the gateway owns: hop-by-hop and framing headers, the host, and everything the
/// gateway itself vouches for.
pub fn is_reserved(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            | "forwarded"
            | "x-real-ip"
            | "traceparent"
            | "tracestate"
    ) || name.starts_with("proxy-")
        || name.starts_with("x-caracal-")
        || name.starts_with("x-forwarded-")
}

/// Headers that carry a credential: only `attach-header` may write them.
pub fn is_credential_header(name: &str) -> bool {
    matches!(name, "authorization" | "cookie")
}

/// A guest-provided string for an error message: at most 64 characters, controls escaped.
fn printable(text: &str) -> String {
    let mut shown: String = text.chars().take(64).flat_map(char::escape_debug).collect();
    if text.chars().count() > 64 {
        shown.push('…');
    }
    format!("\"{shown}\"")
}

#[cfg(test)]
mod tests;
