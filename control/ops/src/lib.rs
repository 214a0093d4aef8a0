//! Operator commands of the `caracal` binary that are not a service role: `caracal migrate`
//! (and `--verify`) and `caracal keys`. Later: backup, restore verification and doctor.
//!
//! Each command is a function that takes its parsed arguments and an environment lookup,
//! writes its human-readable result to the given writer, and returns an [`ExitStatus`]
//! or an [`OpsError`] whose `Display` is the single line `main` prints. Commands never
//! print a secret: keys are shown only by `keys generate`, whose whole purpose that is.
//!
//! Start reading at [`migrate::run`].

pub mod backup;
pub mod doctor;
pub mod http_probe;
pub mod keys;
pub mod migrate;
pub mod restore;

/// How a command ended, as the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: success (or, for `--verify`, no drift).
    Success,
    /// 1: the command ran and found a problem (drift, a refused migration).
    Findings,
    /// 2: usage, configuration or connection error.
    Unusable,
    /// 3: `migrate --verify` found pending migrations and nothing else.
    Pending,
}

impl ExitStatus {
    /// The numeric exit code.
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Findings => 1,
            ExitStatus::Unusable => 2,
            ExitStatus::Pending => 3,
        }
    }
}

/// A command failed; `Display` is one line that names the problem and never a secret.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Bad configuration (a key, a URL, a number).
    #[error("{0}")]
    Config(String),
    /// The database cannot be reached.
    #[error("{0}")]
    Unreachable(String),
    /// The command ran and refused to continue.
    #[error("{0}")]
    Refused(String),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

impl OpsError {
    /// The exit status that goes with the error.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            OpsError::Config(_) | OpsError::Unreachable(_) | OpsError::Output(_) => {
                ExitStatus::Unusable
            }
            OpsError::Refused(_) => ExitStatus::Findings,
        }
    }
}
