//! Step 8: a presented STS mandate as `subject_token` (authority §3). Every failure is
//! 401 `invalid_token` "invalid subject_token", except the authority-record checks, which
//! have their own descriptions.

use chrono::{DateTime, Utc};
use control_crypto::UnverifiedJwt;
use control_model::{Denial, ErrorCode, ZoneId};
use serde_json::{Map, Value};

use crate::{error::StsError, state::Sts};

/// A verified subject token.
#[derive(Debug, Clone)]
pub(crate) struct SubjectToken {
    /// Every verified claim, for `context.subject_claims`.
    pub(crate) claims: Map<String, Value>,
    pub(crate) sub: String,
    pub(crate) sid: String,
    pub(crate) client_id: String,
    pub(crate) sub_type: String,
    pub(crate) agent_session_id: Option<String>,
    pub(crate) delegation_edge_id: Option<String>,
}

fn invalid() -> Denial {
    Denial::new(401, ErrorCode::InvalidToken, "invalid subject_token")
}

pub(crate) fn string(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Verifies an STS `use=session` mandate for `zone`: ES256 with a key of the zone that may
/// verify at `now`, `iss` and an `aud` equal to `ISSUER_URL`, `exp` and `iat` within the
/// 60 s leeway, `zone_id` and `use`. Returns its claims, or `None` when any check fails.
/// Shared by subject tokens (§3 step 8) and subject approval decisions (§6.5).
pub(crate) async fn verify_session_mandate(
    sts: &Sts,
    zone: &ZoneId,
    token: &str,
    now: DateTime<Utc>,
) -> Result<Option<Map<String, Value>>, StsError> {
    let Ok(parsed) = UnverifiedJwt::parse(token) else {
        return Ok(None);
    };
    let Some(kid) = parsed.header().kid.clone() else {
        return Ok(None);
    };
    let Some(key) = sts.keys.verifier(zone, &kid, now).await? else {
        return Ok(None);
    };
    let Ok(bytes) = parsed.verify(&key) else {
        return Ok(None);
    };
    let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(None);
    };
    let valid = control_model::is_session_mandate(
        &claims,
        &sts.config.issuer_url,
        zone.as_str(),
        now.timestamp(),
    );
    Ok(valid.then_some(claims))
}

/// Verifies a presented subject token (§3 step 8).
pub(crate) async fn verify(
    sts: &Sts,
    zone: &ZoneId,
    token: &str,
    now: DateTime<Utc>,
) -> Result<Result<SubjectToken, Denial>, StsError> {
    let Some(claims) = verify_session_mandate(sts, zone, token, now).await? else {
        return Ok(Err(invalid()));
    };
    let Some(sid) = string(&claims, "sid") else {
        return Ok(Err(Denial::new(
            401,
            ErrorCode::InvalidToken,
            "missing token authority record",
        )));
    };
    let (Some(sub), Some(client_id)) = (string(&claims, "sub"), string(&claims, "client_id"))
    else {
        return Ok(Err(invalid()));
    };
    Ok(Ok(SubjectToken {
        sub,
        sid,
        client_id,
        sub_type: string(&claims, "sub_type").unwrap_or_else(|| "application".to_owned()),
        agent_session_id: string(&claims, "agent_session_id"),
        delegation_edge_id: string(&claims, "delegation_edge_id"),
        claims,
    }))
}
