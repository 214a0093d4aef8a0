//! Federation (wire-contract §2.4 D, authority §3 step 6): an external OIDC id_token for a
//! `use=session`, `sub_type=user` mandate.
//!
//! The id_token's `iss` selects the zone's live `subject_issuers` row; its key set is
//! fetched from the row's `jwks_url` ([`jwks`]) and the token is checked by [`id_token`]
//! (RS256 or ES256, audience, expiry with 60 s leeway, the external `sub` rules). A refused
//! token is 401 `invalid_token` "invalid subject_token: <cause>" and the audit status
//! `subject_federation_rejected`; a request with authority fields besides the token is 400
//! and `subject_federation_invalid` (Caracal 1.0's split). Success writes one
//! `token_exchange` allow event with determining policy `caracal-subject-federation`, then
//! follows steps 17–21: the JTI registry, one user authority record that is its own root
//! (minted by the calling application), and the signature. No policy is evaluated: the
//! zone's issuer registration is the trust decision, and the mandate carries no scope or
//! target, so it grants no resource authority by itself.

mod id_token;
mod jwks;

use chrono::{DateTime, Utc};
use control_events::audit::{AuditDecision, AuditEvent};
use control_model::{Denial, ErrorCode, MandateClaims, MandateUse, SubType, ZoneId};
use control_store::{
    applications::ApplicationRow,
    authority_records::{self, NewAuthorityRecord},
    delegation, subject_issuers,
    zone::zone_tx,
};
use serde_json::{Value, json};

use crate::{
    config::{ConfigError, Lookup},
    error::StsError,
    exchange::Answer,
    form::TokenRequest,
    state::Sts,
};
use id_token::Rejection;

/// The mandate TTL when none (or 0) is requested.
const DEFAULT_TTL_SECONDS: i64 = 900;
/// The determining policy of a federation allow.
const FEDERATION_POLICY: &str = "caracal-subject-federation";

/// Federation state: the issuers' key sets.
pub(crate) struct Federation {
    jwks: jwks::Jwks,
}

impl Federation {
    /// Reads `CARACAL_ALLOW_INSECURE_CONFIG_URLS` (`true` allows http key-set URLs beyond
    /// loopback) and builds the HTTPS client.
    pub(crate) fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        let allow_insecure = match lookup("CARACAL_ALLOW_INSECURE_CONFIG_URLS").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => {
                return Err(ConfigError(
                    "CARACAL_ALLOW_INSECURE_CONFIG_URLS must be true or false".to_owned(),
                ));
            }
        };
        let jwks = jwks::Jwks::new(allow_insecure)
            .map_err(|e| ConfigError(format!("federation HTTPS client: {e}")))?;
        Ok(Self { jwks })
    }
}

/// Runs the federation branch for an authenticated application.
pub(crate) async fn exchange(
    sts: &Sts,
    request_id: &str,
    req: &TokenRequest,
    application: &ApplicationRow,
    zone: &ZoneId,
) -> Result<Answer, StsError> {
    let audit = Audit {
        sts,
        request_id,
        application,
        zone,
    };
    let extra = !req.resources.is_empty()
        || req.scope.is_some()
        || req.session_id.is_some()
        || req.agent_session_id.is_some()
        || req.delegation_edge_id.is_some()
        || req.approval_id.is_some();
    let token = match &req.subject_token {
        Some((token, _)) if !extra => token,
        _ => {
            audit.event(
                AuditDecision::Deny,
                "subject_federation_invalid",
                json!([]),
                json!({}),
            )?;
            return Ok(Answer::Denied(Denial::bad_request(
                "federation takes no resource, scope, session, delegation or approval",
            )));
        }
    };

    let verified = match verify(sts, zone, token).await? {
        Ok(verified) => verified,
        Err(rejection) => {
            audit.event(
                AuditDecision::Deny,
                "subject_federation_rejected",
                json!([]),
                json!({"reason": rejection.to_string()}),
            )?;
            return Ok(Answer::Denied(Denial::new(
                401,
                ErrorCode::InvalidToken,
                format!("invalid subject_token: {rejection}"),
            )));
        }
    };
    mint(&audit, req, &verified).await
}

/// What a verified id_token establishes.
struct Verified {
    sub: String,
    issuer: String,
    now: DateTime<Utc>,
}

/// Issuer lookup, key set, signature, claims. `Err` is a broken dependency (the database);
/// `Ok(Err)` a refused token.
async fn verify(
    sts: &Sts,
    zone: &ZoneId,
    token: &str,
) -> Result<Result<Verified, Rejection>, StsError> {
    let parsed = match id_token::parse(token) {
        Ok(parsed) => parsed,
        Err(rejection) => return Ok(Err(rejection)),
    };
    let issuer = match parsed.issuer() {
        Ok(issuer) => issuer,
        Err(rejection) => return Ok(Err(rejection)),
    };
    // Trusted time and the issuer row come from one zone transaction.
    let mut tx = zone_tx(&sts.pool, zone).await?;
    let now = delegation::now(&mut tx).await?;
    let row = subject_issuers::live_by_issuer(&mut tx, issuer).await?;
    tx.commit().await?;
    let Some(row) = row else {
        return Ok(Err(Rejection::UntrustedIssuer));
    };
    let keys = match sts.federation.jwks.key_set(&row.jwks_url).await {
        Ok(keys) => keys,
        Err(error) => {
            tracing::warn!(zone = %zone, issuer_id = %row.id, %error, "subject issuer key set unavailable");
            return Ok(Err(Rejection::KeysUnavailable));
        }
    };
    let jwk = match keys.find(&parsed.kid) {
        Some(jwk) => jwk.clone(),
        None => match sts.federation.jwks.refetch(&row.jwks_url).await {
            Ok(Some(fresh)) => match fresh.find(&parsed.kid) {
                Some(jwk) => jwk.clone(),
                None => return Ok(Err(Rejection::UnknownKey)),
            },
            Ok(None) => return Ok(Err(Rejection::UnknownKey)),
            Err(error) => {
                tracing::warn!(zone = %zone, issuer_id = %row.id, %error, "subject issuer key set unavailable");
                return Ok(Err(Rejection::KeysUnavailable));
            }
        },
    };
    if let Err(rejection) = parsed.verify(&jwk) {
        return Ok(Err(rejection));
    }
    match parsed.check_claims(row.audience.as_deref(), now.timestamp()) {
        Ok(sub) => Ok(Ok(Verified {
            sub: sub.to_owned(),
            issuer: row.issuer,
            now,
        })),
        Err(rejection) => Ok(Err(rejection)),
    }
}

/// Steps 16–21 for a federated subject: allow event, JTI registry, the user authority
/// record (its own root), the signature.
async fn mint(
    audit: &Audit<'_>,
    req: &TokenRequest,
    verified: &Verified,
) -> Result<Answer, StsError> {
    let sts = audit.sts;
    // The form parser already refused a TTL above the 3600 s cap.
    let ttl = if req.ttl_seconds == 0 {
        DEFAULT_TTL_SECONDS
    } else {
        req.ttl_seconds
    };
    let sid = uuid::Uuid::now_v7().to_string();
    audit.event(
        AuditDecision::Allow,
        "complete",
        json!([{"policy": FEDERATION_POLICY}]),
        json!({"issuer": verified.issuer, "session_id": sid, "sub_type": "user"}),
    )?;

    // The zone key is resolved before the registry and the record, as in the exchange, so
    // a key this replica cannot use leaves no orphan record behind.
    let key = sts
        .keys
        .signer(audit.zone, verified.now, audit.request_id)
        .await?;
    key.ensure_usable()?;

    // Step 17: the JTI registry, before anything is persisted.
    let jti = match crate::exchange::register_jti(
        sts,
        audit.zone,
        audit.request_id,
        &audit.application.id,
        ttl,
    )
    .await?
    {
        Ok(jti) => jti,
        Err(denial) => return Ok(Answer::Denied(denial)),
    };

    // Step 18: one user authority record, its own root, minted by the caller.
    let iat = verified.now.timestamp();
    let exp = iat + ttl;
    let expires_at = DateTime::<Utc>::from_timestamp(exp, 0).unwrap_or(verified.now);
    let claims = MandateClaims {
        iss: sts.config.issuer_url.clone(),
        sub: verified.sub.clone(),
        aud: vec![sts.config.issuer_url.clone()],
        exp,
        iat,
        jti,
        zone_id: audit.zone.as_str().to_owned(),
        client_id: audit.application.id.clone(),
        scope: None,
        sid: sid.clone(),
        root_sid: sid.clone(),
        use_: MandateUse::Session,
        sub_type: SubType::User,
        target: Vec::new(),
        agent_session_id: None,
        delegation_edge_id: None,
        source_session_id: None,
        target_session_id: None,
        delegation_path: Vec::new(),
        delegation_chain: Vec::new(),
        hop_count: 0,
        delegation_graph_epoch: 0,
    };
    let mut snapshot = serde_json::to_value(&claims).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut snapshot {
        map.remove("jti");
        map.insert("federated_issuer".into(), json!(verified.issuer));
    }
    let record = NewAuthorityRecord {
        id: &sid,
        zone_id: audit.zone.as_str(),
        session_type: "user",
        subject_id: &verified.sub,
        application_id: &audit.application.id,
        parent_id: None,
        root_id: &sid,
        expires_at,
        authenticated_at: verified.now,
        claims_json: &snapshot,
        created_by: "system:sts",
    };
    let mut tx = zone_tx(&sts.pool, audit.zone).await?;
    if let Err(error) = authority_records::insert(&mut tx, &record).await {
        tracing::error!(%error, "authority record insert failed");
        return Ok(Answer::Denied(Denial::internal("token issuance failed")));
    }
    tx.commit().await?;

    // Step 19: sign with the zone key resolved above.
    let body = serde_json::to_vec(&claims).map_err(|e| StsError::Internal(e.to_string()))?;
    let token = key.sign(&body)?;

    // Step 21: no scope, no target_resources.
    Ok(Answer::Token(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": exp - iat,
        "issued_token_type": crate::form::ACCESS_TOKEN_TYPE,
    })))
}

/// The audit context of one federation exchange.
struct Audit<'a> {
    sts: &'a Sts,
    request_id: &'a str,
    application: &'a ApplicationRow,
    zone: &'a ZoneId,
}

impl Audit<'_> {
    /// One `token_exchange` event. No bundle is pinned on this branch; the contract
    /// identity is still stamped, as on every decision event.
    fn event(
        &self,
        decision: AuditDecision,
        status: &str,
        determining: Value,
        extra: Value,
    ) -> Result<(), StsError> {
        let mut metadata = serde_json::Map::new();
        metadata.insert("application_id".into(), json!(self.application.id));
        metadata.insert("application_name".into(), json!(self.application.name));
        metadata.insert(
            "application_registration_method".into(),
            json!(self.application.registration_method),
        );
        metadata.insert("subject_kind".into(), json!("user"));
        metadata.insert(
            "decision_contract_version".into(),
            json!(control_policy::CONTRACT_VERSION),
        );
        metadata.insert(
            "decision_contract_sha256".into(),
            json!(control_policy::contract_sha256()),
        );
        if let Value::Object(extra) = extra {
            metadata.extend(extra);
        }
        let event = AuditEvent::new(self.zone.as_str(), "token_exchange")
            .request_id(self.request_id)
            .decision(decision)
            .evaluation_status(status)
            .determining_policies_json(determining)
            .diagnostics_json(json!([]))
            .metadata_json(Value::Object(metadata))
            .occurred_at(Utc::now());
        self.sts.audit(event)
    }
}
