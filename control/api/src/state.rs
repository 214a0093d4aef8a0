//! The state every request shares.

use std::{net::IpAddr, sync::Arc, sync::atomic::AtomicU32};

use control_crypto::Argon2Params;
use sqlx::PgPool;

use tokio::sync::Semaphore;

use crate::{components::Components, config::ApiConfig, metrics::Metrics};

/// Shared state of the admin API.
pub struct Api {
    /// Pool of the `caracal_api` role.
    pub pool: PgPool,
    /// Configuration.
    pub config: ApiConfig,
    /// Argon2id parameters for new secrets and tokens.
    pub argon2: Argon2Params,
    /// Verified (token row, PHC, token) triples.
    pub verified_tokens: moka::future::Cache<[u8; 32], ()>,
    /// Failed authentications per address in the current window.
    pub auth_failures: moka::future::Cache<IpAddr, Arc<AtomicU32>>,
    /// Counters.
    pub metrics: Metrics,
    /// Redis (readiness, propagation status).
    pub redis: redis::Client,
    /// The outbox dispatcher of producer `api`: wake it after a commit that enqueued rows.
    pub outbox: control_events::outbox::OutboxHandle,
    /// The plugin host: component checks at upload, `configure` at binding time.
    pub components: Components,
    /// Slots of raw uploads read and handled at once ([`MAX_UPLOADS`]).
    pub uploads: Semaphore,
    /// The audit service, which answers the audit reads.
    pub audit_service: crate::audit_service::AuditService,
}

/// Raw uploads (plugin components, up to 32 MiB each) the API reads and handles at once.
pub const MAX_UPLOADS: usize = 4;
