use std::collections::HashMap;

use chrono::{Duration, TimeZone};

use super::*;

#[derive(Default)]
struct View {
    records: HashMap<String, RecordView>,
    sessions: HashMap<String, AgentSessionView>,
    edges: HashMap<String, EdgeView>,
}

impl AuthorityLookup for View {
    fn record(&self, id: &str) -> Option<&RecordView> {
        self.records.get(id)
    }
    fn session(&self, id: &str) -> Option<&AgentSessionView> {
        self.sessions.get(id)
    }
    fn edge(&self, id: &str) -> Option<&EdgeView> {
        self.edges.get(id)
    }
    fn epoch(&self) -> i64 {
        7
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
}

fn session(id: &str, app: &str) -> AgentSessionView {
    AgentSessionView {
        id: id.into(),
        zone_id: "z".into(),
        application_id: app.into(),
        status: "active".into(),
        lifecycle: "task".into(),
        labels: vec![],
        depth: 0,
        parent_id: None,
        subject_record: None,
        started_at: now() - Duration::seconds(10),
        ttl_seconds: Some(3600),
        heartbeat_deadline_at: None,
    }
}

fn edge(
    id: &str,
    source: &str,
    target: &str,
    issuer: &str,
    receiver: &str,
    parent: Option<&str>,
    hops: i64,
) -> EdgeView {
    EdgeView {
        id: id.into(),
        zone_id: "z".into(),
        source_session_id: source.into(),
        target_session_id: target.into(),
        issuer_application_id: issuer.into(),
        receiver_application_id: receiver.into(),
        resource_id: None,
        scopes: vec!["x:read".into(), "x:write".into()],
        constraints_json: serde_json::json!({"max_hops": hops}),
        status: "active".into(),
        expires_at: now() + Duration::hours(1),
        revoked_at: None,
        parent_edge_id: parent.map(Into::into),
        edge_version: 0,
    }
}

/// app-a's session s1 delegates to app-b's s2 (e1); s2 delegates to app-c's s3 (e2).
fn two_hops() -> View {
    let mut v = View::default();
    for (id, app) in [("s1", "app-a"), ("s2", "app-b"), ("s3", "app-c")] {
        v.sessions.insert(id.into(), session(id, app));
    }
    v.edges.insert(
        "e1".into(),
        edge("e1", "s1", "s2", "app-a", "app-b", None, 2),
    );
    v.edges.insert(
        "e2".into(),
        edge("e2", "s2", "s3", "app-b", "app-c", Some("e1"), 1),
    );
    v
}

fn input<'a>(
    app: &'a str,
    session: Option<&'a str>,
    edge: Option<&'a str>,
    scopes: &'a [String],
) -> Revalidation<'a> {
    Revalidation {
        zone_id: "z",
        caller_application_id: app,
        bound_record_id: None,
        agent_session_id: session,
        delegation_edge_id: edge,
        requested_scopes: scopes,
        requested_ttl: 900,
        subject_token: false,
        now: now(),
    }
}

fn read() -> Vec<String> {
    vec!["x:read".into()]
}

#[test]
fn a_two_hop_chain_yields_path_chain_and_epoch() {
    let v = two_hops();
    let scopes = read();
    let proof = revalidate(&input("app-c", Some("s3"), Some("e2"), &scopes), &v).unwrap();
    let proof = proof.proof().unwrap();
    assert_eq!(proof.path, vec!["e1", "e2"]);
    let apps: Vec<&str> = proof
        .chain
        .iter()
        .map(|l| l.application_id.as_str())
        .collect();
    assert_eq!(apps, vec!["app-a", "app-b", "app-c"]);
    assert_eq!(proof.chain.last().unwrap().delegation_edge_id, None);
    assert_eq!(proof.epoch, 7);
}

/// A change to the two-hop fixture.
type Mutation = Box<dyn Fn(&mut View)>;

#[test]
fn each_failure_has_its_catalog_description() {
    let scopes = read();
    let too_many: Vec<String> = vec!["x:read".into(), "x:admin".into()];
    let cases: Vec<(Mutation, Revalidation<'_>, &str)> = vec![
        (
            Box::new(|_| {}),
            input("app-c", None, Some("e2"), &scopes),
            "delegation requires a target Session",
        ),
        (
            Box::new(|v| v.edges.get_mut("e2").unwrap().status = "revoked".into()),
            input("app-c", Some("s3"), Some("e2"), &scopes),
            "delegation edge inactive or expired",
        ),
        (
            Box::new(|_| {}),
            input("app-c", Some("s2"), Some("e2"), &scopes),
            "delegation edge target mismatch",
        ),
        (
            Box::new(|v| v.sessions.get_mut("s2").unwrap().status = "suspended".into()),
            input("app-c", Some("s3"), Some("e2"), &scopes),
            "delegation source inactive or expired",
        ),
        (
            Box::new(|_| {}),
            input("app-b", Some("s3"), Some("e2"), &scopes),
            "delegation target inactive or unauthorized",
        ),
        (
            Box::new(|v| v.edges.get_mut("e2").unwrap().issuer_application_id = "app-x".into()),
            input("app-c", Some("s3"), Some("e2"), &scopes),
            "delegation application mismatch",
        ),
        (
            Box::new(|v| {
                v.edges.get_mut("e2").unwrap().constraints_json =
                    serde_json::json!({"color": "red"})
            }),
            input("app-c", Some("s3"), Some("e2"), &scopes),
            "delegation constraints invalid",
        ),
        (
            Box::new(|_| {}),
            input("app-c", Some("s3"), Some("e2"), &too_many),
            "requested scopes exceed delegation scopes",
        ),
        (
            Box::new(|v| {
                v.edges.get_mut("e2").unwrap().constraints_json =
                    serde_json::json!({"ttl_seconds": 60})
            }),
            input("app-c", Some("s3"), Some("e2"), &scopes),
            "requested ttl exceeds delegation ttl",
        ),
        (
            Box::new(|v| {
                v.edges.get_mut("e2").unwrap().constraints_json =
                    serde_json::json!({"max_hops": 11})
            }),
            input("app-c", Some("s3"), Some("e2"), &scopes),
            "delegation hop limit exceeds platform maximum",
        ),
        (
            Box::new(|v| {
                v.edges.get_mut("e1").unwrap().revoked_at = Some(now());
            }),
            input("app-c", Some("s3"), Some("e2"), &scopes),
            "delegation path edge inactive or revoked",
        ),
        (
            Box::new(|v| v.edges.get_mut("e1").unwrap().receiver_application_id = "app-q".into()),
            input("app-c", Some("s3"), Some("e2"), &scopes),
            "delegation chain discontinuous",
        ),
        (
            Box::new(|v| {
                v.edges.remove("e1");
            }),
            input("app-c", Some("s3"), Some("e2"), &scopes),
            "delegation path invalid",
        ),
        // the parent allows one hop from itself down, but the path has two below it
        (
            Box::new(|v| {
                v.edges.get_mut("e1").unwrap().constraints_json = serde_json::json!({"max_hops": 1})
            }),
            input("app-c", Some("s3"), Some("e2"), &scopes),
            "delegation path invalid",
        ),
        (
            Box::new(|v| v.sessions.get_mut("s3").unwrap().ttl_seconds = Some(1)),
            input("app-c", Some("s3"), None, &scopes),
            "session inactive or expired",
        ),
        (
            Box::new(|_| {}),
            input("app-b", Some("s3"), None, &scopes),
            "session not owned by caller",
        ),
    ];
    for (mutate, inp, expected) in cases {
        let mut v = two_hops();
        mutate(&mut v);
        assert_eq!(revalidate(&inp, &v).unwrap_err(), expected);
    }
}

#[test]
fn a_parent_cycle_is_a_path_error_not_a_hang() {
    let mut v = two_hops();
    v.edges.get_mut("e1").unwrap().parent_edge_id = Some("e2".into());
    let scopes = read();
    assert_eq!(
        revalidate(&input("app-c", Some("s3"), Some("e2"), &scopes), &v).unwrap_err(),
        "delegation path invalid"
    );
}

#[test]
fn bound_records_must_be_live_and_owned_without_a_subject_token() {
    let mut v = two_hops();
    v.records.insert(
        "r1".into(),
        RecordView {
            id: "r1".into(),
            zone_id: "z".into(),
            session_type: "application".into(),
            subject_id: "app-c".into(),
            status: "active".into(),
            expires_at: now() + Duration::minutes(5),
        },
    );
    let scopes = read();
    let mut inp = input("app-c", None, None, &scopes);
    inp.bound_record_id = Some("r1");
    assert_eq!(revalidate(&inp, &v).unwrap(), Revalidated::Nothing);
    inp.caller_application_id = "app-b";
    assert_eq!(
        revalidate(&inp, &v).unwrap_err(),
        "authority record not owned by caller"
    );
    v.records.get_mut("r1").unwrap().status = "revoked".into();
    assert_eq!(
        revalidate(&inp, &v).unwrap_err(),
        "authority record inactive or expired"
    );
}

#[test]
fn a_user_subject_record_that_expired_ends_the_session() {
    let mut s = session("s9", "app");
    s.subject_record = Some(RecordView {
        id: "u".into(),
        zone_id: "z".into(),
        session_type: "user".into(),
        subject_id: "alice".into(),
        status: "active".into(),
        expires_at: now() - Duration::seconds(1),
    });
    assert!(!s.is_live("z", now()));
    s.subject_record.as_mut().unwrap().session_type = "application".into();
    assert!(
        s.is_live("z", now()),
        "application-typed records do not bound liveness"
    );
}

#[test]
fn resources_are_allowed_by_row_id_and_by_list() {
    let v = two_hops();
    let scopes = read();
    let proof = revalidate(&input("app-c", Some("s3"), Some("e2"), &scopes), &v).unwrap();
    let mut proof = proof.proof().unwrap().clone();
    assert!(proof.allows_resource("r-1", "resource://x"));
    proof.edge.resource_id = Some("r-1".into());
    assert!(proof.allows_resource("r-1", "resource://x"));
    assert!(!proof.allows_resource("r-2", "resource://y"));
    proof.constraints.resources = Some(vec!["resource://y".into()]);
    assert!(!proof.allows_resource("r-1", "resource://x"));
}
