//! `step_up_challenges`: approval holds (authority §6).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::authority_records::NewAuthorityRecord;

/// A hold as the STS reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApprovalRow {
    /// Random UUIDv4: the capability.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// The bound authority record, or empty.
    pub session_id: String,
    /// Who asked (a subject or an application).
    pub principal_id: String,
    /// The minting application.
    pub application_id: Option<String>,
    /// `human_approval`.
    pub challenge_type: String,
    /// The binding (SHA-256).
    pub resource_set_hash: Vec<u8>,
    /// Tier label.
    pub tier: Option<String>,
    /// `operator`, `subject` or `any`.
    pub approver_class: String,
    /// `identified`, `pseudonymous` or `anonymous`.
    pub privacy_mode: String,
    /// The subject a subject decision must come from, or empty.
    pub subject_anchor: String,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// Approval time.
    pub satisfied_at: Option<DateTime<Utc>>,
    /// Rejection time.
    pub rejected_at: Option<DateTime<Utc>>,
    /// Consumption time.
    pub consumed_at: Option<DateTime<Utc>>,
    /// The record the consumption created.
    pub consumed_authority_record_id: Option<String>,
}

impl ApprovalRow {
    /// The derived state (§6.3), first match wins: consumed, rejected, expired, approved,
    /// pending.
    pub fn state(&self, now: DateTime<Utc>) -> &'static str {
        if self.consumed_at.is_some() {
            "consumed"
        } else if self.rejected_at.is_some() {
            "rejected"
        } else if self.expires_at <= now {
            "expired"
        } else if self.satisfied_at.is_some() {
            "approved"
        } else {
            "pending"
        }
    }
}

const COLUMNS: &str = "id, zone_id, session_id, principal_id, application_id, challenge_type, resource_set_hash, \
                       tier, approver_class, privacy_mode, subject_anchor, expires_at, satisfied_at, rejected_at, \
                       consumed_at, consumed_authority_record_id";

/// A hold by id (in the current zone, or across zones in a cross-zone read).
pub async fn find(conn: &mut PgConnection, id: &str) -> Result<Option<ApprovalRow>, sqlx::Error> {
    sqlx::query_as::<_, ApprovalRow>(&format!(
        "SELECT {COLUMNS} FROM step_up_challenges WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// A hold to create.
#[derive(Debug, Clone)]
pub struct NewHold<'a> {
    /// UUIDv4.
    pub id: &'a str,
    /// Zone.
    pub zone_id: &'a str,
    /// Bound record or empty.
    pub session_id: &'a str,
    /// Principal.
    pub principal_id: &'a str,
    /// Application.
    pub application_id: &'a str,
    /// Binding.
    pub resource_set_hash: &'a [u8],
    /// Tier label.
    pub tier: &'a str,
    /// Approver class.
    pub approver_class: &'a str,
    /// Privacy mode.
    pub privacy_mode: &'a str,
    /// Subject anchor.
    pub subject_anchor: &'a str,
    /// Hold lifetime in seconds.
    pub ttl_seconds: i64,
    /// Metadata (scopes, resources, session, edge, provenance).
    pub metadata: &'a serde_json::Value,
}

/// Finds the live hold for this binding or creates it (§6.2): expired unconsumed holds of
/// the same binding are deleted first, so repeated mints converge on one hold. Returns the
/// hold and whether this call created it.
pub async fn find_or_create(
    conn: &mut PgConnection,
    hold: &NewHold<'_>,
) -> Result<(ApprovalRow, bool), sqlx::Error> {
    sqlx::query(
        "DELETE FROM step_up_challenges \
          WHERE zone_id = $1 AND principal_id = $2 AND session_id = $3 AND resource_set_hash = $4 \
            AND consumed_at IS NULL AND expires_at <= now()",
    )
    .bind(hold.zone_id)
    .bind(hold.principal_id)
    .bind(hold.session_id)
    .bind(hold.resource_set_hash)
    .execute(&mut *conn)
    .await?;
    let created = sqlx::query(
        "INSERT INTO step_up_challenges (id, zone_id, session_id, principal_id, application_id, challenge_type, \
                                         resource_set_hash, tier, approver_class, privacy_mode, subject_anchor, \
                                         metadata_json, expires_at, created_by, updated_by) \
         VALUES ($1, $2, $3, $4, $5, 'human_approval', $6, $7, $8, $9, $10, $11, \
                 now() + make_interval(secs => $12), 'system:sts', 'system:sts') \
         ON CONFLICT (zone_id, principal_id, session_id, resource_set_hash) WHERE consumed_at IS NULL DO NOTHING",
    )
    .bind(hold.id)
    .bind(hold.zone_id)
    .bind(hold.session_id)
    .bind(hold.principal_id)
    .bind(hold.application_id)
    .bind(hold.resource_set_hash)
    .bind(hold.tier)
    .bind(hold.approver_class)
    .bind(hold.privacy_mode)
    .bind(hold.subject_anchor)
    .bind(hold.metadata)
    .bind(hold.ttl_seconds as f64)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    let row = sqlx::query_as::<_, ApprovalRow>(&format!(
        "SELECT {COLUMNS} FROM step_up_challenges \
          WHERE zone_id = $1 AND principal_id = $2 AND session_id = $3 AND resource_set_hash = $4 AND consumed_at IS NULL"
    ))
    .bind(hold.zone_id)
    .bind(hold.principal_id)
    .bind(hold.session_id)
    .bind(hold.resource_set_hash)
    .fetch_one(&mut *conn)
    .await?;
    Ok((row, created))
}

/// Consumes an approved hold and inserts the authority record it releases, in one
/// statement (§6.5). Returns false when no hold changed (already consumed, rejected,
/// expired, not approved, or its originating record is no longer active): the caller
/// answers 409 `approval_consumed`.
pub async fn consume_and_record(
    conn: &mut PgConnection,
    hold_id: &str,
    principal_id: &str,
    binding: &[u8],
    record: &NewAuthorityRecord<'_>,
) -> Result<bool, sqlx::Error> {
    let inserted: Option<String> = sqlx::query_scalar(
        "WITH consumed AS ( \
           UPDATE step_up_challenges h \
              SET consumed_at = now(), consumed_authority_record_id = $5, updated_at = now() \
            WHERE h.id = $1 AND h.zone_id = $2 AND h.principal_id = $3 AND h.resource_set_hash = $4 \
              AND h.satisfied_at IS NOT NULL AND h.rejected_at IS NULL AND h.consumed_at IS NULL \
              AND h.expires_at > now() \
              AND (h.session_id = '' OR EXISTS (SELECT 1 FROM sessions s \
                    WHERE s.zone_id = h.zone_id AND s.id = h.session_id AND s.status = 'active' AND s.expires_at > now())) \
           RETURNING h.id) \
         INSERT INTO sessions (id, zone_id, session_type, subject_id, application_id, parent_id, root_id, status, \
                               expires_at, authenticated_at, claims_json, created_by, updated_by) \
         SELECT $5, $2, $6, $7, $8, $9, $10, 'active', $11, $12, $13, $14, $14 FROM consumed \
         RETURNING id",
    )
    .bind(hold_id)
    .bind(record.zone_id)
    .bind(principal_id)
    .bind(binding)
    .bind(record.id)
    .bind(record.session_type)
    .bind(record.subject_id)
    .bind(record.application_id)
    .bind(record.parent_id)
    .bind(record.root_id)
    .bind(record.expires_at)
    .bind(record.authenticated_at)
    .bind(record.claims_json)
    .bind(record.created_by)
    .fetch_optional(conn)
    .await?;
    Ok(inserted.is_some())
}

/// A subject's decision on a hold (authority §6.5, `POST /approvals/{id}/decision`).
#[derive(Debug, Clone)]
pub struct SubjectDecision<'a> {
    /// The hold.
    pub id: &'a str,
    /// Its zone.
    pub zone_id: &'a str,
    /// `true` approves (`satisfied_at`), `false` rejects (`rejected_at`).
    pub approve: bool,
    /// The decider as the hold's privacy mode shapes it; also stored as `decided_by`.
    pub approver_subject_id: &'a str,
    /// The approver's authority record (always kept).
    pub approver_authority_record_id: &'a str,
    /// Optional reason (≤ 500 characters; the table checks it too).
    pub reason: Option<&'a str>,
}

/// Records a subject decision on a pending hold and notifies `caracal_approval_decided`,
/// both inside the caller's transaction, so the notification fires only if the decision
/// commits. The update lands only on a live `human_approval` hold of class `subject` or
/// `any` that is neither decided nor consumed nor expired; `None` means no hold changed
/// (the caller answers 409). Returns the decided row and its `metadata_json`.
pub async fn decide_by_subject(
    conn: &mut PgConnection,
    decision: &SubjectDecision<'_>,
) -> Result<Option<(ApprovalRow, serde_json::Value)>, sqlx::Error> {
    decide(
        conn,
        &Transition {
            id: decision.id,
            zone_id: decision.zone_id,
            approve: decision.approve,
            classes: &["subject", "any"],
            decided_by: decision.approver_subject_id,
            approver_subject_id: Some(decision.approver_subject_id),
            approver_authority_record_id: Some(decision.approver_authority_record_id),
            reason: decision.reason,
            actor: "system:sts",
        },
    )
    .await
}

/// An operator's decision on a hold (authority §6.5, `POST /v1/zones/{z}/approvals/{id}/
/// approve|reject`).
#[derive(Debug, Clone)]
pub struct OperatorDecision<'a> {
    /// The hold.
    pub id: &'a str,
    /// Its zone.
    pub zone_id: &'a str,
    /// `true` approves (`satisfied_at`), `false` rejects (`rejected_at`).
    pub approve: bool,
    /// `admin:<token id>` or `console:<account>`; stored as `decided_by` and `updated_by`.
    pub decided_by: &'a str,
    /// Optional reason (≤ 500 characters; the table checks it too).
    pub reason: Option<&'a str>,
}

/// Records an operator decision exactly as [`decide_by_subject`] records a subject's: the
/// same guarded update and notification, for holds of class `operator` or `any`. No
/// subject or authority record is stored for the approver.
pub async fn decide_by_operator(
    conn: &mut PgConnection,
    decision: &OperatorDecision<'_>,
) -> Result<Option<(ApprovalRow, serde_json::Value)>, sqlx::Error> {
    decide(
        conn,
        &Transition {
            id: decision.id,
            zone_id: decision.zone_id,
            approve: decision.approve,
            classes: &["operator", "any"],
            decided_by: decision.decided_by,
            approver_subject_id: None,
            approver_authority_record_id: None,
            reason: decision.reason,
            actor: decision.decided_by,
        },
    )
    .await
}

/// One decision as both planes record it.
struct Transition<'a> {
    id: &'a str,
    zone_id: &'a str,
    approve: bool,
    /// Approver classes this plane may decide.
    classes: &'a [&'a str],
    decided_by: &'a str,
    approver_subject_id: Option<&'a str>,
    approver_authority_record_id: Option<&'a str>,
    reason: Option<&'a str>,
    actor: &'a str,
}

/// The one guarded transition pending → approved | rejected, plus the notification.
async fn decide(
    conn: &mut PgConnection,
    t: &Transition<'_>,
) -> Result<Option<(ApprovalRow, serde_json::Value)>, sqlx::Error> {
    let row = sqlx::query_as::<_, ApprovalRow>(&format!(
        "UPDATE step_up_challenges \
            SET satisfied_at = CASE WHEN $3 THEN now() END, \
                rejected_at = CASE WHEN $3 THEN NULL ELSE now() END, \
                decided_by = $4, approver_subject_id = $5, approver_authority_record_id = $6, \
                decision_reason = $7, updated_at = now(), updated_by = $8 \
          WHERE id = $1 AND zone_id = $2 AND challenge_type = 'human_approval' \
            AND approver_class = ANY($9) \
            AND satisfied_at IS NULL AND rejected_at IS NULL AND consumed_at IS NULL \
            AND expires_at > now() \
          RETURNING {COLUMNS}"
    ))
    .bind(t.id)
    .bind(t.zone_id)
    .bind(t.approve)
    .bind(t.decided_by)
    .bind(t.approver_subject_id)
    .bind(t.approver_authority_record_id)
    .bind(t.reason)
    .bind(t.actor)
    .bind(t.classes)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let metadata: serde_json::Value =
        sqlx::query_scalar("SELECT metadata_json FROM step_up_challenges WHERE id = $1")
            .bind(t.id)
            .fetch_one(&mut *conn)
            .await?;
    sqlx::query("SELECT pg_notify('caracal_approval_decided', $1)")
        .bind(t.id)
        .execute(&mut *conn)
        .await?;
    Ok(Some((row, metadata)))
}

/// Deletes the zone's terminal holds (consumed, rejected, or expired) whose last transition
/// is older than `keep_secs` (authority §6.3: 24 h). A hold's last transition is its
/// `updated_at`, or its `expires_at` when it simply expired. Returns how many were deleted.
pub async fn purge_terminal(
    conn: &mut PgConnection,
    zone_id: &str,
    keep_secs: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM step_up_challenges \
          WHERE zone_id = $1 \
            AND (consumed_at IS NOT NULL OR rejected_at IS NOT NULL OR expires_at <= now()) \
            AND greatest(updated_at, \
                         CASE WHEN consumed_at IS NULL AND rejected_at IS NULL \
                              THEN expires_at ELSE updated_at END) \
                < now() - make_interval(secs => $2)",
    )
    .bind(zone_id)
    .bind(keep_secs as f64)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
