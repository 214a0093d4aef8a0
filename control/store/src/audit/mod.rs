//! The audit ledger's SQL (storage §5, §8): chained inserts per zone under the chain lock
//! (`ledger`), partition upkeep and retention (`partitions`), reads of stored rows for the
//! tamper sweep and the verifier (`rows`), and the query endpoint's reads (`query`).
//!
//! Every function takes the connection of a transaction the caller opened: a
//! [`crate::zone::zone_tx`] for writes and zone reads, a [`crate::zone::cross_zone_read`] for
//! sweeps, or the audit service's dedicated leader connection for the partition functions.

pub mod ledger;
pub mod partitions;
pub mod query;
pub mod rows;
