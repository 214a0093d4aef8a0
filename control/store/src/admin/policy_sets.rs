//! Admin API statements for the `policy_sets` area (being written).
