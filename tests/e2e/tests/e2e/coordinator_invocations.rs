//! Agent services and durable invocations (`/zones/{z}/services`, `/zones/{z}/invocations`)
//! through a real Coordinator against real Postgres and Redis, with a real STS serving the
//! zone key set that verifies the session mandates: registration and its refusals, health
//! by PATCH and by session heartbeat, the service lease sweeper, invocation creation with its
//! idempotency and lifecycle event, who may read, claim, complete and cancel, the retry
//! backoff, dead and failed outcomes, the deadline sweeper, and service deletion.

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use control_crypto::HmacKey;
use control_events::streams::INVOCATIONS_LIFECYCLE;
use serde_json::{Value, json};
use tests_harness::{
    TestDb,
    coordinator::{CoordinatorFixture, session_claims},
    gateway::{STREAMS_KEY_HEX, TestSigner},
    http::HttpResponse,
    provision::Provision,
    streams,
    sts::{StsFixture, redis_url},
};

const ZONE: &str = "co-invocations";
/// The application that hosts the services.
const HOST: &str = "app-host";
const REC_HOST: &str = "rec-host";
/// The application that invokes them.
const CALLER: &str = "app-caller";
const REC_CALLER: &str = "rec-caller";
/// An application that is neither.
const THIRD: &str = "app-third";
const REC_THIRD: &str = "rec-third";
/// An archived application (its own mandates are refused; admins see it as not found).
const ARCHIVED: &str = "app-archived";

/// Settings that keep every sweeper out of a test's way.
const NO_SWEEPS: &[(&str, &str)] = &[
    ("TTL_SWEEP_INTERVAL_MS", "3600000"),
    ("SERVICE_LEASE_SWEEP_INTERVAL_MS", "3600000"),
    ("DEADLINE_SWEEP_INTERVAL_MS", "3600000"),
];

/// A zone with three applications and an archived one, an authority record each, a signing
/// key the test holds, a real STS serving it, and a Coordinator fetching it from that STS.
struct Stack {
    db: TestDb,
    sts: StsFixture,
    co: CoordinatorFixture,
    signer: TestSigner,
}

impl Stack {
    async fn start(overrides: &[(&str, &str)]) -> Self {
        tests_harness::init_logs();
        let db = TestDb::migrated().await.unwrap();
        let mut p = Provision::open(&db).await.unwrap();
        p.zone(ZONE).await.unwrap();
        for (app, record) in [
            (HOST, REC_HOST),
            (CALLER, REC_CALLER),
            (THIRD, REC_THIRD),
            (ARCHIVED, "rec-archived"),
        ] {
            p.application(ZONE, app, "secret-value", &[]).await.unwrap();
            p.authority_record(ZONE, record, "application", app)
                .await
                .unwrap();
        }
        p.exec("UPDATE applications SET archived_at = now() WHERE id = 'app-archived'")
            .await
            .unwrap();
        let signer = TestSigner::insert(p.conn(), ZONE).await.unwrap();
        let sts = StsFixture::start(&db).await.unwrap();
        let co = CoordinatorFixture::start_with(&db, sts.addr, overrides)
            .await
            .unwrap();
        Self {
            db,
            sts,
            co,
            signer,
        }
    }

    async fn stop(self) {
        self.co.stop().await;
        self.sts.stop().await;
    }

    /// A session mandate of `app` with record `record` and scope `agent:lifecycle`.
    fn token(&self, app: &str, record: &str) -> String {
        self.signer
            .sign(&session_claims(ZONE, app, record))
            .unwrap()
    }

    /// A session mandate of `app` that also holds `coordinator.admin`.
    fn admin(&self, app: &str, record: &str) -> String {
        let mut claims = session_claims(ZONE, app, record);
        claims["scope"] = json!("agent:lifecycle coordinator.admin");
        self.signer.sign(&claims).unwrap()
    }

    async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> HttpResponse {
        self.co.call(token, method, path, body, &[]).await.unwrap()
    }

    async fn operator(&self, method: &str, path: &str, body: Option<&Value>) -> HttpResponse {
        self.co.operator(method, path, body).await.unwrap()
    }

    /// `POST /invocations` with `idempotency-key: key`.
    async fn invoke(&self, token: &str, key: &str, body: &Value) -> HttpResponse {
        self.co
            .call(
                token,
                "POST",
                &path("/invocations"),
                Some(body),
                &[("idempotency-key", key)],
            )
            .await
            .unwrap()
    }

    /// Creates an invocation (asserting 201) and returns its body.
    async fn invoked(&self, token: &str, key: &str, body: &Value) -> Value {
        let resp = self.invoke(token, key, body).await;
        let answer = json_of(&resp);
        assert_eq!(resp.status, 201, "invoke {body}: {answer}");
        answer
    }

    /// Registers `endpoint` for `app` (asserting 201) and returns the service id.
    async fn register(&self, token: &str, app: &str, endpoint: &str) -> String {
        let body = json!({"application_id": app, "endpoint_url": endpoint});
        let resp = self
            .call(token, "POST", &path("/services"), Some(&body))
            .await;
        let answer = json_of(&resp);
        assert_eq!(resp.status, 201, "register {body}: {answer}");
        text(&answer, "service_id")
    }

    /// `POST /services/{id}/claim` as `token`.
    async fn claim(&self, token: &str, service: &str) -> HttpResponse {
        self.call(token, "POST", &service_path(service, "/claim"), None)
            .await
    }

    /// Claims (asserting 200) and returns the claimed invocation.
    async fn claimed(&self, token: &str, service: &str) -> Value {
        let resp = self.claim(token, service).await;
        let body = json_of(&resp);
        assert_eq!(resp.status, 200, "claim on {service}: {body}");
        body
    }

    /// `POST /invocations/{id}/complete` as `token`.
    async fn complete(&self, token: &str, id: &str, body: &Value) -> HttpResponse {
        self.call(token, "POST", &invocation(id, "/complete"), Some(body))
            .await
    }

    /// Completes (asserting 200) and returns the row.
    async fn completed(&self, token: &str, id: &str, body: &Value) -> Value {
        let resp = self.complete(token, id, body).await;
        let answer = json_of(&resp);
        assert_eq!(resp.status, 200, "complete {id} with {body}: {answer}");
        answer
    }

    async fn pg(&self) -> Provision {
        Provision::open(&self.db).await.unwrap()
    }

    async fn exec(&self, sql: &str) {
        self.pg().await.exec(sql).await.unwrap();
    }

    /// `(status, attempts)` of an invocation in Postgres.
    async fn state(&self, id: &str) -> (String, i32) {
        let mut p = self.pg().await;
        sqlx::query_as("SELECT status, attempts FROM agent_invocations WHERE id = $1")
            .bind(id)
            .fetch_one(p.conn())
            .await
            .unwrap()
    }

    /// Seconds from now until the invocation's `available_at`.
    async fn due_in(&self, id: &str) -> f64 {
        let mut p = self.pg().await;
        sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM available_at - now())::float8 \
               FROM agent_invocations WHERE id = $1",
        )
        .bind(id)
        .fetch_one(p.conn())
        .await
        .unwrap()
    }

    /// `health` of a service in Postgres.
    async fn health(&self, id: &str) -> String {
        let mut p = self.pg().await;
        sqlx::query_scalar("SELECT health FROM agent_services WHERE id = $1")
            .bind(id)
            .fetch_one(p.conn())
            .await
            .unwrap()
    }

    /// Rows of `table` (unfiltered).
    async fn count(&self, table: &str) -> i64 {
        let mut p = self.pg().await;
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(p.conn())
            .await
            .unwrap()
    }

    /// Starts a session of `app` (asserting 201) and returns its id.
    async fn session(&self, token: &str, app: &str, lifecycle: &str) -> String {
        let body = json!({"application_id": app, "lifecycle": lifecycle});
        let resp = self
            .call(token, "POST", &path("/agents"), Some(&body))
            .await;
        let answer = json_of(&resp);
        assert_eq!(resp.status, 201, "start {body}: {answer}");
        text(&answer, "agent_session_id")
    }

    /// Waits until `check` holds (polling every 100 ms for up to `seconds`).
    async fn eventually<F, Fut>(&self, what: &str, seconds: u64, check: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
        while !check().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} did not happen within {seconds} s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn path(rest: &str) -> String {
    format!("/zones/{ZONE}{rest}")
}

fn service_path(id: &str, rest: &str) -> String {
    path(&format!("/services/{id}{rest}"))
}

fn invocation(id: &str, rest: &str) -> String {
    path(&format!("/invocations/{id}{rest}"))
}

fn json_of(resp: &HttpResponse) -> Value {
    resp.json().unwrap_or(Value::Null)
}

fn text(body: &Value, member: &str) -> String {
    body[member]
        .as_str()
        .unwrap_or_else(|| panic!("no {member} in {body}"))
        .to_owned()
}

/// Asserts the status and `error` code of a refusal.
fn expect(label: &str, resp: &HttpResponse, status: u16, code: &str) {
    let body = json_of(resp);
    assert_eq!(
        (resp.status, body["error"].as_str()),
        (status, Some(code)),
        "{label}: {body}"
    );
}

fn time(value: &Value) -> DateTime<Utc> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is not a time"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .with_timezone(&Utc)
}

/// The `id`s of a page's items.
fn item_ids(page: &Value, member: &str) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {page}"))
        .iter()
        .map(|item| text(item, member))
        .collect()
}

/// `(event, status, attempts)` of the lifecycle entries of invocation `id` after `after`,
/// each checked to carry a valid `_sig`, in stream order.
async fn lifecycle_of(after: &str, id: &str) -> Vec<(String, String, String)> {
    let key = HmacKey::from_hex(STREAMS_KEY_HEX).unwrap();
    streams::entries_after(&redis_url(), INVOCATIONS_LIFECYCLE, after)
        .await
        .unwrap()
        .into_iter()
        .filter(|fields| streams::field(fields, "invocation_id") == Some(id))
        .map(|fields| {
            control_crypto::verify_stream_fields(&[&key], INVOCATIONS_LIFECYCLE, &fields)
                .unwrap_or_else(|e| panic!("{fields:?} does not verify: {e:?}"));
            let get = |name: &str| streams::field(&fields, name).unwrap_or_default().to_owned();
            (get("event"), get("status"), get("attempts"))
        })
        .collect()
}

/// A minimal invocation of `service`.
fn call_of(service: &str, method: &str) -> Value {
    json!({"service_id": service, "method": method})
}

// ---------------------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn services_register_update_read_and_refuse() {
    let stack = Stack::start(NO_SWEEPS).await;
    let host = stack.token(HOST, REC_HOST);
    let caller = stack.token(CALLER, REC_CALLER);
    let services = path("/services");

    let body = json!({
        "application_id": HOST, "endpoint_url": "https://agents.example/a",
        "protocol_versions": ["a2a/0.3"], "framework_name": "langgraph",
        "framework_version": "0.2.1", "capabilities": ["summarize"], "metadata": {"team": "x"},
    });
    let resp = stack.call(&host, "POST", &services, Some(&body)).await;
    let first = json_of(&resp);
    assert_eq!(resp.status, 201, "{first}");
    let id = text(&first, "service_id");
    assert_eq!(first["id"], json!(id));
    assert_eq!(first["zone_id"], json!(ZONE));
    assert_eq!(first["application_id"], json!(HOST));
    assert_eq!(first["endpoint_url"], json!("https://agents.example/a"));
    assert_eq!(first["protocol_versions"], json!(["a2a/0.3"]));
    assert_eq!(first["framework_name"], json!("langgraph"));
    assert_eq!(first["framework_version"], json!("0.2.1"));
    assert_eq!(first["capabilities"], json!(["summarize"]));
    assert_eq!(first["health"], json!("starting"));
    assert_eq!(first["metadata"], json!({"team": "x"}));
    assert_eq!(first["last_heartbeat_at"], Value::Null);
    let created_at = time(&first["created_at"]);
    time(&first["updated_at"]);

    // The same application and endpoint update the registration in place.
    let again = json!({
        "application_id": HOST, "endpoint_url": "https://agents.example/a",
        "capabilities": ["summarize", "translate"],
    });
    let resp = stack.call(&host, "POST", &services, Some(&again)).await;
    let second = json_of(&resp);
    assert_eq!(resp.status, 200, "{second}");
    assert_eq!(second["service_id"], json!(id));
    assert_eq!(second["capabilities"], json!(["summarize", "translate"]));
    assert_eq!(time(&second["created_at"]), created_at);
    assert!(time(&second["updated_at"]) >= time(&first["updated_at"]));
    assert_eq!(stack.count("agent_services").await, 1);

    // Refusals: ownership, unknown and archived applications, bad fields.
    expect(
        "another application's registration",
        &stack.call(&caller, "POST", &services, Some(&body)).await,
        403,
        "application_ownership_required",
    );
    let admin = stack.admin(CALLER, REC_CALLER);
    for app in ["app-ghost", ARCHIVED] {
        let resp = stack
            .call(
                &admin,
                "POST",
                &services,
                Some(&json!({"application_id": app, "endpoint_url": "https://x.example"})),
            )
            .await;
        expect(app, &resp, 404, "application_not_found");
    }
    let long = format!("https://x.example/{}", "a".repeat(2048));
    for bad in [
        json!({"endpoint_url": "https://x.example"}),
        json!({"application_id": HOST}),
        json!({"application_id": HOST, "endpoint_url": "ftp://x.example"}),
        json!({"application_id": HOST, "endpoint_url": "not a url"}),
        json!({"application_id": HOST, "endpoint_url": long}),
        json!({"application_id": HOST, "endpoint_url": "https://x.example", "capabilities": "all"}),
        json!({"application_id": HOST, "endpoint_url": "https://x.example", "protocol_versions": [1]}),
        json!({"application_id": HOST, "endpoint_url": "https://x.example", "metadata": []}),
    ] {
        let resp = stack.call(&host, "POST", &services, Some(&bad)).await;
        expect(&bad.to_string(), &resp, 400, "invalid_body");
    }
    assert_eq!(
        stack.count("agent_services").await,
        1,
        "a refusal registered"
    );

    // An admin registers for another application.
    let other = stack
        .register(&admin, HOST, "http://agents.example/b")
        .await;

    // Reads: the operator and any agent of the zone; filters; paging.
    let one = stack.operator("GET", &service_path(&id, ""), None).await;
    assert_eq!(one.status, 200, "{}", json_of(&one));
    assert_eq!(
        json_of(&one)["capabilities"],
        json!(["summarize", "translate"])
    );
    expect(
        "an unknown service",
        &stack
            .operator("GET", &service_path("svc-none", ""), None)
            .await,
        404,
        "service_not_found",
    );
    let all = json_of(&stack.operator("GET", &services, None).await);
    assert_eq!(
        item_ids(&all, "service_id"),
        vec![other.clone(), id.clone()]
    );
    let first_page = json_of(
        &stack
            .operator("GET", &format!("{services}?limit=1"), None)
            .await,
    );
    assert_eq!(item_ids(&first_page, "service_id"), vec![other.clone()]);
    let cursor = text(&first_page, "next_cursor");
    let rest = json_of(
        &stack
            .operator("GET", &format!("{services}?limit=1&cursor={cursor}"), None)
            .await,
    );
    assert_eq!(item_ids(&rest, "service_id"), vec![id.clone()]);
    assert_eq!(rest["next_cursor"], Value::Null);
    let none = json_of(
        &stack
            .call(
                &host,
                "GET",
                &format!("{services}?application_id={CALLER}"),
                None,
            )
            .await,
    );
    assert_eq!(item_ids(&none, "service_id"), Vec::<String>::new());

    // Health by PATCH: only the owning application, only the four values.
    let health = service_path(&id, "/health");
    let resp = stack
        .call(
            &host,
            "PATCH",
            &health,
            Some(&json!({"health": "degraded"})),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", json_of(&resp));
    assert_eq!(json_of(&resp)["health"], json!("degraded"));
    assert_eq!(stack.health(&id).await, "degraded");
    expect(
        "another application's PATCH",
        &stack
            .call(
                &caller,
                "PATCH",
                &health,
                Some(&json!({"health": "healthy"})),
            )
            .await,
        404,
        "service_not_found",
    );
    expect(
        "an unknown health",
        &stack
            .call(&host, "PATCH", &health, Some(&json!({"health": "sleepy"})))
            .await,
        400,
        "invalid_body",
    );
    assert_eq!(stack.health(&id).await, "degraded");
    let degraded = json_of(
        &stack
            .operator("GET", &format!("{services}?health=degraded"), None)
            .await,
    );
    assert_eq!(item_ids(&degraded, "service_id"), vec![id.clone()]);

    stack.stop().await;
}

#[tokio::test]
async fn heartbeats_record_service_health_and_silent_services_turn_unhealthy() {
    let stack = Stack::start(&[
        ("TTL_SWEEP_INTERVAL_MS", "3600000"),
        ("DEADLINE_SWEEP_INTERVAL_MS", "3600000"),
        ("SERVICE_LEASE_SWEEP_INTERVAL_MS", "200"),
        ("SERVICE_AGENT_LEASE_SECONDS", "5"),
    ])
    .await;
    let host = stack.token(HOST, REC_HOST);
    let third = stack.token(THIRD, REC_THIRD);
    let silent = stack
        .register(&host, HOST, "https://agents.example/silent")
        .await;
    let alive = stack
        .register(&host, HOST, "https://agents.example/alive")
        .await;
    let idle = stack
        .register(&host, HOST, "https://agents.example/idle")
        .await;
    let foreign = stack
        .register(&third, THIRD, "https://agents.example/foreign")
        .await;
    let session = stack.session(&host, HOST, "service").await;
    let heartbeat = path(&format!("/agents/{session}/heartbeat"));

    for service in [&silent, &alive] {
        let beat = json!({"status": "healthy", "lease_generation": 1, "service_id": service});
        let resp = stack.call(&host, "POST", &heartbeat, Some(&beat)).await;
        let body = json_of(&resp);
        assert_eq!(resp.status, 200, "{body}");
        assert_eq!(body["service"]["id"], json!(service), "{body}");
        assert_eq!(body["service"]["health"], json!("healthy"), "{body}");
        assert!(
            time(&body["service"]["last_heartbeat_at"]) > Utc::now() - chrono::Duration::seconds(5)
        );
        assert_eq!(stack.health(service).await, "healthy");
    }
    for (label, service) in [
        ("another application's service", foreign.as_str()),
        ("an unknown service", "svc-none"),
    ] {
        let beat = json!({"status": "degraded", "lease_generation": 1, "service_id": service});
        expect(
            label,
            &stack.call(&host, "POST", &heartbeat, Some(&beat)).await,
            404,
            "service_not_found",
        );
    }
    assert_eq!(stack.health(&foreign).await, "starting");

    // A healthy service whose last heartbeat is older than the lease turns unhealthy; the
    // fresh one stays healthy and one that never beat stays as it was.
    stack
        .exec(&format!(
            "UPDATE agent_services SET last_heartbeat_at = now() - interval '1 minute' \
              WHERE id = '{silent}'"
        ))
        .await;
    stack
        .eventually("the silent service turning unhealthy", 10, || async {
            stack.health(&silent).await == "unhealthy"
        })
        .await;
    assert_eq!(stack.health(&alive).await, "healthy");
    assert_eq!(stack.health(&idle).await, "starting");
    assert_eq!(stack.health(&foreign).await, "starting");

    stack.stop().await;
}

// ---------------------------------------------------------------------------------------
// Invocations: creation
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn invocation_create_validates_replays_and_announces() {
    let stack = Stack::start(NO_SWEEPS).await;
    let host = stack.token(HOST, REC_HOST);
    let caller = stack.token(CALLER, REC_CALLER);
    let service = stack
        .register(&host, HOST, "https://agents.example/a")
        .await;
    let own_session = stack.session(&caller, CALLER, "task").await;
    let host_session = stack.session(&host, HOST, "task").await;
    let third_session = stack
        .session(&stack.token(THIRD, REC_THIRD), THIRD, "task")
        .await;
    let after = streams::last_entry_id(&redis_url(), INVOCATIONS_LIFECYCLE)
        .await
        .unwrap();

    // The idempotency key is required.
    let plain = call_of(&service, "summarize");
    let resp = stack
        .call(&caller, "POST", &path("/invocations"), Some(&plain))
        .await;
    expect("no idempotency-key", &resp, 400, "idempotency_key_required");
    expect(
        "a key with a space",
        &stack.invoke(&caller, "two words", &plain).await,
        400,
        "invalid_idempotency_key",
    );

    // Body rules.
    let mut bad = Vec::new();
    for (member, value) in [
        ("method", json!("")),
        ("method", json!("m".repeat(257))),
        ("method", json!(7)),
        ("params", json!([1])),
        ("metadata", json!("x")),
        ("max_attempts", json!(0)),
        ("max_attempts", json!(11)),
        ("timeout_ms", json!(0)),
        ("timeout_ms", json!(3_600_001)),
        ("retry_policy", json!({"backoff_ms": -1})),
        ("retry_policy", json!({"backoff_ms": 3_600_001})),
    ] {
        let mut body = plain.clone();
        body[member] = value;
        bad.push(body);
    }
    bad.push(json!({"method": "summarize"}));
    for (n, body) in bad.iter().enumerate() {
        let resp = stack.invoke(&caller, &format!("bad-{n}"), body).await;
        expect(&body.to_string(), &resp, 400, "invalid_body");
    }

    // Unknown service, foreign sessions.
    expect(
        "an unknown service",
        &stack
            .invoke(&caller, "k-ghost", &call_of("svc-none", "summarize"))
            .await,
        404,
        "service_not_found",
    );
    let ended = stack.session(&caller, CALLER, "task").await;
    let resp = stack
        .operator("DELETE", &path(&format!("/agents/{ended}")), None)
        .await;
    assert_eq!(resp.status, 204, "{}", json_of(&resp));
    for (n, (label, member, session)) in [
        (
            "an ended source session of the caller",
            "source_session_id",
            &ended,
        ),
        (
            "a source session of another application",
            "source_session_id",
            &host_session,
        ),
        (
            "an unknown source session",
            "source_session_id",
            &"sess-none".to_owned(),
        ),
        (
            "a target session outside the service's application",
            "target_session_id",
            &third_session,
        ),
        (
            "an unknown target session",
            "target_session_id",
            &"sess-none".to_owned(),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut body = plain.clone();
        body[member] = json!(session);
        let resp = stack.invoke(&caller, &format!("session-{n}"), &body).await;
        expect(label, &resp, 404, "session_not_found");
    }
    assert_eq!(
        stack.count("agent_invocations").await,
        0,
        "a refusal created"
    );

    // A valid call: the defaults.
    let mut full = plain.clone();
    full["params"] = json!({"text": "hello"});
    full["metadata"] = json!({"trace": "t-1"});
    full["source_session_id"] = json!(own_session);
    full["target_session_id"] = json!(host_session);
    let resp = stack.invoke(&caller, "key-1", &full).await;
    let created = json_of(&resp);
    assert_eq!(resp.status, 201, "{created}");
    assert_eq!(resp.header("idempotency-replayed"), None);
    let id = text(&created, "invocation_id");
    assert_eq!(created["id"], json!(id));
    assert_eq!(created["zone_id"], json!(ZONE));
    assert_eq!(created["service_id"], json!(service));
    assert_eq!(created["method"], json!("summarize"));
    assert_eq!(created["params"], json!({"text": "hello"}));
    assert_eq!(created["metadata"], json!({"trace": "t-1"}));
    assert_eq!(created["status"], json!("pending"));
    assert_eq!(created["attempts"], json!(0));
    assert_eq!(created["max_attempts"], json!(3));
    assert_eq!(created["timeout_ms"], json!(30000));
    assert_eq!(
        created["retry_policy"]["backoff_ms"],
        json!(1000),
        "{created}"
    );
    assert_eq!(created["source_session_id"], json!(own_session));
    assert_eq!(created["target_session_id"], json!(host_session));
    assert_eq!(created["result"], Value::Null);
    assert_eq!(created["error"], Value::Null);
    time(&created["created_at"]);
    assert_eq!(stack.state(&id).await, ("pending".to_owned(), 0));

    // Explicit limits are kept.
    let mut tuned = call_of(&service, "translate");
    tuned["max_attempts"] = json!(10);
    tuned["timeout_ms"] = json!(3_600_000);
    tuned["retry_policy"] = json!({"backoff_ms": 0});
    let body = stack.invoked(&caller, "key-2", &tuned).await;
    assert_eq!(
        (
            &body["max_attempts"],
            &body["timeout_ms"],
            &body["retry_policy"]["backoff_ms"]
        ),
        (&json!(10), &json!(3_600_000), &json!(0))
    );

    // Replays: same key and body → same answer; another body → conflict.
    let replay = stack.invoke(&caller, "key-1", &full).await;
    assert_eq!(replay.status, 201, "{}", json_of(&replay));
    assert_eq!(
        replay.header("idempotency-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(json_of(&replay), created);
    let mut changed = full.clone();
    changed["params"] = json!({"text": "bye"});
    expect(
        "same key, another body",
        &stack.invoke(&caller, "key-1", &changed).await,
        409,
        "idempotency_key_conflict",
    );
    assert_eq!(stack.count("agent_invocations").await, 2);
    // Keys are unique per service: another caller's same key is a conflict, not a replay.
    expect(
        "another caller's same key",
        &stack
            .invoke(&stack.token(THIRD, REC_THIRD), "key-1", &plain)
            .await,
        409,
        "idempotency_key_conflict",
    );
    assert_eq!(stack.count("agent_invocations").await, 2);

    // The lifecycle event, signed, once the outbox dispatched it.
    let key = HmacKey::from_hex(STREAMS_KEY_HEX).unwrap();
    let entry = streams::await_entry(
        &redis_url(),
        INVOCATIONS_LIFECYCLE,
        &after,
        Duration::from_secs(15),
        |fields| streams::field(fields, "invocation_id") == Some(id.as_str()),
    )
    .await
    .unwrap()
    .unwrap_or_else(|| panic!("no lifecycle event for {id}"));
    control_crypto::verify_stream_fields(&[&key], INVOCATIONS_LIFECYCLE, &entry)
        .unwrap_or_else(|e| panic!("{entry:?} does not verify: {e:?}"));
    let fields: BTreeMap<String, String> = entry.into_iter().collect();
    assert!(fields["event"].ends_with("created"), "event of {fields:?}");
    assert_eq!(fields["zone_id"], ZONE);
    assert_eq!(fields["service_id"], service);
    assert_eq!(fields["status"], "pending");
    assert_eq!(fields["attempts"], "0");
    // The replay announced nothing more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let announced = streams::entries_after(&redis_url(), INVOCATIONS_LIFECYCLE, &after)
        .await
        .unwrap()
        .into_iter()
        .filter(|fields| streams::field(fields, "invocation_id") == Some(id.as_str()))
        .count();
    assert_eq!(announced, 1);

    stack.stop().await;
}

#[tokio::test]
async fn invocations_are_visible_only_to_the_creator_the_service_and_the_operator() {
    let stack = Stack::start(NO_SWEEPS).await;
    let host = stack.token(HOST, REC_HOST);
    let caller = stack.token(CALLER, REC_CALLER);
    let third = stack.token(THIRD, REC_THIRD);
    let service = stack
        .register(&host, HOST, "https://agents.example/a")
        .await;
    let first = text(
        &stack
            .invoked(&caller, "k1", &call_of(&service, "one"))
            .await,
        "invocation_id",
    );
    let second = text(
        &stack
            .invoked(&caller, "k2", &call_of(&service, "two"))
            .await,
        "invocation_id",
    );

    for (label, token) in [("creator", &caller), ("service owner", &host)] {
        let resp = stack
            .call(token, "GET", &invocation(&first, ""), None)
            .await;
        assert_eq!(resp.status, 200, "{label}: {}", json_of(&resp));
        assert_eq!(json_of(&resp)["invocation_id"], json!(first));
    }
    let resp = stack.operator("GET", &invocation(&first, ""), None).await;
    assert_eq!(resp.status, 200, "{}", json_of(&resp));
    expect(
        "a third application",
        &stack
            .call(&third, "GET", &invocation(&first, ""), None)
            .await,
        404,
        "invocation_not_found",
    );
    expect(
        "an unknown invocation",
        &stack
            .operator("GET", &invocation("inv-none", ""), None)
            .await,
        404,
        "invocation_not_found",
    );

    // The service's list: its owner and the operator, newest first, status filter, paging.
    let list = service_path(&service, "/invocations");
    let page = json_of(&stack.call(&host, "GET", &list, None).await);
    assert_eq!(
        item_ids(&page, "invocation_id"),
        vec![second.clone(), first.clone()]
    );
    let page = json_of(
        &stack
            .operator("GET", &format!("{list}?limit=1"), None)
            .await,
    );
    assert_eq!(item_ids(&page, "invocation_id"), vec![second.clone()]);
    assert!(page["next_cursor"].is_string(), "{page}");
    stack.claimed(&host, &service).await;
    let running = json_of(
        &stack
            .call(&host, "GET", &format!("{list}?status=running"), None)
            .await,
    );
    assert_eq!(item_ids(&running, "invocation_id"), vec![first.clone()]);
    let pending = json_of(
        &stack
            .call(&host, "GET", &format!("{list}?status=pending"), None)
            .await,
    );
    assert_eq!(item_ids(&pending, "invocation_id"), vec![second.clone()]);
    expect(
        "an unknown status filter",
        &stack
            .call(&host, "GET", &format!("{list}?status=paused"), None)
            .await,
        400,
        "invalid_query",
    );
    for (label, token) in [("the creator", &caller), ("a third application", &third)] {
        let resp = stack.call(token, "GET", &list, None).await;
        expect(label, &resp, 404, "service_not_found");
    }

    stack.stop().await;
}

// ---------------------------------------------------------------------------------------
// Claim, complete, retry
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn claim_runs_the_oldest_due_invocation_and_complete_records_the_result() {
    let stack = Stack::start(NO_SWEEPS).await;
    let host = stack.token(HOST, REC_HOST);
    let caller = stack.token(CALLER, REC_CALLER);
    let service = stack
        .register(&host, HOST, "https://agents.example/a")
        .await;
    let after = streams::last_entry_id(&redis_url(), INVOCATIONS_LIFECYCLE)
        .await
        .unwrap();

    let empty = stack.claim(&host, &service).await;
    assert_eq!(empty.status, 204, "{}", json_of(&empty));
    let mut body = call_of(&service, "first");
    body["timeout_ms"] = json!(60_000);
    let first = text(&stack.invoked(&caller, "k1", &body).await, "invocation_id");
    let second = text(
        &stack
            .invoked(&caller, "k2", &call_of(&service, "second"))
            .await,
        "invocation_id",
    );

    // Only the service's application claims.
    expect(
        "the creator's claim",
        &stack.claim(&caller, &service).await,
        404,
        "service_not_found",
    );
    assert_eq!(stack.state(&first).await, ("pending".to_owned(), 0));

    let before = Utc::now();
    let claimed = stack.claimed(&host, &service).await;
    assert_eq!(claimed["invocation_id"], json!(first), "the oldest first");
    assert_eq!(claimed["status"], json!("running"));
    assert_eq!(claimed["attempts"], json!(1));
    let started = time(&claimed["started_at"]);
    let deadline = time(&claimed["deadline_at"]);
    assert!(
        started >= before - chrono::Duration::seconds(1),
        "{claimed}"
    );
    let lease = (deadline - started).num_milliseconds();
    assert!(
        (59_000..=61_000).contains(&lease),
        "deadline {lease} ms after start"
    );
    assert_eq!(stack.state(&first).await, ("running".to_owned(), 1));
    let next = stack.claimed(&host, &service).await;
    assert_eq!(next["invocation_id"], json!(second));
    let none = stack.claim(&host, &service).await;
    assert_eq!(none.status, 204, "{}", json_of(&none));

    // Completing: body rules, then who, then the outcome.
    for bad in [
        json!({}),
        json!({"outcome": "maybe"}),
        json!({"outcome": "failed", "retryable": "yes"}),
    ] {
        let resp = stack.complete(&host, &first, &bad).await;
        expect(&bad.to_string(), &resp, 400, "invalid_body");
    }
    // A completion that names another attempt than the running one is fenced.
    expect(
        "a stale attempt",
        &stack
            .complete(
                &host,
                &first,
                &json!({"outcome": "succeeded", "attempt": 2}),
            )
            .await,
        409,
        "invocation_attempt_fenced",
    );
    let success =
        json!({"outcome": "succeeded", "result": {"summary": "short", "n": [1, 2]}, "attempt": 1});
    expect(
        "the creator's completion",
        &stack.complete(&caller, &first, &success).await,
        404,
        "invocation_not_found",
    );
    assert_eq!(stack.state(&first).await, ("running".to_owned(), 1));
    let done = stack.completed(&host, &first, &success).await;
    assert_eq!(done["status"], json!("succeeded"));
    assert_eq!(done["result"], json!({"summary": "short", "n": [1, 2]}));
    assert_eq!(done["error"], Value::Null);
    assert!(time(&done["completed_at"]) >= started);
    let mut p = stack.pg().await;
    let stored: (String, Option<Value>) =
        sqlx::query_as("SELECT status, result_json FROM agent_invocations WHERE id = $1")
            .bind(&first)
            .fetch_one(p.conn())
            .await
            .unwrap();
    drop(p);
    assert_eq!(
        stored,
        (
            "succeeded".to_owned(),
            Some(json!({"summary": "short", "n": [1, 2]}))
        )
    );
    let read = json_of(
        &stack
            .call(&caller, "GET", &invocation(&first, ""), None)
            .await,
    );
    assert_eq!(read["result"], json!({"summary": "short", "n": [1, 2]}));
    expect(
        "completing twice",
        &stack.complete(&host, &first, &success).await,
        409,
        "invocation_not_running",
    );
    let third = text(
        &stack
            .invoked(&caller, "k3", &call_of(&service, "third"))
            .await,
        "invocation_id",
    );
    expect(
        "completing a pending one",
        &stack.complete(&host, &third, &success).await,
        409,
        "invocation_not_running",
    );

    // A scalar result is stored as well.
    let scalar = stack
        .completed(
            &host,
            &second,
            &json!({"outcome": "succeeded", "result": 42}),
        )
        .await;
    assert_eq!(scalar["result"], json!(42));

    // The terminal event of the first one.
    let entry = streams::await_entry(
        &redis_url(),
        INVOCATIONS_LIFECYCLE,
        &after,
        Duration::from_secs(15),
        |fields| {
            streams::field(fields, "invocation_id") == Some(first.as_str())
                && streams::field(fields, "status") == Some("succeeded")
        },
    )
    .await
    .unwrap();
    assert!(entry.is_some(), "no succeeded event for {first}");

    stack.stop().await;
}

#[tokio::test]
async fn failures_back_off_then_die_unless_not_retryable() {
    let stack = Stack::start(NO_SWEEPS).await;
    let host = stack.token(HOST, REC_HOST);
    let caller = stack.token(CALLER, REC_CALLER);
    let fail = json!({"outcome": "failed", "error": {"code": "boom"}});

    let after = streams::last_entry_id(&redis_url(), INVOCATIONS_LIFECYCLE)
        .await
        .unwrap();

    // backoff 0: retried at once, dead at max_attempts.
    let quick = stack
        .register(&host, HOST, "https://agents.example/quick")
        .await;
    let mut body = call_of(&quick, "flaky");
    body["max_attempts"] = json!(2);
    body["retry_policy"] = json!({"backoff_ms": 0});
    let id = text(&stack.invoked(&caller, "q", &body).await, "invocation_id");
    stack.claimed(&host, &quick).await;
    let once = stack.completed(&host, &id, &fail).await;
    assert_eq!(once["status"], json!("pending"), "{once}");
    assert_eq!(once["attempts"], json!(1));
    assert_eq!(once["error"], json!({"code": "boom"}));
    let again = stack.claimed(&host, &quick).await;
    assert_eq!(again["invocation_id"], json!(id));
    assert_eq!(again["attempts"], json!(2));
    let dead = stack.completed(&host, &id, &fail).await;
    assert_eq!(dead["status"], json!("dead"), "{dead}");
    assert!(!dead["completed_at"].is_null(), "{dead}");
    assert_eq!(stack.state(&id).await, ("dead".to_owned(), 2));
    assert_eq!(stack.claim(&host, &quick).await.status, 204);
    let dead_id = id.clone();

    // Not retryable: failed at the first attempt.
    let id = text(
        &stack
            .invoked(&caller, "nr", &call_of(&quick, "broken"))
            .await,
        "invocation_id",
    );
    stack.claimed(&host, &quick).await;
    let failed = stack
        .completed(
            &host,
            &id,
            &json!({"outcome": "failed", "error": {"code": "bad"}, "retryable": false}),
        )
        .await;
    assert_eq!(failed["status"], json!("failed"), "{failed}");
    assert_eq!(stack.state(&id).await, ("failed".to_owned(), 1));

    // backoff 1000 ms: not due right after, due 1 s later; the wait doubles per attempt.
    let slow = stack
        .register(&host, HOST, "https://agents.example/slow")
        .await;
    let mut body = call_of(&slow, "flaky");
    body["retry_policy"] = json!({"backoff_ms": 1000});
    let id = text(&stack.invoked(&caller, "s", &body).await, "invocation_id");
    stack.claimed(&host, &slow).await;
    let back = stack.completed(&host, &id, &fail).await;
    assert_eq!(back["status"], json!("pending"));
    let wait = stack.due_in(&id).await;
    assert!((0.2..=1.05).contains(&wait), "first backoff {wait} s");
    let early = stack.claim(&host, &slow).await;
    assert_eq!(
        early.status,
        204,
        "claimed before the backoff: {}",
        json_of(&early)
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = stack.claimed(&host, &slow).await;
    assert_eq!(
        (&second["invocation_id"], &second["attempts"]),
        (&json!(id), &json!(2))
    );
    stack.completed(&host, &id, &fail).await;
    let wait = stack.due_in(&id).await;
    assert!((1.2..=2.05).contains(&wait), "second backoff {wait} s");
    assert_eq!(stack.claim(&host, &slow).await.status, 204);

    // Every transition of the dead one was announced, in order.
    let mut events = Vec::new();
    for _attempt in 0..150 {
        events = lifecycle_of(&after, &dead_id).await;
        if events.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected: Vec<(String, String, String)> = [
        ("invocation.created", "pending", "0"),
        ("invocation.started", "running", "1"),
        ("invocation.retrying", "pending", "1"),
        ("invocation.started", "running", "2"),
        ("invocation.dead", "dead", "2"),
    ]
    .iter()
    .map(|(e, s, a)| ((*e).to_owned(), (*s).to_owned(), (*a).to_owned()))
    .collect();
    assert_eq!(events, expected);

    // The wait is capped at 60 s.
    let capped = stack
        .register(&host, HOST, "https://agents.example/capped")
        .await;
    let mut body = call_of(&capped, "flaky");
    body["retry_policy"] = json!({"backoff_ms": 3_600_000});
    let id = text(&stack.invoked(&caller, "c", &body).await, "invocation_id");
    stack.claimed(&host, &capped).await;
    stack.completed(&host, &id, &fail).await;
    let wait = stack.due_in(&id).await;
    assert!((55.0..=60.05).contains(&wait), "capped backoff {wait} s");

    stack.stop().await;
}

// ---------------------------------------------------------------------------------------
// Cancel and delete
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn cancel_stops_pending_ones_and_asks_running_ones() {
    let stack = Stack::start(NO_SWEEPS).await;
    let host = stack.token(HOST, REC_HOST);
    let caller = stack.token(CALLER, REC_CALLER);
    let third = stack.token(THIRD, REC_THIRD);
    let service = stack
        .register(&host, HOST, "https://agents.example/a")
        .await;
    let cancel = |id: &str| invocation(id, "/cancel");

    // Pending → canceled, by the creator or by the operator; a third application sees nothing.
    let pending = text(
        &stack
            .invoked(&caller, "p1", &call_of(&service, "one"))
            .await,
        "invocation_id",
    );
    expect(
        "a third application's cancel",
        &stack.call(&third, "POST", &cancel(&pending), None).await,
        404,
        "invocation_not_found",
    );
    expect(
        "the service's cancel",
        &stack.call(&host, "POST", &cancel(&pending), None).await,
        404,
        "invocation_not_found",
    );
    let resp = stack.call(&caller, "POST", &cancel(&pending), None).await;
    assert_eq!(resp.status, 200, "{}", json_of(&resp));
    assert_eq!(json_of(&resp)["status"], json!("canceled"));
    assert_eq!(stack.state(&pending).await.0, "canceled");
    expect(
        "canceling twice",
        &stack.call(&caller, "POST", &cancel(&pending), None).await,
        409,
        "invocation_finished",
    );
    let by_operator = text(
        &stack
            .invoked(&caller, "p2", &call_of(&service, "two"))
            .await,
        "invocation_id",
    );
    let resp = stack.operator("POST", &cancel(&by_operator), None).await;
    assert_eq!(resp.status, 200, "{}", json_of(&resp));
    assert_eq!(stack.state(&by_operator).await.0, "canceled");
    assert_eq!(
        stack.claim(&host, &service).await.status,
        204,
        "a canceled invocation was claimed"
    );

    // Running → cancel_requested; its completion, whatever the outcome, ends it canceled.
    for (key, outcome) in [("r1", "succeeded"), ("r2", "failed")] {
        let id = text(
            &stack
                .invoked(&caller, key, &call_of(&service, "long"))
                .await,
            "invocation_id",
        );
        stack.claimed(&host, &service).await;
        let resp = stack.call(&caller, "POST", &cancel(&id), None).await;
        assert_eq!(resp.status, 200, "{}", json_of(&resp));
        assert_eq!(json_of(&resp)["status"], json!("cancel_requested"));
        assert_eq!(stack.state(&id).await.0, "cancel_requested");
        let done = stack
            .completed(&host, &id, &json!({"outcome": outcome, "result": 1}))
            .await;
        assert_eq!(done["status"], json!("canceled"), "{outcome}: {done}");
        expect(
            "canceling a canceled one",
            &stack.operator("POST", &cancel(&id), None).await,
            409,
            "invocation_finished",
        );
    }

    // A succeeded one is finished.
    let id = text(
        &stack
            .invoked(&caller, "s1", &call_of(&service, "quick"))
            .await,
        "invocation_id",
    );
    stack.claimed(&host, &service).await;
    stack
        .completed(&host, &id, &json!({"outcome": "succeeded"}))
        .await;
    expect(
        "canceling a succeeded one",
        &stack.call(&caller, "POST", &cancel(&id), None).await,
        409,
        "invocation_finished",
    );
    assert_eq!(stack.state(&id).await.0, "succeeded");

    stack.stop().await;
}

#[tokio::test]
async fn a_service_with_active_invocations_cannot_be_deleted() {
    let stack = Stack::start(NO_SWEEPS).await;
    let host = stack.token(HOST, REC_HOST);
    let caller = stack.token(CALLER, REC_CALLER);
    let service = stack
        .register(&host, HOST, "https://agents.example/a")
        .await;
    let spare = stack
        .register(&host, HOST, "https://agents.example/b")
        .await;
    let one = service_path(&service, "");

    let id = text(
        &stack
            .invoked(&caller, "k1", &call_of(&service, "one"))
            .await,
        "invocation_id",
    );
    expect(
        "another application's delete",
        &stack.call(&caller, "DELETE", &one, None).await,
        404,
        "service_not_found",
    );
    expect(
        "delete with a pending invocation",
        &stack.call(&host, "DELETE", &one, None).await,
        409,
        "service_has_active_invocations",
    );
    stack.claimed(&host, &service).await;
    expect(
        "delete with a running invocation",
        &stack.operator("DELETE", &one, None).await,
        409,
        "service_has_active_invocations",
    );
    stack
        .completed(&host, &id, &json!({"outcome": "succeeded", "result": "ok"}))
        .await;

    // Finished invocations do not hold it back.
    let resp = stack.call(&host, "DELETE", &one, None).await;
    assert_eq!(resp.status, 204, "{}", json_of(&resp));
    expect(
        "reading a deleted service",
        &stack.operator("GET", &one, None).await,
        404,
        "service_not_found",
    );
    expect(
        "deleting twice",
        &stack.call(&host, "DELETE", &one, None).await,
        404,
        "service_not_found",
    );
    expect(
        "invoking a deleted service",
        &stack.invoke(&caller, "k2", &call_of(&service, "two")).await,
        404,
        "service_not_found",
    );
    let resp = stack
        .operator("DELETE", &service_path(&spare, ""), None)
        .await;
    assert_eq!(resp.status, 204, "operator delete: {}", json_of(&resp));
    assert_eq!(stack.count("agent_services").await, 0);

    stack.stop().await;
}

// ---------------------------------------------------------------------------------------
// Deadline sweeper
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn overdue_invocations_are_retried_timed_out_or_canceled_by_the_sweeper() {
    let stack = Stack::start(&[
        ("TTL_SWEEP_INTERVAL_MS", "3600000"),
        ("SERVICE_LEASE_SWEEP_INTERVAL_MS", "3600000"),
        ("DEADLINE_SWEEP_INTERVAL_MS", "200"),
    ])
    .await;
    let host = stack.token(HOST, REC_HOST);
    let caller = stack.token(CALLER, REC_CALLER);

    // Retried while attempts remain, then timed out.
    let service = stack
        .register(&host, HOST, "https://agents.example/a")
        .await;
    let mut body = call_of(&service, "slow");
    body["timeout_ms"] = json!(100);
    body["max_attempts"] = json!(2);
    body["retry_policy"] = json!({"backoff_ms": 0});
    let id = text(&stack.invoked(&caller, "t", &body).await, "invocation_id");
    stack.claimed(&host, &service).await;
    stack
        .eventually(
            "the first overdue attempt returning to pending",
            10,
            || async { stack.state(&id).await == ("pending".to_owned(), 1) },
        )
        .await;
    let again = stack.claimed(&host, &service).await;
    assert_eq!(
        (&again["invocation_id"], &again["attempts"]),
        (&json!(id), &json!(2))
    );
    stack
        .eventually("the last overdue attempt timing out", 10, || async {
            stack.state(&id).await.0 == "timed_out"
        })
        .await;
    assert_eq!(stack.state(&id).await, ("timed_out".to_owned(), 2));
    expect(
        "completing a timed-out one",
        &stack
            .complete(&host, &id, &json!({"outcome": "succeeded"}))
            .await,
        409,
        "invocation_not_running",
    );
    assert_eq!(stack.claim(&host, &service).await.status, 204);

    // A cancel_requested one past its deadline ends canceled.
    let other = stack
        .register(&host, HOST, "https://agents.example/b")
        .await;
    let mut body = call_of(&other, "slow");
    body["timeout_ms"] = json!(1500);
    let id = text(&stack.invoked(&caller, "c", &body).await, "invocation_id");
    stack.claimed(&host, &other).await;
    let resp = stack
        .call(&caller, "POST", &invocation(&id, "/cancel"), None)
        .await;
    assert_eq!(
        json_of(&resp)["status"],
        json!("cancel_requested"),
        "{}",
        json_of(&resp)
    );
    stack
        .eventually(
            "the overdue cancel_requested one ending canceled",
            10,
            || async { stack.state(&id).await.0 == "canceled" },
        )
        .await;

    // One within its deadline is left alone.
    let mut body = call_of(&other, "patient");
    body["timeout_ms"] = json!(600_000);
    let id = text(&stack.invoked(&caller, "p", &body).await, "invocation_id");
    stack.claimed(&host, &other).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(stack.state(&id).await, ("running".to_owned(), 1));

    stack.stop().await;
}

// ---------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn concurrent_first_uses_of_one_key_create_once_and_replay() {
    let stack = Stack::start(NO_SWEEPS).await;
    let host = stack.token(HOST, REC_HOST);
    let service = stack
        .register(&host, HOST, "https://agents.example/a")
        .await;
    let auth = format!("Bearer {}", stack.token(CALLER, REC_CALLER));
    let body = call_of(&service, "race").to_string();
    let addr = stack.co.addr;
    let racers: Vec<_> = (0..8)
        .map(|_racer| {
            let auth = auth.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let headers = [
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                    ("idempotency-key", "race-key"),
                ];
                tests_harness::http::request(addr, "POST", &path("/invocations"), &headers, body)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    let mut answers = Vec::new();
    let mut replayed = 0;
    for racer in racers {
        let resp = racer.await.unwrap();
        answers.push((resp.status, json_of(&resp)["error"].clone()));
        if resp.status == 201 {
            ids.insert(text(&json_of(&resp), "invocation_id"));
        }
        if resp.header("idempotency-replayed").as_deref() == Some("true") {
            replayed += 1;
        }
    }
    assert_eq!(stack.count("agent_invocations").await, 1);
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert!(
        answers.iter().all(|(status, _error)| *status == 201),
        "a concurrent retry of the same create was refused: {answers:?}"
    );
    assert_eq!(replayed, 7);

    // Concurrent claims hand each due invocation to exactly one claimer.
    let id = ids.pop_first().unwrap();
    let second = text(
        &stack
            .invoked(
                &stack.token(CALLER, REC_CALLER),
                "other-key",
                &call_of(&service, "two"),
            )
            .await,
        "invocation_id",
    );
    let claim_auth = format!("Bearer {host}");
    let claim_path = service_path(&service, "/claim");
    let claimers: Vec<_> = (0..6)
        .map(|_claimer| {
            let auth = claim_auth.clone();
            let claim_path = claim_path.clone();
            tokio::spawn(async move {
                tests_harness::http::request(
                    addr,
                    "POST",
                    &claim_path,
                    &[("authorization", auth.as_str())],
                    "",
                )
                .await
                .unwrap()
            })
        })
        .collect();
    let mut claimed = Vec::new();
    let mut statuses = Vec::new();
    for claimer in claimers {
        let resp = claimer.await.unwrap();
        statuses.push(resp.status);
        if resp.status == 200 {
            claimed.push(text(&json_of(&resp), "invocation_id"));
        }
    }
    claimed.sort();
    let mut both = vec![id.clone(), second.clone()];
    both.sort();
    assert_eq!(claimed, both, "claims answered {statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 204).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(stack.state(&id).await, ("running".to_owned(), 1));
    assert_eq!(stack.state(&second).await, ("running".to_owned(), 1));

    stack.stop().await;
}
