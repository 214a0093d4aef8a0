//! A test OIDC issuer on `127.0.0.1:<free port>`: a real hyper server publishing a JWKS
//! with one RS256 and one ES256 key, and helpers that sign id_tokens with them (or forge
//! broken ones) for the federation tests.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rsa::{
    pkcs8::DecodePrivateKey as _,
    signature::{SignatureEncoding as _, Signer as _},
    traits::PublicKeyParts as _,
};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::provision::Provision;

/// A throwaway 2048-bit RSA key for tests only (fixed, because generating one in an
/// unoptimised build takes seconds). It protects nothing.
const RSA_TEST_KEY: &str = r"-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDI3Bx7DTDBf3+C
GnebDzn7ne5+NOeXdm3+0SlXeDRxafSgFUSn91RzOR60E8CDgu+RLpf2UmPALHzz
xGvRGCq6H0eGdqNvIb1B1hhJLvzJdxzom08QzrS3H4Xjx/8jeu3zVmcAByUn6DHV
/yGzn51OEDh4NY/mH3USeIi2Gc8EehYU7JC+HizqXI/bIbezNdAr6a3lnQHjUe0Z
3vZaM0c++KAfzlli2S3lw6sDfCW2LzA9eEBidDc+1VcSY3mtiSY4DV//kZSjIWD/
m7opm1Vn/V9Yarf0elV5mON0D5lakB+StWHG+fDj0nMUmbM7xA11O43MXZaRDNul
kvJh5pRVAgMBAAECggEAIf3D8RwMl/ZeavNVMd+8CYWS1ndYCPURDMozQ5rzTw0m
CZBH19/+gehU9pcQIYFfTvOyYkxTlrJArBUdxNsg4fIIrev2YQh16YYUgpAJ1gNL
GF8uHHNKuGHEjAVsu0Gisqc405Oh+VStWGBugOIeYhdTIx63XTOOIaPVyPFprAE7
T1+fRIIG4SRYBzZtBTkgWScezG9f/dNQVYlozvCqkrEn4rRNQJLFBCrnkiy3hbdS
FfUFxCILLNFyCP/74G3am1CO9JTYwi8P9sgSEA4LNHbtRpP9zL7J5rZrJ4ondxQW
lyrJkaCH/cxp0eMnNoR4/OmAHboKIBfbcORllM4++QKBgQDvGWZi3TVMH6fq/p7Y
j2w0Wv9tiBBwy8lVkq4JKLos5gXronlsYrR5htqVIfF+klAOEtWnLYCoGa8r84uH
ZTDvXVlTPkTQt3oMjwRKrnYTNGV/91TZ3sucFqZ/KgYfYA7SXk6fL06UpVm1z+zB
6inOkJ9E2A3NPmJOvAbpki/CXQKBgQDXDsDVdu6a6ADi/G9igl6gVuuImyDvikHP
538TQmqCQu8OZfrL0piBoyY8jD13h1Y8pyCEz17ficYKMeFWhncb7kGIRWAlh3Iq
+1mYh667E9uaHuWDTt9lRNEq+Jb7fmPs6rDfN2tuYQ0WJribwqHbYFfqIIQ1sPUy
oy8ysf/qWQKBgQDmao7t1YnIS3VyFGCWCFlZdxxSvN5DJVBoRAutze7k1+N6uj/T
wKd1ugypzWVB+dRmS6ZUDpi+5smWTIT5PP5Unpw3iXmdvkNDGQwkwE4Pod3y3TKL
J5cGXBml0KTH1bVS7AlOhLNwsoxqlu7tzTDu3RZvrNpYIbdxcugibXvTDQKBgBYt
GUlp2DT1E5JUgY/g7a0PCX6usHjDAwJTVtE/mggQquILNg9qiftkPX8k3vnCZOwg
N8Q6NghLBrbqadgoSYQBz5Qjw0RbcTRpctW9uBDmfVCpOvWNXo/sxrztoXQRlnBJ
yy9ZYaSiMV1FZOf67AHZL3efHsMCmmY8WZOas08RAoGBALwLEJx0wakaCzoPqO8U
BlTKGzxJwQq1IhfJ0TNFn2gofO9uD/g87EpcAYM8Ggdo6fQ6UicHYdKvE/GqEnMj
f+D5Ge7BFaKuWmGBrcWU75Sfcvo/PB8ApgQnh3sVqbGa0lw2PXphowjXfNnnlD2O
fMF3uvDN5koD66liYvEew7rL
-----END PRIVATE KEY-----";

/// The JWKS path.
pub const JWKS_PATH: &str = "/jwks.json";

/// The kid of the RS256 key.
pub const RSA_KID: &str = "test-rsa-1";
/// The kid of the ES256 key.
pub const EC_KID: &str = "test-ec-1";

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A running issuer.
pub struct OidcIssuer {
    /// Listen address.
    pub addr: SocketAddr,
    /// `iss` of its tokens: `http://127.0.0.1:<port>`.
    pub issuer: String,
    /// `http://127.0.0.1:<port>/jwks.json`.
    pub jwks_url: String,
    rsa: rsa::RsaPrivateKey,
    ec: control_crypto::ZoneSigningKey,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    shutdown: watch::Sender<bool>,
}

impl OidcIssuer {
    /// Starts the issuer; its JWKS lists both keys.
    pub async fn start() -> anyhow::Result<Self> {
        let rsa = rsa::RsaPrivateKey::from_pkcs8_pem(RSA_TEST_KEY)?;
        let ec = control_crypto::ZoneSigningKey::generate();
        let public = rsa.to_public_key();
        let keys = Arc::new(Mutex::new(vec![
            json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": RSA_KID,
                   "n": b64(&public.n().to_bytes_be()), "e": b64(&public.e().to_bytes_be())}),
            ec.public_key().to_jwk(EC_KID),
        ]));
        let fetches = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (shutdown, mut stop) = watch::channel(false);
        let (served_keys, served_fetches) = (Arc::clone(&keys), Arc::clone(&fetches));
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stop.changed() => break,
                };
                let Ok((stream, _peer)) = accepted else {
                    continue;
                };
                let (keys, fetches) = (Arc::clone(&served_keys), Arc::clone(&served_fetches));
                let service = service_fn(move |req: http::Request<Incoming>| {
                    let (keys, fetches) = (Arc::clone(&keys), Arc::clone(&fetches));
                    async move {
                        let mut response = if req.uri().path() == JWKS_PATH {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            let listed = keys.lock().map(|k| k.clone()).unwrap_or_default();
                            let body = json!({"keys": listed}).to_string();
                            let mut r = http::Response::new(Full::new(Bytes::from(body)));
                            r.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            r
                        } else {
                            let mut r = http::Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = http::StatusCode::NOT_FOUND;
                            r
                        };
                        response.headers_mut().insert(
                            http::header::CACHE_CONTROL,
                            http::HeaderValue::from_static("no-store"),
                        );
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(async move {
                    let _served =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                });
            }
        });
        let issuer = format!("http://{addr}");
        Ok(Self {
            addr,
            jwks_url: format!("{issuer}{JWKS_PATH}"),
            issuer,
            rsa,
            ec,
            keys,
            fetches,
            shutdown,
        })
    }

    /// How many times the JWKS was fetched.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Replaces the published keys (e.g. `[]` to drop every key).
    pub fn set_keys(&self, keys: Vec<Value>) {
        if let Ok(mut published) = self.keys.lock() {
            *published = keys;
        }
    }

    /// Standard claims: this `iss`, `sub`, `aud`, `iat` now, `exp` in five minutes.
    pub fn claims(&self, sub: &str, audience: &str) -> Value {
        let now = unix_now();
        json!({"iss": self.issuer, "sub": sub, "aud": audience, "iat": now, "exp": now + 300})
    }

    /// An RS256 id_token with the published RSA key.
    pub fn sign_rs256(&self, claims: &Value) -> String {
        self.sign_rs256_with_header(
            &json!({"alg": "RS256", "kid": RSA_KID, "typ": "JWT"}),
            claims,
        )
    }

    /// An RS256 signature over any header (other `kid`, extra members …).
    pub fn sign_rs256_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signer = rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha256>::new(self.rsa.clone());
        let signature = signer.sign(input.as_bytes()).to_vec();
        format!("{input}.{}", b64(&signature))
    }

    /// An ES256 id_token with the published EC key.
    pub fn sign_es256(&self, claims: &Value) -> String {
        self.ec
            .sign_jwt(EC_KID, claims.to_string().as_bytes())
            .unwrap_or_default()
    }

    /// An ES256 id_token from a key the JWKS does not list, under `kid`.
    pub fn sign_with_unknown_key(&self, kid: &str, claims: &Value) -> String {
        control_crypto::ZoneSigningKey::generate()
            .sign_jwt(kid, claims.to_string().as_bytes())
            .unwrap_or_default()
    }

    /// An unsecured token (`alg: none`, empty signature) naming the RSA kid.
    pub fn unsigned(&self, claims: &Value) -> String {
        format!(
            "{}.{}.",
            b64(json!({"alg": "none", "kid": RSA_KID})
                .to_string()
                .as_bytes()),
            b64(claims.to_string().as_bytes())
        )
    }

    /// An HS256 token (a symmetric algorithm) naming the RSA kid.
    pub fn hs256(&self, claims: &Value) -> String {
        format!(
            "{}.{}.{}",
            b64(json!({"alg": "HS256", "kid": RSA_KID})
                .to_string()
                .as_bytes()),
            b64(claims.to_string().as_bytes()),
            b64(&[7; 32])
        )
    }

    /// A validly signed token whose claims were swapped afterwards (bad signature).
    pub fn tampered(&self, signed_claims: &Value, presented_claims: &Value) -> String {
        let token = self.sign_rs256(signed_claims);
        let mut parts = token.split('.');
        let (header, _, signature) = (parts.next(), parts.next(), parts.next());
        format!(
            "{}.{}.{}",
            header.unwrap_or_default(),
            b64(presented_claims.to_string().as_bytes()),
            signature.unwrap_or_default()
        )
    }

    /// Registers this issuer as a live subject issuer of `zone` (row id `id`).
    pub async fn register(
        &self,
        p: &mut Provision,
        zone: &str,
        id: &str,
        audience: Option<&str>,
    ) -> anyhow::Result<()> {
        register_subject_issuer(p, zone, id, &self.issuer, &self.jwks_url, audience).await
    }

    /// Stops serving.
    pub fn stop(&self) {
        let _sent = self.shutdown.send(true);
    }
}

impl Drop for OidcIssuer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Inserts a live `subject_issuers` row.
pub async fn register_subject_issuer(
    p: &mut Provision,
    zone: &str,
    id: &str,
    issuer: &str,
    jwks_url: &str,
    audience: Option<&str>,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO subject_issuers (id, zone_id, issuer, jwks_url, audience, created_by, updated_by) \
         VALUES ($1, $2, $3, $4, $5, 'test', 'test')",
    )
    .bind(id)
    .bind(zone)
    .bind(issuer)
    .bind(jwks_url)
    .bind(audience)
    .execute(p.conn())
    .await?;
    Ok(())
}
