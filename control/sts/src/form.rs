//! The token request (wire-contract §2.2, §2.3): decoding and every rejection rule that
//! applies before anything else, in the documented order. Pure and allocation-bounded:
//! the body is at most 64 KiB by the time it gets here.

use control_model::Denial;

/// The token-exchange grant type.
pub(crate) const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// `subject_token_type` of a presented mandate.
pub(crate) const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// `subject_token_type` of an external id_token (federation).
pub(crate) const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// The TTL cap without a subject token.
pub(crate) const TTL_CAP_NO_SUBJECT: i64 = 3600;
/// The TTL cap with a subject token.
pub(crate) const TTL_CAP_WITH_SUBJECT: i64 = 900;

/// Which kind of subject token was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubjectTokenType {
    /// An STS mandate.
    AccessToken,
    /// An external OIDC id_token.
    IdToken,
}

/// A parsed token request. Secrets (`client_secret`, `subject_token`) never reach `Debug`.
#[derive(Clone, Default)]
pub(crate) struct TokenRequest {
    pub(crate) zone_id: Option<String>,
    pub(crate) application_id: Option<String>,
    pub(crate) client_secret: Option<String>,
    /// Trimmed, de-duplicated, sorted.
    pub(crate) resources: Vec<String>,
    /// The `scope` field exactly as sent.
    pub(crate) scope: Option<String>,
    pub(crate) subject_token: Option<(String, SubjectTokenType)>,
    pub(crate) session_id: Option<String>,
    pub(crate) agent_session_id: Option<String>,
    pub(crate) delegation_edge_id: Option<String>,
    pub(crate) approval_id: Option<String>,
    /// `ttl_seconds`; 0 when absent or 0 (meaning "default").
    pub(crate) ttl_seconds: i64,
}

impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRequest")
            .field("zone_id", &self.zone_id)
            .field("application_id", &self.application_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("resources", &self.resources)
            .field("scope", &self.scope)
            .field(
                "subject_token",
                &self.subject_token.as_ref().map(|(_, t)| t),
            )
            .field("session_id", &self.session_id)
            .field("agent_session_id", &self.agent_session_id)
            .field("delegation_edge_id", &self.delegation_edge_id)
            .field("approval_id", &self.approval_id)
            .field("ttl_seconds", &self.ttl_seconds)
            .finish()
    }
}

impl TokenRequest {
    /// The requested scopes: the `scope` field split on whitespace, in the order sent.
    pub(crate) fn requested_scopes(&self) -> Vec<String> {
        self.scope
            .as_deref()
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

/// Fields that are refused outright.
const REFUSED: &[&str] = &["actor_token", "client_assertion", "client_assertion_type"];

/// Parses the body of `POST /oauth/2/token`. Media type, query string and size are the
/// caller's checks (they come first); this applies the remaining rules of §2.2 in order.
pub(crate) fn parse(body: &[u8]) -> Result<TokenRequest, Denial> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();

    // Duplicate fields other than `resource`.
    let mut seen: Vec<&str> = Vec::with_capacity(pairs.len());
    for (name, _) in &pairs {
        if name != "resource" {
            if seen.contains(&name.as_str()) {
                let shown: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
                return Err(Denial::bad_request(format!(
                    "duplicate form field: {shown}"
                )));
            }
            seen.push(name);
        }
    }
    if pairs
        .iter()
        .any(|(name, _)| REFUSED.contains(&name.as_str()))
    {
        return Err(Denial::bad_request("not supported"));
    }
    let get = |name: &str| -> Option<String> {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    if get("grant_type").as_deref() != Some(GRANT_TYPE) {
        return Err(Denial::bad_request("unsupported grant_type"));
    }
    let subject_token = match (get("subject_token"), get("subject_token_type")) {
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            return Err(Denial::bad_request(
                "subject_token and subject_token_type must be sent together",
            ));
        }
        (Some(token), Some(kind)) => match kind.as_str() {
            ACCESS_TOKEN_TYPE => Some((token, SubjectTokenType::AccessToken)),
            ID_TOKEN_TYPE => Some((token, SubjectTokenType::IdToken)),
            _ => return Err(Denial::bad_request("unsupported subject_token_type")),
        },
    };
    let ttl_seconds = match get("ttl_seconds") {
        None => 0,
        Some(raw) => {
            let ttl: i64 = raw
                .trim()
                .parse()
                .map_err(|_not_integer| Denial::bad_request("invalid ttl_seconds"))?;
            if ttl < 0 {
                return Err(Denial::bad_request("ttl_seconds must be positive"));
            }
            let cap = if matches!(subject_token, Some((_, SubjectTokenType::AccessToken))) {
                TTL_CAP_WITH_SUBJECT
            } else {
                TTL_CAP_NO_SUBJECT
            };
            if ttl > cap {
                return Err(Denial::bad_request("ttl_seconds exceeds token TTL cap"));
            }
            ttl
        }
    };
    let mut resources = Vec::new();
    for (name, value) in &pairs {
        if name == "resource" {
            let trimmed = value.trim();
            if trimmed.is_empty() {
                return Err(Denial::bad_request("resource must not be empty"));
            }
            resources.push(trimmed.to_owned());
        }
    }
    resources.sort();
    resources.dedup();
    // Fields we do not read (request_method, request_path, gateway_request_id without a
    // gateway signature, and unknown ones) are ignored, as OAuth servers do.
    Ok(TokenRequest {
        zone_id: get("zone_id"),
        application_id: get("application_id"),
        client_secret: get("client_secret"),
        resources,
        scope: get("scope"),
        subject_token,
        session_id: get("session_id"),
        agent_session_id: get("agent_session_id"),
        delegation_edge_id: get("delegation_edge_id"),
        approval_id: get("approval_id"),
        ttl_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange";

    fn err(body: &str) -> String {
        parse(body.as_bytes()).unwrap_err().description.into_owned()
    }

    #[test]
    fn a_bootstrap_form_parses_with_sorted_deduplicated_resources() {
        let body = format!(
            "{G}&zone_id=z&application_id=a&client_secret=s&scope=agent%3Alifecycle&resource=+r2+&resource=r1&resource=r2"
        );
        let r = parse(body.as_bytes()).unwrap();
        assert_eq!(r.resources, vec!["r1", "r2"]);
        assert_eq!(r.scope.as_deref(), Some("agent:lifecycle"));
        assert_eq!(r.ttl_seconds, 0);
        assert!(!format!("{r:?}").contains("client_secret: Some(\"s\")"));
    }

    #[test]
    fn plus_decodes_to_a_space_in_scopes() {
        let r = parse(format!("{G}&scope=a%3Awrite+b%3Aread").as_bytes()).unwrap();
        assert_eq!(r.requested_scopes(), vec!["a:write", "b:read"]);
    }

    #[test]
    fn every_rejection_rule_has_its_description() {
        let cases = [
            (
                format!("{G}&zone_id=a&zone_id=b"),
                "duplicate form field: zone_id",
            ),
            (format!("{G}&actor_token=x"), "not supported"),
            (format!("{G}&client_assertion=x"), "not supported"),
            (
                "grant_type=client_credentials".to_owned(),
                "unsupported grant_type",
            ),
            (String::new(), "unsupported grant_type"),
            (
                format!("{G}&subject_token=x"),
                "subject_token and subject_token_type must be sent together",
            ),
            (
                format!("{G}&subject_token=x&subject_token_type=saml"),
                "unsupported subject_token_type",
            ),
            (format!("{G}&ttl_seconds=abc"), "invalid ttl_seconds"),
            (format!("{G}&ttl_seconds=1.5"), "invalid ttl_seconds"),
            (
                format!("{G}&ttl_seconds=-1"),
                "ttl_seconds must be positive",
            ),
            (
                format!("{G}&ttl_seconds=3601"),
                "ttl_seconds exceeds token TTL cap",
            ),
            (
                format!(
                    "{G}&ttl_seconds=901&subject_token=t&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token"
                ),
                "ttl_seconds exceeds token TTL cap",
            ),
            (format!("{G}&resource=+"), "resource must not be empty"),
        ];
        for (body, expected) in cases {
            assert_eq!(err(&body), expected, "{body}");
        }
    }

    #[test]
    fn ttl_at_the_caps_is_accepted() {
        assert_eq!(
            parse(format!("{G}&ttl_seconds=3600").as_bytes())
                .unwrap()
                .ttl_seconds,
            3600
        );
        assert_eq!(
            parse(format!("{G}&ttl_seconds=0").as_bytes())
                .unwrap()
                .ttl_seconds,
            0
        );
    }

    #[test]
    fn a_duplicate_field_name_is_shown_without_control_characters() {
        assert_eq!(
            err(&format!("{G}&a%0Ab=1&a%0Ab=2")),
            "duplicate form field: ab"
        );
    }
}
