//! The rules of one binding: read and checked once, then applied to each request.

use std::fmt;

use caracal_plugin_sdk::config::{self, ConfigError};
use caracal_plugin_sdk::time::{UtcDateTime, Weekday};
use serde::Deserialize;

/// The longest piece of a request path quoted in a denial reason (the gateway keeps reasons
/// to 1,024 bytes).
const QUOTED_PATH_MAX: usize = 256;

/// The configuration as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    methods: Option<Vec<String>>,
    path_prefixes: Option<Vec<String>>,
    hours_utc: Option<RawHours>,
    weekdays_utc: Option<Vec<String>>,
}

/// `hours_utc` as written; wide integers so that an out-of-range hour gets our message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHours {
    from: i64,
    to: i64,
}

/// The rules of one binding, checked. `None` places no restriction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rules {
    methods: Option<Vec<String>>,
    path_prefixes: Option<Vec<String>>,
    hours: Option<HourWindow>,
    weekdays: Option<Vec<Weekday>>,
}

/// The UTC hours `[from, to)`, wrapping past midnight when `from > to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HourWindow {
    from: u8,
    to: u8,
}

/// What the rules look at in a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) now_unix_ms: i64,
}

/// The first rule a request breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Violation {
    Method { method: String },
    PathOutsidePrefixes { path: String },
    PathDotSegment { path: String },
    Hour { hour: u8, window: HourWindow },
    Weekday { weekday: Weekday },
}

impl Rules {
    /// Read and check a binding's configuration.
    pub(crate) fn parse(text: &str) -> Result<Rules, ConfigError> {
        let raw: RawRules = config::parse(text)?;
        Ok(Rules {
            methods: raw.methods.map(check_methods).transpose()?,
            path_prefixes: raw.path_prefixes.map(check_prefixes).transpose()?,
            hours: raw.hours_utc.map(check_hours).transpose()?,
            weekdays: raw.weekdays_utc.map(check_weekdays).transpose()?,
        })
    }

    /// Check a request against every rule, in the documented order.
    pub(crate) fn check(&self, request: &Request<'_>) -> Result<(), Violation> {
        if let Some(methods) = &self.methods
            && !methods.iter().any(|method| method == request.method)
        {
            return Err(Violation::Method {
                method: quoted(request.method),
            });
        }
        if let Some(prefixes) = &self.path_prefixes {
            if has_dot_segment(request.path) {
                return Err(Violation::PathDotSegment {
                    path: quoted(request.path),
                });
            }
            if !prefixes
                .iter()
                .any(|prefix| is_under_prefix(request.path, prefix))
            {
                return Err(Violation::PathOutsidePrefixes {
                    path: quoted(request.path),
                });
            }
        }
        let now = UtcDateTime::from_unix_ms(request.now_unix_ms);
        if let Some(window) = self.hours
            && !window.contains(now.hour)
        {
            return Err(Violation::Hour {
                hour: now.hour,
                window,
            });
        }
        if let Some(weekdays) = &self.weekdays
            && !weekdays.contains(&now.weekday)
        {
            return Err(Violation::Weekday {
                weekday: now.weekday,
            });
        }
        Ok(())
    }
}

impl HourWindow {
    fn contains(self, hour: u8) -> bool {
        if self.from < self.to {
            self.from <= hour && hour < self.to
        } else {
            hour >= self.from || hour < self.to
        }
    }
}

impl Violation {
    /// The configuration key of the broken rule.
    pub(crate) fn rule(&self) -> &'static str {
        match self {
            Violation::Method { .. } => "methods",
            Violation::PathOutsidePrefixes { .. } | Violation::PathDotSegment { .. } => {
                "path_prefixes"
            }
            Violation::Hour { .. } => "hours_utc",
            Violation::Weekday { .. } => "weekdays_utc",
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Method { method } => write!(f, "method {method} is not allowed"),
            Violation::PathOutsidePrefixes { path } => {
                write!(f, "path {path} is not under an allowed prefix")
            }
            Violation::PathDotSegment { path } => {
                write!(f, "path {path} has a dot segment")
            }
            Violation::Hour { hour, window } => write!(
                f,
                "hour {hour:02} UTC is outside {:02}:00-{:02}:00 UTC",
                window.from, window.to
            ),
            Violation::Weekday { weekday } => write!(f, "weekday {weekday} is not allowed"),
        }?;
        write!(f, " (rule {})", self.rule())
    }
}

fn check_methods(methods: Vec<String>) -> Result<Vec<String>, ConfigError> {
    if methods.is_empty() {
        return Err(ConfigError::invalid(
            "methods must not be empty (leave the key out to allow every method)",
        ));
    }
    for (index, method) in methods.iter().enumerate() {
        let is_method = !method.is_empty()
            && method
                .bytes()
                .all(|byte| is_token_byte(byte) && !byte.is_ascii_lowercase());
        if !is_method {
            return Err(ConfigError::invalid(format!(
                "methods[{index}] {method:?} is not a method name (uppercase, such as \"GET\")"
            )));
        }
    }
    Ok(methods)
}

fn check_prefixes(prefixes: Vec<String>) -> Result<Vec<String>, ConfigError> {
    if prefixes.is_empty() {
        return Err(ConfigError::invalid(
            "path_prefixes must not be empty (leave the key out to allow every path)",
        ));
    }
    for (index, prefix) in prefixes.iter().enumerate() {
        if !prefix.starts_with('/') {
            return Err(ConfigError::invalid(format!(
                "path_prefixes[{index}] {prefix:?} must start with \"/\""
            )));
        }
        if prefix
            .chars()
            .any(|c| c == '?' || c == '#' || c.is_whitespace() || c.is_control())
        {
            return Err(ConfigError::invalid(format!(
                "path_prefixes[{index}] {prefix:?} must be a path only (no query, fragment, space or control character)"
            )));
        }
        if has_dot_segment(prefix) {
            return Err(ConfigError::invalid(format!(
                "path_prefixes[{index}] {prefix:?} must not have a \".\" or \"..\" segment"
            )));
        }
    }
    Ok(prefixes)
}

fn check_hours(raw: RawHours) -> Result<HourWindow, ConfigError> {
    let from = u8::try_from(raw.from)
        .ok()
        .filter(|hour| *hour <= 23)
        .ok_or_else(|| {
            ConfigError::invalid(format!("hours_utc.from must be 0 to 23, got {}", raw.from))
        })?;
    let to = u8::try_from(raw.to)
        .ok()
        .filter(|hour| *hour <= 24)
        .ok_or_else(|| {
            ConfigError::invalid(format!("hours_utc.to must be 0 to 24, got {}", raw.to))
        })?;
    if from == to || (from == 0 && to == 24) {
        return Err(ConfigError::invalid(format!(
            "hours_utc from {from} to {to} is not a window (leave the key out to allow every hour)"
        )));
    }
    Ok(HourWindow { from, to })
}

fn check_weekdays(names: Vec<String>) -> Result<Vec<Weekday>, ConfigError> {
    if names.is_empty() {
        return Err(ConfigError::invalid(
            "weekdays_utc must not be empty (leave the key out to allow every day)",
        ));
    }
    names
        .iter()
        .enumerate()
        .map(|(index, name)| {
            Weekday::from_short_name(name).ok_or_else(|| {
                ConfigError::invalid(format!(
                    "weekdays_utc[{index}] {name:?} is not one of mon, tue, wed, thu, fri, sat, sun"
                ))
            })
        })
        .collect()
}

/// Whether `path` is `prefix` or lies below it, segment by segment.
fn is_under_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// Whether a segment of `path` is `.` or `..`, also when its dots are percent-encoded.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

/// An RFC 9110 `tchar`.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// `text` cut to [`QUOTED_PATH_MAX`] bytes (on a character boundary), marked when cut.
fn quoted(text: &str) -> String {
    if text.len() <= QUOTED_PATH_MAX {
        return text.to_owned();
    }
    let mut end = QUOTED_PATH_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Monday 2026-01-05 at `hour`:30 UTC.
    fn monday_at(hour: i64) -> i64 {
        1_767_571_200_000 + hour * 3_600_000 + 30 * 60_000
    }

    fn request<'a>(method: &'a str, path: &'a str, now_unix_ms: i64) -> Request<'a> {
        Request {
            method,
            path,
            now_unix_ms,
        }
    }

    fn refusal(config: &str) -> String {
        Rules::parse(config).unwrap_err().to_string()
    }

    #[test]
    fn an_empty_configuration_allows_everything() {
        let rules = Rules::parse("{}").unwrap();
        assert_eq!(
            rules.check(&request("PATCH", "/anything/../at-all", monday_at(3))),
            Ok(())
        );
    }

    #[test]
    fn only_listed_methods_are_allowed() {
        let rules = Rules::parse(r#"{"methods": ["GET", "HEAD"]}"#).unwrap();
        assert_eq!(rules.check(&request("HEAD", "/", 0)), Ok(()));
        let violation = rules.check(&request("POST", "/", 0)).unwrap_err();
        assert_eq!(
            violation.to_string(),
            "method POST is not allowed (rule methods)"
        );
        assert_eq!(violation.rule(), "methods");
    }

    #[test]
    fn a_prefix_allows_itself_and_what_lies_below_it_segment_by_segment() {
        let rules = Rules::parse(r#"{"path_prefixes": ["/items", "/search/"]}"#).unwrap();
        for allowed in ["/items", "/items/", "/items/7", "/search/q"] {
            assert_eq!(
                rules.check(&request("GET", allowed, 0)),
                Ok(()),
                "{allowed}"
            );
        }
        for refused in ["/itemsx", "/item", "/search", "/", "/admin/items"] {
            let violation = rules.check(&request("GET", refused, 0)).unwrap_err();
            assert_eq!(
                violation.to_string(),
                format!("path {refused} is not under an allowed prefix (rule path_prefixes)")
            );
        }
    }

    #[test]
    fn a_path_with_a_dot_segment_is_refused_even_when_encoded() {
        let rules = Rules::parse(r#"{"path_prefixes": ["/items"]}"#).unwrap();
        for sneaky in [
            "/items/../admin",
            "/items/%2e%2E/admin",
            "/items/./7",
            "/items/.%2e",
        ] {
            let violation = rules.check(&request("GET", sneaky, 0)).unwrap_err();
            assert!(
                matches!(violation, Violation::PathDotSegment { .. }),
                "{sneaky}: {violation}"
            );
            assert_eq!(violation.rule(), "path_prefixes");
        }
        assert_eq!(rules.check(&request("GET", "/items/..data", 0)), Ok(()));
    }

    #[test]
    fn a_long_path_is_cut_in_the_reason() {
        let rules = Rules::parse(r#"{"path_prefixes": ["/items"]}"#).unwrap();
        let path = format!("/{}", "é".repeat(400));
        let reason = rules
            .check(&request("GET", &path, 0))
            .unwrap_err()
            .to_string();
        assert!(reason.len() < 400, "{}", reason.len());
        assert!(reason.contains("..."));
    }

    #[test]
    fn the_hour_window_is_half_open() {
        let rules = Rules::parse(r#"{"hours_utc": {"from": 8, "to": 18}}"#).unwrap();
        assert_eq!(rules.check(&request("GET", "/", monday_at(8))), Ok(()));
        assert_eq!(rules.check(&request("GET", "/", monday_at(17))), Ok(()));
        let violation = rules
            .check(&request("GET", "/", monday_at(18)))
            .unwrap_err();
        assert_eq!(
            violation.to_string(),
            "hour 18 UTC is outside 08:00-18:00 UTC (rule hours_utc)"
        );
        assert!(rules.check(&request("GET", "/", monday_at(7))).is_err());
    }

    #[test]
    fn an_hour_window_can_wrap_past_midnight() {
        let rules = Rules::parse(r#"{"hours_utc": {"from": 22, "to": 6}}"#).unwrap();
        for hour in [22, 23, 0, 5] {
            assert_eq!(
                rules.check(&request("GET", "/", monday_at(hour))),
                Ok(()),
                "{hour}"
            );
        }
        for hour in [6, 12, 21] {
            assert!(
                rules.check(&request("GET", "/", monday_at(hour))).is_err(),
                "{hour}"
            );
        }
    }

    #[test]
    fn a_window_to_24_runs_to_midnight() {
        let rules = Rules::parse(r#"{"hours_utc": {"from": 20, "to": 24}}"#).unwrap();
        assert_eq!(rules.check(&request("GET", "/", monday_at(23))), Ok(()));
        assert!(rules.check(&request("GET", "/", monday_at(0))).is_err());
    }

    #[test]
    fn only_listed_weekdays_are_allowed() {
        let rules = Rules::parse(r#"{"weekdays_utc": ["tue", "sun"]}"#).unwrap();
        let sunday = monday_at(12) - 86_400_000;
        assert_eq!(rules.check(&request("GET", "/", sunday)), Ok(()));
        let violation = rules
            .check(&request("GET", "/", monday_at(12)))
            .unwrap_err();
        assert_eq!(
            violation.to_string(),
            "weekday mon is not allowed (rule weekdays_utc)"
        );
    }

    #[test]
    fn rules_are_checked_in_order_and_the_first_broken_one_is_reported() {
        let rules = Rules::parse(
            r#"{"methods": ["GET"], "path_prefixes": ["/items"], "hours_utc": {"from": 8, "to": 9}, "weekdays_utc": ["sat"]}"#,
        )
        .unwrap();
        let violation =
            |method, path, now| rules.check(&request(method, path, now)).unwrap_err().rule();
        assert_eq!(violation("PUT", "/admin", monday_at(3)), "methods");
        assert_eq!(violation("GET", "/admin", monday_at(3)), "path_prefixes");
        assert_eq!(violation("GET", "/items", monday_at(3)), "hours_utc");
        assert_eq!(violation("GET", "/items", monday_at(8)), "weekdays_utc");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(
            refusal(r#"{"method": ["GET"]}"#)
                .starts_with("invalid configuration: unknown field `method`")
        );
        assert!(
            refusal(r#"{"hours_utc": {"from": 1, "to": 2, "tz": "CET"}}"#)
                .contains("unknown field `tz`")
        );
    }

    #[test]
    fn bad_methods_are_refused() {
        assert_eq!(
            refusal(r#"{"methods": ["GET", "get"]}"#),
            r#"invalid configuration: methods[1] "get" is not a method name (uppercase, such as "GET")"#
        );
        assert!(refusal(r#"{"methods": ["GE T"]}"#).contains("methods[0]"));
        assert!(refusal(r#"{"methods": [""]}"#).contains("methods[0]"));
        assert!(refusal(r#"{"methods": []}"#).contains("methods must not be empty"));
        assert!(refusal(r#"{"methods": "GET"}"#).contains("invalid type"));
    }

    #[test]
    fn bad_hours_are_refused() {
        assert_eq!(
            refusal(r#"{"hours_utc": {"from": 24, "to": 3}}"#),
            "invalid configuration: hours_utc.from must be 0 to 23, got 24"
        );
        assert_eq!(
            refusal(r#"{"hours_utc": {"from": -1, "to": 3}}"#),
            "invalid configuration: hours_utc.from must be 0 to 23, got -1"
        );
        assert!(refusal(r#"{"hours_utc": {"from": 9, "to": 9}}"#).contains("is not a window"));
        assert!(refusal(r#"{"hours_utc": {"from": 0, "to": 24}}"#).contains("is not a window"));
        assert!(refusal(r#"{"hours_utc": {"from": 9}}"#).contains("missing field `to`"));
    }

    #[test]
    fn bad_prefixes_and_weekdays_are_refused() {
        assert!(refusal(r#"{"path_prefixes": ["items"]}"#).contains(r#"must start with "/""#));
        assert!(refusal(r#"{"path_prefixes": ["/items?x=1"]}"#).contains("path only"));
        assert!(refusal(r#"{"path_prefixes": ["/a/../b"]}"#).contains("segment"));
        assert!(refusal(r#"{"path_prefixes": []}"#).contains("must not be empty"));
        assert_eq!(
            refusal(r#"{"weekdays_utc": ["Monday"]}"#),
            r#"invalid configuration: weekdays_utc[0] "Monday" is not one of mon, tue, wed, thu, fri, sat, sun"#
        );
        assert!(refusal(r#"{"weekdays_utc": []}"#).contains("must not be empty"));
    }
}
