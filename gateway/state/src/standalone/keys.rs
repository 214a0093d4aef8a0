//! Key material of a standalone zone: public JWK / JWKS documents (files and `jwks_url`),
//! the PKCS#8 signing key, and the client that fetches JWKS URLs.

use std::{collections::HashMap, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use control_crypto::{PublicKey, ZoneSigningKey};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// The largest JWKS document accepted from a `jwks_url`.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Deadline of one JWKS fetch (connect, headers and body).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

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

/// A fetched JWKS: its EC P-256 keys with a `kid`; other keys (another algorithm, no
/// `kid`) are skipped, as a JWKS may publish keys for other uses.
pub(super) fn fetched_jwks(bytes: &[u8]) -> Result<HashMap<String, PublicKey>, String> {
    let document: Value = serde_json::from_slice(bytes)
        .map_err(|_not_json| "the response is not a JSON document".to_owned())?;
    let Some(Value::Array(keys)) = document.get("keys") else {
        return Err("the response has no keys array".to_owned());
    };
    Ok(keys.iter().filter_map(|jwk| public_jwk(jwk).ok()).collect())
}

/// One public JWK with its `kid`.
fn public_jwk(jwk: &Value) -> Result<(String, PublicKey), String> {
    if !jwk.is_object() {
        return Err("is not a JSON object".to_owned());
    }
    if jwk.get("d").is_some() {
        // A private key where a public one belongs: refused without repeating it.
        return Err("holds a private key (member d); configure the public key only".to_owned());
    }
    let kid = jwk
        .get("kid")
        .and_then(Value::as_str)
        .filter(|kid| !kid.is_empty())
        .ok_or_else(|| "has no kid".to_owned())?;
    if jwk
        .get("alg")
        .and_then(Value::as_str)
        .is_some_and(|alg| alg != "ES256")
    {
        return Err(format!("kid {kid}: alg must be ES256"));
    }
    let key = PublicKey::from_jwk(jwk)
        .map_err(|_bad| format!("kid {kid}: is not an EC P-256 public key"))?;
    Ok((kid.to_owned(), key))
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

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Fetches JWKS documents over HTTP/1.1 or TLS (webpki roots).
pub(super) struct JwksClient {
    client: Client<Connector, Empty<Bytes>>,
}

impl JwksClient {
    pub(super) fn new() -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(FETCH_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build(https),
        }
    }

    /// The EC P-256 keys `url` publishes. The reason of a failure never holds the body.
    pub(super) async fn fetch(&self, url: &url::Url) -> Result<HashMap<String, PublicKey>, String> {
        let request = http::Request::get(url.as_str())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let round = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            if !response.status().is_success() {
                return Err(format!("answered {}", response.status().as_u16()));
            }
            let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            fetched_jwks(&body)
        };
        tokio::time::timeout(FETCH_TIMEOUT, round)
            .await
            .map_err(|_elapsed| format!("no answer within {} s", FETCH_TIMEOUT.as_secs()))?
    }
}
