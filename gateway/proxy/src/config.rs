//! The gateway configuration: parsed from the environment once, validated, frozen. A bad
//! value fails at start with one line naming the variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use control_crypto::{HmacKey, KekRing};
use gateway_plugin_host::HostConfig;

/// Reads one variable; `None` when unset or empty.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A setting is missing or malformed. One line naming the variable, never a secret value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

pub use control_store::settings::role::Mode;

/// Request and connection limits (wire-contract §4.8).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `MAX_REQUEST_BYTES` (10 MiB).
    pub max_request_bytes: u64,
    /// `UPSTREAM_TIMEOUT` (30 s): until upstream response headers.
    pub upstream_timeout: Duration,
    /// `READ_HEADER_TIMEOUT` (5 s).
    pub read_header_timeout: Duration,
    /// `READ_TIMEOUT` (45 s): the whole inbound request body.
    pub read_timeout: Duration,
    /// `WRITE_TIMEOUT` (60 s): a non-streamed response body.
    pub write_timeout: Duration,
    /// `STREAM_IDLE_TIMEOUT` (60 s): the longest gap between upstream chunks.
    pub stream_idle_timeout: Duration,
    /// `IDLE_TIMEOUT` (120 s): keep-alive idle.
    pub idle_timeout: Duration,
    /// Header block bound (16 KiB).
    pub max_header_bytes: usize,
    /// `CARACAL_GATEWAY_MAX_CONNECTIONS` (10 000): connections beyond are closed at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 10 * 1024 * 1024,
            upstream_timeout: Duration::from_secs(30),
            read_header_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(45),
            write_timeout: Duration::from_secs(60),
            stream_idle_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(120),
            max_header_bytes: 16 * 1024,
            max_connections: 10_000,
        }
    }
}

/// The validated gateway configuration.
#[derive(Clone)]
pub struct GatewayConfig {
    /// Listen address (`CARACAL_GATEWAY_ADDR`, default `0.0.0.0:8081`).
    pub bind: SocketAddr,
    /// `ISSUER_URL`: the `iss` and `aud` of accepted gateway mandates.
    pub issuer_url: String,
    /// `CONTROL_AUDIENCE` (default `caracal-control`).
    pub control_audience: String,
    /// `CARACAL_INSTANCE_ID` (default: the hostname).
    pub instance_id: String,
    /// `CARACAL_MODE`.
    pub mode: Mode,
    /// `REDIS_URL` (default `redis://127.0.0.1:6379`).
    pub redis_url: String,
    /// `AUDIT_REDIS_URL` (default: `REDIS_URL`).
    pub audit_redis_url: String,
    /// `ZONE_KEK` (+ `_PREVIOUS`): opens zone signing keys and provider secrets.
    pub kek: KekRing,
    /// `STREAMS_HMAC_KEY` then `STREAMS_HMAC_KEY_PREVIOUS`.
    pub streams_hmac_keys: Vec<HmacKey>,
    /// `METRICS_BEARER`.
    pub metrics_bearer: Option<String>,
    /// `CARACAL_ADMIN_TOKEN`: the bearer of `POST /internal/revocations/reload`.
    pub admin_token: Option<String>,
    /// `GATEWAY_REVOCATION_MAX_AGE` in seconds (default 10).
    pub revocation_max_age: Duration,
    /// `CARACAL_GATEWAY_POLL_SECONDS` (default 5): authority poll and revision check.
    pub poll_interval: Duration,
    /// `CARACAL_POLICY_EVAL_TIMEOUT_MS` (default 20).
    pub policy_eval_timeout: Duration,
    /// `SIGNING_KEY_GRACE_HOURS` (default 24).
    pub key_grace: Duration,
    /// `UPSTREAM_HOST_ALLOWLIST`: comma-separated lower-case hosts; unset allows any.
    pub upstream_host_allowlist: Option<Vec<String>>,
    /// `TRUST_PROXY`: take `X-Forwarded-For` from the inbound header.
    pub trust_proxy: bool,
    /// `TLS_CERT_FILE` and `TLS_KEY_FILE` (PEM), both or neither.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `CARACAL_PRIVATE_EGRESS_HOSTS`: OAuth token endpoints allowed on private addresses.
    pub private_egress_hosts: Vec<String>,
    /// `UPSTREAM_CA_FILE`: extra PEM trust anchors for https upstreams and token endpoints.
    pub upstream_ca_file: Option<PathBuf>,
    /// `MAX_GRANT_TTL_SECONDS` (default 3600): the longest an OAuth token is cached.
    pub max_grant_ttl: Duration,
    /// Request and connection limits.
    pub limits: Limits,
    /// The WebAssembly plugin host: `GATEWAY_PLUGIN_MAX_CONCURRENCY` (64),
    /// `GATEWAY_PLUGIN_MAX_MEMORY_BYTES` (64 MiB; caps every binding's memory limit),
    /// `GATEWAY_PLUGIN_MAX_DEADLINE_MS` (1000; caps every binding's deadline),
    /// `GATEWAY_PLUGIN_POOLING` (`true`; `false` skips the pooling allocator).
    pub plugins: HostConfig,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("bind", &self.bind)
            .field("issuer_url", &self.issuer_url)
            .field("instance_id", &self.instance_id)
            .field("mode", &self.mode)
            .field("kek", &self.kek.current().dek_id())
            .finish_non_exhaustive()
    }
}

impl GatewayConfig {
    /// Reads and validates the configuration.
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        use control_store::settings::role;
        let mode = role::mode(lookup).map_err(ConfigError)?;
        let bind = match lookup("CARACAL_GATEWAY_ADDR") {
            None => SocketAddr::from(([0, 0, 0, 0], 8081)),
            Some(raw) => raw.parse().map_err(|_bad| {
                ConfigError("CARACAL_GATEWAY_ADDR must be host:port, e.g. 0.0.0.0:8081".to_owned())
            })?,
        };
        let issuer_url = role::issuer_url(lookup).map_err(ConfigError)?;
        let number = |var: &str, default: u64, min: u64, max: u64| {
            role::number(lookup, var, default, min, max).map_err(ConfigError)
        };
        // Durations accept whole seconds ("30") or a unit suffix ("30s", "500ms").
        let duration = |var: &str, default: Duration| -> Result<Duration, ConfigError> {
            match lookup(var) {
                None => Ok(default),
                Some(raw) => parse_duration(raw.trim())
                    .filter(|d| !d.is_zero() && *d <= Duration::from_secs(24 * 3600))
                    .ok_or_else(|| {
                        ConfigError(format!(
                            "{var} must be a positive duration such as 30, 30s or 500ms (at most 24h)"
                        ))
                    }),
            }
        };
        let kek = KekRing::from_lookup(lookup).map_err(|e| ConfigError(e.to_string()))?;
        let streams_hmac_keys =
            HmacKey::stream_keys(lookup).map_err(|e| ConfigError(e.to_string()))?;
        if mode == Mode::Production && streams_hmac_keys.is_empty() {
            return Err(ConfigError(
                "STREAMS_HMAC_KEY is required when CARACAL_MODE is rc or stable".to_owned(),
            ));
        }
        let tls = match (lookup("TLS_CERT_FILE"), lookup("TLS_KEY_FILE")) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            _ => {
                return Err(ConfigError(
                    "TLS_CERT_FILE and TLS_KEY_FILE must be set together".to_owned(),
                ));
            }
        };
        let hosts = |var: &str| -> Vec<String> {
            lookup(var)
                .map(|raw| {
                    raw.split(',')
                        .map(|h| h.trim().to_ascii_lowercase())
                        .filter(|h| !h.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        let allowlist = hosts("UPSTREAM_HOST_ALLOWLIST");
        let redis_url = lookup("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
        let limits = Limits {
            max_request_bytes: number("MAX_REQUEST_BYTES", 10 * 1024 * 1024, 1, 1 << 34)?,
            upstream_timeout: duration("UPSTREAM_TIMEOUT", Duration::from_secs(30))?,
            read_header_timeout: duration("READ_HEADER_TIMEOUT", Duration::from_secs(5))?,
            read_timeout: duration("READ_TIMEOUT", Duration::from_secs(45))?,
            write_timeout: duration("WRITE_TIMEOUT", Duration::from_secs(60))?,
            stream_idle_timeout: duration("STREAM_IDLE_TIMEOUT", Duration::from_secs(60))?,
            idle_timeout: duration("IDLE_TIMEOUT", Duration::from_secs(120))?,
            max_header_bytes: 16 * 1024,
            max_connections: usize::try_from(number(
                "CARACAL_GATEWAY_MAX_CONNECTIONS",
                10_000,
                1,
                1_000_000,
            )?)
            .unwrap_or(10_000),
        };
        Ok(Self {
            bind,
            issuer_url,
            control_audience: lookup("CONTROL_AUDIENCE")
                .unwrap_or_else(|| "caracal-control".to_owned()),
            instance_id: role::instance_id(lookup, "gateway"),
            mode,
            audit_redis_url: lookup("AUDIT_REDIS_URL").unwrap_or_else(|| redis_url.clone()),
            redis_url,
            kek,
            streams_hmac_keys,
            metrics_bearer: lookup("METRICS_BEARER"),
            admin_token: lookup("CARACAL_ADMIN_TOKEN"),
            revocation_max_age: Duration::from_secs(number(
                "GATEWAY_REVOCATION_MAX_AGE",
                10,
                1,
                3600,
            )?),
            poll_interval: Duration::from_secs(number("CARACAL_GATEWAY_POLL_SECONDS", 5, 1, 300)?),
            policy_eval_timeout: Duration::from_millis(number(
                "CARACAL_POLICY_EVAL_TIMEOUT_MS",
                20,
                1,
                1000,
            )?),
            key_grace: Duration::from_secs(3600 * number("SIGNING_KEY_GRACE_HOURS", 24, 1, 720)?),
            upstream_host_allowlist: (!allowlist.is_empty()).then_some(allowlist),
            trust_proxy: matches!(lookup("TRUST_PROXY").as_deref(), Some("1" | "true" | "yes")),
            tls,
            private_egress_hosts: hosts("CARACAL_PRIVATE_EGRESS_HOSTS"),
            upstream_ca_file: lookup("UPSTREAM_CA_FILE").map(PathBuf::from),
            max_grant_ttl: Duration::from_secs(number("MAX_GRANT_TTL_SECONDS", 3600, 60, 86_400)?),
            limits,
            plugins: HostConfig {
                max_concurrency: u32::try_from(number(
                    "GATEWAY_PLUGIN_MAX_CONCURRENCY",
                    64,
                    1,
                    10_000,
                )?)
                .unwrap_or(64),
                max_memory_bytes: number(
                    "GATEWAY_PLUGIN_MAX_MEMORY_BYTES",
                    64 * 1024 * 1024,
                    64 * 1024,
                    4 * 1024 * 1024 * 1024,
                )?,
                max_deadline: Duration::from_millis(number(
                    "GATEWAY_PLUGIN_MAX_DEADLINE_MS",
                    1000,
                    1,
                    1000,
                )?),
                epoch_tick: Duration::from_millis(1),
                pooling: match lookup("GATEWAY_PLUGIN_POOLING").as_deref() {
                    None | Some("true" | "1" | "yes") => true,
                    Some("false" | "0" | "no") => false,
                    Some(_) => {
                        return Err(ConfigError(
                            "GATEWAY_PLUGIN_POOLING must be true or false".to_owned(),
                        ));
                    }
                },
            },
        })
    }
}

/// `30`, `30s`, `500ms`, `2m`.
fn parse_duration(raw: &str) -> Option<Duration> {
    let (digits, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let value: u64 = digits.parse().ok()?;
    match unit {
        "" | "s" => Some(Duration::from_secs(value)),
        "ms" => Some(Duration::from_millis(value)),
        "m" => value.checked_mul(60).map(Duration::from_secs),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<GatewayConfig, ConfigError> {
        let mut env: HashMap<String, String> =
            HashMap::from([("ZONE_KEK".to_owned(), "11".repeat(32))]);
        for (k, v) in pairs {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        GatewayConfig::from_lookup(&move |name: &str| env.get(name).cloned())
    }

    #[test]
    fn defaults_follow_the_wire_contract() -> Result<(), ConfigError> {
        let c = config(&[])?;
        assert_eq!(c.bind.port(), 8081);
        assert_eq!(c.revocation_max_age, Duration::from_secs(10));
        assert_eq!(c.limits.max_request_bytes, 10 * 1024 * 1024);
        assert_eq!(c.limits.upstream_timeout, Duration::from_secs(30));
        assert_eq!(c.limits.stream_idle_timeout, Duration::from_secs(60));
        assert!(c.upstream_host_allowlist.is_none());
        Ok(())
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        for (var, value) in [
            ("CARACAL_GATEWAY_ADDR", "nope"),
            ("UPSTREAM_TIMEOUT", "fast"),
            ("GATEWAY_REVOCATION_MAX_AGE", "0"),
            ("MAX_REQUEST_BYTES", "-1"),
            ("ISSUER_URL", "http://x/"),
            ("CARACAL_MODE", "prod"),
            ("TLS_CERT_FILE", "/tmp/cert.pem"),
        ] {
            let error = config(&[(var, value)]).err().map(|e| e.to_string());
            let names_it = error.as_deref().is_some_and(|e| e.contains(var));
            assert!(names_it, "{var}={value}: {error:?}");
        }
    }

    #[test]
    fn production_requires_the_streams_key() {
        assert!(config(&[("CARACAL_MODE", "stable")]).is_err());
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("2h"), None);
    }
}
