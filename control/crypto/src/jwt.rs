//! ES256 compact JWS: zone signing keys, signing, and strict parsing and verification.
//!
//! The parser is deliberately narrow: three base64url parts without padding, at most
//! [`MAX_TOKEN_BYTES`], a header that is a JSON object naming `ES256` and carrying no
//! `crit`, and a 64-byte `R‖S` signature. Anything else is a typed error, never a panic.
//! Claims are returned as bytes for the caller to deserialize into its own typed claims.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use p256::{
    EncodedPoint,
    ecdsa::{Signature, SigningKey, VerifyingKey, signature::Signer},
    pkcs8::{DecodePrivateKey, EncodePrivateKey},
};
use zeroize::Zeroizing;

/// The largest compact JWS accepted (wire-contract §3.1: the gateway refuses larger bearers).
pub const MAX_TOKEN_BYTES: usize = 4096;

/// A token could not be parsed, verified or produced. Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// The token is longer than [`MAX_TOKEN_BYTES`].
    #[error("token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    /// Not three dot-separated base64url parts.
    #[error("token is not a compact JWS")]
    Malformed,
    /// The header is not a JSON object with the expected members.
    #[error("token header is invalid")]
    BadHeader,
    /// The header names another algorithm.
    #[error("token algorithm must be ES256")]
    WrongAlgorithm,
    /// The header carries `crit`, which we do not support.
    #[error("token header has unsupported critical extensions")]
    Critical,
    /// The signature does not verify.
    #[error("token signature does not verify")]
    BadSignature,
    /// The claims are not a JSON object.
    #[error("token claims are not a JSON object")]
    BadClaims,
    /// Key material is invalid.
    #[error("signing key is invalid")]
    BadKey,
}

/// The parts of a JWS header we read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtHeader {
    /// `alg` (always `ES256` once parsed).
    pub alg: String,
    /// `kid`, when present.
    pub kid: Option<String>,
}

/// A compact JWS split into its parts, not yet verified.
#[derive(Debug, Clone)]
pub struct UnverifiedJwt<'a> {
    header: JwtHeader,
    signing_input: &'a str,
    claims: Vec<u8>,
    signature: Signature,
}

impl<'a> UnverifiedJwt<'a> {
    /// Splits and decodes `token` without checking the signature.
    pub fn parse(token: &'a str) -> Result<Self, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLarge);
        }
        let (signing_input, signature_b64) = token.rsplit_once('.').ok_or(JwtError::Malformed)?;
        let (header_b64, claims_b64) = signing_input.split_once('.').ok_or(JwtError::Malformed)?;
        if claims_b64.contains('.') {
            return Err(JwtError::Malformed);
        }
        let header_bytes = decode_part(header_b64)?;
        let claims = decode_part(claims_b64)?;
        let signature_bytes = decode_part(signature_b64)?;
        let header = parse_header(&header_bytes)?;
        if !matches!(
            serde_json::from_slice::<serde_json::Value>(&claims),
            Ok(serde_json::Value::Object(_))
        ) {
            return Err(JwtError::BadClaims);
        }
        let signature =
            Signature::from_slice(&signature_bytes).map_err(|_bad| JwtError::BadSignature)?;
        Ok(Self {
            header,
            signing_input,
            claims,
            signature,
        })
    }

    /// The header.
    pub fn header(&self) -> &JwtHeader {
        &self.header
    }

    /// The claims bytes, unverified: use them only to pick a key or for diagnostics.
    pub fn unverified_claims(&self) -> &[u8] {
        &self.claims
    }

    /// Verifies the signature with `key` and returns the claims bytes.
    pub fn verify(self, key: &PublicKey) -> Result<Vec<u8>, JwtError> {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            &key.sec1,
        )
        .verify(
            self.signing_input.as_bytes(),
            self.signature.to_bytes().as_slice(),
        )
        .map_err(|_bad| JwtError::BadSignature)?;
        Ok(self.claims)
    }
}

fn decode_part(part: &str) -> Result<Vec<u8>, JwtError> {
    if part.is_empty() {
        return Err(JwtError::Malformed);
    }
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_bad| JwtError::Malformed)
}

fn parse_header(bytes: &[u8]) -> Result<JwtHeader, JwtError> {
    let serde_json::Value::Object(map) =
        serde_json::from_slice(bytes).map_err(|_bad| JwtError::BadHeader)?
    else {
        return Err(JwtError::BadHeader);
    };
    if map.contains_key("crit") {
        return Err(JwtError::Critical);
    }
    let alg = match map.get("alg") {
        Some(serde_json::Value::String(alg)) => alg.clone(),
        _ => return Err(JwtError::BadHeader),
    };
    if alg != "ES256" {
        return Err(JwtError::WrongAlgorithm);
    }
    let kid = match map.get("kid") {
        None => None,
        Some(serde_json::Value::String(kid)) if !kid.is_empty() => Some(kid.clone()),
        Some(_) => return Err(JwtError::BadHeader),
    };
    Ok(JwtHeader { alg, kid })
}

/// A P-256 public key, as published in the JWKS. Verification runs through `ring`'s
/// constant-time, assembly-backed P-256 (the gateway verifies one signature per request;
/// `p256`'s portable arithmetic costs several times more); parsing, JWK export and
/// signing stay with `p256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    /// The uncompressed SEC1 point (`04 ‖ x ‖ y`), as `ring` takes it.
    sec1: [u8; 65],
}

impl From<VerifyingKey> for PublicKey {
    fn from(key: VerifyingKey) -> Self {
        let point = key.to_encoded_point(false);
        let mut sec1 = [0_u8; 65];
        if point.as_bytes().len() == sec1.len() {
            sec1.copy_from_slice(point.as_bytes());
        }
        Self { key, sec1 }
    }
}

impl PublicKey {
    /// From the JWK coordinates (base64url, 32 bytes each after decoding).
    pub fn from_jwk_coordinates(x: &str, y: &str) -> Result<Self, JwtError> {
        let x = URL_SAFE_NO_PAD.decode(x).map_err(|_bad| JwtError::BadKey)?;
        let y = URL_SAFE_NO_PAD.decode(y).map_err(|_bad| JwtError::BadKey)?;
        if x.len() != 32 || y.len() != 32 {
            return Err(JwtError::BadKey);
        }
        let point =
            EncodedPoint::from_affine_coordinates(x.as_slice().into(), y.as_slice().into(), false);
        VerifyingKey::from_encoded_point(&point)
            .map(Self::from)
            .map_err(|_bad| JwtError::BadKey)
    }

    /// From a JWK JSON object (`kty` EC, `crv` P-256).
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<Self, JwtError> {
        let field = |name: &str| jwk.get(name).and_then(serde_json::Value::as_str);
        if field("kty") != Some("EC") || field("crv") != Some("P-256") {
            return Err(JwtError::BadKey);
        }
        match (field("x"), field("y")) {
            (Some(x), Some(y)) => Self::from_jwk_coordinates(x, y),
            _ => Err(JwtError::BadKey),
        }
    }

    /// The public JWK (`{kty, crv, x, y, kid, alg:"ES256", use:"sig"}`), coordinates
    /// left-padded to 32 bytes.
    pub fn to_jwk(&self, kid: &str) -> serde_json::Value {
        let point = self.key.to_encoded_point(false);
        let x = point
            .x()
            .map(|x| URL_SAFE_NO_PAD.encode(x))
            .unwrap_or_default();
        let y = point
            .y()
            .map(|y| URL_SAFE_NO_PAD.encode(y))
            .unwrap_or_default();
        serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256", "use": "sig"})
    }
}

/// A zone signing key (P-256). `Debug` never shows the private scalar.
#[derive(Clone)]
pub struct ZoneSigningKey(SigningKey);

impl std::fmt::Debug for ZoneSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZoneSigningKey(<redacted>)")
    }
}

impl ZoneSigningKey {
    /// A fresh key from the OS CSPRNG.
    pub fn generate() -> Self {
        Self(SigningKey::random(&mut rand::rngs::OsRng))
    }

    /// From PKCS#8 DER (the sealed plaintext of a `zone_signing_key` row).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, JwtError> {
        SigningKey::from_pkcs8_der(der)
            .map(Self)
            .map_err(|_bad| JwtError::BadKey)
    }

    /// PKCS#8 DER in a zeroizing buffer, for sealing.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, JwtError> {
        self.0
            .to_pkcs8_der()
            .map(|doc| Zeroizing::new(doc.as_bytes().to_vec()))
            .map_err(|_bad| JwtError::BadKey)
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from(*self.0.verifying_key())
    }

    /// Signs `claims` (a serialized JSON object) as a compact JWS with header
    /// `{"alg":"ES256","kid":<kid>,"typ":"JWT"}`.
    pub fn sign_jwt(&self, kid: &str, claims: &[u8]) -> Result<String, JwtError> {
        let header =
            serde_json::to_vec(&serde_json::json!({"alg": "ES256", "kid": kid, "typ": "JWT"}))
                .map_err(|_bad| JwtError::BadHeader)?;
        let mut token = String::with_capacity(claims.len() * 4 / 3 + 160);
        token.push_str(&URL_SAFE_NO_PAD.encode(header));
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims));
        let signature: Signature = self.0.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(key: &ZoneSigningKey) -> String {
        key.sign_jwt("kid-1", br#"{"sub":"app-1","exp":1}"#)
            .unwrap()
    }

    #[test]
    fn signed_token_verifies_with_its_public_key_and_round_trips_through_pkcs8() {
        let key = ZoneSigningKey::generate();
        let again = ZoneSigningKey::from_pkcs8_der(&key.to_pkcs8_der().unwrap()).unwrap();
        let jwt = token(&again);
        let parsed = UnverifiedJwt::parse(&jwt).unwrap();
        assert_eq!(parsed.header().kid.as_deref(), Some("kid-1"));
        let claims = parsed.verify(&key.public_key()).unwrap();
        assert_eq!(claims, br#"{"sub":"app-1","exp":1}"#);
    }

    #[test]
    fn jwk_round_trip_gives_the_same_key() {
        let key = ZoneSigningKey::generate();
        let jwk = key.public_key().to_jwk("k");
        assert_eq!(jwk["alg"], "ES256");
        assert_eq!(
            jwk["x"].as_str().unwrap().len(),
            43,
            "32 bytes, unpadded base64url"
        );
        assert_eq!(PublicKey::from_jwk(&jwk).unwrap(), key.public_key());
    }

    #[test]
    fn another_key_or_a_changed_payload_fails() {
        let key = ZoneSigningKey::generate();
        let jwt = token(&key);
        let other = ZoneSigningKey::generate();
        assert_eq!(
            UnverifiedJwt::parse(&jwt)
                .unwrap()
                .verify(&other.public_key()),
            Err(JwtError::BadSignature)
        );
        let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(br#"{"sub":"app-2","exp":1}"#);
        let forged = parts.join(".");
        assert_eq!(
            UnverifiedJwt::parse(&forged)
                .unwrap()
                .verify(&key.public_key()),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn malformed_tokens_are_typed_errors() {
        let key = ZoneSigningKey::generate();
        let good = token(&key);
        let (h, rest) = good.split_once('.').unwrap();
        let (c, s) = rest.split_once('.').unwrap();
        let enc = |v: &str| URL_SAFE_NO_PAD.encode(v);
        let cases: Vec<(String, JwtError)> = vec![
            ("".into(), JwtError::Malformed),
            ("a.b".into(), JwtError::Malformed),
            (format!("{h}.{c}.{s}.x"), JwtError::Malformed),
            (format!("{h}.{c}="), JwtError::Malformed),
            (format!("{h}..{s}"), JwtError::Malformed),
            (
                format!("{}.{c}.{s}", enc(r#"{"alg":"none"}"#)),
                JwtError::WrongAlgorithm,
            ),
            (
                format!("{}.{c}.{s}", enc(r#"{"alg":"HS256"}"#)),
                JwtError::WrongAlgorithm,
            ),
            (
                format!("{}.{c}.{s}", enc(r#"{"alg":"ES256","crit":["x"]}"#)),
                JwtError::Critical,
            ),
            (
                format!("{}.{c}.{s}", enc(r#"["ES256"]"#)),
                JwtError::BadHeader,
            ),
            (
                format!("{}.{c}.{s}", enc(r#"{"alg":"ES256","kid":7}"#)),
                JwtError::BadHeader,
            ),
            (format!("{h}.{}.{s}", enc("[1]")), JwtError::BadClaims),
            (format!("{h}.{c}.{}", enc("short")), JwtError::BadSignature),
            ("x".repeat(MAX_TOKEN_BYTES + 1), JwtError::TooLarge),
        ];
        for (input, expected) in cases {
            assert_eq!(
                UnverifiedJwt::parse(&input).err(),
                Some(expected),
                "{input:.60}"
            );
        }
    }

    #[test]
    fn bad_jwk_coordinates_are_rejected() {
        assert_eq!(
            PublicKey::from_jwk_coordinates("AA", "AA"),
            Err(JwtError::BadKey)
        );
        let off_curve = URL_SAFE_NO_PAD.encode([1u8; 32]);
        assert_eq!(
            PublicKey::from_jwk_coordinates(&off_curve, &off_curve),
            Err(JwtError::BadKey)
        );
        assert!(PublicKey::from_jwk(&serde_json::json!({"kty": "RSA"})).is_err());
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        assert_eq!(
            format!("{:?}", ZoneSigningKey::generate()),
            "ZoneSigningKey(<redacted>)"
        );
    }
}
