//! Credential injection (wire-contract §4.5, authority §7.1), each provider kind at the real
//! upstream: exactly what the upstream received, and never the caller's `Authorization`, a
//! caller's `X-Caracal-*` or `X-Forwarded-*` (the gateway's own `X-Forwarded-*` only).

use control_crypto::{PublicKey, UnverifiedJwt};
use serde_json::{Value, json};
use tests_harness::{provision::Provision, upstream::Recorded};

use super::gateway::{AGENT, ISSUER_APP, Ids, RESOURCE, Scenario, ZONE};

/// Headers a caller may try to smuggle to the upstream.
const FORGED: [(&str, &str); 12] = [
    ("x-caracal-session", "forged"),
    ("x-caracal-identity", "forged-identity"),
    ("x-caracal-agent-session", "forged"),
    ("x-forwarded-for", "6.6.6.6"),
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-port", "444"),
    ("forwarded", "for=6.6.6.6"),
    ("x-real-ip", "6.6.6.6"),
    ("te", "trailers"),
    ("proxy-authorization", "Basic Zm9yZ2Vk"),
    ("keep-alive", "timeout=5"),
];

/// A scenario whose `res-echo` uses provider `prov-x` of `kind`, plus `sql`.
async fn with_provider(
    kind: &str,
    config: Value,
    secrets: Option<Value>,
    sql: &[&str],
) -> anyhow::Result<Scenario> {
    Scenario::start_custom(&[], "active", async move |p: &mut Provision, ids: &Ids| {
        p.provider_with_secret(ZONE, "prov-x", kind, &config, secrets.as_ref())
            .await?;
        p.exec("UPDATE resources SET credential_provider_id = 'prov-x' WHERE id = 'res-echo'")
            .await?;
        for statement in sql {
            p.exec(&ids.fill(statement)).await?;
        }
        Ok(())
    })
    .await
}

/// `GET path` with the forged headers plus `extra`; asserts 200 and returns what the upstream
/// received and the presented mandate.
async fn call(s: &Scenario, path: &str, extra: &[(&str, &str)]) -> (Recorded, String) {
    let token = s.mandate();
    let mut headers: Vec<(&str, &str)> = FORGED.to_vec();
    headers.extend_from_slice(extra);
    let resp = s.call("GET", path, &token, &headers).await;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    let seen = s.upstream.last().expect("the upstream saw the call");
    assert_eq!(s.upstream.requests().len(), 1);
    (seen, token)
}

fn header(seen: &Recorded, name: &str) -> Option<String> {
    let mut values = seen.headers.get_all(name).iter();
    let first = values
        .next()
        .map(|v| v.to_str().expect("ascii header").to_owned());
    assert!(values.next().is_none(), "one {name} header");
    first
}

/// The hygiene every kind shares: no caller `X-Caracal-*` (the gateway's identity header
/// only when `identity`), the gateway's own `X-Forwarded-*`, no `Forwarded`/`X-Real-IP`, and
/// the presented mandate nowhere.
fn assert_hygiene(s: &Scenario, seen: &Recorded, token: &str, identity: bool) {
    for (name, value) in &seen.headers {
        let name = name.as_str();
        if name.starts_with("x-caracal-") {
            assert!(
                identity && name == "x-caracal-identity",
                "{name} reached the upstream"
            );
        }
        if name.starts_with("x-forwarded-") {
            assert!(
                matches!(
                    name,
                    "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host"
                ),
                "{name} reached the upstream"
            );
        }
        let value = value.to_str().unwrap_or_default();
        assert!(
            !value.contains(token),
            "the presented mandate reached the upstream in {name}"
        );
        assert!(
            !value.contains("forged") && !value.contains("6.6.6.6"),
            "{name}: {value}"
        );
    }
    assert_eq!(
        header(seen, "x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(header(seen, "x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        header(seen, "x-forwarded-host"),
        Some(s.gateway.addr.to_string())
    );
    assert!(seen.headers.get("forwarded").is_none());
    assert!(seen.headers.get("x-real-ip").is_none());
    for hop in [
        "te",
        "proxy-authorization",
        "keep-alive",
        "trailer",
        "upgrade",
    ] {
        assert!(
            seen.headers.get(hop).is_none(),
            "hop-by-hop {hop} reached the upstream"
        );
    }
    assert_eq!(header(seen, "host"), Some(s.upstream.addr.to_string()));
}

/// The zone's public key, from the signing key row the test inserted.
async fn zone_key(s: &Scenario) -> anyhow::Result<PublicKey> {
    let mut conn = s.db.admin().await?;
    let jwk: Value = sqlx::query_scalar("SELECT public_jwk FROM caracal.secrets WHERE id = $1")
        .bind(&s.signer.kid)
        .fetch_one(&mut conn)
        .await?;
    Ok(PublicKey::from_jwk(&jwk)?)
}

/// Verifies a gateway-minted resource mandate under the zone key and returns its claims,
/// checked against the presented ones (authority §4.4).
async fn verify_resource_mandate(
    s: &Scenario,
    jwt: &str,
    presented: &str,
) -> anyhow::Result<Value> {
    let key = zone_key(s).await?;
    let parsed = UnverifiedJwt::parse(jwt)?;
    assert_eq!(parsed.header().kid.as_deref(), Some(s.signer.kid.as_str()));
    let claims: Value = serde_json::from_slice(&parsed.verify(&key)?)?;
    let presented: Value =
        serde_json::from_slice(UnverifiedJwt::parse(presented)?.unverified_claims())?;
    let ids = &s.ids;
    assert_eq!(claims["use"], "resource");
    assert_eq!(claims["aud"], json!([RESOURCE]));
    assert_eq!(claims["target"], json!([RESOURCE]));
    for same in [
        "iss",
        "sub",
        "sub_type",
        "client_id",
        "zone_id",
        "scope",
        "sid",
        "root_sid",
    ] {
        assert_eq!(claims[same], presented[same], "{same} as presented");
    }
    assert_eq!(claims["sid"], json!(ids.record));
    assert_eq!(claims["root_sid"], json!(ids.record));
    let jti = claims["jti"].as_str().expect("jti");
    assert!(
        !jti.is_empty() && claims["jti"] != presented["jti"],
        "a new jti"
    );
    let exp = claims["exp"].as_i64().expect("exp");
    let iat = claims["iat"].as_i64().expect("iat");
    assert!(
        exp <= presented["exp"].as_i64().expect("presented exp"),
        "exp within the presented"
    );
    assert!(exp <= iat + 900 && exp > iat, "exp {exp} iat {iat}");
    assert_eq!(claims["agent_session_id"], json!(ids.target));
    assert_eq!(claims["delegation_edge_id"], json!(ids.edge));
    assert_eq!(claims["source_session_id"], json!(ids.source));
    assert_eq!(claims["target_session_id"], json!(ids.target));
    assert_eq!(claims["delegation_path"], json!([ids.edge]));
    assert_eq!(claims["hop_count"], 1);
    assert!(
        claims["delegation_graph_epoch"]
            .as_i64()
            .is_some_and(|e| e >= 1),
        "{claims}"
    );
    assert_eq!(
        claims["delegation_chain"],
        json!([
            {"application_id": ISSUER_APP, "agent_session_id": ids.source, "delegation_edge_id": ids.edge},
            {"application_id": AGENT, "agent_session_id": ids.target}
        ])
    );
    Ok(claims)
}

#[tokio::test]
async fn kind_none_injects_nothing() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    let (seen, token) = call(&s, "/items?q=1", &[]).await;
    assert_hygiene(&s, &seen, &token, false);
    assert!(seen.headers.get("authorization").is_none());
    assert_eq!(seen.path, "/base/items");
    assert_eq!(seen.query.as_deref(), Some("q=1"));
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn kind_caracal_mandate_sends_a_resource_mandate_signed_by_the_zone() -> anyhow::Result<()> {
    let s = with_provider("caracal_mandate", json!({}), None, &[]).await?;
    let (seen, token) = call(&s, "/items", &[]).await;
    assert_hygiene(&s, &seen, &token, false);
    let auth = header(&seen, "authorization").expect("an Authorization header");
    let jwt = auth.strip_prefix("Bearer ").expect("a bearer");
    verify_resource_mandate(&s, jwt, &token).await?;
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn kind_api_key_in_a_header_with_a_scheme() -> anyhow::Result<()> {
    let s = with_provider(
        "api_key",
        json!({"header_name": "X-Api-Key", "auth_scheme": "Token"}),
        Some(json!({"api_key": "key-abc-123"})),
        &[],
    )
    .await?;
    let (seen, token) = call(&s, "/items", &[("x-api-key", "mine")]).await;
    assert_hygiene(&s, &seen, &token, false);
    assert_eq!(
        header(&seen, "x-api-key").as_deref(),
        Some("Token key-abc-123")
    );
    assert!(seen.headers.get("authorization").is_none());
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn kind_api_key_in_the_query_replaces_the_callers_parameter() -> anyhow::Result<()> {
    let s = with_provider(
        "api_key",
        json!({"auth_location": "query", "query_param_name": "api_key"}),
        Some(json!({"api_key": "key-abc-123"})),
        &[],
    )
    .await?;
    let (seen, token) = call(&s, "/items?api_key=mine&x=1", &[]).await;
    assert_hygiene(&s, &seen, &token, false);
    let query = seen.query.clone().unwrap_or_default();
    let mut pairs: Vec<&str> = query.split('&').collect();
    pairs.sort_unstable();
    assert_eq!(pairs, ["api_key=key-abc-123", "x=1"], "query {query}");
    assert!(seen.headers.get("authorization").is_none());
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn kind_bearer_token_with_the_default_header_and_scheme() -> anyhow::Result<()> {
    let s = with_provider(
        "bearer_token",
        json!({}),
        Some(json!({"bearer_token": "tok-xyz-789"})),
        &[],
    )
    .await?;
    let (seen, token) = call(&s, "/items", &[]).await;
    assert_hygiene(&s, &seen, &token, false);
    assert_eq!(
        header(&seen, "authorization").as_deref(),
        Some("Bearer tok-xyz-789")
    );
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn kind_bearer_token_with_a_custom_header_and_scheme() -> anyhow::Result<()> {
    let s = with_provider(
        "bearer_token",
        json!({"auth_header": "X-Upstream-Token", "auth_scheme": "Custom"}),
        Some(json!({"bearer_token": "tok-xyz-789"})),
        &[],
    )
    .await?;
    let (seen, token) = call(&s, "/items", &[("x-upstream-token", "mine")]).await;
    assert_hygiene(&s, &seen, &token, false);
    assert_eq!(
        header(&seen, "x-upstream-token").as_deref(),
        Some("Custom tok-xyz-789")
    );
    assert!(
        seen.headers.get("authorization").is_none(),
        "the caller's bearer is removed"
    );
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn kind_http_basic() -> anyhow::Result<()> {
    let s = with_provider(
        "http_basic",
        json!({"username": "svc-user"}),
        Some(json!({"password": "s3cret-pass:x"})),
        &[],
    )
    .await?;
    let (seen, token) = call(&s, "/items", &[]).await;
    assert_hygiene(&s, &seen, &token, false);
    // base64("svc-user:s3cret-pass:x")
    assert_eq!(
        header(&seen, "authorization").as_deref(),
        Some("Basic c3ZjLXVzZXI6czNjcmV0LXBhc3M6eA==")
    );
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn forward_caracal_identity_adds_the_header_and_strips_it_from_the_response()
-> anyhow::Result<()> {
    let s = with_provider(
        "none",
        json!({"forward_caracal_identity": true}),
        None,
        &["UPDATE resources SET operation_enforcement = 'transport_uniform' WHERE id = 'res-echo'"],
    )
    .await?;
    let token = s.mandate();
    let mut headers: Vec<(&str, &str)> = FORGED.to_vec();
    headers.push(("x-caracal-identity", "forged-identity-2"));
    let resp = s.call("GET", "/redirect", &token, &headers).await;
    assert_eq!(resp.status, 302, "{resp:?}");
    assert!(
        resp.header("x-caracal-identity").is_none(),
        "the upstream's X-Caracal-Identity never reaches the client"
    );
    let seen = s.upstream.last().expect("the upstream saw the call");
    assert_hygiene(&s, &seen, &token, true);
    assert!(
        seen.headers.get("authorization").is_none(),
        "kind none: no credential"
    );
    let identity = header(&seen, "x-caracal-identity").expect("X-Caracal-Identity");
    verify_resource_mandate(&s, &identity, &token).await?;
    s.stop().await;
    Ok(())
}
