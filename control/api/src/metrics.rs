//! Request counters of the admin API.

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
}

impl Metrics {
    /// Adds one.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text, with the `api` outbox's figures.
    pub fn render(&self, outbox: &control_events::outbox::OutboxSnapshot) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let lines = [
            ("caracal_api_requests_total", "counter", get(&self.requests)),
            ("caracal_api_refusals_total", "counter", get(&self.refusals)),
            ("caracal_api_errors_total", "counter", get(&self.errors)),
        ];
        let mut text: String = lines
            .iter()
            .map(|(name, kind, value)| format!("# TYPE {name} {kind}\n{name} {value}\n"))
            .collect();
        text.push_str(&control_events::outbox::metric_lines("caracal_api", outbox));
        text
    }
}
