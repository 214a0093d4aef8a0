//! The state every request shares.

use std::{net::IpAddr, sync::Arc, sync::atomic::AtomicU32};

use control_crypto::Argon2Params;
use sqlx::PgPool;

use crate::{config::ApiConfig, metrics::Metrics};

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
}
