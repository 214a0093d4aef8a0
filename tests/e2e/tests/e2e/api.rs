//! The admin API against real Postgres and Redis (wire-contract §6): authentication and
//! capabilities, zones, applications, admin tokens, pagination, bad input, the admin audit
//! chain, and that no secret appears in any response or log line.

use serde_json::{Value, json};
use tests_harness::api::assert_problem;
use tests_harness::{
    TestDb,
    api::{ApiFixture, BOOTSTRAP_TOKEN},
    http,
};

async fn start() -> anyhow::Result<(TestDb, ApiFixture)> {
    let db = TestDb::migrated().await?;
    let api = ApiFixture::start(&db).await?;
    Ok((db, api))
}

#[tokio::test]
async fn missing_unknown_and_malformed_bearers_are_refused() -> anyhow::Result<()> {
    let (_db, api) = start().await?;
    let none = http::request(api.addr, "GET", "/v1/zones", &[], "").await?;
    assert_problem(&none, 401, "invalid_admin_token");
    for token in [
        "nope",
        "test-bootstrap-admin-token-0123456789abcdeX",
        &format!("cat_{}", "A".repeat(43)),
    ] {
        let resp = api.call(token, "GET", "/v1/zones", None).await?;
        assert_problem(&resp, 401, "invalid_admin_token");
    }
    let basic = http::request(
        api.addr,
        "GET",
        "/v1/zones",
        &[("authorization", "Basic Zm9vOmJhcg==")],
        "",
    )
    .await?;
    assert_problem(&basic, 401, "invalid_admin_token");
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn repeated_failures_from_one_address_are_rate_limited() -> anyhow::Result<()> {
    let (_db, api) = start().await?;
    for _ in 0..20 {
        let resp = api.call("wrong", "GET", "/v1/zones", None).await?;
        assert_eq!(resp.status, 401);
    }
    let limited = api.call("wrong", "GET", "/v1/zones", None).await?;
    assert_problem(&limited, 429, "rate_limited");
    // While blocked, even the right token is refused from that address.
    let blocked = api.admin("GET", "/v1/zones", None).await?;
    assert_problem(&blocked, 429, "rate_limited");
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn token_capabilities_and_zone_scopes_are_enforced() -> anyhow::Result<()> {
    let (_db, api) = start().await?;
    let z1 = api.create_zone("One").await?;
    let z2 = api.create_zone("Two").await?;
    let (read, _) = api.mint_token("read", None).await?;
    let (approve, _) = api.mint_token("approve", None).await?;
    let (zoned, zoned_id) = api.mint_token("write", Some(&z1)).await?;
    assert!(read.starts_with("cat_") && read.len() == 47, "{read}");

    let listed = api.call(&read, "GET", "/v1/zones", None).await?;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json()?["items"].as_array().map(Vec::len), Some(2));
    let write = api
        .call(&read, "POST", "/v1/zones", Some(&json!({"name": "x"})))
        .await?;
    assert_problem(&write, 403, "admin_token_read_only");
    let by_approver = api
        .call(
            &approve,
            "PATCH",
            &format!("/v1/zones/{z1}"),
            Some(&json!({"name": "y"})),
        )
        .await?;
    assert_problem(&by_approver, 403, "admin_token_approve_only");

    // A zone token works in its zone, nowhere else, and lists only its zone.
    let own = api
        .call(
            &zoned,
            "PATCH",
            &format!("/v1/zones/{z1}"),
            Some(&json!({"name": "Uno"})),
        )
        .await?;
    assert_eq!(own.status, 200, "{:?}", own.json());
    let other = api
        .call(&zoned, "GET", &format!("/v1/zones/{z2}"), None)
        .await?;
    assert_problem(&other, 403, "admin_token_zone_mismatch");
    let create = api
        .call(&zoned, "POST", "/v1/zones", Some(&json!({"name": "z"})))
        .await?;
    assert_problem(&create, 403, "admin_token_zone_mismatch");
    let mine = api.call(&zoned, "GET", "/v1/zones", None).await?.json()?;
    let ids: Vec<&str> = mine["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|z| z["id"].as_str())
        .collect();
    assert_eq!(ids, vec![z1.as_str()]);

    // Revocation takes effect at once.
    let revoked = api
        .admin(
            "DELETE",
            &format!("/v1/admin-tokens/{zoned_id}?zone_id={z1}"),
            None,
        )
        .await?;
    assert_eq!(revoked.status, 204);
    let after = api
        .call(&zoned, "GET", &format!("/v1/zones/{z1}"), None)
        .await?;
    assert_problem(&after, 401, "invalid_admin_token");
    let again = api
        .admin(
            "DELETE",
            &format!("/v1/admin-tokens/{zoned_id}?zone_id={z1}"),
            None,
        )
        .await?;
    assert_problem(&again, 404, "admin_token_not_found");
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn zones_crud_and_their_error_codes() -> anyhow::Result<()> {
    let (_db, api) = start().await?;
    let created = api
        .admin(
            "POST",
            "/v1/zones",
            Some(&json!({"name": "Acme Payments", "dcr_enabled": true})),
        )
        .await?;
    assert_eq!(created.status, 201);
    let zone = created.json()?;
    assert_eq!(zone["slug"], "acme-payments");
    assert_eq!(zone["dcr_enabled"], true);
    let id = zone["id"].as_str().unwrap_or_default().to_owned();

    let dup = api
        .admin(
            "POST",
            "/v1/zones",
            Some(&json!({"name": "Other", "slug": "acme-payments"})),
        )
        .await?;
    assert_problem(&dup, 409, "zone_slug_conflict");
    let bad_slug = api
        .admin(
            "POST",
            "/v1/zones",
            Some(&json!({"name": "x", "slug": "Not Valid"})),
        )
        .await?;
    assert_problem(&bad_slug, 400, "invalid_slug");
    let unknown = api
        .admin(
            "POST",
            "/v1/zones",
            Some(&json!({"name": "x", "colour": "red"})),
        )
        .await?;
    assert_problem(&unknown, 400, "invalid_body");
    assert!(
        unknown.json()?["details"]["issues"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("colour"))
    );
    let empty_name = api
        .admin("POST", "/v1/zones", Some(&json!({"name": ""})))
        .await?;
    assert_problem(&empty_name, 400, "invalid_body");

    let got = api.admin("GET", &format!("/v1/zones/{id}"), None).await?;
    assert_eq!(got.json()?["name"], "Acme Payments");
    let patched = api
        .admin(
            "PATCH",
            &format!("/v1/zones/{id}"),
            Some(&json!({"dcr_shutdown": "revoke_live"})),
        )
        .await?;
    assert_eq!(patched.json()?["dcr_shutdown"], "revoke_live");
    let bad_mode = api
        .admin(
            "PATCH",
            &format!("/v1/zones/{id}"),
            Some(&json!({"dcr_shutdown": "later"})),
        )
        .await?;
    assert_problem(&bad_mode, 400, "invalid_body");
    let status = api
        .admin("GET", &format!("/v1/zones/{id}/dcr-status"), None)
        .await?;
    assert_eq!(status.json()?["dcr_enabled"], true);

    assert_problem(
        &api.admin("GET", "/v1/zones/nope", None).await?,
        404,
        "zone_not_found",
    );
    assert_problem(
        &api.admin("GET", "/v1/zones/bad%20id", None).await?,
        404,
        "zone_not_found",
    );
    assert_problem(
        &api.admin("PUT", "/v1/zones", None).await?,
        405,
        "method_not_allowed",
    );
    assert_problem(
        &api.admin("GET", "/v1/nothing", None).await?,
        404,
        "not_found",
    );

    let deleted = api
        .admin("DELETE", &format!("/v1/zones/{id}"), None)
        .await?;
    assert_eq!(deleted.status, 204);
    assert!(deleted.body.is_empty());
    assert_problem(
        &api.admin("GET", &format!("/v1/zones/{id}"), None).await?,
        404,
        "zone_not_found",
    );
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn lists_page_newest_first_and_refuse_bad_queries() -> anyhow::Result<()> {
    let (_db, api) = start().await?;
    let mut created = Vec::new();
    for n in 0..5 {
        created.push(api.create_zone(&format!("Zone {n}")).await?);
    }
    let mut seen = Vec::new();
    let mut path = "/v1/zones?limit=2".to_owned();
    loop {
        let page = api.admin("GET", &path, None).await?.json()?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .filter_map(|z| z["id"].as_str().map(str::to_owned)),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/zones?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    created.reverse();
    assert_eq!(seen, created, "every zone once, newest first");

    for (query, code) in [
        ("limit=0", "invalid_query"),
        ("limit=501", "invalid_query"),
        ("limit=x", "invalid_query"),
        ("cursor=not-a-cursor", "invalid_cursor"),
        ("colour=red", "invalid_query"),
    ] {
        let resp = api
            .admin("GET", &format!("/v1/zones?{query}"), None)
            .await?;
        assert_problem(&resp, 400, code);
    }
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn applications_show_their_secret_once_and_rotation_replaces_it() -> anyhow::Result<()> {
    let (db, api) = start().await?;
    let zone = api.create_zone("Apps").await?;
    let other = api.create_zone("Elsewhere").await?;
    let base = format!("/v1/zones/{zone}/applications");
    let created = api
        .admin(
            "POST",
            &base,
            Some(&json!({"name": "agent", "traits": ["control:invoke"]})),
        )
        .await?;
    assert_eq!(created.status, 201, "{:?}", created.json());
    let app = created.json()?;
    let id = app["id"].as_str().unwrap_or_default().to_owned();
    let first = app["client_secret"].as_str().unwrap_or_default().to_owned();
    assert!(first.starts_with("cs_") && first.len() == 46, "{first}");
    assert_eq!(app["registration_method"], "managed");
    assert_eq!(app["expires_at"], Value::Null);
    assert_eq!(app["traits"], json!(["control:invoke"]));

    let stored_hash = || async {
        let hash: String =
            sqlx::query_scalar("SELECT client_secret_hash FROM caracal.applications WHERE id = $1")
                .bind(&id)
                .fetch_one(&mut db.admin().await?)
                .await?;
        anyhow::Ok(hash)
    };
    assert!(control_crypto::verify_secret(
        first.as_bytes(),
        &stored_hash().await?
    )?);

    let dup = api
        .admin("POST", &base, Some(&json!({"name": "agent"})))
        .await?;
    assert_problem(&dup, 409, "application_name_taken");
    let dcr_method = api
        .admin(
            "POST",
            &base,
            Some(&json!({"name": "x", "registration_method": "dcr"})),
        )
        .await?;
    assert_problem(&dcr_method, 400, "invalid_body");
    let dcr = api
        .admin(
            "POST",
            &format!("{base}/dcr"),
            Some(&json!({"name": "dyn"})),
        )
        .await?;
    assert_problem(&dcr, 403, "dcr_disabled");

    // Reads never carry the secret or its hash.
    let got = api.admin("GET", &format!("{base}/{id}"), None).await?;
    assert_eq!(got.status, 200);
    let listed = api.admin("GET", &base, None).await?;
    for text in [
        String::from_utf8_lossy(&got.body),
        String::from_utf8_lossy(&listed.body),
    ] {
        assert!(
            !text.contains("client_secret") && !text.contains("argon2"),
            "{text}"
        );
    }
    let reveal = api
        .admin("GET", &format!("{base}/{id}/client-secret"), None)
        .await?;
    assert_problem(&reveal, 409, "client_secret_not_retrievable");

    // A caller-chosen secret (AdminClient's ensure_application) replaces the old one.
    let chosen = "caller-chosen-secret-0001";
    let patched = api
        .admin(
            "PATCH",
            &format!("{base}/{id}"),
            Some(&json!({"client_secret": chosen})),
        )
        .await?;
    assert_eq!(patched.status, 200);
    assert!(!String::from_utf8_lossy(&patched.body).contains(chosen));
    let hash = stored_hash().await?;
    assert!(control_crypto::verify_secret(chosen.as_bytes(), &hash)?);
    assert!(!control_crypto::verify_secret(first.as_bytes(), &hash)?);
    let short = api
        .admin(
            "PATCH",
            &format!("{base}/{id}"),
            Some(&json!({"client_secret": "short"})),
        )
        .await?;
    assert_problem(&short, 400, "invalid_body");

    // rotate-secret arrives with no body and no content type.
    let rotated = http::request(
        api.addr,
        "POST",
        &format!("{base}/{id}/rotate-secret"),
        &[("authorization", &format!("Bearer {BOOTSTRAP_TOKEN}"))],
        "",
    )
    .await?;
    assert_eq!(rotated.status, 200, "{:?}", rotated.json());
    let second = rotated.json()?["client_secret"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(second.starts_with("cs_") && second != first);
    let hash = stored_hash().await?;
    assert!(control_crypto::verify_secret(second.as_bytes(), &hash)?);
    assert!(!control_crypto::verify_secret(chosen.as_bytes(), &hash)?);

    // Another zone's path does not reach the application.
    let cross = api
        .admin("GET", &format!("/v1/zones/{other}/applications/{id}"), None)
        .await?;
    assert_problem(&cross, 404, "application_not_found");
    let unknown_zone = api
        .admin("GET", "/v1/zones/nowhere/applications", None)
        .await?;
    assert_problem(&unknown_zone, 404, "zone_not_found");

    let deleted = api.admin("DELETE", &format!("{base}/{id}"), None).await?;
    assert_eq!(deleted.status, 204);
    let archived = api
        .admin("GET", &format!("{base}?status=archived"), None)
        .await?
        .json()?;
    assert_eq!(archived["items"][0]["id"], id.as_str());
    assert_problem(
        &api.admin("GET", &format!("{base}?status=gone"), None)
            .await?,
        400,
        "invalid_query",
    );

    // No secret in the admin audit payloads (log lines: tests/secrets_in_logs.rs).
    let payloads: Vec<String> =
        sqlx::query_scalar("SELECT payload_json::text FROM caracal.admin_audit_events")
            .fetch_all(&mut db.admin().await?)
            .await?;
    for secret in [first.as_str(), second.as_str(), chosen, BOOTSTRAP_TOKEN] {
        assert!(
            !payloads.iter().any(|p| p.contains(secret)),
            "payload leaks a secret"
        );
    }
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn bad_bodies_get_clear_4xx_answers() -> anyhow::Result<()> {
    let (_db, api) = start().await?;
    let auth = format!("Bearer {BOOTSTRAP_TOKEN}");
    let big = format!("{{\"name\":\"{}\"}}", "x".repeat(1024 * 1024 + 1));
    let resp = http::request(
        api.addr,
        "POST",
        "/v1/zones",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        big,
    )
    .await?;
    assert_problem(&resp, 413, "payload_too_large");
    let resp = http::request(
        api.addr,
        "POST",
        "/v1/zones",
        &[("authorization", &auth), ("content-type", "text/plain")],
        "{\"name\":\"x\"}",
    )
    .await?;
    assert_problem(&resp, 415, "unsupported_media_type");
    for body in [
        "{",
        "[]",
        "{\"name\": 5}",
        "null",
        "\u{0}",
        "{\"name\": \"a\\u0000b\"}",
    ] {
        let resp = http::request(
            api.addr,
            "POST",
            "/v1/zones",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await?;
        assert_problem(&resp, 400, "invalid_body");
    }
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn every_change_is_recorded_in_a_verifiable_chain() -> anyhow::Result<()> {
    let (db, api) = start().await?;
    let zone = api.create_zone("Chained").await?;
    let base = format!("/v1/zones/{zone}/applications");
    let app = api
        .admin("POST", &base, Some(&json!({"name": "a"})))
        .await?
        .json()?;
    let id = app["id"].as_str().unwrap_or_default();
    api.admin(
        "PATCH",
        &format!("{base}/{id}"),
        Some(&json!({"name": "b"})),
    )
    .await?;
    api.admin("DELETE", &format!("{base}/{id}"), None).await?;
    api.mint_token("read", None).await?;

    #[derive(sqlx::FromRow)]
    struct Row {
        id: String,
        zone_id: Option<String>,
        request_id: String,
        actor_id: String,
        actor_name: String,
        actor_scope: String,
        action: String,
        method: String,
        path: String,
        entity_type: Option<String>,
        entity_id: Option<String>,
        status_code: i32,
        payload_json: Value,
        occurred_at: chrono::DateTime<chrono::Utc>,
        content_sha256: Vec<u8>,
        prev_content_sha256: Option<Vec<u8>>,
        chain_seq: i64,
        chain_hmac: Option<Vec<u8>>,
        chain_key_id: Option<String>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, zone_id, request_id, actor_id, actor_name, actor_scope, action, method, path, \
           entity_type, entity_id, status_code, payload_json, occurred_at, content_sha256, \
           prev_content_sha256, chain_seq, chain_hmac, chain_key_id \
         FROM caracal.admin_audit_events ORDER BY coalesce(zone_id, '*'), chain_seq",
    )
    .fetch_all(&mut db.admin().await?)
    .await?;
    let key = control_crypto::HmacKey::from_hex(&api.audit_key_hex)?;
    let zone_rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.zone_id.as_deref() == Some(zone.as_str()))
        .collect();
    assert_eq!(zone_rows.len(), 4, "create zone, create, patch, delete app");
    assert_eq!(
        rows.iter().filter(|r| r.zone_id.is_none()).count(),
        1,
        "the token, globally"
    );
    let mut prev: Option<(String, i64, Vec<u8>)> = None;
    for r in &rows {
        let chain = r.zone_id.clone().unwrap_or_else(|| "*".to_owned());
        let members = json!({
            "id": r.id, "request_id": r.request_id, "actor_id": r.actor_id, "actor_name": r.actor_name, "actor_scope": r.actor_scope,
            "action": r.action, "method": r.method, "path": r.path, "zone_id": r.zone_id, "entity_type": r.entity_type,
            "entity_id": r.entity_id, "status_code": r.status_code, "payload_json": r.payload_json,
            "occurred_at": r.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        });
        let content =
            control_crypto::content_sha256(control_crypto::ADMIN_AUDIT_CONTENT_DOMAIN, &members)?;
        assert_eq!(
            content.as_slice(),
            r.content_sha256.as_slice(),
            "content hash of {}",
            r.action
        );
        let expected_prev = match &prev {
            Some((c, seq, hash)) if *c == chain => {
                assert_eq!(r.chain_seq, seq + 1);
                Some(hash.clone())
            }
            _ => {
                assert_eq!(r.chain_seq, 1);
                None
            }
        };
        assert_eq!(r.prev_content_sha256, expected_prev);
        let tag = control_crypto::chain_hmac(
            &key,
            &chain,
            r.chain_seq,
            r.prev_content_sha256.as_deref(),
            &r.content_sha256,
        );
        assert_eq!(r.chain_hmac.as_deref(), Some(tag.as_slice()));
        assert_eq!(r.chain_key_id.as_deref(), Some(key.chain_key_id()));
        prev = Some((chain, r.chain_seq, r.content_sha256.clone()));
    }
    let statuses: Vec<i32> = zone_rows.iter().map(|r| r.status_code).collect();
    assert_eq!(statuses, vec![201, 201, 200, 204]);
    api.stop().await;
    Ok(())
}

const DATA_DOC: &str = "package caracal.authz\nimport rego.v1\n# caracal:data-document\napp_ids := {\"a\": \"app-1\"}\n";

#[tokio::test]
async fn policies_are_validated_before_they_are_stored_and_versioned() -> anyhow::Result<()> {
    let (db, api) = start().await?;
    let zone = api.create_zone("Policies").await?;
    let base = format!("/v1/zones/{zone}/policies");
    // The 1.0 client sends only {name, content}: the schema version defaults.
    let created = api
        .admin(
            "POST",
            &base,
            Some(&json!({"name": "grants", "content": DATA_DOC})),
        )
        .await?;
    assert_eq!(created.status, 201, "{:?}", created.json());
    let body = created.json()?;
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(body["version"], 1);
    assert!(body["version_id"].is_string());
    let sha = control_policy::content_sha256(DATA_DOC);
    assert_eq!(body["content_sha256"], sha.as_str());

    for (content, description) in [
        ("", "empty_policy"),
        (
            "package other\n# caracal:data-document\nx := 1\n",
            "must_use_package_caracal_authz",
        ),
        (
            "package caracal.authz\nimport rego.v1\n# caracal:data-document\ngrants := http.send({})\n",
            "forbidden_builtin:http.send",
        ),
        (
            "package caracal.authz\nimport rego.v1\n# caracal:data-document\ngrants := input.x\n",
            "input_reference_not_allowed",
        ),
        (
            "package caracal.authz\nthis is not rego {",
            "unbalanced_delimiters",
        ),
        ("package caracal.authz\nx := := 1\n", "rego_parse_error"),
    ] {
        let resp = api
            .admin(
                "POST",
                &format!("{base}/{id}/versions"),
                Some(&json!({"content": content})),
            )
            .await?;
        assert_problem(&resp, 422, "invalid_rego");
        let got = resp.json()?["error_description"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(got.starts_with(description), "{got} for {content:?}");
        let check = api
            .admin(
                "POST",
                "/v1/policies/validate",
                Some(&json!({"content": content})),
            )
            .await?
            .json()?;
        assert_eq!(check["valid"], false);
        assert!(
            check["error_description"]
                .as_str()
                .is_some_and(|d| d.starts_with(description))
        );
    }
    let bad_schema = api
        .admin(
            "POST",
            &base,
            Some(&json!({"name": "x", "content": DATA_DOC, "schema_version": "1999-01-01"})),
        )
        .await?;
    assert_problem(&bad_schema, 422, "invalid_rego");

    let second = format!("{DATA_DOC}risk := []\n");
    let v2 = api
        .admin(
            "POST",
            &format!("{base}/{id}/versions"),
            Some(&json!({"content": second})),
        )
        .await?;
    assert_eq!(v2.status, 201);
    assert_eq!(v2.json()?["version"], 2);
    let got = api
        .admin("GET", &format!("{base}/{id}"), None)
        .await?
        .json()?;
    assert_eq!(got["latest_version"], 2);
    let versions = got["versions"].as_array().cloned().unwrap_or_default();
    assert_eq!(versions.len(), 2);
    assert_eq!(
        versions[1]["content_sha256"],
        control_policy::content_sha256(&second).as_str()
    );
    assert_eq!(versions[1]["content"], second.as_str());

    // Only validated documents reach the database.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM caracal.policy_versions")
        .fetch_one(&mut db.admin().await?)
        .await?;
    assert_eq!(stored, 2);

    let dup = api
        .admin(
            "POST",
            &base,
            Some(&json!({"name": "grants", "content": DATA_DOC})),
        )
        .await?;
    assert_problem(&dup, 409, "policy_name_taken");
    assert_problem(
        &api.admin("GET", &format!("{base}/nope"), None).await?,
        404,
        "policy_not_found",
    );
    let ok = api
        .admin(
            "POST",
            "/v1/policies/validate",
            Some(&json!({"content": DATA_DOC})),
        )
        .await?
        .json()?;
    assert_eq!(ok["valid"], true);
    // A read token may validate (it changes nothing) but not create.
    let (read, _) = api.mint_token("read", None).await?;
    let validated = api
        .call(
            &read,
            "POST",
            "/v1/policies/validate",
            Some(&json!({"content": DATA_DOC})),
        )
        .await?;
    assert_eq!(validated.status, 200);
    let refused = api
        .call(
            &read,
            "POST",
            &base,
            Some(&json!({"name": "n", "content": DATA_DOC})),
        )
        .await?;
    assert_problem(&refused, 403, "admin_token_read_only");
    let deleted = api.admin("DELETE", &format!("{base}/{id}"), None).await?;
    assert_eq!(deleted.status, 204);
    assert_problem(
        &api.admin("GET", &format!("{base}/{id}"), None).await?,
        404,
        "policy_not_found",
    );
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn operator_endpoints_answer_without_a_token() -> anyhow::Result<()> {
    let (_db, api) = start().await?;
    assert_eq!(http::get(api.addr, "/health").await?.status, 200);
    let ready = http::get(api.addr, "/ready").await?;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()?, json!({"ok": true, "ready": true}));
    api.admin("GET", "/v1/zones", None).await?;
    let metrics = http::get(api.addr, "/metrics").await?;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(text.contains("caracal_api_requests_total"), "{text}");
    assert!(text.contains("caracal_api_outbox_pending 0"), "{text}");
    api.stop().await;
    Ok(())
}

/// The route table is what is served: every documented operation reaches its handler (an
/// unknown id answers the area's `<thing>_not_found` or a validation error, never the
/// router's `not_found` or `method_not_allowed`).
#[tokio::test]
async fn every_route_in_the_table_is_served() -> anyhow::Result<()> {
    let (_db, api) = start().await?;
    let zone = api.create_zone("Routes").await?;
    let mut checked = 0;
    for route in control_api::server::routes() {
        let mut path = format!("/v1{}", route.path);
        path = path.replace("{zone_id}", &zone);
        while let (Some(open), Some(close)) = (path.find('{'), path.find('}')) {
            path.replace_range(open..=close, "missing-id");
        }
        let body =
            matches!(route.body, control_api::routes::RequestBody::Json(_)).then(|| json!({}));
        let resp = api
            .admin(route.method.as_str(), &path, body.as_ref())
            .await?;
        let code = resp
            .json()
            .map(|b| b["error"].clone())
            .unwrap_or(Value::Null);
        assert!(
            code != "not_found" && code != "method_not_allowed",
            "{} {path}: {code}",
            route.method
        );
        checked += 1;
    }
    assert!(checked >= 20, "{checked} routes");
    let ops: std::collections::HashSet<&str> =
        control_api::server::routes().map(|r| r.op).collect();
    assert_eq!(
        ops.len(),
        control_api::server::routes().count(),
        "operation ids are unique"
    );
    api.stop().await;
    Ok(())
}

/// Storage §11: the API's retention deletes old published and old dead rows of every
/// producer of `event_outbox`, and never a pending row.
#[tokio::test]
async fn outbox_retention_deletes_only_old_finished_rows() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let mut admin = db.admin().await?;
    let rows = [
        ("old-published-sts", "sts", "published", 8),
        ("old-published-api", "api", "published", 8),
        ("new-published", "api", "published", 1),
        ("old-dead", "api", "dead", 31),
        ("young-dead", "sts", "dead", 8),
        ("old-pending", "api", "pending", 60),
    ];
    for (id, producer, status, days) in rows {
        sqlx::query(
            "INSERT INTO caracal.event_outbox (id, producer, topic, payload_json, status, published_at, \
               created_at, updated_at) \
             VALUES ($1, $2, 'retention.test', '{}', $3, CASE WHEN $3 = 'published' THEN now() END, \
               now() - make_interval(days => $4), now() - make_interval(days => $4))",
        )
        .bind(id)
        .bind(producer)
        .bind(status)
        .bind(days)
        .execute(&mut admin)
        .await?;
    }
    let pool = db.service_pool(control_store::ServiceRole::Api).await?;
    let config = control_api::retention::RetentionConfig {
        published: std::time::Duration::from_secs(7 * 86_400),
        dead: std::time::Duration::from_secs(30 * 86_400),
        interval: std::time::Duration::from_secs(3600),
    };
    assert_eq!(control_api::retention::sweep(&pool, &config).await?, (2, 1));
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM caracal.event_outbox WHERE topic = 'retention.test' ORDER BY id",
    )
    .fetch_all(&mut admin)
    .await?;
    assert_eq!(left, vec!["new-published", "old-pending", "young-dead"]);
    assert_eq!(control_api::retention::sweep(&pool, &config).await?, (0, 0));
    Ok(())
}
