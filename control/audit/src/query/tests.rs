use chrono::TimeZone as _;
use control_model::page::After;
use serde_json::json;

use super::*;

fn events(zone: &str) -> QueryRequest {
    QueryRequest {
        kind: QueryKind::Events,
        zone_id: zone.to_owned(),
        ..QueryRequest::default()
    }
}

fn refusal(request: &QueryRequest) -> (u16, &'static str, String) {
    let error = Plan::from_request(request).unwrap_err();
    let message = error.problem().message.into_owned();
    (error.status(), error.code(), message)
}

fn at(second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 21, 12, 0, second).unwrap()
}

fn row(id: &str, second: u32) -> EventRow {
    EventRow {
        id: id.to_owned(),
        zone_id: "zone-a".to_owned(),
        event_type: "token_exchange".to_owned(),
        request_id: Some("req-1".to_owned()),
        decision: Some("allow".to_owned()),
        policy_set_id: None,
        policy_set_version_id: None,
        manifest_sha: None,
        evaluation_status: Some("complete".to_owned()),
        determining_policies_json: Some(json!([{"policy": "p"}])),
        diagnostics_json: None,
        metadata_json: Some(json!({"application_id": "app-1", "note": "a, \"b\""})),
        occurred_at: at(second),
        ingested_at: at(second + 1),
    }
}

#[test]
fn an_event_query_defaults_to_a_page_of_100_with_every_field_as_json() {
    let plan = Plan::from_request(&events("zone-a")).unwrap();
    assert_eq!(plan.page.limit, EVENTS_DEFAULT_LIMIT);
    assert!(plan.page.after.is_none());
    assert_eq!(plan.format, Format::Json);
    assert_eq!(plan.fields, (0..EVENT_FIELDS.len()).collect::<Vec<_>>());
    let admin = QueryRequest {
        kind: QueryKind::Admin,
        ..events("zone-a")
    };
    assert_eq!(
        Plan::from_request(&admin).unwrap().page.limit,
        ADMIN_DEFAULT_LIMIT
    );
}

#[test]
fn limits_outside_their_range_are_invalid_queries() {
    for (kind, limit) in [
        (QueryKind::Events, 0),
        (QueryKind::Events, 1001),
        (QueryKind::Events, -1),
        (QueryKind::Admin, 501),
    ] {
        let request = QueryRequest {
            kind,
            limit: Some(limit),
            ..events("zone-a")
        };
        let (status, code, _) = refusal(&request);
        assert_eq!((status, code), (400, "invalid_query"), "{kind:?} {limit}");
    }
    for limit in [1, 1000] {
        let request = QueryRequest {
            limit: Some(limit),
            ..events("zone-a")
        };
        assert_eq!(Plan::from_request(&request).unwrap().page.limit, limit);
    }
}

#[test]
fn event_type_lists_are_bounded_and_checked() {
    let many = QueryRequest {
        event_types: (0..17).map(|i| format!("type_{i}")).collect(),
        ..events("zone-a")
    };
    assert_eq!(refusal(&many).1, "invalid_query");
    let sixteen = QueryRequest {
        event_types: (0..16).map(|i| format!("type_{i}")).collect(),
        ..events("zone-a")
    };
    assert!(Plan::from_request(&sixteen).is_ok());
    for bad in ["", "Token", "a b", "x'--", &"a".repeat(65)] {
        let request = QueryRequest {
            event_types: vec![bad.to_owned()],
            ..events("zone-a")
        };
        assert_eq!(refusal(&request).1, "invalid_query", "{bad:?}");
    }
}

#[test]
fn members_that_do_not_apply_to_the_kind_are_refused_by_name() {
    let label_on_admin = QueryRequest {
        kind: QueryKind::Admin,
        label: Some("x".to_owned()),
        ..events("zone-a")
    };
    let (_, code, message) = refusal(&label_on_admin);
    assert_eq!(code, "invalid_query");
    assert!(message.contains("label"), "{message}");
    let actor_on_events = QueryRequest {
        actor_id: Some("admin:1".to_owned()),
        ..events("zone-a")
    };
    assert_eq!(refusal(&actor_on_events).1, "invalid_query");
    let csv_by_request = QueryRequest {
        kind: QueryKind::ByRequest,
        request_id: Some("r".to_owned()),
        format: Some(Format::Csv),
        ..events("zone-a")
    };
    assert_eq!(refusal(&csv_by_request).1, "invalid_query");
    let json_by_request = QueryRequest {
        format: Some(Format::Json),
        ..csv_by_request
    };
    assert!(Plan::from_request(&json_by_request).is_ok());
    let no_request_id = QueryRequest {
        kind: QueryKind::ByRequest,
        ..events("zone-a")
    };
    assert_eq!(refusal(&no_request_id).1, "invalid_query");
}

#[test]
fn text_filters_refuse_control_characters_and_length_without_echoing_the_value() {
    for bad in [
        String::new(),
        "a\0b".to_owned(),
        "x".repeat(257),
        "a\nb".to_owned(),
    ] {
        let request = QueryRequest {
            application_id: Some(bad.clone()),
            ..events("zone-a")
        };
        let (status, code, message) = refusal(&request);
        assert_eq!((status, code), (400, "invalid_query"));
        assert!(message.contains("application_id"), "{message}");
        assert!(bad.is_empty() || !message.contains(&bad), "{message}");
    }
}

#[test]
fn a_window_must_not_end_before_it_starts_and_the_zone_must_be_an_id() {
    let backwards = QueryRequest {
        since: Some(at(2)),
        until: Some(at(1)),
        ..events("zone-a")
    };
    assert_eq!(refusal(&backwards).1, "invalid_query");
    assert_eq!(refusal(&events("zone a")).1, "invalid_query");
    assert_eq!(refusal(&events("*")).1, "invalid_query");
}

#[test]
fn cursors_round_trip_and_garbage_is_an_invalid_cursor() {
    let after = After {
        ts: Utc.with_ymd_and_hms(2026, 5, 21, 12, 0, 0).unwrap()
            + chrono::Duration::microseconds(123_456),
        id: "evt-9".to_owned(),
    };
    let request = QueryRequest {
        cursor: Some(control_http::strict::encode_cursor(&after)),
        ..events("zone-a")
    };
    assert_eq!(
        Plan::from_request(&request).unwrap().page.after,
        Some(after)
    );
    for bad in ["%%%", "bm90IGpzb24", "eyJ4IjoxfQ"] {
        let request = QueryRequest {
            cursor: Some(bad.to_owned()),
            ..events("zone-a")
        };
        assert_eq!(
            refusal(&request),
            (
                400,
                "invalid_cursor",
                "cursor is not one this API issued".to_owned()
            )
        );
    }
}

#[test]
fn fields_are_a_projection_of_known_names_in_the_asked_order() {
    let request = QueryRequest {
        fields: Some(vec!["event_type".to_owned(), "id".to_owned()]),
        ..events("zone-a")
    };
    assert_eq!(Plan::from_request(&request).unwrap().fields, vec![2, 0]);
    for bad in [
        vec![],
        vec!["id".to_owned(), "id".to_owned()],
        vec!["chain_hmac".to_owned()],
    ] {
        let request = QueryRequest {
            fields: Some(bad.clone()),
            ..events("zone-a")
        };
        assert_eq!(refusal(&request).1, "invalid_query", "{bad:?}");
    }
}

#[test]
fn the_wire_request_is_strict_and_round_trips() {
    let text = r#"{"kind":"events","zone_id":"z","decision":"deny","event_types":["a","b"],
        "since":"2026-05-21T14:00:00+02:00","limit":5,"format":"csv","fields":["id"]}"#;
    let request: QueryRequest = serde_json::from_str(text).unwrap();
    assert_eq!(request.decision, Some(Decision::Deny));
    assert_eq!(request.since, Some(at(0)));
    assert_eq!(request.format, Some(Format::Csv));
    let again: QueryRequest =
        serde_json::from_value(serde_json::to_value(&request).unwrap()).unwrap();
    assert_eq!(again, request);
    assert!(
        serde_json::from_str::<QueryRequest>(r#"{"kind":"events","zone_id":"z","sql":"x"}"#)
            .is_err()
    );
    assert!(
        serde_json::from_str::<QueryRequest>(
            r#"{"kind":"events","zone_id":"z","decision":"maybe"}"#
        )
        .is_err()
    );
    assert!(serde_json::from_str::<QueryRequest>(r#"{"zone_id":"z"}"#).is_err());
}

#[test]
fn secret_looking_keys_are_redacted_at_any_depth() {
    let mut value = json!({
        "application_id": "app-1",
        "Authorization": "Bearer abc",
        "nested": {"client_secret": "s", "list": [{"apiKey": 1}, {"x-api-key": {"deep": true}}]},
        "SESSION_TOKEN": null,
        "set-cookie": ["a"],
        "db_password": "p",
        "credentials": {"user": "u"},
        "privateKey": "k",
        "tokenless": "still a token marker",
        "labels": ["token", "secret"],
    });
    redact(&mut value);
    assert_eq!(
        value,
        json!({
            "application_id": "app-1",
            "Authorization": REDACTED,
            "nested": {"client_secret": REDACTED, "list": [{"apiKey": REDACTED}, {"x-api-key": REDACTED}]},
            "SESSION_TOKEN": REDACTED,
            "set-cookie": REDACTED,
            "db_password": REDACTED,
            "credentials": REDACTED,
            "privateKey": REDACTED,
            "tokenless": REDACTED,
            "labels": ["token", "secret"],
        })
    );
    let mut row = row("e1", 0);
    row.diagnostics_json = Some(json!([{"input": {"password": "x"}}]));
    redact_event(&mut row);
    assert_eq!(
        row.diagnostics_json,
        Some(json!([{"input": {"password": REDACTED}}]))
    );
}

#[test]
fn csv_cells_are_quoted_per_rfc_4180_and_formulas_are_neutralised() {
    assert_eq!(csv_cell("plain"), "plain");
    assert_eq!(csv_cell(""), "");
    assert_eq!(csv_cell("a,b"), "\"a,b\"");
    assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
    assert_eq!(csv_cell("line\nbreak"), "\"line\nbreak\"");
    assert_eq!(csv_cell("=1+2"), "'=1+2");
    assert_eq!(csv_cell("+1"), "'+1");
    assert_eq!(csv_cell("-1"), "'-1");
    assert_eq!(csv_cell("@SUM(A1)"), "'@SUM(A1)");
    assert_eq!(csv_cell("\tx"), "'\tx");
    assert_eq!(
        csv_cell("=HYPERLINK(\"x\",\"y\")"),
        "\"'=HYPERLINK(\"\"x\"\",\"\"y\"\")\""
    );
    assert_eq!(csv_cell("a=b"), "a=b");
}

#[test]
fn a_csv_export_has_a_header_row_the_projection_and_json_columns_as_compact_text() {
    let page = Page {
        items: vec![row("e2", 2), row("e1", 1)],
        next: None,
    };
    let answer = events_csv(page, &[0, 11, 5, 12]);
    assert_eq!(answer.content_type, CSV_TYPE);
    assert_eq!(answer.content_disposition, Some(CSV_DISPOSITION));
    assert_eq!(answer.next_cursor, None);
    let text = String::from_utf8(answer.body.to_vec()).unwrap();
    assert_eq!(
        text,
        "id,metadata_json,policy_set_id,occurred_at\r\n\
         e2,\"{\"\"application_id\"\":\"\"app-1\"\",\"\"note\"\":\"\"a, \\\"\"b\\\"\"\"\"}\",,2026-05-21T12:00:02.000000Z\r\n\
         e1,\"{\"\"application_id\"\":\"\"app-1\"\",\"\"note\"\":\"\"a, \\\"\"b\\\"\"\"\"}\",,2026-05-21T12:00:01.000000Z\r\n"
    );
}

#[test]
fn a_json_page_carries_the_projected_items_and_the_next_cursor() {
    let next = After {
        ts: at(1),
        id: "e1".to_owned(),
    };
    let page = Page {
        items: vec![row("e2", 2), row("e1", 1)],
        next: Some(next.clone()),
    };
    let answer = events_json(page, &[0, 4, 13]);
    assert_eq!(answer.content_type, JSON_TYPE);
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(
        body,
        json!({
            "items": [
                {"id": "e2", "decision": "allow", "ingested_at": "2026-05-21T12:00:03.000000Z"},
                {"id": "e1", "decision": "allow", "ingested_at": "2026-05-21T12:00:02.000000Z"},
            ],
            "next_cursor": control_http::strict::encode_cursor(&next),
        })
    );
    let last = events_json(
        Page {
            items: vec![],
            next: None,
        },
        &[0],
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&last.body).unwrap(),
        json!({"items": [], "next_cursor": null})
    );
}

#[test]
fn an_oversized_page_ends_early_with_a_cursor_after_its_last_row() {
    let big = "x".repeat(MAX_ANSWER_BYTES / 3);
    let items: Vec<EventRow> = (0..5u32)
        .map(|i| {
            let mut r = row(&format!("e{i}"), 10 - i);
            r.metadata_json = Some(json!({"blob": big}));
            r
        })
        .collect();
    let page = Page { items, next: None };
    let answer = events_json(page, &(0..EVENT_FIELDS.len()).collect::<Vec<_>>());
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    let ids: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["e0", "e1"]);
    let expected = control_http::strict::encode_cursor(&After {
        ts: at(9),
        id: "e1".to_owned(),
    });
    assert_eq!(body["next_cursor"], json!(expected));
    assert_eq!(answer.next_cursor.as_deref(), Some(expected.as_str()));
}

#[test]
fn refusals_carry_the_catalog_codes() {
    assert_eq!(
        (
            QueryError::RequestNotFound.status(),
            QueryError::RequestNotFound.code()
        ),
        (404, "request_not_found")
    );
    assert_eq!(QueryError::InvalidCursor.problem().code, "invalid_cursor");
    let store = QueryError::from(sqlx::Error::PoolTimedOut);
    assert_eq!((store.status(), store.code()), (503, "service_unavailable"));
    assert!(!store.problem().message.contains("pool"));
}

#[test]
fn an_answer_becomes_a_response_with_its_headers() {
    let answer = QueryAnswer {
        status: 200,
        content_type: CSV_TYPE,
        content_disposition: Some(CSV_DISPOSITION),
        next_cursor: Some("abc".to_owned()),
        body: Bytes::from_static(b"id\r\n"),
    };
    let response = answer.into_response();
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(header("content-type"), CSV_TYPE);
    assert_eq!(header("content-disposition"), CSV_DISPOSITION);
    assert_eq!(header(NEXT_CURSOR_HEADER), "abc");
}
