//! Step 6 of `caracal restore verify`: the canary, a governed request end to end through a
//! restored stack (storage-and-events.md §12.4).

use crate::doctor::report::Check;

/// Where the restored services are and the credentials the canary provisions with.
#[derive(Debug, Clone)]
pub struct CanaryTarget {
    /// Admin API base URL (`http://host:3000`).
    pub api_url: String,
    /// STS base URL.
    pub sts_url: String,
    /// Coordinator base URL.
    pub coordinator_url: String,
    /// Gateway base URL.
    pub gateway_url: String,
    /// The bootstrap admin token (`CARACAL_ADMIN_TOKEN` of the restored runtime.env).
    pub admin_token: zeroize::Zeroizing<String>,
}

/// Runs the canary and reports it as the check `restore.canary`.
pub async fn run(target: &CanaryTarget) -> Check {
    let _unused = target;
    let mut check = crate::doctor::report::Findings::new("restore.canary");
    check.warn(
        "the canary is not built yet",
        "see docs/operations/backup.md",
    );
    check.finish()
}
