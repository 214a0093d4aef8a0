//! State shared by the emitter handles, the writer task and the replayer
//! task: health flags, counters and the segment writer.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::config::AuditEmitterConfig;
use super::event::SignedAuditEvent;
use super::segment::{SegmentLimits, SegmentWriter, SpillError};

/// `/ready` reports `audit_evidence_lost` this long after the last loss.
pub(crate) const EVIDENCE_LOST_WINDOW: Duration = Duration::from_secs(300);

/// A readiness and metrics snapshot of the emitter
/// (`storage-and-events.md` §9.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditHealth {
    /// The last Redis operation of the writer succeeded (circuit closed).
    pub redis_ok: bool,
    /// The stream is below `AUDIT_STREAM_SPILL_LEN` (as last read).
    pub stream_below_spill_len: bool,
    /// The replay directory passed its last probe and its last write.
    pub replay_writable: bool,
    /// `AUDIT_REPLAY_MAX_BYTES` is reached.
    pub replay_full: bool,
    /// An event was refused or lost in the last 5 minutes.
    pub evidence_lost: bool,
    /// Events written to replay segments (fsynced).
    pub spilled_total: u64,
    /// Events replayed from segments to the stream.
    pub replayed_total: u64,
    /// Unparseable segment lines copied to `quarantine/`.
    pub quarantined_total: u64,
    /// Accepted events that could not be persisted (lost).
    pub dropped_total: u64,
    /// Reservations refused with [`AuditUnavailable`](super::AuditUnavailable).
    pub refused_total: u64,
    /// Events acknowledged by Redis from the in-memory queue.
    pub xadded_total: u64,
    /// Pipelined `XADD` batches acknowledged by Redis.
    pub xadd_batches_total: u64,
    /// Bytes of segments in this instance's replay directory.
    pub replay_dir_bytes: u64,
    /// Queue slots in use (queued or reserved events).
    pub buffered: usize,
}

impl AuditHealth {
    /// Whether a new event can be accepted: Redis (below the spill length)
    /// or the replay volume can take it.
    #[must_use]
    pub fn can_accept(&self) -> bool {
        (self.redis_ok && self.stream_below_spill_len)
            || (self.replay_writable && !self.replay_full)
    }

    /// The emitter's metric values under `prefix` (e.g. `caracal_gateway_audit`): name,
    /// help, whether it is a counter (else a gauge), value. Every role exports the same set.
    #[must_use]
    pub fn metric_values(&self, prefix: &str) -> Vec<(String, &'static str, bool, u64)> {
        let flag = u64::from;
        [
            (
                "redis_ok",
                "1 while the audit writer's last Redis operation succeeded",
                false,
                flag(self.redis_ok),
            ),
            (
                "replay_writable",
                "1 while the replay directory passed its last probe and write",
                false,
                flag(self.replay_writable),
            ),
            (
                "replay_full",
                "1 while the replay directory bound or the free-space reserve is reached",
                false,
                flag(self.replay_full),
            ),
            (
                "evidence_lost",
                "1 when an audit event was refused or lost in the last 5 minutes",
                false,
                flag(self.evidence_lost),
            ),
            (
                "queue_depth",
                "audit queue slots in use",
                false,
                u64::try_from(self.buffered).unwrap_or(u64::MAX),
            ),
            (
                "replay_dir_bytes",
                "bytes of replay segments of this instance",
                false,
                self.replay_dir_bytes,
            ),
            (
                "xadded_total",
                "audit events acknowledged by Redis from the queue",
                true,
                self.xadded_total,
            ),
            (
                "spilled_total",
                "audit events written to fsynced replay segments",
                true,
                self.spilled_total,
            ),
            (
                "replayed_total",
                "audit events replayed from segments to the stream",
                true,
                self.replayed_total,
            ),
            (
                "quarantined_total",
                "unparseable replay lines moved to quarantine",
                true,
                self.quarantined_total,
            ),
            (
                "dropped_total",
                "accepted audit events that could not be persisted",
                true,
                self.dropped_total,
            ),
            (
                "refused_total",
                "requests refused because no audit slot could be reserved",
                true,
                self.refused_total,
            ),
        ]
        .into_iter()
        .map(|(name, help, counter, value)| (format!("{prefix}_{name}"), help, counter, value))
        .collect()
    }

    /// The `/ready` failure reason, if any: `audit_evidence_lost` after a
    /// refusal or loss in the last 5 minutes, `audit_replay_unavailable` when
    /// the replay directory is not writable or is full while Redis cannot
    /// take events.
    #[must_use]
    pub fn ready_failure(&self) -> Option<&'static str> {
        if self.evidence_lost {
            Some("audit_evidence_lost")
        } else if !self.replay_writable
            || (self.replay_full && !(self.redis_ok && self.stream_below_spill_len))
        {
            Some("audit_replay_unavailable")
        } else {
            None
        }
    }
}

pub(crate) struct Shared {
    pub(crate) config: AuditEmitterConfig,
    pub(crate) own_dir: PathBuf,
    redis_ok: AtomicBool,
    stream_has_room: AtomicBool,
    replay_writable: AtomicBool,
    replay_full: AtomicBool,
    writer_stopped: AtomicBool,
    spilled_total: AtomicU64,
    replayed_total: AtomicU64,
    quarantined_total: AtomicU64,
    dropped_total: AtomicU64,
    refused_total: AtomicU64,
    xadded_total: AtomicU64,
    xadd_batches_total: AtomicU64,
    replay_dir_bytes: AtomicU64,
    /// Milliseconds after `epoch` of the last loss, plus one; 0 = never.
    last_loss: AtomicU64,
    epoch: Instant,
    spill: Mutex<SegmentWriter>,
}

impl Shared {
    pub(crate) fn new(config: AuditEmitterConfig) -> Self {
        let own_dir = config.instance_replay_dir();
        let limits = SegmentLimits {
            max_bytes: config.segment_max_bytes,
            max_events: config.segment_max_events,
            max_age: config.segment_max_age,
            dir_max_bytes: config.replay_max_bytes,
            min_free_bytes: config.replay_min_free_bytes,
        };
        let writer = SegmentWriter::new(own_dir.clone(), &config.service, &config.instance, limits);
        Self {
            config,
            own_dir,
            redis_ok: AtomicBool::new(false),
            stream_has_room: AtomicBool::new(true),
            replay_writable: AtomicBool::new(false),
            replay_full: AtomicBool::new(false),
            writer_stopped: AtomicBool::new(false),
            spilled_total: AtomicU64::new(0),
            replayed_total: AtomicU64::new(0),
            quarantined_total: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
            refused_total: AtomicU64::new(0),
            xadded_total: AtomicU64::new(0),
            xadd_batches_total: AtomicU64::new(0),
            replay_dir_bytes: AtomicU64::new(0),
            last_loss: AtomicU64::new(0),
            epoch: Instant::now(),
            spill: Mutex::new(writer),
        }
    }

    // ---- flags ----------------------------------------------------------

    pub(crate) fn stream_can_take(&self) -> bool {
        self.redis_ok.load(Ordering::Acquire) && self.stream_has_room.load(Ordering::Acquire)
    }

    pub(crate) fn replay_can_take(&self) -> bool {
        self.replay_writable.load(Ordering::Acquire) && !self.replay_full.load(Ordering::Acquire)
    }

    pub(crate) fn set_redis_ok(&self, ok: bool) {
        self.redis_ok.store(ok, Ordering::Release);
    }

    /// Records the stream length check; returns whether the stream went
    /// from full to below the threshold.
    pub(crate) fn set_stream_has_room(&self, room: bool) -> bool {
        let before = self.stream_has_room.swap(room, Ordering::AcqRel);
        room && !before
    }

    pub(crate) fn writer_stopped(&self) -> bool {
        self.writer_stopped.load(Ordering::Acquire)
    }

    pub(crate) fn mark_writer_stopped(&self) {
        self.writer_stopped.store(true, Ordering::Release);
    }

    // ---- counters -------------------------------------------------------

    pub(crate) fn count_xadded(&self, events: usize) {
        self.xadded_total
            .fetch_add(events as u64, Ordering::Relaxed);
        self.xadd_batches_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_replayed(&self, events: usize) {
        self.replayed_total
            .fetch_add(events as u64, Ordering::Relaxed);
    }

    pub(crate) fn count_quarantined(&self, lines: u64) {
        self.quarantined_total.fetch_add(lines, Ordering::Relaxed);
    }

    /// Accepted events that could not be persisted.
    pub(crate) fn record_loss(&self, events: usize) {
        self.dropped_total
            .fetch_add(events as u64, Ordering::Relaxed);
        self.touch_loss();
    }

    /// A reservation refused because nothing can take events.
    pub(crate) fn record_refusal(&self) {
        self.refused_total.fetch_add(1, Ordering::Relaxed);
        self.touch_loss();
    }

    fn touch_loss(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_loss
            .store(ms.saturating_add(1), Ordering::Release);
    }

    fn evidence_lost(&self) -> bool {
        let last = self.last_loss.load(Ordering::Acquire);
        if last == 0 {
            return false;
        }
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let window = u64::try_from(EVIDENCE_LOST_WINDOW.as_millis()).unwrap_or(u64::MAX);
        now.saturating_add(1).saturating_sub(last) < window
    }

    pub(crate) fn health(&self, buffered: usize) -> AuditHealth {
        AuditHealth {
            redis_ok: self.redis_ok.load(Ordering::Acquire),
            stream_below_spill_len: self.stream_has_room.load(Ordering::Acquire),
            replay_writable: self.replay_writable.load(Ordering::Acquire),
            replay_full: self.replay_full.load(Ordering::Acquire),
            evidence_lost: self.evidence_lost(),
            spilled_total: self.spilled_total.load(Ordering::Relaxed),
            replayed_total: self.replayed_total.load(Ordering::Relaxed),
            quarantined_total: self.quarantined_total.load(Ordering::Relaxed),
            dropped_total: self.dropped_total.load(Ordering::Relaxed),
            refused_total: self.refused_total.load(Ordering::Relaxed),
            xadded_total: self.xadded_total.load(Ordering::Relaxed),
            xadd_batches_total: self.xadd_batches_total.load(Ordering::Relaxed),
            replay_dir_bytes: self.replay_dir_bytes.load(Ordering::Relaxed),
            buffered,
        }
    }

    // ---- replay volume (blocking) ---------------------------------------

    fn segments(&self) -> MutexGuard<'_, SegmentWriter> {
        // A panic while holding the lock cannot leave a half-written line
        // behind (append cuts torn batches), so a poisoned lock is usable.
        self.spill.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends and fdatasyncs `events` to the current segment. Blocking.
    pub(crate) fn spill_blocking(&self, events: &[SignedAuditEvent]) -> Result<(), SpillError> {
        let mut segments = self.segments();
        let result = segments.append(events);
        self.replay_dir_bytes
            .store(segments.dir_bytes(), Ordering::Relaxed);
        match &result {
            Ok(()) => {
                self.replay_writable.store(true, Ordering::Release);
                self.replay_full.store(false, Ordering::Release);
                self.spilled_total
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
            }
            Err(SpillError::Full { .. } | SpillError::LowSpace { .. }) => {
                self.replay_full.store(true, Ordering::Release);
            }
            Err(SpillError::Io(_)) => self.replay_writable.store(false, Ordering::Release),
        }
        result
    }

    /// Seals the current segment, if any. Blocking.
    pub(crate) fn seal_blocking(&self) {
        let mut segments = self.segments();
        if !segments.has_open_segment() {
            return;
        }
        if let Err(err) = segments.seal() {
            self.replay_writable.store(false, Ordering::Release);
            tracing::error!(error = %err, "sealing the audit replay segment failed");
        }
    }

    /// Periodic volume duties: seal an old segment, recount the directory,
    /// and (when `probe`) run the writability probe. Blocking.
    pub(crate) fn housekeep_volume_blocking(&self, now: Instant, probe: bool) {
        let mut segments = self.segments();
        if let Err(err) = segments.seal_if_old(now) {
            self.replay_writable.store(false, Ordering::Release);
            tracing::error!(error = %err, "sealing the audit replay segment failed");
        }
        match segments.refresh_dir_bytes() {
            Ok(bytes) => {
                self.replay_dir_bytes.store(bytes, Ordering::Relaxed);
                self.replay_full
                    .store(segments.is_full(), Ordering::Release);
            }
            Err(err) => tracing::warn!(error = %err, "counting audit replay bytes failed"),
        }
        if probe {
            let result = segments.probe();
            if let Err(err) = &result {
                tracing::warn!(
                    dir = %self.own_dir.display(),
                    error = %err,
                    "audit replay directory is not writable"
                );
            }
            self.replay_writable
                .store(result.is_ok(), Ordering::Release);
        }
    }
}
