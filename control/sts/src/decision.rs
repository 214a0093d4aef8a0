//! `POST /approvals/{id}/decision` (wire-contract §2.10, authority §6.5): a federated user
//! approves or rejects a hold, presenting the `use=session` user mandate that the hold's
//! application minted for them.
//!
//! Checks, in order; the first failure answers: the id is a UUID (404); a bearer is present
//! (401); the body is `{decision, binding, reason?}` (400); the hold exists (404); the
//! bearer verifies for the hold's zone (401); it is user-typed (403); its authority record
//! is live, belongs to `sub` and was minted by the hold's application (403); the hold admits
//! subject decisions (403); `sub` is the hold's `subject_anchor` when one is set (403); the
//! approver's record lineage does not overlap the requester's (403); the binding matches
//! (409); the hold is pending (409). The decision, `pg_notify('caracal_approval_decided')`
//! and the `step_up_decided` audit event go together: the event is handed to the emitter
//! before the transaction commits, so a decision that could not be audited is rolled back.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use control_events::audit::approval::{Decider, decided_event};
use control_model::{Denial, ErrorCode, ZoneId};
use control_store::{
    approvals::{self, ApprovalRow, SubjectDecision},
    authority_records::{self, AuthorityRecordRow},
    delegation,
    zone::{cross_zone_read, zone_tx},
};
use http::{HeaderValue, Request, Response, header};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::{
    error::StsError,
    exchange::subject,
    respond::{self, Body},
    state::Sts,
};

/// The largest decision body read.
const MAX_BODY: usize = 16 * 1024;
/// The longest reason, in characters (the column's CHECK).
const MAX_REASON_CHARS: usize = 500;

/// The parsed body.
struct DecisionBody {
    approve: bool,
    binding: String,
    reason: Option<String>,
}

/// A verified approver mandate.
struct Approver {
    sub: String,
    sid: String,
    client_id: String,
    sub_type: String,
}

/// Handles one decision. `id` is the path segment after `/approvals/`.
pub(crate) async fn decide(
    sts: &Sts,
    id: &str,
    req: Request<Incoming>,
    request_id: &str,
) -> Result<Response<Body>, StsError> {
    let not_found = Denial::new(404, ErrorCode::ResourceNotFound, "approval not found");
    if uuid::Uuid::parse_str(id).is_err() {
        return Ok(deny(&not_found, request_id));
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        })
        .map(|(_, token)| token.trim().to_owned())
        .filter(|token| !token.is_empty());
    let Some(bearer) = bearer else {
        return Ok(deny(&unauthorized("session mandate required"), request_id));
    };
    let body = match read_body(req).await {
        Ok(body) => body,
        Err(denial) => return Ok(deny(&denial, request_id)),
    };

    let mut read = cross_zone_read(&sts.pool).await?;
    let hold = approvals::find(&mut read, id).await?;
    let now = delegation::now(&mut read).await?;
    read.finish().await?;
    let Some(hold) = hold.filter(|h| h.challenge_type == "human_approval") else {
        return Ok(deny(&not_found, request_id));
    };
    let Ok(zone) = ZoneId::parse(&hold.zone_id) else {
        return Ok(deny(&not_found, request_id));
    };
    let Some(approver) = verify_bearer(sts, &zone, &bearer, now).await? else {
        return Ok(deny(&unauthorized("invalid session mandate"), request_id));
    };
    if approver.sub_type != "user" {
        return Ok(deny(
            &Denial::forbidden("approver must be a user session"),
            request_id,
        ));
    }

    let mut tx = zone_tx(&sts.pool, &zone).await?;
    let record = authority_records::find(&mut tx, &approver.sid).await?;
    let requester = match hold.session_id.as_str() {
        "" => None,
        bound => authority_records::find(&mut tx, bound).await?,
    };
    if let Err(denial) = check_approver(&hold, &approver, record.as_ref(), requester.as_ref(), now)
    {
        tx.rollback().await?;
        return Ok(deny(&denial, request_id));
    }
    let expected = hex::encode(&hold.resource_set_hash);
    if !control_crypto::ct_eq(
        body.binding.to_ascii_lowercase().as_bytes(),
        expected.as_bytes(),
    ) {
        tx.rollback().await?;
        return Ok(deny(
            &Denial::new(
                409,
                ErrorCode::AccessDenied,
                "binding does not match this challenge",
            ),
            request_id,
        ));
    }
    let not_pending = Denial::new(409, ErrorCode::AccessDenied, "approval is not pending");
    if hold.state(now) != "pending" {
        tx.rollback().await?;
        return Ok(deny(&not_pending, request_id));
    }
    let decider = decider_id(&hold.privacy_mode, &hold.zone_id, &approver.sub);
    let decided = approvals::decide_by_subject(
        &mut tx,
        &SubjectDecision {
            id: &hold.id,
            zone_id: &hold.zone_id,
            approve: body.approve,
            approver_subject_id: &decider,
            approver_authority_record_id: &approver.sid,
            reason: body.reason.as_deref(),
        },
    )
    .await?;
    let Some((row, metadata)) = decided else {
        tx.rollback().await?;
        return Ok(deny(&not_pending, request_id));
    };
    sts.audit(decided_event(
        &row,
        &metadata,
        body.approve,
        Decider::Subject {
            authority_record_id: &approver.sid,
        },
        request_id,
    ))?;
    tx.commit().await?;

    Ok(respond::json(
        200,
        &json!({
            "id": row.id,
            "state": row.state(now),
            "expires_at": row.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        }),
    ))
}

fn unauthorized(description: &'static str) -> Denial {
    Denial::new(401, ErrorCode::InvalidToken, description)
}

/// Renders a denial; a 401 also names the scheme.
fn deny(denial: &Denial, request_id: &str) -> Response<Body> {
    tracing::info!(request_id, status = denial.status, error = denial.code.as_str(), description = %denial.description, "approval decision denied");
    let mut response = respond::denial(denial, request_id);
    if denial.status == 401 {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
    }
    response
}

/// Reads and validates `{decision, binding, reason?}`.
async fn read_body(req: Request<Incoming>) -> Result<DecisionBody, Denial> {
    let malformed = || Denial::bad_request("malformed request body");
    let bytes: Bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_too_large_or_broken) => {
            return Err(Denial::new(
                413,
                ErrorCode::PayloadTooLarge,
                "request body exceeds 16 KiB",
            ));
        }
    };
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(malformed());
    };
    let approve = match body.get("decision") {
        Some(Value::String(d)) if d == "approved" => true,
        Some(Value::String(d)) if d == "rejected" => false,
        _ => {
            return Err(Denial::bad_request("decision must be approved or rejected"));
        }
    };
    let Some(Value::String(binding)) = body.get("binding") else {
        return Err(malformed());
    };
    let reason = match body.get("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(reason)) if reason.chars().count() > MAX_REASON_CHARS => {
            return Err(Denial::bad_request("reason too long"));
        }
        Some(Value::String(reason)) if reason.is_empty() => None,
        Some(Value::String(reason)) => Some(reason.clone()),
        Some(_) => return Err(malformed()),
    };
    Ok(DecisionBody {
        approve,
        binding: binding.clone(),
        reason,
    })
}

/// Verifies the bearer exactly as a subject token is verified
/// (`exchange::subject::verify_session_mandate`), then requires non-empty `sub`, `sid` and
/// `client_id`. `None` is 401.
async fn verify_bearer(
    sts: &Sts,
    zone: &ZoneId,
    token: &str,
    now: DateTime<Utc>,
) -> Result<Option<Approver>, StsError> {
    let Some(claims) = subject::verify_session_mandate(sts, zone, token, now).await? else {
        return Ok(None);
    };
    let (Some(sub), Some(sid), Some(client_id)) = (
        subject::string(&claims, "sub"),
        subject::string(&claims, "sid"),
        subject::string(&claims, "client_id"),
    ) else {
        return Ok(None);
    };
    Ok(Some(Approver {
        sub,
        sid,
        client_id,
        sub_type: subject::string(&claims, "sub_type").unwrap_or_else(|| "application".to_owned()),
    }))
}

/// Who may decide (authority §6.5): the approver's record, the hold's class, anchor and
/// lineage. Every failure is 403 `access_denied`.
fn check_approver(
    hold: &ApprovalRow,
    approver: &Approver,
    record: Option<&AuthorityRecordRow>,
    requester: Option<&AuthorityRecordRow>,
    now: DateTime<Utc>,
) -> Result<(), Denial> {
    let Some(application) = hold.application_id.as_deref() else {
        return Err(Denial::forbidden(
            "approval does not admit subject decisions",
        ));
    };
    let Some(record) = record.filter(|r| r.is_live(now) && r.session_type == "user") else {
        return Err(Denial::forbidden(
            "approver authority record inactive or expired",
        ));
    };
    if record.subject_id != approver.sub {
        return Err(Denial::forbidden("authority record subject mismatch"));
    }
    if record.application_id.as_deref() != Some(application) || approver.client_id != application {
        return Err(Denial::forbidden(
            "approver session was minted by another application",
        ));
    }
    if hold.approver_class != "subject" && hold.approver_class != "any" {
        return Err(Denial::forbidden(
            "this approval requires an operator decision",
        ));
    }
    if !hold.subject_anchor.is_empty() && hold.subject_anchor != approver.sub {
        return Err(Denial::forbidden(
            "approver is not the subject of this approval",
        ));
    }
    // Lineages overlap when the records are one, or share their root: every lineage ends
    // at its root, so two lineages meet exactly when their roots are equal.
    let bound = hold.session_id.as_str();
    let related = !bound.is_empty()
        && (record.id == bound
            || record.root_id == bound
            || requester.is_some_and(|r| r.root_id == record.root_id || r.root_id == record.id));
    if related {
        return Err(Denial::forbidden(
            "an approver cannot decide a hold raised by its own authority record lineage",
        ));
    }
    Ok(())
}

/// The decider as the hold's privacy mode allows it to be stored.
fn decider_id(privacy_mode: &str, zone_id: &str, sub: &str) -> String {
    match privacy_mode {
        "anonymous" => "subject:redacted".to_owned(),
        "pseudonymous" => {
            let mut hasher = Sha256::new();
            hasher.update(zone_id.as_bytes());
            hasher.update([0]);
            hasher.update(sub.as_bytes());
            let digest = hex::encode(hasher.finalize());
            format!("subject:pseudonym:{}", &digest[..16])
        }
        _ => sub.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decider_is_shaped_by_the_privacy_mode() {
        assert_eq!(decider_id("identified", "z", "user-1"), "user-1");
        assert_eq!(decider_id("anonymous", "z", "user-1"), "subject:redacted");
        let mut hasher = Sha256::new();
        hasher.update(b"z\0user-1");
        let expected = format!(
            "subject:pseudonym:{}",
            &hex::encode(hasher.finalize())[..16]
        );
        assert_eq!(decider_id("pseudonymous", "z", "user-1"), expected);
        assert_ne!(
            decider_id("pseudonymous", "other", "user-1"),
            expected,
            "pseudonyms are zone-scoped"
        );
    }
}
