//! Conformance: the real Caracal 1.0 Python clients (`caracalai-*` 1.0.0, Python 3.12)
//! against a real `caracal sts`, admin API, Coordinator and gateway. Runs
//! `tests/conformance/run.sh` with the variables its README lists and requires every group
//! this server implements, so a wiring mistake cannot pass as a skip.
//!
//! Two stacks, one per test, run one after the other: the groups' stack, provisioned here in
//! Postgres on three Redis databases, and the end-to-end stack (group `e2e`), where every
//! role and the audit ledger share one Redis database and one Postgres database and the
//! Python test provisions everything through the admin API.
//!
//! Run with `make conformance` (it builds the venv); `make test` skips it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test binary fails loudly"
)]

use std::process::{Command, Output};

use tests_harness::{
    TestDb,
    api::ApiFixture,
    audit::{AuditFixture, RedisLease},
    coordinator::{CoordinatorFixture, session_claims},
    gateway::{GatewayFixture, TestSigner},
    provision::Provision,
    sts::StsFixture,
    upstream::Upstream,
};

/// Held by each test for its whole run: the stacks and their pytest runs share two cores,
/// and the suites' deadlines (revocation within 5 s, long polls) are not meant to compete.
static ONE_STACK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `tests/conformance/run.sh` with `vars`, the arguments `args`, then the whitespace
/// separated words of `CONFORMANCE_PYTEST_ARGS` (a focused run, e.g. `-k coordinator`);
/// prints what it wrote.
async fn run_suite(vars: Vec<(&'static str, String)>, args: &[&str]) -> anyhow::Result<Output> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    all.extend(
        std::env::var("CONFORMANCE_PYTEST_ARGS")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned),
    );
    let output = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg(format!("{root}/tests/conformance/run.sh"))
            .args(all)
            .envs(vars)
            .current_dir(root)
            .output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    Ok(output)
}

const POLICY: &str = r#"package caracal.authz
import rego.v1
# caracal:data-document
app_ids := {"agent": "agent-app", "child": "child-app", "coord": "coord-app", "revoked": "coord-revoke-app"}
grants := {
  "resource://crm": {"application": "agent", "roles": {"reader": ["crm:read"]}},
  "resource://reports": {"application": "child", "roles": {"analyst": ["reports:read", "reports:write"]}},
  "resource://tickets": {"application": "coord", "roles": {"worker": ["tickets:read", "tickets:write"]}},
  "resource://probe": {"application": "revoked", "roles": {"worker": ["probe:read"]}}
}
risk := [{"scope": "reports:write", "tier": "high"}]
approval_tiers := [{"tier": "high", "approver": "operator"}]
"#;

/// The groups this server implements.
const REQUIRED_GROUPS: &str = concat!(
    "core,delegated,zone,control,ratelimit,unavailable,approval,federation,admin,",
    "coordinator,coordinator_revoke,gateway,streams"
);

/// The Coordinator's Redis database (the gateway's too, so it reads what the Coordinator's
/// outbox publishes). Not the STS's: a live gateway there would hold the admin tests'
/// activations at `waiting_for_sts` until it reports them.
const COORDINATOR_REDIS_DB: u8 = 12;

/// The operation the Coordinator scenario calls through the gateway (declared on
/// `resource://tickets` with scope `tickets:read`).
const GATEWAY_PATH: &str = "/items";

/// `audience` of the zone's subject issuer (the Python test signs id_tokens for it).
const FEDERATION_AUDIENCE: &str = "conformance-audience";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_python_clients_against_the_sts() -> anyhow::Result<()> {
    let _alone = ONE_STACK_AT_A_TIME.lock().await;
    let db = TestDb::migrated().await?;
    // The Python federation test serves its issuer JWKS on this port; reserve a free one.
    let federation_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    let federation_issuer = format!("http://127.0.0.1:{federation_port}");
    let ratelimit_app = format!("ratelimit-{}", uuid::Uuid::new_v4().simple());
    // The upstream behind `resource://tickets`, reached through the gateway.
    let upstream = Upstream::start().await?;
    // Zone `signed` holds only a key the test signs with, so it can present the Coordinator a
    // valid session mandate whose scope lacks `agent:lifecycle` (no mint yields one).
    let signer;
    {
        let mut p = Provision::open(&db).await?;
        p.zone("acme").await?;
        p.zone("other").await?;
        p.zone("signed").await?;
        signer = TestSigner::insert(p.conn(), "signed").await?;
        p.application("acme", "agent-app", "agent-secret", &[])
            .await?;
        p.application("acme", "child-app", "child-secret", &[])
            .await?;
        p.application(
            "acme",
            "ops-app",
            "ops-secret",
            &["control:invoke", "control:scope:control:read"],
        )
        .await?;
        p.application("acme", &ratelimit_app, "ratelimit-secret", &[])
            .await?;
        p.application("acme", "coord-app", "coord-secret", &[])
            .await?;
        p.application("acme", "coord-revoke-app", "coord-revoke-secret", &[])
            .await?;
        p.provider_none("acme", "p-none").await?;
        p.resource(
            "acme",
            "crm",
            "resource://crm",
            &["crm:read"],
            Some("http://127.0.0.1:9/"),
            "p-none",
        )
        .await?;
        p.resource(
            "acme",
            "reports",
            "resource://reports",
            &["reports:read", "reports:write"],
            Some("http://127.0.0.1:9/"),
            "p-none",
        )
        .await?;
        p.resource(
            "acme",
            "control",
            "caracal-control",
            &["control:read"],
            None,
            "p-none",
        )
        .await?;
        p.resource(
            "acme",
            "tickets",
            "resource://tickets",
            &["tickets:read", "tickets:write"],
            Some(&upstream.url("/base")),
            "p-none",
        )
        .await?;
        p.exec(&format!(
            "UPDATE resources SET operations = '[{{\"method\":\"GET\",\"path\":\"{GATEWAY_PATH}\",\"scope\":\"tickets:read\"}}]' WHERE id = 'tickets'"
        ))
        .await?;
        p.resource(
            "acme",
            "probe",
            "resource://probe",
            &["probe:read"],
            Some("http://127.0.0.1:9/"),
            "p-none",
        )
        .await?;
        p.activate_policy("acme", "main", POLICY).await?;
        p.agent_session("acme", "s-parent", "agent-app", &["orchestrator"])
            .await?;
        p.agent_session("acme", "s-child", "child-app", &["analyst"])
            .await?;
        p.edge(
            "acme",
            "e1",
            ("s-parent", "agent-app"),
            ("s-child", "child-app"),
            &["reports:read", "reports:write"],
            serde_json::json!({"max_hops": 1, "ttl_seconds": 600}),
            3600,
            None,
        )
        .await?;
        tests_harness::oidc::register_subject_issuer(
            &mut p,
            "acme",
            "si-conformance",
            &federation_issuer,
            &format!("{federation_issuer}/jwks.json"),
            Some(FEDERATION_AUDIENCE),
        )
        .await?;
    }
    // The STS and the admin API share a Redis database of their own: `loaded` waits for
    // every live STS replica, so no other process may heartbeat into it.
    let redis_db = tests_harness::sts::isolated_redis(14).await?;
    let sts = StsFixture::start_with(&db, &[("REDIS_URL", redis_db.as_str())]).await?;
    // The admin API on the same database; the Python client retries failed logins, so the
    // per-address limit is out of the way.
    let api = tests_harness::api::ApiFixture::start_with(
        &db,
        &[
            ("CARACAL_API_AUTH_FAILURES_PER_MINUTE", "1000000"),
            ("REDIS_URL", redis_db.as_str()),
        ],
    )
    .await?;

    // The Coordinator verifies session mandates with the STS's key set, so its issuer is the
    // STS's; it and the gateway share a Redis database (the revocations it publishes reach the
    // gateway) and the STS's stream key.
    let coordinator_redis = tests_harness::sts::isolated_redis(COORDINATOR_REDIS_DB).await?;
    let coordinator = CoordinatorFixture::start_with(
        &db,
        sts.addr,
        &[
            ("ISSUER_URL", sts.issuer.as_str()),
            ("REDIS_URL", coordinator_redis.as_str()),
            ("STREAMS_HMAC_KEY", sts.streams_key_hex.as_str()),
        ],
    )
    .await?;
    let no_lifecycle_token = {
        let mut claims = session_claims("signed", "signed-app", "signed-record");
        claims["iss"] = serde_json::json!(sts.issuer);
        claims["aud"] = serde_json::json!([sts.issuer]);
        claims["scope"] = serde_json::json!("tickets:read");
        claims["exp"] = serde_json::json!(tests_harness::oidc::unix_now() + 3600);
        signer.sign(&claims)?
    };
    // The gateway accepts the STS's mandates and decides locally.
    let gateway = GatewayFixture::start_with(
        &db,
        &[
            ("ISSUER_URL", sts.issuer.as_str()),
            ("REDIS_URL", coordinator_redis.as_str()),
            ("STREAMS_HMAC_KEY", sts.streams_key_hex.as_str()),
        ],
    )
    .await?;

    // A second STS whose database disappears under it: its mints answer 503 sts_unavailable.
    let doomed = TestDb::migrated().await?;
    let elsewhere = tests_harness::sts::isolated_redis(13).await?;
    let unavailable = StsFixture::start_with(&doomed, &[("REDIS_URL", elsewhere.as_str())]).await?;
    let unavailable_url = format!("http://{}", unavailable.addr);
    drop(doomed);

    let vars: Vec<(&str, String)> = vec![
        ("CONFORMANCE_STS_URL", format!("http://{}", sts.addr)),
        ("CONFORMANCE_ISSUER", sts.issuer.clone()),
        ("CONFORMANCE_ZONE_ID", "acme".into()),
        ("CONFORMANCE_APP_ID", "child-app".into()),
        ("CONFORMANCE_APP_SECRET", "child-secret".into()),
        ("CONFORMANCE_RESOURCE", "resource://reports".into()),
        (
            "CONFORMANCE_DELEGATED_RESOURCE",
            "resource://reports".into(),
        ),
        ("CONFORMANCE_DELEGATED_SCOPES", "reports:read".into()),
        ("CONFORMANCE_AGENT_SESSION_ID", "s-child".into()),
        ("CONFORMANCE_DELEGATION_EDGE_ID", "e1".into()),
        ("CONFORMANCE_SOURCE_SESSION_ID", "s-parent".into()),
        ("CONFORMANCE_ISSUER_APP_ID", "agent-app".into()),
        ("CONFORMANCE_EDGE_TTL_CAP", "600".into()),
        ("CONFORMANCE_OTHER_ZONE_ID", "other".into()),
        ("CONFORMANCE_CONTROL_APP_ID", "ops-app".into()),
        ("CONFORMANCE_CONTROL_APP_SECRET", "ops-secret".into()),
        ("CONFORMANCE_CONTROL_SCOPES", "control:read".into()),
        ("CONFORMANCE_RATELIMIT_APP_ID", ratelimit_app.clone()),
        (
            "CONFORMANCE_RATELIMIT_APP_SECRET",
            "ratelimit-secret".into(),
        ),
        ("CONFORMANCE_STS_UNAVAILABLE_URL", unavailable_url),
        ("CONFORMANCE_APPROVAL_RESOURCE", "resource://reports".into()),
        ("CONFORMANCE_APPROVAL_SCOPES", "reports:write".into()),
        (
            "CONFORMANCE_FEDERATION_ISSUER_PORT",
            federation_port.to_string(),
        ),
        ("CONFORMANCE_FEDERATION_ISSUER", federation_issuer.clone()),
        (
            "CONFORMANCE_FEDERATION_AUDIENCE",
            FEDERATION_AUDIENCE.into(),
        ),
        ("CONFORMANCE_API_URL", format!("http://{}", api.addr)),
        (
            "CONFORMANCE_ADMIN_TOKEN",
            tests_harness::api::BOOTSTRAP_TOKEN.into(),
        ),
        (
            "CONFORMANCE_COORDINATOR_URL",
            format!("http://{}", coordinator.addr),
        ),
        (
            "CONFORMANCE_COORDINATOR_TOKEN",
            tests_harness::coordinator::OPERATOR_TOKEN.into(),
        ),
        ("CONFORMANCE_COORDINATOR_APP_ID", "coord-app".into()),
        ("CONFORMANCE_COORDINATOR_APP_SECRET", "coord-secret".into()),
        (
            "CONFORMANCE_COORDINATOR_RESOURCE",
            "resource://tickets".into(),
        ),
        (
            "CONFORMANCE_COORDINATOR_SCOPES",
            "tickets:read tickets:write".into(),
        ),
        ("CONFORMANCE_COORDINATOR_LABELS", "worker".into()),
        (
            "CONFORMANCE_COORDINATOR_NO_LIFECYCLE_TOKEN",
            no_lifecycle_token,
        ),
        (
            "CONFORMANCE_COORDINATOR_REVOKE_APP_ID",
            "coord-revoke-app".into(),
        ),
        (
            "CONFORMANCE_COORDINATOR_REVOKE_APP_SECRET",
            "coord-revoke-secret".into(),
        ),
        (
            "CONFORMANCE_COORDINATOR_REVOKE_RESOURCE",
            "resource://probe".into(),
        ),
        ("CONFORMANCE_STREAMS_REDIS_URL", coordinator_redis.clone()),
        ("CONFORMANCE_STREAMS_HMAC_KEY", sts.streams_key_hex.clone()),
        (
            "CONFORMANCE_GATEWAY_URL",
            format!("http://{}", gateway.addr),
        ),
        ("CONFORMANCE_GATEWAY_PATH", GATEWAY_PATH.into()),
        (
            "CONFORMANCE_GATEWAY_UPSTREAM_PATH",
            format!("/base{GATEWAY_PATH}"),
        ),
        ("CONFORMANCE_REQUIRE", REQUIRED_GROUPS.into()),
    ];
    // The end-to-end module belongs to the other stack (its group is not configured here).
    let output = run_suite(vars, &["-rs", "-k", "not test_end_to_end"]).await?;
    coordinator.stop().await;
    gateway.stop().await;
    sts.stop().await;
    api.stop().await;
    unavailable.stop().await;
    assert!(
        output.status.success(),
        "the Python clients found differences (see above)"
    );
    Ok(())
}

/// The base path of the end-to-end resource's upstream.
const E2E_UPSTREAM_BASE: &str = "/e2e";
/// The operation the end-to-end test calls through the gateway (it declares it).
const E2E_PATH: &str = "/records";
/// The header the end-to-end provider injects its credential in (lower case, as received).
const E2E_CREDENTIAL_HEADER: &str = "x-api-key";

/// Group `e2e`: the whole Caracal 1.0 flow through the Python clients against the admin
/// API, STS, Coordinator, gateway and audit ledger running together on one Redis database
/// and one Postgres database, with nothing provisioned here. Afterwards the recording
/// upstream is checked from this side too: it received the sealed credential and never a
/// mandate, and no producer's audit event was dead-lettered by the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_end_to_end_on_one_redis_and_one_database() -> anyhow::Result<()> {
    let _alone = ONE_STACK_AT_A_TIME.lock().await;
    let db = TestDb::migrated().await?;
    // The ledger's database (one of the audit fixtures' leases, flushed) is every role's.
    let audit = AuditFixture::start_on(&db, RedisLease::acquire().await?, &[]).await?;
    let redis = audit.redis.url.clone();
    let audit_url = format!("http://{}", audit.addr);
    let sts = StsFixture::start_with(&db, &[("REDIS_URL", redis.as_str())]).await?;
    let streams_key = sts.streams_key_hex.clone();
    let audit_key = sts.audit_key_hex.clone();
    let api = ApiFixture::start_with(
        &db,
        &[
            ("REDIS_URL", redis.as_str()),
            ("STREAMS_HMAC_KEY", streams_key.as_str()),
            ("CARACAL_AUDIT_URL", audit_url.as_str()),
            (
                "CARACAL_INTERNAL_TOKEN",
                tests_harness::audit::INTERNAL_TOKEN,
            ),
            ("CARACAL_API_AUTH_FAILURES_PER_MINUTE", "1000000"),
        ],
    )
    .await?;
    let shared = [
        ("ISSUER_URL", sts.issuer.as_str()),
        ("REDIS_URL", redis.as_str()),
        ("STREAMS_HMAC_KEY", streams_key.as_str()),
        ("AUDIT_HMAC_KEY", audit_key.as_str()),
    ];
    let coordinator = CoordinatorFixture::start_with(&db, sts.addr, &shared).await?;
    let gateway = GatewayFixture::start_with(&db, &shared).await?;
    let upstream = Upstream::start().await?;
    // What the test seals into its provider (a test value, not a secret of anything).
    let credential = format!("upstream-key-{}", uuid::Uuid::new_v4().simple());

    let vars: Vec<(&str, String)> = vec![
        ("CONFORMANCE_E2E_API_URL", format!("http://{}", api.addr)),
        (
            "CONFORMANCE_E2E_ADMIN_TOKEN",
            tests_harness::api::BOOTSTRAP_TOKEN.into(),
        ),
        ("CONFORMANCE_E2E_STS_URL", format!("http://{}", sts.addr)),
        (
            "CONFORMANCE_E2E_COORDINATOR_URL",
            format!("http://{}", coordinator.addr),
        ),
        (
            "CONFORMANCE_E2E_COORDINATOR_TOKEN",
            tests_harness::coordinator::OPERATOR_TOKEN.into(),
        ),
        (
            "CONFORMANCE_E2E_GATEWAY_URL",
            format!("http://{}", gateway.addr),
        ),
        (
            "CONFORMANCE_E2E_UPSTREAM_URL",
            upstream.url(E2E_UPSTREAM_BASE),
        ),
        ("CONFORMANCE_E2E_UPSTREAM_CREDENTIAL", credential.clone()),
        ("CONFORMANCE_REQUIRE", "e2e".into()),
    ];
    let output = run_suite(vars, &["-rs", "-k", "test_end_to_end"]).await?;

    let received = upstream.requests();
    let mut conn = audit.redis.conn().await?;
    let dead_letters: u64 = redis::cmd("XLEN")
        .arg(control_events::streams::AUDIT_DLQ)
        .query_async(&mut conn)
        .await?;
    gateway.stop().await;
    coordinator.stop().await;
    sts.stop().await;
    api.stop().await;
    drop(audit.stop().await);

    assert!(
        output.status.success(),
        "the Python clients found differences (see above)"
    );
    assert!(!received.is_empty(), "the upstream received nothing");
    for request in &received {
        assert_eq!(request.path, format!("{E2E_UPSTREAM_BASE}{E2E_PATH}"));
        assert_eq!(
            request
                .headers
                .get(E2E_CREDENTIAL_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some(credential.as_str()),
            "the upstream did not receive the provider's credential"
        );
        assert!(
            request.headers.get("authorization").is_none(),
            "the caller's Authorization reached the upstream"
        );
        // A compact JWS starts with the base64url of `{"`: no header may carry one.
        for (name, value) in &request.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(
                !value.contains("eyJ"),
                "header {name} carried a token to the upstream"
            );
        }
        assert!(!String::from_utf8_lossy(&request.body).contains("eyJ"));
        assert!(!request.query.as_deref().unwrap_or_default().contains("eyJ"));
    }
    assert_eq!(
        dead_letters, 0,
        "the ledger dead-lettered events of this stack's producers"
    );
    Ok(())
}
