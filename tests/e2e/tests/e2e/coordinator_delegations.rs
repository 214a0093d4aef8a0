//! Coordinator delegations end to end (wire-contract §7.4, §7.5; authority §2.2, §2.4, §2.5;
//! settled point 6): a real Coordinator whose session mandates verify against a real STS's
//! key set, on a fresh database and the machine's Redis.
//!
//! Create answers its row and announces it (epoch bump, outbox row, signed stream message);
//! every create rule refuses with its exact status and code, in order; a child only narrows
//! its parent; idempotent create replays; revoke cascades downstream and terminates the
//! target subtrees under one epoch bump; the reads; and the revocation of a
//! Coordinator-created session or edge reaching two gateway replicas.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use control_crypto::{HmacKey, verify_stream_fields};
use control_events::streams::{DELEGATIONS_INVALIDATE, SESSIONS_REVOKE};
use serde_json::{Value, json};
use tests_harness::{
    TestDb,
    coordinator::{CoordinatorFixture, session_claims},
    gateway::{GatewayFixture, STREAMS_KEY_HEX, TestSigner, gateway_claims},
    http::{self, HttpResponse},
    provision::Provision,
    streams::{self, field},
    sts::{StsFixture, redis_url},
    upstream::Upstream,
};

use super::gateway::{POLICY, RESOURCE as ECHO, assert_denied};

const ZONE: &str = "coord-deleg";
const ISSUER_APP: &str = "issuer-app";
/// The application the gateway policy grants (`super::gateway::POLICY`).
const AGENT: &str = "agent-app";
const THIRD: &str = "third-app";
/// The warning of a broad edge (authority §2.2 step 4).
const BROAD_WARNING: &str = "resource_null_delegation_broadens_resource_matching";
/// How long a stream message or a gateway denial may take.
const WITHIN: Duration = Duration::from_secs(5);

/// A zone with three applications (each with an application-typed authority record),
/// resources `res-a` (read, write, admin), `res-b` (read), `res-c` (read, write), a zone key
/// the test signs with, the STS serving it, and the Coordinator.
struct Stage {
    db: TestDb,
    sts: StsFixture,
    co: CoordinatorFixture,
    signer: TestSigner,
    tag: String,
}

impl Stage {
    async fn start() -> anyhow::Result<Self> {
        let db = TestDb::migrated().await?;
        let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let mut p = Provision::open(&db).await?;
        p.zone(ZONE).await?;
        for app in [ISSUER_APP, AGENT, THIRD] {
            p.application(ZONE, app, "secret-0123456789abcdef", &[])
                .await?;
            p.authority_record(ZONE, &record(app, &tag), "application", app)
                .await?;
        }
        p.provider_none(ZONE, "prov-none").await?;
        for (id, identifier, scopes) in [
            ("res-a", "resource://a", &["read", "write", "admin"][..]),
            ("res-b", "resource://b", &["read"][..]),
            ("res-c", "resource://c", &["read", "write"][..]),
        ] {
            p.resource(ZONE, id, identifier, scopes, None, "prov-none")
                .await?;
        }
        let signer = TestSigner::insert(p.conn(), ZONE).await?;
        let sts = StsFixture::start(&db).await?;
        let co = CoordinatorFixture::start_with(&db, sts.addr, &[]).await?;
        Ok(Self {
            db,
            sts,
            co,
            signer,
            tag,
        })
    }

    /// A session mandate of `app` with `agent:lifecycle` and `extra` scopes.
    fn token(&self, app: &str, extra: &[&str]) -> String {
        let mut claims = session_claims(ZONE, app, &record(app, &self.tag));
        let scope: Vec<&str> = std::iter::once("agent:lifecycle")
            .chain(extra.iter().copied())
            .collect();
        claims["scope"] = json!(scope.join(" "));
        self.signer.sign(&claims).expect("sign")
    }

    /// Starts a task session of `app` (its own mandate); `extra` is merged into the body.
    async fn session_with(&self, app: &str, extra: Value) -> String {
        let body = merged(json!({"application_id": app}), extra);
        let resp = self
            .co
            .call(
                &self.token(app, &[]),
                "POST",
                &format!("/zones/{ZONE}/agents"),
                Some(&body),
                &[],
            )
            .await
            .expect("start request");
        let answer = resp.json().unwrap_or(Value::Null);
        assert_eq!(resp.status, 201, "start {app}: {answer}");
        answer["agent_session_id"]
            .as_str()
            .expect("agent_session_id")
            .to_owned()
    }

    async fn session(&self, app: &str) -> String {
        self.session_with(app, json!({})).await
    }

    /// `POST /zones/{z}/delegations` with `token`.
    async fn delegate(&self, token: &str, body: &Value, headers: &[(&str, &str)]) -> HttpResponse {
        self.co
            .call(
                token,
                "POST",
                &format!("/zones/{ZONE}/delegations"),
                Some(body),
                headers,
            )
            .await
            .expect("delegate request")
    }

    /// Creates an edge that must succeed; returns the answer.
    async fn edge(&self, token: &str, body: &Value) -> Value {
        let resp = self.delegate(token, body, &[]).await;
        let answer = resp.json().unwrap_or(Value::Null);
        assert_eq!(resp.status, 201, "create {body}: {answer}");
        answer
    }

    /// A request with the operator token.
    async fn operator(&self, method: &str, path: &str) -> HttpResponse {
        self.co
            .operator(method, path, None)
            .await
            .expect("operator request")
    }

    async fn provision(&self) -> Provision {
        Provision::open(&self.db).await.expect("admin connection")
    }

    /// The zone's graph epoch (0 before the first change).
    async fn epoch(&self) -> i64 {
        let mut p = self.provision().await;
        sqlx::query_scalar::<_, i64>("SELECT epoch FROM delegation_graph_epochs WHERE zone_id = $1")
            .bind(ZONE)
            .fetch_optional(p.conn())
            .await
            .expect("epoch")
            .unwrap_or(0)
    }

    /// How many edges the zone holds.
    async fn edge_count(&self) -> i64 {
        let mut p = self.provision().await;
        sqlx::query_scalar("SELECT count(*) FROM delegation_edges WHERE zone_id = $1")
            .bind(ZONE)
            .fetch_one(p.conn())
            .await
            .expect("edge count")
    }

    /// `(status, edge_version, revoked_at set)` of an edge.
    async fn edge_state(&self, id: &str) -> (String, i32, bool) {
        let mut p = self.provision().await;
        sqlx::query_as::<_, (String, i32, bool)>(
            "SELECT status, edge_version, revoked_at IS NOT NULL FROM delegation_edges WHERE id = $1",
        )
        .bind(id)
        .fetch_one(p.conn())
        .await
        .expect("edge row")
    }

    /// `(status, termination_reason)` of a session.
    async fn session_state(&self, id: &str) -> (String, Option<String>) {
        let mut p = self.provision().await;
        sqlx::query_as::<_, (String, Option<String>)>(
            "SELECT status, termination_reason FROM agent_sessions WHERE id = $1",
        )
        .bind(id)
        .fetch_one(p.conn())
        .await
        .expect("session row")
    }

    /// The Coordinator's outbox rows on `topic`: `(dedupe_key, payload, status)`.
    async fn outbox(&self, topic: &str) -> Vec<(String, Value, String)> {
        let mut p = self.provision().await;
        sqlx::query_as::<_, (Option<String>, Value, String)>(
            "SELECT dedupe_key, payload_json, status FROM caracal_outbox \
              WHERE producer = 'coordinator' AND topic = $1 ORDER BY created_at, id",
        )
        .bind(topic)
        .fetch_all(p.conn())
        .await
        .expect("outbox rows")
        .into_iter()
        .map(|(key, payload, status)| (key.unwrap_or_default(), payload, status))
        .collect()
    }

    async fn stop(self) {
        self.co.stop().await;
        self.sts.stop().await;
    }
}

/// The authority record of `app` in a stage.
fn record(app: &str, tag: &str) -> String {
    format!("rec-{app}-{tag}")
}

/// `base` with the members of `changes` set (a `null` member removes the key).
fn merged(mut base: Value, changes: Value) -> Value {
    if let (Some(map), Value::Object(changes)) = (base.as_object_mut(), changes) {
        for (key, value) in changes {
            if value.is_null() {
                map.remove(&key);
            } else {
                map.insert(key, value);
            }
        }
    }
    base
}

/// A create body from `source` (of `issuer`) to `target` (of `receiver`).
fn edge_body(
    (issuer, source): (&str, &str),
    (receiver, target): (&str, &str),
    scopes: &[&str],
    extra: Value,
) -> Value {
    merged(
        json!({
            "issuer_application_id": issuer,
            "source_session_id": source,
            "target_session_id": target,
            "receiver_application_id": receiver,
            "scopes": scopes,
        }),
        extra,
    )
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn parse_time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("a time string"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

/// Asserts a Coordinator refusal: status and `{"error": code}`.
fn assert_refused(resp: &HttpResponse, status: u16, code: &str, what: &str) {
    let body = resp.json().unwrap_or(Value::Null);
    assert_eq!(
        (resp.status, body["error"].as_str().unwrap_or("")),
        (status, code),
        "{what}: body {body}"
    );
}

/// The id of a stream's newest entry (`0-0` when empty), to read what comes after.
async fn stream_tail(stream: &str) -> String {
    streams::last_entry_id(&redis_url(), stream)
        .await
        .expect("stream tail")
}

/// Waits up to [`WITHIN`] for an entry of `stream` after `after` that `wanted` accepts;
/// returns its fields.
async fn await_entry(
    stream: &str,
    after: &str,
    wanted: impl Fn(&[(String, String)]) -> bool,
) -> Option<Vec<(String, String)>> {
    streams::await_entry(&redis_url(), stream, after, WITHIN, wanted)
        .await
        .expect("stream read")
}

#[tokio::test]
async fn a_created_edge_answers_its_row_bumps_the_epoch_and_is_announced_signed()
-> anyhow::Result<()> {
    let s = Stage::start().await?;
    let source = s.session(ISSUER_APP).await;
    let target = s.session(AGENT).await;
    let tail = stream_tail(DELEGATIONS_INVALIDATE).await;
    let epoch_before = s.epoch().await;
    let asked_at = Utc::now();
    let answer = s
        .edge(
            &s.token(ISSUER_APP, &[]),
            &edge_body(
                (ISSUER_APP, &source),
                (AGENT, &target),
                &["read", "write"],
                json!({"resource_id": "resource://a",
                       "constraints": {"ttl_seconds": 600, "max_hops": 2, "budget": 2}}),
            ),
        )
        .await;

    // The answer (wire-contract §7.4, §7.6).
    let id = answer["delegation_edge_id"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(!id.is_empty(), "{answer}");
    assert_eq!(answer["zone_id"], ZONE);
    assert_eq!(answer["source_session_id"], source.as_str());
    assert_eq!(answer["target_session_id"], target.as_str());
    assert_eq!(answer["issuer_application_id"], ISSUER_APP);
    assert_eq!(answer["receiver_application_id"], AGENT);
    assert_eq!(answer["parent_edge_id"], Value::Null);
    assert_eq!(answer["resource_id"], "res-a", "stored as the row id");
    assert_eq!(answer["scopes"], json!(["read", "write"]));
    assert_eq!(answer["status"], "active");
    assert_eq!(answer["edge_version"], 0);
    assert_eq!(answer["revoked_at"], Value::Null);
    assert_eq!(answer["constraints_json"]["ttl_seconds"], 600);
    assert_eq!(answer["constraints_json"]["max_hops"], 2);
    assert_eq!(
        answer["warnings"],
        json!([]),
        "a named resource is not broad"
    );
    let reasons = answer["allow_reason"]
        .as_array()
        .expect("allow_reason array");
    assert!(reasons.contains(&json!("issuer_owner")), "{answer}");
    assert!(reasons.contains(&json!("root_edge")), "{answer}");
    let expires_at = parse_time(&answer["expires_at"]);
    let offset = (expires_at - asked_at).num_seconds();
    assert!(
        (595..=605).contains(&offset),
        "expires in ttl_seconds: {offset} s"
    );
    let effective = &answer["effective_authority"];
    assert_eq!(effective["scopes"], json!(["read", "write"]), "{answer}");
    assert_eq!(effective["max_hops"], 2, "{answer}");
    assert_eq!(effective["ttl_seconds"], 600, "{answer}");
    assert_eq!(effective["expires_at"], answer["expires_at"], "{answer}");

    // The row, the epoch, the outbox.
    assert_eq!(s.edge_state(&id).await, ("active".to_owned(), 0, false));
    let epoch = s.epoch().await;
    assert_eq!(epoch, epoch_before + 1, "one bump per create");
    let rows = s.outbox(DELEGATIONS_INVALIDATE).await;
    let created: Vec<&(String, Value, String)> = rows
        .iter()
        .filter(|(_, p, _)| p["edge_id"] == id.as_str())
        .collect();
    assert_eq!(created.len(), 1, "{rows:?}");
    let (dedupe_key, payload, _) = created[0];
    assert_eq!(dedupe_key, &format!("edge_create:{id}"));
    assert_eq!(payload["event"], "edge_create");
    assert_eq!(payload["zone_id"], ZONE);
    assert_eq!(payload["epoch"], epoch);
    assert_eq!(payload["source_session_id"], source.as_str());
    assert_eq!(payload["target_session_id"], target.as_str());

    // Dispatched: a signed message on caracal.delegations.invalidate.
    let fields = await_entry(DELEGATIONS_INVALIDATE, &tail, |f| {
        field(f, "edge_id") == Some(id.as_str())
    })
    .await
    .expect("edge_create published within 5 s");
    verify_stream_fields(
        &[&HmacKey::from_hex(STREAMS_KEY_HEX)?],
        DELEGATIONS_INVALIDATE,
        &fields,
    )?;
    assert_eq!(field(&fields, "event"), Some("edge_create"));
    assert_eq!(field(&fields, "zone_id"), Some(ZONE));
    assert_eq!(field(&fields, "epoch"), Some(epoch.to_string().as_str()));
    assert_eq!(field(&fields, "source_session_id"), Some(source.as_str()));
    assert_eq!(field(&fields, "target_session_id"), Some(target.as_str()));
    assert!(field(&fields, "outbox_id").is_some_and(|v| !v.is_empty()));
    assert_eq!(
        field(&fields, "dedupe_key"),
        Some(format!("edge_create:{id}").as_str())
    );
    let published = s.outbox(DELEGATIONS_INVALIDATE).await;
    assert!(
        published
            .iter()
            .any(|(k, _, status)| *k == format!("edge_create:{id}") && status == "published"),
        "{published:?}"
    );
    s.stop().await;
    Ok(())
}

/// One refused create: who asks, what, and the answer.
struct Refusal {
    what: &'static str,
    token: String,
    body: Value,
    status: u16,
    code: &'static str,
}

#[tokio::test]
async fn every_create_rule_refuses_in_order_with_its_status_and_code() -> anyhow::Result<()> {
    let s = Stage::start().await?;
    let source = s.session(ISSUER_APP).await;
    let target = s.session(AGENT).await;
    let third = s.session(THIRD).await;
    let ended = s.session(AGENT).await;
    let resp = s
        .operator("DELETE", &format!("/zones/{ZONE}/agents/{ended}"))
        .await;
    assert_eq!(resp.status, 204, "terminate: {:?}", resp.json());

    let issuer = s.token(ISSUER_APP, &[]);
    let agent = s.token(AGENT, &[]);
    // A valid body; each case changes what it names.
    let base = || {
        edge_body(
            (ISSUER_APP, &source),
            (AGENT, &target),
            &["read"],
            json!({"resource_id": "res-a", "constraints": {"ttl_seconds": 600}}),
        )
    };
    let with = |changes: Value| merged(base(), changes);
    let constraints = |c: Value| with(json!({"constraints": c}));
    let past = rfc3339(Utc::now() - chrono::Duration::minutes(5));
    let case = |what, token: &String, body, status, code| Refusal {
        what,
        token: token.clone(),
        body,
        status,
        code,
    };

    #[rustfmt::skip]
    let cases = vec![
        // 1. Constraints: the expiry, every field's bounds, unknown fields.
        case("no expiry", &issuer, constraints(json!({})), 400, "delegation_expiry_required"),
        case("no constraints at all", &issuer, with(json!({"constraints": null})), 400, "delegation_expiry_required"),
        case("only a budget", &issuer, constraints(json!({"budget": 2})), 400, "delegation_expiry_required"),
        case("an empty resource", &issuer, constraints(json!({"ttl_seconds": 600, "resources": [""]})), 400, "invalid_resources"),
        case("resources not a list", &issuer, constraints(json!({"ttl_seconds": 600, "resources": "resource://a"})), 400, "invalid_resources"),
        case("65 resources", &issuer, constraints(json!({"ttl_seconds": 600, "resources": vec!["resource://a"; 65]})), 400, "invalid_resources"),
        case("max_hops 0", &issuer, constraints(json!({"ttl_seconds": 600, "max_hops": 0})), 400, "invalid_max_hops"),
        case("max_hops 11", &issuer, constraints(json!({"ttl_seconds": 600, "max_hops": 11})), 400, "invalid_max_hops"),
        case("max_depth 11", &issuer, constraints(json!({"ttl_seconds": 600, "max_depth": 11})), 400, "invalid_max_hops"),
        case("max_hops a string", &issuer, constraints(json!({"ttl_seconds": 600, "max_hops": "2"})), 400, "invalid_max_hops"),
        case("max_hops and max_depth differ", &issuer, constraints(json!({"ttl_seconds": 600, "max_hops": 2, "max_depth": 3})), 400, "invalid_max_hops"),
        case("ttl_seconds 0", &issuer, constraints(json!({"ttl_seconds": 0})), 400, "invalid_ttl_seconds"),
        case("ttl_seconds 86401", &issuer, constraints(json!({"ttl_seconds": 86401})), 400, "invalid_ttl_seconds"),
        case("ttl_seconds a string", &issuer, constraints(json!({"ttl_seconds": "600"})), 400, "invalid_ttl_seconds"),
        case("body ttl_seconds 0 fills the constraint", &issuer, with(json!({"constraints": null, "ttl_seconds": 0})), 400, "invalid_ttl_seconds"),
        case("expires_at not RFC 3339", &issuer, constraints(json!({"expires_at": "tomorrow"})), 400, "invalid_expires_at"),
        case("expires_at a number", &issuer, constraints(json!({"expires_at": 1_900_000_000})), 400, "invalid_expires_at"),
        case("budget 0", &issuer, constraints(json!({"ttl_seconds": 600, "budget": 0})), 400, "invalid_budget"),
        case("budget 65", &issuer, constraints(json!({"ttl_seconds": 600, "budget": 65})), 400, "invalid_budget"),
        case("policy_approved a string", &issuer, constraints(json!({"ttl_seconds": 600, "policy_approved": "yes"})), 400, "invalid_policy_approved"),
        case("broad_reason empty", &issuer, constraints(json!({"ttl_seconds": 600, "broad_reason": ""})), 400, "invalid_broad_reason"),
        case("broad_reason 257 characters", &issuer, constraints(json!({"ttl_seconds": 600, "broad_reason": "r".repeat(257)})), 400, "invalid_broad_reason"),
        case("an unknown constraint", &issuer, constraints(json!({"ttl_seconds": 600, "colour": "red"})), 400, "invalid_delegation_constraint"),
        case("constraints not an object", &issuer, constraints(json!([1])), 400, "invalid_delegation_constraint"),
        case("no expiry outranks a foreign issuer", &agent, constraints(json!({})), 400, "delegation_expiry_required"),
        // 2. The issuer.
        case("a foreign issuer", &agent, base(), 403, "issuer_ownership_required"),
        case("a foreign issuer outranks self-delegation", &agent, with(json!({"target_session_id": source, "receiver_application_id": ISSUER_APP})), 403, "issuer_ownership_required"),
        // 3. Self-delegation.
        case("to itself", &issuer, with(json!({"target_session_id": source, "receiver_application_id": ISSUER_APP})), 400, "self_delegation_denied"),
        case("self-delegation outranks broadness", &issuer, with(json!({"target_session_id": source, "receiver_application_id": ISSUER_APP, "resource_id": null})), 400, "self_delegation_denied"),
        // 4. Broad edges.
        case("no resource at all", &issuer, with(json!({"resource_id": null})), 403, "broad_delegation_permission_required"),
        case("an empty resource id", &issuer, with(json!({"resource_id": ""})), 403, "broad_delegation_permission_required"),
        case("an empty resource list", &issuer, with(json!({"resource_id": null, "constraints": {"ttl_seconds": 600, "resources": []}})), 403, "broad_delegation_permission_required"),
        case("broadness outranks an ended endpoint", &issuer, with(json!({"resource_id": null, "target_session_id": ended})), 403, "broad_delegation_permission_required"),
        // 6. Endpoints.
        case("an ended target", &issuer, with(json!({"target_session_id": ended})), 404, "delegation_endpoint_not_found"),
        case("an unknown source", &issuer, with(json!({"source_session_id": "no-such-session"})), 404, "delegation_endpoint_not_found"),
        case("an ended endpoint outranks an unknown resource", &issuer, with(json!({"target_session_id": ended, "resource_id": "res-missing"})), 404, "delegation_endpoint_not_found"),
        case("the receiver is not the target's application", &issuer, with(json!({"receiver_application_id": THIRD})), 409, "delegation_application_mismatch"),
        case("the issuer is not the source's application", &agent, with(json!({"issuer_application_id": AGENT})), 409, "delegation_application_mismatch"),
        case("another target's application", &issuer, with(json!({"target_session_id": third})), 409, "delegation_application_mismatch"),
        case("a mismatch outranks an unknown resource", &issuer, with(json!({"receiver_application_id": THIRD, "resource_id": "res-missing"})), 409, "delegation_application_mismatch"),
        // 7. Resources.
        case("an unknown resource id", &issuer, with(json!({"resource_id": "res-missing"})), 404, "resource_not_found"),
        case("an unknown listed resource", &issuer, with(json!({"resource_id": null, "constraints": {"ttl_seconds": 600, "resources": ["resource://missing"]}})), 404, "resource_not_found"),
        case("the resource id is not listed", &issuer, with(json!({"constraints": {"ttl_seconds": 600, "resources": ["resource://b"]}})), 400, "delegation_resource_scope_mismatch"),
        case("a scope mismatch outranks undeclared scopes", &issuer, with(json!({"scopes": ["delete"], "constraints": {"ttl_seconds": 600, "resources": ["resource://b"]}})), 400, "delegation_resource_scope_mismatch"),
        // 8. Scopes within the resources' declared scopes.
        case("a scope the resource does not declare", &issuer, with(json!({"resource_id": "res-b", "scopes": ["write"]})), 403, "delegation_scopes_exceed_resource"),
        case("a scope no listed resource declares", &issuer, with(json!({"resource_id": null, "scopes": ["read", "delete"], "constraints": {"ttl_seconds": 600, "resources": ["resource://b", "resource://c"]}})), 403, "delegation_scopes_exceed_resource"),
        // 11. The expiry.
        case("an explicit expiry in the past", &issuer, constraints(json!({"expires_at": past})), 400, "delegation_expired"),
    ];
    let edges_before = s.edge_count().await;
    let epoch_before = s.epoch().await;
    for c in &cases {
        let resp = s.delegate(&c.token, &c.body, &[]).await;
        assert_refused(&resp, c.status, c.code, c.what);
    }
    assert_eq!(
        s.edge_count().await,
        edges_before,
        "a refusal writes no edge"
    );
    assert_eq!(s.epoch().await, epoch_before, "a refusal bumps no epoch");
    assert!(
        s.outbox(DELEGATIONS_INVALIDATE).await.is_empty(),
        "a refusal announces nothing"
    );

    // What the refusals were next to: the union of the listed resources' scopes, the body's
    // ttl_seconds, delegate_from, and broad edges for those allowed to make them.
    let union = s
        .edge(
            &issuer,
            &with(json!({"resource_id": null, "scopes": ["admin", "write"],
                          "constraints": {"ttl_seconds": 600, "resources": ["resource://a", "resource://c"]}})),
        )
        .await;
    assert_eq!(union["resource_id"], Value::Null);
    let body_ttl = s
        .edge(
            &issuer,
            &with(json!({"constraints": null, "ttl_seconds": 300})),
        )
        .await;
    assert_eq!(
        body_ttl["constraints_json"]["ttl_seconds"], 300,
        "{body_ttl}"
    );
    let from = s
        .edge(
            &s.token(AGENT, &["coordinator.delegate_from:issuer-app"]),
            &base(),
        )
        .await;
    assert!(
        from["allow_reason"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("scope:coordinator.delegate_from:issuer-app"))),
        "{from}"
    );
    for scope in [
        "coordinator.delegate_broad",
        "coordinator.delegate_broad:issuer-app",
    ] {
        let broad = s
            .edge(
                &s.token(ISSUER_APP, &[scope]),
                &with(json!({"resource_id": null})),
            )
            .await;
        assert_eq!(
            broad["warnings"],
            json!([BROAD_WARNING]),
            "{scope}: {broad}"
        );
        assert_eq!(
            broad["constraints_json"]["policy_approved"], true,
            "{broad}"
        );
        assert_eq!(
            broad["constraints_json"]["broad_reason"], "resource_null_delegation",
            "{broad}"
        );
        assert!(
            broad["allow_reason"]
                .as_array()
                .is_some_and(|r| r.contains(&json!("broad_delegation_permitted"))),
            "{broad}"
        );
    }
    let stated = s
        .edge(
            &s.token(ISSUER_APP, &["coordinator.delegate_broad"]),
            &with(json!({"resource_id": null,
                          "constraints": {"ttl_seconds": 600, "broad_reason": "batch job", "policy_approved": false}})),
        )
        .await;
    assert_eq!(stated["constraints_json"]["broad_reason"], "batch job");
    assert_eq!(
        stated["constraints_json"]["policy_approved"], true,
        "forced on broad edges"
    );
    assert_eq!(
        s.epoch().await,
        epoch_before + 6,
        "one bump per created edge"
    );
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_child_edge_only_narrows_its_parent() -> anyhow::Result<()> {
    let s = Stage::start().await?;
    let issuer = s.token(ISSUER_APP, &[]);
    let agent = s.token(AGENT, &[]);
    let p0 = s.session(ISSUER_APP).await;
    let p1 = s.session(AGENT).await;
    let p2 = s.session(THIRD).await;
    let root = s
        .edge(
            &issuer,
            &edge_body(
                (ISSUER_APP, &p0),
                (AGENT, &p1),
                &["read", "write"],
                json!({"constraints": {"resources": ["resource://a", "resource://b"], "max_hops": 3,
                                       "ttl_seconds": 3600, "budget": 2}}),
            ),
        )
        .await;
    let root_id = root["delegation_edge_id"].as_str().expect("id").to_owned();
    let root_expiry = parse_time(&root["expires_at"]);

    let child = |changes: Value| {
        merged(
            edge_body(
                (AGENT, &p1),
                (THIRD, &p2),
                &["read"],
                json!({"constraints": {"resources": ["resource://a"], "max_hops": 2, "ttl_seconds": 600}}),
            ),
            changes,
        )
    };
    let inside = rfc3339(root_expiry - chrono::Duration::minutes(10));
    let after = rfc3339(root_expiry + chrono::Duration::minutes(10));
    let exceeds = "delegation_exceeds_parent_authority";
    let broad_agent = s.token(AGENT, &["coordinator.delegate_broad"]);
    #[rustfmt::skip]
    let cases: Vec<(&str, &String, Value, u16, &str)> = vec![
        ("a scope the parent lacks", &agent, child(json!({"scopes": ["admin"]})), 403, exceeds),
        ("an explicit expiry after the parent's", &agent, child(json!({"constraints": {"resources": ["resource://a"], "max_hops": 2, "ttl_seconds": 600, "expires_at": after}})), 403, exceeds),
        ("a resource outside the parent's list", &agent, child(json!({"constraints": {"resources": ["resource://c"], "max_hops": 2, "ttl_seconds": 600}})), 403, exceeds),
        ("a resource id outside the parent's list", &agent, child(json!({"resource_id": "res-c", "constraints": {"max_hops": 2, "ttl_seconds": 600}})), 403, exceeds),
        ("no resource under a listing parent", &broad_agent, child(json!({"constraints": {"max_hops": 2, "ttl_seconds": 600}})), 403, exceeds),
        ("as many hops as the parent", &agent, child(json!({"constraints": {"resources": ["resource://a"], "max_hops": 3, "ttl_seconds": 600}})), 403, exceeds),
        ("a longer ttl than the parent's", &agent, child(json!({"constraints": {"resources": ["resource://a"], "max_hops": 2, "ttl_seconds": 3601, "expires_at": inside}})), 403, exceeds),
        ("no ttl under a ttl parent", &agent, child(json!({"constraints": {"resources": ["resource://a"], "max_hops": 2, "expires_at": inside}})), 403, exceeds),
        ("a bigger budget", &agent, child(json!({"constraints": {"resources": ["resource://a"], "max_hops": 2, "ttl_seconds": 600, "budget": 3}})), 403, exceeds),
        ("a ttl expiry after the parent's", &agent, child(json!({"constraints": {"resources": ["resource://a"], "max_hops": 2, "ttl_seconds": 3600}})), 403, exceeds),
        ("a named parent that does not exist", &agent, child(json!({"parent_edge_id": "no-such-edge"})), 403, "parent_delegation_not_active"),
        ("back to the root's source", &agent, edge_body((AGENT, &p1), (ISSUER_APP, &p0), &["read"], json!({"constraints": {"resources": ["resource://a"], "max_hops": 2, "ttl_seconds": 600}})), 409, "delegation_cycle_denied"),
    ];
    let epoch_before = s.epoch().await;
    for (what, token, body, status, code) in &cases {
        let resp = s.delegate(token, body, &[]).await;
        assert_refused(&resp, *status, code, what);
    }
    assert_eq!(s.epoch().await, epoch_before, "a refusal bumps no epoch");

    let narrowed = s.edge(&agent, &child(json!({}))).await;
    assert_eq!(narrowed["parent_edge_id"], root_id.as_str(), "{narrowed}");
    assert!(
        narrowed["allow_reason"]
            .as_array()
            .is_some_and(|r| r.contains(&json!(format!("narrows_parent:{root_id}")))),
        "{narrowed}"
    );
    let same_budget = s
        .edge(
            &agent,
            &child(json!({"scopes": ["read", "write"], "parent_edge_id": root_id})),
        )
        .await;
    assert_eq!(same_budget["parent_edge_id"], root_id.as_str());

    // Two live inbound edges: the parent must be named.
    let q0 = s.session(ISSUER_APP).await;
    let q0b = s.session(ISSUER_APP).await;
    let q1 = s.session(AGENT).await;
    let mut parents = Vec::new();
    for from in [&q0, &q0b] {
        let e = s
            .edge(
                &issuer,
                &edge_body(
                    (ISSUER_APP, from),
                    (AGENT, &q1),
                    &["read"],
                    json!({"resource_id": "res-a", "constraints": {"ttl_seconds": 600, "max_hops": 2}}),
                ),
            )
            .await;
        parents.push(e["delegation_edge_id"].as_str().expect("id").to_owned());
    }
    let from_q1 = |changes: Value| {
        merged(
            edge_body(
                (AGENT, &q1),
                (THIRD, &p2),
                &["read"],
                json!({"resource_id": "res-a", "constraints": {"ttl_seconds": 300}}),
            ),
            changes,
        )
    };
    let resp = s.delegate(&agent, &from_q1(json!({})), &[]).await;
    assert_refused(
        &resp,
        409,
        "parent_delegation_ambiguous",
        "two live parents",
    );
    let resp = s
        .delegate(&agent, &from_q1(json!({"parent_edge_id": root_id})), &[])
        .await;
    assert_refused(
        &resp,
        403,
        "parent_delegation_not_active",
        "a named parent into another session",
    );
    let named = s
        .edge(&agent, &from_q1(json!({"parent_edge_id": parents[1]})))
        .await;
    assert_eq!(named["parent_edge_id"], parents[1].as_str());
    // An inbound edge revoked because its source ended is no parent any more: naming it
    // is refused; without it the source holds no live inbound edge and issues a root edge.
    let x = s.session(ISSUER_APP).await;
    let y = s.session(AGENT).await;
    let xy = s
        .edge(
            &issuer,
            &edge_body(
                (ISSUER_APP, &x),
                (AGENT, &y),
                &["read"],
                json!({"resource_id": "res-a", "constraints": {"ttl_seconds": 600, "max_hops": 2}}),
            ),
        )
        .await["delegation_edge_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let resp = s
        .operator("DELETE", &format!("/zones/{ZONE}/agents/{x}"))
        .await;
    assert_eq!(resp.status, 204, "{:?}", resp.json());
    assert_eq!(s.edge_state(&xy).await.0, "revoked");
    let from_y = |changes: Value| {
        merged(
            edge_body(
                (AGENT, &y),
                (THIRD, &p2),
                &["read"],
                json!({"resource_id": "res-a", "constraints": {"ttl_seconds": 60}}),
            ),
            changes,
        )
    };
    let resp = s
        .delegate(&agent, &from_y(json!({"parent_edge_id": xy})), &[])
        .await;
    assert_refused(
        &resp,
        403,
        "parent_delegation_not_active",
        "a revoked parent named",
    );
    let rooted = s.edge(&agent, &from_y(json!({}))).await;
    assert_eq!(rooted["parent_edge_id"], Value::Null, "{rooted}");
    assert!(
        rooted["allow_reason"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("root_edge"))),
        "{rooted}"
    );
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_three_hop_chain_narrows_to_its_end_and_revoking_the_middle_cascades_downstream()
-> anyhow::Result<()> {
    let s = Stage::start().await?;
    let (issuer, agent, third) = (
        s.token(ISSUER_APP, &[]),
        s.token(AGENT, &[]),
        s.token(THIRD, &[]),
    );
    let c0 = s.session(ISSUER_APP).await;
    let c1 = s.session(AGENT).await;
    let c2 = s.session(THIRD).await;
    let c3 = s.session(ISSUER_APP).await;
    let c4 = s.session(AGENT).await;
    let epoch_before = s.epoch().await;
    let hop = |from: (&str, &str), to: (&str, &str), hops: i64, ttl: i64| {
        edge_body(
            from,
            to,
            &["read"],
            json!({"resource_id": "res-a", "constraints": {"max_hops": hops, "ttl_seconds": ttl}}),
        )
    };
    let e1 = s
        .edge(
            &issuer,
            &hop((ISSUER_APP, c0.as_str()), (AGENT, c1.as_str()), 3, 3600),
        )
        .await;
    let e2 = s
        .edge(
            &agent,
            &hop((AGENT, c1.as_str()), (THIRD, c2.as_str()), 2, 1800),
        )
        .await;
    let e3 = s
        .edge(
            &third,
            &hop((THIRD, c2.as_str()), (ISSUER_APP, c3.as_str()), 1, 900),
        )
        .await;
    let resp = s
        .delegate(
            &issuer,
            &hop((ISSUER_APP, c3.as_str()), (AGENT, c4.as_str()), 1, 600),
            &[],
        )
        .await;
    assert_refused(
        &resp,
        403,
        "delegation_exceeds_parent_authority",
        "a fourth hop under a one-hop parent",
    );
    let [e1, e2, e3] =
        [&e1, &e2, &e3].map(|e| e["delegation_edge_id"].as_str().expect("id").to_owned());
    assert_eq!(
        s.epoch().await,
        epoch_before + 3,
        "three creates, three bumps"
    );

    // Traverse (operator): root to leaf, a bare array.
    let resp = s
        .operator("GET", &format!("/zones/{ZONE}/delegations/{e3}/traverse"))
        .await;
    let lineage = resp.json()?;
    assert_eq!(resp.status, 200, "{lineage}");
    let ids: Vec<&str> = lineage
        .as_array()
        .expect("a bare array")
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(ids, vec![e1.as_str(), e2.as_str(), e3.as_str()]);
    let resp =
        s.co.call(
            &agent,
            "GET",
            &format!("/zones/{ZONE}/delegations/{e3}/traverse"),
            None,
            &[],
        )
        .await?;
    assert_refused(
        &resp,
        403,
        "missing_scope",
        "traverse without coordinator.admin",
    );
    let resp = s
        .operator(
            "GET",
            &format!("/zones/{ZONE}/delegations/no-such-edge/traverse"),
        )
        .await;
    assert_refused(
        &resp,
        404,
        "delegation_not_found",
        "traverse of an unknown edge",
    );

    // A child session under c2, started without inheriting, is part of c2's subtree.
    let c2_child = s
        .session_with(THIRD, json!({"parent_id": c2, "parent_authority": "none"}))
        .await;

    // Impact (operator): what revoking e2 would reach, changing nothing.
    let resp = s
        .operator("GET", &format!("/zones/{ZONE}/delegations/{e2}/impact"))
        .await;
    let impact = resp.json()?;
    assert_eq!(resp.status, 200, "{impact}");
    assert_eq!(impact["edge_id"], e2.as_str());
    let reached: Vec<(String, String, String, i64)> = impact["affected_edges"]
        .as_array()
        .expect("affected_edges")
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap_or("").to_owned(),
                e["source_session_id"].as_str().unwrap_or("").to_owned(),
                e["target_session_id"].as_str().unwrap_or("").to_owned(),
                e["depth"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(
        reached,
        vec![
            (e2.clone(), c1.clone(), c2.clone(), 0),
            (e3.clone(), c2.clone(), c3.clone(), 1),
        ]
    );
    let mut sessions: Vec<&str> = impact["affected_sessions"]
        .as_array()
        .expect("affected_sessions")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    sessions.sort_unstable();
    let mut expected = vec![c2.as_str(), c3.as_str(), c2_child.as_str()];
    expected.sort_unstable();
    assert_eq!(sessions, expected, "{impact}");
    let records = impact["affected_authority_records"]
        .as_array()
        .expect("affected_authority_records");
    assert!(records.contains(&json!(record(THIRD, &s.tag))), "{impact}");
    assert!(
        records.contains(&json!(record(ISSUER_APP, &s.tag))),
        "{impact}"
    );
    let resp =
        s.co.call(
            &agent,
            "GET",
            &format!("/zones/{ZONE}/delegations/{e2}/impact"),
            None,
            &[],
        )
        .await?;
    assert_refused(
        &resp,
        403,
        "missing_scope",
        "impact without coordinator.admin",
    );
    assert_eq!(
        s.edge_state(&e2).await.0,
        "active",
        "impact changes nothing"
    );
    let resp = s
        .operator(
            "GET",
            &format!("/zones/{ZONE}/delegations/no-such-edge/impact"),
        )
        .await;
    assert_refused(
        &resp,
        404,
        "delegation_not_found",
        "impact of an unknown edge",
    );

    // An application on neither end of e1 cannot see it, so cannot revoke it.
    let resp =
        s.co.call(
            &third,
            "PATCH",
            &format!("/zones/{ZONE}/delegations/{e1}/revoke"),
            None,
            &[],
        )
        .await?;
    assert_refused(&resp, 404, "delegation_not_found", "revoke by a stranger");

    // Revoke e2: e2 and e3 revoked, c2's subtree and c3 terminated, one epoch bump.
    let epoch_mid = s.epoch().await;
    let tail = stream_tail(DELEGATIONS_INVALIDATE).await;
    let resp = s
        .operator("PATCH", &format!("/zones/{ZONE}/delegations/{e2}/revoke"))
        .await;
    let answer = resp.json()?;
    assert_eq!(resp.status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"revoked_edges": 2, "affected_sessions": 3, "terminated_sessions": 3})
    );
    assert_eq!(
        s.epoch().await,
        epoch_mid + 1,
        "one bump for the whole cascade"
    );
    assert_eq!(s.edge_state(&e1).await, ("active".to_owned(), 0, false));
    for e in [&e2, &e3] {
        assert_eq!(
            s.edge_state(e).await,
            ("revoked".to_owned(), 1, true),
            "{e}"
        );
    }
    let revoked = (
        "terminated".to_owned(),
        Some("delegation_revoked".to_owned()),
    );
    assert_eq!(s.session_state(&c2).await, revoked);
    assert_eq!(s.session_state(&c3).await, revoked);
    assert_eq!(
        s.session_state(&c2_child).await,
        (
            "terminated".to_owned(),
            Some("parent_terminated".to_owned())
        )
    );
    for live in [&c0, &c1, &c4] {
        assert_eq!(s.session_state(live).await.0, "active", "{live}");
    }

    // The outbox: one edge_revoke per edge at the new epoch; a revoke message per edge and
    // per terminated session, the latter naming the revoked edge.
    let epoch = epoch_mid + 1;
    let invalidations = s.outbox(DELEGATIONS_INVALIDATE).await;
    for e in [&e2, &e3] {
        let row = invalidations
            .iter()
            .find(|(k, _, _)| *k == format!("edge_revoke:{e}"))
            .unwrap_or_else(|| panic!("edge_revoke:{e} in {invalidations:?}"));
        assert_eq!(row.1["event"], "edge_revoke");
        assert_eq!(row.1["epoch"], epoch);
        assert_eq!(row.1["zone_id"], ZONE);
        assert_eq!(row.1["affected_edges"], 2);
        assert_eq!(row.1["reason"], "delegation_revoked");
    }
    let revokes = s.outbox(SESSIONS_REVOKE).await;
    for e in [&e2, &e3] {
        assert!(
            revokes
                .iter()
                .any(|(k, p, _)| *k == format!("revoke:edge:{e}")
                    && p["delegation_edge_id"] == e.as_str()),
            "revoke:edge:{e} in {revokes:?}"
        );
    }
    for (session, reason) in [
        (&c2, "delegation_revoked"),
        (&c3, "delegation_revoked"),
        (&c2_child, "parent_terminated"),
    ] {
        let row = revokes
            .iter()
            .find(|(_, p, _)| p["agent_session_id"] == session.as_str())
            .unwrap_or_else(|| panic!("a revoke message for {session} in {revokes:?}"));
        assert_eq!(row.1["reason"], reason, "{row:?}");
        assert_eq!(row.1["delegation_edge_id"], e2.as_str(), "{row:?}");
        assert_eq!(row.1["zone_id"], ZONE);
    }
    let fields = await_entry(DELEGATIONS_INVALIDATE, &tail, |f| {
        field(f, "edge_id") == Some(e3.as_str()) && field(f, "event") == Some("edge_revoke")
    })
    .await
    .expect("edge_revoke published within 5 s");
    verify_stream_fields(
        &[&HmacKey::from_hex(STREAMS_KEY_HEX)?],
        DELEGATIONS_INVALIDATE,
        &fields,
    )?;
    assert_eq!(field(&fields, "epoch"), Some(epoch.to_string().as_str()));
    assert_eq!(field(&fields, "affected_edges"), Some("2"));

    // Again, and on the edge already revoked downstream: nothing left to do.
    for e in [&e2, &e3] {
        let resp = s
            .operator("PATCH", &format!("/zones/{ZONE}/delegations/{e}/revoke"))
            .await;
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.json()?,
            json!({"revoked_edges": 0, "affected_sessions": 0, "terminated_sessions": 0}),
            "{e}"
        );
    }
    assert_eq!(
        s.epoch().await,
        epoch,
        "a revoke that changes nothing bumps nothing"
    );
    let resp = s
        .operator(
            "PATCH",
            &format!("/zones/{ZONE}/delegations/no-such-edge/revoke"),
        )
        .await;
    assert_refused(
        &resp,
        404,
        "delegation_not_found",
        "revoke of an unknown edge",
    );
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_idempotent_create_replays_its_answer_and_refuses_another_body() -> anyhow::Result<()> {
    let s = Stage::start().await?;
    let issuer = s.token(ISSUER_APP, &[]);
    let source = s.session(ISSUER_APP).await;
    let target = s.session(AGENT).await;
    let body = edge_body(
        (ISSUER_APP, &source),
        (AGENT, &target),
        &["read"],
        json!({"resource_id": "res-a", "constraints": {"ttl_seconds": 600}}),
    );
    let key = [("idempotency-key", "delegate-once-1")];
    let first = s.delegate(&issuer, &body, &key).await;
    let answer = first.json()?;
    assert_eq!(first.status, 201, "{answer}");
    assert_eq!(first.header("idempotency-replayed"), None);
    let epoch = s.epoch().await;

    // The same body with its members in another order and other white space is the same
    // request (the digest is of the canonical form).
    let reordered = {
        let members: Vec<String> = body
            .as_object()
            .expect("object")
            .iter()
            .rev()
            .map(|(k, v)| format!("{} : {v}", Value::String(k.clone())))
            .collect();
        format!("{{ {} }}", members.join(" ,\n "))
    };
    assert_ne!(reordered, body.to_string());
    for raw in [body.to_string(), reordered] {
        let auth = format!("Bearer {issuer}");
        let replay = http::request(
            s.co.addr,
            "POST",
            &format!("/zones/{ZONE}/delegations"),
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
                key[0],
            ],
            raw,
        )
        .await?;
        assert_eq!(replay.status, 201, "{:?}", replay.json());
        assert_eq!(
            replay.header("idempotency-replayed").as_deref(),
            Some("true")
        );
        assert_eq!(replay.json()?, answer, "the stored answer, unchanged");
    }
    assert_eq!(s.edge_count().await, 1, "one edge for one key");
    assert_eq!(s.epoch().await, epoch, "a replay bumps nothing");

    let other = merged(body.clone(), json!({"scopes": ["write"]}));
    let resp = s.delegate(&issuer, &other, &key).await;
    assert_refused(
        &resp,
        409,
        "idempotency_key_conflict",
        "same key, other body",
    );
    // Keys are scoped to the caller's application: another caller's same key is fresh.
    let from = s.token(AGENT, &["coordinator.delegate_from:issuer-app"]);
    let resp = s.delegate(&from, &body, &key).await;
    assert_eq!(resp.status, 201, "{:?}", resp.json());
    assert_eq!(resp.header("idempotency-replayed"), None);
    assert_ne!(
        resp.json()?["delegation_edge_id"],
        answer["delegation_edge_id"]
    );
    let resp = s
        .delegate(&issuer, &body, &[("idempotency-key", "has space")])
        .await;
    assert_refused(
        &resp,
        400,
        "invalid_idempotency_key",
        "a key with white space",
    );

    // Once the edge is revoked, its receipt no longer replays.
    let id = answer["delegation_edge_id"].as_str().expect("id");
    let resp = s
        .operator("PATCH", &format!("/zones/{ZONE}/delegations/{id}/revoke"))
        .await;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    let resp = s.delegate(&issuer, &body, &key).await;
    assert_refused(
        &resp,
        409,
        "idempotency_result_inactive",
        "replay of a revoked edge",
    );
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_reads_list_inbound_outbound_and_active_edges() -> anyhow::Result<()> {
    let s = Stage::start().await?;
    let issuer = s.token(ISSUER_APP, &[]);
    let agent = s.token(AGENT, &[]);
    let third = s.token(THIRD, &[]);
    let source = s.session(ISSUER_APP).await;
    let target = s.session(AGENT).await;
    let other = s.session(AGENT).await;
    let mut ids = Vec::new();
    for to in [&target, &target, &other] {
        let e = s
            .edge(
                &issuer,
                &edge_body(
                    (ISSUER_APP, &source),
                    (AGENT, to),
                    &["read"],
                    json!({"resource_id": "res-a", "constraints": {"ttl_seconds": 600}}),
                ),
            )
            .await;
        ids.push(e["delegation_edge_id"].as_str().expect("id").to_owned());
    }
    let get = async |token: &str, path: String| {
        s.co.call(token, "GET", &path, None, &[])
            .await
            .expect("read request")
    };
    let items = page_items;
    let id_set = ids_of;

    // Inbound: the target's live edges, each with id, status, expires_at.
    let inbound_path = format!("/zones/{ZONE}/delegations/inbound/{target}");
    for token in [agent.as_str(), tests_harness::coordinator::OPERATOR_TOKEN] {
        let list = items(&get(token, inbound_path.clone()).await);
        assert_eq!(id_set(&list), sorted(&[&ids[0], &ids[1]][..]));
        for item in &list {
            assert_eq!(item["status"], "active", "{item}");
            assert!(item["expires_at"].as_str().is_some(), "{item}");
            assert_eq!(item["target_session_id"], target.as_str(), "{item}");
        }
    }
    // An application on neither end sees none of them.
    assert!(items(&get(&third, inbound_path.clone()).await).is_empty());
    // Paged.
    let page = get(&agent, format!("{inbound_path}?limit=1")).await;
    let first = page.json()?;
    assert_eq!(first["items"].as_array().map(Vec::len), Some(1), "{first}");
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let second = items(&get(&agent, format!("{inbound_path}?limit=1&cursor={cursor}")).await);
    assert_eq!(second.len(), 1);
    assert_ne!(second[0]["id"], first["items"][0]["id"]);

    // One inbound: {id, status} of a live edge into that session; 404 otherwise.
    let one = get(&agent, format!("{inbound_path}/{}", ids[0])).await;
    let body = one.json()?;
    assert_eq!(one.status, 200, "{body}");
    assert_eq!(body["id"], ids[0].as_str());
    assert_eq!(body["status"], "active");
    for (what, path) in [
        ("an unknown edge", format!("{inbound_path}/no-such-edge")),
        (
            "an edge into another session",
            format!("{inbound_path}/{}", ids[2]),
        ),
    ] {
        assert_refused(&get(&agent, path).await, 404, "delegation_not_found", what);
    }
    assert_refused(
        &get(&third, format!("{inbound_path}/{}", ids[0])).await,
        404,
        "delegation_not_found",
        "a stranger's view",
    );

    // Outbound: the source's edges.
    let outbound = items(
        &get(
            &issuer,
            format!("/zones/{ZONE}/delegations/outbound/{source}"),
        )
        .await,
    );
    assert_eq!(id_set(&outbound), sorted(&[&ids[0], &ids[1], &ids[2]][..]));
    assert!(
        items(
            &get(
                &issuer,
                format!("/zones/{ZONE}/delegations/outbound/{target}")
            )
            .await
        )
        .is_empty()
    );

    // Active: every live edge the caller may see.
    let active_path = format!("/zones/{ZONE}/delegations/active");
    let active = items(
        &get(
            tests_harness::coordinator::OPERATOR_TOKEN,
            active_path.clone(),
        )
        .await,
    );
    assert_eq!(id_set(&active), sorted(&[&ids[0], &ids[1], &ids[2]][..]));

    // After a revoke the edge leaves the live lists and the one-edge read.
    let resp = s
        .operator(
            "PATCH",
            &format!("/zones/{ZONE}/delegations/{}/revoke", ids[0]),
        )
        .await;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    // Revoking ids[0] terminated `target`, which revoked ids[1] as an edge touching it.
    assert_eq!(s.edge_state(&ids[1]).await.0, "revoked");
    let active = items(&get(tests_harness::coordinator::OPERATOR_TOKEN, active_path).await);
    assert_eq!(id_set(&active), vec![ids[2].clone()]);
    assert!(items(&get(&agent, inbound_path.clone()).await).is_empty());
    assert_refused(
        &get(&agent, format!("{inbound_path}/{}", ids[0])).await,
        404,
        "delegation_not_found",
        "a revoked edge",
    );
    s.stop().await;
    Ok(())
}

/// The `items` of a 200 page answer (which also carries `next_cursor`).
fn page_items(resp: &HttpResponse) -> Vec<Value> {
    let body = resp.json().unwrap_or(Value::Null);
    assert_eq!(resp.status, 200, "{body}");
    assert!(body.get("next_cursor").is_some(), "paged: {body}");
    body["items"].as_array().cloned().unwrap_or_default()
}

/// The sorted `id`s of page items.
fn ids_of(items: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = items
        .iter()
        .filter_map(|i| i["id"].as_str().map(str::to_owned))
        .collect();
    v.sort_unstable();
    v
}

fn sorted(ids: &[&String]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| (*s).clone()).collect();
    v.sort_unstable();
    v
}

/// A stage with a resource behind a real upstream, the gateway policy, and two gateway
/// replicas on the same database; a Coordinator-created source, target and root edge; and
/// the gateway mandates anchored on them.
struct Fleet {
    stage: Stage,
    _upstream: Upstream,
    gateways: [GatewayFixture; 2],
    target: String,
    edge: String,
}

impl Fleet {
    async fn start() -> anyhow::Result<Self> {
        let stage = Stage::start().await?;
        let upstream = Upstream::start().await?;
        {
            let mut p = stage.provision().await;
            p.resource(
                ZONE,
                "res-echo",
                ECHO,
                &["read", "write"],
                Some(&upstream.url("/base")),
                "prov-none",
            )
            .await?;
            p.exec(
                "UPDATE resources SET operations = '[{\"method\":\"GET\",\"path\":\"/items\",\"scope\":\"read\"}]' \
                 WHERE id = 'res-echo'",
            )
            .await?;
            p.activate_policy(ZONE, "main", POLICY).await?;
        }
        let source = stage.session(ISSUER_APP).await;
        let target = stage
            .session_with(AGENT, json!({"labels": ["reader"]}))
            .await;
        let edge = stage
            .edge(
                &stage.token(ISSUER_APP, &[]),
                &edge_body(
                    (ISSUER_APP, &source),
                    (AGENT, &target),
                    &["read"],
                    json!({"resource_id": "res-echo", "constraints": {"ttl_seconds": 900}}),
                ),
            )
            .await["delegation_edge_id"]
            .as_str()
            .expect("id")
            .to_owned();
        // A one-minute healing poll: within the test's 5 s only the revocation streams
        // (each replica reading under its own consumer group) can carry the change.
        let slow_poll = [("CARACAL_GATEWAY_POLL_SECONDS", "60")];
        let gateways = [
            GatewayFixture::start_with(&stage.db, &slow_poll).await?,
            GatewayFixture::start_with(&stage.db, &slow_poll).await?,
        ];
        assert_ne!(gateways[0].instance_id, gateways[1].instance_id);
        Ok(Self {
            stage,
            _upstream: upstream,
            gateways,
            target,
            edge,
        })
    }

    /// A fresh single-use gateway mandate of the agent, anchored on the target session and
    /// the edge.
    fn mandate(&self) -> String {
        let mut claims = gateway_claims(ZONE, AGENT, &record(AGENT, &self.stage.tag), ECHO);
        claims["agent_session_id"] = json!(self.target);
        claims["delegation_edge_id"] = json!(self.edge);
        claims["scope"] = json!("read");
        self.stage.signer.sign(&claims).expect("sign")
    }

    /// `GET /items` through `gateway` with a fresh mandate. `Err` when the connection
    /// closed before a whole answer: a response the gateway cut because an anchor was
    /// revoked after the decision (wire-contract §4.4: a Content-Length response is cut by
    /// closing the connection).
    async fn call(&self, gateway: &GatewayFixture) -> anyhow::Result<HttpResponse> {
        let auth = format!("Bearer {}", self.mandate());
        http::request(
            gateway.addr,
            "GET",
            "/items",
            &[
                ("authorization", auth.as_str()),
                ("x-caracal-resource", ECHO),
            ],
            "",
        )
        .await
    }

    /// Both gateways forward the governed request.
    async fn assert_both_allow(&self) {
        for (n, gateway) in self.gateways.iter().enumerate() {
            let resp = self.call(gateway).await.expect("gateway request");
            assert_eq!(resp.status, 200, "gateway {n}: {:?}", resp.json());
        }
    }

    /// Polls both gateways until each denies (at most [`WITHIN`]); asserts the answer is
    /// 401 `invalid_token` "session revoked" (check 13).
    async fn assert_both_deny(&self, what: &str) {
        let started = tokio::time::Instant::now();
        for (n, gateway) in self.gateways.iter().enumerate() {
            loop {
                // A call in flight when the revocation lands may be cut (`Err`); the next
                // one must be refused at check 13.
                let resp = self.call(gateway).await;
                if let Ok(resp) = &resp
                    && resp.status != 200
                {
                    assert_denied(resp, 401, "invalid_token", "session revoked");
                    break;
                }
                assert!(
                    started.elapsed() < WITHIN,
                    "{what}: gateway {n} still forwards after {:?}",
                    started.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }

    async fn stop(self) {
        let [a, b] = self.gateways;
        a.stop().await;
        b.stop().await;
        self.stage.stop().await;
    }
}

#[tokio::test]
async fn terminating_the_target_session_at_the_coordinator_denies_at_both_gateways()
-> anyhow::Result<()> {
    let fleet = Fleet::start().await?;
    fleet.assert_both_allow().await;
    let resp = fleet
        .stage
        .operator("DELETE", &format!("/zones/{ZONE}/agents/{}", fleet.target))
        .await;
    assert_eq!(resp.status, 204, "{:?}", resp.json());
    fleet.assert_both_deny("terminate").await;
    assert_eq!(fleet.stage.edge_state(&fleet.edge).await.0, "revoked");
    fleet.stop().await;
    Ok(())
}

#[tokio::test]
async fn revoking_the_edge_at_the_coordinator_denies_at_both_gateways() -> anyhow::Result<()> {
    let fleet = Fleet::start().await?;
    fleet.assert_both_allow().await;
    let resp = fleet
        .stage
        .operator(
            "PATCH",
            &format!("/zones/{ZONE}/delegations/{}/revoke", fleet.edge),
        )
        .await;
    assert_eq!(
        resp.json()?,
        json!({"revoked_edges": 1, "affected_sessions": 1, "terminated_sessions": 1})
    );
    fleet.assert_both_deny("delegation revoke").await;
    fleet.stop().await;
    Ok(())
}
