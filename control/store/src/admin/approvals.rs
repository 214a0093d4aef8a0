//! Approval holds (`step_up_challenges`) as the admin API shows them (wire-contract §6.5),
//! inside a zone transaction. Decisions go through [`crate::approvals::decide_by_operator`],
//! the same guarded transition the STS uses for subject decisions.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::page::{After, Keyed, Page, PageRequest, bounds};

/// The derived states (authority §6.3), in the order the derivation tests them.
pub const STATES: [&str; 5] = ["consumed", "rejected", "expired", "approved", "pending"];

/// An approval hold with its derived state.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct ApprovalView {
    /// Id (a random UUIDv4).
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// The bound authority record, or empty.
    pub session_id: String,
    /// Who asked.
    pub principal_id: String,
    /// The minting application.
    pub application_id: Option<String>,
    /// `human_approval`.
    pub approval_type: String,
    /// Tier label.
    pub tier: Option<String>,
    /// `operator`, `subject` or `any`.
    pub approver_class: String,
    /// `identified`, `pseudonymous` or `anonymous`.
    pub privacy_mode: String,
    /// The subject a subject decision must come from, or empty.
    pub subject_anchor: String,
    /// The binding, lowercase hex.
    pub binding: String,
    /// Requested scopes, resources, session, edge and policy provenance.
    pub metadata_json: serde_json::Value,
    /// Who decided (`admin:<token id>`, or the subject as the privacy mode stores it).
    pub decided_by: Option<String>,
    /// The decision's reason.
    pub decision_reason: Option<String>,
    /// The subject decider as the privacy mode stores it.
    pub approver_subject_id: Option<String>,
    /// The subject decider's authority record.
    pub approver_authority_record_id: Option<String>,
    /// The record the consumption created.
    pub consumed_authority_record_id: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// Approval time.
    pub satisfied_at: Option<DateTime<Utc>>,
    /// Rejection time.
    pub rejected_at: Option<DateTime<Utc>>,
    /// Consumption time.
    pub consumed_at: Option<DateTime<Utc>>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// `pending`, `approved`, `rejected`, `expired` or `consumed`.
    pub state: String,
}

impl Keyed for ApprovalView {
    fn key(&self) -> After {
        After {
            ts: self.created_at,
            id: self.id.clone(),
        }
    }
}

/// The state derivation of authority §6.3 in SQL, first match wins.
const STATE: &str = "CASE WHEN h.consumed_at IS NOT NULL THEN 'consumed' \
                          WHEN h.rejected_at IS NOT NULL THEN 'rejected' \
                          WHEN h.expires_at <= now() THEN 'expired' \
                          WHEN h.satisfied_at IS NOT NULL THEN 'approved' \
                          ELSE 'pending' END";

fn select() -> String {
    format!(
        "SELECT h.id, h.zone_id, h.session_id, h.principal_id, h.application_id, \
                h.challenge_type AS approval_type, h.tier, h.approver_class, h.privacy_mode, \
                h.subject_anchor, encode(h.resource_set_hash, 'hex') AS binding, h.metadata_json, \
                h.decided_by, h.decision_reason, h.approver_subject_id, \
                h.approver_authority_record_id, h.consumed_authority_record_id, h.created_at, \
                h.expires_at, h.satisfied_at, h.rejected_at, h.consumed_at, h.updated_at, \
                {STATE} AS state \
           FROM step_up_challenges h"
    )
}

/// List filters; `None` does not filter.
#[derive(Debug, Clone, Default)]
pub struct ApprovalFilter<'a> {
    /// One of [`STATES`].
    pub state: Option<&'a str>,
    /// Exact tier label.
    pub tier: Option<&'a str>,
    /// Exact principal.
    pub principal: Option<&'a str>,
    /// `created_at ≥ since`.
    pub since: Option<DateTime<Utc>>,
    /// `created_at < until`.
    pub until: Option<DateTime<Utc>>,
}

/// A page of the zone's holds matching `filter`, newest first.
pub async fn list(
    conn: &mut PgConnection,
    filter: &ApprovalFilter<'_>,
    page: &PageRequest,
) -> Result<Page<ApprovalView>, sqlx::Error> {
    let (ts, id) = bounds(page);
    let rows = sqlx::query_as::<_, ApprovalView>(&format!(
        "{} WHERE ($1::text IS NULL OR {STATE} = $1) \
            AND ($2::text IS NULL OR h.tier = $2) \
            AND ($3::text IS NULL OR h.principal_id = $3) \
            AND ($4::timestamptz IS NULL OR h.created_at >= $4) \
            AND ($5::timestamptz IS NULL OR h.created_at < $5) \
            AND (h.created_at, h.id) < ($6, $7) \
          ORDER BY h.created_at DESC, h.id DESC LIMIT $8",
        select()
    ))
    .bind(filter.state)
    .bind(filter.tier)
    .bind(filter.principal)
    .bind(filter.since)
    .bind(filter.until)
    .bind(ts)
    .bind(id)
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page.limit))
}

/// A hold of the zone by id.
pub async fn get(conn: &mut PgConnection, id: &str) -> Result<Option<ApprovalView>, sqlx::Error> {
    sqlx::query_as::<_, ApprovalView>(&format!("{} WHERE h.id = $1", select()))
        .bind(id)
        .fetch_optional(conn)
        .await
}
