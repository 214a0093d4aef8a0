//! Evaluation limits (`authority-and-policy.md` §5.2 step 4, §9).

use std::num::NonZeroU32;
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;

/// Environment variable that sets the per-evaluation time limit, in milliseconds.
pub const EVAL_TIMEOUT_ENV: &str = "CARACAL_POLICY_EVAL_TIMEOUT_MS";
/// Default per-evaluation time limit, in milliseconds.
pub const DEFAULT_EVAL_TIMEOUT_MS: u64 = 20;
/// Smallest accepted per-evaluation time limit, in milliseconds.
pub const MIN_EVAL_TIMEOUT_MS: u64 = 1;
/// Largest accepted per-evaluation time limit, in milliseconds.
pub const MAX_EVAL_TIMEOUT_MS: u64 = 1000;
/// Time limit for materializing the adopter data of one bundle (§5.2 step 2).
pub const MATERIALIZATION_LIMIT: Duration = Duration::from_secs(2);

/// Work units between two clock reads of regorus's execution timer (§5.2 step 4).
const TIMER_CHECK_INTERVAL: NonZeroU32 = match NonZeroU32::new(64) {
    Some(interval) => interval,
    None => NonZeroU32::MIN,
};

/// A bad policy setting; the message names the key and the accepted range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyConfigError {
    /// The evaluation time limit is not an integer in `1..=1000`.
    #[error(
        "{EVAL_TIMEOUT_ENV} must be an integer number of milliseconds in 1..=1000, got {raw:?}"
    )]
    EvalTimeoutOutOfRange {
        /// The rejected value as given.
        raw: String,
    },
}

/// Validated policy settings, shared by every bundle a process builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyConfig {
    eval_timeout: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            eval_timeout: Duration::from_millis(DEFAULT_EVAL_TIMEOUT_MS),
        }
    }
}

impl PolicyConfig {
    /// Settings with a per-evaluation limit of `eval_timeout_ms` (accepted range `1..=1000`).
    pub fn with_eval_timeout_ms(eval_timeout_ms: u64) -> Result<Self, PolicyConfigError> {
        if !(MIN_EVAL_TIMEOUT_MS..=MAX_EVAL_TIMEOUT_MS).contains(&eval_timeout_ms) {
            return Err(PolicyConfigError::EvalTimeoutOutOfRange {
                raw: eval_timeout_ms.to_string(),
            });
        }
        Ok(Self {
            eval_timeout: Duration::from_millis(eval_timeout_ms),
        })
    }

    /// Settings from the raw value of [`EVAL_TIMEOUT_ENV`]; `None` (unset) gives the default.
    pub fn from_env_value(raw: Option<&str>) -> Result<Self, PolicyConfigError> {
        let Some(raw) = raw else {
            return Ok(Self::default());
        };
        let millis = raw.trim().parse::<u64>().map_err(|_parse_error| {
            PolicyConfigError::EvalTimeoutOutOfRange {
                raw: raw.to_owned(),
            }
        })?;
        Self::with_eval_timeout_ms(millis)
    }

    /// The per-evaluation time limit.
    pub const fn eval_timeout(&self) -> Duration {
        self.eval_timeout
    }

    /// The regorus timer configuration for one evaluation.
    pub(crate) const fn eval_timer(&self) -> ExecutionTimerConfig {
        timer(self.eval_timeout)
    }
}

/// A regorus timer configuration with our check interval.
pub(crate) const fn timer(limit: Duration) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit,
        check_interval: TIMER_CHECK_INTERVAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_timeout_uses_the_twenty_millisecond_default() {
        let config = PolicyConfig::from_env_value(None).unwrap();
        assert_eq!(config.eval_timeout(), Duration::from_millis(20));
        assert_eq!(config, PolicyConfig::default());
    }

    #[test]
    fn timeout_accepts_the_range_bounds() {
        assert_eq!(
            PolicyConfig::from_env_value(Some("1"))
                .unwrap()
                .eval_timeout(),
            Duration::from_millis(1)
        );
        assert_eq!(
            PolicyConfig::from_env_value(Some("1000"))
                .unwrap()
                .eval_timeout(),
            Duration::from_millis(1000)
        );
    }

    #[test]
    fn timeout_outside_the_range_or_not_a_number_is_rejected_naming_the_key() {
        for raw in ["0", "1001", "-5", "20ms", ""] {
            let err = PolicyConfig::from_env_value(Some(raw)).unwrap_err();
            assert!(err.to_string().contains(EVAL_TIMEOUT_ENV), "{err}");
        }
    }

    #[test]
    fn timer_checks_the_clock_every_64_work_units() {
        let config = PolicyConfig::default().eval_timer();
        assert_eq!(config.check_interval.get(), 64);
        assert_eq!(config.limit, Duration::from_millis(20));
    }
}
