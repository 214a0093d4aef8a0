//! The emitter handle, audit slots and the start of the background tasks.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::config::{AuditEmitMode, AuditEmitterConfig};
use super::event::{AuditEvent, SignedAuditEvent};
use super::link::RedisLink;
use super::recovery::recover_open_segments;
use super::replayer::Replayer;
use super::shared::{AuditHealth, Shared};
use super::writer::Writer;

/// Neither Redis nor the replay volume can take audit events (or, for a
/// synchronous emission, the event could not be accepted). The request
/// that must produce the event fails: 503 `sts_unavailable`, "audit
/// evidence unavailable" (settled point 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("audit evidence unavailable: neither Redis nor the replay volume can take events")]
pub struct AuditUnavailable;

/// Acceptance report sent back to a synchronous emission.
pub(crate) type Ack = oneshot::Sender<Result<(), AuditUnavailable>>;

/// One entry of the in-memory queue.
pub(crate) struct Queued {
    pub(crate) event: SignedAuditEvent,
    pub(crate) ack: Option<Ack>,
}

impl Queued {
    /// Reports acceptance (or failure) to a waiting caller, once.
    pub(crate) fn report(&mut self, result: Result<(), AuditUnavailable>) {
        if let Some(ack) = self.ack.take() {
            // The caller may have gone away; nothing to do then.
            let _unheard = ack.send(result);
        }
    }
}

/// Handle to the audit emitter shared by the STS and the gateway. Cheap to
/// clone. Events are signed on the caller's thread and handed to a bounded
/// queue; a writer task sends them to Redis in pipelined batches, spilling
/// to fsynced replay segments when Redis or the stream cannot take them, and
/// a replayer task sends spilled events back once it can.
#[derive(Clone)]
pub struct AuditEmitter {
    tx: mpsc::Sender<Queued>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuditEmitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditEmitter")
            .field("service", &self.shared.config.service)
            .field("instance", &self.shared.config.instance)
            .field("stream", &self.shared.config.stream)
            .finish_non_exhaustive()
    }
}

impl AuditEmitter {
    /// Starts the emitter: recovers leftover `.open` segments, probes the
    /// replay directory and Redis (each bounded by its timeout), then spawns
    /// the writer and the replayer. Returns the handle and a task that
    /// finishes once `shutdown` has resolved (or every handle is dropped) and
    /// the buffer has been drained to Redis or a segment.
    ///
    /// Never fails: an unreachable Redis or an unwritable directory is
    /// reported by [`AuditEmitter::health`] and retried.
    pub async fn spawn<S>(
        config: AuditEmitterConfig,
        redis: redis::Client,
        shutdown: S,
    ) -> (Self, JoinHandle<()>)
    where
        S: Future<Output = ()> + Send + 'static,
    {
        let capacity = config.buffer_capacity.max(1);
        let xadd_timeout = config.xadd_timeout;
        let replay_timeout = config.replay_xadd_timeout;
        let shared = Arc::new(Shared::new(config));

        // Start-up recovery and the first directory probe.
        let volume = Arc::clone(&shared);
        let started = tokio::task::spawn_blocking(move || {
            let root = &volume.config.replay_dir;
            match recover_open_segments(root, &volume.own_dir, volume.config.orphan_segment_age) {
                Ok(outcome) => volume.count_quarantined(outcome.quarantined),
                Err(err) => tracing::warn!(
                    dir = %root.display(),
                    error = %err,
                    "audit replay recovery could not scan the replay directory"
                ),
            }
            volume.housekeep_volume_blocking(tokio::time::Instant::now(), true);
        })
        .await;
        if let Err(err) = started {
            tracing::error!(error = %err, "audit replay start-up task failed");
        }

        // The first Redis probe.
        let mut link = RedisLink::new(redis.clone(), xadd_timeout);
        let redis_ok = match link.ping().await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(error = %err, "audit emitter: Redis unreachable at start-up; spilling");
                false
            }
        };
        shared.set_redis_ok(redis_ok);

        let (tx, rx) = mpsc::channel(capacity);
        let (stop_tx, stop_rx) = watch::channel(false);
        let writer = Writer::new(Arc::clone(&shared), link, rx, stop_rx.clone(), redis_ok);
        let replayer = Replayer::new(
            Arc::clone(&shared),
            RedisLink::new(redis, replay_timeout),
            stop_rx,
        );
        let supervisor = tokio::spawn(async move {
            let mut writer_task = tokio::spawn(writer.run());
            let replayer_task = tokio::spawn(replayer.run());
            let writer_done = tokio::select! {
                () = shutdown => None,
                joined = &mut writer_task => Some(joined),
            };
            stop_tx.send_replace(true);
            let writer_result = match writer_done {
                Some(joined) => joined,
                None => writer_task.await,
            };
            if let Err(err) = writer_result {
                tracing::error!(error = %err, "audit writer task failed");
            }
            if let Err(err) = replayer_task.await {
                tracing::error!(error = %err, "audit replayer task failed");
            }
        });
        (Self { tx, shared }, supervisor)
    }

    /// Reserves room for one event, at admission, before any decision is
    /// made. The returned slot's [`AuditSlot::emit`] never blocks on Redis
    /// and never fails.
    ///
    /// When the in-memory queue is full, the slot writes its event straight
    /// to the replay volume (synchronous spill: nothing is dropped).
    ///
    /// # Errors
    ///
    /// [`AuditUnavailable`] when neither Redis nor the replay volume can
    /// take events, or when the queue is full and the replay volume cannot
    /// take events. `/ready` then reports `audit_evidence_lost`.
    pub fn reserve(&self) -> Result<AuditSlot, AuditUnavailable> {
        let replay_ok = self.shared.replay_can_take();
        if !replay_ok && !self.shared.stream_can_take() {
            self.shared.record_refusal();
            return Err(AuditUnavailable);
        }
        let inner = match self.tx.clone().try_reserve_owned() {
            Ok(permit) => SlotInner::Queue(permit),
            Err(_full_or_closed) if replay_ok => SlotInner::Spill,
            Err(_full_or_closed) => {
                self.shared.record_refusal();
                return Err(AuditUnavailable);
            }
        };
        Ok(AuditSlot {
            inner,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Reserves a slot and emits `event` through it.
    ///
    /// # Errors
    ///
    /// As [`AuditEmitter::reserve`].
    pub fn emit(&self, event: AuditEvent) -> Result<(), AuditUnavailable> {
        self.reserve()?.emit(event);
        Ok(())
    }

    /// Reserves a slot and emits `event`, returning its acceptance receipt
    /// (`AUDIT_EMIT_MODE=sync` callers that cannot await at the emission point).
    ///
    /// # Errors
    ///
    /// As [`AuditEmitter::reserve`].
    pub fn emit_with_receipt(&self, event: AuditEvent) -> Result<AuditReceipt, AuditUnavailable> {
        Ok(self.reserve()?.emit_with_receipt(event))
    }

    /// Reserves a slot and emits `event`, waiting until it is accepted
    /// (`AUDIT_EMIT_MODE=sync`).
    ///
    /// # Errors
    ///
    /// As [`AuditEmitter::reserve`], or when the event could not be
    /// accepted.
    pub async fn emit_accepted(&self, event: AuditEvent) -> Result<(), AuditUnavailable> {
        self.reserve()?.emit_accepted(event).await
    }

    /// The configured `AUDIT_EMIT_MODE`; callers in `sync` mode use
    /// [`AuditSlot::emit_accepted`].
    #[must_use]
    pub fn emit_mode(&self) -> AuditEmitMode {
        self.shared.config.emit_mode
    }

    /// Records that the caller dropped an event it could not emit
    /// (`AUDIT_FAIL_MODE=open`), so `/ready` reports `audit_evidence_lost`.
    pub fn record_dropped(&self) {
        self.shared.record_loss(1);
    }

    /// Readiness and metrics snapshot.
    #[must_use]
    pub fn health(&self) -> AuditHealth {
        let buffered = self.tx.max_capacity().saturating_sub(self.tx.capacity());
        self.shared.health(buffered)
    }
}

/// Resolves when an emitted event was accepted: Redis acknowledged it or its segment write
/// was fsynced.
#[derive(Debug)]
#[must_use = "a receipt is only useful when awaited"]
pub struct AuditReceipt {
    accepted: oneshot::Receiver<Result<(), AuditUnavailable>>,
}

impl AuditReceipt {
    /// Waits for acceptance.
    ///
    /// # Errors
    ///
    /// [`AuditUnavailable`] when neither Redis nor the replay volume took the event.
    pub async fn accepted(self) -> Result<(), AuditUnavailable> {
        self.accepted.await.unwrap_or(Err(AuditUnavailable))
    }
}

enum SlotInner {
    /// A reserved place in the in-memory queue.
    Queue(mpsc::OwnedPermit<Queued>),
    /// The queue was full: the event goes straight to a segment.
    Spill,
}

/// Room for one audit event, reserved at admission with
/// `mpsc::Sender::try_reserve_owned` (or, when the queue is full, a
/// promise of a synchronous spill). Dropping an unused slot releases it.
#[must_use = "an audit slot reserves room for an event; emit it"]
pub struct AuditSlot {
    inner: SlotInner,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuditSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.inner {
            SlotInner::Queue(_) => "queue",
            SlotInner::Spill => "spill",
        };
        f.debug_struct("AuditSlot").field("kind", &kind).finish()
    }
}

impl AuditSlot {
    /// Whether this slot writes straight to the replay volume (the queue was
    /// full when it was reserved).
    #[must_use]
    pub fn is_spill(&self) -> bool {
        matches!(self.inner, SlotInner::Spill)
    }

    /// Signs `event` and hands it off. Never awaits and never fails: a
    /// queue slot is a non-blocking send; a spill slot appends and fsyncs
    /// the event to the current segment on this thread. Should even that
    /// write fail, the loss is logged and counted (`/ready` reports
    /// `audit_evidence_lost`).
    pub fn emit(self, event: AuditEvent) {
        let signed = event.sign(self.shared.config.hmac_key.as_ref());
        self.hand_off(signed, None);
    }

    /// Signs `event`, hands it off and waits until it is accepted: Redis
    /// acknowledged it or its segment write was fsynced
    /// (`AUDIT_EMIT_MODE=sync`).
    ///
    /// # Errors
    ///
    /// [`AuditUnavailable`] when neither Redis nor the replay volume took it
    /// (the event may still be delivered later).
    pub async fn emit_accepted(self, event: AuditEvent) -> Result<(), AuditUnavailable> {
        self.emit_with_receipt(event).accepted().await
    }

    /// Signs `event` and hands it off like [`AuditSlot::emit`], returning a receipt that
    /// resolves once the event is accepted. Never awaits: callers that cannot await where
    /// they emit collect receipts and wait for them before answering
    /// (`AUDIT_EMIT_MODE=sync`).
    pub fn emit_with_receipt(self, event: AuditEvent) -> AuditReceipt {
        let signed = event.sign(self.shared.config.hmac_key.as_ref());
        let (ack, accepted) = oneshot::channel();
        self.hand_off(signed, Some(ack));
        AuditReceipt { accepted }
    }

    fn hand_off(self, event: SignedAuditEvent, ack: Option<Ack>) {
        let mut queued = Queued { event, ack };
        match self.inner {
            SlotInner::Queue(permit) if !self.shared.writer_stopped() => {
                let _sender = permit.send(queued);
            }
            // The writer has stopped (after its shutdown grace): spill here.
            SlotInner::Queue(_) | SlotInner::Spill => {
                let result = self
                    .shared
                    .spill_blocking(std::slice::from_ref(&queued.event));
                match result {
                    Ok(()) => queued.report(Ok(())),
                    Err(err) => {
                        self.shared.record_loss(1);
                        tracing::error!(
                            event_id = queued.event.id(),
                            error = %err,
                            "audit event lost: synchronous spill failed"
                        );
                        queued.report(Err(AuditUnavailable));
                    }
                }
            }
        }
    }
}
