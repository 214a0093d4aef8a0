//! Admin authentication and capabilities (wire-contract §6.1).
//!
//! A bearer is either the bootstrap token (`CARACAL_ADMIN_TOKEN`, global, every capability,
//! compared in constant time) or a minted token (`cat_` + 43 base64url characters), found by
//! its SHA-256 and verified with Argon2id. A verified (row, PHC, token) triple is cached for
//! a minute so Argon2id runs once per token per minute; the row itself is read on every
//! request, so a revocation or expiry takes effect at once. Repeated failures from one
//! address (`CARACAL_API_AUTH_FAILURES_PER_MINUTE`, default 20) are refused with 429 for a
//! minute.

use std::{net::IpAddr, sync::Arc, time::Duration};

use control_store::{admin::admin_tokens, zone::cross_zone_read};
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::{
    error::{ApiError, Problem},
    state::Api,
};

/// Prefix of minted admin tokens.
pub const TOKEN_PREFIX: &str = "cat_";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Reads only.
    Read,
    /// Reads and changes (not approval decisions, unless bootstrap).
    Write,
    /// Reads and approval decisions.
    Approve,
}

impl Capability {
    /// Parses the stored spelling.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "approve" => Some(Self::Approve),
            _ => None,
        }
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// `bootstrap` or the token id.
    pub id: String,
    /// The token's name.
    pub name: String,
    /// The zone of a zone-scoped token.
    pub zone: Option<String>,
    /// Capability.
    pub capability: Capability,
    /// The bootstrap token (may also decide approvals).
    pub bootstrap: bool,
}

impl Principal {
    /// `global` or `zone:<id>`, as recorded in the admin audit log.
    pub fn scope_label(&self) -> String {
        match &self.zone {
            Some(zone) => format!("zone:{zone}"),
            None => "global".to_owned(),
        }
    }
}

/// What a route needs beyond authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A read.
    Read,
    /// A change.
    Write,
    /// An approval decision.
    Decide,
}

/// Checks `need` against the principal's capability, and its zone against `zone` (the
/// zone in the path; `None` for global routes).
pub fn authorize(principal: &Principal, need: Need, zone: Option<&str>) -> Result<(), Problem> {
    match (need, principal.capability) {
        (Need::Read, _)
        | (Need::Write, Capability::Write)
        | (Need::Decide, Capability::Approve) => {}
        (Need::Decide, Capability::Write) if principal.bootstrap => {}
        (Need::Decide, Capability::Write) => {
            return Err(Problem::new(
                403,
                "approve_capability_required",
                "deciding an approval needs a token with the approve capability",
            ));
        }
        (Need::Write | Need::Decide, Capability::Read) => {
            return Err(Problem::new(
                403,
                "admin_token_read_only",
                "this token is read-only",
            ));
        }
        (Need::Write, Capability::Approve) => {
            return Err(Problem::new(
                403,
                "admin_token_approve_only",
                "this token may only read and decide approvals",
            ));
        }
    }
    match (&principal.zone, zone) {
        (None, _) => Ok(()),
        (Some(own), Some(zone)) if own == zone => Ok(()),
        (Some(_), _) => Err(Problem::new(
            403,
            "admin_token_zone_mismatch",
            "this token is scoped to another zone",
        )),
    }
}

fn invalid() -> Problem {
    Problem::new(401, "invalid_admin_token", "missing or invalid admin token")
}

/// Authenticates the request's bearer.
pub async fn authenticate(
    api: &Api,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Result<Principal, ApiError> {
    if let Some(ip) = peer
        && api.auth_failures.get(&ip).await.is_some_and(|n| {
            n.load(std::sync::atomic::Ordering::Relaxed) >= api.config.auth_failures_per_minute
        })
    {
        return Err(Problem::new(429, "rate_limited", "too many failed authentications").into());
    }
    let outcome = verify(api, headers).await;
    if matches!(&outcome, Err(ApiError::Refused(p)) if p.status == 401)
        && let Some(ip) = peer
    {
        let counter = api
            .auth_failures
            .get_with(ip, async { Arc::new(std::sync::atomic::AtomicU32::new(0)) })
            .await;
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    outcome
}

async fn verify(api: &Api, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(invalid)?;
    if let Some(bootstrap) = &api.config.bootstrap_token
        && control_crypto::ct_eq(bearer.as_bytes(), bootstrap.as_bytes())
    {
        return Ok(Principal {
            id: "bootstrap".to_owned(),
            name: "bootstrap".to_owned(),
            zone: None,
            capability: Capability::Write,
            bootstrap: true,
        });
    }
    if !is_token_shaped(bearer) {
        return Err(invalid().into());
    }
    let sha: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
    let mut read = cross_zone_read(&api.pool).await?;
    let found = admin_tokens::find_live(&mut read, &sha).await?;
    read.finish().await?;
    let Some(found) = found else {
        return Err(invalid().into());
    };
    if found.row.expires_at.is_some_and(|e| e <= found.now) {
        return Err(invalid().into());
    }
    let mut key = Sha256::new();
    key.update(found.row.id.as_bytes());
    key.update([0]);
    key.update(found.token_hash.as_bytes());
    key.update([0]);
    key.update(bearer.as_bytes());
    let cache_key: [u8; 32] = key.finalize().into();
    if api.verified_tokens.get(&cache_key).await.is_none() {
        let phc = found.token_hash.clone();
        let token = zeroize::Zeroizing::new(bearer.to_owned());
        let ok = tokio::task::spawn_blocking(move || {
            control_crypto::verify_secret(token.as_bytes(), &phc).unwrap_or(false)
        })
        .await
        .map_err(|e| ApiError::Crypto(format!("argon2 task failed: {e}")))?;
        if !ok {
            return Err(invalid().into());
        }
        api.verified_tokens.insert(cache_key, ()).await;
    }
    let capability = Capability::parse(&found.row.capability)
        .ok_or_else(|| ApiError::Internal("stored capability is invalid".to_owned()))?;
    Ok(Principal {
        id: found.row.id,
        name: found.row.name,
        zone: found.row.zone_id,
        capability,
        bootstrap: false,
    })
}

/// `cat_` followed by exactly 43 base64url characters.
fn is_token_shaped(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|rest| {
        rest.len() == 43
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// How long failed authentications are remembered per address.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How long a verified token stays cached.
pub const VERIFIED_TTL: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(capability: Capability, zone: Option<&str>, bootstrap: bool) -> Principal {
        Principal {
            id: "t".to_owned(),
            name: "t".to_owned(),
            zone: zone.map(str::to_owned),
            capability,
            bootstrap,
        }
    }

    #[test]
    fn capabilities_and_zones_are_enforced_with_the_catalog_codes() {
        let code = |p: &Principal, need, zone| authorize(p, need, zone).err().map(|e| e.code);
        let read = principal(Capability::Read, None, false);
        let write = principal(Capability::Write, None, false);
        let approve = principal(Capability::Approve, None, false);
        let boot = principal(Capability::Write, None, true);
        let zoned = principal(Capability::Write, Some("z1"), false);
        assert_eq!(code(&read, Need::Read, None), None);
        assert_eq!(
            code(&read, Need::Write, None).as_deref(),
            Some("admin_token_read_only")
        );
        assert_eq!(
            code(&read, Need::Decide, None).as_deref(),
            Some("admin_token_read_only")
        );
        assert_eq!(
            code(&approve, Need::Write, None).as_deref(),
            Some("admin_token_approve_only")
        );
        assert_eq!(code(&approve, Need::Decide, None), None);
        assert_eq!(
            code(&write, Need::Decide, None).as_deref(),
            Some("approve_capability_required")
        );
        assert_eq!(code(&boot, Need::Decide, None), None);
        assert_eq!(code(&zoned, Need::Write, Some("z1")), None);
        assert_eq!(
            code(&zoned, Need::Write, Some("z2")).as_deref(),
            Some("admin_token_zone_mismatch")
        );
        assert_eq!(
            code(&zoned, Need::Read, None).as_deref(),
            Some("admin_token_zone_mismatch")
        );
    }

    #[test]
    fn only_well_formed_minted_tokens_reach_the_database() {
        assert!(is_token_shaped(&format!("cat_{}", "A".repeat(43))));
        assert!(!is_token_shaped(&format!("cat_{}", "A".repeat(42))));
        assert!(!is_token_shaped(&format!("cat_{}!", "A".repeat(42))));
        assert!(!is_token_shaped(&format!("cs_{}", "A".repeat(43))));
    }
}
