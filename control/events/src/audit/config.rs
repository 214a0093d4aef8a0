//! Emitter configuration (`storage-and-events.md` §9) and its parsing from the
//! environment.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use control_crypto::{HmacKey, KeyConfigError};

use crate::streams::AUDIT_EVENTS;

/// Variable holding the producers' audit HMAC key (hex; `_FILE` accepted).
pub const AUDIT_HMAC_KEY_VAR: &str = "AUDIT_HMAC_KEY";

/// Default `AUDIT_REPLAY_DIR`.
pub const DEFAULT_REPLAY_DIR: &str = "/var/lib/caracal/audit-replay";

/// Whether a request waits for its audit event to be accepted
/// (`AUDIT_EMIT_MODE`, §9.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditEmitMode {
    /// The event is accepted once it is in the in-memory queue (default).
    #[default]
    Async,
    /// The response waits until Redis acknowledged the event or its segment
    /// write was fsynced.
    Sync,
}

/// Validated emitter settings. [`AuditEmitterConfig::new`] gives the spec's
/// defaults; [`AuditEmitterConfig::from_lookup`] reads the environment.
#[derive(Clone)]
pub struct AuditEmitterConfig {
    /// Service name (`sts`, `gateway`); names the replay subdirectory.
    pub service: String,
    /// Instance name (`CARACAL_INSTANCE_ID`, default the hostname).
    pub instance: String,
    /// Stream the events go to (default `caracal.audit.events`; tests use a
    /// unique name).
    pub stream: String,
    /// `AUDIT_HMAC_KEY`; `None` in dev mode (then `sig` is empty).
    pub hmac_key: Option<HmacKey>,
    /// `AUDIT_EMIT_MODE` (default async).
    pub emit_mode: AuditEmitMode,
    /// `AUDIT_BUFFER_CAPACITY`: in-memory queue slots (10,000).
    pub buffer_capacity: usize,
    /// Flush interval of a partial batch (10 ms).
    pub flush_interval: Duration,
    /// Events per pipelined `XADD` batch and per spilled batch (500).
    pub batch_max: usize,
    /// `AUDIT_XADD_TIMEOUT_MS`: limit on one batch, and on connect and probe
    /// commands (500 ms).
    pub xadd_timeout: Duration,
    /// Consecutive Redis failures that open the circuit (3).
    pub circuit_failures: u32,
    /// Probe interval while the circuit is open (1 s).
    pub circuit_probe_interval: Duration,
    /// `AUDIT_STREAM_SPILL_LEN`: stream length from which events spill (1,000,000).
    pub stream_spill_len: u64,
    /// How often the stream length is read (1 s).
    pub stream_len_check_interval: Duration,
    /// `AUDIT_REPLAY_DIR` (default `/var/lib/caracal/audit-replay`).
    pub replay_dir: PathBuf,
    /// `AUDIT_REPLAY_INTERVAL_MS`: replayer period (1000 ms).
    pub replay_interval: Duration,
    /// `AUDIT_REPLAY_RATE`: maximum replayed events per second (5,000).
    pub replay_rate: u32,
    /// Limit on one replayed batch of up to `batch_max` lines (2 s, the
    /// Redis command timeout of §13).
    pub replay_xadd_timeout: Duration,
    /// `AUDIT_REPLAY_MAX_BYTES`: bytes of segments per directory (1 GiB).
    pub replay_max_bytes: u64,
    /// `AUDIT_REPLAY_MIN_FREE_BYTES` (256 MiB): a spill that would leave less free space
    /// on the replay volume is refused like a full directory (0 turns the check off).
    pub replay_min_free_bytes: u64,
    /// A segment is sealed at this size (16 MiB).
    pub segment_max_bytes: u64,
    /// A segment is sealed at this many events (10,000).
    pub segment_max_events: u64,
    /// A segment is sealed at this age (5 s).
    pub segment_max_age: Duration,
    /// Writability probe period of the replay directory (10 s).
    pub dir_probe_interval: Duration,
    /// An unlocked `.open` segment of another instance is treated as
    /// orphaned (and recovered) once unmodified this long (30 s).
    pub orphan_segment_age: Duration,
    /// `AUDIT_SHUTDOWN_GRACE_MS`: how long a graceful shutdown waits for
    /// reserved slots to be used before it stops draining (10 s).
    pub shutdown_grace: Duration,
}

impl AuditEmitterConfig {
    /// The spec's defaults for `service` on `instance`, without an HMAC key.
    #[must_use]
    pub fn new(service: impl Into<String>, instance: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            instance: instance.into(),
            stream: AUDIT_EVENTS.to_owned(),
            hmac_key: None,
            emit_mode: AuditEmitMode::Async,
            buffer_capacity: 10_000,
            flush_interval: Duration::from_millis(10),
            batch_max: 500,
            xadd_timeout: Duration::from_millis(500),
            circuit_failures: 3,
            circuit_probe_interval: Duration::from_secs(1),
            stream_spill_len: 1_000_000,
            stream_len_check_interval: Duration::from_secs(1),
            replay_dir: PathBuf::from(DEFAULT_REPLAY_DIR),
            replay_interval: Duration::from_millis(1000),
            replay_rate: 5_000,
            replay_xadd_timeout: Duration::from_secs(2),
            replay_max_bytes: 1 << 30,
            replay_min_free_bytes: 256 << 20,
            segment_max_bytes: 16 << 20,
            segment_max_events: 10_000,
            segment_max_age: Duration::from_secs(5),
            dir_probe_interval: Duration::from_secs(10),
            orphan_segment_age: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }

    /// Reads the configuration of `service` through `lookup` (a stand-in for
    /// the environment): `CARACAL_INSTANCE_ID` (default: `HOSTNAME`, then the
    /// kernel's hostname), `AUDIT_HMAC_KEY` / `AUDIT_HMAC_KEY_FILE`,
    /// `AUDIT_EMIT_MODE`, `AUDIT_BUFFER_CAPACITY`, `AUDIT_XADD_TIMEOUT_MS`,
    /// `AUDIT_STREAM_SPILL_LEN`, `AUDIT_REPLAY_DIR`,
    /// `AUDIT_REPLAY_INTERVAL_MS`, `AUDIT_REPLAY_RATE`,
    /// `AUDIT_REPLAY_MAX_BYTES`, `AUDIT_REPLAY_MIN_FREE_BYTES`,
    /// `AUDIT_SHUTDOWN_GRACE_MS`. Empty values count as unset.
    ///
    /// # Errors
    ///
    /// [`AuditConfigError`], one line naming the variable and the problem.
    pub fn from_lookup(
        service: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, AuditConfigError> {
        let get = |var: &str| lookup(var).filter(|v| !v.trim().is_empty());
        let instance = match get("CARACAL_INSTANCE_ID") {
            Some(value) => value.trim().to_owned(),
            None => default_instance(&get),
        };
        let mut config = Self::new(service, instance);
        check_path_name("service", &config.service)?;
        check_path_name("CARACAL_INSTANCE_ID", &config.instance)?;

        config.hmac_key = HmacKey::from_lookup(AUDIT_HMAC_KEY_VAR, |var| get(var))?;
        if let Some(mode) = get("AUDIT_EMIT_MODE") {
            config.emit_mode = match mode.trim() {
                "async" => AuditEmitMode::Async,
                "sync" => AuditEmitMode::Sync,
                other => {
                    return Err(AuditConfigError::invalid(
                        "AUDIT_EMIT_MODE",
                        format!("expected `async` or `sync`, found {other:?}"),
                    ));
                }
            };
        }
        if let Some(n) = positive(&get, "AUDIT_BUFFER_CAPACITY")? {
            config.buffer_capacity = usize::try_from(n).map_err(|_too_big| {
                AuditConfigError::invalid("AUDIT_BUFFER_CAPACITY", "value too large".to_owned())
            })?;
        }
        if let Some(ms) = positive(&get, "AUDIT_XADD_TIMEOUT_MS")? {
            config.xadd_timeout = Duration::from_millis(ms);
        }
        if let Some(n) = positive(&get, "AUDIT_STREAM_SPILL_LEN")? {
            config.stream_spill_len = n;
        }
        if let Some(dir) = get("AUDIT_REPLAY_DIR") {
            let dir = PathBuf::from(dir.trim());
            if !dir.is_absolute() {
                return Err(AuditConfigError::invalid(
                    "AUDIT_REPLAY_DIR",
                    format!(
                        "expected an absolute path, found {:?}",
                        dir.display().to_string()
                    ),
                ));
            }
            config.replay_dir = dir;
        }
        if let Some(ms) = positive(&get, "AUDIT_REPLAY_INTERVAL_MS")? {
            config.replay_interval = Duration::from_millis(ms);
        }
        if let Some(n) = positive(&get, "AUDIT_REPLAY_RATE")? {
            config.replay_rate = u32::try_from(n).map_err(|_too_big| {
                AuditConfigError::invalid("AUDIT_REPLAY_RATE", "value too large".to_owned())
            })?;
        }
        if let Some(n) = positive(&get, "AUDIT_REPLAY_MAX_BYTES")? {
            config.replay_max_bytes = n;
        }
        if let Some(value) = get("AUDIT_REPLAY_MIN_FREE_BYTES") {
            config.replay_min_free_bytes = parse_u64("AUDIT_REPLAY_MIN_FREE_BYTES", &value)?;
        }
        if let Some(ms) = positive(&get, "AUDIT_SHUTDOWN_GRACE_MS")? {
            config.shutdown_grace = Duration::from_millis(ms);
        }
        Ok(config)
    }

    /// Reads the configuration from the process environment; see
    /// [`AuditEmitterConfig::from_lookup`].
    ///
    /// # Errors
    ///
    /// As [`AuditEmitterConfig::from_lookup`].
    pub fn from_env(service: &str) -> Result<Self, AuditConfigError> {
        Self::from_lookup(service, &|var| std::env::var(var).ok())
    }

    /// This process's replay subdirectory: `<replay_dir>/<service>-<instance>`.
    #[must_use]
    pub fn instance_replay_dir(&self) -> PathBuf {
        self.replay_dir
            .join(format!("{}-{}", self.service, self.instance))
    }
}

impl fmt::Debug for AuditEmitterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditEmitterConfig")
            .field("service", &self.service)
            .field("instance", &self.instance)
            .field("stream", &self.stream)
            .field("hmac_key", &self.hmac_key.as_ref().map(|_| "<redacted>"))
            .field("emit_mode", &self.emit_mode)
            .field("buffer_capacity", &self.buffer_capacity)
            .field("xadd_timeout", &self.xadd_timeout)
            .field("stream_spill_len", &self.stream_spill_len)
            .field("replay_dir", &self.replay_dir)
            .field("replay_interval", &self.replay_interval)
            .field("replay_rate", &self.replay_rate)
            .field("replay_max_bytes", &self.replay_max_bytes)
            .finish_non_exhaustive()
    }
}

/// Why the emitter configuration was rejected. Values of secrets never appear.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditConfigError {
    /// A variable has a bad value.
    #[error("{var}: {problem}")]
    Invalid {
        /// The variable, e.g. `AUDIT_BUFFER_CAPACITY`.
        var: &'static str,
        /// What is wrong (the value is not secret and may be shown).
        problem: String,
    },
    /// `AUDIT_HMAC_KEY` (or its `_FILE`) could not be loaded.
    #[error(transparent)]
    HmacKey(#[from] KeyConfigError),
}

impl AuditConfigError {
    fn invalid(var: &'static str, problem: String) -> Self {
        Self::Invalid { var, problem }
    }
}

fn parse_u64(var: &'static str, value: &str) -> Result<u64, AuditConfigError> {
    value.trim().parse::<u64>().map_err(|_not_a_number| {
        AuditConfigError::invalid(
            var,
            format!("expected a non-negative integer, found {:?}", value.trim()),
        )
    })
}

fn positive(
    get: &dyn Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<Option<u64>, AuditConfigError> {
    let Some(value) = get(var) else {
        return Ok(None);
    };
    match parse_u64(var, &value)? {
        0 => Err(AuditConfigError::invalid(
            var,
            "expected a positive integer, found 0".to_owned(),
        )),
        n => Ok(Some(n)),
    }
}

/// Service and instance names become a directory name: keep them to a safe
/// alphabet so they can never escape the replay directory.
fn check_path_name(var: &'static str, value: &str) -> Result<(), AuditConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AuditConfigError::invalid(
            var,
            format!("expected 1-128 characters of [A-Za-z0-9._-], found {value:?}"),
        ))
    }
}

fn default_instance(get: &dyn Fn(&str) -> Option<String>) -> String {
    if let Some(host) = get("HOSTNAME") {
        return host.trim().to_owned();
    }
    for path in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            let host = text.trim();
            if !host.is_empty() {
                return host.to_owned();
            }
        }
    }
    "localhost".to_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::{AuditConfigError, AuditEmitMode, AuditEmitterConfig};

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn defaults_follow_the_spec() {
        let config =
            AuditEmitterConfig::from_lookup("sts", &lookup(&[("CARACAL_INSTANCE_ID", "sts-0")]))
                .unwrap();
        assert_eq!(config.instance, "sts-0");
        assert_eq!(config.stream, "caracal.audit.events");
        assert_eq!(config.buffer_capacity, 10_000);
        assert_eq!(config.xadd_timeout, Duration::from_millis(500));
        assert_eq!(config.stream_spill_len, 1_000_000);
        assert_eq!(config.replay_interval, Duration::from_secs(1));
        assert_eq!(config.replay_rate, 5_000);
        assert_eq!(config.replay_max_bytes, 1 << 30);
        assert_eq!(config.replay_min_free_bytes, 256 << 20);
        assert_eq!(config.emit_mode, AuditEmitMode::Async);
        assert!(config.hmac_key.is_none());
        assert_eq!(
            config.instance_replay_dir(),
            std::path::Path::new("/var/lib/caracal/audit-replay/sts-sts-0")
        );
    }

    #[test]
    fn variables_override_defaults() {
        let key = "ab".repeat(32);
        let config = AuditEmitterConfig::from_lookup(
            "gateway",
            &lookup(&[
                ("CARACAL_INSTANCE_ID", "gw-1"),
                ("AUDIT_HMAC_KEY", &key),
                ("AUDIT_EMIT_MODE", "sync"),
                ("AUDIT_BUFFER_CAPACITY", "42"),
                ("AUDIT_XADD_TIMEOUT_MS", "250"),
                ("AUDIT_REPLAY_DIR", "/tmp/replay"),
                ("AUDIT_REPLAY_RATE", "10"),
                ("AUDIT_REPLAY_MIN_FREE_BYTES", "0"),
            ]),
        )
        .unwrap();
        assert!(config.hmac_key.is_some());
        assert_eq!(config.emit_mode, AuditEmitMode::Sync);
        assert_eq!(config.buffer_capacity, 42);
        assert_eq!(config.xadd_timeout, Duration::from_millis(250));
        assert_eq!(config.replay_dir, std::path::Path::new("/tmp/replay"));
        assert_eq!(config.replay_rate, 10);
        assert_eq!(config.replay_min_free_bytes, 0);
        assert!(!format!("{config:?}").contains(&key));
    }

    #[test]
    fn bad_values_name_the_variable_in_one_line() {
        let cases = [
            ("AUDIT_BUFFER_CAPACITY", "ten"),
            ("AUDIT_BUFFER_CAPACITY", "0"),
            ("AUDIT_XADD_TIMEOUT_MS", "-1"),
            ("AUDIT_EMIT_MODE", "maybe"),
            ("AUDIT_REPLAY_DIR", "relative/dir"),
            ("CARACAL_INSTANCE_ID", "../escape"),
        ];
        for (var, value) in cases {
            let mut vars = vec![(var, value)];
            if var != "CARACAL_INSTANCE_ID" {
                vars.push(("CARACAL_INSTANCE_ID", "i-0"));
            }
            let err = AuditEmitterConfig::from_lookup("sts", &lookup(&vars)).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with(var), "{text}");
            assert!(!text.contains('\n'), "{text}");
            assert!(matches!(err, AuditConfigError::Invalid { .. }));
        }
    }

    #[test]
    fn bad_hmac_key_names_the_variable_not_the_value() {
        let err = AuditEmitterConfig::from_lookup(
            "sts",
            &lookup(&[("CARACAL_INSTANCE_ID", "i"), ("AUDIT_HMAC_KEY", "abcd")]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("AUDIT_HMAC_KEY"), "{text}");
        assert!(!text.contains("abcd"), "{text}");
    }

    #[test]
    fn instance_defaults_to_the_hostname() {
        let config =
            AuditEmitterConfig::from_lookup("sts", &lookup(&[("HOSTNAME", "host-7")])).unwrap();
        assert_eq!(config.instance, "host-7");
    }
}
