//! Postgres access for every Caracal role: one pool per login role, every SQL statement,
//! the migration runner and zone-scoped transactions.
//!
//! What this crate owns:
//! - [`ServiceRole`] and [`settings`]: which login role a service uses and how its pool is
//!   sized and timed out, read from the environment once at start-up.
//! - [`pool`]: building those pools (`search_path=caracal`, statement and
//!   idle-in-transaction timeouts set as connection startup options).
//! - [`zone`]: the only two ways a service reaches data, [`zone::zone_tx`] (row-level
//!   security scoped to one zone) and [`zone::cross_zone_read`] (read only, `*`).
//! - [`migrate`]: `caracal migrate` and `caracal migrate --verify`, with the embedded,
//!   checksummed files of `migrations/`.
//! - [`schema`]: the expected privilege matrix, row-level security and integrity objects,
//!   shared by the verifier and the tests.
//!
//! What it must never do: set `caracal.zone_id` for longer than a transaction (so nothing
//! leaks across pooled connections), print a connection URL or password, or use sqlx's own
//! `_sqlx_migrations` table. `cargo build` needs no database: every query is checked at run
//! time and exercised by a test against real Postgres.
//!
//! Query modules ([`applications`], [`approvals`], [`authority_records`], [`signing_keys`], [`policy_sets`],
//! [`outbox`], [`delegation`], [`resources`], [`cascade`], [`coordinator`]) each own the SQL of one part of the schema; every function
//! takes the connection of a transaction the caller opened with [`zone::zone_tx`] or
//! [`zone::cross_zone_read`].
//!
//! Start reading at [`migrate::migrate`] for the runner and [`zone::zone_tx`] for services.

pub mod admin;
pub mod applications;
pub mod approvals;
pub mod audit;
pub mod authority_records;
pub mod cascade;
pub mod coordinator;
pub mod delegation;
mod error;
pub mod gateway;
pub mod gateway_view;
pub mod kek_check;
pub mod migrate;
pub mod ops;
pub mod outbox;
pub mod policy_sets;
pub mod pool;
pub mod resources;
mod role;
pub mod schema;
pub mod settings;
pub mod signing_keys;
pub mod subject_issuers;
pub mod zone;

pub use error::{ConfigError, StoreError};
pub use role::{MAINTENANCE_ROLE, OWNER_ROLE, ServiceRole};
