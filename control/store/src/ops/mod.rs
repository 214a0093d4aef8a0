//! SQL of the operator commands that read across the whole database as
//! `caracal_maintenance`: `caracal doctor` ([`doctor`]) and `caracal backup` / `caracal
//! restore verify` ([`backup`]).

pub mod backup;
pub mod doctor;
