//! The STS configuration: parsed from the environment once, validated, frozen.

use std::{net::SocketAddr, time::Duration};

use control_crypto::{HmacKey, KekRing};

/// Reads one variable; `None` when unset or empty.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub use control_store::settings::role::Mode;

/// The validated STS configuration.
#[derive(Clone)]
pub struct StsConfig {
    /// Listen address (`CARACAL_STS_ADDR`, default `0.0.0.0:8080`).
    pub bind: SocketAddr,
    /// `ISSUER_URL`: emitted as `iss` and the `aud` of session and gateway mandates.
    pub issuer_url: String,
    /// `CONTROL_AUDIENCE` (default `caracal-control`).
    pub control_audience: String,
    /// `STS_MINT_RATE_LIMIT_PER_MIN` (default 1000).
    pub mint_limit_per_minute: u64,
    /// `CARACAL_INSTANCE_ID` (default: the hostname).
    pub instance_id: String,
    /// `CARACAL_MODE`.
    pub mode: Mode,
    /// `METRICS_BEARER`.
    pub metrics_bearer: Option<String>,
    /// `REDIS_URL` (default `redis://127.0.0.1:6379`).
    pub redis_url: String,
    /// `AUDIT_REDIS_URL`: the Redis of the audit stream, when evidence is kept apart from
    /// the limiter and registry state (default: `REDIS_URL`).
    pub audit_redis_url: String,
    /// `CARACAL_POLICY_POLL_SECONDS` (default 15, 1..300).
    pub policy_poll: Duration,
    /// `CARACAL_POLICY_EVAL_TIMEOUT_MS` (default 20, 1..1000).
    pub policy_eval_timeout: Duration,
    /// `ZONE_KEK` (+ `_PREVIOUS`): seals zone signing keys.
    pub kek: KekRing,
    /// `AUDIT_HMAC_KEY`: signs audit events.
    pub audit_hmac_key: Option<HmacKey>,
    /// `STREAMS_HMAC_KEY` then `STREAMS_HMAC_KEY_PREVIOUS`: verify stream messages.
    pub streams_hmac_keys: Vec<HmacKey>,
    /// `SIGNING_KEY_GRACE_HOURS` (default 24).
    pub key_grace: Duration,
    /// How often the sweeper runs (`CARACAL_STS_SWEEP_SECONDS`, default 60).
    pub sweep_interval: Duration,
    /// Maximum concurrent connections (`CARACAL_STS_MAX_CONNECTIONS`, default 4096).
    pub max_connections: usize,
    /// The outbox dispatcher (`OUTBOX_*`, `STREAMS_MAXLEN`; storage §7.3).
    pub outbox: control_events::outbox::OutboxConfig,
}

impl std::fmt::Debug for StsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StsConfig")
            .field("bind", &self.bind)
            .field("issuer_url", &self.issuer_url)
            .field("instance_id", &self.instance_id)
            .field("mode", &self.mode)
            .field("kek", &self.kek.current().dek_id())
            .finish_non_exhaustive()
    }
}

/// A setting is missing or malformed. One line naming the variable, never a secret value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl StsConfig {
    /// Reads and validates the configuration.
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        use control_store::settings::role;
        let mode = role::mode(lookup).map_err(ConfigError)?;
        let bind = match lookup("CARACAL_STS_ADDR") {
            None => SocketAddr::from(([0, 0, 0, 0], 8080)),
            Some(raw) => raw.parse().map_err(|_bad| {
                ConfigError("CARACAL_STS_ADDR must be host:port, e.g. 0.0.0.0:8080".to_owned())
            })?,
        };
        let issuer_url = role::issuer_url(lookup).map_err(ConfigError)?;
        let number = |var: &str, default: u64, min: u64, max: u64| {
            role::number(lookup, var, default, min, max).map_err(ConfigError)
        };
        let kek = KekRing::from_lookup(lookup).map_err(|e| ConfigError(e.to_string()))?;
        let audit_hmac_key = HmacKey::from_lookup("AUDIT_HMAC_KEY", lookup)
            .map_err(|e| ConfigError(e.to_string()))?;
        if mode == Mode::Production && audit_hmac_key.is_none() {
            return Err(ConfigError(
                "AUDIT_HMAC_KEY is required when CARACAL_MODE is rc or stable".to_owned(),
            ));
        }
        let streams_hmac_keys =
            HmacKey::stream_keys(lookup).map_err(|e| ConfigError(e.to_string()))?;
        if mode == Mode::Production && streams_hmac_keys.is_empty() {
            return Err(ConfigError(
                "STREAMS_HMAC_KEY is required when CARACAL_MODE is rc or stable".to_owned(),
            ));
        }
        Ok(Self {
            bind,
            issuer_url,
            control_audience: lookup("CONTROL_AUDIENCE")
                .unwrap_or_else(|| "caracal-control".to_owned()),
            mint_limit_per_minute: number("STS_MINT_RATE_LIMIT_PER_MIN", 1000, 1, 1_000_000)?,
            instance_id: role::instance_id(lookup, "sts-0"),
            mode,
            metrics_bearer: lookup("METRICS_BEARER"),
            redis_url: lookup("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned()),
            audit_redis_url: lookup("AUDIT_REDIS_URL")
                .or_else(|| lookup("REDIS_URL"))
                .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned()),
            policy_poll: Duration::from_secs(number("CARACAL_POLICY_POLL_SECONDS", 15, 1, 300)?),
            policy_eval_timeout: Duration::from_millis(number(
                "CARACAL_POLICY_EVAL_TIMEOUT_MS",
                20,
                1,
                1000,
            )?),
            kek,
            audit_hmac_key,
            streams_hmac_keys,
            key_grace: Duration::from_secs(
                3600 * number("SIGNING_KEY_GRACE_HOURS", 24, 1, 24 * 30)?,
            ),
            sweep_interval: Duration::from_secs(number(
                "CARACAL_STS_SWEEP_SECONDS",
                60,
                1,
                86_400,
            )?),
            max_connections: usize::try_from(number(
                "CARACAL_STS_MAX_CONNECTIONS",
                4096,
                1,
                1_000_000,
            )?)
            .unwrap_or(4096),
            outbox: control_events::outbox::OutboxConfig::from_lookup(lookup)
                .map_err(|e| ConfigError(e.to_string()))?,
        })
    }
}
