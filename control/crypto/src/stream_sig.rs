//! The `_sig` field of Redis stream messages: canonicalization, signing and
//! constant-time verification (`storage-and-events.md` §6.3,
//! `wire-contract.md` §5.2).
//!
//! Canonical bytes: the stream name, LF; then for each field except `_sig`,
//! in ascending byte order of the field name, `name=value` LF. Field names
//! match `^[a-z0-9_]{1,64}$`; a value containing LF, a repeated field or a bad
//! name is an error (a consumer treats it as a signature failure).

use crate::mac::{HmacKey, decode_lower_hex_tag, hmac_sha256_hex, verify_hmac_sha256};

/// The name of the signature field.
pub const SIG_FIELD: &str = "_sig";

const MAX_FIELD_NAME_LEN: usize = 64;
const MAX_NAME_IN_ERROR: usize = 64;

/// A stream message could not be signed or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamSigError {
    /// A field value contains a line feed.
    #[error("stream field {field:?} has a value containing a line feed")]
    ValueHasNewline {
        /// The field name.
        field: String,
    },
    /// A field name occurs more than once.
    #[error("stream field {field:?} occurs more than once")]
    RepeatedField {
        /// The field name.
        field: String,
    },
    /// A field name does not match `^[a-z0-9_]{1,64}$`.
    #[error("stream field name {field:?} does not match ^[a-z0-9_]{{1,64}}$")]
    BadFieldName {
        /// The field name, shortened to 64 characters.
        field: String,
    },
    /// The stream name contains a line feed.
    #[error("stream name contains a line feed")]
    BadStreamName,
    /// The message has no `_sig` field.
    #[error("stream message has no _sig field")]
    Missing,
    /// `_sig` is not exactly 64 lowercase hex characters.
    #[error("stream message _sig is not 64 lowercase hex characters")]
    Malformed,
    /// `_sig` does not match the message under any configured key.
    #[error("stream message _sig does not match")]
    Mismatch,
    /// Verification was asked for with no key.
    #[error("no stream signing key is configured")]
    NoKey,
}

/// The canonical bytes that `_sig` covers. `_sig` fields in `fields` are
/// skipped.
///
/// # Errors
///
/// [`StreamSigError::BadStreamName`], [`StreamSigError::BadFieldName`],
/// [`StreamSigError::ValueHasNewline`], [`StreamSigError::RepeatedField`].
pub fn canonical_stream_bytes<K, V>(
    stream: &str,
    fields: &[(K, V)],
) -> Result<Vec<u8>, StreamSigError>
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    Ok(canonicalize(stream, fields)?.bytes)
}

/// Signs a message: lowercase hex HMAC-SHA256 of the canonical bytes under
/// `key` (`STREAMS_HMAC_KEY`). Any `_sig` already among `fields` is ignored.
///
/// # Errors
///
/// As [`canonical_stream_bytes`].
pub fn sign_stream_fields<K, V>(
    key: &HmacKey,
    stream: &str,
    fields: &[(K, V)],
) -> Result<String, StreamSigError>
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    let canonical = canonicalize(stream, fields)?;
    Ok(hmac_sha256_hex(key, &[&canonical.bytes]))
}

/// Verifies a received message, `_sig` included, against `keys` (the current
/// key, then the previous one during a rotation). The comparison is
/// constant-time.
///
/// # Errors
///
/// The canonicalization errors of [`canonical_stream_bytes`];
/// [`StreamSigError::RepeatedField`] for two `_sig` fields;
/// [`StreamSigError::Missing`], [`StreamSigError::Malformed`] (not exactly 64
/// lowercase hex characters), [`StreamSigError::Mismatch`], or
/// [`StreamSigError::NoKey`] when `keys` is empty.
pub fn verify_stream_fields<K, V>(
    keys: &[&HmacKey],
    stream: &str,
    fields: &[(K, V)],
) -> Result<(), StreamSigError>
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    let canonical = canonicalize(stream, fields)?;
    let sig = canonical.sig.ok_or(StreamSigError::Missing)?;
    let tag = decode_lower_hex_tag(sig).ok_or(StreamSigError::Malformed)?;
    if keys.is_empty() {
        return Err(StreamSigError::NoKey);
    }
    // Every key is tried, so the time does not depend on which one matches.
    let matched = keys.iter().fold(false, |matched, key| {
        verify_hmac_sha256(key, &[&canonical.bytes], &tag) | matched
    });
    if matched {
        Ok(())
    } else {
        Err(StreamSigError::Mismatch)
    }
}

struct Canonical<'a> {
    bytes: Vec<u8>,
    sig: Option<&'a str>,
}

fn canonicalize<'a, K, V>(
    stream: &str,
    fields: &'a [(K, V)],
) -> Result<Canonical<'a>, StreamSigError>
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    if stream.contains('\n') {
        return Err(StreamSigError::BadStreamName);
    }
    let mut sig = None;
    let mut signed: Vec<(&str, &str)> = Vec::with_capacity(fields.len());
    for (name, value) in fields {
        let (name, value) = (name.as_ref(), value.as_ref());
        if !is_valid_field_name(name) {
            return Err(StreamSigError::BadFieldName {
                field: shorten(name),
            });
        }
        if name == SIG_FIELD {
            if sig.replace(value).is_some() {
                return Err(StreamSigError::RepeatedField {
                    field: SIG_FIELD.to_owned(),
                });
            }
            continue;
        }
        if value.contains('\n') {
            return Err(StreamSigError::ValueHasNewline {
                field: name.to_owned(),
            });
        }
        signed.push((name, value));
    }
    // Names are ASCII, so `str` order is byte order.
    signed.sort_unstable_by(|a, b| a.0.cmp(b.0));
    if let Some(pair) = signed.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(StreamSigError::RepeatedField {
            field: pair[0].0.to_owned(),
        });
    }
    let len = stream.len()
        + 1
        + signed
            .iter()
            .map(|(name, value)| name.len() + value.len() + 2)
            .sum::<usize>();
    let mut bytes = Vec::with_capacity(len);
    bytes.extend_from_slice(stream.as_bytes());
    bytes.push(b'\n');
    for (name, value) in signed {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(b'=');
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(b'\n');
    }
    Ok(Canonical { bytes, sig })
}

fn is_valid_field_name(name: &str) -> bool {
    (1..=MAX_FIELD_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn shorten(name: &str) -> String {
    match name.char_indices().nth(MAX_NAME_IN_ERROR) {
        Some((end, _)) => format!("{}…", &name[..end]),
        None => name.to_owned(),
    }
}

#[cfg(test)]
mod tests;
