//! TLS at the gateway: its own listener (HTTP/1.1 and HTTP/2 by ALPN) and
//! `oauth2_client_credentials` (authority §7.3) against a real token endpoint over TLS: the token is fetched once and cached, attached as configured, the
//! endpoint's host is checked against `allowed_token_hosts`, private addresses need
//! `CARACAL_PRIVATE_EGRESS_HOSTS`, and repeated failures open the circuit.

use serde_json::json;
use tests_harness::{gateway::ADMIN_TOKEN, http, provision::Provision, token_server::TokenServer};

use super::gateway::{RESOURCE, Scenario, ZONE, assert_denied};

/// The scenario's resource switched to a client-credentials provider of `token` (a
/// provider id of its own: the circuit keys in Redis are per provider).
async fn scenario(
    token: &TokenServer,
    allowed: &[&str],
    private_egress: &str,
    extra: serde_json::Value,
) -> anyhow::Result<Scenario> {
    let ca = token.ca_file.display().to_string();
    let overrides = [
        ("UPSTREAM_CA_FILE", ca.as_str()),
        ("CARACAL_PRIVATE_EGRESS_HOSTS", private_egress),
    ];
    let s = Scenario::start_with(&overrides, |_| {}).await?;
    let provider = format!("prov-oauth-{}", uuid::Uuid::new_v4().simple());
    let mut config = json!({
        "token_endpoint": token.endpoint(),
        "client_id": "gateway client",
        "allowed_token_hosts": allowed,
        "scopes": ["crm.read", "crm.write"],
    });
    if let (Some(target), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            target.insert(k.clone(), v.clone());
        }
    }
    let mut p = Provision::open(&s.db).await?;
    p.provider_with_secret(
        ZONE,
        &provider,
        "oauth2_client_credentials",
        &config,
        Some(&json!({"client_secret": "s3cr3t/+"})),
    )
    .await?;
    p.exec(&format!(
        "UPDATE resources SET credential_provider_id = '{provider}' WHERE id = 'res-echo'"
    ))
    .await?;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let reload = http::request(
        s.gateway.addr,
        "POST",
        "/internal/revocations/reload",
        &[("authorization", auth.as_str())],
        "",
    )
    .await?;
    anyhow::ensure!(reload.status == 200, "reload: {}", reload.status);
    Ok(s)
}

#[tokio::test]
async fn the_token_is_fetched_once_cached_and_attached() -> anyhow::Result<()> {
    let token = TokenServer::start(3600).await?;
    let s = scenario(&token, &["localhost"], "localhost", json!({})).await?;
    for _ in 0..3 {
        let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
        assert_eq!(resp.status, 200, "{:?}", resp.json());
    }
    assert_eq!(token.requests(), 1, "one fetch, then the cache");
    let seen = s.upstream.last().expect("upstream reached");
    assert_eq!(
        seen.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer tok-1")
    );
    let last = token.last();
    assert!(
        last.form.contains("grant_type=client_credentials"),
        "{}",
        last.form
    );
    assert!(
        last.form.contains("scope=crm.read+crm.write"),
        "{}",
        last.form
    );
    // client_secret_basic: both parts form-encoded, then base64.
    assert_eq!(
        last.authorization.as_deref(),
        Some("Basic Z2F0ZXdheStjbGllbnQ6czNjcjN0JTJGJTJC")
    );
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn client_secret_post_and_a_custom_header_are_honoured() -> anyhow::Result<()> {
    let token = TokenServer::start(3600).await?;
    let s = scenario(
        &token,
        &["localhost"],
        "localhost",
        json!({"client_auth_method": "client_secret_post", "auth_header": "X-Upstream-Token", "auth_scheme": "Token"}),
    )
    .await?;
    let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    let seen = s.upstream.last().expect("upstream reached");
    assert_eq!(
        seen.headers
            .get("x-upstream-token")
            .and_then(|v| v.to_str().ok()),
        Some("Token tok-1")
    );
    assert!(seen.headers.get("authorization").is_none());
    let last = token.last();
    assert!(last.authorization.is_none());
    assert!(
        last.form.contains("client_id=gateway+client"),
        "{}",
        last.form
    );
    assert!(
        last.form.contains("client_secret=s3cr3t%2F%2B"),
        "{}",
        last.form
    );
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_private_token_endpoint_needs_the_egress_exception() -> anyhow::Result<()> {
    let token = TokenServer::start(3600).await?;
    let s = scenario(&token, &["localhost"], "other.example", json!({})).await?;
    let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
    assert_denied(
        &resp,
        502,
        "http_request_failed",
        &format!(
            "upstream credential for resource {RESOURCE} is unavailable: provider token endpoint not addressable"
        ),
    );
    assert_eq!(token.requests(), 0, "never dialled");
    assert!(s.upstream.requests().is_empty());
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_endpoint_host_must_be_allowed() -> anyhow::Result<()> {
    let token = TokenServer::start(3600).await?;
    let s = scenario(&token, &["tokens.example"], "localhost", json!({})).await?;
    let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
    assert_denied(
        &resp,
        502,
        "http_request_failed",
        &format!(
            "upstream credential for resource {RESOURCE} is unavailable: provider token endpoint host is not in allowed_token_hosts"
        ),
    );
    assert_eq!(token.requests(), 0);
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn failures_open_the_circuit() -> anyhow::Result<()> {
    let token = TokenServer::start(3600).await?;
    token.set_failing(true);
    let s = scenario(&token, &["localhost"], "localhost", json!({})).await?;
    // Each refused call makes two attempts; five failed fetches open the circuit.
    for _ in 0..5 {
        let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
        assert_eq!(resp.status, 502, "{:?}", resp.json());
    }
    let before = token.requests();
    assert_eq!(before, 10);
    let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
    assert_denied(
        &resp,
        502,
        "http_request_failed",
        &format!(
            "upstream credential for resource {RESOURCE} is unavailable: provider token circuit open"
        ),
    );
    assert_eq!(token.requests(), before, "an open circuit does not dial");
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_gateway_serves_tls_over_http1_and_http2() -> anyhow::Result<()> {
    let certs = tests_harness::tls::TestCerts::generate().await?;
    let (cert, key) = (
        certs.cert_file.display().to_string(),
        certs.key_file.display().to_string(),
    );
    let s = Scenario::start_with(
        &[
            ("TLS_CERT_FILE", cert.as_str()),
            ("TLS_KEY_FILE", key.as_str()),
        ],
        |_| {},
    )
    .await?;
    for http2 in [false, true] {
        let token = s.mandate();
        let auth = format!("Bearer {token}");
        let resp = http::request_tls(
            s.gateway.addr,
            &certs.ca_file,
            http2,
            "GET",
            "/items",
            &[
                ("authorization", auth.as_str()),
                ("x-caracal-resource", RESOURCE),
            ],
        )
        .await?;
        assert_eq!(resp.status, 200, "http2={http2}: {:?}", resp.json());
        let seen = s.upstream.last().expect("upstream reached");
        assert_eq!(
            seen.headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok()),
            Some("https")
        );
    }
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_bad_tls_file_stops_the_start_with_one_line() -> anyhow::Result<()> {
    let db = tests_harness::TestDb::migrated().await?;
    let error = tests_harness::gateway::GatewayFixture::start_with(
        &db,
        &[
            ("TLS_CERT_FILE", "/nonexistent/cert.pem"),
            ("TLS_KEY_FILE", "/nonexistent/key.pem"),
        ],
    )
    .await
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        error.contains("TLS_CERT_FILE /nonexistent/cert.pem"),
        "{error}"
    );
    assert!(!error.contains('\n'), "one line: {error}");
    Ok(())
}
