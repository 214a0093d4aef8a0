//! Counters for `/metrics` (Prometheus text) and `/metrics.json`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Request and outcome counters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) requests: AtomicU64,
    pub(crate) tokens_issued: AtomicU64,
    pub(crate) denials: AtomicU64,
    pub(crate) errors: AtomicU64,
}

impl Metrics {
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn values(&self) -> [(&'static str, &'static str, u64); 4] {
        [
            (
                "caracal_sts_requests_total",
                "HTTP requests received",
                self.requests.load(Ordering::Relaxed),
            ),
            (
                "caracal_sts_tokens_issued_total",
                "mandates issued",
                self.tokens_issued.load(Ordering::Relaxed),
            ),
            (
                "caracal_sts_denials_total",
                "exchanges answered with a catalog denial",
                self.denials.load(Ordering::Relaxed),
            ),
            (
                "caracal_sts_errors_total",
                "requests that failed with an internal cause",
                self.errors.load(Ordering::Relaxed),
            ),
        ]
    }

    /// The Prometheus text exposition.
    pub(crate) fn prometheus(&self) -> String {
        let mut out = String::new();
        for (name, help, value) in self.values() {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            ));
        }
        out
    }

    /// The same counters as JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = self
            .values()
            .iter()
            .map(|(name, _, value)| ((*name).to_owned(), (*value).into()))
            .collect();
        serde_json::Value::Object(map)
    }
}
