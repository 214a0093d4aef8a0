//! Argon2id hashing and verification of application secrets and admin tokens
//! (`storage-and-events.md` §10.5).
//!
//! New hashes are PHC strings (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) and
//! are verified with the parameters they carry. Upstream's
//! `argon2id$<salt b64>$<hash b64>` form (t=3, m=65536 KiB, p=2) is accepted
//! for imported data.

use argon2::password_hash::{PasswordHash, PasswordVerifier, SaltString};
use argon2::{ARGON2ID_IDENT, Algorithm, Argon2, PasswordHasher, Version};

use crate::compare::ct_eq;
use crate::random::{RandomError, fill_random};

/// Variable overriding [`Argon2Params::m_kib`].
pub const ARGON2_M_KIB_VAR: &str = "CARACAL_ARGON2_M_KIB";
/// Variable overriding [`Argon2Params::t`].
pub const ARGON2_T_VAR: &str = "CARACAL_ARGON2_T";
/// Variable overriding [`Argon2Params::p`].
pub const ARGON2_P_VAR: &str = "CARACAL_ARGON2_P";

/// Largest memory cost accepted, in KiB (1 GiB), for new hashes and for
/// stored hashes alike: a corrupt or hostile stored hash must not make a
/// verification allocate without bound.
pub const MAX_M_KIB: u32 = 1024 * 1024;
/// Largest time cost accepted.
pub const MAX_T: u32 = 64;

const SALT_LEN: usize = 16;
const OUTPUT_LEN: usize = 32;
const LEGACY_PREFIX: &str = "argon2id$";
const MIN_LEGACY_SALT_LEN: usize = 8;
const MIN_LEGACY_HASH_LEN: usize = 16;
const MAX_LEGACY_HASH_LEN: usize = 64;

/// Argon2id cost parameters. The default is m=19456 KiB, t=2, p=1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory cost in KiB.
    pub m_kib: u32,
    /// Time cost (passes).
    pub t: u32,
    /// Parallelism (lanes).
    pub p: u32,
}

impl Default for Argon2Params {
    fn default() -> Self {
        Self {
            m_kib: 19_456,
            t: 2,
            p: 1,
        }
    }
}

impl Argon2Params {
    /// The parameters of upstream's `argon2id$<salt>$<hash>` form.
    pub const LEGACY: Self = Self {
        m_kib: 65_536,
        t: 3,
        p: 2,
    };

    /// Reads `CARACAL_ARGON2_M_KIB`, `CARACAL_ARGON2_T` and
    /// `CARACAL_ARGON2_P` through `lookup`, keeping the default for each one
    /// unset or empty, and validates the result.
    ///
    /// # Errors
    ///
    /// [`PasswordError::BadParamVar`] for a value that is not a positive
    /// integer; [`PasswordError::InvalidParams`] for a combination Argon2
    /// rejects or one above [`MAX_M_KIB`] / [`MAX_T`].
    pub fn from_lookup<F>(lookup: F) -> Result<Self, PasswordError>
    where
        F: Fn(&str) -> Option<String>,
    {
        let read = |var: &'static str, default: u32| -> Result<u32, PasswordError> {
            match lookup(var).as_deref().map(str::trim) {
                None | Some("") => Ok(default),
                Some(text) => text
                    .parse::<u32>()
                    .ok()
                    .filter(|value| *value > 0)
                    .ok_or(PasswordError::BadParamVar { var }),
            }
        };
        let defaults = Self::default();
        let params = Self {
            m_kib: read(ARGON2_M_KIB_VAR, defaults.m_kib)?,
            t: read(ARGON2_T_VAR, defaults.t)?,
            p: read(ARGON2_P_VAR, defaults.p)?,
        };
        params.validate()?;
        Ok(params)
    }

    /// Checks that Argon2 accepts these parameters and that they are within
    /// [`MAX_M_KIB`] and [`MAX_T`].
    ///
    /// # Errors
    ///
    /// [`PasswordError::InvalidParams`].
    pub fn validate(&self) -> Result<(), PasswordError> {
        self.to_argon2(OUTPUT_LEN).map(|_| ())
    }

    fn to_argon2(self, output_len: usize) -> Result<argon2::Params, PasswordError> {
        let invalid = |reason: String| PasswordError::InvalidParams {
            m_kib: self.m_kib,
            t: self.t,
            p: self.p,
            reason,
        };
        if self.m_kib > MAX_M_KIB || self.t > MAX_T {
            return Err(invalid(format!(
                "above the limit of m={MAX_M_KIB} KiB, t={MAX_T}"
            )));
        }
        argon2::Params::new(self.m_kib, self.t, self.p, Some(output_len))
            .map_err(|err| invalid(err.to_string()))
    }
}

/// A secret could not be hashed, or a stored hash could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    /// Argon2 rejects the parameters, or they exceed the limits.
    #[error("invalid Argon2id parameters m={m_kib} KiB, t={t}, p={p}: {reason}")]
    InvalidParams {
        /// Memory cost in KiB.
        m_kib: u32,
        /// Time cost.
        t: u32,
        /// Parallelism.
        p: u32,
        /// Why.
        reason: String,
    },
    /// A `CARACAL_ARGON2_*` variable is not a positive integer.
    #[error("{var}: expected a positive integer")]
    BadParamVar {
        /// The variable.
        var: &'static str,
    },
    /// The stored hash is neither a valid Argon2id PHC string nor upstream's
    /// legacy form.
    #[error("stored secret hash is malformed: {reason}")]
    MalformedHash {
        /// What is wrong with it (never the hash itself).
        reason: String,
    },
    /// The stored hash is a PHC string for another algorithm.
    #[error("stored secret hash uses {algorithm}, expected argon2id")]
    UnsupportedAlgorithm {
        /// The algorithm identifier found.
        algorithm: String,
    },
    /// Argon2 failed while hashing.
    #[error("Argon2id hashing failed: {reason}")]
    HashFailed {
        /// Why.
        reason: String,
    },
    /// No salt could be drawn from the operating system's CSPRNG.
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// Hashes `secret` with Argon2id under `params` and a fresh 16-byte salt,
/// returning a PHC string.
///
/// # Errors
///
/// [`PasswordError::InvalidParams`], [`PasswordError::Random`],
/// [`PasswordError::HashFailed`].
pub fn hash_secret(params: &Argon2Params, secret: &[u8]) -> Result<String, PasswordError> {
    let argon2 = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        params.to_argon2(OUTPUT_LEN)?,
    );
    let mut salt = [0_u8; SALT_LEN];
    fill_random(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).map_err(|err| PasswordError::HashFailed {
        reason: err.to_string(),
    })?;
    argon2
        .hash_password(secret, &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| PasswordError::HashFailed {
            reason: err.to_string(),
        })
}

/// Verifies `secret` against a stored hash: an Argon2id PHC string (with the
/// parameters it carries) or upstream's `argon2id$<salt b64>$<hash b64>`
/// form. The final comparison is constant-time.
///
/// Returns `Ok(false)` only for a well-formed hash that does not match.
///
/// # Errors
///
/// [`PasswordError::MalformedHash`] for a stored value that is not a usable
/// hash (including parameters above the limits);
/// [`PasswordError::UnsupportedAlgorithm`] for a PHC string of another algorithm.
pub fn verify_secret(secret: &[u8], stored: &str) -> Result<bool, PasswordError> {
    if let Some(legacy) = stored.strip_prefix(LEGACY_PREFIX) {
        return verify_legacy(secret, legacy);
    }
    let malformed = |reason: String| PasswordError::MalformedHash { reason };
    let hash = PasswordHash::new(stored).map_err(|err| malformed(err.to_string()))?;
    if hash.algorithm != ARGON2ID_IDENT {
        return Err(PasswordError::UnsupportedAlgorithm {
            algorithm: hash.algorithm.as_str().to_owned(),
        });
    }
    let Some(output) = hash.hash else {
        return Err(malformed("no hash value".to_owned()));
    };
    if hash.salt.is_none() {
        return Err(malformed("no salt".to_owned()));
    }
    let params = argon2::Params::try_from(&hash).map_err(|err| malformed(err.to_string()))?;
    let limits = Argon2Params {
        m_kib: params.m_cost(),
        t: params.t_cost(),
        p: params.p_cost(),
    };
    limits
        .to_argon2(output.len())
        .map_err(|err| malformed(err.to_string()))?;
    match Argon2::default().verify_password(secret, &hash) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(err) => Err(malformed(err.to_string())),
    }
}

/// Spends one Argon2id derivation under `params` and discards it, so that a
/// lookup of an unknown id takes as long as a real verification.
pub fn dummy_verify(params: &Argon2Params) {
    let params = params
        .to_argon2(OUTPUT_LEN)
        .or_else(|_| Argon2Params::default().to_argon2(OUTPUT_LEN));
    if let Ok(params) = params {
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut out = [0_u8; OUTPUT_LEN];
        let derived = argon2.hash_password_into(b"caracal.dummy", &[0x5a; SALT_LEN], &mut out);
        std::hint::black_box((derived.is_ok(), out));
    }
}

fn verify_legacy(secret: &[u8], encoded: &str) -> Result<bool, PasswordError> {
    let malformed = |reason: &str| PasswordError::MalformedHash {
        reason: format!("legacy argon2id form: {reason}"),
    };
    let mut parts = encoded.split('$');
    let (Some(salt), Some(expected), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(malformed("expected argon2id$<salt>$<hash>"));
    };
    let salt = decode_base64(salt).ok_or_else(|| malformed("salt is not base64"))?;
    let expected = decode_base64(expected).ok_or_else(|| malformed("hash is not base64"))?;
    if salt.len() < MIN_LEGACY_SALT_LEN {
        return Err(malformed("salt shorter than 8 bytes"));
    }
    if !(MIN_LEGACY_HASH_LEN..=MAX_LEGACY_HASH_LEN).contains(&expected.len()) {
        return Err(malformed("hash is not 16 to 64 bytes long"));
    }
    let params = Argon2Params::LEGACY
        .to_argon2(expected.len())
        .map_err(|err| malformed(&err.to_string()))?;
    let mut computed = zeroize::Zeroizing::new(vec![0_u8; expected.len()]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(secret, &salt, &mut computed)
        .map_err(|err| malformed(&err.to_string()))?;
    Ok(ct_eq(&computed, &expected))
}

/// Decodes base64 in the standard or URL-safe alphabet, with or without `=`
/// padding (upstream's exact variant is not documented).
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let unpadded = text.trim_end_matches('=');
    if unpadded.is_empty() || unpadded.len() % 4 == 1 || text.len() - unpadded.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(unpadded.len() * 3 / 4);
    let mut buffer: u32 = 0;
    let mut bits: u32 = 0;
    for byte in unpadded.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buffer >> bits) & 0xff).ok()?);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests;
