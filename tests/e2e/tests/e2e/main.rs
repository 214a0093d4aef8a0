//! End-to-end tests against the machine's real Postgres (and, from later issues, Redis and
//! the role servers). One binary, one module per area; every test creates its own database
//! through `tests_harness::TestDb` and drops it afterwards.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions fail loudly, like the tests themselves"
)]

mod api;
mod api_access;
mod api_plugins;
mod api_policy_sets;
mod api_providers;
mod audit_ingest;
mod audit_leaders;
mod audit_query;
mod audit_verify;
mod coordinator_delegations;
mod coordinator_invocations;
mod coordinator_sessions;
mod fixtures;
mod gateway;
mod gateway_checks;
mod gateway_faults;
mod gateway_injection;
mod gateway_oauth;
mod gateway_plugins;
mod gateway_standalone;
mod gateway_wire;
mod grants;
mod integrity;
mod migrate;
mod outbox;
mod partitions;
mod plugins_admin;
mod pools;
mod rls;
mod sts;
mod sts_federation;
