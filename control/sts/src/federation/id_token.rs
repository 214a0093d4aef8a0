//! External id_tokens (wire-contract §2.4 D): strict compact-JWS parsing, RS256 and ES256
//! signature checks, the issuer's claims, and the rules for an external `sub`.
//!
//! Pure: no I/O, no clock (the caller passes the trusted time). Every failure is a
//! [`Rejection`] whose text is the client-visible cause; it never quotes the token.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Map, Value};

use super::jwks::{Jwk, VerifyKey};

/// The largest id_token accepted (the form itself is at most 64 KiB).
pub(crate) const MAX_ID_TOKEN_BYTES: usize = 32 * 1024;
/// Leeway on `exp`, `nbf` and `iat`.
pub(crate) const LEEWAY_SECONDS: f64 = 60.0;
/// The longest external subject identifier.
pub(crate) const MAX_SUB_BYTES: usize = 512;

/// Why an id_token was refused. `Display` is the cause after "invalid subject_token: ".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Rejection {
    #[error("token is too large")]
    TooLarge,
    #[error("malformed token")]
    Malformed,
    #[error("unsupported algorithm")]
    UnsupportedAlgorithm,
    #[error("unsupported critical header")]
    Critical,
    #[error("missing kid")]
    MissingKid,
    #[error("missing iss")]
    MissingIssuer,
    #[error("issuer is not trusted by this zone")]
    UntrustedIssuer,
    #[error("issuer keys unavailable")]
    KeysUnavailable,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("signing key does not match the token algorithm")]
    KeyMismatch,
    #[error("signature does not verify")]
    BadSignature,
    #[error("audience mismatch")]
    Audience,
    #[error("missing exp")]
    MissingExpiry,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("missing sub")]
    MissingSub,
    #[error("sub exceeds 512 bytes")]
    SubTooLong,
    #[error("sub must not start with caracal:")]
    SubReservedPrefix,
    #[error("sub has leading or trailing whitespace")]
    SubWhitespace,
    #[error("sub contains control characters")]
    SubControl,
    #[error("sub contains bidirectional control characters")]
    SubBidi,
    #[error("sub contains the replacement character")]
    SubReplacement,
}

/// The accepted algorithms. Symmetric ones (`HS*`) and `none` are refused outright: a
/// shared secret proves nothing about the issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alg {
    Rs256,
    Es256,
}

/// A compact JWS split and decoded, not yet verified.
#[derive(Debug)]
pub(crate) struct IdToken<'a> {
    pub(crate) alg: Alg,
    pub(crate) kid: String,
    signing_input: &'a str,
    signature: Vec<u8>,
    pub(crate) claims: Map<String, Value>,
}

fn decode(part: &str) -> Result<Vec<u8>, Rejection> {
    if part.is_empty() {
        return Err(Rejection::Malformed);
    }
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_bad| Rejection::Malformed)
}

/// Splits and decodes `token`; checks the header (algorithm, `crit`, `kid`).
pub(crate) fn parse(token: &str) -> Result<IdToken<'_>, Rejection> {
    if token.len() > MAX_ID_TOKEN_BYTES {
        return Err(Rejection::TooLarge);
    }
    let (signing_input, signature_b64) = token.rsplit_once('.').ok_or(Rejection::Malformed)?;
    let (header_b64, claims_b64) = signing_input.split_once('.').ok_or(Rejection::Malformed)?;
    if claims_b64.contains('.') {
        return Err(Rejection::Malformed);
    }
    let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&decode(header_b64)?) else {
        return Err(Rejection::Malformed);
    };
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("RS256") => Alg::Rs256,
        Some("ES256") => Alg::Es256,
        Some(_) => return Err(Rejection::UnsupportedAlgorithm),
        None => return Err(Rejection::Malformed),
    };
    if header.contains_key("crit") {
        return Err(Rejection::Critical);
    }
    let kid = match header.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() => kid.clone(),
        _ => return Err(Rejection::MissingKid),
    };
    let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(&decode(claims_b64)?) else {
        return Err(Rejection::Malformed);
    };
    // An empty signature part is malformed (this also covers `alg:none` with a kid).
    let signature = decode(signature_b64)?;
    Ok(IdToken {
        alg,
        kid,
        signing_input,
        signature,
        claims,
    })
}

impl IdToken<'_> {
    /// The unverified `iss`, to find the zone's subject issuer.
    pub(crate) fn issuer(&self) -> Result<&str, Rejection> {
        self.claims
            .get("iss")
            .and_then(Value::as_str)
            .filter(|iss| !iss.is_empty())
            .ok_or(Rejection::MissingIssuer)
    }

    /// Checks the signature with the key the header's `kid` named.
    pub(crate) fn verify(&self, jwk: &Jwk) -> Result<(), Rejection> {
        if jwk.alg.as_deref().is_some_and(|alg| {
            alg != match self.alg {
                Alg::Rs256 => "RS256",
                Alg::Es256 => "ES256",
            }
        }) {
            return Err(Rejection::KeyMismatch);
        }
        let message = self.signing_input.as_bytes();
        match (&jwk.key, self.alg) {
            (VerifyKey::Rsa(key), Alg::Rs256) => {
                use rsa::signature::Verifier as _;
                let signature = rsa::pkcs1v15::Signature::try_from(self.signature.as_slice())
                    .map_err(|_bad| Rejection::BadSignature)?;
                rsa::pkcs1v15::VerifyingKey::<rsa::sha2::Sha256>::new(key.clone())
                    .verify(message, &signature)
                    .map_err(|_bad| Rejection::BadSignature)
            }
            (VerifyKey::P256(key), Alg::Es256) => {
                use p256::ecdsa::signature::Verifier as _;
                let signature = p256::ecdsa::Signature::from_slice(&self.signature)
                    .map_err(|_bad| Rejection::BadSignature)?;
                key.verify(message, &signature)
                    .map_err(|_bad| Rejection::BadSignature)
            }
            _ => Err(Rejection::KeyMismatch),
        }
    }

    /// After the signature: audience, expiry, not-before and issue time (60 s leeway),
    /// then the external `sub`, which is returned byte-exact.
    pub(crate) fn check_claims(&self, audience: Option<&str>, now: i64) -> Result<&str, Rejection> {
        if let Some(audience) = audience.filter(|a| !a.is_empty()) {
            let listed = match self.claims.get("aud") {
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(aud)) => aud.iter().any(|a| a.as_str() == Some(audience)),
                _ => false,
            };
            if !listed {
                return Err(Rejection::Audience);
            }
        }
        // Precision loss on 2^53+ timestamps is irrelevant for these comparisons.
        #[expect(
            clippy::cast_precision_loss,
            reason = "unix seconds fit an f64 exactly"
        )]
        let now = now as f64;
        let time = |name: &str| -> Result<Option<f64>, Rejection> {
            match self.claims.get(name) {
                None => Ok(None),
                Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(Rejection::Malformed),
                Some(_) => Err(Rejection::Malformed),
            }
        };
        let exp = time("exp")?.ok_or(Rejection::MissingExpiry)?;
        if exp + LEEWAY_SECONDS <= now {
            return Err(Rejection::Expired);
        }
        if time("nbf")?.is_some_and(|nbf| nbf - LEEWAY_SECONDS > now) {
            return Err(Rejection::NotYetValid);
        }
        if time("iat")?.is_some_and(|iat| iat - LEEWAY_SECONDS > now) {
            return Err(Rejection::IssuedInFuture);
        }
        let sub = match self.claims.get("sub") {
            Some(Value::String(sub)) => sub.as_str(),
            _ => return Err(Rejection::MissingSub),
        };
        check_sub(sub)?;
        Ok(sub)
    }
}

/// The rules for an external subject identifier: 1–512 bytes of UTF-8 (a `&str` already
/// is), no `caracal:` prefix, no control, bidi-override or replacement characters, no
/// leading or trailing whitespace. Nothing is trimmed or normalised: the value is stored
/// and compared byte for byte.
pub(crate) fn check_sub(sub: &str) -> Result<(), Rejection> {
    if sub.is_empty() {
        return Err(Rejection::MissingSub);
    }
    if sub.len() > MAX_SUB_BYTES {
        return Err(Rejection::SubTooLong);
    }
    if sub.starts_with("caracal:") {
        return Err(Rejection::SubReservedPrefix);
    }
    if sub.trim() != sub {
        return Err(Rejection::SubWhitespace);
    }
    for c in sub.chars() {
        if c.is_control() {
            return Err(Rejection::SubControl);
        }
        if matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}') {
            return Err(Rejection::SubBidi);
        }
        if c == char::REPLACEMENT_CHARACTER {
            return Err(Rejection::SubReplacement);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
