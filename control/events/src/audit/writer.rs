//! The writer task: batches the queue into pipelined `XADD`s, runs the
//! Redis circuit and the stream length check, and spills to the current
//! segment whenever Redis or the stream cannot take a batch.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior, interval, sleep_until};

use super::emitter::{AuditUnavailable, Queued};
use super::event::SignedAuditEvent;
use super::link::RedisLink;
use super::segment::SpillError;
use super::shared::Shared;

/// How often periodic duties run (circuit probe, `XLEN`, segment age,
/// directory probe, retry of an undeliverable batch).
const HOUSEKEEPING_PERIOD: std::time::Duration = std::time::Duration::from_millis(250);

pub(crate) struct Writer {
    shared: Arc<Shared>,
    link: RedisLink,
    rx: mpsc::Receiver<Queued>,
    stop: watch::Receiver<bool>,
    consecutive_failures: u32,
    circuit_open: bool,
    /// Redis failed since the last success: seal on the next success.
    recovering: bool,
    next_probe: Instant,
    next_xlen: Instant,
    next_dir_probe: Instant,
    /// A batch neither Redis nor the volume took; retried, never dropped
    /// while the writer runs. The queue is not read meanwhile, so memory
    /// stays bounded and admission sheds once the queue fills.
    pending: Vec<Queued>,
    /// `pending` holds a batch that failed (for log throttling).
    holding: bool,
}

enum Wake {
    Stop,
    Closed,
    Events,
    Housekeeping,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        link: RedisLink,
        rx: mpsc::Receiver<Queued>,
        stop: watch::Receiver<bool>,
        redis_ok: bool,
    ) -> Self {
        let now = Instant::now();
        let threshold = shared.config.circuit_failures.max(1);
        let probe = shared.config.circuit_probe_interval;
        let dir_probe = shared.config.dir_probe_interval;
        Self {
            shared,
            link,
            rx,
            stop,
            consecutive_failures: if redis_ok { 0 } else { threshold },
            circuit_open: !redis_ok,
            recovering: !redis_ok,
            next_probe: now + probe,
            next_xlen: now,
            next_dir_probe: now + dir_probe,
            pending: Vec::new(),
            holding: false,
        }
    }

    pub(crate) async fn run(mut self) {
        let batch_max = self.shared.config.batch_max.max(1);
        let flush = self.shared.config.flush_interval;
        let mut housekeeping = interval(HOUSEKEEPING_PERIOD);
        housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut batch: Vec<Queued> = Vec::with_capacity(batch_max);
        loop {
            let reading = self.pending.is_empty();
            let wake = tokio::select! {
                biased;
                () = stopped(&mut self.stop) => Wake::Stop,
                n = self.rx.recv_many(&mut batch, batch_max), if reading => {
                    if n == 0 { Wake::Closed } else { Wake::Events }
                }
                _ = housekeeping.tick() => Wake::Housekeeping,
            };
            match wake {
                Wake::Stop | Wake::Closed => break,
                Wake::Housekeeping => {
                    self.housekeep().await;
                    if !self.pending.is_empty() {
                        let retry = std::mem::take(&mut self.pending);
                        self.deliver(retry).await;
                    }
                }
                Wake::Events => {
                    // Collect for up to one flush interval or a full batch.
                    let deadline = Instant::now() + flush;
                    while batch.len() < batch_max {
                        let more = batch_max - batch.len();
                        tokio::select! {
                            n = self.rx.recv_many(&mut batch, more) => if n == 0 { break },
                            () = sleep_until(deadline) => break,
                        }
                    }
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_max));
                    self.deliver(full).await;
                }
            }
        }
        self.drain(batch).await;
    }

    /// Graceful shutdown: stop new reservations, take what is queued (and
    /// what reserved slots still send, within the grace period), deliver it
    /// to Redis or a segment, and seal the segment.
    async fn drain(mut self, mut batch: Vec<Queued>) {
        let batch_max = self.shared.config.batch_max.max(1);
        let grace = Instant::now() + self.shared.config.shutdown_grace;
        self.rx.close();
        let mut leftovers = std::mem::take(&mut self.pending);
        leftovers.append(&mut batch);
        if !leftovers.is_empty() {
            self.deliver(leftovers).await;
        }
        loop {
            let mut batch = Vec::with_capacity(batch_max);
            let received = tokio::select! {
                n = self.rx.recv_many(&mut batch, batch_max) => n,
                () = sleep_until(grace) => 0,
            };
            if !batch.is_empty() {
                self.deliver(batch).await;
            }
            if received == 0 {
                break;
            }
        }
        // Late slots spill on their own thread from now on.
        self.shared.mark_writer_stopped();
        let mut late = Vec::new();
        while let Ok(queued) = self.rx.try_recv() {
            late.push(queued);
        }
        if !late.is_empty() {
            self.deliver(late).await;
        }
        let lost = std::mem::take(&mut self.pending);
        if !lost.is_empty() {
            self.shared.record_loss(lost.len());
            for mut queued in lost {
                tracing::error!(
                    event_id = queued.event.id(),
                    "audit event lost at shutdown: neither Redis nor the replay volume took it"
                );
                queued.report(Err(AuditUnavailable));
            }
        }
        self.seal().await;
        tracing::info!("audit writer drained and stopped");
    }

    /// Sends `batch` to Redis when the circuit and the stream allow it,
    /// otherwise (or on failure) to the current segment. A batch neither
    /// takes becomes `pending`.
    async fn deliver(&mut self, mut batch: Vec<Queued>) {
        if batch.is_empty() {
            return;
        }
        if !self.circuit_open && self.shared.stream_can_take() {
            let stream = self.shared.config.stream.clone();
            let result = self
                .link
                .xadd_all(&stream, batch.iter().map(|q| &q.event))
                .await;
            match result {
                Ok(()) => {
                    self.shared.count_xadded(batch.len());
                    self.holding = false;
                    for queued in &mut batch {
                        queued.report(Ok(()));
                    }
                    self.on_redis_success().await;
                    return;
                }
                Err(err) => {
                    if !self.holding {
                        tracing::warn!(
                            error = %err,
                            events = batch.len(),
                            "audit XADD failed; spilling the batch"
                        );
                    }
                    self.on_redis_failure();
                }
            }
        }
        let shared = Arc::clone(&self.shared);
        let count = batch.len();
        let spilled = tokio::task::spawn_blocking(move || {
            let events: Vec<SignedAuditEvent> = batch.iter().map(|q| q.event.clone()).collect();
            let result = shared.spill_blocking(&events);
            (batch, result)
        })
        .await;
        match spilled {
            Ok((mut batch, Ok(()))) => {
                self.holding = false;
                for queued in &mut batch {
                    queued.report(Ok(()));
                }
            }
            Ok((mut batch, Err(err))) => {
                // Log once per held batch, not on every retry.
                if !self.holding {
                    match &err {
                        SpillError::Full { .. } | SpillError::LowSpace { .. } => tracing::error!(
                            error = %err,
                            "audit replay volume full and Redis unavailable; holding the batch"
                        ),
                        SpillError::Io(_) => tracing::error!(
                            error = %err,
                            "audit spill failed and Redis unavailable; holding the batch"
                        ),
                    }
                }
                self.holding = true;
                for queued in &mut batch {
                    queued.report(Err(AuditUnavailable));
                }
                self.pending = batch;
            }
            Err(join) => {
                // The batch was inside the failed task: it is gone.
                tracing::error!(error = %join, events = count, "audit spill task failed; batch lost");
                self.shared.record_loss(count);
            }
        }
    }

    async fn on_redis_success(&mut self) {
        self.consecutive_failures = 0;
        self.circuit_open = false;
        self.shared.set_redis_ok(true);
        if self.recovering {
            self.recovering = false;
            tracing::info!("audit emitter: Redis healthy again");
            // Seal at once so the replayer can take what was spilled.
            self.seal().await;
        }
    }

    fn on_redis_failure(&mut self) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.recovering = true;
        self.shared.set_redis_ok(false);
        if self.consecutive_failures >= self.shared.config.circuit_failures.max(1) {
            if !self.circuit_open {
                tracing::warn!("audit emitter: Redis circuit open; spilling to the replay volume");
            }
            self.circuit_open = true;
            self.next_probe = Instant::now() + self.shared.config.circuit_probe_interval;
        }
    }

    async fn housekeep(&mut self) {
        let now = Instant::now();
        if self.circuit_open && now >= self.next_probe {
            match self.link.ping().await {
                Ok(()) => {
                    self.next_xlen = now;
                    self.on_redis_success().await;
                }
                Err(err) => {
                    tracing::debug!(error = %err, "audit emitter: Redis probe failed");
                    self.next_probe = now + self.shared.config.circuit_probe_interval;
                }
            }
        }
        if !self.circuit_open && now >= self.next_xlen {
            self.next_xlen = now + self.shared.config.stream_len_check_interval;
            let stream = self.shared.config.stream.clone();
            match self.link.xlen(&stream).await {
                Ok(len) => {
                    let room = len < self.shared.config.stream_spill_len;
                    if !room {
                        tracing::warn!(len, "audit stream at its spill length; spilling");
                    }
                    if self.shared.set_stream_has_room(room) {
                        self.seal().await;
                    }
                    self.on_redis_success().await;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "audit emitter: XLEN failed");
                    self.on_redis_failure();
                }
            }
        }
        let probe = now >= self.next_dir_probe;
        if probe {
            self.next_dir_probe = now + self.shared.config.dir_probe_interval;
        }
        let shared = Arc::clone(&self.shared);
        let done =
            tokio::task::spawn_blocking(move || shared.housekeep_volume_blocking(now, probe)).await;
        if let Err(err) = done {
            tracing::error!(error = %err, "audit replay housekeeping task failed");
        }
    }

    async fn seal(&self) {
        let shared = Arc::clone(&self.shared);
        if let Err(err) = tokio::task::spawn_blocking(move || shared.seal_blocking()).await {
            tracing::error!(error = %err, "audit replay seal task failed");
        }
    }
}

/// Resolves once the stop flag is set (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _stopped = stop.wait_for(|stop| *stop).await;
}
