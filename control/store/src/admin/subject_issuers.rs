//! Admin API statements for the `subject_issuers` area (being written).
