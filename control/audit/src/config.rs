//! The audit service's configuration: read from the environment once, validated, frozen.
//! Every error is one line naming the variable, never its value.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use control_crypto::HmacKey;
use control_store::settings::role;
use zeroize::Zeroizing;

use crate::objects::{ExportTarget, S3Settings};

/// Reads one variable; `None` when unset or empty.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A configuration problem, in one line naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The shortest internal token accepted: it is a password equivalent.
const MIN_INTERNAL_TOKEN_LEN: usize = 32;

/// The keys of the ledger (storage §8.3).
#[derive(Clone, Default)]
pub struct LedgerKeys {
    /// `AUDIT_HMAC_KEY`: verifies the producers' `sig`.
    pub producer: Option<HmacKey>,
    /// `AUDIT_HMAC_KEY_PREVIOUS`: also verifies `sig` during a rotation.
    pub producer_previous: Option<HmacKey>,
    /// `AUDIT_CHAIN_HMAC_KEY`, else `AUDIT_HMAC_KEY`: chains and signs rows.
    pub chain: Option<HmacKey>,
    /// `AUDIT_HMAC_KEYRING_FILE`: retired keys the sweep may find named by a row's
    /// `chain_key_id`. The sweep's lookup of every key is `verify::Keyring::from_ledger_keys`.
    pub retired: Vec<HmacKey>,
}

/// Ingest settings (storage §6.5, §8.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestSettings {
    /// `AUDIT_BATCH_SIZE` (1000): entries per read.
    pub batch: usize,
    /// `AUDIT_WORKERS` (4, ours): ingest loops per process. Each loop's batch waits on
    /// Postgres for part of its time; four loops kept two cores busiest in `audit_bench`.
    pub workers: usize,
    /// `AUDIT_MAX_DELIVERIES` (8): deliveries before an entry goes to the dead letters.
    pub max_deliveries: u64,
    /// `AUDIT_CLAIM_IDLE_SECS` (30): idle time before an entry is claimed from its consumer.
    pub claim_idle: Duration,
    /// `AUDIT_STREAM_TRIM_INTERVAL_SECS` (10).
    pub trim_interval: Duration,
    /// `AUDIT_MAX_FUTURE_SKEW_SECS` (3600): how far ahead `occurred_at` may be.
    pub max_future_skew: Duration,
}

/// Leader jobs (storage §5, §8.6, §8.7, §11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderSettings {
    /// `AUDIT_RETENTION_DAYS` (365).
    pub retention: Duration,
    /// `AUDIT_PARTITION_INTERVAL_HOURS` (6).
    pub partition_interval: Duration,
    /// `AUDIT_TAMPER_ROLLING_HOURS` (4): the hourly sweep's window.
    pub tamper_rolling: Duration,
    /// `AUDIT_TAMPER_ROLLING_INTERVAL_SECS` (3600, ours): cadence of the rolling sweep.
    pub tamper_rolling_interval: Duration,
    /// `AUDIT_TAMPER_FULL_INTERVAL_HOURS` (24).
    pub tamper_full_interval: Duration,
    /// `AUDIT_TAMPER_MAX_ROWS_PER_SEC` (50000).
    pub tamper_rows_per_sec: u64,
    /// `AUDIT_EXPORT_DIR` or `AUDIT_EXPORT_S3_BUCKET` (with `AUDIT_EXPORT_S3_*`): export
    /// closed hours there when set.
    pub export: Option<ExportTarget>,
    /// `AUDIT_EXPORT_SPOOL_DIR`: where a bucket export spools an object before uploading it
    /// (default: the temporary directory).
    pub export_spool: Option<PathBuf>,
    /// `AUDIT_EXPORT_GRACE_SECS` (300).
    pub export_grace: Duration,
    /// `AUDIT_LEADER_TICK_SECS` (30): how often locks are tried and jobs checked.
    pub tick: Duration,
}

/// `/ready` bounds (storage §8.5); 0 turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadyBounds {
    /// `AUDIT_READY_DLQ_MAX`.
    pub dlq_max: u64,
    /// `AUDIT_READY_LAG_MAX`.
    pub lag_max: u64,
    /// `AUDIT_READY_PEL_OLDEST_SECS_MAX`.
    pub pel_oldest_secs_max: u64,
}

/// The validated configuration.
#[derive(Clone)]
pub struct AuditConfig {
    /// Listen address (`CARACAL_AUDIT_ADDR`, default `0.0.0.0:9090`).
    pub bind: SocketAddr,
    /// `REDIS_URL` (default `redis://127.0.0.1:6379`).
    pub redis_url: String,
    /// `CARACAL_INSTANCE_ID` (default: the hostname).
    pub instance_id: String,
    /// `CARACAL_INTERNAL_TOKEN` / `_FILE`: bearer of the internal endpoints; without it
    /// they answer 503.
    pub internal_token: Option<Zeroizing<String>>,
    /// `METRICS_BEARER`.
    pub metrics_bearer: Option<Zeroizing<String>>,
    /// Keys.
    pub keys: LedgerKeys,
    /// Ingest.
    pub ingest: IngestSettings,
    /// Leader jobs.
    pub leaders: LeaderSettings,
    /// `/ready` bounds.
    pub ready: ReadyBounds,
}

impl std::fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditConfig")
            .field("bind", &self.bind)
            .field("instance_id", &self.instance_id)
            .field(
                "chain_key",
                &self.keys.chain.as_ref().map(HmacKey::chain_key_id),
            )
            .field("ingest", &self.ingest)
            .field("leaders", &self.leaders)
            .finish_non_exhaustive()
    }
}

impl AuditConfig {
    /// Reads and validates every setting.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first bad variable.
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        let bind = match lookup("CARACAL_AUDIT_ADDR") {
            None => SocketAddr::from(([0, 0, 0, 0], 9090)),
            Some(raw) => raw.parse().map_err(|_bad| {
                ConfigError("CARACAL_AUDIT_ADDR must be host:port, e.g. 0.0.0.0:9090".to_owned())
            })?,
        };
        let mode = role::mode(lookup).map_err(ConfigError)?;
        let keys = keys(lookup)?;
        if mode == role::Mode::Production && keys.producer.is_none() {
            return Err(ConfigError(
                "AUDIT_HMAC_KEY is required when CARACAL_MODE is rc or stable".to_owned(),
            ));
        }
        let internal_token = role::secret(
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
        let number = |var: &str, default: u64, min: u64, max: u64| {
            role::number(lookup, var, default, min, max).map_err(ConfigError)
        };
        const HOUR: u64 = 3600;
        const DAY: u64 = 86_400;
        let secs = Duration::from_secs;
        let to_usize = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
        let ingest = IngestSettings {
            batch: to_usize(number("AUDIT_BATCH_SIZE", 1000, 1, 10_000)?),
            workers: to_usize(number("AUDIT_WORKERS", 4, 1, 64)?),
            max_deliveries: number("AUDIT_MAX_DELIVERIES", 8, 1, 1000)?,
            claim_idle: secs(number("AUDIT_CLAIM_IDLE_SECS", 30, 1, DAY)?),
            trim_interval: secs(number("AUDIT_STREAM_TRIM_INTERVAL_SECS", 10, 1, DAY)?),
            max_future_skew: secs(number("AUDIT_MAX_FUTURE_SKEW_SECS", HOUR, 0, DAY)?),
        };
        let export = match (lookup("AUDIT_EXPORT_DIR"), lookup("AUDIT_EXPORT_S3_BUCKET")) {
            (Some(_), Some(_)) => {
                return Err(ConfigError(
                    "set AUDIT_EXPORT_DIR or AUDIT_EXPORT_S3_BUCKET, not both".to_owned(),
                ));
            }
            (Some(dir), None) => Some(ExportTarget::Dir(PathBuf::from(dir))),
            (None, Some(bucket)) => {
                let prefix = lookup("AUDIT_EXPORT_S3_PREFIX").unwrap_or_default();
                Some(ExportTarget::S3(Box::new(
                    S3Settings::from_env(lookup, &bucket, &prefix).map_err(ConfigError)?,
                )))
            }
            (None, None) => None,
        };
        let leaders = LeaderSettings {
            retention: secs(number("AUDIT_RETENTION_DAYS", 365, 1, 36_500)? * DAY),
            partition_interval: secs(
                number("AUDIT_PARTITION_INTERVAL_HOURS", 6, 1, 24 * 31)? * HOUR,
            ),
            tamper_rolling: secs(number("AUDIT_TAMPER_ROLLING_HOURS", 4, 1, 24 * 31)? * HOUR),
            tamper_rolling_interval: secs(number(
                "AUDIT_TAMPER_ROLLING_INTERVAL_SECS",
                HOUR,
                1,
                DAY,
            )?),
            tamper_full_interval: secs(
                number("AUDIT_TAMPER_FULL_INTERVAL_HOURS", 24, 1, 24 * 365)? * HOUR,
            ),
            tamper_rows_per_sec: number("AUDIT_TAMPER_MAX_ROWS_PER_SEC", 50_000, 1, 10_000_000)?,
            export,
            export_spool: lookup("AUDIT_EXPORT_SPOOL_DIR").map(PathBuf::from),
            export_grace: secs(number("AUDIT_EXPORT_GRACE_SECS", 300, 0, DAY)?),
            tick: secs(number("AUDIT_LEADER_TICK_SECS", 30, 1, HOUR)?),
        };
        let ready = ReadyBounds {
            dlq_max: number("AUDIT_READY_DLQ_MAX", 0, 0, u64::MAX)?,
            lag_max: number("AUDIT_READY_LAG_MAX", 0, 0, u64::MAX)?,
            pel_oldest_secs_max: number("AUDIT_READY_PEL_OLDEST_SECS_MAX", 0, 0, u64::MAX)?,
        };
        Ok(Self {
            bind,
            redis_url: lookup("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned()),
            instance_id: role::instance_id(lookup, "audit"),
            internal_token: internal_token.map(Zeroizing::new),
            metrics_bearer: lookup("METRICS_BEARER").map(Zeroizing::new),
            keys,
            ingest,
            leaders,
            ready,
        })
    }
}

fn keys(lookup: Lookup<'_>) -> Result<LedgerKeys, ConfigError> {
    let key = |var: &str| HmacKey::from_lookup(var, lookup).map_err(|e| ConfigError(e.to_string()));
    let producer = key("AUDIT_HMAC_KEY")?;
    let producer_previous = key("AUDIT_HMAC_KEY_PREVIOUS")?;
    let chain = key("AUDIT_CHAIN_HMAC_KEY")?.or_else(|| producer.clone());
    let retired = match lookup("AUDIT_HMAC_KEYRING_FILE") {
        Some(path) => read_keyring(&path)?,
        None => Vec::new(),
    };
    Ok(LedgerKeys {
        producer,
        producer_previous,
        chain,
        retired,
    })
}

/// `AUDIT_HMAC_KEYRING_FILE`: one hex key per line; blank lines and `#` comments skipped.
///
/// # Errors
///
/// [`ConfigError`] naming the file variable and the line number.
pub fn read_keyring(path: &str) -> Result<Vec<HmacKey>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(format!(
            "AUDIT_HMAC_KEYRING_FILE cannot be read: {}",
            e.kind()
        ))
    })?;
    text.lines()
        .enumerate()
        .map(|(n, line)| (n, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(n, line)| {
            HmacKey::from_hex(line).map_err(|_bad| {
                ConfigError(format!(
                    "AUDIT_HMAC_KEYRING_FILE line {} is not a hex key of at least 32 bytes",
                    n + 1
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn config(pairs: &[(&str, &str)]) -> Result<AuditConfig, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        AuditConfig::from_lookup(&move |name: &str| map.get(name).cloned())
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = config(&[]).unwrap();
        assert_eq!(c.bind.port(), 9090);
        assert_eq!(c.ingest.batch, 1000);
        assert_eq!(c.ingest.workers, 4);
        assert_eq!(c.ingest.max_deliveries, 8);
        assert_eq!(c.ingest.claim_idle, Duration::from_secs(30));
        assert_eq!(c.leaders.retention, Duration::from_secs(365 * 86_400));
        assert!(c.keys.chain.is_none());
    }

    #[test]
    fn the_chain_key_defaults_to_the_producer_key_and_joins_the_keyring() {
        let c = config(&[("AUDIT_HMAC_KEY", KEY)]).unwrap();
        assert_eq!(
            c.keys.chain.as_ref().unwrap().chain_key_id(),
            "615883fe5fe1bb57"
        );
        let ring = crate::verify::Keyring::from_ledger_keys(&c.keys);
        assert!(ring.find("615883fe5fe1bb57").is_some());
    }

    #[test]
    fn a_bad_setting_names_its_variable_and_never_its_value() {
        for (var, value) in [
            ("AUDIT_HMAC_KEY", "zz-secret-zz"),
            ("AUDIT_BATCH_SIZE", "0"),
            ("CARACAL_INTERNAL_TOKEN", "short"),
            ("CARACAL_AUDIT_ADDR", "nowhere"),
            ("CARACAL_MODE", "prod"),
        ] {
            let error = config(&[(var, value)]).unwrap_err().to_string();
            assert!(error.contains(var), "{error}");
            assert!(!error.contains(value) || value == "0", "{error}");
        }
        let error = config(&[("CARACAL_MODE", "stable")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("AUDIT_HMAC_KEY"), "{error}");
    }

    #[test]
    fn an_s3_export_takes_its_bucket_endpoint_and_credentials_from_the_environment() {
        let c = config(&[
            ("AUDIT_EXPORT_S3_BUCKET", "audit-evidence"),
            ("AUDIT_EXPORT_S3_PREFIX", "/prod/"),
            ("AUDIT_EXPORT_S3_ENDPOINT", "http://127.0.0.1:9000"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "zz-secret-zz"),
        ])
        .unwrap();
        let Some(ExportTarget::S3(s3)) = &c.leaders.export else {
            panic!("expected an S3 export, got {:?}", c.leaders.export);
        };
        assert_eq!(s3.bucket, "audit-evidence");
        assert_eq!(s3.prefix, "prod/");
        assert_eq!(s3.region, "us-east-1");
        assert!(
            s3.path_style,
            "a custom endpoint defaults to path-style URLs"
        );
        assert_eq!(s3.timeout, Duration::from_secs(300));
        assert!(!format!("{c:?}").contains("zz-secret-zz"));
        assert_eq!(
            c.leaders.export.as_ref().unwrap().to_string(),
            "s3://audit-evidence/prod/"
        );
        let aws = config(&[
            ("AUDIT_EXPORT_S3_BUCKET", "audit-evidence"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "zz-secret-zz"),
        ])
        .unwrap();
        let Some(ExportTarget::S3(s3)) = &aws.leaders.export else {
            panic!("expected an S3 export");
        };
        assert_eq!(s3.endpoint.as_str(), "https://s3.eu-west-1.amazonaws.com/");
        assert!(!s3.path_style);
    }

    #[test]
    fn a_bad_export_setting_stops_the_start_naming_it() {
        let keys = [
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "zz-secret-zz"),
        ];
        let cases: [(&[(&str, &str)], &str); 6] = [
            (
                &[("AUDIT_EXPORT_DIR", "/x"), ("AUDIT_EXPORT_S3_BUCKET", "b")],
                "not both",
            ),
            (&[("AUDIT_EXPORT_S3_BUCKET", "b")], "AWS_ACCESS_KEY_ID"),
            (
                &[
                    ("AUDIT_EXPORT_S3_BUCKET", "b"),
                    ("AWS_ACCESS_KEY_ID", "AKID"),
                ],
                "AWS_SECRET_ACCESS_KEY",
            ),
            (
                &[("AUDIT_EXPORT_S3_BUCKET", "Bad_Bucket")],
                "AUDIT_EXPORT_S3_BUCKET",
            ),
            (
                &[
                    ("AUDIT_EXPORT_S3_BUCKET", "b"),
                    ("AUDIT_EXPORT_S3_ENDPOINT", "ftp://x"),
                ],
                "AUDIT_EXPORT_S3_ENDPOINT",
            ),
            (
                &[
                    ("AUDIT_EXPORT_S3_BUCKET", "b"),
                    ("AUDIT_EXPORT_S3_PATH_STYLE", "maybe"),
                ],
                "AUDIT_EXPORT_S3_PATH_STYLE",
            ),
        ];
        for (pairs, named) in cases {
            let mut all = pairs.to_vec();
            if named != "AWS_ACCESS_KEY_ID" && named != "AWS_SECRET_ACCESS_KEY" {
                all.extend(keys);
            }
            let error = config(&all).unwrap_err().to_string();
            assert!(error.contains(named), "{pairs:?}: {error}");
            assert!(!error.contains("zz-secret-zz"), "{error}");
        }
    }
}
