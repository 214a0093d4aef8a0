//! Reading a binding's configuration.
//!
//! The gateway stores a JSON object with each plugin binding and passes its text to
//! `configure` (once, when the binding is loaded) and again in [`Call::config`](crate::Call)
//! with every call. [`parse`] reads it into the plugin's own type with serde. Mark that type
//! `#[serde(deny_unknown_fields)]`: a mistyped key in an authorization rule must be refused at
//! `configure`, not silently ignored.

use std::fmt;

use serde::de::DeserializeOwned;

/// Read the configuration text into `T`.
///
/// Blank text counts as `{}`, the gateway's value when a binding has no configuration. The
/// error names the problem and its position, for example
/// ``invalid configuration: unknown field `methds`, expected one of `methods`, `path_prefixes` at line 1 column 9``,
/// and is meant to be returned from `configure` as it is.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_json::from_str(text).map_err(|source| ConfigError {
        message: source.to_string(),
    })
}

/// A configuration that could not be read or that a plugin refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    /// A configuration the plugin refuses for a reason of its own (a value out of range, two
    /// settings that contradict each other). Name the key and the problem.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Lets `configure` use `?` on a [`ConfigError`]: the message becomes the error the gateway
/// reports (400 `invalid_plugin_config` from the admin API).
impl From<ConfigError> for String {
    fn from(err: ConfigError) -> Self {
        err.to_string()
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        #[serde(default)]
        header: Option<String>,
    }

    #[test]
    fn blank_text_reads_as_an_empty_object() {
        assert_eq!(parse::<Settings>("  ").unwrap(), Settings { header: None });
    }

    #[test]
    fn a_known_key_is_read() {
        let settings = parse::<Settings>(r#"{"header": "x-sig"}"#).unwrap();
        assert_eq!(settings.header.as_deref(), Some("x-sig"));
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_name_and_position() {
        let message = parse::<Settings>(r#"{"headr": "x"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("invalid configuration: unknown field `headr`"),
            "{message}"
        );
        assert!(message.contains("line 1 column"), "{message}");
    }

    #[test]
    fn text_that_is_not_json_is_refused() {
        let message = String::from(parse::<Settings>("header=x").unwrap_err());
        assert!(message.starts_with("invalid configuration: "), "{message}");
    }

    #[test]
    fn a_plugin_refusal_reads_like_a_parse_error() {
        let err = ConfigError::invalid("hours_utc.from must be 0 to 23, got 24");
        assert_eq!(
            err.to_string(),
            "invalid configuration: hours_utc.from must be 0 to 23, got 24"
        );
    }
}
