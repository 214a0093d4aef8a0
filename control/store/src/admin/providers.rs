//! Admin API statements for the `providers` area (being written).
