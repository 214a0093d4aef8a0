//! Steps 2–17: who is calling, with what authority, and is it still live.

use std::{ops::ControlFlow, sync::Arc, sync::atomic::Ordering};

use chrono::Utc;
use control_crypto::UnverifiedJwt;
use control_model::{
    Denial, ErrorCode,
    authority::{Revalidated, Revalidation, revalidate},
};
use gateway_state::{Anchors, ZoneState};
use http::{Request, header};
use hyper::body::Incoming;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::{Authenticated, Gateway, Phase, Refusal, RequestCtx};
use crate::{
    audit::Stage,
    headers,
    mandate::{self, Verified},
};

/// Step 5's pre-flight window.
const PREFLIGHT_SECONDS: i64 = 35;
/// Step 15's `iat` leeway.
const IAT_LEEWAY_SECONDS: i64 = 60;
/// Step 11: at most one forced key reload per this many milliseconds.
const KEY_RELOAD_COOLDOWN_MS: i64 = 30_000;

fn unauthorized(description: &'static str) -> ControlFlow<Refusal, Authenticated> {
    ControlFlow::Break(Denial::new(401, ErrorCode::InvalidToken, description).into())
}

fn bad_request(description: &'static str) -> ControlFlow<Refusal, Authenticated> {
    ControlFlow::Break(Denial::bad_request(description).into())
}

/// The bearer of `Authorization: Bearer <token>` (scheme matched case-insensitively).
fn bearer(req: &Request<Incoming>) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case("bearer ") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

impl Gateway {
    pub(super) async fn authenticate(
        &self,
        ctx: &mut RequestCtx,
        req: &Request<Incoming>,
    ) -> Phase<Authenticated> {
        let now = Utc::now();
        // Step 2: a bearer.
        let Some(token) = bearer(req) else {
            return Ok(unauthorized("missing bearer token"));
        };
        // Step 3: its size.
        if token.len() > control_crypto::MAX_TOKEN_BYTES {
            return Ok(unauthorized("bearer token too large"));
        }
        // Step 4: the unverified peek.
        let Some(peek) = mandate::peek(token) else {
            return Ok(unauthorized("malformed bearer token"));
        };
        // Step 5: the pre-flight window.
        if peek.exp - now.timestamp() < PREFLIGHT_SECONDS {
            return Ok(ControlFlow::Break(
                Denial::new(
                    401,
                    ErrorCode::CredentialExpiredNotRenewable,
                    "credential expiring within pre-flight window",
                )
                .into(),
            ));
        }
        // Step 6: identity comes from the bearer only.
        if req.headers().contains_key("x-caracal-client-id") {
            return Ok(bad_request("client identity derives from the bearer token"));
        }
        // Step 7: the routing header.
        if !req.headers().contains_key("x-caracal-resource") {
            return Ok(bad_request("missing routing headers"));
        }
        // Steps 8 and 9: zone and client claims.
        let Some(zone_id) = peek.zone_id.filter(|z| mandate::is_id(z)) else {
            return Ok(unauthorized("missing token zone"));
        };
        if !peek.client_id.as_deref().is_some_and(mandate::is_id) {
            return Ok(unauthorized("missing token client"));
        }
        // Step 10: path traversal.
        if headers::path_traversal(req.uri().path()) {
            return Ok(bad_request("path traversal not permitted"));
        }
        // Step 11: the signature under a key of the zone.
        let Some((zone, mandate)) = self.verify_signature(ctx, token, &zone_id).await else {
            return Ok(unauthorized("bearer signature invalid"));
        };
        ctx.audit.zone_id.clone_from(&zone.zone_id);
        let fingerprint = Sha256::digest(token.as_bytes());
        ctx.audit
            .set("subject_fingerprint", hex::encode(&fingerprint[..8]));
        ctx.audit.set("application_id", mandate.client_id.clone());
        if let Some(kind) = &mandate.sub_type {
            ctx.audit.set("subject_kind", kind.clone());
        }
        ctx.audit.set("method", req.method().as_str());
        if let Some(resource) = req
            .headers()
            .get("x-caracal-resource")
            .and_then(|v| v.to_str().ok())
        {
            ctx.audit.set("resource", resource);
        }

        // Step 12: single use.
        if mandate.use_.as_deref() != Some("session")
            && let Some(jti) = mandate.jti.as_deref().filter(|j| !j.is_empty())
        {
            let ttl_ms =
                u64::try_from((mandate.exp as i64 - now.timestamp()).max(1) * 1000).unwrap_or(1000);
            if !self
                .counters
                .first_use(jti, &ctx.request_id, ttl_ms)
                .await?
            {
                ctx.audit.stage = Stage::Replay;
                ctx.audit.set("jti", jti);
                return Ok(ControlFlow::Break(Refusal::caused(
                    Denial::new(401, ErrorCode::InvalidToken, "token replay detected"),
                    "replay_detected",
                )));
            }
        }
        ctx.audit.stage = Stage::Authenticated;

        // Step 13: the anchors.
        let sid = mandate.sid.clone().unwrap_or_default();
        let anchors = Anchors {
            root_sid: mandate.root_sid.clone().unwrap_or_default(),
            sid,
            agent_session_id: mandate.agent_session_id.clone().filter(|s| !s.is_empty()),
            delegation_edge_id: mandate.delegation_edge_id.clone().filter(|s| !s.is_empty()),
        };
        set_anchor_metadata(ctx, &anchors);
        let session_revoked = || {
            ControlFlow::Break(Refusal::caused(
                Denial::new(401, ErrorCode::InvalidToken, "session revoked"),
                "session_revoked",
            ))
        };
        let view = self.state.view();
        if view.anchors_revoked(&anchors) {
            return Ok(session_revoked());
        }
        // Standalone: there is no registry to read; the marks above are all of step 13.
        let prefetched = match &self.standalone {
            Some(_) => None,
            None => Some(view.prefetch(&zone.zone_id, &anchors).await?),
        };
        if let Some(prefetched) = &prefetched {
            use control_model::authority::AuthorityLookup as _;
            let record_revoked = prefetched
                .record(&anchors.sid)
                .is_some_and(|r| r.status == "revoked");
            let session_stopped = anchors
                .agent_session_id
                .as_deref()
                .and_then(|id| prefetched.session(id))
                .is_some_and(|s| {
                    matches!(s.status.as_str(), "suspended" | "terminated" | "expired")
                });
            let edge_revoked = anchors
                .delegation_edge_id
                .as_deref()
                .and_then(|id| prefetched.edge(id))
                .is_some_and(|e| e.status == "revoked");
            if record_revoked || session_stopped || edge_revoked {
                return Ok(session_revoked());
            }
            if let Some(session) = anchors
                .agent_session_id
                .as_deref()
                .and_then(|id| prefetched.session(id))
            {
                ctx.audit.set("agent_labels", json!(session.labels));
            }
        }

        // Step 14: the application (standalone: the zone's configured list, when it has one).
        let admitted = match &self.standalone {
            Some(standalone) => standalone.admits(&zone.zone_id, &mandate.client_id),
            None => zone
                .applications
                .get(&mandate.client_id)
                .is_some_and(|app| app.is_usable(now)),
        };
        if !admitted {
            return Ok(ControlFlow::Break(
                Denial::unauthorized("invalid client credentials").into(),
            ));
        }
        // Step 15: the claims of a gateway mandate.
        let iat_ok = mandate
            .iat
            .is_some_and(|iat| (iat as i64) <= now.timestamp() + IAT_LEEWAY_SECONDS);
        if mandate.iss != self.config.issuer_url
            || !mandate.aud.iter().any(|a| a == &self.config.issuer_url)
            || !iat_ok
            || mandate.use_.as_deref() != Some("gateway")
        {
            return Ok(unauthorized("invalid subject_token"));
        }
        if anchors.sid.is_empty() {
            return Ok(unauthorized("missing token authority record"));
        }
        let Some(prefetched) = prefetched else {
            // Standalone: steps 16 and 17 need the registry of records, sessions and edges,
            // which only the Postgres mode has; the policy input carries no delegation edge.
            return Ok(ControlFlow::Continue(super::Authenticated {
                mandate,
                zone,
                anchors,
                revalidated: Revalidated::Nothing,
                now,
            }));
        };
        // Step 16: the authority record.
        {
            use control_model::authority::AuthorityLookup as _;
            if !prefetched
                .record(&anchors.sid)
                .is_some_and(|r| r.is_live(&zone.zone_id, now))
            {
                return Ok(ControlFlow::Break(Refusal::caused(
                    Denial::forbidden("authority record inactive or expired"),
                    "authority_record_inactive",
                )));
            }
        }
        // Step 17: §2.3 with the claim's session and edge. The record was checked at step 16;
        // its binding to the session was checked by the mint that created it, so it is not
        // bound again here (the gateway mandate's record is the mint's own, not the
        // session's subject record).
        let revalidated = match revalidate(
            &Revalidation {
                zone_id: &zone.zone_id,
                caller_application_id: &mandate.client_id,
                bound_record_id: None,
                agent_session_id: anchors.agent_session_id.as_deref(),
                delegation_edge_id: anchors.delegation_edge_id.as_deref(),
                requested_scopes: &[],
                requested_ttl: 0,
                subject_token: true,
                now,
            },
            &prefetched,
        ) {
            Ok(revalidated) => revalidated,
            Err(description) => {
                return Ok(ControlFlow::Break(Refusal::caused(
                    Denial::forbidden(description),
                    "delegation_invalid",
                )));
            }
        };
        if let Some(proof) = revalidated.proof() {
            ctx.audit.set("delegation_graph_epoch", proof.epoch);
            ctx.audit.set("delegation_hop_count", proof.path.len());
        }
        Ok(ControlFlow::Continue(super::Authenticated {
            mandate,
            zone,
            anchors,
            revalidated,
            now,
        }))
    }

    /// Step 11: verifies under the zone's keys; an unknown `kid` forces one rebuild per
    /// 30 s and re-pins the snapshot (nothing else was read from it yet).
    async fn verify_signature(
        &self,
        ctx: &mut RequestCtx,
        token: &str,
        zone_id: &str,
    ) -> Option<(Arc<ZoneState>, Verified)> {
        let jwt = UnverifiedJwt::parse(token).ok()?;
        let kid = jwt.header().kid.clone();
        let known = |snapshot: &gateway_state::Snapshot| {
            snapshot.zone(zone_id).is_some_and(|zone| match &kid {
                Some(kid) => zone.keys.contains_key(kid),
                None => !zone.keys.is_empty(),
            })
        };
        if !known(&ctx.snapshot) {
            let now_ms = Utc::now().timestamp_millis();
            let last = self.last_key_reload_ms.load(Ordering::Acquire);
            if now_ms - last >= KEY_RELOAD_COOLDOWN_MS
                && self
                    .last_key_reload_ms
                    .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                self.metrics.key_reload();
                let reloaded = match &self.standalone {
                    // Standalone: the zones' JWKS URLs are fetched again (a failed fetch
                    // keeps the keys); key files only change with a restart.
                    Some(standalone) if standalone.has_jwks_urls() => {
                        standalone.refresh_keys().await;
                        self.state.store(standalone.snapshot());
                        true
                    }
                    Some(_) => false,
                    None => self.state.rebuild_now().await.is_ok(),
                };
                if reloaded {
                    ctx.snapshot = self.state.snapshot();
                }
            }
        }
        let zone = Arc::clone(ctx.snapshot.zone(zone_id)?);
        let claims = match &kid {
            Some(kid) => jwt.verify(zone.keys.get(kid)?).ok()?,
            None => zone
                .keys
                .values()
                .find_map(|key| jwt.clone().verify(key).ok())?,
        };
        let mandate = Verified::parse(&claims)?;
        (mandate.zone_id == zone_id).then_some((zone, mandate))
    }
}

fn set_anchor_metadata(ctx: &mut RequestCtx, anchors: &Anchors) {
    if !anchors.sid.is_empty() {
        ctx.audit.set("session_id", anchors.sid.clone());
    }
    if let Some(id) = &anchors.agent_session_id {
        ctx.audit.set("agent_session_id", id.clone());
    }
    if let Some(id) = &anchors.delegation_edge_id {
        ctx.audit.set("delegation_edge_id", id.clone());
    }
}
