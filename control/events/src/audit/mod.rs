//! The audit emitter shared by the STS and the gateway
//! (`storage-and-events.md` §9, settled point 4).
//!
//! Lifecycle of an event:
//!
//! 1. At admission the request reserves an [`AuditSlot`]
//!    ([`AuditEmitter::reserve`]): a place in the bounded in-memory queue
//!    (`try_reserve_owned`), or, when the queue is full, a promise to spill
//!    synchronously. Reservation fails with [`AuditUnavailable`] only when
//!    neither Redis nor the replay volume can take events.
//! 2. In `finish` the request builds an [`AuditEvent`] and calls
//!    [`AuditSlot::emit`]: the event is serialised once, signed
//!    (`sig` = HMAC-SHA256 over the exact `data` bytes with
//!    `AUDIT_HMAC_KEY`) and handed off. It never awaits and never fails.
//! 3. The writer task sends batches (500 events or 10 ms) as one pipelined
//!    `XADD` each. On failure, while the circuit is open, or while the stream
//!    is at `AUDIT_STREAM_SPILL_LEN`, batches are appended to the current
//!    replay segment and fdatasynced (group commit).
//! 4. The replayer task sends sealed segments (of any instance) back to the
//!    stream once Redis is healthy and the stream below the threshold, and
//!    deletes them.
//!
//! An interrupted `XADD` pipeline or replay may send a batch twice; the
//! ledger's duplicate rule (§8.5) absorbs it.
//!
//! Start reading at [`AuditEmitter::spawn`] (`emitter.rs`), then `writer.rs`,
//! `segment.rs`, `recovery.rs` and `replayer.rs`.

pub mod approval;
mod config;
mod emitter;
mod event;
mod link;
mod recovery;
mod replayer;
mod segment;
mod shared;
mod writer;

pub use config::{
    AUDIT_HMAC_KEY_VAR, AuditConfigError, AuditEmitMode, AuditEmitterConfig, DEFAULT_REPLAY_DIR,
};
pub use emitter::{AuditEmitter, AuditReceipt, AuditSlot, AuditUnavailable};
pub use event::{
    AuditDecision, AuditEvent, MAX_EVENT_DATA_BYTES, SignedAuditEvent, format_occurred_at,
};
pub use shared::AuditHealth;
