//! Example authorizer `example-request-rules`: allows a request only when it matches every
//! rule its binding configures.
//!
//! # Configuration
//!
//! ```json
//! {
//!   "methods": ["GET", "HEAD"],
//!   "path_prefixes": ["/items", "/search/"],
//!   "hours_utc": { "from": 8, "to": 18 },
//!   "weekdays_utc": ["mon", "tue", "wed", "thu", "fri"]
//! }
//! ```
//!
//! Every key is optional; a missing key places no restriction, so `{}` allows everything.
//!
//! | Key | Allows | Accepts |
//! | --- | --- | --- |
//! | `methods` | a request whose method is listed (methods are case-sensitive) | a non-empty list of uppercase method names |
//! | `path_prefixes` | a request whose path is a prefix or lies below one, segment by segment: `/items` allows `/items` and `/items/7`, not `/itemsx`; a prefix ending in `/` allows only what lies below it. A path with a `.` or `..` segment (also percent-encoded) is refused | a non-empty list of paths starting with `/` |
//! | `hours_utc` | a request whose UTC hour `h` (from the gateway's clock) has `from <= h < to`; when `from > to` the window wraps past midnight (`{"from": 22, "to": 6}`) | `from` 0 to 23, `to` 0 to 24, `from != to` |
//! | `weekdays_utc` | a request on one of the listed UTC weekdays | a non-empty list of `mon`, `tue`, `wed`, `thu`, `fri`, `sat`, `sun` |
//!
//! Unknown keys and values outside these ranges are refused by `configure` with a message
//! naming the key.
//!
//! # Decisions
//!
//! The rules are checked in the order of the table; the first one the request breaks denies
//! it, with a reason that names the rule (for example `method DELETE is not allowed (rule
//! methods)`) and the audit attributes `rule=request-rules` and `violated=<rule>`. An allowed
//! request carries the audit attribute `rule=request-rules`.

mod rules;

use caracal_plugin_sdk::{Authorizer, Call, Decision, Denial, Needs};

use crate::rules::{Request, Rules};

/// The value of the `rule` audit attribute this plugin adds.
const PLUGIN: &str = "request-rules";

/// The authorizer this component exports.
struct RequestRules;

impl Authorizer for RequestRules {
    fn configure(config: &str) -> Result<Needs, String> {
        Rules::parse(config)?;
        Ok(Needs::default())
    }

    fn authorize(call: Call) -> Decision {
        decide(&call)
    }
}

/// The decision for one call, from the configuration it carries.
fn decide(call: &Call) -> Decision {
    // `configure` accepted this configuration when the binding was loaded; should it not
    // parse now, refusing is the only safe answer.
    let rules = match Rules::parse(&call.config) {
        Ok(rules) => rules,
        Err(err) => {
            return Denial::new(err.to_string())
                .with_attribute("rule", PLUGIN)
                .into();
        }
    };
    let request = Request {
        method: &call.request.method,
        path: &call.request.path,
        now_unix_ms: call.now_unix_ms,
    };
    match rules.check(&request) {
        Ok(()) => Decision::allow_with([("rule", PLUGIN)]),
        Err(violation) => Denial::new(violation.to_string())
            .with_attribute("rule", PLUGIN)
            .with_attribute("violated", violation.rule())
            .into(),
    }
}

caracal_plugin_sdk::export_authorizer!(RequestRules);

#[cfg(test)]
mod tests {
    use caracal_plugin_sdk::testing::CallBuilder;

    use super::*;

    fn call(method: &str, path: &str, config: &str) -> Call {
        CallBuilder::new(method, path)
            .config(config)
            .now_unix_ms(1_767_607_200_000) // Monday 2026-01-05T10:00:00Z
            .build()
    }

    fn attributes(decision: &Decision) -> Vec<(String, String)> {
        let attributes = match decision {
            Decision::Allow(attributes) => attributes,
            Decision::Deny(denial) => &denial.attributes,
        };
        attributes
            .iter()
            .map(|a| (a.key.clone(), a.value.clone()))
            .collect()
    }

    #[test]
    fn an_allowed_request_carries_the_rule_attribute() {
        let decision = decide(&call("GET", "/items/7", r#"{"methods": ["GET"]}"#));
        assert!(decision.is_allow());
        assert_eq!(
            attributes(&decision),
            [("rule".to_owned(), "request-rules".to_owned())]
        );
    }

    #[test]
    fn a_denial_names_the_rule_in_its_reason_and_attributes() {
        let decision = decide(&call("DELETE", "/items/7", r#"{"methods": ["GET"]}"#));
        let Decision::Deny(denial) = &decision else {
            panic!("expected a denial");
        };
        assert_eq!(denial.reason, "method DELETE is not allowed (rule methods)");
        assert_eq!(
            attributes(&decision),
            [
                ("rule".to_owned(), "request-rules".to_owned()),
                ("violated".to_owned(), "methods".to_owned())
            ]
        );
    }

    #[test]
    fn a_configuration_that_no_longer_parses_denies() {
        let decision = decide(&call("GET", "/", r#"{"method": ["GET"]}"#));
        let Decision::Deny(denial) = decision else {
            panic!("expected a denial");
        };
        assert!(
            denial
                .reason
                .starts_with("invalid configuration: unknown field `method`"),
            "{}",
            denial.reason
        );
    }

    #[test]
    fn configure_refuses_a_malformed_configuration_and_needs_no_body() {
        assert!(!RequestRules::configure("{}").unwrap().body_sha256);
        let message =
            RequestRules::configure(r#"{"hours_utc": {"from": 8, "to": 25}}"#).unwrap_err();
        assert_eq!(
            message,
            "invalid configuration: hours_utc.to must be 0 to 24, got 25"
        );
    }
}
