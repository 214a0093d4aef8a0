//! The STS's shared state: configuration, pools, caches, the audit emitter.

use std::sync::Arc;

use control_crypto::Argon2Params;
use std::cell::RefCell;

use control_events::audit::{
    AuditEmitMode, AuditEmitter, AuditEvent, AuditReceipt, AuditUnavailable,
};
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
    /// The invalidation consumers (`caracal.policy.invalidate`, `caracal.keys.invalidate`):
    /// `/ready` needs both connected.
    pub(crate) consumers: [Arc<control_events::fanout::FanoutStats>; 2],
}

tokio::task_local! {
    /// Acceptance receipts of the audit events the current request emitted
    /// (`AUDIT_EMIT_MODE=sync`); [`with_audit_receipts`] waits for them before the answer
    /// leaves.
    static RECEIPTS: RefCell<Vec<AuditReceipt>>;
}

/// Runs `work` (one request) collecting the audit receipts it produces, then waits for all
/// of them. In `sync` mode the caller must not send `work`'s answer unless the second value
/// is `Ok`; in `async` mode nothing is collected.
pub(crate) async fn with_audit_receipts<T>(
    work: impl Future<Output = T>,
) -> (T, Result<(), AuditUnavailable>) {
    RECEIPTS
        .scope(RefCell::new(Vec::new()), async {
            let out = work.await;
            let receipts = RECEIPTS.with(|r| std::mem::take(&mut *r.borrow_mut()));
            let mut accepted = Ok(());
            for receipt in receipts {
                if receipt.accepted().await.is_err() {
                    accepted = Err(AuditUnavailable);
                }
            }
            (out, accepted)
        })
        .await
}

impl Sts {
    /// Hands an event to the emitter; an event that neither the queue, the stream nor the
    /// replay volume can take refuses the request (settled point 4). In `sync` mode the
    /// event's receipt joins the request's, which the server awaits before answering.
    pub(crate) fn audit(&self, event: AuditEvent) -> Result<(), StsError> {
        match self.audit.emit_mode() {
            AuditEmitMode::Async => self
                .audit
                .emit(event)
                .map_err(|e| StsError::AuditUnavailable(e.to_string())),
            AuditEmitMode::Sync => {
                let receipt = self
                    .audit
                    .emit_with_receipt(event)
                    .map_err(|e| StsError::AuditUnavailable(e.to_string()))?;
                let mut receipt = Some(receipt);
                // Outside a request (start-up, sweeps) there is no answer to hold back.
                let _outside_a_request = RECEIPTS.try_with(|r| {
                    if let Some(receipt) = receipt.take() {
                        r.borrow_mut().push(receipt);
                    }
                });
                Ok(())
            }
        }
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
