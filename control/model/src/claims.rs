//! Mandate claims (wire-contract §3.2), serialised exactly: optional claims are omitted,
//! never `null`, never empty arrays; `aud` is always an array; `scope` is never `""`.

use serde::{Deserialize, Serialize};

/// The use class of a mandate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MandateUse {
    /// Reusable until `exp`: Coordinator bearer, STS subject token.
    Session,
    /// Single use at the gateway.
    Gateway,
    /// For upstream APIs.
    Resource,
}

/// Whose authority a mandate carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubType {
    /// The application itself.
    Application,
    /// A federated user.
    User,
}

/// One link of `delegation_chain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLink {
    /// Issuer application (or, for the last link, the receiver application).
    pub application_id: String,
    /// Source session (or, for the last link, the target session).
    pub agent_session_id: String,
    /// The edge; absent on the last link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation_edge_id: Option<String>,
}

/// The claim set of every mandate we mint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MandateClaims {
    /// `ISSUER_URL`.
    pub iss: String,
    /// Subject.
    pub sub: String,
    /// Audience, always an array.
    pub aud: Vec<String>,
    /// Expiry (unix seconds).
    pub exp: i64,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// UUIDv7.
    pub jti: String,
    /// Zone.
    pub zone_id: String,
    /// Acting application.
    pub client_id: String,
    /// Space-delimited scopes; omitted when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Authority record.
    pub sid: String,
    /// Root authority record.
    pub root_sid: String,
    /// Use class.
    #[serde(rename = "use")]
    pub use_: MandateUse,
    /// Subject kind.
    pub sub_type: SubType,
    /// Granted resources, sorted; omitted when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target: Vec<String>,
    /// Governed session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_session_id: Option<String>,
    /// Delegation edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation_edge_id: Option<String>,
    /// Edge source session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_session_id: Option<String>,
    /// Edge target session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_session_id: Option<String>,
    /// Edge ids, root → leaf.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delegation_path: Vec<String>,
    /// Chain links.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delegation_chain: Vec<ChainLink>,
    /// `len(delegation_path)`; omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hop_count: u32,
    /// Zone epoch at mint; omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub delegation_graph_epoch: i64,
}

/// The leeway on `exp`, and the future skew allowed on `iat`, of a presented session mandate.
pub const SESSION_LEEWAY_SECONDS: i64 = 60;

/// Whether a verified claim set is a `use=session` mandate of `zone` issued by `issuer` and
/// valid at `now` (unix seconds): `iss` equal to `issuer`, `aud` holding it (an array, or a
/// string equal to it), `exp` and `iat` within [`SESSION_LEEWAY_SECONDS`], `zone_id` and
/// `use`. The STS (subject tokens, subject approval decisions) and the Coordinator (bearers)
/// accept exactly these.
pub fn is_session_mandate(
    claims: &serde_json::Map<String, serde_json::Value>,
    issuer: &str,
    zone: &str,
    now: i64,
) -> bool {
    use serde_json::Value;
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let audience_ok = match claims.get("aud") {
        Some(Value::Array(aud)) => aud.iter().any(|a| a.as_str() == Some(issuer)),
        Some(Value::String(aud)) => aud == issuer,
        _ => false,
    };
    let exp_ok = claims
        .get("exp")
        .and_then(Value::as_i64)
        .is_some_and(|exp| exp.saturating_add(SESSION_LEEWAY_SECONDS) > now);
    let iat_ok = claims
        .get("iat")
        .and_then(Value::as_i64)
        .is_some_and(|iat| iat <= now.saturating_add(SESSION_LEEWAY_SECONDS));
    text("iss") == Some(issuer)
        && audience_ok
        && exp_ok
        && iat_ok
        && text("zone_id") == Some(zone)
        && text("use") == Some("session")
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session_claims() -> MandateClaims {
        MandateClaims {
            iss: "http://127.0.0.1:8080".into(),
            sub: "app-1".into(),
            aud: vec!["http://127.0.0.1:8080".into()],
            exp: 1_790_000_900,
            iat: 1_790_000_000,
            jti: "j".into(),
            zone_id: "zone-1".into(),
            client_id: "app-1".into(),
            scope: Some("agent:lifecycle".into()),
            sid: "s".into(),
            root_sid: "s".into(),
            use_: MandateUse::Session,
            sub_type: SubType::Application,
            target: vec![],
            agent_session_id: None,
            delegation_edge_id: None,
            source_session_id: None,
            target_session_id: None,
            delegation_path: vec![],
            delegation_chain: vec![],
            hop_count: 0,
            delegation_graph_epoch: 0,
        }
    }

    #[test]
    fn optional_claims_are_omitted_not_null() {
        let json = serde_json::to_value(session_claims()).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for absent in [
            "target",
            "agent_session_id",
            "delegation_path",
            "delegation_chain",
            "hop_count",
            "delegation_graph_epoch",
        ] {
            assert!(!keys.contains(&absent), "{absent} must be omitted");
        }
        assert_eq!(json["use"], "session");
        assert!(json["aud"].is_array());
        let mut no_scope = session_claims();
        no_scope.scope = None;
        assert!(
            serde_json::to_value(no_scope)
                .unwrap()
                .get("scope")
                .is_none()
        );
    }

    #[test]
    fn chain_links_omit_the_edge_on_the_last_link() {
        let link = ChainLink {
            application_id: "a".into(),
            agent_session_id: "s".into(),
            delegation_edge_id: None,
        };
        assert_eq!(
            serde_json::to_string(&link).unwrap(),
            r#"{"application_id":"a","agent_session_id":"s"}"#
        );
    }
}
