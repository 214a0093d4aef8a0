//! Admin API e2e tests (being written).
