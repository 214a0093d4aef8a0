//! Dispatcher settings (`storage-and-events.md` §7.3) and their parsing from the environment.

use std::time::Duration;

/// Validated dispatcher settings. [`OutboxConfig::default`] gives the spec's defaults for the
/// API and the STS; [`OutboxConfig::from_lookup`] reads the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    /// `OUTBOX_POLL_MS`: the fallback poll (250 ms for the API and the STS, 1000 ms for the
    /// Coordinator). A producer's [`super::OutboxHandle::wake`] starts a round at once.
    pub poll: Duration,
    /// `OUTBOX_BATCH_SIZE`: rows per claim (100).
    pub batch_size: u32,
    /// `OUTBOX_LOCK_SEC`: the lease of a claimed row (30 s).
    pub lock: Duration,
    /// `OUTBOX_MAX_ATTEMPTS`: attempts after which a permanent failure makes a row `dead` (10).
    pub max_attempts: u32,
    /// `STREAMS_MAXLEN`: the approximate trim of fan-out streams (100,000).
    pub streams_maxlen: u64,
    /// `OUTBOX_READY_DEAD_MAX`: `/ready` fails with `outbox_dead` above this many dead rows
    /// (0 = off, the default).
    pub ready_dead_max: u64,
    /// `OUTBOX_READY_MAX_AGE_SECS`: `/ready` fails with `outbox_stalled` when the oldest pending
    /// row is older (0 = off, the default).
    pub ready_max_age_secs: u64,
    /// Backoff unit: the first retry waits this long, doubling per attempt (1 s; tests only).
    pub backoff_base: Duration,
    /// Backoff cap before jitter (60 s; tests only).
    pub backoff_max: Duration,
    /// Limit on connecting to Redis and on one pipelined publication (5 s).
    pub redis_timeout: Duration,
    /// How often pending and dead counts are re-read from Postgres for metrics (5 s).
    pub stats_interval: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(250),
            batch_size: 100,
            lock: Duration::from_secs(30),
            max_attempts: 10,
            streams_maxlen: 100_000,
            ready_dead_max: 0,
            ready_max_age_secs: 0,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            redis_timeout: Duration::from_secs(5),
            stats_interval: Duration::from_secs(5),
        }
    }
}

/// A setting, its upstream alias, and the accepted range.
struct Setting {
    var: &'static str,
    aliases: &'static [&'static str],
    min: u64,
    max: u64,
}

const POLL: Setting = Setting {
    var: "OUTBOX_POLL_MS",
    aliases: &["CARACAL_OUTBOX_POLL_MS"],
    min: 1,
    max: 60_000,
};
const BATCH: Setting = Setting {
    var: "OUTBOX_BATCH_SIZE",
    // Upstream spelled it `CARACAL_OUTBOX_BATCH`.
    aliases: &["CARACAL_OUTBOX_BATCH_SIZE", "CARACAL_OUTBOX_BATCH"],
    min: 1,
    max: 10_000,
};
const LOCK: Setting = Setting {
    var: "OUTBOX_LOCK_SEC",
    aliases: &["CARACAL_OUTBOX_LOCK_SEC"],
    min: 1,
    max: 3600,
};
const MAX_ATTEMPTS: Setting = Setting {
    var: "OUTBOX_MAX_ATTEMPTS",
    aliases: &["CARACAL_OUTBOX_MAX_ATTEMPTS"],
    min: 1,
    max: 1000,
};
const MAXLEN: Setting = Setting {
    var: "STREAMS_MAXLEN",
    aliases: &["CARACAL_OUTBOX_STREAM_MAXLEN"],
    min: 1,
    max: 1_000_000_000,
};
const READY_DEAD_MAX: Setting = Setting {
    var: "OUTBOX_READY_DEAD_MAX",
    aliases: &[],
    min: 0,
    max: 1_000_000_000,
};
const READY_MAX_AGE: Setting = Setting {
    var: "OUTBOX_READY_MAX_AGE_SECS",
    aliases: &[],
    min: 0,
    max: 31_536_000,
};

impl OutboxConfig {
    /// Reads `OUTBOX_POLL_MS`, `OUTBOX_BATCH_SIZE`, `OUTBOX_LOCK_SEC`, `OUTBOX_MAX_ATTEMPTS`,
    /// `STREAMS_MAXLEN`, `OUTBOX_READY_DEAD_MAX` and `OUTBOX_READY_MAX_AGE_SECS` through
    /// `lookup` over the defaults of the API and the STS. Upstream's `CARACAL_OUTBOX_*` names
    /// are accepted when the new name is unset. Empty values count as unset.
    ///
    /// # Errors
    ///
    /// [`OutboxConfigError`]: one line naming the variable that was read.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, OutboxConfigError> {
        Self::default().with_lookup(lookup)
    }

    /// Applies the environment over `self` (the Coordinator starts from a 1000 ms poll).
    ///
    /// # Errors
    ///
    /// As [`OutboxConfig::from_lookup`].
    pub fn with_lookup(
        mut self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, OutboxConfigError> {
        if let Some(ms) = read(lookup, &POLL)? {
            self.poll = Duration::from_millis(ms);
        }
        if let Some(n) = read(lookup, &BATCH)? {
            self.batch_size = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(secs) = read(lookup, &LOCK)? {
            self.lock = Duration::from_secs(secs);
        }
        if let Some(n) = read(lookup, &MAX_ATTEMPTS)? {
            self.max_attempts = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(n) = read(lookup, &MAXLEN)? {
            self.streams_maxlen = n;
        }
        if let Some(n) = read(lookup, &READY_DEAD_MAX)? {
            self.ready_dead_max = n;
        }
        if let Some(n) = read(lookup, &READY_MAX_AGE)? {
            self.ready_max_age_secs = n;
        }
        Ok(self)
    }
}

/// The value of the setting's variable, else of its first alias that is set.
fn read(
    lookup: &dyn Fn(&str) -> Option<String>,
    setting: &Setting,
) -> Result<Option<u64>, OutboxConfigError> {
    let found = std::iter::once(setting.var)
        .chain(setting.aliases.iter().copied())
        .find_map(|var| {
            lookup(var)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (var, v))
        });
    let Some((var, value)) = found else {
        return Ok(None);
    };
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (setting.min..=setting.max).contains(n))
        .map(Some)
        .ok_or_else(|| OutboxConfigError {
            var,
            problem: format!(
                "expected an integer between {} and {}, found {:?}",
                setting.min,
                setting.max,
                value.trim()
            ),
        })
}

/// A dispatcher setting is malformed: one line naming the variable (none of them is secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct OutboxConfigError {
    /// The variable that was read, e.g. `OUTBOX_POLL_MS` or an upstream alias.
    pub var: &'static str,
    /// What is wrong.
    pub problem: String,
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |var| map.get(var).cloned()
    }

    #[test]
    fn defaults_match_the_spec_table() {
        let config = OutboxConfig::from_lookup(&lookup(&[])).unwrap();
        assert_eq!(config.poll, Duration::from_millis(250));
        assert_eq!(config.batch_size, 100);
        assert_eq!(config.lock, Duration::from_secs(30));
        assert_eq!(config.max_attempts, 10);
        assert_eq!(config.streams_maxlen, 100_000);
        assert_eq!((config.ready_dead_max, config.ready_max_age_secs), (0, 0));
    }

    #[test]
    fn new_names_win_over_upstream_aliases() {
        let config = OutboxConfig::from_lookup(&lookup(&[
            ("OUTBOX_POLL_MS", "50"),
            ("CARACAL_OUTBOX_POLL_MS", "900"),
            ("CARACAL_OUTBOX_BATCH", "7"),
            ("CARACAL_OUTBOX_LOCK_SEC", "5"),
            ("CARACAL_OUTBOX_MAX_ATTEMPTS", "3"),
            ("STREAMS_MAXLEN", ""),
            ("CARACAL_OUTBOX_STREAM_MAXLEN", "42"),
        ]))
        .unwrap();
        assert_eq!(config.poll, Duration::from_millis(50));
        assert_eq!(config.batch_size, 7);
        assert_eq!(config.lock, Duration::from_secs(5));
        assert_eq!(config.max_attempts, 3);
        assert_eq!(config.streams_maxlen, 42);
    }

    #[test]
    fn the_coordinator_keeps_its_own_poll_default() {
        let config = OutboxConfig {
            poll: Duration::from_millis(1000),
            ..OutboxConfig::default()
        }
        .with_lookup(&lookup(&[("OUTBOX_BATCH_SIZE", "10")]))
        .unwrap();
        assert_eq!(config.poll, Duration::from_millis(1000));
        assert_eq!(config.batch_size, 10);
    }

    #[test]
    fn a_bad_value_names_the_variable_it_came_from() {
        for (var, value) in [
            ("OUTBOX_POLL_MS", "0"),
            ("OUTBOX_BATCH_SIZE", "many"),
            ("CARACAL_OUTBOX_LOCK_SEC", "-1"),
            ("OUTBOX_MAX_ATTEMPTS", "1001"),
            ("STREAMS_MAXLEN", "1.5"),
        ] {
            let error = OutboxConfig::from_lookup(&lookup(&[(var, value)])).unwrap_err();
            let text = error.to_string();
            assert!(text.starts_with(&format!("{var}: ")), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
    }
}
