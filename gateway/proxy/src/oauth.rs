//! OAuth 2 client-credentials tokens for `oauth2_client_credentials` providers
//! (authority §7.3): fetched from the provider's token endpoint, cached per replica by the
//! provider's fingerprint, refreshed ahead of expiry, with a circuit breaker shared by the
//! replicas through Redis. Tokens never leave this process (never stored in Redis, never
//! logged).
//!
//! - An entry is used while it has ≥ 30 s left; a refresh starts in the background when
//!   less than 20 % of its lifetime (or 60 s) remains; a failed refresh keeps serving the
//!   cached token until its own 30 s margin.
//! - Concurrent fetches of one provider collapse into one.
//! - The endpoint must be `https`, its host in `allowed_token_hosts`, and its resolved
//!   addresses public (loopback, link-local, multicast, unspecified, private, CGNAT, ULA
//!   and NAT64-embedded forms refused) unless the host is in `CARACAL_PRIVATE_EGRESS_HOSTS`;
//!   the check runs at dial time.
//! - 5 failures within 5 min open the circuit for 30 s: fetches then fail at once.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use base64::Engine as _;
use bytes::Bytes;
use control_events::streams;
use gateway_state::{OAuthClient, Secret};
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::{
    Client,
    connect::{HttpConnector, dns::Name},
};
use hyper_util::rt::TokioExecutor;

use crate::redis_ops::Counters;

/// A token is used while it has at least this long left.
const MIN_LEFT: Duration = Duration::from_secs(30);
/// One attempt's deadline.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest token response read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Failures that open the circuit, and the window they are counted in.
const CIRCUIT_FAILURES: i64 = 5;
const FAILURE_WINDOW_SECONDS: u64 = 300;
const CIRCUIT_OPEN_SECONDS: u64 = 30;

/// A cached access token.
#[derive(Debug)]
pub(crate) struct Token {
    /// The access token.
    pub(crate) access_token: Secret,
    fetched_at: tokio::time::Instant,
    expires_at: tokio::time::Instant,
}

impl Token {
    fn left(&self) -> Duration {
        self.expires_at
            .saturating_duration_since(tokio::time::Instant::now())
    }

    fn usable(&self) -> bool {
        self.left() >= MIN_LEFT
    }

    fn wants_refresh(&self) -> bool {
        let lifetime = self.expires_at.saturating_duration_since(self.fetched_at);
        let left = self.left();
        left < lifetime / 5 || left < Duration::from_secs(60)
    }
}

/// Why no token could be had; the text is the step-29 reason (never a secret).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct TokenUnavailable(pub(crate) String);

/// The token cache of one replica.
pub(crate) struct OAuthTokens {
    cache: moka::future::Cache<String, Arc<Token>>,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector<EgressResolver>>, Full<Bytes>>,
    counters: Counters,
    max_ttl: Duration,
}

impl OAuthTokens {
    /// `private_egress` lists the token-endpoint hosts allowed on private addresses;
    /// `roots` are the trust anchors (webpki roots plus `UPSTREAM_CA_FILE`).
    pub(crate) fn new(
        counters: Counters,
        private_egress: Vec<String>,
        roots: rustls::RootCertStore,
        max_ttl: Duration,
    ) -> Self {
        let mut http = HttpConnector::new_with_resolver(EgressResolver {
            private_ok: Arc::new(private_egress),
        });
        http.enforce_http(false);
        http.set_connect_timeout(Some(ATTEMPT_TIMEOUT));
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
        let https = match tls {
            Ok(config) => hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_only()
                .enable_http1()
                .wrap_connector(http),
            Err(_unsupported) => hyper_rustls::HttpsConnectorBuilder::new()
                .with_webpki_roots()
                .https_only()
                .enable_http1()
                .wrap_connector(http),
        };
        Self {
            cache: moka::future::Cache::builder().max_capacity(10_000).build(),
            client: Client::builder(TokioExecutor::new()).build(https),
            counters,
            max_ttl,
        }
    }

    /// A usable token for the provider: cached, or fetched now.
    pub(crate) async fn token(
        self: &Arc<Self>,
        provider_id: &str,
        oauth: &Arc<OAuthClient>,
        allowed_hosts: &[String],
    ) -> Result<Arc<Token>, TokenUnavailable> {
        if let Some(token) = self.cache.get(&oauth.fingerprint).await {
            if token.usable() {
                if token.wants_refresh() {
                    self.refresh_in_background(provider_id, oauth, allowed_hosts);
                }
                return Ok(token);
            }
            self.cache.invalidate(&oauth.fingerprint).await;
        }
        let this = Arc::clone(self);
        let (id, client, hosts) = (
            provider_id.to_owned(),
            Arc::clone(oauth),
            allowed_hosts.to_vec(),
        );
        self.cache
            .try_get_with(oauth.fingerprint.clone(), async move {
                this.fetch(&id, &client, &hosts).await.map(Arc::new)
            })
            .await
            .map_err(|e| (*e).clone())
    }

    fn refresh_in_background(
        self: &Arc<Self>,
        provider_id: &str,
        oauth: &Arc<OAuthClient>,
        allowed_hosts: &[String],
    ) {
        let this = Arc::clone(self);
        let (id, client, hosts) = (
            provider_id.to_owned(),
            Arc::clone(oauth),
            allowed_hosts.to_vec(),
        );
        tokio::spawn(async move {
            match this.fetch(&id, &client, &hosts).await {
                Ok(token) => {
                    this.cache
                        .insert(client.fingerprint.clone(), Arc::new(token))
                        .await
                }
                Err(error) => {
                    tracing::warn!(provider_id = %id, %error, "provider token refresh failed; the cached token stays")
                }
            }
        });
    }

    /// One fetch: the circuit, the egress rules, two attempts, the breaker's bookkeeping.
    async fn fetch(
        &self,
        provider_id: &str,
        oauth: &OAuthClient,
        allowed_hosts: &[String],
    ) -> Result<Token, TokenUnavailable> {
        let endpoint = &oauth.token_endpoint;
        if endpoint.scheme() != "https" {
            return Err(TokenUnavailable(
                "provider token endpoint must be https".into(),
            ));
        }
        let host = endpoint.host_str().unwrap_or_default().to_ascii_lowercase();
        if !allowed_hosts.iter().any(|h| h == &host) {
            return Err(TokenUnavailable(
                "provider token endpoint host is not in allowed_token_hosts".into(),
            ));
        }
        if self
            .counters
            .circuit_open(&streams::provider_refresh_circuit_key(provider_id))
            .await
        {
            return Err(TokenUnavailable("provider token circuit open".into()));
        }
        let mut last = TokenUnavailable("provider token request failed".into());
        for _attempt in 0..2 {
            match tokio::time::timeout(ATTEMPT_TIMEOUT, self.request(oauth)).await {
                Ok(Ok(token)) => {
                    self.counters
                        .clear_failures(&[
                            streams::provider_refresh_failures_key(provider_id),
                            streams::provider_refresh_circuit_key(provider_id),
                        ])
                        .await;
                    return Ok(token);
                }
                Ok(Err(error)) => last = error,
                Err(_elapsed) => last = TokenUnavailable("provider token request timed out".into()),
            }
        }
        self.counters
            .record_failure(
                &streams::provider_refresh_failures_key(provider_id),
                &streams::provider_refresh_circuit_key(provider_id),
                CIRCUIT_FAILURES,
                FAILURE_WINDOW_SECONDS,
                CIRCUIT_OPEN_SECONDS,
            )
            .await;
        tracing::warn!(provider_id, reason = %last, "provider token fetch failed");
        Err(last)
    }

    async fn request(&self, oauth: &OAuthClient) -> Result<Token, TokenUnavailable> {
        let failed =
            |what: &str| TokenUnavailable(format!("provider token request failed: {what}"));
        let (body, authorization) =
            token_form(oauth).ok_or_else(|| failed("client credentials"))?;
        let mut builder = Request::post(oauth.token_endpoint.as_str())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json");
        if let Some(value) = authorization {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|_bad| failed("request"))?;
        let response = self.client.request(request).await.map_err(|e| {
            if crate::guard::is_not_addressable(&e) {
                TokenUnavailable("provider token endpoint not addressable".into())
            } else {
                failed("unreachable")
            }
        })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|_too_large_or_broken| failed("response unreadable or over 64 KiB"))?
            .to_bytes();
        if !status.is_success() {
            return Err(failed(&format!("status {}", status.as_u16())));
        }
        let parsed: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_bad| failed("response is not JSON"))?;
        let access_token = parsed
            .get("access_token")
            .and_then(serde_json::Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| failed("no access_token"))?;
        let token_type = parsed
            .get("token_type")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        if !(token_type.is_empty()
            || token_type.eq_ignore_ascii_case("bearer")
            || oauth.scheme_configured)
        {
            return Err(failed(
                "token_type is not Bearer and no auth_scheme is configured",
            ));
        }
        let lifetime = parsed
            .get("expires_in")
            .and_then(serde_json::Value::as_f64)
            .filter(|s| *s > 0.0)
            .map_or(self.max_ttl, |s| {
                Duration::from_secs_f64(s).min(self.max_ttl)
            });
        let now = tokio::time::Instant::now();
        Ok(Token {
            access_token: Secret::new(access_token.to_owned()),
            fetched_at: now,
            expires_at: now + lifetime,
        })
    }
}

/// The token request's form body and, for `client_secret_basic`, its `Authorization`.
fn token_form(oauth: &OAuthClient) -> Option<(String, Option<HeaderValue>)> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    if !oauth.scopes.is_empty() {
        form.append_pair("scope", &oauth.scopes.join(" "));
    }
    if let Some(audience) = &oauth.audience {
        form.append_pair("audience", audience);
    }
    if let Some(resource) = &oauth.resource {
        form.append_pair("resource", resource);
    }
    for (name, value) in &oauth.token_params {
        form.append_pair(name, value);
    }
    let mut authorization = None;
    match oauth.client_auth_method.as_str() {
        "client_secret_post" => {
            form.append_pair("client_id", &oauth.client_id);
            if let Some(secret) = &oauth.client_secret {
                form.append_pair("client_secret", secret.expose());
            }
        }
        "none" => {
            form.append_pair("client_id", &oauth.client_id);
        }
        _ => {
            // client_secret_basic: RFC 6749 §2.3.1 form-encodes both parts first.
            let enc = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
            let secret = oauth
                .client_secret
                .as_ref()
                .map(Secret::expose)
                .unwrap_or_default();
            let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                enc(&oauth.client_id),
                enc(secret)
            ));
            authorization = Some(HeaderValue::from_str(&format!("Basic {basic}")).ok()?);
        }
    }
    Some((form.finish(), authorization))
}

/// Resolves token-endpoint hosts and keeps only addresses an egress may reach.
#[derive(Clone)]
pub(crate) struct EgressResolver {
    private_ok: Arc<Vec<String>>,
}

type Resolving =
    Pin<Box<dyn Future<Output = std::io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for EgressResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let private_ok = Arc::clone(&self.private_ok);
        Box::pin(async move {
            let host = name.as_str().to_ascii_lowercase();
            let allow_private = private_ok.iter().any(|h| h == &host);
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| {
                    !crate::guard::address_blocked(a.ip()) && (allow_private || is_public(a.ip()))
                })
                .collect();
            if addrs.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    crate::guard::NotAddressable,
                ));
            }
            Ok(addrs.into_iter())
        })
    }
}

/// Not loopback, private (RFC 1918), CGNAT (100.64/10), ULA (fc00::/7), link-local,
/// multicast or unspecified, also when IPv4 is embedded (mapped, NAT64).
fn is_public(ip: IpAddr) -> bool {
    let v4_public = |v4: std::net::Ipv4Addr| {
        let [a, b, ..] = v4.octets();
        !(v4.is_loopback()
            || v4.is_private()
            || v4.is_link_local()
            || v4.is_unspecified()
            || v4.is_multicast()
            || v4.is_broadcast()
            || (a == 100 && (64..128).contains(&b))
            || a == 0)
    };
    match ip {
        IpAddr::V4(v4) => v4_public(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_public(v4);
            }
            let segments = v6.segments();
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [_, _, _, _, _, _, hi, lo] = segments;
                let v4 = std::net::Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
                return v4_public(v4);
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00
                || (segments[0] & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_egress_without_an_exception() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            let ip: IpAddr = private.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
            assert!(!is_public(ip), "{private}");
        }
        for public in [
            "8.8.8.8",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            let ip: IpAddr = public.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
            assert!(is_public(ip), "{public}");
        }
    }

    #[test]
    fn a_token_refreshes_ahead_and_stops_being_used_at_its_margin() {
        let now = tokio::time::Instant::now();
        let token = |lifetime: u64, left: u64| Token {
            access_token: Secret::new("t".into()),
            fetched_at: now - Duration::from_secs(lifetime - left),
            expires_at: now + Duration::from_secs(left),
        };
        assert!(!token(3600, 3000).wants_refresh());
        assert!(token(3600, 500).wants_refresh(), "under 20 % left");
        assert!(token(3600, 500).usable());
        assert!(!token(3600, 20).usable(), "under the 30 s margin");
    }
}
