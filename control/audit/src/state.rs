//! What every part of the running service shares.

use std::sync::Arc;

use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::{config::AuditConfig, metrics::Metrics, stream::StreamStats};

/// The running service's shared state.
pub struct AuditState {
    /// Configuration.
    pub config: AuditConfig,
    /// The audit role's pool.
    pub pool: PgPool,
    /// Redis for the internal routes and readiness.
    pub redis: ConnectionManager,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Stream gauges.
    pub stream: Arc<StreamStats>,
}
