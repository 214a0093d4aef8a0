//! The Coordinator's configuration: read from the environment once, validated, frozen.
//! Every error is one line naming the variable, never its value.

use std::{net::SocketAddr, time::Duration};

use control_crypto::HmacKey;
use control_store::settings::role;
use zeroize::Zeroizing;

/// Reads one variable; `None` when unset or empty.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A configuration problem, in one line naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The shortest operator token accepted: it is a password equivalent.
const MIN_OPERATOR_TOKEN_LEN: usize = 32;

/// Capacity and lease limits (authority §2.1, §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `MAX_AGENTS_PER_ZONE` (50): sessions holding a slot in one zone.
    pub per_zone: i64,
    /// `MAX_AGENTS_PER_APP` (200): sessions holding a slot for one application.
    pub per_app: i64,
    /// `SERVICE_AGENT_LEASE_SECONDS` (120): a service's lease after a start, a heartbeat, a
    /// lease call or a resume.
    pub lease_seconds: i64,
    /// `COORDINATOR_RATE_LIMIT_PER_MIN` (600): requests per client per minute, per replica.
    pub rate_per_minute: u32,
}

/// Idempotency receipt lifetimes and bound (storage §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipts {
    /// `IDEMPOTENCY_RETENTION_SECONDS` (604800).
    pub retention: Duration,
    /// `GENERATED_IDEMPOTENCY_RETENTION_SECONDS` (86400): keys sent with
    /// `idempotency-key-kind: generated`.
    pub generated_retention: Duration,
    /// `IDEMPOTENCY_MAX_RECEIPTS_PER_SCOPE` (10000): live receipts per caller application.
    pub max_per_scope: i64,
}

/// Sweeper cadences and retention (storage §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sweeps {
    /// `TTL_SWEEP_INTERVAL_MS` (60000): task TTL expiry and edge expiry.
    pub ttl_interval: Duration,
    /// `SERVICE_LEASE_SWEEP_INTERVAL_MS` (30000): service lease expiry.
    pub lease_interval: Duration,
    /// `DEADLINE_SWEEP_INTERVAL_MS` (5000): invocation attempts past their deadline.
    pub deadline_interval: Duration,
    /// `RETENTION_CLEANUP_INTERVAL_MS` (900000): deletion of old rows.
    pub retention_interval: Duration,
    /// `SWEEPER_BATCH_SIZE` (500): rows per sweeper statement.
    pub batch: i64,
    /// `RETENTION_CLEANUP_BATCH_SIZE` (500): rows per deletion statement.
    pub retention_batch: i64,
    /// `DELEGATION_RETENTION_DAYS` (90): ended sessions and edges are deleted after this.
    pub delegation_retention: Duration,
    /// `OUTBOX_RETENTION_DAYS` (7): published `caracal_outbox` rows are deleted after this.
    pub outbox_published: Duration,
    /// `OUTBOX_DEAD_RETENTION_DAYS` (30): dead rows are deleted after this.
    pub outbox_dead: Duration,
}

/// The validated configuration.
#[derive(Clone)]
pub struct CoordinatorConfig {
    /// Listen address (`CARACAL_COORDINATOR_ADDR`, default `0.0.0.0:4000`).
    pub bind: SocketAddr,
    /// `REDIS_URL` (default `redis://127.0.0.1:6379`): the outbox's streams.
    pub redis_url: String,
    /// `CARACAL_INSTANCE_ID` (default: the hostname).
    pub instance_id: String,
    /// `ISSUER_URL`: the `iss` and `aud` of the session mandates it accepts.
    pub issuer_url: String,
    /// `CARACAL_STS_URL` (default `ISSUER_URL`): where zone key sets are fetched
    /// (`/.well-known/jwks.json?zone_id=`).
    pub sts_url: url::Url,
    /// `CARACAL_COORDINATOR_TOKEN` or the contents of `CARACAL_COORDINATOR_TOKEN_FILE`: the
    /// operator bearer. Without it the operator routes take session mandates only.
    pub operator_token: Option<Zeroizing<String>>,
    /// `CARACAL_COORDINATOR_MAX_CONNECTIONS` (default 1024).
    pub max_connections: usize,
    /// `METRICS_BEARER`: when set, `/metrics` needs it.
    pub metrics_bearer: Option<Zeroizing<String>>,
    /// `STREAMS_HMAC_KEY`: signs the stream messages the outbox publishes (`_sig`); required
    /// when `CARACAL_MODE` is `rc` or `stable`.
    pub streams_hmac_key: Option<HmacKey>,
    /// The outbox dispatcher (`OUTBOX_*`, `STREAMS_MAXLEN`; storage §7.3). The fallback poll
    /// defaults to 1000 ms for the Coordinator.
    pub outbox: control_events::outbox::OutboxConfig,
    /// Capacity, lease and rate limits.
    pub limits: Limits,
    /// Idempotency receipts.
    pub receipts: Receipts,
    /// Sweepers.
    pub sweeps: Sweeps,
}

impl std::fmt::Debug for CoordinatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorConfig")
            .field("bind", &self.bind)
            .field("instance_id", &self.instance_id)
            .field("issuer_url", &self.issuer_url)
            .field("sts_url", &self.sts_url.as_str())
            .field(
                "operator_token",
                &self.operator_token.as_ref().map(|_set| "<set>"),
            )
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl CoordinatorConfig {
    /// Reads and validates every setting.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first bad variable.
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        let bind = match lookup("CARACAL_COORDINATOR_ADDR") {
            None => SocketAddr::from(([0, 0, 0, 0], 4000)),
            Some(raw) => raw.parse().map_err(|_bad| {
                ConfigError(
                    "CARACAL_COORDINATOR_ADDR must be host:port, e.g. 0.0.0.0:4000".to_owned(),
                )
            })?,
        };
        let mode = role::mode(lookup).map_err(ConfigError)?;
        let issuer_url = role::issuer_url(lookup).map_err(ConfigError)?;
        let sts_raw = lookup("CARACAL_STS_URL").unwrap_or_else(|| issuer_url.clone());
        let sts_url = url::Url::parse(&sts_raw)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| ConfigError("CARACAL_STS_URL must be an http(s) URL".to_owned()))?;
        let operator_token = secret_setting(
            lookup,
            "CARACAL_COORDINATOR_TOKEN",
            "CARACAL_COORDINATOR_TOKEN_FILE",
        )?;
        if let Some(token) = &operator_token
            && (token.len() < MIN_OPERATOR_TOKEN_LEN
                || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ConfigError(format!(
                "CARACAL_COORDINATOR_TOKEN must be at least {MIN_OPERATOR_TOKEN_LEN} printable ASCII characters"
            )));
        }
        let number = |var: &str, default: u64, min: u64, max: u64| {
            role::number(lookup, var, default, min, max).map_err(ConfigError)
        };
        let signed = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        let millis = Duration::from_millis;
        const DAY: u64 = 86_400;
        let limits = Limits {
            per_zone: signed(number("MAX_AGENTS_PER_ZONE", 50, 1, 1_000_000)?),
            per_app: signed(number("MAX_AGENTS_PER_APP", 200, 1, 1_000_000)?),
            lease_seconds: signed(number("SERVICE_AGENT_LEASE_SECONDS", 120, 5, DAY)?),
            rate_per_minute: u32::try_from(number(
                "COORDINATOR_RATE_LIMIT_PER_MIN",
                600,
                1,
                1_000_000,
            )?)
            .unwrap_or(u32::MAX),
        };
        let receipts = Receipts {
            retention: Duration::from_secs(number(
                "IDEMPOTENCY_RETENTION_SECONDS",
                604_800,
                60,
                90 * DAY,
            )?),
            generated_retention: Duration::from_secs(number(
                "GENERATED_IDEMPOTENCY_RETENTION_SECONDS",
                DAY,
                60,
                90 * DAY,
            )?),
            max_per_scope: signed(number(
                "IDEMPOTENCY_MAX_RECEIPTS_PER_SCOPE",
                10_000,
                1,
                10_000_000,
            )?),
        };
        let sweeps = Sweeps {
            ttl_interval: millis(number("TTL_SWEEP_INTERVAL_MS", 60_000, 100, DAY * 1000)?),
            lease_interval: millis(number(
                "SERVICE_LEASE_SWEEP_INTERVAL_MS",
                30_000,
                100,
                DAY * 1000,
            )?),
            deadline_interval: millis(number(
                "DEADLINE_SWEEP_INTERVAL_MS",
                5_000,
                100,
                DAY * 1000,
            )?),
            retention_interval: millis(number(
                "RETENTION_CLEANUP_INTERVAL_MS",
                900_000,
                100,
                DAY * 1000,
            )?),
            batch: signed(number("SWEEPER_BATCH_SIZE", 500, 1, 100_000)?),
            retention_batch: signed(number("RETENTION_CLEANUP_BATCH_SIZE", 500, 1, 100_000)?),
            delegation_retention: Duration::from_secs(
                number("DELEGATION_RETENTION_DAYS", 90, 1, 3650)? * DAY,
            ),
            outbox_published: Duration::from_secs(
                number("OUTBOX_RETENTION_DAYS", 7, 1, 3650)? * DAY,
            ),
            outbox_dead: Duration::from_secs(
                number("OUTBOX_DEAD_RETENTION_DAYS", 30, 1, 3650)? * DAY,
            ),
        };
        let streams_hmac_key = HmacKey::from_lookup("STREAMS_HMAC_KEY", lookup)
            .map_err(|e| ConfigError(e.to_string()))?;
        if mode == role::Mode::Production && streams_hmac_key.is_none() {
            return Err(ConfigError(
                "STREAMS_HMAC_KEY is required when CARACAL_MODE is rc or stable".to_owned(),
            ));
        }
        Ok(Self {
            bind,
            redis_url: lookup("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned()),
            instance_id: role::instance_id(lookup, "coordinator"),
            issuer_url,
            sts_url,
            operator_token,
            max_connections: usize::try_from(number(
                "CARACAL_COORDINATOR_MAX_CONNECTIONS",
                1024,
                1,
                65_536,
            )?)
            .unwrap_or(1024),
            metrics_bearer: lookup("METRICS_BEARER").map(Zeroizing::new),
            streams_hmac_key,
            // The Coordinator's fallback poll is 1 s (storage §7.3).
            outbox: control_events::outbox::OutboxConfig {
                poll: Duration::from_millis(1000),
                ..control_events::outbox::OutboxConfig::default()
            }
            .with_lookup(lookup)
            .map_err(|e| ConfigError(e.to_string()))?,
            limits,
            receipts,
            sweeps,
        })
    }
}

/// A secret from `var` or from the file named by `file_var` (not both), trimmed.
fn secret_setting(
    lookup: Lookup<'_>,
    var: &str,
    file_var: &str,
) -> Result<Option<Zeroizing<String>>, ConfigError> {
    role::secret(lookup, var, file_var)
        .map(|value| value.map(Zeroizing::new))
        .map_err(ConfigError)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<CoordinatorConfig, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        CoordinatorConfig::from_lookup(&move |name: &str| map.get(name).cloned())
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = config(&[]).unwrap();
        assert_eq!(c.bind.port(), 4000);
        assert_eq!(c.limits.per_zone, 50);
        assert_eq!(c.limits.per_app, 200);
        assert_eq!(c.limits.lease_seconds, 120);
        assert_eq!(c.limits.rate_per_minute, 600);
        assert_eq!(c.receipts.max_per_scope, 10_000);
        assert_eq!(c.outbox.poll, Duration::from_millis(1000));
        assert_eq!(c.sts_url.as_str(), "http://localhost:8080/");
        assert!(c.operator_token.is_none());
    }

    #[test]
    fn a_bad_setting_names_its_variable_and_never_its_value() {
        let short = config(&[("CARACAL_COORDINATOR_TOKEN", "hunter2")]).unwrap_err();
        assert!(short.0.contains("CARACAL_COORDINATOR_TOKEN"), "{short}");
        assert!(!short.0.contains("hunter2"));
        let both = config(&[
            ("CARACAL_COORDINATOR_TOKEN", "x"),
            ("CARACAL_COORDINATOR_TOKEN_FILE", "/nope"),
        ])
        .unwrap_err();
        assert!(both.0.contains("not both"));
        let zone = config(&[("MAX_AGENTS_PER_ZONE", "0")]).unwrap_err();
        assert!(zone.0.contains("MAX_AGENTS_PER_ZONE"));
        let sts = config(&[("CARACAL_STS_URL", "ftp://x")]).unwrap_err();
        assert!(sts.0.contains("CARACAL_STS_URL"));
        let unsigned = config(&[("CARACAL_MODE", "stable")]).unwrap_err();
        assert!(unsigned.0.contains("STREAMS_HMAC_KEY"));
    }
}
