//! The STS's authority view: the rows §2.3 needs, read in one snapshot transaction, then
//! handed to the shared algorithm of `control_model::authority`.

use std::collections::HashMap;

use control_model::authority::{AgentSessionView, AuthorityLookup, EdgeView, RecordView};
use control_store::delegation;
use sqlx::PgConnection;

/// Rows prefetched for one exchange.
#[derive(Debug, Default)]
pub(crate) struct PrefetchedView {
    records: HashMap<String, RecordView>,
    sessions: HashMap<String, AgentSessionView>,
    edges: HashMap<String, EdgeView>,
    epoch: i64,
}

impl AuthorityLookup for PrefetchedView {
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
        self.epoch
    }
}

impl PrefetchedView {
    /// Reads the bound record, the agent session, the edge with its lineage, every session
    /// those edges touch, and the epoch.
    pub(crate) async fn load(
        conn: &mut PgConnection,
        zone_id: &str,
        bound_record: Option<&str>,
        agent_session: Option<&str>,
        edge: Option<&str>,
    ) -> Result<Self, sqlx::Error> {
        let mut view = Self::default();
        if let Some(id) = bound_record
            && let Some(record) = delegation::record(conn, id).await?
        {
            view.records.insert(record.id.clone(), record);
        }
        let mut session_ids: Vec<String> = agent_session.map(str::to_owned).into_iter().collect();
        if let Some(edge_id) = edge {
            for edge in delegation::edge_lineage(conn, edge_id).await? {
                session_ids.push(edge.source_session_id.clone());
                session_ids.push(edge.target_session_id.clone());
                view.edges.insert(edge.id.clone(), edge);
            }
        }
        if !session_ids.is_empty() {
            session_ids.sort();
            session_ids.dedup();
            for session in delegation::agent_sessions(conn, &session_ids).await? {
                view.sessions.insert(session.id.clone(), session);
            }
        }
        if edge.is_some() {
            view.epoch = delegation::epoch(conn, zone_id).await?;
        }
        Ok(view)
    }
}
