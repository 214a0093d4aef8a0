//! The service roles as the binary runs them: one role per process (`caracal sts`, …) or
//! every role in one process (`caracal all`). Both go through [`serve`]: start the roles in
//! order, wait for SIGINT or SIGTERM, stop them in reverse order.
//!
//! `caracal all` only composes: each role reads its own settings exactly as it does alone,
//! from the same variables, and binds its own default port. What `all` adds are defaults
//! that make one process self-contained ([`AllDefaults`]): the Coordinator fetches key sets
//! from this process's STS and the five database pools share a smaller default maximum.
//! And the admin API answers the audit reads in process, through a `caracal_audit` pool,
//! instead of calling the audit service's internal endpoint (settled point 3).

use std::collections::HashMap;

use control_http::RoleHandle;
use control_ops::{ExitStatus, OpsError};
use control_store::settings::Lookup;

/// A service role of the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Audit,
    Sts,
    Api,
    Coordinator,
    Gateway,
}

impl Role {
    /// Every role, in start order: the ledger first (the API forwards audit queries to it),
    /// the STS before the Coordinator (which fetches its key sets), the gateway last.
    pub(crate) const ALL: [Role; 5] = [
        Role::Audit,
        Role::Sts,
        Role::Api,
        Role::Coordinator,
        Role::Gateway,
    ];

    /// The role's name in log lines and errors.
    fn name(self) -> &'static str {
        match self {
            Role::Audit => "audit",
            Role::Sts => "sts",
            Role::Api => "api",
            Role::Coordinator => "coordinator",
            Role::Gateway => "gateway",
        }
    }

    /// Reads the role's settings through `lookup` and starts it. A bad setting is a
    /// configuration error (exit 2); anything else that stops the start (a database or
    /// Redis that cannot be reached, a port in use) is reported as unreachable (exit 2 too).
    ///
    /// `together` is true when every role runs in this process (`caracal all`): the admin
    /// API then answers the audit reads in process instead of over HTTP (settled point 3).
    async fn start(self, lookup: Lookup<'_>, together: bool) -> Result<RoleHandle, OpsError> {
        let config = |e: &dyn std::fmt::Display| OpsError::Config(format!("{}: {e}", self.name()));
        let failed =
            |e: &dyn std::fmt::Display| OpsError::Unreachable(format!("{}: {e}", self.name()));
        match self {
            Role::Audit => {
                let settings =
                    control_audit::AuditConfig::from_lookup(lookup).map_err(|e| config(&e))?;
                Box::pin(control_audit::start(settings, lookup))
                    .await
                    .map_err(|e| match e {
                        control_audit::AuditStartError::Config(_) => config(&e),
                        _ => failed(&e),
                    })
            }
            Role::Sts => {
                let settings =
                    control_sts::StsConfig::from_lookup(lookup).map_err(|e| config(&e))?;
                Box::pin(control_sts::start(settings, lookup))
                    .await
                    .map_err(|e| failed(&e))
            }
            Role::Api => {
                let mut settings =
                    control_api::ApiConfig::from_lookup(lookup).map_err(|e| config(&e))?;
                settings.audit_in_process = together;
                Box::pin(control_api::start(settings, lookup))
                    .await
                    .map_err(|e| failed(&e))
            }
            Role::Coordinator => {
                let settings = control_coordinator::CoordinatorConfig::from_lookup(lookup)
                    .map_err(|e| config(&e))?;
                Box::pin(control_coordinator::start(settings, lookup))
                    .await
                    .map_err(|e| failed(&e))
            }
            Role::Gateway => {
                let settings =
                    gateway_proxy::GatewayConfig::from_lookup(lookup).map_err(|e| config(&e))?;
                Box::pin(gateway_proxy::start(settings, lookup))
                    .await
                    .map_err(|e| failed(&e))
            }
        }
    }
}

/// Starts `roles` in order and serves until `shutdown` resolves, then stops them in
/// reverse order (each drains its connections and flushes what it holds). When a role
/// fails to start, the ones already running are stopped before the error is returned.
pub(crate) async fn serve(
    roles: &[Role],
    lookup: Lookup<'_>,
    shutdown: impl Future<Output = ()>,
) -> Result<ExitStatus, OpsError> {
    let mut running: Vec<RoleHandle> = Vec::with_capacity(roles.len());
    let together = roles.contains(&Role::Audit) && roles.contains(&Role::Api);
    for role in roles {
        match role.start(lookup, together).await {
            Ok(handle) => {
                if roles.len() > 1 {
                    tracing::info!(role = role.name(), addr = %handle.addr, "role started");
                }
                running.push(handle);
            }
            Err(error) => {
                stop_all(running).await;
                return Err(error);
            }
        }
    }
    shutdown.await;
    stop_all(running).await;
    Ok(ExitStatus::Success)
}

async fn stop_all(running: Vec<RoleHandle>) {
    for handle in running.into_iter().rev() {
        handle.stop().await;
    }
}

/// The settings `caracal all` supplies when the environment does not: each is a value a
/// single-process deployment needs to find its own parts.
pub(crate) struct AllDefaults {
    values: HashMap<&'static str, String>,
}

/// The default pool maximum per role in `caracal all` (five pools share one server's
/// `max_connections`; storage-and-events.md §13).
const ALL_POOL_MAX: &str = "6";

impl AllDefaults {
    /// Derives the defaults from `lookup` (the process environment): the STS address the
    /// Coordinator fetches key sets from, and the smaller pool maximum.
    pub(crate) fn new(lookup: Lookup<'_>) -> Result<Self, OpsError> {
        let mut values = HashMap::new();
        let sts_addr = lookup("CARACAL_STS_ADDR").unwrap_or_else(|| "0.0.0.0:8080".to_owned());
        values.insert(
            "CARACAL_STS_URL",
            format!("http://{}", loopback(&sts_addr, "CARACAL_STS_ADDR")?),
        );
        values.insert("CARACAL_DB_POOL_MAX", ALL_POOL_MAX.to_owned());
        Ok(Self { values })
    }

    /// The environment first, then these defaults.
    pub(crate) fn lookup(&self, env: Lookup<'_>, name: &str) -> Option<String> {
        env(name).or_else(|| self.values.get(name).cloned())
    }
}

/// `addr` (a listen address such as `0.0.0.0:8080`) as an address this process can dial:
/// a wildcard host becomes 127.0.0.1.
fn loopback(addr: &str, var: &str) -> Result<String, OpsError> {
    let parsed: std::net::SocketAddr = addr
        .parse()
        .map_err(|_bad| OpsError::Config(format!("{var} must be host:port, got {addr}")))?;
    let host = if parsed.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        parsed.ip()
    };
    Ok(std::net::SocketAddr::new(host, parsed.port()).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn all_points_the_roles_at_each_other_on_loopback() {
        let lookup = env(&[("CARACAL_STS_ADDR", "0.0.0.0:18080")]);
        let defaults = AllDefaults::new(&lookup).unwrap();
        assert_eq!(
            defaults.lookup(&lookup, "CARACAL_STS_URL").as_deref(),
            Some("http://127.0.0.1:18080")
        );
        assert_eq!(
            defaults.lookup(&lookup, "CARACAL_DB_POOL_MAX").as_deref(),
            Some("6")
        );
        assert_eq!(
            defaults.lookup(&lookup, "CARACAL_INTERNAL_TOKEN"),
            None,
            "no token is invented: the audit reads need none in process"
        );
    }

    #[test]
    fn the_environment_wins_over_the_defaults() {
        let lookup = env(&[
            ("CARACAL_STS_URL", "https://sts.example"),
            ("CARACAL_DB_POOL_MAX", "3"),
        ]);
        let defaults = AllDefaults::new(&lookup).unwrap();
        assert_eq!(
            defaults.lookup(&lookup, "CARACAL_STS_URL").as_deref(),
            Some("https://sts.example")
        );
        assert_eq!(
            defaults.lookup(&lookup, "CARACAL_DB_POOL_MAX").as_deref(),
            Some("3")
        );
    }

    #[test]
    fn a_bad_listen_address_is_named() {
        let lookup = env(&[("CARACAL_STS_ADDR", "eight-oh-eight-oh")]);
        let Err(error) = AllDefaults::new(&lookup) else {
            panic!("accepted a bad address")
        };
        assert!(error.to_string().contains("CARACAL_STS_ADDR"), "{error}");
    }
}
