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
            .finish_non_exhaustive()
    }
}

/// A configuration problem, in one line naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The shortest bootstrap token accepted: it is a password-equivalent.
const MIN_BOOTSTRAP_TOKEN_LEN: usize = 32;

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
        Ok(Self {
            bind,
            policy,
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

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "api".to_owned())
}
