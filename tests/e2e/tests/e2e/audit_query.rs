//! Audit reads (wire-contract §6.6, storage §8.9): the audit service's query
//! (`control_audit::query::run`) over rows inserted directly as the database owner (every
//! filter, pages across a cursor, CSV, by-request, zone isolation, redaction, the admin
//! audit page), and the admin API's `/v1/zones/{z}/audit…` routes forwarded to a real audit
//! service, with `caracal_api` itself refused on `audit_events` and 503 when the audit
//! service is away.

use control_audit::query::{
    self, CSV_DISPOSITION, CSV_TYPE, Decision, Format, QueryKind, QueryRequest, REDACTED,
};
use control_model::ZoneId;
use control_store::{ServiceRole, zone::zone_tx};
use serde_json::{Value, json};
use sqlx::PgConnection;
use tests_harness::{
    TestDb,
    api::{ApiFixture, assert_problem},
    audit::{AuditFixture, INTERNAL_TOKEN},
    upstream::Upstream,
};

/// One event to insert.
struct Event<'a> {
    id: &'a str,
    event_type: &'a str,
    request_id: &'a str,
    decision: &'a str,
    /// Seconds after 2026-05-21T12:00:00Z.
    second: u32,
    metadata: Value,
}

/// Inserts `events` into `zone` as the owner, chained with dummy hashes that satisfy the
/// table's checks.
async fn insert_events(conn: &mut PgConnection, zone: &str, events: &[Event<'_>]) {
    let head: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(chain_seq), 0) FROM caracal.audit_events WHERE zone_id = $1",
    )
    .bind(zone)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    for (n, event) in (head + 1..).zip(events) {
        sqlx::query(
            "INSERT INTO caracal.audit_events \
               (id, zone_id, event_type, request_id, decision, evaluation_status, \
                determining_policies_json, metadata_json, occurred_at, content_sha256, \
                prev_content_sha256, chain_seq) \
             VALUES ($1, $2, $3, $4, $5, 'complete', '[{\"policy\":\"p\"}]', $6, \
                     '2026-05-21T12:00:00Z'::timestamptz + make_interval(secs => $7), \
                     decode(repeat('ab', 32), 'hex'), \
                     CASE WHEN $8 = 1 THEN NULL ELSE decode(repeat('cd', 32), 'hex') END, $8)",
        )
        .bind(event.id)
        .bind(zone)
        .bind(event.event_type)
        .bind(event.request_id)
        .bind(event.decision)
        .bind(&event.metadata)
        .bind(f64::from(event.second))
        .bind(n)
        .execute(&mut *conn)
        .await
        .unwrap();
    }
}

/// Five events in `zone` (e4 and e5 share a time: the id breaks the tie) and two in
/// `zone-b`, one of them under a request id `zone` also uses.
async fn seed(db: &TestDb, zone: &str) {
    let mut conn = db.admin().await.unwrap();
    insert_events(
        &mut conn,
        zone,
        &[
            Event {
                id: "e1",
                event_type: "token_exchange",
                request_id: "req-1",
                decision: "allow",
                second: 1,
                metadata: json!({
                    "application_id": "app-1", "session_id": "ar-1", "agent_session_id": "as-1",
                    "agent_labels": ["triage", "ops"], "client_secret": "s3cr3t-value",
                    "headers": {"Authorization": "Bearer tok-value"},
                }),
            },
            Event {
                id: "e2",
                event_type: "gateway_resource_request",
                request_id: "req-1",
                decision: "allow",
                second: 2,
                metadata: json!({"application_id": "app-1", "agent_session_id": "as-1", "agent_labels": ["ops"]}),
            },
            Event {
                id: "e3",
                event_type: "token_exchange",
                request_id: "req-2",
                decision: "deny",
                second: 3,
                metadata: json!({"application_id": "app-2", "session_id": "ar-2"}),
            },
            Event {
                id: "e4",
                event_type: "replay_detected",
                request_id: "req-3",
                decision: "deny",
                second: 4,
                metadata: json!({"application_id": "app-2", "note": "=cmd|' /C calc'!A0"}),
            },
            Event {
                id: "e5",
                event_type: "gateway_resource_request",
                request_id: "req-4",
                decision: "partial",
                second: 4,
                metadata: json!({"application_id": "app-3", "note": "a, \"quoted\" value"}),
            },
        ],
    )
    .await;
    insert_events(
        &mut conn,
        "zone-b",
        &[
            Event {
                id: "b1",
                event_type: "token_exchange",
                request_id: "req-b",
                decision: "allow",
                second: 2,
                metadata: json!({"application_id": "app-1"}),
            },
            Event {
                id: "b2",
                event_type: "token_exchange",
                request_id: "req-1",
                decision: "deny",
                second: 5,
                metadata: json!({"application_id": "app-1", "agent_labels": ["triage"]}),
            },
        ],
    )
    .await;
}

fn events(zone: &str) -> QueryRequest {
    QueryRequest {
        kind: QueryKind::Events,
        zone_id: zone.to_owned(),
        ..QueryRequest::default()
    }
}

async fn page(pool: &sqlx::PgPool, request: QueryRequest) -> Value {
    let answer = query::run(pool, request).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type, query::JSON_TYPE);
    serde_json::from_slice(&answer.body).unwrap()
}

fn ids(body: &Value) -> Vec<String> {
    let items = body
        .get("items")
        .unwrap_or(body)
        .as_array()
        .unwrap()
        .clone();
    items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

fn at(second: u32) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(&format!("2026-05-21T12:00:0{second}Z"))
        .unwrap()
        .with_timezone(&chrono::Utc)
}

#[tokio::test]
async fn every_filter_selects_its_events_newest_first_within_the_zone() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    seed(&db, "zone-a").await;
    let pool = db.service_pool(ServiceRole::Audit).await?;
    let cases: Vec<(&str, QueryRequest, Vec<&str>)> = vec![
        ("none", events("zone-a"), vec!["e5", "e4", "e3", "e2", "e1"]),
        (
            "window",
            QueryRequest {
                since: Some(at(2)),
                until: Some(at(4)),
                ..events("zone-a")
            },
            vec!["e3", "e2"],
        ),
        (
            "request_id",
            QueryRequest {
                request_id: Some("req-1".to_owned()),
                ..events("zone-a")
            },
            vec!["e2", "e1"],
        ),
        (
            "decision",
            QueryRequest {
                decision: Some(Decision::Deny),
                ..events("zone-a")
            },
            vec!["e4", "e3"],
        ),
        (
            "event_types",
            QueryRequest {
                event_types: vec!["token_exchange".to_owned(), "replay_detected".to_owned()],
                ..events("zone-a")
            },
            vec!["e4", "e3", "e1"],
        ),
        (
            "application_id",
            QueryRequest {
                application_id: Some("app-2".to_owned()),
                ..events("zone-a")
            },
            vec!["e4", "e3"],
        ),
        (
            "session_id is metadata agent_session_id",
            QueryRequest {
                session_id: Some("as-1".to_owned()),
                ..events("zone-a")
            },
            vec!["e2", "e1"],
        ),
        (
            "authority_record_id is metadata session_id",
            QueryRequest {
                authority_record_id: Some("ar-1".to_owned()),
                ..events("zone-a")
            },
            vec!["e1"],
        ),
        (
            "label",
            QueryRequest {
                label: Some("triage".to_owned()),
                ..events("zone-a")
            },
            vec!["e1"],
        ),
        (
            "label and type together",
            QueryRequest {
                label: Some("ops".to_owned()),
                event_types: vec!["gateway_resource_request".to_owned()],
                ..events("zone-a")
            },
            vec!["e2"],
        ),
        (
            "other zone",
            QueryRequest {
                request_id: Some("req-1".to_owned()),
                ..events("zone-b")
            },
            vec!["b2"],
        ),
        ("zone without events", events("zone-c"), vec![]),
    ];
    for (name, request, expected) in cases {
        assert_eq!(ids(&page(&pool, request).await), expected, "{name}");
    }
    Ok(())
}

#[tokio::test]
async fn pages_follow_the_cursor_to_the_end_and_items_are_redacted() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    seed(&db, "zone-a").await;
    let pool = db.service_pool(ServiceRole::Audit).await?;
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let body = page(
            &pool,
            QueryRequest {
                limit: Some(2),
                cursor: cursor.clone(),
                ..events("zone-a")
            },
        )
        .await;
        pages += 1;
        seen.extend(ids(&body));
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["e5", "e4", "e3", "e2", "e1"]);

    let body = page(
        &pool,
        QueryRequest {
            authority_record_id: Some("ar-1".to_owned()),
            ..events("zone-a")
        },
    )
    .await;
    let item = &body["items"][0];
    let mut keys: Vec<&str> = item
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut expected = query::EVENT_FIELDS.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected);
    assert_eq!(item["metadata_json"]["client_secret"], REDACTED);
    assert_eq!(item["metadata_json"]["headers"]["Authorization"], REDACTED);
    assert_eq!(item["metadata_json"]["application_id"], "app-1");
    assert_eq!(item["occurred_at"], "2026-05-21T12:00:01.000000Z");
    assert_eq!(item["determining_policies_json"], json!([{"policy": "p"}]));
    assert!(!String::from_utf8_lossy(&serde_json::to_vec(&body)?).contains("s3cr3t"));

    let projected = page(
        &pool,
        QueryRequest {
            fields: Some(vec!["id".to_owned(), "decision".to_owned()]),
            limit: Some(1),
            ..events("zone-a")
        },
    )
    .await;
    assert_eq!(
        projected["items"],
        json!([{"id": "e5", "decision": "partial"}])
    );

    let garbage = query::run(
        &pool,
        QueryRequest {
            cursor: Some("bm90IGEgY3Vyc29y".to_owned()),
            ..events("zone-a")
        },
    )
    .await
    .unwrap_err();
    assert_eq!((garbage.status(), garbage.code()), (400, "invalid_cursor"));
    Ok(())
}

#[tokio::test]
async fn a_csv_export_quotes_neutralises_and_redacts() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    seed(&db, "zone-a").await;
    let pool = db.service_pool(ServiceRole::Audit).await?;
    let answer = query::run(
        &pool,
        QueryRequest {
            format: Some(Format::Csv),
            fields: Some(vec![
                "id".to_owned(),
                "decision".to_owned(),
                "metadata_json".to_owned(),
            ]),
            application_id: Some("app-2".to_owned()),
            ..events("zone-a")
        },
    )
    .await?;
    assert_eq!(answer.content_type, CSV_TYPE);
    assert_eq!(answer.content_disposition, Some(CSV_DISPOSITION));
    let text = String::from_utf8(answer.body.to_vec())?;
    assert_eq!(
        text,
        "id,decision,metadata_json\r\n\
         e4,deny,\"{\"\"application_id\"\":\"\"app-2\"\",\"\"note\"\":\"\"=cmd|' /C calc'!A0\"\"}\"\r\n\
         e3,deny,\"{\"\"application_id\"\":\"\"app-2\"\",\"\"session_id\"\":\"\"ar-2\"\"}\"\r\n"
    );

    let notes = query::run(
        &pool,
        QueryRequest {
            format: Some(Format::Csv),
            fields: Some(vec!["id".to_owned(), "metadata_json".to_owned()]),
            authority_record_id: Some("ar-1".to_owned()),
            ..events("zone-a")
        },
    )
    .await?;
    let text = String::from_utf8(notes.body.to_vec())?;
    assert!(
        text.contains(REDACTED) && !text.contains("s3cr3t"),
        "{text}"
    );

    // A value that is itself a formula is neutralised: the metadata is JSON text, so the
    // formula can only start a cell through a text column.
    let mut conn = db.admin().await?;
    insert_events(
        &mut conn,
        "zone-f",
        &[Event {
            id: "f1",
            event_type: "token_exchange",
            request_id: "=HYPERLINK(\"http://x\",\"y\")",
            decision: "allow",
            second: 1,
            metadata: json!({}),
        }],
    )
    .await;
    let formula = query::run(
        &pool,
        QueryRequest {
            format: Some(Format::Csv),
            fields: Some(vec!["request_id".to_owned()]),
            ..events("zone-f")
        },
    )
    .await?;
    assert_eq!(
        String::from_utf8(formula.body.to_vec())?,
        "request_id\r\n\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\"\r\n"
    );
    Ok(())
}

#[tokio::test]
async fn by_request_answers_oldest_first_in_the_zone_and_404_otherwise() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    seed(&db, "zone-a").await;
    let pool = db.service_pool(ServiceRole::Audit).await?;
    let by_request = |zone: &str, rid: &str| QueryRequest {
        kind: QueryKind::ByRequest,
        zone_id: zone.to_owned(),
        request_id: Some(rid.to_owned()),
        ..QueryRequest::default()
    };
    let answer = query::run(&pool, by_request("zone-a", "req-1")).await?;
    let body: Value = serde_json::from_slice(&answer.body)?;
    assert!(body.is_array(), "{body}");
    assert_eq!(ids(&body), ["e1", "e2"]);
    assert_eq!(body[0]["metadata_json"]["client_secret"], REDACTED);
    for (zone, rid) in [("zone-a", "req-b"), ("zone-a", "nope"), ("zone-c", "req-1")] {
        let error = query::run(&pool, by_request(zone, rid)).await.unwrap_err();
        assert_eq!(
            (error.status(), error.code()),
            (404, "request_not_found"),
            "{zone} {rid}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_admin_audit_page_shows_the_zones_actions_with_their_chain() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let mut conn = db.admin().await?;
    for zone in ["zone-a", "zone-b"] {
        sqlx::query("INSERT INTO caracal.zones (id, name, slug) VALUES ($1, $1, $1)")
            .bind(zone)
            .execute(&mut conn)
            .await?;
    }
    for (n, (zone, id, actor)) in [
        ("zone-a", "a1", "admin:t1"),
        ("zone-a", "a2", "admin:t2"),
        ("zone-a", "a3", "admin:t1"),
        ("zone-b", "b1", "admin:t1"),
    ]
    .into_iter()
    .enumerate()
    {
        let seq: i64 = sqlx::query_scalar(
            "SELECT coalesce(max(chain_seq), 0) + 1 FROM caracal.admin_audit_events WHERE zone_id = $1",
        )
        .bind(zone)
        .fetch_one(&mut conn)
        .await?;
        sqlx::query(
            "INSERT INTO caracal.admin_audit_events \
               (id, zone_id, request_id, actor_id, actor_name, actor_scope, action, method, path, \
                entity_type, entity_id, status_code, payload_json, occurred_at, content_sha256, \
                prev_content_sha256, chain_seq) \
             VALUES ($1, $2, 'r-' || $1, $3, 'ops', 'global', 'PATCH /v1/zones/' || $2, 'PATCH', \
                     '/v1/zones/' || $2, 'zone', $2, 200, \
                     '{\"name\":\"renamed\",\"nested\":{\"api_key\":\"k-value\"}}', \
                     '2026-05-21T12:00:00Z'::timestamptz + make_interval(secs => $4), \
                     decode(repeat('0f', 32), 'hex'), \
                     CASE WHEN $5 = 1 THEN NULL ELSE decode(repeat('ee', 32), 'hex') END, $5)",
        )
        .bind(id)
        .bind(zone)
        .bind(actor)
        .bind(f64::from(u32::try_from(n)?))
        .bind(seq)
        .execute(&mut conn)
        .await?;
    }
    let pool = db.service_pool(ServiceRole::Audit).await?;
    let admin = |limit: Option<i64>, cursor: Option<String>, actor: Option<&str>| QueryRequest {
        kind: QueryKind::Admin,
        zone_id: "zone-a".to_owned(),
        limit,
        cursor,
        actor_id: actor.map(str::to_owned),
        ..QueryRequest::default()
    };
    let first = page(&pool, admin(Some(2), None, None)).await;
    assert_eq!(ids(&first), ["a3", "a2"]);
    let item = &first["items"][0];
    assert_eq!(item["chain_seq"], 3);
    assert_eq!(item["content_sha256"], "0f".repeat(32));
    assert_eq!(item["payload_json"]["nested"]["api_key"], REDACTED);
    assert_eq!(item["action"], "PATCH /v1/zones/zone-a");
    assert_eq!(item["occurred_at"], "2026-05-21T12:00:02.000000Z");
    let rest = page(
        &pool,
        admin(
            Some(2),
            first["next_cursor"].as_str().map(str::to_owned),
            None,
        ),
    )
    .await;
    assert_eq!(ids(&rest), ["a1"]);
    assert_eq!(rest["next_cursor"], Value::Null);
    assert_eq!(
        ids(&page(&pool, admin(None, None, Some("admin:t1"))).await),
        ["a3", "a1"]
    );
    Ok(())
}

#[tokio::test]
async fn the_api_role_cannot_read_the_ledger_itself() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    seed(&db, "zone-a").await;
    let pool = db.service_pool(ServiceRole::Api).await?;
    let mut tx = zone_tx(&pool, &ZoneId::parse("zone-a")?).await?;
    let refused = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_events")
        .fetch_one(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(
        refused
            .as_database_error()
            .and_then(|e| e.code())
            .as_deref(),
        Some("42501")
    );
    Ok(())
}

#[tokio::test]
async fn the_admin_api_answers_audit_reads_through_the_audit_service() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let audit = AuditFixture::start(&db).await?;
    let audit_url = format!("http://{}", audit.addr);
    let api = ApiFixture::start_with(
        &db,
        &[
            ("CARACAL_AUDIT_URL", audit_url.as_str()),
            ("CARACAL_INTERNAL_TOKEN", INTERNAL_TOKEN),
        ],
    )
    .await?;
    let zone = reads_answer_as_specified(&db, &api).await?;

    // The audit service away: 503 audit_unavailable.
    audit.stop().await;
    let resp = api
        .admin("GET", &format!("/v1/zones/{zone}/audit"), None)
        .await?;
    assert_problem(&resp, 503, "audit_unavailable");
    let resp = api
        .admin("GET", &format!("/v1/zones/{zone}/admin-audit"), None)
        .await?;
    assert_problem(&resp, 503, "audit_unavailable");
    api.stop().await;
    Ok(())
}

/// Seeds a zone's events and checks every audit read the admin API answers: pages and
/// cursors, filters, CSV, by request, the admin audit log, and the refusals. Returns the
/// zone.
async fn reads_answer_as_specified(db: &TestDb, api: &ApiFixture) -> anyhow::Result<String> {
    let zone = api.create_zone("audited").await?;
    seed(db, &zone).await;

    // A page, then the rest through the cursor.
    let first = api
        .admin("GET", &format!("/v1/zones/{zone}/audit?limit=3"), None)
        .await?;
    assert_eq!(first.status, 200, "{:?}", first.json());
    assert_eq!(
        first.header("content-type").as_deref(),
        Some("application/json")
    );
    let body = first.json()?;
    assert_eq!(ids(&body), ["e5", "e4", "e3"]);
    assert_eq!(body["items"][0]["zone_id"], zone.as_str());
    let cursor = body["next_cursor"].as_str().unwrap().to_owned();
    let rest = api
        .admin(
            "GET",
            &format!("/v1/zones/{zone}/audit?limit=3&cursor={cursor}"),
            None,
        )
        .await?
        .json()?;
    assert_eq!(ids(&rest), ["e2", "e1"]);
    assert_eq!(rest["next_cursor"], Value::Null);

    // Filters travel in their internal names.
    let filtered = api
        .admin(
            "GET",
            &format!(
                "/v1/zones/{zone}/audit?event_type=token_exchange,replay_detected&decision=deny&since=2026-05-21T14:00:03%2B02:00"
            ),
            None,
        )
        .await?
        .json()?;
    assert_eq!(ids(&filtered), ["e4", "e3"]);

    // CSV, as an attachment.
    let csv = api
        .admin(
            "GET",
            &format!("/v1/zones/{zone}/audit?format=csv&fields=id,decision&limit=2"),
            None,
        )
        .await?;
    assert_eq!(csv.status, 200);
    assert_eq!(csv.header("content-type").as_deref(), Some(CSV_TYPE));
    assert_eq!(
        csv.header("content-disposition").as_deref(),
        Some("attachment; filename=\"audit.csv\"")
    );
    assert_eq!(
        std::str::from_utf8(&csv.body)?,
        "id,decision\r\ne5,partial\r\ne4,deny\r\n"
    );
    assert!(csv.header("x-next-cursor").is_some());

    // By request: a bare array, oldest first; 404 for an unknown request.
    let by_request = api
        .admin(
            "GET",
            &format!("/v1/zones/{zone}/audit/by-request/req-1"),
            None,
        )
        .await?;
    assert_eq!(by_request.status, 200);
    assert_eq!(ids(&by_request.json()?), ["e1", "e2"]);
    let missing = api
        .admin(
            "GET",
            &format!("/v1/zones/{zone}/audit/by-request/req-b"),
            None,
        )
        .await?;
    assert_problem(&missing, 404, "request_not_found");
    let explain = api
        .admin(
            "GET",
            &format!("/v1/zones/{zone}/audit/by-request/req-1/explain"),
            None,
        )
        .await?;
    assert_problem(&explain, 404, "not_found");

    // The admin audit log holds the zone's creation.
    let admin_audit = api
        .admin("GET", &format!("/v1/zones/{zone}/admin-audit"), None)
        .await?;
    assert_eq!(admin_audit.status, 200, "{:?}", admin_audit.json());
    let admin_audit = admin_audit.json()?;
    let created = &admin_audit["items"][0];
    assert_eq!(created["entity_type"], "zone");
    assert_eq!(created["action"], "POST /v1/zones");
    assert_eq!(created["chain_seq"], 1);
    assert_eq!(created["content_sha256"].as_str().unwrap().len(), 64);

    // Refusals: bad parameters before anything is forwarded, unknown zones, zone scope.
    for bad in [
        "decision=maybe",
        "limit=1001",
        "since=yesterday",
        "fields=chain_hmac",
    ] {
        let resp = api
            .admin("GET", &format!("/v1/zones/{zone}/audit?{bad}"), None)
            .await?;
        assert_problem(&resp, 400, "invalid_query");
    }
    let resp = api
        .admin(
            "GET",
            &format!("/v1/zones/{zone}/audit?cursor=bm9wZQ"),
            None,
        )
        .await?;
    assert_problem(&resp, 400, "invalid_cursor");
    let resp = api
        .admin("GET", "/v1/zones/no-such-zone/audit", None)
        .await?;
    assert_problem(&resp, 404, "zone_not_found");
    let other = api.create_zone("elsewhere").await?;
    let (token, _) = api.mint_token("read", Some(&other)).await?;
    let resp = api
        .call(&token, "GET", &format!("/v1/zones/{zone}/audit"), None)
        .await?;
    assert_problem(&resp, 403, "admin_token_zone_mismatch");
    let resp = api
        .call(&token, "GET", &format!("/v1/zones/{other}/audit"), None)
        .await?;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()?["items"], json!([]));

    Ok(zone)
}

#[tokio::test]
async fn in_caracal_all_the_admin_api_answers_audit_reads_in_process() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    // No audit service runs and no internal token is configured: the reads go through the
    // API's own caracal_audit pool.
    let api = ApiFixture::start_with_audit_in_process(&db).await?;
    reads_answer_as_specified(&db, &api).await?;
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn without_the_internal_token_or_with_a_wrong_one_audit_reads_are_unavailable()
-> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let audit = AuditFixture::start(&db).await?;
    let audit_url = format!("http://{}", audit.addr);
    let no_token =
        ApiFixture::start_with(&db, &[("CARACAL_AUDIT_URL", audit_url.as_str())]).await?;
    let zone = no_token.create_zone("tokenless").await?;
    let resp = no_token
        .admin("GET", &format!("/v1/zones/{zone}/audit"), None)
        .await?;
    let body = assert_problem(&resp, 503, "audit_unavailable");
    assert!(
        !body.to_string().contains("CARACAL_INTERNAL_TOKEN"),
        "{body}"
    );
    no_token.stop().await;

    let wrong = "w".repeat(40);
    let wrong_token = ApiFixture::start_with(
        &db,
        &[
            ("CARACAL_AUDIT_URL", audit_url.as_str()),
            ("CARACAL_INTERNAL_TOKEN", wrong.as_str()),
        ],
    )
    .await?;
    let resp = wrong_token
        .admin("GET", &format!("/v1/zones/{zone}/audit"), None)
        .await?;
    assert_problem(&resp, 503, "audit_unavailable");
    wrong_token.stop().await;
    audit.stop().await;
    Ok(())
}

/// The admin API sends exactly what `run` accepts: a recording server stands in for the
/// audit service, and each recorded body is then answered by `run` itself.
#[tokio::test]
async fn the_api_forwards_requests_that_run_answers_with_the_internal_bearer() -> anyhow::Result<()>
{
    let db = TestDb::migrated().await?;
    let recorder = Upstream::start().await?;
    let api = ApiFixture::start_with(
        &db,
        &[
            ("CARACAL_AUDIT_URL", recorder.url("").as_str()),
            ("CARACAL_INTERNAL_TOKEN", INTERNAL_TOKEN),
        ],
    )
    .await?;
    let zone = api.create_zone("recorded").await?;
    seed(&db, &zone).await;
    let pool = db.service_pool(ServiceRole::Audit).await?;
    let cases = [
        (
            format!(
                "/v1/zones/{zone}/audit?event_type=token_exchange,replay_detected&decision=deny\
                 &since=2026-05-21T14:00:03%2B02:00&fields=id,decision&limit=5"
            ),
            json!({"items": [{"id": "e4", "decision": "deny"}, {"id": "e3", "decision": "deny"}], "next_cursor": null}),
        ),
        (
            format!("/v1/zones/{zone}/audit?session_id=as-1&label=ops&application_id=app-1"),
            json!(["e2", "e1"]),
        ),
        (
            format!(
                "/v1/zones/{zone}/audit?authority_record_id=ar-1&until=2026-05-21T12:00:02Z&request_id=req-1"
            ),
            json!(["e1"]),
        ),
        (
            format!("/v1/zones/{zone}/audit/by-request/req-1"),
            json!(["e1", "e2"]),
        ),
        (
            format!("/v1/zones/{zone}/admin-audit?limit=1&entity_type=zone"),
            json!(null),
        ),
    ];
    for (path, expected) in cases {
        let resp = api.admin("GET", &path, None).await?;
        assert_eq!(resp.status, 200, "{path}: {:?}", resp.json());
        let recorded = recorder.last().unwrap();
        assert_eq!(recorded.method, "POST");
        assert_eq!(recorded.path, "/internal/audit/query");
        let header = |name: &str| {
            recorded
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(
            header("authorization"),
            Some(format!("Bearer {INTERNAL_TOKEN}"))
        );
        assert_eq!(header("content-type").as_deref(), Some("application/json"));
        assert_eq!(header("x-request-id"), resp.header("x-request-id"));
        let request: QueryRequest = serde_json::from_slice(&recorded.body)?;
        assert_eq!(request.zone_id, zone);
        let answer = query::run(&pool, request).await?;
        let body: Value = serde_json::from_slice(&answer.body)?;
        match &expected {
            Value::Object(_) => assert_eq!(body, expected, "{path}"),
            Value::Array(ids_expected) => {
                let expected: Vec<&str> =
                    ids_expected.iter().map(|v| v.as_str().unwrap()).collect();
                assert_eq!(ids(&body), expected, "{path}");
            }
            _ => {
                let items = body["items"].as_array().unwrap();
                assert_eq!(items.len(), 1, "{body}");
                assert_eq!(items[0]["entity_type"], "zone");
            }
        }
    }
    api.stop().await;
    Ok(())
}
