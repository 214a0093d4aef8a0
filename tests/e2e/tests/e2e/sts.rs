//! The STS against real Postgres and Redis (authority §3, wire-contract §2): every
//! exchange class built so far, the rejection rules, the catalog codes, fail-closed paths.

use control_crypto::{PublicKey, UnverifiedJwt};
use serde_json::Value;
use tests_harness::{
    TestDb, http,
    provision::Provision,
    sts::{GRANT, StsFixture, jwt_claims},
};

pub(super) const ZONE: &str = "acme";
pub(super) const AGENT: &str = "agent-app";
const CHILD: &str = "child-app";
const SECRET: &str = "s3cret-value";

const POLICY: &str = r#"package caracal.authz
import rego.v1
# caracal:data-document
app_ids := {"agent": "agent-app", "child": "child-app"}
grants := {
  "resource://crm": {"application": "agent", "roles": {"reader": ["crm:read"]}},
  "resource://reports": {"application": "child", "roles": {"analyst": ["reports:read"]}},
  "resource://payments": {"application": "child", "roles": {"analyst": ["payments:send"]}}
}
risk := [{"scope": "payments:send", "tier": "high"}]
approval_tiers := [{"tier": "high", "approver": "operator"}]
"#;

/// Zone `acme`: two applications, three resources, the policy above, and an edge from
/// agent-app's session to child-app's session (labels `analyst`).
pub(super) async fn scenario(db: &TestDb) -> anyhow::Result<()> {
    let mut p = Provision::open(db).await?;
    p.zone(ZONE).await?;
    p.zone("other").await?;
    p.application(ZONE, AGENT, SECRET, &[]).await?;
    p.application(ZONE, CHILD, SECRET, &[]).await?;
    p.application(
        ZONE,
        "ops-app",
        SECRET,
        &[
            "control:invoke",
            "control:scope:control:read",
            "control:max-ttl:120",
        ],
    )
    .await?;
    p.provider_none(ZONE, "p-none").await?;
    p.resource(
        ZONE,
        "crm",
        "resource://crm",
        &["crm:read", "crm:write"],
        Some("http://127.0.0.1:9/"),
        "p-none",
    )
    .await?;
    p.resource(
        ZONE,
        "reports",
        "resource://reports",
        &["reports:read", "reports:write"],
        Some("http://127.0.0.1:9/"),
        "p-none",
    )
    .await?;
    p.resource(
        ZONE,
        "control",
        "caracal-control",
        &["control:read"],
        None,
        "p-none",
    )
    .await?;
    p.resource(
        ZONE,
        "payments",
        "resource://payments",
        &["payments:send"],
        Some("http://127.0.0.1:9/"),
        "p-none",
    )
    .await?;
    p.activate_policy(ZONE, "main", POLICY).await?;
    p.agent_session(ZONE, "s-parent", AGENT, &["orchestrator"])
        .await?;
    p.agent_session(ZONE, "s-child", CHILD, &["analyst"])
        .await?;
    p.edge(
        ZONE,
        "e1",
        ("s-parent", AGENT),
        ("s-child", CHILD),
        &["reports:read", "reports:write", "payments:send"],
        serde_json::json!({"max_hops": 1}),
        3600,
        None,
    )
    .await?;
    Ok(())
}

pub(super) fn bootstrap_form<'a>(app: &'a str, resource: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", GRANT),
        ("zone_id", ZONE),
        ("application_id", app),
        ("client_secret", SECRET),
        ("scope", "agent:lifecycle"),
        ("resource", resource),
    ]
}

fn delegated_form(scope: &str) -> Vec<(&str, &str)> {
    vec![
        ("grant_type", GRANT),
        ("zone_id", ZONE),
        ("application_id", CHILD),
        ("client_secret", SECRET),
        ("scope", scope),
        ("resource", "resource://reports"),
        ("agent_session_id", "s-child"),
        ("delegation_edge_id", "e1"),
    ]
}

async fn start() -> anyhow::Result<(TestDb, StsFixture)> {
    tests_harness::init_logs();
    let db = TestDb::migrated().await?;
    scenario(&db).await?;
    let sts = StsFixture::start(&db).await?;
    Ok((db, sts))
}

fn assert_error(resp: &http::HttpResponse, status: u16, code: &str, description: &str) {
    let body = resp.json().unwrap_or(Value::Null);
    assert_eq!(resp.status, status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert_eq!(body["error_description"], description, "{body}");
    let request_id = resp
        .header("x-request-id")
        .expect("every response carries x-request-id");
    assert_eq!(body["requestId"], request_id.as_str());
}

/// Verifies a token against the zone's JWKS as served.
async fn verify_with_jwks(sts: &StsFixture, token: &str) -> anyhow::Result<Value> {
    let jwks = http::get(sts.addr, &format!("/.well-known/jwks.json?zone_id={ZONE}")).await?;
    assert_eq!(jwks.status, 200);
    let parsed = UnverifiedJwt::parse(token)?;
    let kid = parsed.header().kid.clone().expect("kid");
    let keys = jwks.json()?;
    let jwk = keys["keys"]
        .as_array()
        .and_then(|k| k.iter().find(|j| j["kid"] == kid.as_str()))
        .cloned()
        .expect("the signing key is published");
    let claims = parsed.verify(&PublicKey::from_jwk(&jwk)?)?;
    Ok(serde_json::from_slice(&claims)?)
}

#[tokio::test]
async fn bootstrap_mints_a_session_mandate_that_verifies_against_the_jwks() -> anyhow::Result<()> {
    let (db, sts) = start().await?;
    let resp = sts.token(&bootstrap_form(AGENT, "resource://crm")).await?;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/json")
    );
    let body = resp.json()?;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["scope"], "agent:lifecycle");
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(
        body["target_resources"],
        serde_json::json!(["resource://crm"])
    );
    let token = body["access_token"].as_str().unwrap();
    let claims = verify_with_jwks(&sts, token).await?;
    assert_eq!(claims["iss"], sts.issuer.as_str());
    assert_eq!(claims["aud"], serde_json::json!([sts.issuer]));
    assert_eq!(claims["use"], "session");
    assert_eq!(claims["sub"], AGENT);
    assert_eq!(claims["client_id"], AGENT);
    assert_eq!(claims["sub_type"], "application");
    assert_eq!(claims["zone_id"], ZONE);
    assert_eq!(claims["sid"], claims["root_sid"]);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    for absent in [
        "agent_session_id",
        "delegation_edge_id",
        "hop_count",
        "delegation_chain",
        "nbf",
        "act",
    ] {
        assert!(claims.get(absent).is_none(), "{absent} must be omitted");
    }
    // The authority record exists, anchored on the sid.
    let sid = claims["sid"].as_str().unwrap();
    let (status, expires): (String, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT status, expires_at FROM caracal.sessions WHERE id = $1")
            .bind(sid)
            .fetch_one(&mut db.admin().await?)
            .await?;
    assert_eq!(status, "active");
    assert_eq!(expires.timestamp(), claims["exp"].as_i64().unwrap());
    sts.stop().await;
    Ok(())
}

#[tokio::test]
async fn delegated_mint_gives_a_single_use_gateway_mandate_with_chain_claims() -> anyhow::Result<()>
{
    let (_db, sts) = start().await?;
    let resp = sts.token(&delegated_form("reports:read")).await?;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    let claims = jwt_claims(resp.json()?["access_token"].as_str().unwrap())?;
    assert_eq!(claims["use"], "gateway");
    assert_eq!(claims["aud"], serde_json::json!([sts.issuer]));
    assert_eq!(claims["scope"], "reports:read");
    assert_eq!(claims["target"], serde_json::json!(["resource://reports"]));
    assert_eq!(claims["agent_session_id"], "s-child");
    assert_eq!(claims["delegation_edge_id"], "e1");
    assert_eq!(claims["source_session_id"], "s-parent");
    assert_eq!(claims["target_session_id"], "s-child");
    assert_eq!(claims["delegation_path"], serde_json::json!(["e1"]));
    assert_eq!(claims["hop_count"], 1);
    assert_eq!(claims["delegation_graph_epoch"], 1);
    assert_eq!(
        claims["delegation_chain"],
        serde_json::json!([
            {"application_id": AGENT, "agent_session_id": "s-parent", "delegation_edge_id": "e1"},
            {"application_id": CHILD, "agent_session_id": "s-child"}
        ])
    );
    assert_eq!(claims["sid"], claims["root_sid"]);
    sts.stop().await;
    Ok(())
}

#[tokio::test]
async fn client_authentication_failures_use_the_catalog() -> anyhow::Result<()> {
    let (_db, sts) = start().await?;
    let mut wrong = bootstrap_form(AGENT, "resource://crm");
    wrong[3] = ("client_secret", "nope");
    assert_error(
        &sts.token(&wrong).await?,
        401,
        "access_denied",
        "invalid client credentials",
    );
    let unknown = bootstrap_form("ghost-app", "resource://crm");
    assert_error(
        &sts.token(&unknown).await?,
        401,
        "access_denied",
        "invalid client credentials",
    );
    let mut other_zone = bootstrap_form(AGENT, "resource://crm");
    other_zone[1] = ("zone_id", "other");
    assert_error(
        &sts.token(&other_zone).await?,
        403,
        "zone_invalid",
        "application agent-app is registered in zone acme, not in zone other",
    );
    let mut no_zone = bootstrap_form(AGENT, "resource://crm");
    no_zone.remove(1);
    assert_error(
        &sts.token(&no_zone).await?,
        400,
        "invalid_token",
        "zone_id is required",
    );
    sts.stop().await;
    Ok(())
}

#[tokio::test]
async fn form_rules_are_checked_in_order_over_http() -> anyhow::Result<()> {
    let (_db, sts) = start().await?;
    let body = http::form_encode(&bootstrap_form(AGENT, "resource://crm"));
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let resp = http::request(sts.addr, "POST", "/oauth/2/token?x=1", &form, body.clone()).await?;
    assert_error(
        &resp,
        400,
        "invalid_token",
        "query parameters are not allowed",
    );
    let resp = http::request(
        sts.addr,
        "POST",
        "/oauth/2/token",
        &[("content-type", "application/json")],
        "{}",
    )
    .await?;
    assert_error(
        &resp,
        415,
        "invalid_token",
        "content type must be application/x-www-form-urlencoded",
    );
    let big = format!("{body}&pad={}", "x".repeat(70 * 1024));
    let resp = http::request(sts.addr, "POST", "/oauth/2/token", &form, big).await?;
    assert_error(
        &resp,
        413,
        "payload_too_large",
        "request body exceeds 64 KiB",
    );
    let resp = http::get(sts.addr, "/oauth/2/token").await?;
    assert_error(&resp, 405, "invalid_token", "method not allowed");
    let dup = format!("{body}&scope=x");
    let resp = http::request(sts.addr, "POST", "/oauth/2/token", &form, dup).await?;
    assert_error(&resp, 400, "invalid_token", "duplicate form field: scope");
    let resp = sts.token(&[("grant_type", "password")]).await?;
    assert_error(&resp, 400, "invalid_token", "unsupported grant_type");
    let mut ttl = bootstrap_form(AGENT, "resource://crm");
    ttl.push(("ttl_seconds", "3601"));
    assert_error(
        &sts.token(&ttl).await?,
        400,
        "invalid_token",
        "ttl_seconds exceeds token TTL cap",
    );
    let mut no_resource = bootstrap_form(AGENT, "resource://crm");
    no_resource.pop();
    assert_error(
        &sts.token(&no_resource).await?,
        400,
        "invalid_token",
        "at least one resource is required",
    );
    let resp = http::request(
        sts.addr,
        "POST",
        "/oauth/2/token",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-caracal-gateway-ts", "1"),
        ],
        body,
    )
    .await?;
    assert_error(
        &resp,
        401,
        "access_denied",
        "invalid gateway exchange signature",
    );
    // An inbound request id is echoed; a bad one is replaced.
    let resp = http::request(
        sts.addr,
        "GET",
        "/nope",
        &[("x-request-id", "trace-123")],
        "",
    )
    .await?;
    assert_eq!(resp.header("x-request-id").as_deref(), Some("trace-123"));
    let resp = http::request(
        sts.addr,
        "GET",
        "/nope",
        &[("x-request-id", "has space")],
        "",
    )
    .await?;
    assert_ne!(resp.header("x-request-id").as_deref(), Some("has space"));
    sts.stop().await;
    Ok(())
}

#[tokio::test]
async fn policy_denials_and_partial_grants() -> anyhow::Result<()> {
    let (_db, sts) = start().await?;
    // Only an unknown resource: nothing granted, no policy reason.
    assert_error(
        &sts.token(&bootstrap_form(AGENT, "resource://ghost"))
            .await?,
        403,
        "access_denied",
        "policy denied",
    );
    // A resource the application does not own.
    assert_error(
        &sts.token(&bootstrap_form(AGENT, "resource://reports"))
            .await?,
        403,
        "access_denied",
        "policy denied (no_rule_matched)",
    );
    // One owned resource and one unknown: the owned one is granted.
    let mut partial = bootstrap_form(AGENT, "resource://crm");
    partial.push(("resource", "resource://ghost"));
    let resp = sts.token(&partial).await?;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.json()?["target_resources"],
        serde_json::json!(["resource://crm"])
    );
    // The role holds reports:read only.
    assert_error(
        &sts.token(&delegated_form("reports:read reports:write"))
            .await?,
        403,
        "access_denied",
        "policy denied (role_scope_mismatch)",
    );
    // A scope the resource does not declare is skipped (scope_mismatch): nothing granted.
    let mut undeclared = bootstrap_form(AGENT, "resource://crm");
    undeclared[4] = ("scope", "crm:delete");
    assert_error(
        &sts.token(&undeclared).await?,
        403,
        "access_denied",
        "policy denied",
    );
    sts.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_zone_without_an_active_policy_set_denies_everything() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    scenario(&db).await?;
    Provision::open(&db)
        .await?
        .exec("UPDATE policy_set_bindings SET active_version_id = NULL")
        .await?;
    let sts = StsFixture::start(&db).await?;
    assert_error(
        &sts.token(&bootstrap_form(AGENT, "resource://crm")).await?,
        403,
        "access_denied",
        "policy denied (no_active_policy_set)",
    );
    sts.stop().await;
    Ok(())
}

#[tokio::test]
async fn ttl_defaults_caps_and_delegation_bounds() -> anyhow::Result<()> {
    let (db, sts) = start().await?;
    let mut short = bootstrap_form(AGENT, "resource://crm");
    short.push(("ttl_seconds", "60"));
    assert_eq!(sts.token(&short).await?.json()?["expires_in"], 60);
    let mut max = bootstrap_form(AGENT, "resource://crm");
    max.push(("ttl_seconds", "3600"));
    assert_eq!(sts.token(&max).await?.json()?["expires_in"], 3600);

    let mut p = Provision::open(&db).await?;
    p.exec(r#"UPDATE caracal.delegation_edges SET constraints_json = '{"max_hops": 1, "ttl_seconds": 120}'"#).await?;
    // The default TTL is capped by the edge; an explicit request above it is refused.
    assert_eq!(
        sts.token(&delegated_form("reports:read")).await?.json()?["expires_in"],
        120
    );
    let mut above = delegated_form("reports:read");
    above.push(("ttl_seconds", "121"));
    assert_error(
        &sts.token(&above).await?,
        403,
        "access_denied",
        "requested ttl exceeds delegation ttl",
    );
    let mut within = delegated_form("reports:read");
    within.push(("ttl_seconds", "100"));
    assert_eq!(sts.token(&within).await?.json()?["expires_in"], 100);
    // The edge's own expiry caps the mandate.
    p.exec(r#"UPDATE caracal.delegation_edges SET constraints_json = '{"max_hops": 1}', expires_at = now() + interval '30 seconds'"#).await?;
    let capped = sts.token(&delegated_form("reports:read")).await?.json()?["expires_in"]
        .as_i64()
        .unwrap();
    assert!(
        (28..=30).contains(&capped),
        "expires_in {capped} must follow the edge expiry"
    );
    sts.stop().await;
    Ok(())
}

#[tokio::test]
async fn revalidation_failures_deny_with_their_descriptions() -> anyhow::Result<()> {
    let (db, sts) = start().await?;
    let mut p = Provision::open(&db).await?;
    let mut wrong_target = delegated_form("reports:read");
    wrong_target[6] = ("agent_session_id", "s-parent");
    assert_error(
        &sts.token(&wrong_target).await?,
        403,
        "access_denied",
        "delegation edge target mismatch",
    );
    let mut no_session = delegated_form("reports:read");
    no_session.remove(6);
    assert_error(
        &sts.token(&no_session).await?,
        403,
        "access_denied",
        "delegation requires a target Session",
    );
    p.exec("UPDATE caracal.agent_sessions SET status = 'suspended' WHERE id = 's-parent'")
        .await?;
    assert_error(
        &sts.token(&delegated_form("reports:read")).await?,
        403,
        "access_denied",
        "delegation source inactive or expired",
    );
    p.exec("UPDATE caracal.agent_sessions SET status = 'active' WHERE id = 's-parent'")
        .await?;
    p.exec("UPDATE caracal.delegation_edges SET status = 'revoked', revoked_at = now() WHERE id = 'e1'").await?;
    assert_error(
        &sts.token(&delegated_form("reports:read")).await?,
        403,
        "access_denied",
        "delegation edge inactive or expired",
    );
    sts.stop().await;
    Ok(())
}

#[tokio::test]
async fn repeated_authentication_failures_block_even_the_right_secret() -> anyhow::Result<()> {
    let (db, sts) = start().await?;
    // Redis is shared by every test: the locked-out application gets a name of its own.
    let app = format!("lockout-{}", uuid::Uuid::new_v4().simple());
    Provision::open(&db)
        .await?
        .application(ZONE, &app, SECRET, &[])
        .await?;
    let mut wrong = bootstrap_form(&app, "resource://reports");
    wrong[3] = ("client_secret", "wrong");
    for _ in 0..61 {
        assert_eq!(sts.token(&wrong).await?.status, 401);
    }
    let right = bootstrap_form(&app, "resource://reports");
    assert_error(
        &sts.token(&right).await?,
        429,
        "provider_rate_limited",
        "authentication rate limit exceeded",
    );
    // Another application is not affected.
    assert_eq!(
        sts.token(&bootstrap_form(AGENT, "resource://ghost"))
            .await?
            .status,
        403
    );
    sts.stop().await;
    Ok(())
}

#[tokio::test]
async fn redis_down_fails_closed_and_audit_spills_to_replay_files() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    scenario(&db).await?;
    let sts = StsFixture::start_with(&db, &[("REDIS_URL", "redis://127.0.0.1:1")]).await?;
    assert_error(
        &sts.token(&bootstrap_form(AGENT, "resource://crm")).await?,
        429,
        "provider_rate_limited",
        "authentication rate limit unavailable",
    );
    let ready = http::get(sts.addr, "/ready").await?;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()?["reason"], "redis_unreachable");
    sts.stop().await;
    Ok(())
}

#[tokio::test]
async fn jwks_answers_with_headers_and_catalog_errors() -> anyhow::Result<()> {
    let (_db, sts) = start().await?;
    assert_error(
        &http::get(sts.addr, "/.well-known/jwks.json").await?,
        400,
        "invalid_token",
        "zone_id required",
    );
    assert_error(
        &http::get(sts.addr, "/.well-known/jwks.json?zone_id=nowhere").await?,
        404,
        "resource_not_found",
        "zone has no signing keys",
    );
    // The zone exists but has not signed anything yet: 404, never an empty set.
    assert_eq!(
        http::get(sts.addr, &format!("/.well-known/jwks.json?zone_id={ZONE}"))
            .await?
            .status,
        404
    );
    assert_eq!(
        sts.token(&bootstrap_form(AGENT, "resource://crm"))
            .await?
            .status,
        200
    );
    let jwks = http::get(sts.addr, &format!("/.well-known/jwks.json?zone_id={ZONE}")).await?;
    assert_eq!(jwks.status, 200);
    assert_eq!(
        jwks.header("cache-control").as_deref(),
        Some("public, max-age=300, must-revalidate")
    );
    assert_eq!(
        jwks.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    let keys = jwks.json()?;
    let key = &keys["keys"][0];
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    assert_eq!(key["alg"], "ES256");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["x"].as_str().unwrap().len(), 43);
    assert_eq!(key["y"].as_str().unwrap().len(), 43);
    sts.stop().await;
    Ok(())
}

#[tokio::test]
async fn subject_token_exchanges_outside_the_gateway_grant_nothing() -> anyhow::Result<()> {
    let (_db, sts) = start().await?;
    let session = sts
        .token(&bootstrap_form(AGENT, "resource://crm"))
        .await?
        .json()?;
    let token = session["access_token"].as_str().unwrap().to_owned();
    let mut form = bootstrap_form(AGENT, "resource://crm");
    form.push(("subject_token", &token));
    form.push((
        "subject_token_type",
        "urn:ietf:params:oauth:token-type:access_token",
    ));
    form[4] = ("scope", "crm:read");
    // Class C (wire-contract §2.4): the contract has no rule for a session mandate presented
    // directly with requested scopes, so nothing is granted and the answer is "policy
    // denied"; step 15's "resource exchanges must use the Gateway" follows only a grant.
    assert_error(
        &sts.token(&form).await?,
        403,
        "access_denied",
        "policy denied (no_rule_matched)",
    );
    // A form session_id other than the token's sid is a binding failure.
    let mut mismatch = form.clone();
    mismatch.push(("session_id", "some-other-record"));
    assert_error(
        &sts.token(&mismatch).await?,
        403,
        "access_denied",
        "authority record mismatch",
    );
    // A tampered token is an invalid subject token.
    let tampered = format!("{}x", &token[..token.len() - 1]);
    form[6] = ("subject_token", &tampered);
    assert_error(
        &sts.token(&form).await?,
        401,
        "invalid_token",
        "invalid subject_token",
    );
    sts.stop().await;
    Ok(())
}

#[tokio::test]
async fn control_keys_mint_resource_mandates_without_a_zone() -> anyhow::Result<()> {
    let (_db, sts) = start().await?;
    let form = [
        ("grant_type", GRANT),
        ("application_id", "ops-app"),
        ("client_secret", SECRET),
        ("resource", "caracal-control"),
        ("scope", "control:read"),
    ];
    let resp = sts.token(&form).await?;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    let body = resp.json()?;
    assert_eq!(
        body["expires_in"], 120,
        "control:max-ttl:120 caps the default"
    );
    let claims = jwt_claims(body["access_token"].as_str().unwrap())?;
    assert_eq!(claims["use"], "resource");
    assert_eq!(claims["aud"], serde_json::json!(["caracal-control"]));
    assert_eq!(claims["zone_id"], ZONE);
    // The control resource for anyone else.
    let mut other = bootstrap_form(AGENT, "caracal-control");
    other[4] = ("scope", "control:read");
    assert_error(
        &sts.token(&other).await?,
        403,
        "access_denied",
        "control resource requires a control key",
    );
    sts.stop().await;
    Ok(())
}

#[tokio::test]
async fn every_decision_reaches_the_audit_stream_signed() -> anyhow::Result<()> {
    let (_db, sts) = start().await?;
    let resp = http::request(
        sts.addr,
        "POST",
        "/oauth/2/token",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-request-id", &format!("audit-{}", sts.instance_id)),
        ],
        http::form_encode(&bootstrap_form(AGENT, "resource://crm")),
    )
    .await?;
    assert_eq!(resp.status, 200);
    let request_id = resp.header("x-request-id").unwrap();
    let client = redis::Client::open(tests_harness::sts::redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let key = control_crypto::HmacKey::from_hex(&sts.audit_key_hex)?;
    let mut found = None;
    for _ in 0..50 {
        let entries: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg("caracal.audit.events")
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(500)
            .query_async(&mut conn)
            .await?;
        found = entries.ids.into_iter().find_map(|entry| {
            let data: String = entry.get("data")?;
            let event: Value = serde_json::from_str(&data).ok()?;
            (event["request_id"] == request_id.as_str())
                .then(|| (data, entry.get::<String>("sig").unwrap_or_default(), event))
        });
        if found.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (data, sig, event) = found.expect("the decision event reaches the stream");
    assert!(
        control_crypto::verify_hmac_sha256_hex(&key, &[data.as_bytes()], &sig),
        "sig covers data"
    );
    assert_eq!(event["event_type"], "token_exchange");
    assert_eq!(event["decision"], "allow");
    assert_eq!(event["evaluation_status"], "complete");
    assert_eq!(event["zone_id"], ZONE);
    assert_eq!(
        event["determining_policies_json"],
        serde_json::json!([{"policy": "caracal-bootstrap"}])
    );
    assert_eq!(
        event["metadata_json"]["decision_contract_version"],
        "2026-07-12"
    );
    assert_eq!(event["metadata_json"]["application_id"], AGENT);
    sts.stop().await;
    Ok(())
}

fn payment_form() -> Vec<(&'static str, &'static str)> {
    vec![
        ("grant_type", GRANT),
        ("zone_id", ZONE),
        ("application_id", CHILD),
        ("client_secret", SECRET),
        ("scope", "payments:send"),
        ("resource", "resource://payments"),
        ("agent_session_id", "s-child"),
        ("delegation_edge_id", "e1"),
    ]
}

#[tokio::test]
async fn a_risky_mint_is_held_for_approval_and_released_once() -> anyhow::Result<()> {
    let (db, sts) = start().await?;
    let held = sts.token(&payment_form()).await?;
    assert_eq!(held.status, 401);
    assert_eq!(
        held.header("www-authenticate").as_deref(),
        Some("Bearer error=\"interaction_required\"")
    );
    let hold = held.json()?;
    assert_eq!(hold["error"], "interaction_required");
    assert_eq!(
        hold["error_description"],
        "Human approval required for this request"
    );
    assert_eq!(hold["approval_type"], "human_approval");
    assert_eq!(hold["state"], "pending");
    assert_eq!(hold["tier"], "high");
    assert_eq!(hold["binding"].as_str().unwrap().len(), 64);
    let id = hold["approval_id"].as_str().unwrap().to_owned();
    // Holds converge per binding.
    assert_eq!(
        sts.token(&payment_form()).await?.json()?["approval_id"],
        id.as_str()
    );

    // The poll answers pending at once, and holds for `wait` while pending.
    let poll = http::get(sts.addr, &format!("/approvals/{id}")).await?;
    assert_eq!(poll.json()?["state"], "pending");
    let started = tokio::time::Instant::now();
    let poll = http::get(sts.addr, &format!("/approvals/{id}?wait=1")).await?;
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    assert_eq!(poll.json()?["state"], "pending");
    assert_error(
        &http::get(sts.addr, &format!("/approvals/{id}?wait=x")).await?,
        400,
        "invalid_token",
        "invalid wait",
    );
    assert_error(
        &http::get(sts.addr, "/approvals/not-a-uuid").await?,
        404,
        "resource_not_found",
        "approval not found",
    );
    assert_error(
        &http::get(sts.addr, &format!("/approvals/{}", uuid::Uuid::new_v4())).await?,
        404,
        "resource_not_found",
        "approval not found",
    );

    // Retrying while pending answers the same hold.
    let mut retry = payment_form();
    retry.push(("approval_id", &id));
    assert_eq!(sts.token(&retry).await?.json()?["approval_id"], id.as_str());

    // An operator approves (the admin API arrives in issue 4): the retry mints once.
    Provision::open(&db).await?
        .exec(&format!("UPDATE caracal.step_up_challenges SET satisfied_at = now(), decided_by = 'admin:test' WHERE id = '{id}'"))
        .await?;
    let waited = http::get(sts.addr, &format!("/approvals/{id}?wait=5")).await?;
    assert_eq!(waited.json()?["state"], "approved");
    let minted = sts.token(&retry).await?;
    assert_eq!(minted.status, 200, "{:?}", minted.json());
    let claims = jwt_claims(minted.json()?["access_token"].as_str().unwrap())?;
    assert_eq!(claims["use"], "gateway");
    assert_eq!(
        http::get(sts.addr, &format!("/approvals/{id}"))
            .await?
            .json()?["state"],
        "consumed"
    );

    // A retry within two minutes re-issues for the same record; later it is refused.
    let again = sts.token(&retry).await?;
    assert_eq!(again.status, 200, "{:?}", again.json());
    assert_eq!(
        jwt_claims(again.json()?["access_token"].as_str().unwrap())?["sid"],
        claims["sid"]
    );
    Provision::open(&db).await?
        .exec(&format!("UPDATE caracal.step_up_challenges SET consumed_at = now() - interval '3 minutes' WHERE id = '{id}'"))
        .await?;
    assert_error(
        &sts.token(&retry).await?,
        409,
        "approval_consumed",
        "approval already consumed",
    );

    // The approval is bound to its request: other scopes do not match.
    let mut other = retry.clone();
    other[4] = ("scope", "reports:read");
    other[5] = ("resource", "resource://reports");
    assert_error(
        &sts.token(&other).await?,
        401,
        "access_denied",
        "approval not found or bindings do not match",
    );
    sts.stop().await;
    Ok(())
}

#[tokio::test]
async fn rejected_and_expired_approvals_are_refused() -> anyhow::Result<()> {
    let (db, sts) = start().await?;
    let id = sts.token(&payment_form()).await?.json()?["approval_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut retry = payment_form();
    retry.push(("approval_id", &id));
    let mut p = Provision::open(&db).await?;
    p.exec(&format!(
        "UPDATE caracal.step_up_challenges SET rejected_at = now() WHERE id = '{id}'"
    ))
    .await?;
    assert_error(
        &sts.token(&retry).await?,
        403,
        "access_denied",
        "approval was rejected",
    );
    // A rejection stays in force for new mints of the same binding until the hold expires.
    assert_error(
        &sts.token(&payment_form()).await?,
        403,
        "access_denied",
        "approval was rejected",
    );
    p.exec(&format!("UPDATE caracal.step_up_challenges SET rejected_at = NULL, expires_at = now() - interval '1 second' WHERE id = '{id}'")).await?;
    assert_error(
        &sts.token(&retry).await?,
        401,
        "access_denied",
        "approval expired",
    );
    // A new mint replaces the expired hold with a fresh one.
    let fresh = sts.token(&payment_form()).await?.json()?;
    assert_ne!(fresh["approval_id"], id.as_str());
    assert_eq!(fresh["state"], "pending");
    sts.stop().await;
    Ok(())
}

/// Publishes a `caracal.policy.invalidate` message as the outbox dispatcher will.
async fn publish_policy_invalidate(
    key_hex: &str,
    zone: &str,
    sign_with_wrong_key: bool,
) -> anyhow::Result<()> {
    let client = redis::Client::open(tests_harness::sts::redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let outbox_id = uuid::Uuid::now_v7().to_string();
    let fields = vec![
        ("zone_id", zone),
        ("policy_set_id", "set"),
        ("policy_set_version_id", "psv"),
        ("outbox_id", outbox_id.as_str()),
    ];
    let key = control_crypto::HmacKey::from_hex(&if sign_with_wrong_key {
        "11".repeat(32)
    } else {
        key_hex.to_owned()
    })?;
    let sig = control_crypto::sign_stream_fields(&key, "caracal.policy.invalidate", &fields)?;
    let mut cmd = redis::cmd("XADD");
    cmd.arg("caracal.policy.invalidate")
        .arg("MAXLEN")
        .arg("~")
        .arg(100_000)
        .arg("*");
    for (k, v) in &fields {
        cmd.arg(*k).arg(*v);
    }
    cmd.arg("_sig").arg(sig);
    let _id: String = cmd.query_async(&mut conn).await?;
    Ok(())
}

#[tokio::test]
async fn a_policy_invalidation_reloads_the_zone_at_once_and_forged_ones_are_ignored()
-> anyhow::Result<()> {
    tests_harness::init_logs();
    let db = TestDb::migrated().await?;
    scenario(&db).await?;
    let sts = StsFixture::start_with(&db, &[("CARACAL_POLICY_POLL_SECONDS", "300")]).await?;
    assert_eq!(
        sts.token(&bootstrap_form(AGENT, "resource://crm"))
            .await?
            .status,
        200
    );
    Provision::open(&db)
        .await?
        .exec("UPDATE caracal.policy_set_bindings SET active_version_id = NULL")
        .await?;

    // A message with a forged signature is dropped: the cached bundle keeps allowing.
    publish_policy_invalidate(&sts.streams_key_hex, ZONE, true).await?;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        sts.token(&bootstrap_form(AGENT, "resource://crm"))
            .await?
            .status,
        200
    );

    // A signed one makes the replica re-read the binding well before the 300 s poll.
    publish_policy_invalidate(&sts.streams_key_hex, ZONE, false).await?;
    let mut denied = false;
    for _ in 0..50 {
        let resp = sts.token(&bootstrap_form(AGENT, "resource://crm")).await?;
        if resp.status == 403 {
            assert_eq!(
                resp.json()?["error_description"],
                "policy denied (no_active_policy_set)"
            );
            denied = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(denied, "the invalidation must reach this replica");
    sts.stop().await;
    Ok(())
}

/// Publishes a signed `caracal.keys.invalidate` message for the zone.
async fn publish_keys_invalidate(key_hex: &str, zone: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(tests_harness::sts::redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let fields = vec![("zone_id", zone), ("kid", "any"), ("reason", "rotated")];
    let key = control_crypto::HmacKey::from_hex(key_hex)?;
    let sig = control_crypto::sign_stream_fields(&key, "caracal.keys.invalidate", &fields)?;
    let mut cmd = redis::cmd("XADD");
    cmd.arg("caracal.keys.invalidate").arg("*");
    for (k, v) in &fields {
        cmd.arg(*k).arg(*v);
    }
    cmd.arg("_sig").arg(sig);
    let _id: String = cmd.query_async(&mut conn).await?;
    Ok(())
}

async fn jwks_kids(sts: &StsFixture) -> anyhow::Result<Vec<String>> {
    let jwks = http::get(sts.addr, &format!("/.well-known/jwks.json?zone_id={ZONE}"))
        .await?
        .json()?;
    Ok(jwks["keys"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|k| k["kid"].as_str().unwrap_or("").to_owned())
        .collect())
}

async fn signing_kid(sts: &StsFixture) -> anyhow::Result<String> {
    let token = sts
        .token(&bootstrap_form(AGENT, "resource://crm"))
        .await?
        .json()?["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    Ok(UnverifiedJwt::parse(&token)?.header().kid.clone().unwrap())
}

#[tokio::test]
async fn key_rotation_prepublishes_then_switches_then_retires_after_the_grace() -> anyhow::Result<()>
{
    tests_harness::init_logs();
    let db = TestDb::migrated().await?;
    scenario(&db).await?;
    let sts = StsFixture::start_with(&db, &[("CARACAL_STS_SWEEP_SECONDS", "1")]).await?;
    let first = signing_kid(&sts).await?;

    // Rotation by the operator command: published now, signs 330 s later.
    let env = std::collections::HashMap::from([
        ("DATABASE_URL".to_owned(), db.url()),
        ("ZONE_KEK".to_owned(), sts.kek_hex.clone()),
    ]);
    let lookup = move |k: &str| env.get(k).cloned();
    let mut out = Vec::new();
    control_ops::keys::rotate(ZONE, &lookup, &mut out).await?;
    assert!(String::from_utf8_lossy(&out).contains("signing key version 2"));
    publish_keys_invalidate(&sts.streams_key_hex, ZONE).await?;
    let mut listed = Vec::new();
    for _ in 0..50 {
        listed = jwks_kids(&sts).await?;
        if listed.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        listed.len(),
        2,
        "the new key is in the JWKS before it signs"
    );
    assert_eq!(
        signing_kid(&sts).await?,
        first,
        "the old key signs until the new one activates"
    );

    // Time passes: the new key signs, the sweeper records it, the old key keeps verifying.
    Provision::open(&db).await?
        .exec("UPDATE caracal.secrets SET activates_at = now() - interval '1 second' WHERE status = 'pending'")
        .await?;
    publish_keys_invalidate(&sts.streams_key_hex, ZONE).await?;
    let mut second = first.clone();
    for _ in 0..50 {
        second = signing_kid(&sts).await?;
        if second != first {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_ne!(second, first);
    let mut statuses: Vec<(String, String)> = Vec::new();
    for _ in 0..50 {
        statuses = sqlx::query_as("SELECT id, status FROM caracal.secrets WHERE name = 'zone_signing_key' ORDER BY version")
            .fetch_all(&mut db.admin().await?)
            .await?;
        if statuses.iter().any(|(_, s)| s == "retiring") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        statuses,
        vec![
            (first.clone(), "retiring".to_owned()),
            (second.clone(), "active".to_owned())
        ]
    );
    assert!(
        jwks_kids(&sts).await?.contains(&first),
        "still published during the grace"
    );

    // After the grace the old key is retired and leaves the JWKS.
    Provision::open(&db).await?
        .exec("UPDATE caracal.secrets SET rotated_at = now() - interval '25 hours' WHERE status = 'retiring'")
        .await?;
    let mut gone = false;
    for _ in 0..60 {
        if !jwks_kids(&sts).await?.contains(&first) {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "a retired key is no longer published");
    sts.stop().await;
    Ok(())
}

/// Finds events on the audit stream by request id.
async fn audit_events_for(request_ids: &[String]) -> anyhow::Result<Vec<Value>> {
    let client = redis::Client::open(tests_harness::sts::redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let entries: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg("caracal.audit.events")
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(5000)
        .query_async(&mut conn)
        .await?;
    Ok(entries
        .ids
        .into_iter()
        .filter_map(|e| e.get::<String>("data"))
        .filter_map(|d| serde_json::from_str::<Value>(&d).ok())
        .filter(|e| request_ids.iter().any(|r| e["request_id"] == r.as_str()))
        .collect())
}

#[tokio::test]
async fn audit_events_spill_while_their_redis_is_away_and_all_arrive_after() -> anyhow::Result<()> {
    tests_harness::init_logs();
    let db = TestDb::migrated().await?;
    scenario(&db).await?;
    let redis_addr: std::net::SocketAddr = "127.0.0.1:6379".parse()?;
    let proxy = tests_harness::proxy::TcpProxy::start(redis_addr).await?;
    let audit_redis = format!("redis://{}", proxy.addr);
    let sts = StsFixture::start_with(&db, &[("AUDIT_REDIS_URL", &audit_redis)]).await?;

    proxy.set_up(false);
    let mut request_ids = Vec::new();
    for i in 0..5 {
        let id = format!("spill-{}-{i}", sts.instance_id);
        let resp = http::request(
            sts.addr,
            "POST",
            "/oauth/2/token",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("x-request-id", &id),
            ],
            http::form_encode(&bootstrap_form(AGENT, "resource://crm")),
        )
        .await?;
        // Evidence goes to the replay volume, so the mint itself still succeeds.
        assert_eq!(resp.status, 200, "{:?}", resp.json());
        request_ids.push(id);
    }
    // The events are on disk, fsynced, in the replay directory.
    let mut on_disk = 0;
    for _ in 0..50 {
        on_disk = count_replay_lines(sts.replay_dir.path(), &request_ids)?;
        if on_disk == request_ids.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        on_disk,
        request_ids.len(),
        "every event spilled to a segment"
    );
    assert!(
        audit_events_for(&request_ids).await?.is_empty(),
        "nothing reached Redis while it was away"
    );

    proxy.set_up(true);
    let mut arrived = Vec::new();
    for _ in 0..100 {
        arrived = audit_events_for(&request_ids).await?;
        if arrived.len() >= request_ids.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut seen: Vec<&str> = arrived
        .iter()
        .filter_map(|e| e["request_id"].as_str())
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen.len(),
        request_ids.len(),
        "every spilled event is replayed once Redis is back"
    );
    sts.stop().await;
    Ok(())
}

/// Lines in the replay segments that carry one of `request_ids`.
fn count_replay_lines(dir: &std::path::Path, request_ids: &[String]) -> anyhow::Result<usize> {
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().contains("seg-")
                && !path.to_string_lossy().ends_with(".cursor")
            {
                let text = std::fs::read_to_string(&path)?;
                count += text
                    .lines()
                    .filter(|l| request_ids.iter().any(|r| l.contains(r.as_str())))
                    .count();
            }
        }
    }
    Ok(count)
}

#[tokio::test]
async fn a_replica_with_the_wrong_kek_stays_unready_and_never_signs() -> anyhow::Result<()> {
    tests_harness::init_logs();
    let db = TestDb::create().await?;
    // `caracal migrate` with the right key seals the canary.
    let right = "7a".repeat(32);
    let env = std::collections::HashMap::from([
        ("DATABASE_URL".to_owned(), db.url()),
        ("ZONE_KEK".to_owned(), right),
    ]);
    let lookup = move |k: &str| env.get(k).cloned();
    let mut out = Vec::new();
    control_ops::migrate::run(
        &control_ops::migrate::MigrateArgs::default(),
        &lookup,
        &mut out,
    )
    .await?;
    assert!(String::from_utf8_lossy(&out).contains("sealed the KEK canary"));
    scenario(&db).await?;

    let good = StsFixture::start(&db).await?;
    assert_eq!(ready_within(&good, 5).await?, 200);
    assert_eq!(
        good.token(&bootstrap_form(AGENT, "resource://crm"))
            .await?
            .status,
        200
    );
    good.stop().await;

    let wrong = "4b".repeat(32);
    let bad = StsFixture::start_with(&db, &[("ZONE_KEK", &wrong)]).await?;
    let ready = http::get(bad.addr, "/ready").await?;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()?["reason"], "zone_kek_mismatch");
    // The JWKS still publishes the zone key from its clear public half ...
    assert_eq!(
        http::get(bad.addr, &format!("/.well-known/jwks.json?zone_id={ZONE}"))
            .await?
            .status,
        200
    );
    // ... but nothing is ever signed with a key this replica cannot open.
    assert_error(
        &bad.token(&bootstrap_form(AGENT, "resource://crm")).await?,
        500,
        "internal_error",
        "token issuance failed",
    );
    bad.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_burst_of_first_mints_in_a_new_zone_all_succeed_with_one_key() -> anyhow::Result<()> {
    let (db, sts) = start().await?;
    let mut requests = Vec::new();
    for _ in 0..32 {
        let addr = sts.addr;
        requests.push(tokio::spawn(async move {
            http::post_form(
                addr,
                "/oauth/2/token",
                &bootstrap_form(AGENT, "resource://crm"),
            )
            .await
        }));
    }
    for request in requests {
        let resp = request.await??;
        assert_eq!(resp.status, 200, "{:?}", resp.json());
    }
    let keys: i64 =
        sqlx::query_scalar("SELECT count(*) FROM caracal.secrets WHERE name = 'zone_signing_key'")
            .fetch_one(&mut db.admin().await?)
            .await?;
    assert_eq!(keys, 1, "concurrent first mints create exactly one key");
    sts.stop().await;
    Ok(())
}

/// Authority §5.7: each replica heartbeats into `caracal:instances:sts` and reports every load
/// attempt of a bound policy-set version into `caracal:policy:status:<zone>`, `loaded` with
/// the manifest hash, `failed` with the reason; a stopped replica leaves the live set.
#[tokio::test]
async fn replicas_report_presence_and_each_policy_load_attempt() -> anyhow::Result<()> {
    use control_events::presence::{LoadState, live_instances, policy_statuses};
    tests_harness::init_logs();
    let db = TestDb::migrated().await?;
    scenario(&db).await?;
    // Zone `other` gets an active version whose document does not compile.
    let mut p = Provision::open(&db).await?;
    p.activate_policy(
        "other",
        "broken",
        "package caracal.authz\nthis is not rego {",
    )
    .await?;
    let sts = StsFixture::start(&db).await?;
    let field = format!("sts/{}", sts.instance_id);
    let instance = sts.instance_id.clone();
    let (version, manifest): (String, String) = sqlx::query_as(
        "SELECT v.id, v.manifest_sha256 FROM caracal.policy_set_bindings b \
         JOIN caracal.policy_set_versions v ON v.id = b.active_version_id WHERE b.zone_id = $1",
    )
    .bind(ZONE)
    .fetch_one(&mut db.admin().await?)
    .await?;
    let client = redis::Client::open(tests_harness::sts::redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut loaded = None;
    let mut failed = None;
    for _ in 0..100 {
        loaded = policy_statuses(&mut conn, ZONE).await?.remove(&field);
        failed = policy_statuses(&mut conn, "other").await?.remove(&field);
        if loaded.is_some() && failed.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let loaded = loaded.expect("a loaded report for acme");
    assert_eq!(loaded.state, LoadState::Loaded);
    assert_eq!(loaded.policy_set_version_id, version);
    assert_eq!(loaded.manifest_sha256, manifest);
    assert!(loaded.error.is_none());
    let failed = failed.expect("a failed report for other");
    assert_eq!(failed.state, LoadState::Failed);
    assert_eq!(failed.policy_set_version_id, "other-broken-psv");
    assert!(
        failed.error.as_deref().is_some_and(|e| !e.is_empty()),
        "{failed:?}"
    );
    let live = live_instances(&mut conn, "sts", chrono::Utc::now()).await?;
    assert!(live.contains(&instance), "{live:?}");
    sts.stop().await;
    let live = live_instances(&mut conn, "sts", chrono::Utc::now()).await?;
    assert!(
        !live.contains(&instance),
        "a stopped replica leaves: {live:?}"
    );
    for zone in [ZONE, "other"] {
        let _: i64 = redis::cmd("HDEL")
            .arg(control_events::streams::policy_status_key(zone))
            .arg(&field)
            .query_async(&mut conn)
            .await?;
    }
    Ok(())
}

/// `AUDIT_EMIT_MODE=sync` (storage §9.1): a mint's answer leaves only after its audit event
/// is accepted, so the event is on the stream the moment the client reads the token.
#[tokio::test]
async fn in_sync_audit_mode_the_event_is_on_the_stream_before_the_answer() -> anyhow::Result<()> {
    tests_harness::init_logs();
    let db = TestDb::migrated().await?;
    scenario(&db).await?;
    let redis = tests_harness::sts::isolated_redis(9).await?;
    let sts = StsFixture::start_with(
        &db,
        &[
            ("AUDIT_EMIT_MODE", "sync"),
            ("REDIS_URL", redis.as_str()),
            ("AUDIT_REDIS_URL", redis.as_str()),
        ],
    )
    .await?;
    let mut conn = redis::Client::open(redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    for _ in 0..5 {
        let resp = sts.token(&bootstrap_form(AGENT, "resource://crm")).await?;
        assert_eq!(resp.status, 200, "{:?}", resp.json());
        let request_id = resp.header("x-request-id").expect("request id");
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg("caracal.audit.events")
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await?;
        let found = entries
            .ids
            .iter()
            .filter_map(|e| e.get::<String>("data"))
            .filter_map(|d| serde_json::from_str::<Value>(&d).ok())
            .any(|e| e["request_id"] == request_id.as_str() && e["event_type"] == "token_exchange");
        assert!(
            found,
            "the event of {request_id} must be on the stream already"
        );
    }
    sts.stop().await;
    let _flushed = tests_harness::sts::isolated_redis(9).await?;
    Ok(())
}

/// Authority §6.3: the sweeper purges terminal holds (consumed, rejected, expired) 24 h
/// after their last transition and keeps every other hold.
#[tokio::test]
async fn the_sweeper_purges_terminal_holds_a_day_after_their_last_transition() -> anyhow::Result<()>
{
    tests_harness::init_logs();
    let db = TestDb::migrated().await?;
    scenario(&db).await?;
    // (id, consumed, rejected, satisfied, expires in hours, last change hours ago, kept)
    let holds: [(&str, bool, bool, bool, i32, i32, bool); 7] = [
        ("consumed-old", true, false, true, 1, 25, false),
        ("consumed-new", true, false, true, 1, 1, true),
        ("rejected-old", false, true, false, 1, 25, false),
        ("expired-old", false, false, false, -25, 30, false),
        ("expired-new", false, false, false, -1, 30, true),
        ("pending", false, false, false, 1, 30, true),
        ("approved", false, false, true, 1, 30, true),
    ];
    let mut admin = db.admin().await?;
    for (i, (id, consumed, rejected, satisfied, expires_h, changed_h, _)) in
        holds.iter().enumerate()
    {
        sqlx::query(
            "INSERT INTO caracal.step_up_challenges (id, zone_id, principal_id, resource_set_hash, \
               expires_at, satisfied_at, rejected_at, consumed_at, created_at, updated_at) \
             VALUES ($1, $2, $3, sha256($1::bytea), now() + make_interval(hours => $4), \
               CASE WHEN $5 THEN now() - make_interval(hours => $7) END, \
               CASE WHEN $6 THEN now() - make_interval(hours => $7) END, \
               CASE WHEN $8 THEN now() - make_interval(hours => $7) END, \
               now() - make_interval(hours => $7), now() - make_interval(hours => $7))",
        )
        .bind(id)
        .bind(ZONE)
        .bind(format!("principal-{i}"))
        .bind(expires_h)
        .bind(satisfied)
        .bind(rejected)
        .bind(changed_h)
        .bind(consumed)
        .execute(&mut admin)
        .await?;
    }
    let sts = StsFixture::start_with(&db, &[("CARACAL_STS_SWEEP_SECONDS", "1")]).await?;
    let expected: Vec<&str> = holds.iter().filter(|h| h.6).map(|h| h.0).collect();
    let mut left: Vec<String> = Vec::new();
    for _ in 0..50 {
        left = sqlx::query_scalar(
            "SELECT id FROM caracal.step_up_challenges WHERE zone_id = $1 ORDER BY id",
        )
        .bind(ZONE)
        .fetch_all(&mut admin)
        .await?;
        if left.len() == expected.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut expected: Vec<String> = expected.into_iter().map(str::to_owned).collect();
    expected.sort();
    assert_eq!(left, expected);
    sts.stop().await;
    Ok(())
}

/// `/metrics` and `/metrics.json` carry the audit emitter's state and counters.
#[tokio::test]
async fn metrics_report_the_audit_emitter() -> anyhow::Result<()> {
    let (_db, sts) = start().await?;
    let resp = sts.token(&bootstrap_form(AGENT, "resource://crm")).await?;
    assert_eq!(resp.status, 200);
    let mut acknowledged = false;
    for _ in 0..50 {
        let metrics = http::get(sts.addr, "/metrics.json").await?.json()?;
        assert_eq!(metrics["caracal_sts_audit_replay_writable"], 1, "{metrics}");
        assert_eq!(metrics["caracal_sts_audit_evidence_lost"], 0, "{metrics}");
        if metrics["caracal_sts_audit_xadded_total"]
            .as_u64()
            .unwrap_or(0)
            >= 1
        {
            assert_eq!(metrics["caracal_sts_audit_redis_ok"], 1, "{metrics}");
            acknowledged = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(acknowledged, "the mint's event was acknowledged by Redis");
    let text = String::from_utf8_lossy(&http::get(sts.addr, "/metrics").await?.body).into_owned();
    for name in [
        "# TYPE caracal_sts_audit_spilled_total counter",
        "# TYPE caracal_sts_audit_replay_full gauge",
        "caracal_sts_audit_dropped_total 0",
    ] {
        assert!(text.contains(name), "{name} in {text}");
    }
    sts.stop().await;
    Ok(())
}

/// Polls `/ready` for up to `secs` seconds; returns the last status.
async fn ready_within(sts: &StsFixture, secs: u64) -> anyhow::Result<u16> {
    let mut status = 0;
    for _ in 0..secs * 20 {
        status = http::get(sts.addr, "/ready").await?.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(status)
}

/// wire-contract §2.11: a replica whose invalidation consumers cannot read their stream is
/// not ready (`stream_consumers_not_ready`); it becomes ready once they can.
#[tokio::test]
async fn a_replica_whose_invalidation_consumers_cannot_read_is_not_ready() -> anyhow::Result<()> {
    tests_harness::init_logs();
    let db = TestDb::migrated().await?;
    scenario(&db).await?;
    let redis = tests_harness::sts::isolated_redis(10).await?;
    let mut conn = redis::Client::open(redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    // The keys stream's name holds a plain string: creating the group fails (WRONGTYPE).
    let _: () = redis::cmd("SET")
        .arg("caracal.keys.invalidate")
        .arg("not a stream")
        .query_async(&mut conn)
        .await?;
    let sts = StsFixture::start_with(
        &db,
        &[
            ("REDIS_URL", redis.as_str()),
            ("AUDIT_REDIS_URL", redis.as_str()),
        ],
    )
    .await?;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let ready = http::get(sts.addr, "/ready").await?;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()?["reason"], "stream_consumers_not_ready");
    let _: () = redis::cmd("DEL")
        .arg("caracal.keys.invalidate")
        .query_async(&mut conn)
        .await?;
    assert_eq!(
        ready_within(&sts, 10).await?,
        200,
        "the consumer retries and connects"
    );
    sts.stop().await;
    let _flushed = tests_harness::sts::isolated_redis(10).await?;
    Ok(())
}
