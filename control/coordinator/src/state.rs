//! The state every request shares.

use std::sync::{Arc, atomic::AtomicU32};

use sqlx::PgPool;

use crate::{config::CoordinatorConfig, keys::ZoneKeys, metrics::Metrics};

/// Shared state of the Coordinator.
pub struct Coordinator {
    /// Pool of the `caracal_coordinator` role.
    pub pool: PgPool,
    /// Configuration.
    pub config: CoordinatorConfig,
    /// The zones' STS key sets.
    pub keys: ZoneKeys,
    /// Requests per client in the current minute (entries live one minute).
    pub rates: moka::future::Cache<String, Arc<AtomicU32>>,
    /// Counters.
    pub metrics: Metrics,
    /// Redis (readiness).
    pub redis: redis::Client,
    /// Keeps the presence heartbeat (`caracal:instances:coordinator`) running.
    pub presence: control_events::presence::StatusReporter,
    /// The outbox dispatcher of producer `coordinator`: wake it after a commit that enqueued
    /// rows.
    pub outbox: control_events::outbox::OutboxHandle,
}
