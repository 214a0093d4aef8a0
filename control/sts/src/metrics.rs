//! Counters for `/metrics` (Prometheus text) and `/metrics.json`, with the outbox
//! dispatcher's counters and gauges (storage §7.3 step 6) and the audit emitter's (§9).

use std::sync::atomic::{AtomicU64, Ordering};

use control_events::{audit::AuditHealth, outbox::OutboxSnapshot};

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

    fn values(
        &self,
        outbox: &OutboxSnapshot,
        audit: &AuditHealth,
    ) -> Vec<(&'static str, &'static str, Kind, u64)> {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let flag = |on: bool| u64::from(on);
        vec![
            (
                "caracal_sts_requests_total",
                "HTTP requests received",
                Kind::Counter,
                load(&self.requests),
            ),
            (
                "caracal_sts_tokens_issued_total",
                "mandates issued",
                Kind::Counter,
                load(&self.tokens_issued),
            ),
            (
                "caracal_sts_denials_total",
                "exchanges answered with a catalog denial",
                Kind::Counter,
                load(&self.denials),
            ),
            (
                "caracal_sts_errors_total",
                "requests that failed with an internal cause",
                Kind::Counter,
                load(&self.errors),
            ),
            (
                "caracal_sts_outbox_pending",
                "event_outbox rows of producer sts waiting to be published",
                Kind::Gauge,
                outbox.pending,
            ),
            (
                "caracal_sts_outbox_dead",
                "event_outbox rows of producer sts given up after permanent failures",
                Kind::Gauge,
                outbox.dead_total,
            ),
            (
                "caracal_sts_outbox_oldest_pending_age_seconds",
                "age of the oldest pending event_outbox row of producer sts",
                Kind::Gauge,
                outbox.oldest_pending_age_secs,
            ),
            (
                "caracal_sts_outbox_published_total",
                "outbox rows this process published",
                Kind::Counter,
                outbox.published,
            ),
            (
                "caracal_sts_outbox_retries_total",
                "outbox publications that failed and were scheduled again",
                Kind::Counter,
                outbox.retries,
            ),
            (
                "caracal_sts_outbox_dead_total",
                "outbox rows this process marked dead",
                Kind::Counter,
                outbox.dead,
            ),
            (
                "caracal_sts_outbox_publish_latency_ms",
                "enqueue-to-publish time of the slowest row of the latest published batch",
                Kind::Gauge,
                outbox.last_publish_latency_ms,
            ),
            (
                "caracal_sts_audit_redis_ok",
                "1 while the audit writer's last Redis operation succeeded",
                Kind::Gauge,
                flag(audit.redis_ok),
            ),
            (
                "caracal_sts_audit_replay_writable",
                "1 while the replay directory passed its last probe and write",
                Kind::Gauge,
                flag(audit.replay_writable),
            ),
            (
                "caracal_sts_audit_replay_full",
                "1 while the replay directory bound or the free-space reserve is reached",
                Kind::Gauge,
                flag(audit.replay_full),
            ),
            (
                "caracal_sts_audit_evidence_lost",
                "1 when an audit event was refused or lost in the last 5 minutes",
                Kind::Gauge,
                flag(audit.evidence_lost),
            ),
            (
                "caracal_sts_audit_buffered",
                "audit queue slots in use",
                Kind::Gauge,
                u64::try_from(audit.buffered).unwrap_or(u64::MAX),
            ),
            (
                "caracal_sts_audit_replay_dir_bytes",
                "bytes of replay segments of this instance",
                Kind::Gauge,
                audit.replay_dir_bytes,
            ),
            (
                "caracal_sts_audit_xadded_total",
                "audit events acknowledged by Redis from the queue",
                Kind::Counter,
                audit.xadded_total,
            ),
            (
                "caracal_sts_audit_spilled_total",
                "audit events written to fsynced replay segments",
                Kind::Counter,
                audit.spilled_total,
            ),
            (
                "caracal_sts_audit_replayed_total",
                "audit events replayed from segments to the stream",
                Kind::Counter,
                audit.replayed_total,
            ),
            (
                "caracal_sts_audit_quarantined_total",
                "unparseable replay lines moved to quarantine",
                Kind::Counter,
                audit.quarantined_total,
            ),
            (
                "caracal_sts_audit_dropped_total",
                "accepted audit events that could not be persisted",
                Kind::Counter,
                audit.dropped_total,
            ),
            (
                "caracal_sts_audit_refused_total",
                "requests refused because no audit slot could be reserved",
                Kind::Counter,
                audit.refused_total,
            ),
        ]
    }

    /// The Prometheus text exposition.
    pub(crate) fn prometheus(&self, outbox: &OutboxSnapshot, audit: &AuditHealth) -> String {
        let mut out = String::new();
        for (name, help, kind, value) in self.values(outbox, audit) {
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        out
    }

    /// The same values as JSON.
    pub(crate) fn json(&self, outbox: &OutboxSnapshot, audit: &AuditHealth) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = self
            .values(outbox, audit)
            .iter()
            .map(|(name, _, _, value)| ((*name).to_owned(), (*value).into()))
            .collect();
        serde_json::Value::Object(map)
    }
}

/// Prometheus metric type.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}
