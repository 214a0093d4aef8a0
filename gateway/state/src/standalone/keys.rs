//! Key material of a standalone zone: public JWK / JWKS files and the PKCS#8 signing key.
//! Key sets behind a `jwks_url` are fetched with `control_http::jwks::JwksClient`.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use control_crypto::{PublicKey, ZoneSigningKey};
use control_http::jwks::public_jwk;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// The keys of a key file: one public JWK with a `kid`, or a JWKS `{"keys": [...]}`. Every
/// key must be an EC P-256 public key with a `kid`.
pub(super) fn key_document(bytes: &[u8]) -> Result<Vec<(String, PublicKey)>, String> {
    let document: Value = serde_json::from_slice(bytes)
        .map_err(|_not_json| "is not a JSON JWK or JWKS document".to_owned())?;
    let entries: Vec<&Value> = match document.get("keys") {
        Some(Value::Array(keys)) => keys.iter().collect(),
        Some(_) => return Err("keys is not an array".to_owned()),
        None => vec![&document],
    };
    if entries.is_empty() {
        return Err("holds no key".to_owned());
    }
    entries
        .into_iter()
        .enumerate()
        .map(|(index, jwk)| {
            public_jwk(jwk).map_err(|reason| format!("key #{}: {reason}", index + 1))
        })
        .collect()
}

/// A P-256 private key from PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) or DER.
pub(super) fn signing_key(bytes: &[u8]) -> Result<ZoneSigningKey, String> {
    let der: Zeroizing<Vec<u8>> = if bytes.starts_with(b"-----BEGIN") {
        let text = std::str::from_utf8(bytes).map_err(|_not_utf8| "is not PEM".to_owned())?;
        let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
        match lines.next() {
            Some("-----BEGIN PRIVATE KEY-----") => {}
            Some("-----BEGIN EC PRIVATE KEY-----") => {
                return Err("is a SEC1 key (EC PRIVATE KEY); convert it to PKCS#8 with \
                            `openssl pkcs8 -topk8 -nocrypt`"
                    .to_owned());
            }
            _ => return Err("is not a PKCS#8 PEM (BEGIN PRIVATE KEY)".to_owned()),
        }
        let body: Zeroizing<String> = Zeroizing::new(
            lines
                .take_while(|line| !line.starts_with("-----END"))
                .collect(),
        );
        Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(body.as_bytes())
                .map_err(|_bad| "the PEM body is not base64".to_owned())?,
        )
    } else {
        Zeroizing::new(bytes.to_vec())
    };
    ZoneSigningKey::from_pkcs8_der(&der)
        .map_err(|_bad| "is not a P-256 PKCS#8 private key".to_owned())
}

/// The RFC 7638 thumbprint of a P-256 key (the default `kid` of a signing key).
pub(super) fn thumbprint(key: &PublicKey) -> String {
    let jwk = key.to_jwk("");
    let member = |name: &str| jwk.get(name).and_then(Value::as_str).unwrap_or_default();
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        member("x"),
        member("y")
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}
