//! Admin API statements for the `resources` area (being written).
