//! Counters of the Coordinator.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters rendered by `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests received.
    pub requests: AtomicU64,
    /// Refusals (4xx).
    pub refusals: AtomicU64,
    /// Failures (5xx).
    pub errors: AtomicU64,
    /// Sessions started.
    pub sessions_started: AtomicU64,
    /// Sessions ended by a request or a cascade (terminate, revoke, expiry).
    pub sessions_ended: AtomicU64,
    /// Delegation edges created.
    pub edges_created: AtomicU64,
    /// Delegation edges revoked or expired.
    pub edges_ended: AtomicU64,
    /// Sweeper rounds that failed.
    pub sweep_failures: AtomicU64,
}

impl Metrics {
    /// Adds `n`.
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Adds one.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text, with the `coordinator` outbox's figures.
    pub fn render(&self, outbox: &control_events::outbox::OutboxSnapshot) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let lines = [
            ("requests_total", get(&self.requests)),
            ("refusals_total", get(&self.refusals)),
            ("errors_total", get(&self.errors)),
            ("sessions_started_total", get(&self.sessions_started)),
            ("sessions_ended_total", get(&self.sessions_ended)),
            ("edges_created_total", get(&self.edges_created)),
            ("edges_ended_total", get(&self.edges_ended)),
            ("sweep_failures_total", get(&self.sweep_failures)),
        ];
        let mut text: String = lines
            .iter()
            .map(|(name, value)| {
                format!("# TYPE caracal_coordinator_{name} counter\ncaracal_coordinator_{name} {value}\n")
            })
            .collect();
        text.push_str(&control_events::outbox::metric_lines(
            "caracal_coordinator",
            outbox,
        ));
        text
    }
}
