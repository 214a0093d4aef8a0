//! Policy sets, their versions, activation and propagation status, and the policy templates
//! (wire-contract §6.3, §6.4; authority §5.2, §5.7) against real Postgres, Redis and, for
//! propagation, a real STS.
//!
//! Redis is shared by every test of the binary, and `caracal:instances:<role>` lists every
//! live STS of every test. A test that activates or reads propagation therefore runs its API
//! (and STS) on a Redis database of its own (`REDIS_DB_*`), flushed when the test starts.

use std::time::Duration;
use tests_harness::api::assert_problem;

use serde_json::{Value, json};
use sqlx::Row;
use tests_harness::{
    TestDb,
    api::{ApiFixture, BOOTSTRAP_TOKEN},
    http,
    provision::Provision,
    sts::{GRANT, StsFixture},
};

/// The Redis databases of the tests below (one each; nothing else in the binary uses them).
const REDIS_DB_FLOW: u8 = 5;
const REDIS_DB_ONE_ACTIVE: u8 = 6;
const REDIS_DB_REPLICAS: u8 = 7;
const REDIS_DB_ERRORS: u8 = 8;

/// The STS fixture's `STREAMS_HMAC_KEY`: the API signs what the STS verifies.
const STREAMS_KEY: &str = "3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d";

async fn redis_conn(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

async fn start() -> anyhow::Result<(TestDb, ApiFixture)> {
    let db = TestDb::migrated().await?;
    let api = ApiFixture::start(&db).await?;
    Ok((db, api))
}

/// An API whose Redis is database `redis_db` (and whose streams are signed like the STS's).
async fn start_isolated(redis_db: u8) -> anyhow::Result<(TestDb, ApiFixture, String)> {
    let redis = tests_harness::sts::isolated_redis(redis_db).await?;
    let db = TestDb::migrated().await?;
    let api = ApiFixture::start_with(
        &db,
        &[
            ("REDIS_URL", redis.as_str()),
            ("STREAMS_HMAC_KEY", STREAMS_KEY),
        ],
    )
    .await?;
    Ok((db, api, redis))
}

fn ok(resp: &http::HttpResponse, status: u16) -> Value {
    let body = resp.json().unwrap_or(Value::Null);
    assert_eq!(resp.status, status, "{body}");
    body
}

fn s(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// Creates a policy; returns its first version id.
async fn create_policy(
    api: &ApiFixture,
    zone: &str,
    name: &str,
    content: &str,
) -> anyhow::Result<String> {
    let resp = api
        .admin(
            "POST",
            &format!("/v1/zones/{zone}/policies"),
            Some(&json!({"name": name, "content": content})),
        )
        .await?;
    Ok(s(&ok(&resp, 201)["version_id"]))
}

async fn create_set(api: &ApiFixture, zone: &str, name: &str) -> anyhow::Result<Value> {
    let resp = api
        .admin(
            "POST",
            &format!("/v1/zones/{zone}/policy-sets"),
            Some(&json!({"name": name})),
        )
        .await?;
    Ok(ok(&resp, 201))
}

async fn add_version(
    api: &ApiFixture,
    zone: &str,
    set: &str,
    policy_versions: &[&str],
) -> anyhow::Result<http::HttpResponse> {
    let manifest: Vec<Value> = policy_versions
        .iter()
        .map(|pv| json!({"policy_version_id": pv}))
        .collect();
    api.admin(
        "POST",
        &format!("/v1/zones/{zone}/policy-sets/{set}/versions"),
        Some(&json!({"manifest": manifest})),
    )
    .await
}

async fn activate(api: &ApiFixture, zone: &str, set: &str, version: &str) -> anyhow::Result<Value> {
    let resp = api
        .admin(
            "POST",
            &format!("/v1/zones/{zone}/policy-sets/{set}/activate"),
            Some(&json!({"version_id": version})),
        )
        .await?;
    Ok(ok(&resp, 202))
}

async fn status(api: &ApiFixture, path: &str) -> anyhow::Result<Value> {
    Ok(ok(&api.admin("GET", path, None).await?, 200))
}

/// Polls `status_url` until `propagation_status` is `want` (at most ~10 s).
async fn wait_for(api: &ApiFixture, status_url: &str, want: &str) -> anyhow::Result<Value> {
    let mut last = Value::Null;
    for _ in 0..100 {
        last = status(api, status_url).await?;
        if last["propagation_status"] == want {
            return Ok(last);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("propagation_status never became {want}: {last}");
}

/// A grants document owning `resource://crm` for `app`.
fn grants_document(app: &str) -> String {
    format!(
        "# caracal:data-document\npackage caracal.authz\n\nimport rego.v1\n\n\
         app_ids := {{\"crm-agent\": \"{app}\"}}\n\n\
         grants := {{\"resource://crm\": {{\"application\": \"crm-agent\", \"roles\": {{\"reader\": [\"crm:read\"]}}}}}}\n"
    )
}

const FREEZE: &str = "# caracal:data-document\npackage caracal.authz\n\nimport rego.v1\n\nrestrict := [\"incident\"]\n";

fn bootstrap_form<'a>(zone: &'a str, app: &'a str, secret: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", GRANT),
        ("zone_id", zone),
        ("application_id", app),
        ("client_secret", secret),
        ("scope", "agent:lifecycle"),
        ("resource", "resource://crm"),
    ]
}

#[tokio::test]
async fn activation_loads_on_a_real_sts_and_deleting_the_set_drops_the_zone_to_deny_all()
-> anyhow::Result<()> {
    tests_harness::init_logs();
    let (db, api, redis) = start_isolated(REDIS_DB_FLOW).await?;
    let sts = StsFixture::start_with(&db, &[("REDIS_URL", redis.as_str())]).await?;
    let mut bodies: Vec<String> = Vec::new();

    let zone = api.create_zone("Flow").await?;
    let app = ok(
        &api.admin(
            "POST",
            &format!("/v1/zones/{zone}/applications"),
            Some(&json!({"name": "crm-agent", "registration_method": "managed"})),
        )
        .await?,
        201,
    );
    let (app_id, secret) = (s(&app["id"]), s(&app["client_secret"]));
    let mut p = Provision::open(&db).await?;
    p.provider_none(&zone, "p-none").await?;
    p.resource(
        &zone,
        "crm",
        "resource://crm",
        &["crm:read"],
        Some("http://127.0.0.1:9/"),
        "p-none",
    )
    .await?;

    let pv = create_policy(&api, &zone, "grants", &grants_document(&app_id)).await?;
    let set = create_set(&api, &zone, "application-grant-policy").await?;
    bodies.push(set.to_string());
    let set_id = s(&set["id"]);
    assert_eq!(set["zone_id"], zone.as_str());
    assert_eq!(set["name"], "application-grant-policy");
    assert!(set["active_version_id"].is_null(), "{set}");

    let created = ok(&add_version(&api, &zone, &set_id, &[&pv]).await?, 201);
    bodies.push(created.to_string());
    let version = s(&created["version_id"]);
    assert_eq!(created["id"], version.as_str());
    assert_eq!(created["policy_set_id"], set_id.as_str());
    assert_eq!(created["version"], 1);
    assert_eq!(created["manifest_json"], json!([{"policy_version_id": pv}]));
    assert_eq!(
        created["manifest_sha256"],
        control_policy::manifest_sha256(&[pv.as_str()])
    );
    assert_eq!(created["schema_version"], control_policy::SCHEMA_VERSION);
    assert_eq!(created["active"], false);

    // Not active yet: the zone has no binding, so the STS denies with the fallback.
    let before = status(
        &api,
        &format!("/v1/zones/{zone}/policy-sets/{set_id}/activation-status?version_id={version}"),
    )
    .await?;
    assert_eq!(before["propagation_status"], "waiting_for_activation");
    assert_eq!(before["active"], false);
    let denied = sts.token(&bootstrap_form(&zone, &app_id, &secret)).await?;
    assert_eq!(denied.status, 403);
    assert_eq!(
        denied.json()?["error_description"],
        "policy denied (no_active_policy_set)"
    );

    let activation = activate(&api, &zone, &set_id, &version).await?;
    bodies.push(activation.to_string());
    assert_eq!(activation["activated"], true);
    assert_eq!(activation["version_id"], version.as_str());
    let outbox_id = s(&activation["outbox_id"]);
    let status_url = s(&activation["status_url"]);
    assert_eq!(
        status_url,
        format!(
            "/v1/zones/{zone}/policy-sets/{set_id}/activation-status?version_id={version}&outbox_id={outbox_id}"
        )
    );
    let loaded = wait_for(&api, &status_url, "loaded").await?;
    bodies.push(loaded.to_string());
    assert_eq!(loaded["zone_id"], zone.as_str());
    assert_eq!(loaded["policy_set_id"], set_id.as_str());
    assert_eq!(loaded["version_id"], version.as_str());
    assert_eq!(loaded["active"], true);
    assert_eq!(loaded["active_version_id"], version.as_str());
    assert_eq!(loaded["manifest_sha256"], created["manifest_sha256"]);
    assert_eq!(loaded["outbox"]["id"], outbox_id.as_str());
    assert_eq!(loaded["outbox"]["state"], "published");
    assert!(loaded["outbox"]["dispatched_at"].is_string(), "{loaded}");
    assert_eq!(loaded["sts"]["live"], 1, "{loaded}");
    assert_eq!(loaded["sts"]["loaded"], 1, "{loaded}");
    assert_eq!(loaded["sts"]["instances"][0]["state"], "loaded");
    assert_eq!(
        loaded["sts"]["instances"][0]["manifest_sha256"],
        created["manifest_sha256"]
    );
    assert_eq!(loaded["gateways"]["live"], 0);

    // The STS decides with the activated grants.
    let allowed = sts.token(&bootstrap_form(&zone, &app_id, &secret)).await?;
    assert_eq!(allowed.status, 200, "{:?}", allowed.json());

    // Rows carry the active version; without a query the status follows it.
    let listed = status(&api, &format!("/v1/zones/{zone}/policy-sets")).await?;
    bodies.push(listed.to_string());
    assert_eq!(listed["items"][0]["active_version_id"], version.as_str());
    assert!(listed["next_cursor"].is_null());
    let got = status(&api, &format!("/v1/zones/{zone}/policy-sets/{set_id}")).await?;
    assert_eq!(got["active_version_id"], version.as_str());
    assert!(got["activated_at"].is_string());
    assert_eq!(got["latest_version"], 1);
    let by_default = status(
        &api,
        &format!("/v1/zones/{zone}/policy-sets/{set_id}/activation-status"),
    )
    .await?;
    assert_eq!(by_default["version_id"], version.as_str());
    assert_eq!(by_default["propagation_status"], "loaded");
    assert_eq!(by_default["outbox"]["id"], outbox_id.as_str());
    let versions = status(
        &api,
        &format!("/v1/zones/{zone}/policy-sets/{set_id}/versions"),
    )
    .await?;
    assert_eq!(versions["items"][0]["id"], version.as_str());
    assert_eq!(versions["items"][0]["active"], true);
    let one = status(
        &api,
        &format!("/v1/zones/{zone}/policy-sets/{set_id}/versions/{version}"),
    )
    .await?;
    bodies.push(one.to_string());
    assert_eq!(one["manifest_sha256"], created["manifest_sha256"]);

    // Deleting the active set drops the zone to deny-all at the STS.
    let deleted = api
        .admin(
            "DELETE",
            &format!("/v1/zones/{zone}/policy-sets/{set_id}"),
            None,
        )
        .await?;
    assert_eq!(deleted.status, 204);
    let mut deny_all = false;
    for _ in 0..100 {
        let resp = sts.token(&bootstrap_form(&zone, &app_id, &secret)).await?;
        if resp.status == 403 {
            assert_eq!(
                resp.json()?["error_description"],
                "policy denied (no_active_policy_set)"
            );
            deny_all = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(deny_all, "the STS kept the deleted set's bundle");
    assert_problem(
        &api.admin(
            "GET",
            &format!("/v1/zones/{zone}/policy-sets/{set_id}"),
            None,
        )
        .await?,
        404,
        "policy_set_not_found",
    );
    let listed = status(&api, &format!("/v1/zones/{zone}/policy-sets")).await?;
    assert_eq!(listed["items"], json!([]));

    // The invalidations and the admin audit rows.
    let mut admin = db.admin().await?;
    let rows = sqlx::query(
        "SELECT dedupe_key, payload_json, status FROM caracal.event_outbox \
          WHERE zone_id = $1 AND topic = 'caracal.policy.invalidate' ORDER BY created_at",
    )
    .bind(&zone)
    .fetch_all(&mut admin)
    .await?;
    assert_eq!(rows.len(), 2);
    let payload: Value = rows[0].get("payload_json");
    assert_eq!(
        payload,
        json!({"zone_id": zone, "policy_set_id": set_id, "policy_set_version_id": version})
    );
    let payload: Value = rows[1].get("payload_json");
    assert_eq!(payload, json!({"zone_id": zone, "policy_set_id": set_id}));
    assert_eq!(
        rows[1].get::<String, _>("dedupe_key"),
        format!("deactivate:{zone}:{set_id}")
    );
    let audited: Vec<(String, i32)> = sqlx::query_as(
        "SELECT entity_type, status_code FROM caracal.admin_audit_events \
          WHERE zone_id = $1 AND entity_type LIKE 'policy_set%' ORDER BY chain_seq",
    )
    .bind(&zone)
    .fetch_all(&mut admin)
    .await?;
    assert_eq!(
        audited,
        vec![
            ("policy_set".to_owned(), 201),
            ("policy_set_version".to_owned(), 201),
            ("policy_set".to_owned(), 202),
            ("policy_set".to_owned(), 204),
        ]
    );

    for body in &bodies {
        assert!(!body.contains(&secret), "client secret leaked: {body}");
        assert!(!body.contains(BOOTSTRAP_TOKEN), "token leaked: {body}");
    }
    sts.stop().await;
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn activating_another_set_nulls_the_first_sets_active_version() -> anyhow::Result<()> {
    let (db, api, _redis) = start_isolated(REDIS_DB_ONE_ACTIVE).await?;
    let zone = api.create_zone("One Active").await?;
    let pv = create_policy(&api, &zone, "grants", &grants_document("app-1")).await?;
    let a = s(&create_set(&api, &zone, "a").await?["id"]);
    let b = s(&create_set(&api, &zone, "b").await?["id"]);
    let va = s(&ok(&add_version(&api, &zone, &a, &[&pv]).await?, 201)["version_id"]);
    let vb = s(&ok(&add_version(&api, &zone, &b, &[&pv]).await?, 201)["version_id"]);

    let active_of = |listed: &Value, set: &str| {
        listed["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|row| row["id"] == set)
            .map(|row| row["active_version_id"].clone())
            .unwrap_or(Value::Null)
    };
    let first = activate(&api, &zone, &a, &va).await?;
    let listed = status(&api, &format!("/v1/zones/{zone}/policy-sets")).await?;
    assert_eq!(active_of(&listed, &a), json!(va));
    assert_eq!(active_of(&listed, &b), Value::Null);

    activate(&api, &zone, &b, &vb).await?;
    let listed = status(&api, &format!("/v1/zones/{zone}/policy-sets")).await?;
    assert_eq!(active_of(&listed, &a), Value::Null);
    assert_eq!(active_of(&listed, &b), json!(vb));
    let a_row = status(&api, &format!("/v1/zones/{zone}/policy-sets/{a}")).await?;
    assert!(a_row["active_version_id"].is_null() && a_row["activated_at"].is_null());
    let a_status = status(&api, first["status_url"].as_str().unwrap_or_default()).await?;
    assert_eq!(a_status["propagation_status"], "waiting_for_activation");
    assert_eq!(a_status["active"], false);
    assert!(a_status["active_version_id"].is_null());
    // The outbox id alone names the version it announced.
    let by_outbox = status(
        &api,
        &format!(
            "/v1/zones/{zone}/policy-sets/{a}/activation-status?outbox_id={}",
            s(&first["outbox_id"])
        ),
    )
    .await?;
    assert_eq!(by_outbox["version_id"], json!(va));
    assert_eq!(by_outbox["outbox"]["id"], first["outbox_id"]);
    assert_eq!(by_outbox["propagation_status"], "waiting_for_activation");

    // Re-activating is a new transition with its own outbox row and dedupe key.
    let again = activate(&api, &zone, &a, &va).await?;
    let third = activate(&api, &zone, &a, &va).await?;
    assert_ne!(again["outbox_id"], third["outbox_id"]);
    let listed = status(&api, &format!("/v1/zones/{zone}/policy-sets")).await?;
    assert_eq!(active_of(&listed, &a), json!(va));
    assert_eq!(active_of(&listed, &b), Value::Null);

    let mut admin = db.admin().await?;
    let active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM caracal.policy_set_bindings WHERE zone_id = $1 AND active_version_id IS NOT NULL",
    )
    .bind(&zone)
    .fetch_one(&mut admin)
    .await?;
    assert_eq!(active, 1);
    let row = sqlx::query(
        "SELECT o.dedupe_key, o.payload_json, \
                floor(extract(epoch FROM b.updated_at) * 1000000)::bigint AS micros \
           FROM caracal.event_outbox o, caracal.policy_set_bindings b \
          WHERE o.id = $1 AND b.zone_id = $2 AND b.policy_set_id = $3",
    )
    .bind(s(&third["outbox_id"]))
    .bind(&zone)
    .bind(&a)
    .fetch_one(&mut admin)
    .await?;
    let micros: i64 = row.get("micros");
    assert_eq!(
        row.get::<String, _>("dedupe_key"),
        format!("activate:{zone}:{va}:{micros}")
    );
    assert_eq!(
        row.get::<Value, _>("payload_json"),
        json!({"zone_id": zone, "policy_set_id": a, "policy_set_version_id": va})
    );

    // Deleting an inactive set leaves the active one alone and announces nothing.
    let before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM caracal.event_outbox WHERE zone_id = $1")
            .bind(&zone)
            .fetch_one(&mut admin)
            .await?;
    let deleted = api
        .admin("DELETE", &format!("/v1/zones/{zone}/policy-sets/{b}"), None)
        .await?;
    assert_eq!(deleted.status, 204);
    let after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM caracal.event_outbox WHERE zone_id = $1")
            .bind(&zone)
            .fetch_one(&mut admin)
            .await?;
    assert_eq!(before, after);
    let a_row = status(&api, &format!("/v1/zones/{zone}/policy-sets/{a}")).await?;
    assert_eq!(a_row["active_version_id"], json!(va));
    api.stop().await;
    Ok(())
}

/// Registers `instance` of `service` as live (or as last seen `age_ms` ago) and, when given,
/// its report for `zone`.
async fn fake_replica(
    conn: &mut redis::aio::MultiplexedConnection,
    service: &str,
    instance: &str,
    age_ms: i64,
    report: Option<(&str, &Value)>,
) -> anyhow::Result<()> {
    let now = chrono::Utc::now().timestamp_millis();
    redis::cmd("ZADD")
        .arg(format!("caracal:instances:{service}"))
        .arg(now - age_ms)
        .arg(instance)
        .query_async::<()>(conn)
        .await?;
    if let Some((zone, report)) = report {
        redis::cmd("HSET")
            .arg(format!("caracal:policy:status:{zone}"))
            .arg(format!("{service}/{instance}"))
            .arg(report.to_string())
            .query_async::<()>(conn)
            .await?;
    }
    Ok(())
}

fn report(version: &str, state: &str, error: Option<&str>) -> Value {
    let mut r = json!({
        "policy_set_version_id": version,
        "manifest_sha256": "",
        "state": state,
        "at": "2026-01-01T00:00:00.000Z",
    });
    if let Some(error) = error {
        r["error"] = json!(error);
    }
    r
}

#[tokio::test]
async fn propagation_status_follows_the_outbox_and_every_live_replica() -> anyhow::Result<()> {
    let (db, api, redis) = start_isolated(REDIS_DB_REPLICAS).await?;
    let mut conn = redis_conn(&redis).await?;
    let zone = api.create_zone("Replicas").await?;
    let pv = create_policy(&api, &zone, "grants", &grants_document("app-1")).await?;
    let set = s(&create_set(&api, &zone, "main").await?["id"]);
    let v = s(&ok(&add_version(&api, &zone, &set, &[&pv]).await?, 201)["version_id"]);
    let activation = activate(&api, &zone, &set, &v).await?;
    let url = s(&activation["status_url"]);

    // Published, but no STS is live: nothing can have loaded it.
    let none_live = wait_for(&api, &url, "waiting_for_sts").await?;
    assert_eq!(none_live["outbox"]["state"], "published");
    assert_eq!(none_live["sts"]["live"], 0);

    // A live STS that has not reported; then one that has.
    fake_replica(&mut conn, "sts", "sts-a", 0, None).await?;
    let waiting = status(&api, &url).await?;
    assert_eq!(waiting["propagation_status"], "waiting_for_sts");
    assert_eq!(waiting["sts"]["instances"][0]["state"], "waiting");
    fake_replica(
        &mut conn,
        "sts",
        "sts-a",
        0,
        Some((&zone, &report(&v, "loaded", None))),
    )
    .await?;
    assert_eq!(status(&api, &url).await?["propagation_status"], "loaded");

    // A second STS still on an older version holds it back.
    fake_replica(
        &mut conn,
        "sts",
        "sts-b",
        0,
        Some((&zone, &report("older", "loaded", None))),
    )
    .await?;
    let partial = status(&api, &url).await?;
    assert_eq!(partial["propagation_status"], "waiting_for_sts");
    assert_eq!(partial["sts"]["live"], 2);
    assert_eq!(partial["sts"]["loaded"], 1);
    assert_eq!(
        partial["sts"]["instances"][1]["reported_version_id"],
        "older"
    );
    fake_replica(
        &mut conn,
        "sts",
        "sts-b",
        0,
        Some((&zone, &report(&v, "loaded", None))),
    )
    .await?;
    assert_eq!(status(&api, &url).await?["propagation_status"], "loaded");

    // Gateways count too.
    fake_replica(&mut conn, "gateway", "gw-a", 0, None).await?;
    assert_eq!(
        status(&api, &url).await?["propagation_status"],
        "waiting_for_sts"
    );
    fake_replica(
        &mut conn,
        "gateway",
        "gw-a",
        0,
        Some((&zone, &report(&v, "loaded", None))),
    )
    .await?;
    let all = status(&api, &url).await?;
    assert_eq!(all["propagation_status"], "loaded");
    assert_eq!(all["gateways"]["loaded"], 1);

    // A replica that stopped heartbeating is not waited for, even when it failed.
    fake_replica(
        &mut conn,
        "gateway",
        "gw-gone",
        120_000,
        Some((&zone, &report(&v, "failed", Some("gone")))),
    )
    .await?;
    assert_eq!(status(&api, &url).await?["propagation_status"], "loaded");

    // Any live replica failing the version fails the activation.
    fake_replica(
        &mut conn,
        "gateway",
        "gw-b",
        0,
        Some((
            &zone,
            &report(&v, "failed", Some("data root risk has the wrong shape")),
        )),
    )
    .await?;
    let failed = status(&api, &url).await?;
    assert_eq!(failed["propagation_status"], "failed");
    assert_eq!(failed["gateways"]["failed"], 1);
    let gw_b = failed["gateways"]["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["instance"] == "gw-b")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(gw_b["state"], "failed");
    assert_eq!(gw_b["error"], "data root risk has the wrong shape");
    fake_replica(
        &mut conn,
        "gateway",
        "gw-b",
        0,
        Some((&zone, &report(&v, "loaded", None))),
    )
    .await?;

    // An unpublished announcement holds the status at waiting_for_outbox; a dead one does not
    // (the replicas' binding poll loads the version without it).
    let outbox_id = s(&activation["outbox_id"]);
    let mut admin = db.admin().await?;
    sqlx::query(
        "UPDATE caracal.event_outbox SET status = 'pending', published_at = NULL, \
           available_at = now() + interval '1 hour', last_error = 'connection refused' WHERE id = $1",
    )
    .bind(&outbox_id)
    .execute(&mut admin)
    .await?;
    let pending = status(&api, &url).await?;
    assert_eq!(pending["propagation_status"], "waiting_for_outbox");
    assert_eq!(pending["outbox"]["state"], "pending");
    assert_eq!(pending["outbox"]["last_error"], "connection refused");
    assert!(pending["outbox"]["dispatched_at"].is_null());
    sqlx::query("UPDATE caracal.event_outbox SET status = 'dead' WHERE id = $1")
        .bind(&outbox_id)
        .execute(&mut admin)
        .await?;
    let dead = status(&api, &url).await?;
    assert_eq!(dead["outbox"]["state"], "dead");
    assert_eq!(dead["propagation_status"], "loaded");

    // Status reports are per zone: another zone's reports do not count.
    let other = api.create_zone("Other").await?;
    fake_replica(
        &mut conn,
        "sts",
        "sts-a",
        0,
        Some((&other, &report(&v, "failed", None))),
    )
    .await?;
    assert_eq!(status(&api, &url).await?["propagation_status"], "loaded");
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn version_creation_refuses_bad_manifests_and_unbuildable_bundles() -> anyhow::Result<()> {
    let (db, api) = start().await?;
    let zone = api.create_zone("Manifests").await?;
    let other = api.create_zone("Elsewhere").await?;
    let pv = create_policy(&api, &zone, "grants", &grants_document("app-1")).await?;
    let foreign = create_policy(&api, &other, "grants", &grants_document("app-2")).await?;
    let set = s(&create_set(&api, &zone, "main").await?["id"]);
    let path = format!("/v1/zones/{zone}/policy-sets/{set}/versions");

    // Bodies: 400 invalid_body.
    let many: Vec<Value> = (0..257)
        .map(|i| json!({"policy_version_id": format!("pv-{i}")}))
        .collect();
    for (body, field) in [
        (json!({}), ""),
        (json!({"manifest": []}), "manifest"),
        (json!({"manifest": many}), "manifest"),
        (
            json!({"manifest": [{"policy_version_id": pv}, {"policy_version_id": pv}]}),
            "manifest[1].policy_version_id",
        ),
        (
            json!({"manifest": [{"policy_version_id": ""}]}),
            "manifest[0].policy_version_id",
        ),
        (json!({"manifest": [{"policy_version_id": pv, "x": 1}]}), ""),
        (
            json!({"manifest": [{"policy_version_id": pv}], "extra": true}),
            "",
        ),
        (json!({"manifest": [pv]}), ""),
    ] {
        let resp = api.admin("POST", &path, Some(&body)).await?;
        let problem = assert_problem(&resp, 400, "invalid_body");
        if !field.is_empty() {
            assert_eq!(problem["details"]["issues"][0]["path"], field, "{problem}");
        }
    }

    // Versions that are not the zone's, or not usable: 422 invalid_policy_contract.
    let archived = create_policy(&api, &zone, "old", &grants_document("app-3")).await?;
    let archived_policy: String = {
        let mut admin = db.admin().await?;
        sqlx::query_scalar("SELECT policy_id FROM caracal.policy_versions WHERE id = $1")
            .bind(&archived)
            .fetch_one(&mut admin)
            .await?
    };
    assert_eq!(
        api.admin(
            "DELETE",
            &format!("/v1/zones/{zone}/policies/{archived_policy}"),
            None
        )
        .await?
        .status,
        204
    );
    let mut p = Provision::open(&db).await?;
    p.exec(&format!(
        "INSERT INTO policies (id, zone_id, name) VALUES ('legacy', '{zone}', 'legacy'); \
         INSERT INTO policy_versions (id, zone_id, policy_id, version, content, content_sha256, schema_version) \
         VALUES ('legacy-v1', '{zone}', 'legacy', 1, 'x', '{}', '2025-01-01')",
        control_policy::content_sha256("x")
    ))
    .await?;
    for (manifest, description, index) in [
        (vec!["no-such-version"], "unknown_policy_version", json!(0)),
        (
            vec![pv.as_str(), foreign.as_str()],
            "unknown_policy_version",
            json!(1),
        ),
        (vec![archived.as_str()], "policy_archived", json!(0)),
        (
            vec![pv.as_str(), "legacy-v1"],
            "mixed_schema_versions",
            json!(1),
        ),
        (
            vec!["legacy-v1"],
            "unsupported_schema_version:2025-01-01",
            Value::Null,
        ),
    ] {
        let problem = assert_problem(
            &add_version(&api, &zone, &set, &manifest).await?,
            422,
            "invalid_policy_contract",
        );
        assert_eq!(problem["error_description"], description, "{problem}");
        assert_eq!(problem["details"]["index"], index, "{problem}");
        let text = problem.to_string();
        assert!(
            !text.contains("no-such-version") && !text.contains(&foreign),
            "{text}"
        );
    }

    // Documents that validate one by one but do not build together: 422 invalid_policy_bundle.
    let bad_risk = create_policy(
        &api,
        &zone,
        "bad-risk",
        "# caracal:data-document\npackage caracal.authz\n\nimport rego.v1\n\nrisk := [{\"scope\": \"crm:read\", \"tier\": 3}]\n",
    )
    .await?;
    let freeze_a = create_policy(&api, &zone, "freeze-a", FREEZE).await?;
    let freeze_b = create_policy(
        &api,
        &zone,
        "freeze-b",
        "# caracal:data-document\npackage caracal.authz\n\nimport rego.v1\n\nrestrict := [\"other\"]\n",
    )
    .await?;
    for (manifest, description) in [
        (vec![bad_risk.as_str()], "bad_shape:risk"),
        (
            vec![freeze_a.as_str(), freeze_b.as_str()],
            "materialization_failed",
        ),
    ] {
        let problem = assert_problem(
            &add_version(&api, &zone, &set, &manifest).await?,
            422,
            "invalid_policy_bundle",
        );
        assert_eq!(problem["error_description"], description, "{problem}");
        assert!(problem["details"]["reason"].is_string(), "{problem}");
    }

    // Nothing was stored; a good manifest still gets version 1, in manifest order.
    let versions = status(&api, &path).await?;
    assert_eq!(versions["items"], json!([]));
    let created = ok(
        &add_version(&api, &zone, &set, &[&freeze_a, &pv]).await?,
        201,
    );
    assert_eq!(created["version"], 1);
    assert_eq!(
        created["manifest_json"],
        json!([{"policy_version_id": freeze_a}, {"policy_version_id": pv}])
    );
    assert_eq!(
        created["manifest_sha256"],
        control_policy::manifest_sha256(&[freeze_a.as_str(), pv.as_str()])
    );
    let second = ok(&add_version(&api, &zone, &set, &[&pv]).await?, 201);
    assert_eq!(second["version"], 2);
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn policy_set_routes_refuse_unknown_ids_bad_input_and_wrong_tokens() -> anyhow::Result<()> {
    let (_db, api, _redis) = start_isolated(REDIS_DB_ERRORS).await?;
    let zone = api.create_zone("Errors").await?;
    let other = api.create_zone("Other").await?;
    let pv = create_policy(&api, &zone, "grants", &grants_document("app-1")).await?;
    let set = s(&create_set(&api, &zone, "main").await?["id"]);
    let second = s(&create_set(&api, &zone, "second").await?["id"]);
    let v = s(&ok(&add_version(&api, &zone, &set, &[&pv]).await?, 201)["version_id"]);
    let v2 = s(&ok(&add_version(&api, &zone, &second, &[&pv]).await?, 201)["version_id"]);
    let base = format!("/v1/zones/{zone}/policy-sets");
    let ghost_zone = "/v1/zones/00000000-0000-7000-8000-000000000000/policy-sets";

    // Creation.
    assert_problem(
        &api.admin("POST", &base, Some(&json!({"name": "main"})))
            .await?,
        409,
        "policy_set_name_taken",
    );
    for body in [
        json!({}),
        json!({"name": ""}),
        json!({"name": "x".repeat(257)}),
        json!({"name": "ok", "description": "d".repeat(4097)}),
        json!({"name": "ok", "shadow_version_id": "v"}),
    ] {
        assert_problem(
            &api.admin("POST", &base, Some(&body)).await?,
            400,
            "invalid_body",
        );
    }
    let plain = http::request(
        api.addr,
        "POST",
        &base,
        &[
            ("authorization", &format!("Bearer {BOOTSTRAP_TOKEN}")),
            ("content-type", "text/plain"),
        ],
        "{\"name\":\"t\"}",
    )
    .await?;
    assert_problem(&plain, 415, "unsupported_media_type");
    let described = ok(
        &api.admin(
            "POST",
            &base,
            Some(&json!({"name": "described", "description": "what it is"})),
        )
        .await?,
        201,
    );
    assert_eq!(described["description"], "what it is");
    assert_eq!(described["latest_version"], 0);

    // Unknown zone, set, version and outbox row.
    let ghost = "01900000-0000-7000-8000-000000000000";
    let cases: Vec<(&str, String, Option<Value>, u16, &str)> = vec![
        ("GET", ghost_zone.to_owned(), None, 404, "zone_not_found"),
        (
            "POST",
            ghost_zone.to_owned(),
            Some(json!({"name": "x"})),
            404,
            "zone_not_found",
        ),
        (
            "GET",
            format!("{base}/{ghost}"),
            None,
            404,
            "policy_set_not_found",
        ),
        (
            "DELETE",
            format!("{base}/{ghost}"),
            None,
            404,
            "policy_set_not_found",
        ),
        (
            "GET",
            format!("{base}/{ghost}/versions"),
            None,
            404,
            "policy_set_not_found",
        ),
        (
            "POST",
            format!("{base}/{ghost}/versions"),
            Some(json!({"manifest": [{"policy_version_id": pv}]})),
            404,
            "policy_set_not_found",
        ),
        (
            "GET",
            format!("{base}/{ghost}/versions/{v}"),
            None,
            404,
            "policy_set_not_found",
        ),
        (
            "GET",
            format!("{base}/{set}/versions/{ghost}"),
            None,
            404,
            "policy_set_version_not_found",
        ),
        (
            "GET",
            format!("{base}/{set}/versions/{v2}"),
            None,
            404,
            "policy_set_version_not_found",
        ),
        (
            "POST",
            format!("{base}/{ghost}/activate"),
            Some(json!({"version_id": v})),
            404,
            "policy_set_not_found",
        ),
        (
            "POST",
            format!("{base}/{set}/activate"),
            Some(json!({"version_id": v2})),
            404,
            "policy_set_version_not_found",
        ),
        (
            "POST",
            format!("{base}/{set}/simulate"),
            Some(json!({"version_id": ghost})),
            404,
            "policy_set_version_not_found",
        ),
        (
            "POST",
            format!("{base}/{ghost}/simulate"),
            Some(json!({"version_id": v})),
            404,
            "policy_set_not_found",
        ),
        (
            "GET",
            format!("{base}/{ghost}/activation-status"),
            None,
            404,
            "policy_set_not_found",
        ),
        (
            "GET",
            format!("{base}/{set}/activation-status?version_id={v2}"),
            None,
            404,
            "policy_set_version_not_found",
        ),
        (
            "GET",
            format!("{base}/{set}/activation-status?version_id={v}&outbox_id={ghost}"),
            None,
            404,
            "outbox_not_found",
        ),
        // Bodies and queries.
        (
            "POST",
            format!("{base}/{set}/activate"),
            Some(json!({})),
            400,
            "invalid_body",
        ),
        (
            "POST",
            format!("{base}/{set}/activate"),
            Some(json!({"version_id": v, "force": true})),
            400,
            "invalid_body",
        ),
        (
            "POST",
            format!("{base}/{set}/simulate"),
            Some(json!({})),
            400,
            "invalid_body",
        ),
        (
            "POST",
            format!("{base}/{set}/simulate"),
            Some(json!({"version_id": v, "input": [1]})),
            400,
            "invalid_body",
        ),
        (
            "GET",
            format!("{base}?status=active"),
            None,
            400,
            "invalid_query",
        ),
        ("GET", format!("{base}?limit=0"), None, 400, "invalid_query"),
        (
            "GET",
            format!("{base}?cursor=nope"),
            None,
            400,
            "invalid_cursor",
        ),
        (
            "GET",
            format!("{base}/{set}/versions?limit=501"),
            None,
            400,
            "invalid_query",
        ),
        (
            "GET",
            format!("{base}/{set}/activation-status?since=1"),
            None,
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/v1/policy-templates?x=1".to_owned(),
            None,
            400,
            "invalid_query",
        ),
        (
            "PUT",
            format!("{base}/{set}"),
            None,
            405,
            "method_not_allowed",
        ),
    ];
    for (method, path, body, code, error) in cases {
        let resp = api.admin(method, &path, body.as_ref()).await?;
        assert_problem(&resp, code, error);
    }

    // An outbox row of another set does not answer for this one.
    let activation = activate(&api, &zone, &second, &v2).await?;
    assert_problem(
        &api.admin(
            "GET",
            &format!(
                "{base}/{set}/activation-status?version_id={v}&outbox_id={}",
                s(&activation["outbox_id"])
            ),
            None,
        )
        .await?,
        404,
        "outbox_not_found",
    );
    // Nothing active in this set and no version asked for: waiting, version null.
    let idle = status(&api, &format!("{base}/{set}/activation-status")).await?;
    assert_eq!(idle["propagation_status"], "waiting_for_activation");
    assert!(idle["version_id"].is_null() && idle["manifest_sha256"].is_null());
    assert!(idle["outbox"].is_null());

    // Capabilities and zone scopes.
    let token = |capability: &str, zone: Option<&str>| {
        let mut body = json!({"name": format!("{capability}-t"), "capability": capability});
        if let Some(zone) = zone {
            body["zone_id"] = json!(zone);
        }
        body
    };
    let read = s(&ok(
        &api.admin("POST", "/v1/admin-tokens", Some(&token("read", None)))
            .await?,
        201,
    )["token"]);
    let foreign = s(&ok(
        &api.admin(
            "POST",
            "/v1/admin-tokens",
            Some(&token("write", Some(&other))),
        )
        .await?,
        201,
    )["token"]);
    assert_eq!(api.call(&read, "GET", &base, None).await?.status, 200);
    assert_eq!(
        api.call(
            &read,
            "POST",
            &format!("{base}/{set}/simulate"),
            Some(&json!({"version_id": v}))
        )
        .await?
        .status,
        200
    );
    for (method, path, body) in [
        ("POST", base.clone(), Some(json!({"name": "r"}))),
        (
            "POST",
            format!("{base}/{set}/activate"),
            Some(json!({"version_id": v})),
        ),
        (
            "POST",
            format!("{base}/{set}/versions"),
            Some(json!({"manifest": [{"policy_version_id": pv}]})),
        ),
        ("DELETE", format!("{base}/{set}"), None),
    ] {
        assert_problem(
            &api.call(&read, method, &path, body.as_ref()).await?,
            403,
            "admin_token_read_only",
        );
    }
    for (method, path) in [("GET", base.clone()), ("DELETE", format!("{base}/{set}"))] {
        assert_problem(
            &api.call(&foreign, method, &path, None).await?,
            403,
            "admin_token_zone_mismatch",
        );
    }
    assert_eq!(
        api.call(&foreign, "GET", "/v1/policy-templates", None)
            .await?
            .status,
        200
    );
    assert_problem(
        &api.call("nope", "GET", &base, None).await?,
        401,
        "invalid_admin_token",
    );

    // Deleting twice, and the archived set's name stays taken.
    assert_eq!(
        api.admin("DELETE", &format!("{base}/{set}"), None)
            .await?
            .status,
        204
    );
    assert_problem(
        &api.admin("DELETE", &format!("{base}/{set}"), None).await?,
        404,
        "policy_set_not_found",
    );
    assert_problem(
        &api.admin("POST", &base, Some(&json!({"name": "main"})))
            .await?,
        409,
        "policy_set_name_taken",
    );
    assert_problem(
        &api.admin(
            "POST",
            &format!("{base}/{set}/activate"),
            Some(&json!({"version_id": v})),
        )
        .await?,
        404,
        "policy_set_not_found",
    );

    // Pages: newest first, keyset cursors.
    for name in ["p1", "p2", "p3"] {
        create_set(&api, &zone, name).await?;
    }
    let first = status(&api, &format!("{base}?limit=2")).await?;
    let names: Vec<String> = first["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| s(&r["name"]))
        .collect();
    assert_eq!(names, ["p3", "p2"]);
    let cursor = s(&first["next_cursor"]);
    let rest = status(&api, &format!("{base}?limit=2&cursor={cursor}")).await?;
    let names: Vec<String> = rest["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| s(&r["name"]))
        .collect();
    assert_eq!(names, ["p1", "described"]);
    let last = status(
        &api,
        &format!("{base}?limit=2&cursor={}", s(&rest["next_cursor"])),
    )
    .await?;
    assert_eq!(last["items"].as_array().map(Vec::len), Some(1));
    assert!(last["next_cursor"].is_null());
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn simulation_builds_and_decides_without_activating() -> anyhow::Result<()> {
    let (db, api) = start().await?;
    let zone = api.create_zone("Simulate").await?;
    let pv = create_policy(&api, &zone, "grants", &grants_document("app-1")).await?;
    let frozen = create_policy(&api, &zone, "freeze", FREEZE).await?;
    let set = s(&create_set(&api, &zone, "main").await?["id"]);
    let v = s(&ok(&add_version(&api, &zone, &set, &[&pv]).await?, 201)["version_id"]);
    let vf = s(&ok(&add_version(&api, &zone, &set, &[&pv, &frozen]).await?, 201)["version_id"]);
    let path = format!("/v1/zones/{zone}/policy-sets/{set}/simulate");
    let input = |app: &str| {
        json!({
            "schema_version": control_policy::SCHEMA_VERSION,
            "principal": {"type": "Application", "id": app, "zone_id": zone},
            "resource": {"type": "Resource", "id": "crm", "identifier": "resource://crm", "scopes": ["crm:read"]},
            "action": {"id": "TokenExchange"},
            "context": {"actor_claims": {"caracal_client_id": app}, "challenge_resolved": false,
                        "requested_scopes": ["agent:lifecycle"]}
        })
    };

    let plain = ok(
        &api.admin("POST", &path, Some(&json!({"version_id": v})))
            .await?,
        200,
    );
    assert_eq!(plain["dry_run"], true);
    assert_eq!(plain["would_activate"], true);
    assert_eq!(plain["warnings"], json!([]));
    assert!(plain["result"].is_null());
    assert!(plain["explanation"].is_string());

    let allowed = ok(
        &api.admin(
            "POST",
            &path,
            Some(&json!({"version_id": v, "input": input("app-1")})),
        )
        .await?,
        200,
    );
    assert_eq!(allowed["result"]["decision"], "allow", "{allowed}");
    assert_eq!(
        allowed["result"]["determining_policies"],
        json!([{"policy": "caracal-bootstrap"}])
    );
    assert_eq!(allowed["explanation"], "allow by caracal-bootstrap");

    let denied = ok(
        &api.admin(
            "POST",
            &path,
            Some(&json!({"version_id": v, "input": input("app-9")})),
        )
        .await?,
        200,
    );
    assert_eq!(denied["result"]["decision"], "deny");
    assert_eq!(
        denied["result"]["diagnostics"],
        json!([{"reason": "no_rule_matched"}])
    );
    assert_eq!(denied["explanation"], "deny: no_rule_matched");

    let frozen_result = ok(
        &api.admin(
            "POST",
            &path,
            Some(&json!({"version_id": vf, "input": input("app-1")})),
        )
        .await?,
        200,
    );
    assert_eq!(frozen_result["warnings"], json!(["restriction_active"]));
    assert_eq!(frozen_result["explanation"], "deny: restriction_active");

    // A stored version that no longer builds (written behind the API's back) would not
    // activate; the simulation says why instead of failing.
    let bad_risk = create_policy(
        &api,
        &zone,
        "bad-risk",
        "# caracal:data-document\npackage caracal.authz\n\nimport rego.v1\n\nrisk := [{\"scope\": \"crm:read\", \"tier\": 3}]\n",
    )
    .await?;
    let mut p = Provision::open(&db).await?;
    p.exec(&format!(
        "INSERT INTO policy_set_versions (id, zone_id, policy_set_id, version, manifest_json, manifest_sha256, schema_version) \
         VALUES ('broken', '{zone}', '{set}', 3, '[{{\"policy_version_id\":\"{bad_risk}\"}}]', '{}', '{}')",
        control_policy::manifest_sha256(&[bad_risk.as_str()]),
        control_policy::SCHEMA_VERSION
    ))
    .await?;
    let broken = ok(
        &api.admin(
            "POST",
            &path,
            Some(&json!({"version_id": "broken", "input": input("app-1")})),
        )
        .await?,
        200,
    );
    assert_eq!(broken["would_activate"], false, "{broken}");
    assert_eq!(
        broken["warnings"],
        json!(["invalid_policy_bundle:bad_shape:risk"])
    );
    assert!(broken["result"].is_null());

    // A simulation activates nothing.
    let row = status(&api, &format!("/v1/zones/{zone}/policy-sets/{set}")).await?;
    assert!(row["active_version_id"].is_null());
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn activation_commits_without_redis_and_its_status_answers_503() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    // Nothing listens on port 1: every Redis call fails at once.
    let api = ApiFixture::start_with(&db, &[("REDIS_URL", "redis://127.0.0.1:1")]).await?;
    let zone = api.create_zone("No Redis").await?;
    let pv = create_policy(&api, &zone, "grants", &grants_document("app-1")).await?;
    let set = s(&create_set(&api, &zone, "main").await?["id"]);
    let v = s(&ok(&add_version(&api, &zone, &set, &[&pv]).await?, 201)["version_id"]);
    let activation = activate(&api, &zone, &set, &v).await?;
    let row = status(&api, &format!("/v1/zones/{zone}/policy-sets/{set}")).await?;
    assert_eq!(row["active_version_id"], json!(v));
    let resp = api
        .admin("GET", &s(&activation["status_url"]), None)
        .await?;
    let problem = assert_problem(&resp, 503, "redis_unavailable");
    assert!(!problem.to_string().contains("127.0.0.1:1"), "{problem}");
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn templates_are_a_bare_array_of_documents_that_validate_and_build() -> anyhow::Result<()> {
    let (_db, api) = start().await?;
    let zone = api.create_zone("Templates").await?;
    let resp = api.admin("GET", "/v1/policy-templates", None).await?;
    let templates = ok(&resp, 200);
    let list = templates.as_array().cloned().unwrap_or_default();
    assert!(list.len() >= 3, "{templates}");
    let mut ids = std::collections::BTreeSet::new();
    for template in &list {
        let id = s(&template["id"]);
        assert!(ids.insert(id.clone()), "duplicate template id {id}");
        assert!(template["name"].is_string() && template["description"].is_string());
        let content = s(&template["content"]);
        control_policy::validate_document(&content, control_policy::SCHEMA_VERSION)
            .unwrap_or_else(|e| panic!("template {id}: {}", e.code()));
        // Each one becomes a policy and a set version through the API.
        let pv = create_policy(&api, &zone, &id, &content).await?;
        let set = s(&create_set(&api, &zone, &id).await?["id"]);
        ok(&add_version(&api, &zone, &set, &[&pv]).await?, 201);
    }
    for wanted in ["grants", "freeze", "risk-approval-tiers"] {
        assert!(ids.contains(wanted), "{ids:?}");
    }
    api.stop().await;
    Ok(())
}
