//! Validated identifier newtypes.

use std::fmt;

/// Why a string is not a valid identifier. Never echoes the rejected value: ids arrive from
/// requests and may carry anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    /// The value is empty or longer than the limit.
    #[error("{kind} must be 1 to {max} characters long")]
    Length {
        /// Which identifier.
        kind: &'static str,
        /// The maximum length.
        max: usize,
    },
    /// The value holds a character outside the allowed set.
    #[error("{kind} may contain only A-Z, a-z, 0-9, '.', '_', ':' and '-'")]
    Character {
        /// Which identifier.
        kind: &'static str,
    },
}

/// A zone id: `^[A-Za-z0-9._:-]{1,128}$`, the same rule as the `zones.id` CHECK.
///
/// `*` is never a zone id, which is what lets the store use it as the cross-zone sentinel.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ZoneId(String);

impl ZoneId {
    /// The longest zone id accepted.
    pub const MAX_LEN: usize = 128;

    /// Validates `value` as a zone id.
    pub fn parse(value: &str) -> Result<Self, InvalidId> {
        if value.is_empty() || value.len() > Self::MAX_LEN {
            return Err(InvalidId::Length {
                kind: "zone id",
                max: Self::MAX_LEN,
            });
        }
        if !value.bytes().all(is_id_byte) {
            return Err(InvalidId::Character { kind: "zone id" });
        }
        Ok(Self(value.to_owned()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

impl fmt::Debug for ZoneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ZoneId({})", self.0)
    }
}

impl fmt::Display for ZoneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ZoneId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> serde::Deserialize<'de> for ZoneId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_documented_character_set() {
        for ok in ["zone-1", "acme.prod", "a:b_c", "Z", &"x".repeat(128)] {
            assert_eq!(ZoneId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_the_cross_zone_sentinel_and_bad_input() {
        assert!(matches!(
            ZoneId::parse("*"),
            Err(InvalidId::Character { .. })
        ));
        assert!(matches!(ZoneId::parse(""), Err(InvalidId::Length { .. })));
        assert!(matches!(
            ZoneId::parse(&"x".repeat(129)),
            Err(InvalidId::Length { .. })
        ));
        for bad in ["a b", "a/b", "a'b", "zone\n", "é"] {
            assert!(ZoneId::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn error_message_does_not_echo_the_value() {
        let err = ZoneId::parse("evil'; DROP").unwrap_err().to_string();
        assert!(!err.contains("evil"));
    }

    proptest! {
        #[test]
        fn parse_agrees_with_the_sql_pattern(s in "\\PC{0,140}") {
            let expected = !s.is_empty() && s.len() <= 128
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
            prop_assert_eq!(ZoneId::parse(&s).is_ok(), expected);
        }
    }
}
