//! What a dispatcher reports: counters of its own work, and the table's pending and dead
//! counts re-read from Postgres every few seconds (§7.3 step 6).

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use tokio::sync::Notify;

/// Shared counters and gauges of one dispatcher, for `/metrics` and `/ready`.
#[derive(Debug, Default)]
pub struct OutboxStats {
    /// Rows this process published (counter).
    pub published: AtomicU64,
    /// Failed publications scheduled again (counter).
    pub retries: AtomicU64,
    /// Rows this process marked `dead` (counter).
    pub dead: AtomicU64,
    /// Pending rows of the producer (gauge, from the last refresh).
    pub pending: AtomicU64,
    /// Dead rows of the producer (gauge, from the last refresh).
    pub dead_total: AtomicU64,
    /// Age of the oldest pending row in seconds, 0 with none (gauge, from the last refresh).
    pub oldest_pending_age_secs: AtomicU64,
    /// Enqueue-to-publish time of the latest published batch's slowest row, in milliseconds.
    pub last_publish_latency_ms: AtomicU64,
    /// Whether the gauges were read at least once.
    pub refreshed: AtomicBool,
}

/// A copy of [`OutboxStats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxSnapshot {
    /// See [`OutboxStats::published`].
    pub published: u64,
    /// See [`OutboxStats::retries`].
    pub retries: u64,
    /// See [`OutboxStats::dead`].
    pub dead: u64,
    /// See [`OutboxStats::pending`].
    pub pending: u64,
    /// See [`OutboxStats::dead_total`].
    pub dead_total: u64,
    /// See [`OutboxStats::oldest_pending_age_secs`].
    pub oldest_pending_age_secs: u64,
    /// See [`OutboxStats::last_publish_latency_ms`].
    pub last_publish_latency_ms: u64,
}

impl OutboxStats {
    /// The current values.
    #[must_use]
    pub fn snapshot(&self) -> OutboxSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        OutboxSnapshot {
            published: load(&self.published),
            retries: load(&self.retries),
            dead: load(&self.dead),
            pending: load(&self.pending),
            dead_total: load(&self.dead_total),
            oldest_pending_age_secs: load(&self.oldest_pending_age_secs),
            last_publish_latency_ms: load(&self.last_publish_latency_ms),
        }
    }

    pub(super) fn record_table(&self, table: &control_store::outbox::OutboxStats) {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        self.pending.store(count(table.pending), Ordering::Relaxed);
        self.dead_total.store(count(table.dead), Ordering::Relaxed);
        let age = table
            .oldest_pending_age_secs
            .filter(|age| age.is_finite() && *age > 0.0)
            // Whole seconds; a float beyond u64 saturates.
            .map_or(0, |age| age as u64);
        self.oldest_pending_age_secs.store(age, Ordering::Relaxed);
        self.refreshed.store(true, Ordering::Relaxed);
    }
}

/// The `/ready` thresholds (`OUTBOX_READY_DEAD_MAX`, `OUTBOX_READY_MAX_AGE_SECS`; 0 = off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadyThresholds {
    /// Dead rows tolerated.
    pub dead_max: u64,
    /// Oldest pending age tolerated, in seconds.
    pub max_age_secs: u64,
}

/// What a producer keeps of its dispatcher: the wake-up, the stats and the readiness rule.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct OutboxHandle {
    pub(super) notify: Arc<Notify>,
    pub(super) stats: Arc<OutboxStats>,
    pub(super) ready: ReadyThresholds,
}

impl OutboxHandle {
    /// Starts a dispatch round now: call it right after the `COMMIT` that enqueued rows
    /// (§7.2). A wake during a round is kept for the next one; the poll is only the fallback.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// The dispatcher's counters and gauges.
    #[must_use]
    pub fn stats(&self) -> &Arc<OutboxStats> {
        &self.stats
    }

    /// `Some("outbox_dead")` or `Some("outbox_stalled")` when a configured threshold is
    /// exceeded (§7.3 step 6), else `None`.
    #[must_use]
    pub fn ready_reason(&self) -> Option<&'static str> {
        let now = self.stats.snapshot();
        if self.ready.dead_max > 0 && now.dead_total > self.ready.dead_max {
            Some("outbox_dead")
        } else if self.ready.max_age_secs > 0
            && now.oldest_pending_age_secs > self.ready.max_age_secs
        {
            Some("outbox_stalled")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_thresholds_and_zero_turns_them_off() {
        let stats = Arc::new(OutboxStats::default());
        stats.record_table(&control_store::outbox::OutboxStats {
            pending: 3,
            dead: 2,
            oldest_pending_age_secs: Some(90.7),
        });
        assert_eq!(stats.snapshot().oldest_pending_age_secs, 90);
        let handle = |dead_max, max_age_secs| OutboxHandle {
            notify: Arc::new(Notify::new()),
            stats: Arc::clone(&stats),
            ready: ReadyThresholds {
                dead_max,
                max_age_secs,
            },
        };
        assert_eq!(handle(0, 0).ready_reason(), None);
        assert_eq!(handle(1, 0).ready_reason(), Some("outbox_dead"));
        assert_eq!(handle(2, 0).ready_reason(), None);
        assert_eq!(handle(0, 60).ready_reason(), Some("outbox_stalled"));
        assert_eq!(handle(0, 90).ready_reason(), None);
    }
}
