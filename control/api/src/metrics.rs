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

    /// Prometheus text.
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "# TYPE caracal_api_requests_total counter\ncaracal_api_requests_total {}\n\
             # TYPE caracal_api_refusals_total counter\ncaracal_api_refusals_total {}\n\
             # TYPE caracal_api_errors_total counter\ncaracal_api_errors_total {}\n",
            get(&self.requests),
            get(&self.refusals),
            get(&self.errors)
        )
    }
}
