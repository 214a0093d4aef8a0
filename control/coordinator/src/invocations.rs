//! Durable invocations of agent services (`/zones/{z}/invocations`): an agent creates one
//! (idempotent by its required `idempotency-key`), the service's application claims it, runs
//! it under a per-attempt deadline and completes it; failures are retried with exponential
//! backoff up to `max_attempts`, then the invocation is `dead`. The deadline sweeper
//! ([`sweep_overdue`]) treats an attempt past its deadline as a failure (`timed_out` at the
//! last attempt). Every transition is announced on `caracal.invocations.lifecycle` through
//! the outbox (`<event>:<id>:a<attempts>`).

use control_events::{
    cascade::{Context, Producer},
    streams::INVOCATIONS_LIFECYCLE,
};
use control_store::{
    coordinator::{
        invocations::{self, Ending, InvocationRow, NewInvocation},
        receipts::Operation,
        services::{self, ServiceRow},
        sessions,
    },
    outbox::BatchMessage,
    zone::{ZoneTx, zone_snapshot, zone_tx},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    auth::Caller,
    error::{CoordError, Problem, refuse},
    idempotency::{self, Idempotent},
    request::{CoordRequest, Reply},
    services::owned,
    state::Coordinator,
    views,
};

/// Attempts allowed at most, and by default.
const MAX_ATTEMPTS: i64 = 10;
const DEFAULT_ATTEMPTS: i64 = 3;
/// An attempt's deadline at most, and by default.
const MAX_TIMEOUT_MS: i64 = 3_600_000;
const DEFAULT_TIMEOUT_MS: i64 = 30_000;
/// The first retry's delay by default, and the longest delay.
const DEFAULT_BACKOFF_MS: i64 = 1000;
const MAX_BACKOFF_MS: i64 = 60_000;
/// Every invocation status.
const STATUSES: [&str; 8] = [
    "pending",
    "running",
    "succeeded",
    "failed",
    "cancel_requested",
    "canceled",
    "timed_out",
    "dead",
];
/// The longest method name.
const MAX_METHOD: usize = 256;

/// Body of `POST /zones/{z}/invocations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    service_id: String,
    method: String,
    params: Option<Value>,
    metadata: Option<Value>,
    source_session_id: Option<String>,
    target_session_id: Option<String>,
    max_attempts: Option<i64>,
    timeout_ms: Option<i64>,
    retry_policy: Option<RetryPolicy>,
}

/// `retry_policy`: the first retry waits `backoff_ms`, each further one twice as long
/// (at most 60 s).
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct RetryPolicy {
    backoff_ms: Option<i64>,
}

/// The delay before the retry that follows attempt `attempts` (1-based).
fn backoff_ms(policy: &Value, attempts: i32) -> i64 {
    let base = policy
        .get("backoff_ms")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_BACKOFF_MS)
        .max(0);
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    base.saturating_mul(1_i64 << doublings).min(MAX_BACKOFF_MS)
}

fn in_range(field: &str, value: Option<i64>, default: i64, max: i64) -> Result<i32, Problem> {
    let value = value.unwrap_or(default);
    if !(1..=max).contains(&value) {
        return Err(Problem::invalid_body(
            field,
            format!("must be between 1 and {max}"),
        ));
    }
    Ok(i32::try_from(value).unwrap_or(i32::MAX))
}

/// A lifecycle message for `row`: event `invocation.<name>`, `name` one of `created`,
/// `started`, `cancel_requested`, a terminal status (`succeeded`, `failed`, `canceled`,
/// `timed_out`, `dead`), or `retrying` (ours: an attempt failed and another will follow).
/// The dedupe key carries the attempt, since `started` and `retrying` recur.
fn event(zone: &str, name: &str, row: &InvocationRow) -> BatchMessage {
    let event = format!("invocation.{name}");
    BatchMessage {
        dedupe_key: format!("{event}:{}:a{}", row.id, row.attempts),
        payload: json!({
            "event": event,
            "zone_id": zone,
            "invocation_id": row.id,
            "service_id": row.service_id,
            "status": row.status,
            "attempts": row.attempts,
        }),
    }
}

async fn announce(
    tx: &mut ZoneTx,
    ctx: &Context<'_>,
    name: &str,
    row: &InvocationRow,
) -> Result<(), CoordError> {
    ctx.enqueue(tx, INVOCATIONS_LIFECYCLE, &[event(ctx.zone, name, row)])
        .await?;
    Ok(())
}

/// `POST /zones/{z}/invocations`.
pub async fn create(co: &Coordinator, req: &CoordRequest) -> Result<Reply, CoordError> {
    let (body, raw): (CreateBody, _) = req.json_and_value()?;
    let key = req
        .idempotency
        .as_ref()
        .ok_or_else(|| refuse(400, "idempotency_key_required"))?;
    if body.method.is_empty() || body.method.chars().count() > MAX_METHOD {
        return Err(Problem::invalid_body("method", "1 to 256 characters").into());
    }
    let params = body.params.clone().unwrap_or_else(|| json!({}));
    let metadata = body.metadata.clone().unwrap_or_else(|| json!({}));
    if !params.is_object() {
        return Err(Problem::invalid_body("params", "must be an object").into());
    }
    if !metadata.is_object() || metadata.to_string().len() > 65_536 {
        return Err(
            Problem::invalid_body("metadata", "must be an object of at most 64 KiB").into(),
        );
    }
    let max_attempts = in_range(
        "max_attempts",
        body.max_attempts,
        DEFAULT_ATTEMPTS,
        MAX_ATTEMPTS,
    )?;
    let timeout_ms = in_range(
        "timeout_ms",
        body.timeout_ms,
        DEFAULT_TIMEOUT_MS,
        MAX_TIMEOUT_MS,
    )?;
    let backoff = body
        .retry_policy
        .and_then(|p| p.backoff_ms)
        .unwrap_or(DEFAULT_BACKOFF_MS);
    if !(0..=MAX_TIMEOUT_MS).contains(&backoff) {
        return Err(Problem::invalid_body(
            "retry_policy",
            "backoff_ms must be between 0 and 3600000",
        )
        .into());
    }
    let retry_policy = json!({"backoff_ms": backoff});
    let actor = req.caller.actor();
    let scope = req.caller.client_id().unwrap_or("operator").to_owned();
    let zone = req.zone.as_str();
    let mut tx = zone_tx(&co.pool, &req.zone).await?;
    // The receipt lookup runs under the key's lock, so concurrent first uses replay.
    invocations::lock_key(&mut tx, zone, &body.service_id, &key.raw).await?;
    let idempotent = Idempotent::new(key, Operation::InvocationCreate, &scope, &raw);
    if let Some(receipt) = idempotent.lookup(&mut tx, &co.config.receipts).await? {
        // An invocation's answer stays meaningful once it has finished; it is replayed
        // while the invocation exists (a deregistration deletes it).
        let exists = invocations::get(&mut tx, &receipt.resource_id, false)
            .await?
            .is_some();
        tx.rollback().await?;
        return idempotency::replay(receipt, exists);
    }
    let service = services::get(&mut tx, &body.service_id)
        .await?
        .ok_or_else(|| refuse(404, "service_not_found"))?;
    if let Some(source) = &body.source_session_id {
        let owned = sessions::get(&mut tx, source)
            .await?
            .is_some_and(|s| req.caller.owns(&s.application_id) && s.status == "active");
        if !owned {
            return Err(refuse(404, "session_not_found").into());
        }
    }
    if let Some(target) = &body.target_session_id {
        let serves = sessions::get(&mut tx, target)
            .await?
            .is_some_and(|s| s.application_id == service.application_id);
        if !serves {
            return Err(refuse(404, "session_not_found").into());
        }
    }
    let Some(row) = invocations::create(
        &mut tx,
        zone,
        &actor,
        &NewInvocation {
            service_id: &service.id,
            source_session_id: body.source_session_id.as_deref(),
            target_session_id: body.target_session_id.as_deref(),
            idempotency_key: &key.raw,
            method: &body.method,
            params: &params,
            metadata: &metadata,
            max_attempts,
            timeout_ms,
            retry_policy: &retry_policy,
        },
    )
    .await?
    else {
        // The service holds an invocation under this key from another caller.
        return Err(refuse(409, "idempotency_key_conflict").into());
    };
    let ctx = req.outbox(&actor);
    announce(&mut tx, &ctx, "created", &row).await?;
    let answer = views::invocation(&row);
    idempotent
        .store(
            &mut tx,
            zone,
            ("agent_invocation", &row.id),
            &answer,
            &co.config.receipts,
        )
        .await?;
    tx.commit().await?;
    co.outbox.wake();
    Ok(Reply::Json(201, answer))
}

/// The invocation, when the caller created it, owns its service, or is an admin.
async fn visible(
    tx: &mut ZoneTx,
    caller: &Caller,
    id: &str,
    lock: bool,
) -> Result<(InvocationRow, ServiceRow), CoordError> {
    let not_found = || CoordError::from(refuse(404, "invocation_not_found"));
    let row = invocations::get(tx, id, lock)
        .await?
        .ok_or_else(not_found)?;
    let service = services::get(tx, &row.service_id)
        .await?
        .ok_or_else(not_found)?;
    let creator = row.created_by.as_deref() == Some(caller.actor().as_str());
    if creator || caller.owns(&service.application_id) {
        Ok((row, service))
    } else {
        Err(not_found())
    }
}

/// `GET /zones/{z}/invocations/{id}`.
pub async fn get(co: &Coordinator, req: &CoordRequest, id: &str) -> Result<Reply, CoordError> {
    let mut tx = zone_snapshot(&co.pool, &req.zone).await?;
    let (row, _service) = visible(&mut tx, &req.caller, id, false).await?;
    tx.commit().await?;
    Ok(Reply::Json(200, views::invocation(&row)))
}

/// `GET /zones/{z}/services/{id}/invocations` (filter `status`): the service's owner.
pub async fn list(
    co: &Coordinator,
    req: &CoordRequest,
    service_id: &str,
) -> Result<Reply, CoordError> {
    let page = req.page()?;
    if let Some(status) = req.query("status")
        && !STATUSES.contains(&status)
    {
        return Err(
            Problem::new(400, "invalid_query", "status is not an invocation status").into(),
        );
    }
    let mut tx = zone_snapshot(&co.pool, &req.zone).await?;
    owned(&mut tx, &req.caller, service_id).await?;
    let rows = invocations::list(&mut tx, service_id, req.query("status"), &page).await?;
    tx.commit().await?;
    Ok(Reply::Json(
        200,
        control_http::strict::page_body(&rows, views::invocation),
    ))
}

/// `POST /zones/{z}/services/{id}/claim`: the service's oldest due pending invocation, now
/// running (200), or 204 when none is due.
pub async fn claim(
    co: &Coordinator,
    req: &CoordRequest,
    service_id: &str,
) -> Result<Reply, CoordError> {
    let actor = req.caller.actor();
    let mut tx = zone_tx(&co.pool, &req.zone).await?;
    owned(&mut tx, &req.caller, service_id).await?;
    let Some(row) = invocations::claim(&mut tx, service_id).await? else {
        tx.rollback().await?;
        return Ok(Reply::NoContent);
    };
    announce(&mut tx, &req.outbox(&actor), "started", &row).await?;
    tx.commit().await?;
    co.outbox.wake();
    Ok(Reply::Json(200, views::invocation(&row)))
}

/// Body of `POST …/invocations/{id}/complete`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteBody {
    outcome: String,
    result: Option<Value>,
    error: Option<Value>,
    retryable: Option<bool>,
    /// The attempt being completed (the claim's `attempts`): a stale worker whose attempt
    /// the deadline sweeper already re-queued is refused.
    attempt: Option<i32>,
}

/// How a failed attempt ends: a retry while attempts remain, else `status_at_last`.
fn after_failure<'a>(
    row: &InvocationRow,
    error: &'a Value,
    retryable: bool,
    status_at_last: &'a str,
) -> Ending<'a> {
    if !retryable {
        Ending::Finished {
            status: "failed",
            error: Some(error),
        }
    } else if row.attempts < row.max_attempts {
        Ending::Retry {
            backoff_ms: backoff_ms(&row.retry_policy_json, row.attempts),
            error,
        }
    } else {
        Ending::Finished {
            status: status_at_last,
            error: Some(error),
        }
    }
}

/// The lifecycle event of an ending.
fn ending_event(ending: &Ending<'_>) -> &'static str {
    match ending {
        Ending::Succeeded(_) => "succeeded",
        Ending::Retry { .. } => "retrying",
        Ending::Finished { status, .. } => match *status {
            "failed" => "failed",
            "canceled" => "canceled",
            "timed_out" => "timed_out",
            _ => "dead",
        },
    }
}

/// `POST /zones/{z}/invocations/{id}/complete` (the service's owner): ends the running
/// attempt as the outcome says.
pub async fn complete(co: &Coordinator, req: &CoordRequest, id: &str) -> Result<Reply, CoordError> {
    let body: CompleteBody = req.json()?;
    let succeeded = match body.outcome.as_str() {
        "succeeded" => true,
        "failed" => false,
        _ => {
            return Err(Problem::invalid_body("outcome", "must be succeeded or failed").into());
        }
    };
    if body.error.as_ref().is_some_and(|e| !e.is_object()) {
        return Err(Problem::invalid_body("error", "must be an object").into());
    }
    let actor = req.caller.actor();
    let mut tx = zone_tx(&co.pool, &req.zone).await?;
    let (row, service) = visible(&mut tx, &req.caller, id, true).await?;
    if !req.caller.owns(&service.application_id) {
        return Err(refuse(404, "invocation_not_found").into());
    }
    if !matches!(row.status.as_str(), "running" | "cancel_requested") {
        return Err(refuse(409, "invocation_not_running").into());
    }
    if body.attempt.is_some_and(|attempt| attempt != row.attempts) {
        return Err(refuse(409, "invocation_attempt_fenced").into());
    }
    let result = body.result.clone().unwrap_or(Value::Null);
    let error = body.error.clone().unwrap_or_else(|| json!({}));
    let ending = match (row.status.as_str(), succeeded) {
        ("cancel_requested", _) => Ending::Finished {
            status: "canceled",
            error: None,
        },
        ("running", true) => Ending::Succeeded(&result),
        ("running", false) => after_failure(&row, &error, body.retryable.unwrap_or(true), "dead"),
        _ => return Err(refuse(409, "invocation_not_running").into()),
    };
    let ended = invocations::end_attempt(&mut tx, id, &ending).await?;
    announce(&mut tx, &req.outbox(&actor), ending_event(&ending), &ended).await?;
    tx.commit().await?;
    co.outbox.wake();
    Ok(Reply::Json(200, views::invocation(&ended)))
}

/// `POST /zones/{z}/invocations/{id}/cancel` (the creator or an admin): a pending one is
/// `canceled`, a running one `cancel_requested` (its service ends it); a finished one is 409
/// `invocation_finished`.
pub async fn cancel(co: &Coordinator, req: &CoordRequest, id: &str) -> Result<Reply, CoordError> {
    let actor = req.caller.actor();
    let mut tx = zone_tx(&co.pool, &req.zone).await?;
    let (row, _service) = visible(&mut tx, &req.caller, id, true).await?;
    let creator = row.created_by.as_deref() == Some(actor.as_str());
    if !(creator || req.caller.is_admin()) {
        return Err(refuse(404, "invocation_not_found").into());
    }
    let (ended, name) = match row.status.as_str() {
        "pending" => (
            invocations::end_attempt(
                &mut tx,
                id,
                &Ending::Finished {
                    status: "canceled",
                    error: None,
                },
            )
            .await?,
            "canceled",
        ),
        "running" => (
            invocations::request_cancel(&mut tx, id).await?,
            "cancel_requested",
        ),
        "cancel_requested" => {
            tx.rollback().await?;
            return Ok(Reply::Json(200, views::invocation(&row)));
        }
        _ => return Err(refuse(409, "invocation_finished").into()),
    };
    announce(&mut tx, &req.outbox(&actor), name, &ended).await?;
    tx.commit().await?;
    co.outbox.wake();
    Ok(Reply::Json(200, views::invocation(&ended)))
}

/// The deadline sweep of one zone: every attempt past its deadline ends as a failure (a
/// retry while attempts remain, else `timed_out`); a cancel-requested one is `canceled`.
/// Returns how many ended.
pub async fn sweep_overdue(tx: &mut ZoneTx, zone: &str, limit: i64) -> Result<usize, CoordError> {
    let ctx = Context {
        producer: Producer::COORDINATOR,
        zone,
        actor: "coordinator:sweeper",
        request_id: None,
    };
    let overdue = invocations::lock_overdue(tx, limit).await?;
    let error = json!({"code": "deadline_exceeded"});
    for row in &overdue {
        let ending = if row.status == "cancel_requested" {
            Ending::Finished {
                status: "canceled",
                error: None,
            }
        } else {
            after_failure(row, &error, true, "timed_out")
        };
        let ended = invocations::end_attempt(tx, &row.id, &ending).await?;
        announce(tx, &ctx, ending_event(&ending), &ended).await?;
    }
    Ok(overdue.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_a_minute() {
        let policy = json!({"backoff_ms": 1000});
        assert_eq!(backoff_ms(&policy, 1), 1000);
        assert_eq!(backoff_ms(&policy, 2), 2000);
        assert_eq!(backoff_ms(&policy, 3), 4000);
        assert_eq!(backoff_ms(&policy, 9), 60_000);
        assert_eq!(backoff_ms(&json!({"backoff_ms": 0}), 5), 0);
        assert_eq!(backoff_ms(&json!({}), 1), DEFAULT_BACKOFF_MS);
    }

    #[test]
    fn bounds_are_checked() {
        assert_eq!(in_range("x", None, 3, 10).unwrap(), 3);
        assert!(in_range("x", Some(0), 3, 10).is_err());
        assert!(in_range("x", Some(11), 3, 10).is_err());
        assert_eq!(in_range("x", Some(10), 3, 10).unwrap(), 10);
    }
}
