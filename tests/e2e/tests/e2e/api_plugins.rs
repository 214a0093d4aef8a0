//! The admin API's resource plugin bindings (`/v1/zones/{z}/resources/{id}/plugins`) against
//! real Postgres and Redis: ordered replacement, kept binding ids, every refusal code, tokens
//! and zones, the admin audit row (configuration key names only), and the binding revision
//! bump whose invalidation the woken dispatcher publishes. Plugins are inserted directly (real
//! components, since a PUT runs each plugin's `configure`); their upload is tested in
//! `plugins_admin`.

use std::sync::Mutex;

use serde_json::{Value, json};
use tests_harness::{
    TestDb,
    api::{ApiFixture, BOOTSTRAP_TOKEN, assert_problem},
    http::HttpResponse,
};

/// Configuration values these tests submit; none may appear in the admin audit log.
const CONFIG_VALUES: [&str; 2] = ["cfg-value-0123456789", "cfg-other-value-0123456789"];

/// The API with every response body kept for the final leak checks.
struct Api {
    db: TestDb,
    api: ApiFixture,
    bodies: Mutex<Vec<String>>,
}

impl Api {
    async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    async fn start_with(overrides: &[(&str, &str)]) -> anyhow::Result<Self> {
        let db = TestDb::migrated().await?;
        let api = ApiFixture::start_with(&db, overrides).await?;
        Ok(Self {
            db,
            api,
            bodies: Mutex::new(Vec::new()),
        })
    }

    async fn call_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> HttpResponse {
        let resp = self
            .api
            .call(token, method, path, body.as_ref())
            .await
            .unwrap();
        self.bodies
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&resp.body).into_owned());
        resp
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> HttpResponse {
        self.call_as(BOOTSTRAP_TOKEN, method, path, body).await
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
        let resp = self.call(method, path, body).await;
        let json = resp.json().unwrap_or(Value::Null);
        assert_eq!(resp.status, status, "{method} {path}: {json}");
        json
    }

    /// A zone with a provider and a routable resource: `(zone, resource)`.
    async fn zone_with_resource(&self, name: &str) -> (String, String) {
        let zone = self
            .ok("POST", "/v1/zones", Some(json!({"name": name})), 201)
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let provider = self
            .ok(
                "POST",
                &format!("/v1/zones/{zone}/providers"),
                Some(json!({"name": "echo", "identifier": "provider://echo", "kind": "none"})),
                201,
            )
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let resource = self
            .ok(
                "POST",
                &format!("/v1/zones/{zone}/resources"),
                Some(
                    json!({"name": "crm", "upstream_url": "http://127.0.0.1:9000",
                            "scopes": ["read"], "credential_provider_id": provider}),
                ),
                201,
            )
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        (zone, resource)
    }

    /// Inserts a plugin of `world` into `zone`: a real component (bindings run its
    /// `configure`), `fixture-allow` or `fixture-echo-injector`, with a custom section naming
    /// the row so that every row has its own digest.
    async fn plugin(&self, zone: &str, name: &str, world: &str, archived: bool) -> String {
        let id = format!("plg-{}", uuid::Uuid::now_v7());
        let path = match world {
            "authorizer" => tests_fixtures::FIXTURE_ALLOW,
            _ => tests_fixtures::FIXTURE_ECHO_INJECTOR,
        };
        let mut component = tests_fixtures::read(path).unwrap();
        // Custom section (id 0): size, then the name `caracal-test` and the row id as payload.
        let mut section = vec![12u8];
        section.extend_from_slice(b"caracal-test");
        section.extend_from_slice(id.as_bytes());
        component.push(0);
        component.push(u8::try_from(section.len()).unwrap());
        component.extend_from_slice(&section);
        sqlx::query(
            "INSERT INTO caracal.gateway_plugins \
               (id, zone_id, name, world, component_sha256, component, archived_at) \
             VALUES ($1, $2, $3, $4, sha256($5), $5, CASE WHEN $6 THEN now() END)",
        )
        .bind(&id)
        .bind(zone)
        .bind(name)
        .bind(world)
        .bind(&component)
        .bind(archived)
        .execute(&mut self.db.admin().await.unwrap())
        .await
        .unwrap();
        id
    }

    /// Asserts no minted token appears in any response so far, and no configuration value
    /// in the admin audit log.
    async fn assert_nothing_leaked(&self, tokens: &[&str]) -> anyhow::Result<()> {
        let bodies = self.bodies.lock().unwrap().clone();
        assert!(!bodies.is_empty());
        for body in &bodies {
            for token in tokens {
                assert!(!body.contains(token), "a response carried a token: {body}");
            }
        }
        let payloads: Vec<String> =
            sqlx::query_scalar("SELECT payload_json::text FROM caracal.admin_audit_events")
                .fetch_all(&mut self.db.admin().await?)
                .await?;
        for payload in payloads {
            for value in CONFIG_VALUES {
                assert!(
                    !payload.contains(value),
                    "an audit payload carried a configuration value: {payload}"
                );
            }
        }
        Ok(())
    }

    async fn stop(self) {
        self.api.stop().await;
    }
}

async fn revision(db: &TestDb) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT version FROM caracal.gateway_binding_revision")
            .fetch_one(&mut db.admin().await?)
            .await?,
    )
}

/// The invalidation rows of versions `after + 1 ..= upto`: `(id, producer, payload)`.
async fn invalidations(
    db: &TestDb,
    after: i64,
    upto: i64,
) -> anyhow::Result<Vec<(String, String, Value)>> {
    let keys: Vec<String> = (after + 1..=upto)
        .map(|v| format!("bindings:{v}"))
        .collect();
    Ok(sqlx::query_as(
        "SELECT id, producer, payload_json FROM caracal.event_outbox \
          WHERE topic = 'caracal.gateway.bindings.invalidate' AND dedupe_key = ANY($1) \
          ORDER BY split_part(dedupe_key, ':', 2)::bigint",
    )
    .bind(&keys)
    .fetch_all(&mut db.admin().await?)
    .await?)
}

/// Waits (at most 5 s) until the outbox row `id` is published.
async fn wait_published(db: &TestDb, id: &str) -> anyhow::Result<()> {
    for _ in 0..50 {
        let status: String =
            sqlx::query_scalar("SELECT status FROM caracal.event_outbox WHERE id = $1")
                .bind(id)
                .fetch_one(&mut db.admin().await?)
                .await?;
        assert_ne!(status, "dead", "the invalidation went dead");
        if status == "published" {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("outbox row {id} was not published")
}

/// Whether a recent entry of the bindings invalidation stream carries `outbox_id`.
async fn streamed(outbox_id: &str) -> anyhow::Result<bool> {
    let mut conn = redis::Client::open(tests_harness::sts::redis_url())?
        .get_multiplexed_async_connection()
        .await?;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(control_events::streams::GATEWAY_BINDINGS_INVALIDATE)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(2000)
        .query_async(&mut conn)
        .await?;
    Ok(reply.ids.iter().any(|entry| {
        entry
            .map
            .get("outbox_id")
            .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
            .as_deref()
            == Some(outbox_id)
    }))
}

/// `(plugin_id, hook, position, mode)` of each binding of an answer, in order.
fn summary(answer: &Value) -> Vec<(String, String, i64, Value)> {
    answer["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["plugin_id"].as_str().unwrap().to_owned(),
                b["hook"].as_str().unwrap().to_owned(),
                b["position"].as_i64().unwrap(),
                b["mode"].clone(),
            )
        })
        .collect()
}

/// The binding of `plugin` in an answer.
fn binding_of<'a>(answer: &'a Value, plugin: &str) -> &'a Value {
    answer["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["plugin_id"] == plugin)
        .unwrap()
}

#[tokio::test]
async fn bindings_replace_the_ordered_list_and_keep_ids_while_a_plugin_stays_bound()
-> anyhow::Result<()> {
    let api = Api::start().await?;
    let (zone, resource) = api.zone_with_resource("Plugins").await;
    let a1 = api.plugin(&zone, "method-guard", "authorizer", false).await;
    let a2 = api.plugin(&zone, "time-window", "authorizer", false).await;
    let i1 = api
        .plugin(&zone, "hmac-signer", "credential-injector", false)
        .await;
    let i2 = api
        .plugin(&zone, "trace-header", "credential-injector", false)
        .await;
    let path = format!("/v1/zones/{zone}/resources/{resource}/plugins");

    let empty = api.ok("GET", &path, None, 200).await;
    assert_eq!(empty, json!({"resource_id": resource, "bindings": []}));

    // Interleaved hooks: positions count within each hook; the answer lists authorizers
    // first, then injectors.
    let first = api
        .ok(
            "PUT",
            &path,
            Some(json!({"bindings": [
                {"plugin_id": a1, "hook": "authorizer"},
                {"plugin_id": i1, "hook": "injector", "mode": "replace",
                 "config": {"digest": true}},
                {"plugin_id": a2, "hook": "authorizer",
                 "config": {"key_ref": CONFIG_VALUES[0], "window": CONFIG_VALUES[1]},
                 "deadline_ms": 1000, "memory_limit_bytes": 4194304, "enabled": false},
                {"plugin_id": i2, "hook": "injector"},
            ]})),
            200,
        )
        .await;
    assert_eq!(first["resource_id"], resource.as_str());
    assert_eq!(
        summary(&first),
        vec![
            (a1.clone(), "authorizer".to_owned(), 0, Value::Null),
            (a2.clone(), "authorizer".to_owned(), 1, Value::Null),
            (i1.clone(), "injector".to_owned(), 0, json!("replace")),
            (i2.clone(), "injector".to_owned(), 1, json!("augment")),
        ]
    );
    let b_a1 = binding_of(&first, &a1);
    assert_eq!(b_a1["plugin_name"], "method-guard");
    assert_eq!(b_a1["world"], "authorizer");
    assert_eq!(b_a1["config"], json!({}));
    assert_eq!(b_a1["deadline_ms"], 5);
    assert_eq!(b_a1["memory_limit_bytes"], 16_777_216);
    assert_eq!(b_a1["enabled"], true);
    let mut keys: Vec<&str> = b_a1
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec![
            "config",
            "created_at",
            "deadline_ms",
            "enabled",
            "hook",
            "id",
            "memory_limit_bytes",
            "mode",
            "plugin_id",
            "plugin_name",
            "position",
            "updated_at",
            "world",
        ]
    );
    let b_a2 = binding_of(&first, &a2);
    assert_eq!(
        b_a2["config"],
        json!({"key_ref": CONFIG_VALUES[0], "window": CONFIG_VALUES[1]})
    );
    assert_eq!(
        (
            &b_a2["deadline_ms"],
            &b_a2["memory_limit_bytes"],
            &b_a2["enabled"]
        ),
        (&json!(1000), &json!(4_194_304), &json!(false))
    );
    assert_eq!(binding_of(&first, &i1)["world"], "credential-injector");
    assert_eq!(api.ok("GET", &path, None, 200).await, first);

    // Reorder the authorizers, keep the replace injector as it was, drop the other one:
    // bindings of plugins that stay keep their ids and creation times; an unchanged binding
    // keeps its last change too.
    let second = api
        .ok(
            "PUT",
            &path,
            Some(json!({"bindings": [
                {"plugin_id": i1, "hook": "injector", "mode": "replace",
                 "config": {"digest": true}},
                {"plugin_id": a2, "hook": "authorizer",
                 "config": {"key_ref": CONFIG_VALUES[0], "window": CONFIG_VALUES[1]},
                 "deadline_ms": 1000, "memory_limit_bytes": 4194304, "enabled": false},
                {"plugin_id": a1, "hook": "authorizer", "enabled": true},
            ]})),
            200,
        )
        .await;
    assert_eq!(
        summary(&second),
        vec![
            (a2.clone(), "authorizer".to_owned(), 0, Value::Null),
            (a1.clone(), "authorizer".to_owned(), 1, Value::Null),
            (i1.clone(), "injector".to_owned(), 0, json!("replace")),
        ]
    );
    for plugin in [&a1, &a2, &i1] {
        let (before, after) = (binding_of(&first, plugin), binding_of(&second, plugin));
        assert_eq!(before["id"], after["id"], "{plugin}");
        assert_eq!(before["created_at"], after["created_at"], "{plugin}");
    }
    assert_eq!(binding_of(&first, &i1), binding_of(&second, &i1));
    assert_ne!(
        binding_of(&first, &a1)["updated_at"],
        binding_of(&second, &a1)["updated_at"]
    );
    assert_eq!(api.ok("GET", &path, None, 200).await, second);

    // Unbinding and binding again makes a new binding.
    let third = api
        .ok(
            "PUT",
            &path,
            Some(json!({"bindings": [{"plugin_id": i2, "hook": "injector", "mode": "augment"}]})),
            200,
        )
        .await;
    assert_eq!(
        summary(&third),
        vec![(i2.clone(), "injector".to_owned(), 0, json!("augment"))]
    );
    assert_ne!(binding_of(&third, &i2)["id"], binding_of(&first, &i2)["id"]);

    // The empty list removes everything.
    let cleared = api
        .ok("PUT", &path, Some(json!({"bindings": []})), 200)
        .await;
    assert_eq!(cleared, json!({"resource_id": resource, "bindings": []}));
    assert_eq!(api.ok("GET", &path, None, 200).await, cleared);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM caracal.resource_plugin_bindings")
        .fetch_one(&mut api.db.admin().await?)
        .await?;
    assert_eq!(stored, 0);

    // One audit row per PUT, with ids, hooks, positions and config key names, no values.
    let audit: Vec<(String, Option<String>, i32, Value)> = sqlx::query_as(
        "SELECT action, entity_id, status_code, payload_json FROM caracal.admin_audit_events \
          WHERE entity_type = 'resource_plugin_bindings' ORDER BY chain_seq",
    )
    .fetch_all(&mut api.db.admin().await?)
    .await?;
    assert_eq!(audit.len(), 4);
    for (action, entity, status, _) in &audit {
        assert_eq!(action, &format!("PUT {path}"));
        assert_eq!(entity.as_deref(), Some(resource.as_str()));
        assert_eq!(*status, 200);
    }
    let payload = &audit[0].3;
    assert_eq!(payload["resource_id"], resource.as_str());
    assert_eq!(
        payload["bindings"][1],
        json!({"plugin_id": i1, "hook": "injector", "position": 0, "mode": "replace",
               "deadline_ms": 5, "memory_limit_bytes": 16_777_216, "enabled": true,
               "config_keys": ["digest"]})
    );
    assert_eq!(audit[1].3["removed_plugin_ids"], json!([i2]));
    assert_eq!(audit[3].3["removed_plugin_ids"], json!([i2]));
    api.assert_nothing_leaked(&[]).await?;
    api.stop().await;
    Ok(())
}

/// The revision trigger does the bump and enqueues the invalidation in the PUT's own
/// transaction; the handler wakes the dispatcher, which publishes it long before its
/// fallback poll (set to a minute here) would.
#[tokio::test]
async fn every_put_bumps_the_revision_and_the_woken_dispatcher_publishes_it() -> anyhow::Result<()>
{
    let api = Api::start_with(&[("OUTBOX_POLL_MS", "60000")]).await?;
    let (zone, resource) = api.zone_with_resource("Revisions").await;
    let plugin = api.plugin(&zone, "guard", "authorizer", false).await;
    let path = format!("/v1/zones/{zone}/resources/{resource}/plugins");
    for body in [
        json!({"bindings": [{"plugin_id": plugin, "hook": "authorizer"}]}),
        json!({"bindings": [{"plugin_id": plugin, "hook": "authorizer", "enabled": false}]}),
        json!({"bindings": []}),
        json!({"bindings": []}),
    ] {
        let before = revision(&api.db).await?;
        api.ok("PUT", &path, Some(body.clone()), 200).await;
        let after = revision(&api.db).await?;
        assert!(after > before, "{body}: revision {before} -> {after}");
        let rows = invalidations(&api.db, before, after).await?;
        assert_eq!(rows.len(), usize::try_from(after - before)?, "{body}");
        for (id, producer, payload) in &rows {
            assert_eq!(producer, "api");
            assert_eq!(payload["zone_id"], "*");
            wait_published(&api.db, id).await?;
        }
        let (last, _, payload) = rows.last().unwrap();
        assert_eq!(payload["revision"], after.to_string());
        assert!(
            streamed(last).await?,
            "outbox row {last} is not on the stream"
        );
    }
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn every_refusal_has_its_code_and_changes_nothing() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let (zone, resource) = api.zone_with_resource("Refusals").await;
    let (other_zone, other_resource) = api.zone_with_resource("Elsewhere").await;
    let auth = api.plugin(&zone, "guard", "authorizer", false).await;
    let auth2 = api.plugin(&zone, "guard-two", "authorizer", false).await;
    let inj = api
        .plugin(&zone, "signer", "credential-injector", false)
        .await;
    let inj2 = api
        .plugin(&zone, "signer-two", "credential-injector", false)
        .await;
    let archived = api.plugin(&zone, "old-guard", "authorizer", true).await;
    let foreign = api
        .plugin(&other_zone, "foreign", "authorizer", false)
        .await;
    let path = format!("/v1/zones/{zone}/resources/{resource}/plugins");
    let kept = api
        .ok(
            "PUT",
            &path,
            Some(json!({"bindings": [{"plugin_id": auth, "hook": "authorizer"}]})),
            200,
        )
        .await;
    let before = revision(&api.db).await?;

    let a = |id: &str| json!({"plugin_id": id, "hook": "authorizer"});
    let many: Vec<Value> = (0..17).map(|i| a(&format!("p{i}"))).collect();
    let many_injectors: Vec<Value> = (0..5)
        .map(|i| json!({"plugin_id": format!("p{i}"), "hook": "injector"}))
        .collect();
    let too_long: Vec<Value> = (0..21).map(|i| a(&format!("p{i}"))).collect();
    // Small as sent, large as stored: Postgres writes each 1e300 out in full.
    let expanding = json!({"values": vec![json!(1e300); 250]});
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({}), 400, "invalid_body"),
        (json!({"bindings": {}}), 400, "invalid_body"),
        (json!({"bindings": [], "extra": 1}), 400, "invalid_body"),
        (
            json!({"bindings": [{"plugin_id": auth, "hook": "authorizer", "order": 1}]}),
            400,
            "invalid_body",
        ),
        (
            json!({"bindings": [{"hook": "authorizer"}]}),
            400,
            "invalid_body",
        ),
        (
            json!({"bindings": [{"plugin_id": "", "hook": "authorizer"}]}),
            400,
            "invalid_body",
        ),
        (
            json!({"bindings": [{"plugin_id": auth, "hook": "authorizer", "deadline_ms": "5"}]}),
            400,
            "invalid_body",
        ),
        (
            json!({"bindings": [{"plugin_id": auth, "hook": "outbound"}]}),
            400,
            "invalid_plugin_hook",
        ),
        (
            json!({"bindings": [{"plugin_id": auth, "hook": "authorizer", "mode": "augment"}]}),
            400,
            "invalid_plugin_mode",
        ),
        (
            json!({"bindings": [{"plugin_id": inj, "hook": "injector", "mode": "prepend"}]}),
            400,
            "invalid_plugin_mode",
        ),
        (
            json!({"bindings": [{"plugin_id": auth, "hook": "authorizer", "deadline_ms": 0}]}),
            400,
            "invalid_plugin_limits",
        ),
        (
            json!({"bindings": [{"plugin_id": auth, "hook": "authorizer", "deadline_ms": 1001}]}),
            400,
            "invalid_plugin_limits",
        ),
        (
            json!({"bindings": [{"plugin_id": auth, "hook": "authorizer", "memory_limit_bytes": 1024}]}),
            400,
            "invalid_plugin_limits",
        ),
        (
            json!({"bindings": [{"plugin_id": auth, "hook": "authorizer", "memory_limit_bytes": 2_147_483_648_i64}]}),
            400,
            "invalid_plugin_limits",
        ),
        (
            json!({"bindings": [{"plugin_id": auth, "hook": "authorizer", "config": [1]}]}),
            400,
            "invalid_plugin_config",
        ),
        (
            json!({"bindings": [{"plugin_id": auth, "hook": "authorizer", "config": "k=v"}]}),
            400,
            "invalid_plugin_config",
        ),
        (
            json!({"bindings": [{"plugin_id": auth, "hook": "authorizer", "config": {"k": "x".repeat(65_536)}}]}),
            400,
            "invalid_plugin_config",
        ),
        (
            json!({"bindings": [{"plugin_id": auth, "hook": "authorizer", "config": expanding}]}),
            400,
            "invalid_plugin_config",
        ),
        (
            json!({"bindings": [a(&auth), a(&auth)]}),
            400,
            "duplicate_plugin_binding",
        ),
        (json!({"bindings": many}), 400, "too_many_plugin_bindings"),
        (
            json!({"bindings": many_injectors}),
            400,
            "too_many_plugin_bindings",
        ),
        (
            json!({"bindings": too_long}),
            400,
            "too_many_plugin_bindings",
        ),
        (
            json!({"bindings": [{"plugin_id": inj, "hook": "injector", "mode": "replace"},
                                {"plugin_id": inj2, "hook": "injector", "mode": "replace"}]}),
            400,
            "multiple_replace_injectors",
        ),
        (
            json!({"bindings": [a(&auth2), a(&archived)]}),
            400,
            "plugin_archived",
        ),
        (json!({"bindings": [a(&inj)]}), 400, "plugin_hook_mismatch"),
        (
            json!({"bindings": [{"plugin_id": auth, "hook": "injector"}]}),
            400,
            "plugin_hook_mismatch",
        ),
        (
            json!({"bindings": [a(&auth2), a("plg-unknown")]}),
            404,
            "plugin_not_found",
        ),
        (json!({"bindings": [a(&foreign)]}), 404, "plugin_not_found"),
    ];
    for (body, status, code) in &cases {
        let resp = api.call("PUT", &path, Some(body.clone())).await;
        let problem = assert_problem(&resp, *status, code);
        if code.starts_with("plugin_") || code.starts_with("invalid_plugin") {
            assert!(problem["details"]["index"].is_u64(), "{problem}");
        }
    }
    // The index points at the offending entry; the submitted id is not echoed.
    let unknown = api
        .call(
            "PUT",
            &path,
            Some(json!({"bindings": [a(&auth2), a("plg-unknown-echo")]})),
        )
        .await;
    let problem = assert_problem(&unknown, 404, "plugin_not_found");
    assert_eq!(problem["details"]["index"], 1);
    assert!(
        !problem.to_string().contains("plg-unknown-echo"),
        "{problem}"
    );

    // Paths: zone, resource (unknown, of another zone, archived), query parameters.
    let valid = json!({"bindings": []});
    let paths: Vec<(String, u16, &str)> = vec![
        (
            format!("/v1/zones/nope/resources/{resource}/plugins"),
            404,
            "zone_not_found",
        ),
        (
            format!("/v1/zones/{zone}/resources/nope/plugins"),
            404,
            "resource_not_found",
        ),
        (
            format!("/v1/zones/{zone}/resources/{other_resource}/plugins"),
            404,
            "resource_not_found",
        ),
        (format!("{path}?limit=5"), 400, "invalid_query"),
    ];
    for (p, status, code) in &paths {
        assert_problem(&api.call("GET", p, None).await, *status, code);
        assert_problem(
            &api.call("PUT", p, Some(valid.clone())).await,
            *status,
            code,
        );
    }
    assert_eq!(api.ok("GET", &path, None, 200).await, kept);
    assert_eq!(
        revision(&api.db).await?,
        before,
        "a refused PUT changed the revision"
    );
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM caracal.admin_audit_events WHERE entity_type = 'resource_plugin_bindings'",
    )
    .fetch_one(&mut api.db.admin().await?)
    .await?;
    assert_eq!(audited, 1);

    // An archived resource's bindings are out of reach.
    api.ok(
        "DELETE",
        &format!("/v1/zones/{zone}/resources/{resource}"),
        None,
        204,
    )
    .await;
    assert_problem(
        &api.call("GET", &path, None).await,
        404,
        "resource_not_found",
    );
    assert_problem(
        &api.call("PUT", &path, Some(valid)).await,
        404,
        "resource_not_found",
    );
    api.assert_nothing_leaked(&[]).await?;
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn read_and_approve_tokens_and_other_zones_are_refused() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let (zone, resource) = api.zone_with_resource("Tokens").await;
    let (other_zone, _) = api.zone_with_resource("Other").await;
    let plugin = api.plugin(&zone, "guard", "authorizer", false).await;
    let path = format!("/v1/zones/{zone}/resources/{resource}/plugins");
    let body = json!({"bindings": [{"plugin_id": plugin, "hook": "authorizer"}]});
    let (read, _) = api.api.mint_token("read", None).await?;
    let (approve, _) = api.api.mint_token("approve", None).await?;
    let (own, _) = api.api.mint_token("write", Some(&zone)).await?;
    let (foreign_write, _) = api.api.mint_token("write", Some(&other_zone)).await?;
    let (foreign_read, _) = api.api.mint_token("read", Some(&other_zone)).await?;

    assert_problem(
        &api.call_as(&read, "PUT", &path, Some(body.clone())).await,
        403,
        "admin_token_read_only",
    );
    assert_problem(
        &api.call_as(&approve, "PUT", &path, Some(body.clone()))
            .await,
        403,
        "admin_token_approve_only",
    );
    // Another zone's tokens: the write token is refused for the zone, the read token reads
    // nothing there (and its PUT fails on capability first).
    assert_problem(
        &api.call_as(&foreign_write, "PUT", &path, Some(body.clone()))
            .await,
        403,
        "admin_token_zone_mismatch",
    );
    for token in [&foreign_write, &foreign_read] {
        assert_problem(
            &api.call_as(token, "GET", &path, None).await,
            403,
            "admin_token_zone_mismatch",
        );
    }
    assert_problem(
        &api.call_as(&foreign_read, "PUT", &path, Some(body.clone()))
            .await,
        403,
        "admin_token_read_only",
    );
    assert_eq!(
        api.ok("GET", &path, None, 200).await["bindings"],
        json!([]),
        "a refused PUT bound something"
    );

    // The zone's own write token changes, read and approve tokens read.
    let put = api.call_as(&own, "PUT", &path, Some(body)).await;
    assert_eq!(put.status, 200);
    let put = put.json()?;
    for token in [&read, &approve, &own] {
        let got = api.call_as(token, "GET", &path, None).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.json()?, put);
    }
    let actor: String = sqlx::query_scalar(
        "SELECT actor_scope FROM caracal.admin_audit_events WHERE entity_type = 'resource_plugin_bindings'",
    )
    .fetch_one(&mut api.db.admin().await?)
    .await?;
    assert_eq!(actor, format!("zone:{zone}"));
    api.assert_nothing_leaked(&[
        &read,
        &approve,
        &own,
        &foreign_write,
        &foreign_read,
        BOOTSTRAP_TOKEN,
    ])
    .await?;
    api.stop().await;
    Ok(())
}

/// Archiving a resource removes its plugin hooks with its binding and rate limit.
#[tokio::test]
async fn archiving_a_resource_removes_its_plugin_bindings() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let (zone, resource) = api.zone_with_resource("Archived").await;
    let plugin = api.plugin(&zone, "guard", "authorizer", false).await;
    let path = format!("/v1/zones/{zone}/resources/{resource}/plugins");
    api.ok(
        "PUT",
        &path,
        Some(json!({"bindings": [{"plugin_id": plugin, "hook": "authorizer"}]})),
        200,
    )
    .await;
    let deleted = api
        .call(
            "DELETE",
            &format!("/v1/zones/{zone}/resources/{resource}"),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204);
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM caracal.resource_plugin_bindings WHERE resource_id = $1",
    )
    .bind(&resource)
    .fetch_one(&mut api.db.admin().await?)
    .await?;
    assert_eq!(left, 0);
    api.stop().await;
    Ok(())
}
