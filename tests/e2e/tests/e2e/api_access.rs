//! The admin API's access areas against real Postgres and Redis (wire-contract §6.3, §6.5;
//! authority §2.5, §6.5): admin grants and their revocation cascade, subject issuers,
//! operator approval decisions, the subject kill switch with its outbox messages, and the
//! read views of authority records and agent sessions.

use std::collections::BTreeMap;
use tests_harness::api::assert_problem;

use serde_json::{Value, json};
use tests_harness::{
    TestDb,
    api::{ApiFixture, BOOTSTRAP_TOKEN},
    http,
    provision::Provision,
};

async fn start() -> anyhow::Result<(TestDb, ApiFixture)> {
    let db = TestDb::migrated().await?;
    let api = ApiFixture::start(&db).await?;
    Ok((db, api))
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["id"].as_str().map(str::to_owned))
        .collect()
}

/// Follows `next_cursor` from `path` (which carries `limit`) and returns every id.
async fn drain(api: &ApiFixture, path: &str) -> anyhow::Result<Vec<String>> {
    let mut seen = Vec::new();
    let mut next = path.to_owned();
    for _ in 0..100 {
        let resp = api.admin("GET", &next, None).await?;
        assert_eq!(resp.status, 200, "{:?}", resp.json());
        let page = resp.json()?;
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => next = format!("{path}&cursor={cursor}"),
            None => return Ok(seen),
        }
    }
    anyhow::bail!("pagination did not terminate")
}

/// An authority record created `age_secs` ago, expiring in an hour.
async fn record(
    p: &mut Provision,
    zone: &str,
    (id, kind, subject): (&str, &str, &str),
    application: Option<&str>,
    status: &str,
    age_secs: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO sessions (id, zone_id, session_type, subject_id, application_id, root_id, status, \
                               expires_at, revoked_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $1, $6, now() + interval '1 hour', \
                 CASE WHEN $6 = 'revoked' THEN now() END, now() - make_interval(secs => $7))",
    )
    .bind(id)
    .bind(zone)
    .bind(kind)
    .bind(subject)
    .bind(application)
    .bind(status)
    .bind(age_secs as f64)
    .execute(p.conn())
    .await?;
    Ok(())
}

/// An approval hold of class `class`, created `age_secs` ago, expiring in `ttl_secs`.
#[allow(
    clippy::too_many_arguments,
    reason = "a fixture mirrors the row's columns"
)]
async fn hold(
    p: &mut Provision,
    zone: &str,
    id: &str,
    (principal, application): (&str, &str),
    tier: &str,
    class: &str,
    ttl_secs: i64,
    age_secs: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO step_up_challenges (id, zone_id, principal_id, application_id, resource_set_hash, tier, \
                                         approver_class, metadata_json, expires_at, created_at) \
         VALUES ($1, $2, $3, $4, sha256(convert_to($1, 'UTF8')), $5, $6, $7, \
                 now() + make_interval(secs => $8), now() - make_interval(secs => $9))",
    )
    .bind(id)
    .bind(zone)
    .bind(principal)
    .bind(application)
    .bind(tier)
    .bind(class)
    .bind(json!({"requested_scopes": ["crm:read"], "resources": ["resource://crm"], "policy_set_version_id": "psv-1"}))
    .bind(ttl_secs as f64)
    .bind(age_secs as f64)
    .execute(p.conn())
    .await?;
    Ok(())
}

/// The zone's outbox rows: dedupe key → (topic, payload).
async fn outbox(db: &TestDb, zone: &str) -> anyhow::Result<BTreeMap<String, (String, Value)>> {
    let rows: Vec<(Option<String>, String, Value)> = sqlx::query_as(
        "SELECT dedupe_key, topic, payload_json FROM caracal.event_outbox WHERE zone_id = $1",
    )
    .bind(zone)
    .fetch_all(&mut db.admin().await?)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(key, topic, payload)| (key.unwrap_or_default(), (topic, payload)))
        .collect())
}

/// Waits until the dispatcher has published every outbox row of `zone`; fails on a dead row.
async fn wait_published(db: &TestDb, zone: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        let states: Vec<String> =
            sqlx::query_scalar("SELECT status FROM caracal.event_outbox WHERE zone_id = $1")
                .bind(zone)
                .fetch_all(&mut db.admin().await?)
                .await?;
        assert!(!states.iter().any(|s| s == "dead"), "a message went dead");
        if states.iter().all(|s| s == "published") {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("outbox rows of {zone} were not published")
}

async fn status_of(db: &TestDb, table: &str, id: &str) -> anyhow::Result<String> {
    let sql = match table {
        "sessions" => "SELECT status FROM caracal.sessions WHERE id = $1",
        "agent_sessions" => "SELECT status FROM caracal.agent_sessions WHERE id = $1",
        "delegation_edges" => "SELECT status FROM caracal.delegation_edges WHERE id = $1",
        "provider_grants" => "SELECT status FROM caracal.provider_grants WHERE id = $1",
        _ => anyhow::bail!("unknown table {table}"),
    };
    Ok(sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(&mut db.admin().await?)
        .await?)
}

/// Two applications, two providers and two resources in `zone`.
async fn product(p: &mut Provision, zone: &str) -> anyhow::Result<()> {
    p.application(zone, "app-1", "secret-one-0123456789", &[])
        .await?;
    p.application(zone, "app-2", "secret-two-0123456789", &[])
        .await?;
    p.provider_none(zone, "prov-a").await?;
    p.provider_none(zone, "prov-b").await?;
    p.resource(
        zone,
        "res-a",
        "resource://a",
        &["a:read", "a:write"],
        None,
        "prov-a",
    )
    .await?;
    p.resource(zone, "res-b", "resource://b", &["b:read"], None, "prov-b")
        .await?;
    Ok(())
}

#[tokio::test]
async fn grants_are_created_filtered_paged_and_revoked_with_the_users_records() -> anyhow::Result<()>
{
    let (db, api) = start().await?;
    let zone = api.create_zone("Grants").await?;
    let mut p = Provision::open(&db).await?;
    product(&mut p, &zone).await?;
    let base = format!("/v1/zones/{zone}/grants");

    let grant = |app: &str, user: &str, resource: &str, scopes: &[&str]| json!({"application_id": app, "user_id": user, "resource_id": resource, "scopes": scopes});
    let mut created = Vec::new();
    for body in [
        grant("app-1", "u1", "res-a", &["a:read", "a:write"]),
        grant("app-2", "u2", "res-b", &["b:read"]),
        grant("app-1", "u1", "res-b", &["b:read", "b:read"]),
    ] {
        let resp = api.admin("POST", &base, Some(&body)).await?;
        assert_eq!(resp.status, 201, "{:?}", resp.json());
        created.push(resp.json()?);
    }
    let g1 = created[0]["id"].as_str().unwrap_or_default().to_owned();
    let g2 = created[1]["id"].as_str().unwrap_or_default().to_owned();
    let g3 = created[2]["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(created[0]["user_id"], "u1");
    assert_eq!(created[0]["application_id"], "app-1");
    assert_eq!(created[0]["resource_id"], "res-a");
    assert_eq!(created[0]["provider_id"], "prov-a");
    assert_eq!(created[0]["scopes"], json!(["a:read", "a:write"]));
    assert_eq!(created[0]["status"], "active");
    assert_eq!(
        created[2]["scopes"],
        json!(["b:read"]),
        "duplicates dropped"
    );

    // Refusals of the create.
    let too_many: Vec<String> = (0..65).map(|n| format!("s{n}")).collect();
    for (body, status, code) in [
        (grant("app-1", "u1", "res-a", &[]), 400, "invalid_body"),
        (
            json!({"application_id": "app-1", "user_id": "u1", "resource_id": "res-a", "scopes": too_many}),
            400,
            "invalid_body",
        ),
        (
            grant("app-1", "u1", "res-a", &["b:read"]),
            400,
            "invalid_body",
        ),
        (
            grant("app-1", "", "res-a", &["a:read"]),
            400,
            "invalid_body",
        ),
        (
            json!({"application_id": "app-1", "user_id": "u1", "resource_id": "res-a"}),
            400,
            "invalid_body",
        ),
        (
            json!({"application_id": "app-1", "user_id": "u1", "resource_id": "res-a", "scopes": ["a:read"], "provider_id": "prov-a"}),
            400,
            "invalid_body",
        ),
        (
            grant("app-9", "u1", "res-a", &["a:read"]),
            404,
            "application_not_found",
        ),
        (
            grant("app-1", "u1", "res-9", &["a:read"]),
            404,
            "resource_not_found",
        ),
    ] {
        let resp = api.admin("POST", &base, Some(&body)).await?;
        assert_problem(&resp, status, code);
    }
    let nowhere = api
        .admin(
            "POST",
            "/v1/zones/nowhere/grants",
            Some(&grant("app-1", "u1", "res-a", &["a:read"])),
        )
        .await?;
    assert_problem(&nowhere, 404, "zone_not_found");

    // Filters, newest first.
    for (query, expected) in [
        ("", vec![&g3, &g2, &g1]),
        ("user_id=u1", vec![&g3, &g1]),
        ("application_id=app-2", vec![&g2]),
        ("resource_id=res-b", vec![&g3, &g2]),
        ("provider_id=prov-a", vec![&g1]),
        ("scopes=a%3Aread%2Ca%3Awrite", vec![&g1]),
        ("scopes=b%3Aread", vec![&g3, &g2]),
        ("scopes=a%3Aread%2Cb%3Aread", vec![]),
        ("status=active&user_id=u1&scopes=b%3Aread", vec![&g3]),
        ("status=revoked", vec![]),
        ("user_id=", vec![&g3, &g2, &g1]),
    ] {
        let page = api.admin("GET", &format!("{base}?{query}"), None).await?;
        assert_eq!(page.status, 200, "{query}");
        let expected: Vec<String> = expected.into_iter().cloned().collect();
        assert_eq!(ids(&page.json()?), expected, "{query}");
    }
    for query in ["status=gone", "subject_id=u1", "limit=0"] {
        let resp = api.admin("GET", &format!("{base}?{query}"), None).await?;
        assert_problem(&resp, 400, "invalid_query");
    }
    assert_problem(
        &api.admin("GET", &format!("{base}?cursor=zzz"), None)
            .await?,
        400,
        "invalid_cursor",
    );
    assert_eq!(
        drain(&api, &format!("{base}?limit=1")).await?,
        vec![g3.clone(), g2.clone(), g1.clone()]
    );

    let got = api.admin("GET", &format!("{base}/{g1}"), None).await?;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()?, created[0]);
    assert_problem(
        &api.admin("GET", &format!("{base}/nope"), None).await?,
        404,
        "grant_not_found",
    );

    // u1's records: two active user records go; a revoked one, an application-typed one
    // and another user's stay as they were.
    record(
        &mut p,
        &zone,
        ("r-1", "user", "u1"),
        Some("app-1"),
        "active",
        50,
    )
    .await?;
    record(
        &mut p,
        &zone,
        ("r-2", "user", "u1"),
        Some("app-2"),
        "active",
        40,
    )
    .await?;
    record(
        &mut p,
        &zone,
        ("r-3", "user", "u1"),
        Some("app-1"),
        "revoked",
        30,
    )
    .await?;
    record(
        &mut p,
        &zone,
        ("r-4", "application", "u1"),
        Some("app-1"),
        "active",
        20,
    )
    .await?;
    record(
        &mut p,
        &zone,
        ("r-5", "user", "u2"),
        Some("app-2"),
        "active",
        10,
    )
    .await?;
    let deleted = api.admin("DELETE", &format!("{base}/{g1}"), None).await?;
    assert_eq!(deleted.status, 204);
    assert!(deleted.body.is_empty());
    for (id, status) in [
        ("r-1", "revoked"),
        ("r-2", "revoked"),
        ("r-3", "revoked"),
        ("r-4", "active"),
        ("r-5", "active"),
    ] {
        assert_eq!(status_of(&db, "sessions", id).await?, status, "{id}");
    }
    let reason: Option<String> =
        sqlx::query_scalar("SELECT revoked_reason FROM caracal.sessions WHERE id = 'r-1'")
            .fetch_one(&mut db.admin().await?)
            .await?;
    assert_eq!(reason.as_deref(), Some("grant_revoked"));
    let rows = outbox(&db, &zone).await?;
    assert_eq!(
        rows.keys().cloned().collect::<Vec<_>>(),
        vec!["revoke:record:r-1", "revoke:record:r-2"]
    );
    for (key, record) in [("revoke:record:r-1", "r-1"), ("revoke:record:r-2", "r-2")] {
        let (topic, payload) = &rows[key];
        assert_eq!(topic, "caracal.sessions.revoke");
        assert_eq!(
            payload,
            &json!({"zone_id": zone, "session_id": record, "reason": "grant_revoked", "grant_id": g1})
        );
    }
    let revoked = api
        .admin("GET", &format!("{base}/{g1}"), None)
        .await?
        .json()?;
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(
        ids(&api
            .admin("GET", &format!("{base}?status=revoked"), None)
            .await?
            .json()?),
        vec![g1.clone()]
    );

    // Again: nothing more to do.
    let again = api.admin("DELETE", &format!("{base}/{g1}"), None).await?;
    assert_eq!(again.status, 204);
    assert_eq!(outbox(&db, &zone).await?.len(), 2);
    assert_problem(
        &api.admin("DELETE", &format!("{base}/nope"), None).await?,
        404,
        "grant_not_found",
    );

    // More records than one batch: all of them go, one message each.
    sqlx::query(
        "INSERT INTO caracal.sessions (id, zone_id, session_type, subject_id, application_id, root_id, expires_at) \
         SELECT 'bulk-' || n, $1, 'user', 'u2', 'app-2', 'bulk-' || n, now() + interval '1 hour' \
           FROM generate_series(1, 1001) AS n",
    )
    .bind(&zone)
    .execute(&mut db.admin().await?)
    .await?;
    let bulk = api.admin("DELETE", &format!("{base}/{g2}"), None).await?;
    assert_eq!(bulk.status, 204);
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM caracal.sessions WHERE subject_id = 'u2' AND status = 'active'",
    )
    .fetch_one(&mut db.admin().await?)
    .await?;
    assert_eq!(left, 0);
    let rows = outbox(&db, &zone).await?;
    assert_eq!(rows.len(), 2 + 1002);
    assert_eq!(rows["revoke:record:bulk-1001"].1["grant_id"], g2.as_str());
    wait_published(&db, &zone).await?;

    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM caracal.admin_audit_events WHERE entity_type = 'grant' AND zone_id = $1",
    )
    .bind(&zone)
    .fetch_one(&mut db.admin().await?)
    .await?;
    assert_eq!(
        audited,
        3 + 2 + 1,
        "three creates, two deletes of g1, one of g2"
    );
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn subject_issuers_follow_the_url_rules_and_the_zone_limit() -> anyhow::Result<()> {
    let (_db, api) = start().await?;
    let zone = api.create_zone("Issuers").await?;
    let base = format!("/v1/zones/{zone}/subject-issuers");
    let body = |n: usize| {
        json!({
            "issuer": format!("https://issuer-{n}.example/tenant"),
            "jwks_url": format!("https://issuer-{n}.example/keys"),
            "audience": "app-1",
        })
    };
    let created = api.admin("POST", &base, Some(&body(0))).await?;
    assert_eq!(created.status, 201, "{:?}", created.json());
    let row = created.json()?;
    let id = row["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(row["issuer"], "https://issuer-0.example/tenant");
    assert_eq!(row["jwks_url"], "https://issuer-0.example/keys");
    assert_eq!(row["audience"], "app-1");
    assert_eq!(row["zone_id"], zone.as_str());

    assert_problem(
        &api.admin("POST", &base, Some(&body(0))).await?,
        409,
        "subject_issuer_conflict",
    );
    let loopback = api
        .admin(
            "POST",
            &base,
            Some(&json!({"issuer": "http://127.0.0.1:9", "jwks_url": "http://127.0.0.1:9/jwks.json", "audience": "a"})),
        )
        .await?;
    assert_eq!(loopback.status, 201, "{:?}", loopback.json());
    let loopback_id = loopback.json()?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for bad in [
        json!({"issuer": "http://issuer.example", "jwks_url": "https://x.example/k", "audience": "a"}),
        json!({"issuer": "https://x.example", "jwks_url": "http://x.example/k", "audience": "a"}),
        json!({"issuer": "https://x.example", "jwks_url": "https://u:p@x.example/k", "audience": "a"}),
        json!({"issuer": "https://x.example", "jwks_url": "https://x.example/k?a=1", "audience": "a"}),
        json!({"issuer": "https://x.example", "jwks_url": "https://x.example/k#f", "audience": "a"}),
        json!({"issuer": "https://x.example?q", "jwks_url": "https://x.example/k", "audience": "a"}),
        json!({"issuer": "x.example", "jwks_url": "https://x.example/k", "audience": "a"}),
        json!({"issuer": "https://x.example", "jwks_url": "https://x.example/k", "audience": ""}),
        json!({"issuer": "https://x.example", "jwks_url": "https://x.example/k"}),
        json!({"issuer": "https://x.example", "jwks_url": "https://x.example/k", "audience": "a", "extra": 1}),
    ] {
        assert_problem(
            &api.admin("POST", &base, Some(&bad)).await?,
            400,
            "invalid_body",
        );
    }

    // PATCH: key set URL and audience only.
    let patched = api
        .admin(
            "PATCH",
            &format!("{base}/{id}"),
            Some(&json!({"jwks_url": "https://issuer-0.example/keys-v2"})),
        )
        .await?;
    assert_eq!(patched.status, 200, "{:?}", patched.json());
    let patched = patched.json()?;
    assert_eq!(patched["jwks_url"], "https://issuer-0.example/keys-v2");
    assert_eq!(patched["audience"], "app-1");
    let aud = api
        .admin(
            "PATCH",
            &format!("{base}/{id}"),
            Some(&json!({"audience": "app-2"})),
        )
        .await?
        .json()?;
    assert_eq!(aud["audience"], "app-2");
    assert_eq!(aud["jwks_url"], "https://issuer-0.example/keys-v2");
    for bad in [
        json!({"issuer": "https://other.example"}),
        json!({"jwks_url": "https://x.example/k?x"}),
        json!({"audience": ""}),
    ] {
        assert_problem(
            &api.admin("PATCH", &format!("{base}/{id}"), Some(&bad))
                .await?,
            400,
            "invalid_body",
        );
    }
    assert_problem(
        &api.admin(
            "PATCH",
            &format!("{base}/nope"),
            Some(&json!({"audience": "x"})),
        )
        .await?,
        404,
        "subject_issuer_not_found",
    );
    let got = api.admin("GET", &format!("{base}/{id}"), None).await?;
    assert_eq!(got.json()?, aud);

    // At most 20 live issuers per zone.
    for n in 1..19 {
        let resp = api.admin("POST", &base, Some(&body(n))).await?;
        assert_eq!(resp.status, 201, "{n}");
    }
    assert_problem(
        &api.admin("POST", &base, Some(&body(19))).await?,
        409,
        "subject_issuer_limit_exceeded",
    );
    let all = drain(&api, &format!("{base}?limit=7")).await?;
    assert_eq!(all.len(), 20);
    assert_eq!(all.last(), Some(&id), "oldest last");

    // Delete archives; the issuer value becomes free again and a slot opens.
    let deleted = api.admin("DELETE", &format!("{base}/{id}"), None).await?;
    assert_eq!(deleted.status, 204);
    assert_problem(
        &api.admin("GET", &format!("{base}/{id}"), None).await?,
        404,
        "subject_issuer_not_found",
    );
    assert_problem(
        &api.admin("DELETE", &format!("{base}/{id}"), None).await?,
        404,
        "subject_issuer_not_found",
    );
    let again = api.admin("POST", &base, Some(&body(0))).await?;
    assert_eq!(again.status, 201);
    assert_ne!(again.json()?["id"], id.as_str());
    let gone = api
        .admin("DELETE", &format!("{base}/{loopback_id}"), None)
        .await?;
    assert_eq!(gone.status, 204);
    assert_problem(
        &api.admin("GET", "/v1/zones/nowhere/subject-issuers", None)
            .await?,
        404,
        "zone_not_found",
    );
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn approvals_are_decided_only_by_approve_tokens_or_bootstrap() -> anyhow::Result<()> {
    let (db, api) = start().await?;
    let zone = api.create_zone("Approvals").await?;
    let other = api.create_zone("Elsewhere").await?;
    let mut p = Provision::open(&db).await?;
    product(&mut p, &zone).await?;
    let who = ("app-1", "app-1");
    hold(
        &mut p,
        &zone,
        "h-operator",
        who,
        "high",
        "operator",
        900,
        50,
    )
    .await?;
    hold(&mut p, &zone, "h-any", who, "high", "any", 900, 40).await?;
    hold(&mut p, &zone, "h-subject", who, "high", "subject", 900, 30).await?;
    hold(&mut p, &zone, "h-expired", who, "high", "operator", -1, 20).await?;
    hold(&mut p, &zone, "h-later", who, "high", "operator", 900, 10).await?;
    let (read, _) = api.mint_token("read", None).await?;
    let (write, _) = api.mint_token("write", None).await?;
    let (approve, approve_id) = api.mint_token("approve", None).await?;
    let (elsewhere, _) = api.mint_token("approve", Some(&other)).await?;
    let base = format!("/v1/zones/{zone}/approvals");
    let decide = |id: &str, verb: &str| format!("{base}/{id}/{verb}");

    // Who may decide.
    for (token, code) in [
        (&read, "admin_token_read_only"),
        (&write, "approve_capability_required"),
        (&elsewhere, "admin_token_zone_mismatch"),
    ] {
        for verb in ["approve", "reject"] {
            let resp = api
                .call(token, "POST", &decide("h-operator", verb), Some(&json!({})))
                .await?;
            assert_problem(&resp, 403, code);
        }
    }
    let pending = api
        .call(&read, "GET", &format!("{base}/h-operator"), None)
        .await?;
    assert_eq!(
        pending.json()?["state"],
        "pending",
        "refusals changed nothing"
    );

    // An approve token approves, with a reason.
    let approved = api
        .call(
            &approve,
            "POST",
            &decide("h-operator", "approve"),
            Some(&json!({"reason": "looks fine"})),
        )
        .await?;
    assert_eq!(approved.status, 200, "{:?}", approved.json());
    let approved = approved.json()?;
    assert_eq!(approved["state"], "approved");
    assert_eq!(approved["decided_by"], format!("admin:{approve_id}"));
    assert_eq!(approved["decision_reason"], "looks fine");
    assert!(approved["satisfied_at"].is_string());
    assert_eq!(approved["rejected_at"], Value::Null);
    assert_eq!(approved["approver_subject_id"], Value::Null);

    // The bootstrap token rejects, bodyless (no content type, as a bare POST arrives).
    let rejected = http::request(
        api.addr,
        "POST",
        &decide("h-any", "reject"),
        &[("authorization", &format!("Bearer {BOOTSTRAP_TOKEN}"))],
        "",
    )
    .await?;
    assert_eq!(rejected.status, 200, "{:?}", rejected.json());
    let rejected = rejected.json()?;
    assert_eq!(rejected["state"], "rejected");
    assert_eq!(rejected["decided_by"], "admin:bootstrap");
    assert_eq!(rejected["decision_reason"], Value::Null);

    // `{}` (the client's body without a reason) works too.
    let later = api
        .call(
            &approve,
            "POST",
            &decide("h-later", "approve"),
            Some(&json!({})),
        )
        .await?;
    assert_eq!(later.status, 200);

    // No second decision, whichever way; the state comes back.
    for (id, verb, state) in [
        ("h-operator", "approve", "approved"),
        ("h-operator", "reject", "approved"),
        ("h-any", "approve", "rejected"),
        ("h-expired", "approve", "expired"),
    ] {
        let resp = api.call(&approve, "POST", &decide(id, verb), None).await?;
        assert_problem(&resp, 409, "approval_not_decidable");
        assert_eq!(resp.json()?["details"]["state"], state, "{id}");
    }
    sqlx::query("UPDATE caracal.step_up_challenges SET consumed_at = now() WHERE id = 'h-later'")
        .execute(&mut db.admin().await?)
        .await?;
    let consumed = api
        .call(&approve, "POST", &decide("h-later", "reject"), None)
        .await?;
    assert_problem(&consumed, 409, "approval_not_decidable");
    assert_eq!(consumed.json()?["details"]["state"], "consumed");

    // Subject-only holds, unknown holds, bad bodies.
    assert_problem(
        &api.call(&approve, "POST", &decide("h-subject", "approve"), None)
            .await?,
        403,
        "subject_approval_required",
    );
    assert_problem(
        &api.admin("POST", &decide("h-subject", "reject"), None)
            .await?,
        403,
        "subject_approval_required",
    );
    assert_problem(
        &api.call(&approve, "POST", &decide("nope", "approve"), None)
            .await?,
        404,
        "approval_not_found",
    );
    assert_problem(
        &api.admin(
            "POST",
            &format!("/v1/zones/{other}/approvals/h-subject/approve"),
            None,
        )
        .await?,
        404,
        "approval_not_found",
    );
    assert_problem(
        &api.admin(
            "POST",
            "/v1/zones/nowhere/approvals/h-subject/approve",
            None,
        )
        .await?,
        404,
        "zone_not_found",
    );
    for body in [
        json!({"reason": "x".repeat(501)}),
        json!({"decision": "approved"}),
        json!({"reason": 5}),
    ] {
        assert_problem(
            &api.call(
                &approve,
                "POST",
                &decide("h-subject", "approve"),
                Some(&body),
            )
            .await?,
            400,
            "invalid_body",
        );
    }
    let subject = api
        .admin("GET", &format!("{base}/h-subject"), None)
        .await?
        .json()?;
    assert_eq!(subject["state"], "pending");

    // Each decision: one `step_up_decided` audit event through the outbox, deduplicated by
    // its event id, and one admin audit row.
    let rows = outbox(&db, &zone).await?;
    assert_eq!(rows.len(), 3, "{rows:?}");
    let mut decided = BTreeMap::new();
    for (key, (topic, payload)) in &rows {
        assert_eq!(topic, "caracal.audit.events");
        let event = &payload["event"];
        assert_eq!(
            key,
            &format!("audit:{}", event["id"].as_str().unwrap_or_default())
        );
        assert_eq!(event["event_type"], "step_up_decided");
        assert_eq!(event["zone_id"], zone.as_str());
        assert_eq!(event["policy_set_version_id"], "psv-1");
        let meta = &event["metadata_json"];
        assert_eq!(meta["approver_plane"], "operator");
        decided.insert(
            meta["challenge_id"].as_str().unwrap_or_default().to_owned(),
            (
                meta["decision"].clone(),
                event["decision"].clone(),
                meta["decided_by"].clone(),
            ),
        );
    }
    assert_eq!(
        decided["h-operator"],
        (
            json!("approved"),
            json!("allow"),
            json!(format!("admin:{approve_id}"))
        )
    );
    assert_eq!(
        decided["h-any"],
        (json!("rejected"), json!("deny"), json!("admin:bootstrap"))
    );
    wait_published(&db, &zone).await?;
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM caracal.admin_audit_events WHERE entity_type = 'approval'",
    )
    .fetch_one(&mut db.admin().await?)
    .await?;
    assert_eq!(audited, 3);
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn approvals_list_and_read_with_their_state_and_filters() -> anyhow::Result<()> {
    let (db, api) = start().await?;
    let zone = api.create_zone("Holds").await?;
    let mut p = Provision::open(&db).await?;
    product(&mut p, &zone).await?;
    hold(
        &mut p,
        &zone,
        "h-1",
        ("app-1", "app-1"),
        "high",
        "operator",
        900,
        3600,
    )
    .await?;
    hold(
        &mut p,
        &zone,
        "h-2",
        ("app-2", "app-2"),
        "low",
        "any",
        900,
        1800,
    )
    .await?;
    hold(
        &mut p,
        &zone,
        "h-3",
        ("app-1", "app-1"),
        "high,low",
        "subject",
        -1,
        600,
    )
    .await?;
    hold(
        &mut p,
        &zone,
        "h-4",
        ("app-2", "app-2"),
        "high",
        "operator",
        900,
        60,
    )
    .await?;
    sqlx::query(
        "UPDATE caracal.step_up_challenges SET rejected_at = now(), decided_by = 'x' WHERE id = 'h-2'",
    )
    .execute(&mut db.admin().await?)
    .await?;
    let base = format!("/v1/zones/{zone}/approvals");

    let got = api.admin("GET", &format!("{base}/h-1"), None).await?;
    assert_eq!(got.status, 200);
    let row = got.json()?;
    for field in [
        "id",
        "zone_id",
        "session_id",
        "principal_id",
        "application_id",
        "approval_type",
        "tier",
        "approver_class",
        "privacy_mode",
        "subject_anchor",
        "binding",
        "metadata_json",
        "decision_reason",
        "created_at",
        "expires_at",
        "satisfied_at",
        "rejected_at",
        "consumed_at",
        "approver_subject_id",
        "state",
    ] {
        assert!(row.get(field).is_some(), "missing {field}: {row}");
    }
    assert_eq!(row["approval_type"], "human_approval");
    assert_eq!(row["state"], "pending");
    assert_eq!(row["privacy_mode"], "identified");
    assert_eq!(
        row["metadata_json"]["requested_scopes"],
        json!(["crm:read"])
    );
    let binding = row["binding"].as_str().unwrap_or_default();
    assert!(binding.len() == 64 && binding.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_problem(
        &api.admin("GET", &format!("{base}/nope"), None).await?,
        404,
        "approval_not_found",
    );

    let since = (chrono::Utc::now() - chrono::Duration::seconds(1000))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        .replace('+', "%2B");
    for (query, expected) in [
        ("", vec!["h-4", "h-3", "h-2", "h-1"]),
        ("state=pending", vec!["h-4", "h-1"]),
        ("state=rejected", vec!["h-2"]),
        ("state=expired", vec!["h-3"]),
        ("state=approved", vec![]),
        ("tier=high", vec!["h-4", "h-1"]),
        ("principal=app-2", vec!["h-4", "h-2"]),
        (&format!("since={since}") as &str, vec!["h-4", "h-3"]),
        (&format!("until={since}"), vec!["h-2", "h-1"]),
        (
            &format!("since={since}&state=pending&principal=app-2"),
            vec!["h-4"],
        ),
    ] {
        let page = api.admin("GET", &format!("{base}?{query}"), None).await?;
        assert_eq!(page.status, 200, "{query}: {:?}", page.json());
        assert_eq!(ids(&page.json()?), expected, "{query}");
    }
    for query in [
        "state=done",
        "since=yesterday",
        "until=2026-13-01",
        "approver=x",
    ] {
        assert_problem(
            &api.admin("GET", &format!("{base}?{query}"), None).await?,
            400,
            "invalid_query",
        );
    }
    assert_eq!(
        drain(&api, &format!("{base}?limit=3")).await?,
        vec!["h-4", "h-3", "h-2", "h-1"]
    );
    api.stop().await;
    Ok(())
}

/// Places `child` under `parent` in the agent tree.
async fn adopt(p: &mut Provision, zone: &str, parent: &str, child: &str) -> anyhow::Result<()> {
    sqlx::query("UPDATE agent_sessions SET parent_id = $2, depth = 1 WHERE id = $1")
        .bind(child)
        .bind(parent)
        .execute(p.conn())
        .await?;
    sqlx::query("UPDATE agent_sessions SET child_count = child_count + 1 WHERE id = $1")
        .bind(parent)
        .execute(p.conn())
        .await?;
    sqlx::query("INSERT INTO agent_topology (zone_id, parent_id, child_id) VALUES ($1, $2, $3)")
        .bind(zone)
        .bind(parent)
        .bind(child)
        .execute(p.conn())
        .await?;
    Ok(())
}

async fn bind(p: &mut Provision, session: &str, record: &str) -> anyhow::Result<()> {
    sqlx::query("UPDATE agent_sessions SET subject_authority_record_id = $2 WHERE id = $1")
        .bind(session)
        .bind(record)
        .execute(p.conn())
        .await?;
    Ok(())
}

async fn provider_grant(
    p: &mut Provision,
    zone: &str,
    id: &str,
    subject: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO provider_grants (id, zone_id, provider_id, subject_id, access_token_ct) \
         VALUES ($1, $2, 'prov-a', $3, '\\x01deadbeef')",
    )
    .bind(id)
    .bind(zone)
    .bind(subject)
    .execute(p.conn())
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_kill_switch_revokes_records_sessions_edges_and_grants_once() -> anyhow::Result<()> {
    let (db, api) = start().await?;
    let zone = api.create_zone("Kill").await?;
    let mut p = Provision::open(&db).await?;
    product(&mut p, &zone).await?;
    record(
        &mut p,
        &zone,
        ("r-1", "user", "u1"),
        Some("app-1"),
        "active",
        60,
    )
    .await?;
    record(
        &mut p,
        &zone,
        ("r-2", "user", "u1"),
        Some("app-2"),
        "active",
        50,
    )
    .await?;
    record(
        &mut p,
        &zone,
        ("r-8", "user", "u8"),
        Some("app-1"),
        "active",
        40,
    )
    .await?;
    record(
        &mut p,
        &zone,
        ("r-9", "user", "u9"),
        Some("app-2"),
        "active",
        30,
    )
    .await?;
    for (id, app) in [
        ("s-1", "app-1"),
        ("s-2", "app-2"),
        ("s-3", "app-2"),
        ("s-5", "app-1"),
        ("s-6", "app-1"),
        ("s-7", "app-1"),
        ("s-9", "app-1"),
    ] {
        p.agent_session(&zone, id, app, &[]).await?;
    }
    // s-1 (u1) has children s-2 (bound to u9's record, also used by the live s-3) and s-5
    // (bound to u8's record, used by nobody else); s-6 (u1) is suspended; s-7 (u1) ended
    // earlier; s-9 is nobody's.
    bind(&mut p, "s-1", "r-1").await?;
    bind(&mut p, "s-2", "r-9").await?;
    bind(&mut p, "s-3", "r-9").await?;
    bind(&mut p, "s-5", "r-8").await?;
    bind(&mut p, "s-6", "r-2").await?;
    bind(&mut p, "s-7", "r-1").await?;
    adopt(&mut p, &zone, "s-1", "s-2").await?;
    adopt(&mut p, &zone, "s-1", "s-5").await?;
    p.exec(
        "UPDATE agent_sessions SET status = 'suspended', status_version = 1 WHERE id = 's-6'; \
         UPDATE agent_sessions SET status = 'terminated', status_version = 1, terminated_at = now(), \
                termination_reason = 'requested' WHERE id = 's-7'",
    )
    .await?;
    p.edge(
        &zone,
        "e-1",
        ("s-1", "app-1"),
        ("s-3", "app-2"),
        &["a:read"],
        json!({}),
        600,
        None,
    )
    .await?;
    p.edge(
        &zone,
        "e-2",
        ("s-3", "app-2"),
        ("s-9", "app-1"),
        &["a:read"],
        json!({}),
        600,
        None,
    )
    .await?;
    provider_grant(&mut p, &zone, "pg-1", "u1").await?;
    provider_grant(&mut p, &zone, "pg-9", "u9").await?;
    let path = format!("/v1/zones/{zone}/subjects/revoke");

    let resp = api
        .admin(
            "POST",
            &path,
            Some(&json!({"subject_id": "u1", "reason": "lost laptop"})),
        )
        .await?;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    assert_eq!(
        resp.json()?,
        json!({
            "zone_id": zone,
            "subject_id": "u1",
            "revoked_authority_records": 2,
            "terminated_sessions": 4,
            "revoked_edges": 1,
            "revoked_provider_grants": 1,
            "epoch": 3,
        })
    );
    for (table, id, status) in [
        ("sessions", "r-1", "revoked"),
        ("sessions", "r-2", "revoked"),
        ("sessions", "r-8", "active"),
        ("sessions", "r-9", "active"),
        ("agent_sessions", "s-1", "terminated"),
        ("agent_sessions", "s-2", "terminated"),
        ("agent_sessions", "s-3", "active"),
        ("agent_sessions", "s-5", "terminated"),
        ("agent_sessions", "s-6", "terminated"),
        ("agent_sessions", "s-9", "active"),
        ("delegation_edges", "e-1", "revoked"),
        ("delegation_edges", "e-2", "active"),
        ("provider_grants", "pg-1", "revoked"),
        ("provider_grants", "pg-9", "active"),
    ] {
        assert_eq!(status_of(&db, table, id).await?, status, "{id}");
    }
    let sessions: Vec<(String, Option<String>, i64, i32)> = sqlx::query_as(
        "SELECT id, termination_reason, status_version, child_count FROM caracal.agent_sessions \
          WHERE id IN ('s-1', 's-2', 's-5', 's-6', 's-7') ORDER BY id",
    )
    .fetch_all(&mut db.admin().await?)
    .await?;
    assert_eq!(
        sessions,
        vec![
            ("s-1".into(), Some("subject_revoked".into()), 1, 0),
            ("s-2".into(), Some("parent_terminated".into()), 1, 0),
            ("s-5".into(), Some("parent_terminated".into()), 1, 0),
            ("s-6".into(), Some("subject_revoked".into()), 2, 0),
            ("s-7".into(), Some("requested".into()), 1, 0),
        ]
    );
    let reason: Option<String> =
        sqlx::query_scalar("SELECT revoked_reason FROM caracal.sessions WHERE id = 'r-2'")
            .fetch_one(&mut db.admin().await?)
            .await?;
    assert_eq!(reason.as_deref(), Some("lost laptop"));
    let edge: (i32, bool) = sqlx::query_as(
        "SELECT edge_version, revoked_at IS NOT NULL FROM caracal.delegation_edges WHERE id = 'e-1'",
    )
    .fetch_one(&mut db.admin().await?)
    .await?;
    assert_eq!(edge, (1, true));

    let z = zone.as_str();
    let revoke = "caracal.sessions.revoke";
    let lifecycle = "caracal.agents.lifecycle";
    let expected: BTreeMap<String, (String, Value)> = [
        ("revoke:record:r-1", revoke, json!({"zone_id": z, "session_id": "r-1", "reason": "subject_revoked"})),
        ("revoke:record:r-2", revoke, json!({"zone_id": z, "session_id": "r-2", "reason": "subject_revoked"})),
        ("revoke:agent:s-1:v1", revoke, json!({"zone_id": z, "agent_session_id": "s-1", "reason": "subject_revoked"})),
        ("revoke:agent:s-2:v1", revoke, json!({"zone_id": z, "agent_session_id": "s-2", "reason": "parent_terminated"})),
        ("revoke:agent:s-5:v1", revoke, json!({"zone_id": z, "agent_session_id": "s-5", "session_id": "r-8", "reason": "parent_terminated"})),
        ("revoke:agent:s-6:v2", revoke, json!({"zone_id": z, "agent_session_id": "s-6", "reason": "subject_revoked"})),
        ("revoke:edge:e-1", revoke, json!({"zone_id": z, "delegation_edge_id": "e-1", "reason": "subject_revoked"})),
        ("terminate:s-1:v1", lifecycle, json!({"event": "terminate", "zone_id": z, "agent_session_id": "s-1", "application_id": "app-1", "lifecycle": "task", "parent_id": null, "reason": "subject_revoked", "lease_generation": 0})),
        ("terminate:s-2:v1", lifecycle, json!({"event": "terminate", "zone_id": z, "agent_session_id": "s-2", "application_id": "app-2", "lifecycle": "task", "parent_id": "s-1", "reason": "parent_terminated", "lease_generation": 0})),
        ("terminate:s-5:v1", lifecycle, json!({"event": "terminate", "zone_id": z, "agent_session_id": "s-5", "application_id": "app-1", "lifecycle": "task", "parent_id": "s-1", "reason": "parent_terminated", "lease_generation": 0})),
        ("terminate:s-6:v2", lifecycle, json!({"event": "terminate", "zone_id": z, "agent_session_id": "s-6", "application_id": "app-1", "lifecycle": "task", "parent_id": null, "reason": "subject_revoked", "lease_generation": 0})),
        ("edge_revoke:e-1", "caracal.delegations.invalidate", json!({"event": "edge_revoke", "zone_id": z, "epoch": 3, "edge_id": "e-1", "affected_edges": 1, "reason": "subject_revoked"})),
    ]
    .into_iter()
    .map(|(key, topic, payload)| (key.to_owned(), (topic.to_owned(), payload)))
    .collect();
    assert_eq!(outbox(&db, &zone).await?, expected);
    wait_published(&db, &zone).await?;

    // Idempotent: nothing is left to change, nothing more is announced.
    let again = api
        .admin("POST", &path, Some(&json!({"subject_id": "u1"})))
        .await?;
    assert_eq!(again.status, 200);
    let again = again.json()?;
    assert_eq!(again["revoked_authority_records"], 0);
    assert_eq!(again["terminated_sessions"], 0);
    assert_eq!(again["revoked_edges"], 0);
    assert_eq!(again["revoked_provider_grants"], 0);
    assert_eq!(again["epoch"], Value::Null);
    assert_eq!(outbox(&db, &zone).await?.len(), expected.len());
    let epoch: i64 =
        sqlx::query_scalar("SELECT epoch FROM caracal.delegation_graph_epochs WHERE zone_id = $1")
            .bind(&zone)
            .fetch_one(&mut db.admin().await?)
            .await?;
    assert_eq!(epoch, 3);
    let unknown = api
        .admin("POST", &path, Some(&json!({"subject_id": "nobody"})))
        .await?;
    assert_eq!(unknown.status, 200);
    assert_eq!(unknown.json()?["revoked_authority_records"], 0);

    // Refusals.
    for body in [
        json!({}),
        json!({"subject_id": ""}),
        json!({"subject_id": "x".repeat(513)}),
        json!({"subject_id": "u1", "reason": "x".repeat(501)}),
        json!({"subject_id": "u1", "cascade": false}),
    ] {
        assert_problem(
            &api.admin("POST", &path, Some(&body)).await?,
            400,
            "invalid_body",
        );
    }
    let (read, _) = api.mint_token("read", None).await?;
    let (approve, _) = api.mint_token("approve", None).await?;
    let body = json!({"subject_id": "u9"});
    assert_problem(
        &api.call(&read, "POST", &path, Some(&body)).await?,
        403,
        "admin_token_read_only",
    );
    assert_problem(
        &api.call(&approve, "POST", &path, Some(&body)).await?,
        403,
        "admin_token_approve_only",
    );
    assert_problem(
        &api.admin("POST", "/v1/zones/nowhere/subjects/revoke", Some(&body))
            .await?,
        404,
        "zone_not_found",
    );
    assert_eq!(status_of(&db, "sessions", "r-9").await?, "active");
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn read_views_page_and_filter_records_and_agent_sessions() -> anyhow::Result<()> {
    let (db, api) = start().await?;
    let zone = api.create_zone("Views").await?;
    let other = api.create_zone("Other").await?;
    let mut p = Provision::open(&db).await?;
    product(&mut p, &zone).await?;
    record(
        &mut p,
        &zone,
        ("r-1", "user", "u1"),
        Some("app-1"),
        "active",
        50,
    )
    .await?;
    record(
        &mut p,
        &zone,
        ("r-2", "user", "u1"),
        Some("app-1"),
        "revoked",
        40,
    )
    .await?;
    record(
        &mut p,
        &zone,
        ("r-3", "application", "app-1"),
        Some("app-1"),
        "active",
        30,
    )
    .await?;
    record(
        &mut p,
        &zone,
        ("r-4", "user", "u2"),
        Some("app-2"),
        "expired",
        20,
    )
    .await?;
    p.application(&other, "app-x", "secret-x-0123456789", &[])
        .await?;
    record(
        &mut p,
        &other,
        ("r-x", "user", "u1"),
        Some("app-x"),
        "active",
        10,
    )
    .await?;
    for (id, app, rec) in [
        ("s-1", "app-1", "r-1"),
        ("s-2", "app-2", "r-3"),
        ("s-3", "app-1", "r-1"),
    ] {
        p.agent_session(&zone, id, app, &["ops"]).await?;
        bind(&mut p, id, rec).await?;
    }
    p.exec("UPDATE agent_sessions SET status = 'suspended', status_version = 1 WHERE id = 's-3'")
        .await?;
    let records = format!("/v1/zones/{zone}/authority-records");
    for (query, expected) in [
        ("", vec!["r-4", "r-3", "r-2", "r-1"]),
        ("subject_id=u1", vec!["r-2", "r-1"]),
        ("status=active", vec!["r-3", "r-1"]),
        ("status=expired", vec!["r-4"]),
        ("kind=application", vec!["r-3"]),
        ("kind=user&status=active", vec!["r-1"]),
        ("authority_record_id=r-2", vec!["r-2"]),
        ("authority_record_id=r-x", vec![]),
    ] {
        let page = api
            .admin("GET", &format!("{records}?{query}"), None)
            .await?;
        assert_eq!(page.status, 200, "{query}");
        assert_eq!(ids(&page.json()?), expected, "{query}");
    }
    let row = &api
        .admin("GET", &format!("{records}?authority_record_id=r-2"), None)
        .await?
        .json()?["items"][0];
    assert_eq!(row["kind"], "user");
    assert_eq!(row["session_type"], "user");
    assert_eq!(row["subject_id"], "u1");
    assert_eq!(row["status"], "revoked");
    assert!(row["revoked_at"].is_string());
    assert!(row.get("claims_json").is_none());
    assert_eq!(
        drain(&api, &format!("{records}?limit=3")).await?,
        vec!["r-4", "r-3", "r-2", "r-1"]
    );

    let sessions = format!("/v1/zones/{zone}/sessions");
    for (query, expected) in [
        ("", vec!["s-3", "s-2", "s-1"]),
        ("subject_id=u1", vec!["s-3", "s-1"]),
        ("subject_id=app-1", vec!["s-2"]),
        ("status=suspended", vec!["s-3"]),
        ("application_id=app-2", vec!["s-2"]),
        ("authority_record_id=r-1&status=active", vec!["s-1"]),
        ("subject_id=u2", vec![]),
    ] {
        let page = api
            .admin("GET", &format!("{sessions}?{query}"), None)
            .await?;
        assert_eq!(page.status, 200, "{query}");
        assert_eq!(ids(&page.json()?), expected, "{query}");
    }
    let row = &api
        .admin("GET", &format!("{sessions}?status=suspended"), None)
        .await?
        .json()?["items"][0];
    assert_eq!(row["agent_session_id"], "s-3");
    assert_eq!(row["subject_authority_record_id"], "r-1");
    assert_eq!(row["subject_id"], "u1");
    assert_eq!(row["labels"], json!(["ops"]));
    assert_eq!(row["lifecycle"], "task");
    assert_eq!(
        drain(&api, &format!("{sessions}?limit=2")).await?,
        vec!["s-3", "s-2", "s-1"]
    );

    for (path, query, code) in [
        (&records, "kind=robot", "invalid_query"),
        (&records, "status=gone", "invalid_query"),
        (&records, "session_id=r-1", "invalid_query"),
        (&records, "limit=501", "invalid_query"),
        (&records, "cursor=%%%", "invalid_cursor"),
        (&sessions, "status=revoked", "invalid_query"),
        (&sessions, "lifecycle=task", "invalid_query"),
    ] {
        assert_problem(
            &api.admin("GET", &format!("{path}?{query}"), None).await?,
            400,
            code,
        );
    }
    // Another zone's rows never show.
    let theirs = api
        .admin("GET", &format!("/v1/zones/{other}/authority-records"), None)
        .await?;
    assert_eq!(ids(&theirs.json()?), vec!["r-x"]);
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn every_access_route_checks_capability_zone_and_bearer_and_never_shows_a_secret()
-> anyhow::Result<()> {
    let (db, api) = start().await?;
    let zone = api.create_zone("Routes").await?;
    let other = api.create_zone("Other").await?;
    let mut p = Provision::open(&db).await?;
    product(&mut p, &zone).await?;
    provider_grant(&mut p, &zone, "pg-1", "u1").await?;
    hold(
        &mut p,
        &zone,
        "h-1",
        ("app-1", "app-1"),
        "high",
        "operator",
        900,
        10,
    )
    .await?;
    let (read, _) = api.mint_token("read", None).await?;
    let (write, _) = api.mint_token("write", None).await?;
    let (approve, _) = api.mint_token("approve", None).await?;
    let (zoned, _) = api.mint_token("write", Some(&other)).await?;
    let (zoned_approve, _) = api.mint_token("approve", Some(&other)).await?;
    let grant = json!({"application_id": "app-1", "user_id": "u1", "resource_id": "res-a", "scopes": ["a:read"]});
    let issuer =
        json!({"issuer": "https://i.example", "jwks_url": "https://i.example/k", "audience": "a"});

    // (method, path below the zone, body, kind): kind is "read", "write" or "decide".
    let routes: Vec<(&str, &str, Option<Value>, &str)> = vec![
        ("GET", "grants", None, "read"),
        ("POST", "grants", Some(grant.clone()), "write"),
        ("GET", "grants/g-1", None, "read"),
        ("DELETE", "grants/g-1", None, "write"),
        ("GET", "subject-issuers", None, "read"),
        ("POST", "subject-issuers", Some(issuer.clone()), "write"),
        ("GET", "subject-issuers/i-1", None, "read"),
        (
            "PATCH",
            "subject-issuers/i-1",
            Some(json!({"audience": "b"})),
            "write",
        ),
        ("DELETE", "subject-issuers/i-1", None, "write"),
        ("GET", "approvals", None, "read"),
        ("GET", "approvals/h-1", None, "read"),
        ("POST", "approvals/h-1/approve", Some(json!({})), "decide"),
        ("POST", "approvals/h-1/reject", Some(json!({})), "decide"),
        (
            "POST",
            "subjects/revoke",
            Some(json!({"subject_id": "u1"})),
            "write",
        ),
        ("GET", "authority-records", None, "read"),
        ("GET", "sessions", None, "read"),
    ];
    let mut bodies: Vec<String> = Vec::new();
    for (method, tail, body, kind) in &routes {
        let path = format!("/v1/zones/{zone}/{tail}");
        let body = body.as_ref();
        let none = http::request(api.addr, method, &path, &[], "").await?;
        assert_problem(&none, 401, "invalid_admin_token");
        let outsider = if *kind == "decide" {
            &zoned_approve
        } else {
            &zoned
        };
        let mismatch = api.call(outsider, method, &path, body).await?;
        assert_problem(&mismatch, 403, "admin_token_zone_mismatch");
        let unknown = api
            .admin(method, &format!("/v1/zones/nowhere/{tail}"), body)
            .await?;
        assert_problem(&unknown, 404, "zone_not_found");
        let expectations: [(&str, Option<&str>); 3] = match *kind {
            "read" => [(&read, None), (&write, None), (&approve, None)],
            "write" => [
                (&read, Some("admin_token_read_only")),
                (&approve, Some("admin_token_approve_only")),
                (&write, None),
            ],
            _ => [
                (&read, Some("admin_token_read_only")),
                (&write, Some("approve_capability_required")),
                (&approve, None),
            ],
        };
        for (token, refusal) in expectations {
            let resp = api.call(token, method, &path, body).await?;
            match refusal {
                Some(code) => {
                    assert_problem(&resp, 403, code);
                }
                None => assert!(
                    resp.status < 500 && resp.status != 401 && resp.status != 403,
                    "{method} {path}: {}",
                    resp.status
                ),
            }
            bodies.push(String::from_utf8_lossy(&resp.body).into_owned());
        }
        for resp in [none, mismatch, unknown] {
            bodies.push(String::from_utf8_lossy(&resp.body).into_owned());
        }
    }
    // No bearer, no client secret, no sealed provider token in any answer.
    for secret in [
        BOOTSTRAP_TOKEN,
        read.as_str(),
        write.as_str(),
        approve.as_str(),
        zoned.as_str(),
        zoned_approve.as_str(),
        "secret-one-0123456789",
        "deadbeef",
        "access_token",
    ] {
        assert!(
            !bodies.iter().any(|b| b.contains(secret)),
            "an answer contains a secret"
        );
    }
    api.stop().await;
    Ok(())
}
