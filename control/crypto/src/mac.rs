//! HMAC-SHA256 keys (`AUDIT_HMAC_KEY`, `STREAMS_HMAC_KEY`,
//! `AUDIT_CHAIN_HMAC_KEY`, …) and tag computation and verification
//! (`storage-and-events.md` §10.5).

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::key_source::{KeyConfigError, process_env, read_key_text};

/// Minimum decoded length of an HMAC key, in bytes.
pub const MIN_HMAC_KEY_LEN: usize = 32;

/// Length of an HMAC-SHA256 tag in bytes.
pub const HMAC_TAG_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Why an HMAC key value was rejected. The message never contains the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HmacKeyParseError {
    /// Fewer than 64 hex characters (after trimming surrounding whitespace).
    #[error("expected at least 64 hex characters (32 bytes), found {found} characters")]
    TooShort {
        /// How many characters were found.
        found: usize,
    },
    /// An odd number of hex characters.
    #[error("expected an even number of hex characters, found {found} characters")]
    OddLength {
        /// How many characters were found.
        found: usize,
    },
    /// The value is not hexadecimal.
    #[error("value is not hexadecimal")]
    NotHex,
    /// Raw key bytes shorter than [`MIN_HMAC_KEY_LEN`].
    #[error("expected at least 32 bytes, found {found} bytes")]
    TooFewBytes {
        /// How many bytes were given.
        found: usize,
    },
}

/// An HMAC-SHA256 key of at least 32 bytes.
///
/// The key is kept only as the keyed HMAC state (the inner and outer padded
/// key blocks), from which every tag is computed; the decoded bytes are zeroed
/// after use. `Debug` prints nothing of the key.
#[derive(Clone)]
pub struct HmacKey {
    mac: HmacSha256,
    key_id: String,
}

impl HmacKey {
    /// Parses a hex key (either case) of at least 64 characters. Surrounding
    /// whitespace is trimmed, since key files end in a newline.
    ///
    /// # Errors
    ///
    /// [`HmacKeyParseError`] when the value is too short, of odd length, or
    /// not hexadecimal.
    pub fn from_hex(text: &str) -> Result<Self, HmacKeyParseError> {
        let text = text.trim();
        let found = text.chars().count();
        if found < 2 * MIN_HMAC_KEY_LEN {
            return Err(HmacKeyParseError::TooShort { found });
        }
        if !found.is_multiple_of(2) {
            return Err(HmacKeyParseError::OddLength { found });
        }
        let bytes = zeroize::Zeroizing::new(
            // The hex error names the offending character: never keep it.
            hex::decode(text).map_err(|_names_a_key_char| HmacKeyParseError::NotHex)?,
        );
        Self::from_bytes(&bytes)
    }

    /// Builds a key from raw bytes.
    ///
    /// # Errors
    ///
    /// [`HmacKeyParseError::TooFewBytes`] when shorter than 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HmacKeyParseError> {
        if bytes.len() < MIN_HMAC_KEY_LEN {
            return Err(HmacKeyParseError::TooFewBytes { found: bytes.len() });
        }
        // HMAC accepts keys of any length, so this never fails in practice.
        let mac = <HmacSha256 as Mac>::new_from_slice(bytes)
            .map_err(|_invalid_length| HmacKeyParseError::TooFewBytes { found: bytes.len() })?;
        let mut id = <sha2::Sha256 as sha2::Digest>::new();
        sha2::Digest::update(&mut id, b"caracal.audit-hmac.v1\n");
        sha2::Digest::update(&mut id, bytes);
        let digest = sha2::Digest::finalize(id);
        let key_id = hex::encode(digest.get(..8).unwrap_or_default());
        Ok(Self { mac, key_id })
    }

    /// The key's public id (storage §8.3 `chain_key_id`): the first 16 hex characters of
    /// `SHA-256("caracal.audit-hmac.v1" LF key)`. It names the key without revealing it.
    pub fn chain_key_id(&self) -> &str {
        &self.key_id
    }

    /// Loads the key named `var` from the process environment; see
    /// [`HmacKey::from_lookup`].
    ///
    /// # Errors
    ///
    /// As [`HmacKey::from_lookup`].
    pub fn from_env(var: &str) -> Result<Option<Self>, KeyConfigError> {
        Self::from_lookup(var, process_env)
    }

    /// The stream keys: `STREAMS_HMAC_KEY`, then `STREAMS_HMAC_KEY_PREVIOUS` during a
    /// rotation (each also as `_FILE`); empty when neither is set.
    ///
    /// # Errors
    ///
    /// As [`HmacKey::from_lookup`].
    pub fn stream_keys<F>(lookup: F) -> Result<Vec<Self>, KeyConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        let mut keys = Vec::new();
        for var in ["STREAMS_HMAC_KEY", "STREAMS_HMAC_KEY_PREVIOUS"] {
            if let Some(key) = Self::from_lookup(var, &lookup)? {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// Loads the key from `var` or `var_FILE` through `lookup` (a stand-in for
    /// the environment), e.g. `STREAMS_HMAC_KEY` or
    /// `STREAMS_HMAC_KEY_PREVIOUS`. Returns `Ok(None)` when neither is set
    /// (empty counts as unset); whether that is acceptable is the caller's
    /// decision (production mode requires the keys).
    ///
    /// # Errors
    ///
    /// [`KeyConfigError`] naming the variable: both set, unreadable file, or
    /// an invalid key.
    pub fn from_lookup<F>(var: &str, lookup: F) -> Result<Option<Self>, KeyConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        let Some(found) = read_key_text(var, &lookup)? else {
            return Ok(None);
        };
        Self::from_hex(&found.text)
            .map(Some)
            .map_err(|cause| KeyConfigError::InvalidHmacKey {
                origin: found.origin,
                cause,
            })
    }

    fn tag_of(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        for part in parts {
            mac.update(part);
        }
        mac
    }
}

impl fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HmacKey(<redacted>)")
    }
}

/// HMAC-SHA256 over the concatenation of `parts` (no separators are added).
#[must_use]
pub fn hmac_sha256(key: &HmacKey, parts: &[&[u8]]) -> [u8; HMAC_TAG_LEN] {
    key.tag_of(parts).finalize().into_bytes().into()
}

/// [`hmac_sha256`] as 64 lowercase hex characters.
#[must_use]
pub fn hmac_sha256_hex(key: &HmacKey, parts: &[&[u8]]) -> String {
    hex::encode(hmac_sha256(key, parts))
}

/// Checks `tag` against HMAC-SHA256 over the concatenation of `parts`, in
/// constant time. A tag of the wrong length is simply wrong.
#[must_use]
pub fn verify_hmac_sha256(key: &HmacKey, parts: &[&[u8]], tag: &[u8]) -> bool {
    key.tag_of(parts).verify_slice(tag).is_ok()
}

/// Checks a tag given as exactly 64 lowercase hex characters (the form
/// Caracal writes) against HMAC-SHA256 over `parts`, in constant time.
/// Anything else (uppercase, wrong length, not hex) is rejected.
#[must_use]
pub fn verify_hmac_sha256_hex(key: &HmacKey, parts: &[&[u8]], tag_hex: &str) -> bool {
    match decode_lower_hex_tag(tag_hex) {
        Some(tag) => verify_hmac_sha256(key, parts, &tag),
        None => false,
    }
}

/// Decodes exactly 64 lowercase hex characters.
pub(crate) fn decode_lower_hex_tag(text: &str) -> Option<[u8; HMAC_TAG_LEN]> {
    let lower_hex = text.len() == 2 * HMAC_TAG_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !lower_hex {
        return None;
    }
    let mut tag = [0_u8; HMAC_TAG_LEN];
    hex::decode_to_slice(text, &mut tag).ok()?;
    Some(tag)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{
        HmacKey, HmacKeyParseError, hmac_sha256, hmac_sha256_hex, verify_hmac_sha256,
        verify_hmac_sha256_hex,
    };
    use crate::key_source::KeyConfigError;

    const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn lookup_from(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn tag_over_concatenated_parts_matches_upstream_cross_check() {
        // HMAC-SHA256(key = 0x0123…ef ×2, "audit:events\naction=transfer\namount=100\n"),
        // computed with Python's hmac module (the Caracal 1.0 cross-check vector).
        let key = HmacKey::from_hex(KEY).unwrap();
        assert_eq!(
            hmac_sha256_hex(&key, &[b"audit:events\n", b"action=transfer\namount=100\n"]),
            "c06ccc579e026c31a97a04f203981b236a3c88041712e9b46242e8762da23d75"
        );
    }

    #[test]
    fn tag_verifies_and_altered_tag_does_not() {
        let key = HmacKey::from_hex(KEY).unwrap();
        let mut tag = hmac_sha256(&key, &[b"data"]);
        assert!(verify_hmac_sha256(&key, &[b"da", b"ta"], &tag));
        tag[31] ^= 1;
        assert!(!verify_hmac_sha256(&key, &[b"data"], &tag));
        assert!(!verify_hmac_sha256(&key, &[b"data"], &tag[..16]));
    }

    #[test]
    fn hex_tag_must_be_lowercase_and_64_characters() {
        let key = HmacKey::from_hex(KEY).unwrap();
        let tag = hmac_sha256_hex(&key, &[b"data"]);
        assert!(verify_hmac_sha256_hex(&key, &[b"data"], &tag));
        assert!(!verify_hmac_sha256_hex(
            &key,
            &[b"data"],
            &tag.to_uppercase()
        ));
        assert!(!verify_hmac_sha256_hex(&key, &[b"data"], &tag[..62]));
        assert!(!verify_hmac_sha256_hex(&key, &[b"other"], &tag));
    }

    #[test]
    fn short_odd_and_non_hex_keys_are_rejected_without_their_value() {
        let short = &KEY[..62];
        let err = HmacKey::from_hex(short).unwrap_err();
        assert_eq!(err, HmacKeyParseError::TooShort { found: 62 });
        assert!(!err.to_string().contains(short));
        let odd = format!("{KEY}a");
        assert_eq!(
            HmacKey::from_hex(&odd).unwrap_err(),
            HmacKeyParseError::OddLength { found: 65 }
        );
        let not_hex = format!("{KEY}zz");
        let err = HmacKey::from_hex(&not_hex).unwrap_err();
        assert_eq!(err, HmacKeyParseError::NotHex);
        assert!(!err.to_string().contains(&not_hex));
        assert_eq!(
            HmacKey::from_bytes(&[7; 31]).unwrap_err(),
            HmacKeyParseError::TooFewBytes { found: 31 }
        );
    }

    #[test]
    fn longer_keys_are_accepted() {
        let key = HmacKey::from_hex(&format!("{KEY}{}", &KEY[..32])).unwrap();
        assert_eq!(hmac_sha256(&key, &[b"x"]).len(), 32);
    }

    #[test]
    fn debug_redacts_the_key() {
        let key = HmacKey::from_hex(KEY).unwrap();
        assert_eq!(format!("{key:?}"), "HmacKey(<redacted>)");
    }

    #[test]
    fn unset_key_is_none() {
        let found = HmacKey::from_lookup("STREAMS_HMAC_KEY", lookup_from(&[])).unwrap();
        assert!(found.is_none());
        let found =
            HmacKey::from_lookup("STREAMS_HMAC_KEY", lookup_from(&[("STREAMS_HMAC_KEY", "")]))
                .unwrap();
        assert!(found.is_none());
    }

    #[test]
    fn key_loads_from_variable_and_file() {
        let key = HmacKey::from_lookup("AUDIT_HMAC_KEY", lookup_from(&[("AUDIT_HMAC_KEY", KEY)]))
            .unwrap()
            .unwrap();
        let path =
            std::env::temp_dir().join(format!("control-crypto-mac-{}-key", std::process::id()));
        std::fs::write(&path, format!("{KEY}\n")).unwrap();
        let from_file = HmacKey::from_lookup(
            "AUDIT_HMAC_KEY",
            lookup_from(&[("AUDIT_HMAC_KEY_FILE", path.to_str().unwrap())]),
        );
        std::fs::remove_file(&path).unwrap();
        let from_file = from_file.unwrap().unwrap();
        assert_eq!(hmac_sha256(&key, &[b"x"]), hmac_sha256(&from_file, &[b"x"]));
    }

    #[test]
    fn invalid_key_error_names_the_variable_not_the_value() {
        let err = HmacKey::from_lookup(
            "STREAMS_HMAC_KEY_PREVIOUS",
            lookup_from(&[("STREAMS_HMAC_KEY_PREVIOUS", "abcdef")]),
        )
        .unwrap_err();
        assert!(matches!(err, KeyConfigError::InvalidHmacKey { .. }));
        let message = err.to_string();
        assert_eq!(
            message,
            "STREAMS_HMAC_KEY_PREVIOUS: expected at least 64 hex characters (32 bytes), found 6 characters"
        );
        assert!(!message.contains("abcdef"));
    }

    #[test]
    fn both_key_and_key_file_is_an_error() {
        let err = HmacKey::from_lookup(
            "AUDIT_CHAIN_HMAC_KEY",
            lookup_from(&[
                ("AUDIT_CHAIN_HMAC_KEY", KEY),
                ("AUDIT_CHAIN_HMAC_KEY_FILE", "/run/secrets/chain"),
            ]),
        )
        .unwrap_err();
        let message = err.to_string();
        assert_eq!(
            message,
            "AUDIT_CHAIN_HMAC_KEY and AUDIT_CHAIN_HMAC_KEY_FILE are both set; set exactly one of them"
        );
        assert!(!message.contains(KEY));
    }

    #[test]
    fn unreadable_key_file_names_variable_and_path() {
        let err = HmacKey::from_lookup(
            "AUDIT_HMAC_KEY",
            lookup_from(&[("AUDIT_HMAC_KEY_FILE", "/nonexistent/control-crypto/key")]),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("AUDIT_HMAC_KEY_FILE: cannot read /nonexistent/control-crypto/key: ")
        );
    }
}
