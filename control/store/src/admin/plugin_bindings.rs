//! Admin API statements for resource plugin bindings (being written).
