//! Revocation cascades and the stream messages that announce them (authority §2.5,
//! storage §7.2), shared by every producer that changes agent sessions or delegation edges:
//! the admin API (subject kill switch, producer `api`, `event_outbox`) and the Coordinator
//! (terminate, suspend, resume, delegation create and revoke, the expiry sweepers; producer
//! `coordinator`, `caracal_outbox`).
//!
//! Every function runs inside the caller's zone transaction: the state change and the outbox
//! rows announcing it commit together, and the producer wakes its dispatcher after the commit.
//!
//! | Message | Stream | Dedupe key |
//! | --- | --- | --- |
//! | session revoke: `agent_session_id` (+ `session_id` by the subject-record rule, + `delegation_edge_id` when an edge caused it) | `caracal.sessions.revoke` | `revoke:agent:<id>:v<status_version>` |
//! | lifecycle `spawn`, `suspend`, `resume`, `terminate` | `caracal.agents.lifecycle` | `<event>:<id>:v<status_version>` |
//! | edge revoke: `delegation_edge_id` | `caracal.sessions.revoke` | `revoke:edge:<id>` |
//! | authority record revoke: `session_id` | `caracal.sessions.revoke` | `revoke:record:<id>` |
//! | `edge_create`, `edge_revoke` with the new `epoch` | `caracal.delegations.invalidate` | `<event>:<id>` |
//! | `edge_expire` with the new `epoch` and `edge_ids` | `caracal.delegations.invalidate` | `edge_expire:<zone>:<16 hex>` |

use control_store::{
    cascade::{self, ChangedSession, Ending, Roots},
    outbox::{self, BatchMessage, OutboxTable},
};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;

use crate::streams::{AGENTS_LIFECYCLE, DELEGATIONS_INVALIDATE, SESSIONS_REVOKE};

/// Who enqueues: the outbox table and the producer name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Producer {
    /// The outbox table.
    pub table: OutboxTable,
    /// `api` or `coordinator`.
    pub name: &'static str,
}

impl Producer {
    /// The admin API: `event_outbox`, producer `api`.
    pub const API: Self = Self {
        table: OutboxTable::Event,
        name: outbox::PRODUCER_API,
    };
    /// The Coordinator: `caracal_outbox`, producer `coordinator`.
    pub const COORDINATOR: Self = Self {
        table: OutboxTable::Caracal,
        name: outbox::PRODUCER_COORDINATOR,
    };
}

/// The transaction's context: producer, zone, acting principal, request id.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Who enqueues.
    pub producer: Producer,
    /// The zone of the transaction.
    pub zone: &'a str,
    /// `updated_by` of changed rows.
    pub actor: &'a str,
    /// The request that caused the change, if any.
    pub request_id: Option<&'a str>,
}

impl Context<'_> {
    /// `messages` on `topic` as this context's outbox batch.
    #[must_use]
    pub fn batch<'b>(&'b self, topic: &'b str, messages: &'b [BatchMessage]) -> outbox::Batch<'b> {
        outbox::Batch {
            table: self.producer.table,
            producer: self.producer.name,
            zone_id: self.zone,
            topic,
            messages,
            request_id: self.request_id,
        }
    }

    /// Enqueues `messages` on `topic`; returns how many were new.
    pub async fn enqueue(
        &self,
        conn: &mut PgConnection,
        topic: &str,
        messages: &[BatchMessage],
    ) -> Result<u64, sqlx::Error> {
        outbox::enqueue_batch(conn, &self.batch(topic, messages)).await
    }
}

/// What a cascade changed.
#[derive(Debug, Clone, Default)]
pub struct Cascade {
    /// Sessions ended (roots and descendants), shallowest first.
    pub sessions: Vec<ChangedSession>,
    /// Edges revoked because they touched an ended session.
    pub edges: Vec<String>,
    /// The zone's graph epoch after the change, when edges were revoked.
    pub epoch: Option<i64>,
}

/// How a cascade is announced.
#[derive(Debug, Clone, Copy)]
pub struct Announce<'a> {
    /// `reason` of the edge messages (`requested`, `subject_revoked`, `delegation_revoked`,
    /// `expired`…). Session messages carry each session's stored termination reason.
    pub edge_reason: &'a str,
    /// Added as `delegation_edge_id` to every session revoke message (delegation revoke).
    pub cause_edge: Option<&'a str>,
    /// Edges the caller already revoked in this transaction (a delegation revoke's walk):
    /// announced with the cascade's, under the same single epoch bump.
    pub already_revoked: &'a [String],
}

/// Ends the sessions selected by `roots` and their descendants, revokes every active edge
/// touching an ended session, bumps the graph epoch once if any edge was revoked (these or
/// `announce.already_revoked`), and enqueues the session revoke, lifecycle `terminate`, edge
/// revoke and `edge_revoke` messages.
pub async fn end_sessions(
    conn: &mut PgConnection,
    ctx: &Context<'_>,
    roots: Roots<'_>,
    ending: Ending,
    reason: &str,
    announce: Announce<'_>,
) -> Result<Cascade, sqlx::Error> {
    let sessions = cascade::end_trees(conn, roots, ending, reason, ctx.actor).await?;
    let revokes: Vec<BatchMessage> = sessions
        .iter()
        .map(|s| session_revoke(ctx.zone, s, &s.termination_reason, announce.cause_edge))
        .collect();
    let lifecycle: Vec<BatchMessage> = sessions
        .iter()
        .map(|s| lifecycle(ctx.zone, "terminate", s, Some(&s.termination_reason)))
        .collect();
    ctx.enqueue(conn, SESSIONS_REVOKE, &revokes).await?;
    ctx.enqueue(conn, AGENTS_LIFECYCLE, &lifecycle).await?;
    let ids: Vec<String> = sessions.iter().map(|s| s.id.clone()).collect();
    let mut edges = announce.already_revoked.to_vec();
    edges.extend(cascade::revoke_edges_touching(conn, &ids, ctx.actor).await?);
    let epoch = announce_revoked_edges(conn, ctx, &edges, announce.edge_reason).await?;
    Ok(Cascade {
        sessions,
        edges,
        epoch,
    })
}

/// For edges already revoked in this transaction: bumps the graph epoch once and enqueues,
/// per edge, a revoke message (`delegation_edge_id`) and an `edge_revoke` invalidation with
/// the new epoch. Returns the new epoch (`None` when `edges` is empty: nothing changed).
pub async fn announce_revoked_edges(
    conn: &mut PgConnection,
    ctx: &Context<'_>,
    edges: &[String],
    reason: &str,
) -> Result<Option<i64>, sqlx::Error> {
    if edges.is_empty() {
        return Ok(None);
    }
    let epoch = cascade::bump_epoch(conn, ctx.zone).await?;
    let revokes: Vec<BatchMessage> = edges
        .iter()
        .map(|id| BatchMessage {
            dedupe_key: format!("revoke:edge:{id}"),
            payload: revoke(ctx.zone, ("delegation_edge_id", id), reason),
        })
        .collect();
    let invalidations: Vec<BatchMessage> = edges
        .iter()
        .map(|id| BatchMessage {
            dedupe_key: format!("edge_revoke:{id}"),
            payload: json!({
                "event": "edge_revoke",
                "zone_id": ctx.zone,
                "epoch": epoch,
                "edge_id": id,
                "affected_edges": edges.len(),
                "reason": reason,
            }),
        })
        .collect();
    ctx.enqueue(conn, SESSIONS_REVOKE, &revokes).await?;
    ctx.enqueue(conn, DELEGATIONS_INVALIDATE, &invalidations)
        .await?;
    Ok(Some(epoch))
}

/// Enqueues the `edge_create` invalidation of a new edge with the epoch its creation set.
pub async fn announce_created_edge(
    conn: &mut PgConnection,
    ctx: &Context<'_>,
    edge: CreatedEdge<'_>,
) -> Result<(), sqlx::Error> {
    let message = BatchMessage {
        dedupe_key: format!("edge_create:{}", edge.id),
        payload: json!({
            "event": "edge_create",
            "zone_id": ctx.zone,
            "epoch": edge.epoch,
            "edge_id": edge.id,
            "source_session_id": edge.source_session_id,
            "target_session_id": edge.target_session_id,
        }),
    };
    ctx.enqueue(conn, DELEGATIONS_INVALIDATE, &[message])
        .await?;
    Ok(())
}

/// A new edge, for [`announce_created_edge`].
#[derive(Debug, Clone, Copy)]
pub struct CreatedEdge<'a> {
    /// Edge id.
    pub id: &'a str,
    /// Its source session.
    pub source_session_id: &'a str,
    /// Its target session.
    pub target_session_id: &'a str,
    /// The zone's graph epoch after the creation.
    pub epoch: i64,
}

/// Enqueues the `edge_expire` invalidation of edges the sweeper marked `expired`, with the
/// epoch the expiry set (settled point 6).
pub async fn announce_expired_edges(
    conn: &mut PgConnection,
    ctx: &Context<'_>,
    edges: &[String],
    epoch: i64,
) -> Result<(), sqlx::Error> {
    if edges.is_empty() {
        return Ok(());
    }
    let mut sorted: Vec<&str> = edges.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let digest = Sha256::digest(sorted.join("\n").as_bytes());
    let message = BatchMessage {
        dedupe_key: format!("edge_expire:{}:{}", ctx.zone, &hex::encode(digest)[..16]),
        payload: json!({
            "event": "edge_expire",
            "zone_id": ctx.zone,
            "epoch": epoch,
            "edge_ids": sorted,
            "affected_edges": edges.len(),
        }),
    };
    ctx.enqueue(conn, DELEGATIONS_INVALIDATE, &[message])
        .await?;
    Ok(())
}

/// Enqueues, per authority record revoked in this transaction, a revoke message with
/// `session_id` (and `grant_id` when a grant revocation caused it).
pub async fn announce_revoked_records(
    conn: &mut PgConnection,
    ctx: &Context<'_>,
    records: &[String],
    reason: &str,
    grant_id: Option<&str>,
) -> Result<(), sqlx::Error> {
    let messages: Vec<BatchMessage> = records
        .iter()
        .map(|id| {
            let mut payload = revoke(ctx.zone, ("session_id", id), reason);
            if let (Some(grant), Value::Object(m)) = (grant_id, &mut payload) {
                m.insert("grant_id".into(), json!(grant));
            }
            BatchMessage {
                dedupe_key: format!("revoke:record:{id}"),
                payload,
            }
        })
        .collect();
    ctx.enqueue(conn, SESSIONS_REVOKE, &messages).await?;
    Ok(())
}

/// A revoke message for one agent session (`reason` as given; `session_id` by the subject
/// record rule; `delegation_edge_id` when an edge revocation caused it).
pub fn session_revoke(
    zone: &str,
    session: &ChangedSession,
    reason: &str,
    cause_edge: Option<&str>,
) -> BatchMessage {
    let mut payload = revoke(zone, ("agent_session_id", &session.id), reason);
    if let Value::Object(m) = &mut payload {
        if let Some(record) = session.announce_record_id.as_deref() {
            m.insert("session_id".into(), json!(record));
        }
        if let Some(edge) = cause_edge {
            m.insert("delegation_edge_id".into(), json!(edge));
        }
    }
    BatchMessage {
        dedupe_key: format!("revoke:agent:{}:v{}", session.id, session.status_version),
        payload,
    }
}

/// A `caracal.agents.lifecycle` message: `event` is `spawn`, `suspend`, `resume` or
/// `terminate`.
pub fn lifecycle(
    zone: &str,
    event: &str,
    session: &ChangedSession,
    reason: Option<&str>,
) -> BatchMessage {
    BatchMessage {
        dedupe_key: format!("{event}:{}:v{}", session.id, session.status_version),
        payload: json!({
            "event": event,
            "zone_id": zone,
            "agent_session_id": session.id,
            "application_id": session.application_id,
            "lifecycle": session.lifecycle,
            "parent_id": session.parent_id.as_deref(),
            "reason": reason,
            "lease_generation": session.lease_generation,
        }),
    }
}

/// `{zone_id, <anchor>, reason}`.
fn revoke(zone: &str, anchor: (&str, &str), reason: &str) -> Value {
    let mut m = Map::new();
    m.insert("zone_id".into(), json!(zone));
    m.insert(anchor.0.into(), json!(anchor.1));
    m.insert("reason".into(), json!(reason));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(record: Option<&str>) -> ChangedSession {
        ChangedSession {
            id: "as-1".into(),
            application_id: "app-1".into(),
            parent_id: None,
            lifecycle: "task".into(),
            status_version: 3,
            lease_generation: 0,
            termination_reason: "requested".into(),
            announce_record_id: record.map(str::to_owned),
        }
    }

    #[test]
    fn a_session_revoke_names_the_session_and_only_the_anchors_that_apply() {
        let plain = session_revoke("z", &ended(None), "requested", None);
        assert_eq!(plain.dedupe_key, "revoke:agent:as-1:v3");
        assert_eq!(
            plain.payload,
            json!({"zone_id": "z", "agent_session_id": "as-1", "reason": "requested"})
        );
        let full = session_revoke(
            "z",
            &ended(Some("rec-1")),
            "delegation_revoked",
            Some("e-1"),
        );
        assert_eq!(
            full.payload,
            json!({"zone_id": "z", "agent_session_id": "as-1", "session_id": "rec-1",
                   "delegation_edge_id": "e-1", "reason": "delegation_revoked"})
        );
    }

    #[test]
    fn a_lifecycle_message_is_keyed_by_event_session_and_version() {
        let message = lifecycle("z", "suspend", &ended(None), Some("suspended"));
        assert_eq!(message.dedupe_key, "suspend:as-1:v3");
        assert_eq!(message.payload["event"], "suspend");
        assert_eq!(message.payload["parent_id"], Value::Null);
    }
}
