//! Admin API statements for the `grants` area (being written).
