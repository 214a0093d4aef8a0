//! Caracal role `api` (port 3000): the `/v1` admin API and the outbox dispatcher.
