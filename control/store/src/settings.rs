//! Database settings of one service, read from the environment once at start-up (§13).
//!
//! Every reader takes a lookup function instead of touching the process environment, so
//! tests can pass a map and `main` passes `std::env::var`.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use crate::{ConfigError, ServiceRole};

pub mod role;

/// Reads one variable; `None` when unset. Empty values count as unset.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment as a [`Lookup`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Pool sizing and timeouts for one service pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// Maximum connections (`CARACAL_DB_POOL_MAX`, 20).
    pub max_connections: u32,
    /// Connections kept warm (`CARACAL_DB_POOL_MIN`, 2).
    pub min_connections: u32,
    /// Server-side statement limit (`CARACAL_DB_STATEMENT_TIMEOUT_MS`, 15 s).
    pub statement_timeout: Duration,
    /// Sessions idle inside a transaction are killed (`CARACAL_DB_IDLE_IN_TX_TIMEOUT_MS`, 30 s).
    pub idle_in_transaction_timeout: Duration,
    /// Connect and pool-acquire limit (`CARACAL_DB_CONNECTION_TIMEOUT_MS`, 5 s).
    pub connect_timeout: Duration,
    /// Idle pool connections are closed (`CARACAL_DB_IDLE_TIMEOUT_MS`, 30 s).
    pub idle_timeout: Duration,
    /// Connections are recycled (`CARACAL_DB_MAX_LIFETIME_SECS`, 1800 s).
    pub max_lifetime: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 20,
            min_connections: 2,
            statement_timeout: Duration::from_millis(15_000),
            idle_in_transaction_timeout: Duration::from_millis(30_000),
            connect_timeout: Duration::from_millis(5_000),
            idle_timeout: Duration::from_millis(30_000),
            max_lifetime: Duration::from_secs(1_800),
        }
    }
}

impl PoolSettings {
    /// Reads the settings of `role`: the per-service variable wins
    /// (`CARACAL_API_DB_POOL_MAX`), then the shared one (`CARACAL_DB_POOL_MAX`), then
    /// upstream's unprefixed alias (`DB_POOL_MAX`), then the default.
    pub fn from_lookup(role: ServiceRole, lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let max_connections = read_u64(role, lookup, "DB_POOL_MAX", true, 1, 1_000)?
            .map_or(d.max_connections, to_u32);
        let min_connections = read_u64(role, lookup, "DB_POOL_MIN", false, 0, 1_000)?
            .map_or(d.min_connections, to_u32)
            .min(max_connections);
        let ms = |name, alias, default: Duration| -> Result<Duration, ConfigError> {
            Ok(read_u64(role, lookup, name, alias, 1, 86_400_000)?
                .map_or(default, Duration::from_millis))
        };
        Ok(Self {
            max_connections,
            min_connections,
            statement_timeout: ms("DB_STATEMENT_TIMEOUT_MS", true, d.statement_timeout)?,
            idle_in_transaction_timeout: ms(
                "DB_IDLE_IN_TX_TIMEOUT_MS",
                true,
                d.idle_in_transaction_timeout,
            )?,
            connect_timeout: ms("DB_CONNECTION_TIMEOUT_MS", true, d.connect_timeout)?,
            idle_timeout: ms("DB_IDLE_TIMEOUT_MS", true, d.idle_timeout)?,
            max_lifetime: read_u64(role, lookup, "DB_MAX_LIFETIME_SECS", false, 1, 86_400)?
                .map_or(d.max_lifetime, Duration::from_secs),
        })
    }
}

fn to_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Reads `<per-service prefix><name>`, `CARACAL_<name>`, then (when `upstream_alias`) the
/// bare `<name>`; the first set one is parsed and range-checked.
fn read_u64(
    role: ServiceRole,
    lookup: Lookup<'_>,
    name: &str,
    upstream_alias: bool,
    min: u64,
    max: u64,
) -> Result<Option<u64>, ConfigError> {
    let mut candidates = vec![
        format!("{}{name}", role.env_prefix()),
        format!("CARACAL_{name}"),
    ];
    if upstream_alias {
        candidates.push(name.to_owned());
    }
    for var in candidates {
        if let Some(raw) = lookup(&var) {
            return match raw.trim().parse::<u64>() {
                Ok(v) if (min..=max).contains(&v) => Ok(Some(v)),
                _ => Err(ConfigError::BadNumber {
                    var,
                    expected: range_text(min, max),
                }),
            };
        }
    }
    Ok(None)
}

fn range_text(min: u64, max: u64) -> &'static str {
    match (min, max) {
        (1, 1_000) => "an integer between 1 and 1000",
        (0, 1_000) => "an integer between 0 and 1000",
        (1, 86_400) => "an integer between 1 and 86400",
        _ => "a positive integer of milliseconds, at most one day",
    }
}

/// Where one service connects, and as whom (§13): `CARACAL_<SERVICE>_DATABASE_URL` replaces
/// everything; otherwise `DATABASE_URL` gives host, port, database and TLS parameters, the
/// user is `CARACAL_<SERVICE>_DB_USER` (default `caracal_<service>`) and the password
/// `CARACAL_<SERVICE>_DB_PASSWORD` or the file named by `CARACAL_<SERVICE>_DB_PASSWORD_FILE`.
pub fn connect_options(
    role: ServiceRole,
    lookup: Lookup<'_>,
) -> Result<PgConnectOptions, ConfigError> {
    let own_url_var = format!("{}DATABASE_URL", role.env_prefix());
    if let Some(url) = lookup(&own_url_var) {
        return parse_url(&own_url_var, &url);
    }
    let url = lookup("DATABASE_URL").ok_or_else(|| ConfigError::MissingUrl {
        var: format!("DATABASE_URL (or {own_url_var})"),
    })?;
    let user_var = format!("{}DB_USER", role.env_prefix());
    let user = lookup(&user_var).unwrap_or_else(|| role.db_role().to_owned());
    let mut options = parse_url("DATABASE_URL", &url)?.username(&user);
    // Never inherit the password of the URL's own user for another login role.
    options = options.password("");
    let password_var = format!("{}DB_PASSWORD", role.env_prefix());
    if let Some(password) = read_secret(lookup, &password_var)? {
        options = options.password(&password);
    }
    Ok(options)
}

/// Options for operator commands (`caracal migrate`): `CARACAL_MIGRATE_DATABASE_URL`, else
/// `DATABASE_URL`, used as given.
pub fn migrate_connect_options(lookup: Lookup<'_>) -> Result<PgConnectOptions, ConfigError> {
    for var in ["CARACAL_MIGRATE_DATABASE_URL", "DATABASE_URL"] {
        if let Some(url) = lookup(var) {
            return parse_url(var, &url);
        }
    }
    Err(ConfigError::MissingUrl {
        var: "DATABASE_URL (or CARACAL_MIGRATE_DATABASE_URL)".to_owned(),
    })
}

/// Parses a URL; the error names the variable and never repeats the URL.
pub fn parse_url(var: &str, url: &str) -> Result<PgConnectOptions, ConfigError> {
    let url = url.trim();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError::BadUrl {
            var: var.to_owned(),
        });
    }
    url.parse::<PgConnectOptions>()
        .map_err(|_parse_error| ConfigError::BadUrl {
            var: var.to_owned(),
        })
}

/// `VAR` or the contents of the file named by `VAR_FILE` (trailing newline trimmed).
fn read_secret(lookup: Lookup<'_>, var: &str) -> Result<Option<String>, ConfigError> {
    if let Some(value) = lookup(var) {
        return Ok(Some(value));
    }
    let file_var = format!("{var}_FILE");
    match lookup(&file_var) {
        None => Ok(None),
        Some(path) => std::fs::read_to_string(path.trim())
            .map(|s| Some(s.trim_end_matches(['\r', '\n']).to_owned()))
            .map_err(|source| ConfigError::File {
                var: file_var,
                source,
            }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_match_the_spec() {
        let s = PoolSettings::from_lookup(ServiceRole::Api, &env(&[])).unwrap();
        assert_eq!(s.max_connections, 20);
        assert_eq!(s.statement_timeout, Duration::from_secs(15));
        assert_eq!(s.idle_in_transaction_timeout, Duration::from_secs(30));
        assert_eq!(s.connect_timeout, Duration::from_secs(5));
        assert_eq!(s.idle_timeout, Duration::from_secs(30));
    }

    #[test]
    fn per_service_setting_beats_shared_beats_upstream_alias() {
        let lookup = env(&[
            ("DB_POOL_MAX", "3"),
            ("CARACAL_DB_POOL_MAX", "7"),
            ("CARACAL_GATEWAY_DB_POOL_MAX", "5"),
        ]);
        assert_eq!(
            PoolSettings::from_lookup(ServiceRole::Gateway, &lookup)
                .unwrap()
                .max_connections,
            5
        );
        assert_eq!(
            PoolSettings::from_lookup(ServiceRole::Sts, &lookup)
                .unwrap()
                .max_connections,
            7
        );
        let alias_only = env(&[("DB_POOL_MAX", "3")]);
        assert_eq!(
            PoolSettings::from_lookup(ServiceRole::Sts, &alias_only)
                .unwrap()
                .max_connections,
            3
        );
    }

    #[test]
    fn bad_number_names_the_variable() {
        let err =
            PoolSettings::from_lookup(ServiceRole::Api, &env(&[("CARACAL_DB_POOL_MAX", "lots")]))
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "CARACAL_DB_POOL_MAX must be an integer between 1 and 1000"
        );
        let err =
            PoolSettings::from_lookup(ServiceRole::Api, &env(&[("CARACAL_DB_POOL_MAX", "0")]))
                .unwrap_err();
        assert!(err.to_string().starts_with("CARACAL_DB_POOL_MAX"));
    }

    #[test]
    fn service_url_uses_the_service_login_role() {
        let lookup = env(&[(
            "DATABASE_URL",
            "postgres://admin:hunter2@db.example:5433/caracal",
        )]);
        let opts = connect_options(ServiceRole::Sts, &lookup).unwrap();
        assert_eq!(opts.get_username(), "caracal_sts");
        assert_eq!(opts.get_database(), Some("caracal"));
        assert_eq!(opts.get_port(), 5433);
    }

    #[test]
    fn own_url_replaces_everything() {
        let lookup = env(&[
            ("DATABASE_URL", "postgres://a@h1/db1"),
            ("CARACAL_AUDIT_DATABASE_URL", "postgres://ledger@h2/db2"),
        ]);
        let opts = connect_options(ServiceRole::Audit, &lookup).unwrap();
        assert_eq!(opts.get_username(), "ledger");
        assert_eq!(opts.get_host(), "h2");
    }

    #[test]
    fn missing_or_bad_url_is_named_without_the_value() {
        let err = connect_options(ServiceRole::Api, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("DATABASE_URL"), "{err}");
        let err = connect_options(
            ServiceRole::Api,
            &env(&[("DATABASE_URL", "mysql://u:sekret@h/d")]),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "DATABASE_URL is not a valid postgres:// URL");
        assert!(!err.contains("sekret"));
    }

    #[test]
    fn unreadable_password_file_is_named() {
        let lookup = env(&[
            ("DATABASE_URL", "postgres://h/d"),
            (
                "CARACAL_API_DB_PASSWORD_FILE",
                "/nonexistent/caracal-password",
            ),
        ]);
        let err = connect_options(ServiceRole::Api, &lookup)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("CARACAL_API_DB_PASSWORD_FILE: cannot read"),
            "{err}"
        );
    }
}
