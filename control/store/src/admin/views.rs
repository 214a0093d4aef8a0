//! Admin API statements for the `views` area (being written).
