//! Agent sessions (`/zones/{z}/agents`) through a real Coordinator against real Postgres and
//! Redis, with a real STS serving the zone key set that verifies the session mandates
//! (wire-contract §7.1, §7.3, §7.5; authority §2.1, §2.5): the authentication table, the
//! ordered start rules with their exact answers, capacity under concurrency, idempotency,
//! edge inheritance, terminate and its cascade down to the streams, heartbeat and lease
//! fencing, suspend and resume, the reads, and the expiry sweeper.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use control_crypto::HmacKey;
use control_events::streams::{AGENTS_LIFECYCLE, DELEGATIONS_INVALIDATE, SESSIONS_REVOKE};
use serde_json::{Value, json};
use tests_harness::{
    TestDb,
    coordinator::{CoordinatorFixture, OPERATOR_TOKEN, session_claims},
    gateway::{STREAMS_KEY_HEX, TestSigner},
    http::{self, HttpResponse},
    provision::Provision,
    streams,
    sts::{StsFixture, redis_url},
};

const ZONE: &str = "co-sessions";
/// A managed application and its authority record.
const APP: &str = "app-a";
const REC: &str = "rec-a";
/// Another managed application and its authority record.
const OTHER: &str = "app-b";
const REC_OTHER: &str = "rec-b";
/// A DCR application (expires in a day) and its authority record.
const DCR: &str = "app-dcr";
const REC_DCR: &str = "rec-dcr";

/// Settings that keep the expiry sweeper out of a test's way (its first round runs at start,
/// before any session exists).
const NO_SWEEPS: &[(&str, &str)] = &[
    ("TTL_SWEEP_INTERVAL_MS", "3600000"),
    ("SERVICE_LEASE_SWEEP_INTERVAL_MS", "3600000"),
];

/// A zone with two managed applications and a DCR one, an authority record each, a signing
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
        for (app, record) in [(APP, REC), (OTHER, REC_OTHER)] {
            p.application(ZONE, app, "secret-value", &[]).await.unwrap();
            p.authority_record(ZONE, record, "application", app)
                .await
                .unwrap();
        }
        sqlx::query(
            "INSERT INTO applications (id, zone_id, name, registration_method, expires_at) \
             VALUES ($1, $2, $1, 'dcr', now() + interval '1 day')",
        )
        .bind(DCR)
        .bind(ZONE)
        .execute(p.conn())
        .await
        .unwrap();
        p.authority_record(ZONE, REC_DCR, "application", DCR)
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

    fn sign(&self, claims: &Value) -> String {
        self.signer.sign(claims).unwrap()
    }

    /// A session mandate of `app` with record `record` and scope `agent:lifecycle`.
    fn token(&self, app: &str, record: &str) -> String {
        self.sign(&session_claims(ZONE, app, record))
    }

    /// A session mandate of `app` with `scope`.
    fn token_with_scope(&self, app: &str, record: &str, scope: &str) -> String {
        let mut claims = session_claims(ZONE, app, record);
        claims["scope"] = json!(scope);
        self.sign(&claims)
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

    /// A request with a raw body (JSON content type) and extra headers.
    async fn raw(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> HttpResponse {
        let auth = format!("Bearer {token}");
        let mut all = vec![
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        all.extend_from_slice(headers);
        http::request(self.co.addr, method, path, &all, body.to_owned())
            .await
            .unwrap()
    }

    async fn start_as(&self, token: &str, body: &Value) -> HttpResponse {
        self.call(token, "POST", &agents(), Some(body)).await
    }

    /// Starts a session (asserting 201) and returns its body.
    async fn started_body(&self, token: &str, body: &Value) -> Value {
        let resp = self.start_as(token, body).await;
        let answer = json_of(&resp);
        assert_eq!(resp.status, 201, "start {body}: {answer}");
        answer
    }

    /// Starts a session (asserting 201) and returns its id.
    async fn started(&self, token: &str, body: &Value) -> String {
        id_of(&self.started_body(token, body).await)
    }

    /// Terminates a session as the operator (asserting 204).
    async fn terminate(&self, id: &str) {
        let resp = self.co.operator("DELETE", &agent(id), None).await.unwrap();
        assert_eq!(resp.status, 204, "terminate {id}: {}", json_of(&resp));
    }

    async fn pg(&self) -> Provision {
        Provision::open(&self.db).await.unwrap()
    }

    async fn exec(&self, sql: &str) {
        self.pg().await.exec(sql).await.unwrap();
    }

    /// `(status, termination_reason)` of an agent session.
    async fn status(&self, id: &str) -> (String, Option<String>) {
        let mut p = self.pg().await;
        sqlx::query_as("SELECT status, termination_reason FROM agent_sessions WHERE id = $1")
            .bind(id)
            .fetch_one(p.conn())
            .await
            .unwrap()
    }

    /// An integer column of an agent session.
    async fn session_int(&self, id: &str, column: &str) -> i64 {
        let mut p = self.pg().await;
        sqlx::query_scalar(&format!(
            "SELECT {column}::bigint FROM agent_sessions WHERE id = $1"
        ))
        .bind(id)
        .fetch_one(p.conn())
        .await
        .unwrap()
    }

    /// Sessions of the zone in any status.
    async fn session_count(&self) -> i64 {
        let mut p = self.pg().await;
        sqlx::query_scalar("SELECT count(*) FROM agent_sessions")
            .fetch_one(p.conn())
            .await
            .unwrap()
    }

    /// Status of a delegation edge.
    async fn edge_status(&self, id: &str) -> String {
        let mut p = self.pg().await;
        sqlx::query_scalar("SELECT status FROM delegation_edges WHERE id = $1")
            .bind(id)
            .fetch_one(p.conn())
            .await
            .unwrap()
    }

    /// The zone's graph epoch (0 before the first edge).
    async fn epoch(&self) -> i64 {
        let mut p = self.pg().await;
        let epoch: Option<i64> =
            sqlx::query_scalar("SELECT epoch FROM delegation_graph_epochs WHERE zone_id = $1")
                .bind(ZONE)
                .fetch_optional(p.conn())
                .await
                .unwrap();
        epoch.unwrap_or(0)
    }

    /// The payload of the Coordinator's `caracal_outbox` row on `topic` with `dedupe`.
    async fn outbox(&self, topic: &str, dedupe: &str) -> Option<Value> {
        let mut p = self.pg().await;
        sqlx::query_scalar(
            "SELECT payload_json FROM caracal_outbox \
              WHERE producer = 'coordinator' AND topic = $1 AND dedupe_key = $2",
        )
        .bind(topic)
        .bind(dedupe)
        .fetch_optional(p.conn())
        .await
        .unwrap()
    }

    /// The Coordinator's `caracal_outbox` rows.
    async fn outbox_count(&self) -> i64 {
        let mut p = self.pg().await;
        sqlx::query_scalar("SELECT count(*) FROM caracal_outbox")
            .fetch_one(p.conn())
            .await
            .unwrap()
    }

    /// Waits until the dispatcher has published every outbox row of the database.
    async fn wait_published(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let mut p = self.pg().await;
            let unpublished: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT topic, coalesce(dedupe_key, ''), status FROM caracal_outbox \
                  WHERE status <> 'published'",
            )
            .fetch_all(p.conn())
            .await
            .unwrap();
            if unpublished.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "outbox rows not published: {unpublished:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

fn agents() -> String {
    format!("/zones/{ZONE}/agents")
}

fn agent(id: &str) -> String {
    format!("/zones/{ZONE}/agents/{id}")
}

fn json_of(resp: &HttpResponse) -> Value {
    resp.json().unwrap_or(Value::Null)
}

fn id_of(body: &Value) -> String {
    body["agent_session_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no agent_session_id in {body}"))
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

/// The ids of a page's items.
fn item_ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {page}"))
        .iter()
        .map(id_of)
        .collect()
}

/// The id of a stream's last entry (`0-0` when it is empty or missing).
async fn last_entry_id(stream: &str) -> String {
    streams::last_entry_id(&redis_url(), stream).await.unwrap()
}

/// The entries of `stream` after `after` whose field `field` is `value`, each checked to
/// carry a valid `_sig` under the fixtures' streams key, as maps.
async fn signed_entries(
    stream: &str,
    after: &str,
    field: &str,
    value: &str,
) -> Vec<BTreeMap<String, String>> {
    let key = HmacKey::from_hex(STREAMS_KEY_HEX).unwrap();
    streams::entries_after(&redis_url(), stream, after)
        .await
        .unwrap()
        .into_iter()
        .filter(|fields| fields.iter().any(|(k, v)| k == field && v == value))
        .map(|fields| {
            control_crypto::verify_stream_fields(&[&key], stream, &fields)
                .unwrap_or_else(|e| panic!("{stream} entry {fields:?} does not verify: {e:?}"));
            fields.into_iter().collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Authentication (wire-contract §7.1)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn each_authentication_failure_answers_with_its_code() {
    let stack = Stack::start(NO_SWEEPS).await;
    let start = json!({"application_id": APP});
    let path = agents();

    let bare = http::request(
        stack.co.addr,
        "POST",
        &path,
        &[("content-type", "application/json")],
        start.to_string(),
    )
    .await
    .unwrap();
    expect("no Authorization header", &bare, 401, "missing_token");
    let basic = http::request(
        stack.co.addr,
        "POST",
        &path,
        &[
            ("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l"),
            ("content-type", "application/json"),
        ],
        start.to_string(),
    )
    .await
    .unwrap();
    expect("another scheme", &basic, 401, "missing_token");

    let valid = session_claims(ZONE, APP, REC);
    let with = |member: &str, value: Value| {
        let mut claims = valid.clone();
        claims[member] = value;
        stack.sign(&claims)
    };
    let tampered = {
        let good = stack.sign(&valid);
        let parts: Vec<&str> = good.split('.').collect();
        let mut claims = valid.clone();
        claims["client_id"] = json!(OTHER);
        claims["sub"] = json!(OTHER);
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&claims).unwrap());
        format!("{}.{payload}.{}", parts[0], parts[2])
    };
    let now = Utc::now().timestamp();
    let elsewhere = "/zones/elsewhere/agents".to_owned();
    let heartbeat = format!("{}/heartbeat", agent("some-session"));
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        (
            "empty bearer",
            String::new(),
            path.as_str(),
            401,
            "missing_token",
        ),
        (
            "bearer over 4096 bytes",
            "a".repeat(4097),
            path.as_str(),
            401,
            "missing_token",
        ),
        (
            "not a JWT",
            "not-a-jwt".to_owned(),
            path.as_str(),
            401,
            "invalid_token",
        ),
        (
            "bad signature",
            tampered,
            path.as_str(),
            401,
            "invalid_token",
        ),
        (
            "unknown key id",
            stack.signer.sign_with_kid("no-such-kid", &valid).unwrap(),
            path.as_str(),
            401,
            "invalid_token",
        ),
        (
            "use=gateway",
            with("use", json!("gateway")),
            path.as_str(),
            401,
            "invalid_token",
        ),
        (
            "use missing",
            with("use", Value::Null),
            path.as_str(),
            401,
            "invalid_token",
        ),
        (
            "another issuer",
            with("iss", json!("http://elsewhere.invalid")),
            path.as_str(),
            401,
            "invalid_token",
        ),
        (
            "another audience",
            with("aud", json!(["http://elsewhere.invalid"])),
            path.as_str(),
            401,
            "invalid_token",
        ),
        (
            "expired",
            with("exp", json!(now - 300)),
            path.as_str(),
            401,
            "invalid_token",
        ),
        (
            "issued in the future",
            with("iat", json!(now + 300)),
            path.as_str(),
            401,
            "invalid_token",
        ),
        (
            "empty sub",
            with("sub", json!("")),
            path.as_str(),
            401,
            "invalid_token",
        ),
        (
            "empty client_id",
            with("client_id", json!("")),
            path.as_str(),
            401,
            "invalid_token",
        ),
        (
            "malformed zone claim",
            with("zone_id", json!("no zone!")),
            path.as_str(),
            401,
            "invalid_token",
        ),
        (
            "a zone without keys",
            with("zone_id", json!("elsewhere")),
            elsewhere.as_str(),
            401,
            "invalid_token",
        ),
        (
            "scope without agent:lifecycle",
            with(
                "scope",
                json!("coordinator.admin coordinator.spawn_for:app-a"),
            ),
            path.as_str(),
            403,
            "missing_scope",
        ),
        (
            "path of another zone",
            stack.sign(&valid),
            elsewhere.as_str(),
            403,
            "zone_mismatch",
        ),
        (
            "operator token on start",
            OPERATOR_TOKEN.to_owned(),
            path.as_str(),
            401,
            "invalid_token",
        ),
        (
            "operator token on heartbeat",
            OPERATOR_TOKEN.to_owned(),
            heartbeat.as_str(),
            401,
            "invalid_token",
        ),
        (
            "an authority record that does not exist",
            stack.token(APP, "rec-none"),
            path.as_str(),
            401,
            "identity_revoked",
        ),
    ];
    for (label, token, path, status, code) in &cases {
        let payload = if path.ends_with("/heartbeat") {
            json!({"status": "healthy", "lease_generation": 1})
        } else {
            start.clone()
        };
        let resp = stack.call(token, "POST", path, Some(&payload)).await;
        expect(label, &resp, *status, code);
    }
    assert_eq!(
        stack.session_count().await,
        0,
        "a refused call created a session"
    );

    // The valid mandate starts; the operator token reads it and lists.
    let id = stack.started(&stack.sign(&valid), &start).await;
    let read = stack.co.operator("GET", &agent(&id), None).await.unwrap();
    assert_eq!(read.status, 200, "{}", json_of(&read));
    assert_eq!(json_of(&read)["agent_session_id"], json!(id));
    let list = stack.co.operator("GET", &agents(), None).await.unwrap();
    assert_eq!(item_ids(&json_of(&list)), vec![id.clone()]);

    // Revocations take effect at once: the same mandate worked before.
    let mut p = stack.pg().await;
    for (app, record) in [
        ("app-archived", "rec-archived"),
        ("app-expired", "rec-app-expired"),
    ] {
        p.application(ZONE, app, "secret-value", &[]).await.unwrap();
        p.authority_record(ZONE, record, "application", app)
            .await
            .unwrap();
    }
    for record in ["rec-revoked", "rec-expired"] {
        p.authority_record(ZONE, record, "application", APP)
            .await
            .unwrap();
    }
    drop(p);
    let revocations = [
        (
            "record revoked",
            APP,
            "rec-revoked",
            "UPDATE sessions SET status = 'revoked', revoked_at = now() WHERE id = 'rec-revoked'",
        ),
        (
            "record expired",
            APP,
            "rec-expired",
            "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id = 'rec-expired'",
        ),
        (
            "application archived",
            "app-archived",
            "rec-archived",
            "UPDATE applications SET archived_at = now() WHERE id = 'app-archived'",
        ),
        (
            "application expired",
            "app-expired",
            "rec-app-expired",
            "UPDATE applications SET expires_at = now() - interval '1 second' WHERE id = 'app-expired'",
        ),
    ];
    for (label, app, record, sql) in revocations {
        let token = stack.token(app, record);
        let before = stack.call(&token, "GET", &agents(), None).await;
        assert_eq!(before.status, 200, "{label} (before): {}", json_of(&before));
        stack.exec(sql).await;
        let list = stack.call(&token, "GET", &agents(), None).await;
        expect(label, &list, 401, "identity_revoked");
        let start = stack
            .start_as(&token, &json!({"application_id": app}))
            .await;
        expect(label, &start, 401, "identity_revoked");
        // The start confirms the identity in its own transaction (decision 0033): still
        // before it reads the body or judges the named application.
        let malformed = stack.raw(&token, "POST", &agents(), "{", &[]).await;
        expect(
            &format!("{label}, malformed body"),
            &malformed,
            401,
            "identity_revoked",
        );
        let foreign = stack
            .start_as(&token, &json!({"application_id": OTHER}))
            .await;
        expect(
            &format!("{label}, another application"),
            &foreign,
            401,
            "identity_revoked",
        );
    }

    // Without the STS key set no mandate can be verified: fail closed.
    let blind =
        CoordinatorFixture::start_with(&stack.db, "127.0.0.1:1".parse().unwrap(), NO_SWEEPS)
            .await
            .unwrap();
    let resp = blind
        .call(&stack.token(APP, REC), "POST", &agents(), Some(&start), &[])
        .await
        .unwrap();
    expect("the STS unreachable", &resp, 503, "sts_unavailable");
    let operator = blind.operator("GET", &agents(), None).await.unwrap();
    assert_eq!(operator.status, 200, "the operator needs no key set");
    blind.stop().await;

    // The per-client rate: a second Coordinator allowing two calls a minute.
    let limited = CoordinatorFixture::start_with(
        &stack.db,
        stack.sts.addr,
        &[("COORDINATOR_RATE_LIMIT_PER_MIN", "2")],
    )
    .await
    .unwrap();
    let token = stack.token(APP, REC);
    for _call in 0..2 {
        let resp = limited
            .call(&token, "GET", &agents(), None, &[])
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{}", json_of(&resp));
    }
    let over = limited
        .call(&token, "GET", &agents(), None, &[])
        .await
        .unwrap();
    expect("third call in a minute", &over, 429, "rate_limited");
    assert_eq!(over.header("retry-after").as_deref(), Some("60"));
    // The start checks the rate in its own transaction, after the identity (decision 0033).
    let start_over = limited
        .call(
            &token,
            "POST",
            &agents(),
            Some(&json!({"application_id": APP})),
            &[],
        )
        .await
        .unwrap();
    expect("a start over the rate", &start_over, 429, "rate_limited");
    let other = limited
        .call(&stack.token(OTHER, REC_OTHER), "GET", &agents(), None, &[])
        .await
        .unwrap();
    assert_eq!(other.status, 200, "the rate is per client");
    limited.stop().await;
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------
// Start (wire-contract §7.3, authority §2.1)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_start_answers_201_with_the_fields_the_library_reads() {
    let stack = Stack::start(NO_SWEEPS).await;
    let token = stack.token(APP, REC);
    let before = Utc::now();

    let task = stack
        .started_body(
            &token,
            &json!({
                "application_id": APP, "labels": ["planner", APP],
                "metadata": {"purpose": "test"}, "subject_token": "eyJ.ignored",
            }),
        )
        .await;
    let id = id_of(&task);
    assert!(!id.is_empty());
    assert!(task["lease_generation"].is_i64(), "{task}");
    assert_eq!(task["lease_generation"], json!(0));
    assert_eq!(task["lifecycle"], json!("task"));
    assert_eq!(task["status"], json!("active"));
    assert_eq!(task["depth"], json!(0));
    assert_eq!(task["ttl_seconds"], json!(3600));
    assert_eq!(task["labels"], json!(["planner", APP]));
    assert_eq!(task["zone_id"], json!(ZONE));
    assert_eq!(task["application_id"], json!(APP));
    assert_eq!(task["subject_authority_record_id"], json!(REC));
    assert_eq!(task["parent_id"], Value::Null);
    assert_eq!(task["delegation_edge_id"], Value::Null);
    assert_eq!(task["heartbeat_deadline_at"], Value::Null);
    assert!(time(&task["started_at"]) >= before - chrono::Duration::seconds(5));
    let mut p = stack.pg().await;
    let row: (
        String,
        String,
        Option<i32>,
        Option<String>,
        i64,
        Vec<String>,
        Value,
    ) = sqlx::query_as(
        "SELECT lifecycle, status, ttl_seconds, subject_authority_record_id, lease_generation, \
                labels, metadata_json FROM agent_sessions WHERE id = $1",
    )
    .bind(&id)
    .fetch_one(p.conn())
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "task".to_owned(),
            "active".to_owned(),
            Some(3600),
            Some(REC.to_owned()),
            0,
            vec!["planner".to_owned(), APP.to_owned()],
            json!({"purpose": "test"}),
        )
    );
    drop(p);
    let spawn = stack
        .outbox(AGENTS_LIFECYCLE, &format!("spawn:{id}:v0"))
        .await
        .expect("the spawn event is in the outbox");
    assert_eq!(spawn["event"], json!("spawn"));
    assert_eq!(spawn["agent_session_id"], json!(id));
    assert_eq!(spawn["application_id"], json!(APP));
    assert_eq!(spawn["lifecycle"], json!("task"));
    assert_eq!(spawn["zone_id"], json!(ZONE));
    assert_eq!(spawn["parent_id"], Value::Null);
    assert_eq!(spawn["lease_generation"], json!(0));

    let service = stack
        .started_body(
            &token,
            &json!({"application_id": APP, "lifecycle": "service"}),
        )
        .await;
    assert!(service["lease_generation"].is_i64(), "{service}");
    assert_eq!(service["lease_generation"], json!(1));
    assert_eq!(service["lifecycle"], json!("service"));
    assert_eq!(service["ttl_seconds"], Value::Null);
    assert_eq!(service["labels"], json!([]));
    let deadline = time(&service["heartbeat_deadline_at"]);
    let lease = deadline - Utc::now();
    assert!(
        lease > chrono::Duration::seconds(100) && lease <= chrono::Duration::seconds(121),
        "a service's lease is SERVICE_AGENT_LEASE_SECONDS (120): {lease}"
    );
    // The spawn message, written with the row, names the service's first lease.
    let service_id = service["id"].as_str().expect("a service id").to_owned();
    let spawn = stack
        .outbox(AGENTS_LIFECYCLE, &format!("spawn:{service_id}:v0"))
        .await
        .expect("the service's spawn event is in the outbox");
    assert_eq!(spawn["lifecycle"], json!("service"));
    assert_eq!(spawn["lease_generation"], json!(1));

    // The subject record may be named in the body; a TTL in range is kept.
    stack
        .pg()
        .await
        .authority_record(ZONE, "rec-a2", "application", APP)
        .await
        .unwrap();
    let named = stack
        .started_body(
            &token,
            &json!({"application_id": APP, "subject_session_id": "rec-a2", "ttl_seconds": 60}),
        )
        .await;
    assert_eq!(named["subject_authority_record_id"], json!("rec-a2"));
    assert_eq!(named["ttl_seconds"], json!(60));

    // Field rules answer 400 invalid_body and create nothing.
    let count = stack.session_count().await;
    let bad_bodies = [
        json!({"application_id": APP, "lifecycle": "service", "ttl_seconds": 60}),
        json!({"application_id": APP, "ttl_seconds": 0}),
        json!({"application_id": APP, "ttl_seconds": 86401}),
        json!({"application_id": APP, "labels": vec!["x"; 33]}),
        json!({"application_id": APP, "labels": ["x".repeat(65)]}),
        json!({"application_id": APP, "lifecycle": "daemon"}),
        json!({"application_id": APP, "parent_authority": "all"}),
        json!({"application_id": APP, "colour": "red"}),
        json!({"lifecycle": "task"}),
    ];
    for body in bad_bodies {
        let resp = stack.start_as(&token, &body).await;
        expect(&body.to_string(), &resp, 400, "invalid_body");
    }
    assert_eq!(stack.session_count().await, count);
    stack.stop().await;
}

#[tokio::test]
async fn start_rules_refuse_in_order_with_their_codes() {
    let stack = Stack::start(NO_SWEEPS).await;
    let mut p = stack.pg().await;
    for app in ["app-archived", "app-expired"] {
        p.application(ZONE, app, "secret-value", &[]).await.unwrap();
    }
    for record in ["rec-revoked", "rec-old"] {
        p.authority_record(ZONE, record, "application", APP)
            .await
            .unwrap();
    }
    p.exec(
        "UPDATE applications SET archived_at = now() WHERE id = 'app-archived'; \
         UPDATE applications SET expires_at = now() - interval '1 second' WHERE id = 'app-expired'; \
         UPDATE sessions SET status = 'revoked', revoked_at = now() WHERE id = 'rec-revoked'; \
         UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id = 'rec-old'",
    )
    .await
    .unwrap();
    drop(p);
    let a = stack.token(APP, REC);
    let b = stack.token(OTHER, REC_OTHER);
    let dcr = stack.token(DCR, REC_DCR);
    let spawn_for = stack.token_with_scope(
        APP,
        REC,
        "agent:lifecycle coordinator.spawn_for:ghost coordinator.spawn_for:app-archived \
         coordinator.spawn_for:app-expired coordinator.spawn_for:app-b",
    );
    let spawn_under =
        stack.token_with_scope(APP, REC, "agent:lifecycle coordinator.spawn_under:app-b");

    let a_task = stack.started(&a, &json!({"application_id": APP})).await;
    let a_service = stack
        .started(&a, &json!({"application_id": APP, "lifecycle": "service"}))
        .await;
    let b_task = stack.started(&b, &json!({"application_id": OTHER})).await;
    let dcr_task = stack.started(&dcr, &json!({"application_id": DCR})).await;
    let a_dead = stack.started(&a, &json!({"application_id": APP})).await;
    stack.terminate(&a_dead).await;

    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "another application",
            a.as_str(),
            json!({"application_id": OTHER}),
            403,
            "application_ownership_required",
        ),
        (
            "ownership answers before every later rule",
            a.as_str(),
            json!({"application_id": OTHER, "subject_session_id": "rec-revoked", "parent_id": "nope"}),
            403,
            "application_ownership_required",
        ),
        (
            "an unknown application",
            spawn_for.as_str(),
            json!({"application_id": "ghost"}),
            404,
            "application_not_found",
        ),
        (
            "an archived application",
            spawn_for.as_str(),
            json!({"application_id": "app-archived"}),
            404,
            "application_not_found",
        ),
        (
            "an expired application",
            spawn_for.as_str(),
            json!({"application_id": "app-expired"}),
            404,
            "application_not_found",
        ),
        (
            "the application answers before the subject record",
            spawn_for.as_str(),
            json!({"application_id": "ghost", "subject_session_id": "rec-revoked"}),
            404,
            "application_not_found",
        ),
        (
            "a revoked subject record",
            a.as_str(),
            json!({"application_id": APP, "subject_session_id": "rec-revoked"}),
            404,
            "session_not_found",
        ),
        (
            "an expired subject record",
            a.as_str(),
            json!({"application_id": APP, "subject_session_id": "rec-old"}),
            404,
            "session_not_found",
        ),
        (
            "an unknown subject record",
            a.as_str(),
            json!({"application_id": APP, "subject_session_id": "rec-none"}),
            404,
            "session_not_found",
        ),
        (
            "a DCR service",
            dcr.as_str(),
            json!({"application_id": DCR, "lifecycle": "service"}),
            409,
            "dcr_application_cannot_host_service",
        ),
        (
            "a DCR child",
            dcr.as_str(),
            json!({"application_id": DCR, "parent_id": dcr_task}),
            409,
            "dcr_application_cannot_be_child",
        ),
        (
            "a second DCR session",
            dcr.as_str(),
            json!({"application_id": DCR}),
            409,
            "dcr_application_already_bound",
        ),
        (
            "a child of a DCR parent (before the ownership rule)",
            a.as_str(),
            json!({"application_id": APP, "parent_id": dcr_task}),
            409,
            "dcr_application_cannot_start_child",
        ),
        (
            "an unknown parent",
            a.as_str(),
            json!({"application_id": APP, "parent_id": "no-such-session"}),
            404,
            "parent_not_found",
        ),
        (
            "an ended parent",
            a.as_str(),
            json!({"application_id": APP, "parent_id": a_dead}),
            404,
            "parent_not_found",
        ),
        (
            "a service under a task",
            a.as_str(),
            json!({"application_id": APP, "lifecycle": "service", "parent_id": a_task}),
            409,
            "task_session_cannot_start_service",
        ),
        (
            "a parent of another application",
            a.as_str(),
            json!({"application_id": APP, "parent_id": b_task}),
            403,
            "parent_ownership_required",
        ),
    ];
    let count = stack.session_count().await;
    for (label, token, body, status, code) in &cases {
        let resp = stack.start_as(token, body).await;
        expect(label, &resp, *status, code);
    }
    assert_eq!(
        stack.session_count().await,
        count,
        "a refused start created a row"
    );

    // coordinator.spawn_for:<app> starts for another application, under the bearer's record.
    let for_b = stack
        .started_body(&spawn_for, &json!({"application_id": OTHER}))
        .await;
    assert_eq!(for_b["application_id"], json!(OTHER));
    assert_eq!(for_b["subject_authority_record_id"], json!(REC));
    // coordinator.spawn_under:<app> starts under another application's parent.
    let under_b = stack
        .started_body(
            &spawn_under,
            &json!({"application_id": APP, "parent_id": b_task}),
        )
        .await;
    assert_eq!(under_b["parent_id"], json!(b_task));
    assert_eq!(under_b["depth"], json!(1));
    // A service parent takes service and task children.
    for lifecycle in ["service", "task"] {
        let child = stack
            .started_body(
                &a,
                &json!({"application_id": APP, "lifecycle": lifecycle, "parent_id": a_service}),
            )
            .await;
        assert_eq!(child["lifecycle"], json!(lifecycle));
        assert_eq!(child["parent_id"], json!(a_service));
    }
    assert_eq!(stack.session_int(&a_service, "child_count").await, 2);

    // Ten children per session; an ended child frees its place.
    let parent = stack.started(&a, &json!({"application_id": APP})).await;
    let mut children = Vec::new();
    for _child in 0..10 {
        children.push(
            stack
                .started(&a, &json!({"application_id": APP, "parent_id": parent}))
                .await,
        );
    }
    let eleventh = json!({"application_id": APP, "parent_id": parent});
    expect(
        "an eleventh child",
        &stack.start_as(&a, &eleventh).await,
        429,
        "session_children_limit_exceeded",
    );
    assert_eq!(stack.session_int(&parent, "child_count").await, 10);
    stack.terminate(&children[0]).await;
    assert_eq!(stack.session_int(&parent, "child_count").await, 9);
    stack.started(&a, &eleventh).await;
    stack.stop().await;
}

#[tokio::test]
async fn capacity_counts_live_slots_zone_before_application() {
    let mut overrides = NO_SWEEPS.to_vec();
    overrides.extend([("MAX_AGENTS_PER_ZONE", "3"), ("MAX_AGENTS_PER_APP", "2")]);
    let stack = Stack::start(&overrides).await;
    let a = stack.token(APP, REC);
    let b = stack.token(OTHER, REC_OTHER);
    let start_a = json!({"application_id": APP});
    let start_b = json!({"application_id": OTHER});

    let first = stack.started(&a, &start_a).await;
    let second = stack.started(&a, &start_a).await;
    expect(
        "a third session of one application",
        &stack.start_as(&a, &start_a).await,
        429,
        "session_limit_exceeded",
    );
    stack.started(&b, &start_b).await;
    expect(
        "a fourth session in the zone",
        &stack.start_as(&b, &start_b).await,
        429,
        "session_zone_limit_exceeded",
    );
    expect(
        "the zone limit answers before the application limit",
        &stack.start_as(&a, &start_a).await,
        429,
        "session_zone_limit_exceeded",
    );

    // A suspended session keeps its slot.
    let suspend = stack
        .call(&a, "PATCH", &format!("{}/suspend", agent(&first)), None)
        .await;
    assert_eq!(json_of(&suspend), json!({"suspended": 1}));
    expect(
        "a suspended session holds a slot",
        &stack.start_as(&b, &start_b).await,
        429,
        "session_zone_limit_exceeded",
    );
    // A task past its TTL holds none, even before the sweeper marks it.
    stack
        .exec(&format!(
            "UPDATE agent_sessions SET started_at = now() - interval '2 hours' WHERE id = '{second}'"
        ))
        .await;
    assert_eq!(stack.status(&second).await.0, "active");
    let third_a = stack.started(&a, &start_a).await;
    // A terminated session holds none.
    expect(
        "full again",
        &stack.start_as(&b, &start_b).await,
        429,
        "session_zone_limit_exceeded",
    );
    stack.terminate(&third_a).await;
    stack.started(&b, &start_b).await;
    stack.stop().await;
}

/// `(held, pending releases)` of an application's slot counter.
async fn slot_counter(stack: &Stack, app: &str) -> (i64, i64) {
    let mut p = stack.pg().await;
    sqlx::query_as(
        "SELECT (SELECT coalesce(sum(held), 0)::int8 FROM agent_session_slots
                  WHERE zone_id = $1 AND application_id = $2),
                (SELECT count(*) FROM agent_session_slot_releases
                  WHERE zone_id = $1 AND application_id = $2)",
    )
    .bind(ZONE)
    .bind(app)
    .fetch_one(p.conn())
    .await
    .unwrap()
}

#[tokio::test]
async fn slot_counters_bound_the_live_count_and_fold_releases_at_the_next_start() {
    let stack = Stack::start(NO_SWEEPS).await;
    let a = stack.token(APP, REC);
    let start_a = json!({"application_id": APP});
    assert_eq!(slot_counter(&stack, APP).await, (0, 0));

    let first = stack.started(&a, &start_a).await;
    let second = stack.started(&a, &start_a).await;
    assert_eq!(
        slot_counter(&stack, APP).await,
        (2, 0),
        "each start takes a slot"
    );

    // A suspended session keeps its slot: no release.
    let suspend = stack
        .call(&a, "PATCH", &format!("{}/suspend", agent(&first)), None)
        .await;
    assert_eq!(json_of(&suspend), json!({"suspended": 1}));
    assert_eq!(slot_counter(&stack, APP).await, (2, 0));

    // Ending a session only records a release; the counter waits for the next start.
    stack.terminate(&second).await;
    assert_eq!(slot_counter(&stack, APP).await, (2, 1));
    stack.started(&a, &start_a).await;
    assert_eq!(
        slot_counter(&stack, APP).await,
        (2, 0),
        "the next start folds the release in and takes its own slot"
    );

    // A session removed while holding a slot also releases it.
    stack
        .exec(&format!("DELETE FROM agent_sessions WHERE id = '{first}'"))
        .await;
    assert_eq!(slot_counter(&stack, APP).await, (2, 1));
    stack.started(&a, &start_a).await;
    assert_eq!(slot_counter(&stack, APP).await, (2, 0));
    // The bound never falls below the sessions that hold slots.
    let mut p = stack.pg().await;
    let holding: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM agent_sessions
          WHERE application_id = $1 AND status IN ('active', 'suspended')",
    )
    .bind(APP)
    .fetch_one(p.conn())
    .await
    .unwrap();
    assert_eq!(holding, 2);
    stack.stop().await;
}

#[tokio::test]
async fn concurrent_starts_fill_the_zone_exactly_and_share_one_idempotency_key() {
    let mut overrides = NO_SWEEPS.to_vec();
    overrides.push(("MAX_AGENTS_PER_ZONE", "4"));
    let stack = Stack::start(&overrides).await;
    let token = stack.token(APP, REC);
    let auth = format!("Bearer {token}");
    let addr = stack.co.addr;

    let send = |body: String, key: Option<String>| {
        let auth = auth.clone();
        tokio::spawn(async move {
            let mut headers = vec![
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ];
            if let Some(key) = &key {
                headers.push(("idempotency-key", key.as_str()));
            }
            http::request(addr, "POST", &agents(), &headers, body)
                .await
                .unwrap()
        })
    };
    let body = json!({"application_id": APP}).to_string();
    let racers: Vec<_> = (0..12).map(|_racer| send(body.clone(), None)).collect();
    let mut created = Vec::new();
    let mut refused = 0;
    for racer in racers {
        let resp = racer.await.unwrap();
        match resp.status {
            201 => created.push(id_of(&json_of(&resp))),
            _ => {
                expect(
                    "a start over the zone limit",
                    &resp,
                    429,
                    "session_zone_limit_exceeded",
                );
                refused += 1;
            }
        }
    }
    assert_eq!((created.len(), refused), (4, 8), "{created:?}");
    let mut p = stack.pg().await;
    let active: i64 =
        sqlx::query_scalar("SELECT count(*) FROM agent_sessions WHERE status = 'active'")
            .fetch_one(p.conn())
            .await
            .unwrap();
    drop(p);
    assert_eq!(active, 4);

    // Eight concurrent first uses of one key create one session; the others replay it.
    for id in &created {
        stack.terminate(id).await;
    }
    let racers: Vec<_> = (0..8)
        .map(|_racer| send(body.clone(), Some("race-key-1".to_owned())))
        .collect();
    let mut ids = BTreeSet::new();
    let mut replayed = 0;
    for racer in racers {
        let resp = racer.await.unwrap();
        assert_eq!(resp.status, 201, "{}", json_of(&resp));
        ids.insert(id_of(&json_of(&resp)));
        if resp.header("idempotency-replayed").as_deref() == Some("true") {
            replayed += 1;
        }
    }
    assert_eq!(ids.len(), 1, "one key created several sessions: {ids:?}");
    assert_eq!(replayed, 7);
    assert_eq!(stack.session_count().await, 5);
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------
// Idempotency (wire-contract §7.5)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn idempotency_replays_conflicts_and_refuses_dead_results() {
    let stack = Stack::start(NO_SWEEPS).await;
    let a = stack.token(APP, REC);
    let path = agents();
    let body = r#"{"application_id":"app-a","labels":["x"],"ttl_seconds":600}"#;
    let reordered = r#"{ "ttl_seconds": 600, "labels": ["x"], "application_id": "app-a" }"#;

    let first = stack
        .raw(&a, "POST", &path, body, &[("idempotency-key", "k-1")])
        .await;
    assert_eq!(first.status, 201, "{}", json_of(&first));
    assert_eq!(first.header("idempotency-replayed"), None);
    let replay = stack
        .raw(&a, "POST", &path, reordered, &[("idempotency-key", "k-1")])
        .await;
    assert_eq!(replay.status, 201, "{}", json_of(&replay));
    assert_eq!(
        replay.header("idempotency-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(json_of(&replay), json_of(&first));
    assert_eq!(stack.session_count().await, 1);

    let other_body = r#"{"application_id":"app-a","labels":["y"],"ttl_seconds":600}"#;
    let conflict = stack
        .raw(&a, "POST", &path, other_body, &[("idempotency-key", "k-1")])
        .await;
    expect(
        "same key, another request",
        &conflict,
        409,
        "idempotency_key_conflict",
    );

    // Keys scope to the caller's application.
    let b_body = r#"{"application_id":"app-b"}"#;
    let b = stack
        .raw(
            &stack.token(OTHER, REC_OTHER),
            "POST",
            &path,
            b_body,
            &[("idempotency-key", "k-1")],
        )
        .await;
    assert_eq!(b.status, 201, "{}", json_of(&b));
    assert_eq!(b.header("idempotency-replayed"), None);
    assert_ne!(id_of(&json_of(&b)), id_of(&json_of(&first)));

    let long = "k".repeat(256);
    for key in ["has space", long.as_str(), ""] {
        let resp = stack
            .raw(&a, "POST", &path, body, &[("idempotency-key", key)])
            .await;
        expect(
            &format!("key {key:?}"),
            &resp,
            400,
            "invalid_idempotency_key",
        );
    }
    assert_eq!(stack.session_count().await, 2);

    // A generated key is kept a day, a chosen one a week.
    let generated = stack
        .raw(
            &a,
            "POST",
            &path,
            r#"{"application_id":"app-a"}"#,
            &[
                ("idempotency-key", "k-gen"),
                ("idempotency-key-kind", "generated"),
            ],
        )
        .await;
    assert_eq!(generated.status, 201, "{}", json_of(&generated));
    let mut p = stack.pg().await;
    let lifetimes: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT resource_id, round(extract(epoch FROM expires_at - created_at))::bigint \
           FROM idempotency_receipts WHERE operation = 'session.start'",
    )
    .fetch_all(p.conn())
    .await
    .unwrap()
    .into_iter()
    .collect();
    drop(p);
    assert_eq!(
        lifetimes.get(&id_of(&json_of(&first))),
        Some(&604_800),
        "{lifetimes:?}"
    );
    assert_eq!(
        lifetimes.get(&id_of(&json_of(&generated))),
        Some(&86_400),
        "{lifetimes:?}"
    );

    // A task past its TTL is no longer live, even before the sweeper marks it.
    let stale = stack
        .raw(&a, "POST", &path, body, &[("idempotency-key", "k-stale")])
        .await;
    assert_eq!(stale.status, 201, "{}", json_of(&stale));
    stack
        .exec(&format!(
            "UPDATE agent_sessions SET started_at = now() - interval '11 minutes' WHERE id = '{}'",
            id_of(&json_of(&stale))
        ))
        .await;
    let stale_replay = stack
        .raw(&a, "POST", &path, body, &[("idempotency-key", "k-stale")])
        .await;
    expect(
        "replay of a task past its TTL",
        &stale_replay,
        409,
        "idempotency_result_inactive",
    );

    // A bound on live receipts per application; a stored key still replays.
    let bounded = CoordinatorFixture::start_with(
        &stack.db,
        stack.sts.addr,
        &[
            ("IDEMPOTENCY_MAX_RECEIPTS_PER_SCOPE", "3"),
            ("TTL_SWEEP_INTERVAL_MS", "3600000"),
            ("SERVICE_LEASE_SWEEP_INTERVAL_MS", "3600000"),
        ],
    )
    .await
    .unwrap();
    let bounded_call = |token: String, body: &'static str, key: &'static str| {
        let bounded = &bounded;
        async move {
            let auth = format!("Bearer {token}");
            http::request(
                bounded.addr,
                "POST",
                &agents(),
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                    ("idempotency-key", key),
                ],
                body,
            )
            .await
            .unwrap()
        }
    };
    expect(
        "a fourth live receipt of one application",
        &bounded_call(a.clone(), r#"{"application_id":"app-a"}"#, "k-new").await,
        429,
        "idempotency_receipt_limit_exceeded",
    );
    let replayed = bounded_call(a.clone(), r#"{"application_id":"app-a"}"#, "k-gen").await;
    assert_eq!(replayed.status, 201, "{}", json_of(&replayed));
    assert_eq!(
        replayed.header("idempotency-replayed").as_deref(),
        Some("true")
    );
    let other = bounded_call(
        stack.token(OTHER, REC_OTHER),
        r#"{"application_id":"app-b"}"#,
        "k-new",
    )
    .await;
    assert_eq!(
        other.status,
        201,
        "the bound is per application: {}",
        json_of(&other)
    );
    bounded.stop().await;

    // Once the session ended, its key answers 409.
    stack.terminate(&id_of(&json_of(&first))).await;
    let dead = stack
        .raw(&a, "POST", &path, body, &[("idempotency-key", "k-1")])
        .await;
    expect(
        "replay of an ended session",
        &dead,
        409,
        "idempotency_result_inactive",
    );
    assert_eq!(stack.session_count().await, 5);
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------
// Edge inheritance (authority §2.1 step 10, settled point 9)
// ---------------------------------------------------------------------------------------

/// One edge row: source, target, issuer, receiver, scopes, constraints, parent edge, status,
/// and whether its expiry equals `expires_of`'s.
type EdgeFacts = (
    String,
    String,
    String,
    String,
    Vec<String>,
    Value,
    Option<String>,
    String,
    bool,
);

async fn edge_facts(stack: &Stack, id: &str, expires_of: &str) -> EdgeFacts {
    let mut p = stack.pg().await;
    sqlx::query_as(
        "SELECT e.source_session_id, e.target_session_id, e.issuer_application_id, \
                e.receiver_application_id, e.scopes, e.constraints_json, e.parent_edge_id, \
                e.status, e.expires_at = o.expires_at \
           FROM delegation_edges e, delegation_edges o WHERE e.id = $1 AND o.id = $2",
    )
    .bind(id)
    .bind(expires_of)
    .fetch_one(p.conn())
    .await
    .unwrap()
}

/// An edge `source → target` of `scopes` with `constraints`, expiring in an hour.
async fn seed_edge(
    stack: &Stack,
    id: &str,
    (source, issuer): (&str, &str),
    (target, receiver): (&str, &str),
    scopes: &[&str],
    constraints: Value,
) {
    stack
        .pg()
        .await
        .edge(
            ZONE,
            id,
            (source, issuer),
            (target, receiver),
            scopes,
            constraints,
            3600,
            None,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_child_inherits_its_parents_one_live_inbound_edge_with_one_hop_less() {
    let stack = Stack::start(NO_SWEEPS).await;
    let a = stack.token(APP, REC);
    let b = stack.token(OTHER, REC_OTHER);
    let source = stack.started(&b, &json!({"application_id": OTHER})).await;
    let parent = stack.started(&a, &json!({"application_id": APP})).await;
    seed_edge(
        &stack,
        "edge-in",
        (&source, OTHER),
        (&parent, APP),
        &["read", "write"],
        json!({"max_hops": 3, "ttl_seconds": 600}),
    )
    .await;
    let epoch = stack.epoch().await;

    let child = stack
        .started_body(&a, &json!({"application_id": APP, "parent_id": parent}))
        .await;
    let child_id = id_of(&child);
    let copy = child["delegation_edge_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no inherited edge: {child}"))
        .to_owned();
    assert_eq!(
        edge_facts(&stack, &copy, "edge-in").await,
        (
            parent.clone(),
            child_id.clone(),
            APP.to_owned(),
            APP.to_owned(),
            vec!["read".to_owned(), "write".to_owned()],
            json!({"max_hops": 2, "ttl_seconds": 600}),
            Some("edge-in".to_owned()),
            "active".to_owned(),
            true,
        )
    );
    assert_eq!(
        stack.epoch().await,
        epoch + 1,
        "a copy bumps the epoch once"
    );
    let created = stack
        .outbox(DELEGATIONS_INVALIDATE, &format!("edge_create:{copy}"))
        .await
        .expect("edge_create in the outbox");
    assert_eq!(created["epoch"], json!(epoch + 1));
    assert_eq!(created["target_session_id"], json!(child_id));

    // The copy is inherited again with one hop less; then no hop is left.
    let grandchild = stack
        .started_body(&a, &json!({"application_id": APP, "parent_id": child_id}))
        .await;
    let second_copy = grandchild["delegation_edge_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let facts = edge_facts(&stack, &second_copy, "edge-in").await;
    assert_eq!(facts.5, json!({"max_hops": 1, "ttl_seconds": 600}));
    assert_eq!(facts.6.as_deref(), Some(copy.as_str()));
    let grandchild_id = id_of(&grandchild);
    let count = stack.session_count().await;
    let exhausted = stack
        .start_as(
            &a,
            &json!({"application_id": APP, "parent_id": grandchild_id}),
        )
        .await;
    expect(
        "inheriting an edge with max_hops 1",
        &exhausted,
        409,
        "inherit_parent_edge_exhausted",
    );
    assert_eq!(
        stack.session_count().await,
        count,
        "the refused child stays"
    );
    assert_eq!(stack.session_int(&grandchild_id, "child_count").await, 0);
    // parent_authority none never inherits.
    let plain = stack
        .started_body(
            &a,
            &json!({"application_id": APP, "parent_id": grandchild_id, "parent_authority": "none"}),
        )
        .await;
    assert_eq!(plain["delegation_edge_id"], Value::Null);
    let mut p = stack.pg().await;
    let inbound: i64 =
        sqlx::query_scalar("SELECT count(*) FROM delegation_edges WHERE target_session_id = $1")
            .bind(id_of(&plain))
            .fetch_one(p.conn())
            .await
            .unwrap();
    drop(p);
    assert_eq!(inbound, 0);

    // A child of another application finds no candidate: no edge, no refusal.
    let spawn_for = stack.token_with_scope(APP, REC, "agent:lifecycle coordinator.spawn_for:app-b");
    let foreign = stack
        .started_body(
            &spawn_for,
            &json!({"application_id": OTHER, "parent_id": parent}),
        )
        .await;
    assert_eq!(foreign["delegation_edge_id"], Value::Null);
    stack.stop().await;
}

#[tokio::test]
async fn inheritance_refuses_exhausted_ambiguous_and_dead_edges() {
    let stack = Stack::start(NO_SWEEPS).await;
    let a = stack.token(APP, REC);
    let b = stack.token(OTHER, REC_OTHER);
    let x = stack.started(&b, &json!({"application_id": OTHER})).await;
    let y = stack.started(&b, &json!({"application_id": OTHER})).await;
    let one_hop = stack.started(&a, &json!({"application_id": APP})).await;
    let two_edges = stack.started(&a, &json!({"application_id": APP})).await;
    let dead_edge = stack.started(&a, &json!({"application_id": APP})).await;
    seed_edge(
        &stack,
        "e-one-hop",
        (&x, OTHER),
        (&one_hop, APP),
        &["read"],
        json!({}),
    )
    .await;
    seed_edge(
        &stack,
        "e-first",
        (&x, OTHER),
        (&two_edges, APP),
        &["read"],
        json!({"max_hops": 2}),
    )
    .await;
    seed_edge(
        &stack,
        "e-second",
        (&y, OTHER),
        (&two_edges, APP),
        &["write"],
        json!({"max_depth": 3}),
    )
    .await;
    seed_edge(
        &stack,
        "e-dead",
        (&x, OTHER),
        (&dead_edge, APP),
        &["read"],
        json!({"max_hops": 2}),
    )
    .await;
    stack
        .exec(
            "UPDATE delegation_edges SET status = 'revoked', revoked_at = now() WHERE id = 'e-dead'",
        )
        .await;

    let count = stack.session_count().await;
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "an edge allowing no further hop (default max_hops 1)",
            json!({"application_id": APP, "parent_id": one_hop}),
            409,
            "inherit_parent_edge_exhausted",
        ),
        (
            "two live candidates",
            json!({"application_id": APP, "parent_id": two_edges}),
            409,
            "inherit_parent_edge_ambiguous",
        ),
        (
            "only a revoked candidate",
            json!({"application_id": APP, "parent_id": dead_edge}),
            409,
            "inherit_parent_edge_not_active",
        ),
        (
            "a named edge that does not exist",
            json!({"application_id": APP, "parent_id": two_edges, "inherit_parent_edge_id": "e-none"}),
            409,
            "inherit_parent_edge_not_active",
        ),
    ];
    for (label, body, status, code) in &cases {
        let resp = stack.start_as(&a, body).await;
        expect(label, &resp, *status, code);
    }
    assert_eq!(
        stack.session_count().await,
        count,
        "a refused start created a row"
    );

    // Naming one of two candidates inherits that one.
    let named = stack
        .started_body(
            &a,
            &json!({"application_id": APP, "parent_id": two_edges, "inherit_parent_edge_id": "e-second"}),
        )
        .await;
    let copy = named["delegation_edge_id"].as_str().unwrap().to_owned();
    let facts = edge_facts(&stack, &copy, "e-second").await;
    assert_eq!(facts.4, vec!["write".to_owned()]);
    assert_eq!(facts.5, json!({"max_hops": 2}));
    assert_eq!(facts.6.as_deref(), Some("e-second"));
    assert!(facts.8, "the copy keeps the expiry");
    // parent_authority none starts under the exhausted edge's session.
    let none = stack
        .started_body(
            &a,
            &json!({"application_id": APP, "parent_id": one_hop, "parent_authority": "none"}),
        )
        .await;
    assert_eq!(none["delegation_edge_id"], Value::Null);
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------
// Terminate (wire-contract §7.3, authority §2.5)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn terminating_a_root_ends_ten_levels_revokes_their_edges_and_announces_it() {
    let stack = Stack::start(NO_SWEEPS).await;
    let a = stack.token(APP, REC);
    let b = stack.token(OTHER, REC_OTHER);

    // A chain of eleven sessions: depths 0 to 10; a twelfth level is refused.
    let mut chain = vec![stack.started(&a, &json!({"application_id": APP})).await];
    for depth in 1..=10 {
        let child = stack
            .started_body(
                &a,
                &json!({"application_id": APP, "parent_id": chain.last().unwrap()}),
            )
            .await;
        assert_eq!(child["depth"], json!(depth));
        chain.push(id_of(&child));
    }
    let deeper = stack
        .start_as(
            &a,
            &json!({"application_id": APP, "parent_id": chain.last().unwrap()}),
        )
        .await;
    expect("depth 11", &deeper, 429, "session_depth_limit_exceeded");

    let x = stack.started(&b, &json!({"application_id": OTHER})).await;
    let y = stack.started(&b, &json!({"application_id": OTHER})).await;
    seed_edge(
        &stack,
        "e-into-root",
        (&x, OTHER),
        (&chain[0], APP),
        &["read"],
        json!({}),
    )
    .await;
    seed_edge(
        &stack,
        "e-inside",
        (&chain[3], APP),
        (&chain[7], APP),
        &["read"],
        json!({}),
    )
    .await;
    seed_edge(
        &stack,
        "e-out-of-leaf",
        (&chain[10], APP),
        (&y, OTHER),
        &["read"],
        json!({}),
    )
    .await;
    seed_edge(
        &stack,
        "e-elsewhere",
        (&x, OTHER),
        (&y, OTHER),
        &["read"],
        json!({}),
    )
    .await;
    let revoked_edges = ["e-into-root", "e-inside", "e-out-of-leaf"];
    let epoch = stack.epoch().await;
    stack.wait_published().await;
    let after_revoke = last_entry_id(SESSIONS_REVOKE).await;
    let after_lifecycle = last_entry_id(AGENTS_LIFECYCLE).await;
    let after_invalidate = last_entry_id(DELEGATIONS_INVALIDATE).await;

    let resp = stack.call(&a, "DELETE", &agent(&chain[0]), None).await;
    assert_eq!(resp.status, 204, "{}", json_of(&resp));
    assert!(resp.body.is_empty());

    // Postgres: every level ended, the root as requested, the rest after their parent.
    for (depth, id) in chain.iter().enumerate() {
        let reason = if depth == 0 {
            "requested"
        } else {
            "parent_terminated"
        };
        assert_eq!(
            stack.status(id).await,
            ("terminated".to_owned(), Some(reason.to_owned())),
            "depth {depth}"
        );
        assert_eq!(stack.session_int(id, "status_version").await, 1);
    }
    for edge in revoked_edges {
        assert_eq!(stack.edge_status(edge).await, "revoked", "{edge}");
    }
    assert_eq!(stack.edge_status("e-elsewhere").await, "active");
    assert_eq!(stack.status(&x).await.0, "active");
    assert_eq!(stack.epoch().await, epoch + 1, "one epoch bump per cascade");

    // The outbox, in the same transaction.
    for (depth, id) in chain.iter().enumerate() {
        let reason = if depth == 0 {
            "requested"
        } else {
            "parent_terminated"
        };
        let revoke = stack
            .outbox(SESSIONS_REVOKE, &format!("revoke:agent:{id}:v1"))
            .await
            .unwrap_or_else(|| panic!("no revoke row for depth {depth}"));
        assert_eq!(
            revoke,
            json!({"zone_id": ZONE, "agent_session_id": id, "reason": reason}),
            "application-typed records are not announced with the session"
        );
        let lifecycle = stack
            .outbox(AGENTS_LIFECYCLE, &format!("terminate:{id}:v1"))
            .await
            .unwrap_or_else(|| panic!("no lifecycle row for depth {depth}"));
        assert_eq!(lifecycle["event"], json!("terminate"));
        assert_eq!(lifecycle["reason"], json!(reason));
    }
    for edge in revoked_edges {
        let revoke = stack
            .outbox(SESSIONS_REVOKE, &format!("revoke:edge:{edge}"))
            .await
            .unwrap_or_else(|| panic!("no revoke row for {edge}"));
        assert_eq!(revoke["delegation_edge_id"], json!(edge));
        let invalidate = stack
            .outbox(DELEGATIONS_INVALIDATE, &format!("edge_revoke:{edge}"))
            .await
            .unwrap_or_else(|| panic!("no edge_revoke row for {edge}"));
        assert_eq!(invalidate["epoch"], json!(epoch + 1));
        assert_eq!(invalidate["event"], json!("edge_revoke"));
    }

    // The dispatcher publishes them, signed.
    stack.wait_published().await;
    for (depth, id) in chain.iter().enumerate() {
        let reason = if depth == 0 {
            "requested"
        } else {
            "parent_terminated"
        };
        let revokes = signed_entries(SESSIONS_REVOKE, &after_revoke, "agent_session_id", id).await;
        assert_eq!(revokes.len(), 1, "depth {depth}: {revokes:?}");
        assert_eq!(revokes[0]["reason"], reason);
        assert_eq!(revokes[0]["zone_id"], ZONE);
        assert_eq!(revokes[0]["dedupe_key"], format!("revoke:agent:{id}:v1"));
        assert!(!revokes[0].contains_key("session_id"));
        let events =
            signed_entries(AGENTS_LIFECYCLE, &after_lifecycle, "agent_session_id", id).await;
        assert_eq!(events.len(), 1, "depth {depth}: {events:?}");
        assert_eq!(events[0]["event"], "terminate");
    }
    for edge in revoked_edges {
        let revokes =
            signed_entries(SESSIONS_REVOKE, &after_revoke, "delegation_edge_id", edge).await;
        assert_eq!(revokes.len(), 1, "{edge}: {revokes:?}");
        let invalidations =
            signed_entries(DELEGATIONS_INVALIDATE, &after_invalidate, "edge_id", edge).await;
        assert_eq!(invalidations.len(), 1, "{edge}: {invalidations:?}");
        assert_eq!(invalidations[0]["epoch"], (epoch + 1).to_string());
    }

    // Terminating an ended session answers 204 and changes nothing.
    let rows = stack.outbox_count().await;
    for id in [&chain[0], &chain[5]] {
        let again = stack.call(&a, "DELETE", &agent(id), None).await;
        assert_eq!(again.status, 204, "{}", json_of(&again));
    }
    assert_eq!(stack.outbox_count().await, rows);
    assert_eq!(stack.epoch().await, epoch + 1);
    // An ended session takes no child; other applications and unknown ids are not found.
    expect(
        "a child of an ended session",
        &stack
            .start_as(&a, &json!({"application_id": APP, "parent_id": chain[5]}))
            .await,
        404,
        "parent_not_found",
    );
    expect(
        "another application's session",
        &stack.call(&a, "DELETE", &agent(&x), None).await,
        404,
        "session_not_found",
    );
    expect(
        "an unknown session",
        &stack
            .call(&a, "DELETE", &agent("no-such-session"), None)
            .await,
        404,
        "session_not_found",
    );
    assert_eq!(stack.status(&x).await.0, "active");
    stack.stop().await;
}

#[tokio::test]
async fn a_service_is_terminated_only_by_its_current_lease_holder_or_the_operator() {
    let stack = Stack::start(NO_SWEEPS).await;
    let a = stack.token(APP, REC);
    let service = json!({"application_id": APP, "lifecycle": "service"});
    let id = stack.started(&a, &service).await;

    expect(
        "no lease_generation",
        &stack.call(&a, "DELETE", &agent(&id), None).await,
        400,
        "lease_generation_required",
    );
    expect(
        "a stale lease_generation",
        &stack
            .call(
                &a,
                "DELETE",
                &agent(&id),
                Some(&json!({"lease_generation": 2})),
            )
            .await,
        409,
        "session_lease_fenced",
    );
    assert_eq!(stack.status(&id).await.0, "active");
    let resp = stack
        .call(
            &a,
            "DELETE",
            &format!("{}?reason=shutdown", agent(&id)),
            Some(&json!({"lease_generation": 1})),
        )
        .await;
    assert_eq!(resp.status, 204, "{}", json_of(&resp));
    assert_eq!(
        stack.status(&id).await,
        ("terminated".to_owned(), Some("shutdown".to_owned()))
    );

    // The operator needs no generation; after a lease call, only the new one works.
    let operated = stack.started(&a, &service).await;
    stack.terminate(&operated).await;
    assert_eq!(
        stack.status(&operated).await,
        ("terminated".to_owned(), Some("requested".to_owned()))
    );
    let leased = stack.started(&a, &service).await;
    let lease = stack
        .call(&a, "POST", &format!("{}/lease", agent(&leased)), None)
        .await;
    assert_eq!(json_of(&lease)["lease_generation"], json!(2));
    expect(
        "the generation before the lease call",
        &stack
            .call(
                &a,
                "DELETE",
                &agent(&leased),
                Some(&json!({"lease_generation": 1})),
            )
            .await,
        409,
        "session_lease_fenced",
    );
    let resp = stack
        .call(
            &a,
            "DELETE",
            &agent(&leased),
            Some(&json!({"lease_generation": 2})),
        )
        .await;
    assert_eq!(resp.status, 204, "{}", json_of(&resp));
    // A reason is bounded; the body takes lease_generation only.
    let task = stack.started(&a, &json!({"application_id": APP})).await;
    let long_reason = format!("{}?reason={}", agent(&task), "r".repeat(129));
    let resp = stack.call(&a, "DELETE", &long_reason, None).await;
    expect("a reason over 128 characters", &resp, 400, "invalid_query");
    let resp = stack
        .call(&a, "DELETE", &agent(&task), Some(&json!({"force": true})))
        .await;
    expect("an unknown body member", &resp, 400, "invalid_body");
    assert_eq!(stack.status(&task).await.0, "active");
    // A task needs no generation.
    let resp = stack.call(&a, "DELETE", &agent(&task), None).await;
    assert_eq!(resp.status, 204, "{}", json_of(&resp));
    stack.stop().await;
}

#[tokio::test]
async fn a_user_record_is_announced_with_its_last_session_and_bounds_liveness() {
    let stack = Stack::start(NO_SWEEPS).await;
    stack
        .pg()
        .await
        .authority_record(ZONE, "rec-user", "user", "alice@example.com")
        .await
        .unwrap();
    let mut claims = session_claims(ZONE, APP, "rec-user");
    claims["sub"] = json!("alice@example.com");
    claims["sub_type"] = json!("user");
    let user = stack.sign(&claims);
    let app = stack.token(APP, REC);
    let start = json!({"application_id": APP});

    // session_id joins the revoke message only when no other live session holds the record.
    let first = stack.started_body(&user, &start).await;
    assert_eq!(first["subject_authority_record_id"], json!("rec-user"));
    let first = id_of(&first);
    let second = stack.started(&user, &start).await;
    let resp = stack.call(&user, "DELETE", &agent(&first), None).await;
    assert_eq!(resp.status, 204, "{}", json_of(&resp));
    assert_eq!(
        stack
            .outbox(SESSIONS_REVOKE, &format!("revoke:agent:{first}:v1"))
            .await,
        Some(json!({"zone_id": ZONE, "agent_session_id": first, "reason": "requested"}))
    );
    let resp = stack.call(&user, "DELETE", &agent(&second), None).await;
    assert_eq!(resp.status, 204, "{}", json_of(&resp));
    assert_eq!(
        stack
            .outbox(SESSIONS_REVOKE, &format!("revoke:agent:{second}:v1"))
            .await,
        Some(json!({
            "zone_id": ZONE, "agent_session_id": second, "session_id": "rec-user",
            "reason": "requested",
        }))
    );

    // A session bound to a user-typed record is live only while the record is (authority
    // §2.1, Liveness): once it expires, the session takes no child and its idempotency key
    // no longer replays.
    let parent = stack.started(&user, &start).await;
    let keyed = stack
        .raw(
            &user,
            "POST",
            &agents(),
            r#"{"application_id":"app-a"}"#,
            &[("idempotency-key", "user-key")],
        )
        .await;
    assert_eq!(keyed.status, 201, "{}", json_of(&keyed));
    stack
        .exec("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id = 'rec-user'")
        .await;
    expect(
        "the user's own mandate after its record expired",
        &stack.call(&user, "GET", &agents(), None).await,
        401,
        "identity_revoked",
    );
    expect(
        "a child of a session whose user record expired",
        &stack
            .start_as(&app, &json!({"application_id": APP, "parent_id": parent}))
            .await,
        404,
        "parent_not_found",
    );
    expect(
        "a replay whose session's user record expired",
        &stack
            .raw(
                &app,
                "POST",
                &agents(),
                r#"{"application_id":"app-a"}"#,
                &[("idempotency-key", "user-key")],
            )
            .await,
        409,
        "idempotency_result_inactive",
    );
    // An application-typed record does not bound its sessions' liveness.
    let app_parent = stack.started(&app, &start).await;
    stack
        .exec("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id = 'rec-b'")
        .await;
    stack
        .exec(&format!(
            "UPDATE agent_sessions SET subject_authority_record_id = 'rec-b' WHERE id = '{app_parent}'"
        ))
        .await;
    stack
        .started(
            &app,
            &json!({"application_id": APP, "parent_id": app_parent}),
        )
        .await;
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------
// Heartbeat and lease (wire-contract §7.3, §7.6)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn heartbeat_and_lease_fence_every_older_generation() {
    let stack = Stack::start(NO_SWEEPS).await;
    let a = stack.token(APP, REC);
    let b = stack.token(OTHER, REC_OTHER);
    let service = stack
        .started_body(&a, &json!({"application_id": APP, "lifecycle": "service"}))
        .await;
    let id = id_of(&service);
    let heartbeat = format!("{}/heartbeat", agent(&id));
    let lease = format!("{}/lease", agent(&id));
    let beat = |generation: i64| json!({"status": "healthy", "lease_generation": generation});

    let resp = stack.call(&a, "POST", &heartbeat, Some(&beat(1))).await;
    let body = json_of(&resp);
    assert_eq!(resp.status, 200, "{body}");
    assert!(body["agent"]["lease_generation"].is_i64(), "{body}");
    assert_eq!(body["agent"]["lease_generation"], json!(1));
    assert_eq!(body["agent"]["id"], json!(id));
    assert_eq!(body["agent"]["status"], json!("active"));
    assert!(
        time(&body["agent"]["heartbeat_deadline_at"]) >= time(&service["heartbeat_deadline_at"]),
        "a heartbeat renews the lease: {body}"
    );
    assert!(!body["agent"]["last_heartbeat_at"].is_null(), "{body}");
    let mut p = stack.pg().await;
    let heartbeat_at: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT last_heartbeat_at FROM agent_sessions WHERE id = $1")
            .bind(&id)
            .fetch_one(p.conn())
            .await
            .unwrap();
    drop(p);
    assert!(heartbeat_at.is_some());

    let taken = stack.call(&a, "POST", &lease, None).await;
    let taken_body = json_of(&taken);
    assert_eq!(taken.status, 200, "{taken_body}");
    assert_eq!(taken_body["lease_generation"], json!(2));
    assert_eq!(taken_body["status"], json!("active"));
    assert!(time(&taken_body["heartbeat_deadline_at"]) > Utc::now());
    assert_eq!(stack.session_int(&id, "lease_generation").await, 2);
    expect(
        "the old holder's heartbeat",
        &stack.call(&a, "POST", &heartbeat, Some(&beat(1))).await,
        409,
        "session_lease_fenced",
    );
    expect(
        "a generation from the future",
        &stack.call(&a, "POST", &heartbeat, Some(&beat(3))).await,
        409,
        "session_lease_fenced",
    );
    let current = stack.call(&a, "POST", &heartbeat, Some(&beat(2))).await;
    assert_eq!(current.status, 200, "{}", json_of(&current));
    assert_eq!(json_of(&current)["agent"]["lease_generation"], json!(2));

    // Body rules, then ownership.
    for body in [
        json!({"status": "sleepy", "lease_generation": 2}),
        json!({"status": "healthy", "lease_generation": 0}),
        json!({"status": "healthy"}),
    ] {
        let resp = stack.call(&a, "POST", &heartbeat, Some(&body)).await;
        expect(&body.to_string(), &resp, 400, "invalid_body");
    }
    expect(
        "another application's heartbeat",
        &stack.call(&b, "POST", &heartbeat, Some(&beat(2))).await,
        404,
        "session_not_found",
    );
    expect(
        "another application's lease",
        &stack.call(&b, "POST", &lease, None).await,
        404,
        "session_not_found",
    );

    // A task has no lease.
    let task = stack.started(&a, &json!({"application_id": APP})).await;
    expect(
        "a task's heartbeat",
        &stack
            .call(
                &a,
                "POST",
                &format!("{}/heartbeat", agent(&task)),
                Some(&beat(1)),
            )
            .await,
        409,
        "session_not_service",
    );
    expect(
        "a task's lease",
        &stack
            .call(&a, "POST", &format!("{}/lease", agent(&task)), None)
            .await,
        409,
        "session_not_service",
    );

    // A suspended service is not live.
    let suspend = stack
        .call(&a, "PATCH", &format!("{}/suspend", agent(&id)), None)
        .await;
    assert_eq!(json_of(&suspend), json!({"suspended": 1}));
    expect(
        "a suspended service's heartbeat",
        &stack.call(&a, "POST", &heartbeat, Some(&beat(2))).await,
        409,
        "session_not_live",
    );
    expect(
        "a suspended service's lease",
        &stack.call(&a, "POST", &lease, None).await,
        409,
        "session_not_live",
    );
    let resume = stack
        .call(&a, "PATCH", &format!("{}/resume", agent(&id)), None)
        .await;
    assert_eq!(json_of(&resume), json!({"resumed": 1}));
    let back = stack.call(&a, "POST", &heartbeat, Some(&beat(2))).await;
    assert_eq!(back.status, 200, "{}", json_of(&back));

    // A lease that ran out (the sweeper has not marked it yet).
    stack
        .exec(&format!(
            "UPDATE agent_sessions SET heartbeat_deadline_at = now() - interval '1 second' \
              WHERE id = '{id}'"
        ))
        .await;
    expect(
        "a heartbeat after the lease ran out",
        &stack.call(&a, "POST", &heartbeat, Some(&beat(2))).await,
        409,
        "session_lease_expired",
    );
    expect(
        "a lease call after the lease ran out",
        &stack.call(&a, "POST", &lease, None).await,
        409,
        "session_lease_expired",
    );
    assert_eq!(stack.session_int(&id, "lease_generation").await, 2);
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------
// Suspend and resume (authority §2.5)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn suspend_and_resume_change_the_whole_live_subtree() {
    let stack = Stack::start(NO_SWEEPS).await;
    let a = stack.token(APP, REC);
    let b = stack.token(OTHER, REC_OTHER);
    let root = stack
        .started(&a, &json!({"application_id": APP, "lifecycle": "service"}))
        .await;
    let left = stack
        .started(&a, &json!({"application_id": APP, "parent_id": root}))
        .await;
    let right = stack
        .started(&a, &json!({"application_id": APP, "parent_id": root}))
        .await;
    let leaf = stack
        .started(&a, &json!({"application_id": APP, "parent_id": left}))
        .await;
    let ended = stack
        .started(&a, &json!({"application_id": APP, "parent_id": right}))
        .await;
    stack.terminate(&ended).await;
    let tree = [&root, &left, &right, &leaf];
    // Age the root's lease so that the resume visibly renews it.
    stack
        .exec(&format!(
            "UPDATE agent_sessions SET heartbeat_deadline_at = now() + interval '10 seconds' \
              WHERE id = '{root}'"
        ))
        .await;

    expect(
        "another application's suspend",
        &stack
            .call(&b, "PATCH", &format!("{}/suspend", agent(&root)), None)
            .await,
        404,
        "session_not_found",
    );
    let suspend = stack
        .call(&a, "PATCH", &format!("{}/suspend", agent(&root)), None)
        .await;
    assert_eq!(suspend.status, 200, "{}", json_of(&suspend));
    assert_eq!(json_of(&suspend), json!({"suspended": 4}));
    for id in tree {
        assert_eq!(stack.status(id).await.0, "suspended", "{id}");
        let event = stack
            .outbox(AGENTS_LIFECYCLE, &format!("suspend:{id}:v1"))
            .await
            .unwrap_or_else(|| panic!("no suspend event for {id}"));
        assert_eq!(event["event"], json!("suspend"));
        assert_eq!(event["reason"], json!("suspended"));
        let revoke = stack
            .outbox(SESSIONS_REVOKE, &format!("revoke:agent:{id}:v1"))
            .await
            .unwrap_or_else(|| panic!("no revoke for {id}"));
        assert_eq!(revoke["reason"], json!("suspended"));
    }
    assert_eq!(stack.status(&ended).await.0, "terminated");
    let again = stack
        .call(&a, "PATCH", &format!("{}/suspend", agent(&root)), None)
        .await;
    assert_eq!(json_of(&again), json!({"suspended": 0}));
    expect(
        "a child of a suspended session",
        &stack
            .start_as(&a, &json!({"application_id": APP, "parent_id": left}))
            .await,
        404,
        "parent_not_found",
    );

    let resume = stack
        .co
        .operator("PATCH", &format!("{}/resume", agent(&root)), None)
        .await
        .unwrap();
    assert_eq!(resume.status, 200, "{}", json_of(&resume));
    assert_eq!(json_of(&resume), json!({"resumed": 4}));
    for id in tree {
        assert_eq!(stack.status(id).await.0, "active", "{id}");
        let event = stack
            .outbox(AGENTS_LIFECYCLE, &format!("resume:{id}:v2"))
            .await
            .unwrap_or_else(|| panic!("no resume event for {id}"));
        assert_eq!(event["event"], json!("resume"));
    }
    let mut p = stack.pg().await;
    let renewed: bool = sqlx::query_scalar(
        "SELECT heartbeat_deadline_at > now() + interval '60 seconds' FROM agent_sessions WHERE id = $1",
    )
    .bind(&root)
    .fetch_one(p.conn())
    .await
    .unwrap();
    drop(p);
    assert!(renewed, "a resumed service gets a fresh lease");
    assert_eq!(stack.status(&ended).await.0, "terminated");

    // A subtree alone.
    let sub = stack
        .call(&a, "PATCH", &format!("{}/suspend", agent(&left)), None)
        .await;
    assert_eq!(json_of(&sub), json!({"suspended": 2}));
    assert_eq!(stack.status(&root).await.0, "active");
    assert_eq!(stack.status(&right).await.0, "active");
    let sub = stack
        .call(&a, "PATCH", &format!("{}/resume", agent(&left)), None)
        .await;
    assert_eq!(json_of(&sub), json!({"resumed": 2}));
    let idle = stack
        .call(&a, "PATCH", &format!("{}/resume", agent(&left)), None)
        .await;
    assert_eq!(json_of(&idle), json!({"resumed": 0}));
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------
// Reads (wire-contract §7.3)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn reads_show_each_application_its_own_sessions_filtered_and_paged() {
    let stack = Stack::start(NO_SWEEPS).await;
    let a = stack.token(APP, REC);
    let b = stack.token(OTHER, REC_OTHER);
    let first = stack
        .started(&a, &json!({"application_id": APP, "labels": ["alpha"]}))
        .await;
    let service = stack
        .started(
            &a,
            &json!({"application_id": APP, "lifecycle": "service", "labels": ["beta"]}),
        )
        .await;
    let child = stack
        .started(
            &a,
            &json!({"application_id": APP, "parent_id": first, "labels": ["alpha"]}),
        )
        .await;
    let ended = stack.started(&a, &json!({"application_id": APP})).await;
    stack.terminate(&ended).await;
    let foreign = stack.started(&b, &json!({"application_id": OTHER})).await;

    // One session: the owner and the operator see it, another application does not.
    let own = stack.call(&a, "GET", &agent(&child), None).await;
    let own_body = json_of(&own);
    assert_eq!(own.status, 200, "{own_body}");
    assert_eq!(own_body["agent_session_id"], json!(child));
    assert_eq!(own_body["parent_id"], json!(first));
    assert_eq!(own_body["depth"], json!(1));
    assert_eq!(own_body["labels"], json!(["alpha"]));
    let operator = stack
        .co
        .operator("GET", &agent(&child), None)
        .await
        .unwrap();
    assert_eq!(json_of(&operator), own_body);
    expect(
        "another application's session",
        &stack.call(&b, "GET", &agent(&child), None).await,
        404,
        "session_not_found",
    );
    expect(
        "an unknown session",
        &stack.call(&a, "GET", &agent("no-such-session"), None).await,
        404,
        "session_not_found",
    );
    let dead = json_of(&stack.call(&a, "GET", &agent(&ended), None).await);
    assert_eq!(dead["status"], json!("terminated"));
    assert_eq!(dead["termination_reason"], json!("requested"));

    // Lists: newest first, an agent's own application only, with filters.
    let list = |token: String, query: &'static str| {
        let stack = &stack;
        async move {
            let resp = stack
                .call(&token, "GET", &format!("{}{query}", agents()), None)
                .await;
            let body = json_of(&resp);
            assert_eq!(resp.status, 200, "{query}: {body}");
            body
        }
    };
    let all_a = vec![ended.clone(), child.clone(), service.clone(), first.clone()];
    assert_eq!(item_ids(&list(a.clone(), "").await), all_a);
    assert_eq!(
        item_ids(&list(a.clone(), "?status=terminated").await),
        vec![ended.clone()]
    );
    assert_eq!(
        item_ids(&list(a.clone(), "?lifecycle=service").await),
        vec![service.clone()]
    );
    assert_eq!(
        item_ids(&list(a.clone(), "?label=alpha").await),
        vec![child.clone(), first.clone()]
    );
    assert_eq!(
        item_ids(&list(a.clone(), "?application_id=app-b").await),
        Vec::<String>::new()
    );
    assert_eq!(
        item_ids(&list(OPERATOR_TOKEN.to_owned(), "?application_id=app-b").await),
        vec![foreign.clone()]
    );
    assert_eq!(
        item_ids(&list(OPERATOR_TOKEN.to_owned(), "").await).len(),
        5
    );
    assert_eq!(item_ids(&list(b.clone(), "").await), vec![foreign.clone()]);

    // Paging with limit=1 walks the same list.
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            None => "?limit=1".to_owned(),
            Some(cursor) => format!("?limit=1&cursor={cursor}"),
        };
        let resp = stack
            .call(&a, "GET", &format!("{}{query}", agents()), None)
            .await;
        let page = json_of(&resp);
        assert_eq!(resp.status, 200, "{page}");
        let ids = item_ids(&page);
        assert!(ids.len() <= 1, "{page}");
        walked.extend(ids);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(walked.len() <= 4, "paging does not end: {walked:?}");
    }
    assert_eq!(walked, all_a);
    for query in ["?limit=0", "?limit=501", "?cursor=not-a-cursor"] {
        let resp = stack
            .call(&a, "GET", &format!("{}{query}", agents()), None)
            .await;
        assert_eq!(resp.status, 400, "{query}: {}", json_of(&resp));
    }

    // Children: {items, next_cursor}, paged.
    let second_child = stack
        .started(&a, &json!({"application_id": APP, "parent_id": first}))
        .await;
    let third_child = stack
        .started(&a, &json!({"application_id": APP, "parent_id": first}))
        .await;
    let children = format!("{}/children", agent(&first));
    let page = json_of(
        &stack
            .call(&a, "GET", &format!("{children}?limit=2"), None)
            .await,
    );
    assert_eq!(
        item_ids(&page),
        vec![third_child.clone(), second_child.clone()]
    );
    let next = page["next_cursor"]
        .as_str()
        .expect("a next cursor")
        .to_owned();
    let rest = json_of(
        &stack
            .call(
                &a,
                "GET",
                &format!("{children}?limit=2&cursor={next}"),
                None,
            )
            .await,
    );
    assert_eq!(item_ids(&rest), vec![child.clone()]);
    assert_eq!(rest["next_cursor"], Value::Null);
    for item in page["items"].as_array().unwrap() {
        assert_eq!(item["parent_id"], json!(first));
    }
    let by_operator = json_of(&stack.co.operator("GET", &children, None).await.unwrap());
    assert_eq!(item_ids(&by_operator).len(), 3);
    expect(
        "another application's children",
        &stack.call(&b, "GET", &children, None).await,
        404,
        "session_not_found",
    );
    stack.stop().await;
}

#[tokio::test]
async fn effective_authority_combines_the_live_inbound_edges() {
    let stack = Stack::start(NO_SWEEPS).await;
    let mut p = stack.pg().await;
    p.provider_none(ZONE, "p-none").await.unwrap();
    p.resource(
        ZONE,
        "res-one",
        "resource://one",
        &["read", "write"],
        None,
        "p-none",
    )
    .await
    .unwrap();
    drop(p);
    let a = stack.token(APP, REC);
    let b = stack.token(OTHER, REC_OTHER);
    let target = stack.started(&a, &json!({"application_id": APP})).await;
    let from_b = stack.started(&b, &json!({"application_id": OTHER})).await;
    let from_a = stack.started(&a, &json!({"application_id": APP})).await;
    let revoked_from = stack.started(&a, &json!({"application_id": APP})).await;

    let mut p = stack.pg().await;
    p.edge(
        ZONE,
        "e-resource",
        (&from_b, OTHER),
        (&target, APP),
        &["read"],
        json!({"max_hops": 2, "ttl_seconds": 600}),
        3600,
        None,
    )
    .await
    .unwrap();
    p.exec("UPDATE delegation_edges SET resource_id = 'res-one' WHERE id = 'e-resource'")
        .await
        .unwrap();
    p.edge(
        ZONE,
        "e-listed",
        (&from_a, APP),
        (&target, APP),
        &["write"],
        json!({"resources": ["resource://extra"], "max_hops": 3}),
        1800,
        None,
    )
    .await
    .unwrap();
    p.edge(
        ZONE,
        "e-revoked",
        (&revoked_from, APP),
        (&target, APP),
        &["admin"],
        json!({"max_hops": 9}),
        60,
        None,
    )
    .await
    .unwrap();
    p.exec(
        "UPDATE delegation_edges SET status = 'revoked', revoked_at = now() WHERE id = 'e-revoked'",
    )
    .await
    .unwrap();
    let earliest: DateTime<Utc> =
        sqlx::query_scalar("SELECT expires_at FROM delegation_edges WHERE id = 'e-listed'")
            .fetch_one(p.conn())
            .await
            .unwrap();
    drop(p);

    let path = format!("{}/effective-authority", agent(&target));
    let resp = stack.call(&a, "GET", &path, None).await;
    let body = json_of(&resp);
    assert_eq!(resp.status, 200, "{body}");
    assert_eq!(body["agent_session_id"], json!(target));
    let inbound: BTreeSet<String> = body["inbound_edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        inbound,
        BTreeSet::from(["e-listed".to_owned(), "e-resource".to_owned()])
    );
    assert_eq!(body["effective_scopes"], json!(["read", "write"]));
    assert_eq!(body["effective_resource_ids"], json!(["res-one"]));
    assert_eq!(
        body["effective_resources"],
        json!(["resource://extra", "resource://one"])
    );
    assert_eq!(body["effective_max_hops"], json!(3));
    assert_eq!(body["effective_ttl_seconds"], json!(600));
    assert_eq!(time(&body["earliest_expires_at"]), earliest);

    let operator = stack.co.operator("GET", &path, None).await.unwrap();
    assert_eq!(json_of(&operator), body);
    expect(
        "another application's effective authority",
        &stack.call(&b, "GET", &path, None).await,
        404,
        "session_not_found",
    );
    // A session without inbound edges has an empty authority.
    let bare = json_of(
        &stack
            .call(
                &a,
                "GET",
                &format!("{}/effective-authority", agent(&from_a)),
                None,
            )
            .await,
    );
    assert_eq!(bare["inbound_edges"], json!([]));
    assert_eq!(bare["effective_scopes"], json!([]));
    assert_eq!(bare["earliest_expires_at"], Value::Null);
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------
// The expiry sweeper (storage §11)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_sweeper_expires_tasks_leases_and_edges_with_their_subtrees() {
    let stack = Stack::start(&[
        ("TTL_SWEEP_INTERVAL_MS", "200"),
        ("SERVICE_LEASE_SWEEP_INTERVAL_MS", "200"),
    ])
    .await;
    let a = stack.token(APP, REC);
    let b = stack.token(OTHER, REC_OTHER);
    let holder = stack.started(&a, &json!({"application_id": APP})).await;
    let short = stack
        .started_body(
            &a,
            &json!({"application_id": APP, "ttl_seconds": 1, "parent_id": holder}),
        )
        .await;
    assert_eq!(short["ttl_seconds"], json!(1));
    let short = id_of(&short);
    // A parent with a few seconds left, its child, and an edge out of the parent.
    let parent = stack
        .started(&a, &json!({"application_id": APP, "ttl_seconds": 3}))
        .await;
    let child = stack
        .started(&a, &json!({"application_id": APP, "parent_id": parent}))
        .await;
    let peer = stack.started(&b, &json!({"application_id": OTHER})).await;
    let other_peer = stack.started(&b, &json!({"application_id": OTHER})).await;
    seed_edge(
        &stack,
        "e-from-parent",
        (&parent, APP),
        (&peer, OTHER),
        &["read"],
        json!({}),
    )
    .await;
    // A service whose lease ran out, and an edge about to run out.
    let service = stack
        .started(&a, &json!({"application_id": APP, "lifecycle": "service"}))
        .await;
    stack
        .exec(&format!(
            "UPDATE agent_sessions SET heartbeat_deadline_at = now() - interval '1 second' \
              WHERE id = '{service}'"
        ))
        .await;
    stack
        .pg()
        .await
        .edge(
            ZONE,
            "e-short",
            (&peer, OTHER),
            (&other_peer, OTHER),
            &["read"],
            json!({}),
            1,
            None,
        )
        .await
        .unwrap();

    let expired = |id: String| {
        let stack = &stack;
        async move { stack.status(&id).await.0 == "expired" }
    };
    stack
        .eventually("the short task's expiry", 10, || expired(short.clone()))
        .await;
    assert_eq!(
        stack.status(&short).await,
        ("expired".to_owned(), Some("expired".to_owned()))
    );
    assert_eq!(stack.status(&holder).await.0, "active");
    assert_eq!(
        stack.session_int(&holder, "child_count").await,
        0,
        "the expired child left its parent"
    );
    stack
        .eventually("the parent's expiry", 15, || expired(parent.clone()))
        .await;
    assert_eq!(
        stack.status(&parent).await,
        ("expired".to_owned(), Some("expired".to_owned()))
    );
    assert_eq!(
        stack.status(&child).await,
        (
            "terminated".to_owned(),
            Some("parent_terminated".to_owned())
        )
    );
    assert_eq!(stack.edge_status("e-from-parent").await, "revoked");
    stack
        .eventually("the service's expiry", 10, || expired(service.clone()))
        .await;
    assert_eq!(
        stack.status(&service).await,
        ("expired".to_owned(), Some("expired".to_owned()))
    );
    let short_edge = || {
        let stack = &stack;
        async move { stack.edge_status("e-short").await == "expired" }
    };
    stack.eventually("the edge's expiry", 10, short_edge).await;
    assert_eq!(stack.status(&peer).await.0, "active");
    assert_eq!(stack.status(&other_peer).await.0, "active");

    // Announced like a termination with reason expired; the edge expiry with its epoch.
    let revoke = stack
        .outbox(SESSIONS_REVOKE, &format!("revoke:agent:{short}:v1"))
        .await
        .expect("the expiry's revoke row");
    assert_eq!(revoke["reason"], json!("expired"));
    let child_revoke = stack
        .outbox(SESSIONS_REVOKE, &format!("revoke:agent:{child}:v1"))
        .await
        .expect("the child's revoke row");
    assert_eq!(child_revoke["reason"], json!("parent_terminated"));
    let lifecycle = stack
        .outbox(AGENTS_LIFECYCLE, &format!("terminate:{service}:v1"))
        .await
        .expect("the service's lifecycle row");
    assert_eq!(lifecycle["reason"], json!("expired"));
    let mut p = stack.pg().await;
    let expiries: Vec<Value> = sqlx::query_scalar(
        "SELECT payload_json FROM caracal_outbox \
          WHERE topic = $1 AND payload_json->>'event' = 'edge_expire'",
    )
    .bind(DELEGATIONS_INVALIDATE)
    .fetch_all(p.conn())
    .await
    .unwrap();
    drop(p);
    assert_eq!(expiries.len(), 1, "{expiries:?}");
    assert_eq!(expiries[0]["edge_ids"], json!(["e-short"]));
    assert!(expiries[0]["epoch"].as_i64().unwrap() <= stack.epoch().await);
    stack.wait_published().await;
    stack.stop().await;
}
