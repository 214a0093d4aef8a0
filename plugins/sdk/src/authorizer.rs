//! The `authorizer` world: a plugin that may deny a request the gateway would forward.
//!
//! Implement [`Authorizer`] and export it with [`export_authorizer!`](crate::export_authorizer).
//! Authorizers bound to a resource run in their declared order after the gateway's own checks;
//! the first denial wins. The client sees 403 `access_denied` (`denied by plugin <name>:
//! <reason>`), so write reasons you are willing to show the caller; the reason and the
//! attributes also go into the audit event.

use crate::generated::authorizer::Guest;
use crate::{Attribute, Call, Decision, Denial, Needs};

/// An authorizer plugin.
///
/// Both functions are associated functions (no `self`): every call runs in a fresh instance,
/// so there is no state to keep between them.
pub trait Authorizer {
    /// Check the binding's configuration, once, when the gateway loads the binding (and when an
    /// operator binds the plugin through the admin API). Return `Err` with a message naming the
    /// key and the problem to refuse it; see [`config::parse`](crate::config::parse).
    ///
    /// The default accepts any configuration and needs nothing beyond the request head.
    fn configure(config: &str) -> Result<Needs, String> {
        let _ = config;
        Ok(Needs::default())
    }

    /// Decide one request. The binding's configuration is in [`Call::config`].
    fn authorize(call: Call) -> Decision;
}

impl<T: Authorizer> Guest for T {
    fn configure(config: String) -> Result<Needs, String> {
        <T as Authorizer>::configure(&config)
    }

    fn authorize(call: Call) -> Decision {
        <T as Authorizer>::authorize(call)
    }
}

impl Decision {
    /// Allow without audit attributes.
    pub fn allow() -> Decision {
        Decision::Allow(Vec::new())
    }

    /// Allow, adding audit attributes (at most 32; keys at most 64 bytes, values at most
    /// 1,024), for example `Decision::allow_with([("rule", "request-rules")])`.
    pub fn allow_with<A: Into<Attribute>>(attributes: impl IntoIterator<Item = A>) -> Decision {
        Decision::Allow(attributes.into_iter().map(Into::into).collect())
    }

    /// Deny with `reason` (at most 1,024 bytes), which goes into the audit event.
    pub fn deny(reason: impl Into<String>) -> Decision {
        Decision::Deny(Denial::new(reason))
    }

    /// Whether this is an allow.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

impl Denial {
    /// A denial with `reason` and no attributes.
    pub fn new(reason: impl Into<String>) -> Denial {
        Denial {
            reason: reason.into(),
            attributes: Vec::new(),
        }
    }

    /// Add the audit attribute `key=value`.
    pub fn with_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Denial {
        self.attributes.push(Attribute::new(key, value));
        self
    }
}

impl From<Denial> for Decision {
    fn from(denial: Denial) -> Self {
        Decision::Deny(denial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct AllowAll;

    impl Authorizer for AllowAll {
        fn authorize(_call: Call) -> Decision {
            Decision::allow()
        }
    }

    #[test]
    fn the_default_configure_accepts_anything_and_needs_nothing() {
        let needs = <AllowAll as Guest>::configure("{\"anything\": 1}".to_owned()).unwrap();
        assert!(!needs.body_sha256);
    }

    #[test]
    fn the_world_trait_forwards_to_the_authorizer() {
        let call = crate::testing::CallBuilder::new("GET", "/").build();
        assert!(<AllowAll as Guest>::authorize(call).is_allow());
    }

    #[test]
    fn allow_with_turns_pairs_into_attributes() {
        let Decision::Allow(attributes) = Decision::allow_with([("rule", "r"), ("seen", "GET /")])
        else {
            panic!("expected an allow");
        };
        assert_eq!(attributes.len(), 2);
        assert_eq!(
            (attributes[1].key.as_str(), attributes[1].value.as_str()),
            ("seen", "GET /")
        );
    }

    #[test]
    fn a_denial_carries_its_reason_and_attributes() {
        let decision: Decision = Denial::new("no").with_attribute("rule", "methods").into();
        let Decision::Deny(denial) = decision else {
            panic!("expected a denial");
        };
        assert_eq!(denial.reason, "no");
        assert_eq!(denial.attributes[0].value, "methods");
    }
}
