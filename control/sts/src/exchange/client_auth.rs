//! Step 4 and 5 of the exchange: the authentication-failure limiter and client
//! authentication (authority §3, §8.2, storage §10.5).
//!
//! Secrets are verified with Argon2id off the async threads, under a semaphore sized to the
//! CPU count. A verified `(application, secret, stored hash)` triple is cached for 60 s by
//! its SHA-256, so a rotated secret (a new stored hash) never matches a stale entry. Unknown
//! ids pay one dummy derivation, so timing does not reveal which ids exist.

use std::sync::Arc;

use control_model::{Denial, ErrorCode, ZoneId};
use control_store::{
    applications::{self, ApplicationRow},
    zone::cross_zone_read,
};
use sha2::{Digest, Sha256};

use crate::{error::StsError, form::TokenRequest, state::Sts};

/// The outcome of authentication.
pub(crate) enum ClientAuth {
    /// The caller and the zone the exchange runs in.
    Authenticated {
        application: ApplicationRow,
        zone: ZoneId,
    },
    /// A catalog answer.
    Denied(Denial),
}

const INVALID_CREDENTIALS: &str = "invalid client credentials";

pub(crate) async fn authenticate(sts: &Sts, req: &TokenRequest) -> Result<ClientAuth, StsError> {
    let Some(application_id) = req.application_id.as_deref() else {
        return Ok(ClientAuth::Denied(Denial::unauthorized(
            INVALID_CREDENTIALS,
        )));
    };
    match sts.redis.auth_blocked(application_id).await {
        Ok(false) => {}
        Ok(true) => {
            return Ok(ClientAuth::Denied(Denial::new(
                429,
                ErrorCode::ProviderRateLimited,
                "authentication rate limit exceeded",
            )));
        }
        Err(error) => {
            tracing::warn!(%error, "authentication limiter unavailable");
            return Ok(ClientAuth::Denied(Denial::new(
                429,
                ErrorCode::ProviderRateLimited,
                "authentication rate limit unavailable",
            )));
        }
    }
    let secret = req.client_secret.clone().unwrap_or_default();
    let mut read = cross_zone_read(&sts.pool).await?;
    let read_row = applications::find_as_of(&mut read, application_id).await?;
    read.finish().await?;
    let (row, now) = match read_row {
        Some(read) => (Some(read.row), Some(read.now)),
        None => (None, None),
    };

    let verified = match &row {
        Some(app) if !secret.is_empty() => verify_secret(sts, app, &secret).await?,
        _ => {
            dummy_verify(sts).await;
            false
        }
    };
    let usable = match (&row, now) {
        (Some(app), Some(now)) => app.is_usable(now),
        _ => false,
    };
    let (Some(application), true, true) = (row, verified, usable) else {
        if let Err(error) = sts.redis.record_auth_failure(application_id).await {
            tracing::warn!(%error, "could not record an authentication failure");
        }
        return Ok(ClientAuth::Denied(Denial::unauthorized(
            INVALID_CREDENTIALS,
        )));
    };

    match req.zone_id.as_deref() {
        Some(zone) if zone != application.zone_id => Ok(ClientAuth::Denied(Denial::new(
            403,
            ErrorCode::ZoneInvalid,
            format!(
                "application {} is registered in zone {}, not in zone {}",
                application.id,
                application.zone_id,
                printable(zone)
            ),
        ))),
        Some(zone) => match ZoneId::parse(zone) {
            Ok(zone) => Ok(ClientAuth::Authenticated { application, zone }),
            Err(_) => Ok(ClientAuth::Denied(Denial::bad_request("invalid zone_id"))),
        },
        None => {
            // Only a control-key request may omit the zone; it comes from the application.
            let control = application.traits.iter().any(|t| t == "control:invoke")
                && req
                    .resources
                    .iter()
                    .all(|r| r == &sts.config.control_audience)
                && !req.resources.is_empty();
            if !control {
                return Ok(ClientAuth::Denied(Denial::bad_request(
                    "zone_id is required",
                )));
            }
            match ZoneId::parse(&application.zone_id) {
                Ok(zone) => Ok(ClientAuth::Authenticated { application, zone }),
                Err(_) => Err(StsError::Internal("stored zone id is invalid".to_owned())),
            }
        }
    }
}

fn printable(value: &str) -> String {
    value
        .chars()
        .filter(|c| !c.is_control())
        .take(128)
        .collect()
}

async fn verify_secret(sts: &Sts, app: &ApplicationRow, secret: &str) -> Result<bool, StsError> {
    let Some(stored) = app.client_secret_hash.clone() else {
        dummy_verify(sts).await;
        return Ok(false);
    };
    let mut hasher = Sha256::new();
    hasher.update(app.id.as_bytes());
    hasher.update([0]);
    hasher.update(secret.as_bytes());
    hasher.update([0]);
    hasher.update(stored.as_bytes());
    let cache_key: [u8; 32] = hasher.finalize().into();
    // Concurrent verifications of the same triple are coalesced: one derivation runs, the
    // others wait for its outcome (no Argon2id stampede when the entry expires). Only a
    // success is cached.
    let argon_permits = Arc::clone(&sts.argon_permits);
    let app_id = app.id.clone();
    let secret = zeroize::Zeroizing::new(secret.to_owned());
    let verified = sts
        .secret_cache
        .try_get_with(cache_key, async move {
            let permit = argon_permits
                .acquire_owned()
                .await
                .map_err(|_closed| Unverified::Broken("argon2 semaphore closed".to_owned()))?;
            let outcome = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                control_crypto::verify_secret(secret.as_bytes(), &stored)
            })
            .await
            .map_err(|e| Unverified::Broken(format!("argon2 task failed: {e}")))?;
            match outcome {
                Ok(true) => Ok(()),
                Ok(false) => Err(Unverified::Mismatch),
                Err(error) => {
                    tracing::warn!(application = %app_id, %error, "stored client secret hash is malformed");
                    Err(Unverified::Mismatch)
                }
            }
        })
        .await;
    match verified {
        Ok(()) => Ok(true),
        Err(cause) => match cause.as_ref() {
            Unverified::Mismatch => Ok(false),
            Unverified::Broken(reason) => Err(StsError::Internal(reason.clone())),
        },
    }
}

/// Why a secret did not verify.
#[derive(Debug)]
enum Unverified {
    /// Wrong secret (or an unusable stored hash).
    Mismatch,
    /// The verification itself could not run.
    Broken(String),
}

async fn dummy_verify(sts: &Sts) {
    let Ok(permit) = Arc::clone(&sts.argon_permits).acquire_owned().await else {
        return;
    };
    let params = sts.argon2_params;
    let _joined = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        control_crypto::dummy_verify(&params);
    })
    .await;
}
