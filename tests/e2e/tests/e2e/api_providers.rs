//! The admin API's providers and resources areas against real Postgres and Redis
//! (wire-contract §6.3, authority §7.1): secrets sealed under `ZONE_KEK` and never returned,
//! PATCH keeping sealed keys it is not given, the resource rules of §6.3, rows echoing
//! stored values verbatim, gateway bindings, and the binding revision bump with its outbox
//! row.

use std::sync::Mutex;
use tests_harness::api::assert_problem;

use control_crypto::{Kek, KekRing, SealContext};
use serde_json::{Value, json};
use tests_harness::{TestDb, api::ApiFixture, http::HttpResponse};

/// Secret values these tests submit; none may come back in any response body.
const SECRETS: [&str; 6] = [
    "sk-live-first-0123456789",
    "sk-live-second-0123456789",
    "bearer-value-0123456789",
    "client-secret-0123456789",
    "basic-password-0123456789",
    "misplaced-secret-0123456789",
];

/// The fixture's `ZONE_KEK`.
fn kek() -> KekRing {
    KekRing::new(Kek::from_hex(&"7a".repeat(32)).unwrap(), None).unwrap()
}

/// The API with every response body kept for the final secrets check.
struct Api {
    db: TestDb,
    api: ApiFixture,
    bodies: Mutex<Vec<String>>,
}

impl Api {
    async fn start() -> anyhow::Result<Self> {
        let db = TestDb::migrated().await?;
        let api = ApiFixture::start(&db).await?;
        Ok(Self {
            db,
            api,
            bodies: Mutex::new(Vec::new()),
        })
    }

    fn db(&self) -> &TestDb {
        &self.db
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> HttpResponse {
        let resp = self.api.admin(method, path, body.as_ref()).await.unwrap();
        self.bodies
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&resp.body).into_owned());
        resp
    }

    async fn ok(&self, method: &str, path: &str, body: Value, status: u16) -> Value {
        let resp = self.call(method, path, Some(body)).await;
        let json = resp.json().unwrap_or(Value::Null);
        assert_eq!(resp.status, status, "{method} {path}: {json}");
        json
    }

    async fn zone(&self, name: &str) -> String {
        self.ok("POST", "/v1/zones", json!({"name": name}), 201)
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Asserts no submitted secret appears in any response so far, nor in the admin audit.
    async fn assert_no_secret_leaked(&self) -> anyhow::Result<()> {
        let bodies = self.bodies.lock().unwrap().clone();
        assert!(!bodies.is_empty());
        for body in &bodies {
            for secret in SECRETS {
                assert!(
                    !body.contains(secret),
                    "a response carried a secret: {body}"
                );
            }
        }
        let payloads: Vec<String> =
            sqlx::query_scalar("SELECT payload_json::text FROM caracal.admin_audit_events")
                .fetch_all(&mut self.db().admin().await?)
                .await?;
        for payload in payloads {
            for secret in SECRETS {
                assert!(
                    !payload.contains(secret),
                    "an audit payload carried a secret: {payload}"
                );
            }
        }
        Ok(())
    }

    async fn stop(self) {
        self.api.stop().await;
    }
}

/// A `secrets` row: id, zone, version, nonce, ciphertext, KEK id.
type SealedRow = (String, String, i32, Vec<u8>, Vec<u8>, String);

/// The sealed document of provider `id`: (secret row id, version, plaintext JSON).
async fn sealed_document(db: &TestDb, id: &str) -> anyhow::Result<Option<(String, i32, Value)>> {
    let row: Option<SealedRow> = sqlx::query_as(
        "SELECT s.id, s.zone_id, s.version, s.nonce, s.ciphertext, s.dek_id \
           FROM caracal.providers p JOIN caracal.secrets s ON s.id = p.secret_id \
          WHERE p.id = $1 AND s.name = 'provider_secret_config' AND s.entity_id = p.id",
    )
    .bind(id)
    .fetch_optional(&mut db.admin().await?)
    .await?;
    let Some((secret_id, zone_id, version, nonce, ciphertext, dek_id)) = row else {
        return Ok(None);
    };
    for secret in SECRETS {
        assert!(
            !ciphertext
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "ciphertext holds a secret in clear"
        );
    }
    let ctx = SealContext {
        table: "secrets",
        column: "ciphertext",
        zone_id: &zone_id,
        row_id: &secret_id,
    };
    let plain = kek().open(&ctx, &nonce, &ciphertext, &dek_id)?;
    Ok(Some((secret_id, version, serde_json::from_slice(&plain)?)))
}

async fn provider_secret_rows(db: &TestDb) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM caracal.secrets WHERE name = 'provider_secret_config'",
    )
    .fetch_one(&mut db.admin().await?)
    .await?)
}

async fn revision(db: &TestDb) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT version FROM caracal.gateway_binding_revision")
            .fetch_one(&mut db.admin().await?)
            .await?,
    )
}

async fn bindings_outbox_row(db: &TestDb, version: i64) -> anyhow::Result<Option<Value>> {
    Ok(sqlx::query_scalar(
        "SELECT payload_json FROM caracal.event_outbox \
          WHERE topic = 'caracal.gateway.bindings.invalidate' AND dedupe_key = $1 AND producer = 'api'",
    )
    .bind(format!("bindings:{version}"))
    .fetch_optional(&mut db.admin().await?)
    .await?)
}

async fn binding(db: &TestDb, resource_id: &str) -> anyhow::Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT resource_identifier FROM caracal.gateway_resource_bindings WHERE resource_id = $1",
    )
    .bind(resource_id)
    .fetch_optional(&mut db.admin().await?)
    .await?)
}

#[tokio::test]
async fn provider_secrets_are_sealed_and_patches_keep_the_keys_they_omit() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let zone = api.zone("Providers").await;
    let base = format!("/v1/zones/{zone}/providers");

    // The 1.0 client's ensure_api_key_provider: create with the key inside config_json.
    let created = api
        .ok(
            "POST",
            &base,
            json!({"name": "CRM key", "identifier": "provider://crm", "kind": "api_key",
                   "config_json": {"header_name": "X-Api-Key", "api_key": SECRETS[0]}}),
            201,
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["identifier"], "provider://crm");
    assert_eq!(created["name"], "CRM key");
    assert_eq!(created["kind"], "api_key");
    assert_eq!(created["provider_kind"], "api_key");
    assert_eq!(created["zone_id"], zone.as_str());
    assert_eq!(created["config_json"], json!({"header_name": "X-Api-Key"}));
    assert_eq!(created["secret_config_keys"], json!(["api_key"]));
    assert!(created.get("secret_id").is_none(), "{created}");
    let (secret_id, version, doc) = sealed_document(api.db(), &id).await?.unwrap();
    assert_eq!((version, doc), (1, json!({"api_key": SECRETS[0]})));

    let got = api
        .ok("GET", &format!("{base}/{id}"), Value::Null, 200)
        .await;
    assert_eq!(got, created);
    let listed = api.ok("GET", &base, Value::Null, 200).await;
    assert_eq!(listed["items"], json!([created]));
    assert_eq!(listed["next_cursor"], Value::Null);

    // No key on the next run: PATCH {config_json: public} keeps the sealed key untouched.
    let patched = api
        .ok(
            "PATCH",
            &format!("{base}/{id}"),
            json!({"config_json": {"header_name": "X-Key", "auth_scheme": "Token"}}),
            200,
        )
        .await;
    assert_eq!(
        patched["config_json"],
        json!({"header_name": "X-Key", "auth_scheme": "Token"})
    );
    assert_eq!(patched["secret_config_keys"], json!(["api_key"]));
    let (same_id, version, doc) = sealed_document(api.db(), &id).await?.unwrap();
    assert_eq!(same_id, secret_id);
    assert_eq!((version, doc), (1, json!({"api_key": SECRETS[0]})));

    // A key given: PATCH {kind, config_json: {..., api_key}} re-seals in place.
    let patched = api
        .ok(
            "PATCH",
            &format!("{base}/{id}"),
            json!({"kind": "api_key", "config_json": {"header_name": "X-Key", "api_key": SECRETS[1]}}),
            200,
        )
        .await;
    assert_eq!(patched["config_json"], json!({"header_name": "X-Key"}));
    let (same_id, version, doc) = sealed_document(api.db(), &id).await?.unwrap();
    assert_eq!(same_id, secret_id);
    assert_eq!((version, doc), (2, json!({"api_key": SECRETS[1]})));

    // A change of kind drops the sealed keys the new kind does not use.
    let patched = api
        .ok(
            "PATCH",
            &format!("{base}/{id}"),
            json!({"kind": "bearer_token", "config_json": {"bearer_token": SECRETS[2]}}),
            200,
        )
        .await;
    assert_eq!(patched["kind"], "bearer_token");
    assert_eq!(patched["config_json"], json!({}));
    assert_eq!(patched["secret_config_keys"], json!(["bearer_token"]));
    let (_, _, doc) = sealed_document(api.db(), &id).await?.unwrap();
    assert_eq!(doc, json!({"bearer_token": SECRETS[2]}));

    // Client credentials: both secrets sealed together; removing one with null keeps the
    // other; a public client (no secret at all) has no sealed document.
    let oauth = api
        .ok(
            "POST",
            &base,
            json!({"name": "idp", "kind": "oauth2_client_credentials", "config_json": {
                "token_endpoint": "https://idp.example/oauth/token", "client_id": "svc",
                "allowed_token_hosts": ["idp.example"], "scopes": ["read"],
                "client_auth_method": "client_secret_post",
                "client_secret": SECRETS[3], "private_key": SECRETS[4]}}),
            201,
        )
        .await;
    assert_eq!(oauth["identifier"], "provider://idp");
    assert_eq!(
        oauth["secret_config_keys"],
        json!(["client_secret", "private_key"])
    );
    let oauth_id = oauth["id"].as_str().unwrap().to_owned();
    let public_only = json!({
        "token_endpoint": "https://idp.example/oauth/token", "client_id": "svc",
        "allowed_token_hosts": ["idp.example"], "client_auth_method": "none"});
    let mut removal = public_only.clone();
    removal["private_key"] = Value::Null;
    let patched = api
        .ok(
            "PATCH",
            &format!("{base}/{oauth_id}"),
            json!({"config_json": removal}),
            200,
        )
        .await;
    assert_eq!(patched["secret_config_keys"], json!(["client_secret"]));
    let (_, _, doc) = sealed_document(api.db(), &oauth_id).await?.unwrap();
    assert_eq!(doc, json!({"client_secret": SECRETS[3]}));
    let before = provider_secret_rows(api.db()).await?;
    let mut removal = public_only.clone();
    removal["client_secret"] = Value::Null;
    let patched = api
        .ok(
            "PATCH",
            &format!("{base}/{oauth_id}"),
            json!({"config_json": removal}),
            200,
        )
        .await;
    assert_eq!(patched["secret_config_keys"], json!([]));
    assert!(sealed_document(api.db(), &oauth_id).await?.is_none());
    assert_eq!(provider_secret_rows(api.db()).await?, before - 1);

    // Basic: username public, password sealed; a name-only create derives the identifier.
    let basic = api
        .ok(
            "POST",
            &base,
            json!({"name": "Legacy Billing API!", "kind": "http_basic",
                   "config_json": {"username": "svc", "password": SECRETS[4]}}),
            201,
        )
        .await;
    assert_eq!(basic["identifier"], "provider://legacy-billing-api");
    assert_eq!(basic["config_json"], json!({"username": "svc"}));
    let none = api
        .ok(
            "POST",
            &base,
            json!({"identifier": "provider://echo", "kind": "none"}),
            201,
        )
        .await;
    assert_eq!(none["name"], "provider://echo");
    assert_eq!(none["secret_config_keys"], json!([]));

    // Deleting archives the provider and destroys its sealed document.
    let rows_before = provider_secret_rows(api.db()).await?;
    let basic_id = basic["id"].as_str().unwrap();
    let deleted = api
        .call("DELETE", &format!("{base}/{basic_id}"), None)
        .await;
    assert_eq!(deleted.status, 204);
    assert!(deleted.body.is_empty());
    assert_eq!(provider_secret_rows(api.db()).await?, rows_before - 1);
    let gone = api.call("GET", &format!("{base}/{basic_id}"), None).await;
    assert_problem(&gone, 404, "provider_not_found");
    // Its identifier is free again.
    api.ok(
        "POST",
        &base,
        json!({"name": "Legacy Billing API!", "kind": "none"}),
        201,
    )
    .await;

    api.assert_no_secret_leaked().await?;
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn provider_refusals_have_clear_codes() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let zone = api.zone("Provider errors").await;
    let base = format!("/v1/zones/{zone}/providers");
    let header = json!({"header_name": "X-Key"});
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"kind": "none"}), 400, "invalid_body"),
        (
            json!({"name": "x", "kind": "none", "check": true}),
            400,
            "invalid_body",
        ),
        (json!({"name": "x"}), 400, "invalid_body"),
        (json!({"name": "", "kind": "none"}), 400, "invalid_body"),
        (
            json!({"identifier": "crm", "kind": "none"}),
            400,
            "invalid_identifier",
        ),
        (
            json!({"identifier": "provider://CRM", "kind": "none"}),
            400,
            "invalid_identifier",
        ),
        (
            json!({"name": "x", "kind": "ldap"}),
            400,
            "invalid_provider_kind",
        ),
        (
            json!({"name": "nul\u{0}", "kind": "none"}),
            400,
            "invalid_body",
        ),
        (
            // NUL is refused for every body before any area sees it.
            json!({"name": "x", "kind": "oauth2_authorization_code", "config_json": {"note": "a\u{0}b"}}),
            400,
            "invalid_body",
        ),
        (
            json!({"name": "x", "kind": "oauth2_authorization_code", "config_json": {"note": "n".repeat(40_000)}}),
            400,
            "invalid_provider_config",
        ),
        (
            json!({"name": "x", "kind": "none", "config_json": {"header_name": "X"}}),
            400,
            "invalid_provider_config",
        ),
        (
            json!({"name": "x", "kind": "none", "config_json": {"api_key": SECRETS[5]}}),
            400,
            "invalid_provider_config",
        ),
        (
            json!({"name": "x", "kind": "api_key", "config_json": {"api_key": 12345}}),
            400,
            "invalid_provider_config",
        ),
        (
            json!({"name": "x", "kind": "api_key", "config_json": {"header_name": "Host", "api_key": SECRETS[5]}}),
            400,
            "invalid_provider_config",
        ),
        (
            json!({"name": "x", "kind": "api_key", "config_json": {"header_name": "X-Forwarded-Key", "api_key": SECRETS[5]}}),
            400,
            "invalid_provider_config",
        ),
        (
            json!({"name": "x", "kind": "api_key", "config_json": {"api_key": SECRETS[5]}}),
            400,
            "invalid_provider_config",
        ),
        (
            json!({"name": "x", "kind": "api_key", "config_json": {"header_name": "X-Key", "token": SECRETS[5]}}),
            400,
            "invalid_provider_config",
        ),
        (
            json!({"name": "x", "kind": "api_key", "config_json": header}),
            400,
            "provider_secret_required",
        ),
        (
            json!({"name": "x", "kind": "bearer_token"}),
            400,
            "provider_secret_required",
        ),
        (
            json!({"name": "x", "kind": "http_basic", "config_json": {"username": "u"}}),
            400,
            "provider_secret_required",
        ),
        (
            json!({"name": "x", "kind": "oauth2_client_credentials", "config_json": {
            "token_endpoint": "https://idp.example/t", "client_id": "c",
            "allowed_token_hosts": ["idp.example"]}}),
            400,
            "provider_secret_required",
        ),
        (
            json!({"name": "x", "kind": "oauth2_client_credentials", "config_json": {
            "token_endpoint": "https://evil.example/t", "client_id": "c", "client_auth_method": "none",
            "allowed_token_hosts": ["idp.example"]}}),
            400,
            "invalid_provider_config",
        ),
        (
            json!({"name": "x", "kind": "oauth2_client_credentials", "config_json": {
            "token_endpoint": "https://idp.example/t", "client_id": "c", "client_auth_method": "none"}}),
            400,
            "invalid_provider_config",
        ),
    ];
    for (body, status, code) in &cases {
        let resp = api.call("POST", &base, Some(body.clone())).await;
        let got = resp.json().unwrap_or(Value::Null);
        assert_eq!(
            (resp.status, got["error"].as_str()),
            (*status, Some(*code)),
            "{body}: {got}"
        );
        if *code == "invalid_provider_config" || *code == "provider_secret_required" {
            assert!(
                got["details"]["issues"][0]["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("config_json")),
                "{got}"
            );
        }
    }

    let created = api
        .ok(
            "POST",
            &base,
            json!({"name": "crm", "kind": "api_key", "config_json": {"header_name": "X-Key", "api_key": SECRETS[0]}}),
            201,
        )
        .await;
    let id = created["id"].as_str().unwrap();
    let dup = api
        .call(
            "POST",
            &base,
            Some(json!({"identifier": "provider://crm", "kind": "none"})),
        )
        .await;
    assert_problem(&dup, 409, "provider_identifier_conflict");
    let no_zone = api
        .call(
            "POST",
            "/v1/zones/no-such-zone/providers",
            Some(json!({"name": "x", "kind": "none"})),
        )
        .await;
    assert_problem(&no_zone, 404, "zone_not_found");
    let no_zone = api
        .call("GET", "/v1/zones/no-such-zone/providers", None)
        .await;
    assert_problem(&no_zone, 404, "zone_not_found");
    for (method, body) in [
        ("GET", None),
        ("PATCH", Some(json!({"name": "y"}))),
        ("DELETE", None),
    ] {
        let resp = api.call(method, &format!("{base}/missing"), body).await;
        assert_problem(&resp, 404, "provider_not_found");
    }
    // PATCH refusals: removing the only key the kind needs, a kind it does not fit, a
    // secret the kind does not use, an unknown member.
    let patches: Vec<(Value, &str)> = vec![
        (
            json!({"config_json": {"header_name": "X-Key", "api_key": null}}),
            "provider_secret_required",
        ),
        (json!({"kind": "http_basic"}), "invalid_provider_config"),
        (json!({"kind": "nope"}), "invalid_provider_kind"),
        (
            json!({"config_json": {"header_name": "X-Key", "password": SECRETS[5]}}),
            "invalid_provider_config",
        ),
        (json!({"identifier": "provider://other"}), "invalid_body"),
        (json!({"name": 7}), "invalid_body"),
    ];
    for (body, code) in patches {
        let resp = api
            .call("PATCH", &format!("{base}/{id}"), Some(body.clone()))
            .await;
        assert_problem(&resp, 400, code);
    }
    let (_, version, doc) = sealed_document(api.db(), id).await?.unwrap();
    assert_eq!(
        (version, doc),
        (1, json!({"api_key": SECRETS[0]})),
        "refused patches change nothing"
    );

    // In use by a live resource: 409 until the resource is gone.
    let resource = api
        .ok(
            "POST",
            &format!("/v1/zones/{zone}/resources"),
            json!({"name": "crm", "upstream_url": "http://127.0.0.1:9", "scopes": ["crm:read"], "credential_provider_id": id}),
            201,
        )
        .await;
    let in_use = api.call("DELETE", &format!("{base}/{id}"), None).await;
    assert_problem(&in_use, 409, "provider_in_use");
    let rid = resource["id"].as_str().unwrap();
    assert_eq!(
        api.call("DELETE", &format!("/v1/zones/{zone}/resources/{rid}"), None)
            .await
            .status,
        204
    );
    assert_eq!(
        api.call("DELETE", &format!("{base}/{id}"), None)
            .await
            .status,
        204
    );

    // Pages and queries.
    for i in 0..3 {
        api.ok(
            "POST",
            &base,
            json!({"name": format!("p{i}"), "kind": "none"}),
            201,
        )
        .await;
    }
    let first = api
        .ok("GET", &format!("{base}?limit=2"), Value::Null, 200)
        .await;
    assert_eq!(first["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(first["items"][0]["name"], "p2", "newest first");
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = api
        .ok(
            "GET",
            &format!("{base}?limit=2&cursor={cursor}"),
            Value::Null,
            200,
        )
        .await;
    assert_eq!(second["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(second["next_cursor"], Value::Null);
    assert_problem(
        &api.call("GET", &format!("{base}?kind=none"), None).await,
        400,
        "invalid_query",
    );
    assert_problem(
        &api.call("GET", &format!("{base}?cursor=bogus"), None).await,
        400,
        "invalid_cursor",
    );

    api.assert_no_secret_leaked().await?;
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn resources_follow_the_rules_and_echo_stored_values() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let zone = api.zone("Resources").await;
    let provider = api
        .ok(
            "POST",
            &format!("/v1/zones/{zone}/providers"),
            json!({"name": "echo", "identifier": "provider://echo", "kind": "none"}),
            201,
        )
        .await;
    let pid = provider["id"].as_str().unwrap().to_owned();
    let base = format!("/v1/zones/{zone}/resources");

    // The 1.0 client's provisioning body, echoed verbatim.
    let desired = json!({
        "name": "pipernet",
        "identifier": "resource://pipernet",
        "upstream_url": "http://127.0.0.1:9000",
        "scopes": ["data:write", "data:read"],
        "credential_provider_id": pid,
        "operations": [{"method": "get", "path": "/items", "scope": "data:read"},
                       {"method": "POST", "path": "/items", "scope": "data:write"}],
        "operation_enforcement": "transport_uniform",
    });
    let row = api.ok("POST", &base, desired.clone(), 201).await;
    for key in [
        "name",
        "identifier",
        "upstream_url",
        "scopes",
        "credential_provider_id",
        "operations",
        "operation_enforcement",
    ] {
        assert_eq!(row[key], desired[key], "{key}");
    }
    assert_eq!(row["rate_limit"], Value::Null);
    assert_eq!(row["zone_id"], zone.as_str());
    let id = row["id"].as_str().unwrap().to_owned();
    assert_eq!(
        api.ok("GET", &format!("{base}/{id}"), Value::Null, 200)
            .await,
        row
    );
    assert_eq!(
        api.ok("GET", &base, Value::Null, 200).await["items"],
        json!([row])
    );

    // Defaults: identifier from the name, enforcement `enforced`, no operations.
    let minimal = api
        .ok(
            "POST",
            &base,
            json!({"name": "Billing API", "upstream_url": "https://billing.example/v1/", "scopes": ["bill"], "credential_provider_id": pid}),
            201,
        )
        .await;
    assert_eq!(minimal["identifier"], "resource://billing-api");
    assert_eq!(minimal["upstream_url"], "https://billing.example/v1/");
    assert_eq!(minimal["operation_enforcement"], "enforced");
    assert_eq!(minimal["operations"], json!([]));
    // The control resource needs no upstream (and, with the schema's NOT NULL, a provider).
    let control = api
        .ok(
            "POST",
            &base,
            json!({"identifier": "caracal-control", "scopes": ["control:read"], "credential_provider_id": pid, "upstream_url": null}),
            201,
        )
        .await;
    assert_eq!(control["upstream_url"], Value::Null);
    assert_eq!(control["name"], "caracal-control");

    let good = |patch: Value| {
        let mut body = json!({"name": "r", "upstream_url": "http://127.0.0.1:9", "scopes": ["a", "b"], "credential_provider_id": pid});
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let ops = |list: Value| json!({"operations": list});
    let many_ops: Vec<Value> = (0..257)
        .map(|i| json!({"method": "GET", "path": format!("/{i}"), "scope": "a"}))
        .collect();
    let long_ops: Vec<Value> = (0..256)
        .map(|i| json!({"method": "GET", "path": format!("/{i}/{}", "p".repeat(1100)), "scope": "a"}))
        .collect();
    let many_scopes: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"scopes": ["a"], "upstream_url": "http://h", "credential_provider_id": pid}),
            400,
            "invalid_body",
        ),
        (good(json!({"check": true})), 400, "invalid_body"),
        (
            good(json!({"operation_enforcement": "strict"})),
            400,
            "invalid_body",
        ),
        (
            good(json!({"rate_limit": {"window_seconds": 0, "max_requests": 5}})),
            400,
            "invalid_body",
        ),
        (
            good(json!({"rate_limit": {"window_seconds": 60, "max_requests": 5, "key_by": "ip"}})),
            400,
            "invalid_body",
        ),
        (
            good(json!({"upstream_url": null})),
            400,
            "upstream_url_required",
        ),
        (
            good(json!({"credential_provider_id": null})),
            400,
            "credential_provider_required",
        ),
        (
            good(json!({"upstream_url": "ftp://h/"})),
            400,
            "invalid_upstream_url",
        ),
        (
            good(json!({"upstream_url": "http://user:pw@h/"})),
            400,
            "invalid_upstream_url",
        ),
        (
            good(json!({"upstream_url": "127.0.0.1:9"})),
            400,
            "invalid_upstream_url",
        ),
        (good(json!({"scopes": []})), 400, "invalid_scopes"),
        (good(json!({"scopes": ["a", "a"]})), 400, "invalid_scopes"),
        (good(json!({"scopes": ["a b"]})), 400, "invalid_scopes"),
        (good(json!({"scopes": many_scopes})), 400, "invalid_scopes"),
        (
            good(ops(
                json!([{"method": "GET", "path": "items", "scope": "a"}]),
            )),
            400,
            "invalid_operations",
        ),
        (
            good(ops(
                json!([{"method": "GET", "path": "/items", "scope": "c"}]),
            )),
            400,
            "invalid_operations",
        ),
        (
            good(ops(
                json!([{"method": "GET", "path": "/x", "scope": "a"}, {"method": "get", "path": "/x", "scope": "b"}]),
            )),
            400,
            "invalid_operations",
        ),
        (good(ops(json!(many_ops))), 400, "invalid_operations"),
        (good(ops(json!(long_ops))), 400, "invalid_operations"),
        (good(json!({"name": "r\u{0}"})), 400, "invalid_body"),
        (
            good(ops(
                json!([{"method": "GET", "path": "/x", "scope": "a", "extra": 1}]),
            )),
            400,
            "invalid_body",
        ),
        (
            good(json!({"identifier": "provider://x"})),
            400,
            "invalid_identifier",
        ),
        (
            good(json!({"identifier": "https://u@h/"})),
            400,
            "invalid_identifier",
        ),
        (
            good(json!({"credential_provider_id": "missing"})),
            404,
            "provider_not_found",
        ),
        (
            good(json!({"identifier": "resource://pipernet"})),
            409,
            "resource_identifier_conflict",
        ),
    ];
    for (body, status, code) in &cases {
        let resp = api.call("POST", &base, Some(body.clone())).await;
        let got = resp.json().unwrap_or(Value::Null);
        assert_eq!(
            (resp.status, got["error"].as_str()),
            (*status, Some(*code)),
            "{body}: {got}"
        );
    }
    let no_zone = api
        .call("POST", "/v1/zones/nope/resources", Some(good(json!({}))))
        .await;
    assert_problem(&no_zone, 404, "zone_not_found");
    for (method, body) in [
        ("GET", None),
        ("PATCH", Some(json!({"name": "y"}))),
        ("DELETE", None),
    ] {
        let resp = api.call(method, &format!("{base}/missing"), body).await;
        assert_problem(&resp, 404, "resource_not_found");
    }

    // PATCH is partial and re-checks the whole resource.
    let patched = api
        .ok(
            "PATCH",
            &format!("{base}/{id}"),
            json!({"scopes": ["data:read", "data:write", "data:admin"]}),
            200,
        )
        .await;
    assert_eq!(
        patched["scopes"],
        json!(["data:read", "data:write", "data:admin"])
    );
    assert_eq!(patched["operations"], desired["operations"]);
    assert_eq!(patched["upstream_url"], desired["upstream_url"]);
    let patch_cases: Vec<(Value, u16, &str)> = vec![
        (json!({"scopes": ["data:admin"]}), 400, "invalid_operations"),
        (
            json!({"credential_provider_id": null}),
            400,
            "credential_provider_required",
        ),
        (json!({"upstream_url": null}), 400, "upstream_url_required"),
        (
            json!({"upstream_url": "javascript:alert(1)"}),
            400,
            "invalid_upstream_url",
        ),
        (
            json!({"identifier": "resource://billing-api"}),
            409,
            "resource_identifier_conflict",
        ),
        (
            json!({"credential_provider_id": "missing"}),
            404,
            "provider_not_found",
        ),
        (json!({"identifier": "a b"}), 400, "invalid_identifier"),
        (json!({"scopes": []}), 400, "invalid_scopes"),
        (json!({"upstream": "http://h"}), 400, "invalid_body"),
    ];
    for (body, status, code) in &patch_cases {
        let resp = api
            .call("PATCH", &format!("{base}/{id}"), Some(body.clone()))
            .await;
        let got = resp.json().unwrap_or(Value::Null);
        assert_eq!(
            (resp.status, got["error"].as_str()),
            (*status, Some(*code)),
            "{body}: {got}"
        );
    }
    // Rebinding to another provider, and the 1.0 client's steady state: the row it lists
    // equals what it asked for, so a second run would not patch.
    let other = api
        .ok(
            "POST",
            &format!("/v1/zones/{zone}/providers"),
            json!({"name": "other", "kind": "caracal_mandate"}),
            201,
        )
        .await;
    let rebound = api
        .ok(
            "PATCH",
            &format!("{base}/{id}"),
            json!({"credential_provider_id": other["id"], "scopes": desired["scopes"]}),
            200,
        )
        .await;
    assert_eq!(rebound["credential_provider_id"], other["id"]);
    let listed = api.ok("GET", &base, Value::Null, 200).await;
    let row = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["identifier"] == "resource://pipernet")
        .unwrap()
        .clone();
    assert_eq!(row, rebound);
    assert_eq!(row["scopes"], desired["scopes"]);

    api.assert_no_secret_leaked().await?;
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn resource_changes_bump_the_binding_revision_and_enqueue_the_invalidation()
-> anyhow::Result<()> {
    let api = Api::start().await?;
    let db = api.db();
    let zone = api.zone("Bindings").await;
    let provider = api
        .ok(
            "POST",
            &format!("/v1/zones/{zone}/providers"),
            json!({"name": "echo", "kind": "none"}),
            201,
        )
        .await;
    let base = format!("/v1/zones/{zone}/resources");

    let v0 = revision(db).await?;
    let row = api
        .ok(
            "POST",
            &base,
            json!({"name": "crm", "upstream_url": "http://127.0.0.1:9", "scopes": ["crm:read"],
                   "credential_provider_id": provider["id"],
                   "rate_limit": {"window_seconds": 60, "max_requests": 100}}),
            201,
        )
        .await;
    let id = row["id"].as_str().unwrap().to_owned();
    assert_eq!(
        row["rate_limit"],
        json!({"window_seconds": 60, "max_requests": 100, "key_by": "application"})
    );
    let v1 = revision(db).await?;
    assert!(v1 > v0, "create bumps the revision ({v0} -> {v1})");
    let message = bindings_outbox_row(db, v1)
        .await?
        .expect("outbox row for the new revision");
    assert_eq!(message, json!({"zone_id": "*", "revision": v1.to_string()}));
    assert_eq!(binding(db, &id).await?.as_deref(), Some("resource://crm"));

    // An identifier change re-keys the binding; a limit change and its removal are stored.
    let patched = api
        .ok(
            "PATCH",
            &format!("{base}/{id}"),
            json!({"identifier": "resource://crm-v2", "rate_limit": {"window_seconds": 10, "max_requests": 5, "key_by": "resource"}}),
            200,
        )
        .await;
    assert_eq!(patched["identifier"], "resource://crm-v2");
    assert_eq!(patched["rate_limit"]["key_by"], "resource");
    let v2 = revision(db).await?;
    assert!(v2 > v1, "patch bumps the revision ({v1} -> {v2})");
    assert!(bindings_outbox_row(db, v2).await?.is_some());
    assert_eq!(
        binding(db, &id).await?.as_deref(),
        Some("resource://crm-v2")
    );
    let cleared = api
        .ok(
            "PATCH",
            &format!("{base}/{id}"),
            json!({"rate_limit": null}),
            200,
        )
        .await;
    assert_eq!(cleared["rate_limit"], Value::Null);
    let limits: i64 = sqlx::query_scalar("SELECT count(*) FROM caracal.resource_rate_limits")
        .fetch_one(&mut db.admin().await?)
        .await?;
    assert_eq!(limits, 0);

    // The control resource has no upstream, so no binding; giving it one creates it, and
    // taking it away again removes it.
    let control = api
        .ok(
            "POST",
            &base,
            json!({"identifier": "caracal-control", "scopes": ["control:read"], "credential_provider_id": provider["id"]}),
            201,
        )
        .await;
    let cid = control["id"].as_str().unwrap().to_owned();
    assert_eq!(binding(db, &cid).await?, None);
    api.ok(
        "PATCH",
        &format!("{base}/{cid}"),
        json!({"upstream_url": "http://127.0.0.1:7"}),
        200,
    )
    .await;
    assert_eq!(binding(db, &cid).await?.as_deref(), Some("caracal-control"));
    api.ok(
        "PATCH",
        &format!("{base}/{cid}"),
        json!({"upstream_url": null}),
        200,
    )
    .await;
    assert_eq!(binding(db, &cid).await?, None);

    // Deleting makes the resource unroutable and frees its identifier.
    let v3 = revision(db).await?;
    assert_eq!(
        api.call("DELETE", &format!("{base}/{id}"), None)
            .await
            .status,
        204
    );
    assert!(revision(db).await? > v3);
    assert_eq!(binding(db, &id).await?, None);
    assert_problem(
        &api.call("GET", &format!("{base}/{id}"), None).await,
        404,
        "resource_not_found",
    );
    assert_problem(
        &api.call("DELETE", &format!("{base}/{id}"), None).await,
        404,
        "resource_not_found",
    );
    let again = api
        .ok(
            "POST",
            &base,
            json!({"identifier": "resource://crm-v2", "upstream_url": "http://127.0.0.1:9", "scopes": ["crm:read"], "credential_provider_id": provider["id"]}),
            201,
        )
        .await;
    assert_eq!(
        binding(db, again["id"].as_str().unwrap()).await?.as_deref(),
        Some("resource://crm-v2")
    );

    // A binding left behind by a resource archived outside the API does not block its
    // identifier: the new resource takes the key over.
    let again_id = again["id"].as_str().unwrap().to_owned();
    sqlx::query("UPDATE caracal.resources SET archived_at = now() WHERE id = $1")
        .bind(&again_id)
        .execute(&mut db.admin().await?)
        .await?;
    let third = api
        .ok(
            "POST",
            &base,
            json!({"identifier": "resource://crm-v2", "upstream_url": "http://127.0.0.1:9", "scopes": ["crm:read"], "credential_provider_id": provider["id"]}),
            201,
        )
        .await;
    assert_eq!(binding(db, &again_id).await?, None);
    assert_eq!(
        binding(db, third["id"].as_str().unwrap()).await?.as_deref(),
        Some("resource://crm-v2")
    );

    // A provider change bumps the revision too (the gateway holds provider secrets).
    let v4 = revision(db).await?;
    let pid = provider["id"].as_str().unwrap();
    api.ok(
        "PATCH",
        &format!("/v1/zones/{zone}/providers/{pid}"),
        json!({"config_json": {"forward_caracal_identity": true}}),
        200,
    )
    .await;
    assert!(revision(db).await? > v4);

    // Every change is in the admin audit chain.
    let entities: Vec<(String, i32)> = sqlx::query_as(
        "SELECT entity_type, status_code FROM caracal.admin_audit_events \
          WHERE zone_id = $1 AND entity_type IN ('provider', 'resource') ORDER BY chain_seq",
    )
    .bind(&zone)
    .fetch_all(&mut db.admin().await?)
    .await?;
    assert_eq!(entities.first(), Some(&("provider".to_owned(), 201)));
    assert!(entities.contains(&("resource".to_owned(), 204)));
    assert_eq!(entities.len(), 11, "{entities:?}");

    api.assert_no_secret_leaked().await?;
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn read_tokens_and_other_zones_cannot_change_providers_or_resources() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let z1 = api.zone("One").await;
    let z2 = api.zone("Two").await;
    let read = api
        .ok(
            "POST",
            "/v1/admin-tokens",
            json!({"name": "reader", "capability": "read"}),
            201,
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let zoned = api
        .ok(
            "POST",
            "/v1/admin-tokens",
            json!({"name": "z1", "capability": "write", "zone_id": z1}),
            201,
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = json!({"name": "p", "kind": "none"});
    let by_reader = api
        .api
        .call(
            &read,
            "POST",
            &format!("/v1/zones/{z1}/providers"),
            Some(&body),
        )
        .await?;
    assert_problem(&by_reader, 403, "admin_token_read_only");
    let listed = api
        .api
        .call(&read, "GET", &format!("/v1/zones/{z1}/resources"), None)
        .await?;
    assert_eq!(listed.status, 200);
    let elsewhere = api
        .api
        .call(
            &zoned,
            "POST",
            &format!("/v1/zones/{z2}/providers"),
            Some(&body),
        )
        .await?;
    assert_problem(&elsewhere, 403, "admin_token_zone_mismatch");
    let own = api
        .api
        .call(
            &zoned,
            "POST",
            &format!("/v1/zones/{z1}/providers"),
            Some(&body),
        )
        .await?;
    assert_eq!(own.status, 201);
    // A provider of one zone is invisible from another.
    let pid = own.json()?["id"].as_str().unwrap().to_owned();
    let cross = api
        .call("GET", &format!("/v1/zones/{z2}/providers/{pid}"), None)
        .await;
    assert_problem(&cross, 404, "provider_not_found");
    let cross_ref = api
        .call(
            "POST",
            &format!("/v1/zones/{z2}/resources"),
            Some(json!({"name": "r", "upstream_url": "http://h", "scopes": ["a"], "credential_provider_id": pid})),
        )
        .await;
    assert_problem(&cross_ref, 404, "provider_not_found");
    api.stop().await;
    Ok(())
}
