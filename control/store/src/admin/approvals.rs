//! Admin API statements for the `approvals` area (being written).
