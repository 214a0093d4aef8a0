//! Who is calling (wire-contract §7.1): an agent with a `use=session` mandate of the path's
//! zone, or the operator with `CARACAL_COORDINATOR_TOKEN`.
//!
//! A mandate is read unverified only to find its zone and key id, then verified with ES256
//! against that zone's STS key set; `iss` and `aud` must equal `ISSUER_URL`, `exp` and `iat`
//! hold within 60 s. The checks answer in the order of the table in §7.1:
//!
//! | Condition | Answer |
//! | --- | --- |
//! | no bearer, empty, or over 4096 bytes | 401 `missing_token` |
//! | bad signature, claims, zone claim, `use ≠ session`, empty `sub` or `client_id` | 401 `invalid_token` |
//! | `scope` lacks `agent:lifecycle` | 403 `missing_scope` |
//! | path zone ≠ token zone | 403 `zone_mismatch` |
//! | application archived or expired, or the `sid` record not active | 401 `identity_revoked` |
//! | over the per-client rate | 429 `rate_limited` with `Retry-After` |
//!
//! The last two rows read the database. Most routes run them in a read of their own before
//! the route starts ([`IdentityCheck::Now`]); a route that opens a zone transaction anyway
//! may run them as the first statement of that transaction instead ([`IdentityCheck::InRoute`],
//! decision 0033), saving the separate read's round trips. Such a route receives a
//! [`Caller::Unconfirmed`], which holds nothing until [`confirm`] judges the rows the route
//! read for it and turns it into an agent.

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use chrono::{DateTime, Utc};
use control_crypto::{UnverifiedJwt, ct_eq};
use control_model::ZoneId;
use control_store::{
    delegation::{self, ApplicationAndRecord},
    zone::zone_snapshot,
};
use http::{HeaderMap, header};
use serde_json::{Map, Value};

use crate::{
    error::{CoordError, Problem, refuse},
    state::Coordinator,
};

/// The longest bearer accepted.
pub const MAX_BEARER: usize = 4096;
/// The scope every agent call needs.
pub const LIFECYCLE_SCOPE: &str = "agent:lifecycle";
/// The scope (and the operator's standing) that may act on any session or edge of a zone.
pub const ADMIN_SCOPE: &str = "coordinator.admin";
/// The window of the per-client rate.
pub const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// An agent authenticated by its session mandate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// The token's zone (equal to the path's).
    pub zone_id: String,
    /// The calling application (`client_id`).
    pub client_id: String,
    /// The subject (`sub`).
    pub sub: String,
    /// The token's authority record (`sid`).
    pub sid: String,
    /// Every scope of the token.
    pub scopes: Vec<String>,
}

/// The caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// `CARACAL_COORDINATOR_TOKEN`: acts as `coordinator.admin` on the operator routes.
    Operator,
    /// A session mandate.
    Agent(Agent),
    /// A verified session mandate whose application and authority record the route has not
    /// read yet ([`IdentityCheck::InRoute`]). It holds no scope and owns nothing: the route
    /// gets a [`Caller::Agent`] from [`confirm`] before it acts.
    Unconfirmed(Agent),
}

/// Where the identity rows of §7.1 (application usable, authority record live) and the
/// per-client rate are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityCheck {
    /// Before the route runs, in a read of its own.
    Now,
    /// By the route, first thing in its own transaction ([`confirm`]).
    InRoute,
}

impl Caller {
    /// Holds `scope` (the operator holds only `coordinator.admin`).
    pub fn holds(&self, scope: &str) -> bool {
        match self {
            Caller::Operator => scope == ADMIN_SCOPE,
            Caller::Agent(agent) => agent.scopes.iter().any(|s| s == scope),
            Caller::Unconfirmed(_) => false,
        }
    }

    /// May act on any session or edge of the zone.
    pub fn is_admin(&self) -> bool {
        self.holds(ADMIN_SCOPE)
    }

    /// The calling application, for an agent.
    pub fn client_id(&self) -> Option<&str> {
        match self {
            Caller::Operator | Caller::Unconfirmed(_) => None,
            Caller::Agent(agent) => Some(&agent.client_id),
        }
    }

    /// Owns `application` (an admin owns every application of the zone).
    pub fn owns(&self, application: &str) -> bool {
        self.is_admin() || self.client_id() == Some(application)
    }

    /// Owns `application`, or holds `<scope_prefix><application>` (e.g.
    /// `coordinator.spawn_for:` + the application).
    pub fn owns_or_holds(&self, application: &str, scope_prefix: &str) -> bool {
        self.owns(application) || self.holds(&format!("{scope_prefix}{application}"))
    }

    /// `updated_by` of the rows it changes.
    pub fn actor(&self) -> String {
        match self {
            Caller::Operator => "operator".to_owned(),
            Caller::Agent(agent) => format!("application:{}", agent.client_id),
            Caller::Unconfirmed(_) => "unconfirmed".to_owned(),
        }
    }
}

/// The bearer of `Authorization`, or 401 `missing_token`.
fn bearer(headers: &HeaderMap) -> Result<&str, Problem> {
    let missing = || refuse(401, "missing_token");
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(missing)?
        .to_str()
        .map_err(|_not_ascii| missing())?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(missing)?
        .trim();
    if token.is_empty() || token.len() > MAX_BEARER {
        return Err(missing());
    }
    Ok(token)
}

/// Authenticates a request on `zone` (the path's). `operator_allowed` is whether the route
/// is one the operator token may call; `identity` where the route wants the identity rows
/// and the rate checked (an agent comes back [`Caller::Unconfirmed`] for
/// [`IdentityCheck::InRoute`]).
///
/// # Errors
///
/// The refusals of the table above; [`CoordError::KeySet`] when the zone's keys cannot be
/// fetched; database failures of the identity check.
pub async fn authenticate(
    co: &Coordinator,
    headers: &HeaderMap,
    zone: &str,
    operator_allowed: bool,
    identity: IdentityCheck,
) -> Result<Caller, CoordError> {
    let token = bearer(headers)?;
    if operator_allowed
        && let Some(operator) = &co.config.operator_token
        && ct_eq(token.as_bytes(), operator.as_bytes())
    {
        return Ok(Caller::Operator);
    }
    let now = Utc::now();
    let agent = verify(co, token, now).await?;
    if !agent.scopes.iter().any(|s| s == LIFECYCLE_SCOPE) {
        return Err(refuse(403, "missing_scope").into());
    }
    if agent.zone_id != zone {
        return Err(refuse(403, "zone_mismatch").into());
    }
    match identity {
        IdentityCheck::InRoute => Ok(Caller::Unconfirmed(agent)),
        IdentityCheck::Now => {
            check_identity(co, &agent).await?;
            check_rate(co, &agent.client_id).await?;
            Ok(Caller::Agent(agent))
        }
    }
}

/// The agent a route with [`IdentityCheck::InRoute`] must confirm: the caller, when it is
/// [`Caller::Unconfirmed`].
pub fn awaiting_confirmation(caller: &Caller) -> Option<&Agent> {
    match caller {
        Caller::Unconfirmed(agent) => Some(agent),
        Caller::Operator | Caller::Agent(_) => None,
    }
}

/// The route's half of [`IdentityCheck::InRoute`]: judges the identity `rows` (the
/// application named by `client_id`, the record named by `sid`) the route read for
/// [`awaiting_confirmation`]'s agent in its own transaction, checks the rate, and returns
/// the agent as a confirmed caller.
///
/// # Errors
///
/// 401 `identity_revoked`, 429 `rate_limited`.
pub async fn confirm(
    co: &Coordinator,
    agent: &Agent,
    rows: &ApplicationAndRecord,
) -> Result<Caller, CoordError> {
    judge_identity(agent, rows)?;
    check_rate(co, &agent.client_id).await?;
    Ok(Caller::Agent(agent.clone()))
}

/// Verifies a session mandate: signature under the zone's key, then the claims.
async fn verify(co: &Coordinator, token: &str, now: DateTime<Utc>) -> Result<Agent, CoordError> {
    let invalid = || CoordError::from(refuse(401, "invalid_token"));
    let parsed = UnverifiedJwt::parse(token).map_err(|_bad| invalid())?;
    let kid = parsed.header().kid.clone().ok_or_else(invalid)?;
    let unverified: Map<String, Value> =
        serde_json::from_slice(parsed.unverified_claims()).map_err(|_bad| invalid())?;
    let zone = unverified
        .get("zone_id")
        .and_then(Value::as_str)
        .and_then(|z| ZoneId::parse(z).ok())
        .ok_or_else(invalid)?;
    let key = co
        .keys
        .key(zone.as_str(), &kid)
        .await?
        .ok_or_else(invalid)?;
    let bytes = parsed.verify(&key).map_err(|_bad| invalid())?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|_bad| invalid())?;
    agent_from_claims(&claims, &co.config.issuer_url, zone.as_str(), now).ok_or_else(invalid)
}

/// The agent a verified claim set names, or `None` when a claim check fails.
fn agent_from_claims(
    claims: &Map<String, Value>,
    issuer: &str,
    zone: &str,
    now: DateTime<Utc>,
) -> Option<Agent> {
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let valid = control_model::is_session_mandate(claims, issuer, zone, now.timestamp());
    if !valid {
        return None;
    }
    Some(Agent {
        zone_id: zone.to_owned(),
        client_id: text("client_id")?.to_owned(),
        sub: text("sub")?.to_owned(),
        sid: text("sid")?.to_owned(),
        scopes: text("scope")
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
    })
}

/// 401 `identity_revoked` unless the application is usable and the token's authority
/// record is active and unexpired, both read now (a revocation takes effect at once).
async fn check_identity(co: &Coordinator, agent: &Agent) -> Result<(), CoordError> {
    let zone = ZoneId::parse(&agent.zone_id)
        .map_err(|_bad| CoordError::Internal("verified zone id does not parse".into()))?;
    let mut tx = zone_snapshot(&co.pool, &zone).await?;
    let rows = delegation::application_and_record(&mut tx, &agent.client_id, &agent.sid).await?;
    tx.commit().await?;
    Ok(judge_identity(agent, &rows)?)
}

/// 401 `identity_revoked` unless the application is usable and the record live, judged by
/// the reading transaction's `now()`.
fn judge_identity(agent: &Agent, rows: &ApplicationAndRecord) -> Result<(), Problem> {
    let live = match (&rows.application, &rows.record) {
        (Some(a), Some(record)) => a.row.is_usable(a.now) && record.is_live(&agent.zone_id, a.now),
        _ => false,
    };
    if live {
        Ok(())
    } else {
        Err(refuse(401, "identity_revoked"))
    }
}

/// 429 `rate_limited` when the client has made more than its per-minute allowance in the
/// current window (per replica).
async fn check_rate(co: &Coordinator, client: &str) -> Result<(), CoordError> {
    let counter: Arc<AtomicU32> = co
        .rates
        .get_with(client.to_owned(), async { Arc::new(AtomicU32::new(0)) })
        .await;
    let used = counter.fetch_add(1, Ordering::Relaxed).saturating_add(1);
    if used > co.config.limits.rate_per_minute {
        return Err(refuse(429, "rate_limited").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ISSUER: &str = "http://sts.test";

    fn claims(over: Value) -> Map<String, Value> {
        let now = Utc::now().timestamp();
        let mut base = json!({
            "iss": ISSUER, "aud": [ISSUER], "exp": now + 600, "iat": now, "zone_id": "z1",
            "use": "session", "sub": "app-1", "client_id": "app-1", "sid": "rec-1",
            "scope": "agent:lifecycle coordinator.spawn_for:app-2",
        });
        if let (Some(base), Value::Object(over)) = (base.as_object_mut(), over) {
            for (k, v) in over {
                if v.is_null() {
                    base.remove(&k);
                } else {
                    base.insert(k, v);
                }
            }
        }
        match base {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn a_session_mandate_names_its_agent() {
        let agent = agent_from_claims(&claims(json!({})), ISSUER, "z1", Utc::now()).unwrap();
        assert_eq!(agent.client_id, "app-1");
        assert_eq!(agent.sid, "rec-1");
        let caller = Caller::Agent(agent);
        assert!(caller.owns("app-1"));
        assert!(!caller.owns("app-2"));
        assert!(caller.owns_or_holds("app-2", "coordinator.spawn_for:"));
        assert!(!caller.is_admin());
        assert!(Caller::Operator.is_admin());
        assert!(Caller::Operator.owns("anything"));
    }

    #[test]
    fn an_unconfirmed_agent_holds_and_owns_nothing() {
        let mut agent = agent_from_claims(&claims(json!({})), ISSUER, "z1", Utc::now()).unwrap();
        agent.scopes.push(ADMIN_SCOPE.to_owned());
        let caller = Caller::Unconfirmed(agent);
        assert!(!caller.holds(LIFECYCLE_SCOPE));
        assert!(!caller.is_admin());
        assert!(!caller.owns("app-1"));
        assert!(!caller.owns_or_holds("app-2", "coordinator.spawn_for:"));
        assert_eq!(caller.client_id(), None);
    }

    #[test]
    fn every_claim_check_refuses() {
        let now = Utc::now();
        let cases = [
            json!({"iss": "http://other"}),
            json!({"aud": ["http://other"]}),
            json!({"aud": null}),
            json!({"exp": now.timestamp() - 61}),
            json!({"iat": now.timestamp() + 120}),
            json!({"zone_id": "z2"}),
            json!({"use": "gateway"}),
            json!({"sub": ""}),
            json!({"client_id": null}),
            json!({"sid": null}),
        ];
        for case in cases {
            assert!(
                agent_from_claims(&claims(case.clone()), ISSUER, "z1", now).is_none(),
                "{case} was accepted"
            );
        }
        // The leeway: expired 30 s ago still verifies; a string audience equal to the issuer too.
        let lenient = claims(json!({"exp": now.timestamp() - 30, "aud": ISSUER}));
        assert!(agent_from_claims(&lenient, ISSUER, "z1", now).is_some());
    }

    #[test]
    fn the_bearer_must_be_present_and_bounded() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers).unwrap_err().code, "missing_token");
        headers.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&headers).unwrap_err().code, "missing_token");
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers).unwrap_err().code, "missing_token");
        let long = format!("Bearer {}", "a".repeat(MAX_BEARER + 1));
        headers.insert(header::AUTHORIZATION, long.parse().unwrap());
        assert_eq!(bearer(&headers).unwrap_err().code, "missing_token");
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers).unwrap(), "abc");
    }
}
