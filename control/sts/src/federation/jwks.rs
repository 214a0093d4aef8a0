//! Subject issuers' key sets: fetched over HTTPS (rustls, webpki roots), cached per URL.
//!
//! Every fetch has a 5 s deadline (connect included) and reads at most 256 KiB. Plain
//! http is allowed only to loopback hosts, or everywhere with
//! `CARACAL_ALLOW_INSECURE_CONFIG_URLS=true` (the client libraries' rule). Redirects are not
//! followed. A parsed set is cached for 5 minutes; a token naming an unknown `kid` may force
//! a refetch, at most once per 30 s per URL, so a flood of bogus `kid`s cannot turn the STS
//! into a load generator against the issuer.

use std::{sync::Arc, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use rsa::traits::PublicKeyParts as _;
use serde_json::Value;

/// Deadline of one fetch, connect and body included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key-set document read.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// How long a fetched key set is trusted.
const CACHE_TTL: Duration = Duration::from_secs(300);
/// The shortest interval between two fetches of one URL forced by an unknown `kid`.
const REFETCH_COOLDOWN: Duration = Duration::from_secs(30);
/// Key sets kept at most (one per issuer URL).
const MAX_CACHED_SETS: u64 = 1_000;
/// Keys read from one document at most.
const MAX_KEYS: usize = 100;
/// The smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_BYTES: usize = 256;

/// A verification key from an issuer's key set.
#[derive(Debug, Clone)]
pub(crate) enum VerifyKey {
    /// `kty: RSA` (RS256).
    Rsa(rsa::RsaPublicKey),
    /// `kty: EC`, `crv: P-256` (ES256).
    P256(p256::ecdsa::VerifyingKey),
}

/// One usable key.
#[derive(Debug, Clone)]
pub(crate) struct Jwk {
    pub(crate) kid: String,
    /// The key's `alg`, when the document names one.
    pub(crate) alg: Option<String>,
    pub(crate) key: VerifyKey,
}

/// The usable keys of one document.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    keys: Vec<Jwk>,
}

impl KeySet {
    /// The key with this `kid`.
    pub(crate) fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// Parses an RFC 7517 document. Keys without a `kid`, for another `use`, of another
    /// type or curve, or malformed are skipped; a document without a usable key is refused.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, JwksError> {
        let document: Value = serde_json::from_slice(body)
            .map_err(|e| JwksError::Document(format!("not JSON: {e}")))?;
        let Some(entries) = document.get("keys").and_then(Value::as_array) else {
            return Err(JwksError::Document("no keys array".to_owned()));
        };
        let keys: Vec<Jwk> = entries
            .iter()
            .take(MAX_KEYS)
            .filter_map(parse_jwk)
            .collect();
        if keys.is_empty() {
            return Err(JwksError::Document("no usable signing key".to_owned()));
        }
        Ok(Self { keys })
    }
}

fn parse_jwk(entry: &Value) -> Option<Jwk> {
    let field = |name: &str| entry.get(name).and_then(Value::as_str);
    let kid = field("kid").filter(|k| !k.is_empty())?.to_owned();
    if field("use").is_some_and(|u| u != "sig") {
        return None;
    }
    let b64 =
        |name: &str| field(name).and_then(|v| URL_SAFE_NO_PAD.decode(v.trim_end_matches('=')).ok());
    let key = match field("kty")? {
        "RSA" => {
            let n = rsa::BigUint::from_bytes_be(&b64("n")?);
            let e = rsa::BigUint::from_bytes_be(&b64("e")?);
            let key = rsa::RsaPublicKey::new(n, e).ok()?;
            if key.size() < MIN_RSA_BYTES {
                return None;
            }
            VerifyKey::Rsa(key)
        }
        "EC" if field("crv") == Some("P-256") => {
            let (x, y) = (b64("x")?, b64("y")?);
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            let point = p256::EncodedPoint::from_affine_coordinates(
                x.as_slice().into(),
                y.as_slice().into(),
                false,
            );
            VerifyKey::P256(p256::ecdsa::VerifyingKey::from_encoded_point(&point).ok()?)
        }
        _ => return None,
    };
    Some(Jwk {
        kid,
        alg: field("alg").map(str::to_owned),
        key,
    })
}

/// A key set could not be obtained. The detail goes to the log, never to the client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwksError {
    /// The URL is not https (nor loopback http, nor allowed by the insecure override).
    #[error("jwks_url is not an allowed URL")]
    UrlNotAllowed,
    /// Connection, TLS, timeout or transport failure.
    #[error("fetch failed: {0}")]
    Fetch(String),
    /// A status other than 200.
    #[error("fetch answered {0}")]
    Status(u16),
    /// Larger than 256 KiB.
    #[error("document larger than 256 KiB")]
    TooLarge,
    /// Not a key set with a usable key.
    #[error("document rejected: {0}")]
    Document(String),
}

/// The fetcher and its caches.
pub(crate) struct Jwks {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    allow_insecure: bool,
    sets: moka::future::Cache<String, Arc<KeySet>>,
    /// URLs fetched within the last 30 s.
    recent: moka::sync::Cache<String, ()>,
}

impl Jwks {
    /// Builds the HTTPS client (ring provider, webpki roots, HTTP/1.1).
    pub(crate) fn new(allow_insecure: bool) -> Result<Self, rustls::Error> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(FETCH_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(connector);
        Ok(Self {
            client,
            allow_insecure,
            sets: moka::future::Cache::builder()
                .max_capacity(MAX_CACHED_SETS)
                .time_to_live(CACHE_TTL)
                .build(),
            recent: moka::sync::Cache::builder()
                .max_capacity(MAX_CACHED_SETS)
                .time_to_live(REFETCH_COOLDOWN)
                .build(),
        })
    }

    /// The key set at `url`, from the cache or fetched (concurrent misses share one fetch).
    pub(crate) async fn key_set(&self, url: &str) -> Result<Arc<KeySet>, Arc<JwksError>> {
        self.sets
            .try_get_with(url.to_owned(), async {
                self.fetch(url).await.map(Arc::new)
            })
            .await
    }

    /// Refetches after an unknown `kid`, unless `url` was fetched in the last 30 s
    /// (`Ok(None)`).
    pub(crate) async fn refetch(&self, url: &str) -> Result<Option<Arc<KeySet>>, Arc<JwksError>> {
        if self.recent.contains_key(url) {
            return Ok(None);
        }
        self.sets.invalidate(url).await;
        self.key_set(url).await.map(Some)
    }

    async fn fetch(&self, url: &str) -> Result<KeySet, JwksError> {
        let uri: http::Uri = url.parse().map_err(|_bad| JwksError::UrlNotAllowed)?;
        if !allowed(&uri, self.allow_insecure) {
            return Err(JwksError::UrlNotAllowed);
        }
        self.recent.insert(url.to_owned(), ());
        let request = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| JwksError::Fetch(e.to_string()))?;
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| JwksError::Fetch(e.to_string()))?;
            let status = response.status().as_u16();
            if status != 200 {
                return Err(JwksError::Status(status));
            }
            Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        JwksError::TooLarge
                    } else {
                        JwksError::Fetch(e.to_string())
                    }
                })
        })
        .await
        .map_err(|_elapsed| JwksError::Fetch("timed out after 5 s".to_owned()))??;
        KeySet::parse(&fetched)
    }
}

/// https anywhere; http only to a loopback host, unless the insecure override is set.
fn allowed(uri: &http::Uri, allow_insecure: bool) -> bool {
    let Some(authority) = uri.authority() else {
        return false;
    };
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return false;
    }
    match uri.scheme_str() {
        Some("https") => true,
        Some("http") => allow_insecure || is_loopback(authority.host()),
        _ => false,
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> http::Uri {
        s.parse().unwrap()
    }

    #[test]
    fn https_is_allowed_and_http_only_to_loopback_or_with_the_override() {
        assert!(allowed(&uri("https://issuer.example/jwks"), false));
        assert!(allowed(&uri("http://127.0.0.1:8080/jwks.json"), false));
        assert!(allowed(&uri("http://127.5.0.1/jwks.json"), false));
        assert!(allowed(&uri("http://localhost/jwks.json"), false));
        assert!(allowed(&uri("http://[::1]:80/jwks.json"), false));
        assert!(!allowed(&uri("http://issuer.example/jwks"), false));
        assert!(!allowed(&uri("http://10.0.0.1/jwks"), false));
        assert!(allowed(&uri("http://issuer.example/jwks"), true));
        assert!(!allowed(&uri("ftp://issuer.example/jwks"), true));
        assert!(!allowed(&uri("/jwks"), true));
        assert!(!allowed(&uri("http://user@127.0.0.1/jwks"), false));
    }

    #[test]
    fn a_key_set_keeps_usable_signing_keys_only() {
        let ec = control_crypto::ZoneSigningKey::generate()
            .public_key()
            .to_jwk("ec-1");
        let body = serde_json::json!({"keys": [
            ec,
            {"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "small", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc", "x": ec["x"], "y": ec["y"]},
            {"kty": "EC", "crv": "P-256", "x": ec["x"], "y": ec["y"]}
        ]});
        let set = KeySet::parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert!(set.find("ec-1").is_some());
        assert!(set.find("enc").is_none());
        assert!(matches!(
            KeySet::parse(br#"{"keys":[{"kty":"oct","kid":"x","k":"AA"}]}"#),
            Err(JwksError::Document(_))
        ));
        assert!(matches!(
            KeySet::parse(b"<html>"),
            Err(JwksError::Document(_))
        ));
    }
}
