//! The admin API's plugins (`/v1/zones/{z}/plugins`) and the binding-time configuration check
//! of `PUT …/resources/{id}/plugins`, against real Postgres and Redis, with the real
//! components of `tests-fixtures`: upload checked against the world by the plugin host,
//! content addressing and live names, metadata and byte round trips, archiving guarded by the
//! bindings, and each binding's configuration checked by the plugin's own `configure`.

use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tests_harness::{
    TestDb,
    api::{ApiFixture, BOOTSTRAP_TOKEN, assert_problem},
    http::{self, HttpResponse},
};
use tokio::io::AsyncWriteExt;

/// The smallest core module: a WebAssembly module, not a component.
const CORE_MODULE: &[u8] = b"\0asm\x01\0\0\0";

/// The bytes of a component built by `tests-fixtures`.
fn component(path: &str) -> Vec<u8> {
    tests_fixtures::read(path).unwrap()
}

/// `bytes` with a custom section appended: the same component under another digest.
fn variant(bytes: &[u8], tag: &str) -> Vec<u8> {
    const NAME: &[u8] = b"caracal-test";
    let mut payload = vec![u8::try_from(NAME.len()).unwrap()];
    payload.extend_from_slice(NAME);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    let mut size = payload.len();
    loop {
        let byte = u8::try_from(size & 0x7f).unwrap();
        size >>= 7;
        if size == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(&payload);
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

struct Api {
    db: TestDb,
    api: ApiFixture,
}

impl Api {
    async fn start() -> anyhow::Result<Self> {
        let db = TestDb::migrated().await?;
        let api = ApiFixture::start(&db).await?;
        Ok(Self { db, api })
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> HttpResponse {
        self.api
            .call(BOOTSTRAP_TOKEN, method, path, body.as_ref())
            .await
            .unwrap()
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
        let resp = self.call(method, path, body).await;
        let json = resp.json().unwrap_or(Value::Null);
        assert_eq!(resp.status, status, "{method} {path}: {json}");
        json
    }

    /// `POST …/plugins?<query>` with `bytes` declared as `content_type`.
    async fn upload_as(
        &self,
        token: &str,
        zone: &str,
        query: &[(&str, &str)],
        content_type: &str,
        bytes: Vec<u8>,
    ) -> HttpResponse {
        let auth = format!("Bearer {token}");
        http::request(
            self.api.addr,
            "POST",
            &format!("/v1/zones/{zone}/plugins?{}", http::form_encode(query)),
            &[("authorization", &auth), ("content-type", content_type)],
            bytes,
        )
        .await
        .unwrap()
    }

    async fn upload(&self, zone: &str, name: &str, world: &str, bytes: Vec<u8>) -> HttpResponse {
        self.upload_as(
            BOOTSTRAP_TOKEN,
            zone,
            &[("name", name), ("world", world)],
            "application/wasm",
            bytes,
        )
        .await
    }

    /// Uploads and expects 201: the metadata.
    async fn register(&self, zone: &str, name: &str, world: &str, bytes: Vec<u8>) -> Value {
        let resp = self.upload(zone, name, world, bytes).await;
        let body = resp.json().unwrap_or(Value::Null);
        assert_eq!(resp.status, 201, "{body}");
        body
    }

    async fn zone(&self, name: &str) -> String {
        self.api.create_zone(name).await.unwrap()
    }

    /// A zone with a provider and a routable resource: `(zone, resource)`.
    async fn zone_with_resource(&self, name: &str) -> (String, String) {
        let zone = self.zone(name).await;
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

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&mut self.db.admin().await.unwrap())
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.api.stop().await;
    }
}

#[tokio::test]
async fn an_uploaded_component_is_checked_stored_and_served_back() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let zone = api.zone("Uploads").await;
    let bytes = component(tests_fixtures::EXAMPLE_REQUEST_RULES);
    let revision_before = api
        .count("SELECT version FROM caracal.gateway_binding_revision")
        .await;

    let resp = api
        .upload_as(
            BOOTSTRAP_TOKEN,
            &zone,
            &[
                ("name", "request-rules"),
                ("world", "authorizer"),
                ("description", "methods, paths & hours"),
            ],
            "application/wasm; charset=binary",
            bytes.clone(),
        )
        .await;
    let created = resp.json()?;
    assert_eq!(resp.status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let mut keys: Vec<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec![
            "archived_at",
            "component_sha256",
            "created_at",
            "description",
            "id",
            "name",
            "size_bytes",
            "wit_package",
            "world",
            "zone_id",
        ]
    );
    assert_eq!(created["zone_id"], zone.as_str());
    assert_eq!(created["name"], "request-rules");
    assert_eq!(created["world"], "authorizer");
    assert_eq!(created["wit_package"], "caracal:gateway@0.1.0");
    assert_eq!(created["component_sha256"], sha256_hex(&bytes));
    assert_eq!(created["size_bytes"], bytes.len());
    assert_eq!(created["description"], "methods, paths & hours");
    assert_eq!(created["archived_at"], Value::Null);

    // Metadata and bytes come back as registered; lists carry metadata only.
    let base = format!("/v1/zones/{zone}/plugins");
    assert_eq!(
        api.ok("GET", &format!("{base}/{id}"), None, 200).await,
        created
    );
    let listed = api.ok("GET", &base, None, 200).await;
    assert_eq!(listed, json!({"items": [created], "next_cursor": null}));
    let download = api
        .call("GET", &format!("{base}/{id}/component"), None)
        .await;
    assert_eq!(download.status, 200);
    assert_eq!(
        download.header("content-type").as_deref(),
        Some("application/wasm")
    );
    assert_eq!(download.body.as_ref(), bytes.as_slice());
    assert_problem(
        &api.call("GET", &format!("{base}/nope"), None).await,
        404,
        "plugin_not_found",
    );
    assert_problem(
        &api.call("GET", &format!("{base}/nope/component"), None)
            .await,
        404,
        "plugin_not_found",
    );

    // An injector too, with the same name in another zone.
    let other_zone = api.zone("Elsewhere").await;
    let injector = component(tests_fixtures::FIXTURE_ECHO_INJECTOR);
    let other = api
        .register(
            &other_zone,
            "request-rules",
            "credential-injector",
            injector.clone(),
        )
        .await;
    assert_eq!(other["world"], "credential-injector");
    assert_eq!(other["description"], Value::Null);
    // Another zone's plugin is not found from here.
    let other_id = other["id"].as_str().unwrap();
    assert_problem(
        &api.call("GET", &format!("{base}/{other_id}"), None).await,
        404,
        "plugin_not_found",
    );

    // The upload is audited with its metadata, never its bytes, and bumps the revision the
    // gateways watch.
    let audit: Vec<(String, i32, Value)> = sqlx::query_as(
        "SELECT action, status_code, payload_json FROM caracal.admin_audit_events \
          WHERE entity_type = 'plugin' AND entity_id = $1",
    )
    .bind(&id)
    .fetch_all(&mut api.db.admin().await?)
    .await?;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].0, format!("POST /v1/zones/{zone}/plugins"));
    assert_eq!(audit[0].1, 201);
    assert_eq!(
        audit[0].2,
        json!({"name": "request-rules", "world": "authorizer",
               "wit_package": "caracal:gateway@0.1.0", "component_sha256": sha256_hex(&bytes),
               "size_bytes": bytes.len(), "description": "methods, paths & hours"})
    );
    assert!(
        api.count("SELECT version FROM caracal.gateway_binding_revision")
            .await
            > revision_before
    );
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_same_bytes_or_a_live_name_cannot_be_registered_twice() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let zone = api.zone("Conflicts").await;
    let bytes = component(tests_fixtures::FIXTURE_ALLOW);
    let first = api
        .register(&zone, "allow", "authorizer", bytes.clone())
        .await;
    let first_id = first["id"].as_str().unwrap().to_owned();

    // The same bytes under any name: the existing row is named.
    for name in ["allow", "allow-again"] {
        let problem = assert_problem(
            &api.upload(&zone, name, "authorizer", bytes.clone()).await,
            409,
            "plugin_already_registered",
        );
        assert_eq!(problem["details"]["plugin_id"], first_id.as_str());
    }
    // Other bytes under a live name.
    let problem = assert_problem(
        &api.upload(&zone, "allow", "authorizer", variant(&bytes, "v2"))
            .await,
        409,
        "plugin_name_taken",
    );
    assert_eq!(problem["details"]["plugin_id"], first_id.as_str());
    assert_eq!(
        api.count("SELECT count(*) FROM caracal.gateway_plugins")
            .await,
        1
    );

    // Archiving frees the name, not the digest.
    api.ok(
        "DELETE",
        &format!("/v1/zones/{zone}/plugins/{first_id}"),
        None,
        204,
    )
    .await;
    let second = api
        .register(&zone, "allow", "authorizer", variant(&bytes, "v2"))
        .await;
    assert_ne!(second["id"], first["id"]);
    assert_eq!(
        second["component_sha256"],
        sha256_hex(&variant(&bytes, "v2"))
    );
    let problem = assert_problem(
        &api.upload(&zone, "allow-v1", "authorizer", bytes.clone())
            .await,
        409,
        "plugin_already_registered",
    );
    assert_eq!(problem["details"]["plugin_id"], first_id.as_str());
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn components_that_do_not_implement_their_world_are_refused_with_the_hosts_reason()
-> anyhow::Result<()> {
    let api = Api::start().await?;
    let zone = api.zone("Worlds").await;
    let authorizer = component(tests_fixtures::EXAMPLE_REQUEST_RULES);
    let injector = component(tests_fixtures::EXAMPLE_HEADER_MAPPING);
    let wrong_world = component(tests_fixtures::FIXTURE_WRONG_WORLD);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("junk", b"this is not WebAssembly".to_vec(), "authorizer"),
        ("core-module", CORE_MODULE.to_vec(), "authorizer"),
        ("empty", Vec::new(), "authorizer"),
        (
            "truncated",
            authorizer[..authorizer.len() / 2].to_vec(),
            "authorizer",
        ),
        ("authorizer-as-injector", authorizer, "credential-injector"),
        ("injector-as-authorizer", injector, "authorizer"),
        ("wrong-world", wrong_world.clone(), "authorizer"),
        ("wrong-world", wrong_world, "credential-injector"),
    ];
    for (name, bytes, world) in cases {
        let problem = assert_problem(
            &api.upload(&zone, name, world, bytes).await,
            400,
            "invalid_plugin_component",
        );
        let reason = problem["error_description"].as_str().unwrap_or_default();
        assert!(!reason.is_empty(), "{name}: {problem}");
        if name == "core-module" || name == "junk" {
            assert!(reason.contains("not a WebAssembly component"), "{problem}");
        }
        if name.contains("-as-") || name == "wrong-world" {
            assert!(
                reason.contains(&format!("does not implement world {world}")),
                "{name}: {problem}"
            );
        }
    }
    assert_eq!(
        api.count("SELECT count(*) FROM caracal.gateway_plugins")
            .await,
        0
    );
    assert_eq!(
        api.count("SELECT count(*) FROM caracal.admin_audit_events WHERE entity_type = 'plugin'")
            .await,
        0
    );
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn upload_queries_media_types_sizes_and_tokens_are_checked() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let zone = api.zone("Checks").await;
    let other_zone = api.zone("Other").await;
    let bytes = component(tests_fixtures::FIXTURE_DENY);
    let long = "d".repeat(4097);
    let queries: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("world", "authorizer")], "invalid_plugin_name"),
        (
            vec![("name", "Deny"), ("world", "authorizer")],
            "invalid_plugin_name",
        ),
        (
            vec![("name", "-deny"), ("world", "authorizer")],
            "invalid_plugin_name",
        ),
        (vec![("name", "deny")], "invalid_plugin_world"),
        (
            vec![("name", "deny"), ("world", "filter")],
            "invalid_plugin_world",
        ),
        (
            vec![
                ("name", "deny"),
                ("world", "authorizer"),
                ("description", &long),
            ],
            "invalid_plugin_description",
        ),
        (
            vec![("name", "deny"), ("world", "authorizer"), ("version", "1")],
            "invalid_query",
        ),
    ];
    for (query, code) in &queries {
        assert_problem(
            &api.upload_as(
                BOOTSTRAP_TOKEN,
                &zone,
                query,
                "application/wasm",
                bytes.clone(),
            )
            .await,
            400,
            code,
        );
    }
    let good = [("name", "deny"), ("world", "authorizer")];
    for content_type in ["application/json", "application/octet-stream"] {
        assert_problem(
            &api.upload_as(BOOTSTRAP_TOKEN, &zone, &good, content_type, bytes.clone())
                .await,
            415,
            "unsupported_media_type",
        );
    }
    // Over 32 MiB is refused before it is read; the 1 MiB limit of JSON routes does not
    // apply to components.
    let huge = vec![0u8; 32 * 1024 * 1024 + 1];
    let problem = assert_problem(
        &api.upload_as(BOOTSTRAP_TOKEN, &zone, &good, "application/wasm", huge)
            .await,
        413,
        "payload_too_large",
    );
    assert!(
        problem["message"].as_str().unwrap().contains("32 MiB"),
        "{problem}"
    );
    let padded = variant(&bytes, &"p".repeat(2 * 1024 * 1024));
    let registered = api
        .register(&zone, "padded", "authorizer", padded.clone())
        .await;
    assert_eq!(registered["size_bytes"], padded.len());
    assert_problem(
        &api.upload("unknown-zone", "deny", "authorizer", bytes.clone())
            .await,
        404,
        "zone_not_found",
    );

    // Tokens: read and approve tokens cannot upload or archive, another zone's token reaches
    // nothing here; the zone's own write token does both.
    let (read, _) = api.api.mint_token("read", None).await?;
    let (approve, _) = api.api.mint_token("approve", None).await?;
    let (own, _) = api.api.mint_token("write", Some(&zone)).await?;
    let (foreign, _) = api.api.mint_token("write", Some(&other_zone)).await?;
    for (token, code) in [
        (&read, "admin_token_read_only"),
        (&approve, "admin_token_approve_only"),
        (&foreign, "admin_token_zone_mismatch"),
    ] {
        assert_problem(
            &api.upload_as(token, &zone, &good, "application/wasm", bytes.clone())
                .await,
            403,
            code,
        );
    }
    let registered_id = registered["id"].as_str().unwrap();
    for token in [&read, &approve] {
        let got = api
            .api
            .call(
                token,
                "GET",
                &format!("/v1/zones/{zone}/plugins/{registered_id}"),
                None,
            )
            .await?;
        assert_eq!(got.status, 200);
    }
    assert_problem(
        &api.api
            .call(&foreign, "GET", &format!("/v1/zones/{zone}/plugins"), None)
            .await?,
        403,
        "admin_token_zone_mismatch",
    );
    let resp = api
        .upload_as(&own, &zone, &good, "application/wasm", bytes.clone())
        .await;
    assert_eq!(resp.status, 201);
    let actor: String = sqlx::query_scalar(
        "SELECT actor_scope FROM caracal.admin_audit_events \
          WHERE entity_type = 'plugin' AND entity_id = $1",
    )
    .bind(resp.json()?["id"].as_str().unwrap())
    .fetch_one(&mut api.db.admin().await?)
    .await?;
    assert_eq!(actor, format!("zone:{zone}"));
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_bound_plugin_cannot_be_archived_and_an_archived_one_cannot_be_bound()
-> anyhow::Result<()> {
    let api = Api::start().await?;
    let (zone, resource) = api.zone_with_resource("Archive").await;
    let bytes = component(tests_fixtures::FIXTURE_ALLOW);
    let plugin = api
        .register(&zone, "allow", "authorizer", bytes.clone())
        .await;
    let id = plugin["id"].as_str().unwrap().to_owned();
    let base = format!("/v1/zones/{zone}/plugins");
    let bindings = format!("/v1/zones/{zone}/resources/{resource}/plugins");
    let bind = json!({"bindings": [{"plugin_id": id, "hook": "authorizer", "enabled": false}]});
    api.ok("PUT", &bindings, Some(bind.clone()), 200).await;

    // Bound (even disabled): refused, naming the resources.
    let problem = assert_problem(
        &api.call("DELETE", &format!("{base}/{id}"), None).await,
        409,
        "plugin_in_use",
    );
    assert_eq!(problem["details"]["resource_ids"], json!([resource]));
    assert_eq!(
        api.ok("GET", &format!("{base}/{id}"), None, 200).await["archived_at"],
        Value::Null
    );

    // Unbound: archived, listed only on request, still downloadable, no longer bindable.
    api.ok("PUT", &bindings, Some(json!({"bindings": []})), 200)
        .await;
    let revision = api
        .count("SELECT version FROM caracal.gateway_binding_revision")
        .await;
    let deleted = api.call("DELETE", &format!("{base}/{id}"), None).await;
    assert_eq!(deleted.status, 204);
    assert!(
        api.count("SELECT version FROM caracal.gateway_binding_revision")
            .await
            > revision
    );
    let archived = api.ok("GET", &format!("{base}/{id}"), None, 200).await;
    assert!(archived["archived_at"].is_string(), "{archived}");
    assert_eq!(api.ok("GET", &base, None, 200).await["items"], json!([]));
    assert_eq!(
        api.ok("GET", &format!("{base}?status=archived"), None, 200)
            .await["items"],
        json!([archived])
    );
    assert_eq!(
        api.ok("GET", &format!("{base}?status=all"), None, 200)
            .await["items"],
        json!([archived])
    );
    assert_problem(
        &api.call("GET", &format!("{base}?status=gone"), None).await,
        400,
        "invalid_query",
    );
    let download = api
        .call("GET", &format!("{base}/{id}/component"), None)
        .await;
    assert_eq!(download.body.as_ref(), bytes.as_slice());
    let problem = assert_problem(
        &api.call("PUT", &bindings, Some(bind)).await,
        400,
        "plugin_archived",
    );
    assert_eq!(problem["details"]["index"], 0);
    assert_problem(
        &api.call("DELETE", &format!("{base}/{id}"), None).await,
        404,
        "plugin_not_found",
    );
    assert_problem(
        &api.call("DELETE", &format!("{base}/{id}?force=1"), None)
            .await,
        400,
        "invalid_query",
    );

    let audit: Vec<(String, i32)> = sqlx::query_as(
        "SELECT action, status_code FROM caracal.admin_audit_events \
          WHERE entity_type = 'plugin' ORDER BY chain_seq",
    )
    .fetch_all(&mut api.db.admin().await?)
    .await?;
    assert_eq!(
        audit,
        vec![
            (format!("POST /v1/zones/{zone}/plugins"), 201),
            (format!("DELETE /v1/zones/{zone}/plugins/{id}"), 204),
        ]
    );
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn bindings_are_refused_when_the_plugins_configure_rejects_their_config() -> anyhow::Result<()>
{
    let api = Api::start().await?;
    let (zone, resource) = api.zone_with_resource("Configs").await;
    let rules = api
        .register(
            &zone,
            "request-rules",
            "authorizer",
            component(tests_fixtures::EXAMPLE_REQUEST_RULES),
        )
        .await;
    let rules = rules["id"].as_str().unwrap().to_owned();
    let allow = api
        .register(
            &zone,
            "allow",
            "authorizer",
            component(tests_fixtures::FIXTURE_ALLOW),
        )
        .await;
    let allow = allow["id"].as_str().unwrap().to_owned();
    let echo = api
        .register(
            &zone,
            "echo",
            "credential-injector",
            component(tests_fixtures::FIXTURE_ECHO_INJECTOR),
        )
        .await;
    let echo = echo["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/zones/{zone}/resources/{resource}/plugins");
    let with_rules = |config: Value| {
        json!({"bindings": [
            {"plugin_id": allow, "hook": "authorizer"},
            {"plugin_id": rules, "hook": "authorizer", "config": config, "enabled": false},
        ]})
    };

    // The plugin's own message is the description; the index names the binding.
    let cases: [(Value, &str); 3] = [
        (
            json!({"hours_utc": {"from": 30, "to": 18}}),
            "hours_utc.from must be 0 to 23, got 30",
        ),
        (
            json!({"methods": ["GET"], "colour": "red"}),
            "unknown field `colour`",
        ),
        (json!({"hours_utc": {"from": 30}}), "missing field `to`"),
    ];
    for (config, message) in cases {
        let problem = assert_problem(
            &api.call("PUT", &path, Some(with_rules(config.clone())))
                .await,
            400,
            "invalid_plugin_config",
        );
        assert_eq!(problem["details"]["index"], 1, "{problem}");
        let description = problem["error_description"].as_str().unwrap_or_default();
        assert!(description.contains(message), "{config}: {problem}");
        assert!(
            problem["message"]
                .as_str()
                .unwrap()
                .contains("request-rules"),
            "{problem}"
        );
    }
    assert_eq!(
        api.ok("GET", &path, None, 200).await["bindings"],
        json!([]),
        "a refused PUT bound something"
    );

    // Good configurations bind; repeating the PUT (compiled plugins cached) gives the same.
    let good = json!({"bindings": [
        {"plugin_id": rules, "hook": "authorizer",
         "config": {"methods": ["GET"], "hours_utc": {"from": 8, "to": 18}}},
        {"plugin_id": echo, "hook": "injector", "config": {"digest": true}},
    ]});
    let bound = api.ok("PUT", &path, Some(good.clone()), 200).await;
    assert_eq!(bound["bindings"].as_array().unwrap().len(), 2);
    assert_eq!(api.ok("PUT", &path, Some(good), 200).await, bound);
    let problem = assert_problem(
        &api.call(
            "PUT",
            &path,
            Some(json!({"bindings": [
                {"plugin_id": echo, "hook": "injector", "config": {"digest": "yes"}},
            ]})),
        )
        .await,
        400,
        "invalid_plugin_config",
    );
    assert_eq!(problem["details"]["index"], 0);

    // A configure that cannot run within the binding's limits is refused with its cause: one
    // 64 KiB page is less than the component needs to instantiate.
    let problem = assert_problem(
        &api.call(
            "PUT",
            &path,
            Some(json!({"bindings": [
                {"plugin_id": allow, "hook": "authorizer", "memory_limit_bytes": 65536},
            ]})),
        )
        .await,
        400,
        "invalid_plugin_config",
    );
    assert_eq!(problem["details"]["index"], 0);
    assert!(
        problem["error_description"]
            .as_str()
            .unwrap()
            .starts_with("memory_limit: "),
        "{problem}"
    );
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("allow failed"),
        "{problem}"
    );

    // A stored component that no longer loads (written behind the API's back) fails closed.
    let junk = format!("plg-{}", uuid::Uuid::now_v7());
    sqlx::query(
        "INSERT INTO caracal.gateway_plugins (id, zone_id, name, world, component_sha256, component) \
         VALUES ($1, $2, 'junk', 'authorizer', sha256($3), $3)",
    )
    .bind(&junk)
    .bind(&zone)
    .bind(b"not a component".as_slice())
    .execute(&mut api.db.admin().await?)
    .await?;
    let problem = assert_problem(
        &api.call(
            "PUT",
            &path,
            Some(json!({"bindings": [{"plugin_id": junk, "hook": "authorizer"}]})),
        )
        .await,
        400,
        "invalid_plugin_component",
    );
    assert_eq!(problem["details"]["index"], 0);
    assert_eq!(api.ok("GET", &path, None, 200).await, bound);
    api.stop().await;
    Ok(())
}

/// Uploads are buffered in memory, so only a few are read at once: while every slot is held
/// by a sender that has not finished its body, another upload is shed with 503, and a slot is
/// free again once its sender goes away. JSON routes are not affected.
#[tokio::test]
async fn uploads_beyond_the_concurrent_slots_are_shed_until_one_is_free() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let zone = api.zone("Slots").await;
    let mut held = Vec::new();
    for _ in 0..control_api::state::MAX_UPLOADS {
        let mut stream = tokio::net::TcpStream::connect(api.api.addr).await?;
        let head = format!(
            "POST /v1/zones/{zone}/plugins?name=slow&world=authorizer HTTP/1.1\r\n\
             host: {}\r\nauthorization: Bearer {BOOTSTRAP_TOKEN}\r\n\
             content-type: application/wasm\r\ncontent-length: 100000\r\n\r\n\0asm",
            api.api.addr
        );
        stream.write_all(head.as_bytes()).await?;
        held.push(stream);
    }
    // The held requests take their slots as the server gets to them; junk uploads that got a
    // slot are refused for their bytes and store nothing.
    let mut shed = None;
    for _ in 0..100 {
        let resp = api
            .upload(&zone, "junk", "authorizer", b"junk".to_vec())
            .await;
        if resp.status == 503 {
            shed = Some(resp);
            break;
        }
        assert_problem(&resp, 400, "invalid_plugin_component");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shed = shed.expect("no upload was shed while every slot was held");
    assert_problem(&shed, 503, "too_many_uploads");
    api.ok("GET", &format!("/v1/zones/{zone}/plugins"), None, 200)
        .await;

    drop(held);
    let bytes = component(tests_fixtures::FIXTURE_DENY);
    let mut registered = false;
    for _ in 0..100 {
        let resp = api.upload(&zone, "deny", "authorizer", bytes.clone()).await;
        if resp.status == 201 {
            registered = true;
            break;
        }
        assert_problem(&resp, 503, "too_many_uploads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(registered, "the slots were not freed");
    assert_eq!(
        api.count("SELECT count(*) FROM caracal.gateway_plugins")
            .await,
        1
    );
    api.stop().await;
    Ok(())
}
