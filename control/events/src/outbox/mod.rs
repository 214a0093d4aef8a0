//! The transactional-outbox dispatcher shared by every producing role
//! (`storage-and-events.md` §7).
//!
//! Producers insert an outbox row in the same transaction as the state change it announces
//! (`control_store::outbox::enqueue`), then call [`OutboxHandle::wake`] after `COMMIT`. Each
//! producing process runs one [`Dispatcher`] over its own table and producer:
//!
//! 1. **Claim**: one autocommit `UPDATE … FOR UPDATE SKIP LOCKED … RETURNING` leases up to
//!    `OUTBOX_BATCH_SIZE` due rows for `OUTBOX_LOCK_SEC` and counts the attempt
//!    (`control_store::outbox::claim`).
//! 2. **Encode** ([`encode()`]): the flat payload becomes stream fields (§6.1), plus
//!    `outbox_id`, `dedupe_key` and `_sig` (§6.3); rows on `caracal.audit.events` become `id`,
//!    `data` and `sig` instead.
//! 3. **Publish**: one pipeline of `XADD <topic> MAXLEN ~ STREAMS_MAXLEN * …` (the audit
//!    stream is never trimmed by producers). Each command answers for its own row.
//! 4. **Record** per row: published; or scheduled again after
//!    `min(60 s, 2^min(attempts−1, 6) s) × (1 + U[0, 0.3))`. Transient failures (Redis away,
//!    `LOADING`, `READONLY`, `CLUSTERDOWN`, `OOM`, `TRYAGAIN`, `MOVED`/`ASK`, …) retry forever;
//!    permanent ones (`WRONGTYPE`, an unencodable row, a message over 1 MiB) make the row
//!    `dead` once it has been claimed `OUTBOX_MAX_ATTEMPTS` times.
//!
//! Delivery is at least once: a crash between `XADD` and the record republishes the row, with
//! the same `outbox_id`, when its lease expires. [`OutboxStats`] feeds `/metrics` and `/ready`.
//!
//! Start reading at [`Dispatcher::dispatch_once`].

mod config;
mod dispatcher;
mod encode;
mod service;
mod stats;

pub use config::{OutboxConfig, OutboxConfigError};
pub use dispatcher::{DispatchError, Dispatcher, OutboxTarget, RoundOutcome, backoff};
pub use encode::{
    AUDIT_PAYLOAD_EVENT, EncodeError, EncodedMessage, MAX_MESSAGE_BYTES, OutboxKeys, encode,
};
pub use service::{Retention, metric_lines, not_ready_reason, purge_finished, run_retention};
pub use stats::{OutboxHandle, OutboxSnapshot, OutboxStats, ReadyThresholds};
