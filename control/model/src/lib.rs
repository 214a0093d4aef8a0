//! The Caracal domain model: identifiers, wire bodies, the error catalog and the audit
//! event schema, with no I/O.
//!
//! This crate owns the words of the domain and their validation, so that a value of one of
//! its types is known to be well formed wherever it travels. It must never perform I/O,
//! read the environment or the clock; the roles and the store depend on it, never the other
//! way round.
//!
//! Start with [`ZoneId`] (the tenant and trust boundary, validated once at the edge),
//! [`Denial`] and [`ErrorCode`] (every non-success outcome of the STS and the gateway), and
//! [`MandateClaims`] (the JWT claim set of wire-contract §3.2).

pub mod authority;
mod catalog;
mod claims;
mod ids;
pub mod page;
mod request_id;

pub use catalog::{Denial, ErrorCode};
pub use claims::{
    ChainLink, MandateClaims, MandateUse, SESSION_LEEWAY_SECONDS, SubType, is_session_mandate,
};
pub use ids::{InvalidId, ZoneId};
pub use request_id::RequestId;
