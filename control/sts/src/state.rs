//! The STS's shared state: configuration, pools, caches, the audit emitter.

use std::sync::Arc;

use control_crypto::Argon2Params;
use control_events::audit::{AuditEmitter, AuditEvent};
use sqlx::PgPool;
use tokio::sync::Semaphore;

use crate::{
    bundles::Bundles, config::StsConfig, error::StsError, federation::Federation, keys::ZoneKeys,
    metrics::Metrics, redis_ops::RedisState,
};

/// Everything a request handler reads. Built once at start-up.
pub(crate) struct Sts {
    pub(crate) config: StsConfig,
    pub(crate) pool: PgPool,
    pub(crate) redis: RedisState,
    pub(crate) keys: ZoneKeys,
    pub(crate) bundles: Arc<Bundles>,
    pub(crate) audit: AuditEmitter,
    /// Verified secret digests (§10.5): 10,000 entries, 60 s.
    pub(crate) secret_cache: moka::future::Cache<[u8; 32], ()>,
    /// Bounds concurrent Argon2id derivations to the CPU count.
    pub(crate) argon_permits: Arc<Semaphore>,
    /// Parameters of the dummy derivation for unknown ids.
    pub(crate) argon2_params: Argon2Params,
    pub(crate) metrics: Metrics,
    /// False when `ZONE_KEK` does not open the KEK canary: the replica stays unready.
    pub(crate) kek_ok: std::sync::atomic::AtomicBool,
    /// Subject issuers' key sets (federation).
    pub(crate) federation: Federation,
    /// The outbox dispatcher of producer `sts`: woken after commits that enqueue rows; its
    /// stats feed `/metrics` and `/ready`.
    pub(crate) outbox: control_events::outbox::OutboxHandle,
}

impl Sts {
    /// Hands an event to the emitter; an event that neither the queue, the stream nor the
    /// replay volume can take refuses the request (settled point 4).
    pub(crate) fn audit(&self, event: AuditEvent) -> Result<(), StsError> {
        self.audit
            .emit(event)
            .map_err(|e| StsError::AuditUnavailable(e.to_string()))
    }
}

impl Sts {
    /// Opens the KEK canary (storage §10.1). A database without a canary (never migrated
    /// with a key) counts as matching; a canary the configured ring cannot open does not.
    pub(crate) async fn check_kek(&self) -> Result<bool, StsError> {
        let mut conn = self.pool.acquire().await.map_err(StsError::Database)?;
        let Some(canary) = control_store::kek_check::read(&mut conn).await? else {
            return Ok(true);
        };
        let context = control_crypto::SealContext {
            table: control_store::kek_check::CANARY_TABLE,
            column: control_store::kek_check::CANARY_COLUMN,
            zone_id: control_store::kek_check::CANARY_ZONE,
            row_id: control_store::kek_check::CANARY_ROW,
        };
        match self
            .config
            .kek
            .open(&context, &canary.nonce, &canary.ciphertext, &canary.dek_id)
        {
            Ok(plain) if plain.as_slice() == control_store::kek_check::CANARY_PLAINTEXT => Ok(true),
            Ok(_) => Ok(false),
            Err(error) => {
                tracing::error!("zone_kek_mismatch: {error}");
                Ok(false)
            }
        }
    }
}
