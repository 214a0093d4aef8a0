//! The gateway against real Postgres, Redis and a real upstream on 127.0.0.1: the governed
//! path, each denial of authority-and-policy.md §4.2 with its exact answer, injection,
//! header hygiene, revocation (also mid-stream) and the audit events.

use std::time::Duration;

use serde_json::{Value, json};
use tests_harness::{
    TestDb,
    gateway::{ADMIN_TOKEN, GatewayFixture, TestSigner, gateway_claims},
    http::{self, HttpResponse},
    provision::Provision,
    upstream::Upstream,
};

pub(crate) const ZONE: &str = "gw-zone";
pub(crate) const AGENT: &str = "agent-app";
pub(crate) const ISSUER_APP: &str = "issuer-app";
pub(crate) const RESOURCE: &str = "resource://echo";

pub(crate) const POLICY: &str = r#"package caracal.authz
import rego.v1
# caracal:data-document
app_ids := {"agent": "agent-app"}
grants := {
  "resource://echo": {"application": "agent", "roles": {"reader": ["read", "write"]}},
  "resource://other": {"application": "agent", "roles": {"reader": ["read"]}}
}
"#;

/// A scenario's anchor ids, unique per scenario: every gateway under test reads the same
/// Redis streams and keys its revocation marks by id alone, so a revocation one test
/// publishes must name anchors no other running test uses. Also the upstream's base URL.
#[derive(Debug, Clone)]
pub(crate) struct Ids {
    /// The authority record (`sid` and `root_sid`).
    pub(crate) record: String,
    /// The issuer's agent session (the edge's source).
    pub(crate) source: String,
    /// The agent's agent session (the edge's target).
    pub(crate) target: String,
    /// The delegation edge.
    pub(crate) edge: String,
    /// `http://127.0.0.1:<port>` of the scenario's upstream.
    pub(crate) upstream: String,
}

impl Ids {
    fn new(upstream: String) -> Self {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let tag = &tag[..12];
        Self {
            record: format!("rec-agent-{tag}"),
            source: format!("session-source-{tag}"),
            target: format!("session-target-{tag}"),
            edge: format!("edge-{tag}"),
            upstream,
        }
    }

    /// `sql` with `{upstream}`, `{record}`, `{source}`, `{target}` and `{edge}` filled in.
    pub(crate) fn fill(&self, sql: &str) -> String {
        sql.replace("{upstream}", &self.upstream)
            .replace("{record}", &self.record)
            .replace("{source}", &self.source)
            .replace("{target}", &self.target)
            .replace("{edge}", &self.edge)
    }
}

/// A zone with a delegated agent, a resource behind a real upstream, and the gateway.
pub(crate) struct Scenario {
    pub(crate) db: TestDb,
    pub(crate) upstream: Upstream,
    pub(crate) signer: TestSigner,
    pub(crate) gateway: GatewayFixture,
    pub(crate) ids: Ids,
}

impl Scenario {
    /// The default scenario: provider `none`, operations enforced with `GET /items`
    /// (scope `read`) and `POST /items` (scope `write`).
    pub(crate) async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[], |_| {}).await
    }

    /// With gateway overrides and extra SQL run after the provisioning (placeholders as in
    /// [`Ids::fill`]).
    pub(crate) async fn start_with(
        overrides: &[(&str, &str)],
        extra: impl FnOnce(&mut Vec<String>),
    ) -> anyhow::Result<Self> {
        let mut statements = Vec::new();
        extra(&mut statements);
        Self::start_custom(
            overrides,
            "active",
            async move |p: &mut Provision, ids: &Ids| {
                for sql in statements {
                    p.exec(&ids.fill(&sql)).await?;
                }
                Ok(())
            },
        )
        .await
    }

    /// The general form: gateway overrides (a value's `{database}` becomes the test
    /// database's name), the status of the zone signing key the test holds, and a setup
    /// step run after the provisioning and before the key is inserted.
    pub(crate) async fn start_custom(
        overrides: &[(&str, &str)],
        signer_status: &str,
        setup: impl AsyncFnOnce(&mut Provision, &Ids) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let db = TestDb::migrated().await?;
        let upstream = Upstream::start().await?;
        let ids = Ids::new(upstream.url(""));
        let mut p = Provision::open(&db).await?;
        p.zone(ZONE).await?;
        p.application(ZONE, AGENT, "secret-agent-0123456789", &[])
            .await?;
        p.application(ZONE, ISSUER_APP, "secret-issuer-0123456789", &[])
            .await?;
        p.provider_none(ZONE, "prov-none").await?;
        p.resource(
            ZONE,
            "res-echo",
            RESOURCE,
            &["read", "write"],
            Some(&upstream.url("/base")),
            "prov-none",
        )
        .await?;
        p.exec(
            "UPDATE resources SET operations = '[{\"method\":\"GET\",\"path\":\"/items\",\"scope\":\"read\"},{\"method\":\"POST\",\"path\":\"/items\",\"scope\":\"write\"}]' WHERE id = 'res-echo'",
        )
        .await?;
        p.authority_record(ZONE, &ids.record, "application", AGENT)
            .await?;
        p.agent_session(ZONE, &ids.source, ISSUER_APP, &[]).await?;
        p.agent_session(ZONE, &ids.target, AGENT, &["reader"])
            .await?;
        p.edge(
            ZONE,
            &ids.edge,
            (&ids.source, ISSUER_APP),
            (&ids.target, AGENT),
            &["read", "write"],
            json!({}),
            3600,
            None,
        )
        .await?;
        p.activate_policy(ZONE, "main", POLICY).await?;
        setup(&mut p, &ids).await?;
        let signer = TestSigner::insert_with_status(p.conn(), ZONE, signer_status).await?;
        let overrides: Vec<(&str, String)> = overrides
            .iter()
            .map(|(k, v)| (*k, v.replace("{database}", db.name())))
            .collect();
        let overrides: Vec<(&str, &str)> =
            overrides.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let gateway = GatewayFixture::start_with(&db, &overrides).await?;
        Ok(Self {
            db,
            upstream,
            signer,
            gateway,
            ids,
        })
    }

    /// Delegated gateway claims for the default resource.
    pub(crate) fn claims(&self) -> Value {
        let mut claims = gateway_claims(ZONE, AGENT, &self.ids.record, RESOURCE);
        claims["agent_session_id"] = json!(self.ids.target);
        claims["delegation_edge_id"] = json!(self.ids.edge);
        claims["scope"] = json!("read write");
        claims
    }

    /// A fresh signed mandate.
    pub(crate) fn mandate(&self) -> String {
        self.signer.sign(&self.claims()).expect("sign")
    }

    /// `method path` with the bearer and the routing header, plus `headers`.
    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
    ) -> HttpResponse {
        self.call_to(RESOURCE, method, path, token, headers).await
    }

    /// `method path` routed to `resource`, with the bearer, plus `headers`.
    pub(crate) async fn call_to(
        &self,
        resource: &str,
        method: &str,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
    ) -> HttpResponse {
        let auth = format!("Bearer {token}");
        let mut all = vec![
            ("authorization", auth.as_str()),
            ("x-caracal-resource", resource),
        ];
        all.extend_from_slice(headers);
        http::request(self.gateway.addr, method, path, &all, "")
            .await
            .expect("gateway request")
    }

    /// `POST /internal/revocations/reload` with the admin token; asserts 200.
    pub(crate) async fn reload(&self) {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let resp = http::request(
            self.gateway.addr,
            "POST",
            "/internal/revocations/reload",
            &[("authorization", auth.as_str())],
            "",
        )
        .await
        .expect("reload request");
        assert_eq!(resp.status, 200, "reload: {:?}", resp.json());
    }

    /// Runs `sql` (placeholders as in [`Ids::fill`]) on an admin connection.
    pub(crate) async fn exec(&self, sql: &str) -> anyhow::Result<()> {
        let mut p = Provision::open(&self.db).await?;
        p.exec(&self.ids.fill(sql)).await
    }

    pub(crate) async fn stop(self) {
        self.gateway.stop().await;
    }
}

/// Asserts the §1.2 body, the status and `X-Request-Id` = `requestId`.
pub(crate) fn assert_denied(resp: &HttpResponse, status: u16, code: &str, description: &str) {
    let body = resp.json().unwrap_or(Value::Null);
    assert_eq!(resp.status, status, "status; body {body}");
    assert_eq!(body["error"], code, "code; body {body}");
    assert_eq!(
        body["error_description"].as_str().unwrap_or(""),
        description,
        "description; body {body}"
    );
    let header = resp.header("x-request-id");
    assert!(header.is_some(), "x-request-id present");
    assert_eq!(
        body["requestId"].as_str(),
        header.as_deref(),
        "requestId equals the header"
    );
}

#[tokio::test]
async fn a_delegated_mandate_reaches_the_upstream_with_the_headers_it_may_carry()
-> anyhow::Result<()> {
    let s = Scenario::start().await?;
    let token = s.mandate();
    let resp = s
        .call(
            "GET",
            "/items?q=1",
            &token,
            &[
                ("x-caracal-session", "forged"),
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-host", "evil"),
                ("forwarded", "for=6.6.6.6"),
                ("x-real-ip", "6.6.6.6"),
                ("baggage", "caracal.session=forged,team=blue"),
                ("connection", "x-drop-me"),
                ("x-drop-me", "1"),
                ("x-request-id", "req-abc-123"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
            ],
        )
        .await;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    assert_eq!(resp.header("x-request-id").as_deref(), Some("req-abc-123"));
    assert!(resp.header("x-caracal-token-expires-in").is_some());
    let seen = s.upstream.last().expect("upstream saw the call");
    assert_eq!(seen.path, "/base/items");
    assert_eq!(seen.query.as_deref(), Some("q=1"));
    let h = &seen.headers;
    assert!(
        h.get("authorization").is_none(),
        "the mandate never reaches the upstream"
    );
    assert!(h.get("x-caracal-session").is_none());
    assert!(h.get("x-real-ip").is_none());
    assert!(h.get("forwarded").is_none());
    assert!(
        h.get("x-drop-me").is_none(),
        "headers named in Connection are removed"
    );
    assert_eq!(
        h.get("baggage").and_then(|v| v.to_str().ok()),
        Some("team=blue")
    );
    assert_eq!(
        h.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
        Some("127.0.0.1")
    );
    assert_eq!(
        h.get("x-request-id").and_then(|v| v.to_str().ok()),
        Some("req-abc-123")
    );
    assert_eq!(
        h.get("traceparent").and_then(|v| v.to_str().ok()),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(
        h.get("host").and_then(|v| v.to_str().ok()),
        Some(s.upstream.addr.to_string().as_str())
    );
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_mandate_is_single_use() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    let token = s.mandate();
    assert_eq!(s.call("GET", "/items", &token, &[]).await.status, 200);
    let replay = s.call("GET", "/items", &token, &[]).await;
    assert_denied(&replay, 401, "invalid_token", "token replay detected");
    assert_eq!(
        s.upstream.requests().len(),
        1,
        "the replay never reached the upstream"
    );
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_early_checks_answer_in_order_with_the_catalog_texts() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    let addr = s.gateway.addr;
    // Step 2: no bearer.
    let resp = http::request(
        addr,
        "GET",
        "/items",
        &[("x-caracal-resource", RESOURCE)],
        "",
    )
    .await?;
    assert_denied(&resp, 401, "invalid_token", "missing bearer token");
    // Step 3: too large.
    let resp = s.call("GET", "/items", &"a".repeat(4097), &[]).await;
    assert_denied(&resp, 401, "invalid_token", "bearer token too large");
    // Step 4: malformed.
    let resp = s.call("GET", "/items", "a.b", &[]).await;
    assert_denied(&resp, 401, "invalid_token", "malformed bearer token");
    // Step 5: expiring within 35 s.
    let mut claims = s.claims();
    claims["exp"] = json!(tests_harness::oidc::unix_now() + 20);
    let resp = s.call("GET", "/items", &s.signer.sign(&claims)?, &[]).await;
    assert_denied(
        &resp,
        401,
        "credential_expired_not_renewable",
        "credential expiring within pre-flight window",
    );
    // Step 6: a client id header.
    let resp = s
        .call(
            "GET",
            "/items",
            &s.mandate(),
            &[("x-caracal-client-id", AGENT)],
        )
        .await;
    assert_denied(
        &resp,
        400,
        "invalid_token",
        "client identity derives from the bearer token",
    );
    // Step 7: no routing header.
    let auth = format!("Bearer {}", s.mandate());
    let resp = http::request(
        addr,
        "GET",
        "/items",
        &[("authorization", auth.as_str())],
        "",
    )
    .await?;
    assert_denied(&resp, 400, "invalid_token", "missing routing headers");
    // Step 8: a bad zone claim.
    let mut claims = s.claims();
    claims["zone_id"] = json!("bad zone");
    let resp = s.call("GET", "/items", &s.signer.sign(&claims)?, &[]).await;
    assert_denied(&resp, 401, "invalid_token", "missing token zone");
    // Step 9: a bad client claim.
    let mut claims = s.claims();
    claims["client_id"] = json!("");
    let resp = s.call("GET", "/items", &s.signer.sign(&claims)?, &[]).await;
    assert_denied(&resp, 401, "invalid_token", "missing token client");
    // Step 10: traversal, also encoded twice.
    for path in ["/a/../items", "/a/%252e%252e/items", "/a/%5citems"] {
        let resp = s.call("GET", path, &s.mandate(), &[]).await;
        assert_denied(&resp, 400, "invalid_token", "path traversal not permitted");
    }
    // Step 11: an unknown kid, and a signature by another key.
    let resp = s
        .call(
            "GET",
            "/items",
            &s.signer.sign_with_kid("unknown-kid", &s.claims())?,
            &[],
        )
        .await;
    assert_denied(&resp, 401, "invalid_token", "bearer signature invalid");
    assert!(
        s.upstream.requests().is_empty(),
        "nothing reached the upstream"
    );
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_operation_floor_and_the_policy_refuse_with_their_descriptions() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    let resp = s.call("DELETE", "/items", &s.mandate(), &[]).await;
    assert_denied(
        &resp,
        403,
        "operation_not_permitted",
        "operation DELETE /items is not declared on resource resource://echo; declare it or set operation_enforcement to transport_uniform",
    );
    let mut claims = s.claims();
    claims["scope"] = json!("read");
    let resp = s
        .call("POST", "/items", &s.signer.sign(&claims)?, &[])
        .await;
    assert_denied(
        &resp,
        403,
        "operation_not_permitted",
        "operation POST /items on resource resource://echo requires scope write, which the presented mandate does not carry",
    );
    // The policy: a mandate whose target lacks the resource.
    let mut claims = s.claims();
    claims["target"] = json!(["resource://other"]);
    let resp = s.call("GET", "/items", &s.signer.sign(&claims)?, &[]).await;
    assert_denied(
        &resp,
        403,
        "access_denied",
        "policy denied (mandate_target_mismatch)",
    );
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_revocation_message_denies_at_once() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    assert_eq!(s.call("GET", "/items", &s.mandate(), &[]).await.status, 200);
    tests_harness::gateway::publish(
        control_events::streams::SESSIONS_REVOKE,
        &[
            ("zone_id", ZONE),
            ("agent_session_id", s.ids.target.as_str()),
            ("reason", "requested"),
        ],
    )
    .await?;
    let mut last = 0;
    for _ in 0..50 {
        let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
        last = resp.status;
        if resp.status == 401 {
            assert_denied(&resp, 401, "invalid_token", "session revoked");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last, 401, "revoked within a second");
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_revocation_mid_stream_ends_the_body_with_the_trailer() -> anyhow::Result<()> {
    let s = Scenario::start_with(&[], |sql| {
        sql.push("UPDATE resources SET operation_enforcement = 'transport_uniform' WHERE id = 'res-echo'".into());
    })
    .await?;
    let token = s.mandate();
    let addr = s.gateway.addr;
    let call = tokio::spawn(async move {
        let auth = format!("Bearer {token}");
        http::request(
            addr,
            "GET",
            "/sse?events=40&interval_ms=50",
            &[
                ("authorization", auth.as_str()),
                ("x-caracal-resource", RESOURCE),
                ("te", "trailers"),
            ],
            "",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    tests_harness::gateway::publish(
        control_events::streams::SESSIONS_REVOKE,
        &[
            ("zone_id", ZONE),
            ("session_id", s.ids.record.as_str()),
            ("reason", "requested"),
        ],
    )
    .await?;
    let resp = call.await??;
    assert_eq!(resp.status, 200);
    let events = String::from_utf8_lossy(&resp.body).matches("data:").count();
    assert!(
        events > 0 && events < 40,
        "the stream was cut: {events} events"
    );
    let revoked = resp
        .trailers
        .as_ref()
        .and_then(|t| t.get("x-caracal-revoked"))
        .and_then(|v| v.to_str().ok());
    assert_eq!(revoked, Some("true"));
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_reload_endpoint_needs_the_admin_token() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    let addr = s.gateway.addr;
    let resp = http::request(
        addr,
        "POST",
        "/internal/revocations/reload",
        &[("authorization", "Bearer wrong")],
        "",
    )
    .await?;
    assert_eq!(resp.status, 401);
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let resp = http::request(
        addr,
        "POST",
        "/internal/revocations/reload",
        &[("authorization", auth.as_str())],
        "",
    )
    .await?;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    assert_eq!(resp.json()?["ok"], true);
    let ready = http::get(addr, "/ready").await?;
    assert_eq!(ready.status, 200, "{:?}", ready.json());
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_stream_passes_through_whole_without_a_revocation() -> anyhow::Result<()> {
    let s = Scenario::start_with(&[], |sql| {
        sql.push("UPDATE resources SET operation_enforcement = 'transport_uniform' WHERE id = 'res-echo'".into());
    })
    .await?;
    let resp = s
        .call(
            "GET",
            "/sse?events=5&interval_ms=10",
            &s.mandate(),
            &[("te", "trailers")],
        )
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&resp.body).matches("data:").count(),
        5,
        "{:?}",
        resp
    );
    assert!(
        resp.trailers
            .as_ref()
            .is_none_or(|t| t.get("x-caracal-revoked").is_none())
    );
    s.stop().await;
    Ok(())
}
