use bytes::Bytes;

use super::*;
use crate::auth::{Capability, Principal};

fn request(query: &[(&str, &str)]) -> AdminRequest {
    AdminRequest {
        method: Method::GET,
        path: "/v1/zones/zone-a/audit".to_owned(),
        query: query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        body: Bytes::new(),
        json_content: false,
        media_type: None,
        request_id: "req-test".to_owned(),
        principal: Principal {
            id: "bootstrap".to_owned(),
            name: "bootstrap".to_owned(),
            zone: None,
            capability: Capability::Read,
            bootstrap: true,
        },
    }
}

fn refused(outcome: Result<Value, Problem>) -> (u16, String, String) {
    let problem = outcome.unwrap_err();
    (
        problem.status,
        problem.code.into_owned(),
        problem.message.into_owned(),
    )
}

#[test]
fn an_unfiltered_event_query_asks_for_the_default_page() {
    assert_eq!(
        events_query(&request(&[]), "zone-a").unwrap(),
        json!({"kind": "events", "zone_id": "zone-a", "limit": 100})
    );
}

#[test]
fn every_event_filter_is_forwarded_in_the_internal_names() {
    let cursor = control_http::strict::encode_cursor(&control_model::page::After {
        ts: DateTime::parse_from_rfc3339("2026-05-21T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc),
        id: "e1".to_owned(),
    });
    let query = events_query(
        &request(&[
            ("since", "2026-05-21T14:00:00+02:00"),
            ("until", "2026-05-22T00:00:00.5Z"),
            ("request_id", "req-1"),
            ("decision", "deny"),
            ("event_type", "token_exchange,gateway_resource_request"),
            ("application_id", "app-1"),
            ("session_id", "as-1"),
            ("authority_record_id", "ar-1"),
            ("label", "triage"),
            ("format", "csv"),
            ("fields", "id,metadata_json"),
            ("cursor", &cursor),
            ("limit", "1000"),
        ]),
        "zone-a",
    )
    .unwrap();
    assert_eq!(
        query,
        json!({
            "kind": "events",
            "zone_id": "zone-a",
            "since": "2026-05-21T12:00:00.000000Z",
            "until": "2026-05-22T00:00:00.500000Z",
            "request_id": "req-1",
            "decision": "deny",
            "event_types": ["token_exchange", "gateway_resource_request"],
            "application_id": "app-1",
            "session_id": "as-1",
            "authority_record_id": "ar-1",
            "label": "triage",
            "format": "csv",
            "fields": ["id", "metadata_json"],
            "cursor": cursor,
            "limit": 1000,
        })
    );
}

#[test]
fn bad_event_parameters_are_invalid_queries_that_name_the_parameter() {
    let cases: &[(&str, &str)] = &[
        ("limit", "0"),
        ("limit", "1001"),
        ("limit", "ten"),
        ("since", "yesterday"),
        ("until", "2026-05-21"),
        ("decision", "maybe"),
        ("event_type", "Token"),
        ("event_type", "a,,b"),
        ("format", "xml"),
        ("fields", "id,chain_hmac"),
        ("fields", "id,id"),
        ("label", "a\u{0}b"),
        ("nonsense", "1"),
    ];
    for (name, value) in cases {
        let (status, code, message) = refused(events_query(&request(&[(name, value)]), "zone-a"));
        assert_eq!(
            (status, code.as_str()),
            (400, "invalid_query"),
            "{name}={value}"
        );
        assert!(message.contains(name), "{name}: {message}");
        assert!(value.len() < 3 || !message.contains(value), "{message}");
    }
    let many: Vec<String> = (0..17).map(|i| format!("t{i}")).collect();
    let (_, code, _) = refused(events_query(
        &request(&[("event_type", &many.join(","))]),
        "zone-a",
    ));
    assert_eq!(code, "invalid_query");
    let sixteen = many.get(..16).unwrap().join(",");
    assert!(events_query(&request(&[("event_type", &sixteen)]), "zone-a").is_ok());
    let (_, code, _) = refused(events_query(
        &request(&[
            ("since", "2026-05-22T00:00:00Z"),
            ("until", "2026-05-21T00:00:00Z"),
        ]),
        "zone-a",
    ));
    assert_eq!(code, "invalid_query");
    let long = "x".repeat(MAX_FILTER_CHARS + 1);
    let (_, code, _) = refused(events_query(
        &request(&[("application_id", &long)]),
        "zone-a",
    ));
    assert_eq!(code, "invalid_query");
}

#[test]
fn a_cursor_the_api_did_not_issue_is_an_invalid_cursor() {
    for bad in ["%%%", "bm90IGpzb24"] {
        let (status, code, _) = refused(events_query(&request(&[("cursor", bad)]), "zone-a"));
        assert_eq!((status, code.as_str()), (400, "invalid_cursor"));
        let (_, code, _) = refused(admin_query(&request(&[("cursor", bad)]), "zone-a"));
        assert_eq!(code, "invalid_cursor");
    }
}

#[test]
fn by_request_takes_only_its_path_and_admin_audit_pages_as_every_list() {
    assert_eq!(
        by_request_query(&request(&[]), "zone-a", "req-1").unwrap(),
        json!({"kind": "by_request", "zone_id": "zone-a", "request_id": "req-1"})
    );
    for query in [[("limit", "5")], [("cursor", "x")], [("decision", "allow")]] {
        let (_, code, _) = refused(by_request_query(&request(&query), "zone-a", "req-1"));
        assert_eq!(code, "invalid_query");
    }
    assert_eq!(
        admin_query(&request(&[]), "zone-a").unwrap(),
        json!({"kind": "admin", "zone_id": "zone-a", "limit": 200})
    );
    assert_eq!(
        admin_query(
            &request(&[
                ("actor_id", "admin:1"),
                ("entity_type", "zone"),
                ("limit", "500")
            ]),
            "zone-a"
        )
        .unwrap(),
        json!({"kind": "admin", "zone_id": "zone-a", "actor_id": "admin:1", "entity_type": "zone", "limit": 500})
    );
    for (name, value) in [("limit", "501"), ("label", "x"), ("format", "csv")] {
        let (_, code, _) = refused(admin_query(&request(&[(name, value)]), "zone-a"));
        assert_eq!(code, "invalid_query", "{name}");
    }
}

#[test]
fn every_route_reads_in_its_zone() {
    for route in ROUTES {
        assert_eq!(route.need, Need::Read, "{}", route.op);
        assert_eq!(route.scope, Scope::Zone, "{}", route.op);
        assert!(
            route.refusals.contains(&(503, "audit_unavailable")),
            "{}",
            route.op
        );
    }
}
