//! The STS's shared state: configuration, pools, caches, the audit emitter.

use std::sync::Arc;

use control_crypto::Argon2Params;
use control_events::audit::{AuditEmitter, AuditEvent};
use sqlx::PgPool;
use tokio::sync::Semaphore;

use crate::{
    bundles::Bundles, config::StsConfig, error::StsError, keys::ZoneKeys, metrics::Metrics,
    redis_ops::RedisState,
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
    pub(crate) secret_cache: moka::sync::Cache<[u8; 32], ()>,
    /// Bounds concurrent Argon2id derivations to the CPU count.
    pub(crate) argon_permits: Arc<Semaphore>,
    /// Parameters of the dummy derivation for unknown ids.
    pub(crate) argon2_params: Argon2Params,
    pub(crate) metrics: Metrics,
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
