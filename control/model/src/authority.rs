//! Re-validation of an exchange's references (authority-and-policy.md §2.3) and agent
//! session liveness (§2.1), as pure functions over an [`AuthorityLookup`].
//!
//! The STS fills a lookup from one read-only Postgres transaction; the gateway from its
//! in-memory authority view. Both run this one algorithm, so they cannot disagree. Every
//! failure is the catalog's 403 `access_denied` with the returned description.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ChainLink;

/// The platform maximum of delegation hops, lineage walk and cycle search.
pub const MAX_HOPS: usize = 10;

/// An authority record as the checks need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView {
    /// Id.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// `user` or `application`.
    pub session_type: String,
    /// Subject.
    pub subject_id: String,
    /// `active`, `revoked` or `expired`.
    pub status: String,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
}

impl RecordView {
    /// Active, unexpired, in `zone`.
    pub fn is_live(&self, zone: &str, now: DateTime<Utc>) -> bool {
        self.zone_id == zone && self.status == "active" && self.expires_at > now
    }
}

/// An agent session as the checks need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSessionView {
    /// Id.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// Owning application.
    pub application_id: String,
    /// `active`, `suspended`, `terminated`, `expired`.
    pub status: String,
    /// `task` or `service`.
    pub lifecycle: String,
    /// Labels (roles in policy).
    pub labels: Vec<String>,
    /// Depth in the tree.
    pub depth: i32,
    /// Parent session.
    pub parent_id: Option<String>,
    /// The authority record it runs under.
    pub subject_record: Option<RecordView>,
    /// Start time.
    pub started_at: DateTime<Utc>,
    /// Task TTL.
    pub ttl_seconds: Option<i32>,
    /// Service lease deadline.
    pub heartbeat_deadline_at: Option<DateTime<Utc>>,
}

impl AgentSessionView {
    /// Liveness (§2.1): active in the zone; a user-typed subject record still live; a
    /// service within its lease, a task within its TTL.
    pub fn is_live(&self, zone: &str, now: DateTime<Utc>) -> bool {
        if self.zone_id != zone || self.status != "active" {
            return false;
        }
        if let Some(record) = &self.subject_record
            && record.session_type == "user"
            && !record.is_live(zone, now)
        {
            return false;
        }
        match self.lifecycle.as_str() {
            "service" => self.heartbeat_deadline_at.is_some_and(|d| d > now),
            "task" => self.ttl_seconds.is_some_and(|ttl| {
                self.started_at + chrono::Duration::seconds(i64::from(ttl)) > now
            }),
            _ => false,
        }
    }
}

/// A delegation edge as the checks need it.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeView {
    /// Id.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// Source agent session.
    pub source_session_id: String,
    /// Target agent session.
    pub target_session_id: String,
    /// Issuer application.
    pub issuer_application_id: String,
    /// Receiver application.
    pub receiver_application_id: String,
    /// Resource row id, when the edge names one.
    pub resource_id: Option<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// The stored constraints object.
    pub constraints_json: serde_json::Value,
    /// `active`, `revoked`, `expired`.
    pub status: String,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The edge this one narrows.
    pub parent_edge_id: Option<String>,
    /// Bumped on every status change.
    pub edge_version: i32,
}

impl EdgeView {
    fn is_live(&self, zone: &str, now: DateTime<Utc>) -> bool {
        self.zone_id == zone
            && self.status == "active"
            && self.expires_at > now
            && self.revoked_at.is_none()
    }
}

/// Parsed edge constraints (§2.2). Unknown fields are rejected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraints {
    /// Resource allow-list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<String>>,
    /// Hops allowed from this edge down, this edge included (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hops: Option<i64>,
    /// Alias of `max_hops`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<i64>,
    /// Relative expiry; caps minted mandates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    /// Absolute expiry; caps minted mandates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// A narrowing bound only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<i64>,
    /// Audit annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_approved: Option<bool>,
    /// Audit annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broad_reason: Option<String>,
}

impl Constraints {
    /// Parses the stored object; a non-object, an unknown field or a mistyped field fails.
    pub fn parse(value: &serde_json::Value) -> Result<Self, &'static str> {
        if !value.is_object() {
            return Err(CONSTRAINTS_INVALID);
        }
        let parsed: Self =
            serde_json::from_value(value.clone()).map_err(|_bad| CONSTRAINTS_INVALID)?;
        if let (Some(a), Some(b)) = (parsed.max_hops, parsed.max_depth)
            && a != b
        {
            return Err(CONSTRAINTS_INVALID);
        }
        Ok(parsed)
    }

    /// The effective `max_hops` (default 1).
    pub fn hops(&self) -> i64 {
        self.max_hops.or(self.max_depth).unwrap_or(1)
    }

    /// `expires_at`, parsed; `Err` when present but not RFC 3339.
    pub fn expires_at(&self) -> Result<Option<DateTime<Utc>>, &'static str> {
        self.expires_at
            .as_deref()
            .map(|s| {
                DateTime::parse_from_rfc3339(s)
                    .map(|d| d.with_timezone(&Utc))
                    .map_err(|_bad| "delegation constraint expires_at is invalid")
            })
            .transpose()
    }
}

const CONSTRAINTS_INVALID: &str = "delegation constraints invalid";

/// Lookups the algorithm needs; implementations must only return rows of the given zone
/// or return them with their zone so the checks can reject them.
pub trait AuthorityLookup {
    /// An authority record.
    fn record(&self, id: &str) -> Option<&RecordView>;
    /// An agent session.
    fn session(&self, id: &str) -> Option<&AgentSessionView>;
    /// A delegation edge.
    fn edge(&self, id: &str) -> Option<&EdgeView>;
    /// The zone's graph epoch.
    fn epoch(&self) -> i64;
}

/// The references of one exchange.
#[derive(Debug, Clone)]
pub struct Revalidation<'a> {
    /// Zone.
    pub zone_id: &'a str,
    /// Calling application.
    pub caller_application_id: &'a str,
    /// The bound authority record (the subject token's `sid` or the form `session_id`).
    pub bound_record_id: Option<&'a str>,
    /// `agent_session_id`.
    pub agent_session_id: Option<&'a str>,
    /// `delegation_edge_id`.
    pub delegation_edge_id: Option<&'a str>,
    /// Requested scopes.
    pub requested_scopes: &'a [String],
    /// The explicitly requested TTL in seconds; 0 when none was requested (the default TTL
    /// is then capped by the edge at mint, not refused).
    pub requested_ttl: i64,
    /// A subject token was presented.
    pub subject_token: bool,
    /// Trusted time.
    pub now: DateTime<Utc>,
}

/// What the references established.
#[derive(Debug, Clone, PartialEq)]
pub enum Revalidated {
    /// No agent session and no edge.
    Nothing,
    /// An agent session without an edge.
    Session(Box<AgentSessionView>),
    /// A delegation proof.
    Delegation(Box<DelegationProof>),
}

impl Revalidated {
    /// The target agent session, when there is one.
    pub fn agent_session(&self) -> Option<&AgentSessionView> {
        match self {
            Revalidated::Nothing => None,
            Revalidated::Session(session) => Some(session),
            Revalidated::Delegation(proof) => Some(&proof.target),
        }
    }

    /// The proof, when there is one.
    pub fn proof(&self) -> Option<&DelegationProof> {
        match self {
            Revalidated::Delegation(proof) => Some(proof),
            _ => None,
        }
    }
}

/// The result of §2.3 with an edge: edge, constraints, path, chain, epoch and the sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct DelegationProof {
    /// The edge.
    pub edge: EdgeView,
    /// Its parsed constraints.
    pub constraints: Constraints,
    /// Edge ids, root → leaf.
    pub path: Vec<String>,
    /// Chain links.
    pub chain: Vec<ChainLink>,
    /// The zone epoch read.
    pub epoch: i64,
    /// The target agent session.
    pub target: AgentSessionView,
}

impl DelegationProof {
    /// A resource is allowed when the edge's `resource_id` is empty or equals the row id,
    /// and `constraints.resources` is empty or contains the identifier.
    pub fn allows_resource(&self, resource_row_id: &str, identifier: &str) -> bool {
        let by_id = self
            .edge
            .resource_id
            .as_deref()
            .is_none_or(|r| r.is_empty() || r == resource_row_id);
        let by_list = self
            .constraints
            .resources
            .as_ref()
            .is_none_or(|list| list.is_empty() || list.iter().any(|r| r == identifier));
        by_id && by_list
    }
}

/// Runs §2.3. `Err` carries the 403 `access_denied` description.
pub fn revalidate(
    input: &Revalidation<'_>,
    view: &impl AuthorityLookup,
) -> Result<Revalidated, &'static str> {
    let zone = input.zone_id;
    let now = input.now;
    // Step 1: the bound record.
    if let Some(record_id) = input.bound_record_id {
        let record = view
            .record(record_id)
            .filter(|r| r.is_live(zone, now))
            .ok_or("authority record inactive or expired")?;
        if !input.subject_token
            && (record.session_type != "application"
                || record.subject_id != input.caller_application_id)
        {
            return Err("authority record not owned by caller");
        }
    }
    let binding_ok = |session: &AgentSessionView| match (input.subject_token, input.bound_record_id)
    {
        (true, Some(bound)) => session
            .subject_record
            .as_ref()
            .is_some_and(|r| r.id == bound),
        _ => true,
    };
    let Some(edge_id) = input.delegation_edge_id else {
        // Steps 2 and 3 without an edge.
        let Some(session_id) = input.agent_session_id else {
            return Ok(Revalidated::Nothing);
        };
        let session = view
            .session(session_id)
            .filter(|s| s.is_live(zone, now))
            .ok_or("session inactive or expired")?;
        if session.application_id != input.caller_application_id {
            return Err("session not owned by caller");
        }
        if !binding_ok(session) {
            return Err("session authority record binding mismatch");
        }
        return Ok(Revalidated::Session(Box::new(session.clone())));
    };
    let session_id = input
        .agent_session_id
        .ok_or("delegation requires a target Session")?;

    // Step 4: the edge.
    let edge = view
        .edge(edge_id)
        .filter(|e| e.is_live(zone, now))
        .ok_or("delegation edge inactive or expired")?;
    if edge.target_session_id != session_id {
        return Err("delegation edge target mismatch");
    }
    // Step 5: both endpoints.
    let source = view
        .session(&edge.source_session_id)
        .filter(|s| s.is_live(zone, now))
        .ok_or("delegation source inactive or expired")?;
    let target = view
        .session(session_id)
        .filter(|s| s.is_live(zone, now) && s.application_id == input.caller_application_id)
        .ok_or("delegation target inactive or unauthorized")?;
    if !binding_ok(target) {
        return Err("session authority record binding mismatch");
    }
    if source.application_id != edge.issuer_application_id
        || target.application_id != edge.receiver_application_id
    {
        return Err("delegation application mismatch");
    }
    // Step 6: constraints and scopes.
    let constraints = Constraints::parse(&edge.constraints_json)?;
    if !input
        .requested_scopes
        .iter()
        .all(|s| edge.scopes.contains(s))
    {
        return Err("requested scopes exceed delegation scopes");
    }
    if let Some(ttl) = constraints.ttl_seconds
        && input.requested_ttl > 0
        && input.requested_ttl > ttl
    {
        return Err("requested ttl exceeds delegation ttl");
    }
    if constraints.hops() > MAX_HOPS as i64 {
        return Err("delegation hop limit exceeds platform maximum");
    }
    // Step 7: lineage, root → leaf.
    let mut leaf_to_root = vec![edge];
    let mut seen: HashSet<&str> = HashSet::from([edge.id.as_str()]);
    while let Some(parent_id) = leaf_to_root
        .last()
        .and_then(|e| e.parent_edge_id.as_deref())
    {
        if leaf_to_root.len() >= MAX_HOPS || !seen.insert(parent_id) {
            return Err("delegation path invalid");
        }
        let parent = view.edge(parent_id).ok_or("delegation path invalid")?;
        leaf_to_root.push(parent);
    }
    let path: Vec<&EdgeView> = leaf_to_root.into_iter().rev().collect();
    for hop in &path {
        if !hop.is_live(zone, now) {
            return Err("delegation path edge inactive or revoked");
        }
    }
    for pair in path.windows(2) {
        if let [previous, next] = pair
            && next.issuer_application_id != previous.receiver_application_id
        {
            return Err("delegation chain discontinuous");
        }
    }
    let n = path.len() as i64;
    for (i, hop) in path.iter().enumerate() {
        let hop_constraints = Constraints::parse(&hop.constraints_json)?;
        if n - (i as i64 + 1) + 1 > hop_constraints.hops() {
            return Err("delegation path invalid");
        }
    }
    // Step 8: the chain.
    let mut chain: Vec<ChainLink> = path
        .iter()
        .map(|hop| ChainLink {
            application_id: hop.issuer_application_id.clone(),
            agent_session_id: hop.source_session_id.clone(),
            delegation_edge_id: Some(hop.id.clone()),
        })
        .collect();
    chain.push(ChainLink {
        application_id: edge.receiver_application_id.clone(),
        agent_session_id: edge.target_session_id.clone(),
        delegation_edge_id: None,
    });
    let first_app = chain.first().map(|l| l.application_id.as_str());
    let last_app = chain.last().map(|l| l.application_id.as_str());
    let root_source_app = path
        .first()
        .and_then(|root| view.session(&root.source_session_id))
        .map(|s| s.application_id.as_str());
    if first_app.is_none()
        || first_app != root_source_app
        || last_app != Some(target.application_id.as_str())
    {
        return Err("delegation chain endpoints mismatch");
    }
    // Step 9: the epoch.
    Ok(Revalidated::Delegation(Box::new(DelegationProof {
        edge: edge.clone(),
        constraints,
        path: path.iter().map(|e| e.id.clone()).collect(),
        chain,
        epoch: view.epoch(),
        target: target.clone(),
    })))
}

#[cfg(test)]
mod tests;
