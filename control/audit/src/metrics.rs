//! The audit service's counters and gauges, rendered in the Prometheus text format by
//! `server`. Dead-letter reasons are counted by their class (the part before `:`), so the
//! label set stays bounded.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
};

/// Counters shared by the ingest loops, the stream upkeep and the leader jobs.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Rows inserted.
    pub ingested: AtomicU64,
    /// Benign duplicates acknowledged.
    pub duplicates: AtomicU64,
    /// Batches read from the stream.
    pub batches: AtomicU64,
    /// Transient database failures (each retried).
    pub transient_failures: AtomicU64,
    /// Entries claimed from idle consumers.
    pub claimed: AtomicU64,
    /// Entries reported deleted by `XAUTOCLAIM` (`missing_entry`).
    pub missing_entries: AtomicU64,
    /// Unix ms of the last successful read (0 before the first).
    pub last_read_ms: AtomicI64,
    /// Rows checked by the tamper sweep.
    pub tamper_checked: AtomicU64,
    /// `content_mismatch` findings.
    pub tamper_mismatch: AtomicU64,
    /// `chain_break` findings.
    pub tamper_chain_breaks: AtomicU64,
    /// `sequence_gap` findings.
    pub tamper_gaps: AtomicU64,
    /// `hmac_mismatch`, `unknown_key_id` and `ingest_signature_mismatch` findings.
    pub tamper_hmac_failures: AtomicU64,
    /// Other findings (`duplicate_event_id`).
    pub tamper_other: AtomicU64,
    /// Partitions created by the retention leader.
    pub partitions_created: AtomicU64,
    /// Partitions dropped by the retention leader.
    pub partitions_dropped: AtomicU64,
    /// Hours exported.
    pub hours_exported: AtomicU64,
    /// Rows exported.
    pub rows_exported: AtomicU64,
    dead_letters: Mutex<BTreeMap<String, u64>>,
    transient_causes: Mutex<BTreeMap<String, u64>>,
    last_cause: Mutex<Option<String>>,
}

impl Metrics {
    /// Counts one dead letter under its reason's class.
    pub fn dead_lettered(&self, reason: &str) {
        let class = reason.split(':').next().unwrap_or(reason).to_owned();
        if let Ok(mut map) = self.dead_letters.lock() {
            *map.entry(class).or_default() += 1;
        }
    }

    /// Counts a committed zone batch.
    pub fn committed(&self, inserted: u64, benign: u64) {
        self.ingested.fetch_add(inserted, Ordering::Relaxed);
        self.duplicates.fetch_add(benign, Ordering::Relaxed);
    }

    /// Counts a transient failure by its cause (a SQLSTATE or `connection`).
    pub fn transient_failure(&self, cause: &str) {
        self.transient_failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut map) = self.transient_causes.lock() {
            *map.entry(cause.to_owned()).or_default() += 1;
        }
        if let Ok(mut last) = self.last_cause.lock() {
            *last = Some(cause.to_owned());
        }
    }

    /// The cause of the latest transient failure (`unknown` before any).
    #[must_use]
    pub fn last_transient_cause(&self) -> String {
        self.last_cause
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .unwrap_or_else(|| "unknown".to_owned())
    }

    /// Dead letters by reason class.
    #[must_use]
    pub fn dead_letters(&self) -> BTreeMap<String, u64> {
        self.dead_letters
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// The counters as Prometheus text lines.
    #[must_use]
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let counters: [(&str, &AtomicU64); 16] = [
            ("caracal_audit_ingested_total", &self.ingested),
            ("caracal_audit_duplicates_total", &self.duplicates),
            ("caracal_audit_batches_total", &self.batches),
            (
                "caracal_audit_transient_failures_total",
                &self.transient_failures,
            ),
            ("caracal_audit_claimed_total", &self.claimed),
            ("caracal_audit_missing_entries_total", &self.missing_entries),
            ("caracal_audit_tamper_checked_total", &self.tamper_checked),
            ("caracal_audit_tamper_mismatch_total", &self.tamper_mismatch),
            (
                "caracal_audit_tamper_chain_breaks_total",
                &self.tamper_chain_breaks,
            ),
            ("caracal_audit_tamper_gaps_total", &self.tamper_gaps),
            (
                "caracal_audit_tamper_hmac_failures_total",
                &self.tamper_hmac_failures,
            ),
            ("caracal_audit_tamper_other_total", &self.tamper_other),
            (
                "caracal_audit_partitions_created_total",
                &self.partitions_created,
            ),
            (
                "caracal_audit_partitions_dropped_total",
                &self.partitions_dropped,
            ),
            ("caracal_audit_export_hours_total", &self.hours_exported),
            ("caracal_audit_export_rows_total", &self.rows_exported),
        ];
        for (name, value) in counters {
            let _ = writeln!(
                out,
                "# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# TYPE caracal_audit_dead_lettered_total counter");
        for (class, count) in self.dead_letters() {
            let _ = writeln!(
                out,
                "caracal_audit_dead_lettered_total{{reason=\"{class}\"}} {count}"
            );
        }
        let causes = self
            .transient_causes
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "# TYPE caracal_audit_transient_failures_by_cause_total counter"
        );
        for (cause, count) in causes {
            let _ = writeln!(
                out,
                "caracal_audit_transient_failures_by_cause_total{{cause=\"{cause}\"}} {count}"
            );
        }
        out
    }
}
