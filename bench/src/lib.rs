//! Shared pieces of the load benchmarks in `bench/load/`: the STS mint scenario that
//! `mint_setup` provisions and `mint_load` drives, and per-process CPU accounting read
//! from `/proc`.
//!
//! The scenario mirrors the end-to-end STS tests (`tests/e2e/tests/e2e/sts.rs`): one zone,
//! an agent application and a child application, resources, a policy document, two agent
//! sessions and one delegation edge between them. Secrets are hashed with the production
//! default Argon2id parameters, so the first verification per application costs what it
//! costs in production and later ones hit the STS's verified-secret cache.

pub mod procstat;
pub mod tally;

/// The token-exchange grant type.
pub const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The zone the scenario lives in.
pub const ZONE: &str = "bench";
/// The application that bootstraps (`agent:lifecycle` on `resource://crm`).
pub const AGENT: &str = "agent-app";
/// The application that mints delegated gateway mandates (`reports:read`).
pub const CHILD: &str = "child-app";
/// The client secret of both applications (a benchmark fixture, not a credential).
pub const SECRET: &str = "bench-client-secret-7f3a9c";
/// The agent application's session.
pub const PARENT_SESSION: &str = "s-parent";
/// The child application's session.
pub const CHILD_SESSION: &str = "s-child";
/// The delegation edge from the parent session to the child session.
pub const EDGE: &str = "e1";

/// The policy document (the project's Rego contract's data document, as in the e2e tests).
pub const POLICY: &str = r#"package caracal.authz
import rego.v1
# caracal:data-document
app_ids := {"agent": "agent-app", "child": "child-app"}
grants := {
  "resource://crm": {"application": "agent", "roles": {"reader": ["crm:read"]}},
  "resource://reports": {"application": "child", "roles": {"analyst": ["reports:read"]}}
}
"#;

/// Which exchange the load generator posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MintKind {
    /// Bootstrap: client credentials only, `agent:lifecycle`, a `use=session` mandate.
    Bootstrap,
    /// Delegated gateway mint: agent session and delegation edge, a `use=gateway` mandate.
    Delegated,
}

impl MintKind {
    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bootstrap => "bootstrap",
            Self::Delegated => "delegated",
        }
    }

    /// The form fields of one request.
    pub fn form(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Self::Bootstrap => vec![
                ("grant_type", GRANT),
                ("zone_id", ZONE),
                ("application_id", AGENT),
                ("client_secret", SECRET),
                ("scope", "agent:lifecycle"),
                ("resource", "resource://crm"),
            ],
            Self::Delegated => vec![
                ("grant_type", GRANT),
                ("zone_id", ZONE),
                ("application_id", CHILD),
                ("client_secret", SECRET),
                ("scope", "reports:read"),
                ("resource", "resource://reports"),
                ("agent_session_id", CHILD_SESSION),
                ("delegation_edge_id", EDGE),
            ],
        }
    }

    /// The `application/x-www-form-urlencoded` body of one request.
    pub fn body(self) -> String {
        form_encode(&self.form())
    }
}

impl std::str::FromStr for MintKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bootstrap" => Ok(Self::Bootstrap),
            "delegated" => Ok(Self::Delegated),
            other => Err(format!("unknown kind {other:?}: bootstrap or delegated")),
        }
    }
}

/// `application/x-www-form-urlencoded` encoding.
pub fn form_encode(form: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (k, v) in form {
        if !out.is_empty() {
            out.push('&');
        }
        encode_into(&mut out, k);
        out.push('=');
        encode_into(&mut out, v);
    }
    out
}

fn encode_into(out: &mut String, s: &str) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_encode_reserved_characters() {
        let body = MintKind::Delegated.body();
        assert!(
            body.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange")
        );
        assert!(body.contains("resource=resource%3A%2F%2Freports"));
        assert!(body.contains("delegation_edge_id=e1"));
        assert!(
            MintKind::Bootstrap
                .body()
                .contains("scope=agent%3Alifecycle")
        );
    }
}
