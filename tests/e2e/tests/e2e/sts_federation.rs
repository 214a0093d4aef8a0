//! Federation (wire-contract §2.4 D, authority §3 step 6) and subject approval decisions
//! (wire-contract §2.10, authority §6.5) against a real STS, Postgres, Redis and a real
//! OIDC issuer serving its JWKS on 127.0.0.1.

use serde_json::{Value, json};
use tests_harness::{
    TestDb, http,
    oidc::{self, OidcIssuer},
    provision::Provision,
    sts::{GRANT, StsFixture, jwt_claims},
};

const ZONE: &str = "acme";
const AGENT: &str = "agent-app";
const CHILD: &str = "child-app";
const SECRET: &str = "s3cret-value";
const AUDIENCE: &str = "acme-web";
const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";

const POLICY: &str = r#"package caracal.authz
import rego.v1
# caracal:data-document
app_ids := {"agent": "agent-app", "child": "child-app"}
grants := {
  "resource://payments": {"application": "child", "roles": {"analyst": ["payments:send"]}},
  "resource://reports": {"application": "child", "roles": {"analyst": ["reports:read", "reports:write"]}},
  "resource://wire": {"application": "child", "roles": {"analyst": ["wire:send"]}}
}
risk := [
  {"scope": "payments:send", "tier": "high"},
  {"scope": "reports:write", "tier": "medium"},
  {"scope": "wire:send", "tier": "critical"}
]
approval_tiers := [
  {"tier": "high", "approver": "subject"},
  {"tier": "medium", "approver": "any", "privacy": "pseudonymous"},
  {"tier": "critical", "approver": "operator"}
]
"#;

/// Zone `acme` with two applications, three risky resources, an edge from agent-app's
/// session to child-app's, and the issuer registered with audience `acme-web`.
async fn start() -> anyhow::Result<(TestDb, StsFixture, OidcIssuer)> {
    tests_harness::init_logs();
    let db = TestDb::migrated().await?;
    let issuer = OidcIssuer::start().await?;
    let mut p = Provision::open(&db).await?;
    p.zone(ZONE).await?;
    p.zone("other").await?;
    p.application(ZONE, AGENT, SECRET, &[]).await?;
    p.application(ZONE, CHILD, SECRET, &[]).await?;
    p.application("other", "other-app", SECRET, &[]).await?;
    p.provider_none(ZONE, "p-none").await?;
    for (id, scopes) in [
        ("payments", &["payments:send"][..]),
        ("reports", &["reports:read", "reports:write"][..]),
        ("wire", &["wire:send"][..]),
    ] {
        p.resource(
            ZONE,
            id,
            &format!("resource://{id}"),
            scopes,
            Some("http://127.0.0.1:9/"),
            "p-none",
        )
        .await?;
    }
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
        &[
            "payments:send",
            "reports:read",
            "reports:write",
            "wire:send",
        ],
        json!({"max_hops": 1}),
        3600,
        None,
    )
    .await?;
    issuer
        .register(&mut p, ZONE, "si-1", Some(AUDIENCE))
        .await?;
    let sts = StsFixture::start(&db).await?;
    Ok((db, sts, issuer))
}

fn federation_form<'a>(app: &'a str, id_token: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", GRANT),
        ("zone_id", ZONE),
        ("application_id", app),
        ("client_secret", SECRET),
        ("subject_token", id_token),
        ("subject_token_type", ID_TOKEN_TYPE),
    ]
}

fn assert_error(resp: &http::HttpResponse, status: u16, code: &str, description: &str) {
    let body = resp.json().unwrap_or(Value::Null);
    assert_eq!(resp.status, status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert_eq!(body["error_description"], description, "{body}");
    let request_id = resp.header("x-request-id").expect("x-request-id");
    assert_eq!(body["requestId"], request_id.as_str());
}

/// Federates `sub` through `app` and returns the mandate.
async fn federate(
    sts: &StsFixture,
    issuer: &OidcIssuer,
    app: &str,
    sub: &str,
) -> anyhow::Result<String> {
    let token = issuer.sign_rs256(&issuer.claims(sub, AUDIENCE));
    let resp = sts.token(&federation_form(app, &token)).await?;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    Ok(resp.json()?["access_token"].as_str().unwrap().to_owned())
}

/// The audit events of one request, read from the stream.
async fn audit_events(request_id: &str, expected: usize) -> anyhow::Result<Vec<Value>> {
    let client = redis::Client::open(tests_harness::sts::redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut found = Vec::new();
    for _ in 0..50 {
        let entries: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg("caracal.audit.events")
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(2000)
            .query_async(&mut conn)
            .await?;
        found = entries
            .ids
            .into_iter()
            .filter_map(|entry| {
                let data: String = entry.get("data")?;
                let event: Value = serde_json::from_str(&data).ok()?;
                (event["request_id"] == request_id).then_some(event)
            })
            .collect();
        if found.len() >= expected {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(found)
}

async fn post_with_request_id(
    sts: &StsFixture,
    form: &[(&str, &str)],
    request_id: &str,
) -> anyhow::Result<http::HttpResponse> {
    http::request(
        sts.addr,
        "POST",
        "/oauth/2/token",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-request-id", request_id),
        ],
        http::form_encode(form),
    )
    .await
}

#[tokio::test]
async fn federation_mints_a_user_session_mandate_for_rs256_and_es256() -> anyhow::Result<()> {
    let (db, sts, issuer) = start().await?;
    let sub = "Usér Ünïcode/42@例え.jp";
    let request_id = format!("fed-ok-{}", sts.instance_id);
    let token = issuer.sign_rs256(&issuer.claims(sub, AUDIENCE));
    let resp = post_with_request_id(&sts, &federation_form(CHILD, &token), &request_id).await?;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    let body = resp.json()?;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert!(body.get("scope").is_none() && body.get("target_resources").is_none());
    let mandate = body["access_token"].as_str().unwrap();
    let claims = jwt_claims(mandate)?;
    assert_eq!(claims["use"], "session");
    assert_eq!(claims["sub_type"], "user");
    assert_eq!(claims["sub"], sub, "the external sub is kept byte-exact");
    assert_eq!(claims["iss"], sts.issuer.as_str());
    assert_eq!(claims["aud"], json!([sts.issuer]));
    assert_eq!(claims["zone_id"], ZONE);
    assert_eq!(claims["client_id"], CHILD);
    assert_eq!(claims["sid"], claims["root_sid"]);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    for absent in [
        "scope",
        "target",
        "agent_session_id",
        "delegation_edge_id",
        "nbf",
    ] {
        assert!(claims.get(absent).is_none(), "{absent} must be omitted");
    }
    // The mandate verifies against the zone's JWKS.
    let jwks = http::get(sts.addr, &format!("/.well-known/jwks.json?zone_id={ZONE}")).await?;
    let parsed = control_crypto::UnverifiedJwt::parse(mandate)?;
    let kid = parsed.header().kid.clone().unwrap();
    let jwk = jwks.json()?["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .cloned()
        .unwrap();
    parsed.verify(&control_crypto::PublicKey::from_jwk(&jwk)?)?;

    // One authority record: a user record of the calling application, its own root.
    let sid = claims["sid"].as_str().unwrap();
    let row: (
        String,
        String,
        Option<String>,
        String,
        String,
        chrono::DateTime<chrono::Utc>,
    ) = sqlx::query_as(
        "SELECT session_type, subject_id, application_id, root_id, status, expires_at \
               FROM caracal.sessions WHERE id = $1",
    )
    .bind(sid)
    .fetch_one(&mut db.admin().await?)
    .await?;
    assert_eq!(row.0, "user");
    assert_eq!(row.1, sub);
    assert_eq!(row.2.as_deref(), Some(CHILD));
    assert_eq!(row.3, sid);
    assert_eq!(row.4, "active");
    assert_eq!(row.5.timestamp(), claims["exp"].as_i64().unwrap());

    // One allow event with the federation policy.
    let events = audit_events(&request_id, 1).await?;
    let allow = events
        .iter()
        .find(|e| e["event_type"] == "token_exchange")
        .expect("a decision event");
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["evaluation_status"], "complete");
    assert_eq!(
        allow["determining_policies_json"],
        json!([{"policy": "caracal-subject-federation"}])
    );
    assert_eq!(allow["metadata_json"]["application_id"], CHILD);
    assert_eq!(allow["metadata_json"]["session_id"], sid);
    assert_eq!(allow["metadata_json"]["issuer"], issuer.issuer.as_str());
    assert_eq!(
        allow["metadata_json"]["decision_contract_version"],
        "2026-07-12"
    );
    assert!(
        !allow.to_string().contains(sub),
        "the subject never enters audit"
    );

    // ES256 works too, with ttl_seconds; the key set came from the cache.
    let es = issuer.sign_es256(&issuer.claims("user-es", AUDIENCE));
    let mut form = federation_form(CHILD, &es);
    form.push(("ttl_seconds", "120"));
    let resp = sts.token(&form).await?;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    assert_eq!(resp.json()?["expires_in"], 120);
    let claims = jwt_claims(resp.json()?["access_token"].as_str().unwrap())?;
    assert_eq!(claims["sub"], "user-es");
    assert_eq!(issuer.fetches(), 1, "the key set is cached per URL");

    // An audience list containing the configured audience is accepted.
    let mut listed = issuer.claims("user-list", AUDIENCE);
    listed["aud"] = json!(["other", AUDIENCE]);
    let resp = sts
        .token(&federation_form(CHILD, &issuer.sign_rs256(&listed)))
        .await?;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    sts.stop().await;
    Ok(())
}

#[tokio::test]
async fn invalid_id_tokens_are_401_invalid_token_with_their_cause() -> anyhow::Result<()> {
    let (_db, sts, issuer) = start().await?;
    let claims = |sub: &str| issuer.claims(sub, AUDIENCE);
    let with = |sub: &str, name: &str, value: Value| {
        let mut c = claims(sub);
        c[name] = value;
        c
    };
    let without = |name: &str| {
        let mut c = claims("user-1");
        c.as_object_mut().unwrap().remove(name);
        c
    };
    let now = oidc::unix_now();
    let cases: Vec<(String, &str)> = vec![
        (
            issuer.sign_rs256(&with("user-1", "iss", json!("https://issuer.invalid"))),
            "issuer is not trusted by this zone",
        ),
        (issuer.sign_rs256(&without("iss")), "missing iss"),
        (
            issuer.sign_rs256(&with("user-1", "aud", json!("someone-else"))),
            "audience mismatch",
        ),
        (issuer.sign_rs256(&without("aud")), "audience mismatch"),
        (
            issuer.sign_rs256(&with("user-1", "exp", json!(now - 120))),
            "token expired",
        ),
        (issuer.sign_rs256(&without("exp")), "missing exp"),
        (
            issuer.sign_rs256(&with("user-1", "nbf", json!(now + 600))),
            "token not yet valid",
        ),
        (
            issuer.sign_rs256(&with("user-1", "iat", json!(now + 600))),
            "token issued in the future",
        ),
        (
            issuer.tampered(&claims("user-1"), &claims("admin")),
            "signature does not verify",
        ),
        (
            issuer.sign_with_unknown_key("rotated-away", &claims("user-1")),
            "unknown signing key",
        ),
        (issuer.unsigned(&claims("user-1")), "unsupported algorithm"),
        (issuer.hs256(&claims("user-1")), "unsupported algorithm"),
        (
            issuer.sign_rs256_with_header(&json!({"alg": "RS256"}), &claims("user-1")),
            "missing kid",
        ),
        (
            issuer.sign_rs256_with_header(
                &json!({"alg": "ES256", "kid": oidc::RSA_KID}),
                &claims("user-1"),
            ),
            "signing key does not match the token algorithm",
        ),
        ("not-a-jwt".to_owned(), "malformed token"),
        (
            issuer.sign_rs256(&claims("caracal:app-1")),
            "sub must not start with caracal:",
        ),
        (
            issuer.sign_rs256(&claims("user\u{0007}bell")),
            "sub contains control characters",
        ),
        (
            issuer.sign_rs256(&claims("user\u{202E}evil")),
            "sub contains bidirectional control characters",
        ),
        (
            issuer.sign_rs256(&claims(" user")),
            "sub has leading or trailing whitespace",
        ),
        (
            issuer.sign_rs256(&claims(&"x".repeat(513))),
            "sub exceeds 512 bytes",
        ),
        (issuer.sign_rs256(&claims("")), "missing sub"),
        (issuer.sign_rs256(&without("sub")), "missing sub"),
    ];
    for (token, cause) in cases {
        let resp = sts.token(&federation_form(CHILD, &token)).await?;
        assert_error(
            &resp,
            401,
            "invalid_token",
            &format!("invalid subject_token: {cause}"),
        );
    }
    // Unknown kids refetch at most once per 30 s per URL.
    let fetched = issuer.fetches();
    assert!(fetched <= 2, "{fetched} fetches");
    for kid in ["k-a", "k-b", "k-c"] {
        let resp = sts
            .token(&federation_form(
                CHILD,
                &issuer.sign_with_unknown_key(kid, &claims("user-1")),
            ))
            .await?;
        assert_eq!(resp.status, 401);
    }
    assert_eq!(issuer.fetches(), fetched, "no refetch inside the cooldown");

    // The rejection is audited with its cause, never the token or the subject.
    let request_id = format!("fed-bad-{}", sts.instance_id);
    let token = issuer.sign_rs256(&with("secret-user", "aud", json!("nope")));
    let resp = post_with_request_id(&sts, &federation_form(CHILD, &token), &request_id).await?;
    assert_eq!(resp.status, 401);
    let events = audit_events(&request_id, 1).await?;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["decision"], "deny");
    assert_eq!(
        events[0]["evaluation_status"],
        "subject_federation_rejected"
    );
    assert_eq!(events[0]["metadata_json"]["reason"], "audience mismatch");
    assert!(!events[0].to_string().contains("secret-user"));
    sts.stop().await;
    Ok(())
}

#[tokio::test]
async fn federation_forms_with_authority_fields_are_400() -> anyhow::Result<()> {
    let (_db, sts, issuer) = start().await?;
    let token = issuer.sign_rs256(&issuer.claims("user-1", AUDIENCE));
    for extra in [
        ("resource", "resource://reports"),
        ("scope", "reports:read"),
        ("session_id", "rec-1"),
        ("agent_session_id", "s-child"),
        ("delegation_edge_id", "e1"),
        ("approval_id", "00000000-0000-4000-8000-000000000000"),
    ] {
        let mut form = federation_form(CHILD, &token);
        form.push(extra);
        assert_error(
            &sts.token(&form).await?,
            400,
            "invalid_token",
            "federation takes no resource, scope, session, delegation or approval",
        );
    }
    let request_id = format!("fed-invalid-{}", sts.instance_id);
    let mut form = federation_form(CHILD, &token);
    form.push(("scope", "x"));
    assert_eq!(
        post_with_request_id(&sts, &form, &request_id).await?.status,
        400
    );
    let events = audit_events(&request_id, 1).await?;
    assert_eq!(events[0]["evaluation_status"], "subject_federation_invalid");

    let mut form = federation_form(CHILD, &token);
    form.push(("ttl_seconds", "3601"));
    assert_error(
        &sts.token(&form).await?,
        400,
        "invalid_token",
        "ttl_seconds exceeds token TTL cap",
    );
    // The client authenticates first.
    let mut form = federation_form(CHILD, &token);
    form[3] = ("client_secret", "wrong");
    assert_error(
        &sts.token(&form).await?,
        401,
        "access_denied",
        "invalid client credentials",
    );
    sts.stop().await;
    Ok(())
}

#[tokio::test]
async fn archived_foreign_and_unreachable_issuers_fail_closed() -> anyhow::Result<()> {
    let (db, sts, issuer) = start().await?;
    let token = issuer.sign_rs256(&issuer.claims("user-1", AUDIENCE));
    // Another zone's issuer is not this zone's.
    let mut form = federation_form("other-app", &token);
    form[1] = ("zone_id", "other");
    assert_error(
        &sts.token(&form).await?,
        401,
        "invalid_token",
        "invalid subject_token: issuer is not trusted by this zone",
    );
    // Archived: no longer trusted.
    let mut p = Provision::open(&db).await?;
    p.exec("UPDATE caracal.subject_issuers SET archived_at = now() WHERE id = 'si-1'")
        .await?;
    assert_error(
        &sts.token(&federation_form(CHILD, &token)).await?,
        401,
        "invalid_token",
        "invalid subject_token: issuer is not trusted by this zone",
    );

    // Unreachable key set (nothing listens on the port), a 404, a non-loopback http URL,
    // and a key set with no usable key: all fail closed with the same cause.
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        listener.local_addr()?
    };
    for (n, jwks_url) in [
        format!("http://{closed}/jwks.json"),
        format!("http://{}/missing.json", issuer.addr),
        "http://issuer.invalid/jwks.json".to_owned(),
    ]
    .into_iter()
    .enumerate()
    {
        let iss = format!("https://issuer-{n}.example");
        oidc::register_subject_issuer(&mut p, ZONE, &format!("si-x{n}"), &iss, &jwks_url, None)
            .await?;
        let mut claims = issuer.claims("user-1", AUDIENCE);
        claims["iss"] = json!(iss);
        assert_error(
            &sts.token(&federation_form(CHILD, &issuer.sign_rs256(&claims)))
                .await?,
            401,
            "invalid_token",
            "invalid subject_token: issuer keys unavailable",
        );
    }
    p.exec("UPDATE caracal.subject_issuers SET archived_at = NULL WHERE id = 'si-1'")
        .await?;
    issuer.set_keys(vec![json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"})]);
    assert_error(
        &sts.token(&federation_form(CHILD, &token)).await?,
        401,
        "invalid_token",
        "invalid subject_token: issuer keys unavailable",
    );
    sts.stop().await;
    Ok(())
}

// ---- subject decisions ---------------------------------------------------------------

fn delegated_form(
    scope: &'static str,
    resource: &'static str,
) -> Vec<(&'static str, &'static str)> {
    vec![
        ("grant_type", GRANT),
        ("zone_id", ZONE),
        ("application_id", CHILD),
        ("client_secret", SECRET),
        ("scope", scope),
        ("resource", resource),
        ("agent_session_id", "s-child"),
        ("delegation_edge_id", "e1"),
    ]
}

/// Raises a hold; returns `(approval_id, binding)`.
async fn hold(
    sts: &StsFixture,
    scope: &'static str,
    resource: &'static str,
) -> anyhow::Result<(String, String)> {
    let resp = sts.token(&delegated_form(scope, resource)).await?;
    assert_eq!(resp.status, 401, "{:?}", resp.json());
    let body = resp.json()?;
    assert_eq!(body["error"], "interaction_required");
    Ok((
        body["approval_id"].as_str().unwrap().to_owned(),
        body["binding"].as_str().unwrap().to_owned(),
    ))
}

async fn decide(
    sts: &StsFixture,
    id: &str,
    bearer: Option<&str>,
    body: &Value,
) -> anyhow::Result<http::HttpResponse> {
    let authorization = bearer.map(|b| format!("Bearer {b}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &authorization {
        headers.push(("authorization", a.as_str()));
    }
    http::request(
        sts.addr,
        "POST",
        &format!("/approvals/{id}/decision"),
        &headers,
        body.to_string(),
    )
    .await
}

#[derive(Debug, sqlx::FromRow)]
struct Decided {
    satisfied_at: Option<chrono::DateTime<chrono::Utc>>,
    rejected_at: Option<chrono::DateTime<chrono::Utc>>,
    decided_by: Option<String>,
    approver_subject_id: Option<String>,
    approver_authority_record_id: Option<String>,
    decision_reason: Option<String>,
}

async fn decided(db: &TestDb, id: &str) -> anyhow::Result<Decided> {
    Ok(sqlx::query_as(
        "SELECT satisfied_at, rejected_at, decided_by, approver_subject_id, approver_authority_record_id, \
                decision_reason FROM caracal.step_up_challenges WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&mut db.admin().await?)
    .await?)
}

#[tokio::test]
async fn a_subject_approves_a_hold_and_the_retry_mints() -> anyhow::Result<()> {
    let (db, sts, issuer) = start().await?;
    let (id, binding) = hold(&sts, "payments:send", "resource://payments").await?;
    let mandate = federate(&sts, &issuer, CHILD, "alice").await?;
    let sid = jwt_claims(&mandate)?["sid"].as_str().unwrap().to_owned();

    let request_id = format!("decide-{}", sts.instance_id);
    let resp = http::request(
        sts.addr,
        "POST",
        &format!("/approvals/{id}/decision"),
        &[
            ("content-type", "application/json"),
            ("authorization", &format!("Bearer {mandate}")),
            ("x-request-id", &request_id),
        ],
        json!({"decision": "approved", "binding": binding, "reason": "looks right"}).to_string(),
    )
    .await?;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    let body = resp.json()?;
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["state"], "approved");
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));

    let row = decided(&db, &id).await?;
    assert!(row.satisfied_at.is_some() && row.rejected_at.is_none());
    assert_eq!(row.decided_by.as_deref(), Some("alice"), "identified");
    assert_eq!(row.approver_subject_id.as_deref(), Some("alice"));
    assert_eq!(
        row.approver_authority_record_id.as_deref(),
        Some(sid.as_str())
    );
    assert_eq!(row.decision_reason.as_deref(), Some("looks right"));

    let events = audit_events(&request_id, 1).await?;
    let event = events
        .iter()
        .find(|e| e["event_type"] == "step_up_decided")
        .expect("step_up_decided");
    assert_eq!(event["decision"], "allow");
    assert_eq!(event["metadata_json"]["challenge_id"], id.as_str());
    assert_eq!(event["metadata_json"]["decision"], "approved");
    assert_eq!(event["metadata_json"]["approver_plane"], "subject");
    assert_eq!(
        event["metadata_json"]["approver_authority_record_id"],
        sid.as_str()
    );
    assert_eq!(event["metadata_json"]["binding"], binding.as_str());

    // The poll sees it, the retry mints once, and the hold cannot be decided again.
    let poll = http::get(sts.addr, &format!("/approvals/{id}")).await?;
    assert_eq!(poll.json()?["state"], "approved");
    let mut retry = delegated_form("payments:send", "resource://payments");
    retry.push(("approval_id", &id));
    let minted = sts.token(&retry).await?;
    assert_eq!(minted.status, 200, "{:?}", minted.json());
    assert_eq!(
        jwt_claims(minted.json()?["access_token"].as_str().unwrap())?["use"],
        "gateway"
    );
    assert_error(
        &decide(
            &sts,
            &id,
            Some(&mandate),
            &json!({"decision": "rejected", "binding": binding}),
        )
        .await?,
        409,
        "access_denied",
        "approval is not pending",
    );
    sts.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_subject_rejects_a_hold_and_pseudonymous_holds_store_a_pseudonym() -> anyhow::Result<()> {
    let (db, sts, issuer) = start().await?;
    let (id, binding) = hold(&sts, "payments:send", "resource://payments").await?;
    let mandate = federate(&sts, &issuer, CHILD, "bob").await?;
    let resp = decide(
        &sts,
        &id,
        Some(&mandate),
        &json!({"decision": "rejected", "binding": binding, "reason": null}),
    )
    .await?;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    assert_eq!(resp.json()?["state"], "rejected");
    let row = decided(&db, &id).await?;
    assert!(row.rejected_at.is_some() && row.satisfied_at.is_none());
    assert_eq!(row.decision_reason, None);
    let mut retry = delegated_form("payments:send", "resource://payments");
    retry.push(("approval_id", &id));
    assert_error(
        &sts.token(&retry).await?,
        403,
        "access_denied",
        "approval was rejected",
    );

    // Class `any`, privacy pseudonymous: the decider is a zone-scoped pseudonym.
    let (id, binding) = hold(&sts, "reports:write", "resource://reports").await?;
    let resp = decide(
        &sts,
        &id,
        Some(&mandate),
        &json!({"decision": "approved", "binding": binding.to_uppercase()}),
    )
    .await?;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    let row = decided(&db, &id).await?;
    let digest: String = sqlx::query_scalar(
        "SELECT encode(sha256(convert_to($1, 'UTF8') || '\\x00'::bytea || convert_to($2, 'UTF8')), 'hex')",
    )
    .bind(ZONE)
    .bind("bob")
    .fetch_one(&mut db.admin().await?)
    .await?;
    let expected = format!("subject:pseudonym:{}", &digest[..16]);
    assert_eq!(row.decided_by.as_deref(), Some(expected.as_str()));
    assert_eq!(row.approver_subject_id.as_deref(), Some(expected.as_str()));
    sts.stop().await;
    Ok(())
}

#[tokio::test]
async fn subject_decision_failures_use_the_catalog() -> anyhow::Result<()> {
    let (db, sts, issuer) = start().await?;
    let (id, binding) = hold(&sts, "payments:send", "resource://payments").await?;
    let mandate = federate(&sts, &issuer, CHILD, "carol").await?;
    let sid = jwt_claims(&mandate)?["sid"].as_str().unwrap().to_owned();
    let good = json!({"decision": "approved", "binding": binding});

    // 404: unknown or malformed ids.
    for unknown in [uuid::Uuid::new_v4().to_string(), "not-a-uuid".to_owned()] {
        assert_error(
            &decide(&sts, &unknown, Some(&mandate), &good).await?,
            404,
            "resource_not_found",
            "approval not found",
        );
    }
    // 401: no bearer, or one that does not verify.
    let resp = decide(&sts, &id, None, &good).await?;
    assert_error(&resp, 401, "invalid_token", "session mandate required");
    assert!(resp.header("www-authenticate").is_some());
    assert_error(
        &decide(&sts, &id, Some("garbage"), &good).await?,
        401,
        "invalid_token",
        "invalid session mandate",
    );
    let tampered = {
        let mut parts: Vec<&str> = mandate.split('.').collect();
        let claims = format!("{}x", parts[1]);
        parts[1] = &claims;
        parts.join(".")
    };
    assert_error(
        &decide(&sts, &id, Some(&tampered), &good).await?,
        401,
        "invalid_token",
        "invalid session mandate",
    );
    // 400: the body.
    let raw = http::request(
        sts.addr,
        "POST",
        &format!("/approvals/{id}/decision"),
        &[("authorization", &format!("Bearer {mandate}"))],
        "decision=approved",
    )
    .await?;
    assert_error(&raw, 400, "invalid_token", "malformed request body");
    for (body, description) in [
        (
            json!({"decision": "maybe", "binding": binding}),
            "decision must be approved or rejected",
        ),
        (
            json!({"binding": binding}),
            "decision must be approved or rejected",
        ),
        (json!({"decision": "approved"}), "malformed request body"),
        (
            json!({"decision": "approved", "binding": binding, "reason": "r".repeat(501)}),
            "reason too long",
        ),
        (
            json!({"decision": "approved", "binding": binding, "reason": 5}),
            "malformed request body",
        ),
    ] {
        assert_error(
            &decide(&sts, &id, Some(&mandate), &body).await?,
            400,
            "invalid_token",
            description,
        );
    }
    // 403: an application mandate, another application's user, an operator-only hold,
    // another subject than the anchor, the requester's own lineage, a revoked record.
    let app_mandate = {
        let resp = sts
            .token(&[
                ("grant_type", GRANT),
                ("zone_id", ZONE),
                ("application_id", CHILD),
                ("client_secret", SECRET),
                ("scope", "reports:read"),
                ("resource", "resource://reports"),
                ("agent_session_id", "s-child"),
                ("delegation_edge_id", "e1"),
            ])
            .await?;
        assert_eq!(resp.status, 200, "{:?}", resp.json());
        resp.json()?["access_token"].as_str().unwrap().to_owned()
    };
    assert_error(
        &decide(&sts, &id, Some(&app_mandate), &good).await?,
        401,
        "invalid_token",
        "invalid session mandate",
    );
    let bootstrap = {
        let resp = sts
            .token(&[
                ("grant_type", GRANT),
                ("zone_id", ZONE),
                ("application_id", CHILD),
                ("client_secret", SECRET),
                ("scope", "agent:lifecycle"),
                ("resource", "resource://reports"),
            ])
            .await?;
        assert_eq!(resp.status, 200, "{:?}", resp.json());
        resp.json()?["access_token"].as_str().unwrap().to_owned()
    };
    assert_eq!(jwt_claims(&bootstrap)?["sub_type"], "application");
    assert_error(
        &decide(&sts, &id, Some(&bootstrap), &good).await?,
        403,
        "access_denied",
        "approver must be a user session",
    );
    let other_app_user = federate(&sts, &issuer, AGENT, "carol").await?;
    assert_error(
        &decide(&sts, &id, Some(&other_app_user), &good).await?,
        403,
        "access_denied",
        "approver session was minted by another application",
    );
    let (wire_id, wire_binding) = hold(&sts, "wire:send", "resource://wire").await?;
    assert_error(
        &decide(
            &sts,
            &wire_id,
            Some(&mandate),
            &json!({"decision": "approved", "binding": wire_binding}),
        )
        .await?,
        403,
        "access_denied",
        "this approval requires an operator decision",
    );
    let mut p = Provision::open(&db).await?;
    p.exec(&format!(
        "UPDATE caracal.step_up_challenges SET subject_anchor = 'dave' WHERE id = '{id}'"
    ))
    .await?;
    assert_error(
        &decide(&sts, &id, Some(&mandate), &good).await?,
        403,
        "access_denied",
        "approver is not the subject of this approval",
    );
    p.exec(&format!(
        "UPDATE caracal.step_up_challenges SET subject_anchor = 'carol', session_id = '{sid}' WHERE id = '{id}'"
    ))
    .await?;
    assert_error(
        &decide(&sts, &id, Some(&mandate), &good).await?,
        403,
        "access_denied",
        "an approver cannot decide a hold raised by its own authority record lineage",
    );
    p.exec(&format!(
        "UPDATE caracal.step_up_challenges SET session_id = '' WHERE id = '{id}'"
    ))
    .await?;
    // A user-typed record whose subject is not the mandate's: rewrite the record.
    let second = federate(&sts, &issuer, CHILD, "carol").await?;
    let second_sid = jwt_claims(&second)?["sid"].as_str().unwrap().to_owned();
    p.exec(&format!(
        "UPDATE caracal.sessions SET session_type = 'application' WHERE id = '{second_sid}'"
    ))
    .await?;
    assert_error(
        &decide(&sts, &id, Some(&second), &good).await?,
        403,
        "access_denied",
        "approver authority record inactive or expired",
    );
    p.exec(&format!(
        "UPDATE caracal.sessions SET status = 'revoked', revoked_at = now(), revoked_reason = 'requested' \
          WHERE id = '{second_sid}'"
    ))
    .await?;
    assert_error(
        &decide(&sts, &id, Some(&second), &good).await?,
        403,
        "access_denied",
        "approver authority record inactive or expired",
    );
    // 409: the binding, then a hold that is no longer pending.
    let mut wrong = binding.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    assert_error(
        &decide(
            &sts,
            &id,
            Some(&mandate),
            &json!({"decision": "approved", "binding": String::from_utf8(wrong)?}),
        )
        .await?,
        409,
        "access_denied",
        "binding does not match this challenge",
    );
    p.exec(&format!(
        "UPDATE caracal.step_up_challenges SET expires_at = now() - interval '1 second' WHERE id = '{id}'"
    ))
    .await?;
    assert_error(
        &decide(&sts, &id, Some(&mandate), &good).await?,
        409,
        "access_denied",
        "approval is not pending",
    );
    // Nothing was recorded by any of the refusals.
    let row = decided(&db, &id).await?;
    assert!(row.satisfied_at.is_none() && row.rejected_at.is_none() && row.decided_by.is_none());
    sts.stop().await;
    Ok(())
}
