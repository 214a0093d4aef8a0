//! The admin API configuration: parsed from the environment once, validated, frozen.

use std::net::SocketAddr;

use control_crypto::{HmacKey, KekRing};
use zeroize::Zeroizing;

/// Reads one variable; `None` when unset or empty.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The validated configuration.
#[derive(Clone)]
pub struct ApiConfig {
    /// Listen address (`CARACAL_API_ADDR`, default `0.0.0.0:3000`).
    pub bind: SocketAddr,
    /// `REDIS_URL` (default `redis://127.0.0.1:6379`).
    pub redis_url: String,
    /// `CARACAL_INSTANCE_ID` (default: the hostname).
    pub instance_id: String,
    /// `CARACAL_ADMIN_TOKEN` or the contents of `CARACAL_ADMIN_TOKEN_FILE`: the bootstrap
    /// global admin token. Without it only minted tokens authenticate.
    pub bootstrap_token: Option<Zeroizing<String>>,
    /// `ZONE_KEK` (+ `_PREVIOUS`): seals provider secrets.
    pub kek: KekRing,
    /// `AUDIT_HMAC_KEY`: the admin audit chain key (chain HMACs are NULL without it, dev
    /// mode only).
    pub audit_hmac_key: Option<HmacKey>,
    /// `CARACAL_API_MAX_CONNECTIONS` (default 1024).
    pub max_connections: usize,
    /// `CARACAL_API_AUTH_FAILURES_PER_MINUTE` (default 20, 1..1000000): failed
    /// authentications from one address before it is refused for the rest of the minute.
    pub auth_failures_per_minute: u32,
    /// `METRICS_BEARER`: when set, `/metrics` needs it.
    pub metrics_bearer: Option<Zeroizing<String>>,
    /// `STREAMS_HMAC_KEY`: signs the stream messages the outbox publishes (`_sig`).
    pub streams_hmac_key: Option<HmacKey>,
    /// The outbox dispatcher (`OUTBOX_*`, `STREAMS_MAXLEN`; storage §7.3).
    pub outbox: control_events::outbox::OutboxConfig,
    /// `CARACAL_POLICY_EVAL_TIMEOUT_MS` (default 20, 1..1000): the evaluation limit of the
    /// bundles the API builds to check a set version and to simulate.
    pub policy: control_policy::PolicyConfig,
    /// Outbox retention: `OUTBOX_RETENTION_DAYS` (7), `OUTBOX_DEAD_RETENTION_DAYS` (30),
    /// `OUTBOX_RETENTION_INTERVAL_SECONDS` (3600).
    pub retention: crate::retention::RetentionConfig,
    /// `CARACAL_AUDIT_URL` (default `http://127.0.0.1:9090`): the audit service, which
    /// answers the audit reads (storage §8.9). An http(s) origin, kept without a trailing
    /// slash.
    pub audit_url: String,
    /// `CARACAL_INTERNAL_TOKEN` / `_FILE`: the bearer of the audit service's internal
    /// endpoint. Without it the audit reads answer 503 `audit_unavailable`.
    pub internal_token: Option<Zeroizing<String>>,
    /// Not a variable: `caracal all` sets it. The audit reads run in this process through a
    /// pool that logs in as `caracal_audit` (its `DATABASE_URL_AUDIT` or the shared URL),
    /// not over HTTP to `audit_url` (settled point 3).
    pub audit_in_process: bool,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("bind", &self.bind)
            .field("instance_id", &self.instance_id)
            .field(
                "bootstrap_token",
                &self.bootstrap_token.as_ref().map(|_set| "<set>"),
            )
            .field("max_connections", &self.max_connections)
            .field("audit_url", &self.audit_url)
            .field(
                "internal_token",
                &self.internal_token.as_ref().map(|_set| "<set>"),
            )
            .finish_non_exhaustive()
    }
}

/// A configuration problem, in one line naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The shortest bootstrap token accepted: it is a password-equivalent.
const MIN_BOOTSTRAP_TOKEN_LEN: usize = 32;

/// The shortest internal token accepted (the audit service refuses shorter ones too).
const MIN_INTERNAL_TOKEN_LEN: usize = 32;

impl ApiConfig {
    /// Reads and validates every setting.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first bad variable.
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        let bind = match lookup("CARACAL_API_ADDR") {
            None => SocketAddr::from(([0, 0, 0, 0], 3000)),
            Some(raw) => raw.parse().map_err(|_bad| {
                ConfigError("CARACAL_API_ADDR must be host:port, e.g. 0.0.0.0:3000".to_owned())
            })?,
        };
        let bootstrap_token = match (
            lookup("CARACAL_ADMIN_TOKEN"),
            lookup("CARACAL_ADMIN_TOKEN_FILE"),
        ) {
            (Some(_), Some(_)) => {
                return Err(ConfigError(
                    "set CARACAL_ADMIN_TOKEN or CARACAL_ADMIN_TOKEN_FILE, not both".to_owned(),
                ));
            }
            (Some(token), None) => Some(Zeroizing::new(token.trim().to_owned())),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError(format!(
                        "CARACAL_ADMIN_TOKEN_FILE cannot be read: {}",
                        e.kind()
                    ))
                })?;
                Some(Zeroizing::new(text.trim().to_owned()))
            }
            (None, None) => None,
        };
        if let Some(token) = &bootstrap_token
            && (token.len() < MIN_BOOTSTRAP_TOKEN_LEN
                || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ConfigError(format!(
                "CARACAL_ADMIN_TOKEN must be at least {MIN_BOOTSTRAP_TOKEN_LEN} printable ASCII characters"
            )));
        }
        let kek = KekRing::from_lookup(lookup).map_err(|e| ConfigError(e.to_string()))?;
        let audit_hmac_key = HmacKey::from_lookup("AUDIT_HMAC_KEY", lookup)
            .map_err(|e| ConfigError(e.to_string()))?;
        let max_connections = match lookup("CARACAL_API_MAX_CONNECTIONS") {
            None => 1024,
            Some(raw) => raw
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|v| (1..=65_536).contains(v))
                .ok_or_else(|| {
                    ConfigError(
                        "CARACAL_API_MAX_CONNECTIONS must be an integer between 1 and 65536"
                            .to_owned(),
                    )
                })?,
        };
        let auth_failures_per_minute = match lookup("CARACAL_API_AUTH_FAILURES_PER_MINUTE") {
            None => 20,
            Some(raw) => raw
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|v| (1..=1_000_000).contains(v))
                .ok_or_else(|| {
                    ConfigError(
                        "CARACAL_API_AUTH_FAILURES_PER_MINUTE must be an integer between 1 and 1000000"
                            .to_owned(),
                    )
                })?,
        };
        let number = |var: &str, default: u64, max: u64| -> Result<u64, ConfigError> {
            match lookup(var) {
                None => Ok(default),
                Some(raw) => raw
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|v| (1..=max).contains(v))
                    .ok_or_else(|| {
                        ConfigError(format!("{var} must be an integer between 1 and {max}"))
                    }),
            }
        };
        const DAY: u64 = 86_400;
        let retention = crate::retention::RetentionConfig {
            published: std::time::Duration::from_secs(
                number("OUTBOX_RETENTION_DAYS", 7, 3650)? * DAY,
            ),
            dead: std::time::Duration::from_secs(
                number("OUTBOX_DEAD_RETENTION_DAYS", 30, 3650)? * DAY,
            ),
            interval: std::time::Duration::from_secs(number(
                "OUTBOX_RETENTION_INTERVAL_SECONDS",
                3600,
                DAY,
            )?),
        };
        let policy = control_policy::PolicyConfig::with_eval_timeout_ms(number(
            "CARACAL_POLICY_EVAL_TIMEOUT_MS",
            20,
            1000,
        )?)
        .map_err(|e| ConfigError(e.to_string()))?;
        let audit_url = audit_url(lookup)?;
        let internal_token = control_store::settings::role::secret(
            lookup,
            "CARACAL_INTERNAL_TOKEN",
            "CARACAL_INTERNAL_TOKEN_FILE",
        )
        .map_err(ConfigError)?;
        if let Some(token) = &internal_token
            && (token.len() < MIN_INTERNAL_TOKEN_LEN
                || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ConfigError(format!(
                "CARACAL_INTERNAL_TOKEN must be at least {MIN_INTERNAL_TOKEN_LEN} printable ASCII characters"
            )));
        }
        Ok(Self {
            bind,
            policy,
            audit_url,
            internal_token: internal_token.map(Zeroizing::new),
            audit_in_process: false,
            retention,
            auth_failures_per_minute,
            redis_url: lookup("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned()),
            instance_id: lookup("CARACAL_INSTANCE_ID").unwrap_or_else(hostname),
            bootstrap_token,
            kek,
            audit_hmac_key,
            max_connections,
            metrics_bearer: lookup("METRICS_BEARER").map(Zeroizing::new),
            streams_hmac_key: HmacKey::from_lookup("STREAMS_HMAC_KEY", lookup)
                .map_err(|e| ConfigError(e.to_string()))?,
            outbox: control_events::outbox::OutboxConfig::from_lookup(lookup)
                .map_err(|e| ConfigError(e.to_string()))?,
        })
    }
}

/// `CARACAL_AUDIT_URL`: `http://` or `https://` with a host, no user info, path, query or
/// fragment (a trailing `/` is dropped).
fn audit_url(lookup: Lookup<'_>) -> Result<String, ConfigError> {
    let raw = lookup("CARACAL_AUDIT_URL").unwrap_or_else(|| "http://127.0.0.1:9090".to_owned());
    let url = raw.trim().trim_end_matches('/');
    let bad = || {
        ConfigError(
            "CARACAL_AUDIT_URL must be an http(s) origin such as http://127.0.0.1:9090".to_owned(),
        )
    };
    let uri: http::Uri = url.parse().map_err(|_invalid| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let origin_only = uri
        .path_and_query()
        .is_none_or(|p| p.as_str().is_empty() || p == "/");
    let host_ok = uri
        .authority()
        .is_some_and(|a| !a.host().is_empty() && !a.as_str().contains('@'));
    if !(scheme_ok && origin_only && host_ok) || url.contains(['#', '?']) {
        return Err(bad());
    }
    Ok(url.to_owned())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "api".to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<ApiConfig, ConfigError> {
        let kek = "7a".repeat(32);
        let map: HashMap<String, String> = [("ZONE_KEK", kek.as_str())]
            .iter()
            .chain(pairs)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ApiConfig::from_lookup(&move |name: &str| map.get(name).cloned())
    }

    #[test]
    fn the_audit_service_defaults_to_the_local_port_9090_without_a_token() {
        let c = config(&[]).unwrap();
        assert_eq!(c.audit_url, "http://127.0.0.1:9090");
        assert!(c.internal_token.is_none());
        let c = config(&[("CARACAL_AUDIT_URL", "https://audit.internal:9443/")]).unwrap();
        assert_eq!(c.audit_url, "https://audit.internal:9443");
    }

    #[test]
    fn a_bad_audit_url_or_internal_token_names_its_variable_and_never_the_token() {
        for url in [
            "ftp://x",
            "audit:9090",
            "http://",
            "http://u:p@audit:9090",
            "http://audit:9090/v1",
            "http://audit:9090?x=1",
        ] {
            let error = config(&[("CARACAL_AUDIT_URL", url)])
                .unwrap_err()
                .to_string();
            assert!(error.contains("CARACAL_AUDIT_URL"), "{url}: {error}");
        }
        let error = config(&[("CARACAL_INTERNAL_TOKEN", "short-secret")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("CARACAL_INTERNAL_TOKEN"), "{error}");
        assert!(!error.contains("short-secret"), "{error}");
        let token = "t".repeat(40);
        let c = config(&[("CARACAL_INTERNAL_TOKEN", token.as_str())]).unwrap();
        assert_eq!(
            c.internal_token.as_deref().map(String::as_str),
            Some(token.as_str())
        );
        assert!(!format!("{c:?}").contains(&token));
    }
}
