//! The load generators' per-worker tally: latency and service-time histograms, status
//! counts, errors, and a per-second timeline.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// What one load worker saw; workers' tallies are merged at the end. Shared by the load
/// generators (`mint_load`, `gateway_load`).
pub struct Tally {
    /// Latency from the scheduled send (open loop) or the send (closed loop), µs.
    pub latency: Histogram<u64>,
    /// Service time from the actual send, µs.
    pub service: Histogram<u64>,
    /// Answers counted as successes.
    pub ok: u64,
    /// Answers by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that failed on the connection.
    pub io_errors: u64,
    /// Successful statuses with an unexpected body.
    pub bad_bodies: u64,
    /// Connections reopened.
    pub reconnects: u64,
    /// The first error seen.
    pub sample_error: Option<String>,
    /// When the last answer arrived.
    pub last_done: Option<Instant>,
    /// Per second since the start: (answers, worst latency µs).
    pub seconds: Vec<(u64, u64)>,
}

impl Tally {
    /// Empty histograms (1 µs to 60 s, 3 significant digits) and counters.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            service: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            ok: 0,
            statuses: BTreeMap::new(),
            io_errors: 0,
            bad_bodies: 0,
            reconnects: 0,
            sample_error: None,
            last_done: None,
            seconds: Vec::new(),
        })
    }

    /// Adds another worker's tally.
    pub fn merge(&mut self, other: Self) -> anyhow::Result<()> {
        self.latency.add(&other.latency)?;
        self.service.add(&other.service)?;
        self.ok += other.ok;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.io_errors += other.io_errors;
        self.bad_bodies += other.bad_bodies;
        self.reconnects += other.reconnects;
        if self.sample_error.is_none() {
            self.sample_error = other.sample_error;
        }
        self.last_done = self.last_done.max(other.last_done);
        if self.seconds.len() < other.seconds.len() {
            self.seconds.resize(other.seconds.len(), (0, 0));
        }
        for (mine, theirs) in self.seconds.iter_mut().zip(other.seconds) {
            mine.0 += theirs.0;
            mine.1 = mine.1.max(theirs.1);
        }
        Ok(())
    }

    /// Counts an answer in its second since `start`.
    pub fn second(&mut self, start: Instant, done: Instant, latency_us: u64) {
        let index = usize::try_from(done.duration_since(start).as_secs()).unwrap_or(usize::MAX);
        if index > 3600 {
            return;
        }
        if self.seconds.len() <= index {
            self.seconds.resize(index + 1, (0, 0));
        }
        if let Some(slot) = self.seconds.get_mut(index) {
            slot.0 += 1;
            slot.1 = slot.1.max(latency_us);
        }
    }

    /// Keeps the first error text (400 characters).
    pub fn error(&mut self, text: String) {
        if self.sample_error.is_none() {
            self.sample_error = Some(text.chars().take(400).collect());
        }
    }
}
