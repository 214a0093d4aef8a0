//! JSON Web Key Sets: parsing public EC P-256 keys (RFC 7517) and fetching a key set over
//! HTTP(S) with a deadline and a size limit. Shared by the gateway (standalone `jwks_url`)
//! and the Coordinator (the STS key set of a zone).

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use control_crypto::PublicKey;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::Value;

/// The largest key set accepted.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Deadline of one fetch (connect, headers and body).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A fetched JWKS: its EC P-256 keys with a `kid`; other keys (another algorithm, no
/// `kid`) are skipped, as a JWKS may publish keys for other uses.
pub fn key_set(bytes: &[u8]) -> Result<HashMap<String, PublicKey>, String> {
    let document: Value = serde_json::from_slice(bytes)
        .map_err(|_not_json| "the response is not a JSON document".to_owned())?;
    let Some(Value::Array(keys)) = document.get("keys") else {
        return Err("the response has no keys array".to_owned());
    };
    Ok(keys.iter().filter_map(|jwk| public_jwk(jwk).ok()).collect())
}

/// One public JWK with its `kid`.
pub fn public_jwk(jwk: &Value) -> Result<(String, PublicKey), String> {
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

/// The connector of every outbound client of the roles and the operator commands: HTTP/1.1,
/// plain or TLS with the webpki roots.
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A [`Connector`] that dials any scheme's host, with `connect_timeout` when given.
#[must_use]
pub fn connector(connect_timeout: Option<Duration>) -> Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(connect_timeout);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

/// Why a key set could not be fetched. `Display` never holds the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The server answered with this non-success status (404: no such key set).
    Status(u16),
    /// No usable answer: connection, deadline, size limit or document.
    Failed(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status(status) => write!(f, "answered {status}"),
            Self::Failed(reason) => f.write_str(reason),
        }
    }
}

/// Fetches JWKS documents over HTTP/1.1 or TLS (webpki roots).
pub struct JwksClient {
    client: Client<Connector, Empty<Bytes>>,
}

impl Default for JwksClient {
    fn default() -> Self {
        Self::new()
    }
}

impl JwksClient {
    /// A client with the 5 s connect deadline and one idle connection per host.
    #[must_use]
    pub fn new() -> Self {
        let https = connector(Some(FETCH_TIMEOUT));
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build(https),
        }
    }

    /// The EC P-256 keys `url` publishes. The reason of a failure never holds the body.
    pub async fn fetch(&self, url: &url::Url) -> Result<HashMap<String, PublicKey>, FetchError> {
        let request = http::Request::get(url.as_str())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| FetchError::Failed(format!("cannot build the request: {e}")))?;
        let round = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| FetchError::Failed(format!("request failed: {e}")))?;
            if !response.status().is_success() {
                return Err(FetchError::Status(response.status().as_u16()));
            }
            let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| FetchError::Failed(format!("body: {e}")))?
                .to_bytes();
            key_set(&body).map_err(FetchError::Failed)
        };
        tokio::time::timeout(FETCH_TIMEOUT, round)
            .await
            .map_err(|_elapsed| {
                FetchError::Failed(format!("no answer within {} s", FETCH_TIMEOUT.as_secs()))
            })?
    }
}
