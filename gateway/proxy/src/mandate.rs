//! The presented mandate: the unverified peek of steps 4–9, the verified claims of steps
//! 11–15, and the `use=resource` mandate the gateway mints for `caracal_mandate`
//! providers and `forward_caracal_identity` (authority §4.4).

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use control_model::{ChainLink, MandateClaims, MandateUse, SubType, authority::DelegationProof};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The longest a gateway-minted resource mandate lives.
const RESOURCE_TTL_SECONDS: i64 = 900;

/// What steps 4–9 read before the signature is checked.
#[derive(Debug, Clone)]
pub(crate) struct Peek {
    pub(crate) exp: i64,
    pub(crate) zone_id: Option<String>,
    pub(crate) client_id: Option<String>,
}

/// Step 4: three non-empty base64url parts, the payload a JSON object with a numeric `exp`.
pub(crate) fn peek(token: &str) -> Option<Peek> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if header.is_empty() || signature.is_empty() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let Value::Object(claims) = serde_json::from_slice::<Value>(&bytes).ok()? else {
        return None;
    };
    let exp = claims.get("exp").and_then(Value::as_f64)?;
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    Some(Peek {
        // Fractions are truncated: the window check is in whole seconds.
        exp: exp as i64,
        zone_id: text("zone_id"),
        client_id: text("client_id"),
    })
}

/// `^[A-Za-z0-9._:-]{1,128}$` (steps 8 and 9).
pub(crate) fn is_id(value: &str) -> bool {
    (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The claims of a verified gateway mandate, as steps 12–17 and injection read them.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Verified {
    #[serde(default)]
    pub(crate) iss: String,
    #[serde(default)]
    pub(crate) sub: String,
    #[serde(default, deserialize_with = "string_or_array")]
    pub(crate) aud: Vec<String>,
    pub(crate) exp: f64,
    #[serde(default)]
    pub(crate) iat: Option<f64>,
    #[serde(default)]
    pub(crate) jti: Option<String>,
    pub(crate) zone_id: String,
    pub(crate) client_id: String,
    #[serde(default)]
    pub(crate) scope: Option<String>,
    #[serde(default)]
    pub(crate) sid: Option<String>,
    #[serde(default)]
    pub(crate) root_sid: Option<String>,
    #[serde(default, rename = "use")]
    pub(crate) use_: Option<String>,
    #[serde(default)]
    pub(crate) sub_type: Option<String>,
    #[serde(default)]
    pub(crate) agent_session_id: Option<String>,
    #[serde(default)]
    pub(crate) delegation_edge_id: Option<String>,
    /// Every claim, for the policy input's `subject_claims`.
    #[serde(skip)]
    pub(crate) all: Map<String, Value>,
}

fn string_or_array<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Aud::deserialize(d)? {
        Aud::One(one) => vec![one],
        Aud::Many(many) => many,
    })
}

impl Verified {
    /// Parses verified claims bytes; `None` when a required member is mistyped.
    pub(crate) fn parse(bytes: &[u8]) -> Option<Self> {
        let all: Value = serde_json::from_slice(bytes).ok()?;
        // Deserialised from a reference: the claims are parsed once and not copied.
        let mut verified = Self::deserialize(&all).ok()?;
        let Value::Object(all) = all else {
            return None;
        };
        verified.all = all;
        Some(verified)
    }

    /// The scopes of the `scope` claim.
    pub(crate) fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.as_deref().unwrap_or("").split_whitespace()
    }
}

/// The claim set of the gateway-minted resource mandate: the presented identity, one
/// resource, the current delegation proof, a new `jti`, and
/// `exp = now + min(900 s, edge and constraint caps, presented exp − now)`.
pub(crate) fn resource_claims(
    presented: &Verified,
    resource: &str,
    proof: Option<&DelegationProof>,
    now: chrono::DateTime<chrono::Utc>,
) -> MandateClaims {
    let now_s = now.timestamp();
    let mut ttl = RESOURCE_TTL_SECONDS.min(presented.exp as i64 - now_s);
    let (mut edge_claims, mut chain, mut path, mut epoch) =
        (None, Vec::<ChainLink>::new(), Vec::new(), 0);
    if let Some(proof) = proof {
        ttl = ttl.min((proof.edge.expires_at - now).num_seconds());
        if let Some(limit) = proof.constraints.ttl_seconds {
            ttl = ttl.min(limit);
        }
        if let Ok(Some(at)) = proof.constraints.expires_at() {
            ttl = ttl.min((at - now).num_seconds());
        }
        edge_claims = Some((
            proof.edge.id.clone(),
            proof.edge.source_session_id.clone(),
            proof.edge.target_session_id.clone(),
        ));
        chain.clone_from(&proof.chain);
        path.clone_from(&proof.path);
        epoch = proof.epoch;
    }
    let sid = presented.sid.clone().unwrap_or_default();
    let root_sid = presented
        .root_sid
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| sid.clone());
    MandateClaims {
        iss: presented.iss.clone(),
        sub: presented.sub.clone(),
        aud: vec![resource.to_owned()],
        exp: now_s + ttl.max(1),
        iat: now_s,
        jti: uuid::Uuid::now_v7().to_string(),
        zone_id: presented.zone_id.clone(),
        client_id: presented.client_id.clone(),
        scope: presented.scope.clone().filter(|s| !s.trim().is_empty()),
        sid,
        root_sid,
        use_: MandateUse::Resource,
        sub_type: if presented.sub_type.as_deref() == Some("user") {
            SubType::User
        } else {
            SubType::Application
        },
        target: vec![resource.to_owned()],
        agent_session_id: presented.agent_session_id.clone(),
        delegation_edge_id: edge_claims.as_ref().map(|e| e.0.clone()),
        source_session_id: edge_claims.as_ref().map(|e| e.1.clone()),
        target_session_id: edge_claims.map(|e| e.2),
        hop_count: u32::try_from(path.len()).unwrap_or(0),
        delegation_path: path,
        delegation_chain: chain,
        delegation_graph_epoch: epoch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap_or_default())
    }

    #[test]
    fn peek_needs_three_parts_and_a_numeric_exp() {
        let good = format!(
            "h.{}.s",
            encode(&serde_json::json!({"exp": 10, "zone_id": "z"}))
        );
        assert!(peek(&good).is_some_and(|p| p.exp == 10 && p.zone_id.as_deref() == Some("z")));
        for bad in [
            "a.b".to_owned(),
            "a.b.c.d".to_owned(),
            format!(".{}.s", encode(&serde_json::json!({"exp": 1}))),
            format!("h.{}.s", encode(&serde_json::json!({"exp": "1"}))),
            format!("h.{}.s", encode(&serde_json::json!([1]))),
            "h.!!!.s".to_owned(),
        ] {
            assert!(peek(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn ids_follow_the_zone_pattern() {
        assert!(is_id("zone-1.a:b_c"));
        assert!(!is_id(""));
        assert!(!is_id("zone 1"));
        assert!(!is_id(&"a".repeat(129)));
    }

    #[test]
    fn a_resource_mandate_reuses_the_presented_identity_and_caps_its_life() -> Result<(), String> {
        let now = chrono::Utc::now();
        let presented = Verified::parse(
            serde_json::json!({
                "iss": "http://sts", "sub": "user-1", "aud": ["http://sts"], "exp": now.timestamp() + 120,
                "iat": now.timestamp(), "jti": "j", "zone_id": "z", "client_id": "app", "scope": "read",
                "sid": "rec", "root_sid": "root", "use": "gateway", "sub_type": "user"
            })
            .to_string()
            .as_bytes(),
        )
        .ok_or("parse")?;
        let claims = resource_claims(&presented, "resource://api", None, now);
        assert_eq!(claims.aud, vec!["resource://api".to_owned()]);
        assert_eq!(claims.target, claims.aud);
        assert_eq!(
            (claims.sid.as_str(), claims.root_sid.as_str()),
            ("rec", "root")
        );
        assert_eq!(claims.use_, MandateUse::Resource);
        assert_eq!(claims.sub_type, SubType::User);
        assert!(
            claims.exp <= now.timestamp() + 120,
            "capped by the presented exp"
        );
        assert_ne!(claims.jti, "j");
        Ok(())
    }
}
