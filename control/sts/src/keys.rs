//! Zone signing keys (storage §10.4): created on first use, sealed under `ZONE_KEK`,
//! selected by activation time, published in the JWKS with a rotation grace.
//!
//! Key rows are read per zone and cached for 30 s (the refetch cooldown); the private key
//! is decrypted once per load, kept in memory only, and never logged.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use control_crypto::{KekRing, PublicKey, SealContext, ZoneSigningKey};
use control_events::outbox::OutboxHandle;
use control_model::ZoneId;
use control_store::{
    outbox,
    signing_keys::{self, NewSigningKey, SigningKeyRow},
    zone::zone_tx,
};
use sqlx::PgPool;

use crate::error::StsError;

/// One key of a zone, decrypted.
#[derive(Debug, Clone)]
pub(crate) struct LoadedKey {
    pub(crate) kid: String,
    pub(crate) version: i32,
    pub(crate) status: String,
    pub(crate) activates_at: DateTime<Utc>,
    pub(crate) rotated_at: Option<DateTime<Utc>>,
    pub(crate) public: PublicKey,
    pub(crate) jwk: serde_json::Value,
    /// The private key; `None` when `ZONE_KEK` does not open it (the JWKS and verification
    /// still work from the clear `public_jwk`, signing with it fails).
    signing: Option<ZoneSigningKey>,
}

impl LoadedKey {
    /// Fails when this replica cannot sign with the key.
    pub(crate) fn ensure_usable(&self) -> Result<(), StsError> {
        match self.signing {
            Some(_) => Ok(()),
            None => Err(StsError::KeyUnavailable(format!(
                "key {} cannot be opened with ZONE_KEK",
                self.kid
            ))),
        }
    }

    /// Signs a serialized claim set as a compact JWS with this key's `kid`.
    pub(crate) fn sign(&self, claims: &[u8]) -> Result<String, StsError> {
        let key = self.signing.as_ref().ok_or_else(|| {
            StsError::KeyUnavailable(format!("key {} cannot be opened with ZONE_KEK", self.kid))
        })?;
        key.sign_jwt(&self.kid, claims)
            .map_err(|e| StsError::KeyUnavailable(e.to_string()))
    }
}

impl LoadedKey {
    /// May verify at `now`: pending or active, or retiring within the grace period.
    fn verifies(&self, now: DateTime<Utc>, grace: Duration) -> bool {
        match self.status.as_str() {
            "pending" | "active" => true,
            "retiring" => self.rotated_at.is_none_or(|r| {
                now < r + chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::hours(24))
            }),
            _ => false,
        }
    }
}

/// The zone key store.
pub(crate) struct ZoneKeys {
    pool: PgPool,
    kek: KekRing,
    grace: Duration,
    cache: moka::future::Cache<String, Arc<Vec<LoadedKey>>>,
    /// Woken after a key creation commits, so `caracal.keys.invalidate` goes out at once.
    outbox: OutboxHandle,
}

impl ZoneKeys {
    pub(crate) fn new(pool: PgPool, kek: KekRing, grace: Duration, outbox: OutboxHandle) -> Self {
        Self {
            pool,
            kek,
            grace,
            outbox,
            cache: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
        }
    }

    async fn load(&self, zone: &ZoneId) -> Result<Arc<Vec<LoadedKey>>, StsError> {
        if let Some(keys) = self.cache.get(zone.as_str()).await {
            return Ok(keys);
        }
        let mut tx = zone_tx(&self.pool, zone).await?;
        let rows = signing_keys::list_usable(&mut tx, zone.as_str()).await?;
        tx.commit().await?;
        let keys = Arc::new(
            rows.iter()
                .map(|row| self.decrypt(row))
                .collect::<Result<Vec<_>, _>>()?,
        );
        self.cache
            .insert(zone.as_str().to_owned(), keys.clone())
            .await;
        Ok(keys)
    }

    /// The public half comes from the clear `public_jwk` (the JWKS never decrypts); the
    /// private half is opened under `ZONE_KEK`, and a failure there disables signing with
    /// this key only, logged once per load without key material.
    fn decrypt(&self, row: &SigningKeyRow) -> Result<LoadedKey, StsError> {
        let context = SealContext {
            table: "secrets",
            column: "ciphertext",
            zone_id: &row.zone_id,
            row_id: &row.id,
        };
        let signing = match self
            .kek
            .open(&context, &row.nonce, &row.ciphertext, &row.dek_id)
        {
            Ok(der) => match ZoneSigningKey::from_pkcs8_der(&der) {
                Ok(key) => Some(key),
                Err(error) => {
                    tracing::error!(kid = %row.id, %error, "zone signing key does not decode");
                    None
                }
            },
            Err(error) => {
                tracing::error!(kid = %row.id, %error, "zone signing key cannot be opened");
                None
            }
        };
        let public = match (&row.public_jwk, &signing) {
            (Some(jwk), _) => PublicKey::from_jwk(jwk).map_err(|e| {
                StsError::KeyUnavailable(format!("key {}: public_jwk: {e}", row.id))
            })?,
            (None, Some(key)) => key.public_key(),
            (None, None) => {
                return Err(StsError::KeyUnavailable(format!(
                    "key {} has no usable public key",
                    row.id
                )));
            }
        };
        Ok(LoadedKey {
            kid: row.id.clone(),
            version: row.version,
            status: row.status.clone(),
            activates_at: row.activates_at,
            rotated_at: row.rotated_at,
            jwk: public.to_jwk(&row.id),
            public,
            signing,
        })
    }

    /// Drops the zone's cached keys (on `caracal.keys.invalidate`).
    pub(crate) async fn invalidate(&self, zone: &str) {
        self.cache.invalidate(zone).await;
    }

    /// The key that signs at `now`: the highest version already activated; created on the
    /// zone's first signing need.
    pub(crate) async fn signer(
        &self,
        zone: &ZoneId,
        now: DateTime<Utc>,
        request_id: &str,
    ) -> Result<LoadedKey, StsError> {
        let pick = |keys: &[LoadedKey]| {
            keys.iter()
                // An `active` key signs (the first key is active from creation, whatever the
                // caller's clock says); a rotated `pending` key signs once its time comes.
                .filter(|k| {
                    k.status == "active" || (k.status == "pending" && k.activates_at <= now)
                })
                .max_by_key(|k| k.version)
                .cloned()
        };
        if let Some(key) = pick(&self.load(zone).await?) {
            return Ok(key);
        }
        self.create_first(zone, now, request_id).await?;
        self.cache.invalidate(zone.as_str()).await;
        pick(&self.load(zone).await?)
            .ok_or_else(|| StsError::KeyUnavailable("no signing key after creation".to_owned()))
    }

    /// Creates version 1 under the zone's advisory lock, after re-checking, and announces it.
    /// It is active from `activates_at`: the trusted time of the exchange that needed it.
    async fn create_first(
        &self,
        zone: &ZoneId,
        activates_at: DateTime<Utc>,
        request_id: &str,
    ) -> Result<(), StsError> {
        let mut tx = zone_tx(&self.pool, zone).await?;
        signing_keys::lock_zone(&mut tx, zone.as_str()).await?;
        if !signing_keys::list_usable(&mut tx, zone.as_str())
            .await?
            .is_empty()
        {
            tx.commit().await?;
            return Ok(());
        }
        let kid = uuid::Uuid::now_v7().to_string();
        let key = ZoneSigningKey::generate();
        let der = key
            .to_pkcs8_der()
            .map_err(|e| StsError::KeyUnavailable(e.to_string()))?;
        let sealed = self
            .kek
            .seal(
                &SealContext {
                    table: "secrets",
                    column: "ciphertext",
                    zone_id: zone.as_str(),
                    row_id: &kid,
                },
                &der,
            )
            .map_err(|e| StsError::KeyUnavailable(e.to_string()))?;
        let jwk = key.public_key().to_jwk(&kid);
        signing_keys::insert(
            &mut tx,
            &NewSigningKey {
                id: &kid,
                zone_id: zone.as_str(),
                version: 1,
                status: "active",
                activates_at,
                public_jwk: &jwk,
                nonce: &sealed.nonce,
                ciphertext: &sealed.ciphertext,
                dek_id: sealed.dek_id.as_str(),
                created_by: "system:sts",
            },
        )
        .await?;
        outbox::enqueue_key_change(&mut tx, zone.as_str(), &kid, "created", Some(request_id))
            .await?;
        tx.commit().await?;
        // Publication follows the commit (storage §7.2); the poll is only the fallback.
        self.outbox.wake();
        tracing::info!(zone = %zone, kid = %kid, "created the zone signing key");
        Ok(())
    }

    /// The public key for `kid` if it may verify at `now`.
    pub(crate) async fn verifier(
        &self,
        zone: &ZoneId,
        kid: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<PublicKey>, StsError> {
        let keys = self.load(zone).await?;
        Ok(keys
            .iter()
            .find(|k| k.kid == kid && k.verifies(now, self.grace))
            .map(|k| k.public.clone()))
    }

    /// The JWKS entries of a zone; `None` for an unknown zone or a zone without a key yet.
    pub(crate) async fn jwks(
        &self,
        zone: &ZoneId,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<serde_json::Value>>, StsError> {
        let mut tx = zone_tx(&self.pool, zone).await?;
        let exists = signing_keys::zone_exists(&mut tx, zone.as_str()).await?;
        tx.commit().await?;
        if !exists {
            return Ok(None);
        }
        let keys = self.load(zone).await?;
        let mut listed: Vec<&LoadedKey> = keys
            .iter()
            .filter(|k| k.verifies(now, self.grace))
            .collect();
        listed.sort_by_key(|k| std::cmp::Reverse(k.version));
        if listed.is_empty() {
            return Ok(None);
        }
        Ok(Some(listed.into_iter().map(|k| k.jwk.clone()).collect()))
    }
}
