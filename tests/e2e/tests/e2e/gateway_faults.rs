//! The gateway when what it depends on fails (wire-contract §4.3, §4.9, §4.10;
//! authority §4.1): Redis gone (single use fails closed), the audit stream gone (events spill
//! to the replay volume and arrive later), Postgres gone (the authority view goes stale and
//! every call is refused), and the snapshot swapped under load.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::Path,
    str::FromStr as _,
    sync::Arc,
    time::Duration,
};

use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use tests_harness::{
    http::{self, HttpResponse},
    proxy::TcpProxy,
    sts::redis_url,
};

use super::gateway::{AGENT, RESOURCE, Scenario, ZONE, assert_denied};

const AUDIT_STREAM: &str = control_events::streams::AUDIT_EVENTS;

/// The machine's Redis as a socket address (for a [`TcpProxy`] in front of it).
fn redis_addr() -> SocketAddr {
    let url = redis_url();
    let rest = url.strip_prefix("redis://").unwrap_or(&url);
    let hostport = rest
        .rsplit('@')
        .next()
        .unwrap_or(rest)
        .split('/')
        .next()
        .unwrap_or(rest);
    hostport.parse().expect("REDIS_URL host:port")
}

/// The machine's Postgres: its address and the admin user.
fn postgres() -> (SocketAddr, String) {
    let options = PgConnectOptions::from_str(&tests_harness::admin_url()).expect("admin url");
    let host = if options.get_host() == "localhost" {
        "127.0.0.1"
    } else {
        options.get_host()
    };
    let addr = format!("{host}:{}", options.get_port())
        .parse()
        .expect("postgres host:port");
    (addr, options.get_username().to_owned())
}

/// `GET /items` with a fresh mandate and `X-Request-Id: id`.
async fn call_with_id(s: &Scenario, id: &str) -> HttpResponse {
    s.call("GET", "/items", &s.mandate(), &[("x-request-id", id)])
        .await
}

/// Calls until `done(resp)` or `within` passes; returns the last answer.
async fn until(
    s: &Scenario,
    within: Duration,
    done: impl Fn(&HttpResponse) -> bool,
) -> HttpResponse {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
        if done(&resp) || tokio::time::Instant::now() >= deadline {
            return resp;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn description(resp: &HttpResponse) -> String {
    resp.json()
        .ok()
        .and_then(|b| b["error_description"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `GET /ready`: status and reason.
async fn ready(s: &Scenario) -> (u16, Value) {
    let resp = http::get(s.gateway.addr, "/ready").await.expect("ready");
    let reason = resp
        .json()
        .map(|b| b["reason"].clone())
        .unwrap_or(Value::Null);
    (resp.status, reason)
}

/// A Redis connection to the machine's Redis.
pub(crate) async fn redis() -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(redis_url())?
        .get_multiplexed_async_connection()
        .await?)
}

/// The id of the newest entry of the audit stream (`0-0` when empty).
pub(crate) async fn stream_tip(
    conn: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<String> {
    let newest: Vec<(String, HashMap<String, String>)> = redis::cmd("XREVRANGE")
        .arg(AUDIT_STREAM)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(newest
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_owned(), |(id, _)| id))
}

/// The audit events (their `data` JSON) after `from` whose request id is in `ids`.
async fn audit_events(
    conn: &mut redis::aio::MultiplexedConnection,
    from: &str,
    ids: &HashSet<String>,
) -> anyhow::Result<Vec<Value>> {
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(AUDIT_STREAM)
        .arg(format!("({from}"))
        .arg("+")
        .query_async(conn)
        .await?;
    let mut out = Vec::new();
    for (_id, fields) in entries {
        let Some(data) = fields.get("data") else {
            continue;
        };
        let event: Value = serde_json::from_str(data)?;
        if event["request_id"]
            .as_str()
            .is_some_and(|id| ids.contains(id))
        {
            out.push(event);
        }
    }
    Ok(out)
}

/// Waits until `expected` events of `ids` are on the stream after `from` (or `within`
/// passes) and returns them.
pub(crate) async fn wait_for_events(
    from: &str,
    ids: &HashSet<String>,
    expected: usize,
    within: Duration,
) -> anyhow::Result<Vec<Value>> {
    let mut conn = redis().await?;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let events = audit_events(&mut conn, from, ids).await?;
        if events.len() >= expected || tokio::time::Instant::now() >= deadline {
            return Ok(events);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `(request_id, event_type)` of each event.
fn kinds(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["request_id"].as_str().unwrap_or_default().to_owned(),
                e["event_type"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn request_ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| format!("gw-audit-{}", uuid::Uuid::now_v7().simple()))
        .collect()
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".probe"))
        {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn redis_down_fails_single_use_closed_and_recovers() -> anyhow::Result<()> {
    let proxy = TcpProxy::start(redis_addr()).await?;
    let through = format!("redis://{}", proxy.addr);
    let s = Scenario::start_with(
        &[
            ("REDIS_URL", through.as_str()),
            ("AUDIT_REDIS_URL", &redis_url()),
        ],
        |_| {},
    )
    .await?;
    assert_eq!(s.call("GET", "/items", &s.mandate(), &[]).await.status, 200);
    proxy.set_up(false);
    let resp = until(&s, Duration::from_secs(3), |r| r.status != 200).await;
    assert_denied(
        &resp,
        503,
        "sts_unavailable",
        "replay protection unavailable",
    );
    let (status, reason) = ready(&s).await;
    assert_eq!((status, reason), (503, Value::from("redis_unreachable")));
    assert_eq!(
        s.upstream.requests().len(),
        1,
        "nothing passed while Redis was down"
    );
    proxy.set_up(true);
    let resp = until(&s, Duration::from_secs(5), |r| r.status == 200).await;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_allowed_call_a_replay_and_an_unauthenticated_call_in_the_audit_stream()
-> anyhow::Result<()> {
    let s = Scenario::start().await?;
    let mut conn = redis().await?;
    let from = stream_tip(&mut conn).await?;
    let ids = request_ids(3);
    let (unauthenticated, allowed, replayed) = (&ids[0], &ids[1], &ids[2]);
    // Step 2 first: once the later events are on the stream, its event would be too.
    let resp = http::request(
        s.gateway.addr,
        "GET",
        "/items",
        &[
            ("x-caracal-resource", RESOURCE),
            ("x-request-id", unauthenticated),
        ],
        "",
    )
    .await?;
    assert_denied(&resp, 401, "invalid_token", "missing bearer token");
    let token = s.mandate();
    let resp = s
        .call("GET", "/items", &token, &[("x-request-id", allowed)])
        .await;
    assert_eq!(resp.status, 200);
    let resp = s
        .call("GET", "/items", &token, &[("x-request-id", replayed)])
        .await;
    assert_denied(&resp, 401, "invalid_token", "token replay detected");

    let wanted: HashSet<String> = ids.iter().cloned().collect();
    let events = wait_for_events(&from, &wanted, 3, Duration::from_secs(5)).await?;
    let mut got = kinds(&events);
    got.sort();
    let mut expected = vec![
        (allowed.clone(), "gateway_resource_request".to_owned()),
        (allowed.clone(), "token_exchange".to_owned()),
        (replayed.clone(), "replay_detected".to_owned()),
    ];
    expected.sort();
    assert_eq!(got, expected, "no event for the unauthenticated call");

    // wire-contract §4.10: the request event's columns and metadata.
    let event = |kind: &str| {
        events
            .iter()
            .find(|e| e["event_type"] == kind)
            .cloned()
            .expect("event")
    };
    let request = event("gateway_resource_request");
    assert_eq!(request["zone_id"], ZONE);
    assert_eq!(request["decision"], "allow", "{request}");
    assert_eq!(request["evaluation_status"], "complete", "{request}");
    assert_eq!(
        request["policy_set_version_id"],
        format!("{ZONE}-main-psv"),
        "{request}"
    );
    let m = &request["metadata_json"];
    assert_eq!(m["application_id"], AGENT, "{m}");
    assert_eq!(m["resource"], RESOURCE, "{m}");
    assert_eq!(m["method"], "GET", "{m}");
    assert_eq!(m["gateway_status"], 200, "{m}");
    assert_eq!(m["upstream_status"], 200, "{m}");
    assert_eq!(m["result_class"], "success", "{m}");
    assert_eq!(m["session_id"], s.ids.record.as_str(), "{m}");
    assert_eq!(m["agent_session_id"], s.ids.target.as_str(), "{m}");
    assert_eq!(m["delegation_edge_id"], s.ids.edge.as_str(), "{m}");
    assert_eq!(m["agent_labels"], serde_json::json!(["reader"]), "{m}");
    assert_eq!(m["provider_id"], "prov-none", "{m}");
    assert_eq!(m["auth_mode"], "none", "{m}");
    assert_eq!(m["upstream_host"], "127.0.0.1", "{m}");
    assert_eq!(m["revocation_interrupted"], false, "{m}");
    // The whole response was delivered: not a cancelled client, and every byte counted.
    assert!(m.get("error_kind").is_none(), "{m}");
    assert!(m["response_bytes"].as_u64().is_some_and(|n| n > 0), "{m}");
    assert!(m["latency_ms"].is_u64(), "{m}");
    let fingerprint = m["subject_fingerprint"].as_str().unwrap_or_default();
    assert!(
        fingerprint.len() == 16 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit()),
        "{m}"
    );
    assert!(m["trace_id"].as_str().is_some_and(|t| t.len() == 32), "{m}");
    assert!(
        !request.to_string().contains(&token),
        "the bearer is not in the event"
    );
    let exchange = event("token_exchange");
    assert_eq!(exchange["decision"], "allow", "{exchange}");
    assert_eq!(
        exchange["metadata_json"]["exchange_class"], "gateway_local",
        "{exchange}"
    );
    let replay = event("replay_detected");
    assert_eq!(replay["decision"], "deny", "{replay}");
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn audit_events_spill_while_the_stream_is_down_and_arrive_after() -> anyhow::Result<()> {
    let proxy = TcpProxy::start(redis_addr()).await?;
    let through = format!("redis://{}", proxy.addr);
    let s = Scenario::start_with(&[("AUDIT_REDIS_URL", through.as_str())], |_| {}).await?;
    let mut conn = redis().await?;
    let from = stream_tip(&mut conn).await?;
    proxy.set_up(false);
    let ids = request_ids(5);
    for id in &ids {
        let resp = call_with_id(&s, id).await;
        assert_eq!(resp.status, 200, "{:?}", resp.json());
        assert_eq!(resp.header("x-request-id").as_deref(), Some(id.as_str()));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while files_under(s.gateway.replay_dir.path()).is_empty()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spilled = files_under(s.gateway.replay_dir.path());
    assert!(
        !spilled.is_empty(),
        "segment files under the replay directory"
    );
    let wanted: HashSet<String> = ids.iter().cloned().collect();
    assert!(
        audit_events(&mut conn, &from, &wanted).await?.is_empty(),
        "nothing reached the stream while it was cut off"
    );
    proxy.set_up(true);
    let events = kinds(&wait_for_events(&from, &wanted, 10, Duration::from_secs(12)).await?);
    let got: HashSet<(String, String)> = events.iter().cloned().collect();
    for id in &ids {
        for kind in ["token_exchange", "gateway_resource_request"] {
            assert!(
                got.contains(&(id.clone(), kind.to_owned())),
                "{kind} of {id}: {events:?}"
            );
        }
    }
    assert_eq!(events.len(), 10, "each event once: {events:?}");
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_stale_authority_view_refuses_every_call_until_postgres_is_back() -> anyhow::Result<()> {
    // Postgres and Redis each behind a proxy; the audit stream direct.
    let (pg_addr, pg_user) = postgres();
    let pg = TcpProxy::start(pg_addr).await?;
    let rd = TcpProxy::start(redis_addr()).await?;
    let database_url = format!("postgres://{pg_user}@{}/{{database}}", pg.addr);
    let redis_through = format!("redis://{}", rd.addr);
    let s = Scenario::start_with(
        &[
            ("DATABASE_URL", database_url.as_str()),
            ("REDIS_URL", redis_through.as_str()),
            ("AUDIT_REDIS_URL", &redis_url()),
            ("GATEWAY_REVOCATION_MAX_AGE", "2"),
            ("CARACAL_GATEWAY_POLL_SECONDS", "1"),
        ],
        |_| {},
    )
    .await?;
    // Both up.
    assert_eq!(s.call("GET", "/items", &s.mandate(), &[]).await.status, 200);
    assert_eq!(ready(&s).await.0, 200);

    // Both down: neither the stream consumers nor the poll refresh the view; within the
    // bound plus a poll, step 1 refuses before anything else.
    pg.set_up(false);
    rd.set_up(false);
    let resp = until(&s, Duration::from_secs(5), |r| {
        description(r) == "revocation state unavailable"
    })
    .await;
    assert_denied(
        &resp,
        503,
        "sts_unavailable",
        "revocation state unavailable",
    );
    assert_eq!(
        ready(&s).await,
        (503, Value::from("revocation_snapshot_stale"))
    );

    // Postgres back, Redis still down: the poll alone makes the view fresh again; the call
    // now passes step 1 and stops at step 12.
    pg.set_up(true);
    let resp = until(&s, Duration::from_secs(8), |r| {
        description(r) != "revocation state unavailable"
    })
    .await;
    assert_denied(
        &resp,
        503,
        "sts_unavailable",
        "replay protection unavailable",
    );
    assert_eq!(ready(&s).await, (503, Value::from("redis_unreachable")));

    // Redis back: allowed again.
    rd.set_up(true);
    let resp = until(&s, Duration::from_secs(5), |r| r.status == 200).await;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    assert_eq!(
        s.upstream.requests().len(),
        2,
        "only the two allowed calls reached the upstream"
    );
    s.stop().await;
    drop(pg);
    drop(rd);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_swaps_under_load_without_a_failed_call() -> anyhow::Result<()> {
    let s = Arc::new(Scenario::start().await?);
    let mut callers = Vec::new();
    for _ in 0..4 {
        let s = Arc::clone(&s);
        callers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..50 {
                let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
                statuses.push((resp.status, description(&resp)));
            }
            statuses
        }));
    }
    // The writer runs here while the callers run on the workers.
    for i in 0..20 {
        s.exec(&format!(
            "INSERT INTO resources (id, zone_id, name, identifier, upstream_url, credential_provider_id, scopes) \
             VALUES ('res-load-{i}', '{ZONE}', 'res-load-{i}', 'resource://load-{i}', '{{upstream}}/load', 'prov-none', ARRAY['read'])"
        ))
        .await?;
        if i % 5 == 4 {
            s.reload().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut all = Vec::new();
    for caller in callers {
        all.extend(caller.await?);
    }
    assert_eq!(all.len(), 200);
    let failed: Vec<_> = all.iter().filter(|(status, _)| *status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} failed calls: {failed:?}",
        failed.len()
    );
    let revision: i64 = {
        let mut conn = s.db.admin().await?;
        sqlx::query_scalar("SELECT version FROM caracal.gateway_binding_revision")
            .fetch_one(&mut conn)
            .await?
    };
    assert!(
        revision > 20,
        "every insert moved the binding revision ({revision})"
    );
    let s = Arc::into_inner(s).expect("the callers are done");
    s.stop().await;
    Ok(())
}
