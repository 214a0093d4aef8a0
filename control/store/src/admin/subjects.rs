//! Admin API statements for the `subjects` area (being written).
