//! The Coordinator's statements (role `caracal_coordinator`): agent sessions and their tree
//! ([`sessions`]), delegation edges ([`edges`]), the service registry ([`services`]) and durable invocations
//! ([`invocations`]), idempotency receipts ([`receipts`]) and the
//! sweepers' batches ([`sweep`]). The cascades shared with the admin API are in
//! [`crate::cascade`]. Every function runs on the connection of a transaction the caller
//! opened with the right scope (`zone_tx`, `zone_snapshot` or `cross_zone_read`).

pub mod edges;
pub mod invocations;
pub mod receipts;
pub mod services;
pub mod sessions;
pub mod sweep;
