use std::{collections::HashMap, sync::Arc, time::Duration};

use control_events::{fanout::FanoutStats, streams};

use super::{Anchors, AuthorityView};

fn anchors() -> Anchors {
    Anchors {
        sid: "rec-1".into(),
        root_sid: "rec-root".into(),
        agent_session_id: Some("as-1".into()),
        delegation_edge_id: Some("edge-1".into()),
    }
}

fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn each_revoke_anchor_marks_the_bearer_revoked() {
    for (field, value) in [
        ("session_id", "rec-1"),
        ("session_id", "rec-root"),
        ("agent_session_id", "as-1"),
        ("delegation_edge_id", "edge-1"),
    ] {
        let view = AuthorityView::new(None, Vec::new(), Duration::from_secs(10));
        assert!(!view.anchors_revoked(&anchors()));
        view.apply(
            streams::SESSIONS_REVOKE,
            &fields(&[("zone_id", "z"), (field, value), ("reason", "requested")]),
        )
        .await;
        assert!(view.anchors_revoked(&anchors()), "{field}={value}");
    }
}

#[tokio::test]
async fn an_unrelated_anchor_does_not_revoke() {
    let view = AuthorityView::new(None, Vec::new(), Duration::from_secs(10));
    view.apply(
        streams::SESSIONS_REVOKE,
        &fields(&[("zone_id", "z"), ("session_id", "other"), ("reason", "r")]),
    )
    .await;
    assert!(!view.anchors_revoked(&anchors()));
}

#[tokio::test]
async fn suspend_marks_and_resume_clears_the_session() {
    let view = AuthorityView::new(None, Vec::new(), Duration::from_secs(10));
    view.apply(
        streams::AGENTS_LIFECYCLE,
        &fields(&[
            ("event", "suspend"),
            ("zone_id", "z"),
            ("agent_session_id", "as-1"),
        ]),
    )
    .await;
    assert!(view.anchors_revoked(&anchors()));
    view.apply(
        streams::AGENTS_LIFECYCLE,
        &fields(&[
            ("event", "resume"),
            ("zone_id", "z"),
            ("agent_session_id", "as-1"),
        ]),
    )
    .await;
    assert!(!view.anchors_revoked(&anchors()));
}

#[tokio::test]
async fn an_edge_revoke_marks_and_an_edge_create_does_not() {
    let view = AuthorityView::new(None, Vec::new(), Duration::from_secs(10));
    view.apply(
        streams::DELEGATIONS_INVALIDATE,
        &fields(&[
            ("event", "edge_create"),
            ("zone_id", "z"),
            ("epoch", "3"),
            ("edge_id", "edge-1"),
        ]),
    )
    .await;
    assert!(!view.anchors_revoked(&anchors()));
    view.apply(
        streams::DELEGATIONS_INVALIDATE,
        &fields(&[
            ("event", "edge_revoke"),
            ("zone_id", "z"),
            ("epoch", "4"),
            ("edge_id", "edge-1"),
        ]),
    )
    .await;
    assert!(view.anchors_revoked(&anchors()));
}

#[test]
fn a_view_is_stale_until_a_source_completed_and_then_ages_out() {
    let stats = Arc::new(FanoutStats::default());
    let view = AuthorityView::new(None, vec![Arc::clone(&stats)], Duration::from_millis(200));
    assert!(!view.is_fresh(), "nothing read yet");
    stats.last_read_ms.store(
        chrono::Utc::now().timestamp_millis(),
        std::sync::atomic::Ordering::Release,
    );
    assert!(view.is_fresh(), "a consumer read just now");
    stats.last_read_ms.store(
        chrono::Utc::now().timestamp_millis() - 1_000,
        std::sync::atomic::Ordering::Release,
    );
    assert!(!view.is_fresh(), "the read is older than the bound");
    view.mark_polled_now();
    assert!(view.is_fresh(), "a poll just completed");
}

#[test]
fn every_consumer_must_be_recent_for_the_streams_to_count() {
    let a = Arc::new(FanoutStats::default());
    let b = Arc::new(FanoutStats::default());
    let view = AuthorityView::new(
        None,
        vec![Arc::clone(&a), Arc::clone(&b)],
        Duration::from_secs(5),
    );
    a.last_read_ms.store(
        chrono::Utc::now().timestamp_millis(),
        std::sync::atomic::Ordering::Release,
    );
    assert!(!view.is_fresh(), "one consumer never read");
}
