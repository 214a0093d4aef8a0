//! The admin API's statements (role `caracal_api`): keyset pages, zones, applications,
//! admin tokens and the chained admin audit log. Every function runs on the connection of a
//! transaction the caller opened with the right scope (`zone_tx`, `global_tx` or
//! `cross_zone_read`).

pub mod admin_audit;
pub mod admin_tokens;
pub mod applications;
pub mod page;
pub mod policies;
pub mod zones;
