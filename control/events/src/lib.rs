//! Caracal events: what travels through Redis.
//!
//! This crate owns:
//! - the names of every Redis stream, stream field, consumer group and
//!   Redis key pattern ([`streams`], `storage-and-events.md` §6);
//! - instance presence and policy propagation reports ([`presence`], §6.1);
//! - fan-out consumers that every replica runs under its own group ([`fanout`], §6.2, §6.4);
//! - the audit emitter shared by the STS and the gateway ([`audit`], §9):
//!   the producer's event ([`audit::AuditEvent`], §8.1) and its `sig`,
//!   audit slots reserved at admission, the batching writer with its Redis
//!   circuit, fsynced NDJSON replay segments, their crash recovery and
//!   quarantine, and the continuous replayer;
//! - the revocation cascades of authority §2.5 and the messages announcing them, shared by
//!   the admin API and the Coordinator ([`cascade`], storage §7.2);
//! - the transactional-outbox dispatcher shared by every producing role
//!   ([`outbox`], §7): claim with a lease, encode and sign, one `XADD`
//!   pipeline, per-row record with backoff, `dead` rows after repeated
//!   permanent failures, and the stats behind `/metrics` and `/ready`.
//!
//! It must never:
//! - make a caller await Redis, or fail a caller's emission once a slot is
//!   reserved (a full queue spills synchronously; refusal happens only at
//!   reservation, when neither Redis nor the replay volume can take events);
//! - drop an accepted event silently: every loss is logged and counted, and
//!   `/ready` reports it; an unparseable replay line is quarantined, never
//!   discarded;
//! - count an event accepted before Redis acknowledged it or its segment
//!   write was fdatasynced;
//! - trim the audit stream (no `MAXLEN`) or re-serialise a signed event;
//! - use an unbounded queue, panic, or log key material;
//! - give up an outbox row for a transient Redis failure (only permanent
//!   ones count towards `OUTBOX_MAX_ATTEMPTS`), or publish a row before
//!   the transaction that enqueued it committed.
//!
//! Start reading at [`audit::AuditEmitter`], and at
//! [`outbox::Dispatcher::dispatch_once`] for the outbox.

pub mod audit;
pub mod cascade;
pub mod fanout;
pub mod outbox;
pub mod presence;
pub mod streams;
